/**
 * Strict byte encodings of docs/PROTOCOL.md: base64url without padding (RFC 4648 §5; padded
 * input, characters outside the alphabet and stray bits in the last character are refused,
 * as the Rust side's `URL_SAFE_NO_PAD` does), standard base64 (padded, e.g. the webhook's
 * `sha256` claim, or unpadded, e.g. Matrix device keys) and lower-case hex.
 *
 * Decoding errors are {@link OracleCallError}s with code `protocol` and `details.field`.
 */

import { OracleCallError } from './errors.js';

const URL_ALPHABET = 'ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_';
const STD_ALPHABET = 'ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/';

function reverse(alphabet: string): Int16Array {
  const table = new Int16Array(128).fill(-1);
  for (let i = 0; i < alphabet.length; i++) table[alphabet.charCodeAt(i)] = i;
  return table;
}
const URL_REVERSE = reverse(URL_ALPHABET);
const STD_REVERSE = reverse(STD_ALPHABET);

function encodingError(field: string, encoding: string, why: string): OracleCallError {
  return new OracleCallError('protocol', `${field}: not ${encoding} (${why})`, {
    details: { field, encoding },
  });
}

function encode(bytes: Uint8Array, alphabet: string, pad: boolean): string {
  let out = '';
  let i = 0;
  for (; i + 3 <= bytes.length; i += 3) {
    const n = (bytes[i]! << 16) | (bytes[i + 1]! << 8) | bytes[i + 2]!;
    out +=
      alphabet[(n >>> 18) & 63]! + alphabet[(n >>> 12) & 63]! + alphabet[(n >>> 6) & 63]! + alphabet[n & 63]!;
  }
  const rest = bytes.length - i;
  if (rest === 1) {
    const n = bytes[i]! << 16;
    out += alphabet[(n >>> 18) & 63]! + alphabet[(n >>> 12) & 63]! + (pad ? '==' : '');
  } else if (rest === 2) {
    const n = (bytes[i]! << 16) | (bytes[i + 1]! << 8);
    out += alphabet[(n >>> 18) & 63]! + alphabet[(n >>> 12) & 63]! + alphabet[(n >>> 6) & 63]! + (pad ? '=' : '');
  }
  return out;
}

/** Decodes unpadded `text` strictly with `table`; `encoding`/`field` name it in errors. */
function decodeUnpadded(text: string, table: Int16Array, field: string, encoding: string): Uint8Array {
  if (typeof text !== 'string') throw encodingError(field, encoding, 'not a string');
  const len = text.length;
  if (len % 4 === 1) throw encodingError(field, encoding, 'impossible length');
  const out = new Uint8Array(Math.floor((len * 3) / 4));
  let acc = 0;
  let bits = 0;
  let o = 0;
  for (let i = 0; i < len; i++) {
    const c = text.charCodeAt(i);
    const v = c < 128 ? table[c]! : -1;
    if (v < 0) {
      throw encodingError(field, encoding, c === 61 ? 'padding is not accepted' : `bad character at ${i}`);
    }
    acc = (acc << 6) | v;
    bits += 6;
    if (bits >= 8) {
      bits -= 8;
      out[o++] = (acc >>> bits) & 0xff;
    }
    acc &= (1 << bits) - 1;
  }
  // The bits left over must be zero (one encoding per byte string).
  if (acc !== 0) throw encodingError(field, encoding, 'stray bits in the last character');
  return out;
}

/** base64url without padding (RFC 4648 §5), as PROTOCOL writes every binary field. */
export function encodeBase64url(bytes: Uint8Array): string {
  return encode(bytes, URL_ALPHABET, false);
}

/**
 * Decodes base64url without padding, strictly: `=` padding, `+`/`/`, whitespace, any other
 * character, an impossible length and non-zero trailing bits are refused.
 *
 * @param field names the field in the error (`details.field`).
 * @throws OracleCallError `protocol`
 */
export function decodeBase64url(text: string, field = 'base64url'): Uint8Array {
  return decodeUnpadded(text, URL_REVERSE, field, 'base64url without padding');
}

/** Decodes base64url into exactly `length` bytes, else a `protocol` error naming the field. */
export function decodeBase64urlFixed(text: string, length: number, field: string): Uint8Array {
  const raw = decodeBase64url(text, field);
  if (raw.length !== length) {
    throw new OracleCallError('protocol', `${field}: must decode to ${length} bytes, not ${raw.length}`, {
      details: { field, length: raw.length, expected: length },
    });
  }
  return raw;
}

/** Standard base64 (RFC 4648 §4), padded unless `pad` is false (Matrix keys are unpadded). */
export function encodeBase64(bytes: Uint8Array, pad = true): string {
  return encode(bytes, STD_ALPHABET, pad);
}

/**
 * Decodes standard base64 strictly. `padding`: `'required'` (the padded form only),
 * `'none'` (the unpadded form only, as Matrix writes keys).
 *
 * @throws OracleCallError `protocol`
 */
export function decodeBase64(text: string, padding: 'required' | 'none', field = 'base64'): Uint8Array {
  if (typeof text !== 'string') throw encodingError(field, 'base64', 'not a string');
  if (padding === 'none') return decodeUnpadded(text, STD_REVERSE, field, 'base64 without padding');
  if (text.length % 4 !== 0) throw encodingError(field, 'padded base64', 'length is not a multiple of 4');
  let end = text.length;
  if (text.endsWith('==')) end -= 2;
  else if (text.endsWith('=')) end -= 1;
  return decodeUnpadded(text.slice(0, end), STD_REVERSE, field, 'padded base64');
}

/** Lower-case hex. */
export function toHex(bytes: Uint8Array): string {
  let out = '';
  for (const b of bytes) out += b.toString(16).padStart(2, '0');
  return out;
}

/**
 * Decodes lower-case hex strictly (an even number of `[0-9a-f]`).
 *
 * @throws OracleCallError `protocol`
 */
export function fromHex(text: string, field = 'hex'): Uint8Array {
  if (typeof text !== 'string' || text.length % 2 !== 0 || !/^[0-9a-f]*$/.test(text)) {
    throw encodingError(field, 'lower-case hex', 'bad character or odd length');
  }
  const out = new Uint8Array(text.length / 2);
  for (let i = 0; i < out.length; i++) out[i] = parseInt(text.slice(2 * i, 2 * i + 2), 16);
  return out;
}

/** UTF-8 bytes of `s`. */
export function utf8(s: string): Uint8Array {
  return new TextEncoder().encode(s);
}

/** Overwrites `bytes` with zeros (call keys and other secrets once used). */
export function zeroize(...buffers: (Uint8Array | undefined | null)[]): void {
  for (const b of buffers) b?.fill(0);
}

/** Constant-time equality of two byte strings (length is not hidden). */
export function bytesEqual(a: Uint8Array, b: Uint8Array): boolean {
  if (a.length !== b.length) return false;
  let d = 0;
  for (let i = 0; i < a.length; i++) d |= a[i]! ^ b[i]!;
  return d === 0;
}

/** `a || b || …` */
export function concatBytes(...parts: Uint8Array[]): Uint8Array {
  let n = 0;
  for (const p of parts) n += p.length;
  const out = new Uint8Array(n);
  let o = 0;
  for (const p of parts) {
    out.set(p, o);
    o += p.length;
  }
  return out;
}

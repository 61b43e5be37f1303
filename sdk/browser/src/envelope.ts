/**
 * Key envelopes (docs/PROTOCOL.md §4, §13.3): the call key sealed to the oracle's long-term
 * key and bound to the call's context (v1), optionally wrapped once more to a verified prekey
 * (v2, forward secrecy).
 *
 * ```
 * v1.<scheme>.<base64url(key_id (16) || context_digest (16) || payload)>
 * v2.<scheme>.<base64url(prekeyId (16) || context_digest (16) || enc (32) || ct)>
 * ```
 *
 * hpke-p256 / hpke-x25519: RFC 9180 base mode with @hpke/core (WebCrypto), AES-256-GCM,
 * info = context, aad = header. rsa-oaep-256: WebCrypto RSA-OAEP, SHA-256, label = context.
 * ecies-secp256k1: npm `eciesjs` 0.5 (loaded lazily, only when used), plaintext = call key ||
 * SHA-256(context).
 *
 * The key id in a v1 header is always recomputed from the public key; the caller's `keyId`
 * is only compared with it. Nothing here keeps or logs the call key; buffers this module
 * makes from it are zeroed before returning.
 */

import {
  Aes256Gcm,
  CipherSuite,
  DhkemP256HkdfSha256,
  DhkemX25519HkdfSha256,
  HkdfSha256,
} from '@hpke/core';
import { sha256 } from '@noble/hashes/sha2.js';

import { bytesEqual, concatBytes, decodeBase64url, encodeBase64url, zeroize } from './base64.js';
import { OracleCallError, protocolError } from './errors.js';
import type { VerifiedPrekey } from './prekeys.js';
import { type KeyScheme, contextDigest, isKeyScheme } from './protocol.js';
import { checkKey, type OracleKeyInfo } from './wellknown.js';

/** Bytes of the clear header: key id (v1) or prekey id (v2), then the context digest. */
export const HEADER_LEN = 32;
/** Bytes of a call key. */
export const CALL_KEY_LEN = 32;
/** Longest inner (v1) envelope a v2 envelope carries. */
export const MAX_INNER_ENVELOPE_LEN = 4096;
/** Shortest and longest v2 body. */
export const V2_MIN_BODY = HEADER_LEN + 32 + 16;
export const V2_MAX_BODY = V2_MIN_BODY + MAX_INNER_ENVELOPE_LEN;

/** Payload length of each fixed-size scheme (§4.2); RSA: the modulus length. */
export const PAYLOAD_LEN: Readonly<Record<Exclude<KeyScheme, 'rsa-oaep-256'>, number>> = {
  'hpke-p256': 65 + 48,
  'hpke-x25519': 32 + 48,
  'ecies-secp256k1': 161,
};

function cryptoError(what: string, cause?: unknown): OracleCallError {
  return new OracleCallError('crypto', what, cause === undefined ? {} : { cause });
}

function suite(scheme: 'hpke-p256' | 'hpke-x25519'): CipherSuite {
  return new CipherSuite({
    kem: scheme === 'hpke-p256' ? new DhkemP256HkdfSha256() : new DhkemX25519HkdfSha256(),
    kdf: new HkdfSha256(),
    aead: new Aes256Gcm(),
  });
}

/** A fresh ArrayBuffer holding `u8` (WebCrypto and @hpke/core take buffers or views). */
function buf(u8: Uint8Array): Uint8Array<ArrayBuffer> {
  const out = new Uint8Array(new ArrayBuffer(u8.length));
  out.set(u8);
  return out;
}

/** HPKE base-mode single-shot seal: `enc || ct`. */
async function hpkeSeal(
  scheme: 'hpke-p256' | 'hpke-x25519',
  recipientRaw: Uint8Array,
  plaintext: Uint8Array,
  info: Uint8Array,
  aad: Uint8Array,
): Promise<Uint8Array> {
  const s = suite(scheme);
  const pt = buf(plaintext);
  try {
    const pk = await s.kem.deserializePublicKey(buf(recipientRaw));
    const { enc, ct } = await s.seal({ recipientPublicKey: pk, info: buf(info) }, pt, buf(aad));
    return concatBytes(new Uint8Array(enc), new Uint8Array(ct));
  } catch (e) {
    throw cryptoError(`HPKE (${scheme}) seal failed`, e);
  } finally {
    zeroize(pt);
  }
}

async function rsaSeal(spki: Uint8Array, callKey: Uint8Array, context: Uint8Array): Promise<Uint8Array> {
  let key: CryptoKey;
  try {
    key = await globalThis.crypto.subtle.importKey('spki', buf(spki), { name: 'RSA-OAEP', hash: 'SHA-256' }, false, [
      'encrypt',
    ]);
  } catch (e) {
    throw new OracleCallError('noUsableKey', 'the rsa-oaep-256 key is not an RSA SubjectPublicKeyInfo', { cause: e });
  }
  const bits = (key.algorithm as RsaHashedKeyAlgorithm).modulusLength;
  if (!(bits >= 2048)) throw new OracleCallError('noUsableKey', `the rsa-oaep-256 key has ${bits} bits, fewer than 2048`);
  const pt = buf(callKey);
  try {
    return new Uint8Array(
      await globalThis.crypto.subtle.encrypt({ name: 'RSA-OAEP', label: buf(context) }, key, pt),
    );
  } catch (e) {
    throw cryptoError('RSA-OAEP seal failed', e);
  } finally {
    zeroize(pt);
  }
}

/** The subset of `eciesjs` this module uses. */
interface EciesModule {
  encrypt(receiverRawPK: string | Uint8Array, data: Uint8Array): Uint8Array;
}

let eciesLoader: () => Promise<EciesModule> = async () => {
  // A lazy import of an optional dependency: bundlers put it in its own chunk, loaded only
  // when an oracle offers nothing but a secp256k1 key.
  return (await import('eciesjs')) as EciesModule;
};

/** Test hook / bundler hook: how `eciesjs` is loaded (e.g. `() => import('eciesjs')`). */
export function setEciesLoader(loader: () => Promise<EciesModule>): void {
  eciesLoader = loader;
}

async function eciesSeal(raw: Uint8Array, callKey: Uint8Array, context: Uint8Array): Promise<Uint8Array> {
  let mod: EciesModule;
  try {
    mod = await eciesLoader();
  } catch (e) {
    throw new OracleCallError('noUsableKey', 'ecies-secp256k1 needs the optional package eciesjs, which is not installed', {
      cause: e,
    });
  }
  const pt = concatBytes(callKey, sha256(context));
  try {
    const out = mod.encrypt(raw, pt);
    if (out.length !== PAYLOAD_LEN['ecies-secp256k1']) throw cryptoError(`eciesjs wrote ${out.length} bytes, not 161`);
    return out;
  } catch (e) {
    throw e instanceof OracleCallError ? e : cryptoError('ECIES seal failed', e);
  } finally {
    zeroize(pt);
  }
}

function checkCallKey(callKey: Uint8Array): void {
  if (!(callKey instanceof Uint8Array) || callKey.length !== CALL_KEY_LEN) throw cryptoError('a call key is 32 bytes');
}

/**
 * Seals `callKey` to the oracle key `key` (as published: scheme, keyId, publicKey), bound to
 * the call `context` (§3 bytes). The key id is recomputed from the public key and must equal
 * `key.keyId`.
 *
 * @returns `v1.<scheme>.<base64url(body)>`
 * @throws OracleCallError `noUsableKey` (key not of its form, id not its fingerprint, RSA <
 *   2048 bits, eciesjs missing), `crypto` (sealing failed).
 */
export async function sealV1(key: OracleKeyInfo, callKey: Uint8Array, context: Uint8Array): Promise<string> {
  checkCallKey(callKey);
  if (!isKeyScheme(key.scheme)) throw new OracleCallError('noUsableKey', `unknown scheme ${String(key.scheme)}`);
  const checked = checkKey(key);
  const header = concatBytes(checked.keyId, contextDigest(context));
  let payload: Uint8Array;
  switch (key.scheme) {
    case 'hpke-p256':
    case 'hpke-x25519':
      payload = await hpkeSeal(key.scheme, checked.raw, callKey, context, header);
      break;
    case 'rsa-oaep-256':
      payload = await rsaSeal(checked.raw, callKey, context);
      break;
    case 'ecies-secp256k1':
      payload = await eciesSeal(checked.raw, callKey, context);
      break;
  }
  if (key.scheme !== 'rsa-oaep-256' && payload.length !== PAYLOAD_LEN[key.scheme]) {
    throw cryptoError(`the ${key.scheme} payload is ${payload.length} bytes, not ${PAYLOAD_LEN[key.scheme]}`);
  }
  return `v1.${key.scheme}.${encodeBase64url(concatBytes(header, payload))}`;
}

/** An envelope's text form split (no cryptography). */
export interface ParsedEnvelope {
  version: 1 | 2;
  scheme: KeyScheme;
  body: Uint8Array;
  /** `body[0..32]`. */
  header: Uint8Array;
}

/**
 * Splits `v1.` / `v2.<scheme>.<base64url>` strictly, in the order of §4.4 / §13.3: text form,
 * version, scheme, base64url, body length (v1 ≥ 32 bytes, v2 80..=4176). Legacy (un-prefixed)
 * envelopes are refused: this SDK never makes them.
 *
 * @throws OracleCallError `protocol` with `details.failure` = the Rust `EnvelopeError` name
 *   (`Malformed`, `UnknownVersion`, `UnknownScheme`, `Encoding`, `BadLength`).
 */
export function parseEnvelope(text: string): ParsedEnvelope {
  const fail = (failure: string, what: string) =>
    new OracleCallError('protocol', `envelope: ${what}`, { details: { field: 'encryptionKey', failure } });
  if (typeof text !== 'string') throw fail('Malformed', 'not a string');
  const parts = text.split('.');
  if (parts.length >= 2 && /^v[0-9]+$/.test(parts[0]!) && parts[0] !== 'v1' && parts[0] !== 'v2') {
    throw fail('UnknownVersion', `${parts[0]} is neither v1 nor v2`);
  }
  if (parts.length !== 3 || (parts[0] !== 'v1' && parts[0] !== 'v2')) {
    throw fail('Malformed', 'not a vN.<scheme>.<body> envelope');
  }
  const scheme = parts[1];
  if (!isKeyScheme(scheme)) throw fail('UnknownScheme', `unknown scheme ${scheme}`);
  let body: Uint8Array;
  try {
    body = decodeBase64url(parts[2]!, 'encryptionKey');
  } catch {
    throw fail('Encoding', 'body is not base64url without padding');
  }
  const version = parts[0] === 'v1' ? 1 : 2;
  if (version === 1 && body.length < HEADER_LEN) throw fail('BadLength', `v1 body is ${body.length} bytes`);
  if (version === 2 && (body.length < V2_MIN_BODY || body.length > V2_MAX_BODY)) {
    throw fail('BadLength', `v2 body is ${body.length} bytes, not ${V2_MIN_BODY}..=${V2_MAX_BODY}`);
  }
  return { version, scheme, body, header: body.subarray(0, HEADER_LEN) };
}

/**
 * Wraps the v1 envelope `inner` (sealed to the oracle's long-term key with the same
 * `context`) to the verified prekey (§13.3): HPKE base mode, DHKEM(X25519) / HKDF-SHA256 /
 * AES-256-GCM, info = context, aad = prekeyId || context digest, plaintext = the v1 text.
 *
 * @returns `v2.<scheme of inner>.<base64url(body)>`
 * @throws OracleCallError `crypto` (inner not a v1 envelope of at most 4096 bytes bound to
 *   `context`, or sealing failed).
 */
export async function sealV2(prekey: VerifiedPrekey, inner: string, context: Uint8Array): Promise<string> {
  if (!(prekey.id instanceof Uint8Array) || prekey.id.length !== 16 || !(prekey.publicKey instanceof Uint8Array) || prekey.publicKey.length !== 32) {
    throw cryptoError('the prekey is not a verified prekey (16-byte id, 32-byte X25519 key)');
  }
  let parsed: ParsedEnvelope;
  try {
    parsed = parseEnvelope(inner);
  } catch (e) {
    throw cryptoError('the inner envelope is not a v1 envelope', e);
  }
  const digest = contextDigest(context);
  if (parsed.version !== 1) throw cryptoError('the inner envelope is not a v1 envelope');
  if (inner.length > MAX_INNER_ENVELOPE_LEN) throw cryptoError(`the inner envelope is ${inner.length} bytes, over 4096`);
  if (!bytesEqual(parsed.header.subarray(16, 32), digest)) {
    throw cryptoError('the inner envelope is bound to another call context');
  }
  const header = concatBytes(prekey.id, digest);
  const payload = await hpkeSeal('hpke-x25519', prekey.publicKey, new TextEncoder().encode(inner), context, header);
  return `v2.${parsed.scheme}.${encodeBase64url(concatBytes(header, payload))}`;
}

/** Checks that `text` is a v1/v2 envelope (a cheap guard before it goes into an event). */
export function assertEnvelope(text: string): ParsedEnvelope {
  try {
    return parseEnvelope(text);
  } catch (e) {
    throw e instanceof OracleCallError ? e : protocolError('encryptionKey', 'not an envelope');
  }
}

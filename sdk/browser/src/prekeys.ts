/**
 * Signed prekeys (docs/PROTOCOL.md §13.1–§13.2): parsing what `POST /prekeys/claim` answers
 * and verifying it against the oracle's prekey signing key and DID before anything is sealed
 * to it.
 *
 * The signature is Ed25519 (RFC 8032) over
 * `str("oracle-calls/prekey/v1") || str(oracleDid) || prekeyId (16) || publicKey (32) ||
 * u8(lastResort)`, `str(s) = u32be(len(utf8 s)) || utf8 s`, verified strictly as the Rust
 * side does: S < L, canonical encodings of R and A, small-order R or A refused.
 * @noble/curves does the curve arithmetic (WebCrypto's Ed25519 is not in every browser this
 * SDK targets and its strictness differs between engines).
 */

import { ed25519 } from '@noble/curves/ed25519.js';

import { concatBytes, decodeBase64urlFixed, encodeBase64url, utf8 } from './base64.js';
import { OracleCallError } from './errors.js';

/** The domain-separation label of the signed bytes. */
export const PREKEY_SIGNATURE_LABEL = 'oracle-calls/prekey/v1';
export const PREKEY_ID_LEN = 16;

/** A signed prekey as the server hands it out (§13.2). */
export interface SignedPrekey {
  /** 16 bytes, base64url (22 chars). */
  prekeyId: string;
  /** X25519, 32 bytes, base64url (43 chars). */
  publicKey: string;
  lastResort: boolean;
  /** Ed25519, 64 bytes, base64url (86 chars). */
  signature: string;
}

/** A prekey whose signature verified: the only thing `sealV2` seals to. */
export interface VerifiedPrekey {
  /** The 16 id bytes (the v2 header's first half). */
  id: Uint8Array;
  /** The id as base64url, as the server wrote it. */
  idText: string;
  /** The X25519 public key. */
  publicKey: Uint8Array;
  /** The last-resort prekey: forward secrecy only from its next rotation on (§13.1). */
  lastResort: boolean;
}

/** Why a prekey was refused; the Rust `PrekeyError` variant names. */
export type PrekeyFailure = 'Encoding' | 'BadLength' | 'BadSignature' | 'InvalidKey' | 'Malformed';

function invalid(failure: PrekeyFailure, message: string, field?: string): OracleCallError {
  return new OracleCallError('prekeyInvalid', message, {
    details: field === undefined ? { failure } : { failure, field },
  });
}

function isObject(v: unknown): v is Record<string, unknown> {
  return typeof v === 'object' && v !== null && !Array.isArray(v);
}

/**
 * Parses a claimed prekey's JSON strictly: exactly the four fields (unknown fields refused, as
 * the server's type does), each of its type. The field values are decoded by
 * {@link verifyPrekey}.
 *
 * @throws OracleCallError `prekeyInvalid` (`details.failure` = `Malformed`)
 */
export function parseSignedPrekey(json: unknown): SignedPrekey {
  if (!isObject(json)) throw invalid('Malformed', 'the claimed prekey is not a JSON object');
  for (const k of Object.keys(json)) {
    if (!['prekeyId', 'publicKey', 'lastResort', 'signature'].includes(k)) {
      throw invalid('Malformed', `the claimed prekey has an unknown field ${k}`, k);
    }
  }
  const { prekeyId, publicKey, lastResort, signature } = json;
  for (const [field, v] of [['prekeyId', prekeyId], ['publicKey', publicKey], ['signature', signature]] as const) {
    if (typeof v !== 'string') throw invalid('Malformed', `${field}: missing or not a string`, field);
  }
  if (typeof lastResort !== 'boolean') throw invalid('Malformed', 'lastResort: missing or not a boolean', 'lastResort');
  return { prekeyId: prekeyId as string, publicKey: publicKey as string, lastResort, signature: signature as string };
}

function field(text: string, length: number, name: string): Uint8Array {
  try {
    return decodeBase64urlFixed(text, length, name);
  } catch (e) {
    const bad = e instanceof OracleCallError && e.details?.['expected'] !== undefined ? 'BadLength' : 'Encoding';
    throw invalid(bad, `${name}: ${e instanceof Error ? e.message : String(e)}`, name);
  }
}

/** `a < b` for 32-byte little-endian numbers. */
function lessLE(a: Uint8Array, b: Uint8Array): boolean {
  for (let i = 31; i >= 0; i--) {
    if (a[i] !== b[i]) return a[i]! < b[i]!;
  }
  return false;
}

/** The Ed25519 group order L, 32 bytes little-endian. */
const GROUP_ORDER_LE = new Uint8Array([
  0xed, 0xd3, 0xf5, 0x5c, 0x1a, 0x63, 0x12, 0x58, 0xd6, 0x9c, 0xf7, 0xa2, 0xde, 0xf9, 0xde, 0x14, 0, 0, 0, 0, 0, 0, 0,
  0, 0, 0, 0, 0, 0, 0, 0, 0x10,
]);

/** A point decoded strictly (canonical y < p), or undefined. */
function strictPoint(bytes: Uint8Array): ReturnType<typeof ed25519.Point.fromBytes> | undefined {
  try {
    return ed25519.Point.fromBytes(bytes, false);
  } catch {
    return undefined;
  }
}

/**
 * Parses the oracle's prekey signing key (`prekeySigningKey`, base64url of 32 bytes): a valid,
 * canonically encoded Ed25519 point not of small order.
 *
 * @throws OracleCallError `noUsableKey` (as the Rust trust store reports an unusable one)
 */
export function parsePrekeySigningKey(text: string): Uint8Array {
  let raw: Uint8Array;
  try {
    raw = decodeBase64urlFixed(text, 32, 'prekeySigningKey');
  } catch (e) {
    throw new OracleCallError('noUsableKey', `the prekey signing key ${text}: ${e instanceof Error ? e.message : String(e)}`);
  }
  const p = strictPoint(raw);
  if (p === undefined || p.isSmallOrder()) {
    throw new OracleCallError('noUsableKey', `the prekey signing key ${text}: not a usable Ed25519 public key`);
  }
  return raw;
}

/** The bytes the prekey signature covers (§13.2). */
export function prekeySignedBytes(oracleDid: string, id: Uint8Array, publicKey: Uint8Array, lastResort: boolean): Uint8Array {
  const str = (s: string) => {
    const b = utf8(s);
    const len = new Uint8Array(4);
    new DataView(len.buffer).setUint32(0, b.length, false);
    return concatBytes(len, b);
  };
  return concatBytes(str(PREKEY_SIGNATURE_LABEL), str(oracleDid), id, publicKey, new Uint8Array([lastResort ? 1 : 0]));
}

/**
 * Verifies a claimed prekey against the oracle's prekey signing key (32 raw bytes, as
 * verified and pinned) and the DID the application is calling.
 *
 * @throws OracleCallError `prekeyInvalid`, `details.failure` = `Encoding` / `BadLength` (with
 *   `details.field`: prekeyId, publicKey, signature, checked in that order) or `BadSignature`
 *   (also for a signing key that is not a usable point: `InvalidKey`).
 */
export function verifyPrekey(signingKeyRaw: Uint8Array, oracleDid: string, claimed: SignedPrekey): VerifiedPrekey {
  const id = field(claimed.prekeyId, PREKEY_ID_LEN, 'prekeyId');
  const publicKey = field(claimed.publicKey, 32, 'publicKey');
  const sig = field(claimed.signature, 64, 'signature');
  if (typeof claimed.lastResort !== 'boolean') throw invalid('Malformed', 'lastResort is not a boolean', 'lastResort');
  const a = signingKeyRaw instanceof Uint8Array && signingKeyRaw.length === 32 ? strictPoint(signingKeyRaw) : undefined;
  if (a === undefined || a.isSmallOrder()) {
    throw invalid('InvalidKey', 'the prekey signing key is not a usable Ed25519 public key');
  }
  const bad = () => invalid('BadSignature', `prekey ${claimed.prekeyId}: the signature does not verify`);
  // S < L (RFC 8032 §5.1.7), checked here rather than left to the library.
  if (!lessLE(sig.subarray(32), GROUP_ORDER_LE)) throw bad();
  // R canonically encoded and not of small order.
  const r = strictPoint(sig.subarray(0, 32));
  if (r === undefined || r.isSmallOrder()) throw bad();
  const msg = prekeySignedBytes(oracleDid, id, publicKey, claimed.lastResort);
  let ok = false;
  try {
    ok = ed25519.verify(sig, msg, signingKeyRaw, { zip215: false });
  } catch {
    ok = false;
  }
  if (!ok) throw bad();
  return { id, idText: encodeBase64url(id), publicKey, lastResort: claimed.lastResort };
}

/**
 * Key transparency for oracle records (docs/PROTOCOL.md §12, §12.1), verified in the browser
 * as the Rust client does it (`crates/kt`, `crates/client/src/kt.rs`): the oracle's record
 * comes from a directory the page is configured with, and is accepted only through the VRF
 * and Merkle paths of an akd 0.13 lookup proof (WhatsApp v1 configuration: BLAKE3,
 * ECVRF-EDWARDS25519-SHA512-TAI) against a checkpoint signed by that directory's Ed25519 key,
 * never older than the checkpoint stored before (rollback), never another one for the same
 * epoch (fork), never dated earlier.
 *
 * API
 * - `parseDirectoryPublicKey(json)` → `DirectoryPublicKey`: `{"signingKey", "vrfKey"}` (32
 *   bytes each, base64url); the VRF key must be a valid Edwards point of large order.
 * - `verifyCheckpoint(doc, directoryPublicKey)` → `Checkpoint`: a signed checkpoint (its JSON,
 *   or the JSON text) under the directory key (a `DirectoryPublicKey` or the raw 32-byte
 *   Ed25519 signing key). `unknown_key` if it names another key id, `bad_signature`.
 * - `verifyLookup({directoryPublicKey, did, response, stored?})` → `VerifiedLookup`: one
 *   `GET /kt/v1/lookup/{did}` answer (its JSON text or parsed value): the stored checkpoint
 *   checks (as the Rust `Verifier`), the checkpoint signature, the lookup proof; returns the
 *   record, its epoch and version, and the checkpoint to store for next time.
 * - `verifyHistory({directoryPublicKey, did, response, stored?})` → `VerifiedHistory`: one
 *   `GET /kt/v1/history/{did}` answer: every version of the record, newest first, each proved
 *   in the tree at its epoch, no later version hidden; `changeSince(history, pinned, version)`
 *   → the version that replaced a pinned one (`history_rewritten` if the history lacks it).
 * - `verifyOracleRecord({directoryUrl, directoryPublicKey, oracleDid, stored?, pinned?,
 *   fetchImpl?, signal?})` → `VerifiedOracleRecord`: what the Rust client does, over HTTP:
 *   `{directoryUrl}/kt/v1/lookup/{did}` verified; when `pinned` (record and version) is not
 *   what is served now, `{directoryUrl}/kt/v1/history/{did}` verified too and `changeEpoch`
 *   set. `https://`, or `http://` on loopback only; up to 4 attempts on network errors and
 *   5xx, 200 ms backoff doubling, 15 s per attempt; answers over 256 KiB (history: 8 MiB)
 *   refused. Persist the result's `stored` (also on a `KtError` that carries one).
 * - `compareRecordWithWellKnown(record, wellKnownJson)` → `KtMismatch[]`: what the oracle's
 *   server (`/.well-known/oracle-calls`) says differently from the verified record (`keys`:
 *   a served key not in the record; `matrixUserId`; `matrixDevices`: not exactly the record's
 *   set; `prekeySigningKey`: not the record's, both absent being equal). Empty: they agree.
 * - `encodeRecord` / `decodeRecord`: the record's canonical bytes (§12), strict.
 *
 * Every failure is a `KtError` whose `reason` is one of `KtErrorReason`; the proof reasons
 * are those of the Rust verifier (the vectors `crates/kt/tests/vectors/kt_lookup.json` hold
 * its reason for each refused answer). Proof failures carry no detail, as in Rust.
 *
 * The byte-level description is docs/PROTOCOL.md §12.2. Wire details mirrored from akd_core
 * 0.13 and rust-protobuf 3.7 (so that this verifier accepts exactly what the Rust one
 * accepts): the proofs are proto2 `LookupProof` / `HistoryProof` messages;
 * fields are matched on the whole tag (a known field number with another wire type is an
 * unknown field), unknown fields and groups are skipped, a repeated singular field keeps its
 * last value, varints are at most 10 bytes (the 10th at most 1), 32-bit fields refuse larger
 * values, tag 0 and wire types 6 and 7 are refused; a node label's value is right-padded to
 * 32 bytes (at most 32 bytes, length at most 256 bits); a sibling's `direction` is read
 * through the mask 0x0F; only a sibling proof's first sibling counts; points are decoded as
 * curve25519-dalek decodes them (y taken modulo p), a VRF proof's `s` is reduced modulo L.
 *
 * Known differences from the Rust side, all on JSON that no directory sends: `JSON.parse`
 * keeps the last of duplicate keys (serde refuses them) and reads `4.0` as `4` (serde refuses
 * a float for an integer); epochs and times beyond 2^53 are refused as malformed. Ed25519
 * checkpoint signatures are checked strictly (noble, RFC 8032 without ZIP-215), which also
 * refuses a small-order signing key that aws-lc would take.
 */

import { ed25519 } from '@noble/curves/ed25519.js';
import { blake3 } from '@noble/hashes/blake3.js';
import { sha256, sha512 } from '@noble/hashes/sha2.js';

import { bytesEqual, concatBytes } from './base64.js';

// ---------------------------------------------------------------------------------------------
// Errors

/** Why a key-transparency check failed. */
export type KtErrorReason =
  /** A checkpoint names another signing key than the configured directory key. */
  | 'unknown_key'
  /** A checkpoint's Ed25519 signature does not verify. */
  | 'bad_signature'
  /** A checkpoint older than the stored one. */
  | 'rollback'
  /** Another checkpoint for the stored checkpoint's epoch. */
  | 'fork'
  /** A newer checkpoint dated before the stored one. */
  | 'time_went_backwards'
  /** JSON, base64url or protobuf that is not well-formed. */
  | 'malformed'
  /** A proof or record over its size limit. */
  | 'too_large'
  /** The proved value is not a well-formed oracle record. */
  | 'malformed_record'
  /** The lookup proof (VRF, membership, freshness) does not verify. */
  | 'lookup_proof'
  /** The key-history proof does not verify. */
  | 'history_proof'
  /** The verified history lacks the pinned record at its version: a value once proved was rewritten. */
  | 'history_rewritten'
  /** A key given to the API is not a valid key (caller's configuration). */
  | 'invalid_key'
  /** An argument given to the API is not valid (a DID, a URL). */
  | 'invalid_argument'
  /** The directory URL is plain `http://` outside loopback. */
  | 'insecure_url'
  /** The directory has no record for the DID (HTTP 404). */
  | 'not_found'
  /** The directory could not be reached or answered an error. */
  | 'unavailable';

/** The one error type of this module. */
export class KtError extends Error {
  override readonly name = 'KtError';
  readonly reason: KtErrorReason;
  /**
   * Set when a lookup verified before a later step failed (`verifyOracleRecord` with a pinned
   * record): the newer checkpoint to store anyway, as the Rust client does.
   */
  readonly stored: StoredCheckpoint | undefined;

  constructor(reason: KtErrorReason, message: string, stored?: StoredCheckpoint) {
    super(message);
    this.reason = reason;
    this.stored = stored;
  }
}

const fail = (reason: KtErrorReason, message: string): never => {
  throw new KtError(reason, message);
};

// ---------------------------------------------------------------------------------------------
// Types

/** The directory's state at one epoch (what a checkpoint signature covers). */
export interface Checkpoint {
  /** The akd epoch (0 for the empty directory). */
  readonly epoch: number;
  /** The akd tree's root hash (32 bytes). */
  readonly rootHash: Uint8Array;
  /** Milliseconds since the Unix epoch. */
  readonly timeMs: number;
}

/** A signed checkpoint as JSON (§12): what a client stores for the rollback check. */
export interface SignedCheckpointJson {
  readonly checkpoint: { readonly epoch: number; readonly rootHash: string; readonly timeMs: number };
  readonly signature: string;
  readonly keyId: string;
}

/** The checkpoint a client stored after its last verified lookup (persist it as JSON). */
export type StoredCheckpoint = SignedCheckpointJson;

/** A parsed signed checkpoint. */
export interface SignedCheckpoint {
  readonly checkpoint: Checkpoint;
  readonly signature: Uint8Array;
  readonly keyId: string;
  /** The JSON it was parsed from (normalized: exactly the known fields). */
  readonly json: SignedCheckpointJson;
}

/** What a client is configured with to trust a directory. */
export interface DirectoryPublicKey {
  /** Ed25519 checkpoint signing key (32 bytes). */
  readonly signingKey: Uint8Array;
  /** ECVRF-EDWARDS25519-SHA512-TAI public key (32 bytes). */
  readonly vrfKey: Uint8Array;
  /** The signing key's id: 32 lower-case hex digits. */
  readonly keyId: string;
}

/** One key of an oracle, as in the well-known (§6.1). */
export interface RecordKey {
  readonly keyId: string;
  readonly scheme: KeyScheme;
  readonly publicKey: string;
}

/** One bot device, as in the well-known's `matrixDevices`. */
export interface RecordDevice {
  readonly deviceId: string;
  readonly ed25519: string;
}

/** The key schemes a record may name (a record naming another is malformed). */
export type KeyScheme = 'hpke-p256' | 'hpke-x25519' | 'rsa-oaep-256' | 'ecies-secp256k1';

const KEY_SCHEMES: readonly string[] = ['hpke-p256', 'hpke-x25519', 'rsa-oaep-256', 'ecies-secp256k1'];

/** An oracle's key-transparency record (§12), in its JSON shape. */
export interface OracleRecord {
  readonly keys: readonly RecordKey[];
  readonly matrixUserId: string;
  readonly botDevices: readonly RecordDevice[];
  readonly agentName: string;
  /** Absent when the oracle offers no prekeys (a v1 record). */
  readonly prekeySigningKey?: string;
}

/** A record the directory proved. */
export interface VerifiedLookup {
  readonly record: OracleRecord;
  /** The epoch in which this version of the record was published. */
  readonly epoch: number;
  /** The record's version for this DID (1 for the first, +1 per change). */
  readonly version: number;
  /** The checkpoint the proof was verified against. */
  readonly checkpoint: Checkpoint;
  /** The checkpoint to store for the next lookup: the newer of the stored and this one. */
  readonly stored: StoredCheckpoint;
}

/** A field in which the oracle's server disagrees with the verified record. */
export interface KtMismatch {
  readonly what: 'keys' | 'matrixUserId' | 'matrixDevices' | 'prekeySigningKey';
  /** The record's value, as text. */
  readonly record: string;
  /** The server's value, as text. */
  readonly served: string;
}

// ---------------------------------------------------------------------------------------------
// Limits and constants

/** The largest lookup proof parsed (as the Rust verifier). */
export const MAX_LOOKUP_PROOF_BYTES = 128 * 1024;
/** The largest key-history proof parsed. */
export const MAX_HISTORY_PROOF_BYTES = 4 * 1024 * 1024;
/** The largest encoded record decoded. */
export const MAX_RECORD_BYTES = 16 * 1024;
/** The largest lookup answer read from the directory. */
const MAX_LOOKUP_BODY = 2 * MAX_LOOKUP_PROOF_BYTES;
/** The largest key-history answer read from the directory. */
const MAX_HISTORY_BODY = 2 * MAX_HISTORY_PROOF_BYTES;
const ATTEMPTS = 4;
const ATTEMPT_TIMEOUT_MS = 15_000;
const MAX_DID_LEN = 256;

const CHECKPOINT_CONTEXT = 'oracle-calls/kt-checkpoint/v1';
const RECORD_TAG_V1 = 'oracle-calls/kt-record/v1';
const RECORD_TAG_V2 = 'oracle-calls/kt-record/v2';
const SPKI_ED25519_PREFIX = Uint8Array.of(0x30, 0x2a, 0x30, 0x05, 0x06, 0x03, 0x2b, 0x65, 0x70, 0x03, 0x21, 0x00);

const utf8 = new TextEncoder();
const utf8Strict = new TextDecoder('utf-8', { fatal: true, ignoreBOM: true });

// ---------------------------------------------------------------------------------------------
// Bytes, hex, base64url


function u32be(n: number): Uint8Array {
  const out = new Uint8Array(4);
  new DataView(out.buffer).setUint32(0, n >>> 0);
  return out;
}

function u64be(n: bigint): Uint8Array {
  const out = new Uint8Array(8);
  new DataView(out.buffer).setBigUint64(0, BigInt.asUintN(64, n));
  return out;
}

function i64be(n: bigint): Uint8Array {
  const out = new Uint8Array(8);
  new DataView(out.buffer).setBigInt64(0, BigInt.asIntN(64, n));
  return out;
}

const HEX = '0123456789abcdef';

function toHex(bytes: Uint8Array): string {
  let s = '';
  for (const b of bytes) s += (HEX[b >> 4] ?? '') + (HEX[b & 15] ?? '');
  return s;
}

/** Lower-case hex of exactly `n` bytes, or `undefined`. */
function fromHex(text: string, n: number): Uint8Array | undefined {
  if (text.length !== 2 * n || !/^[0-9a-f]*$/.test(text)) return undefined;
  const out = new Uint8Array(n);
  for (let i = 0; i < n; i++) out[i] = parseInt(text.slice(2 * i, 2 * i + 2), 16);
  return out;
}

const B64URL = 'ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_';
const B64URL_INDEX: ReadonlyMap<string, number> = new Map([...B64URL].map((c, i) => [c, i]));

/** Unpadded base64url, strict (no padding, no other alphabet, no stray bits), or `undefined`. */
function fromBase64Url(text: string): Uint8Array | undefined {
  if (text.length % 4 === 1) return undefined;
  const out = new Uint8Array(Math.floor((text.length * 3) / 4));
  let acc = 0;
  let bits = 0;
  let at = 0;
  for (const c of text) {
    const v = B64URL_INDEX.get(c);
    if (v === undefined) return undefined;
    acc = ((acc << 6) | v) & 0xffffff;
    bits += 6;
    if (bits >= 8) {
      bits -= 8;
      out[at++] = (acc >> bits) & 0xff;
    }
  }
  // The last character's unused low bits must be zero.
  if ((acc & ((1 << bits) - 1)) !== 0) return undefined;
  return at === out.length ? out : undefined;
}

// ---------------------------------------------------------------------------------------------
// JSON shapes (strict: exactly the known fields)

type JsonObject = Record<string, unknown>;

function isObject(v: unknown): v is JsonObject {
  return typeof v === 'object' && v !== null && !Array.isArray(v);
}

function parseJsonText(text: string, what: string): unknown {
  try {
    return JSON.parse(text) as unknown;
  } catch {
    return fail('malformed', `malformed ${what}: not JSON`);
  }
}

function strictObject(v: unknown, fields: readonly string[], what: string): JsonObject {
  if (!isObject(v)) return fail('malformed', `malformed ${what}: not an object`);
  for (const k of Object.keys(v)) {
    if (!fields.includes(k)) fail('malformed', `malformed ${what}: unknown field`);
  }
  for (const k of fields) {
    if (!(k in v)) fail('malformed', `malformed ${what}: missing ${k}`);
  }
  return v;
}

function safeInteger(v: unknown, min: number, what: string): number {
  if (typeof v !== 'number' || !Number.isSafeInteger(v) || v < min) {
    return fail('malformed', `malformed ${what}`);
  }
  return v;
}

function b64Field(v: unknown, n: number | undefined, what: string): Uint8Array {
  const bytes = typeof v === 'string' ? fromBase64Url(v) : undefined;
  if (bytes === undefined || (n !== undefined && bytes.length !== n)) {
    return fail('malformed', `malformed ${what}: expected ${n ?? 'some'} bytes of unpadded base64url`);
  }
  return bytes;
}

// ---------------------------------------------------------------------------------------------
// Curve points (as curve25519-dalek decodes them)

type Point = ReturnType<typeof ed25519.Point.fromBytes>;
const Point = ed25519.Point;
const L = ed25519.Point.Fn.ORDER;

/** dalek's `CompressedEdwardsY::decompress`: y is taken modulo p, a negative zero x is fine. */
function decompress(bytes: Uint8Array): Point | undefined {
  try {
    return Point.fromBytes(bytes, true);
  } catch {
    return undefined;
  }
}

function leToBigint(bytes: Uint8Array): bigint {
  let n = 0n;
  for (let i = bytes.length - 1; i >= 0; i--) n = (n << 8n) | BigInt(bytes[i] ?? 0);
  return n;
}

// ---------------------------------------------------------------------------------------------
// Directory key and checkpoints

/** The id of an Ed25519 key: SHA-256 of its SubjectPublicKeyInfo DER, first 16 bytes, hex. */
export function directoryKeyId(signingKey: Uint8Array): string {
  if (signingKey.length !== 32) fail('invalid_key', 'an Ed25519 public key is 32 bytes');
  return toHex(sha256(concatBytes(SPKI_ED25519_PREFIX, signingKey)).subarray(0, 16));
}

/** A directory key from its raw parts; the VRF key must be a point of large order. */
export function directoryPublicKey(signingKey: Uint8Array, vrfKey: Uint8Array): DirectoryPublicKey {
  if (signingKey.length !== 32) fail('invalid_key', 'the signing key is not 32 bytes');
  const vrf = vrfKey.length === 32 ? decompress(vrfKey) : undefined;
  if (vrf === undefined || vrf.isSmallOrder()) {
    fail('invalid_key', 'VRF public key is not a valid Ed25519 point');
  }
  return {
    signingKey: Uint8Array.from(signingKey),
    vrfKey: Uint8Array.from(vrfKey),
    keyId: directoryKeyId(signingKey),
  };
}

/** Parses `{"signingKey", "vrfKey"}` (a value or JSON text). */
export function parseDirectoryPublicKey(json: unknown): DirectoryPublicKey {
  try {
    const v = strictObject(
      typeof json === 'string' ? parseJsonText(json, 'directory public key') : json,
      ['signingKey', 'vrfKey'],
      'directory public key',
    );
    return directoryPublicKey(b64Field(v['signingKey'], 32, 'signingKey'), b64Field(v['vrfKey'], 32, 'vrfKey'));
  } catch (e) {
    if (e instanceof KtError) throw new KtError('invalid_key', e.message);
    throw e;
  }
}

/** The 77 bytes a checkpoint signature covers. */
export function checkpointSignedBytes(c: Checkpoint): Uint8Array {
  return concatBytes(utf8.encode(CHECKPOINT_CONTEXT), u64be(BigInt(c.epoch)), c.rootHash, i64be(BigInt(c.timeMs)));
}

/** Parses a signed checkpoint (a value or JSON text); only its shape, not its signature. */
export function parseSignedCheckpoint(json: unknown): SignedCheckpoint {
  const v = strictObject(
    typeof json === 'string' ? parseJsonText(json, 'signed checkpoint') : json,
    ['checkpoint', 'signature', 'keyId'],
    'signed checkpoint',
  );
  const c = strictObject(v['checkpoint'], ['epoch', 'rootHash', 'timeMs'], 'checkpoint');
  const epoch = safeInteger(c['epoch'], 0, 'checkpoint epoch');
  const timeMs = safeInteger(c['timeMs'], Number.MIN_SAFE_INTEGER, 'checkpoint timeMs');
  const rootHex = c['rootHash'];
  const rootHash = typeof rootHex === 'string' ? fromHex(rootHex, 32) : undefined;
  if (rootHash === undefined) return fail('malformed', 'malformed checkpoint rootHash: expected 64 hex digits');
  const signature = b64Field(v['signature'], 64, 'checkpoint signature');
  const keyId = v['keyId'];
  if (typeof keyId !== 'string' || fromHex(keyId, 16) === undefined) {
    return fail('malformed', 'malformed checkpoint keyId: expected 32 hex digits');
  }
  return {
    checkpoint: { epoch, rootHash, timeMs },
    signature,
    keyId,
    json: {
      checkpoint: { epoch, rootHash: rootHex as string, timeMs },
      signature: v['signature'] as string,
      keyId,
    },
  };
}

function signingKeyOf(key: DirectoryPublicKey | Uint8Array): { signingKey: Uint8Array; keyId: string } {
  if (key instanceof Uint8Array) return { signingKey: key, keyId: directoryKeyId(key) };
  return key;
}

/**
 * Verifies a signed checkpoint (a `SignedCheckpoint`, its JSON value or JSON text) under the
 * directory key (a `DirectoryPublicKey` or the raw 32-byte Ed25519 signing key).
 * Strict RFC 8032 verification (canonical encodings, S < L).
 */
export function verifyCheckpoint(
  doc: SignedCheckpoint | SignedCheckpointJson | string | unknown,
  directoryKey: DirectoryPublicKey | Uint8Array,
): Checkpoint {
  const signed = isParsedCheckpoint(doc) ? doc : parseSignedCheckpoint(doc);
  const { signingKey, keyId } = signingKeyOf(directoryKey);
  if (signed.keyId !== keyId) {
    fail('unknown_key', `checkpoint signed by an unknown directory key (key id ${signed.keyId})`);
  }
  let ok = false;
  try {
    ok = ed25519.verify(signed.signature, checkpointSignedBytes(signed.checkpoint), signingKey, { zip215: false });
  } catch {
    ok = false;
  }
  if (!ok) fail('bad_signature', 'checkpoint signature does not verify');
  return signed.checkpoint;
}

function isParsedCheckpoint(v: unknown): v is SignedCheckpoint {
  return isObject(v) && v['signature'] instanceof Uint8Array && isObject(v['json']);
}

function sameCheckpoint(a: Checkpoint, b: Checkpoint): boolean {
  return a.epoch === b.epoch && a.timeMs === b.timeMs && bytesEqual(a.rootHash, b.rootHash);
}

/** The Rust `Verifier::check`: the signature, then rollback, fork and time against `stored`. */
function checkAgainstStored(
  key: DirectoryPublicKey,
  offered: SignedCheckpoint,
  stored: SignedCheckpoint | undefined,
): Checkpoint {
  const cp = verifyCheckpoint(offered, key);
  if (stored !== undefined) {
    const s = stored.checkpoint;
    if (cp.epoch < s.epoch) {
      fail('rollback', `rollback: checkpoint for epoch ${cp.epoch} offered after epoch ${s.epoch} was seen`);
    }
    if (cp.epoch === s.epoch && !sameCheckpoint(cp, s)) {
      fail('fork', `fork: two different signed checkpoints for epoch ${cp.epoch}`);
    }
    if (cp.timeMs < s.timeMs) {
      fail('time_went_backwards', `checkpoint for epoch ${cp.epoch} is dated before an earlier epoch's checkpoint`);
    }
  }
  return cp;
}

// ---------------------------------------------------------------------------------------------
// The record (§12)

/** The record's canonical bytes (v2 when it has a prekey signing key). */
export function encodeRecord(record: OracleRecord): Uint8Array {
  const parts: Uint8Array[] = [];
  const str = (s: string): void => {
    const b = utf8.encode(s);
    parts.push(u32be(b.length), b);
  };
  const hasPrekey = record.prekeySigningKey !== undefined;
  str(hasPrekey ? RECORD_TAG_V2 : RECORD_TAG_V1);
  parts.push(u32be(record.keys.length));
  for (const k of record.keys) {
    str(k.scheme);
    str(k.keyId);
    str(k.publicKey);
  }
  str(record.matrixUserId);
  parts.push(u32be(record.botDevices.length));
  for (const d of record.botDevices) {
    str(d.deviceId);
    str(d.ed25519);
  }
  str(record.agentName);
  if (record.prekeySigningKey !== undefined) str(record.prekeySigningKey);
  return concatBytes(...parts);
}

/** Decodes a record, strictly: known tag and schemes, UTF-8, no trailing bytes, ≤ 16 KiB. */
export function decodeRecord(bytes: Uint8Array): OracleRecord {
  if (bytes.length > MAX_RECORD_BYTES) {
    fail('too_large', `oracle record is too large (${bytes.length} bytes, at most ${MAX_RECORD_BYTES})`);
  }
  let at = 0;
  const bad = (what: string): never => fail('malformed_record', `malformed oracle record: ${what}`);
  const take = (n: number): Uint8Array => {
    if (n > bytes.length - at) bad('truncated');
    const out = bytes.subarray(at, at + n);
    at += n;
    return out;
  };
  const u32 = (): number => new DataView(take(4).slice().buffer).getUint32(0);
  const str = (): string => {
    const b = take(u32());
    try {
      return utf8Strict.decode(b);
    } catch {
      return bad('not UTF-8');
    }
  };
  const tag = str();
  if (tag !== RECORD_TAG_V1 && tag !== RECORD_TAG_V2) bad('unknown record tag');
  const keys: RecordKey[] = [];
  for (let i = u32(); i > 0; i--) {
    const scheme = str();
    if (!KEY_SCHEMES.includes(scheme)) bad('unknown key scheme');
    const keyId = str();
    const publicKey = str();
    keys.push({ keyId, scheme: scheme as KeyScheme, publicKey });
  }
  const matrixUserId = str();
  const botDevices: RecordDevice[] = [];
  for (let i = u32(); i > 0; i--) {
    const deviceId = str();
    const ed = str();
    botDevices.push({ deviceId, ed25519: ed });
  }
  const agentName = str();
  const prekeySigningKey = tag === RECORD_TAG_V2 ? str() : undefined;
  if (at !== bytes.length) bad('trailing bytes');
  const record: OracleRecord = { keys, matrixUserId, botDevices, agentName };
  return prekeySigningKey === undefined ? record : { ...record, prekeySigningKey };
}

// ---------------------------------------------------------------------------------------------
// Protobuf (proto2, as rust-protobuf 3.7 reads akd_core's types.proto)

const RECURSION_LIMIT = 100;

const malformedProof = (): never => fail('malformed', 'malformed lookup proof');

class PbReader {
  pos: number;

  constructor(
    readonly buf: Uint8Array,
    start: number,
    readonly end: number,
  ) {
    this.pos = start;
  }

  atEnd(): boolean {
    return this.pos >= this.end;
  }

  byte(): number {
    if (this.pos >= this.end) malformedProof();
    return this.buf[this.pos++] ?? 0;
  }

  varint64(): bigint {
    let r = 0n;
    for (let i = 0; ; i++) {
      if (i === 10) return malformedProof();
      const b = this.byte();
      if (i === 9 && (b & 0x7f) > 1) return malformedProof();
      r |= BigInt(b & 0x7f) << BigInt(7 * i);
      if (b < 0x80) return r;
    }
  }

  varint32(): number {
    const v = this.varint64();
    if (v > 0xffffffffn) malformedProof();
    return Number(v);
  }

  /** `n` bytes within the current limit. */
  take(n: number): Uint8Array {
    if (n > this.end - this.pos) malformedProof();
    const out = this.buf.subarray(this.pos, this.pos + n);
    this.pos += n;
    return out;
  }

  bytes(): Uint8Array {
    return Uint8Array.from(this.take(this.varint32()));
  }

  /** A nested message's reader (length as varint64, within the current limit). */
  message(depth: number): PbReader {
    if (depth >= RECURSION_LIMIT) malformedProof();
    const len = this.varint64();
    if (len > BigInt(this.end - this.pos)) malformedProof();
    const start = this.pos;
    this.pos += Number(len);
    return new PbReader(this.buf, start, this.pos);
  }

  /** A tag (varint32); its wire type and field number are checked when it is unknown. */
  tag(): number {
    return this.varint32();
  }

  /** Skips an unknown field (rust-protobuf's `read_unknown_or_skip_group`). */
  skipUnknown(tag: number, depth: number): void {
    const wireType = tag & 7;
    if (wireType > 5 || tag >>> 3 === 0) malformedProof();
    if (wireType === 3) {
      // The outer group must end with an end-group tag before the limit.
      for (;;) {
        const t = this.tag();
        if ((t & 7) > 5 || t >>> 3 === 0) malformedProof();
        if ((t & 7) === 4) return;
        this.skipField(t & 7, depth);
      }
    }
    this.skipField(wireType, depth);
  }

  private skipField(wireType: number, depth: number): void {
    switch (wireType) {
      case 0:
        this.varint64();
        return;
      case 1:
        this.take(8);
        return;
      case 5:
        this.take(4);
        return;
      case 2:
        this.take(this.varint32());
        return;
      case 3: {
        // A nested group ends at its end-group tag or at the limit.
        if (depth >= RECURSION_LIMIT) malformedProof();
        while (!this.atEnd()) {
          const t = this.tag();
          if ((t & 7) > 5 || t >>> 3 === 0) malformedProof();
          if ((t & 7) === 4) return;
          this.skipField(t & 7, depth + 1);
        }
        return;
      }
      default:
        malformedProof();
    }
  }
}

/** Reads every field of a message: `on(tag)` returns false for a tag it does not know. */
function readFields(r: PbReader, depth: number, on: (tag: number) => boolean): void {
  while (!r.atEnd()) {
    const tag = r.tag();
    if (!on(tag)) r.skipUnknown(tag, depth);
  }
}


// The wire form first (every nested message parsed, a repeated singular field keeping its
// last value), then akd_core's conversions (required fields, lengths), as in Rust: a field
// that is replaced, or a sibling after the first, is parsed but never converted.

interface RawNodeLabel {
  val?: Uint8Array;
  len?: number;
}

interface RawAzksElement {
  label?: RawNodeLabel;
  value?: Uint8Array;
}

interface RawSiblingProof {
  label?: RawNodeLabel;
  siblings: RawAzksElement[];
  direction?: number;
}

interface RawMembershipProof {
  label?: RawNodeLabel;
  hashVal?: Uint8Array;
  siblingProofs: RawSiblingProof[];
}

interface RawNonMembershipProof {
  label?: RawNodeLabel;
  longestPrefix?: RawNodeLabel;
  children: RawAzksElement[];
  membership?: RawMembershipProof;
}

interface RawLookupProof {
  epoch?: bigint;
  value?: Uint8Array;
  version?: bigint;
  existenceVrfProof?: Uint8Array;
  existenceProof?: RawMembershipProof;
  markerVrfProof?: Uint8Array;
  markerProof?: RawMembershipProof;
  freshnessVrfProof?: Uint8Array;
  freshnessProof?: RawNonMembershipProof;
  commitmentNonce?: Uint8Array;
}

function wireNodeLabel(r: PbReader, depth: number): RawNodeLabel {
  const m: RawNodeLabel = {};
  readFields(r, depth, (tag) => {
    if (tag === 10) m.val = r.bytes();
    else if (tag === 16) m.len = r.varint32();
    else return false;
    return true;
  });
  return m;
}

function wireAzksElement(r: PbReader, depth: number): RawAzksElement {
  const m: RawAzksElement = {};
  readFields(r, depth, (tag) => {
    if (tag === 10) m.label = wireNodeLabel(r.message(depth), depth + 1);
    else if (tag === 18) m.value = r.bytes();
    else return false;
    return true;
  });
  return m;
}

function wireSiblingProof(r: PbReader, depth: number): RawSiblingProof {
  const m: RawSiblingProof = { siblings: [] };
  readFields(r, depth, (tag) => {
    if (tag === 10) m.label = wireNodeLabel(r.message(depth), depth + 1);
    else if (tag === 18) m.siblings.push(wireAzksElement(r.message(depth), depth + 1));
    else if (tag === 24) m.direction = r.varint32();
    else return false;
    return true;
  });
  return m;
}

function wireMembershipProof(r: PbReader, depth: number): RawMembershipProof {
  const m: RawMembershipProof = { siblingProofs: [] };
  readFields(r, depth, (tag) => {
    if (tag === 10) m.label = wireNodeLabel(r.message(depth), depth + 1);
    else if (tag === 18) m.hashVal = r.bytes();
    else if (tag === 26) m.siblingProofs.push(wireSiblingProof(r.message(depth), depth + 1));
    else return false;
    return true;
  });
  return m;
}

function wireNonMembershipProof(r: PbReader, depth: number): RawNonMembershipProof {
  const m: RawNonMembershipProof = { children: [] };
  readFields(r, depth, (tag) => {
    if (tag === 10) m.label = wireNodeLabel(r.message(depth), depth + 1);
    else if (tag === 18) m.longestPrefix = wireNodeLabel(r.message(depth), depth + 1);
    else if (tag === 26) m.children.push(wireAzksElement(r.message(depth), depth + 1));
    else if (tag === 34) m.membership = wireMembershipProof(r.message(depth), depth + 1);
    else return false;
    return true;
  });
  return m;
}

function wireLookupProof(r: PbReader): RawLookupProof {
  const m: RawLookupProof = {};
  readFields(r, 0, (tag) => {
    switch (tag) {
      case 8:
        m.epoch = r.varint64();
        break;
      case 18:
        m.value = r.bytes();
        break;
      case 24:
        m.version = r.varint64();
        break;
      case 34:
        m.existenceVrfProof = r.bytes();
        break;
      case 42:
        m.existenceProof = wireMembershipProof(r.message(0), 1);
        break;
      case 50:
        m.markerVrfProof = r.bytes();
        break;
      case 58:
        m.markerProof = wireMembershipProof(r.message(0), 1);
        break;
      case 66:
        m.freshnessVrfProof = r.bytes();
        break;
      case 74:
        m.freshnessProof = wireNonMembershipProof(r.message(0), 1);
        break;
      case 82:
        m.commitmentNonce = r.bytes();
        break;
      default:
        return false;
    }
    return true;
  });
  return m;
}

interface RawUpdateProof {
  epoch?: bigint;
  value?: Uint8Array;
  version?: bigint;
  existenceVrfProof?: Uint8Array;
  existenceProof?: RawMembershipProof;
  previousVersionVrfProof?: Uint8Array;
  previousVersionProof?: RawMembershipProof;
  commitmentNonce?: Uint8Array;
}

interface RawHistoryProof {
  updateProofs: RawUpdateProof[];
  pastMarkerVrfProofs: Uint8Array[];
  pastMarkerProofs: RawMembershipProof[];
  futureMarkerVrfProofs: Uint8Array[];
  futureMarkerProofs: RawNonMembershipProof[];
}

function wireUpdateProof(r: PbReader, depth: number): RawUpdateProof {
  const m: RawUpdateProof = {};
  readFields(r, depth, (tag) => {
    switch (tag) {
      case 8:
        m.epoch = r.varint64();
        break;
      case 18:
        m.value = r.bytes();
        break;
      case 24:
        m.version = r.varint64();
        break;
      case 34:
        m.existenceVrfProof = r.bytes();
        break;
      case 42:
        m.existenceProof = wireMembershipProof(r.message(depth), depth + 1);
        break;
      case 50:
        m.previousVersionVrfProof = r.bytes();
        break;
      case 58:
        m.previousVersionProof = wireMembershipProof(r.message(depth), depth + 1);
        break;
      case 66:
        m.commitmentNonce = r.bytes();
        break;
      default:
        return false;
    }
    return true;
  });
  return m;
}

function wireHistoryProof(r: PbReader): RawHistoryProof {
  const m: RawHistoryProof = {
    updateProofs: [],
    pastMarkerVrfProofs: [],
    pastMarkerProofs: [],
    futureMarkerVrfProofs: [],
    futureMarkerProofs: [],
  };
  readFields(r, 0, (tag) => {
    if (tag === 10) m.updateProofs.push(wireUpdateProof(r.message(0), 1));
    else if (tag === 18) m.pastMarkerVrfProofs.push(r.bytes());
    else if (tag === 26) m.pastMarkerProofs.push(wireMembershipProof(r.message(0), 1));
    else if (tag === 34) m.futureMarkerVrfProofs.push(r.bytes());
    else if (tag === 42) m.futureMarkerProofs.push(wireNonMembershipProof(r.message(0), 1));
    else return false;
    return true;
  });
  return m;
}

// akd_core's types, converted from the wire form.

interface NodeLabel {
  readonly val: Uint8Array; // 32 bytes
  readonly len: number; // bits, 0..=256
}

interface AzksElement {
  readonly label: NodeLabel;
  readonly value: Uint8Array; // 32 bytes
}

interface SiblingProof {
  readonly label: NodeLabel;
  readonly sibling: AzksElement;
  /** 0: the node on the path is the left child; 1: the right one. */
  readonly direction: 0 | 1;
}

interface MembershipProof {
  readonly label: NodeLabel;
  readonly hashVal: Uint8Array;
  readonly siblingProofs: readonly SiblingProof[];
}

interface NonMembershipProof {
  readonly label: NodeLabel;
  readonly longestPrefix: NodeLabel;
  readonly children: readonly [AzksElement, AzksElement];
  readonly membership: MembershipProof;
}

interface LookupProof {
  readonly epoch: bigint;
  readonly value: Uint8Array;
  readonly version: bigint;
  readonly existenceVrfProof: Uint8Array;
  readonly existenceProof: MembershipProof;
  readonly markerVrfProof: Uint8Array;
  readonly markerProof: MembershipProof;
  readonly freshnessVrfProof: Uint8Array;
  readonly freshnessProof: NonMembershipProof;
  readonly commitmentNonce: Uint8Array;
}

function need<T>(v: T | undefined): T {
  return v === undefined ? malformedProof() : v;
}

function digest(v: Uint8Array | undefined): Uint8Array {
  const d = need(v);
  return d.length === 32 ? d : malformedProof();
}

function toNodeLabel(m: RawNodeLabel | undefined): NodeLabel {
  const raw = need(m);
  const len = need(raw.len);
  const v = need(raw.val);
  if (v.length > 32 || len > 256) malformedProof();
  const val = new Uint8Array(32);
  val.set(v);
  return { val, len };
}

function toAzksElement(m: RawAzksElement | undefined): AzksElement {
  const raw = need(m);
  return { label: toNodeLabel(raw.label), value: digest(raw.value) };
}

function toSiblingProof(m: RawSiblingProof): SiblingProof {
  const direction = need(m.direction) & 0x0f;
  const label = toNodeLabel(m.label);
  const first = need(m.siblings[0]);
  if (direction !== 0 && direction !== 1) malformedProof();
  return { label, sibling: toAzksElement(first), direction: direction === 0 ? 0 : 1 };
}

function toMembershipProof(m: RawMembershipProof | undefined): MembershipProof {
  const raw = need(m);
  return {
    label: toNodeLabel(raw.label),
    hashVal: digest(raw.hashVal),
    siblingProofs: raw.siblingProofs.map(toSiblingProof),
  };
}

function toNonMembershipProof(m: RawNonMembershipProof | undefined): NonMembershipProof {
  const raw = need(m);
  const label = toNodeLabel(raw.label);
  const longestPrefix = toNodeLabel(raw.longestPrefix);
  const membership = toMembershipProof(raw.membership);
  const children = raw.children.map(toAzksElement);
  const [a, b] = children;
  if (children.length !== 2 || a === undefined || b === undefined) malformedProof();
  return { label, longestPrefix, children: [need(a), need(b)], membership };
}

/** Parses akd_core's `LookupProof` protobuf message (at most 128 KiB). */
function parseLookupProof(bytes: Uint8Array): LookupProof {
  if (bytes.length > MAX_LOOKUP_PROOF_BYTES) {
    fail('too_large', `lookup proof is too large (${bytes.length} bytes, at most ${MAX_LOOKUP_PROOF_BYTES})`);
  }
  const m = wireLookupProof(new PbReader(bytes, 0, bytes.length));
  return {
    epoch: need(m.epoch),
    value: need(m.value),
    version: need(m.version),
    existenceVrfProof: need(m.existenceVrfProof),
    existenceProof: toMembershipProof(m.existenceProof),
    markerVrfProof: need(m.markerVrfProof),
    markerProof: toMembershipProof(m.markerProof),
    freshnessVrfProof: need(m.freshnessVrfProof),
    freshnessProof: toNonMembershipProof(m.freshnessProof),
    commitmentNonce: need(m.commitmentNonce),
  };
}

interface UpdateProof {
  readonly epoch: bigint;
  readonly value: Uint8Array;
  readonly version: bigint;
  readonly existenceVrfProof: Uint8Array;
  readonly existenceProof: MembershipProof;
  readonly previousVersionVrfProof: Uint8Array | undefined;
  readonly previousVersionProof: MembershipProof | undefined;
  readonly commitmentNonce: Uint8Array;
}

interface HistoryProof {
  readonly updateProofs: readonly UpdateProof[];
  readonly pastMarkerVrfProofs: readonly Uint8Array[];
  readonly pastMarkerProofs: readonly MembershipProof[];
  readonly futureMarkerVrfProofs: readonly Uint8Array[];
  readonly futureMarkerProofs: readonly NonMembershipProof[];
}

function toUpdateProof(m: RawUpdateProof): UpdateProof {
  return {
    epoch: need(m.epoch),
    value: need(m.value),
    version: need(m.version),
    existenceVrfProof: need(m.existenceVrfProof),
    existenceProof: toMembershipProof(m.existenceProof),
    previousVersionVrfProof: m.previousVersionVrfProof,
    previousVersionProof: m.previousVersionProof === undefined ? undefined : toMembershipProof(m.previousVersionProof),
    commitmentNonce: need(m.commitmentNonce),
  };
}

/** Parses akd_core's `HistoryProof` protobuf message (at most 4 MiB). */
function parseHistoryProof(bytes: Uint8Array): HistoryProof {
  if (bytes.length > MAX_HISTORY_PROOF_BYTES) {
    fail('too_large', `key-history proof is too large (${bytes.length} bytes, at most ${MAX_HISTORY_PROOF_BYTES})`);
  }
  const m = wireHistoryProof(new PbReader(bytes, 0, bytes.length));
  return {
    updateProofs: m.updateProofs.map(toUpdateProof),
    pastMarkerVrfProofs: m.pastMarkerVrfProofs,
    pastMarkerProofs: m.pastMarkerProofs.map((p) => toMembershipProof(p)),
    futureMarkerVrfProofs: m.futureMarkerVrfProofs,
    futureMarkerProofs: m.futureMarkerProofs.map((p) => toNonMembershipProof(p)),
  };
}

// ---------------------------------------------------------------------------------------------
// akd's tree (WhatsAppV1Configuration: BLAKE3)

/** A proof step that does not hold: the caller answers `lookup_proof`. */
class ProofFailure extends Error {}

const ROOT_LABEL: NodeLabel = { val: new Uint8Array(32), len: 0 };
const EMPTY_LABEL: NodeLabel = { val: new Uint8Array(32).fill(1), len: 0 };

function labelEq(a: NodeLabel, b: NodeLabel): boolean {
  return a.len === b.len && bytesEqual(a.val, b.val);
}

/** BLAKE3(u32be(len) || val): a node label's value in hashes. */
function labelValue(l: NodeLabel): Uint8Array {
  return blake3(concatBytes(u32be(l.len), l.val));
}

function bitAt(l: NodeLabel, i: number): number {
  return ((l.val[i >> 3] ?? 0) >> (7 - (i & 7))) & 1;
}

function isPrefixOf(a: NodeLabel, b: NodeLabel): boolean {
  if (a.len > b.len) return false;
  for (let i = 0; i < a.len; i++) if (bitAt(a, i) !== bitAt(b, i)) return false;
  return true;
}

function prefix(l: NodeLabel, len: number): NodeLabel {
  if (len >= 256) return l;
  if (len === 0) return ROOT_LABEL;
  const rem = (len - 1) % 8;
  const div = Math.floor((len - 1) / 8);
  const val = new Uint8Array(32);
  val.set(l.val.subarray(0, div));
  val[div] = (((l.val[div] ?? 0) >> (7 - rem)) << (7 - rem)) & 0xff;
  return { val, len };
}

function longestCommonPrefix(a: NodeLabel, b: NodeLabel): NodeLabel {
  if (labelEq(a, EMPTY_LABEL) || labelEq(b, EMPTY_LABEL)) return EMPTY_LABEL;
  const shorter = Math.min(a.len, b.len);
  let n = 0;
  while (n < shorter && bitAt(a, n) === bitAt(b, n)) n++;
  return prefix(a, n);
}

function parentHash(leftVal: Uint8Array, leftLabel: NodeLabel, rightVal: Uint8Array, rightLabel: NodeLabel): Uint8Array {
  return blake3(
    concatBytes(blake3(concatBytes(leftVal, labelValue(leftLabel))), blake3(concatBytes(rightVal, labelValue(rightLabel)))),
  );
}

function lengthPrefixed(b: Uint8Array): Uint8Array {
  return concatBytes(u64be(BigInt(b.length)), b);
}

function verifyMembership(root: Uint8Array, proof: MembershipProof): void {
  let val = proof.hashVal;
  let label = proof.label;
  for (let i = proof.siblingProofs.length - 1; i >= 0; i--) {
    const step = proof.siblingProofs[i];
    if (step === undefined) throw new ProofFailure();
    const s = step.sibling;
    val = step.direction === 0 ? parentHash(val, label, s.value, s.label) : parentHash(s.value, s.label, val, label);
    label = step.label;
  }
  if (!bytesEqual(blake3(concatBytes(val, labelValue(ROOT_LABEL))), root)) throw new ProofFailure();
}

function verifyNonMembership(root: Uint8Array, proof: NonMembershipProof): void {
  const [c0, c1] = proof.children;
  if (labelEq(proof.label, c0.label) || labelEq(proof.label, c1.label)) throw new ProofFailure();
  if (!isPrefixOf(proof.longestPrefix, proof.label)) throw new ProofFailure();
  let lcp = longestCommonPrefix(c0.label, c1.label);
  if (labelEq(lcp, EMPTY_LABEL)) lcp = ROOT_LABEL;
  if (!labelEq(proof.longestPrefix, lcp)) throw new ProofFailure();
  const lcpHash = parentHash(c0.value, c0.label, c1.value, c1.label);
  if (!labelEq(lcp, proof.membership.label) || !bytesEqual(lcpHash, proof.membership.hashVal)) {
    throw new ProofFailure();
  }
  verifyMembership(root, proof.membership);
}

// ---------------------------------------------------------------------------------------------
// The VRF: akd's ECVRF-EDWARDS25519-SHA512-TAI (suite 0x03, RFC 9381 hashing)

const SUITE = 0x03;

/** Try-and-increment: the first counter whose hash is a point that is not of small order. */
function encodeToCurve(pk: Uint8Array, alpha: Uint8Array): Point {
  for (let counter = 0; counter < 256; counter++) {
    const h = sha512(concatBytes(Uint8Array.of(SUITE, 0x01), pk, alpha, Uint8Array.of(counter, 0x00))).subarray(0, 32);
    // akd refuses the encodings of y = p .. p+18 that would decode (non-canonical ones).
    let high = true;
    for (let i = 1; i <= 30; i++) if (h[i] !== 255) high = false;
    const last = h[31] ?? 0;
    const first = h[0] ?? 0;
    const nonCanonical =
      high && (last === 255 || last === 127) && [1, 3, 4, 5, 9, 10, 13, 14, 15, 16].includes((256 - first) & 0xff);
    if (nonCanonical) continue;
    const p = decompress(h);
    if (p === undefined) continue;
    const cleared = p.clearCofactor();
    if (!cleared.is0()) return cleared;
  }
  throw new ProofFailure();
}

/** Verifies an 80-byte VRF proof of `alpha` and answers its output's first 32 bytes. */
function vrfVerify(pkBytes: Uint8Array, pk: Point, proof: Uint8Array, alpha: Uint8Array): Uint8Array {
  if (proof.length !== 80) throw new ProofFailure();
  const gamma = decompress(proof.subarray(0, 32));
  if (gamma === undefined) throw new ProofFailure();
  const c = leToBigint(proof.subarray(32, 48));
  const s = leToBigint(proof.subarray(48, 80)) % L;
  const h = encodeToCurve(pkBytes, alpha);
  const hBytes = h.toBytes();
  const u = Point.BASE.multiplyUnsafe(s).subtract(pk.multiplyUnsafe(c));
  const v = h.multiplyUnsafe(s).subtract(gamma.multiplyUnsafe(c));
  const challenge = sha512(
    concatBytes(Uint8Array.of(SUITE, 0x02), pkBytes, hBytes, gamma.toBytes(), u.toBytes(), v.toBytes(), Uint8Array.of(0)),
  ).subarray(0, 16);
  if (!bytesEqual(challenge, proof.subarray(32, 48))) throw new ProofFailure();
  return sha512(concatBytes(Uint8Array.of(SUITE, 0x03), gamma.clearCofactor().toBytes(), Uint8Array.of(0))).subarray(0, 32);
}

const STALE = 0;
const FRESH = 1;

/** That `nodeLabel` is the VRF label of (`akdLabel`, freshness, version). */
function verifyLabel(
  vrf: { bytes: Uint8Array; point: Point },
  akdLabel: Uint8Array,
  freshness: number,
  version: bigint,
  vrfProof: Uint8Array,
  nodeLabel: NodeLabel,
): void {
  const alpha = blake3(concatBytes(lengthPrefixed(akdLabel), Uint8Array.of(freshness), u64be(version)));
  const out = vrfVerify(vrf.bytes, vrf.point, vrfProof, alpha);
  if (!labelEq({ val: out, len: 256 }, nodeLabel)) throw new ProofFailure();
}

/** akd_core's `lookup_verify` with the WhatsApp v1 configuration. */
function lookupVerify(
  vrf: { bytes: Uint8Array; point: Point },
  root: Uint8Array,
  epoch: bigint,
  akdLabel: Uint8Array,
  proof: LookupProof,
): void {
  if (proof.version > epoch) throw new ProofFailure();
  // The existence of this version, with this value, committed at proof.epoch.
  const commitment = blake3(concatBytes(lengthPrefixed(proof.value), lengthPrefixed(proof.commitmentNonce)));
  const leaf = blake3(concatBytes(commitment, u64be(proof.epoch)));
  if (!bytesEqual(leaf, proof.existenceProof.hashVal)) throw new ProofFailure();
  verifyLabel(vrf, akdLabel, FRESH, proof.version, proof.existenceVrfProof, proof.existenceProof.label);
  verifyMembership(root, proof.existenceProof);
  // The marker version (the largest power of two not above the version) exists.
  let marker = 1n;
  while (marker * 2n <= proof.version) marker *= 2n;
  verifyLabel(vrf, akdLabel, FRESH, marker, proof.markerVrfProof, proof.markerProof.label);
  verifyMembership(root, proof.markerProof);
  // This version was never made stale.
  verifyLabel(vrf, akdLabel, STALE, proof.version, proof.freshnessVrfProof, proof.freshnessProof.label);
  verifyNonMembership(root, proof.freshnessProof);
}

const MARKER_SKIPLIST: readonly bigint[] = [1n, 2n, 4n, 16n, 256n, 65536n, 1n << 32n];

function bitLength(n: bigint): number {
  return n === 0n ? 0 : n.toString(2).length;
}

function log2(n: bigint): number {
  return bitLength(n) - 1;
}

/** The largest index whose skiplist entry is not above `n` (n >= 1). */
function skiplistIndex(n: bigint): number {
  let i = 0;
  while (i < MARKER_SKIPLIST.length && n >= (MARKER_SKIPLIST[i] ?? 0n)) i++;
  return i - 1;
}

/** akd_core's `get_marker_versions(start, end, epoch)` (1 <= start <= end <= epoch). */
function markerVersions(start: bigint, end: bigint, epoch: bigint): { past: bigint[]; future: bigint[] } {
  const past: bigint[] = [];
  const pushPast = (v: bigint): void => {
    if (past.length === 0 || past[past.length - 1] !== v) past.push(v);
  };
  const skip = MARKER_SKIPLIST[skiplistIndex(start)] ?? 1n;
  if (skip !== start) past.push(skip);
  const startLog2 = 1n << BigInt(log2(start));
  if (startLog2 !== start) pushPast(startLog2);
  for (let i = bitLength(start) - 1; i >= 0; i--) {
    const shift = 1n << BigInt(i);
    if ((start & shift) !== 0n) {
      const pv = start & ~(shift | (shift - 1n));
      if (pv !== 0n) pushPast(pv);
    }
  }
  const future: bigint[] = [];
  let fv = end;
  for (let i = 0; i < bitLength(end); i++) {
    const shift = 1n << BigInt(i);
    if ((end & shift) === 0n) {
      fv |= shift;
      fv &= ~(shift - 1n);
      if (fv <= epoch) future.push(fv);
    }
  }
  const slice = MARKER_SKIPLIST.slice(skiplistIndex(end) + 1, skiplistIndex(epoch) + 1);
  for (let i = log2(end) + 1; i <= log2(epoch); i++) {
    const val = 1n << BigInt(i);
    if (slice.length > 0 && val >= (slice[0] ?? 0n)) break;
    future.push(val);
  }
  future.push(...slice);
  return { past, future };
}

/** akd_core's `key_history_verify` (complete history, no tombstones). */
function historyVerify(
  vrf: { bytes: Uint8Array; point: Point },
  root: Uint8Array,
  epoch: bigint,
  akdLabel: Uint8Array,
  proof: HistoryProof,
): void {
  const updates = proof.updateProofs;
  const first = updates[0];
  if (first === undefined) throw new ProofFailure();
  for (let i = 1; i < updates.length; i++) {
    if ((updates[i]?.version ?? 0n) + 1n !== updates[i - 1]?.version) throw new ProofFailure();
  }
  let start = first.version;
  let end = first.version;
  for (const u of updates) {
    if (u.version < start) start = u.version;
    if (u.version > end) end = u.version;
  }
  if (start === 0n || end > epoch || start !== 1n) throw new ProofFailure();
  const { past, future } = markerVersions(start, end, epoch);
  if (past.length !== proof.pastMarkerVrfProofs.length || proof.pastMarkerVrfProofs.length !== proof.pastMarkerProofs.length) {
    throw new ProofFailure();
  }
  if (
    future.length !== proof.futureMarkerVrfProofs.length ||
    proof.futureMarkerVrfProofs.length !== proof.futureMarkerProofs.length
  ) {
    throw new ProofFailure();
  }
  let previousEpoch: bigint | undefined;
  for (const u of updates) {
    if (previousEpoch !== undefined && u.epoch > previousEpoch) throw new ProofFailure();
    previousEpoch = u.epoch;
    const commitment = blake3(concatBytes(lengthPrefixed(u.value), lengthPrefixed(u.commitmentNonce)));
    if (!bytesEqual(blake3(concatBytes(commitment, u64be(u.epoch))), u.existenceProof.hashVal)) throw new ProofFailure();
    verifyLabel(vrf, akdLabel, FRESH, u.version, u.existenceVrfProof, u.existenceProof.label);
    verifyMembership(root, u.existenceProof);
    if (u.version <= 1n) continue;
    // The version before was made stale in this epoch: a leaf with the stale value H(0x00).
    const previous = u.previousVersionProof;
    const previousVrf = u.previousVersionVrfProof;
    if (previous === undefined || previousVrf === undefined) throw new ProofFailure();
    const staleLeaf = blake3(concatBytes(blake3(Uint8Array.of(0)), u64be(u.epoch)));
    if (!bytesEqual(staleLeaf, previous.hashVal)) throw new ProofFailure();
    verifyLabel(vrf, akdLabel, STALE, u.version - 1n, previousVrf, previous.label);
    verifyMembership(root, previous);
  }
  past.forEach((version, i) => {
    const p = proof.pastMarkerProofs[i];
    const v = proof.pastMarkerVrfProofs[i];
    if (p === undefined || v === undefined) throw new ProofFailure();
    verifyLabel(vrf, akdLabel, FRESH, version, v, p.label);
    verifyMembership(root, p);
  });
  future.forEach((version, i) => {
    const p = proof.futureMarkerProofs[i];
    const v = proof.futureMarkerVrfProofs[i];
    if (p === undefined || v === undefined) throw new ProofFailure();
    verifyLabel(vrf, akdLabel, FRESH, version, v, p.label);
    verifyNonMembership(root, p);
  });
}

// ---------------------------------------------------------------------------------------------
// Lookups

/** A directory's lookup answer: `{"checkpoint", "proof"}`. */
export interface LookupResponse {
  readonly checkpoint: SignedCheckpoint;
  readonly proof: Uint8Array;
}

/** Parses a lookup answer (its JSON text or parsed value); shapes only. */
export function parseLookupResponse(body: unknown): LookupResponse {
  try {
    const v = strictObject(
      typeof body === 'string' ? parseJsonText(body, 'lookup response') : body,
      ['checkpoint', 'proof'],
      'lookup response',
    );
    return { checkpoint: parseSignedCheckpoint(v['checkpoint']), proof: b64Field(v['proof'], undefined, 'proof') };
  } catch (e) {
    if (e instanceof KtError && e.reason === 'malformed') throw new KtError('malformed', 'malformed lookup response');
    throw e;
  }
}

/** Checks a DID's shape as the Rust `Did::parse` does. */
export function isValidDid(did: string): boolean {
  if (utf8.encode(did).length > MAX_DID_LEN || !did.startsWith('did:')) return false;
  const rest = did.slice(4);
  const colon = rest.indexOf(':');
  if (colon < 0) return false;
  const method = rest.slice(0, colon);
  const id = rest.slice(colon + 1);
  if (!/^[a-z0-9]+$/.test(method) || id.length === 0 || id.endsWith(':')) return false;
  return /^(?:[A-Za-z0-9._:-]|%[0-9A-Fa-f]{2})+$/.test(id);
}

function resolveKey(key: DirectoryPublicKey | unknown): DirectoryPublicKey {
  if (isObject(key) && key['signingKey'] instanceof Uint8Array && key['vrfKey'] instanceof Uint8Array) {
    return directoryPublicKey(key['signingKey'], key['vrfKey']);
  }
  return parseDirectoryPublicKey(key);
}

/** Input of `verifyLookup`. */
export interface VerifyLookupInput {
  /** The directory's key (parsed, or its `{"signingKey", "vrfKey"}` JSON). */
  readonly directoryPublicKey: DirectoryPublicKey | unknown;
  /** The oracle's DID the answer is for. */
  readonly did: string;
  /** The directory's answer: its JSON text, or that text parsed with `JSON.parse`. */
  readonly response: string | unknown;
  /** The checkpoint stored after the last verified lookup, if any. */
  readonly stored?: StoredCheckpoint | null | undefined;
}

/**
 * Verifies one lookup answer, as the Rust `Verifier::verify_lookup`: the stored checkpoint
 * must be the directory's; the offered one must verify and be neither older than the stored
 * one, nor another checkpoint for its epoch, nor dated earlier; the proof must prove the
 * DID's latest record against the offered root hash.
 */
export function verifyLookup(input: VerifyLookupInput): VerifiedLookup {
  const { key, stored } = prologue(input);
  const response = parseLookupResponse(input.response);
  const checkpoint = checkAgainstStored(key, response.checkpoint, stored);
  const proof = parseLookupProof(response.proof);
  const epoch = BigInt(checkpoint.epoch);
  // akd_core assumes 1 <= version, epoch <= the checkpoint's epoch; check first.
  const inRange = (n: bigint): boolean => n >= 1n && n <= epoch;
  if (!inRange(proof.version) || !inRange(proof.epoch)) fail('lookup_proof', 'lookup proof does not verify');
  try {
    lookupVerify(vrfOf(key), checkpoint.rootHash, epoch, utf8.encode(input.did), proof);
  } catch (e) {
    if (e instanceof ProofFailure) fail('lookup_proof', 'lookup proof does not verify');
    throw e;
  }
  const record = decodeRecord(proof.value);
  return {
    record,
    epoch: Number(proof.epoch),
    version: Number(proof.version),
    checkpoint,
    stored: newest(stored, response.checkpoint),
  };
}

function prologue(input: { directoryPublicKey: unknown; did: string; stored?: StoredCheckpoint | null | undefined }): {
  key: DirectoryPublicKey;
  stored: SignedCheckpoint | undefined;
} {
  const key = resolveKey(input.directoryPublicKey);
  if (!isValidDid(input.did)) fail('invalid_argument', 'not a valid DID');
  const stored = input.stored == null ? undefined : parseSignedCheckpoint(input.stored);
  if (stored !== undefined) verifyCheckpoint(stored, key);
  return { key, stored };
}

function vrfOf(key: DirectoryPublicKey): { bytes: Uint8Array; point: Point } {
  const point = decompress(key.vrfKey);
  if (point === undefined) return fail('invalid_key', 'VRF public key is not a valid Ed25519 point');
  return { bytes: key.vrfKey, point };
}

function newest(stored: SignedCheckpoint | undefined, offered: SignedCheckpoint): StoredCheckpoint {
  return stored === undefined || offered.checkpoint.epoch > stored.checkpoint.epoch ? offered.json : stored.json;
}

/** One version of a DID's record, as a verified key history proves it. */
export interface VerifiedVersion {
  readonly record: OracleRecord;
  readonly epoch: number;
  readonly version: number;
}

/** A verified key history: every version, newest first, down to version 1. */
export interface VerifiedHistory {
  readonly versions: readonly VerifiedVersion[];
  readonly checkpoint: Checkpoint;
  /** The checkpoint to store: the newer of the stored and this one. */
  readonly stored: StoredCheckpoint;
}

/** Input of `verifyHistory`: as `verifyLookup`, with a `GET /kt/v1/history/{did}` answer. */
export type VerifyHistoryInput = VerifyLookupInput;

/**
 * Verifies a key-history answer, as the Rust `Verifier::verify_history`: the same checkpoint
 * checks as `verifyLookup`, then every version from 1 to the latest, each in the tree at its
 * epoch, the one before it made stale then, and no later version hidden.
 */
export function verifyHistory(input: VerifyHistoryInput): VerifiedHistory {
  const { key, stored } = prologue(input);
  let response: LookupResponse;
  try {
    response = parseLookupResponse(input.response);
  } catch (e) {
    if (e instanceof KtError && e.reason === 'malformed') throw new KtError('malformed', 'malformed key-history response');
    throw e;
  }
  const checkpoint = checkAgainstStored(key, response.checkpoint, stored);
  let proof: HistoryProof;
  try {
    proof = parseHistoryProof(response.proof);
  } catch (e) {
    if (e instanceof KtError && e.reason === 'malformed') throw new KtError('malformed', 'malformed key-history proof');
    throw e;
  }
  const epoch = BigInt(checkpoint.epoch);
  // akd_core adds to versions before it bounds them by the epoch; bound them first.
  const inRange = (n: bigint): boolean => n >= 1n && n <= epoch;
  if (proof.updateProofs.length === 0 || !proof.updateProofs.every((u) => inRange(u.version) && inRange(u.epoch))) {
    fail('history_proof', 'key-history proof does not verify');
  }
  try {
    historyVerify(vrfOf(key), checkpoint.rootHash, epoch, utf8.encode(input.did), proof);
  } catch (e) {
    if (e instanceof ProofFailure) fail('history_proof', 'key-history proof does not verify');
    throw e;
  }
  const versions = proof.updateProofs.map((u) => ({
    record: decodeRecord(u.value),
    epoch: Number(u.epoch),
    version: Number(u.version),
  }));
  return { versions, checkpoint, stored: newest(stored, response.checkpoint) };
}

function sameRecord(a: OracleRecord, b: OracleRecord): boolean {
  return bytesEqual(encodeRecord(a), encodeRecord(b));
}

/**
 * For a record pinned at `pinnedVersion` (from an earlier verified lookup): the version that
 * replaced it (its `epoch` is when the change was published), or `undefined` if none did.
 * `history_rewritten` if the history does not hold the pinned record at that version.
 */
export function changeSince(
  history: VerifiedHistory,
  pinned: OracleRecord,
  pinnedVersion: number,
): VerifiedVersion | undefined {
  const at = history.versions.find((v) => v.version === pinnedVersion);
  if (at === undefined || !sameRecord(at.record, pinned)) {
    fail('history_rewritten', `the verified history does not contain the pinned record at version ${pinnedVersion}`);
  }
  return history.versions.find((v) => v.version === pinnedVersion + 1);
}


// ---------------------------------------------------------------------------------------------
// Over HTTP (§12.1)

/** Input of `verifyOracleRecord`. */
export interface VerifyOracleRecordInput {
  /** The directory service's base URL: `https://`, or `http://` on loopback only. */
  readonly directoryUrl: string;
  /** The directory's key, obtained out of band. */
  readonly directoryPublicKey: DirectoryPublicKey | unknown;
  /** The oracle's DID. */
  readonly oracleDid: string;
  /** The checkpoint stored after the last verified lookup, if any. */
  readonly stored?: StoredCheckpoint | null | undefined;
  /** `fetch` to use (default: the global one). */
  readonly fetchImpl?: typeof fetch;
  /** Aborts the whole operation. */
  readonly signal?: AbortSignal;
  /**
   * The record pinned after an earlier verified lookup and its version: when the directory
   * now serves another one, its key history is fetched (`GET /kt/v1/history/{did}`) and
   * verified, and `changeEpoch` says when the pinned version was replaced.
   */
  readonly pinned?: { readonly record: OracleRecord; readonly version: number } | null | undefined;
}

/** What `verifyOracleRecord` proved. */
export interface VerifiedOracleRecord extends VerifiedLookup {
  /** The verified key history, when the record is not the pinned one. */
  readonly history?: VerifiedHistory;
  /**
   * When the record is not the pinned one: the epoch in which the pinned version was
   * replaced, or (no later version in the history) the served record's epoch.
   */
  readonly changeEpoch?: number;
}

function isLoopbackHost(hostname: string): boolean {
  const host = hostname.startsWith('[') && hostname.endsWith(']') ? hostname.slice(1, -1) : hostname;
  if (host.toLowerCase() === 'localhost') return true;
  if (host === '::1') return true;
  const m = /^(\d+)\.(\d+)\.(\d+)\.(\d+)$/.exec(host);
  return m !== null && m[1] === '127' && m.slice(1).every((x) => Number(x) <= 255);
}

/** `{directoryUrl}/kt/v1/{lookup|history}/{did}` (the DID one path segment, `%` escaped). */
export function lookupUrl(directoryUrl: string, did: string, what: 'lookup' | 'history' = 'lookup'): URL {
  let url: URL;
  try {
    url = new URL(directoryUrl);
  } catch {
    return fail('invalid_argument', 'the directory URL does not parse');
  }
  if (url.protocol !== 'https:' && !(url.protocol === 'http:' && isLoopbackHost(url.hostname))) {
    fail('insecure_url', `the directory URL must be https:// (http:// on loopback only): ${directoryUrl}`);
  }
  if (!isValidDid(did)) fail('invalid_argument', 'not a valid DID');
  const base = url.pathname.endsWith('/') ? url.pathname.slice(0, -1) : url.pathname;
  url.pathname = `${base}/kt/v1/${what}/${did.replaceAll('%', '%25')}`;
  return url;
}

class Transient extends Error {}

function errorMessage(body: Uint8Array): string {
  let text: string;
  try {
    text = utf8Strict.decode(body);
  } catch {
    return '(not UTF-8)';
  }
  try {
    const v: unknown = JSON.parse(text);
    if (isObject(v) && isObject(v['error']) && typeof v['error']['message'] === 'string') {
      return v['error']['message'];
    }
  } catch {
    // not JSON: the text itself
  }
  return [...text].slice(0, 200).join('');
}

async function readLimited(resp: Response, limit: number): Promise<Uint8Array> {
  const declared = resp.headers.get('content-length');
  if (declared !== null && Number(declared) > limit) {
    throw new KtError('unavailable', `the directory's answer is larger than ${limit} bytes`);
  }
  if (resp.body === null) return new Uint8Array(0);
  const reader = resp.body.getReader();
  const chunks: Uint8Array[] = [];
  let n = 0;
  for (;;) {
    const { done, value } = await reader.read();
    if (done) break;
    n += value.length;
    if (n > limit) {
      await reader.cancel().catch(() => undefined);
      throw new KtError('unavailable', `the directory's answer is larger than ${limit} bytes`);
    }
    chunks.push(value);
  }
  return concatBytes(...chunks);
}

async function fetchOnce(
  fetchImpl: typeof fetch,
  url: URL,
  did: string,
  limit: number,
  outer: AbortSignal | undefined,
): Promise<Uint8Array> {
  const controller = new AbortController();
  const timer = setTimeout(() => controller.abort(), ATTEMPT_TIMEOUT_MS);
  const onAbort = (): void => controller.abort();
  outer?.addEventListener('abort', onAbort, { once: true });
  try {
    let resp: Response;
    let body: Uint8Array;
    try {
      resp = await fetchImpl(url.toString(), {
        method: 'GET',
        headers: { accept: 'application/json' },
        signal: controller.signal,
        redirect: 'error',
        credentials: 'omit',
      });
      body = await readLimited(resp, limit);
    } catch (e) {
      if (e instanceof KtError) throw e;
      if (outer?.aborted) throw new KtError('unavailable', 'aborted');
      throw new Transient(e instanceof Error ? e.message : String(e));
    }
    if (resp.status >= 500) throw new Transient(`HTTP ${resp.status}: ${errorMessage(body)}`);
    if (resp.status === 404) throw new KtError('not_found', `the directory has no record for ${did}`);
    if (resp.status < 200 || resp.status >= 300) {
      throw new KtError('unavailable', `the directory answered ${resp.status}: ${errorMessage(body)}`);
    }
    return body;
  } finally {
    clearTimeout(timer);
    outer?.removeEventListener('abort', onAbort);
  }
}

function sleep(ms: number, signal: AbortSignal | undefined): Promise<void> {
  return new Promise((resolve) => {
    const t = setTimeout(resolve, ms);
    signal?.addEventListener(
      'abort',
      () => {
        clearTimeout(t);
        resolve();
      },
      { once: true },
    );
  });
}

/**
 * Fetches `GET {directoryUrl}/kt/v1/lookup/{oracleDid}` and verifies it (`verifyLookup`), as
 * the Rust client does before it trusts an oracle. Persist the answer's `stored` and pass it
 * next time; compare the record with the oracle's well-known (`compareRecordWithWellKnown`).
 */
export async function verifyOracleRecord(input: VerifyOracleRecordInput): Promise<VerifiedOracleRecord> {
  const key = resolveKey(input.directoryPublicKey);
  const lookupAt = lookupUrl(input.directoryUrl, input.oracleDid, 'lookup');
  const historyAt = lookupUrl(input.directoryUrl, input.oracleDid, 'history');
  const fetchImpl = input.fetchImpl ?? globalThis.fetch.bind(globalThis);
  const get = (url: URL, limit: number): Promise<string> =>
    fetchText(fetchImpl, url, input.oracleDid, limit, input.signal);

  const lookup = verifyLookup({
    directoryPublicKey: key,
    did: input.oracleDid,
    response: await get(lookupAt, MAX_LOOKUP_BODY),
    stored: input.stored,
  });
  const pinned = input.pinned ?? undefined;
  if (pinned === undefined || (pinned.version === lookup.version && sameRecord(pinned.record, lookup.record))) {
    return lookup;
  }
  // Another record than the pinned one: the complete key history says when it changed.
  try {
    const history = verifyHistory({
      directoryPublicKey: key,
      did: input.oracleDid,
      response: await get(historyAt, MAX_HISTORY_BODY),
      stored: lookup.stored,
    });
    const change = changeSince(history, pinned.record, pinned.version);
    return { ...lookup, stored: history.stored, history, changeEpoch: change?.epoch ?? lookup.epoch };
  } catch (e) {
    // The lookup's checkpoint was verified: the caller stores it whatever the outcome.
    if (e instanceof KtError) throw new KtError(e.reason, e.message, lookup.stored);
    throw e;
  }
}

/** GET with bounded retries (network errors, timeouts, 5xx) and a bounded body, as UTF-8. */
async function fetchText(
  fetchImpl: typeof fetch,
  url: URL,
  did: string,
  limit: number,
  signal: AbortSignal | undefined,
): Promise<string> {
  let backoff = 200;
  let last = '';
  for (let attempt = 1; attempt <= ATTEMPTS; attempt++) {
    if (signal?.aborted) fail('unavailable', 'aborted');
    try {
      const body = await fetchOnce(fetchImpl, url, did, limit, signal);
      try {
        return utf8Strict.decode(body);
      } catch {
        return fail('malformed', 'malformed directory answer: not UTF-8');
      }
    } catch (e) {
      if (!(e instanceof Transient)) throw e;
      last = e.message;
      if (attempt < ATTEMPTS) {
        await sleep(backoff, signal);
        backoff *= 2;
      }
    }
  }
  return fail('unavailable', `the directory is unreachable after ${ATTEMPTS} attempts: ${last}`);
}

// ---------------------------------------------------------------------------------------------
// The record against the oracle's well-known

function readKeys(v: unknown): RecordKey[] {
  if (!Array.isArray(v)) return fail('malformed', 'malformed well-known: keys is not an array');
  return v.map((k: unknown) => {
    if (!isObject(k) || typeof k['keyId'] !== 'string' || typeof k['publicKey'] !== 'string') {
      return fail('malformed', 'malformed well-known: a key');
    }
    const scheme = k['scheme'];
    if (typeof scheme !== 'string' || !KEY_SCHEMES.includes(scheme)) {
      return fail('malformed', "malformed well-known: a key's scheme");
    }
    return { keyId: k['keyId'], scheme: scheme as KeyScheme, publicKey: k['publicKey'] };
  });
}

function readDevices(v: unknown): RecordDevice[] {
  if (v === undefined) return [];
  if (!Array.isArray(v)) return fail('malformed', 'malformed well-known: matrixDevices is not an array');
  return v.map((d: unknown) => {
    if (!isObject(d) || typeof d['deviceId'] !== 'string' || typeof d['ed25519'] !== 'string') {
      return fail('malformed', 'malformed well-known: a device');
    }
    return { deviceId: d['deviceId'], ed25519: d['ed25519'] };
  });
}

const sameKey = (a: RecordKey, b: RecordKey): boolean =>
  a.keyId === b.keyId && a.scheme === b.scheme && a.publicKey === b.publicKey;
const sameDevice = (a: RecordDevice, b: RecordDevice): boolean => a.deviceId === b.deviceId && a.ed25519 === b.ed25519;
const devicesText = (ds: readonly RecordDevice[]): string =>
  ds.map((d) => `${d.deviceId} (ed25519 ${d.ed25519})`).join(', ');

/**
 * What the oracle's server (`/.well-known/oracle-calls`, parsed JSON) says differently from
 * the verified record, as the Rust client's check: every served key must be in the record
 * (the server may serve fewer), the bot user must be the record's, the bot devices exactly
 * the record's (any order), the prekey signing key the record's (both absent is equal).
 * An empty list: they agree.
 */
export function compareRecordWithWellKnown(record: OracleRecord, wellKnownJson: unknown): KtMismatch[] {
  if (!isObject(wellKnownJson)) return fail('malformed', 'malformed well-known: not an object');
  const keys = readKeys(wellKnownJson['keys']);
  const userId = wellKnownJson['matrixUserId'];
  if (typeof userId !== 'string') return fail('malformed', 'malformed well-known: matrixUserId');
  const devices = readDevices(wellKnownJson['matrixDevices']);
  const prekey = wellKnownJson['prekeySigningKey'];
  if (prekey !== undefined && prekey !== null && typeof prekey !== 'string') {
    return fail('malformed', 'malformed well-known: prekeySigningKey');
  }
  const served = typeof prekey === 'string' ? prekey : undefined;

  const out: KtMismatch[] = [];
  if (keys.some((k) => !record.keys.some((r) => sameKey(k, r)))) {
    out.push({
      what: 'keys',
      record: record.keys.map((k) => k.keyId).join(', '),
      served: keys.map((k) => k.keyId).join(', '),
    });
  }
  if (userId !== record.matrixUserId) {
    out.push({ what: 'matrixUserId', record: record.matrixUserId, served: userId });
  }
  const sameDevices =
    devices.length === record.botDevices.length &&
    devices.every((d) => record.botDevices.some((r) => sameDevice(d, r))) &&
    record.botDevices.every((r) => devices.some((d) => sameDevice(d, r)));
  if (!sameDevices) {
    out.push({ what: 'matrixDevices', record: devicesText(record.botDevices), served: devicesText(devices) });
  }
  if (served !== record.prekeySigningKey) {
    out.push({ what: 'prekeySigningKey', record: record.prekeySigningKey ?? 'none', served: served ?? 'none' });
  }
  return out;
}

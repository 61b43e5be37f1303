/**
 * The wire identifiers and bytes of docs/PROTOCOL.md §1–§3, §5.1, §9.4 and §10: call ids and
 * their URL form, DIDs, session ids, room names, timestamps, the call context bytes, the
 * `m.ixo.oracles_call` content and its `m.replace` edit, and the media key material that
 * livekit-client's `ExternalE2EEKeyProvider.setKey` takes.
 *
 * Parsers throw {@link OracleCallError} `protocol` naming the part that is wrong.
 */

import { sha256 } from '@noble/hashes/sha2.js';

import { toHex, utf8 } from './base64.js';
import { OracleCallError, protocolError } from './errors.js';

/** The Matrix event type of a call (§2). */
export const CALL_EVENT_TYPE = 'm.ixo.oracles_call';
/** The first 24 bytes of every call context (§3). */
export const CONTEXT_LABEL = 'oracle-calls/call-key/v1';
/** Longest envelope text a call event may carry (§2). */
export const MAX_ENVELOPE_LEN = 8192;

export type CallType = 'audio' | 'video';
export type CallStatus = 'pending' | 'active' | 'ended';
/** How media keys come from the call key (§5.1); absent on the wire means `pbkdf2`. */
export type KeyDerivation = 'hkdf' | 'pbkdf2';
/** The oracle key schemes (§4.1). */
export type KeyScheme = 'hpke-p256' | 'hpke-x25519' | 'rsa-oaep-256' | 'ecies-secp256k1';
/** Why a call ended, or the agent's last report (§6). Servers may add more; accept any string. */
export type CallReason =
  | 'userHangup'
  | 'agentHangup'
  | 'keyDecryptionFailed'
  | 'keyRequestFailed'
  | 'mediaFailed'
  | 'participantLeft'
  | 'roomFinished'
  | 'timeout';

export const KEY_SCHEMES: readonly KeyScheme[] = ['hpke-p256', 'hpke-x25519', 'rsa-oaep-256', 'ecies-secp256k1'];
export const CALL_REASONS: readonly CallReason[] = [
  'userHangup',
  'agentHangup',
  'keyDecryptionFailed',
  'keyRequestFailed',
  'mediaFailed',
  'participantLeft',
  'roomFinished',
  'timeout',
];

export function isKeyScheme(s: unknown): s is KeyScheme {
  return typeof s === 'string' && (KEY_SCHEMES as readonly string[]).includes(s);
}
export function isCallType(s: unknown): s is CallType {
  return s === 'audio' || s === 'video';
}
export function isCallStatus(s: unknown): s is CallStatus {
  return s === 'pending' || s === 'active' || s === 'ended';
}

// ---------------------------------------------------------------------------------------------
// §1 identifiers

const EVENT_ID_CHARS = /^[A-Za-z0-9+/=_\-.:]+$/;
const ROOM_NAME = /^oc-[0-9a-f]{32}$/;

function byteLength(s: string): number {
  return utf8(s).length;
}

/** Checks a Matrix event id: `$` + 1–254 chars of `[A-Za-z0-9+/=_\-.:]`, ≤ 255 bytes. */
export function parseEventId(s: unknown): string {
  if (typeof s !== 'string' || !s.startsWith('$')) throw protocolError('eventId', 'must start with `$`');
  const rest = s.slice(1);
  if (rest.length === 0) throw protocolError('eventId', 'is empty after `$`');
  if (s.length > 255) throw protocolError('eventId', 'is longer than 255 bytes');
  if (!EVENT_ID_CHARS.test(rest)) {
    throw protocolError('eventId', 'may only contain A-Z a-z 0-9 + / = _ - . : after `$`');
  }
  return s;
}

/** Checks a call's room name: `oc-` and exactly 32 lower-case hex characters. */
export function parseRoomName(s: unknown): string {
  if (typeof s !== 'string' || !ROOM_NAME.test(s)) {
    throw protocolError('roomId', 'must be `oc-` and exactly 32 lower-case hex characters');
  }
  return s;
}

/** Checks a DID: `did:<method>:<id>` per §1 (W3C DID Core §3.1), ≤ 256 bytes. */
export function parseDid(s: unknown, field = 'did'): string {
  if (typeof s !== 'string') throw protocolError(field, 'is not a string');
  if (byteLength(s) > 256) throw protocolError(field, 'is longer than 256 bytes');
  if (!s.startsWith('did:')) throw protocolError(field, 'must start with `did:`');
  const rest = s.slice(4);
  const colon = rest.indexOf(':');
  if (colon < 0) throw protocolError(field, 'must be `did:<method>:<id>`');
  const method = rest.slice(0, colon);
  const id = rest.slice(colon + 1);
  if (!/^[a-z0-9]+$/.test(method)) throw protocolError(field, 'method must be lower-case letters and digits');
  if (id.length === 0 || id.endsWith(':')) throw protocolError(field, 'method-specific id is empty or ends with `:`');
  if (!/^(?:[A-Za-z0-9._:-]|%[0-9A-Fa-f]{2})+$/.test(id)) {
    throw protocolError(field, 'method-specific id may only contain A-Z a-z 0-9 . _ - : and %XX');
  }
  return s;
}

/** Checks a session id: 1–256 bytes of UTF-8, no control characters. */
export function parseSessionId(s: unknown): string {
  if (typeof s !== 'string' || s.length === 0) throw protocolError('sessionId', 'is empty');
  if (byteLength(s) > 256) throw protocolError('sessionId', 'is longer than 256 bytes');
  // Unicode general category Cc (what Rust's char::is_control tests).
  if (/\p{Cc}/u.test(s)) throw protocolError('sessionId', 'contains control characters');
  if (/[\uD800-\uDFFF]/.test(s.replace(/[\uD800-\uDBFF][\uDC00-\uDFFF]/g, ''))) {
    throw protocolError('sessionId', 'is not valid UTF-16 (a lone surrogate)');
  }
  return s;
}

/** A call id split into its parts. */
export interface CallIdParts {
  eventId: string;
  roomName: string;
}

/** `<eventId>@<roomName>` (§1). Both parts are checked. */
export function callIdOf(eventId: string, roomName: string): string {
  return `${parseEventId(eventId)}@${parseRoomName(roomName)}`;
}

/** Parses `<eventId>@<roomName>`; errors name the wrong part. */
export function parseCallId(s: unknown): CallIdParts {
  if (typeof s !== 'string') throw protocolError('callId', 'is not a string');
  const at = s.lastIndexOf('@');
  if (at < 0) throw protocolError('callId', 'must be `<eventId>@<roomName>`');
  return { eventId: parseEventId(s.slice(0, at)), roomName: parseRoomName(s.slice(at + 1)) };
}

/**
 * Percent-encodes every byte of the UTF-8 form outside `[A-Za-z0-9-._~]`, with upper-case
 * hex (§1): `$abc:ex.org@oc-…` → `%24abc%3Aex.org%40oc-…`.
 */
export function percentEncode(s: string): string {
  let out = '';
  for (const b of utf8(s)) {
    const c = String.fromCharCode(b);
    if (/[A-Za-z0-9\-._~]/.test(c)) out += c;
    else out += '%' + b.toString(16).toUpperCase().padStart(2, '0');
  }
  return out;
}

/** Decodes `%XX` escapes strictly (truncated or non-hex escapes, non-UTF-8 results refused). */
export function percentDecode(s: string): string {
  const bytes: number[] = [];
  for (let i = 0; i < s.length; i++) {
    const c = s.charCodeAt(i);
    if (c === 37) {
      const hex = s.slice(i + 1, i + 3);
      if (!/^[0-9A-Fa-f]{2}$/.test(hex)) throw protocolError('callId', 'bad percent escape');
      bytes.push(parseInt(hex, 16));
      i += 2;
    } else if (c < 128) {
      bytes.push(c);
    } else {
      for (const b of utf8(s[i]!)) bytes.push(b);
    }
  }
  try {
    return new TextDecoder('utf-8', { fatal: true }).decode(new Uint8Array(bytes));
  } catch {
    throw protocolError('callId', 'percent-decodes to invalid UTF-8');
  }
}

/** The call id as one URL path segment (checked first). */
export function callIdPathSegment(callId: string): string {
  parseCallId(callId);
  return percentEncode(callId);
}

/** Parses a call id from its URL path segment form. */
export function callIdFromPathSegment(segment: string): CallIdParts {
  return parseCallId(percentDecode(segment));
}

/**
 * The ixo convention (§9.2): `@did-ixo-X:server` → `did:ixo:X`; `undefined` for any other
 * user id or an X that does not make a valid DID.
 */
export function userDidFromMatrixUserId(userId: string): string | undefined {
  const m = /^@([^:]+):.+$/.exec(userId);
  const local = m?.[1];
  if (local === undefined || !local.startsWith('did-ixo-')) return undefined;
  try {
    return parseDid(`did:ixo:${local.slice('did-ixo-'.length)}`);
  } catch {
    return undefined;
  }
}

// ---------------------------------------------------------------------------------------------
// random names (§1, §9.4)

function randomHex16(): string {
  const b = new Uint8Array(16);
  globalThis.crypto.getRandomValues(b);
  return toHex(b);
}

/** A fresh room name: `oc-` + 32 hex of 16 CSPRNG bytes, new for every call (§9.4). */
export function newRoomName(): string {
  return `oc-${randomHex16()}`;
}

/** A fresh session id `sess-` + 32 hex, as the Rust client makes when the app names none. */
export function newSessionId(): string {
  return `sess-${randomHex16()}`;
}

/** A fresh 32-byte call key from the CSPRNG. Zero it (`zeroize`) once handed on. */
export function newCallKey(): Uint8Array {
  const k = new Uint8Array(32);
  globalThis.crypto.getRandomValues(k);
  return k;
}

// ---------------------------------------------------------------------------------------------
// timestamps (§1)

/** RFC 3339 in UTC with exactly 3 fractional digits and `Z` (JavaScript's `toISOString`). */
export function formatTimestamp(at: Date | number = Date.now()): string {
  const d = typeof at === 'number' ? new Date(at) : at;
  const ms = d.getTime();
  if (!Number.isFinite(ms) || ms < 0 || ms > 253402300799999) {
    throw new OracleCallError('setup', 'timestamp out of the range 0000–9999');
  }
  return d.toISOString();
}

const RFC3339 =
  /^(\d{4})-(\d{2})-(\d{2})[Tt](\d{2}):(\d{2}):(\d{2})(?:\.(\d+))?(?:([Zz])|([+-])(\d{2}):(\d{2}))$/;

/**
 * Parses an RFC 3339 timestamp with any offset into milliseconds since the epoch;
 * sub-millisecond digits are truncated (§1).
 */
export function parseTimestamp(s: unknown, field = 'timestamp'): number {
  const m = typeof s === 'string' ? RFC3339.exec(s) : null;
  if (!m) throw protocolError(field, 'is not an RFC 3339 timestamp');
  const [, y, mo, d, h, mi, sec, frac, , sign, oh, om] = m;
  const n = (x: string | undefined) => Number(x ?? '0');
  if (n(mo) < 1 || n(mo) > 12 || n(d) < 1 || n(h) > 23 || n(mi) > 59 || n(sec) > 60) {
    throw protocolError(field, 'has a field out of range');
  }
  const last = new Date(0);
  last.setUTCFullYear(n(y), n(mo), 0);
  const days = last.getUTCDate();
  if (n(d) > days || n(oh) > 23 || n(om) > 59) throw protocolError(field, 'has a field out of range');
  const millis = Number(((frac ?? '') + '000').slice(0, 3));
  // A leap second (60) is read as second 59.
  const dt = new Date(0);
  dt.setUTCFullYear(n(y), n(mo) - 1, n(d));
  dt.setUTCHours(n(h), n(mi), Math.min(n(sec), 59), millis);
  let t = dt.getTime();
  if (sign !== undefined) {
    const off = (n(oh) * 60 + n(om)) * 60000;
    t += sign === '+' ? -off : off;
  }
  return t;
}

// ---------------------------------------------------------------------------------------------
// §3 call context

/** The five fields every envelope is bound to. */
export interface CallContextFields {
  sessionId: string;
  roomId: string;
  userDid: string;
  oracleDid: string;
  callType: CallType;
}

/**
 * The call context bytes (§3): `"oracle-calls/call-key/v1"` then, for sessionId, roomId,
 * userDid, oracleDid and callType, `u32be(len(utf8)) || utf8`. The fields are used as given
 * (the vectors use room names such as `room-alpha`); {@link buildCallContent} checks a
 * call's fields.
 */
export function contextBytes(ctx: CallContextFields): Uint8Array {
  const parts = [ctx.sessionId, ctx.roomId, ctx.userDid, ctx.oracleDid, ctx.callType].map((s, i) => {
    if (typeof s !== 'string') throw protocolError(['sessionId', 'roomId', 'userDid', 'oracleDid', 'callType'][i]!, 'is not a string');
    return utf8(s);
  });
  const label = utf8(CONTEXT_LABEL);
  const out = new Uint8Array(label.length + parts.reduce((n, p) => n + 4 + p.length, 0));
  const view = new DataView(out.buffer);
  out.set(label, 0);
  let o = label.length;
  for (const p of parts) {
    view.setUint32(o, p.length, false);
    out.set(p, o + 4);
    o += 4 + p.length;
  }
  return out;
}

/** `SHA-256(context)[0..16]` (§3). */
export function contextDigest(context: Uint8Array): Uint8Array {
  return sha256(context).slice(0, 16);
}

// ---------------------------------------------------------------------------------------------
// §2 the call event

/** The content of `m.ixo.oracles_call` (§2), in the field order the Rust client writes. */
export interface CallContent {
  callId?: string;
  callType: CallType;
  callStatus: CallStatus;
  callStartedAt: string;
  callEndedAt?: string;
  encryptionKey: string;
  sessionId: string;
  roomId: string;
  userDid: string;
  oracleDid: string;
  keyDerivation?: KeyDerivation;
}

/** What {@link buildCallContent} needs. */
export interface CallContentInput extends CallContextFields {
  encryptionKey: string;
  keyDerivation: KeyDerivation;
  /** Default: now. */
  callStartedAt?: Date | number;
}

/** Checks an envelope text as §2 wants it: 1–8192 printable ASCII characters, no spaces. */
export function checkEnvelopeText(s: unknown): string {
  if (typeof s !== 'string' || s.length === 0) throw protocolError('encryptionKey', 'is empty');
  if (s.length > MAX_ENVELOPE_LEN) throw protocolError('encryptionKey', 'is longer than 8192 bytes');
  if (!/^[\x21-\x7e]+$/.test(s)) throw protocolError('encryptionKey', 'may only contain printable ASCII without spaces');
  return s;
}

/** The original call event's content (`callStatus: pending`, no `callId`), every field checked. */
export function buildCallContent(input: CallContentInput): CallContent {
  if (!isCallType(input.callType)) throw protocolError('callType', 'must be `audio` or `video`');
  if (input.keyDerivation !== 'hkdf' && input.keyDerivation !== 'pbkdf2') {
    throw protocolError('keyDerivation', 'must be `hkdf` or `pbkdf2`');
  }
  return {
    callType: input.callType,
    callStatus: 'pending',
    callStartedAt: formatTimestamp(input.callStartedAt ?? Date.now()),
    encryptionKey: checkEnvelopeText(input.encryptionKey),
    sessionId: parseSessionId(input.sessionId),
    roomId: parseRoomName(input.roomId),
    userDid: parseDid(input.userDid, 'userDid'),
    oracleDid: parseDid(input.oracleDid, 'oracleDid'),
    keyDerivation: input.keyDerivation,
  };
}

/** The `m.replace` edit of a call event (§2). */
export interface CallEdit extends CallContent {
  'm.new_content': CallContent;
  'm.relates_to': { rel_type: 'm.replace'; event_id: string };
}

/** Legal status transitions (§2): pending→active, pending→ended, active→ended. */
export function isTransition(from: CallStatus, to: CallStatus): boolean {
  return (from === 'pending' && (to === 'active' || to === 'ended')) || (from === 'active' && to === 'ended');
}

/**
 * The edit that moves the call event `eventId` (content `original`) to `status` (§2, §10):
 * the full content with the new `callStatus`, `callId` and (for `ended`) `callEndedAt`,
 * under `m.new_content` and again at top level.
 */
export function buildStatusEdit(
  original: CallContent,
  eventId: string,
  status: CallStatus,
  at: Date | number = Date.now(),
): CallEdit {
  const callId = callIdOf(eventId, original.roomId);
  if (!isTransition(original.callStatus, status)) {
    throw new OracleCallError('setup', `a call event cannot go from ${original.callStatus} to ${status}`);
  }
  const next: CallContent = {
    callId,
    callType: original.callType,
    callStatus: status,
    callStartedAt: original.callStartedAt,
    ...(status === 'ended' ? { callEndedAt: formatTimestamp(at) } : {}),
    encryptionKey: original.encryptionKey,
    sessionId: original.sessionId,
    roomId: original.roomId,
    userDid: original.userDid,
    oracleDid: original.oracleDid,
    keyDerivation: original.keyDerivation ?? 'pbkdf2',
  };
  return {
    'm.new_content': next,
    'm.relates_to': { rel_type: 'm.replace', event_id: eventId },
    ...next,
  };
}

/** The edit to `ended` a hanging-up client sends (§10). */
export function buildEndedEdit(original: CallContent, eventId: string, at: Date | number = Date.now()): CallEdit {
  return buildStatusEdit(original, eventId, 'ended', at);
}

// ---------------------------------------------------------------------------------------------
// §5.1 media key material

/**
 * What `ExternalE2EEKeyProvider.setKey` must get for the call key (§5.1): for `hkdf` a fresh
 * `ArrayBuffer` of the 32 raw bytes (not a view of a shared buffer); for `pbkdf2` the 64
 * lower-case hex characters. The caller zeroes its `callKey` afterwards; the `ArrayBuffer`
 * returned for `hkdf` should be zeroed (`new Uint8Array(buf).fill(0)`) once `setKey` resolved.
 */
export function mediaKeyMaterial(callKey: Uint8Array, keyDerivation: KeyDerivation): ArrayBuffer | string {
  if (!(callKey instanceof Uint8Array) || callKey.length !== 32) {
    throw new OracleCallError('crypto', 'a call key is 32 bytes');
  }
  if (keyDerivation === 'hkdf') {
    const buf = new ArrayBuffer(32);
    new Uint8Array(buf).set(callKey);
    return buf;
  }
  if (keyDerivation === 'pbkdf2') return toHex(callKey);
  throw protocolError('keyDerivation', 'must be `hkdf` or `pbkdf2`');
}

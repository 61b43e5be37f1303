import { describe, expect, it } from 'vitest';

import {
  decodeBase64,
  decodeBase64url,
  decodeBase64urlFixed,
  encodeBase64,
  encodeBase64url,
  fromHex,
  toHex,
} from '../../src/base64.js';
import { OracleCallError } from '../../src/errors.js';
import {
  buildCallContent,
  buildEndedEdit,
  buildStatusEdit,
  callIdFromPathSegment,
  callIdOf,
  callIdPathSegment,
  contextBytes,
  contextDigest,
  formatTimestamp,
  mediaKeyMaterial,
  newCallKey,
  newRoomName,
  newSessionId,
  parseCallId,
  parseDid,
  parseEventId,
  parseRoomName,
  parseSessionId,
  parseTimestamp,
  percentEncode,
  userDidFromMatrixUserId,
} from '../../src/protocol.js';
import { envelopes } from './vectors.js';

function code(f: () => unknown): string {
  try {
    f();
  } catch (e) {
    if (e instanceof OracleCallError) return `${e.code}:${String(e.details?.['field'] ?? '')}`;
    throw e;
  }
  return 'ok';
}

describe('base64url (strict, no padding)', () => {
  it('round-trips every length and matches Node', () => {
    for (let n = 0; n < 70; n++) {
      const b = crypto.getRandomValues(new Uint8Array(n));
      const t = encodeBase64url(b);
      expect(t).toBe(Buffer.from(b).toString('base64url'));
      expect(decodeBase64url(t)).toEqual(b);
      expect(encodeBase64(b)).toBe(Buffer.from(b).toString('base64'));
      expect(decodeBase64(encodeBase64(b), 'required')).toEqual(b);
      expect(decodeBase64(encodeBase64(b, false), 'none')).toEqual(b);
    }
  });
  it('refuses padding, the standard alphabet, whitespace, impossible lengths and stray bits', () => {
    expect(code(() => decodeBase64url('AA=='))).toBe('protocol:base64url');
    expect(code(() => decodeBase64url('AA=', 'prekeyId'))).toBe('protocol:prekeyId');
    expect(code(() => decodeBase64url('ab+/'))).toBe('protocol:base64url');
    expect(code(() => decodeBase64url('ab cd'))).toBe('protocol:base64url');
    expect(code(() => decodeBase64url('abcde'))).toBe('protocol:base64url');
    expect(code(() => decodeBase64url('é'))).toBe('protocol:base64url');
    // "AB" has non-zero bits after the one byte it encodes; "AA" / "AQ" do not.
    expect(code(() => decodeBase64url('AB'))).toBe('protocol:base64url');
    expect(decodeBase64url('AQ')).toEqual(new Uint8Array([1]));
    expect(code(() => decodeBase64url('AAB'))).toBe('protocol:base64url');
    expect(code(() => decodeBase64url(42 as unknown as string))).toBe('protocol:base64url');
    expect(decodeBase64url('')).toEqual(new Uint8Array());
    expect(code(() => decodeBase64urlFixed('AAAA', 4, 'publicKey'))).toBe('protocol:publicKey');
    expect(code(() => decodeBase64('AA', 'required'))).toBe('protocol:base64');
    expect(code(() => decodeBase64('AA==', 'none'))).toBe('protocol:base64');
    expect(code(() => decodeBase64('A-==', 'required'))).toBe('protocol:base64');
  });
  it('hex is lower-case and strict', () => {
    expect(toHex(new Uint8Array([0, 15, 255]))).toBe('000fff');
    expect(fromHex('000fff')).toEqual(new Uint8Array([0, 15, 255]));
    expect(code(() => fromHex('0F'))).toBe('protocol:hex');
    expect(code(() => fromHex('0'))).toBe('protocol:hex');
  });
});

describe('identifiers (§1)', () => {
  it("percent-encodes PROTOCOL's example", () => {
    const id = '$abc:ex.org@oc-0123456789abcdef0123456789abcdef';
    expect(callIdPathSegment(id)).toBe('%24abc%3Aex.org%40oc-0123456789abcdef0123456789abcdef');
    expect(callIdFromPathSegment('%24abc%3Aex.org%40oc-0123456789abcdef0123456789abcdef')).toEqual({
      eventId: '$abc:ex.org',
      roomName: 'oc-0123456789abcdef0123456789abcdef',
    });
    // Every byte outside [A-Za-z0-9-._~] with upper-case hex, UTF-8 first.
    expect(percentEncode('a+b/c=d_e~f é')).toBe('a%2Bb%2Fc%3Dd_e~f%20%C3%A9');
  });
  it('builds and parses call ids, naming the wrong part', () => {
    const room = 'oc-0123456789abcdef0123456789abcdef';
    expect(callIdOf('$Yk4_x-9+/=:s.org', room)).toBe(`$Yk4_x-9+/=:s.org@${room}`);
    expect(parseCallId(`$e@${room}`)).toEqual({ eventId: '$e', roomName: room });
    expect(code(() => parseCallId(`$e${room}`))).toBe('protocol:callId');
    expect(code(() => parseCallId(`e@${room}`))).toBe('protocol:eventId');
    expect(code(() => parseCallId('$e@room-alpha'))).toBe('protocol:roomId');
    expect(code(() => parseCallId('$e@oc-0123456789ABCDEF0123456789abcdef'))).toBe('protocol:roomId');
    expect(code(() => parseEventId('$'))).toBe('protocol:eventId');
    expect(code(() => parseEventId('$a b'))).toBe('protocol:eventId');
    expect(code(() => parseEventId('$' + 'a'.repeat(255)))).toBe('protocol:eventId');
    expect(parseEventId('$' + 'a'.repeat(254))).toHaveLength(255);
    expect(code(() => callIdFromPathSegment('%2'))).toBe('protocol:callId');
  });
  it('makes room names and session ids of the right shape, new each time', () => {
    const a = newRoomName();
    expect(parseRoomName(a)).toBe(a);
    expect(newRoomName()).not.toBe(a);
    expect(newSessionId()).toMatch(/^sess-[0-9a-f]{32}$/);
    const k = newCallKey();
    expect(k).toHaveLength(32);
    expect(newCallKey()).not.toEqual(k);
  });
  it('checks DIDs and session ids', () => {
    expect(parseDid('did:ixo:entity:oracle-companion-1')).toBe('did:ixo:entity:oracle-companion-1');
    expect(parseDid('did:key:z6Mk%3A')).toBe('did:key:z6Mk%3A');
    for (const bad of ['ixo:x', 'did:IXO:x', 'did:ixo:', 'did:ixo:x:', 'did:ixo:a b', 'did:ixo:%zz', 'did:ixo']) {
      expect(code(() => parseDid(bad)), bad).toBe('protocol:did');
    }
    expect(code(() => parseDid('did:ixo:' + 'x'.repeat(249)))).toBe('protocol:did');
    expect(parseSessionId('550e8400-e29b-41d4-a716-446655440000')).toBeTruthy();
    expect(parseSessionId('é'.repeat(128))).toBeTruthy();
    expect(code(() => parseSessionId('é'.repeat(129)))).toBe('protocol:sessionId');
    expect(code(() => parseSessionId(''))).toBe('protocol:sessionId');
    expect(code(() => parseSessionId('a\nb'))).toBe('protocol:sessionId');
    expect(code(() => parseSessionId('a\u0085b'))).toBe('protocol:sessionId');
  });
  it('maps ixo Matrix users to DIDs (§9.2)', () => {
    expect(userDidFromMatrixUserId('@did-ixo-ixo1abc:localhost')).toBe('did:ixo:ixo1abc');
    expect(userDidFromMatrixUserId('@alice:localhost')).toBeUndefined();
    expect(userDidFromMatrixUserId('@did-ixo-:localhost')).toBeUndefined();
  });
});

describe('timestamps (§1)', () => {
  it('writes UTC with exactly three fractional digits and Z', () => {
    expect(formatTimestamp(Date.UTC(2024, 0, 1, 10, 0, 0, 0))).toBe('2024-01-01T10:00:00.000Z');
    expect(formatTimestamp(new Date(Date.UTC(2024, 1, 29, 23, 59, 59, 7)))).toBe('2024-02-29T23:59:59.007Z');
    expect(formatTimestamp()).toMatch(/^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}\.\d{3}Z$/);
  });
  it('reads any offset and truncates sub-millisecond digits', () => {
    const t = Date.UTC(2024, 0, 1, 10, 0, 0, 0);
    expect(parseTimestamp('2024-01-01T10:00:00.000Z')).toBe(t);
    expect(parseTimestamp('2024-01-01T10:00:00Z')).toBe(t);
    expect(parseTimestamp('2024-01-01T12:30:00.000+02:30')).toBe(t);
    expect(parseTimestamp('2024-01-01T09:00:00-01:00')).toBe(t);
    expect(parseTimestamp('2024-01-01T10:00:00.123999Z')).toBe(t + 123);
    expect(parseTimestamp('2024-01-01T10:00:00.5Z')).toBe(t + 500);
    for (const bad of ['2024-01-01 10:00:00Z', '2024-02-30T10:00:00Z', '2024-01-01T10:00:00', '2024-13-01T00:00:00Z', 'x', '2024-01-01T24:00:00Z']) {
      expect(code(() => parseTimestamp(bad)), bad).toBe('protocol:timestamp');
    }
  });
});

describe('call context (§3)', () => {
  it('matches every context of envelopes.json, bytes and digest', () => {
    const env = envelopes();
    expect(env.contexts.length).toBeGreaterThanOrEqual(2);
    for (const c of env.contexts) {
      const b = contextBytes(c.context);
      expect(toHex(b), c.name).toBe(c.context_hex);
      expect(toHex(contextDigest(b)), c.name).toBe(c.context_digest_hex);
    }
    // And every case's context.
    for (const c of env.cases) expect(toHex(contextBytes(c.context)), c.name).toBe(c.context_hex);
  });
  it("starts as PROTOCOL's example", () => {
    const b = contextBytes({
      sessionId: 'sess-0001',
      roomId: 'room-alpha',
      userDid: 'did:ixo:ixo1qqqsyqcyq5rqwzqfpg9scrgwpugpzysn7hzyd5',
      oracleDid: 'did:ixo:entity:oracle-companion-1',
      callType: 'audio',
    });
    expect(toHex(b).startsWith('6f7261636c652d63616c6c732f63616c6c2d6b65792f7631' + '00000009' + '736573732d30303031' + '0000000a' + '726f6f6d2d616c706861')).toBe(true);
  });
});

describe('the call event (§2) and its edit (§10)', () => {
  const input = {
    callType: 'video' as const,
    encryptionKey: 'v1.hpke-p256.AAAA',
    sessionId: '550e8400-e29b-41d4-a716-446655440000',
    roomId: 'oc-0123456789abcdef0123456789abcdef',
    userDid: 'did:ixo:user123',
    oracleDid: 'did:ixo:oracle456',
    keyDerivation: 'hkdf' as const,
    callStartedAt: Date.UTC(2024, 0, 1, 10),
  };
  it("is the Rust client's content, field for field and in order", () => {
    const c = buildCallContent(input);
    expect(JSON.stringify(c, null, 2)).toBe(`{
  "callType": "video",
  "callStatus": "pending",
  "callStartedAt": "2024-01-01T10:00:00.000Z",
  "encryptionKey": "v1.hpke-p256.AAAA",
  "sessionId": "550e8400-e29b-41d4-a716-446655440000",
  "roomId": "oc-0123456789abcdef0123456789abcdef",
  "userDid": "did:ixo:user123",
  "oracleDid": "did:ixo:oracle456",
  "keyDerivation": "hkdf"
}`);
  });
  it('refuses bad fields', () => {
    expect(code(() => buildCallContent({ ...input, roomId: 'room-alpha' }))).toBe('protocol:roomId');
    expect(code(() => buildCallContent({ ...input, encryptionKey: 'v1 x' }))).toBe('protocol:encryptionKey');
    expect(code(() => buildCallContent({ ...input, encryptionKey: 'x'.repeat(8193) }))).toBe('protocol:encryptionKey');
    expect(code(() => buildCallContent({ ...input, userDid: 'bob' }))).toBe('protocol:userDid');
    expect(code(() => buildCallContent({ ...input, callType: 'chat' as 'audio' }))).toBe('protocol:callType');
    expect(code(() => buildCallContent({ ...input, keyDerivation: 'scrypt' as 'hkdf' }))).toBe('protocol:keyDerivation');
  });
  it('edits to ended with m.new_content, m.relates_to and the fallback copy', () => {
    const c = buildCallContent(input);
    const e = buildEndedEdit(c, '$orig', Date.UTC(2024, 0, 1, 10, 30));
    const next = {
      callId: '$orig@oc-0123456789abcdef0123456789abcdef',
      callType: 'video',
      callStatus: 'ended',
      callStartedAt: '2024-01-01T10:00:00.000Z',
      callEndedAt: '2024-01-01T10:30:00.000Z',
      encryptionKey: 'v1.hpke-p256.AAAA',
      sessionId: '550e8400-e29b-41d4-a716-446655440000',
      roomId: 'oc-0123456789abcdef0123456789abcdef',
      userDid: 'did:ixo:user123',
      oracleDid: 'did:ixo:oracle456',
      keyDerivation: 'hkdf',
    };
    expect(e).toEqual({ 'm.new_content': next, 'm.relates_to': { rel_type: 'm.replace', event_id: '$orig' }, ...next });
    expect(Object.keys(e).slice(0, 2)).toEqual(['m.new_content', 'm.relates_to']);
    // active has no callEndedAt; ended → anything is refused.
    expect(buildStatusEdit(c, '$orig', 'active')['m.new_content'].callEndedAt).toBeUndefined();
    expect(code(() => buildStatusEdit(e['m.new_content'], '$orig', 'active'))).toBe('setup:');
    expect(code(() => buildEndedEdit(c, 'orig'))).toBe('protocol:eventId');
  });
});

describe('media key material (§5.1)', () => {
  it('is a fresh ArrayBuffer of the raw key for hkdf and 64 lower-case hex for pbkdf2', () => {
    const key = new Uint8Array(32).map((_, i) => i * 7);
    const raw = mediaKeyMaterial(key, 'hkdf');
    expect(raw).toBeInstanceOf(ArrayBuffer);
    expect(new Uint8Array(raw as ArrayBuffer)).toEqual(key);
    key[0] = 99;
    expect(new Uint8Array(raw as ArrayBuffer)[0]).toBe(0);
    const hex = mediaKeyMaterial(key, 'pbkdf2');
    expect(hex).toBe(toHex(key));
    expect(hex).toMatch(/^[0-9a-f]{64}$/);
    expect(code(() => mediaKeyMaterial(new Uint8Array(16), 'hkdf'))).toBe('crypto:');
  });
});

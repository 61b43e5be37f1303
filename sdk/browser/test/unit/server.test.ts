import { describe, expect, it } from 'vitest';

import { ed25519 } from '@noble/curves/ed25519.js';

import { resolveOracle, wrapCallKey } from '../../src/core.js';
import { parseEnvelope } from '../../src/envelope.js';
import { OracleCallError } from '../../src/errors.js';
import { MemoryPinStore } from '../../src/pins.js';
import { prekeySignedBytes } from '../../src/prekeys.js';
import { contextBytes } from '../../src/protocol.js';
import { isLoopbackHost, requireSecureUrl, ServerApi } from '../../src/server.js';
import { b64uStr, hex, keys, prekeyVectors, referenceOpenV1, referenceOpenV2, toHexStr, sdkError as err } from './vectors.js';

const KEYS = keys();
const PRE = prekeyVectors();
const ORACLE = 'did:ixo:entity:oracle-companion-1';
const CALL_ID = '$abc:ex.org@oc-0123456789abcdef0123456789abcdef';
const TOKEN = 'openid-token-1';

interface Seen {
  url: string;
  method: string;
  headers: Record<string, string>;
  body?: string;
}

type Reply = { status: number; body?: unknown; text?: string } | Error;

/** A fake fetch answering from a queue per path and recording every request. */
function fakeFetch(routes: Record<string, Reply[]>) {
  const seen: Seen[] = [];
  const fetchImpl = async (url: string, init?: RequestInit): Promise<Response> => {
    const u = new URL(url);
    const key = `${init?.method ?? 'GET'} ${u.pathname}`;
    seen.push({ url, method: init?.method ?? 'GET', headers: { ...(init?.headers as Record<string, string>) }, ...(typeof init?.body === 'string' ? { body: init.body } : {}) });
    const q = routes[key];
    const r = q?.length === 1 ? q[0] : q?.shift();
    if (r === undefined) return new Response('no route', { status: 404 });
    if (r instanceof Error) throw r;
    return new Response(r.text ?? JSON.stringify(r.body), { status: r.status });
  };
  return { fetchImpl, seen };
}

const api = (f: ReturnType<typeof fakeFetch>, attempts = 4) =>
  new ServerApi('http://127.0.0.1:18080/', f.fetchImpl, { attempts, sleep: async () => {} });

const syncOk = { callId: CALL_ID, status: 'active', livekitUrl: 'ws://127.0.0.1:7880', token: 'jwt', tokenExpiresAt: '2024-01-01T10:10:00.000Z' };
const summary = {
  callId: CALL_ID,
  callType: 'audio',
  callStatus: 'ended',
  sessionId: 's',
  roomId: 'oc-0123456789abcdef0123456789abcdef',
  userDid: 'did:ixo:u',
  oracleDid: ORACLE,
  callStartedAt: '2024-01-01T10:00:00.000Z',
  callEndedAt: '2024-01-01T10:05:00.000Z',
  reason: 'userHangup',
};

describe('URLs', () => {
  it('accepts https anywhere and http only on loopback', () => {
    for (const ok of ['https://oracle.example', 'http://127.0.0.1:18080', 'http://127.8.0.1', 'http://localhost:1', 'http://[::1]:80/']) {
      expect(requireSecureUrl(ok).href).toBeTruthy();
    }
    for (const bad of ['http://oracle.example', 'http://10.0.0.1:18080', 'http://localhost.evil.org', 'http://127.0.0.1.evil.org', 'ftp://127.0.0.1']) {
      expect(() => requireSecureUrl(bad), bad).toThrow(expect.objectContaining({ code: 'insecureUrl' }));
    }
    expect(() => requireSecureUrl('not a url')).toThrow(expect.objectContaining({ code: 'setup' }));
    expect(() => new ServerApi('http://oracle.example')).toThrow(expect.objectContaining({ code: 'insecureUrl' }));
    expect(isLoopbackHost('127.0.0.300')).toBe(false);
  });
});

describe('ServerApi', () => {
  it('syncs with the OpenID token as a bearer header, the call id percent-encoded in the path', async () => {
    const f = fakeFetch({ 'POST /calls/%24abc%3Aex.org%40oc-0123456789abcdef0123456789abcdef/sync': [{ status: 200, body: syncOk }] });
    expect(await api(f).sync(CALL_ID, TOKEN)).toEqual(syncOk);
    expect(f.seen).toHaveLength(1);
    expect(f.seen[0]!.url).toBe('http://127.0.0.1:18080/calls/%24abc%3Aex.org%40oc-0123456789abcdef0123456789abcdef/sync');
    expect(f.seen[0]!.headers['authorization']).toBe(`Bearer ${TOKEN}`);
    expect(f.seen[0]!.headers['content-type']).toBe('application/json');
    expect(f.seen[0]!.body).toBe('{}');
    expect(f.seen[0]!.url).not.toContain(TOKEN);
  });

  it('turns error bodies into typed server errors, not retried', async () => {
    const f = fakeFetch({
      'POST /calls/%24abc%3Aex.org%40oc-0123456789abcdef0123456789abcdef/sync': [
        { status: 422, body: { error: { code: 'validation_failed', message: 'callStartedAt is too far from the server clock' } } },
      ],
    });
    const e = await err(api(f).sync(CALL_ID, TOKEN));
    expect(e).toMatchObject({ code: 'server', status: 422, serverCode: 'validation_failed' });
    expect(e.message).toContain('callStartedAt is too far');
    expect(f.seen).toHaveLength(1);
    // A 4xx without a JSON body, and an unknown code, are still typed.
    const g = fakeFetch({ 'GET /calls': [{ status: 405, text: 'method not allowed' }] });
    expect(await err(api(g).listCalls(TOKEN))).toMatchObject({ code: 'server', status: 405, serverCode: undefined });
    const h = fakeFetch({ 'GET /calls': [{ status: 418, body: { error: { code: 'teapot', message: 'x' } } }] });
    expect(await err(api(h).listCalls(TOKEN))).toMatchObject({ code: 'server', status: 418, serverCode: 'teapot' });
  });

  it('retries network errors and 5xx a bounded number of times, then serverUnreachable', async () => {
    const f = fakeFetch({ 'GET /.well-known/oracle-calls': [new TypeError('Failed to fetch')] });
    const e = await err(api(f, 3).wellKnown());
    expect(e.code).toBe('serverUnreachable');
    expect(e.details).toMatchObject({ attempts: 3 });
    expect(f.seen).toHaveLength(3);
    const g = fakeFetch({ 'GET /calls': [{ status: 503, body: { error: { code: 'unavailable', message: 'matrix' } } }] });
    expect(await err(api(g, 2).listCalls(TOKEN))).toMatchObject({ code: 'serverUnreachable', status: 503, serverCode: 'unavailable' });
    expect(g.seen).toHaveLength(2);
    // A transient failure then success.
    const h = fakeFetch({ 'GET /calls': [new TypeError('reset'), { status: 502, text: 'bad gateway' }, { status: 200, body: { calls: [summary], nextCursor: 'c2' } }] });
    expect(await api(h).listCalls(TOKEN, { limit: 5, status: 'ended', sessionId: 's 1' })).toEqual({ calls: [summary], nextCursor: 'c2' });
    expect(h.seen).toHaveLength(3);
    expect(h.seen[2]!.url).toBe('http://127.0.0.1:18080/calls?limit=5&status=ended&sessionId=s+1');
  });

  it('times out a hanging request', async () => {
    const hang = (_: string, init?: RequestInit) =>
      new Promise<Response>((_r, reject) => init?.signal?.addEventListener('abort', () => reject(new Error('aborted'))));
    const e = await err(new ServerApi('http://127.0.0.1:1', hang, { attempts: 1, timeoutMs: 20 }).wellKnown());
    expect(e.code).toBe('serverUnreachable');
    expect(e.message).toContain('timed out');
  });

  it('refuses 2xx answers that are not what the API promises', async () => {
    const f = fakeFetch({ 'POST /calls/%24abc%3Aex.org%40oc-0123456789abcdef0123456789abcdef/sync': [{ status: 200, body: { ...syncOk, token: 5 } }] });
    expect(await err(api(f).sync(CALL_ID, TOKEN))).toMatchObject({ code: 'server', status: 200 });
    const g = fakeFetch({ 'GET /.well-known/oracle-calls': [{ status: 200, text: '<html>' }] });
    expect(await err(api(g).wellKnown())).toMatchObject({ code: 'server', status: 200 });
    const h = fakeFetch({ 'GET /.well-known/oracle-calls': [{ status: 200, body: { oracleDid: ORACLE } }] });
    expect(await err(api(h).wellKnown())).toMatchObject({ code: 'server' });
  });

  it('updates with exactly the given fields', async () => {
    const path = 'POST /calls/%24abc%3Aex.org%40oc-0123456789abcdef0123456789abcdef/update';
    const f = fakeFetch({ [path]: [{ status: 200, body: summary }] });
    expect(await api(f).update(CALL_ID, TOKEN, 'ended', 'userHangup')).toEqual(summary);
    expect(JSON.parse(f.seen[0]!.body!)).toEqual({ callStatus: 'ended', reason: 'userHangup' });
    await api(f).update(CALL_ID, TOKEN, undefined, 'mediaFailed');
    expect(JSON.parse(f.seen[1]!.body!)).toEqual({ reason: 'mediaFailed' });
    expect(await err(api(f).update(CALL_ID, TOKEN))).toMatchObject({ code: 'setup' });
    expect(await err(api(f).update('not-a-call-id', TOKEN, 'ended'))).toMatchObject({ code: 'protocol' });
    expect(await err(api(f).update(CALL_ID, 'bad token', 'ended'))).toMatchObject({ code: 'matrix' });
  });

  it('claims a prekey exactly once, even when the network fails', async () => {
    const signed = PRE.prekeys['prekey-1'].signed;
    const f = fakeFetch({ 'POST /prekeys/claim': [{ status: 200, body: signed }] });
    expect(await api(f).claimPrekey(TOKEN)).toEqual(signed);
    const g = fakeFetch({ 'POST /prekeys/claim': [new TypeError('reset')] });
    expect(await err(api(g).claimPrekey(TOKEN))).toMatchObject({ code: 'serverUnreachable' });
    expect(g.seen).toHaveLength(1);
    const h = fakeFetch({ 'POST /prekeys/claim': [{ status: 503, text: 'down' }] });
    expect(await err(api(h).claimPrekey(TOKEN))).toMatchObject({ code: 'serverUnreachable', status: 503 });
    expect(h.seen).toHaveLength(1);
    const i = fakeFetch({ 'POST /prekeys/claim': [{ status: 200, body: { ...signed, extra: true } }] });
    expect(await err(api(i).claimPrekey(TOKEN))).toMatchObject({ code: 'prekeyInvalid' });
  });

  it('claims a room for the early join once; 404 is "not offered", other refusals are typed errors', async () => {
    const room = 'oc-0123456789abcdef0123456789abcdef';
    const path = `POST /rooms/${room}/claim`;
    const ok = {
      roomId: room,
      livekitUrl: 'ws://127.0.0.1:7880',
      token: 'claim-jwt',
      tokenExpiresAt: '2024-01-01T10:10:00.000Z',
      claimExpiresAt: '2024-01-01T10:01:00.000Z',
    };
    const f = fakeFetch({ [path]: [{ status: 200, body: ok }] });
    expect(await api(f).claimRoom(room, TOKEN)).toEqual(ok);
    expect(f.seen[0]!.headers['authorization']).toBe(`Bearer ${TOKEN}`);
    // No route at all (a server without the early join answers 404): no early join, no error.
    expect(await api(fakeFetch({})).claimRoom(room, TOKEN)).toBeNull();
    const taken = fakeFetch({ [path]: [{ status: 409, body: { error: { code: 'conflict', message: 'taken' } } }] });
    expect(await err(api(taken).claimRoom(room, TOKEN))).toMatchObject({ code: 'server', status: 409, serverCode: 'conflict' });
    const down = fakeFetch({ [path]: [{ status: 503, text: 'down' }] });
    expect(await err(api(down).claimRoom(room, TOKEN))).toMatchObject({ code: 'serverUnreachable', status: 503 });
    expect(down.seen).toHaveLength(1);
    for (const bad of [{ ...ok, token: 7 }, { ...ok, claimExpiresAt: 'soon' }, [ok]]) {
      const g = fakeFetch({ [path]: [{ status: 200, body: bad }] });
      expect(await err(api(g).claimRoom(room, TOKEN))).toMatchObject({ code: 'server', status: 200 });
    }
  });
});

describe('resolveOracle + wrapCallKey', () => {
  const p256 = KEYS['hpke-p256-a']!;
  const keyInfo = { keyId: p256.key_id, scheme: 'hpke-p256', publicKey: b64uStr(hex(p256.public_raw_hex)) };
  const baseWk = {
    oracleDid: ORACLE,
    matrixUserId: '@oracle:localhost',
    agentName: 'oracle-agent',
    livekitUrl: 'ws://127.0.0.1:7880',
    keys: [keyInfo],
    matrixDevices: [{ deviceId: 'BOT', ed25519: 'ed-a' }],
  };
  const ctx = contextBytes({ sessionId: 's-1', roomId: 'oc-0123456789abcdef0123456789abcdef', userDid: 'did:ixo:u', oracleDid: ORACLE, callType: 'audio' });

  it('without prekeys: a v1 envelope to the pinned key, no claim', async () => {
    const f = fakeFetch({ 'GET /.well-known/oracle-calls': [{ status: 200, body: baseWk }] });
    const pins = new MemoryPinStore();
    const resolved = await resolveOracle({ api: api(f), oracleDid: ORACLE, pins });
    expect(resolved).toMatchObject({ bot: '@oracle:localhost', livekitUrl: 'ws://127.0.0.1:7880', agentName: 'oracle-agent', key: keyInfo });
    const callKey = crypto.getRandomValues(new Uint8Array(32));
    const w = await wrapCallKey({ resolved, api: api(f), openIdToken: TOKEN, callKey, context: ctx });
    expect(w.prekeyId).toBeUndefined();
    expect(parseEnvelope(w.encryptionKey).version).toBe(1);
    expect(toHexStr(await referenceOpenV1(w.encryptionKey, p256, ctx))).toBe(toHexStr(callKey));
    expect(f.seen.map((s) => s.url)).toEqual(['http://127.0.0.1:18080/.well-known/oracle-calls']);
    expect((await err(wrapCallKey({ resolved, api: api(f), openIdToken: TOKEN, callKey, context: ctx, forwardSecrecy: 'required' }))).code).toBe('prekeyUnavailable');
  });

  it('with a prekey signing key: claims, verifies and wraps twice', async () => {
    const signing = PRE.signing_keys['prekey-signing-a'];
    const pk = PRE.prekeys['prekey-1'];
    const f = fakeFetch({
      'GET /.well-known/oracle-calls': [{ status: 200, body: { ...baseWk, prekeySigningKey: signing.public_b64url } }],
      'POST /prekeys/claim': [{ status: 200, body: pk.signed }],
    });
    const resolved = await resolveOracle({ api: api(f), oracleDid: ORACLE, pins: new MemoryPinStore() });
    const callKey = crypto.getRandomValues(new Uint8Array(32));
    const w = await wrapCallKey({ resolved, api: api(f), openIdToken: TOKEN, callKey, context: ctx });
    expect(w).toMatchObject({ prekeyId: pk.prekey_id, lastResort: false });
    const inner = await referenceOpenV2(w.encryptionKey, hex(pk.private_hex), hex(pk.prekey_id_hex), ctx);
    expect(toHexStr(await referenceOpenV1(inner, p256, ctx))).toBe(toHexStr(callKey));
    const claim = f.seen.find((s) => s.url.endsWith('/prekeys/claim'))!;
    expect(claim.headers['authorization']).toBe(`Bearer ${TOKEN}`);
  });

  it('refuses the call when the claim fails or the prekey is not signed by the pinned key (no v1 fallback)', async () => {
    const signing = PRE.signing_keys['prekey-signing-a'];
    const wkFs = { ...baseWk, prekeySigningKey: signing.public_b64url };
    const callKey = crypto.getRandomValues(new Uint8Array(32));
    for (const [reply, codeWanted, status] of [
      [{ status: 404, body: { error: { code: 'not_found', message: 'the oracle has published no prekeys' } } }, 'prekeyUnavailable', 404],
      [{ status: 409, body: { error: { code: 'conflict', message: 'no prekey left' } } }, 'prekeyUnavailable', 409],
      [{ status: 401, body: { error: { code: 'unauthorized', message: 'x' } } }, 'server', 401],
      [{ status: 503, text: 'down' }, 'serverUnreachable', 503],
      [new TypeError('reset'), 'serverUnreachable', undefined],
      [{ status: 200, body: PRE.signature_cases.find((c: any) => c.name === 'signature_bit_flipped').signed }, 'prekeyInvalid', undefined],
    ] as const) {
      const f = fakeFetch({ 'GET /.well-known/oracle-calls': [{ status: 200, body: wkFs }], 'POST /prekeys/claim': [reply as Reply] });
      const resolved = await resolveOracle({ api: api(f), oracleDid: ORACLE, pins: new MemoryPinStore() });
      const e = await err(wrapCallKey({ resolved, api: api(f), openIdToken: TOKEN, callKey, context: ctx }));
      expect(e.code).toBe(codeWanted);
      expect(e.status).toBe(status);
      expect(f.seen.filter((s) => s.url.endsWith('/prekeys/claim'))).toHaveLength(1);
    }
    // A prekey signed for another oracle DID.
    const seed = crypto.getRandomValues(new Uint8Array(32));
    const id = crypto.getRandomValues(new Uint8Array(16));
    const x = crypto.getRandomValues(new Uint8Array(32));
    const otherDid = { prekeyId: b64uStr(id), publicKey: b64uStr(x), lastResort: false, signature: b64uStr(ed25519.sign(prekeySignedBytes('did:ixo:other', id, x, false), seed)) };
    const f = fakeFetch({
      'GET /.well-known/oracle-calls': [{ status: 200, body: { ...baseWk, prekeySigningKey: b64uStr(ed25519.getPublicKey(seed)) } }],
      'POST /prekeys/claim': [{ status: 200, body: otherDid }],
    });
    const resolved = await resolveOracle({ api: api(f), oracleDid: ORACLE, pins: new MemoryPinStore() });
    expect((await err(wrapCallKey({ resolved, api: api(f), openIdToken: TOKEN, callKey, context: ctx }))).code).toBe('prekeyInvalid');
  });

  it('refuses a well-known for another oracle before pinning anything', async () => {
    const f = fakeFetch({ 'GET /.well-known/oracle-calls': [{ status: 200, body: { ...baseWk, oracleDid: 'did:ixo:evil' } }] });
    const pins = new MemoryPinStore();
    expect((await err(resolveOracle({ api: api(f), oracleDid: ORACLE, pins }))).code).toBe('wrongOracle');
    expect(pins.get(ORACLE)).toBeUndefined();
  });

  it('passes the well-known through a key-transparency verifier and pins its record', async () => {
    const f = fakeFetch({ 'GET /.well-known/oracle-calls': [{ status: 200, body: baseWk }] });
    const pins = new MemoryPinStore();
    let seenWk: unknown;
    await resolveOracle({
      api: api(f),
      oracleDid: ORACLE,
      pins,
      kt: async (wk) => {
        seenWk = wk;
        return { record: { keys: wk.keys }, epoch: 3, version: 1 };
      },
    });
    expect(seenWk).toMatchObject({ oracleDid: ORACLE });
    expect(pins.get(ORACLE)).toMatchObject({ ktEpoch: 3, ktVersion: 1 });
    const g = fakeFetch({ 'GET /.well-known/oracle-calls': [{ status: 200, body: baseWk }] });
    const refusing = async () => {
      throw new OracleCallError('ktMismatch', 'keys differ');
    };
    expect((await err(resolveOracle({ api: api(g), oracleDid: ORACLE, pins: new MemoryPinStore(), kt: refusing }))).code).toBe('ktMismatch');
  });
});

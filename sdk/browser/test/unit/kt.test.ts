// Key transparency (src/kt.ts) against vectors made by other implementations:
// - crates/kt/tests/vectors/kt_lookup.json: a real akd directory's lookup answers, exactly as
//   `oracle-calls kt serve` sends them, and what the Rust verifier makes of each (the record,
//   or its refusal reason), incl. tampered proofs, foreign checkpoints, rollback and fork;
// - crates/kt/tests/vectors/kt.json: checkpoints signed and records encoded by Python.

import { type ChildProcess, execFileSync, spawn } from 'node:child_process';
import { existsSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { homedir, tmpdir } from 'node:os';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';

import { ed25519 } from '@noble/curves/ed25519.js';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';

import {
  KtError,
  checkpointSignedBytes,
  compareRecordWithWellKnown,
  decodeRecord,
  directoryKeyId,
  encodeRecord,
  lookupUrl,
  parseDirectoryPublicKey,
  parseSignedCheckpoint,
  changeSince,
  verifyCheckpoint,
  verifyHistory,
  verifyLookup,
  verifyOracleRecord,
  type OracleRecord,
} from '../../src/kt';

const here = dirname(fileURLToPath(import.meta.url));
const KT_VECTORS = join(here, '../../../../crates/kt/tests/vectors');
const load = (name: string): any => JSON.parse(readFileSync(join(KT_VECTORS, name), 'utf8'));

const lookups = load('kt_lookup.json');
const python = load('kt.json');

const hex = (b: Uint8Array): string => Buffer.from(b).toString('hex');
const unhex = (s: string): Uint8Array => new Uint8Array(Buffer.from(s, 'hex'));
const b64 = (b: Uint8Array): string => Buffer.from(b).toString('base64url');
const unb64 = (s: string): Uint8Array => new Uint8Array(Buffer.from(s, 'base64url'));

function reasonOf(f: () => unknown): string {
  try {
    f();
  } catch (e) {
    if (e instanceof KtError) return e.reason;
    throw e;
  }
  return 'ok';
}

async function reasonOfAsync(f: () => Promise<unknown>): Promise<string> {
  try {
    await f();
  } catch (e) {
    if (e instanceof KtError) return e.reason;
    throw e;
  }
  return 'ok';
}

describe('lookup answers of a real akd directory (Rust vectors)', () => {
  const key = parseDirectoryPublicKey(lookups.directoryPublicKey);
  const cases: any[] = lookups.cases;

  it('has positives and every refusal kind', () => {
    const oks = cases.filter((c) => c.expect.ok).length;
    expect(oks).toBeGreaterThanOrEqual(15);
    const reasons = new Set(cases.filter((c) => !c.expect.ok).map((c) => c.expect.reason));
    for (const r of ['unknown_key', 'bad_signature', 'rollback', 'fork', 'time_went_backwards', 'malformed', 'lookup_proof']) {
      expect(reasons.has(r), r).toBe(true);
    }
  });

  it.each(cases.map((c) => [c.name, c] as const))('%s', (_name, c) => {
    const run = () =>
      verifyLookup({
        directoryPublicKey: c.directoryPublicKey ?? lookups.directoryPublicKey,
        did: c.did,
        response: c.body,
        stored: c.stored,
      });
    if (c.expect.ok) {
      const v = run();
      expect(v.record).toEqual(c.expect.record);
      expect(v.epoch).toBe(c.expect.epoch);
      expect(v.version).toBe(c.expect.version);
      expect(v.checkpoint.epoch).toBe(c.expect.checkpointEpoch);
      // What to store: the newer of the stored checkpoint and the offered one.
      const offered = JSON.parse(c.body).checkpoint;
      const storedEpoch = c.stored?.checkpoint.epoch ?? -1;
      expect(v.stored).toEqual(storedEpoch >= offered.checkpoint.epoch ? c.stored : offered);
      // The record's canonical bytes round-trip.
      expect(decodeRecord(encodeRecord(v.record))).toEqual(v.record);
    } else {
      expect(reasonOf(run)).toBe(c.expect.reason);
    }
  });

  it('every checkpoint verifies under the directory key, and not under another', () => {
    const other = ed25519.getPublicKey(new Uint8Array(32).fill(9));
    lookups.checkpoints.forEach((cp: any, epoch: number) => {
      expect(verifyCheckpoint(cp, key).epoch).toBe(epoch);
      expect(verifyCheckpoint(JSON.stringify(cp), key.signingKey).epoch).toBe(epoch);
      expect(reasonOf(() => verifyCheckpoint(cp, other))).toBe('unknown_key');
    });
  });

  it('a verified lookup moves the stored checkpoint forward; the stored one then refuses older answers', () => {
    const byName = (n: string) => cases.find((c) => c.name === n);
    const e2 = byName('epoch 2: did:ixo:oracle1');
    const e4 = byName('epoch 4: did:ixo:oracle1');
    const first = verifyLookup({ directoryPublicKey: key, did: e2.did, response: e2.body });
    expect(first.stored.checkpoint.epoch).toBe(2);
    const second = verifyLookup({ directoryPublicKey: key, did: e4.did, response: e4.body, stored: first.stored });
    expect(second.stored.checkpoint.epoch).toBe(4);
    expect(reasonOf(() => verifyLookup({ directoryPublicKey: key, did: e2.did, response: e2.body, stored: second.stored }))).toBe(
      'rollback',
    );
    // A stored checkpoint that is not the directory's is refused before anything else.
    const forged = { ...first.stored, signature: b64(new Uint8Array(64)) };
    expect(reasonOf(() => verifyLookup({ directoryPublicKey: key, did: e4.did, response: e4.body, stored: forged }))).toBe(
      'bad_signature',
    );
  });

  it('refuses a proof over 128 KiB before parsing it, and never throws anything but KtError', () => {
    const good = JSON.parse(cases[0].body);
    const big = JSON.stringify({ ...good, proof: b64(new Uint8Array(128 * 1024 + 1)) });
    expect(reasonOf(() => verifyLookup({ directoryPublicKey: key, did: cases[0].did, response: big }))).toBe('too_large');
    // Random garbage as the proof: a typed refusal every time.
    let seed = 1;
    const rnd = () => ((seed = (seed * 1103515245 + 12345) & 0x7fffffff), seed & 0xff);
    for (let i = 0; i < 200; i++) {
      const bytes = Uint8Array.from({ length: rnd() * 4 }, rnd);
      const body = JSON.stringify({ ...good, proof: b64(bytes) });
      expect(['malformed', 'lookup_proof']).toContain(reasonOf(() => verifyLookup({ directoryPublicKey: key, did: cases[0].did, response: body })));
    }
  });

  it('refuses a bad DID and a bad directory key as caller errors', () => {
    const c = cases[0];
    expect(reasonOf(() => verifyLookup({ directoryPublicKey: key, did: 'oracle1', response: c.body }))).toBe('invalid_argument');
    expect(reasonOf(() => parseDirectoryPublicKey({ signingKey: b64(key.signingKey) }))).toBe('invalid_key');
    const identity = new Uint8Array(32);
    identity[0] = 1;
    expect(
      reasonOf(() => parseDirectoryPublicKey({ signingKey: b64(key.signingKey), vrfKey: b64(identity) })),
    ).toBe('invalid_key');
    expect(reasonOf(() => parseDirectoryPublicKey('{"signingKey":"AA","vrfKey":"AA"}'))).toBe('invalid_key');
  });
});

describe('key histories of a real akd directory (Rust vectors)', () => {
  const histories: any[] = lookups.histories;

  it('has positives, a change, a rewritten pin and refusals', () => {
    expect(histories.filter((c) => c.expect.ok).length).toBeGreaterThanOrEqual(5);
    expect(histories.some((c) => c.expect.change?.epoch !== undefined)).toBe(true);
    expect(histories.some((c) => c.expect.change?.reason === 'history_rewritten')).toBe(true);
    const reasons = new Set(histories.filter((c) => !c.expect.ok).map((c) => c.expect.reason));
    for (const r of ['history_proof', 'bad_signature', 'malformed']) expect(reasons.has(r), r).toBe(true);
  });

  it.each(histories.map((c) => [c.name, c] as const))('%s', (_name, c) => {
    const run = () =>
      verifyHistory({ directoryPublicKey: lookups.directoryPublicKey, did: c.did, response: c.body, stored: c.stored });
    if (!c.expect.ok) {
      expect(reasonOf(run)).toBe(c.expect.reason);
      return;
    }
    const h = run();
    expect(h.versions).toEqual(c.expect.versions);
    expect(h.checkpoint.epoch).toBe(c.expect.checkpointEpoch);
    if (c.pinned !== undefined) {
      const change = () => changeSince(h, c.pinned.record, c.pinned.version);
      if (c.expect.change === null) expect(change()).toBeUndefined();
      else if (c.expect.change.reason !== undefined) expect(reasonOf(change)).toBe(c.expect.change.reason);
      else expect(change()).toMatchObject(c.expect.change);
    }
  });

  it('verifyOracleRecord fetches the history when the pinned record changed, and not otherwise', async () => {
    const lookup = lookups.cases.find((x: any) => x.name === 'epoch 4: did:ixo:oracle1');
    const history = histories.find((x: any) => x.name === 'oracle1: two versions, pinned at version 1');
    const urls: string[] = [];
    const fetchImpl = (async (u: string) => {
      urls.push(u);
      return new Response(u.includes('/history/') ? history.body : lookup.body, { status: 200 });
    }) as unknown as typeof fetch;
    const base = { directoryUrl: 'https://kt.example', directoryPublicKey: lookups.directoryPublicKey, oracleDid: lookup.did, fetchImpl };
    const changed = await verifyOracleRecord({ ...base, pinned: history.pinned });
    expect(changed.changeEpoch).toBe(2);
    expect(changed.history?.versions.map((v) => v.version)).toEqual([2, 1]);
    expect(urls).toEqual(['https://kt.example/kt/v1/lookup/did:ixo:oracle1', 'https://kt.example/kt/v1/history/did:ixo:oracle1']);
    urls.length = 0;
    const same = await verifyOracleRecord({ ...base, pinned: { record: lookup.expect.record, version: 2 } });
    expect(same.changeEpoch).toBeUndefined();
    expect(urls.length).toBe(1);
    // A pin the history does not hold: refused, with the lookup's checkpoint to store anyway.
    try {
      await verifyOracleRecord({ ...base, pinned: { record: lookup.expect.record, version: 1 } });
      expect.unreachable();
    } catch (e) {
      expect(e).toBeInstanceOf(KtError);
      expect((e as KtError).reason).toBe('history_rewritten');
      expect((e as KtError).stored?.checkpoint.epoch).toBe(4);
    }
  });
});

describe('checkpoints and records made by Python (kt.json)', () => {
  const signing = unb64(python.signingPublicKey);

  it('key id is SHA-256 of the SPKI, first 16 bytes', () => {
    expect(directoryKeyId(signing)).toBe(python.signingKeyId);
  });

  it.each(python.checkpoints.map((c: any, i: number) => [i, c]))('checkpoint %i verifies with the same bytes', (_i, c: any) => {
    const signed = parseSignedCheckpoint(c.signedCheckpoint);
    expect(hex(checkpointSignedBytes(signed.checkpoint))).toBe(c.signedBytesHex);
    expect(verifyCheckpoint(c.signedCheckpoint, signing)).toEqual(signed.checkpoint);
    expect(signed.json).toEqual(c.signedCheckpoint);
    // Each signed field is bound.
    const cp = c.signedCheckpoint;
    for (const tampered of [
      { ...cp, checkpoint: { ...cp.checkpoint, epoch: cp.checkpoint.epoch + 1 } },
      { ...cp, checkpoint: { ...cp.checkpoint, timeMs: cp.checkpoint.timeMs + 1 } },
      { ...cp, checkpoint: { ...cp.checkpoint, rootHash: 'ff' + cp.checkpoint.rootHash.slice(2) } },
    ]) {
      expect(reasonOf(() => verifyCheckpoint(tampered, signing))).toBe('bad_signature');
    }
    // Shapes: upper-case hex, padding, unknown fields, missing fields, non-integers.
    for (const bad of [
      { ...cp, checkpoint: { ...cp.checkpoint, rootHash: 'AB' + cp.checkpoint.rootHash.slice(2) } },
      { ...cp, keyId: cp.keyId.toUpperCase() },
      { ...cp, signature: cp.signature + '=' },
      { ...cp, extra: 1 },
      { checkpoint: cp.checkpoint, signature: cp.signature },
      { ...cp, checkpoint: { ...cp.checkpoint, epoch: 1.5 } },
      { ...cp, checkpoint: { ...cp.checkpoint, epoch: '1' } },
      { ...cp, checkpoint: { ...cp.checkpoint, epoch: -1 } },
      null,
      [],
      'not json',
    ]) {
      expect(reasonOf(() => verifyCheckpoint(bad, signing))).toBe('malformed');
    }
  });

  it.each(python.records.map((c: any, i: number) => [i, c]))('record %i encodes as Python encodes it', (_i, c: any) => {
    const bytes = unhex(c.bytesHex);
    expect(hex(encodeRecord(c.record))).toBe(c.bytesHex);
    expect(decodeRecord(bytes)).toEqual(c.record);
    // Every truncation and a trailing byte are refused; so is another tag.
    for (let n = 0; n < bytes.length; n++) {
      expect(reasonOf(() => decodeRecord(bytes.subarray(0, n)))).toBe('malformed_record');
    }
    expect(reasonOf(() => decodeRecord(Uint8Array.from([...bytes, 0])))).toBe('malformed_record');
    const tag = Uint8Array.from(bytes);
    tag[4 + 24] = '9'.charCodeAt(0);
    expect(reasonOf(() => decodeRecord(tag))).toBe('malformed_record');
  });

  it('refuses unknown schemes, invalid UTF-8 and records over 16 KiB', () => {
    const record: OracleRecord = {
      keys: [{ keyId: 'k', scheme: 'hpke-p256', publicKey: 'pk' }],
      matrixUserId: '@o:x',
      botDevices: [],
      agentName: 'a',
    };
    const bytes = encodeRecord(record);
    const scheme = Uint8Array.from(bytes);
    const at = Buffer.from(scheme).indexOf('hpke-p256');
    scheme[at] = 'x'.charCodeAt(0);
    expect(reasonOf(() => decodeRecord(scheme))).toBe('malformed_record');
    const utf = Uint8Array.from(bytes);
    utf[Buffer.from(utf).indexOf('@o:x')] = 0xff;
    expect(reasonOf(() => decodeRecord(utf))).toBe('malformed_record');
    expect(reasonOf(() => decodeRecord(new Uint8Array(16 * 1024 + 1)))).toBe('too_large');
    // A v1 body relabelled v2 lacks its prekey signing key.
    const v2 = Uint8Array.from(bytes);
    v2[4 + 24] = '2'.charCodeAt(0);
    expect(reasonOf(() => decodeRecord(v2))).toBe('malformed_record');
  });
});

describe('the record against the well-known', () => {
  const key = (id: string) => ({ keyId: id, scheme: 'hpke-p256' as const, publicKey: `pk-${id}` });
  const dev = (id: string) => ({ deviceId: id, ed25519: `ed-${id}` });
  const record: OracleRecord = {
    keys: [key('k1'), key('k2')],
    matrixUserId: '@o:localhost',
    botDevices: [dev('A'), dev('B')],
    agentName: 'agent',
  };
  const wk = (over: Record<string, unknown> = {}) => ({
    oracleDid: 'did:ixo:o',
    matrixUserId: '@o:localhost',
    agentName: 'agent',
    livekitUrl: 'ws://x',
    keys: [key('k2')],
    matrixDevices: [dev('B'), dev('A')],
    ...over,
  });
  const whats = (w: unknown, r: OracleRecord = record) => compareRecordWithWellKnown(r, w).map((m) => m.what);

  it('agrees on a subset of keys and devices in another order', () => {
    expect(compareRecordWithWellKnown(record, wk())).toEqual([]);
    expect(whats(wk({ keys: [key('k2'), key('k1')] }))).toEqual([]);
  });

  it('names each field that differs', () => {
    const m = compareRecordWithWellKnown(record, wk({ keys: [key('k1'), key('k3')] }));
    expect(m).toEqual([{ what: 'keys', record: 'k1, k2', served: 'k1, k3' }]);
    expect(whats(wk({ keys: [{ ...key('k1'), publicKey: 'pk-evil' }] }))).toEqual(['keys']);
    expect(whats(wk({ matrixUserId: '@evil:localhost' }))).toEqual(['matrixUserId']);
    for (const devices of [[dev('A'), dev('B'), dev('C')], [dev('A')], [dev('A'), { deviceId: 'B', ed25519: 'ed-evil' }], []]) {
      expect(whats(wk({ matrixDevices: devices }))).toEqual(['matrixDevices']);
    }
    expect(whats(wk({ matrixDevices: undefined }))).toEqual(['matrixDevices']);
    expect(whats(wk({ matrixUserId: '@evil:x', matrixDevices: [] }))).toEqual(['matrixUserId', 'matrixDevices']);
  });

  it('requires exactly the record prekey signing key (both absent is equal)', () => {
    const withKey = { ...record, prekeySigningKey: 'pk-1' };
    expect(whats(wk({ prekeySigningKey: 'pk-1' }), withKey)).toEqual([]);
    expect(whats(wk({ prekeySigningKey: 'pk-2' }), withKey)).toEqual(['prekeySigningKey']);
    expect(whats(wk(), withKey)).toEqual(['prekeySigningKey']);
    expect(whats(wk({ prekeySigningKey: 'pk-1' }))).toEqual(['prekeySigningKey']);
    expect(compareRecordWithWellKnown(withKey, wk())).toEqual([{ what: 'prekeySigningKey', record: 'pk-1', served: 'none' }]);
  });

  it('refuses a well-known that is not one', () => {
    for (const bad of [null, [], wk({ keys: 'x' }), wk({ matrixUserId: 1 }), wk({ keys: [{ keyId: 'k' }] }), wk({ prekeySigningKey: 1 })]) {
      expect(reasonOf(() => compareRecordWithWellKnown(record, bad))).toBe('malformed');
    }
  });
});

describe('verifyOracleRecord over HTTP', () => {
  const c = lookups.cases.find((x: any) => x.name === 'epoch 4: did:web:oracle3.example%3A8443');
  const base = {
    directoryUrl: 'https://kt.example/base/',
    directoryPublicKey: lookups.directoryPublicKey,
    oracleDid: c.did,
  };
  const respond = (status: number, body: string) => new Response(body, { status, headers: { 'content-type': 'application/json' } });

  it('fetches the lookup route and verifies the answer', async () => {
    const urls: string[] = [];
    const fetchImpl = (async (u: string) => {
      urls.push(u);
      return respond(200, c.body);
    }) as unknown as typeof fetch;
    const v = await verifyOracleRecord({ ...base, fetchImpl });
    expect(v.record).toEqual(c.expect.record);
    expect(v.record.prekeySigningKey).toBeDefined();
    expect(urls).toEqual(['https://kt.example/base/kt/v1/lookup/did:web:oracle3.example%253A8443']);
  });

  it('retries 5xx and network errors, then gives up as unavailable', async () => {
    let calls = 0;
    const flaky = (async () => {
      calls++;
      if (calls === 1) throw new TypeError('connection refused');
      if (calls === 2) return respond(503, '{"error":{"code":"unavailable","message":"busy"}}');
      return respond(200, c.body);
    }) as unknown as typeof fetch;
    expect((await verifyOracleRecord({ ...base, fetchImpl: flaky })).version).toBe(1);
    expect(calls).toBe(3);
    let down = 0;
    const dead = (async () => {
      down++;
      return respond(502, 'bad gateway');
    }) as unknown as typeof fetch;
    expect(await reasonOfAsync(() => verifyOracleRecord({ ...base, fetchImpl: dead }))).toBe('unavailable');
    expect(down).toBe(4);
  });

  it('maps 404, 4xx, oversized and tampered answers to typed errors, without retrying', async () => {
    let calls = 0;
    const with_ = (status: number, body: string) =>
      (async () => {
        calls++;
        return respond(status, body);
      }) as unknown as typeof fetch;
    expect(await reasonOfAsync(() => verifyOracleRecord({ ...base, fetchImpl: with_(404, '{}') }))).toBe('not_found');
    expect(await reasonOfAsync(() => verifyOracleRecord({ ...base, fetchImpl: with_(400, 'bad did') }))).toBe('unavailable');
    expect(await reasonOfAsync(() => verifyOracleRecord({ ...base, fetchImpl: with_(200, 'x'.repeat(256 * 1024 + 1)) }))).toBe(
      'unavailable',
    );
    const other = lookups.cases.find((x: any) => x.name === 'epoch 4: did:ixo:oracle1');
    expect(await reasonOfAsync(() => verifyOracleRecord({ ...base, fetchImpl: with_(200, other.body) }))).toBe('lookup_proof');
    expect(calls).toBe(4);
  });

  it('refuses plain http outside loopback before fetching', async () => {
    const never = (async () => {
      throw new Error('must not fetch');
    }) as unknown as typeof fetch;
    for (const u of ['http://kt.example', 'http://10.0.0.1:8080', 'http://localhost.evil.org', 'ftp://127.0.0.1']) {
      expect(await reasonOfAsync(() => verifyOracleRecord({ ...base, directoryUrl: u, fetchImpl: never }))).toBe('insecure_url');
    }
    for (const u of ['https://kt.example', 'http://127.0.0.1:18080', 'http://127.8.0.1', 'http://localhost:1', 'http://[::1]:80/']) {
      expect(lookupUrl(u, 'did:ixo:o').pathname.endsWith('/kt/v1/lookup/did:ixo:o')).toBe(true);
    }
    expect(reasonOf(() => lookupUrl('not a url', 'did:ixo:o'))).toBe('invalid_argument');
  });
});

// The real service: `oracle-calls kt serve` (built by `cargo build -p oracle-calls`), with a
// fresh directory of its own (kt keygen, kt token, SQLite in a temporary directory). Skipped
// only when the binary is not built.
const BIN =
  process.env.ORACLE_CALLS_BIN ??
  join(process.env.CARGO_TARGET_DIR ?? join(homedir(), '.cache/oracle-calls/target'), 'debug/oracle-calls');

describe.skipIf(!existsSync(BIN))('against a running `oracle-calls kt serve`', () => {
  const dids = ['did:ixo:kt-e2e-1', 'did:web:kt-e2e.example%3A8443'] as const;
  let tmp = '';
  let child: ChildProcess | undefined;
  let base = '';
  let publicKey: unknown;
  const tokens: string[] = [];

  beforeAll(async () => {
    tmp = mkdtempSync(join(tmpdir(), 'kt-e2e-'));
    const env = { ...process.env };
    for (const v of ['ORACLE_CALLS_KT_CONFIG', 'ORACLE_CALLS_KT_SIGNING_KEY', 'ORACLE_CALLS_KT_VRF_KEY', 'ORACLE_CALLS_KT_DATABASE_URL']) {
      delete env[v];
    }
    const keys = join(tmp, 'keys');
    publicKey = JSON.parse(execFileSync(BIN, ['kt', 'keygen', '--out-dir', keys], { env, encoding: 'utf8' }));
    let publishers = '';
    for (const did of dids) {
      const out = execFileSync(BIN, ['kt', 'token', '--did', did], { env, encoding: 'utf8' });
      const nl = out.indexOf('\n');
      tokens.push(out.slice(0, nl));
      publishers += out.slice(nl + 1);
    }
    writeFileSync(join(tmp, 'kt.toml'), `listen = "127.0.0.1:0"\ndata_dir = "${join(tmp, 'data')}"\n${publishers}`);
    const proc = spawn(BIN, ['kt', 'serve', '--config', join(tmp, 'kt.toml')], {
      env: {
        ...env,
        ORACLE_CALLS_KT_SIGNING_KEY_FILE: join(keys, 'signing.key'),
        ORACLE_CALLS_KT_VRF_KEY_FILE: join(keys, 'vrf.key'),
        RUST_LOG: 'warn',
      },
      stdio: ['ignore', 'pipe', 'inherit'],
    });
    child = proc;
    base = await new Promise<string>((resolve, reject) => {
      let out = '';
      const timer = setTimeout(() => reject(new Error(`kt serve did not start: ${out}`)), 60_000);
      proc.stdout?.on('data', (chunk: Buffer) => {
        out += chunk.toString('utf8');
        const m = /listening on (\S+)/.exec(out);
        if (m) {
          clearTimeout(timer);
          resolve(`http://${m[1]}`);
        }
      });
      proc.on('exit', (code) => reject(new Error(`kt serve exited with ${code}`)));
    });
  }, 90_000);

  afterAll(() => {
    child?.kill();
    if (tmp) rmSync(tmp, { recursive: true, force: true });
  });

  const record = (keyId: string, prekeySigningKey?: string): OracleRecord => ({
    keys: [{ keyId, scheme: 'hpke-x25519', publicKey: `pk-${keyId}` }],
    matrixUserId: '@kt-e2e:localhost',
    botDevices: [{ deviceId: 'KTDEV', ed25519: 'ed-kt' }],
    agentName: 'kt-e2e',
    ...(prekeySigningKey === undefined ? {} : { prekeySigningKey }),
  });

  async function publish(i: number, r: OracleRecord): Promise<any> {
    const resp = await fetch(`${base}/kt/v1/publish`, {
      method: 'POST',
      headers: { authorization: `Bearer ${tokens[i]}`, 'content-type': 'application/json' },
      body: JSON.stringify({ did: dids[i], record: r }),
    });
    expect(resp.status).toBe(200);
    return resp.json();
  }

  it('verifies published records, a key change with the stored checkpoint, and a percent-encoded DID', async () => {
    await publish(0, record('00000000000000000000000000000aaa'));
    const first = await verifyOracleRecord({ directoryUrl: base, directoryPublicKey: publicKey, oracleDid: dids[0] });
    expect(first.record).toEqual(record('00000000000000000000000000000aaa'));
    expect([first.epoch, first.version, first.stored.checkpoint.epoch]).toEqual([1, 1, 1]);

    const changed = record('00000000000000000000000000000bbb', 'cHJla2V5LXNpZ25pbmcta2V5LW9mLXRoZS1lMmUtb3JhY2xl');
    const published = await publish(0, changed);
    expect(published.checkpoint.checkpoint.epoch).toBe(2);
    const second = await verifyOracleRecord({
      directoryUrl: `${base}/`,
      directoryPublicKey: publicKey,
      oracleDid: dids[0],
      stored: first.stored,
    });
    expect(second.record).toEqual(changed);
    expect([second.epoch, second.version]).toEqual([2, 2]);
    expect(second.stored).toEqual(published.checkpoint);
    expect(second.changeEpoch).toBeUndefined();

    // A client that pinned version 1 learns from the verified history when it changed.
    const pinnedBefore = await verifyOracleRecord({
      directoryUrl: base,
      directoryPublicKey: publicKey,
      oracleDid: dids[0],
      stored: first.stored,
      pinned: { record: first.record, version: first.version },
    });
    expect(pinnedBefore.changeEpoch).toBe(2);
    expect(pinnedBefore.history?.versions.map((v) => [v.version, v.epoch])).toEqual([
      [2, 2],
      [1, 1],
    ]);
    expect(pinnedBefore.history?.versions[1]?.record).toEqual(first.record);

    // The record agrees with a well-known that serves it, and not with one that serves the old key.
    const wellKnown = {
      oracleDid: dids[0],
      matrixUserId: changed.matrixUserId,
      agentName: changed.agentName,
      livekitUrl: 'ws://127.0.0.1:7880',
      keys: changed.keys,
      matrixDevices: changed.botDevices,
      prekeySigningKey: changed.prekeySigningKey,
    };
    expect(compareRecordWithWellKnown(second.record, wellKnown)).toEqual([]);
    expect(compareRecordWithWellKnown(second.record, { ...wellKnown, keys: first.record.keys }).map((m) => m.what)).toEqual(['keys']);

    // A DID with `%` in it travels as one path segment.
    await publish(1, record('00000000000000000000000000000ccc'));
    const third = await verifyOracleRecord({
      directoryUrl: base,
      directoryPublicKey: publicKey,
      oracleDid: dids[1],
      stored: second.stored,
    });
    expect(third.record).toEqual(record('00000000000000000000000000000ccc'));
    expect(third.stored.checkpoint.epoch).toBe(3);
    // The first DID is now answered at epoch 3, its record still the one of epoch 2.
    const again = await verifyOracleRecord({ directoryUrl: base, directoryPublicKey: publicKey, oracleDid: dids[0], stored: third.stored });
    expect([again.checkpoint.epoch, again.epoch, again.version]).toEqual([3, 2, 2]);
    expect(again.record).toEqual(changed);
  });

  it('answers not_found for a DID never published, and refuses another directory key', async () => {
    expect(
      await reasonOfAsync(() => verifyOracleRecord({ directoryUrl: base, directoryPublicKey: publicKey, oracleDid: 'did:ixo:never' })),
    ).toBe('not_found');
    expect(
      await reasonOfAsync(() =>
        verifyOracleRecord({ directoryUrl: base, directoryPublicKey: lookups.directoryPublicKey, oracleDid: dids[0] }),
      ),
    ).toBe('unknown_key');
  });
});

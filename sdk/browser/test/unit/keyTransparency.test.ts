// The call-side key-transparency step (src/keyTransparency.ts) on the Rust side's vectors
// (crates/kt/tests/vectors/kt_lookup.json): what it answers, what it stores, and the typed
// error of each failure, through a fake fetch that serves the directory's exact answers.
import { readFileSync } from 'node:fs';
import { describe, expect, it } from 'vitest';

import { keyTransparency } from '../../src/keyTransparency.js';
import { OracleCallError } from '../../src/errors.js';
import { MemoryPinStore } from '../../src/pins.js';
import type { WellKnown } from '../../src/wellknown.js';

const V = JSON.parse(readFileSync(new URL('../../../../crates/kt/tests/vectors/kt_lookup.json', import.meta.url), 'utf8'));
const DIR = 'http://127.0.0.1:9';

function kase(name: string): any {
  const c = V.cases.find((x: any) => x.name === name);
  if (c === undefined) throw new Error(`no vector ${name}`);
  return c;
}

/** A directory that answers each lookup with `body` (status 200), or `status`. */
function directory(answers: Array<{ body?: string; status?: number }>): { fetchImpl: typeof fetch; urls: string[] } {
  const urls: string[] = [];
  let i = 0;
  const fetchImpl = (async (input: RequestInfo | URL) => {
    urls.push(String(input));
    const a = answers[Math.min(i++, answers.length - 1)]!;
    return new Response(a.body ?? JSON.stringify({ error: { code: 'not_found', message: 'no record' } }), {
      status: a.status ?? 200,
      headers: { 'content-type': 'application/json' },
    });
  }) as typeof fetch;
  return { fetchImpl, urls };
}

/** The well-known a server would publish for the record of `c` (optionally edited). */
function wellKnownOf(c: any, edit: (w: WellKnown) => void = () => {}): WellKnown {
  const r = c.expect.record;
  const w: WellKnown = {
    oracleDid: c.did,
    matrixUserId: r.matrixUserId,
    agentName: r.agentName,
    livekitUrl: 'ws://127.0.0.1:7880',
    keys: r.keys,
    matrixDevices: r.botDevices,
    ...(r.prekeySigningKey === undefined ? {} : { prekeySigningKey: r.prekeySigningKey }),
  };
  edit(w);
  return w;
}

async function refusal(p: Promise<unknown>): Promise<OracleCallError> {
  try {
    await p;
  } catch (e) {
    expect(e).toBeInstanceOf(OracleCallError);
    return e as OracleCallError;
  }
  throw new Error('expected a refusal');
}

describe('keyTransparency (the call-side step)', () => {
  it('answers the verified record and keeps the checkpoint for the next call', async () => {
    const c = kase('epoch 1: did:ixo:oracle1');
    const { fetchImpl, urls } = directory([{ body: c.body }]);
    const pins = new MemoryPinStore();
    const kt = keyTransparency({ url: DIR, publicKey: V.directoryPublicKey, fetchImpl });
    const v = await kt(wellKnownOf(c), pins);
    expect(v.epoch).toBe(c.expect.epoch);
    expect(v.version).toBe(c.expect.version);
    expect((v.record as any).matrixUserId).toBe(c.expect.record.matrixUserId);
    expect(urls).toEqual([`${DIR}/kt/v1/lookup/did:ixo:oracle1`]);
    const stored = pins.getKtCheckpoint(V.checkpoints[0].keyId) as any;
    expect(stored.checkpoint.epoch).toBe(c.expect.checkpointEpoch);
  });

  it('refuses an older checkpoint than the one stored by an earlier call (rollback)', async () => {
    const newer = kase('epoch 4: did:ixo:oracle1');
    const older = kase('epoch 2: did:ixo:oracle1');
    const pins = new MemoryPinStore();
    const first = directory([{ body: newer.body }]);
    await keyTransparency({ url: DIR, publicKey: V.directoryPublicKey, fetchImpl: first.fetchImpl })(wellKnownOf(newer), pins);
    const second = directory([{ body: older.body }]);
    const e = await refusal(
      keyTransparency({ url: DIR, publicKey: V.directoryPublicKey, fetchImpl: second.fetchImpl })(wellKnownOf(older), pins),
    );
    expect(e.code).toBe('keyTransparency');
    expect(e.reason).toBe('rollback');
  });

  it('refuses a server that describes the oracle otherwise than the record (each field)', async () => {
    const c = kase('epoch 1: did:ixo:oracle1');
    const edits: Array<[string, (w: WellKnown) => void]> = [
      ['matrixUserId', (w) => (w.matrixUserId = '@impostor:localhost')],
      ['matrixDevices', (w) => (w.matrixDevices = [{ deviceId: 'EVIL', ed25519: 'ed-evil' }])],
      ['keys', (w) => (w.keys = [{ ...w.keys[0]!, keyId: 'ffffffffffffffffffffffffffffffff' }])],
      ['prekeySigningKey', (w) => (w.prekeySigningKey = 'A'.repeat(43))],
    ];
    for (const [what, edit] of edits) {
      const { fetchImpl } = directory([{ body: c.body }]);
      const e = await refusal(
        keyTransparency({ url: DIR, publicKey: V.directoryPublicKey, fetchImpl })(wellKnownOf(c, edit), new MemoryPinStore()),
      );
      expect(e.code, what).toBe('ktMismatch');
      expect(e.details?.['what'], what).toBe(what);
    }
    // A subset of the record's keys is not a mismatch (the server may publish fewer).
    const { fetchImpl } = directory([{ body: c.body }]);
    await keyTransparency({ url: DIR, publicKey: V.directoryPublicKey, fetchImpl })(
      wellKnownOf(c, (w) => (w.keys = [w.keys[0]!])),
      new MemoryPinStore(),
    );
  });

  it('maps every failure to its typed error', async () => {
    const pk = V.directoryPublicKey;
    const cases: Array<[string, Array<{ body?: string; status?: number }>, string, string]> = [
      ['no record', [{ status: 404 }], 'ktUnavailable', 'not_found'],
      ['a directory that keeps failing', [{ status: 503, body: 'down' }], 'ktUnavailable', 'unavailable'],
      ['a flipped signature', [{ body: kase('checkpoint signature flipped').body }], 'keyTransparency', 'bad_signature'],
      ['a tampered VRF proof', [{ body: kase('existence VRF proof: c flipped').body }], 'keyTransparency', 'lookup_proof'],
      ["another DID's answer", [{ body: kase("oracle2's answer for oracle1").body }], 'keyTransparency', ''],
      ['not JSON', [{ body: '{"checkpoint":' }], 'keyTransparency', 'malformed'],
    ];
    const c = kase('epoch 1: did:ixo:oracle1');
    for (const [name, answers, code, reason] of cases) {
      const { fetchImpl } = directory(answers);
      const e = await refusal(keyTransparency({ url: DIR, publicKey: pk, fetchImpl })(wellKnownOf(c), new MemoryPinStore()));
      expect(e.code, name).toBe(code);
      if (reason !== '') expect(e.reason, name).toBe(reason);
    }
    const { fetchImpl } = directory([{ body: c.body }]);
    const insecure = await refusal(
      keyTransparency({ url: 'http://kt.example.org', publicKey: pk, fetchImpl })(wellKnownOf(c), new MemoryPinStore()),
    );
    expect(insecure.code).toBe('insecureUrl');
    expect(() => keyTransparency({ url: DIR, publicKey: { signingKey: 'x', vrfKey: 'y' } })).toThrow(
      expect.objectContaining({ code: 'setup' }),
    );
  });
});

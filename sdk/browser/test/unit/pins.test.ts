import { describe, expect, it } from 'vitest';

import { OracleCallError } from '../../src/errors.js';
import { checkAndPin, LocalStoragePinStore, MemoryPinStore, NO_PREKEYS, type PinStore, type TrustOverride } from '../../src/pins.js';
import { chooseKey, keyIdOf, type OracleKeyInfo, parseWellKnown, type WellKnown } from '../../src/wellknown.js';
import { b64uStr, freshHpkeKey, hex, keys, prekeyVectors, sdkError as err } from './vectors.js';

const KEYS = keys();
const PRE = prekeyVectors();
const ORACLE = 'did:ixo:entity:oracle-companion-1';

const info = (ref: string): OracleKeyInfo => {
  const k = KEYS[ref]!;
  return { keyId: k.key_id, scheme: k.scheme as OracleKeyInfo['scheme'], publicKey: b64uStr(hex(k.public_raw_hex)) };
};
const dev = (deviceId: string, ed25519: string) => ({ deviceId, ed25519 });
const wk = (keys: OracleKeyInfo[], o: Partial<WellKnown> = {}): WellKnown => ({
  oracleDid: ORACLE,
  matrixUserId: '@o:localhost',
  agentName: 'oracle-agent',
  livekitUrl: 'ws://127.0.0.1:7880',
  keys,
  matrixDevices: [dev('BOT', 'ed-a')],
  ...o,
});

class FakeStorage {
  readonly items = new Map<string, string>();
  getItem(k: string) {
    return this.items.get(k) ?? null;
  }
  setItem(k: string, v: string) {
    this.items.set(k, v);
  }
  removeItem(k: string) {
    this.items.delete(k);
  }
}

const check = (store: PinStore, w: WellKnown, override?: TrustOverride) => checkAndPin({ store, oracleDid: ORACLE, wellKnown: w, ...(override ? { override } : {}) });

describe('wellknown', () => {
  const doc = {
    oracleDid: ORACLE,
    matrixUserId: '@o:localhost',
    agentName: 'a',
    livekitUrl: 'ws://x',
    keys: [info('hpke-x25519-a'), info('hpke-p256-a')],
    matrixDevices: [dev('BOT', 'ed-a')],
    somethingNew: { x: 1 },
  };
  it('parses strictly, ignoring unknown fields', () => {
    const w = parseWellKnown(doc);
    expect(w).toEqual({ ...wk([info('hpke-x25519-a'), info('hpke-p256-a')]), agentName: 'a', livekitUrl: 'ws://x' });
    expect(parseWellKnown({ ...doc, matrixDevices: undefined }).matrixDevices).toEqual([]);
    expect(parseWellKnown({ ...doc, prekeySigningKey: 'abc' }).prekeySigningKey).toBe('abc');
    const field = (v: unknown) => {
      try {
        parseWellKnown(v);
      } catch (e) {
        return (e as OracleCallError).code + ':' + String((e as OracleCallError).details?.['field']);
      }
      return 'ok';
    };
    expect(field({ ...doc, oracleDid: 'nope' })).toBe('protocol:oracleDid');
    expect(field({ ...doc, keys: 'x' })).toBe('protocol:keys');
    expect(field({ ...doc, keys: [{ ...info('hpke-p256-a'), scheme: 'hpke-p384' }] })).toBe('protocol:keys[0].scheme');
    expect(field({ ...doc, keys: [{ ...info('hpke-p256-a'), keyId: 1 }] })).toBe('protocol:keys[0].keyId');
    expect(field({ ...doc, matrixDevices: [{ deviceId: 'X' }] })).toBe('protocol:matrixDevices[0].ed25519');
    expect(field({ ...doc, matrixUserId: null })).toBe('protocol:matrixUserId');
    expect(field({ ...doc, prekeySigningKey: 5 })).toBe('protocol:prekeySigningKey');
    expect(field([doc])).toBe('protocol:wellKnown');
  });
  it('chooses P-256 > X25519 > secp256k1 > RSA whatever the order, skipping keys whose id is not the fingerprint', () => {
    expect(chooseKey([info('rsa-2048-a'), info('secp256k1-a'), info('hpke-x25519-a'), info('hpke-p256-a')]).info.scheme).toBe('hpke-p256');
    expect(chooseKey([info('rsa-2048-a'), info('secp256k1-a'), info('hpke-x25519-a')]).info.scheme).toBe('hpke-x25519');
    expect(chooseKey([info('rsa-2048-a'), info('secp256k1-a')]).info.scheme).toBe('ecies-secp256k1');
    expect(chooseKey([info('rsa-2048-a')]).info.scheme).toBe('rsa-oaep-256');
    const lying = { ...info('hpke-p256-a'), keyId: KEYS['hpke-p256-b']!.key_id };
    expect(chooseKey([lying, info('hpke-x25519-a')]).info.scheme).toBe('hpke-x25519');
    const e = (() => {
      try {
        chooseKey([lying]);
      } catch (x) {
        return x as OracleCallError;
      }
      return undefined;
    })();
    expect(e?.code).toBe('noUsableKey');
    expect(e?.message).toContain('is not the fingerprint');
    expect((() => { try { chooseKey([]); } catch (x) { return (x as OracleCallError).message; } return ''; })()).toContain('none published');
  });
});

describe('checkAndPin (trust on first use, as crates/client/src/trust.rs)', () => {
  it('pins on first use; a changed key is refused unless exactly that key is accepted', async () => {
    const s = new MemoryPinStore();
    const a = info('hpke-p256-a');
    const b = info('hpke-p256-b');
    const { raw } = await freshHpkeKey('hpke-p256');
    const c: OracleKeyInfo = { scheme: 'hpke-p256', publicKey: b64uStr(raw), keyId: keyIdOf('hpke-p256', raw) };
    expect((await check(s, wk([a]))).key.keyId).toBe(a.keyId);
    expect((await s.get(ORACLE))!.keys).toEqual([a]);
    // The pinned key again, with another published before it.
    expect((await check(s, wk([b, a]))).key.keyId).toBe(a.keyId);
    const changed = await err(check(s, wk([b])));
    expect(changed.code).toBe('oracleKeyChanged');
    expect(changed.details).toMatchObject({ pinned: a.keyId, offered: b.keyId });
    // Accepting another key than the one offered changes nothing.
    expect((await err(check(s, wk([b]), { oracleKey: c.keyId }))).code).toBe('oracleKeyChanged');
    // With b and c offered, accepting b pins b, never c.
    expect((await check(s, wk([c, b]), { oracleKey: b.keyId })).key.keyId).toBe(b.keyId);
    expect((await s.get(ORACLE))!.keys).toEqual([b]);
    expect((await check(s, wk([b]))).key.keyId).toBe(b.keyId);
    expect((await err(check(s, wk([a])))).code).toBe('oracleKeyChanged');
  });

  it('refuses a server naming another oracle, whatever the override', async () => {
    const s = new MemoryPinStore();
    const e = await err(checkAndPin({ store: s, oracleDid: ORACLE, wellKnown: wk([info('hpke-p256-a')], { oracleDid: 'did:ixo:other' }), override: { oracleKey: info('hpke-p256-a').keyId, botDevice: 'ed-a' } }));
    expect(e.code).toBe('wrongOracle');
    expect(e.details).toEqual({ expected: ORACLE, served: 'did:ixo:other' });
    expect(await s.get(ORACLE)).toBeUndefined();
    expect(await s.get('did:ixo:other')).toBeUndefined();
  });

  it('shares only with pinned devices; a changed bot or device is refused unless that device is accepted', async () => {
    const s = new MemoryPinStore();
    const a = info('hpke-x25519-a');
    const t = await check(s, wk([a]));
    expect(t.bot).toBe('@o:localhost');
    expect(t.devices).toEqual([dev('BOT', 'ed-a')]);
    // A second device next to the pinned one: only the pinned one.
    expect((await check(s, wk([a], { matrixDevices: [dev('EVIL', 'ed-x'), dev('BOT', 'ed-a')] }))).devices).toEqual([dev('BOT', 'ed-a')]);
    // The same device id with another key is another device.
    const swapped = await err(check(s, wk([a], { matrixDevices: [dev('BOT', 'ed-x')] })));
    expect(swapped.code).toBe('botDeviceChanged');
    expect(String(swapped.details?.['pinned'])).toContain('ed-a');
    expect(String(swapped.details?.['offered'])).toContain('ed-x');
    const moved = wk([a], { matrixUserId: '@o2:localhost', matrixDevices: [dev('NEW', 'ed-n')] });
    expect((await err(check(s, moved))).code).toBe('oracleBotChanged');
    const t2 = await check(s, moved, { botDevice: 'ed-n' });
    expect(t2.bot).toBe('@o2:localhost');
    expect(t2.devices).toEqual([dev('NEW', 'ed-n')]);
    expect((await check(s, moved)).bot).toBe('@o2:localhost');
    // No device published: refused.
    expect((await err(check(s, wk([a], { matrixUserId: '@o2:localhost', matrixDevices: [] })))).code).toBe('botDeviceUnknown');
  });

  it('pins the prekey signing key once offered; a change or withdrawal needs exactly the new value', async () => {
    const s = new MemoryPinStore();
    const a = info('hpke-p256-a');
    const k1 = PRE.signing_keys['prekey-signing-a'].public_b64url as string;
    const k2 = PRE.signing_keys['prekey-signing-b'].public_b64url as string;
    expect((await check(s, wk([a]))).prekeySigner).toBeUndefined();
    const t = await check(s, wk([a], { prekeySigningKey: k1 }));
    expect(t.prekeySigner?.text).toBe(k1);
    expect(b64uStr(t.prekeySigner!.raw)).toBe(k1);
    expect((await s.get(ORACLE))!.prekeySigningKey).toBe(k1);
    const changed = await err(check(s, wk([a], { prekeySigningKey: k2 })));
    expect(changed.code).toBe('prekeySigningKeyChanged');
    expect(changed.details).toMatchObject({ pinned: k1, offered: k2 });
    const withdrawn = await err(check(s, wk([a])));
    expect(withdrawn.code).toBe('prekeySigningKeyChanged');
    expect(withdrawn.details).toMatchObject({ offered: 'none' });
    expect((await err(check(s, wk([a]), { prekeySigningKey: k2 }))).code).toBe('prekeySigningKeyChanged');
    expect((await check(s, wk([a], { prekeySigningKey: k2 }), { prekeySigningKey: k2 })).prekeySigner?.text).toBe(k2);
    expect((await check(s, wk([a], { prekeySigningKey: k2 }))).prekeySigner?.text).toBe(k2);
    expect((await check(s, wk([a]), { prekeySigningKey: NO_PREKEYS })).prekeySigner).toBeUndefined();
    expect((await s.get(ORACLE))!.prekeySigningKey).toBeUndefined();
    // An unusable signing key is noUsableKey.
    expect((await err(check(new MemoryPinStore(), wk([a], { prekeySigningKey: 'not-a-key' })))).code).toBe('noUsableKey');
  });

  it('refuses a key whose id is not its fingerprint, and no keys at all', async () => {
    const lying = { ...info('hpke-x25519-a'), keyId: '00'.repeat(16) };
    expect((await err(check(new MemoryPinStore(), wk([lying])))).code).toBe('noUsableKey');
    expect((await err(check(new MemoryPinStore(), wk([])))).code).toBe('noUsableKey');
  });

  it('keeps key transparency facts: the record pinned, the change epoch named', async () => {
    const s = new MemoryPinStore();
    const a = info('hpke-p256-a');
    const b = info('hpke-p256-b');
    await checkAndPin({ store: s, oracleDid: ORACLE, wellKnown: wk([a]), kt: { record: { v: 1 }, epoch: 4, version: 1 } });
    expect(await s.get(ORACLE)).toMatchObject({ ktEpoch: 4, ktVersion: 1, ktRecord: { v: 1 } });
    const e = await err(checkAndPin({ store: s, oracleDid: ORACLE, wellKnown: wk([b]), kt: { record: { v: 2 }, epoch: 9, version: 2, changeEpoch: 7 } }));
    expect(e.code).toBe('oracleKeyChanged');
    expect(e.details?.['epoch']).toBe(7);
    expect(e.message).toContain('epoch 7');
    expect((await err(check(s, wk([b])))).details?.['epoch']).toBe(4);
    await checkAndPin({ store: s, oracleDid: ORACLE, wellKnown: wk([b]), override: { oracleKey: b.keyId }, kt: { record: { v: 2 }, epoch: 9, version: 2, changeEpoch: 7 } });
    expect(await s.get(ORACLE)).toMatchObject({ ktEpoch: 9, ktVersion: 2, ktRecord: { v: 2 }, keys: [b] });
  });
});

describe('LocalStoragePinStore', () => {
  it('persists pins per oracle and reads them back into the same decisions', async () => {
    const storage = new FakeStorage();
    const s1 = new LocalStoragePinStore(storage);
    await check(s1, wk([info('hpke-p256-a')]));
    expect([...storage.items.keys()]).toEqual([`oracle-calls/pins/v1/${ORACLE}`]);
    const s2 = new LocalStoragePinStore(storage);
    expect((await err(check(s2, wk([info('hpke-p256-b')])))).code).toBe('oracleKeyChanged');
    s2.setKtCheckpoint('dir1', { epoch: 3 });
    expect(new LocalStoragePinStore(storage).getKtCheckpoint('dir1')).toEqual({ epoch: 3 });
    s2.remove(ORACLE);
    expect((await check(s2, wk([info('hpke-p256-b')]))).key.keyId).toBe(info('hpke-p256-b').keyId);
  });
  it('turns a corrupt or unreadable store into setup errors', async () => {
    const storage = new FakeStorage();
    storage.setItem(`oracle-calls/pins/v1/${ORACLE}`, '{not json');
    expect((await err(check(new LocalStoragePinStore(storage), wk([info('hpke-p256-a')])))).code).toBe('setup');
    storage.setItem(`oracle-calls/pins/v1/${ORACLE}`, JSON.stringify({ keys: 'x' }));
    expect((await err(check(new LocalStoragePinStore(storage), wk([info('hpke-p256-a')])))).code).toBe('setup');
    const throwing = { getItem: () => { throw new Error('SecurityError'); }, setItem: () => {}, removeItem: () => {} };
    expect((await err(check(new LocalStoragePinStore(throwing), wk([info('hpke-p256-a')])))).code).toBe('setup');
    const full = { getItem: () => null, setItem: () => { throw new Error('QuotaExceededError'); }, removeItem: () => {} };
    expect((await err(check(new LocalStoragePinStore(full), wk([info('hpke-p256-a')])))).code).toBe('setup');
  });
});

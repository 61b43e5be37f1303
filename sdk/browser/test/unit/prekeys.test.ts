import { describe, expect, it } from 'vitest';

import { ed25519 } from '@noble/curves/ed25519.js';

import { OracleCallError } from '../../src/errors.js';
import { parsePrekeySigningKey, parseSignedPrekey, prekeySignedBytes, verifyPrekey, type SignedPrekey } from '../../src/prekeys.js';
import { b64u, b64uStr, hex, prekeyVectors, toHexStr } from './vectors.js';

const PRE = prekeyVectors();
const SIGNING_A = PRE.signing_keys['prekey-signing-a'];
const DID = 'did:ixo:entity:oracle-companion-1';

function failure(f: () => unknown): { code: string; failure?: unknown; field?: unknown } | 'ok' {
  try {
    f();
  } catch (e) {
    if (!(e instanceof OracleCallError)) throw e;
    return { code: e.code, failure: e.details?.['failure'], field: e.details?.['field'] };
  }
  return 'ok';
}

describe('the signed bytes', () => {
  it('match each vector prekey', () => {
    for (const p of Object.values<any>(PRE.prekeys)) {
      const got = prekeySignedBytes(p.oracle_did, hex(p.prekey_id_hex), hex(p.public_hex), p.last_resort);
      expect(toHexStr(got), p.name).toBe(p.signed_bytes_hex);
    }
  });
});

describe('verifyPrekey against prekey_envelopes.json signature_cases', () => {
  it(`gives each case its expected result (${PRE.signature_cases.length} cases)`, () => {
    expect(PRE.signature_cases.length).toBeGreaterThanOrEqual(19);
    for (const c of PRE.signature_cases) {
      const r = failure(() => verifyPrekey(b64u(c.signing_public_key), c.oracle_did, c.signed));
      if (c.expect === 'ok') {
        expect(r, c.name).toBe('ok');
        const v = verifyPrekey(b64u(c.signing_public_key), c.oracle_did, c.signed);
        expect(v.idText).toBe(c.signed.prekeyId);
        expect(b64uStr(v.publicKey)).toBe(c.signed.publicKey);
        expect(v.lastResort).toBe(c.signed.lastResort);
      } else {
        expect(r, c.name).toEqual({ code: 'prekeyInvalid', failure: c.expect, field: c.field });
      }
    }
  });
});

describe('verifyPrekey with freshly signed prekeys', () => {
  const seed = crypto.getRandomValues(new Uint8Array(32));
  const pub = ed25519.getPublicKey(seed);
  const id = crypto.getRandomValues(new Uint8Array(16));
  const xpub = crypto.getRandomValues(new Uint8Array(32));
  const sign = (did: string, i: Uint8Array, pk: Uint8Array, lr: boolean): SignedPrekey => ({
    prekeyId: b64uStr(i),
    publicKey: b64uStr(pk),
    lastResort: lr,
    signature: b64uStr(ed25519.sign(prekeySignedBytes(did, i, pk, lr), seed)),
  });
  const good = sign(DID, id, xpub, false);
  const bad = (s: SignedPrekey, key = pub, did = DID) => failure(() => verifyPrekey(key, did, s));

  it('accepts the genuine one', () => {
    expect(bad(good)).toBe('ok');
    expect(verifyPrekey(pub, DID, sign(DID, id, xpub, true)).lastResort).toBe(true);
  });

  it('refuses a tampered signature, id, key, lastResort flag, DID or signing key', () => {
    const sig = b64u(good.signature);
    sig[5]! ^= 1;
    const otherId = id.slice();
    otherId[0]! ^= 1;
    const otherPk = xpub.slice();
    otherPk[31]! ^= 1;
    const refused = { code: 'prekeyInvalid', failure: 'BadSignature', field: undefined };
    expect(bad({ ...good, signature: b64uStr(sig) })).toEqual(refused);
    expect(bad({ ...good, prekeyId: b64uStr(otherId) })).toEqual(refused);
    expect(bad({ ...good, publicKey: b64uStr(otherPk) })).toEqual(refused);
    expect(bad({ ...good, lastResort: true })).toEqual(refused);
    expect(bad(good, pub, 'did:ixo:entity:another-oracle')).toEqual(refused);
    expect(bad(good, ed25519.getPublicKey(crypto.getRandomValues(new Uint8Array(32))))).toEqual(refused);
  });

  it('refuses a non-canonical S (S + L), which plain RFC 8032 verifiers may accept', () => {
    const sig = b64u(good.signature);
    let s = 0n;
    for (let i = 31; i >= 0; i--) s = (s << 8n) | BigInt(sig[32 + i]!);
    const L = 2n ** 252n + 27742317777372353535851937790883648493n;
    let t = s + L;
    expect(t < 2n ** 256n).toBe(true);
    for (let i = 0; i < 32; i++) {
      sig[32 + i] = Number(t & 0xffn);
      t >>= 8n;
    }
    expect(bad({ ...good, signature: b64uStr(sig) })).toEqual({ code: 'prekeyInvalid', failure: 'BadSignature', field: undefined });
  });

  it('refuses a small-order R and a small-order or non-point signing key', () => {
    // The identity point (y = 1) has order 1.
    const identity = new Uint8Array(32);
    identity[0] = 1;
    const sig = b64u(good.signature);
    sig.set(identity, 0);
    expect(bad({ ...good, signature: b64uStr(sig) })).toEqual({ code: 'prekeyInvalid', failure: 'BadSignature', field: undefined });
    expect(bad(good, identity)).toEqual({ code: 'prekeyInvalid', failure: 'InvalidKey', field: undefined });
    // y = 2 is not on the curve.
    const notPoint = new Uint8Array(32);
    notPoint[0] = 2;
    expect(bad(good, notPoint)).toEqual({ code: 'prekeyInvalid', failure: 'InvalidKey', field: undefined });
  });

  it('names the field of a bad encoding or length, in the order prekeyId, publicKey, signature', () => {
    expect(bad({ ...good, prekeyId: good.prekeyId.slice(0, 21) + '!' })).toMatchObject({ failure: 'Encoding', field: 'prekeyId' });
    expect(bad({ ...good, prekeyId: good.prekeyId + 'A' })).toMatchObject({ failure: 'BadLength', field: 'prekeyId' });
    expect(bad({ ...good, prekeyId: b64uStr(new Uint8Array(15)), signature: '!' })).toMatchObject({ failure: 'BadLength', field: 'prekeyId' });
    expect(bad({ ...good, publicKey: good.publicKey + '=' })).toMatchObject({ failure: 'Encoding', field: 'publicKey' });
    expect(bad({ ...good, signature: b64uStr(new Uint8Array(65)) })).toMatchObject({ failure: 'BadLength', field: 'signature' });
  });
});

describe('parseSignedPrekey', () => {
  const ok = PRE.prekeys['prekey-1'].signed;
  it('accepts exactly the four fields', () => {
    expect(parseSignedPrekey(ok)).toEqual(ok);
    expect(failure(() => parseSignedPrekey({ ...ok, extra: 1 }))).toMatchObject({ code: 'prekeyInvalid', failure: 'Malformed', field: 'extra' });
    expect(failure(() => parseSignedPrekey({ ...ok, lastResort: 'no' }))).toMatchObject({ code: 'prekeyInvalid', field: 'lastResort' });
    expect(failure(() => parseSignedPrekey({ ...ok, signature: 5 }))).toMatchObject({ code: 'prekeyInvalid', field: 'signature' });
    expect(failure(() => parseSignedPrekey([ok]))).toMatchObject({ code: 'prekeyInvalid' });
    expect(failure(() => parseSignedPrekey(null))).toMatchObject({ code: 'prekeyInvalid' });
  });
});

describe('parsePrekeySigningKey', () => {
  it('accepts the vector keys and refuses unusable ones as noUsableKey', () => {
    expect(toHexStr(parsePrekeySigningKey(SIGNING_A.public_b64url))).toBe(SIGNING_A.public_hex);
    const identity = new Uint8Array(32);
    identity[0] = 1;
    expect(failure(() => parsePrekeySigningKey(b64uStr(identity)))).toMatchObject({ code: 'noUsableKey' });
    expect(failure(() => parsePrekeySigningKey('not-a-key'))).toMatchObject({ code: 'noUsableKey' });
    expect(failure(() => parsePrekeySigningKey(SIGNING_A.public_b64url + '='))).toMatchObject({ code: 'noUsableKey' });
  });
});

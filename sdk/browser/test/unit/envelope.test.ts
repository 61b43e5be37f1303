import { describe, expect, it } from 'vitest';

import { Aes256Gcm, CipherSuite, DhkemP256HkdfSha256, DhkemX25519HkdfSha256, HkdfSha256 } from '@hpke/core';

import { encodeBase64url } from '../../src/base64.js';
import { parseEnvelope, sealV1, sealV2 } from '../../src/envelope.js';
import { OracleCallError } from '../../src/errors.js';
import { verifyPrekey } from '../../src/prekeys.js';
import { contextBytes, contextDigest, type KeyScheme } from '../../src/protocol.js';
import { keyIdOf, type OracleKeyInfo, spkiOf } from '../../src/wellknown.js';
import {
  b64u,
  b64uStr,
  envelopes,
  freshHpkeKey,
  hex,
  type KeyRecord,
  keys,
  OpenError,
  prekeyVectors,
  referenceOpenV1,
  referenceOpenV2,
  toHexStr,
  sdkError,
} from './vectors.js';

const KEYS = keys();
const ENV = envelopes();
const PRE = prekeyVectors();

function infoOf(k: KeyRecord): OracleKeyInfo {
  return { keyId: k.key_id, scheme: k.scheme as KeyScheme, publicKey: b64uStr(hex(k.public_raw_hex)) };
}

async function openError(p: Promise<unknown>): Promise<string> {
  try {
    await p;
  } catch (e) {
    if (e instanceof OpenError) return e.name;
    throw e;
  }
  return 'ok';
}

function randomKey(): Uint8Array {
  return crypto.getRandomValues(new Uint8Array(32));
}

const SCHEMES: KeyScheme[] = ['hpke-p256', 'hpke-x25519', 'rsa-oaep-256', 'ecies-secp256k1'];
const keysOf = (scheme: string) => Object.values(KEYS).filter((k) => k.scheme === scheme);

describe('key ids (keys.json)', () => {
  it('are recomputed as SHA-256(SPKI DER)[0..16] for every vector key', () => {
    expect(Object.keys(KEYS).length).toBeGreaterThanOrEqual(8);
    for (const k of Object.values(KEYS)) {
      const raw = hex(k.public_raw_hex);
      expect(toHexStr(spkiOf(k.scheme as KeyScheme, raw)), k.name).toBe(k.public_spki_der_hex);
      expect(keyIdOf(k.scheme as KeyScheme, raw), k.name).toBe(k.key_id);
      if (k.public_uncompressed_hex) {
        // secp256k1: the uncompressed form is the same key, so the same id.
        expect(keyIdOf(k.scheme as KeyScheme, hex(k.public_uncompressed_hex))).toBe(k.key_id);
      }
    }
  });
});

describe('the reference opener agrees with every v1 vector', () => {
  // Shows the test's opener (written from PROTOCOL §4.4, not from src/) is right, so that
  // what it says about SDK envelopes below means something.
  const cases = ENV.cases.filter((c: any) => c.form === 'v1');
  it(`opens ${cases.length} cases to their call key or their named error`, async () => {
    expect(cases.length).toBeGreaterThan(90);
    for (const c of cases) {
      const key = KEYS[c.open_key_ref ?? c.key_ref]!;
      const ctx = hex(c.open_context_hex ?? c.context_hex);
      if (c.expect === 'ok') {
        expect(toHexStr(await referenceOpenV1(c.envelope, key, ctx)), c.name).toBe(c.call_key_hex);
      } else {
        expect(await openError(referenceOpenV1(c.envelope, key, ctx)), c.name).toBe(c.expect_error);
      }
    }
  });
});

describe('sealV1', () => {
  for (const scheme of SCHEMES) {
    it(`${scheme}: every vector key and context round-trips through the reference opener`, async () => {
      for (const k of keysOf(scheme)) {
        for (const { context, context_hex, context_digest_hex } of ENV.contexts) {
          const ctx = contextBytes(context);
          expect(toHexStr(ctx)).toBe(context_hex);
          const callKey = randomKey();
          const text = await sealV1(infoOf(k), callKey, ctx);
          const parsed = parseEnvelope(text);
          expect(text.startsWith(`v1.${scheme}.`)).toBe(true);
          expect(parsed.version).toBe(1);
          expect(toHexStr(parsed.header.subarray(0, 16))).toBe(k.key_id);
          expect(toHexStr(parsed.header.subarray(16))).toBe(context_digest_hex);
          const bodyLen = { 'hpke-p256': 145, 'hpke-x25519': 112, 'ecies-secp256k1': 193 }[scheme as string];
          if (bodyLen !== undefined) expect(parsed.body.length).toBe(bodyLen);
          else expect(parsed.body.length).toBe(32 + ((k as any).modulus_bits ?? 0) / 8);
          expect(toHexStr(await referenceOpenV1(text, k, ctx))).toBe(toHexStr(callKey));
          // One flipped byte anywhere in the body fails.
          for (const at of [0, 17, 40, parsed.body.length - 1]) {
            const body = parsed.body.slice();
            body[at]! ^= 0x01;
            const err = await openError(referenceOpenV1(`v1.${scheme}.${encodeBase64url(body)}`, k, ctx));
            expect(['WrongKey', 'ContextMismatch', 'DecryptionFailed']).toContain(err);
          }
        }
      }
    });
  }

  it('a ~1 KB context round-trips (hpke-p256, hpke-x25519)', async () => {
    const ctx = contextBytes({
      sessionId: 's'.repeat(256),
      roomId: 'oc-0123456789abcdef0123456789abcdef',
      userDid: 'did:ixo:' + 'u'.repeat(248),
      oracleDid: 'did:ixo:' + 'o'.repeat(248),
      callType: 'video',
    });
    expect(ctx.length).toBeGreaterThan(800);
    for (const ref of ['hpke-p256-a', 'hpke-x25519-a']) {
      const k = KEYS[ref]!;
      const callKey = randomKey();
      expect(toHexStr(await referenceOpenV1(await sealV1(infoOf(k), callKey, ctx), k, ctx))).toBe(toHexStr(callKey));
    }
  });

  // For every negative vector that describes something a SEALER could get wrong, the SDK's
  // envelope for the same key and context shows the opposite property.
  const negatives = ENV.cases.filter((c: any) => c.form === 'v1' && c.expect !== 'ok');
  it(`produces none of the ${negatives.length} negative vectors' defects`, async () => {
    const seen = new Set<string>();
    for (const c of negatives) {
      seen.add(c.expect);
      const key = KEYS[c.key_ref]!;
      const ctx = hex(c.context_hex);
      const callKey = randomKey();
      const text = await sealV1(infoOf(key), callKey, ctx);
      const p = parseEnvelope(text);
      // It opens with the key and context it was sealed for ...
      expect(toHexStr(await referenceOpenV1(text, key, ctx)), c.name).toBe(toHexStr(callKey));
      // ... its header names exactly that key and context, and its length is exact (truncated,
      // header_*_tampered, header_key_id_forged, wrong_context's digest) ...
      expect(toHexStr(p.header.subarray(0, 16))).toBe(key.key_id);
      expect(toHexStr(p.header.subarray(16))).toBe(toHexStr(contextDigest(ctx)));
      // ... and the parts bound to the context are bound to exactly this one.
      switch (c.expect) {
        case 'wrong_context':
        case 'label_mismatch':
        case 'suffix_mismatch':
        case 'header_aad_mismatch': {
          if (c.open_context_hex) {
            expect(await openError(referenceOpenV1(text, key, hex(c.open_context_hex))), c.name).toBe('ContextMismatch');
            // Even with the header rewritten to the other context's digest, the payload does not open.
            const body = p.body.slice();
            body.set(contextDigest(hex(c.open_context_hex)), 16);
            const forged = `v1.${p.scheme}.${encodeBase64url(body)}`;
            expect(await openError(referenceOpenV1(forged, key, hex(c.open_context_hex))), c.name).toBe('DecryptionFailed');
          }
          if (c.sealed_aad_hex !== undefined && (p.scheme === 'hpke-p256' || p.scheme === 'hpke-x25519')) {
            // The vector was sealed with another aad; the SDK's opens only with aad = header.
            expect(await hpkeOpensWithAad(p.scheme, key, p.body, ctx, hex(c.sealed_aad_hex)), c.name).toBe(
              toHexStr(hex(c.sealed_aad_hex)) === toHexStr(p.header),
            );
            expect(await hpkeOpensWithAad(p.scheme, key, p.body, ctx, p.header.slice())).toBe(true);
          }
          break;
        }
        case 'wrong_key':
        case 'scheme_mismatch':
          // The recipient decides: another key (or another algorithm) does not open it.
          expect(await openError(referenceOpenV1(text, KEYS[c.open_key_ref]!, ctx)), c.name).toBe(c.expect_error);
          break;
        case 'header_key_id_forged': {
          // A sealer naming one key in the header and sealing to another: the SDK refuses a
          // key whose id is not its fingerprint.
          const other = KEYS[c.open_key_ref]!;
          const e = await sdkError(sealV1({ ...infoOf(key), keyId: other.key_id }, callKey, ctx));
          expect(e.code).toBe('noUsableKey');
          break;
        }
        case 'truncated':
          expect(p.body.length).toBeGreaterThan(c.truncated.body_len);
          expect(p.body.length).toBe(c.truncated.original_body_len);
          break;
        default:
          break;
      }
    }
    expect([...seen].sort()).toEqual(
      [
        'header_aad_mismatch',
        'header_digest_tampered',
        'header_key_id_forged',
        'header_key_id_tampered',
        'label_mismatch',
        'scheme_mismatch',
        'suffix_mismatch',
        'tampered',
        'truncated',
        'wrong_context',
        'wrong_key',
      ].sort(),
    );
  });

  it('ecies-secp256k1: the plaintext is call key || SHA-256(context)', async () => {
    const k = KEYS['secp256k1-a']!;
    const ctx = hex(ENV.contexts[0].context_hex);
    const callKey = randomKey();
    const p = parseEnvelope(await sealV1(infoOf(k), callKey, ctx));
    const ecies = await import('eciesjs');
    const pt = ecies.decrypt(hex(k.private_raw_hex!), p.body.subarray(32));
    expect(toHexStr(pt)).toBe(toHexStr(callKey) + toHexStr(new Uint8Array(await crypto.subtle.digest('SHA-256', ctx))));
  });

  it('refuses unusable keys and call keys with typed errors', async () => {
    const ctx = hex(ENV.contexts[0].context_hex);
    const k = infoOf(KEYS['hpke-p256-a']!);
    expect((await sdkError(sealV1({ ...k, keyId: '00'.repeat(16) }, randomKey(), ctx))).code).toBe('noUsableKey');
    expect((await sdkError(sealV1(k, new Uint8Array(31), ctx))).code).toBe('crypto');
    // Not a point on P-256.
    const bad = hex(KEYS['hpke-p256-a']!.public_raw_hex);
    bad[64]! ^= 1;
    expect((await sdkError(sealV1({ ...k, publicKey: b64uStr(bad) }, randomKey(), ctx))).code).toBe('noUsableKey');
    // Padded base64url is refused.
    expect((await sdkError(sealV1({ ...k, publicKey: k.publicKey + '=' }, randomKey(), ctx))).code).toBe('noUsableKey');
    // An unknown scheme.
    expect((await sdkError(sealV1({ ...k, scheme: 'hpke-p384' as KeyScheme }, randomKey(), ctx))).code).toBe('noUsableKey');
    // RSA under 2048 bits (its SPKI is long enough to pass the shape check; WebCrypto reads the modulus).
    const small = await crypto.subtle.generateKey(
      { name: 'RSA-OAEP', modulusLength: 1536, publicExponent: new Uint8Array([1, 0, 1]), hash: 'SHA-256' },
      true,
      ['encrypt', 'decrypt'],
    );
    const spki = new Uint8Array(await crypto.subtle.exportKey('spki', small.publicKey));
    const id = toHexStr(new Uint8Array(await crypto.subtle.digest('SHA-256', spki)).slice(0, 16));
    const rsa: OracleKeyInfo = { scheme: 'rsa-oaep-256', publicKey: b64uStr(spki), keyId: id };
    expect((await sdkError(sealV1(rsa, randomKey(), ctx))).code).toBe('noUsableKey');
  });

  it('seals to fresh HPKE keys too (nothing depends on the vector keys)', async () => {
    for (const scheme of ['hpke-p256', 'hpke-x25519'] as const) {
      const { raw, privRaw } = await freshHpkeKey(scheme);
      const rec: KeyRecord = {
        name: 'fresh',
        scheme,
        private_pkcs8_pem: '',
        private_raw_hex: toHexStr(privRaw),
        public_raw_hex: toHexStr(raw),
        public_spki_der_hex: toHexStr(spkiOf(scheme, raw)),
        key_id: keyIdOf(scheme, raw),
      };
      const ctx = hex(ENV.contexts[1].context_hex);
      const callKey = randomKey();
      expect(toHexStr(await referenceOpenV1(await sealV1(infoOf(rec), callKey, ctx), rec, ctx))).toBe(toHexStr(callKey));
    }
  });
});

async function hpkeOpensWithAad(scheme: 'hpke-p256' | 'hpke-x25519', key: KeyRecord, body: Uint8Array, ctx: Uint8Array, aad: Uint8Array): Promise<boolean> {
  const s = new CipherSuite({
    kem: scheme === 'hpke-p256' ? new DhkemP256HkdfSha256() : new DhkemX25519HkdfSha256(),
    kdf: new HkdfSha256(),
    aead: new Aes256Gcm(),
  });
  const el = scheme === 'hpke-p256' ? 65 : 32;
  const sk = await s.kem.deserializePrivateKey(hex(key.private_raw_hex!));
  try {
    await s.open({ recipientKey: sk, enc: body.slice(32, 32 + el), info: ctx }, body.slice(32 + el), aad);
    return true;
  } catch {
    return false;
  }
}

describe('sealV2 (prekey_envelopes.json)', () => {
  const signing = PRE.signing_keys['prekey-signing-a'];
  const verified = (ref: string) => {
    const p = PRE.prekeys[ref];
    return { v: verifyPrekey(b64u(signing.public_b64url), p.oracle_did, p.signed), p };
  };

  it('the reference v2 opener agrees with every v2 vector that opens or fails before the inner check', async () => {
    for (const c of PRE.cases) {
      const p = PRE.prekeys[c.open_prekey_ref ?? c.prekey_ref];
      const ctx = hex(c.open_context_hex ?? c.context_hex);
      const r = referenceOpenV2(c.envelope, hex(p.private_hex), hex(p.prekey_id_hex), ctx);
      if (c.expect === 'ok') expect(await r, c.name).toBe(c.inner_envelope);
      else if (c.expect === 'ok_layer') expect(toHexStr(Buffer.from(await r, 'latin1')), c.name).toBe(c.inner_hex);
      else expect(await openError(r), c.name).toBe(c.expect_error);
    }
  });

  for (const scheme of SCHEMES) {
    it(`wraps a ${scheme} v1 envelope that both layers open again`, async () => {
      for (const ref of ['prekey-1', 'prekey-last-resort']) {
        const { v, p } = verified(ref);
        expect(v.lastResort).toBe(ref === 'prekey-last-resort');
        const k = keysOf(scheme)[0]!;
        for (const { context_hex } of ENV.contexts) {
          const ctx = hex(context_hex);
          const callKey = randomKey();
          const inner = await sealV1(infoOf(k), callKey, ctx);
          const outer = await sealV2(v, inner, ctx);
          expect(outer.startsWith(`v2.${scheme}.`)).toBe(true);
          const parsed = parseEnvelope(outer);
          expect(parsed.version).toBe(2);
          expect(toHexStr(parsed.header.subarray(0, 16))).toBe(p.prekey_id_hex);
          expect(toHexStr(parsed.header.subarray(16))).toBe(toHexStr(contextDigest(ctx)));
          expect(parsed.body.length).toBe(32 + 32 + inner.length + 16);
          const opened = await referenceOpenV2(outer, hex(p.private_hex), hex(p.prekey_id_hex), ctx);
          expect(opened).toBe(inner);
          expect(toHexStr(await referenceOpenV1(opened, k, ctx))).toBe(toHexStr(callKey));
          // Another prekey, another context, a flipped byte: the layer does not open.
          const other = PRE.prekeys['prekey-2'];
          expect(await openError(referenceOpenV2(outer, hex(other.private_hex), hex(other.prekey_id_hex), ctx))).toBe('WrongPrekey');
          const body = parsed.body.slice();
          body[70]! ^= 0x80;
          expect(await openError(referenceOpenV2(`v2.${scheme}.${encodeBase64url(body)}`, hex(p.private_hex), hex(p.prekey_id_hex), ctx))).toBe(
            'DecryptionFailed',
          );
        }
      }
    });
  }

  it("produces none of the negative v2 vectors' defects", async () => {
    const negatives = PRE.cases.filter((c: any) => !c.expect.startsWith('ok'));
    const seen = new Set<string>();
    for (const c of negatives) {
      seen.add(c.expect);
      const { v, p } = verified(c.prekey_ref);
      const ctx = hex(c.context_hex);
      const inner = hex(c.inner_hex);
      const innerText = Buffer.from(inner).toString('latin1');
      if ((c.expect === 'inner_not_v1' && !c.name.endsWith('/other_scheme')) || c.expect === 'too_long') {
        // The vector's inner plaintext is not something the SDK wraps.
        expect((await sdkError(sealV2(v, innerText, ctx))).code, c.name).toBe('crypto');
        continue;
      }
      // other_scheme: a good v1 envelope of another scheme than the vector's outer label; the
      // SDK takes the label from the inner envelope, so the two always agree (below).
      // Otherwise the vector's inner text is a good v1 envelope (scheme_swapped: of another
      // scheme than the outer label): the SDK labels the outer layer with the inner scheme,
      // names the prekey it sealed to and the context it was given, at the exact length.
      const outer = await sealV2(v, innerText, ctx);
      const parsed = parseEnvelope(outer);
      expect(outer.startsWith(`v2.${innerText.split('.')[1]}.`), c.name).toBe(true);
      expect(toHexStr(parsed.header.subarray(0, 16))).toBe(p.prekey_id_hex);
      expect(toHexStr(parsed.header.subarray(16))).toBe(toHexStr(contextDigest(ctx)));
      expect(parsed.body.length).toBe(64 + inner.length + 16);
      expect(await referenceOpenV2(outer, hex(p.private_hex), hex(p.prekey_id_hex), ctx), c.name).toBe(innerText);
      if (c.open_context_hex) {
        expect(await openError(referenceOpenV2(outer, hex(p.private_hex), hex(p.prekey_id_hex), hex(c.open_context_hex))), c.name).toBe('ContextMismatch');
      }
    }
    expect(seen.has('inner_not_v1') && seen.has('too_long') && seen.has('scheme_swapped') && seen.has('header_prekey_id_forged')).toBe(true);
  });

  it('refuses inner envelopes that are not v1, too long, or bound to another context', async () => {
    const { v } = verified('prekey-1');
    const [a, b] = ENV.contexts;
    const ctxA = hex(a.context_hex);
    const inner = await sealV1(infoOf(KEYS['hpke-p256-a']!), randomKey(), ctxA);
    expect((await sdkError(sealV2(v, inner, hex(b.context_hex)))).code).toBe('crypto');
    const v2 = await sealV2(v, inner, ctxA);
    expect((await sdkError(sealV2(v, v2, ctxA))).code).toBe('crypto');
    const legacy = ENV.cases.find((c: any) => c.form === 'legacy').envelope;
    expect((await sdkError(sealV2(v, legacy, ctxA))).code).toBe('crypto');
    // 4097 bytes, shaped like v1.
    const long = `v1.hpke-p256.${encodeBase64url(new Uint8Array(3063))}`;
    expect(long.length).toBeGreaterThan(4096);
    expect((await sdkError(sealV2(v, long, ctxA))).code).toBe('crypto');
    expect((await sdkError(sealV2({ ...v, id: new Uint8Array(15) }, inner, ctxA))).code).toBe('crypto');
  });
});

describe('parseEnvelope', () => {
  it('names the first failing check like the Rust EnvelopeError', () => {
    const fail = (t: string) => {
      try {
        parseEnvelope(t);
      } catch (e) {
        return (e as OracleCallError).details?.['failure'];
      }
      return 'ok';
    };
    const ok = ENV.cases.find((c: any) => c.expect === 'ok' && c.scheme === 'hpke-p256').envelope as string;
    expect(fail(ok)).toBe('ok');
    expect(fail(ok.replace('v1.', 'v3.'))).toBe('UnknownVersion');
    expect(fail(ok.replace('hpke-p256', 'hpke-p384'))).toBe('UnknownScheme');
    expect(fail(ok + '=')).toBe('Encoding');
    expect(fail(ok.replace(/.$/, '+'))).toBe('Encoding');
    expect(fail('v1.hpke-p256.' + encodeBase64url(new Uint8Array(31)))).toBe('BadLength');
    expect(fail('v2.hpke-p256.' + encodeBase64url(new Uint8Array(79)))).toBe('BadLength');
    expect(fail('v2.hpke-p256.' + encodeBase64url(new Uint8Array(4177)))).toBe('BadLength');
    expect(fail('v2.hpke-p256.' + encodeBase64url(new Uint8Array(80)))).toBe('ok');
    expect(fail('nothing')).toBe('Malformed');
    expect(fail('v1.hpke-p256')).toBe('Malformed');
    expect(fail('v1.hpke-p256.AAAA.AAAA')).toBe('Malformed');
    expect(fail(undefined as unknown as string)).toBe('Malformed');
  });
});

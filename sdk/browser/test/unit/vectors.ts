// Shared test helpers: the repo's independent vectors (crates/crypto/tests/vectors, made by
// Python `cryptography`, Node WebCrypto and eciesjs) and a reference opener written from
// docs/PROTOCOL.md §4.4 / §13.3 with @hpke/core, WebCrypto and eciesjs — not with the SDK's
// code — so that envelopes the SDK seals are checked by something that could disagree.

import { readFileSync } from 'node:fs';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';

import { Aes256Gcm, CipherSuite, DhkemP256HkdfSha256, DhkemX25519HkdfSha256, HkdfSha256 } from '@hpke/core';
import { OracleCallError } from '../../src/errors.js';

const here = dirname(fileURLToPath(import.meta.url));
export const VECTORS = join(here, '../../../../crates/crypto/tests/vectors');

export function loadJson<T = any>(name: string): T {
  return JSON.parse(readFileSync(join(VECTORS, name), 'utf8')) as T;
}

export interface KeyRecord {
  name: string;
  scheme: string;
  private_pkcs8_pem: string;
  private_raw_hex?: string;
  public_raw_hex: string;
  public_spki_der_hex: string;
  public_uncompressed_hex?: string;
  key_id: string;
}

export const keys = (): Record<string, KeyRecord> => loadJson('keys.json').keys;
export const envelopes = (): any => loadJson('envelopes.json');
export const prekeyVectors = (): any => loadJson('prekey_envelopes.json');

export const hex = (h: string): Uint8Array => Uint8Array.from(Buffer.from(h, 'hex'));
export const toHexStr = (b: Uint8Array | ArrayBuffer): string => Buffer.from(b instanceof ArrayBuffer ? new Uint8Array(b) : b).toString('hex');
export const b64u = (s: string): Uint8Array => Uint8Array.from(Buffer.from(s, 'base64url'));
export const b64uStr = (b: Uint8Array): string => Buffer.from(b).toString('base64url');

const sha256 = async (b: Uint8Array): Promise<Uint8Array> => new Uint8Array(await crypto.subtle.digest('SHA-256', b));

/** The reference opener's errors: the Rust `EnvelopeError` names. */
export class OpenError extends Error {
  constructor(readonly name: string) {
    super(name);
  }
}

const ENC_LEN: Record<string, number> = { 'hpke-p256': 65, 'hpke-x25519': 32 };

function suiteOf(scheme: string): CipherSuite {
  return new CipherSuite({
    kem: scheme === 'hpke-p256' ? new DhkemP256HkdfSha256() : new DhkemX25519HkdfSha256(),
    kdf: new HkdfSha256(),
    aead: new Aes256Gcm(),
  });
}

function pemToDer(pem: string): Uint8Array {
  const b = pem.replace(/-----[^-]+-----/g, '').replace(/\s+/g, '');
  return Uint8Array.from(Buffer.from(b, 'base64'));
}

/** Opens a v1 envelope with the vector key `key` under `context`, or throws {@link OpenError}. */
export async function referenceOpenV1(text: string, key: KeyRecord, context: Uint8Array): Promise<Uint8Array> {
  const parts = text.split('.');
  if (parts.length !== 3 || parts[0] !== 'v1') throw new OpenError('Malformed');
  const scheme = parts[1]!;
  if (!/^[A-Za-z0-9_-]*$/.test(parts[2]!)) throw new OpenError('Encoding');
  const body = b64u(parts[2]!);
  if (scheme !== key.scheme) throw new OpenError('SchemeMismatch');
  if (body.length < 32) throw new OpenError('BadLength');
  const header = body.slice(0, 32);
  const payload = body.slice(32);
  if (toHexStr(header.slice(0, 16)) !== key.key_id) throw new OpenError('WrongKey');
  if (toHexStr(header.slice(16)) !== toHexStr((await sha256(context)).slice(0, 16))) throw new OpenError('ContextMismatch');
  if (scheme in ENC_LEN) {
    const el = ENC_LEN[scheme]!;
    if (payload.length !== el + 48) throw new OpenError('BadLength');
    const s = suiteOf(scheme);
    const sk = await s.kem.deserializePrivateKey(hex(key.private_raw_hex!));
    try {
      const pt = new Uint8Array(await s.open({ recipientKey: sk, enc: payload.slice(0, el), info: context }, payload.slice(el), header));
      if (pt.length !== 32) throw new OpenError('DecryptionFailed');
      return pt;
    } catch (e) {
      throw e instanceof OpenError ? e : new OpenError('DecryptionFailed');
    }
  }
  if (scheme === 'rsa-oaep-256') {
    const sk = await crypto.subtle.importKey('pkcs8', pemToDer(key.private_pkcs8_pem), { name: 'RSA-OAEP', hash: 'SHA-256' }, false, ['decrypt']);
    const modBytes = (sk.algorithm as RsaHashedKeyAlgorithm).modulusLength / 8;
    if (payload.length !== modBytes) throw new OpenError('BadLength');
    try {
      const pt = new Uint8Array(await crypto.subtle.decrypt({ name: 'RSA-OAEP', label: context }, sk, payload));
      if (pt.length !== 32) throw new OpenError('DecryptionFailed');
      return pt;
    } catch (e) {
      throw e instanceof OpenError ? e : new OpenError('DecryptionFailed');
    }
  }
  if (scheme === 'ecies-secp256k1') {
    if (payload.length !== 161) throw new OpenError('BadLength');
    const ecies = await import('eciesjs');
    let pt: Uint8Array;
    try {
      pt = ecies.decrypt(hex(key.private_raw_hex!), payload);
    } catch {
      throw new OpenError('DecryptionFailed');
    }
    if (pt.length !== 64 || toHexStr(pt.slice(32)) !== toHexStr(await sha256(context))) throw new OpenError('DecryptionFailed');
    return pt.slice(0, 32);
  }
  throw new OpenError('UnknownScheme');
}

/** Opens the prekey layer of a v2 envelope with the X25519 prekey private key; gives the inner text. */
export async function referenceOpenV2(text: string, prekeyPrivate: Uint8Array, prekeyId: Uint8Array, context: Uint8Array): Promise<string> {
  const parts = text.split('.');
  if (parts.length !== 3 || parts[0] !== 'v2') throw new OpenError('NoPrekeyLayer');
  const body = b64u(parts[2]!);
  if (body.length < 80 || body.length > 4176) throw new OpenError('BadLength');
  const header = body.slice(0, 32);
  if (toHexStr(header.slice(0, 16)) !== toHexStr(prekeyId)) throw new OpenError('WrongPrekey');
  if (toHexStr(header.slice(16)) !== toHexStr((await sha256(context)).slice(0, 16))) throw new OpenError('ContextMismatch');
  const s = suiteOf('hpke-x25519');
  const sk = await s.kem.deserializePrivateKey(prekeyPrivate);
  let inner: Uint8Array;
  try {
    inner = new Uint8Array(await s.open({ recipientKey: sk, enc: body.slice(32, 64), info: context }, body.slice(64), header));
  } catch {
    throw new OpenError('DecryptionFailed');
  }
  const innerText = Buffer.from(inner).toString('latin1');
  if (!/^v1\.[a-z0-9-]+\.[A-Za-z0-9_-]+$/.test(innerText) || innerText.split('.')[1] !== parts[1]) throw new OpenError('Malformed');
  if (b64u(innerText.split('.')[2]!).length < 32) throw new OpenError('Malformed');
  return innerText;
}

/** A fresh HPKE key pair of `scheme` with its raw public key (for envelopes to keys not in the vectors). */
export async function freshHpkeKey(scheme: 'hpke-p256' | 'hpke-x25519') {
  const s = suiteOf(scheme);
  const kp = await s.kem.generateKeyPair();
  const raw = new Uint8Array(await s.kem.serializePublicKey(kp.publicKey));
  const privRaw = new Uint8Array(await s.kem.serializePrivateKey(kp.privateKey));
  return { raw, privRaw };
}

/** The SDK's typed error `p` rejects with (any other outcome fails the test). */
export async function sdkError(p: Promise<unknown>): Promise<OracleCallError> {
  try {
    await p;
  } catch (e) {
    if (e instanceof OracleCallError) return e;
    throw e;
  }
  throw new Error('expected an OracleCallError');
}

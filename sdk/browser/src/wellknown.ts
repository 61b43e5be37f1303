/**
 * The well-known document (`GET /.well-known/oracle-calls`, docs/PROTOCOL.md §6.1): types,
 * a strict parser, key ids recomputed locally (`SHA-256(SubjectPublicKeyInfo DER)[0..16]`,
 * §4.1), the Rust client's choice among the published keys, and the wrong-oracle check.
 *
 * The oracle's DID always comes from the application, never from the server.
 */

import { p256 } from '@noble/curves/nist.js';
import { secp256k1 } from '@noble/curves/secp256k1.js';
import { sha256 } from '@noble/hashes/sha2.js';

import { concatBytes, decodeBase64url, fromHex, toHex } from './base64.js';
import { OracleCallError, protocolError } from './errors.js';
import { type KeyScheme, isKeyScheme, parseDid } from './protocol.js';

/** One published oracle key (§6.1 `keys[]`). */
export interface OracleKeyInfo {
  /** 32 lower-case hex: SHA-256(SPKI DER)[0..16]; checked locally, never trusted. */
  keyId: string;
  scheme: KeyScheme;
  /** The key's raw form (§4.1), base64url without padding. */
  publicKey: string;
}

/** One bot device that may receive call events (§6.1 `matrixDevices[]`). */
export interface BotDevice {
  deviceId: string;
  /** The device's Ed25519 identity key, unpadded standard base64 (as `/keys/query` gives it). */
  ed25519: string;
}

/** `/.well-known/oracle-calls` (§6.1). Unknown fields are dropped. */
export interface WellKnown {
  oracleDid: string;
  matrixUserId: string;
  agentName: string;
  livekitUrl: string;
  /** In the server's order of preference. */
  keys: OracleKeyInfo[];
  matrixDevices: BotDevice[];
  /** Ed25519, base64url (43 chars); absent: the oracle offers no prekeys (§13). */
  prekeySigningKey?: string;
}

function isObject(v: unknown): v is Record<string, unknown> {
  return typeof v === 'object' && v !== null && !Array.isArray(v);
}

function str(o: Record<string, unknown>, field: string, path = field): string {
  const v = o[field];
  if (typeof v !== 'string') throw protocolError(path, 'missing or not a string');
  return v;
}

/**
 * Parses the well-known document strictly: every required field present with its type, DID
 * syntax checked, every key's scheme known (a document naming a scheme this client does not
 * know is refused, as the Rust client's parser does), `matrixDevices` defaulting to `[]`.
 * Key ids are NOT trusted here: {@link chooseKey} recomputes them.
 *
 * @throws OracleCallError `protocol`
 */
export function parseWellKnown(json: unknown): WellKnown {
  if (!isObject(json)) throw protocolError('wellKnown', 'is not a JSON object');
  const oracleDid = parseDid(json['oracleDid'], 'oracleDid');
  const matrixUserId = str(json, 'matrixUserId');
  const agentName = str(json, 'agentName');
  const livekitUrl = str(json, 'livekitUrl');
  const rawKeys = json['keys'];
  if (!Array.isArray(rawKeys)) throw protocolError('keys', 'missing or not an array');
  const keys = rawKeys.map((k, i): OracleKeyInfo => {
    const path = `keys[${i}]`;
    if (!isObject(k)) throw protocolError(path, 'is not an object');
    const scheme = k['scheme'];
    if (!isKeyScheme(scheme)) throw protocolError(`${path}.scheme`, `unknown key scheme ${JSON.stringify(scheme)}`);
    return { keyId: str(k, 'keyId', `${path}.keyId`), scheme, publicKey: str(k, 'publicKey', `${path}.publicKey`) };
  });
  const rawDevices = json['matrixDevices'] ?? [];
  if (!Array.isArray(rawDevices)) throw protocolError('matrixDevices', 'is not an array');
  const matrixDevices = rawDevices.map((d, i): BotDevice => {
    const path = `matrixDevices[${i}]`;
    if (!isObject(d)) throw protocolError(path, 'is not an object');
    return { deviceId: str(d, 'deviceId', `${path}.deviceId`), ed25519: str(d, 'ed25519', `${path}.ed25519`) };
  });
  const out: WellKnown = { oracleDid, matrixUserId, agentName, livekitUrl, keys, matrixDevices };
  const psk = json['prekeySigningKey'];
  if (psk !== undefined && psk !== null) {
    if (typeof psk !== 'string') throw protocolError('prekeySigningKey', 'is not a string');
    out.prekeySigningKey = psk;
  }
  return out;
}

/**
 * Refuses a well-known that describes another oracle than `expected` (the application's
 * choice). No override helps: another DID is another oracle (§6.1).
 *
 * @throws OracleCallError `wrongOracle`
 */
export function checkOracleDid(wk: WellKnown, expected: string): void {
  if (wk.oracleDid !== expected) {
    throw new OracleCallError(
      'wrongOracle',
      `the server describes the oracle ${wk.oracleDid}, but this call is to ${expected}; refusing to call (a misconfigured or compromised server)`,
      { details: { expected, served: wk.oracleDid } },
    );
  }
}

// ---------------------------------------------------------------------------------------------
// key ids (§4.1)

/** DER prefixes of SubjectPublicKeyInfo for the fixed-size key forms. */
const SPKI_P256 = fromHex('3059301306072a8648ce3d020106082a8648ce3d030107034200');
const SPKI_X25519 = fromHex('302a300506032b656e032100');
const SPKI_SECP256K1 = fromHex('3056301006072a8648ce3d020106052b8104000a034200');

function noUsable(why: string): OracleCallError {
  return new OracleCallError('noUsableKey', why);
}

/**
 * The SubjectPublicKeyInfo DER of a raw public key (§4.1); EC points uncompressed inside.
 * Points are checked to be on their curve; RSA's raw form already is SPKI DER (its structure
 * is checked when the key is imported to seal).
 *
 * @throws OracleCallError `noUsableKey` for a key that is not of its scheme's form.
 */
export function spkiOf(scheme: KeyScheme, raw: Uint8Array): Uint8Array {
  switch (scheme) {
    case 'hpke-p256': {
      if (raw.length !== 65 || raw[0] !== 4) throw noUsable('an hpke-p256 key is a 65-byte uncompressed SEC1 point');
      try {
        p256.Point.fromBytes(raw).assertValidity();
      } catch {
        throw noUsable('the hpke-p256 key is not a point on P-256');
      }
      return concatBytes(SPKI_P256, raw);
    }
    case 'hpke-x25519':
      if (raw.length !== 32) throw noUsable('an hpke-x25519 key is 32 bytes');
      return concatBytes(SPKI_X25519, raw);
    case 'ecies-secp256k1': {
      if (!((raw.length === 33 && (raw[0] === 2 || raw[0] === 3)) || (raw.length === 65 && raw[0] === 4))) {
        throw noUsable('an ecies-secp256k1 key is a 33-byte compressed or 65-byte uncompressed SEC1 point');
      }
      try {
        const pt = secp256k1.Point.fromBytes(raw);
        pt.assertValidity();
        return concatBytes(SPKI_SECP256K1, pt.toBytes(false));
      } catch {
        throw noUsable('the ecies-secp256k1 key is not a point on secp256k1');
      }
    }
    case 'rsa-oaep-256':
      if (raw.length < 200 || raw[0] !== 0x30) throw noUsable('an rsa-oaep-256 key is SubjectPublicKeyInfo DER of at least 2048 bits');
      return raw.slice();
    default:
      throw noUsable(`unknown scheme ${String(scheme)}`);
  }
}

/** The key id bytes: SHA-256(SPKI DER)[0..16]. */
export function keyIdBytesOf(scheme: KeyScheme, raw: Uint8Array): Uint8Array {
  return sha256(spkiOf(scheme, raw)).slice(0, 16);
}

/** The key id as 32 lower-case hex characters, recomputed from the raw key. */
export function keyIdOf(scheme: KeyScheme, raw: Uint8Array): string {
  return toHex(keyIdBytesOf(scheme, raw));
}

/** A published key whose id was recomputed and matches. */
export interface CheckedKey {
  info: OracleKeyInfo;
  /** The raw public key bytes (§4.1). */
  raw: Uint8Array;
  /** The 16 key id bytes (the envelope header's first half). */
  keyId: Uint8Array;
}

/**
 * Decodes a published key and checks its `keyId` really is its fingerprint.
 *
 * @throws OracleCallError `noUsableKey` naming what is wrong.
 */
export function checkKey(info: OracleKeyInfo): CheckedKey {
  let raw: Uint8Array;
  try {
    raw = decodeBase64url(info.publicKey, 'publicKey');
  } catch {
    throw noUsable('publicKey is not base64url');
  }
  const id = keyIdBytesOf(info.scheme, raw);
  if (toHex(id) !== info.keyId) {
    throw noUsable(`keyId ${info.keyId} is not the fingerprint of its key (${toHex(id)})`);
  }
  return { info, raw, keyId: id };
}

/** The Rust client's preference, whatever the server's order (§6.1). */
export const SCHEME_PREFERENCE: readonly KeyScheme[] = ['hpke-p256', 'hpke-x25519', 'ecies-secp256k1', 'rsa-oaep-256'];

/**
 * The first usable key of `keys` in the order hpke-p256, hpke-x25519, ecies-secp256k1,
 * rsa-oaep-256; a key whose id is not its fingerprint is skipped.
 *
 * @throws OracleCallError `noUsableKey` naming every unusable key (or "none published").
 */
export function chooseKey(keys: readonly OracleKeyInfo[]): CheckedKey {
  const reasons: string[] = [];
  for (const scheme of SCHEME_PREFERENCE) {
    for (const k of keys.filter((k) => k.scheme === scheme)) {
      try {
        return checkKey(k);
      } catch (e) {
        reasons.push(`${k.keyId}: ${e instanceof Error ? e.message : String(e)}`);
      }
    }
  }
  throw new OracleCallError(
    'noUsableKey',
    `the oracle publishes no usable key: ${reasons.length === 0 ? 'none published' : reasons.join('; ')}`,
    { details: { reasons } },
  );
}

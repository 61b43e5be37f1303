/**
 * Key transparency for calls (PROTOCOL §12): the {@link KtVerifier} that `OracleClient` runs
 * before it trusts the oracle server's description. It proves the oracle's record from the
 * directory (`kt.ts`), keeps the directory's newest checkpoint in the pin store (rollback and
 * fork detection across calls), and requires the server's well-known to say what the record
 * says. Every failure refuses the call before anything is sent, with the codes of the Rust
 * client:
 *
 * - `keyTransparency`: the directory's answer does not verify (signature, proof, rollback,
 *   fork, a rewritten history, a malformed answer);
 * - `ktUnavailable`: the directory cannot be reached, answers an error, or has no record;
 * - `ktMismatch`: the server describes the oracle otherwise than the verified record
 *   (`details.what` names the first field: `keys`, `matrixUserId`, `matrixDevices`,
 *   `prekeySigningKey`);
 * - `setup`: the directory key or URL given by the application is unusable (`insecureUrl` for a
 *   plain `http://` directory outside loopback).
 */

import type { KtVerifier } from './core.js';
import { OracleCallError } from './errors.js';
import {
  KtError,
  compareRecordWithWellKnown,
  parseDirectoryPublicKey,
  verifyOracleRecord,
  type DirectoryPublicKey,
  type OracleRecord,
  type StoredCheckpoint,
} from './kt.js';
import type { KtVerified, PinStore } from './pins.js';
import type { WellKnown } from './wellknown.js';

/** Where the oracle's records are published, and the directory's key (obtained out of band). */
export interface KeyTransparencyOptions {
  /** The directory service's base URL (`oracle-calls kt serve`): `https://`, or loopback. */
  url: string;
  /**
   * The directory's public key, `{"signingKey", "vrfKey"}` as `oracle-calls kt keygen`
   * prints it (the object or its JSON text).
   */
  publicKey: unknown;
  /** `fetch` to use (default: the global one). */
  fetchImpl?: typeof fetch;
}

/**
 * The verifier to pass as `kt` to `OracleClient` (or to `resolveOracle`).
 *
 * @throws OracleCallError `setup` at once when the directory key does not parse.
 */
export function keyTransparency(options: KeyTransparencyOptions): KtVerifier {
  let key: DirectoryPublicKey;
  try {
    key = parseDirectoryPublicKey(options.publicKey);
  } catch (e) {
    throw asCallError(e);
  }
  return async (wellKnown: WellKnown, pins: PinStore): Promise<KtVerified> => {
    const oracleDid = wellKnown.oracleDid;
    const stored = await readCheckpoint(pins, key.keyId);
    const known = await pins.get(oracleDid);
    const pinned =
      known?.ktRecord !== undefined && known.ktVersion !== undefined
        ? { record: known.ktRecord as OracleRecord, version: known.ktVersion }
        : undefined;
    let verified;
    try {
      verified = await verifyOracleRecord({
        directoryUrl: options.url,
        directoryPublicKey: key,
        oracleDid,
        stored,
        pinned,
        ...(options.fetchImpl === undefined ? {} : { fetchImpl: options.fetchImpl }),
      });
    } catch (e) {
      // A newer checkpoint that verified before a later step failed is kept, as the Rust
      // client does: a directory cannot roll the client back by failing on purpose.
      if (e instanceof KtError && e.stored !== undefined) await writeCheckpoint(pins, key.keyId, e.stored);
      throw asCallError(e);
    }
    await writeCheckpoint(pins, key.keyId, verified.stored);
    let mismatches;
    try {
      mismatches = compareRecordWithWellKnown(verified.record, wellKnownJson(wellKnown));
    } catch (e) {
      throw asCallError(e);
    }
    const first = mismatches[0];
    if (first !== undefined) {
      throw new OracleCallError(
        'ktMismatch',
        `the server's ${first.what} for the oracle ${oracleDid} (${first.served}) is not what its verified key-transparency record holds (${first.record}); refusing to call (a misconfigured or compromised server, or a change its operator has not published)`,
        { details: { oracle: oracleDid, what: first.what, record: first.record, served: first.served } },
      );
    }
    return {
      record: verified.record,
      epoch: verified.epoch,
      version: verified.version,
      ...(verified.changeEpoch === undefined ? {} : { changeEpoch: verified.changeEpoch }),
    };
  };
}

/** The well-known fields the record is compared with, in the document's JSON names. */
function wellKnownJson(wk: WellKnown): Record<string, unknown> {
  return {
    keys: wk.keys,
    matrixUserId: wk.matrixUserId,
    matrixDevices: wk.matrixDevices,
    ...(wk.prekeySigningKey === undefined ? {} : { prekeySigningKey: wk.prekeySigningKey }),
  };
}

async function readCheckpoint(pins: PinStore, directoryKeyId: string): Promise<StoredCheckpoint | undefined> {
  if (pins.getKtCheckpoint === undefined) return undefined;
  const v = await pins.getKtCheckpoint(directoryKeyId);
  return v === undefined || v === null ? undefined : (v as StoredCheckpoint);
}

async function writeCheckpoint(pins: PinStore, directoryKeyId: string, checkpoint: StoredCheckpoint): Promise<void> {
  if (pins.setKtCheckpoint !== undefined) await pins.setKtCheckpoint(directoryKeyId, checkpoint);
}

/** A `KtError` as the call's typed error; anything else unchanged. */
export function asCallError(e: unknown): unknown {
  if (!(e instanceof KtError)) return e;
  const message = `key transparency: ${e.message}`;
  const options = { reason: e.reason, cause: e };
  switch (e.reason) {
    case 'not_found':
    case 'unavailable':
      return new OracleCallError('ktUnavailable', `${message}; refusing to call (the oracle's record cannot be verified)`, options);
    case 'insecure_url':
      return new OracleCallError('insecureUrl', message, options);
    case 'invalid_key':
    case 'invalid_argument':
      return new OracleCallError('setup', message, options);
    default:
      return new OracleCallError('keyTransparency', `${message}; refusing to call`, options);
  }
}

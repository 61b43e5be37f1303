/**
 * The two protocol steps of placing a call that need no Matrix and no media (docs/PROTOCOL.md
 * §9 steps 1–2, §13.6), as the Rust client's `call_oracle_in` does them:
 *
 * 1. {@link resolveOracle}: fetch the well-known, refuse another oracle, check it against the
 *    pins (trust on first use, or a key-transparency verification), pin what is new.
 * 2. {@link wrapCallKey}: seal the call key to the pinned key, bound to the call's context;
 *    when the oracle publishes a prekey signing key, first claim one prekey, verify it, and
 *    wrap the v1 envelope into a v2 one (forward secrecy). A failed claim refuses the call:
 *    never a silent fall-back to v1.
 */

import { OracleCallError } from './errors.js';
import { sealV1, sealV2 } from './envelope.js';
import { type KtVerified, type PinStore, type Trusted, type TrustOverride, checkAndPin } from './pins.js';
import { type VerifiedPrekey, verifyPrekey } from './prekeys.js';
import type { ServerApi } from './server.js';
import type { WellKnown } from './wellknown.js';
import { checkOracleDid } from './wellknown.js';

/** The oracle as this call may use it. */
export interface ResolvedOracle extends Trusted {
  /** The oracle the application chose (and the well-known names). */
  oracleDid: string;
  /** The server's description, as fetched. */
  wellKnown: WellKnown;
  /** LiveKit signaling URL and agent name from the well-known. */
  livekitUrl: string;
  agentName: string;
}

/**
 * Key transparency hook (`kt.ts`): verify the server's description against the directory and
 * answer what it proved (or throw `keyTransparency` / `ktUnavailable` / `ktMismatch`).
 */
export type KtVerifier = (wellKnown: WellKnown, pins: PinStore) => Promise<KtVerified>;

/** Input of {@link resolveOracle}. */
export interface ResolveOracleInput {
  api: ServerApi;
  /** The oracle to call: from the application, never from the server. */
  oracleDid: string;
  pins: PinStore;
  /** Accept exactly these changes (after the user verified them out of band). */
  override?: TrustOverride;
  /** With key transparency: verifies the well-known first; its record is pinned. */
  kt?: KtVerifier;
}

/**
 * Step 1: the well-known, checked against the pins (or key transparency) and pinned.
 *
 * @throws OracleCallError `server`/`serverUnreachable` (fetch), `wrongOracle`, `noUsableKey`,
 *   `oracleKeyChanged`, `oracleBotChanged`, `botDeviceChanged`, `botDeviceUnknown`,
 *   `prekeySigningKeyChanged`, KT codes, `setup` (store).
 */
export async function resolveOracle(input: ResolveOracleInput): Promise<ResolvedOracle> {
  const wk = await input.api.wellKnown();
  checkOracleDid(wk, input.oracleDid);
  const kt = input.kt === undefined ? undefined : await input.kt(wk, input.pins);
  const trusted = await checkAndPin({
    store: input.pins,
    oracleDid: input.oracleDid,
    wellKnown: wk,
    ...(input.override === undefined ? {} : { override: input.override }),
    ...(kt === undefined ? {} : { kt }),
  });
  return { ...trusted, oracleDid: input.oracleDid, wellKnown: wk, livekitUrl: wk.livekitUrl, agentName: wk.agentName };
}

/** Input of {@link wrapCallKey}. */
export interface WrapCallKeyInput {
  resolved: ResolvedOracle;
  api: ServerApi;
  /** The user's OpenID token (needed for the claim; the same token then serves sync). */
  openIdToken: string;
  /** The 32-byte call key. Not kept; the caller zeroes it when done with it. */
  callKey: Uint8Array;
  /** The call context bytes (`contextBytes`, §3). */
  context: Uint8Array;
  /**
   * `auto` (default): forward secrecy exactly when the oracle publishes a prekey signing key
   * (as the Rust client). `required`: refuse (`prekeyUnavailable`) an oracle without one.
   */
  forwardSecrecy?: 'auto' | 'required';
}

/** What goes into the call event. */
export interface WrappedCallKey {
  /** The `encryptionKey` text: v2 with forward secrecy, else v1. */
  encryptionKey: string;
  /** The claimed prekey's id (base64url), with forward secrecy. */
  prekeyId?: string;
  /** The claimed prekey was the last-resort one (weaker forward secrecy, §13.1). */
  lastResort?: boolean;
}

/**
 * Claims one prekey and verifies it against the pinned signing key and the called DID.
 *
 * @throws OracleCallError `prekeyUnavailable` (the server has no prekey to give: 404/409,
 *   `status`/`serverCode` kept), `server` (another refusal, e.g. 401/403), `serverUnreachable`
 *   (5xx, network), as the Rust client; `prekeyInvalid`. Each refuses the call: there is no
 *   fallback to a v1 envelope.
 */
export async function claimVerifiedPrekey(api: ServerApi, openIdToken: string, signingKey: Uint8Array, oracleDid: string): Promise<VerifiedPrekey> {
  let signed;
  try {
    signed = await api.claimPrekey(openIdToken, oracleDid);
  } catch (e) {
    if (e instanceof OracleCallError && e.code === 'server' && (e.status === 404 || e.status === 409)) {
      throw new OracleCallError('prekeyUnavailable', `no prekey of the oracle could be claimed: ${e.message}`, {
        ...(e.status === undefined ? {} : { status: e.status }),
        ...(e.serverCode === undefined ? {} : { serverCode: e.serverCode }),
        cause: e,
      });
    }
    throw e;
  }
  return verifyPrekey(signingKey, oracleDid, signed);
}

/**
 * Step 2: the call key sealed for the oracle (§4), inside a prekey layer when it offers
 * forward secrecy (§13.6). Nothing is sent to Matrix here; on any error nothing should be.
 *
 * @throws OracleCallError `prekeyUnavailable`, `prekeyInvalid`, `noUsableKey`, `crypto`.
 */
export async function wrapCallKey(input: WrapCallKeyInput): Promise<WrappedCallKey> {
  const { resolved, api, openIdToken, callKey, context } = input;
  const signer = resolved.prekeySigner;
  if (signer === undefined) {
    if (input.forwardSecrecy === 'required') {
      throw new OracleCallError('prekeyUnavailable', `the oracle ${resolved.oracleDid} offers no prekeys (no forward secrecy), and it was required`);
    }
    return { encryptionKey: await sealV1(resolved.key, callKey, context) };
  }
  // Claim first (§13.6 order): a failure refuses the call before anything is sealed.
  const prekey = await claimVerifiedPrekey(api, openIdToken, signer.raw, resolved.oracleDid);
  const inner = await sealV1(resolved.key, callKey, context);
  const encryptionKey = await sealV2(prekey, inner, context);
  return { encryptionKey, prekeyId: prekey.idText, lastResort: prekey.lastResort };
}

/**
 * The SDK's one error type: every failure a caller may handle is an {@link OracleCallError}
 * with a {@link ErrorCode}. The codes mirror the Rust client's `CallError` variants
 * (`crates/client/src/error.rs`) in camelCase, plus `plaintextRoom`, `e2eeUnsupported` and
 * `protocol` (untrusted input that does not follow docs/PROTOCOL.md).
 *
 * Messages never contain the call key or any other secret.
 */

/** Why a call could not be placed, continued or ended. */
export type ErrorCode =
  /** Local configuration or state is unusable (a corrupt pin store, a bad option). */
  | 'setup'
  /** Matrix refused or could not be reached (login, room, send, OpenID token). */
  | 'matrix'
  /** The server describes another oracle than the one the application asked to call. */
  | 'wrongOracle'
  /** None of the pinned oracle keys is published any more. */
  | 'oracleKeyChanged'
  /** The oracle's Matrix bot is another user than the pinned one. */
  | 'oracleBotChanged'
  /** None of the pinned bot devices is published any more. */
  | 'botDeviceChanged'
  /** The oracle's prekey signing key changed, or the oracle stopped offering prekeys. */
  | 'prekeySigningKeyChanged'
  /** The oracle offers forward secrecy but no prekey could be claimed. Nothing was sent. */
  | 'prekeyUnavailable'
  /** The claimed prekey is not signed by the oracle's prekey signing key. Nothing was sent. */
  | 'prekeyInvalid'
  /** The bot device that may receive the call event is unknown or not on the homeserver. */
  | 'botDeviceUnknown'
  /** A server URL would carry credentials in the clear (`http://` outside loopback). */
  | 'insecureUrl'
  /** The oracle publishes no key this client can wrap to. */
  | 'noUsableKey'
  /** The oracle's Matrix bot did not join the DM room in time. */
  | 'botAbsent'
  /** The Matrix room is unknown or not encrypted: the call event would go out in the clear. */
  | 'plaintextRoom'
  /** The oracle-calls server answered with an error (`status`, `serverCode`). */
  | 'server'
  /** The oracle-calls server could not be reached (after bounded retries where safe). */
  | 'serverUnreachable'
  /** The call ended before it connected; `reason` is the server's (e.g. `keyDecryptionFailed`). */
  | 'callEnded'
  /** Wrapping the call key failed. */
  | 'crypto'
  /** LiveKit media could not be set up. */
  | 'media'
  /** This browser cannot encrypt media end to end. */
  | 'e2eeUnsupported'
  /** Key transparency: the directory's answer does not verify. */
  | 'keyTransparency'
  /** Key transparency: the oracle's record could not be fetched. */
  | 'ktUnavailable'
  /** Key transparency: the server's description differs from the verified record. */
  | 'ktMismatch'
  /** Untrusted input (a server answer, an envelope, an identifier) does not follow the protocol. */
  | 'protocol';

/** Every {@link ErrorCode}, for exhaustive checks and UIs. */
export const ERROR_CODES: readonly ErrorCode[] = [
  'setup',
  'matrix',
  'wrongOracle',
  'oracleKeyChanged',
  'oracleBotChanged',
  'botDeviceChanged',
  'prekeySigningKeyChanged',
  'prekeyUnavailable',
  'prekeyInvalid',
  'botDeviceUnknown',
  'insecureUrl',
  'noUsableKey',
  'botAbsent',
  'plaintextRoom',
  'server',
  'serverUnreachable',
  'callEnded',
  'crypto',
  'media',
  'e2eeUnsupported',
  'keyTransparency',
  'ktUnavailable',
  'ktMismatch',
  'protocol',
];

/** Optional structured facts of an {@link OracleCallError}. */
export interface OracleCallErrorOptions {
  /** HTTP status (code `server`, and `prekeyUnavailable` when the claim got an answer). */
  status?: number;
  /** The server's error code from `{"error": {"code"}}` (PROTOCOL §6.7), when it sent one. */
  serverCode?: string;
  /** A call's end reason (`callEnded`), e.g. `keyDecryptionFailed`. */
  reason?: string;
  /** Anything else worth showing: old/new key ids, the field that failed, attempts. */
  details?: Record<string, unknown>;
  /** The underlying error, if any. */
  cause?: unknown;
}

/** A typed failure of the SDK. Check `code`; `message` is for people. */
export class OracleCallError extends Error {
  readonly code: ErrorCode;
  readonly status?: number;
  readonly serverCode?: string;
  readonly reason?: string;
  readonly details?: Record<string, unknown>;

  constructor(code: ErrorCode, message: string, options: OracleCallErrorOptions = {}) {
    super(message, options.cause === undefined ? undefined : { cause: options.cause });
    this.name = 'OracleCallError';
    this.code = code;
    if (options.status !== undefined) this.status = options.status;
    if (options.serverCode !== undefined) this.serverCode = options.serverCode;
    if (options.reason !== undefined) this.reason = options.reason;
    if (options.details !== undefined) this.details = options.details;
  }
}

/** Whether `e` is an {@link OracleCallError}, optionally of one of `codes`. */
export function isOracleCallError(e: unknown, ...codes: ErrorCode[]): e is OracleCallError {
  return e instanceof OracleCallError && (codes.length === 0 || codes.includes(e.code));
}

/**
 * `e` as an {@link OracleCallError}: itself if it already is one, else wrapped with `code`
 * (the original kept as `cause`, its message appended).
 */
export function asOracleCallError(e: unknown, code: ErrorCode, context: string): OracleCallError {
  if (e instanceof OracleCallError) return e;
  const msg = e instanceof Error ? e.message : String(e);
  return new OracleCallError(code, `${context}: ${msg}`, { cause: e });
}

/** Shorthand for a `protocol` error naming the field that is wrong. */
export function protocolError(field: string, what: string): OracleCallError {
  return new OracleCallError('protocol', `${field}: ${what}`, { details: { field } });
}

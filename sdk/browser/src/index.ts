// @oracle-calls/browser: end-to-end encrypted calls from a web page to an AI oracle.
//
//   const client = await OracleClient.login({ homeserverUrl, serverUrl, user, password, wasmUrl });
//   const call = client.callOracle({ oracleDid, type: 'audio' });
//   call.subscribe(() => render(call.getSnapshot()));
//   await call.ready;       // the oracle's first decrypted audio
//   await call.end();

export { OracleClient } from './client.js';
export type { ClientOptions, ClientParts, OracleLoginOptions, OracleRestoreOptions } from './client.js';
export { Call } from './call.js';
export type {
  CallDeps,
  CallOptions,
  CallServer,
  CallTrust,
  DangerousTestHooks,
  ResolvedOracleView,
  SyncAnswer,
} from './call.js';
export type { CallPhase, CallSnapshot, CallStatus, TimelinePhase } from './state.js';
export { initialSnapshot } from './state.js';
export { MatrixDevice, assertEncryptedRoom, cryptoStorePrefix, savedSessionUser } from './matrix.js';
export type { CallMatrix, GuardClient, TrustedBotDevice } from './matrix.js';
export { createLiveKitMedia, isAgentIdentity } from './media.js';
export type { CaptureOptions, KeyMaterial, MediaEvents, MediaFactory, MediaOptions, MediaSession } from './media.js';
export { ERROR_CODES, OracleCallError, isOracleCallError } from './errors.js';
export type { ErrorCode } from './errors.js';
export { ServerApi } from './server.js';
export type { CallSummary, ListCallsQuery, ListCallsResponse, SyncResponse } from './server.js';
export { LocalStoragePinStore, MemoryPinStore } from './pins.js';
export type { OraclePins, PinStore, TrustOverride } from './pins.js';
export type { CallType, KeyDerivation } from './protocol.js';
export { keyTransparency } from './keyTransparency.js';
export type { KeyTransparencyOptions } from './keyTransparency.js';
export type { KtVerifier } from './core.js';
export { KtError, verifyOracleRecord, compareRecordWithWellKnown } from './kt.js';
export type { KtErrorReason, OracleRecord, StoredCheckpoint } from './kt.js';

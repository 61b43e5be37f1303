// OracleClient: a user's Matrix device plus the oracle's server; places calls.

import type { MatrixClient } from 'matrix-js-sdk';

import { Call, type CallDeps, type CallOptions, type CallServer, type CallTrust, type ResolvedOracleView } from './call.js';
import { resolveOracle, wrapCallKey, type KtVerifier, type ResolvedOracle } from './core.js';
import { OracleCallError } from './errors.js';
import { MatrixDevice, savedSessionUser, type CallMatrix } from './matrix.js';
import { createLiveKitMedia, type MediaFactory } from './media.js';
import { LocalStoragePinStore, MemoryPinStore, type PinStore } from './pins.js';
import { contextBytes, parseDid, parseTimestamp, userDidFromMatrixUserId, type CallReason } from './protocol.js';
import { ServerApi, type CallSummary, type ListCallsQuery } from './server.js';

export interface ClientOptions {
  /** The oracle's oracle-calls server (`https://`, or `http://` on loopback). */
  serverUrl: string;
  /**
   * Where the oracles' pins live. Default: the page's `localStorage` (memory only where there
   * is none, e.g. in a worker: then every load trusts the oracle on first use again).
   */
  pins?: PinStore;
  /** The user's DID. Default: from the ixo convention `@did-ixo-X:server` → `did:ixo:X`. */
  userDid?: string;
  /** Key transparency: verifies the oracle's description before it is pinned (kt.ts). */
  kt?: KtVerifier;
}

export interface OracleLoginOptions extends Omit<ClientOptions, 'serverUrl'> {
  homeserverUrl: string;
  serverUrl: string;
  user: string;
  password: string;
  /** URL of `matrix_sdk_crypto_wasm_bg.wasm` on the page's origin. */
  wasmUrl: string | URL;
  /** Where the session is kept (default `localStorage`). */
  storage?: Storage;
  deviceName?: string;
}

export interface OracleRestoreOptions extends Omit<ClientOptions, 'serverUrl'> {
  homeserverUrl: string;
  serverUrl: string;
  wasmUrl: string | URL;
  storage?: Storage;
}

/** The pieces a client is made of (tests give fakes). */
export interface ClientParts {
  matrix: CallMatrix & { logout(): Promise<void> };
  api: ServerApi;
  pins: PinStore;
  media?: MediaFactory;
  userDid?: string;
  kt?: KtVerifier;
}

/** A user's client: one Matrix device and one oracle-calls server. */
export class OracleClient {
  readonly #matrix: CallMatrix & { logout(): Promise<void> };
  readonly #api: ServerApi;
  readonly #pins: PinStore;
  readonly #media: MediaFactory;
  readonly #userDid: string | undefined;
  readonly #kt: KtVerifier | undefined;

  constructor(parts: ClientParts) {
    this.#matrix = parts.matrix;
    this.#api = parts.api;
    this.#pins = parts.pins;
    this.#media = parts.media ?? createLiveKitMedia;
    this.#kt = parts.kt;
    this.#userDid = parts.userDid ?? userDidFromMatrixUserId(parts.matrix.userId);
  }

  /** Logs in with a password (once; the session is saved for {@link OracleClient.restore}). */
  static async login(o: OracleLoginOptions): Promise<OracleClient> {
    const api = new ServerApi(o.serverUrl);
    const storage = o.storage ?? globalThis.localStorage;
    const matrix = await MatrixDevice.login({
      homeserverUrl: o.homeserverUrl,
      user: o.user,
      password: o.password,
      wasmUrl: o.wasmUrl,
      storage,
      ...(o.deviceName === undefined ? {} : { deviceName: o.deviceName }),
    });
    return new OracleClient({ matrix, api, pins: o.pins ?? new LocalStoragePinStore(storage), ...extra(o) });
  }

  /** The device saved by an earlier login (same device, no new login), or null when none is saved. */
  static async restore(o: OracleRestoreOptions): Promise<OracleClient | null> {
    const api = new ServerApi(o.serverUrl);
    const storage = o.storage ?? globalThis.localStorage;
    const matrix = await MatrixDevice.restore({ homeserverUrl: o.homeserverUrl, wasmUrl: o.wasmUrl, storage });
    if (matrix === null) {
      return null;
    }
    return new OracleClient({ matrix, api, pins: o.pins ?? new LocalStoragePinStore(storage), ...extra(o) });
  }

  /**
   * Uses the application's own matrix-js-sdk client (no second copy is loaded). It must have
   * end-to-end encryption initialised and be syncing (checked: `setup` otherwise).
   */
  static async fromMatrixClient(mx: MatrixClient, o: ClientOptions): Promise<OracleClient> {
    const api = new ServerApi(o.serverUrl);
    const matrix = await MatrixDevice.fromClient(mx);
    const pins = o.pins ?? (typeof localStorage === 'undefined' ? new MemoryPinStore() : new LocalStoragePinStore(localStorage));
    return new OracleClient({ matrix, api, pins, ...extra(o) });
  }

  /** The user id of the session saved in `storage`, if any (to offer "restore"). */
  static savedUser(storage: Storage = globalThis.localStorage): string | null {
    return savedSessionUser(storage);
  }

  get userId(): string {
    return this.#matrix.userId;
  }

  get deviceId(): string {
    return this.#matrix.deviceId;
  }

  /** The user's DID, when known. */
  get userDid(): string | null {
    return this.#userDid ?? null;
  }

  /** The oracle-calls server API. */
  get api(): ServerApi {
    return this.#api;
  }

  /** The pins of the oracles this client called. */
  get pins(): PinStore {
    return this.#pins;
  }

  /** Places a call to the oracle the application chose. It starts at once; watch its snapshot. */
  callOracle(opts: CallOptions): Call {
    const deps = this.#deps(opts);
    return new Call(deps, opts);
  }

  #deps(opts: CallOptions): CallDeps<ResolvedOracleView> {
    const api = this.#api;
    const pins = this.#pins;
    const kt = this.#kt;
    const matrix = this.#matrix;
    const userDid = this.#userDid;
    type R = ResolvedOracle & ResolvedOracleView;
    const trust: CallTrust<R> = {
      async resolve(): Promise<R> {
        if (userDid === undefined) {
          throw new OracleCallError(
            'setup',
            `${matrix.userId} does not follow @did-ixo-<id>:server; give the user's DID (userDid) explicitly`,
          );
        }
        const oracleDid = parseDid(opts.oracleDid, 'oracleDid');
        const before = await pins.get(oracleDid);
        const r = await resolveOracle({
          api,
          oracleDid,
          pins,
          ...(opts.acceptOracleKey === undefined ? {} : { override: { oracleKey: opts.acceptOracleKey } }),
          ...(kt === undefined ? {} : { kt }),
        });
        return {
          ...r,
          keyId: r.key.keyId,
          pinnedOnFirstUse: before === undefined,
          botUserId: r.bot,
          botDevices: r.devices,
        };
      },
      async wrap(resolved, callKey, context, openIdToken): Promise<string> {
        const token = await openIdToken();
        const w = await wrapCallKey({ resolved, api, openIdToken: token, callKey, context: contextBytes(context) });
        return w.encryptionKey;
      },
    };
    const server: CallServer = {
      async claim(roomName, token) {
        const c = await api.claimRoom(roomName, token);
        return c === null
          ? null
          : { livekitUrl: c.livekitUrl, token: c.token, claimExpiresAtMs: parseTimestamp(c.claimExpiresAt, 'claimExpiresAt') };
      },
      sync: (callId, token) => api.sync(callId, token),
      async end(callId, token, reason) {
        const s = await api.update(callId, token, 'ended', reason as CallReason);
        return s.reason ?? null;
      },
      async endedReason(callId, sessionId, token) {
        const page = await api.listCalls(token, { status: 'ended', sessionId, limit: 50 });
        const c = page.calls.find((x) => x.callId === callId);
        return c === undefined ? null : (c.reason ?? 'unknown');
      },
    };
    return {
      trust: trust as CallTrust<ResolvedOracleView>,
      server,
      matrix,
      media: this.#media,
      userDid: userDid ?? '',
    };
  }

  /** This user's calls, newest first (`GET /calls`). */
  async listCalls(query: ListCallsQuery = {}): Promise<CallSummary[]> {
    const token = await this.#matrix.openIdToken();
    const page = await this.#api.listCalls(token, query);
    return page.calls;
  }

  /** Logs out: clears the saved session and the device's crypto store (own devices only). */
  async logout(): Promise<void> {
    await this.#matrix.logout();
  }
}

function extra(o: { userDid?: string; kt?: KtVerifier }): { userDid?: string; kt?: KtVerifier } {
  return {
    ...(o.userDid === undefined ? {} : { userDid: o.userDid }),
    ...(o.kt === undefined ? {} : { kt: o.kt }),
  };
}

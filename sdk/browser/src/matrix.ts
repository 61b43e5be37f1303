// The user's Matrix device in the browser: matrix-js-sdk with its Rust crypto (wasm), the
// encrypted DM with the oracle's bot (PROTOCOL §9.1), the plaintext guard, the call event and
// its edits (one transaction id per event, bounded backoff), OpenID tokens (§8.1).
//
// matrix-js-sdk is a peer dependency: an application that already runs it hands its client to
// `MatrixDevice.fromClient` and no second copy is loaded.

import { initAsync } from '@matrix-org/matrix-sdk-crypto-wasm';
import {
  ClientEvent,
  EventStatus,
  KnownMembership,
  Preset,
  SyncState,
  createClient,
  type MatrixClient,
  type MatrixEvent,
  type Room,
} from 'matrix-js-sdk';

import { OracleCallError, asOracleCallError } from './errors.js';
import { CALL_EVENT_TYPE } from './protocol.js';
import { requireSecureUrl } from './server.js';

/** A bot device the application (pins / well-known) allows to receive the call event. */
export interface TrustedBotDevice {
  deviceId: string;
  /** Unpadded standard base64 Ed25519 identity key, as `/keys/query` gives it. */
  ed25519: string;
}

/** What the call needs from Matrix (the unit tests give a fake). */
export interface CallMatrix {
  readonly userId: string;
  readonly deviceId: string;
  /**
   * The encrypted DM with `bot`, found or created, once the bot has joined it; only the
   * `devices` listed (device id and Ed25519 key) will get the room key. Returns its room id.
   */
  prepareRoom(bot: string, devices: readonly TrustedBotDevice[]): Promise<string>;
  /** Sends `content` as `type` into `roomId` (guarded: never in the clear); the event id. */
  send(roomId: string, type: string, content: object): Promise<string>;
  /** An OpenID token for the oracle's server (cached until shortly before it expires). */
  openIdToken(): Promise<string>;
  /** Tests of the plaintext guard only: a new room with `bot` WITHOUT encryption, once synced. */
  createUnencryptedRoomForTest?(bot: string): Promise<string>;
}

/** The saved session: enough to rebuild the same device without logging in again. */
interface SavedSession {
  v: 1;
  homeserverUrl: string;
  userId: string;
  deviceId: string;
  accessToken: string;
}

const SESSION_KEY = 'oracle-calls/session';
const SYNC_TIMEOUT_MS = 30_000;
const BOT_JOIN_TIMEOUT_MS = 15_000;
const SEND_ATTEMPTS = 5;

/** The homeserver's base URL: `https://`, or `http://` on loopback only (`insecureUrl`). */
function homeserverBase(url: string): string {
  requireSecureUrl(url);
  return url.replace(/\/+$/, '');
}

/** The IndexedDB prefix of one device's crypto store (one account per store, matrix-js-sdk#3974). */
export function cryptoStorePrefix(userId: string, deviceId: string): string {
  return `oracle-calls:${userId}:${deviceId}`;
}

function readSession(storage: Storage, homeserverUrl: string | null): SavedSession | null {
  let raw: string | null;
  try {
    raw = storage.getItem(SESSION_KEY);
  } catch {
    return null;
  }
  if (raw === null) {
    return null;
  }
  try {
    const s = JSON.parse(raw) as Partial<SavedSession>;
    if (
      s.v === 1 &&
      typeof s.homeserverUrl === 'string' &&
      typeof s.userId === 'string' &&
      typeof s.deviceId === 'string' &&
      typeof s.accessToken === 'string' &&
      (homeserverUrl === null || s.homeserverUrl === homeserverUrl)
    ) {
      return s as SavedSession;
    }
  } catch {
    // A corrupt entry is no session.
  }
  return null;
}

/** The user id of the session saved in `storage`, if any (for a "restore" button). */
export function savedSessionUser(storage: Storage): string | null {
  return readSession(storage, null)?.userId ?? null;
}

/** The subset of MatrixClient the plaintext guard reads (so tests can exercise it). */
export interface GuardClient {
  getRoom(roomId: string): { hasEncryptionStateEvent(): boolean } | null;
  getCrypto(): { isEncryptionEnabledInRoom(roomId: string): Promise<boolean> } | undefined;
}

/**
 * THE PLAINTEXT GUARD. matrix-js-sdk sends in the clear when it does not know the room
 * (`encryptEventIfNeeded` returns early) or does not know it is encrypted; so nothing is
 * sent unless the room is known, has its `m.room.encryption` state, and the crypto layer
 * agrees it is encrypted.
 */
export async function assertEncryptedRoom(mx: GuardClient, roomId: string): Promise<void> {
  const room = mx.getRoom(roomId);
  if (room === null) {
    throw new OracleCallError('plaintextRoom', `the room ${roomId} is not known to this client yet; nothing was sent`);
  }
  if (!room.hasEncryptionStateEvent()) {
    throw new OracleCallError('plaintextRoom', `the room ${roomId} has no m.room.encryption state; nothing was sent`);
  }
  const crypto = mx.getCrypto();
  if (crypto === undefined) {
    throw new OracleCallError('plaintextRoom', 'this Matrix client has no end-to-end encryption; nothing was sent');
  }
  let enabled: boolean;
  try {
    enabled = await crypto.isEncryptionEnabledInRoom(roomId);
  } catch (e) {
    throw asOracleCallError(e, 'plaintextRoom', "checking the room's encryption");
  }
  if (!enabled) {
    throw new OracleCallError('plaintextRoom', `the crypto layer does not consider ${roomId} encrypted; nothing was sent`);
  }
}

function matrixError(what: string, e: unknown): OracleCallError {
  return asOracleCallError(e, 'matrix', what);
}

function sleep(ms: number): Promise<void> {
  return new Promise((r) => setTimeout(r, ms));
}

function waitForSync(mx: MatrixClient, timeoutMs: number): Promise<void> {
  const ready = (s: SyncState | null): boolean => s === SyncState.Prepared || s === SyncState.Syncing;
  if (ready(mx.getSyncState())) {
    return Promise.resolve();
  }
  return new Promise((resolve, reject) => {
    const timer = setTimeout(() => {
      mx.off(ClientEvent.Sync, onSync);
      reject(new OracleCallError('matrix', `the first Matrix sync did not finish within ${timeoutMs} ms`));
    }, timeoutMs);
    const onSync = (state: SyncState, _prev: SyncState | null, data?: { error?: Error }): void => {
      if (ready(state)) {
        clearTimeout(timer);
        mx.off(ClientEvent.Sync, onSync);
        resolve();
      } else if (state === SyncState.Error && data?.error !== undefined) {
        const err = data.error as Error & { errcode?: string };
        if (err.errcode === 'M_UNKNOWN_TOKEN') {
          clearTimeout(timer);
          mx.off(ClientEvent.Sync, onSync);
          reject(
            new OracleCallError('matrix', 'the homeserver no longer accepts this session (M_UNKNOWN_TOKEN); sign in again', {
              details: { unknownToken: true },
            }),
          );
        }
      }
    };
    mx.on(ClientEvent.Sync, onSync);
  });
}

export interface LoginOptions {
  homeserverUrl: string;
  user: string;
  password: string;
  /** Where the page serves `matrix_sdk_crypto_wasm_bg.wasm` (as `application/wasm`). */
  wasmUrl: string | URL;
  storage?: Storage;
  deviceName?: string;
}

export interface RestoreOptions {
  homeserverUrl: string;
  wasmUrl: string | URL;
  storage?: Storage;
}

/** One Matrix device of the user, ready to place calls. */
export class MatrixDevice implements CallMatrix {
  readonly client: MatrixClient;
  readonly userId: string;
  readonly deviceId: string;
  /** Our own client (login/restore): we stop it and clear its store on logout. */
  readonly #owned: { storage: Storage; prefix: string } | null;
  #openId: { token: string; until: number } | null = null;
  #openIdPending: Promise<string> | null = null;
  /** Serializes room preparation (two calls at once must not create two DMs). */
  #roomLock: Promise<unknown> = Promise.resolve();

  private constructor(client: MatrixClient, owned: { storage: Storage; prefix: string } | null) {
    this.client = client;
    this.userId = client.getSafeUserId();
    this.deviceId = client.getDeviceId() ?? '';
    this.#owned = owned;
  }

  /** Logs in with a password once, saves the session, starts the device (crypto + sync). */
  static async login(o: LoginOptions): Promise<MatrixDevice> {
    const baseUrl = homeserverBase(o.homeserverUrl);
    const storage = o.storage ?? globalThis.localStorage;
    await loadWasm(o.wasmUrl);
    let session: SavedSession;
    try {
      const tmp = createClient({ baseUrl });
      const r = await tmp.loginRequest({
        type: 'm.login.password',
        identifier: { type: 'm.id.user', user: o.user },
        password: o.password,
        initial_device_display_name: o.deviceName ?? 'oracle-calls (browser)',
      });
      session = { v: 1, homeserverUrl: baseUrl, userId: r.user_id, deviceId: r.device_id, accessToken: r.access_token };
    } catch (e) {
      throw matrixError('logging in', e);
    }
    try {
      storage.setItem(SESSION_KEY, JSON.stringify(session));
    } catch (e) {
      throw asOracleCallError(e, 'setup', 'saving the Matrix session');
    }
    return MatrixDevice.#start(session, storage);
  }

  /** The device saved by an earlier login in `storage` (no new login), or null if none. */
  static async restore(o: RestoreOptions): Promise<MatrixDevice | null> {
    const baseUrl = homeserverBase(o.homeserverUrl);
    const storage = o.storage ?? globalThis.localStorage;
    const session = readSession(storage, baseUrl);
    if (session === null) {
      return null;
    }
    await loadWasm(o.wasmUrl);
    return MatrixDevice.#start(session, storage);
  }

  /**
   * An application's own client. It must have end-to-end encryption (Rust crypto initialised)
   * and be syncing; both are checked.
   */
  static async fromClient(mx: MatrixClient): Promise<MatrixDevice> {
    if (mx.getUserId() === null) {
      throw new OracleCallError('setup', 'the Matrix client is not logged in');
    }
    if (mx.getCrypto() === undefined) {
      throw new OracleCallError('setup', 'the Matrix client has no end-to-end encryption (call initRustCrypto first)');
    }
    const state = mx.getSyncState();
    if (state !== SyncState.Prepared && state !== SyncState.Syncing) {
      throw new OracleCallError('setup', `the Matrix client is not syncing (sync state: ${state ?? 'not started'})`);
    }
    return new MatrixDevice(mx, null);
  }

  static async #start(s: SavedSession, storage: Storage): Promise<MatrixDevice> {
    const prefix = cryptoStorePrefix(s.userId, s.deviceId);
    const mx = createClient({
      baseUrl: s.homeserverUrl,
      accessToken: s.accessToken,
      userId: s.userId,
      deviceId: s.deviceId,
    });
    try {
      await mx.initRustCrypto({ cryptoDatabasePrefix: prefix });
    } catch (e) {
      throw matrixError('starting end-to-end encryption', e);
    }
    try {
      await mx.startClient({ initialSyncLimit: 1 });
    } catch (e) {
      throw matrixError('starting the Matrix client', e);
    }
    try {
      await waitForSync(mx, SYNC_TIMEOUT_MS);
    } catch (e) {
      mx.stopClient();
      if (e instanceof OracleCallError && e.details?.['unknownToken'] === true) {
        // The device is gone on the homeserver: forget it here too (session and crypto store).
        try {
          storage.removeItem(SESSION_KEY);
          await mx.clearStores({ cryptoDatabasePrefix: prefix });
        } catch {
          // best effort; the error below says what to do
        }
      }
      throw e;
    }
    return new MatrixDevice(mx, { storage, prefix });
  }

  async openIdToken(): Promise<string> {
    const cached = this.#openId;
    if (cached !== null && Date.now() < cached.until) {
      return cached.token;
    }
    if (this.#openIdPending === null) {
      this.#openIdPending = (async () => {
        try {
          const t = await this.client.getOpenIdToken();
          if (typeof t?.access_token !== 'string' || t.access_token.length === 0) {
            throw new OracleCallError('matrix', 'the homeserver answered an OpenID token without access_token');
          }
          const life = typeof t.expires_in === 'number' && t.expires_in > 0 ? t.expires_in : 0;
          // Reused until 60 s before it expires (PROTOCOL §8.1).
          this.#openId = { token: t.access_token, until: Date.now() + Math.max(0, life - 60) * 1000 };
          return t.access_token;
        } catch (e) {
          throw matrixError('getting an OpenID token', e);
        } finally {
          this.#openIdPending = null;
        }
      })();
    }
    return this.#openIdPending;
  }

  prepareRoom(bot: string, devices: readonly TrustedBotDevice[]): Promise<string> {
    const run = this.#roomLock.then(
      () => this.#prepareRoom(bot, devices),
      () => this.#prepareRoom(bot, devices),
    );
    this.#roomLock = run.catch(() => undefined);
    return run;
  }

  async #prepareRoom(bot: string, devices: readonly TrustedBotDevice[]): Promise<string> {
    let roomId = this.#findDm(bot);
    if (roomId === null) {
      roomId = await this.#createDm(bot);
      await this.#waitForJoin(roomId, bot);
    }
    await this.#trustBotDevices(roomId, bot, devices);
    return roomId;
  }

  /** A joined, encrypted room with the bot joined: m.direct first, then any 1:1 room. */
  #findDm(bot: string): string | null {
    const usable = (room: Room | null): room is Room =>
      room !== null &&
      room.getMyMembership() === KnownMembership.Join &&
      room.hasEncryptionStateEvent() &&
      room.getMember(bot)?.membership === KnownMembership.Join;
    const direct = this.client.getAccountData('m.direct' as never)?.getContent() as Record<string, unknown> | undefined;
    const listed = direct?.[bot];
    if (Array.isArray(listed)) {
      for (const id of listed) {
        if (typeof id === 'string' && usable(this.client.getRoom(id))) {
          return id;
        }
      }
    }
    for (const room of this.client.getRooms()) {
      if (usable(room) && room.getJoinedMemberCount() === 2) {
        return room.roomId;
      }
    }
    return null;
  }

  async #createDm(bot: string): Promise<string> {
    let roomId: string;
    try {
      const r = await this.client.createRoom({
        preset: Preset.TrustedPrivateChat,
        is_direct: true,
        invite: [bot],
        initial_state: [
          { type: 'm.room.encryption', state_key: '', content: { algorithm: 'm.megolm.v1.aes-sha2' } },
        ],
      });
      roomId = r.room_id;
    } catch (e) {
      throw matrixError("creating the encrypted DM with the oracle's bot", e);
    }
    // A real DM for other clients too (m.direct account data); best effort.
    try {
      const ev = this.client.getAccountData('m.direct' as never);
      const current = (ev?.getContent() ?? {}) as Record<string, unknown>;
      const list = Array.isArray(current[bot]) ? (current[bot] as unknown[]).filter((x) => typeof x === 'string') : [];
      await this.client.setAccountData('m.direct' as never, { ...current, [bot]: [...list, roomId] } as never);
    } catch {
      // The room works without it; the next call finds it by its members.
    }
    return roomId;
  }

  /** Waits until the room is in the store, encrypted, and the bot has joined it. */
  async #waitForJoin(roomId: string, bot: string): Promise<void> {
    const deadline = Date.now() + BOT_JOIN_TIMEOUT_MS;
    while (Date.now() < deadline) {
      const room = this.client.getRoom(roomId);
      if (room !== null && room.getMember(bot)?.membership === KnownMembership.Join) {
        return;
      }
      await sleep(100);
    }
    throw new OracleCallError('botAbsent', `the oracle's Matrix bot ${bot} did not join the room within ${BOT_JOIN_TIMEOUT_MS / 1000} s`);
  }

  /**
   * The pinned bot devices (id and Ed25519 key both match) are marked verified, every other
   * device of the bot account unverified, and the room sends room keys only to verified
   * devices: a device the homeserver adds to the bot gets nothing (PROTOCOL §9.1).
   */
  async #trustBotDevices(roomId: string, bot: string, pinned: readonly TrustedBotDevice[]): Promise<void> {
    const crypto = this.client.getCrypto();
    if (crypto === undefined) {
      throw new OracleCallError('plaintextRoom', 'this Matrix client has no end-to-end encryption; nothing was sent');
    }
    const room = this.client.getRoom(roomId);
    if (room === null) {
      throw new OracleCallError('plaintextRoom', `the room ${roomId} is not known to this client yet; nothing was sent`);
    }
    room.setBlacklistUnverifiedDevices(true);
    const isPinned = (deviceId: string, ed25519: string | undefined): boolean =>
      pinned.some((p) => p.deviceId === deviceId && ed25519 !== undefined && p.ed25519 === ed25519);
    let trusted = 0;
    try {
      let map = await crypto.getUserDeviceInfo([bot], true);
      let list = [...(map.get(bot)?.values() ?? [])];
      if (!list.some((d) => isPinned(d.deviceId, d.getFingerprint()))) {
        // The bot may have a new device since our last /keys/query: ask the homeserver again.
        await this.client.downloadKeysForUsers?.([bot]).catch(() => undefined);
        map = await crypto.getUserDeviceInfo([bot], true);
        list = [...(map.get(bot)?.values() ?? [])];
      }
      for (const d of list) {
        const status = await crypto.getDeviceVerificationStatus(bot, d.deviceId);
        const locallyVerified = status?.localVerified ?? false;
        if (isPinned(d.deviceId, d.getFingerprint())) {
          trusted += 1;
          if (!locallyVerified) {
            await crypto.setDeviceVerified(bot, d.deviceId, true);
          }
        } else if (locallyVerified) {
          await crypto.setDeviceVerified(bot, d.deviceId, false);
        }
      }
    } catch (e) {
      throw matrixError("checking the oracle bot's devices", e);
    }
    if (trusted === 0) {
      throw new OracleCallError(
        'botDeviceUnknown',
        `${bot} has none of its pinned devices (${pinned.map((p) => p.deviceId).join(', ')}) on the homeserver`,
      );
    }
  }

  async createUnencryptedRoomForTest(bot: string): Promise<string> {
    let roomId: string;
    try {
      const r = await this.client.createRoom({ preset: Preset.PrivateChat, invite: [bot] });
      roomId = r.room_id;
    } catch (e) {
      throw matrixError('creating an unencrypted test room', e);
    }
    const deadline = Date.now() + BOT_JOIN_TIMEOUT_MS;
    while (this.client.getRoom(roomId) === null && Date.now() < deadline) {
      await sleep(100);
    }
    return roomId;
  }

  /**
   * Sends one event with one transaction id: a retry (bounded, backing off) resends the same
   * local event, so the homeserver never stores it twice. Guarded against plaintext.
   */
  async send(roomId: string, type: string, content: object): Promise<string> {
    await assertEncryptedRoom(this.client, roomId);
    const txnId = `oc-${crypto.randomUUID()}`;
    let delay = 200;
    let last: unknown = null;
    for (let attempt = 1; attempt <= SEND_ATTEMPTS; attempt++) {
      try {
        if (attempt === 1) {
          const r = await this.client.sendEvent(roomId, type as never, content as never, txnId);
          return r.event_id;
        }
        const room = this.client.getRoom(roomId);
        const local = room === null ? null : localEcho(room, txnId);
        if (room === null || local === null) {
          break;
        }
        // The guard again: the room must still be encrypted for the resend.
        await assertEncryptedRoom(this.client, roomId);
        const r = await this.client.resendEvent(local, room);
        return r.event_id;
      } catch (e) {
        if (e instanceof OracleCallError) {
          throw e;
        }
        last = e;
        if (attempt < SEND_ATTEMPTS) {
          await sleep(delay);
          delay = Math.min(delay * 2, 3000);
        }
      }
    }
    // Give up: drop the unsent local echo so it does not block later sends.
    const room = this.client.getRoom(roomId);
    const local = room === null ? null : localEcho(room, txnId);
    if (local !== null && local.status === EventStatus.NOT_SENT) {
      try {
        this.client.cancelPendingEvent(local);
      } catch {
        // already gone
      }
    }
    throw matrixError(`sending the ${type === CALL_EVENT_TYPE ? 'call event' : 'event'} failed ${SEND_ATTEMPTS} times`, last);
  }

  /**
   * Ends the device. For a device made by login/restore: logs out on the homeserver, stops the
   * client and deletes its crypto store and saved session. For an application's client: only
   * forgets it (the application owns that client).
   */
  async logout(): Promise<void> {
    this.#openId = null;
    if (this.#owned === null) {
      return;
    }
    const { storage, prefix } = this.#owned;
    try {
      storage.removeItem(SESSION_KEY);
    } catch {
      // nothing saved
    }
    try {
      await this.client.logout(true);
    } catch {
      // The token may already be gone; the local state is cleared anyway.
    }
    this.client.stopClient();
    try {
      await this.client.clearStores({ cryptoDatabasePrefix: prefix });
    } catch (e) {
      throw asOracleCallError(e, 'setup', 'deleting the crypto store');
    }
  }

  /** Stops syncing (the session stays saved for restore). */
  stop(): void {
    if (this.#owned !== null) {
      this.client.stopClient();
    }
  }
}

/** The local echo of the event sent under `txnId` (pending list or live timeline). */
function localEcho(room: Room, txnId: string): MatrixEvent | null {
  let pending: MatrixEvent[] = [];
  try {
    pending = room.getPendingEvents();
  } catch {
    // chronological ordering: local echoes live in the timeline
  }
  const all = [...pending, ...room.getLiveTimeline().getEvents()];
  return all.find((e) => e.getTxnId() === txnId) ?? null;
}

let wasmLoaded: Promise<void> | null = null;

/**
 * Loads the crypto wasm from an explicit URL before `initRustCrypto` (which would look for it
 * next to the bundle and fail). The first load wins; later calls share it.
 */
function loadWasm(url: string | URL): Promise<void> {
  if (wasmLoaded === null) {
    wasmLoaded = (async () => {
      try {
        await initAsync(url);
      } catch (e) {
        wasmLoaded = null;
        throw asOracleCallError(e, 'setup', 'loading the Matrix crypto wasm');
      }
    })();
  }
  return wasmLoaded;
}

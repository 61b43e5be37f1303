// One call to an oracle: the nine steps of crates/client (DESIGN §3, PROTOCOL §9) as a state
// machine whose snapshot a page renders. Every dependency (the oracle's trust checks and key
// wrapping, the server, Matrix, LiveKit) comes in through small interfaces, so the unit tests
// drive it with fakes.

import { OracleCallError, asOracleCallError, type ErrorCode } from './errors.js';
import type { CallMatrix, TrustedBotDevice } from './matrix.js';
import type { CaptureOptions, KeyMaterial, MediaFactory, MediaSession } from './media.js';
import {
  CALL_EVENT_TYPE,
  buildCallContent,
  buildEndedEdit,
  callIdOf,
  mediaKeyMaterial,
  newCallKey,
  newRoomName,
  newSessionId,
  type CallContent,
  type CallContextFields,
  type CallType,
  type KeyDerivation,
} from './protocol.js';
import { SnapshotStore, initialSnapshot, isFinal, type CallSnapshot } from './state.js';

/** What the trust step verified about the oracle (what is pinned for it). */
export interface ResolvedOracleView {
  /** The key id the call key will be sealed to. */
  keyId: string;
  /** True when nothing was pinned for this oracle before this call. */
  pinnedOnFirstUse: boolean;
  /** The oracle's Matrix bot. */
  botUserId: string;
  /** The bot devices that may receive the call event. */
  botDevices: readonly TrustedBotDevice[];
}

/** Step 1 and 3: resolve + pin the oracle, wrap the call key (core.ts in the real client). */
export interface CallTrust<R extends ResolvedOracleView = ResolvedOracleView> {
  resolve(): Promise<R>;
  /** The envelope text for `encryptionKey` (claims a prekey when the oracle offers them). */
  wrap(resolved: R, callKey: Uint8Array, context: CallContextFields, openIdToken: () => Promise<string>): Promise<string>;
}

/** The server's answer to sync, as far as the call needs it. */
export interface SyncAnswer {
  livekitUrl: string;
  token: string;
}

/** The oracle-calls server, as far as a call needs it. */
/** A claimed LiveKit room (PROTOCOL §6.9), as far as the call needs it. */
export interface ClaimAnswer {
  livekitUrl: string;
  token: string;
  /** When the claim lapses if no sync took the room (Unix ms, the server's clock). */
  claimExpiresAtMs: number;
}

export interface CallServer {
  /**
   * Claims the call's LiveKit room for an early join (`POST /rooms/{roomId}/claim`); null
   * when the server offers none. Optional: without it the call joins after the sync.
   */
  claim?(roomName: string, openIdToken: string): Promise<ClaimAnswer | null>;
  sync(callId: string, openIdToken: string): Promise<SyncAnswer>;
  /** `update {callStatus: ended, reason}`; the reason that stuck, when the server says. */
  end(callId: string, openIdToken: string, reason: string): Promise<string | null>;
  /** The server's end reason for `callId` when it lists the call as ended, else null. */
  endedReason(callId: string, sessionId: string, openIdToken: string): Promise<string | null>;
}

export interface CallDeps<R extends ResolvedOracleView = ResolvedOracleView> {
  trust: CallTrust<R>;
  server: CallServer;
  matrix: CallMatrix;
  media: MediaFactory;
  userDid: string;
  /** ms clock for the timeline (default `performance.now`). */
  now?: () => number;
}

/** Hooks for tests only: they break the call on purpose. Never use them in an application. */
export interface DangerousTestHooks {
  /** Key our media with another key than the one sealed to the oracle (no audio decrypts). */
  wrongMediaKey?: boolean;
  /**
   * Send the call event into a room that must make the plaintext guard refuse: `unknown` (a
   * room this client has not synced, where matrix-js-sdk would send in the clear) or
   * `unencrypted` (a new room with the bot without `m.room.encryption`).
   */
  plaintextRoom?: 'unknown' | 'unencrypted';
}

export interface CallOptions {
  oracleDid: string;
  type: CallType;
  sessionId?: string;
  /** How media keys come from the call key (PROTOCOL §5.1). Default `hkdf`. */
  keyDerivation?: KeyDerivation;
  capture?: CaptureOptions;
  /** Makes LiveKit's E2EE worker (one per call). */
  e2eeWorker?: () => Worker;
  /** Passed to the LiveKit peer connections (e.g. `{iceServers: []}` on loopback). */
  rtcConfig?: RTCConfiguration;
  /** Accept exactly this new key id of the oracle (after checking it out of band). */
  acceptOracleKey?: string;
  /** How long `ready` waits for the oracle's first decrypted audio after joining. Default 30 s. */
  readyTimeoutMs?: number;
  /**
   * Claim the call's LiveKit room and join it, keyed, while the event is sent and synced
   * (PROTOCOL §6.9), so that the join is off the setup's path. Default true. A claim or an
   * early join that fails is no error: the call joins with the sync's token instead.
   */
  earlyJoin?: boolean;
  dangerousTestHooks?: DangerousTestHooks;
}

const DEFAULT_READY_TIMEOUT_MS = 30_000;
/**
 * A room joined early is given up for the sync's token when its claim lapses less than this
 * after the sync answered: the server may sweep the claimed room (PROTOCOL §6.9).
 */
const CLAIM_MARGIN_MS = 2000;

/** Thrown inside the setup when `end()` was called meanwhile. */
class Aborted extends Error {}

/** A call in progress. Made by `OracleClient.callOracle`; it starts at once. */
export class Call {
  readonly #store: SnapshotStore;
  readonly #deps: CallDeps<ResolvedOracleView>;
  readonly #opts: CallOptions;
  readonly #keyDerivation: KeyDerivation;
  /** Resolves when the oracle's first decrypted audio arrived; rejects when the call fails or ends first. */
  readonly ready: Promise<void>;
  #readyResolve!: () => void;
  #readyReject!: (e: OracleCallError) => void;
  #readySettled = false;
  #readyTimer: ReturnType<typeof setTimeout> | null = null;
  #media: MediaSession | null = null;
  #matrixRoom: string | null = null;
  #content: CallContent | null = null;
  #eventId: string | null = null;
  #callId: string | null = null;
  #sessionId: string;
  #endRequested = false;
  #endPromise: Promise<void> | null = null;
  #closing = false;
  /** Our tracks are published (the `join` step is done). */
  #joined = false;
  /** The oracle's first decrypted audio came before our tracks were published. */
  #heardEarly = false;
  /** The early join under way or done: when its claim lapses, or null when it failed. */
  #early: Promise<{ claimExpiresAtMs: number } | null> | null = null;
  /** We are in the room joined early, and it is not the call's room yet. */
  #inEarlyRoom = false;
  /** The room joined early closed before it became the call's room. */
  #earlyLost = false;
  readonly #setup: Promise<void>;
  #pendingAttach: { audio: HTMLAudioElement; video: HTMLVideoElement | undefined } | null = null;

  constructor(deps: CallDeps<ResolvedOracleView>, opts: CallOptions) {
    this.#deps = deps;
    this.#opts = opts;
    this.#keyDerivation = opts.keyDerivation ?? 'hkdf';
    this.#sessionId = opts.sessionId ?? newSessionId();
    this.#store = new SnapshotStore(initialSnapshot(opts.oracleDid), deps.now);
    this.ready = new Promise<void>((resolve, reject) => {
      this.#readyResolve = resolve;
      this.#readyReject = reject;
    });
    // Handled here so an application that never awaits `ready` sees no unhandled rejection.
    this.ready.catch(() => undefined);
    this.#setup = this.#run();
  }

  getSnapshot = (): CallSnapshot => this.#store.get();

  subscribe = (listener: () => void): (() => void) => this.#store.subscribe(listener);

  /** The call id (`<eventId>@<roomName>`) once the event was sent. */
  get callId(): string | null {
    return this.#callId;
  }

  /** The application session this call belongs to. */
  get sessionId(): string {
    return this.#sessionId;
  }

  // ------------------------------------------------------------------------------------------
  // setup: the nine steps

  #checkpoint(): void {
    if (this.#endRequested) {
      throw new Aborted();
    }
  }

  async #run(): Promise<void> {
    const store = this.#store;
    const deps = this.#deps;
    const opts = this.#opts;
    let callKey: Uint8Array | null = null;
    try {
      store.setPhase('resolving');
      // The media session first: a browser without frame encryption fails before anything is sent.
      this.#media = deps.media({
        events: this.#mediaEvents(),
        ...(opts.e2eeWorker === undefined ? {} : { e2eeWorker: opts.e2eeWorker }),
        ...(opts.rtcConfig === undefined ? {} : { rtcConfig: opts.rtcConfig }),
      });
      if (this.#pendingAttach !== null) {
        this.#media.attach(this.#pendingAttach.audio, this.#pendingAttach.video);
      }

      // 1. Resolve the oracle the application chose; its key, bot and devices are pinned.
      const resolved = await deps.trust.resolve();
      this.#checkpoint();
      store.update((s) => ({
        ...s,
        oracle: { ...s.oracle, keyId: resolved.keyId, pinnedOnFirstUse: resolved.pinnedOnFirstUse },
      }));
      store.mark('resolve');

      // 2-3. A fresh call key, wrapped to the oracle and bound to this call.
      store.setPhase('wrapping');
      const context: CallContextFields = {
        sessionId: this.#sessionId,
        roomId: newRoomName(),
        userDid: deps.userDid,
        oracleDid: opts.oracleDid,
        callType: opts.type,
      };
      callKey = newCallKey();
      const encryptionKey = await deps.trust.wrap(resolved, callKey, context, () => deps.matrix.openIdToken());
      this.#checkpoint();
      let material: KeyMaterial = mediaKeyMaterial(callKey, this.#keyDerivation);
      if (opts.dangerousTestHooks?.wrongMediaKey === true) {
        material = wrongKey(material);
      }
      callKey.fill(0);
      callKey = null;
      try {
        await this.#media.setKey(material);
      } finally {
        if (typeof material !== 'string') {
          new Uint8Array(material).fill(0);
        }
      }
      this.#checkpoint();
      store.mark('wrap');
      if ((opts.earlyJoin ?? true) && deps.server.claim !== undefined) {
        // In the background: the event is sent and synced meanwhile.
        this.#early = this.#joinEarly(context.roomId);
      }

      // 4. The encrypted DM with the bot (joined, only pinned devices get the room key).
      store.setPhase('room');
      let roomId = await deps.matrix.prepareRoom(resolved.botUserId, resolved.botDevices);
      const plain = opts.dangerousTestHooks?.plaintextRoom;
      if (plain === 'unknown') {
        roomId = `!not-synced-${newRoomName()}:${deps.matrix.userId.split(':').slice(1).join(':')}`;
      } else if (plain === 'unencrypted') {
        if (deps.matrix.createUnencryptedRoomForTest === undefined) {
          throw new OracleCallError('setup', 'this Matrix side cannot make an unencrypted test room');
        }
        roomId = await deps.matrix.createUnencryptedRoomForTest(resolved.botUserId);
      }
      this.#matrixRoom = roomId;
      this.#checkpoint();
      store.mark('room');

      // 5. The event (guarded against plaintext inside `send`), then the call id.
      store.setPhase('sending');
      const content = buildCallContent({ ...context, encryptionKey, keyDerivation: this.#keyDerivation });
      this.#content = content;
      const eventId = await deps.matrix.send(roomId, CALL_EVENT_TYPE, content);
      this.#eventId = eventId;
      this.#callId = callIdOf(eventId, context.roomId);
      store.update((s) => ({
        ...s,
        callId: this.#callId,
        callStatus: 'pending',
        encryption: { ...s.encryption, matrixEvent: true },
      }));
      store.mark('send');
    } catch (e) {
      if (callKey !== null) {
        callKey.fill(0);
      }
      if (e instanceof Aborted) {
        await this.#closeUnsent();
        return;
      }
      // Nothing was sent: leave the media room (never joined) and report.
      await this.#closeUnsent(toCallError(e, 'setup', 'placing the call'));
      return;
    }
    // From here on the event exists: a failure ends the call everywhere (and an end() asked
    // for meanwhile is carried out by end() itself once this returns).
    const callId = this.#callId;
    if (callId === null || this.#endRequested) {
      return;
    }
    let sync: SyncAnswer;
    try {
      store.setPhase('syncing');
      const token = await deps.matrix.openIdToken();
      sync = await deps.server.sync(callId, token);
      store.update((s) => ({ ...s, callStatus: 'active' }));
      store.mark('sync');
    } catch (e) {
      const err = toCallError(e, 'server', 'syncing the call');
      // The server did not take the call: the Matrix record says ended (PROTOCOL §10).
      await this.#editEnded();
      await this.#leaveMedia();
      this.#fail(err, null);
      return;
    }
    if (this.#endRequested) {
      return;
    }
    try {
      store.setPhase('joining');
      const media = this.#media;
      if (media === null) {
        throw new OracleCallError('media', 'the media session is gone');
      }
      const early = await this.#joinedEarly(media);
      if (this.#endRequested) {
        return;
      }
      if (!early) {
        await media.connect(sync.livekitUrl, sync.token);
        await media.publish(opts.type, opts.capture);
      }
      store.update((s) => ({ ...s, mediaJoin: early ? 'early' : 'afterSync' }));
      store.mark('join');
      this.#joined = true;
      if (this.#heardEarly) {
        // The oracle was heard while our camera was still being published.
        this.#becomeActive();
      } else {
        store.setPhase('waitingForOracle');
        this.#armReadyTimeout();
      }
    } catch (e) {
      if (this.#endRequested) {
        return;
      }
      const err = toCallError(e, 'media', 'joining the media room');
      await this.#leaveMedia();
      const reason = await this.#serverEndReason();
      if (reason !== null) {
        // The call was ended elsewhere before the media connected (e.g. keyDecryptionFailed).
        await this.#editEnded();
        this.#fail(new OracleCallError('callEnded', `the call ended before it connected: ${reason}`, { reason }), reason);
        return;
      }
      await this.#reportEnd('mediaFailed');
      await this.#editEnded();
      this.#fail(err, 'mediaFailed');
    }
  }

  /**
   * Claims `roomName` and joins it with the claim's token, keyed, and publishes: the early
   * join. Null when the server offers none or any of it failed (the room, if joined, is left
   * again, so the sync's token starts clean).
   */
  async #joinEarly(roomName: string): Promise<{ claimExpiresAtMs: number } | null> {
    const media = this.#media;
    if (media === null) {
      return null;
    }
    let connecting = false;
    try {
      const token = await this.#deps.matrix.openIdToken();
      const claim = (await this.#deps.server.claim?.(roomName, token)) ?? null;
      if (claim === null || this.#endRequested) {
        return null;
      }
      connecting = true;
      await media.connect(claim.livekitUrl, claim.token);
      this.#inEarlyRoom = true;
      await media.publish(this.#opts.type, this.#opts.capture);
      return { claimExpiresAtMs: claim.claimExpiresAtMs };
    } catch {
      this.#inEarlyRoom = false;
      if (connecting) {
        await media.leaveRoom().catch(() => undefined);
      }
      return null;
    }
  }

  /**
   * After the sync: whether the room joined early can be kept. It cannot when the early join
   * failed, when its room closed meanwhile, or when its claim lapses within
   * {@link CLAIM_MARGIN_MS} (then it is left, and the caller joins with the sync's token).
   */
  async #joinedEarly(media: MediaSession): Promise<boolean> {
    if (this.#early === null) {
      return false;
    }
    const early = await this.#early;
    if (early === null) {
      return false;
    }
    const keep = !this.#earlyLost && Date.now() + CLAIM_MARGIN_MS < early.claimExpiresAtMs;
    // From here a close of the room is the call's own end (kept) or ours (left).
    this.#inEarlyRoom = false;
    if (!keep) {
      await media.leaveRoom();
    }
    return keep;
  }

  #becomeActive(): void {
    if (this.#closing || this.#endRequested) {
      return;
    }
    this.#store.setPhase('active');
    this.#settleReady(null);
  }

  #armReadyTimeout(): void {
    const ms = this.#opts.readyTimeoutMs ?? DEFAULT_READY_TIMEOUT_MS;
    this.#readyTimer = setTimeout(() => {
      if (this.#readySettled || this.#closing) {
        return;
      }
      const s = this.#store.get();
      const why = s.oracle.joined
        ? `the oracle joined but none of its audio decrypted within ${ms / 1000} s (${s.decryptionFailures} decryption failures)`
        : `the oracle's agent did not join within ${ms / 1000} s`;
      void this.#endWith(new OracleCallError('media', why), 'mediaFailed');
    }, ms);
  }

  // ------------------------------------------------------------------------------------------
  // media events

  #mediaEvents() {
    const store = this.#store;
    return {
      oracleJoined: (_identity: string): void => {
        store.update((s) => ({ ...s, oracle: { ...s.oracle, joined: true } }));
        store.mark('agentJoined');
      },
      oracleLeft: (_identity: string): void => {
        store.update((s) => ({ ...s, oracle: { ...s.oracle, joined: false } }));
      },
      unexpectedParticipant: (_identity: string): void => {
        // Never taken for the oracle; without the call key it hears and sees nothing.
      },
      oracleTrack: (_kind: 'audio' | 'video', encrypted: boolean): void => {
        store.update((s) => ({
          ...s,
          refusedTracks: s.refusedTracks + (encrypted ? 0 : 1),
          encryption: {
            ...s.encryption,
            oracleMedia: encrypted ? (s.encryption.oracleMedia ?? true) : false,
          },
          error: encrypted
            ? s.error
            : { code: 'media' as ErrorCode, message: 'the oracle sent a track that is not end-to-end encrypted; refused' },
        }));
      },
      decryptionFailure: (_identity: string | null, _message: string): void => {
        store.update((s) => ({ ...s, decryptionFailures: s.decryptionFailures + 1 }));
      },
      localEncryption: (enabled: boolean): void => {
        store.update((s) =>
          s.encryption.localMedia === enabled ? s : { ...s, encryption: { ...s.encryption, localMedia: enabled } },
        );
      },
      firstAudio: (): void => {
        if (this.#closing || this.#endRequested) {
          return;
        }
        store.mark('firstAudio');
        if (this.#joined) {
          this.#becomeActive();
        } else {
          // Active (and ready) once our own tracks are published too.
          this.#heardEarly = true;
        }
      },
      levels: (mic: number, oracle: number): void => {
        store.update((s) => {
          const m = round2(mic);
          const o = round2(oracle);
          return s.mic.level === m && s.oracle.level === o
            ? s
            : { ...s, mic: { ...s.mic, level: m }, oracle: { ...s.oracle, level: o } };
        });
      },
      playbackBlocked: (blocked: boolean): void => {
        store.update((s) => (s.audioBlocked === blocked ? s : { ...s, audioBlocked: blocked }));
      },
      disconnected: (reason: string): void => {
        if (this.#inEarlyRoom) {
          // The room joined early closed before it became the call's room: the sync's
          // token joins it again (or the sync fails and the call ends there).
          this.#inEarlyRoom = false;
          this.#earlyLost = true;
          return;
        }
        if (!this.#closing && !this.#endRequested) {
          void this.#remoteEnd(reason);
        }
      },
    };
  }

  /** The media room closed without us: the call ended elsewhere; take the server's reason. */
  async #remoteEnd(livekitReason: string): Promise<void> {
    if (this.#closing) {
      return;
    }
    this.#closing = true;
    this.#store.setPhase('ending');
    await this.#leaveMedia();
    const reason = (await this.#serverEndReason()) ?? `roomClosed (${livekitReason})`;
    this.#clearReadyTimer();
    if (!this.#readySettled) {
      const err = new OracleCallError('callEnded', `the call ended before the oracle was heard: ${reason}`, { reason });
      this.#fail(err, reason);
      return;
    }
    this.#store.update((s) => ({ ...silenced(s), phase: 'ended', callStatus: 'ended', endReason: reason }));
  }

  // ------------------------------------------------------------------------------------------
  // ending

  /**
   * Hangs up (PROTOCOL §10): tells the server (`userHangup`), leaves LiveKit, edits the call
   * event to `ended`. Idempotent: later calls return the first one's promise. During setup it
   * stops the setup at its next step; nothing is sent that was not sent already.
   */
  end(): Promise<void> {
    if (this.#endPromise === null) {
      this.#endPromise = this.#end();
    }
    return this.#endPromise;
  }

  async #end(): Promise<void> {
    this.#endRequested = true;
    const before = this.#store.get();
    if (isFinal(before.phase)) {
      return;
    }
    await this.#setup;
    if (isFinal(this.#store.get().phase) || this.#closing) {
      return;
    }
    await this.#endWith(null, 'userHangup');
  }

  /** Ends an established (event sent) call everywhere with `reason`; `err` marks it failed. */
  async #endWith(err: OracleCallError | null, reason: string): Promise<void> {
    if (this.#closing) {
      return;
    }
    this.#closing = true;
    this.#clearReadyTimer();
    this.#store.setPhase('ending');
    // The server first: leaving first would let LiveKit's webhook end it as participantLeft.
    const stuck = await this.#reportEnd(reason);
    await this.#leaveMedia();
    await this.#editEnded();
    const finalReason = stuck ?? reason;
    if (err !== null) {
      this.#fail(err, finalReason);
      return;
    }
    this.#store.update((s) => ({ ...silenced(s), phase: 'ended', callStatus: 'ended', endReason: finalReason }));
    this.#settleReady(new OracleCallError('callEnded', `the call ended before the oracle was heard: ${finalReason}`, { reason: finalReason }));
  }

  /** Setup stopped before the event was sent (end() or a failure): nothing to tell anyone. */
  async #closeUnsent(err?: OracleCallError): Promise<void> {
    this.#closing = true;
    await this.#leaveMedia();
    if (err !== undefined) {
      this.#fail(err, null);
      return;
    }
    this.#store.update((s) => ({ ...silenced(s), phase: 'ended', endReason: 'userHangup' }));
    this.#settleReady(new OracleCallError('callEnded', 'the call was hung up before it connected', { reason: 'userHangup' }));
  }

  #fail(err: OracleCallError, reason: string | null): void {
    this.#closing = true;
    this.#clearReadyTimer();
    this.#store.update((s) => ({
      ...silenced(s),
      phase: 'failed',
      callStatus: s.callStatus === null ? null : 'ended',
      endReason: reason ?? s.endReason,
      error: { code: err.code, message: err.message, ...(err.details === undefined ? {} : { details: err.details }) },
    }));
    this.#settleReady(err);
  }

  #settleReady(err: OracleCallError | null): void {
    if (this.#readySettled) {
      return;
    }
    this.#readySettled = true;
    this.#clearReadyTimer();
    if (err === null) {
      this.#readyResolve();
    } else {
      this.#readyReject(err);
    }
  }

  #clearReadyTimer(): void {
    if (this.#readyTimer !== null) {
      clearTimeout(this.#readyTimer);
      this.#readyTimer = null;
    }
  }

  async #leaveMedia(): Promise<void> {
    const m = this.#media;
    if (m !== null) {
      try {
        await m.leave();
      } catch {
        // best effort
      }
    }
  }

  /** `update ended` at the server; the reason that stuck, or null when it could not be told. */
  async #reportEnd(reason: string): Promise<string | null> {
    const callId = this.#callId;
    if (callId === null) {
      return null;
    }
    try {
      const token = await this.#deps.matrix.openIdToken();
      return await this.#deps.server.end(callId, token, reason);
    } catch {
      // The Matrix edit below still ends it (as userHangup) if the server missed this.
      return null;
    }
  }

  /** The `m.replace` edit to `ended` (guarded like the event; best effort). */
  async #editEnded(): Promise<void> {
    const room = this.#matrixRoom;
    const content = this.#content;
    const eventId = this.#eventId;
    if (room === null || content === null || eventId === null) {
      return;
    }
    try {
      await this.#deps.matrix.send(room, CALL_EVENT_TYPE, buildEndedEdit(content, eventId));
    } catch {
      // The server's own edit, or its store, still records the end.
    }
  }

  async #serverEndReason(): Promise<string | null> {
    const callId = this.#callId;
    if (callId === null) {
      return null;
    }
    try {
      const token = await this.#deps.matrix.openIdToken();
      return await this.#deps.server.endedReason(callId, this.#sessionId, token);
    } catch {
      return null;
    }
  }

  // ------------------------------------------------------------------------------------------
  // controls

  /** Mutes or unmutes our microphone. */
  async setMicrophoneEnabled(on: boolean): Promise<void> {
    const m = this.#media;
    if (m === null || this.#closing) {
      return;
    }
    await m.setMicrophoneEnabled(on);
    this.#store.update((s) => ({ ...s, mic: { ...s.mic, muted: !on } }));
  }

  /** Starts audio after the browser blocked autoplay (`audioBlocked`); call it from a click. */
  async startAudio(): Promise<void> {
    await this.#media?.startAudio();
  }

  /**
   * Plays the oracle's audio (and video) in these elements. Only tracks that are end-to-end
   * encrypted are ever attached; may be called before the oracle's tracks arrive.
   */
  attachOracleMedia(audioEl: HTMLAudioElement, videoEl?: HTMLVideoElement): void {
    this.#pendingAttach = { audio: audioEl, video: videoEl };
    this.#media?.attach(audioEl, videoEl);
  }

  /** The latest decoded oracle audio (about 0.68 s at 48 kHz), for analysis; null before any. */
  oracleAudio(): { samples: Float32Array; sampleRate: number } | null {
    return this.#media?.oracleAudio() ?? null;
  }
}

/** A final snapshot shows no levels (nothing is heard any more). */
function silenced(s: CallSnapshot): CallSnapshot {
  return { ...s, mic: { ...s.mic, level: 0 }, oracle: { ...s.oracle, level: 0 } };
}

function round2(x: number): number {
  return Math.round(Math.min(1, Math.max(0, x)) * 100) / 100;
}

/** A key that is not the call key (test hook): every media frame fails to decrypt. */
function wrongKey(material: KeyMaterial): KeyMaterial {
  if (typeof material === 'string') {
    const first = material[0] === '0' ? '1' : '0';
    return first + material.slice(1);
  }
  const b = new Uint8Array(material);
  b[0] = (b[0] ?? 0) ^ 0xff;
  return material;
}

function toCallError(e: unknown, code: ErrorCode, what: string): OracleCallError {
  return asOracleCallError(e, code, what);
}

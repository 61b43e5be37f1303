// The call's observable state: one immutable snapshot object, replaced on every change, with
// subscribe/getSnapshot (the shape React's useSyncExternalStore expects).

import type { ErrorCode } from './errors.js';

/** Where a call is. `failed` and `ended` are final. */
export type CallPhase =
  | 'idle'
  | 'resolving'
  | 'wrapping'
  | 'room'
  | 'sending'
  | 'syncing'
  | 'joining'
  | 'waitingForOracle'
  | 'active'
  | 'ending'
  | 'ended'
  | 'failed';

/** A step of placing a call: the names of the Rust client's `Phase` (crates/client/src/call.rs). */
export type TimelinePhase =
  | 'resolve'
  | 'wrap'
  | 'room'
  | 'send'
  | 'sync'
  | 'join'
  | 'agentJoined'
  | 'firstAudio';

/** The call's status as the server and Matrix see it (PROTOCOL §2). */
export type CallStatus = 'pending' | 'active' | 'ended';

/** What a person's page can show about one call. Never holds the call key. */
export interface CallSnapshot {
  readonly phase: CallPhase;
  readonly callStatus: CallStatus | null;
  readonly callId: string | null;
  /** When each step finished, in ms since `callOracle()`, in the order reached. */
  readonly timeline: ReadonlyArray<{ readonly phase: TimelinePhase; readonly ms: number }>;
  readonly encryption: {
    /** The call event went into a room known to be encrypted (the plaintext guard passed). */
    readonly matrixEvent: boolean;
    /** Our own published tracks are end-to-end encrypted (LiveKit's worker confirmed it). */
    readonly localMedia: boolean;
    /** Every track of the oracle we subscribed to is encrypted; `null` before the first one. */
    readonly oracleMedia: boolean | null;
  };
  readonly oracle: {
    readonly did: string;
    /** The key id the call key is sealed to (32 hex), once resolved. */
    readonly keyId: string | null;
    /** True when this call pinned the oracle for the first time (nothing verified before). */
    readonly pinnedOnFirstUse: boolean;
    readonly joined: boolean;
    /** RMS level of the oracle's decoded audio, 0..1. */
    readonly level: number;
  };
  readonly mic: { readonly level: number; readonly muted: boolean };
  /** The browser blocks audio playback until the person clicks (then call `call.startAudio()`). */
  readonly audioBlocked: boolean;
  /** Oracle frames that failed to decrypt (never played). */
  readonly decryptionFailures: number;
  /** Oracle tracks refused because they were not end-to-end encrypted (never attached). */
  readonly refusedTracks: number;
  /**
   * How our media joined the call's LiveKit room (PROTOCOL §6.9): `early` with the room's
   * claim while the event was sent and synced, `afterSync` with the sync's token (the server
   * offers no early join, the claim or the early join failed, or the claim was about to
   * lapse); `null` before the join.
   */
  readonly mediaJoin: 'early' | 'afterSync' | null;
  /** Why the call ended (`userHangup`, `mediaFailed`, the server's reason, …). */
  readonly endReason: string | null;
  /** Why the call failed; `details` as the error's (e.g. `pinned` / `offered` key ids). */
  readonly error: {
    readonly code: ErrorCode;
    readonly message: string;
    readonly details?: Readonly<Record<string, unknown>>;
  } | null;
}

export function initialSnapshot(oracleDid: string): CallSnapshot {
  return {
    phase: 'idle',
    callStatus: null,
    callId: null,
    timeline: [],
    encryption: { matrixEvent: false, localMedia: false, oracleMedia: null },
    oracle: { did: oracleDid, keyId: null, pinnedOnFirstUse: false, joined: false, level: 0 },
    mic: { level: 0, muted: false },
    audioBlocked: false,
    decryptionFailures: 0,
    refusedTracks: 0,
    mediaJoin: null,
    endReason: null,
    error: null,
  };
}

/** True for the phases a call never leaves. */
export function isFinal(phase: CallPhase): boolean {
  return phase === 'ended' || phase === 'failed';
}

/**
 * Holds the current snapshot and tells subscribers when it is replaced. A listener that throws
 * does not stop the others.
 */
export class SnapshotStore {
  #snapshot: CallSnapshot;
  readonly #listeners = new Set<() => void>();
  readonly #started: number;
  readonly #now: () => number;

  constructor(initial: CallSnapshot, now: () => number = () => performance.now()) {
    this.#snapshot = initial;
    this.#now = now;
    this.#started = now();
  }

  get = (): CallSnapshot => this.#snapshot;

  subscribe = (listener: () => void): (() => void) => {
    this.#listeners.add(listener);
    return () => {
      this.#listeners.delete(listener);
    };
  };

  /** Replaces the snapshot with `change(current)`; nothing happens when it returns the same object. */
  update(change: (s: CallSnapshot) => CallSnapshot): void {
    const next = change(this.#snapshot);
    if (next === this.#snapshot) {
      return;
    }
    this.#snapshot = next;
    for (const l of [...this.#listeners]) {
      try {
        l();
      } catch (e) {
        // A subscriber's bug must not break the call or the other subscribers; the browser
        // still reports it (window "error" event, console).
        const report = (globalThis as { reportError?: (e: unknown) => void }).reportError;
        report?.(e);
      }
    }
  }

  /** Records that `phase` was reached now (once; later marks of the same phase are ignored). */
  mark(phase: TimelinePhase): void {
    const ms = Math.max(0, Math.round(this.#now() - this.#started));
    this.update((s) =>
      s.timeline.some((t) => t.phase === phase) ? s : { ...s, timeline: [...s.timeline, { phase, ms }] },
    );
  }

  /** Moves to `phase` unless the call already reached a final phase. */
  setPhase(phase: CallPhase): void {
    this.update((s) => (isFinal(s.phase) || s.phase === phase ? s : { ...s, phase }));
  }
}

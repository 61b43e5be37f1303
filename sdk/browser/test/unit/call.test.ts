// The call's state machine with a fake Matrix, server, trust step and media room: every step,
// what is sent and in which order, and how each failure ends the call (crates/client's rules).

import type { MatrixClient } from 'matrix-js-sdk';
import { describe, expect, it } from 'vitest';

import { encodeBase64url } from '../../src/base64.js';
import { Call, type CallDeps, type CallOptions, type ResolvedOracleView } from '../../src/call.js';
import { OracleCallError } from '../../src/errors.js';
import { MatrixDevice, assertEncryptedRoom, type CallMatrix, type TrustedBotDevice } from '../../src/matrix.js';
import type { KeyMaterial, MediaEvents, MediaOptions, MediaSession } from '../../src/media.js';
import type { CallContextFields } from '../../src/protocol.js';

const ORACLE = 'did:ixo:entity:oracle1';
const USER_DID = 'did:ixo:alice';
const KEY_ID = '0123456789abcdef0123456789abcdef';
const BOT = '@oracle-bot:localhost';
const DEVICES: TrustedBotDevice[] = [{ deviceId: 'BOTDEV', ed25519: 'ed25519keyinbase64' }];
const ENVELOPE = 'v1.hpke-p256.AAAA';

type Log = string[];

class Deferred<T = void> {
  promise: Promise<T>;
  resolve!: (v: T) => void;
  reject!: (e: unknown) => void;
  constructor() {
    this.promise = new Promise<T>((res, rej) => {
      this.resolve = res;
      this.reject = rej;
    });
  }
}

const tick = () => new Promise<void>((r) => setTimeout(r, 0));
async function until(cond: () => boolean, what: string, ms = 2000): Promise<void> {
  const end = Date.now() + ms;
  while (!cond()) {
    if (Date.now() > end) {
      throw new Error(`timed out waiting for ${what}`);
    }
    await new Promise((r) => setTimeout(r, 2));
  }
}

class FakeMatrix implements CallMatrix {
  readonly userId = '@did-ixo-alice:localhost';
  readonly deviceId = 'ALICEDEV';
  sent: { roomId: string; type: string; content: Record<string, unknown> }[] = [];
  prepared: { bot: string; devices: readonly TrustedBotDevice[] }[] = [];
  prepareGate: Deferred<void> | null = null;
  sendError: unknown = null;
  tokens = 0;
  constructor(private readonly log: Log) {}
  async prepareRoom(bot: string, devices: readonly TrustedBotDevice[]): Promise<string> {
    this.log.push('room');
    this.prepared.push({ bot, devices });
    if (this.prepareGate !== null) {
      await this.prepareGate.promise;
    }
    return '!dm:localhost';
  }
  async send(roomId: string, type: string, content: object): Promise<string> {
    const c = content as Record<string, unknown>;
    const isEdit = c['m.relates_to'] !== undefined;
    this.log.push(isEdit ? 'edit' : 'send');
    if (this.sendError !== null && !isEdit) {
      throw this.sendError;
    }
    this.sent.push({ roomId, type, content: JSON.parse(JSON.stringify(c)) as Record<string, unknown> });
    return isEdit ? `$edit${this.sent.length}` : '$ev1:localhost';
  }
  async openIdToken(): Promise<string> {
    this.tokens += 1;
    return 'openid-token';
  }
}

class FakeServer {
  syncs: { callId: string; token: string }[] = [];
  ends: { callId: string; reason: string }[] = [];
  syncError: unknown = null;
  endedReasonAnswer: string | null = null;
  stuckReason: string | null = null;
  constructor(private readonly log: Log) {}
  async sync(callId: string, token: string) {
    this.log.push('sync');
    this.syncs.push({ callId, token });
    if (this.syncError !== null) {
      throw this.syncError;
    }
    return { livekitUrl: 'ws://127.0.0.1:7880', token: 'lk-jwt' };
  }
  async end(callId: string, _token: string, reason: string): Promise<string | null> {
    this.log.push(`end:${reason}`);
    this.ends.push({ callId, reason });
    return this.stuckReason ?? reason;
  }
  async endedReason(): Promise<string | null> {
    return this.endedReasonAnswer;
  }
}

/** A server that offers the early join (PROTOCOL §6.9). */
class ClaimingServer extends FakeServer {
  claims: { roomName: string; token: string }[] = [];
  /** null: the early join is not offered (404); an Error: the claim is refused. */
  claimAnswer: { lifetimeMs: number } | null | Error = { lifetimeMs: 60_000 };
  syncGate: Deferred<void> | null = null;
  constructor(private readonly claimLog: Log) {
    super(claimLog);
  }
  async claim(roomName: string, token: string) {
    this.claimLog.push('claim');
    this.claims.push({ roomName, token });
    const a = this.claimAnswer;
    if (a instanceof Error) {
      throw a;
    }
    return a === null
      ? null
      : { livekitUrl: 'ws://127.0.0.1:7880', token: 'claim-jwt', claimExpiresAtMs: Date.now() + a.lifetimeMs };
  }
  override async sync(callId: string, token: string) {
    if (this.syncGate !== null) {
      await this.syncGate.promise;
    }
    return super.sync(callId, token);
  }
}

class FakeMedia implements MediaSession {
  events!: MediaEvents;
  material: KeyMaterial | null = null;
  materialSeen: string | number[] | null = null;
  connected: { url: string; token: string } | null = null;
  published: string | null = null;
  left = 0;
  connectError: unknown = null;
  micOn = true;
  constructor(private readonly log: Log) {}
  async setKey(material: KeyMaterial): Promise<void> {
    this.log.push('setKey');
    this.material = material;
    this.materialSeen = typeof material === 'string' ? material : [...new Uint8Array(material)];
  }
  connects: { url: string; token: string }[] = [];
  async connect(url: string, token: string): Promise<void> {
    this.log.push('connect');
    this.connects.push({ url, token });
    if (this.connectError !== null) {
      throw this.connectError;
    }
    this.connected = { url, token };
  }
  async leaveRoom(): Promise<void> {
    this.log.push('leaveRoom');
    this.connected = null;
  }
  publishGate: Deferred<void> | null = null;
  async publish(type: 'audio' | 'video'): Promise<void> {
    this.log.push(`publish:${type}`);
    if (this.publishGate !== null) {
      await this.publishGate.promise;
    }
    this.published = type;
  }
  async setMicrophoneEnabled(on: boolean): Promise<void> {
    this.micOn = on;
  }
  blocked = true;
  async startAudio(): Promise<void> {
    this.blocked = false;
    this.events.playbackBlocked(false);
  }
  attach(): void {}
  oracleAudio() {
    return null;
  }
  async leave(): Promise<void> {
    this.log.push('leave');
    this.left += 1;
  }
}

interface Rig {
  log: Log;
  matrix: FakeMatrix;
  server: FakeServer;
  media: FakeMedia;
  wrapped: { callKey: Uint8Array; copy: number[]; context: CallContextFields }[];
  deps: CallDeps;
  resolveError: unknown;
  mediaError: unknown;
}

function rig(): Rig {
  const log: Log = [];
  const r: Rig = {
    log,
    matrix: new FakeMatrix(log),
    server: new FakeServer(log),
    media: new FakeMedia(log),
    wrapped: [],
    resolveError: null,
    mediaError: null,
    deps: undefined as unknown as CallDeps,
  };
  r.deps = {
    userDid: USER_DID,
    matrix: r.matrix,
    server: r.server,
    media: (opts: MediaOptions) => {
      if (r.mediaError !== null) {
        throw r.mediaError;
      }
      r.media.events = opts.events;
      return r.media;
    },
    trust: {
      resolve: async (): Promise<ResolvedOracleView> => {
        log.push('resolve');
        if (r.resolveError !== null) {
          throw r.resolveError;
        }
        return { keyId: KEY_ID, pinnedOnFirstUse: true, botUserId: BOT, botDevices: DEVICES };
      },
      wrap: async (_resolved, callKey, context, token) => {
        log.push('wrap');
        expect(await token()).toBe('openid-token');
        r.wrapped.push({ callKey, copy: [...callKey], context });
        return ENVELOPE;
      },
    },
  };
  return r;
}

/** A rig whose server offers the early join. */
function claimingRig(): Rig & { server: ClaimingServer } {
  const r = rig();
  const server = new ClaimingServer(r.log);
  r.server = server;
  r.deps.server = server;
  return r as Rig & { server: ClaimingServer };
}

function place(r: Rig, opts: Partial<CallOptions> = {}): Call {
  return new Call(r.deps, { oracleDid: ORACLE, type: 'audio', readyTimeoutMs: 5000, ...opts });
}

async function joined(r: Rig, call: Call): Promise<void> {
  await until(() => call.getSnapshot().phase === 'waitingForOracle', 'waitingForOracle');
  expect(r.media.connected).toEqual({ url: 'ws://127.0.0.1:7880', token: 'lk-jwt' });
}

describe('a call, step by step', () => {
  it("resolves, wraps, sends into the DM, syncs, joins, and is ready on the oracle's first audio", async () => {
    const r = rig();
    const call = place(r);
    const phases: string[] = [];
    call.subscribe(() => {
      const p = call.getSnapshot().phase;
      if (phases.at(-1) !== p) phases.push(p);
    });
    await joined(r, call);
    expect(r.log).toEqual(['resolve', 'wrap', 'setKey', 'room', 'send', 'sync', 'connect', 'publish:audio']);
    expect(phases).toEqual(['resolving', 'wrapping', 'room', 'sending', 'syncing', 'joining', 'waitingForOracle']);

    // The event: PROTOCOL §2 content, pending, bound to the context the key was wrapped with.
    expect(r.matrix.prepared).toEqual([{ bot: BOT, devices: DEVICES }]);
    expect(r.matrix.sent).toHaveLength(1);
    const ev = r.matrix.sent[0]!;
    expect(ev.roomId).toBe('!dm:localhost');
    expect(ev.type).toBe('m.ixo.oracles_call');
    const ctx = r.wrapped[0]!.context;
    expect(ctx.roomId).toMatch(/^oc-[0-9a-f]{32}$/);
    expect(ctx.sessionId).toMatch(/^sess-[0-9a-f]{32}$/);
    expect(ev.content).toMatchObject({
      callType: 'audio',
      callStatus: 'pending',
      encryptionKey: ENVELOPE,
      sessionId: ctx.sessionId,
      roomId: ctx.roomId,
      userDid: USER_DID,
      oracleDid: ORACLE,
      keyDerivation: 'hkdf',
    });
    expect(ev.content['callId']).toBeUndefined();
    expect(ev.content['callStartedAt']).toMatch(/^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z$/);

    // callId = <eventId>@<room>, synced with the OpenID token.
    const callId = `$ev1:localhost@${ctx.roomId}`;
    expect(r.server.syncs).toEqual([{ callId, token: 'openid-token' }]);
    const s = call.getSnapshot();
    expect(s.callId).toBe(callId);
    expect(s.callStatus).toBe('active');
    expect(s.encryption.matrixEvent).toBe(true);
    expect(s.oracle).toMatchObject({ did: ORACLE, keyId: KEY_ID, pinnedOnFirstUse: true, joined: false });
    expect(s.timeline.map((t) => t.phase)).toEqual(['resolve', 'wrap', 'room', 'send', 'sync', 'join']);

    // The call key: 32 random bytes, zeroed once wrapped and handed to LiveKit (HKDF: raw bytes).
    const key = r.wrapped[0]!.callKey;
    expect(key).toHaveLength(32);
    expect([...key].every((b) => b === 0)).toBe(true);
    expect(Array.isArray(r.media.materialSeen) && r.media.materialSeen.length).toBe(32);
    expect(r.media.materialSeen).toEqual(r.wrapped[0]!.copy);
    expect(r.wrapped[0]!.copy.some((b) => b !== 0)).toBe(true);
    expect([...new Uint8Array(r.media.material as ArrayBuffer)].every((b) => b === 0)).toBe(true);

    // The oracle arrives; its audio decrypts.
    r.media.events.localEncryption(true);
    r.media.events.oracleJoined('agent-AJ_1');
    r.media.events.oracleTrack('audio', true);
    let ready = false;
    void call.ready.then(() => (ready = true));
    await tick();
    expect(ready).toBe(false);
    r.media.events.firstAudio();
    await call.ready;
    const a = call.getSnapshot();
    expect(a.phase).toBe('active');
    expect(a.oracle.joined).toBe(true);
    expect(a.encryption).toEqual({ matrixEvent: true, localMedia: true, oracleMedia: true });
    expect(a.timeline.map((t) => t.phase)).toEqual(['resolve', 'wrap', 'room', 'send', 'sync', 'join', 'agentJoined', 'firstAudio']);
    const ms = a.timeline.map((t) => t.ms);
    expect([...ms].sort((x, y) => x - y)).toEqual(ms);
    expect(a.error).toBeNull();
    await call.end();
  });

  it('pbkdf2 keys the media with the 64 lower-case hex characters and says so in the event', async () => {
    const r = rig();
    const call = place(r, { keyDerivation: 'pbkdf2' });
    await joined(r, call);
    expect(typeof r.media.material).toBe('string');
    const hex = r.wrapped[0]!.copy.map((b) => b.toString(16).padStart(2, '0')).join('');
    expect(r.media.material).toBe(hex);
    expect(r.matrix.sent[0]!.content['keyDerivation']).toBe('pbkdf2');
    await call.end();
  });

  it('the oracle heard while our camera is still being published: active (and ready) once published', async () => {
    const r = rig();
    r.media.publishGate = new Deferred();
    const call = place(r, { type: 'video', readyTimeoutMs: 30 });
    await until(() => r.log.includes('publish:video'), 'publish');
    r.media.events.oracleJoined('agent-1');
    r.media.events.firstAudio();
    let ready = false;
    void call.ready.then(() => (ready = true));
    await tick();
    expect(ready).toBe(false);
    expect(call.getSnapshot().phase).toBe('joining');
    r.media.publishGate.resolve();
    await call.ready;
    const s = call.getSnapshot();
    expect(s.phase).toBe('active');
    expect(s.timeline.map((t) => t.phase)).toEqual(['resolve', 'wrap', 'room', 'send', 'sync', 'agentJoined', 'firstAudio', 'join']);
    await new Promise((res) => setTimeout(res, 60));
    expect(call.getSnapshot().phase).toBe('active');
    expect(call.getSnapshot().error).toBeNull();
    await call.end();
  });

  it('a video call publishes the camera too', async () => {
    const r = rig();
    const call = place(r, { type: 'video' });
    await joined(r, call);
    expect(r.media.published).toBe('video');
    expect(r.wrapped[0]!.context.callType).toBe('video');
    await call.end();
  });

  it("keeps the application's sessionId", async () => {
    const r = rig();
    const call = place(r, { sessionId: 'my-session-7' });
    await joined(r, call);
    expect(r.matrix.sent[0]!.content['sessionId']).toBe('my-session-7');
    expect(call.sessionId).toBe('my-session-7');
    await call.end();
  });

  it('the test hook keys our media with another key than the sealed one', async () => {
    const r = rig();
    const call = place(r, { dangerousTestHooks: { wrongMediaKey: true }, keyDerivation: 'pbkdf2' });
    await joined(r, call);
    const sealed = r.wrapped[0]!.copy.map((b) => b.toString(16).padStart(2, '0')).join('');
    const hex = r.media.material as string;
    expect(hex).toMatch(/^[0-9a-f]{64}$/);
    expect(hex).not.toBe(sealed);
    expect(hex.slice(1)).toBe(sealed.slice(1));
    await call.end();
  });
});

describe('hanging up', () => {
  it('tells the server first (userHangup), leaves LiveKit, then edits the event to ended; twice is once', async () => {
    const r = rig();
    const call = place(r);
    await joined(r, call);
    r.media.events.firstAudio();
    await call.ready;
    r.log.length = 0;
    const first = call.end();
    const second = call.end();
    expect(second).toBe(first);
    await Promise.all([first, second]);
    await call.end();
    expect(r.log).toEqual(['end:userHangup', 'leave', 'edit']);
    expect(r.server.ends).toEqual([{ callId: call.callId, reason: 'userHangup' }]);
    const edit = r.matrix.sent[1]!;
    expect(edit.type).toBe('m.ixo.oracles_call');
    expect(edit.content['m.relates_to']).toEqual({ rel_type: 'm.replace', event_id: '$ev1:localhost' });
    expect(edit.content['m.new_content']).toMatchObject({ callStatus: 'ended', callId: call.callId });
    expect((edit.content['m.new_content'] as Record<string, unknown>)['callEndedAt']).toMatch(/Z$/);
    const s = call.getSnapshot();
    expect(s).toMatchObject({ phase: 'ended', callStatus: 'ended', endReason: 'userHangup', error: null });
  });

  it('keeps the reason that stuck at the server', async () => {
    const r = rig();
    r.server.stuckReason = 'participantLeft';
    const call = place(r);
    await joined(r, call);
    await call.end();
    expect(call.getSnapshot().endReason).toBe('participantLeft');
  });

  it('during setup: stops before the event, sends nothing, tells no one', async () => {
    const r = rig();
    r.matrix.prepareGate = new Deferred();
    const call = place(r);
    await until(() => r.log.includes('room'), 'the room step');
    const ending = call.end();
    r.matrix.prepareGate.resolve();
    await ending;
    expect(r.matrix.sent).toHaveLength(0);
    expect(r.server.syncs).toHaveLength(0);
    expect(r.server.ends).toHaveLength(0);
    expect(r.media.left).toBe(1);
    expect(call.getSnapshot()).toMatchObject({ phase: 'ended', callId: null, endReason: 'userHangup' });
    await expect(call.ready).rejects.toMatchObject({ code: 'callEnded' });
  });

  it('before the oracle was heard: ready rejects as callEnded', async () => {
    const r = rig();
    const call = place(r);
    await joined(r, call);
    await call.end();
    await expect(call.ready).rejects.toMatchObject({ code: 'callEnded', reason: 'userHangup' });
  });

  it('mute and unmute reach the media and the snapshot', async () => {
    const r = rig();
    const call = place(r);
    await joined(r, call);
    await call.setMicrophoneEnabled(false);
    expect(r.media.micOn).toBe(false);
    expect(call.getSnapshot().mic.muted).toBe(true);
    await call.setMicrophoneEnabled(true);
    expect(call.getSnapshot().mic.muted).toBe(false);
    await call.end();
  });
});

describe('failures', () => {
  it('the plaintext guard: a refused send fails the call with plaintextRoom; nothing else happens', async () => {
    const r = rig();
    r.matrix.sendError = new OracleCallError('plaintextRoom', 'the room is not known; nothing was sent');
    const call = place(r);
    await expect(call.ready).rejects.toMatchObject({ code: 'plaintextRoom' });
    expect(r.matrix.sent).toHaveLength(0);
    expect(r.server.syncs).toHaveLength(0);
    expect(r.media.connected).toBeNull();
    expect(r.media.left).toBe(1);
    const s = call.getSnapshot();
    expect(s).toMatchObject({ phase: 'failed', callId: null, callStatus: null });
    expect(s.error?.code).toBe('plaintextRoom');
    expect(s.encryption.matrixEvent).toBe(false);
  });

  it('a changed oracle key is refused before anything is made or sent', async () => {
    const r = rig();
    r.resolveError = new OracleCallError('oracleKeyChanged', 'the oracle now publishes key B but A was verified');
    const call = place(r);
    await expect(call.ready).rejects.toMatchObject({ code: 'oracleKeyChanged' });
    expect(r.log).toEqual(['resolve', 'leave']);
    expect(call.getSnapshot().error?.code).toBe('oracleKeyChanged');
  });

  it('a browser without frame encryption fails before the oracle is even resolved', async () => {
    const r = rig();
    r.mediaError = new OracleCallError('e2eeUnsupported', 'no encoded transforms');
    const call = place(r);
    await expect(call.ready).rejects.toMatchObject({ code: 'e2eeUnsupported' });
    expect(r.log).toEqual([]);
  });

  it('an untyped failure still surfaces as a typed error', async () => {
    const r = rig();
    r.resolveError = new TypeError('boom');
    const call = place(r);
    const e = await call.ready.then(
      () => null,
      (x: unknown) => x,
    );
    expect(e).toBeInstanceOf(OracleCallError);
    expect(call.getSnapshot().error?.message).toContain('boom');
  });

  it("sync refused: the event is edited to ended, LiveKit never joined, the error is the server's", async () => {
    const r = rig();
    r.server.syncError = new OracleCallError('server', 'server answered 422: callStartedAt too far', { status: 422 });
    const call = place(r);
    await expect(call.ready).rejects.toMatchObject({ code: 'server', status: 422 });
    expect(r.log).toEqual(['resolve', 'wrap', 'setKey', 'room', 'send', 'sync', 'edit', 'leave']);
    expect(r.matrix.sent[1]!.content['m.new_content']).toMatchObject({ callStatus: 'ended' });
    expect(r.server.ends).toHaveLength(0);
    expect(call.getSnapshot()).toMatchObject({ phase: 'failed', callStatus: 'ended' });
  });

  it('LiveKit join fails: mediaFailed at the server, edit to ended, error media', async () => {
    const r = rig();
    r.media.connectError = new Error('could not establish signal connection');
    const call = place(r);
    await expect(call.ready).rejects.toMatchObject({ code: 'media' });
    expect(r.log).toEqual(['resolve', 'wrap', 'setKey', 'room', 'send', 'sync', 'connect', 'leave', 'end:mediaFailed', 'edit']);
    expect(call.getSnapshot()).toMatchObject({ phase: 'failed', endReason: 'mediaFailed', callStatus: 'ended' });
  });

  it("LiveKit join fails because the call was ended elsewhere: callEnded with the server's reason", async () => {
    const r = rig();
    r.media.connectError = new Error('room deleted');
    r.server.endedReasonAnswer = 'keyDecryptionFailed';
    const call = place(r);
    await expect(call.ready).rejects.toMatchObject({ code: 'callEnded', reason: 'keyDecryptionFailed' });
    expect(r.server.ends).toHaveLength(0);
    expect(call.getSnapshot().endReason).toBe('keyDecryptionFailed');
  });

  it('the room closes before the oracle is heard (the agent could not open the key)', async () => {
    const r = rig();
    r.server.endedReasonAnswer = 'keyDecryptionFailed';
    const call = place(r);
    await joined(r, call);
    r.media.events.disconnected('ROOM_DELETED');
    await expect(call.ready).rejects.toMatchObject({ code: 'callEnded', reason: 'keyDecryptionFailed' });
    expect(call.getSnapshot()).toMatchObject({ phase: 'failed', endReason: 'keyDecryptionFailed', callStatus: 'ended' });
    expect(r.media.left).toBe(1);
  });

  it("the room closes mid-call: ended with the server's reason, no error", async () => {
    const r = rig();
    r.server.endedReasonAnswer = 'agentHangup';
    const call = place(r);
    await joined(r, call);
    r.media.events.firstAudio();
    await call.ready;
    r.media.events.disconnected('ROOM_DELETED');
    await until(() => call.getSnapshot().phase === 'ended', 'ended');
    expect(call.getSnapshot()).toMatchObject({ endReason: 'agentHangup', error: null, callStatus: 'ended' });
    await call.end();
    expect(r.server.ends).toHaveLength(0);
  });

  it('no oracle audio in time: the call is ended as mediaFailed and ready rejects', async () => {
    const r = rig();
    const call = place(r, { readyTimeoutMs: 50 });
    await joined(r, call);
    r.media.events.oracleJoined('agent-x');
    r.media.events.decryptionFailure('agent-x', 'InvalidKey: decryption failed');
    r.media.events.decryptionFailure('agent-x', 'InvalidKey: decryption failed');
    await expect(call.ready).rejects.toMatchObject({ code: 'media' });
    const s = call.getSnapshot();
    expect(s.error?.message).toContain('2 decryption failures');
    expect(s).toMatchObject({ phase: 'failed', endReason: 'mediaFailed', decryptionFailures: 2 });
    expect(r.server.ends).toEqual([{ callId: call.callId, reason: 'mediaFailed' }]);
  });
});

describe("the oracle's media", () => {
  it('an unencrypted oracle track is refused and shown; encrypted ones are not', async () => {
    const r = rig();
    const call = place(r);
    await joined(r, call);
    r.media.events.oracleTrack('audio', true);
    expect(call.getSnapshot().encryption.oracleMedia).toBe(true);
    r.media.events.oracleTrack('video', false);
    const s = call.getSnapshot();
    expect(s.refusedTracks).toBe(1);
    expect(s.encryption.oracleMedia).toBe(false);
    expect(s.error?.code).toBe('media');
    r.media.events.oracleTrack('audio', true);
    expect(call.getSnapshot().encryption.oracleMedia).toBe(false);
    await call.end();
  });

  it('counts decryption failures and levels, rounded, without needless snapshots', async () => {
    const r = rig();
    const call = place(r);
    await joined(r, call);
    r.media.events.decryptionFailure(null, 'MissingKey');
    expect(call.getSnapshot().decryptionFailures).toBe(1);
    r.media.events.levels(0.123, 0.456);
    const s1 = call.getSnapshot();
    expect(s1.mic.level).toBe(0.12);
    expect(s1.oracle.level).toBe(0.46);
    r.media.events.levels(0.1201, 0.4599);
    expect(call.getSnapshot()).toBe(s1);
    await call.end();
  });

  it('blocked autoplay is shown until startAudio() (from a click) lets it play', async () => {
    const r = rig();
    const call = place(r);
    await joined(r, call);
    expect(call.getSnapshot().audioBlocked).toBe(false);
    r.media.events.playbackBlocked(true);
    expect(call.getSnapshot().audioBlocked).toBe(true);
    await call.startAudio();
    expect(r.media.blocked).toBe(false);
    expect(call.getSnapshot().audioBlocked).toBe(false);
    await call.end();
  });

  it('the oracle leaving is shown', async () => {
    const r = rig();
    const call = place(r);
    await joined(r, call);
    r.media.events.oracleJoined('agent-1');
    expect(call.getSnapshot().oracle.joined).toBe(true);
    r.media.events.oracleLeft('agent-1');
    expect(call.getSnapshot().oracle.joined).toBe(false);
    await call.end();
  });
});

describe('the plaintext guard itself', () => {
  const room = (encrypted: boolean) => ({ hasEncryptionStateEvent: () => encrypted });
  const crypto = (enabled: boolean | Error) => ({
    isEncryptionEnabledInRoom: async () => {
      if (enabled instanceof Error) throw enabled;
      return enabled;
    },
  });

  it('refuses an unknown room (matrix-js-sdk would send it in the clear)', async () => {
    await expect(assertEncryptedRoom({ getRoom: () => null, getCrypto: () => crypto(true) }, '!r')).rejects.toMatchObject({
      code: 'plaintextRoom',
    });
  });
  it('refuses a room without m.room.encryption', async () => {
    await expect(assertEncryptedRoom({ getRoom: () => room(false), getCrypto: () => crypto(true) }, '!r')).rejects.toMatchObject({
      code: 'plaintextRoom',
    });
  });
  it('refuses when the crypto layer does not know the room as encrypted, or fails', async () => {
    await expect(assertEncryptedRoom({ getRoom: () => room(true), getCrypto: () => crypto(false) }, '!r')).rejects.toMatchObject({
      code: 'plaintextRoom',
    });
    await expect(
      assertEncryptedRoom({ getRoom: () => room(true), getCrypto: () => crypto(new Error('store closed')) }, '!r'),
    ).rejects.toMatchObject({ code: 'plaintextRoom' });
  });
  it('refuses a client without crypto', async () => {
    await expect(assertEncryptedRoom({ getRoom: () => room(true), getCrypto: () => undefined }, '!r')).rejects.toMatchObject({
      code: 'plaintextRoom',
    });
  });
  it('passes a known, encrypted room', async () => {
    await expect(assertEncryptedRoom({ getRoom: () => room(true), getCrypto: () => crypto(true) }, '!r')).resolves.toBeUndefined();
  });
});

// ---------------------------------------------------------------------------------------------
// The Matrix side (src/matrix.ts) against a fake matrix-js-sdk client: the DM, the bot's
// devices, one transaction id per event, the guard before every send.
interface FakeRoomState {
  roomId: string;
  encrypted: boolean;
  members: Map<string, string>;
  blacklist: boolean | null;
  timeline: FakeEvent[];
}

class FakeEvent {
  status: string | null = 'sending';
  constructor(
    readonly txnId: string,
    readonly content: unknown,
  ) {}
  getTxnId(): string {
    return this.txnId;
  }
}

class FakeDevice {
  constructor(
    readonly deviceId: string,
    private readonly ed: string,
  ) {}
  getFingerprint(): string {
    return this.ed;
  }
}

class FakeClient {
  rooms = new Map<string, FakeRoomState>();
  direct: Record<string, string[]> = {};
  created: Record<string, unknown>[] = [];
  sends: { roomId: string; txnId: string; attempt: 'send' | 'resend' }[] = [];
  failSends = 0;
  cancelled: FakeEvent[] = [];
  botDevices: FakeDevice[] = [];
  verified = new Map<string, boolean>();
  joinBotAfterMs = 30;
  syncState: string | null = 'SYNCING';
  crypto: object | undefined;
  openIdCalls = 0;
  constructor(readonly bot: string) {
    const self = this;
    this.crypto = {
      isEncryptionEnabledInRoom: async (id: string) => self.rooms.get(id)?.encrypted ?? false,
      getUserDeviceInfo: async (users: string[]) => new Map(users.map((u) => [u, new Map(self.botDevices.map((d) => [d.deviceId, d]))])),
      getDeviceVerificationStatus: async (_u: string, d: string) => ({ localVerified: self.verified.get(d) ?? false }),
      setDeviceVerified: async (_u: string, d: string, v = true) => {
        self.verified.set(d, v);
      },
    };
  }
  getUserId() {
    return '@did-ixo-alice:localhost';
  }
  getSafeUserId() {
    return '@did-ixo-alice:localhost';
  }
  getDeviceId() {
    return 'ALICE';
  }
  getSyncState() {
    return this.syncState;
  }
  getCrypto() {
    return this.crypto;
  }
  room(r: FakeRoomState) {
    return {
      roomId: r.roomId,
      hasEncryptionStateEvent: () => r.encrypted,
      getMyMembership: () => 'join',
      getMember: (u: string) => (r.members.has(u) ? { membership: r.members.get(u) } : null),
      getJoinedMemberCount: () => [...r.members.values()].filter((m) => m === 'join').length,
      setBlacklistUnverifiedDevices: (v: boolean) => {
        r.blacklist = v;
      },
      getPendingEvents: () => {
        throw new Error('chronological');
      },
      getLiveTimeline: () => ({ getEvents: () => r.timeline }),
    };
  }
  getRoom(id: string) {
    const r = this.rooms.get(id);
    return r === undefined ? null : this.room(r);
  }
  getRooms() {
    return [...this.rooms.values()].map((r) => this.room(r));
  }
  getAccountData(type: string) {
    return type === 'm.direct' ? { getContent: () => this.direct } : undefined;
  }
  async setAccountData(_type: string, content: Record<string, string[]>) {
    this.direct = content;
  }
  async createRoom(opts: Record<string, unknown>) {
    this.created.push(opts);
    const id = `!new${this.created.length}:localhost`;
    const initial = (opts['initial_state'] as { type: string }[] | undefined) ?? [];
    const r: FakeRoomState = {
      roomId: id,
      encrypted: initial.some((s) => s.type === 'm.room.encryption'),
      members: new Map([['@did-ixo-alice:localhost', 'join'], [this.bot, 'invite']]),
      blacklist: null,
      timeline: [],
    };
    this.rooms.set(id, r);
    setTimeout(() => r.members.set(this.bot, 'join'), this.joinBotAfterMs);
    return { room_id: id };
  }
  async sendEvent(roomId: string, _type: string, content: unknown, txnId: string) {
    const ev = new FakeEvent(txnId, content);
    this.rooms.get(roomId)?.timeline.push(ev);
    this.sends.push({ roomId, txnId, attempt: 'send' });
    return this.deliver(ev);
  }
  async resendEvent(ev: FakeEvent, room: { roomId: string }) {
    this.sends.push({ roomId: room.roomId, txnId: ev.txnId, attempt: 'resend' });
    return this.deliver(ev);
  }
  private deliver(ev: FakeEvent) {
    if (this.failSends > 0) {
      this.failSends -= 1;
      ev.status = 'not_sent';
      throw new Error('connection reset');
    }
    ev.status = null;
    return { event_id: `$sent${this.sends.length}` };
  }
  cancelPendingEvent(ev: FakeEvent) {
    this.cancelled.push(ev);
  }
  async getOpenIdToken() {
    this.openIdCalls += 1;
    return { access_token: `oid${this.openIdCalls}`, expires_in: 3600, token_type: 'Bearer', matrix_server_name: 'localhost' };
  }
}

const device = (c: FakeClient) => MatrixDevice.fromClient(c as unknown as MatrixClient);

describe('the Matrix device', () => {
  it("takes an application's client only with crypto and while syncing", async () => {
    const noCrypto = new FakeClient(BOT);
    noCrypto.crypto = undefined;
    await expect(device(noCrypto)).rejects.toMatchObject({ code: 'setup' });
    const stopped = new FakeClient(BOT);
    stopped.syncState = null;
    await expect(device(stopped)).rejects.toMatchObject({ code: 'setup' });
    const ok = await device(new FakeClient(BOT));
    expect(ok.userId).toBe('@did-ixo-alice:localhost');
    expect(ok.deviceId).toBe('ALICE');
  });

  it('creates the encrypted DM, waits for the bot, trusts only the pinned device', async () => {
    const c = new FakeClient(BOT);
    c.botDevices = [new FakeDevice('BOTDEV', 'ed25519keyinbase64'), new FakeDevice('ROGUE', 'otherkey')];
    c.verified.set('ROGUE', true);
    const d = await device(c);
    const roomId = await d.prepareRoom(BOT, DEVICES);
    expect(c.created).toHaveLength(1);
    expect(c.created[0]).toMatchObject({
      preset: 'trusted_private_chat',
      is_direct: true,
      invite: [BOT],
      initial_state: [{ type: 'm.room.encryption', state_key: '', content: { algorithm: 'm.megolm.v1.aes-sha2' } }],
    });
    expect(c.rooms.get(roomId)?.members.get(BOT)).toBe('join');
    expect(c.direct[BOT]).toEqual([roomId]);
    expect(c.rooms.get(roomId)?.blacklist).toBe(true);
    expect(c.verified.get('BOTDEV')).toBe(true);
    expect(c.verified.get('ROGUE')).toBe(false);
    // The next call reuses it.
    expect(await d.prepareRoom(BOT, DEVICES)).toBe(roomId);
    expect(c.created).toHaveLength(1);
  });

  it('a device id with another Ed25519 key is not the pinned device: botDeviceUnknown', async () => {
    const c = new FakeClient(BOT);
    c.botDevices = [new FakeDevice('BOTDEV', 'a-different-key')];
    const d = await device(c);
    await expect(d.prepareRoom(BOT, DEVICES)).rejects.toMatchObject({ code: 'botDeviceUnknown' });
    expect(c.verified.get('BOTDEV')).toBeUndefined();
  });

  it('sends under one transaction id, resending the same local event after a failure', async () => {
    const c = new FakeClient(BOT);
    c.botDevices = [new FakeDevice('BOTDEV', 'ed25519keyinbase64')];
    const d = await device(c);
    const roomId = await d.prepareRoom(BOT, DEVICES);
    c.failSends = 1;
    const id = await d.send(roomId, 'm.ixo.oracles_call', { callStatus: 'pending' });
    expect(id).toBe('$sent2');
    expect(c.sends.map((s) => s.attempt)).toEqual(['send', 'resend']);
    expect(new Set(c.sends.map((s) => s.txnId)).size).toBe(1);
  });

  it('gives up after bounded tries and drops the unsent echo', async () => {
    const c = new FakeClient(BOT);
    c.botDevices = [new FakeDevice('BOTDEV', 'ed25519keyinbase64')];
    const d = await device(c);
    const roomId = await d.prepareRoom(BOT, DEVICES);
    c.failSends = 99;
    await expect(d.send(roomId, 'm.ixo.oracles_call', {})).rejects.toMatchObject({ code: 'matrix' });
    expect(c.sends).toHaveLength(5);
    expect(c.cancelled).toHaveLength(1);
  }, 10_000);

  it('refuses to send into a room it does not know or that is not encrypted', async () => {
    const c = new FakeClient(BOT);
    const d = await device(c);
    await expect(d.send('!unknown:localhost', 'm.ixo.oracles_call', {})).rejects.toMatchObject({ code: 'plaintextRoom' });
    c.rooms.set('!plain:localhost', { roomId: '!plain:localhost', encrypted: false, members: new Map(), blacklist: null, timeline: [] });
    await expect(d.send('!plain:localhost', 'm.ixo.oracles_call', {})).rejects.toMatchObject({ code: 'plaintextRoom' });
    expect(c.sends).toHaveLength(0);
  });

  it('reuses an OpenID token until shortly before it expires', async () => {
    const c = new FakeClient(BOT);
    const d = await device(c);
    const [a, b] = await Promise.all([d.openIdToken(), d.openIdToken()]);
    expect(a).toBe('oid1');
    expect(b).toBe('oid1');
    expect(await d.openIdToken()).toBe('oid1');
    expect(c.openIdCalls).toBe(1);
  });
});

// ---------------------------------------------------------------------------------------------
// OracleClient: the call wired to the real trust step (well-known, pins, HPKE sealing) and the
// real ServerApi, over a fake fetch that plays the oracle's server; Matrix and LiveKit faked.

describe('OracleClient wiring', () => {
  async function oracleServer() {
    const kp = (await crypto.subtle.generateKey({ name: 'ECDH', namedCurve: 'P-256' }, true, ['deriveBits'])) as CryptoKeyPair;
    const raw = new Uint8Array(await crypto.subtle.exportKey('raw', kp.publicKey));
    const spki = new Uint8Array(await crypto.subtle.exportKey('spki', kp.publicKey));
    const keyId = [...new Uint8Array(await crypto.subtle.digest('SHA-256', spki)).slice(0, 16)]
      .map((b) => b.toString(16).padStart(2, '0'))
      .join('');
    const wellKnown = {
      oracleDid: ORACLE,
      matrixUserId: BOT,
      agentName: 'oracle-agent',
      livekitUrl: 'ws://127.0.0.1:7880',
      keys: [{ keyId, scheme: 'hpke-p256', publicKey: encodeBase64url(raw) }],
      matrixDevices: DEVICES,
    };
    const requests: { method: string; path: string; auth: string | null; body: unknown }[] = [];
    const calls: Record<string, Record<string, unknown>> = {};
    const json = (status: number, v: unknown) =>
      new Response(JSON.stringify(v), { status, headers: { 'content-type': 'application/json' } });
    const fetchImpl = async (input: string, init?: RequestInit): Promise<Response> => {
      const u = new URL(input);
      const method = init?.method ?? 'GET';
      const auth = (init?.headers as Record<string, string> | undefined)?.['authorization'] ?? null;
      const body = typeof init?.body === 'string' ? (JSON.parse(init.body) as unknown) : null;
      requests.push({ method, path: u.pathname + u.search, auth, body });
      if (u.pathname === '/.well-known/oracle-calls') return json(200, wellKnown);
      const m = /^\/calls\/([^/]+)\/(sync|update)$/.exec(u.pathname);
      if (m !== null) {
        const callId = decodeURIComponent(m[1]!);
        const summary = (calls[callId] ??= {
          callId,
          callType: 'audio',
          callStatus: 'active',
          sessionId: 's',
          roomId: callId.split('@')[1],
          userDid: USER_DID,
          oracleDid: ORACLE,
          callStartedAt: new Date().toISOString(),
        });
        if (m[2] === 'sync') {
          return json(200, { callId, status: 'active', livekitUrl: 'ws://127.0.0.1:7880', token: 'lk-jwt', tokenExpiresAt: new Date(Date.now() + 600e3).toISOString() });
        }
        Object.assign(summary, { callStatus: 'ended', reason: (body as { reason: string }).reason });
        return json(200, summary);
      }
      if (u.pathname === '/calls') return json(200, { calls: Object.values(calls) });
      return json(404, { error: { code: 'not_found', message: 'no such endpoint' } });
    };
    return { wellKnown, keyId, requests, fetchImpl };
  }

  it('resolves and pins the oracle, seals to its key, syncs and hangs up through the real server API', async () => {
    const { ServerApi } = await import('../../src/server.js');
    const { MemoryPinStore } = await import('../../src/pins.js');
    const { OracleClient } = await import('../../src/client.js');
    const srv = await oracleServer();
    const r = rig();
    const pins = new MemoryPinStore();
    const client = new OracleClient({
      matrix: Object.assign(r.matrix, { logout: async () => undefined }),
      api: new ServerApi('http://127.0.0.1:8080', srv.fetchImpl),
      pins,
      media: r.deps.media,
    });
    expect(client.userDid).toBe(USER_DID);
    const call = client.callOracle({ oracleDid: ORACLE, type: 'audio' });
    await joined(r, call);
    const s = call.getSnapshot();
    expect(s.oracle).toMatchObject({ keyId: srv.keyId, pinnedOnFirstUse: true });
    expect((await pins.get(ORACLE))?.keys.map((k) => k.keyId)).toEqual([srv.keyId]);
    expect(r.matrix.prepared).toEqual([{ bot: BOT, devices: DEVICES }]);
    const env = r.matrix.sent[0]!.content['encryptionKey'] as string;
    expect(env).toMatch(/^v1\.hpke-p256\.[A-Za-z0-9_-]+$/);
    const sync = srv.requests.find((q) => q.path.endsWith('/sync'))!;
    expect(sync).toMatchObject({ method: 'POST', auth: 'Bearer openid-token' });
    // PROTOCOL §1: every byte outside [A-Za-z0-9-._~] percent-encoded.
    expect(sync.path).toBe(`/calls/${encodeURIComponent(call.callId!)}/sync`);
    expect(sync.path).toContain('%24ev1%3Alocalhost%40oc-');
    r.media.events.firstAudio();
    await call.ready;
    await call.end();
    const update = srv.requests.find((q) => q.path.endsWith('/update'))!;
    expect(update.body).toEqual({ callStatus: 'ended', reason: 'userHangup' });
    expect(call.getSnapshot().endReason).toBe('userHangup');
    expect((await client.listCalls()).map((c) => c.callStatus)).toEqual(['ended']);

    // The second call: the pin is no longer new.
    const r2 = rig();
    const client2 = new OracleClient({
      matrix: Object.assign(r2.matrix, { logout: async () => undefined }),
      api: new ServerApi('http://127.0.0.1:8080', srv.fetchImpl),
      pins,
      media: r2.deps.media,
    });
    const call2 = client2.callOracle({ oracleDid: ORACLE, type: 'audio' });
    await joined(r2, call2);
    expect(call2.getSnapshot().oracle.pinnedOnFirstUse).toBe(false);
    await call2.end();
  });

  it('a server describing another oracle is refused before anything is sent (wrongOracle)', async () => {
    const { ServerApi } = await import('../../src/server.js');
    const { MemoryPinStore } = await import('../../src/pins.js');
    const { OracleClient } = await import('../../src/client.js');
    const srv = await oracleServer();
    const r = rig();
    const client = new OracleClient({
      matrix: Object.assign(r.matrix, { logout: async () => undefined }),
      api: new ServerApi('http://127.0.0.1:8080', srv.fetchImpl),
      pins: new MemoryPinStore(),
      media: r.deps.media,
    });
    const call = client.callOracle({ oracleDid: 'did:ixo:entity:another', type: 'audio' });
    await expect(call.ready).rejects.toMatchObject({ code: 'wrongOracle' });
    expect(r.matrix.sent).toHaveLength(0);
    expect(r.matrix.prepared).toHaveLength(0);
  });

  it('a user id outside the ixo convention needs an explicit userDid (setup), nothing sent', async () => {
    const { ServerApi } = await import('../../src/server.js');
    const { MemoryPinStore } = await import('../../src/pins.js');
    const { OracleClient } = await import('../../src/client.js');
    const srv = await oracleServer();
    const r = rig();
    const matrix = Object.assign(r.matrix, { logout: async () => undefined });
    Object.defineProperty(matrix, 'userId', { value: '@alice:localhost' });
    const client = new OracleClient({ matrix, api: new ServerApi('http://127.0.0.1:8080', srv.fetchImpl), pins: new MemoryPinStore(), media: r.deps.media });
    expect(client.userDid).toBeNull();
    const call = client.callOracle({ oracleDid: ORACLE, type: 'audio' });
    await expect(call.ready).rejects.toMatchObject({ code: 'setup' });
    expect(r.matrix.sent).toHaveLength(0);
  });
});

describe('the early join (PROTOCOL §6.9)', () => {
  it("claims the room once the key is set, joins it with the claim's token while the event is sent, and keeps it", async () => {
    const r = claimingRig();
    const gate = new Deferred<void>();
    r.server.syncGate = gate;
    const call = place(r);
    // Joined and published before the sync answers.
    await until(() => r.media.published === 'audio', 'the early publish');
    expect(r.server.syncs).toHaveLength(0);
    expect(r.media.connects).toEqual([{ url: 'ws://127.0.0.1:7880', token: 'claim-jwt' }]);
    const ctx = r.wrapped[0]!.context;
    expect(r.server.claims).toEqual([{ roomName: ctx.roomId, token: 'openid-token' }]);
    expect(r.log.indexOf('claim')).toBeGreaterThan(r.log.indexOf('setKey'));
    gate.resolve();
    await until(() => call.getSnapshot().phase === 'waitingForOracle', 'waitingForOracle');
    // No second join: the sync's token is not used.
    expect(r.media.connects).toHaveLength(1);
    expect(r.log.filter((l) => l === 'connect' || l.startsWith('publish') || l === 'leaveRoom')).toEqual([
      'connect',
      'publish:audio',
    ]);
    const s = call.getSnapshot();
    expect(s.mediaJoin).toBe('early');
    expect(s.timeline.map((t) => t.phase)).toEqual(['resolve', 'wrap', 'room', 'send', 'sync', 'join']);
    r.media.events.oracleJoined('agent-AJ_1');
    r.media.events.firstAudio();
    await call.ready;
    expect(call.getSnapshot().phase).toBe('active');
    // Once it is the call's room, its close is the call's end.
    r.media.events.disconnected('ROOM_DELETED');
    await until(() => call.getSnapshot().phase === 'ended', 'ended');
  });

  it('a server without the early join (404), a refused claim or a failed early join: joins with the sync\'s token', async () => {
    for (const how of ['notOffered', 'refused', 'connectFails'] as const) {
      const r = claimingRig();
      if (how === 'notOffered') r.server.claimAnswer = null;
      if (how === 'refused') r.server.claimAnswer = new OracleCallError('server', 'server answered 409: taken', { status: 409 });
      if (how === 'connectFails') {
        // The early connect fails; the one after the sync works.
        const media = r.media;
        const connect = media.connect.bind(media);
        let n = 0;
        media.connect = async (url, token) => {
          n += 1;
          if (n === 1) {
            throw new Error('could not establish signal connection');
          }
          return connect(url, token);
        };
      }
      const call = place(r);
      await until(() => call.getSnapshot().phase === 'waitingForOracle', `waitingForOracle (${how})`);
      expect(r.media.connected, how).toEqual({ url: 'ws://127.0.0.1:7880', token: 'lk-jwt' });
      expect(call.getSnapshot().mediaJoin, how).toBe('afterSync');
      expect(call.getSnapshot().error, how).toBeNull();
      expect(r.server.claims, how).toHaveLength(1);
      await call.end();
    }
  });

  it('a claim that lapses within 2 s of the sync: the room is left and joined again with the sync\'s token', async () => {
    const r = claimingRig();
    r.server.claimAnswer = { lifetimeMs: 1500 };
    const call = place(r);
    await until(() => call.getSnapshot().phase === 'waitingForOracle', 'waitingForOracle');
    expect(r.media.connects.map((c) => c.token)).toEqual(['claim-jwt', 'lk-jwt']);
    const media = r.log.filter((l) => l === 'connect' || l.startsWith('publish') || l === 'leaveRoom');
    expect(media).toEqual(['connect', 'publish:audio', 'leaveRoom', 'connect', 'publish:audio']);
    expect(call.getSnapshot().mediaJoin).toBe('afterSync');
    await call.end();
  });

  it('the room joined early closing before the sync is no end: the sync\'s token joins again', async () => {
    const r = claimingRig();
    const gate = new Deferred<void>();
    r.server.syncGate = gate;
    const call = place(r);
    await until(() => r.media.published === 'audio', 'the early publish');
    r.media.events.disconnected('ROOM_DELETED');
    await tick();
    expect(call.getSnapshot().phase).toBe('syncing');
    gate.resolve();
    await until(() => call.getSnapshot().phase === 'waitingForOracle', 'waitingForOracle');
    expect(r.media.connects.map((c) => c.token)).toEqual(['claim-jwt', 'lk-jwt']);
    expect(call.getSnapshot()).toMatchObject({ mediaJoin: 'afterSync', error: null, endReason: null });
    await call.end();
  });

  it('a failed sync leaves the room joined early; earlyJoin: false claims nothing', async () => {
    const r = claimingRig();
    r.server.syncError = new OracleCallError('server', 'server answered 422: callStartedAt too far', { status: 422 });
    const call = place(r);
    await expect(call.ready).rejects.toMatchObject({ code: 'server', status: 422 });
    expect(r.media.connects.map((c) => c.token)).toEqual(['claim-jwt']);
    expect(r.media.left).toBe(1);
    expect(call.getSnapshot()).toMatchObject({ phase: 'failed', callStatus: 'ended' });

    const off = claimingRig();
    const c2 = place(off, { earlyJoin: false });
    await until(() => c2.getSnapshot().phase === 'waitingForOracle', 'waitingForOracle');
    expect(off.server.claims).toHaveLength(0);
    expect(off.media.connects.map((c) => c.token)).toEqual(['lk-jwt']);
    expect(c2.getSnapshot().mediaJoin).toBe('afterSync');
    await c2.end();
  });
});

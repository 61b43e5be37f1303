// The call's media: one livekit-client Room with frame end-to-end encryption keyed by the call
// key (PROTOCOL §5, §7), our microphone (and camera), the oracle's tracks, levels, and the
// checks the Rust client makes: an oracle track that is not encrypted is refused (never
// attached, never played), frames that fail to decrypt are counted.

import {
  DisconnectReason,
  ExternalE2EEKeyProvider,
  Room,
  RoomEvent,
  Track,
  VideoPresets,
  isE2EESupported,
  type Participant,
  type RemoteParticipant,
  type RemoteTrack,
  type RemoteTrackPublication,
  type VideoCaptureOptions,
} from 'livekit-client';

import { OracleCallError } from './errors.js';

/** What the media layer tells the call. */
export interface MediaEvents {
  oracleJoined(identity: string): void;
  oracleLeft(identity: string): void;
  /** Someone who is not an oracle agent joined the call's room (never taken for the oracle). */
  unexpectedParticipant(identity: string): void;
  /** An oracle track arrived; `encrypted: false` means it was refused. */
  oracleTrack(kind: 'audio' | 'video', encrypted: boolean): void;
  decryptionFailure(identity: string | null, message: string): void;
  /** Our own sender's encryption state, as LiveKit's worker reports it. */
  localEncryption(enabled: boolean): void;
  /** The first non-silent, decrypted audio of the oracle was heard. */
  firstAudio(): void;
  /** RMS levels (0..1) of our microphone and of the oracle's audio, about ten times a second. */
  levels(mic: number, oracle: number): void;
  /** The browser blocked audio playback (autoplay policy) or allowed it again. */
  playbackBlocked(blocked: boolean): void;
  /** The room was left or lost (not called after `leave()`). */
  disconnected(reason: string): void;
}

/**
 * The media key material (PROTOCOL §5.1, protocol.ts `mediaKeyMaterial`): for `hkdf` a fresh
 * ArrayBuffer of the 32 raw bytes (zeroed here once LiveKit imported it as a non-extractable
 * key), for `pbkdf2` the 64 lower-case hex characters.
 */
export type KeyMaterial = ArrayBuffer | string;

export interface CaptureOptions {
  audio?: MediaTrackConstraints;
  video?: MediaTrackConstraints;
}

/** One call's media session. */
export interface MediaSession {
  /** Puts the call key in keyring slot 0 (shared-key mode) and turns frame encryption on. */
  setKey(material: KeyMaterial): Promise<void>;
  connect(url: string, token: string): Promise<void>;
  /** Publishes the microphone, and for video the camera (VP8, one layer). */
  publish(type: 'audio' | 'video', capture?: CaptureOptions): Promise<void>;
  setMicrophoneEnabled(on: boolean): Promise<void>;
  /** Starts audio playback after the browser blocked it; call it from a click handler. */
  startAudio(): Promise<void>;
  attach(audio: HTMLAudioElement, video?: HTMLVideoElement): void;
  /** The latest decoded oracle audio (about 0.68 s), for analysis; null before the oracle's audio. */
  oracleAudio(): { samples: Float32Array; sampleRate: number } | null;
  /**
   * Leaves the LiveKit room and stops our tracks, but keeps the key, the worker and the audio
   * graph, so that `connect` and `publish` may follow (the early join's room given up for the
   * sync's token). Reports no `disconnected`.
   */
  leaveRoom(): Promise<void>;
  /** Leaves the room, stops our tracks, ends the worker and the audio graph. Idempotent. */
  leave(): Promise<void>;
}

export interface MediaOptions {
  events: MediaEvents;
  /** Makes the LiveKit E2EE worker; one per Room. Default: `./e2ee-worker.js` next to this module. */
  e2eeWorker?: () => Worker;
  rtcConfig?: RTCConfiguration;
}

export type MediaFactory = (opts: MediaOptions) => MediaSession;

/** Oracle agents join as `agent-<job id>` (PROTOCOL §7). */
export function isAgentIdentity(identity: string): boolean {
  return identity.startsWith('agent-') && identity.length > 'agent-'.length;
}

/** RMS of `buf`. */
export function rms(buf: Float32Array): number {
  if (buf.length === 0) {
    return 0;
  }
  let sum = 0;
  for (const x of buf) {
    sum += x * x;
  }
  return Math.sqrt(sum / buf.length);
}

/** Samples an inbound audio stream decoded from real frames (received minus concealed). */
export function decodedSamples(report: RTCStatsReport): number {
  let n = 0;
  report.forEach((s: { type?: string; kind?: string; totalSamplesReceived?: number; concealedSamples?: number }) => {
    if (s.type === 'inbound-rtp' && s.kind === 'audio') {
      n += Math.max(0, (s.totalSamplesReceived ?? 0) - (s.concealedSamples ?? 0));
    }
  });
  return n;
}

/** Below this RMS the oracle's audio counts as silence (a wrong key gives exact silence). */
const AUDIBLE_RMS = 0.001;
const LEVEL_INTERVAL_MS = 100;
const FIRST_AUDIO_POLL_MS = 10;

function defaultWorker(): Worker {
  return new Worker(new URL('./e2ee-worker.js', import.meta.url), { type: 'module' });
}

function mediaError(what: string, e: unknown): OracleCallError {
  const msg = e instanceof Error ? e.message : String(e);
  return new OracleCallError('media', `${what}: ${msg}`);
}

/** Camera options from plain constraints: the device, and the size when given as numbers. */
function videoCapture(c: MediaTrackConstraints | undefined): VideoCaptureOptions {
  const dflt = VideoPresets.h360.resolution;
  const num = (v: unknown, d: number): number => (typeof v === 'number' && v > 0 ? v : d);
  const out: VideoCaptureOptions = {
    resolution: { width: num(c?.width, dflt.width), height: num(c?.height, dflt.height), frameRate: num(c?.frameRate, 30) },
  };
  if (c?.deviceId !== undefined) {
    out.deviceId = c.deviceId;
  }
  return out;
}

/** The livekit-client implementation of {@link MediaSession}. */
export const createLiveKitMedia: MediaFactory = (opts) => new LiveKitMedia(opts);

class LiveKitMedia implements MediaSession {
  readonly #events: MediaEvents;
  readonly #rtcConfig: RTCConfiguration | undefined;
  readonly #worker: Worker;
  readonly #keyProvider: ExternalE2EEKeyProvider;
  readonly #room: Room;
  readonly #audio: AudioContext;
  #micAnalyser: AnalyserNode | null = null;
  #oracleAnalyser: AnalyserNode | null = null;
  #oracleWide: AnalyserNode | null = null;
  readonly #sources: AudioNode[] = [];
  readonly #internalEls: HTMLMediaElement[] = [];
  #oracleAudioTrack: RemoteTrack | null = null;
  #oracleVideoTrack: RemoteTrack | null = null;
  #targets: { audio: HTMLAudioElement; video: HTMLVideoElement | undefined } | null = null;
  #timer: ReturnType<typeof setInterval> | null = null;
  #firstTimer: ReturnType<typeof setInterval> | null = null;
  #heard = false;
  #left = false;
  /** Leaving the room to join it again: its `Disconnected` is ours, not news. */
  #rejoining = false;
  readonly #buf = new Float32Array(2048);

  constructor(opts: MediaOptions) {
    if (!isE2EESupported()) {
      throw new OracleCallError(
        'e2eeUnsupported',
        'this browser cannot encrypt LiveKit media end to end (no encoded transforms); nothing was sent',
      );
    }
    this.#events = opts.events;
    this.#rtcConfig = opts.rtcConfig;
    try {
      this.#worker = (opts.e2eeWorker ?? defaultWorker)();
    } catch (e) {
      throw mediaError('starting the E2EE worker', e);
    }
    this.#keyProvider = new ExternalE2EEKeyProvider();
    // `encryption` (not the deprecated `e2ee`): frames and data packets.
    this.#room = new Room({
      encryption: { keyProvider: this.#keyProvider, worker: this.#worker },
      adaptiveStream: false,
      dynacast: false,
    });
    // Made here, in the caller's task (usually a click), so autoplay policy lets it run.
    this.#audio = new AudioContext({ sampleRate: 48000 });
    void this.#audio.resume().catch(() => undefined);
    this.#wire();
  }

  #wire(): void {
    const room = this.#room;
    room
      .on(RoomEvent.ParticipantConnected, (p: RemoteParticipant) => this.#joined(p))
      .on(RoomEvent.ParticipantDisconnected, (p: RemoteParticipant) => {
        if (isAgentIdentity(p.identity)) {
          this.#events.oracleLeft(p.identity);
        }
      })
      .on(
        RoomEvent.TrackSubscribed,
        (track: RemoteTrack, pub: RemoteTrackPublication, p: RemoteParticipant) => this.#subscribed(track, pub, p),
      )
      .on(RoomEvent.EncryptionError, (error: Error, participant?: Participant) => {
        if (participant !== undefined && participant === room.localParticipant) {
          this.#events.localEncryption(false);
          return;
        }
        this.#events.decryptionFailure(participant?.identity ?? null, String(error?.message ?? error));
      })
      .on(RoomEvent.ParticipantEncryptionStatusChanged, (enabled: boolean, participant?: Participant) => {
        if (participant === undefined || participant === room.localParticipant) {
          this.#events.localEncryption(enabled);
        }
      })
      .on(RoomEvent.AudioPlaybackStatusChanged, (playing: boolean) => {
        this.#events.playbackBlocked(!playing);
      })
      .on(RoomEvent.Disconnected, (reason?: DisconnectReason) => {
        if (!this.#left && !this.#rejoining) {
          const name = reason === undefined ? 'unknown' : (DisconnectReason[reason] ?? String(reason));
          this.#events.disconnected(name);
        }
      });
  }

  #joined(p: RemoteParticipant): void {
    if (isAgentIdentity(p.identity)) {
      this.#events.oracleJoined(p.identity);
    } else {
      this.#events.unexpectedParticipant(p.identity);
    }
  }

  #subscribed(track: RemoteTrack, pub: RemoteTrackPublication, p: RemoteParticipant): void {
    if (!isAgentIdentity(p.identity)) {
      // Not the oracle: never attached (without the call key it would be undecryptable anyway).
      return;
    }
    const kind = track.kind === Track.Kind.Video ? 'video' : 'audio';
    if (!pub.isEncrypted) {
      // livekit-client plays a track marked unencrypted without its cryptor: refuse it.
      pub.setSubscribed(false);
      this.#events.oracleTrack(kind, false);
      return;
    }
    this.#events.oracleTrack(kind, true);
    if (kind === 'audio') {
      this.#oracleAudioTrack = track;
      // Chromium feeds remote WebRTC audio into WebAudio only while a media element plays it;
      // a muted one of our own is enough (the page's element gets it via attach()).
      const el = track.attach();
      el.muted = true;
      this.#internalEls.push(el);
      const src = new MediaStreamAudioSourceNode(this.#audio, {
        mediaStream: new MediaStream([track.mediaStreamTrack]),
      });
      this.#oracleAnalyser = new AnalyserNode(this.#audio, { fftSize: 2048 });
      this.#oracleWide = new AnalyserNode(this.#audio, { fftSize: 32768 });
      src.connect(this.#oracleAnalyser);
      src.connect(this.#oracleWide);
      this.#sources.push(src);
      this.#startLevels();
      this.#watchFirstAudio(track.receiver);
    } else {
      this.#oracleVideoTrack = track;
    }
    this.#attachTargets();
  }

  #attachTargets(): void {
    if (this.#targets === null) {
      return;
    }
    if (this.#oracleAudioTrack !== null) {
      this.#oracleAudioTrack.attach(this.#targets.audio);
    }
    if (this.#oracleVideoTrack !== null && this.#targets.video !== undefined) {
      this.#oracleVideoTrack.attach(this.#targets.video);
    }
  }

  #level(a: AnalyserNode | null): number {
    if (a === null) {
      return 0;
    }
    a.getFloatTimeDomainData(this.#buf);
    return rms(this.#buf);
  }

  #startLevels(): void {
    if (this.#timer !== null || this.#left) {
      return;
    }
    this.#timer = setInterval(() => {
      const mic = this.#level(this.#micAnalyser);
      const oracle = this.#level(this.#oracleAnalyser);
      this.#checkHeard(oracle);
      this.#events.levels(mic, oracle);
    }, LEVEL_INTERVAL_MS);
  }

  /**
   * Looks every 10 ms for the oracle's first decrypted audio (the timeline's `firstAudio`, as
   * the Rust client's first decrypted frame): the receiver decoded real samples (LiveKit's
   * worker drops every frame that fails to decrypt, so a wrong key leaves only concealment),
   * or the audio is audible.
   */
  #watchFirstAudio(receiver: RTCRtpReceiver | undefined): void {
    if (this.#firstTimer !== null || this.#heard || this.#left) {
      return;
    }
    let asking = false;
    this.#firstTimer = setInterval(() => {
      this.#checkHeard(this.#level(this.#oracleAnalyser));
      if (receiver === undefined || asking || this.#heard) {
        return;
      }
      asking = true;
      receiver
        .getStats()
        .then((report) => {
          if (decodedSamples(report) > 0) {
            this.#checkHeard(Number.POSITIVE_INFINITY);
          }
        })
        .catch(() => undefined)
        .finally(() => {
          asking = false;
        });
    }, FIRST_AUDIO_POLL_MS);
  }

  #checkHeard(oracle: number): void {
    if (this.#heard || this.#left || oracle <= AUDIBLE_RMS) {
      return;
    }
    this.#heard = true;
    if (this.#firstTimer !== null) {
      clearInterval(this.#firstTimer);
      this.#firstTimer = null;
    }
    this.#events.firstAudio();
  }

  async setKey(material: KeyMaterial): Promise<void> {
    try {
      if (typeof material === 'string') {
        await this.#keyProvider.setKey(material);
      } else {
        try {
          await this.#keyProvider.setKey(material);
        } finally {
          new Uint8Array(material).fill(0);
        }
      }
      await this.#room.setE2EEEnabled(true);
    } catch (e) {
      throw mediaError('setting the media key', e);
    }
  }

  async connect(url: string, token: string): Promise<void> {
    try {
      await this.#room.connect(url, token, {
        autoSubscribe: true,
        ...(this.#rtcConfig === undefined ? {} : { rtcConfig: this.#rtcConfig }),
      });
    } catch (e) {
      throw mediaError('joining the LiveKit room', e);
    }
    for (const p of this.#room.remoteParticipants.values()) {
      this.#joined(p);
    }
    void this.#room.startAudio().catch(() => undefined);
  }

  async publish(type: 'audio' | 'video', capture?: CaptureOptions): Promise<void> {
    const lp = this.#room.localParticipant;
    try {
      const micPub = await lp.setMicrophoneEnabled(true, capture?.audio ?? {}, { red: false, dtx: false });
      const mic = micPub?.track?.mediaStreamTrack;
      if (mic !== undefined) {
        const src = new MediaStreamAudioSourceNode(this.#audio, { mediaStream: new MediaStream([mic]) });
        this.#micAnalyser = new AnalyserNode(this.#audio, { fftSize: 2048 });
        src.connect(this.#micAnalyser);
        this.#sources.push(src);
      }
      if (type === 'video') {
        // PROTOCOL §5.2: VP8, one layer (no simulcast).
        await lp.setCameraEnabled(
          true,
          videoCapture(capture?.video),
          { videoCodec: 'vp8', simulcast: false, backupCodec: false },
        );
      }
    } catch (e) {
      throw mediaError(type === 'video' ? 'publishing the microphone and camera' : 'publishing the microphone', e);
    }
    this.#startLevels();
  }

  async setMicrophoneEnabled(on: boolean): Promise<void> {
    try {
      await this.#room.localParticipant.setMicrophoneEnabled(on);
    } catch (e) {
      throw mediaError('switching the microphone', e);
    }
  }

  async startAudio(): Promise<void> {
    try {
      await this.#audio.resume();
      await this.#room.startAudio();
    } catch (e) {
      throw mediaError('starting audio playback', e);
    }
    this.#events.playbackBlocked(!this.#room.canPlaybackAudio);
  }

  attach(audio: HTMLAudioElement, video?: HTMLVideoElement): void {
    this.#targets = { audio, video };
    this.#attachTargets();
  }

  oracleAudio(): { samples: Float32Array; sampleRate: number } | null {
    if (this.#oracleWide === null) {
      return null;
    }
    const samples = new Float32Array(this.#oracleWide.fftSize);
    this.#oracleWide.getFloatTimeDomainData(samples);
    return { samples, sampleRate: this.#audio.sampleRate };
  }

  async leaveRoom(): Promise<void> {
    if (this.#left) {
      return;
    }
    this.#rejoining = true;
    try {
      await this.#room.disconnect(true);
    } catch (e) {
      throw mediaError('leaving the LiveKit room', e);
    } finally {
      this.#rejoining = false;
    }
  }

  async leave(): Promise<void> {
    if (this.#left) {
      return;
    }
    this.#left = true;
    for (const t of [this.#timer, this.#firstTimer]) {
      if (t !== null) {
        clearInterval(t);
      }
    }
    this.#timer = null;
    this.#firstTimer = null;
    try {
      await this.#room.disconnect(true);
    } catch {
      // Leaving is best effort; the worker and the graph are torn down below anyway.
    }
    for (const t of [this.#oracleAudioTrack, this.#oracleVideoTrack]) {
      t?.detach();
    }
    for (const s of this.#sources) {
      s.disconnect();
    }
    for (const el of this.#internalEls) {
      el.srcObject = null;
    }
    this.#worker.terminate();
    await this.#audio.close().catch(() => undefined);
  }
}

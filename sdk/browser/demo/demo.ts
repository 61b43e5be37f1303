// The demo page: sign in, call the oracle, watch the call's state. Plain DOM, no framework.
// `window.ocDemo` is the hook the end-to-end driver reads (sdk/browser/test/e2e/driver.mjs).

import {
  OracleCallError,
  OracleClient,
  keyTransparency,
  type KtVerifier,
  type Call,
  type CallSnapshot,
  type CallSummary,
  type KeyDerivation,
  type TimelinePhase,
} from '../src/index.js';

interface DemoConfig {
  homeserverUrl: string;
  serverUrl: string;
  oracleDid: string;
  /** ICE servers for LiveKit; default none on a loopback page (the SFU is on this machine). */
  iceServers?: RTCIceServer[];
  /** The key-transparency directory the oracle is verified from; absent: pinned on first use. */
  keyTransparency?: { url: string; publicKey: unknown };
}

/** The verifier of the config's key-transparency directory, if it names one. */
function ktOf(cfg: DemoConfig): { kt?: KtVerifier } {
  return cfg.keyTransparency === undefined ? {} : { kt: keyTransparency(cfg.keyTransparency) };
}

interface DemoError {
  code: string;
  message: string;
}

interface OcDemo {
  ready: boolean;
  snapshot(): CallSnapshot | null;
  calls(): Promise<CallSummary[]>;
  lastError: DemoError | null;
  oracleAudioPower(freqHz: number): number;
  keyDerivation: KeyDerivation;
  /** Join the call's LiveKit room early (the SDK's `earlyJoin`, default true). */
  earlyJoin: boolean;
  /** Test-only: key our media with a wrong key (the lock must not show, audio must not play). */
  wrongMediaKey: boolean;
  /** Test-only: send the call event into a room the plaintext guard must refuse. */
  plaintextRoom: 'unknown' | 'unencrypted' | null;
  /** Accept exactly this new oracle key id on the next call (the "accept" button sets it). */
  acceptOracleKey: string | null;
  /** Video frames of the oracle's video shown so far. */
  oracleVideoFrames(): number;
  /** Test-only: the capture constraints for the next call. */
  capture: { audio?: MediaTrackConstraints; video?: MediaTrackConstraints } | null;
  userId(): string | null;
  deviceId(): string | null;
}

declare global {
  interface Window {
    ocDemo: OcDemo;
  }
}

const PHASE_NAMES: Record<TimelinePhase, string> = {
  resolve: 'resolve oracle',
  wrap: 'make + wrap call key',
  room: 'encrypted DM with bot',
  send: 'send call event',
  sync: 'server sync',
  join: 'LiveKit join (E2EE)',
  agentJoined: 'agent in room',
  firstAudio: 'first oracle audio',
};

const PHASE_WORDS: Record<CallSnapshot['phase'], string> = {
  idle: 'idle',
  resolving: 'checking the oracle…',
  wrapping: 'sealing the call key…',
  room: 'opening the encrypted room…',
  sending: 'sending the call…',
  syncing: "asking the oracle's server…",
  joining: 'joining the media room…',
  waitingForOracle: 'waiting for the oracle…',
  active: 'in call',
  ending: 'hanging up…',
  ended: 'ended',
  failed: 'failed',
};

function el<T extends HTMLElement>(id: string): T {
  const e = document.getElementById(id);
  if (e === null) {
    throw new Error(`the page has no #${id}`);
  }
  return e as T;
}

const ui = {
  form: el<HTMLFormElement>('signin-form'),
  user: el<HTMLInputElement>('user'),
  password: el<HTMLInputElement>('password'),
  signin: el<HTMLButtonElement>('signin'),
  restore: el<HTMLButtonElement>('restore'),
  signedIn: el<HTMLDivElement>('signed-in'),
  me: el<HTMLElement>('me'),
  myDevice: el<HTMLElement>('my-device'),
  logout: el<HTMLButtonElement>('logout'),
  oracleDid: el<HTMLElement>('oracle-did'),
  oracleKey: el<HTMLElement>('oracle-key'),
  acceptBox: el<HTMLElement>('accept-box'),
  acceptKey: el<HTMLButtonElement>('accept-key'),
  callAudio: el<HTMLButtonElement>('call-audio'),
  callVideo: el<HTMLButtonElement>('call-video'),
  mute: el<HTMLButtonElement>('mute'),
  hangup: el<HTMLButtonElement>('hangup'),
  phase: el<HTMLElement>('phase'),
  lock: el<HTMLElement>('lock'),
  insecure: el<HTMLElement>('insecure'),
  micLevel: el<HTMLMeterElement>('mic-level'),
  oracleLevel: el<HTMLMeterElement>('oracle-level'),
  timeline: el<HTMLOListElement>('timeline'),
  audio: el<HTMLAudioElement>('oracle-audio'),
  audioBlocked: el<HTMLElement>('audio-blocked'),
  enableAudio: el<HTMLButtonElement>('enable-audio'),
  video: el<HTMLVideoElement>('oracle-video'),
  errorBox: el<HTMLElement>('error-box'),
  error: el<HTMLElement>('error'),
  errorCode: el<HTMLElement>('error-code'),
  history: el<HTMLTableSectionElement>('history'),
};

let config: DemoConfig | null = null;
let client: OracleClient | null = null;
let call: Call | null = null;
let unsubscribe: (() => void) | null = null;
let busy = false;

const ocDemo: OcDemo = {
  ready: false,
  snapshot: () => call?.getSnapshot() ?? null,
  calls: async () => (client === null ? [] : client.listCalls({ limit: 50 })),
  lastError: null,
  oracleAudioPower: (freqHz: number) => {
    const a = call?.oracleAudio();
    return a ? goertzel(a.samples, freqHz, a.sampleRate) : 0;
  },
  keyDerivation: 'hkdf',
  earlyJoin: true,
  wrongMediaKey: false,
  plaintextRoom: null,
  acceptOracleKey: null,
  oracleVideoFrames: () => ui.video.getVideoPlaybackQuality().totalVideoFrames,
  capture: null,
  userId: () => client?.userId ?? null,
  deviceId: () => client?.deviceId ?? null,
};
window.ocDemo = ocDemo;

/** Goertzel power of `freq` in `samples`, normalised to 0..1 (2·power / (N·energy)), as tests/browser/page.mjs. */
function goertzel(samples: Float32Array, freq: number, rate: number): number {
  if (samples.length === 0) {
    return 0;
  }
  const coeff = 2 * Math.cos((2 * Math.PI * freq) / rate);
  let s1 = 0;
  let s2 = 0;
  let energy = 0;
  for (const x of samples) {
    energy += x * x;
    const s0 = x + coeff * s1 - s2;
    s2 = s1;
    s1 = s0;
  }
  if (energy === 0) {
    return 0;
  }
  const power = s1 * s1 + s2 * s2 - coeff * s1 * s2;
  return Math.max(0, Math.min(1, (2 * power) / (samples.length * energy)));
}

// ---- errors -------------------------------------------------------------------------------

function showError(e: DemoError | null): void {
  ocDemo.lastError = e;
  ui.errorBox.hidden = e === null;
  ui.errorCode.textContent = e?.code ?? '';
  ui.error.textContent = e?.message ?? '';
}

function asDemoError(e: unknown): DemoError {
  if (e instanceof OracleCallError) {
    return { code: e.code, message: e.message };
  }
  return { code: 'setup', message: e instanceof Error ? e.message : String(e) };
}

// ---- signing in ---------------------------------------------------------------------------

const wasmUrl = new URL('./matrix_sdk_crypto_wasm_bg.wasm', location.href);
const e2eeWorker = (): Worker => new Worker(new URL('./e2ee-worker.js', location.href), { type: 'module' });

function renderAccount(): void {
  const signedIn = client !== null;
  ui.form.hidden = signedIn;
  ui.signedIn.hidden = !signedIn;
  ui.me.textContent = client?.userId ?? '';
  ui.myDevice.textContent = client?.deviceId ?? '';
  const saved = OracleClient.savedUser(localStorage);
  ui.restore.hidden = signedIn || saved === null;
  ui.restore.textContent = saved === null ? 'Continue' : `Continue as ${saved}`;
  renderButtons();
}

function renderButtons(): void {
  const s = call?.getSnapshot();
  const inCall = s !== undefined && s.phase !== 'ended' && s.phase !== 'failed';
  const can = client !== null && config !== null && !busy && !inCall;
  ui.callAudio.disabled = !can;
  ui.callVideo.disabled = !can;
  ui.hangup.disabled = !inCall;
  ui.mute.disabled = !inCall || s?.phase === 'ending';
  ui.signin.disabled = busy || config === null;
  ui.restore.disabled = busy || config === null;
  ui.logout.disabled = busy || inCall;
}

async function signedIn(c: OracleClient): Promise<void> {
  client = c;
  ui.password.value = '';
  renderAccount();
  await renderOracleKey(null);
  await refreshHistory();
}

/** What login and restore share: where the page's Matrix and oracle servers are, the wasm, the
 * session's storage, and the key-transparency directory if the config names one. */
function sessionOptions(cfg: DemoConfig) {
  return { homeserverUrl: cfg.homeserverUrl, serverUrl: cfg.serverUrl, wasmUrl, storage: localStorage, ...ktOf(cfg) };
}

/** Signs in with `open` (null: no saved session to restore), one attempt at a time. */
function signInWith(open: (cfg: DemoConfig) => Promise<OracleClient | null>, busyLabel?: string): void {
  if (config === null || busy) {
    return;
  }
  const cfg = config;
  busy = true;
  showError(null);
  renderButtons();
  if (busyLabel !== undefined) {
    ui.signin.textContent = busyLabel;
  }
  void (async () => {
    try {
      const c = await open(cfg);
      if (c === null) {
        showError({ code: 'setup', message: 'no saved session; sign in' });
      } else {
        await signedIn(c);
      }
    } catch (e) {
      showError(asDemoError(e));
    } finally {
      busy = false;
      ui.signin.textContent = 'Sign in';
      renderAccount();
    }
  })();
}

ui.form.addEventListener('submit', (ev) => {
  ev.preventDefault();
  signInWith(
    (cfg) =>
      OracleClient.login({
        ...sessionOptions(cfg),
        user: ui.user.value.trim(),
        password: ui.password.value,
        deviceName: 'oracle-calls demo page',
      }),
    'Signing in…',
  );
});

ui.restore.addEventListener('click', () => {
  signInWith((cfg) => OracleClient.restore(sessionOptions(cfg)));
});

ui.logout.addEventListener('click', () => {
  const c = client;
  if (c === null || busy) {
    return;
  }
  busy = true;
  renderButtons();
  void (async () => {
    try {
      await c.logout();
    } catch (e) {
      showError(asDemoError(e));
    } finally {
      client = null;
      call = null;
      busy = false;
      ui.history.replaceChildren();
      renderAccount();
      render(null);
    }
  })();
});

// ---- the oracle -----------------------------------------------------------------------------

/** The key ids the oracle publishes now, from an `oracleKeyChanged` error's details. */
function offeredKeys(details: Readonly<Record<string, unknown>> | undefined): string[] {
  const offered = details?.['offered'];
  return typeof offered === 'string' ? offered.split(', ').filter((k) => /^[0-9a-f]{32}$/.test(k)) : [];
}

async function renderOracleKey(s: CallSnapshot | null): Promise<void> {
  ui.oracleKey.classList.remove('key-changed');
  if (s?.error?.code === 'oracleKeyChanged') {
    const offered = offeredKeys(s.error.details);
    ui.oracleKey.textContent = `key changed! The oracle now publishes ${offered.join(', ') || 'another key'}, not the key you verified; the call was refused. Check the new key with the oracle's operator before accepting it.`;
    ui.oracleKey.classList.add('key-changed');
    const first = offered[0];
    ui.acceptBox.hidden = first === undefined;
    if (first !== undefined) {
      ui.acceptKey.textContent = `I verified ${first}: accept it and call again`;
      ui.acceptKey.dataset['key'] = first;
    }
    return;
  }
  const verifiedBy = config?.keyTransparency === undefined ? null : 'verified by key transparency';
  if (s !== null && s.oracle.keyId !== null) {
    const how = verifiedBy ?? (s.oracle.pinnedOnFirstUse ? 'pinned on first use' : 'pinned');
    ui.oracleKey.textContent = `${s.oracle.keyId} (${how})`;
    return;
  }
  if (client !== null && config !== null) {
    try {
      const pins = await client.pins.get(config.oracleDid);
      const key = pins?.keys[0];
      const unverified = verifiedBy === null ? 'not verified yet (pinned on first call)' : 'verified by key transparency at the first call';
      const epoch = pins?.ktEpoch === undefined ? '' : `, key-transparency epoch ${pins.ktEpoch}`;
      ui.oracleKey.textContent = key === undefined ? unverified : `${key.keyId} (${verifiedBy ?? 'pinned'}${epoch})`;
    } catch (e) {
      ui.oracleKey.textContent = `pins unreadable: ${asDemoError(e).message}`;
    }
  }
}

// ---- the call -------------------------------------------------------------------------------

function startCall(type: 'audio' | 'video'): void {
  if (client === null || config === null) {
    return;
  }
  showError(null);
  unsubscribe?.();
  const loopback = ['127.0.0.1', 'localhost', '[::1]'].includes(location.hostname);
  const iceServers = config.iceServers ?? (loopback ? [] : undefined);
  const c = client.callOracle({
    oracleDid: config.oracleDid,
    type,
    keyDerivation: ocDemo.keyDerivation,
    earlyJoin: ocDemo.earlyJoin,
    e2eeWorker,
    ...(iceServers === undefined ? {} : { rtcConfig: { iceServers } }),
    ...(ocDemo.capture === null ? {} : { capture: ocDemo.capture }),
    ...(ocDemo.acceptOracleKey === null ? {} : { acceptOracleKey: ocDemo.acceptOracleKey }),
    ...(ocDemo.wrongMediaKey || ocDemo.plaintextRoom !== null
      ? {
          dangerousTestHooks: {
            wrongMediaKey: ocDemo.wrongMediaKey,
            ...(ocDemo.plaintextRoom === null ? {} : { plaintextRoom: ocDemo.plaintextRoom }),
          },
        }
      : {}),
  });
  ocDemo.acceptOracleKey = null;
  ui.acceptBox.hidden = true;
  call = c;
  c.attachOracleMedia(ui.audio, ui.video);
  let lastPhase = '';
  unsubscribe = c.subscribe(() => {
    const s = c.getSnapshot();
    render(s);
    if (s.phase !== lastPhase) {
      lastPhase = s.phase;
      if (s.phase === 'ended' || s.phase === 'failed') {
        void refreshHistory();
      }
    }
  });
  render(c.getSnapshot());
  c.ready.catch(() => undefined);
}

ui.acceptKey.addEventListener('click', () => {
  const key = ui.acceptKey.dataset['key'];
  if (key !== undefined) {
    ocDemo.acceptOracleKey = key;
    startCall('audio');
  }
});
ui.callAudio.addEventListener('click', () => startCall('audio'));
ui.callVideo.addEventListener('click', () => startCall('video'));
ui.hangup.addEventListener('click', () => {
  void call?.end().catch((e: unknown) => showError(asDemoError(e)));
});
ui.enableAudio.addEventListener('click', () => {
  void call?.startAudio().catch((e: unknown) => showError(asDemoError(e)));
});
ui.mute.addEventListener('click', () => {
  const c = call;
  if (c === null) {
    return;
  }
  const muted = c.getSnapshot().mic.muted;
  void c.setMicrophoneEnabled(muted).catch((e: unknown) => showError(asDemoError(e)));
});
ui.video.addEventListener('resize', () => {
  ui.video.dataset['live'] = '1';
});

/** An RMS level (0..1) on a meter: −60 dBFS … 0 dBFS. */
function meter(rms: number): number {
  if (rms <= 0.001) {
    return 0;
  }
  return Math.min(1, (20 * Math.log10(rms) + 60) / 60);
}

function render(s: CallSnapshot | null): void {
  const phase = s?.phase ?? 'idle';
  ui.phase.textContent = PHASE_WORDS[phase] + (s?.endReason ? ` (${s.endReason})` : '');
  ui.phase.className = `phase ${phase}`;
  const e = s?.encryption;
  const failures = s?.decryptionFailures ?? 0;
  const secure =
    s !== null && e !== undefined && e.matrixEvent && e.localMedia && e.oracleMedia === true && failures === 0;
  const live = phase !== 'ended' && phase !== 'failed';
  ui.lock.hidden = !(secure && live);
  ui.audioBlocked.hidden = !(live && s?.audioBlocked === true);
  const problems: string[] = [];
  if (failures > 0) {
    problems.push(`${failures} decryption failure${failures === 1 ? '' : 's'}: the oracle's media is not played`);
  }
  if ((s?.refusedTracks ?? 0) > 0) {
    problems.push('an unencrypted oracle track was refused');
  }
  ui.insecure.hidden = problems.length === 0;
  ui.insecure.textContent = problems.length === 0 ? '' : `⚠ ${problems.join('; ')}`;
  ui.micLevel.value = meter(s?.mic.level ?? 0);
  ui.oracleLevel.value = meter(s?.oracle.level ?? 0);
  ui.mute.textContent = s?.mic.muted ? 'Unmute' : 'Mute';
  const items = (s?.timeline ?? []).map((t) => {
    const li = document.createElement('li');
    li.append(`${PHASE_NAMES[t.phase]} `);
    const ms = document.createElement('span');
    ms.className = 'ms';
    ms.textContent = `${t.ms} ms`;
    li.append(ms);
    return li;
  });
  if (ui.timeline.childElementCount !== items.length) {
    ui.timeline.replaceChildren(...items);
  }
  if (s?.error) {
    showError({ code: s.error.code, message: s.error.message });
  }
  if (s !== null && (s.oracle.keyId !== null || s.error?.code === 'oracleKeyChanged')) {
    void renderOracleKey(s);
  }
  if (!live) {
    ui.video.removeAttribute('data-live');
  }
  renderButtons();
}

// ---- history --------------------------------------------------------------------------------

async function refreshHistory(): Promise<void> {
  if (client === null) {
    return;
  }
  try {
    const calls = await client.listCalls({ limit: 20 });
    ui.history.replaceChildren(
      ...calls.map((c) => {
        const tr = document.createElement('tr');
        const cells = [
          new Date(c.callStartedAt).toLocaleString(),
          c.callType,
          c.callStatus,
          c.reason ?? '',
          c.callId.length > 28 ? `${c.callId.slice(0, 14)}…${c.callId.slice(-10)}` : c.callId,
        ];
        cells.forEach((text, i) => {
          const td = document.createElement('td');
          td.textContent = text;
          if (i === 4) {
            td.className = 'id';
            td.title = c.callId;
          }
          tr.append(td);
        });
        return tr;
      }),
    );
  } catch (e) {
    showError(asDemoError(e));
  }
}

// ---- start ----------------------------------------------------------------------------------

function parseConfig(v: unknown): DemoConfig {
  if (typeof v !== 'object' || v === null) {
    throw new OracleCallError('setup', 'config.json is not an object');
  }
  const o = v as Record<string, unknown>;
  for (const f of ['homeserverUrl', 'serverUrl', 'oracleDid']) {
    if (typeof o[f] !== 'string' || (o[f] as string).length === 0) {
      throw new OracleCallError('setup', `config.json: ${f} must be a non-empty string`);
    }
  }
  const cfg: DemoConfig = {
    homeserverUrl: o['homeserverUrl'] as string,
    serverUrl: o['serverUrl'] as string,
    oracleDid: o['oracleDid'] as string,
  };
  if (Array.isArray(o['iceServers'])) {
    cfg.iceServers = o['iceServers'] as RTCIceServer[];
  }
  const kt = o['keyTransparency'];
  if (kt !== undefined && kt !== null) {
    const k = kt as Record<string, unknown>;
    if (typeof kt !== 'object' || typeof k['url'] !== 'string' || typeof k['publicKey'] !== 'object' || k['publicKey'] === null) {
      throw new OracleCallError('setup', 'config.json: keyTransparency must be {"url", "publicKey"}');
    }
    cfg.keyTransparency = { url: k['url'], publicKey: k['publicKey'] };
  }
  return cfg;
}

async function main(): Promise<void> {
  renderAccount();
  try {
    const r = await fetch('./config.json', { cache: 'no-store' });
    if (!r.ok) {
      throw new OracleCallError('setup', `config.json: HTTP ${r.status}`);
    }
    config = parseConfig(await r.json());
    ui.oracleDid.textContent = config.oracleDid;
    ocDemo.ready = true;
  } catch (e) {
    showError(asDemoError(e));
  }
  renderAccount();
}

void main();

#!/usr/bin/env node
// Drives the browser SDK's demo page (sdk/browser/demo, served by `oracle-lab web`) in
// Debian's headless Chromium through playwright-core, as a person would: signs in, calls the
// oracle, listens, hangs up. What it saw is printed as ONE JSON line on stdout; progress and
// diagnostics go to stderr. The Rust test crates/lab/tests/browser_sdk.rs runs it against the
// real stack, the oracle-calls server and its echo agent, and asserts on both.
//
// Usage: node sdk/browser/test/e2e/driver.mjs < config.json   (the password only on stdin)
//
// stdin (one JSON object):
//   {"pageUrl": "http://127.0.0.1:PORT/", "user": "<localpart or @id>", "password": "…",
//    "scenario": "audio", "seconds": 4, "toneHz": 660, "toneWav": "/tmp/…/tone.wav",
//    "screenshotsDir": "/tmp/…/shots", "keyDerivation": "hkdf" | "pbkdf2",
//    "errorShot": true, "continueFile": "/tmp/…/go", "timeoutS": 150}
//   toneWav is written (a sine at toneHz) when it does not exist; Chromium's fake microphone
//   plays it in a loop (and the fake camera shows its test pattern).
// Scenarios (through the page's element ids and window.ocDemo):
//   audio: sign in; Call (audio); wait for the phase `active` with first oracle audio; every
//     500 ms for `seconds`: window.ocDemo.oracleAudioPower(toneHz) and at 1.5x toneHz (a
//     control), decryption failures, the lock; read the snapshot (timeline, encryption);
//     Hang up; wait for `ended`; read window.ocDemo.calls().
//   video: the same with Call (video), plus the oracle's video frames shown and its size.
//   wrongKey: ocDemo.wrongMediaKey (test hook); call; listen until `seconds` after the agent
//     joined: power, failures, lock, the #insecure warning; hang up.
//   plaintextGuard: ocDemo.plaintextRoom = 'unknown', then 'unencrypted' (test hook); each call
//     must fail; its error code and timeline are reported.
//   restore: sign in, reload, the #restore offer, restore (POST /login requests counted), then
//     an audio call as `audio`.
//   keyChanged: an audio call; hang up; "driver: checkpoint keyChanged" on stderr, then wait
//     for continueFile (the caller replaces the oracle's key meanwhile); a call that must be
//     refused (error, #oracle-key text, #accept-key offer); accept; an audio call as `audio`.
//   failures: forced in the page: OpenID tokens refused from the sign-in on (page.route), the
//     oracle server unreachable, the sync answered 403, getUserMedia denied, encoded transforms
//     removed; each call's outcome (phase, error code, call id, timeline, shown code).
//   bench (also "calls", "block", "goDir", optional "goWaitS" s, default 300, optional
//     "earlyJoin": "alternate" for every other call placed with earlyJoin false): sign in; one
//     warm-up call; then `calls` audio calls in blocks of `block`: before each block the line
//     {"benchWait": b} on stdout, then wait for the file goDir/go-<b>; each call (Call (audio)
//     → active with firstAudio → the tone's echo heard (in the newest 20 ms of the SDK's
//     oracle analyser, found by wrapping AnalyserNode) → Hang up → ended) is one stdout line
//     {"benchCall": {block, index, warmup, earlyJoinAsked, callId, startedAtEpochMs,
//     echoAtEpochMs, mediaJoin, timeline, encryption, decryptionFailures}} (the wall clock just before callOracle() and when the
//     echo was heard; the warm-up's line has warmup true), all before the result line.
//     `oracle-lab bench browser` runs it.
//   With errorShot, afterwards a sign-in with a wrong password in a fresh browser context, for
//   the error state (errorState in the result).
// stdout (one line): {"ok", "scenario", "error", "chromium", "console": [{type, text, url}],
//   "pageErrors", "cspViolations", "screenshots": {name: path}, "steps": {name: ms}, …}
// Exit status: 0 the scenario ran; 1 it failed (the result line says where); 2 bad input;
//   3 hard timeout; 128+n on signal n. The browser is closed on every path.

import { access, mkdir } from 'node:fs/promises';
import { join } from 'node:path';

import { chromium } from 'playwright-core';

import { writeToneWav } from './tone.mjs';

const CHROMIUM = process.env.BROWSER_PEER_CHROMIUM || '/usr/bin/chromium';
const START = Date.now();

// As tests/browser/peer.mjs, plus the fake camera/microphone (the microphone plays the tone).
function chromiumArgs(toneWav) {
  return [
    '--disable-gpu',
    '--disable-quic',
    '--no-first-run',
    '--disable-background-networking',
    '--disable-component-update',
    '--disable-sync',
    '--autoplay-policy=no-user-gesture-required',
    '--use-fake-ui-for-media-stream',
    '--use-fake-device-for-media-stream',
    `--use-file-for-fake-audio-capture=${toneWav}`,
  ];
}

const say = (msg) => process.stderr.write(`driver: ${msg}\n`);
const elapsed = () => Date.now() - START;

class InputError extends Error {}
class StepError extends Error {}

async function readStdin() {
  const chunks = [];
  for await (const chunk of process.stdin) {
    chunks.push(chunk);
  }
  return Buffer.concat(chunks).toString('utf8');
}


function parseConfig(text) {
  let cfg;
  try {
    cfg = JSON.parse(text);
  } catch (e) {
    throw new InputError(`stdin is not one JSON object: ${e.message}`);
  }
  if (cfg === null || typeof cfg !== 'object' || Array.isArray(cfg)) {
    throw new InputError('stdin must hold one JSON object');
  }
  const need = (ok, what) => {
    if (!ok) {
      throw new InputError(what);
    }
  };
  const str = (v) => typeof v === 'string' && v.length > 0;
  need(str(cfg.pageUrl) && /^https?:\/\//.test(cfg.pageUrl), '"pageUrl" must be an http(s) URL');
  need(str(cfg.user), '"user" must be a non-empty string');
  need(str(cfg.password), '"password" must be a non-empty string');
  const scenario = cfg.scenario ?? 'audio';
  need(SCENARIOS.has(scenario), `"scenario" must be one of: ${[...SCENARIOS.keys()].join(', ')}`);
  const num = (v, d) => (v === undefined || v === null ? d : v);
  const seconds = num(cfg.seconds, 4);
  const toneHz = num(cfg.toneHz, 660);
  const timeoutS = num(cfg.timeoutS, 150);
  for (const [name, v] of [['seconds', seconds], ['toneHz', toneHz], ['timeoutS', timeoutS]]) {
    need(typeof v === 'number' && Number.isFinite(v) && v > 0, `"${name}" must be a positive number`);
  }
  // A bench run places many calls: it may run for an hour.
  const maxTimeoutS = scenario === 'bench' ? 3600 : 600;
  need(seconds <= 120 && timeoutS <= maxTimeoutS, `"seconds" at most 120, "timeoutS" at most ${maxTimeoutS}`);
  need(toneHz < 4000, '"toneHz" must be below 4000');
  need(str(cfg.toneWav), '"toneWav" must be a file path');
  need(str(cfg.screenshotsDir), '"screenshotsDir" must be a directory path');
  const keyDerivation = cfg.keyDerivation ?? 'hkdf';
  need(keyDerivation === 'hkdf' || keyDerivation === 'pbkdf2', '"keyDerivation" must be "hkdf" or "pbkdf2"');
  let bench = null;
  if (scenario === 'bench') {
    const calls = cfg.calls;
    const block = num(cfg.block, 5);
    need(Number.isInteger(calls) && calls > 0 && calls <= 500, '"calls" must be an integer in 1..500');
    need(Number.isInteger(block) && block > 0 && block <= calls, '"block" must be an integer in 1..calls');
    need(str(cfg.goDir), '"goDir" must be a directory path (the bench scenario waits for go-<block> files there)');
    const goWaitS = num(cfg.goWaitS, 300);
    need(typeof goWaitS === 'number' && Number.isFinite(goWaitS) && goWaitS > 0 && goWaitS <= 1800, '"goWaitS" must be in (0, 1800]');
    need(cfg.earlyJoin === undefined || cfg.earlyJoin === 'alternate', '"earlyJoin" must be "alternate" when given');
    bench = { calls, block, goDir: cfg.goDir, goWaitS, alternateEarlyJoin: cfg.earlyJoin === 'alternate' };
  }
  return {
    bench,
    pageUrl: cfg.pageUrl,
    user: cfg.user,
    password: cfg.password,
    scenario,
    seconds,
    toneHz,
    toneWav: cfg.toneWav,
    screenshotsDir: cfg.screenshotsDir,
    keyDerivation,
    errorShot: cfg.errorShot ?? true,
    continueFile: typeof cfg.continueFile === 'string' ? cfg.continueFile : null,
    timeoutS,
  };
}

let browser = null;
let shotsDir = '.';
let cleaning = null;
let stopping = false;
// What every path reports: filled as the run goes.
const result = {
  ok: false,
  scenario: null,
  error: null,
  chromium: null,
  console: [],
  pageErrors: [],
  cspViolations: [],
  requests: [],
  storage: {},
  screenshots: {},
  steps: {},
};

function cleanup() {
  if (!cleaning) {
    cleaning = (async () => {
      if (browser) {
        const closed = browser.close().catch(() => {});
        const timedOut = await Promise.race([
          closed.then(() => false),
          new Promise((r) => setTimeout(() => r(true), 5000).unref()),
        ]);
        if (timedOut) {
          say('browser did not close in 5 s; it is killed on exit');
        }
      }
    })();
  }
  return cleaning;
}

let printed = null;
/** Writes the result line once; resolves when it is flushed (a pipe takes 64 KiB at a time, and
 * process.exit() would cut the rest). */
function printResult() {
  if (!printed) {
    printed = new Promise((resolve) => {
      process.stdout.write(`${JSON.stringify(result)}\n`, () => resolve());
    });
  }
  return printed;
}

async function exitWith(code) {
  await cleanup();
  await printResult();
  process.exit(code);
}

for (const [sig, n] of [['SIGINT', 2], ['SIGTERM', 15], ['SIGHUP', 1]]) {
  process.on(sig, () => {
    say(`${sig}: closing the browser`);
    stopping = true;
    result.error = `stopped by ${sig}`;
    exitWith(128 + n);
  });
}

/** Records console messages, page errors and CSP violations of every page of `context`. */
async function watch(context, label) {
  await context.exposeFunction('__ocDriverCsp', (v) => {
    result.cspViolations.push({ page: label, ...v });
    say(`[${label}] CSP violation: ${JSON.stringify(v)}`);
  });
  await context.addInitScript(() => {
    document.addEventListener('securitypolicyviolation', (e) => {
      // eslint-disable-next-line no-undef
      window.__ocDriverCsp({
        directive: e.effectiveDirective,
        blocked: e.blockedURI,
        source: e.sourceFile,
        line: e.lineNumber,
        sample: e.sample,
      });
    });
  });
  context.on('page', (page) => attachPage(page, label));
}

function attachPage(page, label) {
  page.on('console', (msg) => {
    const entry = { page: label, ms: elapsed(), type: msg.type(), text: msg.text(), url: msg.location()?.url ?? '' };
    result.console.push(entry);
    if (entry.type === 'debug' || entry.type === 'info') {
      return; // kept in the result; too many for stderr (matrix-sdk-crypto's tracing)
    }
    say(`[${label}] [${entry.type}] ${entry.text}${entry.url ? ` (${entry.url})` : ''}`);
  });
  page.on('pageerror', (err) => {
    const text = String(err?.message ?? err);
    result.pageErrors.push({ page: label, text });
    say(`[${label}] page error: ${text}`);
  });
  page.on('crash', () => {
    result.pageErrors.push({ page: label, text: 'page crashed' });
    say(`[${label}] page crashed`);
  });
  page.on('request', (req) => {
    // Every request the page makes, with its body: the caller searches them for the call key.
    let body = null;
    try {
      body = req.postData();
    } catch {
      body = '(binary)';
    }
    if (body !== null && /\/_matrix\/client\/v3\/login$/.test(new URL(req.url()).pathname)) {
      body = '(withheld: the login holds the password)';
    }
    result.requests.push({
      page: label,
      method: req.method(),
      url: req.url(),
      body: body === null ? null : body.slice(0, 16384),
    });
  });
  page.on('worker', (worker) => {
    say(`[${label}] worker started: ${worker.url()}`);
  });
}

async function shot(page, name) {
  const path = join(shotsDir, `${String(Object.keys(result.screenshots).length).padStart(2, '0')}-${name}.png`);
  try {
    await page.screenshot({ path, fullPage: true, timeout: 10000 });
    result.screenshots[name] = path;
    say(`screenshot ${name}: ${path}`);
  } catch (e) {
    say(`screenshot ${name} failed: ${e.message}`);
  }
}

/** Runs `fn` as the step `name`, timing it; a failure names the step. */
async function step(name, fn) {
  const t = Date.now();
  say(`step ${name} …`);
  try {
    const v = await fn();
    result.steps[name] = Date.now() - t;
    say(`step ${name} done in ${Date.now() - t} ms`);
    return v;
  } catch (e) {
    result.steps[name] = Date.now() - t;
    const msg = String(e?.message ?? e).split('\n')[0];
    throw new StepError(`${name}: ${msg}`);
  }
}

const snapshot = (page) => page.evaluate(() => window.ocDemo?.snapshot() ?? null);
const lastError = (page) => page.evaluate(() => window.ocDemo?.lastError ?? null);
const visible = (page, sel) => page.locator(sel).isVisible();
const text = (page, sel) => page.locator(sel).innerText({ timeout: 2000 }).catch(() => null);

async function waitReady(page) {
  await page.waitForFunction(() => window.ocDemo?.ready === true, null, { timeout: 20000 });
}

async function signIn(page, cfg) {
  await page.fill('#user', cfg.user);
  await page.fill('#password', cfg.password);
  await page.click('#signin');
}

/** Signed in: Log out shown and Call (audio) enabled, or the page reported an error. */
async function waitSignedIn(page, timeout, { errorsFail = true } = {}) {
  await page.waitForFunction(
    (failOnError) => {
      const call = document.querySelector('#call-audio');
      const logout = document.querySelector('#logout');
      const shown = (el) => el && el.offsetParent !== null && !el.hidden;
      return (
        (shown(logout) && shown(call) && !call.disabled) || (failOnError && window.ocDemo?.lastError != null)
      );
    },
    errorsFail,
    { timeout, polling: 100 },
  );
  const err = await lastError(page);
  if (err && errorsFail) {
    throw new Error(`sign-in failed: ${err.code}: ${err.message}`);
  }
}

const CONNECTING = new Set(['resolving', 'wrapping', 'room', 'sending', 'syncing', 'joining', 'waitingForOracle']);

/** Polls the snapshot until `done(snap)`; screenshots the first connecting phase seen. */
async function followCall(page, done, timeoutMs, shotConnecting) {
  const deadline = Date.now() + timeoutMs;
  let last = null;
  const seen = [];
  while (Date.now() < deadline) {
    last = await snapshot(page);
    if (last && seen[seen.length - 1] !== last.phase) {
      seen.push(last.phase);
      say(`phase ${last.phase} (${elapsed()} ms)`);
      if (shotConnecting && CONNECTING.has(last.phase) && !result.screenshots.connecting) {
        await shot(page, 'connecting');
      }
    }
    if (last && done(last)) {
      return { snap: last, seen };
    }
    if (last?.phase === 'failed') {
      const e = last.error ? `${last.error.code}: ${last.error.message}` : 'no error';
      throw new Error(`the call failed (${e}); phases ${seen.join(' → ')}`);
    }
    await new Promise((r) => setTimeout(r, 100));
  }
  throw new Error(`timed out; phases ${seen.join(' → ')}; last snapshot ${JSON.stringify(last)}`);
}

/** Opens the page in `context` and signs in; screenshots idle and signed-in. */
async function openAndSignIn(context, cfg) {
  const page = await context.newPage();
  await step('load', async () => {
    await page.goto(cfg.pageUrl, { timeout: 20000 });
    await waitReady(page);
  });
  await shot(page, 'idle');
  await step('signIn', async () => {
    await signIn(page, cfg);
    await waitSignedIn(page, 60000);
  });
  result.userId = await page.evaluate(() => window.ocDemo.userId());
  result.deviceId = await page.evaluate(() => window.ocDemo.deviceId());
  await shot(page, 'signed-in');
  await page.evaluate((kd) => {
    window.ocDemo.keyDerivation = kd;
  }, cfg.keyDerivation);
  result.keyDerivation = await page.evaluate(() => window.ocDemo.keyDerivation);
  return page;
}

/** Clicks `button` and follows the call until it is active with first oracle audio. */
async function placeCall(page, button, name = 'call') {
  const active = await step(name, async () => {
    await page.click(button);
    return followCall(
      page,
      (s) => s.phase === 'active' && s.timeline.some((t) => t.phase === 'firstAudio'),
      60000,
      true,
    );
  });
  result.phasesSeen = active.seen;
  result.snapshots = { ...(result.snapshots ?? {}), active: active.snap };
  return active.snap;
}

/** Every 500 ms for `seconds`: the tone's power in the oracle's decoded audio, a control
 * frequency, the decryption failures and (video) the oracle's frames shown. */
async function listen(page, cfg, name = 'listen') {
  const samples = [];
  const start = Date.now();
  await step(name, async () => {
    while (Date.now() - start < cfg.seconds * 1000) {
      await new Promise((r) => setTimeout(r, 500));
      const t = Date.now() - start;
      // The tone, and a frequency it does not hold (a control: a measurement that reads
      // anything as the tone fails there).
      const [p, control, frames] = await page.evaluate(
        ([hz, off]) => [
          window.ocDemo.oracleAudioPower(hz),
          window.ocDemo.oracleAudioPower(off),
          window.ocDemo.oracleVideoFrames?.() ?? null,
        ],
        [cfg.toneHz, cfg.toneHz * 1.5],
      );
      const s = await snapshot(page);
      samples.push({
        ms: t,
        power: p,
        control,
        videoFrames: frames,
        decryptionFailures: s?.decryptionFailures ?? null,
        lock: await visible(page, '#lock'),
      });
      if (t >= 2000 && result.decryptionFailuresAt2s === undefined) {
        result.decryptionFailuresAt2s = s?.decryptionFailures ?? null;
      }
    }
  });
  return samples;
}

/** Clicks hang-up. `result.hangupAt` keeps the first one: livekit-client may complain of its
 * data channels closing after any hang-up (the server closes the room), and a scenario with
 * several calls hangs up more than once. */
async function clickHangup(page) {
  result.hangupAt ??= elapsed();
  await page.click('#hangup');
}

/** Hangs up and waits for `ended`; reads the history after (end() awaits the server). */
async function hangUp(page) {
  const ended = await step('hangup', async () => {
    await clickHangup(page);
    return followCall(page, (s) => s.phase === 'ended', 30000, false);
  });
  result.snapshots.ended = ended.snap;
  result.lockVisibleEnded = await visible(page, '#lock');
  await step('history', async () => {
    result.calls = await page.evaluate(() => window.ocDemo.calls());
  });
  result.historyText = await text(page, '#history');
  await shot(page, 'ended');
  result.lastError = await lastError(page);
}

/** What the page keeps: every localStorage entry and the IndexedDB database names. */
async function storageOf(page) {
  return page.evaluate(async () => {
    const local = {};
    for (let i = 0; i < localStorage.length; i++) {
      const k = localStorage.key(i);
      local[k] = localStorage.getItem(k);
    }
    const dbs = (await indexedDB.databases()).map((d) => d.name);
    return { localStorage: local, indexedDb: dbs };
  });
}

/** A call of `button`'s type: connect, listen, look, hang up. */
async function callListenHangUp(page, cfg, button) {
  result.decryptionFailuresAt2s = undefined;
  // Before any call there is no oracle audio: the measurement must say so.
  result.powerBeforeCall = await page.evaluate((hz) => window.ocDemo.oracleAudioPower(hz), cfg.toneHz);
  await placeCall(page, button);
  result.power = await listen(page, cfg);
  result.lockVisible = await visible(page, '#lock');
  result.phaseText = await text(page, '#phase');
  result.oracleKeyText = await text(page, '#oracle-key');
  result.timelineText = await text(page, '#timeline');
  result.videoSize = await page.evaluate(() => {
    const v = document.querySelector('#oracle-video');
    return v ? { width: v.videoWidth, height: v.videoHeight } : null;
  });
  await shot(page, 'active');
  result.snapshots.beforeHangup = await snapshot(page);
  result.storage.inCall = await storageOf(page);
  await hangUp(page);
  result.storage.ended = await storageOf(page);
}

/** Key transparency: the page verifies the oracle from the directory, then the outcome of an
 * audio call: `refused` (the snapshot's error, what the page shows) or, when it connects, the
 * usual call, listen and hang-up. */
async function keyTransparencyScenario(context, cfg) {
  const page = await openAndSignIn(context, cfg);
  const first = await callOutcome(page, 'ktCall');
  result.ktOutcome = { phase: first.phase, error: first.error, callId: first.callId };
  result.oracleKeyText = await text(page, '#oracle-key');
  result.storageAfterCall = await storageOf(page);
  if (first.phase === 'failed') {
    result.shownCode = await text(page, '#error-code');
    await shot(page, 'kt-refused');
  } else {
    await shot(page, 'kt-active');
    result.snapshots = { active: first };
    await hangUp(page);
  }
  await page.close();
}

async function audioScenario(context, cfg) {
  const page = await openAndSignIn(context, cfg);
  await callListenHangUp(page, cfg, '#call-audio');
  await page.close();
}

async function videoScenario(context, cfg) {
  const page = await openAndSignIn(context, cfg);
  await callListenHangUp(page, cfg, '#call-video');
  await page.close();
}

/** The page keys its media with a wrong key (test hook): the oracle's audio must not play, the
 * failures must be counted and shown, and the lock must stay hidden. */
async function wrongKeyScenario(context, cfg) {
  const page = await openAndSignIn(context, cfg);
  await page.evaluate(() => {
    window.ocDemo.wrongMediaKey = true;
  });
  const joined = await step('call', async () => {
    await page.click('#call-audio');
    // Until the oracle's agent is in the room (its frames then arrive and do not decrypt).
    return followCall(
      page,
      (s) => s.timeline.some((t) => t.phase === 'agentJoined') || s.phase === 'active',
      60000,
      true,
    );
  });
  result.phasesSeen = joined.seen;
  result.snapshots = { joined: joined.snap };
  result.power = await listen(page, cfg);
  result.lockVisible = await visible(page, '#lock');
  result.insecureText = await text(page, '#insecure');
  result.insecureVisible = await visible(page, '#insecure');
  await shot(page, 'wrong-key');
  result.snapshots.beforeHangup = await snapshot(page);
  const s = result.snapshots.beforeHangup;
  if (s && s.phase !== 'failed' && s.phase !== 'ended') {
    const ended = await step('hangup', async () => {
      await clickHangup(page);
      return followCall(page, (x) => x.phase === 'ended' || x.phase === 'failed', 30000, false);
    }).catch((e) => ({ snap: null, error: e.message }));
    result.snapshots.ended = ended.snap;
  }
  result.lastError = await lastError(page);
  await page.close();
}

/** The plaintext guard (test hook): the call event must not be sent into a room the page does
 * not know, nor into an unencrypted one. */
async function plaintextGuardScenario(context, cfg) {
  const page = await openAndSignIn(context, cfg);
  result.plaintext = [];
  for (const mode of ['unknown', 'unencrypted']) {
    await page.evaluate((m) => {
      window.ocDemo.plaintextRoom = m;
    }, mode);
    const out = await callOutcome(page, `call-${mode}`);
    result.plaintext.push({
      mode,
      phase: out.phase,
      error: out.error,
      callId: out.callId,
      timeline: out.timeline,
      shownCode: await text(page, '#error-code'),
    });
    await shot(page, `plaintext-${mode}`);
    if (out.phase === 'active') {
      await clickHangup(page);
      await followCall(page, (x) => x.phase === 'ended', 30000, false).catch(() => null);
    }
    await page.evaluate(() => {
      window.ocDemo.plaintextRoom = null;
    });
  }
  await page.close();
}

/** Sign in, reload: the saved session is offered and restores the same device, with no new
 * login; then a call from the restored session. */
async function restoreScenario(context, cfg) {
  const page = await openAndSignIn(context, cfg);
  const before = { userId: result.userId, deviceId: result.deviceId };
  await step('reload', async () => {
    await page.reload({ timeout: 20000 });
    await waitReady(page);
    await page.waitForSelector('#restore', { state: 'visible', timeout: 10000 });
  });
  result.restoreText = await text(page, '#restore');
  await shot(page, 'restore-offered');
  const logins = [];
  page.on('request', (req) => {
    if (req.url().includes('/_matrix/client/v3/login') && req.method() === 'POST') {
      logins.push(req.url());
    }
  });
  await step('restore', async () => {
    await page.click('#restore');
    await waitSignedIn(page, 60000);
  });
  result.restore = {
    before,
    after: {
      userId: await page.evaluate(() => window.ocDemo.userId()),
      deviceId: await page.evaluate(() => window.ocDemo.deviceId()),
    },
    loginsAfterReload: logins.length,
  };
  await page.evaluate((kd) => {
    window.ocDemo.keyDerivation = kd;
  }, cfg.keyDerivation);
  await callListenHangUp(page, cfg, '#call-audio');
  // Sign out: the session and the device's crypto store go.
  await step('logout', async () => {
    await page.click('#logout');
    await page.waitForSelector('#signin', { state: 'visible', timeout: 20000 });
  });
  result.storage.loggedOut = await storageOf(page);
  result.restoreOfferedAfterLogout = await visible(page, '#restore');
  await shot(page, 'logged-out');
  await page.close();
}

/** A wrong password in a fresh context: the page's error state, with its code. */
async function errorState(cfg) {
  const context = await browser.newContext();
  await watch(context, 'wrong-password');
  const page = await context.newPage();
  await step('wrongPassword', async () => {
    await page.goto(cfg.pageUrl, { timeout: 20000 });
    await waitReady(page);
    await page.fill('#user', cfg.user);
    await page.fill('#password', `${cfg.password}-wrong`);
    await page.click('#signin');
    await page.waitForFunction(() => window.ocDemo?.lastError != null, null, { timeout: 30000, polling: 100 });
  });
  result.errorState = {
    lastError: await lastError(page),
    errorText: await text(page, '#error'),
    errorCode: await text(page, '#error-code'),
    errorVisible: await visible(page, '#error'),
  };
  await shot(page, 'error');
  await context.close();
}

/** Tells the caller (stderr) that the scenario reached `name`, and waits for its go-ahead: the
 * file `cfg.continueFile` appearing. */
async function checkpoint(name, cfg) {
  if (!cfg.continueFile) {
    throw new Error(`checkpoint ${name}: no "continueFile" in the config`);
  }
  say(`checkpoint ${name}`);
  const deadline = Date.now() + 90000;
  for (;;) {
    try {
      await access(cfg.continueFile);
      return;
    } catch {
      // not yet
    }
    if (Date.now() > deadline) {
      throw new Error(`no go-ahead within 90 s after checkpoint ${name}`);
    }
    await new Promise((r) => setTimeout(r, 200));
  }
}

/** A call pins the oracle's key; the caller replaces the oracle's key (checkpoint keyChanged);
 * the next call is refused with oracleKeyChanged before anything is sent, the page says so and
 * offers the new key; accepting it calls again, and that call connects. */
async function keyChangedScenario(context, cfg) {
  const page = await openAndSignIn(context, cfg);
  await placeCall(page, '#call-audio', 'firstCall');
  result.firstCall = { active: await snapshot(page) };
  await step('firstHangup', async () => {
    await clickHangup(page);
    return followCall(page, (s) => s.phase === 'ended', 30000, false);
  });
  result.firstCall.ended = await snapshot(page);
  await step('checkpoint', () => checkpoint('keyChanged', cfg));
  const refused = await callOutcome(page, 'refusedCall');
  await page.waitForSelector('#accept-box', { state: 'visible', timeout: 5000 }).catch(() => null);
  result.refused = {
    phase: refused.phase,
    error: refused.error,
    callId: refused.callId,
    timeline: refused.timeline,
    oracleKeyText: await text(page, '#oracle-key'),
    acceptVisible: await visible(page, '#accept-key'),
    acceptText: await text(page, '#accept-key'),
    shownCode: await text(page, '#error-code'),
  };
  await shot(page, 'key-changed');
  result.snapshots = {};
  await callListenHangUp(page, cfg, '#accept-key');
  await page.close();
}

/** Calls and waits for the outcome: `failed`, `active` or `ended` (60 s at most). */
async function callOutcome(page, name) {
  return step(name, async () => {
    await page.click('#call-audio');
    const deadline = Date.now() + 60000;
    for (;;) {
      const s = await snapshot(page);
      if (s && (s.phase === 'failed' || s.phase === 'active' || s.phase === 'ended')) {
        return s;
      }
      if (Date.now() > deadline) {
        throw new Error(`no outcome; last snapshot ${JSON.stringify(s)}`);
      }
      await new Promise((r) => setTimeout(r, 100));
    }
  });
}

/** Failures surface as typed errors, shown with their code, with nothing left half-open:
 * the oracle server unreachable, the OpenID token refused, the sync refused, the microphone
 * denied, and a browser without encoded transforms (each forced in the page). */
async function failuresScenario(context, cfg) {
  // 1. The homeserver will not issue OpenID tokens (needed for the call list and to claim a
  // prekey), from the sign-in on: the page keeps a token for later calls once it has one.
  const openid = '**/_matrix/client/v3/user/*/openid/request_token';
  let openidRefused = 0;
  const refuseOpenid = (route) => {
    openidRefused += 1;
    return route.fulfill({ status: 500, contentType: 'application/json', body: '{"errcode":"M_UNKNOWN","error":"test"}' });
  };
  const page = await context.newPage();
  await page.route(openid, refuseOpenid);
  await step('load', async () => {
    await page.goto(cfg.pageUrl, { timeout: 20000 });
    await waitReady(page);
  });
  await step('signIn', async () => {
    await signIn(page, cfg);
    await waitSignedIn(page, 60000, { errorsFail: false });
  });
  // The call list needs a token too: the page shows that failure.
  await page.waitForFunction(() => window.ocDemo?.lastError != null, null, { timeout: 10000 }).catch(() => null);
  result.historyError = await lastError(page);
  const { serverUrl } = await page.evaluate(() => fetch('./config.json').then((r) => r.json()));
  const origin = new URL(serverUrl).origin;
  result.failures = [];
  const record = async (kase, s) => {
    result.failures.push({
      case: kase,
      phase: s.phase,
      error: s.error,
      callId: s.callId,
      callStatus: s.callStatus,
      endReason: s.endReason,
      timeline: s.timeline,
      shownCode: await text(page, '#error-code'),
    });
    await shot(page, `failure-${kase}`);
    if (s.phase === 'active') {
      // Not the failure it should have been: end it, so the next case can call.
      await clickHangup(page);
      await followCall(page, (x) => x.phase === 'ended', 30000, false).catch(() => null);
    }
  };
  // Playwright hands route predicates a URL object.
  const isServer = (url) => String(url).startsWith(`${origin}/`);

  await record('openid', await callOutcome(page, 'call-openid'));
  await page.unroute(openid, refuseOpenid);
  result.openidRefused = openidRefused;

  // 2. The oracle's server refuses connections.
  const unreachable = (route) => route.abort('connectionrefused');
  await page.route(isServer, unreachable);
  await record('serverUnreachable', await callOutcome(page, 'call-serverUnreachable'));
  await page.unroute(isServer, unreachable);

  // 3. The server refuses the sync (PROTOCOL §6.7 error body).
  const isSync = (url) => isServer(url) && /\/calls\/[^/]+\/sync$/.test(new URL(String(url)).pathname);
  const refuseSync = (route) =>
    route.fulfill({
      status: 403,
      contentType: 'application/json',
      body: JSON.stringify({ error: { code: 'forbidden', message: 'refused by the test' } }),
    });
  await page.route(isSync, refuseSync);
  await record('syncRefused', await callOutcome(page, 'call-syncRefused'));
  await page.unroute(isSync, refuseSync);

  // 4. The microphone is denied.
  await page.evaluate(() => {
    window.__ocDriverGum = navigator.mediaDevices.getUserMedia.bind(navigator.mediaDevices);
    navigator.mediaDevices.getUserMedia = () =>
      Promise.reject(new DOMException('Permission denied (test)', 'NotAllowedError'));
  });
  const denied = await callOutcome(page, 'call-micDenied');
  // The call ends everywhere (server update, edit): wait until the page says it is done.
  await followCall(page, (s) => s.phase === 'failed' || s.phase === 'ended', 30000, false).catch(() => null);
  await record('micDenied', (await snapshot(page)) ?? denied);
  await page.evaluate(() => {
    navigator.mediaDevices.getUserMedia = window.__ocDriverGum;
  });

  // 5. A browser without encoded transforms (no frame encryption).
  await page.evaluate(() => {
    delete window.RTCRtpScriptTransform;
    delete RTCRtpSender.prototype.createEncodedStreams;
    delete RTCRtpReceiver.prototype.createEncodedStreams;
  });
  await record('e2eeUnsupported', await callOutcome(page, 'call-e2eeUnsupported'));
  await page.close();
}

/** One line on stdout, before the result line: what the bench command reads as it comes. */
function benchLine(obj) {
  return new Promise((resolve) => {
    process.stdout.write(`${JSON.stringify(obj)}\n`, () => resolve());
  });
}

/** Waits for the file `go-<block>` in `bench.goDir`: the bench command's go-ahead for a block
 * (it measures its own client between the browser's blocks). */
async function waitGo(bench, block) {
  const file = join(bench.goDir, `go-${block}`);
  await benchLine({ benchWait: block });
  say(`bench: waiting for ${file}`);
  const deadline = Date.now() + bench.goWaitS * 1000;
  for (;;) {
    try {
      await access(file);
      return;
    } catch {
      // not yet
    }
    if (Date.now() > deadline) {
      throw new Error(`no go-ahead for block ${block} within ${bench.goWaitS} s (${file})`);
    }
    await new Promise((r) => setTimeout(r, 50));
  }
}

/** One measured call: Call (audio) until active with the oracle's first audible audio (the
 * SDK's firstAudio) and until the tone the fake microphone plays comes back in the oracle's
 * decrypted audio (the echo: in the newest 20 ms the SDK's oracle analyser holds, RMS above
 * 0.001 and the Goertzel power at toneHz above 0.5, as the bench command checks each of the
 * Rust client's 20 ms frames; looked for every 10 ms in the page); the snapshot's timeline
 * (ms since callOracle()); Hang up until ended. */
async function benchCall(page, cfg, name) {
  let startedAtEpochMs = null;
  const active = await step(name, async () => {
    await page.waitForSelector('#call-audio:not([disabled])', { timeout: 10000 });
    // The button's handler calls callOracle() synchronously: the wall-clock time just before
    // it, which the bench command sets against when the oracle's agent got the job.
    startedAtEpochMs = await page.evaluate((hz) => {
      window.__ocBenchEcho = null;
      window.__ocBenchAnalysers = [];
      clearInterval(window.__ocBenchEchoTimer);
      const t = performance.timeOrigin + performance.now();
      document.querySelector('#call-audio').click();
      const heard = (a) => {
        const all = new Float32Array(a.fftSize);
        a.getFloatTimeDomainData(all);
        const rate = a.context.sampleRate;
        const x = all.subarray(all.length - Math.round(rate / 50));
        const coeff = 2 * Math.cos((2 * Math.PI * hz) / rate);
        let s1 = 0;
        let s2 = 0;
        let energy = 0;
        for (const v of x) {
          energy += v * v;
          const s0 = v + coeff * s1 - s2;
          s2 = s1;
          s1 = s0;
        }
        const rms = Math.sqrt(energy / x.length);
        const power = energy === 0 ? 0 : (2 * (s1 * s1 + s2 * s2 - coeff * s1 * s2)) / (x.length * energy);
        return rms > 0.001 && power > 0.5;
      };
      window.__ocBenchEchoTimer = setInterval(() => {
        // The SDK's wide analyser of the oracle's audio: the only one wider than its 2048-sample
        // level meters (the microphone's meter hears the tone itself).
        const a = window.__ocBenchAnalysers.find((n) => n.fftSize > 2048) ?? null;
        if (a !== null && heard(a)) {
          window.__ocBenchEcho = performance.timeOrigin + performance.now();
          clearInterval(window.__ocBenchEchoTimer);
        }
      }, 10);
      return t;
    }, cfg.toneHz);
    return followCall(
      page,
      (s) => s.phase === 'active' && s.timeline.some((t) => t.phase === 'firstAudio'),
      60000,
      false,
    );
  });
  const s = active.snap;
  const echoAtEpochMs = await step(`${name}-echo`, async () => {
    await page.waitForFunction(() => window.__ocBenchEcho !== null, null, { timeout: 20000, polling: 50 });
    return page.evaluate(() => window.__ocBenchEcho);
  });
  await step(`${name}-hangup`, async () => {
    await clickHangup(page);
    return followCall(page, (x) => x.phase === 'ended', 30000, false);
  });
  return {
    callId: s.callId,
    startedAtEpochMs,
    echoAtEpochMs,
    mediaJoin: s.mediaJoin,
    timeline: s.timeline,
    encryption: s.encryption,
    decryptionFailures: s.decryptionFailures,
  };
}

/** bench: sign in once; one warm-up call (the DM with the bot is made then; not counted); then
 * `calls` calls in blocks of `block`, each block after its go-ahead file. Each call is one
 * stdout line {"benchCall": {block, index, warmup, callId, timeline, …}}; before each block
 * {"benchWait": block}; the usual result line last. */
async function benchScenario(context, cfg) {
  const bench = cfg.bench;
  const page = await openAndSignIn(context, cfg);
  // The echo is looked for in the newest 20 ms of the SDK's own analyser of the oracle's audio
  // (its oracleAudioPower() reads a 0.68 s window, which would lag the echo by a third of a
  // second): the analysers the page makes are collected; the oracle's wide one is used.
  await page.evaluate(() => {
    const Base = window.AnalyserNode;
    window.__ocBenchAnalysers = [];
    window.AnalyserNode = class extends Base {
      constructor(ctx, opts) {
        super(ctx, opts);
        window.__ocBenchAnalysers.push(this);
      }
    };
  });
  // The per-call lists would grow with every call; a bench reads its own lines.
  result.requests = [];
  const warm = await benchCall(page, cfg, 'warmup');
  await benchLine({ benchCall: { block: null, index: null, warmup: true, ...warm } });
  let index = 0;
  for (let b = 0; index < bench.calls; b++) {
    await waitGo(bench, b);
    for (let k = 0; k < bench.block && index < bench.calls; k++, index++) {
      // "earlyJoin": "alternate": every other call joins after the sync, side by side.
      const earlyJoinAsked = bench.alternateEarlyJoin ? index % 2 === 0 : true;
      await page.evaluate((on) => {
        window.ocDemo.earlyJoin = on;
      }, earlyJoinAsked);
      const c = await benchCall(page, cfg, `call${index}`);
      await benchLine({ benchCall: { block: b, index, warmup: false, earlyJoinAsked, ...c } });
      result.requests = [];
    }
  }
  result.benchCalls = index;
  // Tens of calls of the crypto's debug tracing: only warnings and errors are kept.
  result.console = result.console.filter((e) => e.type === 'error' || e.type === 'warning');
  await page.close();
}

const SCENARIOS = new Map([
  ['bench', benchScenario],
  ['failures', failuresScenario],
  ['keyChanged', keyChangedScenario],
  ['audio', audioScenario],
  ['keyTransparency', keyTransparencyScenario],
  ['video', videoScenario],
  ['wrongKey', wrongKeyScenario],
  ['plaintextGuard', plaintextGuardScenario],
  ['restore', restoreScenario],
]);

async function main() {
  let cfg;
  const stdinTimer = setTimeout(() => {
    say('bad input: no config on stdin within 30 s (is stdin closed after writing it?)');
    result.error = 'no config on stdin';
    exitWith(2);
  }, 30000);
  try {
    cfg = parseConfig(await readStdin());
    clearTimeout(stdinTimer);
  } catch (e) {
    clearTimeout(stdinTimer);
    result.error = e instanceof InputError ? `bad input: ${e.message}` : `cannot read stdin: ${e.message}`;
    say(result.error);
    return exitWith(2);
  }
  result.scenario = cfg.scenario;
  setTimeout(() => {
    say(`hard timeout: no result after ${cfg.timeoutS} s`);
    stopping = true;
    result.error = `hard timeout after ${cfg.timeoutS} s`;
    exitWith(3);
  }, cfg.timeoutS * 1000).unref();

  try {
    await mkdir(cfg.screenshotsDir, { recursive: true });
    shotsDir = cfg.screenshotsDir;
    try {
      await access(cfg.toneWav);
    } catch {
      await writeToneWav(cfg.toneWav, { hz: cfg.toneHz, seconds: 10 });
      say(`wrote a ${cfg.toneHz} Hz tone to ${cfg.toneWav}`);
    }
    browser = await chromium.launch({
      executablePath: CHROMIUM,
      headless: true,
      args: chromiumArgs(cfg.toneWav),
      timeout: 30000,
      handleSIGINT: false,
      handleSIGTERM: false,
      handleSIGHUP: false,
    });
    result.chromium = browser.version();
    say(`chromium ${result.chromium} up after ${elapsed()} ms`);
    const context = await browser.newContext({ viewport: { width: 1100, height: 900 } });
    await watch(context, 'main');
    await SCENARIOS.get(cfg.scenario)(context, cfg);
    await context.close();
    if (cfg.errorShot) {
      await errorState(cfg);
    }
    result.ok = true;
    say(`done after ${elapsed()} ms`);
    return exitWith(0);
  } catch (e) {
    if (stopping) {
      return cleanup();
    }
    result.error = String(e?.message ?? e).split('\n')[0];
    say(`failed: ${result.error}`);
    // The state it failed in, for whoever reads the report.
    try {
      const pages = browser?.contexts().flatMap((c) => c.pages()) ?? [];
      const page = pages[pages.length - 1];
      if (page) {
        result.failedSnapshot = await snapshot(page).catch(() => null);
        result.lastError = await lastError(page).catch(() => null);
        await shot(page, 'failed');
      }
    } catch {
      // nothing more to report
    }
    return exitWith(1);
  }
}

main();

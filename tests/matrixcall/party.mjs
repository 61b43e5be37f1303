#!/usr/bin/env node
// One party of a Matrix 1:1 voice call made with matrix-js-sdk's MatrixCall (the legacy
// `m.call.*` VoIP) in headless Debian Chromium, driven by playwright-core: the independent peer
// for oracle-calls' direct-call tests. README.md in this folder is the full contract.
//
//   node tests/matrixcall/party.mjs call @bob:localhost [options]   place call(s) to bob
//   node tests/matrixcall/party.mjs answer [options]                answer the next call(s)
//
// The account comes from the environment (the token never on argv):
//   MATRIXCALL_HOMESERVER  (http://127.0.0.1:18008)     MATRIXCALL_USER_ID  (@alice:localhost)
//   MATRIXCALL_DEVICE_ID   (a device the token belongs to; the page's Rust crypto uploads its
//                           keys on first use, so give each run a fresh device)
//   MATRIXCALL_ACCESS_TOKEN, or MATRIXCALL_ACCESS_TOKEN_FILE (a file holding it)
//   MATRIXCALL_CHROMIUM    (default /usr/bin/chromium); MATRIXCALL_DEBUG=1 shows all the page's
//                          console logs (matrix-js-sdk, Rust crypto) on stderr
// Options:
//   --room ROOM_ID      (call) use this room instead of finding/creating an encrypted DM
//   --force-turn        relay only (MatrixCall's forceTURN = iceTransportPolicy "relay")
//   --hangup-after S    hang up S seconds after `connected` (call default 6; answer default 0 =
//                       wait for the other side)
//   --calls N           place / answer N calls one after another (default 1)
//   --gap S             seconds between two calls (default 1)
//   --reject            (answer) reject instead of answering
//   --tone-hz F         the fake microphone plays a sine of F Hz (default 440 call, 880 answer)
//   --expect-hz F       the tone expected from the other side (default 880 call, 440 answer)
//   --idle-seconds S    stay idle (synced, no call) for S seconds before the first call
//   --timeout S         give up after S seconds in all (default 120)
// stdout: JSON lines, one per observation ({"event": ..., ...}; README.md lists them); the
//   last is {"event":"done","ok":bool,...}. stderr: diagnostics ("matrixcall: ...").
// Exit status: 0 done (ok or not: read the lines); 1 failure; 2 bad input; 3 timeout;
//   128+n on signal n. The browser is closed on every path.

import { readFileSync } from 'node:fs';
import { readFile, mkdtemp, rm, writeFile } from 'node:fs/promises';
import http from 'node:http';
import { tmpdir } from 'node:os';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';

import { chromium } from 'playwright-core';

import { DIST, ensureBundle } from './build.mjs';
import { childrenMatching, processTree } from './proc.mjs';

const HERE = dirname(fileURLToPath(import.meta.url));
const CHROMIUM = process.env.MATRIXCALL_CHROMIUM || '/usr/bin/chromium';
const DEBUG = process.env.MATRIXCALL_DEBUG === '1';
const START = Date.now();

const FILES = new Map([
  ['/', [join(HERE, 'page.html'), 'text/html; charset=utf-8']],
  ['/meter.js', [join(HERE, 'meter.js'), 'text/javascript; charset=utf-8']],
  ['/page.js', [join(DIST, 'page.js'), 'text/javascript; charset=utf-8']],
  ['/matrix_sdk_crypto_wasm_bg.wasm', [join(DIST, 'matrix_sdk_crypto_wasm_bg.wasm'), 'application/wasm']],
]);

const say = (msg) => process.stderr.write(`matrixcall: ${msg}\n`);
const out = (obj) => process.stdout.write(`${JSON.stringify({ ...obj, wall_ms: Date.now() - START })}\n`);

class InputError extends Error {}

function parseArgs(argv) {
  const [mode, ...rest] = argv;
  if (mode !== 'call' && mode !== 'answer') {
    throw new InputError('first argument must be "call <user id>" or "answer"');
  }
  const cfg = {
    mode,
    invitee: null,
    room_id: null,
    force_turn: false,
    hangup_after: mode === 'call' ? 6 : 0,
    calls: 1,
    gap_seconds: 1,
    reject: false,
    tone_hz: mode === 'call' ? 440 : 880,
    expect_hz: mode === 'call' ? 880 : 440,
    idle_seconds: 0,
    timeout: 120,
  };
  if (mode === 'call') {
    cfg.invitee = rest.shift();
    if (!cfg.invitee || !/^@[^:]+:.+$/.test(cfg.invitee)) {
      throw new InputError('"call" needs the Matrix user id to call, e.g. @bob:localhost');
    }
  }
  const num = (name, v, min, max) => {
    const n = Number(v);
    if (!Number.isFinite(n) || n < min || n > max) {
      throw new InputError(`${name} must be a number in [${min}, ${max}], not ${JSON.stringify(v)}`);
    }
    return n;
  };
  while (rest.length) {
    const a = rest.shift();
    switch (a) {
      case '--room':
        cfg.room_id = rest.shift();
        if (!cfg.room_id?.startsWith('!')) throw new InputError('--room needs a room id (!...)');
        break;
      case '--force-turn':
        cfg.force_turn = true;
        break;
      case '--reject':
        cfg.reject = true;
        break;
      case '--hangup-after':
        cfg.hangup_after = num(a, rest.shift(), 0, 3600);
        break;
      case '--calls':
        cfg.calls = num(a, rest.shift(), 1, 1000);
        break;
      case '--gap':
        cfg.gap_seconds = num(a, rest.shift(), 0, 600);
        break;
      case '--tone-hz':
        cfg.tone_hz = num(a, rest.shift(), 50, 8000);
        break;
      case '--expect-hz':
        cfg.expect_hz = num(a, rest.shift(), 50, 8000);
        break;
      case '--idle-seconds':
        cfg.idle_seconds = num(a, rest.shift(), 0, 600);
        break;
      case '--timeout':
        cfg.timeout = num(a, rest.shift(), 5, 7200);
        break;
      default:
        throw new InputError(`unknown option ${JSON.stringify(a)}`);
    }
  }
  const env = process.env;
  cfg.homeserver = env.MATRIXCALL_HOMESERVER;
  cfg.user_id = env.MATRIXCALL_USER_ID;
  cfg.device_id = env.MATRIXCALL_DEVICE_ID;
  let token = env.MATRIXCALL_ACCESS_TOKEN;
  if (!token && env.MATRIXCALL_ACCESS_TOKEN_FILE) {
    try {
      token = readFileSync(env.MATRIXCALL_ACCESS_TOKEN_FILE, 'utf8').trim();
    } catch (e) {
      throw new InputError(`cannot read MATRIXCALL_ACCESS_TOKEN_FILE: ${e.message}`);
    }
  }
  cfg.access_token = token;
  if (!/^https?:\/\//.test(cfg.homeserver ?? '')) throw new InputError('MATRIXCALL_HOMESERVER must be an http(s) URL');
  if (!/^@[^:]+:.+$/.test(cfg.user_id ?? '')) throw new InputError('MATRIXCALL_USER_ID must be a Matrix user id');
  if (!cfg.device_id) throw new InputError('MATRIXCALL_DEVICE_ID is not set');
  if (!cfg.access_token) throw new InputError('MATRIXCALL_ACCESS_TOKEN (or _FILE) is not set');
  cfg.keep_seconds = 4;
  cfg.join_timeout_ms = 30000;
  return cfg;
}

/** 16-bit mono 48 kHz PCM WAV of `seconds` of a sine at `hz`, amplitude 0.5 (Chromium loops it). */
function toneWav(hz, seconds = 10, rate = 48000) {
  const n = Math.round(seconds * rate);
  const buf = Buffer.alloc(44 + 2 * n);
  buf.write('RIFF', 0);
  buf.writeUInt32LE(36 + 2 * n, 4);
  buf.write('WAVEfmt ', 8);
  buf.writeUInt32LE(16, 16);
  buf.writeUInt16LE(1, 20); // PCM
  buf.writeUInt16LE(1, 22); // mono
  buf.writeUInt32LE(rate, 24);
  buf.writeUInt32LE(rate * 2, 28);
  buf.writeUInt16LE(2, 32);
  buf.writeUInt16LE(16, 34);
  buf.write('data', 36);
  buf.writeUInt32LE(2 * n, 40);
  for (let i = 0; i < n; i++) {
    buf.writeInt16LE(Math.round(0.5 * 32767 * Math.sin((2 * Math.PI * hz * i) / rate)), 44 + 2 * i);
  }
  return buf;
}

function servePage() {
  const server = http.createServer(async (req, res) => {
    const path = new URL(req.url, 'http://127.0.0.1').pathname;
    const entry = req.method === 'GET' ? FILES.get(path) : undefined;
    if (!entry) {
      res.writeHead(path === '/favicon.ico' ? 204 : 404).end();
      return;
    }
    try {
      const body = await readFile(entry[0]);
      res.writeHead(200, { 'content-type': entry[1], 'cache-control': 'no-store' }).end(body);
    } catch (e) {
      say(`cannot serve ${path}: ${e.message}`);
      res.writeHead(500).end();
    }
  });
  return new Promise((resolve, reject) => {
    server.once('error', reject);
    server.listen(0, '127.0.0.1', () => resolve(server));
  });
}

let browser = null;
let server = null;
let scratch = null;
let cleaning = null;
let stopping = false;

function cleanup() {
  cleaning ??= (async () => {
    if (browser) {
      const closed = browser.close().catch(() => {});
      const late = await Promise.race([
        closed.then(() => false),
        new Promise((r) => setTimeout(() => r(true), 5000).unref()),
      ]);
      if (late) say('browser did not close in 5 s; it is killed on exit');
    }
    if (server) {
      server.closeAllConnections();
      await new Promise((r) => server.close(() => r()));
    }
    if (scratch) await rm(scratch, { recursive: true, force: true }).catch(() => {});
  })();
  return cleaning;
}

async function exitWith(code) {
  await cleanup();
  process.exit(code);
}

for (const [sig, n] of [['SIGINT', 2], ['SIGTERM', 15], ['SIGHUP', 1]]) {
  process.on(sig, () => {
    say(`${sig}: closing the browser`);
    stopping = true;
    exitWith(128 + n);
  });
}

async function main() {
  let cfg;
  try {
    cfg = parseArgs(process.argv.slice(2));
  } catch (e) {
    say(e instanceof InputError ? `bad input: ${e.message}` : String(e));
    return exitWith(2);
  }
  setTimeout(() => {
    say(`timeout: not done after ${cfg.timeout} s`);
    out({ event: 'done', ok: false, error: 'timeout' });
    stopping = true;
    exitWith(3);
  }, cfg.timeout * 1000).unref();

  try {
    if (await ensureBundle()) say(`built dist/ after ${Date.now() - START} ms`);
    scratch = await mkdtemp(join(tmpdir(), 'matrixcall-'));
    const wav = join(scratch, `tone-${cfg.tone_hz}.wav`);
    await writeFile(wav, toneWav(cfg.tone_hz));
    server = await servePage();
    const origin = `http://127.0.0.1:${server.address().port}`;
    browser = await chromium.launch({
      executablePath: CHROMIUM,
      headless: true,
      args: [
        '--use-fake-device-for-media-stream',
        '--use-fake-ui-for-media-stream',
        `--use-file-for-fake-audio-capture=${wav}`,
        '--no-sandbox',
        '--allow-loopback-in-peer-connection',
        '--autoplay-policy=no-user-gesture-required',
        '--disable-gpu',
        '--disable-quic',
        '--no-first-run',
        '--disable-background-networking',
        '--disable-component-update',
        '--disable-sync',
      ],
      timeout: 30000,
      handleSIGINT: false,
      handleSIGTERM: false,
      handleSIGHUP: false,
    });
    // Playwright launched Chromium as our child, talking to it over a pipe.
    const browserPid = childrenMatching(process.pid, '--remote-debugging-pipe')[0] ?? null;
    say(`chromium ${browser.version()} (pid ${browserPid}) up after ${Date.now() - START} ms`);
    const sample = (label) => {
      if (browserPid === null) return;
      const p = processTree(browserPid);
      if (p) out({ event: 'proc', label, ...p });
    };

    const context = await browser.newContext();
    const page = await context.newPage();
    page.on('console', (msg) => {
      const text = msg.text();
      // js-sdk polls a MatrixRTC endpoint Synapse does not have: noise.
      // matrix-js-sdk and its Rust crypto log a great deal at debug level.
      // By default only warnings, errors and this harness's own lines reach stderr.
      if (!DEBUG && !['warning', 'error'].includes(msg.type()) && !text.startsWith('[page]')) return;
      // Noise: the MatrixRTC endpoint js-sdk polls is not in Synapse (404), push-rule defaults.
      if (!/rtc\/transports|M_UNRECOGNIZED|Failed to load resource: .* 404|default global .* push rule/.test(text)) {
        say(`[${msg.type()}] ${text}`);
      }
    });
    page.on('pageerror', (err) => say(`page error: ${err.message}`));
    page.on('crash', () => say('page crashed'));
    let calls = 0;
    await page.exposeFunction('partyEmit', (obj) => {
      out(obj);
      if (obj.event === 'ready') sample('ready');
      else if (obj.event === 'idle') sample(`idle_${obj.phase}`);
      else if (obj.event === 'state' && obj.state === 'connected') sample('connected');
      else if (obj.event === 'hanging_up' || (obj.event === 'hangup' && obj.party === 'remote')) sample('hangup');
      else if (obj.event === 'call_result') calls++;
    });
    await page.goto(`${origin}/`, { timeout: 20000 });
    await page.waitForFunction(() => typeof window.runParty === 'function', null, { timeout: 30000 });
    const { access_token: _token, ...shown } = cfg;
    out({ event: 'config', ...shown, browser_pid: browserPid, chromium: browser.version() });
    const summary = await page.evaluate((c) => window.runParty(c), cfg);
    out({ event: 'done', ok: calls === cfg.calls, ...summary });
    return exitWith(0);
  } catch (e) {
    if (stopping) return cleanup();
    const msg = String(e?.message ?? e).split('\n')[0];
    say(`failed: ${msg}`);
    out({ event: 'done', ok: false, error: msg });
    return exitWith(1);
  }
}

main();

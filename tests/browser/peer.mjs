#!/usr/bin/env node
// A LiveKit participant made with the official `livekit-client` (JS) in headless Chromium,
// driven by playwright-core: the browser peer for oracle-calls' interop tests. It follows the
// contract of crates/rtc/tests/peers/lk_peer.py (the Python-SDK peer).
//
// Usage: node tests/browser/peer.mjs < config.json   (secrets only on stdin, never on argv)
//
// stdin (one JSON object):
//   {"url": "ws://127.0.0.1:PORT", "token": "<JWT>", "key_hex": "<64 hex>" | null (no E2EE),
//    "kdf": "hkdf" | "pbkdf2", "tone_hz": 440, "listen_hz": 880, "seconds": 6,
//    "publish": true, "send_data": ["text", ...] (optional), "expect_data": n (optional),
//    "wait_for_identities": ["identity", ...] (optional)}
//   send_data: sent as reliable data messages once a remote participant (or, if given, every
//   participant named in wait_for_identities) is active. expect_data: after `seconds`, wait
//   (bounded) until that many data messages have arrived.
//   key material as lk_peer.py: hkdf -> setKey(ArrayBuffer of the 32 raw key bytes), which
//   livekit-client derives with HKDF; pbkdf2 -> setKey(the 64-char hex string), PBKDF2 over
//   its UTF-8 bytes. E2EE goes through the `encryption` room option, which also encrypts
//   data packets (DataPacket.encrypted_packet).
// stdout (one JSON line at the end):
//   {"frames", "power", "tracks", "data": [{"from", "topic", "text", "encryption"}],
//    "e2ee_errors", "e2ee_states", "sample_rate", "samples", "sent_data", "e2ee"}
// stderr: progress and diagnostics. A line starting "browser-peer: connected" is printed once the
//   room is joined (a caller may wait for it before starting the other peer).
// Environment (optional): BROWSER_PEER_CHROMIUM (default /usr/bin/chromium),
//   BROWSER_PEER_LK_LOG_LEVEL (livekit-client log level, default warn).
// Exit status: 0 ok; 1 failure (e.g. cannot connect); 2 bad input; 3 hard timeout
//   (seconds + 30 s); 128+n on signal n. The browser is closed on every path.

import { readFile } from 'node:fs/promises';
import http from 'node:http';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';

import { chromium } from 'playwright-core';

const HERE = dirname(fileURLToPath(import.meta.url));
const LK_DIST = join(HERE, 'node_modules', 'livekit-client', 'dist');
const CHROMIUM = process.env.BROWSER_PEER_CHROMIUM || '/usr/bin/chromium';
const START = Date.now();

// What the page server serves: URL path -> [file, content type]. Nothing else.
const FILES = new Map([
  ['/', [join(HERE, 'page.html'), 'text/html; charset=utf-8']],
  ['/page.mjs', [join(HERE, 'page.mjs'), 'text/javascript; charset=utf-8']],
  ['/collector.js', [join(HERE, 'collector.js'), 'text/javascript; charset=utf-8']],
  ['/lk/livekit-client.esm.mjs', [join(LK_DIST, 'livekit-client.esm.mjs'), 'text/javascript; charset=utf-8']],
  [
    '/lk/livekit-client.e2ee.worker.mjs',
    [join(LK_DIST, 'livekit-client.e2ee.worker.mjs'), 'text/javascript; charset=utf-8'],
  ],
]);

// Chromium flags. Playwright adds its own defaults (headless, --no-sandbox, --mute-audio,
// a fresh temporary --user-data-dir, --remote-debugging-pipe, ...).
const CHROMIUM_ARGS = [
  '--disable-gpu',
  '--disable-quic',
  '--no-first-run',
  '--disable-background-networking',
  '--disable-component-update',
  '--disable-sync',
  '--autoplay-policy=no-user-gesture-required',
  '--use-fake-ui-for-media-stream',
];

const say = (msg) => process.stderr.write(`browser-peer: ${msg}\n`);

class InputError extends Error {}

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
  need(typeof cfg.url === 'string' && /^wss?:\/\//.test(cfg.url), '"url" must be a ws:// or wss:// URL');
  need(typeof cfg.token === 'string' && cfg.token.length > 0, '"token" must be a non-empty string');
  const keyHex = cfg.key_hex ?? null;
  need(
    keyHex === null || (typeof keyHex === 'string' && /^[0-9a-fA-F]{64}$/.test(keyHex)),
    '"key_hex" must be 64 hex characters or null',
  );
  const kdf = cfg.kdf ?? 'pbkdf2';
  need(kdf === 'hkdf' || kdf === 'pbkdf2', '"kdf" must be "hkdf" or "pbkdf2"');
  const num = (v, dflt) => (v === undefined || v === null ? dflt : v);
  const toneHz = num(cfg.tone_hz, 440);
  const listenHz = num(cfg.listen_hz, 880);
  const seconds = num(cfg.seconds, 6);
  for (const [name, v] of [['tone_hz', toneHz], ['listen_hz', listenHz], ['seconds', seconds]]) {
    need(typeof v === 'number' && Number.isFinite(v) && v > 0, `"${name}" must be a positive number`);
  }
  need(seconds <= 600, '"seconds" must be at most 600');
  const sendData = cfg.send_data ?? [];
  need(
    Array.isArray(sendData) && sendData.every((s) => typeof s === 'string'),
    '"send_data" must be a list of strings',
  );
  const waitFor = cfg.wait_for_identities ?? [];
  need(
    Array.isArray(waitFor) && waitFor.every((s) => typeof s === 'string'),
    '"wait_for_identities" must be a list of strings',
  );
  const expectData = num(cfg.expect_data, 0);
  need(Number.isInteger(expectData) && expectData >= 0, '"expect_data" must be a non-negative integer');
  return {
    url: cfg.url,
    token: cfg.token,
    key_hex: keyHex,
    kdf,
    tone_hz: toneHz,
    listen_hz: listenHz,
    seconds,
    publish: cfg.publish ?? true,
    send_data: sendData,
    expect_data: expectData,
    wait_for_identities: waitFor,
  };
}

function servePage() {
  const server = http.createServer(async (req, res) => {
    const path = new URL(req.url, 'http://127.0.0.1').pathname;
    if (path === '/favicon.ico') {
      res.writeHead(204).end();
      return;
    }
    const entry = req.method === 'GET' ? FILES.get(path) : undefined;
    if (!entry) {
      res.writeHead(404, { 'content-type': 'text/plain' }).end('not found\n');
      return;
    }
    try {
      const body = await readFile(entry[0]);
      res.writeHead(200, { 'content-type': entry[1], 'cache-control': 'no-store' }).end(body);
    } catch (e) {
      say(`cannot serve ${path}: ${e.message}`);
      res.writeHead(500, { 'content-type': 'text/plain' }).end('unreadable\n');
    }
  });
  return new Promise((resolve, reject) => {
    server.once('error', reject);
    server.listen(0, '127.0.0.1', () => resolve(server));
  });
}

let browser = null;
let server = null;
let cleaning = null;
let stopping = false; // set by a signal or the hard timeout: later failures are its echo

/** Closes the browser and the page server; bounded, idempotent. */
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
          // process.exit() below still ends it: playwright-core kills the process group of
          // every browser it launched when this process exits.
          say('browser did not close in 5 s; it is killed on exit');
        }
      }
      if (server) {
        server.closeAllConnections();
        await new Promise((r) => server.close(() => r()));
      }
    })();
  }
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
  // The config must arrive (stdin closed) promptly: nothing else bounds this wait.
  const stdinTimer = setTimeout(() => {
    say('bad input: no config on stdin within 30 s (is stdin closed after writing it?)');
    exitWith(2);
  }, 30000);
  try {
    cfg = parseConfig(await readStdin());
    clearTimeout(stdinTimer);
  } catch (e) {
    clearTimeout(stdinTimer);
    say(e instanceof InputError ? `bad input: ${e.message}` : `cannot read stdin: ${e.message}`);
    return exitWith(2);
  }

  const hardMs = (cfg.seconds + 30) * 1000;
  setTimeout(() => {
    say(`hard timeout: no result after ${cfg.seconds + 30} s`);
    stopping = true;
    exitWith(3);
  }, hardMs).unref();

  try {
    server = await servePage();
    const origin = `http://127.0.0.1:${server.address().port}`;

    browser = await chromium.launch({
      executablePath: CHROMIUM,
      headless: true,
      args: CHROMIUM_ARGS,
      timeout: 20000,
      handleSIGINT: false,
      handleSIGTERM: false,
      handleSIGHUP: false,
    });
    say(`chromium ${browser.version()} up after ${Date.now() - START} ms`);
    const context = await browser.newContext();
    const page = await context.newPage();
    page.on('console', (msg) => {
      const text = msg.text();
      say(`[${msg.type()}] ${text}`);
      // Relay the join as its own line for callers that wait for it.
      if (text.startsWith('[page] connected to room')) {
        say(`connected after ${Date.now() - START} ms`);
      }
    });
    page.on('pageerror', (err) => say(`page error: ${err.message}`));
    page.on('crash', () => say('page crashed'));

    await page.goto(`${origin}/`, { timeout: 10000 });
    await page.waitForFunction(() => window.peerReady === true, null, { timeout: 10000 });

    // Everything in the page must finish before the hard timeout, with time left to report.
    const budgetMs = hardMs - (Date.now() - START) - 8000;
    if (budgetMs < cfg.seconds * 1000) {
      throw new Error(`startup took ${Date.now() - START} ms; no time left for the call`);
    }
    const result = await page.evaluate((c) => window.runPeer(c), {
      ...cfg,
      budget_ms: budgetMs,
      // livekit-client's own log level (trace, debug, info, warn, error, silent); default warn.
      lk_log_level: process.env.BROWSER_PEER_LK_LOG_LEVEL || 'warn',
    });
    process.stdout.write(`${JSON.stringify(result)}\n`);
    say(`done after ${Date.now() - START} ms; closing the browser`);
    return exitWith(0);
  } catch (e) {
    if (stopping) {
      return cleanup();
    }
    const msg = String(e?.message ?? e).split('\n')[0];
    say(`failed: ${msg}`);
    return exitWith(1);
  }
}

main();

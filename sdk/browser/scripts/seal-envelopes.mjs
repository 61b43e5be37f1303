#!/usr/bin/env node
// Seals call keys with the SDK's own envelope code, for independent openers (the Rust crate's
// `open` / `open_prekey_layer` and the Python openers in crates/crypto/tests/vectors/gen),
// driven by crates/crypto/tests/browser_sdk_envelopes.rs.
//
// The SDK's TypeScript (src/envelope.ts and what it imports) is bundled on the fly with
// esbuild's JS API (platform node, write: false) and imported from memory: what runs is the
// code the browser bundle is made of, not a copy.
//
// stdin (JSON):
//   {
//     "keys":     [{"ref", "scheme", "publicKey" (base64url raw, PROTOCOL §4.1), "keyId" (hex)}],
//     "prekeys":  [{"ref", "signed" (signed prekey JSON), "signingKey" (base64url), "oracleDid"}],
//     "contexts": [{"ref", "sessionId", "roomId", "userDid", "oracleDid", "callType"}]
//   }
// stdout (JSON): a list with, for every key x context, one v1 item, and for every key x context
//   x prekey, one v2 item:
//   {"kind": "v1" | "v2", "keyRef", "contextRef", "prekeyRef"?, "scheme", "contextHex",
//    "callKeyHex", "envelope", "prekeyId"?}
//   With "runtime": "chromium" in the input, the sealing runs in Debian's headless Chromium
//   (its WebCrypto, as in a page) instead of Node: the same bundled code, loaded into a page
//   served from 127.0.0.1 (a secure context).
// The call keys are fresh random test keys; printing them is the point of this tool.
// A prekey whose signature does not verify (the SDK's verifyPrekey) fails the whole run.

import { createServer } from 'node:http';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';

import { build } from 'esbuild';

const root = join(dirname(fileURLToPath(import.meta.url)), '..');

// The entry bundled for both runtimes: the SDK's modules and the loop that seals with them.
const ENTRY = `
import { sealV1, sealV2 } from './src/envelope.ts';
import { contextBytes } from './src/protocol.ts';
import { verifyPrekey, parseSignedPrekey } from './src/prekeys.ts';
import { decodeBase64url, toHex } from './src/base64.ts';

export async function sealAll(input: any): Promise<any[]> {
  const out: any[] = [];
  const prekeys = (input.prekeys ?? []).map((p: any) => ({
    ref: p.ref,
    verified: verifyPrekey(decodeBase64url(p.signingKey, 'signingKey'), p.oracleDid, parseSignedPrekey(p.signed)),
  }));
  for (const key of input.keys ?? []) {
    for (const c of input.contexts ?? []) {
      const context = contextBytes(c);
      const contextHex = toHex(context);
      const seal1 = async () => {
        const callKey = crypto.getRandomValues(new Uint8Array(32));
        const envelope = await sealV1({ scheme: key.scheme, keyId: key.keyId, publicKey: key.publicKey }, callKey, context);
        return { callKey, envelope };
      };
      {
        const { callKey, envelope } = await seal1();
        out.push({ kind: 'v1', keyRef: key.ref, contextRef: c.ref, scheme: key.scheme, contextHex, callKeyHex: toHex(callKey), envelope });
      }
      for (const p of prekeys) {
        const { callKey, envelope: inner } = await seal1();
        const envelope = await sealV2(p.verified, inner, context);
        out.push({
          kind: 'v2',
          keyRef: key.ref,
          contextRef: c.ref,
          prekeyRef: p.ref,
          prekeyId: p.verified.idText,
          scheme: key.scheme,
          contextHex,
          callKeyHex: toHex(callKey),
          envelope,
        });
      }
    }
  }
  return out;
}
`;

async function bundle(platform) {
  const out = await build({
    stdin: { contents: ENTRY, resolveDir: root, sourcefile: 'seal-envelopes-entry.ts', loader: 'ts' },
    bundle: true,
    platform,
    format: platform === 'node' ? 'esm' : 'iife',
    ...(platform === 'node' ? { target: 'node20' } : { globalName: 'OcSeal' }),
    write: false,
    logLevel: 'silent',
  });
  return out.outputFiles[0].text;
}

async function sealInNode(input) {
  const code = await bundle('node');
  const sdk = await import(`data:text/javascript;base64,${Buffer.from(code).toString('base64')}`);
  return sdk.sealAll(input);
}

async function sealInChromium(input) {
  const code = await bundle('browser');
  const { chromium } = await import('playwright-core');
  // An empty page on loopback: WebCrypto exists only in a secure context.
  const server = createServer((_, res) => {
    res.writeHead(200, { 'content-type': 'text/html' });
    res.end('<!doctype html><title>seal</title>');
  });
  await new Promise((resolve) => server.listen(0, '127.0.0.1', resolve));
  const browser = await chromium.launch({
    executablePath: process.env.BROWSER_PEER_CHROMIUM ?? '/usr/bin/chromium',
    headless: true,
    args: ['--no-sandbox', '--disable-gpu', '--disable-quic', '--no-first-run', '--disable-background-networking', '--disable-component-update', '--disable-sync'],
    timeout: 30000,
  });
  try {
    const page = await browser.newPage();
    await page.goto(`http://127.0.0.1:${server.address().port}/`);
    await page.addScriptTag({ content: code });
    return await page.evaluate((i) => globalThis.OcSeal.sealAll(i), input);
  } finally {
    await browser.close();
    server.close();
  }
}

async function readStdin() {
  const chunks = [];
  for await (const c of process.stdin) chunks.push(c);
  return JSON.parse(Buffer.concat(chunks).toString('utf8'));
}

async function main() {
  const input = await readStdin();
  const out = input.runtime === 'chromium' ? await sealInChromium(input) : await sealInNode(input);
  process.stdout.write(`${JSON.stringify(out, null, 1)}\n`);
}

main().catch((e) => {
  process.stderr.write(`seal-envelopes: ${e?.code ? `[${e.code}] ` : ''}${e?.stack ?? e}\n`);
  process.exit(1);
});

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
// The call keys are fresh random test keys; printing them is the point of this tool.
// A prekey whose signature does not verify (the SDK's verifyPrekey) fails the whole run.

import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';

import { build } from 'esbuild';

const root = join(dirname(fileURLToPath(import.meta.url)), '..');

async function loadSdk() {
  const out = await build({
    stdin: {
      contents: [
        "export { sealV1, sealV2, parseEnvelope } from './src/envelope.ts';",
        "export { contextBytes } from './src/protocol.ts';",
        "export { verifyPrekey, parseSignedPrekey } from './src/prekeys.ts';",
        "export { decodeBase64url, toHex } from './src/base64.ts';",
      ].join('\n'),
      resolveDir: root,
      sourcefile: 'seal-envelopes-entry.ts',
      loader: 'ts',
    },
    bundle: true,
    platform: 'node',
    format: 'esm',
    target: 'node20',
    write: false,
    logLevel: 'silent',
  });
  const code = out.outputFiles[0].text;
  return import(`data:text/javascript;base64,${Buffer.from(code).toString('base64')}`);
}

async function readStdin() {
  const chunks = [];
  for await (const c of process.stdin) chunks.push(c);
  return JSON.parse(Buffer.concat(chunks).toString('utf8'));
}

async function main() {
  const input = await readStdin();
  const sdk = await loadSdk();
  const out = [];
  const prekeys = (input.prekeys ?? []).map((p) => ({
    ref: p.ref,
    verified: sdk.verifyPrekey(sdk.decodeBase64url(p.signingKey, 'signingKey'), p.oracleDid, sdk.parseSignedPrekey(p.signed)),
  }));
  for (const key of input.keys ?? []) {
    for (const c of input.contexts ?? []) {
      const context = sdk.contextBytes(c);
      const contextHex = sdk.toHex(context);
      const seal1 = async () => {
        const callKey = crypto.getRandomValues(new Uint8Array(32));
        const envelope = await sdk.sealV1({ scheme: key.scheme, keyId: key.keyId, publicKey: key.publicKey }, callKey, context);
        return { callKey, envelope };
      };
      {
        const { callKey, envelope } = await seal1();
        out.push({ kind: 'v1', keyRef: key.ref, contextRef: c.ref, scheme: key.scheme, contextHex, callKeyHex: sdk.toHex(callKey), envelope });
      }
      for (const p of prekeys) {
        const { callKey, envelope: inner } = await seal1();
        const envelope = await sdk.sealV2(p.verified, inner, context);
        out.push({
          kind: 'v2',
          keyRef: key.ref,
          contextRef: c.ref,
          prekeyRef: p.ref,
          prekeyId: p.verified.idText,
          scheme: key.scheme,
          contextHex,
          callKeyHex: sdk.toHex(callKey),
          envelope,
        });
      }
    }
  }
  process.stdout.write(`${JSON.stringify(out, null, 1)}\n`);
}

main().catch((e) => {
  process.stderr.write(`seal-envelopes: ${e?.code ? `[${e.code}] ` : ''}${e?.stack ?? e}\n`);
  process.exit(1);
});

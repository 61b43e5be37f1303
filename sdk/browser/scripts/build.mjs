#!/usr/bin/env node
// Builds @oracle-calls/browser and its demo page (offline, from node_modules):
//   dist/            the library: ESM per source file (dependencies external), types in
//                    dist/types (tsc --emitDeclarationOnly), LiveKit's E2EE worker as
//                    dist/e2ee-worker.js
//   demo/dist/       the demo page: index.html, styles.css, the bundle (ESM, split, minified),
//                    the Matrix crypto wasm and the E2EE worker, all same-origin
// and prints the gzip sizes of the SDK's own code, the demo bundle and the wasm. Fails when
// the demo bundle holds more than one copy (or both entry points) of matrix-js-sdk.

import { execFileSync } from 'node:child_process';
import { copyFileSync, mkdirSync, readFileSync, readdirSync, rmSync, statSync } from 'node:fs';
import { dirname, join, relative } from 'node:path';
import { fileURLToPath } from 'node:url';
import { gzipSync } from 'node:zlib';

import * as esbuild from 'esbuild';

const ROOT = join(dirname(fileURLToPath(import.meta.url)), '..');
const at = (...p) => join(ROOT, ...p);
const WORKER = at('node_modules', 'livekit-client', 'dist', 'livekit-client.e2ee.worker.mjs');
const WASM = at('node_modules', '@matrix-org', 'matrix-sdk-crypto-wasm', 'pkg', 'matrix_sdk_crypto_wasm_bg.wasm');
const TARGET = ['es2022', 'chrome111', 'firefox115', 'safari16.4'];

const fail = (msg) => {
  process.stderr.write(`build: ${msg}\n`);
  process.exit(1);
};
const kb = (n) => `${(n / 1024).toFixed(1)} KiB`;
const gz = (buf) => gzipSync(buf, { level: 9 }).length;

function filesUnder(dir) {
  const out = [];
  for (const name of readdirSync(dir)) {
    const p = join(dir, name);
    if (statSync(p).isDirectory()) out.push(...filesUnder(p));
    else out.push(p);
  }
  return out;
}

// ---- the library ----------------------------------------------------------------------------
rmSync(at('dist'), { recursive: true, force: true });
const sources = readdirSync(at('src'))
  .filter((f) => f.endsWith('.ts') && !f.endsWith('.d.ts'))
  .map((f) => at('src', f));
await esbuild.build({
  entryPoints: sources,
  outdir: at('dist'),
  format: 'esm',
  platform: 'browser',
  target: TARGET,
  bundle: false,
  sourcemap: true,
  logLevel: 'warning',
});
try {
  execFileSync(process.execPath, [at('node_modules', 'typescript', 'bin', 'tsc'), '-p', ROOT, '--emitDeclarationOnly'], {
    stdio: 'inherit',
  });
} catch {
  fail('tsc --emitDeclarationOnly failed');
}
copyFileSync(WORKER, at('dist', 'e2ee-worker.js'));

// The SDK's own code, minified and bundled without its dependencies: what it adds to an app.
const core = await esbuild.build({
  entryPoints: [at('src', 'index.ts')],
  bundle: true,
  packages: 'external',
  format: 'esm',
  platform: 'browser',
  target: TARGET,
  minify: true,
  write: false,
  logLevel: 'warning',
});
const coreJs = core.outputFiles[0].contents;

// ---- the demo page --------------------------------------------------------------------------
const DEMO = at('demo', 'dist');
rmSync(DEMO, { recursive: true, force: true });
mkdirSync(DEMO, { recursive: true });
const demo = await esbuild.build({
  entryPoints: { demo: at('demo', 'demo.ts') },
  outdir: DEMO,
  bundle: true,
  splitting: true,
  format: 'esm',
  platform: 'browser',
  target: TARGET,
  minify: true,
  sourcemap: false,
  chunkNames: 'chunks/[name]-[hash]',
  metafile: true,
  legalComments: 'linked',
  logLevel: 'warning',
  define: { 'process.env.NODE_ENV': '"production"' },
});
copyFileSync(at('demo', 'index.html'), join(DEMO, 'index.html'));
copyFileSync(at('demo', 'styles.css'), join(DEMO, 'styles.css'));
copyFileSync(WASM, join(DEMO, 'matrix_sdk_crypto_wasm_bg.wasm'));
copyFileSync(WORKER, join(DEMO, 'e2ee-worker.js'));

// One matrix-js-sdk: every input from it must come from one package directory, and only one
// of its two entry points (index / browser-index) may be in the bundle.
const inputs = Object.keys(demo.metafile.inputs);
const roots = new Set();
const entries = new Set();
for (const p of inputs) {
  const m = /^(.*node_modules\/matrix-js-sdk)\/(.*)$/.exec(p);
  if (m) {
    roots.add(m[1]);
    if (m[2] === 'lib/index.js' || m[2] === 'lib/browser-index.js') entries.add(m[2]);
  }
}
if (roots.size !== 1) fail(`expected exactly one matrix-js-sdk in the demo bundle, found ${roots.size}: ${[...roots].join(', ')}`);
if (entries.size > 1) fail(`both matrix-js-sdk entry points are in the demo bundle: ${[...entries].join(', ')}`);
const wasmCopies = inputs.filter((p) => /matrix-sdk-crypto-wasm\/index\.mjs$|matrix-sdk-crypto-wasm\/index\.js$/.test(p));
if (new Set(wasmCopies.map((p) => p.replace(/\/index\.m?js$/, ''))).size > 1) {
  fail(`more than one @matrix-org/matrix-sdk-crypto-wasm in the demo bundle: ${wasmCopies.join(', ')}`);
}

let demoRaw = 0;
let demoGz = 0;
for (const f of filesUnder(DEMO).filter((f) => f.endsWith('.js') && !f.endsWith('e2ee-worker.js'))) {
  const b = readFileSync(f);
  demoRaw += b.length;
  demoGz += gz(b);
}
const wasm = readFileSync(WASM);
const worker = readFileSync(WORKER);
process.stdout.write(
  [
    `built dist/ (${sources.length} modules + types + e2ee-worker.js) and demo/dist/ (${relative(ROOT, DEMO)})`,
    `sizes (gzip -9):`,
    `  SDK core, minified, without its dependencies   ${kb(coreJs.length).padStart(10)}  gzip ${kb(gz(coreJs))}`,
    `  demo bundle (all JS chunks, deps included)      ${kb(demoRaw).padStart(10)}  gzip ${kb(demoGz)}`,
    `  LiveKit E2EE worker                             ${kb(worker.length).padStart(10)}  gzip ${kb(gz(worker))}`,
    `  Matrix crypto wasm                              ${kb(wasm.length).padStart(10)}  gzip ${kb(gz(wasm))}`,
    `  one matrix-js-sdk in the demo bundle: ${[...roots][0]} (${[...entries].join(', ') || 'no entry file'})`,
    '',
  ].join('\n'),
);

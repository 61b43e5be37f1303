#!/usr/bin/env node
// Bundles page.mjs (matrix-js-sdk + its Rust crypto) into dist/page.js with esbuild and puts
// the crypto wasm next to it, offline, from node_modules. party.mjs calls ensureBundle() on
// every start: it rebuilds only when a source is newer than the bundle. Each file is written
// to a temporary name and renamed, so parties that start together never read half a file.
// `node build.mjs` (or `npm run build`) builds by hand.

import { copyFileSync, mkdirSync, renameSync, statSync, writeFileSync } from 'node:fs';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';

const HERE = dirname(fileURLToPath(import.meta.url));
export const DIST = join(HERE, 'dist');
const WASM = join(HERE, 'node_modules', '@matrix-org', 'matrix-sdk-crypto-wasm', 'pkg', 'matrix_sdk_crypto_wasm_bg.wasm');
const SOURCES = [join(HERE, 'page.mjs'), join(HERE, 'package-lock.json'), join(HERE, 'build.mjs')];

const mtime = (p) => {
  try {
    return statSync(p).mtimeMs;
  } catch {
    return -1;
  }
};

/** Builds dist/ when it is missing or older than a source; returns true when it built. */
export async function ensureBundle() {
  const built = Math.min(mtime(join(DIST, 'page.js')), mtime(join(DIST, 'matrix_sdk_crypto_wasm_bg.wasm')));
  if (built >= 0 && SOURCES.every((s) => mtime(s) <= built)) {
    return false;
  }
  const esbuild = await import('esbuild');
  mkdirSync(DIST, { recursive: true });
  const out = await esbuild.build({
    entryPoints: [join(HERE, 'page.mjs')],
    bundle: true,
    format: 'esm',
    platform: 'browser',
    target: ['chrome120'],
    write: false,
    logLevel: 'warning',
    define: { 'process.env.NODE_ENV': '"production"' },
  });
  const tag = `.${process.pid}.tmp`;
  writeFileSync(join(DIST, `page.js${tag}`), out.outputFiles[0].contents);
  copyFileSync(WASM, join(DIST, `matrix_sdk_crypto_wasm_bg.wasm${tag}`));
  renameSync(join(DIST, `matrix_sdk_crypto_wasm_bg.wasm${tag}`), join(DIST, 'matrix_sdk_crypto_wasm_bg.wasm'));
  renameSync(join(DIST, `page.js${tag}`), join(DIST, 'page.js'));
  return true;
}

if (process.argv[1] && fileURLToPath(import.meta.url) === process.argv[1]) {
  const t = Date.now();
  await ensureBundle();
  process.stderr.write(`build: dist/page.js ready in ${Date.now() - t} ms\n`);
}

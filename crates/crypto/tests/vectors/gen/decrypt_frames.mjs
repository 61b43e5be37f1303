// Decrypt LiveKit E2EE frames with Node WebCrypto, the way livekit-client's
// FrameCryptor.decryptFrame does (reverse-direction check).
//
// stdin : JSON list of {kdf: "pbkdf2"|"hkdf", material_hex, ratchet_steps, kind: "audio"|"vp8"|"vp9", encrypted_hex}
//         kind "data" is also accepted for a data packet: then encrypted_hex = ct || tag and iv_hex is required.
// stdout: JSON list, same order, of {"plaintext_hex": ..., "key_index": n} or {"error": ...}
//
// Layout (livekit-interop.md 1.6): header || ct || tag(16) || iv || iv_len || kid; iv_len must be 12.
// Run: node decrypt_frames.mjs < in.json

import { concat, hex, readStdinJson, unhex } from "./_common.mjs";

const { subtle } = globalThis.crypto;
const SALT = new TextEncoder().encode("LKFrameEncryptionKey");
const TAG_LEN = 16;
const IV_LEN = 12;

function algoOptions(kdf) {
  if (kdf === "pbkdf2") return { name: "PBKDF2", salt: SALT, hash: "SHA-256", iterations: 100000 };
  if (kdf === "hkdf") return { name: "HKDF", salt: SALT, hash: "SHA-256", info: new ArrayBuffer(128) };
  throw new Error(`unknown kdf ${JSON.stringify(kdf)}`);
}

const importMaterial = (kdf, material) =>
  subtle.importKey("raw", material, { name: kdf === "pbkdf2" ? "PBKDF2" : "HKDF" }, false, ["deriveBits", "deriveKey"]);

const keyCache = new Map();
async function aesKey(kdf, materialHex, steps) {
  const id = `${kdf}|${materialHex}|${steps}`;
  if (!keyCache.has(id)) {
    if (!Number.isInteger(steps) || steps < 0 || steps > 256) throw new Error("bad ratchet_steps");
    let km = await importMaterial(kdf, unhex(materialHex));
    for (let i = 0; i < steps; i++) {
      const next = new Uint8Array(await subtle.deriveBits(algoOptions(kdf), km, 256));
      km = await importMaterial(kdf, next);
    }
    const key = await subtle.deriveKey(algoOptions(kdf), km, { name: "AES-GCM", length: 128 }, false, ["decrypt"]);
    keyCache.set(id, key);
  }
  return keyCache.get(id);
}

function headerLen(kind, firstByte) {
  if (kind === "audio") return 1;
  if (kind === "vp8") return (firstByte & 0x01) === 0 ? 10 : 3;
  if (kind === "vp9") return 0;
  throw new Error(`unknown kind ${JSON.stringify(kind)}`);
}

async function aesOpen(key, iv, data, aad) {
  const params = aad ? { name: "AES-GCM", iv, additionalData: aad } : { name: "AES-GCM", iv };
  try {
    return new Uint8Array(await subtle.decrypt(params, key, data));
  } catch {
    throw new Error("decryption failed");
  }
}

async function decryptOne(item) {
  const key = await aesKey(item.kdf, item.material_hex, item.ratchet_steps ?? 0);
  const data = unhex(item.encrypted_hex);
  if (item.kind === "data") {
    return { plaintext_hex: hex(await aesOpen(key, unhex(item.iv_hex), data, null)) };
  }
  if (data.length === 0) return { plaintext_hex: "" }; // empty frames pass through
  if (data.length < 2) throw new Error("frame too short");
  const kid = data[data.length - 1];
  const ivLen = data[data.length - 2];
  if (ivLen !== IV_LEN) throw new Error(`IV length byte is ${ivLen}, expected 12`);
  const n = headerLen(item.kind, data[0]);
  if (data.length < n + TAG_LEN + ivLen + 2) throw new Error("frame too short");
  const iv = data.subarray(data.length - 2 - ivLen, data.length - 2);
  const header = data.subarray(0, n);
  const body = data.subarray(n, data.length - 2 - ivLen);
  const plain = await aesOpen(key, iv, body, header);
  return { plaintext_hex: hex(concat(header, plain)), key_index: kid };
}

const items = readStdinJson();
if (!Array.isArray(items)) {
  console.error("stdin must be a JSON list");
  process.exit(2);
}
const out = [];
for (const item of items) {
  try {
    out.push(await decryptOne(item));
  } catch (err) {
    out.push({ error: err.message || String(err) });
  }
}
process.stdout.write(`${JSON.stringify(out, null, 2)}\n`);

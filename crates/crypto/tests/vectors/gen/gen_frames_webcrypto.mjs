// LiveKit frame E2EE vectors with Node's WebCrypto -> ../frames_webcrypto.json.
//
// Uses the same WebCrypto calls livekit-client makes (livekit-interop.md 1.1-1.8):
// importKey(raw, PBKDF2|HKDF) -> deriveKey(AES-GCM, 128) for the frame key,
// deriveBits(256) + importKey for a ratchet step, encrypt(AES-GCM, iv,
// additionalData = clear header). Inputs: frame_cases.json. The worked vectors of
// livekit-interop.md 1.12 are asserted; any mismatch exits non-zero.
// Run: node crates/crypto/tests/vectors/gen/gen_frames_webcrypto.mjs

import { readFileSync } from "node:fs";
import { join } from "node:path";
import { GEN_DIR, concat, hex, sha256, u32be, unhex, writeJson } from "./_common.mjs";

const { subtle } = globalThis.crypto;
const GENERATOR = `gen/gen_frames_webcrypto.mjs (Node ${process.version} WebCrypto: importKey PBKDF2/HKDF, deriveKey AES-GCM-128, deriveBits 256, encrypt AES-GCM; OpenSSL ${process.versions.openssl})`;

const SALT = new TextEncoder().encode("LKFrameEncryptionKey");
const IV_LEN = 12;
const RATCHETS_RECORDED = 3;

// livekit-interop.md 1.12, copied from the doc.
const DOC = {
  pbkdf2_key0: "0961650c1bebd64a7ca427e26d6bc62b",
  pbkdf2_r1_material: "0961650c1bebd64a7ca427e26d6bc62b81b494df74146fe220ef07ef3e5b403b",
  pbkdf2_r1_key: "ee18e7db9c8522fdd3efff4aa4048012",
  pbkdf2_r2_material: "ee18e7db9c8522fdd3efff4aa40480126414e5d0a306c79e20f92cf02131f6b6",
  pbkdf2_r2_key: "c49c095a66dd1d6956fb3a1afcaea54b",
  hkdf_key0: "6d0dd7b3d6f4efde47ab9a9e15abde76",
  hkdf_r1_material: "6d0dd7b3d6f4efde47ab9a9e15abde7635c45a13bddf5da15eed01f40178d328",
  hkdf_r1_key: "bd83f159cff92bfaf55d2d2409c21221",
  opus_iv: "112233440001e2400001e239",
  opus_key0:
    "fc" + "e26da7a713cedd80b4849c10e8237027678938" + "18a7b938207b30efc5d518afdeb7ac60" + "112233440001e2400001e239" + "0c" + "00",
  opus_ratchet1_kid1:
    "fcb274eba5591c9eb37110d16d9d8a2d8e4d40d3762c0522812ec8f38c3ba8db1f168f8a112233440001e2400001e2390c01",
  vp8_key_iv: "aabbccdd00015f9000015f90",
  vp8_key:
    "1002009d012a08000800aa58dc6cf96c868b9dcc1a74a709c88dcfc86ef89b03516359070da6bd1519c6ff39059716aabbccdd00015f9000015f900c00",
  vp8_delta_iv: "aabbccdd00016b4800016b47",
  vp8_delta:
    "310100a98daa9383246354bda719c3b51fd63ea160866116f09c232f96f16ce954e54faabbccdd00016b4800016b470c00",
  data_plaintext: "0a07120568656c6c6f",
  data_ciphertext: "5d6ec7d9bede8fbc26d0a7e858b03dd5aed5a83116bc0cf407",
};

const failures = [];
function check(label, got, want) {
  if (got !== want) failures.push(`${label}: got ${got}, livekit-interop.md 1.12 says ${want}`);
}

// ------------------------------------------------------------ WebCrypto KDFs

function algoOptions(kdf) {
  if (kdf === "pbkdf2") return { name: "PBKDF2", salt: SALT, hash: "SHA-256", iterations: 100000 };
  if (kdf === "hkdf") return { name: "HKDF", salt: SALT, hash: "SHA-256", info: new ArrayBuffer(128) };
  throw new Error(`unknown kdf ${kdf}`);
}

const importMaterial = (kdf, material) =>
  subtle.importKey("raw", material, { name: kdf === "pbkdf2" ? "PBKDF2" : "HKDF" }, false, ["deriveBits", "deriveKey"]);

async function deriveAesKey(kdf, keyMaterial) {
  const key = await subtle.deriveKey(algoOptions(kdf), keyMaterial, { name: "AES-GCM", length: 128 }, true, [
    "encrypt",
    "decrypt",
  ]);
  return { key, raw: new Uint8Array(await subtle.exportKey("raw", key)) };
}

async function ratchet(kdf, keyMaterial) {
  return new Uint8Array(await subtle.deriveBits(algoOptions(kdf), keyMaterial, 256));
}

// [{material, key (CryptoKey), raw}] for steps 0..n
async function keyChain(kdf, material, steps) {
  const chain = [];
  let mat = material;
  for (let i = 0; i <= steps; i++) {
    const km = await importMaterial(kdf, mat);
    const { key, raw } = await deriveAesKey(kdf, km);
    chain.push({ material: mat, key, raw });
    if (i < steps) mat = await ratchet(kdf, km);
  }
  return chain;
}

// ------------------------------------------------------------------ frames

function stream(label, length) {
  const parts = [];
  let have = 0;
  for (let i = 0; have < length; i++) {
    const block = sha256(concat(new TextEncoder().encode(label), u32be(i)));
    parts.push(block);
    have += block.length;
  }
  return concat(...parts).slice(0, length);
}

function plaintextOf(spec) {
  if (spec.hex !== undefined) return unhex(spec.hex);
  const data = stream(spec.stream, spec.length);
  data.set(unhex(spec.prefix_hex ?? ""), 0);
  return data;
}

function headerLen(kind, frame) {
  if (kind === "audio") return 1;
  if (kind === "vp8") return (frame[0] & 0x01) === 0 ? 10 : 3;
  if (kind === "vp9") return 0;
  throw new Error(`unknown kind ${kind}`);
}

function makeIv(ssrc, ts, sendCount) {
  return concat(u32be(ssrc), u32be(ts), u32be((ts - (sendCount % 0xffff)) >>> 0));
}

async function encryptFrame(key, kind, frame, iv, keyIndex) {
  if (frame.length === 0) return new Uint8Array(0);
  const n = headerLen(kind, frame);
  const header = frame.subarray(0, n);
  const sealed = new Uint8Array(
    await subtle.encrypt({ name: "AES-GCM", iv, additionalData: header }, key, frame.subarray(n)),
  );
  return concat(header, sealed, iv, Uint8Array.of(IV_LEN, keyIndex));
}

// ------------------------------------------------------------ data packets

function varint(n) {
  const out = [];
  do {
    let b = n & 0x7f;
    n = Math.floor(n / 128);
    if (n) b |= 0x80;
    out.push(b);
  } while (n);
  return Uint8Array.from(out);
}

function encryptedPacketPayloadUser(payload) {
  const inner = payload.length ? concat(Uint8Array.of(0x12), varint(payload.length), payload) : new Uint8Array(0);
  return concat(Uint8Array.of(0x0a), varint(inner.length), inner);
}

function userPayloadOf(spec) {
  if (spec.utf8 !== undefined) return new TextEncoder().encode(spec.utf8);
  return stream(spec.stream, spec.length);
}

// -------------------------------------------------------------------- main

const spec = JSON.parse(readFileSync(join(GEN_DIR, "frame_cases.json"), "utf8"));
if (spec.salt_utf8 !== "LKFrameEncryptionKey") throw new Error("unexpected salt");

const keySets = {};
const chains = {};
const derivations = [];
for (const ks of spec.key_sets) {
  const material = unhex(ks.material_hex);
  if (ks.mode === "pbkdf2" && hex(material) !== hex(new TextEncoder().encode(ks.call_key_hex))) {
    throw new Error("pbkdf2 mode material must be the call key as hex ASCII");
  }
  keySets[ks.name] = ks;
  const chain = await keyChain(ks.kdf, material, RATCHETS_RECORDED);
  chains[ks.name] = chain;
  derivations.push({
    name: ks.name,
    mode: ks.mode,
    kdf: ks.kdf,
    ...(ks.call_key_hex !== undefined ? { call_key_hex: ks.call_key_hex } : {}),
    material_hex: hex(material),
    aes_key_hex: hex(chain[0].raw),
    ratchets: chain.slice(1).map((c) => ({ material_hex: hex(c.material), aes_key_hex: hex(c.raw) })),
  });
}

async function keyAt(ksName, steps) {
  let chain = chains[ksName];
  if (steps >= chain.length) {
    chain = await keyChain(keySets[ksName].kdf, unhex(keySets[ksName].material_hex), steps);
    chains[ksName] = chain;
  }
  return chain[steps];
}

const byName = Object.fromEntries(derivations.map((d) => [d.name, d]));
{
  const d = byName["livekitrocks-pbkdf2"];
  check("pbkdf2 key0", d.aes_key_hex, DOC.pbkdf2_key0);
  check("pbkdf2 ratchet1 material", d.ratchets[0].material_hex, DOC.pbkdf2_r1_material);
  check("pbkdf2 ratchet1 key", d.ratchets[0].aes_key_hex, DOC.pbkdf2_r1_key);
  check("pbkdf2 ratchet2 material", d.ratchets[1].material_hex, DOC.pbkdf2_r2_material);
  check("pbkdf2 ratchet2 key", d.ratchets[1].aes_key_hex, DOC.pbkdf2_r2_key);
  const h = byName["ikm-00-1f-hkdf"];
  check("hkdf key0", h.aes_key_hex, DOC.hkdf_key0);
  check("hkdf ratchet1 material", h.ratchets[0].material_hex, DOC.hkdf_r1_material);
  check("hkdf ratchet1 key", h.ratchets[0].aes_key_hex, DOC.hkdf_r1_key);
}

const frames = [];
for (const f of spec.frames) {
  const ks = keySets[f.key_set];
  const { key, raw } = await keyAt(f.key_set, f.ratchet_steps);
  const pt = plaintextOf(f.plaintext);
  const iv = pt.length ? makeIv(f.ssrc, f.rtp_timestamp, f.send_count) : new Uint8Array(0);
  const enc = await encryptFrame(key, f.kind, pt, iv, f.key_index);
  const rec = {
    name: f.name,
    key_set: f.key_set,
    kdf: ks.kdf,
    material_hex: ks.material_hex,
    ratchet_steps: f.ratchet_steps,
    aes_key_hex: hex(raw),
    key_index: f.key_index,
    kind: f.kind,
    ssrc: f.ssrc,
    rtp_timestamp: f.rtp_timestamp,
    send_count: f.send_count,
    iv_hex: hex(iv),
    header_len: pt.length ? headerLen(f.kind, pt) : 0,
    plaintext_hex: hex(pt),
    encrypted_hex: hex(enc),
  };
  if (f.doc_vector) rec.doc_vector = true;
  if (f.note) rec.note = f.note;
  frames.push(rec);
}

const fr = Object.fromEntries(frames.map((f) => [f.name, f]));
check("opus IV", fr["doc/opus-key0-kid0"].iv_hex, DOC.opus_iv);
check("opus key0 frame", fr["doc/opus-key0-kid0"].encrypted_hex, DOC.opus_key0);
check("opus ratchet1 KID1 frame", fr["doc/opus-ratchet1-kid1"].encrypted_hex, DOC.opus_ratchet1_kid1);
check("vp8 key IV", fr["doc/vp8-key-8x8-blank"].iv_hex, DOC.vp8_key_iv);
check("vp8 key frame", fr["doc/vp8-key-8x8-blank"].encrypted_hex, DOC.vp8_key);
check("vp8 delta IV", fr["doc/vp8-delta"].iv_hex, DOC.vp8_delta_iv);
check("vp8 delta frame", fr["doc/vp8-delta"].encrypted_hex, DOC.vp8_delta);

const packets = [];
for (const p of spec.data_packets) {
  const ks = keySets[p.key_set];
  const { key, raw } = await keyAt(p.key_set, p.ratchet_steps);
  const pt = encryptedPacketPayloadUser(userPayloadOf(p.user_payload));
  const iv = unhex(p.iv_hex);
  const ct = new Uint8Array(await subtle.encrypt({ name: "AES-GCM", iv }, key, pt));
  const rec = {
    name: p.name,
    key_set: p.key_set,
    kdf: ks.kdf,
    material_hex: ks.material_hex,
    ratchet_steps: p.ratchet_steps,
    aes_key_hex: hex(raw),
    key_index: p.key_index,
    iv_hex: hex(iv),
    plaintext_hex: hex(pt),
    ciphertext_hex: hex(ct),
  };
  if (p.doc_vector) rec.doc_vector = true;
  packets.push(rec);
}
check("data packet plaintext", packets[0].plaintext_hex, DOC.data_plaintext);
check("data packet ciphertext", packets[0].ciphertext_hex, DOC.data_ciphertext);

if (failures.length) {
  for (const f of failures) console.error(`MISMATCH ${f}`);
  console.error("gen_frames_webcrypto.mjs: livekit-interop.md 1.12 vectors did NOT reproduce; nothing written");
  process.exit(1);
}

writeJson("frames_webcrypto.json", {
  generator: GENERATOR,
  rules: "same as frames.json (livekit-interop.md 1.1-1.8, section 2 for data packets)",
  derivations,
  frames,
  data_packets: packets,
});
console.log(
  `gen_frames_webcrypto.mjs: livekit-interop.md 1.12 reproduced; ${derivations.length} derivations, ${frames.length} frames, ${packets.length} data packets`,
);

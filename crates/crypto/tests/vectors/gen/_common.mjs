// Helpers shared by the Node generators and openers. Written from the
// oracle-calls spec text and public standards; shares no code with the Rust crate.

import { createHash, createPrivateKey, createPublicKey } from "node:crypto";
import { readFileSync, writeFileSync } from "node:fs";
import { dirname, join, resolve } from "node:path";
import { fileURLToPath } from "node:url";

export const GEN_DIR = dirname(fileURLToPath(import.meta.url));
export const VECTORS_DIR = resolve(GEN_DIR, "..");

export const CONTEXT_LABEL = "oracle-calls/call-key/v1";
export const CONTEXT_FIELDS = ["sessionId", "roomId", "userDid", "oracleDid", "callType"];

export const hex = (bytes) => Buffer.from(bytes).toString("hex");

export function unhex(text) {
  if (typeof text !== "string" || !/^([0-9a-fA-F]{2})*$/.test(text)) {
    throw new Error("invalid hex");
  }
  return new Uint8Array(Buffer.from(text, "hex"));
}

export function concat(...parts) {
  const total = parts.reduce((n, p) => n + p.length, 0);
  const out = new Uint8Array(total);
  let at = 0;
  for (const p of parts) {
    out.set(p, at);
    at += p.length;
  }
  return out;
}

export function u32be(n) {
  const b = new Uint8Array(4);
  new DataView(b.buffer).setUint32(0, n >>> 0, false);
  return b;
}

export const sha256 = (bytes) => new Uint8Array(createHash("sha256").update(bytes).digest());

// Spec A: label || for each field: u32be(len(utf8)) || utf8.
export function contextBytes(ctx) {
  const enc = new TextEncoder();
  const parts = [enc.encode(CONTEXT_LABEL)];
  for (const field of CONTEXT_FIELDS) {
    if (typeof ctx[field] !== "string") throw new Error(`context field ${field} must be a string`);
    const raw = enc.encode(ctx[field]);
    parts.push(u32be(raw.length), raw);
  }
  return concat(...parts);
}

// v1 body = key_id (16) || context_digest (16) || payload.
export const KEY_ID_LEN = 16;
export const DIGEST_LEN = 16;
export const HEADER_LEN = KEY_ID_LEN + DIGEST_LEN;

// SHA-256(context bytes)[0..16], the second half of a v1 header.
export const contextDigest = (context) => sha256(context).subarray(0, DIGEST_LEN);

// ------------------------------------------------------------- base64url

export const b64urlEncode = (bytes) => Buffer.from(bytes).toString("base64url");

export function b64urlDecodeStrict(text) {
  if (!/^[A-Za-z0-9_-]*$/.test(text) || text.length % 4 === 1) {
    throw new Error("body is not unpadded base64url");
  }
  const bytes = new Uint8Array(Buffer.from(text, "base64url"));
  if (b64urlEncode(bytes) !== text) throw new Error("non-canonical base64url");
  return bytes;
}

// ---------------------------------------------------------------- base58

export const B58_ALPHABET = "123456789ABCDEFGHJKLMNPQRSTUVWXYZabcdefghijkmnopqrstuvwxyz";

export function b58encode(bytes) {
  let zeros = 0;
  while (zeros < bytes.length && bytes[zeros] === 0) zeros++;
  let num = 0n;
  for (const b of bytes) num = (num << 8n) | BigInt(b);
  let out = "";
  while (num > 0n) {
    out = B58_ALPHABET[Number(num % 58n)] + out;
    num /= 58n;
  }
  return "1".repeat(zeros) + out;
}

export function b58decode(text) {
  let num = 0n;
  for (const c of text) {
    const v = B58_ALPHABET.indexOf(c);
    if (v < 0) throw new Error(`invalid base58 character ${JSON.stringify(c)}`);
    num = num * 58n + BigInt(v);
  }
  let zeros = 0;
  while (zeros < text.length && text[zeros] === "1") zeros++;
  const body = [];
  while (num > 0n) {
    body.unshift(Number(num & 0xffn));
    num >>= 8n;
  }
  return new Uint8Array([...new Array(zeros).fill(0), ...body]);
}

// Published Bitcoin base58 pairs (hex -> text).
const B58_KNOWN = [
  ["", ""],
  ["61", "2g"],
  ["626262", "a3gV"],
  ["636363", "aPEr"],
  ["73696d706c792061206c6f6e6720737472696e67", "2cFupjhnEsSn59qHXstmK2ffpLv2"],
  ["00eb15231dfceb60925886b67d065299925915aeb172c06647", "1NS17iag9jJgTHD1VXjvLCEnZuQ3rJDE9L"],
  ["516b6fcd0f", "ABnLTmg"],
  ["bf4f89001e670274dd", "3SEo3LWLoPntC"],
  ["572e4794", "3EFU7m"],
  ["ecac89cad93923c02321", "EJDM8drfXA6uyA"],
  ["10c8511e", "Rt5zm"],
  ["00000000000000000000", "1111111111"],
];

export function b58SelfTest() {
  for (const [h, t] of B58_KNOWN) {
    if (b58encode(unhex(h)) !== t) throw new Error(`base58 self-test failed for ${h}`);
    if (hex(b58decode(t)) !== h) throw new Error(`base58 decode self-test failed for ${t}`);
  }
}

// ------------------------------------------------------------------ keys

// 32-byte secp256k1 scalar from a PKCS#8 PEM (parsed by Node's OpenSSL).
export function secp256k1SecretFromPem(pem) {
  const jwk = createPrivateKey(pem).export({ format: "jwk" });
  if (jwk.kty !== "EC" || jwk.crv !== "secp256k1") {
    throw new Error(`not a secp256k1 key (kty=${jwk.kty}, crv=${jwk.crv})`);
  }
  const d = new Uint8Array(Buffer.from(jwk.d, "base64url"));
  if (d.length !== 32) throw new Error("unexpected scalar length");
  return d;
}

// The envelope scheme of a PKCS#8 PEM private key (Node's OpenSSL parses it), or null.
export function pemScheme(pem) {
  const key = createPrivateKey(pem);
  if (key.asymmetricKeyType === "x25519") return "hpke-x25519";
  if (key.asymmetricKeyType === "rsa") return "rsa-oaep-256";
  if (key.asymmetricKeyType === "ec") {
    const curve = key.asymmetricKeyDetails.namedCurve;
    if (curve === "prime256v1") return "hpke-p256";
    if (curve === "secp256k1") return "ecies-secp256k1";
  }
  return null;
}

// Raw 16-byte key id: SHA-256(SPKI DER of the public key)[0..16], computed by Node.
export function keyIdFromPem(pem) {
  const spki = createPublicKey(createPrivateKey(pem)).export({ type: "spki", format: "der" });
  return sha256(new Uint8Array(spki)).subarray(0, KEY_ID_LEN);
}

export function readJson(name) {
  return JSON.parse(readFileSync(join(VECTORS_DIR, name), "utf8"));
}

export function writeJson(name, obj) {
  const path = join(VECTORS_DIR, name);
  writeFileSync(path, `${JSON.stringify(obj, null, 2)}\n`);
  return path;
}

export function readStdinJson() {
  return JSON.parse(readFileSync(0, "utf8"));
}

export function packageVersion(name) {
  return JSON.parse(readFileSync(join(GEN_DIR, "node_modules", name, "package.json"), "utf8")).version;
}

// Open ecies-secp256k1 key envelopes with npm `eciesjs` (default config).
//
// stdin : JSON list of {scheme, private_pkcs8_pem, context_hex, envelope}
//         (a key_ref naming a key in ../keys.json is accepted instead of the PEM;
//         scheme is optional: when given and not the envelope's scheme -> SchemeMismatch)
// stdout: JSON list, same order, of {"call_key_hex": ...} or {"error": NAME, "detail": ...}
//
// Forms:
//  * "v1.ecies-secp256k1.<b64url>": body = key_id (16) || context_digest (16) || payload,
//    key_id = SHA-256(SPKI DER of the recipient key)[0..16], context_digest =
//    SHA-256(context)[0..16], payload = eciesjs output (161 B) whose plaintext is
//    call key (32) || SHA-256(context) (32). Checks, first failure reported:
//      text form -> Malformed / UnknownScheme / Encoding; scheme or key algorithm ->
//      SchemeMismatch; body < 32 -> BadLength; key id -> WrongKey; digest ->
//      ContextMismatch; payload != 161 B -> BadLength; eciesjs decrypt, plaintext
//      length and the SHA-256(context) suffix -> DecryptionFailed.
//  * legacy ixo form (no "v1." prefix): base58 of the eciesjs output (161 B); the
//    plaintext must be the call key as 64 lowercase hex ASCII chars; no header, no
//    context. Checks: base58 -> Encoding; length != 161 -> BadLength; decrypt or
//    plaintext form -> DecryptionFailed.
// The stored negative vectors each fail exactly one check, so their expected error
// does not depend on this order. Other per-item problems: BadInput.
// Run: node open_ecies.mjs < in.json  (after `npm ci` in this folder)

import { decrypt } from "eciesjs";
import { realpathSync } from "node:fs";
import { fileURLToPath } from "node:url";
import {
  HEADER_LEN,
  KEY_ID_LEN,
  b58decode,
  b64urlDecodeStrict,
  contextDigest,
  hex,
  keyIdFromPem,
  pemScheme,
  readJson,
  readStdinJson,
  secp256k1SecretFromPem,
  sha256,
  unhex,
} from "./_common.mjs";

const SCHEME = "ecies-secp256k1";
const KNOWN_SCHEMES = ["hpke-p256", "hpke-x25519", "rsa-oaep-256", SCHEME];
const PAYLOAD_LEN = 65 + 16 + 16 + 64; // ephemeral key || nonce || tag || ciphertext of 64 B
const LEGACY_LEN = 65 + 16 + 16 + 64; // the same: 64 hex chars of plaintext

export class EnvelopeError extends Error {
  constructor(name, detail = "") {
    super(detail || name);
    this.errorName = name;
    this.detail = detail;
  }
}

const same = (a, b) => a.length === b.length && a.every((v, i) => v === b[i]);

let keysCache = null;
function keyPem(item) {
  if (typeof item.private_pkcs8_pem === "string") return item.private_pkcs8_pem;
  if (typeof item.key_ref === "string") {
    keysCache ??= readJson("keys.json").keys;
    const rec = keysCache[item.key_ref];
    if (!rec) throw new EnvelopeError("BadInput", `unknown key_ref ${item.key_ref}`);
    return rec.private_pkcs8_pem;
  }
  throw new EnvelopeError("BadInput", "missing private_pkcs8_pem");
}

function eciesOpen(secret, payload) {
  try {
    return decrypt(secret, payload);
  } catch {
    throw new EnvelopeError("DecryptionFailed");
  }
}

function keyScheme(pem) {
  try {
    return pemScheme(pem);
  } catch (err) {
    throw new EnvelopeError("BadInput", `private key does not load: ${err.message}`);
  }
}

// Returns the call key as hex, or throws EnvelopeError.
export function openEnvelope(text, pem, contextHex, scheme) {
  if (typeof text !== "string") throw new EnvelopeError("BadInput", "missing envelope");
  if (scheme !== undefined && scheme !== null && scheme !== SCHEME && !text.startsWith("v1.")) {
    throw new EnvelopeError("SchemeMismatch", `legacy ecies envelope, caller asked for ${scheme}`);
  }

  if (text.startsWith("v1.")) {
    const parts = text.split(".");
    if (parts.length !== 3) throw new EnvelopeError("Malformed", "not a v1.<scheme>.<body> envelope");
    const envScheme = parts[1];
    if (!KNOWN_SCHEMES.includes(envScheme)) throw new EnvelopeError("UnknownScheme", envScheme);
    let body;
    try {
      body = b64urlDecodeStrict(parts[2]);
    } catch (err) {
      throw new EnvelopeError("Encoding", err.message);
    }
    if (scheme !== undefined && scheme !== null && scheme !== envScheme) {
      throw new EnvelopeError("SchemeMismatch", `envelope is ${envScheme}, caller asked for ${scheme}`);
    }
    const ours = keyScheme(pem);
    if (ours !== envScheme) throw new EnvelopeError("SchemeMismatch", `envelope is ${envScheme}, key is ${ours}`);
    if (envScheme !== SCHEME) throw new EnvelopeError("UnknownScheme", `${envScheme} is opened by open_envelopes.py`);

    if (body.length < HEADER_LEN) {
      throw new EnvelopeError("BadLength", `body is ${body.length} bytes, shorter than the 32-byte header`);
    }
    if (typeof contextHex !== "string") throw new EnvelopeError("BadInput", "missing context_hex");
    let context;
    try {
      context = unhex(contextHex);
    } catch {
      throw new EnvelopeError("BadInput", "invalid context_hex");
    }
    const header = body.subarray(0, HEADER_LEN);
    const payload = body.subarray(HEADER_LEN);
    if (!same(header.subarray(0, KEY_ID_LEN), keyIdFromPem(pem))) {
      throw new EnvelopeError("WrongKey", `header key id ${hex(header.subarray(0, KEY_ID_LEN))} is not this key's`);
    }
    if (!same(header.subarray(KEY_ID_LEN), contextDigest(context))) {
      throw new EnvelopeError("ContextMismatch", "header context digest differs from SHA-256(context)[0..16]");
    }
    if (payload.length !== PAYLOAD_LEN) {
      throw new EnvelopeError("BadLength", `payload is ${payload.length} bytes, expected ${PAYLOAD_LEN}`);
    }
    const pt = eciesOpen(secp256k1SecretFromPem(pem), payload);
    if (pt.length !== 64) throw new EnvelopeError("DecryptionFailed", "plaintext is not call key || SHA-256(context)");
    if (!same(pt.subarray(32), sha256(context))) {
      throw new EnvelopeError("DecryptionFailed", "plaintext suffix is not SHA-256(context)");
    }
    return hex(pt.subarray(0, 32));
  }

  // Legacy ixo form.
  let body;
  try {
    body = b58decode(text);
  } catch (err) {
    throw new EnvelopeError("Encoding", err.message);
  }
  const ours = keyScheme(pem);
  if (ours !== SCHEME) throw new EnvelopeError("SchemeMismatch", `legacy ecies envelope, key is ${ours}`);
  if (body.length !== LEGACY_LEN) {
    throw new EnvelopeError("BadLength", `legacy body is ${body.length} bytes, expected ${LEGACY_LEN}`);
  }
  const pt = eciesOpen(secp256k1SecretFromPem(pem), body);
  let keyText;
  try {
    keyText = new TextDecoder("utf-8", { fatal: true }).decode(pt);
  } catch {
    throw new EnvelopeError("DecryptionFailed", "legacy plaintext is not UTF-8");
  }
  if (!/^[0-9a-f]{64}$/.test(keyText)) {
    throw new EnvelopeError("DecryptionFailed", "legacy plaintext is not 64 lowercase hex chars");
  }
  return keyText;
}

export function openItem(item) {
  if (item === null || typeof item !== "object") throw new EnvelopeError("BadInput", "item is not an object");
  return openEnvelope(item.envelope, keyPem(item), item.context_hex, item.scheme);
}

function main() {
  const items = readStdinJson();
  if (!Array.isArray(items)) {
    console.error("stdin must be a JSON list");
    process.exit(2);
  }
  const out = items.map((item) => {
    try {
      return { call_key_hex: openItem(item) };
    } catch (err) {
      if (err instanceof EnvelopeError) {
        return err.detail ? { error: err.errorName, detail: err.detail } : { error: err.errorName };
      }
      return { error: "BadInput", detail: err.message || String(err) };
    }
  });
  process.stdout.write(`${JSON.stringify(out, null, 2)}\n`);
}

// Run only when executed, not when gen_ecies.mjs imports openEnvelope.
if (process.argv[1] && realpathSync(process.argv[1]) === realpathSync(fileURLToPath(import.meta.url))) {
  main();
}

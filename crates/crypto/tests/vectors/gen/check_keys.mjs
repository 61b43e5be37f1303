// Cross-check keys.json (written with Python cryptography) using Node's crypto:
// the PKCS#8 PEM parses, its SPKI DER, key id and raw public forms match.
// Run: node crates/crypto/tests/vectors/gen/check_keys.mjs

import { createPrivateKey, createPublicKey } from "node:crypto";
import { b58encode, concat, hex, readJson, sha256, unhex } from "./_common.mjs";

const { keys } = readJson("keys.json");
const b64u = (s) => new Uint8Array(Buffer.from(s, "base64url"));
let n = 0;
for (const [name, rec] of Object.entries(keys)) {
  if (!rec.private_pkcs8_pem.startsWith("-----BEGIN PRIVATE KEY-----\n")) throw new Error(`${name}: not PKCS#8 PEM`);
  const sk = createPrivateKey({ key: rec.private_pkcs8_pem, format: "pem" });
  const pk = createPublicKey(sk);
  const spki = new Uint8Array(pk.export({ type: "spki", format: "der" }));
  if (hex(spki) !== rec.public_spki_der_hex) throw new Error(`${name}: SPKI differs between Node and Python`);
  if (hex(sha256(spki).subarray(0, 16)) !== rec.key_id) throw new Error(`${name}: key id mismatch`);
  const jwk = pk.export({ format: "jwk" });
  if (rec.algorithm === "P-256") {
    if (jwk.crv !== "P-256") throw new Error(`${name}: curve ${jwk.crv}`);
    if (hex(concat(Uint8Array.of(4), b64u(jwk.x), b64u(jwk.y))) !== rec.public_raw_hex) throw new Error(`${name}: raw`);
  } else if (rec.algorithm === "X25519") {
    if (jwk.crv !== "X25519" || hex(b64u(jwk.x)) !== rec.public_raw_hex) throw new Error(`${name}: raw`);
  } else if (rec.algorithm === "secp256k1") {
    if (jwk.crv !== "secp256k1") throw new Error(`${name}: curve ${jwk.crv}`);
    const y = b64u(jwk.y);
    const compressed = concat(Uint8Array.of(2 + (y[31] & 1)), b64u(jwk.x));
    if (hex(compressed) !== rec.public_raw_hex) throw new Error(`${name}: compressed raw`);
    if (hex(concat(Uint8Array.of(4), b64u(jwk.x), y)) !== rec.public_uncompressed_hex) throw new Error(`${name}: raw`);
    if (b58encode(compressed) !== rec.public_compressed_base58) throw new Error(`${name}: base58`);
  } else if (rec.algorithm.startsWith("RSA-")) {
    if (sk.asymmetricKeyType !== "rsa") throw new Error(`${name}: not rsa`);
    if (sk.asymmetricKeyDetails.modulusLength !== rec.modulus_bits) throw new Error(`${name}: modulus`);
    if (rec.public_raw_hex !== rec.public_spki_der_hex) throw new Error(`${name}: RSA raw must be SPKI`);
    unhex(rec.public_raw_hex);
  } else {
    throw new Error(`${name}: unknown algorithm ${rec.algorithm}`);
  }
  n++;
}
console.log(`check_keys.mjs: ${n} keys agree with Node ${process.version} crypto (OpenSSL ${process.versions.openssl})`);

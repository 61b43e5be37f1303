// From a raw secp256k1 secret, as an existing ixo oracle holds it, npm `eciesjs` (default
// config) derives the public key and seals call keys in the legacy ixo form: base58 of
// encrypt(publicKey, call key as 64 lower-case hex chars). Used by the tests of
// `OracleKeyPair::from_secp256k1_bytes` and `oracle-calls key import`: what eciesjs derives
// and seals must be what the imported key is and opens.
//
// stdin : {"secret_hex": 64 hex chars, "call_keys_hex": [64 hex chars, ...]}
// stdout: {"public_compressed_hex", "public_uncompressed_hex", "envelopes": [base58, ...],
//          "eciesjs": version}
// Run: node seal_legacy_ecies.mjs < in.json  (after `npm ci` in this folder)

import { PrivateKey, encrypt } from "eciesjs";
import { b58encode, packageVersion, readStdinJson } from "./_common.mjs";

const input = readStdinJson();
const sk = PrivateKey.fromHex(input.secret_hex);
const envelopes = input.call_keys_hex.map((k) =>
  b58encode(new Uint8Array(encrypt(sk.publicKey.toHex(), new TextEncoder().encode(k)))),
);
process.stdout.write(
  JSON.stringify({
    public_compressed_hex: sk.publicKey.toHex(true),
    public_uncompressed_hex: sk.publicKey.toHex(false),
    envelopes,
    eciesjs: packageVersion("eciesjs"),
  }),
);

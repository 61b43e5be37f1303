"""From a raw secp256k1 secret (as existing ixo oracles hold it), Python `cryptography`
derives the public key, its SubjectPublicKeyInfo DER and the key id (SHA-256 of the SPKI DER,
first 16 bytes). Used by the tests of `OracleKeyPair::from_secp256k1_bytes` and
`oracle-calls key import`.

stdin : {"secret_hex": 64 hex chars}
stdout: {"public_compressed_hex", "public_uncompressed_hex", "spki_der_hex", "key_id",
         "cryptography": version}
Run: python3 secp256k1_public.py < in.json
"""

import hashlib
import json
import sys

import cryptography
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

secret = bytes.fromhex(json.load(sys.stdin)["secret_hex"])
if len(secret) != 32:
    sys.exit("secret_hex must be 32 bytes")
pk = ec.derive_private_key(int.from_bytes(secret, "big"), ec.SECP256K1()).public_key()
spki = pk.public_bytes(
    serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
)
point = serialization.Encoding.X962
json.dump(
    {
        "public_compressed_hex": pk.public_bytes(
            point, serialization.PublicFormat.CompressedPoint
        ).hex(),
        "public_uncompressed_hex": pk.public_bytes(
            point, serialization.PublicFormat.UncompressedPoint
        ).hex(),
        "spki_der_hex": spki.hex(),
        "key_id": hashlib.sha256(spki).digest()[:16].hex(),
        "cryptography": cryptography.__version__,
    },
    sys.stdout,
)

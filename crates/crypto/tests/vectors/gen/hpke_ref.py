"""Second, from-the-RFC HPKE (RFC 9180) base-mode opener used only as a cross-check.

The envelope vectors are sealed with `cryptography`'s HPKE (its
`_encrypt_with_aad`, since the v1 body needs aad = header). This module
re-derives the RFC 9180 base-mode key schedule from Python's stdlib HMAC plus
the raw ECDH/X25519 and AES-GCM primitives of `cryptography`, and checks
itself against RFC 9180 Appendix A test vectors (which use a non-empty aad).
gen_envelopes.py and check_vectors.py then open every ok HPKE envelope with it:
the payload after the 32-byte header is `enc || ct` with info = context and
aad = the header (sequence number 0), and it does not open with an empty aad.
"""

from __future__ import annotations

import hashlib
import hmac
import struct

from cryptography.hazmat.primitives.asymmetric import ec, x25519
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

KEM_P256 = 0x0010
KEM_X25519 = 0x0020
KDF_HKDF_SHA256 = 0x0001
AEAD_AES128GCM = 0x0001
AEAD_AES256GCM = 0x0002

_NK = {AEAD_AES128GCM: 16, AEAD_AES256GCM: 32}
_NN = 12
_NENC = {KEM_P256: 65, KEM_X25519: 32}


def _extract(salt: bytes, ikm: bytes) -> bytes:
    return hmac.new(salt, ikm, hashlib.sha256).digest()


def _expand(prk: bytes, info: bytes, length: int) -> bytes:
    out, t, counter = b"", b"", 1
    while len(out) < length:
        t = hmac.new(prk, t + info + bytes([counter]), hashlib.sha256).digest()
        out += t
        counter += 1
    return out[:length]


def _labeled_extract(suite_id: bytes, salt: bytes, label: bytes, ikm: bytes) -> bytes:
    return _extract(salt, b"HPKE-v1" + suite_id + label + ikm)


def _labeled_expand(suite_id: bytes, prk: bytes, label: bytes, info: bytes, length: int) -> bytes:
    return _expand(prk, struct.pack(">H", length) + b"HPKE-v1" + suite_id + label + info, length)


def _public_bytes(kem_id: int, sk) -> bytes:
    pub = sk.public_key()
    if kem_id == KEM_P256:
        return pub.public_bytes(Encoding.X962, PublicFormat.UncompressedPoint)
    return pub.public_bytes(Encoding.Raw, PublicFormat.Raw)


def decap(kem_id: int, enc: bytes, sk) -> bytes:
    if len(enc) != _NENC[kem_id]:
        raise ValueError("bad enc length")
    if kem_id == KEM_P256:
        pk_e = ec.EllipticCurvePublicKey.from_encoded_point(ec.SECP256R1(), enc)
        dh = sk.exchange(ec.ECDH(), pk_e)
    else:
        pk_e = x25519.X25519PublicKey.from_public_bytes(enc)
        dh = sk.exchange(pk_e)
    kem_suite = b"KEM" + struct.pack(">H", kem_id)
    kem_context = enc + _public_bytes(kem_id, sk)
    eae_prk = _labeled_extract(kem_suite, b"", b"eae_prk", dh)
    return _labeled_expand(kem_suite, eae_prk, b"shared_secret", kem_context, 32)


def key_schedule_base(kem_id: int, aead_id: int, shared_secret: bytes, info: bytes):
    suite = b"HPKE" + struct.pack(">HHH", kem_id, KDF_HKDF_SHA256, aead_id)
    psk_id_hash = _labeled_extract(suite, b"", b"psk_id_hash", b"")
    info_hash = _labeled_extract(suite, b"", b"info_hash", info)
    ks_context = b"\x00" + psk_id_hash + info_hash
    secret = _labeled_extract(suite, shared_secret, b"secret", b"")
    key = _labeled_expand(suite, secret, b"key", ks_context, _NK[aead_id])
    base_nonce = _labeled_expand(suite, secret, b"base_nonce", ks_context, _NN)
    return key, base_nonce


def open_base(kem_id: int, aead_id: int, sk, info: bytes, body: bytes, aad: bytes = b"") -> bytes:
    """Single-shot open of `enc || ct` with sequence number 0."""
    n_enc = _NENC[kem_id]
    enc, ct = body[:n_enc], body[n_enc:]
    shared = decap(kem_id, enc, sk)
    key, nonce = key_schedule_base(kem_id, aead_id, shared, info)
    return AESGCM(key).decrypt(nonce, ct, aad)


# RFC 9180 Appendix A.1.1 (X25519) and A.3.1 (P-256), base mode, first encryption.
_RFC_VECTORS = [
    {
        "kem": KEM_X25519,
        "info": "4f6465206f6e2061204772656369616e2055726e",
        "skRm": "4612c550263fc8ad58375df3f557aac531d26850903e55a9f23f21d8534e8ac8",
        "pkRm": "3948cfe0ad1ddb695d780e59077195da6c56506b027329794ab02bca80815c4d",
        "enc": "37fda3567bdbd628e88668c3c8d7e97d1d1253b6d4ea6d44c150f741f1bf4431",
        "shared_secret": "fe0e18c9f024ce43799ae393c7e8fe8fce9d218875e8227b0187c04e7d2ea1fc",
        "key": "4531685d41d65f03dc48f6b8302c05b0",
        "base_nonce": "56d890e5accaaf011cff4b7d",
        "pt": "4265617574792069732074727574682c20747275746820626561757479",
        "aad": "436f756e742d30",
        "ct": "f938558b5d72f1a23810b4be2ab4f84331acc02fc97babc53a52ae8218a355a9"
        "6d8770ac83d07bea87e13c512a",
    },
    {
        "kem": KEM_P256,
        "info": "4f6465206f6e2061204772656369616e2055726e",
        "skRm": "f3ce7fdae57e1a310d87f1ebbde6f328be0a99cdbcadf4d6589cf29de4b8ffd2",
        "pkRm": "04fe8c19ce0905191ebc298a9245792531f26f0cece2460639e8bc39cb7f70"
        "6a826a779b4cf969b8a0e539c7f62fb3d30ad6aa8f80e30f1d128aafd68a2ce72ea0",
        "enc": "04a92719c6195d5085104f469a8b9814d5838ff72b60501e2c4466e5e67b325"
        "ac98536d7b61a1af4b78e5b7f951c0900be863c403ce65c9bfcb9382657222d18c4",
        "shared_secret": "c0d26aeab536609a572b07695d933b589dcf363ff9d93c93adea537aeabb8cb8",
        "key": "868c066ef58aae6dc589b6cfdd18f97e",
        "base_nonce": "4e0bc5018beba4bf004cca59",
        "pt": "4265617574792069732074727574682c20747275746820626561757479",
        "aad": "436f756e742d30",
        "ct": "5ad590bb8baa577f8619db35a36311226a896e7342a6d836d8b7bcd2f20b6c7f"
        "9076ac232e3ab2523f39513434",
    },
]


def private_from_raw(kem_id: int, raw: bytes):
    if kem_id == KEM_P256:
        return ec.derive_private_key(int.from_bytes(raw, "big"), ec.SECP256R1())
    return x25519.X25519PrivateKey.from_private_bytes(raw)


def selftest():
    """Check this reference against RFC 9180 Appendix A; raise on any mismatch."""
    for v in _RFC_VECTORS:
        kem = v["kem"]
        sk = private_from_raw(kem, bytes.fromhex(v["skRm"]))
        if _public_bytes(kem, sk).hex() != v["pkRm"]:
            raise AssertionError("hpke_ref: pkRm mismatch")
        shared = decap(kem, bytes.fromhex(v["enc"]), sk)
        if shared.hex() != v["shared_secret"]:
            raise AssertionError(f"hpke_ref: shared_secret mismatch for kem {kem:#06x}")
        key, nonce = key_schedule_base(kem, AEAD_AES128GCM, shared, bytes.fromhex(v["info"]))
        if key.hex() != v["key"] or nonce.hex() != v["base_nonce"]:
            raise AssertionError(f"hpke_ref: key schedule mismatch for kem {kem:#06x}")
        body = bytes.fromhex(v["enc"]) + bytes.fromhex(v["ct"])
        pt = open_base(kem, AEAD_AES128GCM, sk, bytes.fromhex(v["info"]), body, bytes.fromhex(v["aad"]))
        if pt.hex() != v["pt"]:
            raise AssertionError("hpke_ref: plaintext mismatch")


if __name__ == "__main__":
    selftest()
    print("hpke_ref: RFC 9180 A.1.1 and A.3.1 reproduced")

#!/usr/bin/env python3
"""Open v1 key envelopes with Python `cryptography` (reverse-direction check).

stdin : JSON list of {scheme, private_pkcs8_pem, context_hex, envelope}
        (instead of private_pkcs8_pem a key_ref naming a key in ../keys.json is accepted;
        scheme is optional: when given and not the envelope's scheme -> SchemeMismatch)
stdout: JSON list, same order, of {"call_key_hex": ...} or {"error": NAME, "detail": ...}

v1 body = key_id (16) || context_digest (16) || payload, where key_id is
SHA-256(SPKI DER of the recipient public key)[0..16] and context_digest is
SHA-256(context)[0..16]. Schemes handled here:
  hpke-p256, hpke-x25519: payload = enc || ct, RFC 9180 base mode, HKDF-SHA256,
      AES-256-GCM, info = context, aad = the 32 header bytes
  rsa-oaep-256: payload = OAEP (SHA-256, MGF1-SHA-256, label = context) ciphertext
ecies-secp256k1 is handled by open_ecies.mjs.

Checks, in this order; the first that fails is reported:
  text form      -> UnknownVersion (vN., N != 1) / Malformed / UnknownScheme / Encoding
  scheme         -> SchemeMismatch (requested scheme, or the key's algorithm, differs)
  len(body) < 32 -> BadLength
  key id         -> WrongKey
  context digest -> ContextMismatch
  payload length -> BadLength (hpke-p256 113, hpke-x25519 80, rsa: modulus bytes)
  decryption     -> DecryptionFailed (also: plaintext not 32 bytes)
The stored negative vectors each fail exactly one of these checks, so their expected
error does not depend on this order. Other per-item problems: BadInput.
Exit status is 0 whenever the input parsed.
"""

from __future__ import annotations

import json
import os
import re
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import _common as C  # noqa: E402

C.require_cryptography()

from cryptography.hazmat.primitives import hashes, hpke, serialization  # noqa: E402
from cryptography.hazmat.primitives.asymmetric import ec, padding, rsa, x25519  # noqa: E402

SUITES = {
    "hpke-p256": hpke.Suite(hpke.KEM.P256, hpke.KDF.HKDF_SHA256, hpke.AEAD.AES_256_GCM),
    "hpke-x25519": hpke.Suite(hpke.KEM.X25519, hpke.KDF.HKDF_SHA256, hpke.AEAD.AES_256_GCM),
}
ENC_LEN = {"hpke-p256": 65, "hpke-x25519": 32}
CALL_KEY_LEN = 32
TAG_LEN = 16
HPKE_ENCRYPT, HPKE_DECRYPT = C.hpke_aad_functions()

_keys_cache = None


class EnvelopeError(Exception):
    """A per-item failure; `name` is the reported error."""

    def __init__(self, name: str, detail: str = ""):
        super().__init__(detail or name)
        self.name = name
        self.detail = detail


def _key_pem(item: dict) -> str:
    global _keys_cache
    if "private_pkcs8_pem" in item:
        return item["private_pkcs8_pem"]
    if "key_ref" in item:
        if _keys_cache is None:
            _keys_cache = C.load_keys_json()["keys"]
        if item["key_ref"] not in _keys_cache:
            raise EnvelopeError("BadInput", f"unknown key_ref {item['key_ref']}")
        return _keys_cache[item["key_ref"]]["private_pkcs8_pem"]
    raise EnvelopeError("BadInput", "missing private_pkcs8_pem")


def key_scheme(sk) -> str | None:
    """The envelope scheme a private key belongs to, or None."""
    if isinstance(sk, ec.EllipticCurvePrivateKey):
        if isinstance(sk.curve, ec.SECP256R1):
            return "hpke-p256"
        if isinstance(sk.curve, ec.SECP256K1):
            return "ecies-secp256k1"
        return None
    if isinstance(sk, x25519.X25519PrivateKey):
        return "hpke-x25519"
    if isinstance(sk, rsa.RSAPrivateKey):
        return "rsa-oaep-256"
    return None


def payload_len(scheme: str, sk) -> int:
    if scheme in ENC_LEN:
        return ENC_LEN[scheme] + CALL_KEY_LEN + TAG_LEN
    return sk.key_size // 8


def split_text(text: str):
    """(scheme, body) of `v1.<scheme>.<b64url>`, or EnvelopeError."""
    if not isinstance(text, str):
        raise EnvelopeError("BadInput", "missing envelope")
    parts = text.split(".")
    if len(parts) >= 2 and parts[0] != "v1" and re.fullmatch(r"v[0-9]+", parts[0]):
        raise EnvelopeError("UnknownVersion", f"{parts[0]} is not v1")
    if len(parts) != 3 or parts[0] != "v1":
        raise EnvelopeError("Malformed", "not a v1.<scheme>.<body> envelope")
    if parts[1] not in C.SCHEMES:
        raise EnvelopeError("UnknownScheme", parts[1])
    try:
        return parts[1], C.b64url_decode_strict(parts[2])
    except ValueError as exc:
        raise EnvelopeError("Encoding", str(exc)) from None


def open_envelope(text: str, sk, context: bytes, scheme: str | None = None) -> bytes:
    """Return the 32-byte call key or raise EnvelopeError."""
    env_scheme, body = split_text(text)
    if scheme is not None and scheme != env_scheme:
        raise EnvelopeError("SchemeMismatch", f"envelope is {env_scheme}, caller asked for {scheme}")
    ours = key_scheme(sk)
    if ours != env_scheme:
        raise EnvelopeError("SchemeMismatch", f"envelope is {env_scheme}, key is {ours}")
    if env_scheme not in SUITES and env_scheme != "rsa-oaep-256":
        raise EnvelopeError("UnknownScheme", f"{env_scheme} is opened by open_ecies.mjs")
    if env_scheme == "rsa-oaep-256" and sk.key_size < 2048:
        raise EnvelopeError("BadInput", "RSA key shorter than 2048 bits")

    if len(body) < C.HEADER_LEN:
        raise EnvelopeError("BadLength", f"body is {len(body)} bytes, shorter than the 32-byte header")
    header, payload = body[: C.HEADER_LEN], body[C.HEADER_LEN :]
    spki = sk.public_key().public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)
    if header[: C.KEY_ID_LEN] != C.key_id_bytes(spki):
        raise EnvelopeError("WrongKey", f"header key id {header[:16].hex()} is not this key's")
    if header[C.KEY_ID_LEN :] != C.context_digest(context):
        raise EnvelopeError("ContextMismatch", "header context digest differs from SHA-256(context)[0..16]")
    want = payload_len(env_scheme, sk)
    if len(payload) != want:
        raise EnvelopeError("BadLength", f"payload is {len(payload)} bytes, expected {want}")

    try:
        if env_scheme in SUITES:
            plain = HPKE_DECRYPT(SUITES[env_scheme], payload, sk, info=context, aad=header)
        else:
            plain = sk.decrypt(
                payload,
                padding.OAEP(mgf=padding.MGF1(algorithm=hashes.SHA256()), algorithm=hashes.SHA256(), label=context),
            )
    except Exception:  # noqa: BLE001 - InvalidTag, ValueError from OpenSSL, ...
        raise EnvelopeError("DecryptionFailed") from None
    if len(plain) != CALL_KEY_LEN:
        raise EnvelopeError("DecryptionFailed", "plaintext is not a 32-byte call key")
    return plain


def open_item(item: dict) -> bytes:
    if not isinstance(item, dict):
        raise EnvelopeError("BadInput", "item is not an object")
    try:
        context = bytes.fromhex(item["context_hex"])
    except (KeyError, TypeError, ValueError):
        raise EnvelopeError("BadInput", "missing or invalid context_hex") from None
    try:
        sk = serialization.load_pem_private_key(_key_pem(item).encode("ascii"), password=None)
    except EnvelopeError:
        raise
    except Exception as exc:  # noqa: BLE001
        raise EnvelopeError("BadInput", f"private key does not load: {exc}") from None
    return open_envelope(item.get("envelope"), sk, context, item.get("scheme"))


def main():
    items = json.load(sys.stdin)
    if not isinstance(items, list):
        sys.exit("stdin must be a JSON list")
    out = []
    for item in items:
        try:
            out.append({"call_key_hex": open_item(item).hex()})
        except EnvelopeError as exc:
            res = {"error": exc.name}
            if exc.detail:
                res["detail"] = exc.detail
            out.append(res)
        except Exception as exc:  # noqa: BLE001 - report per item
            out.append({"error": "BadInput", "detail": str(exc) or type(exc).__name__})
    json.dump(out, sys.stdout, indent=2)
    sys.stdout.write("\n")


if __name__ == "__main__":
    main()

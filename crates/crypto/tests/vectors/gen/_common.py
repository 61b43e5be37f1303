"""Helpers shared by the Python vector generators and openers.

Everything here is written from the oracle-calls spec text (call context
layout, envelope text form, key ids) and from public standards (base58 with
the Bitcoin alphabet, base64url without padding). It deliberately does not
share any code with the Rust crate it tests.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import json
import os
import re
import struct
import sys

VECTORS_DIR = os.path.normpath(os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

CONTEXT_LABEL = b"oracle-calls/call-key/v1"
CONTEXT_FIELDS = ("sessionId", "roomId", "userDid", "oracleDid", "callType")

SCHEMES = ("hpke-p256", "hpke-x25519", "rsa-oaep-256", "ecies-secp256k1")

# v1 body = key_id (16) || context_digest (16) || payload. The 32 header bytes are
# also the HPKE aad.
KEY_ID_LEN = 16
DIGEST_LEN = 16
HEADER_LEN = KEY_ID_LEN + DIGEST_LEN

# The exact error names a negative envelope case can expect (same spelling as the
# Rust EnvelopeError variants); the openers report these as {"error": NAME}.
ENVELOPE_ERRORS = ("BadLength", "DecryptionFailed", "WrongKey", "ContextMismatch", "SchemeMismatch")


def require_cryptography(min_major: int = 48):
    """Fail loudly unless Python `cryptography` >= 48 (it brings the hpke module)."""
    try:
        import cryptography
    except ImportError:  # pragma: no cover - environment problem
        sys.exit("python package 'cryptography' (>= 48) is required")
    major = int(cryptography.__version__.split(".")[0])
    if major < min_major:
        sys.exit(f"cryptography {cryptography.__version__} is too old; need >= {min_major}")
    return cryptography.__version__


def context_bytes(ctx: dict) -> bytes:
    """Spec A: label || for each field: u32be(len(utf8)) || utf8."""
    out = bytearray(CONTEXT_LABEL)
    for field in CONTEXT_FIELDS:
        value = ctx[field]
        if not isinstance(value, str):
            raise TypeError(f"context field {field} must be a string")
        raw = value.encode("utf-8")
        out += struct.pack(">I", len(raw))
        out += raw
    return bytes(out)


# ---------------------------------------------------------------- base64url

_B64URL_RE = re.compile(r"^[A-Za-z0-9_-]*$")


def b64url_encode(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).decode("ascii").rstrip("=")


def b64url_decode_strict(text: str) -> bytes:
    """Decode unpadded base64url; reject padding, other alphabets and non-canonical tails."""
    if not _B64URL_RE.match(text):
        raise ValueError("body is not unpadded base64url")
    if len(text) % 4 == 1:
        raise ValueError("impossible base64url length")
    padded = text + "=" * (-len(text) % 4)
    try:
        data = base64.urlsafe_b64decode(padded)
    except binascii.Error as exc:
        raise ValueError(f"bad base64url: {exc}") from exc
    if b64url_encode(data) != text:
        raise ValueError("non-canonical base64url")
    return data


# ------------------------------------------------------------------- base58

B58_ALPHABET = "123456789ABCDEFGHJKLMNPQRSTUVWXYZabcdefghijkmnopqrstuvwxyz"
_B58_INDEX = {c: i for i, c in enumerate(B58_ALPHABET)}


def b58encode(data: bytes) -> str:
    zeros = len(data) - len(data.lstrip(b"\x00"))
    num = int.from_bytes(data, "big")
    chars = []
    while num > 0:
        num, rem = divmod(num, 58)
        chars.append(B58_ALPHABET[rem])
    return "1" * zeros + "".join(reversed(chars))


def b58decode(text: str) -> bytes:
    num = 0
    for c in text:
        if c not in _B58_INDEX:
            raise ValueError(f"invalid base58 character {c!r}")
        num = num * 58 + _B58_INDEX[c]
    zeros = len(text) - len(text.lstrip("1"))
    body = num.to_bytes((num.bit_length() + 7) // 8, "big") if num else b""
    return b"\x00" * zeros + body


# Published Bitcoin base58 encode/decode pairs (hex -> text).
B58_KNOWN = [
    ("", ""),
    ("61", "2g"),
    ("626262", "a3gV"),
    ("636363", "aPEr"),
    ("73696d706c792061206c6f6e6720737472696e67", "2cFupjhnEsSn59qHXstmK2ffpLv2"),
    ("00eb15231dfceb60925886b67d065299925915aeb172c06647", "1NS17iag9jJgTHD1VXjvLCEnZuQ3rJDE9L"),
    ("516b6fcd0f", "ABnLTmg"),
    ("bf4f89001e670274dd", "3SEo3LWLoPntC"),
    ("572e4794", "3EFU7m"),
    ("ecac89cad93923c02321", "EJDM8drfXA6uyA"),
    ("10c8511e", "Rt5zm"),
    ("00000000000000000000", "1111111111"),
]


def b58_selftest():
    for hx, txt in B58_KNOWN:
        enc = b58encode(bytes.fromhex(hx))
        if enc != txt:
            raise AssertionError(f"base58 self-test failed for {hx}: {enc} != {txt}")
        if b58decode(txt).hex() != hx:
            raise AssertionError(f"base58 decode self-test failed for {txt}")


# -------------------------------------------------------------------- keys


def key_id_from_spki(spki_der: bytes) -> str:
    """Spec C: lowercase hex of the first 16 bytes of SHA-256(SPKI DER)."""
    return hashlib.sha256(spki_der).digest()[:16].hex()


def key_id_bytes(spki_der: bytes) -> bytes:
    """The 16 raw key-id bytes carried in a v1 envelope header."""
    return hashlib.sha256(spki_der).digest()[:KEY_ID_LEN]


def context_digest(context: bytes) -> bytes:
    """The 16 context-digest bytes of a v1 header: SHA-256(context bytes)[0..16]."""
    return hashlib.sha256(context).digest()[:DIGEST_LEN]


def v1_header(key_id: bytes, context: bytes) -> bytes:
    """key_id (16) || context_digest (16); also the HPKE aad."""
    if len(key_id) != KEY_ID_LEN:
        raise ValueError("key id must be 16 bytes")
    return key_id + context_digest(context)


def hpke_aad_functions():
    """Return cryptography's single-shot HPKE (encrypt, decrypt) that take an `aad` argument.

    The public `Suite.encrypt/decrypt` of cryptography 48 take only `info` (aad is always
    empty). The same Rust binding ships `_encrypt_with_aad(suite, plaintext, public_key,
    info=, aad=)` and `_decrypt_with_aad(suite, ciphertext, private_key, info=, aad=)`,
    which are otherwise identical. They are underscore names, so a later release may drop
    them: then this fails loudly instead of sealing without the header as aad.
    hpke_ref.py (written from RFC 9180) opens every HPKE envelope as an independent check.
    """
    from cryptography.hazmat.bindings._rust import openssl as rust_openssl

    enc = getattr(rust_openssl.hpke, "_encrypt_with_aad", None)
    dec = getattr(rust_openssl.hpke, "_decrypt_with_aad", None)
    if enc is None or dec is None:
        sys.exit(
            "this cryptography build lacks hpke._encrypt_with_aad/_decrypt_with_aad; "
            "the v1 HPKE envelopes need aad = header (see gen/README.md)"
        )
    return enc, dec


def load_keys_json() -> dict:
    with open(os.path.join(VECTORS_DIR, "keys.json"), encoding="utf-8") as fh:
        return json.load(fh)


def write_json(name: str, obj) -> str:
    path = os.path.join(VECTORS_DIR, name)
    with open(path, "w", encoding="utf-8") as fh:
        json.dump(obj, fh, indent=2, ensure_ascii=False)
        fh.write("\n")
    return path


def split_envelope(text: str):
    """Return (scheme, body bytes) of `v1.<scheme>.<b64url>`; raise ValueError otherwise."""
    parts = text.split(".")
    if len(parts) != 3 or parts[0] != "v1":
        raise ValueError("not a v1.<scheme>.<body> envelope")
    scheme = parts[1]
    if scheme not in SCHEMES:
        raise ValueError(f"unknown scheme {scheme!r}")
    return scheme, b64url_decode_strict(parts[2])

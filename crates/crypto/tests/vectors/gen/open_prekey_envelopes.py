#!/usr/bin/env python3
"""Open the prekey layer of v2 key envelopes with Python `cryptography`.

stdin : JSON list of {prekey_private_hex, prekey_id, context_hex, envelope}
        (prekey_private_hex: the 32-byte X25519 private key; prekey_id: 16 bytes,
        base64url without padding, as in a signed prekey)
stdout: JSON list, same order, of {"inner_envelope": "v1.<scheme>.<b64url>"} or
        {"error": NAME, "detail": ...}

The inner envelope is a v1 envelope: open it with open_envelopes.py or
open_ecies.mjs and the oracle's long-term key.

v2 text form (prekey spec, docs/PROTOCOL.md §13):
  v2.<scheme>.<base64url without padding of body>
  body = prekeyId (16) || contextDigest16 (16) || enc (32) || ct
  ct   = HPKE base mode, DHKEM(X25519, HKDF-SHA256), HKDF-SHA256, AES-256-GCM,
         single shot: info = context bytes, aad = prekeyId || contextDigest16,
         plaintext = the complete v1 envelope text (ASCII)
  contextDigest16 = SHA-256(context bytes)[0..16]
  <scheme> = the scheme of the inner v1 envelope

Checks, in this order; the first that fails is reported (the same names as the
Rust EnvelopeError variants):
  text form        -> UnknownVersion (vN., N not 1 or 2) / Malformed / UnknownScheme / Encoding
  body length      -> BadLength (v2: 80 ..= 80 + 4096 bytes; v1: at least 32)
  v1 or legacy     -> NoPrekeyLayer (nothing to open here)
  prekey id        -> WrongPrekey
  context digest   -> ContextMismatch
  HPKE open        -> DecryptionFailed
  inner text       -> Malformed (not ASCII, not `v1.<scheme>.<b64url>` with a body of at
                      least 32 bytes, or another scheme than the outer one)
The stored negative vectors each fail exactly one of these checks. Other per-item
problems: BadInput. Exit status is 0 whenever the input parsed.
"""

from __future__ import annotations

import json
import os
import re
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import _common as C  # noqa: E402

C.require_cryptography()

from cryptography.hazmat.primitives import hpke  # noqa: E402
from cryptography.hazmat.primitives.asymmetric import x25519  # noqa: E402

# The prekey layer's HPKE suite: always X25519, whatever the inner scheme is.
SUITE = hpke.Suite(hpke.KEM.X25519, hpke.KDF.HKDF_SHA256, hpke.AEAD.AES_256_GCM)
HPKE_ENCRYPT, HPKE_DECRYPT = C.hpke_aad_functions()

PREKEY_ID_LEN = 16
ENC_LEN = 32
TAG_LEN = 16
MAX_INNER_LEN = 4096
MIN_BODY = C.HEADER_LEN + ENC_LEN + TAG_LEN  # 80
MAX_BODY = MIN_BODY + MAX_INNER_LEN  # 4176


class EnvelopeError(Exception):
    """A per-item failure; `name` is the reported error."""

    def __init__(self, name: str, detail: str = ""):
        super().__init__(detail or name)
        self.name = name
        self.detail = detail


def split_text(text: str):
    """(version, scheme, body) of `v1.` / `v2.<scheme>.<b64url>`, or EnvelopeError.

    Un-prefixed text (legacy base58) comes back as ("legacy", None, b"")."""
    if not isinstance(text, str):
        raise EnvelopeError("BadInput", "missing envelope")
    if "." not in text:
        return "legacy", None, b""
    parts = text.split(".")
    if parts[0] not in ("v1", "v2") and re.fullmatch(r"v[0-9]+", parts[0]):
        raise EnvelopeError("UnknownVersion", f"{parts[0]} is neither v1 nor v2")
    if len(parts) != 3 or parts[0] not in ("v1", "v2"):
        raise EnvelopeError("Malformed", "not a vN.<scheme>.<body> envelope")
    if parts[1] not in C.SCHEMES:
        raise EnvelopeError("UnknownScheme", parts[1])
    try:
        body = C.b64url_decode_strict(parts[2])
    except ValueError as exc:
        raise EnvelopeError("Encoding", str(exc)) from None
    if parts[0] == "v2" and not MIN_BODY <= len(body) <= MAX_BODY:
        raise EnvelopeError("BadLength", f"v2 body is {len(body)} bytes, not {MIN_BODY}..={MAX_BODY}")
    if parts[0] == "v1" and len(body) < C.HEADER_LEN:
        raise EnvelopeError("BadLength", f"v1 body is {len(body)} bytes, shorter than the header")
    return parts[0], parts[1], body


def check_inner(inner: bytes, outer_scheme: str) -> str:
    """The inner plaintext must be a v1 envelope of the outer scheme."""
    try:
        text = inner.decode("ascii")
    except UnicodeDecodeError:
        raise EnvelopeError("Malformed", "inner envelope is not ASCII") from None
    try:
        version, scheme, _body = split_text(text)
    except EnvelopeError as exc:
        raise EnvelopeError("Malformed", f"inner envelope: {exc.name} {exc.detail}") from None
    if version != "v1":
        raise EnvelopeError("Malformed", f"inner envelope is {version}, not v1")
    if scheme != outer_scheme:
        raise EnvelopeError("Malformed", f"inner envelope is {scheme}, outer says {outer_scheme}")
    return text


def open_prekey_layer(text: str, prekey_private: bytes, prekey_id: bytes, context: bytes) -> str:
    """Return the inner v1 envelope text or raise EnvelopeError."""
    version, scheme, body = split_text(text)
    if version != "v2":
        raise EnvelopeError("NoPrekeyLayer", f"a {version} envelope has no prekey layer")
    header, payload = body[: C.HEADER_LEN], body[C.HEADER_LEN :]
    if header[:PREKEY_ID_LEN] != prekey_id:
        raise EnvelopeError("WrongPrekey", f"header prekey id {header[:PREKEY_ID_LEN].hex()} is not ours")
    if header[PREKEY_ID_LEN:] != C.context_digest(context):
        raise EnvelopeError("ContextMismatch", "header context digest differs from SHA-256(context)[0..16]")
    sk = x25519.X25519PrivateKey.from_private_bytes(prekey_private)
    try:
        inner = HPKE_DECRYPT(SUITE, payload, sk, info=context, aad=header)
    except Exception:  # noqa: BLE001 - InvalidTag, ValueError from OpenSSL, ...
        raise EnvelopeError("DecryptionFailed") from None
    return check_inner(inner, scheme)


def open_item(item: dict) -> str:
    if not isinstance(item, dict):
        raise EnvelopeError("BadInput", "item is not an object")
    try:
        context = bytes.fromhex(item["context_hex"])
        private = bytes.fromhex(item["prekey_private_hex"])
        prekey_id = C.b64url_decode_strict(item["prekey_id"])
    except (KeyError, TypeError, ValueError) as exc:
        raise EnvelopeError("BadInput", f"missing or invalid field: {exc}") from None
    if len(private) != 32 or len(prekey_id) != PREKEY_ID_LEN:
        raise EnvelopeError("BadInput", "prekey private key must be 32 bytes, prekey id 16")
    return open_prekey_layer(item.get("envelope"), private, prekey_id, context)


def main():
    items = json.load(sys.stdin)
    if not isinstance(items, list):
        sys.exit("stdin must be a JSON list")
    out = []
    for item in items:
        try:
            out.append({"inner_envelope": open_item(item)})
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

#!/usr/bin/env python3
"""Verify signed prekeys with Python `cryptography`'s Ed25519 (reverse-direction check).

stdin : JSON list of {signed, signing_public_key, oracle_did}
        signed: {"prekeyId", "publicKey", "lastResort", "signature"} (base64url, no padding)
        signing_public_key: the oracle's prekey signing key, 32 bytes base64url
stdout: JSON list, same order, of {"ok": true} or {"error": NAME, "field": ...}

The signature is Ed25519 (RFC 8032, pure) over
  str("oracle-calls/prekey/v1") || str(oracleDid) || prekeyId (16) || publicKey (32)
  || u8(lastResort ? 1 : 0)
  str(s) = u32 big-endian byte length of s || UTF-8 bytes of s

Errors (the Rust PrekeyError variant names): Encoding or BadLength with the field
(checked in the order prekeyId, publicKey, signature), BadSignature. Other per-item
problems: BadInput. Exit status is 0 whenever the input parsed.
"""

from __future__ import annotations

import json
import os
import struct
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import _common as C  # noqa: E402

C.require_cryptography()

from cryptography.exceptions import InvalidSignature  # noqa: E402
from cryptography.hazmat.primitives.asymmetric import ed25519  # noqa: E402

SIGNATURE_LABEL = "oracle-calls/prekey/v1"
FIELD_LENGTHS = (("prekeyId", 16), ("publicKey", 32), ("signature", 64))


class PrekeyError(Exception):
    """A per-item failure; `name` is the reported error, `field` the JSON field if any."""

    def __init__(self, name: str, field: str | None = None):
        super().__init__(name if field is None else f"{name} ({field})")
        self.name = name
        self.field = field


def str_field(s: str) -> bytes:
    """u32 big-endian byte length || UTF-8 bytes."""
    raw = s.encode("utf-8")
    return struct.pack(">I", len(raw)) + raw


def signed_bytes(oracle_did: str, prekey_id: bytes, public_key: bytes, last_resort: bool) -> bytes:
    """The bytes the prekey signing key signs."""
    assert len(prekey_id) == 16 and len(public_key) == 32
    return (
        str_field(SIGNATURE_LABEL)
        + str_field(oracle_did)
        + prekey_id
        + public_key
        + (b"\x01" if last_resort else b"\x00")
    )


def verify(signed: dict, signing_public_key: str, oracle_did: str) -> dict:
    """The decoded fields of a good signed prekey, or PrekeyError."""
    fields = {}
    for field, want in FIELD_LENGTHS:
        try:
            raw = C.b64url_decode_strict(signed[field])
        except ValueError:
            raise PrekeyError("Encoding", field) from None
        if len(raw) != want:
            raise PrekeyError("BadLength", field)
        fields[field] = raw
    if not isinstance(signed.get("lastResort"), bool):
        raise PrekeyError("BadInput", "lastResort")
    pk = ed25519.Ed25519PublicKey.from_public_bytes(C.b64url_decode_strict(signing_public_key))
    msg = signed_bytes(oracle_did, fields["prekeyId"], fields["publicKey"], signed["lastResort"])
    try:
        pk.verify(fields["signature"], msg)
    except InvalidSignature:
        raise PrekeyError("BadSignature") from None
    return fields


def main():
    items = json.load(sys.stdin)
    if not isinstance(items, list):
        sys.exit("stdin must be a JSON list")
    out = []
    for item in items:
        try:
            verify(item["signed"], item["signing_public_key"], item["oracle_did"])
            out.append({"ok": True})
        except PrekeyError as exc:
            res = {"error": exc.name}
            if exc.field:
                res["field"] = exc.field
            out.append(res)
        except Exception as exc:  # noqa: BLE001 - report per item
            out.append({"error": "BadInput", "detail": str(exc) or type(exc).__name__})
    json.dump(out, sys.stdout, indent=2)
    sys.stdout.write("\n")


if __name__ == "__main__":
    main()

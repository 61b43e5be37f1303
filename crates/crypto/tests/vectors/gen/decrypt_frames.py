#!/usr/bin/env python3
"""Decrypt LiveKit E2EE frames with Python `cryptography` (reverse-direction check).

stdin : JSON list of {kdf: "pbkdf2"|"hkdf", material_hex, ratchet_steps, kind: "audio"|"vp8"|"vp9", encrypted_hex}
        kind "data" is also accepted for a data packet: then encrypted_hex = ct || tag and iv_hex is required.
stdout: JSON list, same order, of {"plaintext_hex": ..., "key_index": n} or {"error": ...}
        (key_index is the trailer's KID byte; absent for empty pass-through frames and data packets)

Frame layout (livekit-interop.md 1.6): header || ct || tag(16) || iv || iv_len || kid.
The IV length byte must be 12 (native libwebrtc rejects anything else).
"""

from __future__ import annotations

import json
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import _common as C  # noqa: E402

C.require_cryptography()

from cryptography.hazmat.primitives.ciphers.aead import AESGCM  # noqa: E402

from gen_frames import kdf  # noqa: E402  (PBKDF2HMAC / HKDF from cryptography)

TAG_LEN = 16
IV_LEN = 12

_keys = {}


def aes_key(kdf_name: str, material: bytes, steps: int) -> bytes:
    k = (kdf_name, material, steps)
    if k not in _keys:
        if kdf_name not in ("pbkdf2", "hkdf"):
            raise ValueError(f"unknown kdf {kdf_name!r}")
        if not isinstance(steps, int) or steps < 0 or steps > 256:
            raise ValueError("bad ratchet_steps")
        m = material
        for _ in range(steps):
            m = kdf(kdf_name, m, 256)
        _keys[k] = kdf(kdf_name, m, 128)
    return _keys[k]


def header_len(kind: str, first_byte: int) -> int:
    if kind == "audio":
        return 1
    if kind == "vp8":
        return 10 if (first_byte & 0x01) == 0 else 3
    if kind == "vp9":
        return 0
    raise ValueError(f"unknown kind {kind!r}")


def decrypt_one(item: dict) -> dict:
    key = aes_key(item["kdf"], bytes.fromhex(item["material_hex"]), item.get("ratchet_steps", 0))
    data = bytes.fromhex(item["encrypted_hex"])
    kind = item["kind"]
    if kind == "data":
        try:
            return {"plaintext_hex": AESGCM(key).decrypt(bytes.fromhex(item["iv_hex"]), data, None).hex()}
        except Exception:  # noqa: BLE001
            raise ValueError("decryption failed") from None
    if not data:
        return {"plaintext_hex": ""}  # empty frames pass through
    if len(data) < 2:
        raise ValueError("frame too short")
    kid, iv_len = data[-1], data[-2]
    if iv_len != IV_LEN:
        raise ValueError(f"IV length byte is {iv_len}, expected 12")
    n = header_len(kind, data[0])
    if len(data) < n + TAG_LEN + iv_len + 2:
        raise ValueError("frame too short")
    iv = data[-2 - iv_len:-2]
    header = data[:n]
    try:
        plain = AESGCM(key).decrypt(iv, data[n:-2 - iv_len], header)
    except Exception:  # noqa: BLE001
        raise ValueError("decryption failed") from None
    return {"plaintext_hex": (header + plain).hex(), "key_index": kid}


def main():
    items = json.load(sys.stdin)
    if not isinstance(items, list):
        sys.exit("stdin must be a JSON list")
    out = []
    for item in items:
        try:
            out.append(decrypt_one(item))
        except Exception as exc:  # noqa: BLE001
            out.append({"error": str(exc) or type(exc).__name__})
    json.dump(out, sys.stdout, indent=2)
    sys.stdout.write("\n")


if __name__ == "__main__":
    main()

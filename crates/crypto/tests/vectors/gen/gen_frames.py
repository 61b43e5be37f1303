#!/usr/bin/env python3
"""LiveKit frame E2EE vectors with Python `cryptography` primitives -> ../frames.json.

Implements livekit-interop.md section 1 (and section 2 for data packets) from the
spec text only: PBKDF2HMAC / HKDF for key derivation and ratchet, AESGCM for the
frames. Inputs come from frame_cases.json; the worked vectors of section 1.12
are asserted byte for byte below and the script exits non-zero if any differs.
"""

from __future__ import annotations

import hashlib
import json
import os
import platform
import struct
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import _common as C  # noqa: E402

CRYPTOGRAPHY_VERSION = C.require_cryptography()

from cryptography.hazmat.backends import default_backend  # noqa: E402
from cryptography.hazmat.primitives import hashes  # noqa: E402
from cryptography.hazmat.primitives.ciphers.aead import AESGCM  # noqa: E402
from cryptography.hazmat.primitives.kdf.hkdf import HKDF  # noqa: E402
from cryptography.hazmat.primitives.kdf.pbkdf2 import PBKDF2HMAC  # noqa: E402

GEN_DIR = os.path.dirname(os.path.abspath(__file__))
GENERATOR = (
    f"gen/gen_frames.py (Python {platform.python_version()}, cryptography {CRYPTOGRAPHY_VERSION} "
    f"PBKDF2HMAC/HKDF/AESGCM, {default_backend().openssl_version_text()})"
)

SALT = b"LKFrameEncryptionKey"
PBKDF2_ITERATIONS = 100_000
HKDF_INFO = bytes(128)
IV_LEN = 12
RATCHETS_RECORDED = 3

# ---- livekit-interop.md section 1.12, copied from the doc (spaces/bars removed).
DOC = {
    "pbkdf2_key0": "0961650c1bebd64a7ca427e26d6bc62b",
    "pbkdf2_r1_material": "0961650c1bebd64a7ca427e26d6bc62b81b494df74146fe220ef07ef3e5b403b",
    "pbkdf2_r1_key": "ee18e7db9c8522fdd3efff4aa4048012",
    "pbkdf2_r2_material": "ee18e7db9c8522fdd3efff4aa40480126414e5d0a306c79e20f92cf02131f6b6",
    "pbkdf2_r2_key": "c49c095a66dd1d6956fb3a1afcaea54b",
    "hkdf_key0": "6d0dd7b3d6f4efde47ab9a9e15abde76",
    "hkdf_r1_material": "6d0dd7b3d6f4efde47ab9a9e15abde7635c45a13bddf5da15eed01f40178d328",
    "hkdf_r1_key": "bd83f159cff92bfaf55d2d2409c21221",
    "opus_iv": "112233440001e2400001e239",
    "opus_key0": "fc" "e26da7a713cedd80b4849c10e8237027678938" "18a7b938207b30efc5d518afdeb7ac60"
    "112233440001e2400001e239" "0c" "00",
    "opus_ratchet1_kid1": "fcb274eba5591c9eb37110d16d9d8a2d8e4d40d3762c0522812ec8f38c3ba8db1f168f8a"
    "112233440001e2400001e2390c01",
    "vp8_key_iv": "aabbccdd00015f9000015f90",
    "vp8_key": "1002009d012a08000800aa58dc6cf96c868b9dcc1a74a709c88dcfc86ef89b03516359070da6bd1519c6ff"
    "39059716aabbccdd00015f9000015f900c00",
    "vp8_delta_iv": "aabbccdd00016b4800016b47",
    "vp8_delta": "310100a98daa9383246354bda719c3b51fd63ea160866116f09c232f96f16ce954e54faabbccdd00016b48"
    "00016b470c00",
    "data_plaintext": "0a07120568656c6c6f",
    "data_ciphertext": "5d6ec7d9bede8fbc26d0a7e858b03dd5aed5a83116bc0cf407",
}

FAILURES = []


def check(label: str, got: str, want: str):
    if got != want:
        FAILURES.append(f"{label}: got {got}, livekit-interop.md 1.12 says {want}")


# ------------------------------------------------------------------ KDFs


def kdf(name: str, material: bytes, bits: int) -> bytes:
    if name == "pbkdf2":
        return PBKDF2HMAC(algorithm=hashes.SHA256(), length=bits // 8, salt=SALT,
                          iterations=PBKDF2_ITERATIONS).derive(material)
    if name == "hkdf":
        return HKDF(algorithm=hashes.SHA256(), length=bits // 8, salt=SALT, info=HKDF_INFO).derive(material)
    raise ValueError(f"unknown kdf {name}")


_cache = {}


def key_chain(kdf_name: str, material: bytes, steps: int):
    """Return [(material_i, aes_key_i)] for i = 0..steps (ratchet: material' = KDF(material, 256))."""
    chain = [(material, kdf(kdf_name, material, 128))]
    for _ in range(steps):
        nxt = kdf(kdf_name, chain[-1][0], 256)
        chain.append((nxt, kdf(kdf_name, nxt, 128)))
    return chain


def aes_key_at(kdf_name: str, material: bytes, steps: int) -> bytes:
    k = (kdf_name, material, steps)
    if k not in _cache:
        _cache[k] = key_chain(kdf_name, material, steps)[-1][1]
    return _cache[k]


# ---------------------------------------------------------------- frames


def stream(label: str, length: int) -> bytes:
    out = bytearray()
    i = 0
    while len(out) < length:
        out += hashlib.sha256(label.encode("utf-8") + struct.pack(">I", i)).digest()
        i += 1
    return bytes(out[:length])


def plaintext_of(spec: dict) -> bytes:
    if "hex" in spec:
        return bytes.fromhex(spec["hex"])
    data = bytearray(stream(spec["stream"], spec["length"]))
    prefix = bytes.fromhex(spec.get("prefix_hex", ""))
    data[: len(prefix)] = prefix
    return bytes(data)


def header_len(kind: str, frame: bytes) -> int:
    if kind == "audio":
        return 1
    if kind == "vp8":
        return 10 if (frame[0] & 0x01) == 0 else 3
    if kind == "vp9":
        return 0
    raise ValueError(f"unknown kind {kind}")


def make_iv(ssrc: int, ts: int, send_count: int) -> bytes:
    return struct.pack(">III", ssrc, ts, (ts - (send_count % 0xFFFF)) % (1 << 32))


def encrypt_frame(key: bytes, kind: str, frame: bytes, iv: bytes, key_index: int) -> bytes:
    if not frame:
        return b""  # empty frames pass through unencrypted
    n = header_len(kind, frame)
    header = frame[:n]
    sealed = AESGCM(key).encrypt(iv, frame[n:], header)  # ciphertext || 16-byte tag
    return header + sealed + iv + bytes([IV_LEN, key_index])


def decrypt_frame(key: bytes, kind: str, data: bytes) -> bytes:
    if not data:
        return b""
    iv_len = data[-2]
    iv = data[-2 - iv_len:-2]
    n = header_len(kind, data)
    return data[:n] + AESGCM(key).decrypt(iv, data[n:-2 - iv_len], data[:n])


# ---------------------------------------------------------- data packets


def varint(n: int) -> bytes:
    out = bytearray()
    while True:
        b = n & 0x7F
        n >>= 7
        if n:
            out.append(b | 0x80)
        else:
            out.append(b)
            return bytes(out)


def encrypted_packet_payload_user(payload: bytes) -> bytes:
    """EncryptedPacketPayload{user (1): UserPacket{payload (2): bytes}}; proto3 omits an empty payload."""
    inner = (b"\x12" + varint(len(payload)) + payload) if payload else b""
    return b"\x0a" + varint(len(inner)) + inner


def user_payload_of(spec: dict) -> bytes:
    if "utf8" in spec:
        return spec["utf8"].encode("utf-8")
    return stream(spec["stream"], spec["length"])


# ------------------------------------------------------------------ main


def main():
    with open(os.path.join(GEN_DIR, "frame_cases.json"), encoding="utf-8") as fh:
        spec = json.load(fh)
    assert spec["salt_utf8"].encode() == SALT

    key_sets = {}
    derivations = []
    for ks in spec["key_sets"]:
        material = bytes.fromhex(ks["material_hex"])
        if ks["mode"] == "pbkdf2":
            assert material == ks["call_key_hex"].encode("ascii"), "pbkdf2 mode material must be hex ASCII"
        if ks["mode"] == "hkdf":
            assert material == bytes.fromhex(ks["call_key_hex"])
        key_sets[ks["name"]] = ks
        chain = key_chain(ks["kdf"], material, RATCHETS_RECORDED)
        for steps, (_, key) in enumerate(chain):
            _cache[(ks["kdf"], material, steps)] = key
        derivations.append({
            "name": ks["name"],
            "mode": ks["mode"],
            "kdf": ks["kdf"],
            **({"call_key_hex": ks["call_key_hex"]} if "call_key_hex" in ks else {}),
            "material_hex": material.hex(),
            "aes_key_hex": chain[0][1].hex(),
            "ratchets": [{"material_hex": m.hex(), "aes_key_hex": k.hex()} for m, k in chain[1:]],
        })

    by_name = {d["name"]: d for d in derivations}
    d = by_name["livekitrocks-pbkdf2"]
    check("pbkdf2 key0", d["aes_key_hex"], DOC["pbkdf2_key0"])
    check("pbkdf2 ratchet1 material", d["ratchets"][0]["material_hex"], DOC["pbkdf2_r1_material"])
    check("pbkdf2 ratchet1 key", d["ratchets"][0]["aes_key_hex"], DOC["pbkdf2_r1_key"])
    check("pbkdf2 ratchet2 material", d["ratchets"][1]["material_hex"], DOC["pbkdf2_r2_material"])
    check("pbkdf2 ratchet2 key", d["ratchets"][1]["aes_key_hex"], DOC["pbkdf2_r2_key"])
    d = by_name["ikm-00-1f-hkdf"]
    check("hkdf key0", d["aes_key_hex"], DOC["hkdf_key0"])
    check("hkdf ratchet1 material", d["ratchets"][0]["material_hex"], DOC["hkdf_r1_material"])
    check("hkdf ratchet1 key", d["ratchets"][0]["aes_key_hex"], DOC["hkdf_r1_key"])
    # Section 1.1 invariant: the AES key is the first 16 bytes of the next ratchet material.
    for der in derivations:
        mats = [der["material_hex"]] + [r["material_hex"] for r in der["ratchets"]]
        keys = [der["aes_key_hex"]] + [r["aes_key_hex"] for r in der["ratchets"]]
        for i in range(len(mats) - 1):
            assert mats[i + 1][:32] == keys[i], f"{der['name']}: key is not the ratchet prefix"

    frames = []
    for f in spec["frames"]:
        ks = key_sets[f["key_set"]]
        material = bytes.fromhex(ks["material_hex"])
        key = aes_key_at(ks["kdf"], material, f["ratchet_steps"])
        pt = plaintext_of(f["plaintext"])
        iv = make_iv(f["ssrc"], f["rtp_timestamp"], f["send_count"]) if pt else b""
        enc = encrypt_frame(key, f["kind"], pt, iv, f["key_index"])
        assert decrypt_frame(key, f["kind"], enc) == pt
        rec = {
            "name": f["name"],
            "key_set": f["key_set"],
            "kdf": ks["kdf"],
            "material_hex": material.hex(),
            "ratchet_steps": f["ratchet_steps"],
            "aes_key_hex": key.hex(),
            "key_index": f["key_index"],
            "kind": f["kind"],
            "ssrc": f["ssrc"],
            "rtp_timestamp": f["rtp_timestamp"],
            "send_count": f["send_count"],
            "iv_hex": iv.hex(),
            "header_len": header_len(f["kind"], pt) if pt else 0,
            "plaintext_hex": pt.hex(),
            "encrypted_hex": enc.hex(),
        }
        if f.get("doc_vector"):
            rec["doc_vector"] = True
        if f.get("note"):
            rec["note"] = f["note"]
        if pt:
            assert len(enc) == len(pt) + 30
        frames.append(rec)

    fr = {f["name"]: f for f in frames}
    check("opus IV", fr["doc/opus-key0-kid0"]["iv_hex"], DOC["opus_iv"])
    check("opus key0 frame", fr["doc/opus-key0-kid0"]["encrypted_hex"], DOC["opus_key0"])
    check("opus ratchet1 KID1 frame", fr["doc/opus-ratchet1-kid1"]["encrypted_hex"], DOC["opus_ratchet1_kid1"])
    check("vp8 key IV", fr["doc/vp8-key-8x8-blank"]["iv_hex"], DOC["vp8_key_iv"])
    check("vp8 key frame", fr["doc/vp8-key-8x8-blank"]["encrypted_hex"], DOC["vp8_key"])
    check("vp8 delta IV", fr["doc/vp8-delta"]["iv_hex"], DOC["vp8_delta_iv"])
    check("vp8 delta frame", fr["doc/vp8-delta"]["encrypted_hex"], DOC["vp8_delta"])
    assert fr["doc/vp8-key-8x8-blank"]["header_len"] == 10 and fr["doc/vp8-delta"]["header_len"] == 3
    assert fr["hkdf/audio-iv-wrap"]["iv_hex"].endswith("fffffffe")

    packets = []
    for p in spec["data_packets"]:
        ks = key_sets[p["key_set"]]
        material = bytes.fromhex(ks["material_hex"])
        key = aes_key_at(ks["kdf"], material, p["ratchet_steps"])
        pt = encrypted_packet_payload_user(user_payload_of(p["user_payload"]))
        iv = bytes.fromhex(p["iv_hex"])
        ct = AESGCM(key).encrypt(iv, pt, None)
        rec = {
            "name": p["name"],
            "key_set": p["key_set"],
            "kdf": ks["kdf"],
            "material_hex": material.hex(),
            "ratchet_steps": p["ratchet_steps"],
            "aes_key_hex": key.hex(),
            "key_index": p["key_index"],
            "iv_hex": iv.hex(),
            "plaintext_hex": pt.hex(),
            "ciphertext_hex": ct.hex(),
        }
        if p.get("doc_vector"):
            rec["doc_vector"] = True
        packets.append(rec)
    dp = packets[0]
    check("data packet plaintext", dp["plaintext_hex"], DOC["data_plaintext"])
    check("data packet ciphertext", dp["ciphertext_hex"], DOC["data_ciphertext"])

    if FAILURES:
        for f in FAILURES:
            print("MISMATCH " + f, file=sys.stderr)
        sys.exit("gen_frames.py: livekit-interop.md 1.12 vectors did NOT reproduce; frames.json not written")

    C.write_json("frames.json", {
        "generator": GENERATOR,
        "rules": {
            "kdf": "pbkdf2 = PBKDF2-HMAC-SHA256, 100000 iterations, salt \"LKFrameEncryptionKey\"; hkdf = HKDF-SHA256, "
            "same salt, info = 128 zero bytes",
            "aes_key": "KDF(material, 128 bits); ratchet: material' = KDF(material, 256 bits)",
            "iv": "u32be(ssrc) || u32be(rtp_timestamp) || u32be((rtp_timestamp - send_count mod 0xFFFF) mod 2^32)",
            "frame": "header (header_len) || AES-128-GCM(ciphertext || 16-byte tag, aad = header) || iv (12) || 0x0c || key_index",
            "header_len": "audio 1; vp8 10 if byte0 bit0 == 0 (key frame) else 3; vp9 0",
            "data_packet": "ciphertext_hex = AES-128-GCM(plaintext = EncryptedPacketPayload protobuf, no aad) = ct || tag",
        },
        "derivations": derivations,
        "frames": frames,
        "data_packets": packets,
    })
    print(f"gen_frames.py: livekit-interop.md 1.12 reproduced; {len(derivations)} derivations, "
          f"{len(frames)} frames, {len(packets)} data packets")


if __name__ == "__main__":
    main()

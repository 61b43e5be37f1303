#!/usr/bin/env python3
"""Writes the committed seed inputs of the fuzz targets that need structure to get deep:

- kt_verify: the genuine answers of the real akd directory in
  crates/kt/tests/vectors/kt_lookup.json (lookup and key-history proofs as raw protobuf, one
  JSON answer of each kind, a signed checkpoint) and the record encodings of
  crates/kt/tests/vectors/kt.json, in the input layout fuzz_targets/kt_verify.rs documents.
- wav_reader: small WAV streams (mono; stereo with a LIST chunk and an unknown data size).
- prekey_open: the genuine envelope and signed prekey, unchanged (modes 2 and 3).

Run from anywhere: python3 fuzz/seeds/gen_seeds.py (rewrites fuzz/seeds/<target>/).
"""
import base64
import hashlib
import json
import pathlib
import shutil
import struct

ROOT = pathlib.Path(__file__).resolve().parents[2]
SEEDS = ROOT / "fuzz" / "seeds"


def b64url(text):
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def write(target, data):
    d = SEEDS / target
    d.mkdir(parents=True, exist_ok=True)
    # Named by content, as libFuzzer names corpus files.
    (d / hashlib.sha1(data).hexdigest()).write_bytes(data)


def kt():
    v = json.loads((ROOT / "crates/kt/tests/vectors/kt_lookup.json").read_text())
    dids = sorted({c["did"] for c in v["cases"] + v["histories"]})
    cps = sorted(
        v["checkpoints"],
        key=lambda c: (c["checkpoint"]["epoch"], bytes.fromhex(c["checkpoint"]["rootHash"]), b64url(c["signature"])),
    )
    cp_index = {c["signature"]: i for i, c in enumerate(cps)}
    seen = set()
    for mode, cases in ((0, v["cases"]), (1, v["histories"])):
        json_written = False
        for c in cases:
            if not c["expect"]["ok"]:
                continue
            body = json.loads(c["body"])
            sig = body["checkpoint"]["signature"]
            d = dids.index(c["did"])
            if not json_written:
                write("kt_verify", bytes([mode + 2 + 6 * d]) + c["body"].encode())
                write("kt_verify", bytes([5]) + json.dumps(body["checkpoint"]).encode())
                json_written = True
            if sig not in cp_index or (mode, d, sig) in seen:
                continue
            seen.add((mode, d, sig))
            write("kt_verify", bytes([mode + 6 * d, cp_index[sig]]) + b64url(body["proof"]))
    r = json.loads((ROOT / "crates/kt/tests/vectors/kt.json").read_text())
    for rec in r["records"]:
        write("kt_verify", bytes([4]) + bytes.fromhex(rec["bytesHex"]))
        write("kt_verify", bytes([5]) + json.dumps(rec["record"]).encode())


def wav(rate, channels, samples, data_size=None, extra=b""):
    data = b"".join(struct.pack("<h", s) for s in samples)
    fmt = struct.pack("<HHIIHH", 1, channels, rate, rate * 2 * channels, 2 * channels, 16)
    size = len(data) if data_size is None else data_size
    body = b"WAVEfmt " + struct.pack("<I", 16) + fmt + extra + b"data" + struct.pack("<I", size) + data
    return b"RIFF" + struct.pack("<I", len(body)) + body


def speech():
    # First byte: the piece size the target pushes the stream in (0 = whole).
    write("wav_reader", bytes([0]) + wav(16000, 1, [i * 97 % 2000 - 1000 for i in range(64)]))
    write("wav_reader", bytes([7]) + wav(22050, 2, list(range(-40, 40)), 0xFFFFFFFF, b"LIST\x05\x00\x00\x00abcde\x00"))


def prekey():
    write("prekey_open", bytes([2]))
    write("prekey_open", bytes([3]))


for t in ("kt_verify", "wav_reader", "prekey_open"):
    shutil.rmtree(SEEDS / t, ignore_errors=True)
kt()
speech()
prekey()

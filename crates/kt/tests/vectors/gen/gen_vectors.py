#!/usr/bin/env python3
"""Test vectors for oracle-calls key transparency, made without any of our Rust code.

The checkpoint signature uses the PyPI `cryptography` package (Ed25519, RFC 8032); the byte
layouts are written here with `struct` straight from the definitions in
crates/kt/src/checkpoint.rs (`Checkpoint::signed_bytes`) and crates/kt/src/record.rs
(`OracleRecord`'s encoding) and crates/kt/src/person.rs (`PersonRecord`'s). Run from this directory: `python3 gen_vectors.py > ../kt.json`.
"""
import base64
import hashlib
import json
import struct

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey


def b64url(b: bytes) -> str:
    return base64.urlsafe_b64encode(b).rstrip(b"=").decode()


def s(text: str) -> bytes:
    raw = text.encode("utf-8")
    return struct.pack(">I", len(raw)) + raw


def record_bytes(rec: dict) -> bytes:
    # A record with a prekey signing key is v2: the same fields, then that key.
    v2 = "prekeySigningKey" in rec
    out = s("oracle-calls/kt-record/v2" if v2 else "oracle-calls/kt-record/v1")
    out += struct.pack(">I", len(rec["keys"]))
    for k in rec["keys"]:
        out += s(k["scheme"]) + s(k["keyId"]) + s(k["publicKey"])
    out += s(rec["matrixUserId"])
    out += struct.pack(">I", len(rec["botDevices"]))
    for d in rec["botDevices"]:
        out += s(d["deviceId"]) + s(d["ed25519"])
    out += s(rec["agentName"])
    if v2:
        out += s(rec["prekeySigningKey"])
    return out


def person_bytes(rec: dict) -> bytes:
    out = s("oracle-calls/kt-person/v1") + s(rec["matrixUserId"])
    out += struct.pack(">I", len(rec["devices"]))
    for d in rec["devices"]:
        out += s(d["deviceId"]) + s(d["ed25519"])
    return out


def ed25519_text(seed_byte: int) -> str:
    """A real Ed25519 public key, as Matrix writes it (unpadded standard base64)."""
    pk = Ed25519PrivateKey.from_private_bytes(bytes([seed_byte]) * 32).public_key()
    raw = pk.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    return base64.b64encode(raw).rstrip(b"=").decode()


def checkpoint_bytes(epoch: int, root: bytes, time_ms: int) -> bytes:
    return b"oracle-calls/kt-checkpoint/v1" + struct.pack(">Q", epoch) + root + struct.pack(">q", time_ms)


seed = bytes(range(32))
key = Ed25519PrivateKey.from_private_bytes(seed)
public = key.public_key().public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
spki = key.public_key().public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)
key_id = hashlib.sha256(spki).digest()[:16].hex()

checkpoints = []
for epoch, root, time_ms in [
    (0, bytes(32), 0),
    (1, hashlib.sha256(b"root 1").digest(), 1767225600000),
    (2**40 + 3, hashlib.sha256(b"root big").digest(), -1),
]:
    msg = checkpoint_bytes(epoch, root, time_ms)
    checkpoints.append({
        "signedBytesHex": msg.hex(),
        "signedCheckpoint": {
            "checkpoint": {"epoch": epoch, "rootHash": root.hex(), "timeMs": time_ms},
            "signature": b64url(key.sign(msg)),
            "keyId": key_id,
        },
    })

records = []
for rec in [
    {
        "keys": [
            {"keyId": "0123456789abcdef0123456789abcdef", "scheme": "hpke-p256", "publicKey": "BAAA"},
            {"keyId": "fedcba9876543210fedcba9876543210", "scheme": "rsa-oaep-256", "publicKey": "MIIB"},
        ],
        "matrixUserId": "@oracle:example.org",
        "botDevices": [{"deviceId": "ABCDEFGHIJ", "ed25519": "l4Vd+2jIEV1a"}],
        "agentName": "echo",
    },
    {"keys": [], "matrixUserId": "", "botDevices": [], "agentName": "ünïcødé-agent"},
    {
        "keys": [{"keyId": "00112233445566778899aabbccddeeff", "scheme": "hpke-x25519", "publicKey": "X25519"}],
        "matrixUserId": "@oracle:example.org",
        "botDevices": [{"deviceId": "BOTDEV", "ed25519": "edkey"}],
        "agentName": "echo",
        "prekeySigningKey": b64url(public),
    },
]:
    records.append({"record": rec, "bytesHex": record_bytes(rec).hex()})

people = []
for rec in [
    {"matrixUserId": "@alice:example.org", "devices": [{"deviceId": "ALICEDEV", "ed25519": base64.b64encode(bytes(range(32))).rstrip(b"=").decode()}]},
    {"matrixUserId": "@bob:localhost:8448", "devices": [
        {"deviceId": "PHONE", "ed25519": ed25519_text(7)},
        {"deviceId": "LAPTOP", "ed25519": ed25519_text(8)},
    ]},
    {"matrixUserId": "@withdrawn=all/devices:example.org", "devices": []},
]:
    people.append({"record": rec, "bytesHex": person_bytes(rec).hex()})

print(json.dumps({
    "generator": "crates/kt/tests/vectors/gen/gen_vectors.py (PyPI cryptography)",
    "signingPublicKey": b64url(public),
    "signingKeyId": key_id,
    "checkpoints": checkpoints,
    "records": records,
    "people": people,
}, indent=2, ensure_ascii=False))

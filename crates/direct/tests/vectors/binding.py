#!/usr/bin/env python3
"""Independent implementation of the direct-call binding (docs/PROTOCOL.md §14.4) with Python
`cryptography` only: P-256 ECDH, HKDF-SHA256, HMAC-SHA256. Shares no code with the Rust crate.

    python3 binding.py --generate > binding.json   # make the vectors from the inputs below
    python3 binding.py --check binding.json        # recompute every vector; exit 1 on mismatch
    python3 binding.py --check -                   # the same, reading the JSON from stdin
"""

import base64
import hashlib
import json
import sys

from cryptography.hazmat.primitives import hashes, hmac
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.kdf.hkdf import HKDF
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

KDF_LABEL = b"oracle-calls/direct/v1"
CONFIRM_LABEL = b"oracle-calls/direct/v1 confirm"


def lp(x: bytes) -> bytes:
    if len(x) > 0xFFFF:
        raise ValueError("field longer than 65535 bytes")
    return len(x).to_bytes(2, "big") + x


def b64url(b: bytes) -> str:
    return base64.urlsafe_b64encode(b).rstrip(b"=").decode()


def fingerprint(attr: str) -> bytes:
    """The 32 bytes of an `a=fingerprint:` value `sha-256 AB:CD:...`."""
    hash_name, hexes = attr.split()
    if hash_name.lower() != "sha-256":
        raise ValueError(f"unsupported hash {hash_name}")
    parts = hexes.split(":")
    if len(parts) != 32 or any(len(p) != 2 for p in parts):
        raise ValueError("malformed fingerprint")
    return bytes(int(p, 16) for p in parts)


def private_key(hex_scalar: str) -> ec.EllipticCurvePrivateKey:
    return ec.derive_private_key(int(hex_scalar, 16), ec.SECP256R1())


def public_b64(key: ec.EllipticCurvePrivateKey) -> str:
    return b64url(key.public_key().public_bytes(Encoding.X962, PublicFormat.UncompressedPoint))


def info_bytes(v: dict) -> bytes:
    out = KDF_LABEL + lp(v["call_id"].encode("utf-8"))
    for who in ("caller", "callee"):
        p = v[who]
        out += lp(p["user_id"].encode("utf-8"))
        out += lp(p["device_id"].encode("utf-8"))
        out += lp(bytes.fromhex(p["ed25519_hex"]))
    out += lp(fingerprint(v["fp_offer"])) + lp(fingerprint(v["fp_answer"]))
    return out


def hkdf(salt: bytes, ikm: bytes, info: bytes) -> bytes:
    return HKDF(algorithm=hashes.SHA256(), length=32, salt=salt, info=info).derive(ikm)


def confirm(k_call: bytes, role: int, fp_local: bytes, fp_remote: bytes) -> bytes:
    h = hmac.HMAC(k_call, hashes.SHA256())
    h.update(CONFIRM_LABEL + bytes([role]) + fp_local + fp_remote)
    return h.finalize()


def compute(v: dict) -> dict:
    """Everything a vector's expected fields hold, from its inputs alone."""
    caller = private_key(v["caller_ephemeral_private_hex"])
    callee = private_key(v["callee_ephemeral_private_hex"])
    ikm_caller = caller.exchange(ec.ECDH(), callee.public_key())
    ikm_callee = callee.exchange(ec.ECDH(), caller.public_key())
    if ikm_caller != ikm_callee:
        raise AssertionError("ECDH disagrees with itself")
    salt = bytes.fromhex(v["nonce_caller_hex"]) + bytes.fromhex(v["nonce_callee_hex"])
    if len(salt) != 64:
        raise ValueError("nonces must be 32 bytes each")
    info = info_bytes(v)
    k_call = hkdf(salt, ikm_caller, info)
    fp_offer, fp_answer = fingerprint(v["fp_offer"]), fingerprint(v["fp_answer"])
    return {
        "caller_ephemeral_public": public_b64(caller),
        "callee_ephemeral_public": public_b64(callee),
        "nonce_caller": b64url(bytes.fromhex(v["nonce_caller_hex"])),
        "nonce_callee": b64url(bytes.fromhex(v["nonce_callee_hex"])),
        "info_hex": info.hex(),
        "k_call_hex": k_call.hex(),
        "confirm_caller_hex": confirm(k_call, 0x01, fp_offer, fp_answer).hex(),
        "confirm_callee_hex": confirm(k_call, 0x02, fp_answer, fp_offer).hex(),
    }


def fp_attr(seed: str) -> str:
    d = hashlib.sha256(seed.encode()).digest()
    return "sha-256 " + ":".join(f"{b:02X}" for b in d)


def scalar(seed: str) -> str:
    # sha256 of a label, below the P-256 order for these labels (derive_private_key checks).
    return hashlib.sha256(seed.encode()).hexdigest()


def inputs() -> list:
    def party(user, device, seed):
        return {"user_id": user, "device_id": device,
                "ed25519_hex": hashlib.sha256(seed.encode()).hexdigest()}

    return [
        {
            "name": "ascii ids, MatrixCall-style call id",
            "call_id": "1796406079445Gff4oXja6LgtI0o7",
            "caller": party("@alice:example.org", "ALICEDEVICE", "alice ed25519"),
            "callee": party("@bob:example.org", "BOBDEVICE", "bob ed25519"),
            "fp_offer": fp_attr("offer cert 1"),
            "fp_answer": fp_attr("answer cert 1"),
        },
        {
            "name": "unicode user ids, one-character device id",
            "call_id": "c.1~x_y-z",
            "caller": party("@zoë:例え.jp", "D", "zoe ed25519"),
            "callee": party("@ñandú☎:éxample.org", "ÉQUIPEMENT", "nandu ed25519"),
            "fp_offer": fp_attr("offer cert 2"),
            "fp_answer": fp_attr("answer cert 2"),
        },
        {
            "name": "same user on both sides (two devices), long call id",
            "call_id": "A" * 255,
            "caller": party("@carol:localhost", "X", "carol phone"),
            "callee": party("@carol:localhost", "Y", "carol laptop"),
            "fp_offer": fp_attr("offer cert 3").lower(),
            "fp_answer": fp_attr("answer cert 3"),
        },
    ]


def generate() -> dict:
    out = []
    for i, v in enumerate(inputs(), start=1):
        v = dict(v)
        v["caller_ephemeral_private_hex"] = scalar(f"vector {i} caller ephemeral")
        v["callee_ephemeral_private_hex"] = scalar(f"vector {i} callee ephemeral")
        v["nonce_caller_hex"] = hashlib.sha256(f"vector {i} caller nonce".encode()).hexdigest()
        v["nonce_callee_hex"] = hashlib.sha256(f"vector {i} callee nonce".encode()).hexdigest()
        v.update(compute(v))
        out.append(v)
    return {
        "about": "K_call and key confirmations of docs/PROTOCOL.md §14.4, made by "
                 "crates/direct/tests/vectors/binding.py (Python cryptography)",
        "vectors": out,
    }


def check(doc: dict) -> int:
    bad = 0
    vectors = doc["vectors"]
    for v in vectors:
        want = compute(v)
        for k, val in want.items():
            if v.get(k) != val:
                print(f"MISMATCH {v.get('name')}: {k}: file {v.get(k)} != computed {val}",
                      file=sys.stderr)
                bad += 1
    if not vectors:
        print("no vectors", file=sys.stderr)
        bad += 1
    print(f"{len(vectors)} vectors checked, {bad} mismatches")
    return 1 if bad else 0


def main(argv: list) -> int:
    if argv[1:2] == ["--generate"]:
        json.dump(generate(), sys.stdout, indent=2, ensure_ascii=False)
        sys.stdout.write("\n")
        return 0
    if len(argv) == 3 and argv[1] == "--check":
        src = sys.stdin if argv[2] == "-" else open(argv[2], encoding="utf-8")
        with src:
            return check(json.load(src))
    print(__doc__, file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main(sys.argv))

#!/usr/bin/env python3
"""Generate keys.json and the HPKE / RSA-OAEP cases of envelopes.json.

Library: Python `cryptography` (>= 48, for cryptography.hazmat.primitives.hpke).
Schemes sealed here: hpke-p256, hpke-x25519, rsa-oaep-256. The ecies-secp256k1
cases are added afterwards by gen_ecies.mjs (npm eciesjs); the secp256k1 keys
themselves are made here so that every key file comes from one place.

v1 body = key_id (16) || context_digest (16) || payload. HPKE payloads are sealed
with info = context and aad = the 32 header bytes, through cryptography's
_encrypt_with_aad (the public single-shot API has no aad; see _common.py).
Every case is opened (or refused with its expect_error) by open_envelopes.py's
open_envelope while it is generated, and every ok HPKE case also by hpke_ref.py.

Run from anywhere: python3 crates/crypto/tests/vectors/gen/gen_envelopes.py
"""

from __future__ import annotations

import hashlib
import json
import os
import platform
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import _common as C  # noqa: E402

CRYPTOGRAPHY_VERSION = C.require_cryptography()

from cryptography.hazmat.backends import default_backend  # noqa: E402
from cryptography.hazmat.primitives import hashes, hpke, serialization  # noqa: E402
from cryptography.hazmat.primitives.asymmetric import ec, padding, rsa, x25519  # noqa: E402

import hpke_ref  # noqa: E402
import open_envelopes as OE  # noqa: E402

OPENSSL_VERSION = default_backend().openssl_version_text()
GENERATOR = (
    f"gen/gen_envelopes.py (Python {platform.python_version()}, cryptography {CRYPTOGRAPHY_VERSION}, "
    f"{OPENSSL_VERSION})"
)

P256_ORDER = 0xFFFFFFFF00000000FFFFFFFFFFFFFFFFBCE6FAADA7179E84F3B9CAC2FC632551
SECP256K1_ORDER = 0xFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFEBAAEDCE6AF48A03BBFD25E8CD0364141

HPKE_SUITES = {
    "hpke-p256": hpke.Suite(hpke.KEM.P256, hpke.KDF.HKDF_SHA256, hpke.AEAD.AES_256_GCM),
    "hpke-x25519": hpke.Suite(hpke.KEM.X25519, hpke.KDF.HKDF_SHA256, hpke.AEAD.AES_256_GCM),
}
HPKE_REF_KEM = {"hpke-p256": hpke_ref.KEM_P256, "hpke-x25519": hpke_ref.KEM_X25519}
HPKE_ENC_LEN = {"hpke-p256": 65, "hpke-x25519": 32}

# ------------------------------------------------------------------ contexts

CONTEXTS = {
    "basic-audio": {
        "sessionId": "sess-0001",
        "roomId": "room-alpha",
        "userDid": "did:ixo:ixo1qqqsyqcyq5rqwzqfpg9scrgwpugpzysn7hzyd5",
        "oracleDid": "did:ixo:entity:oracle-companion-1",
        "callType": "audio",
    },
    "basic-video": {
        "sessionId": "sess-0001",
        "roomId": "room-alpha",
        "userDid": "did:ixo:ixo1qqqsyqcyq5rqwzqfpg9scrgwpugpzysn7hzyd5",
        "oracleDid": "did:ixo:entity:oracle-companion-1",
        "callType": "video",
    },
    "non-ascii": {
        "sessionId": "séance-☎-42",
        "roomId": "salle-été",
        "userDid": "did:ixo:ñandú-用户-😀",
        "oracleDid": "did:ixo:entity:オラクル",
        "callType": "video",
    },
    "empty-session": {
        "sessionId": "",
        "roomId": "r",
        "userDid": "did:ixo:u",
        "oracleDid": "did:ixo:o",
        "callType": "audio",
    },
    "long-room": {
        "sessionId": "sess-long",
        "roomId": "room-" + "é" * 150 + "-" + "x" * 100,
        "userDid": "did:ixo:user-long",
        "oracleDid": "did:ixo:entity:oracle-long",
        "callType": "video",
    },
    # The two "boundary" contexts concatenate to the same field bytes; only the
    # length prefixes differ. A context without length prefixes would collide.
    "boundary-a": {
        "sessionId": "s1",
        "roomId": "room-ab",
        "userDid": "cdid:ixo:user",
        "oracleDid": "did:ixo:oracle",
        "callType": "audio",
    },
    "boundary-b": {
        "sessionId": "s1",
        "roomId": "room-a",
        "userDid": "bcdid:ixo:user",
        "oracleDid": "did:ixo:oracle",
        "callType": "audio",
    },
}


def context_record(name: str) -> dict:
    ctx = CONTEXTS[name]
    raw = C.context_bytes(ctx)
    return {
        "name": name,
        "context": ctx,
        "context_hex": raw.hex(),
        "context_sha256_hex": hashlib.sha256(raw).hexdigest(),
        "context_digest_hex": C.context_digest(raw).hex(),
    }


# ---------------------------------------------------------------------- keys


def _seed_scalar(name: str, order: int) -> int:
    d = int.from_bytes(hashlib.sha256(b"oracle-calls test key|" + name.encode()).digest(), "big")
    if not 0 < d < order:
        raise AssertionError(f"seed for {name} is not a valid scalar")
    return d


def _seed_bytes(name: str) -> bytes:
    return hashlib.sha256(b"oracle-calls test key|" + name.encode()).digest()


def _pkcs8_pem(sk) -> str:
    return sk.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    ).decode("ascii")


def _spki_der(pk) -> bytes:
    return pk.public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)


def _existing_rsa_pems() -> dict:
    """Reuse RSA keys from a previous keys.json (RSA keygen cannot be seeded)."""
    if os.environ.get("NEW_RSA_KEYS") == "1":
        return {}
    try:
        old = C.load_keys_json()
    except (OSError, ValueError):
        return {}
    return {
        name: rec["private_pkcs8_pem"]
        for name, rec in old.get("keys", {}).items()
        if rec.get("scheme") == "rsa-oaep-256"
    }


def make_keys() -> dict:
    keys = {}
    for name in ("hpke-p256-a", "hpke-p256-b"):
        sk = ec.derive_private_key(_seed_scalar(name, P256_ORDER), ec.SECP256R1())
        pk = sk.public_key()
        spki = _spki_der(pk)
        keys[name] = {
            "name": name,
            "scheme": "hpke-p256",
            "algorithm": "P-256",
            "private_pkcs8_pem": _pkcs8_pem(sk),
            "private_raw_hex": sk.private_numbers().private_value.to_bytes(32, "big").hex(),
            "public_raw_hex": pk.public_bytes(
                serialization.Encoding.X962, serialization.PublicFormat.UncompressedPoint
            ).hex(),
            "public_spki_der_hex": spki.hex(),
            "key_id": C.key_id_from_spki(spki),
        }
    for name in ("hpke-x25519-a", "hpke-x25519-b"):
        sk = x25519.X25519PrivateKey.from_private_bytes(_seed_bytes(name))
        pk = sk.public_key()
        spki = _spki_der(pk)
        keys[name] = {
            "name": name,
            "scheme": "hpke-x25519",
            "algorithm": "X25519",
            "private_pkcs8_pem": _pkcs8_pem(sk),
            "private_raw_hex": sk.private_bytes(
                serialization.Encoding.Raw, serialization.PrivateFormat.Raw, serialization.NoEncryption()
            ).hex(),
            "public_raw_hex": pk.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw).hex(),
            "public_spki_der_hex": spki.hex(),
            "key_id": C.key_id_from_spki(spki),
        }
    old_rsa = _existing_rsa_pems()
    for name, bits in (("rsa-2048-a", 2048), ("rsa-2048-b", 2048), ("rsa-3072-a", 3072)):
        sk = None
        if name in old_rsa:
            sk = serialization.load_pem_private_key(old_rsa[name].encode(), password=None)
            if not isinstance(sk, rsa.RSAPrivateKey) or sk.key_size != bits:
                sk = None
        if sk is None:
            sk = rsa.generate_private_key(public_exponent=65537, key_size=bits)
        pk = sk.public_key()
        spki = _spki_der(pk)
        keys[name] = {
            "name": name,
            "scheme": "rsa-oaep-256",
            "algorithm": f"RSA-{bits}",
            "modulus_bits": bits,
            "private_pkcs8_pem": _pkcs8_pem(sk),
            "public_raw_hex": spki.hex(),
            "public_spki_der_hex": spki.hex(),
            "key_id": C.key_id_from_spki(spki),
        }
    for name in ("secp256k1-a", "secp256k1-b"):
        sk = ec.derive_private_key(_seed_scalar(name, SECP256K1_ORDER), ec.SECP256K1())
        pk = sk.public_key()
        spki = _spki_der(pk)
        compressed = pk.public_bytes(serialization.Encoding.X962, serialization.PublicFormat.CompressedPoint)
        keys[name] = {
            "name": name,
            "scheme": "ecies-secp256k1",
            "algorithm": "secp256k1",
            "private_pkcs8_pem": _pkcs8_pem(sk),
            "private_raw_hex": sk.private_numbers().private_value.to_bytes(32, "big").hex(),
            "public_raw_hex": compressed.hex(),
            "public_uncompressed_hex": pk.public_bytes(
                serialization.Encoding.X962, serialization.PublicFormat.UncompressedPoint
            ).hex(),
            "public_compressed_base58": C.b58encode(compressed),
            "public_spki_der_hex": spki.hex(),
            "key_id": C.key_id_from_spki(spki),
        }
    # Sanity: the PEM round-trips and the SPKI in the record is what the PEM gives.
    for rec in keys.values():
        sk = serialization.load_pem_private_key(rec["private_pkcs8_pem"].encode(), password=None)
        assert rec["private_pkcs8_pem"].startswith("-----BEGIN PRIVATE KEY-----\n")
        assert _spki_der(sk.public_key()).hex() == rec["public_spki_der_hex"]
        assert len(rec["key_id"]) == 32
    return keys


def load_private(rec: dict):
    return serialization.load_pem_private_key(rec["private_pkcs8_pem"].encode(), password=None)


# ------------------------------------------------------------ seal and open
#
# v1 body = key_id (16) || context_digest (16) || payload. HPKE seals with
# info = context and aad = the 32 header bytes; RSA-OAEP uses label = context.

HPKE_ENCRYPT = OE.HPKE_ENCRYPT
HEADER = C.HEADER_LEN


def key_id_raw(rec: dict) -> bytes:
    kid = C.key_id_bytes(bytes.fromhex(rec["public_spki_der_hex"]))
    assert kid.hex() == rec["key_id"], "key id in keys.json is not SHA-256(SPKI)[0..16]"
    return kid


def seal_payload(scheme: str, rec: dict, info: bytes, aad: bytes, call_key: bytes) -> bytes:
    """Payload only. For HPKE `info` and `aad` are given separately so that the
    header_aad_mismatch cases can bind the payload to something else than the header."""
    pk = load_private(rec).public_key()
    if scheme in HPKE_SUITES:
        payload = HPKE_ENCRYPT(HPKE_SUITES[scheme], call_key, pk, info=info, aad=aad)
        assert len(payload) == HPKE_ENC_LEN[scheme] + 48, len(payload)
        return payload
    if scheme == "rsa-oaep-256":
        payload = pk.encrypt(
            call_key,
            padding.OAEP(mgf=padding.MGF1(algorithm=hashes.SHA256()), algorithm=hashes.SHA256(), label=info),
        )
        assert len(payload) == pk.key_size // 8
        return payload
    raise ValueError(scheme)


def seal(scheme: str, rec: dict, context: bytes, call_key: bytes) -> bytes:
    header = C.v1_header(key_id_raw(rec), context)
    return header + seal_payload(scheme, rec, context, header, call_key)


def envelope_text(scheme: str, body: bytes) -> str:
    return f"v1.{scheme}.{C.b64url_encode(body)}"


def ctx_bytes(name: str) -> bytes:
    return C.context_bytes(CONTEXTS[name])


def flip(body: bytes, offset: int, mask: int) -> bytes:
    bad = bytearray(body)
    bad[offset] ^= mask
    return bytes(bad)


def hpke_ref_open(scheme: str, rec: dict, context: bytes, body: bytes, aad: bytes) -> bytes:
    return hpke_ref.open_base(
        HPKE_REF_KEM[scheme], hpke_ref.AEAD_AES256GCM, load_private(rec), context, body[HEADER:], aad
    )


# --------------------------------------------------------------------- cases

# The key used for a scheme_mismatch case: a key of another algorithm.
OTHER_SCHEME_KEY = {"hpke-p256": "hpke-x25519-a", "hpke-x25519": "hpke-p256-a", "rsa-oaep-256": "secp256k1-a"}


class Cases:
    """Collects cases and checks each one with open_envelopes.open_envelope when it is added."""

    def __init__(self, keys: dict):
        self.keys = keys
        self.cases = []

    def add(self, name, scheme, key_ref, ctx_name, call_key, body, expect, *, expect_error=None,
            open_key_ref=None, open_ctx_name=None, extra=None):
        ctx = context_record(ctx_name)
        case = {
            "name": name,
            "scheme": scheme,
            "form": "v1",
            "key_ref": key_ref,
            "context": ctx["context"],
            "context_hex": ctx["context_hex"],
            "call_key_hex": call_key.hex(),
            "envelope": envelope_text(scheme, body),
            "expect": expect,
        }
        if expect_error is not None:
            assert expect_error in C.ENVELOPE_ERRORS, expect_error
            case["expect_error"] = expect_error
        case["generator"] = "gen/gen_envelopes.py"
        case["body_len"] = len(body)
        if len(body) >= HEADER:
            case["header_key_id_hex"] = body[: C.KEY_ID_LEN].hex()
            case["header_context_digest_hex"] = body[C.KEY_ID_LEN : HEADER].hex()
        if open_key_ref is not None:
            case["open_key_ref"] = open_key_ref
        if open_ctx_name is not None:
            other = context_record(open_ctx_name)
            case["open_context"] = other["context"]
            case["open_context_hex"] = other["context_hex"]
        case.update(extra or {})
        self._verify(case, call_key, body)
        self.cases.append(case)
        return case

    def _verify(self, case, call_key, body):
        rec = self.keys[case.get("open_key_ref", case["key_ref"])]
        context = bytes.fromhex(case.get("open_context_hex", case["context_hex"]))
        got, err = None, None
        try:
            got = OE.open_envelope(case["envelope"], load_private(rec), context, case["scheme"])
        except OE.EnvelopeError as exc:
            err = exc.name
        if case["expect"] == "ok":
            assert got == call_key, f"{case['name']}: does not open ({err})"
            if case["scheme"] in HPKE_REF_KEM:
                ref = hpke_ref_open(case["scheme"], rec, context, body, body[:HEADER])
                assert ref == call_key, f"{case['name']}: hpke_ref disagrees with cryptography"
                try:
                    hpke_ref_open(case["scheme"], rec, context, body, b"")
                except Exception:  # noqa: BLE001 - expected: the header is the aad
                    pass
                else:
                    raise AssertionError(f"{case['name']}: opens with an empty aad")
        else:
            assert got is None, f"{case['name']}: negative case opened"
            assert err == case["expect_error"], f"{case['name']}: got {err}, want {case['expect_error']}"


def make_cases(keys: dict) -> list:
    out = Cases(keys)

    plans = {
        "hpke-p256": ("hpke-p256-a", "hpke-p256-b"),
        "hpke-x25519": ("hpke-x25519-a", "hpke-x25519-b"),
        "rsa-oaep-256": ("rsa-2048-a", "rsa-2048-b"),
    }
    for scheme, (key_a, key_b) in plans.items():
        rec_a, rec_b = keys[key_a], keys[key_b]
        audio = ctx_bytes("basic-audio")

        ok_plan = [("basic-audio", key_a), ("non-ascii", key_a), ("empty-session", key_a), ("long-room", key_a)]
        if scheme == "rsa-oaep-256":
            ok_plan.append(("basic-video", "rsa-3072-a"))
            ok_plan.append(("non-ascii", "rsa-3072-a"))
        else:
            ok_plan.append(("basic-video", key_b))
        for ctx_name, key_ref in ok_plan:
            call_key = os.urandom(32)
            body = seal(scheme, keys[key_ref], ctx_bytes(ctx_name), call_key)
            out.add(f"{scheme}/ok/{ctx_name}/{key_ref}", scheme, key_ref, ctx_name, call_key, body, "ok")

        # wrong_context: the header digest is for the sealing context; the context given
        # at open time differs in callType only, and in field boundaries only.
        for seal_ctx, open_ctx, label in (
            ("basic-audio", "basic-video", "call-type"),
            ("boundary-a", "boundary-b", "field-boundary"),
        ):
            call_key = os.urandom(32)
            body = seal(scheme, rec_a, ctx_bytes(seal_ctx), call_key)
            out.add(f"{scheme}/wrong_context/{label}", scheme, key_a, seal_ctx, call_key, body, "wrong_context",
                    expect_error="ContextMismatch", open_ctx_name=open_ctx)

        # wrong_key: sealed to key_a, opened with key_b of the same scheme (header key id differs).
        call_key = os.urandom(32)
        body = seal(scheme, rec_a, audio, call_key)
        out.add(f"{scheme}/wrong_key", scheme, key_a, "basic-audio", call_key, body, "wrong_key",
                expect_error="WrongKey", open_key_ref=key_b)

        # tampered: one payload byte XORed with 0x01; offsets count from the start of the body.
        call_key = os.urandom(32)
        body = seal(scheme, rec_a, audio, call_key)
        if scheme in HPKE_ENC_LEN:
            n_enc = HPKE_ENC_LEN[scheme]
            spots = [(HEADER + 1, "enc"), (HEADER + n_enc + 5, "ciphertext"), (len(body) - 1, "tag")]
        else:
            n = len(body) - HEADER
            spots = [(HEADER, "ciphertext"), (HEADER + n // 2, "ciphertext"), (len(body) - 1, "ciphertext")]
        for offset, region in spots:
            out.add(f"{scheme}/tampered/{region}-offset-{offset}", scheme, key_a, "basic-audio", call_key,
                    flip(body, offset, 0x01), "tampered", expect_error="DecryptionFailed",
                    extra={"tampered": {"body_offset": offset, "xor_hex": "01", "region": region,
                                        "original_envelope": envelope_text(scheme, body)}})

        # Header bits flipped: key id -> WrongKey, context digest -> ContextMismatch.
        for expect, region, err, spots in (
            ("header_key_id_tampered", "key_id", "WrongKey", ((0, 0x01), (C.KEY_ID_LEN - 1, 0x80))),
            ("header_digest_tampered", "context_digest", "ContextMismatch", ((C.KEY_ID_LEN, 0x01), (HEADER - 1, 0x80))),
        ):
            for offset, mask in spots:
                out.add(f"{scheme}/{expect}/offset-{offset}", scheme, key_a, "basic-audio", call_key,
                        flip(body, offset, mask), expect, expect_error=err,
                        extra={"tampered": {"body_offset": offset, "xor_hex": f"{mask:02x}", "region": region,
                                            "original_envelope": envelope_text(scheme, body)}})

        # header_key_id_forged: sealed to key_a, header key id replaced by key_b's id, opened
        # with key_b. The header check passes; the payload does not open under key_b.
        call_key = os.urandom(32)
        body = seal(scheme, rec_a, audio, call_key)
        forged = key_id_raw(rec_b) + body[C.KEY_ID_LEN :]
        out.add(f"{scheme}/header_key_id_forged", scheme, key_a, "basic-audio", call_key, forged,
                "header_key_id_forged", expect_error="DecryptionFailed", open_key_ref=key_b,
                extra={"header_rewrite": {"field": "key_id", "to_key_ref": key_b,
                                          "original_envelope": envelope_text(scheme, body)},
                       "note": f"sealed to {key_a}; the header names {key_b}, so only decryption can refuse it"})

        # The header digest names the context given at open time, while the payload is bound
        # to another context (HPKE: info and aad; RSA: OAEP label).
        call_key = os.urandom(32)
        body = seal(scheme, rec_a, ctx_bytes("basic-video"), call_key)
        swapped = body[: C.KEY_ID_LEN] + C.context_digest(audio) + body[HEADER:]
        expect = "header_aad_mismatch" if scheme in HPKE_SUITES else "label_mismatch"
        extra = {"header_rewrite": {"field": "context_digest", "to_context": "basic-audio",
                                    "original_envelope": envelope_text(scheme, body)},
                 "note": "payload sealed under basic-video; header digest replaced by that of basic-audio, "
                         "the context it is opened with: the header check passes, decryption must fail"}
        if scheme in HPKE_SUITES:
            extra["sealed_aad_hex"] = body[:HEADER].hex()
        out.add(f"{scheme}/{expect}/context-swapped", scheme, key_a, "basic-video", call_key, swapped, expect,
                expect_error="DecryptionFailed", open_ctx_name="basic-audio", extra=extra)

        if scheme in HPKE_SUITES:
            # info = the right context, header = the right header, only the aad sealed differs.
            header = C.v1_header(key_id_raw(rec_a), audio)
            for label, aad, note in (
                ("aad-context-digest", C.v1_header(key_id_raw(rec_a), ctx_bytes("basic-video")),
                 "sealed with info = basic-audio but aad = header with the basic-video digest"),
                ("aad-key-id", C.v1_header(key_id_raw(rec_b), audio),
                 f"sealed with info = basic-audio but aad = header with the key id of {key_b}"),
                ("empty-aad", b"", "sealed with info = basic-audio and an empty aad (the v1 body before the header)"),
            ):
                call_key = os.urandom(32)
                payload = seal_payload(scheme, rec_a, audio, aad, call_key)
                # This case is only meaningful if the payload opens under its own aad.
                assert hpke_ref_open(scheme, rec_a, audio, header + payload, aad) == call_key
                out.add(f"{scheme}/header_aad_mismatch/{label}", scheme, key_a, "basic-audio", call_key,
                        header + payload, "header_aad_mismatch", expect_error="DecryptionFailed",
                        extra={"sealed_aad_hex": aad.hex(),
                               "note": note + "; the envelope carries the correct header, so only the aad differs"})

        # scheme_mismatch: opened with a key of another algorithm. The header key id is
        # rewritten to that key's id so that the scheme check is the only one that fails.
        other = OTHER_SCHEME_KEY[scheme]
        call_key = os.urandom(32)
        body = seal(scheme, rec_a, audio, call_key)
        mism = key_id_raw(keys[other]) + body[C.KEY_ID_LEN :]
        out.add(f"{scheme}/scheme_mismatch/{keys[other]['scheme']}", scheme, key_a, "basic-audio", call_key, mism,
                "scheme_mismatch", expect_error="SchemeMismatch", open_key_ref=other,
                extra={"header_rewrite": {"field": "key_id", "to_key_ref": other,
                                          "original_envelope": envelope_text(scheme, body)}})

        # truncated: a strict prefix of a valid body. Every v1 payload has a fixed length
        # (per scheme, and per modulus for RSA), so every prefix is BadLength.
        call_key = os.urandom(32)
        body = seal(scheme, rec_a, audio, call_key)
        cuts = [(len(body) - 1, "drop-last-byte")]
        if scheme in HPKE_ENC_LEN:
            cuts.append((HEADER + HPKE_ENC_LEN[scheme], "header-and-enc-only"))
        else:
            cuts.append((HEADER + (len(body) - HEADER) // 2, "header-and-half"))
        cuts += [(HEADER, "header-only"), (HEADER - 1, "short-header"), (0, "empty-body")]
        for new_len, label in cuts:
            out.add(f"{scheme}/truncated/{label}", scheme, key_a, "basic-audio", call_key, body[:new_len],
                    "truncated", expect_error="BadLength",
                    extra={"truncated": {"original_body_len": len(body), "body_len": new_len,
                                         "original_envelope": envelope_text(scheme, body)}})
    return out.cases


# ------------------------------------------------------------ document text

HEADER_RULE = (
    "v1 body = key_id (16) || context_digest (16) || payload. key_id = SHA-256(SubjectPublicKeyInfo DER of the "
    "recipient public key)[0..16] (the key_id of keys.json as raw bytes); context_digest = "
    "SHA-256(context bytes)[0..16]; header = key_id || context_digest (32 B). The legacy base58 ecies form has no header."
)

BODIES = {
    "hpke-p256": "header (32) || enc (65, uncompressed SEC1) || AES-256-GCM ciphertext+tag (48) = 145 B; RFC 9180 "
    "base mode, suite 0x0010/0x0001/0x0002, info = context, aad = header (32 B)",
    "hpke-x25519": "header (32) || enc (32) || ciphertext+tag (48) = 112 B; suite 0x0020/0x0001/0x0002, "
    "info = context, aad = header (32 B)",
    "rsa-oaep-256": "header (32) || OAEP(SHA-256, MGF1-SHA-256, label = context) ciphertext (modulus length: 256 B "
    "for RSA-2048, 384 B for RSA-3072); the header is not otherwise authenticated",
    "ecies-secp256k1": "header (32) || eciesjs default output (161) for plaintext = call key (32) || "
    "SHA-256(context) (32) = 193 B; see eciesjs_format. Legacy form (no v1. prefix): base58 of the eciesjs "
    "output for the call key as 64 lowercase hex chars, no header",
}

EXPECTATIONS = {
    "ok": "opens to call_key_hex with the case's key_ref and context",
    "ok_legacy": "legacy ecies form: opens to call_key_hex; context not used",
    "wrong_context": "opened with open_context: header digest differs -> ContextMismatch",
    "wrong_key": "opened with open_key_ref (same scheme): header key id differs -> WrongKey; legacy form "
    "(no header) -> DecryptionFailed",
    "tampered": "one payload byte XORed (tampered.body_offset counts from the start of the body, header "
    "included) -> DecryptionFailed",
    "header_key_id_tampered": "one bit of the header key id flipped -> WrongKey",
    "header_digest_tampered": "one bit of the header context digest flipped -> ContextMismatch",
    "header_key_id_forged": "header key id replaced by that of open_key_ref (same scheme); the payload is "
    "sealed to key_ref -> DecryptionFailed",
    "header_aad_mismatch": "hpke only: header passes, but the payload was sealed with another aad (or another "
    "context as info and aad) -> DecryptionFailed",
    "label_mismatch": "rsa-oaep-256 only: header digest replaced by that of open_context, payload sealed with "
    "label = context -> DecryptionFailed",
    "suffix_mismatch": "ecies-secp256k1 only: header passes and AES-GCM opens, but the plaintext suffix is "
    "SHA-256 of another context -> DecryptionFailed",
    "scheme_mismatch": "opened with open_key_ref, a key of another algorithm; header key id rewritten to "
    "that key's id -> SchemeMismatch",
    "truncated": "a strict prefix of a valid body (v1: shorter than 32, or full header and short payload; "
    "legacy: shorter than 161) -> BadLength",
}


def main():
    C.b58_selftest()
    hpke_ref.selftest()
    keys = make_keys()
    C.write_json(
        "keys.json",
        {
            "generator": GENERATOR,
            "key_id_rule": "lowercase hex of SHA-256(SubjectPublicKeyInfo DER)[0..16]; EC points uncompressed in the SPKI",
            "public_raw_rule": "P-256: uncompressed SEC1 (65 B); X25519: raw 32 B; secp256k1: compressed SEC1 (33 B, "
            "also public_uncompressed_hex and public_compressed_base58); RSA: SPKI DER",
            "keys": keys,
        },
    )
    cases = make_cases(keys)

    # Keep previously generated ecies cases (gen_ecies.mjs rewrites them); the
    # secp256k1 keys are seeded, so they stay valid across runs.
    previous = {}
    try:
        with open(os.path.join(C.VECTORS_DIR, "envelopes.json"), encoding="utf-8") as fh:
            previous = json.load(fh)
    except (OSError, ValueError):
        previous = {}
    ecies_cases = [c for c in previous.get("cases", []) if c.get("scheme") == "ecies-secp256k1"]
    generators = {"python": GENERATOR}
    if previous.get("generators", {}).get("ecies"):
        generators["ecies"] = previous["generators"]["ecies"]

    doc = {
        "generator": " + ".join(generators.values()),
        "generators": generators,
        "context_rule": 'ASCII "oracle-calls/call-key/v1" || for sessionId, roomId, userDid, oracleDid, callType: '
        "u32be(len(utf8)) || utf8",
        "envelope_rule": "v1.<scheme>.<base64url without padding of body>, body = key_id (16) || "
        "context_digest (16) || payload (see header_rule and bodies)",
        "header_rule": HEADER_RULE,
        "bodies": BODIES,
        "expectations": EXPECTATIONS,
        "expect_error_rule": "every negative case has expect_error, one of " + ", ".join(C.ENVELOPE_ERRORS)
        + ". Each negative case fails exactly one of the checks scheme / length / key id / context digest "
        "(and then expect_error names it), or passes all of them and fails only decryption or the ecies "
        "suffix check (expect_error DecryptionFailed), so the expected error does not depend on the order "
        "of the checks. gen/check_vectors.py verifies this.",
        "contexts": [context_record(n) for n in CONTEXTS],
        "cases": cases + ecies_cases,
    }
    if "eciesjs_format" in previous:
        doc["eciesjs_format"] = previous["eciesjs_format"]
    C.write_json("envelopes.json", doc)
    print(f"gen_envelopes.py: {len(keys)} keys, {len(cases)} HPKE/RSA cases (kept {len(ecies_cases)} ecies cases)")


if __name__ == "__main__":
    main()

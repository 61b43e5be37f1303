#!/usr/bin/env python3
"""Generate prekey_envelopes.json: signed prekeys and v2 (prekey) envelopes.

Library: Python `cryptography` (>= 48): Ed25519 for the prekey signatures,
X25519 for the prekeys, hpke (through _encrypt_with_aad, see _common.py) for
the prekey layer. Nothing here calls or copies the Rust code under test.

Inputs: keys.json and envelopes.json (run gen_envelopes.py and gen_ecies.mjs
first). Each v2 case wraps an `ok` v1 envelope of envelopes.json, which the
independent generators sealed to a long-term key of keys.json; the case
repeats that envelope, its key's PKCS#8 PEM, its context and its call key, so
this file is self-contained.

Signed prekey (prekey spec; proto SignedPrekey):
  {"prekeyId": b64url(16), "publicKey": b64url(32), "lastResort": bool,
   "signature": b64url(64)}   (base64url without padding)
  signature = Ed25519 (RFC 8032, pure) over
    str("oracle-calls/prekey/v1") || str(oracleDid) || prekeyId || publicKey
    || u8(lastResort ? 1 : 0),     str(s) = u32be(len(utf8(s))) || utf8(s)

v2 envelope:
  v2.<scheme of the inner envelope>.<b64url(body)>
  body = prekeyId (16) || SHA-256(context)[0..16] || enc (32) || ct
  ct   = HPKE base mode X25519 / HKDF-SHA256 / AES-256-GCM, single shot,
         info = context bytes, aad = the 32 header bytes, plaintext = the inner
         v1 envelope text (ASCII)

Keys are derived from fixed seeds, so the signatures (Ed25519 is deterministic)
stay the same from run to run; the HPKE ephemeral keys are random, so the
envelopes change. Every case is opened (or refused with exactly its
expect_error) by open_prekey_envelopes.py as it is made, every ok case also by
hpke_ref.py (written from RFC 9180), and every ok inner envelope by
open_envelopes.py (hpke, rsa; ecies inner envelopes are checked by
check_vectors.py with open_ecies.mjs).

Run from anywhere: python3 crates/crypto/tests/vectors/gen/gen_prekey_envelopes.py
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
from cryptography.hazmat.primitives import serialization  # noqa: E402
from cryptography.hazmat.primitives.asymmetric import ed25519, x25519  # noqa: E402

import hpke_ref  # noqa: E402
import open_envelopes as OE  # noqa: E402
import open_prekey_envelopes as OP  # noqa: E402
import verify_prekeys as VP  # noqa: E402

GENERATOR = (
    f"gen/gen_prekey_envelopes.py (Python {platform.python_version()}, cryptography {CRYPTOGRAPHY_VERSION}, "
    f"{default_backend().openssl_version_text()})"
)

# The oracle DID of the envelopes.json contexts used here, and another oracle.
ORACLE_DID = "did:ixo:entity:oracle-companion-1"
OTHER_DID = "did:ixo:entity:oracle-companion-2"
# Order of the Ed25519 group (RFC 8032 "L").
ED25519_L = 2**252 + 27742317777372353535851937790883648493

# Errors a stored case may expect (the Rust EnvelopeError / PrekeyError variant names).
ENVELOPE_ERRORS = ("BadLength", "WrongPrekey", "ContextMismatch", "DecryptionFailed", "Malformed")
SIGNATURE_ERRORS = ("BadSignature", "BadLength", "Encoding")


# ---------------------------------------------------------------- byte forms

signed_bytes = VP.signed_bytes


def seed(kind: str, name: str) -> bytes:
    """Fixed 32-byte seeds, so that keys and signatures stay the same."""
    return hashlib.sha256(f"oracle-calls test {kind}|{name}".encode()).digest()


def raw_public(pk) -> bytes:
    return pk.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)


# ------------------------------------------------------- Ed25519 self-check

# RFC 8032 §7.1 TEST 1 and TEST 2: secret key, public key, message, signature.
RFC8032 = [
    (
        "9d61b19deffd5a60ba844af492ec2cc44449c5697b326919703bac031cae7f60",
        "d75a980182b10ab7d54bfed3c964073a0ee172f3daa62325af021a68f707511a",
        "",
        "e5564300c360ac729086e2cc806e828a84877f1eb8e5d974d873e065224901555fb8821590a33bacc61e39701cf9b46b"
        "d25bf5f0595bbe24655141438e7a100b",
    ),
    (
        "4ccd089b28ff96da9db6c346ec114e0f5b8a319f35aba624da8cf6ed4fb8a6fb",
        "3d4017c3e843895a92b70aa74d1b7ebc9c982ccf2ec4968cc0cd55f12af4660c",
        "72",
        "92a009a9f0d4cab8720e820b5f642540a2b27b5416503f8fb3762223ebdb69da085ac1e43e15996e458f3613d0f11d8c"
        "387b2eaeb4302aeeb00d291612bb0c00",
    ),
]


def ed25519_selftest():
    """Python's Ed25519 (OpenSSL) reproduces RFC 8032 TEST 1 and TEST 2."""
    for sk_hex, pk_hex, msg_hex, sig_hex in RFC8032:
        sk = ed25519.Ed25519PrivateKey.from_private_bytes(bytes.fromhex(sk_hex))
        assert raw_public(sk.public_key()).hex() == pk_hex, "RFC 8032 public key"
        assert sk.sign(bytes.fromhex(msg_hex)).hex() == sig_hex, "RFC 8032 signature"
        sk.public_key().verify(bytes.fromhex(sig_hex), bytes.fromhex(msg_hex))


# ---------------------------------------------------------------------- keys


def make_signing_key(name: str) -> dict:
    sk = ed25519.Ed25519PrivateKey.from_private_bytes(seed("prekey signing key", name))
    pem = sk.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    ).decode("ascii")
    public = raw_public(sk.public_key())
    return {
        "name": name,
        "private_pkcs8_pem": pem,
        "private_seed_hex": seed("prekey signing key", name).hex(),
        "public_hex": public.hex(),
        "public_b64url": C.b64url_encode(public),
    }


def load_signing_key(rec: dict) -> ed25519.Ed25519PrivateKey:
    sk = serialization.load_pem_private_key(rec["private_pkcs8_pem"].encode(), password=None)
    assert isinstance(sk, ed25519.Ed25519PrivateKey)
    return sk


def make_prekey(name: str, last_resort: bool) -> dict:
    sk = x25519.X25519PrivateKey.from_private_bytes(seed("prekey", name))
    prekey_id = seed("prekey id", name)[:16]
    return {
        "name": name,
        "last_resort": last_resort,
        "private_hex": seed("prekey", name).hex(),
        "public_hex": raw_public(sk.public_key()).hex(),
        "prekey_id": C.b64url_encode(prekey_id),
        "prekey_id_hex": prekey_id.hex(),
    }


def sign_prekey(signing: dict, prekey: dict, oracle_did: str) -> tuple[dict, bytes]:
    """The signed prekey JSON (field names of the wire) and the bytes signed."""
    msg = signed_bytes(oracle_did, bytes.fromhex(prekey["prekey_id_hex"]), bytes.fromhex(prekey["public_hex"]),
                       prekey["last_resort"])
    sig = load_signing_key(signing).sign(msg)
    assert len(sig) == 64
    signed = {
        "prekeyId": prekey["prekey_id"],
        "publicKey": C.b64url_encode(bytes.fromhex(prekey["public_hex"])),
        "lastResort": prekey["last_resort"],
        "signature": C.b64url_encode(sig),
    }
    assert [len(signed[k]) for k in ("prekeyId", "publicKey", "signature")] == [22, 43, 86]
    return signed, msg


def python_verify(signed: dict, public_b64url: str, oracle_did: str) -> tuple[str, str | None]:
    """Check a signed prekey the way a client must (verify_prekeys.py): ("ok", None) or the
    error name and the field it names."""
    try:
        VP.verify(signed, public_b64url, oracle_did)
    except VP.PrekeyError as exc:
        return exc.name, exc.field
    return "ok", None


# ---------------------------------------------------------------- signatures


def make_signature_cases(signing: dict, other_signing: dict, prekeys: list) -> list:
    """Signed prekeys to check; each negative one differs from a good one in one way."""
    cases = []

    def add(name, signed, public_b64url, oracle_did, expect, field=None):
        case = {
            "name": name,
            "signed": signed,
            "signing_public_key": public_b64url,
            "oracle_did": oracle_did,
            "expect": expect,
        }
        if field is not None:
            case["field"] = field
        got = python_verify(signed, public_b64url, oracle_did)
        assert got == (expect, field), f"{name}: Python says {got}, want {expect} {field}"
        cases.append(case)

    for p in prekeys:
        signed, _ = sign_prekey(signing, p, ORACLE_DID)
        add(f"ok/{p['name']}", signed, signing["public_b64url"], ORACLE_DID, "ok")

    good, _ = sign_prekey(signing, prekeys[0], ORACLE_DID)
    key = signing["public_b64url"]
    add("wrong_did", good, key, OTHER_DID, "BadSignature")
    add("wrong_key", good, other_signing["public_b64url"], ORACLE_DID, "BadSignature")
    add("flipped_last_resort", dict(good, lastResort=not good["lastResort"]), key, ORACLE_DID, "BadSignature")
    other, _ = sign_prekey(signing, prekeys[1], ORACLE_DID)
    add("swapped_public_key", dict(good, publicKey=other["publicKey"]), key, ORACLE_DID, "BadSignature")
    add("swapped_prekey_id", dict(good, prekeyId=other["prekeyId"]), key, ORACLE_DID, "BadSignature")
    sig = bytearray(C.b64url_decode_strict(good["signature"]))
    sig[5] ^= 0x04
    add("signature_bit_flipped", dict(good, signature=C.b64url_encode(bytes(sig))), key, ORACLE_DID,
        "BadSignature")
    # The same signature with S + L: the same point equation holds, but RFC 8032 requires S < L.
    sig = C.b64url_decode_strict(good["signature"])
    s_plus_l = int.from_bytes(sig[32:], "little") + ED25519_L
    assert s_plus_l < 2**256
    malleated = sig[:32] + s_plus_l.to_bytes(32, "little")
    add("s_not_canonical", dict(good, signature=C.b64url_encode(malleated)), key, ORACLE_DID, "BadSignature")
    # Field shapes: one byte short, one byte long, padded.
    for field, n in (("prekeyId", 16), ("publicKey", 32), ("signature", 64)):
        raw = C.b64url_decode_strict(good[field])
        add(f"{field}/short", dict(good, **{field: C.b64url_encode(raw[:-1])}), key, ORACLE_DID, "BadLength", field)
        add(f"{field}/long", dict(good, **{field: C.b64url_encode(raw + b"\x00")}), key, ORACLE_DID, "BadLength",
            field)
        padded = good[field] + "=" * (-len(good[field]) % 4)
        assert padded != good[field] and len(raw) == n
        add(f"{field}/padded", dict(good, **{field: padded}), key, ORACLE_DID, "Encoding", field)
    return cases


# ----------------------------------------------------------------- envelopes


def seal_v2(scheme: str, prekey: dict, context: bytes, inner: bytes) -> bytes:
    """The v2 body for `inner`, sealed to `prekey` under `context`."""
    prekey_id = bytes.fromhex(prekey["prekey_id_hex"])
    header = prekey_id + C.context_digest(context)
    pk = x25519.X25519PrivateKey.from_private_bytes(bytes.fromhex(prekey["private_hex"])).public_key()
    payload = OP.HPKE_ENCRYPT(OP.SUITE, inner, pk, info=context, aad=header)
    assert len(payload) == 32 + len(inner) + 16, "len(ct) must be len(inner) + 16"
    return header + payload


def text(scheme: str, body: bytes) -> str:
    return f"v2.{scheme}.{C.b64url_encode(body)}"


class Cases:
    """Collects v2 cases and opens each with open_prekey_envelopes.py as it is added."""

    def __init__(self, prekeys: dict, keys: dict):
        self.prekeys = prekeys
        self.keys = keys
        self.cases = []

    def add(self, name: str, scheme: str, expect: str, *, prekey_ref: str, source: dict, inner: bytes,
            body: bytes, envelope_scheme: str | None = None, expect_error: str | None = None,
            open_prekey_ref: str | None = None, open_source: dict | None = None, extra: dict | None = None):
        """`source` is the envelopes.json case whose context the body was sealed under
        (and, for ok cases, whose envelope is the inner one)."""
        case = {
            "name": name,
            "scheme": envelope_scheme or scheme,
            "expect": expect,
            "prekey_ref": prekey_ref,
            "context": source["context"],
            "context_hex": source["context_hex"],
            "inner_hex": inner.hex(),
            "envelope": text(envelope_scheme or scheme, body),
            "body_len": len(body),
            "header_prekey_id_hex": body[:16].hex(),
            "header_context_digest_hex": body[16:32].hex(),
            "generator": "gen/gen_prekey_envelopes.py",
        }
        if expect == "ok":
            rec = self.keys[source["key_ref"]]
            case.update({
                "inner_envelope": inner.decode("ascii"),
                "inner_source": source["name"],
                "inner_key_ref": source["key_ref"],
                "inner_private_pkcs8_pem": rec["private_pkcs8_pem"],
                "call_key_hex": source["call_key_hex"],
            })
        if expect_error is not None:
            assert expect_error in ENVELOPE_ERRORS, expect_error
            case["expect_error"] = expect_error
        if open_prekey_ref is not None:
            case["open_prekey_ref"] = open_prekey_ref
        if open_source is not None:
            case["open_context"] = open_source["context"]
            case["open_context_hex"] = open_source["context_hex"]
        case.update(extra or {})
        self._verify(case, inner)
        self.cases.append(case)

    def _verify(self, case: dict, inner: bytes):
        p = self.prekeys[case.get("open_prekey_ref", case["prekey_ref"])]
        context = bytes.fromhex(case.get("open_context_hex", case["context_hex"]))
        got, err = None, None
        try:
            got = OP.open_prekey_layer(case["envelope"], bytes.fromhex(p["private_hex"]),
                                       bytes.fromhex(p["prekey_id_hex"]), context)
        except OP.EnvelopeError as exc:
            err = exc.name
        if case["expect"] in ("ok", "ok_layer"):
            assert got is not None and got.encode("ascii") == inner, f"{case['name']}: does not open ({err})"
            # hpke_ref.py (from RFC 9180) opens the layer too; an empty aad must fail.
            body = C.b64url_decode_strict(case["envelope"].split(".")[2])
            sk = x25519.X25519PrivateKey.from_private_bytes(bytes.fromhex(p["private_hex"]))
            ref = hpke_ref.open_base(hpke_ref.KEM_X25519, hpke_ref.AEAD_AES256GCM, sk, context, body[32:], body[:32])
            assert ref == inner, f"{case['name']}: hpke_ref disagrees"
            try:
                hpke_ref.open_base(hpke_ref.KEM_X25519, hpke_ref.AEAD_AES256GCM, sk, context, body[32:], b"")
            except Exception:  # noqa: BLE001 - expected: the header is the aad
                pass
            else:
                raise AssertionError(f"{case['name']}: opens with an empty aad")
        else:
            assert got is None, f"{case['name']}: negative case opened"
            assert err == case["expect_error"], f"{case['name']}: got {err}, want {case['expect_error']}"
        if case["expect"] == "ok" and case["scheme"] != "ecies-secp256k1":
            # The inner envelope opens to the call key with the long-term key (open_envelopes.py).
            sk = serialization.load_pem_private_key(case["inner_private_pkcs8_pem"].encode(), password=None)
            key = OE.open_envelope(got, sk, context, case["scheme"])
            assert key.hex() == case["call_key_hex"], f"{case['name']}: inner envelope"


def make_envelope_cases(prekeys: dict, keys: dict, v1: dict) -> list:
    """v1 = envelopes.json cases by name."""
    out = Cases(prekeys, keys)

    def source(scheme: str, ctx: str) -> dict:
        # The ok case of envelopes.json for this scheme and context.
        [case] = [c for c in v1.values()
                  if c["scheme"] == scheme and c["expect"] == "ok" and c["name"].startswith(f"{scheme}/ok/{ctx}/")]
        assert case["context"]["oracleDid"] == ORACLE_DID
        assert C.context_bytes(case["context"]).hex() == case["context_hex"]
        return case

    # Positive: each scheme, to a one-time prekey (audio) and to the last-resort one (video).
    for scheme in C.SCHEMES:
        for ctx, prekey_ref in (("basic-audio", "prekey-1"), ("basic-video", "prekey-last-resort")):
            src = source(scheme, ctx)
            inner = src["envelope"].encode("ascii")
            body = seal_v2(scheme, prekeys[prekey_ref], bytes.fromhex(src["context_hex"]), inner)
            out.add(f"{scheme}/ok/{ctx}/{prekey_ref}", scheme, "ok", prekey_ref=prekey_ref, source=src,
                    inner=inner, body=body)

    # Negative cases; each fails exactly one of: length, prekey id, context digest, HPKE, inner.
    for scheme in ("hpke-p256", "rsa-oaep-256"):
        audio, video = source(scheme, "basic-audio"), source(scheme, "basic-video")
        inner = audio["envelope"].encode("ascii")
        ctx = bytes.fromhex(audio["context_hex"])
        body = seal_v2(scheme, prekeys["prekey-1"], ctx, inner)

        def neg(kind, expect_error, new_body=None, **kw):
            out.add(f"{scheme}/{kind}", scheme, kind, prekey_ref="prekey-1", source=audio, inner=inner,
                    body=body if new_body is None else new_body, expect_error=expect_error, **kw)

        neg("wrong_prekey", "WrongPrekey", open_prekey_ref="prekey-2")
        neg("wrong_context", "ContextMismatch", open_source=video)
        for region, offset in (("enc", 40), ("ciphertext", 70), ("tag", len(body) - 1)):
            bad = bytearray(body)
            bad[offset] ^= 0x20
            neg(f"tampered_{region}", "DecryptionFailed", bytes(bad),
                extra={"tampered": {"body_offset": offset, "xor_hex": "20", "region": region}})
        # The header names prekey-2 and the case is opened with prekey-2: the header is the aad.
        forged = bytes.fromhex(prekeys["prekey-2"]["prekey_id_hex"]) + body[16:]
        neg("header_prekey_id_forged", "DecryptionFailed", forged, open_prekey_ref="prekey-2")
        # The digest names the video context and the case is opened under it: info and aad differ.
        forged = body[:16] + C.context_digest(bytes.fromhex(video["context_hex"])) + body[32:]
        neg("header_digest_forged", "DecryptionFailed", forged, open_source=video)
        # Strict prefixes: under 80 bytes -> BadLength; 80 or more -> the tag fails.
        for n in (79, 80, len(body) - 1):
            neg(f"truncated_{n}", "BadLength" if n < OP.MIN_BODY else "DecryptionFailed", body[:n],
                extra={"truncated": {"original_body_len": len(body), "body_len": n}})

    # The outer scheme is not authenticated by the layer: it must equal the inner one.
    src = source("hpke-p256", "basic-audio")
    inner = src["envelope"].encode("ascii")
    body = seal_v2("hpke-p256", prekeys["prekey-1"], bytes.fromhex(src["context_hex"]), inner)
    out.add("hpke-p256/scheme_swapped", "hpke-p256", "scheme_swapped", prekey_ref="prekey-1", source=src,
            inner=inner, body=body, envelope_scheme="hpke-x25519", expect_error="Malformed")

    # The layer opens, but the inner text is not a v1 envelope of the outer scheme.
    legacy = [c for c in v1.values() if c["expect"] == "ok_legacy"][0]["envelope"]
    some_v2 = out.cases[0]["envelope"]
    x25519_v1 = source("hpke-x25519", "basic-audio")["envelope"]
    not_v1 = [
        ("legacy", "ecies-secp256k1", legacy.encode("ascii")),
        ("v2", out.cases[0]["scheme"], some_v2.encode("ascii")),
        ("other_scheme", "hpke-p256", x25519_v1.encode("ascii")),
        ("empty", "hpke-p256", b""),
        ("short_v1_body", "hpke-p256", ("v1.hpke-p256." + C.b64url_encode(bytes(31))).encode("ascii")),
        ("not_ascii", "hpke-p256", "v1.hpke-p256.é".encode("utf-8")),
    ]
    for kind, scheme, inner in not_v1:
        body = seal_v2(scheme, prekeys["prekey-1"], bytes.fromhex(src["context_hex"]), inner)
        out.add(f"{scheme}/inner_not_v1/{kind}", scheme, "inner_not_v1", prekey_ref="prekey-1", source=src,
                inner=inner, body=body, expect_error="Malformed")

    # Length limit of the inner text: 4096 bytes open (the layer; the inner is filler), 4097 do not.
    for n, expect in ((OP.MAX_INNER_LEN, "ok_layer"), (OP.MAX_INNER_LEN + 1, "too_long")):
        inner = ("v1.hpke-p256." + "A" * (n - 13)).encode("ascii")
        assert len(inner) == n
        body = seal_v2("hpke-p256", prekeys["prekey-1"], bytes.fromhex(src["context_hex"]), inner)
        out.add(f"hpke-p256/{expect}/inner_{n}", "hpke-p256", expect, prekey_ref="prekey-1", source=src,
                inner=inner, body=body, expect_error=None if expect == "ok_layer" else "BadLength")
    return out.cases


# ---------------------------------------------------------------------- main


def load_vectors(name: str) -> dict:
    with open(os.path.join(C.VECTORS_DIR, name), encoding="utf-8") as fh:
        return json.load(fh)


def main():
    ed25519_selftest()
    hpke_ref.selftest()
    keys = C.load_keys_json()["keys"]
    v1 = {c["name"]: c for c in load_vectors("envelopes.json")["cases"]}

    signing = make_signing_key("prekey-signing-a")
    other_signing = make_signing_key("prekey-signing-b")
    prekey_list = [make_prekey("prekey-1", False), make_prekey("prekey-2", False),
                   make_prekey("prekey-last-resort", True)]
    prekeys = {p["name"]: p for p in prekey_list}
    for p in prekey_list:
        signed, msg = sign_prekey(signing, p, ORACLE_DID)
        p["signing_key_ref"] = signing["name"]
        p["oracle_did"] = ORACLE_DID
        p["signed_bytes_hex"] = msg.hex()
        p["signed"] = signed

    out = {
        "generator": GENERATOR,
        "signature_rule": 'Ed25519 (RFC 8032, pure) over str("oracle-calls/prekey/v1") || str(oracleDid) || '
                          "prekeyId (16) || publicKey (32) || u8(lastResort ? 1 : 0); "
                          "str(s) = u32be(len(utf8(s))) || utf8(s)",
        "signed_prekey_rule": '{"prekeyId": b64url(16), "publicKey": b64url(32), "lastResort": bool, '
                              '"signature": b64url(64)}, base64url without padding',
        "envelope_rule": "v2.<scheme of the inner v1 envelope>.<b64url(body)>; body = prekeyId (16) || "
                         "SHA-256(context)[0..16] || enc (32) || ct; ct = HPKE base mode "
                         "DHKEM(X25519, HKDF-SHA256) / HKDF-SHA256 / AES-256-GCM single shot to the prekey, "
                         "info = context bytes, aad = the 32 header bytes, plaintext = the inner v1 envelope "
                         "text (ASCII, at most 4096 bytes); so 80 <= len(body) <= 4176",
        "expectations": {
            "ok": "open_prekey_layer with prekey_ref and context gives inner_envelope, which opens with "
                  "inner_private_pkcs8_pem (open) to call_key_hex",
            "ok_layer": "the layer opens to inner_hex (4096 bytes of filler shaped like a v1 envelope)",
            "wrong_prekey": "opened with open_prekey_ref -> WrongPrekey",
            "wrong_context": "opened under open_context -> ContextMismatch",
            "tampered_enc / tampered_ciphertext / tampered_tag": "one byte XORed -> DecryptionFailed",
            "header_prekey_id_forged": "header prekey id is open_prekey_ref's, sealed to prekey_ref -> "
                                       "DecryptionFailed",
            "header_digest_forged": "header digest is open_context's, sealed under context -> DecryptionFailed",
            "truncated_N": "a strict prefix of N bytes: N < 80 -> BadLength, else DecryptionFailed",
            "scheme_swapped": "the outer scheme is not the inner one -> Malformed",
            "inner_not_v1": "the layer opens to inner_hex, which is not a v1 envelope of the outer scheme "
                            "-> Malformed",
            "too_long": "the inner text is 4097 bytes -> BadLength",
        },
        "signing_keys": {k["name"]: k for k in (signing, other_signing)},
        "prekeys": prekeys,
        "signature_cases": make_signature_cases(signing, other_signing, prekey_list),
        "cases": make_envelope_cases(prekeys, keys, v1),
    }
    path = C.write_json("prekey_envelopes.json", out)
    n_ok = sum(c["expect"] == "ok" for c in out["cases"])
    print(f"gen_prekey_envelopes.py: wrote {path}: {len(out['signature_cases'])} signature cases, "
          f"{len(out['cases'])} v2 cases ({n_ok} ok)")


if __name__ == "__main__":
    main()

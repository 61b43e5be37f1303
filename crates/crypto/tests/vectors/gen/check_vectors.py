#!/usr/bin/env python3
"""Check the stored vectors and exercise every opener/decrypter on them.

* keys.json / envelopes.json: field presence, context bytes and digests, key ids.
* v1 envelope layout, checked here without the openers' code: every case's
  header fields, body_len, and the tampered / truncated / header_rewrite
  records against their original_envelope. Each negative case must fail
  exactly the one check its expect_error names (scheme, length, key id,
  context digest), or none of them when expect_error is DecryptionFailed, so
  the expected error cannot depend on the order of checks in an opener.
* hpke: every ok case opens with hpke_ref.py (from RFC 9180) with aad = header
  and does not open with an empty aad; every header_aad_mismatch case opens
  with its recorded sealed_aad_hex and does not with its header.
* rsa-oaep-256: label_mismatch cases open under their sealing context only.
* ecies-secp256k1: decrypts the payload of every positive and suffix_mismatch
  case with Python `cryptography` following the eciesjs_format description
  (pure-Python secp256k1 point multiplication for the full shared point,
  cross-checked against cryptography's ECDH x-coordinate).
* open_envelopes.py and open_ecies.mjs on every case (ok -> the call key,
  negatives -> exactly expect_error), with the private key inlined as PKCS#8 PEM.
* prekey_envelopes.json: every signed prekey's bytes and signature again with
  verify_prekeys.py (Python Ed25519), every signature case as named; every v2
  case's header and length records, and that each negative case fails exactly
  the one check its expect_error names (length, prekey id, context digest) or
  none of them; open_prekey_envelopes.py on every case, hpke_ref.py on every ok
  layer, and the inner envelopes of ok cases through open_envelopes.py /
  open_ecies.mjs to their call keys.
* frames.json == frames_webcrypto.json; decrypt_frames.py and
  decrypt_frames.mjs on every frame and data packet, plus tampered frames.
Exits non-zero on the first failure. Needs `npm ci` in this folder first.
"""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import _common as C  # noqa: E402

C.require_cryptography()

from cryptography.hazmat.primitives import hashes, serialization  # noqa: E402
from cryptography.hazmat.primitives.asymmetric import ec, padding, x25519  # noqa: E402
from cryptography.hazmat.primitives.ciphers.aead import AESGCM  # noqa: E402
from cryptography.hazmat.primitives.kdf.hkdf import HKDF  # noqa: E402

import hpke_ref  # noqa: E402
import verify_prekeys as VP  # noqa: E402

GEN = os.path.dirname(os.path.abspath(__file__))
HEADER = C.HEADER_LEN

# expect -> expect_error, for v1 envelopes and for the legacy ecies form.
V1_ERRORS = {
    "wrong_context": "ContextMismatch",
    "wrong_key": "WrongKey",
    "tampered": "DecryptionFailed",
    "header_key_id_tampered": "WrongKey",
    "header_digest_tampered": "ContextMismatch",
    "header_key_id_forged": "DecryptionFailed",
    "header_aad_mismatch": "DecryptionFailed",
    "label_mismatch": "DecryptionFailed",
    "suffix_mismatch": "DecryptionFailed",
    "scheme_mismatch": "SchemeMismatch",
    "truncated": "BadLength",
}
LEGACY_ERRORS = {"wrong_key": "DecryptionFailed", "tampered": "DecryptionFailed", "truncated": "BadLength"}
V1_COMMON = {"ok", "wrong_context", "wrong_key", "tampered", "header_key_id_tampered", "header_digest_tampered",
             "header_key_id_forged", "scheme_mismatch", "truncated"}
V1_ONLY_FOR = {"header_aad_mismatch": {"hpke-p256", "hpke-x25519"}, "label_mismatch": {"rsa-oaep-256"},
               "suffix_mismatch": {"ecies-secp256k1"}}

HPKE_ENC = {"hpke-p256": 65, "hpke-x25519": 32}
HPKE_KEM = {"hpke-p256": hpke_ref.KEM_P256, "hpke-x25519": hpke_ref.KEM_X25519}
ECIES_LEN = 65 + 16 + 16 + 64


def fail(msg: str):
    sys.exit(f"check_vectors.py: FAIL: {msg}")


def load(name: str):
    with open(os.path.join(C.VECTORS_DIR, name), encoding="utf-8") as fh:
        return json.load(fh)


def run(cmd: list, payload) -> list:
    proc = subprocess.run(cmd, input=json.dumps(payload), capture_output=True, text=True, cwd=GEN, check=False)
    if proc.returncode != 0:
        fail(f"{' '.join(cmd)} exited {proc.returncode}: {proc.stderr.strip()}")
    out = json.loads(proc.stdout)
    if len(out) != len(payload):
        fail(f"{' '.join(cmd)} returned {len(out)} results for {len(payload)} inputs")
    return out


# ------------------------------------------------------ secp256k1 arithmetic

P = 0xFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFEFFFFFC2F


def _add(a, b):
    if a is None:
        return b
    if b is None:
        return a
    if a[0] == b[0] and (a[1] + b[1]) % P == 0:
        return None
    if a == b:
        lam = 3 * a[0] * a[0] * pow(2 * a[1], P - 2, P) % P
    else:
        lam = (b[1] - a[1]) * pow(b[0] - a[0], P - 2, P) % P
    x = (lam * lam - a[0] - b[0]) % P
    return x, (lam * (a[0] - x) - a[1]) % P


def _mul(k: int, pt):
    acc = None
    while k:
        if k & 1:
            acc = _add(acc, pt)
        pt = _add(pt, pt)
        k >>= 1
    return acc


def ecies_decrypt_documented(secret: int, sk_obj, body: bytes) -> bytes:
    """eciesjs default layout, re-implemented from the eciesjs_format text."""
    if len(body) < 97:
        raise ValueError("short")
    eph, nonce, tag, ct = body[:65], body[65:81], body[81:97], body[97:]
    if eph[0] != 4:
        raise ValueError("ephemeral key not uncompressed")
    point = (int.from_bytes(eph[1:33], "big"), int.from_bytes(eph[33:], "big"))
    if (point[1] ** 2 - point[0] ** 3 - 7) % P:
        raise ValueError("ephemeral key not on curve")
    shared = _mul(secret, point)
    shared_bytes = b"\x04" + shared[0].to_bytes(32, "big") + shared[1].to_bytes(32, "big")
    # Cross-check x with cryptography's ECDH.
    eph_pub = ec.EllipticCurvePublicKey.from_encoded_point(ec.SECP256K1(), eph)
    if sk_obj.exchange(ec.ECDH(), eph_pub) != shared_bytes[1:33]:
        fail("pure-Python secp256k1 point multiplication disagrees with cryptography ECDH")
    key = HKDF(algorithm=hashes.SHA256(), length=32, salt=None, info=b"").derive(eph + shared_bytes)
    return AESGCM(key).decrypt(nonce, ct + tag, None)


# --------------------------------------------------------------- envelopes


def regions(scheme: str, form: str, body_len: int) -> list:
    """(name, start, end) of every named byte range of a full-length body."""
    if form == "legacy":
        return [("ephemeral_key", 0, 65), ("nonce", 65, 81), ("tag", 81, 97), ("ciphertext", 97, body_len)]
    out = [("key_id", 0, C.KEY_ID_LEN), ("context_digest", C.KEY_ID_LEN, HEADER)]
    if scheme in HPKE_ENC:
        n = HEADER + HPKE_ENC[scheme]
        out += [("enc", HEADER, n), ("ciphertext", n, body_len - 16), ("tag", body_len - 16, body_len)]
    elif scheme == "rsa-oaep-256":
        out += [("ciphertext", HEADER, body_len)]
    else:
        p = HEADER
        out += [("ephemeral_key", p, p + 65), ("nonce", p + 65, p + 81), ("tag", p + 81, p + 97),
                ("ciphertext", p + 97, body_len)]
    return out


def decode_body(c) -> bytes:
    if c.get("form") == "legacy":
        return C.b58decode(c["envelope"])
    scheme, body = C.split_envelope(c["envelope"])
    if scheme != c["scheme"]:
        fail(f"{c['name']}: envelope text names {scheme}")
    return body


def decode_text(c, text: str) -> bytes:
    return C.b58decode(text) if c.get("form") == "legacy" else C.split_envelope(text)[1]


def open_context(c) -> bytes:
    return bytes.fromhex(c.get("open_context_hex", c["context_hex"]))


def failed_checks(c, keys: dict, body: bytes) -> set:
    """The structural checks this case fails when opened with its open key and context."""
    rec = keys[c.get("open_key_ref", c["key_ref"])]
    fails = set()
    if rec["scheme"] != c["scheme"]:
        fails.add("SchemeMismatch")
    if c.get("form") == "legacy":
        if len(body) != ECIES_LEN:
            fails.add("BadLength")
        return fails
    if len(body) < HEADER:
        fails.add("BadLength")
        return fails
    if body[: C.KEY_ID_LEN].hex() != rec["key_id"]:
        fails.add("WrongKey")
    if body[C.KEY_ID_LEN : HEADER] != hashlib.sha256(open_context(c)).digest()[:16]:
        fails.add("ContextMismatch")
    if c["scheme"] in HPKE_ENC:
        want = HPKE_ENC[c["scheme"]] + 32 + 16
    elif c["scheme"] == "rsa-oaep-256":
        bits = rec.get("modulus_bits") or keys[c["key_ref"]]["modulus_bits"]
        want = bits // 8
    else:
        want = ECIES_LEN
    if len(body) - HEADER != want:
        fails.add("BadLength")
    return fails


def check_case_records(c, keys: dict, body: bytes):
    """body_len, header fields, and the tampered / truncated / header_rewrite records."""
    name = c["name"]
    if c.get("body_len") != len(body):
        fail(f"{name}: body_len {c.get('body_len')} != {len(body)}")
    if c.get("form") == "v1":
        if len(body) >= HEADER:
            if (c.get("header_key_id_hex"), c.get("header_context_digest_hex")) != (
                body[: C.KEY_ID_LEN].hex(), body[C.KEY_ID_LEN : HEADER].hex()
            ):
                fail(f"{name}: header_key_id_hex / header_context_digest_hex do not match the envelope")
        elif "header_key_id_hex" in c or "header_context_digest_hex" in c:
            fail(f"{name}: header fields on a body shorter than the header")
        if c["expect"] in ("ok", "wrong_context", "wrong_key", "truncated") and len(body) >= HEADER:
            want = bytes.fromhex(keys[c["key_ref"]]["key_id"]) + hashlib.sha256(bytes.fromhex(c["context_hex"])).digest()[:16]
            if body[:HEADER] != want:
                fail(f"{name}: header is not key_id(key_ref) || digest(context)")
    if "tampered" in c:
        t = c["tampered"]
        orig = decode_text(c, t["original_envelope"])
        off, mask = t["body_offset"], bytes.fromhex(t["xor_hex"])[0]
        if len(orig) != len(body) or orig[:off] + bytes([orig[off] ^ mask]) + orig[off + 1 :] != body:
            fail(f"{name}: envelope is not original_envelope with body[{off}] ^= {t['xor_hex']}")
        spans = [r for r in regions(c["scheme"], c.get("form"), len(body)) if r[1] <= off < r[2]]
        if len(spans) != 1 or spans[0][0] != t["region"]:
            fail(f"{name}: offset {off} is in {spans}, not in region {t['region']}")
        header_region = t["region"] in ("key_id", "context_digest")
        want_header = {"header_key_id_tampered": "key_id", "header_digest_tampered": "context_digest"}.get(c["expect"])
        if (want_header is None and header_region) or (want_header is not None and t["region"] != want_header):
            fail(f"{name}: region {t['region']} does not fit expect {c['expect']}")
    if "truncated" in c:
        t = c["truncated"]
        orig = decode_text(c, t["original_envelope"])
        if t["body_len"] != len(body) or t["original_body_len"] != len(orig) or orig[: len(body)] != body:
            fail(f"{name}: envelope is not a prefix of original_envelope")
        if len(body) >= len(orig):
            fail(f"{name}: not a strict prefix")
    if "header_rewrite" in c:
        h = c["header_rewrite"]
        orig = decode_text(c, h["original_envelope"])
        lo, hi = (0, C.KEY_ID_LEN) if h["field"] == "key_id" else (C.KEY_ID_LEN, HEADER)
        if len(orig) != len(body) or orig[:lo] != body[:lo] or orig[hi:] != body[hi:] or orig[lo:hi] == body[lo:hi]:
            fail(f"{name}: envelope is not original_envelope with only the {h['field']} replaced")
        if h["field"] == "key_id":
            want = bytes.fromhex(keys[h["to_key_ref"]]["key_id"])
        else:
            want = C.context_digest(C.context_bytes(CONTEXTS_BY_NAME[h["to_context"]]))
        if body[lo:hi] != want:
            fail(f"{name}: rewritten {h['field']} is not that of {h.get('to_key_ref') or h.get('to_context')}")


CONTEXTS_BY_NAME = {}


def load_sk(rec):
    return serialization.load_pem_private_key(rec["private_pkcs8_pem"].encode(), password=None)


def check_crypto(c, keys: dict, body: bytes) -> int:
    """Scheme-specific cross-checks that do not use the openers. Returns 1 if it decrypted an ecies payload."""
    name, scheme, expect = c["name"], c["scheme"], c["expect"]
    rec = keys[c["key_ref"]]
    call_key = bytes.fromhex(c["call_key_hex"])
    ctx = bytes.fromhex(c["context_hex"])
    if scheme in HPKE_KEM and expect in ("ok", "header_aad_mismatch"):
        sk = load_sk(rec)

        def ref_open(info, aad):
            try:
                return hpke_ref.open_base(HPKE_KEM[scheme], hpke_ref.AEAD_AES256GCM, sk, info, body[HEADER:], aad)
            except Exception:  # noqa: BLE001 - InvalidTag
                return None

        if expect == "ok":
            if ref_open(ctx, body[:HEADER]) != call_key:
                fail(f"{name}: hpke_ref does not open it with aad = header")
            if ref_open(ctx, b"") is not None:
                fail(f"{name}: opens with an empty aad")
        else:
            if ref_open(ctx, bytes.fromhex(c["sealed_aad_hex"])) != call_key:
                fail(f"{name}: hpke_ref does not open it with info = context, aad = sealed_aad_hex")
            if ref_open(open_context(c), body[:HEADER]) is not None:
                fail(f"{name}: opens with the open context and aad = header")
    if scheme == "rsa-oaep-256" and expect == "label_mismatch":
        sk = load_sk(rec)

        def oaep(label):
            try:
                return sk.decrypt(body[HEADER:], padding.OAEP(mgf=padding.MGF1(algorithm=hashes.SHA256()),
                                                              algorithm=hashes.SHA256(), label=label))
            except ValueError:
                return None

        if oaep(ctx) != call_key or oaep(open_context(c)) is not None:
            fail(f"{name}: OAEP label is not the sealing context only")
    if scheme == "ecies-secp256k1" and expect in ("ok", "ok_legacy", "suffix_mismatch", "header_key_id_forged"):
        sk = load_sk(rec)
        secret = sk.private_numbers().private_value
        if c["form"] == "legacy":
            payload, want = body, c["call_key_hex"].encode("ascii")
        else:
            payload, want = body[HEADER:], call_key + hashlib.sha256(ctx).digest()
        pt = ecies_decrypt_documented(secret, sk, payload)
        if pt != want or len(payload) != 97 + len(want):
            fail(f"{name}: eciesjs_format description does not decrypt the payload to the recorded plaintext")
        if expect == "suffix_mismatch" and pt[32:] == hashlib.sha256(open_context(c)).digest():
            fail(f"{name}: suffix matches the open context")
        return 1
    return 0


def check_envelopes():
    keys = load("keys.json")
    for field in ("generator", "keys"):
        if field not in keys:
            fail(f"keys.json lacks {field}")
    for name, rec in keys["keys"].items():
        for field in ("scheme", "private_pkcs8_pem", "public_raw_hex", "public_spki_der_hex", "key_id"):
            if field not in rec:
                fail(f"key {name} lacks {field}")
        if C.key_id_from_spki(bytes.fromhex(rec["public_spki_der_hex"])) != rec["key_id"]:
            fail(f"key {name}: key_id")
        if rec["scheme"] == "ecies-secp256k1" and C.b58encode(bytes.fromhex(rec["public_raw_hex"])) != rec[
            "public_compressed_base58"
        ]:
            fail(f"key {name}: base58")
    kk = keys["keys"]

    env = load("envelopes.json")
    for field in ("generator", "cases", "eciesjs_format", "contexts", "envelope_rule", "header_rule", "bodies",
                  "expectations"):
        if field not in env:
            fail(f"envelopes.json lacks {field}")
    for rec in env["contexts"]:
        raw = C.context_bytes(rec["context"])
        if raw.hex() != rec["context_hex"] or C.context_digest(raw).hex() != rec["context_digest_hex"]:
            fail(f"context {rec['name']}: context_hex / context_digest_hex")
        CONTEXTS_BY_NAME[rec["name"]] = rec["context"]
    cases = env["cases"]
    seen = {}
    n_ecies = 0
    for c in cases:
        name = c.get("name")
        for field in ("name", "scheme", "form", "key_ref", "context", "context_hex", "call_key_hex", "envelope",
                      "expect", "body_len"):
            if field not in c:
                fail(f"case {name} lacks {field}")
        if C.context_bytes(c["context"]).hex() != c["context_hex"]:
            fail(f"case {name}: context_hex")
        if "open_context" in c and C.context_bytes(c["open_context"]).hex() != c["open_context_hex"]:
            fail(f"case {name}: open_context_hex")
        if c["key_ref"] not in kk or kk[c["key_ref"]]["scheme"] != c["scheme"]:
            fail(f"case {name}: key_ref")
        if c.get("open_key_ref", c["key_ref"]) not in kk:
            fail(f"case {name}: open_key_ref")
        if len(bytes.fromhex(c["call_key_hex"])) != 32:
            fail(f"case {name}: call key length")
        form, expect = c["form"], c["expect"]
        if form == "legacy" and c["scheme"] != "ecies-secp256k1" or form not in ("v1", "legacy"):
            fail(f"case {name}: form {form}")
        ok_word = "ok" if form == "v1" else "ok_legacy"
        table = V1_ERRORS if form == "v1" else LEGACY_ERRORS
        if expect == ok_word:
            if "expect_error" in c:
                fail(f"case {name}: ok case with expect_error")
        elif expect in table:
            if c.get("expect_error") != table[expect]:
                fail(f"case {name}: expect_error {c.get('expect_error')}, want {table[expect]} for {expect}")
            if expect in V1_ONLY_FOR and c["scheme"] not in V1_ONLY_FOR[expect]:
                fail(f"case {name}: {expect} is not for {c['scheme']}")
        else:
            fail(f"case {name}: unknown expect {expect} for form {form}")
        if (c.get("open_key_ref") is not None) != (expect in ("wrong_key", "header_key_id_forged", "scheme_mismatch")):
            fail(f"case {name}: open_key_ref present iff the case is opened with another key")
        if "open_key_ref" in c:
            same_scheme = kk[c["open_key_ref"]]["scheme"] == c["scheme"]
            if c["open_key_ref"] == c["key_ref"] or same_scheme == (expect == "scheme_mismatch"):
                fail(f"case {name}: open_key_ref {c['open_key_ref']}")

        body = decode_body(c)
        check_case_records(c, kk, body)
        fails = failed_checks(c, kk, body)
        err = c.get("expect_error")
        if (err in (None, "DecryptionFailed") and fails) or (err not in (None, "DecryptionFailed") and fails != {err}):
            fail(f"case {name}: fails the checks {sorted(fails)}; expect_error {err} needs "
                 f"{'none' if err in (None, 'DecryptionFailed') else [err]}")
        n_ecies += check_crypto(c, kk, body)
        seen.setdefault((c["scheme"], form), set()).add(expect)
        if expect == "truncated":
            seen[(c["scheme"], form)].add("truncated-header" if len(body) < HEADER else "truncated-payload")
        if expect == "wrong_context":
            seen[(c["scheme"], form)].add("wrong_context-" + name.rsplit("/", 1)[1])

    for scheme in C.SCHEMES:
        need = set(V1_COMMON) | {e for e, only in V1_ONLY_FOR.items() if scheme in only}
        need |= {"truncated-header", "truncated-payload", "wrong_context-call-type", "wrong_context-field-boundary"}
        have = seen.get((scheme, "v1"), set())
        if not need <= have:
            fail(f"{scheme}: missing expectations {sorted(need - have)}")
        if sum(1 for c in cases if c["scheme"] == scheme and c["expect"] == "ok") < 3:
            fail(f"{scheme}: fewer than 3 ok cases")
    need = {"ok_legacy"} | set(LEGACY_ERRORS)
    if not need <= seen.get(("ecies-secp256k1", "legacy"), set()):
        fail("ecies-secp256k1 legacy: missing expectations")

    # Openers, with the PEM inlined (the documented stdin protocol).
    def item(c):
        return {
            "scheme": c["scheme"],
            "private_pkcs8_pem": kk[c.get("open_key_ref", c["key_ref"])]["private_pkcs8_pem"],
            "context_hex": c.get("open_context_hex", c["context_hex"]),
            "envelope": c["envelope"],
        }

    py_cases = [c for c in cases if c["scheme"] != "ecies-secp256k1"]
    js_cases = [c for c in cases if c["scheme"] == "ecies-secp256k1"]
    results = list(zip(py_cases, run([sys.executable, "open_envelopes.py"], [item(c) for c in py_cases])))
    results += list(zip(js_cases, run(["node", "open_ecies.mjs"], [item(c) for c in js_cases])))
    for c, r in results:
        if c["expect"] in ("ok", "ok_legacy"):
            if r.get("call_key_hex") != c["call_key_hex"]:
                fail(f"opener on {c['name']}: {r}")
        elif r.get("error") != c["expect_error"] or "call_key_hex" in r:
            fail(f"opener on {c['name']}: {r}, want error {c['expect_error']}")

    # Text-level and scheme-confusion inputs, both openers.
    p256 = next(c for c in py_cases if c["scheme"] == "hpke-p256" and c["expect"] == "ok")
    k1 = next(c for c in js_cases if c["form"] == "v1" and c["expect"] == "ok")
    secp_pem = kk["secp256k1-a"]["private_pkcs8_pem"]
    extra = [
        (dict(item(p256), scheme="hpke-x25519"), "SchemeMismatch", "open_envelopes.py"),
        (dict(item(p256), envelope="v2" + p256["envelope"][2:]), "UnknownVersion", "open_envelopes.py"),
        (dict(item(p256), envelope="v1." + p256["envelope"]), "Malformed", "open_envelopes.py"),
        (dict(item(p256), envelope="v1.hpke-p384." + p256["envelope"].split(".")[2]), "UnknownScheme",
         "open_envelopes.py"),
        (dict(item(p256), envelope=p256["envelope"] + "="), "Encoding", "open_envelopes.py"),
        (dict(item(p256), scheme="ecies-secp256k1", private_pkcs8_pem=secp_pem), "SchemeMismatch", "open_ecies.mjs"),
        (dict(item(k1), scheme="hpke-p256"), "SchemeMismatch", "open_ecies.mjs"),
        (dict(item(k1), envelope=k1["envelope"] + "="), "Encoding", "open_ecies.mjs"),
        (dict(item(k1), envelope="v1.ecies-secp256k1"), "Malformed", "open_ecies.mjs"),
    ]
    for tool in ("open_envelopes.py", "open_ecies.mjs"):
        batch = [(i, e) for i, e, t in extra if t == tool]
        cmd = [sys.executable, tool] if tool.endswith(".py") else ["node", tool]
        for (i, e), r in zip(batch, run(cmd, [i for i, _ in batch])):
            if r.get("error") != e:
                fail(f"{tool} on a {e} input: {r}")
    counts = {}
    for c in cases:
        if "expect_error" in c:
            counts[c["expect_error"]] = counts.get(c["expect_error"], 0) + 1
    print(f"check_vectors.py: keys ok; {len(cases)} envelope cases ok in both openers, each negative case "
          f"fails exactly its expect_error ({', '.join(f'{k} {v}' for k, v in sorted(counts.items()))}); "
          f"{n_ecies} ecies payloads decrypted from the eciesjs_format description")


# ----------------------------------------------------------------- prekeys

# v2 expect -> expect_error (None: the layer opens).
PREKEY_ERRORS = {
    "ok": None,
    "ok_layer": None,
    "wrong_prekey": "WrongPrekey",
    "wrong_context": "ContextMismatch",
    "tampered_enc": "DecryptionFailed",
    "tampered_ciphertext": "DecryptionFailed",
    "tampered_tag": "DecryptionFailed",
    "header_prekey_id_forged": "DecryptionFailed",
    "header_digest_forged": "DecryptionFailed",
    "scheme_swapped": "Malformed",
    "inner_not_v1": "Malformed",
    "too_long": "BadLength",
}
V2_MIN_BODY, V2_MAX_BODY = 80, 80 + 4096


def check_prekeys():
    data = load("prekey_envelopes.json")
    for field in ("generator", "signature_rule", "envelope_rule", "signing_keys", "prekeys", "signature_cases",
                  "cases"):
        if field not in data:
            fail(f"prekey_envelopes.json lacks {field}")
    signers = data["signing_keys"]
    prekeys = data["prekeys"]

    # Signed prekeys: the bytes, the signature (Python Ed25519), the key pairs.
    for name, p in prekeys.items():
        sk = x25519.X25519PrivateKey.from_private_bytes(bytes.fromhex(p["private_hex"]))
        public = sk.public_key().public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
        if public.hex() != p["public_hex"] or C.b64url_decode_strict(p["prekey_id"]).hex() != p["prekey_id_hex"]:
            fail(f"prekey {name}: public key or id")
        want = VP.signed_bytes(p["oracle_did"], bytes.fromhex(p["prekey_id_hex"]), public, p["last_resort"])
        if want.hex() != p["signed_bytes_hex"]:
            fail(f"prekey {name}: signed_bytes_hex")
        signed = p["signed"]
        if (signed["prekeyId"], signed["lastResort"]) != (p["prekey_id"], p["last_resort"]) or \
                C.b64url_decode_strict(signed["publicKey"]) != public:
            fail(f"prekey {name}: signed fields")
        signer = signers[p["signing_key_ref"]]
        ssk = serialization.load_pem_private_key(signer["private_pkcs8_pem"].encode(), password=None)
        spub = ssk.public_key().public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
        if C.b64url_encode(spub) != signer["public_b64url"]:
            fail(f"signing key {signer['name']}: public key")
        if ssk.sign(want) != C.b64url_decode_strict(signed["signature"]):
            fail(f"prekey {name}: signature is not Ed25519(signed_bytes)")
    if sorted(p["last_resort"] for p in prekeys.values()).count(True) != 1:
        fail("prekey_envelopes.json: need exactly one last-resort prekey")

    items = [{k: c[k] for k in ("signed", "signing_public_key", "oracle_did")} for c in data["signature_cases"]]
    for c, r in zip(data["signature_cases"], run([sys.executable, "verify_prekeys.py"], items)):
        got = "ok" if r.get("ok") else r.get("error")
        if got != c["expect"] or r.get("field") != c.get("field"):
            fail(f"verify_prekeys.py on {c['name']}: {r}, want {c['expect']} {c.get('field')}")
    kinds = {c["expect"] for c in data["signature_cases"]}
    if kinds != {"ok", "BadSignature", "BadLength", "Encoding"}:
        fail(f"signature cases: {sorted(kinds)}")

    # v2 cases: records, and which structural checks each one fails.
    seen = set()
    for c in data["cases"]:
        name = c["name"]
        for field in ("name", "scheme", "expect", "prekey_ref", "context", "context_hex", "inner_hex", "envelope",
                      "body_len", "header_prekey_id_hex", "header_context_digest_hex"):
            if field not in c:
                fail(f"v2 case {name} lacks {field}")
        expect = c["expect"]
        if expect not in PREKEY_ERRORS and not expect.startswith("truncated_"):
            fail(f"v2 case {name}: unknown expect {expect}")
        if expect in PREKEY_ERRORS and c.get("expect_error") != PREKEY_ERRORS[expect]:
            fail(f"v2 case {name}: expect_error {c.get('expect_error')} for {expect}")
        seen.add(expect.split("_")[0] if expect.startswith("truncated_") else expect)
        for ctx_field in ("context", "open_context"):
            if ctx_field in c and C.context_bytes(c[ctx_field]).hex() != c[ctx_field + "_hex"]:
                fail(f"v2 case {name}: {ctx_field}_hex")
        parts = c["envelope"].split(".")
        if len(parts) != 3 or parts[0] != "v2" or parts[1] != c["scheme"]:
            fail(f"v2 case {name}: text form")
        body = C.b64url_decode_strict(parts[2])
        if len(body) != c["body_len"] or body[:16].hex() != c["header_prekey_id_hex"] or \
                body[16:32].hex() != c["header_context_digest_hex"]:
            fail(f"v2 case {name}: body_len or header records")
        sealed_to = prekeys[c["prekey_ref"]]
        opener = prekeys[c.get("open_prekey_ref", c["prekey_ref"])]
        context = bytes.fromhex(c.get("open_context_hex", c["context_hex"]))
        fails = set()
        if not V2_MIN_BODY <= len(body) <= V2_MAX_BODY:
            fails.add("BadLength")
        if body[:16].hex() != opener["prekey_id_hex"]:
            fails.add("WrongPrekey")
        if body[16:32] != C.context_digest(context):
            fails.add("ContextMismatch")
        err = c.get("expect_error")
        if (err in (None, "DecryptionFailed", "Malformed") and fails) or \
                (err not in (None, "DecryptionFailed", "Malformed") and fails != {err}):
            fail(f"v2 case {name}: fails the checks {sorted(fails)}, expect_error {err}")
        if expect in ("ok", "ok_layer", "scheme_swapped", "inner_not_v1"):
            # The layer itself opens (hpke_ref.py, from RFC 9180) to inner_hex; an empty aad does not.
            sk = x25519.X25519PrivateKey.from_private_bytes(bytes.fromhex(sealed_to["private_hex"]))
            kem, aead = hpke_ref.KEM_X25519, hpke_ref.AEAD_AES256GCM
            if hpke_ref.open_base(kem, aead, sk, context, body[32:], body[:32]).hex() != c["inner_hex"]:
                fail(f"v2 case {name}: hpke_ref does not open the layer to inner_hex")
            try:
                hpke_ref.open_base(kem, aead, sk, context, body[32:], b"")
            except Exception:  # noqa: BLE001 - expected
                pass
            else:
                fail(f"v2 case {name}: the layer opens with an empty aad")
    need = set(PREKEY_ERRORS) | {"truncated"}
    if not need <= seen:
        fail(f"prekey_envelopes.json: missing expectations {sorted(need - seen)}")

    # open_prekey_envelopes.py on every case; then the inner envelopes of ok cases.
    items = []
    for c in data["cases"]:
        opener = prekeys[c.get("open_prekey_ref", c["prekey_ref"])]
        items.append({"prekey_private_hex": opener["private_hex"], "prekey_id": opener["prekey_id"],
                      "context_hex": c.get("open_context_hex", c["context_hex"]), "envelope": c["envelope"]})
    inner_py, inner_js = [], []
    for c, r in zip(data["cases"], run([sys.executable, "open_prekey_envelopes.py"], items)):
        if c["expect"] in ("ok", "ok_layer"):
            if r.get("inner_envelope", "").encode("ascii").hex() != c["inner_hex"]:
                fail(f"open_prekey_envelopes.py on {c['name']}: {r}")
        elif r.get("error") != c["expect_error"]:
            fail(f"open_prekey_envelopes.py on {c['name']}: {r}, want {c['expect_error']}")
        if c["expect"] == "ok":
            if r["inner_envelope"] != c["inner_envelope"]:
                fail(f"v2 case {c['name']}: inner_envelope")
            item = {"scheme": c["scheme"], "private_pkcs8_pem": c["inner_private_pkcs8_pem"],
                    "context_hex": c["context_hex"], "envelope": r["inner_envelope"]}
            (inner_js if c["scheme"] == "ecies-secp256k1" else inner_py).append((c, item))
    for cmd, batch in (([sys.executable, "open_envelopes.py"], inner_py), (["node", "open_ecies.mjs"], inner_js)):
        for (c, _), r in zip(batch, run(cmd, [i for _, i in batch])):
            if r.get("call_key_hex") != c["call_key_hex"]:
                fail(f"{cmd[-1]} on the inner envelope of {c['name']}: {r}")
    n_ok = len(inner_py) + len(inner_js)
    if {c["scheme"] for c in data["cases"] if c["expect"] == "ok"} != set(C.SCHEMES):
        fail("prekey_envelopes.json: an ok case for every scheme is needed")
    print(f"check_vectors.py: {len(prekeys)} signed prekeys and {len(data['signature_cases'])} signature cases ok "
          f"in verify_prekeys.py; {len(data['cases'])} v2 cases ok in open_prekey_envelopes.py, {n_ok} of them "
          f"through both layers to the call key")


# ------------------------------------------------------------------ frames


def check_frames():
    py = load("frames.json")
    js = load("frames_webcrypto.json")
    for k in ("derivations", "frames", "data_packets"):
        if py[k] != js[k]:
            fail(f"frames.json and frames_webcrypto.json differ in {k}")
    for f in py["frames"]:
        for field in ("name", "kdf", "material_hex", "ratchet_steps", "key_index", "kind", "ssrc", "rtp_timestamp",
                      "send_count", "iv_hex", "header_len", "plaintext_hex", "encrypted_hex"):
            if field not in f:
                fail(f"frame {f.get('name')} lacks {field}")
    for d in py["derivations"]:
        if len(d["ratchets"]) != 3:
            fail(f"derivation {d['name']}: need 3 ratchets")

    items, expect = [], []
    for f in py["frames"]:
        items.append({k: f[k] for k in ("kdf", "material_hex", "ratchet_steps", "kind", "encrypted_hex")})
        expect.append(("ok", f))
        enc = bytes.fromhex(f["encrypted_hex"])
        if not enc:
            continue
        bad = bytearray(enc)
        bad[len(bad) // 2 if len(bad) > 40 else f["header_len"]] ^= 0x80
        items.append(dict(items[-1], encrypted_hex=bytes(bad).hex()))
        expect.append(("fail", f))
        items.append(dict(items[-2], ratchet_steps=f["ratchet_steps"] + 1))
        expect.append(("fail", f))
        if f["header_len"] > 0:
            bad = bytearray(enc)
            bad[0 if f["kind"] == "audio" else 1] ^= 0x40  # clear header is authenticated (AAD)
            items.append(dict(items[-3], encrypted_hex=bytes(bad).hex()))
            expect.append(("fail", f))
    for p in py["data_packets"]:
        items.append({"kdf": p["kdf"], "material_hex": p["material_hex"], "ratchet_steps": p["ratchet_steps"],
                      "kind": "data", "iv_hex": p["iv_hex"], "encrypted_hex": p["ciphertext_hex"]})
        expect.append(("ok-data", p))

    for cmd in ([sys.executable, "decrypt_frames.py"], ["node", "decrypt_frames.mjs"]):
        for (what, f), r in zip(expect, run(cmd, items)):
            if what == "ok":
                if r.get("plaintext_hex") != f["plaintext_hex"]:
                    fail(f"{cmd[-1]} on {f['name']}: {r}")
                if f["encrypted_hex"] and r.get("key_index") != f["key_index"]:
                    fail(f"{cmd[-1]} on {f['name']}: key_index {r.get('key_index')}")
            elif what == "ok-data":
                if r.get("plaintext_hex") != f["plaintext_hex"]:
                    fail(f"{cmd[-1]} on data packet {f['name']}: {r}")
            elif "error" not in r:
                fail(f"{cmd[-1]} accepted a corrupted variant of {f['name']}")
    print(f"check_vectors.py: frames.json == frames_webcrypto.json; {len(items)} frame/data items checked "
          f"in decrypt_frames.py and decrypt_frames.mjs")


if __name__ == "__main__":
    C.b58_selftest()
    check_envelopes()
    check_prekeys()
    check_frames()
    print("check_vectors.py: all checks passed")

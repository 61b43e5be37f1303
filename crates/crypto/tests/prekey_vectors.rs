//! Signed prekeys and v2 envelopes made by an independent implementation (Python
//! `cryptography`: Ed25519, X25519 HPKE; tests/vectors/gen/gen_prekey_envelopes.py) around v1
//! envelopes made by Python `cryptography` and npm `eciesjs`: every signature verifies (or is
//! refused) here as the vector says, our signatures are byte for byte Python's, and every v2
//! envelope opens through both layers to its call key, or fails with exactly its error.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]

use std::collections::BTreeMap;

use oracle_calls_crypto::{
    CallContext, EnvelopeError, OpenedKey, OracleKeyPair, Prekey, PrekeyError, PrekeyId,
    PrekeySecret, PrekeySigningKey, PrekeySigningPublicKey, Recipient, SignedPrekey, open,
    open_prekey_layer, recipient, verify_prekey,
};
use oracle_calls_proto::{CallType, Did, KeyEnvelope, KeyScheme, RoomName, SessionId};
use serde_json::Value;

fn vectors() -> Value {
    let path = format!(
        "{}/tests/vectors/prekey_envelopes.json",
        env!("CARGO_MANIFEST_DIR")
    );
    serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap()
}

fn text<'a>(v: &'a Value, field: &str) -> &'a str {
    v[field]
        .as_str()
        .unwrap_or_else(|| panic!("{field} missing in {v}"))
}

fn bytes32(hex_text: &str) -> [u8; 32] {
    hex::decode(hex_text).unwrap().try_into().unwrap()
}

/// The call context of a vector (the contexts used here are all ones our wire types accept).
fn context(v: &Value) -> CallContext {
    let call_type = match text(v, "callType") {
        "audio" => CallType::Audio,
        "video" => CallType::Video,
        other => panic!("call type {other}"),
    };
    CallContext::new(
        SessionId::parse(text(v, "sessionId")).unwrap(),
        RoomName::dangerous_parse_livekit_name(text(v, "roomId")).unwrap(),
        Did::parse(text(v, "userDid")).unwrap(),
        Did::parse(text(v, "oracleDid")).unwrap(),
        call_type,
    )
}

/// The prekey a vector names, as its holder keeps it.
fn prekey(v: &Value) -> Prekey {
    Prekey {
        id: PrekeyId::parse(text(v, "prekey_id")).unwrap(),
        secret: PrekeySecret::from_bytes(bytes32(text(v, "private_hex"))),
        last_resort: v["last_resort"].as_bool().unwrap(),
    }
}

fn prekey_error_name(e: &PrekeyError) -> &'static str {
    match e {
        PrekeyError::Encoding { .. } => "Encoding",
        PrekeyError::BadLength { .. } => "BadLength",
        PrekeyError::InvalidKey => "InvalidKey",
        PrekeyError::BadSignature => "BadSignature",
        _ => "other",
    }
}

fn envelope_error_name(e: &EnvelopeError) -> &'static str {
    match e {
        EnvelopeError::BadLength => "BadLength",
        EnvelopeError::WrongPrekey { .. } => "WrongPrekey",
        EnvelopeError::ContextMismatch => "ContextMismatch",
        EnvelopeError::DecryptionFailed => "DecryptionFailed",
        EnvelopeError::Malformed(_) => "Malformed",
        _ => "other",
    }
}

#[test]
fn python_signing_keys_load_and_our_signatures_are_pythons() {
    let v = vectors();
    let mut signers = BTreeMap::new();
    for (name, k) in v["signing_keys"].as_object().unwrap() {
        let key = PrekeySigningKey::from_pkcs8_pem(text(k, "private_pkcs8_pem")).unwrap();
        assert_eq!(
            key.public_key().to_string(),
            text(k, "public_b64url"),
            "{name}"
        );
        assert_eq!(
            hex::encode(key.public_key().as_bytes()),
            text(k, "public_hex")
        );
        assert_eq!(
            PrekeySigningPublicKey::parse(text(k, "public_b64url")).unwrap(),
            key.public_key()
        );
        // Our PEM is the same document Python wrote.
        assert_eq!(key.to_pkcs8_pem().as_str(), text(k, "private_pkcs8_pem"));
        signers.insert(name.clone(), key);
    }
    let prekeys = v["prekeys"].as_object().unwrap();
    assert!(prekeys.len() >= 3);
    let mut last_resort = 0;
    for (name, p) in prekeys {
        let prekey = prekey(p);
        assert_eq!(
            hex::encode(prekey.public_key()),
            text(p, "public_hex"),
            "{name}"
        );
        assert_eq!(prekey.id.to_hex(), text(p, "prekey_id_hex"));
        let did = Did::parse(text(p, "oracle_did")).unwrap();
        let signer = &signers[text(p, "signing_key_ref")];
        let python: SignedPrekey = serde_json::from_value(p["signed"].clone()).unwrap();
        // Ed25519 is deterministic: the same key and bytes give the same signature.
        assert_eq!(prekey.sign(signer, &did), python, "{name}");
        let ok = verify_prekey(&python, &signer.public_key(), &did).unwrap();
        assert_eq!(ok.id(), prekey.id);
        assert_eq!(ok.public_key(), &prekey.public_key());
        assert_eq!(ok.last_resort(), prekey.last_resort);
        last_resort += usize::from(prekey.last_resort);
    }
    assert_eq!(last_resort, 1);
}

#[test]
fn signature_cases_verify_or_fail_as_named() {
    let v = vectors();
    let mut tally: BTreeMap<String, usize> = BTreeMap::new();
    for case in v["signature_cases"].as_array().unwrap() {
        let name = text(case, "name");
        let signed: SignedPrekey = serde_json::from_value(case["signed"].clone()).unwrap();
        let key = PrekeySigningPublicKey::parse(text(case, "signing_public_key")).unwrap();
        let did = Did::parse(text(case, "oracle_did")).unwrap();
        let got = verify_prekey(&signed, &key, &did);
        let expect = text(case, "expect");
        match (&got, expect) {
            (Ok(p), "ok") => {
                assert_eq!(p.id().to_string(), signed.prekey_id, "{name}");
                assert_eq!(p.last_resort(), signed.last_resort);
            }
            (Err(e), want) => {
                assert_eq!(prekey_error_name(e), want, "{name}: {e:?}");
                if let Some(field) = case.get("field").and_then(Value::as_str) {
                    let (PrekeyError::Encoding { field: f, .. }
                    | PrekeyError::BadLength { field: f, .. }) = e
                    else {
                        panic!("{name}: {e:?}")
                    };
                    assert_eq!(*f, field, "{name}");
                }
            }
            (Ok(_), want) => panic!("{name}: verified, want {want}"),
        }
        *tally.entry(expect.to_owned()).or_default() += 1;
    }
    assert!(tally["ok"] >= 3 && tally["BadSignature"] >= 6, "{tally:?}");
    assert!(
        tally["BadLength"] >= 6 && tally["Encoding"] >= 3,
        "{tally:?}"
    );
}

#[test]
fn python_v2_envelopes_open_through_both_layers() {
    let v = vectors();
    let prekeys: BTreeMap<String, Prekey> = v["prekeys"]
        .as_object()
        .unwrap()
        .iter()
        .map(|(name, p)| (name.clone(), prekey(p)))
        .collect();
    let mut tally: BTreeMap<String, usize> = BTreeMap::new();
    let mut ok_schemes = BTreeMap::<String, usize>::new();
    for case in v["cases"].as_array().unwrap() {
        let name = text(case, "name");
        let env = KeyEnvelope::parse(text(case, "envelope")).unwrap();
        let sealed_to = &prekeys[text(case, "prekey_ref")];
        let pk = case
            .get("open_prekey_ref")
            .and_then(Value::as_str)
            .map_or(sealed_to, |r| &prekeys[r]);
        let ctx = context(case.get("open_context").unwrap_or(&case["context"]));
        let expect = text(case, "expect");
        let scheme: KeyScheme = text(case, "scheme").parse().unwrap();
        let got = open_prekey_layer(pk, &env, &ctx);

        // The clear header names the prekey the envelope was sealed to (bodies in bounds).
        if expect != "too_long" && case["body_len"].as_u64().unwrap() >= 80 {
            assert_eq!(
                recipient(&env).unwrap(),
                Recipient::Prekey {
                    scheme,
                    prekey_id: PrekeyId::from_hex(text(case, "header_prekey_id_hex")).unwrap()
                },
                "{name}"
            );
        }
        match expect {
            "ok" => {
                let inner = got.unwrap_or_else(|e| panic!("{name}: {e:?}"));
                assert_eq!(inner.as_str(), text(case, "inner_envelope"), "{name}");
                assert_eq!(hex::encode(inner.as_str()), text(case, "inner_hex"));
                // The long-term key alone refuses the v2 envelope, and opens the inner one.
                let kp =
                    OracleKeyPair::from_pkcs8_pem(text(case, "inner_private_pkcs8_pem")).unwrap();
                assert_eq!(
                    open(&kp, &env, &ctx).unwrap_err(),
                    EnvelopeError::PrekeyLayer
                );
                let Ok(OpenedKey::Bound(key)) = open(&kp, &inner, &ctx) else {
                    panic!("{name}: the inner envelope does not open")
                };
                assert_eq!(
                    hex::encode(key.dangerous_expose_bytes()),
                    text(case, "call_key_hex"),
                    "{name}"
                );
                *ok_schemes.entry(scheme.to_string()).or_default() += 1;
            }
            "ok_layer" => {
                let inner = got.unwrap_or_else(|e| panic!("{name}: {e:?}"));
                assert_eq!(
                    hex::encode(inner.as_str()),
                    text(case, "inner_hex"),
                    "{name}"
                );
                assert_eq!(inner.as_str().len(), 4096);
            }
            _ => {
                let err = got.expect_err(name);
                assert_eq!(
                    envelope_error_name(&err),
                    text(case, "expect_error"),
                    "{name}: {err:?}"
                );
                if let EnvelopeError::WrongPrekey { envelope, ours } = err {
                    assert_eq!(envelope, sealed_to.id, "{name}");
                    assert_eq!(ours, pk.id, "{name}");
                }
            }
        }
        *tally.entry(expect.to_owned()).or_default() += 1;
    }
    // Both prekeys (one-time, last resort) for every long-term scheme.
    for scheme in KeyScheme::ALL {
        assert_eq!(ok_schemes.get(scheme.as_str()), Some(&2), "{ok_schemes:?}");
    }
    for expect in [
        "wrong_prekey",
        "wrong_context",
        "tampered_enc",
        "tampered_ciphertext",
        "tampered_tag",
        "header_prekey_id_forged",
        "header_digest_forged",
        "scheme_swapped",
        "inner_not_v1",
        "ok_layer",
        "too_long",
    ] {
        assert!(tally.contains_key(expect), "no {expect} case: {tally:?}");
    }
    assert!(tally.keys().filter(|k| k.starts_with("truncated_")).count() >= 3);
}

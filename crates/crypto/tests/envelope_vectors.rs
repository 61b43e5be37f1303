//! Envelopes sealed by independent implementations (Python `cryptography` HPKE and RSA-OAEP,
//! npm `eciesjs`; tests/vectors/gen/) must open here, and every malformed one must fail with
//! exactly the error the vector names.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]

use std::collections::{BTreeMap, HashMap};

use oracle_calls_crypto::{
    CallContext, EnvelopeError, KeyScheme, OpenedKey, OracleKeyPair, OraclePublicKey, open,
};
use oracle_calls_proto::{CallType, Did, KeyEnvelope, RoomName, SessionId};
use serde::Deserialize;
use serde_json::Value;

fn vectors(name: &str) -> Value {
    let path = format!("{}/tests/vectors/{name}", env!("CARGO_MANIFEST_DIR"));
    serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap()
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct Ctx {
    session_id: String,
    room_id: String,
    user_did: String,
    oracle_did: String,
    call_type: String,
}

/// The context, or why our wire types refuse it.
fn context(v: &Value) -> Result<CallContext, String> {
    let c: Ctx = serde_json::from_value(v.clone()).unwrap();
    let call_type = match c.call_type.as_str() {
        "audio" => CallType::Audio,
        "video" => CallType::Video,
        t => return Err(format!("call type {t}")),
    };
    Ok(CallContext::new(
        SessionId::parse(&c.session_id).map_err(|e| e.to_string())?,
        RoomName::dangerous_parse_livekit_name(&c.room_id).map_err(|e| e.to_string())?,
        Did::parse(&c.user_did).map_err(|e| e.to_string())?,
        Did::parse(&c.oracle_did).map_err(|e| e.to_string())?,
        call_type,
    ))
}

fn keys() -> HashMap<String, OracleKeyPair> {
    let k = vectors("keys.json");
    let mut out = HashMap::new();
    for (name, v) in k["keys"].as_object().unwrap() {
        let kp = OracleKeyPair::from_pkcs8_pem(v["private_pkcs8_pem"].as_str().unwrap()).unwrap();
        assert_eq!(
            kp.scheme().as_str(),
            v["scheme"].as_str().unwrap(),
            "{name}"
        );
        assert_eq!(
            kp.key_id().to_string(),
            v["key_id"].as_str().unwrap(),
            "{name} key id"
        );
        let pk = kp.public_key();
        assert_eq!(
            hex::encode(pk.spki_der()),
            v["public_spki_der_hex"].as_str().unwrap(),
            "{name}"
        );
        assert_eq!(
            hex::encode(pk.to_raw()),
            v["public_raw_hex"].as_str().unwrap(),
            "{name} raw"
        );
        let raw = hex::decode(v["public_raw_hex"].as_str().unwrap()).unwrap();
        assert_eq!(OraclePublicKey::from_raw(kp.scheme(), &raw).unwrap(), pk);
        if let Some(b58) = v.get("public_compressed_base58").and_then(Value::as_str) {
            assert_eq!(OraclePublicKey::from_secp256k1_base58(b58).unwrap(), pk);
        }
        out.insert(name.clone(), kp);
    }
    assert!(out.len() >= 8);
    out
}

fn error_name(e: &EnvelopeError) -> &'static str {
    match e {
        EnvelopeError::UnknownVersion => "UnknownVersion",
        EnvelopeError::UnknownScheme => "UnknownScheme",
        EnvelopeError::Malformed(_) => "Malformed",
        EnvelopeError::Encoding(_) => "Encoding",
        EnvelopeError::BadLength => "BadLength",
        EnvelopeError::SchemeMismatch { .. } => "SchemeMismatch",
        EnvelopeError::WrongKey { .. } => "WrongKey",
        EnvelopeError::ContextMismatch => "ContextMismatch",
        EnvelopeError::DecryptionFailed => "DecryptionFailed",
        _ => "other",
    }
}

#[test]
fn context_bytes_match_the_independent_encoding() {
    let v = vectors("envelopes.json");
    let mut checked = 0;
    for c in v["contexts"].as_array().unwrap() {
        match context(&c["context"]) {
            Ok(ctx) => {
                assert_eq!(
                    hex::encode(ctx.to_bytes()),
                    c["context_hex"].as_str().unwrap()
                );
                assert_eq!(
                    hex::encode(ctx.digest()),
                    c["context_sha256_hex"].as_str().unwrap()
                );
                checked += 1;
            }
            // Non-ASCII DIDs and room names, empty sessions: never produced by a parsed event.
            Err(why) => assert!(
                why.contains("DID") || why.contains("room name") || why.contains("session id"),
                "{}: {why}",
                c["name"]
            ),
        }
    }
    assert!(checked >= 2);
}

#[test]
fn every_vector_opens_or_fails_exactly_as_named() {
    let keys = keys();
    let v = vectors("envelopes.json");
    let mut tally: BTreeMap<(String, String), usize> = BTreeMap::new();
    let mut refused_contexts = 0;
    for case in v["cases"].as_array().unwrap() {
        let name = case["name"].as_str().unwrap();
        let key_ref = case
            .get("open_key_ref")
            .and_then(Value::as_str)
            .unwrap_or_else(|| case["key_ref"].as_str().unwrap());
        let kp = &keys[key_ref];
        let ctx_json = case.get("open_context").unwrap_or(&case["context"]);
        let ctx = match context(ctx_json) {
            Ok(c) => c,
            Err(_) => {
                refused_contexts += 1;
                continue;
            }
        };
        let env = KeyEnvelope::parse(case["envelope"].as_str().unwrap()).unwrap();
        let expect = case["expect"].as_str().unwrap();
        let result = open(kp, &env, &ctx);
        match expect {
            "ok" => {
                let Ok(OpenedKey::Bound(k)) = result else {
                    panic!("{name}: {result:?}")
                };
                assert_eq!(
                    hex::encode(k.dangerous_expose_bytes()),
                    case["call_key_hex"].as_str().unwrap(),
                    "{name}"
                );
            }
            "ok_legacy" => {
                let Ok(OpenedKey::Unbound(k)) = result else {
                    panic!("{name}: {result:?}")
                };
                let k = k.dangerous_accept_without_context();
                assert_eq!(
                    hex::encode(k.dangerous_expose_bytes()),
                    case["call_key_hex"].as_str().unwrap(),
                    "{name}"
                );
            }
            _ => {
                let want = case["expect_error"].as_str().unwrap();
                let err = result.expect_err(name);
                assert_eq!(error_name(&err), want, "{name}: {err:?}");
            }
        }
        *tally
            .entry((
                case["scheme"].as_str().unwrap().to_owned(),
                expect.to_owned(),
            ))
            .or_default() += 1;
    }
    // Every scheme was exercised for success and for each kind of failure.
    for scheme in KeyScheme::ALL {
        let s = scheme.as_str().to_owned();
        for expect in [
            "ok",
            "wrong_context",
            "wrong_key",
            "tampered",
            "truncated",
            "header_key_id_tampered",
            "header_digest_tampered",
            "scheme_mismatch",
        ] {
            assert!(
                tally
                    .get(&(s.clone(), expect.to_owned()))
                    .copied()
                    .unwrap_or(0)
                    >= 1,
                "no {expect} case checked for {s}: {tally:?}"
            );
        }
    }
    assert!(tally[&("ecies-secp256k1".to_owned(), "ok_legacy".to_owned())] >= 1);
    assert!(
        refused_contexts < 30,
        "too many cases skipped: {refused_contexts}"
    );
}

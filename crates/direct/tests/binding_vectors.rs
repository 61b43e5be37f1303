//! The binding against an independent implementation: `tests/vectors/binding.json` was made by
//! `tests/vectors/binding.py` (Python `cryptography`); we recompute every vector here, have the
//! script recompute the file, and have it check bindings our code made from fresh random keys.
//! Needs `python3` with `cryptography` (scripts/test installs it); without it the tests fail.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]

use std::io::Write as _;
use std::process::{Command, Stdio};

use oracle_calls_direct::binding::{
    BindingContext, CallBinding, Confirmation, DtlsFingerprint, EphemeralKeyPair, Nonce,
    PartyIdentity, Role,
};
use rand::SeedableRng as _;
use serde_json::{Value, json};

fn dir() -> String {
    format!("{}/tests/vectors", env!("CARGO_MANIFEST_DIR"))
}

fn vectors() -> Value {
    let text = std::fs::read_to_string(format!("{}/binding.json", dir())).unwrap();
    serde_json::from_str(&text).unwrap()
}

fn hex32(v: &Value) -> [u8; 32] {
    hex::decode(v.as_str().unwrap())
        .unwrap()
        .try_into()
        .unwrap()
}

fn party(v: &Value) -> PartyIdentity {
    PartyIdentity {
        user_id: v["user_id"].as_str().unwrap().into(),
        device_id: v["device_id"].as_str().unwrap().into(),
        ed25519: hex32(&v["ed25519_hex"]),
    }
}

/// Runs `binding.py --check -` on `doc`; returns (exit code, stdout + stderr).
fn python_check(doc: &Value) -> (i32, String) {
    let mut child = Command::new("python3")
        .arg(format!("{}/binding.py", dir()))
        .args(["--check", "-"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("cannot run python3: {e}"));
    child
        .stdin
        .take()
        .unwrap()
        .write_all(doc.to_string().as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.code().unwrap_or(-1), text)
}

#[test]
fn rust_matches_the_python_vectors() {
    let doc = vectors();
    let list = doc["vectors"].as_array().unwrap();
    assert!(list.len() >= 3);
    for v in list {
        let name = v["name"].as_str().unwrap();
        let caller_kp = EphemeralKeyPair::dangerous_from_secret_bytes(
            &hex32(&v["caller_ephemeral_private_hex"]),
            Nonce::from_bytes(hex32(&v["nonce_caller_hex"])),
        )
        .unwrap();
        let callee_kp = EphemeralKeyPair::dangerous_from_secret_bytes(
            &hex32(&v["callee_ephemeral_private_hex"]),
            Nonce::from_bytes(hex32(&v["nonce_callee_hex"])),
        )
        .unwrap();
        // The wire forms of the extension match what Python encodes.
        assert_eq!(
            caller_kp.public().to_base64url(),
            v["caller_ephemeral_public"].as_str().unwrap(),
            "{name}"
        );
        assert_eq!(
            callee_kp.nonce().to_base64url(),
            v["nonce_callee"].as_str().unwrap(),
            "{name}"
        );
        let (caller, callee) = (party(&v["caller"]), party(&v["callee"]));
        let ctx = BindingContext {
            call_id: v["call_id"].as_str().unwrap(),
            caller: &caller,
            callee: &callee,
            fp_offer: DtlsFingerprint::from_attribute_value(v["fp_offer"].as_str().unwrap())
                .unwrap(),
            fp_answer: DtlsFingerprint::from_attribute_value(v["fp_answer"].as_str().unwrap())
                .unwrap(),
        };
        assert_eq!(
            hex::encode(ctx.info().unwrap()),
            v["info_hex"].as_str().unwrap(),
            "{name}"
        );
        let a =
            CallBinding::derive(Role::Caller, &caller_kp, &callee_kp.extension(), &ctx).unwrap();
        let b =
            CallBinding::derive(Role::Callee, &callee_kp, &caller_kp.extension(), &ctx).unwrap();
        for k in [&a, &b] {
            assert_eq!(
                hex::encode(k.dangerous_key_bytes()),
                v["k_call_hex"].as_str().unwrap(),
                "{name}"
            );
        }
        assert_eq!(
            hex::encode(a.confirmation().as_bytes()),
            v["confirm_caller_hex"].as_str().unwrap(),
            "{name}"
        );
        assert_eq!(
            hex::encode(b.confirmation().as_bytes()),
            v["confirm_callee_hex"].as_str().unwrap(),
            "{name}"
        );
        a.verify_peer(&Confirmation::from_bytes(hex32(&v["confirm_callee_hex"])))
            .unwrap();
        b.verify_peer(&Confirmation::from_bytes(hex32(&v["confirm_caller_hex"])))
            .unwrap();
    }
}

#[test]
fn python_recomputes_the_vector_file_and_catches_a_changed_byte() {
    let doc = vectors();
    let (code, out) = python_check(&doc);
    assert_eq!(code, 0, "binding.py --check failed: {out}");
    assert!(out.contains("0 mismatches"), "{out}");
    // Negative control: the checker must notice one flipped byte.
    let mut bad = doc.clone();
    let k = bad["vectors"][0]["k_call_hex"].as_str().unwrap().to_owned();
    let flipped = format!("{}{}", if k.starts_with('0') { "1" } else { "0" }, &k[1..]);
    bad["vectors"][0]["k_call_hex"] = json!(flipped);
    let (code, out) = python_check(&bad);
    assert_eq!(code, 1, "a tampered vector passed: {out}");
}

#[test]
fn python_accepts_bindings_our_code_made_from_random_keys() {
    let mut rng = rand::rngs::StdRng::seed_from_u64(2026);
    let caller = PartyIdentity {
        user_id: "@ünï:example.org".into(),
        device_id: "DEVA".into(),
        ed25519: [0x11; 32],
    };
    let callee = PartyIdentity {
        user_id: "@bob:example.org".into(),
        device_id: "DEVB".into(),
        ed25519: [0x22; 32],
    };
    let mut out = vec![];
    for i in 0..4u8 {
        let mut secrets = [[0u8; 32]; 2];
        let mut kps = vec![];
        for s in &mut secrets {
            // A private scalar from the RNG (retry in the negligible case it is out of range).
            loop {
                rand::Rng::fill_bytes(&mut rng, s);
                if let Ok(kp) =
                    EphemeralKeyPair::dangerous_from_secret_bytes(s, Nonce::random(&mut rng))
                {
                    kps.push(kp);
                    break;
                }
            }
        }
        let fp_offer = DtlsFingerprint::from_bytes([i; 32]);
        let fp_answer = DtlsFingerprint::from_bytes([i + 100; 32]);
        let call_id = format!("call{i}");
        let ctx = BindingContext {
            call_id: &call_id,
            caller: &caller,
            callee: &callee,
            fp_offer,
            fp_answer,
        };
        let a = CallBinding::derive(Role::Caller, &kps[0], &kps[1].extension(), &ctx).unwrap();
        let b = CallBinding::derive(Role::Callee, &kps[1], &kps[0].extension(), &ctx).unwrap();
        let p = |x: &PartyIdentity| json!({"user_id": x.user_id, "device_id": x.device_id, "ed25519_hex": hex::encode(x.ed25519)});
        out.push(json!({
            "name": format!("rust {i}"),
            "call_id": call_id,
            "caller": p(&caller),
            "callee": p(&callee),
            "fp_offer": fp_offer.to_attribute_value(),
            "fp_answer": fp_answer.to_attribute_value(),
            "caller_ephemeral_private_hex": hex::encode(secrets[0]),
            "callee_ephemeral_private_hex": hex::encode(secrets[1]),
            "nonce_caller_hex": hex::encode(kps[0].nonce().as_bytes()),
            "nonce_callee_hex": hex::encode(kps[1].nonce().as_bytes()),
            "caller_ephemeral_public": kps[0].public().to_base64url(),
            "callee_ephemeral_public": kps[1].public().to_base64url(),
            "nonce_caller": kps[0].nonce().to_base64url(),
            "nonce_callee": kps[1].nonce().to_base64url(),
            "info_hex": hex::encode(ctx.info().unwrap()),
            "k_call_hex": hex::encode(a.dangerous_key_bytes()),
            "confirm_caller_hex": hex::encode(a.confirmation().as_bytes()),
            "confirm_callee_hex": hex::encode(b.confirmation().as_bytes()),
        }));
    }
    let (code, text) = python_check(&json!({"vectors": out}));
    assert_eq!(code, 0, "Python disagrees with our bindings: {text}");
}

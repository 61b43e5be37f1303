//! The reverse direction: envelopes, v2 (prekey) envelopes, signed prekeys and frames made by
//! this crate are opened or verified by independent implementations — Python `cryptography`
//! (HPKE, RSA-OAEP, AES-GCM, Ed25519), the npm `eciesjs`
//! package, and Node's WebCrypto (the API livekit-client uses). Needs `python3` with
//! `cryptography` >= 48 and `npm ci` in tests/vectors/gen (scripts/test does both).
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]

use std::io::Write as _;
use std::process::{Command, Stdio};

use oracle_calls_crypto::frame::{FrameEncryptor, FrameKind, KeyRing, KeyRingOptions};
use oracle_calls_crypto::{CallContext, CallKey, KeyDerivation, KeyScheme, OracleKeyPair, seal};
use oracle_calls_proto::{CallType, Did, RoomName, SessionId};
use rand::SeedableRng;
use serde_json::{Value, json};

fn gen_dir() -> String {
    format!("{}/tests/vectors/gen", env!("CARGO_MANIFEST_DIR"))
}

/// Runs `program script` with `input` on stdin and parses its JSON stdout.
fn run(program: &str, script: &str, input: &Value) -> Value {
    let dir = gen_dir();
    if program == "node" {
        assert!(
            std::path::Path::new(&format!("{dir}/node_modules/eciesjs")).exists(),
            "eciesjs is not installed: run `npm ci` in {dir} (scripts/test does it)"
        );
    }
    let mut child = Command::new(program)
        .arg(format!("{dir}/{script}"))
        .current_dir(&dir)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("cannot run {program}: {e}"));
    child
        .stdin
        .take()
        .unwrap()
        .write_all(input.to_string().as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "{script} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).unwrap()
}

fn contexts() -> Vec<CallContext> {
    vec![
        CallContext::new(
            SessionId::parse("550e8400-e29b-41d4-a716-446655440000").unwrap(),
            RoomName::parse("oc-0123456789abcdef0123456789abcdef").unwrap(),
            Did::parse("did:ixo:ixo1user").unwrap(),
            Did::parse("did:ixo:entity:oracle-1").unwrap(),
            CallType::Audio,
        ),
        CallContext::new(
            SessionId::parse("séance ☎ 42").unwrap(),
            RoomName::dangerous_parse_livekit_name("lk-room-12345").unwrap(),
            Did::parse("did:key:z6MkhaXgBZDvotDkL5257faiztiGiC2QtKLGpbnnEGta2doK").unwrap(),
            Did::parse("did:web:example.com:oracles:a%20b").unwrap(),
            CallType::Video,
        ),
    ]
}

#[test]
fn our_envelopes_open_in_python_cryptography_and_eciesjs() {
    let mut rng = rand::rngs::StdRng::seed_from_u64(11);
    for scheme in KeyScheme::ALL {
        let kp = OracleKeyPair::generate(scheme, &mut rng).unwrap();
        let pem = kp.to_pkcs8_pem().unwrap();
        let mut items = vec![];
        let mut keys = vec![];
        for ctx in contexts() {
            let key = CallKey::generate(&mut rng);
            let env = seal(&kp.public_key(), &key, &ctx, &mut rng).unwrap();
            items.push(json!({
                "scheme": scheme.as_str(),
                "private_pkcs8_pem": pem.as_str(),
                "context_hex": hex::encode(ctx.to_bytes()),
                "envelope": env.as_str(),
            }));
            keys.push(hex::encode(key.dangerous_expose_bytes()));
        }
        // Negative control: the same envelope under another context must be refused there too.
        let mut wrong = items[0].clone();
        wrong["context_hex"] = items[1]["context_hex"].clone();
        items.push(wrong);
        let (program, script) = match scheme {
            KeyScheme::EciesSecp256k1 => ("node", "open_ecies.mjs"),
            _ => ("python3", "open_envelopes.py"),
        };
        let out = run(program, script, &json!(items));
        let out = out.as_array().unwrap();
        assert_eq!(out.len(), items.len());
        for (i, want) in keys.iter().enumerate() {
            assert_eq!(
                out[i]["call_key_hex"].as_str(),
                Some(want.as_str()),
                "{scheme} #{i}: {}",
                out[i]
            );
        }
        assert_eq!(
            out[keys.len()]["error"].as_str(),
            Some("ContextMismatch"),
            "{scheme}"
        );
    }
}

#[test]
fn our_frames_decrypt_in_python_and_webcrypto() {
    let mut rng = rand::rngs::StdRng::seed_from_u64(12);
    let mut items = vec![];
    let mut want = vec![];
    for kdf in [KeyDerivation::Hkdf, KeyDerivation::Pbkdf2] {
        let key = CallKey::generate(&mut rng);
        let material = match kdf {
            KeyDerivation::Hkdf => hex::encode(key.dangerous_expose_bytes()),
            KeyDerivation::Pbkdf2 => hex::encode(hex::encode(key.dangerous_expose_bytes())),
        };
        for ratchets in [0u32, 2] {
            let mut ring = KeyRing::with_call_key(&key, kdf, KeyRingOptions::default()).unwrap();
            for _ in 0..ratchets {
                ring.ratchet(0).unwrap();
            }
            let mut tx = FrameEncryptor::new(ring, &mut rng);
            let mut vp8_key = vec![0x10, 0x02, 0x00, 0x9d, 0x01, 0x2a, 0x80, 0x02, 0xe0, 0x01];
            vp8_key.extend((0..4000).map(|i| (i * 7) as u8));
            let frames: Vec<(FrameKind, &str, Vec<u8>)> = vec![
                (
                    FrameKind::Audio,
                    "audio",
                    (0..120).map(|i| (i * 3) as u8).collect(),
                ),
                (FrameKind::Audio, "audio", vec![0xf8]),
                (FrameKind::Vp8, "vp8", vp8_key),
                (
                    FrameKind::Vp8,
                    "vp8",
                    vec![0x31, 0x01, 0x00, 0x40, 0x41, 0x42],
                ),
                (FrameKind::Vp9, "vp9", vec![0x82, 0x49, 0x83, 0x42, 0x00]),
            ];
            for (kind, kind_name, f) in frames {
                let e = tx.encrypt(kind, &f).unwrap();
                items.push(json!({
                    "kdf": match kdf { KeyDerivation::Hkdf => "hkdf", _ => "pbkdf2" },
                    "material_hex": material,
                    "ratchet_steps": ratchets,
                    "kind": kind_name,
                    "encrypted_hex": hex::encode(&e),
                }));
                want.push(hex::encode(&f));
            }
        }
    }
    for (program, script) in [
        ("python3", "decrypt_frames.py"),
        ("node", "decrypt_frames.mjs"),
    ] {
        let out = run(program, script, &json!(items));
        let out = out.as_array().unwrap();
        assert_eq!(out.len(), want.len());
        for (i, w) in want.iter().enumerate() {
            assert_eq!(
                out[i]["plaintext_hex"].as_str(),
                Some(w.as_str()),
                "{script} #{i}: {}",
                out[i]
            );
        }
    }
}

/// An existing ixo oracle's raw secp256k1 secret: the key pair we make of it is the one Python
/// `cryptography` and `eciesjs` derive from the same secret, and it opens what `eciesjs`
/// sealed to that oracle in the legacy ixo form.
#[test]
fn a_raw_secp256k1_secret_is_the_key_python_and_eciesjs_derive() {
    use rand::RngExt as _;
    let mut rng = rand::rngs::StdRng::seed_from_u64(12);
    for _ in 0..4 {
        let secret: zeroize::Zeroizing<[u8; 32]> = zeroize::Zeroizing::new(rng.random());
        let kp = OracleKeyPair::from_secp256k1_bytes(&secret).unwrap();
        let secret_hex = hex::encode(secret.as_slice());
        let py = run(
            "python3",
            "secp256k1_public.py",
            &json!({ "secret_hex": secret_hex }),
        );
        let keys: Vec<[u8; 32]> = (0..3).map(|_| rng.random()).collect();
        let js = run(
            "node",
            "seal_legacy_ecies.mjs",
            &json!({
                "secret_hex": secret_hex,
                "call_keys_hex": keys.iter().map(hex::encode).collect::<Vec<_>>(),
            }),
        );
        let raw = hex::encode(kp.public_key().to_raw());
        assert_eq!(raw, py["public_compressed_hex"].as_str().unwrap());
        assert_eq!(raw, js["public_compressed_hex"].as_str().unwrap());
        assert_eq!(
            hex::encode(kp.public_key().spki_der()),
            py["spki_der_hex"].as_str().unwrap()
        );
        assert_eq!(kp.key_id().to_string(), py["key_id"].as_str().unwrap());
        for (key, env) in keys.iter().zip(js["envelopes"].as_array().unwrap()) {
            let env = oracle_calls_crypto::KeyEnvelope::parse(env.as_str().unwrap()).unwrap();
            let opened = oracle_calls_crypto::open_legacy(&kp, &env).unwrap();
            assert!(opened.ct_eq(&CallKey::from_bytes(*key)));
        }
    }
}

/// Prekeys signed here verify with Python's Ed25519, and v2 envelopes sealed here open in two
/// steps elsewhere: Python `cryptography` opens the prekey layer, then Python or `eciesjs`
/// opens the inner v1 envelope with the long-term key.
#[test]
fn our_prekeys_and_v2_envelopes_open_in_python_and_eciesjs() {
    use oracle_calls_crypto::{Prekey, PrekeySigningKey, seal_with_prekey, verify_prekey};

    let mut rng = rand::rngs::StdRng::seed_from_u64(13);
    let signer = PrekeySigningKey::generate(&mut rng);
    let ctxs = contexts();
    let oracle = ctxs[0].oracle_did().clone();
    let prekeys = [
        Prekey::generate(false, &mut rng),
        Prekey::generate(true, &mut rng),
    ];
    let signed: Vec<_> = prekeys.iter().map(|p| p.sign(&signer, &oracle)).collect();

    // Python checks our signatures; under another DID they must fail there too.
    let mut items = vec![];
    for (s, did) in signed
        .iter()
        .flat_map(|s| [(s, oracle.as_str()), (s, "did:ixo:entity:someone-else")])
    {
        items.push(json!({
            "signed": serde_json::to_value(s).unwrap(),
            "signing_public_key": signer.public_key().to_string(),
            "oracle_did": did,
        }));
    }
    let out = run("python3", "verify_prekeys.py", &json!(items));
    for (i, r) in out.as_array().unwrap().iter().enumerate() {
        let want = if i % 2 == 0 {
            json!({"ok": true})
        } else {
            json!({"error": "BadSignature"})
        };
        assert_eq!(r, &want, "verify_prekeys.py #{i}");
    }

    for scheme in KeyScheme::ALL {
        let kp = OracleKeyPair::generate(scheme, &mut rng).unwrap();
        let pem = kp.to_pkcs8_pem().unwrap();
        let mut outer = vec![];
        let mut keys = vec![];
        for (i, ctx) in ctxs.iter().enumerate() {
            let prekey = &prekeys[i % 2];
            // Each context names its own oracle: the prekey is signed for that one.
            let signed = prekey.sign(&signer, ctx.oracle_did());
            let verified = verify_prekey(&signed, &signer.public_key(), ctx.oracle_did()).unwrap();
            let key = CallKey::generate(&mut rng);
            let env = seal_with_prekey(&kp.public_key(), &verified, &key, ctx, &mut rng).unwrap();
            outer.push(json!({
                "prekey_private_hex": hex::encode(*prekey.secret.to_bytes()),
                "prekey_id": prekey.id.to_string(),
                "context_hex": hex::encode(ctx.to_bytes()),
                "envelope": env.as_str(),
            }));
            keys.push(hex::encode(key.dangerous_expose_bytes()));
        }
        // Negative controls: another context, another prekey.
        let mut wrong_ctx = outer[0].clone();
        wrong_ctx["context_hex"] = outer[1]["context_hex"].clone();
        let mut wrong_prekey = outer[0].clone();
        wrong_prekey["prekey_id"] = outer[1]["prekey_id"].clone();
        wrong_prekey["prekey_private_hex"] = outer[1]["prekey_private_hex"].clone();
        outer.push(wrong_ctx);
        outer.push(wrong_prekey);

        let opened = run("python3", "open_prekey_envelopes.py", &json!(outer));
        let opened = opened.as_array().unwrap();
        assert_eq!(opened[keys.len()]["error"], "ContextMismatch", "{scheme}");
        assert_eq!(opened[keys.len() + 1]["error"], "WrongPrekey", "{scheme}");
        let inner: Vec<Value> = ctxs
            .iter()
            .zip(opened)
            .map(|(ctx, o)| {
                let text = o["inner_envelope"]
                    .as_str()
                    .unwrap_or_else(|| panic!("{scheme}: {o}"));
                assert!(text.starts_with(&format!("v1.{scheme}.")), "{text}");
                json!({
                    "scheme": scheme.as_str(),
                    "private_pkcs8_pem": pem.as_str(),
                    "context_hex": hex::encode(ctx.to_bytes()),
                    "envelope": text,
                })
            })
            .collect();
        let (program, script) = match scheme {
            KeyScheme::EciesSecp256k1 => ("node", "open_ecies.mjs"),
            _ => ("python3", "open_envelopes.py"),
        };
        let out = run(program, script, &json!(inner));
        for (i, want) in keys.iter().enumerate() {
            assert_eq!(
                out[i]["call_key_hex"].as_str(),
                Some(want.as_str()),
                "{scheme} #{i}: {}",
                out[i]
            );
        }
    }
}

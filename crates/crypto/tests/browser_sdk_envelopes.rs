//! Envelopes sealed by the browser SDK (`sdk/browser`, TypeScript: `src/envelope.ts` with
//! `@hpke/core` on WebCrypto) open with this crate's `open` / `open_prekey_layer` and with the
//! independent Python openers of `tests/vectors/gen` (Python `cryptography`): v1 hpke-p256 and
//! hpke-x25519, and v2 (prekey) envelopes around them, for a short (~200 B) and a long
//! (~850 B, the longest the field limits allow) call context. A flipped byte, another context
//! or another prekey must fail.
//!
//! Runs `node sdk/browser/scripts/seal-envelopes.mjs`, which bundles the SDK's TypeScript with
//! esbuild on the fly. Needs `sdk/browser/node_modules` (`npm ci` there; scripts/test does it):
//! without it the test prints why and returns. Also needs `python3` with `cryptography` >= 48.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]

use std::collections::BTreeMap;
use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use oracle_calls_crypto::{
    CallContext, EnvelopeError, KeyEnvelope, KeyScheme, OpenedKey, OracleKeyPair, Prekey,
    PrekeySigningKey, open, open_prekey_layer,
};
use oracle_calls_proto::{CallType, Did, RoomName, SessionId};
use serde_json::{Value, json};

fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

/// Runs `program script` in `dir` with `input` on stdin and parses its JSON stdout.
fn run(program: &str, dir: &Path, script: &str, input: &Value) -> Value {
    let mut child = Command::new(program)
        .arg(script)
        .current_dir(dir)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("cannot run {program} {script}: {e}"));
    child
        .stdin
        .take()
        .unwrap()
        .write_all(input.to_string().as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "{program} {script} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).unwrap_or_else(|e| panic!("{script} printed no JSON ({e})"))
}

struct Ctx {
    name: &'static str,
    ctx: CallContext,
}

fn contexts() -> Vec<Ctx> {
    // A call's context as the SDK makes it: ~200 bytes.
    let short = CallContext::new(
        SessionId::parse("sess-0123456789abcdef0123456789abcdef").unwrap(),
        RoomName::parse("oc-0123456789abcdef0123456789abcdef").unwrap(),
        Did::parse("did:ixo:ixo1qqqsyqcyq5rqwzqfpg9scrgwpugpzysn7hzyd5").unwrap(),
        Did::parse("did:ixo:entity:oracle-companion-1").unwrap(),
        CallType::Audio,
    );
    // Every field at its longest: a 256-byte session id with multi-byte UTF-8, 256-byte DIDs
    // with `%XX` and `:`.
    let session = format!("séance ☎ {}", "s".repeat(256 - "séance ☎ ".len()));
    let did = |prefix: &str| format!("{prefix}{}", "a".repeat(256 - prefix.len()));
    let long = CallContext::new(
        SessionId::parse(&session).unwrap(),
        RoomName::parse("oc-fedcba9876543210fedcba9876543210").unwrap(),
        Did::parse(&did("did:web:example.com:users:a%20b:")).unwrap(),
        Did::parse(&did("did:ixo:entity:")).unwrap(),
        CallType::Video,
    );
    vec![
        Ctx {
            name: "short",
            ctx: short,
        },
        Ctx {
            name: "long",
            ctx: long,
        },
    ]
}

fn ctx_json(c: &Ctx) -> Value {
    json!({
        "ref": c.name,
        "sessionId": c.ctx.session_id().as_str(),
        "roomId": c.ctx.room_name().as_str(),
        "userDid": c.ctx.user_did().as_str(),
        "oracleDid": c.ctx.oracle_did().as_str(),
        "callType": match c.ctx.call_type() { CallType::Audio => "audio", CallType::Video => "video" },
    })
}

/// `text` with the byte at `at` of its base64url body XORed with `mask`.
fn flipped(text: &str, at: usize, mask: u8) -> String {
    let (prefix, body) = text.rsplit_once('.').unwrap();
    let mut raw = URL_SAFE_NO_PAD.decode(body).unwrap();
    raw[at] ^= mask;
    format!("{prefix}.{}", URL_SAFE_NO_PAD.encode(raw))
}

fn opened_hex(o: OpenedKey) -> String {
    match o {
        OpenedKey::Bound(k) => hex::encode(k.dangerous_expose_bytes()),
        OpenedKey::Unbound(_) => panic!("an SDK envelope opened as an unbound legacy key"),
    }
}

#[test]
fn envelopes_sealed_by_the_browser_sdk_open_in_rust_and_python() {
    let root = repo_root();
    let sdk = root.join("sdk/browser");
    if !sdk.join("node_modules/esbuild").exists() || !sdk.join("node_modules/@hpke/core").exists() {
        println!(
            "SKIPPED: {} has no node_modules (run `npm ci` there; scripts/test does it)",
            sdk.display()
        );
        return;
    }
    let mut rng = rand::rng();
    let ctxs = contexts();
    let short_len = ctxs[0].ctx.to_bytes().len();
    assert!(
        (140..=220).contains(&short_len),
        "the short context: {short_len} bytes"
    );
    let long_len = ctxs[1].ctx.to_bytes().len();
    assert!(long_len >= 800, "the long context: {long_len} bytes");
    println!("contexts: {short_len} and {long_len} bytes");

    let key_pairs: BTreeMap<&str, OracleKeyPair> = [
        (
            "p256",
            OracleKeyPair::generate(KeyScheme::HpkeP256, &mut rng).unwrap(),
        ),
        (
            "x25519",
            OracleKeyPair::generate(KeyScheme::HpkeX25519, &mut rng).unwrap(),
        ),
    ]
    .into();
    let signer = PrekeySigningKey::generate(&mut rng);
    let oracle = ctxs[0].ctx.oracle_did().clone();
    let prekeys: BTreeMap<&str, Prekey> = [
        ("one-time", Prekey::generate(false, &mut rng)),
        ("last-resort", Prekey::generate(true, &mut rng)),
    ]
    .into();

    let input = json!({
        "keys": key_pairs.iter().map(|(name, kp)| json!({
            "ref": name,
            "scheme": kp.scheme().as_str(),
            "publicKey": URL_SAFE_NO_PAD.encode(kp.public_key().to_raw()),
            "keyId": kp.key_id().to_string(),
        })).collect::<Vec<_>>(),
        "prekeys": prekeys.iter().map(|(name, p)| json!({
            "ref": name,
            "signed": serde_json::to_value(p.sign(&signer, &oracle)).unwrap(),
            "signingKey": signer.public_key().to_string(),
            "oracleDid": oracle.as_str(),
        })).collect::<Vec<_>>(),
        "contexts": ctxs.iter().map(ctx_json).collect::<Vec<_>>(),
    });
    let sealed = run("node", &sdk, "scripts/seal-envelopes.mjs", &input);
    let sealed = sealed.as_array().unwrap();
    // 2 keys x 2 contexts x (one v1 + one v2 per prekey).
    assert_eq!(sealed.len(), 2 * 2 * 3, "{sealed:?}");

    let gen_dir = root.join("crates/crypto/tests/vectors/gen");
    let mut py_v1 = vec![];
    let mut py_v1_want = vec![];
    let mut py_v2 = vec![];
    let mut py_v2_want = vec![];
    let (mut v1s, mut v2s) = (0, 0);
    for item in sealed {
        let kp = &key_pairs[item["keyRef"].as_str().unwrap()];
        let c = ctxs.iter().find(|c| c.name == item["contextRef"]).unwrap();
        let other = ctxs.iter().find(|o| o.name != c.name).unwrap();
        // The SDK's context bytes are the crate's.
        assert_eq!(item["contextHex"], hex::encode(c.ctx.to_bytes()), "{item}");
        let text = item["envelope"].as_str().unwrap();
        let want = item["callKeyHex"].as_str().unwrap().to_owned();
        let env = KeyEnvelope::parse(text).unwrap();
        let pem = kp.to_pkcs8_pem().unwrap();
        let scheme = kp.scheme().as_str();
        match item["kind"].as_str().unwrap() {
            "v1" => {
                v1s += 1;
                assert!(text.starts_with(&format!("v1.{scheme}.")), "{text}");
                assert_eq!(opened_hex(open(kp, &env, &c.ctx).unwrap()), want, "{item}");
                assert!(matches!(
                    open(kp, &env, &other.ctx),
                    Err(EnvelopeError::ContextMismatch)
                ));
                let body_len = URL_SAFE_NO_PAD
                    .decode(text.rsplit_once('.').unwrap().1)
                    .unwrap()
                    .len();
                // One flipped bit in the key id, the digest, the encapsulated key, the tag.
                for at in [3, 20, 40, body_len - 1] {
                    let bad = KeyEnvelope::parse(&flipped(text, at, 0x04)).unwrap();
                    assert!(open(kp, &bad, &c.ctx).is_err(), "flipped byte {at} opened");
                    py_v1.push(json!({"scheme": scheme, "private_pkcs8_pem": pem.as_str(),
                        "context_hex": hex::encode(c.ctx.to_bytes()), "envelope": bad.as_str()}));
                    py_v1_want.push(None);
                }
                py_v1.push(json!({"scheme": scheme, "private_pkcs8_pem": pem.as_str(),
                    "context_hex": hex::encode(c.ctx.to_bytes()), "envelope": text}));
                py_v1_want.push(Some(want));
            }
            "v2" => {
                v2s += 1;
                assert!(text.starts_with(&format!("v2.{scheme}.")), "{text}");
                let pk_name = item["prekeyRef"].as_str().unwrap();
                let prekey = &prekeys[pk_name];
                assert_eq!(item["prekeyId"], prekey.id.to_string());
                let inner = open_prekey_layer(prekey, &env, &c.ctx).unwrap();
                assert!(inner.as_str().starts_with(&format!("v1.{scheme}.")));
                assert_eq!(
                    opened_hex(open(kp, &inner, &c.ctx).unwrap()),
                    want,
                    "{item}"
                );
                // A v1 opener refuses the v2 text; another context or prekey does not open it.
                assert!(matches!(
                    open(kp, &env, &c.ctx),
                    Err(EnvelopeError::PrekeyLayer)
                ));
                assert!(matches!(
                    open_prekey_layer(prekey, &env, &other.ctx),
                    Err(EnvelopeError::ContextMismatch)
                ));
                let other_pk = prekeys.iter().find(|(n, _)| **n != pk_name).unwrap().1;
                assert!(matches!(
                    open_prekey_layer(other_pk, &env, &c.ctx),
                    Err(EnvelopeError::WrongPrekey { .. })
                ));
                let item_py = |envelope: &str| {
                    json!({
                        "prekey_private_hex": hex::encode(*prekey.secret.to_bytes()),
                        "prekey_id": prekey.id.to_string(),
                        "context_hex": hex::encode(c.ctx.to_bytes()),
                        "envelope": envelope,
                    })
                };
                for at in [5, 24, 50, 70] {
                    let bad = KeyEnvelope::parse(&flipped(text, at, 0x10)).unwrap();
                    assert!(
                        open_prekey_layer(prekey, &bad, &c.ctx).is_err(),
                        "flipped byte {at} opened"
                    );
                    py_v2.push(item_py(bad.as_str()));
                    py_v2_want.push(None);
                }
                py_v2.push(item_py(text));
                py_v2_want.push(Some((
                    inner.as_str().to_owned(),
                    want,
                    pem.as_str().to_owned(),
                    scheme,
                    hex::encode(c.ctx.to_bytes()),
                )));
            }
            other => panic!("unknown kind {other}"),
        }
    }
    assert_eq!((v1s, v2s), (4, 8));

    // Python `cryptography`: the v1 envelopes (and their flipped copies).
    let out = run("python3", &gen_dir, "open_envelopes.py", &json!(py_v1));
    let out = out.as_array().unwrap();
    assert_eq!(out.len(), py_v1_want.len());
    for (i, (got, want)) in out.iter().zip(&py_v1_want).enumerate() {
        match want {
            Some(k) => assert_eq!(got["call_key_hex"], *k, "open_envelopes.py #{i}: {got}"),
            None => assert!(got.get("error").is_some(), "flipped #{i} opened: {got}"),
        }
    }

    // Python: the prekey layer, then the inner v1 envelope.
    let out = run(
        "python3",
        &gen_dir,
        "open_prekey_envelopes.py",
        &json!(py_v2),
    );
    let out = out.as_array().unwrap();
    assert_eq!(out.len(), py_v2_want.len());
    let mut inner_items = vec![];
    let mut inner_want = vec![];
    for (i, (got, want)) in out.iter().zip(&py_v2_want).enumerate() {
        match want {
            Some((inner, key, pem, scheme, ctx_hex)) => {
                assert_eq!(
                    got["inner_envelope"], *inner,
                    "open_prekey_envelopes.py #{i}: {got}"
                );
                inner_items.push(json!({"scheme": scheme, "private_pkcs8_pem": pem,
                    "context_hex": ctx_hex, "envelope": inner}));
                inner_want.push(key.clone());
            }
            None => assert!(got.get("error").is_some(), "flipped #{i} opened: {got}"),
        }
    }
    let out = run(
        "python3",
        &gen_dir,
        "open_envelopes.py",
        &json!(inner_items),
    );
    let out = out.as_array().unwrap();
    assert_eq!(out.len(), inner_want.len());
    assert_eq!(inner_want.len(), 8);
    for (got, want) in out.iter().zip(&inner_want) {
        assert_eq!(got["call_key_hex"], *want, "{got}");
    }
}

/// In bulk, in Node and in Debian's Chromium (its WebCrypto, as in a page): 800 envelopes per
/// runtime (200 random call contexts, P-256 and X25519, v1 and v2) all open in Rust with the
/// call key the SDK made. One browser call of ~145 once failed at the agent with its inner v1
/// envelope not opening (its prekey layer did); a defect that depends on the bytes or on the
/// browser's crypto (an encoding that drops a leading zero, a point in the wrong form) shows up
/// here as a failure rate, not once in a while.
#[test]
fn many_envelopes_sealed_by_the_browser_sdk_all_open_in_rust() {
    let root = repo_root();
    let sdk = root.join("sdk/browser");
    if !sdk.join("node_modules/esbuild").exists() || !sdk.join("node_modules/@hpke/core").exists() {
        println!(
            "SKIPPED: {} has no node_modules (run `npm ci` there; scripts/test does it)",
            sdk.display()
        );
        return;
    }
    let mut rng = rand::rng();
    let hex32 = || {
        let mut b = [0u8; 16];
        rand::fill(&mut b[..]);
        hex::encode(b)
    };
    let ctxs: Vec<(String, CallContext)> = (0..200)
        .map(|i| {
            let ctx = CallContext::new(
                SessionId::parse(&format!("sess-{}", hex32())).unwrap(),
                RoomName::parse(&format!("oc-{}", hex32())).unwrap(),
                Did::parse(&format!("did:ixo:ixo1{}", hex32())).unwrap(),
                Did::parse("did:ixo:entity:oracle-bulk").unwrap(),
                if i % 2 == 0 {
                    CallType::Audio
                } else {
                    CallType::Video
                },
            );
            (format!("c{i}"), ctx)
        })
        .collect();
    let key_pairs: BTreeMap<&str, OracleKeyPair> = [
        (
            "p256",
            OracleKeyPair::generate(KeyScheme::HpkeP256, &mut rng).unwrap(),
        ),
        (
            "x25519",
            OracleKeyPair::generate(KeyScheme::HpkeX25519, &mut rng).unwrap(),
        ),
    ]
    .into();
    let signer = PrekeySigningKey::generate(&mut rng);
    let oracle = ctxs[0].1.oracle_did().clone();
    let prekey = Prekey::generate(false, &mut rng);
    let input = json!({
        "keys": key_pairs.iter().map(|(name, kp)| json!({
            "ref": name,
            "scheme": kp.scheme().as_str(),
            "publicKey": URL_SAFE_NO_PAD.encode(kp.public_key().to_raw()),
            "keyId": kp.key_id().to_string(),
        })).collect::<Vec<_>>(),
        "prekeys": [json!({
            "ref": "one-time",
            "signed": serde_json::to_value(prekey.sign(&signer, &oracle)).unwrap(),
            "signingKey": signer.public_key().to_string(),
            "oracleDid": oracle.as_str(),
        })],
        "contexts": ctxs.iter().map(|(name, ctx)| {
            let mut v = ctx_json(&Ctx { name: "x", ctx: ctx.clone() });
            v["ref"] = json!(name);
            v
        }).collect::<Vec<_>>(),
    });
    assert!(
        Path::new(&std::env::var("BROWSER_PEER_CHROMIUM").unwrap_or("/usr/bin/chromium".into()))
            .exists(),
        "Debian's chromium is missing (scripts/test installs it)"
    );
    for runtime in ["node", "chromium"] {
        let mut input = input.clone();
        input["runtime"] = json!(runtime);
        let sealed = run("node", &sdk, "scripts/seal-envelopes.mjs", &input);
        let sealed = sealed.as_array().unwrap();
        assert_eq!(sealed.len(), 2 * 200 * 2, "{runtime}");
        open_all(runtime, sealed, &key_pairs, &ctxs, &prekey);
    }
}

fn open_all(
    runtime: &str,
    sealed: &[Value],
    key_pairs: &BTreeMap<&str, OracleKeyPair>,
    ctxs: &[(String, CallContext)],
    prekey: &Prekey,
) {
    let mut failed = vec![];
    for item in sealed {
        let kp = &key_pairs[item["keyRef"].as_str().unwrap()];
        let ctx = &ctxs
            .iter()
            .find(|(name, _)| name == item["contextRef"].as_str().unwrap())
            .unwrap()
            .1;
        let env = KeyEnvelope::parse(item["envelope"].as_str().unwrap()).unwrap();
        let inner = match item["kind"].as_str().unwrap() {
            "v2" => match open_prekey_layer(prekey, &env, ctx) {
                Ok(inner) => inner,
                Err(e) => {
                    failed.push(format!("prekey layer: {e}: {}", item["envelope"]));
                    continue;
                }
            },
            _ => env,
        };
        match open(kp, &inner, ctx) {
            Ok(k) => assert_eq!(opened_hex(k), item["callKeyHex"].as_str().unwrap()),
            Err(e) => failed.push(format!("{}: {e}: {}", item["scheme"], inner.as_str())),
        }
    }
    assert!(
        failed.is_empty(),
        "{runtime}: {} of {} did not open:\n{}",
        failed.len(),
        sealed.len(),
        failed.join("\n")
    );
    println!(
        "{runtime}: {} envelopes sealed by the SDK opened in Rust",
        sealed.len()
    );
}

//! Interop with `livekit-client` (LiveKit's JS SDK, from npm) in Debian's headless Chromium,
//! through the stack's real livekit-server: a two-way tone exchange under end-to-end
//! encryption with `ExternalE2EEKeyProvider`, in both key modes, and a wrong key.
//! The browser peer is tests/browser/peer.mjs (`.ci/run` installs Chromium, `scripts/test`
//! runs `npm ci` there).
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]

mod common;

use std::io::{BufRead as _, BufReader, Read as _, Write as _};
use std::process::{Command, Stdio};
use std::time::Duration;

use oracle_calls_crypto::frame::{KeyRing, KeyRingOptions};
use oracle_calls_crypto::{CallKey, KeyDerivation};
use oracle_calls_rtc::{RoomEvent, goertzel_power};

/// Seconds the browser publishes and listens after it joined.
const SECONDS: f64 = 6.0;

struct Outcome {
    rust_heard: Vec<i16>,
    browser: serde_json::Value,
    failures: Vec<(String, u64)>,
    /// Data messages we received: (sender, topic, text, encrypted).
    data: Vec<(String, Option<String>, String, bool)>,
    data_failures: Vec<String>,
}

const FROM_BROWSER: &str = "hello from livekit-client ✓";
const FROM_RUST: &str = "hello from oracle-calls-rtc ✓";

/// One browser at a time: Chromium's start-up on two cores would otherwise starve the calls.
static ONE_BROWSER: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

async fn exchange(kdf: KeyDerivation, browser_key: &CallKey, rust_key: &CallKey) -> Outcome {
    let _one = ONE_BROWSER.lock().await;
    let lk = common::LiveKit::from_stack();
    let room_name = common::unique_room("rtc-js");
    let cfg = serde_json::json!({
        "url": lk.url, "token": lk.token(&room_name, "js-peer"),
        "key_hex": hex::encode(browser_key.dangerous_expose_bytes()),
        "kdf": match kdf { KeyDerivation::Hkdf => "hkdf", _ => "pbkdf2" },
        "tone_hz": 440.0, "listen_hz": 880.0, "seconds": SECONDS, "publish": true,
        "send_data": [FROM_BROWSER], "wait_for_identities": ["rust-peer"],
    });
    let peer = format!(
        "{}/../../tests/browser/peer.mjs",
        env!("CARGO_MANIFEST_DIR")
    );
    assert!(
        std::path::Path::new("/usr/bin/chromium").exists(),
        "Debian's chromium is needed (apt-get install chromium; .ci/run installs it)"
    );
    let mut js = Command::new("node")
        .arg(&peer)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("node runs tests/browser/peer.mjs");
    js.stdin
        .take()
        .unwrap()
        .write_all(cfg.to_string().as_bytes())
        .unwrap();
    // Join once the browser has: its start-up (Chromium, the page, the SDK) takes seconds.
    let (joined_tx, joined_rx) = std::sync::mpsc::channel();
    let stderr = js.stderr.take().unwrap();
    let log = std::thread::spawn(move || {
        let mut lines = Vec::new();
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            if line.starts_with("browser-peer: connected") {
                let _ = joined_tx.send(());
            }
            lines.push(line);
        }
        lines.join("\n")
    });
    let joined =
        tokio::task::spawn_blocking(move || joined_rx.recv_timeout(Duration::from_secs(30)))
            .await
            .unwrap();
    if joined.is_err() {
        let _ = js.kill();
        panic!(
            "the browser did not join within 30 s:\n{}",
            log.join().unwrap()
        );
    }

    let ring = KeyRing::with_call_key(rust_key, kdf, KeyRingOptions::default()).unwrap();
    let (room, mut events) = common::join(&lk, &room_name, "rust-peer", Some(ring)).await;
    let mic = room.publish_audio("tone").await.unwrap();
    room.send_data(FROM_RUST.as_bytes(), Some("oc-test"))
        .await
        .expect("the data message is handed to the channel");
    let mut heard = Vec::new();
    let mut failures = Vec::new();
    let mut data = Vec::new();
    let mut data_failures = Vec::new();
    common::tone_while(&mic, &mut events, (SECONDS * 50.0) as u64, |ev| match ev {
        RoomEvent::AudioFrame { identity, pcm, .. } if identity == "js-peer" => heard.extend(pcm),
        RoomEvent::DecryptionFailed {
            identity, stats, ..
        } => failures.push((identity, stats.failed)),
        RoomEvent::DataReceived {
            identity,
            topic,
            payload,
            encrypted,
        } => data.push((
            identity,
            topic,
            String::from_utf8_lossy(&payload).into_owned(),
            encrypted,
        )),
        RoomEvent::DataDecryptionFailed { identity, .. }
        | RoomEvent::UnencryptedData { identity } => data_failures.push(identity),
        _ => {}
    })
    .await;
    room.leave().await;
    let out = tokio::task::spawn_blocking(move || {
        let mut stdout = String::new();
        js.stdout
            .take()
            .unwrap()
            .read_to_string(&mut stdout)
            .unwrap();
        (js.wait().unwrap(), stdout)
    })
    .await
    .unwrap();
    let log = log.join().unwrap();
    assert!(out.0.success(), "the browser peer failed:\n{log}");
    let browser: serde_json::Value = serde_json::from_str(out.1.trim())
        .unwrap_or_else(|e| panic!("browser output {e}: {}\n{log}", out.1));
    Outcome {
        rust_heard: heard,
        browser,
        failures,
        data,
        data_failures,
    }
}

async fn two_way(kdf: KeyDerivation) {
    let key = CallKey::generate(&mut rand::rng());
    let o = exchange(kdf, &key, &key).await;
    let heard = o.rust_heard.get(48_000..).unwrap_or_default();
    let rust_power = goertzel_power(heard, 440.0);
    let js_power = o.browser["power"].as_f64().unwrap();
    eprintln!(
        "{kdf:?}: rust heard {} samples, 440 Hz power {rust_power:.3}; browser 880 Hz power {js_power:.3}, {} frames, errors {}",
        o.rust_heard.len(),
        o.browser["frames"],
        o.browser["e2ee_errors"]
    );
    assert!(
        o.rust_heard.len() > 48_000 * 2,
        "rust heard too little: {}",
        o.rust_heard.len()
    );
    assert!(rust_power > 0.5, "rust did not hear 440 Hz: {rust_power}");
    assert!(
        js_power > 0.5,
        "the browser did not hear 880 Hz: {}",
        o.browser
    );
    assert!(
        o.failures.is_empty(),
        "decryption failures: {:?}",
        o.failures
    );
    // A data message each way, end-to-end encrypted.
    assert_eq!(
        o.data
            .iter()
            .map(|(who, _, text, enc)| (who.as_str(), text.as_str(), *enc))
            .collect::<Vec<_>>(),
        vec![("js-peer", FROM_BROWSER, true)],
        "what we received"
    );
    assert!(o.data_failures.is_empty(), "{:?}", o.data_failures);
    assert!(
        o.browser["data"]
            .as_array()
            .unwrap()
            .iter()
            .any(|d| d["from"] == "rust-peer"
                && d["text"] == FROM_RUST
                && d["topic"] == "oc-test"
                && d["encryption"].as_i64().is_some_and(|e| e != 0)),
        "the browser did not get our encrypted message: {}",
        o.browser["data"]
    );
    assert_eq!(
        o.browser["e2ee_errors"].as_array().map(Vec::len),
        Some(0),
        "{}",
        o.browser
    );
    assert!(
        o.browser["tracks"]
            .as_array()
            .unwrap()
            .iter()
            .any(|t| t["identity"] == "rust-peer" && t["encrypted"] == true),
        "the browser saw no encrypted track from us: {}",
        o.browser
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn browser_two_way_tone_hkdf() {
    two_way(KeyDerivation::Hkdf).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn browser_two_way_tone_pbkdf2() {
    two_way(KeyDerivation::Pbkdf2).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn browser_with_another_key_is_reported_and_not_played() {
    let ours = CallKey::generate(&mut rand::rng());
    let theirs = CallKey::generate(&mut rand::rng());
    let o = exchange(KeyDerivation::Hkdf, &theirs, &ours).await;
    assert!(
        o.rust_heard.is_empty(),
        "audio was produced from frames under another key"
    );
    assert!(
        !o.failures.is_empty() && o.failures.iter().all(|(who, _)| who == "js-peer"),
        "failures name the browser: {:?}",
        o.failures
    );
    let js_power = o.browser["power"].as_f64().unwrap();
    assert!(
        js_power < 0.05,
        "the browser heard our tone without our key: {js_power}"
    );
    assert!(
        !o.browser["e2ee_errors"].as_array().unwrap().is_empty(),
        "the browser reports its failures too: {}",
        o.browser
    );
    assert!(
        o.data.is_empty(),
        "a data message under another key was delivered: {:?}",
        o.data
    );
    assert!(
        o.data_failures.iter().any(|who| who == "js-peer"),
        "the undecryptable data message is reported, naming the browser: {:?}",
        o.data_failures
    );
    assert!(
        o.browser["data"].as_array().unwrap().is_empty(),
        "the browser read our data without our key: {}",
        o.browser["data"]
    );
}

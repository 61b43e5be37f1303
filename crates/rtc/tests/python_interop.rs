//! Interop with the official LiveKit Python SDK (its own libwebrtc) through the stack's real
//! livekit-server: a two-way tone exchange under end-to-end encryption, in both key modes.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]

mod common;

use std::io::Write as _;
use std::process::{Command, Stdio};
use std::time::Duration;

use oracle_calls_crypto::frame::{KeyRing, KeyRingOptions};
use oracle_calls_crypto::{CallKey, KeyDerivation};
use oracle_calls_rtc::{Room, RoomEvent, goertzel_power, sine_tone};

const SECONDS: f64 = 6.0;

struct Outcome {
    rust_heard: Vec<i16>,
    python: serde_json::Value,
    failures: Vec<(String, u64)>,
    unencrypted: Vec<String>,
}

async fn exchange(
    kdf: Option<KeyDerivation>,
    py_key: Option<&CallKey>,
    rust_key: Option<&CallKey>,
) -> Outcome {
    let lk = common::LiveKit::from_stack();
    let room_name = common::unique_room("rtc-py");
    let cfg = serde_json::json!({
        "url": lk.url, "token": lk.token(&room_name, "py-peer"),
        "key_hex": py_key.map(|k| hex::encode(k.dangerous_expose_bytes())),
        "kdf": match kdf { Some(KeyDerivation::Hkdf) => "hkdf", _ => "pbkdf2" },
        "tone_hz": 440.0, "listen_hz": 880.0, "seconds": SECONDS, "publish": true,
    });
    let py = spawn_python("tests/peers/lk_peer.py", &cfg);

    let ring = match (kdf, rust_key) {
        (Some(kdf), Some(k)) => {
            Some(KeyRing::with_call_key(k, kdf, KeyRingOptions::default()).unwrap())
        }
        _ => None,
    };
    let (room, mut events) = common::join(&lk, &room_name, "rust-peer", ring).await;
    let mic = room.publish_audio("tone").await.unwrap();
    let mut heard = Vec::new();
    let mut failures = Vec::new();
    let mut unencrypted = Vec::new();
    let frames = (SECONDS * 50.0) as u64 + 50;
    common::tone_while(&mic, &mut events, frames, |ev| match ev {
        RoomEvent::AudioFrame { identity, pcm, .. } if identity == "py-peer" => heard.extend(pcm),
        RoomEvent::DecryptionFailed {
            identity, stats, ..
        } => failures.push((identity, stats.failed)),
        RoomEvent::UnencryptedTrack { identity, .. } => unencrypted.push(identity),
        _ => {}
    })
    .await;
    room.leave().await;
    let python = finish_python(py).await;
    Outcome {
        rust_heard: heard,
        python,
        failures,
        unencrypted,
    }
}

fn tail(pcm: &[i16]) -> &[i16] {
    pcm.get(48_000..).unwrap_or_default()
}

async fn two_way(kdf: KeyDerivation) {
    let key = CallKey::generate(&mut rand::rng());
    let o = exchange(Some(kdf), Some(&key), Some(&key)).await;
    let rust_power = goertzel_power(tail(&o.rust_heard), 440.0);
    let py_power = o.python["power"].as_f64().unwrap();
    eprintln!(
        "{kdf:?}: rust heard {} samples, 440 Hz power {rust_power:.3}; python {}",
        o.rust_heard.len(),
        o.python
    );
    assert!(
        o.rust_heard.len() > 48_000 * 2,
        "rust heard too little: {}",
        o.rust_heard.len()
    );
    assert!(rust_power > 0.5, "rust did not hear 440 Hz: {rust_power}");
    assert!(py_power > 0.5, "python did not hear 880 Hz: {}", o.python);
    assert!(
        o.failures.is_empty(),
        "decryption failures: {:?}",
        o.failures
    );
    assert!(
        o.python["tracks"]
            .as_array()
            .unwrap()
            .iter()
            .any(|t| t["encryption"] == 1),
        "python saw no encrypted track: {}",
        o.python
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn python_sdk_two_way_tone_hkdf() {
    two_way(KeyDerivation::Hkdf).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn python_sdk_two_way_tone_pbkdf2() {
    two_way(KeyDerivation::Pbkdf2).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wrong_key_is_reported_and_nothing_is_played() {
    let ours = CallKey::generate(&mut rand::rng());
    let theirs = CallKey::generate(&mut rand::rng());
    let o = exchange(Some(KeyDerivation::Hkdf), Some(&theirs), Some(&ours)).await;
    assert!(
        o.rust_heard.is_empty(),
        "audio was produced from frames under another key"
    );
    assert!(!o.failures.is_empty(), "no decryption failure was reported");
    assert!(
        o.failures.iter().all(|(who, _)| who == "py-peer"),
        "{:?}",
        o.failures
    );
    assert!(o.failures.last().unwrap().1 > 50, "{:?}", o.failures.last());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_keyless_participant_recovers_nothing_and_its_plain_track_is_not_played() {
    let ours = CallKey::generate(&mut rand::rng());
    // Python joins without E2EE: it receives exactly what the SFU forwards.
    let o = exchange(Some(KeyDerivation::Hkdf), None, Some(&ours)).await;
    let py_power = o.python["power"].as_f64().unwrap();
    let frames = o.python["frames"].as_u64().unwrap();
    eprintln!(
        "keyless python: {frames} frames, 880 Hz power {py_power:.4}; rust heard {}",
        o.rust_heard.len()
    );
    assert!(
        py_power < 0.05,
        "the tone was recoverable without the key: {py_power}"
    );
    assert!(
        o.python["tracks"]
            .as_array()
            .unwrap()
            .iter()
            .any(|t| t["identity"] == "rust-peer"),
        "python never subscribed to our track: {}",
        o.python
    );
    // Our side: the plain track is reported and never decoded.
    assert!(
        o.rust_heard.is_empty(),
        "an unencrypted track was played in an E2EE room"
    );
    assert!(
        o.unencrypted.iter().any(|who| who == "py-peer"),
        "unencrypted track not reported"
    );
}

/// Reliable data messages each way with the Python SDK, end-to-end encrypted (the Python
/// SDK's `RoomOptions.encryption` seals data packets too), in both key modes.
async fn data_both_ways(kdf: KeyDerivation) {
    let key = CallKey::generate(&mut rand::rng());
    let lk = common::LiveKit::from_stack();
    let room_name = common::unique_room("rtc-pydata");
    let from_py = "from the python sdk ✓";
    let from_rust = "from oracle-calls-rtc ✓";
    let cfg = serde_json::json!({
        "url": lk.url, "token": lk.token(&room_name, "py-data"),
        "key_hex": hex::encode(key.dangerous_expose_bytes()),
        "kdf": match kdf { KeyDerivation::Hkdf => "hkdf", _ => "pbkdf2" },
        "seconds": 3, "send_data": [from_py], "expect_data": 1,
        "wait_for_identities": ["rust-peer"],
    });
    let py = spawn_python("../../tests/browser/py_data_peer.py", &cfg);
    let (room, mut events) = join_with_key(&lk, &room_name, &key, kdf).await;
    // Wait for the Python peer, then send.
    let mut got = Vec::new();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    let mut sent = false;
    while got.is_empty() || !sent {
        let ev = tokio::time::timeout_at(deadline, events.recv())
            .await
            .expect("no data from the Python SDK within 20 s")
            .unwrap();
        match ev {
            RoomEvent::ParticipantJoined { identity, .. } if identity == "py-data" && !sent => {
                room.send_data(from_rust.as_bytes(), Some("oc-test"))
                    .await
                    .unwrap();
                sent = true;
            }
            RoomEvent::DataReceived {
                identity,
                payload,
                encrypted,
                ..
            } => got.push((identity, String::from_utf8(payload).unwrap(), encrypted)),
            RoomEvent::DataDecryptionFailed { identity, error } => {
                panic!("data from {identity} failed to decrypt: {error}")
            }
            _ => {}
        }
    }
    let py = finish_python(py).await;
    room.leave().await;
    assert_eq!(got, vec![("py-data".to_owned(), from_py.to_owned(), true)]);
    assert!(
        py["data"]
            .as_array()
            .unwrap()
            .iter()
            .any(|d| d["from"] == "rust-peer" && d["text"] == from_rust && d["topic"] == "oc-test"),
        "python did not get our message: {py}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn python_sdk_data_both_ways_hkdf() {
    data_both_ways(KeyDerivation::Hkdf).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn python_sdk_data_both_ways_pbkdf2() {
    data_both_ways(KeyDerivation::Pbkdf2).await;
}

/// Width and height from a VP8 key frame's header (RFC 6386 §9.1), if it is one.
fn vp8_keyframe_size(f: &[u8]) -> Option<(u16, u16)> {
    let b = f.get(..10)?;
    if b[0] & 1 != 0 || b[3..6] != [0x9d, 0x01, 0x2a] {
        return None;
    }
    let w = u16::from_le_bytes([b[6], b[7]]) & 0x3fff;
    let h = u16::from_le_bytes([b[8], b[9]]) & 0x3fff;
    Some((w, h))
}

/// Video both ways with the Python SDK (its own libwebrtc VP8 encoder and decoder) under
/// E2EE: we decrypt its VP8 frames (valid key frames of the size it sends) and send them back
/// encrypted with our key; it decodes them.
async fn video_echo(kdf: KeyDerivation) {
    let key = CallKey::generate(&mut rand::rng());
    let lk = common::LiveKit::from_stack();
    let room_name = common::unique_room("rtc-pyvideo");
    let cfg = serde_json::json!({
        "url": lk.url, "token": lk.token(&room_name, "py-video"),
        "key_hex": hex::encode(key.dangerous_expose_bytes()),
        "kdf": match kdf { KeyDerivation::Hkdf => "hkdf", _ => "pbkdf2" },
        "seconds": 8, "width": 320, "height": 240,
    });
    let py = spawn_python("tests/peers/lk_video_peer.py", &cfg);
    let (room, mut events) = join_with_key(&lk, &room_name, &key, kdf).await;
    let camera = room.publish_video("camera", 320, 240).await.unwrap();
    let start = tokio::time::Instant::now();
    let (mut frames, mut keyframes, mut echoing) = (0usize, Vec::new(), false);
    let mut failures = 0u64;
    let mut py_track: Option<String> = None;
    while start.elapsed() < Duration::from_secs(10) {
        let Ok(Some(ev)) = tokio::time::timeout(Duration::from_millis(500), events.recv()).await
        else {
            continue;
        };
        match ev {
            RoomEvent::VideoFrame {
                identity,
                track_sid,
                vp8,
                keyframe,
            } if identity == "py-video" => {
                frames += 1;
                py_track = Some(track_sid);
                if keyframe {
                    keyframes.push(vp8_keyframe_size(&vp8));
                    echoing = true;
                }
                if echoing {
                    let ms = start.elapsed().as_millis() as u64;
                    camera.push_vp8(&vp8, ms).await.unwrap();
                }
            }
            RoomEvent::DecryptionFailed { stats, .. } => failures = stats.failed,
            // Python wants a key frame of our track: we are an echo, so ask Python for one.
            RoomEvent::KeyframeRequested => {
                if let Some(t) = &py_track {
                    room.request_keyframe(t).await.unwrap();
                }
            }
            RoomEvent::ParticipantLeft { identity } if identity == "py-video" => break,
            _ => {}
        }
    }
    let py = finish_python(py).await;
    room.leave().await;
    eprintln!(
        "{kdf:?}: rust got {frames} VP8 frames, key frames {keyframes:?}, {failures} failures; python {py}"
    );
    assert_eq!(failures, 0);
    assert!(frames >= 30, "too few frames: {frames}");
    assert!(
        !keyframes.is_empty() && keyframes.iter().all(|k| *k == Some((320, 240))),
        "decrypted key frames are valid VP8 of the sent size: {keyframes:?}"
    );
    assert!(
        py["heard"].as_u64().unwrap() >= 10,
        "python decoded too few of our frames: {py}"
    );
    assert_eq!(py["sizes"], serde_json::json!([[320, 240]]), "{py}");
    assert!(
        py["tracks"]
            .as_array()
            .unwrap()
            .iter()
            .any(|t| t["identity"] == "rust-peer" && t["encryption"] == 1),
        "python saw our video as encrypted: {py}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn python_sdk_video_echo_hkdf() {
    video_echo(KeyDerivation::Hkdf).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn python_sdk_video_echo_pbkdf2() {
    video_echo(KeyDerivation::Pbkdf2).await;
}

/// Starts a Python peer (`path` relative to this crate) with `cfg` on its stdin.
fn spawn_python(path: &str, cfg: &serde_json::Value) -> std::process::Child {
    let mut py = Command::new("python3")
        .arg(format!("{}/{path}", env!("CARGO_MANIFEST_DIR")))
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("python3 with the `livekit` package (scripts/test installs it)");
    py.stdin
        .take()
        .unwrap()
        .write_all(cfg.to_string().as_bytes())
        .unwrap();
    py
}

/// Waits for a Python peer, asserts it succeeded, and parses the JSON it printed.
async fn finish_python(py: std::process::Child) -> serde_json::Value {
    let out = tokio::task::spawn_blocking(move || py.wait_with_output())
        .await
        .unwrap()
        .unwrap();
    assert!(
        out.status.success(),
        "python peer failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
        panic!(
            "python output {e}: {}",
            String::from_utf8_lossy(&out.stdout)
        )
    })
}

/// Joins `room` as `rust-peer` with E2EE under `key`.
async fn join_with_key(
    lk: &common::LiveKit,
    room: &str,
    key: &CallKey,
    kdf: KeyDerivation,
) -> (Room, tokio::sync::mpsc::Receiver<RoomEvent>) {
    let ring = KeyRing::with_call_key(key, kdf, KeyRingOptions::default()).unwrap();
    common::join(lk, room, "rust-peer", Some(ring)).await
}

/// Key ratchets mid-call with the Python SDK: we ratchet our sending key (`Room::ratchet_key`)
/// 3 s into an 8 s tone exchange and the Python SDK follows with its auto-ratchet; when
/// `python_ratchets`, it also ratchets its shared key at the same moment
/// (`ratchet_shared_key`) and we follow with ours. Both keep hearing each other.
///
/// Not asserted: both ratcheting in PBKDF2 mode. There we follow the Python SDK's ratchet
/// (0 failures) but the Python SDK stops decrypting our frames after its own
/// `ratchet_shared_key`, although its auto-ratchet accepts the same ratcheted key when only we
/// ratchet (`python_sdk_follows_our_ratchet_pbkdf2`); see docs/PROTOCOL.md §5.
async fn ratchet_mid_call(kdf: KeyDerivation, python_ratchets: bool) {
    const CALL_S: f64 = 8.0;
    const RATCHET_S: f64 = 3.0;
    let key = CallKey::generate(&mut rand::rng());
    let lk = common::LiveKit::from_stack();
    let room_name = common::unique_room("rtc-ratchet");
    let cfg = serde_json::json!({
        "url": lk.url, "token": lk.token(&room_name, "py-peer"),
        "key_hex": hex::encode(key.dangerous_expose_bytes()),
        "kdf": match kdf { KeyDerivation::Hkdf => "hkdf", _ => "pbkdf2" },
        "tone_hz": 440.0, "listen_hz": 880.0, "seconds": CALL_S, "publish": true,
        "ratchet_at": if python_ratchets { Some(RATCHET_S) } else { None },
    });
    let py = spawn_python("tests/peers/lk_peer.py", &cfg);
    // A bounded auto-ratchet, as the native SDKs have by default (16).
    let opts = KeyRingOptions {
        ratchet_window: 16,
        ..KeyRingOptions::default()
    };
    let ring = KeyRing::with_call_key(&key, kdf, opts).unwrap();
    let (room, mut events) = common::join(&lk, &room_name, "rust-peer", Some(ring)).await;
    let mic = room.publish_audio("tone").await.unwrap();
    // Start once Python's tone arrives, so both ratchet at about the same moment.
    let mut heard: Vec<i16> = Vec::new();
    let mut failures = 0u64;
    let mut ratchet_mark = None;
    let mut tick = tokio::time::interval(Duration::from_millis(20));
    let mut i = 0u64;
    let mut started: Option<u64> = None;
    let end = tokio::time::Instant::now() + Duration::from_secs(30);
    loop {
        tokio::select! {
            _ = tick.tick() => {
                mic.push_pcm(&sine_tone(880.0, 8000.0, i * 960, 960)).await.unwrap();
                i += 1;
                if let Some(s) = started {
                    if ratchet_mark.is_none() && i - s >= (RATCHET_S * 50.0) as u64 {
                        room.ratchet_key().await.unwrap();
                        ratchet_mark = Some(heard.len());
                    }
                    if i - s >= (CALL_S * 50.0) as u64 {
                        break;
                    }
                }
                assert!(tokio::time::Instant::now() < end, "the exchange did not finish");
            }
            ev = events.recv() => match ev.unwrap() {
                RoomEvent::AudioFrame { pcm, .. } => {
                    started.get_or_insert(i);
                    heard.extend(pcm);
                }
                RoomEvent::DecryptionFailed { stats, .. } => failures = stats.failed,
                _ => {}
            }
        }
    }
    let py = finish_python(py).await;
    room.leave().await;
    let mark = ratchet_mark.unwrap() + 48_000 / 2;
    let ours_after = goertzel_power(heard.get(mark..).unwrap_or_default(), 440.0);
    eprintln!(
        "{kdf:?}, python ratchets too: {python_ratchets}; we heard {:.1} s, 440 Hz after the ratchet {ours_after:.3}, {failures} failed; python {py}",
        heard.len() as f64 / 48_000.0
    );
    assert!(
        heard.len() - mark >= 48_000 * 3,
        "too little audio after the ratchet: {} samples",
        heard.len() - mark
    );
    assert!(
        ours_after > 0.5,
        "we stopped hearing Python after the ratchet: {ours_after}"
    );
    let py_last = py["power_last2"].as_f64().unwrap();
    assert!(
        py_last > 0.5,
        "Python stopped hearing us after our ratchet: {py}"
    );
    if python_ratchets {
        let py_after = py["power_after_ratchet"].as_f64().unwrap();
        assert!(py_after > 0.5, "Python after its ratchet: {py}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn python_sdk_follows_our_ratchet_hkdf() {
    ratchet_mid_call(KeyDerivation::Hkdf, false).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn both_ratchet_mid_call_with_python_sdk_hkdf() {
    ratchet_mid_call(KeyDerivation::Hkdf, true).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn python_sdk_follows_our_ratchet_pbkdf2() {
    ratchet_mid_call(KeyDerivation::Pbkdf2, false).await;
}

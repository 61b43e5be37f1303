//! Load generator for `scripts/bench-rtc`: joins N rooms as one participant each (E2EE on),
//! publishes a 400 Hz tone and subscribes to the other participant, for S seconds.
//!
//! stdin (JSON): {"url", "tokens": [..one per room..], "key_hex", "kdf": "hkdf"|"pbkdf2", "seconds"}
//! stdout (JSON): {"rooms", "frames_heard", "decrypt_failures"}
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]

use std::io::Read as _;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use oracle_calls_crypto::frame::{KeyRing, KeyRingOptions};
use oracle_calls_crypto::{CallKey, KeyDerivation};
use oracle_calls_rtc::{AUDIO_FRAME_SAMPLES, E2eeOptions, Room, RoomEvent, RoomOptions, sine_tone};

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    let mut input = String::new();
    std::io::stdin().read_to_string(&mut input).unwrap();
    let cfg: serde_json::Value = serde_json::from_str(&input).unwrap();
    let key: [u8; 32] = hex::decode(cfg["key_hex"].as_str().unwrap())
        .unwrap()
        .try_into()
        .unwrap();
    let key = CallKey::from_bytes(key);
    let kdf = if cfg["kdf"] == "hkdf" {
        KeyDerivation::Hkdf
    } else {
        KeyDerivation::Pbkdf2
    };
    let ring = KeyRing::with_call_key(&key, kdf, KeyRingOptions::default()).unwrap();
    let seconds = cfg["seconds"].as_f64().unwrap();
    let url = cfg["url"].as_str().unwrap().to_owned();
    // 400 Hz is 8 whole cycles per 20 ms frame: one precomputed frame repeats seamlessly.
    let tone = Arc::new(sine_tone(400.0, 8000.0, 0, AUDIO_FRAME_SAMPLES));
    let heard = Arc::new(AtomicU64::new(0));
    let failures = Arc::new(AtomicU64::new(0));
    let mut tasks = Vec::new();
    for token in cfg["tokens"].as_array().unwrap() {
        let (url, token, ring, tone, heard, failures) = (
            url.clone(),
            token.as_str().unwrap().to_owned(),
            ring.clone(),
            tone.clone(),
            heard.clone(),
            failures.clone(),
        );
        tasks.push(tokio::spawn(async move {
            let opts = RoomOptions {
                e2ee: Some(E2eeOptions { key_ring: ring }),
                ..Default::default()
            };
            let (room, mut events) = Room::connect(&url, &token, opts).await.unwrap();
            let mic = room.publish_audio("tone").await.unwrap();
            let mut tick = tokio::time::interval(Duration::from_millis(20));
            for _ in 0..(seconds * 50.0) as u64 {
                tick.tick().await;
                mic.push_pcm(&tone).await.unwrap();
                while let Ok(ev) = events.try_recv() {
                    match ev {
                        RoomEvent::AudioFrame { .. } => {
                            heard.fetch_add(1, Ordering::Relaxed);
                        }
                        RoomEvent::DecryptionFailed { .. } => {
                            failures.fetch_add(1, Ordering::Relaxed);
                        }
                        _ => {}
                    }
                }
            }
            room.leave().await;
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    println!(
        "{}",
        serde_json::json!({"rooms": cfg["tokens"].as_array().unwrap().len(),
            "frames_heard": heard.load(Ordering::Relaxed), "decrypt_failures": failures.load(Ordering::Relaxed)})
    );
}

//! What the person-to-person call tests share: fresh Synapse users with their own matrix-sdk
//! stores, a `DirectCalls` service per person, and one side of a call that sends a tone and
//! collects what it hears. Included with `#[path]` by each test file that needs it.
#![allow(dead_code)]

use std::path::PathBuf;
use std::process::Command;
use std::time::{Duration, Instant};

use matrix_sdk::Client;
use matrix_sdk::config::SyncSettings;
use matrix_sdk::ruma::OwnedUserId;
use oracle_calls_client::{
    DirectCall, DirectCallEvent, DirectCalls, DirectConfig, EndReason, IcePolicy, IncomingCall,
    PeopleTrust, SecurityNotice,
};
use oracle_calls_media::{AUDIO_FRAME_SAMPLES, goertzel_power, sine_tone};
use oracle_calls_test_support::{parse_env, stack_script, stack_var, unique};
use serde_json::Value;

pub struct Person {
    pub user: OwnedUserId,
    pub client: Client,
    pub token: String,
    pub dir: PathBuf,
}

pub fn new_user(prefix: &str) -> (String, String) {
    let name = unique(prefix);
    let out = Command::new(stack_script())
        .args(["user", &name])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let kv = parse_env(&String::from_utf8_lossy(&out.stdout));
    let password = std::fs::read_to_string(&kv["MATRIX_USER_PASSWORD_FILE"])
        .unwrap()
        .trim()
        .to_owned();
    (name, password)
}

/// A fresh login (a new device) of `name`, with its own store.
pub async fn login(name: &str, password: &str) -> Person {
    let dir = std::env::temp_dir().join(unique("oc-direct-"));
    std::fs::create_dir_all(&dir).unwrap();
    let client = Client::builder()
        .homeserver_url(stack_var("MATRIX_URL"))
        .sqlite_store(dir.join("matrix"), None)
        .build()
        .await
        .unwrap();
    client
        .matrix_auth()
        .login_username(name, password)
        .send()
        .await
        .unwrap();
    client
        .sync_once(SyncSettings::default().timeout(Duration::ZERO))
        .await
        .unwrap();
    let token = client.access_token().unwrap();
    Person {
        user: client.user_id().unwrap().to_owned(),
        client,
        token,
        dir,
    }
}

pub async fn person(prefix: &str) -> Person {
    let (name, password) = new_user(prefix);
    login(&name, &password).await
}

pub async fn start(p: &Person, policy: IcePolicy) -> DirectCalls {
    let config = DirectConfig {
        ice_policy: policy,
        auto_join_direct_invites: true,
        ..DirectConfig::default()
    };
    DirectCalls::start(
        &p.client,
        PeopleTrust::open(p.dir.join("pins.json")),
        config,
    )
    .await
    .unwrap()
}

pub async fn incoming(calls: &DirectCalls, limit: Duration) -> Option<IncomingCall> {
    tokio::time::timeout(limit, calls.next_incoming())
        .await
        .ok()
        .flatten()
}

pub async fn notice(calls: &DirectCalls, limit: Duration) -> Option<SecurityNotice> {
    tokio::time::timeout(limit, calls.next_security_notice())
        .await
        .ok()
        .flatten()
}

/// What one side of a call saw.
#[derive(Debug, Default)]
pub struct Side {
    pub heard: Vec<i16>,
    pub first_audio: Option<Instant>,
    pub connected: bool,
    pub key_confirmation_expected: bool,
    pub key_confirmed: bool,
    pub ended: Option<EndReason>,
}

/// Sends `tone_hz` every 20 ms and collects events until `until` or the end of the call.
pub async fn run_side(call: &mut DirectCall, tone_hz: f64, until: Instant, side: &mut Side) {
    let mut tick = tokio::time::interval(Duration::from_millis(20));
    let mut sent = 0u64;
    while Instant::now() < until && side.ended.is_none() {
        tokio::select! {
            _ = tick.tick() => {
                let pcm = sine_tone(tone_hz, 8000.0, sent, AUDIO_FRAME_SAMPLES);
                sent += AUDIO_FRAME_SAMPLES as u64;
                let _ = call.send_audio(pcm);
            }
            ev = call.next_event() => match ev {
                Some(DirectCallEvent::Audio(pcm)) => {
                    side.first_audio.get_or_insert_with(Instant::now);
                    side.heard.extend(pcm);
                }
                Some(DirectCallEvent::Connected { key_confirmation_expected, .. }) => {
                    side.connected = true;
                    side.key_confirmation_expected = key_confirmation_expected;
                }
                Some(DirectCallEvent::KeyConfirmed) => side.key_confirmed = true,
                Some(DirectCallEvent::Ended(r)) => side.ended = Some(r),
                Some(_) => {}
                None => break,
            },
        }
    }
}

/// The power of `hz` against `other` in the last second heard (both must be clear).
pub fn assert_tone(side: &Side, who: &str, hz: f64, other: f64) {
    assert!(
        side.heard.len() >= 48_000,
        "{who} heard only {} samples",
        side.heard.len()
    );
    let last = &side.heard[side.heard.len() - 48_000..];
    let (p, q) = (goertzel_power(last, hz), goertzel_power(last, other));
    assert!(
        p > 20.0 * q && p > 0.0,
        "{who}: {hz} Hz power {p}, {other} Hz power {q}"
    );
}

pub async fn raw_messages(p: &Person, room: &str) -> Vec<Value> {
    let url = format!(
        "{}/_matrix/client/v3/rooms/{}/messages?dir=b&limit=200",
        stack_var("MATRIX_URL"),
        room
    );
    let body: Value = reqwest::Client::new()
        .get(url)
        .bearer_auth(&p.token)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    body["chunk"].as_array().cloned().unwrap_or_default()
}

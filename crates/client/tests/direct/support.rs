//! Helpers shared by the direct-call integration tests (`tests/direct*.rs`): people on the
//! stack's Synapse, their `DirectCalls`, and one side of a call that sends a tone and
//! collects what it hears.
#![allow(dead_code)]

use std::path::PathBuf;
use std::time::{Duration, Instant};

use matrix_sdk::Client;
use matrix_sdk::config::SyncSettings;
use matrix_sdk::ruma::{OwnedUserId, UserId};
use oracle_calls_client::{
    DirectCall, DirectCallEvent, DirectCalls, DirectConfig, EndReason, IcePolicy, IncomingCall,
    PeopleTrust, SecurityNotice,
};
use oracle_calls_direct::CallId;
use oracle_calls_media::{AUDIO_FRAME_SAMPLES, goertzel_power, sine_tone};
use oracle_calls_test_support::{stack_var, unique};
use serde_json::{Value, json};

pub struct Person {
    pub user: OwnedUserId,
    pub client: Client,
    pub token: String,
    pub dir: PathBuf,
}

/// A new user on the stack's Synapse: its name and password.
pub use oracle_calls_test_support::stack_user as new_user;

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
    start_with(
        p,
        DirectConfig {
            ice_policy: policy,
            ..DirectConfig::default()
        },
    )
    .await
}

/// `DirectCalls` of `p` with `config` (joining DM invitations at once).
pub async fn start_with(p: &Person, config: DirectConfig) -> DirectCalls {
    let config = DirectConfig {
        auto_join_direct_invites: true,
        ..config
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
    /// When each 20 ms of the other side's audio arrived.
    pub audio_at: Vec<Instant>,
    /// [`DirectCallEvent::Reconnecting`] and [`DirectCallEvent::Reconnected`] seen.
    pub reconnecting: usize,
    pub reconnected: usize,
    pub connected: bool,
    pub key_confirmation_expected: bool,
    pub key_confirmed: bool,
    pub ended: Option<EndReason>,
    /// Glare: (our call, the call that replaced it).
    pub replaced: Option<(CallId, CallId)>,
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
                    let now = Instant::now();
                    side.first_audio.get_or_insert(now);
                    side.audio_at.push(now);
                    side.heard.extend(pcm);
                }
                Some(DirectCallEvent::Reconnecting) => side.reconnecting += 1,
                Some(DirectCallEvent::Reconnected) => side.reconnected += 1,
                Some(DirectCallEvent::Connected { key_confirmation_expected, .. }) => {
                    side.connected = true;
                    side.key_confirmation_expected = key_confirmation_expected;
                }
                Some(DirectCallEvent::KeyConfirmed) => side.key_confirmed = true,
                Some(DirectCallEvent::Replaced { replaced, by }) => {
                    side.replaced = Some((replaced, by));
                }
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

/// alice calls bob, bob answers, both send their tone for ~3 s once connected.
pub async fn call_and_talk(
    alice: &Person,
    bob: &Person,
    policy: IcePolicy,
) -> (Side, Side, DirectCall, DirectCall, [DirectCalls; 2]) {
    let a_calls = start(alice, policy).await;
    let b_calls = start(bob, policy).await;
    let placed_at = Instant::now();
    let mut a_call = a_calls.place_call(&bob.user).await.unwrap();
    let ring = incoming(&b_calls, Duration::from_secs(20))
        .await
        .expect("bob's device rings");
    assert_eq!(ring.caller(), alice.user.as_ref() as &UserId);
    let mut b_call = ring.answer().await.unwrap();
    let (mut a, mut b) = (Side::default(), Side::default());
    let until = Instant::now() + Duration::from_secs(6);
    tokio::join!(
        run_side(&mut a_call, 440.0, until, &mut a),
        run_side(&mut b_call, 880.0, until, &mut b)
    );
    let first = a.first_audio.expect("alice heard bob") - placed_at;
    eprintln!(
        "place → first far-end audio at the caller: {} ms ({policy:?})",
        first.as_millis()
    );
    (a, b, a_call, b_call, [a_calls, b_calls])
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

/// A raw PUT of `content` as `event_type` into `room` with `p`'s token (no encryption).
pub async fn put_plaintext(p: &Person, room: &str, event_type: &str, content: &Value) {
    let url = format!(
        "{}/_matrix/client/v3/rooms/{}/send/{}/{}",
        stack_var("MATRIX_URL"),
        room,
        event_type,
        unique("txn")
    );
    let r = reqwest::Client::new()
        .put(url)
        .bearer_auth(&p.token)
        .json(content)
        .send()
        .await
        .unwrap();
    assert!(r.status().is_success(), "{}", r.status());
}

pub fn invite(call_id: &str, party: &str, invitee: &UserId) -> Value {
    let now = Instant::now();
    let (_peer, sdp) =
        oracle_calls_direct::peer::Peer::offer(now, &["127.0.0.1:40000".parse().unwrap()]).unwrap();
    json!({"call_id": call_id, "party_id": party, "version": "1", "lifetime": 60000,
           "invitee": invitee.as_str(), "offer": {"type": "offer", "sdp": sdp}})
}

pub async fn send_encrypted(p: &Person, room: &str, event_type: &str, content: &Value) {
    let room = p
        .client
        .get_room(&matrix_sdk::ruma::RoomId::parse(room).unwrap())
        .expect("joined");
    room.send_raw(event_type, content.clone()).await.unwrap();
}

/// coturn's log (the stack's `TURN_LOG`) from byte `from` on.
pub fn turn_log_since(from: usize) -> String {
    let log = std::fs::read_to_string(stack_var("TURN_LOG")).unwrap_or_default();
    log.get(from..).unwrap_or("").to_owned()
}

/// Waits until coturn's log (from byte `log_before`) shows `user`'s allocation deleted, and
/// asserts it was our Refresh with lifetime 0 that deleted it, not expiry; fails at
/// `deadline`.
pub async fn assert_allocation_released(user: &UserId, log_before: usize, deadline: Instant) {
    let needle = format!("{user}>");
    loop {
        let fresh = turn_log_since(log_before);
        let ours = |what: &str| {
            fresh
                .lines()
                .any(|l| l.contains(what) && l.contains(&needle))
        };
        if ours("delete: realm=") {
            assert!(
                ours("lifetime=0"),
                "{user}'s allocation was deleted without our Refresh:\n{fresh}"
            );
            return;
        }
        assert!(
            Instant::now() < deadline,
            "no deletion of {user}'s allocation in coturn's log:\n{fresh}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Waits for the end of `call` (discarding its other events).
pub async fn wait_end(call: &mut DirectCall, limit: Duration) -> Option<EndReason> {
    tokio::time::timeout(limit, async {
        loop {
            match call.next_event().await {
                Some(DirectCallEvent::Ended(r)) => return Some(r),
                Some(_) => {}
                None => return None,
            }
        }
    })
    .await
    .ok()
    .flatten()
}

/// Waits until a ringing call stops ringing.
pub async fn wait_ring_end(ring: &mut IncomingCall, limit: Duration) -> Option<EndReason> {
    tokio::time::timeout(limit, async {
        loop {
            match ring.next_event().await {
                Some(DirectCallEvent::Ended(r)) => return Some(r),
                Some(_) => {}
                None => return None,
            }
        }
    })
    .await
    .ok()
    .flatten()
}

/// Waits until `observer`'s client knows `user`'s device `device`.
pub async fn wait_for_device(
    observer: &Person,
    user: &UserId,
    device: &matrix_sdk::ruma::DeviceId,
) {
    let t0 = Instant::now();
    while observer
        .client
        .encryption()
        .get_device(user, device)
        .await
        .unwrap()
        .is_none()
    {
        assert!(
            t0.elapsed() < Duration::from_secs(15),
            "{} never saw {user}'s device {device}",
            observer.user
        );
        let _ = observer
            .client
            .encryption()
            .request_user_identity(user)
            .await;
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

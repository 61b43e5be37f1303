//! Resuming a lost signaling connection against the stack's real livekit-server: the
//! participant's signaling goes through a TCP relay the test breaks (cut, refused, silent),
//! while its media keeps its direct UDP path to the server.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]

mod common;

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use oracle_calls_crypto::frame::{KeyRing, KeyRingOptions};
use oracle_calls_crypto::{CallKey, KeyDerivation};
use oracle_calls_rtc::{
    E2eeOptions, FreshToken, ReconnectPolicy, Room, RoomEvent, RoomOptions, TokenSource,
    goertzel_power, sine_tone,
};
use zeroize::Zeroizing;

/// What one participant saw.
#[derive(Default)]
struct Log {
    /// Every event but media, with when it came.
    events: Vec<(Instant, RoomEvent)>,
    /// Decoded audio by sender, with when each frame came.
    audio: HashMap<String, Vec<(Instant, Vec<i16>)>>,
    /// Video frames by sender.
    video: HashMap<String, usize>,
    decrypt_failures: usize,
}

impl Log {
    /// How much `hz` dominates what `from` sent after `since` (1.0 = a pure tone).
    fn tone(&self, from: &str, hz: f64, since: Instant) -> f64 {
        let pcm: Vec<i16> = self
            .audio
            .get(from)
            .into_iter()
            .flatten()
            .filter(|(t, _)| *t >= since)
            .flat_map(|(_, p)| p.iter().copied())
            .collect();
        if pcm.len() < 48_000 / 2 {
            return 0.0;
        }
        goertzel_power(&pcm[pcm.len() - 48_000 / 2..], hz)
    }

    /// Seconds of audio from `from` that arrived in `[from_t, to_t)`.
    fn seconds_heard(&self, from: &str, from_t: Instant, to_t: Instant) -> f64 {
        let samples: usize = self
            .audio
            .get(from)
            .into_iter()
            .flatten()
            .filter(|(t, _)| *t >= from_t && *t < to_t)
            .map(|(_, p)| p.len())
            .sum();
        samples as f64 / 48_000.0
    }

    fn first(&self, pred: impl Fn(&RoomEvent) -> bool) -> Option<Instant> {
        self.events.iter().find(|(_, e)| pred(e)).map(|(t, _)| *t)
    }
}

struct Peer {
    room: Room,
    log: Arc<Mutex<Log>>,
}

impl Peer {
    /// Joins with E2EE under `key` and publishes a `hz` tone in real time.
    async fn join(url: &str, token: &str, key: &CallKey, hz: f64, policy: ReconnectPolicy) -> Peer {
        Self::join_with(url, token, key, hz, policy, None).await
    }

    /// [`Peer::join`] with a token source for full reconnects.
    async fn join_with(
        url: &str,
        token: &str,
        key: &CallKey,
        hz: f64,
        policy: ReconnectPolicy,
        token_source: Option<TokenSource>,
    ) -> Peer {
        let opts = RoomOptions {
            token_source,
            e2ee: Some(E2eeOptions {
                key_ring: KeyRing::with_call_key(
                    key,
                    KeyDerivation::Hkdf,
                    KeyRingOptions::default(),
                )
                .unwrap(),
            }),
            reconnect: policy,
            ..Default::default()
        };
        let (room, mut events) = Room::connect(url, token, opts).await.unwrap();
        let mic = room.publish_audio("tone").await.unwrap();
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(Duration::from_millis(20));
            for i in 0u64.. {
                tick.tick().await;
                if mic
                    .push_pcm(&sine_tone(hz, 8000.0, i * 960, 960))
                    .await
                    .is_err()
                {
                    return;
                }
            }
        });
        let log = Arc::new(Mutex::new(Log::default()));
        let l = log.clone();
        tokio::spawn(async move {
            while let Some(ev) = events.recv().await {
                let now = Instant::now();
                let mut log = l.lock().unwrap();
                match ev {
                    RoomEvent::AudioFrame { identity, pcm, .. } => {
                        log.audio.entry(identity).or_default().push((now, pcm))
                    }
                    RoomEvent::VideoFrame { identity, .. } => {
                        *log.video.entry(identity).or_default() += 1
                    }
                    RoomEvent::DecryptionFailed { .. } => log.decrypt_failures += 1,
                    other => log.events.push((now, other)),
                }
            }
        });
        Peer { room, log }
    }

    fn log(&self) -> std::sync::MutexGuard<'_, Log> {
        self.log.lock().unwrap()
    }

    /// Waits up to `limit` for `cond` on the log; panics with `what` otherwise.
    async fn wait_for(&self, limit: Duration, what: &str, cond: impl Fn(&Log) -> bool) {
        let until = Instant::now() + limit;
        while Instant::now() < until {
            if cond(&self.log()) {
                return;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        let events: Vec<String> = self
            .log()
            .events
            .iter()
            .map(|(_, e)| format!("{e:?}"))
            .collect();
        panic!("{what}: not within {limit:?}; events: {events:#?}");
    }
}

fn is_reconnecting(e: &RoomEvent) -> bool {
    matches!(e, RoomEvent::Reconnecting { .. })
}

fn is_reconnected(e: &RoomEvent) -> bool {
    matches!(e, RoomEvent::Reconnected)
}

/// The frames of the committed VP8 test clip (IVF: 32-byte header, 12-byte frame headers).
fn vp8_frames() -> Vec<Vec<u8>> {
    let ivf = std::fs::read(format!(
        "{}/crates/cli/tests/fixtures/testsrc-320x240.ivf",
        common::repo_root()
    ))
    .unwrap();
    let mut frames = Vec::new();
    let mut at = 32;
    while at + 12 <= ivf.len() {
        let len = u32::from_le_bytes(ivf[at..at + 4].try_into().unwrap()) as usize;
        frames.push(ivf[at + 12..at + 12 + len].to_vec());
        at += 12 + len;
    }
    frames
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cut_signaling_connection_is_resumed_and_the_room_goes_on() {
    let lk = common::LiveKit::from_stack();
    let relay = common::Relay::start(&lk.url).await;
    let room = common::unique_room("rtc-resume");
    let key = CallKey::generate(&mut rand::rng());
    let policy = ReconnectPolicy::default();
    let b = Peer::join(&lk.url, &lk.token(&room, "b"), &key, 440.0, policy).await;
    let a = Peer::join(&relay.url, &lk.token(&room, "a"), &key, 880.0, policy).await;
    let start = Instant::now();
    a.wait_for(Duration::from_secs(15), "a hears b's 440 Hz", |l| {
        l.tone("b", 440.0, start) > 0.5
    })
    .await;
    b.wait_for(Duration::from_secs(15), "b hears a's 880 Hz", |l| {
        l.tone("a", 880.0, start) > 0.5
    })
    .await;

    // The network drops a's signaling connection and keeps it down for a while.
    relay.refuse(true);
    relay.cut();
    let cut_at = Instant::now();
    a.wait_for(Duration::from_secs(5), "a reports Reconnecting", |l| {
        l.first(is_reconnecting).is_some()
    })
    .await;
    // Someone joins while a cannot hear about it.
    let c = Peer::join(&lk.url, &lk.token(&room, "c"), &key, 660.0, policy).await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    relay.refuse(false);
    a.wait_for(Duration::from_secs(15), "a reports Reconnected", |l| {
        l.first(is_reconnected).is_some()
    })
    .await;
    let resumed_at = a.log().first(is_reconnected).unwrap();
    let outage = resumed_at - cut_at;
    // Media kept flowing while signaling was down.
    let during = a.log().seconds_heard("b", cut_at, resumed_at);
    assert!(
        during > outage.as_secs_f64() * 0.5,
        "a heard {during:.2} s of b in a {outage:?} outage"
    );

    // The resumed session carries signaling again: c (joined during the outage) is
    // announced and subscribed, with its track renegotiated over the new connection.
    a.wait_for(
        Duration::from_secs(15),
        "a sees c and hears its 660 Hz",
        |l| {
            l.events.iter().any(
                |(_, e)| matches!(e, RoomEvent::ParticipantJoined { identity, .. } if identity == "c"),
            ) && l.tone("c", 660.0, resumed_at) > 0.5
        },
    )
    .await;
    // A new publication (AddTrack, offer, answer) works over it too.
    let cam = a.room.publish_video("camera", 320, 240).await.unwrap();
    for (i, f) in vp8_frames().iter().enumerate() {
        cam.push_vp8(f, i as u64 * 33).await.unwrap();
        tokio::time::sleep(Duration::from_millis(33)).await;
    }
    b.wait_for(Duration::from_secs(10), "b receives a's video", |l| {
        l.video.get("a").copied().unwrap_or(0) > 0
    })
    .await;
    // And b still hears a.
    assert!(b.log().tone("a", 880.0, resumed_at) > 0.5);

    // Nobody saw a leave, nothing failed to decrypt, and a resumed exactly once.
    for (who, p) in [("a", &a), ("b", &b), ("c", &c)] {
        let log = p.log();
        assert_eq!(log.decrypt_failures, 0, "{who} had decrypt failures");
        assert!(
            !log.events.iter().any(|(_, e)| matches!(
                e,
                RoomEvent::ParticipantLeft { .. } | RoomEvent::Disconnected { .. }
            )),
            "{who}: {:?}",
            log.events
        );
    }
    assert_eq!(
        a.log()
            .events
            .iter()
            .filter(|(_, e)| is_reconnected(e))
            .count(),
        1
    );
    println!("outage {outage:?}, a heard {during:.2} s of b during it");
    for p in [a, b, c] {
        p.room.leave().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn resume_gives_up_after_its_bounded_attempts() {
    let lk = common::LiveKit::from_stack();
    let relay = common::Relay::start(&lk.url).await;
    let room = common::unique_room("rtc-resume-fail");
    let key = CallKey::generate(&mut rand::rng());
    let policy = ReconnectPolicy {
        attempts: 3,
        first_delay: Duration::from_millis(200),
        max_delay: Duration::from_secs(1),
        ..Default::default()
    };
    let a = Peer::join(&relay.url, &lk.token(&room, "a"), &key, 880.0, policy).await;
    relay.refuse(true);
    relay.cut();
    let cut_at = Instant::now();
    a.wait_for(Duration::from_secs(20), "a gives up", |l| {
        l.first(|e| matches!(e, RoomEvent::Disconnected { .. }))
            .is_some()
    })
    .await;
    let (attempts, at, reason, resumed) = {
        let log = a.log();
        let attempts: Vec<u32> = log
            .events
            .iter()
            .filter_map(|(_, e)| match e {
                RoomEvent::Reconnecting { attempt, .. } => Some(*attempt),
                _ => None,
            })
            .collect();
        let (at, reason) = log
            .events
            .iter()
            .find_map(|(t, e)| match e {
                RoomEvent::Disconnected { reason } => Some((*t, reason.clone())),
                _ => None,
            })
            .unwrap();
        (attempts, at, reason, log.first(is_reconnected).is_some())
    };
    assert_eq!(attempts, [1, 2, 3]);
    assert!(
        reason.contains("not resumed after 3 attempts"),
        "reason: {reason}"
    );
    // 0 + 0.2 + 0.4 s of waiting plus three refused upgrades: quick, and bounded.
    assert!(
        at - cut_at < Duration::from_secs(10),
        "gave up after {:?}",
        at - cut_at
    );
    assert!(!resumed);
    // The handle reports the room closed.
    assert!(matches!(
        a.room.send_data(b"x", None).await,
        Err(oracle_calls_rtc::Error::Closed)
    ));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_silent_signaling_connection_is_detected_and_resumed() {
    let lk = common::LiveKit::from_stack();
    let relay = common::Relay::start(&lk.url).await;
    let room = common::unique_room("rtc-resume-silent");
    let key = CallKey::generate(&mut rand::rng());
    let policy = ReconnectPolicy::default();
    let b = Peer::join(&lk.url, &lk.token(&room, "b"), &key, 440.0, policy).await;
    let a = Peer::join(&relay.url, &lk.token(&room, "a"), &key, 880.0, policy).await;
    let start = Instant::now();
    a.wait_for(Duration::from_secs(15), "a hears b", |l| {
        l.tone("b", 440.0, start) > 0.5
    })
    .await;
    // The path goes dead without a FIN: only the server's silence tells.
    relay.stall();
    let stalled_at = Instant::now();
    a.wait_for(
        Duration::from_secs(30),
        "a notices the silence and resumes",
        |l| l.first(is_reconnected).is_some(),
    )
    .await;
    let (noticed, reason) = a
        .log()
        .events
        .iter()
        .find_map(|(t, e)| match e {
            RoomEvent::Reconnecting { reason, .. } => Some((*t, reason.clone())),
            _ => None,
        })
        .unwrap();
    assert!(
        reason.contains("no message from the server"),
        "reason: {reason}"
    );
    // livekit-server's ping timeout is 15 s (pongs every 5 s): noticed within it plus a ping.
    let after = noticed - stalled_at;
    assert!(after < Duration::from_secs(22), "noticed after {after:?}");
    let resumed = a.log().first(is_reconnected).unwrap();
    a.wait_for(Duration::from_secs(10), "a still hears b", |l| {
        l.tone("b", 440.0, resumed) > 0.5
    })
    .await;
    println!("silence noticed after {after:?}");
    a.room.leave().await;
    b.room.leave().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_participant_the_server_removed_is_not_resumed() {
    let lk = common::LiveKit::from_stack();
    let relay = common::Relay::start(&lk.url).await;
    let room = common::unique_room("rtc-resume-removed");
    let key = CallKey::generate(&mut rand::rng());
    let a = Peer::join(
        &relay.url,
        &lk.token(&room, "a"),
        &key,
        880.0,
        ReconnectPolicy::default(),
    )
    .await;
    a.wait_for(Duration::from_secs(10), "a is connected", |l| {
        l.first(|e| matches!(e, RoomEvent::Connected)).is_some()
    })
    .await;
    relay.refuse(true);
    relay.cut();
    a.wait_for(Duration::from_secs(5), "a reports Reconnecting", |l| {
        l.first(is_reconnecting).is_some()
    })
    .await;
    // While a is away, an operator removes it.
    lk.remove_participant(&room, "a");
    relay.refuse(false);
    a.wait_for(Duration::from_secs(15), "a is told it is gone", |l| {
        l.first(|e| matches!(e, RoomEvent::Disconnected { .. }))
            .is_some()
    })
    .await;
    let log = a.log();
    let reason = log
        .events
        .iter()
        .find_map(|(_, e)| match e {
            RoomEvent::Disconnected { reason } => Some(reason.clone()),
            _ => None,
        })
        .unwrap();
    assert!(
        reason.contains("refused to resume") && reason.contains("no longer has this participant"),
        "reason: {reason}"
    );
    assert!(!log.events.iter().any(|(_, e)| is_reconnected(e)));
}

/// The server forgets the participant while its signaling is down (an operator removes it;
/// a LiveKit node dying does the same to everyone on it): with a token source the refused
/// resume becomes a full reconnect — a fresh token, a fresh join, new peer connections, the
/// tone published again — and it hears the other side again under the same call key, with no
/// frame failing to decrypt on either side.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refused_resume_becomes_a_full_reconnect_under_the_same_key() {
    let lk = Arc::new(common::LiveKit::from_stack());
    let relay = common::Relay::start(&lk.url).await;
    let room = common::unique_room("rtc-rejoin");
    let key = CallKey::generate(&mut rand::rng());
    let policy = ReconnectPolicy::default();
    let minted = Arc::new(std::sync::atomic::AtomicU32::new(0));
    let source = {
        let (lk, room, minted) = (lk.clone(), room.clone(), minted.clone());
        TokenSource::new(move || {
            minted.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            // Straight to the server this time, not through the relay.
            let fresh = FreshToken {
                url: lk.url.clone(),
                token: Zeroizing::new(lk.token(&room, "a")),
            };
            async move { Ok(fresh) }
        })
    };
    let b = Peer::join(&lk.url, &lk.token(&room, "b"), &key, 440.0, policy).await;
    let a = Peer::join_with(
        &relay.url,
        &lk.token(&room, "a"),
        &key,
        880.0,
        policy,
        Some(source),
    )
    .await;
    let start = Instant::now();
    a.wait_for(Duration::from_secs(15), "a hears b's 440 Hz", |l| {
        l.tone("b", 440.0, start) > 0.5
    })
    .await;
    b.wait_for(Duration::from_secs(15), "b hears a's 880 Hz", |l| {
        l.tone("a", 880.0, start) > 0.5
    })
    .await;
    assert_eq!(minted.load(std::sync::atomic::Ordering::SeqCst), 0);

    relay.refuse(true);
    relay.cut();
    a.wait_for(Duration::from_secs(5), "a reports Reconnecting", |l| {
        l.first(is_reconnecting).is_some()
    })
    .await;
    lk.remove_participant(&room, "a");
    let removed_at = Instant::now();
    relay.refuse(false);
    a.wait_for(Duration::from_secs(20), "a rejoins", |l| {
        let full = l.first(|e| matches!(e, RoomEvent::Reconnecting { full: true, .. }));
        full.is_some_and(|f| l.events.iter().any(|(t, e)| *t > f && is_reconnected(e)))
    })
    .await;
    let rejoined_at = a
        .log()
        .events
        .iter()
        .filter(|(_, e)| is_reconnected(e))
        .map(|(t, _)| *t)
        .next_back()
        .unwrap();
    assert!(minted.load(std::sync::atomic::Ordering::SeqCst) >= 1);
    // Media again after the rejoin: a hears b on its new subscriber connection.
    a.wait_for(Duration::from_secs(15), "a hears b again", |l| {
        l.tone("b", 440.0, rejoined_at) > 0.5
    })
    .await;
    let a_heard_at = Instant::now();
    // b kept its peer connection, and LiveKit gives a's new track b's old m-line (its mid)
    // with a new SSRC: b hears a again once the m-line's depacketizer starts over for the new
    // stream (rtc lets str0m learn subscriber SSRCs from the packets' mid extension, whose
    // SSRC change resets it; with the SSRC announced in the SDP, str0m 0.25 kept the old
    // stream's sequence numbers and dropped the new one's in 4 of 8 runs).
    b.wait_for(
        Duration::from_secs(10),
        "b hears a again on its old m-line",
        |l| l.tone("a", 880.0, rejoined_at) > 0.5,
    )
    .await;
    let b_heard_at = Instant::now();
    eprintln!(
        "removed -> rejoined {:.2} s, removed -> a hears b again {:.2} s, removed -> b hears a \
         again {:.2} s (upper bounds)",
        rejoined_at.duration_since(removed_at).as_secs_f64(),
        a_heard_at.duration_since(removed_at).as_secs_f64(),
        b_heard_at.duration_since(removed_at).as_secs_f64(),
    );
    // Same key: nothing failed to decrypt on either side, before or after.
    assert_eq!(a.log().decrypt_failures, 0);
    assert_eq!(b.log().decrypt_failures, 0);
    // b saw a leave (the server removed it) and come back.
    {
        let log = b.log();
        let left = log
            .first(|e| matches!(e, RoomEvent::ParticipantLeft { identity } if identity == "a"))
            .expect("b saw a leave");
        assert!(
            log.events.iter().any(|(t, e)| *t > left
                && matches!(e, RoomEvent::ParticipantJoined { identity, .. } if identity == "a")),
            "b saw a come back"
        );
    }
    a.room.leave().await;
    b.room.leave().await;
}

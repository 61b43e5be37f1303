//! Person-to-person calls between our driver and the independent peer: matrix-js-sdk's
//! `MatrixCall` in Debian's headless Chromium (`tests/matrixcall/party.mjs`), both
//! directions, direct and relay-only, through the stack's real Synapse and coturn.
//!
//! Needs `scripts/stack up`, `/usr/bin/chromium` and `npm ci` in `tests/matrixcall`
//! (`scripts/test` does all three). With a stack elsewhere, point `STACK_DIR` at it.
//!
//! Trust: the party's device is new to the Rust side, and nothing is verified. The Rust side
//! uses the driver's trust on first use, as a person would: placing the first call to the
//! party's user pins all of that user's devices; the first call event from a person pins the
//! sending device. Each test checks that the party's device ended up pinned with its key.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]

#[path = "support/matrixcall.rs"]
mod matrixcall;
#[path = "direct/support.rs"]
mod people;

use std::time::{Duration, Instant};

use matrix_sdk::ruma::UserId;
use matrixcall::{Account, Party};
use oracle_calls_client::{DirectCall, DirectCallEvent, EndReason, IcePolicy, PeopleTrust};
use oracle_calls_direct::signal::HangupReason;
use people::{Person, Side, assert_tone, incoming, person, run_side, start};
use serde_json::Value;

/// What each side plays: the Rust side 440 Hz, the MatrixCall side 880 Hz.
const RUST_HZ: f64 = 440.0;
const PARTY_HZ: f64 = 880.0;

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn rust_calls_matrixcall() {
    rust_caller(IcePolicy::All).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn matrixcall_calls_rust() {
    matrixcall_caller(IcePolicy::All).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn rust_calls_matrixcall_relay_only() {
    rust_caller(IcePolicy::RelayOnly).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn matrixcall_calls_rust_relay_only() {
    matrixcall_caller(IcePolicy::RelayOnly).await;
}

/// The party's command line: its mode, the tones, relay-only when the Rust side is.
fn party_args<'a>(mode: &[&'a str], policy: IcePolicy) -> Vec<&'a str> {
    let mut args = mode.to_vec();
    args.extend(["--tone-hz", "880", "--expect-hz", "440", "--timeout", "100"]);
    if policy == IcePolicy::RelayOnly {
        args.push("--force-turn");
    }
    args
}

/// Rust places the call, MatrixCall answers; Rust hangs up after ~8 s of tones.
async fn rust_caller(policy: IcePolicy) {
    let alice = person("alice-to-mc").await;
    let bob = Account::new("bob-mc").await;
    let mut party = Party::spawn(&bob, &party_args(&["answer"], policy));
    party.wait_for("ready", Duration::from_secs(60)).await;

    let calls = start(&alice, policy).await;
    let bob_id = UserId::parse(&bob.user_id).unwrap();
    let mut call = calls.place_call(&bob_id).await.unwrap();
    let mut side = Side::default();
    run_side(
        &mut call,
        RUST_HZ,
        Instant::now() + Duration::from_secs(12),
        &mut side,
    )
    .await;
    assert_rust_side(&side, "alice (Rust caller)");
    assert!(side.ended.is_none(), "ended early: {:?}", side.ended);
    call.hangup().unwrap();
    let end = ended(&mut call).await;
    assert_eq!(end, EndReason::LocalHangup(HangupReason::UserHangup));

    let result = party.wait_for("call_result", Duration::from_secs(30)).await;
    assert_party_result(&result, "callee", &alice, policy);
    assert_eq!(result["hangup_reason"], "user_hangup", "{result:#}");
    assert_eq!(result["hangup_party"], "remote", "{result:#}");
    assert_eq!(
        party.wait_for("done", Duration::from_secs(30)).await["ok"],
        true
    );
    assert_pinned(&alice, &bob);
}

/// MatrixCall places the call (with `invitee`), Rust answers; MatrixCall hangs up.
async fn matrixcall_caller(policy: IcePolicy) {
    let bob = person("bob-from-mc").await;
    let alice = Account::new("alice-mc").await;
    let calls = start(&bob, policy).await;
    let mut party = Party::spawn(
        &alice,
        &party_args(&["call", bob.user.as_str(), "--hangup-after", "9"], policy),
    );
    let ring = incoming(&calls, Duration::from_secs(90))
        .await
        .expect("the MatrixCall invite rings");
    assert_eq!(ring.caller().as_str(), alice.user_id);
    let mut call = ring.answer().await.unwrap();
    let mut side = Side::default();
    run_side(
        &mut call,
        RUST_HZ,
        Instant::now() + Duration::from_secs(30),
        &mut side,
    )
    .await;
    assert_rust_side(&side, "bob (Rust callee)");
    assert_eq!(
        side.ended,
        Some(EndReason::RemoteHangup(HangupReason::UserHangup))
    );

    let result = party.wait_for("call_result", Duration::from_secs(30)).await;
    assert_party_result(&result, "caller", &bob, policy);
    assert_eq!(result["hangup_reason"], "user_hangup", "{result:#}");
    assert_eq!(result["hangup_party"], "local", "{result:#}");
    // MatrixCall selected our answer.
    assert!(
        own_events(&result).contains(&"m.call.select_answer".to_owned()),
        "{result:#}"
    );
    assert_eq!(
        party.wait_for("done", Duration::from_secs(30)).await["ok"],
        true
    );
    assert_pinned(&bob, &alice);
}

/// Connected without the binding (MatrixCall does not offer it), and the party's tone heard.
fn assert_rust_side(side: &Side, who: &str) {
    assert!(side.connected, "{who} never connected");
    assert!(
        !side.key_confirmation_expected && !side.key_confirmed,
        "{who}: MatrixCall offers no binding"
    );
    assert_tone(side, who, PARTY_HZ, RUST_HZ);
}

/// Chromium's view of the call: the GCM profile, a remote feed (our msid), our tone, the
/// expected pair, and every call event of the Rust user decrypted from `m.room.encrypted`.
fn assert_party_result(r: &Value, role: &str, rust: &Person, policy: IcePolicy) {
    assert_eq!(r["role"], role, "{r:#}");
    assert!(r["connected_ms"].is_number(), "never connected: {r:#}");
    let t = &r["stats"]["transport"];
    assert_eq!(t["srtp_cipher"], "SRTP_AEAD_AES_256_GCM", "{r:#}");
    assert_eq!(t["dtls_state"], "connected", "{r:#}");
    assert_eq!(r["remote_feed"], true, "no remote CallFeed: {r:#}");
    let packets = r["stats"]["inbound_audio"]["packets"].as_u64().unwrap_or(0);
    assert!(packets > 100, "only {packets} packets in: {r:#}");
    let tone = &r["tone"];
    let dominant = tone["dominant_hz"].as_f64().unwrap_or(0.0);
    assert!(
        (dominant - RUST_HZ).abs() <= 10.0,
        "MatrixCall heard {dominant} Hz: {tone:#}"
    );
    assert!(
        tone["power"].as_f64().unwrap_or(0.0) > 0.3,
        "weak tone: {tone:#}"
    );
    let pair = &r["stats"]["pair"];
    if policy == IcePolicy::RelayOnly {
        assert_eq!(pair["local"]["type"], "relay", "{pair:#}");
        assert_eq!(pair["remote"]["type"], "relay", "{pair:#}");
    }
    let ours: Vec<&Value> = r["call_events"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|e| e["sender"] == rust.user.as_str())
        .collect();
    // What the Rust side must have sent: as caller (the party is the callee) the invite, the
    // candidates and select_answer; as callee the answer and the candidates.
    let expected: &[&str] = if role == "callee" {
        &["m.call.invite", "m.call.candidates", "m.call.select_answer"]
    } else {
        &["m.call.answer", "m.call.candidates"]
    };
    for t in expected {
        assert!(
            ours.iter().any(|e| e["type"] == *t),
            "MatrixCall never saw our {t}: {r:#}"
        );
    }
    for e in &ours {
        assert_eq!(e["encrypted"], true, "plaintext from us: {e:#}");
    }
}

/// The types of the party's own call events.
fn own_events(r: &Value) -> Vec<String> {
    r["call_events"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|e| e["own"] == true)
        .filter_map(|e| e["type"].as_str().map(str::to_owned))
        .collect()
}

/// The party's device is pinned on the Rust side (trust on first use), with its key.
fn assert_pinned(rust: &Person, party: &Account) {
    let user = UserId::parse(&party.user_id).unwrap();
    let pins = PeopleTrust::open(rust.dir.join("pins.json"))
        .pinned(&user)
        .unwrap();
    assert!(
        pins.iter()
            .any(|p| p.device_id == party.device_id && !p.ed25519.is_empty()),
        "{pins:?}"
    );
}

/// Waits (5 s at most) for the call's end.
async fn ended(call: &mut DirectCall) -> EndReason {
    tokio::time::timeout(Duration::from_secs(5), async {
        loop {
            match call.next_event().await {
                Some(DirectCallEvent::Ended(r)) => return r,
                Some(_) => {}
                None => panic!("no end reported"),
            }
        }
    })
    .await
    .expect("the call ends within 5 s")
}

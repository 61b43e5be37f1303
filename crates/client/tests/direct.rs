//! Person-to-person calls through the stack's real Synapse (and coturn): two matrix-sdk
//! clients with their own stores, each driven by `DirectCalls`.
//!
//! Needs `scripts/stack up` (Synapse with TURN credentials, coturn). With a stack elsewhere,
//! point `STACK_DIR` at it.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]

#[path = "direct/support.rs"]
mod support;

use std::time::{Duration, Instant};

use matrix_sdk::config::SyncSettings;
use oracle_calls_client::{DirectCallEvent, EndReason, IcePolicy};
use oracle_calls_direct::SecurityEvent;
use oracle_calls_test_support::stack_var;
use support::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn rust_to_rust_call_hears_both_tones_confirms_the_binding_and_stores_only_ciphertext() {
    let alice = person("alice-direct").await;
    let bob = person("bob-direct").await;
    let (a, b, a_call, _b_call, _services) = call_and_talk(&alice, &bob, IcePolicy::All).await;
    assert!(a.connected && b.connected);
    assert!(a.key_confirmation_expected && b.key_confirmation_expected);
    assert!(a.key_confirmed, "alice verified bob's key confirmation");
    assert!(b.key_confirmed, "bob verified alice's key confirmation");
    assert_tone(&b, "bob", 440.0, 880.0);
    assert_tone(&a, "alice", 880.0, 440.0);
    assert!(a_call.stats().direct_datagrams() > 0);
    a_call.hangup().unwrap();
    let mut a_call = a_call;
    let end = tokio::time::timeout(Duration::from_secs(5), async {
        loop {
            if let Some(DirectCallEvent::Ended(r)) = a_call.next_event().await {
                return r;
            }
        }
    })
    .await
    .unwrap();
    assert!(matches!(end, EndReason::LocalHangup(_)), "{end:?}");
    tokio::time::sleep(Duration::from_millis(1500)).await;
    // The homeserver's copy: every call event is `m.room.encrypted`.
    let events = raw_messages(&alice, a_call.room_id().as_str()).await;
    let types: Vec<&str> = events.iter().filter_map(|e| e["type"].as_str()).collect();
    let plaintext: Vec<_> = types
        .iter()
        .filter(|t| t.starts_with("m.call.") || t.starts_with("org.oraclecalls."))
        .collect();
    assert!(
        plaintext.is_empty(),
        "plaintext call events on the server: {plaintext:?}"
    );
    let encrypted = types.iter().filter(|t| **t == "m.room.encrypted").count();
    // invite, candidates, answer, select_answer, 2 confirms, hangup at least.
    assert!(
        encrypted >= 6,
        "only {encrypted} encrypted events: {types:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn relay_only_call_goes_through_coturn_and_releases_the_allocation() {
    let alice = person("alice-relay").await;
    let bob = person("bob-relay").await;
    let log_before = std::fs::read_to_string(stack_var("TURN_LOG"))
        .unwrap_or_default()
        .len();
    let (a, b, a_call, b_call, _services) = call_and_talk(&alice, &bob, IcePolicy::RelayOnly).await;
    assert!(a.connected && b.connected && a.key_confirmed && b.key_confirmed);
    assert_tone(&b, "bob", 440.0, 880.0);
    assert_tone(&a, "alice", 880.0, 440.0);
    for (who, call) in [("alice", &a_call), ("bob", &b_call)] {
        let s = call.stats();
        assert!(s.relayed_addr().is_some(), "{who} has a relayed address");
        assert!(
            s.relayed_datagrams() > 100,
            "{who}: {} relayed",
            s.relayed_datagrams()
        );
        assert_eq!(
            s.direct_datagrams(),
            0,
            "{who} sent nothing around the relay"
        );
    }
    let local = a_call.stats().local_addr().unwrap();
    let hung_up = Instant::now();
    a_call.hangup().unwrap();
    // coturn logs the deletion of alice's allocation (Refresh lifetime 0) within 2 s.
    assert_allocation_released(&alice.user, log_before, hung_up + Duration::from_secs(2)).await;
    // The socket is closed: its port can be bound again.
    tokio::time::sleep(Duration::from_millis(1600)).await;
    std::net::UdpSocket::bind(local).expect("the call's socket was closed");
}

/// A relay-only call longer than the allocation's lifetime (coturn's `max-allocate-lifetime`,
/// the stack's `TURN_ALLOCATION_LIFETIME`, 60 s) keeps going: the driver refreshes the
/// allocation (coturn logs `refreshed … lifetime=N`, N > 0, for both people), nothing expires,
/// and the tones are still heard both ways at the end.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_relay_only_call_outlives_its_allocation_lifetime() {
    let lifetime: u64 = stack_var("TURN_ALLOCATION_LIFETIME").parse().unwrap();
    let alice = person("alice-long").await;
    let bob = person("bob-long").await;
    let log_before = std::fs::read_to_string(stack_var("TURN_LOG"))
        .unwrap_or_default()
        .len();
    let a_calls = start(&alice, IcePolicy::RelayOnly).await;
    let b_calls = start(&bob, IcePolicy::RelayOnly).await;
    let mut a_call = a_calls.place_call(&bob.user).await.unwrap();
    let ring = incoming(&b_calls, Duration::from_secs(20)).await.unwrap();
    let mut b_call = ring.answer().await.unwrap();
    let started = Instant::now();
    let until = started + Duration::from_secs(lifetime + 15);
    let (mut a, mut b) = (Side::default(), Side::default());
    tokio::join!(
        run_side(&mut a_call, 440.0, until, &mut a),
        run_side(&mut b_call, 880.0, until, &mut b)
    );
    assert!(
        a.ended.is_none() && b.ended.is_none(),
        "{:?} {:?}",
        a.ended,
        b.ended
    );
    assert_tone(&b, "bob", 440.0, 880.0);
    assert_tone(&a, "alice", 880.0, 440.0);
    // Audio all the way through: no gap of a second after the first audio.
    for (who, side) in [("alice", &a), ("bob", &b)] {
        let gap = side.audio_at.windows(2).map(|w| w[1] - w[0]).max().unwrap();
        assert!(gap < Duration::from_secs(1), "{who} heard a {gap:?} gap");
    }
    let fresh = turn_log_since(log_before);
    for who in [&alice.user, &bob.user] {
        let needle = format!("{who}>");
        let refreshed = fresh
            .lines()
            .filter(|l| {
                l.contains(&needle) && l.contains("refreshed,") && !l.contains("lifetime=0")
            })
            .count();
        assert!(
            refreshed >= 1,
            "{who}'s allocation was never refreshed:\n{fresh}"
        );
        assert!(
            !fresh
                .lines()
                .any(|l| l.contains(&needle) && l.contains("delete: realm=")),
            "{who}'s allocation was deleted during the call"
        );
        eprintln!(
            "{who}: {refreshed} refreshes in a {} s relay-only call",
            started.elapsed().as_secs()
        );
    }
    a_call.hangup().unwrap();
    assert!(
        wait_end(&mut b_call, Duration::from_secs(10))
            .await
            .is_some()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn security_negatives_on_real_synapse() {
    let (bob_name, bob_password) = new_user("bob-neg");
    let alice = person("alice-neg").await;
    let bob = login(&bob_name, &bob_password).await;
    let a_calls = start(&alice, IcePolicy::All).await;
    let b_calls = start(&bob, IcePolicy::All).await;
    // The DM, and the first contact: alice pins bob's device by placing a call he rejects.
    let call = a_calls.place_call(&bob.user).await.unwrap();
    let room = call.room_id().to_string();
    incoming(&b_calls, Duration::from_secs(20))
        .await
        .expect("rings")
        .reject()
        .unwrap();
    drop(call);
    let bob_device = bob.client.device_id().unwrap().to_string();
    let short = Duration::from_secs(4);

    // 1. A plaintext invite PUT raw into the encrypted DM: a typed event, no ring.
    put_plaintext(
        &bob,
        &room,
        "m.call.invite",
        &invite("plain1", &bob_device, &alice.user),
    )
    .await;
    let n = notice(&a_calls, Duration::from_secs(10))
        .await
        .expect("a security notice");
    assert!(
        matches!(n.event, SecurityEvent::PlaintextCallEvent { ref event_type, .. } if event_type == "m.call.invite"),
        "{n:?}"
    );
    assert!(
        incoming(&a_calls, short).await.is_none(),
        "a plaintext invite rang"
    );

    // 2. An encrypted invite whose party_id is not the sending device: refused.
    send_encrypted(
        &bob,
        &room,
        "m.call.invite",
        &invite("party1", "NOTMYDEVICE", &alice.user),
    )
    .await;
    let n = notice(&a_calls, Duration::from_secs(10))
        .await
        .expect("a security notice");
    assert!(
        matches!(n.event, SecurityEvent::PartyIdMismatch { ref device, ref party_id, .. }
        if *device == bob_device && party_id == "NOTMYDEVICE"),
        "{n:?}"
    );
    assert!(
        incoming(&a_calls, short).await.is_none(),
        "a party_id mismatch rang"
    );

    // 3. A valid invite rings once; the same content re-sent is a replay.
    let valid = invite("replay1", &bob_device, &alice.user);
    send_encrypted(&bob, &room, "m.call.invite", &valid).await;
    let ring = incoming(&a_calls, Duration::from_secs(10))
        .await
        .expect("the valid invite rings");
    assert_eq!(ring.call_id().as_str(), "replay1");
    send_encrypted(&bob, &room, "m.call.invite", &valid).await;
    let n = notice(&a_calls, Duration::from_secs(10))
        .await
        .expect("a security notice");
    assert!(
        matches!(n.event, SecurityEvent::ReplayedInvite { ref call_id } if call_id.as_str() == "replay1"),
        "{n:?}"
    );
    ring.reject().unwrap();
    assert!(incoming(&a_calls, short).await.is_none(), "a replay rang");

    // 4. A second login of bob (a device alice never pinned): refused until accepted.
    let bob2 = login(&bob_name, &bob_password).await;
    let bob2_device = bob2.client.device_id().unwrap().to_owned();
    let bob2_ed = bob2.client.encryption().ed25519_key().await.unwrap();
    // Alice's client learns of the new device (the sync loop queries its keys).
    let t0 = Instant::now();
    while alice
        .client
        .encryption()
        .get_device(&bob.user, &bob2_device)
        .await
        .unwrap()
        .is_none()
    {
        assert!(
            t0.elapsed() < Duration::from_secs(15),
            "alice never saw bob's new device"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let t0 = Instant::now();
    while bob2
        .client
        .get_room(&matrix_sdk::ruma::RoomId::parse(&room).unwrap())
        .is_none()
    {
        bob2.client
            .sync_once(SyncSettings::default().timeout(Duration::ZERO))
            .await
            .unwrap();
        assert!(t0.elapsed() < Duration::from_secs(10));
    }
    send_encrypted(
        &bob2,
        &room,
        "m.call.invite",
        &invite("untrusted1", bob2_device.as_str(), &alice.user),
    )
    .await;
    let n = notice(&a_calls, Duration::from_secs(10))
        .await
        .expect("a security notice");
    assert!(
        matches!(n.event, SecurityEvent::UntrustedDevice { ref device, .. } if device == bob2_device.as_str()),
        "{n:?}"
    );
    // The notice names the key to compare (and to accept).
    assert_eq!(n.sender_ed25519.as_deref(), Some(bob2_ed.as_str()));
    assert!(
        incoming(&a_calls, short).await.is_none(),
        "an untrusted device rang"
    );
    // The explicit override names exactly the new device's key; then it rings.
    a_calls
        .accept_device(&bob.user, bob2_device.as_str(), &bob2_ed)
        .unwrap();
    send_encrypted(
        &bob2,
        &room,
        "m.call.invite",
        &invite("untrusted2", bob2_device.as_str(), &alice.user),
    )
    .await;
    let ring = incoming(&a_calls, Duration::from_secs(10))
        .await
        .expect("the accepted device rings");
    assert_eq!(ring.call_id().as_str(), "untrusted2");
    ring.reject().unwrap();
    drop(b_calls);
}

//! Person-to-person call signalling on the stack's real Synapse: glare, reject, busy,
//! answered elsewhere, and invite lifetimes, each between `DirectCalls` of separate
//! matrix-sdk clients.
//!
//! Needs `scripts/stack up`. With a stack elsewhere, point `STACK_DIR` at it.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]

#[path = "direct/support.rs"]
mod support;

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use matrix_sdk::deserialized_responses::EncryptionInfo;
use matrix_sdk::ruma::events::AnySyncTimelineEvent;
use matrix_sdk::ruma::serde::Raw;
use oracle_calls_client::{DirectCalls, DirectConfig, EndReason, IcePolicy};
use oracle_calls_direct::signal::HangupReason;
use serde_json::Value;
use support::*;

/// The DM exists and each person has pinned the other's device: a call each way, rejected.
async fn returning_users(alice: &Person, a: &DirectCalls, bob: &Person, b: &DirectCalls) {
    for (caller, callee_calls, callee) in [(a, b, bob), (b, a, alice)] {
        let mut call = caller.place_call(&callee.user).await.unwrap();
        incoming(callee_calls, Duration::from_secs(20))
            .await
            .expect("rings")
            .reject()
            .unwrap();
        assert_eq!(
            wait_end(&mut call, Duration::from_secs(10)).await,
            Some(EndReason::RemoteReject)
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn glare_leaves_exactly_one_call_with_audio_both_ways_in_20_of_20_runs() {
    let alice = person("alice-glare").await;
    let bob = person("bob-glare").await;
    let a_calls = start(&alice, IcePolicy::All).await;
    let b_calls = start(&bob, IcePolicy::All).await;
    returning_users(&alice, &a_calls, &bob, &b_calls).await;
    let (mut crossed, mut called_back) = (0, 0);
    for run in 0..20u64 {
        // Both orders, the second call 0–45 ms after the first.
        let delay = Duration::from_millis(run * 5 % 50);
        let alice_first = run % 2 == 0;
        let place_a = async {
            if !alice_first {
                tokio::time::sleep(delay).await;
            }
            a_calls.place_call(&bob.user).await.unwrap()
        };
        let place_b = async {
            if alice_first {
                tokio::time::sleep(delay).await;
            }
            b_calls.place_call(&alice.user).await.unwrap()
        };
        let (mut a_call, mut b_call) = tokio::join!(place_a, place_b);
        assert_eq!(a_call.room_id(), b_call.room_id(), "run {run}: one DM");
        let (ida, idb) = (a_call.call_id().clone(), b_call.call_id().clone());
        let (mut a, mut b) = (Side::default(), Side::default());
        let until = Instant::now() + Duration::from_secs(4);
        tokio::join!(
            run_side(&mut a_call, 440.0, until, &mut a),
            run_side(&mut b_call, 880.0, until, &mut b)
        );
        assert!(
            a.ended.is_none() && b.ended.is_none(),
            "run {run}: a call ended: {:?} / {:?}",
            a.ended,
            b.ended
        );
        let survivor = ida.clone().min(idb.clone());
        if ida == idb {
            // The second person's device already rang: calling back answered that call.
            called_back += 1;
            assert!(a.replaced.is_none() && b.replaced.is_none());
        } else {
            crossed += 1;
            let loser = ida.clone().max(idb.clone());
            let replaced: Vec<_> = [&a.replaced, &b.replaced].into_iter().flatten().collect();
            assert_eq!(
                replaced,
                vec![&(loser, survivor.clone())],
                "run {run}: the greater call is replaced by the lesser, on one side only"
            );
        }
        assert_eq!(a_call.call_id(), &survivor, "run {run}");
        assert_eq!(b_call.call_id(), &survivor, "run {run}");
        assert_tone(&b, &format!("run {run}: bob"), 440.0, 880.0);
        assert_tone(&a, &format!("run {run}: alice"), 880.0, 440.0);
        a_call.hangup().unwrap();
        assert!(matches!(
            wait_end(&mut a_call, Duration::from_secs(5)).await,
            Some(EndReason::LocalHangup(_))
        ));
        assert_eq!(
            wait_end(&mut b_call, Duration::from_secs(10)).await,
            Some(EndReason::RemoteHangup(HangupReason::UserHangup)),
            "run {run}"
        );
        // Nothing else rings: at most the called-back call, which is over.
        for calls in [&a_calls, &b_calls] {
            while let Some(ring) = incoming(calls, Duration::from_millis(300)).await {
                assert_eq!(ring.call_id(), &survivor, "run {run}: another call rang");
                assert!(ring.answer().await.is_err());
            }
        }
    }
    eprintln!(
        "glare: {crossed} runs with crossing invites, {called_back} answered by calling back"
    );
    assert!(crossed >= 10, "only {crossed} runs had crossing invites");
}

/// Records (event type, call_id, sending device) of the call events `p`'s client decrypts.
fn record_call_events(p: &Person) -> Arc<Mutex<Vec<(String, String, String)>>> {
    let seen = Arc::new(Mutex::new(Vec::new()));
    let s = seen.clone();
    p.client.add_event_handler(
        move |raw: Raw<AnySyncTimelineEvent>, info: Option<EncryptionInfo>| {
            let s = s.clone();
            async move {
                let ty = raw
                    .get_field::<String>("type")
                    .ok()
                    .flatten()
                    .unwrap_or_default();
                if !ty.starts_with("m.call.") {
                    return;
                }
                let content = raw.get_field::<Value>("content").ok().flatten();
                let call_id = content
                    .as_ref()
                    .and_then(|c| c["call_id"].as_str())
                    .unwrap_or_default()
                    .to_owned();
                let device = info
                    .and_then(|i| i.sender_device.map(|d| d.to_string()))
                    .unwrap_or_default();
                s.lock().unwrap().push((ty, call_id, device));
            }
        },
    );
    seen
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn reject_answered_elsewhere_busy_and_invite_lifetimes() {
    let (bob_name, bob_password) = new_user("bob-two");
    let alice = person("alice-two").await;
    let carol = person("carol-two").await;
    let bob1 = login(&bob_name, &bob_password).await;
    let bob2 = login(&bob_name, &bob_password).await;
    let bob2_device = bob2.client.device_id().unwrap().to_owned();
    wait_for_device(&alice, &bob1.user, &bob2_device).await;
    let seen_by_alice = record_call_events(&alice);
    let a_calls = start(&alice, IcePolicy::All).await;
    let b1_calls = start(&bob1, IcePolicy::All).await;
    let b2_calls = start(&bob2, IcePolicy::All).await;
    let ring_limit = Duration::from_secs(20);

    // Reject: both devices ring, one rejects; the caller ends `RemoteReject`, the other
    // device stops ringing.
    let mut call = a_calls.place_call(&bob1.user).await.unwrap();
    let room = call.room_id().clone();
    let r1 = incoming(&b1_calls, ring_limit).await.expect("bob1 rings");
    let mut r2 = incoming(&b2_calls, ring_limit).await.expect("bob2 rings");
    assert_eq!(r1.call_id(), call.call_id());
    assert_eq!(r2.call_id(), call.call_id());
    r1.reject().unwrap();
    assert_eq!(
        wait_end(&mut call, Duration::from_secs(10)).await,
        Some(EndReason::RemoteReject)
    );
    assert_eq!(
        wait_ring_end(&mut r2, Duration::from_secs(10)).await,
        Some(EndReason::RejectedElsewhere)
    );

    // Answered elsewhere: bob1 answers; bob2 stops on the select_answer and sends nothing.
    let mut a_call = a_calls.place_call(&bob1.user).await.unwrap();
    let answered_id = a_call.call_id().to_string();
    let r1 = incoming(&b1_calls, ring_limit).await.expect("bob1 rings");
    let mut r2 = incoming(&b2_calls, ring_limit).await.expect("bob2 rings");
    let mut b_call = r1.answer().await.unwrap();
    assert_eq!(
        wait_ring_end(&mut r2, Duration::from_secs(10)).await,
        Some(EndReason::AnsweredElsewhere)
    );
    let (mut a, mut b) = (Side::default(), Side::default());
    let until = Instant::now() + Duration::from_secs(3);
    tokio::join!(
        run_side(&mut a_call, 440.0, until, &mut a),
        run_side(&mut b_call, 880.0, until, &mut b)
    );
    assert_tone(&b, "bob1", 440.0, 880.0);
    assert_tone(&a, "alice", 880.0, 440.0);

    // Busy: carol calls alice while she talks to bob; carol's call ends `user_busy` and
    // never rings at alice.
    let c_calls = start(&carol, IcePolicy::All).await;
    let mut c_call = c_calls.place_call(&alice.user).await.unwrap();
    assert_ne!(c_call.room_id(), &room);
    assert_eq!(
        wait_end(&mut c_call, Duration::from_secs(20)).await,
        Some(EndReason::RemoteHangup(HangupReason::UserBusy))
    );
    assert!(
        incoming(&a_calls, Duration::from_secs(2)).await.is_none(),
        "carol's call rang at alice during a call"
    );
    a_call.hangup().unwrap();
    assert!(
        wait_end(&mut b_call, Duration::from_secs(10))
            .await
            .is_some()
    );
    tokio::time::sleep(Duration::from_secs(1)).await;
    let from_bob2: Vec<_> = seen_by_alice
        .lock()
        .unwrap()
        .iter()
        .filter(|(_, id, dev)| *id == answered_id && dev == bob2_device.as_str())
        .cloned()
        .collect();
    assert!(from_bob2.is_empty(), "bob2 sent {from_bob2:?}");
    let from_bob1 = seen_by_alice
        .lock()
        .unwrap()
        .iter()
        .filter(|(_, id, dev)| {
            *id == answered_id && dev == bob1.client.device_id().unwrap().as_str()
        })
        .count();
    assert!(
        from_bob1 >= 2,
        "the recorder saw bob1's answer and candidates"
    );

    // Lifetime: a 3 s invite nobody answers ends `invite_timeout` at the caller, and the
    // callee's device stops ringing.
    a_calls.stop();
    let a_calls = start_with(
        &alice,
        DirectConfig {
            invite_lifetime: Duration::from_secs(3),
            ..DirectConfig::default()
        },
    )
    .await;
    b2_calls.stop();
    let placed = Instant::now();
    let mut call = a_calls.place_call(&bob1.user).await.unwrap();
    let mut r1 = incoming(&b1_calls, ring_limit).await.expect("bob1 rings");
    assert_eq!(
        wait_end(&mut call, Duration::from_secs(10)).await,
        Some(EndReason::LocalHangup(HangupReason::InviteTimeout))
    );
    let waited = placed.elapsed();
    assert!(
        waited >= Duration::from_secs(3) && waited < Duration::from_secs(5),
        "{waited:?}"
    );
    assert!(matches!(
        wait_ring_end(&mut r1, Duration::from_secs(3)).await,
        Some(EndReason::InviteExpired | EndReason::RemoteHangup(HangupReason::InviteTimeout))
    ));

    // An invite older than its lifetime never rings: bob2 was offline while alice's device
    // sent a 3 s invite (no hangup follows it); 4 s later a fresh one. Back online, bob2's
    // device rings for the fresh one only.
    let alice_device = alice.client.device_id().unwrap().to_string();
    let mut old = invite("lifetime-old", &alice_device, &bob1.user);
    old["lifetime"] = 3000.into();
    send_encrypted(&alice, room.as_str(), "m.call.invite", &old).await;
    tokio::time::sleep(Duration::from_secs(4)).await;
    let fresh = invite("lifetime-fresh", &alice_device, &bob1.user);
    send_encrypted(&alice, room.as_str(), "m.call.invite", &fresh).await;
    let b2_calls = start(&bob2, IcePolicy::All).await;
    let ring = incoming(&b2_calls, ring_limit)
        .await
        .expect("the fresh invite rings");
    assert_eq!(ring.call_id().as_str(), "lifetime-fresh");
    assert!(incoming(&b2_calls, Duration::from_secs(3)).await.is_none());
    drop((ring, b1_calls, c_calls));
}

//! Person-to-person calls on the stack's real Synapse with a fault injected into one side
//! (`DirectConfig::dangerous_test_faults`): a tampered DTLS fingerprint in the answer, a
//! wrong or missing key confirmation; and what a call leaves behind after hangup.
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

use std::time::{Duration, Instant};

use oracle_calls_client::{DangerousTestFaults, DirectCalls, DirectConfig, EndReason, IcePolicy};
use oracle_calls_direct::SecurityEvent;
use oracle_calls_direct::signal::HangupReason;
use oracle_calls_test_support::stack_var;
use support::*;

/// The tests of this file run one at a time: one counts the process's sockets.
static ONE_AT_A_TIME: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// alice calls bob (whose side has `faults`), bob answers; both talk until the call ends or
/// `limit` passes. Returns what each side saw and when the call was answered.
async fn faulty_call(
    a_calls: &DirectCalls,
    bob: &Person,
    faults: DangerousTestFaults,
    limit: Duration,
) -> (Side, Side, Instant) {
    let b_calls = start_with(
        bob,
        DirectConfig {
            dangerous_test_faults: faults,
            ..DirectConfig::default()
        },
    )
    .await;
    let mut a_call = a_calls.place_call(&bob.user).await.unwrap();
    let ring = incoming(&b_calls, Duration::from_secs(20))
        .await
        .expect("rings");
    let mut b_call = ring.answer().await.unwrap();
    let answered = Instant::now();
    let (mut a, mut b) = (Side::default(), Side::default());
    let until = answered + limit;
    tokio::join!(
        run_side(&mut a_call, 440.0, until, &mut a),
        run_side(&mut b_call, 880.0, until, &mut b)
    );
    if b.ended.is_none() {
        b.ended = wait_end(&mut b_call, Duration::from_secs(5)).await;
    }
    b_calls.stop();
    (a, b, answered)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_tampered_fingerprint_or_a_wrong_or_missing_key_confirmation_ends_the_call() {
    let _one = ONE_AT_A_TIME.lock().await;
    let alice = person("alice-fault").await;
    let bob = person("bob-fault").await;
    let a_calls = start(&alice, IcePolicy::All).await;

    // The answer's fingerprint is not the certificate bob presents: alice's DTLS refuses it,
    // nothing is heard, and the call ends.
    let faults = DangerousTestFaults {
        tamper_answer_fingerprint: true,
        ..DangerousTestFaults::default()
    };
    let (a, b, _) = faulty_call(&a_calls, &bob, faults, Duration::from_secs(15)).await;
    assert!(a.heard.is_empty() && b.heard.is_empty(), "audio flowed");
    assert!(!a.key_confirmed && !b.key_confirmed);
    assert!(
        matches!(
            a.ended,
            Some(EndReason::LocalHangup(HangupReason::IceFailed))
        ),
        "{:?}",
        a.ended
    );
    assert!(
        matches!(b.ended, Some(EndReason::RemoteHangup(_))),
        "{:?}",
        b.ended
    );

    // A wrong key confirmation from bob: alice ends the call at once with the typed reason.
    let faults = DangerousTestFaults {
        wrong_key_confirmation: true,
        ..DangerousTestFaults::default()
    };
    let (a, b, answered) = faulty_call(&a_calls, &bob, faults, Duration::from_secs(15)).await;
    let took = answered.elapsed();
    assert!(
        matches!(
            a.ended,
            Some(EndReason::Security(
                SecurityEvent::KeyConfirmationWrong { .. }
            ))
        ),
        "{:?}",
        a.ended
    );
    assert!(!a.key_confirmed);
    assert!(b.key_confirmed, "bob checked alice's (right) confirmation");
    assert_eq!(
        b.ended,
        Some(EndReason::RemoteHangup(HangupReason::UnknownError))
    );
    assert!(took < Duration::from_secs(10), "{took:?}");

    // No key confirmation from bob: alice ends the call after her deadline (5 s after the
    // media connected).
    let faults = DangerousTestFaults {
        drop_key_confirmation: true,
        ..DangerousTestFaults::default()
    };
    let (a, b, answered) = faulty_call(&a_calls, &bob, faults, Duration::from_secs(15)).await;
    let took = answered.elapsed();
    assert!(a.connected);
    assert!(
        matches!(
            a.ended,
            Some(EndReason::Security(
                SecurityEvent::KeyConfirmationMissing { .. }
            ))
        ),
        "{:?}",
        a.ended
    );
    assert_eq!(
        b.ended,
        Some(EndReason::RemoteHangup(HangupReason::UnknownError))
    );
    assert!(
        took >= Duration::from_secs(5) && took < Duration::from_secs(10),
        "{took:?}"
    );
}

/// The UDP sockets this process holds (its fds that are sockets listed in /proc/net/udp*).
fn udp_sockets() -> usize {
    let mut inodes = std::collections::HashSet::new();
    for table in ["/proc/net/udp", "/proc/net/udp6"] {
        for line in std::fs::read_to_string(table)
            .unwrap_or_default()
            .lines()
            .skip(1)
        {
            if let Some(inode) = line.split_whitespace().nth(9) {
                inodes.insert(inode.to_owned());
            }
        }
    }
    std::fs::read_dir("/proc/self/fd")
        .unwrap()
        .filter_map(|e| std::fs::read_link(e.ok()?.path()).ok())
        .filter_map(|l| {
            let l = l.to_string_lossy().into_owned();
            Some(l.strip_prefix("socket:[")?.strip_suffix(']')?.to_owned())
        })
        .filter(|i| inodes.contains(i))
        .count()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn after_hangup_no_socket_or_allocation_is_left() {
    let _one = ONE_AT_A_TIME.lock().await;
    let alice = person("alice-clean").await;
    let bob = person("bob-clean").await;
    let log_before = std::fs::read_to_string(stack_var("TURN_LOG"))
        .unwrap_or_default()
        .len();
    let before = udp_sockets();
    let (a, b, a_call, mut b_call, services) = call_and_talk(&alice, &bob, IcePolicy::All).await;
    assert!(a.connected && b.connected);
    let during = udp_sockets();
    assert_eq!(
        during,
        before + 2,
        "one socket per side while the call runs"
    );
    a_call.hangup().unwrap();
    let mut a_call = a_call;
    assert!(
        wait_end(&mut a_call, Duration::from_secs(5))
            .await
            .is_some()
    );
    assert!(
        wait_end(&mut b_call, Duration::from_secs(10))
            .await
            .is_some()
    );
    let t0 = Instant::now();
    while udp_sockets() != before {
        assert!(
            t0.elapsed() < Duration::from_secs(2),
            "{} UDP sockets left after hangup (before the call: {before})",
            udp_sockets()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // Both allocations (one per side, TURN is on by default) are deleted on our Refresh
    // with lifetime 0 (coturn logs the deletion about a second later).
    let deadline = Instant::now() + Duration::from_secs(3);
    for who in [&alice.user, &bob.user] {
        assert_allocation_released(who, log_before, deadline).await;
    }
    // The call's handles report the end and nothing more.
    assert!(a_call.next_event().await.is_none());
    assert!(b_call.next_event().await.is_none());

    // No task outlives its call. What stays is the services' own (the sync loop, one task
    // per DM room that listens for calls and runs its calls' media, the room's send queue):
    // a second call in the same room leaves the count of live tasks where the first one left
    // it (the call's own tasks, e.g. the TURN release at hangup, are gone).
    let tasks = || {
        tokio::runtime::Handle::current()
            .metrics()
            .num_alive_tasks()
    };
    let settled = settle_tasks(tasks).await;
    let [a_calls, b_calls] = &services;
    let mut again = a_calls.place_call(&bob.user).await.unwrap();
    let ring = incoming(b_calls, Duration::from_secs(20)).await.unwrap();
    let mut answered = ring.answer().await.unwrap();
    let (mut sa, mut sb) = (Side::default(), Side::default());
    let until = Instant::now() + Duration::from_secs(3);
    tokio::join!(
        run_side(&mut again, 440.0, until, &mut sa),
        run_side(&mut answered, 880.0, until, &mut sb)
    );
    assert!(sa.connected && sb.connected, "the second call connects");
    let during = tasks();
    again.hangup().unwrap();
    assert!(wait_end(&mut again, Duration::from_secs(5)).await.is_some());
    assert!(
        wait_end(&mut answered, Duration::from_secs(10))
            .await
            .is_some()
    );
    let after = settle_tasks(tasks).await;
    eprintln!("live tasks: {settled} between calls, {during} during the second, {after} after");
    assert!(
        after <= settled,
        "{after} tasks live after the second call, {settled} after the first"
    );
    drop(services);
}

/// The count of live tasks once the call's last (the TURN release, up to 1.5 s) are done and
/// it holds still.
async fn settle_tasks(tasks: impl Fn() -> usize) -> usize {
    tokio::time::sleep(Duration::from_secs(2)).await;
    let mut last = tasks();
    for _ in 0..10 {
        tokio::time::sleep(Duration::from_millis(300)).await;
        let now = tasks();
        if now == last {
            return now;
        }
        last = now;
    }
    last
}

//! Person-to-person calls when the network breaks under them, on the stack's real Synapse and
//! coturn. Each person binds its own loopback address (127.0.0.x), and `iptables` rules on
//! `lo` cut exactly the paths a test names:
//!
//! - every path but relay <-> relay is cut mid-call: an ICE restart (`m.call.negotiate`)
//!   moves the call onto the relay and both hear each other again within 5 s of the cut;
//! - every path of one side is cut mid-call: the call ends `ice_timeout` on both sides;
//! - one side can send nothing from the start: the call ends `ice_failed` on both sides.
//!
//! Needs root and netfilter (CI runs as root); without them each test says why and passes.
//! Needs `scripts/stack up`.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]

#[path = "direct/support.rs"]
mod support;

use std::net::IpAddr;
use std::time::{Duration, Instant};

use oracle_calls_client::{DirectCall, DirectCalls, DirectConfig, EndReason};
use oracle_calls_direct::HangupReason;
use oracle_calls_test_support::{Firewall, stack_var};
use support::*;

/// One fault at a time: the rules are per address, but the timings are measured.
static SERIAL: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// Drops UDP on loopback from `src` (any when `None`) to `dst` (any when `None`).
fn drop_udp(src: Option<&str>, dst: Option<&str>) -> Vec<String> {
    let mut r = Firewall::rule(&["-i", "lo", "-p", "udp"]);
    if let Some(s) = src {
        r.extend(Firewall::rule(&["-s", s]));
    }
    if let Some(d) = dst {
        r.extend(Firewall::rule(&["-d", d]));
    }
    r.extend(Firewall::rule(&["-j", "DROP"]));
    r
}

fn config(host: &str) -> DirectConfig {
    DirectConfig {
        host_address: host.parse::<IpAddr>().unwrap(),
        media_connect_timeout: Duration::from_secs(6),
        ice_disconnected_timeout: Duration::from_secs(8),
        ..DirectConfig::default()
    }
}

/// Alice (at `a_host`) calls Bob (at `b_host`); Bob answers.
async fn place(
    a_host: &str,
    b_host: &str,
) -> (DirectCall, DirectCall, [DirectCalls; 2], [Person; 2]) {
    let alice = person("alice-net").await;
    let bob = person("bob-net").await;
    let a_calls = start_with(&alice, config(a_host)).await;
    let b_calls = start_with(&bob, config(b_host)).await;
    let a_call = a_calls.place_call(&bob.user).await.unwrap();
    let ring = incoming(&b_calls, Duration::from_secs(20))
        .await
        .expect("bob's device rings");
    let b_call = ring.answer().await.unwrap();
    (a_call, b_call, [a_calls, b_calls], [alice, bob])
}

/// Both sides send their tone until `until` (or the end).
async fn talk(a: &mut DirectCall, b: &mut DirectCall, until: Instant) -> (Side, Side) {
    let (mut sa, mut sb) = (Side::default(), Side::default());
    tokio::join!(
        run_side(a, 440.0, until, &mut sa),
        run_side(b, 880.0, until, &mut sb)
    );
    (sa, sb)
}

/// The longest silence in `at` (audio heard since `cut`), counted from `last_before` (the
/// last audio before it), and the first audio after that silence: when the far end was heard
/// again.
fn heard_again(at: &[Instant], last_before: Instant) -> Option<(Duration, Instant)> {
    let mut best: Option<(Duration, Instant)> = None;
    let mut prev = last_before;
    for &t in at {
        let gap = t - prev;
        if best.is_none_or(|(g, _)| gap > g) {
            best = Some((gap, t));
        }
        prev = t;
    }
    best
}

fn skip(why: &str) {
    eprintln!("SKIPPED: no firewall to cut the path with ({why})");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn direct_paths_cut_mid_call_come_back_through_the_relay_within_5_s() {
    let _serial = SERIAL.lock().await;
    let (a_host, b_host) = ("127.0.0.3", "127.0.0.4");
    let (mut a_call, mut b_call, _calls, _people) = place(a_host, b_host).await;
    let (sa, sb) = talk(
        &mut a_call,
        &mut b_call,
        Instant::now() + Duration::from_secs(5),
    )
    .await;
    assert!(sa.connected && sb.connected, "the call connects");
    assert_tone(&sa, "alice", 880.0, 440.0);
    assert_tone(&sb, "bob", 440.0, 880.0);
    let direct_before = a_call.stats().direct_datagrams();
    let relayed_before = a_call.stats().relayed_datagrams();
    eprintln!(
        "before the cut: alice direct {direct_before} relayed {relayed_before}; bob direct {} relayed {}",
        b_call.stats().direct_datagrams(),
        b_call.stats().relayed_datagrams()
    );
    assert!(
        direct_before > 100,
        "the call ran on the host path before the cut: {direct_before} direct datagrams"
    );

    // Cut every path but relay <-> relay: each side may send only to the TURN server's port
    // (so neither the other's host address nor the other's relayed address is reachable
    // directly). Whatever pair carried the call (host <-> host by priority) is gone.
    let turn_port = stack_var("STACK_TURN_PORT");
    let only_turn = |host: &str| {
        Firewall::rule(&[
            "-i", "lo", "-p", "udp", "-s", host, "!", "--dport", &turn_port, "-j", "DROP",
        ])
    };
    let cut_rules = vec![only_turn(a_host), only_turn(b_host)];
    let mut cut = match Firewall::insert(cut_rules) {
        Ok(c) => c,
        Err(why) => return skip(&why),
    };
    let cut_at = Instant::now();
    let a_last_before = *sa.audio_at.last().unwrap();
    let b_last_before = *sb.audio_at.last().unwrap();
    eprintln!("cut all UDP of {a_host} and {b_host} on lo but to the TURN port {turn_port}");
    let (sa, sb) = talk(&mut a_call, &mut b_call, cut_at + Duration::from_secs(10)).await;
    eprintln!(
        "after the cut: alice direct {} relayed {}",
        a_call.stats().direct_datagrams(),
        a_call.stats().relayed_datagrams()
    );
    cut.remove();
    assert!(
        sa.ended.is_none() && sb.ended.is_none(),
        "the call went on: {:?} {:?}",
        sa.ended,
        sb.ended
    );
    let (a_gap, a_back) = heard_again(&sa.audio_at, a_last_before).expect("alice heard bob again");
    let (b_gap, b_back) = heard_again(&sb.audio_at, b_last_before).expect("bob heard alice again");
    eprintln!(
        "FAULT host-path-cut: cut -> heard again {:.2} s (alice), {:.2} s (bob); silences \
         {:.2} s / {:.2} s; reconnecting/reconnected alice {}/{}, bob {}/{}",
        (a_back - cut_at).as_secs_f64(),
        (b_back - cut_at).as_secs_f64(),
        a_gap.as_secs_f64(),
        b_gap.as_secs_f64(),
        sa.reconnecting,
        sa.reconnected,
        sb.reconnecting,
        sb.reconnected,
    );
    // The cut hit the path in use: both fell silent...
    assert!(
        a_gap >= Duration::from_secs(1) && b_gap >= Duration::from_secs(1),
        "the cut did not interrupt the call: silences {a_gap:?} / {b_gap:?}"
    );
    // ...and both hear each other again within 5 s of it.
    assert!(
        a_back - cut_at <= Duration::from_secs(5) && b_back - cut_at <= Duration::from_secs(5),
        "audio back within 5 s of the cut: alice {:?}, bob {:?}",
        a_back - cut_at,
        b_back - cut_at
    );
    assert!(
        sa.reconnecting >= 1 && sa.reconnected >= 1,
        "alice saw the path lost and back"
    );
    assert!(
        sb.reconnecting >= 1 && sb.reconnected >= 1,
        "bob saw the path lost and back"
    );
    let relayed = a_call.stats().relayed_datagrams() - relayed_before;
    assert!(
        relayed > 100,
        "after the restart alice's media goes through the relay: {relayed} datagrams"
    );
    // The last second is clean audio both ways, over the relay.
    assert_tone(&sa, "alice", 880.0, 440.0);
    assert_tone(&sb, "bob", 440.0, 880.0);
    a_call.hangup().unwrap();
    let end = wait_end(&mut b_call, Duration::from_secs(10)).await;
    assert!(
        matches!(end, Some(EndReason::RemoteHangup(_))),
        "bob: {end:?}"
    );
}

/// `reason` ended the call on this side, by our hang-up or the other side's.
fn ended_with(end: Option<&EndReason>, reason: &HangupReason) -> bool {
    matches!(end, Some(EndReason::LocalHangup(r) | EndReason::RemoteHangup(r)) if r == reason)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_call_that_loses_every_path_ends_ice_timeout_on_both_sides() {
    let _serial = SERIAL.lock().await;
    let (a_host, b_host) = ("127.0.0.5", "127.0.0.6");
    let (mut a_call, mut b_call, _calls, _people) = place(a_host, b_host).await;
    let (sa, sb) = talk(
        &mut a_call,
        &mut b_call,
        Instant::now() + Duration::from_secs(4),
    )
    .await;
    assert!(sa.connected && sb.connected, "the call connects");
    assert!(!sa.heard.is_empty() && !sb.heard.is_empty());

    // Alice's address loses all UDP, the relay included; Matrix (TCP) still works.
    let rules = vec![drop_udp(Some(a_host), None), drop_udp(None, Some(a_host))];
    let _cut = match Firewall::insert(rules) {
        Ok(c) => c,
        Err(why) => return skip(&why),
    };
    let cut_at = Instant::now();
    // Lost after 2 s, an ICE restart that cannot succeed, `ice_timeout` 8 s after the loss.
    let (sa, sb) = talk(&mut a_call, &mut b_call, cut_at + Duration::from_secs(20)).await;
    let took = cut_at.elapsed();
    eprintln!(
        "FAULT all-paths-cut: alice {:?}, bob {:?}, {:.2} s after the cut",
        sa.ended,
        sb.ended,
        took.as_secs_f64()
    );
    assert!(sa.reconnecting >= 1 && sb.reconnecting >= 1);
    assert!(
        ended_with(sa.ended.as_ref(), &HangupReason::IceTimeout),
        "alice: {:?}",
        sa.ended
    );
    assert!(
        ended_with(sb.ended.as_ref(), &HangupReason::IceTimeout),
        "bob: {:?}",
        sb.ended
    );
    assert!(
        took >= Duration::from_secs(9),
        "not before the restart had its time"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_call_whose_media_never_connects_ends_ice_failed_on_both_sides() {
    let _serial = SERIAL.lock().await;
    let (a_host, b_host) = ("127.0.0.7", "127.0.0.8");
    // Alice's address can send and receive no UDP at all (no host path, no relay).
    let rules = vec![drop_udp(Some(a_host), None), drop_udp(None, Some(a_host))];
    let _cut = match Firewall::insert(rules) {
        Ok(c) => c,
        Err(why) => return skip(&why),
    };
    let (mut a_call, mut b_call, _calls, _people) = place(a_host, b_host).await;
    let answered_at = Instant::now();
    let (sa, sb) = talk(
        &mut a_call,
        &mut b_call,
        answered_at + Duration::from_secs(20),
    )
    .await;
    let took = answered_at.elapsed();
    eprintln!(
        "FAULT no-path: alice {:?}, bob {:?}, {:.2} s after the answer",
        sa.ended,
        sb.ended,
        took.as_secs_f64()
    );
    assert!(!sa.connected && !sb.connected, "media never connected");
    assert!(sa.heard.is_empty() && sb.heard.is_empty());
    assert!(
        ended_with(sa.ended.as_ref(), &HangupReason::IceFailed),
        "alice: {:?}",
        sa.ended
    );
    assert!(
        ended_with(sb.ended.as_ref(), &HangupReason::IceFailed),
        "bob: {:?}",
        sb.ended
    );
}

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]

use rand::SeedableRng as _;
use rand::rngs::StdRng;
use serde_json::json;

use super::*;
use crate::binding::Confirmation;
use crate::signal::SdpStreamMetadata;

const ALICE: &str = "@alice:example.org";
const BOB: &str = "@bob:example.org";

fn ident(user: &str, device: &str, key: u8) -> PartyIdentity {
    PartyIdentity {
        user_id: user.into(),
        device_id: device.into(),
        ed25519: [key; 32],
    }
}

fn alice() -> PartyIdentity {
    ident(ALICE, "ALICEDEV", 1)
}
fn bob() -> PartyIdentity {
    ident(BOB, "BOBDEV", 2)
}
fn bob2() -> PartyIdentity {
    ident(BOB, "BOBPHONE", 3)
}

fn sdp(fp: u8) -> String {
    let hex: Vec<String> = (0..32).map(|_| format!("{fp:02X}")).collect();
    format!(
        "v=0\r\no=- 1 2 IN IP4 127.0.0.1\r\ns=-\r\na=fingerprint:sha-256 {}\r\nm=audio 9 UDP/TLS/RTP/SAVPF 111\r\n",
        hex.join(":")
    )
}

fn desc(fp: u8) -> LocalDescription {
    LocalDescription {
        sdp: sdp(fp),
        sdp_stream_metadata: None,
    }
}

fn auth(from: &PartyIdentity) -> EventAuth {
    EventAuth {
        room_encrypted: true,
        decrypted: true,
        sender: from.user_id.clone(),
        sender_device: Some(from.device_id.clone()),
        sender_ed25519: Some(from.ed25519),
        trust: DeviceTrust::Trusted,
        age: Some(Duration::ZERO),
    }
}

/// One side: its machine, its identity, its RNG.
struct Side {
    m: CallMachine,
    rng: StdRng,
}

impl Side {
    fn new(id: PartyIdentity, peer: &str, now: Instant, seed: u64) -> Self {
        Self::with(CallConfig::new(id.clone(), peer), now, seed)
    }

    fn with(config: CallConfig, now: Instant, seed: u64) -> Self {
        Self {
            m: CallMachine::new(config, now).unwrap(),
            rng: StdRng::seed_from_u64(seed),
        }
    }

    /// Everything queued, up to the timeout.
    fn drain(&mut self) -> Vec<Output> {
        let mut v = vec![];
        loop {
            match self.m.poll_output() {
                Output::Timeout(_) => return v,
                o => v.push(o),
            }
        }
    }

    fn sent(&mut self) -> Vec<CallEvent> {
        self.drain()
            .into_iter()
            .filter_map(|o| match o {
                Output::Send(e) => Some(e),
                _ => None,
            })
            .collect()
    }

    /// Delivers `evs` (sent by `from`) as one sync batch, then returns what came out.
    fn receive(&mut self, now: Instant, evs: &[CallEvent], from: &PartyIdentity) -> Vec<Output> {
        for e in evs {
            self.m.handle_event(now, e.clone(), &auth(from));
        }
        self.m.sync_processed(now);
        self.drain()
    }
}

fn notes(outs: &[Output]) -> Vec<&Notification> {
    outs.iter()
        .filter_map(|o| match o {
            Output::Notify(n) => Some(n),
            _ => None,
        })
        .collect()
}

fn sends(outs: &[Output]) -> Vec<&CallEvent> {
    outs.iter()
        .filter_map(|o| match o {
            Output::Send(e) => Some(e),
            _ => None,
        })
        .collect()
}

fn securities(outs: &[Output]) -> Vec<&SecurityEvent> {
    outs.iter()
        .filter_map(|o| match o {
            Output::Security(e) => Some(e),
            _ => None,
        })
        .collect()
}

fn ended(outs: &[Output]) -> Option<&EndReason> {
    notes(outs).into_iter().find_map(|n| match n {
        Notification::Ended { reason, .. } => Some(reason),
        _ => None,
    })
}

fn rings(outs: &[Output]) -> bool {
    notes(outs)
        .iter()
        .any(|n| matches!(n, Notification::Incoming { .. }))
}

/// Alice places a call to Bob; returns the invite.
fn invite(a: &mut Side, now: Instant) -> CallEvent {
    a.m.place(now, &mut a.rng).unwrap();
    a.m.send_invite(now, desc(0xaa)).unwrap();
    let sent = a.sent();
    assert_eq!(sent.len(), 1);
    sent.into_iter().next().unwrap()
}

/// Alice calls, Bob answers, Alice selects: both Connecting. Returns (alice, bob, now).
fn connecting() -> (Side, Side, Instant) {
    connecting_with(CallConfig::new(alice(), BOB))
}

/// [`connecting`] with Alice's settings.
fn connecting_with(alice_config: CallConfig) -> (Side, Side, Instant) {
    let t = Instant::now();
    let mut a = Side::with(alice_config, t, 1);
    let mut b = Side::new(bob(), ALICE, t, 2);
    let inv = invite(&mut a, t);
    let out = b.receive(t, &[inv], &alice());
    assert!(rings(&out));
    b.m.answer(t, &mut b.rng, desc(0xbb)).unwrap();
    let answer = b.sent();
    let out = a.receive(t, &answer, &bob());
    let sel = sends(&out).into_iter().cloned().collect::<Vec<_>>();
    assert!(
        matches!(&sel[..], [CallEvent::SelectAnswer(s)] if s.selected_party_id.as_str() == "BOBDEV")
    );
    assert!(
        notes(&out)
            .iter()
            .any(|n| matches!(n, Notification::RemoteAnswer { .. }))
    );
    b.receive(t, &sel, &alice());
    assert_eq!(a.m.phase(), Some(Phase::Connecting));
    assert_eq!(b.m.phase(), Some(Phase::Connecting));
    (a, b, t)
}

/// Both connected, confirmations exchanged.
fn connected() -> (Side, Side, Instant) {
    let (mut a, mut b, t) = connecting();
    a.m.media_connected(t);
    b.m.media_connected(t);
    let ca = a.sent();
    let cb = b.sent();
    assert!(matches!(&ca[..], [CallEvent::Confirm(_)]));
    let oa = a.receive(t, &cb, &bob());
    let ob = b.receive(t, &ca, &alice());
    assert!(notes(&oa).contains(&&Notification::KeyConfirmed));
    assert!(notes(&ob).contains(&&Notification::KeyConfirmed));
    assert!(a.m.key_confirmed() && b.m.key_confirmed());
    (a, b, t)
}

#[test]
fn a_whole_call_with_binding_and_confirmation() {
    let (mut a, mut b, t) = connected();
    assert_eq!(a.m.phase(), Some(Phase::Connected));
    a.m.hangup(t).unwrap();
    let out = a.drain();
    assert_eq!(
        ended(&out),
        Some(&EndReason::LocalHangup(HangupReason::UserHangup))
    );
    let hang = sends(&out).into_iter().cloned().collect::<Vec<_>>();
    let out = b.receive(t, &hang, &alice());
    assert_eq!(
        ended(&out),
        Some(&EndReason::RemoteHangup(HangupReason::UserHangup))
    );
    assert_eq!(a.m.phase(), None);
    assert_eq!(b.m.phase(), None);
}

#[test]
fn the_invite_carries_what_the_spec_and_the_binding_need() {
    let t = Instant::now();
    let mut a = Side::new(alice(), BOB, t, 1);
    let CallEvent::Invite(inv) = invite(&mut a, t) else {
        panic!()
    };
    assert_eq!(inv.common.version, Version::V1);
    assert_eq!(inv.common.party_id.as_str(), "ALICEDEV");
    assert_eq!(inv.lifetime_ms, 60_000);
    assert_eq!(inv.invitee.as_deref(), Some(BOB));
    assert!(inv.direct.is_some());
}

#[test]
fn matrixcall_peer_without_extension_calls_without_confirmation() {
    let t = Instant::now();
    let mut b = Side::new(bob(), ALICE, t, 2);
    let content = json!({"call_id":"1796406079445Gff4oXja6LgtI0o7","capabilities":{"m.call.dtmf":false},
        "invitee":BOB,"lifetime":60000,"offer":{"sdp":sdp(0xaa),"type":"offer"},"party_id":"ALICEDEV","version":"1"});
    b.m.handle_raw_event(t, "m.call.invite", &content, &auth(&alice()))
        .unwrap();
    b.m.sync_processed(t);
    assert!(rings(&b.drain()));
    b.m.answer(t, &mut b.rng, desc(0xbb)).unwrap();
    let CallEvent::Answer(ans) = &b.sent()[0] else {
        panic!()
    };
    assert!(ans.direct.is_none(), "no extension towards a standard peer");
    b.m.media_connected(t);
    let out = b.drain();
    assert!(sends(&out).is_empty());
    assert!(notes(&out).contains(&&Notification::Connected {
        key_confirmation_expected: false
    }));
    // No confirmation deadline: a minute later the call still runs.
    b.m.handle_timeout(t + Duration::from_secs(60));
    assert_eq!(b.m.phase(), Some(Phase::Connected));
    // Other event types are ignored; malformed call events are typed errors.
    assert_eq!(
        b.m.handle_raw_event(t, "m.room.message", &json!({}), &auth(&alice())),
        Ok(())
    );
    assert!(
        b.m.handle_raw_event(t, "m.call.hangup", &json!({}), &auth(&alice()))
            .is_err()
    );
}

#[test]
fn an_invite_too_old_never_rings_and_a_ringing_one_expires() {
    let t = Instant::now();
    let mut a = Side::new(alice(), BOB, t, 1);
    let mut b = Side::new(bob(), ALICE, t, 2);
    let inv = invite(&mut a, t);
    let mut old = auth(&alice());
    old.age = Some(Duration::from_secs(57));
    b.m.handle_event(t, inv.clone(), &old);
    b.m.sync_processed(t);
    assert!(!rings(&b.drain()));
    assert_eq!(b.m.phase(), None);

    // 50 s old: rings, for the 10 s that are left.
    let mut b = Side::new(bob(), ALICE, t, 2);
    let mut aged = auth(&alice());
    aged.age = Some(Duration::from_secs(50));
    b.m.handle_event(t, inv, &aged);
    b.m.sync_processed(t);
    assert!(rings(&b.drain()));
    assert_eq!(b.m.poll_timeout(), t + Duration::from_secs(10));
    b.m.handle_timeout(t + Duration::from_secs(10));
    let out = b.drain();
    assert_eq!(ended(&out), Some(&EndReason::InviteExpired));
    assert!(sends(&out).is_empty(), "the callee sends nothing");
}

#[test]
fn a_short_lived_invite_rings_for_the_first_half_of_its_lifetime() {
    let t = Instant::now();
    let mut cfg = CallConfig::new(alice(), BOB);
    cfg.invite_lifetime = Duration::from_secs(3);
    let mut a = Side::with(cfg, t, 1);
    let inv = invite(&mut a, t);
    for (age_ms, rang) in [(0, true), (1400, true), (1500, false), (2900, false)] {
        let mut b = Side::new(bob(), ALICE, t, 2);
        let mut aged = auth(&alice());
        aged.age = Some(Duration::from_millis(age_ms));
        b.m.handle_event(t, inv.clone(), &aged);
        b.m.sync_processed(t);
        assert_eq!(rings(&b.drain()), rang, "age {age_ms} ms");
    }
}

#[test]
fn the_caller_gives_up_after_the_lifetime_with_invite_timeout() {
    let t = Instant::now();
    let mut cfg = CallConfig::new(alice(), BOB);
    cfg.invite_lifetime = Duration::from_secs(3);
    let mut a = Side::with(cfg, t, 1);
    let CallEvent::Invite(inv) = invite(&mut a, t) else {
        panic!()
    };
    assert_eq!(inv.lifetime_ms, 3000);
    a.m.handle_timeout(t + Duration::from_millis(2999));
    assert!(a.drain().is_empty());
    a.m.handle_timeout(t + Duration::from_secs(3));
    let out = a.drain();
    assert!(
        matches!(sends(&out)[..], [CallEvent::Hangup(h)] if h.reason == HangupReason::InviteTimeout)
    );
    assert_eq!(
        ended(&out),
        Some(&EndReason::LocalHangup(HangupReason::InviteTimeout))
    );
}

fn cand(n: u8) -> Candidate {
    Candidate {
        candidate: format!(
            "candidate:{n} 1 udp 1 127.0.0.1 {} typ host",
            5000 + u16::from(n)
        ),
        sdp_mid: Some("0".into()),
        sdp_m_line_index: Some(0),
        username_fragment: None,
    }
}

/// Runs `s`'s timers up to `until`, collecting candidate batches with their time since `t0`.
fn run_until(s: &mut Side, t0: Instant, until: Instant, got: &mut Vec<(Duration, Vec<Candidate>)>) {
    loop {
        let next = s.m.poll_timeout();
        if next > until {
            return;
        }
        s.m.handle_timeout(next);
        for e in s.sent() {
            if let CallEvent::Candidates(c) = e {
                got.push((next - t0, c.candidates));
            }
        }
    }
}

#[test]
fn caller_candidates_are_batched_200ms_then_2s_with_one_end_of_candidates() {
    let t = Instant::now();
    let ms = |n: u64| t + Duration::from_millis(n);
    let mut a = Side::new(alice(), BOB, t, 1);
    let mut got = vec![];
    a.m.place(t, &mut a.rng).unwrap();
    // Gathered before the invite: held until it is out.
    a.m.local_candidate(t, cand(1));
    assert!(a.sent().is_empty());
    a.m.send_invite(t, desc(0xaa)).unwrap();
    a.sent();
    for (at, c) in [
        (50, Some(cand(2))),
        (300, Some(cand(3))),
        (400, Some(cand(4))),
        (500, None),
    ] {
        run_until(&mut a, t, ms(at), &mut got);
        match c {
            Some(c) => a.m.local_candidate(ms(at), c),
            None => a.m.local_gathering_complete(ms(at)),
        }
    }
    run_until(&mut a, t, ms(10_000), &mut got);
    assert_eq!(got.len(), 2, "{got:?}");
    assert_eq!(got[0].0, Duration::from_millis(200));
    assert_eq!(got[0].1, vec![cand(1), cand(2)]);
    assert_eq!(got[1].0, Duration::from_millis(2200));
    assert_eq!(got[1].1.len(), 3);
    assert!(got[1].1[2].is_end_of_candidates());
    // Nothing after end-of-candidates.
    a.m.local_gathering_complete(ms(11_000));
    got.clear();
    run_until(&mut a, t, ms(20_000), &mut got);
    assert!(got.is_empty());
}

#[test]
fn callee_candidates_use_the_500ms_window() {
    let (_, mut b, t) = connecting();
    let ms = |n: u64| t + Duration::from_millis(n);
    let mut got = vec![];
    b.m.local_candidate(ms(10), cand(1));
    run_until(&mut b, t, ms(210), &mut got);
    b.m.local_candidate(ms(210), cand(2));
    run_until(&mut b, t, ms(220), &mut got);
    b.m.local_gathering_complete(ms(220));
    run_until(&mut b, t, ms(10_000), &mut got);
    let times: Vec<_> = got.iter().map(|g| g.0).collect();
    assert_eq!(
        times,
        [Duration::from_millis(200), Duration::from_millis(700)]
    );
    assert!(got[1].1.last().unwrap().is_end_of_candidates());
}

#[test]
fn candidates_before_the_invite_are_buffered_and_delivered_on_answer() {
    let t = Instant::now();
    let mut a = Side::new(alice(), BOB, t, 1);
    let mut b = Side::new(bob(), ALICE, t, 2);
    let inv = invite(&mut a, t);
    let early = CallEvent::Candidates(Candidates {
        common: inv.common().clone(),
        candidates: vec![cand(7), Candidate::end_of_candidates()],
        extra: Map::new(),
    });
    let out = b.receive(t, &[early], &alice());
    assert!(notes(&out).is_empty());
    assert!(rings(&b.receive(t, &[inv], &alice())));
    b.m.answer(t, &mut b.rng, desc(0xbb)).unwrap();
    let out = b.drain();
    assert!(notes(&out).contains(&&Notification::RemoteCandidates(vec![
        cand(7),
        Candidate::end_of_candidates()
    ])));
    // Later ones go straight through.
    let more = CallEvent::Candidates(Candidates {
        common: CallCommon::v1(
            b.m.call_id().unwrap().clone(),
            PartyId::parse("ALICEDEV").unwrap(),
        ),
        candidates: vec![cand(8)],
        extra: Map::new(),
    });
    let out = b.receive(t, &[more], &alice());
    assert!(notes(&out).contains(&&Notification::RemoteCandidates(vec![cand(8)])));
}

#[test]
fn the_caller_takes_candidates_of_the_selected_answerer_only() {
    let t = Instant::now();
    let mut a = Side::new(alice(), BOB, t, 1);
    let mut b = Side::new(bob(), ALICE, t, 2);
    let mut b2 = Side::new(bob2(), ALICE, t, 3);
    let inv = invite(&mut a, t);
    b.receive(t, std::slice::from_ref(&inv), &alice());
    b2.receive(t, std::slice::from_ref(&inv), &alice());
    let cands = |who: &PartyIdentity, n| {
        CallEvent::Candidates(Candidates {
            common: CallCommon::v1(
                inv.common().call_id.clone(),
                PartyId::parse(&who.device_id).unwrap(),
            ),
            candidates: vec![cand(n)],
            extra: Map::new(),
        })
    };
    a.receive(t, &[cands(&bob(), 1)], &bob());
    a.receive(t, &[cands(&bob2(), 2)], &bob2());
    b.m.answer(t, &mut b.rng, desc(0xbb)).unwrap();
    let ans = b.sent();
    let out = a.receive(t, &ans, &bob());
    let delivered: Vec<_> = notes(&out)
        .into_iter()
        .filter(|n| matches!(n, Notification::RemoteCandidates(_)))
        .collect();
    assert_eq!(delivered, [&Notification::RemoteCandidates(vec![cand(1)])]);
    let out = a.receive(t, &[cands(&bob2(), 3)], &bob2());
    assert!(notes(&out).is_empty());
}

#[test]
fn first_answer_wins_and_the_other_device_ends_answered_elsewhere() {
    let t = Instant::now();
    let mut a = Side::new(alice(), BOB, t, 1);
    let mut b = Side::new(bob(), ALICE, t, 2);
    let mut b2 = Side::new(bob2(), ALICE, t, 3);
    let inv = invite(&mut a, t);
    b.receive(t, std::slice::from_ref(&inv), &alice());
    b2.receive(t, std::slice::from_ref(&inv), &alice());
    b.m.answer(t, &mut b.rng, desc(0xbb)).unwrap();
    b2.m.answer(t, &mut b2.rng, desc(0xcc)).unwrap();
    let ans1 = b.sent();
    let ans2 = b2.sent();
    let out = a.receive(t, &ans1, &bob());
    let sel: Vec<CallEvent> = sends(&out).into_iter().cloned().collect();
    let out = a.receive(t, &ans2, &bob2());
    assert!(sends(&out).is_empty(), "a later answer is ignored");
    assert!(notes(&out).is_empty());
    // b2 (answered, not selected) ends silently.
    let out = b2.receive(t, &sel, &alice());
    assert_eq!(ended(&out), Some(&EndReason::AnsweredElsewhere));
    assert!(sends(&out).is_empty());
    // b is selected and stays.
    b.receive(t, &sel, &alice());
    assert_eq!(b.m.phase(), Some(Phase::Connecting));
}

#[test]
fn a_ringing_device_stops_when_another_device_of_ours_answers_or_rejects() {
    for reject in [false, true] {
        let t = Instant::now();
        let mut a = Side::new(alice(), BOB, t, 1);
        let mut b = Side::new(bob(), ALICE, t, 2);
        let mut b2 = Side::new(bob2(), ALICE, t, 3);
        let inv = invite(&mut a, t);
        b.receive(t, std::slice::from_ref(&inv), &alice());
        b2.receive(t, std::slice::from_ref(&inv), &alice());
        if reject {
            b.m.reject(t).unwrap();
        } else {
            b.m.answer(t, &mut b.rng, desc(0xbb)).unwrap();
        }
        let evs = b.sent();
        let out = b2.receive(t, &evs, &bob());
        let want = if reject {
            EndReason::RejectedElsewhere
        } else {
            EndReason::AnsweredElsewhere
        };
        assert_eq!(ended(&out), Some(&want));
        assert!(sends(&out).is_empty());
    }
}

#[test]
fn reject_ends_the_callers_call_after_selecting_it() {
    let t = Instant::now();
    let mut a = Side::new(alice(), BOB, t, 1);
    let mut b = Side::new(bob(), ALICE, t, 2);
    let inv = invite(&mut a, t);
    b.receive(t, &[inv], &alice());
    b.m.reject(t).unwrap();
    let out = b.drain();
    assert_eq!(ended(&out), Some(&EndReason::LocalReject));
    let rej: Vec<CallEvent> = sends(&out).into_iter().cloned().collect();
    assert!(matches!(rej[..], [CallEvent::Reject(_)]));
    let out = a.receive(t, &rej, &bob());
    assert!(
        matches!(sends(&out)[..], [CallEvent::SelectAnswer(s)] if s.selected_party_id.as_str() == "BOBDEV")
    );
    assert_eq!(ended(&out), Some(&EndReason::RemoteReject));
}

#[test]
fn a_version_0_invite_is_refused_with_a_hangup() {
    let t = Instant::now();
    let mut b = Side::new(bob(), ALICE, t, 2);
    let content = json!({"call_id":"old1","party_id":"ALICEDEV","version":0,"lifetime":60000,
        "offer":{"type":"offer","sdp":sdp(0xaa)}});
    b.m.handle_raw_event(t, "m.call.invite", &content, &auth(&alice()))
        .unwrap();
    b.m.sync_processed(t);
    b.drain();
    b.m.reject(t).unwrap();
    assert!(matches!(b.sent()[..], [CallEvent::Hangup(_)]));
}

#[test]
fn a_ringing_call_refused_as_busy_sends_user_busy() {
    let t = Instant::now();
    let mut a = Side::new(alice(), BOB, t, 1);
    let mut b = Side::new(bob(), ALICE, t, 2);
    let inv = invite(&mut a, t);
    b.m.handle_event(t, inv, &auth(&alice()));
    b.m.sync_processed(t);
    assert!(rings(&b.drain()));
    b.m.refuse_busy(t).unwrap();
    let out = b.drain();
    assert!(
        matches!(sends(&out)[..], [CallEvent::Hangup(h)] if h.reason == HangupReason::UserBusy)
    );
    assert_eq!(
        ended(&out),
        Some(&EndReason::LocalHangup(HangupReason::UserBusy))
    );
    assert!(b.m.refuse_busy(t).is_err(), "nothing rings any more");
}

#[test]
fn busy_a_second_invite_during_a_call_gets_user_busy() {
    let (_, mut b, t) = connected();
    let second = CallEvent::Invite(Invite {
        common: CallCommon::v1(
            CallId::parse("zzz").unwrap(),
            PartyId::parse("ALICEDEV").unwrap(),
        ),
        offer_sdp: sdp(0xaa),
        lifetime_ms: 60_000,
        invitee: None,
        sdp_stream_metadata: None,
        direct: None,
        extra: Map::new(),
    });
    let out = b.receive(t, &[second], &alice());
    assert!(!rings(&out));
    assert!(matches!(sends(&out)[..], [CallEvent::Hangup(h)]
        if h.reason == HangupReason::UserBusy && h.common.call_id.as_str() == "zzz"));
    assert_eq!(b.m.phase(), Some(Phase::Connected));
    // The caller of the second call hears user_busy.
    let t = Instant::now();
    let mut a = Side::new(alice(), BOB, t, 9);
    let inv = invite(&mut a, t);
    let busy = CallEvent::Hangup(Hangup {
        common: CallCommon::v1(
            inv.common().call_id.clone(),
            PartyId::parse("BOBDEV").unwrap(),
        ),
        reason: HangupReason::UserBusy,
        extra: Map::new(),
    });
    let out = a.receive(t, &[busy], &bob());
    assert_eq!(
        ended(&out),
        Some(&EndReason::RemoteHangup(HangupReason::UserBusy))
    );
}

#[test]
fn glare_while_preparing_cancels_ours_and_answers_theirs() {
    let t = Instant::now();
    let mut a = Side::new(alice(), BOB, t, 1);
    let mut b = Side::new(bob(), ALICE, t, 2);
    a.m.place(t, &mut a.rng).unwrap();
    let theirs = invite(&mut b, t);
    let out = a.receive(t, std::slice::from_ref(&theirs), &bob());
    assert_eq!(
        ended(&out),
        Some(&EndReason::LocalHangup(HangupReason::replaced()))
    );
    assert!(sends(&out).is_empty(), "our invite never went out");
    assert!(notes(&out).iter().any(
        |n| matches!(n, Notification::Incoming { auto_answer: true, call_id, .. } if call_id == &theirs.common().call_id)
    ));
    assert_eq!(
        a.m.send_invite(t, desc(0xaa)),
        Err(CallError::WrongState {
            operation: "send_invite",
            state: "ringing"
        })
    );
}

#[test]
fn glare_after_both_invites_went_out_keeps_the_lesser_call_id_on_both_sides() {
    for seed in 0..8u64 {
        let t = Instant::now();
        let mut a = Side::new(alice(), BOB, t, seed * 2 + 100);
        let mut b = Side::new(bob(), ALICE, t, seed * 2 + 101);
        let ia = invite(&mut a, t);
        let ib = invite(&mut b, t);
        let (ida, idb) = (ia.common().call_id.clone(), ib.common().call_id.clone());
        let oa = a.receive(t, &[ib], &bob());
        let ob = b.receive(t, &[ia], &alice());
        let (winner, loser_out, winner_out, loser_id) = if ida < idb {
            (ida.clone(), &ob, &oa, idb.clone())
        } else {
            (idb.clone(), &oa, &ob, ida.clone())
        };
        // The loser hangs up its own call with `replaced` and auto-answers the winner.
        assert!(matches!(sends(loser_out)[..], [CallEvent::Hangup(h)]
            if h.reason == HangupReason::replaced() && h.common.call_id == loser_id));
        assert!(notes(loser_out).iter().any(|n| matches!(n,
            Notification::Incoming { auto_answer: true, call_id, .. } if *call_id == winner)));
        // The winner ignores the loser's invite.
        assert!(sends(winner_out).is_empty() && notes(winner_out).is_empty());
        // Complete the call: it is one call, with the lesser id, binding confirmed.
        let (mut w, mut l, wid, lid) = if ida < idb {
            (a, b, alice(), bob())
        } else {
            (b, a, bob(), alice())
        };
        l.m.answer(t, &mut l.rng, desc(0xbb)).unwrap();
        let ans = l.sent();
        let out = w.receive(t, &ans, &lid);
        let sel: Vec<CallEvent> = sends(&out).into_iter().cloned().collect();
        l.receive(t, &sel, &wid);
        assert_eq!(w.m.call_id(), Some(&winner));
        assert_eq!(l.m.call_id(), Some(&winner));
        w.m.media_connected(t);
        l.m.media_connected(t);
        let cw = w.sent();
        let cl = l.sent();
        w.receive(t, &cl, &lid);
        l.receive(t, &cw, &wid);
        assert!(w.m.key_confirmed() && l.m.key_confirmed(), "seed {seed}");
        // The loser's own `replaced` hangup reaches the winner: not its call, ignored.
    }
}

#[test]
fn negotiate_only_from_the_selected_party_and_fingerprint_pinned() {
    let (mut a, mut b, t) = connected();
    let call_id = a.m.call_id().unwrap().clone();
    let nego = |party: &str, ty: SdpType, fp: u8| {
        CallEvent::Negotiate(Negotiate {
            common: CallCommon::v1(call_id.clone(), PartyId::parse(party).unwrap()),
            sdp_type: ty,
            sdp: sdp(fp),
            lifetime_ms: 10_000,
            sdp_stream_metadata: None,
            extra: Map::new(),
        })
    };
    // From Bob's other device: ignored.
    let out = a.receive(t, &[nego("BOBPHONE", SdpType::Offer, 0xcc)], &bob2());
    assert!(out.is_empty());
    // An answer without our offer: ignored.
    let out = a.receive(t, &[nego("BOBDEV", SdpType::Answer, 0xbb)], &bob());
    assert!(out.is_empty());
    // ICE restart from Alice: Bob gets the offer and answers.
    a.m.renegotiate(t, desc(0xaa)).unwrap();
    let offer = a.sent();
    let out = b.receive(t, &offer, &alice());
    assert!(matches!(
        notes(&out)[..],
        [Notification::RemoteRenegotiation {
            sdp_type: SdpType::Offer,
            ..
        }]
    ));
    b.m.answer_renegotiation(t, desc(0xbb)).unwrap();
    let answer = b.sent();
    let out = a.receive(t, &answer, &bob());
    assert!(matches!(
        notes(&out)[..],
        [Notification::RemoteRenegotiation {
            sdp_type: SdpType::Answer,
            ..
        }]
    ));
    // A renegotiation that swaps Bob's certificate ends the call.
    let out = a.receive(t, &[nego("BOBDEV", SdpType::Offer, 0xcc)], &bob());
    assert_eq!(
        securities(&out),
        [&SecurityEvent::FingerprintChanged { call_id }]
    );
    assert!(
        matches!(sends(&out)[..], [CallEvent::Hangup(h)] if h.reason == HangupReason::UnknownError)
    );
}

#[test]
fn negotiate_collision_the_callee_yields_the_caller_does_not() {
    let (mut a, mut b, t) = connected();
    a.m.renegotiate(t, desc(0xaa)).unwrap();
    b.m.renegotiate(t, desc(0xbb)).unwrap();
    let oa = a.sent();
    let ob = b.sent();
    let out = a.receive(t, &ob, &bob());
    assert!(out.is_empty(), "caller keeps its offer");
    let out = b.receive(t, &oa, &alice());
    assert!(matches!(
        notes(&out)[..],
        [Notification::RemoteRenegotiation {
            sdp_type: SdpType::Offer,
            ..
        }]
    ));
}

#[test]
fn ice_failed_when_media_never_connected_ice_timeout_when_it_had() {
    let (mut a, _, t) = connecting();
    a.m.media_failed(t);
    let out = a.drain();
    assert!(
        matches!(sends(&out)[..], [CallEvent::Hangup(h)] if h.reason == HangupReason::IceFailed)
    );

    let (mut a, _, t) = connected();
    a.m.media_failed(t);
    let out = a.drain();
    assert!(
        matches!(sends(&out)[..], [CallEvent::Hangup(h)] if h.reason == HangupReason::IceTimeout)
    );

    // Never connecting at all: the connect deadline.
    let (mut a, _, t) = connecting();
    a.m.handle_timeout(t + MEDIA_CONNECT_TIMEOUT);
    assert_eq!(
        ended(&a.drain()),
        Some(&EndReason::LocalHangup(HangupReason::IceFailed))
    );
}

#[test]
fn the_connect_restart_and_disconnected_timeouts_are_settings() {
    let mut config = CallConfig::new(alice(), BOB);
    config.media_connect_timeout = Duration::from_secs(4);
    config.ice_restart_delay = Duration::from_millis(100);
    config.ice_disconnected_timeout = Duration::from_secs(6);
    let (mut a, _, t) = connecting_with(config.clone());
    a.m.handle_timeout(t + Duration::from_millis(3999));
    assert!(ended(&a.drain()).is_none());
    a.m.handle_timeout(t + Duration::from_secs(4));
    assert_eq!(
        ended(&a.drain()),
        Some(&EndReason::LocalHangup(HangupReason::IceFailed))
    );

    // (No key confirmation comes from Bob here: its own deadline is put out of the way.)
    config.key_confirmation_timeout = Duration::from_secs(60);
    let (mut a, _, t) = connecting_with(config);
    a.m.media_connected(t);
    a.drain();
    a.m.media_disconnected(t);
    assert_eq!(a.m.poll_timeout(), t + Duration::from_millis(100));
    a.m.handle_timeout(t + Duration::from_millis(100));
    assert!(notes(&a.drain()).contains(&&Notification::IceRestartNeeded));
    a.m.handle_timeout(t + Duration::from_millis(5999));
    assert!(ended(&a.drain()).is_none());
    a.m.handle_timeout(t + Duration::from_secs(6));
    assert_eq!(
        ended(&a.drain()),
        Some(&EndReason::LocalHangup(HangupReason::IceTimeout))
    );
}

#[test]
fn lost_media_asks_for_an_ice_restart_then_times_out() {
    let (mut a, _, t) = connected();
    a.m.media_disconnected(t);
    assert_eq!(a.m.poll_timeout(), t + ICE_RESTART_DELAY);
    a.m.handle_timeout(t + ICE_RESTART_DELAY);
    assert!(notes(&a.drain()).contains(&&Notification::IceRestartNeeded));
    // Back within the window: no hang-up.
    a.m.media_connected(t + Duration::from_secs(4));
    a.m.handle_timeout(t + ICE_DISCONNECTED_TIMEOUT);
    assert!(a.drain().is_empty());
    assert_eq!(a.m.phase(), Some(Phase::Connected));
    // Lost for good.
    let t2 = t + Duration::from_secs(100);
    a.m.media_disconnected(t2);
    a.m.handle_timeout(t2 + ICE_RESTART_DELAY);
    a.drain();
    a.m.handle_timeout(t2 + ICE_DISCONNECTED_TIMEOUT);
    let out = a.drain();
    assert!(
        matches!(sends(&out)[..], [CallEvent::Hangup(h)] if h.reason == HangupReason::IceTimeout)
    );
}

#[test]
fn a_missing_key_confirmation_ends_the_call_after_the_deadline() {
    let (mut a, _, t) = connecting();
    a.m.media_connected(t);
    let out = a.drain();
    assert!(notes(&out).contains(&&Notification::Connected {
        key_confirmation_expected: true
    }));
    let call_id = a.m.call_id().unwrap().clone();
    a.m.handle_timeout(t + Duration::from_millis(4999));
    assert!(a.drain().is_empty());
    a.m.handle_timeout(t + DEFAULT_KEY_CONFIRMATION_TIMEOUT);
    let out = a.drain();
    assert_eq!(
        securities(&out),
        [&SecurityEvent::KeyConfirmationMissing {
            call_id: call_id.clone()
        }]
    );
    assert!(
        matches!(sends(&out)[..], [CallEvent::Hangup(h)] if h.reason == HangupReason::UnknownError)
    );
    assert_eq!(
        ended(&out),
        Some(&EndReason::Security(
            SecurityEvent::KeyConfirmationMissing { call_id }
        ))
    );
}

#[test]
fn a_wrong_key_confirmation_ends_the_call() {
    let (mut a, mut b, t) = connecting();
    a.m.media_connected(t);
    b.m.media_connected(t);
    a.drain();
    let CallEvent::Confirm(mut c) = b.sent().remove(0) else {
        panic!()
    };
    let mut bytes = *c.mac.as_bytes();
    bytes[0] ^= 0x80;
    c.mac = Confirmation::from_bytes(bytes);
    let call_id = c.common.call_id.clone();
    let out = a.receive(t, &[CallEvent::Confirm(c)], &bob());
    assert_eq!(
        securities(&out),
        [&SecurityEvent::KeyConfirmationWrong { call_id }]
    );
    assert!(
        matches!(sends(&out)[..], [CallEvent::Hangup(h)] if h.reason == HangupReason::UnknownError)
    );
    assert_eq!(a.m.phase(), None);
}

#[test]
fn a_confirmation_from_a_binding_of_other_identities_is_wrong() {
    // Bob's answer is taken as coming from a device with another Ed25519 key than the one
    // Bob's side binds (an impostor, or a trust-store mismatch): the confirmations differ.
    let t = Instant::now();
    let mut a = Side::new(alice(), BOB, t, 1);
    let mut b = Side::new(bob(), ALICE, t, 2);
    let inv = invite(&mut a, t);
    b.receive(t, &[inv], &alice());
    b.m.answer(t, &mut b.rng, desc(0xbb)).unwrap();
    let ans = b.sent();
    let mut other_key = auth(&bob());
    other_key.sender_ed25519 = Some([9; 32]);
    for e in &ans {
        a.m.handle_event(t, e.clone(), &other_key);
    }
    let sel = a.sent();
    b.receive(t, &sel, &alice());
    a.m.media_connected(t);
    b.m.media_connected(t);
    a.sent();
    let cb = b.sent();
    let out = a.receive(t, &cb, &bob());
    assert!(matches!(
        securities(&out)[..],
        [SecurityEvent::KeyConfirmationWrong { .. }]
    ));
}

#[test]
fn an_answer_without_fingerprint_fails_the_binding() {
    let t = Instant::now();
    let mut a = Side::new(alice(), BOB, t, 1);
    let mut b = Side::new(bob(), ALICE, t, 2);
    let inv = invite(&mut a, t);
    b.receive(t, &[inv], &alice());
    // Our own answer without a fingerprint: refused before anything is sent.
    let bad = LocalDescription {
        sdp: "v=0\r\n".into(),
        sdp_stream_metadata: None,
    };
    assert_eq!(
        b.m.answer(t, &mut b.rng, bad),
        Err(CallError::Binding(BindingError::MissingFingerprint))
    );
    assert!(b.sent().is_empty());
    // A peer's answer without one ends the caller's call.
    b.m.answer(t, &mut b.rng, desc(0xbb)).unwrap();
    let CallEvent::Answer(mut ans) = b.sent().remove(0) else {
        panic!()
    };
    ans.answer_sdp = "v=0\r\n".into();
    let out = a.receive(t, &[CallEvent::Answer(ans)], &bob());
    assert!(matches!(
        securities(&out)[..],
        [SecurityEvent::BindingFailed {
            error: BindingError::MissingFingerprint,
            ..
        }]
    ));
}

#[test]
fn require_binding_refuses_standard_peers() {
    let t = Instant::now();
    let mut cfg = CallConfig::new(bob(), ALICE);
    cfg.require_binding = true;
    let mut b = Side::with(cfg, t, 2);
    let content = json!({"call_id":"plain1","party_id":"ALICEDEV","version":"1","lifetime":60000,
        "offer":{"type":"offer","sdp":sdp(0xaa)}});
    b.m.handle_raw_event(t, "m.call.invite", &content, &auth(&alice()))
        .unwrap();
    b.m.sync_processed(t);
    let out = b.drain();
    assert!(!rings(&out));
    assert!(matches!(
        securities(&out)[..],
        [SecurityEvent::BindingAbsent { .. }]
    ));
    // And as caller: an answer without the extension.
    let mut cfg = CallConfig::new(alice(), BOB);
    cfg.require_binding = true;
    let mut a = Side::with(cfg, t, 1);
    let inv = invite(&mut a, t);
    let ans = json!({"call_id": inv.common().call_id.as_str(), "party_id":"BOBDEV","version":"1",
        "answer":{"type":"answer","sdp":sdp(0xbb)}});
    a.m.handle_raw_event(t, "m.call.answer", &ans, &auth(&bob()))
        .unwrap();
    let out = a.drain();
    assert!(matches!(
        securities(&out)[..],
        [SecurityEvent::BindingAbsent { .. }]
    ));
    assert_eq!(a.m.phase(), None);
}

#[test]
fn every_unauthentic_invite_is_refused_with_its_typed_event() {
    let t = Instant::now();
    let mut a = Side::new(alice(), BOB, t, 1);
    let inv = invite(&mut a, t);
    type Tamper = fn(&mut EventAuth);
    let cases: Vec<(Tamper, SecurityEvent)> = vec![
        (
            |x| x.room_encrypted = false,
            SecurityEvent::UnencryptedRoom {
                event_type: "m.call.invite".into(),
                sender: ALICE.into(),
            },
        ),
        (
            |x| x.decrypted = false,
            SecurityEvent::PlaintextCallEvent {
                event_type: "m.call.invite".into(),
                sender: ALICE.into(),
            },
        ),
        (
            |x| x.sender = "@mallory:example.org".into(),
            SecurityEvent::UnexpectedSender {
                sender: "@mallory:example.org".into(),
            },
        ),
        (
            |x| x.sender_device = None,
            SecurityEvent::UnknownSenderDevice {
                sender: ALICE.into(),
            },
        ),
        (
            |x| x.sender_device = Some("OTHERDEV".into()),
            SecurityEvent::PartyIdMismatch {
                sender: ALICE.into(),
                device: "OTHERDEV".into(),
                party_id: "ALICEDEV".into(),
            },
        ),
        (
            |x| x.trust = DeviceTrust::Untrusted,
            SecurityEvent::UntrustedDevice {
                sender: ALICE.into(),
                device: "ALICEDEV".into(),
            },
        ),
    ];
    for (tamper, want) in cases {
        let mut b = Side::new(bob(), ALICE, t, 2);
        let mut x = auth(&alice());
        tamper(&mut x);
        b.m.handle_event(t, inv.clone(), &x);
        b.m.sync_processed(t);
        let out = b.drain();
        assert!(!rings(&out), "{want:?}");
        assert_eq!(securities(&out), [&want]);
        assert_eq!(b.m.phase(), None);
        // The real invite still rings afterwards: the refusal did not burn its call id.
        assert!(
            rings(&b.receive(t, std::slice::from_ref(&inv), &alice())),
            "{want:?}"
        );
    }
}

#[test]
fn unauthentic_events_cannot_end_or_steer_a_call() {
    let (mut a, mut b, t) = connected();
    let call_id = a.m.call_id().unwrap().clone();
    let hang = CallEvent::Hangup(Hangup {
        common: CallCommon::v1(call_id.clone(), PartyId::parse("BOBDEV").unwrap()),
        reason: HangupReason::UserHangup,
        extra: Map::new(),
    });
    let mut plain = auth(&bob());
    plain.decrypted = false;
    a.m.handle_event(t, hang.clone(), &plain);
    assert_eq!(a.m.phase(), Some(Phase::Connected));
    assert!(matches!(
        securities(&a.drain())[..],
        [SecurityEvent::PlaintextCallEvent { .. }]
    ));
    // A trusted device of Bob that is not the selected party cannot hang up either.
    let other = CallEvent::Hangup(Hangup {
        common: CallCommon::v1(call_id, PartyId::parse("BOBPHONE").unwrap()),
        reason: HangupReason::UserHangup,
        extra: Map::new(),
    });
    let out = a.receive(t, &[other], &bob2());
    assert!(out.is_empty());
    assert_eq!(a.m.phase(), Some(Phase::Connected));
    // Our own events echoed back by the server are ignored without a word.
    b.m.hangup(t).unwrap();
    let evs = b.sent();
    let mut echo = Side::new(bob(), ALICE, t, 5);
    let out = echo.receive(t, &evs, &bob());
    assert!(out.is_empty());
}

#[test]
fn a_replayed_invite_is_refused() {
    let t = Instant::now();
    let mut a = Side::new(alice(), BOB, t, 1);
    let mut b = Side::new(bob(), ALICE, t, 2);
    let inv = invite(&mut a, t);
    b.receive(t, std::slice::from_ref(&inv), &alice());
    b.m.reject(t).unwrap();
    b.drain();
    let out = b.receive(t, std::slice::from_ref(&inv), &alice());
    assert!(!rings(&out));
    assert_eq!(
        securities(&out),
        [&SecurityEvent::ReplayedInvite {
            call_id: inv.common().call_id.clone()
        }]
    );
    // A duplicate while it still rings is refused the same way.
    let t = Instant::now();
    let mut a = Side::new(alice(), BOB, t, 3);
    let mut b = Side::new(bob(), ALICE, t, 4);
    let inv = invite(&mut a, t);
    b.receive(t, std::slice::from_ref(&inv), &alice());
    let out = b.receive(t, std::slice::from_ref(&inv), &alice());
    assert!(matches!(
        securities(&out)[..],
        [SecurityEvent::ReplayedInvite { .. }]
    ));
    assert_eq!(b.m.phase(), Some(Phase::Ringing));
}

#[test]
fn an_invite_hung_up_in_the_same_sync_batch_never_rings() {
    let t = Instant::now();
    let mut a = Side::new(alice(), BOB, t, 1);
    let mut b = Side::new(bob(), ALICE, t, 2);
    let inv = invite(&mut a, t);
    a.m.hangup(t).unwrap();
    let hang = a.sent();
    let mut batch = vec![inv];
    batch.extend(hang);
    let out = b.receive(t, &batch, &alice());
    assert!(!rings(&out));
    assert_eq!(
        ended(&out),
        Some(&EndReason::RemoteHangup(HangupReason::UserHangup))
    );
}

#[test]
fn invites_for_someone_else_or_from_our_other_device_do_not_ring() {
    let t = Instant::now();
    let mut a = Side::new(alice(), "@carol:example.org", t, 1);
    let inv = invite(&mut a, t);
    let mut b = Side::new(bob(), ALICE, t, 2);
    assert!(!rings(&b.receive(t, &[inv], &alice())));
    // Bob calls from his phone: his laptop does not ring.
    let mut phone = Side::new(bob2(), ALICE, t, 3);
    let inv = invite(&mut phone, t);
    assert!(b.receive(t, &[inv], &bob2()).is_empty());
}

#[test]
fn api_misuse_is_a_typed_error_and_sends_nothing() {
    let t = Instant::now();
    let mut a = Side::new(alice(), BOB, t, 1);
    assert_eq!(
        a.m.answer(t, &mut StdRng::seed_from_u64(0), desc(1)),
        Err(CallError::WrongState {
            operation: "answer",
            state: "idle"
        })
    );
    assert!(a.m.hangup(t).is_err());
    assert!(a.m.reject(t).is_err());
    assert!(a.m.renegotiate(t, desc(1)).is_err());
    a.m.place(t, &mut StdRng::seed_from_u64(0)).unwrap();
    assert_eq!(
        a.m.place(t, &mut StdRng::seed_from_u64(0)),
        Err(CallError::Busy)
    );
    assert_eq!(
        a.m.send_invite(
            t,
            LocalDescription {
                sdp: "v=0\r\n".into(),
                sdp_stream_metadata: None
            }
        ),
        Err(CallError::Binding(BindingError::MissingFingerprint))
    );
    assert!(a.sent().is_empty());
    // Hanging up while preparing sends nothing either.
    a.m.hangup(t).unwrap();
    let out = a.drain();
    assert!(sends(&out).is_empty());
    assert!(ended(&out).is_some());
    assert!(CallMachine::new(CallConfig::new(ident(ALICE, "", 1), BOB), t).is_err());
}

#[test]
fn metadata_changes_reach_the_app_from_the_selected_party_only() {
    let (mut a, _, t) = connected();
    let call_id = a.m.call_id().unwrap().clone();
    let mut md = SdpStreamMetadata::new();
    md.insert(
        "s".into(),
        crate::signal::StreamMetadata {
            purpose: crate::signal::StreamPurpose::UserMedia,
            audio_muted: Some(true),
            video_muted: None,
        },
    );
    let ev = |party: &str| {
        CallEvent::SdpStreamMetadataChanged(crate::signal::SdpStreamMetadataChanged {
            common: CallCommon::v1(call_id.clone(), PartyId::parse(party).unwrap()),
            sdp_stream_metadata: md.clone(),
            extra: Map::new(),
        })
    };
    assert!(a.receive(t, &[ev("BOBPHONE")], &bob2()).is_empty());
    let out = a.receive(t, &[ev("BOBDEV")], &bob());
    assert_eq!(
        notes(&out),
        [&Notification::RemoteStreamMetadata(md.clone())]
    );
}

//! The peer driven with no network: two peers' datagrams carried between them in memory,
//! time simulated.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]

use std::time::Duration;

use oracle_calls_media::{goertzel_power, sine_tone};

use super::*;

fn addr(s: &str) -> SocketAddr {
    s.parse().unwrap()
}

/// What one side saw while [`run`] pumped.
#[derive(Default)]
struct Seen {
    ice_connected: usize,
    ice_disconnected: usize,
    connected: Option<(DtlsFingerprint, DtlsFingerprint)>,
    heard: Vec<i16>,
    failed: Option<Failure>,
    closed: bool,
}

/// Drains `peer`, putting its datagrams in `wire`; returns its next timeout.
fn drain(peer: &mut Peer, seen: &mut Seen, wire: &mut Vec<Transmit>) -> Option<Instant> {
    loop {
        match peer.poll_output() {
            Output::Transmit(t) => wire.push(t),
            Output::Timeout(t) => return Some(t),
            Output::Closed => {
                seen.closed = true;
                return None;
            }
            Output::Event(PeerEvent::IceConnected) => seen.ice_connected += 1,
            Output::Event(PeerEvent::IceDisconnected) => seen.ice_disconnected += 1,
            Output::Event(PeerEvent::Connected { local, remote }) => {
                seen.connected = Some((local, remote));
            }
            Output::Event(PeerEvent::AudioFrame(pcm)) => seen.heard.extend(pcm),
            Output::Event(PeerEvent::Failed(f)) => seen.failed = Some(f),
        }
    }
}

/// Runs both peers for `dur` of simulated time in 5 ms steps, each sending its tone every
/// 20 ms; datagrams arrive one step after they were sent.
fn run(a: &mut Peer, b: &mut Peer, now: &mut Instant, dur: Duration) -> (Seen, Seen) {
    run_on(a, b, now, dur, true)
}

/// [`run`], with the path between the two cut (every datagram lost) unless `path_up`.
fn run_on(
    a: &mut Peer,
    b: &mut Peer,
    now: &mut Instant,
    dur: Duration,
    path_up: bool,
) -> (Seen, Seen) {
    let (mut sa, mut sb) = (Seen::default(), Seen::default());
    let end = *now + dur;
    let mut samples = 0u64;
    let mut step = 0u32;
    while *now < end {
        let (mut wa, mut wb) = (Vec::new(), Vec::new());
        drain(a, &mut sa, &mut wa);
        drain(b, &mut sb, &mut wb);
        *now += Duration::from_millis(5);
        if !path_up {
            wa.clear();
            wb.clear();
        }
        for t in wa {
            b.handle_input(
                *now,
                Input::Receive {
                    source: t.source,
                    destination: t.destination,
                    contents: &t.contents,
                },
            )
            .unwrap();
        }
        for t in wb {
            a.handle_input(
                *now,
                Input::Receive {
                    source: t.source,
                    destination: t.destination,
                    contents: &t.contents,
                },
            )
            .unwrap();
        }
        a.handle_input(*now, Input::Timeout).unwrap();
        b.handle_input(*now, Input::Timeout).unwrap();
        step += 1;
        if step.is_multiple_of(4) {
            let _ = a.send_pcm(*now, &sine_tone(440.0, 8000.0, samples, 960));
            let _ = b.send_pcm(*now, &sine_tone(880.0, 8000.0, samples, 960));
            samples += 960;
        }
    }
    let (mut wa, mut wb) = (Vec::new(), Vec::new());
    drain(a, &mut sa, &mut wa);
    drain(b, &mut sb, &mut wb);
    (sa, sb)
}

fn call() -> (Peer, Peer, Instant) {
    let now = Instant::now();
    let (mut a, offer) = Peer::offer(now, &[addr("10.0.0.1:1000")]).unwrap();
    let (b, answer) = Peer::answer(&offer, now, &[addr("10.0.0.2:2000")]).unwrap();
    a.accept_answer(&answer).unwrap();
    (a, b, now)
}

#[test]
fn every_peer_is_dtls_1_2_with_fingerprint_checks_on() {
    let c = rtc_config();
    assert_eq!(c.dtls_version(), DtlsVersion::Dtls12);
    assert!(c.fingerprint_verification());
}

#[test]
fn the_answer_carries_our_msid_not_the_offerers() {
    let now = Instant::now();
    let (a, offer) = Peer::offer(now, &[addr("10.0.0.1:1000")]).unwrap();
    let (b, answer) = Peer::answer(&offer, now, &[addr("10.0.0.2:2000")]).unwrap();
    assert_eq!(audio_msid_stream(&offer), Some(a.stream_id()));
    assert_eq!(audio_msid_stream(&answer), Some(b.stream_id()));
    assert_ne!(audio_msid_stream(&offer), audio_msid_stream(&answer));
    assert!(!answer.contains(a.stream_id()), "{answer}");
    // The candidates and our own fingerprint are in the SDP.
    assert!(offer.contains("10.0.0.1 1000 typ host"));
    assert!(answer.contains("10.0.0.2 2000 typ host"));
    assert_eq!(fingerprint_of_sdp(&answer).unwrap(), b.local_fingerprint());
    assert_eq!((a.role(), b.role()), (Role::Offerer, Role::Answerer));
}

#[test]
fn two_peers_connect_and_hear_each_others_tone() {
    let (mut a, mut b, mut now) = call();
    let (sa, sb) = run(&mut a, &mut b, &mut now, Duration::from_secs(2));
    assert_eq!(sa.ice_connected, 1);
    assert_eq!(sb.ice_connected, 1);
    let (a_local, a_remote) = sa.connected.unwrap();
    let (b_local, b_remote) = sb.connected.unwrap();
    assert_eq!(a_local, b_remote);
    assert_eq!(b_local, a_remote);
    assert_ne!(a_local, b_local);
    assert_eq!(a_local, a.local_fingerprint());
    let tail = |h: &[i16]| h[h.len() - 24_000..].to_vec();
    assert!(sa.heard.len() > 48_000, "a heard {}", sa.heard.len());
    assert!(sb.heard.len() > 48_000, "b heard {}", sb.heard.len());
    assert!(goertzel_power(&tail(&sa.heard), 880.0) > 0.5);
    assert!(goertzel_power(&tail(&sa.heard), 440.0) < 0.05);
    assert!(goertzel_power(&tail(&sb.heard), 440.0) > 0.5);
    assert!(goertzel_power(&tail(&sb.heard), 880.0) < 0.05);
}

#[test]
fn a_tampered_fingerprint_fails_the_call_before_any_audio() {
    let now = Instant::now();
    let (mut a, offer) = Peer::offer(now, &[addr("10.0.0.1:1000")]).unwrap();
    let (mut b, answer) = Peer::answer(&offer, now, &[addr("10.0.0.2:2000")]).unwrap();
    let real = fingerprint_of_sdp(&answer).unwrap().to_string();
    let mut forged = real.clone();
    let flip = if forged.starts_with('0') { "1" } else { "0" };
    forged.replace_range(0..1, flip);
    a.accept_answer(&answer.replace(&real, &forged)).unwrap();
    let mut now = now;
    let (sa, sb) = run(&mut a, &mut b, &mut now, Duration::from_secs(2));
    assert_eq!(sa.failed, Some(Failure::FingerprintMismatch));
    assert!(sa.closed);
    assert!(sa.connected.is_none() && sb.connected.is_none());
    assert!(sa.heard.is_empty() && sb.heard.is_empty());
    assert!(matches!(a.send_pcm(now, &[0; 960]), Err(PeerError::Closed)));
}

#[test]
fn ice_restart_renegotiates_and_audio_goes_on() {
    let (mut a, mut b, mut now) = call();
    let (sa, _) = run(&mut a, &mut b, &mut now, Duration::from_secs(1));
    assert!(sa.connected.is_some());
    let restart = a.ice_restart().unwrap();
    let ufrag = |sdp: &str| {
        sdp.lines()
            .find_map(|l| l.strip_prefix("a=ice-ufrag:"))
            .map(str::to_owned)
    };
    let answer = b.accept_offer(&restart).unwrap();
    assert_eq!(audio_msid_stream(&answer), Some(b.stream_id()));
    a.accept_answer(&answer).unwrap();
    let (sa2, sb2) = run(&mut a, &mut b, &mut now, Duration::from_secs(1));
    assert!(sa2.failed.is_none() && sb2.failed.is_none());
    // A restart is not a lost path: the media stayed on the old pair meanwhile.
    assert_eq!((sa2.ice_disconnected, sb2.ice_disconnected), (0, 0));
    let tail = |h: &[i16]| h[h.len() - 9_600..].to_vec();
    assert!(goertzel_power(&tail(&sa2.heard), 880.0) > 0.5);
    assert!(goertzel_power(&tail(&sb2.heard), 440.0) > 0.5);
    // A second restart changes the credentials again.
    let again = a.ice_restart().unwrap();
    assert_ne!(ufrag(&restart), ufrag(&again));
}

#[test]
fn remote_candidates_as_matrix_call_sends_them() {
    let (_, offer) = Peer::offer(Instant::now(), &[addr("10.0.0.1:1000")]).unwrap();
    let (mut b, _) = Peer::answer(&offer, Instant::now(), &[addr("10.0.0.2:2000")]).unwrap();
    let host = "candidate:3309730139 1 udp 2122194687 192.0.2.2 47234 typ host generation 0 ufrag vbMB network-id 1";
    let tcp = "candidate:1 1 tcp 1518280447 192.0.2.2 9 typ host tcptype active generation 0 ufrag vbMB network-id 1";
    assert_eq!(
        b.add_remote_candidate(host).unwrap(),
        RemoteCandidate::Added
    );
    assert_eq!(
        b.add_remote_candidate(tcp).unwrap(),
        RemoteCandidate::Skipped
    );
    assert_eq!(
        b.add_remote_candidate("").unwrap(),
        RemoteCandidate::EndOfCandidates
    );
    assert!(matches!(
        b.add_remote_candidate("candidate:x"),
        Err(PeerError::BadCandidate)
    ));
}

#[test]
fn a_candidate_found_later_is_trickled_and_used() {
    // The caller's only address is announced after the offer, as m.call.candidates would.
    let now = Instant::now();
    let (mut a, offer) = Peer::offer(now, &[]).unwrap();
    assert!(!offer.contains("typ host"));
    let (mut b, answer) = Peer::answer(&offer, now, &[addr("10.0.0.2:2000")]).unwrap();
    a.accept_answer(&answer).unwrap();
    let line = a
        .add_local_candidate(Candidate::host(addr("10.0.0.1:1000"), "udp").unwrap())
        .unwrap()
        .unwrap();
    assert!(line.starts_with("candidate:") && line.contains("10.0.0.1 1000 typ host"));
    assert_eq!(
        b.add_remote_candidate(&line).unwrap(),
        RemoteCandidate::Added
    );
    assert_eq!(
        b.add_remote_candidate("").unwrap(),
        RemoteCandidate::EndOfCandidates
    );
    let mut now = now;
    let (sa, sb) = run(&mut a, &mut b, &mut now, Duration::from_secs(1));
    assert!(sa.connected.is_some() && sb.connected.is_some());
    assert!(!sa.heard.is_empty() && !sb.heard.is_empty());
}

#[test]
fn misuse_and_bad_sdp_are_typed_errors() {
    let now = Instant::now();
    let (mut a, offer) = Peer::offer(now, &[addr("10.0.0.1:1000")]).unwrap();
    let (_, answer) = Peer::answer(&offer, now, &[addr("10.0.0.2:2000")]).unwrap();
    a.accept_answer(&answer).unwrap();
    assert!(matches!(
        a.accept_answer(&answer),
        Err(PeerError::NoPendingOffer)
    ));
    let no_audio: String = offer.replace("m=audio ", "m=video ");
    assert!(matches!(
        Peer::answer(&no_audio, now, &[]),
        Err(PeerError::NoAudio)
    ));
    let sha1 = offer.replace("a=fingerprint:sha-256", "a=fingerprint:sha-1");
    assert!(matches!(
        Peer::answer(&sha1, now, &[]),
        Err(PeerError::UnsupportedFingerprint)
    ));
    assert!(matches!(
        Peer::answer("v=0\r\na=fingerprint:sha-256 00:00\r\n", now, &[]),
        Err(PeerError::UnsupportedFingerprint)
    ));
    assert!(matches!(
        a.send_pcm(now, &[0; 480]),
        Err(PeerError::Codec(_))
    ));
    a.close();
    assert!(matches!(a.poll_output(), Output::Closed));
    assert!(matches!(a.ice_restart(), Err(PeerError::Closed)));
}

#[test]
fn a_cut_path_is_reported_and_an_ice_restart_brings_the_audio_back() {
    let (mut a, mut b, mut now) = call();
    let (sa, _) = run(&mut a, &mut b, &mut now, Duration::from_secs(1));
    assert!(sa.connected.is_some());
    // Cut for a little longer than the path timeout: both sides report the path lost.
    let cut = PATH_TIMEOUT + Duration::from_millis(500);
    let (sa, sb) = run_on(&mut a, &mut b, &mut now, cut, false);
    assert_eq!((sa.ice_disconnected, sb.ice_disconnected), (1, 1));
    assert!(sa.heard.is_empty() && sb.heard.is_empty());
    assert!(sa.failed.is_none() && sb.failed.is_none());
    // The path is back; the caller restarts ICE (m.call.negotiate) and the audio returns.
    let offer = a.ice_restart().unwrap();
    let answer = b.accept_offer(&offer).unwrap();
    a.accept_answer(&answer).unwrap();
    let (sa, sb) = run(&mut a, &mut b, &mut now, Duration::from_secs(2));
    assert_eq!((sa.ice_connected, sb.ice_connected), (1, 1));
    let tail = |h: &[i16]| h[h.len() - 24_000..].to_vec();
    assert!(goertzel_power(&tail(&sa.heard), 880.0) > 0.5);
    assert!(goertzel_power(&tail(&sb.heard), 440.0) > 0.5);
}

#[test]
fn a_renegotiation_cannot_swap_the_certificate() {
    let (mut a, mut b, mut now) = call();
    run(&mut a, &mut b, &mut now, Duration::from_millis(500));
    let (stranger, _) = Peer::offer(now, &[addr("10.0.0.3:3000")]).unwrap();
    let swap = |sdp: &str, from: DtlsFingerprint| {
        sdp.replace(&from.to_string(), &stranger.local_fingerprint().to_string())
    };
    // An offer (ICE restart) from "the caller" with another certificate is refused…
    let offer = a.ice_restart().unwrap();
    assert!(matches!(
        b.accept_offer(&swap(&offer, a.local_fingerprint())),
        Err(PeerError::FingerprintChanged)
    ));
    // …and so is such an answer, which leaves our offer waiting for the real one.
    let answer = b.accept_offer(&offer).unwrap();
    assert!(matches!(
        a.accept_answer(&swap(&answer, b.local_fingerprint())),
        Err(PeerError::FingerprintChanged)
    ));
    a.accept_answer(&answer).unwrap();
    let (sa, sb) = run(&mut a, &mut b, &mut now, Duration::from_millis(500));
    assert!(sa.failed.is_none() && sb.failed.is_none());
    assert!(!sa.heard.is_empty() && !sb.heard.is_empty());
}

/// An offer whose audio section str0m cannot take (here its Opus `rtpmap` is mangled, as the
/// property test below once found) is refused, not answered with a dead `m=audio 0`.
#[test]
fn an_offer_without_usable_opus_is_refused() {
    let offer = Peer::offer(Instant::now(), &[addr("10.0.0.1:1000")])
        .unwrap()
        .1;
    let mangled = offer.replace("a=rtpmap:111 opus/48000/2", "a=rtpmap:111  opus/48000/2");
    assert_ne!(offer, mangled, "the offer names Opus as payload type 111");
    assert!(matches!(
        Peer::answer(&mangled, Instant::now(), &[addr("10.0.0.2:2000")]),
        Err(PeerError::NoAudio)
    ));
}

mod untrusted_sdp {
    use proptest::prelude::*;

    use super::*;
    use crate::peer::sdp;

    /// A real offer, so mutations reach deep into str0m's parser and ours.
    fn real_offer() -> String {
        Peer::offer(Instant::now(), &[addr("10.0.0.1:1000")])
            .unwrap()
            .1
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(64))]

        #[test]
        fn any_text_is_refused_or_taken_without_a_panic(text in ".{0,400}") {
            let _ = fingerprint_of_sdp(&text);
            let _ = audio_msid_stream(&text);
            let _ = sdp::rewrite_msid(&text, "s", "t");
            let _ = sdp::parse_candidate(&text);
            let _ = Peer::answer(&text, Instant::now(), &[]);
        }

        #[test]
        fn a_mangled_offer_is_refused_or_taken_without_a_panic(
            cut in 0usize..2000,
            at in 0usize..2000,
            junk in "[ -~\r\n]{0,40}",
        ) {
            let mut offer = real_offer();
            let cut = cut.min(offer.len());
            let at = at.min(cut);
            if offer.is_char_boundary(at) && offer.is_char_boundary(cut) {
                offer.replace_range(at..cut, &junk);
            }
            if let Ok((mut peer, answer)) = Peer::answer(&offer, Instant::now(), &[addr("10.0.0.2:2000")]) {
                prop_assert_eq!(audio_msid_stream(&answer), Some(peer.stream_id()));
                while let Output::Transmit(_) | Output::Event(_) = peer.poll_output() {}
            }
        }

        #[test]
        fn any_candidate_line_is_refused_or_taken_without_a_panic(line in "(a=)?candidate:[ -~]{0,120}") {
            let (mut b, _) = Peer::answer(&real_offer(), Instant::now(), &[addr("10.0.0.2:2000")]).unwrap();
            let _ = b.add_remote_candidate(&line);
            let now = Instant::now();
            b.handle_input(now, Input::Timeout).unwrap();
            while let Output::Transmit(_) | Output::Event(_) = b.poll_output() {}
        }
    }
}

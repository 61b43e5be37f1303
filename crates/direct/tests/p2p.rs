//! Two direct-call peers on real UDP sockets on 127.0.0.1 (host candidates only), offer and
//! answer carried in memory: ICE and DTLS connect, each side's tone is heard at the other,
//! both see the same two fingerprints, the SRTP profile is AES-256-GCM, an ICE restart mid-call
//! keeps the audio, and a tampered fingerprint fails the call with no audio decoded.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]

use std::io::Write;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use oracle_calls_direct::peer::{
    DtlsFingerprint, Failure, Input, Output, Peer, PeerEvent, fingerprint_of_sdp,
};
use oracle_calls_media::{AUDIO_FRAME_SAMPLES, goertzel_power, sine_tone};
use tokio::net::UdpSocket;

/// The thin driver: one socket, one peer; waits for a datagram, the peer's timer or the next
/// 20 ms frame, makes one mutation, drains the outputs.
struct Driver {
    name: &'static str,
    peer: Peer,
    socket: UdpSocket,
    local: SocketAddr,
    tone_hz: f64,
    sent: u64,
    next_frame: Instant,
    timeout: Instant,
    heard: Vec<i16>,
    first_audio: Option<Instant>,
    connected: Option<(DtlsFingerprint, DtlsFingerprint)>,
    failed: Option<Failure>,
    ice_disconnects: usize,
    closed: bool,
}

impl Driver {
    fn new(name: &'static str, peer: Peer, socket: UdpSocket, tone_hz: f64) -> Driver {
        let local = socket.local_addr().unwrap();
        let now = Instant::now();
        Driver {
            name,
            peer,
            socket,
            local,
            tone_hz,
            sent: 0,
            next_frame: now,
            timeout: now,
            heard: Vec::new(),
            first_audio: None,
            connected: None,
            failed: None,
            ice_disconnects: 0,
            closed: false,
        }
    }

    /// Runs until `until` (or until the peer closes).
    async fn run_until(&mut self, until: Instant) {
        let mut buf = vec![0u8; 2048];
        while !self.closed && Instant::now() < until {
            self.drain().await;
            let wake = self.timeout.min(self.next_frame).min(until);
            tokio::select! {
                r = self.socket.recv_from(&mut buf) => {
                    let (n, source) = r.unwrap();
                    let input = Input::Receive { source, destination: self.local, contents: &buf[..n] };
                    self.peer.handle_input(Instant::now(), input).unwrap();
                }
                () = tokio::time::sleep_until(wake.into()) => {
                    let now = Instant::now();
                    if now >= self.next_frame {
                        let pcm = sine_tone(self.tone_hz, 8000.0, self.sent, AUDIO_FRAME_SAMPLES);
                        self.sent += AUDIO_FRAME_SAMPLES as u64;
                        self.next_frame += Duration::from_millis(20);
                        // Fails only once the peer is closed; drain() then sees Closed.
                        let _ = self.peer.send_pcm(now, &pcm);
                    } else {
                        self.peer.handle_input(now, Input::Timeout).unwrap();
                    }
                }
            }
        }
        self.drain().await;
    }

    async fn drain(&mut self) {
        loop {
            match self.peer.poll_output() {
                Output::Transmit(t) => {
                    assert_eq!(t.source, self.local);
                    let _ = self.socket.send_to(&t.contents, t.destination).await;
                }
                Output::Timeout(t) => {
                    self.timeout = t;
                    return;
                }
                Output::Closed => {
                    self.closed = true;
                    return;
                }
                Output::Event(PeerEvent::AudioFrame(pcm)) => {
                    self.first_audio.get_or_insert_with(Instant::now);
                    self.heard.extend(pcm);
                }
                Output::Event(PeerEvent::Connected { local, remote }) => {
                    self.connected = Some((local, remote));
                }
                Output::Event(PeerEvent::Failed(f)) => self.failed = Some(f),
                Output::Event(PeerEvent::IceDisconnected) => self.ice_disconnects += 1,
                Output::Event(e) => eprintln!("{}: {e:?}", self.name),
            }
        }
    }

    /// The relative power of `hz` in the last `ms` of what this side heard.
    fn tone_power(&self, hz: f64, ms: usize) -> f64 {
        let n = 48 * ms;
        assert!(
            self.heard.len() >= n,
            "{} heard only {} samples",
            self.name,
            self.heard.len()
        );
        goertzel_power(&self.heard[self.heard.len() - n..], hz)
    }
}

async fn socket() -> UdpSocket {
    UdpSocket::bind("127.0.0.1:0").await.unwrap()
}

/// str0m's debug events, captured in memory (it reports the SRTP profile nowhere else).
fn capture_str0m_debug() -> (Arc<Mutex<Vec<u8>>>, tracing::subscriber::DefaultGuard) {
    #[derive(Clone)]
    struct Sink(Arc<Mutex<Vec<u8>>>);
    impl Write for Sink {
        fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(b);
            Ok(b.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }
    let buf = Arc::new(Mutex::new(Vec::new()));
    let sink = Sink(buf.clone());
    let subscriber = tracing_subscriber::fmt()
        .with_env_filter("str0m=debug")
        .with_ansi(false)
        .with_writer(move || sink.clone())
        .finish();
    (buf, tracing::subscriber::set_default(subscriber))
}

#[tokio::test]
async fn two_peers_hear_each_other_over_udp_and_survive_an_ice_restart() {
    let (log, _guard) = capture_str0m_debug();
    let (sa, sb) = (socket().await, socket().await);
    let start = Instant::now();
    let (caller, offer) = Peer::offer(start, &[sa.local_addr().unwrap()]).unwrap();
    let (callee, answer) =
        Peer::answer(&offer, Instant::now(), &[sb.local_addr().unwrap()]).unwrap();
    let (mut a, mut b) = (
        Driver::new("caller", caller, sa, 440.0),
        Driver::new("callee", callee, sb, 880.0),
    );
    a.peer.accept_answer(&answer).unwrap();

    let until = Instant::now() + Duration::from_secs(2);
    tokio::join!(a.run_until(until), b.run_until(until));

    for d in [&a, &b] {
        assert!(d.failed.is_none(), "{}: {:?}", d.name, d.failed);
        let first = d.first_audio.expect("no audio decoded");
        eprintln!(
            "{}: offer → first decoded audio {} ms",
            d.name,
            first.duration_since(start).as_millis()
        );
    }
    // Each side hears the other's tone, not its own.
    assert!(
        a.tone_power(880.0, 1000) > 0.5,
        "{}",
        a.tone_power(880.0, 1000)
    );
    assert!(a.tone_power(440.0, 1000) < 0.05);
    assert!(
        b.tone_power(440.0, 1000) > 0.5,
        "{}",
        b.tone_power(440.0, 1000)
    );
    assert!(b.tone_power(880.0, 1000) < 0.05);
    // Both see the same two certificates, and those are the ones the SDPs announced.
    let (a_local, a_remote) = a.connected.unwrap();
    let (b_local, b_remote) = b.connected.unwrap();
    assert_eq!((a_local, a_remote), (b_remote, b_local));
    assert_eq!(fingerprint_of_sdp(&offer).unwrap(), a_local);
    assert_eq!(fingerprint_of_sdp(&answer).unwrap(), b_local);
    assert_eq!(a_local.as_bytes().len(), 32);
    // The SRTP profile (str0m logs it on both sides; DTLS 1.2 with str0m as server → GCM-256).
    let text = String::from_utf8(log.lock().unwrap().clone()).unwrap();
    let profiles: Vec<&str> = text
        .lines()
        .filter(|l| l.contains("SRTP keying material and profile"))
        .collect();
    assert_eq!(profiles.len(), 2, "{profiles:?}");
    assert!(
        profiles.iter().all(|l| l.contains("AEAD_AES_256_GCM")),
        "{profiles:?}"
    );

    // ICE restart mid-call: new credentials, new offer/answer, the audio goes on.
    let restart = a.peer.ice_restart().unwrap();
    let ufrag = |sdp: &str| {
        sdp.lines()
            .find_map(|l| l.strip_prefix("a=ice-ufrag:"))
            .map(str::to_owned)
    };
    assert_ne!(ufrag(&restart), ufrag(&offer));
    let re_answer = b.peer.accept_offer(&restart).unwrap();
    assert_ne!(ufrag(&re_answer), ufrag(&answer));
    a.peer.accept_answer(&re_answer).unwrap();
    let (heard_a, heard_b) = (a.heard.len(), b.heard.len());
    let until = Instant::now() + Duration::from_millis(1500);
    tokio::join!(a.run_until(until), b.run_until(until));
    assert!(a.failed.is_none() && b.failed.is_none());
    assert_eq!((a.ice_disconnects, b.ice_disconnects), (0, 0));
    assert!(
        a.heard.len() - heard_a > 48_000,
        "{}",
        a.heard.len() - heard_a
    );
    assert!(
        b.heard.len() - heard_b > 48_000,
        "{}",
        b.heard.len() - heard_b
    );
    assert!(a.tone_power(880.0, 500) > 0.5);
    assert!(b.tone_power(440.0, 500) > 0.5);
}

#[tokio::test]
async fn a_tampered_fingerprint_fails_the_call_with_no_audio() {
    let (sa, sb) = (socket().await, socket().await);
    let now = Instant::now();
    let (caller, offer) = Peer::offer(now, &[sa.local_addr().unwrap()]).unwrap();
    let (callee, answer) = Peer::answer(&offer, now, &[sb.local_addr().unwrap()]).unwrap();
    // Someone on the signalling path swaps the callee's fingerprint for another sha-256 one.
    let real = fingerprint_of_sdp(&answer).unwrap().to_string();
    let forged = format!(
        "{}{}",
        if real.starts_with('A') { 'B' } else { 'A' },
        &real[1..]
    );
    let (mut a, mut b) = (
        Driver::new("caller", caller, sa, 440.0),
        Driver::new("callee", callee, sb, 880.0),
    );
    a.peer
        .accept_answer(&answer.replace(&real, &forged))
        .unwrap();
    let until = Instant::now() + Duration::from_secs(2);
    tokio::join!(a.run_until(until), b.run_until(until));
    assert_eq!(a.failed, Some(Failure::FingerprintMismatch));
    assert!(a.closed);
    assert!(a.connected.is_none() && b.connected.is_none());
    assert!(a.heard.is_empty() && b.heard.is_empty());
}

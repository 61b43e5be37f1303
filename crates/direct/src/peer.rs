//! The media peer of a direct 1:1 audio call: SDP offer/answer, ICE, DTLS-SRTP and Opus over
//! str0m, sans-IO.
//!
//! The peer reads no clock and owns no socket. Its driver feeds it datagrams and timeouts with
//! [`Peer::handle_input`] and, after every mutation, drains [`Peer::poll_output`] until it
//! returns [`Output::Timeout`] (or [`Output::Closed`]): each [`Output::Transmit`] goes out of
//! the socket it names, each [`Output::Event`] to the call.
//!
//! ```
//! use std::time::{Duration, Instant};
//! use oracle_calls_direct::peer::{Output, Peer, audio_msid_stream};
//! let now = Instant::now();
//! let (mut caller, offer) = Peer::offer(now, &["127.0.0.1:40000".parse()?])?; // → m.call.invite
//! let (callee, answer) = Peer::answer(&offer, now, &["127.0.0.1:40001".parse()?])?; // → m.call.answer
//! caller.accept_answer(&answer)?;
//! // Our own msid, not the caller's: `sdp_stream_metadata` is keyed by it.
//! assert_eq!(audio_msid_stream(&answer), Some(callee.stream_id()));
//! // The driver: send each Transmit, feed back what arrives, wake at the Timeout.
//! while let Output::Transmit(t) = caller.poll_output() {
//!     assert_eq!(t.source.port(), 40000);
//! }
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```
//!
//! Security, what this layer guarantees:
//! - DTLS 1.2 (str0m's DTLS 1.3 server would let the client pick AES-CM over AES-GCM); a
//!   session that came up with another version fails with [`Failure::DtlsVersion`].
//! - The peer's certificate must match the `a=fingerprint` of its SDP (str0m's check, left on,
//!   and only `sha-256` accepted); a mismatch fails with [`Failure::FingerprintMismatch`] before
//!   any media key exists.
//! - A fresh certificate per peer, so per call; both fingerprints are exposed as 32 bytes
//!   ([`PeerEvent::Connected`]) for the key binding of the signalling layer.
//!
//! SRTP profile: str0m 0.25 offers `AEAD_AES_256_GCM`, `AEAD_AES_128_GCM`,
//! `AES128_CM_SHA1_80` in that order and its DTLS 1.2 server picks the first the client also
//! offers. It exposes the negotiated profile nowhere in its API: only a `debug` event of
//! target `str0m` (`DTLS set SRTP keying material and profile: …`). The integration test
//! (`tests/p2p.rs`) reads that event to assert GCM-256 between two peers.

mod sdp;

use std::collections::VecDeque;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use oracle_calls_media::{AUDIO_FRAME_SAMPLES, OpusDecoder, OpusEncoder};
use str0m::change::{SdpAnswer, SdpOffer, SdpPendingOffer};
use str0m::config::DtlsVersion;
use str0m::crypto::dtls::ProtocolVersion;
use str0m::format::Codec;
use str0m::media::{Direction, Frequency, MediaKind, MediaTime, Mid};
use str0m::net::{Protocol, Receive};
use str0m::{Candidate, Event, IceConnectionState, Rtc, RtcConfig, RtcError};
use tracing::{debug, warn};

pub use sdp::{DtlsFingerprint, RemoteCandidate, audio_msid_stream, fingerprint_of_sdp};

/// Why a peer operation failed (the caller's misuse, or what the other person sent).
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum PeerError {
    /// The other side's SDP could not be parsed or applied.
    #[error("the peer's SDP is not usable: {0}")]
    RemoteSdp(#[source] RtcError),
    /// The other side's SDP does not parse at all.
    #[error("the peer's SDP does not parse")]
    SdpSyntax,
    /// The other side's offer has no audio section we can take (none, or none with Opus).
    #[error("the peer's offer has no audio we can take (an Opus audio section)")]
    NoAudio,
    /// The other side's SDP has no single `sha-256` DTLS fingerprint.
    #[error("the peer's SDP has no usable sha-256 DTLS fingerprint")]
    UnsupportedFingerprint,
    /// A later SDP of the other side (renegotiation, ICE restart) names another certificate
    /// than its first one did.
    #[error("the peer's SDP changed its DTLS fingerprint mid-call")]
    FingerprintChanged,
    /// A candidate line from the other side does not parse.
    #[error("the peer sent a candidate that does not parse")]
    BadCandidate,
    /// One of our local addresses cannot be a candidate (caller's misuse).
    #[error("{0} cannot be a local candidate")]
    BadLocalCandidate(SocketAddr),
    /// `accept_answer` with no offer of ours outstanding (caller's misuse).
    #[error("no offer of ours is waiting for an answer")]
    NoPendingOffer,
    /// str0m had nothing to offer (an ICE restart that changed nothing).
    #[error("nothing to negotiate")]
    NothingToOffer,
    /// The peer has failed or was closed.
    #[error("the peer is closed")]
    Closed,
    /// Opus refused a frame (wrong length: a frame is 960 samples).
    #[error(transparent)]
    Codec(#[from] oracle_calls_media::Error),
}

/// Why a call's media failed for good (carried by [`PeerEvent::Failed`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum Failure {
    /// The certificate the other side presented in DTLS is not the one its SDP announced:
    /// someone between the SDP and the media path. No media key was derived.
    FingerprintMismatch,
    /// The DTLS handshake ran without a usable `sha-256` fingerprint to check.
    UnsupportedFingerprint,
    /// DTLS came up with a version other than 1.2.
    DtlsVersion,
    /// ICE, DTLS or SRTP broke otherwise (the cause is logged at `warn`).
    Transport,
}

/// Which side of the offer/answer this peer is (the offerer is ICE-controlling and, against
/// a str0m or browser answerer, the DTLS client).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    /// Made the first offer.
    Offerer,
    /// Answered it.
    Answerer,
}

/// Something the driver hands to the peer.
#[derive(Debug)]
pub enum Input<'a> {
    /// A datagram that arrived on one of our sockets.
    Receive {
        /// Who sent it.
        source: SocketAddr,
        /// The local address it arrived at (one of our candidates).
        destination: SocketAddr,
        /// Its bytes (untrusted).
        contents: &'a [u8],
    },
    /// The time the last [`Output::Timeout`] named has come.
    Timeout,
}

/// What the peer asks of its driver.
#[derive(Debug)]
pub enum Output {
    /// Send `contents` from the socket bound at `source` to `destination`.
    Transmit(Transmit),
    /// Something happened to the call's media.
    Event(PeerEvent),
    /// Nothing more to do until this time (or the next input).
    Timeout(Instant),
    /// The peer has failed or was closed: drop it.
    Closed,
}

/// One datagram to send.
#[derive(Debug)]
pub struct Transmit {
    /// The local address (socket) to send from.
    pub source: SocketAddr,
    /// Where to.
    pub destination: SocketAddr,
    /// The bytes.
    pub contents: Vec<u8>,
}

/// What happened to the media.
#[derive(Debug)]
#[non_exhaustive]
pub enum PeerEvent {
    /// ICE has a working pair and datagrams arrive (again, after [`PeerEvent::IceDisconnected`]).
    IceConnected,
    /// The path is lost: ICE says so, or nothing arrived from the other side for
    /// [`PATH_TIMEOUT`]. It may come back by itself; an ICE restart helps.
    IceDisconnected,
    /// DTLS is up, SRTP keyed: the certificate matched the SDP's fingerprint.
    Connected {
        /// Our certificate's fingerprint.
        local: DtlsFingerprint,
        /// The other side's, as computed from the certificate it presented.
        remote: DtlsFingerprint,
    },
    /// 20 ms (usually) of the other person's audio, 48 kHz mono, decoded.
    AudioFrame(Vec<i16>),
    /// The media failed for good; [`Output::Closed`] follows.
    Failed(Failure),
}

/// The sans-IO media peer of one direct audio call.
pub struct Peer {
    rtc: Rtc,
    role: Role,
    stream_id: String,
    track_id: String,
    local_fingerprint: DtlsFingerprint,
    /// What the other side's first SDP announced; every later one must say the same.
    remote_sdp_fingerprint: Option<DtlsFingerprint>,
    mid: Option<Mid>,
    pending: Option<SdpPendingOffer>,
    events: VecDeque<PeerEvent>,
    encoder: OpusEncoder,
    decoder: OpusDecoder,
    rtp_samples: u64,
    /// What str0m's ICE agent says of the path.
    ice_up: bool,
    /// What we last reported ([`PeerEvent::IceConnected`] / [`PeerEvent::IceDisconnected`]).
    path_up: bool,
    /// When the last datagram from the other side arrived, and the time of the last input.
    last_rx: Option<Instant>,
    /// (remote, local) of the last DTLS or SRTP datagram: the path the media takes.
    media_path: Option<(SocketAddr, SocketAddr)>,
    now: Instant,
    dtls_connected: bool,
    failed: Option<Failure>,
    closed: bool,
}

impl std::fmt::Debug for Peer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Peer")
            .field("role", &self.role)
            .field("stream_id", &self.stream_id)
            .field("path_up", &self.path_up)
            .field("dtls_connected", &self.dtls_connected)
            .field("failed", &self.failed)
            .finish_non_exhaustive()
    }
}

impl Peer {
    /// A new call: the offer to send in `m.call.invite`, with our host candidates (UDP) in it.
    ///
    /// # Errors
    /// [`PeerError::BadLocalCandidate`] for an address str0m refuses (e.g. unspecified);
    /// [`PeerError::Codec`] if libopus cannot start.
    pub fn offer(
        now: Instant,
        local_candidates: &[SocketAddr],
    ) -> Result<(Peer, String), PeerError> {
        Self::offer_with(now, local_candidates, None)
    }

    /// [`Peer::offer`] with a DTLS certificate made before, for the fuzz targets only (a
    /// certificate costs more than the rest of a peer). Never in a product: each call must
    /// have a fresh certificate.
    ///
    /// # Errors
    /// As [`Peer::offer`].
    #[doc(hidden)]
    pub fn dangerous_offer_with_certificate(
        now: Instant,
        local_candidates: &[SocketAddr],
        certificate: str0m::config::DtlsCert,
    ) -> Result<(Peer, String), PeerError> {
        Self::offer_with(now, local_candidates, Some(certificate))
    }

    fn offer_with(
        now: Instant,
        local_candidates: &[SocketAddr],
        certificate: Option<str0m::config::DtlsCert>,
    ) -> Result<(Peer, String), PeerError> {
        let mut peer = Peer::new(Role::Offerer, now, local_candidates, certificate)?;
        let mut api = peer.rtc.sdp_api();
        let mid = api.add_media(
            MediaKind::Audio,
            Direction::SendRecv,
            Some(peer.stream_id.clone()),
            Some(peer.track_id.clone()),
            None,
        );
        let (offer, pending) = api.apply().ok_or(PeerError::NothingToOffer)?;
        peer.mid = Some(mid);
        peer.pending = Some(pending);
        let sdp = peer.outgoing(&offer.to_sdp_string());
        Ok((peer, sdp))
    }

    /// Answers the offer of an incoming call (`m.call.invite`): the answer to send in
    /// `m.call.answer`, with our host candidates in it and *our* msid.
    ///
    /// # Errors
    /// [`PeerError::SdpSyntax`], [`PeerError::NoAudio`], [`PeerError::UnsupportedFingerprint`]
    /// or [`PeerError::RemoteSdp`] for an offer we cannot take; the local errors of
    /// [`Peer::offer`].
    pub fn answer(
        offer_sdp: &str,
        now: Instant,
        local_candidates: &[SocketAddr],
    ) -> Result<(Peer, String), PeerError> {
        let mut peer = Peer::new(Role::Answerer, now, local_candidates, None)?;
        let answer = peer.accept_offer(offer_sdp)?;
        Ok((peer, answer))
    }

    /// Takes the answer to our last offer (the invite's, or an ICE restart's).
    ///
    /// # Errors
    /// [`PeerError::NoPendingOffer`] without an offer of ours outstanding; the SDP errors of
    /// [`Peer::answer`].
    pub fn accept_answer(&mut self, answer_sdp: &str) -> Result<(), PeerError> {
        self.check_open()?;
        let fp = self.check_remote_fingerprint(answer_sdp)?;
        let answer = SdpAnswer::from_sdp_string(answer_sdp).map_err(|_| PeerError::SdpSyntax)?;
        let pending = self.pending.take().ok_or(PeerError::NoPendingOffer)?;
        self.rtc
            .sdp_api()
            .accept_answer(pending, answer)
            .map_err(PeerError::RemoteSdp)?;
        self.remote_sdp_fingerprint = Some(fp);
        Ok(())
    }

    /// Answers a new offer from the other side in the same call (`m.call.negotiate`, e.g. its
    /// ICE restart).
    ///
    /// # Errors
    /// The SDP errors of [`Peer::answer`].
    pub fn accept_offer(&mut self, offer_sdp: &str) -> Result<String, PeerError> {
        self.check_open()?;
        let fp = self.check_remote_fingerprint(offer_sdp)?;
        if !offer_sdp.lines().any(|l| l.starts_with("m=audio ")) {
            return Err(PeerError::NoAudio);
        }
        let offer = SdpOffer::from_sdp_string(offer_sdp).map_err(|_| PeerError::SdpSyntax)?;
        let answer = self
            .rtc
            .sdp_api()
            .accept_offer(offer)
            .map_err(PeerError::RemoteSdp)?;
        let answer = answer.to_sdp_string();
        // str0m answers an audio section it cannot take (no Opus it can parse) with port 0:
        // there would be no call, so say so instead of sending that answer.
        let taken = answer
            .lines()
            .filter_map(|l| l.strip_prefix("m=audio "))
            .any(|rest| !rest.starts_with("0 "));
        if !taken {
            return Err(PeerError::NoAudio);
        }
        // Glare inside a call: the other side's offer won over ours (we are polite).
        self.pending = None;
        self.remote_sdp_fingerprint = Some(fp);
        Ok(self.outgoing(&answer))
    }

    /// Adds one remote candidate from `m.call.candidates` (`candidate:…`; `""` ends them).
    ///
    /// # Errors
    /// [`PeerError::BadCandidate`] for a line that does not parse.
    pub fn add_remote_candidate(&mut self, line: &str) -> Result<RemoteCandidate, PeerError> {
        self.check_open()?;
        let Some(c) = sdp::parse_candidate(line)? else {
            return Ok(RemoteCandidate::EndOfCandidates);
        };
        if !sdp::usable(&c) {
            return Ok(RemoteCandidate::Skipped);
        }
        self.rtc.add_remote_candidate(c);
        Ok(RemoteCandidate::Added)
    }

    /// Adds a local candidate found after the SDP went out (server-reflexive, relayed through
    /// TURN — its [`Output::Transmit`]s then name the relayed address as `source` —, another
    /// interface): the line to trickle in `m.call.candidates`, or `None` when str0m already
    /// had it.
    ///
    /// # Errors
    /// [`PeerError::Closed`] after a failure.
    pub fn add_local_candidate(
        &mut self,
        candidate: Candidate,
    ) -> Result<Option<String>, PeerError> {
        self.check_open()?;
        Ok(self
            .rtc
            .add_local_candidate(candidate)
            .map(Candidate::to_sdp_string))
    }

    /// Restarts ICE (new ufrag and password, local candidates kept): the offer to send in
    /// `m.call.negotiate`; its answer goes to [`Peer::accept_answer`]. Media keeps flowing on
    /// the old pair until a new one is nominated.
    ///
    /// # Errors
    /// [`PeerError::Closed`] after a failure; [`PeerError::NothingToOffer`] if str0m made no
    /// offer.
    pub fn ice_restart(&mut self) -> Result<String, PeerError> {
        self.check_open()?;
        let mut api = self.rtc.sdp_api();
        api.ice_restart(true);
        let (offer, pending) = api.apply().ok_or(PeerError::NothingToOffer)?;
        self.pending = Some(pending);
        Ok(self.outgoing(&offer.to_sdp_string()))
    }

    /// Feeds a datagram or a due timeout. Drain [`Peer::poll_output`] afterwards.
    ///
    /// Datagrams that are not STUN, DTLS or SRTP are dropped; so is anything after a failure.
    ///
    /// # Errors
    /// None today (kept for the driver's `?`); a broken session shows as [`PeerEvent::Failed`].
    pub fn handle_input(&mut self, now: Instant, input: Input<'_>) -> Result<(), PeerError> {
        if self.closed || self.failed.is_some() {
            return Ok(());
        }
        self.now = self.now.max(now);
        let input = match input {
            Input::Timeout => str0m::Input::Timeout(now),
            Input::Receive {
                source,
                destination,
                contents,
            } => match Receive::new(Protocol::Udp, source, destination, contents) {
                Ok(r) => {
                    // Liveness of the path the media takes: DTLS and SRTP from the other side
                    // (RFC 7983: a first byte over 3 is not STUN), and STUN only on that same
                    // (remote, local) pair. STUN checks of the other candidate pairs (e.g. through
                    // the relay) keep arriving when the media path is cut, and must not hide
                    // it. A datagram a stranger forges can at most delay the report.
                    let path = (source, destination);
                    if contents.first().is_some_and(|b| *b > 3) {
                        self.media_path = Some(path);
                        self.last_rx = Some(now);
                    } else if self.media_path == Some(path) {
                        self.last_rx = Some(now);
                    }
                    str0m::Input::Receive(now, r)
                }
                Err(_) => {
                    debug!("dropped a datagram that is not STUN, DTLS or RTP");
                    return Ok(());
                }
            },
        };
        if let Err(e) = self.rtc.handle_input(input) {
            self.on_rtc_error(&e);
        }
        self.update_path();
        Ok(())
    }

    /// The next thing to do. Call until it returns [`Output::Timeout`] or [`Output::Closed`].
    pub fn poll_output(&mut self) -> Output {
        loop {
            if let Some(e) = self.events.pop_front() {
                return Output::Event(e);
            }
            if self.closed || self.failed.is_some() {
                self.closed = true;
                return Output::Closed;
            }
            match self.rtc.poll_output() {
                Ok(str0m::Output::Timeout(t)) => {
                    // Wake up in time to notice a silent path.
                    let silent_at = self
                        .last_rx
                        .filter(|_| self.path_up)
                        .map(|t| t + PATH_TIMEOUT);
                    return Output::Timeout(silent_at.map_or(t, |s| t.min(s)));
                }
                Ok(str0m::Output::Transmit(t)) => {
                    return Output::Transmit(Transmit {
                        source: t.source,
                        destination: t.destination,
                        contents: t.contents.into(),
                    });
                }
                Ok(str0m::Output::Event(e)) => self.on_event(e),
                Err(e) => self.on_rtc_error(&e),
            }
        }
    }

    /// Encodes one 20 ms frame (960 samples, 48 kHz mono) as Opus and sends it. Before DTLS
    /// is up the frame is dropped (the RTP clock still advances).
    ///
    /// # Errors
    /// [`PeerError::Codec`] for a frame of another length; [`PeerError::Closed`] after a
    /// failure.
    pub fn send_pcm(&mut self, now: Instant, pcm: &[i16]) -> Result<(), PeerError> {
        self.check_open()?;
        let rtp = MediaTime::new(self.rtp_samples, Frequency::FORTY_EIGHT_KHZ);
        if pcm.len() != AUDIO_FRAME_SAMPLES {
            return Err(oracle_calls_media::Error::FrameSize {
                expected: AUDIO_FRAME_SAMPLES,
                got: pcm.len(),
            }
            .into());
        }
        self.rtp_samples += AUDIO_FRAME_SAMPLES as u64;
        let Some(mid) = self.mid.filter(|_| self.dtls_connected) else {
            return Ok(());
        };
        let packet = self.encoder.encode(pcm)?;
        let Some(writer) = self.rtc.writer(mid) else {
            return Ok(());
        };
        let Some(pt) = writer
            .payload_params()
            .find(|p| p.spec().codec == Codec::Opus)
            .map(|p| p.pt())
        else {
            return Ok(());
        };
        if let Err(e) = writer.write(pt, now, rtp, packet) {
            debug!(error = %e, "audio write failed");
        }
        Ok(())
    }

    /// Our `a=msid` stream id: the key of our `sdp_stream_metadata`.
    pub fn stream_id(&self) -> &str {
        &self.stream_id
    }

    /// Our certificate's fingerprint (known from the start; the one our SDP carries).
    pub fn local_fingerprint(&self) -> DtlsFingerprint {
        self.local_fingerprint
    }

    /// Which side of the offer/answer we are.
    pub fn role(&self) -> Role {
        self.role
    }

    /// Ends the media (hangup): no more output but [`Output::Closed`].
    pub fn close(&mut self) {
        self.rtc.disconnect();
        self.closed = true;
    }

    fn new(
        role: Role,
        now: Instant,
        local_candidates: &[SocketAddr],
        certificate: Option<str0m::config::DtlsCert>,
    ) -> Result<Peer, PeerError> {
        let mut config = rtc_config();
        if let Some(cert) = certificate {
            config = config.set_dtls_cert(cert);
        }
        let mut rtc = config.build(now);
        for &addr in local_candidates {
            let c = Candidate::host(addr, "udp").map_err(|_| PeerError::BadLocalCandidate(addr))?;
            rtc.add_local_candidate(c);
        }
        // str0m makes a sha-256 fingerprint of its fresh certificate; anything else is a bug
        // of ours, reported as such rather than a panic.
        let local_fingerprint =
            DtlsFingerprint::from_str0m(rtc.direct_api().local_dtls_fingerprint())
                .ok_or(PeerError::UnsupportedFingerprint)?;
        Ok(Peer {
            rtc,
            local_fingerprint,
            remote_sdp_fingerprint: None,
            role,
            stream_id: random_token("oc"),
            track_id: random_token("oca"),
            mid: None,
            pending: None,
            events: VecDeque::new(),
            encoder: OpusEncoder::new(None)?,
            decoder: OpusDecoder::new()?,
            rtp_samples: 0,
            ice_up: false,
            path_up: false,
            last_rx: None,
            media_path: None,
            now,
            dtls_connected: false,
            failed: None,
            closed: false,
        })
    }

    /// An SDP of ours as it goes out: with our msid, whatever str0m copied.
    fn outgoing(&self, sdp: &str) -> String {
        sdp::rewrite_msid(sdp, &self.stream_id, &self.track_id)
    }

    /// The SDP's fingerprint, which must be usable and, after the first accepted SDP,
    /// unchanged. Checked before str0m sees the SDP, so a refused one changes nothing.
    fn check_remote_fingerprint(&self, sdp: &str) -> Result<DtlsFingerprint, PeerError> {
        let fp = fingerprint_of_sdp(sdp)?;
        match self.remote_sdp_fingerprint {
            Some(known) if known != fp => Err(PeerError::FingerprintChanged),
            _ => Ok(fp),
        }
    }

    fn check_open(&self) -> Result<(), PeerError> {
        if self.closed || self.failed.is_some() {
            return Err(PeerError::Closed);
        }
        Ok(())
    }

    fn on_event(&mut self, e: Event) {
        match e {
            Event::IceConnectionStateChange(s) => {
                // Checking (an ICE restart under way) changes nothing: media still flows on
                // the old pair until str0m says otherwise.
                match s {
                    IceConnectionState::Connected | IceConnectionState::Completed => {
                        self.ice_up = true;
                    }
                    IceConnectionState::Disconnected => self.ice_up = false,
                    _ => {}
                }
                self.update_path();
            }
            Event::Connected => self.on_dtls_connected(),
            Event::MediaAdded(m) if m.kind == MediaKind::Audio && self.mid.is_none() => {
                self.mid = Some(m.mid);
            }
            Event::MediaData(d) => {
                if !self.dtls_connected || Some(d.mid) != self.mid {
                    return;
                }
                match self.decoder.decode(&d.data) {
                    Ok(pcm) => self.events.push_back(PeerEvent::AudioFrame(pcm)),
                    Err(e) => debug!(error = %e, "undecodable audio from the peer"),
                }
            }
            _ => {}
        }
    }

    /// Reports the path up when ICE has a pair and datagrams from the other side arrived in
    /// the last [`PATH_TIMEOUT`], down otherwise (on changes only).
    fn update_path(&mut self) {
        let fresh = self
            .last_rx
            .is_some_and(|t| self.now.saturating_duration_since(t) < PATH_TIMEOUT);
        let up = self.ice_up && fresh;
        if up != self.path_up {
            self.path_up = up;
            self.events.push_back(if up {
                PeerEvent::IceConnected
            } else {
                PeerEvent::IceDisconnected
            });
        }
    }

    fn on_dtls_connected(&mut self) {
        let api = self.rtc.direct_api();
        if api.dtls_protocol_version() != Some(ProtocolVersion::DTLS1_2) {
            warn!("DTLS came up with a version other than 1.2");
            self.fail(Failure::DtlsVersion);
            return;
        }
        let local = self.local_fingerprint;
        let remote = api
            .remote_dtls_fingerprint()
            .and_then(DtlsFingerprint::from_str0m);
        let Some(remote) = remote else {
            self.fail(Failure::UnsupportedFingerprint);
            return;
        };
        self.dtls_connected = true;
        self.events
            .push_back(PeerEvent::Connected { local, remote });
    }

    fn on_rtc_error(&mut self, e: &RtcError) {
        let failure = match e {
            // str0m reports its fingerprint checks only as text (`src/lib.rs`, `PeerCert`).
            RtcError::RemoteSdp(m) if m.contains("fingerprint no match") => {
                Failure::FingerprintMismatch
            }
            RtcError::RemoteSdp(m) if m.contains("fingerprint") => Failure::UnsupportedFingerprint,
            _ if self.rtc.is_alive() => {
                debug!(error = %e, "str0m error (session still alive)");
                return;
            }
            _ => Failure::Transport,
        };
        warn!(error = %e, ?failure, "direct call media failed");
        self.fail(failure);
    }

    fn fail(&mut self, failure: Failure) {
        if self.failed.is_none() {
            self.failed = Some(failure);
            self.dtls_connected = false;
            self.rtc.disconnect();
            self.events.push_back(PeerEvent::Failed(failure));
        }
    }
}

/// The str0m configuration of every direct peer: Opus only, DTLS 1.2, fingerprints checked,
/// and the nominated pair checked at least every [`MAX_STUN_RTO`].
fn rtc_config() -> RtcConfig {
    let mut config = Rtc::builder()
        .clear_codecs()
        .enable_opus(true, false)
        .set_dtls_version(DtlsVersion::Dtls12)
        .set_fingerprint_verification(true);
    config.set_max_stun_rto(MAX_STUN_RTO);
    config
}

/// The longest wait between two STUN checks of a pair.
const MAX_STUN_RTO: Duration = Duration::from_millis(1000);
/// How long the path the media takes may carry nothing from the other side (no audio or
/// DTLS, and no STUN on that pair: with [`MAX_STUN_RTO`] a live pair is checked every second
/// even when no audio flows) before it is reported lost.
/// str0m's ICE agent alone keeps a pair alive for 15 s after the other side's last STUN
/// request, and then ~20 s more; a call wants to restart ICE much sooner (MatrixCall: 2 s
/// after its browser says `disconnected`).
pub const PATH_TIMEOUT: Duration = Duration::from_secs(2);

/// `prefix-` and 24 random hex digits: an msid token (RFC 8830 token characters only).
fn random_token(prefix: &str) -> String {
    let bytes: [u8; 12] = rand::random();
    let mut s = String::with_capacity(prefix.len() + 25);
    s.push_str(prefix);
    s.push('-');
    for b in bytes {
        s.push_str(&format!("{b:02x}"));
    }
    s
}

#[cfg(test)]
mod tests;

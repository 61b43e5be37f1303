//! The sans-IO room: every piece of state of one LiveKit participant (both str0m peer
//! connections, the E2EE cryptors, tracks, data, the signaling connection's health and the
//! resume schedule) and no IO at all.
//!
//! The driver (`engine.rs`) feeds it inputs — a signaling message, a datagram, a command, the
//! time — and then drains [`Core::poll_output`] until it is empty, sending what it says to
//! send; [`Core::poll_timeout`] says when to call [`Core::handle_timeout`] next. str0m's rule
//! holds inside: after every mutation of an `Rtc`, its outputs are drained until a timeout.

use std::collections::{HashMap, VecDeque};
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use livekit_protocol as lk;
use lk::signal_request::Message as Req;
use lk::signal_response::Message as Resp;
use oracle_calls_crypto::KeyDerivation;
use oracle_calls_crypto::frame::{FrameDecryptor, FrameEncryptor, FrameKind, KeyRing, Outcome};
use oracle_calls_media::{OpusDecoder, OpusEncoder, level_dbov};
use prost::Message as _;
use str0m::change::{SdpAnswer, SdpOffer, SdpPendingOffer};
use str0m::channel::{ChannelConfig, ChannelId, Reliability};
use str0m::format::Codec;
use str0m::media::{Direction, Frequency, MediaKind, MediaTime, Mid, Pt};
use str0m::net::{Protocol, Receive};
use str0m::{Candidate, Event, IceConnectionState, Input, Output as RtcOutput, Rtc};
use tokio::sync::oneshot;
use tracing::{debug, info, warn};
use zeroize::Zeroizing;

use crate::room::{ReconnectPolicy, RoomEvent};
use crate::signal;
use crate::{AUDIO_FRAME_SAMPLES, Error};

/// How long a track publication may take to be confirmed.
const PUBLISH_TIMEOUT: Duration = Duration::from_secs(10);
/// How long a data message may wait for the data channel to open.
const DATA_OPEN_TIMEOUT: Duration = Duration::from_secs(10);
/// Far enough in the future to mean "never".
const NEVER: Duration = Duration::from_secs(3600);

/// Where the answer to a request goes. The core never sends on it: it hands it back in
/// [`Output::Reply`].
pub(crate) type Reply = oneshot::Sender<Result<(), Error>>;

/// What the [`crate::Room`] handle asks of the room.
pub(crate) enum Command {
    PublishAudio {
        name: String,
        reply: Reply,
    },
    AudioFrame(Vec<i16>),
    PublishVideo {
        name: String,
        width: u32,
        height: u32,
        reply: Reply,
    },
    VideoFrame {
        vp8: Vec<u8>,
        capture_ms: u64,
    },
    RequestKeyframe {
        track_sid: String,
    },
    ConnectPublisher,
    SendData {
        payload: Vec<u8>,
        topic: Option<String>,
        reply: Reply,
    },
    RatchetKey {
        reply: Reply,
    },
    SetKey {
        index: u8,
        kdf: KeyDerivation,
        material: Zeroizing<Vec<u8>>,
        reply: Reply,
    },
    SetKeyIndex {
        index: u8,
        reply: Reply,
    },
    Leave {
        reply: Reply,
    },
}

/// Which of the two peer connections (v0 signaling).
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub(crate) enum Side {
    Subscriber,
    Publisher,
}

/// What the driver must do.
pub(crate) enum Output {
    /// Send this on the signaling connection.
    Signal(Box<Req>),
    /// Send this datagram from `side`'s socket.
    Transmit {
        side: Side,
        destination: SocketAddr,
        contents: Vec<u8>,
    },
    /// Deliver this to the application.
    Event(RoomEvent),
    /// Answer a request.
    Reply(Reply, Result<(), Error>),
    /// The signaling connection is gone: drop it, wait `delay`, then open a resuming one and
    /// report [`Core::resumed`] or [`Core::resume_failed`].
    Resume { attempt: u32, delay: Duration },
    /// The session is gone for good: drop the signaling connection, wait `delay`, get a
    /// fresh token from the token source, join again from scratch (no `reconnect`), and report
    /// [`Core::rejoined`] or [`Core::rejoin_failed`].
    Rejoin { attempt: u32, delay: Duration },
    /// The room is over for us: close the signaling connection and stop.
    Closed,
}

struct Pc {
    rtc: Rtc,
    local: SocketAddr,
    timeout: Instant,
    connected: bool,
    ice: IceConnectionState,
}

impl Pc {
    fn new(local: SocketAddr, now: Instant) -> Result<Self, Error> {
        let mut rtc = Rtc::builder()
            .clear_codecs()
            .enable_opus(true, false)
            .enable_vp8(true)
            .build(now);
        let cand = Candidate::host(local, "udp").map_err(|e| Error::Media(e.to_string()))?;
        rtc.add_local_candidate(cand);
        Ok(Self {
            rtc,
            local,
            timeout: now,
            connected: false,
            ice: IceConnectionState::New,
        })
    }
}

struct RemoteTrack {
    identity: String,
    encrypted: bool,
    announced: bool,
}

/// The health of the signaling connection.
enum SignalState {
    /// Live: when the server last said anything, and when we ping next.
    Up {
        last_rx: Instant,
        next_ping: Instant,
    },
    /// Lost; resume attempt `attempt` is under way. Requests wait in `queued`.
    Resuming {
        attempt: u32,
        reason: String,
        queued: Vec<Req>,
    },
    /// The session is gone (resume refused or out of tries): fresh join `attempt` is under
    /// way. Signaling requests of the old session are dropped.
    Rejoining { attempt: u32, reason: String },
    /// The room is over.
    Closed,
}

/// A track we published, to publish again after a full reconnect.
#[derive(Clone, Debug, PartialEq, Eq)]
struct Publication {
    video: bool,
    name: String,
    width: u32,
    height: u32,
}

/// A track asked for and not confirmed yet: its client id, the caller's reply (none when it
/// is published again after a rejoin), the deadline.
struct PendingPublish {
    cid: String,
    publication: Publication,
    reply: Option<Reply>,
    deadline: Instant,
}

/// One participant's room, without IO.
pub(crate) struct Core {
    sub: Pc,
    publ: Pc,
    out: VecDeque<Output>,
    /// The time of the latest input (the core reads no clock of its own), and of the start:
    /// ping timestamps are milliseconds since then (the server only echoes them).
    now: Instant,
    started: Instant,
    /// The signaling round trip the last pong measured, reported in the next ping.
    rtt_ms: i64,
    signal: SignalState,
    ping_interval: Duration,
    ping_timeout: Duration,
    policy: ReconnectPolicy,
    sif_trailer: Vec<u8>,
    /// E2EE: the template keyring, our encryptor, one decryptor per remote identity.
    key_ring: Option<KeyRing>,
    encryptor: Option<FrameEncryptor>,
    decryptors: HashMap<String, FrameDecryptor>,
    /// Remote tracks by sid, participants by sid, subscriber mids by track sid.
    tracks: HashMap<String, RemoteTrack>,
    participants: HashMap<String, String>,
    mid_track: HashMap<Mid, String>,
    /// The SSRC LiveKit's last subscriber offer announced on each m-line.
    sub_ssrcs: HashMap<Mid, u32>,
    decoders: HashMap<Mid, OpusDecoder>,
    /// Publishing: the track the server has not confirmed yet (client id, reply, deadline).
    pending_publish: Option<PendingPublish>,
    /// What we published (kept for a rejoin), and what still waits to be published again.
    published: Vec<Publication>,
    republish: VecDeque<(Publication, Option<Reply>)>,
    /// Whether a refused resume may become a full reconnect (the driver has a token source).
    can_rejoin: bool,
    audio_mid: Option<Mid>,
    video_mid: Option<Mid>,
    /// Our unanswered publisher offer (its SDP kept to send again after a resume).
    pending_offer: Option<(SdpPendingOffer, Option<Reply>, String)>,
    channels_added: bool,
    /// A publish confirmed while another offer was still unanswered: negotiated after it.
    deferred_media: Option<(MediaKind, String, Option<Reply>)>,
    /// Data: our identity, the publisher's `_reliable` channel, and messages waiting for it.
    me: String,
    reliable: Option<ChannelId>,
    reliable_open: bool,
    data_seq: u32,
    pending_data: Vec<(Vec<u8>, Reply, Instant)>,
    encoder: Option<OpusEncoder>,
    opus_complexity: Option<u8>,
    rtp_samples: u64,
    connected_sent: bool,
}

impl Core {
    /// A room we have just joined (`join`), with one UDP socket per peer connection bound at
    /// `sub_local` and `pub_local`; `can_rejoin` when a token source allows full reconnects.
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn new(
        join: &lk::JoinResponse,
        e2ee: Option<KeyRing>,
        policy: ReconnectPolicy,
        can_rejoin: bool,
        opus_complexity: Option<u8>,
        sub_local: SocketAddr,
        pub_local: SocketAddr,
        now: Instant,
    ) -> Result<Core, Error> {
        let me = join.participant.clone().unwrap_or_default();
        let encryptor = e2ee
            .clone()
            .map(|r| FrameEncryptor::new(r, &mut rand::rng()));
        let ping_interval =
            Duration::from_secs(u64::from(join.ping_interval.max(1).unsigned_abs()));
        let ping_timeout = Duration::from_secs(u64::from(join.ping_timeout.max(0).unsigned_abs()))
            .max(ping_interval * 2);
        let mut core = Core {
            sub: Pc::new(sub_local, now)?,
            publ: Pc::new(pub_local, now)?,
            out: VecDeque::new(),
            now,
            started: now,
            rtt_ms: 0,
            signal: SignalState::Up {
                last_rx: now,
                next_ping: now + ping_interval,
            },
            ping_interval,
            ping_timeout,
            policy,
            sif_trailer: join.sif_trailer.clone(),
            key_ring: e2ee,
            encryptor,
            decryptors: HashMap::new(),
            tracks: HashMap::new(),
            participants: HashMap::new(),
            mid_track: HashMap::new(),
            sub_ssrcs: HashMap::new(),
            decoders: HashMap::new(),
            pending_publish: None,
            published: Vec::new(),
            republish: VecDeque::new(),
            can_rejoin,
            audio_mid: None,
            video_mid: None,
            pending_offer: None,
            channels_added: false,
            deferred_media: None,
            me: me.identity,
            reliable: None,
            reliable_open: false,
            data_seq: 0,
            pending_data: Vec::new(),
            encoder: None,
            opus_complexity,
            rtp_samples: 0,
            connected_sent: false,
        };
        for p in &join.other_participants {
            core.update_participant(p);
        }
        core.pump(Side::Subscriber);
        core.pump(Side::Publisher);
        Ok(core)
    }

    /// The next thing to do, if any.
    pub(crate) fn poll_output(&mut self) -> Option<Output> {
        self.out.pop_front()
    }

    /// When [`Core::handle_timeout`] must be called next.
    pub(crate) fn poll_timeout(&self) -> Instant {
        let mut t = self.sub.timeout.min(self.publ.timeout);
        if let SignalState::Up { last_rx, next_ping } = &self.signal {
            t = t.min(*next_ping).min(*last_rx + self.ping_timeout);
        }
        if let Some(p) = &self.pending_publish {
            t = t.min(p.deadline);
        }
        if let Some(d) = self.pending_data.first() {
            t = t.min(d.2);
        }
        t
    }

    fn millis(&self, t: Instant) -> i64 {
        i64::try_from(t.saturating_duration_since(self.started).as_millis()).unwrap_or(i64::MAX)
    }

    /// Whether the room is over (after [`Output::Closed`]).
    pub(crate) fn is_closed(&self) -> bool {
        matches!(self.signal, SignalState::Closed)
    }

    /// The clock moved: str0m's timers, pings, the server's silence, request deadlines.
    pub(crate) fn handle_timeout(&mut self, now: Instant) {
        self.now = now;
        for side in [Side::Subscriber, Side::Publisher] {
            if self.pc(side).timeout <= now {
                let _ = self.pc(side).rtc.handle_input(Input::Timeout(now));
                self.pump(side);
            }
        }
        if let SignalState::Up { last_rx, next_ping } = &mut self.signal {
            let silent = now.saturating_duration_since(*last_rx);
            let ping_due = *next_ping <= now;
            if ping_due {
                *next_ping = now + self.ping_interval;
            }
            if silent >= self.ping_timeout {
                let reason = format!(
                    "no message from the server for {:.0} s",
                    silent.as_secs_f32()
                );
                self.signal_lost(now, reason);
            } else if ping_due {
                let timestamp = self.millis(now);
                let rtt = self.rtt_ms;
                self.send_signal(Req::PingReq(lk::Ping { timestamp, rtt }));
            }
        }
        if self
            .pending_publish
            .as_ref()
            .is_some_and(|p| p.deadline <= now)
            && let Some(p) = self.pending_publish.take()
        {
            match p.reply {
                Some(reply) => self.reply(
                    reply,
                    Err(Error::Timeout("the server to confirm the track")),
                ),
                None => {
                    warn!(name = %p.publication.name, "a track published again was not confirmed")
                }
            }
            self.next_republish(now);
        }
        let (late, waiting): (Vec<_>, Vec<_>) = std::mem::take(&mut self.pending_data)
            .into_iter()
            .partition(|d| d.2 <= now);
        self.pending_data = waiting;
        for (_, reply, _) in late {
            self.reply(reply, Err(Error::Timeout("the data channel to open")));
        }
    }

    /// A datagram arrived on `side`'s socket.
    pub(crate) fn handle_receive(
        &mut self,
        now: Instant,
        side: Side,
        from: SocketAddr,
        data: &[u8],
    ) {
        self.now = now;
        let pc = self.pc(side);
        let Ok(recv) = Receive::new(Protocol::Udp, from, pc.local, data) else {
            return;
        };
        if let Err(e) = pc.rtc.handle_input(Input::Receive(now, recv)) {
            debug!(error = %e, ?side, "input rejected");
        }
        self.pump(side);
    }

    /// The application asked for something.
    pub(crate) fn handle_command(&mut self, now: Instant, cmd: Command) {
        self.now = now;
        if self.is_closed() {
            if let Some(reply) = cmd.into_reply() {
                self.reply(reply, Err(Error::Closed));
            }
            return;
        }
        match cmd {
            Command::Leave { reply } => {
                self.send_signal(Req::Leave(lk::LeaveRequest {
                    can_reconnect: false,
                    reason: lk::DisconnectReason::ClientInitiated as i32,
                    action: lk::leave_request::Action::Disconnect as i32,
                    regions: None,
                }));
                self.reply(reply, Ok(()));
                self.close("left".into());
            }
            Command::PublishAudio { name, reply } => {
                let p = Publication {
                    video: false,
                    name,
                    width: 0,
                    height: 0,
                };
                self.start_publish(now, p, Some(reply))
            }
            Command::PublishVideo {
                name,
                width,
                height,
                reply,
            } => {
                let p = Publication {
                    video: true,
                    name,
                    width,
                    height,
                };
                self.start_publish(now, p, Some(reply))
            }
            Command::AudioFrame(pcm) => {
                if let Err(e) = self.write_audio(now, &pcm) {
                    warn!(error = %e, "audio frame not sent");
                }
            }
            Command::VideoFrame { vp8, capture_ms } => self.write_video(now, vp8, capture_ms),
            Command::RequestKeyframe { track_sid } => self.request_keyframe(&track_sid),
            Command::ConnectPublisher => {
                // Nothing to do once a track or data opened it (or is opening it).
                if !self.channels_added && self.pending_offer.is_none() {
                    self.negotiate(None, None);
                }
            }
            Command::SendData {
                payload,
                topic,
                reply,
            } => self.send_data(now, payload, topic, reply),
            Command::RatchetKey { reply } => {
                let r = self.ratchet_key();
                self.reply(reply, r);
            }
            Command::SetKey {
                index,
                kdf,
                material,
                reply,
            } => {
                let r = self.set_key(index, kdf, &material);
                self.reply(reply, r);
            }
            Command::SetKeyIndex { index, reply } => {
                let r = match self.encryptor.as_mut() {
                    Some(enc) => enc
                        .key_ring_mut()
                        .set_current_index(index)
                        .map_err(Error::from),
                    None => Err(Error::NoE2ee),
                };
                self.reply(reply, r);
            }
        }
    }

    /// The application's handle is gone: leave.
    pub(crate) fn handle_dropped(&mut self, now: Instant) {
        if !self.is_closed() {
            let (tx, _rx) = oneshot::channel();
            self.handle_command(now, Command::Leave { reply: tx });
        }
    }

    /// A message from the server.
    pub(crate) fn handle_signal(&mut self, now: Instant, m: Resp) {
        if self.is_closed() {
            return;
        }
        self.now = now;
        if let SignalState::Up { last_rx, .. } = &mut self.signal {
            *last_rx = now;
        }
        if let Err(e) = self.on_signal(m) {
            warn!(error = %e, "signaling");
            self.fail(e.to_string());
        }
    }

    /// The signaling connection broke (closed, errored, or fell silent): resume it.
    pub(crate) fn signal_lost(&mut self, _now: Instant, reason: String) {
        if !matches!(self.signal, SignalState::Up { .. }) {
            return;
        }
        warn!(%reason, "signaling connection lost; resuming");
        self.signal = SignalState::Resuming {
            attempt: 0,
            reason: reason.clone(),
            queued: Vec::new(),
        };
        self.next_attempt(reason);
    }

    /// Sending `req` failed (the connection broke under it): the connection is lost, and the
    /// request waits for the resumed one like any other made meanwhile.
    pub(crate) fn signal_send_failed(&mut self, now: Instant, req: Req, error: String) {
        self.signal_lost(now, error);
        if let SignalState::Resuming { queued, .. } = &mut self.signal
            && !matches!(req, Req::PingReq(_))
        {
            queued.push(req);
        }
    }

    /// The server answered a resuming connection with `reconnect`: back to normal.
    pub(crate) fn resumed(&mut self, now: Instant, _response: &lk::ReconnectResponse) {
        let SignalState::Resuming {
            attempt, queued, ..
        } = std::mem::replace(
            &mut self.signal,
            SignalState::Up {
                last_rx: now,
                next_ping: now + self.ping_interval,
            },
        )
        else {
            return;
        };
        info!(attempt, "signaling resumed");
        self.out.push_back(Output::Event(RoomEvent::Reconnected));
        // An offer whose answer may have gone down with the old connection goes again.
        if let Some((_, _, sdp)) = &self.pending_offer {
            let sdp = sdp.clone();
            self.send_offer(sdp);
        }
        for req in queued {
            if !matches!(req, Req::Offer(_)) {
                self.send_signal(req);
            }
        }
        // A publisher whose ICE went down during the outage needs a restart; the server
        // restarts the subscriber's itself (it sends a new offer).
        if self.channels_added
            && self.pending_offer.is_none()
            && matches!(
                self.publ.ice,
                IceConnectionState::Disconnected | IceConnectionState::Checking
            )
        {
            let mut api = self.publ.rtc.sdp_api();
            api.ice_restart(true);
            if let Some((offer, pending)) = api.apply() {
                self.pump(Side::Publisher);
                let sdp = offer.to_sdp_string();
                self.pending_offer = Some((pending, None, sdp.clone()));
                self.send_offer(sdp);
            }
        }
    }

    /// A resume attempt failed. A refusal (the server no longer has us, or rejects the
    /// token) ends the room; anything else is tried again until the policy's attempts run out.
    pub(crate) fn resume_failed(&mut self, _now: Instant, error: &Error) {
        if !matches!(self.signal, SignalState::Resuming { .. }) {
            return;
        }
        warn!(error = %error, "resume attempt failed");
        if matches!(error, Error::Refused(_)) {
            self.give_up_session(format!("the server refused to resume the session: {error}"));
            return;
        }
        self.next_attempt(error.to_string());
    }

    /// The session cannot be resumed: rejoin from scratch when allowed, else close.
    fn give_up_session(&mut self, why: String) {
        if !self.can_rejoin || self.policy.rejoin_attempts == 0 {
            self.close(why);
            return;
        }
        warn!(reason = %why, "session lost; rejoining with a fresh token");
        // Requests queued for the old session mean nothing to a new one.
        self.signal = SignalState::Rejoining {
            attempt: 0,
            reason: why,
        };
        self.next_rejoin(String::new());
    }

    fn next_rejoin(&mut self, last_error: String) {
        let SignalState::Rejoining { attempt, reason } = &mut self.signal else {
            return;
        };
        if *attempt >= self.policy.rejoin_attempts {
            let why = format!(
                "{reason}; not rejoined after {} attempts (last: {last_error})",
                self.policy.rejoin_attempts
            );
            self.close(why);
            return;
        }
        *attempt += 1;
        let attempt = *attempt;
        let reason = reason.clone();
        let delay = self.policy.delay(attempt);
        self.out.push_back(Output::Event(RoomEvent::Reconnecting {
            attempt,
            reason,
            full: true,
        }));
        self.out.push_back(Output::Rejoin { attempt, delay });
    }

    /// A fresh join failed. No token (the source refused: the call is over, or we may not
    /// join any more) ends the room; anything else (no token *yet* included) is tried again
    /// until the policy's rejoin attempts run out.
    pub(crate) fn rejoin_failed(&mut self, now: Instant, error: &Error) {
        self.now = now;
        if !matches!(self.signal, SignalState::Rejoining { .. }) {
            return;
        }
        warn!(error = %error, "rejoin attempt failed");
        if matches!(error, Error::Token(_)) {
            self.close(format!("could not rejoin: {error}"));
            return;
        }
        self.next_rejoin(error.to_string());
    }

    /// A fresh join succeeded (`join`): new peer connections on the same sockets, the room's
    /// participants and tracks from the join, our tracks published again. The E2EE keyring,
    /// our encryptor and every sender's decryptor stay as they are, so frames before and
    /// after are under the same keys.
    pub(crate) fn rejoined(&mut self, now: Instant, join: &lk::JoinResponse) -> Result<(), Error> {
        self.now = now;
        let SignalState::Rejoining { attempt, .. } = self.signal else {
            return Ok(());
        };
        info!(attempt, "rejoined the room with a fresh join");
        let sub = Pc::new(self.sub.local, now)?;
        let publ = Pc::new(self.publ.local, now)?;
        self.sub = sub;
        self.publ = publ;
        let ping_interval =
            Duration::from_secs(u64::from(join.ping_interval.max(1).unsigned_abs()));
        self.ping_interval = ping_interval;
        self.ping_timeout = Duration::from_secs(u64::from(join.ping_timeout.max(0).unsigned_abs()))
            .max(ping_interval * 2);
        self.signal = SignalState::Up {
            last_rx: now,
            next_ping: now + ping_interval,
        };
        self.sif_trailer = join.sif_trailer.clone();
        for dec in self.decryptors.values_mut() {
            dec.set_sif_trailer(join.sif_trailer.clone());
        }
        // The old session's negotiation is gone with it. A track the server had confirmed is
        // published again below like every other, so its caller is answered now; one it had
        // not confirmed yet is asked for again first, and answered when that is confirmed.
        if let Some((_, Some(reply), _)) = self.pending_offer.take() {
            self.reply(reply, Ok(()));
        }
        if let Some((_, _, Some(reply))) = self.deferred_media.take() {
            self.reply(reply, Ok(()));
        }
        let unconfirmed = self.pending_publish.take();
        self.audio_mid = None;
        self.video_mid = None;
        let had_channels = self.channels_added;
        self.channels_added = false;
        self.reliable = None;
        self.reliable_open = false;
        self.tracks.clear();
        self.mid_track.clear();
        self.sub_ssrcs.clear();
        self.decoders.clear();
        // Participants the new session does not show yet (they may be rejoining too) are
        // forgotten without a `ParticipantLeft`; they are announced again when they come.
        let before = std::mem::take(&mut self.participants);
        let known: std::collections::HashSet<String> = before.into_values().collect();
        for p in &join.other_participants {
            if known.contains(&p.identity) {
                self.participants.insert(p.sid.clone(), p.identity.clone());
            }
            self.update_participant(p);
        }
        self.emit(RoomEvent::Reconnected);
        self.pump(Side::Subscriber);
        self.pump(Side::Publisher);
        self.republish = std::mem::take(&mut self.published)
            .into_iter()
            .map(|p| (p, None))
            .collect();
        if let Some(p) = unconfirmed {
            self.republish.push_front((p.publication, p.reply));
        }
        if self.republish.is_empty() {
            if had_channels || !self.pending_data.is_empty() {
                self.negotiate(None, None);
            }
        } else {
            self.next_republish(now);
        }
        Ok(())
    }

    /// Publishes the next track of a rejoin again, if any and none is pending.
    fn next_republish(&mut self, now: Instant) {
        if self.pending_publish.is_some() || !matches!(self.signal, SignalState::Up { .. }) {
            return;
        }
        if let Some((p, reply)) = self.republish.pop_front() {
            debug!(name = %p.name, video = p.video, "publishing again after the rejoin");
            self.start_publish(now, p, reply);
        }
    }

    fn next_attempt(&mut self, last_error: String) {
        let SignalState::Resuming {
            attempt, reason, ..
        } = &mut self.signal
        else {
            return;
        };
        if *attempt >= self.policy.attempts {
            let why = format!(
                "signaling connection lost ({reason}) and not resumed after {} attempts (last: {last_error})",
                self.policy.attempts
            );
            self.give_up_session(why);
            return;
        }
        *attempt += 1;
        let attempt = *attempt;
        let reason = reason.clone();
        let delay = self.policy.delay(attempt);
        self.out.push_back(Output::Event(RoomEvent::Reconnecting {
            attempt,
            reason,
            full: false,
        }));
        self.out.push_back(Output::Resume { attempt, delay });
    }

    /// Ends the room for a local failure.
    fn fail(&mut self, reason: String) {
        self.send_signal(Req::Leave(lk::LeaveRequest {
            can_reconnect: false,
            reason: lk::DisconnectReason::ClientInitiated as i32,
            action: lk::leave_request::Action::Disconnect as i32,
            regions: None,
        }));
        self.close(reason);
    }

    fn close(&mut self, reason: String) {
        if self.is_closed() {
            return;
        }
        info!(%reason, "room closed");
        self.signal = SignalState::Closed;
        if let Some(PendingPublish {
            reply: Some(reply), ..
        }) = self.pending_publish.take()
        {
            self.reply(reply, Err(Error::Closed));
        }
        if let Some((_, Some(reply), _)) = self.pending_offer.take() {
            self.reply(reply, Err(Error::Closed));
        }
        if let Some((_, _, Some(reply))) = self.deferred_media.take() {
            self.reply(reply, Err(Error::Closed));
        }
        for (_, reply, _) in std::mem::take(&mut self.pending_data) {
            self.reply(reply, Err(Error::Closed));
        }
        self.out
            .push_back(Output::Event(RoomEvent::Disconnected { reason }));
        self.out.push_back(Output::Closed);
    }

    fn reply(&mut self, reply: Reply, result: Result<(), Error>) {
        self.out.push_back(Output::Reply(reply, result));
    }

    fn emit(&mut self, ev: RoomEvent) {
        self.out.push_back(Output::Event(ev));
    }

    fn send_signal(&mut self, req: Req) {
        match &mut self.signal {
            SignalState::Up { .. } => self.out.push_back(Output::Signal(Box::new(req))),
            SignalState::Resuming { queued, .. } => {
                // A ping is about a connection that no longer exists.
                if !matches!(req, Req::PingReq(_)) {
                    queued.push(req);
                }
            }
            // The old session's requests mean nothing to the next one.
            SignalState::Rejoining { .. } | SignalState::Closed => {}
        }
    }

    fn send_offer(&mut self, sdp: String) {
        self.send_signal(Req::Offer(lk::SessionDescription {
            r#type: "offer".into(),
            sdp,
            id: 1,
            mid_to_track_id: HashMap::new(),
        }));
    }

    fn pc(&mut self, side: Side) -> &mut Pc {
        match side {
            Side::Subscriber => &mut self.sub,
            Side::Publisher => &mut self.publ,
        }
    }

    /// Drains one peer connection and handles its events (which may mutate it again).
    fn pump(&mut self, side: Side) {
        let never = self.now + NEVER;
        loop {
            let mut events = Vec::new();
            loop {
                let pc = self.pc(side);
                match pc.rtc.poll_output() {
                    Ok(RtcOutput::Timeout(t)) => {
                        pc.timeout = t;
                        break;
                    }
                    Ok(RtcOutput::Transmit(t)) => self.out.push_back(Output::Transmit {
                        side,
                        destination: t.destination,
                        contents: t.contents.into(),
                    }),
                    Ok(RtcOutput::Event(e)) => events.push(e),
                    Err(e) => {
                        warn!(error = %e, ?side, "peer connection failed");
                        pc.timeout = never;
                        events.push(Event::IceConnectionStateChange(
                            IceConnectionState::Disconnected,
                        ));
                        break;
                    }
                }
            }
            if events.is_empty() {
                return;
            }
            for e in events {
                self.on_event(side, e);
            }
        }
    }

    fn on_event(&mut self, side: Side, e: Event) {
        match e {
            Event::Connected => {
                debug!(?side, "peer connection up");
                self.pc(side).connected = true;
                if self.sub.connected && !self.connected_sent {
                    self.connected_sent = true;
                    self.emit(RoomEvent::Connected);
                }
            }
            Event::IceConnectionStateChange(s) => {
                debug!(?side, state = ?s, "ice");
                self.pc(side).ice = s;
            }
            Event::MediaAdded(m) if side == Side::Subscriber => {
                let track = self.sub.rtc.media(m.mid).map(|x| x.track_id().to_owned());
                debug!(mid = %m.mid, ?track, "subscriber media added");
                if let Some(t) = track.filter(|t| !t.is_empty()) {
                    self.mid_track.insert(m.mid, t);
                }
            }
            Event::MediaData(d) if side == Side::Subscriber => {
                self.on_media(d.mid, d.params.spec().codec, &d.data)
            }
            Event::ChannelOpen(id, label) => {
                debug!(?side, %label, "data channel open");
                if side == Side::Publisher && Some(id) == self.reliable {
                    self.reliable_open = true;
                    for (packet, reply, _) in std::mem::take(&mut self.pending_data) {
                        let r = self.write_reliable(&packet);
                        self.reply(reply, r);
                    }
                }
            }
            Event::ChannelData(d) => self.on_data(&d.data),
            Event::KeyframeRequest(r)
                if side == Side::Publisher && Some(r.mid) == self.video_mid =>
            {
                self.emit(RoomEvent::KeyframeRequested);
            }
            _ => {}
        }
    }

    /// One depacketized frame from the subscriber connection: decrypt (E2EE), then decode
    /// (audio) or hand over (VP8). A frame that does not decrypt never reaches a decoder.
    fn on_media(&mut self, mid: Mid, codec: Codec, data: &[u8]) {
        let kind = match codec {
            Codec::Opus => FrameKind::Audio,
            Codec::Vp8 => FrameKind::Vp8,
            _ => return,
        };
        let Some(track_sid) = self.mid_track.get(&mid).cloned() else {
            debug!(%mid, "media on a mid with no track");
            return;
        };
        let Some(track) = self.tracks.get_mut(&track_sid) else {
            debug!(%mid, %track_sid, "media of a track no participant announced");
            return;
        };
        let identity = track.identity.clone();
        let encrypted = track.encrypted;
        if !track.announced {
            track.announced = true;
            self.emit(RoomEvent::TrackSubscribed {
                identity: identity.clone(),
                track_sid: track_sid.clone(),
                encrypted,
            });
            if self.key_ring.is_some() && !encrypted {
                warn!(%identity, %track_sid, "track is not end-to-end encrypted; not playing it");
                self.emit(RoomEvent::UnencryptedTrack {
                    identity: identity.clone(),
                    track_sid: track_sid.clone(),
                });
            }
        }
        let mut frame = data.to_vec();
        if self.key_ring.is_some() && !encrypted {
            return;
        }
        if let Some(dec) = self.decryptor(&identity) {
            match dec.decrypt_in_place(kind, &mut frame) {
                Ok(Outcome::Frame) => {}
                Ok(Outcome::Empty | Outcome::ServerInjected) => return,
                Err(error) => {
                    let stats = dec.stats();
                    self.emit(RoomEvent::DecryptionFailed {
                        identity,
                        error,
                        stats,
                    });
                    return;
                }
            }
        }
        if kind == FrameKind::Vp8 {
            let keyframe = frame.first().is_some_and(|b| b & 1 == 0);
            self.emit(RoomEvent::VideoFrame {
                identity,
                track_sid,
                vp8: frame,
                keyframe,
            });
            return;
        }
        let dec = match self.decoders.entry(mid) {
            std::collections::hash_map::Entry::Occupied(o) => o.into_mut(),
            std::collections::hash_map::Entry::Vacant(v) => match OpusDecoder::new() {
                Ok(d) => v.insert(d),
                Err(e) => {
                    warn!(error = %e, "opus decoder");
                    return;
                }
            },
        };
        match dec.decode(&frame) {
            Ok(pcm) => {
                self.emit(RoomEvent::AudioFrame {
                    identity,
                    track_sid,
                    pcm,
                });
            }
            Err(e) => debug!(error = %e, "opus decode failed"),
        }
    }

    /// The decryptor of `identity`'s frames (made from a copy of the room's keyring, so
    /// ratchets are per sender); `None` without E2EE.
    fn decryptor(&mut self, identity: &str) -> Option<&mut FrameDecryptor> {
        let ring = self.key_ring.as_ref()?;
        let sif = &self.sif_trailer;
        Some(
            self.decryptors
                .entry(identity.to_owned())
                .or_insert_with(|| {
                    let mut d = FrameDecryptor::new(ring.clone());
                    d.set_sif_trailer(sif.clone());
                    d
                }),
        )
    }

    /// LiveKit reuses a subscriber m-line (its `mid`) for the next track it sends there, e.g.
    /// the oracle's agent dispatched again after the first one died, announcing the new
    /// stream's SSRC in the offer. str0m 0.25 keeps the m-line's depacketizer from the old
    /// stream and drops the new stream's packets until their sequence numbers pass the old
    /// ones (seconds, minutes or never). So an m-line whose announced SSRC changed is removed
    /// before the offer is read: str0m then takes it as a new m-line in the same slot, with
    /// fresh receive state (and `MediaAdded` again), and its Opus decoder starts over too.
    fn restart_reused_mlines(&mut self, sdp: &str) {
        for (mid, ssrc) in signal::announced_ssrcs(sdp) {
            let mid = Mid::from(mid.as_str());
            let before = self.sub_ssrcs.insert(mid, ssrc);
            if before.is_some_and(|b| b != ssrc) && self.sub.rtc.media(mid).is_some() {
                debug!(%mid, ?before, ssrc, "a subscriber m-line carries a new stream: it starts over");
                self.sub.rtc.direct_api().remove_media(mid);
                self.decoders.remove(&mid);
            }
        }
    }

    fn on_signal(&mut self, m: Resp) -> Result<(), Error> {
        match m {
            Resp::Offer(sd) => {
                debug!(mids = ?sd.mid_to_track_id, "subscriber offer");
                for (mid, track) in &sd.mid_to_track_id {
                    self.mid_track
                        .insert(Mid::from(mid.as_str()), track.clone());
                }
                self.restart_reused_mlines(&sd.sdp);
                let offer = SdpOffer::from_sdp_string(&sd.sdp)
                    .map_err(|e| Error::Media(format!("subscriber offer: {e}")))?;
                let answer =
                    self.sub.rtc.sdp_api().accept_offer(offer).map_err(|e| {
                        Error::Media(format!("accepting the subscriber offer: {e}"))
                    })?;
                self.pump(Side::Subscriber);
                self.send_signal(Req::Answer(lk::SessionDescription {
                    r#type: "answer".into(),
                    sdp: answer.to_sdp_string(),
                    id: sd.id,
                    mid_to_track_id: HashMap::new(),
                }));
            }
            Resp::Answer(sd) => {
                if let Some((pending, reply, _)) = self.pending_offer.take() {
                    let answer = SdpAnswer::from_sdp_string(&sd.sdp)
                        .map_err(|e| Error::Media(format!("publisher answer: {e}")))?;
                    let r = self
                        .publ
                        .rtc
                        .sdp_api()
                        .accept_answer(pending, answer)
                        .map_err(|e| Error::Media(format!("accepting the publisher answer: {e}")));
                    self.pump(Side::Publisher);
                    if let Some(reply) = reply {
                        self.reply(reply, r);
                    }
                    if let Some((kind, cid, reply)) = self.deferred_media.take() {
                        self.negotiate(Some((kind, cid)), reply);
                    }
                }
            }
            Resp::Trickle(t) => {
                let side = if t.target == lk::SignalTarget::Subscriber as i32 {
                    Side::Subscriber
                } else {
                    Side::Publisher
                };
                if let Some(line) = signal::candidate_line(&t.candidate_init) {
                    match Candidate::from_sdp_string(&line) {
                        Ok(c) => {
                            self.pc(side).rtc.add_remote_candidate(c);
                            self.pump(side);
                        }
                        Err(e) => debug!(error = %e, "unparsable remote candidate"),
                    }
                }
            }
            Resp::Update(u) => {
                for p in &u.participants {
                    self.update_participant(p);
                }
            }
            Resp::TrackPublished(tp) => {
                let matches = self
                    .pending_publish
                    .as_ref()
                    .is_some_and(|p| p.cid == tp.cid);
                if matches && let Some(p) = self.pending_publish.take() {
                    let kind = if p.publication.video {
                        MediaKind::Video
                    } else {
                        MediaKind::Audio
                    };
                    self.published.push(p.publication);
                    if self.pending_offer.is_some() {
                        // One offer at a time: this one follows the answer to the current one.
                        self.deferred_media = Some((kind, p.cid, p.reply));
                    } else {
                        self.negotiate(Some((kind, p.cid)), p.reply);
                    }
                    let now = self.now;
                    self.next_republish(now);
                }
            }
            Resp::PongResp(p) if p.last_ping_timestamp > 0 => {
                self.rtt_ms = (self.millis(self.now) - p.last_ping_timestamp).max(0);
            }
            Resp::Leave(l) => {
                self.close(format!(
                    "the server asked us to leave (reason {})",
                    l.reason
                ));
            }
            Resp::Join(_) => return Err(Error::Protocol("second join")),
            _ => {}
        }
        Ok(())
    }

    fn update_participant(&mut self, p: &lk::ParticipantInfo) {
        if p.identity == self.me {
            return;
        }
        let gone = p.state == lk::participant_info::State::Disconnected as i32;
        if gone {
            if self.participants.remove(&p.sid).is_some() {
                self.decryptors.remove(&p.identity);
                self.emit(RoomEvent::ParticipantLeft {
                    identity: p.identity.clone(),
                });
            }
            return;
        }
        if self
            .participants
            .insert(p.sid.clone(), p.identity.clone())
            .is_none()
        {
            self.emit(RoomEvent::ParticipantJoined {
                identity: p.identity.clone(),
                joined_at_ms: p.joined_at_ms,
            });
        }
        for t in &p.tracks {
            let encrypted = t.encryption != lk::encryption::Type::None as i32;
            self.tracks
                .entry(t.sid.clone())
                .and_modify(|x| x.encrypted = encrypted)
                .or_insert(RemoteTrack {
                    identity: p.identity.clone(),
                    encrypted,
                    announced: false,
                });
        }
    }

    /// Asks the server for a track (`AddTrackRequest`, GCM-encrypted when E2EE is on, RED
    /// off); the answer is `TrackPublished` with our client id, then we negotiate the media.
    fn start_publish(&mut self, now: Instant, publication: Publication, reply: Option<Reply>) {
        let video = publication.video;
        let taken = self.published.iter().any(|p| p.video == video)
            || self.republish.iter().any(|(p, _)| p.video == video);
        if taken || self.pending_publish.is_some() {
            let e = Error::Protocol(
                "a track of this kind is already published, or a publication is pending",
            );
            match reply {
                Some(reply) => self.reply(reply, Err(e)),
                None => warn!(error = %e, "not published again"),
            }
            return;
        }
        let (kind, source) = if video {
            (lk::TrackType::Video, lk::TrackSource::Camera)
        } else {
            (lk::TrackType::Audio, lk::TrackSource::Microphone)
        };
        let cid = format!("oc-{}-{}", kind.as_str_name(), rand::random::<u32>());
        let encryption = if self.key_ring.is_some() {
            lk::encryption::Type::Gcm
        } else {
            lk::encryption::Type::None
        };
        self.send_signal(Req::AddTrack(lk::AddTrackRequest {
            cid: cid.clone(),
            name: publication.name.clone(),
            r#type: kind as i32,
            source: source as i32,
            width: publication.width,
            height: publication.height,
            disable_red: true,
            encryption: encryption as i32,
            ..Default::default()
        }));
        self.pending_publish = Some(PendingPublish {
            cid,
            publication,
            reply,
            deadline: now + PUBLISH_TIMEOUT,
        });
    }

    /// Sends the publisher connection an offer adding the track `media` (if any) and, the
    /// first time, the `_reliable` and `_lossy` data channels LiveKit expects.
    fn negotiate(&mut self, media: Option<(MediaKind, String)>, reply: Option<Reply>) {
        let mut api = self.publ.rtc.sdp_api();
        let kind = media.as_ref().map(|m| m.0);
        let mid = media.map(|(kind, cid)| {
            api.add_media(
                kind,
                Direction::SendOnly,
                Some(format!("oc-{cid}")),
                Some(cid),
                None,
            )
        });
        if !self.channels_added {
            self.reliable = Some(api.add_channel_with_config(ChannelConfig {
                label: "_reliable".into(),
                ordered: true,
                reliability: Reliability::Reliable,
                ..Default::default()
            }));
            api.add_channel_with_config(ChannelConfig {
                label: "_lossy".into(),
                ordered: false,
                reliability: Reliability::MaxRetransmits { retransmits: 0 },
                ..Default::default()
            });
            self.channels_added = true;
        }
        let Some((offer, pending)) = api.apply() else {
            if let Some(reply) = reply {
                self.reply(reply, Err(Error::Media("no offer to send".into())));
            }
            return;
        };
        self.pump(Side::Publisher);
        match kind {
            Some(MediaKind::Audio) => self.audio_mid = mid,
            Some(MediaKind::Video) => self.video_mid = mid,
            None => {}
        }
        let sdp = offer.to_sdp_string();
        self.pending_offer = Some((pending, reply, sdp.clone()));
        self.send_offer(sdp);
    }

    fn request_keyframe(&mut self, track_sid: &str) {
        let mid = self
            .mid_track
            .iter()
            .find(|(_, t)| t.as_str() == track_sid)
            .map(|(m, _)| *m);
        let Some(mid) = mid else {
            debug!(%track_sid, "key frame request for an unknown track");
            return;
        };
        if let Some(mut w) = self.sub.rtc.writer(mid)
            && let Err(e) = w.request_keyframe(None, str0m::media::KeyframeRequestKind::Pli)
        {
            debug!(error = %e, "key frame request failed");
        }
        self.pump(Side::Subscriber);
    }

    /// Encrypts (E2EE) and sends one VP8 frame; dropped before the connection is up.
    fn write_video(&mut self, now: Instant, mut frame: Vec<u8>, capture_ms: u64) {
        let Some(mid) = self.video_mid else {
            return;
        };
        if !self.publ.connected {
            return;
        }
        if let Some(e) = self.encryptor.as_mut()
            && let Err(e) = e.encrypt_in_place(FrameKind::Vp8, &mut frame)
        {
            warn!(error = %e, "video frame not encrypted; not sent");
            return;
        }
        let rtp = MediaTime::new(capture_ms.saturating_mul(90), Frequency::NINETY_KHZ);
        let Some(writer) = self.publ.rtc.writer(mid) else {
            return;
        };
        let pt: Option<Pt> = writer
            .payload_params()
            .find(|p| p.spec().codec == Codec::Vp8)
            .map(|p| p.pt());
        let Some(pt) = pt else { return };
        if let Err(e) = writer.write(pt, now, rtp, frame) {
            debug!(error = %e, "video write failed");
        }
        self.pump(Side::Publisher);
    }

    /// Encodes (Opus), encrypts (E2EE) and sends one 20 ms frame.
    fn write_audio(&mut self, now: Instant, pcm: &[i16]) -> Result<(), Error> {
        let Some(mid) = self.audio_mid else {
            return Ok(());
        };
        if !self.publ.connected {
            // Nothing can be sent before DTLS is up; keep the clock running.
            self.rtp_samples += AUDIO_FRAME_SAMPLES as u64;
            return Ok(());
        }
        if self.encoder.is_none() {
            let e =
                OpusEncoder::new(self.opus_complexity).map_err(|e| Error::Codec(e.to_string()))?;
            self.encoder = Some(e);
        }
        let Some(enc) = self.encoder.as_mut() else {
            return Ok(());
        };
        let mut out = enc.encode(pcm).map_err(|e| Error::Codec(e.to_string()))?;
        if let Some(e) = self.encryptor.as_mut() {
            e.encrypt_in_place(FrameKind::Audio, &mut out)?;
        }
        let level = level_dbov(pcm);
        let rtp = MediaTime::new(self.rtp_samples, Frequency::FORTY_EIGHT_KHZ);
        self.rtp_samples += AUDIO_FRAME_SAMPLES as u64;
        let Some(writer) = self.publ.rtc.writer(mid) else {
            return Ok(());
        };
        let pt: Option<Pt> = writer
            .payload_params()
            .find(|p| p.spec().codec == Codec::Opus)
            .map(|p| p.pt());
        let Some(pt) = pt else { return Ok(()) };
        if let Err(e) = writer
            .audio_level(level, level > -50)
            .write(pt, now, rtp, out)
        {
            debug!(error = %e, "audio write failed");
        }
        self.pump(Side::Publisher);
        Ok(())
    }

    /// Queues or writes one reliable user packet, encrypted when E2EE is on.
    fn send_data(&mut self, now: Instant, payload: Vec<u8>, topic: Option<String>, reply: Reply) {
        let user = lk::UserPacket {
            payload,
            topic,
            ..Default::default()
        };
        self.data_seq = self.data_seq.wrapping_add(1);
        let value = match self.encryptor.as_mut() {
            Some(enc) => {
                let inner = lk::EncryptedPacketPayload {
                    value: Some(lk::encrypted_packet_payload::Value::User(user)),
                };
                let sealed = match enc.encrypt_data(&inner.encode_to_vec()) {
                    Ok(s) => s,
                    Err(e) => {
                        self.reply(reply, Err(e.into()));
                        return;
                    }
                };
                lk::data_packet::Value::EncryptedPacket(lk::EncryptedPacket {
                    encryption_type: lk::encryption::Type::Gcm as i32,
                    iv: sealed.iv.to_vec(),
                    key_index: u32::from(sealed.key_index),
                    encrypted_value: sealed.ciphertext,
                })
            }
            None => lk::data_packet::Value::User(user),
        };
        let packet = lk::DataPacket {
            participant_identity: self.me.clone(),
            sequence: self.data_seq,
            value: Some(value),
            ..Default::default()
        }
        .encode_to_vec();
        if self.reliable_open {
            let r = self.write_reliable(&packet);
            self.reply(reply, r);
            self.pump(Side::Publisher);
            return;
        }
        self.pending_data
            .push((packet, reply, now + DATA_OPEN_TIMEOUT));
        if !self.channels_added && self.pending_offer.is_none() {
            self.negotiate(None, None);
        }
    }

    fn write_reliable(&mut self, packet: &[u8]) -> Result<(), Error> {
        let id = self
            .reliable
            .ok_or_else(|| Error::Media("no data channel".into()))?;
        let mut ch = self
            .publ
            .rtc
            .channel(id)
            .ok_or_else(|| Error::Media("the data channel is closed".into()))?;
        match ch.write(true, packet) {
            Ok(true) => Ok(()),
            Ok(false) => Err(Error::Media(
                "the data channel's buffer is full; send again later".into(),
            )),
            Err(e) => Err(Error::Media(format!("data channel: {e}"))),
        }
    }

    /// A data channel message from the SFU: user packets become events; encrypted ones are
    /// decrypted with the sender's keyring first; plaintext ones in an E2EE room are reported.
    fn on_data(&mut self, bytes: &[u8]) {
        let Ok(packet) = lk::DataPacket::decode(bytes) else {
            debug!("undecodable data packet");
            return;
        };
        let identity = packet.participant_identity.clone();
        let (user, encrypted) = match packet.value {
            Some(lk::data_packet::Value::User(u)) => {
                if self.key_ring.is_some() {
                    warn!(%identity, "plaintext data message in an E2EE room; not delivered");
                    self.emit(RoomEvent::UnencryptedData { identity });
                    return;
                }
                (u, false)
            }
            Some(lk::data_packet::Value::EncryptedPacket(ep)) => {
                let key_index = u8::try_from(ep.key_index).unwrap_or(u8::MAX);
                let Some(dec) = self.decryptor(&identity) else {
                    debug!(%identity, "encrypted data message and no key; dropped");
                    return;
                };
                let plain = match dec.decrypt_data(&ep.iv, key_index, &ep.encrypted_value) {
                    Ok(p) => p,
                    Err(error) => {
                        self.emit(RoomEvent::DataDecryptionFailed { identity, error });
                        return;
                    }
                };
                match lk::EncryptedPacketPayload::decode(plain.as_slice()).map(|p| p.value) {
                    Ok(Some(lk::encrypted_packet_payload::Value::User(u))) => (u, true),
                    Ok(_) => return,
                    Err(_) => {
                        debug!(%identity, "undecodable encrypted payload");
                        return;
                    }
                }
            }
            _ => return,
        };
        self.emit(RoomEvent::DataReceived {
            identity,
            topic: user.topic,
            payload: user.payload,
            encrypted,
        });
    }

    /// Ratchets our sending key one step (LiveKit's `ratchetKey` on the current slot).
    /// Receivers follow with their bounded auto-ratchet.
    fn ratchet_key(&mut self) -> Result<(), Error> {
        let enc = self.encryptor.as_mut().ok_or(Error::NoE2ee)?;
        let ring = enc.key_ring_mut();
        let index = ring.current_index();
        ring.ratchet(index)?;
        Ok(())
    }

    /// Puts new shared key material into slot `index` everywhere: our sending keyring, every
    /// remote participant's, and the template new participants start from (shared-key mode,
    /// LiveKit's `setKey`).
    fn set_key(&mut self, index: u8, kdf: KeyDerivation, material: &[u8]) -> Result<(), Error> {
        let Some(ring) = self.key_ring.as_mut() else {
            return Err(Error::NoE2ee);
        };
        ring.set_key_material(index, kdf, material)?;
        if let Some(enc) = self.encryptor.as_mut() {
            enc.key_ring_mut().set_key_material(index, kdf, material)?;
        }
        for dec in self.decryptors.values_mut() {
            dec.key_ring_mut().set_key_material(index, kdf, material)?;
        }
        Ok(())
    }
}

impl Command {
    /// The reply of a request, to refuse it.
    fn into_reply(self) -> Option<Reply> {
        match self {
            Command::PublishAudio { reply, .. }
            | Command::PublishVideo { reply, .. }
            | Command::SendData { reply, .. }
            | Command::RatchetKey { reply }
            | Command::SetKey { reply, .. }
            | Command::SetKeyIndex { reply, .. }
            | Command::Leave { reply } => Some(reply),
            Command::AudioFrame(_)
            | Command::VideoFrame { .. }
            | Command::RequestKeyframe { .. }
            | Command::ConnectPublisher => None,
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::panic, clippy::indexing_slicing)]
mod tests {
    use super::*;
    use oracle_calls_crypto::CallKey;
    use oracle_calls_crypto::frame::KeyRingOptions;

    fn join() -> lk::JoinResponse {
        lk::JoinResponse {
            participant: Some(lk::ParticipantInfo {
                sid: "PA_me".into(),
                identity: "me".into(),
                ..Default::default()
            }),
            other_participants: vec![lk::ParticipantInfo {
                sid: "PA_b".into(),
                identity: "b".into(),
                state: lk::participant_info::State::Active as i32,
                ..Default::default()
            }],
            ping_interval: 5,
            ping_timeout: 15,
            ..Default::default()
        }
    }

    fn core(e2ee: bool, now: Instant) -> Core {
        core_with(e2ee, false, now)
    }

    fn core_with(e2ee: bool, can_rejoin: bool, now: Instant) -> Core {
        let ring = e2ee.then(|| {
            let key = CallKey::generate(&mut rand::rng());
            KeyRing::with_call_key(&key, KeyDerivation::Hkdf, KeyRingOptions::default()).unwrap()
        });
        let a: SocketAddr = "127.0.0.1:40000".parse().unwrap();
        let b: SocketAddr = "127.0.0.1:40001".parse().unwrap();
        // Not the default: waits that double up to 4 s, and 6 fresh joins, so the tests see
        // the backoff grow and stop growing (the default's own schedule has its own test).
        let policy = ReconnectPolicy {
            attempts: 6,
            rejoin_attempts: 6,
            first_delay: Duration::from_millis(250),
            max_delay: Duration::from_secs(4),
        };
        Core::new(&join(), ring, policy, can_rejoin, None, a, b, now).unwrap()
    }

    /// Everything the core asks, as short strings (datagrams left out).
    fn drain(c: &mut Core) -> Vec<String> {
        let mut v = Vec::new();
        while let Some(o) = c.poll_output() {
            v.push(match o {
                Output::Signal(r) => match *r {
                    Req::PingReq(_) => "signal:ping".into(),
                    Req::AddTrack(_) => "signal:add_track".into(),
                    Req::Leave(_) => "signal:leave".into(),
                    Req::Offer(_) => "signal:offer".into(),
                    other => format!("signal:{other:?}"),
                },
                Output::Transmit { .. } => continue,
                Output::Event(RoomEvent::Reconnecting {
                    attempt,
                    reason,
                    full: false,
                }) => format!("reconnecting:{attempt}:{reason}"),
                Output::Event(RoomEvent::Reconnecting {
                    attempt,
                    reason,
                    full: true,
                }) => format!("rejoining:{attempt}:{reason}"),
                Output::Event(RoomEvent::Disconnected { reason }) => {
                    format!("disconnected:{reason}")
                }
                Output::Event(e) => format!("event:{e:?}"),
                Output::Reply(_, Ok(())) => "reply:ok".into(),
                Output::Reply(_, Err(e)) => format!("reply:err:{e}"),
                Output::Resume { attempt, delay } => {
                    format!("resume:{attempt}:{}ms", delay.as_millis())
                }
                Output::Rejoin { attempt, delay } => {
                    format!("rejoin:{attempt}:{}ms", delay.as_millis())
                }
                Output::Closed => "closed".into(),
            });
        }
        v
    }

    fn reply() -> Reply {
        oneshot::channel().0
    }

    fn publish_mic(c: &mut Core, now: Instant) {
        let cmd = Command::PublishAudio {
            name: "mic".into(),
            reply: reply(),
        };
        c.handle_command(now, cmd);
    }

    #[test]
    fn others_are_announced_and_pings_keep_time() {
        let t0 = Instant::now();
        let mut c = core(false, t0);
        assert_eq!(
            drain(&mut c),
            [r#"event:ParticipantJoined { identity: "b", joined_at_ms: 0 }"#]
        );
        assert!(c.poll_timeout() <= t0 + Duration::from_secs(5));
        c.handle_timeout(t0 + Duration::from_secs(5));
        assert_eq!(drain(&mut c), ["signal:ping"]);
        // The pong measures the round trip, which the next ping reports; its timestamp is
        // milliseconds since the start.
        let pong = |ms| {
            Resp::PongResp(lk::Pong {
                last_ping_timestamp: ms,
                timestamp: 0,
            })
        };
        c.handle_signal(t0 + Duration::from_millis(5_040), pong(5_000));
        c.handle_timeout(t0 + Duration::from_secs(10));
        let Some(Output::Signal(ping)) = c.poll_output() else {
            panic!("a ping")
        };
        assert!(
            matches!(
                *ping,
                Req::PingReq(lk::Ping {
                    timestamp: 10_000,
                    rtt: 40
                })
            ),
            "{ping:?}"
        );
        // A message from the server resets the silence clock: 9.5 s after the last one it is
        // a ping, not a resume.
        c.handle_signal(t0 + Duration::from_millis(10_500), pong(10_000));
        c.handle_timeout(t0 + Duration::from_secs(20));
        assert_eq!(drain(&mut c), ["signal:ping"]);
    }

    #[test]
    fn silence_past_the_ping_timeout_starts_a_resume() {
        let t0 = Instant::now();
        let mut c = core(false, t0);
        drain(&mut c);
        c.handle_timeout(t0 + Duration::from_secs(15));
        let out = drain(&mut c);
        assert_eq!(out.len(), 2, "{out:?}");
        assert!(out[0].starts_with("reconnecting:1:no message from the server for 15 s"));
        assert_eq!(out[1], "resume:1:0ms");
        // No pings while there is no connection.
        c.handle_timeout(t0 + Duration::from_secs(30));
        assert!(drain(&mut c).is_empty());
    }

    #[test]
    fn resume_attempts_back_off_and_are_bounded() {
        let t0 = Instant::now();
        let mut c = core(false, t0);
        drain(&mut c);
        c.signal_lost(t0, "reset by peer".into());
        let mut delays = Vec::new();
        for _ in 0..6 {
            let out = drain(&mut c);
            assert_eq!(out.len(), 2, "{out:?}");
            assert!(out[0].ends_with("reset by peer"), "{out:?}");
            delays.push(out[1].clone());
            c.resume_failed(t0, &Error::Signal("connection refused".into()));
        }
        assert_eq!(
            delays,
            [
                "resume:1:0ms",
                "resume:2:250ms",
                "resume:3:500ms",
                "resume:4:1000ms",
                "resume:5:2000ms",
                "resume:6:4000ms"
            ]
        );
        let out = drain(&mut c);
        assert_eq!(out.len(), 2, "{out:?}");
        assert!(out[0].starts_with("disconnected:signaling connection lost (reset by peer) and not resumed after 6 attempts"));
        assert!(out[0].contains("connection refused"));
        assert_eq!(out[1], "closed");
        assert!(c.is_closed());
    }

    #[test]
    fn a_refused_resume_ends_the_room_and_later_requests_fail() {
        let t0 = Instant::now();
        let mut c = core(false, t0);
        drain(&mut c);
        c.signal_lost(t0, "closed".into());
        drain(&mut c);
        c.resume_failed(
            t0,
            &Error::Refused("the server no longer has this participant".into()),
        );
        let out = drain(&mut c);
        assert!(
            out[0].starts_with("disconnected:the server refused to resume"),
            "{out:?}"
        );
        assert_eq!(out[1], "closed");
        c.handle_command(
            t0,
            Command::SendData {
                payload: b"x".to_vec(),
                topic: None,
                reply: reply(),
            },
        );
        assert_eq!(drain(&mut c), ["reply:err:the room is closed"]);
    }

    /// The server's answer to our `AddTrack` with the client id it carried.
    fn confirm_track(c: &mut Core, now: Instant, sid: &str) {
        let cid = c.pending_publish.as_ref().unwrap().cid.clone();
        c.handle_signal(
            now,
            Resp::TrackPublished(lk::TrackPublishedResponse {
                cid,
                track: Some(lk::TrackInfo {
                    sid: sid.into(),
                    ..Default::default()
                }),
            }),
        );
    }

    fn refused() -> Error {
        Error::Refused("the server no longer has this participant (leave, reason 0)".into())
    }

    #[test]
    fn a_refused_resume_with_a_token_source_rejoins_and_publishes_again() {
        let t0 = Instant::now();
        let mut c = core_with(true, true, t0);
        drain(&mut c);
        publish_mic(&mut c, t0);
        confirm_track(&mut c, t0, "TR_a");
        let out = drain(&mut c);
        assert_eq!(out, ["signal:add_track", "signal:offer"], "{out:?}");
        // The publisher's offer is never answered: its session goes away.
        c.signal_lost(t0, "node gone".into());
        assert_eq!(drain(&mut c), ["reconnecting:1:node gone", "resume:1:0ms"]);
        c.resume_failed(t0, &refused());
        assert_eq!(
            drain(&mut c),
            [
                "rejoining:1:the server refused to resume the session: the server refused to \
                 join: the server no longer has this participant (leave, reason 0)",
                "rejoin:1:0ms"
            ]
        );
        // Requests of the old session are dropped while rejoining; no pings either.
        c.handle_timeout(t0 + Duration::from_secs(20));
        assert!(drain(&mut c).is_empty());
        // A failed fresh join backs off like a resume.
        c.rejoin_failed(t0, &Error::Signal("connection refused".into()));
        let out = drain(&mut c);
        assert_eq!(out.len(), 2, "{out:?}");
        assert!(out[0].starts_with("rejoining:2:"), "{out:?}");
        assert_eq!(out[1], "rejoin:2:250ms");
        // The rejoin: the room is announced as it is now (b is there again: no second
        // `ParticipantJoined`, c is new), and the microphone is published again by itself.
        let mut j = join();
        j.participant.as_mut().unwrap().sid = "PA_me2".into();
        j.other_participants.push(lk::ParticipantInfo {
            sid: "PA_c".into(),
            identity: "c".into(),
            state: lk::participant_info::State::Active as i32,
            ..Default::default()
        });
        let ring_before = c.key_ring.clone().unwrap();
        c.rejoined(t0 + Duration::from_secs(1), &j).unwrap();
        // The caller of the publication is answered (the track is confirmed and goes again).
        assert_eq!(
            drain(&mut c),
            [
                "reply:ok",
                r#"event:ParticipantJoined { identity: "c", joined_at_ms: 0 }"#,
                "event:Reconnected",
                "signal:add_track"
            ]
        );
        // Same keys: what we send now opens with the keyring from before the rejoin.
        let sealed = c
            .encryptor
            .as_mut()
            .unwrap()
            .encrypt(FrameKind::Audio, b"after the rejoin")
            .unwrap();
        let mut opened = FrameDecryptor::new(ring_before);
        let plain = opened.decrypt(FrameKind::Audio, &sealed).unwrap();
        assert!(
            matches!(&plain, oracle_calls_crypto::frame::Decrypted::Frame(f) if f == b"after the rejoin"),
            "{plain:?}"
        );
        // The confirmation negotiates the track on the new publisher connection (no reply:
        // nobody asked this time).
        confirm_track(&mut c, t0 + Duration::from_secs(1), "TR_b");
        assert_eq!(drain(&mut c), ["signal:offer"]);
        assert!(c.audio_mid.is_some());
        // Publishing a second microphone is still refused.
        publish_mic(&mut c, t0 + Duration::from_secs(1));
        let out = drain(&mut c);
        assert!(out[0].starts_with("reply:err:"), "{out:?}");
    }

    #[test]
    fn rejoins_are_bounded_and_a_refused_token_ends_the_room() {
        let t0 = Instant::now();
        let mut c = core_with(false, true, t0);
        drain(&mut c);
        c.signal_lost(t0, "reset".into());
        // Resumes run out: then the fresh joins, then the room closes.
        for _ in 0..6 {
            drain(&mut c);
            c.resume_failed(t0, &Error::Signal("refused".into()));
        }
        let mut delays = Vec::new();
        for _ in 0..6 {
            let out = drain(&mut c);
            assert_eq!(out.len(), 2, "{out:?}");
            assert!(out[0].contains("not resumed after 6 attempts"), "{out:?}");
            delays.push(out[1].clone());
            c.rejoin_failed(t0, &Error::Timeout("a fresh join"));
        }
        assert_eq!(delays[0], "rejoin:1:0ms");
        assert_eq!(delays[5], "rejoin:6:4000ms");
        let out = drain(&mut c);
        assert!(out[0].contains("not rejoined after 6 attempts"), "{out:?}");
        assert!(out[0].contains("a fresh join"), "{out:?}");
        assert_eq!(out[1], "closed");

        // No fresh token (the call ended): closed at once.
        let mut c = core_with(false, true, t0);
        drain(&mut c);
        c.signal_lost(t0, "reset".into());
        drain(&mut c);
        c.resume_failed(t0, &refused());
        drain(&mut c);
        // No token yet (the server could not reach LiveKit): tried again, not closed.
        c.rejoin_failed(
            t0,
            &Error::TokenUnavailable("502 LiveKit answered badly".into()),
        );
        let out = drain(&mut c);
        assert!(
            out.iter().any(|o| o.starts_with("rejoining:2:"))
                && out.iter().any(|o| o.starts_with("rejoin:2:")),
            "a token not available yet is another rejoin attempt: {out:?}"
        );
        c.rejoin_failed(t0, &Error::Token("410 the call has ended".into()));
        let out = drain(&mut c);
        assert!(
            out[0].starts_with("disconnected:could not rejoin: no fresh token"),
            "{out:?}"
        );
        assert_eq!(out[1], "closed");
        // A late report changes nothing.
        c.rejoined(t0, &join()).unwrap();
        assert!(drain(&mut c).is_empty());
    }

    #[test]
    fn requests_made_during_the_outage_go_out_once_resumed() {
        let t0 = Instant::now();
        let mut c = core(true, t0);
        drain(&mut c);
        c.signal_lost(t0, "closed".into());
        drain(&mut c);
        publish_mic(&mut c, t0);
        assert!(drain(&mut c).is_empty());
        c.resumed(
            t0 + Duration::from_secs(1),
            &lk::ReconnectResponse::default(),
        );
        assert_eq!(drain(&mut c), ["event:Reconnected", "signal:add_track"]);
        // A resume report for a connection that is not being resumed changes nothing.
        c.resumed(
            t0 + Duration::from_secs(2),
            &lk::ReconnectResponse::default(),
        );
        assert!(drain(&mut c).is_empty());
    }

    #[test]
    fn a_request_whose_send_failed_goes_out_once_resumed() {
        let t0 = Instant::now();
        let mut c = core(true, t0);
        drain(&mut c);
        publish_mic(&mut c, t0);
        let Some(Output::Signal(req)) = c.poll_output() else {
            panic!("the add_track request")
        };
        c.signal_send_failed(t0, *req, "broken pipe".into());
        let out = drain(&mut c);
        assert!(out[0].starts_with("reconnecting:1:broken pipe"), "{out:?}");
        c.resumed(t0, &lk::ReconnectResponse::default());
        assert_eq!(drain(&mut c), ["event:Reconnected", "signal:add_track"]);
    }

    #[test]
    fn leave_says_so_and_closes() {
        let t0 = Instant::now();
        let mut c = core(false, t0);
        drain(&mut c);
        c.handle_command(t0, Command::Leave { reply: reply() });
        assert_eq!(
            drain(&mut c),
            ["signal:leave", "reply:ok", "disconnected:left", "closed"]
        );
        // Nothing after the end.
        c.handle_signal(t0, Resp::Leave(lk::LeaveRequest::default()));
        c.signal_lost(t0, "x".into());
        assert!(drain(&mut c).is_empty());
    }

    #[test]
    fn the_server_asking_us_to_leave_closes_the_room() {
        let t0 = Instant::now();
        let mut c = core(false, t0);
        drain(&mut c);
        c.handle_signal(
            t0,
            Resp::Leave(lk::LeaveRequest {
                reason: 4,
                ..Default::default()
            }),
        );
        assert_eq!(
            drain(&mut c),
            [
                "disconnected:the server asked us to leave (reason 4)",
                "closed"
            ]
        );
    }

    #[test]
    fn updates_announce_others_not_ourselves() {
        let t0 = Instant::now();
        let mut c = core(false, t0);
        drain(&mut c);
        let gone = lk::ParticipantInfo {
            sid: "PA_b".into(),
            identity: "b".into(),
            state: lk::participant_info::State::Disconnected as i32,
            ..Default::default()
        };
        let me = join().participant.unwrap();
        c.handle_signal(
            t0,
            Resp::Update(lk::ParticipantUpdate {
                participants: vec![me, gone],
            }),
        );
        assert_eq!(
            drain(&mut c),
            [r#"event:ParticipantLeft { identity: "b" }"#]
        );
    }

    #[test]
    fn key_operations_need_e2ee_and_a_key() {
        let t0 = Instant::now();
        let mut plain = core(false, t0);
        drain(&mut plain);
        plain.handle_command(t0, Command::RatchetKey { reply: reply() });
        assert_eq!(
            drain(&mut plain),
            ["reply:err:end-to-end encryption is not on in this room"]
        );

        let mut c = core(true, t0);
        drain(&mut c);
        c.handle_command(t0, Command::RatchetKey { reply: reply() });
        c.handle_command(
            t0,
            Command::SetKeyIndex {
                index: 3,
                reply: reply(),
            },
        );
        let material = Zeroizing::new(vec![7u8; 32]);
        c.handle_command(
            t0,
            Command::SetKey {
                index: 3,
                kdf: KeyDerivation::Hkdf,
                material,
                reply: reply(),
            },
        );
        c.handle_command(
            t0,
            Command::SetKeyIndex {
                index: 3,
                reply: reply(),
            },
        );
        let out = drain(&mut c);
        assert_eq!(out[0], "reply:ok");
        assert!(out[1].starts_with("reply:err:"), "{out:?}");
        assert_eq!(out[2..], ["reply:ok", "reply:ok"]);
    }

    #[test]
    fn backoff_of_the_default_policy() {
        let p = ReconnectPolicy::default();
        let d: Vec<u128> = (1..=8).map(|a| p.delay(a).as_millis()).collect();
        assert_eq!(d, [0, 250, 500, 1000, 1000, 1000, 1000, 1000]);
        assert_eq!((p.attempts, p.rejoin_attempts), (6, 12));
    }
}

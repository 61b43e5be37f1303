//! The room task: one loop that owns the signaling socket, the subscriber and publisher peer
//! connections (two str0m `Rtc`s, one UDP socket each) and the E2EE state. str0m's rule holds
//! throughout: after every mutation of an `Rtc`, drain `poll_output` until it returns a timeout.

use std::collections::HashMap;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::Arc;
use std::time::{Duration, Instant};

use livekit_protocol as lk;
use lk::signal_request::Message as Req;
use lk::signal_response::Message as Resp;
use oracle_calls_crypto::frame::{FrameDecryptor, FrameEncryptor, FrameKind, KeyRing, Outcome};
use prost::Message as _;
use str0m::change::{SdpAnswer, SdpOffer, SdpPendingOffer};
use str0m::channel::{ChannelConfig, ChannelId, Reliability};
use str0m::format::Codec;
use str0m::media::{Direction, Frequency, MediaKind, MediaTime, Mid, Pt};
use str0m::net::{Protocol, Receive};
use str0m::{Candidate, Event, IceConnectionState, Input, Output, Rtc};
use tokio::net::UdpSocket;
use tokio::sync::{mpsc, oneshot};
use tracing::{debug, info, warn};

use crate::audio::level_dbov;
use crate::room::{RoomEvent, RoomOptions};
use crate::signal::{self, Ws};
use crate::{AUDIO_FRAME_SAMPLES, Error};

/// How long a track publication may take to be confirmed.
const PUBLISH_TIMEOUT: Duration = Duration::from_secs(10);
/// How long a data message may wait for the data channel to open.
const DATA_OPEN_TIMEOUT: Duration = Duration::from_secs(10);

pub(crate) enum Command {
    PublishAudio {
        name: String,
        reply: oneshot::Sender<Result<(), Error>>,
    },
    AudioFrame(Vec<i16>),
    PublishVideo {
        name: String,
        width: u32,
        height: u32,
        reply: oneshot::Sender<Result<(), Error>>,
    },
    VideoFrame {
        vp8: Vec<u8>,
        capture_ms: u64,
    },
    RequestKeyframe {
        track_sid: String,
    },
    SendData {
        payload: Vec<u8>,
        topic: Option<String>,
        reply: oneshot::Sender<Result<(), Error>>,
    },
    Leave {
        reply: oneshot::Sender<()>,
    },
}

/// Where the answer to a publish request goes.
type Reply = oneshot::Sender<Result<(), Error>>;

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Side {
    Subscriber,
    Publisher,
}

struct Pc {
    rtc: Rtc,
    socket: Arc<UdpSocket>,
    local: SocketAddr,
    timeout: Instant,
    connected: bool,
}

impl Pc {
    async fn new(ip: IpAddr) -> Result<Self, Error> {
        let socket = UdpSocket::bind(SocketAddr::new(ip, 0)).await?;
        let local = socket.local_addr()?;
        let mut rtc = Rtc::builder()
            .clear_codecs()
            .enable_opus(true, false)
            .enable_vp8(true)
            .build(Instant::now());
        let cand = Candidate::host(local, "udp").map_err(|e| Error::Media(e.to_string()))?;
        rtc.add_local_candidate(cand);
        Ok(Self {
            rtc,
            socket: Arc::new(socket),
            local,
            timeout: Instant::now(),
            connected: false,
        })
    }

    /// Drains outputs: sends transmits, records the next timeout, returns events.
    fn drain(&mut self) -> Vec<Event> {
        let mut events = Vec::new();
        loop {
            match self.rtc.poll_output() {
                Ok(Output::Timeout(t)) => {
                    self.timeout = t;
                    return events;
                }
                Ok(Output::Transmit(t)) => {
                    if let Err(e) = self.socket.try_send_to(&t.contents, t.destination) {
                        debug!(error = %e, "udp send dropped");
                    }
                }
                Ok(Output::Event(e)) => events.push(e),
                Err(e) => {
                    warn!(error = %e, "peer connection failed");
                    events.push(Event::IceConnectionStateChange(
                        IceConnectionState::Disconnected,
                    ));
                    self.timeout = Instant::now() + Duration::from_secs(3600);
                    return events;
                }
            }
        }
    }
}

struct RemoteTrack {
    identity: String,
    encrypted: bool,
    announced: bool,
}

pub(crate) struct Engine {
    ws: Ws,
    sub: Pc,
    publ: Pc,
    events: mpsc::Sender<RoomEvent>,
    ping_interval: Duration,
    sif_trailer: Vec<u8>,
    /// E2EE: the template keyring, our encryptor, one decryptor per remote identity.
    key_ring: Option<KeyRing>,
    encryptor: Option<FrameEncryptor>,
    decryptors: HashMap<String, FrameDecryptor>,
    /// Remote tracks by sid, and subscriber mids by track sid.
    tracks: HashMap<String, RemoteTrack>,
    participants: HashMap<String, String>,
    mid_track: HashMap<Mid, String>,
    decoders: HashMap<Mid, opus::Decoder>,
    /// Publishing.
    pending_publish: Option<(String, Reply, Instant)>,
    /// Whether the pending publication is video.
    pending_is_video: bool,
    video_mid: Option<Mid>,
    pending_offer: Option<(SdpPendingOffer, Option<Reply>)>,
    audio_mid: Option<Mid>,
    channels_added: bool,
    /// A publish confirmed while another offer was still unanswered: negotiated after it.
    deferred_media: Option<(MediaKind, String, Reply)>,
    /// Data: our identity, the publisher's `_reliable` channel, and messages waiting for it.
    me: String,
    reliable: Option<ChannelId>,
    reliable_open: bool,
    data_seq: u32,
    pending_data: Vec<(Vec<u8>, Reply, Instant)>,
    encoder: Option<opus::Encoder>,
    rtp_samples: u64,
    connected_sent: bool,
}

impl Engine {
    pub(crate) async fn start(
        url: &str,
        token: &str,
        options: RoomOptions,
        events: mpsc::Sender<RoomEvent>,
    ) -> Result<(Engine, String, String), Error> {
        let (ws, join) = signal::connect(url, token).await?;
        let me = join.participant.clone().unwrap_or_default();
        let ip = local_ip_for(url).await;
        let sub = Pc::new(ip).await?;
        let publ = Pc::new(ip).await?;
        info!(identity = %me.identity, sid = %me.sid, room = %join.room.as_ref().map(|r| r.name.as_str()).unwrap_or(""), "joined");
        let key_ring = options.e2ee.map(|e| e.key_ring);
        let encryptor = key_ring
            .clone()
            .map(|r| FrameEncryptor::new(r, &mut rand::rng()));
        let mut engine = Engine {
            ws,
            sub,
            publ,
            events,
            ping_interval: Duration::from_secs(u64::from(join.ping_interval.max(1) as u32)),
            sif_trailer: join.sif_trailer.clone(),
            key_ring,
            encryptor,
            decryptors: HashMap::new(),
            tracks: HashMap::new(),
            participants: HashMap::new(),
            mid_track: HashMap::new(),
            decoders: HashMap::new(),
            pending_publish: None,
            pending_is_video: false,
            video_mid: None,
            pending_offer: None,
            audio_mid: None,
            channels_added: false,
            deferred_media: None,
            me: me.identity.clone(),
            reliable: None,
            reliable_open: false,
            data_seq: 0,
            pending_data: Vec::new(),
            encoder: None,
            rtp_samples: 0,
            connected_sent: false,
        };
        for p in &join.other_participants {
            engine.update_participant(p).await;
        }
        Ok((engine, me.identity, me.sid))
    }

    pub(crate) async fn run(mut self, mut cmds: mpsc::Receiver<Command>) {
        let reason = match self.run_inner(&mut cmds).await {
            Ok(r) => r,
            Err(e) => e.to_string(),
        };
        info!(%reason, "room closed");
        let _ = self.events.send(RoomEvent::Disconnected { reason }).await;
    }

    async fn run_inner(&mut self, cmds: &mut mpsc::Receiver<Command>) -> Result<String, Error> {
        let mut ping = tokio::time::interval(self.ping_interval);
        let mut buf_s = vec![0u8; 2000];
        let mut buf_p = vec![0u8; 2000];
        let (sub_sock, pub_sock) = (self.sub.socket.clone(), self.publ.socket.clone());
        self.pump(Side::Subscriber).await;
        self.pump(Side::Publisher).await;
        loop {
            let deadline = self.sub.timeout.min(self.publ.timeout);
            let publish_deadline = self
                .pending_publish
                .as_ref()
                .map(|p| p.2)
                .into_iter()
                .chain(self.pending_data.first().map(|d| d.2))
                .min();
            tokio::select! {
                msg = signal::recv(&mut self.ws) => match msg? {
                    Some(m) => if let Some(reason) = self.on_signal(m).await? { return Ok(reason) },
                    None => return Ok("signaling closed by the server".into()),
                },
                r = sub_sock.recv_from(&mut buf_s) => {
                    let (n, from) = r?;
                    self.on_datagram(Side::Subscriber, from, buf_s.get(..n).unwrap_or_default()).await;
                }
                r = pub_sock.recv_from(&mut buf_p) => {
                    let (n, from) = r?;
                    self.on_datagram(Side::Publisher, from, buf_p.get(..n).unwrap_or_default()).await;
                }
                _ = tokio::time::sleep_until(deadline.into()) => {
                    let now = Instant::now();
                    for side in [Side::Subscriber, Side::Publisher] {
                        let _ = self.pc(side).rtc.handle_input(Input::Timeout(now));
                        self.pump(side).await;
                    }
                }
                _ = tokio::time::sleep_until(publish_deadline.unwrap_or(deadline + Duration::from_secs(3600)).into()), if publish_deadline.is_some() => {
                    let now = Instant::now();
                    if self.pending_publish.as_ref().is_some_and(|p| p.2 <= now)
                        && let Some((_, reply, _)) = self.pending_publish.take()
                    {
                        let _ = reply.send(Err(Error::Timeout("the server to confirm the track")));
                    }
                    let (late, waiting): (Vec<_>, Vec<_>) =
                        std::mem::take(&mut self.pending_data).into_iter().partition(|d| d.2 <= now);
                    self.pending_data = waiting;
                    for (_, reply, _) in late {
                        let _ = reply.send(Err(Error::Timeout("the data channel to open")));
                    }
                }
                _ = ping.tick() => {
                    let ts = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_millis() as i64).unwrap_or(0);
                    signal::send(&mut self.ws, Req::PingReq(lk::Ping { timestamp: ts, rtt: 0 })).await?;
                }
                cmd = cmds.recv() => match cmd {
                    None => { self.send_leave().await; return Ok("room handle dropped".into()) }
                    Some(Command::Leave { reply }) => {
                        self.send_leave().await;
                        let _ = reply.send(());
                        return Ok("left".into());
                    }
                    Some(Command::PublishAudio { name, reply }) => self.start_publish(name, reply).await?,
                    Some(Command::AudioFrame(pcm)) => self.write_audio(&pcm).await?,
                    Some(Command::PublishVideo { name, width, height, reply }) => {
                        self.start_publish_video(name, width, height, reply).await?
                    }
                    Some(Command::VideoFrame { vp8, capture_ms }) => {
                        self.write_video(vp8, capture_ms).await
                    }
                    Some(Command::RequestKeyframe { track_sid }) => self.request_keyframe(&track_sid).await,
                    Some(Command::SendData { payload, topic, reply }) => {
                        self.send_data(payload, topic, reply).await?
                    }
                },
            }
        }
    }

    fn pc(&mut self, side: Side) -> &mut Pc {
        match side {
            Side::Subscriber => &mut self.sub,
            Side::Publisher => &mut self.publ,
        }
    }

    async fn on_datagram(&mut self, side: Side, from: SocketAddr, data: &[u8]) {
        let pc = self.pc(side);
        let Ok(recv) = Receive::new(Protocol::Udp, from, pc.local, data) else {
            return;
        };
        if let Err(e) = pc.rtc.handle_input(Input::Receive(Instant::now(), recv)) {
            debug!(error = %e, ?side, "input rejected");
        }
        self.pump(side).await;
    }

    /// Drains one peer connection and handles its events (which may mutate it again).
    async fn pump(&mut self, side: Side) {
        loop {
            let events = self.pc(side).drain();
            if events.is_empty() {
                return;
            }
            for e in events {
                self.on_event(side, e).await;
            }
        }
    }

    async fn on_event(&mut self, side: Side, e: Event) {
        match e {
            Event::Connected => {
                debug!(?side, "peer connection up");
                self.pc(side).connected = true;
                if self.sub.connected && !self.connected_sent {
                    self.connected_sent = true;
                    let _ = self.events.send(RoomEvent::Connected).await;
                }
            }
            Event::IceConnectionStateChange(s) => debug!(?side, state = ?s, "ice"),
            Event::MediaAdded(m) if side == Side::Subscriber => {
                let track = self.sub.rtc.media(m.mid).map(|x| x.track_id().to_owned());
                if let Some(t) = track.filter(|t| !t.is_empty()) {
                    self.mid_track.insert(m.mid, t);
                }
            }
            Event::MediaData(d) if side == Side::Subscriber => {
                self.on_media(d.mid, d.params.spec().codec, &d.data).await
            }
            Event::ChannelOpen(id, label) => {
                debug!(?side, %label, "data channel open");
                if side == Side::Publisher && Some(id) == self.reliable {
                    self.reliable_open = true;
                    for (packet, reply, _) in std::mem::take(&mut self.pending_data) {
                        let _ = reply.send(self.write_reliable(&packet));
                    }
                }
            }
            Event::ChannelData(d) => self.on_data(&d.data).await,
            Event::KeyframeRequest(r)
                if side == Side::Publisher && Some(r.mid) == self.video_mid =>
            {
                let _ = self.events.try_send(RoomEvent::KeyframeRequested);
            }
            _ => {}
        }
    }

    async fn on_media(&mut self, mid: Mid, codec: Codec, data: &[u8]) {
        let kind = match codec {
            Codec::Opus => FrameKind::Audio,
            Codec::Vp8 => FrameKind::Vp8,
            _ => return,
        };
        let Some(track_sid) = self.mid_track.get(&mid).cloned() else {
            return;
        };
        let Some(track) = self.tracks.get_mut(&track_sid) else {
            return;
        };
        let identity = track.identity.clone();
        if !track.announced {
            track.announced = true;
            let encrypted = track.encrypted;
            let _ = self
                .events
                .send(RoomEvent::TrackSubscribed {
                    identity: identity.clone(),
                    track_sid: track_sid.clone(),
                    encrypted,
                })
                .await;
            if self.key_ring.is_some() && !encrypted {
                warn!(%identity, %track_sid, "track is not end-to-end encrypted; not playing it");
                let _ = self
                    .events
                    .send(RoomEvent::UnencryptedTrack {
                        identity: identity.clone(),
                        track_sid: track_sid.clone(),
                    })
                    .await;
            }
        }
        let encrypted = track.encrypted;
        let mut frame = data.to_vec();
        if let Some(ring) = &self.key_ring {
            if !encrypted {
                return;
            }
            let sif = self.sif_trailer.clone();
            let dec = self.decryptors.entry(identity.clone()).or_insert_with(|| {
                let mut d = FrameDecryptor::new(ring.clone());
                d.set_sif_trailer(sif);
                d
            });
            match dec.decrypt_in_place(kind, &mut frame) {
                Ok(Outcome::Frame) => {}
                Ok(Outcome::Empty | Outcome::ServerInjected) => return,
                Err(error) => {
                    let stats = dec.stats();
                    let _ = self.events.try_send(RoomEvent::DecryptionFailed {
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
            let _ = self.events.try_send(RoomEvent::VideoFrame {
                identity,
                track_sid,
                vp8: frame,
                keyframe,
            });
            return;
        }
        let dec = match self.decoders.entry(mid) {
            std::collections::hash_map::Entry::Occupied(o) => o.into_mut(),
            std::collections::hash_map::Entry::Vacant(v) => {
                match opus::Decoder::new(48_000, opus::Channels::Mono) {
                    Ok(d) => v.insert(d),
                    Err(e) => {
                        warn!(error = %e, "opus decoder");
                        return;
                    }
                }
            }
        };
        let mut pcm = vec![0i16; 5760];
        match dec.decode(&frame, &mut pcm, false) {
            Ok(n) => {
                pcm.truncate(n);
                let _ = self.events.try_send(RoomEvent::AudioFrame {
                    identity,
                    track_sid,
                    pcm,
                });
            }
            Err(e) => debug!(error = %e, "opus decode failed"),
        }
    }

    async fn on_signal(&mut self, m: Resp) -> Result<Option<String>, Error> {
        match m {
            Resp::Offer(sd) => {
                for (mid, track) in &sd.mid_to_track_id {
                    self.mid_track
                        .insert(Mid::from(mid.as_str()), track.clone());
                }
                let offer = SdpOffer::from_sdp_string(&sd.sdp)
                    .map_err(|e| Error::Media(format!("subscriber offer: {e}")))?;
                let answer =
                    self.sub.rtc.sdp_api().accept_offer(offer).map_err(|e| {
                        Error::Media(format!("accepting the subscriber offer: {e}"))
                    })?;
                self.pump(Side::Subscriber).await;
                signal::send(
                    &mut self.ws,
                    Req::Answer(lk::SessionDescription {
                        r#type: "answer".into(),
                        sdp: answer.to_sdp_string(),
                        id: sd.id,
                        mid_to_track_id: HashMap::new(),
                    }),
                )
                .await?;
            }
            Resp::Answer(sd) => {
                if let Some((pending, reply)) = self.pending_offer.take() {
                    let answer = SdpAnswer::from_sdp_string(&sd.sdp)
                        .map_err(|e| Error::Media(format!("publisher answer: {e}")))?;
                    let r = self
                        .publ
                        .rtc
                        .sdp_api()
                        .accept_answer(pending, answer)
                        .map_err(|e| Error::Media(format!("accepting the publisher answer: {e}")));
                    self.pump(Side::Publisher).await;
                    if let Some(reply) = reply {
                        let _ = reply.send(r);
                    }
                    if let Some((kind, cid, reply)) = self.deferred_media.take() {
                        self.negotiate(Some((kind, cid)), Some(reply)).await?;
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
                            self.pump(side).await;
                        }
                        Err(e) => debug!(error = %e, "unparsable remote candidate"),
                    }
                }
            }
            Resp::Update(u) => {
                for p in &u.participants {
                    self.update_participant(p).await;
                }
            }
            Resp::TrackPublished(tp) => {
                let matches = self
                    .pending_publish
                    .as_ref()
                    .is_some_and(|(cid, _, _)| *cid == tp.cid);
                if matches && let Some((cid, reply, _)) = self.pending_publish.take() {
                    let kind = if self.pending_is_video {
                        MediaKind::Video
                    } else {
                        MediaKind::Audio
                    };
                    self.negotiate_media(kind, cid, reply).await?;
                }
            }
            Resp::Leave(l) => {
                return Ok(Some(format!(
                    "server asked us to leave (reason {})",
                    l.reason
                )));
            }
            Resp::Join(_) => return Err(Error::Protocol("second join")),
            _ => {}
        }
        Ok(None)
    }

    async fn update_participant(&mut self, p: &lk::ParticipantInfo) {
        let gone = p.state == lk::participant_info::State::Disconnected as i32;
        if gone {
            if self.participants.remove(&p.sid).is_some() {
                self.decryptors.remove(&p.identity);
                let _ = self
                    .events
                    .send(RoomEvent::ParticipantLeft {
                        identity: p.identity.clone(),
                    })
                    .await;
            }
            return;
        }
        if self
            .participants
            .insert(p.sid.clone(), p.identity.clone())
            .is_none()
        {
            let _ = self
                .events
                .send(RoomEvent::ParticipantJoined {
                    identity: p.identity.clone(),
                })
                .await;
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

    async fn start_publish(
        &mut self,
        name: String,
        reply: oneshot::Sender<Result<(), Error>>,
    ) -> Result<(), Error> {
        if self.audio_mid.is_some() || self.pending_publish.is_some() {
            let _ = reply.send(Err(Error::Protocol("an audio track is already published")));
            return Ok(());
        }
        let cid = self
            .add_track(
                lk::TrackType::Audio,
                lk::TrackSource::Microphone,
                name,
                0,
                0,
            )
            .await?;
        self.pending_publish = Some((cid, reply, Instant::now() + PUBLISH_TIMEOUT));
        self.pending_is_video = false;
        Ok(())
    }

    /// Asks the server for a track (`AddTrackRequest`, GCM-encrypted when E2EE is on, RED
    /// off); the answer is `TrackPublished` with the returned client id.
    async fn add_track(
        &mut self,
        kind: lk::TrackType,
        source: lk::TrackSource,
        name: String,
        width: u32,
        height: u32,
    ) -> Result<String, Error> {
        let cid = format!("oc-{}-{}", kind.as_str_name(), rand::random::<u32>());
        let encryption = if self.key_ring.is_some() {
            lk::encryption::Type::Gcm
        } else {
            lk::encryption::Type::None
        };
        signal::send(
            &mut self.ws,
            Req::AddTrack(lk::AddTrackRequest {
                cid: cid.clone(),
                name,
                r#type: kind as i32,
                source: source as i32,
                width,
                height,
                disable_red: true,
                encryption: encryption as i32,
                ..Default::default()
            }),
        )
        .await?;
        Ok(cid)
    }

    async fn start_publish_video(
        &mut self,
        name: String,
        width: u32,
        height: u32,
        reply: Reply,
    ) -> Result<(), Error> {
        if self.video_mid.is_some() || self.pending_publish.is_some() {
            let _ = reply.send(Err(Error::Protocol(
                "a video track is already published, or a publication is pending",
            )));
            return Ok(());
        }
        let cid = self
            .add_track(
                lk::TrackType::Video,
                lk::TrackSource::Camera,
                name,
                width,
                height,
            )
            .await?;
        self.pending_publish = Some((cid, reply, Instant::now() + PUBLISH_TIMEOUT));
        self.pending_is_video = true;
        Ok(())
    }

    async fn request_keyframe(&mut self, track_sid: &str) {
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
        self.pump(Side::Subscriber).await;
    }

    /// Encrypts (E2EE) and sends one VP8 frame; dropped before the connection is up.
    async fn write_video(&mut self, mut frame: Vec<u8>, capture_ms: u64) {
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
        if let Err(e) = writer.write(pt, Instant::now(), rtp, frame) {
            debug!(error = %e, "video write failed");
        }
        self.pump(Side::Publisher).await;
    }

    async fn negotiate_media(
        &mut self,
        kind: MediaKind,
        cid: String,
        reply: oneshot::Sender<Result<(), Error>>,
    ) -> Result<(), Error> {
        if self.pending_offer.is_some() {
            // One offer at a time: this one follows the answer to the current one.
            self.deferred_media = Some((kind, cid, reply));
            return Ok(());
        }
        self.negotiate(Some((kind, cid)), Some(reply)).await
    }

    /// Sends the publisher connection an offer adding the audio track `audio` (if any) and,
    /// the first time, the `_reliable` and `_lossy` data channels LiveKit expects.
    async fn negotiate(
        &mut self,
        media: Option<(MediaKind, String)>,
        reply: Option<Reply>,
    ) -> Result<(), Error> {
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
                let _ = reply.send(Err(Error::Media("no offer to send".into())));
            }
            return Ok(());
        };
        self.pump(Side::Publisher).await;
        match kind {
            Some(MediaKind::Audio) => self.audio_mid = mid,
            Some(MediaKind::Video) => self.video_mid = mid,
            None => {}
        }
        self.pending_offer = Some((pending, reply));
        signal::send(
            &mut self.ws,
            Req::Offer(lk::SessionDescription {
                r#type: "offer".into(),
                sdp: offer.to_sdp_string(),
                id: 1,
                mid_to_track_id: HashMap::new(),
            }),
        )
        .await
    }

    /// Queues or writes one reliable user packet, encrypted when E2EE is on.
    async fn send_data(
        &mut self,
        payload: Vec<u8>,
        topic: Option<String>,
        reply: Reply,
    ) -> Result<(), Error> {
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
                        let _ = reply.send(Err(e.into()));
                        return Ok(());
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
            let _ = reply.send(self.write_reliable(&packet));
            self.pump(Side::Publisher).await;
            return Ok(());
        }
        self.pending_data
            .push((packet, reply, Instant::now() + DATA_OPEN_TIMEOUT));
        if !self.channels_added && self.pending_offer.is_none() {
            self.negotiate(None, None).await?;
        }
        Ok(())
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
    async fn on_data(&mut self, bytes: &[u8]) {
        let Ok(packet) = lk::DataPacket::decode(bytes) else {
            debug!("undecodable data packet");
            return;
        };
        let identity = packet.participant_identity.clone();
        let (user, encrypted) = match packet.value {
            Some(lk::data_packet::Value::User(u)) => {
                if self.key_ring.is_some() {
                    warn!(%identity, "plaintext data message in an E2EE room; not delivered");
                    let _ = self
                        .events
                        .send(RoomEvent::UnencryptedData { identity })
                        .await;
                    return;
                }
                (u, false)
            }
            Some(lk::data_packet::Value::EncryptedPacket(ep)) => {
                let Some(ring) = &self.key_ring else {
                    debug!(%identity, "encrypted data message and no key; dropped");
                    return;
                };
                let sif = self.sif_trailer.clone();
                let dec = self.decryptors.entry(identity.clone()).or_insert_with(|| {
                    let mut d = FrameDecryptor::new(ring.clone());
                    d.set_sif_trailer(sif);
                    d
                });
                let key_index = u8::try_from(ep.key_index).unwrap_or(u8::MAX);
                let plain = match dec.decrypt_data(&ep.iv, key_index, &ep.encrypted_value) {
                    Ok(p) => p,
                    Err(error) => {
                        let _ = self
                            .events
                            .send(RoomEvent::DataDecryptionFailed { identity, error })
                            .await;
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
        let _ = self
            .events
            .send(RoomEvent::DataReceived {
                identity,
                topic: user.topic,
                payload: user.payload,
                encrypted,
            })
            .await;
    }

    async fn write_audio(&mut self, pcm: &[i16]) -> Result<(), Error> {
        let Some(mid) = self.audio_mid else {
            return Ok(());
        };
        if !self.publ.connected {
            // Nothing can be sent before DTLS is up; keep the clock running.
            self.rtp_samples += AUDIO_FRAME_SAMPLES as u64;
            return Ok(());
        }
        if self.encoder.is_none() {
            let e = opus::Encoder::new(48_000, opus::Channels::Mono, opus::Application::Voip)
                .map_err(|e| Error::Codec(e.to_string()))?;
            self.encoder = Some(e);
        }
        let Some(enc) = self.encoder.as_mut() else {
            return Ok(());
        };
        let mut out = vec![0u8; 1500];
        let n = enc
            .encode(pcm, &mut out)
            .map_err(|e| Error::Codec(e.to_string()))?;
        out.truncate(n);
        if let Some(e) = self.encryptor.as_mut() {
            e.encrypt_in_place(FrameKind::Audio, &mut out)?;
        }
        let level = level_dbov(pcm);
        let rtp = MediaTime::new(self.rtp_samples, Frequency::FORTY_EIGHT_KHZ);
        self.rtp_samples += AUDIO_FRAME_SAMPLES as u64;
        let rtc = &mut self.publ.rtc;
        let Some(writer) = rtc.writer(mid) else {
            return Ok(());
        };
        let pt: Option<Pt> = writer
            .payload_params()
            .find(|p| p.spec().codec == Codec::Opus)
            .map(|p| p.pt());
        let Some(pt) = pt else { return Ok(()) };
        if let Err(e) = writer
            .audio_level(level, level > -50)
            .write(pt, Instant::now(), rtp, out)
        {
            debug!(error = %e, "audio write failed");
        }
        self.pump(Side::Publisher).await;
        Ok(())
    }

    async fn send_leave(&mut self) {
        let leave = lk::LeaveRequest {
            can_reconnect: false,
            reason: lk::DisconnectReason::ClientInitiated as i32,
            action: lk::leave_request::Action::Disconnect as i32,
            regions: None,
        };
        let _ = signal::send(&mut self.ws, Req::Leave(leave)).await;
        let _ = futures_util::SinkExt::close(&mut self.ws).await;
    }
}

/// The local address that routes to the server: loopback for a loopback server, otherwise
/// the source address the OS picks for it.
async fn local_ip_for(url: &str) -> IpAddr {
    let host = url
        .split("://")
        .nth(1)
        .and_then(|r| r.split(['/', '?']).next())
        .map(|hp| {
            hp.rsplit_once(':')
                .map(|(h, _)| h)
                .unwrap_or(hp)
                .trim_matches(['[', ']'])
        })
        .unwrap_or("127.0.0.1")
        .to_owned();
    let target = tokio::net::lookup_host((host.as_str(), 9))
        .await
        .ok()
        .and_then(|mut a| a.next());
    let Some(target) = target else {
        return IpAddr::V4(Ipv4Addr::LOCALHOST);
    };
    if target.ip().is_loopback() {
        return target.ip();
    }
    match std::net::UdpSocket::bind("0.0.0.0:0")
        .and_then(|s| s.connect(target).and_then(|()| s.local_addr()))
    {
        Ok(a) => a.ip(),
        Err(_) => IpAddr::V4(Ipv4Addr::LOCALHOST),
    }
}

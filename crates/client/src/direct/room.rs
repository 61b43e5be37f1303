//! One task per DM room: the room's [`CallMachine`] and, while a call runs, its media. It
//! waits for an input (a call event, the end of a sync batch, an application command), a
//! datagram or a timer, makes one mutation, and drains the outputs (str0m's rule).

use std::sync::Arc;
use std::time::{Duration, Instant};

use base64::Engine as _;
use matrix_sdk::Room;
use matrix_sdk::ruma::OwnedUserId;
use oracle_calls_direct::call::{EndReason, LocalDescription, Notification, Phase};
use oracle_calls_direct::peer::{Output as PeerOutput, Peer, PeerEvent};
use oracle_calls_direct::signal::{
    Candidate, HangupReason, SdpType, StreamMetadata, StreamPurpose,
};
use oracle_calls_direct::turn::{TurnEvent, TurnServers};
use oracle_calls_direct::{
    CallConfig, CallEvent, CallId, CallMachine, EventAuth, Output, SecurityEvent,
};
use serde_json::Value;
use tokio::sync::{mpsc, oneshot};
use tracing::{debug, info, warn};

use super::hub::Hub;
use super::media::Media;
use super::{CallStats, DirectCallEvent, DirectError, IcePolicy, IncomingCall, SecurityNotice};

type Placed = (
    CallId,
    mpsc::UnboundedReceiver<DirectCallEvent>,
    Arc<CallStats>,
);

/// What the room task is told.
pub(crate) enum RoomInput {
    Event {
        event_type: String,
        content: Value,
        auth: EventAuth,
    },
    SyncDone,
    Place {
        turn: Option<TurnServers>,
        reply: oneshot::Sender<Result<Placed, DirectError>>,
    },
    Answer {
        call_id: CallId,
        turn: Option<TurnServers>,
        reply: oneshot::Sender<Result<(), DirectError>>,
    },
    Reject {
        call_id: CallId,
    },
    Hangup {
        call_id: CallId,
    },
    Audio {
        call_id: CallId,
        pcm: Vec<i16>,
    },
    /// Answer once every call event queued before this input was handed to the homeserver
    /// (or given up on).
    Flush {
        reply: oneshot::Sender<()>,
    },
}

/// What the send loop is given, in order.
enum Outgoing {
    Event(Box<CallEvent>),
    /// Everything before it was sent: answer.
    Flushed(oneshot::Sender<()>),
}

impl std::fmt::Debug for RoomInput {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Self::Event { .. } => "Event",
            Self::SyncDone => "SyncDone",
            Self::Place { .. } => "Place",
            Self::Answer { .. } => "Answer",
            Self::Reject { .. } => "Reject",
            Self::Hangup { .. } => "Hangup",
            Self::Audio { .. } => "Audio",
            Self::Flush { .. } => "Flush",
        })
    }
}

/// The application's side of the current call.
struct Slot {
    call_id: CallId,
    events: mpsc::UnboundedSender<DirectCallEvent>,
    stats: Arc<CallStats>,
    /// Callee: the offer to answer.
    offer_sdp: Option<String>,
    /// Calls this slot carried before glare replaced them (the application's handle may
    /// still name them).
    aliases: Vec<CallId>,
    /// Glare ended our call (`replaced`); the peer's invite that replaces it is awaited.
    replace_pending: bool,
}

impl Slot {
    fn new(
        call_id: CallId,
        events: mpsc::UnboundedSender<DirectCallEvent>,
        stats: Arc<CallStats>,
    ) -> Self {
        Self {
            call_id,
            events,
            stats,
            offer_sdp: None,
            aliases: Vec::new(),
            replace_pending: false,
        }
    }

    fn names(&self, call_id: &CallId) -> bool {
        self.call_id == *call_id || self.aliases.contains(call_id)
    }
}

pub(super) struct RoomTask {
    hub: Arc<Hub>,
    room: Room,
    peer_user: OwnedUserId,
    tx: mpsc::UnboundedSender<RoomInput>,
    machine: CallMachine,
    machine_timeout: Instant,
    sends: mpsc::UnboundedSender<Outgoing>,
    slot: Option<Slot>,
    media: Option<Media>,
    /// The fingerprints of the DTLS session, until the machine says `Connected`.
    pending_fingerprints: Option<(String, String)>,
    /// Whether the hub counts this room as having a call (for `user_busy` across rooms).
    marked_active: bool,
    /// The sending device of the last call event handed to the machine and its Ed25519 key
    /// (unpadded base64), for the security notice that event may cause.
    last_sender: Option<(String, String)>,
}

enum Wake {
    Input(Option<RoomInput>),
    Datagram(std::io::Result<(usize, std::net::SocketAddr)>),
    Timer,
}

impl RoomTask {
    pub(super) fn spawn(
        hub: Arc<Hub>,
        room: Room,
        peer_user: OwnedUserId,
        tx: mpsc::UnboundedSender<RoomInput>,
        rx: mpsc::UnboundedReceiver<RoomInput>,
    ) {
        let now = Instant::now();
        let mut config = CallConfig::new(hub.own.clone(), peer_user.to_string());
        config.invite_lifetime = hub.config.invite_lifetime;
        config.require_binding = hub.config.require_binding;
        config.media_connect_timeout = hub.config.media_connect_timeout;
        config.ice_restart_delay = hub.config.ice_restart_delay;
        config.ice_disconnected_timeout = hub.config.ice_disconnected_timeout;
        let machine = match CallMachine::new(config, now) {
            Ok(m) => m,
            Err(e) => {
                warn!(error = %e, "no call machine for this room");
                return;
            }
        };
        let (sends, send_rx) = mpsc::unbounded_channel();
        tokio::spawn(send_loop(room.clone(), send_rx));
        let task = RoomTask {
            hub,
            room,
            peer_user,
            tx,
            machine,
            machine_timeout: now,
            sends,
            slot: None,
            media: None,
            pending_fingerprints: None,
            marked_active: false,
            last_sender: None,
        };
        tokio::spawn(task.run(rx));
    }

    async fn run(mut self, mut rx: mpsc::UnboundedReceiver<RoomInput>) {
        let mut buf = vec![0u8; 2048];
        loop {
            self.drain(Instant::now());
            self.mark_active();
            let mut wake = self.machine_timeout;
            if let Some(m) = &self.media {
                wake = wake.min(m.next_wake());
            }
            let event = tokio::select! {
                i = rx.recv() => Wake::Input(i),
                r = recv(self.media.as_ref().map(|m| &m.socket), &mut buf) => Wake::Datagram(r),
                () = tokio::time::sleep_until(wake.into()) => Wake::Timer,
            };
            let now = Instant::now();
            match event {
                Wake::Input(None) => break,
                Wake::Input(Some(RoomInput::SyncDone)) => {
                    self.machine.sync_processed(now);
                    self.drain(now);
                    self.settle_replaced();
                }
                Wake::Input(Some(i)) => self.on_input(i, now),
                Wake::Datagram(Ok((n, from))) => {
                    if let Some(m) = &mut self.media {
                        m.receive(from, buf.get(..n).unwrap_or_default(), now);
                    }
                }
                Wake::Datagram(Err(e)) => debug!(error = %e, "socket receive failed"),
                Wake::Timer => {
                    if let Some(m) = &mut self.media
                        && now >= m.peer_timeout
                    {
                        let _ = m
                            .peer
                            .handle_input(now, oracle_calls_direct::peer::Input::Timeout);
                    }
                    if now >= self.machine_timeout {
                        self.machine.handle_timeout(now);
                    }
                }
            }
        }
        if let Some(m) = self.media.take() {
            m.close();
        }
        self.hub.set_active(self.room.room_id(), false);
    }

    fn mark_active(&mut self) {
        let active = self.machine.call_id().is_some();
        if active != self.marked_active {
            self.marked_active = active;
            self.hub.set_active(self.room.room_id(), active);
        }
    }

    /// Whether `call_id` (from the application's handle) names the machine's current call.
    fn owns(&self, call_id: &CallId) -> bool {
        self.slot
            .as_ref()
            .is_some_and(|s| s.names(call_id) && self.machine.call_id() == Some(&s.call_id))
    }

    /// After a sync batch: a call that glare ended but that no invite replaced is over.
    fn settle_replaced(&mut self) {
        if self.slot.as_ref().is_some_and(|s| s.replace_pending) {
            self.emit(DirectCallEvent::Ended(EndReason::LocalHangup(
                HangupReason::replaced(),
            )));
            self.slot = None;
        }
    }

    fn on_input(&mut self, input: RoomInput, now: Instant) {
        match input {
            RoomInput::Event {
                event_type,
                content,
                auth,
            } => {
                self.last_sender = auth.sender_device.clone().zip(
                    auth.sender_ed25519
                        .map(|k| base64::engine::general_purpose::STANDARD_NO_PAD.encode(k)),
                );
                if let Err(e) = self
                    .machine
                    .handle_raw_event(now, &event_type, &content, &auth)
                {
                    warn!(%event_type, error = %e, "a call event that does not parse was dropped");
                }
            }
            RoomInput::SyncDone => self.machine.sync_processed(now),
            RoomInput::Place { turn, reply } => {
                let _ = reply.send(self.place(turn.as_ref(), now));
            }
            RoomInput::Answer {
                call_id,
                turn,
                reply,
            } => {
                let _ = reply.send(self.answer(&call_id, turn.as_ref(), now));
            }
            RoomInput::Reject { call_id } => {
                if self.machine.call_id() == Some(&call_id) {
                    let _ = self.machine.reject(now);
                }
            }
            RoomInput::Flush { reply } => {
                // What the inputs before this one made the machine send goes out first.
                self.drain(now);
                let _ = self.sends.send(Outgoing::Flushed(reply));
            }
            RoomInput::Hangup { call_id } => {
                if self.owns(&call_id) {
                    let _ = self.machine.hangup(now);
                } else if self.slot.as_ref().is_some_and(|s| s.names(&call_id)) {
                    // Between glare's end of our call and the invite that replaces it.
                    self.emit(DirectCallEvent::Ended(EndReason::LocalHangup(
                        HangupReason::UserHangup,
                    )));
                    self.slot = None;
                }
            }
            RoomInput::Audio { call_id, pcm } => {
                if self.owns(&call_id)
                    && let Some(m) = &mut self.media
                {
                    let _ = m.peer.send_pcm(now, &pcm);
                }
            }
        }
    }

    fn place(&mut self, turn: Option<&TurnServers>, now: Instant) -> Result<Placed, DirectError> {
        if self.machine.phase() == Some(Phase::Ringing)
            && let Some(slot) = &mut self.slot
        {
            // The peer's call rings here: calling them back is answering it (glare before our
            // invite went out). The handle of the ringing call sees its events end.
            let (events, events_rx) = mpsc::unbounded_channel();
            slot.events = events;
            let (call_id, stats) = (slot.call_id.clone(), slot.stats.clone());
            info!(%call_id, "calling the person whose call rings here answers that call");
            self.answer(&call_id, turn, now)?;
            return Ok((call_id, events_rx, stats));
        }
        let mut rng = rand::rng();
        let call_id = self.machine.place(now, &mut rng)?;
        let result = (|| {
            let (socket, local) = bind_now(self.hub.config.host_address)?;
            let host = self.host_for(local);
            let (peer, sdp) = Peer::offer(now, &host)?;
            let desc = describe(&peer, &sdp);
            let stats = Arc::new(CallStats::default());
            let media = Media::new(socket, local, peer, &sdp, turn, stats.clone(), now);
            self.machine.send_invite(now, desc)?;
            Ok::<_, DirectError>((media, stats))
        })();
        let (media, stats) = match result {
            Ok(x) => x,
            Err(e) => {
                let _ = self.machine.hangup(now);
                return Err(e);
            }
        };
        let (events, events_rx) = mpsc::unbounded_channel();
        self.start_media(media, now);
        self.slot = Some(Slot::new(call_id.clone(), events, stats.clone()));
        info!(%call_id, peer = %self.peer_user, "direct call placed");
        Ok((call_id, events_rx, stats))
    }

    fn answer(
        &mut self,
        call_id: &CallId,
        turn: Option<&TurnServers>,
        now: Instant,
    ) -> Result<(), DirectError> {
        let offer = match &self.slot {
            Some(s) if &s.call_id == call_id && self.machine.call_id() == Some(call_id) => {
                s.offer_sdp.clone().ok_or(DirectError::Closed)?
            }
            _ => return Err(DirectError::Closed),
        };
        let (socket, local) = bind_now(self.hub.config.host_address)?;
        let host = self.host_for(local);
        let (peer, sdp) = Peer::answer(&offer, now, &host)?;
        let sdp = if self
            .hub
            .config
            .dangerous_test_faults
            .tamper_answer_fingerprint
        {
            tamper_fingerprint(&sdp)
        } else {
            sdp
        };
        let desc = describe(&peer, &sdp);
        let stats = self
            .slot
            .as_ref()
            .map(|s| s.stats.clone())
            .unwrap_or_default();
        let mut media = Media::new(socket, local, peer, &sdp, turn, stats, now);
        media.permit_candidates(offer.lines(), now);
        let mut rng = rand::rng();
        self.machine.answer(now, &mut rng, desc)?;
        self.start_media(media, now);
        info!(%call_id, "direct call answered");
        Ok(())
    }

    fn host_for(&self, local: std::net::SocketAddr) -> Vec<std::net::SocketAddr> {
        match self.hub.config.ice_policy {
            IcePolicy::All => vec![local],
            IcePolicy::RelayOnly => vec![],
        }
    }

    fn start_media(&mut self, media: Media, now: Instant) {
        let done = media.gathering_done;
        self.media = Some(media);
        if done {
            self.machine.local_gathering_complete(now);
        }
    }

    /// Drains the peer, the TURN allocation and the machine until nothing moves.
    fn drain(&mut self, now: Instant) {
        for _ in 0..64 {
            let mut moved = false;
            let mut peer_events = Vec::new();
            let mut turn_events = Vec::new();
            if let Some(m) = &mut self.media {
                loop {
                    match m.peer.poll_output() {
                        PeerOutput::Transmit(t) => m.transmit(t, now),
                        PeerOutput::Event(e) => peer_events.push(e),
                        PeerOutput::Timeout(t) => {
                            m.peer_timeout = t;
                            break;
                        }
                        PeerOutput::Closed => {
                            m.peer_timeout = now + Duration::from_secs(3600);
                            break;
                        }
                    }
                }
                m.flush_turn(now);
                if let Some(turn) = &mut m.turn {
                    while let Some(e) = turn.poll_event() {
                        turn_events.push(e);
                    }
                }
            }
            for e in turn_events {
                moved = true;
                self.on_turn_event(e, now);
            }
            for e in peer_events {
                moved = true;
                self.on_peer_event(e, now);
            }
            loop {
                match self.machine.poll_output() {
                    Output::Send(ev) => {
                        moved = true;
                        if let Some(ev) = self.with_test_faults(ev) {
                            let _ = self.sends.send(Outgoing::Event(Box::new(ev)));
                        }
                    }
                    Output::Notify(n) => {
                        moved = true;
                        self.on_notify(n, now);
                    }
                    Output::Security(e) => {
                        moved = true;
                        // The key, when the refused event's device is the one that sent the
                        // event just handled (never for a timer's notice).
                        let named = match &e {
                            SecurityEvent::UntrustedDevice { device, .. }
                            | SecurityEvent::PartyIdMismatch { device, .. } => Some(device),
                            _ => None,
                        };
                        let sender_ed25519 = self
                            .last_sender
                            .as_ref()
                            .filter(|(d, _)| Some(d) == named)
                            .map(|(_, key)| key.clone());
                        let _ = self.hub.security.send(SecurityNotice {
                            room_id: self.room.room_id().to_owned(),
                            event: e,
                            sender_ed25519,
                        });
                    }
                    Output::Timeout(t) => {
                        self.machine_timeout = t;
                        break;
                    }
                }
            }
            if !moved {
                return;
            }
        }
    }

    fn emit(&self, ev: DirectCallEvent) {
        if let Some(s) = &self.slot {
            let _ = s.events.send(ev);
        }
    }

    fn on_turn_event(&mut self, e: TurnEvent, now: Instant) {
        let Some(m) = &mut self.media else { return };
        match e {
            TurnEvent::Allocated { relayed, .. } => {
                if let Ok(mut r) = m.stats.relayed_addr.lock() {
                    *r = Some(relayed);
                }
                let local = m.local;
                match str0m::Candidate::relayed(relayed, local, "udp") {
                    Ok(c) => match m.peer.add_local_candidate(c) {
                        Ok(Some(line)) => {
                            let cand = Candidate {
                                candidate: line,
                                sdp_mid: Some(m.mid.clone()),
                                sdp_m_line_index: Some(0),
                                username_fragment: None,
                            };
                            self.machine.local_candidate(now, cand);
                        }
                        Ok(None) => {}
                        Err(e) => warn!(error = %e, "the relay candidate was refused"),
                    },
                    Err(e) => warn!(error = %e, "the relayed address is not a candidate"),
                }
                self.finish_gathering(now);
            }
            TurnEvent::Failed(e) => {
                warn!(error = %e, "TURN allocation failed");
                self.finish_gathering(now);
            }
            other => debug!(event = ?other, "TURN"),
        }
    }

    fn finish_gathering(&mut self, now: Instant) {
        if let Some(m) = &mut self.media
            && !m.gathering_done
        {
            m.gathering_done = true;
            self.machine.local_gathering_complete(now);
        }
    }

    fn on_peer_event(&mut self, e: PeerEvent, now: Instant) {
        match e {
            PeerEvent::Connected { local, remote } => {
                if let Some(m) = &mut self.media {
                    m.dtls_connected = true;
                }
                self.machine.media_connected(now);
                self.pending_fingerprints = Some((hex(local.as_bytes()), hex(remote.as_bytes())));
            }
            // ICE alone is not the media: before DTLS verified the certificate against the
            // announced fingerprint, nothing counts as connected (and no key confirmation
            // goes out). Afterwards ICE coming back is the path recovered.
            PeerEvent::IceConnected if self.media.as_ref().is_some_and(|m| m.dtls_connected) => {
                self.machine.media_connected(now);
                if let Some(m) = &mut self.media
                    && std::mem::take(&mut m.path_lost)
                {
                    info!("the path is back");
                    self.emit(DirectCallEvent::Reconnected);
                }
            }
            PeerEvent::IceDisconnected => {
                if let Some(m) = &mut self.media {
                    m.path_lost = true;
                }
                info!("the path was lost: nothing from the other side for 2 s");
                self.machine.media_disconnected(now);
                self.emit(DirectCallEvent::Reconnecting);
            }
            PeerEvent::AudioFrame(pcm) => self.emit(DirectCallEvent::Audio(pcm)),
            PeerEvent::Failed(f) => {
                warn!(failure = ?f, "direct call media failed");
                self.machine.media_failed(now);
            }
            _ => {}
        }
    }

    fn on_notify(&mut self, n: Notification, now: Instant) {
        match n {
            Notification::Incoming {
                call_id,
                caller,
                offer_sdp,
                auto_answer,
                ..
            } => {
                let Ok(caller) = matrix_sdk::ruma::UserId::parse(caller.as_str()) else {
                    return;
                };
                if auto_answer && self.slot.as_ref().is_some_and(|s| s.replace_pending) {
                    self.take_over(call_id, caller, offer_sdp);
                    return;
                }
                if !auto_answer && self.hub.busy_elsewhere(self.room.room_id()) {
                    info!(%call_id, "a call elsewhere is in progress: this one is refused as busy");
                    let _ = self.machine.refuse_busy(now);
                    return;
                }
                let (events, events_rx) = mpsc::unbounded_channel();
                let stats = Arc::new(CallStats::default());
                let mut slot = Slot::new(call_id.clone(), events, stats.clone());
                slot.offer_sdp = Some(offer_sdp);
                self.slot = Some(slot);
                info!(%call_id, %caller, "incoming direct call");
                let _ = self.hub.incoming.send(IncomingCall {
                    call_id,
                    caller,
                    room_id: self.room.room_id().to_owned(),
                    auto_answer,
                    hub: self.hub.clone(),
                    room: self.tx.clone(),
                    events: events_rx,
                    stats,
                });
            }
            Notification::Ringing { .. } => self.emit(DirectCallEvent::Ringing),
            Notification::RemoteAnswer { sdp, .. } => {
                if let Some(m) = &mut self.media {
                    m.permit_candidates(sdp.lines(), now);
                    if let Err(e) = m.peer.accept_answer(&sdp) {
                        warn!(error = %e, "the selected answer cannot be used");
                        self.machine.media_failed(now);
                    }
                }
            }
            Notification::RemoteCandidates(list) => {
                if let Some(m) = &mut self.media {
                    m.permit_candidates(list.iter().map(|c| c.candidate.as_str()), now);
                    for c in &list {
                        if let Err(e) = m.peer.add_remote_candidate(&c.candidate) {
                            debug!(error = %e, "a remote candidate was skipped");
                        }
                    }
                }
            }
            Notification::Connecting => {}
            Notification::Connected {
                key_confirmation_expected,
            } => {
                let (local, remote) = self.pending_fingerprints.take().unwrap_or_default();
                self.emit(DirectCallEvent::Connected {
                    local_fingerprint: local,
                    remote_fingerprint: remote,
                    key_confirmation_expected,
                });
            }
            Notification::KeyConfirmed => self.emit(DirectCallEvent::KeyConfirmed),
            Notification::IceRestartNeeded => {
                if let Some(m) = &mut self.media {
                    match m.peer.ice_restart() {
                        Ok(sdp) => {
                            info!("ICE restart offered (m.call.negotiate)");
                            let desc = describe(&m.peer, &sdp);
                            if let Err(e) = self.machine.renegotiate(now, desc) {
                                debug!(error = %e, "no ICE restart");
                            }
                        }
                        Err(e) => debug!(error = %e, "no ICE restart"),
                    }
                }
            }
            Notification::RemoteRenegotiation { sdp_type, sdp, .. } => {
                let Some(m) = &mut self.media else { return };
                m.permit_candidates(sdp.lines(), now);
                match sdp_type {
                    SdpType::Offer => match m.peer.accept_offer(&sdp) {
                        Ok(answer) => {
                            let desc = describe(&m.peer, &answer);
                            let _ = self.machine.answer_renegotiation(now, desc);
                        }
                        Err(e) => warn!(error = %e, "the renegotiation offer cannot be used"),
                    },
                    SdpType::Answer => {
                        if let Err(e) = m.peer.accept_answer(&sdp) {
                            warn!(error = %e, "the renegotiation answer cannot be used");
                        }
                    }
                }
            }
            Notification::RemoteStreamMetadata(_) => {}
            Notification::Ended { call_id, reason } => {
                info!(%call_id, ?reason, "direct call ended");
                let glare = reason == EndReason::LocalHangup(HangupReason::replaced());
                if glare && let Some(s) = self.slot.as_mut().filter(|s| s.call_id == call_id) {
                    // The peer's invite that replaces it follows once its batch is processed.
                    s.replace_pending = true;
                    if let Some(m) = self.media.take() {
                        m.close();
                    }
                } else if self.slot.as_ref().is_some_and(|s| s.call_id == call_id) {
                    self.emit(DirectCallEvent::Ended(reason));
                    self.slot = None;
                    if let Some(m) = self.media.take() {
                        m.close();
                    }
                }
            }
        }
    }
}

impl RoomTask {
    /// Glare: the peer's invite replaced our call. The application's handle carries the new
    /// call (same events, same audio source), which is answered on the user's behalf.
    fn take_over(&mut self, call_id: CallId, caller: OwnedUserId, offer_sdp: String) {
        let Some(slot) = self.slot.as_mut() else {
            return;
        };
        let replaced = std::mem::replace(&mut slot.call_id, call_id.clone());
        slot.aliases.push(replaced.clone());
        slot.offer_sdp = Some(offer_sdp);
        slot.replace_pending = false;
        info!(%replaced, by = %call_id, "glare: our call was replaced by the peer's; answering it");
        self.emit(DirectCallEvent::Replaced {
            replaced,
            by: call_id.clone(),
        });
        let hub = self.hub.clone();
        let tx = self.tx.clone();
        tokio::spawn(async move {
            let turn = match hub.turn_for_call(&caller).await {
                Ok(t) => t,
                Err(e) => {
                    warn!(error = %e, "glare: no TURN for the automatic answer");
                    let _ = tx.send(RoomInput::Hangup { call_id });
                    return;
                }
            };
            let (reply, answered) = oneshot::channel();
            let sent = tx.send(RoomInput::Answer {
                call_id: call_id.clone(),
                turn,
                reply,
            });
            if sent.is_ok()
                && let Ok(Err(e)) = answered.await
            {
                warn!(error = %e, "glare: the automatic answer failed");
                let _ = tx.send(RoomInput::Hangup { call_id });
            }
        });
    }
}

impl RoomTask {
    /// The event as the configured test faults change it (unchanged without them).
    fn with_test_faults(&self, ev: CallEvent) -> Option<CallEvent> {
        let faults = self.hub.config.dangerous_test_faults;
        match ev {
            CallEvent::Confirm(_) if faults.drop_key_confirmation => {
                warn!("test fault: our key confirmation is not sent");
                None
            }
            CallEvent::Confirm(mut c) if faults.wrong_key_confirmation => {
                warn!("test fault: our key confirmation is sent wrong");
                let mut mac = *c.mac.as_bytes();
                if let Some(b) = mac.first_mut() {
                    *b ^= 1;
                }
                c.mac = oracle_calls_direct::binding::Confirmation::from_bytes(mac);
                Some(CallEvent::Confirm(c))
            }
            ev => Some(ev),
        }
    }
}

/// `sdp` with the last hex digit of its `a=fingerprint` changed (a test fault).
fn tamper_fingerprint(sdp: &str) -> String {
    warn!("test fault: our answer carries a wrong DTLS fingerprint");
    sdp.split("\r\n")
        .map(|line| {
            if line.starts_with("a=fingerprint:") {
                let mut l = line.to_owned();
                if let Some(last) = l.pop() {
                    l.push(if last == '0' { '1' } else { '0' });
                }
                l
            } else {
                line.to_owned()
            }
        })
        .collect::<Vec<_>>()
        .join("\r\n")
}

/// Receives on the call's socket, or waits forever without one.
async fn recv(
    socket: Option<&tokio::net::UdpSocket>,
    buf: &mut [u8],
) -> std::io::Result<(usize, std::net::SocketAddr)> {
    match socket {
        Some(s) => s.recv_from(buf).await,
        None => std::future::pending().await,
    }
}

/// Sends the machine's events into the room, in order, each retried a few times.
async fn send_loop(room: Room, mut rx: mpsc::UnboundedReceiver<Outgoing>) {
    while let Some(item) = rx.recv().await {
        let ev = match item {
            Outgoing::Event(ev) => *ev,
            Outgoing::Flushed(reply) => {
                let _ = reply.send(());
                continue;
            }
        };
        let content = ev.to_content();
        let mut delay = Duration::from_millis(200);
        for attempt in 1..=4 {
            match room.send_raw(ev.event_type(), content.clone()).await {
                Ok(_) => break,
                Err(e) => {
                    warn!(attempt, event_type = ev.event_type(), error = %e, "sending a call event failed");
                    tokio::time::sleep(delay).await;
                    delay *= 2;
                }
            }
        }
    }
}

fn bind_now(
    addr: std::net::IpAddr,
) -> Result<(tokio::net::UdpSocket, std::net::SocketAddr), DirectError> {
    let std = std::net::UdpSocket::bind(std::net::SocketAddr::new(addr, 0))?;
    std.set_nonblocking(true)?;
    let local = std.local_addr()?;
    Ok((tokio::net::UdpSocket::from_std(std)?, local))
}

/// Our SDP with `sdp_stream_metadata` keyed by our msid stream.
fn describe(peer: &Peer, sdp: &str) -> LocalDescription {
    let mut meta = std::collections::BTreeMap::new();
    meta.insert(
        peer.stream_id().to_owned(),
        StreamMetadata {
            purpose: StreamPurpose::UserMedia,
            audio_muted: Some(false),
            video_muted: Some(true),
        },
    );
    LocalDescription {
        sdp: sdp.to_owned(),
        sdp_stream_metadata: Some(meta),
    }
}

fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

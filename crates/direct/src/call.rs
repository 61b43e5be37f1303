//! The sans-IO state machine of person-to-person calls in one encrypted DM room: at most one
//! call at a time, its signalling (Matrix VoIP v1), its timers, the binding and its key
//! confirmation, and every refusal of an event that is not authentic.
//!
//! The driver feeds inputs — a decrypted room event with its [`EventAuth`], an application
//! command, a media state change, the time — and then drains [`CallMachine::poll_output`]
//! until it returns [`Output::Timeout`]: send each [`Output::Send`] into the room, hand each
//! [`Output::Notify`] to the application and the media peer, report each
//! [`Output::Security`], and call [`CallMachine::handle_timeout`] at the returned instant.
//! The machine reads no clock and draws no randomness of its own.
//!
//! Choices where the spec leaves room, all of them tested:
//! - **Busy**: an invite for another call while one is ringing or running is refused with
//!   `m.call.hangup` reason `user_busy` (no call waiting).
//! - **Ringing waits for the sync batch**: [`Notification::Incoming`] is held until
//!   [`CallMachine::sync_processed`], so an invite hung up, answered or rejected elsewhere in
//!   the same batch never rings (the spec's liveness rule).
//! - **Glare**: an invite from the peer while ours is being prepared cancels ours and is
//!   answered at once; after ours was sent, the lesser `call_id` (byte order) survives and the
//!   loser is hung up with reason `replaced` (MatrixCall's reason).
//! - **Candidates**: the first batch 200 ms after the invite/answer, later ones no sooner than
//!   2000 ms (caller) / 500 ms (callee) after the previous one; end-of-candidates rides on the
//!   batch after gathering completes.
//! - **Authenticity**: a call event counts only if the room is encrypted, the event was
//!   decrypted, it comes from the peer (or our own user's other devices), from a device the
//!   trust store trusts, and its `party_id` is that device's id.

use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::time::{Duration, Instant};

use rand_core::CryptoRng;
use serde_json::{Map, Value};
use tracing::{debug, warn};

use self::batcher::Batcher;
pub use self::types::{
    CallConfig, DeviceTrust, EndReason, EventAuth, LocalDescription, Notification, Output, Phase,
    SecurityEvent,
};
use crate::binding::{
    BindingContext, CallBinding, DirectExtension, DtlsFingerprint, EphemeralKeyPair, PartyIdentity,
    Role,
};
use crate::error::{BindingError, CallError, SignalError};
use crate::signal::{
    Answer, CallCommon, CallEvent, CallId, Candidate, Candidates, Confirm, Hangup, HangupReason,
    Invite, Negotiate, PartyId, Reject, SdpType, SelectAnswer, Version,
};

/// The invite lifetime we send by default (MatrixCall uses 60 s; the spec recommends ≥ 90 s
/// for slow clients, 60 s is what interoperates).
pub const DEFAULT_INVITE_LIFETIME: Duration = Duration::from_secs(60);
/// An invite with less than this left of its lifetime does not ring (MatrixCall's grace); for
/// invites shorter than twice this, half their lifetime (so a short-lived invite rings at all).
pub const RING_GRACE: Duration = Duration::from_secs(3);
/// The first candidates batch goes this long after the invite/answer.
pub const FIRST_CANDIDATES_DELAY: Duration = Duration::from_millis(200);
/// Later batches of the caller: at least this long after the previous one.
pub const CALLER_CANDIDATES_WINDOW: Duration = Duration::from_millis(2000);
/// Later batches of the callee: at least this long after the previous one.
pub const CALLEE_CANDIDATES_WINDOW: Duration = Duration::from_millis(500);
/// Media must connect this long after the answer, else `ice_failed` (the default of
/// [`CallConfig::media_connect_timeout`]).
pub const MEDIA_CONNECT_TIMEOUT: Duration = Duration::from_secs(30);
/// After media is lost, an ICE restart is asked for after this long (the default of
/// [`CallConfig::ice_restart_delay`]). The path is reported lost after
/// [`crate::peer::PATH_TIMEOUT`] without a datagram, so a restart starts 2.5 s after a cut.
pub const ICE_RESTART_DELAY: Duration = Duration::from_millis(500);
/// After media is lost, the call ends with `ice_timeout` after this long (the default of
/// [`CallConfig::ice_disconnected_timeout`]).
pub const ICE_DISCONNECTED_TIMEOUT: Duration = Duration::from_secs(30);
/// The peer's key confirmation must arrive this long after media connected.
pub const DEFAULT_KEY_CONFIRMATION_TIMEOUT: Duration = Duration::from_secs(5);
/// How many ended call ids are remembered to refuse replays.
const SEEN_CALLS: usize = 1024;
/// Candidates buffered for calls whose invite has not arrived yet: calls, and per party.
const EARLY_CALLS: usize = 8;
const EARLY_CANDIDATES: usize = 64;

/// The one call in progress.
#[derive(Debug)]
struct Active {
    call_id: CallId,
    role: Role,
    phase: Phase,
    version: Version,
    /// Callee: the caller's party. Caller: the selected answerer's, once selected.
    peer_party: Option<PartyId>,
    /// The peer's identity for the binding (user, device, Ed25519).
    peer_identity: Option<PartyIdentity>,
    offer_sdp: Option<String>,
    keys: Option<EphemeralKeyPair>,
    peer_ext: Option<DirectExtension>,
    binding: Option<CallBinding>,
    confirmed: bool,
    /// Whether remote candidates can go to the media peer.
    remote_ready: bool,
    /// Callee: the caller selected our answer.
    selected: bool,
    media_connected: bool,
    media_ever_connected: bool,
    pending_offer: bool,
    candidates: Batcher,
    invite_expires: Option<Instant>,
    connect_deadline: Option<Instant>,
    restart_at: Option<Instant>,
    disconnected_deadline: Option<Instant>,
    confirm_deadline: Option<Instant>,
}

impl Active {
    fn new(call_id: CallId, role: Role, phase: Phase) -> Self {
        Self {
            call_id,
            role,
            phase,
            version: Version::V1,
            peer_party: None,
            peer_identity: None,
            offer_sdp: None,
            keys: None,
            peer_ext: None,
            binding: None,
            confirmed: false,
            remote_ready: false,
            selected: false,
            media_connected: false,
            media_ever_connected: false,
            pending_offer: false,
            candidates: Batcher::new(role),
            invite_expires: None,
            connect_deadline: None,
            restart_at: None,
            disconnected_deadline: None,
            confirm_deadline: None,
        }
    }

    fn deadlines(&self) -> impl Iterator<Item = Instant> {
        [
            self.invite_expires,
            self.connect_deadline,
            self.restart_at,
            self.disconnected_deadline,
            self.confirm_deadline,
            self.candidates.flush_at,
        ]
        .into_iter()
        .flatten()
    }
}

/// Who sent an authenticated event.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Origin {
    Peer,
    OwnOtherDevice,
}

/// The state machine of person-to-person calls in one encrypted DM room.
#[derive(Debug)]
pub struct CallMachine {
    config: CallConfig,
    own_party: PartyId,
    now: Instant,
    call: Option<Active>,
    out: VecDeque<Output>,
    /// `Incoming` notifications waiting for the end of the sync batch.
    held: Vec<Notification>,
    seen: BTreeSet<CallId>,
    seen_order: VecDeque<CallId>,
    early: BTreeMap<CallId, BTreeMap<PartyId, Vec<Candidate>>>,
}

impl CallMachine {
    /// A machine with no call.
    ///
    /// # Errors
    /// [`CallError::BadIdentifier`] when our device id cannot be a `party_id`.
    pub fn new(config: CallConfig, now: Instant) -> Result<Self, CallError> {
        let own_party = PartyId::parse(&config.own.device_id)
            .map_err(|_| CallError::BadIdentifier("party_id"))?;
        Ok(Self {
            config,
            own_party,
            now,
            call: None,
            out: VecDeque::new(),
            held: vec![],
            seen: BTreeSet::new(),
            seen_order: VecDeque::new(),
            early: BTreeMap::new(),
        })
    }

    /// The call in progress, if any.
    pub fn call_id(&self) -> Option<&CallId> {
        self.call.as_ref().map(|c| &c.call_id)
    }

    /// Where the call in progress is.
    pub fn phase(&self) -> Option<Phase> {
        self.call.as_ref().map(|c| c.phase)
    }

    /// Whether the peer's key confirmation verified.
    pub fn key_confirmed(&self) -> bool {
        self.call.as_ref().is_some_and(|c| c.confirmed)
    }

    /// The next output; [`Output::Timeout`] when there is nothing to do until then.
    pub fn poll_output(&mut self) -> Output {
        if let Some(o) = self.out.pop_front() {
            return o;
        }
        Output::Timeout(self.poll_timeout())
    }

    /// When [`Self::handle_timeout`] must be called next (an hour ahead when nothing waits).
    pub fn poll_timeout(&self) -> Instant {
        self.call
            .as_ref()
            .and_then(|c| c.deadlines().min())
            .unwrap_or(self.now + Duration::from_secs(3600))
    }

    /// Starts a call: makes its id and ephemeral binding keys. Glare with an invite that
    /// arrives now cancels it; send the invite with [`Self::send_invite`] once the offer is
    /// made.
    ///
    /// # Errors
    /// [`CallError::Busy`] while another call is in progress.
    pub fn place(&mut self, now: Instant, rng: &mut impl CryptoRng) -> Result<CallId, CallError> {
        self.now = now;
        if self.call.is_some() {
            return Err(CallError::Busy);
        }
        let mut raw = [0u8; 16];
        rng.fill_bytes(&mut raw);
        let call_id =
            CallId::parse(&hex::encode(raw)).map_err(|_| CallError::BadIdentifier("call_id"))?;
        let mut call = Active::new(call_id.clone(), Role::Caller, Phase::Preparing);
        call.keys = Some(EphemeralKeyPair::generate(rng));
        self.remember(&call_id);
        self.call = Some(call);
        Ok(call_id)
    }

    /// Sends the invite with our offer.
    ///
    /// # Errors
    /// [`CallError::WrongState`] unless a call is [`Phase::Preparing`] (it may have been
    /// replaced by glare meanwhile); [`CallError::Binding`] when the offer has no sha-256
    /// fingerprint.
    pub fn send_invite(&mut self, now: Instant, offer: LocalDescription) -> Result<(), CallError> {
        self.now = now;
        let call = expect_phase(&mut self.call, "send_invite", &[Phase::Preparing])?;
        DtlsFingerprint::from_sdp(&offer.sdp).map_err(CallError::Binding)?;
        let lifetime = self.config.invite_lifetime;
        let invite = Invite {
            common: CallCommon::v1(call.call_id.clone(), self.own_party.clone()),
            offer_sdp: offer.sdp.clone(),
            lifetime_ms: u64::try_from(lifetime.as_millis()).unwrap_or(u64::MAX),
            invitee: Some(self.config.peer_user.clone()),
            sdp_stream_metadata: offer.sdp_stream_metadata,
            direct: call.keys.as_ref().map(EphemeralKeyPair::extension),
            extra: Map::new(),
        };
        call.phase = Phase::Inviting;
        call.offer_sdp = Some(offer.sdp);
        call.invite_expires = Some(now + lifetime);
        call.candidates.opened = Some(now);
        call.candidates.schedule(now);
        let call_id = call.call_id.clone();
        self.out.push_back(Output::Send(CallEvent::Invite(invite)));
        self.notify(Notification::Ringing { call_id });
        Ok(())
    }

    /// Answers the ringing call (or the one glare handed us) with our answer.
    ///
    /// # Errors
    /// [`CallError::WrongState`] unless a call rings; [`CallError::Binding`] when the answer
    /// has no sha-256 fingerprint while the caller offered the binding.
    pub fn answer(
        &mut self,
        now: Instant,
        rng: &mut impl CryptoRng,
        answer: LocalDescription,
    ) -> Result<(), CallError> {
        self.now = now;
        let own = self.config.own.clone();
        let own_party = self.own_party.clone();
        let call = expect_phase(&mut self.call, "answer", &[Phase::Ringing])?;
        let mut direct = None;
        if call.peer_ext.is_some() {
            // The ephemeral secret lives only for this derivation (zeroized on drop).
            let keys = EphemeralKeyPair::generate(rng);
            let binding =
                bind(call, Role::Callee, &keys, &own, &answer.sdp).map_err(CallError::Binding)?;
            call.binding = Some(binding);
            direct = Some(keys.extension());
        }
        let content = Answer {
            common: CallCommon {
                call_id: call.call_id.clone(),
                party_id: own_party,
                version: Version::V1,
            },
            answer_sdp: answer.sdp,
            sdp_stream_metadata: answer.sdp_stream_metadata,
            direct,
            extra: Map::new(),
        };
        call.phase = Phase::Connecting;
        call.invite_expires = None;
        call.connect_deadline = Some(now + self.config.media_connect_timeout);
        call.candidates.opened = Some(now);
        call.candidates.schedule(now);
        call.remote_ready = true;
        let call_id = call.call_id.clone();
        let party = call.peer_party.clone();
        self.out.push_back(Output::Send(CallEvent::Answer(content)));
        self.notify(Notification::Connecting);
        if let Some(party) = party {
            self.release_early(&call_id, &party);
        }
        Ok(())
    }

    /// Rejects the ringing call (`m.call.reject`; `m.call.hangup` for a version 0 invite).
    ///
    /// # Errors
    /// [`CallError::WrongState`] unless a call rings.
    pub fn reject(&mut self, now: Instant) -> Result<(), CallError> {
        self.now = now;
        let own_party = self.own_party.clone();
        let call = expect_phase(&mut self.call, "reject", &[Phase::Ringing])?;
        let common = CallCommon {
            call_id: call.call_id.clone(),
            party_id: own_party,
            version: Version::V1,
        };
        let ev = match call.version {
            Version::V1 => CallEvent::Reject(Reject {
                common,
                extra: Map::new(),
            }),
            Version::V0 => CallEvent::Hangup(Hangup {
                common,
                reason: HangupReason::UserHangup,
                extra: Map::new(),
            }),
        };
        self.out.push_back(Output::Send(ev));
        self.end(EndReason::LocalReject);
        Ok(())
    }

    /// Refuses the ringing call as busy (`m.call.hangup` `user_busy`): the driver's answer
    /// when a call in another room is in progress.
    ///
    /// # Errors
    /// [`CallError::WrongState`] unless a call rings.
    pub fn refuse_busy(&mut self, now: Instant) -> Result<(), CallError> {
        self.now = now;
        expect_phase(&mut self.call, "refuse_busy", &[Phase::Ringing])?;
        self.hang_up(HangupReason::UserBusy, None);
        Ok(())
    }

    /// Hangs up whatever call is in progress (a ringing one is rejected).
    ///
    /// # Errors
    /// [`CallError::WrongState`] when there is no call.
    pub fn hangup(&mut self, now: Instant) -> Result<(), CallError> {
        self.now = now;
        match self.phase() {
            None => Err(CallError::WrongState {
                operation: "hangup",
                state: "idle",
            }),
            Some(Phase::Ringing) => self.reject(now),
            Some(Phase::Preparing) => {
                self.end(EndReason::LocalHangup(HangupReason::UserHangup));
                Ok(())
            }
            Some(_) => {
                self.hang_up(HangupReason::UserHangup, None);
                Ok(())
            }
        }
    }

    /// A local ICE candidate gathered after our SDP was made.
    pub fn local_candidate(&mut self, now: Instant, candidate: Candidate) {
        self.now = now;
        if let Some(call) = &mut self.call {
            if candidate.is_end_of_candidates() {
                call.candidates.gathering_complete = true;
            } else {
                call.candidates.queue.push(candidate);
            }
            call.candidates.schedule(now);
        }
    }

    /// Local candidate gathering is complete (end-of-candidates goes with the next batch).
    pub fn local_gathering_complete(&mut self, now: Instant) {
        self.local_candidate(now, Candidate::end_of_candidates());
    }

    /// ICE + DTLS connected.
    pub fn media_connected(&mut self, now: Instant) {
        self.now = now;
        let Some(call) = &mut self.call else { return };
        if call.phase != Phase::Connecting && call.phase != Phase::Connected {
            return;
        }
        call.media_connected = true;
        call.restart_at = None;
        call.disconnected_deadline = None;
        call.connect_deadline = None;
        if call.phase == Phase::Connected {
            return;
        }
        call.phase = Phase::Connected;
        call.media_ever_connected = true;
        let mut send = None;
        if let Some(binding) = &call.binding {
            send = Some(CallEvent::Confirm(Confirm {
                common: CallCommon::v1(call.call_id.clone(), self.own_party.clone()),
                mac: binding.confirmation(),
                extra: Map::new(),
            }));
            if !call.confirmed {
                call.confirm_deadline = Some(now + self.config.key_confirmation_timeout);
            }
        }
        let expected = call.binding.is_some() && !call.confirmed;
        if let Some(ev) = send {
            self.out.push_back(Output::Send(ev));
        }
        self.notify(Notification::Connected {
            key_confirmation_expected: expected,
        });
    }

    /// Media was lost (ICE disconnected): an ICE restart is asked for after
    /// [`CallConfig::ice_restart_delay`], the call ends `ice_timeout` after
    /// [`CallConfig::ice_disconnected_timeout`].
    pub fn media_disconnected(&mut self, now: Instant) {
        self.now = now;
        let (restart, give_up) = (
            self.config.ice_restart_delay,
            self.config.ice_disconnected_timeout,
        );
        if let Some(call) = &mut self.call
            && call.media_connected
        {
            call.media_connected = false;
            call.restart_at = Some(now + restart);
            call.disconnected_deadline = Some(now + give_up);
        }
    }

    /// Media failed for good: `ice_timeout` if it had flowed, `ice_failed` if never.
    pub fn media_failed(&mut self, now: Instant) {
        self.now = now;
        let Some(call) = &self.call else { return };
        if matches!(call.phase, Phase::Connecting | Phase::Connected) {
            let reason = if call.media_ever_connected {
                HangupReason::IceTimeout
            } else {
                HangupReason::IceFailed
            };
            self.hang_up(reason, None);
        }
    }

    /// Sends a renegotiation offer (an ICE restart, or a media change).
    ///
    /// # Errors
    /// [`CallError::WrongState`] unless an answer was selected.
    pub fn renegotiate(&mut self, now: Instant, offer: LocalDescription) -> Result<(), CallError> {
        self.send_negotiate(now, SdpType::Offer, offer)
    }

    /// Answers the peer's renegotiation offer.
    ///
    /// # Errors
    /// [`CallError::WrongState`] unless an answer was selected.
    pub fn answer_renegotiation(
        &mut self,
        now: Instant,
        answer: LocalDescription,
    ) -> Result<(), CallError> {
        self.send_negotiate(now, SdpType::Answer, answer)
    }

    /// The sync batch that was fed in is fully processed: held rings are released.
    pub fn sync_processed(&mut self, now: Instant) {
        self.now = now;
        for n in std::mem::take(&mut self.held) {
            let live = matches!(&n, Notification::Incoming { call_id, .. }
                if self.call.as_ref().is_some_and(|c| &c.call_id == call_id && c.phase == Phase::Ringing));
            if live {
                self.notify(n);
            }
        }
    }

    /// Timers.
    pub fn handle_timeout(&mut self, now: Instant) {
        self.now = now;
        let Some(call) = &mut self.call else { return };
        if let Some(batch) = call.candidates.take_due(now) {
            let ev = CallEvent::Candidates(Candidates {
                common: CallCommon::v1(call.call_id.clone(), self.own_party.clone()),
                candidates: batch,
                extra: Map::new(),
            });
            call.candidates.schedule(now);
            self.out.push_back(Output::Send(ev));
        }
        let Some(call) = &mut self.call else { return };
        let due = |t: Option<Instant>| t.is_some_and(|t| t <= now);
        if due(call.invite_expires) {
            call.invite_expires = None;
            match call.phase {
                Phase::Inviting => self.hang_up(HangupReason::InviteTimeout, None),
                _ => self.end(EndReason::InviteExpired),
            }
        } else if due(call.connect_deadline) {
            call.connect_deadline = None;
            self.hang_up(HangupReason::IceFailed, None);
        } else if due(call.disconnected_deadline) {
            call.disconnected_deadline = None;
            self.hang_up(HangupReason::IceTimeout, None);
        } else if due(call.confirm_deadline) {
            call.confirm_deadline = None;
            let ev = SecurityEvent::KeyConfirmationMissing {
                call_id: call.call_id.clone(),
            };
            self.hang_up(HangupReason::UnknownError, Some(ev));
        } else if due(call.restart_at) {
            call.restart_at = None;
            self.notify(Notification::IceRestartNeeded);
        }
    }

    /// A room event of type `event_type` (decrypted content). Events of other types are
    /// ignored.
    ///
    /// # Errors
    /// The content does not parse (nothing else happens; the driver logs it).
    pub fn handle_raw_event(
        &mut self,
        now: Instant,
        event_type: &str,
        content: &Value,
        auth: &EventAuth,
    ) -> Result<(), SignalError> {
        if !CallEvent::is_call_event_type(event_type) {
            return Ok(());
        }
        let ev = CallEvent::parse(event_type, content)?;
        self.handle_event(now, ev, auth);
        Ok(())
    }

    /// A parsed call event with its authentication facts.
    pub fn handle_event(&mut self, now: Instant, ev: CallEvent, auth: &EventAuth) {
        self.now = now;
        let Some(from) = self.authenticate(&ev, auth) else {
            return;
        };
        match ev {
            CallEvent::Invite(inv) => self.on_invite(inv, from, auth),
            CallEvent::Candidates(c) => self.on_candidates(c),
            CallEvent::Answer(a) => self.on_answer(a, from, auth),
            CallEvent::Reject(r) => self.on_reject(&r.common, from),
            CallEvent::SelectAnswer(s) => self.on_select_answer(s, from),
            CallEvent::Hangup(h) => self.on_hangup(h, from),
            CallEvent::Negotiate(n) => self.on_negotiate(n),
            CallEvent::SdpStreamMetadataChanged(m) => {
                if self.is_from_selected_peer(&m.common) {
                    self.notify(Notification::RemoteStreamMetadata(m.sdp_stream_metadata));
                }
            }
            CallEvent::Confirm(c) => self.on_confirm(c),
        }
    }

    // ---- inbound ---------------------------------------------------------------------------

    /// Layer 1: who may send call events, and how they must arrive. `None`: drop the event
    /// (a security event was reported, or it is our own echo).
    fn authenticate(&mut self, ev: &CallEvent, auth: &EventAuth) -> Option<Origin> {
        let event_type = ev.event_type().to_owned();
        let sender = auth.sender.clone();
        let refuse = |s: &mut Self, e: SecurityEvent| {
            warn!(event_type = %ev.event_type(), "call event refused: {e:?}");
            s.out.push_back(Output::Security(e));
            None
        };
        if !auth.room_encrypted {
            return refuse(self, SecurityEvent::UnencryptedRoom { event_type, sender });
        }
        if !auth.decrypted {
            return refuse(
                self,
                SecurityEvent::PlaintextCallEvent { event_type, sender },
            );
        }
        let from = if sender == self.config.peer_user {
            Origin::Peer
        } else if sender == self.config.own.user_id {
            Origin::OwnOtherDevice
        } else {
            return refuse(self, SecurityEvent::UnexpectedSender { sender });
        };
        let Some(device) = auth.sender_device.clone() else {
            return refuse(self, SecurityEvent::UnknownSenderDevice { sender });
        };
        let party = ev.common().party_id.as_str();
        if party != device {
            return refuse(
                self,
                SecurityEvent::PartyIdMismatch {
                    sender,
                    device,
                    party_id: party.to_owned(),
                },
            );
        }
        if from == Origin::OwnOtherDevice && device == self.config.own.device_id {
            debug!("our own call event echoed back");
            return None;
        }
        if auth.trust != DeviceTrust::Trusted {
            return refuse(self, SecurityEvent::UntrustedDevice { sender, device });
        }
        Some(from)
    }

    fn on_invite(&mut self, inv: Invite, from: Origin, auth: &EventAuth) {
        let call_id = inv.common.call_id.clone();
        if from == Origin::OwnOtherDevice {
            // We called from another device: nothing rings here.
            self.ignore_call(&call_id);
            return;
        }
        if self.seen.contains(&call_id) {
            self.security(SecurityEvent::ReplayedInvite { call_id });
            return;
        }
        if inv
            .invitee
            .as_ref()
            .is_some_and(|i| *i != self.config.own.user_id)
        {
            return;
        }
        let age = auth.age.unwrap_or_default();
        let lifetime = Duration::from_millis(inv.lifetime_ms);
        if age + RING_GRACE.min(lifetime / 2) >= lifetime {
            debug!(%call_id, "invite too old to ring");
            self.ignore_call(&call_id);
            return;
        }
        if self.config.require_binding && inv.direct.is_none() {
            self.ignore_call(&call_id);
            self.security(SecurityEvent::BindingAbsent {
                call_id: call_id.clone(),
            });
            self.send_hangup_for(&call_id, HangupReason::UnknownError);
            return;
        }
        let auto_answer = match self.call.as_ref().map(|c| (c.phase, c.call_id.clone())) {
            None => false,
            Some((Phase::Preparing, _)) => {
                // Glare before our invite went out: ours is dropped, theirs answered.
                self.end(EndReason::LocalHangup(HangupReason::replaced()));
                true
            }
            Some((Phase::Inviting, ours)) => {
                if call_id < ours {
                    self.hang_up(HangupReason::replaced(), None);
                    true
                } else {
                    // Ours wins; the peer replaces theirs.
                    self.ignore_call(&call_id);
                    return;
                }
            }
            Some(_) => {
                self.ignore_call(&call_id);
                self.send_hangup_for(&call_id, HangupReason::UserBusy);
                return;
            }
        };
        self.remember(&call_id);
        let mut call = Active::new(call_id.clone(), Role::Callee, Phase::Ringing);
        call.version = inv.common.version;
        call.peer_party = Some(inv.common.party_id.clone());
        call.peer_identity = auth.sender_ed25519.map(|ed25519| PartyIdentity {
            user_id: auth.sender.clone(),
            device_id: inv.common.party_id.as_str().to_owned(),
            ed25519,
        });
        call.offer_sdp = Some(inv.offer_sdp.clone());
        call.peer_ext = inv.direct;
        call.invite_expires = Some(self.now + (lifetime - age));
        self.call = Some(call);
        self.held.push(Notification::Incoming {
            call_id,
            caller: auth.sender.clone(),
            offer_sdp: inv.offer_sdp,
            sdp_stream_metadata: inv.sdp_stream_metadata,
            auto_answer,
        });
    }

    fn on_candidates(&mut self, c: Candidates) {
        let party = c.common.party_id.clone();
        let call_id = c.common.call_id.clone();
        if let Some(call) = &self.call
            && call.call_id == call_id
        {
            if call.remote_ready && call.peer_party.as_ref() == Some(&party) {
                self.notify(Notification::RemoteCandidates(c.candidates));
                return;
            }
            let wrong_party = call.role == Role::Callee && call.peer_party.as_ref() != Some(&party);
            let late = call.role == Role::Caller && call.peer_party.is_some();
            if wrong_party || late {
                return;
            }
        } else if self.seen.contains(&call_id) {
            return;
        }
        if !self.early.contains_key(&call_id) && self.early.len() >= EARLY_CALLS {
            return;
        }
        let list = self
            .early
            .entry(call_id)
            .or_default()
            .entry(party)
            .or_default();
        for cand in c.candidates {
            if list.len() < EARLY_CANDIDATES {
                list.push(cand);
            }
        }
    }

    fn on_answer(&mut self, a: Answer, from: Origin, auth: &EventAuth) {
        let own = self.config.own.clone();
        let require = self.config.require_binding;
        let Some(call) = &mut self.call else { return };
        if call.call_id != a.common.call_id {
            return;
        }
        match (call.role, call.phase, from) {
            (Role::Callee, Phase::Ringing, Origin::OwnOtherDevice) => {
                self.end(EndReason::AnsweredElsewhere);
            }
            (Role::Caller, Phase::Inviting, Origin::Peer) => {
                let party = a.common.party_id.clone();
                call.peer_party = Some(party.clone());
                call.peer_identity = auth.sender_ed25519.map(|ed25519| PartyIdentity {
                    user_id: auth.sender.clone(),
                    device_id: party.as_str().to_owned(),
                    ed25519,
                });
                call.phase = Phase::Connecting;
                call.invite_expires = None;
                call.connect_deadline = Some(self.now + self.config.media_connect_timeout);
                call.remote_ready = true;
                let call_id = call.call_id.clone();
                self.out
                    .push_back(Output::Send(CallEvent::SelectAnswer(SelectAnswer {
                        common: CallCommon::v1(call_id.clone(), self.own_party.clone()),
                        selected_party_id: party.clone(),
                        extra: Map::new(),
                    })));
                let Some(call) = &mut self.call else { return };
                let failure = match (&a.direct, call.keys.take()) {
                    (Some(ext), Some(keys)) => {
                        call.peer_ext = Some(ext.clone());
                        match bind(call, Role::Caller, &keys, &own, &a.answer_sdp) {
                            Ok(b) => {
                                call.binding = Some(b);
                                None
                            }
                            Err(error) => Some(SecurityEvent::BindingFailed {
                                call_id: call_id.clone(),
                                error,
                            }),
                        }
                    }
                    _ if require => Some(SecurityEvent::BindingAbsent {
                        call_id: call_id.clone(),
                    }),
                    _ => None,
                };
                if let Some(ev) = failure {
                    self.hang_up(HangupReason::UnknownError, Some(ev));
                    return;
                }
                self.notify(Notification::RemoteAnswer {
                    sdp: a.answer_sdp,
                    sdp_stream_metadata: a.sdp_stream_metadata,
                });
                self.notify(Notification::Connecting);
                self.release_early(&call_id, &party);
            }
            _ => debug!("answer ignored (not the first, or not for us)"),
        }
    }

    fn on_reject(&mut self, common: &CallCommon, from: Origin) {
        let Some(call) = &self.call else { return };
        if call.call_id != common.call_id {
            return;
        }
        match (call.role, call.phase, from) {
            (Role::Callee, Phase::Ringing, Origin::OwnOtherDevice) => {
                self.end(EndReason::RejectedElsewhere);
            }
            (Role::Caller, Phase::Inviting, Origin::Peer) => {
                self.out
                    .push_back(Output::Send(CallEvent::SelectAnswer(SelectAnswer {
                        common: CallCommon::v1(call.call_id.clone(), self.own_party.clone()),
                        selected_party_id: common.party_id.clone(),
                        extra: Map::new(),
                    })));
                self.end(EndReason::RemoteReject);
            }
            _ => {}
        }
    }

    fn on_select_answer(&mut self, s: SelectAnswer, from: Origin) {
        let Some(call) = &mut self.call else { return };
        if call.call_id != s.common.call_id
            || call.role != Role::Callee
            || from != Origin::Peer
            || call.peer_party.as_ref() != Some(&s.common.party_id)
        {
            return;
        }
        if s.selected_party_id == self.own_party {
            call.selected = true;
        } else {
            // Another device of ours answered (or rejected): end without a word.
            self.end(EndReason::AnsweredElsewhere);
        }
    }

    fn on_hangup(&mut self, h: Hangup, from: Origin) {
        let Some(call) = &self.call else { return };
        if call.call_id != h.common.call_id || from != Origin::Peer {
            return;
        }
        let relevant = match call.phase {
            // Any of the callee's devices may refuse (e.g. `user_busy`) before an answer.
            Phase::Inviting => true,
            _ => call.peer_party.as_ref() == Some(&h.common.party_id),
        };
        if relevant {
            self.end(EndReason::RemoteHangup(h.reason));
        }
    }

    fn on_negotiate(&mut self, n: Negotiate) {
        if !self.is_from_selected_peer(&n.common) {
            debug!("negotiate ignored: not from the selected party");
            return;
        }
        let Some(call) = &mut self.call else { return };
        match n.sdp_type {
            SdpType::Offer if call.pending_offer && call.role == Role::Caller => {
                // Collision: the caller is impolite and keeps its own offer.
                return;
            }
            SdpType::Offer => call.pending_offer = false,
            SdpType::Answer if !call.pending_offer => return,
            SdpType::Answer => call.pending_offer = false,
        }
        if let Some(b) = &call.binding {
            let bound = match call.role {
                Role::Caller => b.fp_answer(),
                Role::Callee => b.fp_offer(),
            };
            if DtlsFingerprint::from_sdp(&n.sdp).ok() != Some(bound) {
                let ev = SecurityEvent::FingerprintChanged {
                    call_id: call.call_id.clone(),
                };
                self.hang_up(HangupReason::UnknownError, Some(ev));
                return;
            }
        }
        self.notify(Notification::RemoteRenegotiation {
            sdp_type: n.sdp_type,
            sdp: n.sdp,
            sdp_stream_metadata: n.sdp_stream_metadata,
        });
    }

    fn on_confirm(&mut self, c: Confirm) {
        if !self.is_from_selected_peer(&c.common) {
            return;
        }
        let Some(call) = &mut self.call else { return };
        if call.confirmed {
            return;
        }
        let Some(binding) = &call.binding else {
            // No binding was agreed (a standard peer): a confirmation means nothing.
            return;
        };
        if binding.verify_peer(&c.mac).is_ok() {
            call.confirmed = true;
            call.confirm_deadline = None;
            self.notify(Notification::KeyConfirmed);
        } else {
            let ev = SecurityEvent::KeyConfirmationWrong {
                call_id: call.call_id.clone(),
            };
            self.hang_up(HangupReason::UnknownError, Some(ev));
        }
    }

    // ---- helpers ---------------------------------------------------------------------------

    fn is_from_selected_peer(&self, common: &CallCommon) -> bool {
        self.call.as_ref().is_some_and(|c| {
            c.call_id == common.call_id
                && matches!(c.phase, Phase::Connecting | Phase::Connected)
                && c.peer_party.as_ref() == Some(&common.party_id)
        })
    }

    fn send_negotiate(
        &mut self,
        now: Instant,
        sdp_type: SdpType,
        desc: LocalDescription,
    ) -> Result<(), CallError> {
        self.now = now;
        let lifetime = self.config.invite_lifetime;
        let own_party = self.own_party.clone();
        let call = expect_phase(
            &mut self.call,
            "negotiate",
            &[Phase::Connecting, Phase::Connected],
        )?;
        if sdp_type == SdpType::Offer {
            call.pending_offer = true;
        }
        let ev = CallEvent::Negotiate(Negotiate {
            common: CallCommon::v1(call.call_id.clone(), own_party),
            sdp_type,
            sdp: desc.sdp,
            lifetime_ms: u64::try_from(lifetime.as_millis()).unwrap_or(u64::MAX),
            sdp_stream_metadata: desc.sdp_stream_metadata,
            extra: Map::new(),
        });
        self.out.push_back(Output::Send(ev));
        Ok(())
    }

    fn release_early(&mut self, call_id: &CallId, party: &PartyId) {
        if let Some(mut parties) = self.early.remove(call_id)
            && let Some(list) = parties.remove(party)
            && !list.is_empty()
        {
            self.notify(Notification::RemoteCandidates(list));
        }
    }

    fn notify(&mut self, n: Notification) {
        self.out.push_back(Output::Notify(n));
    }

    fn security(&mut self, e: SecurityEvent) {
        warn!("call security event: {e:?}");
        self.out.push_back(Output::Security(e));
    }

    fn remember(&mut self, call_id: &CallId) {
        if self.seen.insert(call_id.clone()) {
            self.seen_order.push_back(call_id.clone());
            if self.seen_order.len() > SEEN_CALLS
                && let Some(old) = self.seen_order.pop_front()
            {
                self.seen.remove(&old);
            }
        }
    }

    /// Remembers an invite we will not ring for, and drops candidates buffered for it.
    fn ignore_call(&mut self, call_id: &CallId) {
        self.remember(call_id);
        self.early.remove(call_id);
    }

    fn send_hangup_for(&mut self, call_id: &CallId, reason: HangupReason) {
        self.out.push_back(Output::Send(CallEvent::Hangup(Hangup {
            common: CallCommon::v1(call_id.clone(), self.own_party.clone()),
            reason,
            extra: Map::new(),
        })));
    }

    /// Sends `m.call.hangup` for the current call and ends it; with `security`, reports it
    /// and ends for that reason.
    fn hang_up(&mut self, reason: HangupReason, security: Option<SecurityEvent>) {
        let Some(call) = &self.call else { return };
        let call_id = call.call_id.clone();
        if call.phase != Phase::Preparing {
            self.send_hangup_for(&call_id, reason.clone());
        }
        match security {
            Some(e) => {
                self.security(e.clone());
                self.end(EndReason::Security(e));
            }
            None => self.end(EndReason::LocalHangup(reason)),
        }
    }

    /// Ends the current call: everything of it is dropped (keys zeroized on drop).
    fn end(&mut self, reason: EndReason) {
        if let Some(call) = self.call.take() {
            self.held.retain(
                |n| !matches!(n, Notification::Incoming { call_id, .. } if *call_id == call.call_id),
            );
            self.ignore_call(&call.call_id);
            self.notify(Notification::Ended {
                call_id: call.call_id,
                reason,
            });
        }
    }
}

/// Derives the binding for `call` as `role`: the offer is the one stored in `call`, the
/// answer is `answer_sdp` (ours for the callee, the selected one for the caller).
fn bind(
    call: &Active,
    role: Role,
    keys: &EphemeralKeyPair,
    own: &PartyIdentity,
    answer_sdp: &str,
) -> Result<CallBinding, BindingError> {
    let ext = call
        .peer_ext
        .as_ref()
        .ok_or(BindingError::MissingIdentityKey)?;
    let peer = call
        .peer_identity
        .as_ref()
        .ok_or(BindingError::MissingIdentityKey)?;
    let offer = call.offer_sdp.as_deref().unwrap_or_default();
    let fp_offer = DtlsFingerprint::from_sdp(offer)?;
    let fp_answer = DtlsFingerprint::from_sdp(answer_sdp)?;
    let (caller, callee) = match role {
        Role::Caller => (own, peer),
        Role::Callee => (peer, own),
    };
    let ctx = BindingContext {
        call_id: call.call_id.as_str(),
        caller,
        callee,
        fp_offer,
        fp_answer,
    };
    CallBinding::derive(role, keys, ext, &ctx)
}

/// The call, if it is in one of `phases`.
fn expect_phase<'a>(
    call: &'a mut Option<Active>,
    operation: &'static str,
    phases: &[Phase],
) -> Result<&'a mut Active, CallError> {
    let state = call.as_ref().map_or("idle", |c| phase_name(c.phase));
    match call {
        Some(c) if phases.contains(&c.phase) => Ok(c),
        _ => Err(CallError::WrongState { operation, state }),
    }
}

fn phase_name(p: Phase) -> &'static str {
    match p {
        Phase::Preparing => "preparing",
        Phase::Inviting => "inviting",
        Phase::Ringing => "ringing",
        Phase::Connecting => "connecting",
        Phase::Connected => "connected",
    }
}

mod batcher;
mod types;

#[cfg(test)]
mod tests;

//! The machine's settings, inputs and outputs.

use std::time::{Duration, Instant};

use super::{
    DEFAULT_INVITE_LIFETIME, DEFAULT_KEY_CONFIRMATION_TIMEOUT, ICE_DISCONNECTED_TIMEOUT,
    ICE_RESTART_DELAY, MEDIA_CONNECT_TIMEOUT,
};
use crate::binding::PartyIdentity;
use crate::error::BindingError;
use crate::signal::{CallEvent, CallId, Candidate, HangupReason, SdpStreamMetadata, SdpType};

/// The machine's settings.
#[derive(Debug, Clone)]
pub struct CallConfig {
    /// Us: user id, device id (our `party_id`), Ed25519 device key.
    pub own: PartyIdentity,
    /// The other person of the DM.
    pub peer_user: String,
    /// The `lifetime` of our invites.
    pub invite_lifetime: Duration,
    /// Refuse calls whose invite/answer lacks our binding extension (i.e. MatrixCall peers).
    /// Off by default so that standard clients can call; with the extension present on both
    /// sides the binding and its confirmation are always required.
    pub require_binding: bool,
    /// How long after media connected the peer's key confirmation may take.
    pub key_confirmation_timeout: Duration,
    /// Media must connect this long after the answer, else the call ends `ice_failed`.
    pub media_connect_timeout: Duration,
    /// After the path is lost, an ICE restart is asked for after this long.
    pub ice_restart_delay: Duration,
    /// After the path is lost, the call ends `ice_timeout` unless it is back within this.
    pub ice_disconnected_timeout: Duration,
}

impl CallConfig {
    /// Settings with the defaults above.
    pub fn new(own: PartyIdentity, peer_user: impl Into<String>) -> Self {
        Self {
            own,
            peer_user: peer_user.into(),
            invite_lifetime: DEFAULT_INVITE_LIFETIME,
            require_binding: false,
            key_confirmation_timeout: DEFAULT_KEY_CONFIRMATION_TIMEOUT,
            media_connect_timeout: MEDIA_CONNECT_TIMEOUT,
            ice_restart_delay: ICE_RESTART_DELAY,
            ice_disconnected_timeout: ICE_DISCONNECTED_TIMEOUT,
        }
    }
}

/// What the trust store says of the sending device.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DeviceTrust {
    /// Verified, or matches its pin (TOFU / key transparency).
    Trusted,
    /// Unknown, unverified, or its key changed: refused until the user overrides.
    Untrusted,
}

/// The authentication facts of a room event, as the Matrix client reports them.
#[derive(Debug, Clone)]
pub struct EventAuth {
    /// Whether the room has encryption enabled.
    pub room_encrypted: bool,
    /// Whether this event was decrypted (arrived as `m.room.encrypted`).
    pub decrypted: bool,
    /// The sender's user id.
    pub sender: String,
    /// The device that encrypted it (from the decryption), if known.
    pub sender_device: Option<String>,
    /// That device's Ed25519 key, if known (the binding names it).
    pub sender_ed25519: Option<[u8; 32]>,
    /// The trust store's verdict on that device.
    pub trust: DeviceTrust,
    /// `unsigned.age` when the event arrived.
    pub age: Option<Duration>,
}

/// The application's side of an SDP exchange.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LocalDescription {
    /// The SDP, with the candidates known so far.
    pub sdp: String,
    /// `sdp_stream_metadata`, keyed by our msid stream ids.
    pub sdp_stream_metadata: Option<SdpStreamMetadata>,
}

/// Where the call is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Phase {
    /// We decided to call; the offer is being made.
    Preparing,
    /// Our invite is out; no answer selected yet.
    Inviting,
    /// An invite for us rings.
    Ringing,
    /// Answer selected (or sent); media not connected yet.
    Connecting,
    /// Media connected.
    Connected,
}

/// What the driver must do.
#[derive(Debug)]
pub enum Output {
    /// Send this content into the room (encrypted) as `event.event_type()`.
    Send(CallEvent),
    /// Tell the application / media peer.
    Notify(Notification),
    /// Report a refused event or a failed binding (warn-level: a peer's fault or an attack).
    Security(SecurityEvent),
    /// Nothing more now; call [`CallMachine::handle_timeout`] at this instant.
    Timeout(Instant),
}

/// What the application learns.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Notification {
    /// A call for us: ring, or (`auto_answer`, after glare) answer at once with our media.
    Incoming {
        /// The call.
        call_id: CallId,
        /// Who calls.
        caller: String,
        /// Their offer, for the media peer.
        offer_sdp: String,
        /// Their stream metadata.
        sdp_stream_metadata: Option<SdpStreamMetadata>,
        /// Glare: our own call was replaced by this one; answer without asking.
        auto_answer: bool,
    },
    /// Our invite is out (the callee's devices ring).
    Ringing {
        /// The call.
        call_id: CallId,
    },
    /// The selected answer, for the media peer.
    RemoteAnswer {
        /// Its SDP.
        sdp: String,
        /// Its stream metadata.
        sdp_stream_metadata: Option<SdpStreamMetadata>,
    },
    /// ICE candidates of the selected peer, for the media peer (end-of-candidates included).
    RemoteCandidates(Vec<Candidate>),
    /// Signalling is done; media is connecting.
    Connecting,
    /// Media connected. With `key_confirmation_expected`, the peer must still prove the
    /// binding ([`Notification::KeyConfirmed`] follows, or the call ends).
    Connected {
        /// Whether a key confirmation is awaited.
        key_confirmation_expected: bool,
    },
    /// The peer proved it holds the call's binding key.
    KeyConfirmed,
    /// Media was lost: make an ICE-restart offer and pass it to [`CallMachine::renegotiate`].
    IceRestartNeeded,
    /// The peer renegotiates: apply this description; an offer must be answered with
    /// [`CallMachine::answer_renegotiation`].
    RemoteRenegotiation {
        /// Offer or answer.
        sdp_type: SdpType,
        /// The SDP.
        sdp: String,
        /// Its stream metadata.
        sdp_stream_metadata: Option<SdpStreamMetadata>,
    },
    /// The peer's stream metadata changed (mute state).
    RemoteStreamMetadata(SdpStreamMetadata),
    /// The call is over.
    Ended {
        /// The call.
        call_id: CallId,
        /// Why.
        reason: EndReason,
    },
}

/// Why a call ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum EndReason {
    /// We hung up with this reason (also timeouts and glare: `invite_timeout`, `ice_failed`,
    /// `ice_timeout`, `replaced`).
    LocalHangup(HangupReason),
    /// The peer hung up with this reason.
    RemoteHangup(HangupReason),
    /// We rejected the call.
    LocalReject,
    /// The callee rejected our call.
    RemoteReject,
    /// Another device of ours answered, or the caller selected another answer.
    AnsweredElsewhere,
    /// Another device of ours rejected the call.
    RejectedElsewhere,
    /// The invite's lifetime ran out while it rang.
    InviteExpired,
    /// Ended for a security reason (see the [`SecurityEvent`] reported with it).
    Security(SecurityEvent),
}

/// An event refused, or a binding that did not hold. Each names what was wrong.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum SecurityEvent {
    /// A call event in a room without encryption.
    UnencryptedRoom {
        /// The event type.
        event_type: String,
        /// Its sender.
        sender: String,
    },
    /// A call event that was not encrypted, in an encrypted room.
    PlaintextCallEvent {
        /// The event type.
        event_type: String,
        /// Its claimed sender.
        sender: String,
    },
    /// A call event from someone who is neither the peer nor us.
    UnexpectedSender {
        /// The sender.
        sender: String,
    },
    /// The decryption named no sending device.
    UnknownSenderDevice {
        /// The sender.
        sender: String,
    },
    /// The sending device is not trusted.
    UntrustedDevice {
        /// The sender.
        sender: String,
        /// The device.
        device: String,
    },
    /// `party_id` is not the device that sent the event.
    PartyIdMismatch {
        /// The sender.
        sender: String,
        /// The device that encrypted it.
        device: String,
        /// The `party_id` it claimed.
        party_id: String,
    },
    /// An invite for a call id seen before (replay or duplicate).
    ReplayedInvite {
        /// The call.
        call_id: CallId,
    },
    /// The peer did not offer the binding while it is required.
    BindingAbsent {
        /// The call.
        call_id: CallId,
    },
    /// The binding could not be derived.
    BindingFailed {
        /// The call.
        call_id: CallId,
        /// Why.
        error: BindingError,
    },
    /// A renegotiation changed the peer's bound DTLS fingerprint.
    FingerprintChanged {
        /// The call.
        call_id: CallId,
    },
    /// The peer's key confirmation did not arrive in time.
    KeyConfirmationMissing {
        /// The call.
        call_id: CallId,
    },
    /// The peer's key confirmation is wrong.
    KeyConfirmationWrong {
        /// The call.
        call_id: CallId,
    },
}

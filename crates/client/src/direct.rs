//! Person-to-person calls (docs/PROTOCOL.md §14) on the person's own matrix-sdk client: the
//! thin driver around `oracle-calls-direct`'s sans-IO [`CallMachine`] and media [`Peer`].
//!
//! ```no_run
//! # async fn run(client: matrix_sdk::Client) -> Result<(), oracle_calls_client::DirectError> {
//! use oracle_calls_client::{DirectCallEvent, DirectCalls, DirectConfig, PeopleTrust};
//! let trust = PeopleTrust::open("./state/pins.json");
//! let calls = DirectCalls::start(&client, trust, DirectConfig::default()).await?;
//! let bob = matrix_sdk::ruma::UserId::parse("@bob:example.org").expect("a user id");
//! let mut call = calls.place_call(&bob).await?;
//! call.send_audio(vec![0i16; 960])?; // 20 ms, 48 kHz mono, every 20 ms
//! while let Some(ev) = call.next_event().await {
//!     match ev {
//!         DirectCallEvent::Audio(pcm) => { /* play it */ let _ = pcm; }
//!         DirectCallEvent::Ended(reason) => { let _ = reason; break; }
//!         _ => {}
//!     }
//! }
//! call.hangup()?;
//! # Ok(()) }
//! ```
//!
//! What the driver does:
//! - **Intake.** One matrix-sdk event handler sees every room timeline event; call events
//!   (`m.call.*`, `org.oraclecalls.call.confirm`) go, in order, to the room's machine with
//!   an [`EventAuth`] built from matrix-sdk's `EncryptionInfo`: decrypted or not, the sending
//!   device (only when the decryption links it to the Megolm session: no forwarded keys, no
//!   missing device, no mismatched sender), its Ed25519 key, `unsigned.age`, whether the room
//!   is encrypted, and the trust verdict of [`PeopleTrust`]. A sync loop the driver runs
//!   marks the end of each sync batch, so an invite rings only after its whole batch was
//!   processed. Refused events come out as [`SecurityNotice`]s and never ring.
//! - **Trust of people's devices** (TOFU, like the oracle pins): a device that matrix-sdk
//!   reports verified is trusted; otherwise the pins in the trust file decide. With
//!   [`DirectConfig::key_transparency`], the person's verified directory record decides
//!   instead of the homeserver's device list (first contact pins what the record lists, and a
//!   pinned device must still be listed), and this device publishes itself there at start
//!   (`kt` module docs). On first contact
//!   with a person (the first call placed to them: all of their devices then; the first call
//!   event from them: that device) the devices are pinned; a device not pinned later (a new
//!   login, a changed key) is refused with a warning until [`DirectCalls::accept_device`]
//!   names exactly its Ed25519 key.
//! - **Sending.** Each output of the machine goes into the DM as a room event of its own type
//!   (`CallEvent::event_type`), encrypted by matrix-sdk (the DM is encrypted); pinned devices
//!   are marked locally verified so that a client that shares room keys only with trusted
//!   devices still reaches them.
//! - **Media.** One UDP socket per call on [`DirectConfig::host_address`] (a host candidate,
//!   unless relay-only), and with TURN on one allocation from that socket on the first TURN
//!   server of the homeserver's `/voip/turnServer` (credentials fetched per call): its relayed
//!   address is a relay candidate, str0m's transmits from it are wrapped for the server and
//!   what the server relays back is fed in as received on the relayed address; permissions
//!   are installed for every remote candidate's IP. One tokio task per DM room runs the
//!   machine and the call's media; hangup closes the socket and deletes the allocation.
//!
//! - **Glare** (both people call each other at once): the machine keeps the lesser
//!   `call_id`; on the side whose call lost, the driver hangs it up (`replaced`), answers the
//!   peer's call on the user's behalf and hands it to the same [`DirectCall`] handle
//!   ([`DirectCallEvent::Replaced`]), so the application's audio goes on into the survivor.
//! - **Busy**: one call at a time per client; an invite in another room while a call is in
//!   progress is refused with `m.call.hangup` `user_busy` and never rings.
//!
//! Not done yet: server-reflexive candidates, more than one host address.

mod hub;
mod kt;
mod media;
mod room;

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use matrix_sdk::Client;
use matrix_sdk::ruma::{OwnedRoomId, OwnedUserId, UserId};
use oracle_calls_direct::call::DEFAULT_INVITE_LIFETIME;
pub use oracle_calls_direct::call::EndReason;
pub use oracle_calls_direct::{CallId, SecurityEvent};
use tokio::sync::{Mutex, mpsc, oneshot};

use crate::kt::KtConfig;
use crate::trust::{PinnedDevice, TrustStore};

/// Which local candidates a call offers.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum IcePolicy {
    /// Host candidates and, with TURN on, relay candidates.
    #[default]
    All,
    /// Only relay candidates (TURN required): the other side never learns our address.
    RelayOnly,
}

/// Settings of [`DirectCalls`]. The defaults are safe.
#[derive(Debug, Clone)]
pub struct DirectConfig {
    /// Which local candidates to offer.
    pub ice_policy: IcePolicy,
    /// The `lifetime` of our invites (default 60 s).
    pub invite_lifetime: Duration,
    /// Refuse peers that do not offer the binding (i.e. standard clients). Default off.
    pub require_binding: bool,
    /// Use the homeserver's TURN server (default on; required for [`IcePolicy::RelayOnly`]).
    pub turn: bool,
    /// The address the call's socket binds to, announced as the host candidate
    /// (default 127.0.0.1).
    pub host_address: IpAddr,
    /// Join room invitations marked `is_direct` at once (default off: the application joins).
    pub auto_join_direct_invites: bool,
    /// How long [`DirectCalls::place_call`] waits for the other person to join a new DM.
    pub peer_join_timeout: Duration,
    /// Media must connect this long after the answer, else the call ends `ice_failed`
    /// (default 30 s).
    pub media_connect_timeout: Duration,
    /// After the path is lost (nothing from the other side for 2 s), an ICE restart is
    /// offered through `m.call.negotiate` after this long (default 0.5 s).
    pub ice_restart_delay: Duration,
    /// After the path is lost, the call ends `ice_timeout` unless it is back within this
    /// (default 30 s).
    pub ice_disconnected_timeout: Duration,
    /// The key-transparency directory people's devices are checked against (default none:
    /// trust on first use from the homeserver's device list). With one, [`DirectCalls::start`]
    /// publishes this device in the person's record, and a device of another person is
    /// trusted only while their verified record lists it (docs/PROTOCOL.md §14.7).
    pub key_transparency: Option<KtConfig>,
    /// Faults the integration tests inject; all off by default. Never set them in a product:
    /// each one breaks a call on purpose.
    #[doc(hidden)]
    pub dangerous_test_faults: DangerousTestFaults,
}

/// Faults a test injects into our side of a call, to prove the other side refuses it.
#[doc(hidden)]
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct DangerousTestFaults {
    /// Our answers carry a DTLS fingerprint that is not our certificate's.
    pub tamper_answer_fingerprint: bool,
    /// Our key confirmation is never sent.
    pub drop_key_confirmation: bool,
    /// Our key confirmation is sent with one bit flipped.
    pub wrong_key_confirmation: bool,
}

impl Default for DirectConfig {
    fn default() -> Self {
        Self {
            ice_policy: IcePolicy::All,
            invite_lifetime: DEFAULT_INVITE_LIFETIME,
            require_binding: false,
            turn: true,
            host_address: IpAddr::V4(Ipv4Addr::LOCALHOST),
            auto_join_direct_invites: false,
            peer_join_timeout: Duration::from_secs(30),
            media_connect_timeout: oracle_calls_direct::call::MEDIA_CONNECT_TIMEOUT,
            ice_restart_delay: oracle_calls_direct::call::ICE_RESTART_DELAY,
            ice_disconnected_timeout: oracle_calls_direct::call::ICE_DISCONNECTED_TIMEOUT,
            key_transparency: None,
            dangerous_test_faults: DangerousTestFaults::default(),
        }
    }
}

/// Why a direct-call operation failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum DirectError {
    /// The homeserver or matrix-sdk failed.
    #[error("Matrix: {0}")]
    Matrix(String),
    /// The trust file could not be read or written.
    #[error("trust store: {0}")]
    Trust(String),
    /// The other person did not join the DM in time.
    #[error("{0} did not join the direct-message room")]
    PeerAbsent(String),
    /// The DM room is not end-to-end encrypted.
    #[error("the direct-message room is not encrypted")]
    RoomNotEncrypted,
    /// Relay-only was asked for without a TURN server.
    #[error("relay-only calls need a TURN server, and the homeserver offers none: {0}")]
    NoTurn(String),
    /// A socket could not be opened.
    #[error("socket: {0}")]
    Io(#[from] std::io::Error),
    /// The media peer refused (e.g. the other side's offer has no audio).
    #[error(transparent)]
    Media(#[from] oracle_calls_direct::peer::PeerError),
    /// The call machine refused (busy, or the call is no longer ringing).
    #[error(transparent)]
    Call(#[from] oracle_calls_direct::CallError),
    /// The call is over (or the driver stopped).
    #[error("the call is over")]
    Closed,
    /// Caller misuse: an Ed25519 key that is not unpadded base64 of 32 bytes.
    #[error("not an Ed25519 key: {0}")]
    BadKey(String),
    /// Key transparency is configured and the directory cannot be asked, or refused to
    /// publish this device. Nothing was sent.
    #[error("key transparency: {0}")]
    KtUnavailable(String),
    /// Key transparency is configured and the directory's answer does not verify (a bad
    /// checkpoint signature or proof, a rollback, a fork, a malformed record). Nothing was
    /// sent.
    #[error("key transparency: the directory's answer does not verify ({0})")]
    KtUnverified(#[source] oracle_calls_kt::Error),
    /// Key transparency is configured and the person has no record, or a record with no
    /// device, in the directory: there is no device to trust. Nothing was sent.
    #[error("{0} lists no device in the key-transparency directory; refusing to call")]
    NotInDirectory(String),
}

pub(crate) fn matrix_err(e: impl std::fmt::Display) -> DirectError {
    DirectError::Matrix(e.to_string())
}

/// The pins of people's devices for direct calls, kept in the client's trust file
/// (`<store dir>/pins.json`, next to the oracles' pins).
#[derive(Debug, Clone)]
pub struct PeopleTrust(Arc<TrustStore>);

impl PeopleTrust {
    /// The trust file at `path` (created on the first pin, 0600).
    pub fn open(path: impl Into<PathBuf>) -> Self {
        Self(Arc::new(TrustStore::new(path.into())))
    }

    /// The devices of `user` pinned for direct calls.
    ///
    /// # Errors
    /// [`DirectError::Trust`] when the file cannot be read.
    pub fn pinned(&self, user: &UserId) -> Result<Vec<PinnedDevice>, DirectError> {
        self.0
            .person_devices(user.as_str())
            .map_err(|e| DirectError::Trust(e.to_string()))
    }

    pub(crate) fn store(&self) -> &TrustStore {
        &self.0
    }

    pub(crate) fn pin(&self, user: &UserId, devices: &[PinnedDevice]) -> Result<(), DirectError> {
        self.0
            .pin_person_devices(user.as_str(), devices)
            .map_err(|e| DirectError::Trust(e.to_string()))
    }
}

/// A call event that was refused, or a binding that failed, with where it happened.
#[derive(Debug, Clone)]
pub struct SecurityNotice {
    /// The room.
    pub room_id: OwnedRoomId,
    /// What was wrong.
    pub event: SecurityEvent,
    /// The sending device's Ed25519 key (unpadded base64) when the decryption named a device
    /// (what [`DirectCalls::accept_device`] takes after the person checked it).
    pub sender_ed25519: Option<String>,
}

/// What happens in a call.
#[derive(Debug, Clone, PartialEq)]
#[non_exhaustive]
pub enum DirectCallEvent {
    /// Our invite is out; the other person's devices ring.
    Ringing,
    /// ICE and DTLS are up.
    Connected {
        /// Our DTLS fingerprint (sha-256, hex).
        local_fingerprint: String,
        /// The other side's, from the certificate it presented.
        remote_fingerprint: String,
        /// Whether the binding's key confirmation is still awaited ([`Self::KeyConfirmed`]
        /// follows, or the call ends).
        key_confirmation_expected: bool,
    },
    /// The other side proved it holds the call's binding key.
    KeyConfirmed,
    /// 20 ms of the other person's audio, 48 kHz mono.
    Audio(Vec<i16>),
    /// The path was lost; the call tries to get it back (ICE restart).
    Reconnecting,
    /// The path is back after [`Self::Reconnecting`] (by itself or through an ICE restart).
    Reconnected,
    /// Glare: both people called each other at once, and the peer's call (the lesser
    /// `call_id`) replaced ours, which was hung up with reason `replaced`. The driver answers
    /// the surviving call on the user's behalf; this handle carries it from now on (same
    /// events, and the audio given to [`DirectCall::send_audio`] goes into it).
    Replaced {
        /// Our call, ended.
        replaced: CallId,
        /// The call this handle carries now.
        by: CallId,
    },
    /// The call is over.
    Ended(EndReason),
}

/// Counters of a call's media, for tests and diagnostics.
#[derive(Debug, Default)]
pub struct CallStats {
    relayed_datagrams: AtomicU64,
    direct_datagrams: AtomicU64,
    relayed_addr: std::sync::Mutex<Option<SocketAddr>>,
    local_addr: std::sync::Mutex<Option<SocketAddr>>,
}

impl CallStats {
    /// Datagrams str0m sent from the TURN relayed address (wrapped for the TURN server).
    pub fn relayed_datagrams(&self) -> u64 {
        self.relayed_datagrams.load(Ordering::Relaxed)
    }
    /// Datagrams str0m sent from the host socket directly.
    pub fn direct_datagrams(&self) -> u64 {
        self.direct_datagrams.load(Ordering::Relaxed)
    }
    /// The TURN relayed address, once allocated.
    pub fn relayed_addr(&self) -> Option<SocketAddr> {
        self.relayed_addr.lock().ok().and_then(|g| *g)
    }
    /// The call's local socket address.
    pub fn local_addr(&self) -> Option<SocketAddr> {
        self.local_addr.lock().ok().and_then(|g| *g)
    }
}

/// The direct-call service of one Matrix client: listens for calls in its encrypted DMs and
/// places calls. Runs the client's sync loop while it lives (the application must not run
/// another one).
#[derive(Debug)]
pub struct DirectCalls {
    hub: Arc<hub::Hub>,
    incoming: Mutex<mpsc::UnboundedReceiver<IncomingCall>>,
    security: Mutex<mpsc::UnboundedReceiver<SecurityNotice>>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

impl DirectCalls {
    /// Starts listening on `client` (logged in, with end-to-end encryption) and syncing. With
    /// key transparency, first makes sure this device is in the person's directory record
    /// (publishing it if not).
    ///
    /// # Errors
    /// [`DirectError::Matrix`] when the client has no session or device keys; with key
    /// transparency [`DirectError::KtUnavailable`] and [`DirectError::KtUnverified`].
    pub async fn start(
        client: &Client,
        trust: PeopleTrust,
        config: DirectConfig,
    ) -> Result<Self, DirectError> {
        let (hub, incoming, security, tasks) = hub::Hub::start(client, trust, config).await?;
        Ok(Self {
            hub,
            incoming: Mutex::new(incoming),
            security: Mutex::new(security),
            tasks,
        })
    }

    /// Calls `peer` in the encrypted DM with them (created, and waited for, if needed).
    ///
    /// # Errors
    /// [`DirectError::PeerAbsent`], [`DirectError::RoomNotEncrypted`],
    /// [`DirectError::NoTurn`], [`DirectError::Call`] (busy), [`DirectError::Matrix`]; with
    /// key transparency [`DirectError::NotInDirectory`], [`DirectError::KtUnavailable`],
    /// [`DirectError::KtUnverified`].
    pub async fn place_call(&self, peer: &UserId) -> Result<DirectCall, DirectError> {
        self.hub.place_call(peer).await
    }

    /// The next call for us, once its sync batch was processed; `None` once stopped.
    pub async fn next_incoming(&self) -> Option<IncomingCall> {
        self.incoming.lock().await.recv().await
    }

    /// The next refused call event; `None` once stopped.
    pub async fn next_security_notice(&self) -> Option<SecurityNotice> {
        self.security.lock().await.recv().await
    }

    /// The next refused call event if one is waiting (never waits).
    pub fn try_next_security_notice(&self) -> Option<SecurityNotice> {
        self.security.try_lock().ok()?.try_recv().ok()
    }

    /// Trusts `user`'s device `device_id` from now on, if its Ed25519 key is exactly
    /// `ed25519` (unpadded base64, as the person compared it out of band).
    ///
    /// # Errors
    /// [`DirectError::BadKey`], [`DirectError::Trust`].
    pub fn accept_device(
        &self,
        user: &UserId,
        device_id: &str,
        ed25519: &str,
    ) -> Result<(), DirectError> {
        self.hub.accept_device(user, device_id, ed25519)
    }

    /// With key transparency: the devices `user`'s verified directory record lists (`None`:
    /// no record), looked up now. An application shows them when the person decides on a
    /// device (this person's own record included).
    ///
    /// # Errors
    /// [`DirectError::KtUnavailable`] (also when key transparency is not configured),
    /// [`DirectError::KtUnverified`], [`DirectError::Trust`].
    pub async fn directory_devices(
        &self,
        user: &UserId,
    ) -> Result<Option<Vec<oracle_calls_kt::PersonDevice>>, DirectError> {
        self.hub.directory_devices(user).await
    }

    /// Waits until the call events queued so far (a hangup or reject just asked for
    /// included) were handed to the homeserver, at most `limit`; `true` if they were. An
    /// application that exits after a call calls this first, so that the other side hears
    /// the hangup.
    pub async fn flush(&self, limit: Duration) -> bool {
        tokio::time::timeout(limit, self.hub.flush()).await.is_ok()
    }

    /// Stops listening and syncing; calls in progress end without a word.
    pub fn stop(self) {
        for t in &self.tasks {
            t.abort();
        }
        self.hub.stop();
    }
}

impl Drop for DirectCalls {
    fn drop(&mut self) {
        for t in &self.tasks {
            t.abort();
        }
    }
}

/// A call for us that rings.
#[derive(Debug)]
pub struct IncomingCall {
    call_id: CallId,
    caller: OwnedUserId,
    room_id: OwnedRoomId,
    auto_answer: bool,
    hub: Arc<hub::Hub>,
    room: mpsc::UnboundedSender<room::RoomInput>,
    events: mpsc::UnboundedReceiver<DirectCallEvent>,
    stats: Arc<CallStats>,
}

impl IncomingCall {
    /// The call.
    pub fn call_id(&self) -> &CallId {
        &self.call_id
    }
    /// Who calls.
    pub fn caller(&self) -> &UserId {
        &self.caller
    }
    /// The DM room.
    pub fn room_id(&self) -> &OwnedRoomId {
        &self.room_id
    }
    /// Glare with no call of ours left to carry it (the driver answers glare itself through
    /// the replaced call's handle, see [`DirectCallEvent::Replaced`]): answer without asking.
    pub fn auto_answer(&self) -> bool {
        self.auto_answer
    }

    /// What happened while it rings: [`DirectCallEvent::Ended`] when it stops ringing
    /// (answered or rejected on another device of ours, the caller hung up, the invite's
    /// lifetime ran out). Waits until then; `None` once the driver stopped.
    pub async fn next_event(&mut self) -> Option<DirectCallEvent> {
        self.events.recv().await
    }

    /// Answers with our media.
    ///
    /// # Errors
    /// [`DirectError::Call`] when it no longer rings; [`DirectError::Media`] for an offer we
    /// cannot take; [`DirectError::NoTurn`], [`DirectError::Io`].
    pub async fn answer(self) -> Result<DirectCall, DirectError> {
        let turn = self.hub.turn_for_call(&self.caller).await?;
        let (reply, answered) = oneshot::channel();
        self.room
            .send(room::RoomInput::Answer {
                call_id: self.call_id.clone(),
                turn,
                reply,
            })
            .map_err(|_| DirectError::Closed)?;
        answered.await.map_err(|_| DirectError::Closed)??;
        Ok(DirectCall {
            call_id: self.call_id,
            room_id: self.room_id,
            peer: self.caller,
            room: self.room,
            events: self.events,
            stats: self.stats,
        })
    }

    /// Rejects the call (`m.call.reject`).
    ///
    /// # Errors
    /// [`DirectError::Closed`] when the driver stopped.
    pub fn reject(self) -> Result<(), DirectError> {
        self.room
            .send(room::RoomInput::Reject {
                call_id: self.call_id,
            })
            .map_err(|_| DirectError::Closed)
    }
}

/// A call in progress (placed, or answered).
#[derive(Debug)]
pub struct DirectCall {
    call_id: CallId,
    room_id: OwnedRoomId,
    peer: OwnedUserId,
    room: mpsc::UnboundedSender<room::RoomInput>,
    events: mpsc::UnboundedReceiver<DirectCallEvent>,
    stats: Arc<CallStats>,
}

impl DirectCall {
    /// The call.
    pub fn call_id(&self) -> &CallId {
        &self.call_id
    }
    /// The DM room.
    pub fn room_id(&self) -> &OwnedRoomId {
        &self.room_id
    }
    /// The other person.
    pub fn peer(&self) -> &UserId {
        &self.peer
    }
    /// The media counters.
    pub fn stats(&self) -> &CallStats {
        &self.stats
    }

    /// Sends 20 ms of our audio (960 samples, 48 kHz mono); call every 20 ms. Frames before
    /// the media is up are dropped.
    ///
    /// # Errors
    /// [`DirectError::Closed`] once the call is over.
    pub fn send_audio(&self, frame: Vec<i16>) -> Result<(), DirectError> {
        self.room
            .send(room::RoomInput::Audio {
                call_id: self.call_id.clone(),
                pcm: frame,
            })
            .map_err(|_| DirectError::Closed)
    }

    /// The next thing that happened; `None` after [`DirectCallEvent::Ended`]. After
    /// [`DirectCallEvent::Replaced`], [`Self::call_id`] names the new call.
    pub async fn next_event(&mut self) -> Option<DirectCallEvent> {
        let ev = self.events.recv().await;
        if let Some(DirectCallEvent::Replaced { by, .. }) = &ev {
            self.call_id = by.clone();
        }
        ev
    }

    /// What already happened, without waiting: for an audio loop on a plain thread (the
    /// command line's microphone loop). `None` when nothing is waiting, or after the end.
    pub fn try_next_event(&mut self) -> Option<DirectCallEvent> {
        self.events.try_recv().ok()
    }

    /// Hangs up (`m.call.hangup` `user_hangup`); the socket closes and the TURN allocation is
    /// deleted. [`DirectCallEvent::Ended`] follows.
    ///
    /// # Errors
    /// [`DirectError::Closed`] when the driver stopped.
    pub fn hangup(&self) -> Result<(), DirectError> {
        self.room
            .send(room::RoomInput::Hangup {
                call_id: self.call_id.clone(),
            })
            .map_err(|_| DirectError::Closed)
    }
}

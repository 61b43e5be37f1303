//! Event intake and routing: the matrix-sdk handler, the sync loop, the authentication facts
//! of each call event, people's device trust, and one task per DM room.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD_NO_PAD;
use matrix_sdk::config::SyncSettings;
use matrix_sdk::deserialized_responses::{EncryptionInfo, VerificationLevel, VerificationState};
use matrix_sdk::encryption::LocalTrust;
use matrix_sdk::event_handler::EventHandlerHandle;
use matrix_sdk::ruma::events::AnySyncTimelineEvent;
use matrix_sdk::ruma::events::room::member::{MembershipState, StrippedRoomMemberEvent};
use matrix_sdk::ruma::serde::Raw;
use matrix_sdk::ruma::{OwnedRoomId, OwnedUserId, UserId};
use matrix_sdk::{Client, Room, RoomMemberships, RoomState};
use oracle_calls_direct::call::DeviceTrust;
use oracle_calls_direct::turn::TurnServers;
use oracle_calls_direct::{CallEvent, EventAuth, PartyIdentity};
use serde_json::Value;
use tokio::sync::{mpsc, oneshot};
use tracing::{debug, info, warn};

use super::kt::{Decision, PeopleDirectory, decide, listed};
use super::room::{RoomInput, RoomTask};
use super::{
    DirectCall, DirectConfig, DirectError, IcePolicy, IncomingCall, PeopleTrust, SecurityNotice,
    matrix_err,
};
use crate::trust::PinnedDevice;

/// What the matrix-sdk handler and the sync loop hand to the intake task, in order.
enum Intake {
    Event {
        room: Room,
        raw: Raw<AnySyncTimelineEvent>,
        info: Option<Box<EncryptionInfo>>,
    },
    SyncDone,
}

/// Shared by [`super::DirectCalls`], the intake task and the room tasks.
pub(crate) struct Hub {
    pub(super) client: Client,
    pub(super) trust: PeopleTrust,
    pub(super) config: DirectConfig,
    pub(super) own: PartyIdentity,
    /// Set with key transparency.
    kt: Option<PeopleDirectory>,
    rooms: std::sync::Mutex<HashMap<OwnedRoomId, mpsc::UnboundedSender<RoomInput>>>,
    /// The rooms with a call in progress (placed, ringing or running).
    active: std::sync::Mutex<std::collections::HashSet<OwnedRoomId>>,
    pub(super) incoming: mpsc::UnboundedSender<IncomingCall>,
    pub(super) security: mpsc::UnboundedSender<SecurityNotice>,
    handlers: std::sync::Mutex<Vec<EventHandlerHandle>>,
}

impl std::fmt::Debug for Hub {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Hub")
            .field("user", &self.own.user_id)
            .field("device", &self.own.device_id)
            .finish_non_exhaustive()
    }
}

type Started = (
    Arc<Hub>,
    mpsc::UnboundedReceiver<IncomingCall>,
    mpsc::UnboundedReceiver<SecurityNotice>,
    Vec<tokio::task::JoinHandle<()>>,
);

impl Hub {
    pub(super) async fn start(
        client: &Client,
        trust: PeopleTrust,
        config: DirectConfig,
    ) -> Result<Started, DirectError> {
        let user = client
            .user_id()
            .ok_or_else(|| DirectError::Matrix("not logged in".into()))?
            .to_owned();
        let device = client
            .device_id()
            .ok_or_else(|| DirectError::Matrix("no device id".into()))?
            .to_owned();
        let ed = client
            .encryption()
            .ed25519_key()
            .await
            .ok_or_else(|| DirectError::Matrix("no device keys (encryption off?)".into()))?;
        let ed25519 = decode_ed25519(&ed)?;
        let kt = match &config.key_transparency {
            Some(cfg) => {
                let kt = PeopleDirectory::new(cfg)?;
                kt.publish_own(client, &trust, user.as_str(), device.as_str(), &ed)
                    .await?;
                Some(kt)
            }
            None => None,
        };
        let (incoming_tx, incoming_rx) = mpsc::unbounded_channel();
        let (security_tx, security_rx) = mpsc::unbounded_channel();
        let (intake_tx, intake_rx) = mpsc::unbounded_channel();
        let hub = Arc::new(Hub {
            client: client.clone(),
            trust,
            config,
            own: PartyIdentity {
                user_id: user.to_string(),
                device_id: device.to_string(),
                ed25519,
            },
            kt,
            rooms: std::sync::Mutex::new(HashMap::new()),
            active: std::sync::Mutex::new(std::collections::HashSet::new()),
            incoming: incoming_tx,
            security: security_tx,
            handlers: std::sync::Mutex::new(Vec::new()),
        });
        let mut handlers = Vec::new();
        let tx = intake_tx.clone();
        handlers.push(client.add_event_handler(
            move |raw: Raw<AnySyncTimelineEvent>, room: Room, info: Option<EncryptionInfo>| {
                let tx = tx.clone();
                async move {
                    let _ = tx.send(Intake::Event {
                        room,
                        raw,
                        info: info.map(Box::new),
                    });
                }
            },
        ));
        if hub.config.auto_join_direct_invites {
            let own = user.clone();
            handlers.push(client.add_event_handler(
                move |ev: StrippedRoomMemberEvent, room: Room| {
                    let own = own.clone();
                    async move {
                        if ev.state_key == own
                            && ev.content.membership == MembershipState::Invite
                            && ev.content.is_direct == Some(true)
                        {
                            tokio::spawn(async move {
                                if let Err(e) = room.join().await {
                                    warn!(room = %room.room_id(), error = %e, "joining a direct-message invitation failed");
                                }
                            });
                        }
                    }
                },
            ));
        }
        if let Ok(mut h) = hub.handlers.lock() {
            *h = handlers;
        }
        let intake = tokio::spawn(intake_loop(hub.clone(), intake_rx));
        let sync_client = client.clone();
        let sync = tokio::spawn(sync_loop(sync_client, intake_tx));
        Ok((hub, incoming_rx, security_rx, vec![intake, sync]))
    }

    pub(super) fn stop(&self) {
        if let Ok(mut h) = self.handlers.lock() {
            for handle in h.drain(..) {
                self.client.remove_event_handler(handle);
            }
        }
        if let Ok(mut rooms) = self.rooms.lock() {
            rooms.clear();
        }
    }

    pub(super) async fn place_call(
        self: &Arc<Self>,
        peer: &UserId,
    ) -> Result<DirectCall, DirectError> {
        // With key transparency, a person who lists no device is refused before anything is
        // sent (no DM is created).
        if self.kt.is_some() {
            self.listed_record(peer).await?;
        }
        let room = self.dm_room(peer).await?;
        self.pin_on_first_contact(peer).await?;
        self.share_with_pinned(peer).await?;
        let turn = self.turn_for_call(peer).await?;
        let tx = self.room_task(&room, peer.to_owned());
        let (reply, placed) = oneshot::channel();
        tx.send(RoomInput::Place { turn, reply })
            .map_err(|_| DirectError::Closed)?;
        let (call_id, events, stats) = placed.await.map_err(|_| DirectError::Closed)??;
        Ok(DirectCall {
            call_id,
            room_id: room.room_id().to_owned(),
            peer: peer.to_owned(),
            room: tx,
            events,
            stats,
        })
    }

    pub(super) fn accept_device(
        &self,
        user: &UserId,
        device_id: &str,
        ed25519: &str,
    ) -> Result<(), DirectError> {
        decode_ed25519(ed25519)?;
        warn!(%user, device = %device_id, "accepting a device of this person for direct calls as explicitly allowed");
        self.trust.pin(
            user,
            &[PinnedDevice {
                device_id: device_id.to_owned(),
                ed25519: ed25519.to_owned(),
            }],
        )
    }

    /// TURN credentials for a new call: `None` with TURN off or none offered (an error for
    /// relay-only, which cannot do without).
    pub(super) async fn turn_for_call(
        &self,
        peer: &UserId,
    ) -> Result<Option<TurnServers>, DirectError> {
        let relay_only = self.config.ice_policy == IcePolicy::RelayOnly;
        if !self.config.turn {
            return if relay_only {
                Err(DirectError::NoTurn("TURN is off in the settings".into()))
            } else {
                Ok(None)
            };
        }
        // Also marks the pinned devices of the peer for key sharing before an answer.
        self.share_with_pinned(peer).await?;
        match self.fetch_turn().await {
            Ok(Some(t)) => Ok(Some(t)),
            Ok(None) if relay_only => Err(DirectError::NoTurn("no TURN server configured".into())),
            Ok(None) => Ok(None),
            Err(e) if relay_only => Err(DirectError::NoTurn(e)),
            Err(e) => {
                warn!(error = %e, "no TURN credentials; the call goes without a relay");
                Ok(None)
            }
        }
    }

    async fn fetch_turn(&self) -> Result<Option<TurnServers>, String> {
        let token = self
            .client
            .access_token()
            .ok_or_else(|| "no access token".to_owned())?;
        let url = format!(
            "{}/_matrix/client/v3/voip/turnServer",
            self.client.homeserver().as_str().trim_end_matches('/')
        );
        let resp = reqwest::Client::new()
            .get(url)
            .bearer_auth(token)
            .send()
            .await
            .map_err(|e| e.to_string())?;
        if !resp.status().is_success() {
            return Err(format!("/voip/turnServer answered {}", resp.status()));
        }
        let body = resp.bytes().await.map_err(|e| e.to_string())?;
        TurnServers::parse(&body).map_err(|e| e.to_string())
    }

    /// The encrypted DM with `peer` (created if needed), once `peer` has joined it.
    async fn dm_room(&self, peer: &UserId) -> Result<Room, DirectError> {
        let c = &self.client;
        let room = match c
            .get_dm_rooms(peer)
            .find(|r| r.state() == RoomState::Joined && r.encryption_state().is_encrypted())
        {
            Some(r) => r,
            None => {
                let r = c.create_dm(peer).await.map_err(matrix_err)?;
                info!(room = %r.room_id(), %peer, "created an encrypted DM for a direct call");
                r
            }
        };
        let deadline = Instant::now() + self.config.peer_join_timeout;
        loop {
            let joined = matches!(
                room.get_member_no_sync(peer).await,
                Ok(Some(m)) if *m.membership() == MembershipState::Join
            );
            if joined {
                break;
            }
            if Instant::now() >= deadline {
                return Err(DirectError::PeerAbsent(peer.to_string()));
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        if !room.encryption_state().is_encrypted() {
            return Err(DirectError::RoomNotEncrypted);
        }
        Ok(room)
    }

    /// With key transparency: the devices `user`'s verified record lists (`None`: no record).
    pub(super) async fn directory_devices(
        &self,
        user: &UserId,
    ) -> Result<Option<Vec<oracle_calls_kt::PersonDevice>>, DirectError> {
        let kt = self.kt.as_ref().ok_or_else(|| {
            DirectError::KtUnavailable("no key-transparency directory is configured".into())
        })?;
        Ok(kt
            .record(&self.trust, user.as_str(), true)
            .await?
            .map(|v| v.record.devices))
    }

    /// With key transparency: `peer`'s verified record, which must list a device.
    async fn listed_record(
        &self,
        peer: &UserId,
    ) -> Result<oracle_calls_kt::VerifiedRecord<oracle_calls_kt::PersonRecord>, DirectError> {
        let kt = self.kt.as_ref().ok_or_else(|| {
            DirectError::KtUnavailable("no key-transparency directory is configured".into())
        })?;
        kt.record(&self.trust, peer.as_str(), false)
            .await?
            .filter(|v| !v.record.devices.is_empty())
            .ok_or_else(|| DirectError::NotInDirectory(peer.to_string()))
    }

    /// Trust on first use: the first call to a person pins all of their devices. With key
    /// transparency, the devices are those of the person's verified record (and a call to a
    /// person who lists none is refused), never the homeserver's list.
    async fn pin_on_first_contact(&self, peer: &UserId) -> Result<(), DirectError> {
        if self.kt.is_some() {
            let record = self.listed_record(peer).await?;
            if self.trust.pinned(peer)?.is_empty() {
                info!(%peer, devices = record.record.devices.len(), epoch = record.epoch, version = record.version, "pinned the devices of the person's verified key-transparency record on first contact");
                self.trust.pin(peer, &listed(&record.record))?;
            }
            return Ok(());
        }
        if !self.trust.pinned(peer)?.is_empty() {
            return Ok(());
        }
        let enc = self.client.encryption();
        let mut devices = enc.get_user_devices(peer).await.map_err(matrix_err)?;
        if devices.devices().next().is_none() {
            enc.request_user_identity(peer).await.map_err(matrix_err)?;
            devices = enc.get_user_devices(peer).await.map_err(matrix_err)?;
        }
        let pins: Vec<PinnedDevice> = devices
            .devices()
            .filter_map(|d| {
                Some(PinnedDevice {
                    device_id: d.device_id().to_string(),
                    ed25519: d.ed25519_key()?.to_base64(),
                })
            })
            .collect();
        if !pins.is_empty() {
            info!(%peer, devices = pins.len(), "pinned the person's devices on first contact");
            self.trust.pin(peer, &pins)?;
        }
        Ok(())
    }

    /// Marks the pinned devices of `peer` locally verified, so that a client sharing room
    /// keys only with trusted devices reaches them (and only them). With key transparency,
    /// only the pinned devices the person's verified record still lists.
    async fn share_with_pinned(&self, peer: &UserId) -> Result<(), DirectError> {
        let mut pins = self.trust.pinned(peer)?;
        if let Some(kt) = &self.kt {
            let record = kt.record(&self.trust, peer.as_str(), false).await?;
            pins.retain(|p| {
                record
                    .as_ref()
                    .is_some_and(|v| v.record.lists(&p.device_id, &p.ed25519))
            });
        }
        let devices = self
            .client
            .encryption()
            .get_user_devices(peer)
            .await
            .map_err(matrix_err)?;
        for d in devices.devices() {
            let pinned = pins.iter().any(|p| {
                p.device_id == d.device_id().as_str()
                    && d.ed25519_key().map(|k| k.to_base64()).as_deref() == Some(p.ed25519.as_str())
            });
            if pinned && !d.is_locally_trusted() {
                d.set_local_trust(LocalTrust::Verified)
                    .await
                    .map_err(matrix_err)?;
            }
        }
        Ok(())
    }

    /// The room's task, started if needed.
    pub(super) fn room_task(
        self: &Arc<Self>,
        room: &Room,
        peer: OwnedUserId,
    ) -> mpsc::UnboundedSender<RoomInput> {
        let mut rooms = match self.rooms.lock() {
            Ok(r) => r,
            Err(poisoned) => poisoned.into_inner(),
        };
        if let Some(tx) = rooms.get(room.room_id())
            && !tx.is_closed()
        {
            return tx.clone();
        }
        let (tx, rx) = mpsc::unbounded_channel();
        RoomTask::spawn(self.clone(), room.clone(), peer, tx.clone(), rx);
        rooms.insert(room.room_id().to_owned(), tx.clone());
        tx
    }

    /// Records whether `room` has a call in progress.
    pub(super) fn set_active(&self, room: &matrix_sdk::ruma::RoomId, active: bool) {
        let mut set = match self.active.lock() {
            Ok(s) => s,
            Err(poisoned) => poisoned.into_inner(),
        };
        if active {
            set.insert(room.to_owned());
        } else {
            set.remove(room);
        }
    }

    /// Whether a room other than `room` has a call in progress (one call at a time per
    /// client: a second one is refused as `user_busy`).
    pub(super) fn busy_elsewhere(&self, room: &matrix_sdk::ruma::RoomId) -> bool {
        let set = match self.active.lock() {
            Ok(s) => s,
            Err(poisoned) => poisoned.into_inner(),
        };
        set.iter().any(|r| r != room)
    }

    /// Resolves once every room's call events queued so far were handed to the homeserver
    /// (or given up on after their retries).
    pub(super) async fn flush(&self) {
        let mut waits = Vec::new();
        for tx in self.room_senders() {
            let (reply, done) = oneshot::channel();
            if tx.send(RoomInput::Flush { reply }).is_ok() {
                waits.push(done);
            }
        }
        for done in waits {
            let _ = done.await;
        }
    }

    fn room_senders(&self) -> Vec<mpsc::UnboundedSender<RoomInput>> {
        self.rooms
            .lock()
            .map(|r| r.values().cloned().collect())
            .unwrap_or_default()
    }

    /// The facts the machine checks, from matrix-sdk's decryption and the trust store.
    async fn event_auth(
        &self,
        room: &Room,
        raw: &Raw<AnySyncTimelineEvent>,
        info: Option<&EncryptionInfo>,
    ) -> EventAuth {
        let claimed_sender = raw
            .get_field::<String>("sender")
            .ok()
            .flatten()
            .unwrap_or_default();
        let age = raw
            .get_field::<Value>("unsigned")
            .ok()
            .flatten()
            .and_then(|u| u.get("age").and_then(Value::as_u64))
            .map(Duration::from_millis);
        let room_encrypted = room.encryption_state().is_encrypted();
        let Some(info) = info else {
            return EventAuth {
                room_encrypted,
                decrypted: false,
                sender: claimed_sender,
                sender_device: None,
                sender_ed25519: None,
                trust: DeviceTrust::Untrusted,
                age,
            };
        };
        let sender = info.sender.to_string();
        // The device is named only when the decryption links it to the Megolm session.
        let linked = info.forwarder.is_none()
            && !matches!(
                info.verification_state,
                VerificationState::Unverified(
                    VerificationLevel::None(_) | VerificationLevel::MismatchedSender
                )
            );
        let device_id = info.sender_device.as_ref().filter(|_| linked);
        let device = match device_id {
            Some(d) => self
                .client
                .encryption()
                .get_device(&info.sender, d)
                .await
                .ok()
                .flatten(),
            None => None,
        };
        let ed25519 = device.as_ref().and_then(|d| d.ed25519_key());
        let mut trust = DeviceTrust::Untrusted;
        if let (Some(d), Some(key)) = (device_id, &ed25519) {
            let own_echo = sender == self.own.user_id && d.as_str() == self.own.device_id;
            trust = if own_echo || info.verification_state == VerificationState::Verified {
                DeviceTrust::Trusted
            } else {
                self.person_trust(&info.sender, d.as_str(), &key.to_base64())
                    .await
            };
        }
        EventAuth {
            room_encrypted,
            decrypted: true,
            sender,
            sender_device: device_id.map(ToString::to_string),
            sender_ed25519: ed25519.map(|k| *k.as_bytes()),
            trust,
            age,
        }
    }

    /// TOFU for a device that is not verified: pinned on first contact with the person,
    /// trusted while it matches its pin, refused (with a warning) otherwise. With key
    /// transparency, the person's verified record decides ([`decide`]).
    async fn person_trust(&self, user: &UserId, device: &str, ed25519: &str) -> DeviceTrust {
        let pins = match self.trust.pinned(user) {
            Ok(p) => p,
            Err(e) => {
                warn!(error = %e, "the trust store cannot be read; the device is not trusted");
                return DeviceTrust::Untrusted;
            }
        };
        if let Some(kt) = &self.kt {
            let record = match kt.record(&self.trust, user.as_str(), false).await {
                Ok(r) => r,
                Err(e) => {
                    warn!(%user, %device, error = %e, "the person's key-transparency record cannot be verified; the device is not trusted");
                    return DeviceTrust::Untrusted;
                }
            };
            return match decide(&pins, record.as_ref().map(|v| &v.record), device, ed25519) {
                Decision::Trusted => DeviceTrust::Trusted,
                Decision::PinAll(all) => match self.trust.pin(user, &all) {
                    Ok(()) => {
                        info!(%user, %device, devices = all.len(), "pinned the devices of the person's verified key-transparency record on first contact");
                        DeviceTrust::Trusted
                    }
                    Err(e) => {
                        warn!(error = %e, "the trust store cannot be written; the device is not trusted");
                        DeviceTrust::Untrusted
                    }
                },
                Decision::Refused(why) => {
                    warn!(%user, %device, reason = why, "call events from this device are refused");
                    DeviceTrust::Untrusted
                }
            };
        }
        if pins.is_empty() {
            let pin = PinnedDevice {
                device_id: device.to_owned(),
                ed25519: ed25519.to_owned(),
            };
            return match self.trust.pin(user, &[pin]) {
                Ok(()) => {
                    info!(%user, %device, "pinned the person's device on first contact");
                    DeviceTrust::Trusted
                }
                Err(e) => {
                    warn!(error = %e, "the trust store cannot be written; the device is not trusted");
                    DeviceTrust::Untrusted
                }
            };
        }
        if pins
            .iter()
            .any(|p| p.device_id == device && p.ed25519 == ed25519)
        {
            return DeviceTrust::Trusted;
        }
        let changed = pins.iter().any(|p| p.device_id == device);
        warn!(%user, %device, key_changed = changed, "call events from a device of this person that the trust store does not know are refused until it is accepted");
        DeviceTrust::Untrusted
    }
}

/// Long-polls `/sync` and marks the end of each batch. Not matrix-sdk's own loop: that one
/// sleeps 1 s after every sync that returns within 1 s of the previous one, and call setup is
/// exactly such a burst (invite, answer, candidates, select_answer a few hundred ms apart), so
/// that second was most of a call's setup time (docs/BENCHMARKS.md). This loop polls again at
/// once; it waits only after an error (growing to 4 s) and, against a server that ignores the
/// long-poll timeout, 50 ms after an answer that took under 10 ms.
async fn sync_loop(client: Client, intake: mpsc::UnboundedSender<Intake>) {
    let settings = SyncSettings::default().timeout(Duration::from_secs(10));
    let mut failures = 0u32;
    loop {
        let asked = Instant::now();
        match client.sync_once(settings.clone()).await {
            Ok(_) => {
                failures = 0;
                if intake.send(Intake::SyncDone).is_err() {
                    return;
                }
                if asked.elapsed() < Duration::from_millis(10) {
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
            }
            Err(e) => {
                failures = failures.saturating_add(1);
                warn!(error = %e, failures, "a direct-call sync failed; retrying");
                tokio::time::sleep(Duration::from_millis(500) * failures.min(8)).await;
            }
        }
    }
}

/// The only task that reads the intake channel: call events go to their room's task in the
/// order matrix-sdk delivered them, and the end of each sync batch follows them.
async fn intake_loop(hub: Arc<Hub>, mut rx: mpsc::UnboundedReceiver<Intake>) {
    while let Some(item) = rx.recv().await {
        match item {
            Intake::SyncDone => {
                for tx in hub.room_senders() {
                    let _ = tx.send(RoomInput::SyncDone);
                }
            }
            Intake::Event { room, raw, info } => {
                let Ok(Some(event_type)) = raw.get_field::<String>("type") else {
                    continue;
                };
                if !CallEvent::is_call_event_type(&event_type) {
                    continue;
                }
                let Some(peer) = dm_peer(&room, &hub.client).await else {
                    debug!(room = %room.room_id(), "call event in a room that is not a 1:1 DM; ignored");
                    continue;
                };
                let content = raw
                    .get_field::<Value>("content")
                    .ok()
                    .flatten()
                    .unwrap_or(Value::Null);
                let auth = hub.event_auth(&room, &raw, info.as_deref()).await;
                let tx = hub.room_task(&room, peer);
                let _ = tx.send(RoomInput::Event {
                    event_type,
                    content,
                    auth,
                });
            }
        }
    }
}

/// The other person of a room with exactly two members (joined or invited).
async fn dm_peer(room: &Room, client: &Client) -> Option<OwnedUserId> {
    let own = client.user_id()?;
    let members = room
        .members(RoomMemberships::JOIN | RoomMemberships::INVITE)
        .await
        .ok()?;
    let mut others = members
        .iter()
        .map(|m| m.user_id().to_owned())
        .filter(|u| u != own);
    let peer = others.next()?;
    others.next().is_none().then_some(peer)
}

fn decode_ed25519(text: &str) -> Result<[u8; 32], DirectError> {
    STANDARD_NO_PAD
        .decode(text)
        .ok()
        .and_then(|b| <[u8; 32]>::try_from(b).ok())
        .ok_or_else(|| DirectError::BadKey(text.to_owned()))
}

//! [`OracleClient`]: a user's Matrix device plus the oracle-calls server API.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use matrix_sdk::authentication::matrix::MatrixSession;
use matrix_sdk::config::SyncSettings;
use matrix_sdk::encryption::LocalTrust;
use matrix_sdk::ruma::events::room::member::MembershipState;
use matrix_sdk::ruma::{OwnedTransactionId, UserId};
use matrix_sdk::{Client, Room};
use matrix_sdk_base::crypto::CollectStrategy;
use oracle_calls_crypto::frame::{KeyRing, KeyRingOptions};
use oracle_calls_crypto::{CallContext, CallKey, PrekeySigningPublicKey, VerifiedPrekey};
use oracle_calls_proto::{
    CALL_EVENT_TYPE, CallId, CallReason, CallStatus, CallType, Did, EventId, KeyDerivation,
    ListCallsQuery, ListCallsResponse, OraclesCallContent, OraclesCallEdit, RoomName, SessionId,
    Timestamp, UpdateRequest,
};
use oracle_calls_rtc::{E2eeOptions, RoomOptions};
use rand::RngExt as _;
use tokio::sync::Mutex;
use tracing::{info, warn};
use zeroize::Zeroizing;

use crate::call::{Call, Phase, Timeline};
use crate::kt::{KtApi, KtConfig};
use crate::trust::{KtVerified, OracleTrust, TrustOverride, TrustStore, Trusted};
use crate::{CallError, UserApi};

/// Matrix send attempts (one transaction id for all, so a retry never duplicates the event).
const SEND_ATTEMPTS: u32 = 5;

/// Where the client's state lives and which servers it talks to.
#[derive(Clone, Debug)]
pub struct ClientConfig {
    /// The Matrix homeserver.
    pub homeserver_url: String,
    /// The oracle's oracle-calls server (`https://`, or `http://` on loopback only).
    pub server_url: String,
    /// The oracle this client calls. The server's well-known must name exactly this DID, and
    /// the trust store keeps what the client verified about it.
    pub oracle_did: Did,
    /// The client's own state: Matrix store and session, the trust store (`pins.json`).
    pub store_dir: PathBuf,
    /// The user's DID. Default: from the ixo convention `@did-ixo-X:server` → `did:ixo:X`.
    pub user_did: Option<Did>,
    /// Accept exactly these changes of the oracle's key or bot device (after verifying them
    /// out of band); everything else that changed is still refused.
    pub trust_override: TrustOverride,
    /// How the media key is derived from the call key.
    pub key_derivation: KeyDerivation,
    /// How long to wait for the oracle's bot to join a new DM room.
    pub bot_join_timeout: Duration,
    /// The microphone's Opus encoder complexity (0..=10); `None` keeps libopus's default (9).
    /// Lower values save CPU on small devices (`oracle-lab bench opus`).
    pub opus_complexity: Option<u8>,
    /// Check the oracle's keys, bot and bot devices against this key-transparency directory
    /// (PROTOCOL §12) instead of trusting the server on first use. `None` (the default):
    /// trust on first use.
    pub key_transparency: Option<KtConfig>,
    /// Claim the call's LiveKit room and join it while the call event travels through Matrix
    /// (docs/PROTOCOL.md §6.9), so that the join is off the setup's critical path. Where the
    /// server does not offer it (or the claim fails), the client joins after the sync, as it
    /// does with this off. On by default.
    pub early_join: bool,
}

impl ClientConfig {
    /// Defaults for the given servers, state directory and the oracle to call.
    pub fn new(
        homeserver_url: impl Into<String>,
        server_url: impl Into<String>,
        store_dir: impl Into<PathBuf>,
        oracle_did: Did,
    ) -> Self {
        Self {
            homeserver_url: homeserver_url.into(),
            server_url: server_url.into(),
            oracle_did,
            store_dir: store_dir.into(),
            user_did: None,
            trust_override: TrustOverride::default(),
            key_derivation: KeyDerivation::Hkdf,
            bot_join_timeout: Duration::from_secs(15),
            opus_complexity: None,
            key_transparency: None,
            early_join: true,
        }
    }
}

/// How to authenticate to Matrix.
#[derive(Debug)]
pub enum Login {
    /// Log in with a password once; the session is saved in the store and restored later.
    Password {
        /// Localpart or full user id.
        user: String,
        /// The password (zeroized on drop).
        password: Zeroizing<String>,
    },
    /// Restore the session saved by an earlier password login.
    Restore,
}

pub(crate) struct Inner {
    pub(crate) cfg: ClientConfig,
    pub(crate) matrix: Client,
    pub(crate) api: UserApi,
    kt: Option<KtApi>,
    pub(crate) user_did: Did,
    trust: TrustStore,
    openid: Mutex<Option<(Zeroizing<String>, Instant)>>,
    /// Serializes Matrix syncs of this device.
    sync_lock: Mutex<()>,
}

/// A user's client: one Matrix device and the oracle's server. Cheap to clone.
#[derive(Clone)]
pub struct OracleClient(pub(crate) Arc<Inner>);

impl std::fmt::Debug for OracleClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("OracleClient")
            .field("user_did", &self.0.user_did)
            .field("server", &self.0.cfg.server_url)
            .finish_non_exhaustive()
    }
}

fn matrix_err(e: impl std::fmt::Display) -> CallError {
    CallError::Matrix(e.to_string())
}

impl OracleClient {
    /// Opens the Matrix device (restoring its session or logging in once) and syncs once.
    ///
    /// # Errors
    /// [`CallError::Setup`], [`CallError::Matrix`].
    pub async fn connect(cfg: ClientConfig, login: Login) -> Result<Self, CallError> {
        let api = UserApi::new(&cfg.server_url)?;
        let kt = cfg.key_transparency.as_ref().map(KtApi::new).transpose()?;
        let matrix = open_matrix_client(&cfg.homeserver_url, &cfg.store_dir, login).await?;
        let user_id = matrix
            .user_id()
            .ok_or_else(|| CallError::Matrix("no user id after login".into()))?
            .to_owned();
        let user_did = match &cfg.user_did {
            Some(d) => d.clone(),
            None => did_of(&user_id).ok_or_else(|| {
                CallError::Setup(format!(
                    "{user_id} does not follow @did-ixo-<id>:server; set the user DID explicitly"
                ))
            })?,
        };
        let trust = TrustStore::new(cfg.store_dir.join("pins.json"));
        info!(%user_id, %user_did, "client ready");
        Ok(Self(Arc::new(Inner {
            cfg,
            matrix,
            api,
            kt,
            user_did,
            trust,
            openid: Mutex::new(None),
            sync_lock: Mutex::new(()),
        })))
    }

    /// The Matrix client (the user's device).
    pub fn matrix(&self) -> &Client {
        &self.0.matrix
    }

    /// The user's DID.
    pub fn user_did(&self) -> &Did {
        &self.0.user_did
    }

    /// The oracle-calls server API.
    pub fn api(&self) -> &UserApi {
        &self.0.api
    }

    /// What the trust store holds for the oracle this client calls (`None` before the first
    /// call).
    ///
    /// # Errors
    /// [`CallError::Setup`] when the store cannot be read.
    pub fn oracle_trust(&self) -> Result<Option<OracleTrust>, CallError> {
        self.0.trust.get(&self.0.cfg.oracle_did)
    }

    /// A Matrix OpenID token for the oracle-calls server, reused until shortly before expiry.
    ///
    /// # Errors
    /// [`CallError::Matrix`].
    pub async fn openid_token(&self) -> Result<Zeroizing<String>, CallError> {
        let mut cached = self.0.openid.lock().await;
        if let Some((t, until)) = cached.as_ref()
            && Instant::now() < *until
        {
            return Ok(t.clone());
        }
        let r = self
            .0
            .matrix
            .account()
            .request_openid_token()
            .await
            .map_err(matrix_err)?;
        let token = Zeroizing::new(r.access_token);
        let life = r.expires_in.saturating_sub(Duration::from_secs(60));
        *cached = Some((token.clone(), Instant::now() + life));
        Ok(token)
    }

    /// This user's calls, newest first.
    ///
    /// # Errors
    /// [`CallError::Server`] and friends.
    pub async fn list_calls(&self, query: &ListCallsQuery) -> Result<ListCallsResponse, CallError> {
        let token = self.openid_token().await?;
        self.0.api.list(&token, query).await
    }

    /// Calls the oracle. See the crate docs for the steps.
    ///
    /// # Errors
    /// Every failure as a [`CallError`]; nothing is left joined or `active`.
    pub async fn call_oracle(&self, call_type: CallType) -> Result<Call, CallError> {
        self.call_oracle_in(call_type, None).await
    }

    /// As [`OracleClient::call_oracle`], in a given application session.
    ///
    /// # Errors
    /// As [`OracleClient::call_oracle`].
    pub async fn call_oracle_in(
        &self,
        call_type: CallType,
        session: Option<SessionId>,
    ) -> Result<Call, CallError> {
        let mut tl = Timeline::start();
        // 1. Resolve the oracle the caller chose: the server's description must match what
        //    the trust store verified (key, bot, bot devices), or is pinned on first use.
        //    With key transparency, the directory's verified record decides and the server
        //    must agree with it.
        let wk = self.0.api.well_known().await?;
        let oracle_did = self.0.cfg.oracle_did.clone();
        let trusted = match (&self.0.kt, &self.0.cfg.key_transparency) {
            (Some(api), Some(cfg)) => self.resolve_verified(api, cfg, &wk).await?,
            _ => self
                .0
                .trust
                .check(&oracle_did, &wk, &self.0.cfg.trust_override)?,
        };
        let bot = UserId::parse(trusted.bot.as_str())
            .map_err(|e| CallError::Setup(format!("the oracle's matrixUserId: {e}")))?;
        tl.mark(Phase::Resolve);

        // 2-3. A fresh call key, wrapped to the oracle and bound to this call. The room name
        //      carries 128 random bits (docs/PROTOCOL.md §1).
        let room_name = RoomName::from_random(random16());
        let session_id = match session {
            Some(s) => s,
            None => SessionId::parse(&format!("sess-{}", hex(&random16())))
                .map_err(|e| CallError::Crypto(e.to_string()))?,
        };
        let ctx = CallContext::new(
            session_id.clone(),
            room_name.clone(),
            self.0.user_did.clone(),
            oracle_did.clone(),
            call_type,
        );
        // With forward secrecy, the key is sealed to a one-time prekey the oracle signed
        // (docs/PROTOCOL.md §13), inside the envelope to its long-term key.
        let prekey = match &trusted.prekey_signer {
            Some(signer) => Some(self.claim_prekey(signer, &oracle_did).await?),
            None => None,
        };
        let (call_key, envelope) = {
            let mut rng = rand::rng();
            let key = CallKey::generate(&mut rng);
            let env = match &prekey {
                Some(p) => {
                    oracle_calls_crypto::seal_with_prekey(&trusted.public, p, &key, &ctx, &mut rng)
                }
                None => oracle_calls_crypto::seal(&trusted.public, &key, &ctx, &mut rng),
            }
            .map_err(|e| CallError::Crypto(e.to_string()))?;
            (key, env)
        };
        let key_ring = |call_key: &CallKey| {
            KeyRing::with_call_key(
                call_key,
                self.0.cfg.key_derivation,
                KeyRingOptions::default(),
            )
            .map_err(|e| CallError::Crypto(e.to_string()))
        };
        // A full reconnect (the LiveKit node hosting the call died) joins again with a fresh
        // token from a repeated sync: the server answers it for the call's own user while the
        // call is neither ended nor too old, and hands out its current LiveKit URL. Until the
        // call id is known (an early join still waiting for its event to be sent) there is none.
        let placed: Arc<std::sync::OnceLock<CallId>> = Arc::default();
        let token_source = {
            let client = self.clone();
            let placed = placed.clone();
            oracle_calls_rtc::TokenSource::new(move || {
                let (client, placed) = (client.clone(), placed.clone());
                async move {
                    let call_id = placed.get().cloned().ok_or_else(|| {
                        oracle_calls_rtc::TokenError::Unavailable(
                            "the call is not placed yet".into(),
                        )
                    })?;
                    let openid = client.openid_token().await.map_err(rejoin_token_error)?;
                    let synced = client
                        .0
                        .api
                        .sync(&call_id, &openid)
                        .await
                        .map_err(rejoin_token_error)?;
                    info!(%call_id, "fresh LiveKit token for a full reconnect");
                    Ok(oracle_calls_rtc::FreshToken {
                        url: synced.livekit_url,
                        token: Zeroizing::new(synced.token),
                    })
                }
            })
        };
        let opts = |key_ring: KeyRing| RoomOptions {
            e2ee: Some(E2eeOptions { key_ring }),
            opus_complexity: self.0.cfg.opus_complexity,
            token_source: Some(token_source.clone()),
            ..Default::default()
        };
        tl.mark(Phase::Wrap);

        // 4-6 with the early join (docs/PROTOCOL.md §6.9): the room is claimed and joined,
        // media already end to end encrypted, while the event goes out and is synced.
        let early = async {
            if !self.0.cfg.early_join {
                return None;
            }
            let claimed = async {
                let openid = self.openid_token().await?;
                self.0.api.claim_room(&room_name, &openid).await
            }
            .await;
            let claim = match claimed {
                Ok(c) => c,
                Err(e) => {
                    info!(error = %e, "no early join; joining after the sync");
                    return None;
                }
            };
            let ring = match key_ring(&call_key) {
                Ok(r) => r,
                Err(e) => return Some(Err(e)),
            };
            // When the server sweeps the claim (with its room) if no sync took it.
            let lapses = Instant::now()
                + Duration::from_millis(
                    u64::try_from(
                        claim
                            .claim_expires_at
                            .unix_millis()
                            .saturating_sub(now().unix_millis()),
                    )
                    .unwrap_or(0),
                );
            match join_media(&claim.livekit_url, &claim.token, opts(ring), call_type).await {
                Ok(joined) => Some(Ok((joined, Instant::now(), lapses))),
                Err(e) => {
                    warn!(error = %e, "the early join failed; joining after the sync");
                    None
                }
            }
        };
        let placing = async {
            // 4. The encrypted DM with the bot, the bot joined, then the event.
            let room = self.dm_room(&bot).await?;
            self.trust_bot_devices(&bot, &trusted.devices).await?;
            let room_at = Instant::now();
            let content = OraclesCallContent {
                call_id: None,
                call_type,
                call_status: CallStatus::Pending,
                call_started_at: now(),
                call_ended_at: None,
                encryption_key: envelope,
                session_id,
                room_id: room_name.clone(),
                user_did: self.0.user_did.clone(),
                oracle_did,
                key_derivation: self.0.cfg.key_derivation,
            };
            let body =
                serde_json::to_value(&content).map_err(|e| CallError::Setup(e.to_string()))?;
            let event_id = send_with_retry(&room, &body, new_txn()).await?;
            // 5. The call id.
            let event_id =
                EventId::parse(&event_id).map_err(|e| CallError::Matrix(e.to_string()))?;
            let call_id = content.call_id_for(event_id);
            let _ = placed.set(call_id.clone());
            let sent_at = Instant::now();
            info!(%call_id, key_id = %trusted.key.key_id,
                  prekey = %prekey.as_ref().map_or_else(|| "none".to_owned(), |p| p.id().to_string()),
                  last_resort = prekey.as_ref().is_some_and(|p| p.last_resort()),
                  "call event sent");

            // 6. The server validates, activates (adopting the claimed room) and answers with
            //    a token.
            let synced = async {
                let token = self.openid_token().await?;
                self.0.api.sync(&call_id, &token).await
            }
            .await;
            match synced {
                Ok(s) => Ok((room, content, call_id, [room_at, sent_at], s)),
                Err(e) => {
                    warn!(%call_id, error = %e, "sync failed; marking the call ended in Matrix");
                    let _ = edit_status(&room, &call_id, &content, CallStatus::Ended).await;
                    Err(e)
                }
            }
        };
        let (early, placed_call) = tokio::join!(early, placing);
        let early = match early {
            // A sync that came (nearly) after the claim lapsed may find the room swept: the
            // room joined early is left, and the call joins with the sync's token.
            Some(Ok((joined, _, lapses)))
                if placed_call.is_ok() && Instant::now() + CLAIM_MARGIN >= lapses =>
            {
                info!("the claim of the room joined early lapsed before the sync; joining again");
                joined.0.leave().await;
                None
            }
            Some(Ok((joined, at, _))) => {
                tl.joined_early(at);
                Some(joined)
            }
            Some(Err(e)) => {
                if let Ok((room, content, call_id, ..)) = &placed_call {
                    self.report_end(call_id, CallReason::MediaFailed).await;
                    let _ = edit_status(room, call_id, content, CallStatus::Ended).await;
                }
                return Err(e);
            }
            None => None,
        };
        let (room, content, call_id, [room_at, sent_at], synced) = match placed_call {
            Ok(p) => p,
            Err(e) => {
                if let Some((lk_room, ..)) = early {
                    lk_room.leave().await;
                }
                return Err(e);
            }
        };
        tl.mark_at(Phase::Room, room_at);
        tl.mark_at(Phase::Send, sent_at);
        tl.mark(Phase::Sync);

        // 7. Media, end to end encrypted with the call key: joined already, or now.
        let joined = match early {
            Some(joined) => Ok(joined),
            None => match key_ring(&call_key) {
                Ok(ring) => {
                    join_media(&synced.livekit_url, &synced.token, opts(ring), call_type).await
                }
                Err(e) => {
                    self.report_end(&call_id, CallReason::MediaFailed).await;
                    let _ = edit_status(&room, &call_id, &content, CallStatus::Ended).await;
                    return Err(e);
                }
            },
        };
        drop(call_key);
        let (lk_room, events, mic, camera) = match joined {
            Ok(x) => x,
            Err(e) => {
                if let Some(reason) = self.ended_at_server(&call_id, &content.session_id).await {
                    warn!(%call_id, ?reason, "the call was ended before the media connected");
                    return Err(CallError::CallEnded { reason });
                }
                warn!(%call_id, error = %e, "joining LiveKit failed; ending the call");
                self.report_end(&call_id, CallReason::MediaFailed).await;
                let _ = edit_status(&room, &call_id, &content, CallStatus::Ended).await;
                return Err(CallError::Media(e));
            }
        };
        tl.mark(Phase::Join);
        Ok(Call::new(
            self.clone(),
            call_id,
            content,
            room,
            lk_room,
            events,
            mic,
            camera,
            tl,
        ))
    }

    /// Step 1 with key transparency: the oracle's record from the directory, verified against
    /// a checkpoint signed by the configured key and not older than (nor a fork of) the one
    /// stored for that directory; its key history when it is not the record pinned before;
    /// then the server's well-known must agree with it, and the trust store decides on the
    /// record. The newest verified checkpoint is stored whatever the outcome.
    async fn resolve_verified(
        &self,
        api: &KtApi,
        cfg: &KtConfig,
        wk: &oracle_calls_proto::WellKnown,
    ) -> Result<Trusted, CallError> {
        let oracle = &self.0.cfg.oracle_did;
        if wk.oracle_did != *oracle {
            return Err(CallError::WrongOracle {
                expected: oracle.to_string(),
                served: wk.oracle_did.to_string(),
            });
        }
        let trust = &self.0.trust;
        let directory = cfg.directory_key.clone();
        let mut verifier = match trust.kt_checkpoint(directory.key_id())? {
            Some(stored) => oracle_calls_kt::Verifier::resume(directory, stored)
                .map_err(CallError::KeyTransparency)?,
            None => oracle_calls_kt::Verifier::new(directory),
        };
        let lookup = api.lookup(oracle).await?;
        let verified = verifier
            .verify_lookup(&lookup.checkpoint, oracle, &lookup.proof)
            .map_err(CallError::KeyTransparency)?;
        if let Some(latest) = verifier.latest() {
            trust.store_kt_checkpoint(latest)?;
        }
        let known = trust.get(oracle)?;
        let change_epoch = match known.as_ref() {
            Some(pinned) if crate::kt::changed_since_pinned(Some(pinned), &verified) => {
                let history = api.history(oracle).await?;
                let history = verifier
                    .verify_history(&history.checkpoint, oracle, &history.proof)
                    .map_err(CallError::KeyTransparency)?;
                if let Some(latest) = verifier.latest() {
                    trust.store_kt_checkpoint(latest)?;
                }
                match (&pinned.kt_record, pinned.kt_version) {
                    (Some(record), Some(version)) => {
                        crate::kt::change_epoch(&history, record, version)?
                    }
                    _ => None,
                }
            }
            _ => None,
        }
        // Pinned without key transparency (or no later version): the change is at latest in
        // the epoch of the record now served.
        .or(Some(verified.epoch));
        let view = crate::kt::agree(oracle, wk, &verified.record)?;
        info!(%oracle, epoch = verified.epoch, version = verified.version, "the oracle's record verified against the key-transparency directory");
        trust.check_verified(
            oracle,
            &view,
            &self.0.cfg.trust_override,
            Some(KtVerified {
                record: &verified,
                change_epoch,
            }),
        )
    }

    /// Tells the server the call ended (best effort; the Matrix edit is the record).
    pub(crate) async fn report_end(
        &self,
        call_id: &CallId,
        reason: CallReason,
    ) -> Option<CallError> {
        let req = UpdateRequest {
            call_status: Some(CallStatus::Ended),
            reason: Some(reason),
        };
        let r = async {
            let token = self.openid_token().await?;
            self.0.api.update(call_id, &token, &req).await
        }
        .await;
        r.err()
    }

    /// Claims one of the oracle's prekeys and checks that its prekey signing key signed it
    /// for this oracle.
    async fn claim_prekey(
        &self,
        signer: &PrekeySigningPublicKey,
        oracle: &Did,
    ) -> Result<VerifiedPrekey, CallError> {
        let token = self.openid_token().await?;
        let signed = self.0.api.claim_prekey(&token).await.map_err(|e| match e {
            CallError::Server { status, message } if status == 404 || status == 409 => {
                CallError::PrekeyUnavailable(format!("server answered {status}: {message}"))
            }
            other => other,
        })?;
        let prekey = oracle_calls_crypto::verify_prekey(&signed, signer, oracle)
            .map_err(|e| CallError::PrekeyInvalid(format!("prekey {}: {e}", signed.prekey_id)))?;
        if prekey.last_resort() {
            warn!(prekey = %prekey.id(), "the oracle has no one-time prekey left; sealing to its last-resort prekey (forward secrecy only from its rotation on)");
        }
        Ok(prekey)
    }

    /// Makes sure the call event's room key reaches the pinned bot devices and no other:
    /// each pinned device must be on the homeserver with the pinned Ed25519 key and is marked
    /// verified; every other device of the bot account (one a compromised homeserver added)
    /// is blacklisted. With the `OnlyTrustedDevices` strategy only verified devices get keys.
    /// A room key shared while the bot's devices are still unknown would reach nobody, so
    /// the device list is fetched first when needed.
    async fn trust_bot_devices(
        &self,
        bot: &UserId,
        pinned: &[oracle_calls_proto::BotDevice],
    ) -> Result<(), CallError> {
        let enc = self.0.matrix.encryption();
        let is_pinned = |d: &matrix_sdk::encryption::identities::Device| {
            pinned.iter().any(|p| {
                p.device_id == d.device_id().as_str()
                    && d.ed25519_key().map(|k| k.to_base64()).as_deref() == Some(&p.ed25519)
            })
        };
        let mut devices = enc.get_user_devices(bot).await.map_err(matrix_err)?;
        if !devices.devices().any(|d| is_pinned(&d)) {
            enc.request_user_identity(bot).await.map_err(matrix_err)?;
            devices = enc.get_user_devices(bot).await.map_err(matrix_err)?;
        }
        let mut trusted = 0usize;
        for d in devices.devices() {
            if is_pinned(&d) {
                trusted += 1;
                if !d.is_locally_trusted() {
                    d.set_local_trust(LocalTrust::Verified)
                        .await
                        .map_err(matrix_err)?;
                }
            } else if d.local_trust_state() != LocalTrust::BlackListed {
                warn!(%bot, device = %d.device_id(), "the oracle's bot has a device the trust store does not list; it gets no call keys");
                d.set_local_trust(LocalTrust::BlackListed)
                    .await
                    .map_err(matrix_err)?;
            }
        }
        if trusted == 0 {
            return Err(CallError::BotDeviceUnknown(format!(
                "{bot} has none of its pinned devices ({}) on the homeserver",
                pinned
                    .iter()
                    .map(|p| p.device_id.as_str())
                    .collect::<Vec<_>>()
                    .join(", ")
            )));
        }
        Ok(())
    }

    /// `Some(reason)` when the server lists the call as ended.
    async fn ended_at_server(
        &self,
        call_id: &CallId,
        session: &SessionId,
    ) -> Option<Option<CallReason>> {
        let q = ListCallsQuery {
            cursor: None,
            limit: Some(50),
            status: Some(CallStatus::Ended),
            session_id: Some(session.clone()),
        };
        let page = self.list_calls(&q).await.ok()?;
        page.calls
            .into_iter()
            .find(|c| c.call_id == *call_id)
            .map(|c| c.reason)
    }

    /// The encrypted DM with `bot`, created if needed, once the bot has joined it.
    async fn dm_room(&self, bot: &UserId) -> Result<Room, CallError> {
        let _guard = self.0.sync_lock.lock().await;
        let m = &self.0.matrix;
        if let Some(room) = m.get_dm_room(bot)
            && room.state() == matrix_sdk::RoomState::Joined
            && room.encryption_state().is_encrypted()
            && is_joined(&room, bot).await
        {
            return Ok(room);
        }
        let room = m.create_dm(bot).await.map_err(matrix_err)?;
        info!(room = %room.room_id(), %bot, "created an encrypted DM with the oracle's bot");
        let deadline = Instant::now() + self.0.cfg.bot_join_timeout;
        while Instant::now() < deadline {
            m.sync_once(SyncSettings::default().timeout(Duration::from_millis(500)))
                .await
                .map_err(matrix_err)?;
            if is_joined(&room, bot).await {
                if !room.encryption_state().is_encrypted() {
                    return Err(CallError::Matrix("the new DM room is not encrypted".into()));
                }
                return Ok(room);
            }
        }
        Err(CallError::BotAbsent(bot.to_string()))
    }
}

async fn is_joined(room: &Room, user: &UserId) -> bool {
    matches!(
        room.get_member_no_sync(user).await,
        Ok(Some(m)) if *m.membership() == MembershipState::Join
    )
}

/// Joins a call's LiveKit room and publishes the microphone (and, for a video call, the
/// camera: VP8 the caller encodes, 320x240); leaves again when publishing fails.
async fn join_media(
    url: &str,
    token: &str,
    opts: RoomOptions,
    call_type: CallType,
) -> Result<
    (
        oracle_calls_rtc::Room,
        tokio::sync::mpsc::Receiver<oracle_calls_rtc::RoomEvent>,
        oracle_calls_rtc::AudioSource,
        Option<oracle_calls_rtc::VideoSource>,
    ),
    oracle_calls_rtc::Error,
> {
    let (lk_room, events) = oracle_calls_rtc::Room::connect(url, token, opts).await?;
    let published = async {
        let mic = lk_room.publish_audio("microphone").await?;
        let camera = if call_type == CallType::Video {
            Some(lk_room.publish_video("camera", 320, 240).await?)
        } else {
            None
        };
        Ok::<_, oracle_calls_rtc::Error>((mic, camera))
    }
    .await;
    match published {
        Ok((mic, camera)) => Ok((lk_room, events, mic, camera)),
        Err(e) => {
            lk_room.leave().await;
            Err(e)
        }
    }
}

/// Sends `body` as the call event, retrying with backoff under one transaction id.
pub(crate) async fn send_with_retry(
    room: &Room,
    body: &serde_json::Value,
    txn: OwnedTransactionId,
) -> Result<String, CallError> {
    let mut delay = Duration::from_millis(200);
    let mut last = String::new();
    for attempt in 1..=SEND_ATTEMPTS {
        match room
            .send_raw(CALL_EVENT_TYPE, body)
            .with_transaction_id(&txn)
            .await
        {
            Ok(r) => return Ok(r.response.event_id.to_string()),
            Err(e) => {
                last = e.to_string();
                if attempt < SEND_ATTEMPTS {
                    warn!(attempt, error = %e, "sending the call event failed; retrying with the same transaction id");
                    tokio::time::sleep(delay).await;
                    delay = (delay * 2).min(Duration::from_secs(3));
                }
            }
        }
    }
    Err(CallError::Matrix(format!(
        "sending the call event failed {SEND_ATTEMPTS} times: {last}"
    )))
}

/// Edits the call event to `status` (an `m.replace`), retried under one transaction id.
pub(crate) async fn edit_status(
    room: &Room,
    call_id: &CallId,
    content: &OraclesCallContent,
    status: CallStatus,
) -> Result<(), CallError> {
    let mut next = content.clone();
    next.call_id = Some(call_id.clone());
    next.call_status = status;
    if status == CallStatus::Ended {
        next.call_ended_at = Some(now());
    }
    let edit = OraclesCallEdit::new(call_id.event_id().clone(), next);
    let body = serde_json::to_value(&edit).map_err(|e| CallError::Setup(e.to_string()))?;
    send_with_retry(room, &body, new_txn()).await.map(drop)
}

/// How long before its claim lapses a room joined early is given up for the sync's token.
const CLAIM_MARGIN: Duration = Duration::from_secs(2);

pub(crate) fn now() -> Timestamp {
    let ms = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
        .unwrap_or(0);
    Timestamp::from_unix_millis(ms).unwrap_or_else(|_| unreachable!("the clock is in range"))
}

fn random16() -> [u8; 16] {
    let mut b = [0u8; 16];
    rand::rng().fill(&mut b);
    b
}

fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

fn new_txn() -> OwnedTransactionId {
    OwnedTransactionId::from(format!("oc-{}", hex(&random16())))
}

/// Creates `dir` (and its parents) and makes it owner-only: it holds the Matrix device's
/// keys and the trust store.
fn private_dir(dir: &std::path::Path) -> Result<(), CallError> {
    let err = |e: std::io::Error| CallError::Setup(format!("{}: {e}", dir.display()));
    std::fs::create_dir_all(dir).map_err(err)?;
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt as _;
        std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700)).map_err(err)?;
    }
    Ok(())
}

fn localpart(user: &str) -> &str {
    user.trim_start_matches('@')
        .split(':')
        .next()
        .unwrap_or(user)
}

/// `@did-ixo-X:server` → `did:ixo:X`.
fn did_of(user: &UserId) -> Option<Did> {
    let rest = user.localpart().strip_prefix("did-ixo-")?;
    Did::parse(&format!("did:ixo:{rest}")).ok()
}

fn read_session(path: &std::path::Path) -> Result<Option<MatrixSession>, CallError> {
    match std::fs::read_to_string(path) {
        Ok(t) => serde_json::from_str(&t)
            .map(Some)
            .map_err(|e| CallError::Setup(format!("{}: {e}", path.display()))),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(CallError::Setup(format!("{}: {e}", path.display()))),
    }
}

fn write_session(path: &std::path::Path, s: &MatrixSession) -> Result<(), CallError> {
    use std::io::Write as _;
    let text =
        Zeroizing::new(serde_json::to_string(s).map_err(|e| CallError::Setup(e.to_string()))?);
    let mut opts = std::fs::OpenOptions::new();
    opts.write(true).create(true).truncate(true);
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::mode(&mut opts, 0o600);
    opts.open(path)
        .and_then(|mut f| f.write_all(text.as_bytes()))
        .map_err(|e| CallError::Setup(format!("{}: {e}", path.display())))
}

/// Whether a failed repeated sync ends a full reconnect (the server refuses: the call ended,
/// is too old or another user's, 4xx) or is tried again (the homeserver, the server or what it
/// asks, Matrix or LiveKit, is unreachable or failing for now: 5xx, no answer).
fn rejoin_token_error(e: CallError) -> oracle_calls_rtc::TokenError {
    use oracle_calls_rtc::TokenError;
    match &e {
        CallError::ServerUnreachable { .. } | CallError::Matrix(_) => {
            TokenError::Unavailable(e.to_string())
        }
        CallError::Server { status, .. } if *status >= 500 => {
            TokenError::Unavailable(e.to_string())
        }
        _ => TokenError::Refused(e.to_string()),
    }
}

/// The person's Matrix device as oracle-calls keeps it: the homeserver at `homeserver_url`
/// (https, or http on loopback), matrix-sdk's store in `<store_dir>/matrix` (0700), the
/// session saved there after a password login and restored after (a session of another user
/// is not reused), room keys shared only with devices this client trusts, and one sync done.
/// [`OracleClient::connect`] uses it; so do person-to-person calls, which need no oracle.
///
/// # Errors
/// [`CallError::InsecureUrl`], [`CallError::Setup`] (no saved session to restore),
/// [`CallError::Matrix`], and the store's IO errors.
pub async fn open_matrix_client(
    homeserver_url: &str,
    store_dir: &Path,
    login: Login,
) -> Result<Client, CallError> {
    crate::server::require_secure(homeserver_url)?;
    let dir = store_dir.join("matrix");
    private_dir(store_dir)?;
    private_dir(&dir)?;
    let matrix = Client::builder()
        .homeserver_url(homeserver_url)
        .sqlite_store(&dir, None)
        .with_enable_share_history_on_invite(false)
        // Room keys go only to devices this client trusts: the oracle bot's devices that
        // the trust store lists (marked verified before each send), never a device the
        // homeserver adds to the bot's account.
        .with_room_key_recipient_strategy(CollectStrategy::OnlyTrustedDevices)
        .build()
        .await
        .map_err(matrix_err)?;
    let session_file = dir.join("session.json");
    match login {
        Login::Password { user, password } => {
            let restored = match read_session(&session_file)? {
                Some(s) if s.meta.user_id.localpart() == localpart(&user) => {
                    matrix
                        .matrix_auth()
                        .restore_session(s, matrix_sdk::store::RoomLoadSettings::default())
                        .await
                        .map_err(matrix_err)?;
                    true
                }
                _ => false,
            };
            if !restored {
                matrix
                    .matrix_auth()
                    .login_username(&user, &password)
                    .initial_device_display_name("oracle-calls client")
                    .send()
                    .await
                    .map_err(matrix_err)?;
                let s = matrix
                    .matrix_auth()
                    .session()
                    .ok_or_else(|| CallError::Matrix("logged in without a session".into()))?;
                write_session(&session_file, &s)?;
            }
        }
        Login::Restore => {
            let s = read_session(&session_file)?.ok_or_else(|| {
                CallError::Setup(format!(
                    "no saved session in {}; log in with a password first",
                    session_file.display()
                ))
            })?;
            matrix
                .matrix_auth()
                .restore_session(s, matrix_sdk::store::RoomLoadSettings::default())
                .await
                .map_err(matrix_err)?;
        }
    }
    matrix
        .sync_once(SyncSettings::default().timeout(Duration::ZERO))
        .await
        .map_err(matrix_err)?;
    Ok(matrix)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn ixo_user_ids_map_to_dids() {
        let u = UserId::parse("@did-ixo-abc123:localhost").unwrap();
        assert_eq!(did_of(&u).unwrap().as_str(), "did:ixo:abc123");
        assert!(did_of(&UserId::parse("@alice:localhost").unwrap()).is_none());
        assert_eq!(localpart("@did-ixo-a:localhost"), "did-ixo-a");
        assert_eq!(localpart("did-ixo-a"), "did-ixo-a");
    }
}

//! The oracle's Matrix bot device: one persistent device (sqlite store + saved session, never a
//! new device per start), its own `sync_once` long-poll loop resuming from the stored sync
//! token, invites accepted, call events and their `m.replace` edits followed, and status
//! changes written back as edits with retries and one transaction id per logical write.

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use matrix_sdk::authentication::matrix::MatrixSession;
use matrix_sdk::config::{RequestConfig, SyncSettings};
use matrix_sdk::deserialized_responses::TimelineEvent;
use matrix_sdk::ruma::{OwnedTransactionId, OwnedUserId, UserId};
use matrix_sdk::{Client, Room};
use oracle_calls_proto::{CALL_EVENT_TYPE, CallStatus};
use sha2::{Digest as _, Sha256};
use tokio::sync::watch;
use tracing::{debug, info, warn};

use crate::config::{Config, Secrets};
use crate::store::CallRecord;
use crate::{AppState, Error, Result};

mod events;
mod invites;

pub use events::FetchedEvent;

/// Long-poll timeout of one `sync_once`.
const SYNC_TIMEOUT: Duration = Duration::from_secs(25);
/// Attempts of one Matrix write before it is reported as failed.
const WRITE_ATTEMPTS: u32 = 5;
/// How long an undecryptable call event is fetched again while its room key may still be
/// arriving, when the state (and `limits.key_wait_ms`) is not attached yet.
const DEFAULT_KEY_WAIT: Duration = Duration::from_secs(6);
/// Between two fetches of an undecryptable call event.
const KEY_WAIT_STEP: Duration = Duration::from_millis(250);

/// The oracle's bot device. Cheap to clone.
#[derive(Clone)]
pub struct Bot(Arc<Inner>);

struct Inner {
    client: Client,
    user_id: OwnedUserId,
    state: OnceLock<AppState>,
    stop: watch::Sender<bool>,
    task: Mutex<Option<tokio::task::JoinHandle<()>>>,
    /// The startup sync's answer, handled first by the loop.
    first_sync: Mutex<Option<matrix_sdk::sync::SyncResponse>>,
    /// This device, as the well-known publishes it (clients share call events with it only).
    device: Option<oracle_calls_proto::BotDevice>,
}

impl std::fmt::Debug for Bot {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Bot")
            .field("user_id", &self.0.user_id)
            .finish_non_exhaustive()
    }
}

impl Bot {
    /// Restores the saved session (or logs in once with the password and saves it), uploads
    /// the device keys with a first sync, and returns the bot. The loop starts at [`Bot::attach`].
    ///
    /// # Errors
    /// [`Error::Config`] without a session or password, Matrix errors otherwise.
    pub async fn start(config: &Config, secrets: &Secrets) -> Result<Self> {
        let dir = config.data_dir.join("matrix");
        create_private_dir(&dir)
            .map_err(|e| Error::Config(format!("creating {}: {e}", dir.display())))?;
        let user_id = UserId::parse(config.matrix.user_id.as_str())
            .map_err(|e| Error::Config(format!("matrix.user_id: {e}")))?;
        let timeout = Duration::from_secs(config.matrix.request_timeout_secs);
        let client = Client::builder()
            .homeserver_url(&config.matrix.homeserver_url)
            // The configured URL is the way to the homeserver (it may be an internal address
            // or a proxy); a login answer's well-known must not move the bot elsewhere.
            .respect_login_well_known(false)
            .sqlite_store(&dir, None)
            .request_config(RequestConfig::new().timeout(timeout).retry_limit(3))
            .build()
            .await
            .map_err(|e| Error::Config(format!("Matrix client: {e}")))?;
        let session_file = dir.join("session.json");
        if let Some(session) = read_session(&session_file)? {
            if session.meta.user_id != user_id {
                return Err(Error::Config(format!(
                    "{} belongs to another user; remove it to log in as {user_id}",
                    session_file.display()
                )));
            }
            client
                .matrix_auth()
                .restore_session(session, matrix_sdk::store::RoomLoadSettings::default())
                .await
                .map_err(matrix_error)?;
            info!(device = %client.device_id().map(|d| d.to_string()).unwrap_or_default(), "Matrix session restored");
        } else {
            let password = secrets.matrix_password.as_ref().ok_or_else(|| {
                Error::Config("no saved Matrix session: set ORACLE_CALLS_MATRIX_PASSWORD(_FILE) for the first login".into())
            })?;
            client
                .matrix_auth()
                .login_username(&user_id, password.dangerous_expose())
                .initial_device_display_name("oracle-calls server")
                .send()
                .await
                .map_err(matrix_error)?;
            let session = client
                .matrix_auth()
                .session()
                .ok_or_else(|| Error::Internal("logged in without a session".into()))?;
            write_session(&session_file, &session)?;
            info!("Matrix login done; session saved");
        }
        // Uploads the device keys and resumes from the stored token on a restart. What this
        // first sync brings (events sent while the server was down) is handled once the loop
        // starts, when the bot has the server's state.
        let first = client
            .sync_once(SyncSettings::default().timeout(Duration::ZERO))
            .await
            .map_err(matrix_error)?;
        let device = match (client.device_id(), client.encryption().ed25519_key().await) {
            (Some(id), Some(ed25519)) => Some(oracle_calls_proto::BotDevice {
                device_id: id.to_string(),
                ed25519,
            }),
            _ => None,
        };
        Ok(Self(Arc::new(Inner {
            device,
            client,
            user_id,
            state: OnceLock::new(),
            stop: watch::channel(false).0,
            task: Mutex::new(None),
            first_sync: Mutex::new(Some(first)),
        })))
    }

    /// Hands the bot the server state and starts the sync loop and the loop that writes status edits Matrix missed.
    pub fn attach(&self, state: AppState) {
        if self.0.state.set(state).is_err() {
            return;
        }
        let every = Duration::from_secs(
            self.0
                .state
                .get()
                .map_or(30, |s| s.config().matrix.mirror_retry_secs)
                .max(1),
        );
        let bot = self.clone();
        let handle = tokio::spawn(async move { bot.run().await });
        tokio::spawn(self.clone().run_mirror_loop(every));
        tokio::spawn(self.clone().run_leader_duties());
        if let Ok(mut t) = self.0.task.lock() {
            *t = Some(handle);
        }
    }

    /// Stops the sync loop and leaves the leader election.
    pub fn stop(&self) {
        let _ = self.0.stop.send(true);
        // A stopped bot leaves the lead to the oracle's other servers.
        if let Some(state) = self.0.state.get() {
            state.leadership().stop();
        }
    }

    /// The bot's Matrix user.
    pub fn user_id(&self) -> &UserId {
        &self.0.user_id
    }

    /// This bot device's id and Ed25519 identity key.
    pub fn device(&self) -> Option<&oracle_calls_proto::BotDevice> {
        self.0.device.as_ref()
    }

    /// The Matrix client (for tests and tools).
    pub fn client(&self) -> &Client {
        &self.0.client
    }

    /// Writes the call's status to its Matrix event as an `m.replace` edit. One transaction id
    /// per (call, status), so retries and restarts never duplicate the edit. On success the
    /// store records that Matrix shows the status; after the last try the call stays in the
    /// backlog that [`Bot::attach`]'s mirror loop writes again.
    ///
    /// # Errors
    /// [`Error::MatrixUnavailable`] after [`WRITE_ATTEMPTS`] tries.
    pub async fn mirror_status(&self, rec: &CallRecord) -> Result<()> {
        if rec.status == CallStatus::Pending {
            return Ok(());
        }
        let metrics = self.0.state.get().map(AppState::metrics);
        let count = |outcome: &str| {
            if let Some(m) = metrics {
                m.matrix_write(outcome);
            }
        };
        let room = self.room(&rec.matrix_room_id)?;
        let now = rec.call_ended_at.unwrap_or_else(crate::now);
        let new_content = rec
            .content
            .with_status(rec.call_id.clone(), rec.status, now)
            .map_err(|e| Error::Internal(e.to_string()))?;
        let edit =
            oracle_calls_proto::OraclesCallEdit::new(rec.call_id.event_id().clone(), new_content);
        let body = serde_json::to_value(&edit).map_err(|e| Error::Internal(e.to_string()))?;
        let txn = txn_id(rec.call_id.as_str(), rec.status.as_str());
        let mut delay = Duration::from_millis(200);
        let mut attempt = 0;
        let failure = loop {
            attempt += 1;
            match room
                .send_raw(CALL_EVENT_TYPE, &body)
                .with_transaction_id(&txn)
                .await
            {
                Ok(_) => break None,
                Err(e) if attempt < WRITE_ATTEMPTS => {
                    count("retry");
                    warn!(attempt, error = %e, "Matrix edit failed; retrying");
                    tokio::time::sleep(jitter(delay)).await;
                    delay = (delay * 2).min(Duration::from_secs(5));
                }
                Err(e) => break Some(e),
            }
        };
        if let Some(e) = failure {
            count("failed");
            return Err(Error::MatrixUnavailable(format!(
                "the {} edit failed {attempt} times ({e}); it is written again once the homeserver answers",
                rec.status
            )));
        }
        count("ok");
        debug!(status = %rec.status, "status mirrored to Matrix");
        if let Some(state) = self.0.state.get() {
            state.store().set_mirrored(&rec.call_id, rec.status).await?;
        }
        Ok(())
    }

    /// Writes every status change Matrix does not show yet (those whose edits failed every
    /// try), oldest first, and publishes the backlog's size.
    async fn mirror_backlog(&self, state: &AppState, settle: Duration) {
        let settle_ms = i64::try_from(settle.as_millis()).unwrap_or(i64::MAX);
        let before = crate::now().unix_millis().saturating_sub(settle_ms);
        let oracle = &state.config().oracle.did;
        let calls = match state.store().unmirrored_calls(oracle, before, 100).await {
            Ok(c) => c,
            Err(e) => {
                warn!(error = %e, "could not read the Matrix backlog");
                return;
            }
        };
        for rec in calls {
            if !state.is_leader() {
                break;
            }
            let span = tracing::info_span!("call", call_id = %rec.call_id);
            let _ = tracing::Instrument::instrument(
                async {
                    match self.mirror_status(&rec).await {
                        Ok(()) => info!(status = %rec.status, "late status edit written to Matrix"),
                        Err(e) => warn!(error = %e, "status edit still not written"),
                    }
                },
                span,
            )
            .await;
        }
        if let Ok(n) = state.store().unmirrored_count(oracle).await {
            state.metrics().matrix_backlog.set(n);
        }
    }

    async fn run_mirror_loop(self, every: Duration) {
        let mut stop = self.0.stop.subscribe();
        let Some(state) = self.0.state.get().cloned() else {
            return;
        };
        loop {
            tokio::select! {
                () = tokio::time::sleep(every) => {},
                _ = stop.changed() => break,
            }
            // One server of the oracle writes the backlog: the leader.
            if !state.is_leader() {
                continue;
            }
            // Changes younger than one period are still with their own writer.
            self.mirror_backlog(&state, every).await;
        }
    }

    /// True when this server leads its oracle's servers (see [`crate::leader`]): only the
    /// leader accepts invites and writes the backlog of status edits.
    fn leads(&self) -> bool {
        self.0.state.get().is_some_and(AppState::is_leader)
    }

    /// When this server takes the lead: accepts the invites that arrived while another server
    /// led (or none did) and writes the backlog the old leader left.
    async fn run_leader_duties(self) {
        let mut stop = self.0.stop.subscribe();
        let Some(state) = self.0.state.get().cloned() else {
            return;
        };
        let leadership = state.leadership();
        let mut flag = leadership.subscribe();
        let settle = Duration::from_secs(state.config().matrix.mirror_retry_secs.max(1));
        loop {
            if *flag.borrow_and_update() && leadership.is_leader() {
                for room in self.0.client.invited_rooms() {
                    info!(room = %room.room_id(), "answering an invite left for the leader");
                    invites::answer(&state, &self.0.client, &room).await;
                }
                self.mirror_backlog(&state, settle).await;
            }
            tokio::select! {
                changed = flag.changed() => if changed.is_err() { break },
                _ = stop.changed() => break,
            }
        }
    }

    pub(crate) fn room(&self, room_id: &str) -> Result<Room> {
        let id = matrix_sdk::ruma::RoomId::parse(room_id)
            .map_err(|_| Error::Internal("stored Matrix room id is invalid".into()))?;
        self.0
            .client
            .get_room(&id)
            .ok_or_else(|| Error::MatrixBadAnswer("the bot is not in the call's room".into()))
    }

    async fn run(self) {
        let mut stop = self.0.stop.subscribe();
        let mut backoff = Duration::from_millis(500);
        info!(user = %self.0.user_id, "Matrix sync loop running");
        let first = self.0.first_sync.lock().ok().and_then(|mut f| f.take());
        if let Some(resp) = first {
            self.handle_sync(resp).await;
        }
        loop {
            let settings = SyncSettings::default().timeout(SYNC_TIMEOUT);
            let result = tokio::select! {
                r = self.0.client.sync_once(settings) => r,
                _ = stop.changed() => break,
            };
            match result {
                Ok(resp) => {
                    backoff = Duration::from_millis(500);
                    self.handle_sync(resp).await;
                }
                Err(e) => {
                    warn!(error = %e, "Matrix sync failed; retrying");
                    tokio::select! {
                        () = tokio::time::sleep(jitter(backoff)) => {},
                        _ = stop.changed() => break,
                    }
                    backoff = (backoff * 2).min(Duration::from_secs(30));
                }
            }
        }
        info!("Matrix sync loop stopped");
    }

    async fn handle_sync(&self, resp: matrix_sdk::sync::SyncResponse) {
        let Some(state) = self.0.state.get() else {
            return;
        };
        // Invites are the leader's (see [`crate::leader`]).
        for room_id in resp.rooms.invited.keys().filter(|_| self.leads()) {
            if let Some(room) = self.0.client.get_room(room_id) {
                invites::answer(state, &self.0.client, &room).await;
            }
        }
        for (room_id, update) in &resp.rooms.joined {
            let Some(room) = self.0.client.get_room(room_id) else {
                continue;
            };
            for ev in &update.timeline.events {
                self.handle_timeline_event(state, &room, ev).await;
            }
        }
    }

    async fn handle_timeline_event(&self, state: &AppState, room: &Room, ev: &TimelineEvent) {
        let Ok(Some(kind)) = ev.raw().get_field::<String>("type") else {
            return;
        };
        if kind != CALL_EVENT_TYPE {
            return;
        }
        let fetched = match FetchedEvent::from_timeline(room, ev).await {
            Ok(f) => f,
            Err(e) => {
                warn!(error = %e, "unreadable call event");
                return;
            }
        };
        if fetched.sender == self.0.user_id.as_str() {
            return;
        }
        if let Err(why) = fetched.check_transport() {
            warn!(room = %room.room_id(), sender = %fetched.sender, why, "call event rejected");
            return;
        }
        if let Err(e) = events::apply_edit(state, &fetched).await {
            warn!(error = %e, "could not apply a call edit");
        }
    }

    /// Finds and fetches (decrypting) the call's event as the bot device, in a room the bot
    /// shares with `user`.
    ///
    /// # Errors
    /// [`Error::NotFound`] when no shared room has it; Matrix errors.
    pub async fn fetch_call_event(&self, user: &str, event_id: &str) -> Result<FetchedEvent> {
        let user = UserId::parse(user).map_err(|_| Error::Unauthorized("bad Matrix user id"))?;
        let event_id = matrix_sdk::ruma::EventId::parse(event_id)
            .map_err(|e| Error::BadRequest(format!("event id: {e}")))?;
        let state = self.0.state.get();
        let wait_time = state.map_or(DEFAULT_KEY_WAIT, |s| s.limits().key_wait_time());
        for room in self.0.client.joined_rooms() {
            let member = room.get_member_no_sync(&user).await.ok().flatten();
            if member.is_none() {
                continue;
            }
            // The room key may still be on its way to this device (a to-device message on
            // the sync loop): fetch an undecryptable event again for a bounded time, one
            // such wait per user at a time.
            let mut waiting = None;
            let deadline = tokio::time::Instant::now() + wait_time;
            loop {
                let fetched = match room.event(&event_id, None).await {
                    Ok(ev) => FetchedEvent::from_timeline(&room, &ev).await?,
                    Err(e) if is_not_found(&e) => break,
                    Err(e) => return Err(matrix_error(e)),
                };
                if fetched.event_type != "m.room.encrypted"
                    || tokio::time::Instant::now() + KEY_WAIT_STEP > deadline
                {
                    return Ok(fetched);
                }
                if waiting.is_none()
                    && let Some(state) = state
                {
                    waiting = Some(state.limits().key_wait(user.as_str()).ok_or(
                        Error::RateLimited {
                            what: "another request of this user is already waiting for a \
                                   call event's room key",
                            retry_after_secs: wait_time.as_secs().max(1),
                        },
                    )?);
                }
                tokio::time::sleep(KEY_WAIT_STEP).await;
            }
        }
        Err(Error::NotFound)
    }
}

fn is_not_found(e: &matrix_sdk::Error) -> bool {
    e.as_client_api_error()
        .is_some_and(|c| c.status_code.as_u16() == 404)
}

pub(crate) fn matrix_error(e: impl std::fmt::Display) -> Error {
    let text = e.to_string();
    if text.contains("error sending request")
        || text.contains("timed out")
        || text.contains("connect")
    {
        Error::MatrixUnavailable(text)
    } else {
        Error::MatrixBadAnswer(text)
    }
}

/// The transaction id of one logical write: a hash of what is written, so it is stable
/// across retries and restarts.
fn txn_id(call_id: &str, what: &str) -> OwnedTransactionId {
    let h = Sha256::digest(format!("{call_id}\u{0}{what}").as_bytes());
    let hex: String = h.iter().take(16).map(|b| format!("{b:02x}")).collect();
    OwnedTransactionId::from(format!("oc-{hex}"))
}

fn jitter(d: Duration) -> Duration {
    let mut b = [0u8; 1];
    rand::fill(&mut b);
    d + d * u32::from(b[0]) / 512
}

/// Creates the bot's store directory readable by its owner only (0700): it holds the device's
/// Olm account and Megolm sessions, which matrix-sdk stores without a passphrase. A directory
/// made by an earlier version is tightened to 0700 too.
fn create_private_dir(dir: &Path) -> std::io::Result<()> {
    #[cfg(unix)]
    {
        use std::os::unix::fs::{DirBuilderExt as _, PermissionsExt as _};
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(dir)?;
        std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700))
    }
    #[cfg(not(unix))]
    std::fs::create_dir_all(dir)
}

fn read_session(path: &Path) -> Result<Option<MatrixSession>> {
    match std::fs::read_to_string(path) {
        Ok(text) => serde_json::from_str(&text)
            .map(Some)
            .map_err(|e| Error::Config(format!("{}: {e}", path.display()))),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(Error::Config(format!("{}: {e}", path.display()))),
    }
}

fn write_session(path: &PathBuf, session: &MatrixSession) -> Result<()> {
    use std::io::Write as _;
    let text = serde_json::to_string(session).map_err(|e| Error::Internal(e.to_string()))?;
    let mut opts = std::fs::OpenOptions::new();
    opts.write(true).create(true).truncate(true);
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::mode(&mut opts, 0o600);
    let mut f = opts
        .open(path)
        .map_err(|e| Error::Config(format!("{}: {e}", path.display())))?;
    f.write_all(text.as_bytes())
        .map_err(|e| Error::Config(format!("{}: {e}", path.display())))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[cfg(unix)]
    #[test]
    fn the_store_directory_is_owner_only() {
        use std::os::unix::fs::PermissionsExt as _;
        let base = std::env::temp_dir().join(format!("oc-bot-dir-{}", std::process::id()));
        let dir = base.join("data").join("matrix");
        create_private_dir(&dir).unwrap();
        let mode = |p: &Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode(&dir), 0o700);
        // One made before with the umask's permissions is tightened.
        std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o755)).unwrap();
        create_private_dir(&dir).unwrap();
        assert_eq!(mode(&dir), 0o700);
        std::fs::remove_dir_all(&base).unwrap();
    }
}

//! The call store: sqlx over SQLite (the embedded default) or PostgreSQL, one set of queries
//! for both (`$N` placeholders work in both), migrations embedded per backend.

use std::borrow::Cow;

use oracle_calls_proto::{
    CallId, CallReason, CallStatus, CallSummary, Did, KeyEnvelope, OraclesCallContent, Timestamp,
};
use sqlx::any::{AnyPoolOptions, AnyRow};
use sqlx::migrate::{Migration, MigrationType, Migrator};
use sqlx::{AnyPool, Row, SqlSafeStr as _};

use tracing::info;

use crate::{Error, Result};

mod api_keys;
mod claims;
mod cluster;
mod cursor;
mod prekeys;
mod rate;

pub use api_keys::{ApiKeyRecord, KeyRequestRecord};
pub use claims::{Claim, ClaimRecord};
pub use cursor::ListFilter;
pub use prekeys::{Claimed, MAX_UNCLAIMED_ONE_TIME, Published};

/// Which database a [`Store`] talks to.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum Backend {
    /// An SQLite file.
    Sqlite,
    /// A PostgreSQL server.
    Postgres,
}

/// The store. Cheap to clone (a pool handle).
#[derive(Clone, Debug)]
pub struct Store {
    pool: AnyPool,
    backend: Backend,
    /// Calls read recently, on SQLite only (see [`CallCache`]).
    cache: Option<std::sync::Arc<CallCache>>,
}

/// A read cache of call records for a store this process alone writes (the SQLite file of
/// the embedded default). Every write of a call through the [`Store`] drops its entry, and a
/// read only fills the cache when no write happened while it ran (a generation counter), so
/// the cache never serves a status older than the store's. PostgreSQL may be shared by
/// several servers, so it is never cached.
#[derive(Debug, Default)]
struct CallCache {
    inner: std::sync::Mutex<(u64, std::collections::HashMap<String, CallRecord>)>,
}

/// Entries above which the call cache is emptied.
const CALL_CACHE_MAX: usize = 10_000;

impl CallCache {
    fn get(&self, id: &str) -> Option<CallRecord> {
        self.inner.lock().ok()?.1.get(id).cloned()
    }
    fn generation(&self) -> u64 {
        self.inner.lock().map_or(u64::MAX, |g| g.0)
    }
    fn fill(&self, generation: u64, rec: &CallRecord) {
        if let Ok(mut g) = self.inner.lock()
            && g.0 == generation
        {
            if g.1.len() >= CALL_CACHE_MAX {
                g.1.clear();
            }
            g.1.insert(rec.call_id.as_str().to_owned(), rec.clone());
        }
    }
    fn forget(&self, id: &str) {
        if let Ok(mut g) = self.inner.lock() {
            g.0 = g.0.wrapping_add(1);
            g.1.remove(id);
        }
    }
}

/// One stored call.
#[derive(Clone, PartialEq, Eq, Debug)]
pub struct CallRecord {
    /// The call.
    pub call_id: CallId,
    /// The Matrix room that holds the call event.
    pub matrix_room_id: String,
    /// The Matrix user who sent the call event.
    pub sender: String,
    /// The call event's content as first accepted (status pending).
    pub content: OraclesCallContent,
    /// Current status.
    pub status: CallStatus,
    /// When it ended.
    pub call_ended_at: Option<Timestamp>,
    /// Why it ended, or the agent's last report.
    pub reason: Option<CallReason>,
    /// True once the agent reported `keyDecryptionFailed`: the key endpoint refuses the call.
    pub key_blocked: bool,
    /// When the server first stored it (Unix ms).
    pub created_at: i64,
}

impl CallRecord {
    /// The call as the API lists it.
    pub fn summary(&self) -> CallSummary {
        CallSummary {
            call_id: self.call_id.clone(),
            call_type: self.content.call_type,
            call_status: self.status,
            session_id: self.content.session_id.clone(),
            room_id: self.content.room_id.clone(),
            user_did: self.content.user_did.clone(),
            oracle_did: self.content.oracle_did.clone(),
            call_started_at: self.content.call_started_at,
            call_ended_at: self.call_ended_at,
            reason: self.reason,
        }
    }

    /// The wrapped key as stored in the event.
    pub fn encryption_key(&self) -> &KeyEnvelope {
        &self.content.encryption_key
    }

    /// The oracle of the call.
    pub fn oracle_did(&self) -> &Did {
        &self.content.oracle_did
    }
}

/// What [`Store::insert_call`] did.
#[derive(Clone, PartialEq, Eq, Debug)]
pub enum Inserted {
    /// The call is new and was stored.
    New,
    /// A call with this id was already stored; here it is, unchanged.
    Existing(Box<CallRecord>),
    /// Another call holds the room name: nothing was stored.
    RoomTaken,
}

impl Store {
    /// Connects to `url` (`sqlite://…` or `postgres://…`) and runs the migrations; a query
    /// waits up to 10 s for a connection.
    ///
    /// # Errors
    /// [`Error::Config`] for an unknown scheme, [`Error::Store`]/[`Error::Migrate`] otherwise.
    pub async fn connect(url: &str) -> Result<Self> {
        Self::connect_waiting(url, std::time::Duration::from_secs(10)).await
    }

    /// [`Self::connect`], with queries waiting up to `wait` for a connection (while the
    /// database is unreachable, the pool keeps trying to connect for that long); after that
    /// they fail with [`Error::StoreUnavailable`].
    ///
    /// # Errors
    /// As [`Self::connect`].
    pub async fn connect_waiting(url: &str, wait: std::time::Duration) -> Result<Self> {
        sqlx::any::install_default_drivers();
        let backend = if url.starts_with("sqlite:") {
            Backend::Sqlite
        } else if url.starts_with("postgres:") || url.starts_with("postgresql:") {
            Backend::Postgres
        } else {
            return Err(Error::Config(
                "database_url must start with sqlite: or postgres:".into(),
            ));
        };
        let max = if backend == Backend::Sqlite { 4 } else { 8 };
        let pool = AnyPoolOptions::new()
            .max_connections(max)
            .acquire_timeout(wait)
            .after_connect(move |conn, _| {
                Box::pin(async move {
                    if backend == Backend::Sqlite {
                        // WAL with NORMAL sync: a commit survives a crash of this process;
                        // only an OS crash or power loss can lose the last commits.
                        sqlx::query("PRAGMA synchronous = NORMAL")
                            .execute(&mut *conn)
                            .await?;
                    }
                    Ok(())
                })
            })
            .connect(url)
            .await?;
        if backend == Backend::Sqlite {
            sqlx::query("PRAGMA journal_mode = WAL")
                .execute(&pool)
                .await?;
        }
        let mut migrator = migrator(backend);
        if let Some(newer) = newer_schema(&pool, backend).await? {
            // A newer server of this oracle migrated the database (a rolling upgrade): its
            // migrations are not ours to check, and none of ours is missing.
            info!(
                database = newer,
                ours = SCHEMA_VERSION,
                "the database was migrated by a newer server whose schema declares this \
                 server's compatible; running on it"
            );
            migrator.set_ignore_missing(true);
        }
        migrator.run(&pool).await?;
        let cache = (backend == Backend::Sqlite).then(std::sync::Arc::default);
        Ok(Self {
            pool,
            backend,
            cache,
        })
    }

    /// The backend in use.
    pub fn backend(&self) -> Backend {
        self.backend
    }

    /// Closes the pool: waits for the connections in use to come back, then closes them all.
    pub async fn close(&self) {
        self.pool.close().await;
    }

    /// True when the database answers.
    pub async fn ping(&self) -> bool {
        sqlx::query("SELECT 1").execute(&self.pool).await.is_ok()
    }

    /// Stores a new pending call, or returns the one already stored under its id. A room name
    /// belongs to one call: when another call holds it, nothing is stored
    /// ([`Inserted::RoomTaken`]).
    ///
    /// # Errors
    /// [`Error::Store`].
    pub async fn insert_call(
        &self,
        call_id: &CallId,
        matrix_room_id: &str,
        sender: &str,
        content: &OraclesCallContent,
        now_ms: i64,
    ) -> Result<Inserted> {
        let json = serde_json::to_string(content).map_err(|e| Error::Internal(e.to_string()))?;
        let derivation = serde_json::to_value(content.key_derivation)
            .ok()
            .and_then(|v| v.as_str().map(str::to_owned))
            .unwrap_or_default();
        let done = sqlx::query(
            "INSERT INTO calls (call_id, matrix_room_id, sender, user_did, oracle_did, session_id,
                room_name, call_type, status, encryption_key, key_derivation, content_json,
                call_started_at, call_ended_at, reason, key_blocked, created_at, updated_at)
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, NULL, NULL, 0, $14, $14)
             ON CONFLICT DO NOTHING",
        )
        .bind(call_id.as_str())
        .bind(matrix_room_id)
        .bind(sender)
        .bind(content.user_did.as_str())
        .bind(content.oracle_did.as_str())
        .bind(content.session_id.as_str())
        .bind(content.room_id.as_str())
        .bind(content.call_type.as_str())
        .bind(content.call_status.as_str())
        .bind(content.encryption_key.as_str())
        .bind(derivation)
        .bind(json)
        .bind(content.call_started_at.unix_millis())
        .bind(now_ms)
        .execute(&self.pool)
        .await;
        self.forget(call_id);
        let done = done?;
        if done.rows_affected() == 1 {
            return Ok(Inserted::New);
        }
        match self.call(call_id).await? {
            Some(existing) => Ok(Inserted::Existing(Box::new(existing))),
            // The only other unique key is the room name (migration 0003).
            None => Ok(Inserted::RoomTaken),
        }
    }

    /// The call with this id.
    ///
    /// # Errors
    /// [`Error::Store`], or [`Error::Internal`] for a row that does not parse.
    pub async fn call(&self, call_id: &CallId) -> Result<Option<CallRecord>> {
        if let Some(rec) = self.cache.as_ref().and_then(|c| c.get(call_id.as_str())) {
            return Ok(Some(rec));
        }
        let generation = self.cache.as_ref().map(|c| c.generation());
        let row = sqlx::query(SELECT_CALL.into_sql_str())
            .bind(call_id.as_str())
            .fetch_optional(&self.pool)
            .await?;
        let rec = row.as_ref().map(call_from_row).transpose()?;
        if let (Some(cache), Some(generation), Some(rec)) = (&self.cache, generation, &rec) {
            cache.fill(generation, rec);
        }
        Ok(rec)
    }

    /// Drops the call's cached record; every write of a call calls it after writing.
    fn forget(&self, call_id: &CallId) {
        if let Some(c) = &self.cache {
            c.forget(call_id.as_str());
        }
    }

    /// Moves the call from `from` to `to` if it is still in `from`. Returns false when another
    /// writer got there first (re-read and decide again).
    ///
    /// # Errors
    /// [`Error::Store`].
    pub async fn set_status(
        &self,
        call_id: &CallId,
        from: CallStatus,
        to: CallStatus,
        reason: Option<CallReason>,
        now_ms: i64,
    ) -> Result<bool> {
        let ended_at = (to == CallStatus::Ended).then_some(now_ms);
        let done = sqlx::query(
            "UPDATE calls SET status = $1, call_ended_at = COALESCE($2, call_ended_at),
                 reason = COALESCE($3, reason), updated_at = $4
             WHERE call_id = $5 AND status = $6",
        )
        .bind(to.as_str())
        .bind(ended_at)
        .bind(reason.map(reason_str))
        .bind(now_ms)
        .bind(call_id.as_str())
        .bind(from.as_str())
        .execute(&self.pool)
        .await;
        self.forget(call_id);
        let done = done?;
        Ok(done.rows_affected() == 1)
    }

    /// Records a report on a call that has not ended; `keyDecryptionFailed` also blocks the
    /// key endpoint. Returns false, changing nothing, when the call has ended (or does not
    /// exist): an ended call's reason is final.
    ///
    /// # Errors
    /// [`Error::Store`].
    pub async fn record_reason(
        &self,
        call_id: &CallId,
        reason: CallReason,
        now_ms: i64,
    ) -> Result<bool> {
        let block = i64::from(reason == CallReason::KeyDecryptionFailed);
        let done = sqlx::query(
            "UPDATE calls SET reason = $1, key_blocked = CASE WHEN $2 = 1 THEN 1 ELSE key_blocked END,
                 updated_at = $3
             WHERE call_id = $4 AND status <> 'ended'",
        )
        .bind(reason_str(reason))
        .bind(block)
        .bind(now_ms)
        .bind(call_id.as_str())
        .execute(&self.pool)
        .await;
        self.forget(call_id);
        Ok(done?.rows_affected() == 1)
    }

    /// Blocks the key endpoint for the call (the agent could not open its envelope), whatever
    /// its status, without touching its reason.
    ///
    /// # Errors
    /// [`Error::Store`].
    pub async fn block_key(&self, call_id: &CallId, now_ms: i64) -> Result<()> {
        let done =
            sqlx::query("UPDATE calls SET key_blocked = 1, updated_at = $1 WHERE call_id = $2")
                .bind(now_ms)
                .bind(call_id.as_str())
                .execute(&self.pool)
                .await;
        self.forget(call_id);
        done?;
        Ok(())
    }

    /// Calls that are not ended yet (for the Matrix side and restarts).
    ///
    /// # Errors
    /// [`Error::Store`].
    pub async fn open_calls(&self) -> Result<Vec<CallRecord>> {
        let rows = sqlx::query(
            "SELECT call_id, matrix_room_id, sender, content_json, status, call_ended_at, reason,
                    key_blocked, created_at
             FROM calls WHERE status <> 'ended' ORDER BY created_at",
        )
        .fetch_all(&self.pool)
        .await?;
        rows.iter().map(call_from_row).collect()
    }

    /// Records that Matrix now shows `status` for the call (written by the bot, or read from
    /// the user's own edit).
    ///
    /// # Errors
    /// [`Error::Store`].
    pub async fn set_mirrored(&self, call_id: &CallId, status: CallStatus) -> Result<()> {
        sqlx::query("UPDATE calls SET mirrored_status = $1 WHERE call_id = $2")
            .bind(status.as_str())
            .bind(call_id.as_str())
            .execute(&self.pool)
            .await?;
        Ok(())
    }

    /// Counts one more dispatch of `call_id`'s agent, atomically across every server on this
    /// database: the new count, or `None` when `max` were made already (or no such call).
    ///
    /// # Errors
    /// [`Error::Store`].
    pub async fn count_redispatch(&self, call_id: &CallId, max: u32) -> Result<Option<u32>> {
        let row = sqlx::query(
            "UPDATE calls SET redispatches = redispatches + 1
             WHERE call_id = $1 AND redispatches < $2
             RETURNING redispatches",
        )
        .bind(call_id.as_str())
        .bind(i64::from(max))
        .fetch_optional(&self.pool)
        .await?;
        match row {
            Some(r) => {
                let n: i64 = r.try_get(0)?;
                Ok(Some(u32::try_from(n).unwrap_or(u32::MAX)))
            }
            None => Ok(None),
        }
    }

    /// Calls whose status Matrix does not show yet (oldest change first), changed before
    /// `older_than_ms` (Unix ms; younger changes are still being written by their own transition).
    ///
    /// # Errors
    /// [`Error::Store`].
    pub async fn unmirrored_calls(
        &self,
        oracle: &Did,
        older_than_ms: i64,
        limit: i64,
    ) -> Result<Vec<CallRecord>> {
        let rows = sqlx::query(
            "SELECT call_id, matrix_room_id, sender, content_json, status, call_ended_at, reason,
                    key_blocked, created_at
             FROM calls
             WHERE oracle_did = $1 AND status <> 'pending'
               AND (mirrored_status IS NULL OR mirrored_status <> status) AND updated_at <= $2
             ORDER BY updated_at LIMIT $3",
        )
        .bind(oracle.as_str())
        .bind(older_than_ms)
        .bind(limit)
        .fetch_all(&self.pool)
        .await?;
        rows.iter().map(call_from_row).collect()
    }

    /// Brings a call rebuilt from Matrix to the status its edits show (`status`, ended at
    /// `ended_at_ms`), which Matrix already shows. Never moves a call backwards.
    ///
    /// # Errors
    /// [`Error::Store`].
    pub async fn restore_status(
        &self,
        call_id: &CallId,
        status: CallStatus,
        ended_at_ms: Option<i64>,
        now_ms: i64,
    ) -> Result<bool> {
        let earlier: &[&str] = match status {
            CallStatus::Pending => &[],
            CallStatus::Active => &["pending"],
            CallStatus::Ended => &["pending", "active"],
        };
        let mut changed = false;
        for from in earlier {
            let done = sqlx::query(
                "UPDATE calls SET status = $1, call_ended_at = COALESCE($2, call_ended_at),
                     mirrored_status = $1, updated_at = $3
                 WHERE call_id = $4 AND status = $5",
            )
            .bind(status.as_str())
            .bind(ended_at_ms)
            .bind(now_ms)
            .bind(call_id.as_str())
            .bind(*from)
            .execute(&self.pool)
            .await;
            self.forget(call_id);
            let done = done?;
            changed |= done.rows_affected() == 1;
        }
        Ok(changed)
    }

    /// How many of `oracle`'s calls owe Matrix an edit.
    ///
    /// # Errors
    /// [`Error::Store`].
    pub async fn unmirrored_count(&self, oracle: &Did) -> Result<i64> {
        let row = sqlx::query(
            "SELECT COUNT(*) AS n FROM calls WHERE oracle_did = $1 AND status <> 'pending'
               AND (mirrored_status IS NULL OR mirrored_status <> status)",
        )
        .bind(oracle.as_str())
        .fetch_one(&self.pool)
        .await?;
        Ok(row.try_get("n")?)
    }

    pub(crate) fn pool(&self) -> &AnyPool {
        &self.pool
    }
}

const SELECT_CALL: &str = "SELECT call_id, matrix_room_id, sender, content_json, status,
        call_ended_at, reason, key_blocked, created_at
     FROM calls WHERE call_id = $1";

pub(crate) fn call_from_row(row: &AnyRow) -> Result<CallRecord> {
    let bad = |what: &str| Error::Internal(format!("stored call has a bad {what}"));
    let call_id: String = row.try_get("call_id")?;
    let content: String = row.try_get("content_json")?;
    let status: String = row.try_get("status")?;
    let reason: Option<String> = row.try_get("reason")?;
    let ended: Option<i64> = row.try_get("call_ended_at")?;
    let blocked: i64 = row.try_get("key_blocked")?;
    Ok(CallRecord {
        call_id: CallId::parse(&call_id).map_err(|_| bad("call_id"))?,
        matrix_room_id: row.try_get("matrix_room_id")?,
        sender: row.try_get("sender")?,
        content: serde_json::from_str(&content).map_err(|_| bad("content"))?,
        status: status.parse().map_err(|_| bad("status"))?,
        call_ended_at: ended
            .map(Timestamp::from_unix_millis)
            .transpose()
            .map_err(|_| bad("call_ended_at"))?,
        reason: reason
            .map(|r| serde_json::from_value(serde_json::Value::String(r)))
            .transpose()
            .map_err(|_| bad("reason"))?,
        key_blocked: blocked != 0,
        created_at: row.try_get("created_at")?,
    })
}

fn reason_str(r: CallReason) -> String {
    serde_json::to_value(r)
        .ok()
        .and_then(|v| v.as_str().map(str::to_owned))
        .unwrap_or_default()
}

/// The version of this server's newest migration: its schema.
pub const SCHEMA_VERSION: i64 = 9;

/// The newest migration applied to the database when it is newer than [`SCHEMA_VERSION`] and
/// the database declares servers of this schema compatible (table `schema_compat`, migration
/// 9); `None` for a database at or below this server's schema, or a new one.
///
/// # Errors
/// [`Error::SchemaTooNew`] when the database needs a newer server; [`Error::Store`].
async fn newer_schema(pool: &AnyPool, backend: Backend) -> Result<Option<i64>> {
    let has_table = match backend {
        Backend::Sqlite => {
            "SELECT COUNT(*) FROM sqlite_master WHERE type = 'table' AND name = '_sqlx_migrations'"
        }
        Backend::Postgres => {
            "SELECT COUNT(*) FROM information_schema.tables \
             WHERE table_name = '_sqlx_migrations' AND table_schema = current_schema()"
        }
    };
    let tables: i64 = sqlx::query_scalar(has_table).fetch_one(pool).await?;
    if tables == 0 {
        return Ok(None);
    }
    let newest: Option<i64> =
        sqlx::query_scalar("SELECT MAX(version) FROM _sqlx_migrations WHERE success")
            .fetch_one(pool)
            .await?;
    let Some(newest) = newest.filter(|v| *v > SCHEMA_VERSION) else {
        return Ok(None);
    };
    let needs: Option<i64> =
        sqlx::query_scalar("SELECT oldest_server_schema FROM schema_compat WHERE id = 1")
            .fetch_optional(pool)
            .await?;
    match needs {
        Some(needs) if needs <= SCHEMA_VERSION => Ok(Some(newest)),
        // No row: the table was emptied by hand, so nothing vouches for this server.
        _ => Err(Error::SchemaTooNew {
            database: newest,
            needs: needs.unwrap_or(newest),
            ours: SCHEMA_VERSION,
        }),
    }
}

fn migrator(backend: Backend) -> Migrator {
    let steps: [(i64, &'static str, &'static str, &'static str); 9] = [
        (
            1,
            "init",
            include_str!("../migrations/sqlite/0001_init.sql"),
            include_str!("../migrations/postgres/0001_init.sql"),
        ),
        (
            2,
            "mirror",
            include_str!("../migrations/sqlite/0002_mirror.sql"),
            include_str!("../migrations/postgres/0002_mirror.sql"),
        ),
        (
            3,
            "room names",
            include_str!("../migrations/sqlite/0003_room_names.sql"),
            include_str!("../migrations/postgres/0003_room_names.sql"),
        ),
        (
            4,
            "prekeys",
            include_str!("../migrations/sqlite/0004_prekeys.sql"),
            include_str!("../migrations/postgres/0004_prekeys.sql"),
        ),
        (
            5,
            "cluster",
            include_str!("../migrations/sqlite/0005_cluster.sql"),
            include_str!("../migrations/postgres/0005_cluster.sql"),
        ),
        (
            6,
            "redispatches",
            include_str!("../migrations/sqlite/0006_redispatches.sql"),
            include_str!("../migrations/postgres/0006_redispatches.sql"),
        ),
        (
            7,
            "room claims",
            include_str!("../migrations/sqlite/0007_room_claims.sql"),
            include_str!("../migrations/postgres/0007_room_claims.sql"),
        ),
        (
            8,
            "rate buckets",
            include_str!("../migrations/sqlite/0008_rate_buckets.sql"),
            include_str!("../migrations/postgres/0008_rate_buckets.sql"),
        ),
        (
            9,
            "schema compat",
            include_str!("../migrations/sqlite/0009_schema_compat.sql"),
            include_str!("../migrations/postgres/0009_schema_compat.sql"),
        ),
    ];
    Migrator::with_migrations(
        steps
            .into_iter()
            .map(|(version, name, sqlite, postgres)| {
                let sql = match backend {
                    Backend::Sqlite => sqlite,
                    Backend::Postgres => postgres,
                };
                Migration::new(
                    version,
                    Cow::Borrowed(name),
                    MigrationType::Simple,
                    sql.into_sql_str(),
                    false,
                )
            })
            .collect(),
    )
}

impl Store {
    /// The call of LiveKit room `room` (a room name belongs to one call), whatever its status.
    ///
    /// # Errors
    /// [`Error::Store`].
    pub async fn call_in_room(&self, room: &str) -> Result<Option<CallRecord>> {
        let row = sqlx::query(
            "SELECT call_id, matrix_room_id, sender, content_json, status, call_ended_at, reason,
                    key_blocked, created_at
             FROM calls WHERE room_name = $1",
        )
        .bind(room)
        .fetch_optional(&self.pool)
        .await?;
        row.as_ref().map(call_from_row).transpose()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_schema_version_is_the_newest_migration_and_versions_run_one_by_one() {
        for backend in [Backend::Sqlite, Backend::Postgres] {
            let versions: Vec<i64> = migrator(backend).iter().map(|m| m.version).collect();
            let expected: Vec<i64> = (1..=SCHEMA_VERSION).collect();
            assert_eq!(versions, expected, "{backend:?}");
        }
    }
}

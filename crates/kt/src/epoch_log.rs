//! The directory's persistent log: per epoch, the updates published in it (label: an oracle's
//! DID or a person's user id; record bytes; in order), its time and its signed checkpoint, in SQLite (the embedded default) or
//! PostgreSQL through sqlx. akd's tree itself stays in memory; [`crate::Directory::open`]
//! rebuilds it by replaying this log epoch by epoch and checks every replayed root against the
//! signed checkpoint stored with it.
//!
//! One process writes a log at a time: the epoch is the primary key, so a second writer's
//! append fails instead of forking the log.

use std::fmt;

use sqlx::any::{AnyConnectOptions, AnyPoolOptions};
use sqlx::{AnyPool, Row as _};

use crate::checkpoint::{DirectoryPublicKey, SignedCheckpoint};
use crate::error::{Error, Result};

/// The tables, in SQL both SQLite and PostgreSQL accept. Records are stored as hex text so
/// that one schema fits both (no BLOB/BYTEA split).
const SCHEMA: [&str; 3] = [
    "CREATE TABLE IF NOT EXISTS kt_directory (
        id BIGINT PRIMARY KEY CHECK (id = 1),
        public_key TEXT NOT NULL
    )",
    "CREATE TABLE IF NOT EXISTS kt_epochs (
        epoch BIGINT PRIMARY KEY,
        time_ms BIGINT NOT NULL,
        checkpoint TEXT NOT NULL
    )",
    "CREATE TABLE IF NOT EXISTS kt_updates (
        epoch BIGINT NOT NULL REFERENCES kt_epochs (epoch),
        position BIGINT NOT NULL,
        did TEXT NOT NULL, -- the label: an oracle's DID or a person's user id
        record TEXT NOT NULL,
        PRIMARY KEY (epoch, position)
    )",
];

/// The persistent log of a directory's epochs (a pool handle; cheap to clone).
#[derive(Clone)]
pub struct EpochLog {
    pool: AnyPool,
}

impl fmt::Debug for EpochLog {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // The URL may hold a database password: never printed.
        f.write_str("EpochLog(..)")
    }
}

/// One epoch as stored: its signed checkpoint and the updates published in it, in order
/// (none for epoch 0, the empty tree).
#[derive(Clone, PartialEq, Eq, Debug)]
pub(crate) struct StoredEpoch {
    pub(crate) checkpoint: SignedCheckpoint,
    /// (label, record bytes); the label is checked when the epoch is replayed.
    pub(crate) updates: Vec<(String, Vec<u8>)>,
}

impl EpochLog {
    /// Connects to `url` (`sqlite:…`, e.g. `sqlite://kt.db?mode=rwc`, or `postgres:…`) and
    /// creates the tables if they are missing.
    ///
    /// # Errors
    /// [`Error::BadRequest`] for another scheme, [`Error::Store`] if the database fails.
    pub async fn connect(url: &str) -> Result<Self> {
        let sqlite = url.starts_with("sqlite:");
        if !sqlite && !url.starts_with("postgres:") && !url.starts_with("postgresql:") {
            return Err(Error::BadRequest(
                "the directory's database URL must start with sqlite: or postgres:",
            ));
        }
        sqlx::any::install_default_drivers();
        let options: AnyConnectOptions = url.parse().map_err(Error::Store)?;
        let pool = AnyPoolOptions::new()
            // One writer, a few readers; SQLite serializes writes anyway.
            .max_connections(if sqlite { 1 } else { 4 })
            .acquire_timeout(std::time::Duration::from_secs(10))
            .connect_with(options)
            .await
            .map_err(Error::Store)?;
        for statement in SCHEMA {
            sqlx::query(statement)
                .execute(&pool)
                .await
                .map_err(Error::Store)?;
        }
        Ok(Self { pool })
    }

    /// The directory key the log was started under, if any epoch was ever stored.
    pub(crate) async fn directory_key(&self) -> Result<Option<DirectoryPublicKey>> {
        let row = sqlx::query("SELECT public_key FROM kt_directory WHERE id = 1")
            .fetch_optional(&self.pool)
            .await
            .map_err(Error::Store)?;
        let Some(row) = row else { return Ok(None) };
        let text: String = row.try_get("public_key").map_err(Error::Store)?;
        serde_json::from_str(&text)
            .map(Some)
            .map_err(|_| Error::Replay {
                epoch: 0,
                what: "the stored directory key does not parse",
            })
    }

    /// Every stored epoch, in order. The epochs must run 0, 1, 2, … with no gap; each row's
    /// time must be its checkpoint's.
    pub(crate) async fn load(&self) -> Result<Vec<StoredEpoch>> {
        let epochs = sqlx::query("SELECT epoch, time_ms, checkpoint FROM kt_epochs ORDER BY epoch")
            .fetch_all(&self.pool)
            .await
            .map_err(Error::Store)?;
        let updates = sqlx::query(
            "SELECT epoch, position, did, record FROM kt_updates ORDER BY epoch, position",
        )
        .fetch_all(&self.pool)
        .await
        .map_err(Error::Store)?;

        let mut out: Vec<StoredEpoch> = Vec::with_capacity(epochs.len());
        for (expected, row) in (0u64..).zip(&epochs) {
            let epoch: i64 = row.try_get("epoch").map_err(Error::Store)?;
            let bad = |what| Error::Replay {
                epoch: expected,
                what,
            };
            if u64::try_from(epoch).ok() != Some(expected) {
                return Err(bad("the stored epochs are not contiguous from 0"));
            }
            let time_ms: i64 = row.try_get("time_ms").map_err(Error::Store)?;
            let text: String = row.try_get("checkpoint").map_err(Error::Store)?;
            let checkpoint: SignedCheckpoint = serde_json::from_str(&text)
                .map_err(|_| bad("the stored checkpoint does not parse"))?;
            if checkpoint.checkpoint.epoch != expected || checkpoint.checkpoint.time_ms != time_ms {
                return Err(bad("the stored checkpoint is not its row's"));
            }
            out.push(StoredEpoch {
                checkpoint,
                updates: Vec::new(),
            });
        }
        let mut last: Option<(i64, i64)> = None;
        for row in &updates {
            let epoch: i64 = row.try_get("epoch").map_err(Error::Store)?;
            let position: i64 = row.try_get("position").map_err(Error::Store)?;
            let at = u64::try_from(epoch).unwrap_or(u64::MAX);
            let bad = |what| Error::Replay { epoch: at, what };
            let expected_position = match last {
                Some((e, p)) if e == epoch => p.checked_add(1),
                _ => Some(0),
            };
            if expected_position != Some(position) {
                return Err(bad("the stored updates of an epoch are not contiguous"));
            }
            last = Some((epoch, position));
            let did: String = row.try_get("did").map_err(Error::Store)?;
            let record: String = row.try_get("record").map_err(Error::Store)?;
            let record = hex::decode(record).map_err(|_| bad("a stored record is not hex"))?;
            usize::try_from(epoch)
                .ok()
                .and_then(|e| out.get_mut(e))
                .ok_or(bad("an update belongs to no stored epoch"))?
                .updates
                .push((did, record));
        }
        Ok(out)
    }

    /// Stores the directory key and epoch 0 of a new log, in one transaction.
    pub(crate) async fn start(
        &self,
        directory: &DirectoryPublicKey,
        genesis: &SignedCheckpoint,
    ) -> Result<()> {
        let key = serde_json::to_string(directory)
            .map_err(|_| Error::Inconsistent("the directory key did not encode"))?;
        let mut tx = self.pool.begin().await.map_err(Error::Store)?;
        sqlx::query("INSERT INTO kt_directory (id, public_key) VALUES (1, $1)")
            .bind(key)
            .execute(&mut *tx)
            .await
            .map_err(Error::Store)?;
        insert_epoch(&mut tx, genesis, &[]).await?;
        tx.commit().await.map_err(Error::Store)
    }

    /// Appends one epoch: its checkpoint and its updates, in one transaction. Fails if the
    /// epoch is stored already (another writer).
    pub(crate) async fn append(
        &self,
        checkpoint: &SignedCheckpoint,
        updates: &[(String, Vec<u8>)],
    ) -> Result<()> {
        let mut tx = self.pool.begin().await.map_err(Error::Store)?;
        insert_epoch(&mut tx, checkpoint, updates).await?;
        tx.commit().await.map_err(Error::Store)
    }

    /// Closes the pool (waits for connections to finish).
    pub async fn close(&self) {
        self.pool.close().await;
    }
}

async fn insert_epoch(
    tx: &mut sqlx::Transaction<'_, sqlx::Any>,
    checkpoint: &SignedCheckpoint,
    updates: &[(String, Vec<u8>)],
) -> Result<()> {
    let epoch = i64::try_from(checkpoint.checkpoint.epoch)
        .map_err(|_| Error::Inconsistent("epoch out of range"))?;
    let json = serde_json::to_string(checkpoint)
        .map_err(|_| Error::Inconsistent("a checkpoint did not encode"))?;
    sqlx::query("INSERT INTO kt_epochs (epoch, time_ms, checkpoint) VALUES ($1, $2, $3)")
        .bind(epoch)
        .bind(checkpoint.checkpoint.time_ms)
        .bind(json)
        .execute(&mut **tx)
        .await
        .map_err(Error::Store)?;
    for (position, (did, record)) in (0i64..).zip(updates) {
        sqlx::query(
            "INSERT INTO kt_updates (epoch, position, did, record) VALUES ($1, $2, $3, $4)",
        )
        .bind(epoch)
        .bind(position)
        .bind(did.clone())
        .bind(hex::encode(record))
        .execute(&mut **tx)
        .await
        .map_err(Error::Store)?;
    }
    Ok(())
}

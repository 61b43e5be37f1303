//! The oracle's prekeys: published by its agent, claimed by users, oldest one-time prekey
//! first, each one-time prekey handed out at most once (the row is deleted by the statement
//! that reads it); the last-resort prekey when none is left.

use oracle_calls_proto::{Did, PrekeyStock, SignedPrekey};
use sha2::{Digest as _, Sha256};
use sqlx::Row as _;
use sqlx::any::AnyRow;

use super::{Backend, Store};
use crate::{Error, Result};

/// Most unclaimed one-time prekeys the server holds for its oracle.
pub const MAX_UNCLAIMED_ONE_TIME: u64 = 1000;

/// What [`Store::publish_prekeys`] did. Unless [`Published::Stored`], nothing was stored.
#[derive(Clone, PartialEq, Eq, Debug)]
pub enum Published {
    /// Every prekey was stored; the stock after it.
    Stored(PrekeyStock),
    /// This `prekeyId` is already in the store.
    Duplicate(String),
    /// The one-time prekeys would exceed [`MAX_UNCLAIMED_ONE_TIME`].
    Full {
        /// Unclaimed one-time prekeys held now.
        held: u64,
        /// One-time prekeys in the request.
        adding: u64,
    },
}

/// What [`Store::claim_prekey`] handed out.
#[derive(Clone, PartialEq, Eq, Debug)]
pub enum Claimed {
    /// The oldest unclaimed one-time prekey, now removed from the store.
    OneTime(SignedPrekey),
    /// No one-time prekey was left: the last-resort prekey (kept).
    LastResort(SignedPrekey),
}

impl Claimed {
    /// The prekey handed out.
    pub fn prekey(&self) -> &SignedPrekey {
        match self {
            Self::OneTime(p) | Self::LastResort(p) => p,
        }
    }

    /// `one_time` or `last_resort` (metrics and logs).
    pub fn kind(&self) -> &'static str {
        match self {
            Self::OneTime(_) => "one_time",
            Self::LastResort(_) => "last_resort",
        }
    }
}

const CLAIM_ONE_TIME_SQLITE: &str = "DELETE FROM prekeys WHERE id = (
        SELECT id FROM prekeys WHERE oracle_did = $1 AND last_resort = 0 ORDER BY id LIMIT 1)
     RETURNING prekey_id, public_key, signature, last_resort";

// A claim skips rows other claims have locked (and are deleting), so concurrent claims never
// wait on each other and never get the same row.
const CLAIM_ONE_TIME_POSTGRES: &str = "DELETE FROM prekeys WHERE id = (
        SELECT id FROM prekeys WHERE oracle_did = $1 AND last_resort = 0 ORDER BY id LIMIT 1
        FOR UPDATE SKIP LOCKED)
     RETURNING prekey_id, public_key, signature, last_resort";

impl Store {
    /// Stores `prekeys` (already checked for shape) for `oracle`, all or nothing, in request
    /// order (the order claims hand them out). A last-resort prekey among them replaces the
    /// one stored before. Publishes for one oracle run one at a time (SQLite: a write
    /// transaction from its start; PostgreSQL: an advisory lock of the oracle), so the cap and
    /// the duplicate check hold under concurrent publishes.
    ///
    /// # Errors
    /// [`Error::Store`]; then nothing is stored.
    pub async fn publish_prekeys(
        &self,
        oracle: &Did,
        prekeys: &[SignedPrekey],
        now_ms: i64,
    ) -> Result<Published> {
        let mut tx = match self.backend {
            Backend::Sqlite => self.pool.begin_with("BEGIN IMMEDIATE").await?,
            Backend::Postgres => {
                let mut tx = self.pool.begin().await?;
                sqlx::query("SELECT pg_advisory_xact_lock($1)")
                    .bind(lock_key(oracle))
                    .execute(&mut *tx)
                    .await?;
                tx
            }
        };
        if prekeys.is_empty() {
            let stock = stock_on(&mut tx, oracle).await?;
            return Ok(Published::Stored(stock));
        }
        let mut sql = String::from("SELECT prekey_id FROM prekeys WHERE prekey_id IN (");
        for i in 1..=prekeys.len() {
            if i > 1 {
                sql.push_str(", ");
            }
            sql.push_str(&format!("${i}"));
        }
        sql.push_str(") ORDER BY id LIMIT 1");
        let mut q = sqlx::query(sqlx::AssertSqlSafe(sql));
        for p in prekeys {
            q = q.bind(p.prekey_id.as_str());
        }
        if let Some(row) = q.fetch_optional(&mut *tx).await? {
            return Ok(Published::Duplicate(row.try_get("prekey_id")?));
        }
        let adding = count_u64(prekeys.iter().filter(|p| !p.last_resort).count())?;
        let held = stock_on(&mut tx, oracle).await?.one_time;
        if held.saturating_add(adding) > MAX_UNCLAIMED_ONE_TIME {
            return Ok(Published::Full { held, adding });
        }
        if prekeys.iter().any(|p| p.last_resort) {
            sqlx::query("DELETE FROM prekeys WHERE oracle_did = $1 AND last_resort = 1")
                .bind(oracle.as_str())
                .execute(&mut *tx)
                .await?;
        }
        for p in prekeys {
            let done = sqlx::query(
                "INSERT INTO prekeys (oracle_did, prekey_id, public_key, signature, last_resort,
                     created_at)
                 VALUES ($1, $2, $3, $4, $5, $6)",
            )
            .bind(oracle.as_str())
            .bind(p.prekey_id.as_str())
            .bind(p.public_key.as_str())
            .bind(p.signature.as_str())
            .bind(i64::from(p.last_resort))
            .bind(now_ms)
            .execute(&mut *tx)
            .await;
            match done {
                Ok(_) => {}
                // The same id published for another oracle sharing this database.
                Err(sqlx::Error::Database(e)) if e.is_unique_violation() => {
                    return Ok(Published::Duplicate(p.prekey_id.clone()));
                }
                Err(e) => return Err(e.into()),
            }
        }
        let stock = stock_on(&mut tx, oracle).await?;
        tx.commit().await?;
        Ok(Published::Stored(stock))
    }

    /// How many one-time prekeys `oracle` has unclaimed, and whether it has a last-resort one.
    ///
    /// # Errors
    /// [`Error::Store`].
    pub async fn prekey_stock(&self, oracle: &Did) -> Result<PrekeyStock> {
        let mut conn = self.pool.acquire().await?;
        stock_on(&mut conn, oracle).await
    }

    /// Hands out `oracle`'s oldest unclaimed one-time prekey, deleting it in the same
    /// statement (never handed out twice, also under concurrent claims), or, when none is left,
    /// its last-resort prekey (kept). `None` when it has neither.
    ///
    /// # Errors
    /// [`Error::Store`], or [`Error::Internal`] for a row that does not parse.
    pub async fn claim_prekey(&self, oracle: &Did) -> Result<Option<Claimed>> {
        let claim = match self.backend {
            Backend::Sqlite => CLAIM_ONE_TIME_SQLITE,
            Backend::Postgres => CLAIM_ONE_TIME_POSTGRES,
        };
        // fetch_all: the statement runs to its end (at most one row).
        let rows = sqlx::query(claim)
            .bind(oracle.as_str())
            .fetch_all(&self.pool)
            .await?;
        if let Some(row) = rows.first() {
            return Ok(Some(Claimed::OneTime(prekey_from_row(row)?)));
        }
        let row = sqlx::query(
            "SELECT prekey_id, public_key, signature, last_resort FROM prekeys
             WHERE oracle_did = $1 AND last_resort = 1",
        )
        .bind(oracle.as_str())
        .fetch_optional(&self.pool)
        .await?;
        row.as_ref()
            .map(|r| prekey_from_row(r).map(Claimed::LastResort))
            .transpose()
    }
}

async fn stock_on(conn: &mut sqlx::AnyConnection, oracle: &Did) -> Result<PrekeyStock> {
    let row = sqlx::query(
        "SELECT COUNT(CASE WHEN last_resort = 0 THEN 1 END) AS one_time,
                COUNT(CASE WHEN last_resort <> 0 THEN 1 END) AS last_resort
         FROM prekeys WHERE oracle_did = $1",
    )
    .bind(oracle.as_str())
    .fetch_one(&mut *conn)
    .await?;
    let one_time: i64 = row.try_get("one_time")?;
    let last_resort: i64 = row.try_get("last_resort")?;
    Ok(PrekeyStock {
        one_time: u64::try_from(one_time)
            .map_err(|_| Error::Internal("negative prekey count".into()))?,
        last_resort: last_resort > 0,
    })
}

fn count_u64(n: usize) -> Result<u64> {
    u64::try_from(n).map_err(|_| Error::Internal("prekey count overflows".into()))
}

/// The PostgreSQL advisory lock of `oracle`'s publishes: the first 8 bytes of a SHA-256 of
/// its DID under this purpose, so servers of one oracle sharing a database agree on it.
fn lock_key(oracle: &Did) -> i64 {
    let digest: [u8; 32] = Sha256::new()
        .chain_update(b"oracle-calls/prekeys/publish\0")
        .chain_update(oracle.as_str().as_bytes())
        .finalize()
        .into();
    let (first, _) = digest.split_first_chunk::<8>().unwrap_or((&[0; 8], &[]));
    i64::from_be_bytes(*first)
}

fn prekey_from_row(row: &AnyRow) -> Result<SignedPrekey> {
    let last_resort: i64 = row.try_get("last_resort")?;
    Ok(SignedPrekey {
        prekey_id: row.try_get("prekey_id")?,
        public_key: row.try_get("public_key")?,
        signature: row.try_get("signature")?,
        last_resort: last_resort != 0,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lock_keys_are_per_oracle_and_stable() {
        let a = Did::parse("did:ixo:oracle1").unwrap();
        let b = Did::parse("did:ixo:oracle2").unwrap();
        assert_eq!(lock_key(&a), lock_key(&a));
        assert_ne!(lock_key(&a), lock_key(&b));
    }
}

//! API keys of oracle agents and the audit log of key requests.

use oracle_calls_proto::{CallId, Did};
use sqlx::Row;

use super::Store;
use crate::{Error, Result};

/// One stored API key (never the key itself: only its HMAC).
#[derive(Clone, PartialEq, Eq, Debug)]
pub struct ApiKeyRecord {
    /// The public part of the key, also its primary key.
    pub key_id: String,
    /// The one oracle this key may act for.
    pub oracle_did: Did,
    /// A note from the operator.
    pub label: String,
    /// Lower-case hex HMAC-SHA256 of the whole key under the pepper.
    pub key_hash: String,
    /// Unix ms.
    pub created_at: i64,
    /// Unix ms; a revoked key never authenticates again.
    pub revoked_at: Option<i64>,
}

/// One audited key request.
#[derive(Clone, PartialEq, Eq, Debug)]
pub struct KeyRequestRecord {
    /// The call asked for.
    pub call_id: String,
    /// The API key that asked.
    pub key_id: String,
    /// The peer address.
    pub remote: String,
    /// `granted` or the refusal code.
    pub outcome: String,
    /// Unix ms.
    pub at: i64,
}

impl Store {
    /// Stores a new API key record.
    ///
    /// # Errors
    /// [`Error::Store`] (also when the id exists).
    pub async fn insert_api_key(&self, rec: &ApiKeyRecord) -> Result<()> {
        sqlx::query(
            "INSERT INTO api_keys (key_id, oracle_did, label, key_hash, created_at, revoked_at)
             VALUES ($1, $2, $3, $4, $5, NULL)",
        )
        .bind(rec.key_id.as_str())
        .bind(rec.oracle_did.as_str())
        .bind(rec.label.as_str())
        .bind(rec.key_hash.as_str())
        .bind(rec.created_at)
        .execute(self.pool())
        .await?;
        Ok(())
    }

    /// The API key with this id.
    ///
    /// # Errors
    /// [`Error::Store`].
    pub async fn api_key(&self, key_id: &str) -> Result<Option<ApiKeyRecord>> {
        let row = sqlx::query(
            "SELECT key_id, oracle_did, label, key_hash, created_at, revoked_at
             FROM api_keys WHERE key_id = $1",
        )
        .bind(key_id)
        .fetch_optional(self.pool())
        .await?;
        row.as_ref().map(api_key_from_row).transpose()
    }

    /// Every API key, oldest first.
    ///
    /// # Errors
    /// [`Error::Store`].
    pub async fn api_keys(&self) -> Result<Vec<ApiKeyRecord>> {
        let rows = sqlx::query(
            "SELECT key_id, oracle_did, label, key_hash, created_at, revoked_at
             FROM api_keys ORDER BY created_at, key_id",
        )
        .fetch_all(self.pool())
        .await?;
        rows.iter().map(api_key_from_row).collect()
    }

    /// Revokes a key. Returns false when there is no such (unrevoked) key.
    ///
    /// # Errors
    /// [`Error::Store`].
    pub async fn revoke_api_key(&self, key_id: &str, now_ms: i64) -> Result<bool> {
        let done = sqlx::query(
            "UPDATE api_keys SET revoked_at = $1 WHERE key_id = $2 AND revoked_at IS NULL",
        )
        .bind(now_ms)
        .bind(key_id)
        .execute(self.pool())
        .await?;
        Ok(done.rows_affected() == 1)
    }

    /// Audits one key request.
    ///
    /// # Errors
    /// [`Error::Store`].
    pub async fn record_key_request(
        &self,
        call_id: &CallId,
        key_id: &str,
        remote: &str,
        outcome: &str,
        now_ms: i64,
    ) -> Result<()> {
        sqlx::query(
            "INSERT INTO key_requests (call_id, key_id, remote, outcome, at)
             VALUES ($1, $2, $3, $4, $5)",
        )
        .bind(call_id.as_str())
        .bind(key_id)
        .bind(remote)
        .bind(outcome)
        .bind(now_ms)
        .execute(self.pool())
        .await?;
        Ok(())
    }

    /// Audits several key requests in one transaction (one commit).
    ///
    /// # Errors
    /// [`Error::Store`]; then none of them is stored.
    pub async fn record_key_requests(&self, records: &[&KeyRequestRecord]) -> Result<()> {
        if records.is_empty() {
            return Ok(());
        }
        let mut sql =
            String::from("INSERT INTO key_requests (call_id, key_id, remote, outcome, at) VALUES ");
        for i in 0..records.len() {
            let n = i * 5;
            if i > 0 {
                sql.push_str(", ");
            }
            sql.push_str(&format!(
                "(${}, ${}, ${}, ${}, ${})",
                n + 1,
                n + 2,
                n + 3,
                n + 4,
                n + 5
            ));
        }
        let mut q = sqlx::query(sqlx::AssertSqlSafe(sql));
        for r in records {
            q = q
                .bind(r.call_id.as_str())
                .bind(r.key_id.as_str())
                .bind(r.remote.as_str())
                .bind(r.outcome.as_str())
                .bind(r.at);
        }
        q.execute(self.pool()).await?;
        Ok(())
    }

    /// The audit log of one call, oldest first.
    ///
    /// # Errors
    /// [`Error::Store`].
    pub async fn key_requests(&self, call_id: &CallId) -> Result<Vec<KeyRequestRecord>> {
        let rows = sqlx::query(
            "SELECT call_id, key_id, remote, outcome, at FROM key_requests
             WHERE call_id = $1 ORDER BY id",
        )
        .bind(call_id.as_str())
        .fetch_all(self.pool())
        .await?;
        rows.iter()
            .map(|r| {
                Ok(KeyRequestRecord {
                    call_id: r.try_get("call_id")?,
                    key_id: r.try_get("key_id")?,
                    remote: r.try_get("remote")?,
                    outcome: r.try_get("outcome")?,
                    at: r.try_get("at")?,
                })
            })
            .collect()
    }
}

fn api_key_from_row(row: &sqlx::any::AnyRow) -> Result<ApiKeyRecord> {
    let did: String = row.try_get("oracle_did")?;
    Ok(ApiKeyRecord {
        key_id: row.try_get("key_id")?,
        oracle_did: Did::parse(&did)
            .map_err(|_| Error::Internal("stored API key has a bad oracle DID".into()))?,
        label: row.try_get("label")?,
        key_hash: row.try_get("key_hash")?,
        created_at: row.try_get("created_at")?,
        revoked_at: row.try_get("revoked_at")?,
    })
}

//! What the servers of one oracle share beyond the calls: their bot devices and the LiveKit
//! webhooks claimed for handling.

use oracle_calls_proto::{BotDevice, Did};
use sqlx::Row as _;

use super::Store;
use crate::{Error, Result};

impl Store {
    /// Registers a server's bot device for `oracle` (idempotent: a restart of the same device
    /// only updates its start time). A device id that comes back with another Ed25519 key is
    /// refused: a Matrix device's identity key never changes, so the store or the device is not
    /// what it seems.
    ///
    /// # Errors
    /// [`Error::Config`] for a changed key, [`Error::Store`].
    pub async fn register_bot_device(
        &self,
        oracle: &Did,
        matrix_user_id: &str,
        device: &BotDevice,
        now_ms: i64,
    ) -> Result<()> {
        sqlx::query(
            "INSERT INTO bot_devices (oracle_did, matrix_user_id, device_id, ed25519,
                 registered_at, last_started_at)
             VALUES ($1, $2, $3, $4, $5, $5)
             ON CONFLICT (oracle_did, matrix_user_id, device_id)
             DO UPDATE SET last_started_at = $5",
        )
        .bind(oracle.as_str())
        .bind(matrix_user_id)
        .bind(device.device_id.as_str())
        .bind(device.ed25519.as_str())
        .bind(now_ms)
        .execute(self.pool())
        .await?;
        let row = sqlx::query(
            "SELECT ed25519 FROM bot_devices
             WHERE oracle_did = $1 AND matrix_user_id = $2 AND device_id = $3",
        )
        .bind(oracle.as_str())
        .bind(matrix_user_id)
        .bind(device.device_id.as_str())
        .fetch_one(self.pool())
        .await?;
        let stored: String = row.try_get("ed25519")?;
        if stored != device.ed25519 {
            return Err(Error::Config(format!(
                "bot device {} is registered with another Ed25519 key than it has now",
                device.device_id
            )));
        }
        Ok(())
    }

    /// Every bot device registered for `oracle` under its bot user, first registered first.
    ///
    /// # Errors
    /// [`Error::Store`].
    pub async fn bot_devices(&self, oracle: &Did, matrix_user_id: &str) -> Result<Vec<BotDevice>> {
        let rows = sqlx::query(
            "SELECT device_id, ed25519 FROM bot_devices
             WHERE oracle_did = $1 AND matrix_user_id = $2
             ORDER BY registered_at, device_id",
        )
        .bind(oracle.as_str())
        .bind(matrix_user_id)
        .fetch_all(self.pool())
        .await?;
        rows.iter()
            .map(|r| {
                Ok(BotDevice {
                    device_id: r.try_get("device_id")?,
                    ed25519: r.try_get("ed25519")?,
                })
            })
            .collect()
    }

    /// Claims LiveKit webhook `event_id` for handling, across every server on this database:
    /// true for the one claim that inserted it, false for a replay or a delivery another
    /// server is handling or has handled. The claim is kept until `valid_until` (Unix seconds,
    /// when the event's signature expires); expired claims are deleted first.
    ///
    /// # Errors
    /// [`Error::Store`].
    pub async fn claim_webhook(
        &self,
        event_id: &str,
        valid_until: i64,
        now_secs: i64,
    ) -> Result<bool> {
        sqlx::query("DELETE FROM webhook_claims WHERE valid_until < $1")
            .bind(now_secs)
            .execute(self.pool())
            .await?;
        let done = sqlx::query(
            "INSERT INTO webhook_claims (event_id, valid_until) VALUES ($1, $2)
             ON CONFLICT DO NOTHING",
        )
        .bind(event_id)
        .bind(valid_until)
        .execute(self.pool())
        .await?;
        Ok(done.rows_affected() == 1)
    }

    /// Gives up the claim on `event_id` after its handling failed, so that LiveKit's retry (to
    /// any server) is handled.
    ///
    /// # Errors
    /// [`Error::Store`].
    pub async fn release_webhook(&self, event_id: &str) -> Result<()> {
        sqlx::query("DELETE FROM webhook_claims WHERE event_id = $1")
            .bind(event_id)
            .execute(self.pool())
            .await?;
        Ok(())
    }
}

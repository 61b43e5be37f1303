//! Token buckets that several servers share (`limits.cluster_wide`): one row per bucket,
//! refilled and taken from in one statement, on the database's clock.

use std::time::Duration;

use sqlx::Row as _;

use super::{Backend, Store};
use crate::{Error, Result};

impl Store {
    /// Takes one token from the shared bucket `bucket` of limit `scope` (`burst` tokens,
    /// refilled at `per_sec`); when none is left, the time until one is. Concurrent takes of
    /// one bucket, from any server, are serialized by its row.
    ///
    /// # Errors
    /// [`Error::Store`], and [`Error::Config`] on SQLite (one server: its buckets stay in
    /// memory).
    pub async fn take_shared_token(
        &self,
        scope: &str,
        bucket: &str,
        per_sec: f64,
        burst: u32,
    ) -> Result<std::result::Result<(), Duration>> {
        if self.backend() != Backend::Postgres {
            return Err(Error::Config("shared rate buckets need PostgreSQL".into()));
        }
        if per_sec <= 0.0 {
            return Ok(Ok(()));
        }
        // $3 burst, $4 per second. The bucket's tokens now are `LEAST($3, …)`: the old ones
        // plus the refill since the last take, at most a full bucket. A take leaves one less,
        // a refusal leaves them as they are. A new row is a full bucket less this take. A
        // bucket untouched for `burst / per_sec` is full whatever it held, so that is when its
        // row may go (`full_at_ms`). The time is the database's (`clock_timestamp()`, Unix
        // ms): the servers' clocks never matter.
        let sql = "INSERT INTO rate_buckets AS b (scope, bucket, tokens, at_ms, full_at_ms, taken)
             SELECT $1, $2, $3 - 1.0, n, n + $3 * 1000.0 / $4, TRUE
             FROM (SELECT CAST(EXTRACT(EPOCH FROM clock_timestamp()) * 1000.0
                               AS DOUBLE PRECISION) AS n) AS t
             ON CONFLICT (scope, bucket) DO UPDATE SET
                 taken = LEAST($3, b.tokens
                             + GREATEST(EXCLUDED.at_ms - b.at_ms, 0.0) * $4 / 1000.0) >= 1.0,
                 tokens = LEAST($3, b.tokens
                             + GREATEST(EXCLUDED.at_ms - b.at_ms, 0.0) * $4 / 1000.0)
                          - CASE WHEN LEAST($3, b.tokens
                             + GREATEST(EXCLUDED.at_ms - b.at_ms, 0.0) * $4 / 1000.0) >= 1.0
                            THEN 1.0 ELSE 0.0 END,
                 at_ms = EXCLUDED.at_ms,
                 full_at_ms = EXCLUDED.full_at_ms
             RETURNING taken, tokens";
        let row = sqlx::query(sql)
            .bind(scope)
            .bind(bucket)
            .bind(f64::from(burst.max(1)))
            .bind(per_sec)
            .fetch_one(self.pool())
            .await?;
        let taken: bool = row.try_get(0)?;
        let tokens: f64 = row.try_get(1)?;
        Ok(if taken {
            Ok(())
        } else {
            Err(Duration::from_secs_f64(
                ((1.0 - tokens) / per_sec).clamp(0.0, 86_400.0),
            ))
        })
    }

    /// Deletes the shared buckets that are full again (the same as no bucket); how many.
    ///
    /// # Errors
    /// [`Error::Store`].
    pub async fn sweep_shared_buckets(&self) -> Result<u64> {
        if self.backend() != Backend::Postgres {
            return Ok(0);
        }
        let done = sqlx::query(
            "DELETE FROM rate_buckets WHERE full_at_ms
                 < CAST(EXTRACT(EPOCH FROM clock_timestamp()) * 1000.0 AS DOUBLE PRECISION)",
        )
        .execute(self.pool())
        .await?;
        Ok(done.rows_affected())
    }

    /// The tokens stored for one shared bucket as of its last take (`None`: no row, the
    /// same as a full bucket).
    ///
    /// # Errors
    /// [`Error::Store`].
    pub async fn shared_bucket(&self, scope: &str, bucket: &str) -> Result<Option<f64>> {
        let row = sqlx::query("SELECT tokens FROM rate_buckets WHERE scope = $1 AND bucket = $2")
            .bind(scope)
            .bind(bucket)
            .fetch_optional(self.pool())
            .await?;
        row.map(|r| r.try_get(0)).transpose().map_err(Into::into)
    }
}

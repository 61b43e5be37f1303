//! Room claims of the early join (docs/PROTOCOL.md §6.9): which user may take a LiveKit room
//! into its call before the call is stored.

use oracle_calls_proto::Did;
use sqlx::Row as _;

use super::Store;
use crate::Result;

/// What [`Store::claim_room`] did.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum Claim {
    /// The room is now this user's.
    New,
    /// The room was this user's already (a repeated claim), since `created_at_ms`.
    Again {
        /// When the claim was made (Unix ms).
        created_at_ms: i64,
    },
    /// Another user (or another oracle's user) claimed the room.
    Taken,
    /// The user holds `max_open` claims younger than the claim lifetime already.
    TooMany,
}

/// One stored claim.
#[derive(Clone, PartialEq, Eq, Debug)]
pub struct ClaimRecord {
    /// The oracle whose server took the claim.
    pub oracle_did: String,
    /// The claiming Matrix user.
    pub user_id: String,
    /// When (Unix ms).
    pub created_at_ms: i64,
}

impl ClaimRecord {
    /// Whether this is `user`'s claim with `oracle`.
    pub fn is_of(&self, oracle: &Did, user: &str) -> bool {
        self.oracle_did == oracle.as_str() && self.user_id == user
    }
}

impl Store {
    /// Claims LiveKit room `room` for `user` of `oracle`, unless someone else holds it or
    /// `user` already holds `max_open` claims with `oracle` made since `open_since_ms` (Unix
    /// ms). Across several servers on one database, racing claims of one user can overshoot
    /// `max_open` by the number of servers less one (the count and the insert are two
    /// statements); a room is never held by two users (its name is the key).
    ///
    /// # Errors
    /// [`crate::Error::Store`].
    pub async fn claim_room(
        &self,
        oracle: &Did,
        room: &str,
        user: &str,
        now_ms: i64,
        open_since_ms: i64,
        max_open: usize,
    ) -> Result<Claim> {
        let held = |c: Option<ClaimRecord>| match c {
            Some(c) if c.is_of(oracle, user) => Claim::Again {
                created_at_ms: c.created_at_ms,
            },
            _ => Claim::Taken,
        };
        if let Some(c) = self.room_claim(room).await? {
            return Ok(held(Some(c)));
        }
        let open: i64 = sqlx::query(
            "SELECT COUNT(*) FROM room_claims
             WHERE oracle_did = $1 AND user_id = $2 AND created_at >= $3",
        )
        .bind(oracle.as_str())
        .bind(user)
        .bind(open_since_ms)
        .fetch_one(self.pool())
        .await?
        .try_get(0)?;
        if usize::try_from(open).unwrap_or(usize::MAX) >= max_open {
            return Ok(Claim::TooMany);
        }
        let inserted = sqlx::query(
            "INSERT INTO room_claims (room_name, oracle_did, user_id, created_at)
             VALUES ($1, $2, $3, $4)
             ON CONFLICT (room_name) DO NOTHING",
        )
        .bind(room)
        .bind(oracle.as_str())
        .bind(user)
        .bind(now_ms)
        .execute(self.pool())
        .await?
        .rows_affected();
        if inserted == 1 {
            return Ok(Claim::New);
        }
        // A concurrent claim of the same name won the insert.
        Ok(held(self.room_claim(room).await?))
    }

    /// The claim on `room`, if any.
    ///
    /// # Errors
    /// [`crate::Error::Store`].
    pub async fn room_claim(&self, room: &str) -> Result<Option<ClaimRecord>> {
        let row = sqlx::query(
            "SELECT oracle_did, user_id, created_at FROM room_claims WHERE room_name = $1",
        )
        .bind(room)
        .fetch_optional(self.pool())
        .await?;
        Ok(match row {
            Some(r) => Some(ClaimRecord {
                oracle_did: r.try_get("oracle_did")?,
                user_id: r.try_get("user_id")?,
                created_at_ms: r.try_get("created_at")?,
            }),
            None => None,
        })
    }

    /// Takes `user`'s claim on `room` with `oracle` out of the store (its call's sync adopts
    /// the room): true when this call removed it, so that no sweep can take it any more.
    ///
    /// # Errors
    /// [`crate::Error::Store`].
    pub async fn take_room_claim(&self, oracle: &Did, room: &str, user: &str) -> Result<bool> {
        let row = sqlx::query(
            "DELETE FROM room_claims WHERE room_name = $1 AND oracle_did = $2 AND user_id = $3
             RETURNING room_name",
        )
        .bind(room)
        .bind(oracle.as_str())
        .bind(user)
        .fetch_optional(self.pool())
        .await?;
        Ok(row.is_some())
    }

    /// Removes and returns `oracle`'s claims made before `before_ms` (Unix ms) that no call
    /// took: `(room, user)` pairs. Each claim is returned to one caller only, whichever server
    /// asks.
    ///
    /// # Errors
    /// [`crate::Error::Store`].
    pub async fn take_expired_room_claims(
        &self,
        oracle: &Did,
        before_ms: i64,
    ) -> Result<Vec<(String, String)>> {
        let rows = sqlx::query(
            "DELETE FROM room_claims WHERE oracle_did = $1 AND created_at < $2
             RETURNING room_name, user_id",
        )
        .bind(oracle.as_str())
        .bind(before_ms)
        .fetch_all(self.pool())
        .await?;
        rows.iter()
            .map(|r| Ok((r.try_get("room_name")?, r.try_get("user_id")?)))
            .collect()
    }
}

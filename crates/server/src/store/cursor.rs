//! `GET /calls`: one user's calls, newest first, keyset pagination with an opaque cursor.

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use oracle_calls_proto::{CallStatus, SessionId};

use super::{CallRecord, Store, call_from_row};
use crate::{Error, Result};

/// Largest page.
pub const MAX_PAGE: u32 = 100;
/// Page size when the client names none.
pub const DEFAULT_PAGE: u32 = 20;

/// Filters and position of one page.
#[derive(Clone, PartialEq, Eq, Debug, Default)]
pub struct ListFilter {
    /// Only this status.
    pub status: Option<CallStatus>,
    /// Only this session.
    pub session_id: Option<SessionId>,
    /// From a previous page's `nextCursor`.
    pub cursor: Option<String>,
    /// Page size (capped at [`MAX_PAGE`]).
    pub limit: Option<u32>,
}

impl Store {
    /// One page of `sender`'s calls, newest first, and the cursor of the next page.
    ///
    /// # Errors
    /// [`Error::BadRequest`] for a malformed cursor, [`Error::Store`].
    pub async fn list_calls(
        &self,
        sender: &str,
        filter: &ListFilter,
    ) -> Result<(Vec<CallRecord>, Option<String>)> {
        let limit = filter.limit.unwrap_or(DEFAULT_PAGE).clamp(1, MAX_PAGE);
        let (after_created, after_id) = match &filter.cursor {
            Some(c) => {
                let (t, id) = decode_cursor(c)?;
                (Some(t), Some(id))
            }
            None => (None, None),
        };
        let rows = sqlx::query(
            "SELECT call_id, matrix_room_id, sender, content_json, status, call_ended_at, reason,
                    key_blocked, created_at
             FROM calls
             WHERE sender = $1
               AND ($2 IS NULL OR status = $2)
               AND ($3 IS NULL OR session_id = $3)
               AND ($4 IS NULL OR created_at < $4 OR (created_at = $4 AND call_id < $5))
             ORDER BY created_at DESC, call_id DESC
             LIMIT $6",
        )
        .bind(sender)
        .bind(filter.status.map(|s| s.as_str().to_owned()))
        .bind(filter.session_id.as_ref().map(|s| s.as_str().to_owned()))
        .bind(after_created)
        .bind(after_id)
        .bind(i64::from(limit) + 1)
        .fetch_all(self.pool())
        .await?;
        let mut calls = rows.iter().map(call_from_row).collect::<Result<Vec<_>>>()?;
        let next = if calls.len() > limit as usize {
            calls.truncate(limit as usize);
            calls
                .last()
                .map(|c| encode_cursor(c.created_at, c.call_id.as_str()))
        } else {
            None
        };
        Ok((calls, next))
    }
}

fn encode_cursor(created_at: i64, call_id: &str) -> String {
    URL_SAFE_NO_PAD.encode(format!("{created_at}|{call_id}"))
}

fn decode_cursor(c: &str) -> Result<(i64, String)> {
    let bad = || Error::BadRequest("cursor is not one this server issued".into());
    let bytes = URL_SAFE_NO_PAD.decode(c).map_err(|_| bad())?;
    let text = String::from_utf8(bytes).map_err(|_| bad())?;
    let (t, id) = text.split_once('|').ok_or_else(bad)?;
    Ok((t.parse().map_err(|_| bad())?, id.to_owned()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cursor_round_trips_and_rejects_garbage() {
        let c = encode_cursor(1_700_000_000_000, "$e@r");
        assert_eq!(
            decode_cursor(&c).unwrap(),
            (1_700_000_000_000, "$e@r".into())
        );
        assert!(decode_cursor("!!").is_err());
        assert!(decode_cursor(&URL_SAFE_NO_PAD.encode("x|y")).is_err());
    }
}

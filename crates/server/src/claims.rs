//! The early join (docs/PROTOCOL.md §6.9): a user claims the LiveKit room of the call it is
//! placing and joins it while its call event travels through Matrix; the call's sync adopts
//! the room ([`crate::livekit::LiveKit::open_call_room`]). Nothing about the call is decided
//! here: the room carries a claim marker, not a call id, until the sync has checked the event,
//! so no agent is dispatched into it, no webhook about it ends a call, and nobody but the
//! claiming user gets a token for it. Claims that no sync took within
//! `livekit.room_claim_ttl_secs` are swept, their rooms deleted.

use std::time::Duration;

use oracle_calls_proto::{RoomClaimResponse, RoomName, Timestamp};
use tracing::{debug, info, warn};

use crate::livekit::LiveRoom;
use crate::state::WeakState;
use crate::store::Claim;
use crate::{AppState, Error, Result, state};

/// The metadata of a room claimed by `user` (never a call id: those hold an `@` after an
/// event id, these start with `claim:`).
pub fn marker(user: &str) -> String {
    format!("claim:{user}")
}

/// `livekit.room_claim_ttl_secs` in milliseconds.
fn claim_ttl_ms(state: &AppState) -> i64 {
    i64::try_from(
        state
            .config()
            .livekit
            .room_claim_ttl_secs
            .saturating_mul(1000),
    )
    .unwrap_or(i64::MAX)
}

/// `POST /rooms/{roomId}/claim`: claims `room` for `user` and answers a join token for it.
///
/// # Errors
/// 404 when `livekit.early_join` is off; 409 when a call holds the room name, another user
/// claimed it, or a LiveKit room of that name is something else; 429 past
/// `limits.max_open_room_claims`; 502/503 LiveKit trouble.
pub async fn claim(state: &AppState, room: &RoomName, user: &str) -> Result<RoomClaimResponse> {
    let lk = &state.config().livekit;
    if !lk.early_join {
        return Err(Error::NoEarlyJoin);
    }
    if state.store().call_in_room(room.as_str()).await?.is_some() {
        return Err(Error::Conflict(
            "roomId is already the room of a call".into(),
        ));
    }
    let now = state::now();
    let ttl_ms = claim_ttl_ms(state);
    let created = match state
        .store()
        .claim_room(
            &state.config().oracle.did,
            room.as_str(),
            user,
            now.unix_millis(),
            now.unix_millis().saturating_sub(ttl_ms),
            state.config().limits.max_open_room_claims,
        )
        .await?
    {
        Claim::New => now.unix_millis(),
        Claim::Again { created_at_ms } => created_at_ms,
        Claim::Taken => {
            return Err(Error::Conflict("roomId is claimed by another user".into()));
        }
        Claim::TooMany => {
            return Err(Error::RateLimited {
                what: "too many claimed rooms not yet taken by a call",
                retry_after_secs: lk.room_claim_ttl_secs,
            });
        }
    };
    // The room as a call's room is opened, with the claim marker for its metadata and no
    // agent: found when this user's earlier claim made it, made when missing, 409 otherwise.
    state
        .livekit()
        .open_call_room(room, None, &marker(user), None)
        .await?;
    let (token, token_expires_at) = state.livekit().join_token(room, user, now)?;
    let claim_expires_at = Timestamp::from_unix_millis(created.saturating_add(ttl_ms))
        .map_err(|e| Error::Internal(e.to_string()))?;
    state.metrics().call_event("room_claimed");
    info!(room = %room.as_str(), "room claimed for an early join");
    Ok(RoomClaimResponse {
        room_id: room.clone(),
        livekit_url: state.livekit().url().to_owned(),
        token,
        token_expires_at,
        claim_expires_at,
    })
}

/// How long a sync waits for a sweep that took its user's claim to delete the room.
const SWEEP_WAIT: Duration = Duration::from_secs(2);

/// The claim marker under which a call of `user` may adopt `room`, and the room as it then is
/// (`live`: looked up just before). The sync takes the user's claim out of the store, so the
/// room is its alone: the sweep deletes only rooms whose claims it took itself. When a sweep
/// took the claim first (it lapsed), the room may still carry this user's marker while the
/// sweep deletes it: the sync waits for that (at most [`SWEEP_WAIT`]) and then makes the room
/// afresh; a room still there after the wait (its deletion failed, or an earlier adoption of
/// it did after taking the claim) was made for this user and no one else may take it, so the
/// call adopts it. Another user's claim marker is never adopted.
///
/// # Errors
/// [`Error::Store`]; LiveKit errors.
pub(crate) async fn for_adoption(
    state: &AppState,
    room: &RoomName,
    user: &str,
    live: Option<LiveRoom>,
) -> Result<(Option<String>, Option<LiveRoom>)> {
    let mine = marker(user);
    if state
        .store()
        .take_room_claim(&state.config().oracle.did, room.as_str(), user)
        .await?
    {
        return Ok((Some(mine), live));
    }
    if live.as_ref().is_none_or(|l| l.metadata != mine) {
        return Ok((None, live));
    }
    let deadline = tokio::time::Instant::now() + SWEEP_WAIT;
    loop {
        tokio::time::sleep(Duration::from_millis(100)).await;
        let now = state.livekit().room(room).await?;
        if now.as_ref().is_none_or(|l| l.metadata != mine) {
            debug!(room = %room.as_str(), "the lapsed claim's room was swept; making it afresh");
            return Ok((None, now));
        }
        if tokio::time::Instant::now() >= deadline {
            info!(room = %room.as_str(), "a room left with this user's claim marker: adopted");
            return Ok((Some(mine), now));
        }
    }
}

/// The call took the claimed room.
pub(crate) fn adopted(state: &AppState) {
    state.metrics().call_event("room_adopted");
}

/// Drops the claims older than `livekit.room_claim_ttl_secs` and deletes their rooms, where a
/// room still carries the claim marker (an adopted room carries its call id and is left
/// alone). Every server runs it; each claim is taken by one of them. The number of rooms
/// deleted.
///
/// # Errors
/// [`Error::Store`]; LiveKit errors are logged and the sweep goes on.
pub async fn sweep(state: &AppState) -> Result<usize> {
    let before = state::now()
        .unix_millis()
        .saturating_sub(claim_ttl_ms(state));
    let expired = state
        .store()
        .take_expired_room_claims(&state.config().oracle.did, before)
        .await?;
    let mut deleted = 0;
    for (room, user) in expired {
        let Ok(name) = RoomName::parse(&room) else {
            continue;
        };
        match state
            .livekit()
            .delete_call_room(&name, &marker(&user))
            .await
        {
            Ok(true) => {
                deleted += 1;
                state.metrics().call_event("room_claim_expired");
                info!(room = %room, "claimed room not taken by a call in time: deleted");
            }
            Ok(false) => debug!(room = %room, "expired claim's room is gone or a call's"),
            Err(e) => warn!(room = %room, error = %e, "could not delete an expired claim's room"),
        }
    }
    Ok(deleted)
}

/// Runs [`sweep`] every half claim lifetime (at most every 10 s) while the state lives.
pub(crate) fn spawn_sweeper(state: WeakState) {
    state.every(
        |s| {
            s.config().livekit.early_join.then(|| {
                Duration::from_millis(
                    (s.config().livekit.room_claim_ttl_secs.saturating_mul(500)).clamp(250, 10_000),
                )
            })
        },
        |s| async move {
            if let Err(e) = sweep(&s).await {
                warn!(error = %e, "sweeping expired room claims failed");
            }
        },
    );
}

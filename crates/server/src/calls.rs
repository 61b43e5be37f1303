//! Call operations shared by the HTTP API, the webhook and the Matrix listener.

use oracle_calls_proto::{CallId, CallReason, CallStatus, KeyResponse, UpdateRequest};
use tracing::{Instrument as _, debug, info, warn};

use crate::auth::Caller;
use crate::store::CallRecord;
use crate::{AppState, Error, Result, state};

/// `GET /calls/{callId}/key`: the wrapped key of one of this oracle's open calls that started
/// less than `validation.max_call_age_secs` ago. Every request is audited with its outcome.
///
/// # Errors
/// 404 unknown, 403 another oracle's call or a blocked key, 410 ended or older than the
/// maximum call age.
pub async fn key(
    state: &AppState,
    call_id: &CallId,
    key: &crate::store::ApiKeyRecord,
    remote: &str,
) -> Result<KeyResponse> {
    let store = state.store();
    let now = state::now().unix_millis();
    let outcome = match store.call(call_id).await? {
        None => Err(Error::NotFound),
        Some(rec) if rec.oracle_did() != &key.oracle_did => {
            Err(Error::Forbidden("this API key is for another oracle"))
        }
        Some(rec) if rec.status == CallStatus::Ended => Err(Error::Gone),
        Some(rec) if too_old(state, &rec, now) => Err(Error::TooOld),
        Some(rec) if rec.key_blocked => Err(Error::Forbidden(
            "the agent reported that the key could not be opened",
        )),
        Some(rec) => Ok(KeyResponse {
            encryption_key: rec.encryption_key().clone(),
            user_did: rec.content.user_did.clone(),
            oracle_did: rec.content.oracle_did.clone(),
            session_id: rec.content.session_id.clone(),
            room_id: rec.content.room_id.clone(),
            call_type: rec.content.call_type,
            key_derivation: rec.content.key_derivation,
            // The identity sync.rs issues the user's join token for.
            user_identity: rec.sender.clone(),
        }),
    };
    let label = match &outcome {
        Ok(_) => "granted",
        Err(e) => match e {
            Error::NotFound => "not_found",
            Error::Gone => "gone",
            Error::TooOld => "too_old",
            Error::Forbidden(_) => "forbidden",
            _ => "error",
        },
    };
    state
        .audit()
        .record(crate::store::KeyRequestRecord {
            call_id: call_id.as_str().to_owned(),
            key_id: key.key_id.clone(),
            remote: remote.to_owned(),
            outcome: label.to_owned(),
            at: now,
        })
        .await?;
    state.metrics().call_event(if outcome.is_ok() {
        "key_granted"
    } else {
        "key_refused"
    });
    info!(key_id = %key.key_id, outcome = label, "key request");
    outcome
}

/// `POST /calls/{callId}/update`: legal transitions only, idempotent, mirrored to Matrix. A
/// reason is recorded only while the call has not ended: an ended call's reason is final.
///
/// # Errors
/// 404, 403 (not the call's user or oracle), 409 illegal transition or a reason for an ended
/// call.
pub async fn update(
    state: &AppState,
    call_id: &CallId,
    caller: &Caller,
    req: &UpdateRequest,
) -> Result<CallRecord> {
    let rec = state.store().call(call_id).await?.ok_or(Error::NotFound)?;
    match caller {
        Caller::User(user) if *user == rec.sender => {}
        Caller::Agent(key) if key.oracle_did == *rec.oracle_did() => {}
        Caller::User(_) => return Err(Error::Forbidden("this is another user's call")),
        Caller::Agent(_) => return Err(Error::Forbidden("this API key is for another oracle")),
    }
    let now = state::now().unix_millis();
    let key_failed = req.reason == Some(CallReason::KeyDecryptionFailed);
    if key_failed && !matches!(caller, Caller::Agent(_)) {
        return Err(Error::Forbidden(
            "only the oracle's agent reports key failures",
        ));
    }
    let Some(to) = req.call_status else {
        // A reason alone: recorded only while the call is open (checked in the same write).
        if let Some(reason) = req.reason
            && !state.store().record_reason(call_id, reason, now).await?
        {
            return Err(Error::Conflict(
                "the call has ended; its reason can no longer change".into(),
            ));
        }
        return state.store().call(call_id).await?.ok_or(Error::NotFound);
    };
    // The reason is written with the transition only; ending an ended call again changes
    // nothing, its reason included. A user's hang-up is followed by the user's own `ended`
    // edit (PROTOCOL §10), so the bot's would only repeat it: it is left to the backlog, which
    // writes it only if the user's edit does not show up.
    let mirror = if matches!(caller, Caller::User(_))
        && to == CallStatus::Ended
        && req.reason == Some(CallReason::UserHangup)
        && state.config().matrix.leave_hangup_edit_to_user
    {
        Mirror::LeftToUser
    } else {
        Mirror::AtOnce
    };
    let record = transition_inner(state, rec, to, req.reason, mirror).await?;
    if key_failed {
        // The block holds whoever ended the call first.
        state.store().block_key(call_id, now).await?;
        return state.store().call(call_id).await?.ok_or(Error::NotFound);
    }
    Ok(record)
}

/// Moves a call to `to`: a no-op when it is there already, 409 when the lifecycle forbids it.
/// Ending deletes the LiveKit room; every change is mirrored to Matrix when the bot runs.
///
/// # Errors
/// [`Error::Conflict`], [`Error::Store`].
pub async fn transition(
    state: &AppState,
    rec: CallRecord,
    to: CallStatus,
    reason: Option<CallReason>,
) -> Result<CallRecord> {
    transition_inner(state, rec, to, reason, Mirror::AtOnce).await
}

/// As [`transition`], without writing the change back to Matrix (it came from there).
///
/// # Errors
/// As [`transition`].
pub async fn transition_quietly(
    state: &AppState,
    rec: CallRecord,
    to: CallStatus,
    reason: Option<CallReason>,
) -> Result<CallRecord> {
    transition_inner(state, rec, to, reason, Mirror::FromMatrix).await
}

/// How a stored change reaches Matrix.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Mirror {
    /// The bot writes its edit now.
    AtOnce,
    /// The change came from Matrix (the user's own edit), which shows it already.
    FromMatrix,
    /// The user's client writes the edit (a hang-up, PROTOCOL §10); the bot's sync loop marks
    /// the call mirrored when it sees that edit, and the leader's backlog writes the bot's own
    /// only if it has not shown up after one to two `matrix.mirror_retry_secs`.
    LeftToUser,
}

async fn transition_inner(
    state: &AppState,
    mut rec: CallRecord,
    to: CallStatus,
    reason: Option<CallReason>,
    mirror: Mirror,
) -> Result<CallRecord> {
    // Two tries: a concurrent writer may move the call between our read and our write.
    for _ in 0..2 {
        if rec.status == to {
            return Ok(rec);
        }
        rec.status
            .transition(to)
            .map_err(|e| Error::Conflict(e.to_string()))?;
        let now = state::now().unix_millis();
        if state
            .store()
            .set_status(&rec.call_id, rec.status, to, reason, now)
            .await?
        {
            let fresh = state
                .store()
                .call(&rec.call_id)
                .await?
                .ok_or(Error::NotFound)?;
            after_transition(state, &fresh, mirror).await;
            return Ok(fresh);
        }
        rec = state
            .store()
            .call(&rec.call_id)
            .await?
            .ok_or(Error::NotFound)?;
    }
    Err(Error::Conflict(
        "the call changed concurrently; try again".into(),
    ))
}

/// How long ending a call waits for LiveKit to delete its room before it answers anyway.
const ROOM_DELETE_WAIT: std::time::Duration = std::time::Duration::from_secs(2);

/// Side effects of a stored transition. Failures here are logged, not returned: the store is
/// the API's truth, and Matrix/LiveKit catch up (the room empties and closes by itself).
async fn after_transition(state: &AppState, rec: &CallRecord, mirror: Mirror) {
    if rec.status == CallStatus::Ended {
        state.metrics().call_event("ended");
        // Only the room made for this call: never another room that has its name. The answer
        // waits for it only briefly: a LiveKit that hangs (its nodes re-syncing after a Redis
        // restart, say) must not hold up a hang-up; the deletion goes on in the background.
        let (st, id) = (state.clone(), rec.call_id.clone());
        let delete = tokio::spawn(
            async move {
                if let Err(e) = st
                    .livekit()
                    .delete_call_room(id.room_name(), id.as_str())
                    .await
                {
                    warn!(error = %e, "could not delete the LiveKit room");
                }
            }
            .in_current_span(),
        );
        if tokio::time::timeout(ROOM_DELETE_WAIT, delete)
            .await
            .is_err()
        {
            warn!(
                wait_ms = ROOM_DELETE_WAIT.as_millis() as u64,
                "deleting the LiveKit room is slow; answering now, it goes on in the background"
            );
        }
    }
    // The Matrix edit runs on its own: under load the bot's device serializes its encrypted
    // sends, and the API answer must not wait for them. It keeps its retries and its one
    // transaction id, so a slow or repeated mirror never duplicates the edit.
    if mirror == Mirror::LeftToUser {
        state.metrics().matrix_write("left_to_user");
        debug!(
            "the ended edit is left to the user's client; the backlog writes it if it does not come"
        );
    }
    if mirror == Mirror::AtOnce
        && let Some(bot) = state.matrix()
    {
        let bot = bot.clone();
        let rec = rec.clone();
        tokio::spawn(
            async move {
                if let Err(e) = bot.mirror_status(&rec).await {
                    warn!(error = %e, "could not mirror the status to Matrix");
                }
            }
            .in_current_span(),
        );
    }
}

/// Ends the call of LiveKit room `room` because of a webhook: only the one call that holds the
/// room's name, only when the room is the one made for it (its metadata is the call id), only
/// while it is open, and, for `participant_left`, only if the participant is the call's user.
///
/// # Errors
/// [`Error::Store`].
pub async fn end_from_webhook(
    state: &AppState,
    room: &crate::livekit::WebhookRoom,
    left_identity: Option<&str>,
) -> Result<Option<CallId>> {
    let Some(rec) = state.store().call_in_room(&room.name).await? else {
        return Ok(None);
    };
    if rec.status == CallStatus::Ended || room.metadata != rec.call_id.as_str() {
        return Ok(None);
    }
    let reason = match left_identity {
        Some(who) if who == rec.sender => CallReason::ParticipantLeft,
        Some(_) => return Ok(None),
        None => CallReason::RoomFinished,
    };
    let id = rec.call_id.clone();
    match transition(state, rec, CallStatus::Ended, Some(reason)).await {
        Ok(_) | Err(Error::Conflict(_)) => Ok(Some(id)),
        Err(e) => Err(e),
    }
}

/// The call's user lost its connection to the room (it did not leave on purpose): after
/// `grace`, unless its identity is in the room again (a full reconnect, e.g. after its
/// LiveKit node died or Redis was away), the call ends as if it had left.
pub fn end_unless_back(
    state: &AppState,
    room: &crate::livekit::WebhookRoom,
    who: &str,
    grace: std::time::Duration,
) {
    let (state, room, who) = (state.clone(), room.clone(), who.to_owned());
    tokio::spawn(
        async move {
            tokio::time::sleep(grace).await;
            let Ok(name) = oracle_calls_proto::RoomName::parse(&room.name) else {
                return;
            };
            // A room LiveKit no longer has (or cannot list) holds nobody.
            let back = match state.livekit().participants(&name).await {
                Ok(present) => present.contains(&who),
                Err(_) => false,
            };
            if back {
                info!(room = %room.name, "the call's user came back within the grace; the call goes on");
                return;
            }
            match end_from_webhook(&state, &room, Some(&who)).await {
                Ok(Some(id)) => {
                    info!(call_id = %id, "the call's user did not come back; call ended");
                }
                Ok(None) => {}
                Err(e) => warn!(room = %room.name, error = %e, "could not end a call whose user left"),
            }
        }
        .in_current_span(),
    );
}

/// What [`redispatch_after_agent_left`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Redispatch {
    /// Not this server's active call, or the user is gone too: nothing to do.
    NotNeeded,
    /// The agent was dispatched again (the `n`th time for this call).
    Dispatched(u32),
    /// `livekit.max_redispatches` reached: the call goes on without an oracle until the user
    /// leaves.
    GaveUp,
}

/// Dispatches the oracle's agent again when an agent participant left an active call's room
/// while the call's user is still in it (open-source LiveKit never does: a dead worker's job
/// is lost). At most `livekit.max_redispatches` times per call, counted in the store, so every
/// server of the oracle counts against the same limit.
///
/// # Errors
/// [`Error::Store`], LiveKit errors.
pub(crate) async fn redispatch_after_agent_left(
    state: &AppState,
    room: &crate::livekit::WebhookRoom,
) -> Result<Redispatch> {
    let Some(rec) = state.store().call_in_room(&room.name).await? else {
        return Ok(Redispatch::NotNeeded);
    };
    if rec.status != CallStatus::Active || room.metadata != rec.call_id.as_str() {
        return Ok(Redispatch::NotNeeded);
    }
    let room_name = rec.call_id.room_name();
    let present = state.livekit().participants(room_name).await?;
    if !present.contains(&rec.sender) {
        // The user left too (or first): the call is ending, not losing its oracle.
        return Ok(Redispatch::NotNeeded);
    }
    if present.iter().any(|p| p.starts_with("agent-")) {
        // Another agent of the pool is there (e.g. a dispatch already answered).
        return Ok(Redispatch::NotNeeded);
    }
    let Some(n) = state
        .store()
        .count_redispatch(&rec.call_id, state.config().livekit.max_redispatches)
        .await?
    else {
        state.metrics().call_event("agent_redispatch_gave_up");
        warn!(call_id = %rec.call_id, "the agent left again; no more dispatches for this call");
        return Ok(Redispatch::GaveUp);
    };
    state
        .livekit()
        .dispatch_agent(
            room_name,
            &state.config().oracle.agent_name,
            rec.call_id.as_str(),
        )
        .await?;
    state.metrics().call_event("agent_redispatched");
    info!(call_id = %rec.call_id, n, "the agent left an active call; dispatched again");
    Ok(Redispatch::Dispatched(n))
}

/// True when the call started longer ago than `validation.max_call_age_secs`: the server no
/// longer activates it or hands out its key, whatever its status says.
pub(crate) fn too_old(state: &AppState, rec: &CallRecord, now_ms: i64) -> bool {
    let max_ms = i64::try_from(state.config().validation.max_call_age_secs)
        .unwrap_or(i64::MAX / 1000)
        .saturating_mul(1000);
    now_ms.saturating_sub(rec.content.call_started_at.unix_millis()) > max_ms
}

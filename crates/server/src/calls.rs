//! Call operations shared by the HTTP API, the webhook and the Matrix listener.

use oracle_calls_proto::{CallId, CallReason, CallStatus, KeyResponse, UpdateRequest};
use tracing::{Instrument as _, info, warn};

use crate::auth::Caller;
use crate::store::CallRecord;
use crate::{AppState, Error, Result, state};

/// `GET /calls/{callId}/key`: the wrapped key of one of this oracle's open calls. Every
/// request is audited with its outcome.
///
/// # Errors
/// 404 unknown, 403 another oracle's call or a blocked key, 410 ended.
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

/// `POST /calls/{callId}/update`: legal transitions only, idempotent, mirrored to Matrix.
///
/// # Errors
/// 404, 403 (not the call's user or oracle), 409 illegal transition.
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
    if let Some(reason) = req.reason {
        if reason == CallReason::KeyDecryptionFailed && !matches!(caller, Caller::Agent(_)) {
            return Err(Error::Forbidden(
                "only the oracle's agent reports key failures",
            ));
        }
        if req.call_status.is_none() {
            state.store().record_reason(call_id, reason, now).await?;
        }
    }
    let Some(to) = req.call_status else {
        return state.store().call(call_id).await?.ok_or(Error::NotFound);
    };
    let record = transition(state, rec, to, req.reason).await?;
    if req.reason == Some(CallReason::KeyDecryptionFailed) {
        state
            .store()
            .record_reason(call_id, CallReason::KeyDecryptionFailed, now)
            .await?;
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
    transition_inner(state, rec, to, reason, true).await
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
    transition_inner(state, rec, to, reason, false).await
}

async fn transition_inner(
    state: &AppState,
    mut rec: CallRecord,
    to: CallStatus,
    reason: Option<CallReason>,
    mirror: bool,
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

/// Side effects of a stored transition. Failures here are logged, not returned: the store is
/// the API's truth, and Matrix/LiveKit catch up (the room empties and closes by itself).
async fn after_transition(state: &AppState, rec: &CallRecord, mirror: bool) {
    if rec.status == CallStatus::Ended {
        state.metrics().call_event("ended");
        if let Err(e) = state.livekit().delete_room(rec.call_id.room_name()).await {
            warn!(error = %e, "could not delete the LiveKit room");
        }
    }
    // The Matrix edit runs on its own: under load the bot's device serializes its encrypted
    // sends, and the API answer must not wait for them. It keeps its retries and its one
    // transaction id, so a slow or repeated mirror never duplicates the edit.
    if mirror && let Some(bot) = state.matrix() {
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

/// Ends the open call in LiveKit room `room` because of a webhook, if there is one and, for
/// `participant_left`, if the participant is the call's user.
///
/// # Errors
/// [`Error::Store`].
pub async fn end_from_webhook(
    state: &AppState,
    room: &str,
    left_identity: Option<&str>,
) -> Result<Option<CallId>> {
    let Some(rec) = state.store().open_call_in_room(room).await? else {
        return Ok(None);
    };
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

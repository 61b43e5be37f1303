//! `POST /calls/{callId}/sync`: validate the call event as the oracle's bot device, store it,
//! create the LiveKit room with the agent dispatched, mark the call active in Matrix, and hand
//! the user a join token. A repeated sync by the same user answers the same and writes nothing
//! twice.

use std::collections::HashMap;

use oracle_calls_proto::{CallId, CallStatus, Did, OraclesCallContent, SyncRequest, SyncResponse};
use tracing::info;

use crate::matrix::FetchedEvent;
use crate::store::{CallRecord, Inserted};
use crate::{AppState, Error, Result, state};

/// Validates, stores, activates and answers with a join token.
///
/// # Errors
/// 403 another user's call, 404 no such event, 410 ended, 422 a failed check (named),
/// 502/503 Matrix or LiveKit trouble.
pub async fn sync(
    state: &AppState,
    call_id: &CallId,
    user: &str,
    req: &SyncRequest,
) -> Result<SyncResponse> {
    if let Some(rec) = state.store().call(call_id).await? {
        return activate(state, rec, user, req).await;
    }
    let bot = state
        .matrix()
        .ok_or_else(|| Error::MatrixUnavailable("the oracle's bot is not running".into()))?;
    let ev = bot
        .fetch_call_event(user, call_id.event_id().as_str())
        .await?;
    if ev.sender != user {
        return Err(Error::Forbidden("the call event was sent by another user"));
    }
    let content = validate(state, call_id, &ev, state::now().unix_millis())?;
    let now = state::now().unix_millis();
    let rec = match state
        .store()
        .insert_call(call_id, &ev.matrix_room_id, &ev.sender, &content, now)
        .await?
    {
        Inserted::New => {
            state.metrics().call_event("synced");
            info!(room = %ev.matrix_room_id, "call accepted");
            state.store().call(call_id).await?.ok_or(Error::NotFound)?
        }
        Inserted::Existing(rec) => *rec,
    };
    activate(state, rec, user, req).await
}

/// Every check of DESIGN §3 step 6 that needs the event. The error names the failed check.
pub(crate) fn validate(
    state: &AppState,
    call_id: &CallId,
    ev: &FetchedEvent,
    now_ms: i64,
) -> Result<OraclesCallContent> {
    let content = validate_stored(state, call_id, ev)?;
    let window = i64::try_from(state.config().validation.max_clock_skew_secs)
        .unwrap_or(i64::MAX / 1000)
        .saturating_mul(1000);
    let started = content.call_started_at.unix_millis();
    if started.abs_diff(ev.origin_server_ts) > window.unsigned_abs() {
        return Err(Error::Validation(
            "callStartedAt is too far from the event's origin_server_ts".into(),
        ));
    }
    if started.abs_diff(now_ms) > window.unsigned_abs() {
        return Err(Error::Validation(
            "callStartedAt is too far from now (stale or replayed event)".into(),
        ));
    }
    Ok(content)
}

/// The checks of [`validate`] that hold for an event of any age (what a rebuild of the store
/// from Matrix applies): transport, type, sender binding, oracle, room, initial status.
pub(crate) fn validate_stored(
    state: &AppState,
    call_id: &CallId,
    ev: &FetchedEvent,
) -> Result<OraclesCallContent> {
    let fail = |m: &str| Error::Validation(m.to_owned());
    ev.check_transport().map_err(fail)?;
    if ev.event_type != oracle_calls_proto::CALL_EVENT_TYPE {
        return Err(fail("the event is not an m.ixo.oracles_call event"));
    }
    if ev.is_edit() {
        return Err(fail("the event is an edit, not the original call event"));
    }
    let content: OraclesCallContent = serde_json::from_value(ev.content.clone())
        .map_err(|e| Error::Validation(format!("the content is malformed: {e}")))?;
    let config = state.config();
    if !sender_bound(state, &content.user_did, &ev.sender) {
        return Err(fail("the sender is not bound to userDid"));
    }
    if content.oracle_did != config.oracle.did {
        return Err(fail("oracleDid is not this oracle"));
    }
    if content.room_id != *call_id.room_name() {
        return Err(fail("roomId differs from the callId's room"));
    }
    if content.call_status != CallStatus::Pending {
        return Err(fail("callStatus is not pending"));
    }
    Ok(content)
}

/// `userDid` ↔ Matrix user: the explicit mapping first, then the ixo convention
/// `did:ixo:X` ↔ `@did-ixo-X:<server>`.
fn sender_bound(state: &AppState, user_did: &Did, sender: &str) -> bool {
    let v = &state.config().validation;
    v.dangerous_accept_any_sender
        || binding_holds(
            state.user_bindings(),
            &state.config().matrix.server_name,
            user_did,
            sender,
        )
}

fn binding_holds(
    explicit: &HashMap<String, String>,
    server_name: &str,
    user_did: &Did,
    sender: &str,
) -> bool {
    if let Some(mapped) = explicit.get(user_did.as_str()) {
        return mapped == sender;
    }
    user_did.method() == "ixo"
        && sender
            == format!(
                "@did-ixo-{}:{server_name}",
                user_did.method_specific_id().to_lowercase()
            )
}

/// Brings a stored call to `active` (room with dispatch, Matrix edit) and answers. Only the
/// call's own user gets an answer; an ended call is gone.
async fn activate(
    state: &AppState,
    rec: CallRecord,
    user: &str,
    req: &SyncRequest,
) -> Result<SyncResponse> {
    if rec.sender != user {
        return Err(Error::Forbidden("this is another user's call"));
    }
    if req
        .session_id
        .as_ref()
        .is_some_and(|s| *s != rec.content.session_id)
    {
        return Err(Error::Validation(
            "sessionId differs from the call event's".into(),
        ));
    }
    if rec.status == CallStatus::Ended {
        return Err(Error::Gone);
    }
    let room = rec.call_id.room_name().clone();
    state
        .livekit()
        .create_room(
            &room,
            &state.config().oracle.agent_name,
            &rec.call_id.to_string(),
        )
        .await?;
    let rec = crate::calls::transition(state, rec, CallStatus::Active, None).await?;
    let (token, token_expires_at) = state.livekit().join_token(&room, user, state::now())?;
    Ok(SyncResponse {
        call_id: rec.call_id,
        status: rec.status,
        livekit_url: state.livekit().url().to_owned(),
        token,
        token_expires_at,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ixo_convention_and_explicit_bindings() {
        let did = |s: &str| Did::parse(s).unwrap();
        let none = HashMap::new();
        assert!(binding_holds(
            &none,
            "localhost",
            &did("did:ixo:abc1"),
            "@did-ixo-abc1:localhost"
        ));
        assert!(!binding_holds(
            &none,
            "localhost",
            &did("did:ixo:abc1"),
            "@did-ixo-abc2:localhost"
        ));
        assert!(!binding_holds(
            &none,
            "localhost",
            &did("did:ixo:abc1"),
            "@did-ixo-abc1:evil.org"
        ));
        assert!(!binding_holds(
            &none,
            "localhost",
            &did("did:key:abc1"),
            "@did-key-abc1:localhost"
        ));
        let explicit: HashMap<String, String> =
            [("did:ixo:abc1".to_owned(), "@alice:localhost".to_owned())].into();
        assert!(binding_holds(
            &explicit,
            "localhost",
            &did("did:ixo:abc1"),
            "@alice:localhost"
        ));
        assert!(!binding_holds(
            &explicit,
            "localhost",
            &did("did:ixo:abc1"),
            "@did-ixo-abc1:localhost"
        ));
    }
}

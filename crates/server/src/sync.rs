//! `POST /calls/{callId}/sync`: validate the call event as the oracle's bot device, store it,
//! create the LiveKit room and get the agent into it (handed to a waiting agent, or LiveKit's
//! dispatch: [`crate::direct`]), mark the call active in Matrix, and hand
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
/// 403 another user's call, 404 no such event, 409 the room name belongs to another call (or
/// to a LiveKit room this call did not make), 410 ended or older than the maximum call age,
/// 422 a failed check (named), 502/503 Matrix or LiveKit trouble.
pub async fn sync(
    state: &AppState,
    call_id: &CallId,
    user: &str,
    req: &SyncRequest,
) -> Result<SyncResponse> {
    if let Some(rec) = state.store().call(call_id).await? {
        return activate(state, rec, user, req).await;
    }
    // A room name belongs to one call: refuse before asking Matrix for anything.
    if state
        .store()
        .call_in_room(call_id.room_name().as_str())
        .await?
        .is_some()
    {
        return Err(room_taken());
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
        Inserted::RoomTaken => return Err(room_taken()),
    };
    activate(state, rec, user, req).await
}

fn room_taken() -> Error {
    Error::Conflict("roomId is already the room of another call".into())
}

/// Every check of DESIGN §3 step 6 that needs the event. The error names the failed check.
pub(crate) fn validate(
    state: &AppState,
    call_id: &CallId,
    ev: &FetchedEvent,
    now_ms: i64,
) -> Result<OraclesCallContent> {
    let content = validate_stored(state, call_id, ev)?;
    let started = content.call_started_at.unix_millis();
    if !fresh(state, started, ev.origin_server_ts) {
        return Err(Error::Validation(
            "callStartedAt is too far from the event's origin_server_ts".into(),
        ));
    }
    if !fresh(state, started, now_ms) {
        return Err(Error::Validation(
            "callStartedAt is too far from now (stale or replayed event)".into(),
        ));
    }
    Ok(content)
}

/// True when two instants (Unix ms) are within `validation.max_clock_skew_secs` of each other.
fn fresh(state: &AppState, a_ms: i64, b_ms: i64) -> bool {
    let window = state
        .config()
        .validation
        .max_clock_skew_secs
        .saturating_mul(1000);
    a_ms.abs_diff(b_ms) <= window
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
/// `did:ixo:X` ↔ `@did-ixo-X:<server>`, compared exactly (a DID whose id has upper-case
/// letters binds to no one by convention: Matrix user ids are lower-case, and case variants
/// of one DID must not share an account).
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
    let id = user_did.method_specific_id();
    user_did.method() == "ixo"
        && !id.bytes().any(|b| b.is_ascii_uppercase())
        && sender == format!("@did-ixo-{id}:{server_name}")
}

/// Brings a stored call to `active` (room with dispatch, Matrix edit) and answers. Only the
/// call's own user gets an answer; an ended call, or one older than the maximum call age, is
/// gone; a pending call is activated only while it is fresh (within the clock-skew window of
/// its start, as at its first sync).
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
    let now_ms = state::now().unix_millis();
    if crate::calls::too_old(state, &rec, now_ms) {
        return Err(Error::TooOld);
    }
    if rec.status == CallStatus::Pending
        && !fresh(state, rec.content.call_started_at.unix_millis(), now_ms)
    {
        return Err(Error::Validation(
            "callStartedAt is too far from now (stale or replayed event)".into(),
        ));
    }
    let room = rec.call_id.room_name().clone();
    let active = rec.status == CallStatus::Active;
    let hand_off = crate::direct::open_room(state, &rec.call_id, &rec.sender, active).await?;
    let rec = crate::calls::transition(state, rec, CallStatus::Active, None).await?;
    if let Some(h) = hand_off {
        crate::direct::hand_off(state, h).await?;
    }
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
        // Exact: a DID with upper-case letters binds to no account by convention, neither the
        // lower-cased one nor (should one exist) the same-case one.
        for sender in ["@did-ixo-abc1:localhost", "@did-ixo-ABC1:localhost"] {
            assert!(
                !binding_holds(&none, "localhost", &did("did:ixo:ABC1"), sender),
                "{sender}"
            );
        }
        assert!(!binding_holds(
            &none,
            "localhost",
            &did("did:ixo:Abc1"),
            "@did-ixo-abc1:localhost"
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

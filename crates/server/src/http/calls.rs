//! `/calls…` handlers: thin wrappers around [`crate::calls`] and [`crate::sync`].

use axum::Json;
use axum::body::Bytes;
use axum::extract::{Path, State};
use oracle_calls_proto::{
    ApiErrorBody, CallSummary, KeyResponse, ListCallsQuery, ListCallsResponse, RoomClaimResponse,
    RoomName, SyncRequest, SyncResponse, UpdateRequest,
};

use super::extract::{CallIdPath, JsonBody, QueryArgs, Remote};
use crate::auth::{Agent, Caller, User};
use crate::store::ListFilter;
use crate::{AppState, Error, Result};

/// Validate the call event as the oracle's bot, store the call, mark it active in Matrix,
/// create the LiveKit room with the oracle's agent dispatched, and hand back a join token.
#[utoipa::path(post, path = "/calls/{callId}/sync", tag = "calls",
    params(("callId" = String, Path, description = "`<eventId>@<roomName>`, percent-encoded")),
    request_body(content = SyncRequest, description = "optional; `{}` or no body is fine"),
    responses(
        (status = 429, description = "a rate limit of `[limits]`; retry after `Retry-After` seconds", body = ApiErrorBody),
        (status = 200, body = SyncResponse),
        (status = 400, body = ApiErrorBody), (status = 401, body = ApiErrorBody),
        (status = 403, body = ApiErrorBody), (status = 404, body = ApiErrorBody),
        (status = 409, body = ApiErrorBody), (status = 410, body = ApiErrorBody),
        (status = 413, body = ApiErrorBody), (status = 422, body = ApiErrorBody),
        (status = 502, body = ApiErrorBody), (status = 503, body = ApiErrorBody),
    ),
    security(("matrixOpenId" = [])))]
pub async fn sync(
    State(state): State<AppState>,
    CallIdPath(call_id): CallIdPath,
    User(user): User,
    body: Bytes,
) -> Result<Json<SyncResponse>> {
    let req: SyncRequest = if body.iter().all(u8::is_ascii_whitespace) {
        SyncRequest::default()
    } else {
        serde_json::from_slice(&body).map_err(|e| Error::BadRequest(format!("body: {e}")))?
    };
    if req.call_id.as_ref().is_some_and(|c| *c != call_id) {
        return Err(Error::BadRequest(
            "body callId differs from the path".into(),
        ));
    }
    Ok(Json(
        crate::sync::sync(&state, &call_id, &user, &req).await?,
    ))
}

/// The wrapped call key of one of this oracle's pending or active calls (agents only).
#[utoipa::path(get, path = "/calls/{callId}/key", tag = "calls",
    params(("callId" = String, Path, description = "`<eventId>@<roomName>`, percent-encoded")),
    responses(
        (status = 429, description = "a rate limit of `[limits]`; retry after `Retry-After` seconds", body = ApiErrorBody), (status = 503, description = "too many access token checks in flight, or an upstream is unreachable", body = ApiErrorBody),
        (status = 200, body = KeyResponse),
        (status = 400, body = ApiErrorBody), (status = 401, body = ApiErrorBody),
        (status = 403, body = ApiErrorBody), (status = 404, body = ApiErrorBody),
        (status = 410, body = ApiErrorBody),
    ),
    security(("apiKey" = [])))]
pub async fn key(
    State(state): State<AppState>,
    CallIdPath(call_id): CallIdPath,
    Agent(key): Agent,
    Remote(remote): Remote,
) -> Result<Json<KeyResponse>> {
    Ok(Json(
        crate::calls::key(&state, &call_id, &key, &remote).await?,
    ))
}

/// Change a call's status and/or report a reason (the call's user or this oracle's agent).
#[utoipa::path(post, path = "/calls/{callId}/update", tag = "calls",
    params(("callId" = String, Path, description = "`<eventId>@<roomName>`, percent-encoded")),
    request_body = UpdateRequest,
    responses(
        (status = 429, description = "a rate limit of `[limits]`; retry after `Retry-After` seconds", body = ApiErrorBody), (status = 503, description = "too many access token checks in flight, or an upstream is unreachable", body = ApiErrorBody),
        (status = 200, body = CallSummary),
        (status = 400, body = ApiErrorBody), (status = 401, body = ApiErrorBody),
        (status = 403, body = ApiErrorBody), (status = 404, body = ApiErrorBody),
        (status = 409, body = ApiErrorBody), (status = 413, body = ApiErrorBody),
    ),
    security(("matrixOpenId" = []), ("apiKey" = [])))]
pub async fn update(
    State(state): State<AppState>,
    CallIdPath(call_id): CallIdPath,
    caller: Caller,
    JsonBody(req): JsonBody<UpdateRequest>,
) -> Result<Json<CallSummary>> {
    let rec = crate::calls::update(&state, &call_id, &caller, &req).await?;
    Ok(Json(rec.summary()))
}

/// The caller's calls, newest first.
#[utoipa::path(get, path = "/calls", tag = "calls",
    params(ListCallsQuery),
    responses(
        (status = 429, description = "a rate limit of `[limits]`; retry after `Retry-After` seconds", body = ApiErrorBody), (status = 503, description = "too many access token checks in flight, or an upstream is unreachable", body = ApiErrorBody),
        (status = 200, body = ListCallsResponse),
        (status = 400, body = ApiErrorBody), (status = 401, body = ApiErrorBody),
        (status = 403, body = ApiErrorBody),
    ),
    security(("matrixOpenId" = [])))]
pub async fn list(
    State(state): State<AppState>,
    User(user): User,
    QueryArgs(q): QueryArgs<ListCallsQuery>,
) -> Result<Json<ListCallsResponse>> {
    let filter = ListFilter {
        status: q.status,
        session_id: q.session_id,
        cursor: q.cursor,
        limit: q.limit,
    };
    let (calls, next_cursor) = state.store().list_calls(&user, &filter).await?;
    Ok(Json(ListCallsResponse {
        calls: calls
            .iter()
            .map(crate::store::CallRecord::summary)
            .collect(),
        next_cursor,
    }))
}

/// Claim the LiveKit room of the call being placed and get a join token for it, to join while
/// the call event travels through Matrix (the early join); the call's sync takes the room over.
#[utoipa::path(post, path = "/rooms/{roomId}/claim", tag = "calls",
    params(("roomId" = String, Path, description = "the call's room name: `oc-` and 32 lower-case hex characters")),
    responses(
        (status = 429, description = "a rate limit of `[limits]`, or `limits.max_open_room_claims`; retry after `Retry-After` seconds", body = ApiErrorBody), (status = 503, description = "too many access token checks in flight, or an upstream is unreachable", body = ApiErrorBody),
        (status = 200, body = RoomClaimResponse),
        (status = 400, body = ApiErrorBody), (status = 401, body = ApiErrorBody),
        (status = 403, body = ApiErrorBody),
        (status = 404, description = "the server does not offer the early join", body = ApiErrorBody),
        (status = 409, body = ApiErrorBody), (status = 502, body = ApiErrorBody),
    ),
    security(("matrixOpenId" = [])))]
pub async fn claim_room(
    State(state): State<AppState>,
    Path(raw): Path<String>,
    User(user): User,
) -> Result<Json<RoomClaimResponse>> {
    let room = RoomName::parse(&raw).map_err(|e| Error::BadRequest(format!("roomId: {e}")))?;
    Ok(Json(crate::claims::claim(&state, &room, &user).await?))
}

//! `/agent/jobs…`: direct dispatch (docs/PROTOCOL.md §6.8). An agent of this oracle waits for
//! a call; the server hands it one when a call is activated ([`crate::direct`]).

use std::time::Duration;

use axum::Json;
use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use oracle_calls_proto::{AgentJob, ApiErrorBody, DeclineJobRequest, NextJobRequest};

use crate::auth::Agent;
use crate::store::ApiKeyRecord;
use crate::{AppState, Error, Result};

fn body<T: serde::de::DeserializeOwned + Default>(bytes: &[u8]) -> Result<T> {
    if bytes.iter().all(u8::is_ascii_whitespace) {
        return Ok(T::default());
    }
    serde_json::from_slice(bytes).map_err(|e| Error::BadRequest(format!("body: {e}")))
}

fn this_oracles(state: &AppState, key: &ApiKeyRecord) -> Result<()> {
    if key.oracle_did != state.config().oracle.did {
        return Err(Error::Forbidden("this API key is for another oracle"));
    }
    Ok(())
}

/// Wait for a call to serve (this oracle's agents). Answers 200 with the call and a join token
/// as soon as a call is handed to this agent, or 204 when `waitMs` (at most 20 s, and below
/// the server's request deadline) passed without one. An agent waits again right away.
#[utoipa::path(post, path = "/agent/jobs/next", tag = "agents",
    request_body(content = NextJobRequest, description = "optional; `{}` or no body waits the longest"),
    responses(
        (status = 200, body = AgentJob, description = "a call handed to this agent"),
        (status = 204, description = "no call within the wait; ask again"),
        (status = 400, body = ApiErrorBody), (status = 401, body = ApiErrorBody),
        (status = 403, body = ApiErrorBody, description = "an API key of another oracle"),
        (status = 413, body = ApiErrorBody),
        (status = 429, description = "a rate limit of `[limits]`; retry after `Retry-After` seconds", body = ApiErrorBody),
        (status = 503, description = "too many access token checks in flight", body = ApiErrorBody),
    ),
    security(("apiKey" = [])))]
pub async fn next(
    State(state): State<AppState>,
    Agent(key): Agent,
    bytes: Bytes,
) -> Result<Response> {
    let req: NextJobRequest = body(&bytes)?;
    this_oracles(&state, &key)?;
    // Leave a second of the request deadline for the answer itself.
    let deadline = state
        .config()
        .request_timeout()
        .saturating_sub(Duration::from_secs(1));
    let mut wait = crate::direct::MAX_WAIT.min(deadline);
    if let Some(ms) = req.wait_ms {
        wait = wait.min(Duration::from_millis(ms));
    }
    match state.direct().wait(&key.key_id).job(wait).await {
        Some(job) => Ok(Json(job).into_response()),
        None => Ok(StatusCode::NO_CONTENT.into_response()),
    }
}

/// Decline a call handed to this agent (no capacity left, or its key is sealed to a key this
/// agent does not hold): the server asks LiveKit to dispatch the oracle's agent at once.
#[utoipa::path(post, path = "/agent/jobs/{jobId}/decline", tag = "agents",
    params(("jobId" = String, Path, description = "the `jobId` of the handed-off call")),
    request_body(content = DeclineJobRequest, description = "optional reason"),
    responses(
        (status = 204, description = "declined; LiveKit dispatches the call"),
        (status = 400, body = ApiErrorBody), (status = 401, body = ApiErrorBody),
        (status = 403, body = ApiErrorBody),
        (status = 404, body = ApiErrorBody, description = "no such job was handed to this key, or it is settled already"),
        (status = 413, body = ApiErrorBody),
        (status = 429, description = "a rate limit of `[limits]`; retry after `Retry-After` seconds", body = ApiErrorBody),
        (status = 502, body = ApiErrorBody), (status = 503, body = ApiErrorBody),
    ),
    security(("apiKey" = [])))]
pub async fn decline(
    State(state): State<AppState>,
    Path(job_id): Path<String>,
    Agent(key): Agent,
    bytes: Bytes,
) -> Result<StatusCode> {
    let req: DeclineJobRequest = body(&bytes)?;
    this_oracles(&state, &key)?;
    crate::direct::decline(&state, &job_id, &key.key_id, &req.reason).await?;
    Ok(StatusCode::NO_CONTENT)
}

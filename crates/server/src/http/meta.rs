//! `/healthz`, `/metrics`, `/openapi.json`, `/.well-known/oracle-calls`, and the fallback.

use axum::Json;
use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::IntoResponse;
use oracle_calls_proto::{ApiErrorBody, ErrorCode, WellKnown};
use utoipa::OpenApi as _;

use crate::{AppState, Result};

/// The oracle's identity and public keys. `matrixDevices` lists the bot device of every server
/// of the oracle that ever started on this store (the others' too while they are down).
#[utoipa::path(get, path = "/.well-known/oracle-calls", tag = "meta",
    responses(
        (status = 200, body = WellKnown),
        (status = 429, description = "a rate limit of `[limits]`; retry after `Retry-After` seconds", body = ApiErrorBody),
        (status = 500, body = ApiErrorBody)))]
pub async fn well_known(State(state): State<AppState>) -> Result<Json<WellKnown>> {
    let c = state.config();
    let mut matrix_devices = state
        .store()
        .bot_devices(&c.oracle.did, &c.matrix.user_id)
        .await?;
    // This server's own device, should its registration be missing.
    if let Some(own) = state.matrix().and_then(|b| b.device())
        && !matrix_devices.contains(own)
    {
        matrix_devices.push(own.clone());
    }
    Ok(Json(WellKnown {
        oracle_did: c.oracle.did.clone(),
        matrix_user_id: c.matrix.user_id.clone(),
        agent_name: c.oracle.agent_name.clone(),
        livekit_url: c.livekit.url.clone(),
        keys: c.oracle.keys.clone(),
        prekey_signing_key: c.oracle.prekey_signing_key.clone(),
        matrix_devices,
    }))
}

/// 200 when the store answers, 503 otherwise.
#[utoipa::path(get, path = "/healthz", tag = "meta",
    responses(
        (status = 200, description = "healthy"), (status = 503, description = "store down"),
        (status = 429, description = "a rate limit of `[limits]`; retry after `Retry-After` seconds", body = ApiErrorBody)))]
pub async fn healthz(State(state): State<AppState>) -> impl IntoResponse {
    if state.store().ping().await {
        (StatusCode::OK, "ok")
    } else {
        (StatusCode::SERVICE_UNAVAILABLE, "store unavailable")
    }
}

/// Prometheus text exposition.
#[utoipa::path(get, path = "/metrics", tag = "meta",
    responses(
        (status = 200, description = "Prometheus text format", content_type = "text/plain"),
        (status = 429, description = "a rate limit of `[limits]`; retry after `Retry-After` seconds", body = ApiErrorBody)))]
pub async fn metrics(State(state): State<AppState>) -> impl IntoResponse {
    (
        [(header::CONTENT_TYPE, "text/plain; version=0.0.4")],
        state.metrics().render(),
    )
}

/// This document.
#[utoipa::path(get, path = "/openapi.json", tag = "meta",
    responses(
        (status = 200, description = "OpenAPI 3.1 document"),
        (status = 429, description = "a rate limit of `[limits]`; retry after `Retry-After` seconds", body = ApiErrorBody)))]
pub async fn openapi() -> impl IntoResponse {
    Json(super::ApiDoc::openapi())
}

pub async fn no_route() -> impl IntoResponse {
    (
        StatusCode::NOT_FOUND,
        Json(ApiErrorBody::new(ErrorCode::NotFound, "no such endpoint")),
    )
}

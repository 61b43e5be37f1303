//! `POST /livekit/webhook`: signature first, then the body.

use std::time::Duration;

use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode, header};
use oracle_calls_proto::ApiErrorBody;
use tracing::{info, warn};

use crate::livekit::WebhookEvent;
use crate::{AppState, Result, state};

/// A LiveKit webhook (signed JWT in `Authorization`, no `Bearer`). `room_finished` and the
/// call's user leaving end the call whose room it is. Each event id is acted on once, across
/// every server on the store: a replay (or the same event delivered to another server) answers
/// 200 and changes nothing.
#[utoipa::path(post, path = "/livekit/webhook", tag = "livekit",
    request_body(content = String, content_type = "application/webhook+json"),
    responses(
        (status = 200, description = "accepted (or a replay, ignored)"),
        (status = 400, body = ApiErrorBody), (status = 401, body = ApiErrorBody),
        (status = 429, description = "a rate limit of `[limits]`; retry after `Retry-After` seconds", body = ApiErrorBody)),
    security(("livekitSignature" = [])))]
pub async fn receive(
    State(state): State<AppState>,
    headers: HeaderMap,
    body: Bytes,
) -> Result<StatusCode> {
    let auth = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok());
    let now = state::now();
    let ev = state.livekit().verify_webhook(&body, auth, now)?;
    let now_secs = now.unix_millis() / 1000;
    // This process's memory first (no store round trip for a replay sent here), then the
    // store, shared by every server of the oracle: one claim wins across all of them.
    if !state
        .webhook_ids()
        .claim(&ev.id, ev.signature_valid_until, now_secs)
    {
        return Ok(replayed(&state, &ev));
    }
    if !ev.id.is_empty() {
        match state
            .store()
            .claim_webhook(&ev.id, ev.signature_valid_until, now_secs)
            .await
        {
            Ok(true) => {}
            Ok(false) => return Ok(replayed(&state, &ev)),
            Err(e) => {
                state.webhook_ids().release(&ev.id);
                return Err(e);
            }
        }
    }
    state.metrics().call_event("webhook");
    let handled = handle(&state, &ev).await;
    if handled.is_err() {
        state.webhook_ids().release(&ev.id);
        if !ev.id.is_empty()
            && let Err(e) = state.store().release_webhook(&ev.id).await
        {
            warn!(id = %ev.id, error = %e, "could not release a failed webhook's claim");
        }
    }
    handled?;
    state.webhook_seen(&ev);
    Ok(StatusCode::OK)
}

/// A replay, or a delivery another server claimed: counted, logged, acknowledged.
fn replayed(state: &AppState, ev: &WebhookEvent) -> StatusCode {
    state.metrics().call_event("webhook_replayed");
    info!(id = %ev.id, event = %ev.event, "replayed LiveKit webhook ignored");
    StatusCode::OK
}

async fn handle(state: &AppState, ev: &WebhookEvent) -> Result<()> {
    let Some(room) = ev.room.as_ref().filter(|r| !r.name.is_empty()) else {
        info!(event = %ev.event, "livekit webhook");
        return Ok(());
    };
    info!(event = %ev.event, room = %room.name, "livekit webhook");
    let ended = match ev.event.as_str() {
        "room_finished" => crate::calls::end_from_webhook(state, room, None).await?,
        "participant_left" if ev.participant.as_ref().is_some_and(|p| p.is_agent()) => {
            crate::calls::redispatch_after_agent_left(state, room).await?;
            None
        }
        "participant_left" => {
            let (who, on_purpose) = ev
                .participant
                .as_ref()
                .map_or(("", false), |p| (p.identity.as_str(), p.left_on_purpose()));
            let grace = state.config().livekit.user_rejoin_grace_ms;
            if on_purpose || grace == 0 {
                crate::calls::end_from_webhook(state, room, Some(who)).await?
            } else {
                crate::calls::end_unless_back(state, room, who, Duration::from_millis(grace));
                None
            }
        }
        _ => None,
    };
    if let Some(id) = ended {
        info!(call_id = %id, event = %ev.event, "call ended by LiveKit");
    }
    Ok(())
}

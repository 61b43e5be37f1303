//! `POST /livekit/webhook`: signature first, then the body.

use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode, header};
use oracle_calls_proto::ApiErrorBody;
use tracing::info;

use crate::{AppState, Result, state};

/// A LiveKit webhook (signed JWT in `Authorization`, no `Bearer`). `room_finished` and the
/// call's user leaving end the call.
#[utoipa::path(post, path = "/livekit/webhook", tag = "livekit",
    request_body(content = String, content_type = "application/webhook+json"),
    responses((status = 200, description = "accepted"),
        (status = 400, body = ApiErrorBody), (status = 401, body = ApiErrorBody)),
    security(("livekitSignature" = [])))]
pub async fn receive(
    State(state): State<AppState>,
    headers: HeaderMap,
    body: Bytes,
) -> Result<StatusCode> {
    let auth = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok());
    let ev = state.livekit().verify_webhook(&body, auth, state::now())?;
    state.metrics().call_event("webhook");
    let room = ev
        .room
        .as_ref()
        .map(|r| r.name.as_str())
        .unwrap_or_default();
    info!(event = %ev.event, room, "livekit webhook");
    let ended = match ev.event.as_str() {
        "room_finished" if !room.is_empty() => {
            crate::calls::end_from_webhook(&state, room, None).await?
        }
        "participant_left" if !room.is_empty() => {
            let who = ev
                .participant
                .as_ref()
                .map(|p| p.identity.as_str())
                .unwrap_or_default();
            crate::calls::end_from_webhook(&state, room, Some(who)).await?
        }
        _ => None,
    };
    if let Some(id) = ended {
        info!(call_id = %id, event = %ev.event, "call ended by LiveKit");
    }
    state.webhook_seen(&ev);
    Ok(StatusCode::OK)
}

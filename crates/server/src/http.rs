//! The axum router: routes, limits, timeouts, tracing spans and metrics.

use std::time::Instant;

use axum::Router;
use axum::extract::{DefaultBodyLimit, MatchedPath, Request, State};
use axum::http::{Method, StatusCode};
use axum::middleware::{self, Next};
use axum::response::Response;
use axum::routing::{get, post};
use tower_http::timeout::TimeoutLayer;
use tower_http::trace::TraceLayer;

use crate::AppState;

mod agents;
mod calls;
mod extract;
mod meta;
mod openapi;
mod prekeys;
mod webhook;

pub use openapi::ApiDoc;

/// Largest webhook body accepted (LiveKit's events carry room and participant info).
const WEBHOOK_BODY_LIMIT: usize = 256 * 1024;

/// The whole HTTP API.
pub fn router(state: AppState) -> Router {
    let config = state.config();
    let body_limit = config.body_limit_bytes;
    let timeout = config.request_timeout();
    let routes = Router::new()
        .route("/calls", get(calls::list))
        .route("/calls/{call_id}/sync", post(calls::sync))
        .route("/calls/{call_id}/key", get(calls::key).post(calls::key))
        .route("/calls/{call_id}/update", post(calls::update))
        .route("/rooms/{room_id}/claim", post(calls::claim_room))
        .route(
            "/prekeys",
            get(prekeys::stock)
                .post(prekeys::publish)
                .layer(DefaultBodyLimit::max(prekeys::PUBLISH_BODY_LIMIT)),
        )
        .route("/prekeys/claim", post(prekeys::claim))
        .route("/agent/jobs/next", post(agents::next))
        .route("/agent/jobs/{job_id}/decline", post(agents::decline))
        .route(
            "/livekit/webhook",
            post(webhook::receive).layer(DefaultBodyLimit::max(WEBHOOK_BODY_LIMIT)),
        )
        .route("/.well-known/oracle-calls", get(meta::well_known))
        .route("/healthz", get(meta::healthz))
        .route("/metrics", get(meta::metrics))
        .route("/openapi.json", get(meta::openapi))
        .fallback(meta::no_route)
        .layer(DefaultBodyLimit::max(body_limit))
        .layer(middleware::from_fn_with_state(
            state.clone(),
            crate::limits::per_address,
        ))
        .layer(middleware::from_fn_with_state(state.clone(), track))
        .layer(TimeoutLayer::with_status_code(
            StatusCode::REQUEST_TIMEOUT,
            timeout,
        ))
        .layer(TraceLayer::new_for_http().make_span_with(|req: &Request| {
            let route = req
                .extensions()
                .get::<MatchedPath>()
                .map_or("unmatched", |p| p.as_str());
            tracing::info_span!(
                "request",
                method = method_label(req.method()),
                route,
                call_id = tracing::field::Empty
            )
        }));
    match cors(&config.cors) {
        Some(layer) => routes.layer(layer).with_state(state),
        None => routes.with_state(state),
    }
}

/// The CORS layer of `[cors]`: exactly the listed origins, `GET`/`POST`, the `authorization`
/// and `content-type` request headers, `retry-after` readable, no credentials (users send an
/// OpenID token, never cookies). No listed origin: no layer, no CORS headers at all, so a
/// browser lets no page read an answer.
fn cors(config: &crate::config::CorsConfig) -> Option<tower_http::cors::CorsLayer> {
    use axum::http::{HeaderValue, header};
    use tower_http::cors::{AllowOrigin, CorsLayer};
    let origins: Vec<HeaderValue> = config
        .allowed_origins
        .iter()
        .filter_map(|o| HeaderValue::from_str(o).ok())
        .collect();
    if origins.is_empty() {
        return None;
    }
    let layer = CorsLayer::new()
        .allow_origin(AllowOrigin::list(origins))
        .allow_methods([Method::GET, Method::POST])
        .allow_headers([header::AUTHORIZATION, header::CONTENT_TYPE])
        .expose_headers([header::RETRY_AFTER])
        .max_age(config.max_age());
    Some(layer)
}

async fn track(State(state): State<AppState>, req: Request, next: Next) -> Response {
    let route = req
        .extensions()
        .get::<MatchedPath>()
        .map_or_else(|| "unmatched".to_owned(), |p| p.as_str().to_owned());
    let method = method_label(req.method());
    let started = Instant::now();
    let mut resp = next.run(req).await;
    if resp.status() == StatusCode::PAYLOAD_TOO_LARGE {
        // The unread rest of the body is still on the wire: the connection cannot carry
        // another request, so tell the client not to reuse it.
        resp.headers_mut().insert(
            axum::http::header::CONNECTION,
            axum::http::HeaderValue::from_static("close"),
        );
    }
    let m = state.metrics();
    m.http_latency
        .with_label_values(&[route.as_str()])
        .observe(started.elapsed().as_secs_f64());
    m.http_requests
        .with_label_values(&[route.as_str(), method, resp.status().as_str()])
        .inc();
    resp
}

/// The metrics label of a request method: one of a fixed set, so that requests with made-up
/// methods (any token is a valid HTTP method) cannot grow the metrics without bound.
fn method_label(method: &Method) -> &'static str {
    match *method {
        Method::GET => "GET",
        Method::POST => "POST",
        Method::HEAD => "HEAD",
        Method::PUT => "PUT",
        Method::DELETE => "DELETE",
        Method::OPTIONS => "OPTIONS",
        Method::PATCH => "PATCH",
        _ => "OTHER",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn method_labels_are_a_fixed_set() {
        assert_eq!(method_label(&Method::GET), "GET");
        assert_eq!(method_label(&Method::PATCH), "PATCH");
        for other in ["TRACE", "CONNECT", "M0123456789", "get"] {
            let m = Method::from_bytes(other.as_bytes()).unwrap();
            assert_eq!(method_label(&m), "OTHER", "{other}");
        }
    }
}

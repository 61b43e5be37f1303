//! Extractors whose rejections are this crate's [`Error`], so every failure has the JSON shape.

use std::net::SocketAddr;

use axum::extract::rejection::JsonRejection;
use axum::extract::{ConnectInfo, FromRequest, FromRequestParts, Path, Query, Request};
use axum::http::StatusCode;
use axum::http::request::Parts;
use oracle_calls_proto::CallId;
use serde::de::DeserializeOwned;

use crate::{AppState, Error, Result};

/// The `{callId}` path segment, parsed.
#[derive(Debug)]
pub struct CallIdPath(pub CallId);

impl FromRequestParts<AppState> for CallIdPath {
    type Rejection = Error;
    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self> {
        let Path(raw) = Path::<String>::from_request_parts(parts, state)
            .await
            .map_err(|e| Error::BadRequest(e.body_text()))?;
        let id = CallId::parse(&raw).map_err(|e| Error::BadRequest(e.to_string()))?;
        tracing::Span::current().record("call_id", id.as_str());
        Ok(Self(id))
    }
}

/// A JSON body; a missing body counts as `{}` is NOT assumed: send one.
#[derive(Debug)]
pub struct JsonBody<T>(pub T);

impl<T: DeserializeOwned> FromRequest<AppState> for JsonBody<T> {
    type Rejection = Error;
    async fn from_request(req: Request, state: &AppState) -> Result<Self> {
        match axum::Json::<T>::from_request(req, state).await {
            Ok(axum::Json(v)) => Ok(Self(v)),
            Err(e) => Err(json_rejection(&e, state.config().body_limit_bytes)),
        }
    }
}

/// The error of a JSON body that did not parse: 413 over `limit` bytes, else 400.
pub(super) fn json_rejection(e: &JsonRejection, limit: usize) -> Error {
    if e.status() == StatusCode::PAYLOAD_TOO_LARGE {
        Error::PayloadTooLarge(limit)
    } else {
        Error::BadRequest(e.body_text())
    }
}

/// A query string.
#[derive(Debug)]
pub struct QueryArgs<T>(pub T);

impl<T: DeserializeOwned> FromRequestParts<AppState> for QueryArgs<T> {
    type Rejection = Error;
    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self> {
        let Query(v) = Query::<T>::from_request_parts(parts, state)
            .await
            .map_err(|e| Error::BadRequest(e.body_text()))?;
        Ok(Self(v))
    }
}

/// The peer's address, for the audit log ("unknown" when the server runs without it).
#[derive(Debug)]
pub struct Remote(pub String);

impl FromRequestParts<AppState> for Remote {
    type Rejection = Error;
    async fn from_request_parts(parts: &mut Parts, _: &AppState) -> Result<Self> {
        Ok(Self(
            parts
                .extensions
                .get::<ConnectInfo<SocketAddr>>()
                .map_or_else(|| "unknown".to_owned(), |c| c.0.to_string()),
        ))
    }
}

//! The crate's one error type, and its mapping to HTTP in one place.

use axum::Json;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use oracle_calls_proto::{ApiErrorBody, ErrorCode};

/// Everything that can go wrong in the server. Variants say whose fault it was: the client
/// (`BadRequest` … `Validation`), an upstream service (`Matrix*`, `LiveKit*`), the operator
/// (`Config`), or us (`Store`, `Internal`).
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// The request was malformed (bad call id, bad body, bad query).
    #[error("{0}")]
    BadRequest(String),
    /// Missing or invalid credentials.
    #[error("{0}")]
    Unauthorized(&'static str),
    /// Authenticated, but not allowed to do this.
    #[error("{0}")]
    Forbidden(&'static str),
    /// No such call.
    #[error("no such call")]
    NotFound,
    /// `POST /prekeys/claim` found neither a one-time nor a last-resort prekey.
    #[error("the oracle has published no prekeys")]
    NoPrekeys,
    /// `POST /rooms/{roomId}/claim` on a server with `livekit.early_join` off.
    #[error("this server offers no early join; join with the sync's token")]
    NoEarlyJoin,
    /// An illegal status transition or conflicting state.
    #[error("{0}")]
    Conflict(String),
    /// The call has ended.
    #[error("the call has ended")]
    Gone,
    /// The call started longer ago than `validation.max_call_age_secs`: it is over for the
    /// server, whatever its status says.
    #[error("the call is older than this server's maximum call age")]
    TooOld,
    /// The request body is over the limit.
    #[error("request body is larger than {0} bytes")]
    PayloadTooLarge(usize),
    /// The call event failed a check of `POST /calls/{callId}/sync`; the text names the check.
    #[error("call event failed validation: {0}")]
    Validation(String),
    /// A rate limit of `[limits]` refused the request; `retry_after_secs` goes out as
    /// `Retry-After`.
    #[error("{what}; retry after {retry_after_secs} s")]
    RateLimited {
        /// Which limit.
        what: &'static str,
        /// Seconds until a retry gets through.
        retry_after_secs: u64,
    },
    /// The server as a whole has no room for this request now (a concurrency cap).
    #[error("{0}")]
    Busy(&'static str),
    /// The homeserver could not be reached or timed out.
    #[error("the Matrix homeserver is unreachable: {0}")]
    MatrixUnavailable(String),
    /// The homeserver answered with something unusable.
    #[error("the Matrix homeserver answered badly: {0}")]
    MatrixBadAnswer(String),
    /// livekit-server could not be reached or timed out.
    #[error("LiveKit is unreachable: {0}")]
    LiveKitUnavailable(String),
    /// livekit-server answered with an error.
    #[error("LiveKit answered badly: {0}")]
    LiveKitBadAnswer(String),
    /// The configuration is invalid or a secret is missing.
    #[error("configuration: {0}")]
    Config(String),
    /// The database failed.
    #[error("store: {0}")]
    Store(sqlx::Error),
    /// The database cannot be reached now: it is down or restarting, refuses connections, or
    /// no connection came free within `store_wait_ms`. Answered 503 with a reason, so callers
    /// retry instead of treating it as a bug.
    #[error("the database is unavailable: {0}")]
    StoreUnavailable(sqlx::Error),
    /// A database migration failed.
    #[error("store migration: {0}")]
    Migrate(#[from] sqlx::migrate::MigrateError),
    /// A newer server migrated the database to a schema that servers of this version cannot
    /// run on (its migrations raised the oldest compatible server schema above ours).
    #[error(
        "store: the database's schema is at version {database}, migrated by a newer \
         oracle-calls server, and needs servers of schema {needs} or newer; this server's \
         schema is {ours}: upgrade this server"
    )]
    SchemaTooNew {
        /// The newest migration applied to the database.
        database: i64,
        /// The oldest server schema the database declares it works with.
        needs: i64,
        /// This server's newest migration.
        ours: i64,
    },
    /// A bug or an unexpected local failure.
    #[error("internal: {0}")]
    Internal(String),
}

impl Error {
    /// The HTTP status and stable code of this error.
    pub fn status_and_code(&self) -> (StatusCode, ErrorCode) {
        match self {
            Self::BadRequest(_) => (StatusCode::BAD_REQUEST, ErrorCode::BadRequest),
            Self::Unauthorized(_) => (StatusCode::UNAUTHORIZED, ErrorCode::Unauthorized),
            Self::Forbidden(_) => (StatusCode::FORBIDDEN, ErrorCode::Forbidden),
            Self::NotFound | Self::NoPrekeys | Self::NoEarlyJoin => {
                (StatusCode::NOT_FOUND, ErrorCode::NotFound)
            }
            Self::Conflict(_) => (StatusCode::CONFLICT, ErrorCode::Conflict),
            Self::Gone | Self::TooOld => (StatusCode::GONE, ErrorCode::Gone),
            Self::PayloadTooLarge(_) => (StatusCode::PAYLOAD_TOO_LARGE, ErrorCode::PayloadTooLarge),
            Self::Validation(_) => (
                StatusCode::UNPROCESSABLE_ENTITY,
                ErrorCode::ValidationFailed,
            ),
            Self::RateLimited { .. } => (StatusCode::TOO_MANY_REQUESTS, ErrorCode::RateLimited),
            Self::Busy(_) => (StatusCode::SERVICE_UNAVAILABLE, ErrorCode::Unavailable),
            Self::MatrixUnavailable(_)
            | Self::LiveKitUnavailable(_)
            | Self::StoreUnavailable(_) => {
                (StatusCode::SERVICE_UNAVAILABLE, ErrorCode::Unavailable)
            }
            Self::MatrixBadAnswer(_) | Self::LiveKitBadAnswer(_) => {
                (StatusCode::BAD_GATEWAY, ErrorCode::BadGateway)
            }
            Self::Config(_)
            | Self::Store(_)
            | Self::Migrate(_)
            | Self::SchemaTooNew { .. }
            | Self::Internal(_) => (StatusCode::INTERNAL_SERVER_ERROR, ErrorCode::Internal),
        }
    }
}

/// The one place where errors become responses. A 4xx carries its reason; a 502/503 says which
/// upstream failed; a 500 is generic and its cause is logged here, once, inside the request span.
impl IntoResponse for Error {
    fn into_response(self) -> Response {
        let (status, code) = self.status_and_code();
        let message = match &self {
            Self::MatrixUnavailable(_) => {
                tracing::warn!(error = %self, "upstream failure");
                "the Matrix homeserver is unreachable".to_owned()
            }
            Self::MatrixBadAnswer(_) => {
                tracing::warn!(error = %self, "upstream failure");
                "the Matrix homeserver answered badly".to_owned()
            }
            Self::LiveKitUnavailable(_) => {
                tracing::warn!(error = %self, "upstream failure");
                "LiveKit is unreachable".to_owned()
            }
            Self::LiveKitBadAnswer(_) => {
                tracing::warn!(error = %self, "upstream failure");
                "LiveKit answered badly".to_owned()
            }
            Self::StoreUnavailable(_) => {
                tracing::warn!(error = %self, "store unavailable");
                "the database is unavailable; retry later".to_owned()
            }
            _ if status.is_server_error() => {
                tracing::error!(error = %self, "request failed");
                "internal error; see the server log".to_owned()
            }
            _ => self.to_string(),
        };
        let retry_after = match &self {
            Self::RateLimited {
                retry_after_secs, ..
            } => Some(*retry_after_secs),
            Self::Busy(_) => Some(1),
            Self::StoreUnavailable(_) => Some(2),
            _ => None,
        };
        let mut resp = (status, Json(ApiErrorBody::new(code, message))).into_response();
        if let Some(secs) = retry_after {
            resp.headers_mut()
                .insert(axum::http::header::RETRY_AFTER, secs.into());
        }
        resp
    }
}

/// A database error becomes [`Error::StoreUnavailable`] when it says the database cannot be
/// reached now (see [`store_unreachable`]), else [`Error::Store`].
impl From<sqlx::Error> for Error {
    fn from(e: sqlx::Error) -> Self {
        if store_unreachable(&e) {
            Self::StoreUnavailable(e)
        } else {
            Self::Store(e)
        }
    }
}

/// True for the errors of a database that is away rather than of a bad query: no connection
/// within the pool's wait, a closed pool, a socket error, and PostgreSQL's SQLSTATE classes
/// 08 (connection exception) and 57P (operator intervention: shutting down, starting up),
/// and 53300 (too many connections).
fn store_unreachable(e: &sqlx::Error) -> bool {
    match e {
        sqlx::Error::PoolTimedOut | sqlx::Error::PoolClosed | sqlx::Error::Io(_) => true,
        sqlx::Error::Database(db) => db
            .code()
            .is_some_and(|c| c.starts_with("08") || c.starts_with("57P") || c == "53300"),
        _ => false,
    }
}

/// Shorthand for results of this crate.
pub type Result<T, E = Error> = std::result::Result<T, E>;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn server_errors_hide_their_cause() {
        let r = Error::Internal("secret path /x".into()).into_response();
        assert_eq!(r.status(), StatusCode::INTERNAL_SERVER_ERROR);
        let r = Error::Validation("sender is not bound to userDid".into()).into_response();
        assert_eq!(r.status(), StatusCode::UNPROCESSABLE_ENTITY);
        let r = Error::RateLimited {
            what: "too many",
            retry_after_secs: 7,
        }
        .into_response();
        assert_eq!(r.status(), StatusCode::TOO_MANY_REQUESTS);
        assert_eq!(r.headers()["retry-after"], "7");
        let r = Error::Busy("full").into_response();
        assert_eq!(r.status(), StatusCode::SERVICE_UNAVAILABLE);
        assert_eq!(r.headers()["retry-after"], "1");
    }

    #[test]
    fn an_unreachable_store_is_a_503_with_a_reason_and_a_bad_query_a_500() {
        for e in [
            sqlx::Error::PoolTimedOut,
            sqlx::Error::PoolClosed,
            sqlx::Error::Io(std::io::ErrorKind::ConnectionRefused.into()),
        ] {
            let err = Error::from(e);
            assert!(matches!(err, Error::StoreUnavailable(_)), "{err:?}");
            let r = err.into_response();
            assert_eq!(r.status(), StatusCode::SERVICE_UNAVAILABLE);
            assert_eq!(r.headers()["retry-after"], "2");
        }
        let err = Error::from(sqlx::Error::RowNotFound);
        assert!(matches!(err, Error::Store(_)), "{err:?}");
        assert_eq!(
            err.into_response().status(),
            StatusCode::INTERNAL_SERVER_ERROR
        );
    }
}

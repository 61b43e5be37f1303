//! The directory's HTTP API (`/kt/v1/…`): reads for everyone; publishing an oracle's record
//! with an operator token scoped to its DID, and a person's own record with a Matrix OpenID
//! token that their homeserver confirms. Errors are `{"error":{"code","message"}}` as in the
//! server's API; a 5xx body is generic and its cause is logged once.

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::Context as _;
use axum::body::Bytes;
use axum::extract::rejection::{BytesRejection, PathRejection, QueryRejection};
use axum::extract::{DefaultBodyLimit, Path, Query, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use oracle_calls_kt::{
    AuditProof, Directory, DirectoryPublicKey, EpochLog, HistoryResponse, LookupResponse,
    OracleRecord, PersonId, PersonRecord, SignedCheckpoint,
};
use oracle_calls_proto::{ApiErrorBody, Did, ErrorCode};
use serde::{Deserialize, Serialize};
use sha2::{Digest as _, Sha256};
use subtle::ConstantTimeEq as _;

use super::{Config, DirectoryKeys, Homeserver, Publisher};

/// The most epochs one audit proof covers; an auditor asks for longer runs in pieces.
pub const MAX_AUDIT_EPOCHS: u64 = 128;

/// Opens the directory (replaying its log, refusing a log that does not replay), binds, prints
/// `listening on ADDR` on standard output and serves until SIGINT/SIGTERM.
pub async fn serve(config: Config, keys: DirectoryKeys) -> anyhow::Result<()> {
    let log = EpochLog::connect(&config.database_url()?)
        .await
        .context("opening the directory's store")?;
    let directory = Directory::open(keys.signing, keys.vrf, log, now_ms())
        .await
        .context("refusing to start")?;
    let latest = directory.latest_checkpoint().await?.checkpoint;
    tracing::info!(
        key_id = %directory.public_key().key_id(),
        epoch = latest.epoch,
        publishers = config.publishers.len(),
        homeservers = config.homeservers.len(),
        "directory ready"
    );
    let http = reqwest::Client::builder()
        .connect_timeout(Duration::from_secs(3))
        .timeout(Duration::from_secs(10))
        .build()
        .context("building the HTTP client for homeservers")?;
    let listener = tokio::net::TcpListener::bind(config.listen)
        .await
        .with_context(|| format!("binding {}", config.listen))?;
    let addr = listener.local_addr().context("the bound address")?;
    println!("listening on {addr}");
    let app = router(Arc::new(AppState {
        directory,
        publishers: config.publishers,
        homeservers: config.homeservers,
        http,
        person_publishes: PublishLimit::new(config.person_publishes_per_hour),
    }))
    .layer(DefaultBodyLimit::max(config.body_limit_bytes));
    axum::serve(listener, app)
        .with_graceful_shutdown(crate::serve::shutdown_signal())
        .await
        .context("serving")
}

/// SHA-256 of an operator token, as kt.toml stores it.
pub fn token_sha256(token: &str) -> [u8; 32] {
    Sha256::digest(token.as_bytes()).into()
}

struct AppState {
    directory: Directory,
    publishers: Vec<Publisher>,
    homeservers: Vec<Homeserver>,
    http: reqwest::Client,
    person_publishes: PublishLimit,
}

/// At most `per_hour` publishes per user in any hour (a sliding window).
struct PublishLimit {
    per_hour: usize,
    recent: Mutex<HashMap<String, VecDeque<Instant>>>,
}

/// Users tracked before the windows are swept.
const SWEEP_AT: usize = 10_000;

impl PublishLimit {
    fn new(per_hour: u32) -> Self {
        Self {
            per_hour: usize::try_from(per_hour).unwrap_or(usize::MAX),
            recent: Mutex::new(HashMap::new()),
        }
    }

    /// Counts a publish by `user`, or says how long until the next one is allowed.
    fn take(&self, user: &str) -> Result<(), Duration> {
        const HOUR: Duration = Duration::from_secs(3600);
        let now = Instant::now();
        let mut recent = self.recent.lock().map_err(|_| HOUR)?;
        if recent.len() >= SWEEP_AT {
            recent.retain(|_, times| times.back().is_some_and(|t| now.duration_since(*t) < HOUR));
        }
        let times = recent.entry(user.to_owned()).or_default();
        while times
            .front()
            .is_some_and(|t| now.duration_since(*t) >= HOUR)
        {
            times.pop_front();
        }
        if times.len() >= self.per_hour {
            let oldest = times.front().copied().unwrap_or(now);
            return Err(HOUR.saturating_sub(now.duration_since(oldest)));
        }
        times.push_back(now);
        Ok(())
    }
}

fn router(state: Arc<AppState>) -> Router {
    // The read routes serve public, signed data: any web page may read them (a browser client
    // verifies an oracle's record from its own origin), GET only and without credentials.
    // Publishing is for the oracles' operators and the people's own clients, never from a
    // page: no CORS headers there.
    let public = Router::new()
        .route("/kt/v1/public-key", get(public_key))
        .route("/kt/v1/checkpoint", get(latest_checkpoint))
        .route("/kt/v1/checkpoint/{epoch}", get(checkpoint))
        .route("/kt/v1/lookup/{label}", get(lookup))
        .route("/kt/v1/history/{label}", get(history))
        .route("/kt/v1/audit", get(audit))
        .layer(
            tower_http::cors::CorsLayer::new()
                .allow_origin(tower_http::cors::Any)
                .allow_methods([axum::http::Method::GET]),
        );
    Router::new()
        .merge(public)
        .route("/kt/v1/publish", post(publish))
        .route("/kt/v1/people/publish", post(publish_person))
        .fallback(no_route)
        .with_state(state)
}

/// Every error a request can get, mapped to HTTP in [`ApiError::into_response`].
#[derive(Debug)]
enum ApiError {
    BadRequest(String),
    Unauthorized(&'static str),
    Forbidden(&'static str),
    NotFound(&'static str),
    PayloadTooLarge,
    TooManyRequests(Duration),
    /// The homeserver that must confirm an OpenID token could not.
    BadGateway(String),
    /// Logged once here; the body says nothing more.
    Internal(oracle_calls_kt::Error),
}

impl From<oracle_calls_kt::Error> for ApiError {
    fn from(e: oracle_calls_kt::Error) -> Self {
        use oracle_calls_kt::Error as E;
        match e {
            E::NotFound => Self::NotFound("no record for this DID or user id"),
            E::BadRequest(why) => Self::BadRequest(why.to_owned()),
            other => Self::Internal(other),
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let retry_after = match &self {
            Self::TooManyRequests(wait) => Some(wait.as_secs().max(1)),
            _ => None,
        };
        let (status, code, message) = match self {
            Self::BadRequest(m) => (StatusCode::BAD_REQUEST, ErrorCode::BadRequest, m),
            Self::Unauthorized(m) => (StatusCode::UNAUTHORIZED, ErrorCode::Unauthorized, m.into()),
            Self::Forbidden(m) => (StatusCode::FORBIDDEN, ErrorCode::Forbidden, m.into()),
            Self::NotFound(m) => (StatusCode::NOT_FOUND, ErrorCode::NotFound, m.into()),
            Self::PayloadTooLarge => (
                StatusCode::PAYLOAD_TOO_LARGE,
                ErrorCode::PayloadTooLarge,
                "request body is too large".into(),
            ),
            Self::TooManyRequests(wait) => (
                StatusCode::TOO_MANY_REQUESTS,
                ErrorCode::RateLimited,
                format!(
                    "too many publishes for this user; retry in {} s",
                    wait.as_secs().max(1)
                ),
            ),
            Self::BadGateway(m) => (StatusCode::BAD_GATEWAY, ErrorCode::BadGateway, m),
            Self::Internal(e) => {
                tracing::error!(error = %e, source = ?std::error::Error::source(&e), "directory request failed");
                (
                    StatusCode::INTERNAL_SERVER_ERROR,
                    ErrorCode::Internal,
                    "internal error".into(),
                )
            }
        };
        let mut response = (status, Json(ApiErrorBody::new(code, message))).into_response();
        if status == StatusCode::UNAUTHORIZED {
            response.headers_mut().insert(
                header::WWW_AUTHENTICATE,
                header::HeaderValue::from_static("Bearer"),
            );
        }
        if let Some(secs) = retry_after {
            response
                .headers_mut()
                .insert(header::RETRY_AFTER, header::HeaderValue::from(secs));
        }
        response
    }
}

type ApiResult<T> = Result<Json<T>, ApiError>;

async fn no_route() -> ApiError {
    ApiError::NotFound("no such endpoint")
}

async fn public_key(State(s): State<Arc<AppState>>) -> Json<DirectoryPublicKey> {
    Json(s.directory.public_key().clone())
}

async fn latest_checkpoint(State(s): State<Arc<AppState>>) -> ApiResult<SignedCheckpoint> {
    Ok(Json(s.directory.latest_checkpoint().await?))
}

async fn checkpoint(
    State(s): State<Arc<AppState>>,
    epoch: Result<Path<u64>, PathRejection>,
) -> ApiResult<SignedCheckpoint> {
    let Path(epoch) =
        epoch.map_err(|_| ApiError::BadRequest("the epoch must be a number".into()))?;
    s.directory
        .checkpoint(epoch)
        .await
        .map(Json)
        .ok_or(ApiError::NotFound(
            "the directory has not reached this epoch",
        ))
}

async fn lookup(
    State(s): State<Arc<AppState>>,
    label: Result<Path<String>, PathRejection>,
) -> ApiResult<LookupResponse> {
    Ok(Json(match path_label(label)? {
        Label::Oracle(did) => s.directory.lookup(&did).await?,
        Label::Person(person) => s.directory.lookup(&person).await?,
    }))
}

async fn history(
    State(s): State<Arc<AppState>>,
    label: Result<Path<String>, PathRejection>,
) -> ApiResult<HistoryResponse> {
    Ok(Json(match path_label(label)? {
        Label::Oracle(did) => s.directory.history(&did).await?,
        Label::Person(person) => s.directory.history(&person).await?,
    }))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct AuditQuery {
    from: u64,
    to: u64,
}

async fn audit(
    State(s): State<Arc<AppState>>,
    query: Result<Query<AuditQuery>, QueryRejection>,
) -> ApiResult<AuditProof> {
    let Query(AuditQuery { from, to }) = query.map_err(|_| {
        ApiError::BadRequest("expected ?from=E1&to=E2 with epochs as numbers".into())
    })?;
    if to.checked_sub(from).is_some_and(|n| n > MAX_AUDIT_EPOCHS) {
        return Err(ApiError::BadRequest(format!(
            "an audit proof covers at most {MAX_AUDIT_EPOCHS} epochs; ask in pieces"
        )));
    }
    Ok(Json(s.directory.audit_proof(from, to).await?))
}

/// `POST /kt/v1/publish`: one oracle's new record.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct PublishRequest {
    did: Did,
    record: OracleRecord,
}

#[derive(Serialize)]
struct PublishResponse {
    /// The checkpoint of the epoch that holds the record (the latest one if the record was
    /// already the current one).
    checkpoint: SignedCheckpoint,
}

async fn publish(
    State(s): State<Arc<AppState>>,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> ApiResult<PublishResponse> {
    // Authenticate before reading anything the caller sent.
    let allowed = authenticate(&s.publishers, &headers)?;
    let body = read_body(body)?;
    let request: PublishRequest = serde_json::from_slice(&body).map_err(|e| {
        ApiError::BadRequest(format!(
            "expected {{\"did\", \"record\"}} with an oracle record: {e}"
        ))
    })?;
    if !allowed.contains(&&request.did) {
        return Err(ApiError::Forbidden(
            "this credential may not publish for that DID",
        ));
    }
    // The directory publishes only what decodes back to itself (clients decode strictly);
    // anything else is its BadRequest, a 400 here.
    let checkpoint = s
        .directory
        .publish(vec![(request.did.clone(), request.record)], now_ms())
        .await?;
    tracing::info!(did = %request.did.as_str(), epoch = checkpoint.checkpoint.epoch, "published");
    Ok(Json(PublishResponse { checkpoint }))
}

/// `POST /kt/v1/people/publish`: a person's own record.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct PersonPublishRequest {
    record: PersonRecord,
}

/// A person publishes the devices they call from. The bearer token is a Matrix OpenID token
/// (`/_matrix/client/v3/user/{userId}/openid/request_token`); the homeserver configured for
/// the record's server name must confirm that it belongs to the record's user.
async fn publish_person(
    State(s): State<Arc<AppState>>,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> ApiResult<PublishResponse> {
    let token = bearer(&headers).ok_or(ApiError::Unauthorized(
        "publishing a person's record needs that person's Matrix OpenID token",
    ))?;
    if !oracle_calls_server::bearer_token_well_formed(token) {
        return Err(ApiError::Unauthorized("malformed OpenID token"));
    }
    let body = read_body(body)?;
    let request: PersonPublishRequest = serde_json::from_slice(&body).map_err(|e| {
        ApiError::BadRequest(format!("expected {{\"record\"}} with a person record: {e}"))
    })?;
    let record = request.record;
    record
        .check()
        .map_err(|e| ApiError::BadRequest(e.to_string()))?;
    let person = PersonId::parse(&record.matrix_user_id)
        .map_err(|_| ApiError::BadRequest("matrixUserId is not a Matrix user id".into()))?;
    let homeserver = s
        .homeservers
        .iter()
        .find(|h| h.server_name == person.server_name())
        .ok_or(ApiError::Forbidden(
            "this directory takes no person records from that homeserver",
        ))?;
    let userinfo = format!(
        "{}/_matrix/federation/v1/openid/userinfo",
        homeserver.url.trim_end_matches('/')
    );
    let user = oracle_calls_server::openid_userinfo(&s.http, &userinfo, token)
        .await
        .map_err(|e| {
            tracing::warn!(error = %e, homeserver = %homeserver.server_name, "an OpenID token could not be checked");
            ApiError::BadGateway(format!(
                "the homeserver {} could not check the token",
                homeserver.server_name
            ))
        })?
        .ok_or(ApiError::Unauthorized(
            "the homeserver does not know this OpenID token (unknown or expired)",
        ))?;
    if user != person.as_str() {
        return Err(ApiError::Forbidden(
            "the OpenID token belongs to another user than the record's",
        ));
    }
    s.person_publishes
        .take(person.as_str())
        .map_err(ApiError::TooManyRequests)?;
    let devices = record.devices.len();
    let checkpoint = s
        .directory
        .publish(vec![(person.clone(), record)], now_ms())
        .await?;
    tracing::info!(user = %person, devices, epoch = checkpoint.checkpoint.epoch, "published a person's record");
    Ok(Json(PublishResponse { checkpoint }))
}

fn read_body(body: Result<Bytes, BytesRejection>) -> Result<Bytes, ApiError> {
    body.map_err(|e| {
        if e.status() == StatusCode::PAYLOAD_TOO_LARGE {
            ApiError::PayloadTooLarge
        } else {
            ApiError::BadRequest("the request body could not be read".into())
        }
    })
}

/// The request's `Authorization: Bearer` token, if it has a non-empty one.
fn bearer(headers: &HeaderMap) -> Option<&str> {
    headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .map(str::trim)
        .filter(|t| !t.is_empty())
}

/// The DIDs the request's bearer token may publish for (every configured hash is compared,
/// in constant time).
fn authenticate<'a>(
    publishers: &'a [Publisher],
    headers: &HeaderMap,
) -> Result<Vec<&'a Did>, ApiError> {
    let token = bearer(headers).ok_or(ApiError::Unauthorized(
        "publishing needs the oracle operator's bearer token",
    ))?;
    let presented = token_sha256(token);
    let allowed: Vec<&Did> = publishers
        .iter()
        .filter(|p| bool::from(p.token_sha256.ct_eq(&presented)))
        .map(|p| &p.did)
        .collect();
    if allowed.is_empty() {
        return Err(ApiError::Unauthorized("unknown operator token"));
    }
    Ok(allowed)
}

/// What a read names: an oracle or a person.
enum Label {
    Oracle(Did),
    Person(PersonId),
}

fn path_label(label: Result<Path<String>, PathRejection>) -> Result<Label, ApiError> {
    let Ok(Path(text)) = label else {
        return Err(ApiError::BadRequest(
            "the path does not hold a label".into(),
        ));
    };
    if let Ok(did) = Did::parse(&text) {
        return Ok(Label::Oracle(did));
    }
    PersonId::parse(&text).map(Label::Person).map_err(|_| {
        ApiError::BadRequest("the path holds neither a DID nor a Matrix user id".into())
    })
}

fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .ok()
        .and_then(|d| i64::try_from(d.as_millis()).ok())
        .unwrap_or(0)
}

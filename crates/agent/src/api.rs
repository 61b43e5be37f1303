//! The agent's side of the oracle-calls server API: the well-known document, the key
//! endpoint and status updates, authenticated with the agent's API key.

use std::sync::Arc;
use std::time::Duration;

use oracle_calls_proto::{
    AgentJob, ApiErrorBody, CallId, DeclineJobRequest, ErrorCode, KeyResponse, NextJobRequest,
    PrekeyStock, PublishPrekeysRequest, SignedPrekey, UpdateRequest, WellKnown,
};
use tracing::{debug, warn};
use zeroize::Zeroizing;

/// Attempts of a retried request (server errors and timeouts only).
const ATTEMPTS: u32 = 5;
/// First backoff; doubled per attempt (100, 200, 400, 800 ms).
const FIRST_BACKOFF: Duration = Duration::from_millis(100);

/// A failed server request.
#[derive(Debug, Clone, thiserror::Error)]
#[non_exhaustive]
pub enum ApiError {
    /// The server answered with an error status.
    #[error("server answered {status}: {message}")]
    Status {
        /// HTTP status.
        status: u16,
        /// The error body's `code`, if it had one.
        code: Option<ErrorCode>,
        /// The error body's `message` (or the raw body).
        message: String,
    },
    /// The server could not be reached or did not answer in time.
    #[error("server unreachable: {0}")]
    Unreachable(String),
    /// The answer was not what the API promises.
    #[error("unexpected answer from the server: {0}")]
    BadAnswer(String),
}

impl ApiError {
    /// Whether trying again may help (5xx, timeouts, connection failures).
    pub fn is_transient(&self) -> bool {
        match self {
            Self::Status { status, .. } => *status >= 500,
            Self::Unreachable(_) => true,
            Self::BadAnswer(_) => false,
        }
    }
}

/// A client of the oracle-calls server, authenticated as this oracle's agent.
#[derive(Clone)]
pub struct ServerApi {
    base: String,
    api_key: Arc<Zeroizing<String>>,
    http: reqwest::Client,
}

impl std::fmt::Debug for ServerApi {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ServerApi")
            .field("base", &self.base)
            .finish_non_exhaustive()
    }
}

impl ServerApi {
    /// A client of the server at `base` (`http://host:port`).
    ///
    /// # Errors
    /// [`ApiError::BadAnswer`] if the HTTP client cannot be built.
    pub fn new(base: &str, api_key: Zeroizing<String>) -> Result<Self, ApiError> {
        let http = reqwest::Client::builder()
            .connect_timeout(Duration::from_secs(3))
            .timeout(Duration::from_secs(10))
            .build()
            .map_err(|e| ApiError::BadAnswer(e.to_string()))?;
        Ok(Self {
            base: base.trim_end_matches('/').to_owned(),
            api_key: Arc::new(api_key),
            http,
        })
    }

    /// The server's base URL.
    pub fn base(&self) -> &str {
        &self.base
    }

    /// `GET /.well-known/oracle-calls`.
    ///
    /// # Errors
    /// [`ApiError`].
    pub async fn well_known(&self) -> Result<WellKnown, ApiError> {
        let req = self
            .http
            .get(format!("{}/.well-known/oracle-calls", self.base));
        json(req).await
    }

    /// `GET /calls/{callId}/key`, retried with backoff on server errors and timeouts.
    ///
    /// # Errors
    /// [`ApiError`]: 4xx at once, others after the last attempt.
    pub async fn key(&self, call_id: &CallId) -> Result<KeyResponse, ApiError> {
        let url = format!("{}/calls/{}/key", self.base, call_id.to_path_segment());
        retry("key", || {
            json(self.http.get(&url).bearer_auth(self.api_key.as_str()))
        })
        .await
    }

    /// `POST /calls/{callId}/update`, retried like [`ServerApi::key`].
    ///
    /// # Errors
    /// [`ApiError`].
    pub async fn update(&self, call_id: &CallId, req: &UpdateRequest) -> Result<(), ApiError> {
        let url = format!("{}/calls/{}/update", self.base, call_id.to_path_segment());
        retry("update", || async {
            json::<serde_json::Value>(
                self.http
                    .post(&url)
                    .bearer_auth(self.api_key.as_str())
                    .json(req),
            )
            .await
            .map(drop)
        })
        .await
    }
}

impl ServerApi {
    /// `GET /prekeys`: how many one-time prekeys the server still holds, and whether it holds
    /// a last-resort one. Retried like [`ServerApi::key`].
    ///
    /// # Errors
    /// [`ApiError`].
    pub async fn prekey_stock(&self) -> Result<PrekeyStock, ApiError> {
        let url = format!("{}/prekeys", self.base);
        retry("prekey stock", || {
            json(self.http.get(&url).bearer_auth(self.api_key.as_str()))
        })
        .await
    }

    /// `POST /prekeys`: publishes signed prekeys (1 to 100). Not retried: a retry after a lost
    /// answer would be refused as a duplicate.
    ///
    /// # Errors
    /// [`ApiError`].
    pub async fn publish_prekeys(&self, prekeys: &[SignedPrekey]) -> Result<PrekeyStock, ApiError> {
        let body = PublishPrekeysRequest {
            prekeys: prekeys.to_vec(),
        };
        json(
            self.http
                .post(format!("{}/prekeys", self.base))
                .bearer_auth(self.api_key.as_str())
                .json(&body),
        )
        .await
    }
}

/// How long one `POST /agent/jobs/next` asks to wait (the server may cap it lower).
pub(crate) const JOB_WAIT: Duration = Duration::from_secs(15);

impl ServerApi {
    /// `POST /agent/jobs/next`: waits up to [`JOB_WAIT`] for a call the server hands this
    /// agent directly (docs/PROTOCOL.md §6.8); `None` when none came. Not retried here: the
    /// caller asks again.
    ///
    /// # Errors
    /// [`ApiError`]; a 404 means the server does not hand calls out directly.
    pub async fn next_job(&self) -> Result<Option<AgentJob>, ApiError> {
        let wait_ms = u64::try_from(JOB_WAIT.as_millis()).unwrap_or(u64::MAX);
        let resp = self
            .http
            .post(format!("{}/agent/jobs/next", self.base))
            .bearer_auth(self.api_key.as_str())
            .timeout(JOB_WAIT + Duration::from_secs(10))
            .json(&NextJobRequest {
                wait_ms: Some(wait_ms),
            })
            .send()
            .await
            .map_err(|e| ApiError::Unreachable(e.to_string()))?;
        if resp.status() == reqwest::StatusCode::NO_CONTENT {
            return Ok(None);
        }
        answer(resp).await.map(Some)
    }

    /// `POST /agent/jobs/{jobId}/decline`: LiveKit then dispatches the call to the pool.
    /// Retried like [`ServerApi::key`].
    ///
    /// # Errors
    /// [`ApiError`].
    pub async fn decline_job(&self, job_id: &str, reason: &str) -> Result<(), ApiError> {
        let url = format!("{}/agent/jobs/{job_id}/decline", self.base);
        let body = DeclineJobRequest {
            reason: reason.to_owned(),
        };
        retry("decline", || async {
            let resp = self
                .http
                .post(&url)
                .bearer_auth(self.api_key.as_str())
                .json(&body)
                .send()
                .await
                .map_err(|e| ApiError::Unreachable(e.to_string()))?;
            if resp.status() == reqwest::StatusCode::NO_CONTENT {
                return Ok(());
            }
            answer::<serde_json::Value>(resp).await.map(drop)
        })
        .await
    }
}

async fn retry<T, F, Fut>(what: &str, mut f: F) -> Result<T, ApiError>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<T, ApiError>>,
{
    let mut backoff = FIRST_BACKOFF;
    let mut attempt = 1;
    loop {
        match f().await {
            Ok(v) => return Ok(v),
            Err(e) if e.is_transient() && attempt < ATTEMPTS => {
                warn!(request = what, attempt, error = %e, retry_in_ms = backoff.as_millis() as u64, "server request failed; retrying");
                tokio::time::sleep(backoff).await;
                backoff = backoff.saturating_mul(2);
                attempt += 1;
            }
            Err(e) => return Err(e),
        }
    }
}

async fn json<T: serde::de::DeserializeOwned>(req: reqwest::RequestBuilder) -> Result<T, ApiError> {
    let resp = req
        .send()
        .await
        .map_err(|e| ApiError::Unreachable(e.to_string()))?;
    answer(resp).await
}

async fn answer<T: serde::de::DeserializeOwned>(resp: reqwest::Response) -> Result<T, ApiError> {
    let status = resp.status().as_u16();
    let body = resp
        .bytes()
        .await
        .map_err(|e| ApiError::Unreachable(e.to_string()))?;
    if !(200..300).contains(&status) {
        let (code, message) = match serde_json::from_slice::<ApiErrorBody>(&body) {
            Ok(b) => (Some(b.error.code), b.error.message),
            Err(_) => (
                None,
                String::from_utf8_lossy(&body).chars().take(200).collect(),
            ),
        };
        debug!(status, ?code, "server error answer");
        return Err(ApiError::Status {
            status,
            code,
            message,
        });
    }
    serde_json::from_slice(&body).map_err(|e| ApiError::BadAnswer(e.to_string()))
}

//! The user's side of the oracle-calls server API (Matrix OpenID token auth).

use std::time::Duration;

use oracle_calls_proto::{
    ApiErrorBody, CallId, ListCallsQuery, ListCallsResponse, RoomClaimResponse, RoomName,
    SignedPrekey, SyncRequest, SyncResponse, UpdateRequest, WellKnown,
};
use tracing::warn;

use crate::CallError;

/// Attempts for retried requests (server errors, timeouts, refused connections).
pub(crate) const ATTEMPTS: u32 = 4;

/// A client of the oracle-calls server for users.
#[derive(Clone, Debug)]
pub struct UserApi {
    base: String,
    http: reqwest::Client,
}

/// Longest `Retry-After` a request waits out by itself; a longer one is the caller's to see.
const MAX_RETRY_AFTER: Duration = Duration::from_secs(5);

enum Failure {
    Transient(String),
    /// 429 (a rate limit): retry after the time the server named.
    Limited(Duration, CallError),
    Final(CallError),
}

impl UserApi {
    /// A client of the server at `base`.
    ///
    /// # Errors
    /// [`CallError::Setup`] if the HTTP client cannot be built, [`CallError::InsecureUrl`]
    /// for `http://` outside loopback.
    pub fn new(base: &str) -> Result<Self, CallError> {
        require_secure(base)?;
        let http = reqwest::Client::builder()
            .connect_timeout(Duration::from_secs(3))
            .timeout(Duration::from_secs(15))
            .build()
            .map_err(|e| CallError::Setup(e.to_string()))?;
        Ok(Self {
            base: base.trim_end_matches('/').to_owned(),
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
    /// [`CallError::Server`] / [`CallError::ServerUnreachable`].
    pub async fn well_known(&self) -> Result<WellKnown, CallError> {
        let url = format!("{}/.well-known/oracle-calls", self.base);
        self.retry(|| self.http.get(&url)).await
    }

    /// `POST /calls/{callId}/sync`.
    ///
    /// # Errors
    /// As [`UserApi::well_known`].
    pub async fn sync(&self, call_id: &CallId, openid: &str) -> Result<SyncResponse, CallError> {
        let url = format!("{}/calls/{}/sync", self.base, call_id.to_path_segment());
        let body = SyncRequest {
            call_id: None,
            session_id: None,
        };
        self.retry(|| self.http.post(&url).bearer_auth(openid).json(&body))
            .await
    }

    /// `POST /rooms/{roomId}/claim`: the call's LiveKit room, claimed for this user, and a
    /// token to join it before the call is synced (docs/PROTOCOL.md §6.9). Not retried: a
    /// client whose claim fails joins after the sync instead.
    ///
    /// # Errors
    /// [`CallError::Server`] (404: the server offers no early join),
    /// [`CallError::ServerUnreachable`].
    pub async fn claim_room(
        &self,
        room: &RoomName,
        openid: &str,
    ) -> Result<RoomClaimResponse, CallError> {
        let url = format!("{}/rooms/{}/claim", self.base, room.as_str());
        match once(self.http.post(&url).bearer_auth(openid)).await {
            Ok(r) => Ok(r),
            Err(Failure::Final(e) | Failure::Limited(_, e)) => Err(e),
            Err(Failure::Transient(last)) => {
                Err(CallError::ServerUnreachable { attempts: 1, last })
            }
        }
    }

    /// `POST /prekeys/claim`: one of the oracle's signed prekeys, never handed out before
    /// (or its last-resort prekey when none is left). Not retried: each attempt would use up
    /// another one-time prekey.
    ///
    /// # Errors
    /// [`CallError::Server`] (404: the oracle published none), [`CallError::ServerUnreachable`].
    pub async fn claim_prekey(&self, openid: &str) -> Result<SignedPrekey, CallError> {
        let url = format!("{}/prekeys/claim", self.base);
        for attempt in 1..=ATTEMPTS {
            match once(self.http.post(&url).bearer_auth(openid)).await {
                Ok(p) => return Ok(p),
                Err(Failure::Final(e)) => return Err(e),
                Err(Failure::Transient(last)) => {
                    return Err(CallError::ServerUnreachable { attempts: 1, last });
                }
                // A rate limit answers before any prekey is taken: waiting and asking again
                // uses none up.
                Err(Failure::Limited(wait, e)) => {
                    if attempt == ATTEMPTS || wait > MAX_RETRY_AFTER {
                        return Err(e);
                    }
                    tokio::time::sleep(wait).await;
                }
            }
        }
        Err(CallError::ServerUnreachable {
            attempts: ATTEMPTS,
            last: "rate-limited".into(),
        })
    }

    /// `POST /calls/{callId}/update`.
    ///
    /// # Errors
    /// As [`UserApi::well_known`].
    pub async fn update(
        &self,
        call_id: &CallId,
        openid: &str,
        req: &UpdateRequest,
    ) -> Result<serde_json::Value, CallError> {
        let url = format!("{}/calls/{}/update", self.base, call_id.to_path_segment());
        self.retry(|| self.http.post(&url).bearer_auth(openid).json(req))
            .await
    }

    /// `GET /calls`.
    ///
    /// # Errors
    /// As [`UserApi::well_known`].
    pub async fn list(
        &self,
        openid: &str,
        query: &ListCallsQuery,
    ) -> Result<ListCallsResponse, CallError> {
        let url = format!("{}/calls", self.base);
        self.retry(|| self.http.get(&url).bearer_auth(openid).query(query))
            .await
    }

    async fn retry<T: serde::de::DeserializeOwned>(
        &self,
        req: impl Fn() -> reqwest::RequestBuilder,
    ) -> Result<T, CallError> {
        let mut backoff = Duration::from_millis(200);
        let mut last = String::new();
        for attempt in 1..=ATTEMPTS {
            match once(req()).await {
                Ok(v) => return Ok(v),
                Err(Failure::Final(e)) => return Err(e),
                Err(Failure::Limited(wait, e)) => {
                    if attempt == ATTEMPTS || wait > MAX_RETRY_AFTER {
                        return Err(e);
                    }
                    warn!(
                        attempt,
                        retry_in_ms = wait.as_millis() as u64,
                        "rate-limited by the server; waiting as it asked"
                    );
                    tokio::time::sleep(wait).await;
                }
                Err(Failure::Transient(e)) => {
                    if attempt < ATTEMPTS {
                        warn!(attempt, error = %e, retry_in_ms = backoff.as_millis() as u64, "server request failed; retrying");
                        tokio::time::sleep(backoff).await;
                        backoff = backoff.saturating_mul(2);
                    }
                    last = e;
                }
            }
        }
        Err(CallError::ServerUnreachable {
            attempts: ATTEMPTS,
            last,
        })
    }
}

async fn once<T: serde::de::DeserializeOwned>(req: reqwest::RequestBuilder) -> Result<T, Failure> {
    let resp = req
        .send()
        .await
        .map_err(|e| Failure::Transient(e.to_string()))?;
    let status = resp.status().as_u16();
    let retry_after = resp
        .headers()
        .get(reqwest::header::RETRY_AFTER)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().parse::<u64>().ok());
    let body = resp
        .bytes()
        .await
        .map_err(|e| Failure::Transient(e.to_string()))?;
    if status >= 500 {
        return Err(Failure::Transient(format!(
            "HTTP {status}: {}",
            message(&body)
        )));
    }
    if status == 429 {
        let error = CallError::Server {
            status,
            message: message(&body),
        };
        // No or a bad Retry-After: one second, as the server's smallest.
        let wait = Duration::from_secs(retry_after.unwrap_or(1).max(1));
        return Err(Failure::Limited(wait, error));
    }
    if !(200..300).contains(&status) {
        return Err(Failure::Final(CallError::Server {
            status,
            message: message(&body),
        }));
    }
    serde_json::from_slice(&body).map_err(|e| {
        Failure::Final(CallError::Server {
            status,
            message: format!("unexpected answer: {e}"),
        })
    })
}

fn message(body: &[u8]) -> String {
    serde_json::from_slice::<ApiErrorBody>(body)
        .map(|b| b.error.message)
        .unwrap_or_else(|_| String::from_utf8_lossy(body).chars().take(200).collect())
}

/// `https://` anywhere; `http://` only to a loopback host (a local stack, a sidecar).
///
/// # Errors
/// [`CallError::InsecureUrl`] naming the URL, [`CallError::Setup`] if it does not parse.
pub(crate) fn require_secure(url: &str) -> Result<(), CallError> {
    let u = reqwest::Url::parse(url).map_err(|e| CallError::Setup(format!("{url}: {e}")))?;
    let loopback = oracle_calls_proto::is_loopback_host(u.host_str().unwrap_or_default());
    match u.scheme() {
        "https" => Ok(()),
        "http" if loopback => Ok(()),
        _ => Err(CallError::InsecureUrl(url.to_owned())),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A loopback HTTP/1.1 server answering each connection with the next of `answers`
    /// (status, extra headers), and counting the requests it got.
    async fn scripted(
        answers: Vec<(u16, &'static str)>,
    ) -> (String, std::sync::Arc<std::sync::atomic::AtomicUsize>) {
        use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        let seen = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let count = seen.clone();
        tokio::spawn(async move {
            for (status, headers) in answers {
                let Ok((mut c, _)) = listener.accept().await else {
                    return;
                };
                let mut buf = vec![0u8; 4096];
                let _ = c.read(&mut buf).await;
                count.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                let body = if status == 200 {
                    r#"{"calls":[],"nextCursor":null}"#.to_owned()
                } else {
                    r#"{"error":{"code":"rate_limited","message":"too many requests from this user; retry after 1 s"}}"#.to_owned()
                };
                let resp = format!(
                    "HTTP/1.1 {status} X\r\ncontent-type: application/json\r\n{headers}content-length: {}\r\nconnection: close\r\n\r\n{body}",
                    body.len()
                );
                let _ = c.write_all(resp.as_bytes()).await;
            }
        });
        (url, seen)
    }

    #[tokio::test]
    async fn a_429_is_waited_out_as_retry_after_says_and_a_long_one_is_returned() {
        let (url, seen) = scripted(vec![(429, "retry-after: 1\r\n"), (200, "")]).await;
        let api = UserApi::new(&url).unwrap();
        let started = std::time::Instant::now();
        let calls = api.list("token", &ListCallsQuery::default()).await.unwrap();
        assert!(calls.calls.is_empty());
        assert!(
            started.elapsed() >= Duration::from_millis(950),
            "{:?}",
            started.elapsed()
        );
        assert_eq!(seen.load(std::sync::atomic::Ordering::SeqCst), 2);

        // Longer than this client waits by itself: the caller gets the 429 and its reason.
        let (url, seen) = scripted(vec![(429, "retry-after: 3600\r\n"), (200, "")]).await;
        let api = UserApi::new(&url).unwrap();
        match api.list("token", &ListCallsQuery::default()).await {
            Err(CallError::Server {
                status: 429,
                message,
            }) => assert!(message.contains("too many")),
            other => panic!("{other:?}"),
        }
        assert_eq!(seen.load(std::sync::atomic::Ordering::SeqCst), 1);
    }

    #[test]
    fn plain_http_only_on_loopback() {
        for ok in [
            "https://oracle.example",
            "http://127.0.0.1:18080",
            "http://127.8.0.1",
            "http://localhost:1",
            "http://[::1]:80/",
        ] {
            assert!(require_secure(ok).is_ok(), "{ok}");
        }
        for bad in [
            "http://oracle.example",
            "http://10.0.0.1:18080",
            "http://localhost.evil.org",
            "http://127.0.0.1.evil.org",
            "ftp://127.0.0.1",
        ] {
            assert!(
                matches!(require_secure(bad), Err(CallError::InsecureUrl(ref u)) if u == bad),
                "{bad}"
            );
        }
        assert!(matches!(
            require_secure("not a url"),
            Err(CallError::Setup(_))
        ));
    }
}

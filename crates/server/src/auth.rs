//! Who is calling: a user (Matrix OpenID token, verified at the homeserver and cached) or an
//! oracle agent (API key).

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::extract::FromRequestParts;
use axum::http::header::AUTHORIZATION;
use axum::http::request::Parts;
use serde::Deserialize;
use sha2::{Digest as _, Sha256};

use crate::cache::BoundedCache;
use crate::limits::{ClientAddr, Limits};
use crate::store::ApiKeyRecord;
use crate::{AppState, Error, Result, apikey};

/// Longest bearer token looked at.
const MAX_TOKEN_LEN: usize = 1024;
/// Most remembered token answers (verified and refused); the least recently used go first.
const MAX_CACHE: usize = 10_000;

/// Verifies Matrix OpenID access tokens against the homeserver's
/// `/_matrix/federation/v1/openid/userinfo`, caching each answer for a bounded time: a
/// verified token for `ttl`, a refused one for the shorter `limits.failed_token_cache_secs`.
/// One lookup per token is in flight at a time; concurrent requests with it wait for its
/// answer.
#[derive(Debug)]
pub struct OpenIdVerifier {
    http: reqwest::Client,
    userinfo_url: String,
    server_name: String,
    ttl: Duration,
    // Keyed by SHA-256 of the token, so the cache holds no usable token.
    cache: Mutex<BoundedCache<[u8; 32], Answer>>,
    in_flight: Mutex<HashMap<[u8; 32], Arc<tokio::sync::Mutex<()>>>>,
    lookups: prometheus::IntCounterVec,
}

#[derive(Debug, Clone)]
enum Answer {
    User(String),
    Refused(&'static str),
}

#[derive(Deserialize)]
struct UserInfo {
    sub: String,
}

/// Removes a token's in-flight marker when its lookup ends, also when the request is dropped.
struct InFlight<'a> {
    map: &'a Mutex<HashMap<[u8; 32], Arc<tokio::sync::Mutex<()>>>>,
    digest: [u8; 32],
}

impl Drop for InFlight<'_> {
    fn drop(&mut self) {
        if let Ok(mut map) = self.map.lock() {
            map.remove(&self.digest);
        }
    }
}

impl OpenIdVerifier {
    /// A verifier for the homeserver at `homeserver_url` named `server_name`. `lookups`
    /// counts the homeserver requests by outcome (`ok`, `refused`, `failed`).
    pub fn new(
        http: reqwest::Client,
        homeserver_url: &str,
        server_name: &str,
        ttl: Duration,
        lookups: prometheus::IntCounterVec,
    ) -> Self {
        Self {
            http,
            userinfo_url: format!(
                "{}/_matrix/federation/v1/openid/userinfo",
                homeserver_url.trim_end_matches('/')
            ),
            server_name: server_name.to_owned(),
            ttl,
            cache: Mutex::new(BoundedCache::new(MAX_CACHE)),
            in_flight: Mutex::new(HashMap::new()),
            lookups,
        }
    }

    /// The Matrix user id the token belongs to. `addr` is the client's address (the token
    /// checks that reach the homeserver are limited per address), `limits` the server's.
    ///
    /// # Errors
    /// [`Error::Unauthorized`] for an empty, malformed, unknown or expired token or a user of
    /// another server; [`Error::RateLimited`]/[`Error::Busy`] past `[limits]`;
    /// [`Error::MatrixUnavailable`]/[`Error::MatrixBadAnswer`] when the homeserver cannot
    /// answer.
    pub async fn verify(
        &self,
        token: &str,
        addr: Option<IpAddr>,
        limits: &Limits,
    ) -> Result<String> {
        if !bearer_token_well_formed(token) {
            return Err(Error::Unauthorized("invalid access token"));
        }
        let digest: [u8; 32] = Sha256::digest(token.as_bytes()).into();
        if let Some(answer) = self.cached(&digest) {
            return answer.into_result();
        }
        let lock = {
            let mut map = self
                .in_flight
                .lock()
                .map_err(|_| Error::Internal("token lookup map poisoned".into()))?;
            map.entry(digest).or_default().clone()
        };
        let _turn = lock.lock().await;
        let _marker = InFlight {
            map: &self.in_flight,
            digest,
        };
        // Whoever held the turn before may have answered for this token.
        if let Some(answer) = self.cached(&digest) {
            return answer.into_result();
        }
        let _slot = limits.token_check(addr).await?;
        let answer = match self.lookup(token).await {
            Ok(answer) => answer,
            Err(e) => {
                self.lookups.with_label_values(&["failed"]).inc();
                return Err(e);
            }
        };
        let (outcome, ttl) = match &answer {
            Answer::User(_) => ("ok", self.ttl),
            Answer::Refused(_) => ("refused", limits.failed_token_ttl()),
        };
        self.lookups.with_label_values(&[outcome]).inc();
        if let Ok(mut cache) = self.cache.lock() {
            let now = Instant::now();
            cache.insert(digest, answer.clone(), now + ttl);
        }
        answer.into_result()
    }

    /// One homeserver request: the token's user, or why it is refused.
    async fn lookup(&self, token: &str) -> Result<Answer> {
        let Some(sub) = openid_userinfo(&self.http, &self.userinfo_url, token).await? else {
            return Ok(Answer::Refused("access token is unknown or expired"));
        };
        let on_our_server = sub
            .strip_prefix('@')
            .and_then(|s| s.split_once(':'))
            .is_some_and(|(local, server)| !local.is_empty() && server == self.server_name);
        if !on_our_server {
            return Ok(Answer::Refused(
                "the token's user is not on this homeserver",
            ));
        }
        Ok(Answer::User(sub))
    }

    fn cached(&self, digest: &[u8; 32]) -> Option<Answer> {
        let mut cache = self.cache.lock().ok()?;
        cache.get(digest, Instant::now()).cloned()
    }
}

impl Answer {
    fn into_result(self) -> Result<String> {
        match self {
            Self::User(u) => Ok(u),
            Self::Refused(why) => Err(Error::Unauthorized(why)),
        }
    }
}

/// Whether a bearer token is worth sending to the homeserver: 1 to 1024 printable ASCII bytes.
pub fn bearer_token_well_formed(token: &str) -> bool {
    !token.is_empty() && token.len() <= MAX_TOKEN_LEN && token.bytes().all(|b| b.is_ascii_graphic())
}

/// One request to a homeserver's `/_matrix/federation/v1/openid/userinfo` (`userinfo_url`):
/// the Matrix user id the OpenID token belongs to, `None` when the homeserver refuses the
/// token (unknown or expired). No cache and no limits: the caller brings its own.
///
/// # Errors
/// [`Error::MatrixUnavailable`] when the homeserver cannot be reached,
/// [`Error::MatrixBadAnswer`] for another status or a body without `sub`.
pub async fn openid_userinfo(
    http: &reqwest::Client,
    userinfo_url: &str,
    token: &str,
) -> Result<Option<String>> {
    let resp = http
        .get(userinfo_url)
        .query(&[("access_token", token)])
        .send()
        .await
        .map_err(|e| Error::MatrixUnavailable(e.without_url().to_string()))?;
    let status = resp.status();
    if status == reqwest::StatusCode::UNAUTHORIZED || status == reqwest::StatusCode::FORBIDDEN {
        return Ok(None);
    }
    if !status.is_success() {
        return Err(Error::MatrixBadAnswer(format!(
            "openid userinfo answered {status}"
        )));
    }
    let info: UserInfo = resp.json().await.map_err(|e| {
        Error::MatrixBadAnswer(format!("openid userinfo body: {}", e.without_url()))
    })?;
    Ok(Some(info.sub))
}

/// The client's address as the per-address limit counted it.
fn client_addr(parts: &Parts) -> Option<IpAddr> {
    parts.extensions.get::<ClientAddr>().map(|c| c.0)
}

/// A user's token verified, and the request counted against that user's limit.
async fn user(parts: &Parts, state: &AppState, token: &str) -> Result<String> {
    let user = state
        .openid()
        .verify(token, client_addr(parts), state.limits())
        .await?;
    state.limits().user(&user).await?;
    Ok(user)
}

/// The bearer token of a request, if any (`Authorization: Bearer <token>`).
fn bearer(parts: &Parts) -> Result<&str> {
    let value = parts
        .headers
        .get(AUTHORIZATION)
        .ok_or(Error::Unauthorized("missing Authorization header"))?
        .to_str()
        .map_err(|_| Error::Unauthorized("Authorization header is not text"))?;
    let token = value
        .strip_prefix("Bearer ")
        .ok_or(Error::Unauthorized(
            "Authorization must be `Bearer <token>`",
        ))?
        .trim();
    if token.is_empty() {
        return Err(Error::Unauthorized("empty bearer token"));
    }
    Ok(token)
}

/// The API key record of an agent's bearer token (the record cached for
/// `api_key_cache_secs`, the key itself checked every time).
async fn agent_key(state: &AppState, token: &str) -> Result<ApiKeyRecord> {
    let rec = apikey::authenticate_with(
        state.store(),
        state.pepper(),
        token,
        Some(state.key_cache()),
    )
    .await?;
    state.limits().agent_key(&rec.key_id).await?;
    Ok(rec)
}

/// A request made by a Matrix user (OpenID token).
#[derive(Clone, Debug)]
pub struct User(pub String);

/// A request made by an oracle agent (API key).
#[derive(Clone, Debug)]
pub struct Agent(pub ApiKeyRecord);

/// A request made by either.
#[derive(Clone, Debug)]
pub enum Caller {
    /// A Matrix user.
    User(String),
    /// An oracle agent.
    Agent(ApiKeyRecord),
}

impl FromRequestParts<AppState> for User {
    type Rejection = Error;
    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self> {
        let token = bearer(parts)?;
        if apikey::looks_like_api_key(token) {
            return Err(Error::Forbidden("this endpoint is for users, not agents"));
        }
        Ok(Self(user(parts, state, token).await?))
    }
}

impl FromRequestParts<AppState> for Agent {
    type Rejection = Error;
    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self> {
        let token = bearer(parts)?;
        Ok(Self(agent_key(state, token).await?))
    }
}

impl FromRequestParts<AppState> for Caller {
    type Rejection = Error;
    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self> {
        let token = bearer(parts)?;
        if apikey::looks_like_api_key(token) {
            Ok(Self::Agent(agent_key(state, token).await?))
        } else {
            Ok(Self::User(user(parts, state, token).await?))
        }
    }
}

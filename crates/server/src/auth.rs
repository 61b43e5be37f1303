//! Who is calling: a user (Matrix OpenID token, verified at the homeserver and cached) or an
//! oracle agent (API key).

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use axum::extract::FromRequestParts;
use axum::http::header::AUTHORIZATION;
use axum::http::request::Parts;
use serde::Deserialize;
use sha2::{Digest as _, Sha256};

use crate::store::ApiKeyRecord;
use crate::{AppState, Error, Result, apikey};

/// Longest bearer token looked at.
const MAX_TOKEN_LEN: usize = 1024;
/// Most cached OpenID verifications; expired ones are dropped first when it fills.
const MAX_CACHE: usize = 10_000;

/// Verifies Matrix OpenID access tokens against the homeserver's
/// `/_matrix/federation/v1/openid/userinfo`, caching each answer for a bounded time.
#[derive(Debug)]
pub struct OpenIdVerifier {
    http: reqwest::Client,
    userinfo_url: String,
    server_name: String,
    ttl: Duration,
    // Keyed by SHA-256 of the token, so the cache holds no usable token.
    cache: Mutex<HashMap<[u8; 32], (String, Instant)>>,
}

#[derive(Deserialize)]
struct UserInfo {
    sub: String,
}

impl OpenIdVerifier {
    /// A verifier for the homeserver at `homeserver_url` named `server_name`.
    pub fn new(
        http: reqwest::Client,
        homeserver_url: &str,
        server_name: &str,
        ttl: Duration,
    ) -> Self {
        Self {
            http,
            userinfo_url: format!(
                "{}/_matrix/federation/v1/openid/userinfo",
                homeserver_url.trim_end_matches('/')
            ),
            server_name: server_name.to_owned(),
            ttl,
            cache: Mutex::new(HashMap::new()),
        }
    }

    /// The Matrix user id the token belongs to.
    ///
    /// # Errors
    /// [`Error::Unauthorized`] for an empty, malformed, unknown or expired token or a user of
    /// another server; [`Error::MatrixUnavailable`]/[`Error::MatrixBadAnswer`] when the
    /// homeserver cannot answer.
    pub async fn verify(&self, token: &str) -> Result<String> {
        if token.is_empty()
            || token.len() > MAX_TOKEN_LEN
            || !token.bytes().all(|b| b.is_ascii_graphic())
        {
            return Err(Error::Unauthorized("invalid access token"));
        }
        let digest: [u8; 32] = Sha256::digest(token.as_bytes()).into();
        if let Some(user) = self.cached(&digest) {
            return Ok(user);
        }
        let resp = self
            .http
            .get(&self.userinfo_url)
            .query(&[("access_token", token)])
            .send()
            .await
            .map_err(|e| Error::MatrixUnavailable(e.without_url().to_string()))?;
        let status = resp.status();
        if status == reqwest::StatusCode::UNAUTHORIZED || status == reqwest::StatusCode::FORBIDDEN {
            return Err(Error::Unauthorized("access token is unknown or expired"));
        }
        if !status.is_success() {
            return Err(Error::MatrixBadAnswer(format!(
                "openid userinfo answered {status}"
            )));
        }
        let info: UserInfo = resp.json().await.map_err(|e| {
            Error::MatrixBadAnswer(format!("openid userinfo body: {}", e.without_url()))
        })?;
        let on_our_server = info
            .sub
            .strip_prefix('@')
            .and_then(|s| s.split_once(':'))
            .is_some_and(|(local, server)| !local.is_empty() && server == self.server_name);
        if !on_our_server {
            return Err(Error::Unauthorized(
                "the token's user is not on this homeserver",
            ));
        }
        self.remember(digest, &info.sub);
        Ok(info.sub)
    }

    fn cached(&self, digest: &[u8; 32]) -> Option<String> {
        let cache = self.cache.lock().ok()?;
        let (user, until) = cache.get(digest)?;
        (Instant::now() < *until).then(|| user.clone())
    }

    fn remember(&self, digest: [u8; 32], user: &str) {
        let Ok(mut cache) = self.cache.lock() else {
            return;
        };
        let now = Instant::now();
        if cache.len() >= MAX_CACHE {
            cache.retain(|_, (_, until)| *until > now);
            if cache.len() >= MAX_CACHE {
                cache.clear();
            }
        }
        cache.insert(digest, (user.to_owned(), now + self.ttl));
    }
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
    apikey::authenticate_with(
        state.store(),
        state.pepper(),
        token,
        Some(state.key_cache()),
    )
    .await
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
        Ok(Self(state.openid().verify(token).await?))
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
            Ok(Self::User(state.openid().verify(token).await?))
        }
    }
}

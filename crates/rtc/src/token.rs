//! LiveKit access tokens (HS256 JWTs signed with an API key's secret), for the two places a
//! client mints its own: an agent worker's `/agent` token and test or observer join tokens.
//! Users never mint tokens; the oracle-calls server hands them one per call.

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use hmac::{Hmac, KeyInit, Mac as _};
use serde_json::{Value, json};
use sha2::Sha256;
use zeroize::Zeroizing;

/// An API key and its secret. The secret is zeroized on drop and never printed.
#[derive(Clone)]
pub struct ApiCredentials {
    key: String,
    secret: Zeroizing<String>,
}

impl std::fmt::Debug for ApiCredentials {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ApiCredentials")
            .field("key", &self.key)
            .field("secret", &"<redacted>")
            .finish()
    }
}

impl ApiCredentials {
    /// Wraps an API key and its secret.
    pub fn new(key: impl Into<String>, secret: impl Into<String>) -> Self {
        Self {
            key: key.into(),
            secret: Zeroizing::new(secret.into()),
        }
    }

    /// The API key (public: it is the token's issuer).
    pub fn key(&self) -> &str {
        &self.key
    }

    /// A token for the `/agent` worker socket: the only grant LiveKit checks there is
    /// `video.agent`.
    pub fn agent_worker_token(&self, ttl_secs: u64) -> String {
        self.sign(json!({"video": {"agent": true}}), ttl_secs)
    }

    /// A join token for `identity` in `room` that may publish and subscribe.
    pub fn join_token(&self, room: &str, identity: &str, ttl_secs: u64) -> String {
        self.sign(
            json!({
                "sub": identity, "name": identity,
                "video": {"roomJoin": true, "room": room, "canPublish": true,
                          "canSubscribe": true, "canPublishData": true},
            }),
            ttl_secs,
        )
    }

    /// Signs `claims` (an object) with `iss`, `nbf` and `exp` added.
    pub fn sign(&self, mut claims: Value, ttl_secs: u64) -> String {
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_secs())
            .unwrap_or(0);
        if let Some(obj) = claims.as_object_mut() {
            obj.insert("iss".into(), json!(self.key));
            obj.insert("nbf".into(), json!(now.saturating_sub(10)));
            obj.insert("exp".into(), json!(now.saturating_add(ttl_secs)));
        }
        let head = URL_SAFE_NO_PAD.encode(br#"{"alg":"HS256","typ":"JWT"}"#);
        let body = URL_SAFE_NO_PAD.encode(claims.to_string());
        let input = format!("{head}.{body}");
        // HMAC takes a key of any length, so this cannot fail.
        let mut mac = <Hmac<Sha256> as KeyInit>::new_from_slice(self.secret.as_bytes())
            .unwrap_or_else(|_| unreachable!("HMAC accepts any key length"));
        mac.update(input.as_bytes());
        let sig = URL_SAFE_NO_PAD.encode(mac.finalize().into_bytes());
        format!("{input}.{sig}")
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::indexing_slicing)]
    use super::*;

    fn claims(token: &str) -> Value {
        let body = token.split('.').nth(1).unwrap();
        serde_json::from_slice(&URL_SAFE_NO_PAD.decode(body).unwrap()).unwrap()
    }

    #[test]
    fn signature_matches_an_independent_hmac() {
        let c = ApiCredentials::new("devkey", "secret");
        let t = c.agent_worker_token(60);
        let (input, sig) = t.rsplit_once('.').unwrap();
        // RFC 4231-style check with the hmac crate used directly.
        let mut mac = <Hmac<Sha256> as KeyInit>::new_from_slice(b"secret").unwrap();
        mac.update(input.as_bytes());
        assert_eq!(
            URL_SAFE_NO_PAD.decode(sig).unwrap(),
            mac.finalize().into_bytes().to_vec()
        );
        let cl = claims(&t);
        assert_eq!(cl["iss"], "devkey");
        assert_eq!(cl["video"]["agent"], true);
        assert!(cl["exp"].as_u64().unwrap() > cl["nbf"].as_u64().unwrap());
    }

    #[test]
    fn join_token_names_room_and_identity_and_debug_hides_the_secret() {
        let c = ApiCredentials::new("k", "very-secret-value");
        let cl = claims(&c.join_token("oc-1", "observer", 60));
        assert_eq!(
            (cl["sub"].as_str(), cl["video"]["room"].as_str()),
            (Some("observer"), Some("oc-1"))
        );
        assert!(!format!("{c:?}").contains("very-secret-value"));
    }
}

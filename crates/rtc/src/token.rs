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

    /// The same grants as `token` with a new validity of `ttl_secs` from now: for an agent's
    /// full reconnect, whose job token came from LiveKit signed with these credentials. The
    /// token must carry a valid signature under this key (expired is fine: its grants are
    /// what is renewed, and only a token this key signed is ever renewed).
    ///
    /// # Errors
    /// A token that is malformed, signed with another key, or whose issuer is not this key.
    pub fn renew(&self, token: &str, ttl_secs: u64) -> Result<String, String> {
        let (input, sig) = token
            .rsplit_once('.')
            .ok_or_else(|| "not a JWT".to_owned())?;
        let sig = URL_SAFE_NO_PAD
            .decode(sig)
            .map_err(|_| "the signature is not base64url".to_owned())?;
        let mut mac = <Hmac<Sha256> as KeyInit>::new_from_slice(self.secret.as_bytes())
            .unwrap_or_else(|_| unreachable!("HMAC accepts any key length"));
        mac.update(input.as_bytes());
        mac.verify_slice(&sig)
            .map_err(|_| "the token is not signed with these credentials".to_owned())?;
        let body = input
            .split('.')
            .nth(1)
            .ok_or_else(|| "not a JWT".to_owned())?;
        let bytes = URL_SAFE_NO_PAD
            .decode(body)
            .map_err(|_| "the claims are not base64url".to_owned())?;
        let mut claims: Value =
            serde_json::from_slice(&bytes).map_err(|_| "the claims are not JSON".to_owned())?;
        let obj = claims
            .as_object_mut()
            .ok_or_else(|| "the claims are not an object".to_owned())?;
        if obj.get("iss").and_then(Value::as_str) != Some(self.key.as_str()) {
            return Err("the token was issued for another API key".into());
        }
        for k in ["nbf", "exp", "iat", "jti"] {
            obj.remove(k);
        }
        Ok(self.sign(claims, ttl_secs))
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
    fn renew_keeps_the_grants_and_refuses_other_keys() {
        let c = ApiCredentials::new("k", "secret-1");
        let old = c.sign(
            json!({"sub": "agent-AJ_1", "kind": "agent",
                   "video": {"roomJoin": true, "room": "oc-1", "agent": true}}),
            0,
        );
        let new = c.renew(&old, 600).unwrap();
        let (a, b) = (claims(&old), claims(&new));
        assert_eq!(b["sub"], "agent-AJ_1");
        assert_eq!(b["kind"], "agent");
        assert_eq!(b["video"], a["video"]);
        assert!(b["exp"].as_u64().unwrap() >= a["exp"].as_u64().unwrap() + 590);
        // Another key's token, a tampered one, and garbage are refused.
        let other = ApiCredentials::new("k", "secret-2");
        assert!(other.renew(&old, 600).is_err());
        let foreign = ApiCredentials::new("k2", "secret-1");
        assert!(foreign.renew(&old, 600).is_err());
        let (input, sig) = old.rsplit_once('.').unwrap();
        let tampered = format!("{input}x.{sig}");
        assert!(c.renew(&tampered, 600).is_err());
        assert!(c.renew("not a token", 600).is_err());
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

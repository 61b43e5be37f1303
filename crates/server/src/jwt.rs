//! Compact HS256 JSON Web Tokens, as LiveKit uses them (access tokens and webhook signatures).

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use hmac::{Hmac, KeyInit as _, Mac as _};
use serde_json::Value;
use sha2::Sha256;

use crate::Secret;

/// Leeway on `exp`/`nbf` when verifying, in seconds (LiveKit's verifier allows one minute).
pub const LEEWAY_SECS: i64 = 60;

/// Why a token was refused. Deliberately coarse.
#[derive(Clone, Copy, PartialEq, Eq, Debug, thiserror::Error)]
pub enum JwtError {
    /// Not three base64url parts of JSON, or not HS256.
    #[error("token is malformed")]
    Malformed,
    /// The MAC does not match.
    #[error("token signature is invalid")]
    BadSignature,
    /// `exp` is missing or past, or `nbf` is in the future.
    #[error("token is expired or not yet valid")]
    Expired,
}

/// Signs `claims` with HS256.
pub fn sign(claims: &Value, secret: &Secret) -> String {
    let header = URL_SAFE_NO_PAD.encode(br#"{"alg":"HS256","typ":"JWT"}"#);
    let body = URL_SAFE_NO_PAD.encode(claims.to_string());
    let signing_input = format!("{header}.{body}");
    let sig = URL_SAFE_NO_PAD.encode(
        mac(secret, signing_input.as_bytes())
            .finalize()
            .into_bytes(),
    );
    format!("{signing_input}.{sig}")
}

/// Verifies an HS256 token's signature (constant time) and time window, and returns its claims.
///
/// # Errors
/// [`JwtError`].
pub fn verify(token: &str, secret: &Secret, now_secs: i64) -> Result<Value, JwtError> {
    let mut parts = token.split('.');
    let (Some(h), Some(b), Some(s), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Err(JwtError::Malformed);
    };
    let header: Value = decode_json(h)?;
    if header.get("alg").and_then(Value::as_str) != Some("HS256") {
        return Err(JwtError::Malformed);
    }
    let sig = URL_SAFE_NO_PAD.decode(s).map_err(|_| JwtError::Malformed)?;
    let signing_input_len = h.len() + 1 + b.len();
    let signing_input = token.get(..signing_input_len).ok_or(JwtError::Malformed)?;
    mac(secret, signing_input.as_bytes())
        .verify_slice(&sig)
        .map_err(|_| JwtError::BadSignature)?;
    let claims: Value = decode_json(b)?;
    let exp = claims
        .get("exp")
        .and_then(Value::as_i64)
        .ok_or(JwtError::Expired)?;
    if exp + LEEWAY_SECS < now_secs {
        return Err(JwtError::Expired);
    }
    if let Some(nbf) = claims.get("nbf").and_then(Value::as_i64)
        && nbf - LEEWAY_SECS > now_secs
    {
        return Err(JwtError::Expired);
    }
    Ok(claims)
}

fn decode_json(part: &str) -> Result<Value, JwtError> {
    let bytes = URL_SAFE_NO_PAD
        .decode(part)
        .map_err(|_| JwtError::Malformed)?;
    serde_json::from_slice(&bytes).map_err(|_| JwtError::Malformed)
}

fn mac(secret: &Secret, data: &[u8]) -> Hmac<Sha256> {
    let mut m = <Hmac<Sha256>>::new_from_slice(secret.dangerous_expose().as_bytes())
        .unwrap_or_else(|_| unreachable!("HMAC takes keys of any length"));
    m.update(data);
    m
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    #[test]
    fn matches_livekits_documented_example() {
        // docs: livekit-interop.md §4, claims and secret `secret`, from the Go minter.
        let claims = json!({"iss":"devkey","sub":"alice","nbf":1700000000,"exp":1700021600,
            "video":{"roomJoin":true,"room":"test","canPublish":true,"canSubscribe":true,"canPublishData":true}});
        let want = "eyJhbGciOiJIUzI1NiIsInR5cCI6IkpXVCJ9.eyJpc3MiOiJkZXZrZXkiLCJzdWIiOiJhbGljZSIsIm5iZiI6MTcwMDAwMDAwMCwiZXhwIjoxNzAwMDIxNjAwLCJ2aWRlbyI6eyJyb29tSm9pbiI6dHJ1ZSwicm9vbSI6InRlc3QiLCJjYW5QdWJsaXNoIjp0cnVlLCJjYW5TdWJzY3JpYmUiOnRydWUsImNhblB1Ymxpc2hEYXRhIjp0cnVlfX0.z0IMGV_QNquRc-LcQkCUgc851TjkwY8nEiMITjD95_Y";
        let secret = Secret::new("secret");
        assert_eq!(verify(want, &secret, 1_700_000_100).unwrap(), claims);
        assert_eq!(
            verify(want, &Secret::new("other"), 1_700_000_100),
            Err(JwtError::BadSignature)
        );
        assert_eq!(verify(want, &secret, 1_800_000_000), Err(JwtError::Expired));
        let ours = sign(&claims, &secret);
        assert_eq!(verify(&ours, &secret, 1_700_000_100).unwrap(), claims);
        assert_eq!(verify("a.b", &secret, 0), Err(JwtError::Malformed));
        assert_eq!(verify("", &secret, 0), Err(JwtError::Malformed));
    }
}

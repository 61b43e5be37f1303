//! `/prekeys…`: the oracle's agent publishes signed prekeys, users claim them (forward
//! secrecy of call keys). The server checks their shape only: it never links crypto, so it
//! cannot check a signature; the client does, against the oracle's `prekeySigningKey`.

use axum::Json;
use axum::extract::State;
use axum::extract::rejection::JsonRejection;
use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use oracle_calls_proto::{ApiErrorBody, PrekeyStock, PublishPrekeysRequest, SignedPrekey};
use tracing::info;

use crate::auth::{Agent, User};
use crate::store::{Claimed, MAX_UNCLAIMED_ONE_TIME, Published};
use crate::{AppState, Error, Result, state};

/// Largest body of `POST /prekeys`: 100 prekeys of about 200 bytes each, with room for
/// whitespace.
pub(super) const PUBLISH_BODY_LIMIT: usize = 64 * 1024;

/// Most prekeys in one `POST /prekeys`.
const MAX_PER_REQUEST: usize = 100;

/// Publish signed prekeys (this oracle's agent): 1 to 100, at most one of them the last-resort
/// prekey, which replaces the one published before. All or nothing.
#[utoipa::path(post, path = "/prekeys", tag = "prekeys",
    request_body = PublishPrekeysRequest,
    responses(
        (status = 429, description = "a rate limit of `[limits]`; retry after `Retry-After` seconds", body = ApiErrorBody), (status = 503, description = "too many access token checks in flight, or an upstream is unreachable", body = ApiErrorBody),
        (status = 200, body = PrekeyStock, description = "stored; the stock after it"),
        (status = 400, body = ApiErrorBody, description = "a malformed prekey (the reason names it), none, more than 100, or two last-resort prekeys"),
        (status = 401, body = ApiErrorBody), (status = 403, body = ApiErrorBody),
        (status = 409, body = ApiErrorBody, description = "a prekeyId is already published, or more than 1000 unclaimed one-time prekeys: nothing stored"),
        (status = 413, body = ApiErrorBody),
    ),
    security(("apiKey" = [])))]
pub async fn publish(
    State(state): State<AppState>,
    Agent(key): Agent,
    body: Result<Json<PublishPrekeysRequest>, JsonRejection>,
) -> Result<Json<PrekeyStock>> {
    ours(&state, &key)?;
    let Json(req) = body.map_err(|e| super::extract::json_rejection(&e, PUBLISH_BODY_LIMIT))?;
    check(&req.prekeys)?;
    let now = state::now().unix_millis();
    let oracle = &state.config().oracle.did;
    match state
        .store()
        .publish_prekeys(oracle, &req.prekeys, now)
        .await?
    {
        Published::Stored(stock) => {
            info!(
                key_id = %key.key_id,
                published = req.prekeys.len(),
                last_resort = req.prekeys.iter().any(|p| p.last_resort),
                one_time_unclaimed = stock.one_time,
                "prekeys published"
            );
            Ok(Json(stock))
        }
        Published::Duplicate(id) => Err(Error::Conflict(format!(
            "prekeyId {id} is already published; nothing was stored"
        ))),
        Published::Full { held, adding } => Err(Error::Conflict(format!(
            "the server holds {held} unclaimed one-time prekeys and allows at most \
             {MAX_UNCLAIMED_ONE_TIME}: {adding} more do not fit; nothing was stored"
        ))),
    }
}

/// What the server holds for this oracle (its agent).
#[utoipa::path(get, path = "/prekeys", tag = "prekeys",
    responses(
        (status = 429, description = "a rate limit of `[limits]`; retry after `Retry-After` seconds", body = ApiErrorBody), (status = 503, description = "too many access token checks in flight, or an upstream is unreachable", body = ApiErrorBody),
        (status = 200, body = PrekeyStock),
        (status = 401, body = ApiErrorBody), (status = 403, body = ApiErrorBody),
    ),
    security(("apiKey" = [])))]
pub async fn stock(State(state): State<AppState>, Agent(key): Agent) -> Result<Json<PrekeyStock>> {
    ours(&state, &key)?;
    Ok(Json(
        state
            .store()
            .prekey_stock(&state.config().oracle.did)
            .await?,
    ))
}

/// Claim a prekey of the oracle (a user, before sealing a call key to it): the oldest
/// unclaimed one-time prekey, handed out once, or the last-resort prekey when none is left.
/// Check its signature against `prekeySigningKey` before using it.
#[utoipa::path(post, path = "/prekeys/claim", tag = "prekeys",
    responses(
        (status = 429, description = "a rate limit of `[limits]`; retry after `Retry-After` seconds", body = ApiErrorBody),
        (status = 200, body = SignedPrekey),
        (status = 401, body = ApiErrorBody), (status = 403, body = ApiErrorBody),
        (status = 404, body = ApiErrorBody, description = "the oracle has published no prekeys"),
        (status = 502, body = ApiErrorBody), (status = 503, body = ApiErrorBody),
    ),
    security(("matrixOpenId" = [])))]
pub async fn claim(State(state): State<AppState>, User(user): User) -> Result<Json<SignedPrekey>> {
    let claimed = state
        .store()
        .claim_prekey(&state.config().oracle.did)
        .await?;
    let Some(claimed) = claimed else {
        state.metrics().prekey_claim("none");
        info!(user = %user, "prekey claim: none published");
        return Err(Error::NoPrekeys);
    };
    state.metrics().prekey_claim(claimed.kind());
    info!(
        user = %user,
        prekey_id = %claimed.prekey().prekey_id,
        kind = claimed.kind(),
        "prekey claimed"
    );
    Ok(Json(match claimed {
        Claimed::OneTime(p) | Claimed::LastResort(p) => p,
    }))
}

/// The API key must be this server's oracle's.
fn ours(state: &AppState, key: &crate::store::ApiKeyRecord) -> Result<()> {
    if key.oracle_did == state.config().oracle.did {
        Ok(())
    } else {
        Err(Error::Forbidden("this API key is for another oracle"))
    }
}

/// The shape checks of `POST /prekeys`; the reason names the first bad field.
fn check(prekeys: &[SignedPrekey]) -> Result<()> {
    if prekeys.is_empty() {
        return Err(Error::BadRequest(
            "prekeys: at least one prekey is required".into(),
        ));
    }
    if prekeys.len() > MAX_PER_REQUEST {
        return Err(Error::BadRequest(format!(
            "prekeys: at most {MAX_PER_REQUEST} prekeys per request, got {}",
            prekeys.len()
        )));
    }
    let mut last_resort: Option<usize> = None;
    let mut ids = std::collections::HashMap::with_capacity(prekeys.len());
    for (i, p) in prekeys.iter().enumerate() {
        field(i, "prekeyId", &p.prekey_id, 16)?;
        field(i, "publicKey", &p.public_key, 32)?;
        field(i, "signature", &p.signature, 64)?;
        if p.last_resort {
            if let Some(first) = last_resort {
                return Err(Error::BadRequest(format!(
                    "prekeys[{i}].lastResort: at most one last-resort prekey per request \
                     (prekeys[{first}] is one)"
                )));
            }
            last_resort = Some(i);
        }
        if let Some(first) = ids.insert(p.prekey_id.as_str(), i) {
            return Err(Error::BadRequest(format!(
                "prekeys[{i}].prekeyId: repeats prekeys[{first}].prekeyId"
            )));
        }
    }
    Ok(())
}

/// `prekeys[i].name` must be base64url without padding of exactly `len` bytes.
fn field(i: usize, name: &str, value: &str, len: usize) -> Result<()> {
    let Ok(bytes) = URL_SAFE_NO_PAD.decode(value) else {
        return Err(Error::BadRequest(format!(
            "prekeys[{i}].{name}: not base64url without padding"
        )));
    };
    if bytes.len() != len {
        return Err(Error::BadRequest(format!(
            "prekeys[{i}].{name}: must decode to {len} bytes, not {}",
            bytes.len()
        )));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn b64(n: usize, fill: u8) -> String {
        URL_SAFE_NO_PAD.encode(vec![fill; n])
    }

    fn prekey(fill: u8, last_resort: bool) -> SignedPrekey {
        SignedPrekey {
            prekey_id: b64(16, fill),
            public_key: b64(32, fill),
            last_resort,
            signature: b64(64, fill),
        }
    }

    fn reason(prekeys: &[SignedPrekey]) -> String {
        check(prekeys).unwrap_err().to_string()
    }

    #[test]
    fn shapes_are_checked_and_the_reason_names_the_field() {
        let good: Vec<SignedPrekey> = (0..100).map(|i| prekey(i, i == 7)).collect();
        check(&good).unwrap();
        assert!(reason(&[]).starts_with("prekeys: "));
        let many: Vec<SignedPrekey> = (0..101).map(|i| prekey(i, false)).collect();
        assert!(reason(&many).contains("at most 100"));

        let mut bad = good.clone();
        bad[3].public_key = format!("{}=", b64(32, 1));
        assert_eq!(
            reason(&bad),
            "prekeys[3].publicKey: not base64url without padding"
        );
        bad[3].public_key = b64(31, 1);
        assert_eq!(
            reason(&bad),
            "prekeys[3].publicKey: must decode to 32 bytes, not 31"
        );
        let mut bad = good.clone();
        bad[0].prekey_id = "+".repeat(22);
        assert!(reason(&bad).starts_with("prekeys[0].prekeyId: not base64url"));
        let mut bad = good.clone();
        bad[99].signature = b64(65, 0);
        assert!(reason(&bad).starts_with("prekeys[99].signature: must decode to 64"));
        // Non-canonical: the last character carries bits beyond the 16 bytes.
        let mut bad = good.clone();
        bad[5].prekey_id = format!("{}B", "A".repeat(21));
        assert!(reason(&bad).starts_with("prekeys[5].prekeyId: not base64url"));

        let mut two = good.clone();
        two[9].last_resort = true;
        assert_eq!(
            reason(&two),
            "prekeys[9].lastResort: at most one last-resort prekey per request (prekeys[7] is one)"
        );
        let mut repeated = good;
        repeated[4].prekey_id = repeated[2].prekey_id.clone();
        assert_eq!(
            reason(&repeated),
            "prekeys[4].prekeyId: repeats prekeys[2].prekeyId"
        );
    }
}

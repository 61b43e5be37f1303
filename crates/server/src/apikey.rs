//! Agent API keys: `ocak_<keyId>_<secret>`, shown once, stored as an HMAC-SHA256 under a
//! server-side pepper, compared in constant time, revocable, scoped to one oracle DID.
//!
//! The secret part has 256 bits of entropy, so a keyed hash (no slow KDF) is enough, and a
//! stolen database without the pepper does not let anyone check guesses.

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use hmac::{Hmac, KeyInit as _, Mac as _};
use oracle_calls_proto::Did;
use sha2::Sha256;
use subtle::ConstantTimeEq as _;

use crate::store::{ApiKeyRecord, Store};
use crate::{Error, Result, Secret};

const PREFIX: &str = "ocak_";
const KEY_ID_HEX: usize = 16;
const SECRET_B64: usize = 43;

/// A freshly created API key: the record to store, and the key text to show once.
#[derive(Debug)]
pub struct NewApiKey {
    /// What the store keeps.
    pub record: ApiKeyRecord,
    /// The whole key. Print it once; it cannot be recovered.
    pub key: Secret,
}

/// Creates and stores a new API key for `oracle`.
///
/// # Errors
/// [`Error::Store`].
pub async fn create(
    store: &Store,
    pepper: &Secret,
    oracle: Did,
    label: &str,
    now_ms: i64,
) -> Result<NewApiKey> {
    let mut id = [0u8; KEY_ID_HEX / 2];
    let mut secret = zeroize::Zeroizing::new([0u8; 32]);
    rand::fill(&mut id);
    rand::fill(&mut secret[..]);
    let key_id: String = id.iter().map(|b| format!("{b:02x}")).collect();
    let key = Secret::new(format!(
        "{PREFIX}{key_id}_{}",
        URL_SAFE_NO_PAD.encode(&secret[..])
    ));
    let record = ApiKeyRecord {
        key_id,
        oracle_did: oracle,
        label: label.to_owned(),
        key_hash: hash(pepper, key.dangerous_expose()),
        created_at: now_ms,
        revoked_at: None,
    };
    store.insert_api_key(&record).await?;
    Ok(NewApiKey { record, key })
}

/// Checks a presented key. Returns the key's record when it is well-formed, known, unrevoked
/// and its hash matches (compared in constant time). An empty or malformed key never matches.
///
/// # Errors
/// [`Error::Unauthorized`] for every kind of mismatch (deliberately the same message),
/// [`Error::Store`].
pub async fn authenticate(store: &Store, pepper: &Secret, presented: &str) -> Result<ApiKeyRecord> {
    authenticate_with(store, pepper, presented, None).await
}

/// Recently looked-up API key records, by key id, each kept for a fixed time. Only the
/// store lookup is saved: the presented key is still hashed and compared on every request.
#[derive(Debug)]
pub struct KeyCache {
    ttl: std::time::Duration,
    entries: std::sync::Mutex<crate::cache::BoundedCache<String, ApiKeyRecord>>,
}

/// Most records kept; the least recently used go first.
const KEY_CACHE_MAX: usize = 4096;

impl KeyCache {
    /// A cache keeping records for `ttl` (zero: no caching).
    pub fn new(ttl: std::time::Duration) -> Self {
        Self {
            ttl,
            entries: std::sync::Mutex::new(crate::cache::BoundedCache::new(KEY_CACHE_MAX)),
        }
    }

    fn get(&self, key_id: &str) -> Option<ApiKeyRecord> {
        let mut entries = self.entries.lock().ok()?;
        entries
            .get(&key_id.to_owned(), std::time::Instant::now())
            .cloned()
    }

    fn put(&self, rec: &ApiKeyRecord) {
        if self.ttl.is_zero() {
            return;
        }
        if let Ok(mut entries) = self.entries.lock() {
            let now = std::time::Instant::now();
            entries.insert(rec.key_id.clone(), rec.clone(), now + self.ttl);
        }
    }
}

/// As [`authenticate`], reusing a record looked up less than the cache's time ago.
///
/// # Errors
/// As [`authenticate`].
pub async fn authenticate_with(
    store: &Store,
    pepper: &Secret,
    presented: &str,
    cache: Option<&KeyCache>,
) -> Result<ApiKeyRecord> {
    const REFUSED: Error = Error::Unauthorized("invalid API key");
    let key_id = parse_key_id(presented).ok_or(REFUSED)?;
    let rec = match cache.and_then(|c| c.get(key_id)) {
        Some(rec) => rec,
        None => {
            let Some(rec) = store.api_key(key_id).await? else {
                return Err(REFUSED);
            };
            if let Some(c) = cache {
                c.put(&rec);
            }
            rec
        }
    };
    let want = rec.key_hash.as_bytes();
    let got = hash(pepper, presented);
    let same: bool = got.as_bytes().ct_eq(want).into();
    if !same || rec.revoked_at.is_some() || pepper.is_empty() {
        return Err(REFUSED);
    }
    Ok(rec)
}

/// True when `token` has the shape of an API key (so it is not a Matrix OpenID token).
pub fn looks_like_api_key(token: &str) -> bool {
    token.starts_with(PREFIX)
}

fn parse_key_id(key: &str) -> Option<&str> {
    let rest = key.strip_prefix(PREFIX)?;
    let (id, secret) = rest.split_once('_')?;
    let ok = id.len() == KEY_ID_HEX
        && id
            .bytes()
            .all(|b| b.is_ascii_hexdigit() && !b.is_ascii_uppercase())
        && secret.len() == SECRET_B64
        && secret
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_');
    ok.then_some(id)
}

fn hash(pepper: &Secret, key: &str) -> String {
    // HMAC accepts keys of any length, so this cannot fail.
    let mut mac = <Hmac<Sha256>>::new_from_slice(pepper.dangerous_expose().as_bytes())
        .unwrap_or_else(|_| unreachable!("HMAC takes keys of any length"));
    mac.update(key.as_bytes());
    mac.finalize()
        .into_bytes()
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn key_shape_is_checked_before_any_lookup() {
        let good = format!("ocak_{}_{}", "0123456789abcdef", "A".repeat(43));
        assert_eq!(parse_key_id(&good), Some("0123456789abcdef"));
        for bad in [
            "",
            "ocak_",
            "ocak__",
            "ocak_0123456789abcdef_",
            "ocak_0123456789ABCDEF_AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA",
            "Bearer x",
        ] {
            assert_eq!(parse_key_id(bad), None, "{bad:?}");
        }
        assert!(looks_like_api_key(&good) && !looks_like_api_key("syt_abc"));
    }

    #[test]
    fn hash_depends_on_the_pepper() {
        let a = hash(&Secret::new("pepper-one-0123456"), "k");
        let b = hash(&Secret::new("pepper-two-0123456"), "k");
        assert_ne!(a, b);
        assert_eq!(a.len(), 64);
    }
}

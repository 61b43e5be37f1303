//! Key transparency on the client (PROTOCOL §12): the oracle's record comes from the directory
//! the client was configured with, verified against a checkpoint signed by that directory's key
//! (VRF + Merkle path), never older than the checkpoint stored before (rollback) nor another
//! one for the same epoch (fork). The oracle's server must then describe the oracle exactly as
//! the verified record does, and the record, not the server, is what gets pinned.
//!
//! The HTTP fetch is here ([`KtApi`]); the checks are sans-IO ([`agree`], [`change_epoch`]) and
//! the verification itself is `oracle-calls-kt`'s [`oracle_calls_kt::Verifier`].

use std::time::Duration;

use oracle_calls_kt::{
    DirectoryPublicKey, HistoryResponse, LookupResponse, OracleRecord, PersonRecord,
    SignedCheckpoint, Subject, VerifiedHistory, VerifiedRecord,
};
use oracle_calls_proto::{ApiErrorBody, Did, OracleKeyInfo, WellKnown};
use tracing::warn;

use crate::CallError;
use crate::server::ATTEMPTS;
use crate::trust::OracleTrust;

/// The largest lookup answer read from the directory (its proof is at most
/// [`oracle_calls_kt::MAX_LOOKUP_PROOF_BYTES`], base64 in JSON).
const MAX_LOOKUP_BODY: usize = 2 * oracle_calls_kt::MAX_LOOKUP_PROOF_BYTES;
/// The largest key-history answer read from the directory.
const MAX_HISTORY_BODY: usize = 2 * oracle_calls_kt::MAX_HISTORY_PROOF_BYTES;

/// The key-transparency directory a client checks the oracle's record with.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct KtConfig {
    /// The directory service's base URL (`https://`, or `http://` on loopback only); the
    /// client calls `{url}/kt/v1/lookup/{label}` and `{url}/kt/v1/history/{label}` (an
    /// oracle's DID or a person's user id), and a person's client
    /// `{url}/kt/v1/people/publish`.
    pub url: String,
    /// The directory's public key (checkpoint signing key and VRF key), obtained out of band:
    /// checkpoints signed by any other key are refused.
    pub directory_key: DirectoryPublicKey,
}

/// A client of the directory's read API.
#[derive(Clone, Debug)]
pub(crate) struct KtApi {
    base: reqwest::Url,
    http: reqwest::Client,
}

enum Failure {
    Transient(String),
    Final(CallError),
}

impl KtApi {
    /// # Errors
    /// [`CallError::InsecureUrl`] for `http://` outside loopback, [`CallError::Setup`] for a
    /// URL that does not parse or an HTTP client that cannot be built.
    pub(crate) fn new(cfg: &KtConfig) -> Result<Self, CallError> {
        crate::server::require_secure(&cfg.url)?;
        let base = reqwest::Url::parse(&cfg.url)
            .map_err(|e| CallError::Setup(format!("{}: {e}", cfg.url)))?;
        if base.cannot_be_a_base() {
            return Err(CallError::Setup(format!(
                "{}: not a base URL for the key-transparency directory",
                cfg.url
            )));
        }
        let http = reqwest::Client::builder()
            .connect_timeout(Duration::from_secs(3))
            .timeout(Duration::from_secs(15))
            .build()
            .map_err(|e| CallError::Setup(e.to_string()))?;
        Ok(Self { base, http })
    }

    /// `GET /kt/v1/lookup/{did}`.
    pub(crate) async fn lookup(&self, did: &Did) -> Result<LookupResponse, CallError> {
        self.lookup_label(did).await?.ok_or_else(|| no_record(did))
    }

    /// `GET /kt/v1/history/{did}`.
    pub(crate) async fn history(&self, did: &Did) -> Result<HistoryResponse, CallError> {
        self.history_label(did).await?.ok_or_else(|| no_record(did))
    }

    /// `GET /kt/v1/lookup/{label}`; `None` when the directory has no record under it.
    pub(crate) async fn lookup_label<S: Subject>(
        &self,
        subject: &S,
    ) -> Result<Option<LookupResponse>, CallError> {
        match self.get("lookup", subject.label(), MAX_LOOKUP_BODY).await? {
            Some(body) => LookupResponse::from_json(&body)
                .map(Some)
                .map_err(CallError::KeyTransparency),
            None => Ok(None),
        }
    }

    /// `GET /kt/v1/history/{label}`; `None` when the directory has no record under it.
    pub(crate) async fn history_label<S: Subject>(
        &self,
        subject: &S,
    ) -> Result<Option<HistoryResponse>, CallError> {
        match self
            .get("history", subject.label(), MAX_HISTORY_BODY)
            .await?
        {
            Some(body) => HistoryResponse::from_json(&body)
                .map(Some)
                .map_err(CallError::KeyTransparency),
            None => Ok(None),
        }
    }

    /// `POST /kt/v1/people/publish`: this person's own record, authorized by a Matrix OpenID
    /// token; answers the checkpoint of the epoch that holds it. Not retried (the caller
    /// looks the record up again).
    pub(crate) async fn publish_person(
        &self,
        openid_token: &str,
        record: &PersonRecord,
    ) -> Result<SignedCheckpoint, CallError> {
        #[derive(serde::Deserialize)]
        struct Published {
            checkpoint: SignedCheckpoint,
        }
        let url = self.url(&["people", "publish"])?;
        let req = self
            .http
            .post(url)
            .bearer_auth(openid_token)
            .json(&serde_json::json!({ "record": record }));
        let body = match once(req, MAX_LOOKUP_BODY).await {
            Ok(Some(body)) => body,
            Ok(None) => {
                return Err(CallError::KtUnavailable(
                    "the directory has no people's publishing endpoint".into(),
                ));
            }
            Err(Failure::Final(e)) => return Err(e),
            Err(Failure::Transient(e)) => {
                return Err(CallError::KtUnavailable(format!("publishing failed: {e}")));
            }
        };
        serde_json::from_slice::<Published>(&body)
            .map(|p| p.checkpoint)
            .map_err(|_| {
                CallError::KeyTransparency(oracle_calls_kt::Error::Malformed {
                    what: "publish answer",
                })
            })
    }

    fn url(&self, segments: &[&str]) -> Result<reqwest::Url, CallError> {
        let mut url = self.base.clone();
        url.path_segments_mut()
            .map_err(|()| CallError::Setup(format!("{}: not a base URL", self.base)))?
            .pop_if_empty()
            .extend(["kt", "v1"])
            .extend(segments);
        Ok(url)
    }

    /// GET with bounded retries (refused connections, timeouts, 5xx) and a bounded body;
    /// `None` for 404 (no record under `label`).
    async fn get(
        &self,
        what: &str,
        label: &str,
        limit: usize,
    ) -> Result<Option<Vec<u8>>, CallError> {
        let url = self.url(&[what, label])?;
        let mut backoff = Duration::from_millis(200);
        let mut last = String::new();
        for attempt in 1..=ATTEMPTS {
            match once(self.http.get(url.clone()), limit).await {
                Ok(body) => return Ok(body),
                Err(Failure::Final(e)) => return Err(e),
                Err(Failure::Transient(e)) => {
                    if attempt < ATTEMPTS {
                        warn!(attempt, error = %e, "key-transparency request failed; retrying");
                        tokio::time::sleep(backoff).await;
                        backoff = backoff.saturating_mul(2);
                    }
                    last = e;
                }
            }
        }
        Err(CallError::KtUnavailable(format!(
            "the directory is unreachable after {ATTEMPTS} attempts: {last}"
        )))
    }
}

fn no_record(did: &Did) -> CallError {
    CallError::KtUnavailable(format!("the directory has no record for {did}"))
}

/// One request: the body of a 2xx answer, `None` for 404.
async fn once(req: reqwest::RequestBuilder, limit: usize) -> Result<Option<Vec<u8>>, Failure> {
    let mut resp = req
        .send()
        .await
        .map_err(|e| Failure::Transient(e.to_string()))?;
    let status = resp.status().as_u16();
    let mut body = Vec::new();
    while let Some(chunk) = resp
        .chunk()
        .await
        .map_err(|e| Failure::Transient(e.to_string()))?
    {
        if body.len().saturating_add(chunk.len()) > limit {
            return Err(Failure::Final(CallError::KtUnavailable(format!(
                "the directory's answer is larger than {limit} bytes"
            ))));
        }
        body.extend_from_slice(&chunk);
    }
    if status >= 500 {
        return Err(Failure::Transient(format!(
            "HTTP {status}: {}",
            message(&body)
        )));
    }
    if status == 404 {
        return Ok(None);
    }
    if !(200..300).contains(&status) {
        return Err(Failure::Final(CallError::KtUnavailable(format!(
            "the directory answered {status}: {}",
            message(&body)
        ))));
    }
    Ok(Some(body))
}

fn message(body: &[u8]) -> String {
    serde_json::from_slice::<ApiErrorBody>(body)
        .map(|b| b.error.message)
        .unwrap_or_else(|_| String::from_utf8_lossy(body).chars().take(200).collect())
}

/// Requires the server's well-known to describe the oracle as the verified record does: every
/// key it publishes is in the record, the bot user is the record's and the bot devices are
/// exactly the record's. Answers the description the trust store decides on: the record's bot
/// and devices, and the record's keys that the server also publishes (in the record's order).
///
/// # Errors
/// [`CallError::KtMismatch`] naming the first field that differs.
pub(crate) fn agree(
    oracle: &Did,
    wk: &WellKnown,
    record: &OracleRecord,
) -> Result<WellKnown, CallError> {
    let mismatch = |what, record: String, served: String| CallError::KtMismatch {
        oracle: oracle.to_string(),
        what,
        record,
        served,
    };
    if wk.keys.iter().any(|k| !record.keys.contains(k)) {
        return Err(mismatch("keys", key_ids(&record.keys), key_ids(&wk.keys)));
    }
    if wk.matrix_user_id != record.matrix_user_id {
        return Err(mismatch(
            "matrixUserId",
            record.matrix_user_id.clone(),
            wk.matrix_user_id.clone(),
        ));
    }
    let same_devices = wk.matrix_devices.len() == record.bot_devices.len()
        && wk
            .matrix_devices
            .iter()
            .all(|d| record.bot_devices.contains(d))
        && record
            .bot_devices
            .iter()
            .all(|d| wk.matrix_devices.contains(d));
    if !same_devices {
        return Err(mismatch(
            "matrixDevices",
            crate::trust::devices_text(&record.bot_devices),
            crate::trust::devices_text(&wk.matrix_devices),
        ));
    }
    if wk.prekey_signing_key != record.prekey_signing_key {
        let text = |k: &Option<String>| k.clone().unwrap_or_else(|| "none".to_owned());
        return Err(mismatch(
            "prekeySigningKey",
            text(&record.prekey_signing_key),
            text(&wk.prekey_signing_key),
        ));
    }
    Ok(WellKnown {
        oracle_did: wk.oracle_did.clone(),
        matrix_user_id: record.matrix_user_id.clone(),
        agent_name: wk.agent_name.clone(),
        livekit_url: wk.livekit_url.clone(),
        keys: record
            .keys
            .iter()
            .filter(|k| wk.keys.contains(k))
            .cloned()
            .collect(),
        matrix_devices: record.bot_devices.clone(),
        prekey_signing_key: record.prekey_signing_key.clone(),
    })
}

/// Whether the verified record is another one than the record pinned with key transparency
/// (then the key history must be checked before anything is decided).
pub(crate) fn changed_since_pinned(known: Option<&OracleTrust>, verified: &VerifiedRecord) -> bool {
    match known {
        Some(OracleTrust {
            kt_record: Some(record),
            kt_version: Some(version),
            ..
        }) => *version != verified.version || *record != verified.record,
        _ => false,
    }
}

/// The epoch in which the record pinned at (`record`, `version`) was replaced, from a verified
/// key history; `None` when the history shows no later version.
///
/// # Errors
/// [`CallError::KeyTransparency`] ([`oracle_calls_kt::Error::HistoryRewritten`]) when the
/// history does not hold the pinned record at its version.
pub(crate) fn change_epoch(
    history: &VerifiedHistory,
    record: &OracleRecord,
    version: u64,
) -> Result<Option<u64>, CallError> {
    history
        .change_since(record, version)
        .map(|next| next.map(|v| v.epoch))
        .map_err(CallError::KeyTransparency)
}

fn key_ids(keys: &[OracleKeyInfo]) -> String {
    crate::trust::joined(keys.iter().map(|k| k.key_id.as_str()))
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::panic, clippy::indexing_slicing)]
    use oracle_calls_proto::{BotDevice, KeyScheme};

    use super::*;

    fn key(id: &str) -> OracleKeyInfo {
        OracleKeyInfo {
            key_id: id.into(),
            scheme: KeyScheme::HpkeP256,
            public_key: format!("pk-{id}"),
        }
    }

    fn dev(id: &str) -> BotDevice {
        BotDevice {
            device_id: id.into(),
            ed25519: format!("ed-{id}"),
        }
    }

    fn did() -> Did {
        Did::parse("did:ixo:o").unwrap()
    }

    fn record() -> OracleRecord {
        OracleRecord {
            keys: vec![key("k1"), key("k2")],
            matrix_user_id: "@o:localhost".into(),
            bot_devices: vec![dev("A"), dev("B")],
            agent_name: "agent".into(),
            prekey_signing_key: None,
        }
    }

    fn wk(keys: Vec<OracleKeyInfo>, bot: &str, devs: Vec<BotDevice>) -> WellKnown {
        WellKnown {
            oracle_did: did(),
            matrix_user_id: bot.into(),
            agent_name: "agent".into(),
            prekey_signing_key: None,
            livekit_url: "ws://x".into(),
            keys,
            matrix_devices: devs,
        }
    }

    fn what(r: Result<WellKnown, CallError>) -> &'static str {
        match r {
            Err(CallError::KtMismatch { what, oracle, .. }) => {
                assert_eq!(oracle, "did:ixo:o");
                what
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn the_server_must_describe_the_oracle_as_the_verified_record_does() {
        let r = record();
        // Devices in another order, a subset of the keys in another order: agreed, and the
        // description to decide on is the record's (its key order, its bot and devices).
        let view = agree(
            &did(),
            &wk(vec![key("k2")], "@o:localhost", vec![dev("B"), dev("A")]),
            &r,
        )
        .unwrap();
        assert_eq!(view.keys, vec![key("k2")]);
        assert_eq!(view.matrix_devices, r.bot_devices);
        let view = agree(
            &did(),
            &wk(
                vec![key("k2"), key("k1")],
                "@o:localhost",
                r.bot_devices.clone(),
            ),
            &r,
        )
        .unwrap();
        assert_eq!(view.keys, r.keys);

        // A key the directory does not list (a new key not yet published, or a planted one).
        let e = agree(
            &did(),
            &wk(
                vec![key("k1"), key("k3")],
                "@o:localhost",
                r.bot_devices.clone(),
            ),
            &r,
        );
        match &e {
            Err(CallError::KtMismatch { record, served, .. }) => {
                assert_eq!((record.as_str(), served.as_str()), ("k1, k2", "k1, k3"));
            }
            other => panic!("{other:?}"),
        }
        assert_eq!(what(e), "keys");
        // The same key id with another public key is another key.
        let mut forged = key("k1");
        forged.public_key = "pk-evil".into();
        assert_eq!(
            what(agree(
                &did(),
                &wk(vec![forged], "@o:localhost", r.bot_devices.clone()),
                &r
            )),
            "keys"
        );
        assert_eq!(
            what(agree(
                &did(),
                &wk(vec![key("k1")], "@evil:localhost", r.bot_devices.clone()),
                &r
            )),
            "matrixUserId"
        );
        // A device more, a device less, a device with another key, none at all.
        for devs in [
            vec![dev("A"), dev("B"), dev("C")],
            vec![dev("A")],
            vec![
                dev("A"),
                BotDevice {
                    device_id: "B".into(),
                    ed25519: "ed-evil".into(),
                },
            ],
            vec![],
        ] {
            assert_eq!(
                what(agree(
                    &did(),
                    &wk(vec![key("k1")], "@o:localhost", devs),
                    &r
                )),
                "matrixDevices"
            );
        }
    }

    #[test]
    fn the_server_must_publish_exactly_the_records_prekey_signing_key() {
        let mut r = record();
        let served = |k: Option<&str>| {
            let mut w = wk(vec![key("k1")], "@o:localhost", vec![dev("A"), dev("B")]);
            w.prekey_signing_key = k.map(str::to_owned);
            w
        };
        // Neither has one; then both the same one: agreed, and the record's key is used.
        assert!(agree(&did(), &served(None), &r).is_ok());
        r.prekey_signing_key = Some("pk-1".into());
        let agreed = agree(&did(), &served(Some("pk-1")), &r).unwrap();
        assert_eq!(agreed.prekey_signing_key.as_deref(), Some("pk-1"));
        // Another key, or none (a server that strips forward secrecy), is refused.
        assert_eq!(
            what(agree(&did(), &served(Some("pk-2")), &r)),
            "prekeySigningKey"
        );
        assert_eq!(what(agree(&did(), &served(None), &r)), "prekeySigningKey");
        // A server that adds a key the record lacks is refused too.
        r.prekey_signing_key = None;
        assert_eq!(
            what(agree(&did(), &served(Some("pk-1")), &r)),
            "prekeySigningKey"
        );
    }

    #[test]
    fn only_a_record_other_than_the_pinned_one_needs_the_history() {
        let verified = VerifiedRecord {
            record: record(),
            epoch: 3,
            version: 2,
        };
        let pinned = |record: Option<OracleRecord>, version: Option<u64>| OracleTrust {
            keys: Vec::new(),
            matrix_user_id: String::new(),
            bot_devices: Vec::new(),
            kt_epoch: Some(3),
            kt_version: version,
            kt_record: record,
            prekey_signing_key: None,
        };
        assert!(!changed_since_pinned(None, &verified));
        assert!(!changed_since_pinned(Some(&pinned(None, None)), &verified));
        assert!(!changed_since_pinned(
            Some(&pinned(Some(record()), Some(2))),
            &verified
        ));
        assert!(changed_since_pinned(
            Some(&pinned(Some(record()), Some(1))),
            &verified
        ));
        let mut other = record();
        other.agent_name = "other".into();
        assert!(changed_since_pinned(
            Some(&pinned(Some(other), Some(2))),
            &verified
        ));
    }

    #[test]
    fn the_directory_url_must_be_secure_and_dids_stay_one_path_segment() {
        let dk = DirectoryPublicKey::new([1; 32], {
            // Any valid Edwards point serves as the VRF key: the base point's encoding.
            let mut b = [0x66u8; 32];
            b[0] = 0x58;
            b
        })
        .unwrap();
        let cfg = |url: &str| KtConfig {
            url: url.into(),
            directory_key: dk.clone(),
        };
        assert!(matches!(
            KtApi::new(&cfg("http://kt.example")),
            Err(CallError::InsecureUrl(_))
        ));
        for (base, want) in [
            (
                "http://127.0.0.1:9",
                "http://127.0.0.1:9/kt/v1/lookup/did:ixo:o",
            ),
            (
                "https://kt.example/base/",
                "https://kt.example/base/kt/v1/lookup/did:ixo:o",
            ),
        ] {
            let api = KtApi::new(&cfg(base)).unwrap();
            assert_eq!(api.url(&["lookup", did().as_str()]).unwrap().as_str(), want);
        }
    }
}

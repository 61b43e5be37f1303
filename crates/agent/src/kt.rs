//! Key transparency on the agent (docs/PROTOCOL.md §12): before it takes calls, the agent
//! verifies its oracle's record in the directory it was configured with (VRF + Merkle path
//! against a checkpoint signed by that directory's key) and refuses to run unless the server
//! describes the oracle as the record does and every key it holds is in the record — else
//! callers who verify the record would refuse the calls it serves, or the server is not the
//! one the operator published.

use std::time::Duration;

use oracle_calls_kt::{DirectoryPublicKey, LookupResponse, OracleRecord, Verifier};
use oracle_calls_proto::WellKnown;
use tracing::info;

use crate::HeldKeys;
use crate::config::{ConfigError, KtSection, require_encrypted_url};

/// The largest lookup answer read from the directory.
const MAX_LOOKUP_BODY: usize = 2 * oracle_calls_kt::MAX_LOOKUP_PROOF_BYTES;

/// Fetches and verifies the oracle's record, then checks `wk` and `keys` against it.
///
/// # Errors
/// [`ConfigError::KeyTransparency`] naming what failed or differs; [`ConfigError::InsecureUrl`].
pub(crate) async fn check(
    section: &KtSection,
    wk: &WellKnown,
    keys: &HeldKeys,
) -> Result<(), ConfigError> {
    require_encrypted_url("[key_transparency] url", &section.url, "https", "http")?;
    let err = |e: String| ConfigError::KeyTransparency(e);
    let text = std::fs::read_to_string(&section.public_key_file)
        .map_err(|e| err(format!("{}: {e}", section.public_key_file.display())))?;
    let directory: DirectoryPublicKey = serde_json::from_str(&text).map_err(|e| {
        err(format!(
            "{} is not a directory public key: {e}",
            section.public_key_file.display()
        ))
    })?;
    let lookup = fetch(&section.url, wk.oracle_did.as_str()).await?;
    let verified = Verifier::new(directory)
        .verify_lookup(&lookup.checkpoint, &wk.oracle_did, &lookup.proof)
        .map_err(|e| err(format!("the directory's answer does not verify: {e}")))?;
    agree(&verified.record, wk, keys).map_err(err)?;
    info!(
        epoch = verified.epoch,
        version = verified.version,
        "the oracle's key-transparency record verified and matches the server"
    );
    Ok(())
}

/// The server's description and the keys held must be the record's.
fn agree(record: &OracleRecord, wk: &WellKnown, keys: &HeldKeys) -> Result<(), String> {
    for k in keys.iter() {
        let id = k.key_id().to_string();
        if !record
            .keys
            .iter()
            .any(|r| r.key_id == id && r.scheme == k.scheme())
        {
            return Err(format!(
                "the key {id} ({}) this agent holds is not in the oracle's verified record; \
                 callers who verify it would never seal to it",
                k.scheme()
            ));
        }
    }
    if let Some(k) = wk.keys.iter().find(|k| !record.keys.contains(k)) {
        return Err(format!(
            "the server publishes the key {} that the oracle's verified record lacks",
            k.key_id
        ));
    }
    let differs = |what: &str, rec: &str, served: &str| {
        Err(format!(
            "the server's {what} is {served} but the oracle's verified record says {rec}"
        ))
    };
    if wk.matrix_user_id != record.matrix_user_id {
        return differs("matrixUserId", &record.matrix_user_id, &wk.matrix_user_id);
    }
    if wk.agent_name != record.agent_name {
        return differs("agentName", &record.agent_name, &wk.agent_name);
    }
    if wk.prekey_signing_key != record.prekey_signing_key {
        let text = |k: &Option<String>| k.clone().unwrap_or_else(|| "none".to_owned());
        return differs(
            "prekeySigningKey",
            &text(&record.prekey_signing_key),
            &text(&wk.prekey_signing_key),
        );
    }
    Ok(())
}

/// `GET {url}/kt/v1/lookup/{did}` with a timeout and a bounded body.
async fn fetch(base: &str, did: &str) -> Result<LookupResponse, ConfigError> {
    let err = |e: String| ConfigError::KeyTransparency(e);
    let mut url = reqwest::Url::parse(base).map_err(|e| err(format!("{base}: {e}")))?;
    url.path_segments_mut()
        .map_err(|()| err(format!("{base}: not a base URL")))?
        .pop_if_empty()
        .extend(["kt", "v1", "lookup", did]);
    let http = reqwest::Client::builder()
        .connect_timeout(Duration::from_secs(3))
        .timeout(Duration::from_secs(15))
        .build()
        .map_err(|e| err(e.to_string()))?;
    let mut resp = http
        .get(url)
        .send()
        .await
        .map_err(|e| err(format!("the directory is unreachable: {e}")))?;
    let status = resp.status();
    let mut body = Vec::new();
    while let Some(chunk) = resp
        .chunk()
        .await
        .map_err(|e| err(format!("reading the directory's answer: {e}")))?
    {
        if body.len().saturating_add(chunk.len()) > MAX_LOOKUP_BODY {
            return Err(err(format!(
                "the directory's answer is larger than {MAX_LOOKUP_BODY} bytes"
            )));
        }
        body.extend_from_slice(&chunk);
    }
    if status.as_u16() == 404 {
        return Err(err(format!("the directory has no record for {did}")));
    }
    if !status.is_success() {
        return Err(err(format!(
            "the directory answered {status}: {}",
            String::from_utf8_lossy(&body)
                .chars()
                .take(200)
                .collect::<String>()
        )));
    }
    LookupResponse::from_json(&body).map_err(|e| err(e.to_string()))
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use oracle_calls_crypto::{KeyScheme, OracleKeyPair};
    use oracle_calls_proto::{Did, OracleKeyInfo};

    use super::*;

    fn info(k: &OracleKeyPair) -> OracleKeyInfo {
        OracleKeyInfo {
            key_id: k.key_id().to_string(),
            scheme: k.scheme(),
            public_key: "pk".into(),
        }
    }

    #[test]
    fn the_server_and_the_held_keys_must_match_the_verified_record() {
        let mut rng = rand::rng();
        let a = OracleKeyPair::generate(KeyScheme::HpkeX25519, &mut rng).unwrap();
        let b = OracleKeyPair::generate(KeyScheme::HpkeX25519, &mut rng).unwrap();
        let record = OracleRecord {
            keys: vec![info(&a)],
            matrix_user_id: "@o:localhost".into(),
            bot_devices: Vec::new(),
            agent_name: "agent".into(),
            prekey_signing_key: Some("pk".into()),
        };
        let wk = WellKnown {
            oracle_did: Did::parse("did:ixo:o").unwrap(),
            matrix_user_id: "@o:localhost".into(),
            agent_name: "agent".into(),
            livekit_url: "ws://127.0.0.1:1".into(),
            keys: vec![info(&a)],
            matrix_devices: Vec::new(),
            prekey_signing_key: Some("pk".into()),
        };
        let held_a = HeldKeys::new(vec![a]).unwrap();
        assert!(agree(&record, &wk, &held_a).is_ok());
        let b_info = info(&b);
        let held_b = HeldKeys::new(vec![b]).unwrap();
        assert!(
            agree(&record, &wk, &held_b)
                .unwrap_err()
                .contains("not in the oracle's verified record")
        );
        let mut extra = wk.clone();
        extra.keys.push(b_info);
        assert!(
            agree(&record, &extra, &held_a)
                .unwrap_err()
                .contains("lacks")
        );
        for (edit, what) in [
            (
                Box::new(|w: &mut WellKnown| w.matrix_user_id = "@x:localhost".into())
                    as Box<dyn Fn(&mut WellKnown)>,
                "matrixUserId",
            ),
            (
                Box::new(|w: &mut WellKnown| w.agent_name = "other".into()),
                "agentName",
            ),
            (
                Box::new(|w: &mut WellKnown| w.prekey_signing_key = None),
                "prekeySigningKey",
            ),
        ] {
            let mut w = wk.clone();
            edit(&mut w);
            assert!(agree(&record, &w, &held_a).unwrap_err().contains(what));
        }
    }
}

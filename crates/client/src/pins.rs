//! Trust on first use: the oracle key a client first saw is pinned, and a different one is
//! refused until the user explicitly allows the change.

use std::collections::BTreeMap;
use std::path::PathBuf;

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use oracle_calls_crypto::OraclePublicKey;
use oracle_calls_proto::{KeyScheme, WellKnown};
use serde::{Deserialize, Serialize};
use tracing::{info, warn};

use crate::CallError;

/// A pinned oracle key, as stored in `pins.json`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct PinnedKey {
    /// Key id (hex of SHA-256(SPKI)[..16]).
    pub key_id: String,
    /// Scheme.
    pub scheme: KeyScheme,
    /// The public key, base64url raw form.
    pub public_key: String,
}

/// Preference among published schemes: the default first, the legacy fallback last.
const PREFERENCE: [KeyScheme; 4] = [
    KeyScheme::HpkeP256,
    KeyScheme::HpkeX25519,
    KeyScheme::EciesSecp256k1,
    KeyScheme::RsaOaep256,
];

#[derive(Debug)]
pub(crate) struct Pins {
    path: PathBuf,
}

impl Pins {
    pub(crate) fn new(path: PathBuf) -> Self {
        Self { path }
    }

    fn load(&self) -> Result<BTreeMap<String, PinnedKey>, CallError> {
        match std::fs::read_to_string(&self.path) {
            Ok(t) => serde_json::from_str(&t)
                .map_err(|e| CallError::Setup(format!("{}: {e}", self.path.display()))),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(BTreeMap::new()),
            Err(e) => Err(CallError::Setup(format!("{}: {e}", self.path.display()))),
        }
    }

    fn save(&self, pins: &BTreeMap<String, PinnedKey>) -> Result<(), CallError> {
        let err = |e: std::io::Error| CallError::Setup(format!("{}: {e}", self.path.display()));
        let text =
            serde_json::to_string_pretty(pins).map_err(|e| CallError::Setup(e.to_string()))?;
        let tmp = self.path.with_extension("json.tmp");
        std::fs::write(&tmp, text).map_err(err)?;
        std::fs::rename(&tmp, &self.path).map_err(err)
    }

    /// The key to wrap to: the pinned one if the oracle still publishes it; on first use the
    /// preferred published key, pinned now. A changed key is refused unless `allow_change`.
    pub(crate) fn choose(
        &self,
        wk: &WellKnown,
        allow_change: bool,
    ) -> Result<(PinnedKey, OraclePublicKey), CallError> {
        let mut pins = self.load()?;
        let oracle = wk.oracle_did.to_string();
        let offered: Vec<PinnedKey> = wk
            .keys
            .iter()
            .map(|k| PinnedKey {
                key_id: k.key_id.clone(),
                scheme: k.scheme,
                public_key: k.public_key.clone(),
            })
            .collect();
        if let Some(pinned) = pins.get(&oracle) {
            if offered.contains(pinned) {
                return Ok((pinned.clone(), parse(pinned)?));
            }
            if !allow_change {
                return Err(CallError::OracleKeyChanged {
                    oracle,
                    pinned: pinned.key_id.clone(),
                    offered: offered
                        .iter()
                        .map(|k| k.key_id.as_str())
                        .collect::<Vec<_>>()
                        .join(", "),
                });
            }
            warn!(%oracle, old = %pinned.key_id, "the oracle's key changed; re-pinning as explicitly allowed");
        }
        let mut reasons = Vec::new();
        for scheme in PREFERENCE {
            for k in offered.iter().filter(|k| k.scheme == scheme) {
                match parse(k) {
                    Ok(pk) => {
                        info!(%oracle, key_id = %k.key_id, scheme = %scheme, "pinned the oracle's key");
                        pins.insert(oracle, k.clone());
                        self.save(&pins)?;
                        return Ok((k.clone(), pk));
                    }
                    Err(e) => reasons.push(format!("{}: {e}", k.key_id)),
                }
            }
        }
        Err(CallError::NoUsableKey(if reasons.is_empty() {
            "none published".into()
        } else {
            reasons.join("; ")
        }))
    }
}

/// Parses a published key and checks its id really is its fingerprint.
fn parse(k: &PinnedKey) -> Result<OraclePublicKey, CallError> {
    let raw = URL_SAFE_NO_PAD
        .decode(&k.public_key)
        .map_err(|_| CallError::NoUsableKey("publicKey is not base64url".into()))?;
    let pk = OraclePublicKey::from_raw(k.scheme, &raw)
        .map_err(|e| CallError::NoUsableKey(e.to_string()))?;
    if pk.key_id().to_string() != k.key_id {
        return Err(CallError::NoUsableKey(format!(
            "keyId {} is not the fingerprint of its key ({})",
            k.key_id,
            pk.key_id()
        )));
    }
    Ok(pk)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::panic)]
    use oracle_calls_crypto::OracleKeyPair;
    use oracle_calls_proto::{Did, OracleKeyInfo};

    use super::*;

    fn info(kp: &OracleKeyPair) -> OracleKeyInfo {
        OracleKeyInfo {
            key_id: kp.key_id().to_string(),
            scheme: kp.scheme(),
            public_key: URL_SAFE_NO_PAD.encode(kp.public_key().to_raw()),
        }
    }

    fn wk(keys: Vec<OracleKeyInfo>) -> WellKnown {
        WellKnown {
            oracle_did: Did::parse("did:ixo:o").unwrap(),
            matrix_user_id: "@o:localhost".into(),
            agent_name: "a".into(),
            livekit_url: "ws://x".into(),
            keys,
        }
    }

    fn pins() -> (Pins, PathBuf) {
        let dir = std::env::temp_dir().join(format!(
            "oc-pins-{}-{}",
            std::process::id(),
            rand::random::<u32>()
        ));
        std::fs::create_dir_all(&dir).unwrap();
        (Pins::new(dir.join("pins.json")), dir)
    }

    #[test]
    fn first_use_pins_and_a_changed_key_is_refused_unless_allowed() {
        let mut rng = rand::rng();
        let a = OracleKeyPair::generate(KeyScheme::HpkeP256, &mut rng).unwrap();
        let b = OracleKeyPair::generate(KeyScheme::HpkeP256, &mut rng).unwrap();
        let (p, dir) = pins();
        let (k, _) = p.choose(&wk(vec![info(&a)]), false).unwrap();
        assert_eq!(k.key_id, a.key_id().to_string());
        // Same key again: fine, even with another key published next to it.
        assert!(p.choose(&wk(vec![info(&b), info(&a)]), false).is_ok());
        match p.choose(&wk(vec![info(&b)]), false) {
            Err(CallError::OracleKeyChanged { pinned, .. }) => {
                assert_eq!(pinned, a.key_id().to_string())
            }
            other => panic!("{other:?}"),
        }
        let (k, _) = p.choose(&wk(vec![info(&b)]), true).unwrap();
        assert_eq!(k.key_id, b.key_id().to_string());
        assert!(
            p.choose(&wk(vec![info(&b)]), false).is_ok(),
            "the new key is pinned now"
        );
        std::fs::remove_dir_all(dir).unwrap();
    }

    #[test]
    fn a_key_id_that_is_not_the_fingerprint_is_unusable() {
        let a = OracleKeyPair::generate(KeyScheme::HpkeX25519, &mut rand::rng()).unwrap();
        let mut i = info(&a);
        i.key_id = "00".repeat(16);
        let (p, dir) = pins();
        assert!(matches!(
            p.choose(&wk(vec![i]), false),
            Err(CallError::NoUsableKey(_))
        ));
        assert!(matches!(
            p.choose(&wk(vec![]), false),
            Err(CallError::NoUsableKey(_))
        ));
        std::fs::remove_dir_all(dir).unwrap();
    }

    #[test]
    fn the_default_scheme_is_preferred() {
        let mut rng = rand::rng();
        let x = OracleKeyPair::generate(KeyScheme::HpkeX25519, &mut rng).unwrap();
        let p256 = OracleKeyPair::generate(KeyScheme::HpkeP256, &mut rng).unwrap();
        let (p, dir) = pins();
        let (k, _) = p.choose(&wk(vec![info(&x), info(&p256)]), false).unwrap();
        assert_eq!(k.scheme, KeyScheme::HpkeP256);
        std::fs::remove_dir_all(dir).unwrap();
    }
}

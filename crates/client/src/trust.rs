//! The client's trust store: what it believes about each oracle it calls.
//!
//! The caller names the oracle (its DID); the server only describes it. Per oracle DID the
//! store keeps the key ids the client verified, the bot's Matrix user and the bot devices
//! that may receive call events, and the last key-transparency epoch seen. On first use the
//! server's description is pinned; later a changed key, bot user or bot device is refused
//! with an error naming old and new, and an override accepts exactly the named new value.
//! The file (`pins.json`) is written 0600, atomically.

use std::collections::BTreeMap;
use std::io::Write as _;
use std::path::PathBuf;

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use oracle_calls_crypto::{OraclePublicKey, PrekeySigningPublicKey};
use oracle_calls_kt::{DirectoryKeyId, OracleRecord, SignedCheckpoint, VerifiedRecord};
use oracle_calls_proto::{BotDevice, Did, KeyScheme, WellKnown};
use serde::{Deserialize, Serialize};
use tracing::{info, warn};

use crate::CallError;

/// A pinned oracle key.
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

/// What the client trusts about one oracle.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct OracleTrust {
    /// The oracle keys the client verified (it seals only to one of these).
    pub keys: Vec<PinnedKey>,
    /// The oracle bot's Matrix user id (empty: not known yet, pinned at the next call).
    #[serde(default)]
    pub matrix_user_id: String,
    /// The bot devices that may receive the call event's room key.
    #[serde(default)]
    pub bot_devices: Vec<BotDevice>,
    /// The last key-transparency epoch seen for this oracle (none without key transparency):
    /// with key transparency, the epoch in which the pinned record was published.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub kt_epoch: Option<u64>,
    /// The version (1, 2, ...) of the oracle's key-transparency record that was pinned.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub kt_version: Option<u64>,
    /// The key-transparency record that was pinned (verified against the directory); a later
    /// record is accepted only through a key history that still holds this one at
    /// `kt_version`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub kt_record: Option<OracleRecord>,
    /// The key that signs the oracle's prekeys (Ed25519, base64url), once the oracle offered
    /// one: from then on every call is sealed to a prekey it signed (forward secrecy), and a
    /// changed or withdrawn key is refused like a changed oracle key.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub prekey_signing_key: Option<String>,
}

/// Explicit acceptance of a change, after the user verified it out of band.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct TrustOverride {
    /// Accept exactly this new oracle key id (it must be published).
    pub oracle_key: Option<String>,
    /// Accept exactly the bot device with this Ed25519 key (unpadded base64); it may belong
    /// to a new bot user.
    pub bot_device: Option<String>,
    /// Accept exactly this new prekey signing key (base64url); [`NO_PREKEYS`] accepts an
    /// oracle that stopped offering prekeys (its calls lose forward secrecy).
    pub prekey_signing_key: Option<String>,
}

/// The [`TrustOverride::prekey_signing_key`] value that accepts an oracle without prekeys.
pub const NO_PREKEYS: &str = "none";

/// What a call may use: the key to seal to, the bot to talk to, its devices to share with.
#[derive(Clone, Debug)]
pub(crate) struct Trusted {
    pub(crate) key: PinnedKey,
    pub(crate) public: OraclePublicKey,
    pub(crate) bot: String,
    pub(crate) devices: Vec<BotDevice>,
    /// Set: the call's key is sealed to a prekey this key signed (forward secrecy).
    pub(crate) prekey_signer: Option<PrekeySigningPublicKey>,
}

/// Preference among published schemes: the default first, the legacy fallback last.
const PREFERENCE: [KeyScheme; 4] = [
    KeyScheme::HpkeP256,
    KeyScheme::HpkeX25519,
    KeyScheme::EciesSecp256k1,
    KeyScheme::RsaOaep256,
];

#[derive(Debug, Default, Serialize, Deserialize)]
struct TrustFile {
    version: u32,
    oracles: BTreeMap<String, OracleTrust>,
    /// Per key-transparency directory (its signing key's id, hex): the newest checkpoint
    /// accepted, so that the directory cannot roll back or fork unnoticed. Older clients
    /// ignore the field.
    #[serde(
        rename = "ktCheckpoints",
        default,
        skip_serializing_if = "BTreeMap::is_empty"
    )]
    kt_checkpoints: BTreeMap<String, SignedCheckpoint>,
    /// Per person (Matrix user id): the devices pinned for direct calls (see
    /// [`PinnedDevice`]). Older clients ignore the field.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    people: BTreeMap<String, Vec<PinnedDevice>>,
}

/// A person's device pinned for direct calls: trusted on first contact (all the devices the
/// person had then), or accepted explicitly later.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct PinnedDevice {
    /// The Matrix device id.
    pub device_id: String,
    /// Its Ed25519 identity key (unpadded base64, as Matrix writes it).
    pub ed25519: String,
}

/// What key transparency verified for the oracle, handed to [`TrustStore::check_verified`].
#[derive(Debug)]
pub(crate) struct KtVerified<'a> {
    /// The record the lookup proved.
    pub(crate) record: &'a VerifiedRecord,
    /// The epoch in which the pinned record was replaced (from the key history), for
    /// [`CallError::OracleKeyChanged`].
    pub(crate) change_epoch: Option<u64>,
}

/// The file format before the trust store: oracle DID → one key.
type LegacyPins = BTreeMap<String, PinnedKey>;

#[derive(Debug)]
pub(crate) struct TrustStore {
    path: PathBuf,
}

impl TrustStore {
    pub(crate) fn new(path: PathBuf) -> Self {
        Self { path }
    }

    fn err(&self, e: impl std::fmt::Display) -> CallError {
        CallError::Setup(format!("{}: {e}", self.path.display()))
    }

    fn load(&self) -> Result<TrustFile, CallError> {
        let text = match std::fs::read_to_string(&self.path) {
            Ok(t) => t,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                return Ok(TrustFile {
                    version: 2,
                    ..Default::default()
                });
            }
            Err(e) => return Err(self.err(e)),
        };
        if let Ok(f) = serde_json::from_str::<TrustFile>(&text) {
            return Ok(f);
        }
        // Pins written before the trust store: keep the keys, pin the rest at the next call.
        let legacy: LegacyPins = serde_json::from_str(&text).map_err(|e| self.err(e))?;
        Ok(TrustFile {
            version: 2,
            oracles: legacy
                .into_iter()
                .map(|(did, key)| {
                    let t = OracleTrust {
                        keys: vec![key],
                        matrix_user_id: String::new(),
                        bot_devices: Vec::new(),
                        kt_epoch: None,
                        kt_version: None,
                        kt_record: None,
                        prekey_signing_key: None,
                    };
                    (did, t)
                })
                .collect(),
            kt_checkpoints: BTreeMap::new(),
            people: BTreeMap::new(),
        })
    }

    /// Writes the file 0600 through a new temporary file, synced, then renamed over it.
    fn save(&self, f: &TrustFile) -> Result<(), CallError> {
        let text = serde_json::to_string_pretty(f).map_err(|e| self.err(e))?;
        let dir = self
            .path
            .parent()
            .ok_or_else(|| self.err("no parent directory"))?;
        let tmp = dir.join(format!(
            ".pins.{}.{:016x}.tmp",
            std::process::id(),
            rand::random::<u64>()
        ));
        let mut opts = std::fs::OpenOptions::new();
        opts.write(true).create_new(true);
        #[cfg(unix)]
        std::os::unix::fs::OpenOptionsExt::mode(&mut opts, 0o600);
        let written = opts.open(&tmp).and_then(|mut file| {
            file.write_all(text.as_bytes())?;
            file.sync_all()
        });
        if let Err(e) = written.and_then(|()| std::fs::rename(&tmp, &self.path)) {
            let _ = std::fs::remove_file(&tmp);
            return Err(self.err(e));
        }
        Ok(())
    }

    /// What the client knows about `oracle`, if anything.
    pub(crate) fn get(&self, oracle: &Did) -> Result<Option<OracleTrust>, CallError> {
        Ok(self.load()?.oracles.remove(oracle.as_str()))
    }

    /// The newest checkpoint accepted from the directory with signing key `directory`.
    pub(crate) fn kt_checkpoint(
        &self,
        directory: DirectoryKeyId,
    ) -> Result<Option<SignedCheckpoint>, CallError> {
        Ok(self
            .load()?
            .kt_checkpoints
            .remove(directory.to_string().as_str()))
    }

    /// Stores `checkpoint` as the newest accepted from its directory (the caller's verifier
    /// checked it is not older than the stored one).
    pub(crate) fn store_kt_checkpoint(
        &self,
        checkpoint: &SignedCheckpoint,
    ) -> Result<(), CallError> {
        let mut file = self.load()?;
        let id = checkpoint.key_id.to_string();
        if file.kt_checkpoints.get(&id) == Some(checkpoint) {
            return Ok(());
        }
        file.version = 2;
        file.kt_checkpoints.insert(id, checkpoint.clone());
        self.save(&file)
    }

    /// The devices of `user` pinned for direct calls (empty: never met).
    pub(crate) fn person_devices(&self, user: &str) -> Result<Vec<PinnedDevice>, CallError> {
        Ok(self.load()?.people.remove(user).unwrap_or_default())
    }

    /// Adds `devices` to the pins of `user` (a device id pinned with another key is
    /// replaced: the caller decided, e.g. an explicit override).
    pub(crate) fn pin_person_devices(
        &self,
        user: &str,
        devices: &[PinnedDevice],
    ) -> Result<(), CallError> {
        let mut file = self.load()?;
        let pins = file.people.entry(user.to_owned()).or_default();
        let mut changed = false;
        for d in devices {
            if pins.contains(d) {
                continue;
            }
            pins.retain(|p| p.device_id != d.device_id);
            pins.push(d.clone());
            changed = true;
        }
        if !changed {
            return Ok(());
        }
        file.version = 2;
        self.save(&file)
    }

    /// Checks the server's description `wk` of the oracle the caller chose (`expected`)
    /// against the store, pins what is new, and answers what the call may use.
    pub(crate) fn check(
        &self,
        expected: &Did,
        wk: &WellKnown,
        ov: &TrustOverride,
    ) -> Result<Trusted, CallError> {
        self.check_verified(expected, wk, ov, None)
    }

    /// As [`TrustStore::check`], where `wk` is the description key transparency verified
    /// (`kt`): the record's version and epoch are pinned with it, and a changed key names the
    /// epoch of the change.
    pub(crate) fn check_verified(
        &self,
        expected: &Did,
        wk: &WellKnown,
        ov: &TrustOverride,
        kt: Option<KtVerified<'_>>,
    ) -> Result<Trusted, CallError> {
        if wk.oracle_did != *expected {
            return Err(CallError::WrongOracle {
                expected: expected.to_string(),
                served: wk.oracle_did.to_string(),
            });
        }
        let oracle = expected.to_string();
        let mut file = self.load()?;
        let known = file.oracles.get(&oracle).cloned();
        let offered: Vec<PinnedKey> = wk
            .keys
            .iter()
            .map(|k| PinnedKey {
                key_id: k.key_id.clone(),
                scheme: k.scheme,
                public_key: k.public_key.clone(),
            })
            .collect();

        // The key.
        let (keys, (key, public)) = match &known {
            Some(t) if !t.keys.is_empty() => {
                let still: Vec<PinnedKey> = offered
                    .iter()
                    .filter(|k| t.keys.contains(k))
                    .cloned()
                    .collect();
                if !still.is_empty() {
                    (t.keys.clone(), preferred(&still)?)
                } else if let Some(k) = ov
                    .oracle_key
                    .as_ref()
                    .and_then(|id| offered.iter().find(|k| k.key_id == *id))
                {
                    let chosen = (k.clone(), parse(k)?);
                    warn!(%oracle, old = %ids(&t.keys), new = %k.key_id, "the oracle's key changed; accepting the new key as explicitly allowed");
                    (vec![k.clone()], chosen)
                } else {
                    return Err(CallError::OracleKeyChanged {
                        oracle,
                        pinned: ids(&t.keys),
                        offered: ids(&offered),
                        epoch: match &kt {
                            Some(kt) => kt.change_epoch,
                            None => t.kt_epoch,
                        },
                    });
                }
            }
            _ => {
                let chosen = preferred(&offered)?;
                info!(%oracle, key_id = %chosen.0.key_id, scheme = %chosen.0.scheme, "pinned the oracle's key on first use");
                (vec![chosen.0.clone()], chosen)
            }
        };

        // The bot's devices (and with them its user).
        if wk.matrix_devices.is_empty() {
            return Err(CallError::BotDeviceUnknown(format!(
                "the server of {oracle} publishes no device of its bot {}",
                wk.matrix_user_id
            )));
        }
        let accepted_device = ov
            .bot_device
            .as_ref()
            .and_then(|ed| wk.matrix_devices.iter().find(|d| d.ed25519 == *ed));
        let (bot, devices) = match &known {
            Some(t) if !t.matrix_user_id.is_empty() => {
                if t.matrix_user_id != wk.matrix_user_id && accepted_device.is_none() {
                    return Err(CallError::OracleBotChanged {
                        oracle,
                        pinned: t.matrix_user_id.clone(),
                        offered: wk.matrix_user_id.clone(),
                    });
                }
                let kept: Vec<BotDevice> = if t.matrix_user_id == wk.matrix_user_id {
                    wk.matrix_devices
                        .iter()
                        .filter(|d| t.bot_devices.contains(d))
                        .cloned()
                        .collect()
                } else {
                    Vec::new()
                };
                if !kept.is_empty() && kept.len() < wk.matrix_devices.len() && kt.is_some() {
                    // A device the oracle's verified directory record adds (another server
                    // of the oracle): the record's log, not the homeserver, vouches for it,
                    // as it did for the devices pinned first.
                    info!(%oracle, devices = %devices_text(&wk.matrix_devices), "pinned the bot devices the oracle's verified record adds");
                    (t.matrix_user_id.clone(), wk.matrix_devices.clone())
                } else if !kept.is_empty() {
                    let mut kept = kept;
                    if let Some(d) = accepted_device
                        && !kept.contains(d)
                    {
                        warn!(%oracle, device = %d.device_id, "a new bot device next to the pinned ones; accepting it as explicitly allowed");
                        kept.push(d.clone());
                    }
                    if kept.len() < wk.matrix_devices.len() {
                        let unpinned: Vec<BotDevice> = wk
                            .matrix_devices
                            .iter()
                            .filter(|d| !kept.contains(d))
                            .cloned()
                            .collect();
                        warn!(%oracle, devices = %devices_text(&unpinned), "the server publishes bot devices the trust store does not list; they get no call keys (with key transparency, a device in the oracle's verified record is pinned; without it, accept one by its ed25519 after checking it)");
                    }
                    (t.matrix_user_id.clone(), kept)
                } else if let Some(d) = accepted_device {
                    warn!(%oracle, bot = %wk.matrix_user_id, device = %d.device_id, "the oracle's bot device changed; accepting the new device as explicitly allowed");
                    (wk.matrix_user_id.clone(), vec![d.clone()])
                } else {
                    return Err(CallError::BotDeviceChanged {
                        oracle,
                        pinned: devices_text(&t.bot_devices),
                        offered: devices_text(&wk.matrix_devices),
                    });
                }
            }
            _ => {
                info!(%oracle, bot = %wk.matrix_user_id, devices = %devices_text(&wk.matrix_devices), "pinned the oracle's bot on first use");
                (wk.matrix_user_id.clone(), wk.matrix_devices.clone())
            }
        };

        // The prekey signing key: pinned once offered; changing or withdrawing it (a
        // downgrade to no forward secrecy) needs the explicit override.
        let pinned_signer = known.as_ref().and_then(|t| t.prekey_signing_key.clone());
        let offered_signer = wk.prekey_signing_key.clone();
        let signer = match (&pinned_signer, &offered_signer) {
            (Some(p), o) if o.as_ref() != Some(p) => {
                let offered_text = o.clone().unwrap_or_else(|| NO_PREKEYS.to_owned());
                if ov.prekey_signing_key.as_deref() == Some(offered_text.as_str()) {
                    warn!(%oracle, old = %p, new = %offered_text, "the oracle's prekey signing key changed; accepting it as explicitly allowed");
                    o.clone()
                } else {
                    return Err(CallError::PrekeySigningKeyChanged {
                        oracle,
                        pinned: p.clone(),
                        offered: offered_text,
                    });
                }
            }
            (None, Some(o)) => {
                info!(%oracle, prekey_signing_key = %o, "pinned the oracle's prekey signing key (calls now have forward secrecy)");
                Some(o.clone())
            }
            _ => offered_signer.clone(),
        };
        let prekey_signer = match &signer {
            Some(text) => Some(PrekeySigningPublicKey::parse(text).map_err(|e| {
                CallError::NoUsableKey(format!("the prekey signing key {text}: {e}"))
            })?),
            None => None,
        };

        let entry = OracleTrust {
            keys,
            matrix_user_id: bot.clone(),
            bot_devices: devices.clone(),
            kt_epoch: match &kt {
                Some(kt) => Some(kt.record.epoch),
                None => known.as_ref().and_then(|t| t.kt_epoch),
            },
            kt_version: match &kt {
                Some(kt) => Some(kt.record.version),
                None => known.as_ref().and_then(|t| t.kt_version),
            },
            kt_record: match &kt {
                Some(kt) => Some(kt.record.record.clone()),
                None => known.as_ref().and_then(|t| t.kt_record.clone()),
            },
            prekey_signing_key: signer,
        };
        if known.as_ref() != Some(&entry) {
            file.version = 2;
            file.oracles.insert(oracle, entry);
            self.save(&file)?;
        }
        Ok(Trusted {
            key,
            public,
            bot,
            devices,
            prekey_signer,
        })
    }
}

/// The most preferred usable key of `keys`; every unusable one is named if none is usable.
fn preferred(keys: &[PinnedKey]) -> Result<(PinnedKey, OraclePublicKey), CallError> {
    let mut reasons = Vec::new();
    for scheme in PREFERENCE {
        for k in keys.iter().filter(|k| k.scheme == scheme) {
            match parse(k) {
                Ok(pk) => return Ok((k.clone(), pk)),
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

fn ids(keys: &[PinnedKey]) -> String {
    joined(keys.iter().map(|k| k.key_id.as_str()))
}

/// `a, b, c`: how errors and logs list key ids.
pub(crate) fn joined<'a>(items: impl Iterator<Item = &'a str>) -> String {
    items.collect::<Vec<_>>().join(", ")
}

/// How errors and logs list bot devices: `ID (ed25519 KEY), …`.
pub(crate) fn devices_text(d: &[BotDevice]) -> String {
    d.iter()
        .map(|d| format!("{} (ed25519 {})", d.device_id, d.ed25519))
        .collect::<Vec<_>>()
        .join(", ")
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
    #![allow(clippy::unwrap_used, clippy::panic, clippy::indexing_slicing)]
    use oracle_calls_crypto::OracleKeyPair;
    use oracle_calls_proto::OracleKeyInfo;

    use super::*;

    fn info(kp: &OracleKeyPair) -> OracleKeyInfo {
        OracleKeyInfo {
            key_id: kp.key_id().to_string(),
            scheme: kp.scheme(),
            public_key: URL_SAFE_NO_PAD.encode(kp.public_key().to_raw()),
        }
    }

    fn did(s: &str) -> Did {
        Did::parse(s).unwrap()
    }

    fn dev(id: &str, ed: &str) -> BotDevice {
        BotDevice {
            device_id: id.into(),
            ed25519: ed.into(),
        }
    }

    fn wk_of(oracle: &str, bot: &str, keys: Vec<OracleKeyInfo>, devs: Vec<BotDevice>) -> WellKnown {
        WellKnown {
            oracle_did: did(oracle),
            matrix_user_id: bot.into(),
            agent_name: "a".into(),
            livekit_url: "ws://x".into(),
            keys,
            matrix_devices: devs,
            prekey_signing_key: None,
        }
    }

    fn wk(keys: Vec<OracleKeyInfo>) -> WellKnown {
        wk_of("did:ixo:o", "@o:localhost", keys, vec![dev("BOT", "ed-a")])
    }

    fn store() -> (TrustStore, PathBuf) {
        let dir = std::env::temp_dir().join(format!(
            "oc-trust-{}-{}",
            std::process::id(),
            rand::random::<u32>()
        ));
        std::fs::create_dir_all(&dir).unwrap();
        (TrustStore::new(dir.join("pins.json")), dir)
    }

    const NONE: TrustOverride = TrustOverride {
        oracle_key: None,
        bot_device: None,
        prekey_signing_key: None,
    };

    #[test]
    fn a_prekey_signing_key_is_pinned_once_offered_and_a_change_or_withdrawal_needs_the_override() {
        let mut rng = rand::rng();
        let a = OracleKeyPair::generate(KeyScheme::HpkeP256, &mut rng).unwrap();
        let k1 = oracle_calls_crypto::PrekeySigningKey::generate(&mut rng)
            .public_key()
            .to_string();
        let k2 = oracle_calls_crypto::PrekeySigningKey::generate(&mut rng)
            .public_key()
            .to_string();
        let (s, dir) = store();
        let o = did("did:ixo:o");
        let with = |k: Option<&str>| {
            let mut w = wk(vec![info(&a)]);
            w.prekey_signing_key = k.map(str::to_owned);
            w
        };
        // An oracle without prekeys: calls have no forward secrecy, nothing is pinned.
        assert!(
            s.check(&o, &with(None), &NONE)
                .unwrap()
                .prekey_signer
                .is_none()
        );
        // Offered later: pinned (an upgrade needs no override).
        let t = s.check(&o, &with(Some(&k1)), &NONE).unwrap();
        assert_eq!(t.prekey_signer.unwrap().to_string(), k1);
        // Another key, or none at all (a downgrade), is refused naming both.
        for (offered, named) in [(Some(k2.as_str()), k2.as_str()), (None, NO_PREKEYS)] {
            match s.check(&o, &with(offered), &NONE) {
                Err(CallError::PrekeySigningKeyChanged {
                    pinned, offered, ..
                }) => {
                    assert_eq!(pinned, k1);
                    assert_eq!(offered, named);
                }
                other => panic!("{other:?}"),
            }
        }
        // Accepting another value than the one offered changes nothing.
        let accept = |v: &str| TrustOverride {
            prekey_signing_key: Some(v.to_owned()),
            ..NONE
        };
        assert!(matches!(
            s.check(&o, &with(Some(&k2)), &accept(NO_PREKEYS)),
            Err(CallError::PrekeySigningKeyChanged { .. })
        ));
        // Exactly the new key: pinned from now on.
        let t = s.check(&o, &with(Some(&k2)), &accept(&k2)).unwrap();
        assert_eq!(t.prekey_signer.unwrap().to_string(), k2);
        assert!(s.check(&o, &with(Some(&k2)), &NONE).is_ok());
        // Exactly `none`: the withdrawal is accepted and calls go without prekeys.
        let t = s.check(&o, &with(None), &accept(NO_PREKEYS)).unwrap();
        assert!(t.prekey_signer.is_none());
        // A key that is not an Ed25519 public key is unusable.
        let (s2, dir2) = store();
        assert!(matches!(
            s2.check(&o, &with(Some("not-a-key")), &NONE),
            Err(CallError::NoUsableKey(_))
        ));
        let _ = std::fs::remove_dir_all(dir);
        let _ = std::fs::remove_dir_all(dir2);
    }

    #[test]
    fn first_use_pins_and_a_changed_key_is_refused_unless_exactly_that_key_is_accepted() {
        let mut rng = rand::rng();
        let a = OracleKeyPair::generate(KeyScheme::HpkeP256, &mut rng).unwrap();
        let b = OracleKeyPair::generate(KeyScheme::HpkeP256, &mut rng).unwrap();
        let c = OracleKeyPair::generate(KeyScheme::HpkeP256, &mut rng).unwrap();
        let o = did("did:ixo:o");
        let (s, dir) = store();
        let t = s.check(&o, &wk(vec![info(&a)]), &NONE).unwrap();
        assert_eq!(t.key.key_id, a.key_id().to_string());
        // The pinned key again: fine, even with another key published before it.
        let t = s.check(&o, &wk(vec![info(&b), info(&a)]), &NONE).unwrap();
        assert_eq!(t.key.key_id, a.key_id().to_string());
        match s.check(&o, &wk(vec![info(&b)]), &NONE) {
            Err(CallError::OracleKeyChanged {
                pinned,
                offered,
                epoch,
                ..
            }) => {
                assert_eq!(pinned, a.key_id().to_string());
                assert_eq!(offered, b.key_id().to_string());
                assert_eq!(epoch, None);
            }
            other => panic!("{other:?}"),
        }
        // Accepting another key than the one offered changes nothing.
        let wrong = TrustOverride {
            oracle_key: Some(c.key_id().to_string()),
            bot_device: None,
            prekey_signing_key: None,
        };
        assert!(matches!(
            s.check(&o, &wk(vec![info(&b)]), &wrong),
            Err(CallError::OracleKeyChanged { .. })
        ));
        let accept_b = TrustOverride {
            oracle_key: Some(b.key_id().to_string()),
            bot_device: None,
            prekey_signing_key: None,
        };
        // With b and c offered, accepting b pins b, never c.
        let t = s
            .check(&o, &wk(vec![info(&c), info(&b)]), &accept_b)
            .unwrap();
        assert_eq!(t.key.key_id, b.key_id().to_string());
        assert_eq!(
            s.get(&o).unwrap().unwrap().keys[0].key_id,
            b.key_id().to_string()
        );
        assert!(
            s.check(&o, &wk(vec![info(&b)]), &NONE).is_ok(),
            "b is pinned now"
        );
        assert!(
            matches!(
                s.check(&o, &wk(vec![info(&a)]), &NONE),
                Err(CallError::OracleKeyChanged { .. })
            ),
            "a was replaced, not kept"
        );
        std::fs::remove_dir_all(dir).unwrap();
    }

    /// Security review H1: a server that names another DID (with its own key) is refused,
    /// whatever the store holds; the caller's DID decides.
    #[test]
    fn a_server_naming_another_oracle_is_refused() {
        let mut rng = rand::rng();
        let a = OracleKeyPair::generate(KeyScheme::HpkeP256, &mut rng).unwrap();
        let b = OracleKeyPair::generate(KeyScheme::HpkeP256, &mut rng).unwrap();
        let (s, dir) = store();
        let o = did("did:ixo:o");
        s.check(&o, &wk(vec![info(&a)]), &NONE).unwrap();
        let other = wk_of(
            "did:ixo:o2",
            "@o:localhost",
            vec![info(&b)],
            vec![dev("BOT", "ed-a")],
        );
        match s.check(&o, &other, &NONE) {
            Err(CallError::WrongOracle { expected, served }) => {
                assert_eq!(expected, "did:ixo:o");
                assert_eq!(served, "did:ixo:o2");
            }
            other => panic!("{other:?}"),
        }
        // Also on first use, and no override helps.
        let (fresh, dir2) = store();
        let all = TrustOverride {
            oracle_key: Some(b.key_id().to_string()),
            bot_device: Some("ed-a".into()),
            prekey_signing_key: None,
        };
        assert!(matches!(
            fresh.check(&o, &other, &all),
            Err(CallError::WrongOracle { .. })
        ));
        assert!(fresh.get(&did("did:ixo:o2")).unwrap().is_none());
        std::fs::remove_dir_all(dir).unwrap();
        std::fs::remove_dir_all(dir2).unwrap();
    }

    #[test]
    fn a_changed_bot_or_bot_device_is_refused_unless_that_device_is_accepted() {
        let a = OracleKeyPair::generate(KeyScheme::HpkeX25519, &mut rand::rng()).unwrap();
        let o = did("did:ixo:o");
        let (s, dir) = store();
        let t = s.check(&o, &wk(vec![info(&a)]), &NONE).unwrap();
        assert_eq!(t.bot, "@o:localhost");
        assert_eq!(t.devices, vec![dev("BOT", "ed-a")]);
        // A second device next to the pinned one: the call goes on, shared with the pinned only.
        let two = wk_of(
            "did:ixo:o",
            "@o:localhost",
            vec![info(&a)],
            vec![dev("EVIL", "ed-x"), dev("BOT", "ed-a")],
        );
        assert_eq!(
            s.check(&o, &two, &NONE).unwrap().devices,
            vec![dev("BOT", "ed-a")]
        );
        // Accepted explicitly (another server of the oracle, checked out of band), the new
        // device is pinned next to the first, on a copy of the store.
        let (s3, dir3) = store();
        s3.check(&o, &wk(vec![info(&a)]), &NONE).unwrap();
        let accept_x = TrustOverride {
            oracle_key: None,
            bot_device: Some("ed-x".into()),
            prekey_signing_key: None,
        };
        assert_eq!(
            s3.check(&o, &two, &accept_x).unwrap().devices,
            vec![dev("BOT", "ed-a"), dev("EVIL", "ed-x")]
        );
        assert_eq!(s3.check(&o, &two, &NONE).unwrap().devices.len(), 2);
        std::fs::remove_dir_all(dir3).unwrap();
        // The same device id with another key is another device.
        let swapped = wk_of(
            "did:ixo:o",
            "@o:localhost",
            vec![info(&a)],
            vec![dev("BOT", "ed-x")],
        );
        match s.check(&o, &swapped, &NONE) {
            Err(CallError::BotDeviceChanged {
                pinned, offered, ..
            }) => {
                assert!(
                    pinned.contains("ed-a") && offered.contains("ed-x"),
                    "{pinned} / {offered}"
                );
            }
            other => panic!("{other:?}"),
        }
        let moved = wk_of(
            "did:ixo:o",
            "@o2:localhost",
            vec![info(&a)],
            vec![dev("NEW", "ed-n")],
        );
        assert!(matches!(
            s.check(&o, &moved, &NONE),
            Err(CallError::OracleBotChanged { .. })
        ));
        let accept = TrustOverride {
            oracle_key: None,
            bot_device: Some("ed-n".into()),
            prekey_signing_key: None,
        };
        let t = s.check(&o, &moved, &accept).unwrap();
        assert_eq!(t.bot, "@o2:localhost");
        assert_eq!(t.devices, vec![dev("NEW", "ed-n")]);
        assert!(s.check(&o, &moved, &NONE).is_ok());
        // A server that publishes no bot device is refused (the event would go to any device).
        let none = wk_of("did:ixo:o", "@o2:localhost", vec![info(&a)], vec![]);
        assert!(matches!(
            s.check(&o, &none, &NONE),
            Err(CallError::BotDeviceUnknown(_))
        ));
        std::fs::remove_dir_all(dir).unwrap();
    }

    #[test]
    fn a_key_id_that_is_not_the_fingerprint_is_unusable() {
        let a = OracleKeyPair::generate(KeyScheme::HpkeX25519, &mut rand::rng()).unwrap();
        let mut i = info(&a);
        i.key_id = "00".repeat(16);
        let (s, dir) = store();
        let o = did("did:ixo:o");
        assert!(matches!(
            s.check(&o, &wk(vec![i]), &NONE),
            Err(CallError::NoUsableKey(_))
        ));
        assert!(matches!(
            s.check(&o, &wk(vec![]), &NONE),
            Err(CallError::NoUsableKey(_))
        ));
        std::fs::remove_dir_all(dir).unwrap();
    }

    #[test]
    fn the_default_scheme_is_preferred() {
        let mut rng = rand::rng();
        let x = OracleKeyPair::generate(KeyScheme::HpkeX25519, &mut rng).unwrap();
        let p256 = OracleKeyPair::generate(KeyScheme::HpkeP256, &mut rng).unwrap();
        let (s, dir) = store();
        let t = s
            .check(&did("did:ixo:o"), &wk(vec![info(&x), info(&p256)]), &NONE)
            .unwrap();
        assert_eq!(t.key.scheme, KeyScheme::HpkeP256);
        std::fs::remove_dir_all(dir).unwrap();
    }

    #[test]
    fn key_transparency_pins_the_verified_record_and_keeps_the_newest_checkpoint_per_directory() {
        use oracle_calls_kt::Checkpoint;
        let mut rng = rand::rng();
        let a = OracleKeyPair::generate(KeyScheme::HpkeP256, &mut rng).unwrap();
        let b = OracleKeyPair::generate(KeyScheme::HpkeP256, &mut rng).unwrap();
        let (s, dir) = store();
        let o = did("did:ixo:o");
        let rec = |k: &OracleKeyPair| OracleRecord {
            keys: vec![info(k)],
            matrix_user_id: "@o:localhost".into(),
            bot_devices: vec![dev("BOT", "ed-a")],
            agent_name: "a".into(),
            prekey_signing_key: None,
        };
        let v1 = VerifiedRecord {
            record: rec(&a),
            epoch: 4,
            version: 1,
        };
        let kt = |record, change_epoch| {
            Some(KtVerified {
                record,
                change_epoch,
            })
        };
        s.check_verified(&o, &wk(vec![info(&a)]), &NONE, kt(&v1, None))
            .unwrap();
        let pinned = s.get(&o).unwrap().unwrap();
        assert_eq!(
            (pinned.kt_epoch, pinned.kt_version, pinned.kt_record.clone()),
            (Some(4), Some(1), Some(rec(&a)))
        );
        // A new record with another key: refused naming the epoch of the change; nothing
        // pinned.
        let v2 = VerifiedRecord {
            record: rec(&b),
            epoch: 9,
            version: 2,
        };
        match s.check_verified(&o, &wk(vec![info(&b)]), &NONE, kt(&v2, Some(7))) {
            Err(CallError::OracleKeyChanged { epoch, .. }) => assert_eq!(epoch, Some(7)),
            other => panic!("{other:?}"),
        }
        assert_eq!(s.get(&o).unwrap().unwrap(), pinned);
        // A record that adds a bot device (a second server of the oracle), verified: the new
        // device is pinned next to the first; the same list without verification is not.
        let rec2 = OracleRecord {
            bot_devices: vec![dev("BOT", "ed-a"), dev("BOT2", "ed-b")],
            ..rec(&a)
        };
        let v3 = VerifiedRecord {
            record: rec2.clone(),
            epoch: 11,
            version: 3,
        };
        let wk2 = wk_of(
            "did:ixo:o",
            "@o:localhost",
            vec![info(&a)],
            vec![dev("BOT", "ed-a"), dev("BOT2", "ed-b")],
        );
        let (s2, dir2) = store();
        s2.check_verified(&o, &wk(vec![info(&a)]), &NONE, kt(&v1, None))
            .unwrap();
        assert_eq!(
            s2.check(&o, &wk2, &NONE).unwrap().devices,
            vec![dev("BOT", "ed-a")],
            "unverified: the added device gets no keys"
        );
        let t = s2.check_verified(&o, &wk2, &NONE, kt(&v3, None)).unwrap();
        assert_eq!(t.devices, vec![dev("BOT", "ed-a"), dev("BOT2", "ed-b")]);
        assert_eq!(
            s2.get(&o).unwrap().unwrap().bot_devices,
            vec![dev("BOT", "ed-a"), dev("BOT2", "ed-b")],
            "pinned"
        );
        // Pinned once, it stays trusted on later calls without the directory.
        assert_eq!(s2.check(&o, &wk2, &NONE).unwrap().devices.len(), 2);
        std::fs::remove_dir_all(dir2).unwrap();
        // Without key transparency the pinned record is kept, and its epoch named.
        match s.check(&o, &wk(vec![info(&b)]), &NONE) {
            Err(CallError::OracleKeyChanged { epoch, .. }) => assert_eq!(epoch, Some(4)),
            other => panic!("{other:?}"),
        }
        assert!(s.check(&o, &wk(vec![info(&a)]), &NONE).is_ok());
        assert_eq!(s.get(&o).unwrap().unwrap(), pinned);
        // Accepting exactly the new key pins the new record.
        let accept_b = TrustOverride {
            oracle_key: Some(b.key_id().to_string()),
            bot_device: None,
            prekey_signing_key: None,
        };
        s.check_verified(&o, &wk(vec![info(&b)]), &accept_b, kt(&v2, Some(7)))
            .unwrap();
        let now = s.get(&o).unwrap().unwrap();
        assert_eq!(
            (now.kt_epoch, now.kt_version, now.kt_record),
            (Some(9), Some(2), Some(rec(&b)))
        );

        // One checkpoint per directory key.
        let cp = |seed: u8, epoch: u64| SignedCheckpoint {
            checkpoint: Checkpoint {
                epoch,
                root_hash: [seed; 32],
                time_ms: 1,
            },
            signature: [0; 64],
            key_id: DirectoryKeyId::of(&[seed; 32]),
        };
        let (one, two) = (DirectoryKeyId::of(&[1; 32]), DirectoryKeyId::of(&[2; 32]));
        assert_eq!(s.kt_checkpoint(one).unwrap(), None);
        s.store_kt_checkpoint(&cp(1, 3)).unwrap();
        s.store_kt_checkpoint(&cp(2, 8)).unwrap();
        s.store_kt_checkpoint(&cp(1, 5)).unwrap();
        assert_eq!(s.kt_checkpoint(one).unwrap(), Some(cp(1, 5)));
        assert_eq!(s.kt_checkpoint(two).unwrap(), Some(cp(2, 8)));
        assert_eq!(s.get(&o).unwrap().unwrap().kt_version, Some(2));

        // The file stays readable by a client that knows nothing of key transparency ...
        #[derive(Deserialize)]
        #[serde(rename_all = "camelCase")]
        struct OldTrust {
            keys: Vec<PinnedKey>,
            matrix_user_id: String,
            kt_epoch: Option<u64>,
        }
        #[derive(Deserialize)]
        struct OldFile {
            version: u32,
            oracles: BTreeMap<String, OldTrust>,
        }
        let text = std::fs::read_to_string(dir.join("pins.json")).unwrap();
        let old: OldFile = serde_json::from_str(&text).unwrap();
        let t = &old.oracles["did:ixo:o"];
        assert_eq!(old.version, 2);
        assert_eq!(t.keys[0].key_id, b.key_id().to_string());
        assert_eq!(
            (t.matrix_user_id.as_str(), t.kt_epoch),
            ("@o:localhost", Some(9))
        );
        // ... and a file such a client wrote (no checkpoints, no record) reads here.
        let mut v: serde_json::Value = serde_json::from_str(&text).unwrap();
        v.as_object_mut().unwrap().remove("ktCheckpoints");
        let entry = v["oracles"]["did:ixo:o"].as_object_mut().unwrap();
        entry.remove("ktRecord");
        entry.remove("ktVersion");
        std::fs::write(dir.join("pins.json"), v.to_string()).unwrap();
        let t = s.get(&o).unwrap().unwrap();
        assert_eq!(
            (t.kt_epoch, t.kt_version, t.kt_record),
            (Some(9), None, None)
        );
        assert_eq!(s.kt_checkpoint(one).unwrap(), None);
        std::fs::remove_dir_all(dir).unwrap();
    }

    #[cfg(unix)]
    #[test]
    fn the_file_is_owner_only_and_old_pins_are_kept() {
        use std::os::unix::fs::PermissionsExt as _;
        let a = OracleKeyPair::generate(KeyScheme::HpkeP256, &mut rand::rng()).unwrap();
        let (s, dir) = store();
        // A pins file written before the trust store (DID → key).
        let old: LegacyPins = [(
            "did:ixo:o".to_owned(),
            PinnedKey {
                key_id: a.key_id().to_string(),
                scheme: a.scheme(),
                public_key: info(&a).public_key,
            },
        )]
        .into();
        std::fs::write(dir.join("pins.json"), serde_json::to_string(&old).unwrap()).unwrap();
        let o = did("did:ixo:o");
        s.check(&o, &wk(vec![info(&a)]), &NONE).unwrap();
        let mode = std::fs::metadata(dir.join("pins.json"))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600);
        let t = s.get(&o).unwrap().unwrap();
        assert_eq!(t.keys[0].key_id, a.key_id().to_string());
        assert_eq!(t.matrix_user_id, "@o:localhost");
        // No temporary file is left behind.
        let left: Vec<_> = std::fs::read_dir(&dir)
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(left, vec![std::ffi::OsString::from("pins.json")]);
        std::fs::remove_dir_all(dir).unwrap();
    }
}

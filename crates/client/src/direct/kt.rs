//! Key transparency for people (docs/PROTOCOL.md §14.7): each person's client publishes the
//! devices it calls from as a `PersonRecord` under its Matrix user id, and the other side
//! trusts a device only when the record, verified against the directory's signed checkpoint,
//! lists it. The homeserver's own device list is then never the source of trust.
//!
//! The rules (sans-IO in [`decide`]):
//! - First contact with a person pins every device their verified record lists.
//! - A device is trusted only while it is pinned *and* the person's current verified record
//!   lists it with the same Ed25519 key; a device the person withdrew from the record stops
//!   being trusted, and one the record does not list is refused even when pinned.
//! - A device the record lists but the pins do not (a new device) is refused until
//!   [`super::DirectCalls::accept_device`] names it, as without key transparency.
//! - No record, a record that does not verify, or an unreachable directory: refused (the
//!   call fails closed; nothing falls back to the homeserver's word).

use std::collections::HashMap;
use std::time::{Duration, Instant};

use matrix_sdk::Client;
use oracle_calls_kt::{DirectoryPublicKey, PersonDevice, PersonId, PersonRecord, VerifiedRecord};
use tracing::{info, warn};

use super::{DirectError, PeopleTrust};
use crate::CallError;
use crate::kt::{KtApi, KtConfig};
use crate::trust::PinnedDevice;

/// How long a verified record is used before it is looked up again.
const CACHE_FOR: Duration = Duration::from_secs(10);

/// A person's verified record, or none (the directory has no record under their user id).
pub(crate) type Listing = Option<VerifiedRecord<PersonRecord>>;

/// The directory as the direct calls use it: lookups verified against the checkpoint stored
/// in the trust file (shared with the oracles' lookups, so neither can be rolled back), a
/// short cache, and publishing this person's own device.
pub(crate) struct PeopleDirectory {
    api: KtApi,
    directory: DirectoryPublicKey,
    cache: std::sync::Mutex<HashMap<String, (Instant, Listing)>>,
    /// One verification at a time, so the stored checkpoint only moves forward.
    verifying: tokio::sync::Mutex<()>,
}

impl std::fmt::Debug for PeopleDirectory {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PeopleDirectory")
            .field("key_id", &self.directory.key_id())
            .finish_non_exhaustive()
    }
}

/// What the rules say about one device of a person.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Decision {
    /// Pinned and listed.
    Trusted,
    /// First contact: pin these (every listed device), then the device is trusted.
    PinAll(Vec<PinnedDevice>),
    /// Refused, and why.
    Refused(&'static str),
}

/// The rules of the module docs for `device` (`ed25519`: unpadded base64) of a person with
/// `pins`, whose verified record is `record`.
pub(crate) fn decide(
    pins: &[PinnedDevice],
    record: Option<&PersonRecord>,
    device: &str,
    ed25519: &str,
) -> Decision {
    let Some(record) = record else {
        return Decision::Refused("the person has no record in the key-transparency directory");
    };
    if !record.lists(device, ed25519) {
        return Decision::Refused(
            "the person's verified key-transparency record does not list this device",
        );
    }
    if pins.is_empty() {
        return Decision::PinAll(listed(record));
    }
    if pins
        .iter()
        .any(|p| p.device_id == device && p.ed25519 == ed25519)
    {
        Decision::Trusted
    } else {
        Decision::Refused("a new device of this person: listed, but not accepted yet")
    }
}

/// Every device `record` lists, as pins.
pub(crate) fn listed(record: &PersonRecord) -> Vec<PinnedDevice> {
    record
        .devices
        .iter()
        .map(|d| PinnedDevice {
            device_id: d.device_id.clone(),
            ed25519: d.ed25519.clone(),
        })
        .collect()
}

fn kt_err(e: CallError) -> DirectError {
    match e {
        CallError::KeyTransparency(e) => DirectError::KtUnverified(e),
        CallError::KtUnavailable(why) => DirectError::KtUnavailable(why),
        other => DirectError::KtUnavailable(other.to_string()),
    }
}

impl PeopleDirectory {
    /// # Errors
    /// [`DirectError::KtUnavailable`] for an insecure or unusable URL.
    pub(crate) fn new(cfg: &KtConfig) -> Result<Self, DirectError> {
        Ok(Self {
            api: KtApi::new(cfg).map_err(kt_err)?,
            directory: cfg.directory_key.clone(),
            cache: std::sync::Mutex::new(HashMap::new()),
            verifying: tokio::sync::Mutex::new(()),
        })
    }

    /// The verified record of `user` (from the cache when it is younger than 10 s and
    /// `fresh` is false).
    ///
    /// # Errors
    /// [`DirectError::KtUnavailable`] when the directory cannot be asked,
    /// [`DirectError::KtUnverified`] when its answer does not verify (a bad signature or
    /// proof, a rollback, a fork), [`DirectError::Trust`] when the checkpoint cannot be
    /// stored.
    pub(crate) async fn record(
        &self,
        trust: &PeopleTrust,
        user: &str,
        fresh: bool,
    ) -> Result<Listing, DirectError> {
        if !fresh && let Some(listing) = self.cached(user) {
            return Ok(listing);
        }
        let person = PersonId::parse(user).map_err(DirectError::KtUnverified)?;
        let _turn = self.verifying.lock().await;
        let store = trust.store();
        let mut verifier = match store
            .kt_checkpoint(self.directory.key_id())
            .map_err(|e| DirectError::Trust(e.to_string()))?
        {
            Some(stored) => oracle_calls_kt::Verifier::resume(self.directory.clone(), stored)
                .map_err(DirectError::KtUnverified)?,
            None => oracle_calls_kt::Verifier::new(self.directory.clone()),
        };
        let listing = match self.api.lookup_label(&person).await.map_err(kt_err)? {
            None => None,
            Some(lookup) => Some(
                verifier
                    .verify_lookup(&lookup.checkpoint, &person, &lookup.proof)
                    .map_err(DirectError::KtUnverified)?,
            ),
        };
        if let Some(latest) = verifier.latest() {
            store
                .store_kt_checkpoint(latest)
                .map_err(|e| DirectError::Trust(e.to_string()))?;
        }
        if let Ok(mut cache) = self.cache.lock() {
            if cache.len() > 1024 {
                cache.retain(|_, (at, _)| at.elapsed() < CACHE_FOR);
            }
            cache.insert(user.to_owned(), (Instant::now(), listing.clone()));
        }
        Ok(listing)
    }

    fn cached(&self, user: &str) -> Option<Listing> {
        let cache = self.cache.lock().ok()?;
        cache
            .get(user)
            .filter(|(at, _)| at.elapsed() < CACHE_FOR)
            .map(|(_, listing)| listing.clone())
    }

    /// Makes sure this device (`device_id`, `ed25519` unpadded base64) is in its person's
    /// record: if the verified record lacks it (or lists the device id with another key), a
    /// record with every other listed device plus this one is published, authorized by a
    /// Matrix OpenID token, and looked up again. Answers the verified record that lists it.
    ///
    /// Devices in the record that the homeserver does not report for this account are logged
    /// as a warning (someone published a device for this person).
    ///
    /// # Errors
    /// Those of [`PeopleDirectory::record`]; [`DirectError::Matrix`] when no OpenID token can
    /// be had; [`DirectError::KtUnavailable`] when the directory refuses the publish or the
    /// record still does not list this device after it.
    pub(crate) async fn publish_own(
        &self,
        client: &Client,
        trust: &PeopleTrust,
        user: &str,
        device_id: &str,
        ed25519: &str,
    ) -> Result<VerifiedRecord<PersonRecord>, DirectError> {
        let current = self.record(trust, user, true).await?;
        let verified = match current {
            Some(v) if v.record.lists(device_id, ed25519) => v,
            current => {
                let mut devices: Vec<PersonDevice> = current
                    .map(|v| v.record.devices)
                    .unwrap_or_default()
                    .into_iter()
                    .filter(|d| d.device_id != device_id)
                    .collect();
                devices.push(PersonDevice {
                    device_id: device_id.to_owned(),
                    ed25519: ed25519.to_owned(),
                });
                let record = PersonRecord {
                    matrix_user_id: user.to_owned(),
                    devices,
                };
                let token = client
                    .account()
                    .request_openid_token()
                    .await
                    .map_err(super::matrix_err)?;
                let token = zeroize::Zeroizing::new(token.access_token);
                let checkpoint = self
                    .api
                    .publish_person(&token, &record)
                    .await
                    .map_err(kt_err)?;
                info!(%user, device = %device_id, devices = record.devices.len(), epoch = checkpoint.checkpoint.epoch, "published this device in the key-transparency directory");
                match self.record(trust, user, true).await? {
                    Some(v) if v.record.lists(device_id, ed25519) => v,
                    _ => {
                        return Err(DirectError::KtUnavailable(
                            "the directory accepted this device but its verified record does not list it"
                                .into(),
                        ));
                    }
                }
            }
        };
        self.warn_unknown_own_devices(client, &verified.record)
            .await;
        Ok(verified)
    }

    async fn warn_unknown_own_devices(&self, client: &Client, record: &PersonRecord) {
        let Some(user) = client.user_id() else { return };
        let Ok(known) = client.encryption().get_user_devices(user).await else {
            return;
        };
        for d in &record.devices {
            let reported = known.devices().any(|k| {
                k.device_id().as_str() == d.device_id
                    && k.ed25519_key().map(|e| e.to_base64()).as_deref() == Some(d.ed25519.as_str())
            });
            if !reported {
                warn!(%user, device = %d.device_id, "the key-transparency directory lists a device of yours that your homeserver does not report; if it is not yours, someone published it for you");
            }
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    fn pin(id: &str, key: &str) -> PinnedDevice {
        PinnedDevice {
            device_id: id.into(),
            ed25519: key.into(),
        }
    }

    fn record(devices: &[(&str, &str)]) -> PersonRecord {
        PersonRecord {
            matrix_user_id: "@bob:x".into(),
            devices: devices
                .iter()
                .map(|(id, key)| PersonDevice {
                    device_id: (*id).into(),
                    ed25519: (*key).into(),
                })
                .collect(),
        }
    }

    #[test]
    fn only_pinned_and_listed_devices_are_trusted() {
        let r = record(&[("A", "ka"), ("B", "kb")]);
        // First contact pins every listed device.
        assert_eq!(
            decide(&[], Some(&r), "A", "ka"),
            Decision::PinAll(vec![pin("A", "ka"), pin("B", "kb")])
        );
        // Pinned and listed.
        assert_eq!(
            decide(&[pin("A", "ka")], Some(&r), "A", "ka"),
            Decision::Trusted
        );
        // Listed but new: needs acceptance.
        assert!(matches!(
            decide(&[pin("A", "ka")], Some(&r), "B", "kb"),
            Decision::Refused(why) if why.contains("not accepted")
        ));
        // Pinned, but withdrawn from the record or listed with another key.
        let withdrawn = record(&[("B", "kb")]);
        for (rec, dev, key) in [(&withdrawn, "A", "ka"), (&r, "A", "other")] {
            assert!(matches!(
                decide(&[pin("A", "ka"), pin("A", "other")], Some(rec), dev, key),
                Decision::Refused(why) if why.contains("does not list")
            ));
        }
        // Not listed on first contact: nothing is pinned.
        assert!(matches!(
            decide(&[], Some(&r), "C", "kc"),
            Decision::Refused(_)
        ));
        // No record at all.
        assert!(matches!(
            decide(&[pin("A", "ka")], None, "A", "ka"),
            Decision::Refused(why) if why.contains("no record")
        ));
    }
}

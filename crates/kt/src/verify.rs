//! The client and agent side: verify lookups and key histories against signed checkpoints,
//! and remember the newest checkpoint so a directory cannot roll back or fork unnoticed.
//! Sans-IO: no clock, no network, no files; the caller brings the bytes and stores the state.

use crate::checkpoint::{Checkpoint, DirectoryPublicKey, SignedCheckpoint, verify_checkpoint};
use crate::error::{Error, Result};
use crate::proof::{HistoryProof, LookupProof};
use crate::record::OracleRecord;
use crate::subject::Subject;
use akd_core::verify::history::{HistoryParams, HistoryVerificationParams};
use akd_core::verify::{key_history_verify, lookup_verify};
use akd_core::{AkdLabel, WhatsAppV1Configuration};

/// The AKD tree configuration (hash function, leaf and node hashing) of every oracle-calls
/// directory: akd's `WhatsAppV1Configuration` (BLAKE3).
pub(crate) type TreeConfig = WhatsAppV1Configuration;

/// A record the directory proved it serves for a label (an oracle's DID, a person's user id).
#[derive(Clone, PartialEq, Eq, Debug)]
pub struct VerifiedRecord<R = OracleRecord> {
    /// The record.
    pub record: R,
    /// The epoch in which this version was published.
    pub epoch: u64,
    /// The record's version for this label: 1 for the first value, +1 per change.
    pub version: u64,
}

/// Every value a label ever had, as proved by a key-history proof: newest first, versions
/// contiguous down to 1.
#[derive(Clone, PartialEq, Eq, Debug)]
pub struct VerifiedHistory<R = OracleRecord> {
    versions: Vec<VerifiedRecord<R>>,
}

impl<R: PartialEq> VerifiedHistory<R> {
    /// Every version, newest first (never empty).
    pub fn versions(&self) -> &[VerifiedRecord<R>] {
        &self.versions
    }

    /// The newest version.
    pub fn latest(&self) -> Option<&VerifiedRecord<R>> {
        self.versions.first()
    }

    /// For a client that pinned `pinned` at version `pinned_version` (from an earlier verified
    /// lookup): the version that replaced it, if any — its `epoch` is when the change was
    /// published.
    ///
    /// # Errors
    /// [`Error::HistoryRewritten`] if the history has no such version or a different record
    /// at it: the directory rewrote a value it once proved.
    pub fn change_since(
        &self,
        pinned: &R,
        pinned_version: u64,
    ) -> Result<Option<&VerifiedRecord<R>>> {
        let at = self
            .versions
            .iter()
            .find(|v| v.version == pinned_version)
            .filter(|v| v.record == *pinned)
            .ok_or(Error::HistoryRewritten {
                version: pinned_version,
            })?;
        let next = at.version.checked_add(1);
        Ok(self.versions.iter().find(|v| Some(v.version) == next))
    }
}

/// Verifies a lookup proof for `subject` (an oracle's [`oracle_calls_proto::Did`] or a
/// person's [`crate::PersonId`]) against a signed checkpoint: the checkpoint signature, the
/// VRF proofs that hide the label in the tree, the Merkle paths to the signed root hash, and
/// that the proved version is the latest; then decodes the record of the label's kind.
///
/// This checks one response alone; [`Verifier::verify_lookup`] also refuses rollbacks and
/// forks.
///
/// # Errors
/// Those of [`verify_checkpoint`]; [`Error::Malformed`] / [`Error::TooLarge`] for a proof
/// that does not parse; [`Error::LookupProof`] if it does not verify;
/// [`Error::MalformedRecord`] if the proved value is not a record.
pub fn verify_lookup<S: Subject>(
    directory: &DirectoryPublicKey,
    signed: &SignedCheckpoint,
    subject: &S,
    proof: &LookupProof,
) -> Result<VerifiedRecord<S::Record>> {
    let checkpoint = verify_checkpoint(signed, directory)?;
    lookup_at(directory, &checkpoint, subject, proof)
}

/// Verifies a key-history proof for `subject` against a signed checkpoint: every version from 1 to
/// the latest, each in the tree at its epoch, none hidden after it.
///
/// # Errors
/// Those of [`verify_checkpoint`]; [`Error::Malformed`] / [`Error::TooLarge`] for a proof
/// that does not parse; [`Error::HistoryProof`] if it does not verify;
/// [`Error::MalformedRecord`] if a proved value is not a record.
pub fn verify_history<S: Subject>(
    directory: &DirectoryPublicKey,
    signed: &SignedCheckpoint,
    subject: &S,
    proof: &HistoryProof,
) -> Result<VerifiedHistory<S::Record>> {
    let checkpoint = verify_checkpoint(signed, directory)?;
    history_at(directory, &checkpoint, subject, proof)
}

/// One directory as a client or agent sees it: the directory key it was configured with and
/// the newest checkpoint it accepted (persist [`Verifier::latest`] and pass it to
/// [`Verifier::resume`]).
///
/// It refuses a checkpoint older than the stored one ([`Error::Rollback`]), a different
/// checkpoint for the stored epoch ([`Error::Fork`]) and a newer epoch dated earlier
/// ([`Error::TimeWentBackwards`]). A fork between two *different* epochs (a newer tree that
/// does not extend the stored one) is the auditor's to catch (`audit`).
#[derive(Clone, Debug)]
pub struct Verifier {
    directory: DirectoryPublicKey,
    latest: Option<SignedCheckpoint>,
}

impl Verifier {
    /// A verifier that has seen no checkpoint yet.
    pub fn new(directory: DirectoryPublicKey) -> Self {
        Self {
            directory,
            latest: None,
        }
    }

    /// A verifier that resumes from a stored checkpoint.
    ///
    /// # Errors
    /// Those of [`verify_checkpoint`]: the stored checkpoint must be the directory's.
    pub fn resume(directory: DirectoryPublicKey, latest: SignedCheckpoint) -> Result<Self> {
        verify_checkpoint(&latest, &directory)?;
        Ok(Self {
            directory,
            latest: Some(latest),
        })
    }

    /// The directory key this verifier trusts.
    pub fn directory(&self) -> &DirectoryPublicKey {
        &self.directory
    }

    /// The newest checkpoint accepted so far: the state to persist.
    pub fn latest(&self) -> Option<&SignedCheckpoint> {
        self.latest.as_ref()
    }

    /// Checks a checkpoint's signature and that it is not older than, or a fork of, the stored
    /// one; stores it when it is newer.
    ///
    /// # Errors
    /// Those of [`verify_checkpoint`], [`Error::Rollback`], [`Error::Fork`],
    /// [`Error::TimeWentBackwards`]. The state is unchanged on error.
    pub fn accept_checkpoint(&mut self, signed: &SignedCheckpoint) -> Result<Checkpoint> {
        let checkpoint = self.check(signed)?;
        self.store(signed);
        Ok(checkpoint)
    }

    /// [`verify_lookup`], plus the checks of [`Verifier::accept_checkpoint`]. The checkpoint
    /// is stored only if the proof verifies too.
    ///
    /// # Errors
    /// Those of [`verify_lookup`] and [`Verifier::accept_checkpoint`].
    pub fn verify_lookup<S: Subject>(
        &mut self,
        signed: &SignedCheckpoint,
        subject: &S,
        proof: &LookupProof,
    ) -> Result<VerifiedRecord<S::Record>> {
        let checkpoint = self.check(signed)?;
        let record = lookup_at(&self.directory, &checkpoint, subject, proof)?;
        self.store(signed);
        Ok(record)
    }

    /// [`verify_history`], plus the checks of [`Verifier::accept_checkpoint`]. Use it when a
    /// lookup shows a record other than the pinned one, then
    /// [`VerifiedHistory::change_since`] names the epoch of the change.
    ///
    /// # Errors
    /// Those of [`verify_history`] and [`Verifier::accept_checkpoint`].
    pub fn verify_history<S: Subject>(
        &mut self,
        signed: &SignedCheckpoint,
        subject: &S,
        proof: &HistoryProof,
    ) -> Result<VerifiedHistory<S::Record>> {
        let checkpoint = self.check(signed)?;
        let history = history_at(&self.directory, &checkpoint, subject, proof)?;
        self.store(signed);
        Ok(history)
    }

    fn check(&self, signed: &SignedCheckpoint) -> Result<Checkpoint> {
        let offered = verify_checkpoint(signed, &self.directory)?;
        if let Some(stored) = &self.latest {
            let stored = stored.checkpoint;
            if offered.epoch < stored.epoch {
                return Err(Error::Rollback {
                    stored: stored.epoch,
                    offered: offered.epoch,
                });
            }
            if offered.epoch == stored.epoch && offered != stored {
                return Err(Error::Fork {
                    epoch: offered.epoch,
                });
            }
            if offered.time_ms < stored.time_ms {
                return Err(Error::TimeWentBackwards {
                    epoch: offered.epoch,
                });
            }
        }
        Ok(offered)
    }

    fn store(&mut self, signed: &SignedCheckpoint) {
        let newer = self
            .latest
            .as_ref()
            .is_none_or(|s| signed.checkpoint.epoch > s.checkpoint.epoch);
        if newer {
            self.latest = Some(signed.clone());
        }
    }
}

pub(crate) fn label<S: Subject>(subject: &S) -> AkdLabel {
    AkdLabel(subject.label().as_bytes().to_vec())
}

fn lookup_at<S: Subject>(
    directory: &DirectoryPublicKey,
    checkpoint: &Checkpoint,
    subject: &S,
    proof: &LookupProof,
) -> Result<VerifiedRecord<S::Record>> {
    let proof = proof.decode()?;
    // akd_core assumes 1 <= version <= epoch (it asserts on version 0); check first.
    let in_range = |n: u64| (1..=checkpoint.epoch).contains(&n);
    if !in_range(proof.version) || !in_range(proof.epoch) {
        return Err(Error::LookupProof);
    }
    let result = lookup_verify::<TreeConfig>(
        directory.vrf_key(),
        checkpoint.root_hash,
        checkpoint.epoch,
        label(subject),
        proof,
    )
    .map_err(|_| Error::LookupProof)?;
    Ok(VerifiedRecord {
        record: subject.decode(&result.value)?,
        epoch: result.epoch,
        version: result.version,
    })
}

fn history_at<S: Subject>(
    directory: &DirectoryPublicKey,
    checkpoint: &Checkpoint,
    subject: &S,
    proof: &HistoryProof,
) -> Result<VerifiedHistory<S::Record>> {
    let proof = proof.decode()?;
    // akd_core adds to versions and computes marker versions before it bounds them by the
    // epoch; bound them here so nothing can overflow or assert.
    let in_range = |n: u64| (1..=checkpoint.epoch).contains(&n);
    if proof.update_proofs.is_empty()
        || !proof
            .update_proofs
            .iter()
            .all(|u| in_range(u.version) && in_range(u.epoch))
    {
        return Err(Error::HistoryProof);
    }
    let results = key_history_verify::<TreeConfig>(
        directory.vrf_key(),
        checkpoint.root_hash,
        checkpoint.epoch,
        label(subject),
        proof,
        HistoryVerificationParams::Default {
            history_params: HistoryParams::Complete,
        },
    )
    .map_err(|_| Error::HistoryProof)?;
    let versions = results
        .into_iter()
        .map(|r| {
            Ok(VerifiedRecord {
                record: subject.decode(&r.value)?,
                epoch: r.epoch,
                version: r.version,
            })
        })
        .collect::<Result<Vec<_>>>()?;
    Ok(VerifiedHistory { versions })
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use aws_lc_rs::signature::{Ed25519KeyPair, KeyPair as _};

    use super::*;
    use crate::checkpoint::DirectoryKeyId;

    fn setup() -> (Ed25519KeyPair, Verifier) {
        let kp = Ed25519KeyPair::from_seed_unchecked(&[3u8; 32]).unwrap();
        let pk: [u8; 32] = kp.public_key().as_ref().try_into().unwrap();
        let key = DirectoryPublicKey::new(pk, pk).unwrap();
        (kp, Verifier::new(key))
    }

    fn sign(kp: &Ed25519KeyPair, epoch: u64, root: u8, time_ms: i64) -> SignedCheckpoint {
        let pk: [u8; 32] = kp.public_key().as_ref().try_into().unwrap();
        let checkpoint = Checkpoint {
            epoch,
            root_hash: [root; 32],
            time_ms,
        };
        SignedCheckpoint {
            checkpoint,
            signature: kp
                .sign(&checkpoint.signed_bytes())
                .as_ref()
                .try_into()
                .unwrap(),
            key_id: DirectoryKeyId::of(&pk),
        }
    }

    #[test]
    fn state_machine_accepts_forward_and_the_same_checkpoint() {
        let (kp, mut v) = setup();
        v.accept_checkpoint(&sign(&kp, 1, 1, 10)).unwrap();
        v.accept_checkpoint(&sign(&kp, 1, 1, 10)).unwrap();
        v.accept_checkpoint(&sign(&kp, 3, 3, 10)).unwrap();
        assert_eq!(v.latest().unwrap().checkpoint.epoch, 3);
        let resumed = Verifier::resume(v.directory().clone(), v.latest().unwrap().clone());
        assert!(resumed.is_ok());
    }

    #[test]
    fn rollback_fork_and_time_travel_are_refused_and_change_nothing() {
        let (kp, mut v) = setup();
        let newest = sign(&kp, 5, 5, 100);
        v.accept_checkpoint(&newest).unwrap();
        assert!(matches!(
            v.accept_checkpoint(&sign(&kp, 4, 4, 90)),
            Err(Error::Rollback {
                stored: 5,
                offered: 4
            })
        ));
        assert!(matches!(
            v.accept_checkpoint(&sign(&kp, 5, 6, 100)),
            Err(Error::Fork { epoch: 5 })
        ));
        assert!(matches!(
            v.accept_checkpoint(&sign(&kp, 5, 5, 101)),
            Err(Error::Fork { epoch: 5 })
        ));
        assert!(matches!(
            v.accept_checkpoint(&sign(&kp, 6, 6, 99)),
            Err(Error::TimeWentBackwards { epoch: 6 })
        ));
        assert_eq!(v.latest(), Some(&newest));
    }

    #[test]
    fn a_verifier_does_not_resume_from_a_foreign_checkpoint() {
        let (_, v) = setup();
        let other = Ed25519KeyPair::from_seed_unchecked(&[4u8; 32]).unwrap();
        assert!(Verifier::resume(v.directory().clone(), sign(&other, 1, 1, 1)).is_err());
    }
}

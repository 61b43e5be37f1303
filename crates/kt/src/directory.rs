//! The directory: akd's tree of oracle and person records, with a signed checkpoint for every
//! epoch.
//!
//! The tree is akd's `AsyncInMemoryDatabase` (or any `akd::storage::Database`); the
//! checkpoints live in memory next to it. [`Directory::open`] adds persistence: every epoch
//! (its updates and its signed checkpoint) is appended to an [`EpochLog`], and the tree is
//! rebuilt from that log on start, each replayed root checked against its signed checkpoint.

use std::collections::HashSet;
use std::fmt;
use std::sync::atomic::{AtomicBool, Ordering};

use akd::directory::Directory as AkdDirectory;
use akd::ecvrf::{VRFKeyStorage, VrfError};
use akd::errors::{AkdError, StorageError};
use akd::storage::memory::AsyncInMemoryDatabase;
use akd::storage::{Database, StorageManager};
use akd::{AkdLabel, AkdValue, AzksParallelismConfig, HistoryParams};
use aws_lc_rs::signature::{Ed25519KeyPair, KeyPair as _};
use tokio::sync::RwLock;
use zeroize::Zeroizing;

use crate::checkpoint::{
    Checkpoint, DirectoryKeyId, DirectoryPublicKey, SignedCheckpoint, verify_checkpoint,
};
use crate::epoch_log::EpochLog;
use crate::error::{Error, Result};
use crate::proof::{
    AppendOnlyProof, AuditProof, HistoryProof, HistoryResponse, LookupProof, LookupResponse,
};
use crate::record::MAX_RECORD_BYTES;
use crate::subject::{Subject, check_stored};
use crate::verify::{TreeConfig, label};

/// The directory's Ed25519 checkpoint signing key (a 32-byte RFC 8032 seed).
///
/// Zeroized on drop, not `Copy`, not `Serialize`; its `Debug` shows only the key id. The
/// aws-lc-rs key object is rebuilt for each signature and dropped at once (it cannot be
/// zeroized).
pub struct CheckpointSigningKey {
    seed: Zeroizing<[u8; 32]>,
    public: [u8; 32],
}

impl CheckpointSigningKey {
    /// A fresh key from the operating system's random number generator.
    ///
    /// # Errors
    /// [`Error::Rng`] if the generator fails.
    pub fn generate() -> Result<Self> {
        let mut seed = Zeroizing::new([0u8; 32]);
        aws_lc_rs::rand::fill(seed.as_mut()).map_err(|_| Error::Rng)?;
        Self::from_seed(seed)
    }

    /// The key with this seed (as stored by the service in its key file).
    ///
    /// # Errors
    /// [`Error::InvalidKey`] if aws-lc-rs refuses the seed.
    pub fn from_seed(seed: Zeroizing<[u8; 32]>) -> Result<Self> {
        let pair = Ed25519KeyPair::from_seed_unchecked(seed.as_ref())
            .map_err(|_| Error::InvalidKey("Ed25519 seed"))?;
        let public = pair
            .public_key()
            .as_ref()
            .try_into()
            .map_err(|_| Error::InvalidKey("Ed25519 public key length"))?;
        Ok(Self { seed, public })
    }

    /// The public key, for clients' configuration.
    pub fn public_key(&self) -> [u8; 32] {
        self.public
    }

    /// The key id checkpoints name.
    pub fn key_id(&self) -> DirectoryKeyId {
        DirectoryKeyId::of(&self.public)
    }

    /// The secret seed, to write to the service's key file.
    pub fn dangerous_seed(&self) -> &[u8; 32] {
        &self.seed
    }

    fn sign(&self, checkpoint: Checkpoint) -> Result<SignedCheckpoint> {
        let pair = Ed25519KeyPair::from_seed_unchecked(self.seed.as_ref())
            .map_err(|_| Error::InvalidKey("Ed25519 seed"))?;
        let signature = pair
            .sign(&checkpoint.signed_bytes())
            .as_ref()
            .try_into()
            .map_err(|_| Error::Inconsistent("Ed25519 signature length"))?;
        Ok(SignedCheckpoint {
            checkpoint,
            signature,
            key_id: self.key_id(),
        })
    }
}

impl fmt::Debug for CheckpointSigningKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "CheckpointSigningKey({}, ..)", self.key_id())
    }
}

/// The directory's VRF secret key (32 bytes, ECVRF-EDWARDS25519-SHA512-TAI as in akd): it maps
/// a DID to its place in the tree, so that proofs do not reveal other DIDs. akd also derives
/// its value-commitment key from it.
///
/// Zeroized on drop, not `Copy`, not `Serialize`, redacted `Debug`. (akd asks for the key as a
/// plain `Vec` on every use; those copies are not ours to zeroize.)
#[derive(Clone)]
pub struct VrfSecretKey(Zeroizing<[u8; 32]>);

impl VrfSecretKey {
    /// A fresh key from the operating system's random number generator.
    ///
    /// # Errors
    /// [`Error::Rng`] if the generator fails.
    pub fn generate() -> Result<Self> {
        let mut key = Zeroizing::new([0u8; 32]);
        aws_lc_rs::rand::fill(key.as_mut()).map_err(|_| Error::Rng)?;
        Ok(Self(key))
    }

    /// The key with these bytes.
    pub fn from_bytes(key: Zeroizing<[u8; 32]>) -> Self {
        Self(key)
    }

    /// The VRF public key, for clients' configuration.
    ///
    /// # Errors
    /// [`Error::InvalidKey`] if akd refuses the key.
    pub fn public_key(&self) -> Result<[u8; 32]> {
        let private = akd::ecvrf::VRFPrivateKey::try_from(&self.0[..])
            .map_err(|_| Error::InvalidKey("VRF secret key"))?;
        Ok(akd::ecvrf::VRFPublicKey::from(&private).to_bytes())
    }

    /// The secret bytes, to write to the service's key file.
    pub fn dangerous_bytes(&self) -> &[u8; 32] {
        &self.0
    }
}

impl fmt::Debug for VrfSecretKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("VrfSecretKey(..)")
    }
}

#[async_trait::async_trait]
impl VRFKeyStorage for VrfSecretKey {
    async fn retrieve(&self) -> Result<Vec<u8>, VrfError> {
        Ok(self.0.to_vec())
    }
}

/// A key-transparency directory of oracle records (under their DIDs) and person records
/// (under their Matrix user ids).
///
/// Every publish that changes something makes a new epoch and signs its checkpoint; epoch 0
/// (the empty tree) is signed when the directory is created. Publishes are serialized, and a
/// lookup, history or audit proof is always answered together with the checkpoint it was made
/// against.
pub struct Directory<S: Database + 'static = AsyncInMemoryDatabase> {
    akd: AkdDirectory<TreeConfig, S, VrfSecretKey>,
    signing: CheckpointSigningKey,
    public: DirectoryPublicKey,
    /// `checkpoints[e]` is epoch `e`'s; the write lock is held for a whole publish.
    checkpoints: RwLock<Vec<SignedCheckpoint>>,
    /// Where every new epoch is appended (none: in memory only).
    log: Option<EpochLog>,
    /// Set when akd made an epoch that could not be stored: the tree is ahead of the log and
    /// of the checkpoints, so nothing more is published until a restart replays the log.
    poisoned: AtomicBool,
}

impl<S: Database + 'static> fmt::Debug for Directory<S> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Directory")
            .field("key_id", &self.public.key_id())
            .finish_non_exhaustive()
    }
}

impl Directory<AsyncInMemoryDatabase> {
    /// A new, empty directory in memory, its epoch 0 signed at `time_ms`.
    ///
    /// # Errors
    /// As [`Directory::new`].
    pub async fn in_memory(
        signing: CheckpointSigningKey,
        vrf: VrfSecretKey,
        time_ms: i64,
    ) -> Result<Self> {
        let storage = StorageManager::new_no_cache(AsyncInMemoryDatabase::new());
        Self::new(signing, vrf, storage, time_ms).await
    }

    /// The directory kept in `log`: a new log is started with epoch 0 signed at `time_ms`;
    /// a log that holds epochs is replayed into a fresh in-memory tree, epoch by epoch, and
    /// every replayed root hash must equal the root of the signed checkpoint stored with it
    /// (signed by this directory's key). Every later publish is appended to the log before
    /// it is answered.
    ///
    /// # Errors
    /// [`Error::Replay`] if the log was written under another directory key (signing or VRF)
    /// or does not replay to its own signed checkpoints (a row was changed, removed or added);
    /// [`Error::Store`]; those of [`Directory::new`].
    pub async fn open(
        signing: CheckpointSigningKey,
        vrf: VrfSecretKey,
        log: EpochLog,
        time_ms: i64,
    ) -> Result<Self> {
        let public = DirectoryPublicKey::new(signing.public_key(), vrf.public_key()?)?;
        let stored_key = log.directory_key().await?;
        if stored_key.as_ref().is_some_and(|k| *k != public) {
            return Err(Error::Replay {
                epoch: 0,
                what: "the log was written under another directory key",
            });
        }
        let stored = log.load().await?;
        if stored_key.is_none() != stored.is_empty() {
            return Err(Error::Replay {
                epoch: 0,
                what: "the log has epochs without a directory key, or a key without epochs",
            });
        }
        let storage = StorageManager::new_no_cache(AsyncInMemoryDatabase::new());
        let akd = AkdDirectory::new(storage, vrf, AzksParallelismConfig::default())
            .await
            .map_err(Error::Directory)?;
        let mut checkpoints = Vec::with_capacity(stored.len().max(1));
        if stored.is_empty() {
            let genesis = genesis(&akd, &signing, time_ms).await?;
            log.start(&public, &genesis).await?;
            checkpoints.push(genesis);
        }
        for epoch in stored {
            let signed = replay(&akd, &public, checkpoints.last(), epoch).await?;
            checkpoints.push(signed);
        }
        Ok(Self {
            akd,
            signing,
            public,
            checkpoints: RwLock::new(checkpoints),
            log: Some(log),
            poisoned: AtomicBool::new(false),
        })
    }
}

impl<S: Database + 'static> Directory<S> {
    /// A new directory on akd storage that holds no epoch yet; its epoch 0 is signed at
    /// `time_ms` (milliseconds since the Unix epoch).
    ///
    /// # Errors
    /// [`Error::BadRequest`] if the storage already holds epochs (their checkpoints would be
    /// lost: reopening a directory comes with the persistent store), [`Error::InvalidKey`],
    /// [`Error::Directory`].
    pub async fn new(
        signing: CheckpointSigningKey,
        vrf: VrfSecretKey,
        storage: StorageManager<S>,
        time_ms: i64,
    ) -> Result<Self> {
        let public = DirectoryPublicKey::new(signing.public_key(), vrf.public_key()?)?;
        let akd = AkdDirectory::new(storage, vrf, AzksParallelismConfig::default())
            .await
            .map_err(Error::Directory)?;
        let genesis = genesis(&akd, &signing, time_ms).await?;
        Ok(Self {
            akd,
            signing,
            public,
            checkpoints: RwLock::new(vec![genesis]),
            log: None,
            poisoned: AtomicBool::new(false),
        })
    }

    /// What clients and agents are configured with to trust this directory.
    pub fn public_key(&self) -> &DirectoryPublicKey {
        &self.public
    }

    /// Publishes new records (one per label: oracles' DIDs or people's user ids) as one epoch
    /// and signs its checkpoint, dated
    /// `time_ms` (or the previous checkpoint's time if the clock went back). Records equal to
    /// the current ones change nothing; if nothing changes, the latest checkpoint is returned
    /// and no epoch is made.
    ///
    /// Authorizing the publisher (the oracle operator's credential, the person's Matrix
    /// account) is the service's job.
    ///
    /// A directory with a log appends the new epoch to it before answering; if that fails, the
    /// directory refuses every later publish (its tree is ahead of its log) until it is opened
    /// again.
    ///
    /// # Errors
    /// [`Error::BadRequest`] for no updates, a label twice, or a record over
    /// [`MAX_RECORD_BYTES`]; [`Error::Directory`]; [`Error::Store`]; [`Error::Inconsistent`].
    pub async fn publish<L: Subject>(
        &self,
        updates: Vec<(L, L::Record)>,
        time_ms: i64,
    ) -> Result<SignedCheckpoint> {
        if updates.is_empty() {
            return Err(Error::BadRequest("nothing to publish"));
        }
        let mut seen = HashSet::with_capacity(updates.len());
        let mut entries = Vec::with_capacity(updates.len());
        let mut logged = Vec::with_capacity(updates.len());
        for (subject, record) in updates {
            if !seen.insert(subject.clone()) {
                return Err(Error::BadRequest("a label appears twice in one publish"));
            }
            let value = L::encode(&record);
            if value.len() > MAX_RECORD_BYTES {
                return Err(Error::BadRequest(
                    "a record is larger than MAX_RECORD_BYTES",
                ));
            }
            // Only what a verifier decodes back to the same record is committed to.
            if subject.decode(&value).ok().as_ref() != Some(&record) {
                return Err(Error::BadRequest(
                    "a record does not survive its own encoding (not a valid record for its label)",
                ));
            }
            entries.push((label(&subject), AkdValue(value.clone())));
            logged.push((subject.label().to_owned(), value));
        }

        let mut checkpoints = self.checkpoints.write().await;
        if self.poisoned.load(Ordering::Acquire) {
            return Err(Error::Inconsistent(
                "an epoch could not be stored; reopen the directory to replay its log",
            ));
        }
        let last = *checkpoints
            .last()
            .map(|c| &c.checkpoint)
            .ok_or(Error::Inconsistent("no checkpoint"))?;
        let epoch_hash = self.akd.publish(entries).await.map_err(Error::Directory)?;
        if epoch_hash.epoch() == last.epoch {
            if epoch_hash.hash() != last.root_hash {
                return Err(Error::Inconsistent("root changed without a new epoch"));
            }
            return checkpoints
                .last()
                .cloned()
                .ok_or(Error::Inconsistent("no checkpoint"));
        }
        if Some(epoch_hash.epoch()) != last.epoch.checked_add(1) {
            return Err(Error::Inconsistent("publish skipped an epoch"));
        }
        let signed = self.signing.sign(Checkpoint {
            epoch: epoch_hash.epoch(),
            root_hash: epoch_hash.hash(),
            time_ms: time_ms.max(last.time_ms),
        })?;
        if let Some(log) = &self.log
            && let Err(e) = log.append(&signed, &logged).await
        {
            self.poisoned.store(true, Ordering::Release);
            return Err(e);
        }
        checkpoints.push(signed.clone());
        Ok(signed)
    }

    /// The newest signed checkpoint.
    pub async fn latest_checkpoint(&self) -> Result<SignedCheckpoint> {
        self.checkpoints
            .read()
            .await
            .last()
            .cloned()
            .ok_or(Error::Inconsistent("no checkpoint"))
    }

    /// The signed checkpoint of `epoch`, if the directory has reached it.
    pub async fn checkpoint(&self, epoch: u64) -> Option<SignedCheckpoint> {
        let index = usize::try_from(epoch).ok()?;
        self.checkpoints.read().await.get(index).cloned()
    }

    /// The latest record of `subject`, with its proof and the checkpoint it is proved against.
    ///
    /// # Errors
    /// [`Error::NotFound`] if the label was never published; [`Error::Directory`];
    /// [`Error::Inconsistent`].
    pub async fn lookup<L: Subject>(&self, subject: &L) -> Result<LookupResponse> {
        let checkpoints = self.checkpoints.read().await;
        let (proof, epoch_hash) = self.akd.lookup(label(subject)).await.map_err(not_found)?;
        Ok(LookupResponse {
            checkpoint: matching(&checkpoints, epoch_hash.epoch(), epoch_hash.hash())?,
            proof: LookupProof::encode(&proof)?,
        })
    }

    /// Every record `subject` ever had, with the proof and the checkpoint it is proved against.
    ///
    /// # Errors
    /// As [`Directory::lookup`].
    pub async fn history<L: Subject>(&self, subject: &L) -> Result<HistoryResponse> {
        let checkpoints = self.checkpoints.read().await;
        let (proof, epoch_hash) = self
            .akd
            .key_history(&label(subject), HistoryParams::Complete)
            .await
            .map_err(not_found)?;
        Ok(HistoryResponse {
            checkpoint: matching(&checkpoints, epoch_hash.epoch(), epoch_hash.hash())?,
            proof: HistoryProof::encode(&proof)?,
        })
    }

    /// The audit proof from epoch `from` to epoch `to`: their checkpoints and everything
    /// between, and akd's append-only proof.
    ///
    /// # Errors
    /// [`Error::BadRequest`] unless `from < to <= latest epoch`; [`Error::Directory`].
    pub async fn audit_proof(&self, from: u64, to: u64) -> Result<AuditProof> {
        let checkpoints = self.checkpoints.read().await;
        let range = usize::try_from(from)
            .ok()
            .zip(usize::try_from(to).ok())
            .filter(|(f, t)| f < t)
            .and_then(|(f, t)| checkpoints.get(f..=t))
            .ok_or(Error::BadRequest(
                "audit range must satisfy from < to <= latest epoch",
            ))?
            .to_vec();
        let proof = self.akd.audit(from, to).await.map_err(Error::Directory)?;
        Ok(AuditProof {
            checkpoints: range,
            proof: AppendOnlyProof::encode(&proof)?,
        })
    }
}

/// Signs epoch 0 of a tree that must hold no epoch yet.
async fn genesis<S: Database + 'static>(
    akd: &AkdDirectory<TreeConfig, S, VrfSecretKey>,
    signing: &CheckpointSigningKey,
    time_ms: i64,
) -> Result<SignedCheckpoint> {
    let epoch_hash = akd.get_epoch_hash().await.map_err(Error::Directory)?;
    if epoch_hash.epoch() != 0 {
        return Err(Error::BadRequest(
            "the storage already holds epochs whose checkpoints are not known",
        ));
    }
    signing.sign(Checkpoint {
        epoch: 0,
        root_hash: epoch_hash.hash(),
        time_ms,
    })
}

/// Replays one stored epoch onto the tree (which holds every epoch before it) and checks the
/// result against the stored checkpoint: signed by this directory, the next epoch, dated no
/// earlier than `previous`, with exactly the replayed root hash.
async fn replay(
    akd: &AkdDirectory<TreeConfig, AsyncInMemoryDatabase, VrfSecretKey>,
    public: &DirectoryPublicKey,
    previous: Option<&SignedCheckpoint>,
    stored: crate::epoch_log::StoredEpoch,
) -> Result<SignedCheckpoint> {
    let epoch = stored.checkpoint.checkpoint.epoch;
    let bad = |what| Error::Replay { epoch, what };
    let checkpoint = verify_checkpoint(&stored.checkpoint, public)
        .map_err(|_| bad("the stored checkpoint is not signed by this directory"))?;
    let expected = previous.map_or(Some(0), |p| p.checkpoint.epoch.checked_add(1));
    if Some(epoch) != expected {
        return Err(bad("the stored epochs are not contiguous"));
    }
    if previous.is_some_and(|p| checkpoint.time_ms < p.checkpoint.time_ms) {
        return Err(bad("a stored checkpoint is dated before its predecessor"));
    }
    let epoch_hash = if epoch == 0 {
        if !stored.updates.is_empty() {
            return Err(bad("epoch 0 holds updates"));
        }
        akd.get_epoch_hash().await.map_err(Error::Directory)?
    } else {
        let mut seen = HashSet::with_capacity(stored.updates.len());
        let mut entries = Vec::with_capacity(stored.updates.len());
        for (stored_label, value) in stored.updates {
            // Only what `publish` accepts can have been logged.
            check_stored(&stored_label, &value)
                .map_err(|_| bad("a stored label or record is malformed"))?;
            let akd_label = AkdLabel(stored_label.as_bytes().to_vec());
            if !seen.insert(stored_label) {
                return Err(bad("a label appears twice in a stored epoch"));
            }
            entries.push((akd_label, AkdValue(value)));
        }
        if entries.is_empty() {
            return Err(bad("a stored epoch holds no update"));
        }
        akd.publish(entries).await.map_err(Error::Directory)?
    };
    if epoch_hash.epoch() != epoch || epoch_hash.hash() != checkpoint.root_hash {
        return Err(bad(
            "the replayed root hash differs from the stored signed checkpoint's",
        ));
    }
    Ok(stored.checkpoint)
}

fn not_found(e: AkdError) -> Error {
    match e {
        AkdError::Storage(StorageError::NotFound(_)) => Error::NotFound,
        other => Error::Directory(other),
    }
}

/// The stored checkpoint of the epoch akd answered at, which must have akd's root hash.
fn matching(
    checkpoints: &[SignedCheckpoint],
    epoch: u64,
    root: [u8; 32],
) -> Result<SignedCheckpoint> {
    usize::try_from(epoch)
        .ok()
        .and_then(|e| checkpoints.get(e))
        .filter(|c| c.checkpoint.root_hash == root)
        .cloned()
        .ok_or(Error::Inconsistent(
            "akd answered at an epoch with no matching checkpoint",
        ))
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    #[test]
    fn secret_keys_do_not_print() {
        let signing = CheckpointSigningKey::from_seed(Zeroizing::new([9u8; 32])).unwrap();
        let shown = format!("{signing:?}");
        assert!(shown.starts_with("CheckpointSigningKey("), "{shown}");
        assert!(!shown.contains(&hex::encode([9u8; 32])));
        assert!(!shown.contains("9, 9"));
        let vrf = VrfSecretKey::from_bytes(Zeroizing::new([9u8; 32]));
        assert_eq!(format!("{vrf:?}"), "VrfSecretKey(..)");
    }
}

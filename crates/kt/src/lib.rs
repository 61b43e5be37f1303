//! Key transparency for oracle-calls: a verifiable directory that maps an oracle's DID to its
//! published keys, bot and agent ([`OracleRecord`]), and a person's Matrix user id to the
//! devices they call from ([`PersonRecord`]), so that a client need not trust the oracle's
//! server or the homeserver for them.
//!
//! The directory is Meta's AKD (`akd` 0.13, WhatsApp v1 tree configuration): a VRF hides which
//! DIDs are in the tree, a Merkle tree commits to every version of every record, and each
//! epoch's root hash is signed with the directory's Ed25519 key as a [`SignedCheckpoint`]
//! (akd itself signs nothing).
//!
//! - **Verify side** (default features, sans-IO, `akd_core` only): [`verify_checkpoint`],
//!   [`verify_lookup`], [`verify_history`], and the [`Verifier`] that remembers the newest
//!   checkpoint and refuses rollbacks and forks. Clients and agents use this.
//! - **Directory side** (feature `directory`): `Directory` (publish, lookup, history and audit
//!   proofs, signed checkpoints; akd's tree in memory, persisted as an `EpochLog` of every
//!   epoch's updates and checkpoint in SQLite or PostgreSQL and replayed on start) and the
//!   auditor's `audit`.
//!
//! Proofs travel as akd's protobuf messages, base64url in JSON ([`LookupProof`] and friends).
//! This crate links no key-opening code (never `oracle-calls-crypto`).
//!
//! ```
//! use oracle_calls_kt::{DirectoryPublicKey, Error, LookupResponse, Verifier};
//! use oracle_calls_proto::Did;
//!
//! fn check(directory: DirectoryPublicKey, body: &[u8]) -> Result<(), Error> {
//!     let mut verifier = Verifier::new(directory); // or Verifier::resume(key, stored)
//!     let response = LookupResponse::from_json(body)?;
//!     let did = Did::parse("did:ixo:oracle1").map_err(|_| Error::Malformed { what: "DID" })?;
//!     let verified = verifier.verify_lookup(&response.checkpoint, &did, &response.proof)?;
//!     println!("{} keys at version {}", verified.record.keys.len(), verified.version);
//!     // persist verifier.latest() for the rollback check next time
//!     Ok(())
//! }
//! ```
#![deny(missing_docs)]

#[cfg(feature = "directory")]
mod audit;
mod checkpoint;
#[cfg(feature = "directory")]
mod directory;
mod encoding;
#[cfg(feature = "directory")]
mod epoch_log;
mod error;
mod person;
mod proof;
mod record;
mod subject;
mod verify;

#[cfg(feature = "directory")]
pub use audit::audit;
pub use checkpoint::{
    CHECKPOINT_CONTEXT, Checkpoint, DirectoryKeyId, DirectoryPublicKey, SignedCheckpoint,
    verify_checkpoint,
};
#[cfg(feature = "directory")]
pub use directory::{CheckpointSigningKey, Directory, VrfSecretKey};
#[cfg(feature = "directory")]
pub use epoch_log::EpochLog;
pub use error::{Error, Result};
pub use person::{MAX_PERSON_DEVICES, MAX_USER_ID_LEN, PersonDevice, PersonId, PersonRecord};
pub use proof::{
    AppendOnlyProof, AuditProof, HistoryProof, HistoryResponse, LookupProof, LookupResponse,
    MAX_APPEND_ONLY_PROOF_BYTES, MAX_HISTORY_PROOF_BYTES, MAX_LOOKUP_PROOF_BYTES,
};
pub use record::{MAX_RECORD_BYTES, OracleRecord};
pub use subject::Subject;
pub use verify::{VerifiedHistory, VerifiedRecord, Verifier, verify_history, verify_lookup};

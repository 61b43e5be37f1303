//! The crate's one error type.

/// Everything that can go wrong in key transparency.
///
/// The variants say whose fault it was: the directory misbehaved or sent garbage (most of
/// them), the caller misused the API ([`Error::InvalidKey`]), or the directory's own machinery
/// failed ([`Error::Directory`]). Proof failures carry no detail on purpose: a client logs
/// "the lookup proof did not verify" and refuses the record; the detail helps nobody but an
/// attacker probing the verifier.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// A checkpoint names a signing key other than the directory key this verifier was
    /// configured with.
    #[error("checkpoint signed by an unknown directory key (key id {key_id})")]
    UnknownKey {
        /// The key id the checkpoint names.
        key_id: String,
    },
    /// A checkpoint's Ed25519 signature does not verify under the configured directory key.
    #[error("checkpoint signature does not verify")]
    BadSignature,
    /// The directory offered a checkpoint older than one this verifier already accepted.
    #[error("rollback: checkpoint for epoch {offered} offered after epoch {stored} was seen")]
    Rollback {
        /// The newest epoch already accepted.
        stored: u64,
        /// The epoch offered now.
        offered: u64,
    },
    /// Two different checkpoints, both validly signed, for the same epoch: the directory
    /// equivocated (showed different trees to different people).
    #[error("fork: two different signed checkpoints for epoch {epoch}")]
    Fork {
        /// The epoch with two checkpoints.
        epoch: u64,
    },
    /// A newer checkpoint carries an earlier time than an older one.
    #[error("checkpoint for epoch {epoch} is dated before an earlier epoch's checkpoint")]
    TimeWentBackwards {
        /// The epoch of the offending checkpoint.
        epoch: u64,
    },
    /// A JSON body, or the base64/protobuf inside it, is not well-formed.
    #[error("malformed {what}")]
    Malformed {
        /// What could not be parsed.
        what: &'static str,
    },
    /// A proof is larger than the verifier accepts for its kind.
    #[error("{what} is too large ({len} bytes, at most {max})")]
    TooLarge {
        /// The kind of proof.
        what: &'static str,
        /// Its length.
        len: usize,
        /// The limit.
        max: usize,
    },
    /// The AKD value in a proof is not a well-formed record of its label's kind
    /// (`OracleRecord` under a DID, `PersonRecord` under a Matrix user id).
    #[error("malformed record: {0}")]
    MalformedRecord(&'static str),
    /// A lookup proof (VRF, membership and freshness proofs) does not verify against the
    /// signed root hash.
    #[error("lookup proof does not verify")]
    LookupProof,
    /// A key-history proof does not verify against the signed root hash.
    #[error("key-history proof does not verify")]
    HistoryProof,
    /// The verified history does not contain the record the caller pinned at the version it
    /// pinned: the directory rewrote a value it once served.
    #[error("the verified history does not contain the pinned record at version {version}")]
    HistoryRewritten {
        /// The pinned version.
        version: u64,
    },
    /// An audit (append-only) proof does not verify between the two checkpoints, or its
    /// checkpoints are not a contiguous, validly signed run from one to the other.
    #[error("audit proof does not verify: {0}")]
    Audit(&'static str),
    /// A key given to the API is not a valid key of its kind (caller error).
    #[error("invalid key: {0}")]
    InvalidKey(&'static str),
    /// akd's storage or tree operation failed (directory side only).
    #[cfg(feature = "directory")]
    #[error("directory operation failed")]
    Directory(#[source] akd::errors::AkdError),
    /// The directory has never published a record for this DID.
    #[cfg(feature = "directory")]
    #[error("no record under this label (DID or user id)")]
    NotFound,
    /// The caller asked the directory for something it cannot give (an epoch range it does
    /// not have, two updates for one DID, ...).
    #[cfg(feature = "directory")]
    #[error("bad directory request: {0}")]
    BadRequest(&'static str),
    /// The directory found its own state inconsistent (a bug, or storage changed under it).
    #[cfg(feature = "directory")]
    #[error("directory state is inconsistent: {0}")]
    Inconsistent(&'static str),
    /// The directory's persistent log failed (directory side only).
    #[cfg(feature = "directory")]
    #[error("the directory's store failed")]
    Store(#[source] sqlx::Error),
    /// The directory's persistent log does not replay to the signed checkpoints stored in it,
    /// or was written under another directory key: the log was tampered with or belongs to
    /// another directory. The directory refuses to start.
    #[cfg(feature = "directory")]
    #[error("the stored log does not replay at epoch {epoch}: {what}")]
    Replay {
        /// The first epoch that does not replay.
        epoch: u64,
        /// What is wrong with it.
        what: &'static str,
    },
    /// The operating system's random number generator failed.
    #[cfg(feature = "directory")]
    #[error("the system random number generator failed")]
    Rng,
}

/// `Result` with this crate's [`Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;

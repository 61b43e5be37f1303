//! Proofs on the wire: akd's own protobuf messages, carried as unpadded base64url in JSON.
//!
//! We use akd_core's `protobuf` encoding (`akd_core::proto`, the messages of akd_core 0.13's
//! `types.proto`) rather than its serde form: it is the encoding akd itself publishes audit
//! proofs in, it is compact (about half the size of the serde form's hex), and its
//! conversions check every length before building the proof types. Each proof kind has a
//! size limit, checked before parsing.

use std::fmt;

use akd_core::proto::specs::types as pb;
use protobuf::Message;
use serde::{Deserialize, Serialize};

use crate::checkpoint::SignedCheckpoint;
use crate::encoding::b64_vec;
use crate::error::{Error, Result};

/// The largest lookup proof a verifier parses (a full-depth proof is about 60 KB; a directory
/// of a thousand oracles gives about 2.4 KB).
pub const MAX_LOOKUP_PROOF_BYTES: usize = 128 * 1024;
/// The largest key-history proof a verifier parses.
pub const MAX_HISTORY_PROOF_BYTES: usize = 4 * 1024 * 1024;
/// The largest append-only (audit) proof an auditor parses.
pub const MAX_APPEND_ONLY_PROOF_BYTES: usize = 256 * 1024 * 1024;

macro_rules! proof_type {
    ($(#[$doc:meta])* $name:ident, $core:ty, $pb:ty, $max:expr, $what:literal) => {
        $(#[$doc])*
        #[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
        #[serde(transparent)]
        pub struct $name(#[serde(with = "b64_vec")] Vec<u8>);

        impl $name {
            /// Wraps the protobuf bytes of a proof (checked only when verified).
            pub fn from_bytes(bytes: Vec<u8>) -> Self {
                Self(bytes)
            }

            /// The protobuf bytes.
            pub fn as_bytes(&self) -> &[u8] {
                &self.0
            }

            /// Parses the protobuf message into akd's proof type.
            // The append-only proof is parsed by the auditor only (feature `directory`).
            #[cfg_attr(not(feature = "directory"), allow(dead_code))]
            pub(crate) fn decode(&self) -> Result<$core> {
                if self.0.len() > $max {
                    return Err(Error::TooLarge {
                        what: $what,
                        len: self.0.len(),
                        max: $max,
                    });
                }
                let message = <$pb>::parse_from_bytes(&self.0)
                    .map_err(|_| Error::Malformed { what: $what })?;
                <$core>::try_from(&message).map_err(|_| Error::Malformed { what: $what })
            }

            /// Encodes akd's proof type as its protobuf message.
            #[cfg(feature = "directory")]
            pub(crate) fn encode(proof: &$core) -> Result<Self> {
                <$pb>::from(proof)
                    .write_to_bytes()
                    .map(Self)
                    .map_err(|_| Error::Inconsistent("a proof did not encode"))
            }
        }

        impl fmt::Debug for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                write!(f, concat!(stringify!($name), "({} bytes)"), self.0.len())
            }
        }
    };
}

proof_type!(
    /// A lookup proof for one DID at one epoch: the VRF proofs and Merkle paths that the
    /// label's latest version exists with the given value and that no newer version does.
    /// Bytes: akd_core's `LookupProof` protobuf message. JSON: unpadded base64url.
    LookupProof,
    akd_core::LookupProof,
    pb::LookupProof,
    MAX_LOOKUP_PROOF_BYTES,
    "lookup proof"
);

proof_type!(
    /// A key-history proof for one DID at one epoch: every version ever published, with
    /// proofs that each was in the tree and that no later version is hidden.
    /// Bytes: akd_core's `HistoryProof` protobuf message. JSON: unpadded base64url.
    HistoryProof,
    akd_core::HistoryProof,
    pb::HistoryProof,
    MAX_HISTORY_PROOF_BYTES,
    "key-history proof"
);

proof_type!(
    /// An append-only proof over a run of epochs: for each epoch, the leaves it inserted and
    /// the subtrees it left unchanged. Bytes: akd_core's `AppendOnlyProof` protobuf message.
    /// JSON: unpadded base64url.
    AppendOnlyProof,
    akd_core::AppendOnlyProof,
    pb::AppendOnlyProof,
    MAX_APPEND_ONLY_PROOF_BYTES,
    "append-only proof"
);

/// A directory's answer to "what is the record of this DID": the latest signed checkpoint and
/// a lookup proof against its root hash.
///
/// JSON: `{"checkpoint": <SignedCheckpoint>, "proof": "<base64url>"}`.
#[derive(Clone, PartialEq, Eq, Debug, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct LookupResponse {
    /// The checkpoint the proof is against.
    pub checkpoint: SignedCheckpoint,
    /// The lookup proof.
    pub proof: LookupProof,
}

/// A directory's answer to "every value this DID ever had".
///
/// JSON: `{"checkpoint": <SignedCheckpoint>, "proof": "<base64url>"}`.
#[derive(Clone, PartialEq, Eq, Debug, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct HistoryResponse {
    /// The checkpoint the proof is against.
    pub checkpoint: SignedCheckpoint,
    /// The key-history proof.
    pub proof: HistoryProof,
}

/// What an auditor checks between two epochs: every signed checkpoint from the first to the
/// last, in order, and the append-only proof that each epoch's tree extends the one before.
///
/// JSON: `{"checkpoints": [<SignedCheckpoint>, …], "proof": "<base64url>"}`.
#[derive(Clone, PartialEq, Eq, Debug, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct AuditProof {
    /// The signed checkpoints of epochs `from..=to`.
    pub checkpoints: Vec<SignedCheckpoint>,
    /// The append-only proof from `from` to `to`.
    pub proof: AppendOnlyProof,
}

macro_rules! from_json {
    ($name:ident, $what:literal) => {
        impl $name {
            /// Parses the JSON body.
            ///
            /// # Errors
            /// [`Error::Malformed`] if it is not this type's JSON.
            pub fn from_json(bytes: &[u8]) -> Result<Self> {
                serde_json::from_slice(bytes).map_err(|_| Error::Malformed { what: $what })
            }
        }
    };
}

from_json!(LookupResponse, "lookup response");
from_json!(HistoryResponse, "key-history response");
from_json!(AuditProof, "audit proof");

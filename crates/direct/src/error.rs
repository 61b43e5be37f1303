//! Errors. Each says whose fault it was: the peer sent something malformed ([`SignalError`]),
//! the binding did not hold ([`BindingError`], detail-free where crypto failed), or the
//! application called the state machine at the wrong moment ([`CallError`]).

/// Any error of this crate.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// A call event's content does not parse.
    #[error(transparent)]
    Signal(#[from] SignalError),
    /// The per-call binding could not be made or did not verify.
    #[error(transparent)]
    Binding(#[from] BindingError),
    /// The call state machine was asked for something its state does not allow.
    #[error(transparent)]
    Call(#[from] CallError),
}

/// Why a call event's content was refused (the peer's fault). Field names are the JSON
/// names, so a message says exactly what was wrong on the wire.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum SignalError {
    /// The event type is not one of the call events this crate reads.
    #[error("`{0}` is not a call event type")]
    UnknownEventType(String),
    /// The content (or a nested value that must be an object) is not a JSON object.
    #[error("`{field}` is not a JSON object")]
    NotAnObject {
        /// Where: `content` for the whole content.
        field: &'static str,
    },
    /// A required field is absent.
    #[error("required field `{0}` is missing")]
    MissingField(&'static str),
    /// A field has the wrong JSON type.
    #[error("field `{field}` must be {expected}")]
    WrongType {
        /// The field.
        field: &'static str,
        /// What it must be, in words.
        expected: &'static str,
    },
    /// `version` is neither a string nor an integer.
    #[error("field `version` must be a string (or the integer 0 of the old protocol)")]
    BadVersionType,
    /// `call_id`, `party_id` or `selected_party_id` is not a valid identifier.
    #[error("field `{0}` is not a valid identifier")]
    BadIdentifier(&'static str),
    /// A session description has the wrong `type` (an offer where an answer belongs…).
    #[error("field `{field}` must have type `{expected}`")]
    WrongSdpType {
        /// The description's field (`offer`, `answer`, `description`).
        field: &'static str,
        /// The type it must have.
        expected: &'static str,
    },
    /// A candidate that is not end-of-candidates names neither `sdpMid` nor `sdpMLineIndex`.
    #[error("candidate {index} has neither `sdpMid` nor `sdpMLineIndex`")]
    CandidateWithoutMid {
        /// Its position in `candidates`.
        index: usize,
    },
    /// The `org.oraclecalls.direct.v1` extension object is malformed.
    #[error("extension `org.oraclecalls.direct.v1`: {0}")]
    Extension(#[from] ExtensionError),
}

/// Why the `org.oraclecalls.direct.v1` extension object was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum ExtensionError {
    /// `v` is not 1.
    #[error("version `v` must be 1")]
    UnsupportedVersion,
    /// A field is absent.
    #[error("required field `{0}` is missing")]
    MissingField(&'static str),
    /// A field has the wrong JSON type.
    #[error("field `{0}` must be a string")]
    WrongType(&'static str),
    /// A field is not base64url without padding (padding and stray bits are refused).
    #[error("field `{0}` is not base64url without padding")]
    BadBase64(&'static str),
    /// A field decodes to the wrong number of bytes.
    #[error("field `{field}` must decode to {expected} bytes, not {actual}")]
    WrongLength {
        /// The field (`dh` or `nonce`).
        field: &'static str,
        /// Bytes it must have.
        expected: usize,
        /// Bytes it had.
        actual: usize,
    },
    /// `dh` is 65 bytes but not an uncompressed P-256 point on the curve (or the identity).
    #[error("field `dh` is not a valid uncompressed P-256 public key")]
    InvalidPublicKey,
}

/// Why the per-call binding could not be made or did not verify.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum BindingError {
    /// The SDP carries no `a=fingerprint` line.
    #[error("the SDP has no a=fingerprint line")]
    MissingFingerprint,
    /// The SDP's fingerprint uses another hash function than sha-256.
    #[error("the SDP's fingerprint uses `{0}`; only sha-256 is accepted")]
    UnsupportedFingerprintHash(String),
    /// A sha-256 fingerprint is not 32 colon-separated hex bytes.
    #[error("the SDP's sha-256 fingerprint is malformed")]
    MalformedFingerprint,
    /// The SDP carries different sha-256 fingerprints (on different m-lines).
    #[error("the SDP carries conflicting fingerprints")]
    ConflictingFingerprints,
    /// An input to the key derivation is longer than its 2-byte length prefix allows.
    #[error("`{0}` is longer than 65535 bytes")]
    FieldTooLong(&'static str),
    /// A public key is not a valid P-256 point.
    #[error("the peer's ephemeral public key is not a valid P-256 point")]
    InvalidPublicKey,
    /// The Ed25519 identity key of a party is not known, so the binding cannot name it.
    #[error("the peer's Ed25519 identity key is unknown")]
    MissingIdentityKey,
    /// The peer's key confirmation did not verify. Detail-free on purpose.
    #[error("the peer's key confirmation is wrong")]
    ConfirmationMismatch,
    /// The peer's key confirmation is not 32 bytes of base64url.
    #[error("the peer's key confirmation is malformed")]
    MalformedConfirmation,
}

/// The application asked the state machine for something its state does not allow (the
/// caller's fault; nothing was sent).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum CallError {
    /// Placing a call while another one is in progress.
    #[error("a call is already in progress")]
    Busy,
    /// The operation needs a call in another state (e.g. answering when nothing rings).
    #[error("`{operation}` is not possible now (state: {state})")]
    WrongState {
        /// What was asked.
        operation: &'static str,
        /// The state it was asked in.
        state: &'static str,
    },
    /// A call id we generated or were given is not a valid identifier.
    #[error("invalid identifier for `{0}`")]
    BadIdentifier(&'static str),
    /// Our own description could not be bound (e.g. our SDP lacks a sha-256 fingerprint).
    #[error("our own description cannot be bound: {0}")]
    Binding(BindingError),
}

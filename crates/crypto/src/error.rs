//! Errors. Each says whose fault it was; crypto failures are deliberately detail-free.

use oracle_calls_proto::KeyScheme;

use crate::{KeyId, PrekeyId};

/// Any error of this crate.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// A key envelope could not be sealed or opened.
    #[error(transparent)]
    Envelope(#[from] EnvelopeError),
    /// An oracle key could not be generated, loaded or used.
    #[error(transparent)]
    Key(#[from] KeyError),
    /// A media frame or data packet could not be encrypted or decrypted.
    #[error(transparent)]
    Frame(#[from] FrameError),
    /// A signed prekey, prekey id or prekey signing key was refused.
    #[error(transparent)]
    Prekey(#[from] PrekeyError),
}

/// Why an envelope was refused. The structural variants describe the text; the crypto
/// variants say only what can be said without helping an attacker.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum EnvelopeError {
    /// `vN.` with N other than 1 and 2.
    #[error("envelope version is not supported (expected `v1.` or `v2.`)")]
    UnknownVersion,
    /// `vN.<scheme>.` names no scheme we know.
    #[error("envelope scheme is not supported")]
    UnknownScheme,
    /// The text is not `v1.<scheme>.<base64url>`, `v2.<scheme>.<base64url>` nor legacy
    /// base58; or the inner envelope of a `v2.` envelope is not a `v1.` envelope of the outer
    /// scheme.
    #[error("envelope is malformed: {0}")]
    Malformed(&'static str),
    /// The base64url (or base58) payload does not decode.
    #[error("envelope payload is not valid {0}")]
    Encoding(&'static str),
    /// The decoded body has the wrong length for its scheme.
    #[error("envelope body has the wrong length for its scheme")]
    BadLength,
    /// The envelope is for another scheme than the key offered to open it.
    #[error("envelope is sealed with {envelope}, but the key is {key}")]
    SchemeMismatch {
        /// The envelope's scheme.
        envelope: KeyScheme,
        /// The key's scheme.
        key: KeyScheme,
    },
    /// The envelope names another recipient key.
    #[error("envelope is sealed to key {envelope}, not to this key ({ours})")]
    WrongKey {
        /// Key id in the envelope.
        envelope: KeyId,
        /// Key id of the key offered.
        ours: KeyId,
    },
    /// The envelope was sealed for another call (session, room, user, oracle or call type).
    #[error("envelope is bound to a different call context")]
    ContextMismatch,
    /// Authentication failed: the envelope was altered, or sealed to another key.
    #[error("envelope could not be opened")]
    DecryptionFailed,
    /// [`crate::open_legacy`] was given a `vN.` envelope: those are bound to a call and open
    /// only with its context ([`crate::open`]).
    #[error("envelope is not a legacy ixo envelope; open it with its call context")]
    NotLegacy,
    /// Sealing failed (the public key is unusable).
    #[error("envelope could not be sealed")]
    SealFailed,
    /// [`crate::open`] was given a `v2.` envelope: its outer layer is sealed to a prekey and
    /// must be opened first with [`crate::open_prekey_layer`] (by the prekey's holder).
    #[error("envelope is sealed to a prekey: open its prekey layer first")]
    PrekeyLayer,
    /// [`crate::open_prekey_layer`] was given a `v1.` or legacy envelope: it has no prekey
    /// layer and opens with the long-term key alone ([`crate::open`]).
    #[error("envelope is not sealed to a prekey: open it with the long-term key")]
    NoPrekeyLayer,
    /// The `v2.` envelope names another prekey than the one offered to open it.
    #[error("envelope is sealed to prekey {envelope}, not to this prekey ({ours})")]
    WrongPrekey {
        /// Prekey id in the envelope.
        envelope: PrekeyId,
        /// Prekey id of the prekey offered.
        ours: PrekeyId,
    },
}

/// Why a signed prekey, a prekey id or a prekey signing key was refused. `field` is the JSON
/// name of the offending value (`prekeyId`, `publicKey`, `signature`, `prekeySigningKey`).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum PrekeyError {
    /// Not base64url without padding (or, for a prekey id file name, not lower-case hex).
    #[error("{field} is not valid {encoding}")]
    Encoding {
        /// The field.
        field: &'static str,
        /// The encoding it should have had.
        encoding: &'static str,
    },
    /// Decodes to the wrong number of bytes.
    #[error("{field} decodes to {len} bytes, expected {expected}")]
    BadLength {
        /// The field.
        field: &'static str,
        /// Its decoded length.
        len: usize,
        /// The length it must have.
        expected: usize,
    },
    /// The prekey signing key is not a usable Ed25519 public key (not a curve point, or of
    /// small order).
    #[error("prekey signing key is not a valid Ed25519 public key")]
    InvalidKey,
    /// The signature does not verify under the oracle's prekey signing key for this oracle.
    #[error("prekey signature is not valid for this oracle's prekey signing key")]
    BadSignature,
}

/// Why an oracle key was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum KeyError {
    /// Not a PKCS#8 `PRIVATE KEY` PEM document.
    #[error("key is not a PKCS#8 PEM private key: {0}")]
    Pem(&'static str),
    /// The key's algorithm is not one of the supported schemes.
    #[error("key algorithm is not supported (P-256, X25519, secp256k1 or RSA)")]
    UnsupportedAlgorithm,
    /// The key bytes are not a valid key of its algorithm.
    #[error("key is invalid for its algorithm")]
    Invalid,
    /// RSA keys must be at least 2048 bits.
    #[error("RSA key has {bits} bits; at least 2048 are required")]
    RsaTooSmall {
        /// The key's size.
        bits: usize,
    },
    /// Key generation failed.
    #[error("key generation failed")]
    Generation,
}

/// Why a frame or data packet was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum FrameError {
    /// Shorter than its clear header plus tag and trailer.
    #[error("frame is too short to be encrypted ({len} bytes)")]
    TooShort {
        /// The frame's length.
        len: usize,
    },
    /// The trailer's IV length byte is not 12.
    #[error("frame IV length is {0}, expected 12")]
    BadIvLength(u8),
    /// The key index is outside the keyring.
    #[error("frame key index {0} is outside the keyring")]
    KeyIndexOutOfRange(u8),
    /// No key is set at that index.
    #[error("no key at index {0}")]
    MissingKey(u8),
    /// The key at that index was marked invalid after too many failures; the frame was dropped
    /// without trying.
    #[error("key at index {0} is marked invalid after repeated failures")]
    InvalidKey(u8),
    /// Authentication failed (wrong key, or altered frame).
    #[error("frame could not be decrypted with key index {0}")]
    DecryptionFailed(u8),
    /// The sender's nonce counter is exhausted; set a new key.
    #[error("nonce space for this key is exhausted")]
    NonceExhausted,
    /// Encryption failed.
    #[error("frame could not be encrypted")]
    EncryptionFailed,
    /// A keyring option is out of range.
    #[error("keyring option out of range: {0}")]
    BadOption(&'static str),
}

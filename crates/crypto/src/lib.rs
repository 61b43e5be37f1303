//! Sans-IO call cryptography for oracle-calls.
//!
//! - [`CallKey`]: the per-call secret, made on the user's device, zeroized on drop.
//! - [`OracleKeyPair`] / [`OraclePublicKey`]: the oracle's long-term key in one of four
//!   [`KeyScheme`]s, stored as PKCS#8 PEM, identified by a [`KeyId`].
//! - [`seal`] / [`open`]: key envelopes (`v1.<scheme>.<base64url>`) that wrap a call key to an
//!   oracle public key and bind it to the call's [`CallContext`]; [`recipient`] reads which key
//!   an envelope is for; [`open_legacy`] opens a legacy ixo envelope (no context, no prefix).
//! - Prekeys (forward secrecy): the key holder makes [`Prekey`]s and signs them with its
//!   [`PrekeySigningKey`] ([`Prekey::sign`] gives the published [`SignedPrekey`]); a client
//!   checks a claimed one with [`verify_prekey`] against the oracle's
//!   [`PrekeySigningPublicKey`] and DID, and [`seal_with_prekey`] wraps the v1 envelope in a
//!   `v2.<scheme>.<base64url>` envelope sealed to that prekey. The prekey's holder opens the
//!   outer layer ([`open_prekey_layer`]), the oracle's agent the inner v1 envelope ([`open`]).
//! - The wire types the API takes ([`CallType`], [`Did`], [`RoomName`], [`SessionId`],
//!   [`KeyEnvelope`], [`KeyScheme`], [`KeyDerivation`]) are re-exported from
//!   `oracle-calls-proto`.
//! - [`frame`]: LiveKit-compatible frame end-to-end encryption (AES-128-GCM per encoded frame,
//!   keyring, ratchet), byte-compatible with `livekit-client` and the native LiveKit SDKs.
//!
//! No IO, no clocks, no global RNG: randomness comes in as `&mut impl CryptoRng`.
//!
//! ```
//! use oracle_calls_crypto::{open, seal, CallContext, CallKey, OracleKeyPair, OpenedKey};
//! use oracle_calls_crypto::{CallType, Did, KeyScheme, RoomName, SessionId};
//!
//! let mut rng = rand::rng();
//! let oracle = OracleKeyPair::generate(KeyScheme::HpkeP256, &mut rng)?;
//! let ctx = CallContext::new(
//!     SessionId::parse("s-1")?,
//!     RoomName::parse("oc-0123456789abcdef0123456789abcdef")?,
//!     Did::parse("did:ixo:user")?,
//!     Did::parse("did:ixo:oracle")?,
//!     CallType::Audio,
//! );
//! let key = CallKey::generate(&mut rng);
//! let envelope = seal(&oracle.public_key(), &key, &ctx, &mut rng)?;
//! let OpenedKey::Bound(opened) = open(&oracle, &envelope, &ctx)? else { unreachable!() };
//! assert!(opened.ct_eq(&key));
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```
#![deny(missing_docs)]

mod call_key;
mod context;
mod envelope;
mod error;
pub mod frame;
mod oracle_key;
mod prekey;

pub use call_key::CallKey;
pub use context::CallContext;
pub use envelope::{
    MAX_INNER_ENVELOPE_LEN, OpenedKey, Recipient, UnboundCallKey, open, open_legacy,
    open_prekey_layer, recipient, seal, seal_with_prekey,
};
pub use error::{EnvelopeError, Error, FrameError, KeyError, PrekeyError};
/// The wire types this crate's API takes and returns, so a caller needs no direct dependency
/// on `oracle-calls-proto` (their `parse` errors are [`ParseError`]).
pub use oracle_calls_proto::{
    CallType, Did, KeyDerivation, KeyEnvelope, KeyScheme, ParseError, RoomName, SessionId,
    SignedPrekey,
};
pub use oracle_key::{KeyId, OracleKeyPair, OraclePublicKey};
pub use prekey::{
    PREKEY_ID_LEN, PREKEY_SIGNATURE_LABEL, Prekey, PrekeyId, PrekeySecret, PrekeySigningKey,
    PrekeySigningPublicKey, VerifiedPrekey, verify_prekey,
};

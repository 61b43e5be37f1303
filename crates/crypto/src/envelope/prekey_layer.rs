//! The prekey layer of a `v2.` envelope (docs/PROTOCOL.md §13):
//!
//! ```text
//! v2.<scheme>.<base64url no padding of body>
//! body   = prekeyId (16) || contextDigest16 (16) || enc (32) || ct
//! ct     = HPKE base mode, DHKEM(X25519, HKDF-SHA256), HKDF-SHA256, AES-256-GCM, single
//!          shot: pkR = the prekey, info = context bytes, aad = prekeyId || contextDigest16,
//!          plaintext = the complete v1 envelope text (ASCII) sealed to the long-term key
//! ```
//!
//! `<scheme>` is the inner envelope's. It is not authenticated by this layer: the opener
//! checks it against the inner envelope instead.

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use oracle_calls_proto::KeyEnvelope;
use rand_core::CryptoRng;
use subtle::ConstantTimeEq;

use super::{HEADER_LEN, MAX_INNER_ENVELOPE_LEN, Parsed, header, hpke, parse, seal};
use crate::{
    CallContext, CallKey, EnvelopeError, OraclePublicKey, Prekey, PrekeyId, VerifiedPrekey,
};

/// What [`open_prekey_layer`] says of an inner text that is not a v1 envelope of the outer
/// scheme.
const NOT_INNER_V1: &str = "the inner envelope is not a `v1.` envelope of the outer scheme";

/// Seals `key` to the oracle's long-term key `recipient` as a v1 envelope bound to
/// `context` ([`crate::seal`]), then seals that envelope to the oracle's `prekey` as a `v2.`
/// envelope bound to the same context. Opening it needs both the prekey's private half and
/// the long-term private key.
///
/// # Errors
/// [`EnvelopeError::SealFailed`] if a public key is unusable.
pub fn seal_with_prekey(
    recipient: &OraclePublicKey,
    prekey: &VerifiedPrekey,
    key: &CallKey,
    context: &CallContext,
    rng: &mut impl CryptoRng,
) -> Result<KeyEnvelope, EnvelopeError> {
    let inner = seal(recipient, key, context, rng)?;
    if inner.as_str().len() > MAX_INNER_ENVELOPE_LEN {
        return Err(EnvelopeError::SealFailed);
    }
    let ctx = context.to_bytes();
    let hdr = header(prekey.id().as_bytes(), &context.digest());
    let payload = hpke::seal_x25519_bytes(
        prekey.public_key(),
        inner.as_str().as_bytes(),
        &ctx,
        &hdr,
        rng,
    )?;
    let mut body = hdr.to_vec();
    body.extend_from_slice(&payload);
    let text = format!(
        "v2.{}.{}",
        recipient.scheme().as_str(),
        URL_SAFE_NO_PAD.encode(body)
    );
    KeyEnvelope::parse(&text).map_err(|_| EnvelopeError::SealFailed)
}

/// Opens the prekey layer of a `v2.` envelope with the prekey it names, checking it is bound
/// to `context`, and returns the inner v1 envelope for the long-term key ([`crate::open`]).
/// The caller then destroys a one-time prekey's private half.
///
/// # Security
/// The inner envelope is what forward secrecy protects: together with the long-term private
/// key it opens the call key. Hand it only to the agent that opens it, and do not store it.
///
/// # Errors
/// [`EnvelopeError::NoPrekeyLayer`] for a v1 or legacy envelope; the structural errors of
/// [`crate::open`] ([`EnvelopeError::UnknownVersion`], [`EnvelopeError::UnknownScheme`],
/// [`EnvelopeError::Malformed`], [`EnvelopeError::Encoding`], [`EnvelopeError::BadLength`]);
/// [`EnvelopeError::WrongPrekey`], [`EnvelopeError::ContextMismatch`],
/// [`EnvelopeError::DecryptionFailed`]; [`EnvelopeError::Malformed`] when the inner text is
/// not a well-formed v1 envelope of the outer scheme.
pub fn open_prekey_layer(
    prekey: &Prekey,
    envelope: &KeyEnvelope,
    context: &CallContext,
) -> Result<KeyEnvelope, EnvelopeError> {
    let (scheme, body) = match parse(envelope.as_str())? {
        Parsed::V2 { scheme, body } => (scheme, body),
        Parsed::V1 { .. } | Parsed::Legacy(_) => return Err(EnvelopeError::NoPrekeyLayer),
    };
    let (hdr, payload) = body
        .split_at_checked(HEADER_LEN)
        .ok_or(EnvelopeError::BadLength)?;
    let (pid, digest16) = hdr.split_at_checked(16).ok_or(EnvelopeError::BadLength)?;
    if !bool::from(pid.ct_eq(prekey.id.as_bytes())) {
        let mut id = [0u8; 16];
        id.copy_from_slice(pid);
        return Err(EnvelopeError::WrongPrekey {
            envelope: PrekeyId(id),
            ours: prekey.id,
        });
    }
    let digest = context.digest();
    if !bool::from(digest16.ct_eq(digest.get(..16).unwrap_or_default())) {
        return Err(EnvelopeError::ContextMismatch);
    }
    let ctx = context.to_bytes();
    let inner = hpke::open_x25519_bytes(prekey.secret.as_bytes(), payload, &ctx, hdr)?;
    let text = std::str::from_utf8(&inner).map_err(|_| EnvelopeError::Malformed(NOT_INNER_V1))?;
    match parse(text) {
        Ok(Parsed::V1 { scheme: inner, .. }) if inner == scheme => {
            KeyEnvelope::parse(text).map_err(|_| EnvelopeError::Malformed(NOT_INNER_V1))
        }
        _ => Err(EnvelopeError::Malformed(NOT_INNER_V1)),
    }
}

#[cfg(test)]
mod tests;

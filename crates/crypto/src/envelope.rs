//! Key envelopes: a call key wrapped to an oracle public key and bound to a call context.
//!
//! Text form `v1.<scheme>.<base64url, no padding>` of
//! `key_id (16) || context_digest (16) || payload`, where `key_id` names the recipient key,
//! `context_digest` is the first 16 bytes of SHA-256 of the context bytes, and the payload is
//! scheme-specific (docs/PROTOCOL.md). The header lets a recipient tell "not my key" and
//! "another call" apart from tampering; the context is also bound cryptographically.
//!
//! `v2.<scheme>.<base64url>` wraps a complete v1 envelope in a second HPKE layer sealed to
//! one of the oracle's prekeys (forward secrecy; [`seal_with_prekey`],
//! [`open_prekey_layer`]); `<scheme>` is the inner envelope's.
//!
//! Legacy ixo form: base58 of `eciesjs` output whose plaintext is the key as 64 hex
//! characters, with no context at all — opened as [`OpenedKey::Unbound`], or by [`open_legacy`]
//! for a caller without a call context.

mod ecies;
mod hpke;
mod prekey_layer;
mod rsa;

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use oracle_calls_proto::{KeyEnvelope, KeyScheme};
use rand_core::CryptoRng;
use subtle::ConstantTimeEq;

use crate::oracle_key::{PrivateInner, PublicInner};
use crate::{CallContext, CallKey, EnvelopeError, KeyId, OracleKeyPair, OraclePublicKey, PrekeyId};

pub use prekey_layer::{open_prekey_layer, seal_with_prekey};

/// Bytes of the clear header: key id (v1) or prekey id (v2), and context digest.
const HEADER_LEN: usize = 32;

/// Bytes of a v2 envelope's HPKE encapsulated key (X25519).
const V2_ENC_LEN: usize = 32;
/// Bytes of the AES-256-GCM tag.
const TAG_LEN: usize = 16;
/// The longest inner (v1) envelope text a v2 envelope may carry.
pub const MAX_INNER_ENVELOPE_LEN: usize = 4096;
/// The shortest v2 body: header, encapsulated key and tag.
const V2_MIN_BODY: usize = HEADER_LEN + V2_ENC_LEN + TAG_LEN;
/// The longest v2 body.
const V2_MAX_BODY: usize = V2_MIN_BODY + MAX_INNER_ENVELOPE_LEN;

/// Seals `key` to `recipient`, bound to `context`.
///
/// # Errors
/// [`EnvelopeError::SealFailed`] if the public key is unusable.
pub fn seal(
    recipient: &OraclePublicKey,
    key: &CallKey,
    context: &CallContext,
    rng: &mut impl CryptoRng,
) -> Result<KeyEnvelope, EnvelopeError> {
    let ctx = context.to_bytes();
    let header = header(recipient.key_id().as_bytes(), &context.digest());
    let payload = match recipient.inner() {
        PublicInner::P256(pk) => hpke::seal_p256(pk, key, &ctx, &header, rng)?,
        PublicInner::X25519(pk) => hpke::seal_x25519(pk, key, &ctx, &header, rng)?,
        PublicInner::Rsa(pk) => rsa::seal(pk, key, &ctx)?,
        PublicInner::Secp256k1(pk) => ecies::seal(pk, &ecies::bound_plaintext(key, context), rng)?,
    };
    let mut body = header.to_vec();
    body.extend_from_slice(&payload);
    let text = format!(
        "v1.{}.{}",
        recipient.scheme().as_str(),
        URL_SAFE_NO_PAD.encode(body)
    );
    KeyEnvelope::parse(&text).map_err(|_| EnvelopeError::SealFailed)
}

/// A call key opened from an envelope.
#[derive(Debug)]
pub enum OpenedKey {
    /// Bound to the context it was opened with: use it.
    Bound(CallKey),
    /// From a legacy envelope that carries no context: anyone who saw it could have put it
    /// into another call. Use it only after deciding to accept that.
    Unbound(UnboundCallKey),
}

/// A call key that is not bound to any call context (legacy ixo envelopes).
#[derive(Debug)]
pub struct UnboundCallKey(CallKey);

impl UnboundCallKey {
    /// Accepts the key although nothing ties it to this call.
    ///
    /// # Security
    /// A legacy envelope can be replayed into another call by anyone who has seen it.
    pub fn dangerous_accept_without_context(self) -> CallKey {
        self.0
    }
}

/// Whom an envelope is sealed to, read from its clear header without opening it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum Recipient {
    /// A v1 envelope names its recipient key: only the key pair with this scheme and key id
    /// can open it.
    Key {
        /// The envelope's scheme.
        scheme: KeyScheme,
        /// The key id in its header.
        key_id: KeyId,
    },
    /// A legacy ixo envelope (un-prefixed base58) names no key: any secp256k1 key may try.
    LegacySecp256k1,
    /// A v2 envelope is sealed to a prekey: its holder opens the outer layer
    /// ([`open_prekey_layer`]), then the long-term key of `scheme` opens the inner v1
    /// envelope ([`open`]).
    Prekey {
        /// The scheme of the inner envelope (the oracle's long-term key).
        scheme: KeyScheme,
        /// The prekey id in its header.
        prekey_id: PrekeyId,
    },
}

/// Reads whom `envelope` is sealed to, so a holder of several keys can pick the one to open
/// it with (and tell "sealed to a key I do not hold" from "did not open"). Nothing here is
/// authenticated: a forged header only makes [`open`] fail.
///
/// # Errors
/// The structural errors of [`open`]: [`EnvelopeError::UnknownVersion`],
/// [`EnvelopeError::UnknownScheme`], [`EnvelopeError::Malformed`],
/// [`EnvelopeError::Encoding`], [`EnvelopeError::BadLength`] (for v2 also a body outside
/// the bounds [`open_prekey_layer`] accepts).
pub fn recipient(envelope: &KeyEnvelope) -> Result<Recipient, EnvelopeError> {
    match parse(envelope.as_str())? {
        Parsed::Legacy(_) => Ok(Recipient::LegacySecp256k1),
        Parsed::V1 { scheme, body } => Ok(Recipient::Key {
            scheme,
            key_id: KeyId(id16(&body)?),
        }),
        Parsed::V2 { scheme, body } => Ok(Recipient::Prekey {
            scheme,
            prekey_id: PrekeyId(id16(&body)?),
        }),
    }
}

/// The first 16 bytes of a body: the key id or prekey id.
fn id16(body: &[u8]) -> Result<[u8; 16], EnvelopeError> {
    let mut id = [0u8; 16];
    id.copy_from_slice(body.get(..16).ok_or(EnvelopeError::BadLength)?);
    Ok(id)
}

/// Opens an envelope with the oracle's key pair, checking it is bound to `context`. A v2
/// envelope is refused with [`EnvelopeError::PrekeyLayer`]: open its prekey layer first
/// ([`open_prekey_layer`]), then the inner envelope it returns with this function.
///
/// # Errors
/// [`EnvelopeError::PrekeyLayer`], [`EnvelopeError::UnknownVersion`], [`EnvelopeError::UnknownScheme`],
/// [`EnvelopeError::Malformed`], [`EnvelopeError::Encoding`], [`EnvelopeError::BadLength`],
/// [`EnvelopeError::SchemeMismatch`], [`EnvelopeError::WrongKey`],
/// [`EnvelopeError::ContextMismatch`], [`EnvelopeError::DecryptionFailed`].
pub fn open(
    keypair: &OracleKeyPair,
    envelope: &KeyEnvelope,
    context: &CallContext,
) -> Result<OpenedKey, EnvelopeError> {
    let (scheme, body) = match parse(envelope.as_str())? {
        Parsed::Legacy(text) => return open_legacy_text(keypair, text).map(OpenedKey::Unbound),
        Parsed::V1 { scheme, body } => (scheme, body),
        Parsed::V2 { .. } => return Err(EnvelopeError::PrekeyLayer),
    };
    let (hdr, payload) = body
        .split_at_checked(HEADER_LEN)
        .ok_or(EnvelopeError::BadLength)?;
    if scheme != keypair.scheme() {
        return Err(EnvelopeError::SchemeMismatch {
            envelope: scheme,
            key: keypair.scheme(),
        });
    }
    let (kid, digest16) = hdr.split_at(16);
    let ours = keypair.key_id();
    if !bool::from(kid.ct_eq(ours.as_bytes())) {
        let mut id = [0u8; 16];
        id.copy_from_slice(kid);
        return Err(EnvelopeError::WrongKey {
            envelope: KeyId(id),
            ours,
        });
    }
    let digest = context.digest();
    if !bool::from(digest16.ct_eq(digest.get(..16).unwrap_or_default())) {
        return Err(EnvelopeError::ContextMismatch);
    }
    let ctx = context.to_bytes();
    let key = match keypair.inner() {
        PrivateInner::P256(sk) => hpke::open_p256(sk, payload, &ctx, hdr)?,
        PrivateInner::X25519(sk) => hpke::open_x25519(sk, payload, &ctx, hdr)?,
        PrivateInner::Rsa(sk) => rsa::open(sk, payload, &ctx)?,
        PrivateInner::Secp256k1(sk) => {
            let pt = ecies::open(sk, payload)?;
            ecies::check_bound_plaintext(&pt, &digest)?
        }
    };
    Ok(OpenedKey::Bound(key))
}

/// Opens a legacy ixo envelope (un-prefixed base58 `eciesjs` output, docs/PROTOCOL.md §4.3)
/// with the oracle's secp256k1 key, for a caller that has no call context at hand. Refuses
/// every v1 and v2 envelope: those are bound to a call and open only through [`open`] (and
/// [`open_prekey_layer`]) with it.
///
/// # Security
/// A legacy envelope carries no context: whoever has seen it can put it into another call,
/// and nothing here can tell. Calling this is deciding to accept that, as
/// [`UnboundCallKey::dangerous_accept_without_context`] is.
///
/// # Errors
/// [`EnvelopeError::NotLegacy`] for a `vN.` envelope; [`EnvelopeError::Malformed`] for other
/// text with a `.` or when the key is not secp256k1; [`EnvelopeError::Encoding`],
/// [`EnvelopeError::BadLength`], [`EnvelopeError::DecryptionFailed`].
pub fn open_legacy(
    keypair: &OracleKeyPair,
    envelope: &KeyEnvelope,
) -> Result<CallKey, EnvelopeError> {
    let text = envelope.as_str();
    match text.split_once('.') {
        None => {
            open_legacy_text(keypair, text).map(UnboundCallKey::dangerous_accept_without_context)
        }
        Some((version, _)) if is_version_tag(version) => Err(EnvelopeError::NotLegacy),
        Some(_) => Err(EnvelopeError::Malformed(
            "neither `v1.<scheme>.<base64url>` nor legacy base58",
        )),
    }
}

/// An envelope's text, split but not opened.
enum Parsed<'a> {
    /// Un-prefixed: the legacy base58 form.
    Legacy(&'a str),
    /// `v1.<scheme>.<base64url>`, with a body of at least [`HEADER_LEN`] bytes.
    V1 { scheme: KeyScheme, body: Vec<u8> },
    /// `v2.<scheme>.<base64url>`, with a body of [`V2_MIN_BODY`] to [`V2_MAX_BODY`] bytes.
    V2 { scheme: KeyScheme, body: Vec<u8> },
}

fn parse(text: &str) -> Result<Parsed<'_>, EnvelopeError> {
    let Some((version, rest)) = text.split_once('.') else {
        return Ok(Parsed::Legacy(text));
    };
    let v2 = match version {
        "v1" => false,
        "v2" => true,
        _ if is_version_tag(version) => return Err(EnvelopeError::UnknownVersion),
        _ => {
            return Err(EnvelopeError::Malformed(
                "expected `v1.<scheme>.<base64url>`",
            ));
        }
    };
    let (scheme, b64) = rest.split_once('.').ok_or(EnvelopeError::Malformed(
        "expected `vN.<scheme>.<base64url>`",
    ))?;
    let scheme: KeyScheme = scheme.parse().map_err(|_| EnvelopeError::UnknownScheme)?;
    let body = URL_SAFE_NO_PAD
        .decode(b64)
        .map_err(|_| EnvelopeError::Encoding("base64url (no padding)"))?;
    if v2 {
        if !(V2_MIN_BODY..=V2_MAX_BODY).contains(&body.len()) {
            return Err(EnvelopeError::BadLength);
        }
        return Ok(Parsed::V2 { scheme, body });
    }
    if body.len() < HEADER_LEN {
        return Err(EnvelopeError::BadLength);
    }
    Ok(Parsed::V1 { scheme, body })
}

/// `v` followed by digits.
fn is_version_tag(s: &str) -> bool {
    s.strip_prefix('v')
        .is_some_and(|n| !n.is_empty() && n.bytes().all(|b| b.is_ascii_digit()))
}

/// `id (16) || digest[..16]`: a v1 header (key id) or a v2 header (prekey id).
fn header(id: &[u8; 16], digest: &[u8; 32]) -> [u8; HEADER_LEN] {
    let mut h = [0u8; HEADER_LEN];
    let (a, b) = h.split_at_mut(16);
    a.copy_from_slice(id);
    b.copy_from_slice(digest.get(..16).unwrap_or(&[0u8; 16]));
    h
}

fn open_legacy_text(keypair: &OracleKeyPair, text: &str) -> Result<UnboundCallKey, EnvelopeError> {
    let PrivateInner::Secp256k1(sk) = keypair.inner() else {
        return Err(EnvelopeError::Malformed(
            "expected `v1.<scheme>.<base64url>` (un-prefixed envelopes are legacy ecies-secp256k1 only)",
        ));
    };
    let body = bs58::decode(text)
        .into_vec()
        .map_err(|_| EnvelopeError::Encoding("base58"))?;
    let pt = ecies::open(sk, &body)?;
    ecies::legacy_plaintext_to_key(&pt).map(UnboundCallKey)
}

#[cfg(test)]
mod tests;

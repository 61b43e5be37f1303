//! Prekeys: short-lived X25519 keys an oracle publishes, signed with its Ed25519 prekey
//! signing key, so that a call's key envelope can be sealed to a key that is destroyed after
//! use (forward secrecy, docs/PROTOCOL.md §13).
//!
//! The key holder makes [`Prekey`]s and publishes each as a [`SignedPrekey`]
//! ([`Prekey::sign`]). A client claims one, checks it with [`verify_prekey`] against the
//! oracle's [`PrekeySigningPublicKey`] and DID, and seals to the [`VerifiedPrekey`] with
//! [`crate::seal_with_prekey`].
//!
//! The signature is Ed25519 (RFC 8032, pure) over
//!
//! ```text
//! str("oracle-calls/prekey/v1") || str(oracleDid) || prekeyId (16) || publicKey (32)
//!     || u8(lastResort ? 1 : 0)
//! str(s) = u32 big-endian byte length of s || UTF-8 bytes of s
//! ```

use base64::Engine as _;
use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
use ed25519_dalek::{Signature, Signer as _, SigningKey, VerifyingKey};
use oracle_calls_proto::{Did, SignedPrekey};
use pkcs8::ObjectIdentifier;
use pkcs8::der::Decode as _;
use rand_core::CryptoRng;
use subtle::ConstantTimeEq;
use zeroize::{Zeroize, ZeroizeOnDrop, Zeroizing};

use crate::oracle_key::x25519_public;
use crate::{KeyError, PrekeyError};

/// The domain-separation label at the start of the signed prekey bytes.
pub const PREKEY_SIGNATURE_LABEL: &str = "oracle-calls/prekey/v1";

/// Bytes of a prekey id.
pub const PREKEY_ID_LEN: usize = 16;

const OID_ED25519: ObjectIdentifier = ObjectIdentifier::new_unwrap("1.3.101.112");

/// RFC 8410 PKCS#8 (v1) prefix of an Ed25519 private key (the 32 seed bytes follow).
const ED25519_PKCS8_PREFIX: [u8; 16] = [
    0x30, 0x2e, 0x02, 0x01, 0x00, 0x30, 0x05, 0x06, 0x03, 0x2b, 0x65, 0x70, 0x04, 0x22, 0x04, 0x20,
];

/// Decodes unpadded base64url into exactly `N` bytes.
fn decode_fixed<const N: usize>(field: &'static str, text: &str) -> Result<[u8; N], PrekeyError> {
    let raw = URL_SAFE_NO_PAD
        .decode(text)
        .map_err(|_| PrekeyError::Encoding {
            field,
            encoding: "base64url (no padding)",
        })?;
    raw.as_slice()
        .try_into()
        .map_err(|_| PrekeyError::BadLength {
            field,
            len: raw.len(),
            expected: N,
        })
}

/// The oracle's prekey signing key (Ed25519), held by its key holder. The secret is zeroized
/// on drop; `Debug` shows only the public half.
pub struct PrekeySigningKey(SigningKey);

impl PrekeySigningKey {
    /// A fresh signing key from a cryptographically secure RNG.
    pub fn generate(rng: &mut impl CryptoRng) -> Self {
        let mut seed = Zeroizing::new([0u8; 32]);
        rng.fill_bytes(seed.as_mut());
        Self(SigningKey::from_bytes(&seed))
    }

    /// The private key as a PKCS#8 `PRIVATE KEY` PEM document (RFC 8410, the 48-byte form
    /// OpenSSL and Python `cryptography` write).
    ///
    /// # Security
    /// This is a long-term secret: write it only to a file readable by its owner.
    pub fn to_pkcs8_pem(&self) -> Zeroizing<String> {
        let mut der = Zeroizing::new([0u8; 48]);
        let (prefix, seed) = der.split_at_mut(ED25519_PKCS8_PREFIX.len());
        prefix.copy_from_slice(&ED25519_PKCS8_PREFIX);
        seed.copy_from_slice(self.0.as_bytes());
        // 48 bytes are 64 base64 characters: one PEM line.
        let b64 = Zeroizing::new(STANDARD.encode(der.as_slice()));
        Zeroizing::new(format!(
            "-----BEGIN PRIVATE KEY-----\n{}\n-----END PRIVATE KEY-----\n",
            b64.as_str()
        ))
    }

    /// Loads a PKCS#8 `PRIVATE KEY` PEM document holding an Ed25519 key (RFC 8410; a v2
    /// document with the public key must carry the matching one).
    ///
    /// # Errors
    /// [`KeyError::Pem`], [`KeyError::UnsupportedAlgorithm`] for another algorithm,
    /// [`KeyError::Invalid`].
    pub fn from_pkcs8_pem(pem: &str) -> Result<Self, KeyError> {
        let (label, der) = pkcs8::der::pem::decode_vec(pem.as_bytes())
            .map_err(|_| KeyError::Pem("not a PEM document"))?;
        let der = Zeroizing::new(der);
        if label != "PRIVATE KEY" {
            return Err(KeyError::Pem("label is not `PRIVATE KEY`"));
        }
        let info = pkcs8::PrivateKeyInfoRef::from_der(&der)
            .map_err(|_| KeyError::Pem("not a PKCS#8 PrivateKeyInfo"))?;
        if info.algorithm.oid != OID_ED25519 {
            return Err(KeyError::UnsupportedAlgorithm);
        }
        if info.algorithm.parameters.is_some() {
            return Err(KeyError::Invalid);
        }
        // CurvePrivateKey ::= OCTET STRING (32 bytes), inside the privateKey OCTET STRING.
        let inner = info.private_key.as_bytes();
        let seed = match inner {
            [0x04, 0x20, rest @ ..] if rest.len() == 32 => rest,
            _ => return Err(KeyError::Invalid),
        };
        let mut bytes = Zeroizing::new([0u8; 32]);
        bytes.copy_from_slice(seed);
        let key = SigningKey::from_bytes(&bytes);
        if let Some(public) = info.public_key
            && public.as_bytes() != Some(key.verifying_key().as_bytes().as_slice())
        {
            return Err(KeyError::Invalid);
        }
        Ok(Self(key))
    }

    /// The public half, to publish as `prekeySigningKey`.
    pub fn public_key(&self) -> PrekeySigningPublicKey {
        PrekeySigningPublicKey(self.0.verifying_key())
    }
}

impl std::fmt::Debug for PrekeySigningKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "PrekeySigningKey({}, ..)", self.public_key())
    }
}

/// The public half of a [`PrekeySigningKey`]: 32 bytes, written as base64url without padding
/// (43 characters) in `/.well-known/oracle-calls` and the key-transparency record.
#[derive(Clone, Copy, PartialEq, Eq)]
pub struct PrekeySigningPublicKey(VerifyingKey);

impl PrekeySigningPublicKey {
    /// Parses the base64url (no padding) form.
    ///
    /// # Errors
    /// [`PrekeyError::Encoding`], [`PrekeyError::BadLength`] (field `prekeySigningKey`),
    /// [`PrekeyError::InvalidKey`].
    pub fn parse(text: &str) -> Result<Self, PrekeyError> {
        Self::from_bytes(&decode_fixed::<32>("prekeySigningKey", text)?)
    }

    /// From the 32 raw bytes.
    ///
    /// # Errors
    /// [`PrekeyError::InvalidKey`] for bytes that are not a point, or a point of small order
    /// (such a key could "sign" many messages at once).
    pub fn from_bytes(bytes: &[u8; 32]) -> Result<Self, PrekeyError> {
        let key = VerifyingKey::from_bytes(bytes).map_err(|_| PrekeyError::InvalidKey)?;
        if key.is_weak() {
            return Err(PrekeyError::InvalidKey);
        }
        Ok(Self(key))
    }

    /// The 32 raw bytes.
    pub fn as_bytes(&self) -> &[u8; 32] {
        self.0.as_bytes()
    }
}

impl std::fmt::Display for PrekeySigningPublicKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&URL_SAFE_NO_PAD.encode(self.as_bytes()))
    }
}

impl std::fmt::Debug for PrekeySigningPublicKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "PrekeySigningPublicKey({self})")
    }
}

/// A prekey's id: 16 random bytes. Shown (and parsed) as base64url without padding, the
/// form in JSON and envelopes; [`Self::to_hex`] gives a file-name form.
#[derive(Clone, Copy, Eq)]
pub struct PrekeyId(pub(crate) [u8; PREKEY_ID_LEN]);

impl PrekeyId {
    /// A fresh random id.
    pub fn generate(rng: &mut impl CryptoRng) -> Self {
        let mut id = [0u8; PREKEY_ID_LEN];
        rng.fill_bytes(&mut id);
        Self(id)
    }

    /// From the 16 raw bytes.
    pub fn from_bytes(bytes: [u8; PREKEY_ID_LEN]) -> Self {
        Self(bytes)
    }

    /// The 16 raw bytes.
    pub fn as_bytes(&self) -> &[u8; PREKEY_ID_LEN] {
        &self.0
    }

    /// Parses the base64url (no padding) form, 22 characters.
    ///
    /// # Errors
    /// [`PrekeyError::Encoding`], [`PrekeyError::BadLength`] (field `prekeyId`).
    pub fn parse(text: &str) -> Result<Self, PrekeyError> {
        decode_fixed("prekeyId", text).map(Self)
    }

    /// 32 lower-case hex characters, for file names (no `-` or `_` to trip over).
    pub fn to_hex(&self) -> String {
        hex::encode(self.0)
    }

    /// Parses [`Self::to_hex`]'s form. Only lower-case hex is accepted, so that one id has
    /// one file name.
    ///
    /// # Errors
    /// [`PrekeyError::Encoding`], [`PrekeyError::BadLength`] (field `prekeyId`).
    pub fn from_hex(text: &str) -> Result<Self, PrekeyError> {
        let not_hex = PrekeyError::Encoding {
            field: "prekeyId",
            encoding: "lower-case hex",
        };
        if !text.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f')) {
            return Err(not_hex);
        }
        let raw = hex::decode(text).map_err(|_| not_hex)?;
        let len = raw.len();
        raw.try_into()
            .map(Self)
            .map_err(|_| PrekeyError::BadLength {
                field: "prekeyId",
                len,
                expected: PREKEY_ID_LEN,
            })
    }

    /// Compares two ids in constant time.
    pub fn ct_eq(&self, other: &PrekeyId) -> bool {
        self.0.ct_eq(&other.0).into()
    }
}

impl PartialEq for PrekeyId {
    fn eq(&self, other: &Self) -> bool {
        self.ct_eq(other)
    }
}

impl std::hash::Hash for PrekeyId {
    fn hash<H: std::hash::Hasher>(&self, state: &mut H) {
        self.0.hash(state);
    }
}

impl std::fmt::Display for PrekeyId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&URL_SAFE_NO_PAD.encode(self.0))
    }
}

impl std::fmt::Debug for PrekeyId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "PrekeyId({self})")
    }
}

/// A prekey's X25519 private key (RFC 7748: any 32 bytes, clamped on use). Zeroized on drop;
/// not `Clone`; `Debug` prints `PrekeySecret(..)`.
#[derive(Zeroize, ZeroizeOnDrop)]
pub struct PrekeySecret([u8; 32]);

impl PrekeySecret {
    /// A fresh secret from a cryptographically secure RNG.
    pub fn generate(rng: &mut impl CryptoRng) -> Self {
        let mut sk = [0u8; 32];
        rng.fill_bytes(&mut sk);
        Self(sk)
    }

    /// Takes ownership of the 32 raw bytes (e.g. read back from the key holder's store).
    pub fn from_bytes(bytes: [u8; 32]) -> Self {
        Self(bytes)
    }

    /// The 32 raw bytes, to store.
    ///
    /// # Security
    /// Exports the secret: store it only where the key holder can destroy it after use.
    pub fn to_bytes(&self) -> Zeroizing<[u8; 32]> {
        Zeroizing::new(self.0)
    }

    /// The X25519 public key.
    pub fn public_key(&self) -> [u8; 32] {
        x25519_public(&self.0)
    }

    pub(crate) fn as_bytes(&self) -> &[u8; 32] {
        &self.0
    }
}

impl std::fmt::Debug for PrekeySecret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("PrekeySecret(..)")
    }
}

/// One prekey as its holder keeps it: id, X25519 private key, and whether it is the
/// last-resort prekey (handed out when no one-time prekey is left; not used up).
#[derive(Debug)]
pub struct Prekey {
    /// The prekey id.
    pub id: PrekeyId,
    /// The X25519 private key.
    pub secret: PrekeySecret,
    /// Whether this is the last-resort prekey.
    pub last_resort: bool,
}

impl Prekey {
    /// A fresh prekey with a random id.
    pub fn generate(last_resort: bool, rng: &mut impl CryptoRng) -> Self {
        Self {
            id: PrekeyId::generate(rng),
            secret: PrekeySecret::generate(rng),
            last_resort,
        }
    }

    /// The X25519 public key.
    pub fn public_key(&self) -> [u8; 32] {
        self.secret.public_key()
    }

    /// The prekey as published, signed for the oracle `oracle_did` (the DID clients put in
    /// their call contexts).
    pub fn sign(&self, signing_key: &PrekeySigningKey, oracle_did: &Did) -> SignedPrekey {
        let public_key = self.public_key();
        let msg = signed_bytes(oracle_did, &self.id, &public_key, self.last_resort);
        let signature = signing_key.0.sign(&msg);
        SignedPrekey {
            prekey_id: self.id.to_string(),
            public_key: URL_SAFE_NO_PAD.encode(public_key),
            last_resort: self.last_resort,
            signature: URL_SAFE_NO_PAD.encode(signature.to_bytes()),
        }
    }
}

/// A prekey whose signature was checked by [`verify_prekey`]: the only thing
/// [`crate::seal_with_prekey`] seals to.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct VerifiedPrekey {
    id: PrekeyId,
    public_key: [u8; 32],
    last_resort: bool,
}

impl VerifiedPrekey {
    /// The prekey id.
    pub fn id(&self) -> PrekeyId {
        self.id
    }

    /// The X25519 public key.
    pub fn public_key(&self) -> &[u8; 32] {
        &self.public_key
    }

    /// Whether it is the last-resort prekey (then it was not used up: an envelope sealed to
    /// it has forward secrecy only from the prekey's next rotation on).
    pub fn last_resort(&self) -> bool {
        self.last_resort
    }
}

/// Checks a signed prekey (as claimed from the server) against the oracle's prekey signing
/// key and DID. The signature is verified strictly (RFC 8032 with canonical `S` and `R`, and
/// no small-order `R`).
///
/// # Errors
/// [`PrekeyError::Encoding`] or [`PrekeyError::BadLength`] naming the field,
/// [`PrekeyError::BadSignature`].
pub fn verify_prekey(
    signed: &SignedPrekey,
    signing_key: &PrekeySigningPublicKey,
    oracle_did: &Did,
) -> Result<VerifiedPrekey, PrekeyError> {
    let id = PrekeyId::parse(&signed.prekey_id)?;
    let public_key = decode_fixed::<32>("publicKey", &signed.public_key)?;
    let sig_bytes = decode_fixed::<64>("signature", &signed.signature)?;
    // S < L, checked here: ed25519-dalek skips the check when another crate in the build
    // turns on its `legacy_compatibility` feature (features are unified across a build).
    if !scalar_is_canonical(sig_bytes.get(32..).unwrap_or_default()) {
        return Err(PrekeyError::BadSignature);
    }
    let signature = Signature::from_bytes(&sig_bytes);
    let msg = signed_bytes(oracle_did, &id, &public_key, signed.last_resort);
    signing_key
        .0
        .verify_strict(&msg, &signature)
        .map_err(|_| PrekeyError::BadSignature)?;
    Ok(VerifiedPrekey {
        id,
        public_key,
        last_resort: signed.last_resort,
    })
}

/// The order of the Ed25519 group, L = 2^252 + 27742317777372353535851937790883648493, as 32
/// little-endian bytes.
const GROUP_ORDER_LE: [u8; 32] = [
    0xed, 0xd3, 0xf5, 0x5c, 0x1a, 0x63, 0x12, 0x58, 0xd6, 0x9c, 0xf7, 0xa2, 0xde, 0xf9, 0xde, 0x14,
    0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0x10,
];

/// Whether the 32 little-endian bytes `s` are a scalar below L (RFC 8032 §5.1.7). The
/// signature is public: no need for constant time.
fn scalar_is_canonical(s: &[u8]) -> bool {
    if s.len() != 32 {
        return false;
    }
    for (a, l) in s.iter().rev().zip(GROUP_ORDER_LE.iter().rev()) {
        if a != l {
            return a < l;
        }
    }
    false
}

/// `str(label) || str(oracleDid) || prekeyId || publicKey || u8(lastResort)`.
fn signed_bytes(did: &Did, id: &PrekeyId, public_key: &[u8; 32], last_resort: bool) -> Vec<u8> {
    let mut out = Vec::with_capacity(4 + PREKEY_SIGNATURE_LABEL.len() + 4 + 64 + 16 + 32 + 1);
    for s in [PREKEY_SIGNATURE_LABEL, did.as_str()] {
        // A DID is at most 256 bytes, far below u32::MAX.
        let len = u32::try_from(s.len()).unwrap_or(u32::MAX);
        out.extend_from_slice(&len.to_be_bytes());
        out.extend_from_slice(s.as_bytes());
    }
    out.extend_from_slice(id.as_bytes());
    out.extend_from_slice(public_key);
    out.push(u8::from(last_resort));
    out
}

#[cfg(test)]
mod tests;

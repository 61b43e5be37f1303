//! ECIES on secp256k1, byte-compatible with the `eciesjs` defaults: an uncompressed
//! ephemeral public key (65), then AES-256-GCM with a 16-byte nonce as nonce (16) || tag (16)
//! || ciphertext, under HKDF-SHA256(ikm = ephemeral point || shared point, both
//! uncompressed; no salt; no info) → 32 bytes.

use aes_gcm::aead::consts::U16;
use aes_gcm::aes::Aes256;
use aes_gcm::{AeadInOut, AesGcm, KeyInit};
use hkdf::Hkdf;
use k256::elliptic_curve::Generate as _;
use k256::elliptic_curve::sec1::ToSec1Point;
use k256::{PublicKey, SecretKey};
use rand_core::CryptoRng;
use sha2::Sha256;
use subtle::ConstantTimeEq;
use zeroize::Zeroizing;

use crate::{CallContext, CallKey, EnvelopeError};

type Aes256Gcm16 = AesGcm<Aes256, U16>;

const POINT_LEN: usize = 65;
const NONCE_LEN: usize = 16;
const TAG_LEN: usize = 16;

/// Plaintext of a v1 envelope: the key, then SHA-256 of the context.
pub(super) fn bound_plaintext(key: &CallKey, context: &CallContext) -> Zeroizing<Vec<u8>> {
    let mut pt = Zeroizing::new(Vec::with_capacity(64));
    pt.extend_from_slice(key.as_bytes());
    pt.extend_from_slice(&context.digest());
    pt
}

/// Splits and checks a v1 plaintext against the context digest.
pub(super) fn check_bound_plaintext(
    pt: &[u8],
    digest: &[u8; 32],
) -> Result<CallKey, EnvelopeError> {
    if pt.len() != 64 {
        return Err(EnvelopeError::DecryptionFailed);
    }
    let (key, bound) = pt.split_at(32);
    if !bool::from(bound.ct_eq(digest)) {
        // The clear header matched the context but the sealed digest did not: the header
        // was altered.
        return Err(EnvelopeError::DecryptionFailed);
    }
    CallKey::from_slice(key).ok_or(EnvelopeError::DecryptionFailed)
}

/// Legacy plaintext: the key as 64 hex characters.
pub(super) fn legacy_plaintext_to_key(pt: &[u8]) -> Result<CallKey, EnvelopeError> {
    if pt.len() != 64 {
        return Err(EnvelopeError::DecryptionFailed);
    }
    let mut key = Zeroizing::new([0u8; 32]);
    hex::decode_to_slice(pt, key.as_mut_slice()).map_err(|_| EnvelopeError::DecryptionFailed)?;
    Ok(CallKey::from_bytes(*key))
}

pub(super) fn seal(
    pk: &PublicKey,
    plaintext: &[u8],
    rng: &mut impl CryptoRng,
) -> Result<Vec<u8>, EnvelopeError> {
    let eph = SecretKey::generate_from_rng(rng);
    let eph_pub = eph.public_key().to_sec1_point(false);
    let shared = shared_point(&eph, pk);
    let key = derive(eph_pub.as_bytes(), &shared)?;
    let cipher =
        Aes256Gcm16::new_from_slice(key.as_slice()).map_err(|_| EnvelopeError::SealFailed)?;
    let mut nonce = [0u8; NONCE_LEN];
    rng.fill_bytes(&mut nonce);
    let mut ct = plaintext.to_vec();
    let tag = cipher
        .encrypt_inout_detached(&nonce.into(), &[], ct.as_mut_slice().into())
        .map_err(|_| EnvelopeError::SealFailed)?;
    let mut out = Vec::with_capacity(POINT_LEN + NONCE_LEN + TAG_LEN + ct.len());
    out.extend_from_slice(eph_pub.as_bytes());
    out.extend_from_slice(&nonce);
    out.extend_from_slice(&tag);
    out.extend_from_slice(&ct);
    Ok(out)
}

/// Length of the plaintext of both envelope forms: 32 + 32 bytes (v1) or 64 hex characters
/// (legacy).
pub(super) const PLAINTEXT_LEN: usize = 64;

pub(super) fn open(sk: &SecretKey, body: &[u8]) -> Result<Zeroizing<Vec<u8>>, EnvelopeError> {
    if body.len() != POINT_LEN + NONCE_LEN + TAG_LEN + PLAINTEXT_LEN {
        return Err(EnvelopeError::BadLength);
    }
    let (eph, rest) = body.split_at(POINT_LEN);
    let (nonce, rest) = rest.split_at(NONCE_LEN);
    let (tag, ct) = rest.split_at(TAG_LEN);
    let eph_pk = PublicKey::from_sec1_bytes(eph).map_err(|_| EnvelopeError::DecryptionFailed)?;
    let shared = shared_point(sk, &eph_pk);
    let key = derive(eph, &shared)?;
    let cipher =
        Aes256Gcm16::new_from_slice(key.as_slice()).map_err(|_| EnvelopeError::DecryptionFailed)?;
    let nonce: [u8; NONCE_LEN] = nonce.try_into().map_err(|_| EnvelopeError::BadLength)?;
    let tag: [u8; TAG_LEN] = tag.try_into().map_err(|_| EnvelopeError::BadLength)?;
    let mut pt = Zeroizing::new(ct.to_vec());
    cipher
        .decrypt_inout_detached(&nonce.into(), &[], pt.as_mut_slice().into(), &tag.into())
        .map_err(|_| EnvelopeError::DecryptionFailed)?;
    Ok(pt)
}

/// The uncompressed shared point `sk · pk`.
fn shared_point(sk: &SecretKey, pk: &PublicKey) -> Zeroizing<Vec<u8>> {
    let point = (pk.to_projective() * *sk.to_nonzero_scalar()).to_affine();
    let pk = PublicKey::from_affine(point).map(|p| p.to_sec1_point(false).as_bytes().to_vec());
    // sk is non-zero and pk is a valid point of prime order, so the product is never identity.
    Zeroizing::new(pk.unwrap_or_default())
}

fn derive(eph_pub: &[u8], shared: &[u8]) -> Result<Zeroizing<[u8; 32]>, EnvelopeError> {
    let mut ikm = Zeroizing::new(Vec::with_capacity(eph_pub.len() + shared.len()));
    ikm.extend_from_slice(eph_pub);
    ikm.extend_from_slice(shared);
    let hk = Hkdf::<Sha256>::new(None, &ikm);
    let mut okm = Zeroizing::new([0u8; 32]);
    hk.expand(&[], okm.as_mut_slice())
        .map_err(|_| EnvelopeError::DecryptionFailed)?;
    Ok(okm)
}

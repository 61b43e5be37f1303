//! RFC 9180 HPKE base mode: DHKEM(P-256 or X25519, HKDF-SHA256), HKDF-SHA256, AES-256-GCM.

use hpke::aead::AesGcm256;
use hpke::kdf::HkdfSha256;
use hpke::kem::{DhP256HkdfSha256, X25519HkdfSha256};
use hpke::{Deserializable, Kem, OpModeR, OpModeS, Serializable};
use rand_core::CryptoRng;
use zeroize::Zeroizing;

use crate::{CallKey, EnvelopeError};

pub(super) fn seal_p256(
    pk: &p256::PublicKey,
    key: &CallKey,
    info: &[u8],
    aad: &[u8],
    rng: &mut impl CryptoRng,
) -> Result<Vec<u8>, EnvelopeError> {
    let pk = <DhP256HkdfSha256 as Kem>::PublicKey::from_bytes(&pk.to_sec1_bytes())
        .map_err(|_| EnvelopeError::SealFailed)?;
    seal::<DhP256HkdfSha256>(&pk, key.as_bytes(), info, aad, rng)
}

pub(super) fn seal_x25519(
    pk: &[u8; 32],
    key: &CallKey,
    info: &[u8],
    aad: &[u8],
    rng: &mut impl CryptoRng,
) -> Result<Vec<u8>, EnvelopeError> {
    let pk = <X25519HkdfSha256 as Kem>::PublicKey::from_bytes(pk)
        .map_err(|_| EnvelopeError::SealFailed)?;
    seal::<X25519HkdfSha256>(&pk, key.as_bytes(), info, aad, rng)
}

/// Seals any plaintext to an X25519 key: `enc (32) || ciphertext || tag (16)` (the prekey
/// layer of a `v2.` envelope).
pub(super) fn seal_x25519_bytes(
    pk: &[u8; 32],
    plaintext: &[u8],
    info: &[u8],
    aad: &[u8],
    rng: &mut impl CryptoRng,
) -> Result<Vec<u8>, EnvelopeError> {
    let pk = <X25519HkdfSha256 as Kem>::PublicKey::from_bytes(pk)
        .map_err(|_| EnvelopeError::SealFailed)?;
    seal::<X25519HkdfSha256>(&pk, plaintext, info, aad, rng)
}

/// Opens what [`seal_x25519_bytes`] sealed. The caller has checked the length bounds.
pub(super) fn open_x25519_bytes(
    sk: &[u8; 32],
    payload: &[u8],
    info: &[u8],
    aad: &[u8],
) -> Result<Zeroizing<Vec<u8>>, EnvelopeError> {
    let sk = <X25519HkdfSha256 as Kem>::PrivateKey::from_bytes(sk)
        .map_err(|_| EnvelopeError::DecryptionFailed)?;
    open_bytes::<X25519HkdfSha256>(&sk, payload, info, aad)
}

pub(super) fn open_p256(
    sk: &p256::SecretKey,
    payload: &[u8],
    info: &[u8],
    aad: &[u8],
) -> Result<CallKey, EnvelopeError> {
    let bytes = Zeroizing::new(sk.to_bytes());
    let sk = <DhP256HkdfSha256 as Kem>::PrivateKey::from_bytes(&bytes)
        .map_err(|_| EnvelopeError::DecryptionFailed)?;
    open::<DhP256HkdfSha256>(&sk, payload, info, aad)
}

pub(super) fn open_x25519(
    sk: &[u8; 32],
    payload: &[u8],
    info: &[u8],
    aad: &[u8],
) -> Result<CallKey, EnvelopeError> {
    let sk = <X25519HkdfSha256 as Kem>::PrivateKey::from_bytes(sk)
        .map_err(|_| EnvelopeError::DecryptionFailed)?;
    open::<X25519HkdfSha256>(&sk, payload, info, aad)
}

fn seal<K: Kem>(
    pk: &K::PublicKey,
    plaintext: &[u8],
    info: &[u8],
    aad: &[u8],
    rng: &mut impl CryptoRng,
) -> Result<Vec<u8>, EnvelopeError> {
    let (enc, ct) = hpke::single_shot_seal_with_rng::<AesGcm256, HkdfSha256, K>(
        &OpModeS::Base,
        pk,
        info,
        plaintext,
        aad,
        rng,
    )
    .map_err(|_| EnvelopeError::SealFailed)?;
    let mut out = enc.to_bytes().to_vec();
    out.extend_from_slice(&ct);
    Ok(out)
}

fn open<K: Kem>(
    sk: &K::PrivateKey,
    payload: &[u8],
    info: &[u8],
    aad: &[u8],
) -> Result<CallKey, EnvelopeError> {
    let enc_len = <K::EncappedKey as Serializable>::size();
    // 32-byte key + 16-byte tag.
    if payload.len() != enc_len + 48 {
        return Err(EnvelopeError::BadLength);
    }
    let pt = open_bytes::<K>(sk, payload, info, aad)?;
    CallKey::from_slice(&pt).ok_or(EnvelopeError::DecryptionFailed)
}

/// Single-shot open of `enc || ciphertext || tag`.
fn open_bytes<K: Kem>(
    sk: &K::PrivateKey,
    payload: &[u8],
    info: &[u8],
    aad: &[u8],
) -> Result<Zeroizing<Vec<u8>>, EnvelopeError> {
    let enc_len = <K::EncappedKey as Serializable>::size();
    let (enc, ct) = payload
        .split_at_checked(enc_len)
        .ok_or(EnvelopeError::BadLength)?;
    let enc = K::EncappedKey::from_bytes(enc).map_err(|_| EnvelopeError::DecryptionFailed)?;
    hpke::single_shot_open::<AesGcm256, HkdfSha256, K>(&OpModeR::Base, sk, &enc, info, ct, aad)
        .map(Zeroizing::new)
        .map_err(|_| EnvelopeError::DecryptionFailed)
}

//! RSA-OAEP with SHA-256 and MGF1-SHA-256, label = context. Decryption runs in AWS-LC
//! (blinded, timing-hardened); the `rsa` crate is never used (RUSTSEC-2023-0071).

use aws_lc_rs::rsa::{
    OAEP_SHA256_MGF1SHA256, OaepPrivateDecryptingKey, OaepPublicEncryptingKey,
    PrivateDecryptingKey, PublicEncryptingKey,
};
use zeroize::Zeroizing;

use crate::{CallKey, EnvelopeError};

pub(super) fn seal(
    pk: &PublicEncryptingKey,
    key: &CallKey,
    label: &[u8],
) -> Result<Vec<u8>, EnvelopeError> {
    let oaep = OaepPublicEncryptingKey::new(pk.clone()).map_err(|_| EnvelopeError::SealFailed)?;
    let mut out = vec![0u8; oaep.ciphertext_size()];
    let n = oaep
        .encrypt(
            &OAEP_SHA256_MGF1SHA256,
            key.as_bytes(),
            &mut out,
            Some(label),
        )
        .map_err(|_| EnvelopeError::SealFailed)?
        .len();
    out.truncate(n);
    Ok(out)
}

pub(super) fn open(
    sk: &PrivateDecryptingKey,
    payload: &[u8],
    label: &[u8],
) -> Result<CallKey, EnvelopeError> {
    if payload.len() != sk.key_size_bytes() {
        return Err(EnvelopeError::BadLength);
    }
    // OaepPrivateDecryptingKey takes ownership; rebuilding it from the PKCS#8 would cost
    // more than a clone of the handle.
    let oaep =
        OaepPrivateDecryptingKey::new(sk.clone()).map_err(|_| EnvelopeError::DecryptionFailed)?;
    let mut out = Zeroizing::new(vec![0u8; oaep.min_output_size()]);
    let pt = oaep
        .decrypt(&OAEP_SHA256_MGF1SHA256, payload, &mut out, Some(label))
        .map_err(|_| EnvelopeError::DecryptionFailed)?;
    CallKey::from_slice(pt).ok_or(EnvelopeError::DecryptionFailed)
}

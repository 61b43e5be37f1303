//! Signed checkpoints: the directory's Ed25519 signature over (epoch, root hash, time), and the
//! directory's public identity that clients are configured with.

use std::fmt;

use aws_lc_rs::digest::{SHA256, digest};
use aws_lc_rs::signature::{ED25519, UnparsedPublicKey};
use serde::{Deserialize, Deserializer, Serialize, Serializer};

use crate::encoding::{b64_array, hex_array};
use crate::error::{Error, Result};

/// The context string every signed checkpoint starts with.
pub const CHECKPOINT_CONTEXT: &[u8] = b"oracle-calls/kt-checkpoint/v1";

/// Length of [`Checkpoint::signed_bytes`].
pub const CHECKPOINT_SIGNED_LEN: usize = CHECKPOINT_CONTEXT.len() + 8 + 32 + 8;

/// The directory's state at one epoch: what a checkpoint signature covers.
///
/// JSON: `{"epoch": 3, "rootHash": "<64 lower-case hex digits>", "timeMs": 1767225600000}`.
#[derive(Clone, Copy, PartialEq, Eq, Hash, Debug, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Checkpoint {
    /// The AKD epoch: 0 for the empty directory, +1 per publish that changed something.
    pub epoch: u64,
    /// The AKD tree's root hash at that epoch (BLAKE3, WhatsApp v1 configuration).
    #[serde(with = "hex_array")]
    pub root_hash: [u8; 32],
    /// When the directory published the epoch, milliseconds since the Unix epoch (UTC).
    pub time_ms: i64,
}

impl Checkpoint {
    /// The exact bytes the directory signs:
    /// `"oracle-calls/kt-checkpoint/v1" || u64be(epoch) || root_hash || i64be(time_ms)`
    /// (29 + 8 + 32 + 8 = 77 bytes, no separators, no length prefixes).
    pub fn signed_bytes(&self) -> [u8; CHECKPOINT_SIGNED_LEN] {
        let mut out = [0u8; CHECKPOINT_SIGNED_LEN];
        let parts: [&[u8]; 4] = [
            CHECKPOINT_CONTEXT,
            &self.epoch.to_be_bytes(),
            &self.root_hash,
            &self.time_ms.to_be_bytes(),
        ];
        let mut at = 0;
        for part in parts {
            if let Some(dst) = out.get_mut(at..at + part.len()) {
                dst.copy_from_slice(part);
            }
            at += part.len();
        }
        out
    }
}

/// A [`Checkpoint`] with the directory's Ed25519 signature over [`Checkpoint::signed_bytes`].
///
/// JSON: `{"checkpoint": {…}, "signature": "<64 bytes, unpadded base64url>", "keyId": "<32 hex>"}`.
#[derive(Clone, PartialEq, Eq, Debug, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct SignedCheckpoint {
    /// What is signed.
    pub checkpoint: Checkpoint,
    /// Ed25519 (RFC 8032) signature over `checkpoint.signed_bytes()`.
    #[serde(with = "b64_array")]
    pub signature: [u8; 64],
    /// The id of the signing key ([`DirectoryKeyId`]).
    pub key_id: DirectoryKeyId,
}

/// Identifies a directory signing key: the first 16 bytes of SHA-256 over the key's
/// SubjectPublicKeyInfo DER (RFC 8410: `302a300506032b6570032100 || key`), written as 32
/// lower-case hex digits — the same fingerprint rule as the oracle's `keyId`.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct DirectoryKeyId([u8; 16]);

impl DirectoryKeyId {
    /// The key id of an Ed25519 public key.
    pub fn of(ed25519_public_key: &[u8; 32]) -> Self {
        const SPKI_PREFIX: [u8; 12] = [
            0x30, 0x2a, 0x30, 0x05, 0x06, 0x03, 0x2b, 0x65, 0x70, 0x03, 0x21, 0x00,
        ];
        let mut spki = [0u8; 44];
        let (prefix, key) = spki.split_at_mut(12);
        prefix.copy_from_slice(&SPKI_PREFIX);
        key.copy_from_slice(ed25519_public_key);
        let hash = digest(&SHA256, &spki);
        let mut id = [0u8; 16];
        for (dst, src) in id.iter_mut().zip(hash.as_ref()) {
            *dst = *src;
        }
        Self(id)
    }
}

impl fmt::Display for DirectoryKeyId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&hex::encode(self.0))
    }
}

impl fmt::Debug for DirectoryKeyId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "DirectoryKeyId({self})")
    }
}

impl Serialize for DirectoryKeyId {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        hex_array::serialize(&self.0, s)
    }
}

impl<'de> Deserialize<'de> for DirectoryKeyId {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        hex_array::deserialize(d).map(Self)
    }
}

/// What a client or agent is configured with to trust a directory: its checkpoint signing key
/// (Ed25519) and its VRF public key (ECVRF-EDWARDS25519-SHA512-TAI, which hides DIDs in the
/// tree).
///
/// JSON: `{"signingKey": "<32 bytes base64url>", "vrfKey": "<32 bytes base64url>"}`; both keys
/// are checked when parsed.
#[derive(Clone, PartialEq, Eq, Debug, Serialize, Deserialize)]
#[serde(
    rename_all = "camelCase",
    try_from = "RawPublicKey",
    into = "RawPublicKey"
)]
pub struct DirectoryPublicKey {
    signing_key: [u8; 32],
    vrf_key: [u8; 32],
    key_id: DirectoryKeyId,
}

impl DirectoryPublicKey {
    /// A directory identity from its Ed25519 checkpoint key and its VRF public key.
    ///
    /// # Errors
    /// [`Error::InvalidKey`] if the VRF key is not a valid Edwards point of large order.
    pub fn new(signing_key: [u8; 32], vrf_key: [u8; 32]) -> Result<Self> {
        akd_core::ecvrf::VRFPublicKey::try_from(&vrf_key[..])
            .map_err(|_| Error::InvalidKey("VRF public key is not a valid Ed25519 point"))?;
        Ok(Self {
            signing_key,
            vrf_key,
            key_id: DirectoryKeyId::of(&signing_key),
        })
    }

    /// The Ed25519 key checkpoints are signed with.
    pub fn signing_key(&self) -> &[u8; 32] {
        &self.signing_key
    }

    /// The VRF public key lookup proofs are checked with.
    pub fn vrf_key(&self) -> &[u8; 32] {
        &self.vrf_key
    }

    /// The signing key's id, as named in [`SignedCheckpoint::key_id`].
    pub fn key_id(&self) -> DirectoryKeyId {
        self.key_id
    }
}

#[derive(Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct RawPublicKey {
    #[serde(with = "b64_array")]
    signing_key: [u8; 32],
    #[serde(with = "b64_array")]
    vrf_key: [u8; 32],
}

impl TryFrom<RawPublicKey> for DirectoryPublicKey {
    type Error = Error;
    fn try_from(raw: RawPublicKey) -> Result<Self> {
        Self::new(raw.signing_key, raw.vrf_key)
    }
}

impl From<DirectoryPublicKey> for RawPublicKey {
    fn from(key: DirectoryPublicKey) -> Self {
        Self {
            signing_key: key.signing_key,
            vrf_key: key.vrf_key,
        }
    }
}

/// Checks a checkpoint's signature under the directory key.
///
/// This checks one checkpoint alone; [`crate::Verifier`] adds the rollback and fork checks
/// against the checkpoints seen before.
///
/// # Errors
/// [`Error::UnknownKey`] if the checkpoint names another key, [`Error::BadSignature`] if the
/// signature does not verify.
pub fn verify_checkpoint(
    signed: &SignedCheckpoint,
    directory: &DirectoryPublicKey,
) -> Result<Checkpoint> {
    if signed.key_id != directory.key_id {
        return Err(Error::UnknownKey {
            key_id: signed.key_id.to_string(),
        });
    }
    UnparsedPublicKey::new(&ED25519, &directory.signing_key)
        .verify(&signed.checkpoint.signed_bytes(), &signed.signature)
        .map_err(|_| Error::BadSignature)?;
    Ok(signed.checkpoint)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use aws_lc_rs::signature::{Ed25519KeyPair, KeyPair as _};

    use super::*;

    fn key_pair() -> Ed25519KeyPair {
        Ed25519KeyPair::from_seed_unchecked(&[7u8; 32]).unwrap()
    }

    fn public(kp: &Ed25519KeyPair) -> DirectoryPublicKey {
        let signing: [u8; 32] = kp.public_key().as_ref().try_into().unwrap();
        // Any valid point serves as the VRF key here; reuse the signing key's.
        DirectoryPublicKey::new(signing, signing).unwrap()
    }

    fn sign(kp: &Ed25519KeyPair, checkpoint: Checkpoint) -> SignedCheckpoint {
        let signing: [u8; 32] = kp.public_key().as_ref().try_into().unwrap();
        SignedCheckpoint {
            checkpoint,
            signature: kp
                .sign(&checkpoint.signed_bytes())
                .as_ref()
                .try_into()
                .unwrap(),
            key_id: DirectoryKeyId::of(&signing),
        }
    }

    const CP: Checkpoint = Checkpoint {
        epoch: 0x0102,
        root_hash: [0xab; 32],
        time_ms: 1_767_225_600_000,
    };

    #[test]
    fn signed_bytes_are_the_documented_layout() {
        let b = CP.signed_bytes();
        let mut expected = b"oracle-calls/kt-checkpoint/v1".to_vec();
        expected.extend_from_slice(&[0, 0, 0, 0, 0, 0, 1, 2]);
        expected.extend_from_slice(&[0xab; 32]);
        expected.extend_from_slice(&1_767_225_600_000i64.to_be_bytes());
        assert_eq!(b.to_vec(), expected);
        assert_eq!(b.len(), 77);
    }

    #[test]
    fn checkpoint_json_snapshot() {
        let kp = key_pair();
        let signed = sign(&kp, CP);
        let json = serde_json::to_string(&signed).unwrap();
        let sig = crate::encoding::b64_encode(&signed.signature);
        let id = signed.key_id.to_string();
        assert_eq!(
            json,
            format!(
                r#"{{"checkpoint":{{"epoch":258,"rootHash":"{}","timeMs":1767225600000}},"signature":"{sig}","keyId":"{id}"}}"#,
                "ab".repeat(32)
            )
        );
        let back: SignedCheckpoint = serde_json::from_str(&json).unwrap();
        assert_eq!(back, signed);
        // Upper-case hex, short hashes and unknown fields are refused.
        for bad in [
            json.replace(&"ab".repeat(32), &"AB".repeat(32)),
            json.replace(&"ab".repeat(32), &"ab".repeat(31)),
            json.replace(r#""timeMs""#, r#""extra":1,"timeMs""#),
        ] {
            assert!(
                serde_json::from_str::<SignedCheckpoint>(&bad).is_err(),
                "{bad}"
            );
        }
    }

    #[test]
    fn signature_verifies_and_binds_every_field() {
        let kp = key_pair();
        let key = public(&kp);
        let signed = sign(&kp, CP);
        assert_eq!(verify_checkpoint(&signed, &key).unwrap(), CP);
        for tampered in [
            Checkpoint {
                epoch: CP.epoch + 1,
                ..CP
            },
            Checkpoint {
                root_hash: [0xac; 32],
                ..CP
            },
            Checkpoint {
                time_ms: CP.time_ms + 1,
                ..CP
            },
        ] {
            let forged = SignedCheckpoint {
                checkpoint: tampered,
                ..signed.clone()
            };
            assert!(matches!(
                verify_checkpoint(&forged, &key),
                Err(Error::BadSignature)
            ));
        }
    }

    #[test]
    fn another_key_is_refused() {
        let kp = key_pair();
        let other = Ed25519KeyPair::from_seed_unchecked(&[8u8; 32]).unwrap();
        let key = public(&kp);
        // Signed by another key that names itself: unknown key.
        assert!(matches!(
            verify_checkpoint(&sign(&other, CP), &key),
            Err(Error::UnknownKey { .. })
        ));
        // Signed by another key that claims the directory's key id: bad signature.
        let mut claimed = sign(&other, CP);
        claimed.key_id = key.key_id();
        assert!(matches!(
            verify_checkpoint(&claimed, &key),
            Err(Error::BadSignature)
        ));
    }

    #[test]
    fn public_key_json_round_trips_and_checks_the_vrf_key() {
        let key = public(&key_pair());
        let json = serde_json::to_string(&key).unwrap();
        assert!(json.starts_with(r#"{"signingKey":""#), "{json}");
        let back: DirectoryPublicKey = serde_json::from_str(&json).unwrap();
        assert_eq!(back, key);
        // The identity point (small order) is not a VRF key.
        let mut identity = [0u8; 32];
        identity[0] = 1;
        assert!(matches!(
            DirectoryPublicKey::new(*key.signing_key(), identity),
            Err(Error::InvalidKey(_))
        ));
    }
}

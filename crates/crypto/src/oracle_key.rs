//! Oracle key pairs: generation, PKCS#8 PEM, public keys and key ids.

use aws_lc_rs::encoding::{AsDer, Pkcs8V1Der, PublicKeyX509Der};
use aws_lc_rs::rsa::{KeySize, PrivateDecryptingKey, PublicEncryptingKey};
use k256::elliptic_curve::Generate as _;
use oracle_calls_proto::KeyScheme;
use pkcs8::der::Decode;
use pkcs8::der::pem::LineEnding;
use pkcs8::{DecodePrivateKey, EncodePrivateKey, EncodePublicKey, ObjectIdentifier};
use rand_core::CryptoRng;
use sha2::{Digest, Sha256};
use zeroize::Zeroizing;

use crate::KeyError;

const OID_EC_PUBLIC_KEY: ObjectIdentifier = ObjectIdentifier::new_unwrap("1.2.840.10045.2.1");
const OID_P256: ObjectIdentifier = ObjectIdentifier::new_unwrap("1.2.840.10045.3.1.7");
const OID_SECP256K1: ObjectIdentifier = ObjectIdentifier::new_unwrap("1.3.132.0.10");
const OID_X25519: ObjectIdentifier = ObjectIdentifier::new_unwrap("1.3.101.110");
const OID_RSA: ObjectIdentifier = ObjectIdentifier::new_unwrap("1.2.840.113549.1.1.1");

/// RFC 8410 PKCS#8 prefix of an X25519 private key (the 32 key bytes follow).
const X25519_PKCS8_PREFIX: [u8; 16] = [
    0x30, 0x2e, 0x02, 0x01, 0x00, 0x30, 0x05, 0x06, 0x03, 0x2b, 0x65, 0x6e, 0x04, 0x22, 0x04, 0x20,
];
/// RFC 8410 SPKI prefix of an X25519 public key (the 32 key bytes follow).
const X25519_SPKI_PREFIX: [u8; 12] = [
    0x30, 0x2a, 0x30, 0x05, 0x06, 0x03, 0x2b, 0x65, 0x6e, 0x03, 0x21, 0x00,
];

/// Smallest RSA modulus accepted.
pub const MIN_RSA_BITS: usize = 2048;

/// A public key's fingerprint: the first 16 bytes of SHA-256 of its SubjectPublicKeyInfo DER,
/// shown as 32 lower-case hex characters.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct KeyId(pub(crate) [u8; 16]);

impl KeyId {
    fn of_spki(spki_der: &[u8]) -> Self {
        let d = Sha256::digest(spki_der);
        let mut id = [0u8; 16];
        id.copy_from_slice(d.get(..16).unwrap_or(&[0u8; 16]));
        Self(id)
    }

    /// The 16 bytes.
    pub fn as_bytes(&self) -> &[u8; 16] {
        &self.0
    }
}

impl std::fmt::Display for KeyId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&hex::encode(self.0))
    }
}

impl std::fmt::Debug for KeyId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "KeyId({self})")
    }
}

/// An oracle's public key, for one [`KeyScheme`].
#[derive(Clone)]
pub struct OraclePublicKey {
    inner: PublicInner,
    spki_der: Vec<u8>,
    key_id: KeyId,
}

#[derive(Clone)]
pub(crate) enum PublicInner {
    P256(p256::PublicKey),
    X25519([u8; 32]),
    Rsa(PublicEncryptingKey),
    Secp256k1(k256::PublicKey),
}

impl OraclePublicKey {
    fn new(inner: PublicInner) -> Result<Self, KeyError> {
        let spki_der = match &inner {
            PublicInner::P256(pk) => pk
                .to_public_key_der()
                .map_err(|_| KeyError::Invalid)?
                .into_vec(),
            PublicInner::Secp256k1(pk) => pk
                .to_public_key_der()
                .map_err(|_| KeyError::Invalid)?
                .into_vec(),
            PublicInner::X25519(pk) => [X25519_SPKI_PREFIX.as_slice(), pk].concat(),
            PublicInner::Rsa(pk) => AsDer::<PublicKeyX509Der>::as_der(pk)
                .map_err(|_| KeyError::Invalid)?
                .as_ref()
                .to_vec(),
        };
        let key_id = KeyId::of_spki(&spki_der);
        Ok(Self {
            inner,
            spki_der,
            key_id,
        })
    }

    /// Parses a public key from its raw form (see [`Self::to_raw`]).
    ///
    /// # Errors
    /// [`KeyError::Invalid`], or [`KeyError::RsaTooSmall`].
    pub fn from_raw(scheme: KeyScheme, raw: &[u8]) -> Result<Self, KeyError> {
        let inner = match scheme {
            KeyScheme::HpkeP256 => PublicInner::P256(
                p256::PublicKey::from_sec1_bytes(raw).map_err(|_| KeyError::Invalid)?,
            ),
            KeyScheme::EciesSecp256k1 => PublicInner::Secp256k1(
                k256::PublicKey::from_sec1_bytes(raw).map_err(|_| KeyError::Invalid)?,
            ),
            KeyScheme::HpkeX25519 => {
                PublicInner::X25519(raw.try_into().map_err(|_| KeyError::Invalid)?)
            }
            KeyScheme::RsaOaep256 => {
                let pk = PublicEncryptingKey::from_der(raw).map_err(|_| KeyError::Invalid)?;
                if pk.key_size_bits() < MIN_RSA_BITS {
                    return Err(KeyError::RsaTooSmall {
                        bits: pk.key_size_bits(),
                    });
                }
                PublicInner::Rsa(pk)
            }
        };
        Self::new(inner)
    }

    /// A secp256k1 public key given as base58 (compressed or uncompressed SEC1), as ixo DID
    /// documents publish it.
    ///
    /// # Errors
    /// [`KeyError::Invalid`].
    pub fn from_secp256k1_base58(text: &str) -> Result<Self, KeyError> {
        let raw = bs58::decode(text)
            .into_vec()
            .map_err(|_| KeyError::Invalid)?;
        Self::from_raw(KeyScheme::EciesSecp256k1, &raw)
    }

    /// The raw form: P-256 uncompressed SEC1 (65 bytes), X25519 (32 bytes), secp256k1
    /// compressed SEC1 (33 bytes), RSA SubjectPublicKeyInfo DER.
    pub fn to_raw(&self) -> Vec<u8> {
        match &self.inner {
            PublicInner::P256(pk) => pk.to_sec1_bytes().to_vec(),
            PublicInner::X25519(pk) => pk.to_vec(),
            PublicInner::Secp256k1(pk) => {
                use k256::elliptic_curve::sec1::ToSec1Point;
                pk.to_sec1_point(true).as_bytes().to_vec()
            }
            PublicInner::Rsa(_) => self.spki_der.clone(),
        }
    }

    /// The scheme of envelopes sealed to this key.
    pub fn scheme(&self) -> KeyScheme {
        match self.inner {
            PublicInner::P256(_) => KeyScheme::HpkeP256,
            PublicInner::X25519(_) => KeyScheme::HpkeX25519,
            PublicInner::Rsa(_) => KeyScheme::RsaOaep256,
            PublicInner::Secp256k1(_) => KeyScheme::EciesSecp256k1,
        }
    }

    /// The key id.
    pub fn key_id(&self) -> KeyId {
        self.key_id
    }

    /// SubjectPublicKeyInfo DER.
    pub fn spki_der(&self) -> &[u8] {
        &self.spki_der
    }

    pub(crate) fn inner(&self) -> &PublicInner {
        &self.inner
    }
}

impl std::fmt::Debug for OraclePublicKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "OraclePublicKey({}, {})", self.scheme(), self.key_id)
    }
}

impl PartialEq for OraclePublicKey {
    fn eq(&self, other: &Self) -> bool {
        self.spki_der == other.spki_der
    }
}
impl Eq for OraclePublicKey {}

/// An oracle's private key with its public key. `Debug` shows only the scheme and key id;
/// the private key is zeroized on drop (aws-lc-rs RSA keys are freed by AWS-LC, which
/// clears them).
pub struct OracleKeyPair {
    inner: PrivateInner,
    public: OraclePublicKey,
}

pub(crate) enum PrivateInner {
    P256(p256::SecretKey),
    X25519(Zeroizing<[u8; 32]>),
    Rsa(PrivateDecryptingKey),
    Secp256k1(k256::SecretKey),
}

impl OracleKeyPair {
    /// Generates a key pair. RSA keys are 3072 bits and drawn from AWS-LC's own DRBG (it
    /// takes no RNG); the other schemes use `rng`.
    ///
    /// # Errors
    /// [`KeyError::Generation`].
    pub fn generate(scheme: KeyScheme, rng: &mut impl CryptoRng) -> Result<Self, KeyError> {
        let inner = match scheme {
            KeyScheme::HpkeP256 => PrivateInner::P256(p256::SecretKey::generate_from_rng(rng)),
            KeyScheme::EciesSecp256k1 => {
                PrivateInner::Secp256k1(k256::SecretKey::generate_from_rng(rng))
            }
            KeyScheme::HpkeX25519 => {
                let mut sk = Zeroizing::new([0u8; 32]);
                rng.fill_bytes(sk.as_mut());
                PrivateInner::X25519(sk)
            }
            KeyScheme::RsaOaep256 => PrivateInner::Rsa(
                PrivateDecryptingKey::generate(KeySize::Rsa3072)
                    .map_err(|_| KeyError::Generation)?,
            ),
        };
        Self::from_inner(inner)
    }

    fn from_inner(inner: PrivateInner) -> Result<Self, KeyError> {
        let public = match &inner {
            PrivateInner::P256(sk) => PublicInner::P256(sk.public_key()),
            PrivateInner::Secp256k1(sk) => PublicInner::Secp256k1(sk.public_key()),
            PrivateInner::X25519(sk) => PublicInner::X25519(x25519_public(sk)),
            PrivateInner::Rsa(sk) => {
                if sk.key_size_bits() < MIN_RSA_BITS {
                    return Err(KeyError::RsaTooSmall {
                        bits: sk.key_size_bits(),
                    });
                }
                PublicInner::Rsa(sk.public_key())
            }
        };
        Ok(Self {
            inner,
            public: OraclePublicKey::new(public)?,
        })
    }

    /// An `ecies-secp256k1` key pair from a raw 32-byte secp256k1 secret (big-endian scalar),
    /// the form existing ixo oracles hold their key in (and what `eciesjs`'s
    /// `PrivateKey.fromHex` takes).
    ///
    /// # Security
    /// The bytes are read in place, never copied; the caller keeps them in a zeroizing buffer.
    ///
    /// # Errors
    /// [`KeyError::Invalid`] when the scalar is zero or not below the curve order.
    pub fn from_secp256k1_bytes(secret: &[u8; 32]) -> Result<Self, KeyError> {
        let sk = k256::SecretKey::from_slice(secret).map_err(|_| KeyError::Invalid)?;
        Self::from_inner(PrivateInner::Secp256k1(sk))
    }

    /// Loads a PKCS#8 `PRIVATE KEY` PEM document (P-256, X25519, secp256k1 or RSA ≥ 2048).
    ///
    /// # Errors
    /// [`KeyError::Pem`], [`KeyError::UnsupportedAlgorithm`], [`KeyError::Invalid`],
    /// [`KeyError::RsaTooSmall`].
    pub fn from_pkcs8_pem(pem: &str) -> Result<Self, KeyError> {
        let (label, der) = pkcs8::der::pem::decode_vec(pem.as_bytes())
            .map_err(|_| KeyError::Pem("not a PEM document"))?;
        let der = Zeroizing::new(der);
        if label != "PRIVATE KEY" {
            return Err(KeyError::Pem("label is not `PRIVATE KEY`"));
        }
        Self::from_pkcs8_der(&der)
    }

    /// Loads a PKCS#8 DER private key.
    ///
    /// # Errors
    /// As [`Self::from_pkcs8_pem`].
    pub fn from_pkcs8_der(der: &[u8]) -> Result<Self, KeyError> {
        let info = pkcs8::PrivateKeyInfoRef::from_der(der)
            .map_err(|_| KeyError::Pem("not a PKCS#8 PrivateKeyInfo"))?;
        let inner = match info.algorithm.oid {
            OID_EC_PUBLIC_KEY => match info.algorithm.parameters_oid() {
                Ok(OID_P256) => PrivateInner::P256(
                    p256::SecretKey::from_pkcs8_der(der).map_err(|_| KeyError::Invalid)?,
                ),
                Ok(OID_SECP256K1) => PrivateInner::Secp256k1(
                    k256::SecretKey::from_pkcs8_der(der).map_err(|_| KeyError::Invalid)?,
                ),
                _ => return Err(KeyError::UnsupportedAlgorithm),
            },
            OID_X25519 => {
                let rest = der
                    .strip_prefix(X25519_PKCS8_PREFIX.as_slice())
                    .ok_or(KeyError::Invalid)?;
                let sk: [u8; 32] = rest.try_into().map_err(|_| KeyError::Invalid)?;
                PrivateInner::X25519(Zeroizing::new(sk))
            }
            OID_RSA => PrivateInner::Rsa(
                PrivateDecryptingKey::from_pkcs8(der).map_err(|_| KeyError::Invalid)?,
            ),
            _ => return Err(KeyError::UnsupportedAlgorithm),
        };
        Self::from_inner(inner)
    }

    /// The private key as a PKCS#8 PEM document.
    ///
    /// # Security
    /// This is the oracle's long-term secret: write it only to a file readable by its owner
    /// (mode 0600), never to a log.
    ///
    /// # Errors
    /// [`KeyError::Invalid`] if encoding fails.
    pub fn to_pkcs8_pem(&self) -> Result<Zeroizing<String>, KeyError> {
        let der: Zeroizing<Vec<u8>> = match &self.inner {
            PrivateInner::P256(sk) => Zeroizing::new(
                sk.to_pkcs8_der()
                    .map_err(|_| KeyError::Invalid)?
                    .as_bytes()
                    .to_vec(),
            ),
            PrivateInner::Secp256k1(sk) => Zeroizing::new(
                sk.to_pkcs8_der()
                    .map_err(|_| KeyError::Invalid)?
                    .as_bytes()
                    .to_vec(),
            ),
            PrivateInner::X25519(sk) => {
                Zeroizing::new([X25519_PKCS8_PREFIX.as_slice(), sk.as_slice()].concat())
            }
            PrivateInner::Rsa(sk) => Zeroizing::new(
                AsDer::<Pkcs8V1Der>::as_der(sk)
                    .map_err(|_| KeyError::Invalid)?
                    .as_ref()
                    .to_vec(),
            ),
        };
        pkcs8::der::pem::encode_string("PRIVATE KEY", LineEnding::LF, &der)
            .map(Zeroizing::new)
            .map_err(|_| KeyError::Invalid)
    }

    /// The public half.
    pub fn public_key(&self) -> OraclePublicKey {
        self.public.clone()
    }

    /// The scheme.
    pub fn scheme(&self) -> KeyScheme {
        self.public.scheme()
    }

    /// The key id of the public half.
    pub fn key_id(&self) -> KeyId {
        self.public.key_id()
    }

    pub(crate) fn inner(&self) -> &PrivateInner {
        &self.inner
    }
}

impl std::fmt::Debug for OracleKeyPair {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "OracleKeyPair({}, {}, ..)", self.scheme(), self.key_id())
    }
}

pub(crate) fn x25519_public(sk: &[u8; 32]) -> [u8; 32] {
    use hpke::Deserializable as _;
    use hpke::Kem as _;
    use hpke::Serializable as _;
    use hpke::kem::X25519HkdfSha256 as Kem;
    // A 32-byte string is always a valid X25519 private key (it is clamped on use).
    match <Kem as hpke::Kem>::PrivateKey::from_bytes(sk) {
        Ok(k) => {
            let pk = Kem::sk_to_pk(&k).to_bytes();
            let mut out = [0u8; 32];
            out.copy_from_slice(&pk);
            out
        }
        Err(_) => [0u8; 32],
    }
}

#[cfg(test)]
mod tests {
    use rand::SeedableRng;

    use super::*;

    #[test]
    fn pem_round_trip_every_scheme() {
        let mut rng = rand::rngs::StdRng::seed_from_u64(1);
        for scheme in KeyScheme::ALL {
            let kp = OracleKeyPair::generate(scheme, &mut rng).unwrap();
            let pem = kp.to_pkcs8_pem().unwrap();
            assert!(pem.starts_with("-----BEGIN PRIVATE KEY-----"), "{scheme}");
            let back = OracleKeyPair::from_pkcs8_pem(&pem).unwrap();
            assert_eq!(back.scheme(), scheme);
            assert_eq!(back.key_id(), kp.key_id());
            let pk = OraclePublicKey::from_raw(scheme, &kp.public_key().to_raw()).unwrap();
            assert_eq!(pk, kp.public_key());
            let dbg = format!("{kp:?}");
            assert!(dbg.contains(&kp.key_id().to_string()) && !dbg.contains("BEGIN"));
        }
    }

    #[test]
    fn a_raw_secp256k1_secret_becomes_its_key_pair() {
        let mut rng = rand::rngs::StdRng::seed_from_u64(2);
        let kp = OracleKeyPair::generate(KeyScheme::EciesSecp256k1, &mut rng).unwrap();
        let PrivateInner::Secp256k1(sk) = kp.inner() else {
            unreachable!()
        };
        let raw: Zeroizing<[u8; 32]> = Zeroizing::new(sk.to_bytes().into());
        let back = OracleKeyPair::from_secp256k1_bytes(&raw).unwrap();
        assert_eq!(back.scheme(), KeyScheme::EciesSecp256k1);
        assert_eq!(back.key_id(), kp.key_id());
        assert_eq!(back.public_key(), kp.public_key());
        // The PKCS#8 form loads back to the same key.
        let pem = back.to_pkcs8_pem().unwrap();
        assert_eq!(
            OracleKeyPair::from_pkcs8_pem(&pem).unwrap().key_id(),
            kp.key_id()
        );
        // Zero and the group order (and above) are not secret keys.
        let order = hex::decode("fffffffffffffffffffffffffffffffebaaedce6af48a03bbfd25e8cd0364141")
            .unwrap();
        for bad in [[0u8; 32], order.try_into().unwrap(), [0xff; 32]] {
            assert_eq!(
                OracleKeyPair::from_secp256k1_bytes(&bad).unwrap_err(),
                KeyError::Invalid
            );
        }
        // Debug shows no secret.
        assert!(!format!("{back:?}").contains(&hex::encode(raw.as_slice())));
    }

    #[test]
    fn rejects_bad_pem() {
        assert_eq!(
            OracleKeyPair::from_pkcs8_pem("hello").unwrap_err(),
            KeyError::Pem("not a PEM document")
        );
        let wrong_label = "-----BEGIN PUBLIC KEY-----\nAAAA\n-----END PUBLIC KEY-----\n";
        assert!(matches!(
            OracleKeyPair::from_pkcs8_pem(wrong_label),
            Err(KeyError::Pem(_))
        ));
        // An Ed25519 PKCS#8 key (RFC 8410 example shape): supported by nobody here.
        let mut ed = X25519_PKCS8_PREFIX;
        ed[10] = 0x70;
        let der = [ed.as_slice(), &[7u8; 32]].concat();
        assert_eq!(
            OracleKeyPair::from_pkcs8_der(&der).unwrap_err(),
            KeyError::UnsupportedAlgorithm
        );
        assert!(OraclePublicKey::from_raw(KeyScheme::HpkeP256, &[4u8; 65]).is_err());
        assert!(OraclePublicKey::from_raw(KeyScheme::HpkeX25519, &[4u8; 31]).is_err());
    }
}

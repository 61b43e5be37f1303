//! The per-call secret.

use rand_core::CryptoRng;
use subtle::ConstantTimeEq;
use zeroize::{Zeroize, ZeroizeOnDrop, Zeroizing};

/// Length of a call key in bytes.
pub const CALL_KEY_LEN: usize = 32;

/// 32 random bytes, new for every call. Zeroized on drop; not `Copy`, `Clone`, `Serialize`;
/// `Debug` prints `CallKey(..)`.
#[derive(Zeroize, ZeroizeOnDrop)]
pub struct CallKey([u8; CALL_KEY_LEN]);

impl CallKey {
    /// A fresh key from a cryptographically secure RNG.
    pub fn generate(rng: &mut impl CryptoRng) -> Self {
        let mut k = [0u8; CALL_KEY_LEN];
        rng.fill_bytes(&mut k);
        Self(k)
    }

    /// Takes ownership of raw key bytes (e.g. opened from an envelope, or test vectors).
    pub fn from_bytes(bytes: [u8; CALL_KEY_LEN]) -> Self {
        Self(bytes)
    }

    /// From a slice of exactly 32 bytes.
    pub(crate) fn from_slice(bytes: &[u8]) -> Option<Self> {
        let arr: [u8; CALL_KEY_LEN] = bytes.try_into().ok()?;
        Some(Self(arr))
    }

    /// The raw key bytes.
    ///
    /// # Security
    /// Exports the secret: use it only to hand the key to another implementation (tests,
    /// FFI), never to log or store it.
    pub fn dangerous_expose_bytes(&self) -> &[u8; CALL_KEY_LEN] {
        &self.0
    }

    pub(crate) fn as_bytes(&self) -> &[u8; CALL_KEY_LEN] {
        &self.0
    }

    /// The key as 64 lower-case hex characters: the PBKDF2 key material of
    /// [`crate::KeyDerivation::Pbkdf2`], and the legacy ixo envelope plaintext.
    pub(crate) fn to_hex(&self) -> Zeroizing<String> {
        Zeroizing::new(hex::encode(self.0))
    }

    /// Compares two keys in constant time.
    pub fn ct_eq(&self, other: &CallKey) -> bool {
        self.0.ct_eq(&other.0).into()
    }
}

impl std::fmt::Debug for CallKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("CallKey(..)")
    }
}

#[cfg(test)]
mod tests {
    use rand::SeedableRng;

    use super::*;

    #[test]
    fn debug_is_redacted() {
        let k = CallKey::from_bytes([0xab; 32]);
        let shown = format!("{k:?} {k:#?}");
        assert_eq!(shown, "CallKey(..) CallKey(..)");
        assert!(!shown.to_lowercase().contains("ab"));
    }

    #[test]
    fn fresh_keys_differ_and_compare() {
        let mut rng = rand::rngs::StdRng::seed_from_u64(7);
        let a = CallKey::generate(&mut rng);
        let b = CallKey::generate(&mut rng);
        assert!(!a.ct_eq(&b));
        assert!(a.ct_eq(&CallKey::from_bytes(*a.dangerous_expose_bytes())));
        assert_eq!(a.to_hex().len(), 64);
    }

    #[test]
    fn zeroize_clears_the_bytes() {
        let mut k = CallKey::from_bytes([0x5a; 32]);
        k.zeroize();
        assert_eq!(k.dangerous_expose_bytes(), &[0u8; 32]);
    }
}

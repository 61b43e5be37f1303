//! Key sets, derivation and the ratcheting keyring.

use std::num::NonZeroU32;

use aws_lc_rs::aead::{AES_128_GCM, LessSafeKey, UnboundKey};
use aws_lc_rs::{hkdf, pbkdf2};
use zeroize::Zeroizing;

use super::{DEFAULT_RATCHET_SALT, PBKDF2_ITERATIONS};
use crate::{CallKey, FrameError, KeyDerivation};

/// Keyring settings. The defaults match `livekit-client`'s `ExternalE2EEKeyProvider` (the
/// usual shared-key setup): 16 slots, no automatic ratchet, keys never marked invalid.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct KeyRingOptions {
    /// Salt for key derivation and ratchet (default `LKFrameEncryptionKey`).
    pub ratchet_salt: Vec<u8>,
    /// On a decryption failure, try up to this many ratchet steps ahead of the slot's key.
    /// The ratcheted keys are derived once per key and cached, so a stream of bad frames costs
    /// AES attempts, not key derivations.
    pub ratchet_window: u8,
    /// After more than this many consecutive failures a slot is marked invalid and its frames
    /// are dropped without trying, until a new key is set. `None` never marks it.
    pub failure_tolerance: Option<u32>,
    /// Number of key slots, 1..=256.
    pub keyring_size: u16,
}

impl Default for KeyRingOptions {
    fn default() -> Self {
        Self {
            ratchet_salt: DEFAULT_RATCHET_SALT.to_vec(),
            ratchet_window: 0,
            failure_tolerance: None,
            keyring_size: 16,
        }
    }
}

/// One derived key: the AES-128 key, and the material of the next ratchet step.
pub(super) struct KeySet {
    kdf: KeyDerivation,
    /// KDF(material, salt, 256 bits): the next ratchet material; its first 16 bytes are this
    /// key set's AES key (PBKDF2 block 1 and HKDF T(1) are both 32 bytes).
    derived: Zeroizing<[u8; 32]>,
    pub(super) cipher: LessSafeKey,
}

impl KeySet {
    pub(super) fn derive(
        kdf: KeyDerivation,
        material: &[u8],
        salt: &[u8],
    ) -> Result<Self, FrameError> {
        let mut derived = Zeroizing::new([0u8; 32]);
        match kdf {
            KeyDerivation::Pbkdf2 => {
                let iters = NonZeroU32::new(PBKDF2_ITERATIONS)
                    .ok_or(FrameError::BadOption("PBKDF2 iterations"))?;
                pbkdf2::derive(
                    pbkdf2::PBKDF2_HMAC_SHA256,
                    iters,
                    salt,
                    material,
                    derived.as_mut_slice(),
                );
            }
            KeyDerivation::Hkdf => {
                let prk = hkdf::Salt::new(hkdf::HKDF_SHA256, salt).extract(material);
                let info = [0u8; 128];
                let info: [&[u8]; 1] = [&info];
                prk.expand(&info, OutLen(32))
                    .and_then(|okm| okm.fill(derived.as_mut_slice()))
                    .map_err(|_| FrameError::BadOption("HKDF output length"))?;
            }
        }
        let cipher = aes_key(&derived)?;
        Ok(Self {
            kdf,
            derived,
            cipher,
        })
    }

    pub(super) fn ratchet(&self, salt: &[u8]) -> Result<Self, FrameError> {
        Self::derive(self.kdf, self.derived.as_slice(), salt)
    }

    #[cfg(test)]
    pub(super) fn aes_key(&self) -> &[u8] {
        self.derived.get(..16).unwrap_or_default()
    }

    #[cfg(test)]
    pub(super) fn next_material(&self) -> &[u8] {
        self.derived.as_slice()
    }
}

impl Clone for KeySet {
    fn clone(&self) -> Self {
        Self {
            kdf: self.kdf,
            derived: self.derived.clone(),
            // A key that was valid once stays valid.
            cipher: aes_key(&self.derived).unwrap_or_else(|_| unreachable_key()),
        }
    }
}

fn aes_key(derived: &[u8; 32]) -> Result<LessSafeKey, FrameError> {
    let k = derived
        .get(..16)
        .ok_or(FrameError::BadOption("key length"))?;
    UnboundKey::new(&AES_128_GCM, k)
        .map(LessSafeKey::new)
        .map_err(|_| FrameError::BadOption("key length"))
}

#[allow(clippy::unwrap_used, clippy::expect_used)]
fn unreachable_key() -> LessSafeKey {
    // 16 bytes is always a valid AES-128 key; this only exists to keep Clone infallible.
    LessSafeKey::new(UnboundKey::new(&AES_128_GCM, &[0u8; 16]).expect("16-byte AES key"))
}

struct OutLen(usize);
impl hkdf::KeyType for OutLen {
    fn len(&self) -> usize {
        self.0
    }
}

/// One keyring slot: its key, the cached ratchets ahead of it, and its failure count.
#[derive(Clone)]
pub(super) struct Slot {
    pub(super) keys: KeySet,
    pub(super) ahead: Vec<KeySet>,
    pub(super) failures: u32,
}

/// Key slots indexed by the frame's key-index byte. `Clone` gives an independent copy (the
/// native SDKs clone the shared key per participant, so ratchets are per participant).
#[derive(Clone)]
pub struct KeyRing {
    pub(super) opts: KeyRingOptions,
    pub(super) slots: Vec<Option<Slot>>,
    pub(super) current: u8,
}

impl KeyRing {
    /// An empty keyring.
    ///
    /// # Errors
    /// [`FrameError::BadOption`] if `keyring_size` is not 1..=256.
    pub fn new(opts: KeyRingOptions) -> Result<Self, FrameError> {
        if !(1..=256).contains(&opts.keyring_size) {
            return Err(FrameError::BadOption("keyring_size must be 1..=256"));
        }
        let slots = vec![None; usize::from(opts.keyring_size)];
        Ok(Self {
            opts,
            slots,
            current: 0,
        })
    }

    /// A keyring with the call key in slot 0, the current slot. HKDF reads the 32 raw bytes;
    /// PBKDF2 reads the 64-character lower-case hex string (DESIGN §4).
    ///
    /// # Errors
    /// [`FrameError::BadOption`].
    pub fn with_call_key(
        key: &CallKey,
        kdf: KeyDerivation,
        opts: KeyRingOptions,
    ) -> Result<Self, FrameError> {
        let mut ring = Self::new(opts)?;
        ring.set_call_key(0, key, kdf)?;
        Ok(ring)
    }

    /// Puts the call key into slot `index` (see [`Self::with_call_key`]).
    ///
    /// # Errors
    /// [`FrameError::KeyIndexOutOfRange`].
    pub fn set_call_key(
        &mut self,
        index: u8,
        key: &CallKey,
        kdf: KeyDerivation,
    ) -> Result<(), FrameError> {
        match kdf {
            KeyDerivation::Hkdf => self.set_key_material(index, kdf, key.as_bytes()),
            KeyDerivation::Pbkdf2 => self.set_key_material(index, kdf, key.to_hex().as_bytes()),
        }
    }

    /// Puts raw key material into slot `index` (what LiveKit's `setKey` does: a string's
    /// UTF-8 bytes with PBKDF2, a buffer with HKDF). Resets the slot's failures.
    ///
    /// # Errors
    /// [`FrameError::KeyIndexOutOfRange`].
    pub fn set_key_material(
        &mut self,
        index: u8,
        kdf: KeyDerivation,
        material: &[u8],
    ) -> Result<(), FrameError> {
        let keys = KeySet::derive(kdf, material, &self.opts.ratchet_salt)?;
        let slot = self.slot_entry(index)?;
        *slot = Some(Slot {
            keys,
            ahead: Vec::new(),
            failures: 0,
        });
        Ok(())
    }

    /// Ratchets slot `index` one step (LiveKit's `ratchetKey`): material' = KDF(material, 256).
    ///
    /// # Errors
    /// [`FrameError::KeyIndexOutOfRange`], [`FrameError::MissingKey`].
    pub fn ratchet(&mut self, index: u8) -> Result<(), FrameError> {
        let salt = self.opts.ratchet_salt.clone();
        let slot = self.slot_mut(index)?;
        let next = if slot.ahead.is_empty() {
            slot.keys.ratchet(&salt)?
        } else {
            slot.ahead.remove(0)
        };
        slot.keys = next;
        slot.failures = 0;
        Ok(())
    }

    /// Selects the slot new frames are encrypted with.
    ///
    /// # Errors
    /// [`FrameError::KeyIndexOutOfRange`], [`FrameError::MissingKey`].
    pub fn set_current_index(&mut self, index: u8) -> Result<(), FrameError> {
        self.slot_mut(index)?;
        self.current = index;
        Ok(())
    }

    /// The slot new frames are encrypted with.
    pub fn current_index(&self) -> u8 {
        self.current
    }

    /// The options.
    pub fn options(&self) -> &KeyRingOptions {
        &self.opts
    }

    fn slot_entry(&mut self, index: u8) -> Result<&mut Option<Slot>, FrameError> {
        self.slots
            .get_mut(usize::from(index))
            .ok_or(FrameError::KeyIndexOutOfRange(index))
    }

    pub(super) fn slot_mut(&mut self, index: u8) -> Result<&mut Slot, FrameError> {
        self.slot_entry(index)?
            .as_mut()
            .ok_or(FrameError::MissingKey(index))
    }

    pub(super) fn slot(&self, index: u8) -> Result<&Slot, FrameError> {
        self.slots
            .get(usize::from(index))
            .ok_or(FrameError::KeyIndexOutOfRange(index))?
            .as_ref()
            .ok_or(FrameError::MissingKey(index))
    }
}

impl std::fmt::Debug for KeyRing {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let set: Vec<usize> = (0..self.slots.len())
            .filter(|i| matches!(self.slots.get(*i), Some(Some(_))))
            .collect();
        f.debug_struct("KeyRing")
            .field("slots_set", &set)
            .field("current", &self.current)
            .field("opts", &self.opts)
            .finish_non_exhaustive()
    }
}

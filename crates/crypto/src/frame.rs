//! LiveKit-compatible frame end-to-end encryption.
//!
//! Each *encoded frame* (a whole Opus packet, a whole VP8 frame — never a single RTP packet)
//! is encrypted with AES-128-GCM. A codec-specific clear header stays readable (Opus 1 byte;
//! VP8 10 bytes on key frames, 3 on delta frames; VP9 none) and is the AAD. The output is
//!
//! ```text
//! header (N) | ciphertext | tag (16) | IV (12) | 0x0C | key index
//! ```
//!
//! byte-compatible with `livekit-client` and the native LiveKit SDKs (docs/PROTOCOL.md).
//! Keys come from a [`KeyRing`]: the call key feeds either HKDF (raw bytes) or PBKDF2 (the
//! hex string), and each slot can be ratcheted.
//!
//! ```
//! use oracle_calls_crypto::frame::{Decrypted, FrameDecryptor, FrameEncryptor, FrameKind, KeyRing, KeyRingOptions};
//! use oracle_calls_crypto::{CallKey, KeyDerivation};
//!
//! let mut rng = rand::rng();
//! let key = CallKey::generate(&mut rng);
//! let ring = KeyRing::with_call_key(&key, KeyDerivation::Hkdf, KeyRingOptions::default())?;
//! let mut tx = FrameEncryptor::new(ring.clone(), &mut rng);
//! let mut rx = FrameDecryptor::new(ring);
//! let opus = [0xfc, 1, 2, 3];
//! let sealed = tx.encrypt(FrameKind::Audio, &opus)?;
//! assert_eq!(sealed.len(), opus.len() + 30);
//! assert_eq!(rx.decrypt(FrameKind::Audio, &sealed)?, Decrypted::Frame(opus.to_vec()));
//! # Ok::<(), oracle_calls_crypto::FrameError>(())
//! ```

mod cryptor;
mod keyring;

pub use cryptor::{
    DecryptStats, Decrypted, EncryptedData, FrameDecryptor, FrameEncryptor, Outcome,
};
pub use keyring::{KeyRing, KeyRingOptions};

/// The default ratchet salt of every LiveKit SDK (also the key-derivation salt).
pub const DEFAULT_RATCHET_SALT: &[u8] = b"LKFrameEncryptionKey";
/// PBKDF2 iterations used by LiveKit.
pub const PBKDF2_ITERATIONS: u32 = 100_000;
/// AES-GCM IV length, also written in the trailer.
pub const IV_LEN: usize = 12;
/// AES-GCM tag length.
pub const TAG_LEN: usize = 16;
/// Bytes an encrypted frame adds: tag, IV, IV-length byte, key-index byte.
pub const FRAME_OVERHEAD: usize = TAG_LEN + IV_LEN + 2;

/// What kind of encoded frame, which decides its clear header.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum FrameKind {
    /// Any audio codec (Opus): 1 clear byte (the TOC byte).
    Audio,
    /// VP8: 10 clear bytes on key frames (byte 0 bit 0 is 0), 3 on delta frames.
    Vp8,
    /// VP9: nothing in the clear.
    Vp9,
}

impl FrameKind {
    /// Length of the clear header of `frame` (never more than the frame).
    pub fn clear_len(self, frame: &[u8]) -> usize {
        let n = match self {
            Self::Audio => 1,
            Self::Vp8 => match frame.first() {
                Some(b) if b & 1 == 0 => 10,
                _ => 3,
            },
            Self::Vp9 => 0,
        };
        n.min(frame.len())
    }
}

#[cfg(test)]
mod vector_tests;

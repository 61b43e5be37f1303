//! Frame encryption and decryption.

use aws_lc_rs::aead::{Aad, Nonce, Tag};
use rand_core::CryptoRng;

use super::keyring::{KeyRing, KeySet};
use super::{FRAME_OVERHEAD, FrameKind, IV_LEN, TAG_LEN};
use crate::FrameError;

/// A data packet encrypted as LiveKit's `EncryptedPacket` carries it (no AAD).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct EncryptedData {
    /// The 12-byte IV.
    pub iv: [u8; IV_LEN],
    /// The key slot used.
    pub key_index: u8,
    /// Ciphertext followed by the 16-byte tag.
    pub ciphertext: Vec<u8>,
}

/// The sending side: encrypts this participant's frames and data packets.
///
/// IVs are a random 64-bit prefix chosen when the encryptor is made, followed by a 32-bit
/// frame counter, so they never repeat under one key within an encryptor, and two encryptors
/// sharing a key collide only if their random prefixes do (2^-64). Receivers read the IV from
/// the trailer, so this interoperates with every LiveKit SDK.
pub struct FrameEncryptor {
    ring: KeyRing,
    prefix: [u8; 8],
    counter: u32,
}

impl FrameEncryptor {
    /// An encryptor using `ring`'s current slot.
    pub fn new(ring: KeyRing, rng: &mut impl CryptoRng) -> Self {
        let mut prefix = [0u8; 8];
        rng.fill_bytes(&mut prefix);
        Self {
            ring,
            prefix,
            counter: 0,
        }
    }

    /// Encrypts one encoded frame into a new buffer. Empty frames pass through unchanged
    /// (LiveKit does the same).
    ///
    /// # Errors
    /// [`FrameError::MissingKey`] if the current slot is empty, [`FrameError::NonceExhausted`]
    /// after 2^32 frames.
    pub fn encrypt(&mut self, kind: FrameKind, frame: &[u8]) -> Result<Vec<u8>, FrameError> {
        let mut out = Vec::with_capacity(frame.len() + FRAME_OVERHEAD);
        out.extend_from_slice(frame);
        self.encrypt_in_place(kind, &mut out)?;
        Ok(out)
    }

    /// Encrypts one encoded frame in place: the payload is encrypted where it lies and the tag
    /// and trailer are appended (reserve [`FRAME_OVERHEAD`] bytes to avoid a reallocation).
    ///
    /// # Errors
    /// As [`Self::encrypt`]; on error the frame is unchanged.
    pub fn encrypt_in_place(
        &mut self,
        kind: FrameKind,
        frame: &mut Vec<u8>,
    ) -> Result<(), FrameError> {
        if frame.is_empty() {
            return Ok(());
        }
        self.ring.slot(self.ring.current_index())?;
        let iv = self.next_iv()?;
        seal_in_place(&self.ring, kind, frame, iv)
    }

    /// Encrypts with a caller-chosen IV (for test vectors and LiveKit's IV layout).
    ///
    /// # Security
    /// Reusing an IV under one key breaks AES-GCM completely; only use IVs that are unique.
    ///
    /// # Errors
    /// [`FrameError::MissingKey`].
    pub fn dangerous_encrypt_with_iv(
        &self,
        kind: FrameKind,
        frame: &[u8],
        iv: [u8; IV_LEN],
    ) -> Result<Vec<u8>, FrameError> {
        let mut out = frame.to_vec();
        if !out.is_empty() {
            seal_in_place(&self.ring, kind, &mut out, iv)?;
        }
        Ok(out)
    }

    /// Encrypts a data packet payload (the protobuf bytes of `EncryptedPacketPayload`).
    ///
    /// # Errors
    /// As [`Self::encrypt`].
    pub fn encrypt_data(&mut self, payload: &[u8]) -> Result<EncryptedData, FrameError> {
        let iv = self.next_iv()?;
        let key_index = self.ring.current_index();
        let slot = self.ring.slot(key_index)?;
        let mut ciphertext = payload.to_vec();
        let tag = slot
            .keys
            .cipher
            .seal_in_place_separate_tag(
                Nonce::assume_unique_for_key(iv),
                Aad::empty(),
                &mut ciphertext,
            )
            .map_err(|_| FrameError::EncryptionFailed)?;
        ciphertext.extend_from_slice(tag.as_ref());
        Ok(EncryptedData {
            iv,
            key_index,
            ciphertext,
        })
    }

    /// The keyring, to set new keys or change the current slot.
    pub fn key_ring_mut(&mut self) -> &mut KeyRing {
        &mut self.ring
    }

    fn next_iv(&mut self) -> Result<[u8; IV_LEN], FrameError> {
        let n = self.counter;
        self.counter = n.checked_add(1).ok_or(FrameError::NonceExhausted)?;
        let mut iv = [0u8; IV_LEN];
        let (p, c) = iv.split_at_mut(8);
        p.copy_from_slice(&self.prefix);
        c.copy_from_slice(&n.to_be_bytes());
        Ok(iv)
    }
}

impl std::fmt::Debug for FrameEncryptor {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FrameEncryptor")
            .field("ring", &self.ring)
            .field("frames", &self.counter)
            .finish_non_exhaustive()
    }
}

fn seal_in_place(
    ring: &KeyRing,
    kind: FrameKind,
    frame: &mut Vec<u8>,
    iv: [u8; IV_LEN],
) -> Result<(), FrameError> {
    let key_index = ring.current_index();
    let slot = ring.slot(key_index)?;
    let n = kind.clear_len(frame);
    let (header, body) = frame.split_at_mut(n);
    let tag: Tag = slot
        .keys
        .cipher
        .seal_in_place_separate_tag(Nonce::assume_unique_for_key(iv), Aad::from(&*header), body)
        .map_err(|_| FrameError::EncryptionFailed)?;
    frame.reserve(FRAME_OVERHEAD);
    frame.extend_from_slice(tag.as_ref());
    frame.extend_from_slice(&iv);
    frame.push(IV_LEN as u8);
    frame.push(key_index);
    Ok(())
}

/// What [`FrameDecryptor::decrypt_in_place`] left in the buffer.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Outcome {
    /// The plaintext frame, ready for a decoder.
    Frame,
    /// An empty frame, passed through.
    Empty,
    /// A server-injected placeholder: drop it.
    ServerInjected,
}

/// The result of decrypting one frame.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Decrypted {
    /// The plaintext frame, ready for a decoder.
    Frame(Vec<u8>),
    /// An empty frame (e.g. DTX), passed through as LiveKit does.
    Empty,
    /// A placeholder the SFU injected (it ends with the room's SIF trailer). It is not from
    /// the sender and must not reach a decoder.
    ServerInjected,
}

/// Running counters of one remote sender's frames, so a receiver never goes silently deaf.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct DecryptStats {
    /// Frames decrypted.
    pub decrypted: u64,
    /// Frames that failed to decrypt (authentication failure, bad trailer, missing key).
    pub failed: u64,
    /// Frames dropped without trying because their key slot was marked invalid.
    pub dropped_invalid_key: u64,
    /// Server-injected frames dropped.
    pub server_injected: u64,
    /// Automatic ratchets that recovered a stream.
    pub ratchets: u64,
}

/// The receiving side for one remote sender.
pub struct FrameDecryptor {
    ring: KeyRing,
    sif_trailer: Option<Vec<u8>>,
    stats: DecryptStats,
}

impl FrameDecryptor {
    /// A decryptor with its own copy of the keyring.
    pub fn new(ring: KeyRing) -> Self {
        Self {
            ring,
            sif_trailer: None,
            stats: DecryptStats::default(),
        }
    }

    /// The room's server-injected-frame trailer (`JoinResponse.sif_trailer`).
    pub fn set_sif_trailer(&mut self, trailer: Vec<u8>) {
        self.sif_trailer = (!trailer.is_empty()).then_some(trailer);
    }

    /// Decrypts one encoded frame into a new buffer.
    ///
    /// # Errors
    /// [`FrameError::TooShort`], [`FrameError::BadIvLength`],
    /// [`FrameError::KeyIndexOutOfRange`], [`FrameError::MissingKey`],
    /// [`FrameError::InvalidKey`], [`FrameError::DecryptionFailed`]. Every error is counted in
    /// [`Self::stats`]; the frame must be dropped.
    pub fn decrypt(&mut self, kind: FrameKind, frame: &[u8]) -> Result<Decrypted, FrameError> {
        let mut buf = frame.to_vec();
        Ok(match self.decrypt_in_place(kind, &mut buf)? {
            Outcome::Frame => Decrypted::Frame(buf),
            Outcome::Empty => Decrypted::Empty,
            Outcome::ServerInjected => Decrypted::ServerInjected,
        })
    }

    /// Decrypts one encoded frame in place; on [`Outcome::Frame`] the buffer holds the
    /// plaintext frame.
    ///
    /// # Errors
    /// As [`Self::decrypt`]; on error the buffer's content is unspecified and must be dropped.
    pub fn decrypt_in_place(
        &mut self,
        kind: FrameKind,
        frame: &mut Vec<u8>,
    ) -> Result<Outcome, FrameError> {
        let r = self.decrypt_inner(kind, frame);
        match &r {
            Ok(Outcome::Frame) => self.stats.decrypted += 1,
            Ok(Outcome::ServerInjected) => self.stats.server_injected += 1,
            Ok(Outcome::Empty) => {}
            Err(FrameError::InvalidKey(_)) => self.stats.dropped_invalid_key += 1,
            Err(_) => self.stats.failed += 1,
        }
        r
    }

    fn decrypt_inner(
        &mut self,
        kind: FrameKind,
        frame: &mut Vec<u8>,
    ) -> Result<Outcome, FrameError> {
        if frame.is_empty() {
            return Ok(Outcome::Empty);
        }
        if let Some(t) = &self.sif_trailer
            && frame.len() >= t.len()
            && frame.ends_with(t)
        {
            return Ok(Outcome::ServerInjected);
        }
        let len = frame.len();
        let (&key_index, rest) = frame.split_last().ok_or(FrameError::TooShort { len })?;
        let (&iv_len, _) = rest.split_last().ok_or(FrameError::TooShort { len })?;
        if usize::from(iv_len) != IV_LEN {
            return Err(FrameError::BadIvLength(iv_len));
        }
        let n = kind.clear_len(frame);
        if len < n + FRAME_OVERHEAD {
            return Err(FrameError::TooShort { len });
        }
        let sealed_end = len - IV_LEN - 2;
        let iv: [u8; IV_LEN] = frame
            .get(sealed_end..len - 2)
            .and_then(|s| s.try_into().ok())
            .ok_or(FrameError::TooShort { len })?;
        frame.truncate(sealed_end);

        let window = self.ring.options().ratchet_window;
        let tolerance = self.ring.options().failure_tolerance;
        let slot = self.ring.slot_mut(key_index)?;
        if let Some(t) = tolerance
            && slot.failures > t
        {
            return Err(FrameError::InvalidKey(key_index));
        }
        // AES-GCM may scribble on a buffer it fails to open: keep the ciphertext only when a
        // ratchet search may need it again.
        let backup = (window > 0).then(|| frame.clone());
        if open_in_place(&slot.keys, n, frame, iv) {
            slot.failures = 0;
            return Ok(Outcome::Frame);
        }
        if let Some(sealed) = backup {
            let salt = self.ring.options().ratchet_salt.clone();
            let slot = self.ring.slot_mut(key_index)?;
            // Try the ratchets ahead of the slot's key, deriving each at most once per key.
            for step in 1..=usize::from(window) {
                if slot.ahead.len() < step {
                    let from = slot.ahead.last().unwrap_or(&slot.keys);
                    let next = from.ratchet(&salt)?;
                    slot.ahead.push(next);
                }
                frame.clear();
                frame.extend_from_slice(&sealed);
                let Some(keys) = slot.ahead.get(step - 1) else {
                    break;
                };
                if open_in_place(keys, n, frame, iv) {
                    let mut ahead = std::mem::take(&mut slot.ahead);
                    let keys = ahead.remove(step - 1);
                    ahead.drain(..step - 1);
                    slot.keys = keys;
                    slot.ahead = ahead;
                    slot.failures = 0;
                    self.ring.current = key_index;
                    self.stats.ratchets += step as u64;
                    return Ok(Outcome::Frame);
                }
            }
        }
        let slot = self.ring.slot_mut(key_index)?;
        slot.failures = slot.failures.saturating_add(1);
        Err(FrameError::DecryptionFailed(key_index))
    }

    /// Decrypts a data packet.
    ///
    /// # Errors
    /// [`FrameError::BadIvLength`], [`FrameError::KeyIndexOutOfRange`],
    /// [`FrameError::MissingKey`], [`FrameError::DecryptionFailed`].
    pub fn decrypt_data(
        &mut self,
        iv: &[u8],
        key_index: u8,
        ciphertext: &[u8],
    ) -> Result<Vec<u8>, FrameError> {
        let iv: [u8; IV_LEN] = iv
            .try_into()
            .map_err(|_| FrameError::BadIvLength(u8::try_from(iv.len()).unwrap_or(u8::MAX)))?;
        if ciphertext.len() < TAG_LEN {
            return Err(FrameError::TooShort {
                len: ciphertext.len(),
            });
        }
        let slot = self.ring.slot(key_index)?;
        let mut buf = ciphertext.to_vec();
        let n = slot
            .keys
            .cipher
            .open_in_place(Nonce::assume_unique_for_key(iv), Aad::empty(), &mut buf)
            .map_err(|_| FrameError::DecryptionFailed(key_index))?
            .len();
        buf.truncate(n);
        Ok(buf)
    }

    /// Counters so far.
    pub fn stats(&self) -> DecryptStats {
        self.stats
    }

    /// The keyring, to set new keys.
    pub fn key_ring_mut(&mut self) -> &mut KeyRing {
        &mut self.ring
    }
}

impl std::fmt::Debug for FrameDecryptor {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FrameDecryptor")
            .field("ring", &self.ring)
            .field("stats", &self.stats)
            .finish_non_exhaustive()
    }
}

/// Opens `frame` = header (n) | ciphertext | tag in place with `keys`; on success truncates
/// it to header | plaintext.
fn open_in_place(keys: &KeySet, n: usize, frame: &mut Vec<u8>, iv: [u8; IV_LEN]) -> bool {
    if frame.len() < n {
        return false;
    }
    let (header, sealed) = frame.split_at_mut(n);
    let pt_len = match keys.cipher.open_in_place(
        Nonce::assume_unique_for_key(iv),
        Aad::from(&*header),
        sealed,
    ) {
        Ok(pt) => pt.len(),
        Err(_) => return false,
    };
    frame.truncate(n + pt_len);
    true
}

#[cfg(test)]
mod tests {
    use rand::SeedableRng;
    use rand::rngs::StdRng;

    use super::*;
    use crate::frame::KeyRingOptions;
    use crate::{CallKey, KeyDerivation};

    fn pair(opts: KeyRingOptions) -> (FrameEncryptor, FrameDecryptor) {
        let mut rng = StdRng::seed_from_u64(9);
        let key = CallKey::generate(&mut rng);
        let ring = KeyRing::with_call_key(&key, KeyDerivation::Hkdf, opts).unwrap();
        (
            FrameEncryptor::new(ring.clone(), &mut rng),
            FrameDecryptor::new(ring),
        )
    }

    const OPUS: [u8; 5] = [0xfc, 1, 2, 3, 4];

    #[test]
    fn round_trip_kinds_and_clear_headers() {
        let (mut tx, mut rx) = pair(KeyRingOptions::default());
        let key_vp8 = [
            0x10, 0x02, 0x00, 0x9d, 0x01, 0x2a, 8, 0, 8, 0, 0xaa, 0xbb, 0xcc,
        ];
        let delta_vp8 = [0x31, 0x01, 0x00, 0x40, 0x41];
        for (k, f, n) in [
            (FrameKind::Audio, &OPUS[..], 1),
            (FrameKind::Vp8, &key_vp8[..], 10),
            (FrameKind::Vp8, &delta_vp8[..], 3),
            (FrameKind::Vp9, &delta_vp8[..], 0),
            (FrameKind::Audio, &[0xfc][..], 1),
        ] {
            let e = tx.encrypt(k, f).unwrap();
            assert_eq!(e.len(), f.len() + FRAME_OVERHEAD);
            assert_eq!(&e[..n], &f[..n], "clear header stays readable");
            assert_eq!(&e[e.len() - 2..], &[12, 0]);
            assert_eq!(rx.decrypt(k, &e).unwrap(), Decrypted::Frame(f.to_vec()));
        }
        assert_eq!(tx.encrypt(FrameKind::Audio, &[]).unwrap(), Vec::<u8>::new());
        assert_eq!(rx.decrypt(FrameKind::Audio, &[]).unwrap(), Decrypted::Empty);
        assert_eq!(rx.stats().decrypted, 5);
    }

    #[test]
    fn ivs_never_repeat() {
        let (mut tx, _) = pair(KeyRingOptions::default());
        let mut seen = std::collections::HashSet::new();
        for _ in 0..10_000 {
            let e = tx.encrypt(FrameKind::Audio, &OPUS).unwrap();
            let iv = e[e.len() - 14..e.len() - 2].to_vec();
            assert!(seen.insert(iv));
        }
        let d = tx.encrypt_data(b"x").unwrap();
        assert!(seen.insert(d.iv.to_vec()));
        tx.counter = u32::MAX;
        assert_eq!(
            tx.encrypt(FrameKind::Audio, &OPUS).unwrap_err(),
            FrameError::NonceExhausted
        );
    }

    #[test]
    fn every_peer_error_is_typed_and_counted() {
        let (mut tx, mut rx) = pair(KeyRingOptions::default());
        let good = tx.encrypt(FrameKind::Audio, &OPUS).unwrap();
        let mut bad_iv = good.clone();
        let l = bad_iv.len();
        bad_iv[l - 2] = 16;
        assert_eq!(
            rx.decrypt(FrameKind::Audio, &bad_iv).unwrap_err(),
            FrameError::BadIvLength(16)
        );
        assert_eq!(
            rx.decrypt(FrameKind::Audio, &[1]).unwrap_err(),
            FrameError::TooShort { len: 1 }
        );
        assert_eq!(
            rx.decrypt(FrameKind::Audio, &good[good.len() - 20..])
                .unwrap_err(),
            FrameError::TooShort { len: 20 }
        );
        let mut kid = good.clone();
        kid[l - 1] = 200;
        assert_eq!(
            rx.decrypt(FrameKind::Audio, &kid).unwrap_err(),
            FrameError::KeyIndexOutOfRange(200)
        );
        kid[l - 1] = 3;
        assert_eq!(
            rx.decrypt(FrameKind::Audio, &kid).unwrap_err(),
            FrameError::MissingKey(3)
        );
        let mut header = good.clone();
        header[0] ^= 1;
        assert_eq!(
            rx.decrypt(FrameKind::Audio, &header).unwrap_err(),
            FrameError::DecryptionFailed(0)
        );
        let mut body = good.clone();
        body[2] ^= 0x80;
        assert_eq!(
            rx.decrypt(FrameKind::Audio, &body).unwrap_err(),
            FrameError::DecryptionFailed(0)
        );
        // A frame under another key.
        let (mut other, _) = {
            let mut rng = StdRng::seed_from_u64(10);
            let ring = KeyRing::with_call_key(
                &CallKey::generate(&mut rng),
                KeyDerivation::Hkdf,
                KeyRingOptions::default(),
            )
            .unwrap();
            (FrameEncryptor::new(ring.clone(), &mut rng), ())
        };
        let foreign = other.encrypt(FrameKind::Audio, &OPUS).unwrap();
        assert_eq!(
            rx.decrypt(FrameKind::Audio, &foreign).unwrap_err(),
            FrameError::DecryptionFailed(0)
        );
        let s = rx.stats();
        assert_eq!((s.failed, s.decrypted), (8, 0));
        assert_eq!(
            rx.decrypt(FrameKind::Audio, &good).unwrap(),
            Decrypted::Frame(OPUS.to_vec())
        );
    }

    #[test]
    fn server_injected_frames_are_recognised_and_dropped() {
        let (mut tx, mut rx) = pair(KeyRingOptions::default());
        let trailer = b"abcdefghijklmnopqrstuvwxyz0123456789ABCDEFG".to_vec();
        rx.set_sif_trailer(trailer.clone());
        let mut silence = vec![0xf8, 0xff, 0xfe];
        silence.extend_from_slice(&trailer);
        assert_eq!(
            rx.decrypt(FrameKind::Audio, &silence).unwrap(),
            Decrypted::ServerInjected
        );
        assert_eq!(rx.stats().server_injected, 1);
        let e = tx.encrypt(FrameKind::Audio, &OPUS).unwrap();
        assert_eq!(
            rx.decrypt(FrameKind::Audio, &e).unwrap(),
            Decrypted::Frame(OPUS.to_vec())
        );
    }

    #[test]
    fn auto_ratchet_follows_a_ratcheted_sender_within_the_window() {
        let opts = KeyRingOptions {
            ratchet_window: 3,
            ..KeyRingOptions::default()
        };
        let (mut tx, mut rx) = pair(opts);
        tx.key_ring_mut().ratchet(0).unwrap();
        tx.key_ring_mut().ratchet(0).unwrap();
        let e = tx.encrypt(FrameKind::Audio, &OPUS).unwrap();
        assert_eq!(
            rx.decrypt(FrameKind::Audio, &e).unwrap(),
            Decrypted::Frame(OPUS.to_vec())
        );
        assert_eq!(rx.stats().ratchets, 2);
        // Four steps ahead of the receiver now: outside a window of 3 from its new key? 1+3 = 4 is inside.
        for _ in 0..4 {
            tx.key_ring_mut().ratchet(0).unwrap();
        }
        let e = tx.encrypt(FrameKind::Audio, &OPUS).unwrap();
        assert_eq!(
            rx.decrypt(FrameKind::Audio, &e).unwrap_err(),
            FrameError::DecryptionFailed(0)
        );
        // Without a window the receiver does not follow.
        let (mut tx, mut rx) = pair(KeyRingOptions::default());
        tx.key_ring_mut().ratchet(0).unwrap();
        let e = tx.encrypt(FrameKind::Audio, &OPUS).unwrap();
        assert!(rx.decrypt(FrameKind::Audio, &e).is_err());
        rx.key_ring_mut().ratchet(0).unwrap();
        assert!(rx.decrypt(FrameKind::Audio, &e).is_ok());
    }

    #[test]
    fn failure_tolerance_drops_without_trying_until_a_new_key() {
        let opts = KeyRingOptions {
            failure_tolerance: Some(2),
            ..KeyRingOptions::default()
        };
        let (mut tx, mut rx) = pair(opts);
        let mut bad = tx.encrypt(FrameKind::Audio, &OPUS).unwrap();
        bad[1] ^= 1;
        for _ in 0..3 {
            assert_eq!(
                rx.decrypt(FrameKind::Audio, &bad).unwrap_err(),
                FrameError::DecryptionFailed(0)
            );
        }
        let good = tx.encrypt(FrameKind::Audio, &OPUS).unwrap();
        assert_eq!(
            rx.decrypt(FrameKind::Audio, &good).unwrap_err(),
            FrameError::InvalidKey(0)
        );
        assert_eq!(rx.stats().dropped_invalid_key, 1);
        rx.key_ring_mut().ratchet(0).unwrap();
        tx.key_ring_mut().ratchet(0).unwrap();
        let good = tx.encrypt(FrameKind::Audio, &OPUS).unwrap();
        assert!(rx.decrypt(FrameKind::Audio, &good).is_ok());
    }

    #[test]
    fn data_packets_round_trip_and_fail_typed() {
        let (mut tx, mut rx) = pair(KeyRingOptions::default());
        let d = tx.encrypt_data(b"hello").unwrap();
        assert_eq!(
            rx.decrypt_data(&d.iv, d.key_index, &d.ciphertext).unwrap(),
            b"hello"
        );
        assert_eq!(
            rx.decrypt_data(&d.iv[..8], 0, &d.ciphertext).unwrap_err(),
            FrameError::BadIvLength(8)
        );
        assert_eq!(
            rx.decrypt_data(&d.iv, 5, &d.ciphertext).unwrap_err(),
            FrameError::MissingKey(5)
        );
        let mut ct = d.ciphertext.clone();
        ct[0] ^= 1;
        assert_eq!(
            rx.decrypt_data(&d.iv, 0, &ct).unwrap_err(),
            FrameError::DecryptionFailed(0)
        );
        assert!(matches!(
            rx.decrypt_data(&d.iv, 0, &[1, 2]).unwrap_err(),
            FrameError::TooShort { .. }
        ));
    }

    #[test]
    fn keyring_options_are_checked() {
        assert!(
            KeyRing::new(KeyRingOptions {
                keyring_size: 0,
                ..KeyRingOptions::default()
            })
            .is_err()
        );
        assert!(
            KeyRing::new(KeyRingOptions {
                keyring_size: 257,
                ..KeyRingOptions::default()
            })
            .is_err()
        );
        let mut r = KeyRing::new(KeyRingOptions {
            keyring_size: 256,
            ..KeyRingOptions::default()
        })
        .unwrap();
        assert_eq!(
            r.set_current_index(255).unwrap_err(),
            FrameError::MissingKey(255)
        );
        r.set_key_material(255, KeyDerivation::Hkdf, b"k").unwrap();
        r.set_current_index(255).unwrap();
        let small = KeyRing::new(KeyRingOptions {
            keyring_size: 2,
            ..KeyRingOptions::default()
        })
        .unwrap();
        let mut small = small;
        assert_eq!(
            small
                .set_key_material(2, KeyDerivation::Hkdf, b"k")
                .unwrap_err(),
            FrameError::KeyIndexOutOfRange(2)
        );
        assert!(!format!("{r:?}").contains("derived"));
    }
}

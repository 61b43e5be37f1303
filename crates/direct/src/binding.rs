//! The per-call binding: an ephemeral P-256 key exchange carried inside the encrypted
//! `m.call.invite` and `m.call.answer`, bound to the call id, both parties' identities and both
//! DTLS fingerprints, and a key confirmation each side proves after media connects.
//!
//! ```text
//! lp(x)  = u16be(len(x)) || x                       (x at most 65535 bytes)
//! salt   = nonce_caller (32) || nonce_callee (32)
//! ikm    = x-coordinate of ECDH(own ephemeral, peer ephemeral) (32)
//! info   = "oracle-calls/direct/v1"
//!          || lp(call_id) || lp(caller_user) || lp(caller_device) || lp(caller_ed25519)
//!          || lp(callee_user) || lp(callee_device) || lp(callee_ed25519)
//!          || lp(fp_offer) || lp(fp_answer)
//! K_call = HKDF-SHA256(salt, ikm, info), 32 bytes
//! confirm(role) = HMAC-SHA256(K_call, "oracle-calls/direct/v1 confirm" || role || fp_local || fp_remote)
//! ```
//!
//! Strings are their UTF-8 bytes, Ed25519 keys their 32 raw bytes, fingerprints the 32 raw bytes
//! of the SDP's `a=fingerprint:sha-256`. `role` is 0x01 for the caller, 0x02 for the callee;
//! `fp_local` is the fingerprint of the side that computes the MAC.

use std::fmt;

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use hkdf::Hkdf;
use hmac::{Hmac, KeyInit as _, Mac as _};
use p256::elliptic_curve::Generate as _;
use rand_core::CryptoRng;
use sha2::Sha256;
use subtle::ConstantTimeEq as _;
use zeroize::Zeroizing;

use crate::error::{BindingError, ExtensionError};

/// The HKDF `info` prefix.
pub const KDF_LABEL: &[u8] = b"oracle-calls/direct/v1";
/// The key confirmation's HMAC label.
pub const CONFIRM_LABEL: &[u8] = b"oracle-calls/direct/v1 confirm";
/// Bytes of a nonce.
pub const NONCE_LEN: usize = 32;
/// Bytes of an uncompressed SEC1 P-256 public key (`0x04 || x || y`).
pub const PUBLIC_KEY_LEN: usize = 65;

/// Which end of the call.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Role {
    /// Sent the invite.
    Caller,
    /// Answered it.
    Callee,
}

impl Role {
    /// The role byte of the confirmation MAC: 0x01 caller, 0x02 callee.
    pub fn byte(self) -> u8 {
        match self {
            Role::Caller => 0x01,
            Role::Callee => 0x02,
        }
    }

    /// The other end.
    pub fn peer(self) -> Role {
        match self {
            Role::Caller => Role::Callee,
            Role::Callee => Role::Caller,
        }
    }
}

/// A 32-byte per-call nonce (public).
#[derive(Clone, Copy, PartialEq, Eq)]
pub struct Nonce([u8; NONCE_LEN]);

impl Nonce {
    /// A fresh random nonce.
    pub fn random(rng: &mut impl CryptoRng) -> Self {
        let mut b = [0u8; NONCE_LEN];
        rng.fill_bytes(&mut b);
        Self(b)
    }

    /// A nonce from its bytes.
    pub fn from_bytes(bytes: [u8; NONCE_LEN]) -> Self {
        Self(bytes)
    }

    /// Its bytes.
    pub fn as_bytes(&self) -> &[u8; NONCE_LEN] {
        &self.0
    }

    /// Its wire form: base64url without padding (43 chars).
    pub fn to_base64url(&self) -> String {
        URL_SAFE_NO_PAD.encode(self.0)
    }

    /// Parses the wire form.
    ///
    /// # Errors
    /// [`ExtensionError::BadBase64`] or [`ExtensionError::WrongLength`] (field `nonce`).
    pub fn from_base64url(text: &str) -> Result<Self, ExtensionError> {
        let raw = decode_b64("nonce", text)?;
        let bytes: [u8; NONCE_LEN] =
            raw.as_slice()
                .try_into()
                .map_err(|_| ExtensionError::WrongLength {
                    field: "nonce",
                    expected: NONCE_LEN,
                    actual: raw.len(),
                })?;
        Ok(Self(bytes))
    }
}

impl fmt::Debug for Nonce {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Nonce({})", hex::encode(self.0))
    }
}

/// An ephemeral P-256 public key, always a valid non-identity point.
#[derive(Clone, PartialEq, Eq)]
pub struct EphemeralPublicKey(p256::PublicKey);

impl EphemeralPublicKey {
    /// Parses an uncompressed SEC1 point (`0x04 || x || y`, 65 bytes). Compressed points, the
    /// identity and points off the curve are refused.
    ///
    /// # Errors
    /// [`ExtensionError::WrongLength`] for another length, [`ExtensionError::InvalidPublicKey`]
    /// for a 65-byte value that is not such a point.
    pub fn from_sec1_uncompressed(bytes: &[u8]) -> Result<Self, ExtensionError> {
        if bytes.len() != PUBLIC_KEY_LEN {
            return Err(ExtensionError::WrongLength {
                field: "dh",
                expected: PUBLIC_KEY_LEN,
                actual: bytes.len(),
            });
        }
        if bytes.first() != Some(&0x04) {
            return Err(ExtensionError::InvalidPublicKey);
        }
        p256::PublicKey::from_sec1_bytes(bytes)
            .map(Self)
            .map_err(|_| ExtensionError::InvalidPublicKey)
    }

    /// Its uncompressed SEC1 form (65 bytes).
    pub fn to_sec1_uncompressed(&self) -> Vec<u8> {
        self.0.to_sec1_bytes().into_vec()
    }

    /// Its wire form: base64url without padding of the uncompressed point (87 chars).
    pub fn to_base64url(&self) -> String {
        URL_SAFE_NO_PAD.encode(self.to_sec1_uncompressed())
    }

    /// Parses the wire form.
    ///
    /// # Errors
    /// As [`Self::from_sec1_uncompressed`], and [`ExtensionError::BadBase64`].
    pub fn from_base64url(text: &str) -> Result<Self, ExtensionError> {
        Self::from_sec1_uncompressed(&decode_b64("dh", text)?)
    }
}

impl fmt::Debug for EphemeralPublicKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "EphemeralPublicKey({})", self.to_base64url())
    }
}

/// What one side puts into its invite or answer: its ephemeral public key and nonce.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DirectExtension {
    /// The ephemeral P-256 public key.
    pub dh: EphemeralPublicKey,
    /// The 32-byte nonce.
    pub nonce: Nonce,
}

/// One side's ephemeral key pair and nonce for one call. The private key is zeroized on drop
/// (p256's `SecretKey` does it) and never leaves this type.
pub struct EphemeralKeyPair {
    secret: p256::SecretKey,
    public: EphemeralPublicKey,
    nonce: Nonce,
}

impl EphemeralKeyPair {
    /// A fresh key pair and nonce.
    pub fn generate(rng: &mut impl CryptoRng) -> Self {
        let secret = p256::SecretKey::generate_from_rng(rng);
        let public = EphemeralPublicKey(secret.public_key());
        Self {
            secret,
            public,
            nonce: Nonce::random(rng),
        }
    }

    /// A key pair from a fixed private scalar (test vectors only).
    ///
    /// # Errors
    /// [`BindingError::InvalidPublicKey`] when the scalar is zero or not below the group order.
    pub fn dangerous_from_secret_bytes(
        secret: &[u8; 32],
        nonce: Nonce,
    ) -> Result<Self, BindingError> {
        let secret =
            p256::SecretKey::from_slice(secret).map_err(|_| BindingError::InvalidPublicKey)?;
        let public = EphemeralPublicKey(secret.public_key());
        Ok(Self {
            secret,
            public,
            nonce,
        })
    }

    /// The public half.
    pub fn public(&self) -> &EphemeralPublicKey {
        &self.public
    }

    /// The nonce.
    pub fn nonce(&self) -> &Nonce {
        &self.nonce
    }

    /// What goes into our invite or answer.
    pub fn extension(&self) -> DirectExtension {
        DirectExtension {
            dh: self.public.clone(),
            nonce: self.nonce,
        }
    }
}

impl fmt::Debug for EphemeralKeyPair {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("EphemeralKeyPair")
            .field("public", &self.public)
            .field("nonce", &self.nonce)
            .finish_non_exhaustive()
    }
}

/// The 32 raw bytes of a sha-256 DTLS certificate fingerprint.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct DtlsFingerprint([u8; 32]);

impl DtlsFingerprint {
    /// A fingerprint from its bytes.
    pub fn from_bytes(bytes: [u8; 32]) -> Self {
        Self(bytes)
    }

    /// Its bytes.
    pub fn as_bytes(&self) -> &[u8; 32] {
        &self.0
    }

    /// Parses the value of an `a=fingerprint:` attribute, `sha-256 AB:CD:…` (hash name
    /// case-insensitive, 32 hex bytes of either case separated by colons).
    ///
    /// # Errors
    /// [`BindingError::UnsupportedFingerprintHash`] for another hash function,
    /// [`BindingError::MalformedFingerprint`] for anything else that is wrong.
    pub fn from_attribute_value(value: &str) -> Result<Self, BindingError> {
        let mut parts = value.trim().split_ascii_whitespace();
        let hash = parts.next().ok_or(BindingError::MalformedFingerprint)?;
        let hex_part = parts.next().ok_or(BindingError::MalformedFingerprint)?;
        if parts.next().is_some() {
            return Err(BindingError::MalformedFingerprint);
        }
        if !hash.eq_ignore_ascii_case("sha-256") {
            return Err(BindingError::UnsupportedFingerprintHash(
                hash.to_ascii_lowercase(),
            ));
        }
        let mut out = [0u8; 32];
        let mut n = 0usize;
        for byte in hex_part.split(':') {
            let slot = out.get_mut(n).ok_or(BindingError::MalformedFingerprint)?;
            if byte.len() != 2 {
                return Err(BindingError::MalformedFingerprint);
            }
            *slot = u8::from_str_radix(byte, 16).map_err(|_| BindingError::MalformedFingerprint)?;
            n += 1;
        }
        if n != 32 {
            return Err(BindingError::MalformedFingerprint);
        }
        Ok(Self(out))
    }

    /// The sha-256 fingerprint of an SDP: every `a=fingerprint:` line (session or media level)
    /// must be sha-256 and all of them equal.
    ///
    /// # Errors
    /// [`BindingError::MissingFingerprint`], [`BindingError::ConflictingFingerprints`], or
    /// the errors of [`Self::from_attribute_value`].
    pub fn from_sdp(sdp: &str) -> Result<Self, BindingError> {
        let mut found: Option<Self> = None;
        for line in sdp.lines() {
            let Some(value) = line.trim_end_matches('\r').strip_prefix("a=fingerprint:") else {
                continue;
            };
            let fp = Self::from_attribute_value(value)?;
            match found {
                Some(prev) if prev != fp => return Err(BindingError::ConflictingFingerprints),
                _ => found = Some(fp),
            }
        }
        found.ok_or(BindingError::MissingFingerprint)
    }

    /// The SDP form of the value: `sha-256 AB:CD:…` (upper-case hex).
    pub fn to_attribute_value(&self) -> String {
        let hex: Vec<String> = self.0.iter().map(|b| format!("{b:02X}")).collect();
        format!("sha-256 {}", hex.join(":"))
    }
}

impl fmt::Debug for DtlsFingerprint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "DtlsFingerprint({})", hex::encode(self.0))
    }
}

/// A party as the binding names it: Matrix user id, device id, and the device's Ed25519
/// identity key (32 raw bytes, as verified by the trust store).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PartyIdentity {
    /// `@user:server`.
    pub user_id: String,
    /// The Matrix device id (also the `party_id` of its call events).
    pub device_id: String,
    /// The device's Ed25519 key.
    pub ed25519: [u8; 32],
}

/// Everything the key derivation binds besides the key exchange itself.
#[derive(Debug, Clone, Copy)]
pub struct BindingContext<'a> {
    /// The call's `call_id`.
    pub call_id: &'a str,
    /// Who sent the invite.
    pub caller: &'a PartyIdentity,
    /// Whose answer was selected.
    pub callee: &'a PartyIdentity,
    /// The fingerprint in the invite's offer.
    pub fp_offer: DtlsFingerprint,
    /// The fingerprint in the selected answer.
    pub fp_answer: DtlsFingerprint,
}

impl BindingContext<'_> {
    /// The HKDF `info` bytes (see the module docs).
    ///
    /// # Errors
    /// [`BindingError::FieldTooLong`] when a string exceeds 65535 bytes.
    pub fn info(&self) -> Result<Vec<u8>, BindingError> {
        let mut info = KDF_LABEL.to_vec();
        lp(&mut info, "call_id", self.call_id.as_bytes())?;
        for (who, p) in [("caller", self.caller), ("callee", self.callee)] {
            lp(&mut info, who, p.user_id.as_bytes())?;
            lp(&mut info, who, p.device_id.as_bytes())?;
            lp(&mut info, who, &p.ed25519)?;
        }
        lp(&mut info, "fp_offer", self.fp_offer.as_bytes())?;
        lp(&mut info, "fp_answer", self.fp_answer.as_bytes())?;
        Ok(info)
    }
}

/// The per-call key `K_call` of one side, with what its confirmations cover. Zeroized on
/// drop; `Debug` prints `CallBinding(..)`.
pub struct CallBinding {
    key: Zeroizing<[u8; 32]>,
    role: Role,
    fp_offer: DtlsFingerprint,
    fp_answer: DtlsFingerprint,
}

impl CallBinding {
    /// Derives `K_call` as `role` from our key pair, the peer's extension and the context.
    ///
    /// # Errors
    /// [`BindingError::FieldTooLong`]. (The peer's key is a valid point by construction, so
    /// the shared secret is never the identity.)
    pub fn derive(
        role: Role,
        own: &EphemeralKeyPair,
        peer: &DirectExtension,
        ctx: &BindingContext<'_>,
    ) -> Result<Self, BindingError> {
        let shared = own.secret.diffie_hellman(&peer.dh.0);
        let (nonce_caller, nonce_callee) = match role {
            Role::Caller => (&own.nonce, &peer.nonce),
            Role::Callee => (&peer.nonce, &own.nonce),
        };
        let mut salt = [0u8; 2 * NONCE_LEN];
        let (a, b) = salt.split_at_mut(NONCE_LEN);
        a.copy_from_slice(nonce_caller.as_bytes());
        b.copy_from_slice(nonce_callee.as_bytes());
        let info = ctx.info()?;
        let hk = Hkdf::<Sha256>::new(Some(&salt), shared.raw_secret_bytes().as_slice());
        let mut key = Zeroizing::new([0u8; 32]);
        // 32 bytes is far below HKDF-SHA256's limit of 8160: expand cannot fail.
        hk.expand(&info, key.as_mut_slice())
            .map_err(|_| BindingError::FieldTooLong("info"))?;
        Ok(Self {
            key,
            role,
            fp_offer: ctx.fp_offer,
            fp_answer: ctx.fp_answer,
        })
    }

    /// Our role.
    pub fn role(&self) -> Role {
        self.role
    }

    /// The fingerprint of the offer this binding covers.
    pub fn fp_offer(&self) -> DtlsFingerprint {
        self.fp_offer
    }

    /// The fingerprint of the answer this binding covers.
    pub fn fp_answer(&self) -> DtlsFingerprint {
        self.fp_answer
    }

    /// Our key confirmation, to send to the peer.
    pub fn confirmation(&self) -> Confirmation {
        Confirmation(self.mac(self.role))
    }

    /// Checks the peer's key confirmation, in constant time.
    ///
    /// # Errors
    /// [`BindingError::ConfirmationMismatch`].
    pub fn verify_peer(&self, theirs: &Confirmation) -> Result<(), BindingError> {
        let want = self.mac(self.role.peer());
        if bool::from(want.ct_eq(&theirs.0)) {
            Ok(())
        } else {
            Err(BindingError::ConfirmationMismatch)
        }
    }

    /// `K_call` itself, for test vectors and for deriving further keys.
    pub fn dangerous_key_bytes(&self) -> &[u8; 32] {
        &self.key
    }

    fn mac(&self, role: Role) -> [u8; 32] {
        let (fp_local, fp_remote) = match role {
            Role::Caller => (&self.fp_offer, &self.fp_answer),
            Role::Callee => (&self.fp_answer, &self.fp_offer),
        };
        // HMAC pads a key shorter than the hash's 64-byte block with zeros (RFC 2104 §2); doing
        // it here gives the block-sized key `KeyInit::new` takes without a fallible path.
        let mut block = Zeroizing::new([0u8; 64]);
        let (head, _) = block.split_at_mut(32);
        head.copy_from_slice(self.key.as_slice());
        let mut mac = <Hmac<Sha256>>::new(&(*block).into());
        mac.update(CONFIRM_LABEL);
        mac.update(&[role.byte()]);
        mac.update(fp_local.as_bytes());
        mac.update(fp_remote.as_bytes());
        mac.finalize().into_bytes().into()
    }
}

impl fmt::Debug for CallBinding {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("CallBinding(..)")
    }
}

/// A key confirmation MAC (32 bytes; not secret once sent).
#[derive(Clone, PartialEq, Eq)]
pub struct Confirmation([u8; 32]);

impl Confirmation {
    /// A confirmation from its bytes.
    pub fn from_bytes(bytes: [u8; 32]) -> Self {
        Self(bytes)
    }

    /// Its bytes.
    pub fn as_bytes(&self) -> &[u8; 32] {
        &self.0
    }

    /// Its wire form: base64url without padding (43 chars).
    pub fn to_base64url(&self) -> String {
        URL_SAFE_NO_PAD.encode(self.0)
    }

    /// Parses the wire form.
    ///
    /// # Errors
    /// [`BindingError::MalformedConfirmation`].
    pub fn from_base64url(text: &str) -> Result<Self, BindingError> {
        let raw = URL_SAFE_NO_PAD
            .decode(text)
            .map_err(|_| BindingError::MalformedConfirmation)?;
        let bytes: [u8; 32] = raw
            .as_slice()
            .try_into()
            .map_err(|_| BindingError::MalformedConfirmation)?;
        Ok(Self(bytes))
    }
}

impl fmt::Debug for Confirmation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Confirmation({})", self.to_base64url())
    }
}

/// `lp(x) = u16be(len(x)) || x`.
fn lp(out: &mut Vec<u8>, field: &'static str, x: &[u8]) -> Result<(), BindingError> {
    let len = u16::try_from(x.len()).map_err(|_| BindingError::FieldTooLong(field))?;
    out.extend_from_slice(&len.to_be_bytes());
    out.extend_from_slice(x);
    Ok(())
}

fn decode_b64(field: &'static str, text: &str) -> Result<Vec<u8>, ExtensionError> {
    URL_SAFE_NO_PAD
        .decode(text)
        .map_err(|_| ExtensionError::BadBase64(field))
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing)]
mod tests {
    use rand::SeedableRng as _;
    use rand::rngs::StdRng;

    use super::*;

    fn party(user: &str, device: &str, key: u8) -> PartyIdentity {
        PartyIdentity {
            user_id: user.into(),
            device_id: device.into(),
            ed25519: [key; 32],
        }
    }

    struct Fixture {
        caller_kp: EphemeralKeyPair,
        callee_kp: EphemeralKeyPair,
        caller: PartyIdentity,
        callee: PartyIdentity,
        fp_offer: DtlsFingerprint,
        fp_answer: DtlsFingerprint,
    }

    fn fixture() -> Fixture {
        let mut rng = StdRng::seed_from_u64(7);
        Fixture {
            caller_kp: EphemeralKeyPair::generate(&mut rng),
            callee_kp: EphemeralKeyPair::generate(&mut rng),
            caller: party("@alice:example.org", "ALICEDEV", 1),
            callee: party("@bob:example.org", "BOBDEV", 2),
            fp_offer: DtlsFingerprint::from_bytes([0xaa; 32]),
            fp_answer: DtlsFingerprint::from_bytes([0xbb; 32]),
        }
    }

    fn both(f: &Fixture, ctx_callee: &BindingContext<'_>) -> (CallBinding, CallBinding) {
        let ctx = BindingContext {
            call_id: "c1",
            caller: &f.caller,
            callee: &f.callee,
            fp_offer: f.fp_offer,
            fp_answer: f.fp_answer,
        };
        let a = CallBinding::derive(Role::Caller, &f.caller_kp, &f.callee_kp.extension(), &ctx)
            .unwrap();
        let b = CallBinding::derive(
            Role::Callee,
            &f.callee_kp,
            &f.caller_kp.extension(),
            ctx_callee,
        )
        .unwrap();
        (a, b)
    }

    #[test]
    fn both_sides_derive_the_same_key_and_confirm_each_other() {
        let f = fixture();
        let ctx = BindingContext {
            call_id: "c1",
            caller: &f.caller,
            callee: &f.callee,
            fp_offer: f.fp_offer,
            fp_answer: f.fp_answer,
        };
        let (a, b) = both(&f, &ctx);
        assert_eq!(a.dangerous_key_bytes(), b.dangerous_key_bytes());
        assert_ne!(a.confirmation(), b.confirmation(), "roles differ");
        a.verify_peer(&b.confirmation()).unwrap();
        b.verify_peer(&a.confirmation()).unwrap();
        // A side's own MAC reflected back is not the peer's.
        assert_eq!(
            a.verify_peer(&a.confirmation()),
            Err(BindingError::ConfirmationMismatch)
        );
    }

    #[test]
    fn every_bound_input_changes_the_key() {
        let f = fixture();
        let other = party("@mallory:example.org", "BOBDEV", 2);
        let other_dev = party("@bob:example.org", "EVILDEV", 2);
        let other_key = party("@bob:example.org", "BOBDEV", 3);
        let fp_x = DtlsFingerprint::from_bytes([0xcc; 32]);
        let base = BindingContext {
            call_id: "c1",
            caller: &f.caller,
            callee: &f.callee,
            fp_offer: f.fp_offer,
            fp_answer: f.fp_answer,
        };
        let variants = [
            BindingContext {
                call_id: "c2",
                ..base
            },
            BindingContext {
                callee: &other,
                ..base
            },
            BindingContext {
                callee: &other_dev,
                ..base
            },
            BindingContext {
                callee: &other_key,
                ..base
            },
            BindingContext {
                fp_offer: fp_x,
                ..base
            },
            BindingContext {
                fp_answer: fp_x,
                ..base
            },
        ];
        for (i, v) in variants.iter().enumerate() {
            let (a, b) = both(&f, v);
            assert_ne!(
                a.dangerous_key_bytes(),
                b.dangerous_key_bytes(),
                "variant {i}"
            );
            assert_eq!(
                a.verify_peer(&b.confirmation()),
                Err(BindingError::ConfirmationMismatch),
                "variant {i}"
            );
        }
        // A different nonce from the peer changes the key too.
        let mut ext = f.callee_kp.extension();
        ext.nonce = Nonce::from_bytes([9; 32]);
        let a = CallBinding::derive(Role::Caller, &f.caller_kp, &ext, &base).unwrap();
        let (a0, _) = both(&f, &base);
        assert_ne!(a.dangerous_key_bytes(), a0.dangerous_key_bytes());
    }

    #[test]
    fn tampered_confirmation_is_refused() {
        let f = fixture();
        let ctx = BindingContext {
            call_id: "c1",
            caller: &f.caller,
            callee: &f.callee,
            fp_offer: f.fp_offer,
            fp_answer: f.fp_answer,
        };
        let (a, b) = both(&f, &ctx);
        let mut bytes = *b.confirmation().as_bytes();
        bytes[31] ^= 1;
        assert_eq!(
            a.verify_peer(&Confirmation::from_bytes(bytes)),
            Err(BindingError::ConfirmationMismatch)
        );
        assert_eq!(
            Confirmation::from_base64url("AAAA"),
            Err(BindingError::MalformedConfirmation)
        );
        let wire = b.confirmation().to_base64url();
        assert_eq!(wire.len(), 43);
        a.verify_peer(&Confirmation::from_base64url(&wire).unwrap())
            .unwrap();
    }

    #[test]
    fn fingerprints_parse_from_sdp() {
        let hex: Vec<String> = (0..32u8).map(|b| format!("{b:02X}")).collect();
        let value = format!("sha-256 {}", hex.join(":"));
        let sdp = format!(
            "v=0\r\na=fingerprint:{value}\r\nm=audio 9\r\na=fingerprint:{}\r\n",
            value.to_lowercase()
        );
        let fp = DtlsFingerprint::from_sdp(&sdp).unwrap();
        assert_eq!(fp.as_bytes()[31], 31);
        assert_eq!(fp.to_attribute_value(), value);
        assert_eq!(
            DtlsFingerprint::from_sdp("v=0\r\n"),
            Err(BindingError::MissingFingerprint)
        );
        assert_eq!(
            DtlsFingerprint::from_attribute_value("sha-1 AB:CD"),
            Err(BindingError::UnsupportedFingerprintHash("sha-1".into()))
        );
        for bad in [
            "sha-256",
            "sha-256 AB:CD",
            "sha-256 ZZ:CD",
            &format!("{value}:00"),
            &format!("{value} extra"),
            "sha-256 ABC:D",
        ] {
            assert!(
                matches!(
                    DtlsFingerprint::from_attribute_value(bad),
                    Err(BindingError::MalformedFingerprint)
                ),
                "{bad}"
            );
        }
        let other = value.replace("1F", "1E");
        let sdp = format!("a=fingerprint:{value}\na=fingerprint:{other}\n");
        assert_eq!(
            DtlsFingerprint::from_sdp(&sdp),
            Err(BindingError::ConflictingFingerprints)
        );
    }

    #[test]
    fn public_keys_are_strict() {
        let mut rng = StdRng::seed_from_u64(1);
        let kp = EphemeralKeyPair::generate(&mut rng);
        let wire = kp.public().to_base64url();
        assert_eq!(wire.len(), 87);
        assert_eq!(
            &EphemeralPublicKey::from_base64url(&wire).unwrap(),
            kp.public()
        );
        // Compressed form: right curve point, wrong encoding.
        let mut compressed = kp.public().to_sec1_uncompressed()[..33].to_vec();
        compressed[0] = 0x02;
        assert!(matches!(
            EphemeralPublicKey::from_sec1_uncompressed(&compressed),
            Err(ExtensionError::WrongLength {
                field: "dh",
                expected: 65,
                actual: 33
            })
        ));
        // Off the curve.
        let mut off = kp.public().to_sec1_uncompressed();
        off[64] ^= 1;
        assert_eq!(
            EphemeralPublicKey::from_sec1_uncompressed(&off),
            Err(ExtensionError::InvalidPublicKey)
        );
        // The identity's SEC1 form is a single 0x00; a 65-byte all-zero point is refused too.
        assert_eq!(
            EphemeralPublicKey::from_sec1_uncompressed(&[0u8; 65]),
            Err(ExtensionError::InvalidPublicKey)
        );
        let mut zero_xy = [0u8; 65];
        zero_xy[0] = 4;
        assert_eq!(
            EphemeralPublicKey::from_sec1_uncompressed(&zero_xy),
            Err(ExtensionError::InvalidPublicKey)
        );
        assert_eq!(
            EphemeralPublicKey::from_base64url(&format!("{wire}=")),
            Err(ExtensionError::BadBase64("dh"))
        );
        assert!(
            EphemeralKeyPair::dangerous_from_secret_bytes(&[0; 32], Nonce::from_bytes([0; 32]))
                .is_err()
        );
        assert!(
            EphemeralKeyPair::dangerous_from_secret_bytes(&[0xff; 32], Nonce::from_bytes([0; 32]))
                .is_err()
        );
    }

    #[test]
    fn secrets_are_redacted() {
        let f = fixture();
        let ctx = BindingContext {
            call_id: "c1",
            caller: &f.caller,
            callee: &f.callee,
            fp_offer: f.fp_offer,
            fp_answer: f.fp_answer,
        };
        let (a, _) = both(&f, &ctx);
        assert_eq!(format!("{a:?}"), "CallBinding(..)");
        let key_hex = hex::encode(a.dangerous_key_bytes());
        let kp_dbg = format!("{:?}", f.caller_kp);
        assert!(kp_dbg.starts_with("EphemeralKeyPair {"), "{kp_dbg}");
        assert!(!kp_dbg.contains(&hex::encode(f.caller_kp.secret.to_bytes())));
        assert!(!kp_dbg.contains(&key_hex));
    }

    #[test]
    fn lp_is_two_bytes_big_endian_and_bounded() {
        let mut out = vec![];
        lp(&mut out, "x", b"abc").unwrap();
        assert_eq!(out, [0, 3, b'a', b'b', b'c']);
        let big = vec![0u8; 65536];
        assert_eq!(
            lp(&mut out, "x", &big),
            Err(BindingError::FieldTooLong("x"))
        );
        let ok = vec![0u8; 65535];
        lp(&mut out, "x", &ok).unwrap();
    }
}

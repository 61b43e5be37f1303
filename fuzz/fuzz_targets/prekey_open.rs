//! The prekey layer of `v2.` envelopes and signed prekeys as a client claims them (both come
//! from peers): never panics; no fuzzed v2 envelope opens; a genuine envelope with any byte
//! changed does not open; a genuine signed prekey with any byte of its signature, key or id
//! changed does not verify, and none read from fuzzed JSON does unless it is the genuine one.
//!
//! Input: one byte that picks the mode, then the mode's bytes.
#![no_main]

use std::sync::OnceLock;

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use libfuzzer_sys::fuzz_target;
use oracle_calls_crypto::{
    CallContext, CallKey, KeyEnvelope, KeyScheme, OpenedKey, OracleKeyPair, Prekey,
    PrekeySigningKey, PrekeySigningPublicKey, Recipient, SignedPrekey, open, open_prekey_layer,
    recipient, seal_with_prekey, verify_prekey,
};
use oracle_calls_proto::{CallType, Did, RoomName, SessionId};
use rand_core::SeedableRng as _;

struct Fixture {
    oracle: OracleKeyPair,
    prekey: Prekey,
    signing: PrekeySigningPublicKey,
    signed: SignedPrekey,
    did: Did,
    ctx: CallContext,
    key: CallKey,
    /// A v2 envelope sealed to `prekey` and `oracle` for `ctx`, carrying `key`.
    genuine: KeyEnvelope,
    /// Its body (after `v2.hpke-x25519.`), decoded.
    genuine_body: Vec<u8>,
}

fn fixture() -> &'static Fixture {
    static F: OnceLock<Fixture> = OnceLock::new();
    F.get_or_init(|| {
        // Fixed seed: the fuzzer must be deterministic.
        let mut rng = rand_chacha::ChaCha20Rng::from_seed([11; 32]);
        let did = Did::parse("did:ixo:oracle").unwrap();
        let ctx = CallContext::new(
            SessionId::parse("s").unwrap(),
            RoomName::parse("oc-0123456789abcdef0123456789abcdef").unwrap(),
            Did::parse("did:ixo:u").unwrap(),
            did.clone(),
            CallType::Audio,
        );
        let oracle = OracleKeyPair::generate(KeyScheme::HpkeX25519, &mut rng).unwrap();
        let signing_key = PrekeySigningKey::generate(&mut rng);
        let prekey = Prekey::generate(false, &mut rng);
        let signed = prekey.sign(&signing_key, &did);
        let signing = signing_key.public_key();
        let verified = verify_prekey(&signed, &signing, &did).expect("the genuine prekey verifies");
        let key = CallKey::from_bytes([3; 32]);
        let genuine =
            seal_with_prekey(&oracle.public_key(), &verified, &key, &ctx, &mut rng).unwrap();
        let body = genuine.as_str().strip_prefix("v2.hpke-x25519.").unwrap();
        let genuine_body = URL_SAFE_NO_PAD.decode(body).unwrap();
        // The fixture itself must open, or the target below proves nothing.
        let inner = open_prekey_layer(&prekey, &genuine, &ctx).unwrap();
        assert!(matches!(open(&oracle, &inner, &ctx), Ok(OpenedKey::Bound(k)) if k.ct_eq(&key)));
        Fixture {
            oracle,
            prekey,
            signing,
            signed,
            did,
            ctx,
            key,
            genuine,
            genuine_body,
        }
    })
}

fn v2(body: &[u8]) -> Option<KeyEnvelope> {
    KeyEnvelope::parse(&format!("v2.hpke-x25519.{}", URL_SAFE_NO_PAD.encode(body))).ok()
}

/// Opens both layers; `Some(key)` only if both open.
fn open_both(f: &Fixture, env: &KeyEnvelope) -> Option<CallKey> {
    let inner = open_prekey_layer(&f.prekey, env, &f.ctx).ok()?;
    match open(&f.oracle, &inner, &f.ctx) {
        Ok(OpenedKey::Bound(k)) => Some(k),
        _ => None,
    }
}

fuzz_target!(|data: &[u8]| {
    let f = fixture();
    let Some((&mode, rest)) = data.split_first() else {
        return;
    };
    match mode % 5 {
        // Any text as an envelope.
        0 => {
            let Ok(text) = std::str::from_utf8(rest) else {
                return;
            };
            let Ok(env) = KeyEnvelope::parse(text) else {
                return;
            };
            if let Ok(Recipient::Prekey { prekey_id, .. }) = recipient(&env) {
                assert!(text.starts_with("v2."));
                if open_prekey_layer(&f.prekey, &env, &f.ctx).is_ok() {
                    assert_eq!(prekey_id, f.prekey.id);
                }
            }
            if open_prekey_layer(&f.prekey, &env, &f.ctx).is_ok() {
                assert_eq!(env, f.genuine, "a fuzzed v2 envelope opened");
            }
        }
        // The right prekey id and context digest, then fuzzed HPKE bytes: reaches the AEAD.
        1 => {
            let mut body = f.prekey.id.as_bytes().to_vec();
            body.extend_from_slice(&f.ctx.digest()[..16]);
            body.extend_from_slice(rest);
            if let Some(env) = v2(&body)
                && open_prekey_layer(&f.prekey, &env, &f.ctx).is_ok()
            {
                assert_eq!(body, f.genuine_body, "forged HPKE payload opened");
            }
        }
        // The genuine envelope with bytes flipped: (position, xor) pairs.
        2 => {
            let mut body = f.genuine_body.clone();
            for pair in rest.chunks_exact(3) {
                let at = usize::from(u16::from_le_bytes([pair[0], pair[1]])) % body.len();
                body[at] ^= pair[2];
            }
            // Or cut short / lengthened, by the input's length parity.
            if rest.len() % 3 == 1 {
                body.truncate(body.len() - usize::from(rest[0] % 64).min(body.len()));
            } else if rest.len() % 3 == 2 {
                body.push(rest[0]);
            }
            let Some(env) = v2(&body) else { return };
            match open_both(f, &env) {
                Some(k) => {
                    assert_eq!(body, f.genuine_body, "a changed envelope opened");
                    assert!(k.ct_eq(&f.key));
                }
                None => assert_ne!(body, f.genuine_body, "the genuine envelope did not open"),
            }
        }
        // The genuine signed prekey with bytes of its id, key or signature flipped.
        3 => {
            let mut raw = [
                URL_SAFE_NO_PAD.decode(&f.signed.prekey_id).unwrap(),
                URL_SAFE_NO_PAD.decode(&f.signed.public_key).unwrap(),
                URL_SAFE_NO_PAD.decode(&f.signed.signature).unwrap(),
            ];
            let mut last_resort = f.signed.last_resort;
            for pair in rest.chunks_exact(2) {
                let field = usize::from(pair[0] >> 6) % 4;
                if field == 3 {
                    last_resort ^= pair[1] & 1 == 1;
                } else {
                    let len = raw[field].len();
                    raw[field][usize::from(pair[0] & 0x3f) % len] ^= pair[1];
                }
            }
            let changed = SignedPrekey {
                prekey_id: URL_SAFE_NO_PAD.encode(&raw[0]),
                public_key: URL_SAFE_NO_PAD.encode(&raw[1]),
                last_resort,
                signature: URL_SAFE_NO_PAD.encode(&raw[2]),
            };
            let ok = verify_prekey(&changed, &f.signing, &f.did).is_ok();
            assert_eq!(
                ok,
                changed == f.signed,
                "a changed signed prekey verified (or the genuine did not)"
            );
        }
        // A signed prekey as JSON, as a client receives it from the server.
        _ => {
            let Ok(signed) = serde_json::from_slice::<SignedPrekey>(rest) else {
                return;
            };
            if verify_prekey(&signed, &f.signing, &f.did).is_ok() {
                assert_eq!(signed, f.signed, "a fuzzed signed prekey verified");
            }
            // Whoever signed it, the same prekey under another oracle's DID never verifies.
            let other = Did::parse("did:ixo:other").unwrap();
            assert!(verify_prekey(&signed, &f.signing, &other).is_err());
        }
    }
});

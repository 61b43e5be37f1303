use oracle_calls_proto::{CallType, Did, KeyScheme, RoomName, SessionId};
use rand::SeedableRng;
use rand::rngs::StdRng;

use super::*;
use crate::{
    OpenedKey, OracleKeyPair, PrekeySigningKey, Recipient, open, open_legacy, recipient,
    verify_prekey,
};

const ORACLE: &str = "did:ixo:oracle";

fn ctx(session: &str) -> CallContext {
    CallContext::new(
        SessionId::parse(session).unwrap(),
        RoomName::parse("oc-0123456789abcdef0123456789abcdef").unwrap(),
        Did::parse("did:ixo:user").unwrap(),
        Did::parse(ORACLE).unwrap(),
        CallType::Video,
    )
}

/// A prekey and its verified public half, as a client gets it.
fn prekey(rng: &mut StdRng, last_resort: bool) -> (Prekey, VerifiedPrekey) {
    let signer = PrekeySigningKey::generate(rng);
    let oracle = Did::parse(ORACLE).unwrap();
    let prekey = Prekey::generate(last_resort, rng);
    let signed = prekey.sign(&signer, &oracle);
    let verified = verify_prekey(&signed, &signer.public_key(), &oracle).unwrap();
    (prekey, verified)
}

fn body(env: &KeyEnvelope) -> Vec<u8> {
    let b64 = env.as_str().rsplit_once('.').unwrap().1;
    URL_SAFE_NO_PAD.decode(b64).unwrap()
}

fn envelope(scheme: &str, body: &[u8]) -> KeyEnvelope {
    KeyEnvelope::parse(&format!("v2.{scheme}.{}", URL_SAFE_NO_PAD.encode(body))).unwrap()
}

/// A v2 envelope around any `inner` bytes, sealed as [`seal_with_prekey`] does.
fn wrap(
    prekey: &VerifiedPrekey,
    scheme: &str,
    inner: &[u8],
    context: &CallContext,
    rng: &mut StdRng,
) -> KeyEnvelope {
    let hdr = header(prekey.id().as_bytes(), &context.digest());
    let payload =
        hpke::seal_x25519_bytes(prekey.public_key(), inner, &context.to_bytes(), &hdr, rng)
            .unwrap();
    envelope(scheme, &[hdr.as_slice(), &payload].concat())
}

fn bound(o: OpenedKey) -> CallKey {
    match o {
        OpenedKey::Bound(k) => k,
        OpenedKey::Unbound(_) => panic!("expected a bound key"),
    }
}

#[test]
fn round_trip_every_scheme() {
    let mut rng = StdRng::seed_from_u64(21);
    for scheme in KeyScheme::ALL {
        let kp = OracleKeyPair::generate(scheme, &mut rng).unwrap();
        for last_resort in [false, true] {
            let (pk, verified) = prekey(&mut rng, last_resort);
            let key = CallKey::generate(&mut rng);
            let c = ctx("s1");
            let env = seal_with_prekey(&kp.public_key(), &verified, &key, &c, &mut rng).unwrap();
            assert!(env.as_str().starts_with(&format!("v2.{scheme}.")));
            assert_eq!(
                recipient(&env).unwrap(),
                Recipient::Prekey {
                    scheme,
                    prekey_id: pk.id
                }
            );
            // The long-term key alone does not open it, nor does the legacy door.
            assert_eq!(
                EnvelopeError::PrekeyLayer.to_string(),
                "envelope is sealed to a prekey: open its prekey layer first"
            );
            assert_eq!(open(&kp, &env, &c).unwrap_err(), EnvelopeError::PrekeyLayer);
            assert_eq!(
                open_legacy(&kp, &env).unwrap_err(),
                EnvelopeError::NotLegacy
            );

            let inner = open_prekey_layer(&pk, &env, &c).unwrap();
            assert!(inner.as_str().starts_with(&format!("v1.{scheme}.")));
            assert_eq!(
                recipient(&inner).unwrap(),
                Recipient::Key {
                    scheme,
                    key_id: kp.key_id()
                }
            );
            // len(ct) = len(inner) + 16.
            assert_eq!(body(&env).len(), 32 + 32 + inner.as_str().len() + 16);
            assert!(
                bound(open(&kp, &inner, &c).unwrap()).ct_eq(&key),
                "{scheme}"
            );
            // The inner envelope has no prekey layer left.
            assert_eq!(
                open_prekey_layer(&pk, &inner, &c).unwrap_err(),
                EnvelopeError::NoPrekeyLayer
            );
            // Fresh randomness every time.
            let again = seal_with_prekey(&kp.public_key(), &verified, &key, &c, &mut rng).unwrap();
            assert_ne!(again, env);
        }
    }
}

#[test]
fn wrong_prekey_and_wrong_context_are_named() {
    let mut rng = StdRng::seed_from_u64(22);
    let kp = OracleKeyPair::generate(KeyScheme::HpkeX25519, &mut rng).unwrap();
    let (pk, verified) = prekey(&mut rng, false);
    let (other, _) = prekey(&mut rng, false);
    let key = CallKey::generate(&mut rng);
    let env = seal_with_prekey(&kp.public_key(), &verified, &key, &ctx("s1"), &mut rng).unwrap();
    assert_eq!(
        open_prekey_layer(&other, &env, &ctx("s1")).unwrap_err(),
        EnvelopeError::WrongPrekey {
            envelope: pk.id,
            ours: other.id
        }
    );
    assert_eq!(
        open_prekey_layer(&pk, &env, &ctx("s2")).unwrap_err(),
        EnvelopeError::ContextMismatch
    );
    // The same id with another secret (a prekey file overwritten): the HPKE layer fails.
    let impostor = Prekey {
        id: pk.id,
        secret: other.secret,
        last_resort: false,
    };
    assert_eq!(
        open_prekey_layer(&impostor, &env, &ctx("s1")).unwrap_err(),
        EnvelopeError::DecryptionFailed
    );
}

#[test]
fn tampering_is_refused_with_its_error() {
    let mut rng = StdRng::seed_from_u64(23);
    let kp = OracleKeyPair::generate(KeyScheme::HpkeP256, &mut rng).unwrap();
    let (pk, verified) = prekey(&mut rng, false);
    let c = ctx("s1");
    let key = CallKey::generate(&mut rng);
    let env = seal_with_prekey(&kp.public_key(), &verified, &key, &c, &mut rng).unwrap();
    let good = body(&env);
    let flip = |at: usize| {
        let mut b = good.clone();
        b[at] ^= 0x01;
        open_prekey_layer(&pk, &envelope("hpke-p256", &b), &c).unwrap_err()
    };
    for at in [0, 15] {
        let mut named = *pk.id.as_bytes();
        named[at] ^= 0x01;
        assert_eq!(
            flip(at),
            EnvelopeError::WrongPrekey {
                envelope: PrekeyId(named),
                ours: pk.id
            }
        );
    }
    assert_eq!(flip(16), EnvelopeError::ContextMismatch);
    assert_eq!(flip(31), EnvelopeError::ContextMismatch);
    // enc, ciphertext, tag.
    for at in [32, 63, 64, 100, good.len() - 17, good.len() - 1] {
        assert_eq!(flip(at), EnvelopeError::DecryptionFailed, "byte {at}");
    }
    // A header that names another prekey, opened with that prekey: the header is the aad.
    let (other, _) = prekey(&mut rng, false);
    let mut forged = good.clone();
    forged[..16].copy_from_slice(other.id.as_bytes());
    assert_eq!(
        open_prekey_layer(&other, &envelope("hpke-p256", &forged), &c).unwrap_err(),
        EnvelopeError::DecryptionFailed
    );
    // The outer scheme is not authenticated by the layer; it must match the inner one.
    for swapped in ["hpke-x25519", "rsa-oaep-256", "ecies-secp256k1"] {
        assert_eq!(
            open_prekey_layer(&pk, &envelope(swapped, &good), &c).unwrap_err(),
            EnvelopeError::Malformed(NOT_INNER_V1),
            "{swapped}"
        );
    }
    assert_eq!(
        open_prekey_layer(&pk, &envelope("hpke-p999", &good), &c).unwrap_err(),
        EnvelopeError::UnknownScheme
    );
}

#[test]
fn the_inner_envelope_must_be_v1_of_the_outer_scheme() {
    let mut rng = StdRng::seed_from_u64(24);
    let (pk, verified) = prekey(&mut rng, false);
    let c = ctx("s1");
    let k1 = OracleKeyPair::generate(KeyScheme::EciesSecp256k1, &mut rng).unwrap();
    let key = CallKey::generate(&mut rng);
    let v1 = crate::seal(&k1.public_key(), &key, &c, &mut rng).unwrap();
    let v2 = seal_with_prekey(&k1.public_key(), &verified, &key, &c, &mut rng).unwrap();
    let legacy = bs58::encode([7u8; 161]).into_string();
    let short_v1 = format!("v1.ecies-secp256k1.{}", URL_SAFE_NO_PAD.encode([1u8; 31]));
    let bad: [&[u8]; 9] = [
        b"",
        legacy.as_bytes(),
        v2.as_str().as_bytes(),
        b"v3.ecies-secp256k1.AAAA",
        b"v1.hpke-p999.AAAA",
        short_v1.as_bytes(),
        b"v1.ecies-secp256k1.AA AA",
        &[0xff, 0xfe, b'v', b'1'],
        &[b'v', b'1', b'.', 0],
    ];
    for inner in bad {
        let env = wrap(&verified, "ecies-secp256k1", inner, &c, &mut rng);
        assert_eq!(
            open_prekey_layer(&pk, &env, &c).unwrap_err(),
            EnvelopeError::Malformed(NOT_INNER_V1),
            "{}",
            String::from_utf8_lossy(inner)
        );
    }
    // A good v1 envelope of another scheme than the outer one.
    let env = wrap(&verified, "hpke-p256", v1.as_str().as_bytes(), &c, &mut rng);
    assert_eq!(
        open_prekey_layer(&pk, &env, &c).unwrap_err(),
        EnvelopeError::Malformed(NOT_INNER_V1)
    );
    // The same, with the matching outer scheme, opens.
    let env = wrap(
        &verified,
        "ecies-secp256k1",
        v1.as_str().as_bytes(),
        &c,
        &mut rng,
    );
    assert_eq!(open_prekey_layer(&pk, &env, &c).unwrap(), v1);
    // v1 and legacy envelopes have no prekey layer.
    assert_eq!(
        open_prekey_layer(&pk, &v1, &c).unwrap_err(),
        EnvelopeError::NoPrekeyLayer
    );
    assert_eq!(
        open_prekey_layer(&pk, &KeyEnvelope::parse(&legacy).unwrap(), &c).unwrap_err(),
        EnvelopeError::NoPrekeyLayer
    );
}

#[test]
fn body_length_bounds() {
    let mut rng = StdRng::seed_from_u64(25);
    let (pk, verified) = prekey(&mut rng, false);
    let c = ctx("s1");
    let kp = OracleKeyPair::generate(KeyScheme::HpkeX25519, &mut rng).unwrap();
    let key = CallKey::generate(&mut rng);
    let env = seal_with_prekey(&kp.public_key(), &verified, &key, &c, &mut rng).unwrap();
    let good = body(&env);
    for len in [0, 1, 16, 31, 32, 63, 64, 79] {
        let e = envelope("hpke-x25519", &good[..len]);
        assert_eq!(
            open_prekey_layer(&pk, &e, &c).unwrap_err(),
            EnvelopeError::BadLength,
            "{len}"
        );
        assert_eq!(recipient(&e).unwrap_err(), EnvelopeError::BadLength);
        assert_eq!(open(&kp, &e, &c).unwrap_err(), EnvelopeError::BadLength);
    }
    // Long enough to try: the tag does not match.
    for len in [80, 81, good.len() - 1] {
        let e = envelope("hpke-x25519", &good[..len]);
        assert_eq!(
            open_prekey_layer(&pk, &e, &c).unwrap_err(),
            EnvelopeError::DecryptionFailed,
            "{len}"
        );
    }
    // An empty inner text is the shortest body (80 bytes): it opens, and is not v1.
    let empty = wrap(&verified, "hpke-x25519", b"", &c, &mut rng);
    assert_eq!(body(&empty).len(), 80);
    assert_eq!(
        open_prekey_layer(&pk, &empty, &c).unwrap_err(),
        EnvelopeError::Malformed(NOT_INNER_V1)
    );
    // The inner text may be 4096 bytes, not one more (4083 base64url characters are valid).
    let exact = format!("v1.hpke-p256.{}", "A".repeat(MAX_INNER_ENVELOPE_LEN - 13));
    assert_eq!(exact.len(), MAX_INNER_ENVELOPE_LEN);
    let e = wrap(&verified, "hpke-p256", exact.as_bytes(), &c, &mut rng);
    assert_eq!(open_prekey_layer(&pk, &e, &c).unwrap().as_str(), exact);
    let over = format!("{exact}A");
    let e = wrap(&verified, "hpke-x25519", over.as_bytes(), &c, &mut rng);
    assert_eq!(body(&e).len(), 80 + MAX_INNER_ENVELOPE_LEN + 1);
    assert_eq!(
        open_prekey_layer(&pk, &e, &c).unwrap_err(),
        EnvelopeError::BadLength
    );
    assert_eq!(recipient(&e).unwrap_err(), EnvelopeError::BadLength);
}

use oracle_calls_proto::{CallType, Did, RoomName, SessionId};
use rand::SeedableRng;
use rand::rngs::StdRng;

use super::*;

fn ctx(session: &str) -> CallContext {
    CallContext::new(
        SessionId::parse(session).unwrap(),
        RoomName::parse("oc-0123456789abcdef0123456789abcdef").unwrap(),
        Did::parse("did:ixo:user").unwrap(),
        Did::parse("did:ixo:oracle").unwrap(),
        CallType::Audio,
    )
}

fn keypairs(rng: &mut StdRng) -> Vec<OracleKeyPair> {
    KeyScheme::ALL
        .into_iter()
        .map(|s| OracleKeyPair::generate(s, rng).unwrap())
        .collect()
}

fn bound(o: OpenedKey) -> CallKey {
    match o {
        OpenedKey::Bound(k) => k,
        OpenedKey::Unbound(_) => panic!("expected a bound key"),
    }
}

#[test]
fn round_trip_every_scheme() {
    let mut rng = StdRng::seed_from_u64(3);
    for kp in keypairs(&mut rng) {
        let key = CallKey::generate(&mut rng);
        let env = seal(&kp.public_key(), &key, &ctx("s1"), &mut rng).unwrap();
        assert!(env.as_str().starts_with(&format!("v1.{}.", kp.scheme())));
        let opened = bound(open(&kp, &env, &ctx("s1")).unwrap());
        assert!(opened.ct_eq(&key), "{}", kp.scheme());
        // Two seals of the same key differ (fresh ephemeral keys / OAEP randomness).
        let env2 = seal(&kp.public_key(), &key, &ctx("s1"), &mut rng).unwrap();
        assert_ne!(env, env2);
    }
}

#[test]
fn every_failure_has_its_own_error() {
    let mut rng = StdRng::seed_from_u64(4);
    let kps = keypairs(&mut rng);
    for kp in &kps {
        let scheme = kp.scheme();
        let key = CallKey::generate(&mut rng);
        let env = seal(&kp.public_key(), &key, &ctx("s1"), &mut rng).unwrap();

        // A different context.
        assert_eq!(
            open(kp, &env, &ctx("s2")).unwrap_err(),
            EnvelopeError::ContextMismatch,
            "{scheme}"
        );
        // The wrong key of the same scheme.
        let other = OracleKeyPair::generate(scheme, &mut rng).unwrap();
        assert!(matches!(
            open(&other, &env, &ctx("s1")).unwrap_err(),
            EnvelopeError::WrongKey { envelope, ours } if envelope == kp.key_id() && ours == other.key_id()
        ));
        // A key of another scheme.
        let foreign = kps.iter().find(|k| k.scheme() != scheme).unwrap();
        assert!(matches!(
            open(foreign, &env, &ctx("s1")).unwrap_err(),
            EnvelopeError::SchemeMismatch { .. }
        ));
        // Tampering anywhere in the payload.
        let (prefix, b64) = env.as_str().rsplit_once('.').unwrap();
        let body = URL_SAFE_NO_PAD.decode(b64).unwrap();
        for pos in [HEADER_LEN, HEADER_LEN + 20, body.len() - 1] {
            let mut t = body.clone();
            t[pos] ^= 0x01;
            let t =
                KeyEnvelope::parse(&format!("{prefix}.{}", URL_SAFE_NO_PAD.encode(&t))).unwrap();
            assert_eq!(
                open(kp, &t, &ctx("s1")).unwrap_err(),
                EnvelopeError::DecryptionFailed,
                "{scheme} at {pos}"
            );
        }
        // Truncation.
        let t = KeyEnvelope::parse(&format!(
            "{prefix}.{}",
            URL_SAFE_NO_PAD.encode(&body[..body.len() - 1])
        ))
        .unwrap();
        let e = open(kp, &t, &ctx("s1")).unwrap_err();
        assert!(
            matches!(
                e,
                EnvelopeError::BadLength | EnvelopeError::DecryptionFailed
            ),
            "{scheme}: {e:?}"
        );
        let t = KeyEnvelope::parse(&format!("{prefix}.{}", URL_SAFE_NO_PAD.encode(&body[..10])))
            .unwrap();
        assert_eq!(
            open(kp, &t, &ctx("s1")).unwrap_err(),
            EnvelopeError::BadLength
        );
    }
    let kp = &kps[0];
    let e = |s: &str| open(kp, &KeyEnvelope::parse(s).unwrap(), &ctx("s1")).unwrap_err();
    assert_eq!(e("v3.hpke-p256.AAAA"), EnvelopeError::UnknownVersion);
    assert_eq!(e("v2.hpke-p256.AAAA"), EnvelopeError::BadLength);
    assert_eq!(e("v1.hpke-p999.AAAA"), EnvelopeError::UnknownScheme);
    assert_eq!(
        e("v1.hpke-p256.AA*A"),
        EnvelopeError::Encoding("base64url (no padding)")
    );
    assert_eq!(
        e("v1.hpke-p256.AAA="),
        EnvelopeError::Encoding("base64url (no padding)")
    );
    assert!(matches!(e("v1.hpke-p256"), EnvelopeError::Malformed(_)));
    assert!(matches!(
        e("x1.hpke-p256.AAAA"),
        EnvelopeError::Malformed(_)
    ));
    // Un-prefixed text is the legacy form, which only secp256k1 keys open.
    assert!(matches!(e("3mJr7AoUXx2Wqd"), EnvelopeError::Malformed(_)));
    let k1 = kps
        .iter()
        .find(|k| k.scheme() == KeyScheme::EciesSecp256k1)
        .unwrap();
    let legacy = |s: &str| open(k1, &KeyEnvelope::parse(s).unwrap(), &ctx("s1")).unwrap_err();
    assert_eq!(legacy("0OIl"), EnvelopeError::Encoding("base58"));
    assert_eq!(legacy("3mJr7AoUXx2Wqd"), EnvelopeError::BadLength);
}

#[test]
fn legacy_envelopes_open_unbound() {
    let mut rng = StdRng::seed_from_u64(5);
    let kp = OracleKeyPair::generate(KeyScheme::EciesSecp256k1, &mut rng).unwrap();
    let PublicInner::Secp256k1(pk) = kp.public_key().inner().clone() else {
        unreachable!()
    };
    let key = CallKey::generate(&mut rng);
    let body = ecies::seal(&pk, key.to_hex().as_bytes(), &mut rng).unwrap();
    let text = bs58::encode(body).into_string();
    let opened = open(&kp, &KeyEnvelope::parse(&text).unwrap(), &ctx("any")).unwrap();
    let OpenedKey::Unbound(u) = opened else {
        panic!("legacy must be unbound")
    };
    assert!(u.dangerous_accept_without_context().ct_eq(&key));
}

#[test]
fn recipient_names_the_key_without_opening() {
    let mut rng = StdRng::seed_from_u64(6);
    for kp in keypairs(&mut rng) {
        let key = CallKey::generate(&mut rng);
        let env = seal(&kp.public_key(), &key, &ctx("s1"), &mut rng).unwrap();
        assert_eq!(
            recipient(&env).unwrap(),
            Recipient::Key {
                scheme: kp.scheme(),
                key_id: kp.key_id()
            }
        );
    }
    let r = |s: &str| recipient(&KeyEnvelope::parse(s).unwrap());
    assert_eq!(r("3mJr7AoUXx2Wqd").unwrap(), Recipient::LegacySecp256k1);
    assert_eq!(
        r("v3.hpke-p256.AAAA").unwrap_err(),
        EnvelopeError::UnknownVersion
    );
    assert_eq!(
        r("v2.hpke-p256.AAAA").unwrap_err(),
        EnvelopeError::BadLength
    );
    assert_eq!(
        r("v1.hpke-p999.AAAA").unwrap_err(),
        EnvelopeError::UnknownScheme
    );
    assert_eq!(
        r("v1.hpke-p256.AAAA").unwrap_err(),
        EnvelopeError::BadLength
    );
    assert!(matches!(
        r("v1.hpke-p256"),
        Err(EnvelopeError::Malformed(_))
    ));
}

#[test]
fn open_legacy_opens_legacy_envelopes_only() {
    let mut rng = StdRng::seed_from_u64(7);
    let kp = OracleKeyPair::generate(KeyScheme::EciesSecp256k1, &mut rng).unwrap();
    let PublicInner::Secp256k1(pk) = kp.public_key().inner().clone() else {
        unreachable!()
    };
    let key = CallKey::generate(&mut rng);
    let body = ecies::seal(&pk, key.to_hex().as_bytes(), &mut rng).unwrap();
    let legacy = KeyEnvelope::parse(&bs58::encode(body).into_string()).unwrap();
    assert!(open_legacy(&kp, &legacy).unwrap().ct_eq(&key));

    // A v1 envelope is bound to a call: never through this door, even to the right key.
    let v1 = seal(&kp.public_key(), &key, &ctx("s1"), &mut rng).unwrap();
    assert_eq!(open_legacy(&kp, &v1).unwrap_err(), EnvelopeError::NotLegacy);
    let v2 = KeyEnvelope::parse("v2.ecies-secp256k1.AAAA").unwrap();
    assert_eq!(open_legacy(&kp, &v2).unwrap_err(), EnvelopeError::NotLegacy);
    let odd = KeyEnvelope::parse("x1.ecies-secp256k1.AAAA").unwrap();
    assert!(matches!(
        open_legacy(&kp, &odd),
        Err(EnvelopeError::Malformed(_))
    ));
    // Another secp256k1 key cannot open it; a key of another scheme does not try.
    let other = OracleKeyPair::generate(KeyScheme::EciesSecp256k1, &mut rng).unwrap();
    assert_eq!(
        open_legacy(&other, &legacy).unwrap_err(),
        EnvelopeError::DecryptionFailed
    );
    let p256 = OracleKeyPair::generate(KeyScheme::HpkeP256, &mut rng).unwrap();
    assert!(matches!(
        open_legacy(&p256, &legacy),
        Err(EnvelopeError::Malformed(_))
    ));
}

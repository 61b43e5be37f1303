use rand::SeedableRng;
use rand::rngs::StdRng;

use super::*;

fn did(s: &str) -> Did {
    Did::parse(s).unwrap()
}

/// RFC 8032 §7.1 TEST 1: secret key and public key.
const RFC8032_SECRET: &str = "9d61b19deffd5a60ba844af492ec2cc44449c5697b326919703bac031cae7f60";
const RFC8032_PUBLIC: &str = "d75a980182b10ab7d54bfed3c964073a0ee172f3daa62325af021a68f707511a";

fn rfc8032_key() -> PrekeySigningKey {
    let der = [
        ED25519_PKCS8_PREFIX.as_slice(),
        &hex::decode(RFC8032_SECRET).unwrap(),
    ]
    .concat();
    let pem = format!(
        "-----BEGIN PRIVATE KEY-----\n{}\n-----END PRIVATE KEY-----\n",
        STANDARD.encode(der)
    );
    PrekeySigningKey::from_pkcs8_pem(&pem).unwrap()
}

#[test]
fn signing_key_pem_round_trip_and_known_public_key() {
    let key = rfc8032_key();
    assert_eq!(hex::encode(key.public_key().as_bytes()), RFC8032_PUBLIC);
    let pem = key.to_pkcs8_pem();
    assert!(pem.starts_with("-----BEGIN PRIVATE KEY-----\nMC4CAQAwBQYDK2VwBCIEI"));
    let back = PrekeySigningKey::from_pkcs8_pem(&pem).unwrap();
    assert_eq!(back.public_key(), key.public_key());

    // RFC 8410 §10.3's example private key, and its public key.
    let rfc8410 = "-----BEGIN PRIVATE KEY-----\n\
        MC4CAQAwBQYDK2VwBCIEINTuctv5E1hK1bbY8fdp+K06/nwoy/HU++CXqI9EdVhC\n\
        -----END PRIVATE KEY-----\n";
    assert_eq!(
        hex::encode(
            PrekeySigningKey::from_pkcs8_pem(rfc8410)
                .unwrap()
                .public_key()
                .as_bytes()
        ),
        "19bf44096984cdfe8541bac167dc3b96c85086aa30b6b6cb0c5c38ad703166e1"
    );

    let mut rng = StdRng::seed_from_u64(1);
    let fresh = PrekeySigningKey::generate(&mut rng);
    let again = PrekeySigningKey::from_pkcs8_pem(&fresh.to_pkcs8_pem()).unwrap();
    assert_eq!(again.public_key(), fresh.public_key());
    assert_ne!(fresh.public_key(), key.public_key());
}

#[test]
fn signing_key_refuses_other_keys_and_hides_its_secret() {
    assert_eq!(
        PrekeySigningKey::from_pkcs8_pem("hello").unwrap_err(),
        KeyError::Pem("not a PEM document")
    );
    // An X25519 key (RFC 8410 OID 1.3.101.110) is not a signing key.
    let mut rng = StdRng::seed_from_u64(2);
    let x = crate::OracleKeyPair::generate(crate::KeyScheme::HpkeX25519, &mut rng).unwrap();
    assert_eq!(
        PrekeySigningKey::from_pkcs8_pem(&x.to_pkcs8_pem().unwrap()).unwrap_err(),
        KeyError::UnsupportedAlgorithm
    );
    // A 31-byte seed.
    let mut short = ED25519_PKCS8_PREFIX.to_vec();
    short[1] -= 1;
    short[15] = 31;
    short[13] = 0x21;
    short.extend_from_slice(&[7u8; 31]);
    let pem = format!(
        "-----BEGIN PRIVATE KEY-----\n{}\n-----END PRIVATE KEY-----\n",
        STANDARD.encode(short)
    );
    assert_eq!(
        PrekeySigningKey::from_pkcs8_pem(&pem).unwrap_err(),
        KeyError::Invalid
    );

    let key = rfc8032_key();
    let shown = format!("{key:?} {key:#?}");
    assert!(shown.contains(&key.public_key().to_string()), "{shown}");
    assert!(!shown.contains(RFC8032_SECRET) && !shown.contains("MC4C"));
    let secret_b64 = URL_SAFE_NO_PAD.encode(hex::decode(RFC8032_SECRET).unwrap());
    assert!(!shown.contains(&secret_b64));
}

#[test]
fn signing_public_key_text_form() {
    let key = rfc8032_key().public_key();
    let text = key.to_string();
    assert_eq!(text.len(), 43);
    assert_eq!(PrekeySigningPublicKey::parse(&text).unwrap(), key);
    // Cut short, the last character has bits set that no encoder writes.
    assert!(matches!(
        PrekeySigningPublicKey::parse(&text[..42]),
        Err(PrekeyError::Encoding { .. })
    ));
    assert_eq!(
        PrekeySigningPublicKey::parse(&format!("{text}=")).unwrap_err(),
        PrekeyError::Encoding {
            field: "prekeySigningKey",
            encoding: "base64url (no padding)"
        }
    );
    assert_eq!(
        PrekeySigningPublicKey::parse(&URL_SAFE_NO_PAD.encode([7u8; 31])).unwrap_err(),
        PrekeyError::BadLength {
            field: "prekeySigningKey",
            len: 31,
            expected: 32
        }
    );
    // y = 2 is on no Ed25519 point; y = 1 is the identity (small order).
    let mut not_a_point = [0u8; 32];
    not_a_point[0] = 2;
    assert_eq!(
        PrekeySigningPublicKey::from_bytes(&not_a_point).unwrap_err(),
        PrekeyError::InvalidKey
    );
    let mut identity = [0u8; 32];
    identity[0] = 1;
    assert_eq!(
        PrekeySigningPublicKey::parse(&URL_SAFE_NO_PAD.encode(identity)).unwrap_err(),
        PrekeyError::InvalidKey
    );
}

#[test]
fn prekey_id_forms() {
    let mut rng = StdRng::seed_from_u64(3);
    let id = PrekeyId::generate(&mut rng);
    let text = id.to_string();
    assert_eq!(text.len(), 22);
    assert_eq!(PrekeyId::parse(&text).unwrap(), id);
    let hexed = id.to_hex();
    assert_eq!(hexed.len(), 32);
    assert_eq!(hexed, hexed.to_lowercase());
    assert_eq!(PrekeyId::from_hex(&hexed).unwrap(), id);
    assert_eq!(format!("{id:?}"), format!("PrekeyId({text})"));
    assert_eq!(
        PrekeyId::from_hex(&"ab".repeat(16)).unwrap(),
        PrekeyId::from_bytes([0xab; 16])
    );
    assert!(matches!(
        PrekeyId::from_hex(&"AB".repeat(16)),
        Err(PrekeyError::Encoding { .. })
    ));
    assert!(matches!(
        PrekeyId::from_hex("0g"),
        Err(PrekeyError::Encoding { .. })
    ));
    assert!(matches!(
        PrekeyId::from_hex("abc"),
        Err(PrekeyError::Encoding { .. })
    ));
    assert_eq!(
        PrekeyId::from_hex("00").unwrap_err(),
        PrekeyError::BadLength {
            field: "prekeyId",
            len: 1,
            expected: 16
        }
    );
    assert!(matches!(
        PrekeyId::parse("not base64!"),
        Err(PrekeyError::Encoding { .. })
    ));
    assert_eq!(
        PrekeyId::parse(&URL_SAFE_NO_PAD.encode([0u8; 17])).unwrap_err(),
        PrekeyError::BadLength {
            field: "prekeyId",
            len: 17,
            expected: 16
        }
    );
    assert_ne!(PrekeyId::generate(&mut rng), id);
}

#[test]
fn prekey_secret_is_x25519_and_redacted() {
    // RFC 7748 §6.1: Alice's private and public keys.
    let sk: [u8; 32] =
        hex::decode("77076d0a7318a57d3c16c17251b26645df4c2f87ebc0992ab177fba51db92c2a")
            .unwrap()
            .try_into()
            .unwrap();
    let secret = PrekeySecret::from_bytes(sk);
    assert_eq!(
        hex::encode(secret.public_key()),
        "8520f0098930a754748b7ddcb43ef75a0dbf3a0d26381af4eba4a98eaa9b4e6a"
    );
    assert_eq!(*secret.to_bytes(), sk);
    let prekey = Prekey {
        id: PrekeyId::from_bytes([9; 16]),
        secret,
        last_resort: false,
    };
    let shown = format!("{prekey:?}");
    assert!(shown.contains("PrekeySecret(..)"), "{shown}");
    assert!(!shown.contains("77076d0a") && !shown.contains("119"));
    let mut s = PrekeySecret::from_bytes([5; 32]);
    s.zeroize();
    assert_eq!(*s.to_bytes(), [0u8; 32]);
}

#[test]
fn signed_bytes_layout() {
    let id = PrekeyId::from_bytes([0x11; 16]);
    let pk = [0x22; 32];
    let got = signed_bytes(&did("did:ixo:o"), &id, &pk, true);
    let mut want = vec![0, 0, 0, 22];
    want.extend_from_slice(b"oracle-calls/prekey/v1");
    want.extend_from_slice(&[0, 0, 0, 9]);
    want.extend_from_slice(b"did:ixo:o");
    want.extend_from_slice(&[0x11; 16]);
    want.extend_from_slice(&[0x22; 32]);
    want.push(1);
    assert_eq!(got, want);
    assert_eq!(
        signed_bytes(&did("did:ixo:o"), &id, &pk, false).last(),
        Some(&0)
    );
}

#[test]
fn signatures_verify_only_for_their_oracle_key_and_fields() {
    let mut rng = StdRng::seed_from_u64(4);
    let signer = PrekeySigningKey::generate(&mut rng);
    let oracle = did("did:ixo:entity:oracle-1");
    for last_resort in [false, true] {
        let prekey = Prekey::generate(last_resort, &mut rng);
        let signed = prekey.sign(&signer, &oracle);
        assert_eq!(signed.prekey_id.len(), 22);
        assert_eq!(signed.public_key.len(), 43);
        assert_eq!(signed.signature.len(), 86);
        assert_eq!(signed.last_resort, last_resort);
        // Ed25519 is deterministic.
        assert_eq!(prekey.sign(&signer, &oracle), signed);

        let ok = verify_prekey(&signed, &signer.public_key(), &oracle).unwrap();
        assert_eq!(ok.id(), prekey.id);
        assert_eq!(ok.public_key(), &prekey.public_key());
        assert_eq!(ok.last_resort(), last_resort);

        // Another oracle's DID, the lastResort flag flipped, another signing key.
        assert_eq!(
            verify_prekey(
                &signed,
                &signer.public_key(),
                &did("did:ixo:entity:oracle-2")
            )
            .unwrap_err(),
            PrekeyError::BadSignature
        );
        let mut flipped = signed.clone();
        flipped.last_resort = !last_resort;
        assert_eq!(
            verify_prekey(&flipped, &signer.public_key(), &oracle).unwrap_err(),
            PrekeyError::BadSignature
        );
        let other = PrekeySigningKey::generate(&mut rng);
        assert_eq!(
            verify_prekey(&signed, &other.public_key(), &oracle).unwrap_err(),
            PrekeyError::BadSignature
        );
        // Another prekey's public key or id under this signature.
        let mut swapped = signed.clone();
        swapped.public_key = URL_SAFE_NO_PAD.encode(Prekey::generate(false, &mut rng).public_key());
        assert_eq!(
            verify_prekey(&swapped, &signer.public_key(), &oracle).unwrap_err(),
            PrekeyError::BadSignature
        );
        let mut swapped = signed.clone();
        swapped.prekey_id = PrekeyId::generate(&mut rng).to_string();
        assert_eq!(
            verify_prekey(&swapped, &signer.public_key(), &oracle).unwrap_err(),
            PrekeyError::BadSignature
        );
        // A flipped signature bit.
        let mut sig = URL_SAFE_NO_PAD.decode(&signed.signature).unwrap();
        sig[10] ^= 1;
        let mut bad = signed.clone();
        bad.signature = URL_SAFE_NO_PAD.encode(sig);
        assert_eq!(
            verify_prekey(&bad, &signer.public_key(), &oracle).unwrap_err(),
            PrekeyError::BadSignature
        );
    }
}

#[test]
fn signed_prekey_fields_are_checked_for_encoding_and_length() {
    let mut rng = StdRng::seed_from_u64(5);
    let signer = PrekeySigningKey::generate(&mut rng);
    let oracle = did("did:ixo:o");
    let signed = Prekey::generate(false, &mut rng).sign(&signer, &oracle);
    let check = |f: &dyn Fn(&mut SignedPrekey)| {
        let mut s = signed.clone();
        f(&mut s);
        verify_prekey(&s, &signer.public_key(), &oracle).unwrap_err()
    };
    let b64 = "base64url (no padding)";
    for (field, len, expected) in [
        ("prekeyId", 15, 16),
        ("publicKey", 31, 32),
        ("signature", 63, 64),
    ] {
        let short = URL_SAFE_NO_PAD.encode(vec![1u8; len]);
        let long = URL_SAFE_NO_PAD.encode(vec![1u8; expected + 1]);
        let set = |s: &mut SignedPrekey, v: &str| match field {
            "prekeyId" => s.prekey_id = v.to_owned(),
            "publicKey" => s.public_key = v.to_owned(),
            _ => s.signature = v.to_owned(),
        };
        assert_eq!(
            check(&|s| set(s, &short)),
            PrekeyError::BadLength {
                field,
                len,
                expected
            }
        );
        assert_eq!(
            check(&|s| set(s, &long)),
            PrekeyError::BadLength {
                field,
                len: expected + 1,
                expected
            }
        );
        assert_eq!(
            check(&|s| set(s, "")),
            PrekeyError::BadLength {
                field,
                len: 0,
                expected
            }
        );
        let padded = format!("{}==", URL_SAFE_NO_PAD.encode(vec![1u8; expected]));
        assert_eq!(
            check(&|s| set(s, &padded)),
            PrekeyError::Encoding {
                field,
                encoding: b64
            }
        );
        let standard = STANDARD.encode(vec![0xfbu8; expected]).replace('=', "");
        assert_eq!(
            check(&|s| set(s, &standard)),
            PrekeyError::Encoding {
                field,
                encoding: b64
            }
        );
    }
}

#[test]
fn only_scalars_below_the_group_order_are_canonical() {
    let l = super::GROUP_ORDER_LE;
    assert!(!super::scalar_is_canonical(&l), "L itself");
    let mut below = l;
    below[0] -= 1;
    assert!(super::scalar_is_canonical(&below), "L - 1");
    let mut above = l;
    above[0] += 1;
    assert!(!super::scalar_is_canonical(&above), "L + 1");
    assert!(super::scalar_is_canonical(&[0u8; 32]));
    assert!(!super::scalar_is_canonical(&[0xffu8; 32]));
    let mut high = [0u8; 32];
    high[31] = 0x10;
    assert!(super::scalar_is_canonical(&high), "2^252 < L");
    high[31] = 0x20;
    assert!(!super::scalar_is_canonical(&high), "2^253 > L");
    assert!(!super::scalar_is_canonical(&[0u8; 31]), "a short slice");
}

//! Frame E2EE against vectors made by Python `cryptography` and Node WebCrypto
//! (tests/vectors/gen/gen_frames.py, gen_frames_webcrypto.mjs).

use serde::Deserialize;

use super::*;
use crate::KeyDerivation;

#[derive(Deserialize)]
struct File {
    derivations: Vec<Derivation>,
    frames: Vec<Frame>,
    data_packets: Vec<DataPacket>,
}

#[derive(Deserialize)]
struct Derivation {
    name: String,
    kdf: String,
    material_hex: String,
    aes_key_hex: String,
    ratchets: Vec<Ratchet>,
}

#[derive(Deserialize)]
struct Ratchet {
    material_hex: String,
    aes_key_hex: String,
}

#[derive(Deserialize)]
struct Frame {
    name: String,
    kdf: String,
    material_hex: String,
    ratchet_steps: u32,
    key_index: u8,
    kind: String,
    iv_hex: String,
    header_len: usize,
    plaintext_hex: String,
    encrypted_hex: String,
}

#[derive(Deserialize)]
struct DataPacket {
    kdf: String,
    material_hex: String,
    ratchet_steps: u32,
    key_index: u8,
    iv_hex: String,
    plaintext_hex: String,
    ciphertext_hex: String,
}

fn kdf(s: &str) -> KeyDerivation {
    match s {
        "pbkdf2" => KeyDerivation::Pbkdf2,
        "hkdf" => KeyDerivation::Hkdf,
        other => panic!("unknown kdf {other}"),
    }
}

fn kind(s: &str) -> FrameKind {
    match s {
        "audio" => FrameKind::Audio,
        "vp8" => FrameKind::Vp8,
        "vp9" => FrameKind::Vp9,
        other => panic!("unknown kind {other}"),
    }
}

fn load(name: &str) -> File {
    let path = format!("{}/tests/vectors/{name}", env!("CARGO_MANIFEST_DIR"));
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{path}: {e}"));
    serde_json::from_str(&text).unwrap()
}

fn ring_for(kdf_name: &str, material_hex: &str, steps: u32, index: u8) -> KeyRing {
    let mut ring = KeyRing::new(KeyRingOptions::default()).unwrap();
    ring.set_key_material(index, kdf(kdf_name), &hex::decode(material_hex).unwrap())
        .unwrap();
    for _ in 0..steps {
        ring.ratchet(index).unwrap();
    }
    ring.set_current_index(index).unwrap();
    ring
}

fn check_file(name: &str) {
    let f = load(name);
    assert!(f.derivations.len() >= 4, "{name}: too few derivations");
    for d in &f.derivations {
        let mut ks = keyring::KeySet::derive(
            kdf(&d.kdf),
            &hex::decode(&d.material_hex).unwrap(),
            DEFAULT_RATCHET_SALT,
        )
        .unwrap();
        assert_eq!(
            hex::encode(ks.aes_key()),
            d.aes_key_hex,
            "{name} {}",
            d.name
        );
        for (i, r) in d.ratchets.iter().enumerate() {
            assert_eq!(
                hex::encode(ks.next_material()),
                r.material_hex,
                "{} ratchet {}",
                d.name,
                i + 1
            );
            ks = ks.ratchet(DEFAULT_RATCHET_SALT).unwrap();
            assert_eq!(
                hex::encode(ks.aes_key()),
                r.aes_key_hex,
                "{} ratchet {}",
                d.name,
                i + 1
            );
        }
    }
    assert!(f.frames.len() >= 10, "{name}: too few frames");
    for v in &f.frames {
        let ring = ring_for(&v.kdf, &v.material_hex, v.ratchet_steps, v.key_index);
        let plain = hex::decode(&v.plaintext_hex).unwrap();
        let k = kind(&v.kind);
        // Decrypt the independent implementation's frame.
        let mut rx = FrameDecryptor::new(ring.clone());
        let got = rx
            .decrypt(k, &hex::decode(&v.encrypted_hex).unwrap())
            .unwrap();
        if plain.is_empty() {
            assert_eq!(got, Decrypted::Empty, "{}", v.name);
            continue;
        }
        assert_eq!(got, Decrypted::Frame(plain.clone()), "{}", v.name);
        assert_eq!(k.clear_len(&plain), v.header_len, "{}", v.name);
        // Encrypt with the same IV: byte for byte the same frame.
        let tx = FrameEncryptor::new(ring, &mut rand::rng());
        let iv: [u8; 12] = hex::decode(&v.iv_hex).unwrap().try_into().unwrap();
        let ours = tx.dangerous_encrypt_with_iv(k, &plain, iv).unwrap();
        assert_eq!(hex::encode(ours), v.encrypted_hex, "{}", v.name);
    }
    assert!(!f.data_packets.is_empty());
    for p in &f.data_packets {
        let ring = ring_for(&p.kdf, &p.material_hex, p.ratchet_steps, p.key_index);
        let mut rx = FrameDecryptor::new(ring);
        let pt = rx
            .decrypt_data(
                &hex::decode(&p.iv_hex).unwrap(),
                p.key_index,
                &hex::decode(&p.ciphertext_hex).unwrap(),
            )
            .unwrap();
        assert_eq!(hex::encode(pt), p.plaintext_hex);
    }
}

#[test]
fn python_cryptography_vectors() {
    check_file("frames.json");
}

#[test]
fn node_webcrypto_vectors() {
    check_file("frames_webcrypto.json");
}

#[test]
fn worked_vectors_of_the_interop_doc() {
    // livekit-interop.md §1.12, typed in from the document.
    let mut ring = KeyRing::new(KeyRingOptions::default()).unwrap();
    ring.set_key_material(0, KeyDerivation::Pbkdf2, b"livekitrocks")
        .unwrap();
    let tx = FrameEncryptor::new(ring.clone(), &mut rand::rng());
    let iv: [u8; 12] = hex::decode("112233440001e2400001e239")
        .unwrap()
        .try_into()
        .unwrap();
    let out = tx
        .dangerous_encrypt_with_iv(
            FrameKind::Audio,
            &hex::decode("fc0102030405060708090a0b0c0d0e0f10111213").unwrap(),
            iv,
        )
        .unwrap();
    assert_eq!(
        hex::encode(out),
        "fce26da7a713cedd80b4849c10e823702767893818a7b938207b30efc5d518afdeb7ac60112233440001e2400001e2390c00"
    );
}

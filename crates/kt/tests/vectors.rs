//! The checkpoint and record encodings against vectors from an independent implementation
//! (tests/vectors/gen/gen_vectors.py: Python `struct` and the PyPI `cryptography` Ed25519).
#![allow(clippy::unwrap_used, clippy::indexing_slicing)]

use oracle_calls_kt::{
    DirectoryKeyId, DirectoryPublicKey, OracleRecord, PersonId, PersonRecord, SignedCheckpoint,
    Subject as _, verify_checkpoint,
};
use serde_json::Value;

fn vectors() -> Value {
    serde_json::from_str(include_str!("vectors/kt.json")).unwrap()
}

fn b64url(text: &str) -> Vec<u8> {
    use base64::Engine as _;
    base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(text)
        .unwrap()
}

#[test]
fn checkpoints_signed_by_python_verify_with_the_same_bytes() {
    let v = vectors();
    let public: [u8; 32] = b64url(v["signingPublicKey"].as_str().unwrap())
        .try_into()
        .unwrap();
    assert_eq!(
        DirectoryKeyId::of(&public).to_string(),
        v["signingKeyId"].as_str().unwrap()
    );
    // Any valid point serves as the VRF key for checkpoint checks.
    let key = DirectoryPublicKey::new(public, public).unwrap();
    let cases = v["checkpoints"].as_array().unwrap();
    assert_eq!(cases.len(), 3);
    for case in cases {
        let signed: SignedCheckpoint =
            serde_json::from_value(case["signedCheckpoint"].clone()).unwrap();
        assert_eq!(
            hex::encode(signed.checkpoint.signed_bytes()),
            case["signedBytesHex"].as_str().unwrap()
        );
        assert_eq!(verify_checkpoint(&signed, &key).unwrap(), signed.checkpoint);
        assert_eq!(
            serde_json::to_value(&signed).unwrap(),
            case["signedCheckpoint"]
        );
    }
}

#[test]
fn records_encode_as_python_encodes_them() {
    let v = vectors();
    let cases = v["records"].as_array().unwrap();
    assert_eq!(cases.len(), 3);
    // One of them is a v2 record (with a prekey signing key).
    assert!(
        cases
            .iter()
            .any(|c| c["record"]["prekeySigningKey"].is_string())
    );
    for case in cases {
        let record: OracleRecord = serde_json::from_value(case["record"].clone()).unwrap();
        let bytes = hex::decode(case["bytesHex"].as_str().unwrap()).unwrap();
        assert_eq!(record.to_bytes(), bytes);
        assert_eq!(OracleRecord::from_bytes(&bytes).unwrap(), record);
    }
}

#[test]
fn person_records_encode_as_python_encodes_them() {
    let v = vectors();
    let cases = v["people"].as_array().unwrap();
    assert_eq!(cases.len(), 3);
    for case in cases {
        let record: PersonRecord = serde_json::from_value(case["record"].clone()).unwrap();
        let bytes = hex::decode(case["bytesHex"].as_str().unwrap()).unwrap();
        assert_eq!(record.to_bytes(), bytes);
        let label = PersonId::parse(&record.matrix_user_id).unwrap();
        assert_eq!(label.decode(&bytes).unwrap(), record);
        // Under another label the same bytes are refused (the record names its user).
        let other = PersonId::parse("@mallory:example.org").unwrap();
        assert!(other.decode(&bytes).is_err());
    }
}

#[cfg(feature = "directory")]
#[test]
fn the_directory_signing_key_from_the_python_seed_has_the_same_public_key() {
    let v = vectors();
    let seed: [u8; 32] = std::array::from_fn(|i| i as u8);
    let key =
        oracle_calls_kt::CheckpointSigningKey::from_seed(zeroize::Zeroizing::new(seed)).unwrap();
    assert_eq!(
        key.public_key().to_vec(),
        b64url(v["signingPublicKey"].as_str().unwrap())
    );
    assert_eq!(
        key.key_id().to_string(),
        v["signingKeyId"].as_str().unwrap()
    );
}

//! Lookup vectors for other implementations of the verify side (the browser SDK's
//! `sdk/browser/src/kt.ts`): a real akd directory (in memory, fixed keys and times) publishes
//! records for three oracles over four epochs, and every answer is written exactly as
//! `oracle-calls kt serve` sends it (`GET /kt/v1/lookup/{did}`), with what this crate's
//! verifier makes of it: the record, or the reason it refuses.
//!
//! The file `tests/vectors/kt_lookup.json` is committed. This test rebuilds it and requires
//! the committed file to be byte-identical (the directory is deterministic: fixed keys, fixed
//! times, akd's commitments and VRF proofs derive from the keys), and checks every case of the
//! committed file with the Rust verifier. `REGEN=1 cargo test -p oracle-calls-kt --test
//! ts_vectors` rewrites the file.
//!
//! Reasons (shared with the TypeScript `KtError.reason`): `unknown_key`, `bad_signature`,
//! `rollback`, `fork`, `time_went_backwards`, `malformed`, `too_large`, `malformed_record`,
//! `lookup_proof`.
#![cfg(feature = "directory")]
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]

use akd_core::proto::specs::types as pb;
use aws_lc_rs::signature::{Ed25519KeyPair, KeyPair as _};
use oracle_calls_kt::{
    Checkpoint, CheckpointSigningKey, Directory, DirectoryKeyId, Error, HistoryProof,
    HistoryResponse, LookupProof, LookupResponse, OracleRecord, SignedCheckpoint, Verifier,
    VrfSecretKey,
};
use oracle_calls_proto::{BotDevice, Did, KeyScheme, OracleKeyInfo};
use protobuf::Message as _;
use serde_json::{Value, json};
use zeroize::Zeroizing;

const SIGNING_SEED: [u8; 32] = [0x51; 32];
const VRF_KEY: [u8; 32] = [0x52; 32];
const OTHER_SEED: [u8; 32] = [0x53; 32];
const T0: i64 = 1_767_225_600_000;
const PATH: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/vectors/kt_lookup.json");

fn did(name: &str) -> Did {
    Did::parse(name).unwrap()
}

fn record(agent: &str, key_id: &str, prekey: Option<&str>) -> OracleRecord {
    OracleRecord {
        keys: vec![
            OracleKeyInfo {
                key_id: key_id.into(),
                scheme: KeyScheme::HpkeP256,
                public_key: format!("BPk-{key_id}"),
            },
            OracleKeyInfo {
                key_id: format!("{key_id}-x"),
                scheme: KeyScheme::HpkeX25519,
                public_key: format!("X-{key_id}"),
            },
        ],
        matrix_user_id: format!("@{agent}:localhost"),
        bot_devices: vec![BotDevice {
            device_id: format!("DEV{}", agent.len()),
            ed25519: format!("ed-{agent}"),
        }],
        agent_name: agent.into(),
        prekey_signing_key: prekey.map(str::to_owned),
    }
}

fn reason(e: &Error) -> &'static str {
    match e {
        Error::UnknownKey { .. } => "unknown_key",
        Error::BadSignature => "bad_signature",
        Error::Rollback { .. } => "rollback",
        Error::Fork { .. } => "fork",
        Error::TimeWentBackwards { .. } => "time_went_backwards",
        Error::Malformed { .. } => "malformed",
        Error::TooLarge { .. } => "too_large",
        Error::MalformedRecord(_) => "malformed_record",
        Error::LookupProof => "lookup_proof",
        other => panic!("unexpected error {other:?}"),
    }
}

/// What the Rust verifier makes of one answer: `{"ok": true, record, epoch, version,
/// checkpointEpoch}` or `{"ok": false, "reason"}`.
fn outcome(directory_key: &Value, did_text: &str, body: &str, stored: Option<&Value>) -> Value {
    let key = serde_json::from_value(directory_key.clone()).unwrap();
    let mut verifier = match stored {
        None => Verifier::new(key),
        Some(s) => Verifier::resume(key, serde_json::from_value(s.clone()).unwrap()).unwrap(),
    };
    let did = did(did_text);
    let result = LookupResponse::from_json(body.as_bytes()).and_then(|r| {
        verifier
            .verify_lookup(&r.checkpoint, &did, &r.proof)
            .map(|v| (v, r.checkpoint.checkpoint.epoch))
    });
    match result {
        Ok((v, checkpoint_epoch)) => json!({
            "ok": true,
            "record": serde_json::to_value(&v.record).unwrap(),
            "epoch": v.epoch,
            "version": v.version,
            "checkpointEpoch": checkpoint_epoch,
        }),
        Err(e) => json!({"ok": false, "reason": reason(&e)}),
    }
}

fn sign_with(seed: &[u8; 32], checkpoint: Checkpoint) -> SignedCheckpoint {
    let pair = Ed25519KeyPair::from_seed_unchecked(seed).unwrap();
    let public: [u8; 32] = pair.public_key().as_ref().try_into().unwrap();
    SignedCheckpoint {
        checkpoint,
        signature: pair
            .sign(&checkpoint.signed_bytes())
            .as_ref()
            .try_into()
            .unwrap(),
        key_id: DirectoryKeyId::of(&public),
    }
}

fn body_of(response: &LookupResponse) -> String {
    serde_json::to_string(response).unwrap()
}

fn with_proof(response: &LookupResponse, bytes: Vec<u8>) -> String {
    body_of(&LookupResponse {
        checkpoint: response.checkpoint.clone(),
        proof: LookupProof::from_bytes(bytes),
    })
}

fn with_checkpoint(response: &LookupResponse, checkpoint: SignedCheckpoint) -> String {
    body_of(&LookupResponse {
        checkpoint,
        proof: response.proof.clone(),
    })
}

fn mutated(response: &LookupResponse, change: impl FnOnce(&mut pb::LookupProof)) -> String {
    let mut message = pb::LookupProof::parse_from_bytes(response.proof.as_bytes()).unwrap();
    change(&mut message);
    with_proof(response, message.write_to_bytes().unwrap())
}

fn appended(response: &LookupResponse, extra: &[u8]) -> String {
    let mut bytes = response.proof.as_bytes().to_vec();
    bytes.extend_from_slice(extra);
    with_proof(response, bytes)
}

async fn build() -> Value {
    let directory = Directory::in_memory(
        CheckpointSigningKey::from_seed(Zeroizing::new(SIGNING_SEED)).unwrap(),
        VrfSecretKey::from_bytes(Zeroizing::new(VRF_KEY)),
        T0,
    )
    .await
    .unwrap();
    let key = serde_json::to_value(directory.public_key()).unwrap();
    let (o1, o2, o3) = (
        "did:ixo:oracle1",
        "did:ixo:oracle2",
        "did:web:oracle3.example%3A8443",
    );
    let prekey = "cHJla2V5LXNpZ25pbmcta2V5LW9mLW9yYWNsZS10aHJlZQ";

    let mut cases = Vec::new();
    let mut case = |name: &str, did: &str, body: String, stored: Option<Value>| {
        let expect = outcome(&key, did, &body, stored.as_ref());
        let mut c = json!({"name": name, "did": did, "body": body, "expect": expect});
        if let Some(s) = stored {
            c["stored"] = s;
        }
        cases.push(c);
    };

    // Epoch 1: two oracles; epoch 2: oracle1 changes its key; epoch 3: a third oracle with a
    // prekey signing key (a v2 record); epoch 4: oracle2 adds one.
    let epochs: [Vec<(&str, OracleRecord)>; 4] = [
        vec![
            (
                o1,
                record("agent-one", "00000000000000000000000000000001", None),
            ),
            (
                o2,
                record("agent-two", "00000000000000000000000000000002", None),
            ),
        ],
        vec![(
            o1,
            record("agent-one", "00000000000000000000000000000011", None),
        )],
        vec![(
            o3,
            record(
                "agent-three",
                "00000000000000000000000000000003",
                Some(prekey),
            ),
        )],
        vec![(
            o2,
            record(
                "agent-two",
                "00000000000000000000000000000002",
                Some(prekey),
            ),
        )],
    ];
    let mut answers = Vec::new();
    for (i, updates) in epochs.into_iter().enumerate() {
        let n = i64::try_from(i).unwrap() + 1;
        let updates = updates.into_iter().map(|(d, r)| (did(d), r)).collect();
        let cp = directory.publish(updates, T0 + n * 60_000).await.unwrap();
        assert_eq!(i64::try_from(cp.checkpoint.epoch).unwrap(), n);
        for d in [o1, o2, o3] {
            if let Ok(r) = directory.lookup(&did(d)).await {
                case(&format!("epoch {n}: {d}"), d, body_of(&r), None);
                answers.push((n, d, r));
            }
        }
    }
    // A directory with one record: the root's other child is empty, so the freshness proof's
    // children are the leaf and the empty node (akd's empty label, longest prefix the root).
    let single = Directory::in_memory(
        CheckpointSigningKey::from_seed(Zeroizing::new(SIGNING_SEED)).unwrap(),
        VrfSecretKey::from_bytes(Zeroizing::new(VRF_KEY)),
        T0,
    )
    .await
    .unwrap();
    single
        .publish(
            vec![(
                did(o1),
                record("agent-one", "00000000000000000000000000000001", None),
            )],
            T0 + 60_000,
        )
        .await
        .unwrap();
    let lone = single.lookup(&did(o1)).await.unwrap();
    case("a directory with one record", o1, body_of(&lone), None);
    case(
        "a directory with one record: empty child's label changed",
        o1,
        mutated(&lone, |m| {
            let f = m.freshness_proof.mut_or_insert_default();
            for c in &mut f.longest_prefix_children {
                let l = c.label.mut_or_insert_default();
                if l.label_len() == 0 {
                    l.set_label_val(vec![0; 32]);
                }
            }
        }),
        None,
    );

    let histories = history_cases(&directory, &key, [o1, o2, o3]).await;
    let latest = directory.latest_checkpoint().await.unwrap();
    let mut checkpoints = Vec::new();
    for e in 0..=latest.checkpoint.epoch {
        checkpoints.push(serde_json::to_value(directory.checkpoint(e).await.unwrap()).unwrap());
    }
    let at = |epoch: i64, d: &str| {
        answers
            .iter()
            .find(|(n, dd, _)| *n == epoch && *dd == d)
            .map(|(_, _, r)| r.clone())
            .unwrap()
    };
    let r = at(4, o1);
    let r2 = at(4, o2);
    let old = at(2, o1);
    let cp = |e: usize| checkpoints[e].clone();

    // The checkpoint state a client stored before.
    case("stored: same checkpoint", o1, body_of(&r), Some(cp(4)));
    case("stored: older checkpoint", o1, body_of(&r), Some(cp(1)));
    case(
        "rollback: stored epoch 4, offered epoch 2",
        o1,
        body_of(&old),
        Some(cp(4)),
    );
    let forked = sign_with(
        &SIGNING_SEED,
        Checkpoint {
            time_ms: r.checkpoint.checkpoint.time_ms + 1,
            ..r.checkpoint.checkpoint
        },
    );
    case(
        "fork: another checkpoint for the stored epoch",
        o1,
        body_of(&r),
        Some(serde_json::to_value(&forked).unwrap()),
    );
    let late = sign_with(
        &SIGNING_SEED,
        Checkpoint {
            time_ms: r.checkpoint.checkpoint.time_ms + 3_600_000,
            ..old.checkpoint.checkpoint
        },
    );
    case(
        "time went backwards: stored epoch 2 dated after epoch 4",
        o1,
        body_of(&r),
        Some(serde_json::to_value(&late).unwrap()),
    );

    // Checkpoints.
    let mut bad_sig = r.checkpoint.clone();
    bad_sig.signature[10] ^= 0x01;
    case(
        "checkpoint signature flipped",
        o1,
        with_checkpoint(&r, bad_sig),
        None,
    );
    let mut bad_epoch = r.checkpoint.clone();
    bad_epoch.checkpoint.epoch += 1;
    case(
        "checkpoint epoch changed",
        o1,
        with_checkpoint(&r, bad_epoch),
        None,
    );
    case(
        "checkpoint signed by another key",
        o1,
        with_checkpoint(&r, sign_with(&OTHER_SEED, r.checkpoint.checkpoint)),
        None,
    );
    let mut claimed = sign_with(&OTHER_SEED, r.checkpoint.checkpoint);
    claimed.key_id = r.checkpoint.key_id;
    case(
        "checkpoint signed by another key naming the directory's key id",
        o1,
        with_checkpoint(&r, claimed),
        None,
    );
    case(
        "validly signed checkpoint of another root",
        o1,
        with_checkpoint(
            &r,
            sign_with(
                &SIGNING_SEED,
                Checkpoint {
                    root_hash: old.checkpoint.checkpoint.root_hash,
                    ..r.checkpoint.checkpoint
                },
            ),
        ),
        None,
    );

    // Another DID's answer.
    case("oracle2's answer for oracle1", o1, body_of(&r2), None);
    case("oracle1's answer for oracle3", o3, body_of(&r), None);
    case(
        "answer for a DID one character off",
        "did:ixo:oracle10",
        body_of(&r),
        None,
    );

    // The proof, field by field.
    case(
        "value: another record",
        o1,
        mutated(&r, |m| m.set_value(r2_value(&r2))),
        None,
    );
    case(
        "commitment nonce flipped",
        o1,
        mutated(&r, |m| m.mut_commitment_nonce()[3] ^= 0x80),
        None,
    );
    case(
        "existence hash_val flipped",
        o1,
        mutated(&r, |m| {
            m.existence_proof.mut_or_insert_default().mut_hash_val()[0] ^= 1
        }),
        None,
    );
    case(
        "existence VRF proof: c flipped",
        o1,
        mutated(&r, |m| m.mut_existence_vrf_proof()[40] ^= 1),
        None,
    );
    case(
        "existence VRF proof: s flipped",
        o1,
        mutated(&r, |m| m.mut_existence_vrf_proof()[60] ^= 1),
        None,
    );
    case(
        "existence VRF proof: gamma flipped",
        o1,
        mutated(&r, |m| m.mut_existence_vrf_proof()[0] ^= 2),
        None,
    );
    case(
        "existence VRF proof: another DID's",
        o1,
        mutated(&r, |m| {
            m.set_existence_vrf_proof(parse(&r2).existence_vrf_proof().to_vec());
        }),
        None,
    );
    case(
        "existence VRF proof: 79 bytes",
        o1,
        mutated(&r, |m| {
            m.mut_existence_vrf_proof().pop();
        }),
        None,
    );
    case(
        "marker VRF proof: the existence one",
        o1,
        mutated(&r, |m| {
            let e = m.existence_vrf_proof().to_vec();
            m.set_marker_vrf_proof(e);
        }),
        None,
    );
    case(
        "freshness VRF proof: the existence one",
        o1,
        mutated(&r, |m| {
            let e = m.existence_vrf_proof().to_vec();
            m.set_freshness_vrf_proof(e);
        }),
        None,
    );
    case(
        "version claimed 1 (it is 2)",
        o1,
        mutated(&r, |m| m.set_version(1)),
        None,
    );
    case("version 0", o1, mutated(&r, |m| m.set_version(0)), None);
    case(
        "epoch beyond the checkpoint",
        o1,
        mutated(&r, |m| m.set_epoch(5)),
        None,
    );
    case(
        "epoch claimed 1 (it is 2)",
        o1,
        mutated(&r, |m| m.set_epoch(1)),
        None,
    );
    case(
        "existence sibling direction flipped",
        o1,
        mutated(&r, |m| {
            let s = &mut m.existence_proof.mut_or_insert_default().sibling_proofs[0];
            s.set_direction(s.direction() ^ 1);
        }),
        None,
    );
    case(
        "existence sibling direction with blinding bits (masked: verifies)",
        o1,
        mutated(&r, |m| {
            let s = &mut m.existence_proof.mut_or_insert_default().sibling_proofs[0];
            s.set_direction(s.direction() | 0x30);
        }),
        None,
    );
    case(
        "existence sibling direction 2",
        o1,
        mutated(&r, |m| {
            m.existence_proof.mut_or_insert_default().sibling_proofs[0].set_direction(2);
        }),
        None,
    );
    case(
        "existence sibling value flipped",
        o1,
        mutated(&r, |m| {
            m.existence_proof.mut_or_insert_default().sibling_proofs[0].siblings[0].mut_value()
                [7] ^= 4;
        }),
        None,
    );
    case(
        "existence sibling dropped",
        o1,
        mutated(&r, |m| {
            m.existence_proof
                .mut_or_insert_default()
                .sibling_proofs
                .remove(0);
        }),
        None,
    );
    case(
        "existence sibling value 31 bytes",
        o1,
        mutated(&r, |m| {
            m.existence_proof.mut_or_insert_default().sibling_proofs[0].siblings[0]
                .mut_value()
                .pop();
        }),
        None,
    );
    case(
        "existence sibling with no siblings",
        o1,
        mutated(&r, |m| {
            m.existence_proof.mut_or_insert_default().sibling_proofs[0]
                .siblings
                .clear();
        }),
        None,
    );
    case(
        "existence sibling with a second sibling (ignored: verifies)",
        o1,
        mutated(&r, |m| {
            let s = &mut m.existence_proof.mut_or_insert_default().sibling_proofs[0];
            let extra = s.siblings[0].clone();
            s.siblings.push(extra);
        }),
        None,
    );
    case(
        "existence label length 257",
        o1,
        mutated(&r, |m| {
            m.existence_proof
                .mut_or_insert_default()
                .label
                .mut_or_insert_default()
                .set_label_len(257);
        }),
        None,
    );
    case(
        "existence label value 33 bytes",
        o1,
        mutated(&r, |m| {
            let l = m
                .existence_proof
                .mut_or_insert_default()
                .label
                .mut_or_insert_default();
            let mut v = l.label_val().to_vec();
            v.resize(33, 1);
            l.set_label_val(v);
        }),
        None,
    );
    case(
        "marker proof: the existence proof",
        o1,
        mutated(&r, |m| {
            let e = m.existence_proof.clone();
            m.marker_proof = e;
        }),
        None,
    );
    case(
        "freshness: label equals a child's",
        o1,
        mutated(&r, |m| {
            let f = m.freshness_proof.mut_or_insert_default();
            let child = f.longest_prefix_children[0].label.clone();
            f.label = child;
        }),
        None,
    );
    case(
        "freshness: children swapped",
        o1,
        mutated(&r, |m| {
            m.freshness_proof
                .mut_or_insert_default()
                .longest_prefix_children
                .swap(0, 1);
        }),
        None,
    );
    case(
        "freshness: one child",
        o1,
        mutated(&r, |m| {
            m.freshness_proof
                .mut_or_insert_default()
                .longest_prefix_children
                .pop();
        }),
        None,
    );
    case(
        "freshness: longest prefix one bit shorter",
        o1,
        mutated(&r, |m| {
            let p = m
                .freshness_proof
                .mut_or_insert_default()
                .longest_prefix
                .mut_or_insert_default();
            let len = p.label_len();
            p.set_label_len(len.saturating_sub(1));
        }),
        None,
    );
    case(
        "freshness: child value flipped",
        o1,
        mutated(&r, |m| {
            m.freshness_proof
                .mut_or_insert_default()
                .longest_prefix_children[1]
                .mut_value()[31] ^= 1;
        }),
        None,
    );
    case(
        "freshness: membership proof missing",
        o1,
        mutated(&r, |m| {
            m.freshness_proof
                .mut_or_insert_default()
                .longest_prefix_membership_proof
                .clear();
        }),
        None,
    );
    case(
        "commitment nonce missing",
        o1,
        mutated(&r, |m| m.clear_commitment_nonce()),
        None,
    );
    case(
        "marker proof missing",
        o1,
        mutated(&r, |m| m.marker_proof.clear()),
        None,
    );

    // The protobuf encoding itself.
    case(
        "unknown varint field appended (skipped: verifies)",
        o1,
        appended(&r, &[0x98, 0x06, 0x01]),
        None,
    );
    case(
        "unknown length-delimited and fixed fields appended (skipped: verifies)",
        o1,
        appended(
            &r,
            &[
                0xa2, 0x06, 0x02, 0xaa, 0xbb, 0xad, 0x06, 1, 2, 3, 4, 0xa9, 0x06, 1, 2, 3, 4, 5, 6,
                7, 8,
            ],
        ),
        None,
    );
    case(
        "unknown group appended (skipped: verifies)",
        o1,
        appended(
            &r,
            &[0xab, 0x06, 0x08, 0x01, 0xb3, 0x06, 0xb4, 0x06, 0xac, 0x06],
        ),
        None,
    );
    case(
        "unterminated group",
        o1,
        appended(&r, &[0xab, 0x06, 0x08, 0x01]),
        None,
    );
    case("stray end-group tag", o1, appended(&r, &[0xac, 0x06]), None);
    case("field number 0", o1, appended(&r, &[0x00, 0x01]), None);
    case("wire type 6", o1, appended(&r, &[0x0e]), None);
    case(
        "version repeated with the same value (last wins: verifies)",
        o1,
        appended(&r, &[0x18, 0x02]),
        None,
    );
    case(
        "version repeated with another value (last wins)",
        o1,
        appended(&r, &[0x18, 0x01]),
        None,
    );
    case(
        "epoch as a 10-byte varint",
        o1,
        appended(
            &r,
            &[
                0x08, 0x82, 0x80, 0x80, 0x80, 0x80, 0x80, 0x80, 0x80, 0x80, 0x00,
            ],
        ),
        None,
    );
    case(
        "varint of 11 bytes",
        o1,
        appended(
            &r,
            &[
                0x08, 0x80, 0x80, 0x80, 0x80, 0x80, 0x80, 0x80, 0x80, 0x80, 0x80, 0x00,
            ],
        ),
        None,
    );
    case(
        "varint over 64 bits",
        o1,
        appended(
            &r,
            &[
                0x08, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x02,
            ],
        ),
        None,
    );
    case(
        "length beyond the end",
        o1,
        appended(&r, &[0x12, 0x05, 0x00]),
        None,
    );
    case("truncated varint", o1, appended(&r, &[0x08, 0x80]), None);
    case("empty proof", o1, with_proof(&r, Vec::new()), None);

    // Bytes flipped and cut across the whole proof: the Rust verifier's answer, whatever it
    // is, is what another implementation must answer.
    let bytes = r.proof.as_bytes();
    for i in 0..48 {
        let pos = (i * bytes.len()) / 48 + (i % 5);
        let mut b = bytes.to_vec();
        b[pos] ^= 1 << (i % 8);
        case(
            &format!("proof byte {pos} bit {} flipped", i % 8),
            o1,
            with_proof(&r, b),
            None,
        );
    }
    for cut in [1, 2, 50, bytes.len() / 2, bytes.len() - 1] {
        case(
            &format!("proof cut to {cut} bytes"),
            o1,
            with_proof(&r, bytes[..cut].to_vec()),
            None,
        );
    }

    // JSON.
    let good = body_of(&r);
    let swap = |from: &str, to: &str| {
        assert!(good.contains(from), "{from}");
        good.replacen(from, to, 1)
    };
    let root = hex::encode(r.checkpoint.checkpoint.root_hash);
    case(
        "JSON: upper-case root hash",
        o1,
        swap(&root, &root.to_uppercase()),
        None,
    );
    case(
        "JSON: unknown field",
        o1,
        swap("{\"checkpoint\":", "{\"extra\":1,\"checkpoint\":"),
        None,
    );
    case(
        "JSON: unknown checkpoint field",
        o1,
        swap("\"epoch\":", "\"extra\":1,\"epoch\":"),
        None,
    );
    case(
        "JSON: proof padded",
        o1,
        format!("{}=\"}}", &good[..good.len() - 2]),
        None,
    );
    case(
        "JSON: proof missing",
        o1,
        format!(
            "{{\"checkpoint\":{}}}",
            serde_json::to_string(&r.checkpoint).unwrap()
        ),
        None,
    );
    case("JSON: not an object", o1, "[]".into(), None);
    case(
        "JSON: truncated",
        o1,
        good[..good.len() - 3].to_owned(),
        None,
    );
    case(
        "JSON: negative epoch",
        o1,
        swap("\"epoch\":4", "\"epoch\":-4"),
        None,
    );
    case(
        "JSON: signature 63 bytes",
        o1,
        with_checkpoint_json(&r, |c| {
            let sig = c["signature"].as_str().unwrap().to_owned();
            c["signature"] = Value::String(sig[..84].to_owned());
        }),
        None,
    );
    case(
        "JSON: keyId upper-case",
        o1,
        with_checkpoint_json(&r, |c| {
            let id = c["keyId"].as_str().unwrap().to_uppercase();
            c["keyId"] = Value::String(id);
        }),
        None,
    );

    // The client configured with another VRF key (a valid point: the signing key's): the
    // labels do not verify. `directoryPublicKey` in a case overrides the file's.
    let mut wrong_vrf = key.clone();
    wrong_vrf["vrfKey"] = key["signingKey"].clone();
    let body = body_of(&r);
    cases.push(json!({
        "name": "the client's VRF key is another one",
        "did": o1,
        "body": body,
        "directoryPublicKey": wrong_vrf,
        "expect": outcome(&wrong_vrf, o1, &body, None),
    }));

    json!({
        "comment": "Generated by crates/kt/tests/ts_vectors.rs (REGEN=1 to rewrite): akd 0.13 lookup answers of `oracle-calls kt serve` (body = the exact response text) and what the Rust verifier makes of each (crates/kt Verifier::verify_lookup; `stored` = the checkpoint a client stored before).",
        "directoryPublicKey": key,
        "checkpoints": checkpoints,
        "cases": cases,
        "histories": histories,
    })
}

/// What the Rust verifier makes of one key-history answer: `{"ok": true, versions: [{record,
/// epoch, version}], checkpointEpoch, change}` (`change`: the version that replaced `pinned`,
/// `null` if none; `{"reason"}` when `change_since` refuses) or `{"ok": false, "reason"}`.
fn history_outcome(
    directory_key: &Value,
    did_text: &str,
    body: &str,
    stored: Option<&Value>,
    pinned: Option<&Value>,
) -> Value {
    let key = serde_json::from_value(directory_key.clone()).unwrap();
    let mut verifier = match stored {
        None => Verifier::new(key),
        Some(s) => Verifier::resume(key, serde_json::from_value(s.clone()).unwrap()).unwrap(),
    };
    let did = did(did_text);
    let result = HistoryResponse::from_json(body.as_bytes()).and_then(|r| {
        verifier
            .verify_history(&r.checkpoint, &did, &r.proof)
            .map(|h| (h, r.checkpoint.checkpoint.epoch))
    });
    match result {
        Ok((h, checkpoint_epoch)) => {
            let versions: Vec<Value> = h
                .versions()
                .iter()
                .map(|v| {
                    json!({
                        "record": serde_json::to_value(&v.record).unwrap(),
                        "epoch": v.epoch,
                        "version": v.version,
                    })
                })
                .collect();
            let mut out =
                json!({"ok": true, "versions": versions, "checkpointEpoch": checkpoint_epoch});
            if let Some(p) = pinned {
                let record: OracleRecord = serde_json::from_value(p["record"].clone()).unwrap();
                let version = p["version"].as_u64().unwrap();
                out["change"] = match h.change_since(&record, version) {
                    Ok(Some(v)) => json!({"epoch": v.epoch, "version": v.version}),
                    Ok(None) => Value::Null,
                    Err(e) => json!({"reason": history_reason(&e)}),
                };
            }
            out
        }
        Err(e) => json!({"ok": false, "reason": history_reason(&e)}),
    }
}

fn history_reason(e: &Error) -> &'static str {
    match e {
        Error::HistoryProof => "history_proof",
        Error::HistoryRewritten { .. } => "history_rewritten",
        other => reason(other),
    }
}

fn history_mutated(r: &HistoryResponse, change: impl FnOnce(&mut pb::HistoryProof)) -> String {
    let mut message = pb::HistoryProof::parse_from_bytes(r.proof.as_bytes()).unwrap();
    change(&mut message);
    history_with_proof(r, message.write_to_bytes().unwrap())
}

fn history_with_proof(r: &HistoryResponse, bytes: Vec<u8>) -> String {
    serde_json::to_string(&HistoryResponse {
        checkpoint: r.checkpoint.clone(),
        proof: HistoryProof::from_bytes(bytes),
    })
    .unwrap()
}

/// Key histories of the directory's three oracles at its latest epoch (and of oracle1 when
/// it had one version), what a pinned record learns from them, and tampered ones.
async fn history_cases(directory: &Directory, key: &Value, dids: [&str; 3]) -> Vec<Value> {
    let mut out = Vec::new();
    let mut case =
        |name: &str, did: &str, body: String, stored: Option<Value>, pinned: Option<Value>| {
            let expect = history_outcome(key, did, &body, stored.as_ref(), pinned.as_ref());
            let mut c = json!({"name": name, "did": did, "body": body, "expect": expect});
            if let Some(s) = stored {
                c["stored"] = s;
            }
            if let Some(p) = pinned {
                c["pinned"] = p;
            }
            out.push(c);
        };
    let [o1, o2, o3] = dids;
    let h1 = directory.history(&did(o1)).await.unwrap();
    let h2 = directory.history(&did(o2)).await.unwrap();
    let h3 = directory.history(&did(o3)).await.unwrap();
    let body = |h: &HistoryResponse| serde_json::to_string(h).unwrap();
    let v1 = record("agent-one", "00000000000000000000000000000001", None);
    let v2 = record("agent-one", "00000000000000000000000000000011", None);
    let pin = |r: &OracleRecord, version: u64| {
        Some(json!({"record": serde_json::to_value(r).unwrap(), "version": version}))
    };
    case(
        "oracle1: two versions, pinned at version 1",
        o1,
        body(&h1),
        None,
        pin(&v1, 1),
    );
    case(
        "oracle1: pinned at the latest version",
        o1,
        body(&h1),
        None,
        pin(&v2, 2),
    );
    case(
        "oracle1: pinned record rewritten",
        o1,
        body(&h1),
        None,
        pin(&v2, 1),
    );
    case(
        "oracle1: pinned at a version never published",
        o1,
        body(&h1),
        None,
        pin(&v2, 3),
    );
    case(
        "oracle2: a prekey signing key added",
        o2,
        body(&h2),
        None,
        None,
    );
    case("oracle3: one version", o3, body(&h3), None, None);
    case("oracle1's history for oracle2", o2, body(&h1), None, None);
    let newer = serde_json::to_value(directory.checkpoint(4).await.unwrap()).unwrap();
    case("stored: the same epoch", o1, body(&h1), Some(newer), None);
    let mut bad_sig = h1.checkpoint.clone();
    bad_sig.signature[0] ^= 1;
    case(
        "checkpoint signature flipped",
        o1,
        serde_json::to_string(&HistoryResponse {
            checkpoint: bad_sig,
            proof: h1.proof.clone(),
        })
        .unwrap(),
        None,
        None,
    );
    case(
        "update proofs: the newest dropped",
        o1,
        history_mutated(&h1, |m| {
            m.update_proofs.remove(0);
        }),
        None,
        None,
    );
    case(
        "update proofs: the oldest dropped",
        o1,
        history_mutated(&h1, |m| {
            m.update_proofs.pop();
        }),
        None,
        None,
    );
    case(
        "update proofs: none",
        o1,
        history_mutated(&h1, |m| m.update_proofs.clear()),
        None,
        None,
    );
    case(
        "update proofs: swapped",
        o1,
        history_mutated(&h1, |m| m.update_proofs.swap(0, 1)),
        None,
        None,
    );
    case(
        "update proofs: the newest value replaced by the oldest",
        o1,
        history_mutated(&h1, |m| {
            let old = m.update_proofs[1].value().to_vec();
            m.update_proofs[0].set_value(old);
        }),
        None,
        None,
    );
    case(
        "update proofs: previous-version proof missing",
        o1,
        history_mutated(&h1, |m| m.update_proofs[0].previous_version_proof.clear()),
        None,
        None,
    );
    case(
        "update proofs: previous-version VRF proof flipped",
        o1,
        history_mutated(&h1, |m| {
            m.update_proofs[0].mut_previous_version_vrf_proof()[50] ^= 1
        }),
        None,
        None,
    );
    case(
        "update proofs: epoch of the newest claimed 1",
        o1,
        history_mutated(&h1, |m| m.update_proofs[0].set_epoch(1)),
        None,
        None,
    );
    case(
        "update proofs: version 0",
        o1,
        history_mutated(&h1, |m| m.update_proofs[1].set_version(0)),
        None,
        None,
    );
    case(
        "future marker proof dropped",
        o1,
        history_mutated(&h1, |m| {
            m.future_marker_vrf_proofs.pop();
            m.non_existence_of_future_marker_proofs.pop();
        }),
        None,
        None,
    );
    case(
        "future marker VRF proofs swapped",
        o1,
        history_mutated(&h1, |m| {
            let n = m.future_marker_vrf_proofs.len();
            m.future_marker_vrf_proofs.swap(0, n - 1);
        }),
        None,
        None,
    );
    case(
        "a past marker proof added",
        o1,
        history_mutated(&h1, |m| {
            let e = m.update_proofs[0].existence_vrf_proof().to_vec();
            let p = m.update_proofs[0].existence_proof.clone().unwrap();
            m.past_marker_vrf_proofs.push(e);
            m.existence_of_past_marker_proofs.push(p);
        }),
        None,
        None,
    );
    let bytes = h1.proof.as_bytes();
    for i in 0..16 {
        let pos = (i * bytes.len()) / 16 + (i % 7);
        let mut b = bytes.to_vec();
        b[pos] ^= 1 << (i % 8);
        case(
            &format!("history proof byte {pos} bit {} flipped", i % 8),
            o1,
            history_with_proof(&h1, b),
            None,
            None,
        );
    }
    out
}

fn parse(r: &LookupResponse) -> pb::LookupProof {
    pb::LookupProof::parse_from_bytes(r.proof.as_bytes()).unwrap()
}

fn r2_value(r2: &LookupResponse) -> Vec<u8> {
    parse(r2).value().to_vec()
}

fn with_checkpoint_json(r: &LookupResponse, change: impl FnOnce(&mut Value)) -> String {
    let mut v = serde_json::to_value(r).unwrap();
    change(&mut v["checkpoint"]);
    serde_json::to_string(&v).unwrap()
}

fn render(v: &Value) -> String {
    let mut text = serde_json::to_string_pretty(v).unwrap();
    text.push('\n');
    text
}

#[tokio::test]
async fn vectors_are_what_the_directory_serves_and_the_verifier_decides() {
    let built = render(&build().await);
    // The directory is deterministic: build again, the same bytes.
    assert_eq!(
        built,
        render(&build().await),
        "the directory is not deterministic"
    );
    if std::env::var_os("REGEN").is_some() {
        std::fs::write(PATH, &built).unwrap();
    }
    let committed = std::fs::read_to_string(PATH)
        .expect("tests/vectors/kt_lookup.json is missing: run with REGEN=1");
    assert!(
        committed == built,
        "tests/vectors/kt_lookup.json differs from what the directory and the verifier produce now; rerun with REGEN=1 if the change is intended"
    );
}

#[test]
fn every_committed_case_gets_its_recorded_outcome_from_the_rust_verifier() {
    let v: Value = serde_json::from_str(&std::fs::read_to_string(PATH).unwrap()).unwrap();
    let key = &v["directoryPublicKey"];
    let cases = v["cases"].as_array().unwrap();
    let mut ok = 0;
    let mut reasons = std::collections::BTreeSet::new();
    for c in cases {
        let got = outcome(
            c.get("directoryPublicKey").unwrap_or(key),
            c["did"].as_str().unwrap(),
            c["body"].as_str().unwrap(),
            c.get("stored"),
        );
        assert_eq!(got, c["expect"], "{}", c["name"]);
        if got["ok"] == true {
            ok += 1;
        } else {
            reasons.insert(got["reason"].as_str().unwrap().to_owned());
        }
    }
    let histories = v["histories"].as_array().unwrap();
    let mut history_reasons = std::collections::BTreeSet::new();
    for c in histories {
        let got = history_outcome(
            key,
            c["did"].as_str().unwrap(),
            c["body"].as_str().unwrap(),
            c.get("stored"),
            c.get("pinned"),
        );
        assert_eq!(got, c["expect"], "{}", c["name"]);
        if let Some(r) = got["reason"].as_str().or(got["change"]["reason"].as_str()) {
            history_reasons.insert(r.to_owned());
        }
    }
    for r in ["history_proof", "history_rewritten", "bad_signature"] {
        assert!(
            history_reasons.contains(r),
            "no history case refused with {r}"
        );
    }
    // Positives and every kind of refusal are there (malformed_record and too_large cannot
    // come out of a real directory's answer; the TypeScript tests cover them).
    assert!(ok >= 15, "{ok} positive cases");
    for r in [
        "unknown_key",
        "bad_signature",
        "rollback",
        "fork",
        "time_went_backwards",
        "malformed",
        "lookup_proof",
    ] {
        assert!(reasons.contains(r), "no case refused with {r}");
    }
    // Every checkpoint verifies under the directory key.
    let key: oracle_calls_kt::DirectoryPublicKey = serde_json::from_value(key.clone()).unwrap();
    for (e, cp) in v["checkpoints"].as_array().unwrap().iter().enumerate() {
        let cp: SignedCheckpoint = serde_json::from_value(cp.clone()).unwrap();
        assert_eq!(cp.checkpoint.epoch, e as u64);
        oracle_calls_kt::verify_checkpoint(&cp, &key).unwrap();
    }
}

//! KT lookup-proof verification time, next to one Ed25519 verify measured in the same run.
//!
//! `cargo bench -p oracle-calls-kt --features directory` (a directory of 1,000 oracles, as in
//! docs/crypto-notes.md). Records the proof size too.
#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs)]

use std::hint::black_box;

use aws_lc_rs::signature::{ED25519, UnparsedPublicKey};
use criterion::{Criterion, criterion_group, criterion_main};
use oracle_calls_kt::{
    CheckpointSigningKey, Directory, OracleRecord, VrfSecretKey, verify_checkpoint, verify_lookup,
};
use oracle_calls_proto::{BotDevice, Did, KeyScheme, OracleKeyInfo};
use zeroize::Zeroizing;

const ORACLES: u32 = 1_000;

fn record(n: u32) -> OracleRecord {
    OracleRecord {
        keys: vec![OracleKeyInfo {
            key_id: format!("{n:032x}"),
            scheme: KeyScheme::HpkeP256,
            public_key: "B".repeat(87),
        }],
        matrix_user_id: format!("@oracle{n}:example.org"),
        bot_devices: vec![BotDevice {
            device_id: format!("DEVICE{n}"),
            ed25519: "E".repeat(43),
        }],
        agent_name: format!("agent-{n}"),
        prekey_signing_key: None,
    }
}

fn bench(c: &mut Criterion) {
    let rt = tokio::runtime::Builder::new_current_thread()
        .build()
        .unwrap();
    let dir = rt.block_on(async {
        let dir = Directory::in_memory(
            CheckpointSigningKey::from_seed(Zeroizing::new([1; 32])).unwrap(),
            VrfSecretKey::from_bytes(Zeroizing::new([2; 32])),
            0,
        )
        .await
        .unwrap();
        let updates = (0..ORACLES)
            .map(|n| {
                (
                    Did::parse(&format!("did:ixo:oracle{n}")).unwrap(),
                    record(n),
                )
            })
            .collect();
        dir.publish(updates, 1).await.unwrap();
        dir
    });
    let did = Did::parse("did:ixo:oracle500").unwrap();
    let response = rt.block_on(dir.lookup(&did)).unwrap();
    let key = dir.public_key().clone();
    eprintln!(
        "lookup proof: {} bytes (protobuf), {} bytes as JSON with its checkpoint",
        response.proof.as_bytes().len(),
        serde_json::to_vec(&response).unwrap().len()
    );

    let mut group = c.benchmark_group("kt");
    group.bench_function("verify_lookup (1,000 oracles)", |b| {
        b.iter(|| {
            verify_lookup(
                black_box(&key),
                black_box(&response.checkpoint),
                &did,
                black_box(&response.proof),
            )
            .unwrap()
        })
    });
    group.bench_function("verify_checkpoint", |b| {
        b.iter(|| verify_checkpoint(black_box(&response.checkpoint), black_box(&key)).unwrap())
    });
    // The reference: one raw aws-lc-rs Ed25519 verify of the same 77 bytes.
    let message = response.checkpoint.checkpoint.signed_bytes();
    group.bench_function("reference: one Ed25519 verify (aws-lc-rs)", |b| {
        b.iter(|| {
            UnparsedPublicKey::new(&ED25519, black_box(key.signing_key()))
                .verify(
                    black_box(&message),
                    black_box(&response.checkpoint.signature),
                )
                .unwrap()
        })
    });
    group.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);

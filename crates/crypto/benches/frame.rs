//! Frame cryptor cost next to raw AES-128-GCM (aws-lc-rs) measured in the same run.
//! `cargo bench -p oracle-calls-crypto --bench frame`
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing)]

use std::hint::black_box;

use aws_lc_rs::aead::{AES_128_GCM, Aad, LessSafeKey, Nonce, UnboundKey};
use criterion::{BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};
use oracle_calls_crypto::frame::{
    FrameDecryptor, FrameEncryptor, FrameKind, KeyRing, KeyRingOptions,
};
use oracle_calls_crypto::{CallKey, KeyDerivation};
use rand::SeedableRng;

const SIZES: [(usize, &str); 3] = [(160, "160B"), (1200, "1200B"), (100 * 1024, "100KiB")];

fn frames(c: &mut Criterion) {
    let mut rng = rand::rngs::StdRng::seed_from_u64(1);
    let key = CallKey::generate(&mut rng);
    let ring =
        KeyRing::with_call_key(&key, KeyDerivation::Hkdf, KeyRingOptions::default()).unwrap();
    let raw = LessSafeKey::new(UnboundKey::new(&AES_128_GCM, &[7u8; 16]).unwrap());

    let mut g = c.benchmark_group("frame");
    for (size, label) in SIZES {
        g.throughput(Throughput::Bytes(size as u64));
        let kind = if size > 1200 {
            FrameKind::Vp8
        } else {
            FrameKind::Audio
        };
        let mut frame = vec![0x5au8; size];
        frame[0] = if size > 1200 { 0x10 } else { 0xfc };

        // Reference: AES-128-GCM over the same bytes with the same buffer handling as ours
        // (copy the frame into a reused buffer, seal in place after a 1-byte clear header,
        // append the tag), so the ratio isolates what the cryptor adds.
        let mut work = Vec::with_capacity(size + 64);
        g.bench_with_input(
            BenchmarkId::new("raw_aes128gcm_seal", label),
            &size,
            |b, _| {
                let mut ctr = 0u64;
                b.iter(|| {
                    ctr += 1;
                    raw_seal(&raw, ctr, &frame, &mut work);
                    black_box(work.len());
                })
            },
        );
        g.bench_with_input(
            BenchmarkId::new("raw_aes128gcm_seal_open", label),
            &size,
            |b, _| {
                let mut ctr = 0u64;
                b.iter(|| {
                    ctr += 1;
                    let iv = raw_seal(&raw, ctr, &frame, &mut work);
                    let (h, sealed) = work.split_at_mut(1);
                    let n = raw
                        .open_in_place(Nonce::assume_unique_for_key(iv), Aad::from(&*h), sealed)
                        .unwrap()
                        .len();
                    black_box(n);
                })
            },
        );

        // Ours: encrypt in place (trailer appended).
        let mut tx = FrameEncryptor::new(ring.clone(), &mut rng);
        g.bench_with_input(
            BenchmarkId::new("cryptor_encrypt_in_place", label),
            &size,
            |b, _| {
                b.iter(|| {
                    work.clear();
                    work.extend_from_slice(&frame);
                    tx.encrypt_in_place(kind, &mut work).unwrap();
                    black_box(work.len());
                })
            },
        );
        // Ours: encrypt then decrypt, in place.
        let mut rx = FrameDecryptor::new(ring.clone());
        g.bench_with_input(
            BenchmarkId::new("cryptor_encrypt_decrypt_in_place", label),
            &size,
            |b, _| {
                b.iter(|| {
                    work.clear();
                    work.extend_from_slice(&frame);
                    tx.encrypt_in_place(kind, &mut work).unwrap();
                    let o = rx.decrypt_in_place(kind, &mut work).unwrap();
                    black_box(o);
                })
            },
        );
        // Ours: the allocating API.
        g.bench_with_input(
            BenchmarkId::new("cryptor_encrypt_decrypt_alloc", label),
            &size,
            |b, _| {
                b.iter(|| {
                    let e = tx.encrypt(kind, &frame).unwrap();
                    black_box(rx.decrypt(kind, &e).unwrap());
                })
            },
        );
    }
    g.finish();
}

/// The reference: copy `frame` into `work`, AES-128-GCM seal it in place after a 1-byte
/// header, append the tag. Returns the IV used.
fn raw_seal(raw: &LessSafeKey, ctr: u64, frame: &[u8], work: &mut Vec<u8>) -> [u8; 12] {
    let mut iv = [0u8; 12];
    iv[4..].copy_from_slice(&ctr.to_be_bytes());
    work.clear();
    work.extend_from_slice(frame);
    let (h, body) = work.split_at_mut(1);
    let tag = raw
        .seal_in_place_separate_tag(Nonce::assume_unique_for_key(iv), Aad::from(&*h), body)
        .unwrap();
    work.extend_from_slice(tag.as_ref());
    iv
}

criterion_group! {
    name = benches;
    config = Criterion::default().sample_size(50).measurement_time(std::time::Duration::from_secs(3)).warm_up_time(std::time::Duration::from_secs(1));
    targets = frames
}
criterion_main!(benches);

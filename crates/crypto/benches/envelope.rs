//! Envelope seal and open per scheme.
//! `cargo bench -p oracle-calls-crypto --bench envelope`
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::hint::black_box;

use criterion::{BenchmarkId, Criterion, criterion_group, criterion_main};
use oracle_calls_crypto::{CallContext, CallKey, KeyScheme, OracleKeyPair, open, seal};
use oracle_calls_proto::{CallType, Did, RoomName, SessionId};
use rand::SeedableRng;

fn envelopes(c: &mut Criterion) {
    let mut rng = rand::rngs::StdRng::seed_from_u64(2);
    let ctx = CallContext::new(
        SessionId::parse("550e8400-e29b-41d4-a716-446655440000").unwrap(),
        RoomName::parse("oc-0123456789abcdef0123456789abcdef").unwrap(),
        Did::parse("did:ixo:ixo1user0000000000000000000000000000").unwrap(),
        Did::parse("did:ixo:ixo1oracle00000000000000000000000000").unwrap(),
        CallType::Audio,
    );
    let mut g = c.benchmark_group("envelope");
    for scheme in KeyScheme::ALL {
        let kp = OracleKeyPair::generate(scheme, &mut rng).unwrap();
        let pk = kp.public_key();
        let key = CallKey::generate(&mut rng);
        let env = seal(&pk, &key, &ctx, &mut rng).unwrap();
        g.bench_with_input(
            BenchmarkId::new("seal", scheme.as_str()),
            &scheme,
            |b, _| b.iter(|| black_box(seal(&pk, &key, &ctx, &mut rng).unwrap())),
        );
        g.bench_with_input(
            BenchmarkId::new("open", scheme.as_str()),
            &scheme,
            |b, _| b.iter(|| black_box(open(&kp, &env, &ctx).unwrap())),
        );
    }
    g.finish();
}

criterion_group! {
    name = benches;
    config = Criterion::default().sample_size(20).measurement_time(std::time::Duration::from_secs(3)).warm_up_time(std::time::Duration::from_secs(1));
    targets = envelopes
}
criterion_main!(benches);

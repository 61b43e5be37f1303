//! Envelope parsing and opening with every scheme's key: never panics, never opens garbage.
#![no_main]

use std::sync::OnceLock;

use base64::Engine as _;
use libfuzzer_sys::fuzz_target;
use oracle_calls_crypto::{CallContext, KeyScheme, OpenedKey, OracleKeyPair, open};
use oracle_calls_proto::{CallType, Did, KeyEnvelope, RoomName, SessionId};

struct Fixture {
    keys: Vec<OracleKeyPair>,
    ctx: CallContext,
}

fn fixture() -> &'static Fixture {
    static F: OnceLock<Fixture> = OnceLock::new();
    F.get_or_init(|| {
        let mut rng = rand_seeded();
        Fixture {
            keys: KeyScheme::ALL
                .into_iter()
                .map(|s| OracleKeyPair::generate(s, &mut rng).expect("keygen"))
                .collect(),
            ctx: CallContext::new(
                SessionId::parse("s").unwrap(),
                RoomName::parse("oc-0123456789abcdef0123456789abcdef").unwrap(),
                Did::parse("did:ixo:u").unwrap(),
                Did::parse("did:ixo:o").unwrap(),
                CallType::Audio,
            ),
        }
    })
}

fn rand_seeded() -> impl oracle_calls_crypto_rng::CryptoRng {
    oracle_calls_crypto_rng::seeded()
}

mod oracle_calls_crypto_rng {
    pub use rand_core::CryptoRng;
    /// A fixed-seed RNG: the fuzzer must be deterministic.
    pub fn seeded() -> rand_chacha::ChaCha20Rng {
        use rand_core::SeedableRng as _;
        rand_chacha::ChaCha20Rng::from_seed([7; 32])
    }
}

fuzz_target!(|data: &[u8]| {
    let f = fixture();
    // As text, whatever it is.
    if let Ok(s) = std::str::from_utf8(data)
        && let Ok(env) = KeyEnvelope::parse(s)
    {
        for k in &f.keys {
            if let Ok(OpenedKey::Bound(_)) = open(k, &env, &f.ctx) {
                panic!("a fuzzed envelope opened");
            }
        }
    }
    // Structured: a well-formed v1 wrapper around fuzzed bytes, for each scheme.
    if let Some((&pick, body)) = data.split_first() {
        let k = &f.keys[usize::from(pick) % f.keys.len()];
        let text = format!(
            "v1.{}.{}",
            k.scheme(),
            base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(body)
        );
        if let Ok(env) = KeyEnvelope::parse(&text) {
            assert!(!matches!(open(k, &env, &f.ctx), Ok(OpenedKey::Bound(_))));
        }
    }
});

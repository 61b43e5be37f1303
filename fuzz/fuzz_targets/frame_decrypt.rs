//! Frame and data-packet decryption of arbitrary bytes: never panics, never "decrypts" a forgery.
#![no_main]

use libfuzzer_sys::fuzz_target;
use oracle_calls_crypto::frame::{FrameDecryptor, FrameKind, KeyRing, KeyRingOptions, Outcome};
use oracle_calls_crypto::{CallKey, KeyDerivation};

fuzz_target!(|data: &[u8]| {
    let Some((&ctl, rest)) = data.split_first() else { return };
    let opts = KeyRingOptions {
        ratchet_window: ctl & 0x03,
        failure_tolerance: if ctl & 0x04 != 0 { Some(1) } else { None },
        ..KeyRingOptions::default()
    };
    let ring = KeyRing::with_call_key(&CallKey::from_bytes([9; 32]), KeyDerivation::Hkdf, opts)
        .expect("ring");
    let mut rx = FrameDecryptor::new(ring);
    if ctl & 0x08 != 0 {
        rx.set_sif_trailer(b"fuzz-sif-trailer".to_vec());
    }
    let kind = match (ctl >> 4) % 3 {
        0 => FrameKind::Audio,
        1 => FrameKind::Vp8,
        _ => FrameKind::Vp9,
    };
    let mut buf = rest.to_vec();
    // Twice: the second pass exercises cached ratchets and failure counters.
    for _ in 0..2 {
        buf.clear();
        buf.extend_from_slice(rest);
        match rx.decrypt_in_place(kind, &mut buf) {
            Ok(Outcome::Frame) => panic!("forged frame accepted"),
            Ok(Outcome::Empty) => assert!(rest.is_empty()),
            Ok(Outcome::ServerInjected) => assert!(rest.ends_with(b"fuzz-sif-trailer")),
            Err(_) => {}
        }
    }
    if rest.len() > 13 {
        let (iv, ct) = rest.split_at(12);
        assert!(rx.decrypt_data(iv, ct[0] % 20, &ct[1..]).is_err());
    }
});

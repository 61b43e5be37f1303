//! The other person's SDP (an offer in `m.call.invite` or `m.call.negotiate`, an answer in
//! `m.call.answer`), into the str0m peer of a person-to-person call: as an offer into
//! `accept_offer`, as an answer into `accept_answer` (our invite's offer outstanding). Never
//! panics: a usable offer is answered, anything else is a typed `PeerError`.
//!
//! Two peers are kept between inputs and made again only after an input got past the checks
//! that change nothing (fingerprint, syntax); every peer reuses one DTLS certificate made at
//! the start (making one per peer was most of a run's time).
#![no_main]

use std::cell::RefCell;
use std::net::SocketAddr;
use std::time::Instant;

use libfuzzer_sys::fuzz_target;
use oracle_calls_direct::peer::{Peer, PeerError};
use str0m::config::DtlsCert;

fn fresh() -> Peer {
    let local: SocketAddr = "127.0.0.1:40000".parse().expect("address");
    let certificate = CERTIFICATE.with(Clone::clone);
    Peer::dangerous_offer_with_certificate(Instant::now(), &[local], certificate)
        .expect("a peer")
        .0
}

/// Whether `e` was raised before the peer's state could change.
fn untouched(e: &PeerError) -> bool {
    matches!(
        e,
        PeerError::UnsupportedFingerprint | PeerError::FingerprintChanged | PeerError::SdpSyntax
    )
}

thread_local! {
    static PEERS: RefCell<Option<(Peer, Peer)>> = const { RefCell::new(None) };
    static CERTIFICATE: DtlsCert = str0m::crypto::from_feature_flags()
        .dtls_provider
        .generate_certificate()
        .expect("a DTLS certificate");
}

fuzz_target!(|data: &[u8]| {
    let Ok(sdp) = std::str::from_utf8(data) else {
        return;
    };
    PEERS.with(|cell| {
        let mut cell = cell.borrow_mut();
        let (offers, answers) = cell.get_or_insert_with(|| (fresh(), fresh()));
        match offers.accept_offer(sdp) {
            Ok(answer) => {
                assert!(answer.starts_with("v=0"));
                *offers = fresh();
            }
            Err(e) if untouched(&e) => {}
            Err(_) => *offers = fresh(),
        }
        match answers.accept_answer(sdp) {
            Err(e) if untouched(&e) => {}
            _ => *answers = fresh(),
        }
    });
});

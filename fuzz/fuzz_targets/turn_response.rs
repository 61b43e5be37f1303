//! What a TURN server (or anyone spoofing its address over UDP) sends to a person-to-person
//! call's allocation: the input is taken as an answer to the allocation's own pending request
//! (its transaction id is written over bytes 8..20 when the input is long enough, so that the
//! parser goes past the transaction check), and then as a second datagram. Never panics.
#![no_main]

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use libfuzzer_sys::fuzz_target;
use oracle_calls_direct::turn::{TurnAllocation, TurnConfig};

fuzz_target!(|data: &[u8]| {
    let now = Instant::now();
    let local: SocketAddr = "127.0.0.1:40000".parse().expect("address");
    let server: SocketAddr = "127.0.0.1:3478".parse().expect("address");
    let Ok(mut turn) = TurnAllocation::new(
        local,
        server,
        "1700000000:@alice:example.org",
        "secret",
        TurnConfig::default(),
        now,
    ) else {
        return;
    };
    let Some(request) = turn.poll_transmit(now) else {
        return;
    };
    let mut answer = data.to_vec();
    if answer.len() >= 20 && request.contents.len() >= 20 {
        answer[8..20].copy_from_slice(&request.contents[8..20]);
    }
    let _ = turn.handle_incoming(server, &answer, now);
    let later = now + Duration::from_millis(10);
    while turn.poll_transmit(later).is_some() {}
    let _ = turn.handle_incoming(server, data, later);
    let _ = turn.poll_timeout();
    let _ = turn.state();
});

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]

use super::*;

const LOCAL: &str = "127.0.0.1:40000";
const SERVER: &str = "127.0.0.1:3478";
const USER: &str = "1796409033:@carol:localhost";
const PASSWORD: &str = "s3cret-password";
const REALM: &str = "oracle-calls.test";

fn addr(s: &str) -> SocketAddr {
    s.parse().unwrap()
}

fn key(password: &str) -> MessageIntegrityCredentials {
    LongTermKeyCredentials::new(USER.to_owned(), password.to_owned(), REALM.to_owned()).into()
}

/// A server's answer to `request`: success (signed with `password`'s key) or an error.
fn answer(request: &[u8], error: Option<u16>, password: Option<&str>, lifetime: u32) -> Vec<u8> {
    let req = Message::from_bytes(request).unwrap();
    let id = req.transaction_id();
    let mut msg = match error {
        None => Message::builder_success(&req, MessageWriteVec::new()),
        Some(_) => Message::builder_error(&req, MessageWriteVec::new()),
    };
    if let Some(code) = error {
        msg.add_attribute(&ErrorCode::builder(code).build().unwrap())
            .unwrap();
        msg.add_attribute(&Realm::new(REALM).unwrap()).unwrap();
        msg.add_attribute(&Nonce::new("nonce-1").unwrap()).unwrap();
    } else if req.has_method(ALLOCATE) {
        let relayed = XorRelayedAddress::new(addr("127.0.0.1:49160"), id);
        msg.add_attribute(&relayed).unwrap();
        msg.add_attribute(&XorMappedAddress::new(addr(LOCAL), id))
            .unwrap();
        msg.add_attribute(&Lifetime::new(lifetime)).unwrap();
    } else if req.has_method(REFRESH) {
        msg.add_attribute(&Lifetime::new(lifetime)).unwrap();
    }
    if let Some(password) = password {
        msg.add_message_integrity(&key(password), IntegrityAlgorithm::Sha1)
            .unwrap();
    }
    msg.finish()
}

fn start(t0: Instant) -> TurnAllocation {
    TurnAllocation::new(
        addr(LOCAL),
        addr(SERVER),
        USER,
        PASSWORD,
        TurnConfig::default(),
        t0,
    )
    .unwrap()
}

/// new → 401 → signed Allocate → success with `lifetime`.
fn allocated(t0: Instant, lifetime: u32) -> TurnAllocation {
    let mut turn = start(t0);
    let first = turn.poll_transmit(t0).unwrap().contents;
    let challenge = answer(&first, Some(401), None, 0);
    assert_eq!(
        turn.handle_incoming(addr(SERVER), &challenge, t0),
        Incoming::Consumed
    );
    let signed = turn.poll_transmit(t0).unwrap().contents;
    let ok = answer(&signed, None, Some(PASSWORD), lifetime);
    assert_eq!(
        turn.handle_incoming(addr(SERVER), &ok, t0),
        Incoming::Consumed
    );
    turn
}

#[test]
fn allocates_after_the_401_challenge_with_a_signed_request() {
    let t0 = Instant::now();
    let mut turn = start(t0);
    let first = turn.poll_transmit(t0).unwrap();
    assert_eq!(
        (first.source, first.destination),
        (addr(LOCAL), addr(SERVER))
    );
    let msg = Message::from_bytes(&first.contents).unwrap();
    assert!(msg.has_method(ALLOCATE) && msg.attribute::<RequestedTransport>().is_ok());
    assert!(
        msg.attribute::<Username>().is_err(),
        "the first Allocate is unauthenticated"
    );
    let challenge = answer(&first.contents, Some(401), None, 0);
    turn.handle_incoming(addr(SERVER), &challenge, t0);
    let signed = turn.poll_transmit(t0).unwrap().contents;
    let msg = Message::from_bytes(&signed).unwrap();
    assert_eq!(msg.attribute::<Username>().unwrap().username(), USER);
    assert_eq!(msg.attribute::<Nonce>().unwrap().nonce(), "nonce-1");
    assert!(msg.validate_integrity(&key(PASSWORD)).is_ok());
    assert!(msg.validate_integrity(&key("other")).is_err());

    let ok = answer(&signed, None, Some(PASSWORD), 10);
    turn.handle_incoming(addr(SERVER), &ok, t0);
    assert_eq!(turn.state(), &AllocationState::Allocated);
    assert_eq!(turn.relayed_addr(), Some(addr("127.0.0.1:49160")));
    assert_eq!(turn.mapped_addr(), Some(addr(LOCAL)));
    assert_eq!(
        turn.poll_event(),
        Some(TurnEvent::Allocated {
            relayed: addr("127.0.0.1:49160"),
            mapped: Some(addr(LOCAL)),
            lifetime: Duration::from_secs(10)
        })
    );
    // A short lifetime is refreshed halfway.
    assert_eq!(turn.poll_timeout(), Some(t0 + Duration::from_secs(5)));
    let refresh = turn
        .poll_transmit(t0 + Duration::from_secs(5))
        .unwrap()
        .contents;
    assert!(Message::from_bytes(&refresh).unwrap().has_method(REFRESH));
}

#[test]
fn a_success_not_signed_with_our_key_is_ignored() {
    let t0 = Instant::now();
    let mut turn = start(t0);
    let first = turn.poll_transmit(t0).unwrap().contents;
    turn.handle_incoming(addr(SERVER), &answer(&first, Some(401), None, 0), t0);
    let signed = turn.poll_transmit(t0).unwrap().contents;
    for forged in [
        answer(&signed, None, Some("not ours"), 10),
        answer(&signed, None, None, 10),
    ] {
        turn.handle_incoming(addr(SERVER), &forged, t0);
        assert_eq!(turn.state(), &AllocationState::Allocating);
    }
    turn.handle_incoming(addr(SERVER), &answer(&signed, None, Some(PASSWORD), 10), t0);
    assert_eq!(turn.state(), &AllocationState::Allocated);
}

#[test]
fn a_401_to_the_signed_request_is_unauthorized() {
    let t0 = Instant::now();
    let mut turn = start(t0);
    let first = turn.poll_transmit(t0).unwrap().contents;
    turn.handle_incoming(addr(SERVER), &answer(&first, Some(401), None, 0), t0);
    let signed = turn.poll_transmit(t0).unwrap().contents;
    turn.handle_incoming(addr(SERVER), &answer(&signed, Some(401), None, 0), t0);
    let failed = AllocationState::Failed(TurnError::Unauthorized { code: 401 });
    assert_eq!(turn.state(), &failed);
    assert_eq!(turn.poll_timeout(), None);
    assert_eq!(turn.poll_transmit(t0 + Duration::from_secs(60)), None);
}

#[test]
fn unanswered_allocate_is_retransmitted_then_times_out() {
    let t0 = Instant::now();
    let mut turn = start(t0);
    let mut sent_at = Vec::new();
    let mut now = t0;
    loop {
        while turn.poll_transmit(now).is_some() {
            sent_at.push(now - t0);
        }
        if turn.state() != &AllocationState::Allocating {
            break;
        }
        now = turn.poll_timeout().unwrap();
    }
    let ms: Vec<u128> = sent_at.iter().map(Duration::as_millis).collect();
    assert_eq!(ms, [0, 500, 1500, 3500, 7500, 15500, 31500]);
    assert_eq!(now - t0, Duration::from_millis(39_500));
    assert_eq!(
        turn.state(),
        &AllocationState::Failed(TurnError::Timeout {
            request: "Allocate"
        })
    );
}

#[test]
fn an_unanswered_refresh_lets_the_allocation_expire() {
    let t0 = Instant::now();
    let mut turn = allocated(t0, 10);
    let mut now = t0;
    while let Some(next) = turn.poll_timeout() {
        now = next;
        while turn.poll_transmit(now).is_some() {}
    }
    assert_eq!(now - t0, Duration::from_secs(10));
    assert_eq!(
        turn.state(),
        &AllocationState::Failed(TurnError::AllocationExpired)
    );
}

#[test]
fn sending_needs_an_allocation_and_a_permission_and_binds_a_channel() {
    let t0 = Instant::now();
    let peer = addr("127.0.0.1:5000");
    let mut turn = start(t0);
    assert!(matches!(
        turn.send_to(peer, b"x", t0),
        Err(TurnError::NotAllocated { .. })
    ));
    let mut turn = allocated(t0, 600);
    assert_eq!(turn.send_to(peer, b"x", t0), Err(TurnError::NoPermission));
    turn.add_permission(peer.ip(), t0);
    let perm = turn.poll_transmit(t0).unwrap().contents;
    assert!(
        Message::from_bytes(&perm)
            .unwrap()
            .has_method(CREATE_PERMISSION)
    );
    turn.handle_incoming(addr(SERVER), &answer(&perm, None, Some(PASSWORD), 0), t0);
    let indication = turn.send_to(peer, b"payload", t0).unwrap().contents;
    let msg = Message::from_bytes(&indication).unwrap();
    assert!(msg.has_method(SEND) && msg.has_class(MessageClass::Indication));
    assert_eq!(msg.attribute::<DataAttribute>().unwrap().data(), b"payload");
    let bind = turn.poll_transmit(t0).unwrap().contents;
    let msg = Message::from_bytes(&bind).unwrap();
    assert_eq!(
        msg.attribute::<ChannelNumber>().unwrap().channel(),
        FIRST_CHANNEL
    );
    turn.handle_incoming(addr(SERVER), &answer(&bind, None, Some(PASSWORD), 0), t0);
    let data = turn.send_to(peer, b"payload", t0).unwrap().contents;
    assert_eq!(data, [&[0x40, 0x00, 0x00, 0x07][..], b"payload"].concat());
    // And back: ChannelData on our channel is the peer's data.
    assert_eq!(
        turn.handle_incoming(addr(SERVER), &[0x40, 0, 0, 2, 7, 8, 0, 0], t0),
        Incoming::Data {
            peer,
            bytes: vec![7, 8]
        }
    );
}

#[test]
fn junk_never_panics_and_other_senders_are_not_turn() {
    let t0 = Instant::now();
    let mut turn = allocated(t0, 600);
    assert_eq!(
        turn.handle_incoming(addr("127.0.0.1:9"), b"\x40\0\0\0", t0),
        Incoming::NotTurn
    );
    let junk: [&[u8]; 6] = [
        b"",
        b"\x40",
        b"\x40\x00\x00\xff",
        b"\x4f\xff\x00\x00",
        b"\x00\x01",
        b"\x16\xfe\xfd",
    ];
    for bytes in junk {
        let got = turn.handle_incoming(addr(SERVER), bytes, t0);
        assert!(
            matches!(got, Incoming::Consumed | Incoming::NotTurn),
            "{bytes:?}: {got:?}"
        );
    }
    assert_eq!(turn.state(), &AllocationState::Allocated);
}

#[test]
fn release_deletes_with_lifetime_zero() {
    let t0 = Instant::now();
    let mut turn = allocated(t0, 600);
    turn.release(t0);
    assert_eq!(turn.state(), &AllocationState::Releasing);
    let del = turn.poll_transmit(t0).unwrap().contents;
    let msg = Message::from_bytes(&del).unwrap();
    assert!(msg.has_method(REFRESH));
    assert_eq!(msg.attribute::<Lifetime>().unwrap().seconds(), 0);
    turn.handle_incoming(addr(SERVER), &answer(&del, None, Some(PASSWORD), 0), t0);
    assert_eq!(turn.state(), &AllocationState::Released);
    assert_eq!(turn.poll_timeout(), None);

    let mut early = start(t0);
    early.release(t0);
    assert_eq!(early.state(), &AllocationState::Released);
}

#[test]
fn the_password_stays_out_of_debug() {
    let turn = start(Instant::now());
    assert!(!format!("{turn:?}").contains(PASSWORD));
    assert_eq!(
        TurnAllocation::new(
            addr(LOCAL),
            addr(SERVER),
            USER,
            "",
            TurnConfig::default(),
            Instant::now()
        )
        .err(),
        Some(TurnError::InvalidCredentials)
    );
}

//! The TURN allocation against the stack's real coturn, with credentials from the stack's real
//! Synapse (`/voip/turnServer`), driven over a tokio UDP socket.
//!
//! Needs `scripts/stack up` (coturn is the `turn` service). The refresh test outlives the
//! allocation lifetime coturn grants, which its max-allocate-lifetime caps
//! (STACK_TURN_ALLOCATION_LIFETIME: 60 s by default, so the test takes about a minute).
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]

use std::net::SocketAddr;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use base64::Engine as _;
use oracle_calls_direct::turn::{
    AllocationState, Incoming, TurnAllocation, TurnConfig, TurnError, TurnEvent, TurnServerError,
    TurnServers,
};
use oracle_calls_test_support::{stack_secret, stack_var};
use tokio::net::UdpSocket;

/// A Matrix user's `/voip/turnServer` answer, raw and parsed.
async fn turn_credentials(prefix: &str) -> (String, Vec<u8>, TurnServers) {
    let (name, password) = oracle_calls_test_support::stack_user(prefix);
    let http = reqwest::Client::new();
    let login: serde_json::Value = http
        .post(format!(
            "{}/_matrix/client/v3/login",
            stack_var("MATRIX_URL")
        ))
        .json(&serde_json::json!({"type": "m.login.password",
            "identifier": {"type": "m.id.user", "user": name}, "password": password}))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let token = login["access_token"].as_str().expect("access token");
    let body = http
        .get(format!(
            "{}/_matrix/client/v3/voip/turnServer",
            stack_var("MATRIX_URL")
        ))
        .bearer_auth(token)
        .send()
        .await
        .unwrap()
        .bytes()
        .await
        .unwrap()
        .to_vec();
    let servers = TurnServers::parse(&body)
        .unwrap_or_else(|e| panic!("{e}: {}", String::from_utf8_lossy(&body)))
        .expect("the stack's Synapse has TURN configured");
    let user_id = login["user_id"].as_str().expect("user id").to_owned();
    (user_id, body, servers)
}

/// TURN REST password: base64(HMAC-SHA1(shared secret, username)), computed here with
/// aws-lc-rs (not the code under test, which never computes it).
fn rest_password(username: &str) -> String {
    let secret = stack_secret("TURN_SHARED_SECRET_FILE");
    let key = aws_lc_rs::hmac::Key::new(
        aws_lc_rs::hmac::HMAC_SHA1_FOR_LEGACY_USE_ONLY,
        secret.as_bytes(),
    );
    base64::engine::general_purpose::STANDARD
        .encode(aws_lc_rs::hmac::sign(&key, username.as_bytes()))
}

fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

fn server_addr(servers: &TurnServers) -> SocketAddr {
    servers.uris()[0].socket_addr().expect("an IP literal")
}

/// A thin driver: one UDP socket, the allocation, and what peers sent through the relay.
struct Driver {
    socket: UdpSocket,
    turn: TurnAllocation,
    received: Vec<(SocketAddr, Vec<u8>)>,
    events: Vec<TurnEvent>,
}

impl Driver {
    async fn new(username: &str, password: &str, server: SocketAddr, config: TurnConfig) -> Self {
        let socket = UdpSocket::bind("127.0.0.1:0").await.unwrap();
        let local = socket.local_addr().unwrap();
        let turn =
            TurnAllocation::new(local, server, username, password, config, Instant::now()).unwrap();
        Self {
            socket,
            turn,
            received: Vec::new(),
            events: Vec::new(),
        }
    }

    async fn flush(&mut self) {
        while let Some(t) = self.turn.poll_transmit(Instant::now()) {
            assert_eq!(t.source, self.socket.local_addr().unwrap());
            self.socket
                .send_to(&t.contents, t.destination)
                .await
                .unwrap();
        }
        while let Some(e) = self.turn.poll_event() {
            self.events.push(e);
        }
    }

    /// Runs the allocation until `done` holds or `limit` passes; false on timeout.
    async fn run_until(&mut self, limit: Duration, mut done: impl FnMut(&Self) -> bool) -> bool {
        let deadline = Instant::now() + limit;
        let mut buf = vec![0u8; 2048];
        loop {
            self.flush().await;
            if done(self) {
                return true;
            }
            let now = Instant::now();
            if now >= deadline {
                return false;
            }
            let wake = self.turn.poll_timeout().unwrap_or(deadline).min(deadline);
            let wait = wake
                .saturating_duration_since(now)
                .max(Duration::from_millis(1));
            if let Ok(Ok((n, from))) =
                tokio::time::timeout(wait, self.socket.recv_from(&mut buf)).await
            {
                match self.turn.handle_incoming(from, &buf[..n], Instant::now()) {
                    Incoming::Data { peer, bytes } => self.received.push((peer, bytes)),
                    Incoming::Consumed => {}
                    Incoming::NotTurn => panic!("a datagram from {from} that is not TURN"),
                }
            }
        }
    }

    async fn allocate(&mut self) -> SocketAddr {
        let ok = self
            .run_until(Duration::from_secs(10), |d| {
                d.turn.state() != &AllocationState::Allocating
            })
            .await;
        assert!(ok, "no answer to Allocate: {:?}", self.turn);
        assert_eq!(
            self.turn.state(),
            &AllocationState::Allocated,
            "{:?}",
            self.events
        );
        self.turn.relayed_addr().unwrap()
    }

    async fn send(&mut self, peer: SocketAddr, bytes: &[u8]) -> Vec<u8> {
        self.flush().await; // control messages queued earlier go first
        let t = self.turn.send_to(peer, bytes, Instant::now()).unwrap();
        self.socket
            .send_to(&t.contents, t.destination)
            .await
            .unwrap();
        self.flush().await;
        t.contents
    }
}

async fn recv_within(socket: &UdpSocket, limit: Duration) -> Option<(Vec<u8>, SocketAddr)> {
    let mut buf = vec![0u8; 2048];
    match tokio::time::timeout(limit, socket.recv_from(&mut buf)).await {
        Ok(Ok((n, from))) => Some((buf[..n].to_vec(), from)),
        _ => None,
    }
}

fn turn_log() -> String {
    std::fs::read_to_string(stack_var("TURN_LOG")).unwrap_or_default()
}

#[tokio::test]
async fn synapse_credentials_are_the_turn_rest_scheme_with_the_stack_secret() {
    let (user_id, body, servers) = turn_credentials("turncred").await;
    let raw: serde_json::Value = serde_json::from_slice(&body).unwrap();
    assert_eq!(raw["uris"], serde_json::json!([stack_var("TURN_URI")]));
    let (expiry, user) = servers.username().split_once(':').unwrap();
    assert_eq!(user, user_id);
    let expiry: u64 = expiry.parse().unwrap();
    assert!(expiry > unix_now() && expiry <= unix_now() + servers.ttl().as_secs() + 5);
    assert_eq!(servers.username_expiry(), Some(expiry));
    assert_eq!(servers.password(), rest_password(servers.username()));
    assert_eq!(servers.check_fresh(unix_now()), Ok(()));
    assert_eq!(
        servers.check_fresh(expiry + 1),
        Err(TurnServerError::Expired { expiry })
    );
}

#[tokio::test]
async fn relays_both_ways_through_coturn_then_release_deletes_the_allocation() {
    let (_, _, servers) = turn_credentials("turnrelay").await;
    let server = server_addr(&servers);
    let mut d = Driver::new(
        servers.username(),
        servers.password(),
        server,
        TurnConfig::default(),
    )
    .await;
    let relayed = d.allocate().await;
    let (lo, hi) = stack_var("TURN_RELAY_PORTS")
        .split_once('-')
        .map(|(a, b)| (a.parse::<u16>().unwrap(), b.parse::<u16>().unwrap()))
        .unwrap();
    assert!(
        (lo..=hi).contains(&relayed.port()),
        "relayed {relayed} outside {lo}-{hi}"
    );
    assert_eq!(d.turn.mapped_addr(), Some(d.socket.local_addr().unwrap()));

    // A plain UDP peer on loopback.
    let peer = UdpSocket::bind("127.0.0.1:0").await.unwrap();
    let peer_addr = peer.local_addr().unwrap();
    assert_eq!(
        d.turn.send_to(peer_addr, b"x", Instant::now()),
        Err(TurnError::NoPermission)
    );
    d.turn.add_permission(peer_addr.ip(), Instant::now());
    assert!(
        d.run_until(Duration::from_secs(5), |d| d
            .events
            .contains(&TurnEvent::PermissionCreated(peer_addr.ip())))
            .await,
        "{:?}",
        d.events
    );

    // First datagram: a Send indication (and a ChannelBind behind it).
    let wire = d.send(peer_addr, b"hello over send").await;
    assert_eq!(
        wire[0] & 0xC0,
        0,
        "the first send is a STUN Send indication"
    );
    let (got, from) = recv_within(&peer, Duration::from_secs(3))
        .await
        .expect("relayed to the peer");
    assert_eq!((got.as_slice(), from), (&b"hello over send"[..], relayed));
    assert!(
        d.run_until(Duration::from_secs(5), |d| d
            .events
            .contains(&TurnEvent::ChannelBound(peer_addr)))
            .await,
        "{:?}",
        d.events
    );

    // Then ChannelData, both ways.
    let wire = d.send(peer_addr, b"hello over channel").await;
    assert_eq!(wire[0] & 0xC0, 0x40, "a bound channel sends ChannelData");
    let (got, from) = recv_within(&peer, Duration::from_secs(3))
        .await
        .expect("relayed to the peer");
    assert_eq!(
        (got.as_slice(), from),
        (&b"hello over channel"[..], relayed)
    );
    peer.send_to(b"and back", relayed).await.unwrap();
    assert!(
        d.run_until(Duration::from_secs(3), |d| !d.received.is_empty())
            .await
    );
    assert_eq!(d.received, vec![(peer_addr, b"and back".to_vec())]);

    // Release: coturn deletes the allocation within 2 s, and the relayed port stops relaying.
    let log_before = turn_log().len();
    let t0 = Instant::now();
    d.turn.release(Instant::now());
    assert!(
        d.run_until(Duration::from_secs(2), |d| d.turn.state()
            == &AllocationState::Released)
            .await,
        "{:?}",
        d.turn
    );
    let deleted = loop {
        let log = turn_log();
        let fresh = log.get(log_before..).unwrap_or("").to_owned();
        let deleted = format!(
            "delete: realm=<{}>, username=<{}>",
            stack_var("TURN_REALM"),
            servers.username()
        );
        if fresh.contains(&deleted) {
            break fresh;
        }
        assert!(
            t0.elapsed() < Duration::from_secs(2),
            "coturn logged no deletion within 2 s:\n{fresh}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert!(
        deleted.contains("lifetime=0"),
        "deleted by our Refresh, not by expiry: {deleted}"
    );
    assert_eq!(d.turn.relayed_addr(), None);
    assert!(matches!(
        d.turn.send_to(peer_addr, b"x", Instant::now()),
        Err(TurnError::NotAllocated { .. })
    ));
    peer.send_to(b"after release", relayed).await.unwrap();
    let late = recv_within(&d.socket, Duration::from_millis(500)).await;
    assert!(
        late.is_none(),
        "{late:?}\n{}",
        turn_log().get(log_before..).unwrap_or("")
    );
    assert_eq!(
        d.turn.poll_timeout(),
        None,
        "nothing left to do after release"
    );
}

#[tokio::test]
async fn refresh_keeps_a_short_allocation_alive_past_its_lifetime() {
    let (_, _, servers) = turn_credentials("turnrefresh").await;
    let server = server_addr(&servers);
    let config = TurnConfig::default()
        .with_requested_lifetime(Duration::from_secs(10))
        .with_refresh_periods(Duration::from_secs(4), Duration::from_secs(5));
    let mut d = Driver::new(servers.username(), servers.password(), server, config).await;
    let relayed = d.allocate().await;
    let Some(TurnEvent::Allocated { lifetime, .. }) = d.events.first().cloned() else {
        panic!("{:?}", d.events)
    };
    assert!(
        lifetime <= Duration::from_secs(60),
        "coturn granted {lifetime:?}: the stack's max-allocate-lifetime is {} \
         (STACK_TURN_ALLOCATION_LIFETIME; this test needs at most 60)",
        stack_var("TURN_ALLOCATION_LIFETIME")
    );
    let peer = UdpSocket::bind("127.0.0.1:0").await.unwrap();
    let peer_addr = peer.local_addr().unwrap();

    // The control: the same allocation, left alone (never refreshed) once its permission is in.
    let mut control = Driver::new(
        servers.username(),
        servers.password(),
        server,
        TurnConfig::default(),
    )
    .await;
    let control_relayed = control.allocate().await;
    for driver in [&mut d, &mut control] {
        driver.turn.add_permission(peer_addr.ip(), Instant::now());
        assert!(
            driver
                .run_until(Duration::from_secs(5), |d| d
                    .events
                    .contains(&TurnEvent::PermissionCreated(peer_addr.ip())))
                .await
        );
    }
    d.send(peer_addr, b"bind").await;
    recv_within(&peer, Duration::from_secs(3))
        .await
        .expect("relayed");

    // Live past the granted lifetime (coturn drops expired allocations on its 1 s tick).
    let started = Instant::now();
    let until = lifetime + Duration::from_secs(3);
    d.run_until(until, |_| false).await;
    assert!(started.elapsed() >= until);
    assert_eq!(
        d.turn.state(),
        &AllocationState::Allocated,
        "{:?}",
        d.events
    );
    assert!(
        d.events
            .iter()
            .any(|e| matches!(e, TurnEvent::Refreshed { .. })),
        "no refresh in {until:?}: {:?}",
        d.events
    );
    d.send(peer_addr, b"still here").await;
    let (got, from) = recv_within(&peer, Duration::from_secs(3))
        .await
        .expect("still relaying");
    assert_eq!((got.as_slice(), from), (&b"still here"[..], relayed));
    peer.send_to(b"still back", relayed).await.unwrap();
    assert!(
        d.run_until(Duration::from_secs(3), |d| !d.received.is_empty())
            .await
    );
    assert_eq!(d.received, vec![(peer_addr, b"still back".to_vec())]);

    // The control expired on the server: its relayed port relays nothing any more.
    peer.send_to(b"to the expired one", control_relayed)
        .await
        .unwrap();
    let late = recv_within(&control.socket, Duration::from_millis(500)).await;
    assert!(
        late.is_none(),
        "the unrefreshed allocation still relays: {late:?}"
    );

    d.turn.release(Instant::now());
    d.run_until(Duration::from_secs(2), |d| {
        d.turn.state() == &AllocationState::Released
    })
    .await;
}

#[tokio::test]
async fn a_wrong_password_is_an_unauthorized_error() {
    let (_, _, servers) = turn_credentials("turnwrongpw").await;
    let mut d = Driver::new(
        servers.username(),
        "bm90IHRoZSBwYXNzd29yZA==",
        server_addr(&servers),
        TurnConfig::default(),
    )
    .await;
    assert!(
        d.run_until(Duration::from_secs(10), |d| d.turn.state()
            != &AllocationState::Allocating)
            .await
    );
    assert_eq!(
        d.turn.state(),
        &AllocationState::Failed(TurnError::Unauthorized { code: 401 })
    );
    assert!(
        d.events
            .contains(&TurnEvent::Failed(TurnError::Unauthorized { code: 401 }))
    );
    assert_eq!(d.turn.poll_timeout(), None);
}

#[tokio::test]
async fn an_expired_rest_username_is_refused_by_coturn_and_by_check_fresh() {
    let (user_id, _, servers) = turn_credentials("turnexpired").await;
    // Correctly signed with the shared secret, but its expiry passed a minute ago.
    let expiry = unix_now() - 60;
    let username = format!("{expiry}:{user_id}");
    let body = serde_json::json!({"username": username, "password": rest_password(&username),
        "ttl": 3600, "uris": [stack_var("TURN_URI")]});
    let expired = TurnServers::parse(body.to_string().as_bytes())
        .unwrap()
        .unwrap();
    assert_eq!(
        expired.check_fresh(unix_now()),
        Err(TurnServerError::Expired { expiry })
    );
    let mut d = Driver::new(
        expired.username(),
        expired.password(),
        server_addr(&servers),
        TurnConfig::default(),
    )
    .await;
    assert!(
        d.run_until(Duration::from_secs(10), |d| d.turn.state()
            != &AllocationState::Allocating)
            .await
    );
    assert_eq!(
        d.turn.state(),
        &AllocationState::Failed(TurnError::Unauthorized { code: 401 })
    );
}

#[test]
fn malformed_turn_server_bodies_are_typed_errors() {
    for (body, want) in [
        (
            &b"{\"username\":\"\",\"password\":\"p\",\"uris\":[\"turn:h\"],\"ttl\":1}"[..],
            TurnServerError::Empty("username"),
        ),
        (
            b"{\"username\":\"u\",\"password\":\"p\",\"uris\":[],\"ttl\":1}",
            TurnServerError::Empty("uris"),
        ),
        (b"null", TurnServerError::NotAnObject),
    ] {
        assert_eq!(TurnServers::parse(body).err(), Some(want));
    }
    assert!(
        TurnServers::parse(b"{}").unwrap().is_none(),
        "{{}} is no TURN"
    );
}

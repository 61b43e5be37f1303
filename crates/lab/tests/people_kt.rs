//! Key transparency for people (docs/PROTOCOL.md §14.7) on the real stack: the real
//! `kt serve` (with the stack's Synapse confirming people's OpenID tokens) and `DirectCalls`
//! on real matrix-sdk clients.
//!
//! - Each person's client publishes its device at start; a call pins what the other
//!   person's verified record lists, never what the homeserver reports (a device the
//!   homeserver knows but the person never published is refused, even on first contact).
//! - A listed device that is new is refused until accepted; a device withdrawn from the
//!   record stops being trusted; a person with no record cannot be called.
//! - A directory served from an older copy of its log is refused (rollback).
//! - The service refuses a publish without a token, with an unknown token, with another
//!   user's token, for another homeserver's user, of a malformed record, and past the
//!   per-user rate.
//!
//! Needs `scripts/stack up`.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]

#[path = "../../client/tests/direct/support.rs"]
mod support;

use std::path::Path;
use std::time::{Duration, Instant};

use matrix_sdk::config::SyncSettings;
use matrix_sdk::ruma::RoomId;
use oracle_calls_client::{DirectConfig, DirectError, IcePolicy, KtConfig, PeopleTrust};
use oracle_calls_direct::SecurityEvent;
use oracle_calls_kt::{LookupResponse, PersonDevice, PersonId, PersonRecord, Verifier};
use oracle_calls_lab::local::unique_hex;
use oracle_calls_lab::local_kt::{KtDirectory, KtService};
use oracle_calls_proto::Did;
use oracle_calls_test_support::stack_var;
use serde_json::json;
use support::*;

const BIN: &str = env!("CARGO_BIN_EXE_oracle-lab");

struct Kt {
    dir: KtDirectory,
    service: Option<KtService>,
    /// kt.toml's extra lines (the homeserver included).
    extra: String,
}

impl Kt {
    /// A directory whose people's records the stack's Synapse vouches for; `extra` goes into
    /// kt.toml.
    fn start(extra: &str) -> Self {
        let path = std::env::temp_dir().join(format!("oc-people-kt-{}", unique_hex(6)));
        let dir =
            KtDirectory::new(Path::new(BIN), path, &Did::parse("did:ixo:nobody").unwrap()).unwrap();
        let homeserver = format!(
            "[[homeservers]]\nserver_name = \"{}\"\nurl = \"{}\"\n",
            stack_var("MATRIX_SERVER_NAME"),
            stack_var("MATRIX_URL")
        );
        let extra = format!("{extra}\n{homeserver}");
        let service = Some(dir.start_with("data", &extra).unwrap());
        Self {
            dir,
            service,
            extra,
        }
    }

    fn service(&self) -> &KtService {
        self.service.as_ref().expect("the service runs")
    }

    /// Stops the service, and starts it again on the log in `data`.
    fn restart(&mut self, data: &str) {
        drop(self.service.take());
        self.service = Some(self.dir.start_with(data, &self.extra).unwrap());
    }

    /// A copy of the log as it is now, in `to` (the service stopped while it is taken).
    fn copy_log(&mut self, to: &str) {
        drop(self.service.take());
        let copy = self.dir.dir.join(to);
        std::fs::create_dir_all(&copy).unwrap();
        for f in std::fs::read_dir(self.dir.dir.join("data")).unwrap() {
            let f = f.unwrap();
            std::fs::copy(f.path(), copy.join(f.file_name())).unwrap();
        }
        self.restart("data");
    }

    fn config(&self) -> DirectConfig {
        DirectConfig {
            ice_policy: IcePolicy::All,
            key_transparency: Some(self.client_config()),
            ..DirectConfig::default()
        }
    }

    fn client_config(&self) -> KtConfig {
        self.dir.config(self.service())
    }

    async fn publish(&self, token: Option<&str>, body: serde_json::Value) -> reqwest::Response {
        let mut req = reqwest::Client::new()
            .post(format!("{}/kt/v1/people/publish", self.service().base))
            .json(&body);
        if let Some(t) = token {
            req = req.bearer_auth(t);
        }
        req.send().await.unwrap()
    }

    /// The verified record of `user` (the test's own verifier, not the client's).
    async fn verified(&self, user: &str) -> Option<PersonRecord> {
        let r = reqwest::get(format!("{}/kt/v1/lookup/{user}", self.service().base))
            .await
            .unwrap();
        if r.status() == 404 {
            return None;
        }
        assert_eq!(r.status(), 200);
        let body = r.bytes().await.unwrap();
        let lookup = LookupResponse::from_json(&body).unwrap();
        let person = PersonId::parse(user).unwrap();
        let v = Verifier::new(self.dir.public.clone())
            .verify_lookup(&lookup.checkpoint, &person, &lookup.proof)
            .unwrap();
        Some(v.record)
    }
}

fn init_logs() {
    oracle_calls_test_support::init_test_logs("warn,oracle_calls_client=info");
}

async fn openid(p: &Person) -> String {
    p.client
        .account()
        .request_openid_token()
        .await
        .unwrap()
        .access_token
}

async fn device_of(p: &Person) -> PersonDevice {
    PersonDevice {
        device_id: p.client.device_id().unwrap().to_string(),
        ed25519: p.client.encryption().ed25519_key().await.unwrap(),
    }
}

/// `p` syncs until it is in `room`.
async fn join_seen(p: &Person, room: &str) {
    let t0 = Instant::now();
    while p.client.get_room(&RoomId::parse(room).unwrap()).is_none() {
        p.client
            .sync_once(SyncSettings::default().timeout(Duration::ZERO))
            .await
            .unwrap();
        assert!(t0.elapsed() < Duration::from_secs(10), "never saw the room");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn calls_trust_the_verified_record_not_the_homeserver() {
    init_logs();
    let kt = Kt::start("");
    let (bob_name, bob_password) = new_user("bob-ktp");
    let alice = person("alice-ktp").await;
    let bob = login(&bob_name, &bob_password).await;
    // A second login of bob that never publishes itself: as far as alice can tell, the
    // homeserver added a device to bob's account.
    let bob2 = login(&bob_name, &bob_password).await;
    let bob2_device = bob2.client.device_id().unwrap().to_owned();

    let a_calls = start_with(&alice, kt.config()).await;
    let b_calls = start_with(&bob, kt.config()).await;
    // Each start published its device, and the directory proves it.
    assert_eq!(
        kt.verified(alice.user.as_str()).await.unwrap().devices,
        vec![device_of(&alice).await]
    );
    let bob1 = device_of(&bob).await;
    assert_eq!(
        a_calls.directory_devices(&bob.user).await.unwrap(),
        Some(vec![bob1.clone()])
    );
    wait_for_device(&alice, &bob.user, &bob2_device).await;

    // A call: first contact pins exactly what bob's record lists (not bob2, which the
    // homeserver reports), and the tones go both ways.
    let mut a_call = a_calls.place_call(&bob.user).await.unwrap();
    let ring = incoming(&b_calls, Duration::from_secs(20))
        .await
        .expect("bob's published device rings");
    let mut b_call = ring.answer().await.unwrap();
    let (mut a, mut b) = (Side::default(), Side::default());
    let until = Instant::now() + Duration::from_secs(5);
    tokio::join!(
        run_side(&mut a_call, 440.0, until, &mut a),
        run_side(&mut b_call, 880.0, until, &mut b)
    );
    assert!(a.key_confirmed && b.key_confirmed);
    assert_tone(&b, "bob", 440.0, 880.0);
    assert_tone(&a, "alice", 880.0, 440.0);
    let room = a_call.room_id().to_string();
    a_call.hangup().unwrap();
    assert!(
        wait_end(&mut b_call, Duration::from_secs(10))
            .await
            .is_some()
    );
    let pins = PeopleTrust::open(alice.dir.join("pins.json"))
        .pinned(&bob.user)
        .unwrap();
    assert_eq!(pins.len(), 1, "{pins:?}");
    assert_eq!(
        (pins[0].device_id.as_str(), pins[0].ed25519.as_str()),
        (bob1.device_id.as_str(), bob1.ed25519.as_str())
    );

    // The unpublished device's invite is refused and never rings.
    join_seen(&bob2, &room).await;
    let short = Duration::from_secs(2);
    let refused = |n: Option<oracle_calls_client::SecurityNotice>| {
        let n = n.expect("a security notice");
        assert!(
            matches!(n.event, SecurityEvent::UntrustedDevice { ref device, .. } if device == bob2_device.as_str()),
            "{n:?}"
        );
    };
    send_encrypted(
        &bob2,
        &room,
        "m.call.invite",
        &invite("unlisted", bob2_device.as_str(), &alice.user),
    )
    .await;
    refused(notice(&a_calls, Duration::from_secs(10)).await);
    assert!(
        incoming(&a_calls, short).await.is_none(),
        "an unlisted device rang"
    );
    // Accepting a device the record does not list does not make it trusted.
    let bob2_key = device_of(&bob2).await;
    a_calls
        .accept_device(&bob.user, bob2_device.as_str(), &bob2_key.ed25519)
        .unwrap();
    send_encrypted(
        &bob2,
        &room,
        "m.call.invite",
        &invite("unlisted-accepted", bob2_device.as_str(), &alice.user),
    )
    .await;
    refused(notice(&a_calls, Duration::from_secs(10)).await);
    assert!(incoming(&a_calls, short).await.is_none());

    // bob2 publishes itself (its start merges it into bob's record): listed and accepted,
    // it rings. (The acceptance above was stored; a fresh lookup is taken after the cache.)
    let b2_calls = start_with(&bob2, kt.config()).await;
    assert_eq!(
        kt.verified(bob.user.as_str()).await.unwrap().devices,
        vec![bob1.clone(), bob2_key.clone()]
    );
    tokio::time::sleep(Duration::from_secs(11)).await;
    send_encrypted(
        &bob2,
        &room,
        "m.call.invite",
        &invite("listed", bob2_device.as_str(), &alice.user),
    )
    .await;
    let ring = incoming(&a_calls, Duration::from_secs(10))
        .await
        .expect("a listed, accepted device rings");
    assert_eq!(ring.call_id().as_str(), "listed");
    ring.reject().unwrap();

    // bob withdraws his first device from the record: it is no longer trusted, though
    // alice pinned it.
    let token = openid(&bob).await;
    let r = kt
        .publish(
            Some(&token),
            json!({"record": {"matrixUserId": bob.user.as_str(), "devices": [bob2_key]}}),
        )
        .await;
    assert_eq!(r.status(), 200, "{}", r.text().await.unwrap());
    tokio::time::sleep(Duration::from_secs(11)).await;
    send_encrypted(
        &bob,
        &room,
        "m.call.invite",
        &invite("withdrawn", bob1.device_id.as_str(), &alice.user),
    )
    .await;
    let n = notice(&a_calls, Duration::from_secs(10))
        .await
        .expect("a security notice");
    assert!(
        matches!(n.event, SecurityEvent::UntrustedDevice { ref device, .. } if *device == bob1.device_id),
        "{n:?}"
    );
    assert!(
        incoming(&a_calls, short).await.is_none(),
        "a withdrawn device rang"
    );
    drop((b_calls, b2_calls));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_person_without_a_record_or_directory_cannot_be_called() {
    init_logs();
    let kt = Kt::start("");
    let alice = person("alice-ktn").await;
    let dave = person("dave-ktn").await;
    let a_calls = start_with(&alice, kt.config()).await;
    // dave runs without key transparency: no record.
    let _d_calls = start(&dave, IcePolicy::All).await;
    let t0 = Instant::now();
    match a_calls.place_call(&dave.user).await {
        Err(DirectError::NotInDirectory(who)) => assert_eq!(who, dave.user.as_str()),
        other => panic!("{other:?}"),
    }
    assert!(
        t0.elapsed() < Duration::from_secs(5),
        "refused before any wait"
    );
    assert!(
        alice.client.get_dm_rooms(&dave.user).next().is_none(),
        "no DM was created"
    );

    // A directory that cannot be reached: start refuses, loudly.
    let mut cfg = kt.config();
    if let Some(k) = cfg.key_transparency.as_mut() {
        k.url = "http://127.0.0.1:9".into();
    }
    let erin = person("erin-ktn").await;
    let r = oracle_calls_client::DirectCalls::start(
        &erin.client,
        PeopleTrust::open(erin.dir.join("pins.json")),
        cfg,
    )
    .await;
    assert!(
        matches!(r, Err(DirectError::KtUnavailable(_))),
        "{:?}",
        r.err()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_rolled_back_directory_is_refused() {
    init_logs();
    let mut kt = Kt::start("");
    let alice = person("alice-ktr").await;
    let bob = person("bob-ktr").await;
    let a_calls = start_with(&alice, kt.config()).await;
    a_calls.stop();
    kt.copy_log("data-epoch1");
    // bob's record makes epoch 2; alice's next start sees it (and stores its checkpoint).
    let b_calls = start_with(&bob, kt.config()).await;
    let a_calls = start_with(&alice, kt.config()).await;
    assert!(
        a_calls
            .directory_devices(&bob.user)
            .await
            .unwrap()
            .is_some()
    );
    a_calls.stop();
    // The directory, served from the copy of its log at epoch 1: alice refuses it.
    kt.restart("data-epoch1");
    let r = oracle_calls_client::DirectCalls::start(
        &alice.client,
        PeopleTrust::open(alice.dir.join("pins.json")),
        kt.config(),
    )
    .await;
    match r {
        Err(DirectError::KtUnverified(oracle_calls_kt::Error::Rollback { stored, offered })) => {
            assert_eq!((stored, offered), (2, 1));
        }
        Err(e) => panic!("expected a rollback, got {e}"),
        Ok(_) => panic!("a rolled-back directory was accepted"),
    }
    drop(b_calls);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_directory_takes_a_persons_record_only_from_that_person() {
    init_logs();
    let kt = Kt::start("person_publishes_per_hour = 3");
    let carol = person("carol-ktp").await;
    let dave = person("dave-ktp").await;
    let carol_device = device_of(&carol).await;
    let record = |user: &str, devices: Vec<PersonDevice>| json!({"record": {"matrixUserId": user, "devices": devices}});
    let mine = record(carol.user.as_str(), vec![carol_device.clone()]);
    let token = openid(&carol).await;
    let code = |r: reqwest::Response| async move {
        let status = r.status().as_u16();
        let body: serde_json::Value = r.json().await.unwrap();
        (
            status,
            body["error"]["code"].as_str().unwrap_or("").to_owned(),
        )
    };

    assert_eq!(
        code(kt.publish(None, mine.clone()).await).await,
        (401, "unauthorized".into())
    );
    assert_eq!(
        code(kt.publish(Some("not-a-token"), mine.clone()).await).await,
        (401, "unauthorized".into())
    );
    // carol's token for dave's record; for a user of a homeserver the directory does not
    // take.
    assert_eq!(
        code(
            kt.publish(
                Some(&token),
                record(dave.user.as_str(), vec![carol_device.clone()])
            )
            .await
        )
        .await,
        (403, "forbidden".into())
    );
    assert_eq!(
        code(
            kt.publish(
                Some(&token),
                record("@carol:elsewhere.example", vec![carol_device.clone()])
            )
            .await
        )
        .await,
        (403, "forbidden".into())
    );
    // Malformed records: a device twice, a key that is not 32 bytes, an unknown field.
    for bad in [
        record(
            carol.user.as_str(),
            vec![carol_device.clone(), carol_device.clone()],
        ),
        record(
            carol.user.as_str(),
            vec![PersonDevice {
                device_id: "X".into(),
                ed25519: "AAEC".into(),
            }],
        ),
        json!({"record": {"matrixUserId": carol.user.as_str(), "devices": [], "extra": 1}}),
    ] {
        assert_eq!(
            code(kt.publish(Some(&token), bad).await).await,
            (400, "bad_request".into())
        );
    }
    assert!(
        kt.verified(carol.user.as_str()).await.is_none(),
        "nothing refused was published"
    );
    // Three publishes an hour; the fourth waits.
    for _ in 0..3 {
        let r = kt.publish(Some(&token), mine.clone()).await;
        assert_eq!(r.status(), 200);
    }
    let r = kt.publish(Some(&token), mine.clone()).await;
    assert_eq!(r.status(), 429);
    let retry: u64 = r.headers()["retry-after"]
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    assert!((1..=3600).contains(&retry), "{retry}");
    assert_eq!(
        kt.verified(carol.user.as_str()).await.unwrap().devices,
        vec![carol_device]
    );
    // Reads: an unknown person is 404, a label that is neither a DID nor a user id is 400.
    let get = |path: String| async move { reqwest::get(path).await.unwrap().status().as_u16() };
    assert_eq!(
        get(format!(
            "{}/kt/v1/lookup/@nobody-{}:localhost",
            kt.service().base,
            unique_hex(4)
        ))
        .await,
        404
    );
    assert_eq!(
        get(format!("{}/kt/v1/lookup/not-a-label", kt.service().base)).await,
        400
    );
}

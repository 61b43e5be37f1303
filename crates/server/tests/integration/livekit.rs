//! Phase B: tokens, RoomService and webhooks against the stack's livekit-server.

use std::time::Duration;

use base64::Engine as _;
use hmac::{Hmac, KeyInit as _, Mac as _};
use oracle_calls_proto::{CallId, EventId, RoomName};
use serde_json::{Value, json};
use sha2::{Digest as _, Sha256};

use crate::support::{Db, TestServer, answer, metric, read_file, room_name, stack_var, unique};

/// Signs like livekit-server's webhook notifier does (independently of the server's code).
pub(crate) fn webhook_auth(body: &[u8], secret: &str, api_key: &str) -> String {
    let b64 = base64::engine::general_purpose::URL_SAFE_NO_PAD;
    let now = time::OffsetDateTime::now_utc().unix_timestamp();
    let sha = base64::engine::general_purpose::STANDARD.encode(Sha256::digest(body));
    let header = b64.encode(br#"{"alg":"HS256","typ":"JWT"}"#);
    let claims = b64
        .encode(json!({"iss": api_key, "nbf": now, "exp": now + 300, "sha256": sha}).to_string());
    let mut mac = <Hmac<Sha256>>::new_from_slice(secret.as_bytes()).unwrap();
    mac.update(format!("{header}.{claims}").as_bytes());
    format!(
        "{header}.{claims}.{}",
        b64.encode(mac.finalize().into_bytes())
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rooms_are_created_with_dispatch_listed_and_deleted() {
    let s = TestServer::start(Db::Sqlite).await;
    let lk = s.state.livekit();
    let room = RoomName::parse(&room_name()).unwrap();
    lk.create_room(&room, Some("agent-x"), "").await.unwrap();
    lk.create_room(&room, Some("agent-x"), "")
        .await
        .expect("creating twice is harmless");
    assert!(
        lk.list_rooms()
            .await
            .unwrap()
            .contains(&room.as_str().to_owned())
    );

    // The join token is accepted by livekit-server for that room.
    let (token, exp) = lk
        .join_token(&room, "@alice:localhost", oracle_calls_server::now())
        .unwrap();
    assert!(exp.unix_millis() > oracle_calls_server::now().unix_millis());
    let r = reqwest::Client::new()
        .get(format!("{}/rtc/validate", stack_var("LIVEKIT_HTTP_URL")))
        .query(&[("access_token", token.as_str())])
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 200, "{}", r.text().await.unwrap());

    lk.delete_room(&room).await.unwrap();
    lk.delete_room(&room)
        .await
        .expect("deleting a deleted room is harmless");
    assert!(
        !lk.list_rooms()
            .await
            .unwrap()
            .contains(&room.as_str().to_owned())
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn forged_webhooks_are_rejected_and_signed_ones_end_calls() {
    let s = TestServer::start_edited(Db::Sqlite, |t| {
        t.replace(
            "empty_timeout_secs = 30",
            "empty_timeout_secs = 30\n        user_rejoin_grace_ms = 1500",
        )
    })
    .await;
    let http = reqwest::Client::new();
    let secret = read_file(&stack_var("LIVEKIT_API_SECRET_FILE"));
    let key = stack_var("LIVEKIT_API_KEY");
    let id = s.seed_call("@u:localhost", "s", &s.oracle).await;
    let body = json!({"event": "room_finished",
        "room": {"sid": "RM_x", "name": id.room_name().as_str(), "metadata": id.as_str()},
        "id": unique("EV_"), "createdAt": "1700000000"})
    .to_string();
    let post = |auth: Option<String>, body: String| {
        let mut r = http
            .post(s.url("/livekit/webhook"))
            .header("content-type", "application/webhook+json")
            .body(body);
        if let Some(a) = auth {
            r = r.header("authorization", a);
        }
        r.send()
    };
    let good = webhook_auth(body.as_bytes(), &secret, &key);
    for (auth, what) in [
        (None, "no signature"),
        (
            Some(webhook_auth(body.as_bytes(), "not-the-secret", &key)),
            "wrong secret",
        ),
        (
            Some(webhook_auth(body.as_bytes(), &secret, "other-key")),
            "wrong key",
        ),
        (
            Some(webhook_auth(b"{}", &secret, &key)),
            "signature of another body",
        ),
        (Some(format!("Bearer {good}")), "Bearer prefix"),
        (Some("not.a.jwt".into()), "garbage"),
    ] {
        let (st, b) = answer(post(auth, body.clone()).await.unwrap()).await;
        assert_eq!(
            (st, b["error"]["code"].as_str()),
            (401, Some("unauthorized")),
            "{what}: {b}"
        );
    }
    assert_eq!(
        s.store().call(&id).await.unwrap().unwrap().status.as_str(),
        "pending"
    );
    let (st, _) = answer(post(Some(good), body).await.unwrap()).await;
    assert_eq!(st, 200);
    let rec = s.store().call(&id).await.unwrap().unwrap();
    assert_eq!(
        (rec.status.as_str(), rec.reason.map(|r| format!("{r:?}"))),
        ("ended", Some("RoomFinished".into()))
    );

    // participant_left: only the call's user ends it, and only in the room made for the
    // call (its metadata is the call id), not in another room of that name.
    let id = s.seed_call("@u:localhost", "s", &s.oracle).await;
    let left_in = |who: &str, metadata: &str| {
        json!({"event": "participant_left",
        "room": {"name": id.room_name().as_str(), "metadata": metadata},
        "participant": {"identity": who, "disconnectReason": "CLIENT_INITIATED"},
        "id": unique("EV_")})
        .to_string()
    };
    let left = |who: &str| left_in(who, id.as_str());
    for b in [
        left("agent-identity"),
        left_in("@u:localhost", "another-room"),
    ] {
        let (st, _) = answer(
            post(Some(webhook_auth(b.as_bytes(), &secret, &key)), b)
                .await
                .unwrap(),
        )
        .await;
        assert_eq!(st, 200);
    }
    assert_eq!(
        s.store().call(&id).await.unwrap().unwrap().status.as_str(),
        "pending"
    );
    let b = left("agent-identity");
    let (st, _) = answer(
        post(Some(webhook_auth(b.as_bytes(), &secret, &key)), b)
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(st, 200);
    assert_eq!(
        s.store().call(&id).await.unwrap().unwrap().status.as_str(),
        "pending"
    );
    let b = left("@u:localhost");
    let (st, _) = answer(
        post(Some(webhook_auth(b.as_bytes(), &secret, &key)), b)
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(st, 200);
    assert_eq!(
        s.store().call(&id).await.unwrap().unwrap().status.as_str(),
        "ended"
    );
}

/// A user whose connection was lost (LiveKit's `disconnectReason` is not `CLIENT_INITIATED`)
/// ends the call only if it is not back in the room after `livekit.user_rejoin_grace_ms`: a
/// full reconnect after a node's death or a Redis outage keeps the call (the user coming
/// back: `crates/lab/tests/faults.rs::redis_down_ten_seconds_under_a_live_call`).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_user_who_lost_its_connection_has_a_grace_to_come_back() {
    let s = TestServer::start_edited(Db::Sqlite, |t| {
        t.replace(
            "empty_timeout_secs = 30",
            "empty_timeout_secs = 30\n        user_rejoin_grace_ms = 1500",
        )
    })
    .await;
    let http = reqwest::Client::new();
    let secret = read_file(&stack_var("LIVEKIT_API_SECRET_FILE"));
    let key = stack_var("LIVEKIT_API_KEY");
    let lost = |id: &CallId, who: &str| {
        json!({"event": "participant_left",
            "room": {"name": id.room_name().as_str(), "metadata": id.as_str()},
            "participant": {"identity": who, "disconnectReason": "SIGNAL_CLOSE"},
            "id": unique("EV_")})
        .to_string()
    };
    let post = |body: String| {
        http.post(s.url("/livekit/webhook"))
            .header("content-type", "application/webhook+json")
            .header(
                "authorization",
                webhook_auth(body.as_bytes(), &secret, &key),
            )
            .body(body)
            .send()
    };
    let status = |id: &CallId| {
        let store = s.store().clone();
        let id = id.clone();
        async move {
            store
                .call(&id)
                .await
                .unwrap()
                .unwrap()
                .status
                .as_str()
                .to_owned()
        }
    };

    // Not back (no room in LiveKit at all): ended after the grace, not before.
    let id = s.seed_call("@u:localhost", "s", &s.oracle).await;
    let (st, _) = answer(post(lost(&id, "@u:localhost")).await.unwrap()).await;
    assert_eq!(st, 200);
    tokio::time::sleep(Duration::from_millis(700)).await;
    assert_eq!(status(&id).await, "pending", "ended within the grace");
    tokio::time::sleep(Duration::from_millis(2300)).await;
    assert_eq!(status(&id).await, "ended", "not ended after the grace");
    let rec = s.store().call(&id).await.unwrap().unwrap();
    assert_eq!(
        rec.reason.map(|r| format!("{r:?}")),
        Some("ParticipantLeft".into())
    );
}

/// livekit-server posts its webhooks to the stack's server port; listen there and see a real one.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn real_webhook_from_livekit_arrives_and_verifies() {
    let addr = stack_var("ORACLE_CALLS_SERVER_URL")
        .trim_start_matches("http://")
        .to_owned();
    let s = TestServer::start_on(Db::Sqlite, &addr).await;
    let mut events = s.state.subscribe_webhooks();
    let room = RoomName::parse(&room_name()).unwrap();
    s.state
        .livekit()
        .create_room(&room, Some("agent-x"), "")
        .await
        .unwrap();
    let got = tokio::time::timeout(Duration::from_secs(20), async {
        loop {
            let ev = events.recv().await.unwrap();
            if ev.event == "room_started"
                && ev.room.as_ref().is_some_and(|r| r.name == room.as_str())
            {
                return ev;
            }
        }
    })
    .await
    .expect("livekit-server's room_started webhook did not arrive within 20 s");
    assert!(!got.id.is_empty());
    s.state.livekit().delete_room(&room).await.unwrap();
    let _: Value = json!(null);
}

/// A signed webhook is acted on once (security review L4): a replay of the same event id
/// answers 200 and changes nothing, even where the event would now apply.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replayed_webhooks_change_nothing() {
    let s = TestServer::start(Db::Sqlite).await;
    let http = reqwest::Client::new();
    let secret = read_file(&stack_var("LIVEKIT_API_SECRET_FILE"));
    let key = stack_var("LIVEKIT_API_KEY");
    let post = |body: &str| {
        http.post(s.url("/livekit/webhook"))
            .header("content-type", "application/webhook+json")
            .header(
                "authorization",
                webhook_auth(body.as_bytes(), &secret, &key),
            )
            .body(body.to_owned())
            .send()
    };
    let ended = |id: &CallId| {
        let store = s.store().clone();
        let id = id.clone();
        async move { store.call(&id).await.unwrap().unwrap().status.as_str() == "ended" }
    };
    let finished = |id: &CallId, ev: &str| {
        json!({"event": "room_finished",
            "room": {"sid": "RM_x", "name": id.room_name().as_str(), "metadata": id.as_str()},
            "id": ev, "createdAt": "1700000000"})
        .to_string()
    };

    // The event ends the call once; its replay is a 200 that is counted as a replay.
    let id = s.seed_call("@u:localhost", "s", &s.oracle).await;
    let body = finished(&id, &unique("EV_"));
    let (st, _) = answer(post(&body).await.unwrap()).await;
    assert_eq!(st, 200);
    assert!(ended(&id).await);
    let handled = metric(&s, r#"oracle_calls_call_events_total{event="webhook"}"#).await;
    let (st, _) = answer(post(&body).await.unwrap()).await;
    assert_eq!(st, 200, "LiveKit sees a replay accepted");
    assert_eq!(
        metric(&s, r#"oracle_calls_call_events_total{event="webhook"}"#).await,
        handled,
        "a replay is not handled again"
    );
    assert_eq!(
        metric(
            &s,
            r#"oracle_calls_call_events_total{event="webhook_replayed"}"#
        )
        .await,
        1.0
    );

    // An event that arrived before its call was in the store (a store lost and rebuilt from
    // Matrix, say), replayed once the call is there: it would end the call, and does not.
    let later = CallId::new(
        EventId::parse(&unique("$ev")).unwrap(),
        RoomName::parse(&room_name()).unwrap(),
    );
    let mut left = serde_json::from_str::<Value>(&finished(&later, &unique("EV_"))).unwrap();
    left["event"] = json!("participant_left");
    left["participant"] =
        json!({"identity": "@u:localhost", "disconnectReason": "CLIENT_INITIATED"});
    let left = left.to_string();
    let (st, _) = answer(post(&left).await.unwrap()).await;
    assert_eq!(st, 200);
    let now = oracle_calls_server::now().unix_millis();
    s.seed_call_id(&later, "@u:localhost", "s", &s.oracle, now)
        .await;
    let (st, _) = answer(post(&left).await.unwrap()).await;
    assert_eq!(st, 200);
    assert!(!ended(&later).await, "the replay changed nothing");
    assert_eq!(
        metric(
            &s,
            r#"oracle_calls_call_events_total{event="webhook_replayed"}"#
        )
        .await,
        2.0
    );
}

/// The signature is checked before the body is parsed: garbage with a bad signature is 401
/// (not 400), garbage with a good one is 400.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_signature_is_checked_before_the_body_is_parsed() {
    let s = TestServer::start(Db::Sqlite).await;
    let secret = read_file(&stack_var("LIVEKIT_API_SECRET_FILE"));
    let key = stack_var("LIVEKIT_API_KEY");
    let garbage = b"{this is not json".to_vec();
    for (auth, want) in [
        (
            webhook_auth(&garbage, "not-the-secret", &key),
            (401, "unauthorized"),
        ),
        (webhook_auth(b"{}", &secret, &key), (401, "unauthorized")),
        (webhook_auth(&garbage, &secret, &key), (400, "bad_request")),
    ] {
        let (st, b) = answer(
            reqwest::Client::new()
                .post(s.url("/livekit/webhook"))
                .header("content-type", "application/webhook+json")
                .header("authorization", auth)
                .body(garbage.clone())
                .send()
                .await
                .unwrap(),
        )
        .await;
        assert_eq!(
            (st, b["error"]["code"].as_str()),
            (want.0, Some(want.1)),
            "{b}"
        );
    }
}

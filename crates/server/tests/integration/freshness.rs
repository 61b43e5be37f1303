//! Freshness on every path that starts or serves a call (security review L1): an old call is
//! not activated by a late sync, and its key is not handed out.

use oracle_calls_proto::{CallId, CallStatus};
use oracle_calls_server::apikey;
use serde_json::{Value, json};

use crate::support::{Db, MatrixUser, TestServer, answer, both_backends, unique};

const MINUTE_MS: i64 = 60_000;
const DAY_MS: i64 = 24 * 60 * MINUTE_MS;

async fn sync(s: &TestServer, token: &str, id: &CallId) -> (u16, Value) {
    answer(
        reqwest::Client::new()
            .post(s.url(&format!("/calls/{}/sync", id.to_path_segment())))
            .bearer_auth(token)
            .json(&json!({}))
            .send()
            .await
            .unwrap(),
    )
    .await
}

async fn key(s: &TestServer, api_key: &str, id: &CallId) -> (u16, Value) {
    answer(
        reqwest::Client::new()
            .get(s.url(&format!("/calls/{}/key", id.to_path_segment())))
            .bearer_auth(api_key)
            .send()
            .await
            .unwrap(),
    )
    .await
}

fn assert_error(got: &(u16, Value), status: u16, code: &str, says: &str) {
    let (st, body) = got;
    assert_eq!(
        (*st, body["error"]["code"].as_str()),
        (status, Some(code)),
        "{body}"
    );
    let msg = body["error"]["message"].as_str().unwrap_or_default();
    assert!(msg.contains(says), "{says}: {body}");
}

async fn old_calls(db: Db) {
    // Defaults: max_clock_skew_secs = 300, max_call_age_secs = 3600.
    let s = TestServer::start(db).await;
    let alice = MatrixUser::new(&unique("alice")).await;
    let token = alice.openid_token().await;
    let now = oracle_calls_server::now().unix_millis();
    let agent = apikey::create(s.store(), &s.pepper, s.oracle.clone(), "agent", now)
        .await
        .unwrap();
    let agent = agent.key.dangerous_expose().to_owned();
    let seed = |started: i64| s.seed_call_started(&alice.user_id, "s", &s.oracle, started);

    // A pending call stored two days ago (its first sync failed, say) and synced now: gone,
    // and it stays pending (no room, no token).
    let days_old = seed(now - 2 * DAY_MS).await;
    assert_error(
        &sync(&s, &token, &days_old).await,
        410,
        "gone",
        "maximum call age",
    );
    let rec = s.store().call(&days_old).await.unwrap().unwrap();
    assert_eq!(rec.status, CallStatus::Pending);

    // A pending call ten minutes old: past the freshness window of a first activation.
    let stale = seed(now - 10 * MINUTE_MS).await;
    assert_error(
        &sync(&s, &token, &stale).await,
        422,
        "validation_failed",
        "callStartedAt",
    );
    assert_eq!(
        s.store().call(&stale).await.unwrap().unwrap().status,
        CallStatus::Pending
    );

    // The key endpoint: an active call that never ended, two days old, is not served (410);
    // one ten minutes into the call still is.
    for id in [&days_old, &stale] {
        assert!(
            s.store()
                .set_status(id, CallStatus::Pending, CallStatus::Active, None, now)
                .await
                .unwrap()
        );
    }
    assert_error(
        &key(&s, &agent, &days_old).await,
        410,
        "gone",
        "maximum call age",
    );
    let (st, body) = key(&s, &agent, &stale).await;
    assert_eq!(st, 200, "{body}");
    // An active call synced again late is gone too.
    assert_error(
        &sync(&s, &token, &days_old).await,
        410,
        "gone",
        "maximum call age",
    );
    // The refusal is audited with its own outcome.
    let audit = s.store().key_requests(&days_old).await.unwrap();
    let outcomes: Vec<&str> = audit.iter().map(|a| a.outcome.as_str()).collect();
    assert_eq!(outcomes, ["too_old"]);
}
both_backends!(old_calls_are_neither_activated_nor_keyed, old_calls);

//! Direct dispatch (docs/PROTOCOL.md §6.8): an agent waiting at `POST /agent/jobs/next` is
//! handed the call at sync with a join token, LiveKit dispatches nothing; a decline, a
//! hand-off nobody follows, no waiting agent, or the setting off all end in LiveKit's dispatch.

use std::time::{Duration, Instant};

use base64::Engine as _;
use matrix_sdk::ruma::{OwnedUserId, UserId};
use oracle_calls_proto::{CallId, RoomName};
use oracle_calls_server::apikey;
use serde_json::{Value, json};

use crate::matrix::{UserSide, now_ms, sync_call};
use crate::support::{Db, MatrixUser, TestServer, answer, metric, room_name, stack_var, unique};

async fn wait_for_job(s: &TestServer, key: &str, wait_ms: u64) -> (u16, Value) {
    answer(
        reqwest::Client::new()
            .post(s.url("/agent/jobs/next"))
            .bearer_auth(key)
            .json(&json!({"waitMs": wait_ms}))
            .send()
            .await
            .unwrap(),
    )
    .await
}

async fn decline(s: &TestServer, key: &str, job: &str) -> (u16, Value) {
    answer(
        reqwest::Client::new()
            .post(s.url(&format!("/agent/jobs/{job}/decline")))
            .bearer_auth(key)
            .json(&json!({"reason": "test"}))
            .send()
            .await
            .unwrap(),
    )
    .await
}

async fn agent_key(s: &TestServer) -> String {
    apikey::create(s.store(), &s.pepper, s.oracle.clone(), "agent", now_ms())
        .await
        .unwrap()
        .key
        .dangerous_expose()
        .to_owned()
}

/// Starts a wait in the background and returns once the server counts it.
fn waiting_agent(s: &TestServer, key: &str, wait_ms: u64) -> tokio::task::JoinHandle<(u16, Value)> {
    let url = s.url("/agent/jobs/next");
    let key = key.to_owned();
    tokio::spawn(async move {
        answer(
            reqwest::Client::new()
                .post(url)
                .bearer_auth(key)
                .json(&json!({"waitMs": wait_ms}))
                .send()
                .await
                .unwrap(),
        )
        .await
    })
}

async fn until_waiting(s: &TestServer, n: usize) {
    let t0 = Instant::now();
    while s.state.direct().waiting() < n {
        assert!(
            t0.elapsed() < Duration::from_secs(5),
            "the wait never registered"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// A user's fresh call to the server's oracle, synced: (status, body, call id).
async fn place_call(s: &TestServer, bot: &MatrixUser) -> (u16, Value, CallId) {
    let bot: OwnedUserId = UserId::parse(bot.user_id.as_str()).unwrap();
    let user = UserSide::new().await;
    let room = user.room_with(&bot, true).await;
    let token = user.user.openid_token().await;
    let r = room_name();
    let ev = user
        .send(&room, &user.content(s.oracle.as_str(), &r, now_ms()))
        .await;
    let call = format!("{ev}@{r}");
    let (st, body) = sync_call(s, &token, &call).await;
    (st, body, CallId::parse(&call).unwrap())
}

fn claims(token: &str) -> Value {
    let payload = token.split('.').nth(1).unwrap();
    let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(payload)
        .unwrap();
    serde_json::from_slice(&bytes).unwrap()
}

/// LiveKit's dispatches of this oracle's agent into `room`. (A room created with no agent
/// listed gets LiveKit's automatic dispatch of unnamed agents, `""`, which no agent of an
/// oracle takes: oracles' agents register with a name.)
async fn dispatches(s: &TestServer, room: &RoomName) -> Vec<String> {
    let name = &s.state.config().oracle.agent_name;
    let mut all = s.state.livekit().dispatches(room).await.unwrap();
    all.retain(|d| d == name);
    all
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_waiting_agent_is_handed_the_call_and_only_it_can_decline_it() {
    let bot = MatrixUser::new(&unique("oracle")).await;
    let s = TestServer::start_with_bot(Db::Sqlite, &bot).await;
    let key = agent_key(&s).await;
    let other_key = agent_key(&s).await;
    let waiter = waiting_agent(&s, &key, 15_000);
    until_waiting(&s, 1).await;

    let (st, body, call) = place_call(&s, &bot).await;
    assert_eq!(
        (st, body["status"].as_str()),
        (200, Some("active")),
        "{body}"
    );
    let (st, job) = waiter.await.unwrap();
    assert_eq!(st, 200, "{job}");
    let job_id = job["jobId"].as_str().unwrap().to_owned();
    assert!(job_id.starts_with("DJ_") && job_id.len() == 27, "{job}");
    assert_eq!(job["callId"], call.as_str(), "{job}");
    assert_eq!(job["room"], call.room_name().as_str(), "{job}");
    assert_eq!(job["livekitUrl"], stack_var("LIVEKIT_URL"), "{job}");
    // The token: this room only, as `agent-<jobId>`, of participant kind agent.
    let token = job["token"].as_str().unwrap();
    let c = claims(token);
    assert_eq!(c["sub"], format!("agent-{job_id}"), "{c}");
    assert_eq!(c["kind"], "agent", "{c}");
    assert_eq!(c["video"]["room"], call.room_name().as_str(), "{c}");
    assert_eq!(c["video"]["agent"], true, "{c}");
    assert_eq!(c["video"]["roomJoin"], true, "{c}");
    assert!(c["video"].get("roomAdmin").is_none(), "{c}");
    let r = reqwest::Client::new()
        .get(format!("{}/rtc/validate", stack_var("LIVEKIT_HTTP_URL")))
        .query(&[("access_token", token)])
        .send()
        .await
        .unwrap();
    assert_eq!(
        r.status().as_u16(),
        200,
        "LiveKit accepts the agent's token"
    );
    // LiveKit was asked for nothing.
    let d = dispatches(&s, call.room_name()).await;
    assert!(d.is_empty(), "{d:?}");
    assert_eq!(
        metric(&s, "oracle_calls_agent_dispatches_total{path=\"direct\"}").await,
        1.0
    );

    // Another agent key of the same oracle cannot decline it (nor make LiveKit dispatch).
    let (st, body) = decline(&s, &other_key, &job_id).await;
    assert_eq!(
        (st, body["error"]["code"].as_str()),
        (404, Some("not_found")),
        "{body}"
    );
    assert!(dispatches(&s, call.room_name()).await.is_empty());
    // Its own key declines it: LiveKit dispatches the oracle's agent into the room, once.
    let (st, body) = decline(&s, &key, &job_id).await;
    assert_eq!(st, 204, "{body}");
    assert_eq!(
        dispatches(&s, call.room_name()).await,
        vec![s.state.config().oracle.agent_name.clone()]
    );
    let (st, _) = decline(&s, &key, &job_id).await;
    assert_eq!(st, 404, "a job is declined once");
    assert_eq!(
        metric(&s, "oracle_calls_agent_dispatches_total{path=\"declined\"}").await,
        1.0
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hand_off_no_agent_follows_falls_back_to_livekit() {
    let bot = MatrixUser::new(&unique("oracle")).await;
    let s = TestServer::start_with_bot_edited(Db::Sqlite, &bot, |t| {
        t.replace(
            "empty_timeout_secs = 30",
            "empty_timeout_secs = 30\n        direct_dispatch_fallback_ms = 300",
        )
    })
    .await;
    let key = agent_key(&s).await;
    let waiter = waiting_agent(&s, &key, 15_000);
    until_waiting(&s, 1).await;
    let (st, body, call) = place_call(&s, &bot).await;
    assert_eq!(st, 200, "{body}");
    assert_eq!(waiter.await.unwrap().0, 200);
    assert!(dispatches(&s, call.room_name()).await.is_empty());
    // The agent never joins: after the fallback wait LiveKit is asked.
    let t0 = Instant::now();
    while dispatches(&s, call.room_name()).await.is_empty() {
        assert!(
            t0.elapsed() < Duration::from_secs(5),
            "no fallback dispatch"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(
        metric(&s, "oracle_calls_agent_dispatches_total{path=\"fallback\"}").await,
        1.0
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_a_waiting_agent_or_with_the_setting_off_livekit_dispatches() {
    let bot = MatrixUser::new(&unique("oracle")).await;
    // Nobody waits: LiveKit's dispatch, as before.
    let s = TestServer::start_with_bot(Db::Sqlite, &bot).await;
    let (st, body, call) = place_call(&s, &bot).await;
    assert_eq!(st, 200, "{body}");
    assert_eq!(
        dispatches(&s, call.room_name()).await,
        vec![s.state.config().oracle.agent_name.clone()]
    );
    drop(s);

    // Off: a waiting agent is handed nothing, LiveKit dispatches.
    let s = TestServer::start_with_bot_edited(Db::Sqlite, &bot, |t| {
        t.replace(
            "empty_timeout_secs = 30",
            "empty_timeout_secs = 30\n        direct_dispatch = false",
        )
    })
    .await;
    let key = agent_key(&s).await;
    let waiter = waiting_agent(&s, &key, 3_000);
    until_waiting(&s, 1).await;
    let (st, body, call) = place_call(&s, &bot).await;
    assert_eq!(st, 200, "{body}");
    assert_eq!(
        dispatches(&s, call.room_name()).await,
        vec![s.state.config().oracle.agent_name.clone()]
    );
    let (st, body) = waiter.await.unwrap();
    assert_eq!(st, 204, "handed nothing: {body}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn only_this_oracles_agents_may_wait_and_bad_requests_are_refused() {
    let bot = MatrixUser::new(&unique("oracle")).await;
    let s = TestServer::start_with_bot(Db::Sqlite, &bot).await;
    let key = agent_key(&s).await;
    // A short wait with nothing to hand out: 204 at its end, not before.
    let t0 = Instant::now();
    let (st, _) = wait_for_job(&s, &key, 200).await;
    assert_eq!(st, 204);
    assert!(
        t0.elapsed() >= Duration::from_millis(190),
        "{:?}",
        t0.elapsed()
    );
    // A user's token is no API key: refused before anything waits.
    let user = UserSide::new().await;
    let token = user.user.openid_token().await;
    let (st, body) = wait_for_job(&s, &token, 100).await;
    assert_eq!(
        (st, body["error"]["code"].as_str()),
        (401, Some("unauthorized")),
        "{body}"
    );
    // An agent key of another oracle.
    let other = apikey::create(
        s.store(),
        &s.pepper,
        oracle_calls_proto::Did::parse(&unique("did:ixo:other")).unwrap(),
        "x",
        now_ms(),
    )
    .await
    .unwrap();
    let (st, body) = wait_for_job(&s, other.key.dangerous_expose(), 100).await;
    assert_eq!(
        (st, body["error"]["code"].as_str()),
        (403, Some("forbidden")),
        "{body}"
    );
    // No key, a malformed body, an unknown job.
    let r = reqwest::Client::new()
        .post(s.url("/agent/jobs/next"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 401);
    let (st, body) = answer(
        reqwest::Client::new()
            .post(s.url("/agent/jobs/next"))
            .bearer_auth(&key)
            .header("content-type", "application/json")
            .body("{\"waitMs\": \"soon\"}")
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(
        (st, body["error"]["code"].as_str()),
        (400, Some("bad_request")),
        "{body}"
    );
    let (st, _) = decline(&s, &key, "DJ_000000000000000000000000").await;
    assert_eq!(st, 404);
    assert_eq!(s.state.direct().waiting(), 0, "nothing left waiting");
}

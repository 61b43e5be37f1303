//! The server when its neighbours fail or it restarts: Matrix down during an update, LiveKit
//! down at sync, a restart in the middle of calls. Real Synapse and LiveKit, reached through
//! a [`Gate`] the test closes and opens.

use std::time::{Duration, Instant};

use matrix_sdk::Room;
use matrix_sdk::config::SyncSettings;
use matrix_sdk::room::{IncludeRelations, RelationsOptions};
use matrix_sdk::ruma::api::Direction;
use matrix_sdk::ruma::events::relation::RelationType;
use matrix_sdk::ruma::{OwnedUserId, UserId};
use oracle_calls_proto::{CallId, CallStatus};
use serde_json::{Value, json};

use crate::matrix::{UserSide, now_ms, sync_call, ts_text};
use crate::support::{
    Db, Gate, MatrixUser, Restartable, TestServer, answer, both_backends, metric, room_name,
    stack_var, unique,
};

/// The `callStatus` of every `m.replace` edit of `event` that `sender` wrote, newest first, as
/// the user's own device decrypts them (it syncs first, for the room keys). An edit the device
/// cannot decrypt shows as `undecryptable`.
async fn edits_seen_by_user(
    user: &UserSide,
    room: &Room,
    event: &str,
    sender: &str,
) -> Vec<String> {
    user.client
        .sync_once(SyncSettings::default().timeout(Duration::ZERO))
        .await
        .unwrap();
    let opts = RelationsOptions {
        dir: Direction::Backward,
        include_relations: IncludeRelations::RelationsOfType(RelationType::Replacement),
        ..Default::default()
    };
    let rel = room
        .relations(event.try_into().unwrap(), opts)
        .await
        .unwrap();
    rel.chunk
        .iter()
        .filter_map(|ev| {
            let v: Value = ev.raw().deserialize_as().ok()?;
            (v["sender"] == sender).then(|| {
                v.pointer("/content/m.new_content/callStatus")
                    .and_then(Value::as_str)
                    .unwrap_or("undecryptable")
                    .to_owned()
            })
        })
        .collect()
}

/// Polls `edits_seen_by_user` until the newest edit by `sender` says `status`.
async fn wait_for_edit(user: &UserSide, room: &Room, event: &str, sender: &str, status: &str) {
    let deadline = Instant::now() + Duration::from_secs(30);
    let mut seen = Vec::new();
    while Instant::now() < deadline {
        seen = edits_seen_by_user(user, room, event, sender).await;
        if seen.first().is_some_and(|s| s == status) {
            return;
        }
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    panic!("no {status} edit by {sender} readable by the user within 30 s; saw {seen:?}");
}

async fn wait_for_metric(s: &TestServer, name: &str, at_least: f64, within: Duration) -> f64 {
    let deadline = Instant::now() + within;
    loop {
        let v = metric(s, name).await;
        if v >= at_least || Instant::now() >= deadline {
            return v;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

async fn update(s: &TestServer, bearer: &str, id: &CallId, body: Value) -> (u16, Value) {
    answer(
        reqwest::Client::new()
            .post(s.url(&format!("/calls/{}/update", id.to_path_segment())))
            .bearer_auth(bearer)
            .json(&body)
            .send()
            .await
            .unwrap(),
    )
    .await
}

/// A user's call, synced: `(room, event id, call id)`.
async fn synced_call(
    s: &TestServer,
    alice: &UserSide,
    room: &Room,
    token: &str,
) -> (String, CallId) {
    let lk_room = room_name();
    let ev = alice
        .send(room, &alice.content(s.oracle.as_str(), &lk_room, now_ms()))
        .await;
    let call_id = format!("{ev}@{lk_room}");
    let (st, body) = sync_call(s, token, &call_id).await;
    assert_eq!(st, 200, "{body}");
    (ev, CallId::parse(&call_id).unwrap())
}

async fn matrix_down_during_an_update(db: Db) {
    let synapse = Gate::start(&stack_var("MATRIX_URL")).await;
    let oracle_user = MatrixUser::new(&unique("oracle")).await;
    let s = TestServer::start_with_bot_edited(db, &oracle_user, |toml| {
        toml.replace(
            &format!("homeserver_url = \"{}\"", stack_var("MATRIX_URL")),
            &format!(
                "homeserver_url = \"{}\"\nmirror_retry_secs = 2",
                synapse.url
            ),
        )
    })
    .await;
    let bot: OwnedUserId = UserId::parse(oracle_user.user_id.as_str()).unwrap();
    let alice = UserSide::new().await;
    let room = alice.room_with(&bot, true).await;
    let token = alice.user.openid_token().await;
    let (ev, id) = synced_call(&s, &alice, &room, &token).await;

    // The bot's `active` edit reaches Matrix and the user's own device can decrypt it.
    wait_for_edit(&alice, &room, &ev, bot.as_str(), "active").await;

    // The homeserver goes away; the user ends the call through the API (without `userHangup`,
    // whose edit is left to the user's client: `hangup_edit_left_to_user` below).
    synapse.close();
    let (st, body) = update(&s, &token, &id, json!({"callStatus": "ended"})).await;
    assert_eq!(
        (st, body["callStatus"].as_str()),
        (200, Some("ended")),
        "{body}"
    );
    assert_eq!(
        s.store().call(&id).await.unwrap().unwrap().status,
        CallStatus::Ended,
        "the store, the API's truth, has the change at once"
    );
    // The edit is retried, then reported: a failed write in /metrics and a backlog of one.
    let failed = wait_for_metric(
        &s,
        "oracle_calls_matrix_writes_total{outcome=\"failed\"}",
        1.0,
        Duration::from_secs(30),
    )
    .await;
    assert!(failed >= 1.0, "the failed Matrix write is reported");
    assert!(
        metric(&s, "oracle_calls_matrix_writes_total{outcome=\"retry\"}").await >= 4.0,
        "it was retried before it was reported"
    );
    let backlog = wait_for_metric(
        &s,
        "oracle_calls_matrix_unmirrored_calls",
        1.0,
        Duration::from_secs(10),
    )
    .await;
    assert_eq!(
        backlog, 1.0,
        "the backlog names the one call Matrix does not show"
    );
    // The API goes on answering meanwhile.
    let (st, _) = answer(
        reqwest::Client::new()
            .get(s.url("/healthz"))
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(st, 200);

    // The homeserver comes back: the bot writes the missed edit, once, and the backlog empties.
    synapse.open();
    wait_for_edit(&alice, &room, &ev, bot.as_str(), "ended").await;
    let deadline = Instant::now() + Duration::from_secs(15);
    while metric(&s, "oracle_calls_matrix_unmirrored_calls").await > 0.0
        && Instant::now() < deadline
    {
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    assert_eq!(
        metric(&s, "oracle_calls_matrix_unmirrored_calls").await,
        0.0
    );
    let edits = edits_seen_by_user(&alice, &room, &ev, bot.as_str()).await;
    assert_eq!(
        edits.iter().filter(|s| *s == "ended").count(),
        1,
        "one logical write, one edit, however many tries: {edits:?}"
    );
}
both_backends!(matrix_down, matrix_down_during_an_update);

/// The user's own `ended` edit of `call` (PROTOCOL §2), as a client writes it after hanging up.
async fn user_ends_in_matrix(
    s: &TestServer,
    alice: &UserSide,
    room: &Room,
    ev: &str,
    call: &CallId,
) {
    let mut ended = alice.content(s.oracle.as_str(), call.room_name().as_str(), now_ms());
    ended["callStatus"] = json!("ended");
    ended["callId"] = json!(call.as_str());
    ended["callEndedAt"] = json!(ts_text(now_ms()));
    let mut edit = ended.clone();
    edit["m.new_content"] = ended;
    edit["m.relates_to"] = json!({"rel_type": "m.replace", "event_id": ev});
    room.send_raw("m.ixo.oracles_call", &edit).await.unwrap();
}

/// A user's hang-up (`update` ended / userHangup) is followed by the user's own `ended` edit
/// (PROTOCOL §10), so the bot does not repeat it: once the user's edit is there, the bot
/// writes none, even after its backlog ran. A client that reports the hang-up and never
/// writes its edit still gets the call marked ended in Matrix: the backlog writes the bot's,
/// once. With `leave_hangup_edit_to_user = false`, the bot writes it at once.
async fn hangup_edit_left_to_user(db: Db) {
    let oracle_user = MatrixUser::new(&unique("oracle")).await;
    let s = TestServer::start_with_bot_edited(db, &oracle_user, |toml| {
        toml.replace(
            "openid_cache_secs = 60",
            "openid_cache_secs = 60\nmirror_retry_secs = 3",
        )
    })
    .await;
    let bot: OwnedUserId = UserId::parse(oracle_user.user_id.as_str()).unwrap();
    let alice = UserSide::new().await;
    let room = alice.room_with(&bot, true).await;
    let token = alice.user.openid_token().await;
    let hang_up = json!({"callStatus": "ended", "reason": "userHangup"});

    // 1. The user hangs up and writes its edit, as every client does.
    let (ev_a, a) = synced_call(&s, &alice, &room, &token).await;
    wait_for_edit(&alice, &room, &ev_a, bot.as_str(), "active").await;
    let (st, body) = update(&s, &token, &a, hang_up.clone()).await;
    assert_eq!(
        (st, body["callStatus"].as_str()),
        (200, Some("ended")),
        "{body}"
    );
    user_ends_in_matrix(&s, &alice, &room, &ev_a, &a).await;
    wait_for_edit(&alice, &room, &ev_a, alice.user.user_id.as_str(), "ended").await;
    // The bot's sync loop sees the user's edit and owes Matrix nothing.
    let deadline = Instant::now() + Duration::from_secs(15);
    while s.store().unmirrored_count(&s.oracle).await.unwrap() > 0 && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(s.store().unmirrored_count(&s.oracle).await.unwrap(), 0);
    assert!(
        metric(
            &s,
            "oracle_calls_matrix_writes_total{outcome=\"left_to_user\"}"
        )
        .await
            >= 1.0,
        "the left edit is counted"
    );

    // 2. Another user hangs up through the API and never writes its edit (a client that died).
    let (ev_b, b) = synced_call(&s, &alice, &room, &token).await;
    wait_for_edit(&alice, &room, &ev_b, bot.as_str(), "active").await;
    let (st, _) = update(&s, &token, &b, hang_up.clone()).await;
    assert_eq!(st, 200);
    let ended_at = Instant::now();
    wait_for_edit(&alice, &room, &ev_b, bot.as_str(), "ended").await;
    let waited = ended_at.elapsed();
    assert!(
        waited >= Duration::from_secs(3),
        "the bot's edit came from the backlog, after one period at least: {waited:?}"
    );

    // Several backlog periods later: still no bot edit of the first call beyond `active`, and
    // one of the second.
    tokio::time::sleep(Duration::from_secs(7)).await;
    assert_eq!(
        edits_seen_by_user(&alice, &room, &ev_a, bot.as_str()).await,
        ["active"],
        "the bot repeated the user's ended edit"
    );
    assert_eq!(
        edits_seen_by_user(&alice, &room, &ev_b, bot.as_str()).await,
        ["ended", "active"]
    );
    assert_eq!(s.store().unmirrored_count(&s.oracle).await.unwrap(), 0);
    s.state.matrix().unwrap().stop();

    // 3. Turned off: the bot's edit is written at once, long before the first backlog period.
    let oracle_user = MatrixUser::new(&unique("oracle")).await;
    let s = TestServer::start_with_bot_edited(db, &oracle_user, |toml| {
        toml.replace(
            "openid_cache_secs = 60",
            "openid_cache_secs = 60\nmirror_retry_secs = 60\nleave_hangup_edit_to_user = false",
        )
    })
    .await;
    let bot: OwnedUserId = UserId::parse(oracle_user.user_id.as_str()).unwrap();
    let room = alice.room_with(&bot, true).await;
    let (ev_c, c) = synced_call(&s, &alice, &room, &token).await;
    wait_for_edit(&alice, &room, &ev_c, bot.as_str(), "active").await;
    let (st, _) = update(&s, &token, &c, hang_up).await;
    assert_eq!(st, 200);
    let ended_at = Instant::now();
    wait_for_edit(&alice, &room, &ev_c, bot.as_str(), "ended").await;
    assert!(
        ended_at.elapsed() < Duration::from_secs(30),
        "written at once, not by the 60 s backlog: {:?}",
        ended_at.elapsed()
    );
    s.state.matrix().unwrap().stop();
}
both_backends!(hangup_edit, hangup_edit_left_to_user);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn livekit_down_at_sync_is_a_503_and_the_call_waits() {
    let livekit = Gate::start(&stack_var("LIVEKIT_HTTP_URL")).await;
    let oracle_user = MatrixUser::new(&unique("oracle")).await;
    let s = TestServer::start_with_bot_edited(Db::Sqlite, &oracle_user, |toml| {
        toml.replace(
            &format!("http_url = \"{}\"", stack_var("LIVEKIT_HTTP_URL")),
            &format!("http_url = \"{}\"", livekit.url),
        )
    })
    .await;
    let bot: OwnedUserId = UserId::parse(oracle_user.user_id.as_str()).unwrap();
    let alice = UserSide::new().await;
    let room = alice.room_with(&bot, true).await;
    let token = alice.user.openid_token().await;

    livekit.close();
    let lk_room = room_name();
    let ev = alice
        .send(&room, &alice.content(s.oracle.as_str(), &lk_room, now_ms()))
        .await;
    let call_id = format!("{ev}@{lk_room}");
    let (st, body) = sync_call(&s, &token, &call_id).await;
    assert_eq!(st, 503, "{body}");
    assert_eq!(body["error"]["code"], "unavailable", "{body}");
    assert!(
        body["error"]["message"]
            .as_str()
            .unwrap()
            .contains("LiveKit"),
        "the message names LiveKit: {body}"
    );
    let id = CallId::parse(&call_id).unwrap();
    let rec = s.store().call(&id).await.unwrap().unwrap();
    assert_eq!(
        rec.status,
        CallStatus::Pending,
        "no room, so not active: the user may sync again"
    );

    // LiveKit is back: the same sync now starts the call.
    livekit.open();
    let (st, body) = sync_call(&s, &token, &call_id).await;
    assert_eq!(
        (st, body["status"].as_str()),
        (200, Some("active")),
        "{body}"
    );
    assert!(
        s.state
            .livekit()
            .list_rooms()
            .await
            .unwrap()
            .contains(&lk_room)
    );
}

/// Stops a served state the way the process does on SIGTERM, and waits until its Matrix
/// device store is free again.
async fn stop(s: TestServer) {
    let bot = s.state.matrix().unwrap().clone();
    drop(s);
    bot.stop();
    drop(bot);
    tokio::time::sleep(Duration::from_millis(800)).await;
}

async fn restart_mid_call(db: Db) {
    let r = Restartable::new(db).await;
    let (oracle, oracle_user, config) = (&r.oracle, &r.bot, &r.config);
    let s = r.serve(true).await;
    let key = oracle_calls_server::apikey::create(
        s.store(),
        &s.pepper,
        oracle.clone(),
        "agent",
        now_ms(),
    )
    .await
    .unwrap();
    let bot: OwnedUserId = UserId::parse(oracle_user.user_id.as_str()).unwrap();
    let alice = UserSide::new().await;
    let room = alice.room_with(&bot, true).await;
    let token = alice.user.openid_token().await;
    // Two live calls: one goes on across the restart, one the user ends while the server is
    // down (in Matrix only, the way a client without the server does).
    let (_ev_a, a) = synced_call(&s, &alice, &room, &token).await;
    let (ev_b, b) = synced_call(&s, &alice, &room, &token).await;
    wait_for_edit(&alice, &room, &ev_b, bot.as_str(), "active").await;
    stop(s).await;

    let rec = {
        let store =
            oracle_calls_server::store::Store::connect(config.database_url().dangerous_expose())
                .await
                .unwrap();
        store.call(&b).await.unwrap().unwrap()
    };
    let edit = oracle_calls_proto::OraclesCallEdit::new(
        b.event_id().clone(),
        rec.content
            .with_status(b.clone(), CallStatus::Ended, oracle_calls_server::now())
            .unwrap(),
    );
    room.send_raw("m.ixo.oracles_call", serde_json::to_value(&edit).unwrap())
        .await
        .unwrap();

    // Restart on the same data (no password: the saved session is the only way in).
    let s = r.serve(false).await;

    // The call that went on is still served: its key to the agent, the user's status.
    let (st, k) = answer(
        reqwest::Client::new()
            .get(s.url(&format!("/calls/{}/key", a.to_path_segment())))
            .bearer_auth(key.key.dangerous_expose())
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(st, 200, "{k}");
    assert_eq!(
        s.store().call(&a).await.unwrap().unwrap().status,
        CallStatus::Active
    );
    // The sync loop resumed from its stored token and saw the edit made while it was down.
    let deadline = Instant::now() + Duration::from_secs(20);
    while s.store().call(&b).await.unwrap().unwrap().status != CallStatus::Ended {
        assert!(
            Instant::now() < deadline,
            "the edit sent during the restart was not picked up"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let (st, _) = answer(
        reqwest::Client::new()
            .get(s.url(&format!("/calls/{}/key", b.to_path_segment())))
            .bearer_auth(key.key.dangerous_expose())
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(st, 410, "the call ended during the restart gives no key");
    // The surviving call can still be ended through the restarted server.
    let (st, body) = update(&s, &token, &a, json!({"callStatus": "ended"})).await;
    assert_eq!(
        (st, body["callStatus"].as_str()),
        (200, Some("ended")),
        "{body}"
    );
    stop(s).await;
}
both_backends!(restart, restart_mid_call);

/// A lost database is rebuilt from Matrix by the bot device: calls with the status their
/// edits reached, events that fail the checks counted by reason, and a second run changes
/// nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_store_is_rebuilt_from_matrix() {
    use oracle_calls_server::reindex;

    let r = Restartable::new(Db::Sqlite).await;
    let (oracle, oracle_user, dir) = (&r.oracle, &r.bot, &r.dir);
    let s = r.serve(true).await;
    let bot: OwnedUserId = UserId::parse(oracle_user.user_id.as_str()).unwrap();
    let alice = UserSide::new().await;
    let room = alice.room_with(&bot, true).await;
    let token = alice.user.openid_token().await;
    let (ev_a, a) = synced_call(&s, &alice, &room, &token).await;
    let (ev_b, b) = synced_call(&s, &alice, &room, &token).await;
    let (st, _) = update(&s, &token, &a, json!({"callStatus": "ended"})).await;
    assert_eq!(st, 200);
    wait_for_edit(&alice, &room, &ev_a, bot.as_str(), "ended").await;
    wait_for_edit(&alice, &room, &ev_b, bot.as_str(), "active").await;
    // A call event for another oracle, never synced: the rebuild must not take it.
    alice
        .send(
            &room,
            &alice.content("did:ixo:someone-else", &room_name(), now_ms()),
        )
        .await;
    let before_a = s.store().call(&a).await.unwrap().unwrap();
    let before_b = s.store().call(&b).await.unwrap().unwrap();
    stop(s).await;

    // The database is lost; the bot's device store (data_dir/matrix) is not.
    for suffix in ["", "-wal", "-shm"] {
        let _ = std::fs::remove_file(dir.0.join(format!("calls.sqlite3{suffix}")));
    }
    let state = r.state(true).await;
    assert!(state.store().call(&a).await.unwrap().is_none());
    let report = reindex(&state).await.unwrap();
    assert_eq!((report.added, report.advanced), (2, 0), "{report:?}");
    assert_eq!(
        report.skipped.get("oracleDid is not this oracle"),
        Some(&1),
        "{report:?}"
    );
    let after_a = state.store().call(&a).await.unwrap().unwrap();
    let after_b = state.store().call(&b).await.unwrap().unwrap();
    assert_eq!(
        (after_a.status, after_b.status),
        (CallStatus::Ended, CallStatus::Active)
    );
    assert_eq!(
        after_a.content, before_a.content,
        "the event's content, as synced"
    );
    assert_eq!(after_b.content, before_b.content);
    assert_eq!(after_a.sender, before_a.sender);
    assert!(
        after_a.call_ended_at.is_some(),
        "the end time comes from the edit"
    );
    assert_eq!(
        state.store().unmirrored_count(oracle).await.unwrap(),
        0,
        "what was read from Matrix is not written back to it"
    );
    // Idempotent.
    let again = reindex(&state).await.unwrap();
    assert_eq!(
        (again.added, again.advanced, again.unchanged),
        (0, 0, 2),
        "{again:?}"
    );
    let s = TestServer::serve_state(
        state,
        r.secrets.api_key_pepper.clone(),
        crate::support::not_owned(),
    )
    .await;
    stop(s).await;
}

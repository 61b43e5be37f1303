//! Phase C: the oracle's bot device and `POST /calls/{callId}/sync` with real Synapse users.

use std::time::Duration;

use matrix_sdk::config::SyncSettings;
use matrix_sdk::ruma::api::client::room::create_room::v3::{Request as CreateRoom, RoomPreset};
use matrix_sdk::ruma::events::InitialStateEvent;
use matrix_sdk::ruma::events::room::encryption::RoomEncryptionEventContent;
use matrix_sdk::ruma::{OwnedUserId, UserId};
use matrix_sdk::{Client, Room};
use oracle_calls_proto::CallStatus;
use serde_json::{Value, json};

use crate::support::{
    Db, MatrixUser, TempDir, TestServer, answer, both_backends, room_name, stack_var, temp_dir,
    unique,
};

/// The user's side: a matrix-sdk client with its own device.
pub(crate) struct UserSide {
    pub(crate) user: MatrixUser,
    pub(crate) did: String,
    pub(crate) client: Client,
    _dir: TempDir,
}

impl UserSide {
    pub(crate) async fn new() -> Self {
        let id = unique("u");
        let user = MatrixUser::new(&format!("did-ixo-{id}")).await;
        let dir = temp_dir();
        let client = Client::builder()
            .homeserver_url(stack_var("MATRIX_URL"))
            .sqlite_store(&dir.0, None)
            .with_enable_share_history_on_invite(false)
            .build()
            .await
            .unwrap();
        client
            .matrix_auth()
            .login_username(&user.user_id, &user.password)
            .send()
            .await
            .unwrap();
        client
            .sync_once(SyncSettings::default().timeout(Duration::ZERO))
            .await
            .unwrap();
        Self {
            user,
            did: format!("did:ixo:{id}"),
            client,
            _dir: dir,
        }
    }

    /// A DM with the bot (encrypted or not), returned once the bot has joined.
    pub(crate) async fn room_with(&self, bot: &UserId, encrypted: bool) -> Room {
        let mut req = CreateRoom::new();
        req.invite = vec![bot.to_owned()];
        req.is_direct = true;
        req.preset = Some(RoomPreset::PrivateChat);
        if encrypted {
            req.initial_state = vec![
                InitialStateEvent::with_empty_state_key(
                    RoomEncryptionEventContent::with_recommended_defaults(),
                )
                .to_raw_any(),
            ];
        }
        let room = self.client.create_room(req).await.unwrap();
        let url = format!(
            "{}/_matrix/client/v3/rooms/{}/joined_members",
            stack_var("MATRIX_URL"),
            room.room_id()
        );
        for _ in 0..60 {
            let members: Value = reqwest::Client::new()
                .get(&url)
                .bearer_auth(&self.user.access_token)
                .send()
                .await
                .unwrap()
                .json()
                .await
                .unwrap();
            if members["joined"].get(bot.as_str()).is_some() {
                // Let this device see the join before it encrypts to the bot's devices.
                self.client
                    .sync_once(SyncSettings::default().timeout(Duration::ZERO))
                    .await
                    .unwrap();
                return room;
            }
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
        panic!("the oracle's bot did not join within 15 s");
    }

    pub(crate) fn content(&self, oracle: &str, room_name: &str, started_ms: i64) -> Value {
        json!({
            "callType": "audio", "callStatus": "pending", "callStartedAt": ts_text(started_ms),
            "encryptionKey": "v1.hpke-p256.QUJD", "sessionId": unique("sess-"),
            "roomId": room_name, "userDid": self.did, "oracleDid": oracle,
            "keyDerivation": "hkdf",
        })
    }

    pub(crate) async fn send(&self, room: &Room, content: &Value) -> String {
        room.send_raw("m.ixo.oracles_call", content)
            .await
            .unwrap()
            .response
            .event_id
            .to_string()
    }
}

pub(crate) fn ts_text(ms: i64) -> String {
    oracle_calls_proto::Timestamp::from_unix_millis(ms)
        .unwrap()
        .to_string()
}

pub(crate) fn now_ms() -> i64 {
    oracle_calls_server::now().unix_millis()
}

pub(crate) async fn sync_call(s: &TestServer, token: &str, call_id: &str) -> (u16, Value) {
    let seg = oracle_calls_proto::CallId::parse(call_id)
        .map(|c| c.to_path_segment())
        .unwrap_or(call_id.to_owned());
    answer(
        reqwest::Client::new()
            .post(s.url(&format!("/calls/{seg}/sync")))
            .bearer_auth(token)
            .json(&json!({}))
            .send()
            .await
            .unwrap(),
    )
    .await
}

async fn sync_validates_and_activates(db: Db) {
    let oracle_user = MatrixUser::new(&unique("oracle")).await;
    let s = TestServer::start_with_bot(db, &oracle_user).await;
    let bot: OwnedUserId = UserId::parse(oracle_user.user_id.as_str()).unwrap();
    let oracle = s.oracle.as_str().to_owned();
    let alice = UserSide::new().await;
    let room = alice.room_with(&bot, true).await;
    let token = alice.user.openid_token().await;

    // The good call.
    let lk_room = room_name();
    let ev = alice
        .send(&room, &alice.content(&oracle, &lk_room, now_ms()))
        .await;
    let call_id = format!("{ev}@{lk_room}");
    let (st, body) = sync_call(&s, &token, &call_id).await;
    assert_eq!(st, 200, "{body}");
    assert_eq!(
        (body["callId"].as_str(), body["status"].as_str()),
        (Some(call_id.as_str()), Some("active"))
    );
    assert_eq!(body["livekitUrl"], stack_var("LIVEKIT_URL"));
    let r = reqwest::Client::new()
        .get(format!("{}/rtc/validate", stack_var("LIVEKIT_HTTP_URL")))
        .query(&[("access_token", body["token"].as_str().unwrap())])
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 200, "LiveKit accepts the join token");
    assert!(
        s.state
            .livekit()
            .list_rooms()
            .await
            .unwrap()
            .contains(&lk_room)
    );
    let id = oracle_calls_proto::CallId::parse(&call_id).unwrap();
    let stored = s.store().call(&id).await.unwrap().unwrap();
    assert_eq!(
        (stored.status, stored.sender.as_str()),
        (CallStatus::Active, alice.user.user_id.as_str())
    );

    // Repeating the sync answers the same and writes nothing.
    let (st, again) = sync_call(&s, &token, &call_id).await;
    assert_eq!(
        (st, &again["callId"], &again["status"]),
        (200, &body["callId"], &body["status"])
    );
    assert_eq!(s.store().call(&id).await.unwrap().unwrap(), stored);

    // The oracle's agent fetches the still-wrapped key with its API key.
    let key = oracle_calls_server::apikey::create(
        s.store(),
        &s.pepper,
        s.oracle.clone(),
        "agent",
        now_ms(),
    )
    .await
    .unwrap();
    let (st, k) = answer(
        reqwest::Client::new()
            .get(s.url(&format!("/calls/{}/key", id.to_path_segment())))
            .bearer_auth(key.key.dangerous_expose())
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(
        (st, k["encryptionKey"].as_str(), k["userDid"].as_str()),
        (200, Some("v1.hpke-p256.QUJD"), Some(alice.did.as_str()))
    );

    // The bot edited the event to active (one edit, encrypted, by the bot). The edit is sent
    // off the request path, so it may land a moment after the answer.
    let mut rel = Value::Null;
    for _ in 0..50 {
        rel = reqwest::Client::new()
            .get(format!(
                "{}/_matrix/client/v1/rooms/{}/relations/{}/m.replace",
                stack_var("MATRIX_URL"),
                room.room_id(),
                ev
            ))
            .bearer_auth(&alice.user.access_token)
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        if rel["chunk"].as_array().is_some_and(|c| !c.is_empty()) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let edits = rel["chunk"].as_array().unwrap();
    assert_eq!(edits.len(), 1, "{rel}");
    assert_eq!(
        (edits[0]["sender"].as_str(), edits[0]["type"].as_str()),
        (Some(bot.as_str()), Some("m.room.encrypted"))
    );

    // Another user cannot take the call over.
    let mallory = UserSide::new().await;
    let (st, _) = sync_call(&s, &mallory.user.openid_token().await, &call_id).await;
    assert_eq!(st, 403);

    // Rejections, each naming its check.
    let check = |content: Value, want: &'static str, lk: String| {
        let (alice, room, s, token) = (&alice, &room, &s, &token);
        async move {
            let ev = alice.send(room, &content).await;
            let (st, b) = sync_call(s, token, &format!("{ev}@{lk}")).await;
            assert_rejected(st, &b, want);
        }
    };
    let lk = room_name();
    check(
        alice.content("did:ixo:someoneelse", &lk, now_ms()),
        "oracleDid",
        lk,
    )
    .await;
    let lk = room_name();
    check(
        alice.content(&oracle, &lk, now_ms() - 3_600_000),
        "callStartedAt",
        lk,
    )
    .await;
    let lk = room_name();
    check(alice.content(&oracle, &room_name(), now_ms()), "roomId", lk).await;
    let lk = room_name();
    let mut forged = alice.content(&oracle, &lk, now_ms());
    forged["userDid"] = json!("did:ixo:victim");
    check(forged, "not bound to userDid", lk).await;
    let lk = room_name();
    let mut active = alice.content(&oracle, &lk, now_ms());
    active["callStatus"] = json!("active");
    check(active, "not pending", lk).await;

    // A plaintext call event in the encrypted room (Synapse accepts it).
    let lk = room_name();
    let plain: Value = reqwest::Client::new()
        .put(format!(
            "{}/_matrix/client/v3/rooms/{}/send/m.ixo.oracles_call/{}",
            stack_var("MATRIX_URL"),
            room.room_id(),
            unique("txn")
        ))
        .bearer_auth(&alice.user.access_token)
        .json(&alice.content(&oracle, &lk, now_ms()))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let (st, b) = sync_call(
        &s,
        &token,
        &format!("{}@{lk}", plain["event_id"].as_str().unwrap()),
    )
    .await;
    assert_rejected(st, &b, "plaintext");

    // A call event in an unencrypted room.
    let open_room = alice.room_with(&bot, false).await;
    let lk = room_name();
    let ev = alice
        .send(&open_room, &alice.content(&oracle, &lk, now_ms()))
        .await;
    let (st, b) = sync_call(&s, &token, &format!("{ev}@{lk}")).await;
    assert_rejected(st, &b, "not encrypted");

    // Unknown event: 404. None of the rejected events was stored.
    let (st, _) = sync_call(&s, &token, &format!("$nosuchevent@{}", room_name())).await;
    assert_eq!(st, 404);
    let (_, list) = answer(
        reqwest::Client::new()
            .get(s.url("/calls"))
            .bearer_auth(&token)
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(list["calls"].as_array().unwrap().len(), 1, "{list}");

    // The user ends the call with an m.replace edit in Matrix: the sync loop ends it here.
    let mut ended = alice.content(&oracle, &lk_room, now_ms());
    ended["callStatus"] = json!("ended");
    ended["callId"] = json!(call_id);
    ended["callEndedAt"] = json!(ts_text(now_ms()));
    let mut edit = ended.clone();
    edit["m.new_content"] = ended;
    edit["m.relates_to"] = json!({"rel_type": "m.replace", "event_id": ev_of(&call_id)});
    room.send_raw("m.ixo.oracles_call", &edit).await.unwrap();
    let mut status = CallStatus::Active;
    for _ in 0..100 {
        status = s.store().call(&id).await.unwrap().unwrap().status;
        if status == CallStatus::Ended {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(
        status,
        CallStatus::Ended,
        "the bot's sync loop did not apply the user's edit"
    );
    let (st, _) = sync_call(&s, &token, &call_id).await;
    assert_eq!(st, 410);
}
both_backends!(
    sync_validates_events_and_activates_calls,
    sync_validates_and_activates
);

fn ev_of(call_id: &str) -> String {
    call_id.rsplit_once('@').unwrap().0.to_owned()
}

/// A restart keeps the bot's device (restored session, no password needed) and the calls.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn restart_restores_the_bot_device_and_keeps_calls() {
    let r = crate::support::Restartable::new(Db::Sqlite).await;
    let oracle = &r.oracle;
    let first = r.state(true).await;
    let bot = first.matrix().unwrap();
    let device = bot.client().device_id().unwrap().to_owned();
    let s = TestServer::wrap(first.clone());
    let id = s.seed_call("@u:localhost", "s", oracle).await;
    bot.stop();
    drop(s);
    drop(first);
    tokio::time::sleep(Duration::from_millis(500)).await;

    // No password this time: only the saved session can log the bot in.
    let second = r.state(false).await;
    let bot = second.matrix().unwrap();
    assert_eq!(
        bot.client().device_id().unwrap(),
        &*device,
        "a restart must not create a new device"
    );
    assert!(second.store().call(&id).await.unwrap().is_some());
    bot.stop();
}

/// A sync refused with 422 whose message names the failed check.
fn assert_rejected(status: u16, body: &Value, check: &str) {
    assert_eq!(status, 422, "{check}: {body}");
    let msg = body["error"]["message"].as_str().unwrap_or_default();
    assert!(msg.contains(check), "{check}: {body}");
}

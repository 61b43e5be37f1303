//! A LiveKit room belongs to one call (security review H2): nobody gets a token for, ends or
//! deletes a room by naming it in their own call event.

use matrix_sdk::ruma::{OwnedUserId, UserId};
use oracle_calls_proto::{CallId, CallStatus, RoomName};
use oracle_calls_server::apikey;
use serde_json::{Value, json};

use crate::matrix::{UserSide, now_ms, sync_call};
use crate::support::{
    Db, MatrixUser, TestServer, answer, both_backends, metadata, room_name, unique,
};

async fn key_status(s: &TestServer, key: &str, id: &CallId) -> (u16, Value) {
    answer(
        reqwest::Client::new()
            .get(s.url(&format!("/calls/{}/key", id.to_path_segment())))
            .bearer_auth(key)
            .send()
            .await
            .unwrap(),
    )
    .await
}

async fn update(s: &TestServer, bearer: &str, id: &str, body: Value) -> (u16, Value) {
    let seg = CallId::parse(id).unwrap().to_path_segment();
    answer(
        reqwest::Client::new()
            .post(s.url(&format!("/calls/{seg}/update")))
            .bearer_auth(bearer)
            .json(&body)
            .send()
            .await
            .unwrap(),
    )
    .await
}

async fn room_exists(s: &TestServer, room: &str) -> bool {
    s.state
        .livekit()
        .list_rooms()
        .await
        .unwrap()
        .iter()
        .any(|r| r == room)
}

async fn squatting(db: Db) {
    let oracle_user = MatrixUser::new(&unique("oracle")).await;
    let s = TestServer::start_with_bot(db, &oracle_user).await;
    let bot: OwnedUserId = UserId::parse(oracle_user.user_id.as_str()).unwrap();
    let oracle = s.oracle.as_str().to_owned();
    let agent_key = apikey::create(s.store(), &s.pepper, s.oracle.clone(), "agent", now_ms())
        .await
        .unwrap();
    let agent_key = agent_key.key.dangerous_expose().to_owned();

    // Alice's call is active in room R.
    let alice = UserSide::new().await;
    let a_room = alice.room_with(&bot, true).await;
    let a_token = alice.user.openid_token().await;
    let r = room_name();
    let ev = alice
        .send(&a_room, &alice.content(&oracle, &r, now_ms()))
        .await;
    let alice_call = format!("{ev}@{r}");
    let (st, body) = sync_call(&s, &a_token, &alice_call).await;
    assert_eq!(
        (st, body["status"].as_str()),
        (200, Some("active")),
        "{body}"
    );
    let alice_id = CallId::parse(&alice_call).unwrap();
    assert_eq!(
        metadata(&s, &r).await.as_deref(),
        Some(alice_call.as_str()),
        "the call's room exists and carries its call id"
    );

    // Mallory, another user of the oracle, sends a valid pending call event naming R.
    let mallory = UserSide::new().await;
    let m_room = mallory.room_with(&bot, true).await;
    let m_token = mallory.user.openid_token().await;
    let ev = mallory
        .send(&m_room, &mallory.content(&oracle, &r, now_ms()))
        .await;
    let mallory_call = format!("{ev}@{r}");
    let (st, body) = sync_call(&s, &m_token, &mallory_call).await;
    assert_eq!(
        (st, body["error"]["code"].as_str()),
        (409, Some("conflict")),
        "{body}"
    );
    assert!(
        body["error"]["message"]
            .as_str()
            .unwrap()
            .contains("another call"),
        "{body}"
    );
    assert!(body.get("token").is_none(), "no join token: {body}");
    let mallory_id = CallId::parse(&mallory_call).unwrap();
    assert!(
        s.store().call(&mallory_id).await.unwrap().is_none(),
        "nothing stored"
    );
    // With nothing stored, she cannot end "her" call and so delete the room either.
    let (st, _) = update(&s, &m_token, &mallory_call, json!({"callStatus": "ended"})).await;
    assert_eq!(st, 404);

    // Alice's call goes on: active, its room alive, its key served.
    let rec = s.store().call(&alice_id).await.unwrap().unwrap();
    assert_eq!(rec.status, CallStatus::Active);
    assert!(room_exists(&s, &r).await, "the LiveKit room still exists");
    let (st, k) = key_status(&s, &agent_key, &alice_id).await;
    assert_eq!(
        (st, k["userDid"].as_str()),
        (200, Some(alice.did.as_str())),
        "{k}"
    );

    // Rooms of the right shape that this server did not make (another oracle's server or
    // another app on the same LiveKit), one with metadata and one without (what LiveKit makes
    // when someone joins a room that does not exist): no token, and each is left as it was.
    let foreign = RoomName::parse(&room_name()).unwrap();
    let bare = RoomName::parse(&room_name()).unwrap();
    for (room, agent, kept) in [
        (
            &foreign,
            Some("someone-elses-agent"),
            "not-a-call-of-this-server",
        ),
        (&bare, None, ""),
    ] {
        s.state
            .livekit()
            .create_room(room, agent, kept)
            .await
            .unwrap();
        let ev = mallory
            .send(&m_room, &mallory.content(&oracle, room.as_str(), now_ms()))
            .await;
        let (st, body) = sync_call(&s, &m_token, &format!("{ev}@{room}")).await;
        assert_eq!(
            (st, body["error"]["code"].as_str()),
            (409, Some("conflict")),
            "{body}"
        );
        assert!(body.get("token").is_none(), "{body}");
        assert_eq!(
            metadata(&s, room.as_str()).await.as_deref(),
            Some(kept),
            "not taken over"
        );
    }

    // Ending a call deletes its own room only: Mallory's stored call in that foreign room
    // (it stays pending, never activated) ends without touching the room.
    let m_pending = s
        .seed_call_started(&mallory.user.user_id, "s", &s.oracle, now_ms())
        .await;
    let other_room = m_pending.room_name().clone();
    s.state
        .livekit()
        .create_room(&other_room, Some("someone-elses-agent"), "not-this-call")
        .await
        .unwrap();
    let (st, body) = update(
        &s,
        &m_token,
        m_pending.as_str(),
        json!({"callStatus": "ended"}),
    )
    .await;
    assert_eq!(
        (st, body["callStatus"].as_str()),
        (200, Some("ended")),
        "{body}"
    );
    assert!(
        room_exists(&s, other_room.as_str()).await,
        "a room this call did not make is not deleted"
    );

    // LiveKit loses Alice's room (its Redis came back empty) and a participant's rejoin makes
    // it again, with no metadata: Alice's repeated sync takes it back for her active call.
    s.state
        .livekit()
        .delete_room(alice_id.room_name())
        .await
        .unwrap();
    s.state
        .livekit()
        .create_room(alice_id.room_name(), None, "")
        .await
        .unwrap();
    let (st, body) = sync_call(&s, &a_token, &alice_call).await;
    assert_eq!(
        (st, body["status"].as_str()),
        (200, Some("active")),
        "{body}"
    );
    assert!(body["token"].as_str().is_some(), "{body}");
    assert_eq!(
        metadata(&s, &r).await.as_deref(),
        Some(alice_call.as_str()),
        "the call id is back on the room"
    );
    let d = s
        .state
        .livekit()
        .dispatches(alice_id.room_name())
        .await
        .unwrap();
    assert!(
        d.contains(&s.state.config().oracle.agent_name),
        "with no agent in the room, the oracle's agent is dispatched into it: {d:?}"
    );
    assert!(
        s.state
            .metrics()
            .render()
            .contains("oracle_calls_call_events_total{event=\"room_retaken\"} 1"),
        "counted"
    );

    // Alice hangs up: her own room goes.
    let (st, _) = update(&s, &a_token, &alice_call, json!({"callStatus": "ended"})).await;
    assert_eq!(st, 200);
    assert!(!room_exists(&s, &r).await, "the call's own room is deleted");
    for room in [&foreign, &other_room, &bare] {
        s.state.livekit().delete_room(room).await.unwrap();
    }
}
both_backends!(a_room_belongs_to_one_call, squatting);

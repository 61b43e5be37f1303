//! The early join (docs/PROTOCOL.md §6.9): a user claims its call's LiveKit room and gets a
//! token for it before the call event is synced; the sync adopts the room; nobody else gets
//! it; claims are capped per user and swept when no call took them.

use std::time::Duration;

use matrix_sdk::ruma::{OwnedUserId, UserId};
use oracle_calls_proto::{CallId, CallStatus, RoomName};
use serde_json::Value;

use crate::matrix::{UserSide, now_ms, sync_call};
use crate::support::{
    Db, MatrixUser, TestServer, answer, both_backends, metadata, room_name, stack_var, unique,
};

async fn claim(s: &TestServer, bearer: Option<&str>, room: &str) -> (u16, Value, Option<String>) {
    let mut req = reqwest::Client::new().post(s.url(&format!("/rooms/{room}/claim")));
    if let Some(b) = bearer {
        req = req.bearer_auth(b);
    }
    let resp = req.send().await.unwrap();
    let retry_after = resp
        .headers()
        .get("retry-after")
        .map(|v| v.to_str().unwrap().to_owned());
    let (st, body) = answer(resp).await;
    (st, body, retry_after)
}

async fn early_join(db: Db) {
    let oracle_user = MatrixUser::new(&unique("oracle")).await;
    let s = TestServer::start_with_bot_edited(db, &oracle_user, |t| {
        format!("{t}\n        room_claim_ttl_secs = 6\n        [limits]\n        max_open_room_claims = 2\n")
    })
    .await;
    let bot: OwnedUserId = UserId::parse(oracle_user.user_id.as_str()).unwrap();
    let oracle = s.oracle.as_str().to_owned();
    let alice = UserSide::new().await;
    let a_token = alice.user.openid_token().await;
    let a_id = alice.user.user_id.clone();
    // Both users and their DMs with the bot first: from Alice's first claim on, the claims'
    // 6 s lifetime runs (a loaded machine once spent more than 3 s making Mallory).
    let mallory = UserSide::new().await;
    let m_token = mallory.user.openid_token().await;
    let m_room = mallory.room_with(&bot, true).await;
    let a_room = alice.room_with(&bot, true).await;

    // Only a user, only a room name of the protocol's shape.
    let r = room_name();
    let (st, body, _) = claim(&s, None, &r).await;
    assert_eq!(st, 401, "{body}");
    let (st, body, _) = claim(&s, Some(&a_token), "not-a-room-name").await;
    assert_eq!(
        (st, body["error"]["code"].as_str()),
        (400, Some("bad_request")),
        "{body}"
    );

    // Alice claims R: a token for R, the room exists with her claim marker and no agent.
    let (st, c, _) = claim(&s, Some(&a_token), &r).await;
    assert_eq!(st, 200, "{c}");
    assert_eq!(c["roomId"].as_str(), Some(r.as_str()));
    assert_eq!(
        c["livekitUrl"].as_str(),
        Some(stack_var("LIVEKIT_URL").as_str())
    );
    let expires = c["claimExpiresAt"].as_str().unwrap().to_owned();
    assert_eq!(metadata(&s, &r).await, Some(format!("claim:{a_id}")));
    let room = RoomName::parse(&r).unwrap();
    // (LiveKit lists its automatic dispatch, agent name "", for workers registered without a
    // name, in a room made with no agent named; the oracle's agents register with its name.)
    let d = s.state.livekit().dispatches(&room).await.unwrap();
    assert!(
        d.iter().all(String::is_empty),
        "no named agent is dispatched into a claimed room: {d:?}"
    );
    let v = reqwest::Client::new()
        .get(format!("{}/rtc/validate", stack_var("LIVEKIT_HTTP_URL")))
        .query(&[("access_token", c["token"].as_str().unwrap())])
        .send()
        .await
        .unwrap();
    assert_eq!(v.status().as_u16(), 200, "LiveKit takes the claim's token");
    // A repeated claim answers the same claim.
    let (st, again, _) = claim(&s, Some(&a_token), &r).await;
    assert_eq!(
        (st, again["claimExpiresAt"].as_str()),
        (200, Some(expires.as_str())),
        "{again}"
    );

    // Mallory can neither claim R nor take it with a call event naming it.
    let (st, body, _) = claim(&s, Some(&m_token), &r).await;
    assert_eq!(
        (st, body["error"]["code"].as_str()),
        (409, Some("conflict")),
        "{body}"
    );
    let r2 = room_name();
    let (st, _, _) = claim(&s, Some(&a_token), &r2).await;
    assert_eq!(st, 200);
    let ev = mallory
        .send(&m_room, &mallory.content(&oracle, &r2, now_ms()))
        .await;
    let (st, body) = sync_call(&s, &m_token, &format!("{ev}@{r2}")).await;
    assert_eq!(
        (st, body["error"]["code"].as_str()),
        (409, Some("conflict")),
        "{body}"
    );
    assert!(body.get("token").is_none(), "{body}");
    assert_eq!(
        metadata(&s, &r2).await,
        Some(format!("claim:{a_id}")),
        "another user's call does not take the room"
    );

    // Two claims open: a third is refused until one lapses.
    let (st, body, retry) = claim(&s, Some(&a_token), &room_name()).await;
    assert_eq!(
        (st, body["error"]["code"].as_str()),
        (429, Some("rate_limited")),
        "{body}"
    );
    assert_eq!(
        retry.as_deref(),
        Some("6"),
        "Retry-After is the claim lifetime"
    );

    // Alice's call event names R: the sync adopts the room (its metadata becomes the call
    // id, the oracle's agent is dispatched into it) and the claim is done.
    let ev = alice
        .send(&a_room, &alice.content(&oracle, &r, now_ms()))
        .await;
    let call = format!("{ev}@{r}");
    let (st, body) = sync_call(&s, &a_token, &call).await;
    assert_eq!(
        (st, body["status"].as_str()),
        (200, Some("active")),
        "{body}"
    );
    assert_eq!(metadata(&s, &r).await.as_deref(), Some(call.as_str()));
    let d = s.state.livekit().dispatches(&room).await.unwrap();
    assert!(
        d.contains(&s.state.config().oracle.agent_name),
        "the oracle's agent is dispatched into the adopted room: {d:?}"
    );
    assert!(
        s.store().room_claim(&r).await.unwrap().is_none(),
        "claim taken"
    );
    // The room is the call's now: no more claims of it, by anyone.
    let (st, body, _) = claim(&s, Some(&a_token), &r).await;
    assert_eq!(
        (st, body["error"]["code"].as_str()),
        (409, Some("conflict")),
        "{body}"
    );

    // R2 was never taken by a call: once its claim lapses the server deletes the room (the
    // background sweep), while the adopted room R stays with its call.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(15);
    while metadata(&s, &r2).await.is_some() {
        assert!(
            tokio::time::Instant::now() < deadline,
            "the lapsed claim's room is still there"
        );
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    assert!(s.store().room_claim(&r2).await.unwrap().is_none());
    assert_eq!(metadata(&s, &r).await.as_deref(), Some(call.as_str()));
    let rec = s
        .store()
        .call(&CallId::parse(&call).unwrap())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(rec.status, CallStatus::Active);
    // With the claims lapsed, Alice may claim again.
    let r3 = room_name();
    let (st, body, _) = claim(&s, Some(&a_token), &r3).await;
    assert_eq!(st, 200, "{body}");
    for name in [&r, &r3] {
        s.state
            .livekit()
            .delete_room(&RoomName::parse(name).unwrap())
            .await
            .unwrap();
    }
}
both_backends!(
    a_claimed_room_is_joined_early_and_adopted_by_its_call_only,
    early_join
);

/// The sync and the sweep never both act on one claim: the sync takes its claim out of the
/// store before it adopts the room. When a sweep took the claim first (it lapsed) and is still
/// deleting the room, the sync waits for the deletion and makes the room afresh; a room left
/// with the user's own marker and no claim (its deletion failed) is adopted after the wait.
/// Before, both answered 409 (the room "belongs to something else"), and a sweep that read the
/// marker just before the sync adopted the room deleted the call's room under it (a CI run's
/// browser call whose agent never came).
async fn sync_after_sweep(db: Db) {
    let oracle_user = MatrixUser::new(&unique("oracle")).await;
    // Claims live long enough that the server's own sweep stays out of the test; a sweep is
    // played by taking the claims from the store as the sweep does.
    let s = TestServer::start_with_bot_edited(db, &oracle_user, |t| {
        format!("{t}\n        room_claim_ttl_secs = 600\n")
    })
    .await;
    let bot: OwnedUserId = UserId::parse(oracle_user.user_id.as_str()).unwrap();
    let oracle = s.oracle.as_str().to_owned();
    let alice = UserSide::new().await;
    let token = alice.user.openid_token().await;
    let a_room = alice.room_with(&bot, true).await;
    let mine = format!("claim:{}", alice.user.user_id);
    let sweep_takes_the_claims = || async {
        let later = now_ms() + 3_600_000;
        s.store()
            .take_expired_room_claims(&s.oracle, later)
            .await
            .unwrap()
    };

    // 1. The sweep took the claim and deletes the room half a second later.
    let r = room_name();
    let (st, _, _) = claim(&s, Some(&token), &r).await;
    assert_eq!(st, 200);
    assert_eq!(sweep_takes_the_claims().await.len(), 1);
    let lk = s.state.livekit();
    let name = RoomName::parse(&r).unwrap();
    let deleting = tokio::spawn({
        let (state, name, mine) = (s.state.clone(), name.clone(), mine.clone());
        async move {
            tokio::time::sleep(Duration::from_millis(500)).await;
            state
                .livekit()
                .delete_call_room(&name, &mine)
                .await
                .unwrap()
        }
    });
    let ev = alice
        .send(&a_room, &alice.content(&oracle, &r, now_ms()))
        .await;
    let call = format!("{ev}@{r}");
    let (st, body) = sync_call(&s, &token, &call).await;
    assert!(
        deleting.await.unwrap(),
        "the sweep deleted the claimed room"
    );
    assert_eq!(
        (st, body["status"].as_str()),
        (200, Some("active")),
        "{body}"
    );
    assert_eq!(
        metadata(&s, &r).await.as_deref(),
        Some(call.as_str()),
        "the call's room was made afresh after the sweep"
    );
    let d = lk.dispatches(&name).await.unwrap();
    assert!(d.contains(&s.state.config().oracle.agent_name), "{d:?}");

    // 2. The sweep took the claim and its deletion never happened: the room, still Alice's,
    //    becomes her call's after the wait.
    let r2 = room_name();
    let (st, _, _) = claim(&s, Some(&token), &r2).await;
    assert_eq!(st, 200);
    assert_eq!(sweep_takes_the_claims().await.len(), 1);
    let ev = alice
        .send(&a_room, &alice.content(&oracle, &r2, now_ms()))
        .await;
    let call2 = format!("{ev}@{r2}");
    let (st, body) = sync_call(&s, &token, &call2).await;
    assert_eq!(
        (st, body["status"].as_str()),
        (200, Some("active")),
        "{body}"
    );
    assert_eq!(metadata(&s, &r2).await.as_deref(), Some(call2.as_str()));

    // 3. A claim the sync took is out of the store: no sweep can take it after the adoption.
    let r3 = room_name();
    let (st, _, _) = claim(&s, Some(&token), &r3).await;
    assert_eq!(st, 200);
    let ev = alice
        .send(&a_room, &alice.content(&oracle, &r3, now_ms()))
        .await;
    let call3 = format!("{ev}@{r3}");
    let (st, _) = sync_call(&s, &token, &call3).await;
    assert_eq!(st, 200);
    assert!(sweep_takes_the_claims().await.is_empty());
    assert_eq!(metadata(&s, &r3).await.as_deref(), Some(call3.as_str()));
    for n in [&r, &r2, &r3] {
        lk.delete_room(&RoomName::parse(n).unwrap()).await.unwrap();
    }
}
both_backends!(
    a_sync_and_a_sweep_never_both_act_on_one_claim,
    sync_after_sweep
);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_server_without_the_early_join_answers_404() {
    let user = MatrixUser::new(&unique("did-ixo-u")).await;
    let s = TestServer::start_edited(Db::Sqlite, |t| format!("{t}\n        early_join = false\n"))
        .await;
    let token = user.openid_token().await;
    let r = room_name();
    let (st, body, _) = claim(&s, Some(&token), &r).await;
    assert_eq!(
        (st, body["error"]["code"].as_str()),
        (404, Some("not_found")),
        "{body}"
    );
    assert_eq!(metadata(&s, &r).await, None, "no room made");
}

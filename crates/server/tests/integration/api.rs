//! Phase A: store, auth, key/update/list, errors — on SQLite and PostgreSQL.

use oracle_calls_proto::{CallStatus, Did};
use oracle_calls_server::apikey;
use serde_json::json;

use crate::support::{Db, MatrixUser, TestServer, answer, both_backends, room_name, unique};

async fn meta_endpoints(db: Db) {
    let s = TestServer::start(db).await;
    let http = reqwest::Client::new();
    let (st, body) = answer(http.get(s.url("/healthz")).send().await.unwrap()).await;
    assert_eq!((st, body.as_str()), (200, Some("ok")));
    let (st, wk) = answer(
        http.get(s.url("/.well-known/oracle-calls"))
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(st, 200);
    assert_eq!(wk["oracleDid"], s.oracle.as_str());
    assert_eq!(wk["keys"][0]["scheme"], "hpke-p256");
    let (st, doc) = answer(http.get(s.url("/openapi.json")).send().await.unwrap()).await;
    assert_eq!(st, 200);
    for path in [
        "/calls/{callId}/sync",
        "/calls/{callId}/key",
        "/calls/{callId}/update",
        "/calls",
        "/livekit/webhook",
    ] {
        assert!(
            doc["paths"][path].is_object(),
            "{path} missing from /openapi.json"
        );
    }
    assert!(doc["components"]["schemas"]["CallSummary"].is_object());
    let (st, nf) = answer(http.get(s.url("/nope")).send().await.unwrap()).await;
    assert_eq!((st, nf["error"]["code"].as_str()), (404, Some("not_found")));
    let (st, m) = answer(http.get(s.url("/metrics")).send().await.unwrap()).await;
    assert_eq!(st, 200);
    assert!(
        m.as_str()
            .unwrap()
            .contains("oracle_calls_http_requests_total"),
        "{m}"
    );
}
both_backends!(meta_endpoints_answer, meta_endpoints);

async fn key_endpoint(db: Db) {
    let s = TestServer::start(db).await;
    let http = reqwest::Client::new();
    let now = oracle_calls_server::now().unix_millis();
    let key = apikey::create(s.store(), &s.pepper, s.oracle.clone(), "agent", now)
        .await
        .unwrap();
    let other_oracle = Did::parse(&unique("did:ixo:other")).unwrap();
    let other = apikey::create(s.store(), &s.pepper, other_oracle.clone(), "x", now)
        .await
        .unwrap();
    let id = s.seed_call("@u:localhost", "s1", &s.oracle).await;
    let path = s.url(&format!("/calls/{}/key", id.to_path_segment()));

    let (st, body) = answer(
        http.get(&path)
            .bearer_auth(key.key.dangerous_expose())
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(st, 200, "{body}");
    assert_eq!(
        body,
        json!({"encryptionKey": "v1.hpke-p256.QUJD", "userDid": "did:ixo:user1", "oracleDid": s.oracle.as_str(),
               "sessionId": "s1", "roomId": id.room_name().as_str(), "callType": "audio", "keyDerivation": "hkdf",
               "userIdentity": "@u:localhost"})
    );
    let (st, _) = answer(
        http.post(&path)
            .bearer_auth(key.key.dangerous_expose())
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(st, 200, "POST is accepted too");

    // No key, empty key, malformed, wrong secret with a real id: all 401 with the JSON shape.
    let real = key.key.dangerous_expose().to_owned();
    let mut wrong = real.clone();
    wrong.pop();
    wrong.push(if real.ends_with('A') { 'B' } else { 'A' });
    let (st, body) = answer(http.get(&path).send().await.unwrap()).await;
    assert_eq!(
        (st, body["error"]["code"].as_str()),
        (401, Some("unauthorized"))
    );
    for bad in [
        "Bearer ",
        "Bearer ocak_",
        &format!("Bearer {wrong}"),
        "Basic abc",
        &real,
    ] {
        let (st, body) = answer(
            http.get(&path)
                .header("authorization", bad)
                .send()
                .await
                .unwrap(),
        )
        .await;
        assert_eq!(st, 401, "{bad:?} → {body}");
    }
    // Another oracle's key: 403. Unknown call: 404.
    let (st, _) = answer(
        http.get(&path)
            .bearer_auth(other.key.dangerous_expose())
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(st, 403);
    let unknown = s.url(&format!("/calls/%24nope@{}/key", room_name()));
    let (st, _) = answer(http.get(&unknown).bearer_auth(&real).send().await.unwrap()).await;
    assert_eq!(st, 404);
    // Revoked (by another process, as `oracle-calls apikey revoke` does): 401 once the
    // server's key cache (api_key_cache_secs = 1 here) has let the record go.
    assert!(
        s.store()
            .revoke_api_key(&other.record.key_id, now)
            .await
            .unwrap()
    );
    tokio::time::sleep(std::time::Duration::from_millis(1100)).await;
    let (st, _) = answer(
        http.get(&path)
            .bearer_auth(other.key.dangerous_expose())
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(st, 401);
    // Ended: 410.
    let rec = s.store().call(&id).await.unwrap().unwrap();
    assert!(
        s.store()
            .set_status(&id, rec.status, CallStatus::Ended, None, now)
            .await
            .unwrap()
    );
    let (st, _) = answer(http.get(&path).bearer_auth(&real).send().await.unwrap()).await;
    assert_eq!(st, 410);
    // Every authenticated request was audited with its peer address.
    let audit = s.store().key_requests(&id).await.unwrap();
    let outcomes: Vec<&str> = audit.iter().map(|a| a.outcome.as_str()).collect();
    assert_eq!(outcomes, ["granted", "granted", "forbidden", "gone"]);
    assert!(audit.iter().all(|a| a.remote.starts_with("127.0.0.1:")));
    assert_eq!(audit[0].key_id, key.record.key_id);
}
both_backends!(key_endpoint_checks_keys_oracles_and_states, key_endpoint);

async fn update_endpoint(db: Db) {
    let s = TestServer::start(db).await;
    let http = reqwest::Client::new();
    let alice = MatrixUser::new(&unique("alice")).await;
    let mallory = MatrixUser::new(&unique("mallory")).await;
    let (a_tok, m_tok) = (alice.openid_token().await, mallory.openid_token().await);
    let now = oracle_calls_server::now().unix_millis();
    let key = apikey::create(s.store(), &s.pepper, s.oracle.clone(), "agent", now)
        .await
        .unwrap();
    let id = s.seed_call(&alice.user_id, "s1", &s.oracle).await;
    let up = s.url(&format!("/calls/{}/update", id.to_path_segment()));
    let keyp = s.url(&format!("/calls/{}/key", id.to_path_segment()));
    let post =
        |tok: &str, body: serde_json::Value| http.post(&up).bearer_auth(tok).json(&body).send();

    let (st, b) = answer(post(&a_tok, json!({"callStatus": "active"})).await.unwrap()).await;
    assert_eq!((st, b["callStatus"].as_str()), (200, Some("active")), "{b}");
    let (st, b) = answer(post(&a_tok, json!({"callStatus": "active"})).await.unwrap()).await;
    assert_eq!(
        (st, b["callStatus"].as_str()),
        (200, Some("active")),
        "repeating is idempotent"
    );
    let (st, b) = answer(
        post(&a_tok, json!({"callStatus": "pending"}))
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(
        (st, b["error"]["code"].as_str()),
        (409, Some("conflict")),
        "{b}"
    );
    let (st, _) = answer(post(&m_tok, json!({"callStatus": "ended"})).await.unwrap()).await;
    assert_eq!(st, 403, "another user cannot end alice's call");
    let (st, _) = answer(
        post("not-a-token", json!({"callStatus": "ended"}))
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(st, 401);
    let (st, _) = answer(post(&a_tok, json!({})).await.unwrap()).await;
    assert_eq!(st, 400, "an empty update is malformed");
    let (st, _) = answer(
        post(&a_tok, json!({"reason": "keyDecryptionFailed"}))
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(st, 403, "only the agent reports key failures");

    // The agent cannot open the envelope: the key endpoint refuses the call from then on.
    let (st, _) = answer(
        http.get(&keyp)
            .bearer_auth(key.key.dangerous_expose())
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(st, 200);
    let (st, b) = answer(
        post(
            key.key.dangerous_expose(),
            json!({"reason": "keyDecryptionFailed"}),
        )
        .await
        .unwrap(),
    )
    .await;
    assert_eq!(
        (st, b["reason"].as_str()),
        (200, Some("keyDecryptionFailed")),
        "{b}"
    );
    let (st, _) = answer(
        http.get(&keyp)
            .bearer_auth(key.key.dangerous_expose())
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(st, 403);

    let (st, b) = answer(
        post(
            &a_tok,
            json!({"callStatus": "ended", "reason": "userHangup"}),
        )
        .await
        .unwrap(),
    )
    .await;
    assert_eq!(
        (st, b["callStatus"].as_str(), b["reason"].as_str()),
        (200, Some("ended"), Some("userHangup"))
    );
    assert!(b["callEndedAt"].is_string());
    let (st, again) = answer(post(&a_tok, json!({"callStatus": "ended"})).await.unwrap()).await;
    assert_eq!(
        (st, &again["callEndedAt"]),
        (200, &b["callEndedAt"]),
        "ending twice changes nothing"
    );
    let (st, _) = answer(post(&a_tok, json!({"callStatus": "active"})).await.unwrap()).await;
    assert_eq!(st, 409);
}
both_backends!(update_enforces_transitions_and_key_block, update_endpoint);

/// An ended call's reason is final (security review L3): a reason alone is recorded only while
/// the call is open, and ending it again changes nothing.
async fn reasons_after_the_end(db: Db) {
    let s = TestServer::start(db).await;
    let http = reqwest::Client::new();
    let alice = MatrixUser::new(&unique("alice")).await;
    let a_tok = alice.openid_token().await;
    let now = oracle_calls_server::now().unix_millis();
    let key = apikey::create(s.store(), &s.pepper, s.oracle.clone(), "agent", now)
        .await
        .unwrap();
    let agent = key.key.dangerous_expose();
    let id = s.seed_call(&alice.user_id, "s1", &s.oracle).await;
    let up = s.url(&format!("/calls/{}/update", id.to_path_segment()));
    let post = |tok: &str, body: serde_json::Value| {
        let req = http.post(&up).bearer_auth(tok).json(&body);
        async move { answer(req.send().await.unwrap()).await }
    };
    let stored_reason = || async {
        s.store()
            .call(&id)
            .await
            .unwrap()
            .unwrap()
            .reason
            .map(|r| format!("{r:?}"))
    };

    // While the call is open, a reason alone is recorded.
    let (st, b) = post(agent, json!({"reason": "mediaFailed"})).await;
    assert_eq!(
        (st, b["reason"].as_str()),
        (200, Some("mediaFailed")),
        "{b}"
    );
    let (st, b) = post(
        &a_tok,
        json!({"callStatus": "ended", "reason": "userHangup"}),
    )
    .await;
    assert_eq!(
        (st, b["callStatus"].as_str(), b["reason"].as_str()),
        (200, Some("ended"), Some("userHangup")),
        "{b}"
    );

    // Once it ended, no one rewrites it: a reason alone is a 409 and changes nothing...
    for (tok, reason) in [
        (a_tok.as_str(), "agentHangup"),
        (agent, "keyDecryptionFailed"),
        (agent, "mediaFailed"),
    ] {
        let (st, b) = post(tok, json!({"reason": reason})).await;
        assert_eq!(
            (st, b["error"]["code"].as_str()),
            (409, Some("conflict")),
            "{reason}: {b}"
        );
        assert!(
            b["error"]["message"].as_str().unwrap().contains("ended"),
            "{b}"
        );
    }
    // ...and ending it again with another reason is an idempotent 200 that keeps the first.
    let (st, b) = post(&a_tok, json!({"callStatus": "ended", "reason": "timeout"})).await;
    assert_eq!((st, b["reason"].as_str()), (200, Some("userHangup")), "{b}");
    assert_eq!(stored_reason().await.as_deref(), Some("UserHangup"));
}
both_backends!(a_reason_is_final_once_the_call_ended, reasons_after_the_end);

async fn list_endpoint(db: Db) {
    let s = TestServer::start(db).await;
    let http = reqwest::Client::new();
    let alice = MatrixUser::new(&unique("alice")).await;
    let bob = MatrixUser::new(&unique("bob")).await;
    let (a_tok, b_tok) = (alice.openid_token().await, bob.openid_token().await);
    let mut ids = vec![];
    for i in 0..5 {
        ids.push(
            s.seed_call(
                &alice.user_id,
                if i % 2 == 0 { "even" } else { "odd" },
                &s.oracle,
            )
            .await,
        );
        tokio::time::sleep(std::time::Duration::from_millis(3)).await;
    }
    let bobs = s.seed_call(&bob.user_id, "even", &s.oracle).await;
    let list = |tok: &str, q: &str| {
        http.get(s.url(&format!("/calls{q}")))
            .bearer_auth(tok)
            .send()
    };

    let mut seen = vec![];
    let mut q = "?limit=2".to_owned();
    loop {
        let (st, page) = answer(list(&a_tok, &q).await.unwrap()).await;
        assert_eq!(st, 200, "{page}");
        let calls = page["calls"].as_array().unwrap();
        assert!(calls.len() <= 2);
        seen.extend(
            calls
                .iter()
                .map(|c| c["callId"].as_str().unwrap().to_owned()),
        );
        match page["nextCursor"].as_str() {
            Some(c) => q = format!("?limit=2&cursor={c}"),
            None => break,
        }
    }
    let newest_first: Vec<String> = ids.iter().rev().map(|i| i.as_str().to_owned()).collect();
    assert_eq!(seen, newest_first);

    let (_, page) = answer(list(&a_tok, "?sessionId=odd").await.unwrap()).await;
    assert_eq!(page["calls"].as_array().unwrap().len(), 2);
    let (_, page) = answer(list(&a_tok, "?status=ended").await.unwrap()).await;
    assert_eq!(page["calls"].as_array().unwrap().len(), 0);
    let (_, page) = answer(
        list(&a_tok, "?status=pending&sessionId=even")
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(page["calls"].as_array().unwrap().len(), 3);
    // Bob sees his call only.
    let (_, page) = answer(list(&b_tok, "").await.unwrap()).await;
    let bob_ids: Vec<&str> = page["calls"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["callId"].as_str().unwrap())
        .collect();
    assert_eq!(bob_ids, [bobs.as_str()]);
    let (st, _) = answer(list(&a_tok, "?cursor=garbage!").await.unwrap()).await;
    assert_eq!(st, 400);
    let (st, _) = answer(list(&a_tok, "?status=ringing").await.unwrap()).await;
    assert_eq!(st, 400);
    let (st, _) = answer(http.get(s.url("/calls")).send().await.unwrap()).await;
    assert_eq!(st, 401);
    let (st, _) = answer(list("syt_forged_token", "").await.unwrap()).await;
    assert_eq!(st, 401);
}
both_backends!(list_is_per_user_newest_first_paginated, list_endpoint);

async fn malformed_requests(db: Db) {
    let s = TestServer::start(db).await;
    let http = reqwest::Client::new();
    let alice = MatrixUser::new(&unique("alice")).await;
    let tok = alice.openid_token().await;
    let id = s.seed_call(&alice.user_id, "s", &s.oracle).await;
    for bad in [
        "notacallid",
        "%24ev@",
        "ev@room",
        "%24a%40b%40room",
        "%24ev@room%2F..%2Fx",
    ] {
        let (st, b) = answer(
            http.post(s.url(&format!("/calls/{bad}/update")))
                .bearer_auth(&tok)
                .json(&json!({"callStatus": "ended"}))
                .send()
                .await
                .unwrap(),
        )
        .await;
        assert_eq!(
            (st, b["error"]["code"].as_str()),
            (400, Some("bad_request")),
            "{bad}: {b}"
        );
    }
    let up = s.url(&format!("/calls/{}/update", id.to_path_segment()));
    let huge = json!({"callStatus": "ended", "pad": "x".repeat(100_000)});
    let (st, b) = answer(
        http.post(&up)
            .bearer_auth(&tok)
            .json(&huge)
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(
        (st, b["error"]["code"].as_str()),
        (413, Some("payload_too_large")),
        "{b}"
    );
    let (st, b) = answer(
        http.post(&up)
            .bearer_auth(&tok)
            .header("content-type", "application/json")
            .body("{not json")
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(
        (st, b["error"]["code"].as_str()),
        (400, Some("bad_request")),
        "{b}"
    );
    let (st, _) = answer(
        http.post(&up)
            .bearer_auth(&tok)
            .json(&json!({"callStatus": "paused"}))
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(st, 400);
}
both_backends!(malformed_ids_and_bodies_are_4xx, malformed_requests);

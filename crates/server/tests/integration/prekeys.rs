//! Prekeys (forward secrecy): the oracle's agent publishes signed prekeys, users claim them,
//! oldest one-time prekey first and each one once, then the last-resort one; refusals; and
//! concurrent claims and publishes — on SQLite and PostgreSQL.

use std::collections::HashSet;

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use oracle_calls_proto::Did;
use oracle_calls_server::apikey;
use serde_json::{Value, json};

use crate::support::{
    Db, MatrixUser, TestServer, answer, both_backends, metric, stack_var, unique,
};

/// A prekey signing key of the right shape (the server never verifies with it).
const SIGNING_KEY: &str = "2Yk0KzVh8G7d3yXw1n9cQbJtq5mFpRrLsUeAo6iZ4vM";

fn random_b64(n: usize) -> String {
    let mut b = vec![0u8; n];
    rand::fill(&mut b[..]);
    URL_SAFE_NO_PAD.encode(b)
}

/// A prekey with random fields of the right shape (the signature is not checked).
fn prekey(last_resort: bool) -> Value {
    json!({
        "prekeyId": random_b64(16),
        "publicKey": random_b64(32),
        "lastResort": last_resort,
        "signature": random_b64(64),
    })
}

fn one_time(n: usize) -> Vec<Value> {
    (0..n).map(|_| prekey(false)).collect()
}

fn id(p: &Value) -> String {
    p["prekeyId"].as_str().unwrap().to_owned()
}

/// A server with a prekey signing key, and an API key of its oracle.
async fn oracle(db: Db) -> (TestServer, String) {
    let s = TestServer::start_edited(db, |t| {
        t.replacen(
            "[oracle]",
            &format!("[oracle]\nprekey_signing_key = \"{SIGNING_KEY}\""),
            1,
        )
    })
    .await;
    let now = oracle_calls_server::now().unix_millis();
    let key = apikey::create(s.store(), &s.pepper, s.oracle.clone(), "agent", now)
        .await
        .unwrap();
    let key = key.key.dangerous_expose().to_owned();
    (s, key)
}

async fn publish(s: &TestServer, bearer: &str, prekeys: &[Value]) -> (u16, Value) {
    publish_body(s, bearer, &json!({ "prekeys": prekeys })).await
}

async fn publish_body(s: &TestServer, bearer: &str, body: &Value) -> (u16, Value) {
    answer(
        reqwest::Client::new()
            .post(s.url("/prekeys"))
            .bearer_auth(bearer)
            .json(body)
            .send()
            .await
            .unwrap(),
    )
    .await
}

async fn stock(s: &TestServer, bearer: &str) -> Value {
    let (st, body) = answer(
        reqwest::Client::new()
            .get(s.url("/prekeys"))
            .bearer_auth(bearer)
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(st, 200, "{body}");
    body
}

async fn claim(http: &reqwest::Client, s: &TestServer, bearer: &str) -> (u16, Value) {
    answer(
        http.post(s.url("/prekeys/claim"))
            .bearer_auth(bearer)
            .send()
            .await
            .unwrap(),
    )
    .await
}

/// A user's OpenID token, already verified by the server (cached), so that claims with it
/// do not each ask the homeserver.
async fn user_token(s: &TestServer) -> String {
    let token = MatrixUser::new(&unique("claimer"))
        .await
        .openid_token()
        .await;
    let (st, body) = answer(
        reqwest::Client::new()
            .get(s.url("/calls"))
            .bearer_auth(&token)
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(st, 200, "{body}");
    token
}

async fn publish_then_claim(db: Db) {
    let (s, agent) = oracle(db).await;
    let http = reqwest::Client::new();
    let (st, wk) = answer(
        http.get(s.url("/.well-known/oracle-calls"))
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(
        (st, wk["prekeySigningKey"].as_str()),
        (200, Some(SIGNING_KEY))
    );
    let (_, doc) = answer(http.get(s.url("/openapi.json")).send().await.unwrap()).await;
    assert!(doc["paths"]["/prekeys"]["post"].is_object());
    assert!(doc["paths"]["/prekeys"]["get"].is_object());
    assert!(doc["paths"]["/prekeys/claim"]["post"].is_object());
    assert!(doc["components"]["schemas"]["SignedPrekey"].is_object());
    let user = user_token(&s).await;

    // Nothing published: 404 with its reason.
    let (st, body) = claim(&http, &s, &user).await;
    assert_eq!(st, 404, "{body}");
    assert_eq!(body["error"]["code"], "not_found");
    assert_eq!(
        body["error"]["message"],
        "the oracle has published no prekeys"
    );
    assert_eq!(
        stock(&s, &agent).await,
        json!({"oneTime": 0, "lastResort": false})
    );

    // Two publishes: the one-time prekeys come out in publish order.
    let first = one_time(3);
    let last_resort = prekey(true);
    let mut batch = first.clone();
    batch.insert(1, last_resort.clone());
    let (st, body) = publish(&s, &agent, &batch).await;
    assert_eq!(
        (st, &body),
        (200, &json!({"oneTime": 3, "lastResort": true}))
    );
    let second = one_time(2);
    let (st, body) = publish(&s, &agent, &second).await;
    assert_eq!(
        (st, &body),
        (200, &json!({"oneTime": 5, "lastResort": true}))
    );
    for expected in first.iter().chain(&second) {
        let (st, got) = claim(&http, &s, &user).await;
        assert_eq!((st, &got), (200, expected), "oldest one-time prekey first");
    }
    // None left: the last-resort prekey, again and again (it is kept).
    for _ in 0..2 {
        let (st, got) = claim(&http, &s, &user).await;
        assert_eq!((st, &got), (200, &last_resort));
    }
    assert_eq!(
        stock(&s, &agent).await,
        json!({"oneTime": 0, "lastResort": true})
    );

    // A new last-resort prekey replaces the old one.
    let newer = prekey(true);
    let (st, body) = publish(&s, &agent, std::slice::from_ref(&newer)).await;
    assert_eq!(
        (st, &body),
        (200, &json!({"oneTime": 0, "lastResort": true}))
    );
    let (st, got) = claim(&http, &s, &user).await;
    assert_eq!((st, &got), (200, &newer));

    for (kind, n) in [("one_time", 5.0), ("last_resort", 3.0), ("none", 1.0)] {
        let name = format!("oracle_calls_prekey_claims_total{{kind=\"{kind}\"}}");
        assert_eq!(metric(&s, &name).await, n, "{name}");
    }
}
both_backends!(
    published_prekeys_are_claimed_oldest_first,
    publish_then_claim
);

async fn refusals(db: Db) {
    let (s, agent) = oracle(db).await;
    let held = one_time(2);
    let (st, _) = publish(&s, &agent, &held).await;
    assert_eq!(st, 200);

    // A prekeyId already published: 409, and nothing of the request is stored.
    let fresh = prekey(false);
    let (st, body) = publish(&s, &agent, &[fresh.clone(), held[1].clone()]).await;
    assert_eq!(
        (st, body["error"]["code"].as_str()),
        (409, Some("conflict"))
    );
    let msg = body["error"]["message"].as_str().unwrap();
    assert!(msg.contains(&id(&held[1])), "{msg}");
    let mut as_last_resort = held[0].clone();
    as_last_resort["lastResort"] = json!(true);
    let (st, _) = publish(&s, &agent, &[as_last_resort]).await;
    assert_eq!(st, 409, "the id is taken whatever the kind");
    assert_eq!(
        stock(&s, &agent).await,
        json!({"oneTime": 2, "lastResort": false})
    );

    // Bad shapes: 400, the reason names the field; nothing stored.
    let bad = |field: &str, value: Value| {
        let mut list = one_time(5);
        list[3][field] = value;
        list
    };
    let cases: Vec<(Vec<Value>, &str)> = vec![
        (
            bad("publicKey", json!(format!("{}=", random_b64(32)))),
            "prekeys[3].publicKey: not base64url without padding",
        ),
        (
            bad("publicKey", json!(random_b64(33))),
            "prekeys[3].publicKey: must decode to 32 bytes, not 33",
        ),
        (
            bad("prekeyId", json!("not base64!")),
            "prekeys[3].prekeyId: not base64url without padding",
        ),
        (
            bad("prekeyId", json!(random_b64(32))),
            "prekeys[3].prekeyId: must decode to 16 bytes, not 32",
        ),
        (
            bad("signature", json!(random_b64(63))),
            "prekeys[3].signature: must decode to 64 bytes, not 63",
        ),
        (
            vec![prekey(true), prekey(false), prekey(true)],
            "prekeys[2].lastResort: at most one last-resort prekey per request (prekeys[0] is one)",
        ),
        (
            vec![fresh.clone(), prekey(false), fresh.clone()],
            "prekeys[2].prekeyId: repeats prekeys[0].prekeyId",
        ),
        (vec![], "prekeys: at least one prekey is required"),
        (
            one_time(101),
            "prekeys: at most 100 prekeys per request, got 101",
        ),
    ];
    for (list, reason) in cases {
        let (st, body) = publish(&s, &agent, &list).await;
        assert_eq!(st, 400, "{reason}: {body}");
        assert_eq!(body["error"]["code"], "bad_request");
        assert_eq!(body["error"]["message"], reason);
    }
    let mut extra = prekey(false);
    extra["note"] = json!("x");
    let mut missing = prekey(false);
    missing.as_object_mut().unwrap().remove("signature");
    for body in [
        json!({"prekeys": [extra]}),
        json!({"prekeys": [missing]}),
        json!({"prekeys": "none"}),
        json!({}),
    ] {
        let (st, answer) = publish_body(&s, &agent, &body).await;
        assert_eq!(st, 400, "{body} → {answer}");
    }
    // The body limit of POST /prekeys is its own (64 KiB; this server's is 4 KiB).
    let (st, body) = publish_body(&s, &agent, &json!({"prekeys": one_time(400)})).await;
    assert_eq!(
        (st, body["error"]["code"].as_str()),
        (413, Some("payload_too_large"))
    );
    assert_eq!(
        stock(&s, &agent).await,
        json!({"oneTime": 2, "lastResort": false})
    );
}
both_backends!(bad_or_duplicate_prekeys_are_refused, refusals);

async fn the_cap(db: Db) {
    let (s, agent) = oracle(db).await;
    for _ in 0..10 {
        let (st, body) = publish(&s, &agent, &one_time(100)).await;
        assert_eq!(st, 200, "{body}");
    }
    assert_eq!(
        stock(&s, &agent).await,
        json!({"oneTime": 1000, "lastResort": false})
    );
    let (st, body) = publish(&s, &agent, &[prekey(true), prekey(false)]).await;
    assert_eq!(
        (st, body["error"]["code"].as_str()),
        (409, Some("conflict"))
    );
    let msg = body["error"]["message"].as_str().unwrap();
    assert!(
        msg.contains("1000 unclaimed one-time prekeys") && msg.contains("at most 1000"),
        "{msg}"
    );
    // Nothing of it was stored; a last-resort prekey alone still fits.
    assert_eq!(
        stock(&s, &agent).await,
        json!({"oneTime": 1000, "lastResort": false})
    );
    let (st, body) = publish(&s, &agent, &[prekey(true)]).await;
    assert_eq!(
        (st, &body),
        (200, &json!({"oneTime": 1000, "lastResort": true}))
    );
    // A claim makes room for one.
    let user = user_token(&s).await;
    let (st, _) = claim(&reqwest::Client::new(), &s, &user).await;
    assert_eq!(st, 200);
    let (st, body) = publish(&s, &agent, &one_time(1)).await;
    assert_eq!(
        (st, &body),
        (200, &json!({"oneTime": 1000, "lastResort": true}))
    );
}
both_backends!(at_most_1000_unclaimed_one_time_prekeys, the_cap);

async fn auth(db: Db) {
    let (s, agent) = oracle(db).await;
    let http = reqwest::Client::new();
    let user = user_token(&s).await;
    let now = oracle_calls_server::now().unix_millis();
    let other = apikey::create(
        s.store(),
        &s.pepper,
        Did::parse(&unique("did:ixo:other")).unwrap(),
        "other",
        now,
    )
    .await
    .unwrap();
    let other = other.key.dangerous_expose().to_owned();
    let body = json!({"prekeys": [prekey(true), prekey(false)]});
    let send = |method: reqwest::Method, path: &str, bearer: Option<&str>| {
        let mut req = http.request(method, s.url(path));
        if let Some(b) = bearer {
            req = req.bearer_auth(b);
        }
        req.json(&body).send()
    };
    use reqwest::Method;
    let cases = [
        // No credentials.
        (Method::POST, "/prekeys", None, 401),
        (Method::GET, "/prekeys", None, 401),
        (Method::POST, "/prekeys/claim", None, 401),
        // A user's token on the agent's endpoints.
        (Method::POST, "/prekeys", Some(user.as_str()), 401),
        (Method::GET, "/prekeys", Some(user.as_str()), 401),
        // Another oracle's agent.
        (Method::POST, "/prekeys", Some(other.as_str()), 403),
        (Method::GET, "/prekeys", Some(other.as_str()), 403),
        // An agent key on the user's endpoint (the user extractor refuses API keys).
        (Method::POST, "/prekeys/claim", Some(agent.as_str()), 403),
        (Method::POST, "/prekeys/claim", Some("ocak_0_x"), 403),
        // A token the homeserver does not know.
        (Method::POST, "/prekeys/claim", Some("not-a-token"), 401),
    ];
    for (method, path, bearer, want) in cases {
        let (st, answer) = answer(send(method.clone(), path, bearer).await.unwrap()).await;
        assert_eq!(st, want, "{method} {path} as {bearer:?}: {answer}");
        let code = if want == 401 {
            "unauthorized"
        } else {
            "forbidden"
        };
        assert_eq!(answer["error"]["code"], code);
    }
    assert_eq!(
        stock(&s, &agent).await,
        json!({"oneTime": 0, "lastResort": false})
    );
}
both_backends!(prekeys_need_the_right_credentials, auth);

/// 20 one-time prekeys and a last-resort one, 60 claims at once: each one-time prekey goes to
/// exactly one claim, the other 40 get the last-resort prekey.
async fn concurrent_claims(db: Db) {
    let (s, agent) = oracle(db).await;
    let published = one_time(20);
    let last_resort = prekey(true);
    let mut batch = published.clone();
    batch.push(last_resort.clone());
    let (st, body) = publish(&s, &agent, &batch).await;
    assert_eq!(
        (st, &body),
        (200, &json!({"oneTime": 20, "lastResort": true}))
    );
    let users = [user_token(&s).await, user_token(&s).await];
    let http = reqwest::Client::new();
    let base = s.base.clone();
    let start = std::sync::Arc::new(tokio::sync::Barrier::new(60));
    let mut claims = tokio::task::JoinSet::new();
    for i in 0..60 {
        let (http, token, start) = (http.clone(), users[i % 2].clone(), start.clone());
        let url = format!("{base}/prekeys/claim");
        claims.spawn(async move {
            start.wait().await;
            answer(http.post(url).bearer_auth(token).send().await.unwrap()).await
        });
    }
    let mut one_time_ids = Vec::new();
    let mut last_resort_count = 0;
    while let Some(done) = claims.join_next().await {
        let (st, got) = done.unwrap();
        assert_eq!(st, 200, "{got}");
        if got["lastResort"] == json!(true) {
            assert_eq!(got, last_resort);
            last_resort_count += 1;
        } else {
            assert!(published.contains(&got), "{got} was never published");
            one_time_ids.push(id(&got));
        }
    }
    let distinct: HashSet<&String> = one_time_ids.iter().collect();
    assert_eq!(
        one_time_ids.len(),
        20,
        "every one-time prekey was handed out"
    );
    assert_eq!(distinct.len(), 20, "none of them twice");
    assert_eq!(last_resort_count, 40);
    assert_eq!(
        stock(&s, &agent).await,
        json!({"oneTime": 0, "lastResort": true})
    );
}
both_backends!(
    concurrent_claims_never_share_a_one_time_prekey,
    concurrent_claims
);

/// 12 publishes of 100 one-time prekeys at once: the cap holds (exactly 10 fit).
async fn concurrent_publishes(db: Db) {
    let (s, agent) = oracle(db).await;
    let start = std::sync::Arc::new(tokio::sync::Barrier::new(12));
    let mut publishes = tokio::task::JoinSet::new();
    for _ in 0..12 {
        let (url, agent, start) = (s.url("/prekeys"), agent.clone(), start.clone());
        let body = json!({"prekeys": one_time(100)});
        publishes.spawn(async move {
            start.wait().await;
            let resp = reqwest::Client::new()
                .post(url)
                .bearer_auth(agent)
                .json(&body)
                .send()
                .await
                .unwrap();
            answer(resp).await
        });
    }
    let mut statuses = Vec::new();
    while let Some(done) = publishes.join_next().await {
        let (st, body) = done.unwrap();
        assert!(st == 200 || st == 409, "{st} {body}");
        statuses.push(st);
    }
    assert_eq!(
        statuses.iter().filter(|s| **s == 200).count(),
        10,
        "{statuses:?}"
    );
    assert_eq!(
        stock(&s, &agent).await,
        json!({"oneTime": 1000, "lastResort": false})
    );
}
both_backends!(concurrent_publishes_keep_the_cap, concurrent_publishes);

/// On PostgreSQL a claim skips a one-time prekey another transaction holds (a claim in flight)
/// instead of waiting for it, and never hands out that held prekey.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_claim_skips_a_prekey_another_claim_holds() {
    let (s, agent) = oracle(Db::Postgres).await;
    let list = one_time(2);
    let (st, body) = publish(&s, &agent, &list).await;
    assert_eq!(st, 200, "{body}");
    let user = user_token(&s).await;
    let http = reqwest::Client::new();

    sqlx::any::install_default_drivers();
    let pool = sqlx::AnyPool::connect(&stack_var("DATABASE_URL"))
        .await
        .unwrap();
    let mut held = pool.begin().await.unwrap();
    sqlx::query("SELECT id FROM prekeys WHERE prekey_id = $1 FOR UPDATE")
        .bind(id(&list[0]))
        .fetch_one(&mut *held)
        .await
        .unwrap();
    let (st, got) =
        tokio::time::timeout(std::time::Duration::from_secs(5), claim(&http, &s, &user))
            .await
            .expect("the claim waited for the held prekey");
    assert_eq!(
        (st, &got),
        (200, &list[1]),
        "the next prekey, not the held one"
    );
    held.rollback().await.unwrap();
    // Let go, the held prekey is handed out next.
    let (st, got) = claim(&http, &s, &user).await;
    assert_eq!((st, &got), (200, &list[0]));
    let (st, _) = claim(&http, &s, &user).await;
    assert_eq!(st, 404);
}

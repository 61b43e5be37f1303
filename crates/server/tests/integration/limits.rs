//! Abuse resistance (issue 16; security review M2, M3): every limit of `[limits]` provoked on
//! the real stack — per address on every route, per user, per agent key, homeserver token
//! checks per address and in flight, refused tokens remembered, one lookup per token, invites
//! only up to the per-user room cap, one bounded key wait per user; and the buckets that the
//! servers of one oracle share through PostgreSQL (`limits.cluster_wide`).

use std::time::{Duration, Instant};

use matrix_sdk::ruma::UserId;
use oracle_calls_proto::Did;
use oracle_calls_server::apikey;
use oracle_calls_server::store::Store;
use serde_json::{Value, json};

use crate::matrix::{UserSide, now_ms, sync_call};
use crate::support::{Db, MatrixUser, TestServer, room_name, stack_var, unique};

fn with_limits(limits: &'static str) -> impl FnOnce(String) -> String {
    move |toml| format!("{toml}\n[limits]\n{limits}\n")
}

/// A 429 with the limit's reason, `Retry-After` and the stable code.
fn assert_limited(resp: &reqwest::Response, what: &str) -> u64 {
    assert_eq!(resp.status(), 429, "{what}");
    let secs: u64 = resp.headers()["retry-after"]
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    assert!(secs >= 1, "{what}: Retry-After {secs}");
    secs
}

async fn limited_body(resp: reqwest::Response) -> Value {
    let body: Value = resp.json().await.unwrap();
    assert_eq!(body["error"]["code"], "rate_limited", "{body}");
    body
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_route_is_limited_per_address_and_retry_after_is_honest() {
    let s = TestServer::start_edited(
        Db::Sqlite,
        with_limits("per_address = { per_sec = 1.0, burst = 4 }"),
    )
    .await;
    let http = reqwest::Client::new();
    for _ in 0..4 {
        assert_eq!(
            http.get(s.url("/healthz")).send().await.unwrap().status(),
            200
        );
    }
    // Past the burst every route answers 429 before doing anything: a known one, an unknown
    // path, the webhook (no signature checked), an authenticated one (no token checked).
    let started = Instant::now();
    let r = http.get(s.url("/healthz")).send().await.unwrap();
    let wait = assert_limited(&r, "healthz");
    let body = limited_body(r).await;
    assert!(
        body["error"]["message"]
            .as_str()
            .unwrap()
            .contains("too many requests from this address"),
        "{body}"
    );
    let r = http.get(s.url("/no/such/route")).send().await.unwrap();
    assert_limited(&r, "unmatched");
    let r = http
        .post(s.url("/livekit/webhook"))
        .body("{}")
        .send()
        .await
        .unwrap();
    assert_limited(&r, "webhook");
    let lookups = metric_of(&s, "oracle_calls_openid_lookups_total{outcome=\"refused\"}");
    let r = http
        .get(s.url("/calls"))
        .bearer_auth("syt_not_a_real_token")
        .send()
        .await
        .unwrap();
    assert_limited(&r, "calls");
    // Waiting as long as Retry-After says gets through again.
    tokio::time::sleep(Duration::from_secs(wait) + Duration::from_millis(50)).await;
    assert_eq!(
        http.get(s.url("/healthz")).send().await.unwrap().status(),
        200
    );
    assert!(started.elapsed() < Duration::from_secs(5));
    // The refused requests were counted, and the limited one never reached the homeserver.
    assert!(
        metric_of(
            &s,
            "oracle_calls_http_requests_total{method=\"GET\",route=\"/healthz\",status=\"429\"}"
        ) >= 1.0
    );
    assert_eq!(
        metric_of(&s, "oracle_calls_openid_lookups_total{outcome=\"refused\"}"),
        lookups
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn behind_a_trusted_proxy_each_forwarded_client_has_its_own_bucket() {
    let s = TestServer::start_edited(
        Db::Sqlite,
        with_limits(
            "per_address = { per_sec = 0.1, burst = 2 }\ntrusted_proxies = [\"127.0.0.1\"]",
        ),
    )
    .await;
    let http = reqwest::Client::new();
    let get = |client: &'static str| {
        http.get(s.url("/healthz"))
            .header("x-forwarded-for", client)
            .send()
    };
    for client in ["198.51.100.1", "198.51.100.2", "198.51.100.3"] {
        assert_eq!(get(client).await.unwrap().status(), 200, "{client}");
        assert_eq!(get(client).await.unwrap().status(), 200, "{client}");
        assert_limited(&get(client).await.unwrap(), client);
    }
    // A client naming a made-up hop before the proxy's own entry cannot pick its bucket:
    // the proxy appends the address it saw, and that one counts.
    assert_limited(
        &get("203.0.113.77, 198.51.100.1").await.unwrap(),
        "spoofed hop",
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_user_past_the_per_user_limit_gets_429_and_other_users_do_not() {
    let s = TestServer::start_edited(
        Db::Sqlite,
        with_limits("per_user = { per_sec = 0.2, burst = 3 }"),
    )
    .await;
    let (a, b) = (
        MatrixUser::new(&unique("lim-a")).await,
        MatrixUser::new(&unique("lim-b")).await,
    );
    let (ta, tb) = (a.openid_token().await, b.openid_token().await);
    let http = reqwest::Client::new();
    for _ in 0..3 {
        let r = http
            .get(s.url("/calls"))
            .bearer_auth(&ta)
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200);
    }
    let r = http
        .get(s.url("/calls"))
        .bearer_auth(&ta)
        .send()
        .await
        .unwrap();
    let wait = assert_limited(&r, "user a");
    assert!(wait >= 4, "a token every 5 s: Retry-After {wait}");
    let body = limited_body(r).await;
    assert!(
        body["error"]["message"]
            .as_str()
            .unwrap()
            .contains("this user")
    );
    // The limit holds for the user, whatever the token: a second token of a is limited too.
    let ta2 = a.openid_token().await;
    let r = http
        .get(s.url("/calls"))
        .bearer_auth(&ta2)
        .send()
        .await
        .unwrap();
    assert_limited(&r, "user a, another token");
    let r = http
        .get(s.url("/calls"))
        .bearer_auth(&tb)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200, "user b has its own budget");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_agent_key_past_its_limit_gets_429_and_another_key_does_not() {
    let s = TestServer::start_edited(
        Db::Sqlite,
        with_limits("per_agent_key = { per_sec = 0.2, burst = 3 }"),
    )
    .await;
    let now = now_ms();
    let k1 = apikey::create(s.store(), &s.pepper, s.oracle.clone(), "one", now)
        .await
        .unwrap();
    let k2 = apikey::create(s.store(), &s.pepper, s.oracle.clone(), "two", now)
        .await
        .unwrap();
    let http = reqwest::Client::new();
    let call = format!(
        "{}/key",
        s.url(&format!("/calls/%24nope%40{}", room_name()))
    );
    let ask = |key: &oracle_calls_server::Secret| {
        http.get(&call).bearer_auth(key.dangerous_expose()).send()
    };
    for _ in 0..3 {
        assert_eq!(
            ask(&k1.key).await.unwrap().status(),
            404,
            "authenticated, no such call"
        );
    }
    let r = ask(&k1.key).await.unwrap();
    assert_limited(&r, "key one");
    assert!(
        limited_body(r).await["error"]["message"]
            .as_str()
            .unwrap()
            .contains("API key")
    );
    assert_eq!(
        ask(&k2.key).await.unwrap().status(),
        404,
        "key two has its own budget"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refused_tokens_are_remembered_and_homeserver_lookups_are_bounded_per_address() {
    let s = TestServer::start_edited(
        Db::Sqlite,
        with_limits("token_checks_per_address = { per_sec = 0.05, burst = 5 }"),
    )
    .await;
    let http = reqwest::Client::new();
    let refused = "oracle_calls_openid_lookups_total{outcome=\"refused\"}";
    let list = |token: String| http.get(s.url("/calls")).bearer_auth(token).send();
    // A real user's token, checked once (one lookup of the burst of five).
    let user = MatrixUser::new(&unique("lim-real")).await;
    let token = user.openid_token().await;
    assert_eq!(list(token.clone()).await.unwrap().status(), 200);
    // One made-up token, twenty times: one homeserver lookup, twenty 401s.
    for _ in 0..20 {
        let r = list("syt_made_up_token".into()).await.unwrap();
        assert_eq!(r.status(), 401);
    }
    assert_eq!(metric_of(&s, refused), 1.0, "a refused token is remembered");
    // Distinct made-up tokens: three more lookups (the rest of the burst), then 429s that
    // never reach the homeserver.
    let mut statuses = Vec::new();
    for i in 0..10 {
        let r = list(format!("syt_random_{i}_{}", unique("")))
            .await
            .unwrap();
        statuses.push(r.status().as_u16());
    }
    assert_eq!(statuses[..3], [401; 3], "{statuses:?}");
    assert!(statuses[3..].iter().all(|s| *s == 429), "{statuses:?}");
    assert_eq!(
        metric_of(&s, refused),
        4.0,
        "the homeserver was asked four times for them"
    );
    // The verified token needs no lookup: its user still gets in from the same address, and
    // so does the remembered refusal.
    assert_eq!(list(token).await.unwrap().status(), 200);
    assert_eq!(
        list("syt_made_up_token".into()).await.unwrap().status(),
        401
    );
    assert_eq!(
        metric_of(&s, "oracle_calls_openid_lookups_total{outcome=\"ok\"}"),
        1.0
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_requests_with_one_token_share_one_lookup() {
    let s = TestServer::start(Db::Sqlite).await;
    let user = MatrixUser::new(&unique("lim-flight")).await;
    let token = user.openid_token().await;
    let http = reqwest::Client::new();
    let requests = (0..20).map(|_| http.get(s.url("/calls")).bearer_auth(&token).send());
    for r in futures_util::future::join_all(requests).await {
        assert_eq!(r.unwrap().status(), 200);
    }
    assert_eq!(
        metric_of(&s, "oracle_calls_openid_lookups_total{outcome=\"ok\"}"),
        1.0,
        "twenty concurrent requests, one homeserver lookup"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn token_checks_in_flight_are_capped_and_the_rest_get_503_with_retry_after() {
    // A homeserver that accepts connections and never answers.
    let hole = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let hole_url = format!("http://{}", hole.local_addr().unwrap());
    tokio::spawn(async move {
        let mut held = Vec::new();
        while let Ok((c, _)) = hole.accept().await {
            held.push(c);
        }
    });
    let matrix = stack_var("MATRIX_URL");
    let s = TestServer::start_edited(Db::Sqlite, move |toml| {
        format!(
            "{}\n[limits]\nmax_concurrent_token_checks = 2\ntoken_check_queue_ms = 300\n",
            toml.replace(
                &format!("homeserver_url = \"{matrix}\""),
                &format!("homeserver_url = \"{hole_url}\"")
            )
            .replace(
                "openid_cache_secs = 60",
                "openid_cache_secs = 60\n        request_timeout_secs = 3"
            )
        )
    })
    .await;
    let http = reqwest::Client::new();
    let started = Instant::now();
    let requests = (0..3).map(|i| {
        let http = http.clone();
        let url = s.url("/calls");
        async move {
            let r = http
                .get(url)
                .bearer_auth(format!("syt_hanging_{i}"))
                .send()
                .await
                .unwrap();
            (
                r.status().as_u16(),
                r.headers().get("retry-after").cloned(),
                started.elapsed(),
            )
        }
    });
    let mut results = futures_util::future::join_all(requests).await;
    results.sort_by_key(|r| r.2);
    let (busy, retry, at) = &results[0];
    assert_eq!(*busy, 503, "{results:?}");
    assert_eq!(retry.as_ref().unwrap(), "1");
    assert!(
        *at < Duration::from_millis(2500),
        "refused after the queue wait: {at:?}"
    );
    for (status, _, at) in &results[1..] {
        assert_eq!(*status, 503, "the homeserver never answered: {results:?}");
        assert!(
            *at >= Duration::from_millis(2900),
            "these two held the slots: {at:?}"
        );
    }
    assert_eq!(
        metric_of(&s, "oracle_calls_openid_lookups_total{outcome=\"failed\"}"),
        2.0,
        "only two lookups went out"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn invites_past_the_per_user_room_cap_are_declined() {
    let bot = MatrixUser::new(&unique("oracle")).await;
    let s =
        TestServer::start_with_bot_edited(Db::Sqlite, &bot, with_limits("max_rooms_per_user = 2"))
            .await;
    let user = UserSide::new().await;
    let bot_id = UserId::parse(&bot.user_id).unwrap();
    user.room_with(&bot_id, true).await;
    user.room_with(&bot_id, false).await;
    // The third invite is declined: the bot's membership there ends as "leave".
    let third = user
        .client
        .create_room({
            let mut req = matrix_sdk::ruma::api::client::room::create_room::v3::Request::new();
            req.invite = vec![bot_id.clone()];
            req.is_direct = true;
            req
        })
        .await
        .unwrap();
    let url = format!(
        "{}/_matrix/client/v3/rooms/{}/state/m.room.member/{}",
        stack_var("MATRIX_URL"),
        third.room_id(),
        bot.user_id
    );
    let mut membership = String::new();
    for _ in 0..60 {
        let v: Value = reqwest::Client::new()
            .get(&url)
            .bearer_auth(&user.user.access_token)
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        membership = v["membership"].as_str().unwrap_or_default().to_owned();
        if membership != "invite" {
            break;
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    assert_eq!(membership, "leave", "the bot declined the third room");
    assert_eq!(
        metric_of(&s, "oracle_calls_matrix_invites_total{decision=\"joined\"}"),
        2.0
    );
    assert_eq!(
        metric_of(
            &s,
            "oracle_calls_matrix_invites_total{decision=\"declined_room_cap\"}"
        ),
        1.0
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_undecryptable_call_event_is_given_up_after_the_key_wait_one_wait_per_user() {
    let bot = MatrixUser::new(&unique("oracle")).await;
    let s = TestServer::start_with_bot_edited(Db::Sqlite, &bot, with_limits("key_wait_ms = 2000"))
        .await;
    let user = UserSide::new().await;
    let room = user
        .room_with(&UserId::parse(&bot.user_id).unwrap(), true)
        .await;
    // An event encrypted under a Megolm session nobody ever shared: no key will come.
    let url = format!(
        "{}/_matrix/client/v3/rooms/{}/send/m.room.encrypted/{}",
        stack_var("MATRIX_URL"),
        room.room_id(),
        unique("txn")
    );
    let sent: Value = reqwest::Client::new()
        .put(&url)
        .bearer_auth(&user.user.access_token)
        .json(&json!({
            "algorithm": "m.megolm.v1.aes-sha2",
            "ciphertext": "AwgAEnACgAkLmt6qF84IK++J7UDH2Za1YVchHyprqTqsg",
            "device_id": "NOSUCHDEVICE",
            "sender_key": "9Ny3pBkV1Oj6TNcYvzM6XfLYqgNs3pzQoB0tyhG1zXk",
            "session_id": "X3u2lAbxbtq5V8Rtfx2DDQb8qk1pEBqXRGDRMbbzq0I",
        }))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let call_id = format!("{}@{}", sent["event_id"].as_str().unwrap(), room_name());
    let token = user.user.openid_token().await;
    let started = Instant::now();
    let (first, second) = tokio::join!(sync_call(&s, &token, &call_id), async {
        tokio::time::sleep(Duration::from_millis(500)).await;
        let r = sync_call(&s, &token, &call_id).await;
        (r, started.elapsed())
    });
    let ((status, body), second_at) = second;
    assert_eq!(status, 429, "a second wait of the same user: {body}");
    assert!(
        body["error"]["message"]
            .as_str()
            .unwrap()
            .contains("room key"),
        "{body}"
    );
    assert!(
        second_at < Duration::from_millis(1500),
        "refused at once: {second_at:?}"
    );
    let (status, body) = first;
    let waited = started.elapsed();
    assert_eq!(status, 422, "{body}");
    assert!(
        waited >= Duration::from_millis(1700) && waited < Duration::from_secs(5),
        "gave up after the 2 s key wait: {waited:?}"
    );
    // The wait is over: the next try waits again (and is not refused).
    let (status, _) = sync_call(&s, &token, &call_id).await;
    assert_eq!(status, 422);
}

/// `toml` with the oracle's DID replaced by `did` (a second server of the same oracle).
fn of_oracle(toml: &str, did: &Did) -> String {
    let start = toml.find("did = \"").unwrap() + "did = \"".len();
    let end = start + toml[start..].find('"').unwrap();
    format!("{}{}{}", &toml[..start], did.as_str(), &toml[end..])
}

/// Two servers of one oracle on one PostgreSQL allow a user what one server would: a user's
/// requests spread over both are limited by one shared bucket (`limits.cluster_wide`, the
/// per-user limit by default), and a refusal from either says how long to wait for the
/// bucket both take from. With the buckets kept per process (`cluster_wide = []`) the same
/// requests get twice as far: that difference is what the sharing buys.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_servers_of_one_oracle_share_a_users_budget_on_postgres() {
    let user = MatrixUser::new(&unique("lim-shared")).await;
    let token = user.openid_token().await;
    let http = reqwest::Client::new();
    for (cluster_wide, allowed) in [("", 3), ("cluster_wide = []", 6)] {
        let limits =
            format!("[limits]\nper_user = {{ per_sec = 0.1, burst = 3 }}\n{cluster_wide}\n");
        let l = limits.clone();
        let a = TestServer::start_edited(Db::Postgres, move |t| format!("{t}\n{l}")).await;
        let did = a.oracle.clone();
        let b = TestServer::start_edited(Db::Postgres, move |t| {
            format!("{}\n{limits}", of_oracle(&t, &did))
        })
        .await;
        assert_eq!(b.state.config().oracle.did, a.oracle);
        let mut ok = 0;
        for i in 0..8 {
            let s = if i % 2 == 0 { &a } else { &b };
            let r = http
                .get(s.url("/calls"))
                .bearer_auth(&token)
                .send()
                .await
                .unwrap();
            if r.status() == 200 {
                ok += 1;
                continue;
            }
            let wait = assert_limited(&r, &format!("request {i} ({cluster_wide:?})"));
            // One token every 10 s, and the bucket was just emptied.
            assert!((9..=10).contains(&wait), "Retry-After {wait}");
            assert!(
                limited_body(r).await["error"]["message"]
                    .as_str()
                    .unwrap()
                    .contains("this user")
            );
        }
        assert_eq!(ok, allowed, "requests let through with {cluster_wide:?}");
    }
}

/// The agents' limit is shared when `limits.cluster_wide` names it: takes another server of
/// the oracle made from the key's shared bucket (here made through the store, as that
/// server's requests would) leave this server nothing to give, though its own bucket is full.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_agent_keys_budget_is_shared_when_configured() {
    let s = TestServer::start_edited(Db::Postgres, |t| {
        format!(
            "{t}\n[limits]\nper_agent_key = {{ per_sec = 0.2, burst = 3 }}\n\
             cluster_wide = [\"per_user\", \"per_agent_key\"]\n"
        )
    })
    .await;
    let now = now_ms();
    let key = apikey::create(s.store(), &s.pepper, s.oracle.clone(), "shared", now)
        .await
        .unwrap();
    let other = apikey::create(s.store(), &s.pepper, s.oracle.clone(), "other", now)
        .await
        .unwrap();
    let scope = format!("per_agent_key:{}", s.oracle.as_str());
    for _ in 0..3 {
        let taken = s
            .store()
            .take_shared_token(&scope, &key.record.key_id, 0.2, 3)
            .await
            .unwrap();
        assert_eq!(taken, Ok(()));
    }
    let http = reqwest::Client::new();
    let call = format!(
        "{}/key",
        s.url(&format!("/calls/%24nope%40{}", room_name()))
    );
    let r = http
        .get(&call)
        .bearer_auth(key.key.dangerous_expose())
        .send()
        .await
        .unwrap();
    let wait = assert_limited(&r, "the key's shared bucket is empty");
    assert!((4..=5).contains(&wait), "Retry-After {wait}");
    let r = http
        .get(&call)
        .bearer_auth(other.key.dangerous_expose())
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 404, "another key has its own shared bucket");
}

/// A shared bucket, taken from by two servers' connection pools at once, gives out exactly its
/// burst; it refills at its rate on the database's clock, and once it would be full again its
/// row is swept. On SQLite (one server) there is no shared bucket to take from.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_shared_bucket_gives_its_burst_refills_and_is_swept_once_full() {
    let url = stack_var("DATABASE_URL");
    let (one, two) = (
        Store::connect(&url).await.unwrap(),
        Store::connect(&url).await.unwrap(),
    );
    let scope = unique("test-scope:");
    // 16 takes at once, 8 from each pool, of a bucket of 5 refilled at 2/s.
    let takes = (0..16).map(|i| {
        let store = if i % 2 == 0 { one.clone() } else { two.clone() };
        let scope = scope.clone();
        async move { store.take_shared_token(&scope, "u", 2.0, 5).await.unwrap() }
    });
    let results = futures_util::future::join_all(takes).await;
    let taken = results.iter().filter(|r| r.is_ok()).count();
    assert_eq!(taken, 5, "{results:?}");
    for wait in results.iter().filter_map(|r| r.err()) {
        assert!(wait <= Duration::from_millis(500), "{wait:?}");
    }
    // The next token comes within 0.5 s on the database's clock.
    let wait = one
        .take_shared_token(&scope, "u", 2.0, 5)
        .await
        .unwrap()
        .unwrap_err();
    tokio::time::sleep(wait + Duration::from_millis(50)).await;
    assert_eq!(
        two.take_shared_token(&scope, "u", 2.0, 5).await.unwrap(),
        Ok(())
    );
    assert!(one.shared_bucket(&scope, "u").await.unwrap().is_some());
    // Full again 2.5 s after the last take (5 tokens at 2/s): then the sweep removes it.
    assert_eq!(one.sweep_shared_buckets().await.map(|_| ()).unwrap(), ());
    assert!(
        one.shared_bucket(&scope, "u").await.unwrap().is_some(),
        "not full yet"
    );
    tokio::time::sleep(Duration::from_millis(2600)).await;
    assert!(one.sweep_shared_buckets().await.unwrap() >= 1);
    assert_eq!(one.shared_bucket(&scope, "u").await.unwrap(), None);
    // A bucket of another key, or another scope, is another bucket.
    assert_eq!(
        one.take_shared_token(&scope, "v", 2.0, 1).await.unwrap(),
        Ok(())
    );
    assert!(
        one.take_shared_token(&scope, "v", 2.0, 1)
            .await
            .unwrap()
            .is_err()
    );
    assert_eq!(
        one.take_shared_token(&unique("test-scope:"), "v", 2.0, 1)
            .await
            .unwrap(),
        Ok(())
    );

    let dir = crate::support::temp_dir();
    let sqlite = Store::connect(&format!(
        "sqlite://{}?mode=rwc",
        dir.0.join("s.sqlite3").display()
    ))
    .await
    .unwrap();
    assert!(sqlite.take_shared_token(&scope, "u", 2.0, 5).await.is_err());
    assert_eq!(sqlite.sweep_shared_buckets().await.unwrap(), 0);
}

/// A metric's value read from the server's registry (not over HTTP: `/metrics` is
/// rate-limited like every route), 0 when absent.
fn metric_of(s: &TestServer, name: &str) -> f64 {
    s.state
        .metrics()
        .render()
        .lines()
        .find_map(|l| l.strip_prefix(name).and_then(|rest| rest.strip_prefix(' ')))
        .map_or(0.0, |v| v.trim().parse().unwrap())
}

//! Several oracle servers on one PostgreSQL database (issue 16): one Matrix device per server
//! under the one bot user, one leader elected through an advisory lock, webhooks handled once
//! across servers, no stale call status anywhere, and the leader killed (SIGKILL, a real
//! process) during a live call.

use std::process::Stdio;
use std::time::{Duration, Instant};

use matrix_sdk::ruma::{OwnedUserId, UserId};
use oracle_calls_proto::{CallId, CallStatus};
use oracle_calls_server::{Config, Secrets};
use serde_json::{Value, json};

use crate::livekit::webhook_auth;
use crate::matrix::{UserSide, now_ms, sync_call};
use crate::support::{
    Db, MatrixUser, TempDir, TestServer, answer, config_toml, metric, read_file, stack_var,
    temp_dir, unique,
};

/// What the child process prints once it listens, followed by its base URL.
const LISTENING: &str = "OC_CLUSTER_CHILD_LISTENING ";
/// The child's configuration file (the environment names it; its secrets come through the
/// environment too, never argv).
const CHILD_CONFIG: &str = "OC_CLUSTER_CHILD_CONFIG";

/// Not a test: the server process that [`kill_the_leader_during_a_live_call`] starts (this
/// test binary run again with `--ignored --exact`) and kills with SIGKILL.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "run as a child process by cluster::kill_the_leader_during_a_live_call"]
async fn child_server_process() {
    let path = std::env::var(CHILD_CONFIG).expect("run by the cluster kill test");
    let _ = tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
        .with_writer(std::io::stderr)
        .try_init();
    let config = Config::from_toml(&std::fs::read_to_string(path).unwrap()).unwrap();
    let secrets = Secrets::from_env(|k| std::env::var(k).ok()).unwrap();
    let state = oracle_calls_server::build_state(config, secrets)
        .await
        .unwrap();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    println!("{LISTENING}http://{}", listener.local_addr().unwrap());
    oracle_calls_server::serve_on(listener, state, std::future::pending())
        .await
        .unwrap();
}

/// One oracle's configuration, shared by its servers: same DID, bot user, database and
/// secrets; each server gets its own data directory (and so its own Matrix device).
struct Oracle {
    bot: MatrixUser,
    oracle: oracle_calls_proto::Did,
    secrets: Secrets,
}

impl Oracle {
    async fn new() -> Self {
        let bot = MatrixUser::new(&unique("oracle")).await;
        let oracle = oracle_calls_proto::Did::parse(&unique("did:ixo:oracle")).unwrap();
        let secrets = crate::support::secrets(Some(bot.password.clone()));
        Self {
            bot,
            oracle,
            secrets,
        }
    }

    /// The TOML of one server on `dir`: PostgreSQL, the backlog looked at every 2 s (so that a
    /// second writer of an edit would show within the test).
    fn toml(&self, dir: &std::path::Path) -> String {
        config_toml(&self.oracle, &self.bot.user_id, dir, Db::Postgres).replace(
            "openid_cache_secs = 60",
            "openid_cache_secs = 60\n        mirror_retry_secs = 2",
        )
    }

    /// A server in this process.
    async fn in_process(&self) -> TestServer {
        let dir = temp_dir();
        let config = Config::from_toml(&self.toml(&dir.0)).unwrap();
        let state = oracle_calls_server::build_state(config, self.secrets.clone())
            .await
            .unwrap();
        TestServer::serve_state(state, self.secrets.api_key_pepper.clone(), dir).await
    }

    /// A server in a child process (killed when the handle drops).
    async fn child(&self) -> Child {
        let dir = temp_dir();
        let path = dir.0.join("server.toml");
        std::fs::write(&path, self.toml(&dir.0)).unwrap();
        // With RUST_LOG set, its log goes to a file that outlives the test, for a failure.
        let log = if std::env::var_os("RUST_LOG").is_some() {
            let path = std::env::temp_dir().join(unique("oc-cluster-child-") + ".log");
            eprintln!("cluster: the child server logs to {}", path.display());
            Stdio::from(std::fs::File::create(&path).unwrap())
        } else {
            Stdio::null()
        };
        let mut cmd = std::process::Command::new(std::env::current_exe().unwrap());
        cmd.args([
            "cluster::child_server_process",
            "--exact",
            "--ignored",
            "--nocapture",
        ])
        .env(CHILD_CONFIG, &path)
        .env(
            "ORACLE_CALLS_LIVEKIT_API_SECRET",
            read_file(&stack_var("LIVEKIT_API_SECRET_FILE")),
        )
        .env(
            "ORACLE_CALLS_API_KEY_PEPPER",
            self.secrets.api_key_pepper.dangerous_expose(),
        )
        .env("ORACLE_CALLS_MATRIX_PASSWORD", &self.bot.password)
        .stdout(Stdio::piped())
        .stderr(log);
        let mut process = cmd.spawn().unwrap();
        let stdout = process.stdout.take().unwrap();
        let (tx, rx) = std::sync::mpsc::channel();
        // Reads its stdout to the end, so that it never blocks on a full pipe.
        std::thread::spawn(move || {
            for line in std::io::BufRead::lines(std::io::BufReader::new(stdout)) {
                let Ok(line) = line else { break };
                if let Some(base) = line.strip_prefix(LISTENING) {
                    let _ = tx.send(base.to_owned());
                }
            }
        });
        let base = tokio::task::spawn_blocking(move || rx.recv_timeout(Duration::from_secs(60)))
            .await
            .unwrap()
            .expect("the child server did not listen within 60 s");
        Child {
            process,
            base,
            _dir: dir,
        }
    }
}

struct Child {
    process: std::process::Child,
    base: String,
    _dir: TempDir,
}

impl Drop for Child {
    fn drop(&mut self) {
        let _ = self.process.kill();
        let _ = self.process.wait();
    }
}

impl Child {
    /// SIGKILL, and waits for the process to be gone.
    fn kill(&mut self) {
        self.process.kill().unwrap();
        self.process.wait().unwrap();
    }

    fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base)
    }
}

async fn get_json(url: &str) -> (u16, Value) {
    answer(reqwest::get(url).await.unwrap()).await
}

/// `oracle_calls_leader` at `base`.
async fn leads(base: &str) -> bool {
    let text = reqwest::get(format!("{base}/metrics"))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    text.lines().any(|l| l.trim() == "oracle_calls_leader 1")
}

/// The senders of the `m.replace` edits of `event`, as Alice's homeserver lists them.
async fn edits_of(alice: &UserSide, room: &matrix_sdk::Room, event: &str) -> Vec<String> {
    let rel: Value = reqwest::Client::new()
        .get(format!(
            "{}/_matrix/client/v1/rooms/{}/relations/{}/m.replace",
            stack_var("MATRIX_URL"),
            room.room_id(),
            event
        ))
        .bearer_auth(&alice.user.access_token)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    rel["chunk"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["sender"].as_str().unwrap().to_owned())
        .collect()
}

/// Waits until `event` has `n` edits, all by the bot, and then a little longer to see that
/// no other comes (the backlog runs every 2 s).
async fn assert_edits(alice: &UserSide, room: &matrix_sdk::Room, event: &str, bot: &str, n: usize) {
    let mut got = Vec::new();
    for _ in 0..100 {
        got = edits_of(alice, room, event).await;
        if got.len() >= n {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(got, vec![bot; n], "the status edits of {event}");
    tokio::time::sleep(Duration::from_secs(5)).await;
    assert_eq!(
        edits_of(alice, room, event).await.len(),
        n,
        "no edit written twice"
    );
}

/// Two servers of one oracle on one PostgreSQL (one in a child process): one leads, both
/// publish both devices, a call event syncs through either; the leader is killed with SIGKILL
/// during a live call: the other leads within 5 s, accepts a new invite, answers every route,
/// and the live call ends cleanly with each status edit written once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_the_leader_during_a_live_call() {
    let o = Oracle::new().await;
    let http = reqwest::Client::new();

    // (a) The first server leads; the second, started after, does not.
    let mut a = o.child().await;
    let t0 = Instant::now();
    while !leads(&a.base).await {
        assert!(t0.elapsed() < Duration::from_secs(10), "A never led");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let b = o.in_process().await;
    for _ in 0..10 {
        assert!(leads(&a.base).await, "A keeps the lead");
        assert!(!b.state.is_leader(), "exactly one server leads");
        assert_eq!(metric(&b, "oracle_calls_leader").await, 0.0);
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let (st, wk_a) = get_json(&a.url("/.well-known/oracle-calls")).await;
    assert_eq!(st, 200);
    let (_, wk_b) = get_json(&b.url("/.well-known/oracle-calls")).await;
    let devices = wk_a["matrixDevices"].as_array().unwrap().clone();
    assert_eq!(devices.len(), 2, "{wk_a}");
    assert_eq!(
        wk_b["matrixDevices"],
        json!(devices),
        "both publish both devices"
    );
    let b_device = b.state.matrix().unwrap().client().device_id().unwrap();
    assert!(devices.iter().any(|d| d["deviceId"] == b_device.as_str()));

    // (b) Alice's call events sync through either server (the leader, A, joined her room).
    let bot: OwnedUserId = UserId::parse(o.bot.user_id.as_str()).unwrap();
    let alice = UserSide::new().await;
    let room = alice.room_with(&bot, true).await;
    let token = alice.user.openid_token().await;
    let oracle = o.oracle.as_str();
    let place = |lk: String| {
        let (alice, room) = (&alice, &room);
        async move {
            let ev = alice
                .send(room, &alice.content(oracle, &lk, now_ms()))
                .await;
            (ev.clone(), format!("{ev}@{lk}"))
        }
    };
    let (ev_b, call_b) = place(crate::support::room_name()).await;
    let (st, body) = sync_call(&b, &token, &call_b).await;
    assert_eq!(
        (st, body["status"].as_str()),
        (200, Some("active")),
        "{body}"
    );
    let (ev_a, call_a) = place(crate::support::room_name()).await;
    let seg = |c: &str| CallId::parse(c).unwrap().to_path_segment();
    let (st, body) = answer(
        http.post(a.url(&format!("/calls/{}/sync", seg(&call_a))))
            .bearer_auth(&token)
            .json(&json!({}))
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(
        (st, body["status"].as_str()),
        (200, Some("active")),
        "{body}"
    );
    // Each activation is written to Matrix once, by the server that made it.
    assert_edits(&alice, &room, &ev_a, bot.as_str(), 1).await;
    assert_edits(&alice, &room, &ev_b, bot.as_str(), 1).await;

    // (d) Kill the leader (SIGKILL: no shutdown, its sockets closed by the kernel).
    let killed = Instant::now();
    a.kill();
    while !b.state.is_leader() {
        assert!(
            killed.elapsed() < Duration::from_secs(5),
            "B did not take the lead within 5 s"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let took = killed.elapsed();
    eprintln!("cluster: B led {took:?} after A was killed");
    assert_eq!(metric(&b, "oracle_calls_leader").await, 1.0);
    assert!(
        reqwest::get(a.url("/healthz")).await.is_err(),
        "A is really gone"
    );

    // (e) Every route answers on B while A is down.
    let (st, _) = get_json(&b.url("/healthz")).await;
    assert_eq!(st, 200);
    let (st, wk) = get_json(&b.url("/.well-known/oracle-calls")).await;
    assert_eq!(
        (st, &wk["matrixDevices"]),
        (200, &json!(devices)),
        "the dead server's device stays listed"
    );
    let (st, _) = get_json(&b.url("/openapi.json")).await;
    assert_eq!(st, 200);
    let (st, list) = answer(
        http.get(b.url("/calls"))
            .bearer_auth(&token)
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(st, 200);
    let statuses: Vec<&str> = list["calls"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["callStatus"].as_str().unwrap())
        .collect();
    assert_eq!(statuses, ["active", "active"], "no call lost: {list}");
    let (st, again) = sync_call(&b, &token, &call_a).await;
    assert_eq!(
        (st, again["status"].as_str()),
        (200, Some("active")),
        "A's call syncs again through B: {again}"
    );
    let key = oracle_calls_server::apikey::create(
        b.store(),
        &o.secrets.api_key_pepper,
        o.oracle.clone(),
        "agent",
        now_ms(),
    )
    .await
    .unwrap();
    let (st, k) = answer(
        http.get(b.url(&format!("/calls/{}/key", seg(&call_a))))
            .bearer_auth(key.key.dangerous_expose())
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(
        (st, k["encryptionKey"].as_str()),
        (200, Some("v1.hpke-p256.QUJD"))
    );
    let (st, _) = answer(
        http.get(b.url("/prekeys"))
            .bearer_auth(key.key.dangerous_expose())
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(st, 200);

    // A new invite is accepted by the new leader.
    let bob = UserSide::new().await;
    let _bob_room = bob.room_with(&bot, true).await;

    // The live call A activated ends through B: the room is deleted (nothing half-open) and
    // the ended edit is written once (by B), after A's active edit.
    let (st, body) = answer(
        http.post(b.url(&format!("/calls/{}/update", seg(&call_a))))
            .bearer_auth(&token)
            .json(&json!({"callStatus": "ended"}))
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(
        (st, body["callStatus"].as_str()),
        (200, Some("ended")),
        "{body}"
    );
    let room_a = CallId::parse(&call_a)
        .unwrap()
        .room_name()
        .as_str()
        .to_owned();
    assert!(
        !b.state
            .livekit()
            .list_rooms()
            .await
            .unwrap()
            .contains(&room_a),
        "the ended call's LiveKit room is gone"
    );
    assert_edits(&alice, &room, &ev_a, bot.as_str(), 2).await;
    let id_a = CallId::parse(&call_a).unwrap();
    assert_eq!(b.store().unmirrored_count(&o.oracle).await.unwrap(), 0);
    assert_eq!(
        b.store().call(&id_a).await.unwrap().unwrap().status,
        CallStatus::Ended
    );
    b.state.matrix().unwrap().stop();
}

/// A metric summed over two servers.
async fn count(a: &TestServer, b: &TestServer, name: &str) -> f64 {
    metric(a, name).await + metric(b, name).await
}

/// The same signed webhook delivered to two servers on one PostgreSQL at once is acted on
/// once; and a server that read a call never serves a status older than the store's (no call
/// cache on PostgreSQL), even when another server changed it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_webhook_delivered_to_two_servers_is_handled_once() {
    let a = TestServer::start(Db::Postgres).await;
    let b = TestServer::start(Db::Postgres).await;
    let secret = read_file(&stack_var("LIVEKIT_API_SECRET_FILE"));
    let key = stack_var("LIVEKIT_API_KEY");
    let http = reqwest::Client::new();
    for round in 0..5 {
        let id = a.seed_call("@u:localhost", "s", &a.oracle).await;
        // B reads the call first (a cache, if there were one, would keep this status).
        assert_eq!(
            b.store().call(&id).await.unwrap().unwrap().status,
            CallStatus::Pending
        );
        let body = json!({"event": "room_finished",
            "room": {"sid": "RM_x", "name": id.room_name().as_str(), "metadata": id.as_str()},
            "id": unique("EV_"), "createdAt": "1700000000"})
        .to_string();
        let auth = webhook_auth(body.as_bytes(), &secret, &key);
        let post = |s: &TestServer| {
            http.post(s.url("/livekit/webhook"))
                .header("content-type", "application/webhook+json")
                .header("authorization", auth.clone())
                .body(body.clone())
                .send()
        };
        let (ra, rb) = tokio::join!(post(&a), post(&b));
        assert_eq!(
            (ra.unwrap().status().as_u16(), rb.unwrap().status().as_u16()),
            (200, 200)
        );
        let n = f64::from(round + 1);
        assert_eq!(
            count(&a, &b, r#"oracle_calls_call_events_total{event="webhook"}"#).await,
            n,
            "handled once per event"
        );
        assert_eq!(
            count(
                &a,
                &b,
                r#"oracle_calls_call_events_total{event="webhook_replayed"}"#
            )
            .await,
            2.0 * n - 1.0,
            "the other delivery (and each earlier round's replay) counted as replays"
        );
        assert_eq!(
            count(&a, &b, r#"oracle_calls_call_events_total{event="ended"}"#).await,
            n,
            "the call ended once"
        );
        // B never saw the webhook's effect through its own writes, yet reads it.
        let rec = b.store().call(&id).await.unwrap().unwrap();
        assert_eq!(
            (rec.status, rec.reason),
            (
                CallStatus::Ended,
                Some(oracle_calls_proto::CallReason::RoomFinished)
            )
        );
        // A replay to either server later changes nothing.
        let (st, _) = answer(post(&b).await.unwrap()).await;
        assert_eq!(st, 200);
        assert_eq!(
            count(&a, &b, r#"oracle_calls_call_events_total{event="webhook"}"#).await,
            n
        );
    }
    // On SQLite a server is alone: it leads.
    let lone = TestServer::start(Db::Sqlite).await;
    assert!(lone.state.is_leader());
    assert_eq!(metric(&lone, "oracle_calls_leader").await, 1.0);
}

/// The leader's lock connection is cut on the database side (`pg_terminate_backend`, which
/// frees the lock at once, before the leader can notice): the old leader stops, the lead moves
/// or comes back within 5 s, and at no sample (every 5 ms) do two servers lead at once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cut_lock_connection_never_makes_two_leaders() {
    use oracle_calls_server::leader::{Leadership, lock_key};
    use sqlx::Connection as _;
    let url = stack_var("DATABASE_URL");
    let oracle = oracle_calls_proto::Did::parse(&unique("did:ixo:oracle")).unwrap();
    let cluster = oracle_calls_server::config::ClusterConfig::default();
    let gauge = || prometheus::IntGauge::new("leader", "test").unwrap();
    let elect = || {
        Leadership::elect(
            oracle_calls_server::Secret::new(url.clone()),
            &oracle,
            &cluster,
            gauge(),
        )
    };
    let one = elect();
    let t0 = Instant::now();
    while !one.is_leader() {
        assert!(t0.elapsed() < Duration::from_secs(5), "no leader");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let two = elect();
    let sample = |secs: u64| {
        let (one, two) = (one.clone(), two.clone());
        async move {
            let mut seen = Vec::new();
            let end = Instant::now() + Duration::from_secs(secs);
            while Instant::now() < end {
                let now = (one.is_leader(), two.is_leader());
                assert!(!(now.0 && now.1), "two leaders at once");
                if seen.last() != Some(&now) {
                    seen.push(now);
                }
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
            seen
        }
    };
    assert_eq!(sample(3).await, [(true, false)], "the second never leads");

    // Cut the leader's lock connection from the database side.
    let key = u64::from_be_bytes(lock_key(&oracle).to_be_bytes());
    sqlx::any::install_default_drivers();
    let mut admin = sqlx::AnyConnection::connect(&url).await.unwrap();
    let cut = sqlx::query(
        "SELECT pg_terminate_backend(pid) AS done FROM pg_locks
         WHERE locktype = 'advisory' AND granted AND classid::bigint = $1 AND objid::bigint = $2",
    )
    .bind(i64::try_from(key >> 32).unwrap())
    .bind(i64::try_from(key & 0xffff_ffff).unwrap())
    .fetch_all(&mut admin)
    .await
    .unwrap();
    assert_eq!(cut.len(), 1, "exactly one holder of the oracle's lock");
    let cut_at = Instant::now();
    let seen = sample(6).await;
    eprintln!("cluster: leaders after the cut, in order: {seen:?}");
    assert!(
        seen.contains(&(false, false)),
        "the old leader stopped before anyone led again: {seen:?}"
    );
    let last = *seen.last().unwrap();
    assert!(last.0 ^ last.1, "someone leads again: {seen:?}");
    assert!(cut_at.elapsed() >= Duration::from_secs(6));

    // A leader that stops hands over to the other.
    let (leader, other) = if last.0 { (&one, &two) } else { (&two, &one) };
    leader.stop();
    let stopped = Instant::now();
    while !other.is_leader() {
        assert!(
            stopped.elapsed() < Duration::from_secs(5),
            "no hand-over within 5 s"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    eprintln!(
        "cluster: hand-over after a stop took {:?}",
        stopped.elapsed()
    );
    assert!(!leader.is_leader());
    other.stop();
}

/// The device registry: idempotent per device, per oracle and bot user, first registered
/// first; a known device id that comes back with another key is refused. Webhook claims:
/// one winner, released after a failure, forgotten once the signature expired.
async fn shared_store_records(db: Db) {
    use oracle_calls_proto::BotDevice;
    let s = TestServer::start(db).await;
    let store = s.store();
    let oracle = &s.oracle;
    let dev = |id: &str, key: &str| BotDevice {
        device_id: id.to_owned(),
        ed25519: key.to_owned(),
    };
    let (one, two) = (dev("DEVONE", "key-one"), dev("DEVTWO", "key-two"));
    store
        .register_bot_device(oracle, "@oracle:localhost", &one, 1)
        .await
        .unwrap();
    store
        .register_bot_device(oracle, "@oracle:localhost", &two, 2)
        .await
        .unwrap();
    // A restart of the first server: nothing changes but its start time.
    store
        .register_bot_device(oracle, "@oracle:localhost", &one, 3)
        .await
        .unwrap();
    assert_eq!(
        store
            .bot_devices(oracle, "@oracle:localhost")
            .await
            .unwrap(),
        [one.clone(), two.clone()]
    );
    let err = store
        .register_bot_device(oracle, "@oracle:localhost", &dev("DEVONE", "other-key"), 4)
        .await
        .unwrap_err();
    assert!(
        matches!(&err, oracle_calls_server::Error::Config(m) if m.contains("another Ed25519 key")),
        "{err}"
    );
    assert_eq!(
        store
            .bot_devices(oracle, "@oracle:localhost")
            .await
            .unwrap(),
        [one.clone(), two.clone()],
        "the refused key is not stored"
    );
    assert!(
        store
            .bot_devices(oracle, "@otherbot:localhost")
            .await
            .unwrap()
            .is_empty()
    );
    // The server without a bot publishes the devices registered for its oracle.
    let (st, wk) = answer(
        reqwest::get(s.url("/.well-known/oracle-calls"))
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(
        (st, &wk["matrixDevices"]),
        (
            200,
            &json!([{"deviceId": "DEVONE", "ed25519": "key-one"},
                {"deviceId": "DEVTWO", "ed25519": "key-two"}])
        )
    );

    let id = unique("EV_");
    assert!(store.claim_webhook(&id, 100, 10).await.unwrap());
    assert!(!store.claim_webhook(&id, 100, 50).await.unwrap(), "claimed");
    store.release_webhook(&id).await.unwrap();
    assert!(
        store.claim_webhook(&id, 100, 60).await.unwrap(),
        "released after a failure: the retry counts"
    );
    assert!(!store.claim_webhook(&id, 100, 100).await.unwrap());
    assert!(
        store.claim_webhook(&id, 300, 101).await.unwrap(),
        "past its signature's life the claim is gone"
    );
}
crate::support::both_backends!(
    the_shared_store_records_devices_and_webhook_claims,
    shared_store_records
);

/// The re-dispatch count lives with the call in the database, so the servers on it share one
/// `max_redispatches`: racing tries (on the pool's several connections) count exactly to it.
async fn redispatches_are_counted_per_call_across_servers(db: Db) {
    let s = TestServer::start(db).await;
    let store = s.store();
    let id = s
        .seed_call("@did-ixo-user1:localhost", "sess-redispatch", &s.oracle)
        .await;
    let other = s
        .seed_call("@did-ixo-user1:localhost", "sess-other", &s.oracle)
        .await;
    // Five racing tries against a limit of three: exactly three counts, 1 to 3.
    let tries = (0..5).map(|_| store.count_redispatch(&id, 3));
    let mut got: Vec<u32> = futures_util::future::join_all(tries)
        .await
        .into_iter()
        .filter_map(|r| r.unwrap())
        .collect();
    got.sort_unstable();
    assert_eq!(got, [1, 2, 3]);
    // Past the limit nothing is counted; a higher limit (another server's setting) goes on
    // from the same count.
    assert_eq!(store.count_redispatch(&id, 3).await.unwrap(), None);
    assert_eq!(store.count_redispatch(&id, 4).await.unwrap(), Some(4));
    // Another call has its own count; an unknown call has none.
    assert_eq!(store.count_redispatch(&other, 3).await.unwrap(), Some(1));
    let unknown =
        oracle_calls_proto::CallId::parse("$nope@oc-00000000000000000000000000000000").unwrap();
    assert_eq!(store.count_redispatch(&unknown, 3).await.unwrap(), None);
}
crate::support::both_backends!(
    the_redispatch_count_is_shared_by_the_servers,
    redispatches_are_counted_per_call_across_servers
);

//! Faults of the servers behind a live call (issue 16): Redis (LiveKit's multi-node bus)
//! and PostgreSQL (the oracle servers' shared store, where their leader lock lives) are
//! stopped and started again while an end-to-end encrypted echo call runs. Each test
//! asserts that the call keeps its media during and after, that nothing is left half-open
//! (every call ends `ended` in the store and its LiveKit room goes away), and that new calls
//! work once the server is back, and prints how long each step took.
//!
//! They restart servers, so they run on a PRIVATE stack (two LiveKit nodes on Redis,
//! PostgreSQL, Synapse) of their own: the default stack's ports + 600, state in
//! `$TMPDIR/oracle-calls-faults-stack` (or `ORACLE_CALLS_FAULTS_STACK_DIR`), brought up by
//! the test through `scripts/stack up` and stopped again at its end (`scripts/stack down`),
//! so the suites on the shared stack are not disturbed. One test function runs both faults
//! in turn, so the stack goes up and down once.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use oracle_calls_client::{Call, CallEvent, OracleClient};
use oracle_calls_lab::local::{
    Db, DeployOptions, Deployment, ServerHandle, Stack, echo_envelope, unique_hex,
};
use oracle_calls_lab::speech;
use oracle_calls_proto::{CallId, CallStatus, CallType};

/// How far the private stack's ports are from the default stack's.
const PORT_OFFSET: u16 = 600;

/// The private stack's settings: the default ports + [`PORT_OFFSET`], two LiveKit nodes.
fn private_stack_env() -> Vec<(&'static str, String)> {
    let dir = std::env::var_os("ORACLE_CALLS_FAULTS_STACK_DIR").map_or_else(
        || std::env::temp_dir().join("oracle-calls-faults-stack"),
        PathBuf::from,
    );
    let port = |default: u16| (default + PORT_OFFSET).to_string();
    vec![
        ("STACK_DIR", dir.display().to_string()),
        ("STACK_MATRIX_PORT", port(18008)),
        ("STACK_LIVEKIT_PORT", port(17880)),
        ("STACK_LIVEKIT_UDP_PORT", port(17882)),
        ("STACK_PG_PORT", port(15432)),
        ("STACK_SERVER_PORT", port(18080)),
        ("STACK_REDIS_PORT", port(16379)),
        ("STACK_TURN_PORT", port(13478)),
        ("STACK_LIVEKIT_NODES", "2".to_owned()),
    ]
}

/// The private stack; stopped when dropped (also when the test fails half-way).
struct PrivateStack(Stack);

impl PrivateStack {
    fn up() -> Self {
        let env = private_stack_env();
        let pairs: Vec<(&str, &str)> = env.iter().map(|(k, v)| (*k, v.as_str())).collect();
        let t0 = Instant::now();
        let stack = Stack::up_with_env(&pairs).unwrap();
        eprintln!("private stack up in {:.1} s", t0.elapsed().as_secs_f64());
        Self(stack)
    }

    /// `scripts/stack stop SERVICE`, and the time it took.
    fn stop(&self, service: &str) -> Duration {
        let t0 = Instant::now();
        self.0.run(&["stop", service]).unwrap();
        t0.elapsed()
    }

    /// `scripts/stack start SERVICE` (returns once it is healthy), and the time it took.
    fn start(&self, service: &str) -> Duration {
        let t0 = Instant::now();
        self.0.run(&["start", service]).unwrap();
        t0.elapsed()
    }
}

impl Drop for PrivateStack {
    fn drop(&mut self) {
        if let Err(e) = self.0.run(&["down"]) {
            eprintln!("stopping the private stack: {e:#}");
        }
    }
}

fn init_logs() {
    oracle_calls_test_support::init_test_logs("warn,oracle_calls_server=info");
}

fn temp_dir() -> PathBuf {
    let d = std::env::temp_dir().join(format!("oc-faults-{}", unique_hex(6)));
    std::fs::create_dir_all(&d).unwrap();
    d
}

/// A deployment on PostgreSQL whose server listens where the stack's LiveKit sends webhooks.
async fn deployment(stack: &Stack) -> Deployment {
    let url = stack.get("LIVEKIT_WEBHOOK_URL").unwrap();
    let port: u16 = url
        .trim_start_matches("http://127.0.0.1:")
        .split('/')
        .next()
        .unwrap()
        .parse()
        .unwrap();
    let mut opts = DeployOptions::new(temp_dir());
    opts.db = Db::Postgres;
    opts.listen = SocketAddr::from(([127, 0, 0, 1], port));
    Deployment::start(stack.clone(), opts).await.unwrap()
}

/// The live call's microphone says `secs` of speech without a pause, in the background.
/// (Continuous on purpose: after a pause of the microphone the echo of the next words is
/// mostly lost on this client, faults or not; see the report in docs/BENCHMARKS.md.)
fn keep_talking(call: &Call, secs: f64) -> tokio::task::JoinHandle<()> {
    let mic = call.microphone();
    let pcm = speech::synthesize(secs, 7);
    tokio::spawn(async move {
        let _ = mic.play(&pcm).await;
    })
}

/// Seconds of loud samples (over 1000) in 2 s of the speech the microphone says: what a
/// window hears when the echo comes back whole.
fn loud_per_window() -> f64 {
    let pcm = speech::synthesize(20.0, 7);
    pcm.iter().filter(|s| s.unsigned_abs() > 1000).count() as f64 / 48_000.0 / 10.0
}

/// Listens to the live call for 2 s; returns the seconds of loud echo heard (samples over
/// 1000 at 48 kHz). Signalling trouble (reconnecting, the oracle leaving, the call ending)
/// is printed, prefixed with `what`, and counted in `trouble`.
async fn listen_noting(call: &mut Call, what: &str, trouble: &mut u32) -> f64 {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(2);
    let mut loud = 0usize;
    while let Ok(Some(ev)) = tokio::time::timeout_at(deadline, call.next_event()).await {
        match ev {
            CallEvent::OracleAudio { pcm } => {
                loud += pcm.iter().filter(|s| s.unsigned_abs() > 1000).count();
            }
            CallEvent::DecryptionFailed { identity, failures } => {
                panic!("{failures} frames from {identity} did not decrypt")
            }
            ev @ (CallEvent::Reconnecting { .. }
            | CallEvent::Reconnected
            | CallEvent::OracleLeft { .. }
            | CallEvent::Ended { .. }) => {
                *trouble += 1;
                eprintln!("{what}: {ev:?}");
            }
            _ => {}
        }
    }
    loud as f64 / 48_000.0
}

/// [`listen_noting`] where no signalling trouble is expected (any fails the test).
async fn listen(call: &mut Call) -> f64 {
    let mut trouble = 0;
    let loud = listen_noting(call, "live call", &mut trouble).await;
    assert_eq!(trouble, 0, "the live call's signalling was interrupted");
    loud
}

/// Asserts that a 2 s window heard the echo: at least half as much of it loud as the speech
/// has (the window may start before the echo's delay).
fn assert_heard(what: &str, loud: f64) {
    let said = loud_per_window();
    eprintln!("{what}: {loud:.2} s of loud echo in 2 s (the speech: {said:.2} s)");
    assert!(
        loud >= said / 2.0,
        "{what}: the echo is gone ({loud:.2} s loud in 2 s, the speech has {said:.2} s)"
    );
}

/// Waits until the store says `call` ended and LiveKit has no room for it.
async fn assert_closed(dep: &Deployment, id: &CallId) -> Duration {
    let t0 = Instant::now();
    let state = &dep.server.state;
    loop {
        let status = state.store().call(id).await.unwrap().map(|r| r.status);
        let room = state.livekit().room(id.room_name()).await.unwrap();
        if status == Some(CallStatus::Ended) && room.is_none() {
            return t0.elapsed();
        }
        assert!(
            t0.elapsed() < Duration::from_secs(15),
            "call {id} left half-open: store status {status:?}, LiveKit room {}",
            if room.is_some() {
                "still there"
            } else {
                "gone"
            }
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// A new call that must connect and echo; retried until `within` has passed. Returns the
/// call, how many tries it took and how long the successful `call_oracle` took.
async fn new_call_that_works(user: &OracleClient, within: Duration) -> (Call, u32, Duration) {
    let t0 = Instant::now();
    let mut tries = 0;
    loop {
        tries += 1;
        let setup = Instant::now();
        match user.call_oracle(CallType::Audio).await {
            Ok(mut call) => {
                let setup = setup.elapsed();
                let env = echo_envelope(&mut call, 2.0).await.unwrap();
                assert!(env > 0.6, "the new call echoes (envelope {env:.2})");
                return (call, tries, setup);
            }
            Err(e) => {
                eprintln!("new call, try {tries}: {e}");
                assert!(
                    t0.elapsed() < within,
                    "no new call connected within {within:?}"
                );
                tokio::time::sleep(Duration::from_millis(500)).await;
            }
        }
    }
}

/// The tests of this file share one private stack's ports: one at a time.
static PRIVATE_STACK: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn redis_and_postgres_restart_under_a_live_call() {
    init_logs();
    let _one = PRIVATE_STACK.lock().await;
    let stack = PrivateStack::up();
    redis_restart(&stack).await;
    postgres_restart(&stack).await;
}

/// Redis away for 10 s under a live call: long enough for LiveKit to close the signalling it
/// relays between nodes (about 9 s). The participants' resumes are refused while Redis is
/// away; once it is back, their full reconnect (a fresh token from a repeated sync for the
/// user, a renewed job token for the agent, both retried while LiveKit's nodes register
/// again) brings the call back under the same keys, and the server, told by LiveKit that the
/// user left without meaning to, waits `livekit.user_rejoin_grace_ms` for it instead of ending
/// the call.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn redis_down_ten_seconds_under_a_live_call() {
    init_logs();
    let _one = PRIVATE_STACK.lock().await;
    let stack = PrivateStack::up();
    let dep = deployment(&stack.0).await;
    let user = dep.new_user().await.unwrap();
    let mut call = user.call_oracle(CallType::Audio).await.unwrap();
    let talking = keep_talking(&call, 120.0);
    assert_heard("live call, before the fault", listen(&mut call).await);
    stack.stop("redis");
    let down = Instant::now();
    let mut trouble = 0;
    let mut silent_while_down = 0;
    while down.elapsed() < Duration::from_secs(10) {
        let loud = listen_noting(&mut call, "Redis down", &mut trouble).await;
        if loud < loud_per_window() / 2.0 {
            silent_while_down += 1;
        }
    }
    let outage = down.elapsed();
    let started_in = stack.start("redis");
    let back = Instant::now();
    let mut heard_at = None;
    let mut windows = 0;
    while back.elapsed() < Duration::from_secs(40) {
        let loud = listen_noting(&mut call, "Redis back", &mut trouble).await;
        windows += 1;
        if loud >= loud_per_window() / 2.0 {
            heard_at = Some(back.elapsed());
            break;
        }
    }
    eprintln!(
        "Redis down {outage:.1?} ({silent_while_down} silent 2 s windows meanwhile), healthy \
         again after {started_in:.1?}; {trouble} signalling events; the echo was heard again \
         {heard_at:?} after Redis was back ({windows} windows)"
    );
    let heard_at = heard_at.expect("the live call's echo came back within 40 s of Redis");
    assert!(heard_at < Duration::from_secs(40), "{heard_at:?}");
    // The agents settle meanwhile (the rejoining one, and one the server may have dispatched
    // when the first left: one of them leaves), so events may still come; the echo must not go.
    for _ in 0..3 {
        let loud = listen_noting(&mut call, "live call after the rejoin", &mut trouble).await;
        assert_heard("live call after the rejoin", loud);
    }
    talking.abort();
    hang_up("the live call", &mut call).await;
    let t = assert_closed(&dep, call.id()).await;
    eprintln!("the call ended in the store and in LiveKit {t:.1?} after hanging up");
    dep.stop().await;
}

/// Redis goes away for a few seconds and comes back empty (no persistence): the nodes
/// register again. Media never passes through Redis, so the live call must keep its echo.
async fn redis_restart(stack: &PrivateStack) {
    let dep = deployment(&stack.0).await;
    let user = dep.new_user().await.unwrap();
    let other = dep.new_user().await.unwrap();
    let later = dep.new_user().await.unwrap();
    let mut call = user.call_oracle(CallType::Audio).await.unwrap();
    let talking = keep_talking(&call, 90.0);
    assert_heard("live call, before the fault", listen(&mut call).await);
    let stopped_in = stack.stop("redis");
    let down = Instant::now();
    // A new call placed while Redis is away: LiveKit needs Redis to find or place its room.
    let during = tokio::spawn(async move {
        let t0 = Instant::now();
        let r =
            tokio::time::timeout(Duration::from_secs(40), other.call_oracle(CallType::Audio)).await;
        (t0.elapsed(), r, other)
    });
    assert_heard("live call, Redis down", listen(&mut call).await);
    // Back after ~2 s. (Longer hurts: after ~9 s without Redis, LiveKit closes the signalling
    // it relays for a room on the other node, and the participants cannot resume until Redis
    // is back; see docs/BENCHMARKS.md.)
    let outage = down.elapsed();
    let started_in = stack.start("redis");
    let back = Instant::now();
    eprintln!(
        "Redis stopped in {stopped_in:.1?}, down for {outage:.1?}, started (healthy, nodes \
         registered again) in {started_in:.1?}"
    );
    let (took, during, other) = during.await.unwrap();
    let during = during.expect("a new call placed while Redis was down hung for 40 s");
    let mut during_call = None;
    match during {
        Ok(mut c) => {
            let env = echo_envelope(&mut c, 2.0).await.unwrap();
            eprintln!(
                "a new call placed while Redis was down connected after {took:.1?} \
                 (echo envelope {env:.2})"
            );
            during_call = Some(c);
        }
        Err(e) => {
            eprintln!("a new call placed while Redis was down failed after {took:.1?}: {e}");
            assert!(
                e.to_string().contains("LiveKit"),
                "the error names what failed: {e}"
            );
        }
    }
    assert_heard("live call, Redis back", listen(&mut call).await);
    // Measured, not asserted (a limit of LiveKit's multi-node mode, docs/BENCHMARKS.md): a
    // room may lose its participants' relayed signalling some seconds after Redis came back
    // empty (seen from 3.7 s on, in a CI run), and they rejoin.
    let mut trouble = 0;
    let mut silent = 0;
    for _ in 0..7 {
        let loud = listen_noting(&mut call, "live call after Redis came back", &mut trouble).await;
        if loud < loud_per_window() / 2.0 {
            silent += 1;
        }
    }
    eprintln!(
        "live call 2-16 s after Redis came back: {trouble} signalling events, {silent} of 7 \
         windows without the echo"
    );
    talking.abort();

    let placed = back.elapsed();
    let (mut fresh, tries, setup) = new_call_that_works(&later, Duration::from_secs(30)).await;
    eprintln!(
        "a new call placed {placed:.1?} after Redis came back connected in {setup:.1?} and \
         echoed ({tries} tries)"
    );

    // Nothing half-open: every call ends in the store and in LiveKit.
    hang_up("the live call", &mut call).await;
    hang_up("the call placed after Redis came back", &mut fresh).await;
    let mut ids = vec![call.id().clone(), fresh.id().clone()];
    if let Some(mut c) = during_call {
        hang_up("the call placed while Redis was down", &mut c).await;
        ids.push(c.id().clone());
    }
    for id in &ids {
        let t = assert_closed(&dep, id).await;
        eprintln!("call {id} ended in the store and in LiveKit ({t:.1?} after hanging up)");
    }
    // A call that failed while Redis was down left nothing running either.
    assert_no_open_calls(&other).await;
    dep.stop().await;
}

/// Hangs up `call`; fails the test (instead of hanging it) when that takes over 20 s.
async fn hang_up(what: &str, call: &mut Call) {
    let t0 = Instant::now();
    match tokio::time::timeout(Duration::from_secs(20), call.end()).await {
        Ok(r) => r.unwrap(),
        Err(_) => panic!(
            "hanging up {what} ({}) did not return within 20 s",
            call.id()
        ),
    }
    eprintln!("hung up {what} in {:.1?}", t0.elapsed());
}

/// None of `user`'s calls is still pending or active (within 15 s).
async fn assert_no_open_calls(user: &OracleClient) {
    let t0 = Instant::now();
    loop {
        let list = user.list_calls(&Default::default()).await.unwrap();
        let open: Vec<_> = list
            .calls
            .iter()
            .filter(|c| matches!(c.call_status, CallStatus::Pending | CallStatus::Active))
            .map(|c| (c.call_id.to_string(), c.call_status))
            .collect();
        if open.is_empty() {
            return;
        }
        assert!(
            t0.elapsed() < Duration::from_secs(15),
            "calls left open: {open:?}"
        );
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
}

/// Which of the servers lead: checked every 20 ms by [`watch_leaders`].
fn leaders(servers: &[&ServerHandle]) -> usize {
    servers.iter().filter(|s| s.state.is_leader()).count()
}

/// Fails the test (through the returned flag) if two servers ever lead at once.
fn watch_leaders(a: &ServerHandle, b: &ServerHandle) -> (Arc<AtomicBool>, Arc<AtomicBool>) {
    let (sa, sb) = (a.state.clone(), b.state.clone());
    let two = Arc::new(AtomicBool::new(false));
    let stop = Arc::new(AtomicBool::new(false));
    let (t, s) = (two.clone(), stop.clone());
    tokio::spawn(async move {
        while !s.load(Ordering::Relaxed) {
            if sa.is_leader() && sb.is_leader() {
                t.store(true, Ordering::Relaxed);
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    });
    (two, stop)
}

/// PostgreSQL stops (fast shutdown) and starts again while two oracle servers share it:
/// media keep flowing (they never touch the store), API requests during the outage get a
/// 503 that says the database is unavailable, the servers' pools reconnect, the leader lock
/// is taken again by exactly one server, and hanging up afterwards ends the call everywhere.
async fn postgres_restart(stack: &PrivateStack) {
    let dep = deployment(&stack.0).await;
    let second = dep
        .start_another_server(SocketAddr::from(([127, 0, 0, 1], 0)))
        .await
        .unwrap();
    let (two_leaders, stop_watch) = watch_leaders(&dep.server, &second);
    let t0 = Instant::now();
    while leaders(&[&dep.server, &second]) != 1 {
        assert!(t0.elapsed() < Duration::from_secs(15), "no leader elected");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let first_leader = if dep.server.state.is_leader() {
        "A"
    } else {
        "B"
    };
    let user = dep.new_user().await.unwrap();
    let later = dep.new_user().await.unwrap();
    let mut call = user.call_oracle(CallType::Audio).await.unwrap();
    let talking = keep_talking(&call, 90.0);
    assert_heard("live call, before the fault", listen(&mut call).await);
    let token = user.openid_token().await.unwrap();
    let http = reqwest::Client::new();
    let list_url = format!("{}/calls", second.url);

    let stopped_in = stack.stop("postgres");
    let down = Instant::now();
    // An API request while the database is away: a 503 saying so, once `store_wait_ms`
    // (5 s by default) has passed without a connection.
    let request = {
        let (http, url, token) = (http.clone(), list_url.clone(), token.clone());
        tokio::spawn(async move {
            let t0 = Instant::now();
            let resp = http
                .get(url)
                .bearer_auth(token.as_str())
                .timeout(Duration::from_secs(30))
                .send()
                .await
                .unwrap();
            let status = resp.status().as_u16();
            let retry_after = resp
                .headers()
                .get("retry-after")
                .map(|v| v.to_str().unwrap().to_owned());
            let body: serde_json::Value = resp.json().await.unwrap();
            (t0.elapsed(), status, retry_after, body)
        })
    };
    // The database stays away ~6 s: three windows of the live call.
    for _ in 0..3 {
        assert_heard("live call, PostgreSQL down", listen(&mut call).await);
    }
    let (took, status, retry_after, body) = request.await.unwrap();
    eprintln!("GET /calls while PostgreSQL was down: {status} after {took:.1?}: {body}");
    assert_eq!(status, 503, "{body}");
    assert_eq!(body["error"]["code"], "unavailable", "{body}");
    assert!(
        body["error"]["message"]
            .as_str()
            .unwrap()
            .contains("database is unavailable"),
        "{body}"
    );
    assert_eq!(retry_after.as_deref(), Some("2"));
    let leaders_during = leaders(&[&dep.server, &second]);
    let outage = down.elapsed();
    let started_in = stack.start("postgres");
    let back = Instant::now();
    eprintln!(
        "PostgreSQL stopped in {stopped_in:?}, down for {outage:.1?}, started in \
         {started_in:?}; servers leading while it was down: {leaders_during}"
    );
    assert_eq!(
        leaders_during, 0,
        "no server leads without its lock connection"
    );

    // The pools reconnect: the same request answers 200.
    let answered = loop {
        let resp = http
            .get(&list_url)
            .bearer_auth(token.as_str())
            .send()
            .await
            .unwrap();
        if resp.status().is_success() {
            break back.elapsed();
        }
        assert!(
            back.elapsed() < Duration::from_secs(20),
            "the API still fails after PostgreSQL came back: {}",
            resp.status()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    // The lock is taken again, by exactly one server.
    while leaders(&[&dep.server, &second]) != 1 {
        assert!(
            back.elapsed() < Duration::from_secs(20),
            "no leader after PostgreSQL came back"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let elected = back.elapsed();
    let new_leader = if dep.server.state.is_leader() {
        "A"
    } else {
        "B"
    };
    eprintln!(
        "after PostgreSQL came back: the API answered 200 after {answered:.1?}, leader \
         re-elected after {elected:.1?} (server {first_leader} led before, {new_leader} now)"
    );
    assert_heard("live call, PostgreSQL back", listen(&mut call).await);
    talking.abort();

    // Hanging up after the restart ends the call in the store and in LiveKit.
    call.end().await.unwrap();
    let t = assert_closed(&dep, call.id()).await;
    eprintln!("the live call ended in the store and in LiveKit {t:.1?} after hanging up");
    let placed = back.elapsed();
    let (mut fresh, tries, setup) = new_call_that_works(&later, Duration::from_secs(30)).await;
    eprintln!(
        "a new call placed {placed:.1?} after PostgreSQL came back connected in {setup:.1?} and \
         echoed ({tries} tries)"
    );
    fresh.end().await.unwrap();
    assert_closed(&dep, fresh.id()).await;
    stop_watch.store(true, Ordering::Relaxed);
    assert!(
        !two_leaders.load(Ordering::Relaxed),
        "two servers led at the same time"
    );
    assert_eq!(leaders(&[&dep.server, &second]), 1);
    second.stop().await;
    dep.stop().await;
}

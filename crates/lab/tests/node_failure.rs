//! A LiveKit node killed in the middle of a call (issue 16): the call's room is hosted on
//! node 2 of a two-node LiveKit, the user's client and the oracle's agent both signal through
//! node 1, and node 2 gets `kill -9`. Both refuse-to-resume their lost sessions and rejoin
//! from scratch on node 1 (the client with a fresh token from a repeated sync, the agent with
//! its job token renewed under its own API key), under the same call key: the user hears the
//! echo again. The time from the kill to the echo heard again is printed.
//!
//! The test brings up its own PRIVATE stack (`scripts/stack up` with its own `STACK_DIR` and
//! every port 300 above the defaults, two LiveKit nodes), because it kills a server: the
//! shared stack other suites use is never touched. `ORACLE_CALLS_FAULT_STACK_DIR` overrides
//! the directory (default `<repo>/.stack-faults`). Each test stops the private stack at its
//! end, also when it fails: its ports are fixed, so a stack left running by one checkout (CI
//! clones into a new directory each time) would block the next run.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]

use std::collections::HashSet;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use oracle_calls_agent::oracles::{Builtin, Echo};
use oracle_calls_agent::{Agent, JobOutcome};
use oracle_calls_client::{Call, CallEvent};
use oracle_calls_lab::local::{DeployOptions, Deployment, Stack, echo_envelope, unique_hex};
use oracle_calls_media::sine_tone;
use oracle_calls_proto::{CallStatus, CallType};
use oracle_calls_test_support::Firewall;
use tokio::io::{AsyncBufReadExt as _, AsyncReadExt as _, AsyncWriteExt as _, BufReader};
use tokio::net::TcpStream;

/// Port offset of the private stack from the defaults.
const OFFSET: u16 = 300;

fn init_logs() {
    oracle_calls_test_support::init_test_logs(
        "warn,oracle_calls_rtc=info,oracle_calls_agent=info,oracle_calls_server=info",
    );
}

/// The private stack's settings for `scripts/stack`.
fn private_env() -> Vec<(String, String)> {
    let dir = std::env::var("ORACLE_CALLS_FAULT_STACK_DIR").map_or_else(
        |_| {
            let lab = std::path::Path::new(env!("CARGO_MANIFEST_DIR"));
            lab.parent()
                .and_then(std::path::Path::parent)
                .unwrap_or(lab)
                .join(".stack-faults")
        },
        PathBuf::from,
    );
    let port = |default: u16| (default + OFFSET).to_string();
    [
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
    .into_iter()
    .map(|(k, v)| (k.to_owned(), v))
    .collect()
}

/// Stops the private stack when dropped (also when the test fails half-way): the next test's
/// `setup` starts it again, and nothing of it outlives the test binary (its ports are fixed,
/// so a stack left running by one checkout blocks the next checkout's run).
struct DownAtEnd(Stack);

impl Drop for DownAtEnd {
    fn drop(&mut self) {
        if let Err(e) = self.0.script(&["down"]) {
            eprintln!("could not stop the private stack: {e:#}");
        }
    }
}

/// One command to the stack's Redis (after AUTH), answered as its bulk strings.
async fn redis(stack: &Stack, args: &[&str]) -> Vec<String> {
    let addr = stack.get("LIVEKIT_REDIS_ADDRESS").unwrap();
    let password = stack.secret("LIVEKIT_REDIS_PASSWORD_FILE").unwrap();
    let mut r = BufReader::new(TcpStream::connect(addr).await.unwrap());
    for cmd in [vec!["AUTH", password.as_str()], args.to_vec()] {
        let mut out = format!("*{}\r\n", cmd.len());
        for a in cmd {
            out.push_str(&format!("${}\r\n{a}\r\n", a.len()));
        }
        r.get_mut().write_all(out.as_bytes()).await.unwrap();
    }
    let mut line = String::new();
    r.read_line(&mut line).await.unwrap();
    assert_eq!(line, "+OK\r\n", "AUTH");
    line.clear();
    r.read_line(&mut line).await.unwrap();
    // An array of bulk strings (HGETALL), or one bulk string (HGET), or nil.
    let header = line.trim_end();
    let count = match header.split_at(1) {
        ("*", n) => n.parse::<i64>().unwrap(),
        ("$", "-1") => return Vec::new(),
        ("$", _) => {
            let mut items = Vec::new();
            read_bulk_body(&mut r, header, &mut items).await;
            return items;
        }
        _ => panic!("unexpected Redis reply {line:?}"),
    };
    let mut items = Vec::new();
    for _ in 0..count.max(0) {
        line.clear();
        r.read_line(&mut line).await.unwrap();
        read_bulk_body(&mut r, line.trim_end(), &mut items).await;
    }
    items
}

async fn read_bulk_body(r: &mut BufReader<TcpStream>, header: &str, items: &mut Vec<String>) {
    let n: usize = header.strip_prefix('$').unwrap().parse().unwrap();
    let mut buf = vec![0u8; n + 2];
    r.read_exact(&mut buf).await.unwrap();
    buf.truncate(n);
    items.push(String::from_utf8(buf).unwrap());
}

/// Node k's id (1-based), from the last `starting LiveKit server` line of its log.
fn node_id(stack: &Stack, k: usize) -> String {
    let logs = PathBuf::from(stack.get("STACK_LOG_DIR").unwrap());
    let name = if k == 1 {
        "livekit.log".to_owned()
    } else {
        format!("livekit-{k}.log")
    };
    let text = std::fs::read_to_string(logs.join(&name)).unwrap();
    let at = text
        .rfind("\"nodeID\": \"")
        .unwrap_or_else(|| panic!("{name} names no node id"));
    let rest = &text[at + 11..];
    rest[..rest.find('"').unwrap()].to_owned()
}

/// The node id hosting `room` (LiveKit's `room_node_map`), if any.
async fn host_of(stack: &Stack, room: &str) -> Option<String> {
    redis(stack, &["HGET", "room_node_map", room])
        .await
        .into_iter()
        .next()
}

/// Root mean square of a frame.
fn rms(pcm: &[i16]) -> f64 {
    let sum: f64 = pcm.iter().map(|&s| f64::from(s) * f64::from(s)).sum();
    (sum / pcm.len().max(1) as f64).sqrt()
}

/// Speaks a steady 440 Hz tone into the call until aborted.
fn speak_tone(call: &Call) -> tokio::task::JoinHandle<()> {
    let mic = call.microphone();
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(Duration::from_millis(20));
        for i in 0u64.. {
            tick.tick().await;
            if mic
                .push_pcm(&sine_tone(440.0, 8000.0, i * 960, 960))
                .await
                .is_err()
            {
                return;
            }
        }
    })
}

/// How the echo came back.
struct EchoBack {
    full_reconnects: u32,
    /// When the client's full reconnect finished (`Reconnected` after a full try).
    rejoined_at: Option<Instant>,
    /// When half a second of loud echo had arrived (after the rejoin, with `after_rejoin`).
    heard_at: Instant,
}

/// Reads the call's events (printing the reconnect ones with their time since `t0`) until
/// the echo is heard: 25 frames (0.5 s) in a row louder than silence — counted only after a
/// full reconnect when `after_rejoin`. Fails on a decryption failure, the call's end, or
/// nothing within `limit`.
async fn echo_back(call: &mut Call, t0: Instant, after_rejoin: bool, limit: Duration) -> EchoBack {
    let mut full_reconnects = 0;
    let mut rejoined_at = None;
    let mut loud_run = 0;
    let deadline = tokio::time::Instant::now() + limit;
    let at = || t0.elapsed().as_secs_f64();
    loop {
        let ev = match tokio::time::timeout_at(deadline, call.next_event()).await {
            Ok(Some(ev)) => ev,
            Ok(None) => panic!("the call ended instead of coming back"),
            Err(_) => panic!(
                "no echo within {limit:?} (full reconnects: {full_reconnects}, rejoined after \
                 {:?})",
                rejoined_at.map(|t: Instant| t.duration_since(t0))
            ),
        };
        match ev {
            CallEvent::Reconnecting {
                attempt,
                reason,
                full,
            } => {
                eprintln!(
                    "{:>6.2} s reconnecting (full: {full}, try {attempt}): {reason}",
                    at()
                );
                if full {
                    full_reconnects += 1;
                }
            }
            CallEvent::Reconnected => {
                eprintln!("{:>6.2} s reconnected", at());
                if full_reconnects > 0 {
                    rejoined_at = Some(Instant::now());
                }
            }
            CallEvent::OracleJoined { identity } => {
                eprintln!("{:>6.2} s the oracle is in the room ({identity})", at());
            }
            CallEvent::OracleLeft { identity } => {
                eprintln!("{:>6.2} s the oracle left ({identity})", at());
            }
            CallEvent::DecryptionFailed { identity, failures } => {
                panic!("{failures} frames from {identity} did not decrypt: the keys changed")
            }
            CallEvent::Ended { reason } => panic!("the call ended: {reason}"),
            CallEvent::OracleAudio { pcm } if !after_rejoin || rejoined_at.is_some() => {
                if rms(&pcm) > 1000.0 {
                    loud_run += 1;
                    if loud_run >= 25 {
                        return EchoBack {
                            full_reconnects,
                            rejoined_at,
                            heard_at: Instant::now(),
                        };
                    }
                } else {
                    loud_run = 0;
                }
            }
            _ => {}
        }
    }
}

/// The private stack with an oracle deployed on it: the server calls LiveKit's API through
/// node `api` and hands clients node `user`; the (in-process, echo) agent registers on node
/// `agent` (0-based).
struct Setup {
    stack: Stack,
    /// Stops the private stack at the end of the test.
    down: DownAtEnd,
    dep: Deployment,
    client: oracle_calls_client::OracleClient,
    ws: Vec<String>,
    node_ids: Vec<String>,
}

/// One test at a time: both use the private stack, its webhook port and its nodes.
static SERIAL: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

async fn setup(api: usize, user: usize, agent: usize) -> Setup {
    let t = Instant::now();
    let stack = Stack::up_with(&private_env()).unwrap();
    eprintln!("private stack up in {:.1} s", t.elapsed().as_secs_f64());
    let urls = |k: &str| -> Vec<String> {
        stack
            .get(k)
            .unwrap()
            .split_whitespace()
            .map(str::to_owned)
            .collect()
    };
    let (ws, http) = (urls("LIVEKIT_NODE_URLS"), urls("LIVEKIT_NODE_HTTP_URLS"));
    assert_eq!(ws.len(), 2, "two LiveKit nodes: {ws:?}");
    let node_ids = vec![node_id(&stack, 1), node_id(&stack, 2)];
    let server_view = stack
        .with_setting("LIVEKIT_URL", &ws[user])
        .with_setting("LIVEKIT_HTTP_URL", &http[api]);
    let dir = std::env::temp_dir().join(format!("oc-node-failure-{}", unique_hex(6)));
    std::fs::create_dir_all(&dir).unwrap();
    let mut opts = DeployOptions::new(&dir);
    opts.oracle = None;
    // LiveKit's webhooks reach the server as in a deployment.
    let webhook = stack.get("LIVEKIT_WEBHOOK_URL").unwrap().to_owned();
    let port: u16 = webhook
        .trim_start_matches("http://127.0.0.1:")
        .split('/')
        .next()
        .unwrap()
        .parse()
        .unwrap();
    opts.listen = std::net::SocketAddr::from(([127, 0, 0, 1], port));
    let mut dep = Deployment::start(server_view, opts).await.unwrap();
    let mut file = dep.agent_file_config(4, None).unwrap();
    file.livekit.url = Some(ws[agent].clone());
    let cfg = dep.resolve_agent_config(&file).await.unwrap();
    dep.agent = Some(
        Agent::new(cfg, Builtin::Echo(Echo::default()))
            .start()
            .await
            .unwrap(),
    );
    let client = dep.new_user().await.unwrap();
    Setup {
        down: DownAtEnd(stack.clone()),
        stack,
        dep,
        client,
        ws,
        node_ids,
    }
}

/// Hangs up and checks the end: the agent reports the job served without a decrypt failure,
/// the store has the call ended, and the room empties.
async fn hang_up(dep: &Deployment, mut call: Call) {
    call.end().await.unwrap();
    let report = tokio::time::timeout(
        Duration::from_secs(15),
        dep.agent.as_ref().unwrap().next_report(),
    )
    .await
    .expect("the agent reports the job within 15 s of the hang-up")
    .unwrap();
    assert!(
        matches!(report.outcome, JobOutcome::Served { .. }),
        "{report:?}"
    );
    assert_eq!(report.decrypt_failures, 0, "{report:?}");
    let state = &dep.server.state;
    let rec = state.store().call(call.id()).await.unwrap().unwrap();
    assert_eq!(rec.status, CallStatus::Ended);
    let rn = call.id().room_name().clone();
    let gone_by = Instant::now() + Duration::from_secs(30);
    loop {
        let left = state.livekit().participants(&rn).await.unwrap();
        if left.is_empty() {
            break;
        }
        assert!(Instant::now() < gone_by, "still in the room: {left:?}");
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_livekit_node_is_survived_by_a_full_reconnect_under_the_same_key() {
    init_logs();
    let _serial = SERIAL.lock().await;
    // The server uses node 1 for its API and hands clients node 1; the agent registers on
    // node 1. The room lands on either node (LiveKit picks at random): calls are placed until
    // one lands on node 2, so node 1 relays both peers' signalling to it.
    let Setup {
        stack,
        down: _down,
        dep,
        client,
        node_ids,
        ..
    } = setup(0, 0, 0).await;
    let (node1, node2) = (node_ids[0].clone(), node_ids[1].clone());

    let mut placed = None;
    for attempt in 1..=8 {
        let mut call = client.call_oracle(CallType::Audio).await.unwrap();
        let room = call.id().room_name().as_str().to_owned();
        let envelope = echo_envelope(&mut call, 3.0).await.unwrap();
        assert!(envelope > 0.6, "the call works before the kill: {envelope}");
        let host = host_of(&stack, &room).await;
        eprintln!(
            "call {attempt}: room {room} on {}",
            match host.as_deref() {
                Some(h) if h == node1 => "node 1",
                Some(h) if h == node2 => "node 2",
                _ => "no node",
            }
        );
        if host.as_deref() == Some(node2.as_str()) {
            placed = Some((call, room));
            break;
        }
        call.end().await.unwrap();
        let report = tokio::time::timeout(
            Duration::from_secs(15),
            dep.agent.as_ref().unwrap().next_report(),
        )
        .await
        .expect("the agent reports the ended call")
        .unwrap();
        assert!(
            matches!(report.outcome, JobOutcome::Served { .. }),
            "{report:?}"
        );
    }
    let (mut call, room) = placed.expect("no call's room landed on node 2 in 8 tries");
    let stats = dep.agent.as_ref().unwrap().stats();
    let joined_before = stats
        .calls_joined
        .load(std::sync::atomic::Ordering::Relaxed);

    // kill -9 node 2 (its pid as scripts/stack recorded it).
    let pidfile = PathBuf::from(stack.get("STACK_DIR").unwrap()).join("run/livekit-2.pid");
    let pid = std::fs::read_to_string(&pidfile).unwrap().trim().to_owned();
    let killed = std::process::Command::new("kill")
        .args(["-9", &pid])
        .status()
        .unwrap();
    assert!(killed.success(), "kill -9 {pid}");
    let killed_at = Instant::now();
    eprintln!("killed node 2 (pid {pid})");

    // Speak a steady tone and wait for the echo to come back after a full reconnect.
    let speaker = speak_tone(&call);
    let back = echo_back(&mut call, killed_at, true, Duration::from_secs(90)).await;
    speaker.abort();
    let rejoined_at = back.rejoined_at.unwrap();
    eprintln!(
        "FAULT kill-node: kill -> client rejoined {:.2} s, kill -> echo heard again {:.2} s",
        rejoined_at.duration_since(killed_at).as_secs_f64(),
        back.heard_at.duration_since(killed_at).as_secs_f64()
    );
    let full_reconnects = back.full_reconnects;
    assert!(full_reconnects >= 1, "a full reconnect, not a resume");

    // Speech again, for the echo's quality after the rejoin.
    let envelope = echo_envelope(&mut call, 3.0).await.unwrap();
    eprintln!("echo envelope after the rejoin {envelope:.2}");
    assert!(envelope > 0.6, "the user hears the echo again: {envelope}");

    // Nothing is left half-open: the server still has the call active, the room now lives on
    // node 1 and holds exactly the user and one agent (the same job: no second dispatch).
    let state = &dep.server.state;
    let rec = state.store().call(call.id()).await.unwrap().unwrap();
    assert_eq!(rec.status, CallStatus::Active);
    assert_eq!(
        host_of(&stack, &room).await.as_deref(),
        Some(node1.as_str())
    );
    let rn = call.id().room_name().clone();
    let people: HashSet<String> = state
        .livekit()
        .participants(&rn)
        .await
        .unwrap()
        .into_iter()
        .collect();
    let user_identity = call.identity().unwrap().to_owned();
    let agents: Vec<&String> = people.iter().filter(|p| p.starts_with("agent-")).collect();
    assert!(people.contains(&user_identity), "{people:?}");
    assert_eq!(agents.len(), 1, "one agent in the room: {people:?}");
    assert_eq!(people.len(), 2, "{people:?}");
    assert_eq!(
        stats
            .calls_joined
            .load(std::sync::atomic::Ordering::Relaxed),
        joined_before,
        "the agent's job rejoined; no second job joined"
    );

    hang_up(&dep, call).await;
    dep.stop().await;
}

/// The network between the user and its LiveKit node drops for 10 s (iptables DROP on
/// loopback of exactly the user's two media sockets and its signalling port on that node:
/// the agent and the server use the other node, so only the user is cut off). The call must
/// come back by itself, under the same key; the time from the drop's end to the echo heard
/// again is printed. Needs root and netfilter; says why and passes otherwise.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_10_s_network_drop_between_the_user_and_its_node_is_survived() {
    init_logs();
    let _serial = SERIAL.lock().await;
    // The user signals through node 1; the server's API and the agent use node 2.
    let Setup {
        down: _down,
        dep,
        client,
        ws,
        ..
    } = setup(1, 0, 1).await;
    let mut call = client.call_oracle(CallType::Audio).await.unwrap();
    let envelope = echo_envelope(&mut call, 3.0).await.unwrap();
    assert!(envelope > 0.6, "the call works before the drop: {envelope}");
    let [sub, publ] = call.media_addrs().unwrap();
    let node_port = ws[0]
        .rsplit(':')
        .next()
        .unwrap()
        .trim_end_matches('/')
        .to_owned();
    let rule = |proto: &str, ports: String| -> Vec<String> {
        [
            "-i",
            "lo",
            "-p",
            proto,
            "-m",
            "multiport",
            "--ports",
            &ports,
            "-j",
            "DROP",
        ]
        .iter()
        .map(|s| (*s).to_owned())
        .collect()
    };
    let speaker = speak_tone(&call);
    let rules = vec![
        rule("udp", format!("{},{}", sub.port(), publ.port())),
        rule("tcp", node_port.clone()),
    ];
    let mut cut = match Firewall::insert(rules) {
        Ok(c) => c,
        Err(why) => {
            eprintln!("SKIPPED: no firewall to drop the network with ({why})");
            speaker.abort();
            hang_up(&dep, call).await;
            dep.stop().await;
            return;
        }
    };
    let dropped_at = Instant::now();
    eprintln!(
        "dropped UDP {} and {} and TCP {node_port} on lo for 10 s",
        sub.port(),
        publ.port()
    );
    // Ten seconds without the network; what the call says meanwhile is printed.
    let until = tokio::time::Instant::now() + Duration::from_secs(10);
    while let Ok(ev) = tokio::time::timeout_at(until, call.next_event()).await {
        match ev {
            Some(CallEvent::Ended { reason }) => panic!("the call ended during the drop: {reason}"),
            Some(CallEvent::DecryptionFailed { identity, failures }) => {
                panic!("{failures} frames from {identity} did not decrypt")
            }
            Some(CallEvent::OracleAudio { .. }) | None => {}
            Some(other) => eprintln!("{:>6.2} s {other:?}", dropped_at.elapsed().as_secs_f64()),
        }
    }
    cut.remove();
    let restored_at = Instant::now();
    let back = echo_back(&mut call, dropped_at, false, Duration::from_secs(60)).await;
    speaker.abort();
    eprintln!(
        "FAULT net-drop-10s: restored -> echo heard again {:.2} s (drop start -> echo {:.2} s; \
         full reconnects {})",
        back.heard_at.duration_since(restored_at).as_secs_f64(),
        back.heard_at.duration_since(dropped_at).as_secs_f64(),
        back.full_reconnects
    );
    let envelope = echo_envelope(&mut call, 3.0).await.unwrap();
    eprintln!("echo envelope after the drop {envelope:.2}");
    assert!(envelope > 0.6, "the user hears the echo again: {envelope}");
    // Nothing half-open: still active, the user and one agent in the room.
    let state = &dep.server.state;
    let rec = state.store().call(call.id()).await.unwrap().unwrap();
    assert_eq!(rec.status, CallStatus::Active);
    let people = state
        .livekit()
        .participants(call.id().room_name())
        .await
        .unwrap();
    assert_eq!(people.len(), 2, "the user and one agent: {people:?}");
    hang_up(&dep, call).await;
    dep.stop().await;
}

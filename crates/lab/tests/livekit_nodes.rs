//! LiveKit in its own multi-node mode (`STACK_LIVEKIT_NODES=2 scripts/stack up`: two
//! livekit-server nodes sharing one Redis): the nodes act as one LiveKit. Rooms made through
//! either node's API are listed by both and spread over both; an end-to-end encrypted call
//! works with the user's client on one node and the agent on the other (so one of them reaches
//! the room through a node that does not host it: signalling relayed over Redis, media to
//! the hosting node's own UDP port).
//!
//! On a one-node stack every test here says why it is skipped and passes.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]

use std::collections::{HashMap, HashSet};
use std::time::Duration;

use oracle_calls_agent::oracles::{Builtin, Echo};
use oracle_calls_agent::{Agent, JobOutcome};
use oracle_calls_lab::local::{DeployOptions, Deployment, Stack, echo_envelope, unique_hex};
use oracle_calls_proto::CallType;
use oracle_calls_rtc::token::ApiCredentials;
use serde_json::{Value, json};
use tokio::io::{AsyncBufReadExt as _, AsyncReadExt as _, AsyncWriteExt as _, BufReader};
use tokio::net::TcpStream;

/// One test at a time: the calls share two cores with the servers, and each looks for the
/// one room it adds to LiveKit's room map.
static SERIAL: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

fn init_logs() {
    oracle_calls_test_support::init_test_logs("warn,oracle_calls_agent=info");
}

/// The nodes' (WebSocket, HTTP) URLs, or `None` (with the reason printed) on a one-node stack.
fn nodes(stack: &Stack) -> Option<Vec<(String, String)>> {
    let (Ok(ws), Ok(http)) = (
        stack.get("LIVEKIT_NODE_URLS"),
        stack.get("LIVEKIT_NODE_HTTP_URLS"),
    ) else {
        eprintln!(
            "SKIPPED: the stack runs one LiveKit node (no LIVEKIT_NODE_URLS in `scripts/stack \
             env`); bring it up with STACK_LIVEKIT_NODES=2 to run the multi-node tests"
        );
        return None;
    };
    let nodes: Vec<(String, String)> = ws
        .split_whitespace()
        .map(str::to_owned)
        .zip(http.split_whitespace().map(str::to_owned))
        .collect();
    assert!(nodes.len() >= 2, "LIVEKIT_NODE_URLS names {nodes:?}");
    Some(nodes)
}

async fn twirp(
    http: &reqwest::Client,
    creds: &ApiCredentials,
    node: &str,
    method: &str,
    grant: Value,
    body: Value,
) -> Value {
    let token = creds.sign(json!({ "video": grant }), 60);
    let resp = http
        .post(format!("{node}/twirp/livekit.RoomService/{method}"))
        .bearer_auth(token)
        .json(&body)
        .send()
        .await
        .unwrap();
    let status = resp.status();
    let text = resp.text().await.unwrap();
    assert!(status.is_success(), "{method} on {node}: {status} {text}");
    serde_json::from_str(&text).unwrap()
}

async fn room_names(http: &reqwest::Client, creds: &ApiCredentials, node: &str) -> HashSet<String> {
    let v = twirp(
        http,
        creds,
        node,
        "ListRooms",
        json!({"roomList": true}),
        json!({}),
    )
    .await;
    v["rooms"]
        .as_array()
        .map(|rooms| {
            rooms
                .iter()
                .filter_map(|r| r["name"].as_str().map(str::to_owned))
                .collect()
        })
        .unwrap_or_default()
}

/// A RESP2 reply, as far as these tests need it.
#[derive(Debug, PartialEq)]
enum Reply {
    Text(String),
    Int(i64),
    Nil,
    List(Vec<Reply>),
}

async fn read_reply(r: &mut BufReader<TcpStream>) -> Reply {
    let mut line = String::new();
    r.read_line(&mut line).await.unwrap();
    let body = line.trim_end_matches("\r\n");
    let (kind, rest) = body.split_at(1);
    match kind {
        "+" => Reply::Text(rest.to_owned()),
        "-" => panic!("Redis answered an error: {rest}"),
        ":" => Reply::Int(rest.parse().unwrap()),
        "$" => {
            let n: i64 = rest.parse().unwrap();
            if n < 0 {
                return Reply::Nil;
            }
            let mut buf = vec![0u8; usize::try_from(n).unwrap() + 2];
            r.read_exact(&mut buf).await.unwrap();
            buf.truncate(buf.len() - 2);
            Reply::Text(String::from_utf8(buf).unwrap())
        }
        "*" => {
            let n: i64 = rest.parse().unwrap();
            let mut items = Vec::new();
            for _ in 0..n.max(0) {
                items.push(Box::pin(read_reply(r)).await);
            }
            Reply::List(items)
        }
        _ => panic!("not a RESP reply: {line:?}"),
    }
}

/// One command to the stack's Redis (after AUTH with its password).
async fn redis(stack: &Stack, args: &[&str]) -> Reply {
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
    assert_eq!(read_reply(&mut r).await, Reply::Text("OK".into()));
    read_reply(&mut r).await
}

fn texts(reply: Reply) -> Vec<String> {
    match reply {
        Reply::List(items) => items
            .into_iter()
            .map(|i| match i {
                Reply::Text(t) => t,
                other => panic!("not a string: {other:?}"),
            })
            .collect(),
        other => panic!("not a list: {other:?}"),
    }
}

/// LiveKit's RedisRouter: the `nodes` hash has a field per live node (its id), and
/// `room_node_map` maps each room to the node that hosts it.
async fn placement(stack: &Stack) -> (HashSet<String>, HashMap<String, String>) {
    let live: HashSet<String> = texts(redis(stack, &["HKEYS", "nodes"]).await)
        .into_iter()
        .collect();
    let flat = texts(redis(stack, &["HGETALL", "room_node_map"]).await);
    let map = flat
        .chunks(2)
        .map(|kv| (kv[0].clone(), kv[1].clone()))
        .collect();
    (live, map)
}

/// Node k's id (`livekit.log`, `livekit-2.log`, ...: the last `starting LiveKit server`
/// line, which names the node id it registers under).
fn node_ids(stack: &Stack, count: usize) -> Vec<String> {
    let logs = std::path::PathBuf::from(stack.get("STACK_LOG_DIR").unwrap());
    (1..=count)
        .map(|k| {
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
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rooms_made_on_either_node_are_one_set_spread_over_the_nodes() {
    let _serial = SERIAL.lock().await; // the calls below look for the one room they add
    let stack = Stack::running().unwrap();
    let Some(nodes) = nodes(&stack) else { return };
    let creds = stack.livekit().unwrap();
    let http = reqwest::Client::builder().no_proxy().build().unwrap();
    let (live, _) = placement(&stack).await;
    let ids = node_ids(&stack, nodes.len());
    assert_eq!(
        live,
        ids.iter().cloned().collect::<HashSet<_>>(),
        "exactly the stack's nodes are registered in Redis"
    );

    // Rooms through each node's API in turn, until every node hosts one (the default node
    // selector picks at random among the available nodes, so a few rooms do it).
    let prefix = format!("lkn-{}", unique_hex(4));
    let mut made: Vec<String> = Vec::new();
    let mut hosts: HashMap<String, String> = HashMap::new();
    while made.len() < 8 * nodes.len() {
        let name = format!("{prefix}-{}", made.len());
        let via = &nodes[made.len() % nodes.len()].1;
        let room = twirp(
            &http,
            &creds,
            via,
            "CreateRoom",
            json!({"roomCreate": true}),
            json!({"name": name, "emptyTimeout": 60}),
        )
        .await;
        assert_eq!(room["name"], json!(name), "{room}");
        made.push(name);
        let (_, map) = placement(&stack).await;
        for n in &made {
            let host = map
                .get(n)
                .unwrap_or_else(|| panic!("room {n} has no node in room_node_map"));
            assert!(live.contains(host), "{n} is on {host}, not a live node");
            hosts.insert(n.clone(), host.clone());
        }
        let used: HashSet<&String> = hosts.values().collect();
        if made.len() >= 2 * nodes.len() && used.len() == nodes.len() {
            break;
        }
    }
    let used: HashSet<&String> = hosts.values().collect();
    assert_eq!(
        used.len(),
        nodes.len(),
        "{} rooms, all on {used:?}",
        made.len()
    );
    eprintln!("{} rooms over {} nodes: {hosts:?}", made.len(), used.len());

    // Every node lists every room, whichever node made it and whichever hosts it.
    for (_, node) in &nodes {
        let listed = room_names(&http, &creds, node).await;
        for n in &made {
            assert!(listed.contains(n), "{node} does not list {n}");
        }
    }
    // Deleting goes through any node too (here the next one after the one that made it).
    for (i, n) in made.iter().enumerate() {
        let via = &nodes[(i + 1) % nodes.len()].1;
        twirp(
            &http,
            &creds,
            via,
            "DeleteRoom",
            json!({"roomCreate": true}),
            json!({"room": n}),
        )
        .await;
    }
    for (_, node) in &nodes {
        let listed = room_names(&http, &creds, node).await;
        let left: Vec<&String> = made.iter().filter(|n| listed.contains(*n)).collect();
        assert!(left.is_empty(), "{node} still lists {left:?}");
    }
}

/// A whole E2EE audio call through the echo oracle where the oracle-calls server uses node
/// `api` for LiveKit's API (room creation with the agent's dispatch), hands the user's client
/// node `user` as the signalling URL, and the agent registers through node `agent`.
async fn echo_call_across(api: usize, user: usize, agent: usize) {
    init_logs();
    let _serial = SERIAL.lock().await;
    let stack = Stack::running().unwrap();
    let Some(nodes) = nodes(&stack) else { return };
    let server_view = stack
        .with_setting("LIVEKIT_URL", &nodes[user].0)
        .with_setting("LIVEKIT_HTTP_URL", &nodes[api].1);
    let dir = std::env::temp_dir().join(format!("oc-lkn-{}", unique_hex(6)));
    std::fs::create_dir_all(&dir).unwrap();
    let mut opts = DeployOptions::new(&dir);
    opts.oracle = None;
    let before: HashSet<String> = placement(&stack).await.1.into_keys().collect();
    let mut dep = Deployment::start(server_view, opts).await.unwrap();
    let mut file = dep.agent_file_config(4, None).unwrap();
    file.livekit.url = Some(nodes[agent].0.clone());
    let cfg = dep.resolve_agent_config(&file).await.unwrap();
    dep.agent = Some(
        Agent::new(cfg, Builtin::Echo(Echo::default()))
            .start()
            .await
            .unwrap(),
    );

    let client = dep.new_user().await.unwrap();
    let mut call = client.call_oracle(CallType::Audio).await.unwrap();
    let envelope = echo_envelope(&mut call, 4.0).await.unwrap();
    // The call's room is the one room that appeared; one of the two peers reached it
    // through the other node.
    let ids = node_ids(&stack, nodes.len());
    let new: Vec<(String, String)> = placement(&stack)
        .await
        .1
        .into_iter()
        .filter(|(room, _)| !before.contains(room))
        .collect();
    assert_eq!(new.len(), 1, "one new room: {new:?}");
    let host = ids
        .iter()
        .position(|id| *id == new[0].1)
        .unwrap_or_else(|| panic!("{new:?} is on none of {ids:?}"));
    eprintln!(
        "server API via node {}, user via node {}, agent via node {}; the room is on node {}; \
         echo envelope {envelope:.2}",
        api + 1,
        user + 1,
        agent + 1,
        host + 1
    );
    assert!(envelope > 0.6, "the user hears the echo: {envelope}");
    call.end().await.unwrap();
    let report = tokio::time::timeout(
        Duration::from_secs(10),
        dep.agent.as_ref().unwrap().next_report(),
    )
    .await
    .expect("the agent reports the job within 10 s of the hang-up")
    .unwrap();
    assert!(
        matches!(report.outcome, JobOutcome::Served { .. }),
        "{report:?}"
    );
    assert!(report.frames_heard > 150, "{report:?}");
    assert_eq!(report.decrypt_failures, 0, "{report:?}");
    dep.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn echo_call_with_the_user_on_node_2_and_the_server_and_agent_on_node_1() {
    echo_call_across(0, 1, 0).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn echo_call_with_the_agent_on_node_2_and_the_server_and_user_on_node_1() {
    echo_call_across(0, 0, 1).await;
}

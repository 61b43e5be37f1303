//! An agent process killed in the middle of a call (issue 16): open-source LiveKit never
//! re-dispatches a dead worker's job, so the oracle server does — it sees the agent's
//! participant leave an active call whose user is still there and asks LiveKit for the agent
//! again; another process of the pool takes the job, rejoins under the same E2EE key (with
//! forward secrecy on, through the inner envelope the key holder keeps while the call runs).
//! Real stack, real processes, `kill -9`; the user hears the new agent again, through the
//! old agent's m-line.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]

use std::path::Path;
use std::time::{Duration, Instant};

use oracle_calls_client::{Call, CallEvent};
use oracle_calls_lab::local::{DeployOptions, Deployment, Stack, unique_hex};
use oracle_calls_lab::{analysis, verify};
use oracle_calls_proto::{CallStatus, CallType};

fn temp_dir() -> std::path::PathBuf {
    let d = std::env::temp_dir().join(format!("oc-redispatch-{}", unique_hex(6)));
    std::fs::create_dir_all(&d).unwrap();
    d
}

fn init_logs() {
    oracle_calls_test_support::init_test_logs("warn,oracle_calls_server=info");
}

/// Both tests need LiveKit's real webhooks, which the stack sends to one port: one at a time.
static WEBHOOK_PORT: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// Options whose server listens where the stack's LiveKit sends its webhooks.
fn with_webhooks(stack: &Stack, dir: &Path) -> DeployOptions {
    let url = stack.get("LIVEKIT_WEBHOOK_URL").unwrap().to_owned();
    let port: u16 = url
        .trim_start_matches("http://127.0.0.1:")
        .split('/')
        .next()
        .unwrap()
        .parse()
        .unwrap();
    let mut opts = DeployOptions::new(dir);
    opts.listen = std::net::SocketAddr::from(([127, 0, 0, 1], port));
    opts
}

/// An agent process, killed when dropped (also when the test fails half-way).
struct Agent(std::process::Child);

impl Drop for Agent {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn exe() -> &'static Path {
    Path::new(env!("CARGO_BIN_EXE_oracle-lab"))
}

/// Speaks `pcm` into the call in real time while collecting what the oracle says, for
/// `listen` in total (a frame that does not decrypt fails the test).
async fn talk(call: &mut Call, pcm: Vec<i16>, listen: Duration) -> Vec<i16> {
    oracle_calls_lab::local::talk(call, pcm, listen)
        .await
        .unwrap()
}

/// Another agent process of the deployment's pool, registered with LiveKit.
async fn agent_process(dep: &Deployment) -> Agent {
    Agent(
        dep.spawn_agent_process(exe(), 4, None, Duration::from_secs(30))
            .await
            .unwrap(),
    )
}

/// Says 2 s of speech (`seed`) into the call and asserts that the oracle echoes it.
async fn assert_echoes(call: &mut Call, seed: u64, what: &str) {
    let speech = oracle_calls_lab::speech::synthesize(2.0, seed);
    let heard = talk(call, speech.clone(), Duration::from_secs(3)).await;
    assert!(
        analysis::compare(&speech, &heard, 150).envelope > 0.6,
        "{what}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_agent_is_dispatched_again_and_a_new_one_rejoins_under_the_same_key() {
    init_logs();
    let _port = WEBHOOK_PORT.lock().await;
    let dir = temp_dir();
    let stack = Stack::running().unwrap();
    let mut opts = with_webhooks(&stack, &dir);
    opts.oracle = None;
    assert!(
        opts.forward_secrecy,
        "the hard case: the call is sealed to a one-time prekey"
    );
    let dep = Deployment::start(stack, opts).await.unwrap();
    let store = dep.prekey_store().unwrap().to_owned();
    // The pool's first process takes the call; the second joins the pool afterwards.
    let mut doomed = agent_process(&dep).await;
    let user = dep.new_user().await.unwrap();
    let mut call = user.call_oracle(CallType::Audio).await.unwrap();
    assert_echoes(&mut call, 1, "the first agent echoes").await;
    let survivor = agent_process(&dep).await;

    // kill -9 the agent serving the call.
    doomed.0.kill().unwrap();
    doomed.0.wait().unwrap();
    let killed = Instant::now();
    let mut oracle_left = None;
    let mut oracle_back = None;
    let mut back_after = None;
    // Speak in 1 s turns until the oracle's echo comes back (bounded).
    let mut turn = 0;
    while killed.elapsed() < Duration::from_secs(45) && back_after.is_none() {
        turn += 1;
        let pcm = oracle_calls_lab::speech::synthesize(1.0, 10 + turn);
        let mic = call.microphone();
        let speaker = tokio::spawn(async move { mic.play(&pcm).await });
        let deadline = tokio::time::Instant::now() + Duration::from_millis(1500);
        let mut loud = 0usize;
        loop {
            match tokio::time::timeout_at(deadline, call.next_event()).await {
                Ok(Some(CallEvent::OracleLeft { .. })) => {
                    oracle_left.get_or_insert(killed.elapsed());
                }
                Ok(Some(CallEvent::OracleJoined { .. })) => {
                    oracle_back.get_or_insert(killed.elapsed());
                }
                Ok(Some(CallEvent::OracleAudio { pcm })) => {
                    loud += pcm.iter().filter(|s| s.unsigned_abs() > 1000).count();
                }
                Ok(Some(CallEvent::DecryptionFailed { identity, failures })) => {
                    panic!("audio from {identity} failed to decrypt ({failures})")
                }
                Ok(Some(_)) => {}
                Ok(None) | Err(_) => break,
            }
        }
        let _ = speaker.await.unwrap();
        // Loud echo (a tenth of a second of it) after a new agent joined: the oracle is back.
        if oracle_back.is_some() && loud > 4800 {
            back_after = Some(killed.elapsed());
        }
    }
    eprintln!(
        "after kill -9: the agent left the room at {oracle_left:?}, the new one joined at \
         {oracle_back:?}, its echo was heard at {back_after:?}"
    );
    let oracle_left = oracle_left.expect("LiveKit saw the killed agent leave");
    let oracle_back = oracle_back.expect("a new agent joined the call");
    assert!(
        oracle_back >= oracle_left,
        "the new agent joined after the old left"
    );
    // Dispatch, key, prekey layer, join: all within a few seconds of LiveKit's notice.
    assert!(
        oracle_back - oracle_left < Duration::from_secs(5),
        "from the agent's departure to the new one's join: {:?}",
        oracle_back - oracle_left
    );
    assert_eq!(
        dep.metric("oracle_calls_call_events_total{event=\"agent_redispatched\"}"),
        1.0
    );
    // The new agent opened this call's key through the inner envelope the key holder kept
    // (the one-time prekey itself was destroyed by the first agent), then joined: it joins
    // only with the call key open.
    let logs: String = std::fs::read_dir(&dir)
        .unwrap()
        .filter_map(|e| {
            let p = e.unwrap().path();
            (p.extension().is_some_and(|x| x == "log")).then(|| std::fs::read_to_string(p).unwrap())
        })
        .collect();
    assert!(
        logs.contains("kept inner envelope serves an agent dispatched again"),
        "the second agent rejoined through the kept envelope"
    );
    // The same call, still active.
    let rec = dep
        .server
        .state
        .store()
        .call(call.id())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(rec.status, CallStatus::Active);
    // Hearing it again: LiveKit gives the new agent's track the old agent's m-line with a new
    // SSRC; rtc lets str0m learn it from the packets' mid extension, which resets the m-line's
    // depacketizer (with the SSRC announced in the SDP, str0m 0.25 dropped the new stream in
    // about half the runs).
    let back_after = back_after.expect("the oracle was heard again within 45 s of the kill");
    eprintln!(
        "the oracle was heard again {:?} after the new agent joined",
        back_after - oracle_back
    );
    assert!(
        back_after - oracle_back < Duration::from_secs(5),
        "heard {:?} after the new agent joined",
        back_after - oracle_back
    );

    // The end: the call ends everywhere, nothing of it stays in the key holder's store, and
    // forward secrecy holds for it like for any call.
    call.end().await.unwrap();
    verify::wait_calls_over(&store, Duration::from_secs(15))
        .await
        .unwrap();
    let rec = dep
        .server
        .state
        .store()
        .call(call.id())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(rec.status, CallStatus::Ended);
    let oracle_key = oracle_calls_crypto::OracleKeyPair::from_pkcs8_pem(
        &std::fs::read_to_string(&dep.key_file).unwrap(),
    )
    .unwrap();
    verify::past_call_stays_closed(&oracle_key, &store, &call, call.id())
        .await
        .unwrap();
    drop(survivor);
    dep.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_agent_leaving_after_its_user_is_not_dispatched_again() {
    init_logs();
    let _port = WEBHOOK_PORT.lock().await;
    let dir = temp_dir();
    let stack = Stack::running().unwrap();
    let opts = with_webhooks(&stack, &dir);
    let dep = Deployment::start(stack, opts).await.unwrap();
    let user = dep.new_user().await.unwrap();
    let mut call = user.call_oracle(CallType::Audio).await.unwrap();
    assert_echoes(&mut call, 4, "the agent echoes").await;
    // The user hangs up: the agent leaves after it, and that is the call's end, not a crash.
    call.end().await.unwrap();
    // LiveKit's webhooks for the call's participants did arrive (so this test can fail)...
    let webhooks = "oracle_calls_call_events_total{event=\"webhook\"}";
    let deadline = Instant::now() + Duration::from_secs(10);
    while dep.metric(webhooks) < 4.0 && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert!(
        dep.metric(webhooks) >= 4.0,
        "room started, two joins and at least one leave"
    );
    tokio::time::sleep(Duration::from_secs(2)).await;
    // ...and the agent leaving after its user brought no new dispatch.
    assert_eq!(
        dep.metric("oracle_calls_call_events_total{event=\"agent_redispatched\"}"),
        0.0
    );
    dep.stop().await;
}

/// Two agents in one call — LiveKit dispatching the oracle's agent into a call a waiting agent
/// was handed directly, as happens when a room made with LiveKit's dispatch restarts on
/// another node while its first agent rejoins: the agent whose identity sorts last stays, the
/// other leaves on its own without ending the call, and the user goes on hearing the oracle.
/// Real processes of one pool.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn of_two_agents_in_one_call_one_leaves_and_the_call_goes_on() {
    init_logs();
    let dir = temp_dir();
    let stack = Stack::running().unwrap();
    let mut opts = DeployOptions::new(&dir);
    opts.oracle = None;
    opts.forward_secrecy = false;
    let dep = Deployment::start(stack, opts).await.unwrap();
    let _first = agent_process(&dep).await;
    let user = dep.new_user().await.unwrap();
    let mut call = user.call_oracle(CallType::Audio).await.unwrap();
    assert_echoes(&mut call, 1, "the handed-off agent echoes").await;
    let _second = agent_process(&dep).await;
    let room = call.id().room_name().clone();
    let lk = dep.server.state.livekit();
    let agents = || async {
        let mut v: Vec<String> = lk
            .participants(&room)
            .await
            .unwrap()
            .into_iter()
            .filter(|p| p.starts_with("agent-"))
            .collect();
        v.sort();
        v
    };
    let first_agent = agents().await;
    assert_eq!(first_agent.len(), 1, "{first_agent:?}");
    assert!(
        first_agent[0].starts_with("agent-DJ_"),
        "handed off directly: {first_agent:?}"
    );

    // LiveKit dispatches the oracle's agent into the call too: the pool's idle process takes
    // it (the busy one declines a job for a room it serves) and joins.
    lk.dispatch_agent(
        &room,
        &dep.server.state.config().oracle.agent_name,
        call.id().as_str(),
    )
    .await
    .unwrap();
    // The newcomer (`agent-AJ_…` sorts before `agent-DJ_…`) sees the first agent at its join
    // and leaves; the user may never even be told of it (LiveKit announces a participant once
    // it is up). Its process logs why it left.
    let t0 = Instant::now();
    // The processes' logs, without their colour codes.
    let logs = || -> String {
        let raw: String = std::fs::read_dir(&dir)
            .unwrap()
            .filter_map(|e| {
                let p = e.unwrap().path();
                (p.extension().is_some_and(|x| x == "log"))
                    .then(|| std::fs::read_to_string(p).unwrap_or_default())
            })
            .collect();
        let mut out = String::with_capacity(raw.len());
        let mut chars = raw.chars();
        while let Some(c) = chars.next() {
            if c == '\u{1b}' {
                // ESC [ ... m
                for c in chars.by_ref() {
                    if c == 'm' {
                        break;
                    }
                }
            } else {
                out.push(c);
            }
        }
        out
    };
    let mut left = Vec::new();
    while t0.elapsed() < Duration::from_secs(20)
        && !logs().contains("another agent serves this call too")
    {
        match tokio::time::timeout(Duration::from_millis(200), call.next_event()).await {
            Ok(Some(CallEvent::OracleLeft { identity })) => left.push(identity),
            Ok(Some(CallEvent::Ended { reason })) => panic!("the call ended: {reason}"),
            Ok(Some(CallEvent::DecryptionFailed { identity, failures })) => {
                panic!("audio from {identity} failed to decrypt ({failures})")
            }
            Ok(None) => panic!("the call closed"),
            Ok(Some(_)) | Err(_) => {}
        }
    }
    let text = logs();
    let why = text
        .lines()
        .find(|l| l.contains("another agent serves this call too"))
        .expect("the second agent joined and left to the first within 20 s");
    eprintln!("after {:?}: {why}", t0.elapsed());
    assert!(why.contains("job=AJ_"), "LiveKit's job left: {why}");
    // Its job's end is logged right after (leaving the room comes first).
    while !logs().contains("outcome=Served { ended_by: AnotherAgent }") {
        assert!(
            t0.elapsed() < Duration::from_secs(30),
            "its job did not end as served by another agent"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(
        !left.contains(&first_agent[0]),
        "the first agent stayed: {left:?}"
    );
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert_eq!(agents().await, first_agent, "one agent serves the call");
    let rec = dep
        .server
        .state
        .store()
        .call(call.id())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(
        rec.status,
        CallStatus::Active,
        "leaving did not end the call"
    );
    assert_echoes(&mut call, 2, "the oracle still echoes").await;
    call.end().await.unwrap();
    dep.stop().await;
}

//! End-to-end calls on the real stack (Synapse, livekit-server, PostgreSQL from
//! `scripts/stack up`): a user's client, the oracle-calls server and an agent, all real.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]

use std::time::Duration;

use oracle_calls_agent::JobOutcome;
use oracle_calls_agent::job::EndedBy;
use oracle_calls_client::{Call, CallEvent};
use oracle_calls_lab::analysis;
use oracle_calls_lab::local::{DeployOptions, Deployment, Stack, unique_hex};
use oracle_calls_proto::{CallReason, CallStatus, CallType};

fn temp_dir() -> std::path::PathBuf {
    let d = std::env::temp_dir().join(format!("oc-e2e-{}", unique_hex(6)));
    std::fs::create_dir_all(&d).unwrap();
    d
}

/// The end-to-end tests share two cores with the servers; one call scenario at a time keeps
/// their timing meaningful.
static SERIAL: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

fn init_logs() {
    oracle_calls_test_support::init_test_logs("warn,oracle_calls_agent=info");
}

/// Speaks `pcm` into the call in real time while collecting what the oracle says, for
/// `listen` in total (a frame that does not decrypt fails the test).
async fn talk(call: &mut Call, pcm: Vec<i16>, listen: Duration) -> Vec<i16> {
    oracle_calls_lab::local::talk(call, pcm, listen)
        .await
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn audio_call_through_the_echo_oracle() {
    init_logs();
    let _serial = SERIAL.lock().await;
    let dep = Deployment::start(Stack::running().unwrap(), DeployOptions::new(temp_dir()))
        .await
        .unwrap();
    let client = dep.new_user().await.unwrap();
    let mut call = client.call_oracle(CallType::Audio).await.unwrap();
    let speech = oracle_calls_lab::speech::synthesize(4.0, 11);
    let heard = talk(&mut call, speech.clone(), Duration::from_secs(6)).await;
    let m = analysis::compare(&speech, &heard, 150);
    assert!(
        m.envelope > 0.6,
        "the echo follows the speech: {m:?} ({} samples heard)",
        heard.len()
    );
    let hung_up = std::time::Instant::now();
    call.end().await.unwrap();
    call.end().await.unwrap();

    let report = tokio::time::timeout(
        Duration::from_secs(2),
        dep.agent.as_ref().unwrap().next_report(),
    )
    .await
    .expect("the agent leaves within 2 s of the hang-up")
    .unwrap();
    assert!(hung_up.elapsed() < Duration::from_secs(2));
    assert!(
        matches!(
            report.outcome,
            JobOutcome::Served {
                ended_by: EndedBy::UserLeft | EndedBy::RoomClosed | EndedBy::Terminated
            }
        ),
        "{report:?}"
    );
    assert!(report.frames_heard > 150, "{report:?}");
    assert_eq!(report.decrypt_failures, 0, "{report:?}");
    let rec = dep
        .server
        .state
        .store()
        .call(call.id())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(rec.status, CallStatus::Ended);
    assert_eq!(
        rec.reason,
        Some(CallReason::UserHangup),
        "the hang-up reached the server before the user left the media room"
    );
    dep.stop().await;
}

/// A video call through the echo oracle: the user's camera sends libvpx's VP8 frames (a
/// fixture; key frame again whenever the oracle's side asks), the microphone sends speech; the
/// user gets back, end-to-end encrypted both ways, its own frames byte for byte and its echo.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn video_call_through_the_echo_oracle() {
    init_logs();
    let _serial = SERIAL.lock().await;
    let clip = oracle_calls::ivf::parse(include_bytes!(
        "../../cli/tests/fixtures/testsrc-320x240.ivf"
    ))
    .unwrap();
    let dep = Deployment::start(Stack::running().unwrap(), DeployOptions::new(temp_dir()))
        .await
        .unwrap();
    let client = dep.new_user().await.unwrap();
    let mut call = client.call_oracle(CallType::Video).await.unwrap();
    let camera = call.camera().expect("a video call has a camera");
    let (restart_tx, mut restart) = tokio::sync::mpsc::channel::<()>(8);
    let frames = clip.frames.clone();
    let camera_task = tokio::spawn(async move {
        let start = std::time::Instant::now();
        let mut tick = tokio::time::interval(Duration::from_millis(66));
        let mut i = 0usize;
        while start.elapsed() < Duration::from_secs(7) {
            tick.tick().await;
            if restart.try_recv().is_ok() {
                i = 0;
            }
            let ms = start.elapsed().as_millis() as u64;
            camera
                .push_vp8(&frames[i % frames.len()], ms)
                .await
                .unwrap();
            i += 1;
        }
    });
    let speech = oracle_calls_lab::speech::synthesize(4.0, 12);
    let mic = call.microphone();
    let pcm = speech.clone();
    let speaker = tokio::spawn(async move { mic.play(&pcm).await });
    let (mut heard, mut seen) = (Vec::new(), Vec::new());
    let deadline = tokio::time::Instant::now() + Duration::from_secs(7);
    while let Ok(Some(ev)) = tokio::time::timeout_at(deadline, call.next_event()).await {
        match ev {
            CallEvent::OracleAudio { pcm } => heard.extend(pcm),
            CallEvent::OracleVideo { vp8, keyframe } => seen.push((vp8, keyframe)),
            CallEvent::KeyframeRequested => {
                let _ = restart_tx.try_send(());
            }
            CallEvent::DecryptionFailed { identity, failures } => {
                panic!("media from {identity} failed to decrypt ({failures})")
            }
            _ => {}
        }
    }
    speaker.await.unwrap().unwrap();
    camera_task.await.unwrap();
    let m = analysis::compare(&speech, &heard, 150);
    eprintln!(
        "video call: {} frames back ({} key frames), audio echo {m:?}",
        seen.len(),
        seen.iter().filter(|f| f.1).count()
    );
    assert!(
        seen.len() >= 20,
        "too few video frames came back: {}",
        seen.len()
    );
    assert!(seen.iter().any(|f| f.1), "no key frame came back");
    assert!(
        seen.iter().all(|(f, _)| clip.frames.contains(f)),
        "every frame that came back is one we sent, byte for byte"
    );
    assert!(m.envelope > 0.5, "the echo follows the speech: {m:?}");
    call.end().await.unwrap();
    let report = tokio::time::timeout(
        Duration::from_secs(5),
        dep.agent.as_ref().unwrap().next_report(),
    )
    .await
    .unwrap()
    .unwrap();
    assert_eq!(report.decrypt_failures, 0, "{report:?}");
    dep.stop().await;
}

/// A call sealed to a published key this agent does not hold is another agent's (a pool
/// during a key rotation): the agent declines the server's hand-off and then LiveKit's offer,
/// never joins, and reports nothing
/// — no `keyDecryptionFailed`, the key endpoint still answers. With a second agent holding that
/// key in the pool, the next call is served by it, whichever agent LiveKit offers it to first.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_key_sealed_to_another_agents_key_is_left_to_the_pool() {
    init_logs();
    let _serial = SERIAL.lock().await;
    // The server publishes a second key first; clients prefer it, but the agent does not hold it.
    let foreign = oracle_calls_crypto::OracleKeyPair::generate(
        oracle_calls_crypto::KeyScheme::HpkeP256,
        &mut rand::rng(),
    )
    .unwrap();
    let dep = Deployment::start_with_published(
        Stack::running().unwrap(),
        DeployOptions::new(temp_dir()),
        Some(&foreign),
    )
    .await
    .unwrap();
    let first = dep.agent.as_ref().unwrap();
    let stat = |a: &oracle_calls_agent::AgentHandle| {
        let s = a.stats();
        let l = |c: &std::sync::atomic::AtomicU64| c.load(std::sync::atomic::Ordering::Relaxed);
        (
            l(&s.keys_not_held),
            l(&s.jobs_accepted),
            l(&s.calls_joined),
            l(&s.key_failures),
        )
    };
    let client = dep.new_user().await.unwrap();
    let mut call = client.call_oracle(CallType::Audio).await.unwrap();
    // The only agent looks at the envelope and declines: the server's hand-off (direct
    // dispatch), then the offer of LiveKit's dispatch the decline asked for.
    tokio::time::timeout(Duration::from_secs(10), async {
        while stat(first).0 < 2 {
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    })
    .await
    .expect("the agent declines the call");
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(
        stat(first),
        (2, 0, 0, 0),
        "declined twice (hand-off, LiveKit's offer), never joined, nothing failed"
    );
    let rec = dep
        .server
        .state
        .store()
        .call(call.id())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(rec.status, CallStatus::Active);
    assert_eq!(rec.reason, None, "no keyDecryptionFailed");
    let r = reqwest::Client::new()
        .get(format!(
            "{}/calls/{}/key",
            dep.server.url,
            call.id().to_path_segment()
        ))
        .bearer_auth(dep.agent_api_key.as_str())
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 200, "the key endpoint is not blocked");
    call.end().await.unwrap();

    // An agent holding the foreign key joins the pool: the next call is served by it.
    let foreign_file = dep.dir.join("foreign.pem");
    oracle_calls::keyfile::write_private_key(&foreign_file, &foreign, false).unwrap();
    let second = dep
        .start_agent(
            oracle_calls_agent::oracles::Builtin::Echo(
                oracle_calls_agent::oracles::Echo::default(),
            ),
            4,
            Some(&foreign_file),
        )
        .await
        .unwrap();
    let mut call = client.call_oracle(CallType::Audio).await.unwrap();
    let speech = oracle_calls_lab::speech::synthesize(2.0, 5);
    let heard = talk(&mut call, speech, Duration::from_secs(4)).await;
    assert!(
        heard.len() > 16_000,
        "the echo answered: {} samples",
        heard.len()
    );
    call.end().await.unwrap();
    let report = tokio::time::timeout(Duration::from_secs(5), second.next_report())
        .await
        .unwrap()
        .unwrap();
    assert!(
        matches!(report.outcome, JobOutcome::Served { .. }),
        "{report:?}"
    );
    let (not_held, accepted, joined, failed) = stat(first);
    assert!(not_held >= 1 && accepted == 0 && joined == 0 && failed == 0);
    let _ = second.shutdown().await;
    dep.stop().await;
}

/// Security claim 26 on the real stack: an envelope sealed to the oracle's real key — the one
/// the agent holds — but bound to another call's context (here the same room, user, oracle and
/// type under another session id, as if lifted from another call of that room) keeps the agent
/// out. The agent accepts the job (the key is its own), fails to open the envelope for this
/// call's context, never joins, reports `keyDecryptionFailed`; the server ends the call with
/// that reason, the key endpoint hands the envelope out no more, and the user sees the call
/// ended with that reason.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_envelope_bound_to_another_call_keeps_the_agent_out_and_blocks_the_key_endpoint() {
    use oracle_calls_proto::{
        CallReason, EventId, ListCallsQuery, OraclesCallContent, RoomName, SessionId, Timestamp,
    };
    use rand::RngExt as _;
    init_logs();
    let _serial = SERIAL.lock().await;
    let dep = Deployment::start(Stack::running().unwrap(), DeployOptions::new(temp_dir()))
        .await
        .unwrap();
    let agent = dep.agent.as_ref().unwrap();
    let stat = || {
        let s = agent.stats();
        let l = |c: &std::sync::atomic::AtomicU64| c.load(std::sync::atomic::Ordering::Relaxed);
        (
            l(&s.keys_not_held),
            l(&s.jobs_accepted),
            l(&s.calls_joined),
            l(&s.key_failures),
        )
    };
    // A good call first: the encrypted DM with the bot exists, the bot is joined and its
    // device is pinned and verified, so the crafted event below reaches the bot like any other.
    let client = dep.new_user().await.unwrap();
    let mut good = client.call_oracle(CallType::Audio).await.unwrap();
    let room = good.matrix_room().clone();
    tokio::time::timeout(Duration::from_secs(10), async {
        while !matches!(
            good.next_event().await,
            Some(CallEvent::OracleJoined { .. }) | None
        ) {}
    })
    .await
    .expect("the agent joins the good call");
    good.end().await.unwrap();
    let report = tokio::time::timeout(Duration::from_secs(10), agent.next_report())
        .await
        .unwrap()
        .unwrap();
    assert!(
        matches!(report.outcome, JobOutcome::Served { .. }),
        "{report:?}"
    );
    assert_eq!(stat(), (0, 1, 1, 0), "the good call was served");

    // The crafted call: sealed to the key the agent holds, bound to another session's context.
    let oracle_key = oracle_calls::keyfile::read_private_key(&dep.key_file).unwrap();
    let rand16 = || {
        let mut b = [0u8; 16];
        rand::rng().fill(&mut b);
        b
    };
    let hex = |b: [u8; 16]| b.iter().map(|x| format!("{x:02x}")).collect::<String>();
    let room_name = RoomName::from_random(rand16());
    let session_id = SessionId::parse(&format!("sess-{}", hex(rand16()))).unwrap();
    let other_session = SessionId::parse(&format!("sess-{}", hex(rand16()))).unwrap();
    let other_context = oracle_calls_crypto::CallContext::new(
        other_session,
        room_name.clone(),
        client.user_did().clone(),
        dep.oracle_did.clone(),
        CallType::Audio,
    );
    let envelope = {
        let mut rng = rand::rng();
        let key = oracle_calls_crypto::CallKey::generate(&mut rng);
        oracle_calls_crypto::seal(&oracle_key.public_key(), &key, &other_context, &mut rng).unwrap()
    };
    let now_ms = i64::try_from(
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_millis(),
    )
    .unwrap();
    let content = OraclesCallContent {
        call_id: None,
        call_type: CallType::Audio,
        call_status: CallStatus::Pending,
        call_started_at: Timestamp::from_unix_millis(now_ms).unwrap(),
        call_ended_at: None,
        encryption_key: envelope,
        session_id: session_id.clone(),
        room_id: room_name,
        user_did: client.user_did().clone(),
        oracle_did: dep.oracle_did.clone(),
        key_derivation: oracle_calls_proto::KeyDerivation::Hkdf,
    };
    let sent = room
        .send_raw(
            oracle_calls_proto::CALL_EVENT_TYPE,
            serde_json::to_value(&content).unwrap(),
        )
        .await
        .unwrap();
    let call_id = content.call_id_for(EventId::parse(sent.response.event_id.as_str()).unwrap());
    // The sync activates the call and dispatches the agent.
    let token = client.openid_token().await.unwrap();
    let synced = client.api().sync(&call_id, &token).await.unwrap();
    assert_eq!(synced.call_id, call_id);
    assert_eq!(synced.status, CallStatus::Active);

    let report = tokio::time::timeout(Duration::from_secs(15), agent.next_report())
        .await
        .expect("the agent reports the call")
        .unwrap();
    assert_eq!(report.call_id.as_ref(), Some(&call_id), "{report:?}");
    assert!(
        matches!(&report.outcome, JobOutcome::KeyDecryptionFailed(why)
            if why.contains("different call context")),
        "the open failed on the context: {report:?}"
    );
    assert!(
        report.joined_after.is_none() && report.key_ready_after.is_none(),
        "the agent never had the key nor joined: {report:?}"
    );
    assert_eq!(
        stat(),
        (0, 2, 1, 1),
        "its own key (not declined), accepted, never joined, one key failure"
    );
    // The server ended the call with the agent's reason.
    let rec = dep
        .server
        .state
        .store()
        .call(&call_id)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(rec.status, CallStatus::Ended);
    assert_eq!(rec.reason, Some(CallReason::KeyDecryptionFailed));
    // The key endpoint hands the envelope out no more (410 for an ended call, 403 blocked).
    let r = reqwest::Client::new()
        .get(format!(
            "{}/calls/{}/key",
            dep.server.url,
            call_id.to_path_segment()
        ))
        .bearer_auth(dep.agent_api_key.as_str())
        .send()
        .await
        .unwrap();
    assert!(
        matches!(r.status().as_u16(), 403 | 410),
        "no envelope after the failure: {}",
        r.status()
    );
    // The user learns it from the server: the call is ended, as keyDecryptionFailed.
    let page = client
        .list_calls(&ListCallsQuery {
            status: Some(CallStatus::Ended),
            session_id: Some(session_id),
            ..Default::default()
        })
        .await
        .unwrap();
    let seen = page
        .calls
        .iter()
        .find(|c| c.call_id == call_id)
        .expect("the user's list shows the call as ended");
    assert_eq!(seen.reason, Some(CallReason::KeyDecryptionFailed));
    dep.stop().await;
}

/// A participant with a valid LiveKit token for the call's room but without the call key is
/// not the user: the agent logs it as unexpected, and when the user hangs up the agent ends
/// the call although the intruder is still in the room (who counts as the user is proven in
/// `job::tests::only_the_named_user_is_the_user`).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_intruder_in_the_room_is_not_taken_for_the_user() {
    init_logs();
    let _serial = SERIAL.lock().await;
    let dep = Deployment::start(Stack::running().unwrap(), DeployOptions::new(temp_dir()))
        .await
        .unwrap();
    let client = dep.new_user().await.unwrap();
    let mut call = client.call_oracle(CallType::Audio).await.unwrap();
    // The intruder: a token minted with the LiveKit API secret for the call's room, no key.
    let token =
        dep.stack
            .livekit()
            .unwrap()
            .join_token(call.id().room_name().as_str(), "intruder", 600);
    let (intruder, _events) = oracle_calls_rtc::Room::connect(
        dep.stack.get("LIVEKIT_URL").unwrap(),
        &token,
        oracle_calls_rtc::RoomOptions::default(),
    )
    .await
    .unwrap();
    let speech = oracle_calls_lab::speech::synthesize(2.0, 7);
    let heard = talk(&mut call, speech, Duration::from_secs(4)).await;
    assert!(
        heard.len() > 16_000,
        "the echo answered: {} samples",
        heard.len()
    );
    call.end().await.unwrap();
    let report = tokio::time::timeout(
        Duration::from_secs(5),
        dep.agent.as_ref().unwrap().next_report(),
    )
    .await
    .unwrap()
    .unwrap();
    // The client reports the hang-up before it leaves, so the server usually closes the room
    // first (RoomClosed); either way the intruder, still in the room, did not keep the agent.
    assert!(
        matches!(
            report.outcome,
            JobOutcome::Served {
                ended_by: EndedBy::UserLeft | EndedBy::RoomClosed
            }
        ),
        "the user's hang-up ends the call, the intruder does not keep it: {report:?}"
    );
    intruder.leave().await;
    dep.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ten_concurrent_calls_through_one_agent() {
    init_logs();
    let _serial = SERIAL.lock().await;
    let dep = Deployment::start(Stack::running().unwrap(), DeployOptions::new(temp_dir()))
        .await
        .unwrap();
    let mut clients = Vec::new();
    for _ in 0..10 {
        clients.push(dep.new_user().await.unwrap());
    }
    let agent = dep.agent.as_ref().unwrap();
    // Ten calls: one starts every 300 ms, and all talk together once all ten are connected.
    // This process also runs the ten users' clients on two cores in a debug build, so audio
    // quality is not judged here (the single-call test and `demo` do that); what is checked is
    // that every call connects, carries encrypted audio both ways and is served.
    let all_up = std::sync::Arc::new(tokio::sync::Barrier::new(10));
    let mut tasks = Vec::new();
    for (i, client) in (0u64..).zip(clients) {
        tokio::time::sleep(Duration::from_millis(300)).await;
        let all_up = all_up.clone();
        tasks.push(tokio::spawn(async move {
            let mut call = client.call_oracle(CallType::Audio).await.unwrap();
            // Talk only once all ten are connected: then all ten are surely in flight together.
            all_up.wait().await;
            let speech = oracle_calls_lab::speech::synthesize(4.0, 100 + i);
            let heard = talk(&mut call, speech, Duration::from_secs(7)).await;
            call.end().await.unwrap();
            heard.len() / 960
        }));
    }
    let mut peak = 0;
    while tasks.iter().any(|t| !t.is_finished()) {
        peak = peak.max(
            agent
                .stats()
                .calls_active
                .load(std::sync::atomic::Ordering::Relaxed),
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    for t in tasks {
        let frames = t.await.unwrap();
        assert!(frames >= 25, "every user hears the oracle: {frames} frames");
    }
    assert!(peak >= 9, "the calls ran concurrently (peak {peak})");
    for _ in 0..10 {
        let r = tokio::time::timeout(Duration::from_secs(10), agent.next_report())
            .await
            .unwrap()
            .unwrap();
        assert!(matches!(r.outcome, JobOutcome::Served { .. }), "{r:?}");
        assert!(r.frames_heard >= 25, "the agent hears every user: {r:?}");
        assert_eq!(r.decrypt_failures, 0, "{r:?}");
    }
    dep.stop().await;
}

/// What the fault proxy does with a matching request.
#[derive(Clone, Copy, Debug, PartialEq)]
enum Fault {
    /// Answer 503 without forwarding (the server is down).
    Refuse,
    /// Forward it, then lose the answer and say 502 (the write happened; the client cannot know).
    LoseAnswer,
}

/// An HTTP/1.1 proxy to `upstream` that forces one request per connection and applies
/// `rule(request line, n-th match)` to requests. Returns its base URL and the number of
/// requests the rule matched.
async fn fault_proxy(
    upstream: &str,
    rule: impl Fn(&str, usize) -> Option<Fault> + Send + Sync + 'static,
    matches: impl Fn(&str) -> bool + Send + Sync + 'static,
) -> (String, std::sync::Arc<std::sync::atomic::AtomicUsize>) {
    use std::sync::Arc;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
    let upstream = upstream
        .trim_start_matches("http://")
        .trim_end_matches('/')
        .to_owned();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let base = format!("http://{}", listener.local_addr().unwrap());
    let count = Arc::new(AtomicUsize::new(0));
    let (rule, matches, c) = (Arc::new(rule), Arc::new(matches), count.clone());
    tokio::spawn(async move {
        loop {
            let Ok((mut sock, _)) = listener.accept().await else {
                return;
            };
            let (rule, matches, c, upstream) =
                (rule.clone(), matches.clone(), c.clone(), upstream.clone());
            tokio::spawn(async move {
                let mut buf = Vec::new();
                let mut chunk = [0u8; 8192];
                let head_end = loop {
                    let Ok(n) = sock.read(&mut chunk).await else {
                        return;
                    };
                    if n == 0 {
                        return;
                    }
                    buf.extend_from_slice(&chunk[..n]);
                    if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                        break i + 4;
                    }
                };
                let head = String::from_utf8_lossy(&buf[..head_end]).to_string();
                let len: usize = head
                    .lines()
                    .find_map(|l| {
                        l.to_ascii_lowercase()
                            .strip_prefix("content-length:")
                            .map(|v| v.trim().parse().unwrap_or(0))
                    })
                    .unwrap_or(0);
                while buf.len() < head_end + len {
                    let Ok(n) = sock.read(&mut chunk).await else {
                        return;
                    };
                    if n == 0 {
                        break;
                    }
                    buf.extend_from_slice(&chunk[..n]);
                }
                let line = head.lines().next().unwrap_or("").to_owned();
                let fault = if matches(&line) {
                    let n = c.fetch_add(1, Ordering::SeqCst);
                    rule(&line, n)
                } else {
                    None
                };
                let reply_error = |code: u16| {
                    let body = r#"{"errcode":"M_UNKNOWN","error":"injected fault","error":{"code":"unavailable","message":"injected fault"}}"#;
                    format!(
                        "HTTP/1.1 {code} Injected\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
                        body.len()
                    )
                };
                if fault == Some(Fault::Refuse) {
                    let _ = sock.write_all(reply_error(503).as_bytes()).await;
                    return;
                }
                let Ok(mut up) = tokio::net::TcpStream::connect(&upstream).await else {
                    return;
                };
                let mut new_head: String = head
                    .trim_end_matches("\r\n")
                    .split("\r\n")
                    .filter(|l| !l.to_ascii_lowercase().starts_with("connection:"))
                    .map(|l| format!("{l}\r\n"))
                    .collect();
                new_head.push_str("connection: close\r\n\r\n");
                if up.write_all(new_head.as_bytes()).await.is_err()
                    || up.write_all(&buf[head_end..]).await.is_err()
                {
                    return;
                }
                let mut answer = Vec::new();
                let _ = up.read_to_end(&mut answer).await;
                // A login answer's `well_known` would make matrix-sdk switch to the homeserver's
                // own URL, around this proxy; rename the key (same length, same Content-Length).
                if line.starts_with("POST ") && line.contains("/login") {
                    let (from, to) = (b"\"well_known\"", b"\"xwell_know\"");
                    if let Some(i) = answer.windows(from.len()).position(|w| w == from) {
                        answer[i..i + to.len()].copy_from_slice(to);
                    }
                }
                if fault == Some(Fault::LoseAnswer) {
                    let _ = sock.write_all(reply_error(502).as_bytes()).await;
                } else {
                    let _ = sock.write_all(&answer).await;
                }
            });
        }
    });
    (base, count)
}

async fn user_via(
    dep: &Deployment,
    homeserver: &str,
    server: &str,
    early_join: bool,
) -> oracle_calls_client::OracleClient {
    let id = unique_hex(5);
    let name = format!("did-ixo-user{id}");
    let (_, password) = dep.stack.user(&name).unwrap();
    let mut cfg = oracle_calls_client::ClientConfig::new(
        homeserver,
        server,
        dep.dir.join(format!("client-{id}")),
        dep.oracle_did.clone(),
    );
    cfg.early_join = early_join;
    oracle_calls_client::OracleClient::connect(
        cfg,
        oracle_calls_client::Login::Password {
            user: name,
            password,
        },
    )
    .await
    .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn server_down_at_sync_gives_a_clear_error_after_bounded_retries_and_leaves_nothing_open() {
    init_logs();
    let _serial = SERIAL.lock().await;
    let dep = Deployment::start(Stack::running().unwrap(), DeployOptions::new(temp_dir()))
        .await
        .unwrap();
    let (proxy, syncs) = fault_proxy(
        &dep.server.url,
        |_, _| Some(Fault::Refuse),
        |line| line.starts_with("POST /calls/") && line.contains("/sync "),
    )
    .await;
    let client = user_via(&dep, dep.stack.get("MATRIX_URL").unwrap(), &proxy, false).await;
    let err = client.call_oracle(CallType::Audio).await.unwrap_err();
    assert!(
        matches!(
            err,
            oracle_calls_client::CallError::ServerUnreachable { attempts: 4, .. }
        ),
        "{err}"
    );
    assert!(
        err.to_string().contains("503"),
        "the error says what happened: {err}"
    );
    assert_eq!(
        syncs.load(std::sync::atomic::Ordering::SeqCst),
        4,
        "bounded retries"
    );
    // Nothing was started: no call stored, no LiveKit room, no job for the agent.
    let agent = dep.agent.as_ref().unwrap();
    assert_eq!(
        agent
            .stats()
            .jobs_offered
            .load(std::sync::atomic::Ordering::Relaxed),
        0
    );
    let open = dep.server.state.store().open_calls().await.unwrap();
    assert!(open.is_empty(), "the server holds no open call: {open:?}");
    dep.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lost_matrix_send_answer_is_retried_without_a_duplicate_event() {
    init_logs();
    let _serial = SERIAL.lock().await;
    let dep = Deployment::start(Stack::running().unwrap(), DeployOptions::new(temp_dir()))
        .await
        .unwrap();
    let (proxy, sends) = fault_proxy(
        dep.stack.get("MATRIX_URL").unwrap(),
        |_, n| (n == 0).then_some(Fault::LoseAnswer),
        |line| line.starts_with("PUT ") && line.contains("/send/m.room.encrypted/"),
    )
    .await;
    let client = user_via(&dep, &proxy, &dep.server.url, false).await;
    let mut call = client.call_oracle(CallType::Audio).await.unwrap();
    assert!(
        sends.load(std::sync::atomic::Ordering::SeqCst) >= 2,
        "the send was retried"
    );
    // Exactly one call event (edits carry a clear `m.relates_to`; the original does not).
    let m = client.matrix();
    let url = format!(
        "{}/_matrix/client/v3/rooms/{}/messages?dir=b&limit=100",
        dep.stack.get("MATRIX_URL").unwrap(),
        call.matrix_room().room_id()
    );
    let v: serde_json::Value = reqwest::Client::new()
        .get(url)
        .bearer_auth(m.access_token().unwrap())
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let me = m.user_id().unwrap().to_string();
    let originals = v["chunk"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|e| e["type"] == "m.room.encrypted" && e["sender"] == me.as_str())
        .filter(|e| e["content"].get("m.relates_to").is_none())
        .count();
    assert_eq!(originals, 1, "one call event despite the retry");
    call.end().await.unwrap();
    dep.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_agent_killed_mid_call_breaks_neither_the_server_nor_other_calls() {
    init_logs();
    let _serial = SERIAL.lock().await;
    let mut opts = DeployOptions::new(temp_dir());
    opts.oracle = None;
    let dep = Deployment::start(Stack::running().unwrap(), opts)
        .await
        .unwrap();
    // Call A goes to the agent process (the only worker; it takes one call).
    let mut doomed = dep
        .spawn_agent_process(
            std::path::Path::new(env!("CARGO_BIN_EXE_oracle-lab")),
            1,
            // The agent process's config also carries an encoder complexity here.
            Some(5),
            Duration::from_secs(30),
        )
        .await
        .unwrap();
    let a_user = dep.new_user().await.unwrap();
    let mut a = a_user.call_oracle(CallType::Audio).await.unwrap();
    let heard_a = talk(
        &mut a,
        oracle_calls_lab::speech::synthesize(2.0, 1),
        Duration::from_secs(3),
    )
    .await;
    assert!(heard_a.len() > 960 * 20, "call A runs on the agent process");
    // Call B goes to a second agent (the process is full).
    let other = dep
        .start_agent(
            oracle_calls_agent::oracles::Builtin::Echo(oracle_calls_agent::oracles::Echo::default()),
            4,
            None,
        )
        .await
        .unwrap();
    let b_user = dep.new_user().await.unwrap();
    let mut b = b_user.call_oracle(CallType::Audio).await.unwrap();
    // B's agent comes through LiveKit's dispatch (the full process declines the hand-off):
    // speak once it is there.
    oracle_calls_lab::local::until_oracle_heard(&mut b, Duration::from_secs(10))
        .await
        .unwrap();
    // Kill the first agent while both calls run.
    doomed.kill().unwrap();
    doomed.wait().unwrap();
    let speech = oracle_calls_lab::speech::synthesize(4.0, 2);
    let heard_b = talk(&mut b, speech.clone(), Duration::from_secs(6)).await;
    let m = analysis::compare(&speech, &heard_b, 150);
    assert!(m.envelope > 0.6, "call B goes on: {m:?}");
    // The server still answers and still ends calls, including the orphaned one.
    let health = reqwest::get(format!("{}/healthz", dep.server.url))
        .await
        .unwrap();
    assert_eq!(health.status().as_u16(), 200);
    a.end().await.unwrap();
    b.end().await.unwrap();
    for id in [a.id(), b.id()] {
        let rec = dep.server.state.store().call(id).await.unwrap().unwrap();
        assert_eq!(rec.status, CallStatus::Ended);
    }
    // And a new call after the kill is served.
    let c_user = dep.new_user().await.unwrap();
    let mut c = c_user.call_oracle(CallType::Audio).await.unwrap();
    let speech = oracle_calls_lab::speech::synthesize(3.0, 3);
    let heard_c = talk(&mut c, speech.clone(), Duration::from_secs(5)).await;
    assert!(analysis::compare(&speech, &heard_c, 150).envelope > 0.6);
    c.end().await.unwrap();
    other.shutdown().await.unwrap();
    dep.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_call_command_says_a_wav_and_records_the_answer() {
    init_logs();
    let _serial = SERIAL.lock().await;
    let dep = Deployment::start(Stack::running().unwrap(), DeployOptions::new(temp_dir()))
        .await
        .unwrap();
    let name = format!("did-ixo-cli{}", unique_hex(4));
    let (_, password) = dep.stack.user(&name).unwrap();
    let pw_file = dep.dir.join("user-password");
    std::fs::write(&pw_file, password.as_bytes()).unwrap();
    let input = dep.dir.join("in.wav");
    let output = dep.dir.join("out.wav");
    let speech = oracle_calls_lab::speech::synthesize(3.0, 77);
    oracle_calls::wav::write(&input, &speech).unwrap();
    let run = |extra: &[&str]| {
        let mut cmd = std::process::Command::new(env!("CARGO_BIN_EXE_oracle-lab"));
        cmd.args(["call", "--user", &name, "--homeserver"])
            .arg(dep.stack.get("MATRIX_URL").unwrap());
        if !extra.contains(&"--oracle") {
            cmd.args(["--oracle", dep.oracle_did.as_str()]);
        }
        cmd.arg("--server")
            .arg(&dep.server.url)
            .arg("--state")
            .arg(dep.dir.join("cli-state"))
            .args(extra)
            .env("ORACLE_CALLS_MATRIX_PASSWORD_FILE", &pw_file)
            .env(
                "RUST_LOG",
                "warn,matrix_sdk=off,matrix_sdk_crypto=off,matrix_sdk_base=off",
            );
        cmd
    };
    let out = tokio::task::spawn_blocking({
        let mut cmd = run(&["--seconds", "5", "--input"]);
        cmd.arg(&input).arg("--output").arg(&output);
        move || cmd.output().unwrap()
    })
    .await
    .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    assert!(
        stderr.contains("s of the oracle's audio received"),
        "progress is shown: {stderr}"
    );
    let heard = oracle_calls::wav::read(&output).unwrap();
    let m = analysis::compare(&speech, &heard, 150);
    assert!(m.envelope > 0.6, "the recorded answer is the echo: {m:?}");
    // The call it printed is listed as ended by `calls`.
    let call_id = String::from_utf8_lossy(&out.stdout).trim().to_owned();
    let list = tokio::task::spawn_blocking({
        let mut cmd = std::process::Command::new(env!("CARGO_BIN_EXE_oracle-lab"));
        cmd.args(["calls", "--user", &name, "--homeserver"])
            .arg(dep.stack.get("MATRIX_URL").unwrap())
            .args(["--oracle", dep.oracle_did.as_str()])
            .arg("--server")
            .arg(&dep.server.url)
            .arg("--state")
            .arg(dep.dir.join("cli-state"));
        move || cmd.output().unwrap()
    })
    .await
    .unwrap();
    let listed = String::from_utf8_lossy(&list.stdout);
    assert!(
        list.status.success(),
        "{}",
        String::from_utf8_lossy(&list.stderr)
    );
    assert!(
        listed.contains(&call_id) && listed.contains("ended"),
        "{listed}"
    );
    // A bad call type is refused before anything happens.
    let bad = tokio::task::spawn_blocking({
        let mut cmd = run(&["--type", "hologram"]);
        move || cmd.output().unwrap()
    })
    .await
    .unwrap();
    assert!(!bad.status.success());
    assert!(String::from_utf8_lossy(&bad.stderr).contains("unknown call type"));
    // A key-transparency directory must be reached over TLS (or on loopback), and its public
    // key comes with it.
    let kt_keys = dep.dir.join("kt-keys");
    let keygen = std::process::Command::new(env!("CARGO_BIN_EXE_oracle-lab"))
        .args(["kt", "keygen", "--out-dir"])
        .arg(&kt_keys)
        .output()
        .unwrap();
    assert!(
        keygen.status.success(),
        "{}",
        String::from_utf8_lossy(&keygen.stderr)
    );
    let kt_public = kt_keys.join("public-key.json");
    let bad = tokio::task::spawn_blocking({
        let mut cmd = run(&["--kt-url", "http://kt.example.org", "--kt-public-key"]);
        cmd.arg(&kt_public);
        move || cmd.output().unwrap()
    })
    .await
    .unwrap();
    assert!(!bad.status.success());
    let stderr = String::from_utf8_lossy(&bad.stderr);
    assert!(
        stderr.contains("refusing http://kt.example.org"),
        "{stderr}"
    );
    let bad = tokio::task::spawn_blocking({
        let mut cmd = run(&["--kt-url", "https://kt.example.org"]);
        move || cmd.output().unwrap()
    })
    .await
    .unwrap();
    assert!(
        !bad.status.success(),
        "a directory URL without its key is refused"
    );
    // A server that describes another oracle than the one asked for is refused before any
    // event is sent.
    let bad = tokio::task::spawn_blocking({
        let mut cmd = run(&["--oracle", "did:ixo:someoneelse"]);
        move || cmd.output().unwrap()
    })
    .await
    .unwrap();
    assert!(!bad.status.success());
    let stderr = String::from_utf8_lossy(&bad.stderr);
    assert!(
        stderr.contains(&format!(
            "describes the oracle {}, but this call is to did:ixo:someoneelse",
            dep.oracle_did
        )),
        "{stderr}"
    );
    // A video call without frames to show is refused before anything happens.
    let bad = tokio::task::spawn_blocking({
        let mut cmd = run(&["--type", "video"]);
        move || cmd.output().unwrap()
    })
    .await
    .unwrap();
    assert!(!bad.status.success());
    assert!(String::from_utf8_lossy(&bad.stderr).contains("--video-input"));
    // A video call: libvpx's frames out, the oracle's echo recorded as IVF.
    let fixture = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../cli/tests/fixtures/testsrc-320x240.ivf");
    let video_out = dep.dir.join("out.ivf");
    let out = tokio::task::spawn_blocking({
        let mut cmd = run(&["--type", "video", "--seconds", "5", "--video-input"]);
        cmd.arg(&fixture).arg("--video-output").arg(&video_out);
        move || cmd.output().unwrap()
    })
    .await
    .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let sent = oracle_calls::ivf::parse(&std::fs::read(&fixture).unwrap()).unwrap();
    let back = oracle_calls::ivf::parse(&std::fs::read(&video_out).unwrap()).unwrap();
    assert!(back.frames.len() >= 20, "{} frames", back.frames.len());
    assert!(oracle_calls::ivf::is_keyframe(&back.frames[0]));
    assert!(back.frames.iter().all(|f| sent.frames.contains(f)));
    dep.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_tone_oracle_answers_an_utterance_with_its_chime() {
    init_logs();
    let _serial = SERIAL.lock().await;
    let mut opts = DeployOptions::new(temp_dir());
    opts.oracle = Some(oracle_calls_agent::oracles::Builtin::Tone(
        oracle_calls_agent::oracles::Tone,
    ));
    let dep = Deployment::start(Stack::running().unwrap(), opts)
        .await
        .unwrap();
    let client = dep.new_user().await.unwrap();
    let mut call = client.call_oracle(CallType::Audio).await.unwrap();
    // One second of speech, then quiet: one utterance.
    let mut said = oracle_calls_lab::speech::synthesize(1.0, 9);
    said.extend(std::iter::repeat_n(0i16, 48_000 * 3));
    let heard = talk(&mut call, said, Duration::from_secs(5)).await;
    call.end().await.unwrap();
    // Find each chime note in the answer (a 160 ms window where that note dominates).
    let dominant = |f: f64| {
        heard
            .chunks_exact(960 * 8)
            .chain(heard.get(480..).unwrap_or(&[]).chunks_exact(960 * 8))
            .map(|w| oracle_calls_media::goertzel_power(w, f))
            .fold(0.0f64, f64::max)
    };
    for f in oracle_calls_agent::oracles::CHIME {
        let p = dominant(f);
        assert!(p > 0.3, "the chime's {f} Hz note is heard (power {p:.2})");
    }
    dep.stop().await;
}

/// The server moved into its own `oracle-calls serve` process (what `bench load` measures):
/// same address, database and bot device; a new user's call goes through it and the echo
/// follows the speech; the call's end reaches that process's store.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_call_through_the_server_as_its_own_process() {
    init_logs();
    let _serial = SERIAL.lock().await;
    let mut dep = Deployment::start(Stack::running().unwrap(), DeployOptions::new(temp_dir()))
        .await
        .unwrap();
    let exe = std::path::Path::new(env!("CARGO_BIN_EXE_oracle-lab"));
    let mut server = dep
        .spawn_server_process(exe, Duration::from_secs(30))
        .await
        .unwrap();
    let client = dep.new_user().await.unwrap();
    let mut call = client.call_oracle(CallType::Audio).await.unwrap();
    let speech = oracle_calls_lab::speech::synthesize(4.0, 12);
    let heard = talk(&mut call, speech.clone(), Duration::from_secs(6)).await;
    let m = analysis::compare(&speech, &heard, 150);
    assert!(m.envelope > 0.6, "the echo follows the speech: {m:?}");
    call.end().await.unwrap();
    // The store is shared (the SQLite file): the serving process wrote the call's end.
    let mut status = None;
    for _ in 0..50 {
        status = dep
            .server
            .state
            .store()
            .call(call.id())
            .await
            .unwrap()
            .map(|r| r.status);
        if status == Some(CallStatus::Ended) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(status, Some(CallStatus::Ended));
    assert!(
        server.try_wait().unwrap().is_none(),
        "the server process still runs"
    );
    server.kill().unwrap();
    server.wait().unwrap();
    dep.stop().await;
}

fn call_events(dep: &Deployment, event: &str) -> f64 {
    dep.metric(&format!(
        "oracle_calls_call_events_total{{event=\"{event}\"}}"
    ))
}

/// The client joins the call's room early where the server offers it (the sync adopts the
/// room it claimed), and joins after the sync where it does not: both calls connect.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_early_join_is_used_where_offered_and_its_absence_is_no_failure() {
    init_logs();
    let _serial = SERIAL.lock().await;
    for offered in [true, false] {
        let mut opts = DeployOptions::new(temp_dir());
        opts.early_join = offered;
        let dep = Deployment::start(Stack::running().unwrap(), opts)
            .await
            .unwrap();
        let client = dep.new_user_with(|c| c.early_join = true).await.unwrap();
        let mut call = client.call_oracle(CallType::Audio).await.unwrap();
        oracle_calls_lab::local::until_oracle_heard(&mut call, Duration::from_secs(10))
            .await
            .unwrap();
        let envelope = oracle_calls_lab::local::echo_envelope(&mut call, 3.0)
            .await
            .unwrap();
        assert!(envelope > 0.6, "early join offered: {offered}: {envelope}");
        let (claimed, adopted) = (
            call_events(&dep, "room_claimed"),
            call_events(&dep, "room_adopted"),
        );
        // An agent that finds the user in the room past its first-frame hold sends its
        // tracks with its first publisher offer, not right behind it.
        let first_offer = dep
            .agent
            .as_ref()
            .unwrap()
            .stats()
            .tracks_in_first_offer
            .load(std::sync::atomic::Ordering::Relaxed);
        if offered {
            assert_eq!(
                (claimed, adopted),
                (1.0, 1.0),
                "claimed, then adopted at sync"
            );
            assert_eq!(
                first_offer, 1,
                "the early-joined user was there before the agent"
            );
        } else {
            assert_eq!((claimed, adopted), (0.0, 0.0), "joined after the sync");
            assert_eq!(
                first_offer, 0,
                "the user joined after the sync, not long before the agent"
            );
        }
        call.end().await.unwrap();
        let rec = dep
            .server
            .state
            .store()
            .call(call.id())
            .await
            .unwrap()
            .unwrap();
        assert_eq!(rec.status, CallStatus::Ended);
        dep.stop().await;
    }
}

/// A call event whose sends fail for longer than the room claim lives: the server sweeps the
/// claimed room (with the user in it) before the sync, and the client, seeing its claim lapse,
/// leaves the room it joined early and joins with the sync's token. The call connects.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_claim_that_lapses_before_the_sync_falls_back_to_the_syncs_token() {
    init_logs();
    let _serial = SERIAL.lock().await;
    let mut opts = DeployOptions::new(temp_dir());
    opts.room_claim_ttl_secs = 1;
    let dep = Deployment::start(Stack::running().unwrap(), opts)
        .await
        .unwrap();
    // The first three sends are refused: the retries take 0.2 + 0.4 + 0.8 s.
    let (proxy, sends) = fault_proxy(
        dep.stack.get("MATRIX_URL").unwrap(),
        |_, n| (n < 3).then_some(Fault::Refuse),
        |line| line.starts_with("PUT ") && line.contains("/send/m.room.encrypted/"),
    )
    .await;
    let client = user_via(&dep, &proxy, &dep.server.url, true).await;
    let mut call = client.call_oracle(CallType::Audio).await.unwrap();
    assert!(
        sends.load(std::sync::atomic::Ordering::SeqCst) >= 4,
        "the send was retried"
    );
    assert_eq!(call_events(&dep, "room_claimed"), 1.0);
    assert_eq!(
        call_events(&dep, "room_adopted"),
        0.0,
        "the sync came after the claim lapsed"
    );
    assert!(
        call.timeline().joined_early_at().is_none(),
        "the call did not keep the room joined early"
    );
    oracle_calls_lab::local::until_oracle_heard(&mut call, Duration::from_secs(10))
        .await
        .unwrap();
    let envelope = oracle_calls_lab::local::echo_envelope(&mut call, 3.0)
        .await
        .unwrap();
    assert!(envelope > 0.6, "{envelope}");
    call.end().await.unwrap();
    dep.stop().await;
}

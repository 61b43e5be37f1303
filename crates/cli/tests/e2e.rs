//! End-to-end calls on the real stack (Synapse, livekit-server, PostgreSQL from
//! `scripts/stack up`): a user's client, the oracle-calls server and an agent, all real.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]

use std::time::Duration;

use oracle_calls::analysis;
use oracle_calls::local::{DeployOptions, Deployment, Stack, unique_hex};
use oracle_calls_agent::JobOutcome;
use oracle_calls_agent::job::EndedBy;
use oracle_calls_client::{Call, CallEvent};
use oracle_calls_proto::{CallStatus, CallType};

fn temp_dir() -> std::path::PathBuf {
    let d = std::env::temp_dir().join(format!("oc-e2e-{}", unique_hex(6)));
    std::fs::create_dir_all(&d).unwrap();
    d
}

fn init_logs() {
    let _ = tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| "warn,oracle_calls_agent=info".into()),
        )
        .with_test_writer()
        .try_init();
}

/// Speaks `pcm` into the call in real time while collecting what the oracle says, for
/// `listen` in total. Returns the oracle's audio.
async fn talk(call: &mut Call, pcm: Vec<i16>, listen: Duration) -> Vec<i16> {
    let mic = call.microphone();
    let speaker = tokio::spawn(async move {
        let mut tick = tokio::time::interval(Duration::from_millis(20));
        for f in pcm.chunks_exact(960) {
            tick.tick().await;
            if mic.push_pcm(f).await.is_err() {
                break;
            }
        }
    });
    let mut heard = Vec::new();
    let deadline = tokio::time::Instant::now() + listen;
    loop {
        match tokio::time::timeout_at(deadline, call.next_event()).await {
            Ok(Some(CallEvent::OracleAudio { pcm })) => heard.extend(pcm),
            Ok(Some(CallEvent::DecryptionFailed { identity, failures })) => {
                panic!("oracle audio from {identity} failed to decrypt ({failures})")
            }
            Ok(Some(_)) => {}
            Ok(None) | Err(_) => break,
        }
    }
    speaker.await.unwrap();
    heard
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn audio_call_through_the_echo_oracle() {
    init_logs();
    let dep = Deployment::start(Stack::running().unwrap(), DeployOptions::new(temp_dir()))
        .await
        .unwrap();
    let client = dep.new_user().await.unwrap();
    let mut call = client.call_oracle(CallType::Audio).await.unwrap();
    let speech = oracle_calls::speech::synthesize(4.0, 11);
    let heard = talk(&mut call, speech.clone(), Duration::from_secs(6)).await;
    let m = analysis::compare(&speech, &heard, 150);
    assert!(
        m.envelope > 0.6,
        "the echo follows the speech: {m:?} ({} samples heard)",
        heard.len()
    );
    call.end().await.unwrap();
    call.end().await.unwrap();

    let report = tokio::time::timeout(
        Duration::from_secs(5),
        dep.agent.as_ref().unwrap().next_report(),
    )
    .await
    .expect("the agent leaves within 5 s of the hang-up")
    .unwrap();
    assert!(
        matches!(
            report.outcome,
            JobOutcome::Served {
                ended_by: EndedBy::UserLeft | EndedBy::RoomClosed
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
    dep.stop().await;
}

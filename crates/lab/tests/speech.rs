//! The speaking oracle end to end: the real stack (Synapse, livekit-server, PostgreSQL), the
//! oracle-calls server, the agent running `--oracle speech` with the offline default engines
//! (earshot, Whisper base behind the faster-whisper sidecar, the knowledge file, flite), and
//! a user whose voice is another flite voice — every word through the E2EE call both ways. What
//! the oracle said is transcribed back with Whisper at the user's end.
//!
//! Needs `scripts/speech-setup` (the sidecar's venv and model, outside the clone).
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]

use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use oracle_calls_agent::Speech;
use oracle_calls_agent::oracles::Builtin;
use oracle_calls_client::Call;
use oracle_calls_lab::local::{DeployOptions, Deployment, Stack, unique_hex};
use oracle_calls_lab::speech_local::{
    Conversation, LocalServer, RunEnd, SidecarRole, SpeechEnv, offline_section, say, speech_dir,
    start_sidecar, start_sidecar_with, transcribe, word_error_rate,
};
use oracle_calls_proto::CallType;
use oracle_calls_speech::config::SpeechSection;

static SERIAL: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// The user speaks with another of flite's voices than the oracle's (`slt`).
const USER_VOICE: &str = "rms";

fn init_logs() {
    oracle_calls_test_support::init_test_logs(
        "warn,oracle_calls_speech=info,oracle_calls_agent=info",
    );
}

fn knowledge() -> std::path::PathBuf {
    std::fs::canonicalize(speech_dir().join("knowledge/oracle.toml")).unwrap()
}

fn answer_of(question: &str) -> String {
    let b = oracle_calls_speech::knowledge::KnowledgeBrain::load(&knowledge()).unwrap();
    b.reply(&[oracle_calls_speech::Message::user(question)])
}

async fn deploy(section: &SpeechSection) -> Deployment {
    let speech = Speech::new(section, Path::new("/")).await.unwrap();
    let dir = std::env::temp_dir().join(format!("oc-speech-{}", unique_hex(6)));
    std::fs::create_dir_all(&dir).unwrap();
    let mut opts = DeployOptions::new(dir);
    opts.oracle = Some(Builtin::Speech(Arc::new(speech)));
    Deployment::start(Stack::running().unwrap(), opts)
        .await
        .unwrap()
}

/// A call to the speaking oracle with the offline default engines.
struct Offline {
    /// The oracle's speech-to-text.
    stt: LocalServer,
    /// The user's side checks what it heard with its own Whisper, beam search on.
    checker: LocalServer,
    dep: Deployment,
    call: Call,
    conv: Conversation,
}

async fn offline_call() -> Offline {
    let env = SpeechEnv::load().unwrap();
    let stt = start_sidecar(&env, SidecarRole::SttOnly).await.unwrap();
    let checker = start_sidecar_with(&env, SidecarRole::SttOnly, 5)
        .await
        .unwrap();
    let section = offline_section(&stt.base_url, &knowledge()).unwrap();
    let dep = deploy(&section).await;
    let user = dep.new_user().await.unwrap();
    let call = user.call_oracle(CallType::Audio).await.unwrap();
    let conv = Conversation::new(&call);
    Offline {
        stt,
        checker,
        dep,
        call,
        conv,
    }
}

/// Listens through the greeting until the oracle has been quiet for a second.
async fn hear_greeting(call: &mut Call, conv: &mut Conversation) -> usize {
    let (end, _) = conv
        .run(call, &[], Duration::from_secs(20), |c| {
            c.spoke_then_quiet(0, Duration::from_millis(1000))
        })
        .await
        .unwrap();
    assert_eq!(end, RunEnd::Stopped, "no greeting within 20 s");
    conv.heard.len()
}

/// Asks `question` and listens until the answer is over (1.2 s of quiet after it began).
/// Returns the frame the answer starts at and the time from the end of the question to it.
async fn ask(call: &mut Call, conv: &mut Conversation, question: &str) -> (usize, Duration) {
    let pcm = say(question, USER_VOICE).await.unwrap();
    let (end, said_until) = conv
        .run(call, &pcm, Duration::from_secs(40), |c| {
            c.answered(Duration::from_millis(1200))
        })
        .await
        .unwrap();
    assert_eq!(end, RunEnd::Stopped, "no complete answer to {question:?}");
    let first = conv
        .first_speech_after(said_until)
        .expect("the oracle answered");
    (first, conv.heard[first].0 - said_until)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn spoken_questions_get_their_spoken_answers_through_the_encrypted_call() {
    let _serial = SERIAL.lock().await;
    init_logs();
    let Offline {
        stt: _stt, // kept alive: the oracle transcribes with it
        checker,
        dep,
        mut call,
        mut conv,
    } = offline_call().await;

    let greeting_end = hear_greeting(&mut call, &mut conv).await;
    let greeting = transcribe(&checker.base_url, &conv.audio_from(0))
        .await
        .unwrap();
    let wer = word_error_rate("Hello, I am the oracle. Ask me a question.", &greeting);
    eprintln!("greeting heard as {greeting:?} (word error {wer:.2})");
    assert!(wer <= 0.10, "{greeting:?}");
    assert!(greeting_end > 0);

    let mut latencies = Vec::new();
    // Each answer must carry its key word; over all answers together, at most 10 % of the
    // words may come back wrong (Whisper base mishears a word of flite's now and then:
    // "Romeo" as "Royal Mio").
    let (mut edits, mut words) = (0.0, 0usize);
    for (q, key) in [
        ("What is the capital of France?", "paris"),
        ("How many legs does a spider have?", "eight"),
        ("Who wrote Romeo and Juliet?", "shakespeare"),
        ("What is the tallest mountain in the world?", "everest"),
        ("What is the price of a bicycle?", "know"),
    ] {
        let expected = answer_of(q);
        let (first, latency) = ask(&mut call, &mut conv, q).await;
        let heard = transcribe(&checker.base_url, &conv.answer_from(first))
            .await
            .unwrap();
        let wer = word_error_rate(&expected, &heard);
        eprintln!(
            "asked {q:?}: answered after {} ms, heard {heard:?} (word error {wer:.2} against {expected:?})",
            latency.as_millis()
        );
        assert!(
            oracle_calls_lab::speech_local::words(&heard)
                .iter()
                .any(|w| w == key),
            "{q:?}: heard {heard:?}, expected {expected:?}"
        );
        let n = oracle_calls_lab::speech_local::words(&expected).len();
        edits += wer * n as f64;
        words += n;
        latencies.push(latency);
    }
    let wer = edits / words as f64;
    eprintln!("word error over all answers: {wer:.3} ({edits} of {words} words)");
    assert!(wer <= 0.10, "{wer}");
    // The last question is not in the knowledge file.
    assert_eq!(
        answer_of("What is the price of a bicycle?"),
        "I'm sorry, I don't know that yet."
    );
    latencies.sort();
    eprintln!("end of question → first answer audio at the user: {latencies:?}");
    assert!(
        latencies[latencies.len() / 2] < Duration::from_secs(3),
        "{latencies:?}"
    );

    call.end().await.unwrap();
    let report = tokio::time::timeout(
        Duration::from_secs(15),
        dep.agent.as_ref().unwrap().next_report(),
    )
    .await
    .unwrap()
    .unwrap();
    assert!(
        matches!(
            report.outcome,
            oracle_calls_agent::JobOutcome::Served { .. }
        ),
        "{:?}",
        report.outcome
    );
    assert_eq!(report.decrypt_failures, 0);
    dep.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_user_interrupts_the_oracle_but_a_click_an_uh_huh_and_its_own_echo_do_not() {
    let _serial = SERIAL.lock().await;
    init_logs();
    let Offline {
        stt,
        checker,
        dep,
        mut call,
        mut conv,
    } = offline_call().await;
    hear_greeting(&mut call, &mut conv).await;

    // Barge-in: the story starts; 3 s in, the user asks something else over it.
    let story = say("Tell me a long story.", USER_VOICE).await.unwrap();
    let (_, said_until) = conv
        .run(&mut call, &story, Duration::from_secs(15), |c| {
            c.heard
                .last()
                .is_some_and(|(_, f)| oracle_calls_speech::audio::rms(f) > 0.01)
        })
        .await
        .unwrap();
    let story_start = conv
        .first_speech_after(said_until)
        .expect("the story began");
    // False interruptions first: a 150 ms click, then a short "uh-huh" (about 280 ms of
    // voice), each with a second of quiet after it; the story must go on through both.
    conv.run(&mut call, &[], Duration::from_secs(1), |_| false)
        .await
        .unwrap();
    let click: Vec<i16> = (0..7200u32)
        .map(|i| ((i.wrapping_mul(2_654_435_761) >> 16) as i16) / 3)
        .collect();
    conv.run(&mut call, &click, Duration::from_secs(1), |_| false)
        .await
        .unwrap();
    let backchannel = say("Uh-huh.", USER_VOICE).await.unwrap();
    conv.run(&mut call, &backchannel, Duration::from_secs(2), |_| false)
        .await
        .unwrap();
    let question = say("What is the capital of France?", USER_VOICE)
        .await
        .unwrap();
    // The voice's onset within the question's audio.
    let lead = question
        .chunks(960)
        .position(|f| oracle_calls_speech::audio::rms(f) > 0.02)
        .unwrap();
    let asked_at = Instant::now() + Duration::from_millis(20 * lead as u64);
    let cut_from = conv.heard.len();
    let (first_answer, _) = ask_over(&mut call, &mut conv, &question).await;
    // Where the story stopped: the last frame of speech before the answer's silence.
    let last_story = (cut_from..first_answer)
        .rev()
        .find(|i| oracle_calls_speech::audio::rms(&conv.heard[*i].1) > 0.01)
        .expect("the story was playing");
    let stopped_after = conv.heard[last_story].0.saturating_duration_since(asked_at);
    eprintln!(
        "barge-in: the story stopped {} ms after the user's voice began",
        stopped_after.as_millis()
    );
    // 500 ms of voice + one frame, plus the way back to the user (network, jitter buffer).
    assert!(
        stopped_after <= Duration::from_millis(800),
        "{stopped_after:?}"
    );
    assert!(
        stopped_after >= Duration::from_millis(300),
        "{stopped_after:?}: too early"
    );
    let answer = transcribe(&checker.base_url, &conv.answer_from(first_answer))
        .await
        .unwrap();
    let wer = word_error_rate("The capital of France is Paris.", &answer);
    eprintln!("after the interruption: {answer:?} (word error {wer:.2})");
    assert!(wer <= 0.10, "{answer:?}: no leftover of the story may play");
    let story_heard = transcribe(
        &stt.base_url,
        &conv.audio_from(story_start)[..(last_story - story_start + 1) * 960],
    )
    .await
    .unwrap();
    eprintln!("the story as played before the cut: {story_heard:?}");
    assert!(
        story_heard.to_lowercase().contains("once upon a time"),
        "{story_heard:?}"
    );
    // The click and the "uh-huh" did not stop it: from its start to the cut the story never
    // fell silent for longer than its own pauses between sentences.
    let longest_gap = conv.heard[story_start..=last_story]
        .split(|(_, f)| oracle_calls_speech::audio::rms(f) > 0.01)
        .map(<[_]>::len)
        .max()
        .unwrap_or(0);
    eprintln!(
        "longest pause in the story before the cut: {} ms",
        longest_gap * 20
    );
    assert!(
        longest_gap * 20 < 800,
        "the story stopped for {} ms",
        longest_gap * 20
    );

    // Echo: the whole story again with the oracle's voice fed back at −10 dB, 100 ms later.
    conv.echo = Some((0.316, 5));
    let full = say(&answer_of("Tell me a long story."), "slt")
        .await
        .unwrap();
    let full_secs = full.len() as f64 / 48_000.0;
    let pcm = say("Tell me a story.", USER_VOICE).await.unwrap();
    let (end, said_until) = conv
        .run(&mut call, &pcm, Duration::from_secs(90), |c| {
            c.answered(Duration::from_millis(2500))
        })
        .await
        .unwrap();
    assert_eq!(end, RunEnd::Stopped);
    let first = conv.first_speech_after(said_until).unwrap();
    let spoken_secs = (conv.heard.len() - first) as f64 * 0.02 - 2.5;
    eprintln!(
        "with its echo leaking back the oracle spoke {spoken_secs:.1} s of a {full_secs:.1} s story"
    );
    assert!(
        spoken_secs > full_secs * 0.95,
        "{spoken_secs} of {full_secs} s: it interrupted itself"
    );
    let told = transcribe(&checker.base_url, &conv.answer_from(first))
        .await
        .unwrap();
    let wer = word_error_rate(&answer_of("Tell me a long story."), &told);
    eprintln!("the story heard through its own echo: word error {wer:.3}: {told:?}");
    assert!(wer <= 0.10, "{told:?}");

    call.end().await.unwrap();
    dep.stop().await;
}

/// Says `pcm` over whatever the oracle is saying, then listens until the answer is over.
async fn ask_over(call: &mut Call, conv: &mut Conversation, pcm: &[i16]) -> (usize, Instant) {
    let (end, said_until) = conv
        .run(call, pcm, Duration::from_secs(30), |c| {
            c.answered(Duration::from_millis(1200))
        })
        .await
        .unwrap();
    assert_eq!(end, RunEnd::Stopped);
    let first = conv.first_speech_after(said_until).expect("an answer");
    (first, said_until)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_brain_killed_mid_answer_gives_the_fallback_line_and_the_call_goes_on() {
    let _serial = SERIAL.lock().await;
    init_logs();
    let env = SpeechEnv::load().unwrap();
    let stt = start_sidecar(&env, SidecarRole::SttOnly).await.unwrap();
    let checker = start_sidecar_with(&env, SidecarRole::SttOnly, 5)
        .await
        .unwrap();
    let mut llama = oracle_calls_lab::speech_local::start_llama(&env)
        .await
        .unwrap();
    let section: SpeechSection = toml::from_str(&format!(
        r#"
greeting = ""
[stt]
kind = "openai"
base_url = "{stt}"
model = "whisper-base"
language = "en"
[brain]
kind = "openai"
base_url = "{llm}"
model = "smollm2"
instructions = "You are a storyteller. Answer with a long story of many short sentences."
max_tokens = 300
temperature = 0.0
[tts]
kind = "flite"
"#,
        stt = stt.base_url,
        llm = llama.base_url
    ))
    .unwrap();
    let dep = deploy(&section).await;
    let user = dep.new_user().await.unwrap();
    let mut call = user.call_oracle(CallType::Audio).await.unwrap();
    let mut conv = Conversation::new(&call);
    // Let the call settle (no greeting), then ask for a story and kill the model's server as
    // soon as the answer is heard: the rest of the answer never comes.
    conv.run(&mut call, &[], Duration::from_secs(2), |_| false)
        .await
        .unwrap();
    let question = say("Tell me a long story about a robot.", USER_VOICE)
        .await
        .unwrap();
    let (end, said_until) = conv
        .run(&mut call, &question, Duration::from_secs(30), |c| {
            c.first_speech_after(c.said_until).is_some()
        })
        .await
        .unwrap();
    assert_eq!(end, RunEnd::Stopped, "no answer began");
    llama.kill().await;
    let killed = Instant::now();
    let (end, _) = conv
        .run(&mut call, &[], Duration::from_secs(60), |c| {
            c.spoke_then_quiet(
                c.first_speech_after(said_until).unwrap_or(0),
                Duration::from_millis(2000),
            )
        })
        .await
        .unwrap();
    assert_eq!(end, RunEnd::Stopped, "the oracle never went quiet");
    let first = conv.first_speech_after(said_until).unwrap();
    let heard = transcribe(&checker.base_url, &conv.answer_from(first))
        .await
        .unwrap();
    eprintln!(
        "killed the model {} ms after its answer began; the user heard {heard:?}",
        killed
            .saturating_duration_since(conv.heard[first].0)
            .as_millis()
    );
    let fallback = "Sorry, something went wrong on my side. Please say that again.";
    let tail: Vec<String> = oracle_calls_lab::speech_local::words(&heard);
    let expected = oracle_calls_lab::speech_local::words(fallback);
    let tail = tail[tail.len().saturating_sub(expected.len())..].join(" ");
    let wer = word_error_rate(fallback, &tail);
    assert!(
        wer <= 0.2,
        "the answer did not end with the fallback line: {heard:?}"
    );

    // The call goes on: the next question (the model is still down) gets the fallback at
    // once, not silence.
    let again = say("What is the capital of France?", USER_VOICE)
        .await
        .unwrap();
    let (end, said_until) = conv
        .run(&mut call, &again, Duration::from_secs(30), |c| {
            c.answered(Duration::from_millis(1200))
        })
        .await
        .unwrap();
    assert_eq!(end, RunEnd::Stopped, "silence after the model died");
    let first = conv.first_speech_after(said_until).unwrap();
    let heard = transcribe(&checker.base_url, &conv.answer_from(first))
        .await
        .unwrap();
    let wer = word_error_rate(fallback, &heard);
    eprintln!("with the model down the next question got {heard:?} (word error {wer:.2})");
    assert!(wer <= 0.2, "{heard:?}");
    call.end().await.unwrap();
    dep.stop().await;
}

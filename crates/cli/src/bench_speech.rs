//! `oracle-calls bench speech`: voice-to-voice latency of the speaking oracle, turn by turn,
//! through the real stack and the E2EE call, split into its stages; with the offline default
//! (earshot, the Whisper sidecar, the knowledge file, flite) and with every engine behind a
//! local OpenAI-compatible server (the Whisper sidecar for `/audio/transcriptions` and
//! `/audio/speech`, llama.cpp's server with SmolLM2-135M for `/chat/completions`).

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context as _, bail};
use oracle_calls_agent::Speech;
use oracle_calls_agent::oracles::Builtin;
use oracle_calls_proto::CallType;
use oracle_calls_speech::config::SpeechSection;
use oracle_calls_speech::session::TurnMetrics;

use crate::local::{DeployOptions, Deployment, Stack};
use crate::speech_local::{
    Conversation, RunEnd, SidecarRole, SpeechEnv, offline_section, say, speech_dir, start_llama,
    start_sidecar,
};

/// Which engines.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum EngineSet {
    /// The offline default.
    Offline,
    /// All three behind local OpenAI-compatible servers.
    OpenAi,
}

impl std::str::FromStr for EngineSet {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "offline" => Ok(Self::Offline),
            "openai" => Ok(Self::OpenAi),
            other => Err(format!("unknown engine set `{other}`: offline or openai")),
        }
    }
}

/// What to measure.
#[derive(Debug)]
pub struct Options {
    /// Turns measured per engine set (after one warm-up turn).
    pub turns: usize,
    /// The engine sets, measured one after the other.
    pub engines: Vec<EngineSet>,
    /// Working directory.
    pub dir: PathBuf,
}

/// The questions asked in turn.
const QUESTIONS: [&str; 5] = [
    "What is the capital of France?",
    "How many legs does a spider have?",
    "Who wrote Romeo and Juliet?",
    "What is the tallest mountain in the world?",
    "What is the boiling point of water?",
];

/// One measured turn.
#[derive(Debug, Clone)]
struct Turn {
    /// End of the question as sent → first answer audio at the user.
    at_user: Duration,
    agent: TurnMetrics,
}

/// Runs the benchmark and prints its table.
///
/// # Errors
/// The engines are not installed, the stack is down, a turn gets no answer.
pub fn run(opts: Options) -> anyhow::Result<()> {
    let rt = tokio::runtime::Runtime::new().context("starting the async runtime")?;
    rt.block_on(async move {
        std::fs::create_dir_all(&opts.dir)?;
        let stack = tokio::task::spawn_blocking(Stack::up).await??;
        let mut results = Vec::new();
        for set in &opts.engines {
            eprintln!("bench speech: {set:?}: {} turns (+1 warm-up)", opts.turns);
            let turns = measure(&stack, *set, opts.turns, &opts.dir).await?;
            results.push((*set, turns));
        }
        print_table(&results);
        Ok(())
    })
}

fn openai_section(sidecar: &str, llm: &str) -> anyhow::Result<SpeechSection> {
    Ok(toml::from_str(&format!(
        r#"
greeting = ""
[stt]
kind = "openai"
base_url = "{sidecar}"
model = "whisper-base"
language = "en"
[brain]
kind = "openai"
base_url = "{llm}"
model = "smollm2"
instructions = "You are a helpful oracle. Answer in one short sentence."
max_tokens = 40
temperature = 0.0
[tts]
kind = "openai"
base_url = "{sidecar}"
model = "espeak-ng"
voice = "en-us"
"#
    ))?)
}

async fn measure(
    stack: &Stack,
    set: EngineSet,
    turns: usize,
    dir: &Path,
) -> anyhow::Result<Vec<Turn>> {
    let env = SpeechEnv::load()?;
    let (section, _servers) = match set {
        EngineSet::Offline => {
            let stt = start_sidecar(&env, SidecarRole::SttOnly).await?;
            let knowledge = std::fs::canonicalize(speech_dir().join("knowledge/oracle.toml"))?;
            (offline_section(&stt.base_url, &knowledge)?, vec![stt])
        }
        EngineSet::OpenAi => {
            let sidecar = start_sidecar(&env, SidecarRole::Both).await?;
            let llm = start_llama(&env).await?;
            (
                openai_section(&sidecar.base_url, &llm.base_url)?,
                vec![sidecar, llm],
            )
        }
    };
    let (tx, mut metrics) = tokio::sync::mpsc::unbounded_channel();
    let prepared = section.prepare(Path::new("/")).await?.with_metrics_sink(tx);
    let mut opts = DeployOptions::new(dir.join(format!("{set:?}").to_lowercase()));
    opts.oracle = Some(Builtin::Speech(Arc::new(Speech::from_prepared(prepared))));
    let dep = Deployment::start(stack.clone(), opts).await?;
    let user = dep.new_user().await?;
    let mut call = user.call_oracle(CallType::Audio).await?;
    let mut conv = Conversation::new(&call);
    // The greeting (if any) first.
    conv.run(&mut call, &[], Duration::from_secs(15), |c| {
        c.spoke_then_quiet(0, Duration::from_millis(1000))
    })
    .await?;
    while metrics.try_recv().is_ok() {}
    let mut out = Vec::new();
    for i in 0..=turns {
        let q = QUESTIONS[i % QUESTIONS.len()];
        let pcm = say(q, "rms").await?;
        let (end, said_until) = conv
            .run(&mut call, &pcm, Duration::from_secs(40), |c| {
                c.answered(Duration::from_millis(1000))
            })
            .await?;
        if end != RunEnd::Stopped {
            bail!("turn {i}: no answer to {q:?} ({end:?})");
        }
        let first = conv.first_speech_after(said_until).context("an answer")?;
        let at_user = conv.heard[first].0.saturating_duration_since(said_until);
        let agent = tokio::time::timeout(Duration::from_secs(10), metrics.recv())
            .await
            .context("the agent reported no turn")?
            .context("the agent's metrics ended")?;
        if let Some(stage) = agent.failed {
            bail!("turn {i}: the {stage} engine failed");
        }
        eprintln!(
            "  turn {i:>2}: {} ms at the user (agent: voice-to-voice {} ms){}",
            at_user.as_millis(),
            agent.voice_to_voice.unwrap_or_default().as_millis(),
            if i == 0 {
                " — warm-up, not counted"
            } else {
                ""
            }
        );
        if i > 0 {
            out.push(Turn { at_user, agent });
        }
    }
    call.end().await?;
    dep.stop().await;
    Ok(out)
}

fn pct(mut v: Vec<Duration>, p: f64) -> Option<Duration> {
    if v.is_empty() {
        return None;
    }
    v.sort();
    let i = ((v.len() as f64 - 1.0) * p).round() as usize;
    v.get(i).copied()
}

fn print_table(results: &[(EngineSet, Vec<Turn>)]) {
    type Pick = fn(&Turn) -> Option<Duration>;
    let rows: [(&str, Pick); 6] = [
        ("end-of-turn wait", |t| t.agent.end_of_turn_wait),
        ("speech-to-text", |t| t.agent.speech_to_text),
        ("brain first token", |t| t.agent.brain_first_token),
        ("first audio (TTS)", |t| t.agent.first_audio),
        ("voice-to-voice at the agent", |t| t.agent.voice_to_voice),
        ("voice-to-voice at the user", |t| Some(t.at_user)),
    ];
    println!();
    print!("{:<30}", "stage (ms)");
    for (set, turns) in results {
        print!("{:>22}", format!("{set:?} p50 / p90 (n={})", turns.len()));
    }
    println!();
    for (name, pick) in rows {
        print!("{name:<30}");
        for (_, turns) in results {
            let v: Vec<Duration> = turns.iter().filter_map(pick).collect();
            let cell = match (pct(v.clone(), 0.5), pct(v, 0.9)) {
                (Some(a), Some(b)) => format!("{} / {}", a.as_millis(), b.as_millis()),
                _ => "—".into(),
            };
            print!("{cell:>22}");
        }
        println!();
    }
}

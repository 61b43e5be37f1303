//! `oracle-lab bench browser`: call setup from the browser SDK's demo page (headless Chromium,
//! driven by `sdk/browser/test/e2e/driver.mjs`, scenario `bench`) next to the Rust client's, in
//! the same run, against one oracle on the local stack; and the SDK's bundle sizes (gzip).
//!
//! Both clients are returning users (one warm-up call each, not counted, makes the DM with the
//! oracle's bot) and call in alternating blocks: `block` browser calls, then `block` Rust calls,
//! so both see the same load. What is measured, from `callOracle()` / `call_oracle()`: each
//! phase of the call's timeline, up to the first decrypted oracle audio as each client marks it
//! (`firstAudio`: the SDK's first decoded oracle samples, or its first audible audio; the Rust
//! client's first decoded oracle frame), and the echo: when the tone both microphones play comes back in the oracle's
//! decrypted audio (the echo oracle answers with what it heard, 200 ms late). The agent's call
//! reports add when it got the job, joined and first heard the user.

use std::collections::BTreeMap;
use std::io::{BufRead as _, Write as _};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail};
use oracle_calls_agent::{AgentHandle, CallReport};
use oracle_calls_client::{CallEvent, OracleClient, Phase};
use oracle_calls_proto::CallType;
use serde_json::{Value, json};
use tokio::sync::mpsc;

use crate::local::{DeployOptions, Deployment, Stack, unique_hex};
use crate::web::{self, WebOptions};

/// The timeline's phases, in the order a call reaches them (the browser SDK's names).
pub const PHASES: [&str; 8] = [
    "resolve",
    "wrap",
    "room",
    "send",
    "sync",
    "join",
    "agentJoined",
    "firstAudio",
];

/// The browser SDK's "audible" threshold (RMS of samples in -1..1).
const AUDIBLE_RMS: f64 = 0.001;
/// The tone is heard when its Goertzel power (normalized: a pure tone near 1) is above this,
/// in the page and in Rust.
const TONE_POWER: f64 = 0.5;
/// The tone both microphones play (the driver's fake capture file and the Rust client's).
const TONE_HZ: f64 = 660.0;
/// Half of full scale, as the driver's tone file.
const TONE_AMPLITUDE: f64 = 16384.0;
/// How long a Rust call may take to be heard.
const RUST_CALL_LIMIT: Duration = Duration::from_secs(60);
/// How long the driver may stay silent on stdout: one call (60 s to connect, 30 s to end) or the
/// sign-in and the warm-up call.
const DRIVER_LINE_LIMIT: Duration = Duration::from_secs(240);

/// What `bench browser` needs.
#[derive(Clone, Debug)]
pub struct Options {
    /// Measured calls per client.
    pub calls: usize,
    /// Calls per block (the clients alternate block by block).
    pub block: usize,
    /// Working directory.
    pub dir: PathBuf,
    /// The built demo page (`sdk/browser/demo/dist`).
    pub page: PathBuf,
    /// The built library (`sdk/browser/dist`), for its size.
    pub library: PathBuf,
    /// The page driver (`sdk/browser/test/e2e/driver.mjs`).
    pub driver: PathBuf,
    /// Every other browser call is placed without the early join (`earlyJoin: false`), and the
    /// two halves are reported side by side.
    pub alternate_early_join: bool,
}

/// One call: when each phase was reached, ms since `callOracle()` / `call_oracle()` (and the
/// agent's side, `agent.*`, ms since the job's assignment).
type Sample = BTreeMap<String, f64>;

/// One value of a sample.
type Pick = fn(&Sample) -> Option<f64>;

/// Nearest-rank percentile `p` (0..1) of `v`; NaN when empty.
pub fn percentile(v: &mut [f64], p: f64) -> f64 {
    v.sort_by(f64::total_cmp);
    let i = ((v.len() as f64 - 1.0) * p).round() as usize;
    v.get(i).copied().unwrap_or(f64::NAN)
}

/// The browser's call line (`{"benchCall": {…, "timeline": [{phase, ms}]}}`) as a sample; `None`
/// for the warm-up call.
fn browser_sample(call: &Value) -> anyhow::Result<Option<Sample>> {
    if call.get("warmup").and_then(Value::as_bool) == Some(true) {
        return Ok(None);
    }
    let timeline = call
        .get("timeline")
        .and_then(Value::as_array)
        .context("a bench call line without a timeline")?;
    let mut s = Sample::new();
    for t in timeline {
        let (Some(phase), Some(ms)) = (
            t.get("phase").and_then(Value::as_str),
            t.get("ms").and_then(Value::as_f64),
        ) else {
            bail!("a timeline entry without phase and ms: {t}");
        };
        s.insert(phase.to_owned(), ms);
    }
    let started = call.get("startedAtEpochMs").and_then(Value::as_f64);
    let echo = call.get("echoAtEpochMs").and_then(Value::as_f64);
    let (Some(started), Some(echo)) = (started, echo) else {
        bail!("a browser call without startedAtEpochMs and echoAtEpochMs: {call}");
    };
    s.insert("startedAtEpochMs".to_owned(), started);
    s.insert("echo".to_owned(), echo - started);
    // 1 where the call was placed with the early join (the default), 0 where not; and whether
    // its media did join early.
    let asked = call.get("earlyJoinAsked").and_then(Value::as_bool) != Some(false);
    s.insert("earlyJoinAsked".to_owned(), f64::from(u8::from(asked)));
    let early = call.get("mediaJoin").and_then(Value::as_str) == Some("early");
    s.insert("joinedEarly".to_owned(), f64::from(u8::from(early)));
    if !s.contains_key("firstAudio") {
        bail!("a browser call without firstAudio: {call}");
    }
    let encrypted = |what: &str| {
        call.pointer(&format!("/encryption/{what}"))
            .and_then(Value::as_bool)
            == Some(true)
    };
    if !encrypted("oracleMedia") || !encrypted("localMedia") {
        bail!(
            "a browser call whose media was not end-to-end encrypted: {}",
            call.get("encryption").unwrap_or(&Value::Null)
        );
    }
    Ok(Some(s))
}

fn rust_phase_name(p: Phase) -> &'static str {
    match p {
        Phase::Resolve => "resolve",
        Phase::Wrap => "wrap",
        Phase::Room => "room",
        Phase::Send => "send",
        Phase::Sync => "sync",
        Phase::Join => "join",
        Phase::AgentJoined => "agentJoined",
        // The client's own mark: its first decoded oracle frame.
        Phase::FirstAudio => "firstAudio",
    }
}

/// RMS of 16-bit samples as a fraction of full scale.
fn rms(pcm: &[i16]) -> f64 {
    if pcm.is_empty() {
        return 0.0;
    }
    let sum: f64 = pcm
        .iter()
        .map(|&x| {
            let f = f64::from(x) / 32768.0;
            f * f
        })
        .sum();
    (sum / pcm.len() as f64).sqrt()
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

/// The wall clock (ms since the Unix epoch) of this process's instants: what the page's
/// `performance.timeOrigin + performance.now()` is set against (one machine, one clock).
#[derive(Clone, Copy, Debug)]
struct Clock {
    at: Instant,
    epoch_ms: f64,
}

impl Clock {
    fn now() -> Self {
        let epoch_ms = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(f64::NAN, ms);
        Self {
            at: Instant::now(),
            epoch_ms,
        }
    }

    /// `i` in ms since the Unix epoch.
    fn epoch_ms(&self, i: Instant) -> f64 {
        match i.checked_duration_since(self.at) {
            Some(d) => self.epoch_ms + ms(d),
            None => self.epoch_ms - ms(self.at.duration_since(i)),
        }
    }
}

/// One Rust call: call_oracle, the tone into the microphone, until the oracle's audio is
/// the tone comes back (`echo`); then end it. Its id and timeline.
async fn rust_call(client: &OracleClient, clock: &Clock) -> anyhow::Result<(String, Sample)> {
    let t0 = Instant::now();
    let mut call = client.call_oracle(CallType::Audio).await?;
    let mic = call.microphone();
    let tone = oracle_calls_media::sine_tone(TONE_HZ, TONE_AMPLITUDE, 0, 48_000 * 65);
    let talker = tokio::spawn(async move { mic.play(&tone).await });
    let heard = tokio::time::timeout(RUST_CALL_LIMIT, async {
        loop {
            match call.next_event().await {
                Some(CallEvent::OracleAudio { pcm })
                    if rms(&pcm) > AUDIBLE_RMS
                        && oracle_calls_media::goertzel_power(&pcm, TONE_HZ) > TONE_POWER =>
                {
                    return Ok(t0.elapsed());
                }
                Some(CallEvent::Ended { reason }) => bail!("the call ended: {reason}"),
                Some(CallEvent::DecryptionFailed { failures, .. }) => {
                    bail!("oracle frames failed to decrypt ({failures})")
                }
                None => bail!("the call closed"),
                Some(_) => {}
            }
        }
    })
    .await;
    talker.abort();
    let mut s = Sample::new();
    for (p, d) in call.timeline().marks() {
        s.insert(rust_phase_name(*p).to_owned(), ms(*d));
    }
    let ended = call.end().await;
    let first = heard.map_err(|_| {
        anyhow::anyhow!(
            "call {}: the tone did not come back within {RUST_CALL_LIMIT:?}",
            call.id()
        )
    })??;
    ended.with_context(|| format!("ending call {}", call.id()))?;
    s.insert("echo".to_owned(), ms(first));
    s.insert("startedAtEpochMs".to_owned(), clock.epoch_ms(t0));
    Ok((call.id().to_string(), s))
}

/// The agent's reports of finished calls, by call id.
#[derive(Default)]
struct Reports(BTreeMap<String, CallReport>);

impl Reports {
    /// Takes the reports the agent has ready (it keeps only the newest 64).
    async fn drain(&mut self, agent: &AgentHandle) {
        while let Ok(Some(r)) =
            tokio::time::timeout(Duration::from_millis(5), agent.next_report()).await
        {
            if let Some(id) = &r.call_id {
                self.0.insert(id.to_string(), r);
            }
        }
    }

    /// Waits (15 s at most) until every call of `ids` has its report.
    async fn wait_for(&mut self, agent: &AgentHandle, ids: &[&str]) {
        let deadline = Instant::now() + Duration::from_secs(15);
        while ids.iter().any(|id| !self.0.contains_key(*id)) && Instant::now() < deadline {
            if let Ok(Some(r)) =
                tokio::time::timeout(Duration::from_millis(500), agent.next_report()).await
                && let Some(id) = &r.call_id
            {
                self.0.insert(id.to_string(), r);
            }
        }
    }

    /// Adds the agent's side of the call to its sample: when LiveKit assigned the job (ms since
    /// the call started, on the wall clock) and the rest in ms since that assignment.
    fn annotate(&self, id: &str, s: &mut Sample, clock: &Clock) {
        let Some(r) = self.0.get(id) else {
            return;
        };
        if let Some(start) = s.get("startedAtEpochMs").copied() {
            s.insert(
                "agent.assigned".to_owned(),
                clock.epoch_ms(r.assigned_at) - start,
            );
        }
        for (name, d) in [
            ("agent.keyReady", r.key_ready_after),
            ("agent.joined", r.joined_after),
            ("agent.firstHeard", r.first_heard_after),
        ] {
            if let Some(d) = d {
                s.insert(name.to_owned(), ms(d));
            }
        }
    }
}

/// The driver process; killed when dropped (a failed bench leaves no Chromium behind).
struct Driver {
    child: Child,
}

impl Drop for Driver {
    fn drop(&mut self) {
        if matches!(self.child.try_wait(), Ok(None)) {
            let _ = self.child.kill();
        }
        let _ = self.child.wait();
    }
}

/// What the driver says on stdout.
enum Line {
    /// `{"benchWait": b}`: block `b` waits for its go-ahead.
    Wait(u64),
    /// `{"benchCall": {…}}`.
    Call(Value),
    /// The result line (last).
    Result(Value),
    /// Stdout closed.
    Closed,
}

fn parse_line(line: &str) -> anyhow::Result<Line> {
    let v: Value = serde_json::from_str(line)
        .with_context(|| format!("the driver printed a line that is not JSON: {line:.200}"))?;
    if let Some(b) = v.get("benchWait") {
        return Ok(Line::Wait(b.as_u64().context("benchWait is not a number")?));
    }
    if let Some(c) = v.get("benchCall") {
        return Ok(Line::Call(c.clone()));
    }
    Ok(Line::Result(v))
}

/// Starts the driver with `cfg` on stdin (the password goes there, never on argv). Its stdout
/// lines arrive on the returned channel; its stderr goes to `log` (failures echoed).
fn spawn_driver(
    driver: &Path,
    cfg: &Value,
    log: &Path,
) -> anyhow::Result<(Driver, mpsc::UnboundedReceiver<String>)> {
    let mut child = Command::new("node")
        .arg(driver)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .context("running node (the page driver)")?;
    let stdin = child.stdin.take();
    let stdout = child.stdout.take();
    let stderr = child.stderr.take();
    let driver = Driver { child };
    let mut stdin = stdin.context("the driver's stdin")?;
    stdin
        .write_all(cfg.to_string().as_bytes())
        .context("writing the driver's config")?;
    drop(stdin);
    let stdout = stdout.context("the driver's stdout")?;
    let stderr = stderr.context("the driver's stderr")?;
    let (tx, rx) = mpsc::unbounded_channel();
    std::thread::spawn(move || {
        for line in std::io::BufReader::new(stdout)
            .lines()
            .map_while(Result::ok)
        {
            if tx.send(line).is_err() {
                return;
            }
        }
    });
    let mut file = std::fs::File::create(log).with_context(|| format!("{}", log.display()))?;
    std::thread::spawn(move || {
        for line in std::io::BufReader::new(stderr)
            .lines()
            .map_while(Result::ok)
        {
            let _ = writeln!(file, "{line}");
            if line.contains("failed") || line.contains("timeout") || line.contains("page error") {
                eprintln!("  {line}");
            }
        }
    });
    Ok((driver, rx))
}

/// The next stdout line of the driver, within [`DRIVER_LINE_LIMIT`].
async fn next_line(rx: &mut mpsc::UnboundedReceiver<String>) -> anyhow::Result<Line> {
    loop {
        match tokio::time::timeout(DRIVER_LINE_LIMIT, rx.recv()).await {
            Err(_) => bail!(
                "the driver said nothing for {} s",
                DRIVER_LINE_LIMIT.as_secs()
            ),
            Ok(None) => return Ok(Line::Closed),
            Ok(Some(l)) if l.trim().is_empty() => {}
            Ok(Some(l)) => return parse_line(&l),
        }
    }
}

/// Copies a directory tree (a rebuild of the page during the run must not mix two builds).
fn copy_tree(from: &Path, to: &Path) -> anyhow::Result<()> {
    std::fs::create_dir_all(to).with_context(|| format!("{}", to.display()))?;
    for e in std::fs::read_dir(from).with_context(|| format!("{}", from.display()))? {
        let e = e?;
        let ty = e.file_type()?;
        if ty.is_dir() {
            copy_tree(&e.path(), &to.join(e.file_name()))?;
        } else if ty.is_file() {
            std::fs::copy(e.path(), to.join(e.file_name()))
                .with_context(|| format!("{}", e.path().display()))?;
        }
    }
    Ok(())
}

fn files_under(dir: &Path) -> anyhow::Result<Vec<PathBuf>> {
    let mut out = Vec::new();
    for e in std::fs::read_dir(dir).with_context(|| format!("{}", dir.display()))? {
        let e = e?;
        if e.file_type()?.is_dir() {
            out.extend(files_under(&e.path())?);
        } else {
            out.push(e.path());
        }
    }
    out.sort();
    Ok(out)
}

/// `(bytes, gzip -9 bytes)` of a file (the system's gzip, no name in the header).
fn gzip_size(path: &Path) -> anyhow::Result<(u64, u64)> {
    let raw = std::fs::metadata(path)
        .with_context(|| format!("{}", path.display()))?
        .len();
    let out = Command::new("gzip")
        .args(["-9", "-n", "-c"])
        .arg(path)
        .output()
        .context("running gzip")?;
    if !out.status.success() {
        bail!("gzip {} failed", path.display());
    }
    Ok((raw, out.stdout.len() as u64))
}

/// One line of the size table: a name and the files it sums.
struct SizeRow {
    name: &'static str,
    files: Vec<PathBuf>,
}

fn sum_sizes(files: &[PathBuf]) -> anyhow::Result<(u64, u64)> {
    let mut t = (0, 0);
    for f in files {
        let (r, g) = gzip_size(f)?;
        t.0 += r;
        t.1 += g;
    }
    Ok(t)
}

fn kib(n: u64) -> f64 {
    n as f64 / 1024.0
}

/// The SDK's sizes: the library's own modules as built (`dist/*.js`, unminified ESM, without
/// dependencies, each file gzipped), and what the demo page loads: its JS (the SDK with
/// matrix-js-sdk and livekit-client, minified), LiveKit's E2EE worker and the Matrix crypto wasm.
fn print_sizes(library: &Path, page: &Path) -> anyhow::Result<()> {
    let name_of = |p: &Path| {
        p.file_name()
            .and_then(|n| n.to_str())
            .unwrap_or_default()
            .to_owned()
    };
    let lib: Vec<PathBuf> = files_under(library)?
        .into_iter()
        .filter(|p| p.parent() == Some(library))
        .filter(|p| {
            let n = name_of(p);
            n.ends_with(".js") && n != "e2ee-worker.js"
        })
        .collect();
    let (core, react): (Vec<PathBuf>, Vec<PathBuf>) =
        lib.into_iter().partition(|p| name_of(p) != "react.js");
    let page_files = files_under(page)?;
    let pick = |f: &dyn Fn(&str) -> bool| -> Vec<PathBuf> {
        page_files
            .iter()
            .filter(|p| f(&name_of(p)))
            .cloned()
            .collect()
    };
    let demo_js = pick(&|n| n.ends_with(".js") && n != "e2ee-worker.js");
    let worker = pick(&|n| n == "e2ee-worker.js");
    let wasm = pick(&|n| n.ends_with(".wasm"));
    let other = pick(&|n| n.ends_with(".html") || n.ends_with(".css"));
    if core.is_empty() || demo_js.is_empty() || worker.is_empty() || wasm.is_empty() {
        bail!(
            "the build is incomplete (library {}, page {}): cd sdk/browser && npm run build",
            library.display(),
            page.display()
        );
    }
    let rows = [
        SizeRow {
            name: "SDK library, dist/*.js without react.js (unminified, per file)",
            files: core,
        },
        SizeRow {
            name: "SDK React hook, dist/react.js",
            files: react,
        },
        SizeRow {
            name: "demo page JS (SDK + matrix-js-sdk + livekit-client, minified)",
            files: demo_js.clone(),
        },
        SizeRow {
            name: "LiveKit E2EE worker",
            files: worker.clone(),
        },
        SizeRow {
            name: "Matrix crypto wasm",
            files: wasm.clone(),
        },
        SizeRow {
            name: "demo page HTML + CSS",
            files: other.clone(),
        },
    ];
    println!();
    println!("bundle sizes (gzip -9; KiB):");
    println!("{:<66} {:>5} {:>10} {:>10}", "", "files", "raw", "gzip");
    for r in &rows {
        let (raw, gz) = sum_sizes(&r.files)?;
        println!(
            "{:<66} {:>5} {:>10.1} {:>10.1}",
            r.name,
            r.files.len(),
            kib(raw),
            kib(gz)
        );
    }
    let without: Vec<PathBuf> = demo_js.into_iter().chain(worker).chain(other).collect();
    let (raw, gz) = sum_sizes(&without)?;
    let (wraw, wgz) = sum_sizes(&wasm)?;
    println!(
        "{:<66} {:>5} {:>10.1} {:>10.1}",
        "the page loads, without the wasm",
        without.len(),
        kib(raw),
        kib(gz)
    );
    println!(
        "{:<66} {:>5} {:>10.1} {:>10.1}",
        "the page loads, with the wasm",
        without.len() + wasm.len(),
        kib(raw + wraw),
        kib(gz + wgz)
    );
    Ok(())
}

/// The 1-minute load average and the number of CPUs, for the report.
fn load() -> String {
    let avg = std::fs::read_to_string("/proc/loadavg").unwrap_or_default();
    let cpus = std::thread::available_parallelism().map_or(0, std::num::NonZero::get);
    format!(
        "load average {} on {cpus} CPUs",
        avg.split_whitespace().take(3).collect::<Vec<_>>().join(" ")
    )
}

/// Runs `n` Rust calls; their ids and samples go to `into`.
async fn rust_block(
    client: &OracleClient,
    clock: &Clock,
    n: usize,
    into: &mut Vec<(String, Sample)>,
) -> anyhow::Result<()> {
    for _ in 0..n {
        into.push(rust_call(client, clock).await?);
    }
    Ok(())
}

/// `bench browser`.
///
/// # Errors
/// When the page is not built, the stack is not up, the driver or a call fails.
pub fn run(opts: Options) -> anyhow::Result<()> {
    if opts.calls == 0 || opts.block == 0 {
        bail!("--calls and --block must be at least 1");
    }
    if !opts.page.join("index.html").is_file() {
        bail!(
            "{} has no index.html: build the demo first (cd sdk/browser && npm ci && npm run build)",
            opts.page.display()
        );
    }
    if !opts.driver.is_file() {
        bail!("no page driver at {}", opts.driver.display());
    }
    let rt = tokio::runtime::Runtime::new().context("starting the async runtime")?;
    rt.block_on(run_async(opts))
}

async fn run_async(opts: Options) -> anyhow::Result<()> {
    let Options {
        calls,
        block,
        dir,
        page,
        library,
        driver,
        alternate_early_join,
    } = opts;
    let run_dir = dir.join(format!("run-{}", unique_hex(4)));
    std::fs::create_dir_all(&run_dir).with_context(|| format!("{}", run_dir.display()))?;
    let page_copy = run_dir.join("page");
    copy_tree(&page, &page_copy)?;
    let stack = Stack::running()?;
    let load_start = load();
    eprintln!("bench browser: working directory {}", run_dir.display());
    eprintln!("  at the start: {load_start}");

    // The page's origin first: the oracle server's CORS allow-list names it.
    let site = web::bind(SocketAddr::from(([127, 0, 0, 1], 0))).await?;
    let origin = site.url().to_owned();
    let mut dopts = DeployOptions::new(run_dir.join("deployment"));
    dopts.cors_allowed_origins = vec![origin.clone()];
    let dep = Deployment::start(stack.clone(), dopts).await?;
    // Both clients pin the oracle on first use (no key-transparency directory).
    let server = site.serve(WebOptions::for_deployment(
        page_copy.clone(),
        &stack,
        &dep,
        None,
    )?)?;
    let outcome = measure(
        &stack,
        &dep,
        &server,
        &run_dir,
        &driver,
        calls,
        block,
        alternate_early_join,
        &load_start,
    )
    .await;
    server.stop().await;
    dep.stop().await;
    let _ = std::fs::remove_dir_all(&page_copy);
    outcome?;
    print_sizes(&library, &page)
}

#[allow(clippy::too_many_arguments)]
async fn measure(
    stack: &Stack,
    dep: &Deployment,
    server: &web::WebServer,
    run_dir: &Path,
    driver_path: &Path,
    calls: usize,
    block: usize,
    alternate_early_join: bool,
    load_start: &str,
) -> anyhow::Result<()> {
    // The Rust client: a returning user (its warm-up call makes the DM with the bot).
    let rust = dep.new_user().await?;
    let clock = Clock::now();
    rust_call(&rust, &clock)
        .await
        .context("the Rust warm-up call")?;
    eprintln!("  Rust client: warm-up call done");

    let name = format!("did-ixo-bench{}", unique_hex(5));
    let (_, password) = stack.user(&name)?;
    let go_dir = run_dir.join("go");
    std::fs::create_dir_all(&go_dir)?;
    let blocks = calls.div_ceil(block);
    // Sign-in and warm-up, then each call at most 90 s, plus the Rust blocks in between.
    let timeout_s = (300 + calls * 90 + blocks * 120).min(3600);
    let cfg = json!({
        "pageUrl": format!("{}/", server.url()),
        "user": name,
        "password": password.as_str(),
        "scenario": "bench",
        "calls": calls,
        "block": block,
        "goDir": go_dir,
        "goWaitS": (60 + block * 60).min(1800),
        "toneHz": TONE_HZ,
        "toneWav": run_dir.join("tone.wav"),
        "screenshotsDir": run_dir.join("screenshots"),
        "errorShot": false,
        "timeoutS": timeout_s,
    });
    let mut cfg = cfg;
    if let (true, Some(o)) = (alternate_early_join, cfg.as_object_mut()) {
        o.insert("earlyJoin".to_owned(), json!("alternate"));
    }
    drop(password);
    let log = run_dir.join("driver.log");
    let (mut driver, mut lines) = spawn_driver(driver_path, &cfg, &log)?;
    eprintln!(
        "  browser: signing in (driver log {}); then {calls} calls each, blocks of {block}, browser first",
        log.display()
    );

    let agent = dep.agent.as_ref().context("the deployment's agent")?;
    let mut reports = Reports::default();
    let mut browser: Vec<(String, Sample)> = Vec::new();
    let mut rust_samples: Vec<(String, Sample)> = Vec::new();
    let mut chromium = String::from("?");
    let mut warmed = false;
    loop {
        match next_line(&mut lines).await? {
            Line::Call(c) => match browser_sample(&c)? {
                None => {
                    warmed = true;
                    eprintln!("  browser: warm-up call done");
                }
                Some(s) => {
                    let id = c.get("callId").and_then(Value::as_str).unwrap_or_default();
                    browser.push((id.to_owned(), s));
                }
            },
            Line::Wait(b) => {
                if !warmed {
                    bail!("the driver waits for block {b} before its warm-up call");
                }
                let b = usize::try_from(b)?;
                if b > 0 {
                    // The browser's block b-1 is done: the Rust client's block b-1 now.
                    let n = block.min(calls - rust_samples.len());
                    rust_block(&rust, &clock, n, &mut rust_samples).await?;
                }
                eprintln!(
                    "  {} browser + {} Rust calls done",
                    browser.len(),
                    rust_samples.len()
                );
                reports.drain(agent).await;
                let go = go_dir.join(format!("go-{b}"));
                std::fs::write(&go, b"go").with_context(|| format!("{}", go.display()))?;
            }
            Line::Result(r) => {
                if r.get("ok").and_then(Value::as_bool) != Some(true) {
                    bail!(
                        "the driver failed: {} (log {})",
                        r.get("error")
                            .and_then(Value::as_str)
                            .unwrap_or("no error given"),
                        log.display()
                    );
                }
                chromium = r
                    .get("chromium")
                    .and_then(Value::as_str)
                    .unwrap_or("?")
                    .to_owned();
            }
            Line::Closed => break,
        }
    }
    let status = driver.child.wait().context("waiting for the driver")?;
    if !status.success() {
        bail!("the driver exited with {status} (log {})", log.display());
    }
    // The last block is the Rust client's.
    let n = calls.saturating_sub(rust_samples.len());
    rust_block(&rust, &clock, n, &mut rust_samples).await?;
    eprintln!(
        "  {} browser + {} Rust calls done",
        browser.len(),
        rust_samples.len()
    );
    if browser.len() != calls || rust_samples.len() != calls {
        bail!(
            "measured {} browser and {} Rust calls, not {calls} each",
            browser.len(),
            rust_samples.len()
        );
    }
    let ids: Vec<&str> = browser
        .iter()
        .chain(&rust_samples)
        .map(|(id, _)| id.as_str())
        .collect();
    reports.wait_for(agent, &ids).await;
    let annotated = |all: Vec<(String, Sample)>| -> Vec<Sample> {
        all.into_iter()
            .map(|(id, mut s)| {
                reports.annotate(&id, &mut s, &clock);
                s
            })
            .collect()
    };
    let browser = annotated(browser);
    let rust_samples = annotated(rust_samples);
    report(
        &browser,
        &rust_samples,
        block,
        &chromium,
        load_start,
        &load(),
    );
    if alternate_early_join {
        report_early_join(&browser);
    }
    Ok(())
}

/// The browser's calls with the early join against those without it (every other call of
/// the same run, `--alternate-early-join`).
fn report_early_join(browser: &[Sample]) {
    let half = |asked: f64| -> Vec<Sample> {
        browser
            .iter()
            .filter(|s| s.get("earlyJoinAsked") == Some(&asked))
            .cloned()
            .collect()
    };
    let (early, after) = (half(1.0), half(0.0));
    let used = early
        .iter()
        .filter(|s| s.get("joinedEarly") == Some(&1.0))
        .count();
    println!(
        "browser calls with the early join ({} calls, {used} of them joined early) vs without          it ({} calls), alternating call by call, ms:",
        early.len(),
        after.len()
    );
    println!(
        "{:<34} {:>9} {:>9} {:>9} {:>9} {:>7}",
        "", "early p50", "early p95", "after p50", "after p95", "ratio"
    );
    let rows = PHASES
        .iter()
        .map(|p| (format!("{p} reached"), *p))
        .chain([("echo heard".to_owned(), "echo")]);
    for (label, key) in rows {
        let at = |s: &Sample| s.get(key).copied();
        let (_, e50, e95) = column(&early, at);
        let (_, a50, a95) = column(&after, at);
        println!(
            "{label:<34} {e50:>9.1} {e95:>9.1} {a50:>9.1} {a95:>9.1} {:>7.2}",
            e50 / a50
        );
    }
    println!();
}

/// Per call, how long `phase` itself took: since the phase before it in [`PHASES`].
fn step_of(s: &Sample, i: usize) -> Option<f64> {
    let name = PHASES.get(i)?;
    let at = *s.get(*name)?;
    let before = match i.checked_sub(1) {
        None => 0.0,
        Some(j) => *s.get(*PHASES.get(j)?)?,
    };
    Some(at - before)
}

fn column(all: &[Sample], f: impl Fn(&Sample) -> Option<f64>) -> (usize, f64, f64) {
    let mut v: Vec<f64> = all.iter().filter_map(f).filter(|x| x.is_finite()).collect();
    (v.len(), percentile(&mut v, 0.5), percentile(&mut v, 0.95))
}

fn report(
    browser: &[Sample],
    rust: &[Sample],
    block: usize,
    chromium: &str,
    load_start: &str,
    load_end: &str,
) {
    println!(
        "bench browser: {} browser + {} Rust calls, one oracle (forward secrecy on), returning \
         users, alternating blocks of {block} (browser first); headless Chromium {chromium}",
        browser.len(),
        rust.len()
    );
    println!("  {load_start} at the start, {load_end} at the end");
    println!();
    for (title, key) in [
        (
            "callOracle() / call_oracle() → first decrypted oracle audio, as each client marks it \
             (firstAudio), ms:",
            "firstAudio",
        ),
        (
            "callOracle() / call_oracle() → the tone's echo heard in the oracle's decrypted audio, ms:",
            "echo",
        ),
    ] {
        println!("{title}");
        println!("{:<10} {:>4} {:>9} {:>9}", "client", "n", "p50", "p95");
        let total = |s: &Sample| s.get(key).copied();
        let (bn, b50, b95) = column(browser, total);
        let (rn, r50, r95) = column(rust, total);
        println!("{:<10} {bn:>4} {b50:>9.1} {b95:>9.1}", "browser");
        println!("{:<10} {rn:>4} {r50:>9.1} {r95:>9.1}", "rust");
        println!(
            "ratio browser/rust: p50 {:.2}, p95 {:.2}",
            b50 / r50,
            b95 / r95
        );
        println!();
    }
    println!();
    println!(
        "per phase (ms): the phase itself (since the one before it), p50; and when it was reached, p50"
    );
    println!(
        "{:<12} {:>11} {:>9} {:>7} {:>12} {:>10}",
        "phase", "browser p50", "rust p50", "ratio", "browser at", "rust at"
    );
    for (i, p) in PHASES.iter().enumerate() {
        let (_, bs, _) = column(browser, |s| step_of(s, i));
        let (_, rs, _) = column(rust, |s| step_of(s, i));
        let (_, ba, _) = column(browser, |s| s.get(*p).copied());
        let (_, ra, _) = column(rust, |s| s.get(*p).copied());
        println!(
            "{p:<12} {bs:>11.1} {rs:>9.1} {:>7.2} {ba:>12.1} {ra:>10.1}",
            bs / rs
        );
    }
    println!();
    println!(
        "the agent's side, p50 (the job's assignment set against each call's start on the wall \
         clock; the rest ms since the assignment):"
    );
    println!(
        "{:<34} {:>4} {:>11} {:>4} {:>9}",
        "", "n", "browser p50", "n", "rust p50"
    );
    let rows: [(&str, Pick); 8] = [
        ("job assigned, since callOracle()", |s| {
            s.get("agent.assigned").copied()
        }),
        ("job assigned − sync reached", |s| {
            Some(s.get("agent.assigned")? - s.get("sync")?)
        }),
        ("firstAudio − job assigned", |s| {
            Some(s.get("firstAudio")? - s.get("agent.assigned")?)
        }),
        ("echo − job assigned", |s| {
            Some(s.get("echo")? - s.get("agent.assigned")?)
        }),
        ("key fetched + opened", |s| s.get("agent.keyReady").copied()),
        ("in the room, track published", |s| {
            s.get("agent.joined").copied()
        }),
        ("first user frame heard", |s| {
            s.get("agent.firstHeard").copied()
        }),
        ("heard − in the room", |s| {
            Some(s.get("agent.firstHeard")? - s.get("agent.joined")?)
        }),
    ];
    for (name, f) in rows {
        let (bn, b50, _) = column(browser, f);
        let (rn, r50, _) = column(rust, f);
        println!("{name:<34} {bn:>4} {b50:>11.1} {rn:>4} {r50:>9.1}");
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn percentiles_are_nearest_rank() {
        let mut v: Vec<f64> = (1..=20).map(f64::from).rev().collect();
        assert_eq!(percentile(&mut v, 0.5), 11.0);
        assert_eq!(percentile(&mut v, 0.95), 19.0);
        assert!(percentile(&mut [], 0.5).is_nan());
    }

    #[test]
    fn driver_lines_are_told_apart_and_checked() {
        assert!(matches!(
            parse_line(r#"{"benchWait":3}"#).unwrap(),
            Line::Wait(3)
        ));
        assert!(matches!(
            parse_line(r#"{"ok":true}"#).unwrap(),
            Line::Result(_)
        ));
        assert!(parse_line("not json").is_err());
        assert!(parse_line(r#"{"benchWait":"x"}"#).is_err());
        let Line::Call(c) = parse_line(
            r#"{"benchCall":{"warmup":false,"startedAtEpochMs":1000.5,"echoAtEpochMs":2100.5,"timeline":[{"phase":"resolve","ms":5},{"phase":"firstAudio","ms":900}],"encryption":{"localMedia":true,"oracleMedia":true}}}"#,
        )
        .unwrap() else {
            panic!("a call line");
        };
        let s = browser_sample(&c).unwrap().unwrap();
        assert_eq!(s.get("firstAudio"), Some(&900.0));
        assert_eq!(s.get("echo"), Some(&1100.0));
        assert_eq!(step_of(&s, 0), Some(5.0));
        // No step where the phase before it was not reached.
        assert_eq!(step_of(&s, 7), None);
        let warm = json!({"warmup": true});
        assert!(browser_sample(&warm).unwrap().is_none());
        let call = |timeline: Value, oracle_media: bool, echo: Option<f64>| {
            json!({"warmup": false, "startedAtEpochMs": 10.0, "echoAtEpochMs": echo,
                "timeline": timeline,
                "encryption": {"localMedia": true, "oracleMedia": oracle_media}})
        };
        let heard = json!([{"phase": "firstAudio", "ms": 1}]);
        assert!(browser_sample(&call(heard.clone(), true, Some(20.0))).is_ok());
        // Not encrypted, no echo time, no firstAudio: refused.
        assert!(browser_sample(&call(heard.clone(), false, Some(20.0))).is_err());
        assert!(browser_sample(&call(heard, true, None)).is_err());
        let unheard = json!([{"phase": "join", "ms": 1}]);
        assert!(browser_sample(&call(unheard, true, Some(20.0))).is_err());
    }

    #[test]
    fn rms_is_a_fraction_of_full_scale() {
        assert_eq!(rms(&[]), 0.0);
        assert_eq!(rms(&[0; 960]), 0.0);
        let tone = oracle_calls_media::sine_tone(TONE_HZ, TONE_AMPLITUDE, 0, 960);
        let r = rms(&tone);
        assert!((r - 0.5 / 2f64.sqrt()).abs() < 0.01, "{r}");
        assert!(r > AUDIBLE_RMS);
        // The tone is what the echo check looks for; another frequency is not.
        assert!(oracle_calls_media::goertzel_power(&tone, TONE_HZ) > TONE_POWER);
        let other = oracle_calls_media::sine_tone(TONE_HZ * 1.5, TONE_AMPLITUDE, 0, 960);
        assert!(oracle_calls_media::goertzel_power(&other, TONE_HZ) < TONE_POWER);
    }
}

//! `oracle-calls bench load`: N concurrent echo calls with each component in its own process
//! (the oracle server, the agent, every server of the stack, and this process as the users'
//! load generator), CPU and memory per component over a measurement window, how many echo
//! frames did not reach the users, and how long calls take to set up at that load.

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail};
use oracle_calls_client::{CallEvent, OracleClient};
use oracle_calls_lab::local::{Db, DeployOptions, Deployment, Stack};
use oracle_calls_proto::CallType;

/// Samples in one 20 ms frame at 48 kHz.
const FRAME: usize = 960;
/// Frames per second of a call's audio.
const FRAMES_PER_SEC: f64 = 50.0;
/// An echo frame quieter than this (RMS) carries none of the user's audio: the users always
/// send a tone under their speech, so a quiet echo frame is one the agent had nothing to
/// echo for (the user's frame was lost or late), and the agent said silence instead.
const VOICED_RMS: f64 = 300.0;
/// How long one call may take to hear its echo.
const SETUP_LIMIT: Duration = Duration::from_secs(90);
/// Calls set up at once while the load ramps up.
const SETUP_PARALLEL: usize = 4;

/// What `bench load` measures.
#[derive(Debug, Clone)]
pub struct Options {
    /// Numbers of concurrent calls, one measurement each.
    pub levels: Vec<usize>,
    /// Length of the measurement window.
    pub seconds: u64,
    /// Calls placed one after the other once the load is up, for setup under load.
    pub probes: usize,
    /// A name for the stack's topology, printed with every result.
    pub label: String,
    /// Working directory.
    pub dir: PathBuf,
}

/// The counters of one call's echo, as heard by its user.
#[derive(Default)]
struct Heard {
    /// Echo frames received.
    frames: AtomicU64,
    /// Echo frames that carried the user's audio.
    voiced: AtomicU64,
}

/// One process of the deployment or the stack, measured with its descendants.
struct Component {
    name: String,
    pid: u32,
    /// Whether its descendants count too (not for this process, whose children are the
    /// agent and the server).
    tree: bool,
}

/// CPU seconds and memory of a process tree at one instant.
#[derive(Clone, Copy, Default)]
struct Usage {
    cpu_s: f64,
    rss_kib: u64,
    pss_kib: u64,
    processes: usize,
}

/// `ppid` of every process, from /proc.
fn parents() -> HashMap<u32, u32> {
    let mut out = HashMap::new();
    let Ok(dir) = std::fs::read_dir("/proc") else {
        return out;
    };
    for e in dir.flatten() {
        let Some(pid) = e.file_name().to_str().and_then(|s| s.parse::<u32>().ok()) else {
            continue;
        };
        if let Some(ppid) = stat_fields(pid).and_then(|f| f.get(1).and_then(|v| v.parse().ok())) {
            out.insert(pid, ppid);
        }
    }
    out
}

/// The fields of /proc/PID/stat after the command name (state is field 0).
fn stat_fields(pid: u32) -> Option<Vec<String>> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let rest = stat.rsplit_once(") ")?.1;
    Some(rest.split_whitespace().map(str::to_owned).collect())
}

/// `root` and its descendants.
fn tree(root: u32, parents: &HashMap<u32, u32>) -> Vec<u32> {
    let mut out = vec![root];
    let mut i = 0;
    while let Some(&p) = out.get(i) {
        out.extend(parents.iter().filter(|&(_, &pp)| pp == p).map(|(&c, _)| c));
        i += 1;
    }
    out
}

/// `kB` value of `key` in a /proc status-like file.
fn kib(text: &str, key: &str) -> u64 {
    text.lines()
        .find_map(|l| l.strip_prefix(key))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
        .unwrap_or(0)
}

/// User + system CPU, RSS and PSS summed over `c`'s process (tree).
fn usage(c: &Component, parents: &HashMap<u32, u32>) -> Usage {
    let tick = 100.0; // USER_HZ on Linux
    let mut u = Usage::default();
    let pids = if c.tree {
        tree(c.pid, parents)
    } else {
        vec![c.pid]
    };
    for pid in pids {
        let Some(f) = stat_fields(pid) else { continue };
        let field = |i: usize| f.get(i).and_then(|v| v.parse::<f64>().ok()).unwrap_or(0.0);
        u.cpu_s += (field(11) + field(12)) / tick;
        if let Ok(s) = std::fs::read_to_string(format!("/proc/{pid}/status")) {
            u.rss_kib += kib(&s, "VmRSS:");
        }
        if let Ok(s) = std::fs::read_to_string(format!("/proc/{pid}/smaps_rollup")) {
            u.pss_kib += kib(&s, "Pss:");
        }
        u.processes += 1;
    }
    u
}

/// Busy and total jiffies of the whole machine (`cpu` line of /proc/stat).
fn machine_jiffies() -> anyhow::Result<(f64, f64)> {
    let stat = std::fs::read_to_string("/proc/stat")?;
    let line = stat.lines().next().context("/proc/stat is empty")?;
    let v: Vec<f64> = line
        .split_whitespace()
        .skip(1)
        .filter_map(|x| x.parse().ok())
        .collect();
    let total: f64 = v.iter().take(8).sum();
    let idle = v.get(3).copied().unwrap_or(0.0) + v.get(4).copied().unwrap_or(0.0);
    Ok((total - idle, total))
}

fn loadavg() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .ok()
        .and_then(|s| s.split_whitespace().next().map(str::to_owned))
        .unwrap_or_else(|| "?".into())
}

/// The stack's servers: every `$STACK_DIR/run/NAME.pid` that names a live process.
fn stack_components(stack: &Stack) -> anyhow::Result<Vec<Component>> {
    let run = Path::new(stack.get("STACK_DIR")?).join("run");
    let mut out = Vec::new();
    for e in std::fs::read_dir(&run).with_context(|| format!("reading {}", run.display()))? {
        let path = e?.path();
        if path.extension().and_then(|x| x.to_str()) != Some("pid") {
            continue;
        }
        let name = path
            .file_stem()
            .and_then(|s| s.to_str())
            .unwrap_or("?")
            .to_owned();
        let pid = std::fs::read_to_string(&path)
            .ok()
            .and_then(|s| s.trim().parse::<u32>().ok());
        if let Some(pid) = pid.filter(|p| Path::new(&format!("/proc/{p}")).exists()) {
            out.push(Component {
                name,
                pid,
                tree: true,
            });
        }
    }
    out.sort_by(|a, b| a.name.cmp(&b.name));
    Ok(out)
}

fn pct(v: &mut [f64], p: f64) -> f64 {
    v.sort_by(f64::total_cmp);
    let i = ((v.len() as f64 - 1.0) * p).round() as usize;
    v.get(i).copied().unwrap_or(f64::NAN)
}

fn rms(pcm: &[i16]) -> f64 {
    if pcm.is_empty() {
        return 0.0;
    }
    let sum: f64 = pcm.iter().map(|&s| f64::from(s) * f64::from(s)).sum();
    (sum / pcm.len() as f64).sqrt()
}

/// Ten seconds of synthesized speech over a steady 150 Hz tone, so that no frame is quiet.
fn user_signal(seed: u64) -> Vec<i16> {
    let speech = oracle_calls_lab::speech::synthesize(10.0, seed);
    let tone = oracle_calls_media::sine_tone(150.0, 1500.0, 0, speech.len());
    speech
        .iter()
        .zip(tone.iter())
        .map(|(&a, &b)| a.saturating_add(b))
        .collect()
}

/// Places a call and waits for the oracle's first audio: the setup time.
async fn probe(client: &OracleClient) -> anyhow::Result<Duration> {
    let t0 = Instant::now();
    let mut call = client.call_oracle(CallType::Audio).await?;
    let mic = call.microphone();
    let signal = user_signal(7);
    let talker = tokio::spawn(async move { mic.play(&signal).await });
    let first = tokio::time::timeout(Duration::from_secs(30), async {
        loop {
            match call.next_event().await {
                Some(CallEvent::OracleAudio { .. }) => return Ok(t0.elapsed()),
                Some(CallEvent::Ended { reason }) => bail!("call ended: {reason}"),
                None => bail!("call closed"),
                Some(_) => {}
            }
        }
    })
    .await
    .context("no oracle audio within 30 s")?;
    talker.abort();
    call.end().await?;
    first
}

/// One level's result, for the summary.
struct Level {
    n: usize,
    loss: f64,
    setup: (f64, f64),
    probes: (f64, f64),
}

/// `bench load`.
pub fn run(o: Options) -> anyhow::Result<()> {
    let rt = tokio::runtime::Runtime::new()?;
    rt.block_on(async move {
        let stack = Stack::running()?;
        let exe = std::env::current_exe().context("this program's path")?;
        let mut summary = Vec::new();
        for &n in &o.levels {
            match level(&stack, &exe, &o, n).await {
                Ok(l) => summary.push(l),
                Err(e) => println!("[{}] {n} calls: FAILED: {e:#}", o.label),
            }
        }
        println!("\n[{}] summary", o.label);
        println!(
            "{:>6} {:>9} {:>19} {:>19}",
            "calls", "loss %", "setup p50/p95 ms", "probes p50/p95 ms"
        );
        for l in summary {
            println!(
                "{:>6} {:>9.3} {:>9.0} /{:>8.0} {:>9.0} /{:>8.0}",
                l.n, l.loss, l.setup.0, l.setup.1, l.probes.0, l.probes.1
            );
        }
        Ok(())
    })
}

async fn level(stack: &Stack, exe: &Path, o: &Options, n: usize) -> anyhow::Result<Level> {
    let dir = o.dir.join(format!(
        "{}-n{n}-{}",
        o.label,
        oracle_calls_lab::local::unique_hex(3)
    ));
    let mut opts = DeployOptions::new(&dir);
    opts.oracle = None;
    opts.db = Db::Postgres;
    // The port the stack's LiveKit sends its webhooks to: they are part of the server's load.
    let port: u16 = stack
        .get("STACK_SERVER_PORT")?
        .parse()
        .context("STACK_SERVER_PORT")?;
    opts.listen = std::net::SocketAddr::from(([127, 0, 0, 1], port));
    let mut dep = Deployment::start(stack.clone(), opts).await?;
    let mut server = dep
        .spawn_server_process(exe, Duration::from_secs(30))
        .await?;
    let agent = dep
        .spawn_agent_process(exe, n + 2, None, Duration::from_secs(20))
        .await;
    let mut agent = match agent {
        Ok(a) => a,
        Err(e) => {
            let _ = server.kill();
            let _ = server.wait();
            return Err(e);
        }
    };
    let result = drive(stack, &dep, o, n, server.id(), agent.id()).await;
    for child in [&mut agent, &mut server] {
        let _ = child.kill();
        let _ = child.wait();
    }
    dep.stop().await;
    result
}

async fn drive(
    stack: &Stack,
    dep: &Deployment,
    o: &Options,
    n: usize,
    server_pid: u32,
    agent_pid: u32,
) -> anyhow::Result<Level> {
    let edit = |c: &mut oracle_calls_client::ClientConfig| {
        // The users are the load generator, not what is measured: their microphones encode
        // at the cheapest complexity, and on a loaded machine the bot may take a while to
        // join a new user's DM.
        c.opus_complexity = Some(0);
        c.bot_join_timeout = Duration::from_secs(90);
    };
    // The probe user calls once first (its DM with the bot is made then), so its measured
    // calls are a returning user's.
    let mut probers = Vec::new();
    if o.probes > 0 {
        let c = dep.new_user_with(edit).await?;
        probe(&c).await.context("a probe user's first call")?;
        probers.push(c);
    }
    let mut clients = Vec::new();
    for _ in 0..n {
        clients.push(dep.new_user_with(edit).await?);
    }
    let setup_slots = Arc::new(tokio::sync::Semaphore::new(SETUP_PARALLEL));
    let (up_tx, mut up_rx) = tokio::sync::mpsc::channel::<Result<f64, String>>(n.max(1));
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let mut heard = Vec::new();
    let mut tasks = Vec::new();
    for (i, c) in clients.into_iter().enumerate() {
        let (slots, up_tx, mut stop_rx) = (setup_slots.clone(), up_tx.clone(), stop_rx.clone());
        let h = Arc::new(Heard::default());
        heard.push(h.clone());
        tasks.push(tokio::spawn(async move {
            let permit = slots.acquire_owned().await?;
            let t0 = Instant::now();
            let mut call = match c.call_oracle(CallType::Audio).await {
                Ok(call) => call,
                Err(e) => {
                    let _ = up_tx.send(Err(format!("call_oracle: {e}"))).await;
                    return Err(e.into());
                }
            };
            let mic = call.microphone();
            let signal = user_signal(i as u64 + 1);
            let talker = tokio::spawn(async move {
                loop {
                    if mic.play(&signal).await.is_err() {
                        return;
                    }
                }
            });
            let mut permit = Some(permit);
            let give_up = tokio::time::sleep(SETUP_LIMIT);
            tokio::pin!(give_up);
            loop {
                tokio::select! {
                    ev = call.next_event() => match ev {
                        Some(CallEvent::OracleAudio { pcm }) => {
                            let frames = (pcm.len() / FRAME).max(1) as u64;
                            h.frames.fetch_add(frames, Ordering::Relaxed);
                            if rms(&pcm) >= VOICED_RMS {
                                h.voiced.fetch_add(frames, Ordering::Relaxed);
                            }
                            if permit.take().is_some() {
                                let _ = up_tx.send(Ok(t0.elapsed().as_secs_f64() * 1000.0)).await;
                            }
                        }
                        Some(CallEvent::Ended { reason }) => {
                            let _ = up_tx.send(Err(format!("call {} ended: {reason}", call.id()))).await;
                            bail!("a call ended: {reason}")
                        }
                        None => break,
                        Some(_) => {}
                    },
                    () = &mut give_up, if permit.is_some() => {
                        permit = None;
                        let _ = up_tx.send(Err(format!(
                            "call {} heard no echo within {SETUP_LIMIT:?}", call.id()
                        ))).await;
                    }
                    r = stop_rx.changed() => {
                        if r.is_err() || *stop_rx.borrow() { break; }
                    }
                }
            }
            talker.abort();
            call.end().await?;
            Ok::<(), anyhow::Error>(())
        }));
    }
    drop(up_tx);
    let mut setups = Vec::new();
    let mut failed = Vec::new();
    let waited = Instant::now();
    while setups.len() + failed.len() < n {
        match up_rx.recv().await {
            Some(Ok(ms)) => setups.push(ms),
            Some(Err(e)) => {
                eprintln!("  not up: {e}");
                failed.push(e);
            }
            None => break,
        }
    }
    let stop_all = |tasks: Vec<tokio::task::JoinHandle<anyhow::Result<()>>>| async move {
        let _ = stop_tx.send(true);
        for t in tasks {
            let _ = t.await;
        }
    };
    if setups.len() < n {
        stop_all(tasks).await;
        bail!(
            "only {} of {n} calls came up within {:.0} s ({} failed; logs in {})",
            setups.len(),
            waited.elapsed().as_secs_f64(),
            failed.len(),
            dep.dir.display()
        );
    }
    let ramp = waited.elapsed().as_secs_f64();
    eprintln!(
        "  [{}] {n} calls up after {ramp:.1} s; measuring {} s",
        o.label, o.seconds
    );
    // Let the last calls' jitter buffers and the agent's delay lines settle.
    tokio::time::sleep(Duration::from_secs(2)).await;

    let mut components = vec![
        Component {
            name: "agent".into(),
            pid: agent_pid,
            tree: true,
        },
        Component {
            name: "server".into(),
            pid: server_pid,
            tree: true,
        },
    ];
    components.extend(stack_components(stack)?);
    components.push(Component {
        name: "load generator".into(),
        pid: std::process::id(),
        tree: false,
    });
    let snapshot = |comps: &[Component]| {
        let p = parents();
        comps.iter().map(|c| usage(c, &p)).collect::<Vec<_>>()
    };
    let counts = |heard: &[Arc<Heard>]| {
        heard
            .iter()
            .map(|h| {
                (
                    h.frames.load(Ordering::Relaxed),
                    h.voiced.load(Ordering::Relaxed),
                )
            })
            .collect::<Vec<_>>()
    };
    let load0 = loadavg();
    let (busy0, total0) = machine_jiffies()?;
    let c0 = counts(&heard);
    let u0 = snapshot(&components);
    let t = Instant::now();
    let mut peak: Vec<u64> = u0.iter().map(|u| u.rss_kib).collect();
    while t.elapsed() < Duration::from_secs(o.seconds) {
        tokio::time::sleep(Duration::from_secs(1)).await;
        for (pk, u) in peak.iter_mut().zip(snapshot(&components)) {
            *pk = (*pk).max(u.rss_kib);
        }
    }
    let u1 = snapshot(&components);
    let c1 = counts(&heard);
    let elapsed = t.elapsed().as_secs_f64();
    let (busy1, total1) = machine_jiffies()?;
    let load1 = loadavg();

    // Setup under this load: calls placed one after the other while the n calls go on.
    let mut probe_ms = Vec::new();
    for _ in 0..o.probes {
        let Some(c) = probers.first() else { break };
        match probe(c).await {
            Ok(d) => probe_ms.push(d.as_secs_f64() * 1000.0),
            Err(e) => eprintln!("  probe call failed: {e:#}"),
        }
    }
    stop_all(tasks).await;

    let expected = FRAMES_PER_SEC * elapsed;
    let mut per_call_loss = Vec::new();
    let (mut frames, mut voiced) = (0u64, 0u64);
    for ((f0, v0), (f1, v1)) in c0.iter().zip(&c1) {
        frames += f1 - f0;
        voiced += v1 - v0;
        per_call_loss.push((1.0 - (v1 - v0) as f64 / expected).max(0.0) * 100.0);
    }
    let all = expected * n as f64;
    let missing = (1.0 - frames as f64 / all).max(0.0) * 100.0;
    let loss = (1.0 - voiced as f64 / all).max(0.0) * 100.0;
    let over = per_call_loss.iter().filter(|&&l| l >= 1.0).count();
    let worst = per_call_loss.iter().copied().fold(0.0, f64::max);
    let machine = (busy1 - busy0) / ((total1 - total0) / f64::from(u32::try_from(num_cpus())?));

    let label = &o.label;
    println!(
        "\n[{label}] {n} concurrent echo calls, {elapsed:.1} s window; load average {load0} → {load1}; machine busy {machine:.2} cores"
    );
    println!(
        "[{label}] echo frames at the users: expected {all:.0}, received {frames} (missing {missing:.2} %), carrying the user's audio {voiced}: frame loss {loss:.2} % (worst call {worst:.2} %, calls ≥ 1 %: {over} of {n})"
    );
    let mut s = setups;
    let n_probes = probe_ms.len();
    let mut p = probe_ms;
    let setup = (pct(&mut s, 0.5), pct(&mut s, 0.95));
    let probes = (pct(&mut p, 0.5), pct(&mut p, 0.95));
    println!(
        "[{label}] setup call_oracle → first oracle audio: ramp (new users, {SETUP_PARALLEL} at a time, all up after {ramp:.1} s) p50 {:.0} / p95 {:.0} ms; {} probes under the load (returning user, one at a time) p50 {:.0} / p95 {:.0} ms",
        setup.0, setup.1, n_probes, probes.0, probes.1
    );
    println!(
        "[{label}] {:<16} {:>8} {:>10} {:>10} {:>14} {:>10} {:>6}",
        "component", "cores", "per call", "RSS MiB", "peak RSS MiB", "PSS MiB", "procs"
    );
    let mut sum_cores = 0.0;
    let mut by_name = BTreeMap::new();
    for (((c, a), b), pk) in components.iter().zip(&u0).zip(&u1).zip(&peak) {
        let cores = (b.cpu_s - a.cpu_s) / elapsed;
        sum_cores += cores;
        by_name.insert(c.name.clone(), cores);
        println!(
            "[{label}] {:<16} {cores:>8.3} {:>10.4} {:>10.1} {:>14.1} {:>10.1} {:>6}",
            c.name,
            cores / n.max(1) as f64,
            b.rss_kib as f64 / 1024.0,
            *pk as f64 / 1024.0,
            b.pss_kib as f64 / 1024.0,
            b.processes
        );
    }
    println!(
        "[{label}] {:<16} {sum_cores:>8.3}   (everything else on the machine: {:.2} cores)",
        "all components",
        machine - sum_cores
    );
    // One line per level for scripts: label, calls, loss, setup, cores per component.
    println!(
        "RESULT label={label} calls={n} window_s={elapsed:.1} loss_pct={loss:.3} missing_pct={missing:.3} worst_call_pct={worst:.3} setup_p50={:.0} setup_p95={:.0} probe_p50={:.0} probe_p95={:.0} load={load0}->{load1} machine_cores={machine:.3} other_cores={:.3} {}",
        setup.0,
        setup.1,
        probes.0,
        probes.1,
        machine - sum_cores,
        components
            .iter()
            .zip(&u1)
            .map(|(c, u)| format!(
                "{}={:.3}c/{:.1}MiB/{:.1}PSS",
                c.name.replace(' ', "_"),
                by_name.get(&c.name).copied().unwrap_or(0.0),
                u.rss_kib as f64 / 1024.0,
                u.pss_kib as f64 / 1024.0
            ))
            .collect::<Vec<_>>()
            .join(" ")
    );
    Ok(Level {
        n,
        loss,
        setup,
        probes,
    })
}

/// CPUs the machine has (lines `cpuN` of /proc/stat).
fn num_cpus() -> usize {
    std::fs::read_to_string("/proc/stat")
        .map(|s| {
            s.lines()
                .filter(|l| {
                    l.strip_prefix("cpu")
                        .is_some_and(|r| r.starts_with(|c: char| c.is_ascii_digit()))
                })
                .count()
        })
        .unwrap_or(1)
        .max(1)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_users_signal_has_no_quiet_frame() {
        // The loss measure counts quiet echo frames as lost: it holds only if every frame
        // the users send is well above the threshold.
        for seed in 1..=5 {
            let s = user_signal(seed);
            assert_eq!(s.len(), 48_000 * 10);
            let quietest = s.chunks_exact(FRAME).map(rms).fold(f64::INFINITY, f64::min);
            assert!(
                quietest > 3.0 * VOICED_RMS,
                "seed {seed}: quietest frame RMS {quietest:.0}"
            );
        }
        assert!(rms(&[0; FRAME]) < VOICED_RMS);
    }

    #[test]
    fn a_tree_is_the_root_and_all_its_descendants() {
        let parents: HashMap<u32, u32> = [(2, 1), (3, 2), (4, 2), (5, 3), (6, 9), (1, 0)]
            .into_iter()
            .collect();
        let mut t = tree(2, &parents);
        t.sort_unstable();
        assert_eq!(t, vec![2, 3, 4, 5]);
        assert_eq!(tree(6, &parents), vec![6]);
    }

    #[test]
    fn status_values_are_read_in_kib() {
        let text = "Name:\tx\nVmHWM:\t  2048 kB\nVmRSS:\t  1024 kB\n";
        assert_eq!(kib(text, "VmRSS:"), 1024);
        assert_eq!(kib(text, "VmHWM:"), 2048);
        assert_eq!(kib(text, "Pss:"), 0);
    }

    #[test]
    fn this_process_is_measured() {
        let me = Component {
            name: "me".into(),
            pid: std::process::id(),
            tree: false,
        };
        let a = usage(&me, &parents());
        // Burn some CPU so that the clock ticks move.
        let t = Instant::now();
        let mut x = 0u64;
        while t.elapsed() < Duration::from_millis(300) {
            x = x.wrapping_mul(6_364_136_223_846_793_005).wrapping_add(1);
        }
        std::hint::black_box(x);
        let b = usage(&me, &parents());
        assert_eq!(b.processes, 1);
        assert!(b.cpu_s > a.cpu_s, "{} → {}", a.cpu_s, b.cpu_s);
        assert!(b.rss_kib > 1024, "RSS {} KiB", b.rss_kib);
        let (busy, total) = machine_jiffies().unwrap_or((0.0, 0.0));
        assert!(total > busy && busy > 0.0);
        assert!(num_cpus() >= 1);
    }
}

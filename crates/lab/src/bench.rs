//! `oracle-lab bench setup`: how long a call takes to set up, phase by phase, on the local
//! stack, and what the agent process costs at 1, 10 and 50 concurrent calls.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail};
use oracle_calls_agent::CallReport;
use oracle_calls_client::{Call, CallEvent, KtConfig, OracleClient, Phase};
use oracle_calls_lab::local::{DeployOptions, Deployment, Stack};
use oracle_calls_lab::local_kt::{self, KtDirectory, KtService};
use oracle_calls_proto::CallType;
use tokio::sync::Mutex;

/// Per call, milliseconds per phase.
type Sample = BTreeMap<&'static str, f64>;

const PHASES: [&str; 9] = [
    "wrap (resolve + key)",
    "matrix send (DM + event)",
    "sync",
    "livekit join",
    "dispatch (sync start → job)",
    "key fetch + open",
    "agent join",
    "first oracle audio",
    "TOTAL call_oracle → audio",
];

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

/// Places one call, waits for the first oracle frame, ends it; returns the call's timings
/// from the client side and the instant it started.
async fn one_call(client: &OracleClient) -> anyhow::Result<(Call, Instant, Duration)> {
    let t0 = Instant::now();
    let mut call = client.call_oracle(CallType::Audio).await?;
    let mic = call.microphone();
    // A tone longer than the wait for the first answer below.
    let tone = oracle_calls_media::sine_tone(300.0, 6000.0, 0, 48_000 * 25);
    let talker = tokio::spawn(async move { mic.play(&tone).await });
    let first = tokio::time::timeout(Duration::from_secs(20), async {
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
    .context("no oracle audio within 20 s")?;
    talker.abort();
    let first = first?;
    call.end().await?;
    Ok((call, t0, first))
}

fn sample(call: &Call, t0: Instant, first: Duration, r: &CallReport) -> Sample {
    let tl = call.timeline();
    let at = |p| tl.at(p).map(ms).unwrap_or(f64::NAN);
    let d = |p| tl.duration_of(p).map(ms).unwrap_or(f64::NAN);
    let sync_start = at(Phase::Send);
    let assigned = ms(r.assigned_at.saturating_duration_since(t0));
    let mut s = Sample::new();
    s.insert(PHASES[0], at(Phase::Wrap));
    s.insert(PHASES[1], d(Phase::Room) + d(Phase::Send));
    s.insert(PHASES[2], d(Phase::Sync));
    s.insert(PHASES[3], d(Phase::Join));
    s.insert(PHASES[4], assigned - sync_start);
    s.insert(PHASES[5], r.key_ready_after.map(ms).unwrap_or(f64::NAN));
    s.insert(
        PHASES[6],
        r.joined_after.map(ms).unwrap_or(f64::NAN) - r.key_ready_after.map(ms).unwrap_or(f64::NAN),
    );
    s.insert(PHASES[7], ms(first) - at(Phase::Join));
    s.insert(PHASES[8], ms(first));
    s
}

fn pct(v: &mut [f64], p: f64) -> f64 {
    v.sort_by(f64::total_cmp);
    let i = ((v.len() as f64 - 1.0) * p).round() as usize;
    v.get(i).copied().unwrap_or(f64::NAN)
}

/// One configuration measured by `bench setup`: its deployment, users and samples.
struct Side {
    name: &'static str,
    dep: Arc<Deployment>,
    reports: Mutex<BTreeMap<String, CallReport>>,
    samples: Mutex<Vec<Sample>>,
    /// With key transparency: what its users configure, and the service (kept running while
    /// the side is measured).
    kt: Option<(KtConfig, KtService)>,
    /// Its users' [`oracle_calls_client::ClientConfig::early_join`].
    early_join: bool,
}

impl Side {
    /// A deployment set up as `how` says.
    async fn start(
        name: &'static str,
        dir: PathBuf,
        how: SideOptions,
        max_calls: usize,
        leave_hangup_edit_to_user: bool,
    ) -> anyhow::Result<Self> {
        let SideOptions {
            trusted,
            direct,
            hold_ms,
            early_join,
        } = how;
        let mut opts = DeployOptions::new(&dir);
        opts.max_calls = max_calls;
        opts.forward_secrecy = trusted;
        opts.direct_dispatch = direct;
        opts.first_frame_hold_ms = Some(hold_ms);
        opts.leave_hangup_edit_to_user = leave_hangup_edit_to_user;
        let dep = Deployment::start(Stack::running()?, opts).await?;
        let kt = if trusted {
            let exe = std::env::current_exe().context("this program's path")?;
            let kt = KtDirectory::new(&exe, dir.join("kt"), &dep.oracle_did)?;
            let service = kt.start("data")?;
            let record = local_kt::record_of(&local_kt::well_known(&dep.server.url).await?);
            local_kt::publish(&service, &kt.token, &dep.oracle_did, &record).await?;
            Some((kt.config(&service), service))
        } else {
            None
        };
        Ok(Self {
            name,
            dep: Arc::new(dep),
            reports: Mutex::new(BTreeMap::new()),
            samples: Mutex::new(Vec::new()),
            kt,
            early_join,
        })
    }

    /// A returning user: its first call (which creates the DM room with the bot) is not
    /// measured.
    async fn user(&self) -> anyhow::Result<OracleClient> {
        let kt = self.kt.as_ref().map(|(c, _)| c.clone());
        let c = self
            .dep
            .new_user_with(|cfg| {
                cfg.key_transparency = kt;
                cfg.early_join = self.early_join;
            })
            .await?;
        let (call, _, _) = one_call(&c).await?;
        self.report_for(&call.id().to_string()).await?;
        Ok(c)
    }

    /// The agent's report of call `id` (reports may arrive out of order).
    async fn report_for(&self, id: &str) -> anyhow::Result<CallReport> {
        loop {
            if let Some(r) = self.reports.lock().await.remove(id) {
                return Ok(r);
            }
            let r = tokio::time::timeout(
                Duration::from_secs(15),
                self.dep.agent.as_ref().context("agent")?.next_report(),
            )
            .await
            .context("no agent report")?
            .context("agent stopped")?;
            let rid = r
                .call_id
                .as_ref()
                .map(ToString::to_string)
                .unwrap_or_default();
            if rid == id {
                return Ok(r);
            }
            self.reports.lock().await.insert(rid, r);
        }
    }

    async fn measure(&self, client: &OracleClient) -> anyhow::Result<()> {
        let (call, t0, first) = one_call(client).await?;
        let r = self.report_for(&call.id().to_string()).await?;
        self.samples.lock().await.push(sample(&call, t0, first, &r));
        Ok(())
    }
}

/// How one side of `bench setup` is deployed.
#[derive(Clone, Copy, Debug)]
struct SideOptions {
    /// Forward secrecy and key transparency.
    trusted: bool,
    /// The agents take calls the server hands them directly, besides LiveKit's.
    direct: bool,
    /// The agents' `first_frame_hold_ms`.
    hold_ms: u64,
    /// The users claim the call's room and join it while the event is sent and synced.
    early_join: bool,
}

/// What `bench setup` sets beside its reference.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum Compare {
    /// Calls handed to the agent by the server (docs/PROTOCOL.md §6.8) against LiveKit's
    /// dispatch only; neither with key transparency or prekeys, nor a first-frame hold.
    Direct,
    /// Key transparency and one-time prekeys against neither; both with LiveKit's dispatch
    /// only and no first-frame hold (the issue-12 measurement).
    Kt,
    /// The agent's first-frame hold (`--hold-ms`, by default the agent's default) against
    /// none; both with direct dispatch, neither with key transparency or prekeys.
    Hold,
    /// The users' early join (docs/PROTOCOL.md §6.9) against joining after the sync; both
    /// with direct dispatch and the first-frame hold (`--hold-ms`), neither with key
    /// transparency or prekeys.
    Early,
}

impl Compare {
    /// The reference's deployment, the other side's, its name and its column's label.
    fn sides(self, hold_ms: u64) -> (SideOptions, SideOptions, &'static str, &'static str) {
        let plain = SideOptions {
            trusted: false,
            direct: false,
            hold_ms: 0,
            early_join: false,
        };
        match self {
            Self::Direct => (
                plain,
                SideOptions {
                    direct: true,
                    ..plain
                },
                "direct dispatch",
                "direct",
            ),
            Self::Kt => (
                plain,
                SideOptions {
                    trusted: true,
                    ..plain
                },
                "kt+prekeys",
                "kt+pk",
            ),
            Self::Hold => {
                let direct = SideOptions {
                    direct: true,
                    ..plain
                };
                (
                    direct,
                    SideOptions { hold_ms, ..direct },
                    "first-frame hold",
                    "hold",
                )
            }
            Self::Early => {
                let held = SideOptions {
                    direct: true,
                    hold_ms,
                    ..plain
                };
                (
                    held,
                    SideOptions {
                        early_join: true,
                        ..held
                    },
                    "early join",
                    "early",
                )
            }
        }
    }
}

/// `bench setup`: the same returning users call two oracles on the same stack in turn — the
/// reference (LiveKit's dispatch, no forward secrecy or key transparency) and one that differs
/// by what `compare` names (the server handing calls to the agent directly; or a one-time
/// prekey claimed and verified per call with the oracle's record verified against the
/// directory) — so both are measured under the same load and noise.
pub fn setup(
    calls: usize,
    concurrency: usize,
    compare: Compare,
    hold_ms: u64,
    bot_hangup_edit: bool,
    dir: PathBuf,
) -> anyhow::Result<()> {
    let rt = tokio::runtime::Runtime::new()?;
    rt.block_on(async move {
        let users = concurrency.max(1);
        let (reference, other, name, short) = compare.sides(hold_ms);
        let leave_edit = !bot_hangup_edit;
        let reference = Arc::new(
            Side::start(
                "reference",
                dir.join("reference"),
                reference,
                users * 2,
                leave_edit,
            )
            .await?,
        );
        let trusted =
            Arc::new(Side::start(name, dir.join("other"), other, users * 2, leave_edit).await?);
        let mut pairs = Vec::new();
        for _ in 0..users {
            pairs.push((reference.user().await?, trusted.user().await?));
        }
        let per_user = calls.div_ceil(users);
        eprintln!(
            "{calls} calls each for {} and {}, concurrency {users}, alternating",
            reference.name, trusted.name
        );
        let mut tasks = Vec::new();
        for (a, b) in pairs {
            let (reference, trusted) = (reference.clone(), trusted.clone());
            tasks.push(tokio::spawn(async move {
                for _ in 0..per_user {
                    reference.measure(&a).await?;
                    trusted.measure(&b).await?;
                    eprint!("\r  {} calls done", 2 * trusted.samples.lock().await.len());
                }
                Ok::<_, anyhow::Error>(())
            }));
        }
        for t in tasks {
            t.await??;
        }
        eprintln!();
        let a = reference.samples.lock().await.clone();
        let b = trusted.samples.lock().await.clone();
        println!(
            "bench setup: {} + {} calls, concurrency {users}, returning users (ms)",
            a.len(),
            b.len()
        );
        println!(
            "{:<30} {:>9} {:>9} {:>11} {:>11} {:>7}",
            "phase",
            "ref p50",
            "ref p95",
            format!("{short} p50"),
            format!("{short} p95"),
            "p50 ×"
        );
        for p in PHASES {
            let col = |all: &[Sample]| {
                let mut v: Vec<f64> = all
                    .iter()
                    .filter_map(|s| s.get(p).copied())
                    .filter(|x| x.is_finite())
                    .collect();
                (pct(&mut v, 0.5), pct(&mut v, 0.95))
            };
            let ((a50, a95), (b50, b95)) = (col(&a), col(&b));
            println!(
                "{p:<30} {a50:>9.1} {a95:>9.1} {b50:>11.1} {b95:>11.1} {:>7.2}",
                b50 / a50
            );
        }
        for side in [reference, trusted] {
            match Arc::try_unwrap(side) {
                Ok(s) => match Arc::try_unwrap(s.dep) {
                    Ok(d) => d.stop().await,
                    Err(_) => bail!("deployment still shared"),
                },
                Err(_) => bail!("side still shared"),
            }
        }
        Ok(())
    })
}

/// CPU seconds (user + system) and peak RSS (KiB) of a process, from /proc.
fn proc_usage(pid: u32) -> anyhow::Result<(f64, u64)> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat"))?;
    let rest = stat.rsplit_once(") ").map(|x| x.1).context("stat format")?;
    let f: Vec<&str> = rest.split_whitespace().collect();
    let tick = 100.0; // USER_HZ on Linux
    let utime: f64 = f.get(11).context("utime")?.parse()?;
    let stime: f64 = f.get(12).context("stime")?.parse()?;
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
    let hwm = status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
        .unwrap_or(0);
    Ok(((utime + stime) / tick, hwm))
}

/// How long one call of `bench agent` may take to hear its echo.
const SETUP_LIMIT: Duration = Duration::from_secs(90);

/// `bench agent`: the agent as its own process, N concurrent echo calls for `seconds`.
pub fn agent(
    levels: Vec<usize>,
    seconds: u64,
    opus_complexity: Option<u8>,
    dir: PathBuf,
) -> anyhow::Result<()> {
    let rt = tokio::runtime::Runtime::new()?;
    rt.block_on(async move {
        let stack = Stack::running()?;
        println!("{:>6} {:>14} {:>14} {:>14}", "calls", "CPU (cores)", "CPU/call", "peak RSS MiB");
        for n in levels {
            let mut opts = DeployOptions::new(dir.join(format!("n{n}")));
            opts.oracle = None;
            let dep = Deployment::start(stack.clone(), opts).await?;
            let mut child = dep
                .spawn_agent_process(
                    &std::env::current_exe()?,
                    n.max(1),
                    opus_complexity,
                    Duration::from_secs(20),
                )
                .await?;
            let pid = child.id();
            let mut clients = Vec::new();
            for _ in 0..n {
                // The users are the load generator, not what is measured: their microphones
                // encode at the cheapest complexity, and on a machine this loaded the oracle's
                // bot may take longer than usual to join each new user's DM.
                clients.push(
                    dep.new_user_with(|c| {
                        c.opus_complexity = Some(0);
                        c.bot_join_timeout = Duration::from_secs(90);
                    })
                    .await?,
                );
            }
            // Calls are set up a few at a time (the machine has two cores), each talks until
            // told to stop, and the agent is measured only once every call is up.
            let setup = Arc::new(tokio::sync::Semaphore::new(4));
            let (up_tx, mut up_rx) = tokio::sync::mpsc::channel::<Result<(), String>>(n.max(1));
            let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
            let received = Arc::new(std::sync::atomic::AtomicU64::new(0));
            let mut tasks = Vec::new();
            for c in clients {
                let (setup, up_tx, mut stop_rx) = (setup.clone(), up_tx.clone(), stop_rx.clone());
                let received = received.clone();
                tasks.push(tokio::spawn(async move {
                    let permit = setup.acquire_owned().await?;
                    let mut call = match c.call_oracle(CallType::Audio).await {
                        Ok(call) => call,
                        Err(e) => {
                            let _ = up_tx.send(Err(format!("call_oracle: {e}"))).await;
                            return Err(e.into());
                        }
                    };
                    let mic = call.microphone();
                    let talker = tokio::spawn(async move {
                        // Ten seconds of speech, over and over.
                        let speech = oracle_calls_lab::speech::synthesize(10.0, 5);
                        loop {
                            if mic.play(&speech).await.is_err() {
                                return;
                            }
                        }
                    });
                    let mut frames = 0u64;
                    let mut permit = Some(permit);
                    // A call that never hears its echo must not hold a setup slot forever.
                    let give_up = tokio::time::sleep(SETUP_LIMIT);
                    tokio::pin!(give_up);
                    loop {
                        tokio::select! {
                            ev = call.next_event() => match ev {
                                Some(CallEvent::OracleAudio { pcm }) => {
                                    frames += 1;
                                    received.fetch_add(pcm.len() as u64, std::sync::atomic::Ordering::Relaxed);
                                    if permit.take().is_some() {
                                        let _ = up_tx.send(Ok(())).await;
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
                                    "call {} heard no echo within {SETUP_LIMIT:?}; timeline {:?}",
                                    call.id(),
                                    call.timeline()
                                ))).await;
                            }
                            r = stop_rx.changed() => {
                                if r.is_err() || *stop_rx.borrow() { break; }
                            }
                        }
                    }
                    talker.abort();
                    call.end().await?;
                    Ok::<u64, anyhow::Error>(frames)
                }));
            }
            drop(up_tx);
            let mut up = 0;
            let mut failed = Vec::new();
            let waited = Instant::now();
            while up + failed.len() < n {
                match up_rx.recv().await {
                    Some(Ok(())) => {
                        up += 1;
                        if up % 10 == 0 {
                            eprintln!("  {up} of {n} calls up after {:.1} s", waited.elapsed().as_secs_f64());
                        }
                    }
                    Some(Err(e)) => {
                        eprintln!("  not up: {e}");
                        failed.push(e);
                    }
                    None => break,
                }
            }
            if up < n {
                let _ = stop_tx.send(true);
                let _ = child.kill();
                let _ = child.wait();
                bail!(
                    "only {up} of {n} calls came up within {:.0} s ({} failed; agent log in {})",
                    waited.elapsed().as_secs_f64(),
                    failed.len(),
                    dir.join(format!("n{n}")).display()
                );
            }
            eprintln!("  {n} calls up after {:.1} s; measuring {seconds} s", waited.elapsed().as_secs_f64());
            let before = received.load(std::sync::atomic::Ordering::Relaxed);
            let (c0, _) = proc_usage(pid)?;
            let t = Instant::now();
            tokio::time::sleep(Duration::from_secs(seconds)).await;
            let (c1, rss) = proc_usage(pid)?;
            let elapsed = t.elapsed().as_secs_f64();
            let cores = (c1 - c0) / elapsed;
            let in_window = received.load(std::sync::atomic::Ordering::Relaxed) - before;
            let _ = stop_tx.send(true);
            let mut frames = 0;
            for t in tasks {
                frames += t.await??;
            }
            // 1.0 is every sample of the echo arriving in real time.
            let per_call = in_window as f64 / 48_000.0 / elapsed / n.max(1) as f64;
            println!(
                "{n:>6} {cores:>14.3} {:>14.4} {:>14.1}   (echo at the users: {per_call:.2} s of audio per second per call; {frames} frames in all)",
                cores / n.max(1) as f64,
                rss as f64 / 1024.0
            );
            let _ = child.kill();
            let _ = child.wait();
            dep.stop().await;
        }
        Ok(())
    })
}

//! `oracle-calls bench setup`: how long a call takes to set up, phase by phase, on the local
//! stack, and what the agent process costs at 1, 10 and 50 concurrent calls.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail};
use oracle_calls::local::{DeployOptions, Deployment, Stack};
use oracle_calls_agent::CallReport;
use oracle_calls_client::{Call, CallEvent, OracleClient, Phase};
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
    let tone = oracle_calls_rtc::sine_tone(300.0, 6000.0, 0, 48_000 * 25);
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

/// `bench setup`.
pub fn setup(calls: usize, concurrency: usize, dir: PathBuf) -> anyhow::Result<()> {
    let rt = tokio::runtime::Runtime::new()?;
    rt.block_on(async move {
        let stack = Stack::running()?;
        let mut opts = DeployOptions::new(&dir);
        opts.max_calls = concurrency.max(1) * 2;
        let dep = Arc::new(Deployment::start(stack, opts).await?);
        let mut clients = Vec::new();
        for _ in 0..concurrency.max(1) {
            let c = dep.new_user().await?;
            // Warm-up: the first call of a user creates its DM room with the bot (once per
            // user and oracle); measured calls reuse it, as a returning user's would.
            let (_c, _, _) = one_call(&c).await?;
            let _ = dep.agent.as_ref().context("agent")?.next_report().await;
            clients.push(c);
        }
        let samples = Arc::new(Mutex::new(Vec::<Sample>::new()));
        let reports = Arc::new(Mutex::new(BTreeMap::<String, CallReport>::new()));
        let per_worker = calls.div_ceil(concurrency.max(1));
        eprintln!(
            "{calls} calls, concurrency {concurrency}, {} users",
            clients.len()
        );
        let mut tasks = Vec::new();
        for client in clients {
            let samples = samples.clone();
            let reports = reports.clone();
            let dep = dep.clone();
            tasks.push(tokio::spawn(async move {
                for _ in 0..per_worker {
                    let (call, t0, first) = one_call(&client).await?;
                    // The agent's report for this call (reports may arrive out of order).
                    let id = call.id().to_string();
                    let r = loop {
                        if let Some(r) = reports.lock().await.remove(&id) {
                            break r;
                        }
                        let r = tokio::time::timeout(
                            Duration::from_secs(15),
                            dep.agent.as_ref().context("agent")?.next_report(),
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
                            break r;
                        }
                        reports.lock().await.insert(rid, r);
                    };
                    let s = sample(&call, t0, first, &r);
                    let mut all = samples.lock().await;
                    all.push(s);
                    eprint!("\r  {} calls done", all.len());
                }
                Ok::<_, anyhow::Error>(())
            }));
        }
        for t in tasks {
            t.await??;
        }
        eprintln!();
        let all = samples.lock().await.clone();
        println!(
            "bench setup: {} calls, concurrency {concurrency} (ms)",
            all.len()
        );
        println!("{:<30} {:>8} {:>8} {:>8}", "phase", "p50", "p95", "max");
        for p in PHASES {
            let mut v: Vec<f64> = all
                .iter()
                .filter_map(|s| s.get(p).copied())
                .filter(|x| x.is_finite())
                .collect();
            let (a, b, c) = (pct(&mut v, 0.5), pct(&mut v, 0.95), pct(&mut v, 1.0));
            println!("{p:<30} {a:>8.1} {b:>8.1} {c:>8.1}");
        }
        match Arc::try_unwrap(dep) {
            Ok(d) => d.stop().await,
            Err(_) => bail!("deployment still shared"),
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
                        let speech = oracle_calls::speech::synthesize(10.0, 5);
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

//! `oracle-lab bench direct`: person-to-person call setup on the local stack (issue 15), for
//! returning users (the DM exists, both clients synced and running), host candidates or
//! relay-only through the stack's coturn; and what a running call costs the client process.
//!
//! Both people are matrix-sdk clients in this process, each with its own store and its own
//! `DirectCalls`. Per call: alice places it, bob answers as soon as it rings, both send a
//! tone every 20 ms; measured are place → the first far-end audio at the callee, and place
//! → the first far-end audio back at the caller. Then one call runs for `--seconds` while
//! this process's CPU time and RSS are read from /proc/self, against a window of the same
//! length with both clients idle (syncing, no call).

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail};
use matrix_sdk::Client;
use matrix_sdk::config::SyncSettings;
use oracle_calls_client::{
    DirectCall, DirectCallEvent, DirectCalls, DirectConfig, IcePolicy, PeopleTrust,
};
use oracle_calls_lab::local::{Stack, unique_hex};
use oracle_calls_media::{AUDIO_FRAME_SAMPLES, sine_tone};

/// What `bench direct` is told.
#[derive(Debug)]
pub struct Options {
    /// Calls measured (after one warm-up call).
    pub calls: usize,
    /// Relay-only (TURN) instead of host candidates.
    pub relay: bool,
    /// Seconds of the call (and of the idle window) measured for CPU and RSS.
    pub seconds: u64,
    /// Working directory (the clients' stores).
    pub dir: PathBuf,
}

/// Runs the benchmark and prints its table.
///
/// # Errors
/// The stack is not up, a login or a call fails.
pub fn run(o: Options) -> anyhow::Result<()> {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    rt.block_on(measure(o))
}

struct Person {
    client: Client,
    dir: PathBuf,
}

async fn person(stack: &Stack, dir: &Path, prefix: &str) -> anyhow::Result<Person> {
    let name = format!("{prefix}-{}", unique_hex(4));
    let (_, password) = stack.user(&name)?;
    let dir = dir.join(&name);
    std::fs::create_dir_all(&dir)?;
    let client = Client::builder()
        .homeserver_url(stack.get("MATRIX_URL")?)
        .sqlite_store(dir.join("matrix"), None)
        .build()
        .await?;
    client
        .matrix_auth()
        .login_username(&name, &password)
        .send()
        .await
        .with_context(|| format!("login of {name}"))?;
    client
        .sync_once(SyncSettings::default().timeout(Duration::ZERO))
        .await?;
    Ok(Person { client, dir })
}

async fn start(p: &Person, relay: bool) -> anyhow::Result<DirectCalls> {
    let config = DirectConfig {
        ice_policy: if relay {
            IcePolicy::RelayOnly
        } else {
            IcePolicy::All
        },
        auto_join_direct_invites: true,
        ..DirectConfig::default()
    };
    Ok(DirectCalls::start(
        &p.client,
        PeopleTrust::open(p.dir.join("pins.json")),
        config,
    )
    .await?)
}

/// When a side first heard the peer, and when its media connected.
#[derive(Default)]
struct Heard {
    audio: Option<Instant>,
    connected: Option<Instant>,
}

/// Sends a tone on `call` every 20 ms until `until`.
async fn talk(call: &mut DirectCall, hz: f64, until: Instant) -> anyhow::Result<Heard> {
    let mut tick = tokio::time::interval(Duration::from_millis(20));
    let mut sent = 0u64;
    let mut heard = Heard::default();
    while Instant::now() < until {
        tokio::select! {
            _ = tick.tick() => {
                let pcm = sine_tone(hz, 8000.0, sent, AUDIO_FRAME_SAMPLES);
                sent += AUDIO_FRAME_SAMPLES as u64;
                let _ = call.send_audio(pcm);
            }
            ev = call.next_event() => match ev {
                Some(DirectCallEvent::Audio(_)) => {
                    heard.audio.get_or_insert_with(Instant::now);
                }
                Some(DirectCallEvent::Connected { .. }) => {
                    heard.connected.get_or_insert_with(Instant::now);
                }
                Some(DirectCallEvent::Ended(r)) => bail!("the call ended: {r:?}"),
                None => bail!("the call closed"),
                Some(_) => {}
            },
        }
    }
    Ok(heard)
}

async fn hang_up(mut call: DirectCall, mut other: DirectCall) -> anyhow::Result<()> {
    call.hangup()?;
    for c in [&mut call, &mut other] {
        tokio::time::timeout(Duration::from_secs(10), async {
            while let Some(ev) = c.next_event().await {
                if matches!(ev, DirectCallEvent::Ended(_)) {
                    break;
                }
            }
        })
        .await
        .context("the call did not end")?;
    }
    Ok(())
}

/// Milliseconds from `place_call` to each step of one call.
struct Steps {
    ring: f64,
    connected: f64,
    callee_audio: f64,
    caller_audio: f64,
}

/// One call, talked through until both heard each other (and `hold` more).
async fn one_call(
    a: &DirectCalls,
    b: &DirectCalls,
    bob: &matrix_sdk::ruma::UserId,
    hold: Duration,
) -> anyhow::Result<Steps> {
    let t0 = Instant::now();
    let mut a_call = a.place_call(bob).await?;
    let ring = tokio::time::timeout(Duration::from_secs(20), b.next_incoming())
        .await
        .context("no ring within 20 s")?
        .context("the driver stopped")?;
    let rang = t0.elapsed();
    let mut b_call = ring.answer().await?;
    let until = Instant::now() + Duration::from_secs(5) + hold;
    let (fa, fb) = tokio::join!(
        talk(&mut a_call, 440.0, until),
        talk(&mut b_call, 880.0, until)
    );
    let (fa, fb) = (fa?, fb?);
    let ms = |t: Option<Instant>, what: &str| {
        t.map(|t| (t - t0).as_secs_f64() * 1000.0)
            .with_context(|| format!("no {what}"))
    };
    let steps = Steps {
        ring: rang.as_secs_f64() * 1000.0,
        connected: ms(fa.connected, "connection at the caller")?,
        callee_audio: ms(fb.audio, "audio at the callee")?,
        caller_audio: ms(fa.audio, "audio at the caller")?,
    };
    hang_up(a_call, b_call).await?;
    Ok(steps)
}

/// This process's CPU seconds (user + system) and current RSS (KiB).
fn usage() -> anyhow::Result<(f64, u64)> {
    let stat = std::fs::read_to_string("/proc/self/stat")?;
    let rest = stat.rsplit_once(") ").map(|x| x.1).context("stat format")?;
    let f: Vec<&str> = rest.split_whitespace().collect();
    let utime: f64 = f.get(11).context("utime")?.parse()?;
    let stime: f64 = f.get(12).context("stime")?.parse()?;
    let status = std::fs::read_to_string("/proc/self/status")?;
    let rss = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
        .unwrap_or(0);
    Ok(((utime + stime) / 100.0, rss))
}

fn pct(v: &mut [f64], p: f64) -> f64 {
    v.sort_by(f64::total_cmp);
    let i = ((v.len() as f64 - 1.0) * p).round() as usize;
    v.get(i).copied().unwrap_or(f64::NAN)
}

async fn measure(o: Options) -> anyhow::Result<()> {
    let stack = Stack::running()?;
    std::fs::create_dir_all(&o.dir)?;
    let alice = person(&stack, &o.dir, "alice-bench").await?;
    let bob = person(&stack, &o.dir, "bob-bench").await?;
    let bob_id = bob.client.user_id().context("bob's id")?.to_owned();
    let a = start(&alice, o.relay).await?;
    let b = start(&bob, o.relay).await?;
    let mode = if o.relay { "relay-only" } else { "host" };
    // Warm-up: creates the DM and the pins (returning users from then on).
    one_call(&a, &b, &bob_id, Duration::ZERO).await?;
    let (mut rang, mut connected, mut callee, mut caller) =
        (Vec::new(), Vec::new(), Vec::new(), Vec::new());
    for i in 0..o.calls {
        let s = one_call(&a, &b, &bob_id, Duration::ZERO).await?;
        rang.push(s.ring);
        connected.push(s.connected);
        callee.push(s.callee_audio);
        caller.push(s.caller_audio);
        eprint!("\r  {} of {} calls ({mode})", i + 1, o.calls);
    }
    eprintln!();
    // Cost of a running call: an idle window, then a call of the same length.
    let window = Duration::from_secs(o.seconds);
    let (cpu0, rss_idle) = usage()?;
    tokio::time::sleep(window).await;
    let (cpu1, _) = usage()?;
    let mut a_call = a.place_call(&bob_id).await?;
    let ring = tokio::time::timeout(Duration::from_secs(20), b.next_incoming())
        .await
        .context("no ring")?
        .context("stopped")?;
    let mut b_call = ring.answer().await?;
    let settle = Instant::now() + Duration::from_secs(2);
    let _ = tokio::join!(
        talk(&mut a_call, 440.0, settle),
        talk(&mut b_call, 880.0, settle)
    );
    let (cpu2, _) = usage()?;
    let until = Instant::now() + window;
    let ((), (), rss_call) = {
        let sample = async {
            tokio::time::sleep(window / 2).await;
            usage().map(|u| u.1).unwrap_or(0)
        };
        let (ra, rb, rss) = tokio::join!(
            talk(&mut a_call, 440.0, until),
            talk(&mut b_call, 880.0, until),
            sample
        );
        ra?;
        rb?;
        ((), (), rss)
    };
    let (cpu3, _) = usage()?;
    hang_up(a_call, b_call).await?;
    a.stop();
    b.stop();
    let idle = cpu1 - cpu0;
    let busy = cpu3 - cpu2;
    let per_end = (busy - idle) / 2.0 / window.as_secs_f64();
    println!(
        "bench direct: {} calls, {mode} candidates, returning users (ms)",
        callee.len()
    );
    println!("{:<44} {:>8} {:>8}", "", "p50", "p95");
    for (name, v) in [
        ("place → rings at the callee", &mut rang),
        ("place → media connected at the caller", &mut connected),
        ("place → first far-end audio at the callee", &mut callee),
        ("place → first far-end audio at the caller", &mut caller),
    ] {
        println!("{name:<44} {:>8.0} {:>8.0}", pct(v, 0.5), pct(v, 0.95));
    }
    println!(
        "one call running {} s, both ends in this process: CPU {:.3} cores (idle {:.3}), \
         per end {:.1} % of a core; RSS {:.1} MiB (idle {:.1} MiB), per end +{:.1} MiB",
        o.seconds,
        busy / window.as_secs_f64(),
        idle / window.as_secs_f64(),
        per_end * 100.0,
        rss_call as f64 / 1024.0,
        rss_idle as f64 / 1024.0,
        (rss_call as f64 - rss_idle as f64) / 2.0 / 1024.0
    );
    Ok(())
}

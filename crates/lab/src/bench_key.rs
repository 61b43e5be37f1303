//! `oracle-lab bench key`: throughput and latency of `GET /calls/{callId}/key` (what every
//! agent job asks first) on SQLite and PostgreSQL, at several client counts, driven by `wrk`
//! from another process. The reference, measured in the same run against the same server, is
//! `/.well-known/oracle-calls`: the same HTTP stack with no store, auth or audit behind it.

use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{Context as _, bail};
use oracle_calls_lab::local::Stack;
use oracle_calls_proto::{
    CallId, CallStatus, CallType, Did, EventId, KeyDerivation, KeyEnvelope, OraclesCallContent,
    RoomName, SessionId,
};
use oracle_calls_server::store::Store;
use oracle_calls_server::{AppState, Config, Secrets};

/// One wrk run's numbers.
#[derive(Clone, Debug)]
struct Run {
    rps: f64,
    p50_ms: f64,
    p99_ms: f64,
    errors: u64,
}

/// The `[limits]` of one measured server: `Off` turns the rate limits that one key from one
/// address would hit off (their middleware still runs and returns at once); `On` keeps them
/// on with rates no run reaches, so every request takes its tokens (a mutex, a hash lookup
/// and a bounded-cache insert per limit) and none is refused.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum Limits {
    /// The per-address and per-agent-key limits off.
    Off,
    /// Both on, at rates no run reaches.
    On,
    /// As `On`, with the agent key's bucket also shared through the database
    /// (`limits.cluster_wide`): one more statement per request on PostgreSQL, every request
    /// taking from the same row (one key); the same as `On` on SQLite.
    Shared,
}

impl Limits {
    fn toml(self) -> &'static str {
        match self {
            Self::Off => {
                "per_address = { per_sec = 0.0, burst = 1 }\n\
                 per_agent_key = { per_sec = 0.0, burst = 1 }\n"
            }
            Self::On => {
                "per_address = { per_sec = 1000000000.0, burst = 4000000000 }\n\
                 per_agent_key = { per_sec = 1000000000.0, burst = 4000000000 }\n"
            }
            Self::Shared => {
                "per_address = { per_sec = 1000000000.0, burst = 4000000000 }\n\
                 per_agent_key = { per_sec = 1000000000.0, burst = 4000000000 }\n\
                 cluster_wide = [\"per_user\", \"per_agent_key\"]\n"
            }
        }
    }

    fn name(self) -> &'static str {
        match self {
            Self::Off => "off",
            Self::On => "on",
            Self::Shared => "shared",
        }
    }
}

pub fn run(
    dbs: Vec<String>,
    clients: Vec<usize>,
    limits: Vec<Limits>,
    seconds: u64,
    dir: PathBuf,
) -> anyhow::Result<()> {
    if Command::new("wrk").arg("--version").output().is_err() {
        bail!("wrk is not installed (Debian: apt-get install wrk)");
    }
    std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("starting the async runtime")?;
    let mut report = String::new();
    let _ = writeln!(
        report,
        "| store | limits | clients | key req/s | key p50 ms | key p99 ms | reference req/s | reference p99 ms | key/reference |\n|---|---|---|---|---|---|---|---|---|"
    );
    // (store, clients) → the key's req/s per limits setting, for the on/off ratios.
    let mut by_setting: Vec<(String, usize, Limits, f64)> = Vec::new();
    for db in &dbs {
        let url = match db.as_str() {
            "sqlite" => format!(
                "sqlite://{}?mode=rwc",
                dir.join(format!("bench-{}.sqlite3", std::process::id()))
                    .display()
            ),
            "postgres" => {
                let stack = Stack::running().context("PostgreSQL comes from the stack")?;
                stack.get("DATABASE_URL")?.to_owned()
            }
            other => bail!("unknown store `{other}` (sqlite or postgres)"),
        };
        for &lim in &limits {
            let (base, script) = rt.block_on(start_server(&url, &dir, lim))?;
            let tag = lim.name();
            eprintln!("[{db}, limits {tag}] server on {base}");
            for &c in &clients {
                let key = wrk(&format!("{base}{}", script.1), &script.0, c, seconds)?;
                let reference = wrk(
                    &format!("{base}/.well-known/oracle-calls"),
                    &script.0,
                    c,
                    seconds,
                )?;
                eprintln!(
                    "[{db}, limits {tag}] {c:>2} clients: key {:.0} req/s p50 {:.2} ms p99 {:.2} ms ({} errors) | reference {:.0} req/s p99 {:.2} ms",
                    key.rps, key.p50_ms, key.p99_ms, key.errors, reference.rps, reference.p99_ms
                );
                if key.errors > 0 {
                    bail!(
                        "{} key requests failed: the benchmark is not measuring answers",
                        key.errors
                    );
                }
                by_setting.push((db.clone(), c, lim, key.rps));
                let _ = writeln!(
                    report,
                    "| {db} | {tag} | {c} | {:.0} | {:.2} | {:.2} | {:.0} | {:.2} | {:.2} |",
                    key.rps,
                    key.p50_ms,
                    key.p99_ms,
                    reference.rps,
                    reference.p99_ms,
                    key.rps / reference.rps
                );
            }
            let _ = std::fs::remove_file(&script.0);
        }
    }
    // Each setting against the one below it: on / off, shared / on.
    for (db, c, lim, rps) in &by_setting {
        let (base, what) = match lim {
            Limits::Off => continue,
            Limits::On => (Limits::Off, "on / off"),
            Limits::Shared => (Limits::On, "shared / on"),
        };
        if let Some((_, _, _, below)) = by_setting
            .iter()
            .find(|(d, k, l, _)| d == db && k == c && *l == base)
        {
            let _ = writeln!(
                report,
                "\n{db}, {c} clients: key req/s with the limits {what} = {:.3}",
                rps / below
            );
        }
    }
    println!("{report}");
    std::fs::write(dir.join("key.md"), &report)?;
    Ok(())
}

/// Starts a server without Matrix on `url`'s store with one active call and one agent API
/// key. Returns its base URL and (wrk script holding the key, the call's key path).
async fn start_server(
    url: &str,
    dir: &Path,
    limits: Limits,
) -> anyhow::Result<(String, (PathBuf, String))> {
    let oracle = Did::parse(&format!("did:ixo:bench{}", std::process::id()))?;
    let toml = format!(
        r#"
        data_dir = "{dir}"
        database_url = "{url}"
        [oracle]
        did = "{oracle}"
        agent_name = "bench"
        keys = [{{ keyId = "00112233445566778899aabbccddeeff", scheme = "hpke-p256", publicKey = "BPk" }}]
        [matrix]
        homeserver_url = "http://127.0.0.1:9"
        server_name = "localhost"
        user_id = "@bench:localhost"
        [livekit]
        url = "ws://127.0.0.1:9"
        http_url = "http://127.0.0.1:9"
        api_key = "bench"
        [limits]
        # One key from one address at full speed is the point here: the limits that would
        # stop it are off, or on at rates it never reaches (`Limits`).
        {limits}"#,
        dir = dir.display(),
        limits = limits.toml(),
    );
    let config = Config::from_toml(&toml)?;
    let mut pepper = [0u8; 16];
    rand::fill(&mut pepper);
    let pepper: String = pepper.iter().map(|b| format!("{b:02x}")).collect();
    let secrets = Secrets::from_env(|k| match k {
        "ORACLE_CALLS_LIVEKIT_API_SECRET" => Some("bench-secret-not-used-for-anything".into()),
        "ORACLE_CALLS_API_KEY_PEPPER" => Some(pepper.clone()),
        _ => None,
    })?;
    let store = Store::connect(url).await?;
    let now = oracle_calls_server::now();
    let mut room = [0u8; 16];
    rand::fill(&mut room);
    let room = RoomName::from_random(room);
    let mut ev = [0u8; 8];
    rand::fill(&mut ev);
    let ev: String = ev.iter().map(|b| format!("{b:02x}")).collect();
    let call_id = CallId::new(EventId::parse(&format!("$bench{ev}"))?, room.clone());
    let content = OraclesCallContent {
        call_id: None,
        call_type: CallType::Audio,
        call_status: CallStatus::Pending,
        call_started_at: now,
        call_ended_at: None,
        encryption_key: KeyEnvelope::parse("v1.hpke-p256.QUJD")?,
        session_id: SessionId::parse("bench")?,
        room_id: room,
        user_did: Did::parse("did:ixo:benchuser")?,
        oracle_did: oracle.clone(),
        key_derivation: KeyDerivation::Hkdf,
    };
    store
        .insert_call(
            &call_id,
            "!bench:localhost",
            "@did-ixo-benchuser:localhost",
            &content,
            now.unix_millis(),
        )
        .await?;
    store
        .set_status(
            &call_id,
            CallStatus::Pending,
            CallStatus::Active,
            None,
            now.unix_millis(),
        )
        .await?;
    let key = oracle_calls_server::apikey::create(
        &store,
        &secrets.api_key_pepper,
        oracle,
        "bench",
        now.unix_millis(),
    )
    .await?;
    let state = AppState::new(config, secrets, store, None)?;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let base = format!("http://{}", listener.local_addr()?);
    tokio::spawn(async move {
        let _ = oracle_calls_server::serve_on(listener, state, std::future::pending()).await;
    });
    // The key goes to wrk in a 0600 script file, never on its command line.
    let script = dir.join(format!("wrk-{}.lua", std::process::id()));
    let mut opts = std::fs::OpenOptions::new();
    opts.write(true).create(true).truncate(true);
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::mode(&mut opts, 0o600);
    let mut f = opts.open(&script)?;
    std::io::Write::write_all(
        &mut f,
        format!(
            "wrk.headers[\"Authorization\"] = \"Bearer {}\"\n",
            key.key.dangerous_expose()
        )
        .as_bytes(),
    )?;
    Ok((
        base,
        (script, format!("/calls/{}/key", call_id.to_path_segment())),
    ))
}

fn wrk(url: &str, script: &Path, clients: usize, seconds: u64) -> anyhow::Result<Run> {
    let threads = clients.clamp(1, 2);
    let out = Command::new("wrk")
        .args([
            "-t",
            &threads.to_string(),
            "-c",
            &clients.to_string(),
            "-d",
            &format!("{seconds}s"),
            "--latency",
            "-s",
        ])
        .arg(script)
        .arg(url)
        .output()
        .context("running wrk")?;
    let text = String::from_utf8_lossy(&out.stdout).to_string();
    if !out.status.success() {
        bail!("wrk failed: {text}{}", String::from_utf8_lossy(&out.stderr));
    }
    parse_wrk(&text).with_context(|| format!("reading wrk's output:\n{text}"))
}

fn parse_wrk(text: &str) -> anyhow::Result<Run> {
    let field = |prefix: &str| -> Option<&str> {
        text.lines()
            .map(str::trim)
            .find_map(|l| l.strip_prefix(prefix))
            .map(str::trim)
    };
    let rps: f64 = field("Requests/sec:").context("no Requests/sec")?.parse()?;
    let p50 = duration_ms(field("50%").context("no 50% latency")?)?;
    let p99 = duration_ms(field("99%").context("no 99% latency")?)?;
    let errors = field("Non-2xx or 3xx responses:")
        .map(str::parse::<u64>)
        .transpose()?
        .unwrap_or(0)
        + field("Socket errors:").map_or(0, |s| {
            s.split(',')
                .filter_map(|p| p.split_whitespace().last()?.parse::<u64>().ok())
                .sum()
        });
    Ok(Run {
        rps,
        p50_ms: p50,
        p99_ms: p99,
        errors,
    })
}

/// wrk's `123.45us`, `1.23ms`, `1.02s`.
fn duration_ms(s: &str) -> anyhow::Result<f64> {
    let (num, unit) = s
        .find(|c: char| c.is_ascii_alphabetic())
        .map(|i| s.split_at(i))
        .context("no unit")?;
    let v: f64 = num.parse()?;
    Ok(match unit {
        "us" => v / 1000.0,
        "ms" => v,
        "s" => v * 1000.0,
        "m" => v * 60_000.0,
        other => bail!("unknown unit {other}"),
    })
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn wrk_output_is_read() {
        let text = "Running 2s test @ http://127.0.0.1:1/x\n  2 threads and 16 connections\n  Latency Distribution\n     50%  612.00us\n     75%    1.10ms\n     90%    2.00ms\n     99%    4.51ms\n  20000 requests in 2.00s, 3.00MB read\n  Non-2xx or 3xx responses: 3\nRequests/sec:  10000.50\nTransfer/sec:      1.50MB\n";
        let r = parse_wrk(text).unwrap();
        assert!((r.rps - 10000.5).abs() < 1e-9);
        assert!((r.p50_ms - 0.612).abs() < 1e-9);
        assert!((r.p99_ms - 4.51).abs() < 1e-9);
        assert_eq!(r.errors, 3);
        assert!(parse_wrk("garbage").is_err());
        assert!(duration_ms("3.5xs").is_err());
    }
}

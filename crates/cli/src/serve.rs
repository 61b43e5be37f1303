//! `oracle-calls serve`: the server of DESIGN.md §3, configured by a TOML file and the
//! environment (secrets only from the environment or files named there).

use std::path::Path;

use anyhow::Context as _;
use oracle_calls_server::{Config, Secrets};

/// Reads the config file and the `ORACLE_CALLS_*` environment.
pub fn load(config: &Path) -> anyhow::Result<(Config, Secrets)> {
    let text =
        std::fs::read_to_string(config).with_context(|| format!("reading {}", config.display()))?;
    let mut cfg = Config::from_toml(&text).with_context(|| format!("in {}", config.display()))?;
    cfg.apply_env(|k| std::env::var(k).ok())
        .context("applying ORACLE_CALLS_* overrides")?;
    let secrets = Secrets::from_env(|k| std::env::var(k).ok()).context("reading secrets")?;
    Ok((cfg, secrets))
}

pub fn run(config: &Path, reindex: bool) -> anyhow::Result<()> {
    let (cfg, secrets) = load(config)?;
    let rt = tokio::runtime::Runtime::new().context("starting the async runtime")?;
    rt.block_on(async move {
        if !reindex {
            return oracle_calls_server::serve(cfg, secrets, shutdown_signal())
                .await
                .context("serving");
        }
        let listener = tokio::net::TcpListener::bind(cfg.listen)
            .await
            .with_context(|| format!("binding {}", cfg.listen))?;
        let state = oracle_calls_server::build_state(cfg, secrets)
            .await
            .context("starting")?;
        eprintln!("rebuilding the call store from Matrix ...");
        let r = oracle_calls_server::reindex(&state)
            .await
            .context("rebuilding the store from Matrix")?;
        eprintln!(
            "rebuilt: {} rooms, {} events, {} call events: {} added, {} moved forward, {} unchanged",
            r.rooms, r.events, r.call_events, r.added, r.advanced, r.unchanged
        );
        for (why, n) in &r.skipped {
            eprintln!("  skipped {n}: {why}");
        }
        for (room, why) in &r.failed_rooms {
            eprintln!("  room {room} could not be read and was left out: {why}");
        }
        oracle_calls_server::serve_on(listener, state, shutdown_signal())
            .await
            .context("serving")
    })
}

pub async fn shutdown_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! {
        () = ctrl_c => {},
        () = term => {},
    }
    tracing::info!("shutting down");
}

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

pub fn run(config: &Path) -> anyhow::Result<()> {
    let (cfg, secrets) = load(config)?;
    let rt = tokio::runtime::Runtime::new().context("starting the async runtime")?;
    rt.block_on(async move {
        oracle_calls_server::serve(cfg, secrets, shutdown_signal())
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

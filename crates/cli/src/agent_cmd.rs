//! `oracle-calls agent`: the oracle's live agent as a process.

use std::path::PathBuf;

use anyhow::Context as _;
use oracle_calls_agent::oracles::{Builtin, OracleKind};
use oracle_calls_agent::{Agent, AgentConfig, FileConfig};

pub fn run(config: PathBuf, oracle: OracleKind) -> anyhow::Result<()> {
    let rt = tokio::runtime::Runtime::new().context("starting the async runtime")?;
    rt.block_on(async move {
        let file = FileConfig::load(&config)?;
        let env = |k: &str| std::env::var(k).ok();
        let cfg = AgentConfig::resolve(&file, &env).await?;
        let base = config
            .parent()
            .filter(|p| !p.as_os_str().is_empty())
            .unwrap_or_else(|| std::path::Path::new("."));
        let oracle = Builtin::build(oracle, file.speech.as_ref(), base)
            .await
            .map_err(|e| anyhow::anyhow!("{} (in {})", e, config.display()))?;
        let mut agent = Agent::new(cfg, oracle).start().await?;
        tracing::info!(
            worker_id = agent.worker_id(),
            "agent running; Ctrl-C drains and stops"
        );
        tokio::select! {
            r = agent.wait() => return r.context("the agent stopped"),
            () = crate::serve::shutdown_signal() => {}
        }
        agent.shutdown().await.context("shutting down")
    })
}

//! `oracle-calls`: the product's one binary: the server, the agent, the user's call and list
//! commands, and key management. The demo, the benchmarks and local deployments are the lab's
//! (`oracle-lab`, crates/lab).

use clap::Parser as _;

fn main() -> anyhow::Result<()> {
    let cli = oracle_calls::cli::Cli::parse();
    oracle_calls::cli::init_logs(oracle_calls::cli::LOG_FILTER);
    oracle_calls::cli::run(cli.command)
}

//! `oracle-lab`: the lab around the product: the real call demo, the crypto walkthrough, the
//! benchmarks, the browser demo page, and multi-node deployments on the local stack. It also
//! runs every product command (`serve`, `agent`, `kt`, …: the same code as `oracle-calls`),
//! so the processes it starts need no second binary.

mod bench;
mod bench_direct;
mod bench_key;
mod bench_load;
mod bench_opus;
mod call_demo;
mod demo;

use std::path::PathBuf;

use anyhow::{Context as _, bail};
use clap::{Parser, Subcommand};
use oracle_calls::cli::parse_scheme;
use oracle_calls_crypto::KeyScheme;
use oracle_calls_lab::local::{Stack, stack_script};
use oracle_calls_lab::topology::{
    ECHO_HEARD, Topology, TopologyInfo, TopologyOptions, place_calls,
};

/// The oracle-calls lab: demos, benchmarks and deployments on the local stack.
#[derive(Parser, Debug)]
#[command(name = "oracle-lab", version, about)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

// Parsed once per process: the product's commands stay unboxed, as in `oracle-calls`.
#[allow(clippy::large_enum_variant)]
#[derive(Subcommand, Debug)]
enum Command {
    /// A real end-to-end encrypted call on the local stack: brings the stack up, provisions a
    /// user and an oracle, starts the server and an agent (echo, or the speaking oracle with
    /// the offline engines), calls, records the answer, hangs up, and verifies (each line a
    /// real check).
    Demo {
        /// The oracle: `echo` says back what it hears; `speech` answers a spoken question from
        /// the demo knowledge file, and the answer is transcribed back and checked (needs
        /// scripts/speech-setup).
        #[arg(long, value_enum, default_value_t = call_demo::DemoOracle::Echo)]
        oracle: call_demo::DemoOracle,
        /// Seconds of speech (echo).
        #[arg(long, default_value_t = 6)]
        seconds: u32,
        /// What the user asks the speaking oracle.
        #[arg(long, default_value = "What is the capital of France?")]
        question: String,
        /// Where WAV files and state go.
        #[arg(long, default_value = "demo-out")]
        out: PathBuf,
    },
    /// Walk through the call cryptography step by step: make an oracle key, wrap a fresh call
    /// key to it bound to a call context, open it, and encrypt and decrypt LiveKit frames.
    Walkthrough {
        /// Key scheme of the oracle key.
        #[arg(long, default_value = "hpke-p256", value_parser = parse_scheme)]
        scheme: KeyScheme,
    },
    /// Measure on the local stack (which must be up).
    Bench {
        #[command(subcommand)]
        what: BenchCmd,
    },
    /// The browser SDK's demo page on the local stack: starts an oracle (server + echo agent)
    /// that allows the page's origin, provisions a user (its password stays in the stack's
    /// file), and serves the built page under a strict CSP on 127.0.0.1 until Ctrl-C.
    Web {
        /// The built page (cd sdk/browser && npm run build).
        #[arg(long, default_value = "sdk/browser/demo/dist")]
        dir: PathBuf,
        /// Port on 127.0.0.1 (0: any free port).
        #[arg(long, default_value_t = 0)]
        port: u16,
    },
    /// A multi-node deployment of one oracle on the local stack, each group in its own
    /// processes: N LiveKit nodes (the stack's; it is brought up with that many when down), M
    /// servers on the stack's PostgreSQL, K agents. Prints where everything is and runs until
    /// Ctrl-C; `load` places calls against it from another process.
    Up {
        /// LiveKit nodes.
        #[arg(long, default_value_t = 2)]
        livekit_nodes: usize,
        /// Server processes.
        #[arg(long, default_value_t = 2)]
        servers: usize,
        /// Agent processes.
        #[arg(long, default_value_t = 2)]
        agents: usize,
        /// Calls one agent takes at once.
        #[arg(long, default_value_t = 16)]
        max_calls: usize,
        /// Working directory (must not exist yet).
        #[arg(long, default_value = "lab-out/topology")]
        dir: PathBuf,
    },
    /// Users calling a running `up` topology at once, each from its own `call` process, spread
    /// over its servers: each says synthetic speech and checks the echo it records.
    Load {
        /// The topology's directory (as given to `up`).
        #[arg(long, default_value = "lab-out/topology")]
        dir: PathBuf,
        /// Users (one call each).
        #[arg(long, default_value_t = 4)]
        users: usize,
        /// Seconds per call.
        #[arg(long, default_value_t = 6)]
        seconds: u64,
    },
    /// The product's commands (as `oracle-calls` runs them).
    #[command(flatten)]
    Product(oracle_calls::cli::Command),
}

#[derive(Subcommand, Debug)]
enum BenchCmd {
    /// Time from call_oracle() to the first decrypted oracle audio, split by phase, for
    /// returning users of two oracles on the same stack called in turn: a reference, and one
    /// that differs from it by `--compare`.
    Setup {
        /// Calls to measure.
        #[arg(long, default_value_t = 50)]
        calls: usize,
        /// Calls in flight at once (one user each).
        #[arg(long, default_value_t = 1)]
        concurrency: usize,
        /// What differs from the reference: `direct` (the server hands calls to the agent;
        /// reference: LiveKit's dispatch), `kt` (key transparency and one-time prekeys;
        /// reference: neither) or `hold` (the agent's first-frame hold; reference: none, both
        /// with direct dispatch).
        #[arg(long, value_enum, default_value_t = bench::Compare::Direct)]
        compare: bench::Compare,
        /// With `--compare hold`: the hold side's `first_frame_hold_ms`.
        #[arg(long, default_value_t = oracle_calls_agent::FileConfig::DEFAULT_FIRST_FRAME_HOLD_MS)]
        hold_ms: u64,
        /// Both sides' servers write the bot's `ended` edit at once after a user's hang-up
        /// (`matrix.leave_hangup_edit_to_user = false`) instead of leaving it to the user's
        /// edit: one more Matrix send per call, for runs that measure what that costs.
        #[arg(long)]
        bot_hangup_edit: bool,
        /// Working directory.
        #[arg(long, default_value = "bench-out/setup")]
        dir: PathBuf,
    },
    /// Time from callOracle() in the browser SDK's demo page (headless Chromium) to the first
    /// decrypted oracle audio, next to the Rust client's call_oracle(), in alternating blocks
    /// against one oracle; and the SDK's bundle sizes (gzip). Needs node, Chromium and the
    /// built page (cd sdk/browser && npm run build).
    Browser {
        /// Calls to measure per client.
        #[arg(long, default_value_t = 20)]
        calls: usize,
        /// Calls per block; the clients alternate block by block.
        #[arg(long, default_value_t = 5)]
        block: usize,
        /// Working directory.
        #[arg(long, default_value = "bench-out/browser")]
        dir: PathBuf,
        /// The built demo page.
        #[arg(long, default_value = "sdk/browser/demo/dist")]
        page: PathBuf,
        /// The built library.
        #[arg(long, default_value = "sdk/browser/dist")]
        library: PathBuf,
        /// The page driver.
        #[arg(long, default_value = "sdk/browser/test/e2e/driver.mjs")]
        driver: PathBuf,
        /// Place every other browser call without the early join and report both halves
        /// side by side.
        #[arg(long)]
        alternate_early_join: bool,
    },
    /// The speaking oracle's voice-to-voice latency per turn through the E2EE call (end of
    /// the user's question → first answer audio at the user), split by stage, with the
    /// offline default engines and with local OpenAI-compatible servers. Needs
    /// scripts/speech-setup --with-llm.
    Speech {
        /// Turns measured per engine set (after one warm-up turn).
        #[arg(long, default_value_t = 20)]
        turns: usize,
        /// Engine sets: offline, openai, livekit-agents (comma-separated).
        #[arg(long, default_value = "offline,openai", value_delimiter = ',')]
        engines: Vec<oracle_calls_lab::bench_speech::EngineSet>,
        /// Working directory.
        #[arg(long, default_value = "bench-out/speech")]
        dir: PathBuf,
        /// Also measure each agent as its own process at these numbers of concurrent calls
        /// (comma-separated): CPU and memory per call.
        #[arg(long, value_delimiter = ',')]
        concurrent: Vec<usize>,
    },
    /// CPU and peak RSS of an agent process serving N concurrent echo calls.
    Agent {
        /// Comma-separated concurrency levels.
        #[arg(long, default_value = "1,10,50", value_delimiter = ',')]
        calls: Vec<usize>,
        /// Seconds measured per level.
        #[arg(long, default_value_t = 10)]
        seconds: u64,
        /// The agent's `opus_complexity` (default: libopus's).
        #[arg(long)]
        opus_complexity: Option<u8>,
        /// Working directory.
        #[arg(long, default_value = "bench-out/agent")]
        dir: PathBuf,
    },
    /// N concurrent echo calls with each component in its own process: CPU and memory per
    /// component (agent, server, each server of the stack, the users' load generator), echo
    /// frame loss at the users, and call setup under that load.
    Load {
        /// Comma-separated numbers of concurrent calls.
        #[arg(long, default_value = "5,10,20", value_delimiter = ',')]
        calls: Vec<usize>,
        /// Seconds measured per level.
        #[arg(long, default_value_t = 20)]
        seconds: u64,
        /// Calls placed one after the other under each load, for setup under load.
        #[arg(long, default_value_t = 5)]
        probes: usize,
        /// A name for the stack's topology, printed with the results.
        #[arg(long, default_value = "stack")]
        label: String,
        /// Working directory.
        #[arg(long, default_value = "bench-out/load")]
        dir: PathBuf,
    },
    /// Person-to-person call setup (place → first far-end audio at the callee and back at
    /// the caller) for returning users, p50/p95, and the CPU and RSS a running call costs the
    /// client process.
    Direct {
        /// Calls to measure (after one warm-up call).
        #[arg(long, default_value_t = 10)]
        calls: usize,
        /// Relay-only through the stack's TURN server instead of host candidates.
        #[arg(long)]
        relay: bool,
        /// Seconds of the call measured for CPU and RSS (and of the idle window before it).
        #[arg(long, default_value_t = 10)]
        seconds: u64,
        /// Working directory.
        #[arg(long, default_value = "bench-out/direct")]
        dir: PathBuf,
    },
    /// Encode time and fidelity of each Opus complexity on synthesized speech (the default
    /// complexity is the reference).
    Opus {
        /// Seconds of speech per round.
        #[arg(long, default_value_t = 20.0)]
        seconds: f64,
        /// Rounds (medians are reported).
        #[arg(long, default_value_t = 7)]
        rounds: usize,
    },
    /// Requests per second and p50/p99 of the agent's key endpoint (wrk as the load), with
    /// the server's static well-known document as the reference.
    Key {
        /// Stores to measure: sqlite, postgres (the stack's).
        #[arg(long, default_value = "sqlite,postgres", value_delimiter = ',')]
        db: Vec<String>,
        /// Comma-separated numbers of concurrent clients.
        #[arg(long, default_value = "1,16,64", value_delimiter = ',')]
        clients: Vec<usize>,
        /// The per-address and per-agent-key limits: `off`, `on` (at rates no run reaches,
        /// so each request pays for its tokens), `shared` (`on` with the key's bucket shared
        /// through the database, `limits.cluster_wide`), or several, to compare.
        #[arg(long, value_enum, default_value = "off", value_delimiter = ',')]
        limits: Vec<bench_key::Limits>,
        /// Seconds per measurement.
        #[arg(long, default_value_t = 10)]
        seconds: u64,
        /// Working directory.
        #[arg(long, default_value = "bench-out/key")]
        dir: PathBuf,
    },
}

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    // The demo and benchmarks print their own progress; logs there are for problems only
    // (the same two expected conditions are kept out as in the product's filter).
    let default_filter = match cli.command {
        Command::Product(_) => oracle_calls::cli::LOG_FILTER,
        _ => {
            "warn,matrix_sdk=error,matrix_sdk_crypto=error,matrix_sdk_base=error,\
             matrix_sdk::http_client=off,str0m::format::payload_params=error"
        }
    };
    oracle_calls::cli::init_logs(default_filter);
    match cli.command {
        Command::Demo {
            oracle,
            seconds,
            question,
            out,
        } => call_demo::run(call_demo::Options {
            seconds,
            out,
            oracle,
            question,
        }),
        Command::Walkthrough { scheme } => demo::run(scheme),
        Command::Bench { what } => match what {
            BenchCmd::Setup {
                calls,
                concurrency,
                compare,
                hold_ms,
                bot_hangup_edit,
                dir,
            } => bench::setup(calls, concurrency, compare, hold_ms, bot_hangup_edit, dir),
            BenchCmd::Load {
                calls,
                seconds,
                probes,
                label,
                dir,
            } => bench_load::run(bench_load::Options {
                levels: calls,
                seconds,
                probes,
                label,
                dir,
            }),
            BenchCmd::Agent {
                calls,
                seconds,
                opus_complexity,
                dir,
            } => bench::agent(calls, seconds, opus_complexity, dir),
            BenchCmd::Browser {
                calls,
                block,
                dir,
                page,
                library,
                driver,
                alternate_early_join,
            } => oracle_calls_lab::bench_browser::run(oracle_calls_lab::bench_browser::Options {
                calls,
                block,
                dir,
                page,
                library,
                driver,
                alternate_early_join,
            }),
            BenchCmd::Direct {
                calls,
                relay,
                seconds,
                dir,
            } => bench_direct::run(bench_direct::Options {
                calls,
                relay,
                seconds,
                dir,
            }),
            BenchCmd::Opus { seconds, rounds } => bench_opus::run(seconds, rounds),
            BenchCmd::Speech {
                turns,
                engines,
                dir,
                concurrent,
            } => oracle_calls_lab::bench_speech::run(oracle_calls_lab::bench_speech::Options {
                turns,
                engines,
                dir,
                concurrent,
            }),
            BenchCmd::Key {
                db,
                clients,
                limits,
                seconds,
                dir,
            } => bench_key::run(db, clients, limits, seconds, dir),
        },
        Command::Web { dir, port } => oracle_calls_lab::web::run_command(&dir, port),
        Command::Up {
            livekit_nodes,
            servers,
            agents,
            max_calls,
            dir,
        } => up(TopologyOptions {
            dir,
            livekit_nodes,
            servers,
            agents,
            max_calls,
            exe: std::env::current_exe().context("this program's path")?,
        }),
        Command::Load {
            dir,
            users,
            seconds,
        } => load(&dir, users, seconds),
        Command::Product(command) => oracle_calls::cli::run(command),
    }
}

fn up(opts: TopologyOptions) -> anyhow::Result<()> {
    if opts.dir.exists() {
        bail!(
            "{} exists: give `up` a new --dir (or remove the old one)",
            opts.dir.display()
        );
    }
    let rt = tokio::runtime::Runtime::new().context("starting the async runtime")?;
    rt.block_on(async move {
        let stack = match Stack::running() {
            Ok(stack) => stack,
            Err(_) => {
                let script = stack_script();
                let status = std::process::Command::new(&script)
                    .arg("up")
                    .env("STACK_LIVEKIT_NODES", opts.livekit_nodes.to_string())
                    .status()
                    .with_context(|| format!("running {} up", script.display()))?;
                if !status.success() {
                    bail!("`{} up` failed (see its output above)", script.display());
                }
                Stack::running()?
            }
        };
        eprintln!(
            "starting {} server(s) and {} agent(s) on {} LiveKit node(s) …",
            opts.servers, opts.agents, opts.livekit_nodes
        );
        let topology = Topology::start(stack, opts).await?;
        let info = &topology.info;
        println!("oracle      {}", info.oracle);
        println!("homeserver  {}", info.homeserver);
        for (i, n) in info.nodes.iter().enumerate() {
            println!("livekit {i}   {} (API {})", n.url, n.http_url);
        }
        for (i, s) in info.servers.iter().enumerate() {
            println!(
                "server {i}    {} (pid {}, LiveKit node {}, log {})",
                s.url,
                s.pid,
                s.node,
                s.log.display()
            );
        }
        for (j, a) in info.agents.iter().enumerate() {
            println!(
                "agent {j}     pid {} (server {}, LiveKit node {}, log {})",
                a.pid,
                a.server,
                a.node,
                a.log.display()
            );
        }
        println!(
            "calls:      oracle-lab load --dir {} --users 4",
            info.dir.display()
        );
        println!("running until Ctrl-C");
        tokio::signal::ctrl_c()
            .await
            .context("waiting for Ctrl-C")?;
        eprintln!("stopping");
        drop(topology);
        Ok(())
    })
}

fn load(dir: &std::path::Path, users: usize, seconds: u64) -> anyhow::Result<()> {
    let info = TopologyInfo::read(dir)?;
    let exe = std::env::current_exe().context("this program's path")?;
    let rt = tokio::runtime::Runtime::new().context("starting the async runtime")?;
    let calls = rt.block_on(async {
        let stack = Stack::running()?;
        let all: Vec<usize> = (0..info.servers.len()).collect();
        place_calls(&exe, &stack, &info, &all, users, seconds).await
    })?;
    let mut failed = 0;
    println!(
        "{:<20} {:>6} {:>6} {:>9}  call",
        "user", "server", "agent", "envelope"
    );
    for c in &calls {
        let agent = c.agent.map_or("-".to_owned(), |a| a.to_string());
        println!(
            "{:<20} {:>6} {:>6} {:>9.2}  {}",
            c.user, c.server, agent, c.envelope, c.call_id
        );
        if let Some(e) = &c.error {
            println!("  failed: {e}");
        }
        if c.error.is_some() || c.envelope <= ECHO_HEARD {
            failed += 1;
        }
    }
    if failed > 0 {
        bail!(
            "{failed} of {} calls failed or did not hear the echo",
            calls.len()
        );
    }
    println!("all {} calls heard the echo", calls.len());
    Ok(())
}

//! `oracle-calls`: the one binary: a real call demo, the server, the agent, the user's call
//! and list commands, and key management.

mod agent_cmd;
mod apikey;
mod bench;
mod bench_key;
mod bench_load;
mod bench_opus;
mod call_cmd;
mod call_demo;
mod demo;
mod kt_cmd;
mod serve;

use oracle_calls::keyfile;
use oracle_calls_agent::oracles::OracleKind;

use std::path::PathBuf;

use anyhow::Context as _;
use clap::{Parser, Subcommand};
use oracle_calls_crypto::KeyScheme;

/// End-to-end encrypted calls between people and AI oracles.
#[derive(Parser, Debug)]
#[command(name = "oracle-calls", version, about)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

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
    /// Generate an oracle key pair and write the private key as PKCS#8 PEM (mode 0600).
    Keygen {
        /// Key scheme.
        #[arg(long, default_value = "hpke-p256", value_parser = parse_scheme)]
        scheme: KeyScheme,
        /// Where to write the private key.
        #[arg(long)]
        out: PathBuf,
        /// Replace an existing file.
        #[arg(long)]
        force: bool,
    },
    /// Oracle key files: import an existing key.
    Key {
        #[command(subcommand)]
        action: KeyCmd,
    },
    /// Show the scheme, key id and public key of a private key file.
    KeyInfo {
        /// The PKCS#8 PEM private key file.
        #[arg(long)]
        key: PathBuf,
    },
    /// Run the oracle's server: call API, Matrix bot, LiveKit rooms. Secrets come from
    /// ORACLE_CALLS_LIVEKIT_API_SECRET, ORACLE_CALLS_API_KEY_PEPPER and
    /// ORACLE_CALLS_MATRIX_PASSWORD, or from the files named by the same variables + `_FILE`.
    Serve {
        /// The TOML config file.
        #[arg(long, env = "ORACLE_CALLS_CONFIG")]
        config: PathBuf,
        /// Before serving, rebuild the call store from the bot's Matrix rooms (after a lost or
        /// restored database; needs the bot's device store in data_dir/matrix).
        #[arg(long)]
        reindex: bool,
    },
    /// Run the oracle's live agent: registers with LiveKit, joins calls with the call key.
    /// Secrets: ORACLE_CALLS_AGENT_API_KEY and ORACLE_CALLS_LIVEKIT_API_SECRET (or `_FILE`).
    Agent {
        /// The agent's TOML config file.
        #[arg(long, env = "ORACLE_CALLS_AGENT_CONFIG")]
        config: PathBuf,
        /// The oracle to run: echo, tone, or speech (configured by the file's `[speech]`).
        #[arg(long, default_value = "echo")]
        oracle: OracleKind,
    },
    /// Call the oracle as a user: say a WAV file, record the answer.
    Call(call_cmd::CallArgs),
    /// List the user's calls.
    Calls(call_cmd::CallsArgs),
    /// Measure on the local stack (which must be up).
    Bench {
        #[command(subcommand)]
        what: BenchCmd,
    },
    /// Manage agent API keys in the server's store.
    Apikey {
        /// The server's TOML config file (for the store and the pepper).
        #[arg(long, env = "ORACLE_CALLS_CONFIG")]
        config: PathBuf,
        #[command(subcommand)]
        action: apikey::Action,
    },
    /// The oracle's prekey signing key (forward secrecy, docs/PROTOCOL.md §13).
    Prekey {
        #[command(subcommand)]
        action: PrekeyCmd,
    },
    /// Key transparency: the directory service, its keys, operator tokens, the auditor.
    Kt {
        #[command(subcommand)]
        action: kt_cmd::KtCmd,
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
}

#[derive(Subcommand, Debug)]
enum KeyCmd {
    /// Turn an existing ixo oracle's raw secp256k1 secret into the PKCS#8 PEM file the agent
    /// loads (scheme ecies-secp256k1; written 0600 like keygen). The secret is read from a
    /// file (32 raw bytes, or 64 hex characters) or from standard input, never from the
    /// command line.
    Import {
        /// The file holding the secret; `-` reads standard input.
        #[arg(long, value_name = "FILE")]
        secp256k1_file: PathBuf,
        /// Where to write the private key.
        #[arg(long)]
        out: PathBuf,
        /// Replace an existing file.
        #[arg(long)]
        force: bool,
    },
}

#[derive(Subcommand, Debug)]
enum PrekeyCmd {
    /// Generate the Ed25519 key that signs the oracle's prekeys (PKCS#8 PEM, mode 0600) and
    /// print its public half for the server's `[oracle] prekey_signing_key` and the oracle's
    /// key-transparency record. The agent that keeps prekeys stocked names the file in
    /// `[prekeys] signing_key_file`.
    Keygen {
        /// Where to write the private key.
        #[arg(long)]
        out: PathBuf,
        /// Replace an existing file.
        #[arg(long)]
        force: bool,
    },
    /// Print the public half of a prekey signing key file.
    Info {
        /// The PKCS#8 PEM file.
        #[arg(long)]
        key: PathBuf,
    },
}

#[derive(Subcommand, Debug)]
enum BenchCmd {
    /// Time from call_oracle() to the first decrypted oracle audio, split by phase, for
    /// returning users of two oracles on the same stack called in turn: the reference without
    /// forward secrecy and key transparency, and one with both.
    Setup {
        /// Calls to measure.
        #[arg(long, default_value_t = 50)]
        calls: usize,
        /// Calls in flight at once (one user each).
        #[arg(long, default_value_t = 1)]
        concurrency: usize,
        /// What differs from the reference (LiveKit's dispatch, no prekeys or key
        /// transparency): `direct` (the server hands calls to the agent) or `kt`.
        #[arg(long, value_enum, default_value_t = bench::Compare::Direct)]
        compare: bench::Compare,
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
        engines: Vec<oracle_calls::bench_speech::EngineSet>,
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
        /// Seconds per measurement.
        #[arg(long, default_value_t = 10)]
        seconds: u64,
        /// Working directory.
        #[arg(long, default_value = "bench-out/key")]
        dir: PathBuf,
    },
}

fn parse_scheme(s: &str) -> Result<KeyScheme, String> {
    s.parse().map_err(|_| {
        let names: Vec<&str> = KeyScheme::ALL.iter().map(|k| k.as_str()).collect();
        format!(
            "unknown scheme `{s}`; expected one of: {}",
            names.join(", ")
        )
    })
}

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    // The demo and benchmarks print their own progress; logs there are for problems only.
    // Two expected conditions are kept out of every command's default output: matrix-sdk's
    // HTTP client logs each 404 it gets as an ERROR (e.g. "Account data not found" when an
    // account has no such data yet, which the SDK then handles), and str0m warns for each RTP
    // payload-type change the SFU announces for RED, which LiveKit sends and E2EE calls do not
    // use (only that module of str0m is quietened). A failed request still reaches the caller
    // as an error, which the commands print.
    // `RUST_LOG` replaces the whole filter.
    let default_filter = match cli.command {
        Command::Demo { .. } | Command::Bench { .. } | Command::Web { .. } => {
            "warn,matrix_sdk=error,matrix_sdk_crypto=error,matrix_sdk_base=error,\
             matrix_sdk::http_client=off,str0m::format::payload_params=error"
        }
        _ => "info,matrix_sdk::http_client=off,str0m::format::payload_params=error",
    };
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(default_filter)),
        )
        .with_writer(std::io::stderr)
        .init();
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
        Command::Agent { config, oracle } => agent_cmd::run(config, oracle),
        Command::Call(a) => call_cmd::call(a),
        Command::Calls(a) => call_cmd::calls(a),
        Command::Bench { what } => match what {
            BenchCmd::Setup {
                calls,
                concurrency,
                compare,
                dir,
            } => bench::setup(calls, concurrency, compare, dir),
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
            } => oracle_calls::bench_browser::run(oracle_calls::bench_browser::Options {
                calls,
                block,
                dir,
                page,
                library,
                driver,
            }),
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
            BenchCmd::Opus { seconds, rounds } => bench_opus::run(seconds, rounds),
            BenchCmd::Speech {
                turns,
                engines,
                dir,
                concurrent,
            } => oracle_calls::bench_speech::run(oracle_calls::bench_speech::Options {
                turns,
                engines,
                dir,
                concurrent,
            }),
            BenchCmd::Key {
                db,
                clients,
                seconds,
                dir,
            } => bench_key::run(db, clients, seconds, dir),
        },
        Command::Keygen { scheme, out, force } => {
            let kp = oracle_calls_crypto::OracleKeyPair::generate(scheme, &mut rand::rng())
                .context("generating the key pair")?;
            keyfile::write_private_key(&out, &kp, force)?;
            println!("wrote {} private key to {}", scheme, out.display());
            print_public(&kp);
            Ok(())
        }
        Command::Key {
            action:
                KeyCmd::Import {
                    secp256k1_file,
                    out,
                    force,
                },
        } => {
            let source = keyfile::SecretSource::from_arg(&secp256k1_file);
            let kp = keyfile::import_secp256k1(&source)?;
            keyfile::write_private_key(&out, &kp, force)?;
            println!("wrote {} private key to {}", kp.scheme(), out.display());
            print_public(&kp);
            Ok(())
        }
        Command::KeyInfo { key } => {
            let kp = keyfile::read_private_key(&key)?;
            print_public(&kp);
            Ok(())
        }
        Command::Prekey {
            action: PrekeyCmd::Keygen { out, force },
        } => {
            let key = oracle_calls_crypto::PrekeySigningKey::generate(&mut rand::rng());
            keyfile::write_secret_file(&out, key.to_pkcs8_pem().as_bytes(), force)?;
            println!("wrote the prekey signing key to {}", out.display());
            print_prekey_public(&key);
            Ok(())
        }
        Command::Prekey {
            action: PrekeyCmd::Info { key },
        } => {
            let key = keyfile::read_prekey_signing_key(&key)?;
            print_prekey_public(&key);
            Ok(())
        }
        Command::Serve { config, reindex } => serve::run(&config, reindex),
        Command::Apikey { config, action } => apikey::run(&config, action),
        Command::Kt { action } => kt_cmd::run(action),
        Command::Web { dir, port } => oracle_calls::web::run_command(&dir, port),
    }
}

fn print_prekey_public(key: &oracle_calls_crypto::PrekeySigningKey) {
    let public = key.public_key();
    println!("prekey signing key: {public}");
    println!("server config ([oracle]):  prekey_signing_key = \"{public}\"");
}

fn print_public(kp: &oracle_calls_crypto::OracleKeyPair) {
    use base64::Engine as _;
    let pk = kp.public_key();
    println!("scheme:     {}", kp.scheme());
    println!("key id:     {}", kp.key_id());
    println!(
        "public key: {}",
        base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(pk.to_raw())
    );
}

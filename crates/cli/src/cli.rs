//! The product's commands: the server, the agent, the user's call and list commands, key
//! management and key transparency. `oracle-calls` (src/main.rs) runs them; the lab
//! (`oracle-lab`, crates/lab) runs the same commands for the processes it starts.

use crate::{agent_cmd, apikey, call_cmd, direct_cmd, keyfile, kt_cmd, serve};
use oracle_calls_agent::oracles::OracleKind;

use std::path::PathBuf;

use anyhow::Context as _;
use clap::{Parser, Subcommand};
use oracle_calls_crypto::KeyScheme;

/// End-to-end encrypted calls between people and AI oracles.
#[derive(Parser, Debug)]
#[command(name = "oracle-calls", version, about)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

/// The product's commands.
#[derive(Subcommand, Debug)]
pub enum Command {
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
    /// Call a person (`call @bob:example.org`: on the microphone and speaker, until either
    /// side hangs up), or, without a person, the oracle named by `--oracle` (say a WAV file,
    /// record the answer).
    Call(Box<call_cmd::CallArgs>),
    /// Wait for a person's call and answer it on the microphone and speaker (`--reject`
    /// rejects it).
    Answer(direct_cmd::AnswerArgs),
    /// List the user's calls.
    Calls(call_cmd::CallsArgs),
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
}

#[derive(Subcommand, Debug)]
pub enum KeyCmd {
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
pub enum PrekeyCmd {
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

/// Parses a key scheme name, listing the known ones when it is not one.
pub fn parse_scheme(s: &str) -> Result<KeyScheme, String> {
    s.parse().map_err(|_| {
        let names: Vec<&str> = KeyScheme::ALL.iter().map(|k| k.as_str()).collect();
        format!(
            "unknown scheme `{s}`; expected one of: {}",
            names.join(", ")
        )
    })
}

/// The default log filter of the product's commands (`RUST_LOG` replaces it). Two expected
/// conditions are kept out of the default output: matrix-sdk's HTTP client logs each 404 it
/// gets as an ERROR (e.g. "Account data not found" when an account has no such data yet, which
/// the SDK then handles), and str0m warns for each RTP payload-type change the SFU announces
/// for RED, which LiveKit sends and E2EE calls do not use (only that module of str0m is
/// quietened). A failed request still reaches the caller as an error, which the commands print.
pub const LOG_FILTER: &str = "info,matrix_sdk::http_client=off,str0m::format::payload_params=error";

/// Logs to standard error with `default_filter` unless `RUST_LOG` is set.
pub fn init_logs(default_filter: &str) {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(default_filter)),
        )
        .with_writer(std::io::stderr)
        .init();
}

/// Runs one product command.
pub fn run(command: Command) -> anyhow::Result<()> {
    match command {
        Command::Agent { config, oracle } => agent_cmd::run(config, oracle),
        Command::Call(a) => call_cmd::call(*a),
        Command::Answer(a) => direct_cmd::answer(a),
        Command::Calls(a) => call_cmd::calls(a),
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

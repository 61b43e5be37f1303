//! A whole oracle deployment on the local stack, in one process: the stack's servers (through
//! `scripts/stack`), a provisioned oracle (key pair, Matrix bot account, API key), the
//! oracle-calls server and an agent. `demo`, the end-to-end tests and `bench setup` use it.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use anyhow::{Context as _, bail};
use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use oracle_calls_agent::oracles::Builtin;
use oracle_calls_agent::{Agent, AgentConfig, AgentHandle, FileConfig, PrekeysSection};
use oracle_calls_client::{ClientConfig, Login, OracleClient};
use oracle_calls_crypto::{KeyScheme, OracleKeyPair, PrekeySigningKey};
use oracle_calls_proto::{Did, OracleKeyInfo};
use oracle_calls_rtc::token::ApiCredentials;
use oracle_calls_server::{AppState, Config, Secrets};
use tokio::net::TcpListener;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;
use zeroize::Zeroizing;

/// The stack script: `$ORACLE_CALLS_STACK_SCRIPT`, else `scripts/stack` in the current
/// directory or the nearest parent that has one (so it works from any crate directory of a
/// checkout), else the one in the source tree this binary was built from.
pub fn stack_script() -> PathBuf {
    if let Ok(p) = std::env::var("ORACLE_CALLS_STACK_SCRIPT") {
        return PathBuf::from(p);
    }
    if let Ok(cwd) = std::env::current_dir()
        && let Some(found) = cwd
            .ancestors()
            .map(|d| d.join("scripts/stack"))
            .find(|p| p.is_file())
    {
        return found;
    }
    PathBuf::from(concat!(env!("CARGO_MANIFEST_DIR"), "/../../scripts/stack"))
}

fn parse_kv(text: &str) -> HashMap<String, String> {
    text.lines()
        .filter_map(|l| l.split_once('='))
        .map(|(k, v)| {
            (
                k.trim().to_owned(),
                v.trim().trim_matches('\'').trim_matches('"').to_owned(),
            )
        })
        .collect()
}

/// The running stack's coordinates (`scripts/stack env`).
#[derive(Clone, Debug)]
pub struct Stack {
    script: PathBuf,
    vars: HashMap<String, String>,
    /// Settings the script runs with (`STACK_DIR`, ports): empty for the default stack.
    env: Vec<(String, String)>,
}

impl Stack {
    /// Starts the stack (installing on first use; its progress goes to stderr) and reads it.
    ///
    /// # Errors
    /// When `scripts/stack up` fails.
    pub fn up() -> anyhow::Result<Self> {
        Self::up_with(&[])
    }

    /// [`Stack::up`] for the stack that the script's settings `env` name (e.g. a private
    /// instance: its own `STACK_DIR` and ports); later verbs run with the same settings.
    ///
    /// # Errors
    /// When `scripts/stack up` fails.
    pub fn up_with(env: &[(String, String)]) -> anyhow::Result<Self> {
        let script = stack_script();
        let st = Command::new(&script)
            .envs(env.iter().cloned())
            .arg("up")
            .stdout(Stdio::inherit())
            .stderr(Stdio::inherit())
            .status()
            .with_context(|| format!("running {} up", script.display()))?;
        if !st.success() {
            bail!("`{} up` failed (see its output above)", script.display());
        }
        Self::running_with(env)
    }

    /// Reads a stack that is already up.
    ///
    /// # Errors
    /// When the stack is not running.
    pub fn running() -> anyhow::Result<Self> {
        Self::running_with(&[])
    }

    /// [`Stack::running`] for the stack that the script's settings `env` name.
    ///
    /// # Errors
    /// When the stack is not running.
    pub fn running_with(env: &[(String, String)]) -> anyhow::Result<Self> {
        let script = stack_script();
        let status = Command::new(&script)
            .envs(env.iter().cloned())
            .arg("status")
            .output()
            .with_context(|| format!("running {} status", script.display()))?;
        if !status.status.success() {
            bail!(
                "the stack is not running: start it with `{} up`",
                script.display()
            );
        }
        let out = Command::new(&script)
            .envs(env.iter().cloned())
            .arg("env")
            .output()
            .with_context(|| format!("running {} env", script.display()))?;
        if !out.status.success() {
            bail!("`{} env` failed", script.display());
        }
        Ok(Self {
            script,
            vars: parse_kv(&String::from_utf8_lossy(&out.stdout)),
            env: env.to_vec(),
        })
    }

    /// [`Stack::up`] for the stack that `env` describes (`STACK_DIR`, `STACK_*_PORT`, ...),
    /// as `&str` pairs: [`Stack::up_with`].
    ///
    /// # Errors
    /// When `scripts/stack up` fails.
    pub fn up_with_env(env: &[(&str, &str)]) -> anyhow::Result<Self> {
        let owned: Vec<(String, String)> = env
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect();
        Self::up_with(&owned)
    }

    /// Runs `scripts/stack ARGS` for this stack (e.g. `["stop", "redis"]`) and returns what
    /// it printed on stdout; its progress goes to stderr.
    ///
    /// # Errors
    /// When it cannot be run or fails.
    pub fn run(&self, args: &[&str]) -> anyhow::Result<String> {
        let out = Command::new(&self.script)
            .envs(self.env.iter().cloned())
            .args(args)
            .stderr(Stdio::inherit())
            .output()
            .with_context(|| format!("running {} {}", self.script.display(), args.join(" ")))?;
        if !out.status.success() {
            bail!(
                "`scripts/stack {}` failed (see its output above)",
                args.join(" ")
            );
        }
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    }

    /// Runs the stack script with `args` (e.g. `["down"]`) and this stack's settings, its
    /// output going to ours.
    ///
    /// # Errors
    /// When it cannot run or fails.
    pub fn script(&self, args: &[&str]) -> anyhow::Result<()> {
        let st = Command::new(&self.script)
            .envs(self.env.iter().cloned())
            .args(args)
            .stdout(Stdio::inherit())
            .stderr(Stdio::inherit())
            .status()
            .with_context(|| format!("running {} {args:?}", self.script.display()))?;
        if !st.success() {
            bail!("`{} {args:?}` failed", self.script.display());
        }
        Ok(())
    }

    /// One setting, e.g. `MATRIX_URL`.
    ///
    /// # Errors
    /// When the stack does not report it.
    pub fn get(&self, k: &str) -> anyhow::Result<&str> {
        self.vars
            .get(k)
            .map(String::as_str)
            .with_context(|| format!("`scripts/stack env` has no {k}"))
    }

    /// A copy that reports `v` for setting `k`: e.g. another LiveKit node's URL as
    /// `LIVEKIT_URL`, for a deployment whose server hands its clients that node.
    #[must_use]
    pub fn with_setting(&self, k: &str, v: &str) -> Self {
        let mut s = self.clone();
        s.vars.insert(k.to_owned(), v.to_owned());
        s
    }

    /// The content of the secret file named by setting `k`.
    ///
    /// # Errors
    /// When it cannot be read.
    pub fn secret(&self, k: &str) -> anyhow::Result<Zeroizing<String>> {
        let path = self.get(k)?;
        let v = std::fs::read_to_string(path).with_context(|| format!("reading {path}"))?;
        Ok(Zeroizing::new(v.trim().to_owned()))
    }

    /// LiveKit API credentials of the stack.
    ///
    /// # Errors
    /// When they cannot be read.
    pub fn livekit(&self) -> anyhow::Result<ApiCredentials> {
        Ok(ApiCredentials::new(
            self.get("LIVEKIT_API_KEY")?,
            self.secret("LIVEKIT_API_SECRET_FILE")?.as_str(),
        ))
    }

    /// Provisions Matrix user `name` (idempotent) and returns `(user id, password)`.
    ///
    /// # Errors
    /// When `scripts/stack user` fails.
    pub fn user(&self, name: &str) -> anyhow::Result<(String, Zeroizing<String>)> {
        let out = Command::new(&self.script)
            .envs(self.env.iter().cloned())
            .args(["user", name])
            .output()
            .with_context(|| format!("running {} user {name}", self.script.display()))?;
        if !out.status.success() {
            bail!(
                "`scripts/stack user {name}` failed: {}",
                String::from_utf8_lossy(&out.stderr).trim()
            );
        }
        let kv = parse_kv(&String::from_utf8_lossy(&out.stdout));
        let id = kv
            .get("MATRIX_USER_ID")
            .context("no MATRIX_USER_ID")?
            .clone();
        let file = kv
            .get("MATRIX_USER_PASSWORD_FILE")
            .context("no MATRIX_USER_PASSWORD_FILE")?;
        let pw = std::fs::read_to_string(file).with_context(|| format!("reading {file}"))?;
        Ok((id, Zeroizing::new(pw.trim_end_matches('\n').to_owned())))
    }
}

/// Random lower-case hex.
pub fn unique_hex(bytes: usize) -> String {
    let mut b = vec![0u8; bytes];
    rand::fill(&mut b[..]);
    b.iter().map(|x| format!("{x:02x}")).collect()
}

/// Which database the deployment's server uses.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Db {
    /// A SQLite file in the deployment directory (the embedded default).
    Sqlite,
    /// The stack's PostgreSQL.
    Postgres,
}

/// How to set up a [`Deployment`].
#[derive(Clone, Debug)]
pub struct DeployOptions {
    /// The working directory (keys, server data, client stores).
    pub dir: PathBuf,
    /// Database backend.
    pub db: Db,
    /// Key scheme of the oracle key.
    pub scheme: KeyScheme,
    /// The agent's oracle; `None` starts no agent.
    pub oracle: Option<Builtin>,
    /// Calls one agent takes at once.
    pub max_calls: usize,
    /// The server's address (port 0: any free one).
    pub listen: SocketAddr,
    /// Forward secrecy: the oracle gets a prekey signing key (published by the server), the
    /// agent a prekey store it keeps the server stocked from, and calls are sealed to
    /// one-time prekeys (docs/PROTOCOL.md §13).
    pub forward_secrecy: bool,
    /// Web pages (exact origins, `scheme://host[:port]`) the server lets call its API from a
    /// browser (the server's `[cors] allowed_origins`); none by default.
    pub cors_allowed_origins: Vec<String>,
    /// The agents wait at the server for calls it hands them directly (docs/PROTOCOL.md
    /// §6.8); off, every call goes through LiveKit's dispatch. On by default.
    pub direct_dispatch: bool,
    /// The agents' `first_frame_hold_ms` (`None`: the agent's default).
    pub first_frame_hold_ms: Option<u64>,
    /// The server's `livekit.early_join` (docs/PROTOCOL.md §6.9). On by default.
    pub early_join: bool,
    /// The server's `livekit.room_claim_ttl_secs` (60 by default).
    pub room_claim_ttl_secs: u64,
    /// The server's `matrix.leave_hangup_edit_to_user` (on by default).
    pub leave_hangup_edit_to_user: bool,
}

impl DeployOptions {
    /// SQLite, hpke-p256, the echo oracle, 16 calls, any port.
    pub fn new(dir: impl Into<PathBuf>) -> Self {
        Self {
            dir: dir.into(),
            db: Db::Sqlite,
            scheme: KeyScheme::HpkeP256,
            oracle: Some(Builtin::Echo(oracle_calls_agent::oracles::Echo::default())),
            max_calls: 16,
            listen: SocketAddr::from(([127, 0, 0, 1], 0)),
            forward_secrecy: true,
            cors_allowed_origins: Vec::new(),
            direct_dispatch: true,
            first_frame_hold_ms: None,
            early_join: true,
            room_claim_ttl_secs: 60,
            leave_hangup_edit_to_user: true,
        }
    }
}

/// A running server of the deployment.
#[derive(Debug)]
pub struct ServerHandle {
    /// `http://127.0.0.1:port`.
    pub url: String,
    /// Its state (store, config).
    pub state: AppState,
    stop: Option<oneshot::Sender<()>>,
    task: Option<JoinHandle<()>>,
}

impl ServerHandle {
    /// Stops the server and waits for it.
    pub async fn stop(mut self) {
        if let Some(s) = self.stop.take() {
            let _ = s.send(());
        }
        if let Some(t) = self.task.take() {
            let _ = t.await;
        }
    }
}

/// A provisioned oracle with its server (and agent) running.
#[derive(Debug)]
pub struct Deployment {
    /// The stack.
    pub stack: Stack,
    /// Working directory.
    pub dir: PathBuf,
    /// The oracle.
    pub oracle_did: Did,
    /// The oracle bot's Matrix user id.
    pub oracle_user_id: String,
    /// The oracle's private key file.
    pub key_file: PathBuf,
    /// The server.
    pub server: ServerHandle,
    /// The agent API key (a secret).
    pub agent_api_key: Zeroizing<String>,
    /// The agent, if one was started.
    pub agent: Option<AgentHandle>,
    /// The server's database URL.
    pub database_url: String,
    /// What restarting the server with other keys needs.
    restart: RestartInputs,
}

/// The server's settings and secrets that a restart (e.g. with a new oracle key) reuses.
#[derive(Debug)]
struct RestartInputs {
    server_data: PathBuf,
    agent_name: String,
    bot_password: Zeroizing<String>,
    pepper: Zeroizing<String>,
    max_calls: usize,
    oracle: Option<Builtin>,
    /// The prekey signing key's file and public half, with forward secrecy.
    prekey_signer: Option<(PathBuf, String)>,
    /// The agents' shared prekey store.
    prekey_store: PathBuf,
    /// The server's `[cors] allowed_origins`.
    cors_allowed_origins: Vec<String>,
    /// The agents' `direct_dispatch`.
    direct_dispatch: bool,
    /// The agents' `first_frame_hold_ms`, when set.
    first_frame_hold_ms: Option<u64>,
    /// The server's `livekit.early_join` and `livekit.room_claim_ttl_secs`.
    early_join: (bool, u64),
    /// The server's `matrix.leave_hangup_edit_to_user`.
    leave_hangup_edit_to_user: bool,
}

#[allow(clippy::too_many_arguments)]
pub(crate) fn config_toml_keys(
    stack: &Stack,
    oracle: &Did,
    agent_name: &str,
    bot: &str,
    keys: &[OracleKeyInfo],
    dir: &Path,
    database_url: &str,
    listen: SocketAddr,
    prekey_signing_key: Option<&str>,
    cors_allowed_origins: &[String],
    (early_join, room_claim_ttl_secs): (bool, u64),
) -> anyhow::Result<String> {
    let keys: Vec<String> = keys
        .iter()
        .map(|k| {
            format!(
                r#"{{ keyId = "{}", scheme = "{}", publicKey = "{}" }}"#,
                k.key_id, k.scheme, k.public_key
            )
        })
        .collect();
    Ok(format!(
        r#"
listen = "{listen}"
data_dir = "{data}"
database_url = "{database_url}"
[oracle]
did = "{oracle}"
agent_name = "{agent_name}"
keys = [{keys}]
{prekey}[matrix]
homeserver_url = "{matrix}"
server_name = "{server}"
user_id = "{bot}"
[livekit]
url = "{lk}"
http_url = "{lkhttp}"
api_key = "{lkkey}"
early_join = {early_join}
room_claim_ttl_secs = {room_claim_ttl_secs}
[cors]
allowed_origins = [{cors}]
[limits]
# Everyone of this local deployment (users, agents, LiveKit's webhooks, the load generators)
# talks from 127.0.0.1: that one address is the whole load here, not one client.
per_address = {{ per_sec = 5000.0, burst = 20000 }}
token_checks_per_address = {{ per_sec = 1000.0, burst = 5000 }}
per_user = {{ per_sec = 500.0, burst = 2000 }}
"#,
        cors = cors_allowed_origins
            .iter()
            .map(|o| format!("{o:?}"))
            .collect::<Vec<_>>()
            .join(", "),
        data = dir.join("server").display(),
        keys = keys.join(", "),
        prekey = prekey_signing_key
            .map(|k| format!("prekey_signing_key = \"{k}\"\n"))
            .unwrap_or_default(),
        matrix = stack.get("MATRIX_URL")?,
        server = stack.get("MATRIX_SERVER_NAME")?,
        lk = stack.get("LIVEKIT_URL")?,
        lkhttp = stack.get("LIVEKIT_HTTP_URL")?,
        lkkey = stack.get("LIVEKIT_API_KEY")?,
    ))
}

/// What the server's `[oracle] keys` lists for `k`.
pub(crate) fn key_info(k: &OracleKeyPair) -> OracleKeyInfo {
    OracleKeyInfo {
        key_id: k.key_id().to_string(),
        scheme: k.scheme(),
        public_key: URL_SAFE_NO_PAD.encode(k.public_key().to_raw()),
    }
}

/// Builds the server's state from its settings and serves it on `listen`. Returns the
/// running server and the API-key pepper it uses.
async fn start_server(
    stack: &Stack,
    oracle_did: &Did,
    bot: &str,
    published: &[&OracleKeyPair],
    database_url: &str,
    listen: SocketAddr,
    r: &RestartInputs,
) -> anyhow::Result<(ServerHandle, oracle_calls_server::Secret)> {
    let published: Vec<OracleKeyInfo> = published.iter().copied().map(key_info).collect();
    let toml = config_toml_keys(
        stack,
        oracle_did,
        &r.agent_name,
        bot,
        &published,
        &r.server_data,
        database_url,
        listen,
        r.prekey_signer.as_ref().map(|(_, public)| public.as_str()),
        &r.cors_allowed_origins,
        r.early_join,
    )?;
    let mut config = Config::from_toml(&toml)?;
    config.matrix.leave_hangup_edit_to_user = r.leave_hangup_edit_to_user;
    let lk_secret = stack.secret("LIVEKIT_API_SECRET_FILE")?;
    let secrets = Secrets::from_env(|k| match k {
        "ORACLE_CALLS_LIVEKIT_API_SECRET" => Some(lk_secret.to_string()),
        "ORACLE_CALLS_API_KEY_PEPPER" => Some(r.pepper.to_string()),
        "ORACLE_CALLS_MATRIX_PASSWORD" => Some(r.bot_password.to_string()),
        _ => None,
    })?;
    let pepper_secret = secrets.api_key_pepper.clone();
    let state = oracle_calls_server::build_state(config, secrets)
        .await
        .context("starting the oracle-calls server")?;
    let listener = TcpListener::bind(listen)
        .await
        .with_context(|| format!("binding {listen}"))?;
    let url = format!("http://{}", listener.local_addr()?);
    let (stop_tx, stop_rx) = oneshot::channel::<()>();
    let st = state.clone();
    let task = tokio::spawn(async move {
        let stop = async {
            let _ = stop_rx.await;
        };
        if let Err(e) = oracle_calls_server::serve_on(listener, st, stop).await {
            tracing::error!(error = %e, "the server stopped with an error");
        }
    });
    Ok((
        ServerHandle {
            url,
            state,
            stop: Some(stop_tx),
            task: Some(task),
        },
        pepper_secret,
    ))
}

impl Deployment {
    /// Provisions a fresh oracle and starts its server and (if asked) its agent.
    ///
    /// # Errors
    /// Any step's failure, with context.
    pub async fn start(stack: Stack, opts: DeployOptions) -> anyhow::Result<Self> {
        Self::start_with_published(stack, opts, None).await
    }

    /// As [`Deployment::start`]; the server also publishes `extra` (a key the agent does not
    /// hold, listed first so clients prefer it when it has the preferred scheme).
    ///
    /// # Errors
    /// As [`Deployment::start`].
    pub async fn start_with_published(
        stack: Stack,
        opts: DeployOptions,
        extra: Option<&OracleKeyPair>,
    ) -> anyhow::Result<Self> {
        std::fs::create_dir_all(&opts.dir)
            .with_context(|| format!("creating {}", opts.dir.display()))?;
        let id = unique_hex(5);
        let oracle_did = Did::parse(&format!("did:ixo:oracle{id}"))?;
        let (bot, bot_password) = stack.user(&format!("oracle-{id}"))?;
        let kp = OracleKeyPair::generate(opts.scheme, &mut rand::rng())?;
        let key_file = opts.dir.join(format!("oracle-{id}.pem"));
        oracle_calls::keyfile::write_private_key(&key_file, &kp, false)?;
        let database_url = match opts.db {
            Db::Sqlite => format!(
                "sqlite://{}?mode=rwc",
                opts.dir.join(format!("calls-{id}.sqlite3")).display()
            ),
            Db::Postgres => stack.get("DATABASE_URL")?.to_owned(),
        };
        let mut published: Vec<&OracleKeyPair> = extra.into_iter().collect();
        published.push(&kp);
        let prekey_signer = if opts.forward_secrecy {
            let signer = PrekeySigningKey::generate(&mut rand::rng());
            let path = opts.dir.join(format!("prekey-signing-{id}.pem"));
            oracle_calls::keyfile::write_secret_file(
                &path,
                signer.to_pkcs8_pem().as_bytes(),
                false,
            )?;
            Some((path, signer.public_key().to_string()))
        } else {
            None
        };
        let restart = RestartInputs {
            server_data: opts.dir.join(format!("server-{id}")),
            agent_name: format!("oracle-{}", unique_hex(6)),
            bot_password,
            pepper: Zeroizing::new(unique_hex(32)),
            max_calls: opts.max_calls,
            oracle: opts.oracle,
            prekey_signer,
            prekey_store: opts.dir.join(format!("prekeys-{id}")),
            cors_allowed_origins: opts.cors_allowed_origins,
            direct_dispatch: opts.direct_dispatch,
            first_frame_hold_ms: opts.first_frame_hold_ms,
            early_join: (opts.early_join, opts.room_claim_ttl_secs),
            leave_hangup_edit_to_user: opts.leave_hangup_edit_to_user,
        };
        let (server, pepper_secret) = start_server(
            &stack,
            &oracle_did,
            &bot,
            &published,
            &database_url,
            opts.listen,
            &restart,
        )
        .await?;
        let state = server.state.clone();
        let now = oracle_calls_server::now().unix_millis();
        let key = oracle_calls_server::apikey::create(
            state.store(),
            &pepper_secret,
            oracle_did.clone(),
            "local-agent",
            now,
        )
        .await?;
        let agent_api_key = Zeroizing::new(key.key.dangerous_expose().to_owned());
        let mut dep = Self {
            stack,
            dir: opts.dir.clone(),
            oracle_did,
            oracle_user_id: bot,
            key_file,
            server,
            agent_api_key,
            agent: None,
            database_url,
            restart,
        };
        if let Some(oracle) = dep.restart.oracle.clone() {
            let agent = dep.start_agent(oracle, dep.restart.max_calls, None).await?;
            dep.agent = Some(agent);
        }
        Ok(dep)
    }

    /// Starts one more server of this oracle on `listen` (port 0: any free one): the same
    /// DID, bot user, database, keys and secrets, its own data directory (so its own Matrix
    /// device). On PostgreSQL the servers elect one leader among them (`leader.rs`).
    ///
    /// # Errors
    /// When the server cannot start.
    pub async fn start_another_server(&self, listen: SocketAddr) -> anyhow::Result<ServerHandle> {
        let kp = OracleKeyPair::from_pkcs8_pem(
            &std::fs::read_to_string(&self.key_file)
                .with_context(|| format!("reading {}", self.key_file.display()))?,
        )?;
        let inputs = RestartInputs {
            server_data: self
                .restart
                .server_data
                .with_file_name(format!("server-{}", unique_hex(5))),
            agent_name: self.restart.agent_name.clone(),
            bot_password: self.restart.bot_password.clone(),
            pepper: self.restart.pepper.clone(),
            max_calls: self.restart.max_calls,
            oracle: None,
            prekey_signer: self.restart.prekey_signer.clone(),
            prekey_store: self.restart.prekey_store.clone(),
            cors_allowed_origins: self.restart.cors_allowed_origins.clone(),
            direct_dispatch: self.restart.direct_dispatch,
            first_frame_hold_ms: self.restart.first_frame_hold_ms,
            early_join: self.restart.early_join,
            leave_hangup_edit_to_user: self.restart.leave_hangup_edit_to_user,
        };
        let (server, _) = start_server(
            &self.stack,
            &self.oracle_did,
            &self.oracle_user_id,
            &[&kp],
            &self.database_url,
            listen,
            &inputs,
        )
        .await?;
        Ok(server)
    }

    /// The agents' prekey store (the key holder's), with forward secrecy.
    pub fn prekey_store(&self) -> Option<&Path> {
        self.restart
            .prekey_signer
            .as_ref()
            .map(|_| self.restart.prekey_store.as_path())
    }

    /// The bot account's password (tests use it to act as a homeserver that adds a device to
    /// the bot's account).
    pub fn bot_password(&self) -> &Zeroizing<String> {
        &self.restart.bot_password
    }

    /// Replaces the oracle's key, as an operator rotating it (or an intruder who took the
    /// server) would: stops the agent and the server, makes a new key pair, restarts the
    /// server on the same address, database and bot device publishing only the new key, and
    /// starts the agent with it. Returns the new key pair.
    ///
    /// # Errors
    /// Any step's failure, with context.
    pub async fn replace_oracle_key(&mut self, scheme: KeyScheme) -> anyhow::Result<OracleKeyPair> {
        if let Some(a) = self.agent.take() {
            a.shutdown().await.context("stopping the agent")?;
        }
        let listen: SocketAddr = self
            .server
            .url
            .trim_start_matches("http://")
            .parse()
            .context("the server's address")?;
        let placeholder = ServerHandle {
            url: String::new(),
            state: self.server.state.clone(),
            stop: None,
            task: None,
        };
        let old = std::mem::replace(&mut self.server, placeholder);
        old.stop().await;
        let kp = OracleKeyPair::generate(scheme, &mut rand::rng())?;
        let key_file = self.dir.join(format!("oracle-{}.pem", kp.key_id()));
        oracle_calls::keyfile::write_private_key(&key_file, &kp, false)?;
        self.key_file = key_file;
        let (server, _) = start_server(
            &self.stack,
            &self.oracle_did,
            &self.oracle_user_id,
            &[&kp],
            &self.database_url,
            listen,
            &self.restart,
        )
        .await?;
        self.server = server;
        if let Some(oracle) = self.restart.oracle.clone() {
            let agent = self
                .start_agent(oracle, self.restart.max_calls, None)
                .await?;
            self.agent = Some(agent);
        }
        Ok(kp)
    }

    /// The agent's TOML settings for this deployment.
    pub fn agent_file_config(
        &self,
        max_calls: usize,
        key_file: Option<&Path>,
    ) -> anyhow::Result<FileConfig> {
        Ok(FileConfig {
            server_url: self.server.url.clone(),
            oracle_key_file: key_file.unwrap_or(&self.key_file).to_path_buf(),
            oracle_key_files: Vec::new(),
            max_calls,
            drain_timeout_secs: 10,
            user_join_timeout_secs: 20,
            accept_legacy_envelopes: false,
            opus_complexity: None,
            direct_dispatch: self.restart.direct_dispatch,
            first_frame_hold_ms: self
                .restart
                .first_frame_hold_ms
                .unwrap_or(FileConfig::DEFAULT_FIRST_FRAME_HOLD_MS),
            livekit: toml::from_str(&format!(
                "api_key = \"{}\"",
                self.stack.get("LIVEKIT_API_KEY")?
            ))?,
            prekeys: self
                .restart
                .prekey_signer
                .as_ref()
                .map(|(path, _)| PrekeysSection {
                    store_dir: self.restart.prekey_store.clone(),
                    signing_key_file: Some(path.clone()),
                    low_water: 20,
                    target: 50,
                    last_resort_max_age_secs: 7 * 24 * 3600,
                }),
            speech: None,
            key_transparency: None,
        })
    }

    /// Starts an(other) agent for this oracle, registered when this returns.
    ///
    /// # Errors
    /// Configuration or registration failures.
    pub async fn start_agent(
        &self,
        oracle: Builtin,
        max_calls: usize,
        key_file: Option<&Path>,
    ) -> anyhow::Result<AgentHandle> {
        let file = self.agent_file_config(max_calls, key_file)?;
        let cfg = self.resolve_agent_config(&file).await?;
        Ok(Agent::new(cfg, oracle).start().await?)
    }

    /// Resolves an agent's settings for this deployment with its secrets (the agent API key,
    /// the LiveKit secret) — what `oracle-calls agent` does at start, checks included.
    ///
    /// # Errors
    /// The stack's LiveKit secret cannot be read, or [`AgentConfig::resolve`] refuses.
    pub async fn resolve_agent_config(&self, file: &FileConfig) -> anyhow::Result<AgentConfig> {
        let api_key = self.agent_api_key.clone();
        let lk = self.stack.secret("LIVEKIT_API_SECRET_FILE")?;
        let env = move |k: &str| match k {
            "ORACLE_CALLS_AGENT_API_KEY" => Some(api_key.to_string()),
            "ORACLE_CALLS_LIVEKIT_API_SECRET" => Some(lk.to_string()),
            _ => None,
        };
        Ok(AgentConfig::resolve(file, &env).await?)
    }

    /// Runs `exe agent` (an `oracle-calls` binary) as its own process for this oracle: writes
    /// its config and its API key (0600) into the deployment directory, passes secrets as
    /// `_FILE` variables, and returns once the process logs its registration with LiveKit.
    ///
    /// # Errors
    /// When it cannot be started or does not register within `register_within`.
    pub async fn spawn_agent_process(
        &self,
        exe: &Path,
        max_calls: usize,
        opus_complexity: Option<u8>,
        register_within: std::time::Duration,
    ) -> anyhow::Result<std::process::Child> {
        use std::io::BufRead as _;
        let file = self.agent_file_config(max_calls, None)?;
        let tag = unique_hex(3);
        let cfg = self.dir.join(format!("agent-{tag}.toml"));
        std::fs::write(
            &cfg,
            format!(
                "server_url = \"{}\"\noracle_key_file = \"{}\"\nmax_calls = {}\n{}[livekit]\napi_key = \"{}\"\n{}",
                file.server_url,
                file.oracle_key_file.display(),
                file.max_calls,
                opus_complexity
                    .map(|c| format!("opus_complexity = {c}\n"))
                    .unwrap_or_default(),
                file.livekit.api_key,
                file.prekeys
                    .as_ref()
                    .map(|p| format!(
                        "[prekeys]\nstore_dir = \"{}\"\n{}",
                        p.store_dir.display(),
                        p.signing_key_file
                            .as_ref()
                            .map(|f| format!("signing_key_file = \"{}\"\n", f.display()))
                            .unwrap_or_default()
                    ))
                    .unwrap_or_default()
            ),
        )?;
        let key = self.dir.join(format!("agent-api-key-{tag}"));
        let mut opts = std::fs::OpenOptions::new();
        opts.write(true).create_new(true);
        #[cfg(unix)]
        std::os::unix::fs::OpenOptionsExt::mode(&mut opts, 0o600);
        std::io::Write::write_all(&mut opts.open(&key)?, self.agent_api_key.as_bytes())?;
        let mut child = Command::new(exe)
            .args(["agent", "--config"])
            .arg(&cfg)
            .env("ORACLE_CALLS_AGENT_API_KEY_FILE", &key)
            .env(
                "ORACLE_CALLS_LIVEKIT_API_SECRET_FILE",
                self.stack.get("LIVEKIT_API_SECRET_FILE")?,
            )
            .env("RUST_LOG", "info")
            .stderr(Stdio::piped())
            .spawn()
            .with_context(|| format!("starting {} agent", exe.display()))?;
        let stderr = child.stderr.take().context("the agent's stderr")?;
        let (ready_tx, ready_rx) = oneshot::channel::<()>();
        // Its log is kept next to its config, for when a run goes wrong.
        let log_path = self.dir.join(format!("agent-{tag}.log"));
        let mut log = std::fs::File::create(&log_path)?;
        std::thread::spawn(move || {
            let mut ready = Some(ready_tx);
            for l in std::io::BufReader::new(stderr)
                .lines()
                .map_while(Result::ok)
            {
                let _ = std::io::Write::write_all(&mut log, format!("{l}\n").as_bytes());
                if l.contains("registered with LiveKit")
                    && let Some(tx) = ready.take()
                {
                    let _ = tx.send(());
                }
            }
        });
        let registered = tokio::time::timeout(register_within, ready_rx).await;
        if !matches!(registered, Ok(Ok(()))) {
            let _ = child.kill();
            let _ = child.wait();
            bail!(
                "the agent process did not register within {} s (its log: {})",
                register_within.as_secs(),
                log_path.display()
            );
        }
        Ok(child)
    }

    /// Moves the server into its own `exe serve` process (an `oracle-calls` binary), as a
    /// deployment runs it: stops the in-process server (its bot and leadership with it),
    /// writes the same settings (address, database, data directory with the bot's device)
    /// into the deployment directory, passes the secrets as `_FILE` variables (0600 files), and
    /// returns once the process answers `/healthz`. Its log is kept next to its config. The
    /// caller owns the process: [`Deployment::stop`] stops only what runs in this process.
    ///
    /// # Errors
    /// When it cannot be started or does not answer within `ready_within`.
    pub async fn spawn_server_process(
        &mut self,
        exe: &Path,
        ready_within: std::time::Duration,
    ) -> anyhow::Result<std::process::Child> {
        let listen: SocketAddr = self
            .server
            .url
            .trim_start_matches("http://")
            .parse()
            .context("the server's address")?;
        let placeholder = ServerHandle {
            url: self.server.url.clone(),
            state: self.server.state.clone(),
            stop: None,
            task: None,
        };
        std::mem::replace(&mut self.server, placeholder)
            .stop()
            .await;
        let published = self.server.state.config().oracle.keys.clone();
        let tag = unique_hex(3);
        let cfg = self.dir.join(format!("server-{tag}.toml"));
        let toml = config_toml_keys(
            &self.stack,
            &self.oracle_did,
            &self.restart.agent_name,
            &self.oracle_user_id,
            &published,
            &self.restart.server_data,
            &self.database_url,
            listen,
            self.restart
                .prekey_signer
                .as_ref()
                .map(|(_, public)| public.as_str()),
            &self.restart.cors_allowed_origins,
            self.restart.early_join,
        )?;
        std::fs::write(&cfg, toml).with_context(|| format!("writing {}", cfg.display()))?;
        let secret_file = |name: &str, value: &str| -> anyhow::Result<PathBuf> {
            let path = self.dir.join(format!("server-{tag}-{name}"));
            oracle_calls::keyfile::write_secret_file(&path, value.as_bytes(), false)?;
            Ok(path)
        };
        let pepper = secret_file("pepper", &self.restart.pepper)?;
        let password = secret_file("matrix-password", &self.restart.bot_password)?;
        let log_path = self.dir.join(format!("server-{tag}.log"));
        let log = std::fs::File::create(&log_path)
            .with_context(|| format!("creating {}", log_path.display()))?;
        let mut child = Command::new(exe)
            .args(["serve", "--config"])
            .arg(&cfg)
            .env(
                "ORACLE_CALLS_LIVEKIT_API_SECRET_FILE",
                self.stack.get("LIVEKIT_API_SECRET_FILE")?,
            )
            .env("ORACLE_CALLS_API_KEY_PEPPER_FILE", &pepper)
            .env("ORACLE_CALLS_MATRIX_PASSWORD_FILE", &password)
            .env("RUST_LOG", "info")
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .with_context(|| format!("starting {} serve", exe.display()))?;
        let http = reqwest::Client::new();
        let health = format!("{}/healthz", self.server.url);
        let deadline = tokio::time::Instant::now() + ready_within;
        loop {
            if let Some(status) = child.try_wait()? {
                bail!(
                    "the server process exited ({status}) before answering (its log: {})",
                    log_path.display()
                );
            }
            if http
                .get(&health)
                .send()
                .await
                .is_ok_and(|r| r.status().is_success())
            {
                return Ok(child);
            }
            if tokio::time::Instant::now() >= deadline {
                let _ = child.kill();
                let _ = child.wait();
                bail!(
                    "the server process did not answer within {} s (its log: {})",
                    ready_within.as_secs(),
                    log_path.display()
                );
            }
            tokio::time::sleep(std::time::Duration::from_millis(100)).await;
        }
    }

    /// Provisions a user `@did-ixo-<id>:server` and connects a client for it.
    ///
    /// # Errors
    /// Provisioning or login failures.
    pub async fn new_user(&self) -> anyhow::Result<OracleClient> {
        self.new_user_with(|_| {}).await
    }

    /// [`Self::new_user`] with its client settings passed through `edit` first.
    ///
    /// # Errors
    /// Provisioning or login failures.
    pub async fn new_user_with(
        &self,
        edit: impl FnOnce(&mut ClientConfig),
    ) -> anyhow::Result<OracleClient> {
        let id = unique_hex(5);
        let name = format!("did-ixo-user{id}");
        let (_, password) = self.stack.user(&name)?;
        let mut cfg = ClientConfig::new(
            self.stack.get("MATRIX_URL")?,
            self.server.url.clone(),
            self.dir.join(format!("client-{id}")),
            self.oracle_did.clone(),
        );
        edit(&mut cfg);
        Ok(OracleClient::connect(
            cfg,
            Login::Password {
                user: name,
                password,
            },
        )
        .await?)
    }

    /// The in-process server's metric line `name` (with its labels, as `/metrics` writes it):
    /// its value, 0 when the line is not there (yet), NaN when it is not a number.
    pub fn metric(&self, name: &str) -> f64 {
        self.server
            .state
            .metrics()
            .render()
            .lines()
            .find_map(|l| l.strip_prefix(name).and_then(|r| r.strip_prefix(' ')))
            .map_or(0.0, |v| v.trim().parse().unwrap_or(f64::NAN))
    }

    /// The SQLite database file, when the server uses SQLite.
    pub fn sqlite_file(&self) -> Option<PathBuf> {
        self.database_url
            .strip_prefix("sqlite://")
            .map(|r| PathBuf::from(r.split('?').next().unwrap_or(r)))
    }

    /// Stops the agent (draining) and the server.
    pub async fn stop(mut self) {
        if let Some(a) = self.agent.take()
            && let Err(e) = a.shutdown().await
        {
            tracing::warn!(error = %e, "agent shutdown");
        }
        self.server.stop().await;
    }
}

/// Speaks `pcm` into `call` in real time while collecting what the oracle says, for `listen`
/// in total: the oracle's audio heard meanwhile.
///
/// # Errors
/// When a frame from a participant did not decrypt, or the microphone task panicked.
pub async fn talk(
    call: &mut oracle_calls_client::Call,
    pcm: Vec<i16>,
    listen: std::time::Duration,
) -> anyhow::Result<Vec<i16>> {
    use oracle_calls_client::CallEvent;
    let mic = call.microphone();
    let speaker = tokio::spawn(async move { mic.play(&pcm).await });
    let mut heard = Vec::new();
    let deadline = tokio::time::Instant::now() + listen;
    while let Ok(Some(ev)) = tokio::time::timeout_at(deadline, call.next_event()).await {
        match ev {
            CallEvent::OracleAudio { pcm } => heard.extend(pcm),
            CallEvent::DecryptionFailed { identity, failures } => {
                speaker.abort();
                bail!("{failures} frames from {identity} did not decrypt")
            }
            _ => {}
        }
    }
    // How the microphone's playback ended does not matter here, only what was heard.
    let _ = speaker.await.context("the microphone task")?;
    Ok(heard)
}

/// Waits until the oracle is heard in `call` (its first audio frame), at most `within`; how
/// long that took. `call_oracle` answers once the call is active and the user is in the room,
/// which can be before the oracle's agent is (it joins a room the user joined early): speech
/// said before the agent is there is not heard by it.
///
/// # Errors
/// When the oracle is not heard in time, or the call ends first.
pub async fn until_oracle_heard(
    call: &mut oracle_calls_client::Call,
    within: std::time::Duration,
) -> anyhow::Result<std::time::Duration> {
    let started = tokio::time::Instant::now();
    loop {
        match tokio::time::timeout_at(started + within, call.next_event()).await {
            Ok(Some(oracle_calls_client::CallEvent::OracleAudio { .. })) => {
                return Ok(started.elapsed());
            }
            Ok(Some(_)) => {}
            Ok(None) => bail!("the call ended before the oracle was heard"),
            Err(_) => bail!("the oracle was not heard within {within:?}"),
        }
    }
}

/// Says `secs` seconds of synthesized speech into `call` and answers how well the oracle's
/// echo follows it (the envelope correlation of `analysis::compare`, 150 frames of delay at
/// most). What the tests use to hear that a call really connected.
///
/// # Errors
/// As [`talk`].
pub async fn echo_envelope(call: &mut oracle_calls_client::Call, secs: f64) -> anyhow::Result<f64> {
    let speech = crate::speech::synthesize(secs, 5);
    let heard = talk(
        call,
        speech.clone(),
        std::time::Duration::from_secs_f64(secs + 2.0),
    )
    .await?;
    Ok(crate::analysis::compare(&speech, &heard, 150).envelope)
}

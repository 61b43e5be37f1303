//! A multi-node deployment of one oracle on the local stack, each group in its own processes:
//! the stack's N LiveKit nodes (one Redis, `STACK_LIVEKIT_NODES`), M `serve` processes on the
//! stack's one PostgreSQL (one leader among them, each with its own bot device), K `agent`
//! processes, and users who call from processes of their own (`call`). Server `i` hands its
//! users LiveKit node `i mod N` and uses that node's API; agent `j` registers through node
//! `j mod N` and fetches keys from server `j mod M`. What an operator does on several machines
//! (docs/DEPLOYMENT.md), on loopback.
//!
//! The processes are this binary's product commands (`oracle-lab serve`, `oracle-lab agent`,
//! `oracle-lab call`: the same code as `oracle-calls`). All of them share the host's loopback:
//! network namespaces would need root and a veth pair per group plus routes to the stack's
//! loopback-bound servers, which the stack (bound to 127.0.0.1) cannot reach; they are not used.

use std::io::BufRead as _;
use std::net::{SocketAddr, TcpListener};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail};
use oracle_calls_crypto::{KeyScheme, OracleKeyPair, PrekeySigningKey};
use oracle_calls_proto::Did;
use serde::{Deserialize, Serialize};
use tokio::sync::oneshot;

use crate::local::{Stack, config_toml_keys, key_info, unique_hex};

/// How big a topology to start.
#[derive(Clone, Debug)]
pub struct TopologyOptions {
    /// Working directory: configs, secrets (0600), logs, `topology.json`.
    pub dir: PathBuf,
    /// LiveKit nodes to use (the stack must run at least this many).
    pub livekit_nodes: usize,
    /// `serve` processes.
    pub servers: usize,
    /// `agent` processes.
    pub agents: usize,
    /// Calls one agent takes at once.
    pub max_calls: usize,
    /// The binary whose product commands the processes run (normally this one).
    pub exe: PathBuf,
}

/// One LiveKit node: its signalling URL and its HTTP API.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Node {
    /// `ws://…`.
    pub url: String,
    /// `http://…`.
    pub http_url: String,
}

/// One server process.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct ServerInfo {
    /// `http://127.0.0.1:port`.
    pub url: String,
    /// The LiveKit node (index into `nodes`) it uses and hands its users.
    pub node: usize,
    /// Its process id.
    pub pid: u32,
    /// Its log.
    pub log: PathBuf,
}

/// One agent process.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct AgentInfo {
    /// The server it fetches call keys from (index into `servers`).
    pub server: usize,
    /// The LiveKit node it registers through (index into `nodes`).
    pub node: usize,
    /// Its process id.
    pub pid: u32,
    /// Its log (each call it served is logged as `job finished` with the call id).
    pub log: PathBuf,
}

/// Where everything of a running topology is (written as `topology.json` in its directory,
/// which `oracle-lab load` reads from another process).
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct TopologyInfo {
    /// The oracle's DID.
    pub oracle: String,
    /// The homeserver users log in to.
    pub homeserver: String,
    /// The LiveKit nodes in use.
    pub nodes: Vec<Node>,
    /// The server processes.
    pub servers: Vec<ServerInfo>,
    /// The agent processes.
    pub agents: Vec<AgentInfo>,
    /// The working directory.
    pub dir: PathBuf,
}

impl TopologyInfo {
    /// Reads `dir/topology.json`.
    ///
    /// # Errors
    /// When it is missing or not a topology.
    pub fn read(dir: &Path) -> anyhow::Result<Self> {
        let path = dir.join("topology.json");
        let text = std::fs::read(&path).with_context(|| {
            format!(
                "reading {} (is `oracle-lab up --dir {}` running?)",
                path.display(),
                dir.display()
            )
        })?;
        serde_json::from_slice(&text)
            .with_context(|| format!("{} is not a topology", path.display()))
    }
}

/// A running topology; dropping it stops its processes.
#[derive(Debug)]
pub struct Topology {
    /// Where everything is.
    pub info: TopologyInfo,
    children: Vec<Child>,
}

/// The stack's LiveKit nodes (`LIVEKIT_NODE_URLS`; one node when the stack does not list them).
///
/// # Errors
/// When the stack reports no LiveKit.
pub fn stack_nodes(stack: &Stack) -> anyhow::Result<Vec<Node>> {
    match (
        stack.get("LIVEKIT_NODE_URLS"),
        stack.get("LIVEKIT_NODE_HTTP_URLS"),
    ) {
        (Ok(ws), Ok(http)) => Ok(ws
            .split_whitespace()
            .zip(http.split_whitespace())
            .map(|(url, http_url)| Node {
                url: url.to_owned(),
                http_url: http_url.to_owned(),
            })
            .collect()),
        _ => Ok(vec![Node {
            url: stack.get("LIVEKIT_URL")?.to_owned(),
            http_url: stack.get("LIVEKIT_HTTP_URL")?.to_owned(),
        }]),
    }
}

/// A free TCP port on 127.0.0.1 (free when asked; the server binds it right after).
fn free_port() -> anyhow::Result<SocketAddr> {
    let l = TcpListener::bind("127.0.0.1:0").context("finding a free port")?;
    Ok(l.local_addr()?)
}

/// Starts `cmd` with its stderr written to `log`, and waits until a line of it contains
/// `ready` (or `ready` is empty), the process exits, or `within` passes.
async fn spawn_logged(
    mut cmd: Command,
    what: &str,
    log: &Path,
    ready: &'static str,
    within: Duration,
) -> anyhow::Result<Child> {
    let mut child = cmd
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .with_context(|| format!("starting {what}"))?;
    let stderr = child.stderr.take().context("the child's stderr")?;
    let mut file =
        std::fs::File::create(log).with_context(|| format!("creating {}", log.display()))?;
    let (tx, rx) = oneshot::channel::<()>();
    std::thread::spawn(move || {
        let mut tx = Some(tx);
        for l in std::io::BufReader::new(stderr)
            .lines()
            .map_while(Result::ok)
        {
            let _ = std::io::Write::write_all(&mut file, format!("{l}\n").as_bytes());
            if !ready.is_empty()
                && l.contains(ready)
                && let Some(t) = tx.take()
            {
                let _ = t.send(());
            }
        }
    });
    if ready.is_empty() {
        return Ok(child);
    }
    if !matches!(tokio::time::timeout(within, rx).await, Ok(Ok(()))) {
        let _ = child.kill();
        let _ = child.wait();
        bail!(
            "{what} was not ready within {} s (its log: {})",
            within.as_secs(),
            log.display()
        );
    }
    Ok(child)
}

/// Waits until `url/healthz` answers 200, while `child` runs.
async fn wait_healthy(
    child: &mut Child,
    url: &str,
    log: &Path,
    within: Duration,
) -> anyhow::Result<()> {
    let http = reqwest::Client::new();
    let start = Instant::now();
    loop {
        if let Some(status) = child.try_wait()? {
            bail!(
                "the server at {url} exited ({status}); its log: {}",
                log.display()
            );
        }
        if let Ok(r) = http.get(format!("{url}/healthz")).send().await
            && r.status().is_success()
        {
            return Ok(());
        }
        if start.elapsed() > within {
            bail!(
                "the server at {url} was not healthy within {} s (its log: {})",
                within.as_secs(),
                log.display()
            );
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

impl Topology {
    /// Provisions one oracle (key, prekey signing key, Matrix bot account, agent API key) and
    /// starts its servers and agents as processes; returns once every server is healthy and
    /// every agent registered with LiveKit.
    ///
    /// # Errors
    /// When the stack has too few LiveKit nodes, or any step fails (with the log to read).
    pub async fn start(stack: Stack, opts: TopologyOptions) -> anyhow::Result<Self> {
        if opts.servers == 0 || opts.agents == 0 || opts.livekit_nodes == 0 {
            bail!("a topology needs at least one LiveKit node, one server and one agent");
        }
        let all_nodes = stack_nodes(&stack)?;
        if all_nodes.len() < opts.livekit_nodes {
            bail!(
                "the stack runs {} LiveKit node(s), {} asked: bring it up with \
                 STACK_LIVEKIT_NODES={} scripts/stack up",
                all_nodes.len(),
                opts.livekit_nodes,
                opts.livekit_nodes
            );
        }
        let nodes: Vec<Node> = all_nodes.into_iter().take(opts.livekit_nodes).collect();
        let dir = opts.dir.clone();
        std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
        let secret = |name: &str, value: &[u8]| -> anyhow::Result<PathBuf> {
            let path = dir.join(name);
            oracle_calls::keyfile::write_secret_file(&path, value, false)?;
            Ok(path)
        };

        // The oracle: its key pair, prekey signing key and bot account.
        let id = unique_hex(5);
        let oracle = Did::parse(&format!("did:ixo:lab{id}"))?;
        let (bot, bot_password) = stack.user(&format!("oracle-lab{id}"))?;
        let kp = OracleKeyPair::generate(KeyScheme::HpkeP256, &mut rand::rng())?;
        let key_file = dir.join("oracle.pem");
        oracle_calls::keyfile::write_private_key(&key_file, &kp, false)?;
        let signer = PrekeySigningKey::generate(&mut rand::rng());
        let signer_file = secret("prekey-signing.pem", signer.to_pkcs8_pem().as_bytes())?;
        let signer_public = signer.public_key().to_string();
        let password_file = secret("bot-password", bot_password.as_bytes())?;
        let pepper_file = secret("api-key-pepper", unique_hex(32).as_bytes())?;
        let lk_secret_file = stack.get("LIVEKIT_API_SECRET_FILE")?.to_owned();
        let database_url = stack.get("DATABASE_URL")?.to_owned();
        let agent_name = format!("oracle-lab{id}");

        // One config per server: its port, data directory and LiveKit node.
        let mut configs = Vec::new();
        for i in 0..opts.servers {
            let node = nodes.get(i % nodes.len()).context("no LiveKit node")?;
            let view = stack
                .with_setting("LIVEKIT_URL", &node.url)
                .with_setting("LIVEKIT_HTTP_URL", &node.http_url);
            let listen = free_port()?;
            let toml = config_toml_keys(
                &view,
                &oracle,
                &agent_name,
                &bot,
                &[key_info(&kp)],
                &dir.join(format!("server-{i}")),
                &database_url,
                listen,
                Some(signer_public.as_str()),
                &[],
                (true, 60),
            )?;
            let path = dir.join(format!("server-{i}.toml"));
            std::fs::write(&path, toml).with_context(|| format!("writing {}", path.display()))?;
            configs.push((path, listen, i % nodes.len()));
        }
        let server_env = |cmd: &mut Command| {
            cmd.env("ORACLE_CALLS_LIVEKIT_API_SECRET_FILE", &lk_secret_file)
                .env("ORACLE_CALLS_API_KEY_PEPPER_FILE", &pepper_file)
                .env("ORACLE_CALLS_MATRIX_PASSWORD_FILE", &password_file);
        };

        // The agents' API key, made as an operator does (`apikey create`).
        let mut cmd = Command::new(&opts.exe);
        cmd.arg("apikey")
            .arg("--config")
            .arg(&configs.first().context("no server")?.0)
            .args([
                "create",
                "--oracle",
                oracle.as_str(),
                "--label",
                "lab agents",
            ])
            .env("RUST_LOG", "warn");
        server_env(&mut cmd);
        let out = cmd.output().context("running apikey create")?;
        if !out.status.success() {
            bail!(
                "apikey create failed: {}",
                String::from_utf8_lossy(&out.stderr).trim()
            );
        }
        let stdout = String::from_utf8_lossy(&out.stdout);
        let api_key = stdout
            .lines()
            .find_map(|l| l.strip_prefix("api key (shown once): "))
            .context("apikey create printed no key")?;
        let api_key_file = secret("agent-api-key", api_key.trim().as_bytes())?;

        let mut topology = Self {
            info: TopologyInfo {
                oracle: oracle.as_str().to_owned(),
                homeserver: stack.get("MATRIX_URL")?.to_owned(),
                nodes,
                servers: Vec::new(),
                agents: Vec::new(),
                dir: dir.clone(),
            },
            children: Vec::new(),
        };

        // The servers, each its own process.
        for (i, (config, listen, node)) in configs.iter().enumerate() {
            let log = dir.join(format!("server-{i}.log"));
            let mut cmd = Command::new(&opts.exe);
            cmd.arg("serve")
                .arg("--config")
                .arg(config)
                .env("RUST_LOG", "info");
            server_env(&mut cmd);
            let mut child =
                spawn_logged(cmd, &format!("server {i}"), &log, "", Duration::ZERO).await?;
            let url = format!("http://{listen}");
            let healthy = wait_healthy(&mut child, &url, &log, Duration::from_secs(90)).await;
            let pid = child.id();
            topology.children.push(child);
            healthy?;
            topology.info.servers.push(ServerInfo {
                url,
                node: *node,
                pid,
                log,
            });
        }

        // The agents, each its own process, sharing the oracle's prekey store.
        let prekeys = dir.join("prekeys");
        for j in 0..opts.agents {
            let server = j % opts.servers;
            let node = j % topology.info.nodes.len();
            let config = dir.join(format!("agent-{j}.toml"));
            std::fs::write(
                &config,
                format!(
                    "server_url = \"{server_url}\"\noracle_key_file = \"{key}\"\nmax_calls = {max}\n\
                     [livekit]\napi_key = \"{lk_key}\"\nurl = \"{lk_url}\"\n\
                     [prekeys]\nstore_dir = \"{store}\"\nsigning_key_file = \"{signer}\"\n",
                    server_url = topology.info.servers.get(server).context("no server")?.url,
                    key = key_file.display(),
                    max = opts.max_calls,
                    lk_key = stack.get("LIVEKIT_API_KEY")?,
                    lk_url = topology.info.nodes.get(node).context("no LiveKit node")?.url,
                    store = prekeys.display(),
                    signer = signer_file.display(),
                ),
            )
            .with_context(|| format!("writing {}", config.display()))?;
            let log = dir.join(format!("agent-{j}.log"));
            let mut cmd = Command::new(&opts.exe);
            cmd.args(["agent", "--oracle", "echo", "--config"])
                .arg(&config)
                .env("ORACLE_CALLS_AGENT_API_KEY_FILE", &api_key_file)
                .env("ORACLE_CALLS_LIVEKIT_API_SECRET_FILE", &lk_secret_file)
                .env("RUST_LOG", "info");
            let child = spawn_logged(
                cmd,
                &format!("agent {j}"),
                &log,
                "registered with LiveKit",
                Duration::from_secs(90),
            )
            .await?;
            topology.info.agents.push(AgentInfo {
                server,
                node,
                pid: child.id(),
                log,
            });
            topology.children.push(child);
        }
        let json = serde_json::to_vec_pretty(&topology.info)?;
        std::fs::write(dir.join("topology.json"), json).context("writing topology.json")?;
        Ok(topology)
    }

    /// Kills server `i`'s process (SIGKILL, as a machine that died) and waits for it.
    ///
    /// # Errors
    /// When there is no such server or its process is already gone.
    pub fn kill_server(&mut self, i: usize) -> anyhow::Result<()> {
        let pid = self.info.servers.get(i).context("no such server")?.pid;
        self.kill(pid)
    }

    /// Kills agent `j`'s process (SIGKILL) and waits for it.
    ///
    /// # Errors
    /// When there is no such agent or its process is already gone.
    pub fn kill_agent(&mut self, j: usize) -> anyhow::Result<()> {
        let pid = self.info.agents.get(j).context("no such agent")?.pid;
        self.kill(pid)
    }

    fn kill(&mut self, pid: u32) -> anyhow::Result<()> {
        let at = self
            .children
            .iter()
            .position(|c| c.id() == pid)
            .context("the process is gone")?;
        let mut child = self.children.swap_remove(at);
        let killed = child.kill();
        let waited = child.wait();
        killed.context("killing the process")?;
        waited.context("waiting for the killed process")?;
        Ok(())
    }
}

impl Drop for Topology {
    fn drop(&mut self) {
        for c in &mut self.children {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

/// The loudness-envelope correlation above which a user heard the echo of what it said. Silence
/// or noise gives about 0; with four calls at once beside two servers and two agents on this
/// project's 2-core machine, busy with other builds, heard echoes measured 0.58–0.91 over two
/// runs of crates/lab/tests/topology.rs (the end-to-end tests ask 0.6 of one quieter call).
pub const ECHO_HEARD: f64 = 0.5;

/// What one user's call from its own process came to.
#[derive(Debug)]
pub struct UserCall {
    /// The user's Matrix localpart.
    pub user: String,
    /// The server it called through (index into the topology's servers).
    pub server: usize,
    /// The call id the `call` command printed (empty when it failed).
    pub call_id: String,
    /// Loudness-envelope correlation of what the user said with what came back (the echo).
    pub envelope: f64,
    /// The agent (index into the topology's agents) whose log has the call served.
    pub agent: Option<usize>,
    /// The command's error output when it failed.
    pub error: Option<String>,
}

/// Places `users` calls at once against a running topology, each user from its own `call`
/// process, spread over the servers `through` (indexes into its servers) in turn: each says
/// `seconds` of synthetic speech and records the echo.
///
/// # Errors
/// When a user cannot be provisioned or a process cannot be started (a failed call is
/// reported in its [`UserCall`]).
pub async fn place_calls(
    exe: &Path,
    stack: &Stack,
    info: &TopologyInfo,
    through: &[usize],
    users: usize,
    seconds: u64,
) -> anyhow::Result<Vec<UserCall>> {
    if through.is_empty() || through.iter().any(|&i| i >= info.servers.len()) {
        bail!(
            "no such servers: {through:?} (the topology has {})",
            info.servers.len()
        );
    }
    let dir = info.dir.join(format!("users-{}", unique_hex(3)));
    std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
    let mut running = Vec::new();
    for u in 0..users {
        let server = *through.get(u % through.len()).context("no server")?;
        let name = format!("did-ixo-lab{}", unique_hex(4));
        let (_, password) = stack.user(&name)?;
        let pw_file = dir.join(format!("{name}.password"));
        oracle_calls::keyfile::write_secret_file(&pw_file, password.as_bytes(), false)?;
        let speech =
            crate::speech::synthesize(seconds.saturating_sub(2).max(1) as f64, u as u64 + 1);
        let input = dir.join(format!("{name}-says.wav"));
        let output = dir.join(format!("{name}-hears.wav"));
        oracle_calls::wav::write(&input, &speech)?;
        let mut cmd = Command::new(exe);
        cmd.args(["call", "--user", &name, "--homeserver", &info.homeserver])
            .args([
                "--oracle",
                &info.oracle,
                "--server",
                &info.servers.get(server).context("no server")?.url,
            ])
            .arg("--state")
            .arg(dir.join("state"))
            .arg("--input")
            .arg(&input)
            .arg("--output")
            .arg(&output)
            .args(["--seconds", &seconds.to_string()])
            .env("ORACLE_CALLS_MATRIX_PASSWORD_FILE", &pw_file)
            .env(
                "RUST_LOG",
                "warn,matrix_sdk=off,matrix_sdk_crypto=off,matrix_sdk_base=off",
            );
        let out = tokio::task::spawn_blocking(move || cmd.output());
        running.push((name, server, speech, output, out));
    }
    let mut calls = Vec::new();
    for (user, server, speech, output, out) in running {
        let out = out.await?.context("running a user's call")?;
        let call_id = String::from_utf8_lossy(&out.stdout).trim().to_owned();
        let mut call = UserCall {
            user,
            server,
            call_id,
            envelope: 0.0,
            agent: None,
            error: None,
        };
        if !out.status.success() {
            call.error = Some(String::from_utf8_lossy(&out.stderr).trim().to_owned());
        } else {
            match oracle_calls::wav::read(&output) {
                Ok(heard) => {
                    call.envelope = crate::analysis::compare(&speech, &heard, 150).envelope
                }
                Err(e) => call.error = Some(format!("reading what the user heard: {e:#}")),
            }
        }
        calls.push(call);
    }
    // Which agent served each call: its log has the call id on a `job finished` line (the
    // agent logs it once the user left, so allow it a moment).
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        for call in calls
            .iter_mut()
            .filter(|c| c.agent.is_none() && !c.call_id.is_empty())
        {
            call.agent = info.agents.iter().position(|a| {
                std::fs::read_to_string(&a.log).is_ok_and(|log| {
                    log.lines().any(|l| {
                        l.contains(&call.call_id)
                            && l.contains("job finished")
                            && l.contains("Served")
                    })
                })
            });
        }
        let open = calls.iter().any(|c| c.agent.is_none() && c.error.is_none());
        if !open || Instant::now() > deadline {
            break;
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    Ok(calls)
}

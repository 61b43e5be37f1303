//! A key-transparency directory for one oracle on the local stack, set up as its operator
//! would with the `oracle-calls` binary: `kt keygen`, `kt token` for the oracle's DID, `kt
//! serve` on a free loopback port, and publishing the record its server describes. The
//! end-to-end tests and `bench setup` use it.

use std::io::{BufRead as _, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use anyhow::{Context as _, bail};
use oracle_calls_client::KtConfig;
use oracle_calls_kt::{DirectoryPublicKey, OracleRecord, SignedCheckpoint};
use oracle_calls_proto::{Did, WellKnown};

/// A directory's keys and the oracle operator's publish token.
#[derive(Debug)]
pub struct KtDirectory {
    exe: PathBuf,
    /// Where its keys, configs, logs and data folders are.
    pub dir: PathBuf,
    /// The directory's public key, as clients configure it.
    pub public: DirectoryPublicKey,
    /// The operator's publish token for the oracle's DID (a secret).
    pub token: String,
    /// The `[[publishers]]` entry for the service's config.
    publisher: String,
}

/// A running `kt serve`, killed when dropped.
#[derive(Debug)]
pub struct KtService {
    child: Child,
    /// `http://127.0.0.1:port`.
    pub base: String,
}

impl Drop for KtService {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl KtDirectory {
    /// Makes the directory's keys in `dir/keys` and a publish token for `oracle`, running
    /// `exe` (an `oracle-calls` binary).
    ///
    /// # Errors
    /// When a command fails or prints something unexpected.
    pub fn new(exe: &Path, dir: PathBuf, oracle: &Did) -> anyhow::Result<Self> {
        std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
        let kt = |args: &[&str]| -> anyhow::Result<String> {
            let out = Command::new(exe)
                .arg("kt")
                .args(args)
                .env_remove("ORACLE_CALLS_KT_CONFIG")
                .output()
                .context("running oracle-calls kt")?;
            if !out.status.success() {
                bail!("kt {args:?}: {}", String::from_utf8_lossy(&out.stderr));
            }
            Ok(String::from_utf8(out.stdout)?)
        };
        let keys = dir.join("keys");
        let keys_arg = keys.to_str().context("a non-UTF-8 path")?;
        let public = serde_json::from_str(&kt(&["keygen", "--out-dir", keys_arg])?)
            .context("kt keygen's public key")?;
        let out = kt(&["token", "--did", oracle.as_str()])?;
        let (token, publisher) = out.split_once('\n').context("kt token's output")?;
        Ok(Self {
            exe: exe.to_owned(),
            dir,
            public,
            token: token.to_owned(),
            publisher: publisher.to_owned(),
        })
    }

    /// Starts `kt serve` on the log in `data` (a folder under the directory's).
    ///
    /// # Errors
    /// When it cannot be started or does not listen within a minute.
    pub fn start(&self, data: &str) -> anyhow::Result<KtService> {
        self.start_with(data, "")
    }

    /// As [`KtDirectory::start`], with more of kt.toml (`extra`: top-level keys first, e.g.
    /// `person_publishes_per_hour = 3`, then tables such as `[[homeservers]]`).
    ///
    /// # Errors
    /// As [`KtDirectory::start`].
    pub fn start_with(&self, data: &str, extra: &str) -> anyhow::Result<KtService> {
        let config = self.dir.join(format!("kt-{data}.toml"));
        std::fs::write(
            &config,
            format!(
                "listen = \"127.0.0.1:0\"\ndata_dir = \"{}\"\n{extra}\n{}",
                self.dir.join(data).display(),
                self.publisher
            ),
        )?;
        let keys = self.dir.join("keys");
        let mut child = Command::new(&self.exe)
            .args(["kt", "serve", "--config"])
            .arg(&config)
            .env("ORACLE_CALLS_KT_SIGNING_KEY_FILE", keys.join("signing.key"))
            .env("ORACLE_CALLS_KT_VRF_KEY_FILE", keys.join("vrf.key"))
            .env_remove("ORACLE_CALLS_KT_SIGNING_KEY")
            .env_remove("ORACLE_CALLS_KT_VRF_KEY")
            .env_remove("ORACLE_CALLS_KT_DATABASE_URL")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(std::fs::File::create(
                self.dir.join(format!("serve-{data}.log")),
            )?)
            .spawn()
            .context("starting kt serve")?;
        let stdout = child.stdout.take().context("kt serve's stdout")?;
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                if let Some(addr) = line.strip_prefix("listening on ") {
                    let _ = tx.send(addr.to_owned());
                }
            }
        });
        let Ok(addr) = rx.recv_timeout(Duration::from_secs(60)) else {
            let _ = child.kill();
            let _ = child.wait();
            bail!("kt serve did not start (log in {})", self.dir.display());
        };
        Ok(KtService {
            child,
            base: format!("http://{addr}"),
        })
    }

    /// What a client configures to use `service`.
    pub fn config(&self, service: &KtService) -> KtConfig {
        KtConfig {
            url: service.base.clone(),
            directory_key: self.public.clone(),
        }
    }
}

/// What the operator publishes: the keys, bot, bot devices, agent and prekey signing key its
/// server describes.
pub fn record_of(wk: &WellKnown) -> OracleRecord {
    OracleRecord {
        keys: wk.keys.clone(),
        matrix_user_id: wk.matrix_user_id.clone(),
        bot_devices: wk.matrix_devices.clone(),
        agent_name: wk.agent_name.clone(),
        prekey_signing_key: wk.prekey_signing_key.clone(),
    }
}

/// Publishes `record` for `did` with the operator's token; answers the checkpoint of the
/// epoch that holds it.
///
/// # Errors
/// When the service refuses or cannot be reached.
pub async fn publish(
    service: &KtService,
    token: &str,
    did: &Did,
    record: &OracleRecord,
) -> anyhow::Result<SignedCheckpoint> {
    let r = reqwest::Client::new()
        .post(format!("{}/kt/v1/publish", service.base))
        .bearer_auth(token)
        .json(&serde_json::json!({"did": did, "record": record}))
        .send()
        .await?;
    if !r.status().is_success() {
        bail!(
            "publish: {} {}",
            r.status(),
            r.text().await.unwrap_or_default()
        );
    }
    let v: serde_json::Value = r.json().await?;
    let checkpoint = v.get("checkpoint").context("publish: no checkpoint")?;
    Ok(serde_json::from_value(checkpoint.clone())?)
}

/// The oracle server's well-known at `server`, once its bot publishes a device.
///
/// # Errors
/// When the server cannot be reached, or no device shows within 10 s.
pub async fn well_known(server: &str) -> anyhow::Result<WellKnown> {
    for _ in 0..100 {
        let wk: WellKnown = reqwest::get(format!("{server}/.well-known/oracle-calls"))
            .await?
            .json()
            .await?;
        if !wk.matrix_devices.is_empty() {
            return Ok(wk);
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    bail!("the oracle's bot publishes no device")
}

//! The agent's configuration: a small TOML file, secrets from the environment or files, and
//! the rest discovered from the oracle-calls server's `/.well-known/oracle-calls`.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use oracle_calls_crypto::OracleKeyPair;
use oracle_calls_proto::Did;
use oracle_calls_rtc::token::ApiCredentials;
use serde::Deserialize;
use zeroize::Zeroizing;

use crate::ServerApi;

/// Why the configuration cannot be used. Each message names the setting to fix.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ConfigError {
    /// The file could not be read or parsed.
    #[error("config file {path}: {reason}")]
    File {
        /// The file.
        path: String,
        /// What is wrong.
        reason: String,
    },
    /// A required secret is missing or unreadable.
    #[error("secret {0}")]
    Secret(String),
    /// The oracle private key could not be loaded.
    #[error("oracle key file {path}: {reason}")]
    Key {
        /// The file.
        path: String,
        /// What is wrong.
        reason: String,
    },
    /// The server could not be asked for its well-known document.
    #[error("oracle-calls server: {0}")]
    Server(String),
    /// The private key is not one the server publishes for this oracle: callers would wrap
    /// call keys this agent cannot open.
    #[error(
        "the oracle key {key_id} ({scheme}) is not among the keys {server} publishes for {oracle}; \
         callers would wrap keys this agent cannot open"
    )]
    KeyNotPublished {
        /// Our key id.
        key_id: String,
        /// Our scheme.
        scheme: String,
        /// The server.
        server: String,
        /// The oracle.
        oracle: String,
    },
}

/// The TOML file of `oracle-calls agent`.
///
/// ```toml
/// server_url = "http://127.0.0.1:18080"
/// oracle_key_file = "/etc/oracle-calls/oracle.pem"
/// max_calls = 16
/// [livekit]
/// api_key = "devkey"
/// ```
///
/// Secrets are read from the environment, directly or from a file named by `<VAR>_FILE`:
/// `ORACLE_CALLS_AGENT_API_KEY` (the key `oracle-calls apikey create` printed) and
/// `ORACLE_CALLS_LIVEKIT_API_SECRET` (the LiveKit API key's secret, to sign the worker token).
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileConfig {
    /// The oracle-calls server.
    pub server_url: String,
    /// The oracle's PKCS#8 PEM private key.
    pub oracle_key_file: PathBuf,
    /// Calls this process takes at once (default 16).
    #[serde(default = "default_max_calls")]
    pub max_calls: usize,
    /// On shutdown, how long live calls may run on before they are ended (default 30 s).
    #[serde(default = "default_drain")]
    pub drain_timeout_secs: u64,
    /// How long to wait in a room for the user before giving up (default 30 s).
    #[serde(default = "default_user_wait")]
    pub user_join_timeout_secs: u64,
    /// Open legacy ixo envelopes (base58 eciesjs, not bound to the call). Off by default: such
    /// a key could have been lifted from another call.
    #[serde(default)]
    pub accept_legacy_envelopes: bool,
    /// The Opus encoder complexity of the oracle's voice, 0..=10 (default: libopus's, 9). Each
    /// call encodes one stream: 5 saves about a third of the encoding CPU, 0 about two thirds
    /// (`oracle-calls bench opus`).
    #[serde(default)]
    pub opus_complexity: Option<u8>,
    /// LiveKit settings.
    pub livekit: LiveKitSection,
}

/// `[livekit]` of [`FileConfig`].
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LiveKitSection {
    /// The API key the worker token is issued under (its secret comes from the environment).
    pub api_key: String,
    /// Overrides the signaling URL the server publishes.
    #[serde(default)]
    pub url: Option<String>,
}

fn default_max_calls() -> usize {
    16
}
fn default_drain() -> u64 {
    30
}
fn default_user_wait() -> u64 {
    30
}

impl FileConfig {
    /// Reads and parses the TOML file.
    ///
    /// # Errors
    /// [`ConfigError::File`].
    pub fn load(path: &Path) -> Result<Self, ConfigError> {
        let err = |reason: String| ConfigError::File {
            path: path.display().to_string(),
            reason,
        };
        let text = std::fs::read_to_string(path).map_err(|e| err(e.to_string()))?;
        toml::from_str(&text).map_err(|e| err(e.to_string()))
    }
}

/// Everything a running agent needs.
#[derive(Clone, Debug)]
pub struct AgentConfig {
    /// The oracle-calls server's API.
    pub server: ServerApi,
    /// LiveKit signaling URL (`ws://…`).
    pub livekit_url: String,
    /// LiveKit API key and secret for the worker token.
    pub livekit: ApiCredentials,
    /// The agent name dispatches carry.
    pub agent_name: String,
    /// The oracle this agent serves.
    pub oracle_did: Did,
    /// The oracle's key pair.
    pub key_pair: Arc<OracleKeyPair>,
    /// Concurrent calls.
    pub max_calls: usize,
    /// Shutdown drain budget.
    pub drain_timeout: Duration,
    /// How long to wait for the user in the room.
    pub user_join_timeout: Duration,
    /// See [`FileConfig::accept_legacy_envelopes`].
    pub accept_legacy_envelopes: bool,
    /// See [`FileConfig::opus_complexity`].
    pub opus_complexity: Option<u8>,
}

/// Reads secret `name` from `env(name)` or from the file named by `env(name + "_FILE")`.
///
/// # Errors
/// [`ConfigError::Secret`] when neither is set, both are, or the file cannot be read.
pub(crate) fn secret(
    env: &dyn Fn(&str) -> Option<String>,
    name: &str,
) -> Result<Zeroizing<String>, ConfigError> {
    let file_var = format!("{name}_FILE");
    match (env(name), env(&file_var)) {
        (Some(v), None) if !v.trim().is_empty() => Ok(Zeroizing::new(v.trim().to_owned())),
        (None, Some(f)) => {
            let v = Zeroizing::new(
                std::fs::read_to_string(&f)
                    .map_err(|e| ConfigError::Secret(format!("{file_var}={f}: {e}")))?,
            );
            let t = v.trim();
            if t.is_empty() {
                return Err(ConfigError::Secret(format!(
                    "{file_var}={f}: the file is empty"
                )));
            }
            Ok(Zeroizing::new(t.to_owned()))
        }
        (Some(_), Some(_)) => Err(ConfigError::Secret(format!(
            "{name} and {file_var} are both set; use one"
        ))),
        _ => Err(ConfigError::Secret(format!(
            "{name} is not set (set it, or {file_var} to a file holding it)"
        ))),
    }
}

impl AgentConfig {
    /// Builds the configuration: loads the key, reads the secrets, and asks the server who the
    /// oracle is. Fails loudly if the key is not one the server publishes.
    ///
    /// # Errors
    /// [`ConfigError`].
    pub async fn resolve(
        file: &FileConfig,
        env: &dyn Fn(&str) -> Option<String>,
    ) -> Result<Self, ConfigError> {
        let key_pair = load_key(&file.oracle_key_file)?;
        let api_key = secret(env, "ORACLE_CALLS_AGENT_API_KEY")?;
        let lk_secret = secret(env, "ORACLE_CALLS_LIVEKIT_API_SECRET")?;
        let server = ServerApi::new(&file.server_url, api_key)
            .map_err(|e| ConfigError::Server(e.to_string()))?;
        let wk = server
            .well_known()
            .await
            .map_err(|e| ConfigError::Server(e.to_string()))?;
        let ours = key_pair.key_id().to_string();
        if !wk
            .keys
            .iter()
            .any(|k| k.key_id == ours && k.scheme == key_pair.scheme())
        {
            return Err(ConfigError::KeyNotPublished {
                key_id: ours,
                scheme: key_pair.scheme().to_string(),
                server: file.server_url.clone(),
                oracle: wk.oracle_did.to_string(),
            });
        }
        Ok(Self {
            server,
            livekit_url: file.livekit.url.clone().unwrap_or(wk.livekit_url),
            livekit: ApiCredentials::new(file.livekit.api_key.clone(), lk_secret.as_str()),
            agent_name: wk.agent_name,
            oracle_did: wk.oracle_did,
            key_pair: Arc::new(key_pair),
            max_calls: file.max_calls.max(1),
            drain_timeout: Duration::from_secs(file.drain_timeout_secs),
            user_join_timeout: Duration::from_secs(file.user_join_timeout_secs.max(1)),
            accept_legacy_envelopes: file.accept_legacy_envelopes,
            opus_complexity: file.opus_complexity.map(|c| c.min(10)),
        })
    }
}

/// Loads a PKCS#8 PEM private key, warning when other users can read the file.
///
/// # Errors
/// [`ConfigError::Key`].
pub fn load_key(path: &Path) -> Result<OracleKeyPair, ConfigError> {
    let err = |reason: String| ConfigError::Key {
        path: path.display().to_string(),
        reason,
    };
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt as _;
        let meta = std::fs::metadata(path).map_err(|e| err(e.to_string()))?;
        if meta.permissions().mode() & 0o077 != 0 {
            tracing::warn!(path = %path.display(), "private key file is readable by other users; chmod 600 it");
        }
    }
    let pem = Zeroizing::new(std::fs::read_to_string(path).map_err(|e| err(e.to_string()))?);
    OracleKeyPair::from_pkcs8_pem(&pem).map_err(|e| err(e.to_string()))
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::panic)]
    use super::*;

    #[test]
    fn secrets_come_from_the_variable_or_its_file_and_never_both() {
        let dir = std::env::temp_dir().join(format!("oc-agent-secret-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let f = dir.join("s");
        std::fs::write(&f, "from-file\n").unwrap();
        let fp = f.display().to_string();
        let v = secret(&|k| (k == "S").then(|| "direct".to_owned()), "S").unwrap();
        assert_eq!(v.as_str(), "direct");
        let v = secret(&|k| (k == "S_FILE").then(|| fp.clone()), "S").unwrap();
        assert_eq!(v.as_str(), "from-file");
        let both = secret(&|_| Some(fp.clone()), "S").unwrap_err().to_string();
        assert!(both.contains("both set"), "{both}");
        let none = secret(&|_| None, "S").unwrap_err().to_string();
        assert!(none.contains("S is not set"), "{none}");
        let empty = secret(&|k| (k == "S").then(|| "  ".to_owned()), "S").unwrap_err();
        assert!(empty.to_string().contains("not set"));
        std::fs::write(&f, "\n").unwrap();
        let e = secret(&|k| (k == "S_FILE").then(|| fp.clone()), "S").unwrap_err();
        assert!(e.to_string().contains("empty"), "{e}");
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn unknown_settings_are_refused_with_their_name() {
        let e = toml::from_str::<FileConfig>(
            "server_url='x'\noracle_key_file='k'\nmax_cals=3\n[livekit]\napi_key='k'",
        )
        .unwrap_err()
        .to_string();
        assert!(e.contains("max_cals"), "{e}");
    }
}

//! The agent's configuration: a small TOML file, secrets from the environment or files, and
//! the rest discovered from the oracle-calls server's `/.well-known/oracle-calls`.

use std::path::{Path, PathBuf};
use std::time::Duration;

use std::sync::Arc;

use oracle_calls_crypto::{OracleKeyPair, PrekeySigningKey};
use oracle_calls_proto::{Did, WellKnown};
use oracle_calls_rtc::token::ApiCredentials;
use reqwest::Url;
use serde::Deserialize;
use zeroize::Zeroizing;

use crate::prekeys::{PrekeyStore, StockPolicy};
use crate::{HeldKeys, ServerApi};

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
    /// A URL the agent sends its secrets to (its API key to the server, its worker token to
    /// LiveKit) is plain `http://` or `ws://` to a host other than loopback: anyone on the
    /// path could take them.
    #[error(
        "{setting} = {url} is not encrypted: use https:// or wss:// (plain http:// and ws:// \
         are allowed to loopback hosts only)"
    )]
    InsecureUrl {
        /// Where the URL comes from (`server_url`, `[livekit] url`, the server's well-known).
        setting: &'static str,
        /// The URL.
        url: String,
    },
    /// A URL that does not parse, or has another scheme.
    #[error("{setting} = {url}: {reason}")]
    BadUrl {
        /// Where the URL comes from.
        setting: &'static str,
        /// The URL.
        url: String,
        /// What is wrong.
        reason: String,
    },
    /// A setting is out of its range.
    #[error("{setting} = {value}: {reason}")]
    OutOfRange {
        /// The setting.
        setting: &'static str,
        /// Its value.
        value: u64,
        /// The range.
        reason: &'static str,
    },
    /// The oracle's key-transparency record does not verify, cannot be fetched, or the server
    /// or this agent's keys disagree with it.
    #[error("key transparency: {0}")]
    KeyTransparency(String),
    /// The prekey settings do not fit what the server publishes (see `[prekeys]`).
    #[error("[prekeys]: {0}")]
    Prekeys(String),
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
/// server_url = "https://oracle.example.org"
/// oracle_key_file = "/etc/oracle-calls/oracle.pem"
/// # During a key rotation, the other keys this agent holds (each must be published too):
/// oracle_key_files = ["/etc/oracle-calls/oracle-next.pem"]
/// max_calls = 16
/// [livekit]
/// api_key = "devkey"
/// # Forward secrecy (docs/PROTOCOL.md §13): where the prekeys' private halves live, and the
/// # key that signs them (only the process that keeps the server stocked needs it).
/// [prekeys]
/// store_dir = "/var/lib/oracle-calls/prekeys"
/// signing_key_file = "/etc/oracle-calls/prekey-signing.pem"
/// ```
///
/// Secrets are read from the environment, directly or from a file named by `<VAR>_FILE`:
/// `ORACLE_CALLS_AGENT_API_KEY` (the key `oracle-calls apikey create` printed) and
/// `ORACLE_CALLS_LIVEKIT_API_SECRET` (the LiveKit API key's secret, to sign the worker token).
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileConfig {
    /// The oracle-calls server: `https://`, or `http://` to a loopback host only.
    pub server_url: String,
    /// The oracle's PKCS#8 PEM private key.
    pub oracle_key_file: PathBuf,
    /// More private keys this agent holds, e.g. the old and the new key during a rotation.
    /// Each call's envelope is opened with the key it names; every key must be one the server
    /// publishes.
    #[serde(default)]
    pub oracle_key_files: Vec<PathBuf>,
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
    /// (`oracle-lab bench opus`).
    #[serde(default)]
    pub opus_complexity: Option<u8>,
    /// Wait at the server for calls it hands out directly (`POST /agent/jobs/next`, default
    /// on): a call then reaches this agent without LiveKit's dispatch and its node-choosing
    /// wait. LiveKit's dispatch is served either way.
    #[serde(default = "default_direct_dispatch")]
    pub direct_dispatch: bool,
    /// The oracle's first frame waits until the user has been in the room this long (default
    /// 170 ms; 0 sends at once). livekit-server holds back a subscriber's renegotiation for
    /// 150 ms when its peer connection negotiated in the last 150 ms (as one that just joined
    /// did), and offers a track within 10 ms otherwise: a track that reaches the room after
    /// that window reaches the user sooner than one published earlier (docs/BENCHMARKS.md,
    /// "Call setup with direct dispatch").
    #[serde(default = "default_first_frame_hold")]
    pub first_frame_hold_ms: u64,
    /// LiveKit settings.
    pub livekit: LiveKitSection,
    /// Prekeys (forward secrecy). Required when the server publishes a `prekeySigningKey`.
    #[serde(default)]
    pub prekeys: Option<PrekeysSection>,
    /// Key transparency: at start the agent verifies the oracle's record in this directory
    /// and refuses to run unless the server describes the oracle as the record does.
    #[serde(default)]
    pub key_transparency: Option<KtSection>,
    /// The speaking oracle's engines and turn-taking (`oracle-calls agent --oracle speech`).
    #[serde(default)]
    pub speech: Option<oracle_calls_speech::config::SpeechSection>,
}

/// `[key_transparency]` of [`FileConfig`].
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct KtSection {
    /// The directory service (`https://`, or `http://` to a loopback host only).
    pub url: String,
    /// The directory's public key (the JSON `oracle-calls kt keygen` prints).
    pub public_key_file: PathBuf,
}

/// `[prekeys]` of [`FileConfig`].
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PrekeysSection {
    /// The key holder's store of prekey private halves (a directory, 0700). Agent processes of
    /// one host may share it; each prekey opens in exactly one of them.
    pub store_dir: PathBuf,
    /// The prekey signing key (PKCS#8 PEM, `oracle-calls prekey keygen`). Set: this process
    /// keeps the server stocked with prekeys it makes, signs and stores. Its public half must
    /// be the server's `prekeySigningKey`.
    #[serde(default)]
    pub signing_key_file: Option<PathBuf>,
    /// Publish more one-time prekeys when fewer than this are left (default 20).
    #[serde(default = "default_low_water")]
    pub low_water: u64,
    /// How many one-time prekeys to keep published (default 100, at most 1000).
    #[serde(default = "default_target")]
    pub target: u64,
    /// Replace the last-resort prekey after this many seconds (default 7 days).
    #[serde(default = "default_last_resort_age")]
    pub last_resort_max_age_secs: u64,
}

fn default_low_water() -> u64 {
    20
}
fn default_target() -> u64 {
    100
}
fn default_last_resort_age() -> u64 {
    7 * 24 * 3600
}

/// The prekeys an agent opens and, with the signing key, keeps stocked.
#[derive(Clone, Debug)]
pub struct PrekeyConfig {
    /// The key holder's store.
    pub store: Arc<PrekeyStore>,
    /// The signing key, when this process keeps the server stocked.
    pub signer: Option<Arc<PrekeySigningKey>>,
    /// How the stock is kept.
    pub policy: StockPolicy,
}

/// `[livekit]` of [`FileConfig`].
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LiveKitSection {
    /// The API key the worker token is issued under (its secret comes from the environment).
    pub api_key: String,
    /// Overrides the signaling URL the server publishes (`wss://`, or `ws://` to a loopback
    /// host only).
    #[serde(default)]
    pub url: Option<String>,
}

fn default_direct_dispatch() -> bool {
    true
}

fn default_max_calls() -> usize {
    16
}
fn default_drain() -> u64 {
    30
}
/// The longest `first_frame_hold_ms`: a longer one is a misreading of the setting.
const MAX_FIRST_FRAME_HOLD_MS: u64 = 1000;

fn default_first_frame_hold() -> u64 {
    FileConfig::DEFAULT_FIRST_FRAME_HOLD_MS
}

fn default_user_wait() -> u64 {
    30
}

impl FileConfig {
    /// The default `first_frame_hold_ms`.
    pub const DEFAULT_FIRST_FRAME_HOLD_MS: u64 = 170;

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
    /// The oracle's key pairs this agent holds (several during a key rotation).
    pub keys: HeldKeys,
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
    /// See [`FileConfig::prekeys`].
    pub prekeys: Option<PrekeyConfig>,
    /// See [`FileConfig::direct_dispatch`].
    pub direct_dispatch: bool,
    /// See [`FileConfig::first_frame_hold_ms`].
    pub first_frame_hold: Duration,
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
        require_encrypted_url("server_url", &file.server_url, "https", "http")?;
        if file.first_frame_hold_ms > MAX_FIRST_FRAME_HOLD_MS {
            return Err(ConfigError::OutOfRange {
                setting: "first_frame_hold_ms",
                value: file.first_frame_hold_ms,
                reason: "at most 1000 (the hold only has to outlast LiveKit's 150 ms window)",
            });
        }
        if let Some(url) = &file.livekit.url {
            require_encrypted_url("[livekit] url", url, "wss", "ws")?;
        }
        let mut loaded = vec![load_key(&file.oracle_key_file)?];
        for path in &file.oracle_key_files {
            loaded.push(load_key(path)?);
        }
        let keys = HeldKeys::new(loaded).ok_or_else(|| ConfigError::Key {
            path: file.oracle_key_file.display().to_string(),
            reason: "no key".to_owned(),
        })?;
        let api_key = secret(env, "ORACLE_CALLS_AGENT_API_KEY")?;
        let lk_secret = secret(env, "ORACLE_CALLS_LIVEKIT_API_SECRET")?;
        let server = ServerApi::new(&file.server_url, api_key)
            .map_err(|e| ConfigError::Server(e.to_string()))?;
        let wk = server
            .well_known()
            .await
            .map_err(|e| ConfigError::Server(e.to_string()))?;
        every_key_is_published(&keys, &wk, &file.server_url)?;
        if let Some(kt) = &file.key_transparency {
            crate::kt::check(kt, &wk, &keys).await?;
        }
        let prekeys = prekey_config(file.prekeys.as_ref(), &wk)?;
        let livekit_url = match &file.livekit.url {
            Some(url) => url.clone(),
            None => {
                require_encrypted_url(
                    "livekitUrl (the server's well-known)",
                    &wk.livekit_url,
                    "wss",
                    "ws",
                )?;
                wk.livekit_url
            }
        };
        Ok(Self {
            server,
            livekit_url,
            livekit: ApiCredentials::new(file.livekit.api_key.clone(), lk_secret.as_str()),
            agent_name: wk.agent_name,
            oracle_did: wk.oracle_did,
            keys,
            max_calls: file.max_calls.max(1),
            drain_timeout: Duration::from_secs(file.drain_timeout_secs),
            user_join_timeout: Duration::from_secs(file.user_join_timeout_secs.max(1)),
            accept_legacy_envelopes: file.accept_legacy_envelopes,
            opus_complexity: file.opus_complexity.map(|c| c.min(10)),
            prekeys,
            direct_dispatch: file.direct_dispatch,
            first_frame_hold: Duration::from_millis(file.first_frame_hold_ms),
        })
    }
}

/// The prekey settings, checked against the server: an oracle that publishes a prekey signing
/// key gets prekey envelopes, so the agent needs the store; a signing key must be the one the
/// server publishes.
///
/// # Errors
/// [`ConfigError::Prekeys`], [`ConfigError::Key`].
fn prekey_config(
    section: Option<&PrekeysSection>,
    wk: &WellKnown,
) -> Result<Option<PrekeyConfig>, ConfigError> {
    let Some(section) = section else {
        return match &wk.prekey_signing_key {
            Some(k) => Err(ConfigError::Prekeys(format!(
                "the server publishes the prekey signing key {k}, so callers seal to prekeys; \
                 set [prekeys] store_dir to the key holder's store"
            ))),
            None => Ok(None),
        };
    };
    let store =
        PrekeyStore::open(&section.store_dir).map_err(|e| ConfigError::Prekeys(e.to_string()))?;
    let signer = match &section.signing_key_file {
        None => None,
        Some(path) => {
            let err = |reason: String| ConfigError::Key {
                path: path.display().to_string(),
                reason,
            };
            let pem =
                Zeroizing::new(std::fs::read_to_string(path).map_err(|e| err(e.to_string()))?);
            let key = PrekeySigningKey::from_pkcs8_pem(&pem).map_err(|e| err(e.to_string()))?;
            let ours = key.public_key().to_string();
            if wk.prekey_signing_key.as_deref() != Some(ours.as_str()) {
                return Err(ConfigError::Prekeys(format!(
                    "signing_key_file's public key is {ours} but the server publishes {}; \
                     clients would refuse every prekey it signs",
                    wk.prekey_signing_key.as_deref().unwrap_or("none")
                )));
            }
            Some(Arc::new(key))
        }
    };
    if section.target == 0 || section.target > 1000 || section.low_water > section.target {
        return Err(ConfigError::Prekeys(format!(
            "need 1 <= target <= 1000 and low_water <= target (target {}, low_water {})",
            section.target, section.low_water
        )));
    }
    Ok(Some(PrekeyConfig {
        store: Arc::new(store),
        signer,
        policy: StockPolicy {
            low_water: section.low_water,
            target: section.target,
            last_resort_max_age: Duration::from_secs(section.last_resort_max_age_secs.max(60)),
        },
    }))
}

/// Each key we hold must be one the server publishes: otherwise callers could seal to a key
/// no agent holds, or we hold a key the server would not stand behind.
///
/// # Errors
/// [`ConfigError::KeyNotPublished`] naming the first key that is not.
fn every_key_is_published(
    keys: &HeldKeys,
    wk: &WellKnown,
    server_url: &str,
) -> Result<(), ConfigError> {
    for key_pair in keys.iter() {
        let ours = key_pair.key_id().to_string();
        if !wk
            .keys
            .iter()
            .any(|k| k.key_id == ours && k.scheme == key_pair.scheme())
        {
            return Err(ConfigError::KeyNotPublished {
                key_id: ours,
                scheme: key_pair.scheme().to_string(),
                server: server_url.to_owned(),
                oracle: wk.oracle_did.to_string(),
            });
        }
    }
    Ok(())
}

/// Refuses a URL that would carry secrets in the clear: `plain` (`http`, `ws`) is accepted only
/// to a loopback host (`localhost`, 127.0.0.0/8, `::1`), `encrypted` (`https`, `wss`) always.
///
/// # Errors
/// [`ConfigError::InsecureUrl`], [`ConfigError::BadUrl`].
pub(crate) fn require_encrypted_url(
    setting: &'static str,
    url: &str,
    encrypted: &str,
    plain: &str,
) -> Result<(), ConfigError> {
    let bad = |reason: String| ConfigError::BadUrl {
        setting,
        url: url.to_owned(),
        reason,
    };
    let parsed = Url::parse(url).map_err(|e| bad(e.to_string()))?;
    let scheme = parsed.scheme();
    if scheme == encrypted {
        return Ok(());
    }
    if scheme != plain {
        return Err(bad(format!(
            "expected {encrypted}:// (or {plain}:// to loopback)"
        )));
    }
    if oracle_calls_proto::is_loopback_host(parsed.host_str().unwrap_or_default()) {
        Ok(())
    } else {
        Err(ConfigError::InsecureUrl {
            setting,
            url: url.to_owned(),
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

    #[tokio::test]
    async fn the_first_frame_hold_defaults_and_is_bounded() {
        let text = "server_url = \"http://127.0.0.1:1\"\noracle_key_file = \"k\"\n[livekit]\napi_key = \"k\"\n";
        let mut file: FileConfig = toml::from_str(text).unwrap();
        assert_eq!(file.first_frame_hold_ms, 170);
        file.first_frame_hold_ms = 1001;
        match AgentConfig::resolve(&file, &|_| None).await {
            Err(e @ ConfigError::OutOfRange { .. }) => {
                let e = e.to_string();
                assert!(e.contains("first_frame_hold_ms = 1001"), "{e}");
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn secrets_travel_encrypted_except_to_loopback() {
        for ok in [
            "https://oracle.example.org",
            "http://127.0.0.1:18080",
            "http://127.8.9.10",
            "http://localhost:8080/",
            "http://LOCALHOST",
            "http://[::1]:18080",
        ] {
            require_encrypted_url("server_url", ok, "https", "http").unwrap();
        }
        for ok in [
            "wss://lk.example.org",
            "ws://127.0.0.1:17880",
            "ws://[::1]:7880",
        ] {
            require_encrypted_url("[livekit] url", ok, "wss", "ws").unwrap();
        }
        for insecure in [
            "http://oracle.example.org",
            "http://10.0.0.5:18080",
            "http://[::ffff:10.0.0.5]",
            "http://localhost.evil.example",
            "http://127.0.0.1.nip.io",
        ] {
            match require_encrypted_url("server_url", insecure, "https", "http") {
                Err(ConfigError::InsecureUrl { setting, url }) => {
                    assert_eq!((setting, url.as_str()), ("server_url", insecure));
                }
                other => panic!("{insecure}: {other:?}"),
            }
        }
        match require_encrypted_url("[livekit] url", "ws://lk.example.org", "wss", "ws") {
            Err(e @ ConfigError::InsecureUrl { .. }) => {
                assert!(e.to_string().contains("wss://"), "{e}");
            }
            other => panic!("{other:?}"),
        }
        for bad in ["ftp://127.0.0.1", "wss://x.org", "not a url"] {
            assert!(
                matches!(
                    require_encrypted_url("server_url", bad, "https", "http"),
                    Err(ConfigError::BadUrl { .. })
                ),
                "{bad}"
            );
        }
    }

    #[test]
    fn every_key_held_must_be_published() {
        use oracle_calls_crypto::KeyScheme;
        use rand::SeedableRng as _;
        let mut rng = rand::rngs::StdRng::seed_from_u64(9);
        let a = OracleKeyPair::generate(KeyScheme::HpkeP256, &mut rng).unwrap();
        let b = OracleKeyPair::generate(KeyScheme::HpkeX25519, &mut rng).unwrap();
        let entry = |k: &OracleKeyPair| {
            serde_json::json!({"keyId": k.key_id().to_string(), "scheme": k.scheme().as_str(),
                               "publicKey": "AA"})
        };
        let wk = |keys: Vec<serde_json::Value>| -> WellKnown {
            serde_json::from_value(serde_json::json!({
                "oracleDid": "did:ixo:oracle", "matrixUserId": "@o:localhost",
                "agentName": "oracle-o", "livekitUrl": "wss://lk.example.org", "keys": keys
            }))
            .unwrap()
        };
        let (a_id, b_id) = (a.key_id().to_string(), b.key_id().to_string());
        let both = HeldKeys::new(vec![a, b]).unwrap();
        let (ea, eb) = {
            let mut it = both.iter();
            (entry(it.next().unwrap()), entry(it.next().unwrap()))
        };
        every_key_is_published(&both, &wk(vec![eb.clone(), ea.clone()]), "s").unwrap();
        match every_key_is_published(&both, &wk(vec![ea]), "s") {
            Err(ConfigError::KeyNotPublished { key_id, .. }) => assert_eq!(key_id, b_id),
            other => panic!("{other:?}"),
        }
        match every_key_is_published(&both, &wk(vec![eb]), "s") {
            Err(ConfigError::KeyNotPublished { key_id, .. }) => assert_eq!(key_id, a_id),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn a_second_key_file_is_optional_and_may_be_many() {
        let base = "server_url='https://o.example'\noracle_key_file='a.pem'\n";
        let one: FileConfig = toml::from_str(&format!("{base}[livekit]\napi_key='k'")).unwrap();
        assert!(one.oracle_key_files.is_empty());
        let two: FileConfig = toml::from_str(&format!(
            "{base}oracle_key_files=['b.pem','c.pem']\n[livekit]\napi_key='k'"
        ))
        .unwrap();
        assert_eq!(
            two.oracle_key_files,
            [PathBuf::from("b.pem"), PathBuf::from("c.pem")]
        );
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

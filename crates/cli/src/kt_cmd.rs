//! `oracle-calls kt …`: the key-transparency directory service (`kt serve`), its keys
//! (`kt keygen`), operator credentials (`kt token`) and the auditor (`kt audit`).
//!
//! The directory's secrets (the Ed25519 checkpoint signing key and the VRF key, 32 bytes each
//! as 64 hex characters) come from `ORACLE_CALLS_KT_SIGNING_KEY(_FILE)` and
//! `ORACLE_CALLS_KT_VRF_KEY(_FILE)`, never from argv or the config file.

mod audit;
mod http;

use std::io::Write as _;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use anyhow::{Context as _, bail};
use clap::Subcommand;
use oracle_calls_kt::{CheckpointSigningKey, DirectoryPublicKey, VrfSecretKey};
use oracle_calls_proto::Did;
use serde::Deserialize;
use zeroize::Zeroizing;

#[derive(Subcommand, Debug)]
pub enum KtCmd {
    /// Run the key-transparency directory: publish oracle records (with the oracle operator's
    /// token), serve lookups, histories, signed checkpoints and audit proofs. Keys come from
    /// ORACLE_CALLS_KT_SIGNING_KEY_FILE and ORACLE_CALLS_KT_VRF_KEY_FILE (or the variables
    /// without `_FILE`, 64 hex characters); a PostgreSQL URL with a password from
    /// ORACLE_CALLS_KT_DATABASE_URL.
    Serve {
        /// The directory's TOML config file.
        #[arg(long, env = "ORACLE_CALLS_KT_CONFIG")]
        config: PathBuf,
    },
    /// Generate the directory's signing and VRF keys into a directory (each 0600, never
    /// replacing a file) and print the public key JSON that clients and auditors configure
    /// (also written there as public-key.json).
    Keygen {
        /// Where to write signing.key, vrf.key and public-key.json.
        #[arg(long)]
        out_dir: PathBuf,
    },
    /// Make an operator token for one oracle: prints the token (give it to the oracle's
    /// operator) and the `[[publishers]]` entry for kt.toml, which holds only its SHA-256.
    Token {
        /// The oracle's DID the token may publish for.
        #[arg(long)]
        did: String,
    },
    /// Audit a directory: fetch its checkpoints and audit proofs, verify every checkpoint
    /// signature and that the tree only grew (akd append-only proofs) from one epoch to
    /// another. Exits non-zero on any failure.
    Audit {
        /// The directory's base URL, e.g. http://127.0.0.1:8470.
        #[arg(long)]
        url: String,
        /// The directory's public key JSON (as `kt keygen` printed it).
        #[arg(long)]
        public_key: PathBuf,
        /// The first epoch (the checkpoint already trusted).
        #[arg(long, default_value_t = 0)]
        from: u64,
        /// The last epoch (default: the directory's latest).
        #[arg(long)]
        to: Option<u64>,
    },
}

pub fn run(cmd: KtCmd) -> anyhow::Result<()> {
    match cmd {
        KtCmd::Serve { config } => {
            let config = Config::load(&config)?;
            let keys = DirectoryKeys::from_env(|k| std::env::var(k).ok())?;
            let rt = tokio::runtime::Runtime::new().context("starting the async runtime")?;
            rt.block_on(http::serve(config, keys))
        }
        KtCmd::Keygen { out_dir } => keygen(&out_dir),
        KtCmd::Token { did } => token(&did),
        KtCmd::Audit {
            url,
            public_key,
            from,
            to,
        } => {
            let text = std::fs::read_to_string(&public_key)
                .with_context(|| format!("reading {}", public_key.display()))?;
            let key: DirectoryPublicKey = serde_json::from_str(&text).with_context(|| {
                format!("{} is not a directory public key", public_key.display())
            })?;
            let rt = tokio::runtime::Runtime::new().context("starting the async runtime")?;
            rt.block_on(audit::run(&url, &key, from, to))
        }
    }
}

/// The service's config file (`kt.toml`). Holds no secret: operator tokens appear only as
/// their SHA-256.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// Where to listen (loopback by default: put TLS in front for other hosts).
    #[serde(default = "default_listen")]
    pub listen: SocketAddr,
    /// Where the SQLite file goes (when `database_url` is not set).
    #[serde(default = "default_data_dir")]
    pub data_dir: PathBuf,
    /// `sqlite:…` or `postgres:…`; default `sqlite://<data_dir>/kt.db?mode=rwc`. A URL with a
    /// password belongs in ORACLE_CALLS_KT_DATABASE_URL, which overrides this.
    #[serde(default)]
    database_url: Option<String>,
    /// The largest request body accepted (a publish).
    #[serde(default = "default_body_limit")]
    pub body_limit_bytes: usize,
    /// Who may publish: one entry per operator token, each scoped to one oracle DID.
    #[serde(default)]
    pub publishers: Vec<Publisher>,
    /// The homeservers whose users may publish their own person record (the devices they
    /// call from), proving who they are with a Matrix OpenID token that the homeserver
    /// confirms. None: people cannot publish.
    #[serde(default)]
    pub homeservers: Vec<Homeserver>,
    /// The most person-record publishes one user may make per hour (default 30); more get
    /// 429 with `Retry-After`.
    #[serde(default = "default_person_publishes_per_hour")]
    pub person_publishes_per_hour: u32,
}

/// A homeserver whose users may publish person records.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Homeserver {
    /// Its server name (the part of user ids after `:`).
    pub server_name: String,
    /// The base URL its federation API answers on (`/_matrix/federation/v1/openid/userinfo`);
    /// `https://`, or `http://` on loopback.
    pub url: String,
}

/// One operator credential: the SHA-256 of a bearer token, and the DID it may publish.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Publisher {
    /// The oracle's DID.
    pub did: Did,
    /// Lower-case hex SHA-256 of the token (`oracle-calls kt token` prints it).
    #[serde(deserialize_with = "hex32")]
    pub token_sha256: [u8; 32],
}

fn default_listen() -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], 8470))
}

fn default_data_dir() -> PathBuf {
    PathBuf::from("kt-data")
}

fn default_person_publishes_per_hour() -> u32 {
    30
}

fn default_body_limit() -> usize {
    64 * 1024
}

fn hex32<'de, D: serde::Deserializer<'de>>(d: D) -> Result<[u8; 32], D::Error> {
    let text = String::deserialize(d)?;
    let mut out = [0u8; 32];
    hex::decode_to_slice(text.trim(), &mut out)
        .map_err(|_| serde::de::Error::custom("expected 64 hex characters"))?;
    Ok(out)
}

impl Config {
    /// Reads and checks the config file, and applies ORACLE_CALLS_KT_DATABASE_URL.
    pub fn load(path: &Path) -> anyhow::Result<Self> {
        let text =
            std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
        let mut config: Self =
            toml::from_str(&text).with_context(|| format!("in {}", path.display()))?;
        if let Ok(url) = std::env::var("ORACLE_CALLS_KT_DATABASE_URL") {
            config.database_url = Some(url);
        }
        config
            .check()
            .with_context(|| format!("in {}", path.display()))?;
        Ok(config)
    }

    fn check(&self) -> anyhow::Result<()> {
        if self.body_limit_bytes < 1024 {
            bail!("body_limit_bytes must be at least 1024");
        }
        let mut hashes = std::collections::HashSet::new();
        for p in &self.publishers {
            if !hashes.insert(p.token_sha256) {
                bail!("two publishers have the same token_sha256");
            }
        }
        let mut names = std::collections::HashSet::new();
        for h in &self.homeservers {
            if h.server_name.is_empty() || !names.insert(h.server_name.as_str()) {
                bail!("each [[homeservers]] entry needs its own, non-empty server_name");
            }
            let url = reqwest::Url::parse(&h.url)
                .with_context(|| format!("homeserver {}: url {}", h.server_name, h.url))?;
            let host = url.host_str().unwrap_or_default();
            let loopback = host == "localhost"
                || host
                    .trim_matches(['[', ']'])
                    .parse::<std::net::IpAddr>()
                    .is_ok_and(|a| a.is_loopback());
            if url.scheme() != "https" && !(url.scheme() == "http" && loopback) {
                bail!(
                    "homeserver {}: the url must be https:// (http:// only on loopback)",
                    h.server_name
                );
            }
        }
        if self.person_publishes_per_hour == 0 && !self.homeservers.is_empty() {
            bail!("person_publishes_per_hour must be at least 1");
        }
        Ok(())
    }

    /// The store's URL (never logged: it may hold a password).
    pub fn database_url(&self) -> anyhow::Result<String> {
        if let Some(url) = &self.database_url {
            return Ok(url.clone());
        }
        std::fs::create_dir_all(&self.data_dir)
            .with_context(|| format!("creating {}", self.data_dir.display()))?;
        let path = self.data_dir.join("kt.db");
        let path = path
            .to_str()
            .context("data_dir must be valid UTF-8 for the SQLite URL")?;
        Ok(format!("sqlite://{path}?mode=rwc"))
    }
}

/// The directory's two secret keys, as read from the environment or files.
#[derive(Debug)]
pub struct DirectoryKeys {
    pub signing: CheckpointSigningKey,
    pub vrf: VrfSecretKey,
}

impl DirectoryKeys {
    pub fn from_env(lookup: impl Fn(&str) -> Option<String>) -> anyhow::Result<Self> {
        let signing = read_key(&lookup, "SIGNING_KEY")?;
        let vrf = read_key(&lookup, "VRF_KEY")?;
        Ok(Self {
            signing: CheckpointSigningKey::from_seed(signing)
                .context("ORACLE_CALLS_KT_SIGNING_KEY is not an Ed25519 seed")?,
            vrf: VrfSecretKey::from_bytes(vrf),
        })
    }
}

/// `ORACLE_CALLS_KT_<name>` (64 hex characters) or the file named by `…_FILE` (the same,
/// surrounding whitespace allowed). Errors never hold the key.
fn read_key(
    lookup: &impl Fn(&str) -> Option<String>,
    name: &str,
) -> anyhow::Result<Zeroizing<[u8; 32]>> {
    let var = format!("ORACLE_CALLS_KT_{name}");
    let text = Zeroizing::new(match (lookup(&var), lookup(&format!("{var}_FILE"))) {
        (Some(v), None) => v,
        (None, Some(path)) => {
            warn_if_readable_by_others(Path::new(&path));
            std::fs::read_to_string(&path).with_context(|| format!("reading {var}_FILE"))?
        }
        (None, None) => bail!("set {var}_FILE (or {var})"),
        (Some(_), Some(_)) => bail!("set only one of {var} and {var}_FILE"),
    });
    let mut key = Zeroizing::new([0u8; 32]);
    hex::decode_to_slice(text.trim(), key.as_mut())
        .map_err(|_| anyhow::anyhow!("{var} must be 64 hex characters"))?;
    Ok(key)
}

fn warn_if_readable_by_others(path: &Path) {
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt as _;
        if let Ok(meta) = std::fs::metadata(path)
            && meta.permissions().mode() & 0o077 != 0
        {
            tracing::warn!(path = %path.display(), "directory key file is readable by other users; chmod 600 it");
        }
    }
}

const SIGNING_KEY_FILE: &str = "signing.key";
const VRF_KEY_FILE: &str = "vrf.key";
const PUBLIC_KEY_FILE: &str = "public-key.json";

fn keygen(out_dir: &Path) -> anyhow::Result<()> {
    let signing = CheckpointSigningKey::generate().context("generating the signing key")?;
    let vrf = VrfSecretKey::generate().context("generating the VRF key")?;
    let public = DirectoryPublicKey::new(signing.public_key(), vrf.public_key()?)
        .context("the generated keys")?;
    let json = serde_json::to_string(&public).context("encoding the public key")?;

    std::fs::create_dir_all(out_dir).with_context(|| format!("creating {}", out_dir.display()))?;
    let paths = [SIGNING_KEY_FILE, VRF_KEY_FILE, PUBLIC_KEY_FILE].map(|f| out_dir.join(f));
    if let Some(taken) = paths.iter().find(|p| p.symlink_metadata().is_ok()) {
        bail!("{} already exists; nothing was written", taken.display());
    }
    let [signing_path, vrf_path, public_path] = &paths;
    let signing_hex = Zeroizing::new(format!("{}\n", hex::encode(signing.dangerous_seed())));
    let vrf_hex = Zeroizing::new(format!("{}\n", hex::encode(vrf.dangerous_bytes())));
    write_new(signing_path, signing_hex.as_bytes(), 0o600)?;
    write_new(vrf_path, vrf_hex.as_bytes(), 0o600)?;
    write_new(public_path, format!("{json}\n").as_bytes(), 0o644)?;
    eprintln!(
        "wrote {} and {} (0600) and {}; key id {}",
        signing_path.display(),
        vrf_path.display(),
        public_path.display(),
        public.key_id()
    );
    println!("{json}");
    Ok(())
}

/// Creates `path` (failing if anything has that name, even a dangling symlink) with `mode`,
/// writes and syncs it; a partly written file is removed.
fn write_new(path: &Path, bytes: &[u8], mode: u32) -> anyhow::Result<()> {
    let mut opts = std::fs::OpenOptions::new();
    opts.write(true).create_new(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt as _;
        opts.mode(mode);
    }
    #[cfg(not(unix))]
    let _ = mode;
    let mut file = opts.open(path).with_context(|| {
        format!(
            "creating {} (it must not exist; nothing is replaced)",
            path.display()
        )
    })?;
    if let Err(e) = file.write_all(bytes).and_then(|()| file.sync_all()) {
        drop(file);
        let _ = std::fs::remove_file(path);
        return Err(e).with_context(|| format!("writing {}", path.display()));
    }
    Ok(())
}

fn token(did: &str) -> anyhow::Result<()> {
    use base64::Engine as _;
    use rand::RngExt as _;
    let did = Did::parse(did).map_err(|_| anyhow::anyhow!("`{did}` is not a DID"))?;
    let raw: Zeroizing<[u8; 32]> = Zeroizing::new(rand::rng().random());
    let token = Zeroizing::new(format!(
        "ockt_{}",
        base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(raw.as_ref())
    ));
    eprintln!("the operator's token for {did} (shown once; kt.toml keeps only its hash):");
    println!("{}", token.as_str());
    eprintln!("add to kt.toml:");
    println!(
        "[[publishers]]\ndid = \"{did}\"\ntoken_sha256 = \"{}\"",
        hex::encode(http::token_sha256(&token))
    );
    Ok(())
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use std::collections::HashMap;

    use super::*;

    #[test]
    fn keys_come_from_env_or_files_and_errors_hold_no_key() {
        let hex_key = "ab".repeat(32);
        let env: HashMap<&str, String> = [
            ("ORACLE_CALLS_KT_SIGNING_KEY", hex_key.clone()),
            ("ORACLE_CALLS_KT_VRF_KEY", format!("{hex_key}\n")),
        ]
        .into();
        let keys = DirectoryKeys::from_env(|k| env.get(k).cloned()).unwrap();
        assert_eq!(keys.vrf.dangerous_bytes(), &[0xab; 32]);
        assert!(!format!("{keys:?}").contains(&hex_key));

        let short: HashMap<&str, String> = [
            ("ORACLE_CALLS_KT_SIGNING_KEY", "abcd".into()),
            ("ORACLE_CALLS_KT_VRF_KEY", hex_key.clone()),
        ]
        .into();
        let e = format!(
            "{:#}",
            DirectoryKeys::from_env(|k| short.get(k).cloned()).unwrap_err()
        );
        assert!(e.contains("64 hex") && !e.contains("abcd"), "{e}");
        let both: HashMap<&str, String> = [
            ("ORACLE_CALLS_KT_SIGNING_KEY", hex_key.clone()),
            ("ORACLE_CALLS_KT_SIGNING_KEY_FILE", "/nonexistent".into()),
        ]
        .into();
        assert!(DirectoryKeys::from_env(|k| both.get(k).cloned()).is_err());
        assert!(DirectoryKeys::from_env(|_| None).is_err());
    }

    #[test]
    fn config_defaults_are_safe_and_tokens_are_hashes() {
        let c: Config = toml::from_str("").unwrap();
        assert!(c.listen.ip().is_loopback());
        assert_eq!(c.body_limit_bytes, 64 * 1024);
        let entry = format!(
            "[[publishers]]\ndid = \"did:ixo:oracle1\"\ntoken_sha256 = \"{}\"\n",
            "00".repeat(32)
        );
        let c: Config = toml::from_str(&entry).unwrap();
        assert_eq!(c.publishers.len(), 1);
        assert!(c.check().is_ok());
        let twice: Config = toml::from_str(&format!("{entry}{entry}")).unwrap();
        assert!(twice.check().is_err());
        assert!(toml::from_str::<Config>("token = \"x\"").is_err());
        assert!(
            toml::from_str::<Config>(
                "[[publishers]]\ndid = \"did:ixo:oracle1\"\ntoken_sha256 = \"abc\""
            )
            .is_err()
        );
        assert!(
            toml::from_str::<Config>(&format!(
                "[[publishers]]\ndid = \"not a did\"\ntoken_sha256 = \"{}\"",
                "00".repeat(32)
            ))
            .is_err()
        );
    }

    #[test]
    fn homeservers_must_be_named_once_and_reached_securely() {
        let c: Config = toml::from_str("").unwrap();
        assert!(c.homeservers.is_empty(), "people cannot publish by default");
        assert_eq!(c.person_publishes_per_hour, 30);
        let hs = |name: &str, url: &str| {
            format!("[[homeservers]]\nserver_name = \"{name}\"\nurl = \"{url}\"\n")
        };
        let checked = |text: String| toml::from_str::<Config>(&text).unwrap().check();
        for good in [
            hs("example.org", "https://matrix.example.org"),
            hs("localhost", "http://127.0.0.1:8008"),
            hs("localhost", "http://[::1]:8008"),
            hs("localhost", "http://localhost:8008/"),
            format!("{}{}", hs("a", "https://a"), hs("b", "https://b")),
        ] {
            assert!(checked(good.clone()).is_ok(), "{good}");
        }
        for bad in [
            hs("example.org", "http://matrix.example.org"),
            hs("example.org", "ftp://matrix.example.org"),
            hs("example.org", "not a url"),
            hs("", "https://a"),
            format!("{}{}", hs("a", "https://a"), hs("a", "https://b")),
            format!("person_publishes_per_hour = 0\n{}", hs("a", "https://a")),
        ] {
            assert!(checked(bad.clone()).is_err(), "{bad}");
        }
        assert!(toml::from_str::<Config>(&format!("{}extra = 1\n", hs("a", "https://a"))).is_err());
    }
}

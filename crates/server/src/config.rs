//! Server configuration: a TOML file, environment overrides, and secrets from files or the
//! environment (never argv, never inside this `Debug`-able struct).

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use oracle_calls_proto::{Did, OracleKeyInfo};
use serde::Deserialize;

use crate::{Error, Result, Secret};

mod cluster;
mod database_url;

pub use cluster::ClusterConfig;
pub use database_url::DatabaseUrl;

/// Non-secret configuration. Every field has a safe default except the oracle's identity.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// Where the HTTP API listens.
    #[serde(default = "default_listen")]
    pub listen: SocketAddr,
    /// Directory for the SQLite store and the Matrix bot's crypto store.
    #[serde(default = "default_data_dir")]
    pub data_dir: PathBuf,
    /// `sqlite://…` or `postgres://…`; default: `sqlite://<data_dir>/oracle-calls.sqlite3`.
    /// Keep a PostgreSQL password out of it: `ORACLE_CALLS_DATABASE_PASSWORD(_FILE)` puts it
    /// in at connect time (`postgres://user@host/db`).
    #[serde(default)]
    pub database_url: Option<DatabaseUrl>,
    /// Largest accepted request body, in bytes.
    #[serde(default = "default_body_limit")]
    pub body_limit_bytes: usize,
    /// Time limit of one request, in seconds.
    #[serde(default = "default_request_timeout")]
    pub request_timeout_secs: u64,
    /// How long a request waits for a database connection, in milliseconds, before it is
    /// answered `503 unavailable` ("the database is unavailable"). A database that restarts
    /// within this time only delays requests; one that stays away longer is reported.
    #[serde(default = "default_store_wait")]
    pub store_wait_ms: u64,
    /// How long a looked-up API key record is reused before the store is asked again, in
    /// seconds: a key revoked with `oracle-calls apikey revoke` stops working within this
    /// time. 0 asks the store on every request.
    #[serde(default = "default_api_key_cache")]
    pub api_key_cache_secs: u64,
    /// The oracle this server fronts.
    pub oracle: OracleConfig,
    /// The homeserver and the oracle's bot account.
    pub matrix: MatrixConfig,
    /// The LiveKit server.
    pub livekit: LiveKitConfig,
    /// Checks of `POST /calls/{callId}/sync`.
    #[serde(default)]
    pub validation: ValidationConfig,
    /// Which web pages (origins) may call the API from a browser.
    #[serde(default)]
    pub cors: CorsConfig,
    /// Rate and concurrency limits against abuse.
    #[serde(default)]
    pub limits: LimitsConfig,
    /// Several servers of this oracle on one PostgreSQL database.
    #[serde(default)]
    pub cluster: ClusterConfig,
}

/// A rate: `burst` requests at once, then `per_sec` on average. `per_sec = 0` turns the limit
/// off.
#[derive(Clone, Copy, Debug, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Rate {
    /// Sustained requests per second.
    pub per_sec: f64,
    /// Requests allowed at once after a quiet spell.
    pub burst: u32,
}

/// `[limits]`: what one address, user or agent key may ask of the server, and what the server
/// asks of the homeserver on their behalf. Every refusal is 429 with `Retry-After` (503 when
/// the server as a whole is saturated). The defaults leave room for a busy client (a call's
/// setup is 3–5 requests) and stop floods.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct LimitsConfig {
    /// Requests per client address, on every route (default 50/s, burst 200).
    pub per_address: Rate,
    /// Requests per Matrix user, on the users' routes (default 10/s, burst 60).
    pub per_user: Rate,
    /// Requests per agent API key, on the agents' routes (default 100/s, burst 400).
    pub per_agent_key: Rate,
    /// Access tokens not in the cache (each costs a homeserver request) per client address
    /// (default 2/s, burst 20).
    pub token_checks_per_address: Rate,
    /// Homeserver token checks in flight at once, for the whole server (default 32).
    pub max_concurrent_token_checks: usize,
    /// How long a request waits for one of those slots before a 503, in ms (default 2000).
    pub token_check_queue_ms: u64,
    /// How long a token the homeserver refused is refused again without asking it, in
    /// seconds (default 60).
    pub failed_token_cache_secs: u64,
    /// Proxies whose `X-Forwarded-For` names the client (default none: the TCP peer counts).
    pub trusted_proxies: Vec<std::net::IpAddr>,
    /// Most addresses, users and keys tracked per limit; the least recently seen go first
    /// (default 100,000).
    pub max_tracked_keys: usize,
    /// Most rooms the bot shares with one user; later invites from that user are declined
    /// (default 20).
    pub max_rooms_per_user: usize,
    /// How long a sync waits for the room key of a call event the bot cannot decrypt yet, in
    /// ms (default 6000); one such wait per user at a time.
    pub key_wait_ms: u64,
    /// Most LiveKit rooms one user may hold claimed for an early join at once (claims younger
    /// than `livekit.room_claim_ttl_secs` that no call took yet); later claims are 429
    /// (default 4).
    pub max_open_room_claims: usize,
    /// The limits whose buckets all servers of the oracle share through PostgreSQL, so that
    /// N servers behind a balancer allow what one would (default `["per_user"]`; `[]` keeps
    /// every bucket in its process). A shared bucket costs one database statement per
    /// request, taken after the process's own bucket of the same limit let it through. No
    /// effect on SQLite (one server).
    pub cluster_wide: Vec<SharedLimit>,
}

/// A limit of `[limits]` whose buckets can be shared by the servers of an oracle.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum SharedLimit {
    /// `per_user`.
    PerUser,
    /// `per_agent_key`.
    PerAgentKey,
}

impl SharedLimit {
    /// The name in the config and in the shared table's `scope`.
    pub fn name(self) -> &'static str {
        match self {
            Self::PerUser => "per_user",
            Self::PerAgentKey => "per_agent_key",
        }
    }
}

impl Default for LimitsConfig {
    fn default() -> Self {
        Self {
            per_address: Rate {
                per_sec: 50.0,
                burst: 200,
            },
            per_user: Rate {
                per_sec: 10.0,
                burst: 60,
            },
            per_agent_key: Rate {
                per_sec: 100.0,
                burst: 400,
            },
            token_checks_per_address: Rate {
                per_sec: 2.0,
                burst: 20,
            },
            max_concurrent_token_checks: 32,
            token_check_queue_ms: 2000,
            failed_token_cache_secs: 60,
            trusted_proxies: Vec::new(),
            max_tracked_keys: 100_000,
            max_rooms_per_user: 20,
            key_wait_ms: 6000,
            max_open_room_claims: 4,
            cluster_wide: vec![SharedLimit::PerUser],
        }
    }
}

impl LimitsConfig {
    fn check(&self) -> Result<()> {
        for (name, r) in [
            ("per_address", self.per_address),
            ("per_user", self.per_user),
            ("per_agent_key", self.per_agent_key),
            ("token_checks_per_address", self.token_checks_per_address),
        ] {
            if !r.per_sec.is_finite() || r.per_sec < 0.0 || (r.per_sec > 0.0 && r.burst == 0) {
                return Err(Error::Config(format!(
                    "limits.{name}: per_sec must be a number >= 0 (0 turns it off) and burst >= 1"
                )));
            }
        }
        if self.max_concurrent_token_checks == 0
            || self.max_tracked_keys == 0
            || self.max_rooms_per_user == 0
            || self.max_open_room_claims == 0
        {
            return Err(Error::Config(
                "limits.max_concurrent_token_checks, max_tracked_keys, max_rooms_per_user and \
                 max_open_room_claims must be positive"
                    .into(),
            ));
        }
        if self.key_wait_ms > 60_000 {
            return Err(Error::Config("limits.key_wait_ms is at most 60000".into()));
        }
        Ok(())
    }
}

/// Cross-origin access for browser clients (a web page on another origin than this server,
/// e.g. the browser SDK's demo page). Off unless origins are listed: the default allows no
/// page to read the API's answers.
#[derive(Clone, Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CorsConfig {
    /// Exact origins, `scheme://host[:port]` (no path, no trailing slash, no wildcard), each
    /// allowed `GET`/`POST` with the `authorization` and `content-type` headers and no
    /// cookies.
    #[serde(default)]
    pub allowed_origins: Vec<String>,
    /// How long a browser may cache a preflight answer, in seconds (default 600).
    #[serde(default)]
    pub max_age_secs: Option<u64>,
}

impl CorsConfig {
    /// Checks one origin's form: `http`/`https`, a host, an optional port, nothing else.
    ///
    /// # Errors
    /// [`Error::Config`] naming the origin and what is wrong with it.
    pub fn check_origin(origin: &str) -> Result<()> {
        let bad = |why: &str| {
            Err(Error::Config(format!(
                "cors.allowed_origins: {origin:?} {why} (write scheme://host[:port], e.g. \
                 https://app.example.org)"
            )))
        };
        let Some((scheme, rest)) = origin.split_once("://") else {
            return bad("has no scheme");
        };
        if scheme != "http" && scheme != "https" {
            return bad("is not http or https");
        }
        if rest.is_empty() {
            return bad("has no host");
        }
        if rest.contains(['/', '?', '#', '@', '*', ' ']) || origin.chars().any(char::is_control) {
            return bad("is not an origin (a path, query, user, wildcard or space)");
        }
        if rest.chars().any(|c| c.is_ascii_uppercase()) {
            return bad("has upper-case letters (browsers send origins in lower case)");
        }
        let host = match rest.rsplit_once(':') {
            Some((host, port)) if !rest.ends_with(']') => {
                if port.is_empty() || port.parse::<u16>().is_err() {
                    return bad("has a bad port");
                }
                host
            }
            _ => rest,
        };
        if host.is_empty() {
            return bad("has no host");
        }
        Ok(())
    }

    /// The preflight cache lifetime in effect.
    pub fn max_age(&self) -> Duration {
        Duration::from_secs(self.max_age_secs.unwrap_or(600))
    }
}

/// The oracle's identity, published at `/.well-known/oracle-calls`.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct OracleConfig {
    /// The oracle's DID.
    pub did: Did,
    /// The LiveKit agent name dispatched into this oracle's rooms.
    pub agent_name: String,
    /// Public keys (from `oracle-calls key-info`), preferred first.
    #[serde(default)]
    pub keys: Vec<OracleKeyInfo>,
    /// The oracle's prekey signing key (Ed25519 public key, 32 bytes, base64url without
    /// padding), published as `prekeySigningKey` at `/.well-known/oracle-calls`. Absent: the
    /// oracle offers no prekeys.
    #[serde(default)]
    pub prekey_signing_key: Option<String>,
}

/// Matrix settings. The password comes from [`Secrets`].
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MatrixConfig {
    /// Client-server API base URL of the homeserver.
    pub homeserver_url: String,
    /// The homeserver's server name (the part after `:` in user ids).
    pub server_name: String,
    /// The oracle bot's user id, e.g. `@oracle:localhost`.
    pub user_id: String,
    /// Time limit of one outbound request to the homeserver, in seconds.
    #[serde(default = "default_outbound_timeout")]
    pub request_timeout_secs: u64,
    /// How long a verified OpenID token is trusted before it is checked again, in seconds.
    #[serde(default = "default_openid_cache")]
    pub openid_cache_secs: u64,
    /// How often the bot looks for status changes Matrix does not show yet (an edit that
    /// failed all its tries while the homeserver was down) and writes them again, in seconds.
    #[serde(default = "default_mirror_retry")]
    pub mirror_retry_secs: u64,
    /// When the user reports hanging up (`update` with `ended` / `userHangup`), leave the
    /// `ended` edit to the user's client, which writes its own right after (PROTOCOL §10): the
    /// bot writes its edit only if the user's has not appeared after one to two
    /// `mirror_retry_secs` (the backlog). `false`: the bot writes it at once as for every other
    /// change, and the call carries two `ended` edits.
    #[serde(default = "default_true")]
    pub leave_hangup_edit_to_user: bool,
}

/// LiveKit settings. The API secret comes from [`Secrets`].
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LiveKitConfig {
    /// Signaling URL handed to clients (`ws://…`).
    pub url: String,
    /// HTTP base URL of the server's API (Twirp), e.g. `http://127.0.0.1:7880`.
    pub http_url: String,
    /// API key (the `iss` of tokens).
    pub api_key: String,
    /// Lifetime of a join token, in seconds.
    #[serde(default = "default_token_ttl")]
    pub token_ttl_secs: u64,
    /// `empty_timeout` of created rooms, in seconds.
    #[serde(default = "default_empty_timeout")]
    pub empty_timeout_secs: u32,
    /// Time limit of one outbound request to LiveKit, in seconds.
    #[serde(default = "default_outbound_timeout")]
    pub request_timeout_secs: u64,
    /// How many times an active call's agent is dispatched again after its agent left the
    /// room while the user is still there (a crashed or killed agent process); 0: never.
    #[serde(default = "default_max_redispatches")]
    pub max_redispatches: u32,
    /// Hand a new call to an agent waiting at `POST /agent/jobs/next` on this server when one
    /// is (direct dispatch, docs/PROTOCOL.md §6.8), instead of LiveKit's dispatch; LiveKit's
    /// stays the path when none waits, when the agent declines, and as the fallback.
    #[serde(default = "default_true")]
    pub direct_dispatch: bool,
    /// How long after a direct hand-off the server waits for an agent participant in the room
    /// before it asks LiveKit to dispatch one, in milliseconds.
    #[serde(default = "default_direct_fallback_ms")]
    pub direct_dispatch_fallback_ms: u64,
    /// When the call's user leaves the room without leaving on purpose (LiveKit's
    /// `disconnectReason` is not `CLIENT_INITIATED`: its connection or its node was lost), how
    /// long the server waits for it to join again (a full reconnect) before it ends the call,
    /// in milliseconds; 0: at once.
    #[serde(default = "default_user_rejoin_grace_ms")]
    pub user_rejoin_grace_ms: u64,
    /// Let a user claim its call's LiveKit room and join it while its call event travels
    /// through Matrix (`POST /rooms/{roomId}/claim`, docs/PROTOCOL.md §6.9); the call's sync
    /// adopts the room. Off: that route answers 404 and clients join after the sync.
    #[serde(default = "default_true")]
    pub early_join: bool,
    /// How long a claimed room waits for its call's sync, in seconds: after that the claim is
    /// dropped and the room deleted (with whoever is in it), by whichever server sweeps first.
    #[serde(default = "default_room_claim_ttl")]
    pub room_claim_ttl_secs: u64,
}

/// Checks of the call event at sync.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ValidationConfig {
    /// Largest allowed distance between `callStartedAt` and the event's `origin_server_ts`,
    /// and between `callStartedAt` and now, in seconds.
    #[serde(default = "default_skew")]
    pub max_clock_skew_secs: u64,
    /// The oldest call the server still serves, in seconds since its `callStartedAt`: an older
    /// call is not activated (sync answers 410) and its key is not handed out (410), whatever
    /// its status says. A pending call is activated only within `max_clock_skew_secs` of its
    /// start. Default 3600 (one hour): the agent fetches the key and the user syncs in the
    /// call's first seconds; raise it if calls run longer and may be synced again later.
    #[serde(default = "default_max_call_age")]
    pub max_call_age_secs: u64,
    /// Explicit `"<userDid>" = "<matrix user id>"` bindings (TOML table file), checked before the
    /// built-in `did:ixo:X` ↔ `@did-ixo-X:<server>` rule.
    #[serde(default)]
    pub user_binding_file: Option<PathBuf>,
    /// Also accept any sender for any `userDid` (tests and trusted deployments only).
    #[serde(default)]
    pub dangerous_accept_any_sender: bool,
}

impl Default for ValidationConfig {
    fn default() -> Self {
        Self {
            max_clock_skew_secs: default_skew(),
            max_call_age_secs: default_max_call_age(),
            user_binding_file: None,
            dangerous_accept_any_sender: false,
        }
    }
}

fn default_listen() -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], 18080))
}
fn default_data_dir() -> PathBuf {
    PathBuf::from("oracle-calls-data")
}
fn default_body_limit() -> usize {
    16 * 1024
}
fn default_request_timeout() -> u64 {
    30
}
fn default_store_wait() -> u64 {
    5000
}
fn default_outbound_timeout() -> u64 {
    10
}
fn default_openid_cache() -> u64 {
    300
}
fn default_api_key_cache() -> u64 {
    2
}
fn default_mirror_retry() -> u64 {
    30
}
fn default_token_ttl() -> u64 {
    600
}
fn default_empty_timeout() -> u32 {
    120
}
fn default_true() -> bool {
    true
}

fn default_direct_fallback_ms() -> u64 {
    3000
}

fn default_room_claim_ttl() -> u64 {
    60
}

fn default_user_rejoin_grace_ms() -> u64 {
    15_000
}

fn default_max_redispatches() -> u32 {
    3
}
fn default_skew() -> u64 {
    300
}
fn default_max_call_age() -> u64 {
    3600
}

impl Config {
    /// Parses the TOML text of a config file.
    ///
    /// # Errors
    /// [`Error::Config`] naming the bad key.
    pub fn from_toml(text: &str) -> Result<Self> {
        let c: Self = toml::from_str(text).map_err(|e| Error::Config(e.to_string()))?;
        c.check()?;
        Ok(c)
    }

    /// Applies `ORACLE_CALLS_*` overrides through `lookup` (pass `std::env::var(..).ok()`).
    ///
    /// # Errors
    /// [`Error::Config`] for a value that does not parse.
    pub fn apply_env(&mut self, lookup: impl Fn(&str) -> Option<String>) -> Result<()> {
        if let Some(v) = lookup("ORACLE_CALLS_LISTEN") {
            self.listen = v
                .parse()
                .map_err(|_| Error::Config("ORACLE_CALLS_LISTEN is not host:port".into()))?;
        }
        if let Some(v) = lookup("ORACLE_CALLS_DATA_DIR") {
            self.data_dir = PathBuf::from(v);
        }
        if let Some(v) = lookup("ORACLE_CALLS_DATABASE_URL") {
            self.database_url = Some(DatabaseUrl::new(v));
        }
        if let Some(v) = lookup("ORACLE_CALLS_MATRIX_URL") {
            self.matrix.homeserver_url = v;
        }
        if let Some(v) = lookup("ORACLE_CALLS_LIVEKIT_URL") {
            self.livekit.url = v;
        }
        if let Some(v) = lookup("ORACLE_CALLS_LIVEKIT_HTTP_URL") {
            self.livekit.http_url = v;
        }
        if let Some(v) = lookup("ORACLE_CALLS_LIVEKIT_API_KEY") {
            self.livekit.api_key = v;
        }
        self.check()
    }

    /// The database URL in effect (without the password of `ORACLE_CALLS_DATABASE_PASSWORD`).
    pub fn database_url(&self) -> DatabaseUrl {
        self.database_url.clone().unwrap_or_else(|| {
            DatabaseUrl::new(format!(
                "sqlite://{}?mode=rwc",
                self.data_dir.join("oracle-calls.sqlite3").display()
            ))
        })
    }

    /// The URL the store connects with: [`Config::database_url`] with the password from
    /// `secrets` put in, when one is set.
    ///
    /// # Errors
    /// [`Error::Config`] as [`DatabaseUrl::with_password`].
    pub fn store_url(&self, secrets: &Secrets) -> Result<Secret> {
        self.database_url()
            .with_password(secrets.database_password.as_ref())
    }

    /// Request timeout as a duration.
    pub fn request_timeout(&self) -> Duration {
        Duration::from_secs(self.request_timeout_secs)
    }

    /// [`Self::store_wait_ms`] (at least 100 ms).
    pub fn store_wait(&self) -> Duration {
        Duration::from_millis(self.store_wait_ms.max(100))
    }

    fn check(&self) -> Result<()> {
        if self.oracle.agent_name.trim().is_empty() {
            return Err(Error::Config("oracle.agent_name is empty".into()));
        }
        if self.livekit.api_key.trim().is_empty() {
            return Err(Error::Config("livekit.api_key is empty".into()));
        }
        if self.body_limit_bytes == 0 || self.livekit.token_ttl_secs == 0 {
            return Err(Error::Config(
                "body_limit_bytes and livekit.token_ttl_secs must be positive".into(),
            ));
        }
        if !(1..=3600).contains(&self.livekit.room_claim_ttl_secs) {
            return Err(Error::Config(
                "livekit.room_claim_ttl_secs must be 1 to 3600".into(),
            ));
        }
        if let Some(key) = &self.oracle.prekey_signing_key
            && !decodes_to(key, 32)
        {
            return Err(Error::Config(
                "oracle.prekey_signing_key must be an Ed25519 public key: 32 bytes, base64url \
                 without padding (43 characters)"
                    .into(),
            ));
        }
        for origin in &self.cors.allowed_origins {
            CorsConfig::check_origin(origin)?;
        }
        self.limits.check()?;
        if self.validation.max_call_age_secs < self.validation.max_clock_skew_secs {
            return Err(Error::Config(
                "validation.max_call_age_secs must be at least validation.max_clock_skew_secs"
                    .into(),
            ));
        }
        Ok(())
    }
}

/// True when `text` is base64url without padding (canonical: no stray trailing bits) of
/// exactly `len` bytes.
pub(crate) fn decodes_to(text: &str, len: usize) -> bool {
    use base64::Engine as _;
    base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(text)
        .is_ok_and(|bytes| bytes.len() == len)
}

/// The server's secrets, each read from `ORACLE_CALLS_<NAME>` or from the file named by
/// `ORACLE_CALLS_<NAME>_FILE`.
#[derive(Clone, Debug)]
pub struct Secrets {
    /// LiveKit API secret (signs join tokens and RoomService calls, verifies webhooks).
    pub livekit_api_secret: Secret,
    /// Pepper of API-key hashes.
    pub api_key_pepper: Secret,
    /// The oracle bot's Matrix password (needed only for the first login).
    pub matrix_password: Option<Secret>,
    /// The PostgreSQL password, put into `database_url` at connect time (optional: the URL
    /// may carry it itself).
    pub database_password: Option<Secret>,
}

impl Secrets {
    /// Reads the secrets through `lookup` (pass `std::env::var(..).ok()`).
    ///
    /// # Errors
    /// [`Error::Config`] when a required secret is missing, empty or unreadable.
    pub fn from_env(lookup: impl Fn(&str) -> Option<String>) -> Result<Self> {
        let livekit_api_secret = read_secret(&lookup, "LIVEKIT_API_SECRET")?
            .ok_or_else(|| missing("LIVEKIT_API_SECRET"))?;
        let api_key_pepper =
            read_secret(&lookup, "API_KEY_PEPPER")?.ok_or_else(|| missing("API_KEY_PEPPER"))?;
        if api_key_pepper.dangerous_expose().len() < 16 {
            return Err(Error::Config(
                "the API-key pepper must be at least 16 characters".into(),
            ));
        }
        let matrix_password = read_secret(&lookup, "MATRIX_PASSWORD")?;
        let database_password = read_secret(&lookup, "DATABASE_PASSWORD")?;
        Ok(Self {
            livekit_api_secret,
            api_key_pepper,
            matrix_password,
            database_password,
        })
    }
}

fn missing(name: &str) -> Error {
    Error::Config(format!(
        "set ORACLE_CALLS_{name} or ORACLE_CALLS_{name}_FILE"
    ))
}

fn read_secret(lookup: &impl Fn(&str) -> Option<String>, name: &str) -> Result<Option<Secret>> {
    let value = match (
        lookup(&format!("ORACLE_CALLS_{name}")),
        lookup(&format!("ORACLE_CALLS_{name}_FILE")),
    ) {
        (Some(v), None) => Secret::new(v),
        (None, Some(path)) => read_secret_file(Path::new(&path), name)?,
        (None, None) => return Ok(None),
        (Some(_), Some(_)) => {
            return Err(Error::Config(format!(
                "set only one of ORACLE_CALLS_{name} and ORACLE_CALLS_{name}_FILE"
            )));
        }
    };
    if value.is_empty() {
        return Err(Error::Config(format!("ORACLE_CALLS_{name} is empty")));
    }
    Ok(Some(value))
}

fn read_secret_file(path: &Path, name: &str) -> Result<Secret> {
    std::fs::read_to_string(path)
        .map(Secret::new)
        .map_err(|e| Error::Config(format!("reading ORACLE_CALLS_{name}_FILE: {e}")))
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;

    use super::*;

    const MINIMAL: &str = r#"
        [oracle]
        did = "did:ixo:oracle1"
        agent_name = "oracle-1"
        [matrix]
        homeserver_url = "http://127.0.0.1:18008"
        server_name = "localhost"
        user_id = "@oracle1:localhost"
        [livekit]
        url = "ws://127.0.0.1:17880"
        http_url = "http://127.0.0.1:17880"
        api_key = "APIkey"
    "#;

    #[test]
    fn minimal_config_has_safe_defaults_and_env_overrides() {
        let mut c = Config::from_toml(MINIMAL).unwrap();
        assert_eq!(c.listen.ip().to_string(), "127.0.0.1");
        assert_eq!(c.body_limit_bytes, 16 * 1024);
        assert!(!c.validation.dangerous_accept_any_sender);
        let env: HashMap<&str, &str> = [("ORACLE_CALLS_LISTEN", "127.0.0.1:9")].into();
        c.apply_env(|k| env.get(k).map(|v| (*v).to_owned()))
            .unwrap();
        assert_eq!(c.listen.port(), 9);
        assert!(Config::from_toml(&format!("{MINIMAL}\nbogus = 1")).is_err());
        assert_eq!(c.validation.max_call_age_secs, 3600);
        assert!(
            Config::from_toml(&format!(
                "{MINIMAL}\n[validation]\nmax_call_age_secs = 10\nmax_clock_skew_secs = 60"
            ))
            .is_err(),
            "a call cannot be older than the freshness window allows"
        );
    }

    #[test]
    fn the_prekey_signing_key_is_32_bytes_of_base64url_without_padding() {
        let with = |key: &str| {
            Config::from_toml(&MINIMAL.replace(
                "agent_name = \"oracle-1\"",
                &format!("agent_name = \"oracle-1\"\nprekey_signing_key = \"{key}\""),
            ))
        };
        assert_eq!(
            Config::from_toml(MINIMAL)
                .unwrap()
                .oracle
                .prekey_signing_key,
            None
        );
        let good = "A".repeat(43);
        assert_eq!(
            with(&good).unwrap().oracle.prekey_signing_key.as_deref(),
            Some(good.as_str())
        );
        let bad = [
            format!("{good}="),             // padded
            "A".repeat(42),                 // 31 bytes and stray bits
            "A".repeat(44),                 // 33 bytes
            format!("{}B", "A".repeat(42)), // 32 bytes, non-zero trailing bits
            format!("+{}", "A".repeat(42)), // standard alphabet
            String::new(),
        ];
        for key in bad {
            let err = with(&key).unwrap_err().to_string();
            assert!(err.contains("oracle.prekey_signing_key"), "{key:?}: {err}");
        }
    }

    #[test]
    fn the_database_password_comes_from_a_file_and_never_prints() {
        let dir = std::env::temp_dir().join(format!("oc-db-secret-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let file = dir.join("pg_password");
        std::fs::write(&file, "s3cret-pw\n").unwrap();
        let file = file.display().to_string();
        let mut c = Config::from_toml(&format!(
            "database_url = \"postgres://calls@db:5432/calls\"\n{MINIMAL}"
        ))
        .unwrap();
        let env: HashMap<&str, &str> = [
            ("ORACLE_CALLS_LIVEKIT_API_SECRET", "lk-secret"),
            ("ORACLE_CALLS_API_KEY_PEPPER", "0123456789abcdef-pepper"),
            ("ORACLE_CALLS_DATABASE_PASSWORD_FILE", file.as_str()),
        ]
        .into();
        let s = Secrets::from_env(|k| env.get(k).map(|v| (*v).to_owned())).unwrap();
        assert_eq!(
            c.store_url(&s).unwrap().dangerous_expose(),
            "postgres://calls:s3cret-pw@db:5432/calls"
        );
        assert!(!format!("{s:?}{c:?}").contains("s3cret"));
        // A password inside the URL itself (from the file or the environment) never prints.
        c.apply_env(|k| {
            (k == "ORACLE_CALLS_DATABASE_URL").then(|| "postgres://calls:hunter2@db/calls".into())
        })
        .unwrap();
        let dbg = format!("{c:?}");
        assert!(
            !dbg.contains("hunter2") && dbg.contains("calls:***@db"),
            "{dbg}"
        );
        assert!(c.store_url(&s).is_err(), "two passwords: refused");
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn secrets_come_from_env_or_files_and_never_print() {
        let env: HashMap<&str, &str> = [
            ("ORACLE_CALLS_LIVEKIT_API_SECRET", "lk-secret"),
            ("ORACLE_CALLS_API_KEY_PEPPER", "0123456789abcdef-pepper"),
        ]
        .into();
        let s = Secrets::from_env(|k| env.get(k).map(|v| (*v).to_owned())).unwrap();
        let dbg = format!("{s:?}");
        assert!(
            !dbg.contains("lk-secret") && !dbg.contains("0123456789abcdef"),
            "{dbg}"
        );
        let short: HashMap<&str, &str> = [
            ("ORACLE_CALLS_LIVEKIT_API_SECRET", "x"),
            ("ORACLE_CALLS_API_KEY_PEPPER", "short"),
        ]
        .into();
        assert!(Secrets::from_env(|k| short.get(k).map(|v| (*v).to_owned())).is_err());
        assert!(Secrets::from_env(|_| None).is_err());
    }
}

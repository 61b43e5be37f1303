//! What the workspace's integration tests share (a dev-dependency only): where the checkout is,
//! the running stack's settings (`scripts/stack env`) and secrets, and unique names.
//!
//! These helpers panic with a readable message (the stack is not up, a setting is missing, a
//! secret file cannot be read): they run inside tests, where a panic is the failure report.
#![allow(clippy::panic, clippy::expect_used)]

use std::collections::HashMap;
use std::path::PathBuf;
use std::process::Command;
use std::sync::OnceLock;

/// Logs of the code under test at `RUST_LOG`, or else at `default_filter` (e.g.
/// `"warn,oracle_calls_client=info"`), written through the test harness, so that a failed
/// test shows them. The first call in a process sets it up; later ones do nothing.
pub fn init_test_logs(default_filter: &str) {
    let _ = tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| default_filter.into()),
        )
        .with_test_writer()
        .try_init();
}

/// The checkout's root directory (this crate lives in `crates/test-support`).
#[must_use]
pub fn repo_root() -> PathBuf {
    PathBuf::from(concat!(env!("CARGO_MANIFEST_DIR"), "/../.."))
}

/// The checkout's `scripts/stack`.
#[must_use]
pub fn stack_script() -> PathBuf {
    repo_root().join("scripts/stack")
}

/// `KEY=VALUE` lines (what `scripts/stack env` and `scripts/stack user` print) as a map: keys and
/// values trimmed, one pair of surrounding quotes (single or double) taken off the value; lines
/// without `=` are skipped.
#[must_use]
pub fn parse_env(text: &str) -> HashMap<String, String> {
    text.lines()
        .filter_map(|l| l.split_once('='))
        .map(|(k, v)| {
            let v = v.trim();
            let unquoted = ['\'', '"']
                .iter()
                .find_map(|q| v.strip_prefix(*q).and_then(|r| r.strip_suffix(*q)))
                .unwrap_or(v);
            (k.trim().to_owned(), unquoted.to_owned())
        })
        .collect()
}

/// The running stack's settings (`scripts/stack env`, which honours `STACK_DIR` and the port
/// variables), read once per test process.
///
/// # Panics
/// When the stack is not up (`scripts/stack status` fails), with the command that starts it.
pub fn stack() -> &'static HashMap<String, String> {
    static ENV: OnceLock<HashMap<String, String>> = OnceLock::new();
    ENV.get_or_init(|| {
        let script = stack_script();
        let status = Command::new(&script)
            .arg("status")
            .output()
            .unwrap_or_else(|e| panic!("running {} status: {e}", script.display()));
        assert!(
            status.status.success(),
            "the stack is not up: run `scripts/stack up` (scripts/test does)\n{}",
            String::from_utf8_lossy(&status.stdout)
        );
        let out = Command::new(&script)
            .arg("env")
            .output()
            .unwrap_or_else(|e| panic!("running {} env: {e}", script.display()));
        assert!(
            out.status.success(),
            "scripts/stack env failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        parse_env(&String::from_utf8_lossy(&out.stdout))
    })
}

/// One setting of the running stack, e.g. `MATRIX_URL`.
///
/// # Panics
/// When the stack is not up or does not report `key`.
#[must_use]
pub fn stack_var(key: &str) -> String {
    stack()
        .get(key)
        .cloned()
        .unwrap_or_else(|| panic!("scripts/stack env has no {key}"))
}

/// A secret file's content, trimmed.
///
/// # Panics
/// When it cannot be read.
#[must_use]
pub fn read_secret(path: &str) -> String {
    std::fs::read_to_string(path)
        .unwrap_or_else(|e| panic!("reading {path}: {e}"))
        .trim()
        .to_owned()
}

/// The content of the secret file that stack setting `key` names, e.g.
/// `LIVEKIT_API_SECRET_FILE`.
///
/// # Panics
/// As [`stack_var`] and [`read_secret`].
#[must_use]
pub fn stack_secret(key: &str) -> String {
    read_secret(&stack_var(key))
}

/// The stack's LiveKit: its URL (node 1), API key and secret.
#[derive(Clone)]
pub struct LiveKitCredentials {
    /// `ws://…` of node 1.
    pub url: String,
    /// `http://…` of node 1 (the Twirp API).
    pub http_url: String,
    /// The API key.
    pub api_key: String,
    /// The API secret.
    pub api_secret: String,
}

impl std::fmt::Debug for LiveKitCredentials {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LiveKitCredentials")
            .field("url", &self.url)
            .field("http_url", &self.http_url)
            .field("api_key", &self.api_key)
            .finish_non_exhaustive()
    }
}

impl LiveKitCredentials {
    /// Read from the running stack.
    ///
    /// # Panics
    /// As [`stack_var`] and [`stack_secret`].
    #[must_use]
    pub fn from_stack() -> Self {
        Self {
            url: stack_var("LIVEKIT_URL"),
            http_url: stack_var("LIVEKIT_HTTP_URL"),
            api_key: stack_var("LIVEKIT_API_KEY"),
            api_secret: stack_secret("LIVEKIT_API_SECRET_FILE"),
        }
    }
}

/// `bytes` random bytes as lower-case hex.
#[must_use]
pub fn unique_hex(bytes: usize) -> String {
    let mut b = vec![0u8; bytes];
    rand::fill(&mut b[..]);
    b.iter().map(|x| format!("{x:02x}")).collect()
}

/// `prefix` followed by 12 random hex characters: a name no other test run uses.
#[must_use]
pub fn unique(prefix: &str) -> String {
    format!("{prefix}{}", unique_hex(6))
}

/// A new Matrix user on the stack's Synapse (`scripts/stack user`), named `prefix` and a unique
/// suffix: its name and password.
#[must_use]
pub fn stack_user(prefix: &str) -> (String, String) {
    let name = unique(prefix);
    let out = Command::new(stack_script())
        .args(["user", &name])
        .output()
        .expect("running scripts/stack user");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let kv = parse_env(&String::from_utf8_lossy(&out.stdout));
    let file = kv
        .get("MATRIX_USER_PASSWORD_FILE")
        .expect("scripts/stack user printed no MATRIX_USER_PASSWORD_FILE");
    let password = std::fs::read_to_string(file)
        .unwrap_or_else(|e| panic!("reading {file}: {e}"))
        .trim()
        .to_owned();
    (name, password)
}

/// `iptables` rules in the INPUT chain (loopback faults: a path cut, a lost network),
/// removed again on [`Firewall::remove`] or when dropped, also when a test fails half-way.
#[derive(Debug)]
pub struct Firewall(Vec<Vec<String>>);

impl Firewall {
    /// Inserts `rules`, each an `iptables` rule spec for the INPUT chain. `Err` with the reason
    /// when iptables is missing, we are not root, or the kernel refuses netfilter (the rules
    /// inserted so far are removed again).
    ///
    /// # Errors
    /// The reason, for the test to print when it skips.
    pub fn insert(rules: Vec<Vec<String>>) -> Result<Self, String> {
        let mut done = Firewall(Vec::new());
        for r in rules {
            let out = Command::new("iptables")
                .args(["-I", "INPUT"])
                .args(&r)
                .output()
                .map_err(|e| format!("iptables: {e}"))?;
            if !out.status.success() {
                return Err(format!(
                    "iptables -I INPUT {}: {}",
                    r.join(" "),
                    String::from_utf8_lossy(&out.stderr).trim()
                ));
            }
            done.0.push(r);
        }
        Ok(done)
    }

    /// A rule spec from words (`["-i", "lo", "-p", "udp", …]`).
    #[must_use]
    pub fn rule(words: &[&str]) -> Vec<String> {
        words.iter().map(|w| (*w).to_owned()).collect()
    }

    /// Removes the rules now.
    pub fn remove(&mut self) {
        for r in std::mem::take(&mut self.0) {
            let ok = Command::new("iptables")
                .args(["-D", "INPUT"])
                .args(&r)
                .status()
                .is_ok_and(|s| s.success());
            if !ok {
                eprintln!(
                    "could not remove the rule `iptables -I INPUT {}`",
                    r.join(" ")
                );
            }
        }
    }
}

impl Drop for Firewall {
    fn drop(&mut self) {
        self.remove();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn env_lines_are_parsed_and_unquoted() {
        let env = parse_env(
            "MATRIX_URL=http://127.0.0.1:18008\n\
             LIVEKIT_NODE_URLS='ws://a ws://b'\n\
             QUOTED=\"x\"\n\
             EMPTY=\n\
             not a pair\n\
             ODD='half\n",
        );
        assert_eq!(
            env.get("MATRIX_URL").map(String::as_str),
            Some("http://127.0.0.1:18008")
        );
        assert_eq!(
            env.get("LIVEKIT_NODE_URLS").map(String::as_str),
            Some("ws://a ws://b")
        );
        assert_eq!(env.get("QUOTED").map(String::as_str), Some("x"));
        assert_eq!(env.get("EMPTY").map(String::as_str), Some(""));
        // A quote that is not closed is kept: it is part of the value.
        assert_eq!(env.get("ODD").map(String::as_str), Some("'half"));
        assert_eq!(env.len(), 5);
    }

    #[test]
    fn unique_names_differ_and_keep_their_prefix() {
        let a = unique("alice");
        let b = unique("alice");
        assert_ne!(a, b);
        assert!(
            a.starts_with("alice") && a.len() == "alice".len() + 12,
            "{a}"
        );
        assert!(unique_hex(3).chars().all(|c| c.is_ascii_hexdigit()));
    }

    #[test]
    fn the_repo_root_holds_the_stack_script() {
        assert!(stack_script().is_file(), "{}", stack_script().display());
    }
}

/// A PostgreSQL schema of one test's own in the stack's database (`DATABASE_URL`), so that
/// what the test does to its tables (a migration no server knows, a tampered row) never
/// reaches the schema the other tests share. Dropped with everything in it by
/// [`PgSchema::drop`].
#[cfg(feature = "postgres")]
#[derive(Debug)]
pub struct PgSchema {
    /// The stack's database URL.
    pub base: String,
    /// The schema's name: `prefix`, the process id, a counter and the time, in letters,
    /// digits and underscores.
    pub name: String,
    /// `base` with connections whose `search_path` is the schema.
    pub url: String,
}

#[cfg(feature = "postgres")]
impl PgSchema {
    /// Creates the schema. `prefix` is letters, digits and underscores.
    ///
    /// # Panics
    /// When the stack is not up or the database refuses.
    pub async fn create(prefix: &str) -> Self {
        use std::sync::atomic::{AtomicU32, Ordering};
        static N: AtomicU32 = AtomicU32::new(0);
        assert!(
            prefix
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'_'),
            "a schema prefix is letters, digits and underscores: {prefix:?}"
        );
        let base = stack_var("DATABASE_URL");
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos());
        let name = format!(
            "{prefix}_{}_{}_{nanos}",
            std::process::id(),
            N.fetch_add(1, Ordering::Relaxed)
        );
        Self::execute(&base, &format!("CREATE SCHEMA {name}")).await;
        let sep = if base.contains('?') { '&' } else { '?' };
        let url = format!("{base}{sep}options=-c%20search_path%3D{name}");
        Self { base, name, url }
    }

    /// Drops the schema and everything in it.
    ///
    /// # Panics
    /// When the database refuses.
    pub async fn drop(self) {
        Self::execute(&self.base, &format!("DROP SCHEMA {} CASCADE", self.name)).await;
    }

    async fn execute(base: &str, sql: &str) {
        sqlx::any::install_default_drivers();
        let pool = sqlx::AnyPool::connect(base)
            .await
            .unwrap_or_else(|e| panic!("connecting to the stack's PostgreSQL: {e}"));
        // The schema name is checked above: letters, digits and underscores only.
        sqlx::query(sqlx::AssertSqlSafe(sql.to_owned()))
            .execute(&pool)
            .await
            .unwrap_or_else(|e| panic!("{sql}: {e}"));
        pool.close().await;
    }
}

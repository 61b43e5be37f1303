//! One MatrixCall party (`tests/matrixcall/party.mjs`: matrix-js-sdk's `MatrixCall` in
//! Debian's headless Chromium) run from a Rust test: a fresh account and device for it, the
//! child process with its JSON lines, and SIGTERM on every path (its browser closes).
//! Included with `#[path]` by the test files that need it.
#![allow(dead_code)]

use std::io::{BufRead, BufReader};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use oracle_calls_test_support::{repo_root, stack_var, unique};
use serde_json::{Value, json};
use tokio::sync::mpsc;

/// A Matrix account logged in on a fresh device, for a party.
pub struct Account {
    pub user_id: String,
    pub device_id: String,
    token_file: PathBuf,
}

impl Account {
    /// A new user (`scripts/stack user`) logged in once over the client API: the device is
    /// new, so the page's in-memory crypto can upload keys for it.
    pub async fn new(prefix: &str) -> Self {
        let (name, password) = super::people::new_user(prefix);
        let url = format!("{}/_matrix/client/v3/login", stack_var("MATRIX_URL"));
        let body: Value = reqwest::Client::new()
            .post(url)
            .json(&json!({
                "type": "m.login.password",
                "identifier": {"type": "m.id.user", "user": name},
                "password": password,
                "initial_device_display_name": "MatrixCall party",
            }))
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        let token = body["access_token"].as_str().expect("a token").to_owned();
        let dir = std::env::temp_dir().join(unique("oc-matrixcall-"));
        std::fs::create_dir_all(&dir).unwrap();
        let token_file = dir.join("token");
        std::fs::write(&token_file, token).unwrap();
        Self {
            user_id: body["user_id"].as_str().unwrap().to_owned(),
            device_id: body["device_id"].as_str().unwrap().to_owned(),
            token_file,
        }
    }
}

/// A running `party.mjs`.
pub struct Party {
    child: Child,
    lines: mpsc::UnboundedReceiver<Value>,
    /// Every line read so far, in order.
    pub seen: Vec<Value>,
}

impl Party {
    /// `node party.mjs <args>` as `account`; the token goes by file, never on argv.
    pub fn spawn(account: &Account, args: &[&str]) -> Self {
        let dir = repo_root().join("tests/matrixcall");
        assert!(
            dir.join("node_modules").is_dir(),
            "run `npm ci` in tests/matrixcall (scripts/test does)"
        );
        let mut child = Command::new("node")
            .arg(dir.join("party.mjs"))
            .args(args)
            .envs([
                ("MATRIXCALL_HOMESERVER", stack_var("MATRIX_URL")),
                ("MATRIXCALL_USER_ID", account.user_id.clone()),
                ("MATRIXCALL_DEVICE_ID", account.device_id.clone()),
                (
                    "MATRIXCALL_ACCESS_TOKEN_FILE",
                    account.token_file.display().to_string(),
                ),
            ])
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("node runs party.mjs");
        let stdout = child.stdout.take().unwrap();
        let (tx, lines) = mpsc::unbounded_channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                match serde_json::from_str::<Value>(&line) {
                    Ok(v) => {
                        if tx.send(v).is_err() {
                            break;
                        }
                    }
                    Err(_) => eprintln!("party (not JSON): {line}"),
                }
            }
        });
        Self {
            child,
            lines,
            seen: Vec::new(),
        }
    }

    /// The next line, or `None` at the end of its output or after `limit`.
    pub async fn next_line(&mut self, limit: Duration) -> Option<Value> {
        let v = tokio::time::timeout(limit, self.lines.recv())
            .await
            .ok()
            .flatten()?;
        eprintln!("party: {}", brief(&v));
        self.seen.push(v.clone());
        Some(v)
    }

    /// Reads lines until one has `"event": event`; panics after `limit` or at the end.
    pub async fn wait_for(&mut self, event: &str, limit: Duration) -> Value {
        let until = tokio::time::Instant::now() + limit;
        loop {
            let left = until.saturating_duration_since(tokio::time::Instant::now());
            match self.next_line(left).await {
                Some(v) if v["event"] == event => return v,
                Some(_) => {}
                None => panic!("the party never said {event:?}; it said: {:#?}", self.seen),
            }
        }
    }

    /// Whether a line with `"event": event` was seen (and matches `pred`).
    pub fn saw(&self, event: &str, pred: impl Fn(&Value) -> bool) -> bool {
        self.seen.iter().any(|v| v["event"] == event && pred(v))
    }
}

impl Drop for Party {
    fn drop(&mut self) {
        // SIGTERM lets the party close its browser; then reap it.
        let _ = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status();
        for _ in 0..50 {
            if matches!(self.child.try_wait(), Ok(Some(_))) {
                return;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A party line without the bulky fields, for the test log.
fn brief(v: &Value) -> String {
    let mut v = v.clone();
    if let Some(o) = v.as_object_mut() {
        o.remove("call_events");
        o.remove("states");
    }
    v.to_string()
}

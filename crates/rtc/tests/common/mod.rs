//! Shared helpers of the rtc integration tests: the stack's settings and LiveKit tokens.
#![allow(
    dead_code,
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]

use std::collections::HashMap;
use std::process::Command;

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use hmac::{KeyInit as _, Mac as _};

pub fn repo_root() -> String {
    format!("{}/../..", env!("CARGO_MANIFEST_DIR"))
}

/// `scripts/stack env`, as a map. Panics with the fix when the stack is not up.
pub fn stack_env() -> HashMap<String, String> {
    let out = Command::new(format!("{}/scripts/stack", repo_root()))
        .arg("env")
        .output()
        .expect("run scripts/stack env");
    assert!(
        out.status.success(),
        "scripts/stack env failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let env: HashMap<String, String> = String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|l| l.split_once('='))
        .map(|(k, v)| (k.to_owned(), v.trim_matches('"').to_owned()))
        .collect();
    let health = Command::new(format!("{}/scripts/stack", repo_root()))
        .arg("status")
        .output()
        .unwrap();
    assert!(
        health.status.success(),
        "the stack is not up: run `scripts/stack up` (scripts/test does)"
    );
    env
}

pub struct LiveKit {
    pub url: String,
    key: String,
    secret: String,
}

impl LiveKit {
    pub fn from_stack() -> Self {
        let env = stack_env();
        let secret = std::fs::read_to_string(&env["LIVEKIT_API_SECRET_FILE"])
            .unwrap()
            .trim()
            .to_owned();
        Self {
            url: env["LIVEKIT_URL"].clone(),
            key: env["LIVEKIT_API_KEY"].clone(),
            secret,
        }
    }

    /// An HS256 join token for `identity` in `room`, valid 10 minutes.
    pub fn token(&self, room: &str, identity: &str) -> String {
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_secs();
        let claims = serde_json::json!({
            "iss": self.key, "sub": identity, "nbf": now - 5, "exp": now + 600, "name": identity,
            "video": {"roomJoin": true, "room": room, "canPublish": true, "canSubscribe": true, "canPublishData": true}
        });
        let head = URL_SAFE_NO_PAD.encode(br#"{"alg":"HS256","typ":"JWT"}"#);
        let body = URL_SAFE_NO_PAD.encode(claims.to_string());
        let mut mac = hmac::Hmac::<sha2::Sha256>::new_from_slice(self.secret.as_bytes()).unwrap();
        mac.update(format!("{head}.{body}").as_bytes());
        let sig = URL_SAFE_NO_PAD.encode(mac.finalize().into_bytes());
        format!("{head}.{body}.{sig}")
    }
}

pub fn unique_room(prefix: &str) -> String {
    format!("{prefix}-{:08x}", rand_u32())
}

fn rand_u32() -> u32 {
    let t = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap();
    t.subsec_nanos() ^ std::process::id().rotate_left(16)
}

//! Shared helpers of the rtc integration tests: the stack's settings and LiveKit tokens.
#![allow(
    dead_code,
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]

use std::process::Command;

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use hmac::{KeyInit as _, Mac as _};

/// The checkout's root directory.
pub fn repo_root() -> String {
    oracle_calls_test_support::repo_root().display().to_string()
}

pub struct LiveKit {
    pub url: String,
    key: String,
    secret: String,
}

impl LiveKit {
    pub fn from_stack() -> Self {
        let lk = oracle_calls_test_support::LiveKitCredentials::from_stack();
        Self {
            url: lk.url,
            key: lk.api_key,
            secret: lk.api_secret,
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
        self.sign(&claims)
    }
}

/// Joins `room` as `identity`, end-to-end encrypted under `ring` when given.
pub async fn join(
    lk: &LiveKit,
    room: &str,
    identity: &str,
    ring: Option<oracle_calls_crypto::frame::KeyRing>,
) -> (
    oracle_calls_rtc::Room,
    tokio::sync::mpsc::Receiver<oracle_calls_rtc::RoomEvent>,
) {
    let options = oracle_calls_rtc::RoomOptions {
        e2ee: ring.map(|key_ring| oracle_calls_rtc::E2eeOptions { key_ring }),
        ..Default::default()
    };
    oracle_calls_rtc::Room::connect(&lk.url, &lk.token(room, identity), options)
        .await
        .unwrap()
}

/// Publishes an 880 Hz tone on `mic` in real time for `frames` 20 ms frames, handing every
/// room event that arrives meanwhile to `on_event`.
pub async fn tone_while(
    mic: &oracle_calls_rtc::AudioSource,
    events: &mut tokio::sync::mpsc::Receiver<oracle_calls_rtc::RoomEvent>,
    frames: u64,
    mut on_event: impl FnMut(oracle_calls_rtc::RoomEvent),
) {
    use oracle_calls_rtc::AUDIO_FRAME_SAMPLES;
    let mut tick = tokio::time::interval(std::time::Duration::from_millis(20));
    for i in 0..frames {
        tick.tick().await;
        let offset = i * AUDIO_FRAME_SAMPLES as u64;
        let pcm = oracle_calls_rtc::sine_tone(880.0, 8000.0, offset, AUDIO_FRAME_SAMPLES);
        mic.push_pcm(&pcm).await.unwrap();
        while let Ok(ev) = events.try_recv() {
            on_event(ev);
        }
    }
}

pub fn unique_room(prefix: &str) -> String {
    oracle_calls_test_support::unique(&format!("{prefix}-"))
}

impl LiveKit {
    /// The server's HTTP base (`http://…`) for its Twirp API.
    pub fn http_url(&self) -> String {
        self.url.replacen("ws", "http", 1)
    }

    /// Removes `identity` from `room` through the server's own API (`RoomService`), as an
    /// operator would.
    pub fn remove_participant(&self, room: &str, identity: &str) {
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_secs();
        let claims = serde_json::json!({
            "iss": self.key, "sub": "test-admin", "nbf": now - 5, "exp": now + 60,
            "video": {"roomAdmin": true, "room": room}
        });
        let token = self.sign(&claims);
        let out = Command::new("curl")
            .args([
                "-sS",
                "-f",
                "-X",
                "POST",
                "-H",
                "Content-Type: application/json",
            ])
            .arg("-H")
            .arg(format!("Authorization: Bearer {token}"))
            .arg("-d")
            .arg(serde_json::json!({"room": room, "identity": identity}).to_string())
            .arg(format!(
                "{}/twirp/livekit.RoomService/RemoveParticipant",
                self.http_url()
            ))
            .output()
            .expect("curl");
        assert!(
            out.status.success(),
            "RemoveParticipant: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }

    fn sign(&self, claims: &serde_json::Value) -> String {
        let head = URL_SAFE_NO_PAD.encode(br#"{"alg":"HS256","typ":"JWT"}"#);
        let body = URL_SAFE_NO_PAD.encode(claims.to_string());
        let mut mac = hmac::Hmac::<sha2::Sha256>::new_from_slice(self.secret.as_bytes()).unwrap();
        mac.update(format!("{head}.{body}").as_bytes());
        let sig = URL_SAFE_NO_PAD.encode(mac.finalize().into_bytes());
        format!("{head}.{body}.{sig}")
    }
}

/// A TCP relay in front of livekit-server's signaling port, to break the signaling connection
/// the way a network does: cut it, refuse new ones, or go silent without closing.
pub struct Relay {
    /// `ws://127.0.0.1:<port>`: give this to the participant instead of the server's URL.
    pub url: String,
    refuse: std::sync::Arc<std::sync::atomic::AtomicBool>,
    live: std::sync::Arc<std::sync::Mutex<Vec<RelayConn>>>,
}

struct RelayConn {
    task: tokio::task::AbortHandle,
    stalled: std::sync::Arc<std::sync::atomic::AtomicBool>,
}

impl Relay {
    /// Relays to the server at `ws_url` (`ws://host:port`).
    pub async fn start(ws_url: &str) -> Self {
        use std::sync::Arc;
        use std::sync::atomic::{AtomicBool, Ordering};
        let target = ws_url
            .trim_start_matches("ws://")
            .trim_end_matches('/')
            .to_owned();
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("ws://{}", listener.local_addr().unwrap());
        let refuse = Arc::new(AtomicBool::new(false));
        let live = Arc::new(std::sync::Mutex::new(Vec::<RelayConn>::new()));
        let (r, l) = (refuse.clone(), live.clone());
        tokio::spawn(async move {
            while let Ok((inbound, _)) = listener.accept().await {
                if r.load(Ordering::SeqCst) {
                    drop(inbound);
                    continue;
                }
                let target = target.clone();
                let stalled = Arc::new(AtomicBool::new(false));
                let s = stalled.clone();
                let task = tokio::spawn(async move {
                    if let Ok(outbound) = tokio::net::TcpStream::connect(&target).await {
                        let (ir, iw) = inbound.into_split();
                        let (or, ow) = outbound.into_split();
                        tokio::join!(pipe(ir, ow, s.clone()), pipe(or, iw, s));
                    }
                });
                let mut live = l.lock().unwrap();
                live.retain(|c| !c.task.is_finished());
                live.push(RelayConn {
                    task: task.abort_handle(),
                    stalled,
                });
            }
        });
        Self { url, refuse, live }
    }

    /// Closes every relayed connection (both TCP directions end at once).
    pub fn cut(&self) {
        for c in self.live.lock().unwrap().drain(..) {
            c.task.abort();
        }
    }

    /// New connections are accepted and closed at once (`true`) or relayed (`false`).
    pub fn refuse(&self, refuse: bool) {
        self.refuse
            .store(refuse, std::sync::atomic::Ordering::SeqCst);
    }

    /// The live connections stay open but carry nothing more, either way (new ones relay).
    pub fn stall(&self) {
        for c in self.live.lock().unwrap().iter() {
            c.stalled.store(true, std::sync::atomic::Ordering::SeqCst);
        }
    }
}

async fn pipe(
    mut from: tokio::net::tcp::OwnedReadHalf,
    mut to: tokio::net::tcp::OwnedWriteHalf,
    stalled: std::sync::Arc<std::sync::atomic::AtomicBool>,
) {
    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
    let mut buf = vec![0u8; 16 * 1024];
    loop {
        let n = match from.read(&mut buf).await {
            Ok(0) | Err(_) => return,
            Ok(n) => n,
        };
        if stalled.load(std::sync::atomic::Ordering::SeqCst) {
            // Swallow everything from now on, as a dead path does, without closing.
            std::future::pending::<()>().await;
        }
        if to.write_all(&buf[..n]).await.is_err() {
            return;
        }
    }
}

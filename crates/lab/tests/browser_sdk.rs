//! The browser SDK (`sdk/browser`, `@oracle-calls/browser`) in a real browser: its demo page,
//! served by `oracle-calls web` (`oracle_calls_lab::web`) under its strict CSP, is driven in
//! Debian's headless Chromium by `sdk/browser/test/e2e/driver.mjs` (playwright-core) against
//! the real stack (Synapse, livekit-server), the oracle-calls server and its echo agent, with
//! forward secrecy on. The page signs in, calls, hears its own microphone tone come back from
//! the oracle through end-to-end encrypted media, and hangs up; this test then asks the real
//! systems what happened: the homeserver (the call event and its edit are `m.room.encrypted`),
//! the server's store (active, then ended by `userHangup`), the agent's report, and the
//! browser's console (no CSP violation, no unexpected error, never the call key).
//!
//! Needs the demo built (`cd sdk/browser && npm ci && npm run build`; `scripts/test` does it),
//! Debian's chromium, and the stack up.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]

use std::io::{BufRead as _, Read as _, Write as _};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use base64::Engine as _;
use oracle_calls::keyfile;
use oracle_calls_agent::JobOutcome;
use oracle_calls_crypto::{CallContext, OpenedKey, Recipient};
use oracle_calls_lab::local::{DeployOptions, Deployment, Stack, unique_hex};
use oracle_calls_lab::verify;
use oracle_calls_lab::web::{self, PageConfig, WebOptions};
use oracle_calls_proto::{CallId, CallReason, CallStatus};
use serde_json::{Value, json};
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use zeroize::Zeroizing;

/// One browser call at a time: Chromium, the stack and the agent share two cores.
static SERIAL: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// The tone Chromium's fake microphone plays, and the page listens for in the oracle's audio.
const TONE_HZ: f64 = 660.0;
/// Seconds the page listens once the call is active.
const LISTEN_SECONDS: f64 = 5.0;

fn init_logs() {
    oracle_calls_test_support::init_test_logs("warn");
}

fn repo() -> PathBuf {
    PathBuf::from(concat!(env!("CARGO_MANIFEST_DIR"), "/../.."))
}

fn temp_dir(tag: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("oc-browser-{tag}-{}", unique_hex(5)));
    std::fs::create_dir_all(&d).unwrap();
    d
}

/// The built demo page; the test does not build it.
fn demo_dist() -> PathBuf {
    let dist = repo().join("sdk/browser/demo/dist");
    assert!(
        dist.join("index.html").is_file(),
        "the demo page is not built ({} has no index.html): run `cd sdk/browser && npm ci && \
         npm run build` (scripts/test does)",
        dist.display()
    );
    dist
}

/// A copy of the built page: a rebuild while the test runs must not mix two builds.
fn snapshot_of(dist: &Path, into: &Path) -> PathBuf {
    fn copy(from: &Path, to: &Path) {
        std::fs::create_dir_all(to).unwrap();
        for e in std::fs::read_dir(from).unwrap() {
            let e = e.unwrap();
            let ty = e.file_type().unwrap();
            if ty.is_dir() {
                copy(&e.path(), &to.join(e.file_name()));
            } else if ty.is_file() {
                std::fs::copy(e.path(), to.join(e.file_name())).unwrap();
            }
        }
    }
    let to = into.join("dist");
    copy(dist, &to);
    to
}

/// What the driver printed and logged.
struct DriverRun {
    ok: bool,
    result: Value,
    stderr: String,
}

/// Runs the driver with `cfg` on stdin (the password travels there, not on argv). Each
/// `driver: checkpoint <name>` line it logs is sent to `checkpoints` (the scenario then waits
/// for its `continueFile`).
fn run_driver(cfg: &Value, checkpoints: &tokio::sync::mpsc::UnboundedSender<String>) -> DriverRun {
    assert!(
        Path::new("/usr/bin/chromium").exists(),
        "Debian's chromium is needed (apt-get install chromium; scripts/test installs it)"
    );
    let driver = repo().join("sdk/browser/test/e2e/driver.mjs");
    let mut child = Command::new("node")
        .arg(&driver)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("node runs the driver");
    child
        .stdin
        .take()
        .unwrap()
        .write_all(cfg.to_string().as_bytes())
        .unwrap();
    let mut out = child.stdout.take().unwrap();
    let err = child.stderr.take().unwrap();
    let out = std::thread::spawn(move || {
        let mut s = String::new();
        let _ = out.read_to_string(&mut s);
        s
    });
    // Echoed as it runs (the driver logs each step), and kept for the assertions.
    let checkpoints = checkpoints.clone();
    let err = std::thread::spawn(move || {
        let mut all = String::new();
        for line in std::io::BufReader::new(err).lines().map_while(Result::ok) {
            eprintln!("{line}");
            if let Some(name) = line.strip_prefix("driver: checkpoint ") {
                let _ = checkpoints.send(name.trim().to_owned());
            }
            all.push_str(&line);
            all.push('\n');
        }
        all
    });
    // The driver has its own hard timeout (cfg.timeoutS); this one is for a driver that hangs.
    let limit = Duration::from_secs(cfg["timeoutS"].as_u64().unwrap_or(150) + 30);
    let start = std::time::Instant::now();
    let status = loop {
        if let Some(st) = child.try_wait().unwrap() {
            break st;
        }
        if start.elapsed() > limit {
            let _ = child.kill();
            panic!("the driver ran past {} s", limit.as_secs());
        }
        std::thread::sleep(Duration::from_millis(200));
    };
    let stdout = out.join().unwrap();
    let stderr = err.join().unwrap();
    let result: Value = serde_json::from_str(stdout.trim())
        .unwrap_or_else(|e| panic!("the driver's result is not JSON ({e}): {stdout}"));
    DriverRun {
        ok: status.success() && result["ok"] == true,
        result,
        stderr,
    }
}

/// What a failed run is reported with: the steps, the state it failed in and the console's
/// errors and warnings — not the whole result, which holds the session's storage and requests.
fn summary(r: &Value) -> String {
    let console: Vec<String> = r["console"]
        .as_array()
        .map(|c| {
            c.iter()
                .filter(|e| e["type"] == "error" || e["type"] == "warning")
                .map(|e| format!("  [{}] {}", e["type"], e["text"]))
                .collect()
        })
        .unwrap_or_default();
    format!(
        "steps: {}\nfailed in: {}\nlast error: {}\nCSP violations: {}\npage errors: {}\nconsole errors and warnings:\n{}",
        r["steps"],
        r["failedSnapshot"],
        r["lastError"],
        r["cspViolations"],
        r["pageErrors"],
        console.join("\n")
    )
}

/// Console errors a working page still shows: matrix-js-sdk probes for a key backup and for
/// MatrixRTC transports, which this homeserver has not (404); the SDK's room claim at a server
/// that offers no early join (404, PROTOCOL §6.9: it joins after the sync); and, once the user first hung
/// up (`hangupAt`), livekit-client's complaint that its data channels closed (the server
/// closes the room).
fn allowed_console_error(e: &Value, r: &Value) -> bool {
    let url = e["url"].as_str().unwrap_or("");
    let text = e["text"].as_str().unwrap_or("");
    let probe = url.contains("/_matrix/client/v3/room_keys/version")
        || url.contains("/_matrix/client/unstable/org.matrix.msc4143/rtc/transports")
        || (url.contains("/rooms/oc-") && url.ends_with("/claim"));
    let after_hangup = r["hangupAt"]
        .as_f64()
        .is_some_and(|h| e["ms"].as_f64().is_some_and(|t| t >= h));
    let channel_closed = (text.starts_with("DataChannel error on ")
        && text.contains("User-Initiated Abort"))
        || (text.starts_with("publisher data channel '") && text.contains("closed unexpectedly"));
    (probe && text.contains("404")) || (after_hangup && channel_closed)
}

/// A raw Matrix session of the user (a new device), for what the homeserver stores.
struct RawMatrix {
    base: String,
    token: String,
    http: reqwest::Client,
}

impl RawMatrix {
    async fn login(base: &str, user: &str, password: &str) -> Self {
        let http = reqwest::Client::new();
        let r: Value = http
            .post(format!("{base}/_matrix/client/v3/login"))
            .json(&json!({
                "type": "m.login.password",
                "identifier": {"type": "m.id.user", "user": user},
                "password": password,
                "initial_device_display_name": "browser_sdk test (raw reads)",
            }))
            .send()
            .await
            .unwrap()
            .error_for_status()
            .unwrap()
            .json()
            .await
            .unwrap();
        Self {
            base: base.to_owned(),
            token: r["access_token"].as_str().unwrap().to_owned(),
            http,
        }
    }

    async fn get(&self, path: &str) -> Value {
        let r = self
            .http
            .get(format!("{}{path}", self.base))
            .bearer_auth(&self.token)
            .send()
            .await
            .unwrap();
        assert!(r.status().is_success(), "GET {path}: {}", r.status());
        r.json().await.unwrap()
    }

    async fn logout(self) {
        let _ = self
            .http
            .post(format!("{}/_matrix/client/v3/logout", self.base))
            .bearer_auth(&self.token)
            .json(&json!({}))
            .send()
            .await;
    }
}

/// The call key, opened as an auditor holding the oracle key and a copy of the key holder's
/// prekey store taken before the call — only to search the browser's output for it, and to say
/// which layer failed when a call did not connect. Errors name the layer, never key bytes.
fn open_call_key(
    oracle_key_file: &Path,
    prekeys_before: &[oracle_calls_crypto::Prekey],
    rec: &oracle_calls_server::store::CallRecord,
) -> Result<Zeroizing<Vec<u8>>, String> {
    let c = &rec.content;
    let ctx = CallContext::new(
        c.session_id.clone(),
        rec.call_id.room_name().clone(),
        c.user_did.clone(),
        c.oracle_did.clone(),
        c.call_type,
    );
    let envelope = match oracle_calls_crypto::recipient(&c.encryption_key)
        .map_err(|e| format!("the envelope's header: {e}"))?
    {
        Recipient::Prekey { prekey_id, .. } => {
            let prekey = prekeys_before
                .iter()
                .find(|p| p.id == prekey_id)
                .ok_or(format!(
                    "prekey {prekey_id} is not in the store's copy taken before the call"
                ))?;
            oracle_calls_crypto::open_prekey_layer(prekey, &c.encryption_key, &ctx)
                .map_err(|e| format!("the prekey layer: {e}"))?
        }
        other => {
            return Err(format!(
                "with forward secrecy the key is sealed to a prekey, not {other:?}"
            ));
        }
    };
    let oracle = keyfile::read_private_key(oracle_key_file).map_err(|e| e.to_string())?;
    match oracle_calls_crypto::open(&oracle, &envelope, &ctx) {
        Ok(OpenedKey::Bound(k)) => Ok(Zeroizing::new(k.dangerous_expose_bytes().to_vec())),
        Ok(OpenedKey::Unbound(_)) => Err("the browser sealed an unbound envelope".into()),
        Err(e) => Err(format!("the inner envelope (oracle key): {e}")),
    }
}

/// The forms a careless log line would show a key in.
fn key_forms(key: &[u8]) -> Vec<Zeroizing<String>> {
    let hex: String = key.iter().map(|b| format!("{b:02x}")).collect();
    vec![
        Zeroizing::new(hex.to_uppercase()),
        Zeroizing::new(hex),
        Zeroizing::new(base64::engine::general_purpose::STANDARD.encode(key)),
        Zeroizing::new(base64::engine::general_purpose::STANDARD_NO_PAD.encode(key)),
        Zeroizing::new(base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(key)),
        // As a JS array / Uint8Array printed by console.log.
        Zeroizing::new(key.iter().map(u8::to_string).collect::<Vec<_>>().join(",")),
    ]
}

/// Whether the page verifies the oracle by key transparency, and what the directory holds.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Kt {
    /// No directory: the page pins the oracle on first use.
    Off,
    /// The directory holds the record the oracle's server describes.
    Published,
    /// The directory holds the oracle's record with another bot user than the server's: a
    /// server (or homeserver) that contradicts what the operator published.
    Contradicted,
}

/// A deployment, the page served for it, and a provisioned user: one per test.
struct Harness {
    tag: String,
    dep: Deployment,
    /// The key-transparency directory the page verifies the oracle from, if any.
    kt: Option<oracle_calls_lab::local_kt::KtService>,
    site: web::WebServer,
    dir: PathBuf,
    homeserver: String,
    name: String,
    user_id: String,
    password: Zeroizing<String>,
    prekeys_before: Vec<oracle_calls_crypto::Prekey>,
}

/// Statuses the server stored for the user's calls while the driver ran: (call id, status).
type Seen = Vec<(String, CallStatus)>;

/// A driver run in progress.
struct Running {
    driver: tokio::task::JoinHandle<DriverRun>,
    /// The scenario's checkpoints, as it reaches them.
    checkpoints: tokio::sync::mpsc::UnboundedReceiver<String>,
    /// Created to let the scenario go on after a checkpoint.
    continue_file: PathBuf,
    stop_watcher: tokio::sync::oneshot::Sender<()>,
    watcher: tokio::task::JoinHandle<Seen>,
}

impl Harness {
    async fn start(tag: &str) -> Self {
        Self::start_with(tag, Kt::Off).await
    }

    async fn start_with(tag: &str, kt_mode: Kt) -> Self {
        Self::start_edited(tag, kt_mode, |_| {}).await
    }

    /// As [`Harness::start_with`], with the deployment's options passed through `edit` first.
    async fn start_edited(tag: &str, kt_mode: Kt, edit: impl FnOnce(&mut DeployOptions)) -> Self {
        init_logs();
        let dist = demo_dist();
        let stack = Stack::running().unwrap();
        let dir = temp_dir(tag);
        eprintln!("browser_sdk ({tag}): working directory {}", dir.display());
        // The page's origin first: the oracle server's CORS allow-list names it.
        let site = web::bind(SocketAddr::from(([127, 0, 0, 1], 0)))
            .await
            .unwrap();
        let origin = site.url().to_owned();
        let mut opts = DeployOptions::new(dir.join("deployment"));
        opts.cors_allowed_origins = vec![origin.clone()];
        assert!(opts.forward_secrecy, "forward secrecy is the default");
        edit(&mut opts);
        let dep = Deployment::start(stack.clone(), opts).await.unwrap();
        let prekeys_before =
            verify::read_prekey_store(dep.prekey_store().expect("forward secrecy")).unwrap();
        let homeserver = stack.get("MATRIX_URL").unwrap().to_owned();
        let (kt, key_transparency) = if kt_mode == Kt::Off {
            (None, None)
        } else {
            use oracle_calls_lab::local_kt;
            let directory = local_kt::KtDirectory::new(
                Path::new(env!("CARGO_BIN_EXE_oracle-lab")),
                dir.join("kt"),
                &dep.oracle_did,
            )
            .unwrap();
            let service = directory.start("data").unwrap();
            let mut record =
                local_kt::record_of(&local_kt::well_known(&dep.server.url).await.unwrap());
            if kt_mode == Kt::Contradicted {
                record.matrix_user_id = "@another-bot:localhost".to_owned();
            }
            local_kt::publish(&service, &directory.token, &dep.oracle_did, &record)
                .await
                .unwrap();
            let page = web::PageKeyTransparency {
                url: service.base.clone(),
                public_key: serde_json::to_value(&directory.public).unwrap(),
            };
            (Some(service), Some(page))
        };
        let site = site
            .serve(
                WebOptions::for_deployment(
                    snapshot_of(&dist, &dir),
                    &stack,
                    &dep,
                    key_transparency,
                )
                .unwrap(),
            )
            .unwrap();
        eprintln!("browser_sdk ({tag}): page {origin}/ (CSP: {})", site.csp());
        let name = format!("did-ixo-web{}", unique_hex(5));
        let (user_id, password) = stack.user(&name).unwrap();
        Self {
            tag: tag.to_owned(),
            dep,
            kt,
            site,
            dir,
            homeserver,
            name,
            user_id,
            password,
            prekeys_before,
        }
    }

    /// Runs `scenario` in the driver (`extra` merged into its config) while watching the
    /// server's store; a failed run is diagnosed (the envelopes of the calls it made) and
    /// fails the test.
    async fn drive(&self, scenario: &str, extra: Value) -> (DriverRun, Seen) {
        let running = self.launch(scenario, extra);
        self.finish(running).await
    }

    /// Starts the driver on `scenario` and the store's watcher; [`Harness::finish`] waits.
    fn launch(&self, scenario: &str, extra: Value) -> Running {
        let state = self.dep.server.state.clone();
        let watched_user = self.user_id.clone();
        let (stop_tx, mut stop_rx) = tokio::sync::oneshot::channel::<()>();
        let watcher = tokio::spawn(async move {
            let mut seen: Seen = Vec::new();
            loop {
                for rec in state.store().open_calls().await.unwrap() {
                    if rec.sender == watched_user
                        && !seen
                            .iter()
                            .any(|(id, s)| id == rec.call_id.as_str() && *s == rec.status)
                    {
                        seen.push((rec.call_id.as_str().to_owned(), rec.status));
                    }
                }
                tokio::select! {
                    _ = &mut stop_rx => return seen,
                    () = tokio::time::sleep(Duration::from_millis(100)) => {}
                }
            }
        });
        let continue_file = self.dir.join(format!("continue-{}", unique_hex(3)));
        let mut cfg = json!({
            "pageUrl": format!("{}/", self.site.url()),
            "user": self.name,
            "password": self.password.as_str(),
            "scenario": scenario,
            "seconds": LISTEN_SECONDS,
            "toneHz": TONE_HZ,
            "toneWav": self.dir.join("tone.wav"),
            "screenshotsDir": self.dir.join("screenshots"),
            "keyDerivation": "hkdf",
            "errorShot": false,
            "continueFile": continue_file,
            "timeoutS": 150,
        });
        for (k, v) in extra.as_object().unwrap() {
            cfg[k] = v.clone();
        }
        let (tx, checkpoints) = tokio::sync::mpsc::unbounded_channel();
        let driver = tokio::task::spawn_blocking(move || run_driver(&cfg, &tx));
        Running {
            driver,
            checkpoints,
            continue_file,
            stop_watcher: stop_tx,
            watcher,
        }
    }

    async fn finish(&self, running: Running) -> (DriverRun, Seen) {
        let run = running.driver.await.unwrap();
        let _ = running.stop_watcher.send(());
        let seen = running.watcher.await.unwrap();
        let r = &run.result;
        if let Some(s) = r["screenshots"].as_object() {
            for (what, path) in s {
                eprintln!(
                    "browser_sdk ({}): screenshot {what}: {}",
                    self.tag,
                    path.as_str().unwrap_or("")
                );
            }
        }
        if !run.ok {
            // Which calls the server saw, and whether their envelopes open as an auditor's
            // would.
            let mut ids: Vec<String> = seen.iter().map(|(id, _)| id.clone()).collect();
            if let Some(id) = r["failedSnapshot"]["callId"].as_str() {
                ids.push(id.to_owned());
            }
            ids.dedup();
            for id in ids {
                let Ok(call_id) = CallId::parse(&id) else {
                    continue;
                };
                if let Ok(Some(rec)) = self.dep.server.state.store().call(&call_id).await {
                    let opened = self.call_key(&rec).map(|_| "opens");
                    eprintln!(
                        "browser_sdk ({}): call {id}: status {:?}, reason {:?}, envelope {opened:?}",
                        self.tag, rec.status, rec.reason
                    );
                }
            }
            panic!(
                "the driver failed: {}\n{}",
                r["error"].as_str().unwrap_or("(no error)"),
                summary(r)
            );
        }
        (run, seen)
    }

    fn call_key(
        &self,
        rec: &oracle_calls_server::store::CallRecord,
    ) -> Result<Zeroizing<Vec<u8>>, String> {
        open_call_key(&self.dep.key_file, &self.prekeys_before, rec)
    }

    async fn record(&self, call_id: &CallId) -> oracle_calls_server::store::CallRecord {
        self.dep
            .server
            .state
            .store()
            .call(call_id)
            .await
            .unwrap()
            .expect("the server stores the call")
    }

    async fn agent_report(&self) -> oracle_calls_agent::CallReport {
        let report = tokio::time::timeout(
            Duration::from_secs(10),
            self.dep.agent.as_ref().unwrap().next_report(),
        )
        .await
        .expect("the agent reports the call within 10 s of its end")
        .unwrap();
        eprintln!("browser_sdk ({}): agent report {report:?}", self.tag);
        report
    }

    /// Stops the page and the deployment; the copy of the page goes (the screenshots stay).
    async fn stop(self) {
        self.site.stop().await;
        drop(self.kt);
        self.dep.stop().await;
        let _ = std::fs::remove_dir_all(self.dir.join("dist"));
    }
}

/// The measurements after the first second of listening: (tone power, control power).
fn powers(r: &Value) -> Vec<(f64, f64)> {
    r["power"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|p| p["ms"].as_f64().unwrap() >= 1000.0)
        .map(|p| (p["power"].as_f64().unwrap(), p["control"].as_f64().unwrap()))
        .collect()
}

/// The page heard its own tone come back from the oracle, and the measurement's controls hold.
fn assert_heard_tone(tag: &str, r: &Value) {
    let p = powers(r);
    assert!(p.len() >= 4, "too few measurements: {}", r["power"]);
    let mut tone: Vec<f64> = p.iter().map(|(t, _)| *t).collect();
    tone.sort_by(f64::total_cmp);
    let median = tone[tone.len() / 2];
    eprintln!(
        "browser_sdk ({tag}): {TONE_HZ} Hz power in the oracle's audio: median {median:.3}, min {:.3} ({} samples)",
        tone[0],
        tone.len()
    );
    // Controls: the same measurement finds nothing before the call, nor at a frequency the
    // tone does not hold.
    let before_call = r["powerBeforeCall"]
        .as_f64()
        .expect("measured before the call");
    assert!(
        before_call < 0.05,
        "tone power before any call: {before_call}"
    );
    assert!(
        p.iter().all(|(_, c)| *c < 0.1),
        "power at {} Hz, which the tone does not hold: {}",
        TONE_HZ * 1.5,
        r["power"]
    );
    assert!(
        median > 0.5,
        "the page did not hear its {TONE_HZ} Hz tone back: {}",
        r["power"]
    );
}

/// Every phase in the timeline, encryption everywhere, no decryption failure after the first
/// 2 s, the lock shown in the call and gone after it. Returns the call id.
fn assert_connected(tag: &str, r: &Value) -> CallId {
    let active = &r["snapshots"]["active"];
    let timeline: Vec<(&str, f64)> = active["timeline"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| (t["phase"].as_str().unwrap(), t["ms"].as_f64().unwrap()))
        .collect();
    eprintln!("browser_sdk ({tag}): timeline {timeline:?}");
    for phase in oracle_calls_lab::bench_browser::PHASES {
        assert!(
            timeline.iter().any(|(p, _)| *p == phase),
            "phase {phase} missing from the timeline: {timeline:?}"
        );
    }
    let before = &r["snapshots"]["beforeHangup"];
    assert_eq!(before["phase"], "active", "{before}");
    assert_eq!(
        before["encryption"],
        json!({"matrixEvent": true, "localMedia": true, "oracleMedia": true}),
        "{before}"
    );
    assert_eq!(before["refusedTracks"], 0, "{before}");
    let at2 = r["decryptionFailuresAt2s"]
        .as_u64()
        .expect("measured at 2 s");
    let end = before["decryptionFailures"].as_u64().unwrap();
    assert_eq!(
        end, at2,
        "decryption failures after the first 2 s: {at2} → {end}"
    );
    assert_eq!(r["lockVisible"], true, "the lock is shown during the call");
    assert_eq!(
        r["lockVisibleEnded"], false,
        "the lock is gone after the call"
    );
    // The page's end of the call and its history (GET /calls).
    let ended = &r["snapshots"]["ended"];
    assert_eq!(ended["phase"], "ended", "{ended}");
    assert_eq!(ended["endReason"], "userHangup", "{ended}");
    let call_id = before["callId"].as_str().expect("a call id");
    let listed = r["calls"]
        .as_array()
        .expect("calls() lists")
        .iter()
        .find(|c| c["callId"] == call_id)
        .unwrap_or_else(|| panic!("the call is in the page's history: {}", r["calls"]));
    assert_eq!(listed["callStatus"], "ended", "{listed}");
    assert_eq!(listed["reason"], "userHangup", "{listed}");
    CallId::parse(call_id).unwrap()
}

/// The server stored the call active, then ended by the user; the agent served it with every
/// frame decrypted; the homeserver holds the call event and the user's edit encrypted only.
async fn assert_server_side(
    h: &Harness,
    seen: &Seen,
    call_id: &CallId,
    key_derivation: &str,
    call_type: &str,
) -> oracle_calls_server::store::CallRecord {
    eprintln!(
        "browser_sdk ({}): statuses the server stored: {seen:?}",
        h.tag
    );
    assert!(
        seen.iter()
            .any(|(id, s)| id == call_id.as_str() && *s == CallStatus::Active),
        "the server never stored the call as active: {seen:?}"
    );
    let rec = h.record(call_id).await;
    assert_eq!(rec.status, CallStatus::Ended);
    assert_eq!(rec.reason, Some(CallReason::UserHangup));
    assert_eq!(rec.sender, h.user_id);
    assert_eq!(
        serde_json::to_value(rec.content.key_derivation).unwrap(),
        json!(key_derivation),
        "the call event names the key derivation the page used"
    );
    assert_eq!(
        serde_json::to_value(rec.content.call_type).unwrap(),
        json!(call_type)
    );

    let report = h.agent_report().await;
    assert!(
        matches!(report.outcome, JobOutcome::Served { .. }),
        "{report:?}"
    );
    assert!(report.frames_heard > 100, "{report:?}");
    assert_eq!(report.decrypt_failures, 0, "{report:?}");

    let raw = RawMatrix::login(&h.homeserver, &h.name, &h.password).await;
    let ev = raw
        .get(&format!(
            "/_matrix/client/v3/rooms/{}/event/{}",
            verify::urlenc(&rec.matrix_room_id),
            verify::urlenc(call_id.event_id().as_str())
        ))
        .await;
    assert_eq!(
        ev["type"], "m.room.encrypted",
        "the stored call event: {ev}"
    );
    assert!(
        !ev.to_string().contains("encryptionKey"),
        "the stored event shows its content: {ev}"
    );
    let rel = raw
        .get(&format!(
            "/_matrix/client/v1/rooms/{}/relations/{}/m.replace",
            verify::urlenc(&rec.matrix_room_id),
            verify::urlenc(call_id.event_id().as_str())
        ))
        .await;
    let edits: Vec<&Value> = rel["chunk"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|e| e["sender"] == h.user_id.as_str())
        .collect();
    assert!(!edits.is_empty(), "no m.replace edit by the user: {rel}");
    assert!(
        edits.iter().all(|e| e["type"] == "m.room.encrypted"),
        "the user's edits are stored encrypted: {rel}"
    );
    raw.logout().await;
    rec
}

/// No CSP violation, no uncaught error, console errors only from the allowlist, and the call
/// key in none of the browser's output.
fn assert_browser_clean(
    h: &Harness,
    run: &DriverRun,
    recs: &[&oracle_calls_server::store::CallRecord],
) {
    let r = &run.result;
    assert_eq!(
        r["cspViolations"].as_array().unwrap().len(),
        0,
        "CSP violations: {}",
        r["cspViolations"]
    );
    assert_eq!(
        r["pageErrors"].as_array().unwrap().len(),
        0,
        "uncaught page errors: {}",
        r["pageErrors"]
    );
    let console = r["console"].as_array().unwrap();
    let unexpected: Vec<&Value> = console
        .iter()
        .filter(|e| e["page"] == "main" && e["type"] == "error" && !allowed_console_error(e, r))
        .collect();
    assert!(
        unexpected.is_empty(),
        "unexpected console errors: {unexpected:#?}"
    );
    assert!(
        !console.iter().any(|e| e["text"]
            .as_str()
            .unwrap_or("")
            .contains("Content Security Policy")),
        "the console reports a CSP refusal"
    );
    let everything = Zeroizing::new(format!("{r}\n{}", run.stderr));
    for rec in recs {
        let key = h.call_key(rec).unwrap();
        for form in key_forms(&key) {
            assert!(
                !everything.contains(form.as_str()),
                "the call key appears in the browser's console or the driver's output"
            );
        }
    }
    eprintln!(
        "browser_sdk ({}): {} console lines, {} requests (with bodies), localStorage and IndexedDB names: no CSP violation, no call key in hex, base64 or as a byte list",
        h.tag,
        console.len(),
        r["requests"].as_array().map_or(0, Vec::len)
    );
}

/// The server's early-join counters: (`room_claimed`, `room_adopted`).
fn early_joins(h: &Harness) -> (f64, f64) {
    let count = |event: &str| {
        h.dep.metric(&format!(
            "oracle_calls_call_events_total{{event=\"{event}\"}}"
        ))
    };
    (count("room_claimed"), count("room_adopted"))
}

/// How the page's media joined the call's room (the snapshot's `mediaJoin`).
fn media_join(r: &Value) -> &str {
    r["snapshots"]["beforeHangup"]["mediaJoin"]
        .as_str()
        .unwrap_or_else(|| panic!("no mediaJoin: {}", r["snapshots"]["beforeHangup"]))
}

/// An audio call. With HKDF the page joins early (the server's default, PROTOCOL §6.9): the
/// room it claimed and joined is the one the sync adopts. With PBKDF2 the claims live 1 s, so
/// the sync always answers within the page's 2 s margin of the lapse: the page leaves the
/// room it joined early (or finds it swept) and joins again with the sync's token, under the
/// same key, in the same LiveKit `Room`.
async fn audio_call(key_derivation: &str) {
    let _serial = SERIAL.lock().await;
    let lapsing = key_derivation == "pbkdf2";
    let h = Harness::start_edited(key_derivation, Kt::Off, |o| {
        if lapsing {
            o.room_claim_ttl_secs = 1;
        }
    })
    .await;
    let (run, seen) = h
        .drive(
            "audio",
            json!({"keyDerivation": key_derivation, "errorShot": key_derivation == "hkdf"}),
        )
        .await;
    let r = &run.result;
    assert_eq!(r["keyDerivation"], key_derivation);
    assert_heard_tone(&h.tag, r);
    let call_id = assert_connected(&h.tag, r);
    let (claimed, adopted) = early_joins(&h);
    eprintln!(
        "browser_sdk ({key_derivation}): media joined {}, claimed {claimed}, adopted {adopted}",
        media_join(r)
    );
    // One call; with the 1 s claims the sync may adopt the room or find it swept.
    assert_eq!(claimed, 1.0);
    if lapsing {
        assert_eq!(media_join(r), "afterSync");
    } else {
        assert_eq!(media_join(r), "early");
        assert_eq!(adopted, 1.0);
    }
    let rec = assert_server_side(&h, &seen, &call_id, key_derivation, "audio").await;
    assert_browser_clean(&h, &run, &[&rec]);
    if key_derivation == "hkdf" {
        // The error state: a wrong password is reported with a code, shown on the page.
        let err = &r["errorState"];
        assert!(
            err["lastError"]["code"]
                .as_str()
                .is_some_and(|c| !c.is_empty()),
            "a wrong password gives a typed error: {err}"
        );
        assert_eq!(err["errorVisible"], true, "{err}");
        assert!(
            err["errorCode"]
                .as_str()
                .is_some_and(|c| c.contains(err["lastError"]["code"].as_str().unwrap())),
            "the page shows the error's code: {err}"
        );
    }
    h.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_audio_call_from_the_demo_page_in_chromium_hkdf() {
    audio_call("hkdf").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_audio_call_from_the_demo_page_in_chromium_pbkdf2() {
    audio_call("pbkdf2").await;
}

/// Key transparency in the page: it verifies the oracle's record from the directory (the
/// directory's read routes answer its origin), the call connects and is heard, and the page
/// keeps the directory's checkpoint for the next call (rollback/fork detection).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_page_verifies_the_oracle_by_key_transparency_and_calls() {
    let _serial = SERIAL.lock().await;
    let h = Harness::start_with("kt", Kt::Published).await;
    let (run, seen) = h.drive("keyTransparency", json!({})).await;
    let r = &run.result;
    assert_eq!(
        r["ktOutcome"]["phase"], "active",
        "the call connects: {}",
        r["ktOutcome"]
    );
    let key_text = r["oracleKeyText"].as_str().unwrap_or_default();
    assert!(
        key_text.contains("verified by key transparency"),
        "the page says how the oracle was verified: {key_text}"
    );
    let local = r["storageAfterCall"]["localStorage"].as_object().unwrap();
    let checkpoint = local
        .iter()
        .find(|(k, _)| k.contains("/kt/"))
        .map(|(_, v)| v.as_str().unwrap())
        .expect("the page stored the directory's checkpoint");
    let checkpoint: Value = serde_json::from_str(checkpoint).unwrap();
    assert!(
        checkpoint["checkpoint"]["epoch"]
            .as_u64()
            .is_some_and(|e| e >= 1),
        "{checkpoint}"
    );
    let pins = local
        .iter()
        .find(|(k, _)| k.ends_with(h.dep.oracle_did.as_str()))
        .map(|(_, v)| serde_json::from_str::<Value>(v.as_str().unwrap()).unwrap())
        .expect("the oracle is pinned");
    assert!(
        pins["ktEpoch"].as_u64().is_some(),
        "pinned with its epoch: {pins}"
    );
    let call_id = CallId::parse(r["ktOutcome"]["callId"].as_str().unwrap()).unwrap();
    let rec = h.record(&call_id).await;
    assert_eq!(rec.status, CallStatus::Ended, "{seen:?}");
    assert_eq!(rec.reason, Some(CallReason::UserHangup));
    h.stop().await;
}

/// A server that describes the oracle otherwise than the record its operator published (here
/// another bot user) is refused by the page before anything is sent: `ktMismatch`, shown with
/// its code; the server never sees a call.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_server_contradicting_the_verified_record_is_refused_before_anything_is_sent() {
    let _serial = SERIAL.lock().await;
    let h = Harness::start_with("kt-contradicted", Kt::Contradicted).await;
    let (run, seen) = h.drive("keyTransparency", json!({})).await;
    let r = &run.result;
    assert_eq!(r["ktOutcome"]["phase"], "failed", "{}", r["ktOutcome"]);
    assert_eq!(
        r["ktOutcome"]["error"]["code"], "ktMismatch",
        "{}",
        r["ktOutcome"]
    );
    let message = r["ktOutcome"]["error"]["message"].as_str().unwrap();
    assert!(
        message.contains("matrixUserId") && message.contains("@another-bot:localhost"),
        "the refusal names the field and both values: {message}"
    );
    assert!(
        r["shownCode"]
            .as_str()
            .is_some_and(|c| c.contains("ktMismatch")),
        "the page shows the code: {}",
        r["shownCode"]
    );
    assert!(r["ktOutcome"]["callId"].is_null(), "no call event was sent");
    assert!(seen.is_empty(), "the server saw no call: {seen:?}");
    assert!(
        h.dep
            .server
            .state
            .store()
            .open_calls()
            .await
            .unwrap()
            .iter()
            .all(|c| c.sender != h.user_id),
        "no call of this user in the store"
    );
    h.stop().await;
}

/// A video call: the fake camera goes out encrypted, the echo agent's video comes back and is
/// shown, the tone comes back too.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_video_call_from_the_demo_page_in_chromium() {
    let _serial = SERIAL.lock().await;
    // A server that offers no early join: the page joins with the sync's token.
    let h = Harness::start_edited("video", Kt::Off, |o| o.early_join = false).await;
    let (run, seen) = h.drive("video", json!({})).await;
    let r = &run.result;
    assert_heard_tone(&h.tag, r);
    assert_eq!(media_join(r), "afterSync");
    assert_eq!(early_joins(&h), (0.0, 0.0));
    let frames: Vec<u64> = r["power"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|p| p["videoFrames"].as_u64())
        .collect();
    eprintln!(
        "browser_sdk (video): oracle video frames shown {frames:?}, size {}",
        r["videoSize"]
    );
    let (first, last) = (frames[0], frames[frames.len() - 1]);
    assert!(
        last > first + 20,
        "the oracle's video is not shown: {frames:?}"
    );
    assert!(
        r["videoSize"]["width"].as_u64().is_some_and(|w| w > 0),
        "{}",
        r["videoSize"]
    );
    let call_id = assert_connected(&h.tag, r);
    let rec = assert_server_side(&h, &seen, &call_id, "hkdf", "video").await;
    assert_browser_clean(&h, &run, &[&rec]);
    h.stop().await;
}

/// The page keys its media with a wrong key (the demo's test hook): nothing of the oracle
/// plays, the failures are counted, the lock never shows; the agent cannot decrypt the page.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_wrong_media_key_plays_nothing_and_shows_no_lock() {
    let _serial = SERIAL.lock().await;
    let h = Harness::start("wrong-key").await;
    let (run, seen) = h.drive("wrongKey", json!({})).await;
    let r = &run.result;
    let samples = r["power"].as_array().unwrap();
    eprintln!(
        "browser_sdk (wrong-key): {} samples, last snapshot {}",
        samples.len(),
        r["snapshots"]["beforeHangup"]
    );
    assert!(samples.len() >= 4, "{}", r["power"]);
    assert!(
        samples
            .iter()
            .all(|s| s["power"].as_f64().unwrap() < 0.1 && s["lock"] == false),
        "a wrong key: no tone, no lock: {}",
        r["power"]
    );
    assert_eq!(r["lockVisible"], false);
    let before = &r["snapshots"]["beforeHangup"];
    assert!(
        before["decryptionFailures"].as_u64().unwrap() > 0,
        "the oracle's undecryptable frames are counted: {before}"
    );
    assert!(
        r["insecureVisible"] == true,
        "the page says the media does not decrypt: {}",
        r["insecureText"]
    );
    let call_id = CallId::parse(before["callId"].as_str().expect("a call id")).unwrap();
    assert!(
        seen.iter().any(|(id, _)| id == call_id.as_str()),
        "{seen:?}"
    );
    let report = h.agent_report().await;
    assert!(report.decrypt_failures > 0, "{report:?}");
    let rec = h.record(&call_id).await;
    assert_eq!(rec.status, CallStatus::Ended, "{:?}", rec.reason);
    assert_browser_clean_but_decryption(&h, &run, &rec);
    h.stop().await;
}

/// As [`assert_browser_clean`], where livekit-client's own decryption errors are expected.
fn assert_browser_clean_but_decryption(
    h: &Harness,
    run: &DriverRun,
    rec: &oracle_calls_server::store::CallRecord,
) {
    let r = &run.result;
    assert_eq!(r["cspViolations"].as_array().unwrap().len(), 0);
    let unexpected: Vec<&Value> = r["console"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|e| {
            e["page"] == "main"
                && e["type"] == "error"
                && !allowed_console_error(e, r)
                && !e["text"]
                    .as_str()
                    .unwrap_or("")
                    .starts_with("InvalidKey: Decryption failed")
        })
        .collect();
    assert!(
        unexpected.is_empty(),
        "unexpected console errors: {unexpected:#?}"
    );
    let everything = Zeroizing::new(format!("{r}\n{}", run.stderr));
    let key = h.call_key(rec).unwrap();
    for form in key_forms(&key) {
        assert!(!everything.contains(form.as_str()), "the call key leaked");
    }
}

/// The plaintext guard (the demo's test hook): into a room the page does not know, or an
/// unencrypted one, the call event is not sent; the call fails with `plaintextRoom`, and the
/// homeserver holds no plaintext call event of the user.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_plaintext_guard_sends_nothing_into_an_unknown_or_unencrypted_room() {
    let _serial = SERIAL.lock().await;
    let h = Harness::start("plaintext").await;
    let (run, seen) = h.drive("plaintextGuard", json!({})).await;
    let r = &run.result;
    let outcomes = r["plaintext"].as_array().unwrap();
    assert_eq!(outcomes.len(), 2, "{}", r["plaintext"]);
    for o in outcomes {
        eprintln!("browser_sdk (plaintext): {o}");
        assert_eq!(o["phase"], "failed", "{o}");
        assert_eq!(o["error"]["code"], "plaintextRoom", "{o}");
        assert!(
            o["shownCode"]
                .as_str()
                .is_some_and(|c| c.contains("plaintextRoom")),
            "{o}"
        );
        assert!(
            !o["timeline"]
                .as_array()
                .unwrap()
                .iter()
                .any(|t| t["phase"] == "send"),
            "nothing was sent: {o}"
        );
    }
    assert!(seen.is_empty(), "the server saw calls: {seen:?}");
    // What the homeserver holds in the user's rooms: no call event in the clear.
    let raw = RawMatrix::login(&h.homeserver, &h.name, &h.password).await;
    let sync = raw.get("/_matrix/client/v3/sync?timeout=0").await;
    let mut rooms = 0;
    if let Some(joined) = sync["rooms"]["join"].as_object() {
        for (room, v) in joined {
            rooms += 1;
            for ev in v["timeline"]["events"].as_array().unwrap() {
                assert_ne!(
                    ev["type"], "m.ixo.oracles_call",
                    "a plaintext call event in {room}: {ev}"
                );
                assert!(
                    !ev.to_string().contains("encryptionKey"),
                    "a call event's content in the clear in {room}: {ev}"
                );
            }
        }
    }
    eprintln!("browser_sdk (plaintext): {rooms} rooms of the user, no call event in the clear");
    raw.logout().await;
    assert_eq!(r["cspViolations"].as_array().unwrap().len(), 0);
    h.stop().await;
}

/// A reload offers the saved session, which restores the same device without a new login;
/// a call from the restored session works.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reload_restores_the_same_device_and_it_calls() {
    let _serial = SERIAL.lock().await;
    let h = Harness::start("restore").await;
    let (run, seen) = h.drive("restore", json!({})).await;
    let r = &run.result;
    let rs = &r["restore"];
    eprintln!(
        "browser_sdk (restore): {rs}; offered as {}",
        r["restoreText"]
    );
    assert!(
        rs["before"]["deviceId"]
            .as_str()
            .is_some_and(|d| !d.is_empty()),
        "{rs}"
    );
    assert_eq!(rs["before"], rs["after"], "the same user and device");
    assert_eq!(rs["after"]["userId"], h.user_id.as_str());
    assert_eq!(rs["loginsAfterReload"], 0, "no new login after the reload");
    assert_heard_tone(&h.tag, r);
    let call_id = assert_connected(&h.tag, r);
    let rec = assert_server_side(&h, &seen, &call_id, "hkdf", "audio").await;
    assert_browser_clean(&h, &run, &[&rec]);
    // Sign-out clears the saved session and the device's crypto store.
    let storage = &r["storage"];
    let names = |v: &Value| -> String {
        let local: Vec<&String> = v["localStorage"]
            .as_object()
            .map(|o| o.keys().collect())
            .unwrap_or_default();
        format!("localStorage keys {local:?}, IndexedDB {}", v["indexedDb"])
    };
    eprintln!(
        "browser_sdk (restore): in the call: {}; after sign-out: {}",
        names(&storage["inCall"]),
        names(&storage["loggedOut"])
    );
    let crypto_dbs = |v: &Value| -> Vec<String> {
        v["indexedDb"]
            .as_array()
            .unwrap()
            .iter()
            .filter_map(|n| n.as_str())
            .filter(|n| n.contains("matrix-sdk-crypto"))
            .map(str::to_owned)
            .collect()
    };
    assert!(
        !crypto_dbs(&storage["inCall"]).is_empty(),
        "the device's crypto store is in IndexedDB during the call: {}",
        names(&storage["inCall"])
    );
    assert!(
        crypto_dbs(&storage["loggedOut"]).is_empty(),
        "sign-out leaves the crypto store: {}",
        names(&storage["loggedOut"])
    );
    let session_left = storage["loggedOut"]["localStorage"]
        .as_object()
        .unwrap()
        .values()
        .any(|v| v.as_str().is_some_and(|v| v.contains(&h.user_id)));
    assert!(
        !session_left,
        "sign-out leaves the session in localStorage: {}",
        names(&storage["loggedOut"])
    );
    assert_eq!(r["restoreOfferedAfterLogout"], false);
    h.stop().await;
}

/// Trust on first use: a call pins the oracle's key; the operator (or an intruder) replaces
/// it; the next call is refused with `oracleKeyChanged` before anything is sent, the page says
/// "key changed!" and offers the new key id; accepting it calls again and connects.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_changed_oracle_key_is_refused_until_accepted() {
    let _serial = SERIAL.lock().await;
    let mut h = Harness::start("key-changed").await;
    let old_key_file = h.dep.key_file.clone();
    let mut running = h.launch("keyChanged", json!({}));
    let cp = tokio::time::timeout(Duration::from_secs(120), running.checkpoints.recv())
        .await
        .expect("the first call ends within 120 s");
    assert_eq!(
        cp.as_deref(),
        Some("keyChanged"),
        "the driver stopped early"
    );
    let first_agent = h.agent_report().await;
    let new_key = h
        .dep
        .replace_oracle_key(oracle_calls_crypto::KeyScheme::HpkeP256)
        .await
        .unwrap();
    // The restarted agent stocks the server with prekeys the copy taken at start lacks.
    h.prekeys_before
        .extend(verify::read_prekey_store(h.dep.prekey_store().unwrap()).unwrap());
    std::fs::write(&running.continue_file, b"go").unwrap();
    let (run, seen) = h.finish(running).await;
    let r = &run.result;

    // The first call pinned the old key.
    let first = &r["firstCall"];
    assert_eq!(first["ended"]["phase"], "ended", "{first}");
    let old_id = first["active"]["oracle"]["keyId"]
        .as_str()
        .unwrap()
        .to_owned();
    assert_ne!(old_id, new_key.key_id().to_string());
    assert_eq!(
        first["active"]["oracle"]["pinnedOnFirstUse"], true,
        "{first}"
    );
    assert!(
        matches!(first_agent.outcome, JobOutcome::Served { .. }),
        "{first_agent:?}"
    );

    // The second was refused before anything was sent, and the page offers the new key.
    let refused = &r["refused"];
    eprintln!("browser_sdk (key-changed): refused: {refused}");
    assert_eq!(refused["phase"], "failed", "{refused}");
    assert_eq!(refused["error"]["code"], "oracleKeyChanged", "{refused}");
    assert!(
        refused["callId"].is_null(),
        "no call event was sent: {refused}"
    );
    assert!(
        !refused["timeline"]
            .as_array()
            .unwrap()
            .iter()
            .any(|t| t["phase"] == "send"),
        "{refused}"
    );
    let new_id = new_key.key_id().to_string();
    assert!(
        refused["oracleKeyText"]
            .as_str()
            .is_some_and(|t| t.contains("key changed") && t.contains(&new_id)),
        "the page names the new key: {refused}"
    );
    assert_eq!(refused["acceptVisible"], true, "{refused}");
    assert!(
        refused["acceptText"]
            .as_str()
            .is_some_and(|t| t.contains(&new_id)),
        "{refused}"
    );

    // Accepted: the call connects with the new key pinned.
    assert_heard_tone(&h.tag, r);
    let call_id = assert_connected(&h.tag, r);
    assert_eq!(
        r["snapshots"]["active"]["oracle"]["keyId"],
        new_id.as_str(),
        "the accepted call uses the new key"
    );
    let calls: std::collections::BTreeSet<&String> = seen.iter().map(|(id, _)| id).collect();
    assert_eq!(
        calls.len(),
        2,
        "the server saw the first and the accepted call only: {seen:?}"
    );
    let rec = assert_server_side(&h, &seen, &call_id, "hkdf", "audio").await;
    let first_id = CallId::parse(first["active"]["callId"].as_str().unwrap()).unwrap();
    let first_rec = h.record(&first_id).await;
    let first_key = open_call_key(&old_key_file, &h.prekeys_before, &first_rec).unwrap();
    let everything = Zeroizing::new(format!("{r}\n{}", run.stderr));
    for form in key_forms(&first_key) {
        assert!(
            !everything.contains(form.as_str()),
            "the first call's key leaked"
        );
    }
    assert_browser_clean(&h, &run, &[&rec]);
    h.stop().await;
}

/// Failures are typed, shown with their code, and leave nothing half-open: the server
/// unreachable and the OpenID token refused fail before anything is sent; a refused sync
/// leaves the sent event edited to ended; a denied microphone ends the call on the server as
/// `mediaFailed`; a browser without encoded transforms is refused before anything is sent.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failures_are_typed_and_leave_nothing_half_open() {
    let _serial = SERIAL.lock().await;
    let h = Harness::start("failures").await;
    let (run, seen) = h.drive("failures", json!({})).await;
    let r = &run.result;
    let cases: Vec<&Value> = r["failures"].as_array().unwrap().iter().collect();
    for c in &cases {
        eprintln!("browser_sdk (failures): {c}");
    }
    let case = |name: &str| -> &Value {
        cases
            .iter()
            .find(|c| c["case"] == name)
            .unwrap_or_else(|| panic!("no case {name}: {}", r["failures"]))
    };
    let sent = |c: &Value| {
        c["timeline"]
            .as_array()
            .unwrap()
            .iter()
            .any(|t| t["phase"] == "send")
    };
    for (name, code) in [
        ("serverUnreachable", "serverUnreachable"),
        ("openid", "matrix"),
        ("syncRefused", "server"),
        ("micDenied", "media"),
        ("e2eeUnsupported", "e2eeUnsupported"),
    ] {
        let c = case(name);
        assert_eq!(c["phase"], "failed", "{c}");
        assert_eq!(c["error"]["code"], code, "{c}");
        assert!(
            c["shownCode"].as_str().is_some_and(|s| s.contains(code)),
            "the page shows {code}: {c}"
        );
    }
    assert_eq!(
        r["historyError"]["code"], "matrix",
        "the call list without an OpenID token: {}",
        r["historyError"]
    );
    assert!(
        r["openidRefused"].as_u64().is_some_and(|n| n > 0),
        "the OpenID requests were refused: {}",
        r["openidRefused"]
    );
    for name in ["serverUnreachable", "openid", "e2eeUnsupported"] {
        let c = case(name);
        assert!(!sent(c) && c["callId"].is_null(), "nothing sent: {c}");
    }

    // The refused sync: the event was sent, and the user edited it to ended.
    let refused = case("syncRefused");
    assert!(sent(refused), "{refused}");
    let refused_id = CallId::parse(refused["callId"].as_str().unwrap()).unwrap();
    // The denied microphone: the server took the call, then heard it ended as mediaFailed.
    let denied = case("micDenied");
    let denied_id = CallId::parse(denied["callId"].as_str().unwrap()).unwrap();
    assert_eq!(denied["endReason"], "mediaFailed", "{denied}");
    let rec = h.record(&denied_id).await;
    assert_eq!(rec.status, CallStatus::Ended);
    assert_eq!(rec.reason, Some(CallReason::MediaFailed));
    eprintln!("browser_sdk (failures): statuses the server stored: {seen:?}");

    let raw = RawMatrix::login(&h.homeserver, &h.name, &h.password).await;
    // The refused call never reached the server; the page reuses its DM with the bot, so its
    // event is in the same room as the denied one's.
    let room = rec.matrix_room_id.clone();
    for id in [&refused_id, &denied_id] {
        let ev = raw
            .get(&format!(
                "/_matrix/client/v3/rooms/{}/event/{}",
                verify::urlenc(&room),
                verify::urlenc(id.event_id().as_str())
            ))
            .await;
        assert_eq!(ev["type"], "m.room.encrypted", "{ev}");
        let rel = raw
            .get(&format!(
                "/_matrix/client/v1/rooms/{}/relations/{}/m.replace",
                verify::urlenc(&room),
                verify::urlenc(id.event_id().as_str())
            ))
            .await;
        assert!(
            rel["chunk"]
                .as_array()
                .unwrap()
                .iter()
                .any(|e| e["sender"] == h.user_id.as_str() && e["type"] == "m.room.encrypted"),
            "the user edited call {} to ended: {rel}",
            id.as_str()
        );
    }
    raw.logout().await;
    assert_eq!(
        r["cspViolations"].as_array().unwrap().len(),
        0,
        "{}",
        r["cspViolations"]
    );
    let everything = Zeroizing::new(format!("{r}\n{}", run.stderr));
    let key = h.call_key(&rec).unwrap();
    for form in key_forms(&key) {
        assert!(!everything.contains(form.as_str()), "the call key leaked");
    }
    h.stop().await;
}

/// `oracle-calls web` as a person runs it: it prints the page's URL, serves the page and its
/// config under the CSP, names the user and where its password is (never the password), the
/// oracle's server allows the page's origin (a CORS preflight as the browser sends it), and
/// Ctrl-C stops it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_web_command_serves_the_demo_for_a_fresh_oracle_until_ctrl_c() {
    let _serial = SERIAL.lock().await;
    let dist = demo_dist();
    let mut child = Command::new(env!("CARGO_BIN_EXE_oracle-lab"))
        .args(["web", "--dir"])
        .arg(&dist)
        .current_dir(repo())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let stdout = child.stdout.take().unwrap();
    let stderr = child.stderr.take().unwrap();
    let (url_tx, url_rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in std::io::BufReader::new(stdout)
            .lines()
            .map_while(Result::ok)
        {
            if line.starts_with("http://127.0.0.1:") {
                let _ = url_tx.send(line);
            }
        }
    });
    let err_log = std::thread::spawn(move || {
        let mut all = String::new();
        for line in std::io::BufReader::new(stderr)
            .lines()
            .map_while(Result::ok)
        {
            all.push_str(&line);
            all.push('\n');
        }
        all
    });
    let url = tokio::task::spawn_blocking(move || url_rx.recv_timeout(Duration::from_secs(90)))
        .await
        .unwrap();
    let Ok(url) = url else {
        let _ = child.kill();
        panic!("no URL within 90 s:\n{}", err_log.join().unwrap());
    };
    let origin = url.trim_end_matches('/').to_owned();
    let http = reqwest::Client::new();
    let page = http.get(&url).send().await.unwrap();
    assert_eq!(page.status().as_u16(), 200);
    let csp = page.headers()["content-security-policy"]
        .to_str()
        .unwrap()
        .to_owned();
    assert!(
        csp.contains("script-src 'self' 'wasm-unsafe-eval'"),
        "{csp}"
    );
    let wasm = http
        .head(format!("{url}matrix_sdk_crypto_wasm_bg.wasm"))
        .send()
        .await
        .unwrap();
    assert_eq!(wasm.headers()["content-type"], "application/wasm");
    let cfg: Value = http
        .get(format!("{url}config.json"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let server = cfg["serverUrl"].as_str().unwrap();
    assert!(
        csp.contains(&format!(" {server}")),
        "the CSP lets the page reach its oracle server: {csp}"
    );
    // The page verifies the oracle from the key-transparency directory the command runs: its
    // key is in the config, its origin in the CSP, and it serves the oracle's record.
    let kt = &cfg["keyTransparency"];
    let kt_url = kt["url"].as_str().expect("a key-transparency directory");
    assert!(kt["publicKey"]["signingKey"].is_string(), "{cfg}");
    assert!(csp.contains(&format!(" {kt_url}")), "{csp}");
    let oracle = cfg["oracleDid"].as_str().unwrap();
    let lookup = http
        .get(format!("{kt_url}/kt/v1/lookup/{oracle}"))
        .header("origin", &origin)
        .send()
        .await
        .unwrap();
    assert_eq!(
        lookup.status().as_u16(),
        200,
        "the oracle's record is published"
    );
    assert_eq!(lookup.headers()["access-control-allow-origin"], "*");
    // The oracle server answers the page's origin's preflight, and no other origin's.
    let preflight = |from: &str| {
        http.request(
            reqwest::Method::OPTIONS,
            format!("{server}/.well-known/oracle-calls"),
        )
        .header("origin", from)
        .header("access-control-request-method", "GET")
        .send()
    };
    let ok = preflight(&origin).await.unwrap();
    assert_eq!(
        ok.headers()
            .get("access-control-allow-origin")
            .map(|v| v.to_str().unwrap().to_owned()),
        Some(origin.clone()),
        "{:?}",
        ok.headers()
    );
    let other = preflight("http://127.0.0.1:1").await.unwrap();
    assert!(
        other.headers().get("access-control-allow-origin").is_none(),
        "{:?}",
        other.headers()
    );

    // Ctrl-C stops it.
    let st = Command::new("kill")
        .args(["-INT", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(st.success());
    let exited = tokio::task::spawn_blocking(move || {
        for _ in 0..150 {
            if let Some(s) = child.try_wait().unwrap() {
                return Some(s);
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        let _ = child.kill();
        None
    })
    .await
    .unwrap();
    let log = err_log.join().unwrap();
    eprintln!("oracle-calls web said:\n{log}");
    assert!(
        exited.is_some_and(|s| s.success()),
        "Ctrl-C ends it cleanly: {exited:?}"
    );
    let user = log
        .lines()
        .find_map(|l| l.trim().strip_prefix("user:"))
        .expect("it names the user");
    let name = user.split_whitespace().next().unwrap();
    let pw_file = log
        .lines()
        .find_map(|l| l.trim().strip_prefix("password: in "))
        .and_then(|l| l.split(" (").next())
        .expect("it names the password's file");
    let state = log
        .lines()
        .find_map(|l| l.trim().strip_prefix("state:"))
        .and_then(|l| l.split(" (").next())
        .expect("it names its state directory")
        .trim();
    assert!(!Path::new(state).exists(), "{state} is removed on exit");
    let password = std::fs::read_to_string(pw_file).unwrap();
    assert!(pw_file.ends_with(&format!("{name}.password")), "{pw_file}");
    assert!(
        !log.contains(password.trim()),
        "the password is not printed"
    );
}

/// A raw HTTP/1.1 request (no client-side path normalisation); returns (status, headers, body).
async fn raw_get(addr: &str, method: &str, target: &str) -> (u16, String, Vec<u8>) {
    let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
    s.write_all(
        format!("{method} {target} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n")
            .as_bytes(),
    )
    .await
    .unwrap();
    let mut buf = Vec::new();
    s.read_to_end(&mut buf).await.unwrap();
    let split = buf
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .expect("a header block");
    let head = String::from_utf8(buf[..split].to_vec()).unwrap();
    let body = buf[split + 4..].to_vec();
    let status = head.split(' ').nth(1).unwrap().parse().unwrap();
    (status, head.to_ascii_lowercase(), body)
}

/// The web server alone (no browser, no stack): MIME types, headers on every answer, the
/// config, and no way out of the served directory.
#[tokio::test]
async fn the_web_server_serves_wasm_with_the_csp_and_refuses_traversal() {
    let root = temp_dir("web");
    let dist = root.join("dist");
    std::fs::create_dir_all(dist.join("assets")).unwrap();
    std::fs::write(dist.join("index.html"), "<!doctype html><title>t</title>").unwrap();
    let wasm = b"\0asm\x01\0\0\0";
    std::fs::write(dist.join("assets/crypto_bg.wasm"), wasm).unwrap();
    std::fs::write(dist.join("app.js"), "export {};").unwrap();
    std::fs::write(dist.join(".hidden"), "no").unwrap();
    std::fs::write(root.join("secret.txt"), "outside").unwrap();
    #[cfg(unix)]
    std::os::unix::fs::symlink(root.join("secret.txt"), dist.join("link.txt")).unwrap();

    let server = web::serve(
        SocketAddr::from(([127, 0, 0, 1], 0)),
        WebOptions {
            dir: dist.clone(),
            config: PageConfig {
                homeserver_url: "http://127.0.0.1:18008".into(),
                server_url: "http://127.0.0.1:18080/".into(),
                oracle_did: "did:ixo:oracle1".into(),
                key_transparency: None,
            },
            livekit_urls: vec![
                "ws://127.0.0.1:17880".into(),
                "http://127.0.0.1:17880".into(),
            ],
        },
    )
    .await
    .unwrap();
    let addr = server.url().strip_prefix("http://").unwrap().to_owned();
    let csp = "content-security-policy: default-src 'self'; script-src 'self' 'wasm-unsafe-eval'; \
               worker-src 'self'; style-src 'self'; img-src 'self' data:; media-src 'self' blob:; \
               connect-src 'self' http://127.0.0.1:18008 http://127.0.0.1:18080 ws://127.0.0.1:17880 \
               http://127.0.0.1:17880; frame-ancestors 'none'; base-uri 'none'; form-action 'none'";
    let hardened = |head: &str| {
        assert!(head.contains(csp), "{head}");
        assert!(head.contains("x-content-type-options: nosniff"), "{head}");
        assert!(head.contains("referrer-policy: no-referrer"), "{head}");
    };

    let (st, head, body) = raw_get(&addr, "GET", "/assets/crypto_bg.wasm").await;
    assert_eq!(st, 200);
    assert!(head.contains("content-type: application/wasm"), "{head}");
    assert_eq!(body, wasm);
    hardened(&head);

    let (st, head, body) = raw_get(&addr, "GET", "/").await;
    assert_eq!(st, 200);
    assert!(head.contains("content-type: text/html"), "{head}");
    assert!(
        String::from_utf8(body)
            .unwrap()
            .contains("<title>t</title>")
    );
    hardened(&head);

    let (st, head, _) = raw_get(&addr, "GET", "/app.js").await;
    assert_eq!(st, 200);
    assert!(head.contains("content-type: text/javascript"), "{head}");

    let (st, head, body) = raw_get(&addr, "GET", "/config.json").await;
    assert_eq!(st, 200);
    assert!(head.contains("content-type: application/json"), "{head}");
    hardened(&head);
    let cfg: Value = serde_json::from_slice(&body).unwrap();
    assert_eq!(
        cfg,
        json!({"homeserverUrl": "http://127.0.0.1:18008", "serverUrl": "http://127.0.0.1:18080/",
               "oracleDid": "did:ixo:oracle1"})
    );

    for target in [
        "/../secret.txt",
        "/assets/../../secret.txt",
        "/%2e%2e/secret.txt",
        "/%2E%2E%2Fsecret.txt",
        "/assets/%2e%2e/%2e%2e/secret.txt",
        "/..%5csecret.txt",
        "/.hidden",
        "/app.js%00.png",
    ] {
        let (st, head, body) = raw_get(&addr, "GET", target).await;
        assert_eq!(st, 400, "{target}: {head}");
        assert!(
            !String::from_utf8_lossy(&body).contains("outside"),
            "{target}"
        );
        hardened(&head);
    }
    // A symlink out of the directory is not followed.
    let (st, head, body) = raw_get(&addr, "GET", "/link.txt").await;
    assert_eq!(st, 404, "{head}");
    assert!(!String::from_utf8_lossy(&body).contains("outside"));
    hardened(&head);

    let (st, head, _) = raw_get(&addr, "GET", "/missing.js").await;
    assert_eq!(st, 404);
    hardened(&head);
    let (st, head, _) = raw_get(&addr, "POST", "/index.html").await;
    assert_eq!(st, 405);
    hardened(&head);
    let (st, head, body) = raw_get(&addr, "HEAD", "/assets/crypto_bg.wasm").await;
    assert_eq!(st, 200);
    assert!(head.contains("content-type: application/wasm"), "{head}");
    assert!(body.is_empty());

    // Loopback only.
    assert!(
        web::bind(SocketAddr::from(([0, 0, 0, 0], 0)))
            .await
            .is_err()
    );
    server.stop().await;
    let _ = std::fs::remove_dir_all(&root);
}

//! The key-transparency directory as operators run it: the real `oracle-calls kt serve` binary
//! on a free loopback port with a SQLite file, `kt keygen`, `kt token` and `kt audit`, checked
//! with crates/kt's verifier.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]

use std::io::{BufRead as _, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

use oracle_calls_kt::{
    DirectoryPublicKey, HistoryResponse, LookupResponse, OracleRecord, SignedCheckpoint, Verifier,
};
use oracle_calls_proto::{ApiErrorBody, BotDevice, Did, ErrorCode, KeyScheme, OracleKeyInfo};
use serde_json::json;

const BIN: &str = env!("CARGO_BIN_EXE_oracle-calls");

/// A test's working directory, removed when dropped.
struct TempDir(PathBuf);

impl TempDir {
    fn new() -> Self {
        static N: AtomicU32 = AtomicU32::new(0);
        let dir = std::env::temp_dir().join(format!(
            "oc-kt-cli-{}-{}",
            std::process::id(),
            N.fetch_add(1, Ordering::Relaxed)
        ));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        Self(dir)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn kt(args: &[&str]) -> Output {
    Command::new(BIN)
        .arg("kt")
        .args(args)
        .env_remove("ORACLE_CALLS_KT_CONFIG")
        .output()
        .unwrap()
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

/// A directory's keys (kt keygen), two oracles' operator tokens (kt token) and its kt.toml.
struct Setup {
    tmp: TempDir,
    public: DirectoryPublicKey,
    tokens: [String; 2],
}

impl Setup {
    fn new() -> Self {
        let tmp = TempDir::new();
        let keys = tmp.0.join("keys");
        let out = kt(&["keygen", "--out-dir", keys.to_str().unwrap()]);
        assert!(out.status.success(), "{}", text(&out.stderr));
        let public: DirectoryPublicKey = serde_json::from_slice(&out.stdout).unwrap();
        let mut tokens = Vec::new();
        let mut publishers = String::new();
        for n in [1, 2] {
            let out = kt(&["token", "--did", &format!("did:ixo:oracle{n}")]);
            assert!(out.status.success(), "{}", text(&out.stderr));
            let stdout = text(&out.stdout);
            let (token, entry) = stdout.split_once('\n').unwrap();
            assert!(
                token.starts_with("ockt_") && !entry.contains(token),
                "{stdout}"
            );
            tokens.push(token.to_owned());
            publishers.push_str(entry);
        }
        let config = format!(
            "listen = \"127.0.0.1:0\"\ndata_dir = \"{}\"\nbody_limit_bytes = 32768\n{publishers}",
            tmp.0.join("data").display()
        );
        std::fs::write(tmp.0.join("kt.toml"), config).unwrap();
        Self {
            tmp,
            public,
            tokens: tokens.try_into().unwrap(),
        }
    }

    fn public_key_file(&self) -> PathBuf {
        self.tmp.0.join("keys/public-key.json")
    }

    fn db(&self) -> String {
        format!("sqlite://{}", self.tmp.0.join("data/kt.db").display())
    }

    fn command(&self) -> Command {
        let keys = self.tmp.0.join("keys");
        let mut cmd = Command::new(BIN);
        cmd.args(["kt", "serve", "--config"])
            .arg(self.tmp.0.join("kt.toml"))
            .env("ORACLE_CALLS_KT_SIGNING_KEY_FILE", keys.join("signing.key"))
            .env("ORACLE_CALLS_KT_VRF_KEY_FILE", keys.join("vrf.key"))
            .env_remove("ORACLE_CALLS_KT_SIGNING_KEY")
            .env_remove("ORACLE_CALLS_KT_VRF_KEY")
            .env_remove("ORACLE_CALLS_KT_DATABASE_URL")
            .env("RUST_LOG", "info")
            .stdin(Stdio::null())
            .stdout(Stdio::piped());
        cmd
    }

    /// Starts the service and waits for its `listening on` line; `Err(stderr)` if it exits
    /// instead.
    fn start(&self) -> Result<Service, String> {
        let log = self.tmp.0.join("serve.log");
        let mut child = self
            .command()
            .stderr(std::fs::File::create(&log).unwrap())
            .spawn()
            .unwrap();
        let stdout = child.stdout.take().unwrap();
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                if let Some(addr) = line.strip_prefix("listening on ") {
                    let _ = tx.send(addr.to_owned());
                }
            }
        });
        match rx.recv_timeout(Duration::from_secs(60)) {
            Ok(addr) => Ok(Service {
                child,
                base: format!("http://{addr}"),
            }),
            Err(_) => {
                let deadline = Instant::now() + Duration::from_secs(10);
                while child.try_wait().unwrap().is_none() && Instant::now() < deadline {
                    std::thread::sleep(Duration::from_millis(50));
                }
                let _ = child.kill();
                let status = child.wait().unwrap();
                assert!(!status.success());
                Err(std::fs::read_to_string(&log).unwrap())
            }
        }
    }
}

/// A running `kt serve`, killed when dropped.
struct Service {
    child: Child,
    base: String,
}

impl Drop for Service {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Service {
    async fn get(&self, path: &str) -> reqwest::Response {
        reqwest::get(format!("{}{path}", self.base)).await.unwrap()
    }

    async fn get_json<T: serde::de::DeserializeOwned>(&self, path: &str) -> T {
        let r = self.get(path).await;
        assert_eq!(r.status(), 200, "{path}");
        serde_json::from_slice(&r.bytes().await.unwrap()).unwrap()
    }

    async fn publish(&self, token: Option<&str>, body: Vec<u8>) -> reqwest::Response {
        let mut request = reqwest::Client::new()
            .post(format!("{}/kt/v1/publish", self.base))
            .header("content-type", "application/json")
            .body(body);
        if let Some(token) = token {
            request = request.bearer_auth(token);
        }
        request.send().await.unwrap()
    }

    async fn publish_record(&self, token: &str, n: u32, agent: &str) -> SignedCheckpoint {
        let r = self.publish(Some(token), body(n, agent)).await;
        assert_eq!(r.status(), 200);
        let v: serde_json::Value = r.json().await.unwrap();
        serde_json::from_value(v["checkpoint"].clone()).unwrap()
    }

    async fn checkpoints(&self) -> Vec<SignedCheckpoint> {
        let latest: SignedCheckpoint = self.get_json("/kt/v1/checkpoint").await;
        let mut all = Vec::new();
        for e in 0..=latest.checkpoint.epoch {
            all.push(self.get_json(&format!("/kt/v1/checkpoint/{e}")).await);
        }
        all
    }

    fn audit(&self, public_key: &Path, extra: &[&str]) -> Output {
        let mut args = vec![
            "audit",
            "--url",
            &self.base,
            "--public-key",
            public_key.to_str().unwrap(),
        ];
        args.extend_from_slice(extra);
        kt(&args)
    }
}

fn did(n: u32) -> Did {
    Did::parse(&format!("did:ixo:oracle{n}")).unwrap()
}

fn record(agent: &str) -> OracleRecord {
    OracleRecord {
        keys: vec![OracleKeyInfo {
            key_id: "0123456789abcdef0123456789abcdef".into(),
            scheme: KeyScheme::HpkeP256,
            public_key: format!("pk-of-{agent}"),
        }],
        matrix_user_id: "@oracle:localhost".into(),
        bot_devices: vec![BotDevice {
            device_id: "BOTDEVICE".into(),
            ed25519: "ZWQyNTUxOQ".into(),
        }],
        agent_name: agent.into(),
        prekey_signing_key: None,
    }
}

fn body(n: u32, agent: &str) -> Vec<u8> {
    serde_json::to_vec(&json!({"did": did(n), "record": record(agent)})).unwrap()
}

async fn error_code(r: reqwest::Response) -> (u16, ErrorCode) {
    let status = r.status().as_u16();
    let body: ApiErrorBody = r.json().await.unwrap();
    (status, body.error.code)
}

#[test]
fn keygen_writes_owner_only_keys_and_never_overwrites() {
    let tmp = TempDir::new();
    let dir = tmp.0.join("keys");
    let out = kt(&["keygen", "--out-dir", dir.to_str().unwrap()]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let printed: DirectoryPublicKey = serde_json::from_slice(&out.stdout).unwrap();
    let written: DirectoryPublicKey =
        serde_json::from_slice(&std::fs::read(dir.join("public-key.json")).unwrap()).unwrap();
    assert_eq!(printed, written);
    #[cfg(unix)]
    for file in ["signing.key", "vrf.key"] {
        use std::os::unix::fs::PermissionsExt as _;
        let mode = std::fs::metadata(dir.join(file))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600, "{file}");
        let key = std::fs::read_to_string(dir.join(file)).unwrap();
        assert_eq!(key.trim().len(), 64);
        assert!(!text(&out.stdout).contains(key.trim()) && !text(&out.stderr).contains(key.trim()));
    }
    let before = std::fs::read(dir.join("signing.key")).unwrap();
    let again = kt(&["keygen", "--out-dir", dir.to_str().unwrap()]);
    assert!(!again.status.success());
    assert!(
        text(&again.stderr).contains("already exists"),
        "{}",
        text(&again.stderr)
    );
    assert_eq!(std::fs::read(dir.join("signing.key")).unwrap(), before);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn publishing_needs_the_oracles_own_credential_and_lookups_verify() {
    let setup = Setup::new();
    let service = setup.start().unwrap();
    let [token1, token2] = &setup.tokens;
    let served: DirectoryPublicKey = service.get_json("/kt/v1/public-key").await;
    assert_eq!(served, setup.public);

    // No token, an unknown token, a token in the wrong form: 401. Oracle 2's token for
    // oracle 1's DID: 403. Nothing is published by any of them.
    let r = service.publish(None, body(1, "agent-a")).await;
    assert!(r.headers().contains_key("www-authenticate"));
    assert_eq!(error_code(r).await, (401, ErrorCode::Unauthorized));
    let r = service
        .publish(Some("ockt_not-a-token"), body(1, "agent-a"))
        .await;
    assert_eq!(error_code(r).await, (401, ErrorCode::Unauthorized));
    let r = reqwest::Client::new()
        .post(format!("{}/kt/v1/publish", service.base))
        .header("authorization", format!("Basic {token1}"))
        .body(body(1, "agent-a"))
        .send()
        .await
        .unwrap();
    assert_eq!(error_code(r).await, (401, ErrorCode::Unauthorized));
    let r = service.publish(Some(token2), body(1, "agent-a")).await;
    assert_eq!(error_code(r).await, (403, ErrorCode::Forbidden));
    let latest: SignedCheckpoint = service.get_json("/kt/v1/checkpoint").await;
    assert_eq!(latest.checkpoint.epoch, 0);
    let r = service.get("/kt/v1/lookup/did:ixo:oracle1").await;
    assert_eq!(error_code(r).await, (404, ErrorCode::NotFound));

    // The read routes are public to every web page (GET, no credentials); publishing is not
    // offered to pages at all.
    let page = "http://127.0.0.1:5173";
    for path in [
        "/kt/v1/checkpoint",
        "/kt/v1/lookup/did:ixo:oracle1",
        "/kt/v1/public-key",
    ] {
        let r = reqwest::Client::new()
            .get(format!("{}{path}", service.base))
            .header("origin", page)
            .send()
            .await
            .unwrap();
        assert_eq!(
            r.headers()
                .get("access-control-allow-origin")
                .map(|v| v.to_str().unwrap()),
            Some("*"),
            "{path}"
        );
        assert!(!r.headers().contains_key("access-control-allow-credentials"));
    }
    let r = reqwest::Client::new()
        .request(
            reqwest::Method::OPTIONS,
            format!("{}/kt/v1/publish", service.base),
        )
        .header("origin", page)
        .header("access-control-request-method", "POST")
        .header("access-control-request-headers", "authorization")
        .send()
        .await
        .unwrap();
    assert!(
        !r.headers().contains_key("access-control-allow-origin"),
        "no page may publish"
    );

    // Malformed input from an authenticated operator: typed 4xx, nothing published.
    for bad in [
        b"not json".to_vec(),
        br#"{"did":"did:ixo:oracle1"}"#.to_vec(),
        br#"{"did":"not a did","record":{}}"#.to_vec(),
    ] {
        let r = service.publish(Some(token1), bad).await;
        assert_eq!(error_code(r).await, (400, ErrorCode::BadRequest));
    }
    let mut huge = record("agent-a");
    huge.agent_name = "x".repeat(40_000);
    let r = service
        .publish(
            Some(token1),
            serde_json::to_vec(&json!({"did": did(1), "record": huge})).unwrap(),
        )
        .await;
    assert_eq!(error_code(r).await, (413, ErrorCode::PayloadTooLarge));
    let mut too_big = record("agent-a");
    too_big.agent_name = "x".repeat(20_000);
    let r = service
        .publish(
            Some(token1),
            serde_json::to_vec(&json!({"did": did(1), "record": too_big})).unwrap(),
        )
        .await;
    assert_eq!(error_code(r).await, (400, ErrorCode::BadRequest));
    for (path, status) in [
        ("/kt/v1/lookup/not-a-did", 400),
        ("/kt/v1/checkpoint/x", 400),
        ("/kt/v1/checkpoint/7", 404),
        ("/kt/v1/audit?from=0", 400),
        ("/kt/v1/audit?from=0&to=0", 400),
        ("/kt/v1/audit?from=0&to=1000", 400),
        ("/kt/v1/nothing", 404),
    ] {
        let r = service.get(path).await;
        assert_eq!(r.status().as_u16(), status, "{path}");
        let _: ApiErrorBody = r.json().await.unwrap();
    }
    let latest: SignedCheckpoint = service.get_json("/kt/v1/checkpoint").await;
    assert_eq!(latest.checkpoint.epoch, 0);

    // The right token publishes; the lookup verifies with the client's verifier.
    let one = service.publish_record(token1, 1, "agent-a").await;
    assert_eq!(one.checkpoint.epoch, 1);
    let two = service.publish_record(token2, 2, "agent-b").await;
    assert_eq!(two.checkpoint.epoch, 2);
    // The same record again makes no epoch.
    let same = service.publish_record(token2, 2, "agent-b").await;
    assert_eq!(same, two);
    let three = service.publish_record(token1, 1, "agent-a2").await;
    assert_eq!(three.checkpoint.epoch, 3);

    let mut client = Verifier::new(setup.public.clone());
    for (n, agent, version) in [(1, "agent-a2", 2), (2, "agent-b", 1)] {
        let lookup: LookupResponse = service
            .get_json(&format!("/kt/v1/lookup/did:ixo:oracle{n}"))
            .await;
        assert_eq!(lookup.checkpoint, three);
        let verified = client
            .verify_lookup(&lookup.checkpoint, &did(n), &lookup.proof)
            .unwrap();
        assert_eq!(
            (verified.record, verified.version),
            (record(agent), version)
        );
    }
    let history: HistoryResponse = service.get_json("/kt/v1/history/did:ixo:oracle1").await;
    let history = client
        .verify_history(&history.checkpoint, &did(1), &history.proof)
        .unwrap();
    let change = history
        .change_since(&record("agent-a"), 1)
        .unwrap()
        .unwrap();
    assert_eq!(change.epoch, 3);

    // The auditor verifies every epoch; one against another directory key fails.
    let out = service.audit(&setup.public_key_file(), &[]);
    let stdout = text(&out.stdout);
    assert!(out.status.success(), "{stdout}{}", text(&out.stderr));
    assert!(
        stdout.contains("epochs 0..=3: 4 checkpoints signed"),
        "{stdout}"
    );
    assert!(stdout.contains("audited epochs 0..=3"), "{stdout}");
    let out = service.audit(&setup.public_key_file(), &["--from", "1", "--to", "2"]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert!(text(&out.stdout).contains("epochs 1..=2"));

    let other = TempDir::new();
    let out = kt(&["keygen", "--out-dir", other.0.to_str().unwrap()]);
    assert!(out.status.success());
    let out = service.audit(&other.0.join("public-key.json"), &[]);
    assert!(!out.status.success());
    assert!(
        text(&out.stderr).contains("unknown directory key"),
        "{}",
        text(&out.stderr)
    );
    let out = service.audit(&setup.public_key_file(), &["--from", "2", "--to", "9"]);
    assert!(!out.status.success());
    assert!(text(&out.stderr).contains("404"), "{}", text(&out.stderr));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restarted_service_serves_the_same_checkpoints_and_a_rewritten_log_is_refused() {
    let setup = Setup::new();
    let [token1, token2] = &setup.tokens;
    let service = setup.start().unwrap();
    service.publish_record(token1, 1, "agent-a").await;
    service.publish_record(token2, 2, "agent-b").await;
    service.publish_record(token1, 1, "agent-a2").await;
    let before = service.checkpoints().await;
    assert_eq!(before.len(), 4);
    drop(service);

    let service = setup.start().unwrap();
    assert_eq!(service.checkpoints().await, before);
    let mut client = Verifier::resume(setup.public.clone(), before[3].clone()).unwrap();
    let lookup: LookupResponse = service.get_json("/kt/v1/lookup/did:ixo:oracle1").await;
    let verified = client
        .verify_lookup(&lookup.checkpoint, &did(1), &lookup.proof)
        .unwrap();
    assert_eq!(verified.record, record("agent-a2"));
    let four = service.publish_record(token2, 2, "agent-b2").await;
    assert_eq!(four.checkpoint.epoch, 4);
    let out = service.audit(&setup.public_key_file(), &[]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert!(text(&out.stdout).contains("audited epochs 0..=4"));
    drop(service);

    // Someone with write access to the database swaps oracle 1's first record for another
    // one: the service refuses to start rather than serve a history it never signed.
    sqlx::any::install_default_drivers();
    let pool = sqlx::AnyPool::connect(&setup.db()).await.unwrap();
    let forged = hex_record(&record("agent-evil"));
    let done = sqlx::query("UPDATE kt_updates SET record = $1 WHERE epoch = 1")
        .bind(forged)
        .execute(&pool)
        .await
        .unwrap();
    assert_eq!(done.rows_affected(), 1);
    pool.close().await;
    let log = setup.start().err().expect("a rewritten log must not start");
    assert!(log.contains("refusing to start"), "{log}");
    assert!(
        log.contains("does not replay at epoch 1") && log.contains("replayed root hash"),
        "{log}"
    );
}

fn hex_record(record: &OracleRecord) -> String {
    record
        .to_bytes()
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

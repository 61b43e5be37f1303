//! The stack's coordinates, Matrix users with OpenID tokens, and an in-process server.

use std::path::PathBuf;
use std::process::Command;

use oracle_calls_proto::{
    CallId, CallStatus, CallType, Did, EventId, KeyDerivation, KeyEnvelope, OraclesCallContent,
    RoomName, SessionId,
};
use oracle_calls_server::store::Store;
use oracle_calls_server::{AppState, Config, Secret, Secrets};
use serde_json::{Value, json};
use tokio::net::TcpListener;
use tokio::sync::oneshot;

/// Which database a test server uses.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Db {
    Sqlite,
    Postgres,
}

// The stack's settings and secrets, and unique names, come from the workspace's shared test
// support (crates/test-support).
pub use oracle_calls_test_support::{read_secret as read_file, stack_var, unique};

/// A fresh room name of the shape a client makes: `oc-` and 32 lower-case hex characters.
pub fn room_name() -> String {
    let mut b = [0u8; 16];
    rand::fill(&mut b);
    RoomName::from_random(b).as_str().to_owned()
}

/// The metadata of the LiveKit room `room` as the server's LiveKit client reads it; `None`
/// when no such room exists.
pub async fn metadata(s: &TestServer, room: &str) -> Option<String> {
    s.state
        .livekit()
        .room(&RoomName::parse(room).unwrap())
        .await
        .unwrap()
        .map(|r| r.metadata)
}

/// A Matrix user of the stack's Synapse.
#[derive(Clone, Debug)]
pub struct MatrixUser {
    pub user_id: String,
    pub password: String,
    pub access_token: String,
}

impl MatrixUser {
    /// Provisions `@<name>:<server>` with `scripts/stack user` and logs it in.
    pub async fn new(name: &str) -> Self {
        let out = Command::new(oracle_calls_test_support::stack_script())
            .args(["user", name])
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "scripts/stack user {name}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let kv = oracle_calls_test_support::parse_env(&String::from_utf8_lossy(&out.stdout));
        let password = read_file(&kv["MATRIX_USER_PASSWORD_FILE"]);
        let login: Value = reqwest::Client::new()
            .post(format!(
                "{}/_matrix/client/v3/login",
                stack_var("MATRIX_URL")
            ))
            .json(&json!({"type": "m.login.password",
                "identifier": {"type": "m.id.user", "user": name}, "password": password}))
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        Self {
            user_id: kv["MATRIX_USER_ID"].clone(),
            password,
            access_token: login["access_token"]
                .as_str()
                .expect("login token")
                .to_owned(),
        }
    }

    /// A fresh OpenID token (what a client sends to the oracle-calls server).
    pub async fn openid_token(&self) -> String {
        let v: Value = reqwest::Client::new()
            .post(format!(
                "{}/_matrix/client/v3/user/{}/openid/request_token",
                stack_var("MATRIX_URL"),
                self.user_id
            ))
            .bearer_auth(&self.access_token)
            .json(&json!({}))
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        v["access_token"].as_str().expect("openid token").to_owned()
    }
}

pub fn config_toml(oracle: &Did, oracle_user: &str, data_dir: &std::path::Path, db: Db) -> String {
    let database_url = match db {
        Db::Sqlite => format!(
            "sqlite://{}?mode=rwc",
            data_dir.join("calls.sqlite3").display()
        ),
        Db::Postgres => stack_var("DATABASE_URL"),
    };
    format!(
        r#"
        data_dir = "{data}"
        database_url = "{database_url}"
        body_limit_bytes = 4096
        api_key_cache_secs = 1
        [oracle]
        did = "{oracle}"
        agent_name = "agent-{agent}"
        keys = [{{ keyId = "00112233445566778899aabbccddeeff", scheme = "hpke-p256", publicKey = "BPk" }}]
        [matrix]
        homeserver_url = "{matrix}"
        server_name = "{server}"
        user_id = "{oracle_user}"
        openid_cache_secs = 60
        [livekit]
        url = "{lk}"
        http_url = "{lkhttp}"
        api_key = "{lkkey}"
        token_ttl_secs = 300
        empty_timeout_secs = 30
        "#,
        data = data_dir.display(),
        agent = oracle.method_specific_id(),
        matrix = stack_var("MATRIX_URL"),
        server = stack_var("MATRIX_SERVER_NAME"),
        lk = stack_var("LIVEKIT_URL"),
        lkhttp = stack_var("LIVEKIT_HTTP_URL"),
        lkkey = stack_var("LIVEKIT_API_KEY"),
    )
}

pub fn secrets(matrix_password: Option<String>) -> Secrets {
    let lk = read_file(&stack_var("LIVEKIT_API_SECRET_FILE"));
    let pepper = unique("pepper-for-tests-");
    Secrets::from_env(|k| match k {
        "ORACLE_CALLS_LIVEKIT_API_SECRET" => Some(lk.clone()),
        "ORACLE_CALLS_API_KEY_PEPPER" => Some(pepper.clone()),
        "ORACLE_CALLS_MATRIX_PASSWORD" => matrix_password.clone(),
        _ => None,
    })
    .unwrap()
}

/// A server running in this process on a loopback port, without the Matrix bot.
pub struct TestServer {
    pub base: String,
    pub state: AppState,
    pub oracle: Did,
    pub pepper: Secret,
    _stop: oneshot::Sender<()>,
    _dir: TempDir,
}

/// An oracle server's configuration on its own data directory, to be started, stopped and
/// started again on the same data (restarts, reindexing).
pub struct Restartable {
    pub oracle: Did,
    pub bot: MatrixUser,
    pub config: Config,
    pub secrets: Secrets,
    pub dir: TempDir,
}

impl Restartable {
    pub async fn new(db: Db) -> Self {
        let bot = MatrixUser::new(&unique("oracle")).await;
        let dir = temp_dir();
        let oracle = Did::parse(&unique("did:ixo:oracle")).unwrap();
        let config = Config::from_toml(&config_toml(&oracle, &bot.user_id, &dir.0, db)).unwrap();
        let secrets = secrets(Some(bot.password.clone()));
        Self {
            oracle,
            bot,
            config,
            secrets,
            dir,
        }
    }

    /// A state on the data. `with_password` lets the bot log in with its password (the first
    /// start); without it only the saved session can (a restart).
    pub async fn state(&self, with_password: bool) -> AppState {
        let mut secrets = self.secrets.clone();
        if !with_password {
            secrets.matrix_password = None;
        }
        oracle_calls_server::build_state(self.config.clone(), secrets)
            .await
            .unwrap()
    }

    /// A server on [`Self::state`].
    pub async fn serve(&self, with_password: bool) -> TestServer {
        let state = self.state(with_password).await;
        TestServer::serve_state(state, self.secrets.api_key_pepper.clone(), not_owned()).await
    }
}

/// A directory handle that deletes nothing (the data belongs to someone else).
pub fn not_owned() -> TempDir {
    TempDir(std::env::temp_dir().join(unique("not-owned-")))
}

pub struct TempDir(pub PathBuf);
impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

pub fn temp_dir() -> TempDir {
    let d = std::env::temp_dir().join(unique("oracle-calls-test-"));
    std::fs::create_dir_all(&d).unwrap();
    TempDir(d)
}

impl TestServer {
    pub async fn start(db: Db) -> Self {
        Self::start_on(db, "127.0.0.1:0").await
    }

    pub async fn start_on(db: Db, addr: &str) -> Self {
        Self::start_edited_on(db, addr, |t| t).await
    }

    /// A server without the bot whose config is first passed through `edit` (the TOML text).
    pub async fn start_edited(db: Db, edit: impl FnOnce(String) -> String) -> Self {
        Self::start_edited_on(db, "127.0.0.1:0", edit).await
    }

    async fn start_edited_on(db: Db, addr: &str, edit: impl FnOnce(String) -> String) -> Self {
        let dir = temp_dir();
        let oracle = Did::parse(&unique("did:ixo:oracle")).unwrap();
        let text = edit(config_toml(&oracle, "@oracle:localhost", &dir.0, db));
        let config = Config::from_toml(&text).unwrap();
        let secrets = secrets(None);
        let pepper = secrets.api_key_pepper.clone();
        let store = Store::connect(config.store_url(&secrets).unwrap().dangerous_expose())
            .await
            .unwrap();
        let state = AppState::new(config, secrets, store, None).unwrap();
        Self::spawn(state, addr, oracle, pepper, dir).await
    }

    /// A server with the oracle's Matrix bot logged in as `bot`.
    pub async fn start_with_bot(db: Db, bot: &MatrixUser) -> Self {
        Self::start_with_bot_edited(db, bot, |t| t).await
    }

    /// A server with the bot whose config is first passed through `edit` (the TOML text), e.g.
    /// to route Matrix or LiveKit through a [`Gate`]. Keeps `dir` (its data) alive.
    pub async fn start_with_bot_edited(
        db: Db,
        bot: &MatrixUser,
        edit: impl FnOnce(String) -> String,
    ) -> Self {
        let dir = temp_dir();
        let oracle = Did::parse(&unique("did:ixo:oracle")).unwrap();
        let text = edit(config_toml(&oracle, &bot.user_id, &dir.0, db));
        let config = Config::from_toml(&text).unwrap();
        let secrets = secrets(Some(bot.password.clone()));
        let pepper = secrets.api_key_pepper.clone();
        let state = oracle_calls_server::build_state(config, secrets)
            .await
            .unwrap();
        Self::spawn(state, "127.0.0.1:0", oracle, pepper, dir).await
    }

    /// Serves an already built `state` (e.g. after a restart on the same data).
    pub async fn serve_state(state: AppState, pepper: Secret, dir: TempDir) -> Self {
        let oracle = state.config().oracle.did.clone();
        Self::spawn(state, "127.0.0.1:0", oracle, pepper, dir).await
    }

    /// A handle on a state that is not served (for store-level helpers).
    pub fn wrap(state: AppState) -> Self {
        let (tx, _rx) = oneshot::channel::<()>();
        let oracle = state.config().oracle.did.clone();
        Self {
            base: String::new(),
            pepper: Secret::new(""),
            state,
            oracle,
            _stop: tx,
            _dir: TempDir(std::env::temp_dir().join(unique("unused-"))),
        }
    }

    async fn spawn(state: AppState, addr: &str, oracle: Did, pepper: Secret, dir: TempDir) -> Self {
        let listener = TcpListener::bind(addr).await.unwrap();
        let base = format!("http://{}", listener.local_addr().unwrap());
        let (tx, rx) = oneshot::channel::<()>();
        let st = state.clone();
        tokio::spawn(async move {
            oracle_calls_server::serve_on(listener, st, async {
                let _ = rx.await;
            })
            .await
            .unwrap();
        });
        Self {
            base,
            state,
            oracle,
            pepper,
            _stop: tx,
            _dir: dir,
        }
    }

    pub fn store(&self) -> &Store {
        self.state.store()
    }

    pub fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base)
    }

    /// Stores a pending call of `user` (as a sync would), returns its id.
    pub async fn seed_call(&self, sender: &str, session: &str, oracle: &Did) -> CallId {
        let now = oracle_calls_server::now().unix_millis();
        self.seed_call_started(sender, session, oracle, now).await
    }

    /// As [`Self::seed_call`], for a call whose `callStartedAt` is `started_ms` (Unix ms).
    pub async fn seed_call_started(
        &self,
        sender: &str,
        session: &str,
        oracle: &Did,
        started_ms: i64,
    ) -> CallId {
        let id = new_call_id();
        self.seed_call_id(&id, sender, session, oracle, started_ms)
            .await;
        id
    }

    /// Stores the pending call `id` as [`Self::seed_call_started`] does.
    pub async fn seed_call_id(
        &self,
        id: &CallId,
        sender: &str,
        session: &str,
        oracle: &Did,
        started_ms: i64,
    ) {
        let content = pending_content(id, session, oracle, started_ms);
        let now = oracle_calls_server::now().unix_millis();
        let done = self
            .store()
            .insert_call(id, "!room:localhost", sender, &content, now)
            .await
            .unwrap();
        assert_eq!(done, oracle_calls_server::store::Inserted::New);
    }
}

/// A fresh call id of the shape a client makes.
pub fn new_call_id() -> CallId {
    CallId::new(
        EventId::parse(&unique("$ev")).unwrap(),
        RoomName::parse(&room_name()).unwrap(),
    )
}

/// The content of a pending call `id` to `oracle`, started at `started_ms` (Unix ms).
pub fn pending_content(
    id: &CallId,
    session: &str,
    oracle: &Did,
    started_ms: i64,
) -> OraclesCallContent {
    OraclesCallContent {
        call_id: None,
        call_type: CallType::Audio,
        call_status: CallStatus::Pending,
        call_started_at: oracle_calls_proto::Timestamp::from_unix_millis(started_ms).unwrap(),
        call_ended_at: None,
        encryption_key: KeyEnvelope::parse("v1.hpke-p256.QUJD").unwrap(),
        session_id: SessionId::parse(session).unwrap(),
        room_id: id.room_name().clone(),
        user_did: Did::parse("did:ixo:user1").unwrap(),
        oracle_did: oracle.clone(),
        key_derivation: KeyDerivation::Hkdf,
    }
}

/// `(status, json body)` of a response.
pub async fn answer(resp: reqwest::Response) -> (u16, Value) {
    let status = resp.status().as_u16();
    let text = resp.text().await.unwrap();
    (
        status,
        serde_json::from_str(&text).unwrap_or(Value::String(text)),
    )
}

/// Runs the async test body once per backend.
macro_rules! both_backends {
    ($name:ident, $body:ident) => {
        mod $name {
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn sqlite() {
                super::$body($crate::support::Db::Sqlite).await;
            }
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn postgres() {
                super::$body($crate::support::Db::Postgres).await;
            }
        }
    };
}
pub(crate) use both_backends;

/// A TCP relay to an upstream server that a test can close (new connections are dropped at
/// once and live ones are cut) and open again: a homeserver or LiveKit going down and back.
pub struct Gate {
    pub url: String,
    open: std::sync::Arc<std::sync::atomic::AtomicBool>,
    live: std::sync::Arc<std::sync::Mutex<Vec<tokio::task::AbortHandle>>>,
}

impl Gate {
    /// Relays to `upstream` (`http://host:port`), open.
    pub async fn start(upstream: &str) -> Self {
        // These tests are about failures: RUST_LOG=oracle_calls_server=debug shows them.
        let _ = tracing_subscriber::fmt()
            .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
            .with_test_writer()
            .try_init();
        use std::sync::atomic::Ordering;
        let target = upstream
            .trim_start_matches("http://")
            .trim_end_matches('/')
            .to_owned();
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        let open = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(true));
        let live =
            std::sync::Arc::new(std::sync::Mutex::new(Vec::<tokio::task::AbortHandle>::new()));
        let (o, l) = (open.clone(), live.clone());
        tokio::spawn(async move {
            while let Ok((mut inbound, _)) = listener.accept().await {
                if !o.load(Ordering::SeqCst) {
                    drop(inbound);
                    continue;
                }
                let target = target.clone();
                let task = tokio::spawn(async move {
                    if let Ok(mut outbound) = tokio::net::TcpStream::connect(&target).await {
                        let _ = tokio::io::copy_bidirectional(&mut inbound, &mut outbound).await;
                    }
                });
                let mut live = l.lock().unwrap();
                live.retain(|h| !h.is_finished());
                live.push(task.abort_handle());
            }
        });
        Self { url, open, live }
    }

    /// Refuses new connections and cuts the live ones.
    pub fn close(&self) {
        self.open.store(false, std::sync::atomic::Ordering::SeqCst);
        for h in self.live.lock().unwrap().drain(..) {
            h.abort();
        }
    }

    /// Relays again.
    pub fn open(&self) {
        self.open.store(true, std::sync::atomic::Ordering::SeqCst);
    }
}

/// The value of a metric line `name` (labels included, e.g. `x_total{outcome="ok"}`) in the
/// server's `/metrics`, 0 when absent.
pub async fn metric(s: &TestServer, name: &str) -> f64 {
    let text = reqwest::get(s.url("/metrics"))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    text.lines()
        .find_map(|l| l.strip_prefix(name).and_then(|rest| rest.strip_prefix(' ')))
        .map_or(0.0, |v| v.trim().parse().unwrap())
}

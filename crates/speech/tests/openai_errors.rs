//! The OpenAI-compatible engines against a scripted local HTTP/1.1 server: what they send,
//! and every way an answer can go wrong (error statuses, slow or stalled or dropped answers,
//! malformed streams, cancellation), with the key never showing in an error.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::indexing_slicing,
    clippy::panic
)]

use std::future::Future;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures_util::StreamExt;
use oracle_calls_speech::openai::{
    ApiKey, BrainConfig, OpenAiBrain, OpenAiEndpoint, OpenAiStt, OpenAiTts, SpeechFormat,
    SttConfig, TtsConfig,
};
use oracle_calls_speech::{
    Brain, EngineError, Message, Pcm, SpeechToText, Stage, TextToSpeech, wav,
};
use serde_json::{Value, json};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{Semaphore, mpsc};
use tokio::time::{Instant, sleep, timeout};

const KEY: &str = "sk-test-Zq8rV1cW9pLm3xN7oracle";

// ---------------------------------------------------------------------------------------------
// The scripted server

#[derive(Clone, Debug)]
struct Request {
    method: String,
    path: String,
    headers: Vec<(String, String)>,
    body: Vec<u8>,
}

impl Request {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    fn json(&self) -> Value {
        serde_json::from_slice(&self.body).expect("a JSON request body")
    }
}

/// One accepted connection and the request read from it.
struct Conn {
    stream: TcpStream,
    req: Request,
    events: mpsc::UnboundedSender<String>,
    gate: Arc<Semaphore>,
}

impl Conn {
    async fn write(&mut self, bytes: impl AsRef<[u8]>) {
        // The client may be gone (that is what some tests check): a failed write is no panic.
        let _ = self.stream.write_all(bytes.as_ref()).await;
        let _ = self.stream.flush().await;
    }

    /// A whole response with a Content-Length.
    async fn respond(&mut self, status: u16, content_type: &str, body: &[u8]) {
        let head = format!(
            "HTTP/1.1 {status} {}\r\nContent-Type: {content_type}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
            reason(status),
            body.len()
        );
        self.write(head).await;
        self.write(body).await;
    }

    /// The head of a chunked response.
    async fn start_chunked(&mut self, content_type: &str) {
        let head = format!(
            "HTTP/1.1 200 OK\r\nContent-Type: {content_type}\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n"
        );
        self.write(head).await;
    }

    /// One chunk of a chunked body, on its own write (a pause lets each arrive alone).
    async fn chunk(&mut self, data: impl AsRef<[u8]>) {
        let data = data.as_ref();
        let mut out = format!("{:x}\r\n", data.len()).into_bytes();
        out.extend_from_slice(data);
        out.extend_from_slice(b"\r\n");
        self.write(out).await;
        sleep(Duration::from_millis(5)).await;
    }

    async fn end_chunks(&mut self) {
        self.write("0\r\n\r\n").await;
    }

    /// Waits (bounded) until the test opens the gate.
    async fn gate(&self) {
        let permit = timeout(Duration::from_secs(10), self.gate.acquire())
            .await
            .expect("the test never opened the gate")
            .unwrap();
        permit.forget();
    }

    /// Reads until the client closes the connection; says how it ended and reports it.
    async fn wait_close(&mut self) {
        let mut buf = [0u8; 1024];
        let started = Instant::now();
        let what = loop {
            match timeout(Duration::from_secs(10), self.stream.read(&mut buf)).await {
                Err(_) => break "still open after 10 s".to_owned(),
                Ok(Ok(0)) => break format!("closed after {:?}", started.elapsed()),
                Ok(Err(e)) => break format!("closed after {:?} ({e})", started.elapsed()),
                Ok(Ok(_)) => {}
            }
        };
        let _ = self.events.send(what);
    }
}

fn reason(status: u16) -> &'static str {
    match status {
        200 => "OK",
        307 => "Temporary Redirect",
        400 => "Bad Request",
        401 => "Unauthorized",
        429 => "Too Many Requests",
        500 => "Internal Server Error",
        502 => "Bad Gateway",
        503 => "Service Unavailable",
        _ => "Whatever",
    }
}

async fn read_request(stream: &mut TcpStream) -> Option<Request> {
    let mut buf = Vec::new();
    let mut tmp = [0u8; 16 * 1024];
    let head_end = loop {
        if let Some(at) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            break at;
        }
        let n = stream.read(&mut tmp).await.ok()?;
        if n == 0 {
            return None;
        }
        buf.extend_from_slice(&tmp[..n]);
    };
    let head = String::from_utf8(buf[..head_end].to_vec()).ok()?;
    let mut lines = head.split("\r\n");
    let mut first = lines.next()?.split(' ');
    let method = first.next()?.to_owned();
    let path = first.next()?.to_owned();
    let headers: Vec<(String, String)> = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(n, v)| (n.trim().to_ascii_lowercase(), v.trim().to_owned()))
        .collect();
    let len: usize = headers
        .iter()
        .find(|(n, _)| n == "content-length")
        .map_or(0, |(_, v)| v.parse().unwrap());
    let mut body = buf[head_end + 4..].to_vec();
    while body.len() < len {
        let n = stream.read(&mut tmp).await.ok()?;
        if n == 0 {
            return None;
        }
        body.extend_from_slice(&tmp[..n]);
    }
    Some(Request {
        method,
        path,
        headers,
        body,
    })
}

struct Server {
    addr: SocketAddr,
    requests: Arc<Mutex<Vec<Request>>>,
    connections: Arc<AtomicUsize>,
    events: mpsc::UnboundedReceiver<String>,
    gate: Arc<Semaphore>,
}

impl Server {
    /// A server on 127.0.0.1 that runs `handler` on every connection.
    async fn start<F, Fut>(handler: F) -> Self
    where
        F: Fn(Conn) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = ()> + Send + 'static,
    {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let requests = Arc::new(Mutex::new(Vec::new()));
        let connections = Arc::new(AtomicUsize::new(0));
        let (tx, events) = mpsc::unbounded_channel();
        let gate = Arc::new(Semaphore::new(0));
        let handler = Arc::new(handler);
        {
            let requests = Arc::clone(&requests);
            let connections = Arc::clone(&connections);
            let gate = Arc::clone(&gate);
            tokio::spawn(async move {
                while let Ok((mut stream, _)) = listener.accept().await {
                    connections.fetch_add(1, Ordering::SeqCst);
                    stream.set_nodelay(true).unwrap();
                    let requests = Arc::clone(&requests);
                    let handler = Arc::clone(&handler);
                    let events = tx.clone();
                    let gate = Arc::clone(&gate);
                    tokio::spawn(async move {
                        let Some(req) = read_request(&mut stream).await else {
                            return;
                        };
                        requests.lock().unwrap().push(req.clone());
                        handler(Conn {
                            stream,
                            req,
                            events,
                            gate,
                        })
                        .await;
                    });
                }
            });
        }
        Self {
            addr,
            requests,
            connections,
            events,
            gate,
        }
    }

    fn base(&self) -> String {
        format!("http://{}/v1", self.addr)
    }

    fn endpoint(&self) -> OpenAiEndpoint {
        OpenAiEndpoint::new(self.base()).with_api_key(key())
    }

    /// The one request the server got.
    fn request(&self) -> Request {
        let reqs = self.requests.lock().unwrap();
        assert_eq!(reqs.len(), 1, "requests: {reqs:?}");
        reqs[0].clone()
    }

    async fn event(&mut self) -> String {
        timeout(Duration::from_secs(15), self.events.recv())
            .await
            .expect("no event from the server")
            .unwrap()
    }

    fn open_gate(&self) {
        self.gate.add_permits(1);
    }
}

fn key() -> ApiKey {
    static N: AtomicUsize = AtomicUsize::new(0);
    let path = std::env::temp_dir().join(format!(
        "oc-openai-errors-{}-{}",
        std::process::id(),
        N.fetch_add(1, Ordering::SeqCst)
    ));
    std::fs::write(&path, format!("{KEY}\n")).unwrap();
    let key = ApiKey::from_file(&path).unwrap();
    std::fs::remove_file(&path).unwrap();
    key
}

/// The key shows in neither form of the error.
fn no_key(e: &EngineError) {
    let shown = format!("{e} {e:?}");
    assert!(!shown.contains(KEY), "the key leaked: {shown}");
    assert!(
        !shown.contains("Zq8rV1cW9pLm3xN7"),
        "part of the key leaked: {shown}"
    );
}

// ---------------------------------------------------------------------------------------------
// Engines with test deadlines, and one way to run each to its end

const SLOW: Duration = Duration::from_secs(5);

fn stt(endpoint: OpenAiEndpoint, timeout: Duration) -> OpenAiStt {
    let mut c = SttConfig::new(endpoint, "whisper-1");
    c.timeout = timeout;
    OpenAiStt::new(c).unwrap()
}

fn brain(endpoint: OpenAiEndpoint, first: Duration, idle: Duration) -> OpenAiBrain {
    let mut c = BrainConfig::new(endpoint, "smollm2");
    c.first_token_timeout = first;
    c.idle_timeout = idle;
    OpenAiBrain::new(c).unwrap()
}

fn tts(endpoint: OpenAiEndpoint, first: Duration, idle: Duration) -> OpenAiTts {
    let mut c = TtsConfig::new(endpoint, "tts-1", "alloy");
    c.first_audio_timeout = first;
    c.idle_timeout = idle;
    OpenAiTts::new(c).unwrap()
}

fn tone(n: usize) -> Vec<i16> {
    (0..n)
        .map(|i| ((i as f32 * 0.07).sin() * 8000.0) as i16)
        .collect()
}

#[derive(Clone, Copy, Debug)]
enum Kind {
    Stt,
    Brain,
    Tts,
}

const KINDS: [Kind; 3] = [Kind::Stt, Kind::Brain, Kind::Tts];

impl Kind {
    fn stage(self) -> Stage {
        match self {
            Self::Stt => Stage::SpeechToText,
            Self::Brain => Stage::Brain,
            Self::Tts => Stage::TextToSpeech,
        }
    }
}

/// Runs one engine of `kind` to the end: its text, or the first error (at the request or
/// mid-stream).
async fn run(
    kind: Kind,
    endpoint: OpenAiEndpoint,
    deadline: Duration,
) -> Result<String, EngineError> {
    match kind {
        Kind::Stt => {
            let mut t = stt(endpoint, deadline).start();
            t.push(&tone(8000));
            t.finish().await
        }
        Kind::Brain => {
            let mut s = brain(endpoint, deadline, deadline)
                .answer(vec![Message::user("hello")])
                .await?;
            let mut text = String::new();
            while let Some(piece) = s.next().await {
                text.push_str(&piece?);
            }
            Ok(text)
        }
        Kind::Tts => {
            let mut s = tts(endpoint, deadline, deadline)
                .synthesize("Hello there.")
                .await?;
            let mut n = 0;
            while let Some(pcm) = s.next().await {
                n += pcm?.samples.len();
            }
            Ok(format!("{n} samples"))
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Speech-to-text

/// The parts of a multipart/form-data body: (headers, content) by name.
fn form_parts(content_type: &str, body: &[u8]) -> Vec<(String, String, Vec<u8>)> {
    let boundary = content_type
        .strip_prefix("multipart/form-data; boundary=")
        .expect("a multipart content type");
    let delim = format!("--{boundary}");
    let mut parts = Vec::new();
    let mut rest = body;
    // The body starts with the first delimiter and ends with the closing one.
    assert!(rest.starts_with(delim.as_bytes()));
    let end = format!("\r\n--{boundary}--\r\n");
    assert!(body.ends_with(end.as_bytes()), "the closing delimiter");
    loop {
        rest = &rest[delim.len()..];
        if rest.starts_with(b"--") {
            break;
        }
        rest = rest.strip_prefix(b"\r\n").expect("CRLF after a delimiter");
        let next = format!("\r\n{delim}");
        let at = rest
            .windows(next.len())
            .position(|w| w == next.as_bytes())
            .expect("a next delimiter");
        let part = &rest[..at];
        let head_end = part.windows(4).position(|w| w == b"\r\n\r\n").unwrap();
        let head = String::from_utf8(part[..head_end].to_vec()).unwrap();
        let name = head
            .split("name=\"")
            .nth(1)
            .and_then(|s| s.split('"').next())
            .unwrap()
            .to_owned();
        parts.push((name, head, part[head_end + 4..].to_vec()));
        rest = &rest[at + 2..];
    }
    parts
}

#[tokio::test]
async fn stt_posts_a_wav_form_and_returns_the_trimmed_text() {
    let server = Server::start(|mut c| async move {
        c.respond(
            200,
            "application/json",
            br#"{"text":"  Hello, oracle. \n"}"#,
        )
        .await;
    })
    .await;
    let mut cfg = SttConfig::new(server.endpoint(), "whisper-1");
    cfg.language = Some("en".into());
    cfg.prompt = Some("Oracle, weather".into());
    let engine = OpenAiStt::new(cfg).unwrap();
    let audio = tone(16000 * 3 / 2);
    let mut t = engine.start();
    for piece in audio.chunks(320) {
        t.push(piece);
    }
    let text = t.finish().await.unwrap();
    assert_eq!(text, "Hello, oracle.");

    let req = server.request();
    assert_eq!(req.method, "POST");
    assert_eq!(req.path, "/v1/audio/transcriptions");
    assert_eq!(
        req.header("authorization"),
        Some(format!("Bearer {KEY}").as_str())
    );
    let ct = req.header("content-type").unwrap().to_owned();
    let parts = form_parts(&ct, &req.body);
    let names: Vec<&str> = parts.iter().map(|(n, _, _)| n.as_str()).collect();
    assert_eq!(
        names,
        ["file", "model", "language", "prompt", "response_format"]
    );
    let (_, head, file) = &parts[0];
    assert!(head.contains("filename=\"utterance.wav\""), "{head}");
    assert!(head.contains("Content-Type: audio/wav"), "{head}");
    let pcm = wav::decode(file).unwrap();
    assert_eq!(pcm.rate, 16000);
    assert_eq!(pcm.samples, audio);
    let text = |i: usize| String::from_utf8(parts[i].2.clone()).unwrap();
    assert_eq!(text(1), "whisper-1");
    assert_eq!(text(2), "en");
    assert_eq!(text(3), "Oracle, weather");
    assert_eq!(text(4), "json");
}

#[tokio::test]
async fn stt_without_audio_sends_nothing() {
    let server = Server::start(|mut c| async move {
        c.respond(200, "application/json", br#"{"text":"phantom"}"#)
            .await;
    })
    .await;
    let t = stt(server.endpoint(), SLOW).start();
    assert_eq!(t.finish().await.unwrap(), "");
    let mut t = stt(server.endpoint(), SLOW).start();
    t.push(&[]);
    assert_eq!(t.finish().await.unwrap(), "");
    sleep(Duration::from_millis(100)).await;
    assert_eq!(server.connections.load(Ordering::SeqCst), 0);
}

#[tokio::test]
async fn stt_cuts_an_utterance_over_the_cap() {
    let server = Server::start(|mut c| async move {
        c.respond(200, "application/json", br#"{"text":"long"}"#)
            .await;
    })
    .await;
    let mut cfg = SttConfig::new(server.endpoint(), "whisper-1");
    cfg.max_utterance = Duration::from_millis(500);
    let mut t = OpenAiStt::new(cfg).unwrap().start();
    let audio = tone(16000);
    for piece in audio.chunks(1000) {
        t.push(piece);
    }
    assert_eq!(t.finish().await.unwrap(), "long");
    let req = server.request();
    let parts = form_parts(req.header("content-type").unwrap(), &req.body);
    let pcm = wav::decode(&parts[0].2).unwrap();
    assert_eq!(pcm.samples.len(), 8000, "0.5 s at 16 kHz");
    assert_eq!(pcm.samples, audio[..8000]);
}

#[tokio::test]
async fn stt_answer_that_is_not_json_is_malformed() {
    let server = Server::start(|mut c| async move {
        c.respond(200, "text/plain", b"Hello, oracle.").await;
    })
    .await;
    let e = run(Kind::Stt, server.endpoint(), SLOW).await.unwrap_err();
    assert!(
        matches!(&e, EngineError::Malformed { stage: Stage::SpeechToText, reason } if reason.contains("not JSON")),
        "{e:?}"
    );
    // The transcript the server sent is not repeated in the error.
    assert!(!e.to_string().contains("Hello"), "{e}");
    no_key(&e);
}

// ---------------------------------------------------------------------------------------------
// Every engine: error statuses, slow answers, refused connections, redirects

#[tokio::test]
async fn error_statuses_are_typed_with_the_servers_reason() {
    let cases: Vec<(u16, &str, Vec<u8>, String)> = vec![
        (
            400,
            "application/json",
            br#"{"error":{"message":"Invalid file format.","type":"invalid_request_error","param":"file","code":null}}"#.to_vec(),
            "Invalid file format.".into(),
        ),
        (
            401,
            "application/json",
            br#"{"error":{"message":"Incorrect API key provided.","type":"invalid_request_error","code":"invalid_api_key"}}"#.to_vec(),
            "Incorrect API key provided.".into(),
        ),
        (
            429,
            "application/json",
            br#"{"error":{"message":"Rate limit reached for requests","type":"requests","code":"rate_limit_exceeded"}}"#.to_vec(),
            "Rate limit reached for requests".into(),
        ),
        (
            500,
            "application/json",
            br#"{"error":{"message":"The server had an error\nwhile processing your request.","type":"server_error"}}"#.to_vec(),
            "The server had an error while processing your request.".into(),
        ),
        (
            503,
            "application/json",
            br#"{"detail":"Model is loading"}"#.to_vec(),
            "Model is loading".into(),
        ),
        (
            500,
            "text/html",
            b"<html><body>\r\n<h1>Internal\tServer Error</h1></body></html>".to_vec(),
            "<html><body> <h1>Internal Server Error</h1></body></html>".into(),
        ),
        (
            502,
            "text/plain",
            "x".repeat(5000).into_bytes(),
            format!("{}…", "x".repeat(200)),
        ),
        (503, "text/plain", Vec::new(), "Service Unavailable".into()),
        (
            429,
            "application/json",
            br#"{"error":"slow down"}"#.to_vec(),
            "slow down".into(),
        ),
    ];
    for kind in KINDS {
        for (status, ct, body, want) in &cases {
            let (status, ct, body) = (*status, ct.to_string(), body.clone());
            let server = Server::start(move |mut c| {
                let (ct, body) = (ct.clone(), body.clone());
                async move { c.respond(status, &ct, &body).await }
            })
            .await;
            let e = run(kind, server.endpoint(), SLOW).await.unwrap_err();
            match &e {
                EngineError::Http {
                    stage,
                    status: got,
                    message,
                } => {
                    assert_eq!(*stage, kind.stage());
                    assert_eq!(*got, status, "{kind:?}");
                    assert_eq!(message, want, "{kind:?} {status}");
                }
                other => panic!("{kind:?} {status}: {other:?}"),
            }
            no_key(&e);
        }
    }
}

#[tokio::test]
async fn a_slow_first_byte_times_out_for_every_engine() {
    for kind in KINDS {
        let server = Server::start(|mut c| async move {
            sleep(Duration::from_secs(3)).await;
            c.respond(200, "application/json", br#"{"text":"late"}"#)
                .await;
        })
        .await;
        let deadline = Duration::from_millis(300);
        let started = Instant::now();
        let e = run(kind, server.endpoint(), deadline).await.unwrap_err();
        let took = started.elapsed();
        assert!(
            matches!(e, EngineError::Timeout { stage, after } if stage == kind.stage() && after == deadline),
            "{kind:?}: {e:?}"
        );
        assert!(
            took >= deadline && took < Duration::from_secs(2),
            "{kind:?} took {took:?}"
        );
        assert!(e.to_string().ends_with("timed out after 300 ms"), "{e}");
        no_key(&e);
    }
}

#[tokio::test]
async fn a_refused_connection_is_a_connection_error() {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    drop(listener);
    for kind in KINDS {
        let endpoint = OpenAiEndpoint::new(format!("http://{addr}/v1")).with_api_key(key());
        let e = run(kind, endpoint, SLOW).await.unwrap_err();
        match &e {
            EngineError::Connection { stage, reason } => {
                assert_eq!(*stage, kind.stage());
                assert!(
                    reason.starts_with(&format!("could not connect to 127.0.0.1:{}", addr.port())),
                    "{reason}"
                );
            }
            other => panic!("{kind:?}: {other:?}"),
        }
        no_key(&e);
    }
}

#[tokio::test]
async fn redirects_are_not_followed() {
    let elsewhere = Server::start(|mut c| async move {
        c.respond(200, "application/json", br#"{"text":"followed"}"#)
            .await;
    })
    .await;
    let target = format!("{}/audio/transcriptions", elsewhere.base());
    for kind in KINDS {
        let target = target.clone();
        let server = Server::start(move |mut c| {
            let target = target.clone();
            async move {
                let head = format!(
                    "HTTP/1.1 307 Temporary Redirect\r\nLocation: {target}\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
                );
                c.write(head).await;
            }
        })
        .await;
        let e = run(kind, server.endpoint(), SLOW).await.unwrap_err();
        assert!(
            matches!(&e, EngineError::Http { status: 307, message, .. } if message.contains("redirect")),
            "{kind:?}: {e:?}"
        );
    }
    assert_eq!(elsewhere.connections.load(Ordering::SeqCst), 0);
}

#[test]
fn plain_http_to_another_host_is_refused() {
    for base in [
        "http://example.com/v1",
        "http://192.168.1.20:8091/v1",
        "http://[2001:db8::1]/v1",
        "http://127.0.0.1.nip.io/v1",
    ] {
        let ep = || OpenAiEndpoint::new(base);
        let errors = [
            OpenAiStt::new(SttConfig::new(ep(), "m")).unwrap_err(),
            OpenAiBrain::new(BrainConfig::new(ep(), "m")).unwrap_err(),
            OpenAiTts::new(TtsConfig::new(ep(), "m", "v")).unwrap_err(),
        ];
        for e in errors {
            assert!(e.to_string().contains("use https"), "{base}: {e}");
        }
    }
    // https anywhere, and loopback http, are fine; a key in the URL is not.
    assert!(
        OpenAiBrain::new(BrainConfig::new(
            OpenAiEndpoint::new("https://api.example.com/v1"),
            "m"
        ))
        .is_ok()
    );
    assert!(
        OpenAiBrain::new(BrainConfig::new(
            OpenAiEndpoint::new("http://localhost:8091/v1"),
            "m"
        ))
        .is_ok()
    );
    assert!(
        OpenAiBrain::new(BrainConfig::new(
            OpenAiEndpoint::new("http://[::1]:8091/v1"),
            "m"
        ))
        .is_ok()
    );
    let e = OpenAiBrain::new(BrainConfig::new(
        OpenAiEndpoint::new(format!("https://u:{KEY}@api.example.com/v1")),
        "m",
    ))
    .unwrap_err();
    assert!(!e.to_string().contains(KEY), "{e}");
}

#[tokio::test]
async fn the_key_shows_in_no_error_or_debug_output() {
    // A server that echoes the bearer token back in its errors.
    for kind in KINDS {
        let server = Server::start(|mut c| async move {
            let auth = c.req.header("authorization").unwrap_or("").to_owned();
            let body = json!({"error": {"message": format!("Incorrect API key provided: {auth}")}});
            c.respond(401, "application/json", body.to_string().as_bytes())
                .await;
        })
        .await;
        let e = run(kind, server.endpoint(), SLOW).await.unwrap_err();
        assert!(
            matches!(&e, EngineError::Http { status: 401, message, .. } if message == "Incorrect API key provided: Bearer ***"),
            "{e:?}"
        );
        no_key(&e);
    }
    // In a stream's error event too.
    let server = Server::start(|mut c| async move {
        let auth = c.req.header("authorization").unwrap_or("").to_owned();
        c.start_chunked("text/event-stream").await;
        let ev = json!({"error": {"message": format!("quota for {auth} exceeded"), "code": 429}});
        c.chunk(format!("data: {ev}\n\n")).await;
        c.end_chunks().await;
    })
    .await;
    let e = run(Kind::Brain, server.endpoint(), SLOW).await.unwrap_err();
    assert!(matches!(e, EngineError::Http { status: 429, .. }), "{e:?}");
    no_key(&e);
    // And in the engines' and configs' Debug.
    let ep = server.endpoint();
    let shown = format!(
        "{ep:?} {:?} {:?} {:?} {:?}",
        stt(ep.clone(), SLOW),
        brain(ep.clone(), SLOW, SLOW),
        tts(ep.clone(), SLOW, SLOW),
        BrainConfig::new(ep.clone(), "m"),
    );
    assert!(shown.contains("ApiKey(***)"), "{shown}");
    assert!(!shown.contains(KEY), "{shown}");
}

// ---------------------------------------------------------------------------------------------
// Brain

fn delta(text: &str) -> String {
    let ev = json!({"id": "c1", "object": "chat.completion.chunk", "choices": [{"index": 0, "delta": {"content": text}, "finish_reason": null}]});
    format!("data: {ev}\n\n")
}

#[tokio::test]
async fn brain_streams_deltas_across_any_chunk_boundaries() {
    let server = Server::start(|mut c| async move {
        c.start_chunked("text/event-stream; charset=utf-8").await;
        // A comment, then a role-only delta (no text) with CRLF line ends.
        c.chunk(": ping\r\n\r\n").await;
        let role = json!({"choices": [{"index": 0, "delta": {"role": "assistant"}, "finish_reason": null}]});
        c.chunk(format!("data: {role}\r\n\r\n")).await;
        // The first delta, whole; then wait until the test has it.
        c.chunk(delta("The")).await;
        c.gate().await;
        // A delta cut in the middle of its JSON and of its line end.
        let d = delta(" oracle's");
        let (a, b) = d.split_at(17);
        c.chunk(a).await;
        c.chunk(format!("{}\r", &b[..b.len() - 2])).await;
        c.chunk("\n\r\n").await;
        // One event spread over two data lines (JSON may break anywhere whitespace may go).
        c.chunk("data: {\"choices\":[{\"index\":0,\n").await;
        c.chunk("data: \"delta\":{\"content\":\" answer\"}}]}\n\n").await;
        // A choice other than the first is not ours; an empty content is nothing.
        c.chunk("data: {\"choices\":[{\"index\":1,\"delta\":{\"content\":\"NOT\"}}]}\n\n")
            .await;
        c.chunk(delta("")).await;
        // A multibyte character cut across chunks.
        let d = delta(" ☀.");
        let bytes = d.as_bytes();
        let at = d.find('☀').unwrap() + 1;
        c.chunk(&bytes[..at]).await;
        c.chunk(&bytes[at..]).await;
        let fin = json!({"choices": [{"index": 0, "delta": {}, "finish_reason": "stop"}]});
        c.chunk(format!("data: {fin}\n\n")).await;
        // [DONE] split across chunks.
        c.chunk("data: [DO").await;
        c.chunk("NE]\n").await;
        c.chunk("\n").await;
        c.end_chunks().await;
    })
    .await;
    let mut cfg = BrainConfig::new(server.endpoint(), "smollm2");
    cfg.system_prompt = Some("You are the oracle.".into());
    cfg.max_tokens = Some(64);
    cfg.temperature = Some(0.5);
    let b = OpenAiBrain::new(cfg).unwrap();
    let conversation = vec![
        Message::user("Hi"),
        Message::assistant("Hello."),
        Message::user("What is the weather?"),
    ];
    let mut s = b.answer(conversation).await.unwrap();
    let first = timeout(SLOW, s.next()).await.unwrap().unwrap().unwrap();
    assert_eq!(first, "The", "the first delta comes before the stream ends");
    server.open_gate();
    let mut pieces = vec![first];
    while let Some(p) = timeout(SLOW, s.next()).await.unwrap() {
        pieces.push(p.unwrap());
    }
    assert_eq!(pieces, ["The", " oracle's", " answer", " ☀."]);

    let req = server.request();
    assert_eq!(req.method, "POST");
    assert_eq!(req.path, "/v1/chat/completions");
    assert_eq!(
        req.header("authorization"),
        Some(format!("Bearer {KEY}").as_str())
    );
    assert!(
        req.header("content-type")
            .unwrap()
            .starts_with("application/json")
    );
    let body = req.json();
    assert_eq!(body["model"], "smollm2");
    assert_eq!(body["stream"], true);
    assert_eq!(body["max_tokens"], 64);
    assert_eq!(body["temperature"], 0.5);
    assert_eq!(
        body["messages"],
        json!([
            {"role": "system", "content": "You are the oracle."},
            {"role": "user", "content": "Hi"},
            {"role": "assistant", "content": "Hello."},
            {"role": "user", "content": "What is the weather?"},
        ])
    );
}

#[tokio::test]
async fn brain_request_without_options_has_no_optional_fields() {
    let server = Server::start(|mut c| async move {
        c.start_chunked("text/event-stream").await;
        c.chunk(format!("{}data: [DONE]\n\n", delta("ok"))).await;
        c.end_chunks().await;
    })
    .await;
    let text = run(Kind::Brain, server.endpoint(), SLOW).await.unwrap();
    assert_eq!(text, "ok");
    let body = server.request().json();
    let mut keys: Vec<&String> = body.as_object().unwrap().keys().collect();
    keys.sort();
    assert_eq!(keys, ["messages", "model", "stream"]);
    assert_eq!(
        body["messages"],
        json!([{"role": "user", "content": "hello"}])
    );
}

#[tokio::test]
async fn brain_stream_that_stalls_midway_times_out() {
    let server = Server::start(|mut c| async move {
        c.start_chunked("text/event-stream").await;
        c.chunk(delta("Once")).await;
        c.chunk(delta(" upon")).await;
        sleep(Duration::from_secs(3)).await;
        c.chunk(delta(" a time")).await;
        c.end_chunks().await;
    })
    .await;
    let idle = Duration::from_millis(300);
    let b = brain(server.endpoint(), SLOW, idle);
    let mut s = b.answer(vec![Message::user("story")]).await.unwrap();
    assert_eq!(s.next().await.unwrap().unwrap(), "Once");
    assert_eq!(s.next().await.unwrap().unwrap(), " upon");
    let started = Instant::now();
    let e = s.next().await.unwrap().unwrap_err();
    let took = started.elapsed();
    assert!(
        matches!(e, EngineError::Timeout { stage: Stage::Brain, after } if after == idle),
        "{e:?}"
    );
    assert!(took >= idle && took < Duration::from_secs(2), "{took:?}");
    assert!(s.next().await.is_none(), "nothing after the error");
}

#[tokio::test]
async fn brain_first_token_deadline_counts_keepalives_as_nothing() {
    // Comments and a role-only delta keep the connection busy but are not an answer.
    let server = Server::start(|mut c| async move {
        c.start_chunked("text/event-stream").await;
        for _ in 0..30 {
            c.chunk(": keep-alive\n\n").await;
            sleep(Duration::from_millis(50)).await;
        }
        c.chunk(delta("late")).await;
        c.end_chunks().await;
    })
    .await;
    let first = Duration::from_millis(400);
    let b = brain(server.endpoint(), first, SLOW);
    let started = Instant::now();
    let mut s = b.answer(vec![Message::user("hi")]).await.unwrap();
    let e = s.next().await.unwrap().unwrap_err();
    assert!(
        matches!(e, EngineError::Timeout { stage: Stage::Brain, after } if after == first),
        "{e:?}"
    );
    assert!(started.elapsed() < Duration::from_secs(2));
}

#[tokio::test]
async fn brain_connection_dropped_mid_stream() {
    let server = Server::start(|mut c| async move {
        c.start_chunked("text/event-stream").await;
        c.chunk(delta("Half")).await;
        // Half of a chunk, then the socket closes.
        c.write("40\r\ndata: {\"choices\":").await;
        drop(c);
    })
    .await;
    let b = brain(server.endpoint(), SLOW, SLOW);
    let mut s = b.answer(vec![Message::user("hi")]).await.unwrap();
    assert_eq!(s.next().await.unwrap().unwrap(), "Half");
    let e = timeout(SLOW, s.next()).await.unwrap().unwrap().unwrap_err();
    assert!(
        matches!(&e, EngineError::Connection { stage: Stage::Brain, reason } if reason.contains("broke mid-answer")),
        "{e:?}"
    );
    no_key(&e);
    assert!(s.next().await.is_none());
}

#[tokio::test]
async fn brain_stream_ending_without_done() {
    // With a finish_reason the answer is complete even without [DONE].
    let server = Server::start(|mut c| async move {
        c.start_chunked("text/event-stream").await;
        c.chunk(delta("Complete.")).await;
        let fin = json!({"choices": [{"index": 0, "delta": {}, "finish_reason": "length"}]});
        c.chunk(format!("data: {fin}\n\n")).await;
        c.end_chunks().await;
    })
    .await;
    assert_eq!(
        run(Kind::Brain, server.endpoint(), SLOW).await.unwrap(),
        "Complete."
    );
    // Without either, the text so far comes, then the error.
    let server = Server::start(|mut c| async move {
        c.start_chunked("text/event-stream").await;
        c.chunk(delta("Cut")).await;
        c.end_chunks().await;
    })
    .await;
    let b = brain(server.endpoint(), SLOW, SLOW);
    let mut s = b.answer(vec![Message::user("hi")]).await.unwrap();
    assert_eq!(s.next().await.unwrap().unwrap(), "Cut");
    let e = s.next().await.unwrap().unwrap_err();
    assert!(
        matches!(&e, EngineError::Connection { stage: Stage::Brain, reason } if reason == "the stream ended before the answer did"),
        "{e:?}"
    );
    assert!(s.next().await.is_none());
}

#[tokio::test]
async fn brain_malformed_stream_data() {
    let bad: [&[u8]; 4] = [
        b"data: {\"choices\":[{\"index\":0,\"delta\":{\"content\":\"x\"}\n\n",
        b"data: {\"choices\": \"the user said hello\"}\n\n",
        b"data: not json at all\n\n",
        b"data: \xff\xfe\n\n",
    ];
    for body in bad {
        let server = Server::start(move |mut c| async move {
            c.start_chunked("text/event-stream").await;
            c.chunk(delta("Before")).await;
            c.chunk(body).await;
            c.chunk(delta("after")).await;
            c.chunk("data: [DONE]\n\n").await;
            c.end_chunks().await;
        })
        .await;
        let b = brain(server.endpoint(), SLOW, SLOW);
        let mut s = b.answer(vec![Message::user("hi")]).await.unwrap();
        assert_eq!(s.next().await.unwrap().unwrap(), "Before");
        let e = s.next().await.unwrap().unwrap_err();
        assert!(
            matches!(
                &e,
                EngineError::Malformed {
                    stage: Stage::Brain,
                    ..
                }
            ),
            "{}: {e:?}",
            String::from_utf8_lossy(body)
        );
        // The stream's content is not copied into the error.
        assert!(!e.to_string().contains("hello"), "{e}");
        assert!(s.next().await.is_none(), "nothing after the error");
    }
}

#[tokio::test]
async fn brain_error_inside_the_stream() {
    let cases: [(&str, u16, &str); 3] = [
        (
            "data: {\"error\":{\"message\":\"CUDA out of memory\",\"type\":\"server_error\",\"code\":500}}\n\n",
            500,
            "error in the stream: CUDA out of memory",
        ),
        (
            "data: {\"error\":{\"message\":\"context length exceeded\",\"code\":\"context_length_exceeded\"}}\n\n",
            502,
            "error in the stream: context length exceeded",
        ),
        (
            "event: error\ndata: overloaded\n\n",
            502,
            "error in the stream: overloaded",
        ),
    ];
    for (event, status, message) in cases {
        let server = Server::start(move |mut c| async move {
            c.start_chunked("text/event-stream").await;
            c.chunk(delta("Some")).await;
            c.chunk(event).await;
            c.chunk(delta(" more")).await;
            c.end_chunks().await;
        })
        .await;
        let b = brain(server.endpoint(), SLOW, SLOW);
        let mut s = b.answer(vec![Message::user("hi")]).await.unwrap();
        assert_eq!(s.next().await.unwrap().unwrap(), "Some");
        let e = s.next().await.unwrap().unwrap_err();
        match &e {
            EngineError::Http {
                stage: Stage::Brain,
                status: got,
                message: m,
            } => {
                assert_eq!(*got, status);
                assert_eq!(m, message);
            }
            other => panic!("{other:?}"),
        }
        assert!(s.next().await.is_none());
    }
}

#[tokio::test]
async fn brain_accepts_an_unstreamed_json_answer() {
    let server = Server::start(|mut c| async move {
        let body = json!({"choices": [{"index": 0, "message": {"role": "assistant", "content": "Whole answer."}, "finish_reason": "stop"}]});
        c.respond(200, "application/json", body.to_string().as_bytes())
            .await;
    })
    .await;
    assert_eq!(
        run(Kind::Brain, server.endpoint(), SLOW).await.unwrap(),
        "Whole answer."
    );
}

#[tokio::test]
async fn dropping_the_answer_closes_the_connection() {
    let mut server = Server::start(|mut c| async move {
        c.start_chunked("text/event-stream").await;
        c.chunk(delta("First")).await;
        // Generating "slowly": the next delta would come much later.
        c.wait_close().await;
    })
    .await;
    let b = brain(server.endpoint(), SLOW, Duration::from_secs(30));
    let mut s = b.answer(vec![Message::user("hi")]).await.unwrap();
    assert_eq!(s.next().await.unwrap().unwrap(), "First");
    // While the answer is held, the connection stays open.
    sleep(Duration::from_millis(200)).await;
    assert!(server.events.try_recv().is_err(), "closed before the drop");
    let dropped = Instant::now();
    drop(s);
    let seen = server.event().await;
    let took = dropped.elapsed();
    println!("brain: the server saw the drop: {seen}; {took:?} after it");
    assert!(seen.starts_with("closed"), "{seen}");
    assert!(took < Duration::from_secs(2), "{took:?}");

    // The same for speech.
    let mut server = Server::start(|mut c| async move {
        c.start_chunked("audio/wav").await;
        let w = wav::encode(24000, &tone(2400));
        c.chunk(&w).await;
        c.wait_close().await;
    })
    .await;
    let t = tts(server.endpoint(), SLOW, Duration::from_secs(30));
    let mut s = t.synthesize("A long sentence.").await.unwrap();
    assert_eq!(s.next().await.unwrap().unwrap().samples.len(), 2400);
    sleep(Duration::from_millis(200)).await;
    assert!(server.events.try_recv().is_err(), "closed before the drop");
    let dropped = Instant::now();
    drop(s);
    let seen = server.event().await;
    println!(
        "speech: the server saw the drop: {seen}; {:?} after it",
        dropped.elapsed()
    );
    assert!(seen.starts_with("closed"), "{seen}");
    assert!(dropped.elapsed() < Duration::from_secs(2));
}

// ---------------------------------------------------------------------------------------------
// Text-to-speech

#[tokio::test]
async fn tts_yields_wav_audio_before_the_body_ends() {
    let audio = tone(22050);
    let sent = audio.clone();
    let server = Server::start(move |mut c| {
        let w = wav::encode(22050, &sent);
        async move {
            c.start_chunked("audio/wav").await;
            // The header and 0.1 s of audio (odd length: a sample split), then wait.
            let first = 44 + 4411;
            c.chunk(&w[..first]).await;
            c.gate().await;
            for piece in w[first..].chunks(3001) {
                c.chunk(piece).await;
            }
            c.end_chunks().await;
        }
    })
    .await;
    let mut cfg = TtsConfig::new(server.endpoint(), "tts-1", "alloy");
    cfg.speed = Some(1.25);
    let t = OpenAiTts::new(cfg).unwrap();
    let mut s = t.synthesize("  Hello there, caller.  ").await.unwrap();
    let first = timeout(SLOW, s.next()).await.unwrap().unwrap().unwrap();
    assert_eq!(first.rate, 22050);
    assert_eq!(first.samples, audio[..2205]);
    server.open_gate();
    let mut got = first.samples;
    while let Some(pcm) = timeout(SLOW, s.next()).await.unwrap() {
        let Pcm { rate, samples } = pcm.unwrap();
        assert_eq!(rate, 22050);
        got.extend(samples);
    }
    assert_eq!(got, audio);

    let req = server.request();
    assert_eq!(req.method, "POST");
    assert_eq!(req.path, "/v1/audio/speech");
    assert_eq!(
        req.header("authorization"),
        Some(format!("Bearer {KEY}").as_str())
    );
    assert_eq!(
        req.json(),
        json!({"model": "tts-1", "input": "Hello there, caller.", "voice": "alloy", "response_format": "wav", "speed": 1.25})
    );
}

#[tokio::test]
async fn tts_raw_pcm_at_the_configured_rate() {
    let audio = tone(4801);
    let sent = audio.clone();
    let server = Server::start(move |mut c| {
        let bytes: Vec<u8> = sent.iter().flat_map(|s| s.to_le_bytes()).collect();
        async move {
            c.start_chunked("audio/pcm").await;
            for piece in bytes.chunks(1001) {
                c.chunk(piece).await;
            }
            c.end_chunks().await;
        }
    })
    .await;
    let mut cfg = TtsConfig::new(server.endpoint(), "tts-1", "nova");
    cfg.format = SpeechFormat::Pcm { rate: 24000 };
    let t = OpenAiTts::new(cfg).unwrap();
    let mut s = t.synthesize("Raw.").await.unwrap();
    let mut got = Vec::new();
    let mut pieces = 0;
    while let Some(pcm) = s.next().await {
        let pcm = pcm.unwrap();
        assert_eq!(pcm.rate, 24000);
        got.extend(pcm.samples);
        pieces += 1;
    }
    assert_eq!(got, audio);
    assert!(pieces > 1, "the audio came in pieces");
    assert_eq!(server.request().json()["response_format"], "pcm");
}

#[tokio::test]
async fn tts_body_that_is_not_a_wav_is_malformed() {
    let bodies: [&[u8]; 3] = [
        b"ID3\x04\x00\x00\x00\x00\x00\x00 an mp3 file, not a wav at all",
        b"{\"audio\":\"base64...\"}",
        // A WAV header cut short: the body ends inside it.
        b"RIFF\x24\x00\x00\x00WAVEfmt \x10\x00",
    ];
    for body in bodies {
        let server = Server::start(move |mut c| async move {
            c.respond(200, "audio/wav", body).await;
        })
        .await;
        let e = run(Kind::Tts, server.endpoint(), SLOW).await.unwrap_err();
        assert!(
            matches!(
                &e,
                EngineError::Malformed {
                    stage: Stage::TextToSpeech,
                    ..
                }
            ),
            "{e:?}"
        );
    }
}

#[tokio::test]
async fn tts_stall_and_drop_mid_body() {
    let w = wav::encode(16000, &tone(3200));
    let first = w[..44 + 3200].to_vec();
    let head = first.clone();
    let server = Server::start(move |mut c| {
        let head = head.clone();
        async move {
            c.start_chunked("audio/wav").await;
            c.chunk(&head).await;
            sleep(Duration::from_secs(3)).await;
        }
    })
    .await;
    let idle = Duration::from_millis(300);
    let t = tts(server.endpoint(), SLOW, idle);
    let mut s = t.synthesize("Stall.").await.unwrap();
    assert_eq!(s.next().await.unwrap().unwrap().samples.len(), 1600);
    let e = s.next().await.unwrap().unwrap_err();
    assert!(
        matches!(e, EngineError::Timeout { stage: Stage::TextToSpeech, after } if after == idle),
        "{e:?}"
    );
    assert!(s.next().await.is_none());

    let server = Server::start(move |mut c| {
        let head = first.clone();
        async move {
            c.start_chunked("audio/wav").await;
            c.chunk(&head).await;
            c.write("1000\r\nabc").await;
        }
    })
    .await;
    let t = tts(server.endpoint(), SLOW, SLOW);
    let mut s = t.synthesize("Drop.").await.unwrap();
    assert_eq!(s.next().await.unwrap().unwrap().samples.len(), 1600);
    let mut last = None;
    while let Some(item) = timeout(SLOW, s.next()).await.unwrap() {
        if let Err(e) = item {
            last = Some(e);
        }
    }
    let e = last.expect("an error at the drop");
    assert!(
        matches!(&e, EngineError::Connection { stage: Stage::TextToSpeech, reason } if reason.contains("broke mid-answer")),
        "{e:?}"
    );
}

#[tokio::test]
async fn tts_of_nothing_sends_nothing() {
    let server = Server::start(|mut c| async move {
        c.respond(200, "audio/wav", &wav::encode(16000, &[1, 2, 3]))
            .await;
    })
    .await;
    let t = tts(server.endpoint(), SLOW, SLOW);
    let mut s = t.synthesize(" \n ").await.unwrap();
    assert!(s.next().await.is_none());
    assert_eq!(server.connections.load(Ordering::SeqCst), 0);
}

//! OpenAI-compatible HTTP engines: speech-to-text (`POST /audio/transcriptions`), a brain
//! (`POST /chat/completions`, streamed as Server-Sent Events) and text-to-speech
//! (`POST /audio/speech`, streamed WAV or raw PCM).
//!
//! Each engine owns one HTTP client that never follows a redirect, speaks TLS through rustls,
//! and refuses plain `http://` to anything but a loopback host. The API key is read from an
//! environment variable or a file (never from the command line), is zeroized when dropped, is
//! sent as `Authorization: Bearer`, and is scrubbed from every error message.
//!
//! Deadlines (all configurable, defaults in brackets):
//! - connecting [`DEFAULT_CONNECT_TIMEOUT`];
//! - speech-to-text: the whole request, from `finish` to the text [`DEFAULT_STT_TIMEOUT`];
//! - brain: from the request to the first piece of text [`DEFAULT_FIRST_TOKEN_TIMEOUT`], then
//!   between two reads of the stream [`DEFAULT_BRAIN_IDLE_TIMEOUT`];
//! - text-to-speech: from the request to the first samples [`DEFAULT_FIRST_AUDIO_TIMEOUT`],
//!   then between two reads of the body [`DEFAULT_TTS_IDLE_TIMEOUT`].
//!
//! Dropping a [`TextStream`] or an [`AudioStream`] drops the response, which closes its
//! connection: the server sees the client go away and can stop generating.

use std::collections::VecDeque;
use std::fmt;
use std::net::IpAddr;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use futures_util::StreamExt;
use futures_util::stream;
use reqwest::header::{AUTHORIZATION, CONTENT_TYPE, HeaderValue};
use reqwest::{Client, RequestBuilder, Response, Url};
use serde::Deserialize;
use serde_json::Value;
use tokio::time::{Instant, timeout_at};
use zeroize::Zeroizing;

use crate::engine::{
    AudioStream, Brain, Message, Pcm, SpeechToText, TextStream, TextToSpeech, Transcription,
};
use crate::error::{ConfigError, EngineError, Stage};
use crate::wav::{self, WavReader};

/// How long connecting to a server may take.
pub const DEFAULT_CONNECT_TIMEOUT: Duration = Duration::from_secs(3);
/// How long a transcription may take, request to text (a 60 s utterance through Whisper base
/// on one loaded core took about 0.35–0.8× its length).
pub const DEFAULT_STT_TIMEOUT: Duration = Duration::from_secs(30);
/// How long the brain may take to its first piece of text.
pub const DEFAULT_FIRST_TOKEN_TIMEOUT: Duration = Duration::from_secs(10);
/// How long the brain's stream may stay silent once it has started.
pub const DEFAULT_BRAIN_IDLE_TIMEOUT: Duration = Duration::from_secs(5);
/// How long text-to-speech may take to its first samples.
pub const DEFAULT_FIRST_AUDIO_TIMEOUT: Duration = Duration::from_secs(5);
/// How long text-to-speech's body may stay silent once audio has started.
pub const DEFAULT_TTS_IDLE_TIMEOUT: Duration = Duration::from_secs(5);
/// The longest utterance sent for transcription; the rest is cut (with a warning).
pub const DEFAULT_MAX_UTTERANCE: Duration = Duration::from_secs(60);
/// The most text one speech request carries (OpenAI's limit); longer text is cut.
pub const MAX_SPEECH_INPUT_CHARS: usize = 4096;
/// The rate of OpenAI's raw `pcm` speech format.
pub const OPENAI_PCM_RATE: u32 = 24_000;

/// The rate audio is sent for transcription at.
const STT_RATE: u32 = 16_000;
/// The longest server message an error carries, in characters.
const MAX_MESSAGE_CHARS: usize = 200;
/// The most of an error body read to find its message.
const MAX_ERROR_BODY: usize = 16 * 1024;
/// How long an error body may take to arrive, at most.
const ERROR_BODY_WAIT: Duration = Duration::from_secs(2);
/// The largest whole JSON answer read (a transcription, an unstreamed completion).
const MAX_JSON_BODY: usize = 1024 * 1024;
/// The longest line (or event) of a Server-Sent Events stream.
const MAX_SSE_LINE: usize = 1024 * 1024;

/// An API key: read from the environment or a file, zeroized on drop, never printed.
#[derive(Clone)]
pub struct ApiKey(Zeroizing<String>);

impl fmt::Debug for ApiKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("ApiKey(***)")
    }
}

impl ApiKey {
    /// The key in the environment variable `var` (surrounding whitespace removed).
    ///
    /// # Errors
    /// The variable is unset, not UTF-8, empty, or holds characters a header cannot carry.
    pub fn from_env(var: &str) -> Result<Self, ConfigError> {
        let value = std::env::var(var).map_err(|e| {
            ConfigError(match e {
                std::env::VarError::NotPresent => format!("the API key variable {var} is not set"),
                std::env::VarError::NotUnicode(_) => {
                    format!("the API key variable {var} is not UTF-8")
                }
            })
        })?;
        let value = Zeroizing::new(value);
        Self::checked(value.trim(), &format!("the API key variable {var}"))
    }

    /// The key in the file at `path` (surrounding whitespace, e.g. a final newline, removed).
    ///
    /// # Errors
    /// The file cannot be read, is not UTF-8, is empty, or holds characters a header cannot
    /// carry.
    pub fn from_file(path: &Path) -> Result<Self, ConfigError> {
        let what = format!("the API key file {}", path.display());
        let bytes =
            Zeroizing::new(std::fs::read(path).map_err(|e| ConfigError(format!("{what}: {e}")))?);
        let text =
            std::str::from_utf8(&bytes).map_err(|_| ConfigError(format!("{what} is not UTF-8")))?;
        Self::checked(text.trim(), &what)
    }

    fn checked(key: &str, what: &str) -> Result<Self, ConfigError> {
        if key.is_empty() {
            return Err(ConfigError(format!("{what} is empty")));
        }
        if key.len() > 4096 {
            return Err(ConfigError(format!("{what} is over 4096 bytes")));
        }
        // Visible ASCII only: anything else cannot go in a header (and is not a key).
        if !key.bytes().all(|b| b.is_ascii_graphic()) {
            return Err(ConfigError(format!(
                "{what} holds spaces or characters other than visible ASCII"
            )));
        }
        Ok(Self(Zeroizing::new(key.to_owned())))
    }

    fn bearer(&self) -> Option<HeaderValue> {
        let text = Zeroizing::new(format!("Bearer {}", self.0.as_str()));
        let mut value = HeaderValue::from_str(&text).ok()?;
        value.set_sensitive(true);
        Some(value)
    }

    fn scrub(&self, text: &str) -> String {
        text.replace(self.0.as_str(), "***")
    }
}

/// Where an OpenAI-compatible server is, and how to reach it.
#[derive(Clone, Debug)]
pub struct OpenAiEndpoint {
    /// The API's base, e.g. `http://127.0.0.1:8091/v1` or `https://api.openai.com/v1`; the
    /// engines append `/audio/transcriptions`, `/chat/completions` and `/audio/speech`. Only
    /// `https://`, or `http://` to a loopback host (127.0.0.0/8, `::1`, `localhost`).
    pub base_url: String,
    /// The key sent as `Authorization: Bearer`, if the server wants one.
    pub api_key: Option<ApiKey>,
    /// How long connecting may take.
    pub connect_timeout: Duration,
}

impl OpenAiEndpoint {
    /// An endpoint without a key, with the default connect timeout.
    pub fn new(base_url: impl Into<String>) -> Self {
        Self {
            base_url: base_url.into(),
            api_key: None,
            connect_timeout: DEFAULT_CONNECT_TIMEOUT,
        }
    }

    /// The same endpoint with a key.
    #[must_use]
    pub fn with_api_key(mut self, key: ApiKey) -> Self {
        self.api_key = Some(key);
        self
    }
}

/// Checks a base URL: `https://` anywhere, `http://` only to a loopback host; no user name or
/// password, query or fragment in it.
///
/// # Errors
/// The URL is not one of those.
pub fn check_base_url(base_url: &str) -> Result<Url, ConfigError> {
    let url = Url::parse(base_url.trim())
        .map_err(|e| ConfigError(format!("the base URL is not a URL: {e}")))?;
    if !url.username().is_empty() || url.password().is_some() {
        return Err(ConfigError(
            "the base URL must not hold a user name or password (give the key as api_key)".into(),
        ));
    }
    if url.query().is_some() || url.fragment().is_some() {
        return Err(ConfigError(format!(
            "the base URL {} must not have a query or fragment",
            url.origin().ascii_serialization()
        )));
    }
    match url.scheme() {
        "https" => {}
        "http" if is_loopback(&url) => {}
        "http" => {
            return Err(ConfigError(format!(
                "the base URL {} is plain http to a host that is not loopback: use https",
                url.origin().ascii_serialization()
            )));
        }
        other => {
            return Err(ConfigError(format!(
                "the base URL's scheme {other:?} is not https or http"
            )));
        }
    }
    if url.host().is_none() {
        return Err(ConfigError("the base URL has no host".into()));
    }
    Ok(url)
}

fn is_loopback(url: &Url) -> bool {
    let Some(host) = url.host_str() else {
        return false;
    };
    if host.eq_ignore_ascii_case("localhost") {
        return true;
    }
    // An IPv6 host comes in brackets.
    let bare = host
        .strip_prefix('[')
        .and_then(|h| h.strip_suffix(']'))
        .unwrap_or(host);
    bare.parse::<IpAddr>().is_ok_and(|ip| ip.is_loopback())
}

/// The HTTP side every engine shares: its client, where it posts, its key.
#[derive(Debug)]
struct HttpEngine {
    stage: Stage,
    client: Client,
    /// The base URL without its final `/`.
    base: String,
    /// `host:port`, for messages.
    server: String,
    key: Option<ApiKey>,
    connect_timeout: Duration,
}

impl HttpEngine {
    fn new(stage: Stage, endpoint: &OpenAiEndpoint) -> Result<Self, ConfigError> {
        let url = check_base_url(&endpoint.base_url)?;
        if endpoint.connect_timeout.is_zero() {
            return Err(ConfigError(format!("{stage}: the connect timeout is zero")));
        }
        let mut builder = Client::builder()
            .redirect(reqwest::redirect::Policy::none())
            .connect_timeout(endpoint.connect_timeout);
        if is_loopback(&url) {
            // A proxy from the environment must not see (or break) loopback traffic.
            builder = builder.no_proxy();
        }
        let client = builder
            .build()
            .map_err(|e| ConfigError(format!("{stage}: the HTTP client: {e}")))?;
        let server = match (url.host_str(), url.port_or_known_default()) {
            (Some(h), Some(p)) => format!("{h}:{p}"),
            (Some(h), None) => h.to_owned(),
            _ => String::new(),
        };
        Ok(Self {
            stage,
            client,
            base: url.as_str().trim_end_matches('/').to_owned(),
            server,
            key: endpoint.api_key.clone(),
            connect_timeout: endpoint.connect_timeout,
        })
    }

    fn post(&self, path: &str) -> RequestBuilder {
        let req = self.client.post(format!("{}{path}", self.base));
        match self.key.as_ref().and_then(ApiKey::bearer) {
            Some(auth) => req.header(AUTHORIZATION, auth),
            None => req,
        }
    }

    /// Sends, within `deadline`; a non-2xx answer is an [`EngineError::Http`].
    async fn send(
        &self,
        req: RequestBuilder,
        deadline: Instant,
        after: Duration,
    ) -> Result<Response, EngineError> {
        let resp = match timeout_at(deadline, req.send()).await {
            Err(_) => return Err(self.timeout(after)),
            Ok(Err(e)) => return Err(self.request_failed(&e)),
            Ok(Ok(r)) => r,
        };
        if resp.status().is_success() {
            return Ok(resp);
        }
        Err(self.http_error(resp, deadline).await)
    }

    async fn http_error(&self, mut resp: Response, deadline: Instant) -> EngineError {
        let status = resp.status();
        let message = if status.is_redirection() {
            "a redirect, which is not followed".to_owned()
        } else {
            let until = deadline.min(Instant::now() + ERROR_BODY_WAIT);
            // What arrived of the body is enough; a body that never ends does not hide the status.
            let (body, _) = read_body(&mut resp, MAX_ERROR_BODY, until).await;
            let message = error_message(&body);
            if message.trim().is_empty() {
                status
                    .canonical_reason()
                    .unwrap_or("no reason given")
                    .to_owned()
            } else {
                message
            }
        };
        EngineError::Http {
            stage: self.stage,
            status: status.as_u16(),
            message: self.clean(&message),
        }
    }

    /// Reads a whole (small) body within `deadline`.
    async fn read_all(
        &self,
        resp: &mut Response,
        cap: usize,
        deadline: Instant,
        after: Duration,
    ) -> Result<Vec<u8>, EngineError> {
        let (body, end) = read_body(resp, cap, deadline).await;
        match end {
            BodyEnd::Complete => Ok(body),
            BodyEnd::TooLong => {
                Err(self.malformed(&format!("the answer is over {} KiB", cap / 1024)))
            }
            BodyEnd::TimedOut => Err(self.timeout(after)),
            BodyEnd::Failed(e) => Err(self.broken(&e)),
        }
    }

    fn timeout(&self, after: Duration) -> EngineError {
        EngineError::Timeout {
            stage: self.stage,
            after,
        }
    }

    fn malformed(&self, reason: &str) -> EngineError {
        EngineError::Malformed {
            stage: self.stage,
            reason: self.clean(reason),
        }
    }

    /// The request could not be sent or its answer's head did not come.
    fn request_failed(&self, e: &reqwest::Error) -> EngineError {
        if e.is_connect() && e.is_timeout() {
            return self.timeout(self.connect_timeout);
        }
        let what = if e.is_connect() {
            format!("could not connect to {}", self.server)
        } else {
            format!("the request to {} failed", self.server)
        };
        EngineError::Connection {
            stage: self.stage,
            reason: self.clean(&format!("{what}: {}", root_cause(e))),
        }
    }

    /// The answer's body broke off.
    fn broken(&self, e: &reqwest::Error) -> EngineError {
        EngineError::Connection {
            stage: self.stage,
            reason: self.clean(&format!(
                "the connection to {} broke mid-answer: {}",
                self.server,
                root_cause(e)
            )),
        }
    }

    /// A message fit for an error: no key, no control characters, bounded.
    fn clean(&self, text: &str) -> String {
        let text = match &self.key {
            Some(k) => k.scrub(text),
            None => text.to_owned(),
        };
        bounded(&text)
    }
}

/// The innermost cause of an error (the outer ones of reqwest name the URL and repeat).
fn root_cause(e: &(dyn std::error::Error + 'static)) -> String {
    let mut cause = e;
    while let Some(next) = cause.source() {
        cause = next;
    }
    cause.to_string()
}

/// Control characters become spaces, runs of whitespace one space, and the text is cut to
/// [`MAX_MESSAGE_CHARS`].
fn bounded(text: &str) -> String {
    let mut out = String::new();
    let mut count = 0usize;
    let mut space = false;
    for c in text.chars() {
        if c.is_whitespace() || c.is_control() {
            space = !out.is_empty();
            continue;
        }
        if count >= MAX_MESSAGE_CHARS {
            out.push('…');
            return out;
        }
        if space {
            out.push(' ');
            count += 1;
            space = false;
        }
        out.push(c);
        count += 1;
    }
    out
}

/// The server's reason in an error body: OpenAI's `error.message`, a bare `error` string,
/// FastAPI's `detail`, a `message`, or else the start of the body.
fn error_message(body: &[u8]) -> String {
    if let Ok(v) = serde_json::from_slice::<Value>(body) {
        let found = v
            .get("error")
            .and_then(|e| e.get("message").or(Some(e)))
            .or_else(|| v.get("detail"))
            .or_else(|| v.get("message"));
        match found {
            Some(Value::String(s)) => return s.clone(),
            Some(other @ (Value::Object(_) | Value::Array(_))) => return other.to_string(),
            _ => {}
        }
    }
    let start = body
        .get(..body.len().min(4 * MAX_MESSAGE_CHARS))
        .unwrap_or(body);
    String::from_utf8_lossy(start).into_owned()
}

enum BodyEnd {
    Complete,
    TooLong,
    TimedOut,
    Failed(reqwest::Error),
}

/// Reads a body up to `cap` bytes, until `deadline`; says how it ended.
async fn read_body(resp: &mut Response, cap: usize, deadline: Instant) -> (Vec<u8>, BodyEnd) {
    let mut body = Vec::new();
    loop {
        match timeout_at(deadline, resp.chunk()).await {
            Err(_) => return (body, BodyEnd::TimedOut),
            Ok(Err(e)) => return (body, BodyEnd::Failed(e)),
            Ok(Ok(None)) => return (body, BodyEnd::Complete),
            Ok(Ok(Some(bytes))) => {
                let room = cap.saturating_sub(body.len());
                body.extend_from_slice(bytes.get(..room.min(bytes.len())).unwrap_or(&[]));
                if bytes.len() > room {
                    return (body, BodyEnd::TooLong);
                }
            }
        }
    }
}

/// A JSON parse failure described without the text it failed on (which may be the user's
/// words).
fn json_failure(e: &serde_json::Error) -> String {
    let kind = match e.classify() {
        serde_json::error::Category::Io => "unreadable",
        serde_json::error::Category::Syntax => "not JSON",
        serde_json::error::Category::Data => "JSON of the wrong shape",
        serde_json::error::Category::Eof => "cut-off JSON",
    };
    format!("{kind} (line {} column {})", e.line(), e.column())
}

fn check_timeout(stage: Stage, name: &str, d: Duration) -> Result<(), ConfigError> {
    if d.is_zero() {
        return Err(ConfigError(format!("{stage}: {name} is zero")));
    }
    Ok(())
}

fn check_name(stage: Stage, what: &str, value: &str) -> Result<(), ConfigError> {
    if value.trim().is_empty() {
        return Err(ConfigError(format!("{stage}: the {what} is empty")));
    }
    if value.len() > 256 || value.chars().any(char::is_control) {
        return Err(ConfigError(format!(
            "{stage}: the {what} is over 256 bytes or holds control characters"
        )));
    }
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// Speech-to-text

/// How [`OpenAiStt`] transcribes.
#[derive(Clone, Debug)]
pub struct SttConfig {
    /// The server.
    pub endpoint: OpenAiEndpoint,
    /// The `model` field, e.g. `whisper-1`.
    pub model: String,
    /// The `language` field (ISO-639-1, e.g. `en`), if set.
    pub language: Option<String>,
    /// The `prompt` field (vocabulary or the previous sentence), if set.
    pub prompt: Option<String>,
    /// The longest utterance sent; the rest is cut with a warning.
    pub max_utterance: Duration,
    /// How long one transcription may take, request to text.
    pub timeout: Duration,
}

impl SttConfig {
    /// The defaults for `model` at `endpoint`.
    pub fn new(endpoint: OpenAiEndpoint, model: impl Into<String>) -> Self {
        Self {
            endpoint,
            model: model.into(),
            language: None,
            prompt: None,
            max_utterance: DEFAULT_MAX_UTTERANCE,
            timeout: DEFAULT_STT_TIMEOUT,
        }
    }
}

/// Speech-to-text through `POST {base}/audio/transcriptions`: the utterance is sent whole, as
/// a 16 kHz mono WAV, when it ends.
#[derive(Clone, Debug)]
pub struct OpenAiStt {
    inner: Arc<SttInner>,
}

#[derive(Debug)]
struct SttInner {
    http: HttpEngine,
    model: String,
    language: Option<String>,
    prompt: Option<String>,
    max_samples: usize,
    timeout: Duration,
}

impl OpenAiStt {
    /// An engine for `config`.
    ///
    /// # Errors
    /// The base URL, the model, the language or a deadline cannot be used.
    pub fn new(config: SttConfig) -> Result<Self, ConfigError> {
        let stage = Stage::SpeechToText;
        check_name(stage, "model", &config.model)?;
        if let Some(lang) = &config.language
            && (lang.is_empty()
                || lang.len() > 16
                || !lang.chars().all(|c| c.is_ascii_alphabetic() || c == '-'))
        {
            return Err(ConfigError(format!(
                "{stage}: the language {lang:?} is not a language code"
            )));
        }
        check_timeout(stage, "the timeout", config.timeout)?;
        check_timeout(stage, "the longest utterance", config.max_utterance)?;
        if config.max_utterance > Duration::from_secs(600) {
            return Err(ConfigError(format!(
                "{stage}: the longest utterance is over 600 s"
            )));
        }
        let max_samples = (config.max_utterance.as_secs_f64() * f64::from(STT_RATE)) as usize;
        Ok(Self {
            inner: Arc::new(SttInner {
                http: HttpEngine::new(stage, &config.endpoint)?,
                model: config.model,
                language: config.language,
                prompt: config.prompt.filter(|p| !p.trim().is_empty()),
                max_samples,
                timeout: config.timeout,
            }),
        })
    }
}

impl SpeechToText for OpenAiStt {
    fn start(&self) -> Box<dyn Transcription> {
        Box::new(OpenAiTranscription {
            inner: Arc::clone(&self.inner),
            samples: Vec::new(),
            cut: false,
        })
    }
}

#[derive(Debug)]
struct OpenAiTranscription {
    inner: Arc<SttInner>,
    samples: Vec<i16>,
    cut: bool,
}

#[derive(Deserialize)]
struct TranscriptionAnswer {
    text: String,
}

#[async_trait]
impl Transcription for OpenAiTranscription {
    fn push(&mut self, pcm16k: &[i16]) {
        let room = self.inner.max_samples.saturating_sub(self.samples.len());
        if pcm16k.len() > room && !self.cut {
            self.cut = true;
            tracing::warn!(
                max_s = self.inner.max_samples / STT_RATE as usize,
                "speech-to-text: the utterance is longer than the longest sent; the rest is not transcribed"
            );
        }
        self.samples
            .extend_from_slice(pcm16k.get(..room.min(pcm16k.len())).unwrap_or(&[]));
    }

    async fn finish(self: Box<Self>) -> Result<String, EngineError> {
        if self.samples.is_empty() {
            return Ok(String::new());
        }
        let inner = &self.inner;
        let http = &inner.http;
        let deadline = Instant::now() + inner.timeout;
        let audio = wav::encode(STT_RATE, &self.samples);
        let mut form = Multipart::default();
        form.file("file", "utterance.wav", "audio/wav", audio);
        form.text("model", &inner.model);
        if let Some(lang) = &inner.language {
            form.text("language", lang);
        }
        if let Some(prompt) = &inner.prompt {
            form.text("prompt", prompt);
        }
        form.text("response_format", "json");
        let (content_type, body) = form.finish();
        let req = http
            .post("/audio/transcriptions")
            .header(CONTENT_TYPE, content_type)
            .body(body);
        let mut resp = http.send(req, deadline, inner.timeout).await?;
        let body = http
            .read_all(&mut resp, MAX_JSON_BODY, deadline, inner.timeout)
            .await?;
        let answer: TranscriptionAnswer = serde_json::from_slice(&body).map_err(|e| {
            http.malformed(&format!(
                "the transcription is not JSON with a \"text\" string: {}",
                json_failure(&e)
            ))
        })?;
        Ok(answer.text.trim().to_owned())
    }
}

/// A `multipart/form-data` body, built by hand.
#[derive(Default)]
struct Multipart {
    parts: Vec<(Vec<u8>, Vec<u8>)>,
}

impl Multipart {
    fn text(&mut self, name: &str, value: &str) {
        let head = format!("Content-Disposition: form-data; name=\"{name}\"\r\n\r\n");
        self.parts
            .push((head.into_bytes(), value.as_bytes().to_vec()));
    }

    fn file(&mut self, name: &str, filename: &str, content_type: &str, data: Vec<u8>) {
        let head = format!(
            "Content-Disposition: form-data; name=\"{name}\"; filename=\"{filename}\"\r\n\
             Content-Type: {content_type}\r\n\r\n"
        );
        self.parts.push((head.into_bytes(), data));
    }

    /// The `Content-Type` header and the body. The boundary is one that occurs in no part.
    fn finish(self) -> (String, Vec<u8>) {
        let mut n = 0u64;
        let boundary = loop {
            let b = format!("oracle-calls-form-boundary-{n:016x}");
            if !self
                .parts
                .iter()
                .any(|(_, data)| contains(data, b.as_bytes()))
            {
                break b;
            }
            n += 1;
        };
        let mut body = Vec::with_capacity(
            self.parts
                .iter()
                .map(|(h, d)| h.len() + d.len() + boundary.len() + 8)
                .sum::<usize>()
                + boundary.len()
                + 8,
        );
        for (head, data) in &self.parts {
            body.extend_from_slice(b"--");
            body.extend_from_slice(boundary.as_bytes());
            body.extend_from_slice(b"\r\n");
            body.extend_from_slice(head);
            body.extend_from_slice(data);
            body.extend_from_slice(b"\r\n");
        }
        body.extend_from_slice(b"--");
        body.extend_from_slice(boundary.as_bytes());
        body.extend_from_slice(b"--\r\n");
        (format!("multipart/form-data; boundary={boundary}"), body)
    }
}

fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    !needle.is_empty() && haystack.windows(needle.len()).any(|w| w == needle)
}

// ---------------------------------------------------------------------------------------------
// Brain

/// How [`OpenAiBrain`] answers.
#[derive(Clone, Debug)]
pub struct BrainConfig {
    /// The server.
    pub endpoint: OpenAiEndpoint,
    /// The `model` field.
    pub model: String,
    /// Instructions put before the conversation, if set.
    pub system_prompt: Option<String>,
    /// The `max_tokens` field, if set.
    pub max_tokens: Option<u32>,
    /// The `temperature` field (0–2), if set.
    pub temperature: Option<f32>,
    /// How long the first piece of text may take, from the request.
    pub first_token_timeout: Duration,
    /// How long the stream may stay silent once text has come.
    pub idle_timeout: Duration,
}

impl BrainConfig {
    /// The defaults for `model` at `endpoint`.
    pub fn new(endpoint: OpenAiEndpoint, model: impl Into<String>) -> Self {
        Self {
            endpoint,
            model: model.into(),
            system_prompt: None,
            max_tokens: None,
            temperature: None,
            first_token_timeout: DEFAULT_FIRST_TOKEN_TIMEOUT,
            idle_timeout: DEFAULT_BRAIN_IDLE_TIMEOUT,
        }
    }
}

/// A brain behind `POST {base}/chat/completions` with `stream: true`.
///
/// An `error` object inside the stream ends it with [`EngineError::Http`]: its `code` as the
/// status when that is an HTTP error status, else 502 (the server answered 200, then failed).
#[derive(Clone, Debug)]
pub struct OpenAiBrain {
    inner: Arc<BrainInner>,
}

#[derive(Debug)]
struct BrainInner {
    http: HttpEngine,
    model: String,
    system_prompt: Option<String>,
    max_tokens: Option<u32>,
    temperature: Option<f32>,
    first_token_timeout: Duration,
    idle_timeout: Duration,
}

impl OpenAiBrain {
    /// An engine for `config`.
    ///
    /// # Errors
    /// The base URL, the model, the temperature or a deadline cannot be used.
    pub fn new(config: BrainConfig) -> Result<Self, ConfigError> {
        let stage = Stage::Brain;
        check_name(stage, "model", &config.model)?;
        if let Some(t) = config.temperature
            && !(0.0..=2.0).contains(&t)
        {
            return Err(ConfigError(format!(
                "{stage}: the temperature {t} is not within 0–2"
            )));
        }
        if config.max_tokens == Some(0) {
            return Err(ConfigError(format!("{stage}: max_tokens is zero")));
        }
        check_timeout(stage, "the first-token timeout", config.first_token_timeout)?;
        check_timeout(stage, "the idle timeout", config.idle_timeout)?;
        Ok(Self {
            inner: Arc::new(BrainInner {
                http: HttpEngine::new(stage, &config.endpoint)?,
                model: config.model,
                system_prompt: config.system_prompt.filter(|p| !p.trim().is_empty()),
                max_tokens: config.max_tokens,
                temperature: config.temperature,
                first_token_timeout: config.first_token_timeout,
                idle_timeout: config.idle_timeout,
            }),
        })
    }
}

#[async_trait]
impl Brain for OpenAiBrain {
    async fn answer(&self, conversation: Vec<Message>) -> Result<TextStream, EngineError> {
        let inner = Arc::clone(&self.inner);
        let started = Instant::now();
        let first_deadline = started + inner.first_token_timeout;
        let mut messages = Vec::with_capacity(conversation.len() + 1);
        if let Some(system) = &inner.system_prompt {
            messages.push(Message::system(system.clone()));
        }
        messages.extend(conversation);
        let mut body = serde_json::json!({
            "model": inner.model,
            "messages": messages,
            "stream": true,
        });
        if let Some(obj) = body.as_object_mut() {
            if let Some(n) = inner.max_tokens {
                obj.insert("max_tokens".into(), n.into());
            }
            if let Some(t) = inner.temperature {
                obj.insert("temperature".into(), f64::from(t).into());
            }
        }
        let http = &inner.http;
        let req = http
            .post("/chat/completions")
            .header(reqwest::header::ACCEPT, "text/event-stream")
            .json(&body);
        let mut resp = http
            .send(req, first_deadline, inner.first_token_timeout)
            .await?;
        let is_json = resp
            .headers()
            .get(CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .is_some_and(|v| v.trim_start().starts_with("application/json"));
        if is_json {
            // A server that does not stream answers with the whole completion.
            let body = http
                .read_all(
                    &mut resp,
                    MAX_JSON_BODY,
                    first_deadline,
                    inner.first_token_timeout,
                )
                .await?;
            let text = whole_completion(http, &body)?;
            return Ok(stream::iter((!text.is_empty()).then_some(Ok(text))).boxed());
        }
        let sse = SseAnswer {
            inner,
            resp,
            parser: SseParser::default(),
            queue: VecDeque::new(),
            first_deadline,
            got_text: false,
            finished: false,
            ended: false,
        };
        Ok(stream::unfold(sse, |mut s| async move {
            let item = s.next_item().await?;
            Some((item, s))
        })
        .boxed())
    }
}

fn whole_completion(http: &HttpEngine, body: &[u8]) -> Result<String, EngineError> {
    let v: Value = serde_json::from_slice(body)
        .map_err(|e| http.malformed(&format!("the completion is {}", json_failure(&e))))?;
    if let Some(e) = stream_error(http, &v) {
        return Err(e);
    }
    v.pointer("/choices/0/message/content")
        .and_then(Value::as_str)
        .map(str::to_owned)
        .ok_or_else(|| http.malformed("the completion has no choices[0].message.content"))
}

/// An `error` member in an answer that came with status 200.
fn stream_error(http: &HttpEngine, v: &Value) -> Option<EngineError> {
    let e = v.get("error").filter(|e| !e.is_null())?;
    let status = e
        .get("code")
        .and_then(|c| {
            c.as_u64()
                .or_else(|| c.as_str().and_then(|s| s.parse().ok()))
        })
        .filter(|c| (400..=599).contains(c))
        .and_then(|c| u16::try_from(c).ok())
        .unwrap_or(502);
    let message = match e.get("message").unwrap_or(e) {
        Value::String(s) => s.clone(),
        other => other.to_string(),
    };
    Some(EngineError::Http {
        stage: http.stage,
        status,
        message: http.clean(&format!("error in the stream: {message}")),
    })
}

/// A streamed answer being read.
struct SseAnswer {
    inner: Arc<BrainInner>,
    resp: Response,
    parser: SseParser,
    /// Text and errors decoded but not yet yielded; an error is always last.
    queue: VecDeque<Result<String, EngineError>>,
    first_deadline: Instant,
    got_text: bool,
    /// A choice said why it finished (`finish_reason`).
    finished: bool,
    /// Nothing more is read: `[DONE]`, the end of the body, or an error.
    ended: bool,
}

#[derive(Deserialize)]
struct ChatChunk {
    #[serde(default)]
    choices: Vec<ChatChoice>,
}

#[derive(Deserialize)]
struct ChatChoice {
    #[serde(default)]
    index: u32,
    #[serde(default)]
    delta: Option<ChatDelta>,
    #[serde(default)]
    finish_reason: Option<String>,
}

#[derive(Deserialize)]
struct ChatDelta {
    #[serde(default)]
    content: Option<String>,
}

impl SseAnswer {
    async fn next_item(&mut self) -> Option<Result<String, EngineError>> {
        loop {
            if let Some(item) = self.queue.pop_front() {
                return Some(item);
            }
            if self.ended {
                return None;
            }
            let (deadline, after) = if self.got_text {
                (
                    Instant::now() + self.inner.idle_timeout,
                    self.inner.idle_timeout,
                )
            } else {
                (self.first_deadline, self.inner.first_token_timeout)
            };
            match timeout_at(deadline, self.resp.chunk()).await {
                Err(_) => self.fail(self.inner.http.timeout(after)),
                Ok(Err(e)) => self.fail(self.inner.http.broken(&e)),
                Ok(Ok(Some(bytes))) => match self.parser.push(&bytes) {
                    Ok(events) => self.handle(events),
                    Err(reason) => self.fail(self.inner.http.malformed(&reason)),
                },
                Ok(Ok(None)) => {
                    self.ended = true;
                    match self.parser.finish() {
                        Ok(events) => self.handle(events),
                        Err(reason) => self.fail(self.inner.http.malformed(&reason)),
                    }
                    if !self.ended_well() {
                        self.fail(EngineError::Connection {
                            stage: self.inner.http.stage,
                            reason: "the stream ended before the answer did".into(),
                        });
                    }
                }
            }
        }
    }

    /// Whether the stream said it was complete (`[DONE]` or a `finish_reason`), or already
    /// failed.
    fn ended_well(&self) -> bool {
        self.finished || self.queue.back().is_some_and(Result::is_err)
    }

    fn fail(&mut self, e: EngineError) {
        if !self.queue.back().is_some_and(Result::is_err) {
            self.queue.push_back(Err(e));
        }
        self.ended = true;
    }

    fn handle(&mut self, events: Vec<SseEvent>) {
        for event in events {
            if self.queue.back().is_some_and(Result::is_err) {
                return;
            }
            let data = event.data.trim();
            if data == "[DONE]" {
                self.finished = true;
                self.ended = true;
                return;
            }
            if data.is_empty() {
                continue;
            }
            let http = &self.inner.http;
            if event.event == "error" {
                // `event: error` with a body that is not OpenAI's error object.
                let e = serde_json::from_str::<Value>(data)
                    .ok()
                    .and_then(|v| stream_error(http, &v))
                    .unwrap_or_else(|| EngineError::Http {
                        stage: http.stage,
                        status: 502,
                        message: http.clean(&format!("error in the stream: {data}")),
                    });
                self.fail(e);
                return;
            }
            let value: Value = match serde_json::from_str(data) {
                Ok(v) => v,
                Err(e) => {
                    let reason = format!("an event of the stream is {}", json_failure(&e));
                    self.fail(http.malformed(&reason));
                    return;
                }
            };
            if let Some(e) = stream_error(http, &value) {
                self.fail(e);
                return;
            }
            let chunk: ChatChunk = match serde_json::from_value(value) {
                Ok(c) => c,
                Err(e) => {
                    let reason = format!("an event of the stream is {}", json_failure(&e));
                    self.fail(http.malformed(&reason));
                    return;
                }
            };
            for choice in chunk.choices.into_iter().filter(|c| c.index == 0) {
                if let Some(text) = choice.delta.and_then(|d| d.content)
                    && !text.is_empty()
                {
                    self.got_text = true;
                    self.queue.push_back(Ok(text));
                }
                if choice.finish_reason.is_some() {
                    self.finished = true;
                }
            }
        }
    }
}

/// One Server-Sent Event.
#[derive(Debug, Default, PartialEq, Eq)]
struct SseEvent {
    /// The `event:` field (empty for the default, `message`).
    event: String,
    /// The `data:` lines, joined by `\n`.
    data: String,
}

/// Splits a Server-Sent Events byte stream into events, whatever the chunk boundaries: lines
/// end in `\n` or `\r\n`, `:` starts a comment, several `data:` lines make one event, an empty
/// line ends it.
#[derive(Debug, Default)]
struct SseParser {
    buf: Vec<u8>,
    /// How much of `buf` is known to hold no `\n`.
    scanned: usize,
    current: EventBuilder,
}

#[derive(Debug, Default)]
struct EventBuilder {
    event: String,
    data: String,
    has_data: bool,
}

impl EventBuilder {
    fn line(&mut self, line: &[u8], out: &mut Vec<SseEvent>) -> Result<(), String> {
        let line = line.strip_suffix(b"\r").unwrap_or(line);
        let line = std::str::from_utf8(line)
            .map_err(|_| "a line of the stream is not UTF-8".to_owned())?;
        if line.is_empty() {
            if self.has_data {
                out.push(SseEvent {
                    event: std::mem::take(&mut self.event),
                    data: std::mem::take(&mut self.data),
                });
            }
            self.event.clear();
            self.has_data = false;
            return Ok(());
        }
        if line.starts_with(':') {
            return Ok(());
        }
        let (field, value) = line.split_once(':').unwrap_or((line, ""));
        let value = value.strip_prefix(' ').unwrap_or(value);
        match field {
            "data" => {
                if self.has_data {
                    self.data.push('\n');
                }
                self.data.push_str(value);
                self.has_data = true;
                if self.data.len() > MAX_SSE_LINE {
                    return Err("an event of the stream is over 1 MiB".into());
                }
            }
            "event" => value.clone_into(&mut self.event),
            _ => {}
        }
        Ok(())
    }
}

impl SseParser {
    fn push(&mut self, bytes: &[u8]) -> Result<Vec<SseEvent>, String> {
        self.buf.extend_from_slice(bytes);
        let mut out = Vec::new();
        let mut start = 0usize;
        let mut from = self.scanned;
        while let Some(at) = self
            .buf
            .get(from..)
            .and_then(|rest| rest.iter().position(|&b| b == b'\n'))
        {
            let end = from + at;
            let line = self.buf.get(start..end).unwrap_or(&[]);
            self.current.line(line, &mut out)?;
            start = end + 1;
            from = start;
        }
        self.buf.drain(..start.min(self.buf.len()));
        self.scanned = self.buf.len();
        if self.buf.len() > MAX_SSE_LINE {
            return Err("a line of the stream is over 1 MiB".into());
        }
        Ok(out)
    }

    /// The end of the stream: a last line without its `\n`, and an event without its empty
    /// line, still count.
    fn finish(&mut self) -> Result<Vec<SseEvent>, String> {
        let mut out = Vec::new();
        let rest = std::mem::take(&mut self.buf);
        self.scanned = 0;
        if !rest.is_empty() {
            self.current.line(&rest, &mut out)?;
        }
        self.current.line(b"", &mut out)?;
        Ok(out)
    }
}

// ---------------------------------------------------------------------------------------------
// Text-to-speech

/// The audio format asked of `/audio/speech`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SpeechFormat {
    /// `wav`: 16-bit PCM WAV; the rate comes from its header.
    Wav,
    /// `pcm`: raw signed 16-bit little-endian mono at `rate` (OpenAI's is
    /// [`OPENAI_PCM_RATE`]).
    Pcm {
        /// Samples per second.
        rate: u32,
    },
}

/// How [`OpenAiTts`] speaks.
#[derive(Clone, Debug)]
pub struct TtsConfig {
    /// The server.
    pub endpoint: OpenAiEndpoint,
    /// The `model` field, e.g. `tts-1`.
    pub model: String,
    /// The `voice` field, e.g. `alloy`.
    pub voice: String,
    /// The `response_format` asked for.
    pub format: SpeechFormat,
    /// The `speed` field (0.25–4), if set.
    pub speed: Option<f32>,
    /// How long the first samples may take, from the request.
    pub first_audio_timeout: Duration,
    /// How long the body may stay silent once audio has come.
    pub idle_timeout: Duration,
}

impl TtsConfig {
    /// The defaults (WAV) for `model` and `voice` at `endpoint`.
    pub fn new(
        endpoint: OpenAiEndpoint,
        model: impl Into<String>,
        voice: impl Into<String>,
    ) -> Self {
        Self {
            endpoint,
            model: model.into(),
            voice: voice.into(),
            format: SpeechFormat::Wav,
            speed: None,
            first_audio_timeout: DEFAULT_FIRST_AUDIO_TIMEOUT,
            idle_timeout: DEFAULT_TTS_IDLE_TIMEOUT,
        }
    }
}

/// Text-to-speech through `POST {base}/audio/speech`; audio is yielded as the body arrives.
#[derive(Clone, Debug)]
pub struct OpenAiTts {
    inner: Arc<TtsInner>,
}

#[derive(Debug)]
struct TtsInner {
    http: HttpEngine,
    model: String,
    voice: String,
    format: SpeechFormat,
    speed: Option<f32>,
    first_audio_timeout: Duration,
    idle_timeout: Duration,
}

impl OpenAiTts {
    /// An engine for `config`.
    ///
    /// # Errors
    /// The base URL, the model, the voice, the speed, the PCM rate or a deadline cannot be
    /// used.
    pub fn new(config: TtsConfig) -> Result<Self, ConfigError> {
        let stage = Stage::TextToSpeech;
        check_name(stage, "model", &config.model)?;
        check_name(stage, "voice", &config.voice)?;
        if let Some(s) = config.speed
            && !(0.25..=4.0).contains(&s)
        {
            return Err(ConfigError(format!(
                "{stage}: the speed {s} is not within 0.25–4"
            )));
        }
        if let SpeechFormat::Pcm { rate } = config.format
            && !(4000..=384_000).contains(&rate)
        {
            return Err(ConfigError(format!(
                "{stage}: the PCM rate {rate} Hz is not within 4–384 kHz"
            )));
        }
        check_timeout(stage, "the first-audio timeout", config.first_audio_timeout)?;
        check_timeout(stage, "the idle timeout", config.idle_timeout)?;
        Ok(Self {
            inner: Arc::new(TtsInner {
                http: HttpEngine::new(stage, &config.endpoint)?,
                model: config.model,
                voice: config.voice,
                format: config.format,
                speed: config.speed,
                first_audio_timeout: config.first_audio_timeout,
                idle_timeout: config.idle_timeout,
            }),
        })
    }
}

#[async_trait]
impl TextToSpeech for OpenAiTts {
    async fn synthesize(&self, text: &str) -> Result<AudioStream, EngineError> {
        let text = text.trim();
        if text.is_empty() {
            return Ok(stream::empty().boxed());
        }
        let input = match text.char_indices().nth(MAX_SPEECH_INPUT_CHARS) {
            Some((at, _)) => {
                tracing::warn!(
                    max_chars = MAX_SPEECH_INPUT_CHARS,
                    "text-to-speech: the text is longer than one request takes; the rest is not spoken"
                );
                text.get(..at).unwrap_or(text)
            }
            None => text,
        };
        let inner = Arc::clone(&self.inner);
        let first_deadline = Instant::now() + inner.first_audio_timeout;
        let mut body = serde_json::json!({
            "model": inner.model,
            "input": input,
            "voice": inner.voice,
            "response_format": match inner.format {
                SpeechFormat::Wav => "wav",
                SpeechFormat::Pcm { .. } => "pcm",
            },
        });
        if let (Some(obj), Some(s)) = (body.as_object_mut(), inner.speed) {
            obj.insert("speed".into(), f64::from(s).into());
        }
        let req = inner.http.post("/audio/speech").json(&body);
        let resp = inner
            .http
            .send(req, first_deadline, inner.first_audio_timeout)
            .await?;
        let decoder = match inner.format {
            SpeechFormat::Wav => AudioDecoder::Wav(WavReader::new()),
            SpeechFormat::Pcm { rate } => AudioDecoder::Pcm { rate, odd: None },
        };
        let state = SpeechBody {
            inner,
            resp,
            decoder,
            first_deadline,
            got_audio: false,
            ended: false,
        };
        Ok(stream::unfold(state, |mut s| async move {
            let item = s.next_item().await?;
            Some((item, s))
        })
        .boxed())
    }
}

#[derive(Debug)]
enum AudioDecoder {
    Wav(WavReader),
    Pcm {
        rate: u32,
        /// The first byte of a sample whose second byte has not come yet.
        odd: Option<u8>,
    },
}

impl AudioDecoder {
    fn push(&mut self, bytes: &[u8]) -> Result<(u32, Vec<i16>), String> {
        match self {
            Self::Wav(reader) => {
                let samples = reader
                    .push(bytes)
                    .map_err(|e| format!("the audio is {e}"))?;
                Ok((reader.rate().unwrap_or(0), samples))
            }
            Self::Pcm { rate, odd } => {
                let mut samples = Vec::with_capacity(bytes.len() / 2 + 1);
                let mut rest = bytes;
                if let Some(lo) = *odd
                    && let Some((&hi, tail)) = rest.split_first()
                {
                    samples.push(i16::from_le_bytes([lo, hi]));
                    *odd = None;
                    rest = tail;
                }
                let mut pairs = rest.chunks_exact(2);
                for pair in &mut pairs {
                    if let [lo, hi] = *pair {
                        samples.push(i16::from_le_bytes([lo, hi]));
                    }
                }
                if let [last] = *pairs.remainder() {
                    *odd = Some(last);
                }
                Ok((*rate, samples))
            }
        }
    }

    /// What is wrong with a body that ends here, if anything.
    fn end(&self) -> Option<&'static str> {
        match self {
            Self::Wav(reader) if !reader.started() => {
                Some("the body ended before the WAV header did")
            }
            _ => None,
        }
    }
}

/// A speech body being read.
struct SpeechBody {
    inner: Arc<TtsInner>,
    resp: Response,
    decoder: AudioDecoder,
    first_deadline: Instant,
    got_audio: bool,
    ended: bool,
}

impl SpeechBody {
    async fn next_item(&mut self) -> Option<Result<Pcm, EngineError>> {
        let http = &self.inner.http;
        loop {
            if self.ended {
                return None;
            }
            let (deadline, after) = if self.got_audio {
                (
                    Instant::now() + self.inner.idle_timeout,
                    self.inner.idle_timeout,
                )
            } else {
                (self.first_deadline, self.inner.first_audio_timeout)
            };
            let bytes = match timeout_at(deadline, self.resp.chunk()).await {
                Err(_) => {
                    self.ended = true;
                    return Some(Err(http.timeout(after)));
                }
                Ok(Err(e)) => {
                    self.ended = true;
                    return Some(Err(http.broken(&e)));
                }
                Ok(Ok(None)) => {
                    self.ended = true;
                    return self.decoder.end().map(|r| Err(http.malformed(r)));
                }
                Ok(Ok(Some(b))) => b,
            };
            match self.decoder.push(&bytes) {
                Err(reason) => {
                    self.ended = true;
                    return Some(Err(http.malformed(&reason)));
                }
                Ok((_, samples)) if samples.is_empty() => {}
                Ok((rate, samples)) => {
                    self.got_audio = true;
                    return Some(Ok(Pcm { rate, samples }));
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::indexing_slicing)]
    use super::*;

    fn events(chunks: &[&[u8]]) -> Vec<SseEvent> {
        let mut p = SseParser::default();
        let mut out = Vec::new();
        for c in chunks {
            out.extend(p.push(c).unwrap());
        }
        out.extend(p.finish().unwrap());
        out
    }

    fn ev(data: &str) -> SseEvent {
        SseEvent {
            event: String::new(),
            data: data.into(),
        }
    }

    #[test]
    fn sse_events_survive_any_split() {
        let text = b": keep-alive\r\n\r\ndata: {\"a\":1}\r\n\r\nevent: error\ndata: x\ndata:y\n\ndata: [DONE]\n\n";
        let want = vec![
            ev("{\"a\":1}"),
            SseEvent {
                event: "error".into(),
                data: "x\ny".into(),
            },
            ev("[DONE]"),
        ];
        assert_eq!(events(&[text]), want);
        for cut in 0..text.len() {
            let (a, b) = text.split_at(cut);
            assert_eq!(events(&[a, b]), want, "split at {cut}");
        }
        let bytes: Vec<&[u8]> = text.chunks(1).collect();
        assert_eq!(events(&bytes), want);
    }

    #[test]
    fn sse_last_event_without_blank_line_counts() {
        assert_eq!(events(&[b"data: [DONE]"]), vec![ev("[DONE]")]);
        assert_eq!(events(&[b"data: a\n"]), vec![ev("a")]);
        assert!(events(&[b": only a comment\n\n"]).is_empty());
    }

    #[test]
    fn sse_refuses_huge_lines_and_bad_utf8() {
        let mut p = SseParser::default();
        assert!(p.push(&vec![b'a'; MAX_SSE_LINE + 1]).is_err());
        let mut p = SseParser::default();
        assert!(p.push(b"data: \xff\xfe\n").is_err());
        // A character split across chunks is whole by the end of its line.
        let mut p = SseParser::default();
        let euro = "data: €\n\n".as_bytes();
        assert!(p.push(&euro[..7]).unwrap().is_empty());
        assert_eq!(p.push(&euro[7..]).unwrap(), vec![ev("€")]);
    }

    #[test]
    fn base_urls() {
        for ok in [
            "https://api.openai.com/v1",
            "http://127.0.0.1:8091/v1",
            "http://127.5.6.7/v1/",
            "http://localhost:1/v1",
            "http://LOCALHOST/v1",
            "http://[::1]:9/v1",
        ] {
            assert!(check_base_url(ok).is_ok(), "{ok}");
        }
        for bad in [
            "http://example.com/v1",
            "http://10.0.0.1:8091/v1",
            "http://[::2]/v1",
            "http://localhost.example.com/v1",
            "ftp://127.0.0.1/v1",
            "https://user:pw@api.example.com/v1",
            "https://api.example.com/v1?key=1",
            "not a url",
            "file:///etc/passwd",
        ] {
            assert!(check_base_url(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn messages_are_bounded_and_clean() {
        assert_eq!(bounded("  a\r\n\tb\u{0}c  "), "a b c");
        let long = "é".repeat(500);
        let cut = bounded(&long);
        assert_eq!(cut.chars().count(), MAX_MESSAGE_CHARS + 1);
        assert!(cut.ends_with('…'));
        assert_eq!(
            error_message(br#"{"error":{"message":"no such model","type":"x"}}"#),
            "no such model"
        );
        assert_eq!(error_message(br#"{"error":"plain"}"#), "plain");
        assert_eq!(error_message(br#"{"detail":"fastapi"}"#), "fastapi");
        assert_eq!(
            error_message(b"<html>Bad Gateway</html>"),
            "<html>Bad Gateway</html>"
        );
    }

    #[test]
    fn multipart_boundary_is_not_in_the_data() {
        let mut m = Multipart::default();
        m.text("prompt", "--oracle-calls-form-boundary-0000000000000000");
        let (ct, body) = m.finish();
        assert!(ct.ends_with("oracle-calls-form-boundary-0000000000000001"));
        let text = String::from_utf8(body).unwrap();
        assert!(text.starts_with("--oracle-calls-form-boundary-0000000000000001\r\n"));
        assert!(text.ends_with("--oracle-calls-form-boundary-0000000000000001--\r\n"));
    }

    #[test]
    fn pcm_decoding_carries_odd_bytes() {
        let mut d = AudioDecoder::Pcm {
            rate: 24_000,
            odd: None,
        };
        let bytes: Vec<u8> = [1i16, -2, 300, -32768]
            .iter()
            .flat_map(|s| s.to_le_bytes())
            .collect();
        let mut got = Vec::new();
        for c in bytes.chunks(3) {
            got.extend(d.push(c).unwrap().1);
        }
        assert_eq!(got, vec![1, -2, 300, -32768]);
    }

    #[test]
    fn api_key_is_checked_and_hidden() {
        let dir = std::env::temp_dir().join(format!("oc-key-test-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("key");
        std::fs::write(&path, "sk-test-123\n").unwrap();
        let key = ApiKey::from_file(&path).unwrap();
        assert_eq!(format!("{key:?}"), "ApiKey(***)");
        assert_eq!(key.scrub("bad key sk-test-123!"), "bad key ***!");
        std::fs::write(&path, "two words").unwrap();
        assert!(ApiKey::from_file(&path).is_err());
        std::fs::write(&path, "\n").unwrap();
        assert!(ApiKey::from_file(&path).is_err());
        assert!(ApiKey::from_env("OC_SURELY_UNSET_VARIABLE_FOR_A_TEST").is_err());
        // A variable that is set (tests cannot set one: that needs unsafe code).
        if let Ok(home) = std::env::var("HOME")
            && !home.is_empty()
            && home.bytes().all(|b| b.is_ascii_graphic())
        {
            assert_eq!(ApiKey::from_env("HOME").unwrap().scrub(&home), "***");
        }
        std::fs::remove_dir_all(&dir).unwrap();
    }
}

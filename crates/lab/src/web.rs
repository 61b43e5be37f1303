//! The browser demo's web server (`oracle-lab web`, and the browser end-to-end test): serves a
//! built page directory (`sdk/browser/demo/dist`) on loopback, with MIME types by extension
//! (`.wasm` as `application/wasm`, which `WebAssembly.instantiateStreaming` requires), a strict
//! Content-Security-Policy on every response, and `/config.json` telling the page where the
//! homeserver and the oracle's server are.
//!
//! Binding and serving are two steps because the page's origin must be known before the oracle
//! server starts (its CORS allow-list names it), and the server's URL before the page is served
//! (the CSP and `/config.json` name it): [`bind`] first, deploy, then [`Bound::serve`].

use std::net::SocketAddr;
use std::path::{Component, Path, PathBuf};
use std::sync::Arc;

use anyhow::{Context as _, bail};
use axum::Router;
use axum::body::Body;
use axum::extract::State;
use axum::http::{HeaderValue, Method, StatusCode, Uri, header};
use axum::response::Response;
use serde::Serialize;
use tokio::net::TcpListener;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

/// What the page reads from `/config.json`.
#[derive(Clone, Debug, Serialize, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct PageConfig {
    /// The Matrix homeserver's client API base URL.
    pub homeserver_url: String,
    /// The oracle-calls server's base URL.
    pub server_url: String,
    /// The oracle to call.
    pub oracle_did: String,
    /// Where the page verifies the oracle's record (key transparency, PROTOCOL §12); absent:
    /// the page pins the oracle on first use.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub key_transparency: Option<PageKeyTransparency>,
}

/// The key-transparency directory the page uses.
#[derive(Clone, Debug, Serialize, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct PageKeyTransparency {
    /// The directory service's base URL (`oracle-calls kt serve`).
    pub url: String,
    /// The directory's public key, `{"signingKey", "vrfKey"}`.
    pub public_key: serde_json::Value,
}

/// How to serve the page.
#[derive(Clone, Debug)]
pub struct WebOptions {
    /// The directory to serve (a built page: `index.html`, bundles, wasm, worker).
    pub dir: PathBuf,
    /// Served as `/config.json`.
    pub config: PageConfig,
    /// The LiveKit server's WebSocket and HTTP URLs: with the homeserver and the oracle server
    /// the only other origins the page may connect to.
    pub livekit_urls: Vec<String>,
}

impl WebOptions {
    /// The page in `dir` for `dep`'s oracle on `stack`: its homeserver, oracle server and
    /// LiveKit URLs, and the key-transparency directory if the page is to use one.
    ///
    /// # Errors
    /// When the stack does not report its Matrix or LiveKit URLs.
    pub fn for_deployment(
        dir: PathBuf,
        stack: &crate::local::Stack,
        dep: &crate::local::Deployment,
        key_transparency: Option<PageKeyTransparency>,
    ) -> anyhow::Result<Self> {
        Ok(Self {
            dir,
            config: PageConfig {
                homeserver_url: stack.get("MATRIX_URL")?.to_owned(),
                server_url: dep.server.url.clone(),
                oracle_did: dep.oracle_did.to_string(),
                key_transparency,
            },
            livekit_urls: vec![
                stack.get("LIVEKIT_URL")?.to_owned(),
                stack.get("LIVEKIT_HTTP_URL")?.to_owned(),
            ],
        })
    }
}

/// A bound, not yet serving, listener: its URL is the page's origin.
#[derive(Debug)]
pub struct Bound {
    listener: TcpListener,
    url: String,
}

/// Binds `listen` (port 0: any free port) on loopback.
///
/// # Errors
/// When `listen` is not a loopback address or cannot be bound.
pub async fn bind(listen: SocketAddr) -> anyhow::Result<Bound> {
    if !listen.ip().is_loopback() {
        bail!("the demo web server binds loopback only, not {listen}");
    }
    let listener = TcpListener::bind(listen)
        .await
        .with_context(|| format!("binding {listen}"))?;
    let url = format!("http://{}", listener.local_addr()?);
    Ok(Bound { listener, url })
}

impl Bound {
    /// `http://127.0.0.1:port`: the page's origin.
    pub fn url(&self) -> &str {
        &self.url
    }

    /// Serves `opts.dir` on this listener until the returned handle is stopped or dropped.
    ///
    /// # Errors
    /// When the directory has no `index.html`, or a URL of the config is not an http(s)/ws(s)
    /// URL (the CSP is built from their origins).
    pub fn serve(self, opts: WebOptions) -> anyhow::Result<WebServer> {
        let dir = std::fs::canonicalize(&opts.dir)
            .with_context(|| format!("the page directory {}", opts.dir.display()))?;
        if !dir.join("index.html").is_file() {
            bail!(
                "{} has no index.html (build the demo: cd sdk/browser && npm run build)",
                dir.display()
            );
        }
        let mut connect = vec![
            origin_of(&opts.config.homeserver_url)?,
            origin_of(&opts.config.server_url)?,
        ];
        for u in &opts.livekit_urls {
            connect.push(origin_of(u)?);
        }
        if let Some(kt) = &opts.config.key_transparency {
            connect.push(origin_of(&kt.url)?);
        }
        connect.dedup();
        let csp = csp(&connect);
        let config_json = serde_json::to_vec(&opts.config).context("the page config")?;
        let site = Arc::new(Site {
            dir,
            csp: HeaderValue::from_str(&csp).context("the CSP header")?,
            config_json,
        });
        let app = Router::new().fallback(handle).with_state(site);
        let (stop_tx, stop_rx) = oneshot::channel::<()>();
        let listener = self.listener;
        let task = tokio::spawn(async move {
            let stop = async {
                let _ = stop_rx.await;
            };
            if let Err(e) = axum::serve(listener, app)
                .with_graceful_shutdown(stop)
                .await
            {
                tracing::error!(error = %e, "the demo web server stopped with an error");
            }
        });
        Ok(WebServer {
            url: self.url,
            csp,
            stop: Some(stop_tx),
            task: Some(task),
        })
    }
}

/// Binds `listen` and serves `opts` on it.
///
/// # Errors
/// As [`bind`] and [`Bound::serve`].
pub async fn serve(listen: SocketAddr, opts: WebOptions) -> anyhow::Result<WebServer> {
    bind(listen).await?.serve(opts)
}

/// The running web server; stops when dropped.
#[derive(Debug)]
pub struct WebServer {
    url: String,
    csp: String,
    stop: Option<oneshot::Sender<()>>,
    task: Option<JoinHandle<()>>,
}

impl WebServer {
    /// `http://127.0.0.1:port`.
    pub fn url(&self) -> &str {
        &self.url
    }

    /// The Content-Security-Policy it sends.
    pub fn csp(&self) -> &str {
        &self.csp
    }

    /// Stops serving and waits for open connections to finish.
    pub async fn stop(mut self) {
        if let Some(s) = self.stop.take() {
            let _ = s.send(());
        }
        if let Some(t) = self.task.take() {
            let _ = t.await;
        }
    }
}

impl Drop for WebServer {
    fn drop(&mut self) {
        if let Some(s) = self.stop.take() {
            let _ = s.send(());
        }
    }
}

struct Site {
    dir: PathBuf,
    csp: HeaderValue,
    config_json: Vec<u8>,
}

/// `scheme://host[:port]` of `url`, refusing anything but http(s) and ws(s).
fn origin_of(url: &str) -> anyhow::Result<String> {
    let u = reqwest::Url::parse(url).with_context(|| format!("`{url}` is not a URL"))?;
    if !matches!(u.scheme(), "http" | "https" | "ws" | "wss") {
        bail!("`{url}`: only http, https, ws and wss URLs can be connected to");
    }
    let origin = u.origin();
    if !origin.is_tuple() {
        bail!("`{url}` has no origin");
    }
    Ok(origin.ascii_serialization())
}

/// The page's policy: only same-origin scripts (and wasm compiled from them), workers, styles
/// and media; connections only to itself and `connect`.
fn csp(connect: &[String]) -> String {
    let mut connect_src = String::from("'self'");
    for c in connect {
        connect_src.push(' ');
        connect_src.push_str(c);
    }
    format!(
        "default-src 'self'; script-src 'self' 'wasm-unsafe-eval'; worker-src 'self'; \
         style-src 'self'; img-src 'self' data:; media-src 'self' blob:; \
         connect-src {connect_src}; frame-ancestors 'none'; base-uri 'none'; form-action 'none'"
    )
}

/// The content type of a file by its extension.
fn mime(path: &Path) -> &'static str {
    match path
        .extension()
        .and_then(|e| e.to_str())
        .map(str::to_ascii_lowercase)
        .as_deref()
    {
        Some("html" | "htm") => "text/html; charset=utf-8",
        Some("js" | "mjs") => "text/javascript; charset=utf-8",
        Some("css") => "text/css; charset=utf-8",
        Some("json" | "map") => "application/json",
        Some("wasm") => "application/wasm",
        Some("png") => "image/png",
        Some("svg") => "image/svg+xml",
        Some("ico") => "image/x-icon",
        Some("wav") => "audio/wav",
        Some("txt") => "text/plain; charset=utf-8",
        _ => "application/octet-stream",
    }
}

/// Why a request path names no file under the served directory.
#[derive(Debug, PartialEq, Eq)]
enum PathError {
    /// Bad percent-encoding, a NUL, a backslash, or a `.`/`..` segment.
    Refused,
}

/// Decodes `%XX` escapes; refuses malformed ones and anything that is not UTF-8.
fn percent_decode(s: &str) -> Result<String, PathError> {
    let mut out = Vec::with_capacity(s.len());
    let mut bytes = s.bytes();
    while let Some(b) = bytes.next() {
        if b == b'%' {
            let hi = bytes.next().and_then(|c| (c as char).to_digit(16));
            let lo = bytes.next().and_then(|c| (c as char).to_digit(16));
            match (hi, lo) {
                (Some(h), Some(l)) => {
                    out.push(u8::try_from(h * 16 + l).map_err(|_| PathError::Refused)?)
                }
                _ => return Err(PathError::Refused),
            }
        } else {
            out.push(b);
        }
    }
    String::from_utf8(out).map_err(|_| PathError::Refused)
}

/// The relative file path a request path names: decoded, every segment a plain name (no `.`,
/// `..`, NUL or backslash, nothing hidden); `/` and directories mean their `index.html`.
fn relative_path(uri_path: &str) -> Result<PathBuf, PathError> {
    let decoded = percent_decode(uri_path)?;
    let mut rel = PathBuf::new();
    for seg in decoded.split('/') {
        if seg.is_empty() {
            continue;
        }
        if seg.starts_with('.') || seg.contains(['\\', '\0']) {
            return Err(PathError::Refused);
        }
        let p = Path::new(seg);
        if !matches!(p.components().next(), Some(Component::Normal(_)))
            || p.components().count() != 1
        {
            return Err(PathError::Refused);
        }
        rel.push(seg);
    }
    if decoded.ends_with('/') || rel.as_os_str().is_empty() {
        rel.push("index.html");
    }
    Ok(rel)
}

async fn handle(State(site): State<Arc<Site>>, method: Method, uri: Uri) -> Response {
    let head = method == Method::HEAD;
    if method != Method::GET && !head {
        let mut r = respond(
            &site,
            StatusCode::METHOD_NOT_ALLOWED,
            "text/plain; charset=utf-8",
            b"method not allowed\n".to_vec(),
            false,
        );
        r.headers_mut()
            .insert(header::ALLOW, HeaderValue::from_static("GET, HEAD"));
        return r;
    }
    if uri.path() == "/config.json" {
        return respond(
            &site,
            StatusCode::OK,
            "application/json",
            site.config_json.clone(),
            head,
        );
    }
    let Ok(rel) = relative_path(uri.path()) else {
        return respond(
            &site,
            StatusCode::BAD_REQUEST,
            "text/plain; charset=utf-8",
            b"bad path\n".to_vec(),
            head,
        );
    };
    let mut file = site.dir.join(&rel);
    if tokio::fs::metadata(&file).await.is_ok_and(|m| m.is_dir()) {
        file.push("index.html");
    }
    // A symlink in the directory must not lead out of it either.
    let inside = tokio::fs::canonicalize(&file)
        .await
        .is_ok_and(|real| real.starts_with(&site.dir));
    // Browsers ask for /favicon.ico on their own: none is no error on the page's console.
    if !inside && uri.path() == "/favicon.ico" {
        return respond(
            &site,
            StatusCode::NO_CONTENT,
            "image/x-icon",
            Vec::new(),
            head,
        );
    }
    let body = if inside {
        tokio::fs::read(&file).await.ok()
    } else {
        None
    };
    match body {
        Some(b) => respond(&site, StatusCode::OK, mime(&file), b, head),
        None => respond(
            &site,
            StatusCode::NOT_FOUND,
            "text/plain; charset=utf-8",
            b"not found\n".to_vec(),
            head,
        ),
    }
}

/// Every response carries the CSP, `nosniff`, `no-referrer` and `no-store`.
fn respond(
    site: &Site,
    status: StatusCode,
    content_type: &'static str,
    body: Vec<u8>,
    head: bool,
) -> Response {
    let len = body.len();
    let mut r = Response::new(if head {
        Body::empty()
    } else {
        Body::from(body)
    });
    *r.status_mut() = status;
    let h = r.headers_mut();
    h.insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
    h.insert(header::CONTENT_LENGTH, HeaderValue::from(len));
    h.insert(header::CONTENT_SECURITY_POLICY, site.csp.clone());
    h.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    h.insert(
        header::REFERRER_POLICY,
        HeaderValue::from_static("no-referrer"),
    );
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    r
}

/// `oracle-lab web`: the stack (brought up if needed), an oracle with its server and echo agent
/// (forward secrecy on) allowing the page's origin, a provisioned user, and the page in `dir`
/// served on `127.0.0.1:port` (0: any free port) until Ctrl-C.
///
/// # Errors
/// When the page is not built, or the stack, the deployment or the server cannot start.
pub fn run_command(dir: &Path, port: u16) -> anyhow::Result<()> {
    if !dir.join("index.html").is_file() {
        bail!(
            "{} has no index.html: build the demo first (cd sdk/browser && npm ci && npm run build)",
            dir.display()
        );
    }
    let rt = tokio::runtime::Runtime::new().context("starting the async runtime")?;
    rt.block_on(run_async(dir, port))
}

async fn run_async(dir: &Path, port: u16) -> anyhow::Result<()> {
    use crate::local::{DeployOptions, Deployment, Stack, unique_hex};
    eprintln!("oracle-lab web: the browser demo on the local stack (scripts/stack up) …");
    let stack = tokio::task::spawn_blocking(Stack::up)
        .await
        .context("the stack task")??;
    let site = bind(SocketAddr::from(([127, 0, 0, 1], port))).await?;
    let origin = site.url().to_owned();
    let state = std::env::temp_dir().join(format!("oracle-calls-web-{}", unique_hex(5)));
    let mut opts = DeployOptions::new(&state);
    opts.cors_allowed_origins = vec![origin.clone()];
    let dep = Deployment::start(stack.clone(), opts).await?;
    // The oracle's operator publishes its record in a key-transparency directory; the page
    // verifies the oracle from it (as `demo` does for the Rust client).
    let exe = std::env::current_exe().context("this program's path")?;
    let kt = crate::local_kt::KtDirectory::new(&exe, state.join("kt"), &dep.oracle_did)?;
    let kt_service = kt.start("data")?;
    let record = crate::local_kt::record_of(&crate::local_kt::well_known(&dep.server.url).await?);
    crate::local_kt::publish(&kt_service, &kt.token, &dep.oracle_did, &record).await?;
    let name = format!("did-ixo-web{}", unique_hex(5));
    let (user_id, _password) = stack.user(&name)?;
    let password_file = Path::new(stack.get("MATRIX_USERS_DIR")?).join(format!("{name}.password"));
    let page_kt = PageKeyTransparency {
        url: kt_service.base.clone(),
        public_key: serde_json::to_value(&kt.public).context("the directory's key")?,
    };
    let server = site.serve(WebOptions::for_deployment(
        dir.to_owned(),
        &stack,
        &dep,
        Some(page_kt),
    )?)?;
    eprintln!(
        "  oracle:   {} (server {}, echo agent)",
        dep.oracle_did, dep.server.url
    );
    eprintln!(
        "  record:   key-transparency directory {} (the page verifies the oracle from it)",
        kt_service.base
    );
    eprintln!("  user:     {name} ({user_id})");
    if password_file.is_file() {
        eprintln!("  password: in {} (mode 0600)", password_file.display());
    } else {
        eprintln!("  password: `scripts/stack user {name}` names the file that holds it");
    }
    eprintln!("  state:    {} (removed on exit)", state.display());
    println!("{}/", server.url());
    eprintln!("open the URL above in Chromium; Ctrl-C stops");
    tokio::signal::ctrl_c()
        .await
        .context("waiting for Ctrl-C")?;
    eprintln!("stopping …");
    server.stop().await;
    drop(kt_service);
    dep.stop().await;
    // The throwaway oracle's keys and store go with it.
    if let Err(e) = std::fs::remove_dir_all(&state) {
        eprintln!("could not remove {}: {e}", state.display());
    }
    Ok(())
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;

    #[test]
    fn request_paths_map_to_plain_relative_files() {
        assert_eq!(relative_path("/").unwrap(), PathBuf::from("index.html"));
        assert_eq!(relative_path("/a/b.js").unwrap(), PathBuf::from("a/b.js"));
        assert_eq!(relative_path("/a/").unwrap(), PathBuf::from("a/index.html"));
        assert_eq!(relative_path("/a%20b.js").unwrap(), PathBuf::from("a b.js"));
        for bad in [
            "/../Cargo.toml",
            "/a/../../x",
            "/%2e%2e/x",
            "/%2E%2E%2Fx",
            "/a/%2e%2e%2f%2e%2e%2fx",
            "/..%5cx",
            "/x%00.js",
            "/.git/config",
            "/%zz",
            "/%c3",
            "/./x",
        ] {
            assert_eq!(relative_path(bad), Err(PathError::Refused), "{bad}");
        }
    }

    #[test]
    fn csp_names_only_the_given_origins() {
        let c = csp(&[
            origin_of("http://127.0.0.1:18008/").unwrap(),
            origin_of("ws://127.0.0.1:17880/rtc").unwrap(),
        ]);
        assert!(
            c.contains("connect-src 'self' http://127.0.0.1:18008 ws://127.0.0.1:17880;"),
            "{c}"
        );
        assert!(c.contains("script-src 'self' 'wasm-unsafe-eval';"), "{c}");
        assert!(origin_of("javascript:alert(1)").is_err());
        assert!(origin_of("not a url").is_err());
    }

    #[test]
    fn mime_types_by_extension() {
        assert_eq!(mime(Path::new("a/crypto_bg.wasm")), "application/wasm");
        assert_eq!(mime(Path::new("x.MJS")), "text/javascript; charset=utf-8");
        assert_eq!(mime(Path::new("x")), "application/octet-stream");
    }
}

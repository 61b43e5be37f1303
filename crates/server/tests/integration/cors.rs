//! `[cors]`: a browser page on another origin may read the API only when its origin is listed;
//! the default lists none. Preflights and real requests, allowed and refused origins, and the
//! config's refusal of anything that is not an exact origin.

use oracle_calls_proto::Did;
use oracle_calls_server::Config;
use reqwest::Method;

use crate::support::{Db, TestServer, config_toml, temp_dir};

const PAGE: &str = "http://127.0.0.1:5173";

fn header(r: &reqwest::Response, name: &str) -> Option<String> {
    r.headers()
        .get(name)
        .map(|v| v.to_str().unwrap().to_owned())
}

async fn preflight(s: &TestServer, path: &str, origin: &str) -> reqwest::Response {
    reqwest::Client::new()
        .request(Method::OPTIONS, s.url(path))
        .header("origin", origin)
        .header("access-control-request-method", "POST")
        .header(
            "access-control-request-headers",
            "authorization,content-type",
        )
        .send()
        .await
        .unwrap()
}

async fn get_with_origin(s: &TestServer, path: &str, origin: &str) -> reqwest::Response {
    reqwest::Client::new()
        .get(s.url(path))
        .header("origin", origin)
        .send()
        .await
        .unwrap()
}

async fn allowing(origins: &[&str]) -> TestServer {
    let list: Vec<String> = origins.iter().map(|o| format!("\"{o}\"")).collect();
    TestServer::start_edited(Db::Sqlite, |t| {
        format!("{t}\n[cors]\nallowed_origins = [{}]\n", list.join(", "))
    })
    .await
}

#[tokio::test]
async fn default_config_gives_no_page_access() {
    let s = TestServer::start(Db::Sqlite).await;
    let r = preflight(&s, "/calls/x/sync", PAGE).await;
    assert_eq!(header(&r, "access-control-allow-origin"), None);
    assert!(
        !r.status().is_success(),
        "a preflight without [cors] is not answered as allowed: {}",
        r.status()
    );
    let r = get_with_origin(&s, "/.well-known/oracle-calls", PAGE).await;
    assert_eq!(r.status(), 200, "the request itself is still served");
    assert_eq!(header(&r, "access-control-allow-origin"), None);
}

#[tokio::test]
async fn listed_origin_is_allowed_get_post_with_authorization_and_no_credentials() {
    let s = allowing(&[PAGE, "https://app.example.org"]).await;
    let r = preflight(&s, "/calls/x/sync", PAGE).await;
    assert!(r.status().is_success(), "preflight: {}", r.status());
    assert_eq!(
        header(&r, "access-control-allow-origin").as_deref(),
        Some(PAGE)
    );
    let methods = header(&r, "access-control-allow-methods").unwrap();
    assert!(
        methods.contains("POST") && methods.contains("GET"),
        "{methods}"
    );
    assert!(
        !methods.contains("DELETE") && !methods.contains("PUT"),
        "{methods}"
    );
    let headers = header(&r, "access-control-allow-headers").unwrap();
    assert!(headers.contains("authorization"), "{headers}");
    assert!(headers.contains("content-type"), "{headers}");
    assert_eq!(header(&r, "access-control-allow-credentials"), None);
    assert_eq!(header(&r, "access-control-max-age").as_deref(), Some("600"));

    // A real request: the answer is readable by the page, errors included (a 401 with its
    // typed body), so the SDK can show the reason.
    let r = get_with_origin(&s, "/.well-known/oracle-calls", "https://app.example.org").await;
    assert_eq!(r.status(), 200);
    assert_eq!(
        header(&r, "access-control-allow-origin").as_deref(),
        Some("https://app.example.org")
    );
    assert!(
        header(&r, "vary").is_some_and(|v| v.to_ascii_lowercase().contains("origin")),
        "caches must key on the origin"
    );
    let r = get_with_origin(&s, "/calls", PAGE).await;
    assert_eq!(r.status(), 401, "no token");
    assert_eq!(
        header(&r, "access-control-allow-origin").as_deref(),
        Some(PAGE)
    );
    assert!(
        header(&r, "access-control-expose-headers")
            .is_some_and(|v| v.to_ascii_lowercase().contains("retry-after")),
        "Retry-After readable by the page"
    );
}

#[tokio::test]
async fn unlisted_origins_are_refused() {
    let s = allowing(&[PAGE]).await;
    for other in [
        "http://127.0.0.1:5174",
        "https://127.0.0.1:5173",
        "http://localhost:5173",
        "http://evil.example",
        "null",
    ] {
        let r = preflight(&s, "/calls/x/sync", other).await;
        assert_eq!(header(&r, "access-control-allow-origin"), None, "{other}");
        let r = get_with_origin(&s, "/calls", other).await;
        assert_eq!(header(&r, "access-control-allow-origin"), None, "{other}");
    }
}

#[test]
fn config_accepts_only_exact_origins() {
    let dir = temp_dir();
    let oracle = Did::parse("did:ixo:oracle-cors").unwrap();
    let base = config_toml(&oracle, "@oracle:localhost", &dir.0, Db::Sqlite);
    let with = |origin: &str| {
        Config::from_toml(&format!(
            "{base}\n[cors]\nallowed_origins = [\"{origin}\"]\n"
        ))
    };
    for ok in [
        "http://127.0.0.1:5173",
        "https://app.example.org",
        "http://[::1]:8080",
        "http://localhost",
    ] {
        let c = with(ok).unwrap_or_else(|e| panic!("{ok}: {e}"));
        assert_eq!(c.cors.allowed_origins, vec![ok.to_owned()]);
    }
    for bad in [
        "*",
        "https://app.example.org/",
        "https://app.example.org/page",
        "app.example.org",
        "ftp://app.example.org",
        "https://",
        "https://*.example.org",
        "https://App.Example.org",
        "https://app.example.org:99999",
        "https://app.example.org:",
        "https://user@app.example.org",
        "https://app.example.org?x",
    ] {
        let err = with(bad).err().unwrap_or_else(|| panic!("{bad} accepted"));
        let msg = err.to_string();
        assert!(
            msg.contains("cors.allowed_origins") && msg.contains(bad),
            "{bad}: {msg}"
        );
    }
    let c = Config::from_toml(&base).unwrap();
    assert!(c.cors.allowed_origins.is_empty(), "default: no origin");
}

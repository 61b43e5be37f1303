//! Bounded metrics and secrets kept out of config text (security review H3 and L8).

use oracle_calls_server::store::Store;
use oracle_calls_server::{Config, Secrets};

use crate::support::{Db, TestServer, config_toml, stack_var, temp_dir, unique};

/// Anyone can send any token as an HTTP method; made-up ones must not each add a metric.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn made_up_methods_do_not_grow_the_metrics() {
    let s = TestServer::start(Db::Sqlite).await;
    let http = reqwest::Client::new();
    // Read from the registry: past the per-address limit `/metrics` itself answers 429.
    let before = s.state.metrics().render().len();
    for i in 0..1000 {
        let method = format!("M{i:04}{}", "X".repeat(1019));
        let m = reqwest::Method::from_bytes(method.as_bytes()).unwrap();
        let path = if i % 2 == 0 { "/x" } else { "/calls" };
        let resp = http.request(m, s.url(path)).send().await.unwrap();
        assert!(resp.status().is_client_error(), "{}", resp.status());
    }
    let text = s.state.metrics().render();
    assert!(
        text.len() < before + 8 * 1024,
        "/metrics grew from {before} to {} bytes",
        text.len()
    );
    assert!(
        text.contains(r#"method="OTHER""#) && !text.contains("M0001"),
        "made-up methods are counted as OTHER"
    );
}

/// The PostgreSQL password can live in a file (`ORACLE_CALLS_DATABASE_PASSWORD_FILE`) instead
/// of the URL, and a password in the URL never prints with the config.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_postgres_password_comes_from_a_file() {
    let dir = temp_dir();
    let oracle = oracle_calls_proto::Did::parse(&unique("did:ixo:oracle")).unwrap();
    let with_password = stack_var("DATABASE_URL");
    let password_file = stack_var("DATABASE_PASSWORD_FILE");
    let password = crate::support::read_file(&password_file);
    assert!(with_password.contains(&format!(":{password}@")));
    let without = with_password.replace(&format!(":{password}@"), "@");

    let toml = config_toml(&oracle, "@oracle:localhost", &dir.0, Db::Postgres);
    let config = Config::from_toml(&toml.replace(&with_password, &without)).unwrap();
    let lk = crate::support::read_file(&stack_var("LIVEKIT_API_SECRET_FILE"));
    let secrets_with = |file: Option<&str>| {
        let file = file.map(str::to_owned);
        Secrets::from_env(|k| match k {
            "ORACLE_CALLS_LIVEKIT_API_SECRET" => Some(lk.clone()),
            "ORACLE_CALLS_API_KEY_PEPPER" => Some("pepper-of-sixteen-chars".into()),
            "ORACLE_CALLS_DATABASE_PASSWORD_FILE" => file.clone(),
            _ => None,
        })
        .unwrap()
    };

    // Without the password PostgreSQL refuses; with it from the file the store opens.
    let no_password = secrets_with(None);
    assert!(
        Store::connect(config.store_url(&no_password).unwrap().dangerous_expose())
            .await
            .is_err()
    );
    let secrets = secrets_with(Some(&password_file));
    let store = Store::connect(config.store_url(&secrets).unwrap().dangerous_expose())
        .await
        .unwrap();
    assert!(store.ping().await);
    assert!(!format!("{config:?}{secrets:?}").contains(&password));

    // The stack's URL with its password inside: the config's Debug hides it.
    let config = Config::from_toml(&toml).unwrap();
    let dbg = format!("{config:?}");
    assert!(!dbg.contains(&password), "{dbg}");
    assert!(dbg.contains(":***@"), "{dbg}");
}

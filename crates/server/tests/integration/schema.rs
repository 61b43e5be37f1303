//! Schemathesis (an OpenAPI fuzzer no one here wrote) against the server's own
//! `/openapi.json`, with valid credentials: a real user's OpenID token for the user endpoints,
//! a real agent API key for the agent endpoints, and a real synced call among the inputs it
//! may try. No 5xx, every answer's status, content type and body as the document says.

use std::process::Command;

use matrix_sdk::ruma::{OwnedUserId, UserId};

use crate::matrix::{UserSide, now_ms, sync_call};
use crate::support::{Db, MatrixUser, TestServer, room_name, temp_dir, unique};

/// The checks the issue asks for: no server errors, no schema violations.
const CHECKS: &str = "not_a_server_error,status_code_conformance,content_type_conformance,\
                      response_schema_conformance,response_headers_conformance";

fn schemathesis(base: &str, token: &str, include: &str, examples: u32) -> (bool, String) {
    let dir = temp_dir();
    // The credential reaches schemathesis through its environment, never its argv.
    let config = dir.0.join("schemathesis.toml");
    std::fs::write(
        &config,
        "headers = { Authorization = \"Bearer ${OC_SCHEMA_TOKEN}\" }\n",
    )
    .unwrap();
    let out = Command::new("st")
        .arg("--config-file")
        .arg(&config)
        .args([
            "run",
            &format!("{base}/openapi.json"),
            "--url",
            base,
            "--checks",
            CHECKS,
            "--include-path-regex",
            include,
            "--max-examples",
            &examples.to_string(),
            "--generation-deterministic",
            "--workers",
            "2",
            "--no-color",
        ])
        .env("OC_SCHEMA_TOKEN", token)
        .env("SCHEMATHESIS_HOOKS", "")
        .output()
        .expect("schemathesis (`st`, PyPI schemathesis) is installed by scripts/test");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.success(), text)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn schemathesis_finds_no_server_error_or_schema_violation() {
    let oracle_user = MatrixUser::new(&unique("oracle")).await;
    let s = TestServer::start_with_bot(Db::Sqlite, &oracle_user).await;
    let bot: OwnedUserId = UserId::parse(oracle_user.user_id.as_str()).unwrap();
    let alice = UserSide::new().await;
    let room = alice.room_with(&bot, true).await;
    let token = alice.user.openid_token().await;
    let lk_room = room_name();
    let ev = alice
        .send(&room, &alice.content(s.oracle.as_str(), &lk_room, now_ms()))
        .await;
    let (st, body) = sync_call(&s, &token, &format!("{ev}@{lk_room}")).await;
    assert_eq!(st, 200, "{body}");
    let key = oracle_calls_server::apikey::create(
        s.store(),
        &s.pepper,
        s.oracle.clone(),
        "schemathesis",
        now_ms(),
    )
    .await
    .unwrap();
    let base = s.base.clone();
    let runs = [
        // The user's endpoints and the public ones, as the user.
        (
            "user",
            token.clone(),
            "^/(calls(/\\{[^}]+\\}/(sync|update))?|prekeys/claim|\\.well-known/.*|healthz|openapi\\.json)$",
        ),
        // The agent's endpoints, as the agent.
        (
            "agent",
            key.key.dangerous_expose().to_owned(),
            "^/(calls/\\{[^}]+\\}/(key|update)|prekeys)$",
        ),
    ];
    for (who, bearer, include) in runs {
        let (base, include) = (base.clone(), include.to_owned());
        let (ok, text) =
            tokio::task::spawn_blocking(move || schemathesis(&base, &bearer, &include, 60))
                .await
                .unwrap();
        assert!(ok, "schemathesis as the {who} found problems:\n{text}");
        for line in text
            .lines()
            .filter(|l| l.contains("generated") || l.contains("Tested:"))
        {
            eprintln!("schemathesis as the {who}: {}", line.trim());
        }
        assert!(
            text.contains("passed") && !text.contains("No operations"),
            "schemathesis as the {who} tested nothing:\n{text}"
        );
    }
}

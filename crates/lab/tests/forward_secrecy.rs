//! Forward secrecy on the real stack (Synapse, livekit-server): a call sealed to a one-time
//! prekey cannot be opened after it, even by an attacker who then holds the oracle's
//! long-term private key, a copy of the server's database, the call event from the Matrix
//! history in plaintext, and everything left in the key holder's prekey store.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]

use std::path::{Path, PathBuf};
use std::time::Duration;

use oracle_calls_crypto::{
    CallContext, CallKey, EnvelopeError, KeyEnvelope, OpenedKey, OracleKeyPair, Prekey,
    PrekeySigningPublicKey, Recipient, open, open_prekey_layer,
};
use oracle_calls_lab::local::{DeployOptions, Deployment, Stack, echo_envelope, unique_hex};
use oracle_calls_lab::verify::read_prekey_store;
use oracle_calls_proto::{CallType, Did, RoomName, SessionId, SignedPrekey, WellKnown};
use sqlx::Row as _;

fn temp_dir() -> PathBuf {
    let d = std::env::temp_dir().join(format!("oc-fs-{}", unique_hex(6)));
    std::fs::create_dir_all(&d).unwrap();
    d
}

/// Tries everything the attacker holds on `envelope`; answers the call key if anything opens.
fn attack(
    long_term: &OracleKeyPair,
    store: &[Prekey],
    envelope: &KeyEnvelope,
    ctx: &CallContext,
) -> Option<CallKey> {
    // The long-term key alone: the prekey layer is in the way.
    match open(long_term, envelope, ctx) {
        Err(EnvelopeError::PrekeyLayer) => {}
        Ok(OpenedKey::Bound(k)) => return Some(k),
        other => panic!("unexpected: {other:?}"),
    }
    // Every prekey still in the store, then the long-term key on what comes out.
    for prekey in store {
        if let Ok(inner) = open_prekey_layer(prekey, envelope, ctx)
            && let Ok(OpenedKey::Bound(k)) = open(long_term, &inner, ctx)
        {
            return Some(k);
        }
    }
    None
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn after_a_call_its_envelope_does_not_open_with_the_long_term_key_the_database_and_the_matrix_history()
 {
    let dir = temp_dir();
    let dep = Deployment::start(Stack::running().unwrap(), DeployOptions::new(&dir))
        .await
        .unwrap();
    let wk: WellKnown = reqwest::get(format!("{}/.well-known/oracle-calls", dep.server.url))
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let signing_key = PrekeySigningPublicKey::parse(
        wk.prekey_signing_key
            .as_deref()
            .expect("the oracle publishes a prekey signing key"),
    )
    .unwrap();
    let store_dir = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .find(|p| {
            p.file_name()
                .unwrap()
                .to_string_lossy()
                .starts_with("prekeys-")
        })
        .expect("the agent's prekey store");

    // The call: sealed to a one-time prekey, heard, ended.
    let client = dep.new_user().await.unwrap();
    let mut call = client.call_oracle(CallType::Audio).await.unwrap();
    assert!(
        echo_envelope(&mut call, 2.0).await.unwrap() > 0.6,
        "the echo was heard"
    );
    let call_id = call.id().clone();
    call.end().await.unwrap();
    // The key holder keeps the call's inner envelope while the call runs (for an agent
    // dispatched again); the agent's job ends soon after the user left, and so must that.
    oracle_calls_lab::verify::wait_calls_over(&store_dir, Duration::from_secs(15))
        .await
        .unwrap();

    // What the attacker takes afterwards. (1) The oracle's long-term private key.
    let long_term =
        OracleKeyPair::from_pkcs8_pem(&std::fs::read_to_string(&dep.key_file).unwrap()).unwrap();
    // (2) A copy of the server's database: the call's envelope and context.
    let db_file = dep
        .database_url
        .trim_start_matches("sqlite://")
        .split('?')
        .next()
        .unwrap()
        .to_owned();
    // The whole database: the file and its write-ahead log.
    let copy = dir.join("stolen.sqlite3");
    std::fs::copy(&db_file, &copy).unwrap();
    for suffix in ["-wal", "-shm"] {
        let from = format!("{db_file}{suffix}");
        if Path::new(&from).exists() {
            std::fs::copy(&from, format!("{}{suffix}", copy.display())).unwrap();
        }
    }
    let pool = sqlx::SqlitePool::connect(&format!("sqlite://{}", copy.display()))
        .await
        .unwrap();
    let row = sqlx::query(
        "SELECT encryption_key, session_id, room_name, user_did, oracle_did, matrix_room_id \
         FROM calls WHERE call_id = ?",
    )
    .bind(call_id.to_string())
    .fetch_one(&pool)
    .await
    .unwrap();
    let envelope = KeyEnvelope::parse(&row.get::<String, _>(0)).unwrap();
    let ctx = CallContext::new(
        SessionId::parse(&row.get::<String, _>(1)).unwrap(),
        RoomName::parse(&row.get::<String, _>(2)).unwrap(),
        Did::parse(&row.get::<String, _>(3)).unwrap(),
        Did::parse(&row.get::<String, _>(4)).unwrap(),
        CallType::Audio,
    );
    let claimed = match oracle_calls_crypto::recipient(&envelope).unwrap() {
        Recipient::Prekey { prekey_id, .. } => prekey_id,
        other => panic!("the call was not sealed to a prekey: {other:?}"),
    };
    // The database still holds public halves only, and not the claimed one.
    let published: Vec<String> = sqlx::query_scalar("SELECT prekey_id FROM prekeys")
        .fetch_all(&pool)
        .await
        .unwrap();
    assert!(
        !published.is_empty(),
        "the copy holds the published prekeys"
    );
    assert!(
        !published.contains(&claimed.to_string()),
        "a claimed prekey is never handed out again"
    );
    // (3) The Matrix history, decrypted: the event the user sent carries the same envelope.
    let room_id = row.get::<String, _>(5);
    let in_matrix = matrix_envelope(&client, &room_id).await;
    assert_eq!(
        in_matrix,
        envelope.as_str(),
        "the Matrix history holds the envelope"
    );
    // (4) Everything left in the key holder's store.
    let store = read_prekey_store(&store_dir).unwrap();
    assert!(!store.is_empty(), "the store still holds other prekeys");
    assert!(
        store.iter().all(|p| p.id != claimed),
        "the prekey the call used was destroyed"
    );
    assert!(
        attack(&long_term, &store, &envelope, &ctx).is_none(),
        "the past call's envelope opened"
    );
    for kept in oracle_calls_lab::verify::kept_envelopes(&store_dir).unwrap() {
        assert!(
            open(&long_term, &kept, &ctx).is_err(),
            "an envelope left in the store opened"
        );
    }

    // The same attack succeeds on an envelope whose prekey was not used yet: so the attack is
    // real, and the destruction is what stops it.
    let api = reqwest::Client::new();
    let token = client.openid_token().await.unwrap();
    let fresh: SignedPrekey = api
        .post(format!("{}/prekeys/claim", dep.server.url))
        .bearer_auth(token.as_str())
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let verified =
        oracle_calls_crypto::verify_prekey(&fresh, &signing_key, &dep.oracle_did).unwrap();
    let mut rng = rand::rng();
    let key = CallKey::generate(&mut rng);
    let unused = oracle_calls_crypto::seal_with_prekey(
        &long_term.public_key(),
        &verified,
        &key,
        &ctx,
        &mut rng,
    )
    .unwrap();
    let opened = attack(
        &long_term,
        &read_prekey_store(&store_dir).unwrap(),
        &unused,
        &ctx,
    )
    .expect("an envelope to a prekey still in the store opens with the stolen material");
    assert!(opened.ct_eq(&key));
}

/// The call event's `encryptionKey` as the user's own device reads it back from the room's
/// history (decrypted).
async fn matrix_envelope(client: &oracle_calls_client::OracleClient, room_id: &str) -> String {
    let room_id = matrix_sdk::ruma::RoomId::parse(room_id).unwrap();
    let room = client.matrix().get_room(&room_id).expect("the DM room");
    let messages = room
        .messages(matrix_sdk::room::MessagesOptions::backward())
        .await
        .unwrap();
    for ev in messages.chunk {
        let json: serde_json::Value = serde_json::from_str(ev.raw().json().get()).unwrap();
        if json["type"] == oracle_calls_proto::CALL_EVENT_TYPE
            && let Some(env) = json["content"]["encryptionKey"].as_str()
        {
            return env.to_owned();
        }
    }
    panic!("no call event in the room's history")
}

/// A server that hands out no prekey, or one the oracle did not sign (a substituted prekey),
/// gets no call: the client refuses before it sends anything.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_missing_or_substituted_prekey_refuses_the_call_before_anything_is_sent() {
    let dep = Deployment::start(
        Stack::running().unwrap(),
        DeployOptions {
            // No agent: nothing keeps the server stocked.
            oracle: None,
            ..DeployOptions::new(temp_dir())
        },
    )
    .await
    .unwrap();
    let client = dep.new_user().await.unwrap();
    match client.call_oracle(CallType::Audio).await {
        Err(oracle_calls_client::CallError::PrekeyUnavailable(why)) => {
            assert!(why.contains("404"), "{why}")
        }
        Err(e) => panic!("expected PrekeyUnavailable, got {e}"),
        Ok(_) => panic!("a call without a prekey"),
    }
    // The server (or whoever holds the agent's API key) publishes a prekey signed by its own
    // key instead of the oracle's.
    let rogue = oracle_calls_crypto::PrekeySigningKey::generate(&mut rand::rng());
    let forged = Prekey::generate(false, &mut rand::rng()).sign(&rogue, &dep.oracle_did);
    let resp = reqwest::Client::new()
        .post(format!("{}/prekeys", dep.server.url))
        .bearer_auth(dep.agent_api_key.as_str())
        .json(&serde_json::json!({ "prekeys": [forged] }))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200, "{}", resp.text().await.unwrap());
    match client.call_oracle(CallType::Audio).await {
        Err(oracle_calls_client::CallError::PrekeyInvalid(why)) => {
            assert!(why.contains(&forged.prekey_id), "{why}")
        }
        Err(e) => panic!("expected PrekeyInvalid, got {e}"),
        Ok(_) => panic!("a call sealed to a substituted prekey"),
    }
    let listed = client.list_calls(&Default::default()).await.unwrap();
    assert!(
        listed.calls.is_empty(),
        "nothing was sent: {:?}",
        listed.calls
    );
}

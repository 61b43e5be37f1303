//! The trust issue's end-to-end tests on the real stack (Synapse, livekit-server): a
//! compromised oracle server cannot move a call to another oracle or key, and a compromised
//! homeserver that adds a device to the oracle bot's account cannot read the call event; and
//! with key transparency (the real `oracle-calls kt serve`), the server must agree with the
//! oracle's verified record, a key change names its epoch, a rolled-back directory is
//! refused, and a server added to the oracle later is trusted once its record lists it.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]

use std::path::Path;
use std::time::Duration;

use matrix_sdk::config::SyncSettings;
use matrix_sdk::deserialized_responses::TimelineEventKind;
use oracle_calls_client::{CallError, ClientConfig, Login, OracleClient};
use oracle_calls_kt::{DirectoryPublicKey, OracleRecord, SignedCheckpoint};
use oracle_calls_lab::local::{DeployOptions, Deployment, Stack, echo_envelope, unique_hex};
use oracle_calls_lab::local_kt::{self, KtDirectory, KtService, record_of};
use oracle_calls_proto::{CallType, Did, KeyScheme, WellKnown};

/// One deployment at a time: they share two cores with the servers.
static SERIAL: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

fn temp_dir() -> std::path::PathBuf {
    let d = std::env::temp_dir().join(format!("oc-trust-{}", unique_hex(6)));
    std::fs::create_dir_all(&d).unwrap();
    d
}

fn init_logs() {
    oracle_calls_test_support::init_test_logs("warn,oracle_calls_client=info");
}

/// A user's client for `dep`'s oracle with its settings passed through `edit`; returns the
/// settings too, so the same device can be opened again.
async fn user(
    dep: &Deployment,
    edit: impl FnOnce(&mut ClientConfig),
) -> (OracleClient, ClientConfig) {
    let mut cfg = None;
    let client = dep
        .new_user_with(|c| {
            edit(c);
            cfg = Some(c.clone());
        })
        .await
        .unwrap();
    (client, cfg.unwrap())
}

/// Security review H1. The user calls oracle A once (its key, bot and bot device pinned).
/// Then (1) a server that describes another oracle is refused, whatever it publishes; (2) A's
/// server swaps the key: refused with an error naming the pinned and the new key, nothing
/// sent; (3) with exactly that key accepted the call goes through and is heard.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_compromised_server_cannot_move_a_call_to_another_oracle_or_key() {
    init_logs();
    let _serial = SERIAL.lock().await;
    let mut dep = Deployment::start(Stack::running().unwrap(), DeployOptions::new(temp_dir()))
        .await
        .unwrap();
    let (client, cfg) = user(&dep, |_| {}).await;
    let mut call = client.call_oracle(CallType::Audio).await.unwrap();
    assert!(echo_envelope(&mut call, 2.0).await.unwrap() > 0.6);
    call.end().await.unwrap();
    let pinned = client.oracle_trust().unwrap().expect("pinned on first use");
    let old_key = pinned.keys[0].key_id.clone();
    assert_eq!(pinned.matrix_user_id, dep.oracle_user_id);
    assert_eq!(pinned.bot_devices.len(), 1, "{pinned:?}");
    let calls_before = client
        .list_calls(&Default::default())
        .await
        .unwrap()
        .calls
        .len();

    // (1) Another oracle's server (its own DID, key, bot and agent) in place of A's.
    let other = Deployment::start(
        Stack::running().unwrap(),
        DeployOptions {
            oracle: None,
            ..DeployOptions::new(temp_dir())
        },
    )
    .await
    .unwrap();
    let (redirected, _) = user(&dep, |c| c.server_url = other.server.url.clone()).await;
    match redirected.call_oracle(CallType::Audio).await {
        Err(CallError::WrongOracle { expected, served }) => {
            assert_eq!(expected, dep.oracle_did.to_string());
            assert_eq!(served, other.oracle_did.to_string());
        }
        Err(e) => panic!("expected WrongOracle, got {e}"),
        Ok(_) => panic!("a call went to another oracle"),
    }
    let other_bot = matrix_sdk::ruma::UserId::parse(other.oracle_user_id.as_str()).unwrap();
    assert!(
        redirected.matrix().get_dm_room(&other_bot).is_none(),
        "nothing was sent towards the other oracle"
    );
    other.stop().await;

    // (2) A's server now publishes another key (and runs an agent that holds it).
    let new = dep.replace_oracle_key(KeyScheme::HpkeP256).await.unwrap();
    let new_key = new.key_id().to_string();
    match client.call_oracle(CallType::Audio).await {
        Err(e @ CallError::OracleKeyChanged { .. }) => {
            let CallError::OracleKeyChanged {
                pinned, offered, ..
            } = &e
            else {
                unreachable!()
            };
            assert_eq!(pinned, &old_key);
            assert_eq!(offered, &new_key);
            let text = e.to_string();
            assert!(text.contains(&old_key) && text.contains(&new_key), "{text}");
        }
        Err(e) => panic!("expected OracleKeyChanged, got {e}"),
        Ok(_) => panic!("a call was sealed to a key the user never verified"),
    }
    assert_eq!(
        client
            .list_calls(&Default::default())
            .await
            .unwrap()
            .calls
            .len(),
        calls_before,
        "no call event was sent"
    );
    drop(client);

    // (3) The same device, accepting exactly the new key: the call connects and is heard.
    let mut cfg = cfg;
    cfg.trust_override.oracle_key = Some(new_key.clone());
    let client = OracleClient::connect(cfg, Login::Restore).await.unwrap();
    let mut call = client.call_oracle(CallType::Audio).await.unwrap();
    assert!(echo_envelope(&mut call, 2.0).await.unwrap() > 0.6);
    call.end().await.unwrap();
    let now = client.oracle_trust().unwrap().unwrap();
    assert_eq!(now.keys.len(), 1);
    assert_eq!(now.keys[0].key_id, new_key);
    assert_eq!(
        now.bot_devices, pinned.bot_devices,
        "the bot device is unchanged"
    );
    dep.stop().await;
}

/// Security review M1. A homeserver can add a device to the oracle bot's account (here: a
/// login with the bot's password, which a compromised homeserver does not even need). The
/// user's client shares the call event's room key only with the bot device it pinned: the
/// added device cannot decrypt the call event, the real bot can (the call connects), and the
/// client never sends to a bot that has none of its pinned devices.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_device_the_homeserver_adds_to_the_bot_cannot_read_the_call_event() {
    init_logs();
    let _serial = SERIAL.lock().await;
    let dep = Deployment::start(Stack::running().unwrap(), DeployOptions::new(temp_dir()))
        .await
        .unwrap();
    // The intruding device: same account as the bot, its own keys uploaded.
    let dir = dep.dir.join("intruder");
    std::fs::create_dir_all(&dir).unwrap();
    let intruder = matrix_sdk::Client::builder()
        .homeserver_url(dep.stack.get("MATRIX_URL").unwrap())
        .sqlite_store(&dir, None)
        .build()
        .await
        .unwrap();
    intruder
        .matrix_auth()
        .login_username(&dep.oracle_user_id, dep.bot_password())
        .initial_device_display_name("added by the homeserver")
        .send()
        .await
        .unwrap();
    intruder
        .sync_once(SyncSettings::default().timeout(Duration::ZERO))
        .await
        .unwrap();
    let intruder_device = intruder.device_id().unwrap().to_string();

    // The server publishes its own device only.
    let wk = reqwest::get(format!("{}/.well-known/oracle-calls", dep.server.url))
        .await
        .unwrap()
        .json::<oracle_calls_proto::WellKnown>()
        .await
        .unwrap();
    assert_eq!(wk.matrix_devices.len(), 1);
    assert_ne!(wk.matrix_devices[0].device_id, intruder_device);

    let (client, _) = user(&dep, |_| {}).await;
    let mut call = client.call_oracle(CallType::Audio).await.unwrap();
    let event_id = call.id().event_id().to_string();
    let event_id = matrix_sdk::ruma::EventId::parse(&event_id).unwrap();

    // The intruder sees the DM (the bot account joined it) and the event, for ~3 s of syncs
    // (time for any room key or forwarded key to arrive), but cannot decrypt it.
    let mut kind = None;
    for _ in 0..6 {
        intruder
            .sync_once(SyncSettings::default().timeout(Duration::from_millis(500)))
            .await
            .unwrap();
        let room = intruder
            .joined_rooms()
            .into_iter()
            .find(|r| r.room_id() == call.matrix_room().room_id());
        if let Some(room) = room
            && let Ok(ev) = room.event(&event_id, None).await
        {
            kind = Some(ev.kind);
        }
    }
    match kind {
        Some(TimelineEventKind::UnableToDecrypt { .. }) => {}
        Some(TimelineEventKind::Decrypted(_)) => {
            panic!("the device the homeserver added decrypted the call event")
        }
        Some(TimelineEventKind::PlainText { .. }) => panic!("the call event was sent in the clear"),
        None => panic!("the intruder never saw the call event"),
    }
    // The client noticed the device and excluded it explicitly.
    let bot = matrix_sdk::ruma::UserId::parse(dep.oracle_user_id.as_str()).unwrap();
    let seen = client
        .matrix()
        .encryption()
        .get_device(&bot, intruder_device.as_str().into())
        .await
        .unwrap()
        .expect("the user's client knows the added device");
    assert!(seen.is_blacklisted(), "the added device is blacklisted");
    call.end().await.unwrap();

    // A bot whose pinned device is gone: the client refuses to send at all.
    let (client2, cfg2) = user(&dep, |_| {}).await;
    let mut c = client2.call_oracle(CallType::Audio).await.unwrap();
    c.end().await.unwrap();
    let before = client2
        .list_calls(&Default::default())
        .await
        .unwrap()
        .calls
        .len();
    drop(client2);
    let store = cfg2.store_dir.join("pins.json");
    let mut pins: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&store).unwrap()).unwrap();
    let did = dep.oracle_did.to_string();
    pins["oracles"][did.as_str()]["botDevices"][0]["deviceId"] = "GONEDEVICE".into();
    std::fs::write(&store, pins.to_string()).unwrap();
    // The server still publishes its real device, so the trust store refuses first.
    let client2 = OracleClient::connect(cfg2, Login::Restore).await.unwrap();
    match client2.call_oracle(CallType::Audio).await {
        Err(CallError::BotDeviceChanged { pinned, .. }) => assert!(pinned.contains("GONEDEVICE")),
        Err(e) => panic!("expected BotDeviceChanged, got {e}"),
        Ok(_) => panic!("a call was sent without a pinned bot device"),
    }
    assert_eq!(
        client2
            .list_calls(&Default::default())
            .await
            .unwrap()
            .calls
            .len(),
        before
    );
    dep.stop().await;
}

const BIN: &str = env!("CARGO_BIN_EXE_oracle-lab");

fn kt_directory(dep: &Deployment) -> KtDirectory {
    KtDirectory::new(Path::new(BIN), dep.dir.join("kt"), &dep.oracle_did).unwrap()
}

async fn well_known(dep: &Deployment) -> WellKnown {
    local_kt::well_known(&dep.server.url).await.unwrap()
}

async fn publish(
    service: &KtService,
    token: &str,
    did: &Did,
    record: &OracleRecord,
) -> SignedCheckpoint {
    local_kt::publish(service, token, did, record)
        .await
        .unwrap()
}

/// An agent's configuration for `dep` with `[key_transparency]` naming `service`, resolved
/// (which verifies the oracle's record).
async fn agent_checking_kt(
    dep: &Deployment,
    kt: &KtDirectory,
    service: &KtService,
) -> Result<oracle_calls_agent::AgentConfig, oracle_calls_agent::ConfigError> {
    let mut file = dep.agent_file_config(1, None).unwrap();
    file.key_transparency = Some(oracle_calls_agent::KtSection {
        url: service.base.clone(),
        public_key_file: kt.dir.join("keys").join("public-key.json"),
    });
    dep.resolve_agent_config(&file).await.map_err(|e| {
        e.downcast::<oracle_calls_agent::ConfigError>()
            .unwrap_or_else(|e| panic!("not a configuration error: {e}"))
    })
}

async fn call_count(client: &OracleClient) -> usize {
    client
        .list_calls(&Default::default())
        .await
        .unwrap()
        .calls
        .len()
}

fn stored_checkpoint(store_dir: &Path, directory: &DirectoryPublicKey) -> SignedCheckpoint {
    let pins: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(store_dir.join("pins.json")).unwrap())
            .unwrap();
    serde_json::from_value(pins["ktCheckpoints"][directory.key_id().to_string()].clone()).unwrap()
}

/// Key transparency (PROTOCOL §12): the client checks the oracle's server against the record
/// the directory proves. (1) With the record published, the call connects; the record and the
/// directory's checkpoint are stored. (2) The server swaps its key without the operator
/// publishing it: refused as a mismatch with the verified record, nothing sent. (3) Once the
/// new record is published, the changed key is refused naming the epoch of the change; (4)
/// accepting exactly the new key, the call connects. (5) A directory restarted from an older
/// copy of its log (a rollback) is refused.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_key_transparency_the_server_must_agree_with_the_oracles_verified_record() {
    init_logs();
    let _serial = SERIAL.lock().await;
    let mut dep = Deployment::start(Stack::running().unwrap(), DeployOptions::new(temp_dir()))
        .await
        .unwrap();
    let kt = kt_directory(&dep);
    let service = kt.start("data").unwrap();
    let first = record_of(&well_known(&dep).await);
    let one = publish(&service, &kt.token, &dep.oracle_did, &first).await;
    assert_eq!(one.checkpoint.epoch, 1);
    // An older copy of the directory's log, for (5).
    drop(service);
    let copy = kt.dir.join("data-epoch1");
    std::fs::create_dir_all(&copy).unwrap();
    for f in std::fs::read_dir(kt.dir.join("data")).unwrap() {
        let f = f.unwrap();
        std::fs::copy(f.path(), copy.join(f.file_name())).unwrap();
    }
    let service = kt.start("data").unwrap();

    // (1)
    let (client, cfg) = user(&dep, |c| c.key_transparency = Some(kt.config(&service))).await;
    let mut call = client.call_oracle(CallType::Audio).await.unwrap();
    assert!(echo_envelope(&mut call, 2.0).await.unwrap() > 0.6);
    call.end().await.unwrap();
    let pinned = client.oracle_trust().unwrap().unwrap();
    assert_eq!(
        (
            pinned.kt_epoch,
            pinned.kt_version,
            pinned.kt_record.as_ref()
        ),
        (Some(1), Some(1), Some(&first))
    );
    assert_eq!(pinned.matrix_user_id, first.matrix_user_id);
    assert_eq!(pinned.bot_devices, first.bot_devices);
    assert_eq!(stored_checkpoint(&cfg.store_dir, &kt.public), one);
    let old_key = pinned.keys[0].key_id.clone();
    let calls_before = call_count(&client).await;
    // An agent configured with the directory verifies the record at start and runs.
    agent_checking_kt(&dep, &kt, &service).await.unwrap();

    // (2)
    let new = dep.replace_oracle_key(KeyScheme::HpkeP256).await.unwrap();
    let new_key = new.key_id().to_string();
    // An agent holding the new, unpublished key refuses to start: callers who verify the
    // record would never seal to it.
    match agent_checking_kt(&dep, &kt, &service).await {
        Err(oracle_calls_agent::ConfigError::KeyTransparency(why)) => {
            assert!(
                why.contains(&new_key) && why.contains("verified record"),
                "{why}"
            )
        }
        other => panic!("expected a key-transparency refusal, got {other:?}"),
    }
    match client.call_oracle(CallType::Audio).await {
        Err(CallError::KtMismatch {
            oracle,
            what,
            record,
            served,
        }) => {
            assert_eq!(oracle, dep.oracle_did.to_string());
            assert_eq!(what, "keys");
            assert_eq!((record, served), (old_key.clone(), new_key.clone()));
        }
        Err(e) => panic!("expected KtMismatch, got {e}"),
        Ok(_) => panic!("a call was sealed to a key the directory does not list"),
    }
    assert_eq!(call_count(&client).await, calls_before, "nothing was sent");

    // (3)
    let second = record_of(&well_known(&dep).await);
    assert_eq!(second.keys.len(), 1);
    assert_eq!(second.keys[0].key_id, new_key);
    let two = publish(&service, &kt.token, &dep.oracle_did, &second).await;
    assert_eq!(two.checkpoint.epoch, 2);
    match client.call_oracle(CallType::Audio).await {
        Err(e @ CallError::OracleKeyChanged { .. }) => {
            let text = e.to_string();
            let CallError::OracleKeyChanged {
                pinned,
                offered,
                epoch,
                ..
            } = e
            else {
                unreachable!()
            };
            assert_eq!(
                (pinned, offered, epoch),
                (old_key, new_key.clone(), Some(2))
            );
            assert!(text.contains("epoch 2"), "{text}");
        }
        Err(e) => panic!("expected OracleKeyChanged, got {e}"),
        Ok(_) => panic!("a call was sealed to a key the user never accepted"),
    }
    assert_eq!(call_count(&client).await, calls_before, "nothing was sent");
    drop(client);

    // (4)
    let mut cfg = cfg;
    cfg.trust_override.oracle_key = Some(new_key.clone());
    let client = OracleClient::connect(cfg.clone(), Login::Restore)
        .await
        .unwrap();
    let mut call = client.call_oracle(CallType::Audio).await.unwrap();
    assert!(echo_envelope(&mut call, 2.0).await.unwrap() > 0.6);
    call.end().await.unwrap();
    let now = client.oracle_trust().unwrap().unwrap();
    assert_eq!(now.keys[0].key_id, new_key);
    assert_eq!(
        (now.kt_epoch, now.kt_version, now.kt_record.as_ref()),
        (Some(2), Some(2), Some(&second))
    );
    assert_eq!(stored_checkpoint(&cfg.store_dir, &kt.public), two);
    let calls_before = call_count(&client).await;
    drop(client);

    // (5) The directory, restarted from the copy of its log at epoch 1.
    drop(service);
    let old = kt.start("data-epoch1").unwrap();
    cfg.key_transparency = Some(kt.config(&old));
    let client = OracleClient::connect(cfg.clone(), Login::Restore)
        .await
        .unwrap();
    match client.call_oracle(CallType::Audio).await {
        Err(CallError::KeyTransparency(oracle_calls_kt::Error::Rollback { stored, offered })) => {
            assert_eq!((stored, offered), (2, 1));
        }
        Err(e) => panic!("expected a rollback, got {e}"),
        Ok(_) => panic!("a call went through a rolled-back directory"),
    }
    assert_eq!(call_count(&client).await, calls_before, "nothing was sent");
    assert_eq!(
        stored_checkpoint(&cfg.store_dir, &kt.public),
        two,
        "the stored checkpoint is kept"
    );
    drop(old);
    dep.stop().await;
}

/// A server added to the oracle after its users pinned the bot's devices (scale-out): its own
/// bot device is in no user's trust store, so without key transparency it gets no room keys
/// and cannot read their call events (a sync reaching it fails, 422). Once the operator
/// publishes the record that lists the new device, a user who verifies it pins the device,
/// and a call whose sync reaches the new server connects and is heard.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_server_added_after_pinning_is_trusted_once_the_verified_record_lists_it() {
    init_logs();
    let _serial = SERIAL.lock().await;
    let mut opts = DeployOptions::new(temp_dir());
    opts.db = oracle_calls_lab::local::Db::Postgres;
    let dep = Deployment::start(Stack::running().unwrap(), opts)
        .await
        .unwrap();
    let kt = kt_directory(&dep);
    let service = kt.start("data").unwrap();
    let first = record_of(&well_known(&dep).await);
    assert_eq!(first.bot_devices.len(), 1);
    publish(&service, &kt.token, &dep.oracle_did, &first).await;
    let (client, cfg) = user(&dep, |c| c.key_transparency = Some(kt.config(&service))).await;
    let mut call = client.call_oracle(CallType::Audio).await.unwrap();
    call.end().await.unwrap();
    drop(client);
    // A user without key transparency pins the same one device.
    let (plain, plain_cfg) = user(&dep, |_| {}).await;
    let mut c = plain.call_oracle(CallType::Audio).await.unwrap();
    c.end().await.unwrap();
    drop(plain);

    // The second server: the well-known now lists its device too.
    let second = dep
        .start_another_server("127.0.0.1:0".parse().unwrap())
        .await
        .unwrap();
    let wk = well_known(&dep).await;
    assert_eq!(wk.matrix_devices.len(), 2);
    let added = wk
        .matrix_devices
        .iter()
        .find(|d| !first.bot_devices.contains(d))
        .unwrap()
        .clone();
    // The same user, its syncs to the new server.
    let mut via_second = cfg.clone();
    via_second.server_url = second.url.clone();
    let client = OracleClient::connect(via_second.clone(), Login::Restore)
        .await
        .unwrap();
    // Before the operator publishes it, the served list disagrees with the verified record.
    match client.call_oracle(CallType::Audio).await {
        Err(CallError::KtMismatch { what, .. }) => assert_eq!(what, "matrixDevices"),
        Err(e) => panic!("expected KtMismatch, got {e}"),
        Ok(_) => panic!("a call went out with a device the directory does not list"),
    }
    publish(&service, &kt.token, &dep.oracle_did, &record_of(&wk)).await;
    let mut call = client.call_oracle(CallType::Audio).await.unwrap();
    assert!(echo_envelope(&mut call, 2.0).await.unwrap() > 0.6);
    call.end().await.unwrap();
    let pinned = client.oracle_trust().unwrap().unwrap();
    assert!(pinned.bot_devices.contains(&added), "{pinned:?}");
    assert_eq!(pinned.bot_devices.len(), 2);
    drop(client);

    // Without key transparency the user who pinned before the scale-out still cannot reach
    // the new server (the documented limit): its sync there is refused, not silently served.
    let mut plain_second = plain_cfg.clone();
    plain_second.server_url = second.url.clone();
    let plain = OracleClient::connect(plain_second, Login::Restore)
        .await
        .unwrap();
    let pinned = plain.oracle_trust().unwrap().unwrap();
    assert_eq!(
        pinned.bot_devices.len(),
        1,
        "pinned before the scale-out: one device"
    );
    match plain.call_oracle(CallType::Audio).await {
        Err(e) => {
            let e = e.to_string();
            assert!(
                e.contains("422") && e.contains("could not decrypt"),
                "expected the new server's 422, got {e}"
            );
        }
        Ok(mut c) => {
            c.end().await.unwrap();
            panic!("the new server read an event whose key its device never got");
        }
    }
    drop(plain);
    second.stop().await;
    dep.stop().await;
}

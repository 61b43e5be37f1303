//! Checks behind the demo's verification block: each one asks a real system (the homeserver,
//! the server's database file, LiveKit) rather than trusting our own bookkeeping.

use std::path::Path;

use anyhow::{Context as _, bail};
use base64::Engine as _;
use matrix_sdk::room::{IncludeRelations, RelationsOptions};
use matrix_sdk::ruma::api::Direction;
use matrix_sdk::ruma::events::relation::RelationType;
use oracle_calls_client::{Call, OracleClient};
use oracle_calls_crypto::{
    CallContext, OpenedKey, OracleKeyPair, Prekey, PrekeyId, PrekeySecret, Recipient,
};
use oracle_calls_proto::{CallId, CallStatus, KeyEnvelope};
use serde_json::Value;
use zeroize::Zeroizing;

/// Fetches the call event from the homeserver as raw JSON (what the server stores) and
/// returns its `type`.
///
/// # Errors
/// HTTP or JSON failures.
pub async fn stored_event_type(
    client: &OracleClient,
    call: &Call,
) -> anyhow::Result<(String, bool)> {
    let m = client.matrix();
    let token = m.access_token().context("no access token")?;
    let url = format!(
        "{}/_matrix/client/v3/rooms/{}/event/{}",
        m.homeserver().as_str().trim_end_matches('/'),
        urlenc(call.matrix_room().room_id().as_str()),
        urlenc(call.id().event_id().as_str()),
    );
    let text = reqwest::Client::new()
        .get(url)
        .bearer_auth(token)
        .send()
        .await?
        .error_for_status()?
        .text()
        .await?;
    let v: Value = serde_json::from_str(&text)?;
    let leaks =
        text.contains("encryptionKey") || text.contains(call.content().encryption_key.as_str());
    let ty = v.get("type").and_then(Value::as_str).unwrap_or("");
    Ok((ty.to_owned(), leaks))
}

/// `s` as one URL path segment: every byte outside `[A-Za-z0-9-._~]` as `%XX`.
pub fn urlenc(s: &str) -> String {
    s.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}

/// The status in the newest `m.replace` edit of the call event (the user's or the oracle's
/// bot's), decrypted by the user's device.
///
/// # Errors
/// Matrix failures, or no edit found.
pub async fn latest_status_in_matrix(
    client: &OracleClient,
    call: &Call,
) -> anyhow::Result<CallStatus> {
    // The room keys of the bot's edits arrive as to-device messages: sync for them first.
    client
        .matrix()
        .sync_once(matrix_sdk::config::SyncSettings::default().timeout(std::time::Duration::ZERO))
        .await?;
    let opts = RelationsOptions {
        dir: Direction::Backward,
        include_relations: IncludeRelations::RelationsOfType(RelationType::Replacement),
        ..Default::default()
    };
    let rel = call
        .matrix_room()
        .relations(call.id().event_id().as_str().try_into()?, opts)
        .await?;
    for ev in &rel.chunk {
        let v: Value = ev.raw().deserialize_as()?;
        if let Some(s) = v
            .pointer("/content/m.new_content/callStatus")
            .and_then(Value::as_str)
        {
            return s.parse().map_err(|e| anyhow::anyhow!("{e}"));
        }
    }
    bail!("no decryptable edit of the call event found")
}

/// Opens the call's envelope with the oracle key (as an auditor holding it) and searches the
/// server's SQLite files for the key in raw, hex and base64 forms. Returns how many bytes were
/// scanned; errors if the key is found.
///
/// # Errors
/// The key was found, or the files cannot be read.
///
/// A call sealed to a prekey is opened with the copy of the prekey store taken before the call
/// (`prekeys_before`): after the call the store no longer holds it.
pub fn database_holds_no_key(
    sqlite: &Path,
    oracle_key: &OracleKeyPair,
    prekeys_before: &[Prekey],
    call: &Call,
    call_id: &CallId,
) -> anyhow::Result<usize> {
    let c = call.content();
    let ctx = context(call, call_id);
    let envelope = match oracle_calls_crypto::recipient(&c.encryption_key)? {
        Recipient::Prekey { prekey_id, .. } => {
            let prekey = prekeys_before
                .iter()
                .find(|p| p.id == prekey_id)
                .context("the call's prekey is not in the copy of the store taken before it")?;
            oracle_calls_crypto::open_prekey_layer(prekey, &c.encryption_key, &ctx)?
        }
        _ => c.encryption_key.clone(),
    };
    let key = match oracle_calls_crypto::open(oracle_key, &envelope, &ctx)? {
        OpenedKey::Bound(k) => k,
        OpenedKey::Unbound(_) => bail!("the demo call used an unbound envelope"),
    };
    let raw = Zeroizing::new(key.dangerous_expose_bytes().to_vec());
    let hex = Zeroizing::new(hex_lower(&raw));
    let forms: Vec<Zeroizing<Vec<u8>>> = [
        raw.to_vec(),
        hex.as_bytes().to_vec(),
        hex.to_uppercase().into_bytes(),
        base64::engine::general_purpose::STANDARD
            .encode(&raw[..])
            .into_bytes(),
        base64::engine::general_purpose::URL_SAFE_NO_PAD
            .encode(&raw[..])
            .into_bytes(),
    ]
    .into_iter()
    .map(Zeroizing::new)
    .collect();
    let mut scanned = 0;
    for suffix in ["", "-wal", "-shm", "-journal"] {
        let p = std::path::PathBuf::from(format!("{}{suffix}", sqlite.display()));
        let Ok(bytes) = std::fs::read(&p) else {
            continue;
        };
        scanned += bytes.len();
        for f in &forms {
            if bytes.windows(f.len()).any(|w| w == f.as_slice()) {
                bail!("the call key is in {}", p.display());
            }
        }
    }
    if scanned == 0 {
        bail!("no database file at {}", sqlite.display());
    }
    Ok(scanned)
}

fn context(call: &Call, call_id: &CallId) -> CallContext {
    let c = call.content();
    CallContext::new(
        c.session_id.clone(),
        call_id.room_name().clone(),
        c.user_did.clone(),
        c.oracle_did.clone(),
        c.call_type,
    )
}

/// Every prekey private half in a key holder's store (what someone who copies it gets).
///
/// # Errors
/// The store cannot be read.
pub fn read_prekey_store(dir: &Path) -> anyhow::Result<Vec<Prekey>> {
    let mut out = Vec::new();
    for entry in std::fs::read_dir(dir).with_context(|| format!("reading {}", dir.display()))? {
        let path = entry?.path();
        let name = path
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        let Some((hex, kind)) = name.split_once('.') else {
            continue;
        };
        let Ok(id) = PrekeyId::from_hex(hex) else {
            continue;
        };
        let bytes = Zeroizing::new(std::fs::read(&path)?);
        let Ok(secret) = <[u8; 32]>::try_from(bytes.as_slice()) else {
            continue;
        };
        out.push(Prekey {
            id,
            secret: PrekeySecret::from_bytes(secret),
            last_resort: kind == "last-resort",
        });
    }
    Ok(out)
}

/// The envelopes the key holder keeps for running calls (`<id>.live` files: the outer
/// envelope, a newline, the inner one sealed to the long-term key), as an attacker who takes
/// the store would find them.
///
/// # Errors
/// The store cannot be read.
pub fn kept_envelopes(dir: &Path) -> anyhow::Result<Vec<KeyEnvelope>> {
    let mut out = Vec::new();
    for entry in std::fs::read_dir(dir).with_context(|| format!("reading {}", dir.display()))? {
        let path = entry?.path();
        if path.extension().is_some_and(|e| e == "live") {
            let text = std::fs::read_to_string(&path).unwrap_or_default();
            out.extend(text.lines().filter_map(|l| KeyEnvelope::parse(l).ok()));
        }
    }
    Ok(out)
}

/// Waits (at most `limit`) until the key holder keeps no running call's envelope: every
/// agent's job is over.
///
/// # Errors
/// Some are still kept after `limit`.
pub async fn wait_calls_over(dir: &Path, limit: std::time::Duration) -> anyhow::Result<()> {
    let deadline = tokio::time::Instant::now() + limit;
    loop {
        let kept = kept_envelopes(dir)?.len();
        if kept == 0 {
            return Ok(());
        }
        if tokio::time::Instant::now() >= deadline {
            bail!("the key holder still keeps {kept} envelope(s) of running calls after {limit:?}");
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
}

/// Forward secrecy after the call: the envelope is sealed to a one-time prekey, the key
/// holder's store no longer holds it (once the agent's job is over: it keeps the inner
/// envelope while the call runs), the oracle's long-term key alone meets the prekey layer,
/// and nothing left in the store opens the envelope. Returns the prekey's id.
///
/// # Errors
/// Any of those does not hold.
pub async fn past_call_stays_closed(
    oracle_key: &OracleKeyPair,
    store: &Path,
    call: &Call,
    call_id: &CallId,
) -> anyhow::Result<String> {
    wait_calls_over(store, std::time::Duration::from_secs(15)).await?;
    let c = call.content();
    let ctx = context(call, call_id);
    let Recipient::Prekey { prekey_id, .. } = oracle_calls_crypto::recipient(&c.encryption_key)?
    else {
        bail!("the call's key was not sealed to a prekey");
    };
    match oracle_calls_crypto::open(oracle_key, &c.encryption_key, &ctx) {
        Err(oracle_calls_crypto::EnvelopeError::PrekeyLayer) => {}
        other => bail!("the long-term key alone: {other:?}"),
    }
    let left = read_prekey_store(store)?;
    if left.iter().any(|p| p.id == prekey_id) {
        bail!("the store still holds prekey {prekey_id}");
    }
    for p in &left {
        if let Ok(inner) = oracle_calls_crypto::open_prekey_layer(p, &c.encryption_key, &ctx)
            && oracle_calls_crypto::open(oracle_key, &inner, &ctx).is_ok()
        {
            bail!("prekey {} of the store opened the envelope", p.id);
        }
    }
    for kept in kept_envelopes(store)? {
        if oracle_calls_crypto::open(oracle_key, &kept, &ctx).is_ok() {
            bail!("an envelope kept in the store opened the call key");
        }
    }
    Ok(format!("{prekey_id} ({} prekeys left tried)", left.len()))
}

fn hex_lower(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

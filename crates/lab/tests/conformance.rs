//! Conformance with docs/PROTOCOL.md, step by step, as an outside integrator who has only the
//! document would place and end a call against the real stack (Synapse, livekit-server, the
//! oracle-calls server and its echo agent). It does not use the project's client SDK: the
//! Matrix side is a plain `matrix_sdk::Client`, the server API is plain HTTP with JSON written
//! from the document, the call context and envelope header are built here from §3–4, and the
//! HPKE seal is Python `cryptography`'s. With forward secrecy (§13, the deployment's default)
//! the client claims a signed prekey, checks its Ed25519 signature in Python over the bytes
//! §13.2 names, and wraps the v1 envelope into a v2 one (§13.3) with Python's HPKE. Media uses
//! the project's LiveKit crate with keys derived per §5.1 (its interop with LiveKit's own SDKs
//! is proven in the rtc crate's tests).
//! Where the server and the document disagree, this test asserts what the DOCUMENT says.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]

use std::io::Write as _;
use std::process::{Command, Stdio};
use std::time::Duration;

use base64::Engine as _;
use base64::engine::general_purpose::{STANDARD_NO_PAD, URL_SAFE_NO_PAD};
use matrix_sdk::config::SyncSettings;
use matrix_sdk::encryption::LocalTrust;
use matrix_sdk::ruma::api::client::room::create_room::v3::{
    Request as CreateRoomRequest, RoomPreset,
};
use matrix_sdk::ruma::events::room::member::MembershipState;
use matrix_sdk::ruma::serde::Raw;
use matrix_sdk::ruma::{OwnedUserId, UserId};
use matrix_sdk_base::crypto::CollectStrategy;
use oracle_calls_crypto::KeyDerivation;
use oracle_calls_crypto::frame::{KeyRing, KeyRingOptions};
use oracle_calls_lab::analysis;
use oracle_calls_lab::local::{DeployOptions, Deployment, Stack};
use oracle_calls_rtc::{E2eeOptions, RoomEvent, RoomOptions};
use serde_json::{Value, json};
use sha2::{Digest as _, Sha256};

/// One call scenario at a time (the stack's servers share two cores with the tests).
static SERIAL: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

fn init_logs() {
    oracle_calls_test_support::init_test_logs("warn");
}

fn random<const N: usize>() -> [u8; N] {
    let mut b = [0u8; N];
    rand::fill(&mut b[..]);
    b
}

fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

fn temp_dir() -> std::path::PathBuf {
    let d = std::env::temp_dir().join(format!("oc-conformance-{}", hex(&random::<6>())));
    std::fs::create_dir_all(&d).unwrap();
    d
}

/// §1: a callId in a URL path: every byte outside `[A-Za-z0-9-._~]` as `%XX`, upper-case hex.
fn percent_encode(s: &str) -> String {
    s.bytes()
        .map(|b| {
            if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~') {
                char::from(b).to_string()
            } else {
                format!("%{b:02X}")
            }
        })
        .collect()
}

/// §3: `"oracle-calls/call-key/v1" || u32be(len) || field …` for sessionId, roomId, userDid,
/// oracleDid, callType.
fn context_bytes(fields: [&str; 5]) -> Vec<u8> {
    let mut c = b"oracle-calls/call-key/v1".to_vec();
    for f in fields {
        c.extend_from_slice(&u32::try_from(f.len()).unwrap().to_be_bytes());
        c.extend_from_slice(f.as_bytes());
    }
    c
}

/// §4.1: the SubjectPublicKeyInfo DER of a published "raw" public key, for the schemes this
/// test can seal to (the fixed DER prefixes of RFC 5480 P-256 and RFC 8410 X25519 keys).
fn spki_der(scheme: &str, raw: &[u8]) -> Option<Vec<u8>> {
    let prefix = match (scheme, raw.len()) {
        ("hpke-p256", 65) if raw[0] == 4 => "3059301306072a8648ce3d020106082a8648ce3d030107034200",
        ("hpke-x25519", 32) => "302a300506032b656e032100",
        _ => return None,
    };
    let mut der: Vec<u8> = (0..prefix.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&prefix[i..i + 2], 16).unwrap())
        .collect();
    der.extend_from_slice(raw);
    Some(der)
}

/// §1 timestamps: UTC, exactly 3 fractional digits, `Z`.
fn now_timestamp() -> String {
    time::OffsetDateTime::now_utc()
        .format(time::macros::format_description!(
            "[year]-[month]-[day]T[hour]:[minute]:[second].[subsecond digits:3]Z"
        ))
        .unwrap()
}

fn is_doc_timestamp(s: &str) -> bool {
    let b = s.as_bytes();
    s.len() == 24
        && s.ends_with('Z')
        && b[19] == b'.'
        && b[20..23].iter().all(u8::is_ascii_digit)
        && time::OffsetDateTime::parse(s, &time::format_description::well_known::Rfc3339).is_ok()
}

/// §4 with an implementation no one here wrote: Python `cryptography`'s HPKE (RFC 9180 base
/// mode). Its public single-shot API takes no `aad`, so this calls the `_encrypt_with_aad` of
/// the same Rust binding (as the repo's vector generators do). The call key goes by stdin.
const PY_SEAL: &str = r#"
import base64, json, sys
from cryptography.hazmat.primitives import hpke
from cryptography.hazmat.primitives.asymmetric import ec, x25519
from cryptography.hazmat.bindings._rust import openssl as rust_openssl
req = json.load(sys.stdin)
b64 = req["publicKey"]
raw = base64.urlsafe_b64decode(b64 + "=" * (-len(b64) % 4))
if req["scheme"] == "hpke-p256":
    kem = hpke.KEM.P256
    pk = ec.EllipticCurvePublicKey.from_encoded_point(ec.SECP256R1(), raw)
elif req["scheme"] == "hpke-x25519":
    kem = hpke.KEM.X25519
    pk = x25519.X25519PublicKey.from_public_bytes(raw)
else:
    sys.exit("no HPKE suite for " + req["scheme"])
suite = hpke.Suite(kem, hpke.KDF.HKDF_SHA256, hpke.AEAD.AES_256_GCM)
header = bytes.fromhex(req["header"])
payload = rust_openssl.hpke._encrypt_with_aad(
    suite, bytes.fromhex(req["callKey"]), pk, info=bytes.fromhex(req["context"]), aad=header
)
text = base64.urlsafe_b64encode(header + payload).decode("ascii").rstrip("=")
print(json.dumps({"envelope": "v1." + req["scheme"] + "." + text, "payloadLen": len(payload)}))
"#;

/// §13.2 with an implementation no one here wrote: the signed prekey's fields decoded as the
/// document says (base64url, no padding, no stray bits, exact lengths, no unknown field), the
/// signed bytes built from the document, and the signature checked with Python
/// `cryptography`'s Ed25519 (OpenSSL), with S < L (RFC 8032 §5.1.7) checked here. Any failure
/// exits non-zero: the client refuses the call and sends nothing.
const PY_VERIFY_PREKEY: &str = r#"
import base64, json, struct, sys
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric import ed25519
L = 2**252 + 27742317777372353535851937790883648493  # RFC 8032: the group order
def b64url(field, text, n):
    if not isinstance(text, str) or "=" in text:
        sys.exit(field + ": not base64url without padding")
    try:
        raw = base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))
    except ValueError:
        sys.exit(field + ": not base64url without padding")
    if base64.urlsafe_b64encode(raw).decode("ascii").rstrip("=") != text:
        sys.exit(field + ": not base64url (stray bits or characters)")
    if len(raw) != n:
        sys.exit(f"{field}: must decode to {n} bytes, not {len(raw)}")
    return raw
def string(s):  # str(s) = u32be(length of s in UTF-8 bytes) || the UTF-8 bytes of s
    b = s.encode("utf-8")
    return struct.pack(">I", len(b)) + b
def signed_bytes(did, prekey_id, public, last_resort):
    return (string("oracle-calls/prekey/v1") + string(did) + prekey_id + public
            + bytes([1 if last_resort else 0]))
req = json.load(sys.stdin)
p = req["signedPrekey"]
if not isinstance(p, dict) or set(p) != {"prekeyId", "publicKey", "lastResort", "signature"}:
    sys.exit("a signed prekey has exactly prekeyId, publicKey, lastResort, signature: " + json.dumps(p))
if not isinstance(p["lastResort"], bool):
    sys.exit("lastResort: not a boolean")
signer = ed25519.Ed25519PublicKey.from_public_bytes(b64url("prekeySigningKey", req["prekeySigningKey"], 32))
prekey_id = b64url("prekeyId", p["prekeyId"], 16)
public = b64url("publicKey", p["publicKey"], 32)
signature = b64url("signature", p["signature"], 64)
if int.from_bytes(signature[32:], "little") >= L:
    sys.exit("signature: S is not below L")
message = signed_bytes(req["oracleDid"], prekey_id, public, p["lastResort"])
try:
    signer.verify(signature, message)
except InvalidSignature:
    sys.exit("the prekey is not signed by the oracle's prekey signing key for " + req["oracleDid"])
# The signature binds what §13.2 says it binds: another DID, or the other lastResort, fails.
for other in (signed_bytes(req["oracleDid"] + "-other", prekey_id, public, p["lastResort"]),
              signed_bytes(req["oracleDid"], prekey_id, public, not p["lastResort"])):
    try:
        signer.verify(signature, other)
        sys.exit("the signature also verifies over other bytes")
    except InvalidSignature:
        pass
print(json.dumps({"prekeyId": prekey_id.hex(), "publicKey": public.hex(),
                  "lastResort": p["lastResort"], "signedLen": len(message)}))
"#;

/// §13.3 with Python `cryptography`'s HPKE: the inner v1 envelope's ASCII text sealed to the
/// verified prekey (DHKEM X25519 / HKDF-SHA256 / AES-256-GCM, base mode, single shot), `info`
/// = the context bytes, `aad` = `prekeyId || context_digest`, through the same
/// `_encrypt_with_aad` as [`PY_SEAL`].
const PY_PREKEY_SEAL: &str = r#"
import base64, hashlib, json, sys
from cryptography.hazmat.primitives import hpke
from cryptography.hazmat.primitives.asymmetric import x25519
from cryptography.hazmat.bindings._rust import openssl as rust_openssl
req = json.load(sys.stdin)
inner = req["inner"]
version, scheme, _ = inner.split(".", 2)
if version != "v1" or len(inner) > 4096 or not all(0x21 <= ord(c) <= 0x7e for c in inner):
    sys.exit("the inner envelope must be a v1 envelope of at most 4096 printable ASCII bytes")
context = bytes.fromhex(req["context"])
header = bytes.fromhex(req["prekeyId"]) + hashlib.sha256(context).digest()[:16]
suite = hpke.Suite(hpke.KEM.X25519, hpke.KDF.HKDF_SHA256, hpke.AEAD.AES_256_GCM)
pk = x25519.X25519PublicKey.from_public_bytes(bytes.fromhex(req["publicKey"]))
payload = rust_openssl.hpke._encrypt_with_aad(
    suite, inner.encode("ascii"), pk, info=context, aad=header
)
body = header + payload
text = base64.urlsafe_b64encode(body).decode("ascii").rstrip("=")
print(json.dumps({"envelope": "v2." + scheme + "." + text, "payloadLen": len(payload)}))
"#;

/// Runs one of the Python scripts with `input` as JSON on stdin: its JSON answer, or what it
/// said on stderr when it exited non-zero.
fn python(script: &str, input: &Value) -> Result<Value, String> {
    let mut child = Command::new("python3")
        .args(["-c", script])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("python3 with `cryptography` >= 48 (scripts/test installs it)");
    child
        .stdin
        .take()
        .unwrap()
        .write_all(input.to_string().as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    if !out.status.success() {
        return Err(String::from_utf8_lossy(&out.stderr).into_owned());
    }
    Ok(serde_json::from_slice(&out.stdout).unwrap())
}

fn python_hpke_seal(
    scheme: &str,
    public_key: &str,
    header: &[u8],
    context: &[u8],
    call_key: &[u8; 32],
) -> (String, usize) {
    let input = json!({
        "scheme": scheme,
        "publicKey": public_key,
        "header": hex(header),
        "context": hex(context),
        "callKey": hex(call_key),
    });
    let v = python(PY_SEAL, &input).unwrap_or_else(|e| panic!("the Python HPKE seal failed: {e}"));
    (
        v["envelope"].as_str().unwrap().to_owned(),
        usize::try_from(v["payloadLen"].as_u64().unwrap()).unwrap(),
    )
}

/// §6.7: a failure answers `status` with `{"error": {"code", "message"}}`. `Err` says how the
/// answer differs from that.
async fn expect_error(
    r: reqwest::Response,
    status: u16,
    code: &str,
    what: &str,
) -> Result<String, String> {
    let got = r.status().as_u16();
    let text = r.text().await.unwrap_or_default();
    if got != status {
        return Err(format!(
            "{what}: expected {status} {code}, got {got}: {text}"
        ));
    }
    let body: Value = serde_json::from_str(&text)
        .map_err(|e| format!("{what}: the §6.7 error body is not JSON ({e}): {text}"))?;
    let err = &body["error"];
    if err["code"].as_str() != Some(code) {
        return Err(format!("{what}: expected error.code {code}: {body}"));
    }
    match err["message"].as_str() {
        Some(m) if !m.is_empty() => Ok(m.to_owned()),
        _ => Err(format!("{what}: no §6.7 error.message: {body}")),
    }
}

/// §6.5: the caller's call `call_id`, from `GET /calls?sessionId=…`.
async fn list_call(
    http: &reqwest::Client,
    server: &str,
    user_token: &str,
    session_id: &str,
    call_id: &str,
) -> Value {
    let r = http
        .get(format!("{server}/calls"))
        .query(&[("sessionId", session_id)])
        .bearer_auth(user_token)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 200, "§6.5 GET /calls");
    let page: Value = r.json().await.unwrap();
    page["calls"]
        .as_array()
        .expect("§6.5 calls")
        .iter()
        .find(|c| c["callId"].as_str() == Some(call_id))
        .unwrap_or_else(|| panic!("§6.5: the call is listed: {page}"))
        .clone()
}

async fn is_joined(room: &matrix_sdk::Room, user: &UserId) -> bool {
    matches!(
        room.get_member_no_sync(user).await,
        Ok(Some(m)) if *m.membership() == MembershipState::Join
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_outside_client_following_protocol_md_places_and_ends_a_call() {
    init_logs();
    let _serial = SERIAL.lock().await;
    let http = reqwest::Client::new();

    // ---- Provisioning: an oracle (echo agent) and a user @did-ixo-<hex>:<server>. ----
    let dir = temp_dir();
    let dep = Deployment::start(Stack::running().unwrap(), DeployOptions::new(&dir))
        .await
        .unwrap();
    let server = dep.server.url.clone();
    let homeserver = dep.stack.get("MATRIX_URL").unwrap().to_owned();
    let user_hex = hex(&random::<5>());
    let localpart = format!("did-ixo-{user_hex}");
    let (user_id, password) = dep.stack.user(&localpart).unwrap();
    let server_name = dep.stack.get("MATRIX_SERVER_NAME").unwrap().to_owned();
    assert_eq!(user_id, format!("@{localpart}:{server_name}"));
    // §9.2 (2): the ixo convention binds did:ixo:X to @did-ixo-X:<server_name>.
    let user_did = format!("did:ixo:{user_hex}");
    // §6.1: the oracle's DID comes from the application (here: the deployment), never the server.
    let oracle_did = dep.oracle_did.to_string();

    // §6.1: plain HTTP is allowed only to a loopback host.
    for url in [&server, &homeserver] {
        assert!(
            url.starts_with("https://")
                || ["http://127.", "http://localhost", "http://[::1]"]
                    .iter()
                    .any(|p| url.starts_with(p)),
            "{url}: http:// only to loopback"
        );
    }

    // ---- §6.1: the well-known document. ----
    let r = http
        .get(format!("{server}/.well-known/oracle-calls"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 200);
    let wk: Value = r.json().await.unwrap();
    assert_eq!(
        wk["oracleDid"].as_str(),
        Some(oracle_did.as_str()),
        "§6.1: the well-known names the oracle we chose"
    );
    let bot: OwnedUserId = wk["matrixUserId"]
        .as_str()
        .expect("§6.1 matrixUserId")
        .try_into()
        .unwrap();
    assert_eq!(bot.as_str(), dep.oracle_user_id);
    assert!(wk["agentName"].as_str().is_some_and(|s| !s.is_empty()));
    assert!(wk["livekitUrl"].as_str().is_some_and(|s| !s.is_empty()));
    // Keys: recompute each keyId (§4.1: SHA-256(SPKI DER)[0..16], 32 hex), skip a mismatch,
    // then take the first usable in the order hpke-p256, hpke-x25519, ecies-secp256k1,
    // rsa-oaep-256 (this test seals only the HPKE schemes).
    let keys = wk["keys"].as_array().expect("§6.1 keys");
    assert!(!keys.is_empty());
    let mut usable: Vec<(usize, String, String, [u8; 16])> = Vec::new();
    for k in keys {
        let scheme = k["scheme"].as_str().unwrap();
        let public = k["publicKey"].as_str().unwrap();
        let key_id = k["keyId"].as_str().unwrap();
        assert!(
            key_id.len() == 32
                && key_id
                    .bytes()
                    .all(|c| matches!(c, b'0'..=b'9' | b'a'..=b'f')),
            "§4.1: a key id is 32 lower-case hex chars: {key_id}"
        );
        let raw = URL_SAFE_NO_PAD
            .decode(public)
            .expect("§4.1: publicKey is unpadded base64url");
        let Some(der) = spki_der(scheme, &raw) else {
            continue;
        };
        let fp: [u8; 16] = Sha256::digest(&der)[..16].try_into().unwrap();
        assert_eq!(
            key_id,
            hex(&fp),
            "§6.1: the published keyId is the fingerprint of its publicKey"
        );
        let rank = [
            "hpke-p256",
            "hpke-x25519",
            "ecies-secp256k1",
            "rsa-oaep-256",
        ]
        .iter()
        .position(|s| *s == scheme)
        .unwrap();
        usable.push((rank, scheme.to_owned(), public.to_owned(), fp));
    }
    usable.sort_by_key(|u| u.0);
    let (_, scheme, public_key, key_id) = usable
        .into_iter()
        .next()
        .expect("a published HPKE key whose keyId is its fingerprint");
    assert_eq!(scheme, "hpke-p256", "the deployment publishes hpke-p256");
    // §6.1 + §13.1: prekeySigningKey, the Ed25519 key that signs the oracle's prekeys (32
    // bytes, base64url, 43 chars). The deployment offers forward secrecy, so it is published;
    // this client pins it on first use with the rest (§13.4).
    let prekey_signing_key = wk["prekeySigningKey"]
        .as_str()
        .expect("§6.1: prekeySigningKey (the deployment offers forward secrecy)")
        .to_owned();
    assert!(
        prekey_signing_key.len() == 43
            && URL_SAFE_NO_PAD
                .decode(&prekey_signing_key)
                .is_ok_and(|k| k.len() == 32),
        "§13.1: prekeySigningKey is 32 bytes in base64url (43 chars): {prekey_signing_key}"
    );
    // matrixDevices: a client refuses a well-known without them; we pin them all.
    let pinned: Vec<(String, String)> = wk["matrixDevices"]
        .as_array()
        .expect("§6.1 matrixDevices")
        .iter()
        .map(|d| {
            let id = d["deviceId"].as_str().unwrap().to_owned();
            let ed = d["ed25519"].as_str().unwrap().to_owned();
            assert_eq!(
                STANDARD_NO_PAD.decode(&ed).map(|k| k.len()).ok(),
                Some(32),
                "§6.1: ed25519 is 32 bytes in unpadded standard base64"
            );
            (id, ed)
        })
        .collect();
    assert!(
        !pinned.is_empty(),
        "§6.1: the running bot lists its device(s)"
    );

    // ---- §9.1: the encrypted DM with the bot, from a generic Matrix client. ----
    let matrix = matrix_sdk::Client::builder()
        .homeserver_url(&homeserver)
        .sqlite_store(dir.join("matrix-store"), None)
        .with_room_key_recipient_strategy(CollectStrategy::OnlyTrustedDevices)
        .build()
        .await
        .unwrap();
    matrix
        .matrix_auth()
        .login_username(&localpart, &password)
        .initial_device_display_name("conformance test")
        .send()
        .await
        .unwrap();
    matrix.sync_once(SyncSettings::default()).await.unwrap();
    let mut create = CreateRoomRequest::new();
    create.invite = vec![bot.clone()];
    create.is_direct = true;
    create.preset = Some(RoomPreset::TrustedPrivateChat);
    create.initial_state = vec![Raw::from_json(
        serde_json::value::to_raw_value(&json!({
            "type": "m.room.encryption",
            "state_key": "",
            "content": {"algorithm": "m.megolm.v1.aes-sha2"},
        }))
        .unwrap(),
    )];
    let room = matrix.create_room(create).await.unwrap();
    // The bot MUST have joined before the event is sent (15 s, as the document's client).
    let deadline = tokio::time::Instant::now() + Duration::from_secs(15);
    while !is_joined(&room, &bot).await {
        assert!(
            tokio::time::Instant::now() < deadline,
            "§9.1: the bot joins every room it is invited to (15 s)"
        );
        matrix
            .sync_once(SyncSettings::default().timeout(Duration::from_millis(500)))
            .await
            .unwrap();
    }
    assert!(
        room.encryption_state().is_encrypted(),
        "§2: the room is encrypted"
    );
    // The bot's devices known (/keys/query); only the pinned ones (device id AND ed25519)
    // verified, every other device of the bot blacklisted, and "only trusted devices" sharing.
    let enc = matrix.encryption();
    let is_pinned = |d: &matrix_sdk::encryption::identities::Device| {
        pinned.iter().any(|(id, ed)| {
            id == d.device_id().as_str()
                && d.ed25519_key().map(|k| k.to_base64()).as_deref() == Some(ed.as_str())
        })
    };
    let mut devices = enc.get_user_devices(&bot).await.unwrap();
    if !devices.devices().any(|d| is_pinned(&d)) {
        enc.request_user_identity(&bot).await.unwrap();
        devices = enc.get_user_devices(&bot).await.unwrap();
    }
    let mut trusted = 0;
    for d in devices.devices() {
        if is_pinned(&d) {
            d.set_local_trust(LocalTrust::Verified).await.unwrap();
            trusted += 1;
        } else {
            d.set_local_trust(LocalTrust::BlackListed).await.unwrap();
        }
    }
    assert!(
        trusted > 0,
        "§9.1: a pinned bot device is on the homeserver"
    );

    // ---- §8.1: the OpenID token, from the homeserver, by raw HTTP (§13.6 step 1: the prekey
    // claim needs it before the envelope is made; sync uses it too). ----
    let access_token = matrix.access_token().expect("logged in");
    let r = http
        .post(format!(
            "{homeserver}/_matrix/client/v3/user/{}/openid/request_token",
            percent_encode(&user_id)
        ))
        .bearer_auth(&access_token)
        .json(&json!({}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 200);
    let openid: Value = r.json().await.unwrap();
    assert_eq!(openid["token_type"], "Bearer");
    assert_eq!(
        openid["matrix_server_name"].as_str(),
        Some(server_name.as_str())
    );
    assert!(openid["expires_in"].as_u64().is_some());
    let user_token = openid["access_token"].as_str().unwrap().to_owned();

    // ---- §13.4 (§13.6 step 2): claim a new prekey for this call, never retried (a retry uses
    // up another); a failed claim would refuse the call, never fall back to a v1 envelope. ----
    // The operator's view first (GET /prekeys, agent API key): the agent stocks the server at
    // its start (§13.5), so wait for one-time prekeys and the last-resort one to be there.
    let stock = |http: reqwest::Client, server: String, key: String| async move {
        let r = http
            .get(format!("{server}/prekeys"))
            .bearer_auth(key)
            .send()
            .await
            .unwrap();
        assert_eq!(r.status().as_u16(), 200, "§13.4 GET /prekeys");
        let v: Value = r.json().await.unwrap();
        (
            v["oneTime"].as_u64().expect("§13.4 oneTime"),
            v["lastResort"].as_bool().expect("§13.4 lastResort"),
        )
    };
    let agent_key = dep.agent_api_key.to_string();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    let stock_before = loop {
        let (one_time, last_resort) = stock(http.clone(), server.clone(), agent_key.clone()).await;
        if one_time > 0 && last_resort {
            break one_time;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "§13.5: the agent stocks the server with prekeys at its start ({one_time} one-time, last-resort {last_resort})"
        );
        tokio::time::sleep(Duration::from_millis(250)).await;
    };
    // No credentials: 401; an agent API key: 403 (the claim is the user's). Neither uses a
    // prekey up (checked with the stock below).
    let r = http
        .post(format!("{server}/prekeys/claim"))
        .send()
        .await
        .unwrap();
    expect_error(r, 401, "unauthorized", "§13.4 claim without credentials")
        .await
        .unwrap();
    let r = http
        .post(format!("{server}/prekeys/claim"))
        .bearer_auth(dep.agent_api_key.as_str())
        .send()
        .await
        .unwrap();
    expect_error(r, 403, "forbidden", "§13.4 claim with an agent API key")
        .await
        .unwrap();
    // The claim: the user's OpenID token, the body ignored.
    let r = http
        .post(format!("{server}/prekeys/claim"))
        .bearer_auth(&user_token)
        .send()
        .await
        .unwrap();
    let status = r.status().as_u16();
    let signed_prekey: Value = r.json().await.unwrap();
    assert_eq!(status, 200, "§13.4 claim: {signed_prekey}");
    // One one-time prekey handed out and removed; the last-resort prekey untouched.
    assert_eq!(
        stock(http.clone(), server.clone(), agent_key.clone()).await,
        (stock_before - 1, true),
        "§13.4: a claim removes the oldest one-time prekey (stock was {stock_before})"
    );

    // ---- §13.2 (§13.6 step 3): verify the signed prekey (in Python, from the document)
    // against the prekeySigningKey read above and the oracle DID we call; refuse the call
    // otherwise. ----
    let verified = python(
        PY_VERIFY_PREKEY,
        &json!({
            "signedPrekey": signed_prekey,
            "prekeySigningKey": prekey_signing_key,
            "oracleDid": oracle_did,
        }),
    )
    .unwrap_or_else(|e| panic!("§13.2: the claimed prekey does not verify: {e}"));
    assert_eq!(
        verified["lastResort"], false,
        "§13.1: with one-time prekeys in stock, the claim hands out a one-time prekey"
    );
    assert_eq!(
        verified["signedLen"].as_u64(),
        u64::try_from(4 + 22 + 4 + oracle_did.len() + 16 + 32 + 1).ok(),
        "§13.2: the signed bytes"
    );
    let prekey_id_hex = verified["prekeyId"].as_str().unwrap().to_owned();
    let prekey_public_hex = verified["publicKey"].as_str().unwrap().to_owned();
    // The same signed prekey with another oracle's DID is refused (§13.2: "and the DID it
    // called"), so nothing would be sent.
    let refused = python(
        PY_VERIFY_PREKEY,
        &json!({
            "signedPrekey": signed_prekey,
            "prekeySigningKey": prekey_signing_key,
            "oracleDid": format!("{oracle_did}-other"),
        }),
    );
    assert!(
        refused.is_err(),
        "§13.2: a prekey signed for another oracle DID is refused"
    );
    // §13.5 (ours): until the call opens it, the key holder's store holds the prekey's
    // private half (one file per prekey, named by the id's hex, crates/agent/src/prekeys.rs).
    let key_holder = dep
        .prekey_store()
        .expect("§13.5: the deployment has a key holder")
        .to_owned();
    let holds_prekey = |id_hex: &str| {
        std::fs::read_dir(&key_holder)
            .unwrap()
            .any(|e| e.unwrap().file_name().to_string_lossy().starts_with(id_hex))
    };
    assert!(
        holds_prekey(&prekey_id_hex),
        "§13.5: the claimed prekey is the key holder's"
    );

    // ---- §3–4 (§13.6 step 4): the call key, the context, the (inner) v1 envelope. ----
    let call_key: [u8; 32] = random();
    let room_name = format!("oc-{}", hex(&random::<16>())); // §1: 16 CSPRNG bytes
    let session_id = format!("sess-{}", hex(&random::<16>()));
    let context = context_bytes([&session_id, &room_name, &user_did, &oracle_did, "audio"]);
    let digest: [u8; 16] = Sha256::digest(&context)[..16].try_into().unwrap();
    let header = [key_id.as_slice(), digest.as_slice()].concat(); // §4.2
    let (inner, payload_len) = python_hpke_seal(&scheme, &public_key, &header, &context, &call_key);
    assert_eq!(
        payload_len,
        65 + 48,
        "§4.2: hpke-p256 payload = enc (65) || ct (48)"
    );
    assert!(inner.starts_with("v1.hpke-p256."));
    assert!(
        (1..=4096).contains(&inner.len()) && inner.bytes().all(|c| c.is_ascii_graphic()),
        "§13.3: the inner text is at most 4096 printable ASCII bytes"
    );

    // ---- §13.3 (§13.6 step 5): the v2 envelope: the inner v1 text sealed to the verified
    // prekey, with the same context. ----
    let sealed = python(
        PY_PREKEY_SEAL,
        &json!({
            "inner": inner,
            "context": hex(&context),
            "prekeyId": prekey_id_hex,
            "publicKey": prekey_public_hex,
        }),
    )
    .unwrap_or_else(|e| panic!("the Python prekey seal failed: {e}"));
    let envelope = sealed["envelope"].as_str().unwrap().to_owned();
    assert_eq!(
        sealed["payloadLen"].as_u64(),
        u64::try_from(32 + inner.len() + 16).ok(),
        "§13.3: payload = enc (32) || ct, len(ct) = len(inner) + 16"
    );
    // `<scheme>` names the inner envelope's; the body starts with prekeyId and the context
    // digest, and is 80 to 4176 bytes.
    let body = URL_SAFE_NO_PAD
        .decode(
            envelope
                .strip_prefix("v2.hpke-p256.")
                .expect("§13.3: v2.<inner scheme>."),
        )
        .unwrap();
    assert_eq!(
        hex(&body[..16]),
        prekey_id_hex,
        "§13.3: body[0..16] = prekeyId"
    );
    assert_eq!(body[16..32], digest, "§13.3: body[16..32] = context_digest");
    assert_eq!(body.len(), 80 + inner.len(), "§13.3: the body's length");
    assert!((80..=4176).contains(&body.len()), "§13.3: 80 to 4176 bytes");
    assert!(
        (1..=8192).contains(&envelope.len()) && envelope.bytes().all(|c| c.is_ascii_graphic()),
        "§2: 1–8192 printable ASCII, no spaces"
    );

    // ---- §2 + §9: the call event, sent once as a message event, carrying the v2 envelope. ----
    let started_at = now_timestamp();
    let content = json!({
        "callType": "audio",
        "callStatus": "pending",
        "callStartedAt": started_at,
        "encryptionKey": envelope,
        "sessionId": session_id,
        "roomId": room_name,
        "userDid": user_did,
        "oracleDid": oracle_did,
        "keyDerivation": "hkdf",
    });
    let sent = room
        .send_raw("m.ixo.oracles_call", content.clone())
        .await
        .unwrap();
    let event_id = sent.response.event_id.to_string();
    assert!(
        event_id.starts_with('$')
            && event_id.len() <= 255
            && event_id[1..]
                .bytes()
                .all(|c| c.is_ascii_alphanumeric() || b"+/=_-.:".contains(&c)),
        "§1: an event id the server accepts: {event_id}"
    );
    // §1: callId = <eventId>@<roomName>; in a path, percent-encoded.
    let call_id = format!("{event_id}@{room_name}");
    let call_path = format!("{server}/calls/{}", percent_encode(&call_id));
    assert!(!call_path.contains('$') && call_path.contains("%40oc-"));

    // ---- §6.7: failures before any call exists, each with the error body. ----
    // A path callId whose room name is not oc- + 32 hex: 400, checked before credentials.
    let r = http
        .post(format!(
            "{server}/calls/{}/sync",
            percent_encode(&format!("{event_id}@oc-XYZ"))
        ))
        .json(&json!({}))
        .send()
        .await
        .unwrap();
    expect_error(r, 400, "bad_request", "§1/§6.7 bad room name in the path")
        .await
        .unwrap();
    // No credentials: 401.
    let r = http
        .post(format!("{call_path}/sync"))
        .json(&json!({}))
        .send()
        .await
        .unwrap();
    expect_error(r, 401, "unauthorized", "§6.7 sync without credentials")
        .await
        .unwrap();
    // An agent API key on sync (user-only): 403.
    let r = http
        .post(format!("{call_path}/sync"))
        .bearer_auth(dep.agent_api_key.as_str())
        .json(&json!({}))
        .send()
        .await
        .unwrap();
    expect_error(r, 403, "forbidden", "§8.1 an API key on sync")
        .await
        .unwrap();

    // ---- §6.2: sync. ----
    let r = http
        .post(format!("{call_path}/sync"))
        .bearer_auth(&user_token)
        .json(&json!({"callId": call_id, "sessionId": session_id}))
        .send()
        .await
        .unwrap();
    let status = r.status().as_u16();
    let synced: Value = r.json().await.unwrap();
    assert_eq!(status, 200, "sync: {synced}");
    assert_eq!(synced["callId"].as_str(), Some(call_id.as_str()));
    assert_eq!(synced["status"], "active", "§6: the sync answer's status");
    let livekit_url = synced["livekitUrl"].as_str().unwrap().to_owned();
    let lk_token = synced["token"].as_str().unwrap().to_owned();
    let expires_at = synced["tokenExpiresAt"].as_str().unwrap();
    assert!(is_doc_timestamp(expires_at), "§1 timestamp: {expires_at}");
    let expires =
        time::OffsetDateTime::parse(expires_at, &time::format_description::well_known::Rfc3339)
            .unwrap();
    let ttl = (expires - time::OffsetDateTime::now_utc()).whole_seconds();
    assert!(
        (570..=600).contains(&ttl),
        "§6.2: valid livekit.token_ttl_secs (600) after the answer: {ttl} s"
    );
    // §7: the token: HS256, iss = the LiveKit API key, sub = the Matrix user id, exp =
    // tokenExpiresAt, a grant for this room.
    let parts: Vec<&str> = lk_token.split('.').collect();
    assert_eq!(parts.len(), 3, "a JWT");
    let jwt_header: Value =
        serde_json::from_slice(&URL_SAFE_NO_PAD.decode(parts[0]).unwrap()).unwrap();
    let claims: Value = serde_json::from_slice(&URL_SAFE_NO_PAD.decode(parts[1]).unwrap()).unwrap();
    assert_eq!(jwt_header["alg"], "HS256");
    assert_eq!(
        claims["iss"].as_str(),
        dep.stack.get("LIVEKIT_API_KEY").ok()
    );
    assert_eq!(
        claims["sub"].as_str(),
        Some(user_id.as_str()),
        "§7: identity = user id"
    );
    assert_eq!(
        claims["exp"].as_i64(),
        Some(expires.unix_timestamp()),
        "§7: exp"
    );
    assert_eq!(claims["nbf"], claims["iat"], "§7: nbf = iat");
    let video = &claims["video"];
    assert_eq!(video["room"].as_str(), Some(room_name.as_str()));
    for grant in ["roomJoin", "canPublish", "canSubscribe", "canPublishData"] {
        assert_eq!(video[grant], true, "§7 grant {grant}: {claims}");
    }

    // ---- §6.3 + §13.5: the key endpoint hands the agent our (v2) envelope and its context. ----
    let r = http
        .get(format!("{call_path}/key"))
        .bearer_auth(dep.agent_api_key.as_str())
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 200);
    let key_answer: Value = r.json().await.unwrap();
    for (field, want) in [
        ("encryptionKey", envelope.as_str()),
        ("userDid", user_did.as_str()),
        ("oracleDid", oracle_did.as_str()),
        ("sessionId", session_id.as_str()),
        ("roomId", room_name.as_str()),
        ("callType", "audio"),
        ("keyDerivation", "hkdf"),
        ("userIdentity", user_id.as_str()),
    ] {
        assert_eq!(
            key_answer[field].as_str(),
            Some(want),
            "§6.3 {field}: {key_answer}"
        );
    }

    // ---- §5.1 + §7: LiveKit, the call key's 32 raw bytes as HKDF material in slot 0. ----
    let opts = KeyRingOptions::default();
    assert_eq!(opts.ratchet_salt, b"LKFrameEncryptionKey", "§5.1 salt");
    assert_eq!(opts.keyring_size, 16, "§5.1: 16 slots");
    let mut key_ring = KeyRing::new(opts).unwrap();
    key_ring
        .set_key_material(0, KeyDerivation::Hkdf, &call_key)
        .unwrap();
    let (lk_room, mut events) = oracle_calls_rtc::Room::connect(
        &livekit_url,
        &lk_token,
        RoomOptions {
            e2ee: Some(E2eeOptions { key_ring }),
            ..Default::default()
        },
    )
    .await
    .unwrap();
    assert_eq!(
        lk_room.identity(),
        user_id,
        "§7: our identity is our user id"
    );
    let mic = lk_room.publish_audio("microphone").await.unwrap();
    // §7: the oracle is the participant `agent-` + at least one character; anyone else is
    // unexpected.
    let is_oracle = |id: &str| id.strip_prefix("agent-").is_some_and(|r| !r.is_empty());
    let mut others: Vec<String> = Vec::new();
    let agent = tokio::time::timeout(Duration::from_secs(15), async {
        loop {
            match events.recv().await {
                Some(RoomEvent::ParticipantJoined { identity, .. }) if is_oracle(&identity) => {
                    return identity;
                }
                Some(RoomEvent::ParticipantJoined { identity, .. }) => others.push(identity),
                Some(RoomEvent::Disconnected { reason }) => panic!("left the room: {reason}"),
                Some(_) => {}
                None => panic!("the room closed"),
            }
        }
    })
    .await
    .expect("§7: the agent joins as agent-<job id>");
    let speech = oracle_calls_lab::speech::synthesize(4.0, 21);
    let pcm = speech.clone();
    let speaker = tokio::spawn(async move { mic.play(&pcm).await });
    let mut heard: Vec<i16> = Vec::new();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(6);
    while let Ok(Some(ev)) = tokio::time::timeout_at(deadline, events.recv()).await {
        match ev {
            RoomEvent::AudioFrame { identity, pcm, .. } if identity == agent => {
                heard.extend(pcm);
            }
            RoomEvent::DecryptionFailed {
                identity, error, ..
            } => {
                panic!("§5: media from {identity} failed to decrypt: {error}")
            }
            RoomEvent::UnencryptedTrack { identity, .. } => {
                panic!("§7: {identity} published a track without encryption")
            }
            RoomEvent::ParticipantJoined { identity, .. } if !is_oracle(&identity) => {
                others.push(identity);
            }
            _ => {}
        }
    }
    speaker.await.unwrap().unwrap();
    assert!(others.is_empty(), "unexpected participants: {others:?}");
    let m = analysis::compare(&speech, &heard, 150);
    assert!(
        m.envelope > 0.6,
        "the echo oracle answers with our speech, end to end encrypted: {m:?} ({} samples)",
        heard.len()
    );

    // ---- §10: hanging up, in the document's order. ----
    // 1. report ended / userHangup.
    let r = http
        .post(format!("{call_path}/update"))
        .bearer_auth(&user_token)
        .json(&json!({"callStatus": "ended", "reason": "userHangup"}))
        .send()
        .await
        .unwrap();
    let status = r.status().as_u16();
    let summary: Value = r.json().await.unwrap();
    assert_eq!(status, 200, "update: {summary}");
    assert_eq!(summary["callStatus"], "ended", "§6.4: the call summary");
    assert_eq!(summary["reason"], "userHangup");
    let ended_at = summary["callEndedAt"].as_str().expect("§6.4 callEndedAt");
    assert!(is_doc_timestamp(ended_at), "§1 timestamp: {ended_at}");
    // 2. leave LiveKit.
    lk_room.leave().await;
    // 3. the m.replace edit, written from §2: the full content with the new status, callId and
    // callEndedAt, under m.new_content and again at top level.
    let mut new_content = content.clone();
    new_content["callStatus"] = json!("ended");
    new_content["callId"] = json!(call_id);
    new_content["callEndedAt"] = json!(now_timestamp());
    let mut edit = new_content.clone();
    edit["m.new_content"] = new_content;
    edit["m.relates_to"] = json!({"rel_type": "m.replace", "event_id": event_id});
    room.send_raw("m.ixo.oracles_call", edit).await.unwrap();

    // From here on every disagreement with the document is collected, so that one run names
    // them all; the test fails at the end if there is any.
    let mut disagreements: Vec<String> = Vec::new();
    let mut check = |ok: bool, what: String| {
        if !ok {
            disagreements.push(what);
        }
    };

    // §6.5: the list shows the call ended as userHangup, with the summary's fields.
    let listed = list_call(&http, &server, &user_token, &session_id, &call_id).await;
    check(
        listed["callStatus"] == "ended" && listed["reason"] == "userHangup",
        format!("§6.5: the call is listed as ended / userHangup: {listed}"),
    );
    for (field, want) in [
        ("callType", "audio"),
        ("sessionId", session_id.as_str()),
        ("roomId", room_name.as_str()),
        ("userDid", user_did.as_str()),
        ("oracleDid", oracle_did.as_str()),
        ("callStartedAt", started_at.as_str()),
    ] {
        check(
            listed[field].as_str() == Some(want),
            format!("§6 call summary {field} = {want}: {listed}"),
        );
    }
    // §6.2: a second sync of an ended call: 410 gone.
    let r = http
        .post(format!("{call_path}/sync"))
        .bearer_auth(&user_token)
        .json(&json!({}))
        .send()
        .await
        .unwrap();
    if let Err(e) = expect_error(r, 410, "gone", "§6.2 a second sync after the end").await {
        check(false, e);
    }
    // §2/§6.4: the same status with the same reason is an idempotent 200 …
    let r = http
        .post(format!("{call_path}/update"))
        .bearer_auth(&user_token)
        .json(&json!({"callStatus": "ended", "reason": "userHangup"}))
        .send()
        .await
        .unwrap();
    check(
        r.status().as_u16() == 200,
        format!("§6.4: ended/userHangup again is 200, got {}", r.status()),
    );
    // … ended again with another reason is 200 and keeps the reason that stuck (§6.4, §10) …
    let r = http
        .post(format!("{call_path}/update"))
        .bearer_auth(&user_token)
        .json(&json!({"callStatus": "ended", "reason": "mediaFailed"}))
        .send()
        .await
        .unwrap();
    let status = r.status().as_u16();
    let body: Value = r.json().await.unwrap_or(Value::Null);
    check(
        status == 200 && body["reason"] == "userHangup",
        format!(
            "§6.4 update {{callStatus: ended, reason: mediaFailed}} on a call ended as userHangup: 200 with reason userHangup, got {status} {body}"
        ),
    );
    // … a reason alone is 409 conflict.
    let r = http
        .post(format!("{call_path}/update"))
        .bearer_auth(&user_token)
        .json(&json!({"reason": "mediaFailed"}))
        .send()
        .await
        .unwrap();
    if let Err(e) = expect_error(
        r,
        409,
        "conflict",
        "§6.4 update {reason: mediaFailed} on a call ended as userHangup",
    )
    .await
    {
        check(false, e);
    }
    // §10: the first end decided the reason; later ones changed nothing.
    let listed = list_call(&http, &server, &user_token, &session_id, &call_id).await;
    check(
        listed["callStatus"] == "ended" && listed["reason"] == "userHangup",
        format!("§10: the reason stays userHangup: {listed}"),
    );
    // §6.3: the key endpoint answers 410 for an ended call.
    let r = http
        .get(format!("{call_path}/key"))
        .bearer_auth(dep.agent_api_key.as_str())
        .send()
        .await
        .unwrap();
    if let Err(e) = expect_error(r, 410, "gone", "§6.3 the key endpoint after the end").await {
        check(false, e);
    }
    // §13: the claimed prekey is gone. The server's stock is still one down (the claim took
    // it, the call used no other, and the deployment's agent restocks only below 20 of its 50),
    // with the last-resort prekey kept …
    let after = stock(http.clone(), server.clone(), agent_key.clone()).await;
    check(
        after == (stock_before - 1, true),
        format!(
            "§13.4: after the call the stock is {} one-time prekeys and the last-resort one, got {after:?}",
            stock_before - 1
        ),
    );
    // … and the key holder destroyed its private half once the call's layer was opened, and
    // what it kept for the running call once the agent's job ended (§13, §13.5: forward
    // secrecy from here on).
    let _ = oracle_calls_lab::verify::wait_calls_over(&key_holder, Duration::from_secs(15)).await;
    check(
        !holds_prekey(&prekey_id_hex),
        format!(
            "§13.5: the key holder still holds the one-time prekey {prekey_id_hex} after the call"
        ),
    );

    dep.stop().await;
    assert!(
        disagreements.is_empty(),
        "the server disagrees with docs/PROTOCOL.md:\n{}",
        disagreements.join("\n")
    );
}

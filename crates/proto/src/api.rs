//! Request and response bodies of the oracle-calls server API (DESIGN §3).

use serde::{Deserialize, Serialize};

use crate::{
    CallId, CallStatus, CallType, Did, KeyDerivation, KeyEnvelope, KeyScheme, ParseError, RoomName,
    SessionId, Timestamp,
};

/// `POST /calls/{callId}/sync` body. The call id is in the path; a `callId` in the body, if
/// present, must match it (the seed's client sends both).
#[derive(Clone, PartialEq, Eq, Debug, Default, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct SyncRequest {
    /// Must equal the path's call id when present.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub call_id: Option<CallId>,
    /// Must equal the event's `sessionId` when present.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub session_id: Option<SessionId>,
}

/// `POST /calls/{callId}/sync` answer: where and how the user joins the media room.
///
/// Its `Debug` prints `token: ".."`: the join token is a bearer secret.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct SyncResponse {
    /// The call.
    pub call_id: CallId,
    /// Its status after the sync (`active`).
    pub status: CallStatus,
    /// LiveKit signaling URL (`ws://…` / `wss://…`).
    pub livekit_url: String,
    /// A short-lived LiveKit join token for this room and this user only. A bearer secret:
    /// never log it.
    pub token: String,
    /// When `token` stops being accepted for a join.
    pub token_expires_at: Timestamp,
}

impl std::fmt::Debug for SyncResponse {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SyncResponse")
            .field("call_id", &self.call_id)
            .field("status", &self.status)
            .field("livekit_url", &self.livekit_url)
            .field("token", &"..")
            .field("token_expires_at", &self.token_expires_at)
            .finish()
    }
}

/// `POST /rooms/{roomId}/claim` answer: a join token for a LiveKit room the user claimed for
/// the call it is placing (the early join, docs/PROTOCOL.md §6.9).
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct RoomClaimResponse {
    /// The claimed room's name.
    pub room_id: RoomName,
    /// LiveKit signaling URL (`ws://…` / `wss://…`).
    pub livekit_url: String,
    /// A short-lived LiveKit join token for this room and this user only. A bearer secret:
    /// never log it.
    pub token: String,
    /// When `token` stops being accepted for a join.
    pub token_expires_at: Timestamp,
    /// When the claim lapses if no sync of a call event naming this room took it: the room is
    /// deleted then, with whoever is in it.
    pub claim_expires_at: Timestamp,
}

impl std::fmt::Debug for RoomClaimResponse {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RoomClaimResponse")
            .field("room_id", &self.room_id)
            .field("livekit_url", &self.livekit_url)
            .field("token", &"..")
            .field("token_expires_at", &self.token_expires_at)
            .field("claim_expires_at", &self.claim_expires_at)
            .finish()
    }
}

/// `GET /calls/{callId}/key` answer (the seed's shape): the envelope still wrapped.
#[derive(Clone, PartialEq, Eq, Debug, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct KeyResponse {
    /// The wrapped call key, as stored in the Matrix event.
    pub encryption_key: KeyEnvelope,
    /// The calling user.
    pub user_did: Did,
    /// The oracle.
    pub oracle_did: Did,
    /// The rest of the call's context (what the envelope is bound to), as stored in the event:
    /// an agent rebuilds the context from these and the room name LiveKit gave it, and opening
    /// fails if any of them differs from what the user sealed.
    pub session_id: SessionId,
    /// The LiveKit room name.
    pub room_id: RoomName,
    /// Audio or video.
    pub call_type: CallType,
    /// How the media key is derived from the call key.
    pub key_derivation: KeyDerivation,
    /// The user's LiveKit identity in the call's room: the Matrix user id that sent the call
    /// event, which is the identity the server issues the user's join token for. An agent
    /// treats only this participant as the user; anyone else in the room is unexpected.
    pub user_identity: String,
}

/// Why a call ended or what an agent reports about it.
#[derive(Clone, Copy, PartialEq, Eq, Hash, Debug, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
#[non_exhaustive]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub enum CallReason {
    /// The user hung up.
    UserHangup,
    /// The oracle's agent hung up.
    AgentHangup,
    /// The agent could not open the key envelope. The key endpoint refuses the call afterwards.
    KeyDecryptionFailed,
    /// The agent could not fetch the key.
    KeyRequestFailed,
    /// Media could not be set up or was lost.
    MediaFailed,
    /// The user left the LiveKit room.
    ParticipantLeft,
    /// LiveKit closed the room.
    RoomFinished,
    /// The call timed out.
    Timeout,
}

/// `POST /calls/{callId}/update` body: a status change, a report, or both. At least one of
/// the two must be present.
#[derive(Clone, PartialEq, Eq, Debug, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", try_from = "RawUpdateRequest")]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct UpdateRequest {
    /// The new status.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub call_status: Option<CallStatus>,
    /// Why (with `ended`), or what the agent reports.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reason: Option<CallReason>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct RawUpdateRequest {
    #[serde(default)]
    call_status: Option<CallStatus>,
    #[serde(default)]
    reason: Option<CallReason>,
}

impl TryFrom<RawUpdateRequest> for UpdateRequest {
    type Error = ParseError;
    fn try_from(r: RawUpdateRequest) -> Result<Self, ParseError> {
        if r.call_status.is_none() && r.reason.is_none() {
            return Err(ParseError::Request(
                "update needs `callStatus`, `reason`, or both",
            ));
        }
        Ok(Self {
            call_status: r.call_status,
            reason: r.reason,
        })
    }
}

/// One call as the API lists it. Holds no key material.
#[derive(Clone, PartialEq, Eq, Debug, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct CallSummary {
    /// The call.
    pub call_id: CallId,
    /// Audio or video.
    pub call_type: CallType,
    /// Current status.
    pub call_status: CallStatus,
    /// The application session.
    pub session_id: SessionId,
    /// The LiveKit room.
    pub room_id: RoomName,
    /// The user.
    pub user_did: Did,
    /// The oracle.
    pub oracle_did: Did,
    /// When the user started it.
    pub call_started_at: Timestamp,
    /// When it ended.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub call_ended_at: Option<Timestamp>,
    /// Why it ended, or the last agent report.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<CallReason>,
}

/// `GET /calls` query string.
#[derive(Clone, PartialEq, Eq, Debug, Default, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[cfg_attr(feature = "openapi", derive(utoipa::IntoParams), into_params(parameter_in = Query))]
pub struct ListCallsQuery {
    /// Opaque cursor from a previous page's `nextCursor`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cursor: Option<String>,
    /// Page size (the server caps it).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub limit: Option<u32>,
    /// Only calls in this status.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub status: Option<CallStatus>,
    /// Only calls of this session.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub session_id: Option<SessionId>,
}

/// `GET /calls` answer: newest first.
#[derive(Clone, PartialEq, Eq, Debug, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct ListCallsResponse {
    /// This page.
    pub calls: Vec<CallSummary>,
    /// Pass as `cursor` for the next page; absent on the last page.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub next_cursor: Option<String>,
}

/// One public key of the oracle, as published at `/.well-known/oracle-calls`.
#[derive(Clone, PartialEq, Eq, Debug, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct OracleKeyInfo {
    /// Fingerprint: lower-case hex of the first 16 bytes of SHA-256 of the SPKI DER.
    pub key_id: String,
    /// The scheme envelopes to this key use.
    pub scheme: KeyScheme,
    /// The public key, base64url without padding, in the scheme's raw form (docs/PROTOCOL.md).
    pub public_key: String,
}

/// `GET /.well-known/oracle-calls`.
#[derive(Clone, PartialEq, Eq, Debug, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct WellKnown {
    /// The oracle.
    pub oracle_did: Did,
    /// The oracle bot's Matrix user id.
    pub matrix_user_id: String,
    /// The LiveKit agent name that serves this oracle.
    pub agent_name: String,
    /// The LiveKit signaling URL.
    pub livekit_url: String,
    /// The oracle's public keys, in the server's order of preference (clients may choose
    /// differently; docs/PROTOCOL.md §6).
    pub keys: Vec<OracleKeyInfo>,
    /// The oracle bot's Matrix devices that may receive call events: clients share the call
    /// event's room key with these devices only (docs/PROTOCOL.md §6). Empty while the bot
    /// is not running.
    #[serde(default)]
    pub matrix_devices: Vec<BotDevice>,
    /// The oracle's prekey signing key (Ed25519, 32 bytes, base64url without padding): it
    /// signs the one-time and last-resort prekeys clients claim at `POST /prekeys/claim`
    /// (docs/PROTOCOL.md §13). Absent: the oracle offers no prekeys (no forward secrecy).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub prekey_signing_key: Option<String>,
}

/// One signed prekey of the oracle (docs/PROTOCOL.md §13): an X25519 HPKE public key that a
/// client seals one call's key envelope to, signed by the oracle's prekey signing key. A
/// one-time prekey is handed out at most once; the last-resort prekey is handed out when no
/// one-time prekey is left.
#[derive(Clone, PartialEq, Eq, Debug, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct SignedPrekey {
    /// 16 random bytes, base64url without padding (22 characters).
    pub prekey_id: String,
    /// The X25519 public key, 32 bytes, base64url without padding (43 characters).
    pub public_key: String,
    /// The last-resort prekey (handed out when no one-time prekey is left, never used up).
    pub last_resort: bool,
    /// Ed25519 signature (64 bytes, base64url without padding, 86 characters) by the prekey
    /// signing key over the bytes docs/PROTOCOL.md §13 gives.
    pub signature: String,
}

/// `POST /prekeys`: the oracle's agent (or its key holder) publishes prekeys.
#[derive(Clone, PartialEq, Eq, Debug, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct PublishPrekeysRequest {
    /// 1 to 100 prekeys; at most one of them the last-resort prekey, which replaces the one
    /// published before.
    pub prekeys: Vec<SignedPrekey>,
}

/// What the server holds for the oracle: the answer of `POST /prekeys` and `GET /prekeys`.
#[derive(Clone, Copy, PartialEq, Eq, Debug, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct PrekeyStock {
    /// One-time prekeys not yet claimed.
    pub one_time: u64,
    /// Whether a last-resort prekey is published.
    pub last_resort: bool,
}

/// One Matrix device of the oracle's bot, as published at `/.well-known/oracle-calls`.
#[derive(Clone, PartialEq, Eq, Debug, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct BotDevice {
    /// The Matrix device id.
    pub device_id: String,
    /// The device's Ed25519 identity key, unpadded standard base64 (as in `/keys/query`).
    pub ed25519: String,
}

/// Stable machine-readable error codes of the API.
#[derive(Clone, Copy, PartialEq, Eq, Hash, Debug, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
#[non_exhaustive]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub enum ErrorCode {
    /// 400: malformed request, body or call id.
    BadRequest,
    /// 401: missing or invalid credentials.
    Unauthorized,
    /// 403: authenticated but not allowed.
    Forbidden,
    /// 404: no such call.
    NotFound,
    /// 409: illegal status transition or conflicting state.
    Conflict,
    /// 410: the call has ended.
    Gone,
    /// 413: body too large.
    PayloadTooLarge,
    /// 422: the call event failed validation; the message says which check.
    ValidationFailed,
    /// 429: slow down.
    RateLimited,
    /// 500: a bug; details are in the server log.
    Internal,
    /// 502: Matrix or LiveKit answered badly.
    BadGateway,
    /// 503: Matrix or LiveKit is unreachable.
    Unavailable,
    /// A code this client does not know yet.
    #[serde(other)]
    Unknown,
}

/// The error object inside [`ApiErrorBody`].
#[derive(Clone, PartialEq, Eq, Debug, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct ApiError {
    /// Stable code.
    pub code: ErrorCode,
    /// Human-readable reason.
    pub message: String,
}

/// Every API error response: `{"error":{"code":"…","message":"…"}}`.
#[derive(Clone, PartialEq, Eq, Debug, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct ApiErrorBody {
    /// The error.
    pub error: ApiError,
}

impl ApiErrorBody {
    /// An error body.
    pub fn new(code: ErrorCode, message: impl Into<String>) -> Self {
        Self {
            error: ApiError {
                code,
                message: message.into(),
            },
        }
    }
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;
    use serde_json::json;

    use super::*;

    fn call_id() -> CallId {
        CallId::parse("$ev1@oc-0123456789abcdef0123456789abcdef").unwrap()
    }

    fn summary() -> CallSummary {
        CallSummary {
            call_id: call_id(),
            call_type: CallType::Audio,
            call_status: CallStatus::Ended,
            session_id: SessionId::parse("s-1").unwrap(),
            room_id: RoomName::parse("oc-0123456789abcdef0123456789abcdef").unwrap(),
            user_did: Did::parse("did:ixo:u").unwrap(),
            oracle_did: Did::parse("did:ixo:o").unwrap(),
            call_started_at: Timestamp::from_unix_millis(1_700_000_000_000).unwrap(),
            call_ended_at: Some(Timestamp::from_unix_millis(1_700_000_060_000).unwrap()),
            reason: Some(CallReason::UserHangup),
        }
    }

    #[test]
    fn snapshots() {
        let sync = SyncResponse {
            call_id: call_id(),
            status: CallStatus::Active,
            livekit_url: "ws://127.0.0.1:17880".into(),
            token: "jwt".into(),
            token_expires_at: Timestamp::from_unix_millis(1_700_000_600_000).unwrap(),
        };
        assert_eq!(
            serde_json::to_value(&sync).unwrap(),
            json!({"callId":"$ev1@oc-0123456789abcdef0123456789abcdef","status":"active","livekitUrl":"ws://127.0.0.1:17880",
                   "token":"jwt","tokenExpiresAt":"2023-11-14T22:23:20.000Z"})
        );
        let key = KeyResponse {
            encryption_key: KeyEnvelope::parse("v1.hpke-p256.AA").unwrap(),
            user_did: Did::parse("did:ixo:user123").unwrap(),
            oracle_did: Did::parse("did:ixo:oracle456").unwrap(),
            session_id: SessionId::parse("s-1").unwrap(),
            room_id: RoomName::parse("oc-0123456789abcdef0123456789abcdef").unwrap(),
            call_type: CallType::Audio,
            key_derivation: KeyDerivation::Hkdf,
            user_identity: "@did-ixo-user123:localhost".into(),
        };
        assert_eq!(
            serde_json::to_string(&key).unwrap(),
            r#"{"encryptionKey":"v1.hpke-p256.AA","userDid":"did:ixo:user123","oracleDid":"did:ixo:oracle456","sessionId":"s-1","roomId":"oc-0123456789abcdef0123456789abcdef","callType":"audio","keyDerivation":"hkdf","userIdentity":"@did-ixo-user123:localhost"}"#
        );
        assert_eq!(
            serde_json::to_value(summary()).unwrap(),
            json!({"callId":"$ev1@oc-0123456789abcdef0123456789abcdef","callType":"audio","callStatus":"ended","sessionId":"s-1",
                   "roomId":"oc-0123456789abcdef0123456789abcdef","userDid":"did:ixo:u","oracleDid":"did:ixo:o",
                   "callStartedAt":"2023-11-14T22:13:20.000Z","callEndedAt":"2023-11-14T22:14:20.000Z",
                   "reason":"userHangup"})
        );
        assert_eq!(
            serde_json::to_string(&ApiErrorBody::new(
                ErrorCode::ValidationFailed,
                "sender is not bound to userDid"
            ))
            .unwrap(),
            r#"{"error":{"code":"validation_failed","message":"sender is not bound to userDid"}}"#
        );
        let wk = WellKnown {
            oracle_did: Did::parse("did:ixo:o").unwrap(),
            matrix_user_id: "@oracle:localhost".into(),
            agent_name: "oracle-o".into(),
            livekit_url: "ws://127.0.0.1:17880".into(),
            keys: vec![OracleKeyInfo {
                key_id: "00112233445566778899aabbccddeeff".into(),
                scheme: KeyScheme::HpkeP256,
                public_key: "BA".into(),
            }],
            matrix_devices: vec![BotDevice {
                device_id: "BOTDEVICE".into(),
                ed25519: "k".into(),
            }],
            prekey_signing_key: None,
        };
        assert_eq!(
            serde_json::to_value(&wk).unwrap(),
            json!({"oracleDid":"did:ixo:o","matrixUserId":"@oracle:localhost","agentName":"oracle-o",
                   "livekitUrl":"ws://127.0.0.1:17880",
                   "keys":[{"keyId":"00112233445566778899aabbccddeeff","scheme":"hpke-p256","publicKey":"BA"}],
                   "matrixDevices":[{"deviceId":"BOTDEVICE","ed25519":"k"}]})
        );
        assert_eq!(
            serde_json::to_value(SyncRequest::default()).unwrap(),
            json!({})
        );
        assert_eq!(
            serde_json::to_value(ListCallsQuery {
                limit: Some(10),
                status: Some(CallStatus::Active),
                ..Default::default()
            })
            .unwrap(),
            json!({"limit":10,"status":"active"})
        );
    }

    #[test]
    fn sync_response_debug_hides_the_join_token() {
        let sync = SyncResponse {
            call_id: call_id(),
            status: CallStatus::Active,
            livekit_url: "ws://127.0.0.1:17880".into(),
            token: "eyJhbGciOiJIUzI1NiJ9.secret-claims.signature".into(),
            token_expires_at: Timestamp::from_unix_millis(1_700_000_600_000).unwrap(),
        };
        let dbg = format!("{sync:?}");
        assert!(
            !dbg.contains("eyJ") && !dbg.contains("secret-claims"),
            "{dbg}"
        );
        assert!(
            dbg.contains("token: \"..\"") && dbg.contains("$ev1@oc-"),
            "{dbg}"
        );
        let pretty = format!("{sync:#?}");
        assert!(!pretty.contains("secret-claims"), "{pretty}");
    }

    #[test]
    fn update_request_needs_something() {
        assert!(serde_json::from_value::<UpdateRequest>(json!({})).is_err());
        let u: UpdateRequest =
            serde_json::from_value(json!({"reason":"keyDecryptionFailed"})).unwrap();
        assert_eq!(u.reason, Some(CallReason::KeyDecryptionFailed));
        assert_eq!(u.call_status, None);
        let u: UpdateRequest =
            serde_json::from_value(json!({"callStatus":"ended","reason":"userHangup"})).unwrap();
        assert_eq!(
            serde_json::to_value(&u).unwrap(),
            json!({"callStatus":"ended","reason":"userHangup"})
        );
        assert!(serde_json::from_value::<UpdateRequest>(json!({"callStatus":"paused"})).is_err());
    }

    #[test]
    fn unknown_error_codes_still_parse() {
        let b: ApiErrorBody =
            serde_json::from_value(json!({"error":{"code":"teapot","message":"x"}})).unwrap();
        assert_eq!(b.error.code, ErrorCode::Unknown);
    }

    proptest! {
        #[test]
        fn list_round_trips(n in 0usize..5, cursor in proptest::option::of("[A-Za-z0-9_-]{1,30}")) {
            let page = ListCallsResponse { calls: vec![summary(); n], next_cursor: cursor };
            let json = serde_json::to_string(&page).unwrap();
            prop_assert_eq!(serde_json::from_str::<ListCallsResponse>(&json).unwrap(), page);
        }

        #[test]
        fn update_round_trips(st in proptest::option::of(0u8..3), r in proptest::option::of(0u8..8)) {
            prop_assume!(st.is_some() || r.is_some());
            let reasons = [CallReason::UserHangup, CallReason::AgentHangup, CallReason::KeyDecryptionFailed,
                CallReason::KeyRequestFailed, CallReason::MediaFailed, CallReason::ParticipantLeft,
                CallReason::RoomFinished, CallReason::Timeout];
            let u = UpdateRequest {
                call_status: st.map(|s| [CallStatus::Pending, CallStatus::Active, CallStatus::Ended][usize::from(s)]),
                reason: r.map(|r| reasons[usize::from(r)]),
            };
            let json = serde_json::to_string(&u).unwrap();
            prop_assert_eq!(serde_json::from_str::<UpdateRequest>(&json).unwrap(), u);
        }
    }
}

/// `POST /agent/jobs/next` body: how long the agent waits for a call (direct dispatch,
/// docs/PROTOCOL.md §6.8). The server caps it below its request deadline.
#[derive(Clone, PartialEq, Eq, Debug, Default, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct NextJobRequest {
    /// Longest wait in milliseconds; absent: the server's longest.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub wait_ms: Option<u64>,
}

/// `POST /agent/jobs/next` answer: a call handed to this agent directly, with the LiveKit
/// token it joins the call's room with. It carries no key: the agent fetches the wrapped key
/// from `GET /calls/{callId}/key` as for a job LiveKit dispatched.
#[derive(Clone, PartialEq, Eq, Debug, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct AgentJob {
    /// The job's id (`DJ_` and 24 hex digits); the agent joins as `agent-<jobId>`.
    pub job_id: String,
    /// The call.
    pub call_id: CallId,
    /// The call's LiveKit room (the room name in the call id).
    pub room: RoomName,
    /// The LiveKit signaling URL the server hands out.
    pub livekit_url: String,
    /// A join token for `room` as `agent-<jobId>`, of participant kind agent.
    pub token: String,
    /// When the token stops being accepted for a first join.
    pub token_expires_at: Timestamp,
}

/// `POST /agent/jobs/{jobId}/decline` body: why the agent will not serve the call (the server
/// hands it to LiveKit's dispatch at once).
#[derive(Clone, PartialEq, Eq, Debug, Default, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct DeclineJobRequest {
    /// A short reason, logged by the server (at most 200 characters are kept).
    #[serde(default)]
    pub reason: String,
}

//! The `m.ixo.oracles_call` Matrix event content and its `m.replace` edits.

use serde::{Deserialize, Serialize};

use crate::text::string_newtype;
use crate::{CallId, CallStatus, CallType, Did, EventId, ParseError, RoomName, Timestamp};

/// The Matrix event type of a call event.
pub const CALL_EVENT_TYPE: &str = "m.ixo.oracles_call";

/// Longest key envelope text accepted (an RSA-4096 envelope is ~700 characters).
pub const MAX_ENVELOPE_LEN: usize = 8192;
/// Longest session id accepted.
pub const MAX_SESSION_ID_LEN: usize = 256;

/// How the frame-encryption key material is derived from the call key (DESIGN §4).
#[derive(Clone, Copy, PartialEq, Eq, Hash, Debug, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub enum KeyDerivation {
    /// HKDF-SHA256 over the call key's 32 raw bytes (LiveKit's `setKey(ArrayBuffer)` path).
    Hkdf,
    /// PBKDF2-HMAC-SHA256 over the call key as a 64-character lower-case hex string
    /// (LiveKit's `setKey(string)` path; what existing ixo frontends do). Assumed when absent.
    #[default]
    Pbkdf2,
}

/// A key-wrapping scheme of an oracle public key and of the envelopes sealed to it.
#[derive(Clone, Copy, PartialEq, Eq, Hash, Debug, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub enum KeyScheme {
    /// RFC 9180 HPKE, DHKEM(P-256, HKDF-SHA256), HKDF-SHA256, AES-256-GCM. The default.
    #[serde(rename = "hpke-p256")]
    HpkeP256,
    /// RFC 9180 HPKE, DHKEM(X25519, HKDF-SHA256), HKDF-SHA256, AES-256-GCM.
    #[serde(rename = "hpke-x25519")]
    HpkeX25519,
    /// RSA-OAEP with SHA-256 and MGF1-SHA-256 (legacy fallback).
    #[serde(rename = "rsa-oaep-256")]
    RsaOaep256,
    /// ECIES on secp256k1, byte-compatible with the `eciesjs` defaults.
    #[serde(rename = "ecies-secp256k1")]
    EciesSecp256k1,
}

impl KeyScheme {
    /// Every scheme, default first.
    pub const ALL: [KeyScheme; 4] = [
        KeyScheme::HpkeP256,
        KeyScheme::HpkeX25519,
        KeyScheme::RsaOaep256,
        KeyScheme::EciesSecp256k1,
    ];

    /// The wire name used in envelopes (`v1.<scheme>.…`) and in `/.well-known/oracle-calls`.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::HpkeP256 => "hpke-p256",
            Self::HpkeX25519 => "hpke-x25519",
            Self::RsaOaep256 => "rsa-oaep-256",
            Self::EciesSecp256k1 => "ecies-secp256k1",
        }
    }
}

impl std::fmt::Display for KeyScheme {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

impl std::str::FromStr for KeyScheme {
    type Err = ParseError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::ALL
            .into_iter()
            .find(|k| k.as_str() == s)
            .ok_or(ParseError::KeyEnvelope("unknown key scheme"))
    }
}

/// A wrapped call key as text (`v1.<scheme>.<base64url>` or a legacy base58 form). Opaque
/// here: only its shape is checked (1..=8192 printable ASCII characters, no whitespace);
/// the crypto crate parses and opens it. Not a secret: only the oracle's private key opens it.
#[derive(Clone, PartialEq, Eq, Hash, Debug)]
pub struct KeyEnvelope(String);

impl KeyEnvelope {
    /// Checks the envelope's shape.
    ///
    /// # Errors
    /// [`ParseError::KeyEnvelope`].
    pub fn parse(s: &str) -> Result<Self, ParseError> {
        if s.is_empty() {
            return Err(ParseError::KeyEnvelope("is empty"));
        }
        if s.len() > MAX_ENVELOPE_LEN {
            return Err(ParseError::KeyEnvelope("is longer than 8192 bytes"));
        }
        if !s.bytes().all(|b| b.is_ascii_graphic()) {
            return Err(ParseError::KeyEnvelope(
                "may only contain printable ASCII without spaces",
            ));
        }
        Ok(Self(s.to_owned()))
    }
}
string_newtype!(KeyEnvelope);

/// The application's session id (a UUID in the ixo apps): 1..=256 characters, no control
/// characters.
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Debug)]
pub struct SessionId(String);

impl SessionId {
    /// Parses a session id.
    ///
    /// # Errors
    /// [`ParseError::SessionId`].
    pub fn parse(s: &str) -> Result<Self, ParseError> {
        if s.is_empty() {
            return Err(ParseError::SessionId("is empty"));
        }
        if s.len() > MAX_SESSION_ID_LEN {
            return Err(ParseError::SessionId("is longer than 256 bytes"));
        }
        if s.chars().any(char::is_control) {
            return Err(ParseError::SessionId("contains control characters"));
        }
        Ok(Self(s.to_owned()))
    }
}
string_newtype!(SessionId);

/// The content of an `m.ixo.oracles_call` event. Field names follow the ixo seed; unknown
/// fields are ignored on read.
#[derive(Clone, PartialEq, Eq, Debug, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct OraclesCallContent {
    /// `<eventId>@<roomId>`; absent in the original event (its event id is not known when it is
    /// sent), present in edits.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub call_id: Option<CallId>,
    /// Audio or video.
    pub call_type: CallType,
    /// Pending when created; edits carry the later statuses.
    pub call_status: CallStatus,
    /// When the user started the call (the client's clock).
    pub call_started_at: Timestamp,
    /// When the call ended; set with `callStatus: ended`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub call_ended_at: Option<Timestamp>,
    /// The call key wrapped to the oracle's public key.
    pub encryption_key: KeyEnvelope,
    /// The application session the call belongs to.
    pub session_id: SessionId,
    /// The LiveKit room name.
    pub room_id: RoomName,
    /// The calling user's DID.
    pub user_did: Did,
    /// The called oracle's DID.
    pub oracle_did: Did,
    /// How the media key is derived from the call key; absent means [`KeyDerivation::Pbkdf2`].
    #[serde(default)]
    pub key_derivation: KeyDerivation,
}

impl OraclesCallContent {
    /// The call id this content belongs to, given the id of the event that carried it.
    pub fn call_id_for(&self, event_id: EventId) -> CallId {
        CallId::new(event_id, self.room_id.clone())
    }

    /// A copy moved to `status` (with `callEndedAt` when ending), as carried by an edit.
    ///
    /// # Errors
    /// [`crate::IllegalTransition`] if the lifecycle forbids the change.
    pub fn with_status(
        &self,
        call_id: CallId,
        status: CallStatus,
        now: Timestamp,
    ) -> Result<Self, crate::IllegalTransition> {
        let status = self.call_status.transition(status)?;
        let mut next = self.clone();
        next.call_id = Some(call_id);
        next.call_status = status;
        if status == CallStatus::Ended {
            next.call_ended_at = Some(now);
        }
        Ok(next)
    }
}

/// An `m.replace` edit of a call event (Matrix client-server spec, "Event replacements"): the
/// full new content under `m.new_content`, mirrored at top level for clients that do not
/// understand edits.
#[derive(Clone, PartialEq, Eq, Debug, Serialize, Deserialize)]
pub struct OraclesCallEdit {
    /// The replacement content.
    #[serde(rename = "m.new_content")]
    pub new_content: OraclesCallContent,
    /// Points at the original event.
    #[serde(rename = "m.relates_to")]
    pub relates_to: RelatesTo,
    /// Fallback copy of the new content.
    #[serde(flatten)]
    pub fallback: OraclesCallContent,
}

impl OraclesCallEdit {
    /// An edit replacing the content of `original` with `new_content`.
    pub fn new(original: EventId, new_content: OraclesCallContent) -> Self {
        Self {
            fallback: new_content.clone(),
            new_content,
            relates_to: RelatesTo {
                rel_type: "m.replace".to_owned(),
                event_id: original,
            },
        }
    }
}

/// `m.relates_to` of an edit.
#[derive(Clone, PartialEq, Eq, Debug, Serialize, Deserialize)]
pub struct RelatesTo {
    /// Always `m.replace` for edits.
    pub rel_type: String,
    /// The original event.
    pub event_id: EventId,
}

#[cfg(test)]
pub(crate) mod tests {
    use proptest::prelude::*;
    use serde_json::json;

    use super::*;

    pub(crate) fn sample() -> OraclesCallContent {
        OraclesCallContent {
            call_id: None,
            call_type: CallType::Video,
            call_status: CallStatus::Pending,
            call_started_at: Timestamp::parse("2024-01-01T10:00:00.000Z").unwrap(),
            call_ended_at: None,
            encryption_key: KeyEnvelope::parse("v1.hpke-p256.AAAA").unwrap(),
            session_id: SessionId::parse("550e8400-e29b-41d4-a716-446655440000").unwrap(),
            room_id: RoomName::parse("oc-0123456789abcdef0123456789abcdef").unwrap(),
            user_did: Did::parse("did:ixo:user123").unwrap(),
            oracle_did: Did::parse("did:ixo:oracle456").unwrap(),
            key_derivation: KeyDerivation::Hkdf,
        }
    }

    #[test]
    fn content_snapshot() {
        let text = serde_json::to_string_pretty(&sample()).unwrap();
        assert_eq!(
            text,
            r#"{
  "callType": "video",
  "callStatus": "pending",
  "callStartedAt": "2024-01-01T10:00:00.000Z",
  "encryptionKey": "v1.hpke-p256.AAAA",
  "sessionId": "550e8400-e29b-41d4-a716-446655440000",
  "roomId": "oc-0123456789abcdef0123456789abcdef",
  "userDid": "did:ixo:user123",
  "oracleDid": "did:ixo:oracle456",
  "keyDerivation": "hkdf"
}"#
        );
    }

    #[test]
    fn reads_the_seed_example_with_unknown_fields_and_defaults() {
        // The seed's example, with its callId and callEndedAt, an extra field, no keyDerivation,
        // and a room name of the shape oracle-calls generates.
        let mut v = json!({
            "callId": "$eventId@oc-0123456789abcdef0123456789abcdef",
            "callType": "video",
            "callStatus": "pending",
            "callStartedAt": "2024-01-01T10:00:00.000Z",
            "callEndedAt": "2024-01-01T10:30:00.000Z",
            "encryptionKey": "a1b2c3d4e5f6789012345678901234567890abcdef",
            "sessionId": "550e8400-e29b-41d4-a716-446655440000",
            "roomId": "oc-0123456789abcdef0123456789abcdef",
            "userDid": "did:ixo:user123",
            "oracleDid": "did:ixo:oracle456",
            "somethingNew": {"x": 1}
        });
        let c: OraclesCallContent = serde_json::from_value(v.clone()).unwrap();
        assert_eq!(c.key_derivation, KeyDerivation::Pbkdf2);
        assert_eq!(
            c.call_id.unwrap().room_name().as_str(),
            "oc-0123456789abcdef0123456789abcdef"
        );
        assert_eq!(
            c.call_ended_at.unwrap().to_string(),
            "2024-01-01T10:30:00.000Z"
        );
        // The seed's own room names (`lk-room-12345`, `roomId`) are too weak to be a call's
        // room: refused, naming the room.
        v["roomId"] = json!("lk-room-12345");
        let err = serde_json::from_value::<OraclesCallContent>(v.clone())
            .unwrap_err()
            .to_string();
        assert!(err.contains("room name"), "{err}");
        v["roomId"] = json!("oc-0123456789abcdef0123456789abcdef");
        v["callId"] = json!("$eventId@roomId");
        let err = serde_json::from_value::<OraclesCallContent>(v)
            .unwrap_err()
            .to_string();
        assert!(err.contains("room name"), "{err}");
    }

    #[test]
    fn rejects_bad_fields_naming_them() {
        let mut v = serde_json::to_value(sample()).unwrap();
        v["userDid"] = json!("not-a-did");
        let err = serde_json::from_value::<OraclesCallContent>(v)
            .unwrap_err()
            .to_string();
        assert!(err.contains("DID"), "{err}");
        let mut v = serde_json::to_value(sample()).unwrap();
        v["callStatus"] = json!("ringing");
        assert!(serde_json::from_value::<OraclesCallContent>(v).is_err());
        let mut v = serde_json::to_value(sample()).unwrap();
        v.as_object_mut().unwrap().remove("encryptionKey");
        let err = serde_json::from_value::<OraclesCallContent>(v)
            .unwrap_err()
            .to_string();
        assert!(err.contains("encryptionKey"), "{err}");
        let mut v = serde_json::to_value(sample()).unwrap();
        v["encryptionKey"] = json!("has space");
        assert!(serde_json::from_value::<OraclesCallContent>(v).is_err());
        let mut v = serde_json::to_value(sample()).unwrap();
        v["keyDerivation"] = json!("scrypt");
        assert!(serde_json::from_value::<OraclesCallContent>(v).is_err());
    }

    #[test]
    fn edit_snapshot_and_transition() {
        let orig = EventId::parse("$orig").unwrap();
        let c = sample();
        let call_id = c.call_id_for(orig.clone());
        let now = Timestamp::parse("2024-01-01T10:05:00.000Z").unwrap();
        let active = c
            .with_status(call_id.clone(), CallStatus::Active, now)
            .unwrap();
        assert_eq!(active.call_ended_at, None);
        let ended = active
            .with_status(call_id.clone(), CallStatus::Ended, now)
            .unwrap();
        assert_eq!(ended.call_ended_at, Some(now));
        assert!(ended.with_status(call_id, CallStatus::Active, now).is_err());
        let edit = OraclesCallEdit::new(orig, ended);
        let v = serde_json::to_value(&edit).unwrap();
        assert_eq!(
            v["m.relates_to"],
            json!({"rel_type": "m.replace", "event_id": "$orig"})
        );
        assert_eq!(v["m.new_content"]["callStatus"], json!("ended"));
        assert_eq!(
            v["m.new_content"]["callId"],
            json!("$orig@oc-0123456789abcdef0123456789abcdef")
        );
        assert_eq!(v["callStatus"], json!("ended"));
        assert_eq!(v["callEndedAt"], json!("2024-01-01T10:05:00.000Z"));
        let back: OraclesCallEdit = serde_json::from_value(v).unwrap();
        assert_eq!(back, edit);
    }

    #[test]
    fn envelope_and_session_shapes() {
        assert!(KeyEnvelope::parse("").is_err());
        assert!(KeyEnvelope::parse(&"a".repeat(MAX_ENVELOPE_LEN + 1)).is_err());
        assert!(KeyEnvelope::parse("v1.x.\n").is_err());
        assert!(SessionId::parse("").is_err());
        assert!(SessionId::parse("a\u{7}").is_err());
        assert!(SessionId::parse("séance-1").is_ok());
        for k in KeyScheme::ALL {
            assert_eq!(k.as_str().parse::<KeyScheme>().unwrap(), k);
            assert_eq!(serde_json::to_value(k).unwrap(), json!(k.as_str()));
        }
        assert!("rsa".parse::<KeyScheme>().is_err());
    }

    pub(crate) fn content_strategy() -> impl Strategy<Value = OraclesCallContent> {
        use crate::call_id::tests::{event_id_strategy, room_name_strategy};
        use crate::did::tests::did_strategy;
        (
            (any::<bool>(), any::<bool>(), 0u8..3, any::<bool>()),
            (
                0i64..250_000_000_000_000,
                proptest::option::of(0i64..250_000_000_000_000),
            ),
            proptest::string::string_regex("[!-~]{1,200}").unwrap(),
            proptest::string::string_regex("[^\\p{Cc}]{1,40}").unwrap(),
            (room_name_strategy(), did_strategy(), did_strategy()),
            proptest::option::of(event_id_strategy()),
        )
            .prop_map(
                |((video, hkdf, st, _), (start, end), env, sess, (room, u, o), ev)| {
                    OraclesCallContent {
                        call_id: ev.map(|e| CallId::new(e, room.clone())),
                        call_type: if video {
                            CallType::Video
                        } else {
                            CallType::Audio
                        },
                        call_status: [CallStatus::Pending, CallStatus::Active, CallStatus::Ended]
                            [usize::from(st)],
                        call_started_at: Timestamp::from_unix_millis(start).unwrap(),
                        call_ended_at: end.map(|e| Timestamp::from_unix_millis(e).unwrap()),
                        encryption_key: KeyEnvelope::parse(&env).unwrap(),
                        session_id: SessionId::parse(&sess).unwrap(),
                        room_id: room,
                        user_did: u,
                        oracle_did: o,
                        key_derivation: if hkdf {
                            KeyDerivation::Hkdf
                        } else {
                            KeyDerivation::Pbkdf2
                        },
                    }
                },
            )
    }

    proptest! {
        #[test]
        fn content_round_trips(c in content_strategy()) {
            let json = serde_json::to_string(&c).unwrap();
            prop_assert_eq!(serde_json::from_str::<OraclesCallContent>(&json).unwrap(), c.clone());
            let edit = OraclesCallEdit::new(EventId::parse("$e").unwrap(), c);
            let json = serde_json::to_string(&edit).unwrap();
            prop_assert_eq!(serde_json::from_str::<OraclesCallEdit>(&json).unwrap(), edit);
        }

        #[test]
        fn content_parse_never_panics(s in "\\PC{0,400}") {
            let _ = serde_json::from_str::<OraclesCallContent>(&s);
        }
    }
}

//! Matrix VoIP v1 call event contents (`m.call.*`) and our extension, parsed from and written
//! to raw JSON.
//!
//! Our own types rather than ruma's: ruma's typed contents drop fields they do not know, and
//! ours (`org.oraclecalls.direct.v1`) must survive. Every content keeps its unknown fields in
//! `extra` (MatrixCall's `capabilities` lands there: accepted, ignored) and writes them back.
//! Parsing is strict where the protocol is (identifiers, SDP types, our extension) and lenient
//! where the spec says to be (`version`, hangup reasons, `usernameFragment`).

use std::collections::BTreeMap;
use std::fmt;

use serde_json::{Map, Value, json};

use crate::binding::{Confirmation, DirectExtension, EphemeralPublicKey, Nonce};
use crate::error::{ExtensionError, SignalError};

/// The field of `m.call.invite` and `m.call.answer` that carries our binding extension.
pub const EXTENSION_FIELD: &str = "org.oraclecalls.direct.v1";
/// The event type of our key confirmation (sent into the same encrypted room).
pub const CONFIRM_EVENT_TYPE: &str = "org.oraclecalls.call.confirm";

/// A call's `call_id`: 1–255 bytes of `[A-Za-z0-9._~-]` (the spec's opaque identifier
/// grammar). Compared as bytes for glare.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct CallId(String);

impl CallId {
    /// Parses a call id.
    ///
    /// # Errors
    /// [`SignalError::BadIdentifier`] naming `call_id`.
    pub fn parse(s: &str) -> Result<Self, SignalError> {
        let ok = !s.is_empty()
            && s.len() <= 255
            && s.bytes()
                .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'~' | b'-'));
        if ok {
            Ok(Self(s.to_owned()))
        } else {
            Err(SignalError::BadIdentifier("call_id"))
        }
    }

    /// The id as text.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for CallId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// A `party_id` (MatrixCall and ours use the Matrix device id): 1–255 bytes, no control
/// characters.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct PartyId(String);

impl PartyId {
    /// Parses a party id; `field` names it in the error.
    ///
    /// # Errors
    /// [`SignalError::BadIdentifier`].
    pub fn parse_field(s: &str, field: &'static str) -> Result<Self, SignalError> {
        if s.is_empty() || s.len() > 255 || s.chars().any(char::is_control) {
            Err(SignalError::BadIdentifier(field))
        } else {
            Ok(Self(s.to_owned()))
        }
    }

    /// Parses a party id.
    ///
    /// # Errors
    /// [`SignalError::BadIdentifier`] naming `party_id`.
    pub fn parse(s: &str) -> Result<Self, SignalError> {
        Self::parse_field(s, "party_id")
    }

    /// The id as text.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for PartyId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// The VoIP protocol version of an event. The spec's rule: `"1"`; the integer `0` of the old
/// protocol is accepted; any other string or integer is treated as `"1"`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Version {
    /// The integer 0 (no `m.call.reject`, no `select_answer`).
    V0,
    /// `"1"` (and everything else that is a string or an integer).
    V1,
}

/// The fields every call event has.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CallCommon {
    /// The call.
    pub call_id: CallId,
    /// The sending party (its device id).
    pub party_id: PartyId,
    /// The protocol version.
    pub version: Version,
}

impl CallCommon {
    /// Version 1 fields.
    pub fn v1(call_id: CallId, party_id: PartyId) -> Self {
        Self {
            call_id,
            party_id,
            version: Version::V1,
        }
    }
}

/// What a media stream is (`purpose` in `sdp_stream_metadata`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StreamPurpose {
    /// `m.usermedia`: microphone / camera.
    UserMedia,
    /// `m.screenshare`.
    ScreenShare,
    /// Anything else, kept as sent.
    Other(String),
}

impl StreamPurpose {
    fn as_str(&self) -> &str {
        match self {
            StreamPurpose::UserMedia => "m.usermedia",
            StreamPurpose::ScreenShare => "m.screenshare",
            StreamPurpose::Other(s) => s,
        }
    }
}

/// One stream's entry of `sdp_stream_metadata`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StreamMetadata {
    /// `purpose`.
    pub purpose: StreamPurpose,
    /// `audio_muted`.
    pub audio_muted: Option<bool>,
    /// `video_muted`.
    pub video_muted: Option<bool>,
}

/// `sdp_stream_metadata`: msid stream id → metadata.
pub type SdpStreamMetadata = BTreeMap<String, StreamMetadata>;

/// One entry of `m.call.candidates`' `candidates`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Candidate {
    /// The SDP `candidate:` line without `a=`; empty for end-of-candidates.
    pub candidate: String,
    /// `sdpMid`.
    pub sdp_mid: Option<String>,
    /// `sdpMLineIndex`.
    pub sdp_m_line_index: Option<u32>,
    /// `usernameFragment` (not in the spec; browsers send it).
    pub username_fragment: Option<String>,
}

impl Candidate {
    /// The end-of-candidates marker `{"candidate": ""}`.
    pub fn end_of_candidates() -> Self {
        Self {
            candidate: String::new(),
            sdp_mid: None,
            sdp_m_line_index: None,
            username_fragment: None,
        }
    }

    /// Whether this is the end-of-candidates marker.
    pub fn is_end_of_candidates(&self) -> bool {
        self.candidate.is_empty()
    }
}

/// Why a call was hung up (`reason` of `m.call.hangup`).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum HangupReason {
    /// `ice_timeout`: media had flowed, then the connection was lost.
    IceTimeout,
    /// `ice_failed`: media never connected.
    IceFailed,
    /// `invite_timeout`: nobody answered within the invite's lifetime.
    InviteTimeout,
    /// `user_hangup` (also what a missing `reason` means).
    UserHangup,
    /// `user_media_failed`.
    UserMediaFailed,
    /// `user_busy`.
    UserBusy,
    /// `unknown_error`.
    UnknownError,
    /// Anything else, kept as sent: MatrixCall sends `replaced`, `answered_elsewhere`,
    /// `signalling_timeout`, `transferred`…
    Custom(String),
}

impl HangupReason {
    /// MatrixCall's reason for the loser of glare.
    pub fn replaced() -> Self {
        Self::Custom("replaced".into())
    }

    /// Its wire form.
    pub fn as_str(&self) -> &str {
        match self {
            HangupReason::IceTimeout => "ice_timeout",
            HangupReason::IceFailed => "ice_failed",
            HangupReason::InviteTimeout => "invite_timeout",
            HangupReason::UserHangup => "user_hangup",
            HangupReason::UserMediaFailed => "user_media_failed",
            HangupReason::UserBusy => "user_busy",
            HangupReason::UnknownError => "unknown_error",
            HangupReason::Custom(s) => s,
        }
    }

    /// Reads a wire value (never fails: unknown values are [`HangupReason::Custom`]).
    pub fn from_wire(s: &str) -> Self {
        match s {
            "ice_timeout" => HangupReason::IceTimeout,
            "ice_failed" => HangupReason::IceFailed,
            "invite_timeout" => HangupReason::InviteTimeout,
            "user_hangup" => HangupReason::UserHangup,
            "user_media_failed" => HangupReason::UserMediaFailed,
            "user_busy" => HangupReason::UserBusy,
            "unknown_error" => HangupReason::UnknownError,
            other => HangupReason::Custom(other.to_owned()),
        }
    }
}

/// Which kind of session description.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SdpType {
    /// `offer`.
    Offer,
    /// `answer`.
    Answer,
}

impl SdpType {
    fn as_str(self) -> &'static str {
        match self {
            SdpType::Offer => "offer",
            SdpType::Answer => "answer",
        }
    }
}

/// `m.call.invite`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Invite {
    /// Common fields.
    pub common: CallCommon,
    /// The offer's SDP (`offer.sdp`, `offer.type` is `offer`).
    pub offer_sdp: String,
    /// `lifetime` in milliseconds.
    pub lifetime_ms: u64,
    /// `invitee`: the user the call is for (absent: anyone in the room).
    pub invitee: Option<String>,
    /// `sdp_stream_metadata`.
    pub sdp_stream_metadata: Option<SdpStreamMetadata>,
    /// Our binding extension, when the caller is one of our clients.
    pub direct: Option<DirectExtension>,
    /// Unknown fields (e.g. `capabilities`), kept and written back.
    pub extra: Map<String, Value>,
}

/// `m.call.candidates`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Candidates {
    /// Common fields.
    pub common: CallCommon,
    /// `candidates`.
    pub candidates: Vec<Candidate>,
    /// Unknown fields.
    pub extra: Map<String, Value>,
}

/// `m.call.answer`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Answer {
    /// Common fields.
    pub common: CallCommon,
    /// The answer's SDP (`answer.sdp`, `answer.type` is `answer`).
    pub answer_sdp: String,
    /// `sdp_stream_metadata`.
    pub sdp_stream_metadata: Option<SdpStreamMetadata>,
    /// Our binding extension.
    pub direct: Option<DirectExtension>,
    /// Unknown fields.
    pub extra: Map<String, Value>,
}

/// `m.call.select_answer`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SelectAnswer {
    /// Common fields.
    pub common: CallCommon,
    /// The party whose answer (or reject) the caller took.
    pub selected_party_id: PartyId,
    /// Unknown fields.
    pub extra: Map<String, Value>,
}

/// `m.call.negotiate`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Negotiate {
    /// Common fields.
    pub common: CallCommon,
    /// `description.type`.
    pub sdp_type: SdpType,
    /// `description.sdp`.
    pub sdp: String,
    /// `lifetime` in milliseconds.
    pub lifetime_ms: u64,
    /// `sdp_stream_metadata`.
    pub sdp_stream_metadata: Option<SdpStreamMetadata>,
    /// Unknown fields.
    pub extra: Map<String, Value>,
}

/// `m.call.reject`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reject {
    /// Common fields.
    pub common: CallCommon,
    /// Unknown fields.
    pub extra: Map<String, Value>,
}

/// `m.call.hangup`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Hangup {
    /// Common fields.
    pub common: CallCommon,
    /// `reason` (missing means `user_hangup`).
    pub reason: HangupReason,
    /// Unknown fields.
    pub extra: Map<String, Value>,
}

/// `m.call.sdp_stream_metadata_changed`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SdpStreamMetadataChanged {
    /// Common fields.
    pub common: CallCommon,
    /// `sdp_stream_metadata`.
    pub sdp_stream_metadata: SdpStreamMetadata,
    /// Unknown fields.
    pub extra: Map<String, Value>,
}

/// `org.oraclecalls.call.confirm`: one side's key confirmation.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Confirm {
    /// Common fields.
    pub common: CallCommon,
    /// `mac`: the confirmation, base64url on the wire.
    pub mac: Confirmation,
    /// Unknown fields.
    pub extra: Map<String, Value>,
}

/// Any call event content.
#[derive(Debug, Clone, PartialEq, Eq)]
#[allow(missing_docs)]
pub enum CallEvent {
    Invite(Invite),
    Candidates(Candidates),
    Answer(Answer),
    SelectAnswer(SelectAnswer),
    Negotiate(Negotiate),
    Reject(Reject),
    Hangup(Hangup),
    SdpStreamMetadataChanged(SdpStreamMetadataChanged),
    Confirm(Confirm),
}

impl CallEvent {
    /// Whether `event_type` is one this module reads.
    pub fn is_call_event_type(event_type: &str) -> bool {
        matches!(
            event_type,
            "m.call.invite"
                | "m.call.candidates"
                | "m.call.answer"
                | "m.call.select_answer"
                | "m.call.negotiate"
                | "m.call.reject"
                | "m.call.hangup"
                | "m.call.sdp_stream_metadata_changed"
                | CONFIRM_EVENT_TYPE
        )
    }

    /// Parses the content of an event of type `event_type`.
    ///
    /// # Errors
    /// A [`SignalError`] naming what is wrong.
    pub fn parse(event_type: &str, content: &Value) -> Result<Self, SignalError> {
        let mut o = Obj::new(content)?;
        let common = o.common()?;
        let ev = match event_type {
            "m.call.invite" => {
                let offer_sdp = o.description("offer", SdpType::Offer)?;
                let lifetime_ms = o.u64("lifetime")?;
                let invitee = o.opt_str("invitee")?;
                let sdp_stream_metadata = o.opt_metadata()?;
                let direct = o.extension()?;
                CallEvent::Invite(Invite {
                    common,
                    offer_sdp,
                    lifetime_ms,
                    invitee,
                    sdp_stream_metadata,
                    direct,
                    extra: o.rest(),
                })
            }
            "m.call.candidates" => {
                let candidates = o.candidates()?;
                CallEvent::Candidates(Candidates {
                    common,
                    candidates,
                    extra: o.rest(),
                })
            }
            "m.call.answer" => {
                let answer_sdp = o.description("answer", SdpType::Answer)?;
                let sdp_stream_metadata = o.opt_metadata()?;
                let direct = o.extension()?;
                CallEvent::Answer(Answer {
                    common,
                    answer_sdp,
                    sdp_stream_metadata,
                    direct,
                    extra: o.rest(),
                })
            }
            "m.call.select_answer" => {
                let s = o.str("selected_party_id")?;
                let selected_party_id = PartyId::parse_field(&s, "selected_party_id")?;
                CallEvent::SelectAnswer(SelectAnswer {
                    common,
                    selected_party_id,
                    extra: o.rest(),
                })
            }
            "m.call.negotiate" => {
                let (sdp_type, sdp) = o.any_description("description")?;
                let lifetime_ms = o.u64("lifetime")?;
                let sdp_stream_metadata = o.opt_metadata()?;
                CallEvent::Negotiate(Negotiate {
                    common,
                    sdp_type,
                    sdp,
                    lifetime_ms,
                    sdp_stream_metadata,
                    extra: o.rest(),
                })
            }
            "m.call.reject" => CallEvent::Reject(Reject {
                common,
                extra: o.rest(),
            }),
            "m.call.hangup" => {
                let reason = o
                    .opt_str("reason")?
                    .map_or(HangupReason::UserHangup, |r| HangupReason::from_wire(&r));
                CallEvent::Hangup(Hangup {
                    common,
                    reason,
                    extra: o.rest(),
                })
            }
            "m.call.sdp_stream_metadata_changed" => {
                let sdp_stream_metadata = o
                    .opt_metadata()?
                    .ok_or(SignalError::MissingField("sdp_stream_metadata"))?;
                CallEvent::SdpStreamMetadataChanged(SdpStreamMetadataChanged {
                    common,
                    sdp_stream_metadata,
                    extra: o.rest(),
                })
            }
            CONFIRM_EVENT_TYPE => {
                let mac = Confirmation::from_base64url(&o.str("mac")?).map_err(|_| {
                    SignalError::WrongType {
                        field: "mac",
                        expected: "32 bytes of base64url without padding",
                    }
                })?;
                CallEvent::Confirm(Confirm {
                    common,
                    mac,
                    extra: o.rest(),
                })
            }
            other => return Err(SignalError::UnknownEventType(other.to_owned())),
        };
        Ok(ev)
    }

    /// The event type to send this content as.
    pub fn event_type(&self) -> &'static str {
        match self {
            CallEvent::Invite(_) => "m.call.invite",
            CallEvent::Candidates(_) => "m.call.candidates",
            CallEvent::Answer(_) => "m.call.answer",
            CallEvent::SelectAnswer(_) => "m.call.select_answer",
            CallEvent::Negotiate(_) => "m.call.negotiate",
            CallEvent::Reject(_) => "m.call.reject",
            CallEvent::Hangup(_) => "m.call.hangup",
            CallEvent::SdpStreamMetadataChanged(_) => "m.call.sdp_stream_metadata_changed",
            CallEvent::Confirm(_) => CONFIRM_EVENT_TYPE,
        }
    }

    /// The common fields.
    pub fn common(&self) -> &CallCommon {
        match self {
            CallEvent::Invite(e) => &e.common,
            CallEvent::Candidates(e) => &e.common,
            CallEvent::Answer(e) => &e.common,
            CallEvent::SelectAnswer(e) => &e.common,
            CallEvent::Negotiate(e) => &e.common,
            CallEvent::Reject(e) => &e.common,
            CallEvent::Hangup(e) => &e.common,
            CallEvent::SdpStreamMetadataChanged(e) => &e.common,
            CallEvent::Confirm(e) => &e.common,
        }
    }

    /// The content as JSON: unknown fields first, then ours (which win).
    pub fn to_content(&self) -> Value {
        let (extra, mut fields) = match self {
            CallEvent::Invite(e) => {
                let mut f = Map::new();
                f.insert("offer".into(), description(SdpType::Offer, &e.offer_sdp));
                f.insert("lifetime".into(), json!(e.lifetime_ms));
                if let Some(i) = &e.invitee {
                    f.insert("invitee".into(), json!(i));
                }
                put_metadata(&mut f, e.sdp_stream_metadata.as_ref());
                put_extension(&mut f, e.direct.as_ref());
                (&e.extra, f)
            }
            CallEvent::Candidates(e) => {
                let mut f = Map::new();
                let list: Vec<Value> = e.candidates.iter().map(candidate_json).collect();
                f.insert("candidates".into(), Value::Array(list));
                (&e.extra, f)
            }
            CallEvent::Answer(e) => {
                let mut f = Map::new();
                f.insert("answer".into(), description(SdpType::Answer, &e.answer_sdp));
                put_metadata(&mut f, e.sdp_stream_metadata.as_ref());
                put_extension(&mut f, e.direct.as_ref());
                (&e.extra, f)
            }
            CallEvent::SelectAnswer(e) => {
                let mut f = Map::new();
                f.insert(
                    "selected_party_id".into(),
                    json!(e.selected_party_id.as_str()),
                );
                (&e.extra, f)
            }
            CallEvent::Negotiate(e) => {
                let mut f = Map::new();
                f.insert("description".into(), description(e.sdp_type, &e.sdp));
                f.insert("lifetime".into(), json!(e.lifetime_ms));
                put_metadata(&mut f, e.sdp_stream_metadata.as_ref());
                (&e.extra, f)
            }
            CallEvent::Reject(e) => (&e.extra, Map::new()),
            CallEvent::Hangup(e) => {
                let mut f = Map::new();
                f.insert("reason".into(), json!(e.reason.as_str()));
                (&e.extra, f)
            }
            CallEvent::SdpStreamMetadataChanged(e) => {
                let mut f = Map::new();
                put_metadata(&mut f, Some(&e.sdp_stream_metadata));
                (&e.extra, f)
            }
            CallEvent::Confirm(e) => {
                let mut f = Map::new();
                f.insert("mac".into(), json!(e.mac.to_base64url()));
                (&e.extra, f)
            }
        };
        let common = self.common();
        fields.insert("call_id".into(), json!(common.call_id.as_str()));
        fields.insert("party_id".into(), json!(common.party_id.as_str()));
        fields.insert(
            "version".into(),
            match common.version {
                Version::V0 => json!(0),
                Version::V1 => json!("1"),
            },
        );
        let mut out = extra.clone();
        out.extend(fields);
        Value::Object(out)
    }
}

fn description(kind: SdpType, sdp: &str) -> Value {
    json!({"type": kind.as_str(), "sdp": sdp})
}

fn candidate_json(c: &Candidate) -> Value {
    let mut m = Map::new();
    m.insert("candidate".into(), json!(c.candidate));
    if let Some(mid) = &c.sdp_mid {
        m.insert("sdpMid".into(), json!(mid));
    }
    if let Some(i) = c.sdp_m_line_index {
        m.insert("sdpMLineIndex".into(), json!(i));
    }
    if let Some(u) = &c.username_fragment {
        m.insert("usernameFragment".into(), json!(u));
    }
    Value::Object(m)
}

fn put_metadata(f: &mut Map<String, Value>, md: Option<&SdpStreamMetadata>) {
    let Some(md) = md else { return };
    let mut out = Map::new();
    for (stream, m) in md {
        let mut e = Map::new();
        e.insert("purpose".into(), json!(m.purpose.as_str()));
        if let Some(a) = m.audio_muted {
            e.insert("audio_muted".into(), json!(a));
        }
        if let Some(v) = m.video_muted {
            e.insert("video_muted".into(), json!(v));
        }
        out.insert(stream.clone(), Value::Object(e));
    }
    f.insert("sdp_stream_metadata".into(), Value::Object(out));
}

fn put_extension(f: &mut Map<String, Value>, ext: Option<&DirectExtension>) {
    let Some(ext) = ext else { return };
    f.insert(
        EXTENSION_FIELD.into(),
        json!({"v": 1, "dh": ext.dh.to_base64url(), "nonce": ext.nonce.to_base64url()}),
    );
}

/// A content object whose known fields are taken out one by one; what is left is `extra`.
struct Obj(Map<String, Value>);

impl Obj {
    fn new(content: &Value) -> Result<Self, SignalError> {
        match content {
            Value::Object(m) => Ok(Self(m.clone())),
            _ => Err(SignalError::NotAnObject { field: "content" }),
        }
    }

    fn take(&mut self, field: &'static str) -> Option<Value> {
        self.0.remove(field).filter(|v| !v.is_null())
    }

    fn str(&mut self, field: &'static str) -> Result<String, SignalError> {
        self.opt_str(field)?.ok_or(SignalError::MissingField(field))
    }

    fn opt_str(&mut self, field: &'static str) -> Result<Option<String>, SignalError> {
        match self.take(field) {
            None => Ok(None),
            Some(Value::String(s)) => Ok(Some(s)),
            Some(_) => Err(SignalError::WrongType {
                field,
                expected: "a string",
            }),
        }
    }

    fn u64(&mut self, field: &'static str) -> Result<u64, SignalError> {
        match self.take(field) {
            None => Err(SignalError::MissingField(field)),
            Some(v) => v.as_u64().ok_or(SignalError::WrongType {
                field,
                expected: "a non-negative integer",
            }),
        }
    }

    fn common(&mut self) -> Result<CallCommon, SignalError> {
        let call_id = CallId::parse(&self.str("call_id")?)?;
        let party_id = PartyId::parse(&self.str("party_id")?)?;
        let version = match self.take("version") {
            None => return Err(SignalError::MissingField("version")),
            Some(Value::Number(n)) if n.as_u64() == Some(0) || n.as_i64() == Some(0) => Version::V0,
            Some(Value::Number(n)) if n.is_i64() || n.is_u64() => Version::V1,
            Some(Value::String(_)) => Version::V1,
            Some(_) => return Err(SignalError::BadVersionType),
        };
        Ok(CallCommon {
            call_id,
            party_id,
            version,
        })
    }

    fn description(&mut self, field: &'static str, want: SdpType) -> Result<String, SignalError> {
        let (kind, sdp) = self.any_description(field)?;
        if kind == want {
            Ok(sdp)
        } else {
            Err(SignalError::WrongSdpType {
                field,
                expected: want.as_str(),
            })
        }
    }

    fn any_description(&mut self, field: &'static str) -> Result<(SdpType, String), SignalError> {
        let Some(v) = self.take(field) else {
            return Err(SignalError::MissingField(field));
        };
        let Value::Object(m) = v else {
            return Err(SignalError::NotAnObject { field });
        };
        let kind = match m.get("type") {
            Some(Value::String(t)) if t == "offer" => SdpType::Offer,
            Some(Value::String(t)) if t == "answer" => SdpType::Answer,
            Some(Value::String(_)) => {
                return Err(SignalError::WrongSdpType {
                    field,
                    expected: "offer` or `answer",
                });
            }
            Some(_) => {
                return Err(SignalError::WrongType {
                    field,
                    expected: "an object with a string `type`",
                });
            }
            None => return Err(SignalError::MissingField(field)),
        };
        match m.get("sdp") {
            Some(Value::String(sdp)) => Ok((kind, sdp.clone())),
            _ => Err(SignalError::WrongType {
                field,
                expected: "an object with a string `sdp`",
            }),
        }
    }

    fn candidates(&mut self) -> Result<Vec<Candidate>, SignalError> {
        let Some(v) = self.take("candidates") else {
            return Err(SignalError::MissingField("candidates"));
        };
        let Value::Array(list) = v else {
            return Err(SignalError::WrongType {
                field: "candidates",
                expected: "an array",
            });
        };
        let mut out = Vec::with_capacity(list.len());
        for (index, c) in list.into_iter().enumerate() {
            let Value::Object(m) = c else {
                return Err(SignalError::NotAnObject {
                    field: "candidates[]",
                });
            };
            let str_of = |key: &str| -> Result<Option<String>, SignalError> {
                match m.get(key) {
                    None | Some(Value::Null) => Ok(None),
                    Some(Value::String(s)) => Ok(Some(s.clone())),
                    Some(_) => Err(SignalError::WrongType {
                        field: "candidates[]",
                        expected: "string `candidate`, `sdpMid` and `usernameFragment`",
                    }),
                }
            };
            let candidate = str_of("candidate")?.ok_or(SignalError::MissingField("candidate"))?;
            let sdp_mid = str_of("sdpMid")?;
            let username_fragment = str_of("usernameFragment")?;
            let sdp_m_line_index = match m.get("sdpMLineIndex") {
                None | Some(Value::Null) => None,
                Some(v) => Some(v.as_u64().and_then(|i| u32::try_from(i).ok()).ok_or(
                    SignalError::WrongType {
                        field: "candidates[]",
                        expected: "a non-negative integer `sdpMLineIndex`",
                    },
                )?),
            };
            if !candidate.is_empty() && sdp_mid.is_none() && sdp_m_line_index.is_none() {
                return Err(SignalError::CandidateWithoutMid { index });
            }
            out.push(Candidate {
                candidate,
                sdp_mid,
                sdp_m_line_index,
                username_fragment,
            });
        }
        Ok(out)
    }

    fn opt_metadata(&mut self) -> Result<Option<SdpStreamMetadata>, SignalError> {
        const FIELD: &str = "sdp_stream_metadata";
        let Some(v) = self.take(FIELD) else {
            return Ok(None);
        };
        let Value::Object(m) = v else {
            return Err(SignalError::NotAnObject { field: FIELD });
        };
        let mut out = SdpStreamMetadata::new();
        for (stream, entry) in m {
            let Value::Object(e) = entry else {
                return Err(SignalError::NotAnObject { field: FIELD });
            };
            let purpose = match e.get("purpose") {
                Some(Value::String(p)) if p == "m.usermedia" => StreamPurpose::UserMedia,
                Some(Value::String(p)) if p == "m.screenshare" => StreamPurpose::ScreenShare,
                Some(Value::String(p)) => StreamPurpose::Other(p.clone()),
                Some(_) => {
                    return Err(SignalError::WrongType {
                        field: FIELD,
                        expected: "entries with a string `purpose`",
                    });
                }
                None => return Err(SignalError::MissingField("purpose")),
            };
            let flag = |key: &str| -> Result<Option<bool>, SignalError> {
                match e.get(key) {
                    None | Some(Value::Null) => Ok(None),
                    Some(Value::Bool(b)) => Ok(Some(*b)),
                    Some(_) => Err(SignalError::WrongType {
                        field: FIELD,
                        expected: "entries with boolean `audio_muted` and `video_muted`",
                    }),
                }
            };
            out.insert(
                stream,
                StreamMetadata {
                    purpose,
                    audio_muted: flag("audio_muted")?,
                    video_muted: flag("video_muted")?,
                },
            );
        }
        Ok(Some(out))
    }

    fn extension(&mut self) -> Result<Option<DirectExtension>, SignalError> {
        let Some(v) = self.take(EXTENSION_FIELD) else {
            return Ok(None);
        };
        let Value::Object(m) = v else {
            return Err(SignalError::NotAnObject {
                field: EXTENSION_FIELD,
            });
        };
        match m.get("v") {
            None => return Err(ExtensionError::MissingField("v").into()),
            Some(v) if v.as_u64() == Some(1) => {}
            Some(_) => return Err(ExtensionError::UnsupportedVersion.into()),
        }
        let text = |key: &'static str| -> Result<&str, ExtensionError> {
            match m.get(key) {
                None | Some(Value::Null) => Err(ExtensionError::MissingField(key)),
                Some(Value::String(s)) => Ok(s),
                Some(_) => Err(ExtensionError::WrongType(key)),
            }
        };
        let dh = EphemeralPublicKey::from_base64url(text("dh")?)?;
        let nonce = Nonce::from_base64url(text("nonce")?)?;
        Ok(Some(DirectExtension { dh, nonce }))
    }

    fn rest(self) -> Map<String, Value> {
        self.0
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing)]
mod tests {
    use proptest::prelude::*;
    use rand::SeedableRng as _;
    use rand::rngs::StdRng;

    use super::*;
    use crate::binding::EphemeralKeyPair;

    const SDP: &str = "v=0\r\no=- 1 2 IN IP4 127.0.0.1\r\ns=-\r\n";

    /// MatrixCall's shapes as captured in the research note (§A.2), SDP shortened.
    fn matrixcall_events() -> Vec<(&'static str, Value)> {
        vec![
            (
                "m.call.invite",
                json!({"call_id":"1796406079445Gff4oXja6LgtI0o7","capabilities":{"m.call.dtmf":false,"m.call.transferee":false},
                "invitee":"@bob:localhost","lifetime":60000,"offer":{"sdp":SDP,"type":"offer"},
                "party_id":"VHPPTOXURU","sdp_stream_metadata":{"b2c3318f-0b64-4f55-a0b1-0d2b0d7f3b11":{"audio_muted":false,"purpose":"m.usermedia","video_muted":true}},
                "version":"1"}),
            ),
            (
                "m.call.candidates",
                json!({"call_id":"1796406079445Gff4oXja6LgtI0o7","candidates":[
                    {"candidate":"candidate:3309730139 1 udp 2122194687 192.0.2.2 47234 typ host generation 0 ufrag vbMB network-id 1","sdpMLineIndex":0,"sdpMid":"0","usernameFragment":"vbMB"},
                    {"candidate":"candidate:1 1 udp 41885439 127.0.0.1 49163 typ relay raddr 0.0.0.0 rport 0 generation 0 ufrag vbMB","sdpMLineIndex":0,"sdpMid":"0","usernameFragment":"vbMB"},
                    {"candidate":"candidate:2 1 tcp 1518214911 192.0.2.2 9 typ host tcptype active generation 0 ufrag vbMB network-id 1","sdpMLineIndex":0,"sdpMid":"0","usernameFragment":"vbMB"},
                    {"candidate":""}],
                "party_id":"VHPPTOXURU","version":"1"}),
            ),
            (
                "m.call.answer",
                json!({"answer":{"sdp":SDP,"type":"answer"},"sdp_stream_metadata":{"s1":{"purpose":"m.usermedia"}},
                "capabilities":{"m.call.dtmf":false,"m.call.transferee":false},
                "version":"1","call_id":"1796406079445Gff4oXja6LgtI0o7","party_id":"TLFONSJIST"}),
            ),
            (
                "m.call.select_answer",
                json!({"call_id":"1796406079445Gff4oXja6LgtI0o7","party_id":"VHPPTOXURU","selected_party_id":"TLFONSJIST","version":"1"}),
            ),
            (
                "m.call.hangup",
                json!({"call_id":"1796406079445Gff4oXja6LgtI0o7","party_id":"VHPPTOXURU","reason":"user_hangup","version":"1"}),
            ),
            (
                "m.call.hangup",
                json!({"call_id":"c","party_id":"P","reason":"replaced","version":"1"}),
            ),
            (
                "m.call.reject",
                json!({"call_id":"c","party_id":"P","version":"1"}),
            ),
            (
                "m.call.negotiate",
                json!({"call_id":"c","party_id":"P","version":"1","lifetime":10000,"description":{"type":"offer","sdp":SDP}}),
            ),
            (
                "m.call.sdp_stream_metadata_changed",
                json!({"call_id":"c","party_id":"P","version":"1","sdp_stream_metadata":{"s":{"purpose":"m.usermedia","audio_muted":true}}}),
            ),
        ]
    }

    #[test]
    fn matrixcall_shapes_parse_and_round_trip_exactly() {
        for (ty, content) in matrixcall_events() {
            let ev = CallEvent::parse(ty, &content).unwrap_or_else(|e| panic!("{ty}: {e}"));
            assert_eq!(ev.event_type(), ty);
            assert_eq!(ev.to_content(), content, "{ty} does not round-trip");
        }
    }

    #[test]
    fn matrixcall_details_are_understood() {
        let evs: Vec<CallEvent> = matrixcall_events()
            .into_iter()
            .map(|(t, c)| CallEvent::parse(t, &c).unwrap())
            .collect();
        let CallEvent::Invite(inv) = &evs[0] else {
            panic!()
        };
        assert_eq!(inv.lifetime_ms, 60000);
        assert_eq!(inv.invitee.as_deref(), Some("@bob:localhost"));
        assert!(inv.direct.is_none());
        assert!(inv.extra.contains_key("capabilities"));
        let md = inv.sdp_stream_metadata.as_ref().unwrap();
        let entry = md.values().next().unwrap();
        assert_eq!(entry.purpose, StreamPurpose::UserMedia);
        assert_eq!(entry.video_muted, Some(true));
        let CallEvent::Candidates(c) = &evs[1] else {
            panic!()
        };
        assert_eq!(c.candidates.len(), 4);
        assert_eq!(c.candidates[0].username_fragment.as_deref(), Some("vbMB"));
        assert!(c.candidates[3].is_end_of_candidates());
        let CallEvent::Hangup(h) = &evs[5] else {
            panic!()
        };
        assert_eq!(h.reason, HangupReason::replaced());
    }

    #[test]
    fn versions_follow_the_spec_rule() {
        let base = |v: Value| json!({"call_id":"c","party_id":"P","version":v});
        let ver =
            |v: Value| CallEvent::parse("m.call.reject", &base(v)).map(|e| e.common().version);
        assert_eq!(ver(json!("1")), Ok(Version::V1));
        assert_eq!(ver(json!(0)), Ok(Version::V0));
        assert_eq!(ver(json!("2")), Ok(Version::V1));
        assert_eq!(ver(json!("experimental.x")), Ok(Version::V1));
        assert_eq!(ver(json!(7)), Ok(Version::V1));
        assert_eq!(ver(json!(true)), Err(SignalError::BadVersionType));
        assert_eq!(ver(json!(1.5)), Err(SignalError::BadVersionType));
        assert_eq!(ver(json!({})), Err(SignalError::BadVersionType));
        assert_eq!(
            CallEvent::parse("m.call.reject", &json!({"call_id":"c","party_id":"P"})),
            Err(SignalError::MissingField("version"))
        );
        // Version 0 writes back as the integer.
        let ev = CallEvent::parse("m.call.reject", &base(json!(0))).unwrap();
        assert_eq!(ev.to_content()["version"], json!(0));
    }

    #[test]
    fn hangup_without_reason_is_user_hangup_and_unknown_reasons_are_kept() {
        let ev = CallEvent::parse(
            "m.call.hangup",
            &json!({"call_id":"c","party_id":"P","version":"1"}),
        )
        .unwrap();
        let CallEvent::Hangup(h) = ev else { panic!() };
        assert_eq!(h.reason, HangupReason::UserHangup);
        for r in [
            "answered_elsewhere",
            "signalling_timeout",
            "transferred",
            "replaced",
        ] {
            assert_eq!(HangupReason::from_wire(r), HangupReason::Custom(r.into()));
            assert_eq!(HangupReason::from_wire(r).as_str(), r);
        }
        for r in [
            "ice_timeout",
            "ice_failed",
            "invite_timeout",
            "user_hangup",
            "user_media_failed",
            "user_busy",
            "unknown_error",
        ] {
            let h = HangupReason::from_wire(r);
            assert!(!matches!(h, HangupReason::Custom(_)), "{r}");
            assert_eq!(h.as_str(), r);
        }
    }

    #[test]
    fn our_extension_round_trips_in_invite_and_answer() {
        let mut rng = StdRng::seed_from_u64(3);
        let kp = EphemeralKeyPair::generate(&mut rng);
        let invite = CallEvent::Invite(Invite {
            common: CallCommon::v1(CallId::parse("c1").unwrap(), PartyId::parse("DEV").unwrap()),
            offer_sdp: SDP.into(),
            lifetime_ms: 60000,
            invitee: Some("@bob:example.org".into()),
            sdp_stream_metadata: None,
            direct: Some(kp.extension()),
            extra: Map::new(),
        });
        let content = invite.to_content();
        let ext = &content[EXTENSION_FIELD];
        assert_eq!(ext["v"], json!(1));
        assert_eq!(ext["dh"].as_str().unwrap().len(), 87);
        assert_eq!(ext["nonce"].as_str().unwrap().len(), 43);
        assert_eq!(CallEvent::parse("m.call.invite", &content).unwrap(), invite);
        let answer = CallEvent::Answer(Answer {
            common: CallCommon::v1(
                CallId::parse("c1").unwrap(),
                PartyId::parse("DEV2").unwrap(),
            ),
            answer_sdp: SDP.into(),
            sdp_stream_metadata: None,
            direct: Some(kp.extension()),
            extra: Map::new(),
        });
        assert_eq!(
            CallEvent::parse("m.call.answer", &answer.to_content()).unwrap(),
            answer
        );
        // Snapshot of the shape (key order of serde_json's map is sorted).
        let keys: Vec<&String> = content.as_object().unwrap().keys().collect();
        assert_eq!(
            keys,
            [
                "call_id",
                "invitee",
                "lifetime",
                "offer",
                "org.oraclecalls.direct.v1",
                "party_id",
                "version"
            ]
        );
    }

    fn with_ext(ext: Value) -> Value {
        json!({"call_id":"c","party_id":"P","version":"1","lifetime":1000,
               "offer":{"type":"offer","sdp":SDP}, EXTENSION_FIELD: ext})
    }

    #[test]
    fn malformed_extensions_are_refused_with_typed_errors() {
        let mut rng = StdRng::seed_from_u64(4);
        let kp = EphemeralKeyPair::generate(&mut rng);
        let dh = kp.public().to_base64url();
        let nonce = kp.nonce().to_base64url();
        let parse = |ext: Value| CallEvent::parse("m.call.invite", &with_ext(ext)).map(|_| ());
        assert_eq!(parse(json!({"v":1,"dh":dh,"nonce":nonce})), Ok(()));
        let cases: Vec<(Value, SignalError)> = vec![
            (
                json!("x"),
                SignalError::NotAnObject {
                    field: EXTENSION_FIELD,
                },
            ),
            (
                json!({"dh":dh,"nonce":nonce}),
                ExtensionError::MissingField("v").into(),
            ),
            (
                json!({"v":2,"dh":dh,"nonce":nonce}),
                ExtensionError::UnsupportedVersion.into(),
            ),
            (
                json!({"v":"1","dh":dh,"nonce":nonce}),
                ExtensionError::UnsupportedVersion.into(),
            ),
            (
                json!({"v":1,"nonce":nonce}),
                ExtensionError::MissingField("dh").into(),
            ),
            (
                json!({"v":1,"dh":dh}),
                ExtensionError::MissingField("nonce").into(),
            ),
            (
                json!({"v":1,"dh":5,"nonce":nonce}),
                ExtensionError::WrongType("dh").into(),
            ),
            (
                json!({"v":1,"dh":format!("{dh}="),"nonce":nonce}),
                ExtensionError::BadBase64("dh").into(),
            ),
            (
                json!({"v":1,"dh":dh.replace('_', "/").replace('-', "+") + "+/","nonce":nonce}),
                ExtensionError::BadBase64("dh").into(),
            ),
            (
                json!({"v":1,"dh":"AAAA","nonce":nonce}),
                ExtensionError::WrongLength {
                    field: "dh",
                    expected: 65,
                    actual: 3,
                }
                .into(),
            ),
            (
                json!({"v":1,"dh":dh,"nonce":"AAAA"}),
                ExtensionError::WrongLength {
                    field: "nonce",
                    expected: 32,
                    actual: 3,
                }
                .into(),
            ),
            (
                json!({"v":1,"dh":"A".repeat(87),"nonce":nonce}),
                ExtensionError::InvalidPublicKey.into(),
            ),
        ];
        for (ext, want) in cases {
            assert_eq!(parse(ext.clone()), Err(want), "{ext}");
        }
    }

    #[test]
    fn malformed_contents_are_refused_with_typed_errors() {
        let cases: Vec<(&str, Value, SignalError)> = vec![
            (
                "m.call.foo",
                json!({"call_id":"c","party_id":"P","version":"1"}),
                SignalError::UnknownEventType("m.call.foo".into()),
            ),
            (
                "m.call.reject",
                json!([]),
                SignalError::NotAnObject { field: "content" },
            ),
            (
                "m.call.reject",
                json!({"party_id":"P","version":"1"}),
                SignalError::MissingField("call_id"),
            ),
            (
                "m.call.reject",
                json!({"call_id":"c","version":"1"}),
                SignalError::MissingField("party_id"),
            ),
            (
                "m.call.reject",
                json!({"call_id":"a b","party_id":"P","version":"1"}),
                SignalError::BadIdentifier("call_id"),
            ),
            (
                "m.call.reject",
                json!({"call_id":"","party_id":"P","version":"1"}),
                SignalError::BadIdentifier("call_id"),
            ),
            (
                "m.call.reject",
                json!({"call_id":"c","party_id":"P\n","version":"1"}),
                SignalError::BadIdentifier("party_id"),
            ),
            (
                "m.call.reject",
                json!({"call_id":5,"party_id":"P","version":"1"}),
                SignalError::WrongType {
                    field: "call_id",
                    expected: "a string",
                },
            ),
            (
                "m.call.invite",
                json!({"call_id":"c","party_id":"P","version":"1","lifetime":1}),
                SignalError::MissingField("offer"),
            ),
            (
                "m.call.invite",
                json!({"call_id":"c","party_id":"P","version":"1","offer":{"type":"offer","sdp":SDP}}),
                SignalError::MissingField("lifetime"),
            ),
            (
                "m.call.invite",
                json!({"call_id":"c","party_id":"P","version":"1","lifetime":-1,"offer":{"type":"offer","sdp":SDP}}),
                SignalError::WrongType {
                    field: "lifetime",
                    expected: "a non-negative integer",
                },
            ),
            (
                "m.call.invite",
                json!({"call_id":"c","party_id":"P","version":"1","lifetime":1,"offer":{"type":"answer","sdp":SDP}}),
                SignalError::WrongSdpType {
                    field: "offer",
                    expected: "offer",
                },
            ),
            (
                "m.call.invite",
                json!({"call_id":"c","party_id":"P","version":"1","lifetime":1,"offer":{"type":"offer"}}),
                SignalError::WrongType {
                    field: "offer",
                    expected: "an object with a string `sdp`",
                },
            ),
            (
                "m.call.invite",
                json!({"call_id":"c","party_id":"P","version":"1","lifetime":1,"offer":"sdp"}),
                SignalError::NotAnObject { field: "offer" },
            ),
            (
                "m.call.answer",
                json!({"call_id":"c","party_id":"P","version":"1","answer":{"type":"offer","sdp":SDP}}),
                SignalError::WrongSdpType {
                    field: "answer",
                    expected: "answer",
                },
            ),
            (
                "m.call.candidates",
                json!({"call_id":"c","party_id":"P","version":"1"}),
                SignalError::MissingField("candidates"),
            ),
            (
                "m.call.candidates",
                json!({"call_id":"c","party_id":"P","version":"1","candidates":{}}),
                SignalError::WrongType {
                    field: "candidates",
                    expected: "an array",
                },
            ),
            (
                "m.call.candidates",
                json!({"call_id":"c","party_id":"P","version":"1","candidates":[{"candidate":"candidate:1 1 udp 1 1.2.3.4 5 typ host"}]}),
                SignalError::CandidateWithoutMid { index: 0 },
            ),
            (
                "m.call.candidates",
                json!({"call_id":"c","party_id":"P","version":"1","candidates":[{"sdpMid":"0"}]}),
                SignalError::MissingField("candidate"),
            ),
            (
                "m.call.select_answer",
                json!({"call_id":"c","party_id":"P","version":"1"}),
                SignalError::MissingField("selected_party_id"),
            ),
            (
                "m.call.select_answer",
                json!({"call_id":"c","party_id":"P","version":"1","selected_party_id":""}),
                SignalError::BadIdentifier("selected_party_id"),
            ),
            (
                "m.call.negotiate",
                json!({"call_id":"c","party_id":"P","version":"1","lifetime":1,"description":{"type":"pranswer","sdp":SDP}}),
                SignalError::WrongSdpType {
                    field: "description",
                    expected: "offer` or `answer",
                },
            ),
            (
                "m.call.hangup",
                json!({"call_id":"c","party_id":"P","version":"1","reason":3}),
                SignalError::WrongType {
                    field: "reason",
                    expected: "a string",
                },
            ),
            (
                "m.call.sdp_stream_metadata_changed",
                json!({"call_id":"c","party_id":"P","version":"1"}),
                SignalError::MissingField("sdp_stream_metadata"),
            ),
            (
                "m.call.sdp_stream_metadata_changed",
                json!({"call_id":"c","party_id":"P","version":"1","sdp_stream_metadata":{"s":{}}}),
                SignalError::MissingField("purpose"),
            ),
            (
                CONFIRM_EVENT_TYPE,
                json!({"call_id":"c","party_id":"P","version":"1","mac":"AAAA"}),
                SignalError::WrongType {
                    field: "mac",
                    expected: "32 bytes of base64url without padding",
                },
            ),
        ];
        for (ty, content, want) in cases {
            assert_eq!(CallEvent::parse(ty, &content), Err(want), "{ty} {content}");
        }
    }

    #[test]
    fn end_of_candidates_needs_no_mid() {
        let ev = CallEvent::Candidates(Candidates {
            common: CallCommon::v1(CallId::parse("c").unwrap(), PartyId::parse("P").unwrap()),
            candidates: vec![Candidate::end_of_candidates()],
            extra: Map::new(),
        });
        assert_eq!(ev.to_content()["candidates"], json!([{"candidate": ""}]));
        assert_eq!(
            CallEvent::parse("m.call.candidates", &ev.to_content()).unwrap(),
            ev
        );
    }

    fn arb_id() -> impl Strategy<Value = String> {
        "[A-Za-z0-9._~-]{1,40}"
    }

    proptest! {
        #[test]
        fn hangups_and_candidates_round_trip(
            call in arb_id(), party in "[A-Z]{1,12}", reason in "[a-z_]{1,20}",
            cands in proptest::collection::vec(("[ -~]{0,60}", proptest::option::of("[0-9]{1,2}"), proptest::option::of(0u32..8), proptest::option::of("[A-Za-z]{4}")), 0..6),
        ) {
            let common = CallCommon::v1(CallId::parse(&call).unwrap(), PartyId::parse(&party).unwrap());
            let h = CallEvent::Hangup(Hangup { common: common.clone(), reason: HangupReason::from_wire(&reason), extra: Map::new() });
            prop_assert_eq!(CallEvent::parse("m.call.hangup", &h.to_content()).unwrap(), h);
            let candidates: Vec<Candidate> = cands.into_iter().map(|(c, mid, idx, u)| {
                let mid = if c.is_empty() || idx.is_some() { mid } else { Some(mid.unwrap_or_else(|| "0".into())) };
                Candidate { candidate: c, sdp_mid: mid, sdp_m_line_index: idx, username_fragment: u }
            }).collect();
            let c = CallEvent::Candidates(Candidates { common, candidates, extra: Map::new() });
            prop_assert_eq!(CallEvent::parse("m.call.candidates", &c.to_content()).unwrap(), c);
        }

        #[test]
        fn parse_never_panics(ty in prop::sample::select(vec!["m.call.invite","m.call.answer","m.call.candidates","m.call.negotiate","m.call.hangup", CONFIRM_EVENT_TYPE]), s in "\\PC{0,200}") {
            if let Ok(v) = serde_json::from_str::<Value>(&s) {
                let _ = CallEvent::parse(ty, &v);
            }
        }
    }
}

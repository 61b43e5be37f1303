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
mod tests;

//! The parse error shared by every validated wire type.

/// Why a wire value was rejected. Each variant names the part that was wrong.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum ParseError {
    /// The call id has no `@` separating the event id from the room name.
    #[error("call id must be `<eventId>@<roomName>`: no `@` separator found")]
    CallIdMissingSeparator,
    /// The Matrix event id part is malformed.
    #[error("event id is invalid: {0}")]
    EventId(&'static str),
    /// The LiveKit room name part is malformed.
    #[error("room name is invalid: {0}")]
    RoomName(&'static str),
    /// A percent-encoded form could not be decoded.
    #[error("percent-encoding is invalid: {0}")]
    PercentEncoding(&'static str),
    /// A DID is malformed.
    #[error("DID is invalid: {0}")]
    Did(&'static str),
    /// A session id is malformed.
    #[error("session id is invalid: {0}")]
    SessionId(&'static str),
    /// A key envelope's text is malformed (its inside is checked by the crypto crate).
    #[error("key envelope is invalid: {0}")]
    KeyEnvelope(&'static str),
    /// A timestamp is not RFC 3339.
    #[error("timestamp is not RFC 3339")]
    Timestamp,
    /// A request body is inconsistent.
    #[error("request is invalid: {0}")]
    Request(&'static str),
}

//! `utoipa` schemas for the validated text types (behind the `openapi` feature), so the server
//! can generate its OpenAPI document from these very types.

use utoipa::openapi::RefOr;
use utoipa::openapi::schema::{ObjectBuilder, Schema, Type};

use crate::{CallId, Did, EventId, KeyEnvelope, RoomName, SessionId, Timestamp};

fn text_schema(description: &str, pattern: Option<&str>, max_len: usize) -> RefOr<Schema> {
    ObjectBuilder::new()
        .schema_type(Type::String)
        .description(Some(description))
        .pattern(pattern)
        .min_length(Some(1))
        .max_length(Some(max_len))
        .into()
}

macro_rules! text_schema_impl {
    ($ty:ty, $desc:expr, $pattern:expr, $max:expr) => {
        impl utoipa::PartialSchema for $ty {
            fn schema() -> RefOr<Schema> {
                text_schema($desc, $pattern, $max)
            }
        }
        impl utoipa::ToSchema for $ty {}
    };
}

text_schema_impl!(
    CallId,
    "`<eventId>@<roomName>`: the Matrix event that opened the call and the LiveKit room.",
    Some(r"^\$[A-Za-z0-9+/=_.:-]{1,254}@oc-[0-9a-f]{32}$"),
    crate::call_id::MAX_EVENT_ID_LEN + 1 + crate::call_id::ROOM_NAME_LEN
);
text_schema_impl!(
    EventId,
    "A Matrix event id.",
    Some(r"^\$[A-Za-z0-9+/=_.:-]{1,254}$"),
    crate::call_id::MAX_EVENT_ID_LEN
);
text_schema_impl!(
    RoomName,
    "A call's LiveKit room name: `oc-` and 32 lower-case hex characters.",
    Some(r"^oc-[0-9a-f]{32}$"),
    crate::call_id::ROOM_NAME_LEN
);
text_schema_impl!(
    Did,
    "A DID, `did:<method>:<id>`.",
    Some(r"^did:[a-z0-9]+:[A-Za-z0-9._:%-]*[A-Za-z0-9._%-]$"),
    crate::did::MAX_DID_LEN
);
text_schema_impl!(
    SessionId,
    "The application's session id.",
    None,
    crate::event::MAX_SESSION_ID_LEN
);
text_schema_impl!(
    KeyEnvelope,
    "A wrapped call key (`v1.<scheme>.<base64url>`), opaque to the server.",
    Some(r"^[!-~]+$"),
    crate::event::MAX_ENVELOPE_LEN
);

impl utoipa::PartialSchema for Timestamp {
    fn schema() -> RefOr<Schema> {
        ObjectBuilder::new()
            .schema_type(Type::String)
            .format(Some(utoipa::openapi::SchemaFormat::KnownFormat(
                utoipa::openapi::KnownFormat::DateTime,
            )))
            .description(Some("RFC 3339, UTC, millisecond precision."))
            .into()
    }
}
impl utoipa::ToSchema for Timestamp {}

//! `CallId` = `<eventId>@<roomName>`: the Matrix event that opened the call, and the LiveKit room.

use crate::ParseError;
use crate::text::{percent_decode, percent_encode, string_newtype};

/// Longest Matrix event id accepted (the Matrix spec caps identifiers at 255 bytes).
pub const MAX_EVENT_ID_LEN: usize = 255;
/// The prefix of every call's room name.
pub const ROOM_NAME_PREFIX: &str = "oc-";
/// The length of a call's room name: `oc-` and 32 lower-case hex characters.
pub const ROOM_NAME_LEN: usize = 35;
/// Longest LiveKit room name [`RoomName::dangerous_parse_livekit_name`] accepts.
pub const MAX_ROOM_NAME_LEN: usize = 128;

/// A Matrix event id: `$` followed by 1..=254 characters of `[A-Za-z0-9+/=_\-.:]`
/// (room v3+ ids are unpadded base64; v1/v2 ids are `$opaque:server`).
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Debug)]
pub struct EventId(String);

impl EventId {
    /// Parses a Matrix event id.
    ///
    /// # Errors
    /// [`ParseError::EventId`] saying what is wrong.
    pub fn parse(s: &str) -> Result<Self, ParseError> {
        let rest = s
            .strip_prefix('$')
            .ok_or(ParseError::EventId("must start with `$`"))?;
        if rest.is_empty() {
            return Err(ParseError::EventId("is empty after `$`"));
        }
        if s.len() > MAX_EVENT_ID_LEN {
            return Err(ParseError::EventId("is longer than 255 bytes"));
        }
        if !rest.bytes().all(is_event_id_char) {
            return Err(ParseError::EventId(
                "may only contain A-Z a-z 0-9 + / = _ - . : after `$`",
            ));
        }
        Ok(Self(s.to_owned()))
    }
}
string_newtype!(EventId);

fn is_event_id_char(b: u8) -> bool {
    b.is_ascii_alphanumeric() || matches!(b, b'+' | b'/' | b'=' | b'_' | b'-' | b'.' | b':')
}

/// The room name of a call: `oc-` followed by exactly 32 lower-case hex characters (16 random
/// bytes, 128 bits), the LiveKit room the server creates for that call alone.
///
/// # Security
/// A room name is as good as a credential to whoever may ask the server for a token: a short
/// or guessable name could be claimed by someone else's call. [`RoomName::parse`] therefore
/// accepts only the shape [`RoomName::from_random`] makes; the server also keeps each name to
/// one call.
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Debug)]
pub struct RoomName(String);

impl RoomName {
    /// Parses a call's room name: `oc-` and 32 lower-case hex characters.
    ///
    /// # Errors
    /// [`ParseError::RoomName`] saying what is wrong.
    pub fn parse(s: &str) -> Result<Self, ParseError> {
        let hex = s
            .strip_prefix(ROOM_NAME_PREFIX)
            .ok_or(ParseError::RoomName("must start with `oc-`"))?;
        if hex.len() != ROOM_NAME_LEN - ROOM_NAME_PREFIX.len() {
            return Err(ParseError::RoomName(
                "must be `oc-` and exactly 32 hex characters",
            ));
        }
        if !hex.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f')) {
            return Err(ParseError::RoomName(
                "may only contain lower-case hex characters after `oc-`",
            ));
        }
        Ok(Self(s.to_owned()))
    }

    /// Parses any LiveKit room name of the general syntax (1..=128 characters of
    /// `[A-Za-z0-9._-]`, not starting with `.` or `-`), not only a call's.
    ///
    /// # Security
    /// Skips the shape check of [`RoomName::parse`]: a name from here is no call's room and
    /// must never name one. Meant for test vectors made by other implementations and for
    /// tools; a [`CallId`] never holds such a name.
    ///
    /// # Errors
    /// [`ParseError::RoomName`] saying what is wrong.
    pub fn dangerous_parse_livekit_name(s: &str) -> Result<Self, ParseError> {
        let first = s.bytes().next().ok_or(ParseError::RoomName("is empty"))?;
        if s.len() > MAX_ROOM_NAME_LEN {
            return Err(ParseError::RoomName("is longer than 128 bytes"));
        }
        if first == b'.' || first == b'-' {
            return Err(ParseError::RoomName("must not start with `.` or `-`"));
        }
        if !s
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'))
        {
            return Err(ParseError::RoomName("may only contain A-Z a-z 0-9 . _ -"));
        }
        Ok(Self(s.to_owned()))
    }

    /// A fresh room name `oc-<32 hex>` from 16 caller-supplied random bytes.
    pub fn from_random(bytes: [u8; 16]) -> Self {
        let mut s = String::with_capacity(ROOM_NAME_LEN);
        s.push_str(ROOM_NAME_PREFIX);
        for b in bytes {
            s.push_str(&format!("{b:02x}"));
        }
        Self(s)
    }
}
string_newtype!(RoomName);

/// The id of one call: `<eventId>@<roomName>`.
///
/// The room name cannot contain `@`, so the split is at the last `@`; the event id cannot
/// contain `@` either, so there is exactly one.
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Debug)]
pub struct CallId {
    text: String,
    event_id: EventId,
    room_name: RoomName,
}

impl CallId {
    /// Joins an event id and a room name.
    pub fn new(event_id: EventId, room_name: RoomName) -> Self {
        let text = format!("{event_id}@{room_name}");
        Self {
            text,
            event_id,
            room_name,
        }
    }

    /// Parses `<eventId>@<roomName>`.
    ///
    /// # Errors
    /// [`ParseError::CallIdMissingSeparator`], or the error of the part that is wrong.
    pub fn parse(s: &str) -> Result<Self, ParseError> {
        let (ev, room) = s
            .rsplit_once('@')
            .ok_or(ParseError::CallIdMissingSeparator)?;
        Ok(Self::new(EventId::parse(ev)?, RoomName::parse(room)?))
    }

    /// Parses the percent-encoded form used as one URL path segment.
    ///
    /// # Errors
    /// [`ParseError::PercentEncoding`], or any error of [`CallId::parse`].
    pub fn from_path_segment(segment: &str) -> Result<Self, ParseError> {
        Self::parse(&percent_decode(segment)?)
    }

    /// The percent-encoded form for one URL path segment (`$` → `%24`, `@` → `%40`, …).
    pub fn to_path_segment(&self) -> String {
        percent_encode(&self.text)
    }

    /// The Matrix event id part.
    pub fn event_id(&self) -> &EventId {
        &self.event_id
    }

    /// The LiveKit room name part.
    pub fn room_name(&self) -> &RoomName {
        &self.room_name
    }

    /// The whole id as text.
    pub fn as_str(&self) -> &str {
        &self.text
    }
}

impl std::fmt::Display for CallId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.text)
    }
}

impl std::str::FromStr for CallId {
    type Err = ParseError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::parse(s)
    }
}

impl serde::Serialize for CallId {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.text)
    }
}

impl<'de> serde::Deserialize<'de> for CallId {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = <std::borrow::Cow<'de, str>>::deserialize(d)?;
        Self::parse(&s).map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use proptest::prelude::*;

    use super::*;

    /// A valid room name for examples.
    pub(crate) const ROOM: &str = "oc-0123456789abcdef0123456789abcdef";

    #[test]
    fn parses_v4_event_ids_and_legacy_ones() {
        let id = CallId::parse(&format!(
            "$Rqnc-F-dvnEYJTyHq_iKxU2bZ1CI92-kuZq3a5lr5Zg@{ROOM}"
        ))
        .unwrap();
        assert_eq!(id.room_name().as_str(), ROOM);
        assert!(CallId::parse(&format!("$abc:example.org@{ROOM}")).is_ok());
        assert!(CallId::parse(&format!("$a+b/c=@{ROOM}")).is_ok());
    }

    #[test]
    fn room_names_are_oc_and_32_lower_case_hex() {
        assert_eq!(RoomName::parse(ROOM).unwrap().as_str(), ROOM);
        for (bad, why) in [
            ("", "`oc-`"),
            ("oc-", "32 hex"),
            ("oc-1", "32 hex"),
            ("lk-room-12345", "`oc-`"),
            ("oc-0123456789abcdef0123456789abcde", "32 hex"),
            ("oc-0123456789abcdef0123456789abcdef0", "32 hex"),
            ("oc-0123456789ABCDEF0123456789abcdef", "lower-case hex"),
            ("oc-0123456789abcdef0123456789abcdeg", "lower-case hex"),
            ("OC-0123456789abcdef0123456789abcdef", "`oc-`"),
            ("oc-room-56789abcdef0123456789abcdef", "lower-case hex"),
            ("oc-0123456789abcdef0123456789abcd\u{e9}", "lower-case hex"),
        ] {
            match RoomName::parse(bad) {
                Err(ParseError::RoomName(m)) => assert!(m.contains(why), "{bad:?}: {m}"),
                other => panic!("{bad:?}: {other:?}"),
            }
        }
    }

    #[test]
    fn any_livekit_name_only_through_the_dangerous_parser() {
        for name in ["lk-room-12345", "r", "room-alpha", "oc-1"] {
            assert!(RoomName::parse(name).is_err(), "{name}");
            assert_eq!(
                RoomName::dangerous_parse_livekit_name(name)
                    .unwrap()
                    .as_str(),
                name
            );
        }
        for bad in ["", "-x", ".x", "a/b", "salle-\u{e9}t\u{e9}"] {
            assert!(
                RoomName::dangerous_parse_livekit_name(bad).is_err(),
                "{bad}"
            );
        }
        let long = "r".repeat(MAX_ROOM_NAME_LEN + 1);
        assert!(RoomName::dangerous_parse_livekit_name(&long).is_err());
        assert!(RoomName::dangerous_parse_livekit_name(&long[1..]).is_ok());
    }

    #[test]
    fn errors_name_the_wrong_part() {
        assert_eq!(
            CallId::parse("noseparator"),
            Err(ParseError::CallIdMissingSeparator)
        );
        assert!(matches!(
            CallId::parse(&format!("abc@{ROOM}")),
            Err(ParseError::EventId(m)) if m.contains('$')
        ));
        assert!(matches!(
            CallId::parse(&format!("$@{ROOM}")),
            Err(ParseError::EventId(_))
        ));
        assert!(matches!(
            CallId::parse("$abc@"),
            Err(ParseError::RoomName(_))
        ));
        assert!(matches!(
            CallId::parse("$abc@room/../x"),
            Err(ParseError::RoomName(_))
        ));
        assert!(matches!(
            CallId::parse(&format!("$a@b@{ROOM}")),
            Err(ParseError::EventId(_))
        ));
        assert!(matches!(
            CallId::parse(&format!("$ab c@{ROOM}")),
            Err(ParseError::EventId(_))
        ));
        assert!(matches!(
            CallId::parse("$abc@-room"),
            Err(ParseError::RoomName(_))
        ));
        assert!(matches!(
            CallId::parse("$abc@oc-1"),
            Err(ParseError::RoomName(_))
        ));
        let long_ev = format!("${}", "e".repeat(MAX_EVENT_ID_LEN));
        assert!(matches!(
            CallId::parse(&format!("{long_ev}@{ROOM}")),
            Err(ParseError::EventId(_))
        ));
    }

    #[test]
    fn path_segment_form() {
        let id = CallId::parse(&format!("$abc:ex.org@{ROOM}")).unwrap();
        assert_eq!(id.to_path_segment(), format!("%24abc%3Aex.org%40{ROOM}"));
        assert_eq!(
            CallId::from_path_segment(&id.to_path_segment()),
            Ok(id.clone())
        );
        // An unencoded segment is accepted too (decoding is a no-op on it).
        assert_eq!(
            CallId::from_path_segment(&format!("$abc:ex.org@{ROOM}")),
            Ok(id)
        );
        assert!(matches!(
            CallId::from_path_segment("%2"),
            Err(ParseError::PercentEncoding(_))
        ));
    }

    #[test]
    fn random_room_names_are_valid() {
        let r = RoomName::from_random([0xab; 16]);
        assert_eq!(r.as_str(), format!("oc-{}", "ab".repeat(16)));
        assert_eq!(r.as_str().len(), ROOM_NAME_LEN);
        assert_eq!(RoomName::parse(r.as_str()), Ok(r));
    }

    #[test]
    fn json_is_a_plain_string() {
        let text = format!("$e@{ROOM}");
        let id = CallId::parse(&text).unwrap();
        assert_eq!(serde_json::to_string(&id).unwrap(), format!("\"{text}\""));
        assert!(serde_json::from_str::<CallId>(&format!("\"e@{ROOM}\"")).is_err());
        assert!(serde_json::from_str::<CallId>(r#""$e@r""#).is_err());
    }

    pub(crate) fn event_id_strategy() -> impl Strategy<Value = EventId> {
        "\\$[A-Za-z0-9+/=_.:-]{1,80}".prop_map(|s| EventId::parse(&s).unwrap())
    }

    pub(crate) fn room_name_strategy() -> impl Strategy<Value = RoomName> {
        any::<[u8; 16]>().prop_map(RoomName::from_random)
    }

    proptest! {
        #[test]
        fn call_id_round_trips(ev in event_id_strategy(), room in room_name_strategy()) {
            let id = CallId::new(ev, room);
            prop_assert_eq!(CallId::parse(id.as_str()), Ok(id.clone()));
            prop_assert_eq!(CallId::from_path_segment(&id.to_path_segment()), Ok(id.clone()));
            let json = serde_json::to_string(&id).unwrap();
            prop_assert_eq!(serde_json::from_str::<CallId>(&json).unwrap(), id);
        }

        #[test]
        fn call_id_parse_never_panics(s in "\\PC{0,300}") {
            let _ = CallId::parse(&s);
            let _ = CallId::from_path_segment(&s);
            let _ = RoomName::dangerous_parse_livekit_name(&s);
        }

        #[test]
        fn only_the_generated_shape_parses(s in "(oc-|OC-|oc_)?([0-9a-f]{32}|[0-9a-fA-Fg._-]{0,40})") {
            let shaped = s.len() == ROOM_NAME_LEN
                && s.starts_with("oc-")
                && s[3..].bytes().all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b));
            prop_assert_eq!(RoomName::parse(&s).is_ok(), shaped);
        }
    }
}

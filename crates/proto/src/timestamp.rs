//! RFC 3339 timestamps as they appear in call events (`2024-01-01T10:00:00.000Z`).

use time::OffsetDateTime;
use time::format_description::well_known::Rfc3339;

use crate::ParseError;

/// A UTC instant with millisecond precision, written as RFC 3339 with a `Z` offset and exactly
/// three fractional digits (the form JavaScript's `toISOString` produces). Any RFC 3339 offset
/// is accepted on input and normalized to UTC; sub-millisecond digits are truncated.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Debug)]
pub struct Timestamp(OffsetDateTime);

impl Timestamp {
    /// From Unix milliseconds.
    ///
    /// # Errors
    /// [`ParseError::Timestamp`] if out of range.
    pub fn from_unix_millis(ms: i64) -> Result<Self, ParseError> {
        let t = OffsetDateTime::from_unix_timestamp_nanos(i128::from(ms) * 1_000_000)
            .map_err(|_| ParseError::Timestamp)?;
        Ok(Self(t))
    }

    /// Unix milliseconds.
    pub fn unix_millis(self) -> i64 {
        // In range by construction: from_unix_millis and parse both produce whole milliseconds
        // of a year within ±9999.
        i64::try_from(self.0.unix_timestamp_nanos() / 1_000_000).unwrap_or(i64::MAX)
    }

    /// Parses RFC 3339.
    ///
    /// # Errors
    /// [`ParseError::Timestamp`].
    pub fn parse(s: &str) -> Result<Self, ParseError> {
        let t = OffsetDateTime::parse(s, &Rfc3339).map_err(|_| ParseError::Timestamp)?;
        let ms = t.unix_timestamp_nanos().div_euclid(1_000_000);
        let ms = i64::try_from(ms).map_err(|_| ParseError::Timestamp)?;
        Self::from_unix_millis(ms)
    }

    /// Absolute difference in milliseconds.
    pub fn abs_diff_millis(self, other: Timestamp) -> u64 {
        self.unix_millis().abs_diff(other.unix_millis())
    }
}

impl std::fmt::Display for Timestamp {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let t = self.0;
        write!(
            f,
            "{:04}-{:02}-{:02}T{:02}:{:02}:{:02}.{:03}Z",
            t.year(),
            u8::from(t.month()),
            t.day(),
            t.hour(),
            t.minute(),
            t.second(),
            t.millisecond()
        )
    }
}

impl std::str::FromStr for Timestamp {
    type Err = ParseError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::parse(s)
    }
}

impl serde::Serialize for Timestamp {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> serde::Deserialize<'de> for Timestamp {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = <std::borrow::Cow<'de, str>>::deserialize(d)?;
        Self::parse(&s).map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    #[test]
    fn js_iso_strings_round_trip() {
        let t = Timestamp::parse("2024-01-01T10:00:00.000Z").unwrap();
        assert_eq!(t.to_string(), "2024-01-01T10:00:00.000Z");
        assert_eq!(t.unix_millis(), 1_704_103_200_000);
        let t = Timestamp::parse("2024-01-01T12:00:00.123456+02:00").unwrap();
        assert_eq!(t.to_string(), "2024-01-01T10:00:00.123Z");
        assert!(Timestamp::parse("2024-01-01 10:00:00").is_err());
        assert!(Timestamp::parse("yesterday").is_err());
        assert_eq!(
            Timestamp::from_unix_millis(1000)
                .unwrap()
                .abs_diff_millis(Timestamp::from_unix_millis(250).unwrap()),
            750
        );
    }

    proptest! {
        #[test]
        fn millis_round_trip(ms in -62_000_000_000_000i64..250_000_000_000_000i64) {
            let t = Timestamp::from_unix_millis(ms).unwrap();
            prop_assert_eq!(t.unix_millis(), ms);
            prop_assert_eq!(Timestamp::parse(&t.to_string()).unwrap(), t);
        }
    }
}

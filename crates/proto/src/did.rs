//! Decentralized identifiers (W3C DID syntax), e.g. `did:ixo:ixo1abc…`.

use crate::ParseError;
use crate::text::string_newtype;

/// Longest DID accepted.
pub const MAX_DID_LEN: usize = 256;

/// A DID: `did:<method>:<method-specific-id>` with `method` = `[a-z0-9]+` and the id made of
/// `[A-Za-z0-9._-]`, `:` separators and `%XX` escapes, not ending in `:` (W3C DID Core §3.1).
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Debug)]
pub struct Did(String);

impl Did {
    /// Parses a DID.
    ///
    /// # Errors
    /// [`ParseError::Did`] saying what is wrong.
    pub fn parse(s: &str) -> Result<Self, ParseError> {
        if s.len() > MAX_DID_LEN {
            return Err(ParseError::Did("is longer than 256 bytes"));
        }
        let rest = s
            .strip_prefix("did:")
            .ok_or(ParseError::Did("must start with `did:`"))?;
        let (method, id) = rest
            .split_once(':')
            .ok_or(ParseError::Did("must be `did:<method>:<id>`"))?;
        if method.is_empty()
            || !method
                .bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit())
        {
            return Err(ParseError::Did(
                "method must be lower-case letters and digits",
            ));
        }
        if id.is_empty() || id.ends_with(':') {
            return Err(ParseError::Did(
                "method-specific id is empty or ends with `:`",
            ));
        }
        let bytes = id.as_bytes();
        let mut i = 0;
        while let Some(&b) = bytes.get(i) {
            if b == b'%' {
                let ok = bytes.get(i + 1).is_some_and(u8::is_ascii_hexdigit)
                    && bytes.get(i + 2).is_some_and(u8::is_ascii_hexdigit);
                if !ok {
                    return Err(ParseError::Did("`%` must be followed by two hex digits"));
                }
                i += 3;
            } else if b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-' | b':') {
                i += 1;
            } else {
                return Err(ParseError::Did(
                    "method-specific id may only contain A-Z a-z 0-9 . _ - : and %XX",
                ));
            }
        }
        Ok(Self(s.to_owned()))
    }

    /// The DID method (`ixo` in `did:ixo:…`).
    pub fn method(&self) -> &str {
        self.0
            .get(4..)
            .and_then(|r| r.split(':').next())
            .unwrap_or_default()
    }

    /// The method-specific id (everything after `did:<method>:`).
    pub fn method_specific_id(&self) -> &str {
        let skip = 4 + self.method().len() + 1;
        self.0.get(skip..).unwrap_or_default()
    }
}
string_newtype!(Did);

#[cfg(test)]
pub(crate) mod tests {
    use proptest::prelude::*;

    use super::*;

    #[test]
    fn accepts_ixo_and_key_dids() {
        let d = Did::parse("did:ixo:ixo1xyz9qa").unwrap();
        assert_eq!(d.method(), "ixo");
        assert_eq!(d.method_specific_id(), "ixo1xyz9qa");
        assert!(Did::parse("did:key:z6MkhaXgBZDvotDkL5257faiztiGiC2QtKLGpbnnEGta2doK").is_ok());
        assert!(Did::parse("did:web:example.com:user:alice").is_ok());
        assert!(Did::parse("did:example:a%20b").is_ok());
    }

    #[test]
    fn rejects_malformed() {
        for bad in [
            "",
            "did",
            "did:",
            "did:ixo",
            "did:ixo:",
            "did:IXO:abc",
            "did:ixo:abc:",
            "did:ixo:a b",
            "did:ixo:a%2",
            "did:ixo:a%zz",
            "DID:ixo:abc",
            "did:ixo:ü",
        ] {
            assert!(
                matches!(Did::parse(bad), Err(ParseError::Did(_))),
                "{bad:?}"
            );
        }
        assert!(Did::parse(&format!("did:ixo:{}", "a".repeat(300))).is_err());
    }

    pub(crate) fn did_strategy() -> impl Strategy<Value = Did> {
        "did:[a-z0-9]{1,8}:[A-Za-z0-9._-]{1,20}(:[A-Za-z0-9._-]{1,10})?"
            .prop_map(|s| Did::parse(&s).unwrap())
    }

    proptest! {
        #[test]
        fn did_round_trips(d in did_strategy()) {
            prop_assert_eq!(Did::parse(d.as_str()), Ok(d.clone()));
            let json = serde_json::to_string(&d).unwrap();
            prop_assert_eq!(serde_json::from_str::<Did>(&json).unwrap(), d);
        }

        #[test]
        fn did_parse_never_panics(s in "\\PC{0,300}") {
            let _ = Did::parse(&s);
        }
    }
}

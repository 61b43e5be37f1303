//! What the directory maps a person's Matrix user id to: the devices they call from
//! (person-to-person calls, docs/PROTOCOL.md §14.7), and the record's one byte encoding.

use std::collections::HashSet;
use std::fmt;

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD_NO_PAD;
use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};
use crate::record::{MAX_RECORD_BYTES, Reader, put_len, put_str};

/// The tag of a person's record (inside its length prefix).
const PERSON_TAG: &str = "oracle-calls/kt-person/v1";

/// The most devices one person's record lists.
pub const MAX_PERSON_DEVICES: usize = 64;

/// The longest Matrix user id (the Matrix spec's limit).
pub const MAX_USER_ID_LEN: usize = 255;

/// A person's Matrix user id, as a directory label: `@localpart:server`, at most 255 bytes,
/// printable ASCII without spaces (the localpart without `:`), as the Matrix spec allows for
/// user ids, historical ones included.
///
/// Labels of people and of oracles never collide: a user id starts with `@`, a DID with
/// `did:`.
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct PersonId(String);

impl PersonId {
    /// Parses a Matrix user id.
    ///
    /// # Errors
    /// [`Error::Malformed`] naming the user id.
    pub fn parse(s: &str) -> Result<Self> {
        let bad = Err(Error::Malformed {
            what: "Matrix user id",
        });
        if s.len() > MAX_USER_ID_LEN {
            return bad;
        }
        let Some((local, server)) = s.strip_prefix('@').and_then(|r| r.split_once(':')) else {
            return bad;
        };
        let printable = |c: u8| (0x21..=0x7e).contains(&c);
        if local.is_empty()
            || server.is_empty()
            || !local.bytes().all(printable)
            || !server.bytes().all(printable)
        {
            return bad;
        }
        Ok(Self(s.to_owned()))
    }

    /// The user id.
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// The server name (after the first `:`).
    pub fn server_name(&self) -> &str {
        self.0.split_once(':').map_or("", |(_, server)| server)
    }
}

impl fmt::Debug for PersonId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "PersonId({})", self.0)
    }
}

impl fmt::Display for PersonId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl Serialize for PersonId {
    fn serialize<S: serde::Serializer>(&self, s: S) -> std::result::Result<S::Ok, S::Error> {
        s.serialize_str(&self.0)
    }
}

impl<'de> Deserialize<'de> for PersonId {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> std::result::Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        Self::parse(&s).map_err(|_| serde::de::Error::custom("not a Matrix user id"))
    }
}

/// One device a person calls from: its Matrix device id and Ed25519 identity key.
#[derive(Clone, PartialEq, Eq, Debug, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct PersonDevice {
    /// The Matrix device id.
    pub device_id: String,
    /// Its Ed25519 identity key, unpadded standard base64 of 32 bytes (as Matrix writes it).
    pub ed25519: String,
}

/// A person's entry in the directory: the AKD value under the label "the person's Matrix user
/// id".
///
/// # Encoding (the AKD value, `oracle-calls/kt-person/v1`)
///
/// ```text
/// record = str("oracle-calls/kt-person/v1")
///          str(matrixUserId)
///          u32be(number of devices)
///          { str(deviceId) str(ed25519) }       one per device, in the record's order
/// str(s) = u32be(length of s in UTF-8 bytes) || the UTF-8 bytes of s
/// ```
///
/// Decoding is strict: the tag must match, the user id must parse and be the label's, there
/// are at most [`MAX_PERSON_DEVICES`] devices, no device id is empty or appears twice, every
/// Ed25519 key is unpadded standard base64 of 32 bytes, no byte trails, and the whole is at
/// most [`MAX_RECORD_BYTES`]. A record with no device says the person calls from none (every
/// device withdrawn).
///
/// In JSON: `{"matrixUserId":"@alice:example.org","devices":[{"deviceId":…,"ed25519":…}]}`.
#[derive(Clone, PartialEq, Eq, Debug, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct PersonRecord {
    /// The person's Matrix user id (the record's label).
    pub matrix_user_id: String,
    /// The devices the person calls from.
    pub devices: Vec<PersonDevice>,
}

impl PersonRecord {
    /// The record's canonical encoding, the bytes the directory commits to.
    pub fn to_bytes(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(64 + 64 * self.devices.len());
        put_str(&mut out, PERSON_TAG);
        put_str(&mut out, &self.matrix_user_id);
        put_len(&mut out, self.devices.len());
        for device in &self.devices {
            put_str(&mut out, &device.device_id);
            put_str(&mut out, &device.ed25519);
        }
        out
    }

    /// Decodes a record from its canonical encoding and checks it (see the type's docs).
    ///
    /// # Errors
    /// [`Error::MalformedRecord`] or [`Error::TooLarge`].
    pub fn from_bytes(bytes: &[u8]) -> Result<Self> {
        if bytes.len() > MAX_RECORD_BYTES {
            return Err(Error::TooLarge {
                what: "person record",
                len: bytes.len(),
                max: MAX_RECORD_BYTES,
            });
        }
        let mut r = Reader(bytes);
        if r.str()? != PERSON_TAG {
            return Err(Error::MalformedRecord("unknown record tag"));
        }
        let matrix_user_id = r.str()?.to_owned();
        let count = r.u32()?;
        if usize::try_from(count).map_or(true, |n| n > MAX_PERSON_DEVICES) {
            return Err(Error::MalformedRecord(
                "more devices than a record may list",
            ));
        }
        let mut devices = Vec::new();
        for _ in 0..count {
            let device_id = r.str()?.to_owned();
            let ed25519 = r.str()?.to_owned();
            devices.push(PersonDevice { device_id, ed25519 });
        }
        if !r.0.is_empty() {
            return Err(Error::MalformedRecord("trailing bytes"));
        }
        let record = Self {
            matrix_user_id,
            devices,
        };
        record.check()?;
        Ok(record)
    }

    /// Checks what the encoding alone does not: the user id, the device count, unique
    /// non-empty device ids, Ed25519 keys of 32 bytes, the encoded size.
    ///
    /// # Errors
    /// [`Error::MalformedRecord`] naming the first problem, [`Error::TooLarge`].
    pub fn check(&self) -> Result<()> {
        PersonId::parse(&self.matrix_user_id)
            .map_err(|_| Error::MalformedRecord("the user id is not a Matrix user id"))?;
        if self.devices.len() > MAX_PERSON_DEVICES {
            return Err(Error::MalformedRecord(
                "more devices than a record may list",
            ));
        }
        let mut ids = HashSet::with_capacity(self.devices.len());
        for d in &self.devices {
            if d.device_id.is_empty() {
                return Err(Error::MalformedRecord("an empty device id"));
            }
            if !ids.insert(d.device_id.as_str()) {
                return Err(Error::MalformedRecord("a device id appears twice"));
            }
            let key = STANDARD_NO_PAD
                .decode(&d.ed25519)
                .map_err(|_| Error::MalformedRecord("an Ed25519 key is not unpadded base64"))?;
            if key.len() != 32 {
                return Err(Error::MalformedRecord("an Ed25519 key is not 32 bytes"));
            }
        }
        let size = self.encoded_len();
        if size > MAX_RECORD_BYTES {
            return Err(Error::TooLarge {
                what: "person record",
                len: size,
                max: MAX_RECORD_BYTES,
            });
        }
        Ok(())
    }

    /// The length of [`PersonRecord::to_bytes`], without encoding: every string is 4 bytes of
    /// length and its bytes, the device count 4 bytes.
    fn encoded_len(&self) -> usize {
        let str_len = |s: &str| 4usize.saturating_add(s.len());
        self.devices.iter().fold(
            str_len(PERSON_TAG)
                .saturating_add(str_len(&self.matrix_user_id))
                .saturating_add(4),
            |n, d| {
                n.saturating_add(str_len(&d.device_id))
                    .saturating_add(str_len(&d.ed25519))
            },
        )
    }

    /// The device with this id and key, if the record lists it.
    pub fn lists(&self, device_id: &str, ed25519: &str) -> bool {
        self.devices
            .iter()
            .any(|d| d.device_id == device_id && d.ed25519 == ed25519)
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::indexing_slicing)]

    use super::*;

    const KEY_A: &str = "AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8";

    fn sample() -> PersonRecord {
        PersonRecord {
            matrix_user_id: "@alice:example.org".into(),
            devices: vec![PersonDevice {
                device_id: "ALICEDEV".into(),
                ed25519: KEY_A.into(),
            }],
        }
    }

    #[test]
    fn encoding_is_exactly_the_documented_one() {
        let mut expected = Vec::new();
        for part in [
            &b"\0\0\0\x19oracle-calls/kt-person/v1"[..],
            b"\0\0\0\x12@alice:example.org",
            b"\0\0\0\x01",
            b"\0\0\0\x08ALICEDEV",
            b"\0\0\0\x2bAAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8",
        ] {
            expected.extend_from_slice(part);
        }
        assert_eq!(sample().to_bytes(), expected);
        assert_eq!(sample().encoded_len(), expected.len());
        assert_eq!(PersonRecord::from_bytes(&expected).unwrap(), sample());
        let json = serde_json::to_value(sample()).unwrap();
        assert_eq!(
            json,
            serde_json::json!({
                "matrixUserId": "@alice:example.org",
                "devices": [{"deviceId": "ALICEDEV", "ed25519": KEY_A}],
            })
        );
    }

    #[test]
    fn user_ids_parse_as_matrix_writes_them() {
        for good in ["@a:b", "@alice:example.org", "@x=y/z:localhost:8448"] {
            let id = PersonId::parse(good).unwrap();
            assert_eq!(id.as_str(), good);
        }
        assert_eq!(
            PersonId::parse("@alice:example.org").unwrap().server_name(),
            "example.org"
        );
        let long = format!("@{}:x", "a".repeat(MAX_USER_ID_LEN));
        for bad in [
            "",
            "@",
            "@:x",
            "@a:",
            "alice:x",
            "did:ixo:x",
            "@a b:x",
            "@a:x y",
            &long,
        ] {
            assert!(PersonId::parse(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn strict_decoding_refuses_every_deviation() {
        let good = sample().to_bytes();
        for n in 0..good.len() {
            assert!(PersonRecord::from_bytes(&good[..n]).is_err(), "prefix {n}");
        }
        let mut long = good.clone();
        long.push(0);
        assert!(matches!(
            PersonRecord::from_bytes(&long),
            Err(Error::MalformedRecord("trailing bytes"))
        ));
        // An oracle record is not a person record, nor the other way round.
        let oracle = crate::OracleRecord {
            keys: Vec::new(),
            matrix_user_id: "@alice:example.org".into(),
            bot_devices: Vec::new(),
            agent_name: "a".into(),
            prekey_signing_key: None,
        };
        assert!(matches!(
            PersonRecord::from_bytes(&oracle.to_bytes()),
            Err(Error::MalformedRecord("unknown record tag"))
        ));
        assert!(crate::OracleRecord::from_bytes(&good).is_err());

        let refused = |r: PersonRecord, why: &str| {
            let e = PersonRecord::from_bytes(&r.to_bytes()).unwrap_err();
            assert!(e.to_string().contains(why), "{e} (expected {why})");
            assert!(r.check().is_err());
        };
        let mut r = sample();
        r.matrix_user_id = "alice".into();
        refused(r, "not a Matrix user id");
        let mut r = sample();
        r.devices.push(r.devices[0].clone());
        refused(r, "appears twice");
        let mut r = sample();
        r.devices[0].device_id = String::new();
        refused(r, "empty device id");
        let mut r = sample();
        r.devices[0].ed25519 = format!("{KEY_A}=");
        refused(r, "not unpadded base64");
        let mut r = sample();
        r.devices[0].ed25519 = "AAEC".into();
        refused(r, "not 32 bytes");
        let mut r = sample();
        r.devices = (0..=MAX_PERSON_DEVICES)
            .map(|i| PersonDevice {
                device_id: format!("D{i}"),
                ed25519: KEY_A.into(),
            })
            .collect();
        refused(r, "more devices");
        // A huge count does not allocate.
        let mut huge = good[..4 + 25 + 4 + 18].to_vec();
        huge.extend_from_slice(&u32::MAX.to_be_bytes());
        assert!(PersonRecord::from_bytes(&huge).is_err());
        // No device at all is a record (every device withdrawn).
        let mut none = sample();
        none.devices.clear();
        assert_eq!(PersonRecord::from_bytes(&none.to_bytes()).unwrap(), none);
    }

    proptest::proptest! {
        #[test]
        fn arbitrary_bytes_never_panic(bytes in proptest::collection::vec(proptest::num::u8::ANY, 0..200)) {
            let _ = PersonRecord::from_bytes(&bytes);
        }
    }
}

//! What the directory maps an oracle DID to, and its one byte encoding (the AKD value).

use oracle_calls_proto::{BotDevice, KeyScheme, OracleKeyInfo};
use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};

/// The largest encoded record the directory publishes and a verifier decodes.
pub const MAX_RECORD_BYTES: usize = 16 * 1024;

/// The tag of a record without a prekey signing key (inside its length prefix).
const RECORD_TAG: &str = "oracle-calls/kt-record/v1";
/// The tag of a record with a prekey signing key: the v1 fields, then the key.
const RECORD_TAG_V2: &str = "oracle-calls/kt-record/v2";

/// One oracle's entry in the directory: the AKD value under the label "the oracle's DID".
///
/// It holds what a client pins on first use today from `/.well-known/oracle-calls`: the keys
/// envelopes are sealed to, the bot that receives call events, the bot devices that may
/// receive the event's room key, the LiveKit agent name, and the key that signs the oracle's
/// prekeys (when it offers forward secrecy).
///
/// # Encoding (the AKD value, `oracle-calls/kt-record/v1`)
///
/// The directory commits to [`OracleRecord::to_bytes`], never to JSON:
///
/// ```text
/// record = str("oracle-calls/kt-record/v1")
///          u32be(number of keys)
///          { str(scheme) str(keyId) str(publicKey) }     one per key, in the record's order
///          str(matrixUserId)
///          u32be(number of bot devices)
///          { str(deviceId) str(ed25519) }                one per device, in the record's order
///          str(agentName)
/// str(s) = u32be(length of s in UTF-8 bytes) || the UTF-8 bytes of s
/// ```
///
/// A record with a prekey signing key starts with `str("oracle-calls/kt-record/v2")` instead
/// and has one more field at the end, `str(prekeySigningKey)` (the Ed25519 public key,
/// base64url without padding, as in `/.well-known/oracle-calls`). A record without one is
/// always encoded as v1, so each record still has exactly one encoding.
///
/// `scheme` is the wire name (`hpke-p256`, `hpke-x25519`, `rsa-oaep-256`, `ecies-secp256k1`);
/// the other strings are exactly the JSON strings of `OracleKeyInfo` and `BotDevice`. Order
/// matters (keys are in the oracle's order of preference) and is kept. Decoding is strict:
/// the tag must match, every scheme must be known, every string must be UTF-8, no byte may
/// trail, and the whole is at most [`MAX_RECORD_BYTES`]; so one record has exactly one
/// encoding and [`OracleRecord::from_bytes`] inverts [`OracleRecord::to_bytes`].
///
/// In JSON (the service's API) the record is camelCase:
/// `{"keys":[{"keyId":…,"scheme":…,"publicKey":…}],"matrixUserId":…,"botDevices":[{"deviceId":…,"ed25519":…}],"agentName":…,"prekeySigningKey":…}`
/// (`prekeySigningKey` absent when the oracle has none).
#[derive(Clone, PartialEq, Eq, Debug, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct OracleRecord {
    /// The oracle's public keys, in the oracle's order of preference.
    pub keys: Vec<OracleKeyInfo>,
    /// The oracle bot's Matrix user id.
    pub matrix_user_id: String,
    /// The bot's Matrix devices that may receive call events (device id and Ed25519 key).
    pub bot_devices: Vec<BotDevice>,
    /// The LiveKit agent name that serves this oracle.
    pub agent_name: String,
    /// The Ed25519 key that signs the oracle's prekeys (base64url without padding); `None`
    /// when the oracle offers no prekeys.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub prekey_signing_key: Option<String>,
}

impl OracleRecord {
    /// The record's canonical encoding (see the type's docs), the bytes the directory commits
    /// to.
    pub fn to_bytes(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(256);
        let tag = if self.prekey_signing_key.is_some() {
            RECORD_TAG_V2
        } else {
            RECORD_TAG
        };
        put_str(&mut out, tag);
        put_len(&mut out, self.keys.len());
        for key in &self.keys {
            put_str(&mut out, key.scheme.as_str());
            put_str(&mut out, &key.key_id);
            put_str(&mut out, &key.public_key);
        }
        put_str(&mut out, &self.matrix_user_id);
        put_len(&mut out, self.bot_devices.len());
        for device in &self.bot_devices {
            put_str(&mut out, &device.device_id);
            put_str(&mut out, &device.ed25519);
        }
        put_str(&mut out, &self.agent_name);
        if let Some(key) = &self.prekey_signing_key {
            put_str(&mut out, key);
        }
        out
    }

    /// Decodes a record from its canonical encoding.
    ///
    /// # Errors
    /// [`Error::MalformedRecord`] if the bytes are not exactly one well-formed record, or
    /// [`Error::TooLarge`] if they exceed [`MAX_RECORD_BYTES`].
    pub fn from_bytes(bytes: &[u8]) -> Result<Self> {
        if bytes.len() > MAX_RECORD_BYTES {
            return Err(Error::TooLarge {
                what: "oracle record",
                len: bytes.len(),
                max: MAX_RECORD_BYTES,
            });
        }
        let mut r = Reader(bytes);
        let v2 = match r.str()? {
            RECORD_TAG => false,
            RECORD_TAG_V2 => true,
            _ => return Err(Error::MalformedRecord("unknown record tag")),
        };
        let mut keys = Vec::new();
        for _ in 0..r.u32()? {
            let scheme = r
                .str()?
                .parse::<KeyScheme>()
                .map_err(|_| Error::MalformedRecord("unknown key scheme"))?;
            let key_id = r.str()?.to_owned();
            let public_key = r.str()?.to_owned();
            keys.push(OracleKeyInfo {
                key_id,
                scheme,
                public_key,
            });
        }
        let matrix_user_id = r.str()?.to_owned();
        let mut bot_devices = Vec::new();
        for _ in 0..r.u32()? {
            let device_id = r.str()?.to_owned();
            let ed25519 = r.str()?.to_owned();
            bot_devices.push(BotDevice { device_id, ed25519 });
        }
        let agent_name = r.str()?.to_owned();
        let prekey_signing_key = if v2 { Some(r.str()?.to_owned()) } else { None };
        if !r.0.is_empty() {
            return Err(Error::MalformedRecord("trailing bytes"));
        }
        Ok(Self {
            keys,
            matrix_user_id,
            bot_devices,
            agent_name,
            prekey_signing_key,
        })
    }
}

pub(crate) fn put_len(out: &mut Vec<u8>, len: usize) {
    // Records are capped far below 4 GiB (MAX_RECORD_BYTES); saturate rather than wrap so an
    // oversized record can never encode as a different, valid one.
    let len = u32::try_from(len).unwrap_or(u32::MAX);
    out.extend_from_slice(&len.to_be_bytes());
}

pub(crate) fn put_str(out: &mut Vec<u8>, s: &str) {
    put_len(out, s.len());
    out.extend_from_slice(s.as_bytes());
}

/// A cursor over untrusted bytes; every read is bounds-checked.
pub(crate) struct Reader<'a>(pub(crate) &'a [u8]);

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> Result<&'a [u8]> {
        if n > self.0.len() {
            return Err(Error::MalformedRecord("truncated"));
        }
        let (head, tail) = self.0.split_at(n);
        self.0 = tail;
        Ok(head)
    }

    pub(crate) fn u32(&mut self) -> Result<u32> {
        let b: [u8; 4] = self
            .take(4)?
            .try_into()
            .map_err(|_| Error::MalformedRecord("truncated"))?;
        Ok(u32::from_be_bytes(b))
    }

    pub(crate) fn str(&mut self) -> Result<&'a str> {
        let len = usize::try_from(self.u32()?).map_err(|_| Error::MalformedRecord("truncated"))?;
        std::str::from_utf8(self.take(len)?).map_err(|_| Error::MalformedRecord("not UTF-8"))
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::indexing_slicing)]

    use super::*;

    fn sample() -> OracleRecord {
        OracleRecord {
            keys: vec![OracleKeyInfo {
                key_id: "00112233445566778899aabbccddeeff".into(),
                scheme: KeyScheme::HpkeP256,
                public_key: "BPk".into(),
            }],
            matrix_user_id: "@oracle:example.org".into(),
            bot_devices: vec![BotDevice {
                device_id: "DEV".into(),
                ed25519: "ed".into(),
            }],
            agent_name: "echo".into(),
            prekey_signing_key: None,
        }
    }

    #[test]
    fn encoding_is_exactly_the_documented_one() {
        let mut expected = Vec::new();
        for part in [
            &b"\0\0\0\x19oracle-calls/kt-record/v1"[..],
            b"\0\0\0\x01",
            b"\0\0\0\x09hpke-p256",
            b"\0\0\0\x2000112233445566778899aabbccddeeff",
            b"\0\0\0\x03BPk",
            b"\0\0\0\x13@oracle:example.org",
            b"\0\0\0\x01",
            b"\0\0\0\x03DEV",
            b"\0\0\0\x02ed",
            b"\0\0\0\x04echo",
        ] {
            expected.extend_from_slice(part);
        }
        assert_eq!(sample().to_bytes(), expected);
        assert_eq!(OracleRecord::from_bytes(&expected).unwrap(), sample());
    }

    #[test]
    fn json_is_camel_case() {
        let json = serde_json::to_value(sample()).unwrap();
        assert_eq!(
            json,
            serde_json::json!({
                "keys": [{"keyId": "00112233445566778899aabbccddeeff", "scheme": "hpke-p256", "publicKey": "BPk"}],
                "matrixUserId": "@oracle:example.org",
                "botDevices": [{"deviceId": "DEV", "ed25519": "ed"}],
                "agentName": "echo",
            })
        );
    }

    fn any_record() -> impl proptest::strategy::Strategy<Value = OracleRecord> {
        use proptest::prelude::*;
        let key =
            (0..KeyScheme::ALL.len(), ".{0,40}", ".{0,40}").prop_map(|(s, id, pk)| OracleKeyInfo {
                key_id: id,
                scheme: KeyScheme::ALL[s],
                public_key: pk,
            });
        let device = (".{0,20}", ".{0,50}")
            .prop_map(|(device_id, ed25519)| BotDevice { device_id, ed25519 });
        (
            prop::collection::vec(key, 0..4),
            ".{0,40}",
            prop::collection::vec(device, 0..4),
            ".{0,40}",
            prop::option::of(".{0,44}"),
        )
            .prop_map(
                |(keys, matrix_user_id, bot_devices, agent_name, prekey_signing_key)| {
                    OracleRecord {
                        keys,
                        matrix_user_id,
                        bot_devices,
                        agent_name,
                        prekey_signing_key,
                    }
                },
            )
    }

    proptest::proptest! {
        #[test]
        fn bytes_and_json_round_trip(record in any_record()) {
            let bytes = record.to_bytes();
            proptest::prop_assert_eq!(OracleRecord::from_bytes(&bytes).unwrap(), record.clone());
            let json = serde_json::to_string(&record).unwrap();
            proptest::prop_assert_eq!(serde_json::from_str::<OracleRecord>(&json).unwrap(), record);
        }

        #[test]
        fn arbitrary_bytes_never_panic(bytes in proptest::collection::vec(proptest::num::u8::ANY, 0..200)) {
            let _ = OracleRecord::from_bytes(&bytes);
        }
    }

    #[test]
    fn strict_decoding_refuses_every_deviation() {
        let good = sample().to_bytes();
        // Every truncation.
        for n in 0..good.len() {
            assert!(OracleRecord::from_bytes(&good[..n]).is_err(), "prefix {n}");
        }
        // A trailing byte.
        let mut long = good.clone();
        long.push(0);
        assert!(matches!(
            OracleRecord::from_bytes(&long),
            Err(Error::MalformedRecord("trailing bytes"))
        ));
        // Another tag.
        let mut tag = good.clone();
        tag[4 + 24] = b'9';
        assert!(matches!(
            OracleRecord::from_bytes(&tag),
            Err(Error::MalformedRecord("unknown record tag"))
        ));
        // A v1 body under the v2 tag lacks the prekey signing key; a v2 record relabelled v1
        // has a byte too many.
        tag[4 + 24] = b'2';
        assert!(matches!(
            OracleRecord::from_bytes(&tag),
            Err(Error::MalformedRecord("truncated"))
        ));
        let mut v2 = sample();
        v2.prekey_signing_key = Some("A6EHv_POEL4dcN0Y50vAmWfk1jCbpQ1fHdyGZBJVMbg".into());
        let mut relabelled = v2.to_bytes();
        relabelled[4 + 24] = b'1';
        assert!(matches!(
            OracleRecord::from_bytes(&relabelled),
            Err(Error::MalformedRecord("trailing bytes"))
        ));
        // An unknown scheme.
        let bad_scheme = String::from_utf8(good.clone())
            .unwrap()
            .replace("hpke-p256", "hpke-p257");
        assert!(matches!(
            OracleRecord::from_bytes(bad_scheme.as_bytes()),
            Err(Error::MalformedRecord("unknown key scheme"))
        ));
        // A huge count or length does not allocate or panic.
        let mut huge = good[..29].to_vec();
        huge.extend_from_slice(&u32::MAX.to_be_bytes());
        assert!(OracleRecord::from_bytes(&huge).is_err());
        // Not UTF-8.
        let mut latin = good;
        let at = latin.len() - 1;
        latin[at] = 0xff;
        assert!(matches!(
            OracleRecord::from_bytes(&latin),
            Err(Error::MalformedRecord("not UTF-8"))
        ));
        assert!(matches!(
            OracleRecord::from_bytes(&vec![0; MAX_RECORD_BYTES + 1]),
            Err(Error::TooLarge { .. })
        ));
    }
}

//! Call event and API body JSON: never panics; whatever parses re-serializes to an equal value.
#![no_main]

use libfuzzer_sys::fuzz_target;
use oracle_calls_proto::{OraclesCallContent, OraclesCallEdit, UpdateRequest, WellKnown};

fn round_trip<T>(data: &[u8])
where
    T: serde::de::DeserializeOwned + serde::Serialize + PartialEq + std::fmt::Debug,
{
    if let Ok(v) = serde_json::from_slice::<T>(data) {
        let text = serde_json::to_vec(&v).expect("serializes");
        let back: T = serde_json::from_slice(&text).expect("re-parses");
        assert_eq!(back, v);
    }
}

fuzz_target!(|data: &[u8]| {
    round_trip::<OraclesCallContent>(data);
    round_trip::<OraclesCallEdit>(data);
    round_trip::<UpdateRequest>(data);
    round_trip::<WellKnown>(data);
});

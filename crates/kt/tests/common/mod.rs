//! Test data shared by the directory's integration tests.
#![allow(clippy::unwrap_used)]

use oracle_calls_kt::OracleRecord;
use oracle_calls_proto::{BotDevice, Did, KeyScheme, OracleKeyInfo};

/// The `n`th test oracle.
pub fn did(n: u32) -> Did {
    Did::parse(&format!("did:ixo:oracle{n}")).unwrap()
}

/// A record whose key and agent name depend on `agent`.
pub fn record(agent: &str) -> OracleRecord {
    OracleRecord {
        keys: vec![OracleKeyInfo {
            key_id: format!("{:0>32}", agent.len()),
            scheme: KeyScheme::HpkeP256,
            public_key: format!("pk-of-{agent}"),
        }],
        matrix_user_id: "@oracle:example.org".into(),
        bot_devices: vec![BotDevice {
            device_id: "BOTDEVICE".into(),
            ed25519: "ZWQyNTUxOQ".into(),
        }],
        agent_name: agent.into(),
        prekey_signing_key: None,
    }
}

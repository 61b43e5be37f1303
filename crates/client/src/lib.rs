//! The oracle-calls client SDK: call an AI oracle, end to end encrypted.
//!
//! ```no_run
//! # async fn run() -> Result<(), oracle_calls_client::CallError> {
//! use oracle_calls_client::{CallEvent, ClientConfig, Login, OracleClient};
//! use oracle_calls_proto::CallType;
//!
//! // The application names the oracle it calls; the server only describes it.
//! let oracle = oracle_calls_proto::Did::parse("did:ixo:oracle1").expect("a DID");
//! let config =
//!     ClientConfig::new("http://127.0.0.1:18008", "http://127.0.0.1:18080", "./state", oracle);
//! let login = Login::Password { user: "did-ixo-alice".into(), password: "…".to_owned().into() };
//! let client = OracleClient::connect(config, login).await?;
//! let mut call = client.call_oracle(oracle_calls_proto::CallType::Audio).await?;
//! call.send_audio(&[0i16; 960]).await?;
//! while let Some(ev) = call.next_event().await {
//!     if let CallEvent::OracleAudio { pcm } = ev { /* play it */ let _ = pcm; break; }
//! }
//! call.end().await?;
//! # Ok(()) }
//! ```
//!
//! [`OracleClient::call_oracle`] follows DESIGN §3: resolve the oracle the caller named (the
//! server's description must match it and the trust store: its key, its bot and the bot
//! devices that alone receive the call event, pinned on first use), make a fresh call key and wrap it to the oracle bound to the call's context,
//! post the `m.ixo.oracles_call` event into the encrypted DM with the oracle's bot (retried
//! under one transaction id), have the server validate it, and join the LiveKit room with
//! end-to-end encryption. Every failure is a typed [`CallError`] and leaves nothing open.
//!
//! With [`ClientConfig::key_transparency`] set ([`KtConfig`]: the directory's URL and public
//! key), step 1 does not trust the server on first use: the oracle's record is fetched from the
//! directory and verified (VRF and Merkle path against a checkpoint signed by the configured
//! key, never older than the checkpoint stored for that directory), the server's well-known
//! must agree with it ([`CallError::KtMismatch`]), and the verified record is pinned; a pinned
//! record that changed is checked through its key history, and a changed key names the epoch
//! of the change ([`CallError::OracleKeyChanged`]).
#![deny(missing_docs)]
// matrix-sdk's sync future is deep enough to overflow the default when spawned.
#![recursion_limit = "256"]

mod call;
mod client;
mod direct;
mod error;
mod kt;
mod server;
mod trust;

pub use call::{Call, CallEvent, Phase, Timeline};
pub use client::{ClientConfig, Login, OracleClient, open_matrix_client};
pub use direct::{
    CallStats, DangerousTestFaults, DirectCall, DirectCallEvent, DirectCalls, DirectConfig,
    DirectError, EndReason, IcePolicy, IncomingCall, PeopleTrust, SecurityEvent, SecurityNotice,
};
pub use error::CallError;
pub use kt::KtConfig;
pub use oracle_calls_kt::DirectoryPublicKey;
pub use server::UserApi;
pub use trust::{OracleTrust, PinnedDevice, PinnedKey, TrustOverride};

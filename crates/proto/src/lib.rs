//! Wire types for oracle-calls.
//!
//! Everything that crosses a process boundary — the `m.ixo.oracles_call` Matrix event content,
//! call identifiers, statuses and the server's API bodies — is defined here, once, as types that
//! cannot hold a bad value. This crate does no IO, holds no secrets and reads no clock.
//!
//! ```
//! use oracle_calls_proto::{CallId, CallStatus};
//!
//! let id: CallId = "$abc123@oc-0123456789abcdef0123456789abcdef".parse()?;
//! assert_eq!(id.event_id().as_str(), "$abc123");
//! assert_eq!(id.room_name().as_str(), "oc-0123456789abcdef0123456789abcdef");
//! assert_eq!(
//!     id.to_path_segment(),
//!     "%24abc123%40oc-0123456789abcdef0123456789abcdef"
//! );
//!
//! let next = CallStatus::Pending.transition(CallStatus::Active)?;
//! assert_eq!(next, CallStatus::Active);
//! assert!(CallStatus::Ended.transition(CallStatus::Active).is_err());
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```
#![deny(missing_docs)]

mod api;
mod call_id;
mod did;
mod error;
mod event;
mod net;
#[cfg(feature = "openapi")]
mod openapi;
mod status;
mod text;
mod timestamp;

pub use api::{
    AgentJob, ApiError, ApiErrorBody, BotDevice, CallReason, CallSummary, DeclineJobRequest,
    ErrorCode, KeyResponse, ListCallsQuery, ListCallsResponse, NextJobRequest, OracleKeyInfo,
    PrekeyStock, PublishPrekeysRequest, RoomClaimResponse, SignedPrekey, SyncRequest, SyncResponse,
    UpdateRequest, WellKnown,
};
pub use call_id::{CallId, EventId, RoomName};
pub use did::Did;
pub use error::ParseError;
pub use event::{
    CALL_EVENT_TYPE, KeyDerivation, KeyEnvelope, KeyScheme, OraclesCallContent, OraclesCallEdit,
    RelatesTo, SessionId,
};
pub use net::is_loopback_host;
pub use status::{CallStatus, CallType, IllegalTransition};
pub use timestamp::Timestamp;

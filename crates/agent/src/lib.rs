//! The oracle's live agent.
//!
//! An [`Agent`] registers with livekit-server as an agent worker under the oracle's agent name
//! (LiveKit's `/agent` protocol, job type `JT_ROOM`). When the oracle-calls server creates a
//! call's room, LiveKit offers the job; the agent accepts at once (LiveKit gives it about three
//! seconds), then, for that call only:
//!
//! 1. fetches the still-wrapped call key from `GET /calls/{callId}/key` with its API key
//!    (retrying server errors and timeouts, never 4xx);
//! 2. rebuilds the call context from the room LiveKit named and the call's fields, and opens
//!    the envelope with the oracle private key it names (an agent may hold several during a
//!    key rotation) — a key sealed for another call or another oracle does not open;
//! 3. joins the room with end-to-end encryption keyed by the call key and runs the [`Oracle`];
//! 4. leaves when the user leaves or the call ends, and reports the outcome to the server.
//!    Only the participant the server names as the call's user (`userIdentity`) counts as the
//!    user; anyone else who joins the room is logged as unexpected and changes nothing.
//!
//! Before it accepts a job the agent reads whom the call's envelope is sealed to: a key it does
//! not hold is another agent's call (LiveKit then offers the job to the next worker), never a
//! `keyDecryptionFailed`.
//!
//! If step 1 or 2 fails the agent stays out of the room and says why: in its log (with the
//! call id) and to the server (`keyDecryptionFailed` blocks the key endpoint for that call).
//! One call's failure never touches the others; a lost worker socket is re-established with
//! backoff while running calls continue.
#![deny(missing_docs)]

mod api;
mod config;
mod error;
pub mod job;
mod keys;
mod kt;
mod oracle;
pub mod oracles;
pub mod prekeys;
mod speech;
mod worker;

pub use api::ServerApi;
pub use config::{AgentConfig, ConfigError, FileConfig, KtSection, PrekeyConfig, PrekeysSection};
pub use error::AgentError;
pub use job::{CallReport, JobOutcome};
pub use keys::HeldKeys;
pub use oracle::{CallInfo, CallIo, Heard, Oracle, OracleError, TryRecv};
pub use speech::Speech;
pub use worker::{Agent, AgentHandle, AgentStats};

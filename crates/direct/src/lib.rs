//! Person-to-person calls without an SFU: Matrix VoIP v1 signalling (`m.call.*`) in the
//! encrypted DM of the two people, a per-call binding key (ephemeral P-256 inside the
//! encrypted invite and answer, bound to the call, both identities and both DTLS
//! fingerprints) with key confirmation, a sans-IO state machine for one call, and [`turn`], a
//! sans-IO TURN allocation with the credentials the homeserver hands out.
//!
//! [`peer`] is the media side: a sans-IO [`peer::Peer`] over str0m that makes or answers the
//! SDP, runs ICE and DTLS-SRTP (DTLS 1.2, fingerprints verified) and carries Opus from
//! `oracle-calls-media`. The caller's driver owns the sockets and the clock.
//!
//! No IO, no clock, no global RNG: time and randomness come in as arguments.
//!
//! ```
//! use oracle_calls_direct::binding::{EphemeralKeyPair, Role};
//! use oracle_calls_direct::signal::CallEvent;
//! use serde_json::json;
//!
//! let hangup = CallEvent::parse(
//!     "m.call.hangup",
//!     &json!({"call_id": "c1", "party_id": "DEV", "version": "1", "reason": "replaced"}),
//! )?;
//! assert_eq!(hangup.event_type(), "m.call.hangup");
//! let mut rng = rand::rng();
//! let ours = EphemeralKeyPair::generate(&mut rng);
//! assert_eq!(ours.public().to_base64url().len(), 87);
//! assert_eq!(Role::Caller.byte(), 1);
//! # Ok::<(), oracle_calls_direct::Error>(())
//! ```
#![deny(missing_docs)]

pub mod binding;
pub mod call;
pub mod error;
pub mod peer;
pub mod signal;
pub mod turn;

pub use binding::{CallBinding, DtlsFingerprint, EphemeralKeyPair, PartyIdentity, Role};
pub use call::{CallConfig, CallMachine, EventAuth, Notification, Output, SecurityEvent};
pub use error::{BindingError, CallError, Error, ExtensionError, SignalError};
pub use signal::{CallEvent, CallId, HangupReason, PartyId};

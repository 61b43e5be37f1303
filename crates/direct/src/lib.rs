//! Person-to-person calls without an SFU (issue 15): Matrix VoIP signalling, str0m peer to
//! peer, and TURN relays. This part: [`turn`], a sans-IO TURN allocation with the credentials
//! the homeserver hands out.
pub mod turn;

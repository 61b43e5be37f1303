//! Direct person-to-person calls: 1:1 end-to-end encrypted audio, peer to peer, without an SFU.
//!
//! [`peer`] is the media side: a sans-IO [`peer::Peer`] over str0m that makes or answers the
//! SDP, runs ICE and DTLS-SRTP (DTLS 1.2, fingerprints verified) and carries Opus from
//! `oracle-calls-media`. The caller's driver owns the sockets and the clock.
#![deny(missing_docs)]

pub mod peer;

//! Errors of the rtc crate.

/// Why a room operation failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// The signaling WebSocket could not be opened or broke.
    #[error("signaling connection failed: {0}")]
    Signal(String),
    /// The server rejected the join (bad token, room closed, …).
    #[error("the server refused to join: {0}")]
    Refused(String),
    /// The server sent something this client does not understand.
    #[error("unexpected signaling message: {0}")]
    Protocol(&'static str),
    /// WebRTC (ICE, DTLS, SDP) failed.
    #[error("media connection failed: {0}")]
    Media(String),
    /// A timeout elapsed.
    #[error("timed out waiting for {0}")]
    Timeout(&'static str),
    /// Audio encoding or decoding failed.
    #[error("audio codec error: {0}")]
    Codec(String),
    /// End-to-end encryption failed on our side (e.g. no key).
    #[error(transparent)]
    Crypto(#[from] oracle_calls_crypto::FrameError),
    /// A key operation in a room without end-to-end encryption.
    #[error("end-to-end encryption is not on in this room")]
    NoE2ee,
    /// No fresh token could be had for a full reconnect (the token source refused: its
    /// reason).
    #[error("no fresh token to rejoin: {0}")]
    Token(String),
    /// No fresh token for a full reconnect yet (the token source could not get one now); the
    /// rejoin is tried again.
    #[error("no fresh token to rejoin yet: {0}")]
    TokenUnavailable(String),
    /// The room's task has ended.
    #[error("the room is closed")]
    Closed,
    /// Local IO (sockets) failed.
    #[error("io: {0}")]
    Io(#[from] std::io::Error),
}

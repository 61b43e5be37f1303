//! The client's errors: one variant per failure of DESIGN §6 a caller may handle.

/// Why a call could not be placed or ended.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum CallError {
    /// Local configuration or state (store directory, pins file) is unusable.
    #[error("client setup: {0}")]
    Setup(String),
    /// Matrix refused or could not be reached (login, room, send).
    #[error("Matrix: {0}")]
    Matrix(String),
    /// The oracle's published key differs from the one pinned on first use.
    #[error(
        "the oracle {oracle} now publishes key {offered} but {pinned} was pinned on first use; \
         refusing to call (verify the change, then allow it explicitly)"
    )]
    OracleKeyChanged {
        /// The oracle.
        oracle: String,
        /// Key id pinned earlier.
        pinned: String,
        /// Key ids offered now.
        offered: String,
    },
    /// The oracle publishes no key this client can wrap to.
    #[error("the oracle publishes no usable key: {0}")]
    NoUsableKey(String),
    /// The oracle's bot did not join the DM room in time (its device would get no room key).
    #[error("the oracle's Matrix bot {0} did not join the room")]
    BotAbsent(String),
    /// The oracle-calls server answered with an error.
    #[error("server answered {status}: {message}")]
    Server {
        /// HTTP status.
        status: u16,
        /// The server's message.
        message: String,
    },
    /// The oracle-calls server could not be reached after bounded retries.
    #[error("server unreachable after {attempts} attempts: {last}")]
    ServerUnreachable {
        /// Attempts made.
        attempts: u32,
        /// The last failure.
        last: String,
    },
    /// The call ended before it connected; the server says why (e.g. `keyDecryptionFailed`:
    /// the oracle's agent could not open the call key).
    #[error("the call ended before it connected: {}", reason.map(|r| format!("{r:?}")).unwrap_or_else(|| "no reason given".into()))]
    CallEnded {
        /// The server's reason.
        reason: Option<oracle_calls_proto::CallReason>,
    },
    /// Wrapping the call key failed.
    #[error("crypto: {0}")]
    Crypto(String),
    /// LiveKit media could not be set up.
    #[error("media: {0}")]
    Media(#[from] oracle_calls_rtc::Error),
}

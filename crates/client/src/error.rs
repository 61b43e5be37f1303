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
    /// The server describes another oracle than the one the caller chose to call.
    #[error(
        "the server describes the oracle {served}, but this call is to {expected}; refusing \
         to call (a misconfigured or compromised server)"
    )]
    WrongOracle {
        /// The oracle the caller chose.
        expected: String,
        /// The oracle the server's well-known names.
        served: String,
    },
    /// The oracle's published keys do not include the key the client verified.
    #[error(
        "the oracle {oracle} now publishes key {offered} but {pinned} was verified{}; refusing \
         to call (verify the change out of band, then accept exactly the new key id)",
        epoch.map(|e| format!(" (key transparency epoch {e})")).unwrap_or_default()
    )]
    OracleKeyChanged {
        /// The oracle.
        oracle: String,
        /// Key ids verified earlier.
        pinned: String,
        /// Key ids offered now.
        offered: String,
        /// The key-transparency epoch of the change, when key transparency is in use.
        epoch: Option<u64>,
    },
    /// Key transparency is configured and the directory's answer does not verify: a bad
    /// checkpoint signature or proof, a rollback to an older checkpoint than the one stored,
    /// a fork, or a key history that no longer holds the record pinned earlier. Nothing was
    /// sent.
    #[error(
        "key transparency: the directory's answer for the oracle does not verify ({0}); \
         refusing to call"
    )]
    KeyTransparency(#[source] oracle_calls_kt::Error),
    /// Key transparency is configured but the oracle's record could not be fetched (the
    /// directory is unreachable, answers an error, or has no record for the oracle). Nothing
    /// was sent.
    #[error("key transparency: {0}; refusing to call (the oracle's record cannot be verified)")]
    KtUnavailable(String),
    /// The oracle's server describes the oracle otherwise than the record the key-transparency
    /// directory proved: `what` names the field (`keys`, `matrixUserId`, `matrixDevices`).
    /// Nothing was sent.
    #[error(
        "the server's {what} for the oracle {oracle} ({served}) is not what its verified \
         key-transparency record holds ({record}); refusing to call (a misconfigured or \
         compromised server, or a change its operator has not published)"
    )]
    KtMismatch {
        /// The oracle.
        oracle: String,
        /// The field that differs: `keys`, `matrixUserId` or `matrixDevices`.
        what: &'static str,
        /// What the verified record holds.
        record: String,
        /// What the server's well-known says.
        served: String,
    },
    /// The oracle's Matrix bot is another user than the one the client verified.
    #[error(
        "the oracle {oracle}'s bot is now {offered} but {pinned} was verified; refusing to call \
         (verify the change, then accept exactly the new bot device)"
    )]
    OracleBotChanged {
        /// The oracle.
        oracle: String,
        /// The bot user verified earlier.
        pinned: String,
        /// The bot user named now.
        offered: String,
    },
    /// None of the bot devices the client verified is published any more.
    #[error(
        "the oracle {oracle}'s bot devices are now {offered} but {pinned} was verified; \
         refusing to call (verify the change, then accept exactly the new device's key)"
    )]
    BotDeviceChanged {
        /// The oracle.
        oracle: String,
        /// Devices verified earlier.
        pinned: String,
        /// Devices published now.
        offered: String,
    },
    /// The oracle's prekey signing key differs from the one verified earlier, or the oracle
    /// stopped offering prekeys (`offered` is `none`): calls would lose forward secrecy or go
    /// to prekeys someone else made. Nothing was sent.
    #[error(
        "the oracle {oracle}'s prekey signing key is now {offered} but {pinned} was verified; \
         refusing to call (verify the change, then accept exactly the new key, or `none`)"
    )]
    PrekeySigningKeyChanged {
        /// The oracle.
        oracle: String,
        /// The key verified earlier.
        pinned: String,
        /// The key published now, or `none`.
        offered: String,
    },
    /// The oracle offers forward secrecy but the server handed out no prekey (`POST
    /// /prekeys/claim` failed). Nothing was sent.
    #[error("no prekey of the oracle could be claimed: {0}")]
    PrekeyUnavailable(String),
    /// The prekey the server handed out is not signed by the oracle's prekey signing key (a
    /// server that substitutes prekeys). Nothing was sent.
    #[error("the server handed out a prekey the oracle did not sign: {0}")]
    PrekeyInvalid(String),
    /// The bot device that may receive the call event is unknown or not on the homeserver.
    #[error("no trusted device of the oracle's bot: {0}")]
    BotDeviceUnknown(String),
    /// A server URL would carry credentials in the clear (`http://` outside loopback).
    #[error("refusing {0}: use https:// (http:// is accepted on loopback only)")]
    InsecureUrl(String),
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

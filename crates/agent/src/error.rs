//! Errors of the agent runtime.

/// Why the agent could not start or keep running.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum AgentError {
    /// The configuration is unusable.
    #[error(transparent)]
    Config(#[from] crate::ConfigError),
    /// The LiveKit `/agent` socket could not be opened or registration was refused.
    #[error("agent worker registration failed: {0}")]
    Register(String),
    /// The prekey store could not be stocked or the server refused its prekeys.
    #[error("prekeys: {0}")]
    Prekeys(#[from] crate::prekeys::PrekeyError),
    /// The worker socket broke and could not be re-established.
    #[error("agent worker connection lost: {0}")]
    Connection(String),
}

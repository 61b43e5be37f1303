//! `[cluster]`: several servers of one oracle on one PostgreSQL database.

use std::time::Duration;

use serde::Deserialize;

/// How the servers of one oracle that share a PostgreSQL database elect the one that runs the
/// bot's single-writer duties (accepting invites, writing the status backlog to Matrix). On
/// SQLite a server is alone by construction and always leads; these settings are unused.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ClusterConfig {
    /// How often a server that does not lead tries to take the lead, in milliseconds
    /// (default 1000): a dead leader is replaced within this time plus two
    /// `leader_check_ms` after PostgreSQL sees its connection closed.
    #[serde(default = "default_retry_ms")]
    pub leader_retry_ms: u64,
    /// How often the leader checks that its lock connection still answers, in milliseconds
    /// (default 1000); a check that fails or takes longer ends the lead at once, and a leader
    /// whose last good check is two periods old stops acting. A server that takes the lock
    /// waits two periods before it acts. Every server of one oracle must use the same value.
    #[serde(default = "default_check_ms")]
    pub leader_check_ms: u64,
}

impl Default for ClusterConfig {
    fn default() -> Self {
        Self {
            leader_retry_ms: default_retry_ms(),
            leader_check_ms: default_check_ms(),
        }
    }
}

impl ClusterConfig {
    /// [`Self::leader_retry_ms`], at least 50 ms.
    pub fn retry(&self) -> Duration {
        Duration::from_millis(self.leader_retry_ms.max(50))
    }
    /// [`Self::leader_check_ms`], at least 50 ms.
    pub fn check(&self) -> Duration {
        Duration::from_millis(self.leader_check_ms.max(50))
    }
}

fn default_retry_ms() -> u64 {
    1000
}
fn default_check_ms() -> u64 {
    1000
}

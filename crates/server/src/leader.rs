//! Which of the servers of one oracle leads: the one that runs the bot's single-writer duties
//! (accepting invites, writing the backlog of status edits to Matrix).
//!
//! On PostgreSQL the leader is the server that holds a session-level advisory lock, keyed by
//! the oracle's DID ([`lock_key`]), on a connection of its own (not the pool's). The others
//! try to take it every `cluster.leader_retry_ms`. A leader whose process dies closes that
//! connection and PostgreSQL frees the lock at once.
//!
//! The leader checks its connection every `cluster.leader_check_ms` (a check times out after
//! one period); it leads only while its last good check is younger than two periods (its
//! lease), and a failed check ends the lead at once, before the connection is closed.
//! PostgreSQL can free the lock before the old leader notices (a terminated backend, a
//! database restart), so a server that takes the lock first waits out that lease (two periods)
//! before it acts: two servers never lead at once as long as they share `leader_check_ms`.
//! A new leader therefore leads about `retry + 2 × check` after the old one died (3 s by
//! default). PostgreSQL itself drops a silent lock connection (a leader cut off by the
//! network) after about 11 s of TCP keepalives set on the session, long after that leader's
//! lease ran out.
//!
//! On SQLite a server is alone by construction and always leads.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use oracle_calls_proto::Did;
use prometheus::IntGauge;
use sha2::{Digest as _, Sha256};
use sqlx::{AnyConnection, Connection as _, Row as _};
use tokio::sync::watch;
use tracing::{info, warn};

use crate::Secret;
use crate::config::ClusterConfig;

/// Whether this server leads, as a watchable flag. Cheap to clone.
#[derive(Clone, Debug)]
pub struct Leadership(Arc<Inner>);

#[derive(Debug)]
struct Inner {
    flag: watch::Sender<bool>,
    /// Until when the last good check of the lock connection vouches for the lead (`None`:
    /// no expiry, the SQLite case).
    lease: Mutex<Option<Instant>>,
    stop: watch::Sender<bool>,
    elected: bool,
}

impl Leadership {
    /// A server that is alone (SQLite, or no bot): it always leads.
    pub fn alone() -> Self {
        Self(Arc::new(Inner {
            flag: watch::channel(true).0,
            lease: Mutex::new(None),
            stop: watch::channel(false).0,
            elected: false,
        }))
    }

    /// Starts the election among the servers of `oracle` on the PostgreSQL database at `url`;
    /// `gauge` shows 1 while this server leads.
    pub fn elect(url: Secret, oracle: &Did, cluster: &ClusterConfig, gauge: IntGauge) -> Self {
        gauge.set(0);
        // The lock connection is an `AnyConnection` (idempotent; the store does it too).
        sqlx::any::install_default_drivers();
        let this = Self(Arc::new(Inner {
            flag: watch::channel(false).0,
            lease: Mutex::new(Some(Instant::now())),
            stop: watch::channel(false).0,
            elected: true,
        }));
        let task = Election {
            leadership: this.clone(),
            url,
            key: lock_key(oracle),
            retry: cluster.retry(),
            check: cluster.check(),
            gauge,
        };
        tokio::spawn(task.run());
        this
    }

    /// True while this server leads (and, when elected, its lock was confirmed recently).
    pub fn is_leader(&self) -> bool {
        if !*self.0.flag.borrow() {
            return false;
        }
        match self.0.lease.lock() {
            Ok(lease) => lease.is_none_or(|until| Instant::now() < until),
            Err(_) => false,
        }
    }

    /// Changes of the flag (for the duties that start when the lead is taken).
    pub fn subscribe(&self) -> watch::Receiver<bool> {
        self.0.flag.subscribe()
    }

    /// True when the lead is elected through PostgreSQL (several servers may run).
    pub fn is_elected(&self) -> bool {
        self.0.elected
    }

    /// Stops leading and leaves the election (the lock connection is closed).
    pub fn stop(&self) {
        let _ = self.0.flag.send_replace(!self.0.elected);
        let _ = self.0.stop.send_replace(true);
    }

    /// Sets the flag; the lead is good until `until`.
    fn set(&self, leading: bool, until: Instant) {
        if let Ok(mut lease) = self.0.lease.lock() {
            *lease = Some(until);
        }
        self.0.flag.send_if_modified(|f| {
            let changed = *f != leading;
            *f = leading;
            changed
        });
    }
}

/// The advisory lock key of `oracle`'s leader: the first 8 bytes (big-endian) of a SHA-256 of
/// `"oracle-calls leader\0"` and its DID. In `pg_locks` it shows as `locktype = 'advisory'`,
/// `classid` its high 32 bits, `objid` its low 32 bits, `objsubid = 1`.
pub fn lock_key(oracle: &Did) -> i64 {
    let h = Sha256::digest(format!("oracle-calls leader\u{0}{}", oracle.as_str()).as_bytes());
    let mut b = [0u8; 8];
    for (dst, src) in b.iter_mut().zip(h.iter()) {
        *dst = *src;
    }
    i64::from_be_bytes(b)
}

struct Election {
    leadership: Leadership,
    url: Secret,
    key: i64,
    retry: Duration,
    check: Duration,
    gauge: IntGauge,
}

impl Election {
    async fn run(self) {
        let mut stop = self.leadership.0.stop.subscribe();
        info!(lock = self.key, "leader election running");
        loop {
            if *stop.borrow() {
                break;
            }
            match self.session(&mut stop).await {
                Ok(()) => break,
                Err(e) => warn!(error = %e, "leader lock connection failed; trying again"),
            }
            tokio::select! {
                () = tokio::time::sleep(self.retry) => {},
                _ = stop.changed() => break,
            }
        }
        self.step_down("stopped");
        info!("leader election stopped");
    }

    /// One connection: tries for the lock until it is taken, then holds it while the
    /// connection answers. `Ok` when stopped, `Err` when the connection failed (the caller
    /// reconnects).
    async fn session(&self, stop: &mut watch::Receiver<bool>) -> Result<(), String> {
        let mut conn = self
            .within_for(
                self.check.max(Duration::from_secs(5)),
                AnyConnection::connect(self.url.dangerous_expose()),
            )
            .await?;
        // A connection that goes silent (its server cut off) is dropped by PostgreSQL after
        // about 5 + 3 × 2 s, freeing the lock; ignored on a Unix socket, where it cannot
        // happen.
        self.within(
            sqlx::query(
                "SELECT set_config('tcp_keepalives_idle', '5', false) AS a,
                        set_config('tcp_keepalives_interval', '2', false) AS b,
                        set_config('tcp_keepalives_count', '3', false) AS c",
            )
            .execute(&mut conn),
        )
        .await?;
        loop {
            let row = self
                .within(
                    sqlx::query("SELECT pg_try_advisory_lock($1) AS got")
                        .bind(self.key)
                        .fetch_one(&mut conn),
                )
                .await?;
            let got: bool = row.try_get("got").map_err(|e| e.to_string())?;
            if got {
                break;
            }
            tokio::select! {
                () = tokio::time::sleep(self.retry) => {},
                _ = stop.changed() => {
                    let _ = conn.close().await;
                    return Ok(());
                }
            }
        }
        // The previous holder may still think it leads until its lease runs out.
        info!("took the leader lock; waiting out the previous leader's lease");
        tokio::select! {
            () = tokio::time::sleep(self.lease()) => {},
            _ = stop.changed() => {
                let _ = conn.close().await;
                return Ok(());
            }
        }
        let asked = Instant::now();
        self.within(sqlx::query("SELECT 1 AS one").execute(&mut conn))
            .await?;
        self.leadership.set(true, asked + self.lease());
        self.gauge.set(1);
        info!("this server now leads");
        loop {
            tokio::select! {
                () = tokio::time::sleep(self.check) => {},
                _ = stop.changed() => {
                    self.step_down("stopped");
                    let _ = conn.close().await;
                    return Ok(());
                }
            }
            // The lease runs from when the check was sent: PostgreSQL answered it no earlier,
            // and a lock freed after that answer is taken no earlier either.
            let asked = Instant::now();
            let checked = self
                .within(sqlx::query("SELECT 1 AS one").execute(&mut conn))
                .await;
            match checked {
                Ok(_) => self.leadership.set(true, asked + self.lease()),
                Err(e) => {
                    // Stop first: the lock is freed for the others only when this
                    // connection closes, just below (or when PostgreSQL drops it).
                    self.step_down("the lock connection failed");
                    drop(conn);
                    return Err(e);
                }
            }
        }
    }

    fn step_down(&self, why: &str) {
        let was = *self.leadership.0.flag.borrow();
        self.leadership.set(false, Instant::now());
        self.gauge.set(0);
        if was {
            warn!(why, "this server no longer leads");
        }
    }

    /// How long one good check vouches for the lead.
    fn lease(&self) -> Duration {
        self.check * 2
    }

    /// `fut` within one check period.
    async fn within<T, E: std::fmt::Display>(
        &self,
        fut: impl std::future::Future<Output = Result<T, E>>,
    ) -> Result<T, String> {
        self.within_for(self.check, fut).await
    }

    async fn within_for<T, E: std::fmt::Display>(
        &self,
        limit: Duration,
        fut: impl std::future::Future<Output = Result<T, E>>,
    ) -> Result<T, String> {
        match tokio::time::timeout(limit, fut).await {
            Ok(Ok(v)) => Ok(v),
            Ok(Err(e)) => Err(e.to_string()),
            Err(_) => Err("no answer in time".to_owned()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_lock_key_is_stable_and_per_oracle() {
        let a = Did::parse("did:ixo:oracle1").unwrap();
        let b = Did::parse("did:ixo:oracle2").unwrap();
        assert_eq!(lock_key(&a), lock_key(&a.clone()));
        assert_ne!(lock_key(&a), lock_key(&b));
    }

    #[tokio::test]
    async fn alone_always_leads() {
        let l = Leadership::alone();
        assert!(l.is_leader() && !l.is_elected());
        l.stop();
        assert!(
            l.is_leader(),
            "a lone server never hands the lead to anyone"
        );
    }
}

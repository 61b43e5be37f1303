//! Rate and concurrency limits (`[limits]`): per peer address on every route, per user on the
//! users' routes, per agent key on the agents' routes, per address on the token checks that
//! cost a homeserver request, and a cap on those checks in flight. A refused request gets 429
//! with `Retry-After` (or 503 when the server as a whole is saturated), and costs nothing else.
//!
//! Every bucket lives in the process. On PostgreSQL the limits named in
//! `limits.cluster_wide` (the per-user one by default) also take from a bucket all servers of
//! the oracle share in the database ([`Store::take_shared_token`]), after the process's own
//! bucket let the request through: N servers behind a balancer then allow one user what one
//! server would, and a flood from one process reaches the database at no more than the
//! limit's own rate.

use std::collections::HashSet;
use std::net::{IpAddr, SocketAddr};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use axum::extract::{ConnectInfo, Request, State};
use axum::http::HeaderMap;
use axum::middleware::Next;
use axum::response::{IntoResponse as _, Response};

use oracle_calls_proto::Did;
use tracing::warn;

use crate::cache::BoundedCache;
use crate::config::{LimitsConfig, Rate, SharedLimit};
use crate::state::WeakState;
use crate::store::{Backend, Store};
use crate::{AppState, Error, Result};

/// The address a request is counted under: the TCP peer, or — when the peer is one of
/// `limits.trusted_proxies` — the nearest address in its `X-Forwarded-For` that is not one
/// of those proxies.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ClientAddr(pub IpAddr);

/// A token bucket per key, in bounded memory: `burst` requests at once, refilled at
/// `per_sec`. A bucket idle long enough to be full again is the same as no bucket, so
/// evicting it loses nothing.
#[derive(Debug)]
pub(crate) struct RateLimiter<K> {
    rate: Rate,
    buckets: Mutex<BoundedCache<K, Bucket>>,
}

#[derive(Debug, Clone, Copy)]
struct Bucket {
    tokens: f64,
    at: Instant,
}

impl<K: Eq + std::hash::Hash + Clone> RateLimiter<K> {
    pub(crate) fn new(rate: Rate, capacity: usize) -> Self {
        Self {
            rate,
            buckets: Mutex::new(BoundedCache::new(capacity)),
        }
    }

    /// Takes one token for `key`; when none is left, the time until one is.
    pub(crate) fn take(&self, key: &K, now: Instant) -> std::result::Result<(), Duration> {
        let Rate { per_sec, burst } = self.rate;
        if per_sec <= 0.0 {
            return Ok(()); // this limit is off
        }
        let burst = f64::from(burst.max(1));
        let Ok(mut buckets) = self.buckets.lock() else {
            return Ok(());
        };
        let mut b = buckets.get(key, now).map_or(
            Bucket {
                tokens: burst,
                at: now,
            },
            |b| *b,
        );
        let refill = now.saturating_duration_since(b.at).as_secs_f64() * per_sec;
        b.tokens = (b.tokens + refill).min(burst);
        b.at = now;
        let result = if b.tokens >= 1.0 {
            b.tokens -= 1.0;
            Ok(())
        } else {
            Err(Duration::from_secs_f64((1.0 - b.tokens) / per_sec))
        };
        // Kept until it would be full again; after that it is the same as a new one.
        let full_in = Duration::from_secs_f64(((burst - b.tokens) / per_sec).min(86_400.0));
        buckets.insert(key.clone(), b, now + full_in + Duration::from_secs(1));
        result
    }

    #[cfg(test)]
    pub(crate) fn tracked(&self) -> usize {
        self.buckets.lock().map_or(0, |b| b.len())
    }
}

/// Everything `[limits]` enforces, shared by the handlers.
#[derive(Debug)]
pub struct Limits {
    config: LimitsConfig,
    per_address: RateLimiter<IpAddr>,
    token_checks_per_address: RateLimiter<IpAddr>,
    per_user: RateLimiter<String>,
    per_agent_key: RateLimiter<String>,
    token_checks: tokio::sync::Semaphore,
    key_waits: Mutex<HashSet<String>>,
    shared: Option<Shared>,
}

/// The buckets this server shares with the other servers of its oracle: the store, and the
/// bucket scope (`<limit>:<oracle DID>`) of each limit that is shared (`None`: this server's
/// own bucket only).
#[derive(Debug)]
struct Shared {
    store: Store,
    per_user: Option<String>,
    per_agent_key: Option<String>,
}

impl Limits {
    pub(crate) fn new(config: &LimitsConfig) -> Self {
        let cap = config.max_tracked_keys;
        Self {
            per_address: RateLimiter::new(config.per_address, cap),
            token_checks_per_address: RateLimiter::new(config.token_checks_per_address, cap),
            per_user: RateLimiter::new(config.per_user, cap),
            per_agent_key: RateLimiter::new(config.per_agent_key, cap),
            token_checks: tokio::sync::Semaphore::new(config.max_concurrent_token_checks.max(1)),
            key_waits: Mutex::new(HashSet::new()),
            shared: None,
            config: config.clone(),
        }
    }

    /// These limits, with the buckets of `limits.cluster_wide` shared through `store` by the
    /// servers of `oracle` when `store` is PostgreSQL (on SQLite: unchanged).
    pub(crate) fn shared_through(mut self, store: &Store, oracle: &Did) -> Self {
        if store.backend() == Backend::Postgres && !self.config.cluster_wide.is_empty() {
            let scope = |limit: SharedLimit| {
                self.config
                    .cluster_wide
                    .contains(&limit)
                    .then(|| format!("{}:{}", limit.name(), oracle.as_str()))
            };
            self.shared = Some(Shared {
                store: store.clone(),
                per_user: scope(SharedLimit::PerUser),
                per_agent_key: scope(SharedLimit::PerAgentKey),
            });
        }
        self
    }

    /// One take from the shared bucket of `limit` for `key`, when that limit is shared. A
    /// database that cannot be reached leaves the process's own bucket, already taken from,
    /// as the limit (the request's own work needs that database anyway).
    async fn take_shared(
        &self,
        limit: SharedLimit,
        rate: Rate,
        key: &str,
    ) -> std::result::Result<(), Duration> {
        let Some(shared) = &self.shared else {
            return Ok(());
        };
        let scope = match limit {
            SharedLimit::PerUser => &shared.per_user,
            SharedLimit::PerAgentKey => &shared.per_agent_key,
        };
        let Some(scope) = scope else {
            return Ok(());
        };
        match shared
            .store
            .take_shared_token(scope, key, rate.per_sec, rate.burst)
            .await
        {
            Ok(taken) => taken,
            Err(e) => {
                warn!(error = %e, limit = limit.name(),
                    "the shared rate bucket could not be read; this server's own bucket applies");
                Ok(())
            }
        }
    }

    /// The address a request is counted under (see [`ClientAddr`]).
    pub(crate) fn client_addr(&self, peer: IpAddr, headers: &HeaderMap) -> IpAddr {
        if !self.config.trusted_proxies.contains(&peer) {
            return peer;
        }
        // Each proxy appends the address it saw: the first one from the right that is not
        // one of our proxies is the client. Anything unparsable ends the walk.
        let hops: Vec<&str> = headers
            .get_all("x-forwarded-for")
            .iter()
            .filter_map(|v| v.to_str().ok())
            .flat_map(|v| v.split(','))
            .collect();
        for hop in hops.iter().rev() {
            match hop.trim().parse::<IpAddr>() {
                Ok(a) if self.config.trusted_proxies.contains(&a) => {}
                Ok(a) => return a,
                Err(_) => break,
            }
        }
        peer
    }

    /// One request from `addr` (every route).
    pub(crate) fn address(&self, addr: IpAddr) -> Result<()> {
        self.per_address
            .take(&addr, Instant::now())
            .map_err(|wait| limited("too many requests from this address", wait))
    }

    /// One request of the Matrix user `user`.
    pub(crate) async fn user(&self, user: &str) -> Result<()> {
        let what = "too many requests from this user";
        self.per_user
            .take(&user.to_owned(), Instant::now())
            .map_err(|wait| limited(what, wait))?;
        self.take_shared(SharedLimit::PerUser, self.config.per_user, user)
            .await
            .map_err(|wait| limited(what, wait))
    }

    /// One request made with the agent key `key_id`.
    pub(crate) async fn agent_key(&self, key_id: &str) -> Result<()> {
        let what = "too many requests with this API key";
        self.per_agent_key
            .take(&key_id.to_owned(), Instant::now())
            .map_err(|wait| limited(what, wait))?;
        self.take_shared(SharedLimit::PerAgentKey, self.config.per_agent_key, key_id)
            .await
            .map_err(|wait| limited(what, wait))
    }

    /// One token check that needs the homeserver, from `addr`: counted per address, then
    /// waits (bounded) for a slot among those in flight.
    pub(crate) async fn token_check(
        &self,
        addr: Option<IpAddr>,
    ) -> Result<tokio::sync::SemaphorePermit<'_>> {
        if let Some(addr) = addr {
            self.token_checks_per_address
                .take(&addr, Instant::now())
                .map_err(|wait| {
                    limited("too many unknown access tokens from this address", wait)
                })?;
        }
        match tokio::time::timeout(
            Duration::from_millis(self.config.token_check_queue_ms),
            self.token_checks.acquire(),
        )
        .await
        {
            Ok(Ok(permit)) => Ok(permit),
            _ => Err(Error::Busy(
                "too many access token checks in flight; try again shortly",
            )),
        }
    }

    /// Marks `user` as waiting for a room key; `None` when that user already waits for one
    /// (one such wait per user at a time).
    pub(crate) fn key_wait(&self, user: &str) -> Option<KeyWait<'_>> {
        let mut waits = self.key_waits.lock().ok()?;
        waits.insert(user.to_owned()).then(|| KeyWait {
            limits: self,
            user: user.to_owned(),
        })
    }

    /// How long an undecryptable call event is fetched again while its key may be arriving.
    pub(crate) fn key_wait_time(&self) -> Duration {
        Duration::from_millis(self.config.key_wait_ms)
    }

    /// Most rooms the bot shares with one user (invites beyond it are declined).
    pub(crate) fn max_rooms_per_user(&self) -> usize {
        self.config.max_rooms_per_user
    }

    /// How long a refused access token is refused without asking the homeserver again.
    pub(crate) fn failed_token_ttl(&self) -> Duration {
        Duration::from_secs(self.config.failed_token_cache_secs)
    }
}

/// How often each server deletes the shared buckets that are full again.
const SHARED_SWEEP_EVERY: Duration = Duration::from_secs(60);

/// Keeps the shared buckets' table to the buckets in use: every server deletes, every
/// [`SHARED_SWEEP_EVERY`], the rows whose bucket is full again (the same as no row). Ends
/// with the state, and at once where no bucket is shared.
pub(crate) fn spawn_shared_sweeper(state: WeakState) {
    state.every(
        |s| s.limits().shared.is_some().then_some(SHARED_SWEEP_EVERY),
        |s| async move {
            let Some(shared) = &s.limits().shared else {
                return;
            };
            match shared.store.sweep_shared_buckets().await {
                Ok(n) if n > 0 => tracing::debug!(swept = n, "full shared rate buckets deleted"),
                Ok(_) => {}
                Err(e) => warn!(error = %e, "sweeping the shared rate buckets failed"),
            }
        },
    );
}

/// A user's wait for a room key; ends when dropped.
#[derive(Debug)]
pub(crate) struct KeyWait<'a> {
    limits: &'a Limits,
    user: String,
}

impl Drop for KeyWait<'_> {
    fn drop(&mut self) {
        if let Ok(mut waits) = self.limits.key_waits.lock() {
            waits.remove(&self.user);
        }
    }
}

fn limited(what: &'static str, wait: Duration) -> Error {
    // Whole seconds, rounded up: a client that waits that long gets through.
    let secs = wait.as_secs() + u64::from(wait.subsec_nanos() > 0);
    Error::RateLimited {
        what,
        retry_after_secs: secs.max(1),
    }
}

/// The middleware of every route: finds the request's [`ClientAddr`], counts it, and refuses
/// it with 429 past the per-address limit (before any other work).
pub(crate) async fn per_address(
    State(state): State<AppState>,
    mut req: Request,
    next: Next,
) -> Response {
    let Some(peer) = req
        .extensions()
        .get::<ConnectInfo<SocketAddr>>()
        .map(|c| c.0.ip())
    else {
        return next.run(req).await;
    };
    let addr = state.limits().client_addr(peer, req.headers());
    if let Err(e) = state.limits().address(addr) {
        tracing::debug!(%addr, "request refused: per-address rate limit");
        return e.into_response();
    }
    req.extensions_mut().insert(ClientAddr(addr));
    next.run(req).await
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rate(per_sec: f64, burst: u32) -> Rate {
        Rate { per_sec, burst }
    }

    #[test]
    fn a_bucket_allows_its_burst_then_its_rate() {
        let l = RateLimiter::new(rate(2.0, 3), 10);
        let t0 = Instant::now();
        for _ in 0..3 {
            assert!(l.take(&"a", t0).is_ok());
        }
        let wait = l.take(&"a", t0).unwrap_err();
        assert!(
            wait > Duration::from_millis(490) && wait <= Duration::from_millis(500),
            "{wait:?}"
        );
        assert!(l.take(&"b", t0).is_ok(), "another key has its own bucket");
        assert!(
            l.take(&"a", t0 + Duration::from_millis(500)).is_ok(),
            "one token after 1/rate"
        );
        assert!(l.take(&"a", t0 + Duration::from_millis(500)).is_err());
        // Refill never exceeds the burst.
        let t1 = t0 + Duration::from_secs(3600);
        for _ in 0..3 {
            assert!(l.take(&"a", t1).is_ok());
        }
        assert!(l.take(&"a", t1).is_err());
    }

    #[test]
    fn memory_stays_bounded_under_a_flood_of_keys() {
        let l = RateLimiter::new(rate(1.0, 1), 100);
        let t0 = Instant::now();
        for i in 0..10_000u32 {
            let _ = l.take(&i, t0);
        }
        assert_eq!(l.tracked(), 100);
        // A zero rate turns the limit off.
        let off = RateLimiter::new(rate(0.0, 1), 1);
        for _ in 0..100 {
            assert!(off.take(&1u8, t0).is_ok());
        }
    }

    #[test]
    fn retry_after_rounds_up_to_whole_seconds() {
        for (wait, secs) in [
            (Duration::from_millis(1), 1),
            (Duration::from_millis(1500), 2),
            (Duration::from_secs(3), 3),
        ] {
            match limited("x", wait) {
                Error::RateLimited {
                    retry_after_secs, ..
                } => assert_eq!(retry_after_secs, secs),
                e => panic!("{e}"),
            }
        }
    }

    #[test]
    fn forwarded_addresses_count_only_from_trusted_proxies() {
        let proxy: IpAddr = "10.0.0.1".parse().unwrap();
        let config = LimitsConfig {
            trusted_proxies: vec![proxy],
            ..LimitsConfig::default()
        };
        let l = Limits::new(&config);
        let mut h = HeaderMap::new();
        h.append(
            "x-forwarded-for",
            "203.0.113.9, 198.51.100.7".parse().unwrap(),
        );
        assert_eq!(
            l.client_addr(proxy, &h),
            "198.51.100.7".parse::<IpAddr>().unwrap()
        );
        // Through two of our proxies: the client is still the last address added outside.
        h.append("x-forwarded-for", "10.0.0.1".parse().unwrap());
        assert_eq!(
            l.client_addr(proxy, &h),
            "198.51.100.7".parse::<IpAddr>().unwrap()
        );
        let stranger: IpAddr = "192.0.2.5".parse().unwrap();
        assert_eq!(
            l.client_addr(stranger, &h),
            stranger,
            "only a trusted proxy may say"
        );
        assert_eq!(l.client_addr(proxy, &HeaderMap::new()), proxy);
        let mut junk = HeaderMap::new();
        junk.append("x-forwarded-for", "not-an-address".parse().unwrap());
        assert_eq!(l.client_addr(proxy, &junk), proxy);
    }

    #[test]
    fn one_key_wait_per_user() {
        let l = Limits::new(&LimitsConfig::default());
        let w = l.key_wait("@a:x").unwrap();
        assert!(l.key_wait("@a:x").is_none());
        assert!(l.key_wait("@b:x").is_some());
        drop(w);
        assert!(l.key_wait("@a:x").is_some());
    }
}

//! Prometheus metrics, served at `/metrics`.

use prometheus::{
    Encoder as _, HistogramOpts, HistogramVec, IntCounterVec, IntGauge, Opts, Registry, TextEncoder,
};

use crate::{Error, Result};

/// The server's metrics.
#[derive(Clone, Debug)]
pub struct Metrics {
    registry: Registry,
    /// Requests by route, method and status.
    pub http_requests: IntCounterVec,
    /// Request latency by route.
    pub http_latency: HistogramVec,
    /// Call lifecycle events (`synced`, `ended`, `key_granted`, `key_refused`, `webhook`).
    pub calls: IntCounterVec,
    /// Status edits written to Matrix, by outcome (`ok`, `retry`, `failed`).
    pub matrix_writes: IntCounterVec,
    /// Calls whose status Matrix does not show yet.
    pub matrix_backlog: IntGauge,
    /// Prekeys handed out by `POST /prekeys/claim`, by kind (`one_time`, `last_resort`), and
    /// claims that found none (`none`).
    pub prekey_claims: IntCounterVec,
    /// OpenID token lookups sent to the homeserver, by outcome (`ok`, `refused`, `failed`).
    pub openid_lookups: IntCounterVec,
    /// Matrix invites by decision (`joined`, `declined_remote`, `declined_room_cap`,
    /// `failed`).
    pub invites: IntCounterVec,
    /// 1 while this server leads the servers of its oracle (runs the bot's single-writer
    /// duties), 0 otherwise.
    pub leader: IntGauge,
    /// How calls got their agent, by path (`direct`, `livekit`, `declined`, `fallback`).
    pub dispatches: IntCounterVec,
}

impl Metrics {
    /// A fresh registry with every metric registered.
    ///
    /// # Errors
    /// [`Error::Internal`] if registration fails (a bug).
    pub fn new() -> Result<Self> {
        let bug = |e: prometheus::Error| Error::Internal(format!("metrics: {e}"));
        let registry = Registry::new_custom(Some("oracle_calls".into()), None).map_err(bug)?;
        let http_requests = IntCounterVec::new(
            Opts::new(
                "http_requests_total",
                "HTTP requests by route, method and status",
            ),
            &["route", "method", "status"],
        )
        .map_err(bug)?;
        let http_latency = HistogramVec::new(
            HistogramOpts::new("http_request_duration_seconds", "HTTP request latency").buckets(
                vec![
                    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1.0, 5.0,
                ],
            ),
            &["route"],
        )
        .map_err(bug)?;
        let calls = IntCounterVec::new(
            Opts::new("call_events_total", "call lifecycle events"),
            &["event"],
        )
        .map_err(bug)?;
        registry
            .register(Box::new(http_requests.clone()))
            .map_err(bug)?;
        registry
            .register(Box::new(http_latency.clone()))
            .map_err(bug)?;
        let matrix_writes = IntCounterVec::new(
            Opts::new(
                "matrix_writes_total",
                "status edits written to Matrix, by outcome (ok, retry, failed; left_to_user: a hang-up's `ended` edit left to the user's client)",
            ),
            &["outcome"],
        )
        .map_err(bug)?;
        let matrix_backlog = IntGauge::new(
            "matrix_unmirrored_calls",
            "calls whose status Matrix does not show yet",
        )
        .map_err(bug)?;
        let prekey_claims = IntCounterVec::new(
            Opts::new(
                "prekey_claims_total",
                "prekeys handed out, by kind (one_time, last_resort), and claims that found none",
            ),
            &["kind"],
        )
        .map_err(bug)?;
        let openid_lookups = IntCounterVec::new(
            Opts::new(
                "openid_lookups_total",
                "OpenID token lookups sent to the homeserver, by outcome (ok, refused, failed)",
            ),
            &["outcome"],
        )
        .map_err(bug)?;
        let invites = IntCounterVec::new(
            Opts::new(
                "matrix_invites_total",
                "Matrix invites to the bot, by decision (joined, declined_remote, \
                 declined_room_cap, failed)",
            ),
            &["decision"],
        )
        .map_err(bug)?;
        registry
            .register(Box::new(openid_lookups.clone()))
            .map_err(bug)?;
        registry.register(Box::new(invites.clone())).map_err(bug)?;
        let leader = IntGauge::new(
            "leader",
            "1 while this server leads its oracle's servers (the bot's single-writer duties)",
        )
        .map_err(bug)?;
        leader.set(1);
        registry.register(Box::new(leader.clone())).map_err(bug)?;
        let dispatches = IntCounterVec::new(
            Opts::new(
                "agent_dispatches_total",
                "how activated calls got their agent: direct (handed to an agent waiting at this \
                 server), livekit (LiveKit's dispatch), declined (LiveKit's after the agent \
                 declined a hand-off), fallback (LiveKit's after no agent joined in time)",
            ),
            &["path"],
        )
        .map_err(bug)?;
        registry
            .register(Box::new(dispatches.clone()))
            .map_err(bug)?;
        registry.register(Box::new(calls.clone())).map_err(bug)?;
        registry
            .register(Box::new(prekey_claims.clone()))
            .map_err(bug)?;
        registry
            .register(Box::new(matrix_writes.clone()))
            .map_err(bug)?;
        registry
            .register(Box::new(matrix_backlog.clone()))
            .map_err(bug)?;
        Ok(Self {
            registry,
            http_requests,
            http_latency,
            calls,
            matrix_writes,
            matrix_backlog,
            prekey_claims,
            openid_lookups,
            invites,
            leader,
            dispatches,
        })
    }

    /// Counts one call event.
    pub fn call_event(&self, event: &str) {
        self.calls.with_label_values(&[event]).inc();
    }

    /// Counts how one call got its agent (a fixed label set: see [`Metrics::dispatches`]).
    pub fn dispatch(&self, path: &'static str) {
        self.dispatches.with_label_values(&[path]).inc();
    }

    /// Counts one Matrix write attempt's outcome.
    pub fn matrix_write(&self, outcome: &str) {
        self.matrix_writes.with_label_values(&[outcome]).inc();
    }

    /// Counts one prekey claim by the kind handed out (`one_time`, `last_resort`, `none`).
    pub fn prekey_claim(&self, kind: &str) {
        self.prekey_claims.with_label_values(&[kind]).inc();
    }

    /// The Prometheus text exposition.
    pub fn render(&self) -> String {
        let mut buf = Vec::new();
        // Encoding into a Vec cannot fail for well-formed metrics.
        let _ = TextEncoder::new().encode(&self.registry.gather(), &mut buf);
        String::from_utf8(buf).unwrap_or_default()
    }
}

//! The shared state of the HTTP handlers.

use std::sync::Arc;
use std::time::Duration;

use oracle_calls_proto::Timestamp;

use crate::auth::OpenIdVerifier;
use crate::config::{Config, Secrets};
use crate::livekit::LiveKit;
use crate::metrics::Metrics;
use crate::store::Store;
use crate::{Error, Result, Secret};

/// Cheap to clone: an `Arc` around everything the handlers share.
#[derive(Clone, Debug)]
pub struct AppState(Arc<Inner>);

/// See [`AppState::downgrade`].
#[derive(Clone, Debug)]
pub(crate) struct WeakState(std::sync::Weak<Inner>);

impl WeakState {
    /// The state, while anything else still holds it.
    pub(crate) fn upgrade(&self) -> Option<AppState> {
        self.0.upgrade().map(AppState)
    }

    /// Runs `tick` on the state every `every(state)` while the state lives and `every` gives a
    /// period (`None` ends the task, at once where it gives none at the start). The task holds
    /// the state only during a tick, so it never keeps a dropped server alive. Outside a Tokio
    /// runtime nothing runs.
    pub(crate) fn every<F, Fut>(self, every: fn(&AppState) -> Option<Duration>, tick: F)
    where
        F: Fn(AppState) -> Fut + Send + 'static,
        Fut: std::future::Future<Output = ()> + Send,
    {
        let Ok(rt) = tokio::runtime::Handle::try_current() else {
            return;
        };
        rt.spawn(async move {
            loop {
                let Some(period) = self.upgrade().as_ref().and_then(every) else {
                    return;
                };
                tokio::time::sleep(period).await;
                let Some(s) = self.upgrade() else { return };
                tick(s).await;
            }
        });
    }
}

#[derive(Debug)]
struct Inner {
    config: Config,
    secrets: Secrets,
    store: Store,
    openid: OpenIdVerifier,
    livekit: LiveKit,
    metrics: Metrics,
    matrix: Option<crate::matrix::Bot>,
    user_bindings: std::collections::HashMap<String, String>,
    webhooks: tokio::sync::broadcast::Sender<crate::livekit::WebhookEvent>,
    webhook_ids: crate::replay::SeenWebhooks,
    key_cache: crate::apikey::KeyCache,
    audit: crate::audit::AuditLog,
    limits: crate::limits::Limits,
    direct: crate::direct::DirectDispatch,
    /// Set once by [`crate::build_state`] on PostgreSQL; unset, the server leads alone.
    leadership: std::sync::OnceLock<crate::leader::Leadership>,
}

impl AppState {
    /// Builds the state. `matrix` is the oracle's bot device, when Matrix is enabled.
    ///
    /// # Errors
    /// [`Error::Config`].
    pub fn new(
        config: Config,
        secrets: Secrets,
        store: Store,
        matrix: Option<crate::matrix::Bot>,
    ) -> Result<Self> {
        let http = reqwest::Client::builder()
            .timeout(Duration::from_secs(config.matrix.request_timeout_secs))
            .connect_timeout(Duration::from_secs(
                config.matrix.request_timeout_secs.min(5),
            ))
            .build()
            .map_err(|e| Error::Config(format!("HTTP client: {e}")))?;
        let metrics = Metrics::new()?;
        let openid = OpenIdVerifier::new(
            http,
            &config.matrix.homeserver_url,
            &config.matrix.server_name,
            Duration::from_secs(config.matrix.openid_cache_secs),
            metrics.openid_lookups.clone(),
        );
        let limits =
            crate::limits::Limits::new(&config.limits).shared_through(&store, &config.oracle.did);
        let user_bindings = match &config.validation.user_binding_file {
            Some(path) => {
                let text = std::fs::read_to_string(path)
                    .map_err(|e| Error::Config(format!("{}: {e}", path.display())))?;
                toml::from_str(&text)
                    .map_err(|e| Error::Config(format!("{}: {e}", path.display())))?
            }
            None => std::collections::HashMap::new(),
        };
        let livekit = LiveKit::new(config.livekit.clone(), secrets.livekit_api_secret.clone())?;
        let key_cache =
            crate::apikey::KeyCache::new(Duration::from_secs(config.api_key_cache_secs));
        let audit = crate::audit::AuditLog::new(store.clone());
        let state = Self(Arc::new(Inner {
            config,
            secrets,
            store,
            key_cache,
            audit,
            openid,
            livekit,
            metrics,
            limits,
            direct: crate::direct::DirectDispatch::default(),
            matrix,
            user_bindings,
            webhooks: tokio::sync::broadcast::channel(64).0,
            webhook_ids: crate::replay::SeenWebhooks::default(),
            leadership: std::sync::OnceLock::new(),
        }));
        crate::claims::spawn_sweeper(state.downgrade());
        crate::limits::spawn_shared_sweeper(state.downgrade());
        Ok(state)
    }

    /// A handle that does not keep the state alive (for background loops that end with it).
    pub(crate) fn downgrade(&self) -> WeakState {
        WeakState(Arc::downgrade(&self.0))
    }

    /// The configuration.
    pub fn config(&self) -> &Config {
        &self.0.config
    }
    /// The store.
    pub fn store(&self) -> &Store {
        &self.0.store
    }
    /// The OpenID verifier.
    pub fn openid(&self) -> &OpenIdVerifier {
        &self.0.openid
    }
    /// LiveKit.
    pub fn livekit(&self) -> &LiveKit {
        &self.0.livekit
    }
    /// Metrics.
    pub fn metrics(&self) -> &Metrics {
        &self.0.metrics
    }
    /// The oracle's Matrix bot, when enabled.
    pub fn matrix(&self) -> Option<&crate::matrix::Bot> {
        self.0.matrix.as_ref()
    }
    /// Verified LiveKit webhooks as they arrive (for observers such as tests).
    pub fn subscribe_webhooks(
        &self,
    ) -> tokio::sync::broadcast::Receiver<crate::livekit::WebhookEvent> {
        self.0.webhooks.subscribe()
    }
    pub(crate) fn webhook_seen(&self, ev: &crate::livekit::WebhookEvent) {
        // Nobody listening is fine.
        let _ = self.0.webhooks.send(ev.clone());
    }
    /// Whether this server leads the servers of its oracle (see [`crate::leader`]).
    pub fn leadership(&self) -> crate::leader::Leadership {
        self.0
            .leadership
            .get()
            .cloned()
            .unwrap_or_else(crate::leader::Leadership::alone)
    }
    /// True while this server leads.
    pub fn is_leader(&self) -> bool {
        self.0
            .leadership
            .get()
            .is_none_or(crate::leader::Leadership::is_leader)
    }
    pub(crate) fn set_leadership(&self, leadership: crate::leader::Leadership) {
        let _ = self.0.leadership.set(leadership);
    }
    pub(crate) fn webhook_ids(&self) -> &crate::replay::SeenWebhooks {
        &self.0.webhook_ids
    }
    pub(crate) fn user_bindings(&self) -> &std::collections::HashMap<String, String> {
        &self.0.user_bindings
    }
    pub(crate) fn key_cache(&self) -> &crate::apikey::KeyCache {
        &self.0.key_cache
    }
    pub(crate) fn audit(&self) -> &crate::audit::AuditLog {
        &self.0.audit
    }

    /// The agents waiting here for a call, and the calls handed to them.
    pub fn direct(&self) -> &crate::direct::DirectDispatch {
        &self.0.direct
    }
    pub(crate) fn limits(&self) -> &crate::limits::Limits {
        &self.0.limits
    }
    pub(crate) fn pepper(&self) -> &Secret {
        &self.0.secrets.api_key_pepper
    }
}

/// Now, from the system clock.
pub fn now() -> Timestamp {
    let ms = time::OffsetDateTime::now_utc().unix_timestamp_nanos() / 1_000_000;
    i64::try_from(ms)
        .ok()
        .and_then(|ms| Timestamp::from_unix_millis(ms).ok())
        .unwrap_or_else(|| unreachable!("the system clock is within ±9999 years"))
}

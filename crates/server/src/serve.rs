//! Running the server: state, listener, graceful shutdown.

use std::future::Future;
use std::net::SocketAddr;

use tokio::net::TcpListener;
use tracing::info;

use crate::config::{Config, Secrets};
use crate::leader::Leadership;
use crate::store::{Backend, Store};
use crate::{AppState, Error, Result, router};

/// Opens the store (running migrations), starts the oracle's Matrix bot, and builds the state.
///
/// # Errors
/// [`Error::Config`], [`Error::Store`], Matrix errors.
pub async fn build_state(config: Config, secrets: Secrets) -> Result<AppState> {
    std::fs::create_dir_all(&config.data_dir)
        .map_err(|e| Error::Config(format!("creating data_dir: {e}")))?;
    let url = config.store_url(&secrets)?;
    let store = Store::connect_waiting(url.dangerous_expose(), config.store_wait()).await?;
    info!(backend = ?store.backend(), "store ready");
    let bot = crate::matrix::Bot::start(&config, &secrets).await?;
    // The well-known lists every server's device: register this one.
    if let Some(device) = bot.device() {
        store
            .register_bot_device(
                &config.oracle.did,
                &config.matrix.user_id,
                device,
                crate::now().unix_millis(),
            )
            .await?;
    }
    let (oracle, cluster) = (config.oracle.did.clone(), config.cluster.clone());
    let state = AppState::new(config, secrets, store, Some(bot.clone()))?;
    // On PostgreSQL several servers may share the oracle: one of them leads.
    if state.store().backend() == Backend::Postgres {
        state.set_leadership(Leadership::elect(
            url,
            &oracle,
            &cluster,
            state.metrics().leader.clone(),
        ));
    }
    bot.attach(state.clone());
    Ok(state)
}

/// Serves the API on the configured address until `shutdown` resolves.
///
/// # Errors
/// As [`build_state`], or when the address cannot be bound.
pub async fn serve(
    config: Config,
    secrets: Secrets,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<()> {
    let listener = TcpListener::bind(config.listen)
        .await
        .map_err(|e| Error::Config(format!("binding {}: {e}", config.listen)))?;
    let state = build_state(config, secrets).await?;
    serve_on(listener, state, shutdown).await
}

/// Serves the API for `state` on `listener` until `shutdown` resolves, then stops the Matrix
/// loop and lets requests in flight finish.
///
/// # Errors
/// [`Error::Internal`] when the listener fails.
pub async fn serve_on(
    listener: TcpListener,
    state: AppState,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<()> {
    let addr = listener
        .local_addr()
        .map_err(|e| Error::Internal(e.to_string()))?;
    info!(%addr, "listening");
    let app = router(state.clone()).into_make_service_with_connect_info::<SocketAddr>();
    axum::serve(listener, app)
        .with_graceful_shutdown(shutdown)
        .await
        .map_err(|e| Error::Internal(format!("serving: {e}")))?;
    if let Some(bot) = state.matrix() {
        bot.stop();
    }
    state.leadership().stop();
    info!("stopped");
    Ok(())
}

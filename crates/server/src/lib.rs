//! The oracle-calls server: the "AI Oracle backend" of DESIGN.md §3.
//!
//! It fronts one oracle: it runs the oracle's Matrix bot device, validates call events at
//! `POST /calls/{callId}/sync`, keeps an index of calls (SQLite or PostgreSQL), creates LiveKit
//! rooms with the oracle's agent dispatched, hands the agent the still-wrapped call key, and
//! follows calls to their end through the API, Matrix edits and LiveKit webhooks.
//!
//! It never links `oracle-calls-crypto`: it cannot open a call key.
//!
//! ```no_run
//! # async fn run() -> Result<(), oracle_calls_server::Error> {
//! use oracle_calls_server::{Config, Secrets};
//!
//! let config = Config::from_toml(&std::fs::read_to_string("oracle-calls.toml").unwrap_or_default())?;
//! let secrets = Secrets::from_env(|k| std::env::var(k).ok())?;
//! oracle_calls_server::serve(config, secrets, std::future::pending()).await
//! # }
//! ```
#![recursion_limit = "256"]

pub mod apikey;
mod audit;
mod auth;
mod cache;
mod calls;
pub mod claims;
pub mod config;
pub mod direct;
mod error;
mod http;
mod jwt;
pub mod leader;
mod limits;
pub mod livekit;
pub mod matrix;
mod metrics;
mod reindex;
mod replay;
mod secret;
mod serve;
mod state;
pub mod store;
mod sync;

pub use auth::{Agent, Caller, OpenIdVerifier, User, bearer_token_well_formed, openid_userinfo};
pub use config::{Config, Secrets};
pub use error::{Error, Result};
pub use http::{ApiDoc, router};
pub use limits::ClientAddr;
pub use reindex::{ReindexReport, reindex};
pub use secret::Secret;
pub use serve::{build_state, serve, serve_on};
pub use state::{AppState, now};

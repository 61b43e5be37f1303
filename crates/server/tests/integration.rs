//! Integration tests against the project's real stack (Synapse, livekit-server, PostgreSQL):
//! start it with `scripts/stack up`. Every store-touching test runs on SQLite and PostgreSQL.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing,
    missing_debug_implementations
)]
#![recursion_limit = "256"]

#[path = "integration/api.rs"]
mod api;
#[path = "integration/claims.rs"]
mod claims;
#[path = "integration/cluster.rs"]
mod cluster;
#[path = "integration/cors.rs"]
mod cors;
#[path = "integration/direct.rs"]
mod direct;
#[path = "integration/freshness.rs"]
mod freshness;
#[path = "integration/hygiene.rs"]
mod hygiene;
#[path = "integration/limits.rs"]
mod limits;
#[path = "integration/livekit.rs"]
mod livekit;
#[path = "integration/matrix.rs"]
mod matrix;
#[path = "integration/prekeys.rs"]
mod prekeys;
#[path = "integration/resilience.rs"]
mod resilience;
#[path = "integration/rooms.rs"]
mod rooms;
#[path = "integration/schema.rs"]
mod schema;
#[path = "integration/support.rs"]
mod support;
#[path = "integration/upgrade.rs"]
mod upgrade;

//! Library side of the lab (`oracle-lab`): local deployments on the stack (what `demo`, the
//! end-to-end tests and the benchmarks run), audio analysis, speech synthesis, the demo's
//! verification checks and the browser demo's web server.

pub mod analysis;
pub mod bench_browser;
pub mod bench_speech;
pub mod local;
pub mod local_kt;
pub mod speech;
pub mod speech_local;
pub mod topology;
pub mod verify;
pub mod web;

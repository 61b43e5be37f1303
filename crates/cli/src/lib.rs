//! Library side of the `oracle-calls` binary: a local deployment on the stack (what `demo`,
//! the end-to-end tests and `bench setup` run), audio analysis, speech synthesis and WAV files.

pub mod analysis;
pub mod bench_browser;
pub mod bench_speech;
pub mod ivf;
pub mod keyfile;
pub mod local;
pub mod local_kt;
pub mod speech;
pub mod speech_local;
pub mod verify;
pub mod wav;
pub mod web;

//! Library side of the `oracle-calls` binary: the product's commands (what `oracle-calls` and
//! the lab's processes run), oracle key files, IVF video and WAV files, and the microphone and
//! speaker side of person-to-person calls (`call_audio`).

mod agent_cmd;
mod apikey;
pub mod call_audio;
mod call_cmd;
pub mod cli;
mod direct_cmd;
pub mod ivf;
pub mod keyfile;
mod kt_cmd;
mod serve;
pub mod wav;

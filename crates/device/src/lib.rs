//! The computer's microphone and speaker for person-to-person calls, through cpal: a
//! [`Microphone`] that yields 20 ms frames of 48 kHz mono 16-bit PCM and a [`Speaker`] that
//! plays them through a bounded playout buffer, whatever rate and channel count the devices
//! have. This is the IO edge of call audio; the frames themselves, Opus and the tone tools
//! are `oracle-calls-media`'s.
//!
//! On Linux the default host is PulseAudio (cpal's own client, no libpulse) when a server
//! is reachable, ALSA otherwise. Machines without a sound card (CI) run a private PulseAudio
//! with null devices: `scripts/pulse up DIR`.
//!
//! ```no_run
//! use std::time::Duration;
//! use oracle_calls_device::{DeviceChoice, Microphone, PlayoutConfig, Speaker};
//!
//! // Hear yourself: microphone to speaker, one 20 ms frame at a time.
//! let mic = Microphone::open(&DeviceChoice::default())?;
//! let speaker = Speaker::open(&DeviceChoice::default(), PlayoutConfig::default())?;
//! for _ in 0..250 {
//!     if let Some(frame) = mic.next_frame(Duration::from_millis(100)) {
//!         speaker.play(&frame);
//!     }
//! }
//! # Ok::<(), oracle_calls_device::Error>(())
//! ```
#![deny(missing_docs)]

mod convert;
mod error;
mod host;
pub mod latency;
mod microphone;
mod playout;
mod speaker;
mod stream_errors;

pub use error::{Direction, Error};
pub use host::{AudioHost, DeviceChoice, StreamInfo, device_names};
pub use microphone::{Microphone, MicrophoneStats};
pub use playout::{PlayoutConfig, PlayoutStats};
pub use speaker::{Speaker, SpeakerStats};

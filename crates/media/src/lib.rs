//! Audio that the LiveKit client (`oracle-calls-rtc`) and direct person-to-person calls share:
//! 20 ms PCM frames at 48 kHz mono, the Opus encoder and decoder set up the one way every call
//! uses them, a tone generator, a Goertzel tone detector and the RFC 6464 audio level.
//!
//! No IO, no clock: every function works on the samples and packets it is given.
//!
//! ```
//! use oracle_calls_media::{AUDIO_FRAME_SAMPLES, OpusDecoder, OpusEncoder, goertzel_power, sine_tone};
//! let mut enc = OpusEncoder::new(None)?;
//! let mut dec = OpusDecoder::new()?;
//! let mut heard = Vec::new();
//! for i in 0..25 {
//!     let pcm = sine_tone(440.0, 8000.0, i * AUDIO_FRAME_SAMPLES as u64, AUDIO_FRAME_SAMPLES);
//!     heard.extend(dec.decode(&enc.encode(&pcm)?)?);
//! }
//! assert!(goertzel_power(&heard[heard.len() / 2..], 440.0) > 0.5);
//! # Ok::<(), oracle_calls_media::Error>(())
//! ```
#![deny(missing_docs)]

mod codec;
mod pcm;

pub use codec::{Error, OpusDecoder, OpusEncoder};
pub use pcm::{AUDIO_FRAME_SAMPLES, SAMPLE_RATE, goertzel_power, level_dbov, sine_tone};

//! A pure-Rust LiveKit client on [str0m] with LiveKit-compatible end-to-end encryption.
//!
//! No libwebrtc: signaling is LiveKit's protobuf-over-WebSocket protocol (v0, two peer
//! connections), media runs through str0m, and every encoded frame is encrypted with the
//! [`oracle_calls_crypto::frame`] cryptor before it is packetized, so the SFU only ever
//! forwards ciphertext.
//!
//! ```no_run
//! # async fn run() -> Result<(), oracle_calls_rtc::Error> {
//! use oracle_calls_rtc::{Room, RoomEvent, RoomOptions};
//! let (room, mut events) = Room::connect("ws://127.0.0.1:17880", "<token>", RoomOptions::default()).await?;
//! let mic = room.publish_audio("microphone").await?;
//! mic.push_pcm(&[0i16; 960]).await?;
//! while let Some(ev) = events.recv().await {
//!     if let RoomEvent::AudioFrame { identity, pcm, .. } = ev {
//!         println!("{identity}: {} samples", pcm.len());
//!     }
//! }
//! room.leave().await;
//! # Ok(()) }
//! ```
#![deny(missing_docs)]

mod core;
mod engine;
mod error;
mod room;
mod signal;
pub use signal::{Ws, open_websocket};
pub mod token;

pub use error::Error;
pub use oracle_calls_media::{AUDIO_FRAME_SAMPLES, SAMPLE_RATE, goertzel_power, sine_tone};
pub use room::{
    AudioSource, E2eeOptions, FreshToken, Present, ReconnectPolicy, Room, RoomEvent, RoomOptions,
    TokenError, TokenFuture, TokenSource, VideoSource,
};

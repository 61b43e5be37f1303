//! The speaking oracle: voice activity detection → speech-to-text → brain → text-to-speech,
//! with turn-taking and barge-in, inside an end-to-end encrypted call.
#![deny(missing_docs)]

pub mod audio;
pub mod config;
pub mod engine;
pub mod error;
pub mod espeak;
pub mod flite;
pub mod knowledge;
pub mod openai;
pub mod session;
pub mod text;
pub mod turn;
pub mod vad;
pub mod wav;

pub use engine::{
    AudioStream, Brain, Message, Pcm, Role, SpeechToText, TextStream, TextToSpeech, Transcription,
    Vad,
};
pub use error::{ConfigError, EngineError, Stage};
pub use openai::{ApiKey, OpenAiBrain, OpenAiEndpoint, OpenAiStt, OpenAiTts};

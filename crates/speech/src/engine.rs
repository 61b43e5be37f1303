//! The four engines a speaking oracle is built from, as traits.
//!
//! Each is object-safe (the oracle picks engines by configuration) and streams where an engine
//! can: a transcription takes audio while the user is still speaking, the brain's answer arrives
//! as text deltas, and speech arrives as PCM chunks. Dropping a stream cancels the work behind
//! it (the HTTP request is closed, the process killed).

use async_trait::async_trait;
use futures_util::stream::BoxStream;

use crate::error::EngineError;

/// Mono 16-bit PCM at a sample rate.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Pcm {
    /// Samples per second.
    pub rate: u32,
    /// The samples.
    pub samples: Vec<i16>,
}

/// A voice activity detector over 16 kHz mono audio. One per call (it keeps state).
pub trait Vad: Send {
    /// How many 16 kHz samples one [`predict`](Vad::predict) takes.
    fn frame_samples(&self) -> usize;
    /// The probability, 0..=1, that the frame holds speech.
    fn predict(&mut self, frame: &[i16]) -> f32;
    /// Forgets the audio heard so far.
    fn reset(&mut self);
}

/// Speech-to-text.
pub trait SpeechToText: Send + Sync {
    /// Opens the transcription of one utterance.
    fn start(&self) -> Box<dyn Transcription>;
}

/// The transcription of one utterance: audio goes in while the user speaks, the text comes
/// out at the end. A streaming engine works as audio arrives; a batch engine (Whisper) keeps
/// it for [`finish`](Transcription::finish).
#[async_trait]
pub trait Transcription: Send {
    /// More of the utterance, 16 kHz mono.
    fn push(&mut self, pcm16k: &[i16]);
    /// The utterance is over: its text (empty when nothing was said).
    async fn finish(self: Box<Self>) -> Result<String, EngineError>;
}

/// Who said a line of the conversation.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    /// Instructions to the brain.
    System,
    /// The person in the call.
    User,
    /// The oracle.
    Assistant,
}

/// One line of the conversation.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
pub struct Message {
    /// Who said it.
    pub role: Role,
    /// What was said (for the oracle: what was actually spoken, not what was planned).
    pub content: String,
}

impl Message {
    /// A line of the person's.
    pub fn user(content: impl Into<String>) -> Self {
        Self {
            role: Role::User,
            content: content.into(),
        }
    }
    /// A line of the oracle's.
    pub fn assistant(content: impl Into<String>) -> Self {
        Self {
            role: Role::Assistant,
            content: content.into(),
        }
    }
    /// Instructions.
    pub fn system(content: impl Into<String>) -> Self {
        Self {
            role: Role::System,
            content: content.into(),
        }
    }
}

/// The brain's answer as it is generated: pieces of text, in order.
pub type TextStream = BoxStream<'static, Result<String, EngineError>>;

/// The brain: given the conversation so far (the last line is the person's), answers.
#[async_trait]
pub trait Brain: Send + Sync {
    /// Starts answering. The first piece may come before the answer is complete.
    async fn answer(&self, conversation: Vec<Message>) -> Result<TextStream, EngineError>;
}

/// Speech as it is synthesized: PCM chunks, in order, all at one rate.
pub type AudioStream = BoxStream<'static, Result<Pcm, EngineError>>;

/// Text-to-speech.
#[async_trait]
pub trait TextToSpeech: Send + Sync {
    /// Speaks `text` (one sentence or a few).
    async fn synthesize(&self, text: &str) -> Result<AudioStream, EngineError>;
}

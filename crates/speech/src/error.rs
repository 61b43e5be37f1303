//! Why an engine did not deliver.

use std::fmt;
use std::time::Duration;

/// The stage of a turn an engine serves.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Stage {
    /// Voice activity detection.
    Vad,
    /// Speech-to-text.
    SpeechToText,
    /// The brain (a language model or any answerer).
    Brain,
    /// Text-to-speech.
    TextToSpeech,
}

impl fmt::Display for Stage {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::Vad => "vad",
            Self::SpeechToText => "speech-to-text",
            Self::Brain => "brain",
            Self::TextToSpeech => "text-to-speech",
        })
    }
}

/// Why an engine failed. Every variant says enough for a person to act on it; none carries
/// audio, the user's words or a secret.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum EngineError {
    /// The engine did not answer in time.
    #[error("{stage} timed out after {}", fmt_duration(*.after))]
    Timeout {
        /// Which engine.
        stage: Stage,
        /// The deadline that passed.
        after: Duration,
    },
    /// An HTTP engine answered with an error status.
    #[error("{stage}: the server answered {status}: {message}")]
    Http {
        /// Which engine.
        stage: Stage,
        /// The HTTP status.
        status: u16,
        /// The server's reason (its `error.message`, or the start of the body), cut short.
        message: String,
    },
    /// The engine could not be reached, or the connection broke (also mid-stream).
    #[error("{stage}: {reason}")]
    Connection {
        /// Which engine.
        stage: Stage,
        /// What happened.
        reason: String,
    },
    /// The engine answered something that is not what its protocol says.
    #[error("{stage}: malformed answer: {reason}")]
    Malformed {
        /// Which engine.
        stage: Stage,
        /// What was wrong.
        reason: String,
    },
    /// A local engine process failed (could not start, exited with an error, was killed).
    #[error("{stage}: {reason}")]
    Process {
        /// Which engine.
        stage: Stage,
        /// What happened.
        reason: String,
    },
}

impl EngineError {
    /// The stage that failed.
    pub fn stage(&self) -> Stage {
        match self {
            Self::Timeout { stage, .. }
            | Self::Http { stage, .. }
            | Self::Connection { stage, .. }
            | Self::Malformed { stage, .. }
            | Self::Process { stage, .. } => *stage,
        }
    }
}

fn fmt_duration(d: Duration) -> String {
    if d.as_secs() >= 1 && d.subsec_millis() == 0 {
        format!("{} s", d.as_secs())
    } else {
        format!("{} ms", d.as_millis())
    }
}

/// A configuration the speech oracle cannot run with.
#[derive(Debug, thiserror::Error)]
#[error("speech configuration: {0}")]
pub struct ConfigError(pub String);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn errors_name_their_stage_and_cause() {
        let e = EngineError::Timeout {
            stage: Stage::Brain,
            after: Duration::from_secs(8),
        };
        assert_eq!(e.to_string(), "brain timed out after 8 s");
        assert_eq!(e.stage(), Stage::Brain);
        let e = EngineError::Http {
            stage: Stage::SpeechToText,
            status: 503,
            message: "model loading".into(),
        };
        assert_eq!(
            e.to_string(),
            "speech-to-text: the server answered 503: model loading"
        );
        let e = EngineError::Timeout {
            stage: Stage::TextToSpeech,
            after: Duration::from_millis(1500),
        };
        assert_eq!(e.to_string(), "text-to-speech timed out after 1500 ms");
    }
}

//! Text-to-speech with `flite` (CMU Flite, BSD-style licence), run as a separate program.
//! The text goes in on stdin, never on the command line. Flite cannot write its WAV to a
//! pipe (it seeks back to its header), so each sentence is written to a private temporary
//! file, read whole and removed; a dropped request kills the process and removes the file.
//! Flite is fast (a sentence in well under 100 ms here), so the whole-sentence wait is short.

use std::path::PathBuf;
use std::process::Stdio;
use std::sync::atomic::{AtomicU64, Ordering};

use async_trait::async_trait;
use futures_util::StreamExt;
use tokio::io::AsyncReadExt;
use tokio::process::Command;

use crate::engine::{AudioStream, Pcm, TextToSpeech};
use crate::error::{ConfigError, EngineError, Stage};
use crate::espeak::{process_error, start_speaking};
use crate::wav;

/// Samples per chunk handed on (0.1 s at flite's 16 kHz).
const CHUNK: usize = 1600;

static NEXT: AtomicU64 = AtomicU64::new(0);

/// `flite` as a text-to-speech engine.
#[derive(Clone, Debug)]
pub struct FliteTts {
    program: PathBuf,
    voice: String,
}

impl FliteTts {
    /// `program` (e.g. `flite`) and one of the voices Flite 2.2 has built in (`slt`, `awb`,
    /// `rms`, `kal16`, `kal`): flite itself falls back to another voice, without a word, when
    /// given a name it does not know.
    ///
    /// # Errors
    /// Another voice name.
    pub fn new(program: impl Into<PathBuf>, voice: &str) -> Result<Self, ConfigError> {
        const VOICES: [&str; 5] = ["slt", "awb", "rms", "kal16", "kal"];
        if !VOICES.contains(&voice) {
            return Err(ConfigError(format!(
                "flite voice {voice:?} is not one of its built-in voices: {}",
                VOICES.join(", ")
            )));
        }
        Ok(Self {
            program: program.into(),
            voice: voice.to_owned(),
        })
    }
}

/// Removes the file when dropped (also when the request is cancelled).
struct TempWav(PathBuf);

impl Drop for TempWav {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

#[async_trait]
impl TextToSpeech for FliteTts {
    async fn synthesize(&self, text: &str) -> Result<AudioStream, EngineError> {
        let out = TempWav(std::env::temp_dir().join(format!(
            "oc-flite-{}-{}.wav",
            std::process::id(),
            NEXT.fetch_add(1, Ordering::Relaxed)
        )));
        let mut cmd = Command::new(&self.program);
        cmd.arg("-voice")
            .arg(&self.voice)
            .arg("-o")
            .arg(&out.0)
            .stdout(Stdio::null());
        let mut child = start_speaking(cmd, text, "flite").await?;
        let status = child
            .wait()
            .await
            .map_err(|e| process_error(format!("flite: {e}")))?;
        if !status.success() {
            let mut err = String::new();
            if let Some(mut e) = child.stderr.take() {
                let _ = e.read_to_string(&mut err).await;
            }
            return Err(process_error(format!(
                "flite failed ({status}): {}",
                err.trim().chars().take(200).collect::<String>()
            )));
        }
        let bytes = tokio::fs::read(&out.0)
            .await
            .map_err(|e| process_error(format!("flite wrote no audio: {e}")))?;
        drop(out);
        let pcm = wav::decode(&bytes).map_err(|e| EngineError::Malformed {
            stage: Stage::TextToSpeech,
            reason: e.to_string(),
        })?;
        if pcm.samples.is_empty() {
            return Err(process_error("flite wrote no audio".into()));
        }
        let rate = pcm.rate;
        let chunks: Vec<Result<Pcm, EngineError>> = pcm
            .samples
            .chunks(CHUNK)
            .map(|c| {
                Ok(Pcm {
                    rate,
                    samples: c.to_vec(),
                })
            })
            .collect();
        Ok(futures_util::stream::iter(chunks).boxed())
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use crate::audio::rms;

    #[tokio::test]
    async fn flite_speaks_and_leaves_no_file() {
        let tts = FliteTts::new("flite", "slt").unwrap();
        let before = NEXT.load(Ordering::Relaxed);
        let mut s = tts
            .synthesize("The capital of France is Paris.")
            .await
            .unwrap();
        let mut all = Vec::new();
        while let Some(p) = s.next().await {
            let p = p.unwrap();
            assert_eq!(p.rate, 16_000);
            all.extend(p.samples);
        }
        let secs = all.len() as f64 / 16_000.0;
        assert!((1.0..5.0).contains(&secs), "{secs} s");
        assert!(rms(&all) > 0.02);
        let left =
            std::env::temp_dir().join(format!("oc-flite-{}-{before}.wav", std::process::id()));
        assert!(!left.exists());
    }

    #[tokio::test]
    async fn a_missing_program_or_voice_is_an_error() {
        let e = FliteTts::new("/nonexistent/flite", "slt")
            .unwrap()
            .synthesize("hi")
            .await
            .err()
            .unwrap();
        assert!(matches!(e, EngineError::Process { .. }), "{e}");
        let e = FliteTts::new("flite", "nosuchvoice").unwrap_err();
        assert!(e.0.contains("slt, awb"), "{e}");
        assert!(FliteTts::new("flite", "slt;rm").is_err());
        assert!(FliteTts::new("flite", "").is_err());
    }
}

//! Text-to-speech with `espeak-ng`, run as a separate program (it is GPL-3.0-or-later; this
//! crate never links it). The text goes in on stdin, never on the command line; the WAV comes
//! back on stdout and is passed on in pieces as it arrives. Dropping the stream kills the
//! process.

use std::path::PathBuf;
use std::process::Stdio;

use async_trait::async_trait;
use futures_util::StreamExt;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::process::{Child, ChildStdout, Command};

use crate::engine::{AudioStream, Pcm, TextToSpeech};
use crate::error::{ConfigError, EngineError, Stage};
use crate::wav::WavReader;

/// The longest text one call to espeak-ng speaks.
pub(crate) const MAX_TEXT: usize = 4096;

/// `espeak-ng` as a text-to-speech engine.
#[derive(Clone, Debug)]
pub struct EspeakTts {
    program: PathBuf,
    voice: String,
    words_per_minute: u32,
}

impl EspeakTts {
    /// `program` (e.g. `espeak-ng`, found on `PATH`), a voice such as `en-us` or `en-gb+f3`,
    /// and the speed in words per minute (80..=450).
    ///
    /// # Errors
    /// A voice name with characters other than letters, digits, `+`, `_`, `-`, or a speed out
    /// of range.
    pub fn new(
        program: impl Into<PathBuf>,
        voice: &str,
        words_per_minute: u32,
    ) -> Result<Self, ConfigError> {
        if voice.is_empty()
            || voice.len() > 64
            || !voice
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, '+' | '_' | '-'))
        {
            return Err(ConfigError(format!(
                "espeak-ng voice {voice:?} is not a voice name"
            )));
        }
        if !(80..=450).contains(&words_per_minute) {
            return Err(ConfigError(format!(
                "espeak-ng speed {words_per_minute} words per minute is outside 80..=450"
            )));
        }
        Ok(Self {
            program: program.into(),
            voice: voice.to_owned(),
            words_per_minute,
        })
    }
}

pub(crate) fn process_error(reason: String) -> EngineError {
    EngineError::Process {
        stage: Stage::TextToSpeech,
        reason,
    }
}

/// Starts a text-to-speech program (stdin piped, stderr kept, killed when dropped) and
/// writes `text` to its stdin as one line, then closes it. The text is short, so writing it
/// all before reading cannot fill a pipe.
pub(crate) async fn start_speaking(
    mut cmd: Command,
    text: &str,
    what: &str,
) -> Result<Child, EngineError> {
    let mut child = cmd
        .stdin(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .map_err(|e| process_error(format!("cannot start {what}: {e}")))?;
    let mut stdin = child
        .stdin
        .take()
        .ok_or_else(|| process_error("no stdin".into()))?;
    let mut input: String = text
        .chars()
        .take(MAX_TEXT)
        .collect::<String>()
        .replace(['\r', '\n'], " ");
    input.push('\n');
    stdin
        .write_all(input.as_bytes())
        .await
        .map_err(|e| process_error(format!("writing to {what}: {e}")))?;
    drop(stdin);
    Ok(child)
}

struct Running {
    child: Child,
    stdout: ChildStdout,
    reader: WavReader,
    done: bool,
}

#[async_trait]
impl TextToSpeech for EspeakTts {
    async fn synthesize(&self, text: &str) -> Result<AudioStream, EngineError> {
        let mut cmd = Command::new(&self.program);
        cmd.arg("-v")
            .arg(&self.voice)
            .arg("-s")
            .arg(self.words_per_minute.to_string())
            .arg("--stdin")
            .arg("--stdout")
            .stdout(Stdio::piped());
        let mut child = start_speaking(cmd, text, "espeak-ng").await?;
        let stdout = child
            .stdout
            .take()
            .ok_or_else(|| process_error("no stdout".into()))?;
        let running = Running {
            child,
            stdout,
            reader: WavReader::new(),
            done: false,
        };
        Ok(futures_util::stream::unfold(running, next_chunk).boxed())
    }
}

async fn next_chunk(mut r: Running) -> Option<(Result<Pcm, EngineError>, Running)> {
    if r.done {
        return None;
    }
    let mut buf = vec![0u8; 8192];
    loop {
        let n = match r.stdout.read(&mut buf).await {
            Ok(n) => n,
            Err(e) => {
                r.done = true;
                return Some((Err(process_error(format!("reading espeak-ng: {e}"))), r));
            }
        };
        if n == 0 {
            r.done = true;
            let status = r.child.wait().await;
            let mut err = String::new();
            if let Some(mut e) = r.child.stderr.take() {
                let _ = e.read_to_string(&mut err).await;
            }
            return match status {
                Ok(s) if s.success() && r.reader.started() => None,
                Ok(s) if s.success() => {
                    Some((Err(process_error("espeak-ng wrote no audio".into())), r))
                }
                Ok(s) => Some((
                    Err(process_error(format!(
                        "espeak-ng failed ({s}): {}",
                        err.trim().chars().take(200).collect::<String>()
                    ))),
                    r,
                )),
                Err(e) => Some((Err(process_error(format!("espeak-ng: {e}"))), r)),
            };
        }
        let got = buf.get(..n).unwrap_or_default();
        match r.reader.push(got) {
            Ok(samples) if samples.is_empty() => {}
            Ok(samples) => {
                let rate = r.reader.rate().unwrap_or(22_050);
                return Some((Ok(Pcm { rate, samples }), r));
            }
            Err(e) => {
                r.done = true;
                return Some((
                    Err(EngineError::Malformed {
                        stage: Stage::TextToSpeech,
                        reason: e.to_string(),
                    }),
                    r,
                ));
            }
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::indexing_slicing)]
    use super::*;
    use crate::audio::rms;

    #[tokio::test]
    async fn espeak_speaks_in_pieces_at_its_rate() {
        let tts = EspeakTts::new("espeak-ng", "en-us", 175).unwrap();
        let mut s = tts
            .synthesize("The capital of France is Paris. It lies on the Seine.")
            .await
            .unwrap();
        let mut pieces = 0;
        let mut all = Vec::new();
        while let Some(p) = s.next().await {
            let p = p.unwrap();
            assert_eq!(p.rate, 22_050);
            all.extend(p.samples);
            pieces += 1;
        }
        assert!(pieces > 1, "streamed in {pieces} pieces");
        let secs = all.len() as f64 / 22_050.0;
        assert!((2.0..8.0).contains(&secs), "{secs} s");
        assert!(rms(&all) > 0.02, "{}", rms(&all));
    }

    #[tokio::test]
    async fn a_missing_or_failing_program_is_a_process_error() {
        let tts = EspeakTts::new("/nonexistent/espeak-ng", "en-us", 175).unwrap();
        let e = tts.synthesize("hello").await.err().unwrap();
        assert!(
            matches!(
                e,
                EngineError::Process {
                    stage: Stage::TextToSpeech,
                    ..
                }
            ),
            "{e}"
        );
        let tts = EspeakTts::new("espeak-ng", "xx-nonexistent", 175).unwrap();
        let mut s = tts.synthesize("hello").await.unwrap();
        let mut errs = 0;
        while let Some(p) = s.next().await {
            if p.is_err() {
                errs += 1;
            }
        }
        assert_eq!(errs, 1);
    }

    #[test]
    fn voice_names_and_speeds_are_checked() {
        assert!(EspeakTts::new("espeak-ng", "en-us+f3", 175).is_ok());
        for v in ["", "en us", "a;b", "../x", "en\nus"] {
            assert!(EspeakTts::new("espeak-ng", v, 175).is_err(), "{v}");
        }
        assert!(EspeakTts::new("espeak-ng", "en", 20).is_err());
    }
}

//! The `[speech]` section of the agent's configuration: which engines, and how turns are
//! taken.
//!
//! The offline default (every engine on this machine, nothing fetched from anywhere):
//!
//! ```toml
//! [speech]
//! end_of_turn_silence_ms = 500
//! min_interruption_ms = 500
//!
//! [speech.vad]
//! kind = "earshot"
//!
//! [speech.stt]            # faster-whisper behind the OpenAI transcription API
//! kind = "openai"
//! base_url = "http://127.0.0.1:8091/v1"
//! model = "whisper-base"
//! language = "en"
//!
//! [speech.brain]
//! kind = "knowledge"
//! file = "knowledge.toml"
//!
//! [speech.tts]
//! kind = "flite"           # or "espeak-ng"
//! voice = "slt"
//! ```
//!
//! A hosted or local OpenAI-compatible model instead of the knowledge file:
//!
//! ```toml
//! [speech.brain]
//! kind = "openai"
//! base_url = "https://api.openai.com/v1"
//! model = "gpt-4o-mini"
//! api_key_env = "OPENAI_API_KEY"     # or api_key_file = "/run/secrets/openai"
//! instructions = "You are a helpful oracle. Answer in one or two short sentences."
//! max_tokens = 120
//! ```
//!
//! Keys come from the environment or a file, never from this file or the command line.
//! Relative paths are relative to the configuration file's folder.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde::Deserialize;
use tracing::warn;

use crate::engine::{Brain, SpeechToText, TextToSpeech, Vad};
use crate::error::ConfigError;
use crate::espeak::EspeakTts;
use crate::flite::FliteTts;
use crate::knowledge::KnowledgeBrain;
use crate::openai::{
    ApiKey, BrainConfig, OpenAiBrain, OpenAiEndpoint, OpenAiStt, OpenAiTts, SpeechFormat,
    SttConfig, TtsConfig,
};
use crate::session::{Deadlines, Engines, SessionConfig, SpeechSession, fallback_tone, render};
use crate::turn::TurnConfig;
use crate::vad::{EarshotVad, EnergyVad};

/// `[speech]`.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SpeechSection {
    /// What the oracle says when a call starts; unset: the knowledge file's greeting (if the
    /// brain is one), else nothing. `""` says nothing.
    #[serde(default)]
    pub greeting: Option<String>,
    /// What the oracle says when an engine fails.
    #[serde(default)]
    pub fallback_line: Option<String>,
    /// Silence that ends the person's turn (default 500 ms).
    #[serde(default)]
    pub end_of_turn_silence_ms: Option<u64>,
    /// Voice over the oracle that stops it (default 500 ms).
    #[serde(default)]
    pub min_interruption_ms: Option<u64>,
    /// Below this share of the level the oracle just played, the person's audio is taken
    /// for the oracle's own voice coming back (default 0.5, i.e. −6 dB; 0 turns the gate off).
    #[serde(default)]
    pub echo_ratio: Option<f32>,
    /// The longest a person's turn runs before it is answered (default 30 s).
    #[serde(default)]
    pub max_turn_secs: Option<u64>,
    /// Voice activity detection.
    #[serde(default)]
    pub vad: VadSection,
    /// Speech-to-text.
    pub stt: SttSection,
    /// The brain.
    pub brain: BrainSection,
    /// Text-to-speech.
    #[serde(default)]
    pub tts: TtsSection,
}

/// `[speech.vad]`.
#[derive(Clone, Debug, Deserialize)]
#[serde(tag = "kind", rename_all = "kebab-case", deny_unknown_fields)]
pub enum VadSection {
    /// The `earshot` detector.
    Earshot {
        /// Probability that makes a frame voice (default 0.5).
        #[serde(default)]
        threshold: Option<f32>,
    },
    /// A level detector (tones and tests).
    Energy {
        /// Level (0..1 of full scale) above which a frame is voice.
        threshold: f32,
    },
}

impl Default for VadSection {
    fn default() -> Self {
        Self::Earshot { threshold: None }
    }
}

/// Where an OpenAI-compatible server is (shared by the `openai` engines).
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EndpointSection {
    /// The API's base URL, e.g. `http://127.0.0.1:8091/v1`.
    pub base_url: String,
    /// The environment variable holding the key.
    #[serde(default)]
    pub api_key_env: Option<String>,
    /// The file holding the key.
    #[serde(default)]
    pub api_key_file: Option<PathBuf>,
}

impl EndpointSection {
    fn endpoint(&self, base: &Path) -> Result<OpenAiEndpoint, ConfigError> {
        let mut ep = OpenAiEndpoint::new(self.base_url.clone());
        match (&self.api_key_env, &self.api_key_file) {
            (Some(_), Some(_)) => {
                return Err(ConfigError(
                    "give api_key_env or api_key_file, not both".into(),
                ));
            }
            (Some(var), None) => ep = ep.with_api_key(ApiKey::from_env(var)?),
            (None, Some(file)) => ep = ep.with_api_key(ApiKey::from_file(&base.join(file))?),
            (None, None) => {}
        }
        Ok(ep)
    }
}

/// `[speech.stt]`.
#[derive(Clone, Debug, Deserialize)]
#[serde(tag = "kind", rename_all = "kebab-case", deny_unknown_fields)]
pub enum SttSection {
    /// `POST /audio/transcriptions` of an OpenAI-compatible server (the offline default's
    /// faster-whisper sidecar, or a hosted one).
    Openai {
        /// The server.
        #[serde(flatten)]
        endpoint: EndpointSection,
        /// The `model` field.
        model: String,
        /// The `language` field (e.g. `en`).
        #[serde(default)]
        language: Option<String>,
        /// The `prompt` field (vocabulary hints; unset with a knowledge-file brain: its
        /// questions).
        #[serde(default)]
        prompt: Option<String>,
        /// How long a transcription may take (default 15 s).
        #[serde(default)]
        timeout_secs: Option<u64>,
    },
}

/// `[speech.brain]`.
#[derive(Clone, Debug, Deserialize)]
#[serde(tag = "kind", rename_all = "kebab-case", deny_unknown_fields)]
pub enum BrainSection {
    /// A knowledge file ([`KnowledgeBrain`]).
    Knowledge {
        /// The file.
        file: PathBuf,
    },
    /// `POST /chat/completions` (streamed) of an OpenAI-compatible server.
    Openai {
        /// The server.
        #[serde(flatten)]
        endpoint: EndpointSection,
        /// The `model` field.
        model: String,
        /// Instructions put first (the system message).
        #[serde(default)]
        instructions: Option<String>,
        /// The `max_tokens` field.
        #[serde(default)]
        max_tokens: Option<u32>,
        /// The `temperature` field.
        #[serde(default)]
        temperature: Option<f32>,
        /// How long the first token may take (default 10 s).
        #[serde(default)]
        first_token_timeout_secs: Option<u64>,
    },
}

/// `[speech.tts]`.
#[derive(Clone, Debug, Deserialize)]
#[serde(tag = "kind", rename_all = "kebab-case", deny_unknown_fields)]
pub enum TtsSection {
    /// `flite`, run as a separate program (the default: clearer than espeak-ng for a
    /// listener and for Whisper, e.g. "The capital of France is Paris." comes back exact).
    Flite {
        /// The program (default `flite` on `PATH`).
        #[serde(default)]
        program: Option<PathBuf>,
        /// A built-in voice (default `slt`).
        #[serde(default)]
        voice: Option<String>,
    },
    /// `espeak-ng`, run as a separate program.
    EspeakNg {
        /// The program (default `espeak-ng` on `PATH`).
        #[serde(default)]
        program: Option<PathBuf>,
        /// The voice (default `en-us`).
        #[serde(default)]
        voice: Option<String>,
        /// Words per minute (default 175).
        #[serde(default)]
        words_per_minute: Option<u32>,
    },
    /// `POST /audio/speech` of an OpenAI-compatible server.
    Openai {
        /// The server.
        #[serde(flatten)]
        endpoint: EndpointSection,
        /// The `model` field.
        model: String,
        /// The `voice` field.
        voice: String,
        /// `wav` (default) or `pcm` (raw 24 kHz).
        #[serde(default)]
        format: Option<String>,
        /// The `speed` field.
        #[serde(default)]
        speed: Option<f32>,
    },
}

impl Default for TtsSection {
    fn default() -> Self {
        Self::Flite {
            program: None,
            voice: None,
        }
    }
}

/// The speaking oracle, ready for calls: the engines (shared by all calls), the settings and
/// the fallback line already rendered.
#[derive(Clone, Debug)]
pub struct Prepared {
    engines: Engines,
    session: SessionConfig,
    vad: VadSection,
    greeting: Option<String>,
    fallback: Arc<[i16]>,
    sink: Option<tokio::sync::mpsc::UnboundedSender<crate::session::TurnMetrics>>,
}

impl Prepared {
    /// Every call's sessions also send each finished turn's metrics to `sink`.
    #[must_use]
    pub fn with_metrics_sink(
        mut self,
        sink: tokio::sync::mpsc::UnboundedSender<crate::session::TurnMetrics>,
    ) -> Self {
        self.sink = Some(sink);
        self
    }

    /// A session for one call, its greeting (if any) already on its way.
    pub fn session(&self, now: Instant) -> SpeechSession {
        let vad: Box<dyn Vad> = match self.vad {
            VadSection::Earshot { .. } => Box::new(EarshotVad::default()),
            VadSection::Energy { threshold } => Box::new(EnergyVad { threshold }),
        };
        let mut s = SpeechSession::new(
            self.session.clone(),
            self.engines.clone(),
            vad,
            Arc::clone(&self.fallback),
            now,
        );
        if let Some(sink) = &self.sink {
            s.set_metrics_sink(sink.clone());
        }
        if let Some(g) = self.greeting.as_deref().filter(|g| !g.trim().is_empty()) {
            s.say(g, now);
        }
        s
    }

    /// The session settings.
    pub fn session_config(&self) -> &SessionConfig {
        &self.session
    }
}

fn secs(v: Option<u64>, default: Duration) -> Duration {
    v.map_or(default, Duration::from_secs)
}

impl SpeechSection {
    /// Builds the engines (relative paths against `base`) and renders the fallback line.
    /// A text-to-speech engine that cannot render it at start is logged, and a tone stands
    /// in for the line; every other problem is an error.
    ///
    /// # Errors
    /// A setting is out of range, a file cannot be read, a URL or key is refused.
    pub async fn prepare(&self, base: &Path) -> Result<Prepared, ConfigError> {
        let mut turns = TurnConfig::default();
        if let Some(ms) = self.end_of_turn_silence_ms {
            if !(100..=5000).contains(&ms) {
                return Err(ConfigError(format!(
                    "end_of_turn_silence_ms {ms} is outside 100..=5000"
                )));
            }
            turns.end_of_turn_silence = Duration::from_millis(ms);
        }
        if let Some(ms) = self.min_interruption_ms {
            if !(60..=5000).contains(&ms) {
                return Err(ConfigError(format!(
                    "min_interruption_ms {ms} is outside 60..=5000"
                )));
            }
            turns.min_interruption = Duration::from_millis(ms);
        }
        turns.max_turn = secs(self.max_turn_secs, turns.max_turn);
        if let VadSection::Earshot { threshold: Some(t) } = self.vad {
            if !(0.05..=0.95).contains(&t) {
                return Err(ConfigError(format!(
                    "vad threshold {t} is outside 0.05..=0.95"
                )));
            }
            turns.activation = t;
            turns.deactivation = (t - 0.15).max(0.01);
        }
        let mut session = SessionConfig {
            turns,
            ..SessionConfig::default()
        };
        if let Some(r) = self.echo_ratio {
            if !(0.0..=1.0).contains(&r) {
                return Err(ConfigError(format!("echo_ratio {r} is outside 0..=1")));
            }
            session.echo_ratio = r;
        }
        if let Some(f) = &self.fallback_line {
            session.fallback_line.clone_from(f);
        }
        let mut deadlines = Deadlines::default();

        let mut greeting = self.greeting.clone();
        // A knowledge file's questions are the words speech-to-text should expect.
        let mut hint: Option<String> = None;
        let brain: Arc<dyn Brain> = match &self.brain {
            BrainSection::Knowledge { file } => {
                let b = KnowledgeBrain::load(&base.join(file))?;
                if greeting.is_none() && !b.greeting().is_empty() {
                    greeting = Some(b.greeting().to_owned());
                }
                hint = Some(b.vocabulary(600)).filter(|v| !v.is_empty());
                Arc::new(b)
            }
            BrainSection::Openai {
                endpoint,
                model,
                instructions,
                max_tokens,
                temperature,
                first_token_timeout_secs,
            } => {
                let mut c = BrainConfig::new(endpoint.endpoint(base)?, model.clone());
                c.system_prompt.clone_from(instructions);
                c.max_tokens = *max_tokens;
                c.temperature = *temperature;
                c.first_token_timeout = secs(*first_token_timeout_secs, c.first_token_timeout);
                deadlines.first_token = c.first_token_timeout + Duration::from_secs(1);
                Arc::new(OpenAiBrain::new(c)?)
            }
        };
        let stt: Arc<dyn SpeechToText> = match &self.stt {
            SttSection::Openai {
                endpoint,
                model,
                language,
                prompt,
                timeout_secs,
            } => {
                let mut c = SttConfig::new(endpoint.endpoint(base)?, model.clone());
                c.language.clone_from(language);
                c.prompt.clone_from(prompt);
                if c.prompt.is_none() {
                    c.prompt = hint.take();
                }
                c.timeout = secs(*timeout_secs, deadlines.transcript);
                deadlines.transcript = c.timeout;
                Arc::new(OpenAiStt::new(c)?)
            }
        };
        let tts: Arc<dyn TextToSpeech> = match &self.tts {
            TtsSection::Flite { program, voice } => Arc::new(FliteTts::new(
                program.clone().unwrap_or_else(|| PathBuf::from("flite")),
                voice.as_deref().unwrap_or("slt"),
            )?),
            TtsSection::EspeakNg {
                program,
                voice,
                words_per_minute,
            } => Arc::new(EspeakTts::new(
                program
                    .clone()
                    .unwrap_or_else(|| PathBuf::from("espeak-ng")),
                voice.as_deref().unwrap_or("en-us"),
                words_per_minute.unwrap_or(175),
            )?),
            TtsSection::Openai {
                endpoint,
                model,
                voice,
                format,
                speed,
            } => {
                let mut c = TtsConfig::new(endpoint.endpoint(base)?, model.clone(), voice.clone());
                c.format = match format.as_deref() {
                    None | Some("wav") => SpeechFormat::Wav,
                    Some("pcm") => SpeechFormat::Pcm {
                        rate: crate::openai::OPENAI_PCM_RATE,
                    },
                    Some(other) => {
                        return Err(ConfigError(format!(
                            "tts format {other:?}: use \"wav\" or \"pcm\""
                        )));
                    }
                };
                c.speed = *speed;
                Arc::new(OpenAiTts::new(c)?)
            }
        };
        session.deadlines = deadlines;
        let fallback: Arc<[i16]> = match render(tts.as_ref(), &session.fallback_line).await {
            Ok(pcm) => pcm.into(),
            Err(e) => {
                warn!(error = %e, "cannot render the fallback line; a tone will stand in for it");
                fallback_tone().into()
            }
        };
        Ok(Prepared {
            engines: Engines { stt, brain, tts },
            session,
            vad: self.vad.clone(),
            greeting,
            fallback,
            sink: None,
        })
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::indexing_slicing)]
    use super::*;

    fn parse(t: &str) -> Result<SpeechSection, String> {
        toml::from_str::<SpeechSection>(t).map_err(|e| e.to_string())
    }

    #[tokio::test]
    async fn the_offline_default_prepares() {
        let dir = std::env::temp_dir().join(format!("oc-speech-cfg-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(
            dir.join("k.toml"),
            "greeting = \"Hello there.\"\n[[entry]]\nquestions = [\"capital of France\"]\nanswer = \"Paris.\"\n",
        )
        .unwrap();
        let s = parse(
            r#"
end_of_turn_silence_ms = 700
[stt]
kind = "openai"
base_url = "http://127.0.0.1:9/v1"
model = "whisper-base"
language = "en"
[brain]
kind = "knowledge"
file = "k.toml"
[tts]
kind = "espeak-ng"
voice = "en-gb"
"#,
        )
        .unwrap();
        let p = s.prepare(&dir).await.unwrap();
        assert_eq!(p.greeting.as_deref(), Some("Hello there."));
        assert_eq!(
            p.session.turns.end_of_turn_silence,
            Duration::from_millis(700)
        );
        // The fallback line was spoken by espeak-ng: about 3 s of audio, not the tone.
        assert!(matches!(s.tts, TtsSection::EspeakNg { .. }));
        assert!(p.fallback.len() > 48_000 * 2, "{}", p.fallback.len());
        assert_ne!(p.fallback.len(), fallback_tone().len());
        std::fs::remove_dir_all(&dir).ok();
    }

    #[tokio::test]
    async fn bad_settings_are_refused_with_a_reason() {
        let base = Path::new("/");
        let ok_rest = "[stt]\nkind = \"openai\"\nbase_url = \"http://127.0.0.1:9/v1\"\nmodel = \"m\"\n[brain]\nkind = \"openai\"\nbase_url = \"http://127.0.0.1:9/v1\"\nmodel = \"m\"\n";
        for (head, why) in [
            ("end_of_turn_silence_ms = 10\n", "outside 100..=5000"),
            ("min_interruption_ms = 9000\n", "outside 60..=5000"),
            ("echo_ratio = 2.0\n", "outside 0..=1"),
        ] {
            let s = parse(&format!("{head}{ok_rest}")).unwrap();
            let e = s.prepare(base).await.unwrap_err();
            assert!(e.0.contains(why), "{head}: {e}");
        }
        let e = parse(&ok_rest.replace("http://127.0.0.1:9", "http://example.org"))
            .unwrap()
            .prepare(base)
            .await
            .unwrap_err();
        assert!(e.0.contains("loopback") || e.0.contains("https"), "{e}");
        let e = parse(&format!(
            "{ok_rest}[tts]\nkind = \"espeak-ng\"\nvoice = \"en us\"\n"
        ))
        .unwrap()
        .prepare(base)
        .await
        .unwrap_err();
        assert!(e.0.contains("voice"), "{e}");
        assert!(parse("[stt]\nkind = \"carrier-pigeon\"\n").is_err());
        assert!(parse(&format!("{ok_rest}colour = 1\n")).is_err());
        let typo = ok_rest.replace(
            "model = \"m\"\n[brain]",
            "model = \"m\"\napi_key_evn = \"X\"\n[brain]",
        );
        assert!(
            parse(&typo).is_err(),
            "a misspelt key inside [stt] is refused"
        );
        let e = parse(&ok_rest.replace(
            "model = \"m\"\n[brain]",
            "model = \"m\"\napi_key_env = \"OC_TEST_SURELY_UNSET_KEY\"\n[brain]",
        ))
        .unwrap()
        .prepare(base)
        .await
        .unwrap_err();
        assert!(e.0.contains("OC_TEST_SURELY_UNSET_KEY"), "{e}");
    }
}

//! The speaking oracle's local engines: the faster-whisper sidecar (speech-to-text, and
//! espeak-ng behind `/v1/audio/speech`), llama.cpp's OpenAI-compatible server with SmolLM2,
//! as installed by `scripts/speech-setup` outside the clone; plus what a test or the demo
//! needs around them (a voice for the user, transcribing what the oracle said, word error).

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use anyhow::{Context as _, bail};
use oracle_calls_speech::audio::Downsampler;
use oracle_calls_speech::config::SpeechSection;
use oracle_calls_speech::flite::FliteTts;
use oracle_calls_speech::openai::{OpenAiEndpoint, OpenAiStt, SttConfig};
use oracle_calls_speech::session::render;
use oracle_calls_speech::{SpeechToText, TextToSpeech};
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::{Child, Command};

/// Where `scripts/speech-setup` put the engines (its `env` file).
#[derive(Clone, Debug)]
pub struct SpeechEnv {
    /// The speech-to-text venv's Python.
    pub python: PathBuf,
    /// Whisper base (CTranslate2) as assembled from its pinned wheels.
    pub whisper_dir: PathBuf,
    /// llama-cpp-python's venv Python (`--with-llm`).
    pub llama_python: Option<PathBuf>,
    /// SmolLM2-135M-Instruct GGUF (`--with-llm`).
    pub smollm2: Option<PathBuf>,
}

/// The folder of `scripts/speech-setup`'s installs.
pub fn speech_home() -> PathBuf {
    std::env::var_os("OC_SPEECH_HOME").map_or_else(
        || {
            let home = std::env::var_os("HOME").unwrap_or_else(|| "/root".into());
            PathBuf::from(home).join(".cache/oracle-calls/speech")
        },
        PathBuf::from,
    )
}

/// The repository's `speech/` folder (the sidecar script, the demo's knowledge file).
pub fn speech_dir() -> PathBuf {
    std::env::var_os("OC_SPEECH_DIR").map_or_else(
        || Path::new(env!("CARGO_MANIFEST_DIR")).join("../../speech"),
        PathBuf::from,
    )
}

impl SpeechEnv {
    /// Reads `$OC_SPEECH_HOME/env`.
    ///
    /// # Errors
    /// The file is missing (the engines are not installed) or lacks the speech-to-text part.
    pub fn load() -> anyhow::Result<Self> {
        let path = speech_home().join("env");
        let text = std::fs::read_to_string(&path).with_context(|| {
            format!(
                "{} is missing: install the speech engines with scripts/speech-setup",
                path.display()
            )
        })?;
        let get = |k: &str| {
            text.lines()
                .filter_map(|l| l.split_once('='))
                .find(|(key, _)| key.trim() == k)
                .map(|(_, v)| PathBuf::from(v.trim()))
                .filter(|p| p.exists())
        };
        Ok(Self {
            python: get("OC_SPEECH_PYTHON").with_context(|| {
                format!(
                    "{}: no OC_SPEECH_PYTHON; run scripts/speech-setup",
                    path.display()
                )
            })?,
            whisper_dir: get("OC_WHISPER_MODEL_DIR").with_context(|| {
                format!(
                    "{}: no OC_WHISPER_MODEL_DIR; run scripts/speech-setup",
                    path.display()
                )
            })?,
            llama_python: get("OC_LLAMA_PYTHON"),
            smollm2: get("OC_SMOLLM2_GGUF"),
        })
    }
}

/// A local engine server, killed when dropped.
#[derive(Debug)]
pub struct LocalServer {
    child: Child,
    /// The OpenAI-compatible base URL, e.g. `http://127.0.0.1:PORT/v1`.
    pub base_url: String,
}

impl LocalServer {
    /// Stops the server now (as a crash would: SIGKILL).
    pub async fn kill(&mut self) {
        let _ = self.child.kill().await;
    }

    /// The process id.
    pub fn pid(&self) -> Option<u32> {
        self.child.id()
    }
}

/// Which parts of the sidecar to run.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SidecarRole {
    /// Speech-to-text and speech.
    Both,
    /// Only `/v1/audio/transcriptions`.
    SttOnly,
    /// Only `/v1/audio/speech` (no model loaded).
    TtsOnly,
}

/// Starts `speech/sidecar/oc_speech_server.py` on a free loopback port (one engine thread)
/// and waits until it says it is listening (the model loads and warms first).
///
/// # Errors
/// It cannot start or does not become ready within two minutes.
pub async fn start_sidecar(env: &SpeechEnv, role: SidecarRole) -> anyhow::Result<LocalServer> {
    start_sidecar_with(env, role, 1).await
}

/// [`start_sidecar`] with Whisper's beam size (1, greedy, is the fastest; 5 hears more
/// exactly, e.g. for checking what the oracle said).
///
/// # Errors
/// As [`start_sidecar`].
pub async fn start_sidecar_with(
    env: &SpeechEnv,
    role: SidecarRole,
    beam_size: u32,
) -> anyhow::Result<LocalServer> {
    let script = speech_dir().join("sidecar/oc_speech_server.py");
    let mut cmd = Command::new(&env.python);
    cmd.arg(&script)
        .args(["--host", "127.0.0.1", "--port", "0", "--threads", "1"])
        .args(["--beam-size", &beam_size.to_string()])
        .arg("--model-dir")
        .arg(&env.whisper_dir)
        .env("HF_HUB_OFFLINE", "1")
        .env("OC_SPEECH_LOG", "WARNING")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .kill_on_drop(true);
    match role {
        SidecarRole::Both => {}
        SidecarRole::SttOnly => {
            cmd.arg("--stt-only");
        }
        SidecarRole::TtsOnly => {
            cmd.arg("--tts-only");
        }
    }
    let mut child = cmd
        .spawn()
        .with_context(|| format!("starting {}", script.display()))?;
    let stdout = child.stdout.take().context("the sidecar's stdout")?;
    let mut lines = BufReader::new(stdout).lines();
    let ready = tokio::time::timeout(Duration::from_secs(120), async {
        while let Some(line) = lines.next_line().await? {
            if let Some(url) = line.strip_prefix("listening on ") {
                return Ok::<_, std::io::Error>(Some(url.trim().to_owned()));
            }
        }
        Ok(None)
    })
    .await
    .context("the speech sidecar was not ready within 120 s")??;
    let Some(url) = ready else {
        bail!("the speech sidecar exited before it was ready (its log is above)");
    };
    // Keep reading its stdout so it never blocks on a full pipe.
    tokio::spawn(async move { while let Ok(Some(_)) = lines.next_line().await {} });
    Ok(LocalServer {
        child,
        base_url: format!("{url}/v1"),
    })
}

/// Starts llama.cpp's OpenAI-compatible server with SmolLM2-135M on a free loopback port,
/// one thread for generation and one for the prompt, and waits until it serves.
///
/// # Errors
/// `scripts/speech-setup --with-llm` was not run, or the server is not up within a minute.
pub async fn start_llama(env: &SpeechEnv) -> anyhow::Result<LocalServer> {
    let (Some(python), Some(model)) = (&env.llama_python, &env.smollm2) else {
        bail!("the local language model is not installed: run scripts/speech-setup --with-llm");
    };
    let port = std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port();
    let child = Command::new(python)
        .args(["-m", "llama_cpp.server", "--model"])
        .arg(model)
        .args(["--model_alias", "smollm2", "--host", "127.0.0.1"])
        .args(["--port", &port.to_string()])
        .args([
            "--n_threads",
            "1",
            "--n_threads_batch",
            "1",
            "--n_ctx",
            "2048",
        ])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .context("starting llama_cpp.server")?;
    let base_url = format!("http://127.0.0.1:{port}/v1");
    let http = reqwest::Client::new();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    loop {
        if let Ok(r) = http.get(format!("{base_url}/models")).send().await
            && r.status().is_success()
        {
            break;
        }
        if tokio::time::Instant::now() > deadline {
            bail!("llama_cpp.server did not serve within 60 s");
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    Ok(LocalServer { child, base_url })
}

/// The offline default's `[speech]` section: earshot, Whisper at `stt_url`, the knowledge
/// file, flite.
///
/// # Errors
/// Never in practice (the TOML is built here); kept as a `Result` for the parse.
pub fn offline_section(stt_url: &str, knowledge: &Path) -> anyhow::Result<SpeechSection> {
    let text = format!(
        "[vad]\nkind = \"earshot\"\n\
         [stt]\nkind = \"openai\"\nbase_url = \"{stt_url}\"\nmodel = \"whisper-base\"\nlanguage = \"en\"\n\
         [brain]\nkind = \"knowledge\"\nfile = {knowledge:?}\n\
         [tts]\nkind = \"flite\"\nvoice = \"slt\"\n",
        knowledge = knowledge.display().to_string(),
    );
    Ok(toml::from_str(&text)?)
}

/// `text` spoken by flite in one of its voices (the user's side of a test or the demo), at
/// 48 kHz.
///
/// # Errors
/// flite is missing or fails.
pub async fn say(text: &str, voice: &str) -> anyhow::Result<Vec<i16>> {
    let tts = FliteTts::new("flite", voice)?;
    Ok(render(&tts as &dyn TextToSpeech, text).await?)
}

/// What Whisper at `stt_url` hears in 48 kHz `pcm`.
///
/// # Errors
/// The sidecar fails.
pub async fn transcribe(stt_url: &str, pcm48: &[i16]) -> anyhow::Result<String> {
    let mut cfg = SttConfig::new(OpenAiEndpoint::new(stt_url), "whisper-base");
    cfg.language = Some("en".into());
    let stt = OpenAiStt::new(cfg)?;
    let mut t = stt.start();
    let mut down = Downsampler::new();
    for chunk in pcm48.chunks(960) {
        t.push(&down.push(chunk));
    }
    Ok(t.finish().await?)
}

/// Lower-case words without punctuation ("Celsius." → "celsius"), contractions spelt out
/// ("I'm" → "i am") and small numbers as words ("8" → "eight"), so that a transcript is
/// compared for what was said, not how it was written.
pub fn words(text: &str) -> Vec<String> {
    const NUMBERS: [&str; 21] = [
        "zero",
        "one",
        "two",
        "three",
        "four",
        "five",
        "six",
        "seven",
        "eight",
        "nine",
        "ten",
        "eleven",
        "twelve",
        "thirteen",
        "fourteen",
        "fifteen",
        "sixteen",
        "seventeen",
        "eighteen",
        "nineteen",
        "twenty",
    ];
    let mut out = Vec::new();
    for w in text
        .to_lowercase()
        .replace('’', "'")
        .split(|c: char| !c.is_alphanumeric() && c != '\'')
        .map(|w| w.trim_matches('\''))
        .filter(|w| !w.is_empty())
    {
        let spelt: &[&str] = match w {
            "i'm" => &["i", "am"],
            "don't" => &["do", "not"],
            "can't" => &["can", "not"],
            "cannot" => &["can", "not"],
            "isn't" => &["is", "not"],
            "you're" => &["you", "are"],
            "that's" => &["that", "is"],
            "what's" => &["what", "is"],
            "it's" => &["it", "is"],
            "there's" => &["there", "is"],
            "i've" => &["i", "have"],
            _ => &[],
        };
        if !spelt.is_empty() {
            out.extend(spelt.iter().map(|s| (*s).to_owned()));
        } else if let Some(n) = w.parse::<usize>().ok().and_then(|n| NUMBERS.get(n)) {
            out.push((*n).to_owned());
        } else if w == "100" {
            out.extend(["one".to_owned(), "hundred".to_owned()]);
        } else {
            out.push(w.replace('\'', ""));
        }
    }
    out
}

/// Word error rate of `hypothesis` against `reference`: word edits / reference words.
pub fn word_error_rate(reference: &str, hypothesis: &str) -> f64 {
    let r = words(reference);
    let h = words(hypothesis);
    if r.is_empty() {
        return if h.is_empty() { 0.0 } else { 1.0 };
    }
    let mut prev: Vec<usize> = (0..=h.len()).collect();
    for (i, rw) in r.iter().enumerate() {
        let mut cur = vec![i + 1; h.len() + 1];
        for (j, hw) in h.iter().enumerate() {
            let sub = prev.get(j).copied().unwrap_or(0) + usize::from(rw != hw);
            let del = prev.get(j + 1).copied().unwrap_or(0) + 1;
            let ins = cur.get(j).copied().unwrap_or(0) + 1;
            if let Some(c) = cur.get_mut(j + 1) {
                *c = sub.min(del).min(ins);
            }
        }
        prev = cur;
    }
    prev.last().copied().unwrap_or(0) as f64 / r.len() as f64
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn word_error_rate_counts_edits_over_reference_words() {
        assert_eq!(
            word_error_rate(
                "The capital of France is Paris.",
                "the capital of france is paris"
            ),
            0.0
        );
        assert!((word_error_rate("a b c d", "a x c") - 0.5).abs() < 1e-9);
        assert!((word_error_rate("a b", "a b c d") - 1.0).abs() < 1e-9);
        assert_eq!(word_error_rate("", ""), 0.0);
        assert_eq!(
            word_error_rate("Hello, I am the oracle.", "Hello, I'm the Oracle."),
            0.0
        );
        assert_eq!(
            word_error_rate("A spider has eight legs.", "A spider has 8 legs."),
            0.0
        );
    }
}

/// A frame's level above which received audio counts as the oracle speaking (−40 dBFS).
pub const SPEAKING_RMS: f32 = 0.01;

/// The user's side of a spoken conversation in a live call: a microphone fed 20 ms at a
/// time (what the user says, silence otherwise, optionally the oracle's own voice leaking
/// back), and the oracle's audio collected with the time each frame arrived.
#[derive(Debug)]
pub struct Conversation {
    mic: oracle_calls_rtc::AudioSource,
    /// Every frame of the oracle's audio, with when it arrived.
    pub heard: Vec<(std::time::Instant, Vec<i16>)>,
    /// Feeds the oracle's audio back into the microphone: (gain, delay in frames).
    pub echo: Option<(f32, usize)>,
    /// Frames the microphone sent, in order (what the oracle was given to hear).
    pub sent: usize,
    /// When the last frame of what the user was given to say was sent.
    pub said_until: std::time::Instant,
}

/// How a [`Conversation::run`] ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RunEnd {
    /// The stop condition held.
    Stopped,
    /// The time ran out.
    TimedOut,
    /// The call ended.
    CallEnded,
}

impl Conversation {
    /// A conversation on `call`'s microphone.
    pub fn new(call: &oracle_calls_client::Call) -> Self {
        Self {
            mic: call.microphone(),
            heard: Vec::new(),
            echo: None,
            sent: 0,
            said_until: std::time::Instant::now(),
        }
    }

    /// Says `pcm` (48 kHz; nothing: silence) in real time while listening, then keeps
    /// listening until `stop` holds (checked every frame once `pcm` is said) or `max` passes.
    /// Returns how it ended and when the last frame of `pcm` was sent.
    ///
    /// # Errors
    /// The microphone's track is gone.
    pub async fn run(
        &mut self,
        call: &mut oracle_calls_client::Call,
        pcm: &[i16],
        max: Duration,
        mut stop: impl FnMut(&Self) -> bool,
    ) -> anyhow::Result<(RunEnd, std::time::Instant)> {
        use oracle_calls_client::CallEvent;
        let mut tick = tokio::time::interval(Duration::from_millis(20));
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let deadline = tokio::time::Instant::now() + max;
        let mut frames = pcm.chunks(960);
        let mut said_until = std::time::Instant::now();
        let mut saying = true;
        loop {
            tokio::select! {
                _ = tick.tick() => {
                    let mut frame = match frames.next() {
                        Some(f) => {
                            said_until = std::time::Instant::now();
                            self.said_until = said_until;
                            let mut f = f.to_vec();
                            f.resize(960, 0);
                            f
                        }
                        None => {
                            saying = false;
                            vec![0; 960]
                        }
                    };
                    if let Some((gain, delay)) = self.echo
                        && let Some((_, back)) = self.heard.len().checked_sub(1 + delay).and_then(|i| self.heard.get(i))
                    {
                        for (x, b) in frame.iter_mut().zip(back) {
                            *x = x.saturating_add((f32::from(*b) * gain) as i16);
                        }
                    }
                    self.mic.push_pcm(&frame).await?;
                    self.sent += 1;
                    if !saying && stop(self) {
                        return Ok((RunEnd::Stopped, said_until));
                    }
                    if tokio::time::Instant::now() > deadline {
                        return Ok((RunEnd::TimedOut, said_until));
                    }
                }
                ev = call.next_event() => match ev {
                    Some(CallEvent::OracleAudio { pcm }) => {
                        let now = std::time::Instant::now();
                        for f in pcm.chunks(960) {
                            self.heard.push((now, f.to_vec()));
                        }
                    }
                    Some(CallEvent::DecryptionFailed { identity, failures }) => {
                        bail!("the oracle's audio from {identity} failed to decrypt ({failures} frames)");
                    }
                    Some(CallEvent::Ended { .. }) | None => return Ok((RunEnd::CallEnded, said_until)),
                    Some(_) => {}
                },
            }
        }
    }

    /// Index of the first frame heard at or after `from` in which the oracle speaks.
    pub fn first_speech_after(&self, from: std::time::Instant) -> Option<usize> {
        self.heard
            .iter()
            .position(|(t, f)| *t >= from && oracle_calls_speech::audio::rms(f) > SPEAKING_RMS)
    }

    /// Whether the oracle answered what the user last said: it spoke after the user's last
    /// frame and has been quiet for `quiet` since.
    pub fn answered(&self, quiet: Duration) -> bool {
        self.first_speech_after(self.said_until)
            .is_some_and(|i| self.spoke_then_quiet(i, quiet))
    }

    /// Whether the oracle has spoken since frame `from` and then been quiet for `quiet`.
    pub fn spoke_then_quiet(&self, from: usize, quiet: Duration) -> bool {
        let tail = self.heard.get(from..).unwrap_or_default();
        let Some(last) = tail
            .iter()
            .rposition(|(_, f)| oracle_calls_speech::audio::rms(f) > SPEAKING_RMS)
        else {
            return false;
        };
        let quiet_frames = tail.len() - 1 - last;
        quiet_frames as u128 * 20 >= quiet.as_millis()
    }

    /// The oracle's audio from 300 ms before frame `from` (a soft first sound) on.
    pub fn answer_from(&self, from: usize) -> Vec<i16> {
        self.audio_from(from.saturating_sub(15))
    }

    /// The oracle's audio from frame `from` on, as one buffer.
    pub fn audio_from(&self, from: usize) -> Vec<i16> {
        self.heard
            .get(from..)
            .unwrap_or_default()
            .iter()
            .flat_map(|(_, f)| f.iter().copied())
            .collect()
    }
}

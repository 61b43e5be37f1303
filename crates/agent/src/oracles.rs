//! Built-in oracles: [`Echo`], [`Tone`] and [`Speech`], and [`Builtin`] to pick one by
//! name ([`OracleKind`]).

use std::collections::VecDeque;

use oracle_calls_media::{AUDIO_FRAME_SAMPLES, sine_tone};

use std::path::Path;
use std::sync::Arc;

use crate::speech::Speech;
use crate::{CallIo, Heard, Oracle, OracleError, TryRecv};

const SILENCE: [i16; AUDIO_FRAME_SAMPLES] = [0; AUDIO_FRAME_SAMPLES];

/// Says back what it hears, `delay_frames` × 20 ms later.
#[derive(Clone, Copy, Debug)]
pub struct Echo {
    /// Delay in 20 ms frames.
    pub delay_frames: usize,
}

impl Default for Echo {
    fn default() -> Self {
        Self { delay_frames: 10 }
    }
}

impl Oracle for Echo {
    async fn run(&self, mut call: CallIo) -> Result<(), OracleError> {
        let mut line = DelayLine::new(self.delay_frames);
        loop {
            loop {
                match call.try_recv() {
                    TryRecv::Heard(Heard::Audio { pcm }) => line.push(pcm),
                    // Video is shown back as it comes; a key frame the user's side wants is
                    // one the user must send first.
                    TryRecv::Heard(Heard::Video { vp8, .. }) => call.show(&vp8).await?,
                    TryRecv::Heard(Heard::KeyframeRequested) => call.request_user_keyframe(),
                    TryRecv::Empty => break,
                    TryRecv::Ended => return Ok(()),
                }
            }
            match line.pop() {
                Some(f) => call.speak(&f).await?,
                None => call.speak(&SILENCE).await?,
            }
        }
    }
}

/// A FIFO that gives frames back once it holds more than `delay` of them, and never holds
/// more than `delay` + one second (a stalled output drops the oldest audio, not memory).
#[derive(Debug)]
struct DelayLine {
    delay: usize,
    frames: VecDeque<Vec<i16>>,
}

impl DelayLine {
    fn new(delay: usize) -> Self {
        Self {
            delay,
            frames: VecDeque::new(),
        }
    }
    fn push(&mut self, f: Vec<i16>) {
        self.frames.push_back(f);
        while self.frames.len() > self.delay + 50 {
            self.frames.pop_front();
        }
    }
    fn pop(&mut self) -> Option<Vec<i16>> {
        (self.frames.len() > self.delay)
            .then(|| self.frames.pop_front())
            .flatten()
    }
}

/// Answers each utterance (speech followed by 300 ms of quiet) with a three-note chime.
#[derive(Clone, Copy, Debug, Default)]
pub struct Tone;

/// The chime's notes in Hz (C5, E5, G5); each plays 160 ms with 40 ms of silence after it.
pub const CHIME: [f64; 3] = [523.25, 659.25, 783.99];

impl Oracle for Tone {
    async fn run(&self, mut call: CallIo) -> Result<(), OracleError> {
        let mut vad = Utterances::default();
        let mut out: VecDeque<Vec<i16>> = VecDeque::new();
        loop {
            loop {
                match call.try_recv() {
                    TryRecv::Heard(Heard::Audio { pcm }) => {
                        if vad.push(&pcm) && out.is_empty() {
                            out.extend(chime());
                        }
                    }
                    TryRecv::Heard(_) => {}
                    TryRecv::Empty => break,
                    TryRecv::Ended => return Ok(()),
                }
            }
            match out.pop_front() {
                Some(f) => call.speak(&f).await?,
                None => call.speak(&SILENCE).await?,
            }
        }
    }
}

/// The chime as 20 ms frames.
pub fn chime() -> Vec<Vec<i16>> {
    let mut frames = Vec::new();
    for f in CHIME {
        for i in 0..8u64 {
            frames.push(sine_tone(
                f,
                9830.0,
                i * AUDIO_FRAME_SAMPLES as u64,
                AUDIO_FRAME_SAMPLES,
            ));
        }
        frames.extend([SILENCE.to_vec(), SILENCE.to_vec()]);
    }
    frames
}

/// An energy detector of utterances: speech is a frame with RMS above 1 % of full scale; an
/// utterance is at least 100 ms of speech, over once 300 ms pass without any.
#[derive(Debug, Default)]
pub struct Utterances {
    speech_frames: u32,
    quiet_frames: u32,
}

impl Utterances {
    const SPEECH_RMS: f64 = 328.0;
    const MIN_SPEECH: u32 = 5;
    const END_QUIET: u32 = 15;

    /// Feeds one frame; true when it completes an utterance.
    pub fn push(&mut self, pcm: &[i16]) -> bool {
        let energy: f64 = pcm.iter().map(|&s| f64::from(s) * f64::from(s)).sum();
        let rms = (energy / pcm.len().max(1) as f64).sqrt();
        if rms > Self::SPEECH_RMS {
            self.speech_frames += 1;
            self.quiet_frames = 0;
            return false;
        }
        if self.speech_frames == 0 {
            return false;
        }
        self.quiet_frames += 1;
        if self.quiet_frames < Self::END_QUIET {
            return false;
        }
        let done = self.speech_frames >= Self::MIN_SPEECH;
        self.speech_frames = 0;
        self.quiet_frames = 0;
        done
    }
}

/// The built-in oracles by name.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum OracleKind {
    /// [`Echo`].
    Echo,
    /// [`Tone`].
    Tone,
    /// [`Speech`], configured by the `[speech]` section of the agent's file.
    Speech,
}

impl std::str::FromStr for OracleKind {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "echo" => Ok(Self::Echo),
            "tone" => Ok(Self::Tone),
            "speech" => Ok(Self::Speech),
            other => Err(format!(
                "unknown oracle `{other}`; built-ins are: echo, tone, speech"
            )),
        }
    }
}

/// A built-in oracle.
#[derive(Clone, Debug)]
pub enum Builtin {
    /// [`Echo`].
    Echo(Echo),
    /// [`Tone`].
    Tone(Tone),
    /// [`Speech`].
    Speech(Arc<Speech>),
}

impl std::str::FromStr for Builtin {
    type Err = String;
    /// `echo` or `tone` (the speaking oracle needs its configuration: [`Builtin::build`]).
    fn from_str(s: &str) -> Result<Self, String> {
        match s.parse::<OracleKind>()? {
            OracleKind::Echo => Ok(Self::Echo(Echo::default())),
            OracleKind::Tone => Ok(Self::Tone(Tone)),
            OracleKind::Speech => Err(
                "the speech oracle is built from the [speech] section of the agent's file".into(),
            ),
        }
    }
}

impl Builtin {
    /// The oracle `kind`; `speech` from `speech` (the agent file's `[speech]` section),
    /// relative paths against `base`.
    ///
    /// # Errors
    /// `speech` without a `[speech]` section, or a section that cannot be prepared.
    pub async fn build(
        kind: OracleKind,
        speech: Option<&oracle_calls_speech::config::SpeechSection>,
        base: &Path,
    ) -> Result<Self, String> {
        match kind {
            OracleKind::Echo => Ok(Self::Echo(Echo::default())),
            OracleKind::Tone => Ok(Self::Tone(Tone)),
            OracleKind::Speech => {
                let section = speech.ok_or_else(|| {
                    "the speech oracle needs a [speech] section in the agent's file".to_owned()
                })?;
                let s = Speech::new(section, base)
                    .await
                    .map_err(|e| e.to_string())?;
                Ok(Self::Speech(Arc::new(s)))
            }
        }
    }
}

impl Oracle for Builtin {
    async fn run(&self, call: CallIo) -> Result<(), OracleError> {
        match self {
            Self::Echo(o) => o.run(call).await,
            Self::Tone(o) => o.run(call).await,
            Self::Speech(o) => o.run(call).await,
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::indexing_slicing)]
    use super::*;

    #[test]
    fn delay_line_returns_frames_in_order_after_the_delay() {
        let mut d = DelayLine::new(3);
        for i in 0..3 {
            d.push(vec![i]);
            assert_eq!(d.pop(), None);
        }
        d.push(vec![3]);
        assert_eq!(d.pop(), Some(vec![0]));
        d.push(vec![4]);
        assert_eq!(d.pop(), Some(vec![1]));
    }

    #[test]
    fn delay_line_is_bounded() {
        let mut d = DelayLine::new(2);
        for i in 0..1000 {
            d.push(vec![i]);
        }
        assert_eq!(d.frames.len(), 52);
        assert_eq!(d.pop(), Some(vec![948]));
    }

    #[test]
    fn an_utterance_ends_after_300_ms_of_quiet() {
        let loud = sine_tone(200.0, 16000.0, 0, 960);
        let quiet = vec![0i16; 960];
        let mut v = Utterances::default();
        for _ in 0..10 {
            assert!(!v.push(&loud));
        }
        let ends: Vec<bool> = (0..20).map(|_| v.push(&quiet)).collect();
        assert_eq!(ends.iter().filter(|e| **e).count(), 1);
        assert!(ends[14], "the 15th quiet frame ends it");
    }

    #[test]
    fn a_click_is_not_an_utterance_and_silence_never_is() {
        let loud = sine_tone(200.0, 16000.0, 0, 960);
        let quiet = vec![0i16; 960];
        let mut v = Utterances::default();
        assert!(!v.push(&loud));
        assert!((0..100).all(|_| !v.push(&quiet)));
    }

    #[test]
    fn the_chime_is_one_second_of_three_notes() {
        let c = chime();
        assert_eq!(c.len(), 30);
        let first: Vec<i16> = c[..8].concat();
        let p = oracle_calls_media::goertzel_power(&first, CHIME[0]);
        assert!(p > 0.5, "{p}");
        assert!(oracle_calls_media::goertzel_power(&first, CHIME[2]) < 0.01);
    }

    #[test]
    fn builtins_by_name() {
        assert!(matches!("echo".parse(), Ok(Builtin::Echo(_))));
        assert!(matches!("tone".parse(), Ok(Builtin::Tone(_))));
        let e = "parrot".parse::<Builtin>().unwrap_err();
        assert!(e.contains("echo, tone, speech"), "{e}");
        let e = "speech".parse::<Builtin>().unwrap_err();
        assert!(e.contains("[speech] section"), "{e}");
        assert_eq!("speech".parse::<OracleKind>(), Ok(OracleKind::Speech));
    }
}

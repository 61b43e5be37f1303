//! One call's speaking oracle: the turn-taking machine wired to the engines.
//!
//! The caller (the agent's oracle loop) drives a [`SpeechSession`] in call time: every 20 ms
//! frame of the person's audio goes in through [`hear`](SpeechSession::hear), and every 20 ms
//! the frame to play comes out of [`next_frame`](SpeechSession::next_frame). Each turn's
//! engine work (transcribe → answer → speak) runs in a task of its own, tagged with the reply
//! it belongs to; a barge-in aborts that task (closing its HTTP streams and killing its
//! processes) and drops every queued frame of the reply, and anything the task had already
//! sent for it is recognised as stale and dropped too. The conversation keeps, for the
//! oracle, only what was actually played.
//!
//! Any engine failure or deadline gives the fallback line (rendered once, ahead of time, so a
//! broken text-to-speech can still be answered) and a return to listening: a call never goes
//! silent and stuck.

use std::collections::VecDeque;
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures_util::StreamExt;
use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tracing::{debug, info, warn};

use crate::audio::{CALL_FRAME, CALL_RATE, Framer, Upsampler, rms};
use crate::engine::{Brain, Message, SpeechToText, TextToSpeech, Transcription, Vad};
use crate::error::{EngineError, Stage};
use crate::text::SentenceSplitter;
use crate::turn::{Decision, Phase, TurnConfig, Turns};
use crate::vad::VadFramer;

/// One call frame's length.
const FRAME: Duration = Duration::from_millis(20);

/// The echo finder looks only while the oracle played at least this level (−34 dBFS).
const ECHO_LEARN_LEVEL: f32 = 0.02;
/// Frames the echo finder compares (0.8 s).
const ECHO_FIND_WINDOW: usize = 40;
/// The longest delay of an echo it looks for, in frames (0.4 s).
const ECHO_MAX_LAG: usize = 20;
/// Frames of levels kept.
const ECHO_FIND_FRAMES: usize = ECHO_FIND_WINDOW + ECHO_MAX_LAG;
/// Correlation of the levels at which the oracle's voice counts as coming back.
const ECHO_CORRELATION: f32 = 0.9;
/// How long an echo found counts.
const ECHO_HOLD: Duration = Duration::from_secs(2);

/// Pearson correlation of two equally long series; `None` when either is flat.
fn correlation(a: &[f32], b: &[f32]) -> Option<f32> {
    let n = a.len().min(b.len());
    if n < 2 {
        return None;
    }
    let (a, b) = (a.get(..n)?, b.get(..n)?);
    let ma = a.iter().sum::<f32>() / n as f32;
    let mb = b.iter().sum::<f32>() / n as f32;
    let (mut sab, mut saa, mut sbb) = (0.0f32, 0.0f32, 0.0f32);
    for (x, y) in a.iter().zip(b) {
        sab += (x - ma) * (y - mb);
        saa += (x - ma) * (x - ma);
        sbb += (y - mb) * (y - mb);
    }
    if saa <= 1e-9 || sbb <= 1e-9 {
        return None;
    }
    Some(sab / (saa * sbb).sqrt())
}

/// The engines a session uses (shared by all calls of an oracle).
#[derive(Clone)]
pub struct Engines {
    /// Speech-to-text.
    pub stt: Arc<dyn SpeechToText>,
    /// The brain.
    pub brain: Arc<dyn Brain>,
    /// Text-to-speech.
    pub tts: Arc<dyn TextToSpeech>,
}

impl std::fmt::Debug for Engines {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Engines")
    }
}

/// How long each engine may take before the fallback line is said instead.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Deadlines {
    /// From the end of the turn to the transcript.
    pub transcript: Duration,
    /// From the request to the brain's first piece of text.
    pub first_token: Duration,
    /// Between two pieces of the brain's text.
    pub token_gap: Duration,
    /// From a sentence to its first audio.
    pub first_audio: Duration,
    /// Between two pieces of a sentence's audio.
    pub audio_gap: Duration,
}

impl Default for Deadlines {
    fn default() -> Self {
        Self {
            transcript: Duration::from_secs(15),
            first_token: Duration::from_secs(15),
            token_gap: Duration::from_secs(10),
            first_audio: Duration::from_secs(10),
            audio_gap: Duration::from_secs(10),
        }
    }
}

/// A session's settings.
#[derive(Clone, Debug)]
pub struct SessionConfig {
    /// Turn-taking.
    pub turns: TurnConfig,
    /// Engine deadlines.
    pub deadlines: Deadlines,
    /// Audio kept from before the first voiced frame of a turn (a word's soft start).
    pub prefix: Duration,
    /// The echo gate: while the oracle speaks (and for `echo_window` after), a frame of the
    /// person's audio whose level is under the gate — a share of the loudest frame the oracle
    /// played in the last `echo_window` — is taken to be the oracle's own voice coming back.
    /// The gate is `echo_ratio` (default 0.5, −6 dB) while the oracle's voice is found in what
    /// comes back — the level of the person's audio follows the level of what the oracle
    /// played, at some delay up to 400 ms (correlation ≥ 0.9 over 0.8 s), and for 2 s after
    /// — and `echo_floor` while it is not (a headset, a browser's echo cancellation), so that a
    /// quiet person can still talk over the oracle. Until there is enough to tell, the gate is
    /// `echo_ratio`. 0 turns the gate off.
    pub echo_ratio: f32,
    /// The gate when no echo is found (default 0.03, −30 dB).
    pub echo_floor: f32,
    /// See `echo_ratio`.
    pub echo_window: Duration,
    /// Once a frame is loud enough to be the person over the oracle, the frames that follow
    /// within this time count as the person too (their quieter syllables), as a line echo
    /// canceller's double-talk detector holds its decision.
    pub echo_hold: Duration,
    /// Instructions put first in what the brain sees (none for the knowledge file).
    pub instructions: Option<String>,
    /// Lines of conversation kept for the brain (the oldest go first).
    pub max_history: usize,
    /// What the oracle says when an engine fails.
    pub fallback_line: String,
}

impl Default for SessionConfig {
    fn default() -> Self {
        Self {
            turns: TurnConfig::default(),
            deadlines: Deadlines::default(),
            prefix: Duration::from_millis(300),
            echo_ratio: 0.5,
            echo_floor: 0.03,
            echo_window: Duration::from_millis(500),
            echo_hold: Duration::from_millis(160),
            instructions: None,
            max_history: 40,
            fallback_line: "Sorry, something went wrong on my side. Please say that again.".into(),
        }
    }
}

/// The time a turn took, stage by stage (each measured from the end of the stage before).
#[derive(Clone, Debug, Default, PartialEq)]
pub struct TurnMetrics {
    /// The reply.
    pub reply: u64,
    /// What the person said (as transcribed).
    pub heard: String,
    /// The end of the person's voice → the end-of-turn decision.
    pub end_of_turn_wait: Option<Duration>,
    /// End of turn → transcript.
    pub speech_to_text: Option<Duration>,
    /// Transcript → the brain's first text.
    pub brain_first_token: Option<Duration>,
    /// The first sentence → its first audio.
    pub first_audio: Option<Duration>,
    /// The end of the person's voice → the first frame of the answer played.
    pub voice_to_voice: Option<Duration>,
    /// The person talked over the reply.
    pub interrupted: bool,
    /// An engine failed and the fallback line was said.
    pub failed: Option<Stage>,
    /// What the oracle actually said.
    pub spoken: String,
}

/// Turns text into 48 kHz speech, whole (the fallback line, rendered once per oracle).
///
/// # Errors
/// The engine fails or says nothing.
pub async fn render(tts: &dyn TextToSpeech, text: &str) -> Result<Vec<i16>, EngineError> {
    let mut stream = tts.synthesize(text).await?;
    let mut up: Option<(u32, Upsampler)> = None;
    let mut out = Vec::new();
    while let Some(chunk) = stream.next().await {
        let chunk = chunk?;
        let u = match &mut up {
            Some((rate, u)) if *rate == chunk.rate => u,
            _ => &mut up.insert((chunk.rate, Upsampler::new(chunk.rate))).1,
        };
        out.extend(u.push(&chunk.samples));
    }
    if out.is_empty() {
        return Err(EngineError::Process {
            stage: Stage::TextToSpeech,
            reason: "no audio".into(),
        });
    }
    Ok(out)
}

/// A two-note tone, the fallback of last resort when even the fallback line cannot be
/// rendered (the text-to-speech engine is down at start).
pub fn fallback_tone() -> Vec<i16> {
    let mut out = Vec::with_capacity(CALL_RATE as usize / 2);
    for (f, n) in [(660.0f64, 12_000usize), (440.0, 12_000)] {
        for i in 0..n {
            let t = i as f64 / f64::from(CALL_RATE);
            out.push((6000.0 * (2.0 * std::f64::consts::PI * f * t).sin()) as i16);
        }
    }
    out
}

/// What a turn's task tells the session.
#[derive(Debug)]
enum Event {
    Transcript {
        reply: u64,
        text: String,
        at: Instant,
    },
    FirstToken {
        reply: u64,
        at: Instant,
    },
    Sentence {
        reply: u64,
        index: usize,
        text: String,
        at: Instant,
    },
    Audio {
        reply: u64,
        index: usize,
        frames: Vec<Vec<i16>>,
        at: Instant,
    },
    Finished {
        reply: u64,
    },
    NothingToSay {
        reply: u64,
    },
    Failed {
        reply: u64,
        error: EngineError,
    },
}

impl Event {
    fn reply(&self) -> u64 {
        match self {
            Self::Transcript { reply, .. }
            | Self::FirstToken { reply, .. }
            | Self::Sentence { reply, .. }
            | Self::Audio { reply, .. }
            | Self::Finished { reply }
            | Self::NothingToSay { reply }
            | Self::Failed { reply, .. } => *reply,
        }
    }
}

/// A sentence of a reply and how much of it was played.
#[derive(Debug, Default)]
struct Sentence {
    text: String,
    queued: usize,
    played: usize,
}

/// The sentence index of the fallback line.
const FALLBACK: usize = usize::MAX;

/// The reply being worked on or played.
#[derive(Debug)]
struct Reply {
    id: u64,
    task: Option<JoinHandle<()>>,
    producing: bool,
    sentences: Vec<Sentence>,
    fallback_played: usize,
    fallback_queued: bool,
    /// The person's audio of this turn, kept until its transcript is in (a barge-in before
    /// then makes it the start of the next turn instead of losing it).
    audio: Option<Vec<i16>>,
    metrics: TurnMetrics,
    speech_ended: Option<Instant>,
    end_of_turn: Option<Instant>,
    transcript_at: Option<Instant>,
    first_sentence_at: Option<Instant>,
}

impl Reply {
    fn new(id: u64) -> Self {
        Self {
            id,
            task: None,
            producing: true,
            sentences: Vec::new(),
            fallback_played: 0,
            fallback_queued: false,
            audio: None,
            metrics: TurnMetrics {
                reply: id,
                ..TurnMetrics::default()
            },
            speech_ended: None,
            end_of_turn: None,
            transcript_at: None,
            first_sentence_at: None,
        }
    }

    /// What was actually played: whole sentences, and the share of the words of a sentence
    /// cut off that matches the share of its audio played.
    fn spoken(&self, fallback_line: &str, fallback_len: usize) -> String {
        let mut parts: Vec<String> = Vec::new();
        for s in &self.sentences {
            if s.played == 0 {
                continue;
            }
            if s.played >= s.queued {
                parts.push(s.text.clone());
            } else {
                let words: Vec<&str> = s.text.split_whitespace().collect();
                let n = (words.len() * s.played).div_ceil(s.queued.max(1));
                parts.push(words.iter().take(n).copied().collect::<Vec<_>>().join(" "));
            }
        }
        if self.fallback_played > 0 && fallback_len > 0 {
            if self.fallback_played >= fallback_len {
                parts.push(fallback_line.to_owned());
            } else {
                let words: Vec<&str> = fallback_line.split_whitespace().collect();
                let n = (words.len() * self.fallback_played).div_ceil(fallback_len);
                parts.push(words.iter().take(n).copied().collect::<Vec<_>>().join(" "));
            }
        }
        parts.join(" ")
    }
}

impl Drop for Reply {
    fn drop(&mut self) {
        if let Some(t) = self.task.take() {
            t.abort();
        }
    }
}

/// One call's speaking oracle.
pub struct SpeechSession {
    cfg: SessionConfig,
    engines: Engines,
    fallback: Arc<[i16]>,
    turns: Turns,
    vad: VadFramer<Box<dyn Vad>>,
    start: Instant,
    /// The person's recent 16 kHz audio, each piece with the call time its end was heard.
    recent: VecDeque<(Duration, Vec<i16>)>,
    transcription: Option<Box<dyn Transcription>>,
    utterance: Vec<i16>,
    reply: Option<Reply>,
    queue: VecDeque<(u64, usize, Vec<i16>)>,
    /// Level of each frame played, newest last, with when it was played.
    played: VecDeque<(Instant, f32)>,
    /// Until when the person's audio counts as theirs whatever its level (see `echo_hold`).
    person_until: Option<Instant>,
    /// The level of each frame of the person's audio, newest last (for the echo finder).
    heard_levels: VecDeque<f32>,
    /// The level of each frame played, newest last, one per frame (for the echo finder).
    played_levels: VecDeque<f32>,
    /// Until when the oracle's voice counts as coming back (see `echo_ratio`); `None`: not
    /// enough heard yet to tell.
    echo_until: Option<Instant>,
    /// Whether the echo finder has had enough to tell at least once.
    echo_known: bool,
    history: Vec<Message>,
    events_tx: mpsc::UnboundedSender<Event>,
    events: mpsc::UnboundedReceiver<Event>,
    finished: Vec<TurnMetrics>,
    sink: Option<mpsc::UnboundedSender<TurnMetrics>>,
}

impl std::fmt::Debug for SpeechSession {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SpeechSession")
            .field("phase", &self.turns.phase())
            .field("queued_frames", &self.queue.len())
            .finish_non_exhaustive()
    }
}

impl SpeechSession {
    /// A session for one call. `fallback` is the fallback line already rendered at 48 kHz
    /// ([`render`], or [`fallback_tone`] when that failed).
    pub fn new(
        cfg: SessionConfig,
        engines: Engines,
        vad: Box<dyn Vad>,
        fallback: Arc<[i16]>,
        now: Instant,
    ) -> Self {
        let (events_tx, events) = mpsc::unbounded_channel();
        let turns = Turns::new(cfg.turns);
        Self {
            cfg,
            engines,
            fallback,
            turns,
            vad: VadFramer::new(vad),
            start: now,
            recent: VecDeque::new(),
            transcription: None,
            utterance: Vec::new(),
            reply: None,
            queue: VecDeque::new(),
            played: VecDeque::new(),
            person_until: None,
            heard_levels: VecDeque::new(),
            played_levels: VecDeque::new(),
            echo_until: None,
            echo_known: false,
            history: Vec::new(),
            events_tx,
            events,
            finished: Vec::new(),
            sink: None,
        }
    }

    /// Also sends each finished turn's metrics to `sink` (a benchmark, a monitor).
    pub fn set_metrics_sink(&mut self, sink: mpsc::UnboundedSender<TurnMetrics>) {
        self.sink = Some(sink);
    }

    /// Where the conversation is.
    pub fn phase(&self) -> Phase {
        self.turns.phase()
    }

    /// The conversation so far (the oracle's lines as played).
    pub fn history(&self) -> &[Message] {
        &self.history
    }

    /// The metrics of the turns finished since the last call.
    pub fn take_metrics(&mut self) -> Vec<TurnMetrics> {
        std::mem::take(&mut self.finished)
    }

    fn call_time(&self, now: Instant) -> Duration {
        now.saturating_duration_since(self.start)
    }

    /// The oracle speaks first (a greeting). Ignored unless the session is listening.
    pub fn say(&mut self, text: &str, now: Instant) {
        let Some(id) = self.turns.begin_reply() else {
            return;
        };
        let mut reply = Reply::new(id);
        reply.end_of_turn = Some(now);
        let tts = Arc::clone(&self.engines.tts);
        let tx = self.events_tx.clone();
        let dl = self.cfg.deadlines;
        let text = text.to_owned();
        reply.task = Some(tokio::spawn(async move {
            let mut split = SentenceSplitter::new();
            let mut sentences = split.push(&text);
            sentences.extend(split.finish());
            let (stx, srx) = mpsc::channel(sentences.len().max(1));
            for s in sentences {
                let _ = stx.try_send(s);
            }
            drop(stx);
            let result = speak_sentences(tts.as_ref(), dl, id, srx, &tx).await;
            let _ = tx.send(match result {
                Ok(()) => Event::Finished { reply: id },
                Err(error) => Event::Failed { reply: id, error },
            });
        }));
        self.reply = Some(reply);
    }

    /// One 20 ms frame (960 samples at 48 kHz) of the person's audio, heard at `now`.
    pub fn hear(&mut self, pcm48: &[i16], now: Instant) {
        self.drain_events();
        let at = self.call_time(now);
        let (pcm16, speech) = self.vad.push(pcm48);
        let echo = self.is_echo(pcm48, now);
        self.remember(at, pcm16.clone());
        let decision = self.turns.heard(at, FRAME, speech, echo);
        let opened = matches!(
            decision,
            Some(Decision::UserStarted { .. } | Decision::Interrupt { .. })
        );
        if let Some(d) = decision {
            self.decide(d, now);
        }
        if !opened && let Some(t) = &mut self.transcription {
            t.push(&pcm16);
            self.utterance.extend_from_slice(&pcm16);
        }
    }

    /// Time passes (call it every frame even when no audio came): ends a turn whose silence
    /// ran out, takes in what the engines produced.
    pub fn tick(&mut self, now: Instant) {
        self.drain_events();
        let at = self.call_time(now);
        if let Some(d) = self.turns.tick(at) {
            self.decide(d, now);
        }
    }

    /// The frame to play now: the next 20 ms of the current reply, or silence.
    pub fn next_frame(&mut self, now: Instant) -> Vec<i16> {
        self.drain_events();
        let current = self.reply.as_ref().map(|r| r.id);
        while let Some((id, index, frame)) = self.queue.pop_front() {
            if Some(id) != current {
                continue; // stale: never play a cancelled reply
            }
            if let Some(r) = &mut self.reply {
                if index == FALLBACK {
                    r.fallback_played += frame.len();
                } else if let Some(s) = r.sentences.get_mut(index) {
                    s.played += 1;
                }
                if r.metrics.voice_to_voice.is_none()
                    && let Some(end) = r.speech_ended
                {
                    r.metrics.voice_to_voice = Some(now.saturating_duration_since(end));
                }
            }
            self.note_played(now, rms(&frame));
            return frame;
        }
        self.note_played(now, 0.0);
        if self.reply.as_ref().is_some_and(|r| !r.producing) {
            self.reply_over(now);
        }
        vec![0; CALL_FRAME]
    }

    fn note_played(&mut self, now: Instant, level: f32) {
        self.played_levels.push_back(level);
        while self.played_levels.len() > ECHO_FIND_FRAMES {
            self.played_levels.pop_front();
        }
        self.played.push_back((now, level));
        while let Some((t, _)) = self.played.front() {
            if now.saturating_duration_since(*t) > self.cfg.echo_window {
                self.played.pop_front();
            } else {
                break;
            }
        }
    }

    /// Whether a frame of the person's audio is only the oracle's own voice coming back: it
    /// is quieter than the gate (see `echo_ratio`) times the loudest frame the oracle played
    /// within the echo window (an echo at −10 dB stays under a −6 dB gate whatever its delay
    /// in the window), and no louder frame in the last `echo_hold` showed the person talking.
    fn is_echo(&mut self, pcm48: &[i16], now: Instant) -> bool {
        let level = rms(pcm48);
        self.heard_levels.push_back(level);
        while self.heard_levels.len() > ECHO_FIND_FRAMES {
            self.heard_levels.pop_front();
        }
        if self.cfg.echo_ratio <= 0.0 {
            return false;
        }
        let loudest = self
            .played
            .iter()
            .filter(|(t, _)| now.saturating_duration_since(*t) <= self.cfg.echo_window)
            .map(|(_, l)| *l)
            .fold(0.0f32, f32::max);
        if loudest <= 0.0 {
            return false;
        }
        self.find_echo(now);
        if level >= self.echo_gate(now) * loudest {
            self.person_until = Some(now + self.cfg.echo_hold);
            return false;
        }
        self.person_until.is_none_or(|t| now >= t)
    }

    /// Looks for the oracle's voice in what comes back: the level of the person's last
    /// frames following the level of what was played, at a delay of 0–400 ms.
    fn find_echo(&mut self, now: Instant) {
        let n = ECHO_FIND_WINDOW;
        if self.heard_levels.len() < n || self.played_levels.len() < n + ECHO_MAX_LAG {
            return;
        }
        let heard: Vec<f32> = self.heard_levels.iter().rev().take(n).copied().collect();
        let played: Vec<f32> = self.played_levels.iter().rev().copied().collect();
        if played
            .iter()
            .take(n + ECHO_MAX_LAG)
            .all(|l| *l < ECHO_LEARN_LEVEL)
        {
            return; // the oracle was quiet: nothing to find
        }
        self.echo_known = true;
        let best = (0..=ECHO_MAX_LAG)
            .filter_map(|lag| correlation(&heard, played.get(lag..lag + n)?))
            .fold(f32::MIN, f32::max);
        if best >= ECHO_CORRELATION {
            self.echo_until = Some(now + ECHO_HOLD);
        }
    }

    /// The echo gate (share of the oracle's level) in force now.
    pub fn echo_gate(&self, now: Instant) -> f32 {
        let echo = !self.echo_known || self.echo_until.is_some_and(|t| now < t);
        if echo {
            self.cfg.echo_ratio
        } else {
            self.cfg.echo_floor.min(self.cfg.echo_ratio)
        }
    }

    fn remember(&mut self, at: Duration, pcm16: Vec<i16>) {
        self.recent.push_back((at, pcm16));
        let keep = self.cfg.prefix + self.cfg.turns.min_interruption + Duration::from_secs(1);
        while let Some((t, _)) = self.recent.front() {
            if at.saturating_sub(*t) > keep {
                self.recent.pop_front();
            } else {
                break;
            }
        }
    }

    /// Opens a transcription with the audio heard since `from` (less the prefix), and
    /// `carried` (an earlier utterance left unanswered) before it.
    fn open_turn(&mut self, from: Duration, carried: Option<Vec<i16>>) {
        let mut t = self.engines.stt.start();
        self.utterance.clear();
        if let Some(a) = carried {
            t.push(&a);
            self.utterance.extend_from_slice(&a);
        }
        let since = from.saturating_sub(self.cfg.prefix);
        for (end, pcm) in &self.recent {
            // A piece ending after `since` began after `since - 20 ms`.
            if *end > since {
                t.push(pcm);
                self.utterance.extend_from_slice(pcm);
            }
        }
        self.transcription = Some(t);
    }

    fn decide(&mut self, d: Decision, now: Instant) {
        debug!(decision = ?d, "turn");
        match d {
            Decision::UserStarted { from } => self.open_turn(from, None),
            Decision::UserDiscarded => {
                self.transcription = None;
                self.utterance.clear();
            }
            Decision::EndOfTurn {
                reply,
                speech_ended,
            } => {
                let Some(t) = self.transcription.take() else {
                    return;
                };
                let mut r = Reply::new(reply);
                r.speech_ended = Some(self.start + speech_ended);
                r.end_of_turn = Some(now);
                r.metrics.end_of_turn_wait = Some(self.call_time(now).saturating_sub(speech_ended));
                r.audio = Some(std::mem::take(&mut self.utterance));
                let history = self.history_for_brain();
                let engines = self.engines.clone();
                let tx = self.events_tx.clone();
                let dl = self.cfg.deadlines;
                r.task = Some(tokio::spawn(answer_turn(
                    engines, dl, reply, t, history, tx,
                )));
                self.reply = Some(r);
            }
            Decision::Interrupt { reply, from } => {
                let carried = self.reply.as_mut().and_then(|r| {
                    if r.id == reply && r.transcript_at.is_none() {
                        r.audio.take()
                    } else {
                        None
                    }
                });
                if let Some(r) = self.reply.as_mut().filter(|r| r.id == reply) {
                    r.metrics.interrupted = true;
                }
                info!(reply, "barge-in: the person is talking over the oracle");
                self.end_reply(now);
                self.open_turn(from, carried);
            }
        }
    }

    /// The conversation as the brain sees it: instructions, then the latest lines.
    fn history_for_brain(&self) -> Vec<Message> {
        let mut out = Vec::with_capacity(self.history.len() + 1);
        if let Some(i) = &self.cfg.instructions {
            out.push(Message::system(i.clone()));
        }
        out.extend(self.history.iter().cloned());
        out
    }

    fn drain_events(&mut self) {
        while let Ok(e) = self.events.try_recv() {
            self.on_event(e);
        }
    }

    fn on_event(&mut self, e: Event) {
        let Some(r) = self.reply.as_mut().filter(|r| r.id == e.reply()) else {
            return; // a cancelled reply's leftovers
        };
        match e {
            Event::Transcript { text, at, .. } => {
                r.transcript_at = Some(at);
                r.audio = None;
                r.metrics.speech_to_text = r.end_of_turn.map(|t| at.saturating_duration_since(t));
                r.metrics.heard.clone_from(&text);
                if !text.is_empty() {
                    self.history.push(Message::user(text));
                }
            }
            Event::FirstToken { at, .. } => {
                r.metrics.brain_first_token =
                    r.transcript_at.map(|t| at.saturating_duration_since(t));
            }
            Event::Sentence {
                index, text, at, ..
            } => {
                if r.first_sentence_at.is_none() {
                    r.first_sentence_at = Some(at);
                }
                if r.sentences.len() <= index {
                    r.sentences.resize_with(index + 1, Sentence::default);
                }
                if let Some(s) = r.sentences.get_mut(index) {
                    s.text = text;
                }
            }
            Event::Audio {
                index, frames, at, ..
            } => {
                if r.metrics.first_audio.is_none() {
                    r.metrics.first_audio =
                        r.first_sentence_at.map(|t| at.saturating_duration_since(t));
                }
                if let Some(s) = r.sentences.get_mut(index) {
                    s.queued += frames.len();
                }
                let id = r.id;
                self.queue
                    .extend(frames.into_iter().map(|f| (id, index, f)));
            }
            Event::Finished { .. } | Event::NothingToSay { .. } => r.producing = false,
            Event::Failed { error, .. } => {
                warn!(reply = r.id, stage = %error.stage(), error = %error, "an engine failed; saying the fallback line");
                r.metrics.failed = Some(error.stage());
                r.producing = false;
                if !r.fallback_queued {
                    r.fallback_queued = true;
                    let id = r.id;
                    for chunk in self.fallback.chunks(CALL_FRAME) {
                        let mut f = chunk.to_vec();
                        f.resize(CALL_FRAME, 0);
                        self.queue.push_back((id, FALLBACK, f));
                    }
                }
            }
        }
    }

    /// The current reply was played to its end (or had nothing to say).
    fn reply_over(&mut self, now: Instant) {
        let Some(id) = self.reply.as_ref().map(|r| r.id) else {
            return;
        };
        self.end_reply(now);
        if let Some(Decision::UserStarted { from }) = self.turns.reply_done(id) {
            self.open_turn(from, None);
        }
    }

    /// Stops the current reply: its task is aborted, its queued audio dropped, what was
    /// played of it goes into the conversation.
    fn end_reply(&mut self, _now: Instant) {
        let Some(mut r) = self.reply.take() else {
            return;
        };
        if let Some(t) = r.task.take() {
            t.abort();
        }
        self.queue.retain(|(id, _, _)| *id != r.id);
        let spoken = r.spoken(&self.cfg.fallback_line, self.fallback.len());
        if !spoken.is_empty() {
            self.history.push(Message::assistant(spoken.clone()));
        }
        r.metrics.spoken = spoken;
        let m = r.metrics.clone();
        info!(
            reply = m.reply,
            end_of_turn_wait_ms = ms(m.end_of_turn_wait),
            speech_to_text_ms = ms(m.speech_to_text),
            brain_first_token_ms = ms(m.brain_first_token),
            first_audio_ms = ms(m.first_audio),
            voice_to_voice_ms = ms(m.voice_to_voice),
            interrupted = m.interrupted,
            failed = m.failed.map(|s| s.to_string()),
            "turn over"
        );
        // What was said stays out of the logs unless asked for (it is the call's content).
        debug!(reply = m.reply, heard = %m.heard, spoken = %m.spoken, "turn content");
        if let Some(sink) = &self.sink {
            let _ = sink.send(m.clone());
        }
        self.finished.push(m);
        self.trim_history();
    }

    fn trim_history(&mut self) {
        let max = self.cfg.max_history.max(2);
        if self.history.len() > max {
            let cut = self.history.len() - max;
            self.history.drain(..cut);
        }
    }
}

fn ms(d: Option<Duration>) -> Option<u64> {
    d.map(|d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

/// Words that are not a question: a transcript of only these gets no answer.
const FILLERS: &[&str] = &[
    "mm", "mmm", "hmm", "mhm", "uh", "um", "umm", "ah", "oh", "er", "erm", "uhhuh",
];

fn is_filler(text: &str) -> bool {
    let words: Vec<String> = text
        .to_lowercase()
        .split(|c: char| !c.is_alphanumeric())
        .filter(|w| !w.is_empty())
        .map(str::to_owned)
        .collect();
    words.iter().all(|w| FILLERS.contains(&w.as_str()))
}

/// Transcribe, answer, speak: one turn's engine work.
async fn answer_turn(
    engines: Engines,
    dl: Deadlines,
    reply: u64,
    transcription: Box<dyn Transcription>,
    history: Vec<Message>,
    tx: mpsc::UnboundedSender<Event>,
) {
    let result = answer_turn_inner(&engines, dl, reply, transcription, history, &tx).await;
    let _ = tx.send(match result {
        Ok(true) => Event::Finished { reply },
        Ok(false) => Event::NothingToSay { reply },
        Err(error) => Event::Failed { reply, error },
    });
}

async fn answer_turn_inner(
    engines: &Engines,
    dl: Deadlines,
    reply: u64,
    transcription: Box<dyn Transcription>,
    mut conversation: Vec<Message>,
    tx: &mpsc::UnboundedSender<Event>,
) -> Result<bool, EngineError> {
    let text = tokio::time::timeout(dl.transcript, transcription.finish())
        .await
        .map_err(|_| EngineError::Timeout {
            stage: Stage::SpeechToText,
            after: dl.transcript,
        })??;
    let text = text.trim().to_owned();
    let _ = tx.send(Event::Transcript {
        reply,
        text: text.clone(),
        at: Instant::now(),
    });
    if is_filler(&text) {
        return Ok(false);
    }
    conversation.push(Message::user(text));
    let (stx, srx) = mpsc::channel::<String>(32);
    let brain = think(engines.brain.as_ref(), dl, reply, conversation, stx, tx);
    let voice = speak_sentences(engines.tts.as_ref(), dl, reply, srx, tx);
    tokio::try_join!(brain, voice)?;
    Ok(true)
}

/// Runs the brain, passing each finished sentence on while it keeps generating.
async fn think(
    brain: &dyn Brain,
    dl: Deadlines,
    reply: u64,
    conversation: Vec<Message>,
    sentences: mpsc::Sender<String>,
    tx: &mpsc::UnboundedSender<Event>,
) -> Result<(), EngineError> {
    let timeout = |after| EngineError::Timeout {
        stage: Stage::Brain,
        after,
    };
    let mut stream = tokio::time::timeout(dl.first_token, brain.answer(conversation))
        .await
        .map_err(|_| timeout(dl.first_token))??;
    let mut split = SentenceSplitter::new();
    let mut first = true;
    loop {
        let wait = if first { dl.first_token } else { dl.token_gap };
        let Some(delta) = tokio::time::timeout(wait, stream.next())
            .await
            .map_err(|_| timeout(wait))?
        else {
            break;
        };
        let delta = delta?;
        if first && !delta.trim().is_empty() {
            first = false;
            let _ = tx.send(Event::FirstToken {
                reply,
                at: Instant::now(),
            });
        }
        for s in split.push(&delta) {
            if sentences.send(s).await.is_err() {
                return Ok(()); // the voice side ended (and reports why)
            }
        }
    }
    if let Some(s) = split.finish() {
        let _ = sentences.send(s).await;
    } else if first {
        // Nothing to say would leave the person in silence: the fallback line instead.
        return Err(EngineError::Malformed {
            stage: Stage::Brain,
            reason: "the answer was empty".into(),
        });
    }
    Ok(())
}

/// Speaks sentences as they come, framing the audio for the call.
async fn speak_sentences(
    tts: &dyn TextToSpeech,
    dl: Deadlines,
    reply: u64,
    mut sentences: mpsc::Receiver<String>,
    tx: &mpsc::UnboundedSender<Event>,
) -> Result<(), EngineError> {
    let timeout = |after| EngineError::Timeout {
        stage: Stage::TextToSpeech,
        after,
    };
    let mut index = 0usize;
    while let Some(text) = sentences.recv().await {
        let _ = tx.send(Event::Sentence {
            reply,
            index,
            text: text.clone(),
            at: Instant::now(),
        });
        let mut stream = tokio::time::timeout(dl.first_audio, tts.synthesize(&text))
            .await
            .map_err(|_| timeout(dl.first_audio))??;
        let mut up: Option<(u32, Upsampler)> = None;
        let mut framer = Framer::default();
        let mut first = true;
        loop {
            let wait = if first { dl.first_audio } else { dl.audio_gap };
            let Some(chunk) = tokio::time::timeout(wait, stream.next())
                .await
                .map_err(|_| timeout(wait))?
            else {
                break;
            };
            let chunk = chunk?;
            first = false;
            if chunk.rate < 8_000 || chunk.rate > 192_000 {
                return Err(EngineError::Malformed {
                    stage: Stage::TextToSpeech,
                    reason: format!("audio at {} Hz", chunk.rate),
                });
            }
            let u = match &mut up {
                Some((rate, u)) if *rate == chunk.rate => u,
                _ => &mut up.insert((chunk.rate, Upsampler::new(chunk.rate))).1,
            };
            let frames = framer.push(&u.push(&chunk.samples));
            if !frames.is_empty() {
                let _ = tx.send(Event::Audio {
                    reply,
                    index,
                    frames,
                    at: Instant::now(),
                });
            }
        }
        if let Some(last) = framer.flush() {
            let _ = tx.send(Event::Audio {
                reply,
                index,
                frames: vec![last],
                at: Instant::now(),
            });
        }
        index += 1;
    }
    Ok(())
}

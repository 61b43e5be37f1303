//! The speech session in call time with scripted engines: answers, barge-in, false
//! interruptions, echo, engine failures. Real time (20 ms per frame), real tasks; only the
//! engines are scripted, so each test knows what every frame should hold.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::indexing_slicing,
    clippy::panic
)]

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use futures_util::StreamExt;
use oracle_calls_speech::audio::rms;
use oracle_calls_speech::session::{Deadlines, Engines, SessionConfig, SpeechSession};
use oracle_calls_speech::turn::Phase;
use oracle_calls_speech::vad::EnergyVad;
use oracle_calls_speech::{
    AudioStream, Brain, EngineError, Message, Pcm, Role, SpeechToText, Stage, TextStream,
    TextToSpeech, Transcription,
};

/// Speech-to-text that answers with the next line of a script.
struct ScriptStt {
    lines: Mutex<Vec<Result<String, ()>>>,
    heard: Arc<Mutex<Vec<usize>>>,
}

struct ScriptTranscription {
    answer: Result<String, ()>,
    samples: usize,
    heard: Arc<Mutex<Vec<usize>>>,
}

impl SpeechToText for ScriptStt {
    fn start(&self) -> Box<dyn Transcription> {
        let mut lines = self.lines.lock().unwrap();
        let answer = if lines.is_empty() {
            Ok("nothing scripted".into())
        } else {
            lines.remove(0)
        };
        Box::new(ScriptTranscription {
            answer,
            samples: 0,
            heard: Arc::clone(&self.heard),
        })
    }
}

#[async_trait]
impl Transcription for ScriptTranscription {
    fn push(&mut self, pcm16k: &[i16]) {
        self.samples += pcm16k.len();
    }
    async fn finish(self: Box<Self>) -> Result<String, EngineError> {
        self.heard.lock().unwrap().push(self.samples);
        tokio::time::sleep(Duration::from_millis(50)).await;
        self.answer.map_err(|()| EngineError::Connection {
            stage: Stage::SpeechToText,
            reason: "scripted failure".into(),
        })
    }
}

/// A brain that answers a question with the sentences scripted for it, one every `gap`;
/// `FAIL` as a sentence fails the stream there, `HANG` never answers.
struct ScriptBrain {
    answers: Vec<(&'static str, Vec<&'static str>)>,
    gap: Duration,
    seen: Arc<Mutex<Vec<Vec<Message>>>>,
}

#[async_trait]
impl Brain for ScriptBrain {
    async fn answer(&self, conversation: Vec<Message>) -> Result<TextStream, EngineError> {
        self.seen.lock().unwrap().push(conversation.clone());
        let q = conversation.last().unwrap().content.clone();
        let sentences = self
            .answers
            .iter()
            .find(|(k, _)| q.contains(k))
            .map(|(_, s)| s.clone())
            .unwrap_or_else(|| vec!["Short unknown."]);
        let gap = self.gap;
        Ok(futures_util::stream::iter(sentences)
            .then(move |s| async move {
                tokio::time::sleep(gap).await;
                match s {
                    "FAIL" => Err(EngineError::Connection {
                        stage: Stage::Brain,
                        reason: "the stream ended before the answer did".into(),
                    }),
                    "EMPTY" => Ok(" ".to_owned()),
                    "HANG" => {
                        tokio::time::sleep(Duration::from_secs(3600)).await;
                        Ok(String::new())
                    }
                    s => Ok(format!("{s} ")),
                }
            })
            .boxed())
    }
}

/// Speech as a 16 kHz tone, 150 ms per word: a sentence starting with "Long" at one level,
/// "Short" at another, so a frame tells which answer it belongs to. "Broken" fails.
struct ToneTts;

const LONG_LEVEL: f32 = 6000.0 / 32768.0 / std::f32::consts::SQRT_2;
const SHORT_LEVEL: f32 = 12000.0 / 32768.0 / std::f32::consts::SQRT_2;

#[async_trait]
impl TextToSpeech for ToneTts {
    async fn synthesize(&self, text: &str) -> Result<AudioStream, EngineError> {
        if text.starts_with("Broken") {
            return Err(EngineError::Process {
                stage: Stage::TextToSpeech,
                reason: "scripted failure".into(),
            });
        }
        let amp = if text.starts_with("Long") {
            6000.0
        } else {
            12000.0
        };
        let n = text.split_whitespace().count() * 2400;
        let samples: Vec<i16> = (0..n)
            .map(|i| (amp * (2.0 * std::f64::consts::PI * 300.0 * i as f64 / 16000.0).sin()) as i16)
            .collect();
        let chunks: Vec<Result<Pcm, EngineError>> = samples
            .chunks(1600)
            .map(|c| {
                Ok(Pcm {
                    rate: 16000,
                    samples: c.to_vec(),
                })
            })
            .collect();
        Ok(futures_util::stream::iter(chunks).boxed())
    }
}

/// The fallback "line": a square wave at its own level.
fn fallback() -> Arc<[i16]> {
    (0..24_000)
        .map(|i| if i % 48 < 24 { 2000 } else { -2000 })
        .collect()
}
const FALLBACK_LEVEL: f32 = 2000.0 / 32768.0;

fn voice(k: usize) -> Vec<i16> {
    (0..960)
        .map(|i| {
            let n = (k * 960 + i) as f64;
            (8000.0 * (2.0 * std::f64::consts::PI * 180.0 * n / 48000.0).sin()) as i16
        })
        .collect()
}

fn silence() -> Vec<i16> {
    vec![0; 960]
}

/// What a played frame holds.
#[derive(Clone, Copy, Debug, PartialEq)]
enum Out {
    Silence,
    Long,
    Short,
    Fallback,
}

fn classify(f: &[i16]) -> Out {
    // The level of the sound in the frame (a sentence's last frame is padded with silence).
    let sound: Vec<i16> = f.iter().copied().filter(|s| *s != 0).collect();
    if sound.len() < 48 {
        return Out::Silence;
    }
    let l = rms(&sound);
    let near = |x: f32| (l - x).abs() < x * 0.25;
    if l < 0.002 {
        Out::Silence
    } else if near(LONG_LEVEL) {
        Out::Long
    } else if near(SHORT_LEVEL) {
        Out::Short
    } else if near(FALLBACK_LEVEL) {
        Out::Fallback
    } else {
        panic!("a frame at level {l}")
    }
}

struct Sim {
    s: SpeechSession,
    out: Vec<Out>,
    played: Vec<Vec<i16>>,
    stt_heard: Arc<Mutex<Vec<usize>>>,
    brain_seen: Arc<Mutex<Vec<Vec<Message>>>>,
    /// Feed the oracle's own output back into its input: (gain, delay in frames).
    echo: Option<(f32, usize)>,
    k: usize,
}

impl Sim {
    fn new(stt: Vec<Result<&str, ()>>, answers: Vec<(&'static str, Vec<&'static str>)>) -> Self {
        Self::with(stt, answers, SessionConfig::default())
    }

    fn with(
        stt: Vec<Result<&str, ()>>,
        answers: Vec<(&'static str, Vec<&'static str>)>,
        cfg: SessionConfig,
    ) -> Self {
        let stt_heard = Arc::new(Mutex::new(Vec::new()));
        let brain_seen = Arc::new(Mutex::new(Vec::new()));
        let engines = Engines {
            stt: Arc::new(ScriptStt {
                lines: Mutex::new(stt.into_iter().map(|r| r.map(str::to_owned)).collect()),
                heard: Arc::clone(&stt_heard),
            }),
            brain: Arc::new(ScriptBrain {
                answers,
                gap: Duration::from_millis(30),
                seen: Arc::clone(&brain_seen),
            }),
            tts: Arc::new(ToneTts),
        };
        let s = SpeechSession::new(
            cfg,
            engines,
            Box::new(EnergyVad { threshold: 0.05 }),
            fallback(),
            Instant::now(),
        );
        Self {
            s,
            out: Vec::new(),
            played: Vec::new(),
            stt_heard,
            brain_seen,
            echo: None,
            k: 0,
        }
    }

    /// One 20 ms step of call time, in real time.
    async fn step(&mut self, mut input: Vec<i16>) {
        if let Some((gain, delay)) = self.echo
            && self.played.len() > delay
        {
            let back = &self.played[self.played.len() - 1 - delay];
            for (x, b) in input.iter_mut().zip(back) {
                *x = x.saturating_add((f32::from(*b) * gain) as i16);
            }
        }
        let now = Instant::now();
        self.s.hear(&input, now);
        self.s.tick(now);
        let f = self.s.next_frame(now);
        self.out.push(classify(&f));
        self.played.push(f);
        self.k += 1;
        tokio::time::sleep(Duration::from_millis(20)).await;
    }

    async fn speak(&mut self, frames: usize) {
        for _ in 0..frames {
            let v = voice(self.k);
            self.step(v).await;
        }
    }

    async fn quiet(&mut self, frames: usize) {
        for _ in 0..frames {
            self.step(silence()).await;
        }
    }

    /// Steps in silence until the output is `what` (bounded).
    async fn until(&mut self, what: Out, max: usize) -> usize {
        for _ in 0..max {
            self.step(silence()).await;
            if *self.out.last().unwrap() == what {
                return self.k - 1;
            }
        }
        panic!("no {what:?} within {max} frames: {:?}", self.runs());
    }

    fn runs(&self) -> Vec<(Out, usize)> {
        let mut r: Vec<(Out, usize)> = Vec::new();
        for o in &self.out {
            match r.last_mut() {
                Some((x, n)) if x == o => *n += 1,
                _ => r.push((*o, 1)),
            }
        }
        r
    }

    fn assistant_lines(&self) -> Vec<String> {
        self.s
            .history()
            .iter()
            .filter(|m| m.role == Role::Assistant)
            .map(|m| m.content.clone())
            .collect()
    }
}

#[tokio::test]
async fn a_question_is_answered_sentence_by_sentence_and_the_history_keeps_it() {
    let mut sim = Sim::new(
        vec![Ok("what is the answer")],
        vec![("answer", vec!["Short one two.", "Short three four five."])],
    );
    sim.quiet(5).await;
    sim.speak(40).await;
    let voice_end = sim.k;
    let first = sim.until(Out::Short, 150).await;
    // End of turn after 500 ms of silence, then engines: well under 1.5 s here.
    assert!(
        first - voice_end >= 25,
        "answered before the end of the turn"
    );
    assert!(first - voice_end < 75, "{}", first - voice_end);
    sim.quiet(150).await;
    let runs = sim.runs();
    let short: usize = runs
        .iter()
        .filter(|(o, _)| *o == Out::Short)
        .map(|(_, n)| n)
        .sum();
    // 7 words × 150 ms = 1.05 s = 53 frames (two sentences, each padded to a frame).
    assert!((52..=54).contains(&short), "{runs:?}");
    assert_eq!(sim.s.phase(), Phase::Listening);
    let h = sim.s.history();
    assert_eq!(h[0], Message::user("what is the answer"));
    assert_eq!(
        h[1],
        Message::assistant("Short one two. Short three four five.")
    );
    // The transcription got the whole utterance: 800 ms of voice + the 300 ms prefix
    // before it (100 ms of silence existed) + the silence until the end of the turn.
    let heard = sim.stt_heard.lock().unwrap()[0];
    assert!(
        (16_000..=23_000).contains(&heard),
        "{heard} samples at 16 kHz"
    );
    let m = sim.s.take_metrics();
    assert_eq!(m.len(), 1);
    let v2v = m[0].voice_to_voice.unwrap();
    assert!(
        v2v >= Duration::from_millis(500) && v2v < Duration::from_millis(1500),
        "{v2v:?}"
    );
    assert!(m[0].end_of_turn_wait.unwrap() >= Duration::from_millis(480));
    assert!(m[0].speech_to_text.is_some() && m[0].brain_first_token.is_some());
    assert!(m[0].first_audio.is_some());
}

#[tokio::test]
async fn barge_in_cuts_the_reply_within_the_threshold_plus_a_frame_and_nothing_of_it_plays_after() {
    let long = vec![
        "Long a b c d e f g.",
        "Long h i j k l m n.",
        "Long o p q r s t u.",
        "Long v w x y z a b.",
    ];
    let mut sim = Sim::new(
        vec![Ok("tell me the long story"), Ok("stop and answer this")],
        vec![("long", long), ("answer this", vec!["Short yes."])],
    );
    sim.speak(30).await;
    sim.until(Out::Long, 150).await;
    sim.quiet(40).await; // 0.8 s of the long answer (1.2 s per sentence)
    let onset = sim.k;
    sim.speak(30).await;
    let runs_at_cut = sim.out[onset..].to_vec();
    let stopped = runs_at_cut
        .iter()
        .position(|o| *o == Out::Silence)
        .expect("the oracle stopped");
    // 500 ms = 25 frames of voice; the 26th frame is already silent.
    assert!(stopped <= 26, "stopped {stopped} frames after the onset");
    assert!(stopped >= 24, "stopped too early: {stopped}");
    sim.quiet(10).await;
    let reply_at = sim.until(Out::Short, 150).await;
    // Between the cut and the new answer: no frame of the cancelled answer.
    assert!(
        sim.out[onset + stopped..reply_at]
            .iter()
            .all(|o| *o == Out::Silence),
        "{:?}",
        sim.runs()
    );
    sim.quiet(60).await;
    assert!(!sim.out[reply_at..].contains(&Out::Long));
    // The history keeps what was played: the first sentence cut about 1.3 s in, not the rest.
    let lines = sim.assistant_lines();
    assert_eq!(lines.len(), 2, "{:?}", sim.s.history());
    assert!(lines[0].starts_with("Long a b c d e f g."), "{}", lines[0]);
    assert!(
        lines[0].len() < "Long a b c d e f g. Long h i j k l m n.".len(),
        "{}",
        lines[0]
    );
    assert!(!lines[0].contains("Long o"), "{}", lines[0]);
    assert_eq!(lines[1], "Short yes.");
    // The brain saw the cut line for the second question.
    let seen = sim.brain_seen.lock().unwrap();
    assert_eq!(seen[1][1].content, lines[0]);
    let m = sim.s.take_metrics();
    assert!(m[0].interrupted && !m[1].interrupted);
}

#[tokio::test]
async fn a_click_and_a_short_mm_do_not_stop_the_oracle() {
    let long = vec!["Long a b c d e f g.", "Long h i j k l m n."];
    let mut sim = Sim::new(vec![Ok("the long one please")], vec![("long", long)]);
    sim.speak(30).await;
    let start = sim.until(Out::Long, 150).await;
    sim.quiet(10).await;
    sim.speak(7).await; // a 140 ms click
    sim.quiet(20).await;
    sim.speak(15).await; // a 300 ms "mm"
    sim.quiet(150).await;
    let played = sim.out[start..].iter().filter(|o| **o == Out::Long).count();
    // 16 words × 150 ms = 2.4 s = 120 frames, all of them.
    assert!((120..=122).contains(&played), "{:?}", sim.runs());
    assert_eq!(
        sim.assistant_lines(),
        vec!["Long a b c d e f g. Long h i j k l m n."]
    );
    assert_eq!(sim.stt_heard.lock().unwrap().len(), 1, "no new turn");
}

#[tokio::test]
async fn the_oracles_own_voice_leaking_back_does_not_interrupt_it() {
    let long = vec![
        "Long a b c d e f g h i j.",
        "Long k l m n o p q r s t.",
        "Long u v w x y z a b c d.",
    ];
    let mut sim = Sim::new(vec![Ok("the long one please")], vec![("long", long)]);
    sim.echo = Some((0.316, 5)); // −10 dB, 100 ms later
    sim.speak(30).await;
    let start = sim.until(Out::Long, 150).await;
    sim.quiet(280).await;
    // The gate found the echo.
    assert!(
        sim.s.echo_gate(Instant::now()) > 0.45,
        "{}",
        sim.s.echo_gate(Instant::now())
    );
    let played = sim.out[start..].iter().filter(|o| **o == Out::Long).count();
    // 33 words × 150 ms = 4.95 s = 248 frames.
    assert!((247..=250).contains(&played), "{:?}", sim.runs());
    assert_eq!(sim.stt_heard.lock().unwrap().len(), 1, "no new turn");
    assert!(!sim.s.take_metrics()[0].interrupted);
}

#[tokio::test]
async fn with_the_echo_leaking_back_a_short_mm_still_does_not_stop_it_but_speech_does() {
    let long = vec![
        "Long a b c d e f g h i j.",
        "Long k l m n o p q r s t.",
        "Long u v w x y z a b c d.",
    ];
    let mut sim = Sim::new(
        vec![Ok("the long one please"), Ok("now the answer")],
        vec![("long", long), ("answer", vec!["Short fine."])],
    );
    sim.echo = Some((0.316, 5));
    sim.speak(30).await;
    sim.until(Out::Long, 150).await;
    sim.quiet(20).await;
    sim.speak(15).await; // a 300 ms "mm" over the oracle's echo
    sim.quiet(30).await;
    assert_eq!(*sim.out.last().unwrap(), Out::Long, "{:?}", sim.runs());
    let onset = sim.k;
    sim.speak(30).await;
    let stopped = sim.out[onset..]
        .iter()
        .position(|o| *o == Out::Silence)
        .expect("the oracle stopped");
    assert!(
        (24..=26).contains(&stopped),
        "stopped {stopped} frames after the onset"
    );
    sim.until(Out::Short, 150).await;
}

#[tokio::test]
async fn a_quiet_person_can_talk_over_an_oracle_whose_voice_does_not_come_back() {
    let long = vec![
        "Long a b c d e f g h i j.",
        "Long k l m n o p q r s t.",
        "Long u v w x y z a b c d.",
    ];
    let mut sim = Sim::new(
        vec![Ok("the long one please"), Ok("now the answer")],
        vec![("long", long), ("answer", vec!["Short fine."])],
    );
    sim.speak(30).await;
    sim.until(Out::Long, 150).await;
    // At first the gate assumes the worst (half the oracle's level)…
    assert!((sim.s.echo_gate(Instant::now()) - 0.5).abs() < 1e-6);
    sim.quiet(100).await;
    // …two seconds of the oracle with nothing coming back show there is no echo.
    assert!(
        sim.s.echo_gate(Instant::now()) < 0.05,
        "{}",
        sim.s.echo_gate(Instant::now())
    );
    // A person at a third of the oracle's level (under the starting gate) interrupts. Before
    // the gate learnt, the same voice would have been taken for an echo.
    assert!(rms(&voice(0).iter().map(|v| v / 3).collect::<Vec<_>>()) < 0.5 * LONG_LEVEL);
    let onset = sim.k;
    for _ in 0..30 {
        let quiet: Vec<i16> = voice(sim.k).iter().map(|v| v / 3).collect();
        sim.step(quiet).await;
    }
    let stopped = sim.out[onset..]
        .iter()
        .position(|o| *o == Out::Silence)
        .expect("the oracle stopped");
    assert!(
        (24..=26).contains(&stopped),
        "stopped {stopped} frames after the onset"
    );
}

#[tokio::test]
async fn an_engine_failure_says_the_fallback_and_listens_again() {
    let mut sim = Sim::new(
        vec![Err(()), Ok("now the answer")],
        vec![("answer", vec!["Short fine."])],
    );
    sim.speak(30).await;
    sim.until(Out::Fallback, 100).await;
    sim.quiet(40).await;
    assert_eq!(sim.s.phase(), Phase::Listening);
    assert_eq!(sim.s.take_metrics()[0].failed, Some(Stage::SpeechToText));
    sim.speak(30).await;
    sim.until(Out::Short, 100).await;
}

#[tokio::test]
async fn a_brain_that_breaks_mid_answer_keeps_what_was_said_then_falls_back() {
    let mut sim = Sim::new(
        vec![Ok("break please")],
        vec![("break", vec!["Short first part.", "FAIL"])],
    );
    sim.speak(30).await;
    sim.until(Out::Short, 100).await;
    sim.until(Out::Fallback, 100).await;
    sim.quiet(40).await;
    let lines = sim.assistant_lines();
    assert_eq!(lines.len(), 1);
    assert!(lines[0].starts_with("Short first part. Sorry"), "{lines:?}");
    assert_eq!(sim.s.take_metrics()[0].failed, Some(Stage::Brain));
    assert_eq!(sim.s.phase(), Phase::Listening);
}

#[tokio::test]
async fn a_hung_brain_and_a_broken_voice_hit_their_deadlines() {
    let cfg = SessionConfig {
        deadlines: Deadlines {
            first_token: Duration::from_millis(400),
            ..Deadlines::default()
        },
        ..SessionConfig::default()
    };
    let mut sim = Sim::with(
        vec![Ok("hang please"), Ok("broken please")],
        vec![("hang", vec!["HANG"]), ("broken", vec!["Broken voice."])],
        cfg,
    );
    sim.speak(30).await;
    let eot = sim.k;
    let fb = sim.until(Out::Fallback, 100).await;
    // 500 ms of silence + 50 ms transcription + the 400 ms deadline (frames run a little
    // slower than 20 ms of real time here).
    assert!(fb - eot >= 40, "{}", fb - eot);
    sim.quiet(40).await;
    sim.speak(30).await;
    sim.until(Out::Fallback, 100).await;
    sim.quiet(40).await;
    let m = sim.s.take_metrics();
    assert_eq!(m[0].failed, Some(Stage::Brain));
    assert_eq!(m[1].failed, Some(Stage::TextToSpeech));
    assert_eq!(sim.s.phase(), Phase::Listening);
}

#[tokio::test]
async fn a_brain_that_answers_nothing_gets_the_fallback_not_silence() {
    let mut sim = Sim::new(vec![Ok("empty please")], vec![("empty", vec!["EMPTY"])]);
    sim.speak(30).await;
    sim.until(Out::Fallback, 100).await;
    sim.quiet(40).await;
    assert_eq!(sim.s.take_metrics()[0].failed, Some(Stage::Brain));
    assert_eq!(sim.s.phase(), Phase::Listening);
}

#[tokio::test]
async fn a_filler_gets_no_answer() {
    let mut sim = Sim::new(
        vec![Ok("Hmm."), Ok("the answer")],
        vec![("answer", vec!["Short ok."])],
    );
    sim.speak(15).await;
    sim.quiet(80).await;
    assert!(sim.out.iter().all(|o| *o == Out::Silence));
    assert_eq!(sim.s.phase(), Phase::Listening);
    assert!(sim.brain_seen.lock().unwrap().is_empty());
    sim.speak(30).await;
    sim.until(Out::Short, 100).await;
}

#[tokio::test]
async fn the_greeting_plays_first_and_a_question_can_cut_it() {
    let mut sim = Sim::new(vec![Ok("the answer")], vec![("answer", vec!["Short ok."])]);
    sim.s.say(
        "Long hello there, I am the oracle of this test, ask away.",
        Instant::now(),
    );
    sim.until(Out::Long, 20).await;
    sim.speak(40).await;
    sim.until(Out::Short, 100).await;
    let lines = sim.assistant_lines();
    assert!(!lines.is_empty(), "{:?} {:?}", sim.s.history(), sim.runs());
    assert!(
        lines[0].starts_with("Long hello") && !lines[0].contains("ask away"),
        "{lines:?}"
    );
}

/// A log writer that keeps everything written to it.
#[derive(Clone, Default)]
struct Captured(Arc<Mutex<Vec<u8>>>);

impl std::io::Write for Captured {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

#[tokio::test]
async fn what_was_said_stays_out_of_the_logs_at_info() {
    let logs = Captured::default();
    let writer = logs.clone();
    let subscriber = tracing_subscriber::fmt()
        .with_max_level(tracing::Level::INFO)
        .with_writer(move || writer.clone())
        .finish();
    let _guard = tracing::subscriber::set_default(subscriber);
    let mut sim = Sim::new(
        vec![Ok("my secret question about zanzibar")],
        vec![("zanzibar", vec!["Short the secret answer quokka."])],
    );
    sim.speak(30).await;
    sim.until(Out::Short, 100).await;
    sim.quiet(60).await;
    assert_eq!(sim.s.take_metrics().len(), 1);
    let text = String::from_utf8(logs.0.lock().unwrap().clone()).unwrap();
    assert!(text.contains("turn over"), "the turn was logged: {text}");
    assert!(
        !text.contains("zanzibar") && !text.contains("quokka"),
        "{text}"
    );
}

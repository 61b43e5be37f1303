//! Turn-taking as a state machine without IO: time is passed in, decisions come out.
//!
//! ```text
//!            voice                     silence ≥ end_of_turn_silence
//! Listening ───────▶ UserSpeaking ───────────────────────────────────▶ Answering(reply)
//!     ▲                   │ too short (a click): UserDiscarded          │   │
//!     │◀──────────────────┘                                             │   │ user voice ≥ min_interruption
//!     │◀──────────── ReplyDone(reply) ────────────────────────────────────┘   ▼
//!     │                                          Interrupt(reply) ──▶ UserSpeaking (the barge-in is the new turn)
//! ```
//!
//! While the oracle answers, the person's voice must last `min_interruption` (allowing short
//! gaps) before the oracle stops; a click, a cough or a short "mm" never reaches it and
//! changes nothing. Frames the caller marks as `echo` (the oracle's own voice coming back
//! through the person's microphone) never count as the person's voice.

use std::time::Duration;

/// Turn-taking settings.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct TurnConfig {
    /// Speech probability at which a frame becomes voice.
    pub activation: f32,
    /// Once in voice, the probability below which it stops being voice.
    pub deactivation: f32,
    /// Voice a turn needs in all; less is a click or a breath and is dropped.
    pub min_speech: Duration,
    /// Silence after the person's voice that ends their turn.
    pub end_of_turn_silence: Duration,
    /// Voice over the oracle that stops it (barge-in).
    pub min_interruption: Duration,
    /// Silence that ends a would-be interruption (it was a click, a cough, an "mm").
    pub interruption_gap: Duration,
    /// The longest turn; a turn this long is answered even if the person goes on.
    pub max_turn: Duration,
}

impl Default for TurnConfig {
    fn default() -> Self {
        Self {
            activation: 0.5,
            deactivation: 0.35,
            min_speech: Duration::from_millis(100),
            end_of_turn_silence: Duration::from_millis(500),
            min_interruption: Duration::from_millis(500),
            interruption_gap: Duration::from_millis(250),
            max_turn: Duration::from_secs(30),
        }
    }
}

/// What the machine decided.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Decision {
    /// The person started speaking at `from`: keep their audio from then on.
    UserStarted {
        /// When the first voiced frame began.
        from: Duration,
    },
    /// The person's turn is over: answer it as reply `reply`.
    EndOfTurn {
        /// The reply's generation; anything from an older generation is stale.
        reply: u64,
        /// When the person's voice last ended (the end-of-turn wait runs from here).
        speech_ended: Duration,
    },
    /// What was kept since `UserStarted` was not speech (too short): forget it.
    UserDiscarded,
    /// The person is talking over reply `reply`: stop it now (drop queued audio, cancel its
    /// engines); their speech since `from` is the start of a new turn.
    Interrupt {
        /// The reply to stop.
        reply: u64,
        /// When the interrupting voice began.
        from: Duration,
    },
}

/// Where the conversation is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Phase {
    /// Waiting for the person.
    Listening,
    /// The person is speaking.
    UserSpeaking,
    /// The oracle is working on or speaking reply `reply`.
    Answering {
        /// The reply.
        reply: u64,
    },
}

#[derive(Clone, Copy, Debug)]
struct Voice {
    /// Start of the first voiced frame.
    started: Duration,
    /// Voiced time in all.
    voiced: Duration,
    /// End of the last voiced frame.
    last_voice: Duration,
}

#[derive(Clone, Copy, Debug)]
enum State {
    Listening,
    UserSpeaking(Voice),
    Answering { reply: u64, barge: Option<Voice> },
}

/// The turn-taking machine of one call.
#[derive(Debug)]
pub struct Turns {
    cfg: TurnConfig,
    state: State,
    in_voice: bool,
    next_reply: u64,
}

impl Turns {
    /// A machine that starts by listening.
    pub fn new(cfg: TurnConfig) -> Self {
        Self {
            cfg,
            state: State::Listening,
            in_voice: false,
            next_reply: 1,
        }
    }

    /// Where the conversation is.
    pub fn phase(&self) -> Phase {
        match self.state {
            State::Listening => Phase::Listening,
            State::UserSpeaking(_) => Phase::UserSpeaking,
            State::Answering { reply, .. } => Phase::Answering { reply },
        }
    }

    /// The oracle starts speaking on its own (a greeting): reply `reply`, as if answering.
    /// Ignored unless listening.
    pub fn begin_reply(&mut self) -> Option<u64> {
        if !matches!(self.state, State::Listening) {
            return None;
        }
        let reply = self.take_reply();
        self.state = State::Answering { reply, barge: None };
        Some(reply)
    }

    fn take_reply(&mut self) -> u64 {
        let g = self.next_reply;
        self.next_reply += 1;
        g
    }

    /// One frame of the person's audio, `len` long, ending at `at`, with the detector's speech
    /// probability. `echo`: the caller found the frame to be the oracle's own voice.
    pub fn heard(
        &mut self,
        at: Duration,
        len: Duration,
        speech: f32,
        echo: bool,
    ) -> Option<Decision> {
        let threshold = if self.in_voice {
            self.cfg.deactivation
        } else {
            self.cfg.activation
        };
        self.in_voice = speech >= threshold;
        let voice = self.in_voice && !echo;
        let start = at.saturating_sub(len);
        match &mut self.state {
            State::Listening => {
                if voice {
                    self.state = State::UserSpeaking(Voice {
                        started: start,
                        voiced: len,
                        last_voice: at,
                    });
                    return Some(Decision::UserStarted { from: start });
                }
                None
            }
            State::UserSpeaking(v) => {
                if voice {
                    v.voiced += len;
                    v.last_voice = at;
                }
                self.check_user(at)
            }
            State::Answering { reply, barge } => {
                let reply = *reply;
                if voice {
                    let b = barge.get_or_insert(Voice {
                        started: start,
                        voiced: Duration::ZERO,
                        last_voice: at,
                    });
                    b.voiced += len;
                    b.last_voice = at;
                    if b.voiced >= self.cfg.min_interruption {
                        let from = b.started;
                        self.state = State::UserSpeaking(*b);
                        return Some(Decision::Interrupt { reply, from });
                    }
                } else if let Some(b) = barge
                    && at.saturating_sub(b.last_voice) > self.cfg.interruption_gap
                {
                    // A click, a cough, an "mm": not an interruption.
                    *barge = None;
                }
                None
            }
        }
    }

    /// Time passes without audio (the person's stream may pause): checks the end of a turn.
    pub fn tick(&mut self, now: Duration) -> Option<Decision> {
        match self.state {
            State::UserSpeaking(_) => self.check_user(now),
            _ => None,
        }
    }

    fn check_user(&mut self, now: Duration) -> Option<Decision> {
        let State::UserSpeaking(v) = self.state else {
            return None;
        };
        let silent = now.saturating_sub(v.last_voice);
        let too_long = now.saturating_sub(v.started) >= self.cfg.max_turn;
        if silent < self.cfg.end_of_turn_silence && !too_long {
            return None;
        }
        if v.voiced < self.cfg.min_speech {
            self.state = State::Listening;
            return Some(Decision::UserDiscarded);
        }
        let reply = self.take_reply();
        self.state = State::Answering { reply, barge: None };
        Some(Decision::EndOfTurn {
            reply,
            speech_ended: v.last_voice,
        })
    }

    /// Reply `reply` is over: everything of it was played (or there was nothing to say). A
    /// stale `reply` changes nothing. If the person had begun to speak over its end, their
    /// speech carries on as a turn.
    pub fn reply_done(&mut self, reply: u64) -> Option<Decision> {
        match self.state {
            State::Answering { reply: g, barge } if g == reply => match barge {
                Some(b) => {
                    self.state = State::UserSpeaking(b);
                    Some(Decision::UserStarted { from: b.started })
                }
                None => {
                    self.state = State::Listening;
                    None
                }
            },
            _ => None,
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::indexing_slicing, clippy::panic)]
    use super::*;

    const F: Duration = Duration::from_millis(20);

    /// Drives a machine with a script of frames: `v` voice, `_` silence, `e` echo (voiced
    /// but marked as the oracle's), collecting decisions with the frame index.
    fn drive(t: &mut Turns, start: usize, script: &str) -> Vec<(usize, Decision)> {
        let mut out = Vec::new();
        for (k, c) in script.chars().enumerate() {
            let i = start + k;
            let at = F * (i as u32 + 1);
            let (p, echo) = match c {
                'v' => (0.9, false),
                'e' => (0.9, true),
                _ => (0.05, false),
            };
            if let Some(d) = t.heard(at, F, p, echo) {
                out.push((i, d));
            }
        }
        out
    }

    #[test]
    fn a_turn_ends_after_the_configured_silence() {
        let mut t = Turns::new(TurnConfig::default());
        let d = drive(&mut t, 0, &format!("{}{}", "v".repeat(50), "_".repeat(30)));
        assert_eq!(
            d[0],
            (
                0,
                Decision::UserStarted {
                    from: Duration::ZERO
                }
            )
        );
        // Voice ends at frame 49 (t = 1.0 s); 500 ms of silence = 25 frames → frame 74.
        assert_eq!(
            d[1],
            (
                74,
                Decision::EndOfTurn {
                    reply: 1,
                    speech_ended: Duration::from_millis(1000)
                }
            )
        );
        assert_eq!(t.phase(), Phase::Answering { reply: 1 });
        assert_eq!(d.len(), 2);
    }

    #[test]
    fn the_silence_is_configurable_and_pauses_inside_speech_do_not_end_the_turn() {
        let cfg = TurnConfig {
            end_of_turn_silence: Duration::from_millis(800),
            ..TurnConfig::default()
        };
        let mut t = Turns::new(cfg);
        // Two words with a 400 ms pause: one turn.
        let script = format!(
            "{}{}{}{}",
            "v".repeat(20),
            "_".repeat(20),
            "v".repeat(20),
            "_".repeat(45)
        );
        let d = drive(&mut t, 0, &script);
        assert_eq!(d.len(), 2, "{d:?}");
        assert_eq!(d[1].0, 59 + 40, "{d:?}");
    }

    #[test]
    fn the_turn_ends_on_time_even_when_no_more_audio_arrives() {
        let mut t = Turns::new(TurnConfig::default());
        drive(&mut t, 0, &"v".repeat(10));
        assert_eq!(t.tick(Duration::from_millis(600)), None);
        assert!(matches!(
            t.tick(Duration::from_millis(700)),
            Some(Decision::EndOfTurn { reply: 1, .. })
        ));
    }

    #[test]
    fn a_click_is_discarded_and_silence_never_starts_a_turn() {
        let mut t = Turns::new(TurnConfig::default());
        let d = drive(
            &mut t,
            0,
            &format!("{}v{}", "_".repeat(100), "_".repeat(40)),
        );
        assert_eq!(d.len(), 2, "{d:?}");
        assert_eq!(d[1].1, Decision::UserDiscarded);
        assert_eq!(t.phase(), Phase::Listening);
    }

    #[test]
    fn hysteresis_keeps_a_weakening_voice() {
        let mut t = Turns::new(TurnConfig::default());
        let mut at = Duration::ZERO;
        let mut decisions = Vec::new();
        for p in [0.9, 0.4, 0.4, 0.4, 0.4, 0.4, 0.3] {
            at += F;
            decisions.extend(t.heard(at, F, p, false));
        }
        // 0.4 stays voice after 0.9 (above the 0.35 deactivation), 0.3 does not.
        for _ in 0..30 {
            at += F;
            decisions.extend(t.heard(at, F, 0.4, false));
        }
        // 0.4 alone does not reactivate (below the 0.5 activation).
        assert!(
            matches!(decisions.last(), Some(Decision::EndOfTurn { .. })),
            "{decisions:?}"
        );
    }

    #[test]
    fn barge_in_stops_the_reply_exactly_when_the_voice_reaches_the_threshold() {
        let mut t = Turns::new(TurnConfig::default());
        drive(&mut t, 0, &format!("{}{}", "v".repeat(20), "_".repeat(25)));
        assert_eq!(t.phase(), Phase::Answering { reply: 1 });
        // The person speaks over the oracle from frame 100: 500 ms = 25 frames → frame 124.
        let d = drive(&mut t, 100, &"v".repeat(40));
        assert_eq!(
            d,
            vec![(
                124,
                Decision::Interrupt {
                    reply: 1,
                    from: F * 100
                }
            )]
        );
        assert_eq!(t.phase(), Phase::UserSpeaking);
        // The interruption is the person's new turn.
        let d = drive(&mut t, 140, &"_".repeat(30));
        assert!(
            matches!(d[0].1, Decision::EndOfTurn { reply: 2, .. }),
            "{d:?}"
        );
    }

    #[test]
    fn false_interruptions_do_not_stop_the_oracle() {
        let mut t = Turns::new(TurnConfig::default());
        drive(&mut t, 0, &format!("{}{}", "v".repeat(20), "_".repeat(25)));
        // A 150 ms click, a 300 ms "mm", with pauses longer than the gap between them.
        let script = format!(
            "vvvvvvv{}{}{}",
            "_".repeat(20),
            "v".repeat(15),
            "_".repeat(20)
        );
        assert!(drive(&mut t, 100, &script).is_empty());
        assert_eq!(t.phase(), Phase::Answering { reply: 1 });
        assert_eq!(t.reply_done(1), None);
        assert_eq!(t.phase(), Phase::Listening);
    }

    #[test]
    fn short_gaps_inside_an_interruption_still_add_up() {
        let mut t = Turns::new(TurnConfig::default());
        drive(&mut t, 0, &format!("{}{}", "v".repeat(20), "_".repeat(25)));
        // Speech with 100 ms gaps (shorter than the 250 ms gap): 5 × 5 voiced frames.
        let script = "vvvvv_____".repeat(5);
        let d = drive(&mut t, 100, &script);
        assert_eq!(d.len(), 1, "{d:?}");
        assert!(matches!(d[0].1, Decision::Interrupt { reply: 1, .. }));
    }

    #[test]
    fn the_oracles_own_voice_never_interrupts_it() {
        let mut t = Turns::new(TurnConfig::default());
        drive(&mut t, 0, &format!("{}{}", "v".repeat(20), "_".repeat(25)));
        assert!(drive(&mut t, 100, &"e".repeat(1500)).is_empty());
        assert_eq!(t.phase(), Phase::Answering { reply: 1 });
        // …but the person speaking through it does.
        let d = drive(&mut t, 1600, &"v".repeat(30));
        assert!(matches!(d[0].1, Decision::Interrupt { reply: 1, .. }));
    }

    #[test]
    fn stale_replies_change_nothing() {
        let mut t = Turns::new(TurnConfig::default());
        drive(&mut t, 0, &format!("{}{}", "v".repeat(20), "_".repeat(25)));
        drive(&mut t, 100, &"v".repeat(30)); // interrupts reply 1
        assert_eq!(t.reply_done(1), None);
        assert_eq!(t.phase(), Phase::UserSpeaking);
    }

    #[test]
    fn speech_at_the_end_of_a_reply_carries_on_as_a_turn() {
        let mut t = Turns::new(TurnConfig::default());
        drive(&mut t, 0, &format!("{}{}", "v".repeat(20), "_".repeat(25)));
        drive(&mut t, 100, &"v".repeat(10));
        assert_eq!(
            t.reply_done(1),
            Some(Decision::UserStarted { from: F * 100 })
        );
        let d = drive(
            &mut t,
            110,
            &format!("{}{}", "v".repeat(10), "_".repeat(30)),
        );
        assert!(
            matches!(d[0].1, Decision::EndOfTurn { reply: 2, .. }),
            "{d:?}"
        );
    }

    #[test]
    fn a_turn_that_never_pauses_is_answered_at_the_cap() {
        let cfg = TurnConfig {
            max_turn: Duration::from_secs(2),
            ..TurnConfig::default()
        };
        let mut t = Turns::new(cfg);
        let d = drive(&mut t, 0, &"v".repeat(200));
        assert!(
            matches!(d[1], (99, Decision::EndOfTurn { reply: 1, .. })),
            "{d:?}"
        );
    }

    #[test]
    fn a_greeting_is_a_reply_and_can_be_interrupted() {
        let mut t = Turns::new(TurnConfig::default());
        assert_eq!(t.begin_reply(), Some(1));
        assert_eq!(t.begin_reply(), None);
        let d = drive(&mut t, 0, &"v".repeat(25));
        assert!(matches!(d[0].1, Decision::Interrupt { reply: 1, .. }));
    }
}

//! The speaker's playout buffer: a bounded queue of 48 kHz mono samples between the call
//! (which hands over 20 ms frames whenever they arrive) and the device callback (which asks
//! for samples at the device's pace). Pure logic, no IO.
//!
//! - Overflow: the oldest samples are dropped, so the delay never grows past the capacity.
//! - Underrun: the callback gets silence for what is missing.
//! - Start: playback waits for a prefill (a small cushion against jitter) before it begins,
//!   and again after every underrun.
//! - Standing backlog: when the buffer never fell below one frame over a whole second of
//!   playback (a burst filled it, or the device stalled at start while frames kept coming),
//!   the excess is dropped, so the delay returns to the cushion instead of staying at the
//!   capacity for the rest of the call.

use std::collections::VecDeque;

use oracle_calls_media::AUDIO_FRAME_SAMPLES;

/// Sizes of the playout buffer, in 20 ms frames.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PlayoutConfig {
    /// Most frames held; a frame pushed into a full buffer drops the oldest. At least 1.
    pub capacity_frames: usize,
    /// Frames buffered before playback starts (and restarts after an underrun). At most
    /// `capacity_frames`.
    pub prefill_frames: usize,
}

impl Default for PlayoutConfig {
    /// 120 ms at most, 40 ms of cushion.
    fn default() -> PlayoutConfig {
        PlayoutConfig {
            capacity_frames: 6,
            prefill_frames: 2,
        }
    }
}

/// What the playout buffer has seen.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct PlayoutStats {
    /// Frames pushed.
    pub frames_in: u64,
    /// Samples dropped because the buffer was full (oldest first).
    pub dropped_samples: u64,
    /// Times playback ran dry and had to play silence.
    pub underruns: u64,
    /// Samples of silence played while the buffer was empty or prefilling.
    pub silence_samples: u64,
    /// Samples dropped to shed a standing backlog (see the module docs).
    pub trimmed_samples: u64,
}

/// Samples of playback over which the lowest buffer level is watched (1 s).
const TRIM_WINDOW: usize = oracle_calls_media::SAMPLE_RATE as usize;
/// Level the backlog is trimmed down to: one frame.
const TRIM_TO: usize = AUDIO_FRAME_SAMPLES;

#[derive(Debug)]
pub(crate) struct PlayoutBuffer {
    samples: VecDeque<i16>,
    capacity: usize,
    prefill: usize,
    playing: bool,
    /// Samples played in the current trim window, and the lowest level seen in it.
    window_played: usize,
    window_low: usize,
    stats: PlayoutStats,
}

impl PlayoutBuffer {
    pub(crate) fn new(config: PlayoutConfig) -> PlayoutBuffer {
        let capacity = config.capacity_frames.max(1) * AUDIO_FRAME_SAMPLES;
        let prefill = (config.prefill_frames * AUDIO_FRAME_SAMPLES).min(capacity);
        PlayoutBuffer {
            samples: VecDeque::with_capacity(capacity),
            capacity,
            prefill,
            playing: false,
            window_played: 0,
            window_low: usize::MAX,
            stats: PlayoutStats::default(),
        }
    }

    /// Appends samples (normally one 20 ms frame), dropping the oldest on overflow.
    pub(crate) fn push(&mut self, pcm: &[i16]) {
        self.stats.frames_in += 1;
        self.samples.extend(pcm.iter().copied());
        let excess = self.samples.len().saturating_sub(self.capacity);
        if excess > 0 {
            self.samples.drain(..excess);
            self.stats.dropped_samples += excess as u64;
        }
    }

    /// The next sample to play: buffered audio, or silence while prefilling or starved.
    pub(crate) fn pop(&mut self) -> i16 {
        if !self.playing {
            if self.samples.len() < self.prefill.max(1) {
                self.stats.silence_samples += 1;
                return 0;
            }
            self.playing = true;
            self.window_played = 0;
            self.window_low = usize::MAX;
        }
        let Some(sample) = self.samples.pop_front() else {
            self.playing = false;
            self.stats.underruns += 1;
            self.stats.silence_samples += 1;
            return 0;
        };
        self.window_low = self.window_low.min(self.samples.len());
        self.window_played += 1;
        if self.window_played >= TRIM_WINDOW {
            let excess = self.window_low.saturating_sub(TRIM_TO);
            if excess > 0 {
                self.samples.drain(..excess);
                self.stats.trimmed_samples += excess as u64;
            }
            self.window_played = 0;
            self.window_low = usize::MAX;
        }
        sample
    }

    /// Samples waiting to be played.
    pub(crate) fn buffered(&self) -> usize {
        self.samples.len()
    }

    pub(crate) fn stats(&self) -> PlayoutStats {
        self.stats
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn frame(v: i16) -> Vec<i16> {
        vec![v; AUDIO_FRAME_SAMPLES]
    }

    fn pull(b: &mut PlayoutBuffer, n: usize) -> Vec<i16> {
        (0..n).map(|_| b.pop()).collect()
    }

    #[test]
    fn waits_for_the_prefill_then_plays_in_order() {
        let mut b = PlayoutBuffer::new(PlayoutConfig {
            capacity_frames: 4,
            prefill_frames: 2,
        });
        b.push(&frame(1));
        assert!(pull(&mut b, 10).iter().all(|&s| s == 0), "prefilling");
        b.push(&frame(2));
        let out = pull(&mut b, 2 * AUDIO_FRAME_SAMPLES);
        assert_eq!(out.first(), Some(&1));
        assert_eq!(out.last(), Some(&2));
        assert_eq!(b.stats().silence_samples, 10);
        assert_eq!(b.stats().underruns, 0);
    }

    #[test]
    fn overflow_drops_the_oldest_and_counts_it() {
        let mut b = PlayoutBuffer::new(PlayoutConfig {
            capacity_frames: 2,
            prefill_frames: 1,
        });
        for v in 1..=5 {
            b.push(&frame(v));
        }
        assert_eq!(b.buffered(), 2 * AUDIO_FRAME_SAMPLES);
        assert_eq!(b.stats().dropped_samples, 3 * AUDIO_FRAME_SAMPLES as u64);
        assert_eq!(b.stats().frames_in, 5);
        let out = pull(&mut b, 2 * AUDIO_FRAME_SAMPLES);
        assert_eq!(out.first(), Some(&4), "frames 1-3 were dropped");
        assert_eq!(out.last(), Some(&5));
    }

    #[test]
    fn underrun_plays_silence_counts_once_and_prefills_again() {
        let mut b = PlayoutBuffer::new(PlayoutConfig {
            capacity_frames: 4,
            prefill_frames: 1,
        });
        b.push(&frame(7));
        let out = pull(&mut b, AUDIO_FRAME_SAMPLES + 100);
        assert!(out.iter().take(AUDIO_FRAME_SAMPLES).all(|&s| s == 7));
        assert!(out.iter().skip(AUDIO_FRAME_SAMPLES).all(|&s| s == 0));
        assert_eq!(b.stats().underruns, 1, "one dry spell, one underrun");
        assert_eq!(b.stats().silence_samples, 100);
        b.push(&frame(8));
        assert_eq!(b.pop(), 8);
    }

    #[test]
    fn a_standing_backlog_is_trimmed_to_one_frame() {
        let mut b = PlayoutBuffer::new(PlayoutConfig {
            capacity_frames: 6,
            prefill_frames: 2,
        });
        // A burst fills the buffer, then frames come exactly as fast as they are played.
        for _ in 0..6 {
            b.push(&frame(1));
        }
        for _ in 0..60 {
            pull(&mut b, AUDIO_FRAME_SAMPLES);
            b.push(&frame(1));
        }
        assert_eq!(b.stats().trimmed_samples, 4 * AUDIO_FRAME_SAMPLES as u64);
        assert!(b.buffered() <= 2 * AUDIO_FRAME_SAMPLES, "{}", b.buffered());
        assert_eq!(b.stats().underruns, 0);
        // A buffer that dips low now and then keeps what it has.
        let trimmed = b.stats().trimmed_samples;
        for _ in 0..60 {
            b.push(&frame(1));
            pull(&mut b, AUDIO_FRAME_SAMPLES);
        }
        assert_eq!(b.stats().trimmed_samples, trimmed);
    }

    #[test]
    fn a_bad_config_is_made_sane() {
        let mut b = PlayoutBuffer::new(PlayoutConfig {
            capacity_frames: 0,
            prefill_frames: 9,
        });
        b.push(&frame(3));
        b.push(&frame(4));
        assert_eq!(b.buffered(), AUDIO_FRAME_SAMPLES);
        assert_eq!(b.pop(), 4, "prefill is capped at the capacity");
    }
}

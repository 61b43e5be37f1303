//! Sample conversion between what a device gives or takes and the calls' 20 ms 48 kHz mono
//! frames: `i16`/`f32` scaling, a streaming linear resampler and a framer. Pure logic, no IO.

use oracle_calls_media::AUDIO_FRAME_SAMPLES;

/// `f32` in [-1, 1] to `i16`, saturating.
pub(crate) fn f32_to_i16(x: f32) -> i16 {
    (x * 32768.0)
        .round()
        .clamp(f32::from(i16::MIN), f32::from(i16::MAX)) as i16
}

/// `i16` to `f32` in [-1, 1).
pub(crate) fn i16_to_f32(x: i16) -> f32 {
    f32::from(x) / 32768.0
}

/// A streaming linear-interpolation resampler: push input samples one at a time, collect the
/// output samples they complete. Equal rates pass samples through unchanged.
#[derive(Debug, Clone)]
pub(crate) struct Resampler {
    /// Input samples per output sample.
    step: f64,
    /// Where the next output sample falls, in input samples after `prev` (in (0, 1] when the
    /// next input completes it).
    phase: f64,
    prev: f32,
}

impl Resampler {
    pub(crate) fn new(from_rate: u32, to_rate: u32) -> Resampler {
        Resampler {
            step: f64::from(from_rate.max(1)) / f64::from(to_rate.max(1)),
            phase: 1.0,
            prev: 0.0,
        }
    }

    /// Whether input and output rates are equal (every push yields exactly that sample).
    pub(crate) fn is_identity(&self) -> bool {
        self.step == 1.0
    }

    /// Feeds one input sample; appends the output samples it completes to `out`.
    pub(crate) fn push(&mut self, x: f32, out: &mut impl Extend<f32>) {
        while self.phase <= 1.0 {
            let t = self.phase as f32;
            out.extend(std::iter::once(self.prev + (x - self.prev) * t));
            self.phase += self.step;
        }
        self.phase -= 1.0;
        self.prev = x;
    }
}

/// Collects samples into whole 20 ms frames.
#[derive(Debug, Default)]
pub(crate) struct Framer {
    pending: Vec<i16>,
}

impl Framer {
    /// Adds one sample; returns a full frame when this sample completes one.
    pub(crate) fn push(&mut self, sample: i16) -> Option<Vec<i16>> {
        if self.pending.capacity() < AUDIO_FRAME_SAMPLES {
            self.pending
                .reserve_exact(AUDIO_FRAME_SAMPLES - self.pending.capacity());
        }
        self.pending.push(sample);
        (self.pending.len() == AUDIO_FRAME_SAMPLES)
            .then(|| std::mem::replace(&mut self.pending, Vec::with_capacity(AUDIO_FRAME_SAMPLES)))
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::indexing_slicing)]
    use oracle_calls_media::{SAMPLE_RATE, goertzel_power, sine_tone};

    use super::*;

    fn resample(input: &[i16], from: u32, to: u32) -> Vec<i16> {
        let mut r = Resampler::new(from, to);
        let mut out = Vec::new();
        for &s in input {
            r.push(i16_to_f32(s), &mut out);
        }
        out.into_iter().map(f32_to_i16).collect()
    }

    #[test]
    fn equal_rates_pass_samples_through() {
        let tone = sine_tone(440.0, 8000.0, 0, 4800);
        assert!(Resampler::new(48_000, 48_000).is_identity());
        assert_eq!(resample(&tone, 48_000, 48_000), tone);
    }

    #[test]
    fn resampling_keeps_the_length_ratio_and_the_pitch() {
        // A 440 Hz tone at 44.1 kHz, resampled to 48 kHz, is a 440 Hz tone at 48 kHz.
        let n = 44_100;
        let at_44k: Vec<i16> = (0..n)
            .map(|i| {
                let t = f64::from(i) / 44_100.0;
                (8000.0 * (2.0 * std::f64::consts::PI * 440.0 * t).sin()) as i16
            })
            .collect();
        let at_48k = resample(&at_44k, 44_100, SAMPLE_RATE);
        assert!(
            (at_48k.len() as i64 - 48_000).abs() <= 1,
            "{}",
            at_48k.len()
        );
        assert!(goertzel_power(&at_48k, 440.0) > 0.9);
        assert!(goertzel_power(&at_48k, 480.0) < 0.01);
        // And down again: 96 kHz → 48 kHz halves the count.
        let at_96k = resample(&at_48k, 48_000, 96_000);
        let back = resample(&at_96k, 96_000, 48_000);
        assert!((back.len() as i64 - at_48k.len() as i64).abs() <= 1);
        assert!(goertzel_power(&back, 440.0) > 0.9);
    }

    #[test]
    fn conversions_saturate_and_round_trip() {
        assert_eq!(f32_to_i16(2.0), i16::MAX);
        assert_eq!(f32_to_i16(-2.0), i16::MIN);
        assert_eq!(f32_to_i16(i16_to_f32(-1234)), -1234);
    }

    #[test]
    fn the_framer_yields_whole_frames_in_order() {
        let mut f = Framer::default();
        let frames: Vec<Vec<i16>> = (0..2500).filter_map(|i| f.push(i as i16)).collect();
        assert_eq!(frames.len(), 2);
        assert!(frames.iter().all(|fr| fr.len() == AUDIO_FRAME_SAMPLES));
        assert_eq!(frames[1][0], AUDIO_FRAME_SAMPLES as i16);
    }
}

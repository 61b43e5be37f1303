//! Sample-rate conversion between the call (48 kHz, 20 ms frames of 960 samples) and the
//! engines (16 kHz for detection and transcription; whatever rate a voice speaks at).

use std::collections::VecDeque;
use std::f64::consts::PI;

/// Samples in one 20 ms frame of the call.
pub const CALL_FRAME: usize = 960;
/// The call's sample rate.
pub const CALL_RATE: u32 = 48_000;
/// The engines' listening rate.
pub const LISTEN_RATE: u32 = 16_000;

/// Taps of the decimator's low-pass filter.
const TAPS: usize = 63;

/// 48 kHz → 16 kHz: a windowed-sinc low-pass at 7.2 kHz, then every third sample. Keeps its
/// filter state from one frame to the next, so a stream cut in frames comes out seamless.
#[derive(Debug, Clone)]
pub struct Downsampler {
    taps: Vec<f32>,
    history: VecDeque<f32>,
    phase: usize,
}

impl Default for Downsampler {
    fn default() -> Self {
        Self::new()
    }
}

impl Downsampler {
    /// A fresh decimator.
    pub fn new() -> Self {
        let cutoff = 7_200.0 / f64::from(CALL_RATE);
        let mid = (TAPS - 1) as f64 / 2.0;
        let mut taps: Vec<f32> = (0..TAPS)
            .map(|n| {
                let x = n as f64 - mid;
                let sinc = if x == 0.0 {
                    2.0 * cutoff
                } else {
                    (2.0 * PI * cutoff * x).sin() / (PI * x)
                };
                // Blackman window.
                let w = 0.42 - 0.5 * (2.0 * PI * n as f64 / (TAPS - 1) as f64).cos()
                    + 0.08 * (4.0 * PI * n as f64 / (TAPS - 1) as f64).cos();
                (sinc * w) as f32
            })
            .collect();
        let sum: f32 = taps.iter().sum();
        for t in &mut taps {
            *t /= sum;
        }
        Self {
            taps,
            history: VecDeque::from(vec![0.0; TAPS]),
            phase: 0,
        }
    }

    /// Converts a piece of 48 kHz audio; returns the 16 kHz samples it completes.
    pub fn push(&mut self, pcm48: &[i16]) -> Vec<i16> {
        let mut out = Vec::with_capacity(pcm48.len() / 3 + 1);
        for &s in pcm48 {
            self.history.pop_front();
            self.history.push_back(f32::from(s));
            self.phase += 1;
            if self.phase == 3 {
                self.phase = 0;
                let acc: f32 = self
                    .history
                    .iter()
                    .zip(self.taps.iter().rev())
                    .map(|(h, t)| h * t)
                    .sum();
                out.push(clamp_i16(acc));
            }
        }
        out
    }
}

/// Any rate → 48 kHz by linear interpolation between neighbouring samples, stateful across
/// pieces. Speech voices (16–24 kHz) carry nothing above their own Nyquist frequency, so the
/// images interpolation leaves lie above what the listener's side keeps for speech.
#[derive(Debug, Clone)]
pub struct Upsampler {
    step: f64,
    pos: f64,
    prev: f32,
    started: bool,
}

impl Upsampler {
    /// From `rate` to 48 kHz.
    pub fn new(rate: u32) -> Self {
        Self {
            step: f64::from(rate.max(1)) / f64::from(CALL_RATE),
            pos: 0.0,
            prev: 0.0,
            started: false,
        }
    }

    /// Converts a piece; returns the 48 kHz samples it completes.
    pub fn push(&mut self, input: &[i16]) -> Vec<i16> {
        let mut out = Vec::with_capacity((input.len() as f64 / self.step) as usize + 2);
        for &s in input {
            let cur = f32::from(s);
            if !self.started {
                self.started = true;
                self.prev = cur;
                continue;
            }
            // Output samples between prev (at 0) and cur (at 1).
            while self.pos < 1.0 {
                let v = self.prev + (cur - self.prev) * self.pos as f32;
                out.push(clamp_i16(v));
                self.pos += self.step;
            }
            self.pos -= 1.0;
            self.prev = cur;
        }
        out
    }
}

/// Cuts a stream of 48 kHz samples into call frames.
#[derive(Debug, Default, Clone)]
pub struct Framer {
    pending: Vec<i16>,
}

impl Framer {
    /// Adds samples; returns the whole frames they complete.
    pub fn push(&mut self, pcm: &[i16]) -> Vec<Vec<i16>> {
        self.pending.extend_from_slice(pcm);
        let whole = self.pending.len() / CALL_FRAME * CALL_FRAME;
        let frames = self
            .pending
            .chunks_exact(CALL_FRAME)
            .map(<[i16]>::to_vec)
            .collect();
        self.pending.drain(..whole);
        frames
    }

    /// The last partial frame, padded with silence (none if nothing is pending).
    pub fn flush(&mut self) -> Option<Vec<i16>> {
        if self.pending.is_empty() {
            return None;
        }
        let mut f = std::mem::take(&mut self.pending);
        f.resize(CALL_FRAME, 0);
        Some(f)
    }
}

/// Root-mean-square level of a frame, 0..=1 of full scale.
pub fn rms(pcm: &[i16]) -> f32 {
    if pcm.is_empty() {
        return 0.0;
    }
    let e: f64 = pcm.iter().map(|&s| f64::from(s) * f64::from(s)).sum();
    ((e / pcm.len() as f64).sqrt() / 32768.0) as f32
}

fn clamp_i16(v: f32) -> i16 {
    v.round().clamp(-32768.0, 32767.0) as i16
}

#[cfg(test)]
mod tests {
    #![allow(clippy::indexing_slicing, clippy::unwrap_used)]
    use super::*;

    fn sine(rate: u32, f: f64, n: usize, amp: f64) -> Vec<i16> {
        (0..n)
            .map(|i| (amp * (2.0 * PI * f * i as f64 / f64::from(rate)).sin()) as i16)
            .collect()
    }

    #[test]
    fn downsampling_keeps_speech_and_removes_what_16_khz_cannot_hold() {
        let mut d = Downsampler::new();
        let speech: Vec<i16> = sine(48_000, 1_000.0, 48_000, 10_000.0)
            .chunks(960)
            .flat_map(|f| d.push(f))
            .collect();
        assert_eq!(speech.len(), 16_000);
        let level = rms(&speech[1000..]);
        assert!(
            (level - 10_000.0 / 32768.0 / 2f32.sqrt()).abs() < 0.01,
            "{level}"
        );
        // 12 kHz would alias to 4 kHz; the filter must take it out.
        let mut d = Downsampler::new();
        let alias: Vec<i16> = d.push(&sine(48_000, 12_000.0, 48_000, 10_000.0));
        assert!(rms(&alias[1000..]) < 0.002, "{}", rms(&alias[1000..]));
    }

    #[test]
    fn upsampling_from_a_voice_rate_keeps_pitch_and_length() {
        for rate in [16_000u32, 22_050, 24_000] {
            let input = sine(rate, 440.0, rate as usize, 8_000.0);
            let mut u = Upsampler::new(rate);
            let mut out = Vec::new();
            for c in input.chunks(777) {
                out.extend(u.push(c));
            }
            assert!(
                (out.len() as i64 - 48_000).abs() < 5,
                "{rate}: {}",
                out.len()
            );
            // Zero crossings of a 440 Hz tone in one second: 880.
            let zc = out.windows(2).filter(|w| (w[0] < 0) != (w[1] < 0)).count();
            assert!((zc as i64 - 880).abs() <= 4, "{rate}: {zc}");
        }
    }

    #[test]
    fn framer_cuts_whole_frames_and_pads_the_last() {
        let mut f = Framer::default();
        assert!(f.push(&[1; 500]).is_empty());
        let frames = f.push(&[2; 1500]);
        assert_eq!(frames.len(), 2);
        assert_eq!(frames[0][499], 1);
        assert_eq!(frames[0][500], 2);
        let last = f.flush().unwrap();
        assert_eq!(last.len(), 960);
        assert_eq!(last[79], 2);
        assert_eq!(last[80], 0);
        assert!(f.flush().is_none());
    }
}

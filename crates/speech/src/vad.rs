//! Voice activity detection: [`EarshotVad`] (pure Rust, weights built in) and [`VadFramer`],
//! which turns a 48 kHz call frame into one speech probability.

use crate::audio::Downsampler;
use crate::engine::Vad;

/// The `earshot` detector: 16 ms frames (256 samples) at 16 kHz.
pub struct EarshotVad {
    detector: Box<earshot::Detector>,
}

impl std::fmt::Debug for EarshotVad {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("EarshotVad")
    }
}

impl Default for EarshotVad {
    fn default() -> Self {
        Self {
            detector: earshot::Detector::default_boxed(),
        }
    }
}

impl Vad for EarshotVad {
    fn frame_samples(&self) -> usize {
        256
    }
    fn predict(&mut self, frame: &[i16]) -> f32 {
        self.detector.predict_i16(frame).clamp(0.0, 1.0)
    }
    fn reset(&mut self) {
        self.detector.reset();
    }
}

impl<V: Vad + ?Sized> Vad for Box<V> {
    fn frame_samples(&self) -> usize {
        (**self).frame_samples()
    }
    fn predict(&mut self, frame: &[i16]) -> f32 {
        (**self).predict(frame)
    }
    fn reset(&mut self) {
        (**self).reset();
    }
}

/// A level detector: a frame is voice (1.0) when its RMS level is above `threshold` (0..=1
/// of full scale). It cannot tell speech from noise; it is for tones and tests, and for
/// comparing against a real detector.
#[derive(Clone, Copy, Debug)]
pub struct EnergyVad {
    /// The level above which a frame counts as voice.
    pub threshold: f32,
}

impl Vad for EnergyVad {
    fn frame_samples(&self) -> usize {
        320
    }
    fn predict(&mut self, frame: &[i16]) -> f32 {
        if crate::audio::rms(frame) > self.threshold {
            1.0
        } else {
            0.0
        }
    }
    fn reset(&mut self) {}
}

/// Feeds call frames to a detector: 48 → 16 kHz, cut to the detector's frame size. Keeps the
/// 16 kHz audio for the transcription.
#[derive(Debug)]
pub struct VadFramer<V> {
    vad: V,
    down: Downsampler,
    pending: Vec<i16>,
}

impl<V: Vad> VadFramer<V> {
    /// Wraps a detector.
    pub fn new(vad: V) -> Self {
        Self {
            vad,
            down: Downsampler::new(),
            pending: Vec::new(),
        }
    }

    /// One call frame in: its 16 kHz audio and the highest speech probability among the
    /// detector frames it completed (0 when it completed none).
    pub fn push(&mut self, pcm48: &[i16]) -> (Vec<i16>, f32) {
        let pcm16 = self.down.push(pcm48);
        self.pending.extend_from_slice(&pcm16);
        let n = self.vad.frame_samples().max(1);
        let mut best = 0.0f32;
        let whole = self.pending.len() / n * n;
        for f in self.pending.chunks_exact(n) {
            best = best.max(self.vad.predict(f));
        }
        self.pending.drain(..whole);
        (pcm16, best)
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::indexing_slicing)]
    use super::*;

    struct Loud;
    impl Vad for Loud {
        fn frame_samples(&self) -> usize {
            256
        }
        fn predict(&mut self, f: &[i16]) -> f32 {
            if f.iter().any(|s| s.unsigned_abs() > 1000) {
                1.0
            } else {
                0.0
            }
        }
        fn reset(&mut self) {}
    }

    #[test]
    fn each_call_frame_completes_at_least_one_detector_frame() {
        let mut v = VadFramer::new(Loud);
        let mut n16 = 0;
        for i in 0..50 {
            let frame = vec![if i == 30 { 5000 } else { 0 }; 960];
            let (pcm, p) = v.push(&frame);
            n16 += pcm.len();
            if i >= 1 && i != 30 && i != 31 {
                assert_eq!(p, 0.0, "frame {i}");
            }
            if i == 30 || i == 31 {
                assert_eq!(p, 1.0, "frame {i}");
            }
        }
        assert_eq!(n16, 16_000);
    }

    #[test]
    fn earshot_hears_nothing_in_silence() {
        let mut v = VadFramer::new(EarshotVad::default());
        for _ in 0..50 {
            let (_, p) = v.push(&[0; 960]);
            assert!(p < 0.5, "{p}");
        }
    }
}

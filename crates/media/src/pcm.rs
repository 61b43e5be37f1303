//! PCM helpers: the frame size, a tone generator, a Goertzel detector and the audio level.

/// Sample rate of all PCM in calls (Opus's native rate).
pub const SAMPLE_RATE: u32 = 48_000;
/// Samples in one 20 ms mono frame.
pub const AUDIO_FRAME_SAMPLES: usize = 960;

/// `n` mono samples of a sine at `freq` Hz, starting at sample `offset`, amplitude `amp`.
pub fn sine_tone(freq: f64, amp: f64, offset: u64, n: usize) -> Vec<i16> {
    (0..n)
        .map(|i| {
            let t = (offset + i as u64) as f64 / f64::from(SAMPLE_RATE);
            let v = amp * (2.0 * std::f64::consts::PI * freq * t).sin();
            v.clamp(f64::from(i16::MIN), f64::from(i16::MAX)) as i16
        })
        .collect()
}

/// Relative power of `freq` in `pcm` (Goertzel), normalized by the signal's total energy so a
/// pure tone at `freq` scores near 1 and silence or noise near 0.
pub fn goertzel_power(pcm: &[i16], freq: f64) -> f64 {
    if pcm.is_empty() {
        return 0.0;
    }
    let w = 2.0 * std::f64::consts::PI * freq / f64::from(SAMPLE_RATE);
    let coeff = 2.0 * w.cos();
    let (mut s1, mut s2) = (0.0f64, 0.0f64);
    let mut energy = 0.0f64;
    for &x in pcm {
        let x = f64::from(x);
        energy += x * x;
        let s0 = x + coeff * s1 - s2;
        s2 = s1;
        s1 = s0;
    }
    if energy == 0.0 {
        return 0.0;
    }
    let power = s1 * s1 + s2 * s2 - coeff * s1 * s2;
    // A pure tone of N samples has Goertzel power N²A²/4 and energy NA²/2.
    (2.0 * power / (pcm.len() as f64 * energy)).clamp(0.0, 1.0)
}

/// Audio level in -dBov (0 = loudest, 127 = silence) for RFC 6464.
pub fn level_dbov(pcm: &[i16]) -> i8 {
    if pcm.is_empty() {
        return -127;
    }
    let rms = (pcm.iter().map(|&s| f64::from(s).powi(2)).sum::<f64>() / pcm.len() as f64).sqrt();
    if rms < 1.0 {
        return -127;
    }
    let db = 20.0 * (rms / 32768.0).log10();
    db.clamp(-127.0, 0.0) as i8
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn goertzel_finds_the_tone_and_only_it() {
        let tone = sine_tone(440.0, 8000.0, 0, 4800);
        assert!(goertzel_power(&tone, 440.0) > 0.8);
        assert!(goertzel_power(&tone, 880.0) < 0.05);
        assert_eq!(goertzel_power(&[0; 960], 440.0), 0.0);
        assert_eq!(level_dbov(&[0; 10]), -127);
        assert!(level_dbov(&tone) > -20);
    }
}

//! A deterministic speech-like test signal: voiced syllables (a gliding pitch with vowel
//! formants) separated by pauses, at 48 kHz mono. Used where no text-to-speech is installed.

use std::f64::consts::PI;

/// Vowel formants (F1, F2, F3) in Hz: /a/, /i/, /u/, /e/, /o/.
const VOWELS: [[f64; 3]; 5] = [
    [730.0, 1090.0, 2440.0],
    [270.0, 2290.0, 3010.0],
    [300.0, 870.0, 2240.0],
    [530.0, 1840.0, 2480.0],
    [570.0, 840.0, 2410.0],
];

struct Lcg(u64);
impl Lcg {
    fn next(&mut self) -> f64 {
        self.0 = self
            .0
            .wrapping_mul(6_364_136_223_846_793_005)
            .wrapping_add(1_442_695_040_888_963_407);
        (self.0 >> 11) as f64 / (1u64 << 53) as f64
    }
}

/// `seconds` of syllables; `seed` picks the sequence.
pub fn synthesize(seconds: f64, seed: u64) -> Vec<i16> {
    let rate = 48_000.0;
    let total = (seconds * rate) as usize;
    let mut out = Vec::with_capacity(total);
    let mut rng = Lcg(seed ^ 0x9e37_79b9_7f4a_7c15);
    let mut phase = 0.0f64;
    while out.len() < total {
        // A syllable of 140-260 ms, then 60-180 ms of pause.
        let syl = ((0.14 + 0.12 * rng.next()) * rate) as usize;
        let pause = ((0.06 + 0.12 * rng.next()) * rate) as usize;
        let pick = (rng.next() * VOWELS.len() as f64) as usize % VOWELS.len();
        let vowel = VOWELS.get(pick).copied().unwrap_or([730.0, 1090.0, 2440.0]);
        let f0_start = 110.0 + 70.0 * rng.next();
        let f0_end = f0_start * (0.8 + 0.4 * rng.next());
        let loud = 0.25 + 0.2 * rng.next();
        for i in 0..syl {
            let t = i as f64 / syl as f64;
            let f0 = f0_start + (f0_end - f0_start) * t;
            phase += 2.0 * PI * f0 / rate;
            // Harmonics weighted by formant resonances.
            let mut s = 0.0;
            let mut k = 1.0;
            while k * f0 < 4000.0 {
                let f = k * f0;
                let gain: f64 = vowel
                    .iter()
                    .map(|&fm| {
                        let bw = 80.0 + fm * 0.06;
                        1.0 / (1.0 + ((f - fm) / bw).powi(2))
                    })
                    .sum();
                s += gain * (k * phase).sin() / k.sqrt();
                k += 1.0;
            }
            // Attack and decay.
            let env = (t * 8.0).min(1.0) * ((1.0 - t) * 5.0).min(1.0);
            out.push((s * env * loud * 6000.0).clamp(-32767.0, 32767.0) as i16);
        }
        out.extend(std::iter::repeat_n(0i16, pause));
    }
    out.truncate(total);
    out
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn is_deterministic_loud_enough_and_has_pauses() {
        let a = synthesize(2.0, 1);
        assert_eq!(a, synthesize(2.0, 1));
        assert_ne!(a, synthesize(2.0, 2));
        assert_eq!(a.len(), 96_000);
        let env = crate::analysis::envelope(&a);
        let loud = env.iter().filter(|e| **e > 1000.0).count();
        let quiet = env.iter().filter(|e| **e < 50.0).count();
        assert!(loud > 30 && quiet > 10, "loud {loud} quiet {quiet}");
    }
}

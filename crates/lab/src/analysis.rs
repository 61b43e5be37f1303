//! Comparing what was sent with what was heard.
//!
//! Two measures: the correlation of 20 ms loudness envelopes (robust to codec changes, finds
//! the delay), and the normalized cross-correlation of the waveforms around that delay (high
//! only when the actual signal came through).

/// Samples per 20 ms frame at 48 kHz.
const FRAME: usize = 960;

/// RMS of each 20 ms frame.
pub fn envelope(pcm: &[i16]) -> Vec<f64> {
    pcm.chunks(FRAME)
        .map(|c| {
            let e: f64 = c.iter().map(|&s| f64::from(s) * f64::from(s)).sum();
            (e / c.len().max(1) as f64).sqrt()
        })
        .collect()
}

/// Pearson correlation of `a[i]` and `b[i + lag]` over their overlap (0 when too short or flat).
fn pearson_at(a: &[f64], b: &[f64], lag: usize) -> f64 {
    let n = a.len().min(b.len().saturating_sub(lag));
    if n < 10 {
        return 0.0;
    }
    let (Some(a), Some(b)) = (a.get(..n), b.get(lag..lag + n)) else {
        return 0.0;
    };
    let ma = a.iter().sum::<f64>() / n as f64;
    let mb = b.iter().sum::<f64>() / n as f64;
    let (mut num, mut da, mut db) = (0.0, 0.0, 0.0);
    for (x, y) in a.iter().zip(b) {
        num += (x - ma) * (y - mb);
        da += (x - ma) * (x - ma);
        db += (y - mb) * (y - mb);
    }
    if da <= f64::EPSILON || db <= f64::EPSILON {
        return 0.0;
    }
    num / (da.sqrt() * db.sqrt())
}

/// The best envelope correlation of `heard` against `sent` over delays up to `max_lag_frames`,
/// as `(delay in frames, correlation)`.
pub fn envelope_match(sent: &[i16], heard: &[i16], max_lag_frames: usize) -> (usize, f64) {
    let (a, b) = (envelope(sent), envelope(heard));
    (0..=max_lag_frames)
        .map(|lag| (lag, pearson_at(&a, &b, lag)))
        .fold((0, 0.0), |best, x| if x.1 > best.1 { x } else { best })
}

/// Normalized cross-correlation of the waveforms at the best sample delay within one frame of
/// `frame_lag` frames, over up to `window` samples. In [-1, 1]; near 0 for unrelated signals.
pub fn waveform_match(sent: &[i16], heard: &[i16], frame_lag: usize, window: usize) -> f64 {
    let center = frame_lag * FRAME;
    let lo = center.saturating_sub(FRAME);
    let hi = center + FRAME;
    let n = window.min(sent.len());
    let Some(a) = sent.get(..n) else {
        return 0.0;
    };
    let ea: f64 = a.iter().map(|&s| f64::from(s) * f64::from(s)).sum();
    let mut best: f64 = 0.0;
    for lag in lo..=hi {
        let Some(b) = heard.get(lag..lag + n) else {
            break;
        };
        let eb: f64 = b.iter().map(|&s| f64::from(s) * f64::from(s)).sum();
        if ea <= 0.0 || eb <= 0.0 {
            continue;
        }
        let dot: f64 = a
            .iter()
            .zip(b)
            .map(|(&x, &y)| f64::from(x) * f64::from(y))
            .sum();
        best = best.max(dot / (ea.sqrt() * eb.sqrt()));
    }
    best
}

/// The two measures together.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Match {
    /// Delay of `heard` behind `sent`, in 20 ms frames.
    pub delay_frames: usize,
    /// Loudness-envelope correlation at that delay.
    pub envelope: f64,
    /// Waveform correlation around that delay.
    pub waveform: f64,
}

/// Compares `heard` with `sent`, looking for delays up to `max_delay_frames`.
pub fn compare(sent: &[i16], heard: &[i16], max_delay_frames: usize) -> Match {
    let (delay_frames, envelope) = envelope_match(sent, heard, max_delay_frames);
    let waveform = waveform_match(sent, heard, delay_frames, 48_000 * 2);
    Match {
        delay_frames,
        envelope,
        waveform,
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::indexing_slicing)]
    use super::*;

    fn speechish() -> Vec<i16> {
        crate::speech::synthesize(3.0, 7)
    }

    #[test]
    fn a_delayed_copy_matches_at_its_delay() {
        let s = speechish();
        let mut heard = vec![0i16; 960 * 12 + 100];
        heard.extend_from_slice(&s);
        let m = compare(&s, &heard, 50);
        assert!((12..=13).contains(&m.delay_frames), "{m:?}");
        assert!(m.envelope > 0.95, "{m:?}");
        assert!(m.waveform > 0.99, "{m:?}");
    }

    #[test]
    fn unrelated_speech_and_noise_do_not_match() {
        let s = speechish();
        let other = crate::speech::synthesize(3.0, 99);
        let m = compare(&s, &other, 50);
        assert!(m.waveform < 0.3, "{m:?}");
        let mut x: u32 = 1;
        let noise: Vec<i16> = (0..s.len())
            .map(|_| {
                x = x.wrapping_mul(1_664_525).wrapping_add(1_013_904_223);
                (x >> 16) as i16
            })
            .collect();
        let m = compare(&s, &noise, 50);
        assert!(m.envelope < 0.3 && m.waveform < 0.1, "{m:?}");
        assert_eq!(compare(&s, &[], 50).waveform, 0.0);
    }
}

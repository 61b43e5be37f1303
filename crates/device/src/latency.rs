//! Measuring mouth-to-ear latency with clicks: a track of short chirps is played where a
//! microphone listens, and two [`Probe`]s (capture streams on the same host) timestamp each
//! click where it enters ("mouth") and where it comes out ("ear"). The probes are alike, so
//! their own capture delay cancels out of the difference. Used by the device tests and by
//! the mouth-to-ear test of a real person-to-person call.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread;
use std::time::{Duration, Instant};

use oracle_calls_media::{AUDIO_FRAME_SAMPLES, SAMPLE_RATE};

use crate::{DeviceChoice, Error, Microphone, MicrophoneStats};

/// A 10 ms rising chirp (1 → 4 kHz, Hann window): sharp in time, easy to correlate, and
/// it survives Opus.
#[must_use]
pub fn click() -> Vec<i16> {
    let n = SAMPLE_RATE as usize / 100;
    let dur = n as f64 / f64::from(SAMPLE_RATE);
    (0..n)
        .map(|i| {
            let t = i as f64 / f64::from(SAMPLE_RATE);
            let phase = 2.0 * std::f64::consts::PI * (1000.0 * t + 1500.0 * t * t / dur);
            let window = 0.5 - 0.5 * (2.0 * std::f64::consts::PI * i as f64 / n as f64).cos();
            (16000.0 * window * phase.sin()) as i16
        })
        .collect()
}

/// `clicks` clicks `spacing` apart, starting half a spacing in, with a spacing of silence at
/// the end.
#[must_use]
pub fn click_track(clicks: usize, spacing: Duration) -> Vec<i16> {
    let step = (spacing.as_secs_f64() * f64::from(SAMPLE_RATE)) as usize;
    let c = click();
    let mut track = vec![0i16; step * (clicks + 1) + c.len()];
    for k in 0..clicks {
        let at = step / 2 + k * step;
        if let Some(slot) = track.get_mut(at..at + c.len()) {
            slot.copy_from_slice(&c);
        }
    }
    track
}

/// A capture stream that records every frame with its arrival time until
/// [`Probe::finish`].
#[derive(Debug)]
pub struct Probe {
    stop: Arc<AtomicBool>,
    thread: thread::JoinHandle<Recording>,
}

/// What a [`Probe`] captured.
#[derive(Debug, Default)]
pub struct Recording {
    /// (arrival time, 20 ms frame), in order.
    pub frames: Vec<(Instant, Vec<i16>)>,
    /// The capture stream's counters (dropped frames and errors spoil a measurement).
    pub stats: MicrophoneStats,
}

impl Probe {
    /// Starts capturing from `choice` (e.g. a sink's monitor).
    ///
    /// # Errors
    /// The device cannot be opened.
    pub fn start(choice: &DeviceChoice) -> Result<Probe, Error> {
        let mic = Microphone::open(choice)?;
        let stop = Arc::new(AtomicBool::new(false));
        let stopped = stop.clone();
        let thread = thread::spawn(move || {
            let mut frames = Vec::new();
            while !stopped.load(Ordering::Relaxed) {
                if let Some(f) = mic.next_timed_frame(Duration::from_millis(100)) {
                    frames.push(f);
                }
            }
            Recording {
                frames,
                stats: mic.stats(),
            }
        });
        Ok(Probe { stop, thread })
    }

    /// Stops and returns what was captured (nothing if the capture thread died).
    #[must_use]
    pub fn finish(self) -> Recording {
        self.stop.store(true, Ordering::Relaxed);
        self.thread.join().unwrap_or_default()
    }
}

/// When each click starts, on the probe's clock: a coarse onset (the first loud sample after
/// 100 ms of quiet) refined by cross-correlation with the click within ±5 ms of it. A frame's
/// last sample is taken to arrive at the frame's timestamp.
#[must_use]
pub fn click_times(frames: &[(Instant, Vec<i16>)]) -> Vec<Instant> {
    let Some(&(first_at, _)) = frames.first() else {
        return Vec::new();
    };
    let samples: Vec<i16> = frames.iter().flat_map(|(_, f)| f.iter().copied()).collect();
    let rate = f64::from(SAMPLE_RATE);
    let sample_time = |idx: usize| -> Instant {
        let Some((at, _)) = frames.get(idx / AUDIO_FRAME_SAMPLES) else {
            return first_at;
        };
        let after = AUDIO_FRAME_SAMPLES - 1 - idx % AUDIO_FRAME_SAMPLES;
        at.checked_sub(Duration::from_secs_f64(after as f64 / rate))
            .unwrap_or(first_at)
    };
    let template: Vec<f64> = click().iter().map(|&s| f64::from(s)).collect();
    let quiet = SAMPLE_RATE as usize / 10;
    let mut times = Vec::new();
    let mut last_loud: Option<usize> = None;
    for (i, s) in samples.iter().enumerate() {
        let loud = s.unsigned_abs() > 2000;
        if loud && last_loud.is_none_or(|l| i - l > quiet) {
            let from = i.saturating_sub(240);
            let to = (i + 240).min(samples.len().saturating_sub(template.len()));
            let best = (from..to.max(from + 1))
                .max_by(|&a, &b| {
                    correlation(&samples, a, &template)
                        .total_cmp(&correlation(&samples, b, &template))
                })
                .unwrap_or(i);
            times.push(sample_time(best));
        }
        if loud {
            last_loud = Some(i);
        }
    }
    times
}

fn correlation(samples: &[i16], at: usize, template: &[f64]) -> f64 {
    samples
        .iter()
        .skip(at)
        .zip(template)
        .map(|(&s, &t)| f64::from(s) * t)
        .sum()
}

/// For each click at the mouth, the delay to the first click at the ear within `window`
/// after it (clicks that never came out are left out).
#[must_use]
pub fn latencies(mouth: &[Instant], ear: &[Instant], window: Duration) -> Vec<Duration> {
    mouth
        .iter()
        .filter_map(|&t| {
            ear.iter()
                .find(|&&h| h >= t && h - t < window)
                .map(|&h| h - t)
        })
        .collect()
}

/// The median of `d` (zero when empty).
#[must_use]
pub fn median(d: &[Duration]) -> Duration {
    let mut sorted = d.to_vec();
    sorted.sort();
    let n = sorted.len();
    let at = |i: usize| sorted.get(i).copied().unwrap_or_default();
    match n {
        0 => Duration::ZERO,
        n if n % 2 == 1 => at(n / 2),
        n => (at(n / 2 - 1) + at(n / 2)) / 2,
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::indexing_slicing)]
mod tests {
    use super::*;

    /// Frames of `track` delayed by `delay` samples, timestamped as if captured live from `t0`.
    fn frames_of(track: &[i16], delay: usize, t0: Instant) -> Vec<(Instant, Vec<i16>)> {
        let mut delayed = vec![0i16; delay];
        delayed.extend_from_slice(track);
        delayed
            .chunks(AUDIO_FRAME_SAMPLES)
            .filter(|c| c.len() == AUDIO_FRAME_SAMPLES)
            .enumerate()
            .map(|(k, c)| {
                let end = (k + 1) * AUDIO_FRAME_SAMPLES - 1;
                (
                    t0 + Duration::from_secs_f64(end as f64 / f64::from(SAMPLE_RATE)),
                    c.to_vec(),
                )
            })
            .collect()
    }

    #[test]
    fn a_delay_between_two_probes_is_measured_to_the_sample() {
        let track = click_track(5, Duration::from_millis(500));
        let t0 = Instant::now();
        let mouth = click_times(&frames_of(&track, 0, t0));
        // 123.4 ms later at the ear (5923 samples), plus a little noise there.
        let mut ear_frames = frames_of(&track, 5923, t0);
        for (k, (_, f)) in ear_frames.iter_mut().enumerate() {
            for (j, s) in f.iter_mut().enumerate() {
                *s = s.saturating_add(((k * 7 + j * 13) % 200) as i16 - 100);
            }
        }
        let ear = click_times(&ear_frames);
        assert_eq!((mouth.len(), ear.len()), (5, 5));
        let d = latencies(&mouth, &ear, Duration::from_millis(500));
        assert_eq!(d.len(), 5);
        for x in &d {
            let ms = x.as_secs_f64() * 1000.0;
            assert!((ms - 123.4).abs() < 0.1, "{ms} ms");
        }
        assert_eq!(median(&d), d[2]);
    }

    #[test]
    fn a_click_that_never_came_out_is_left_out_and_silence_has_no_clicks() {
        let t0 = Instant::now();
        let track = click_track(3, Duration::from_millis(400));
        let mouth = click_times(&frames_of(&track, 0, t0));
        let mut lost = track.clone();
        let step = (0.4 * f64::from(SAMPLE_RATE)) as usize;
        lost[step / 2..step / 2 + 480].fill(0);
        let ear = click_times(&frames_of(&lost, 960, t0));
        assert_eq!(ear.len(), 2);
        assert_eq!(latencies(&mouth, &ear, Duration::from_millis(300)).len(), 2);
        assert!(click_times(&frames_of(&vec![0; 48_000], 0, t0)).is_empty());
        assert!(click_times(&[]).is_empty());
        assert_eq!(median(&[]), Duration::ZERO);
    }
}

//! The microphone: a cpal input stream turned into 20 ms 48 kHz mono frames.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc::{Receiver, SyncSender, TrySendError, sync_channel};
use std::time::{Duration, Instant};

use cpal::traits::{DeviceTrait, StreamTrait};
use cpal::{FromSample, SampleFormat, SizedSample};

use crate::convert::{Framer, Resampler, f32_to_i16};
use crate::error::{Direction, Error};
use crate::host::{self, DeviceChoice, StreamInfo};
use crate::stream_errors::StreamErrors;

/// Frames the microphone holds for a reader that falls behind (1 s); more are dropped.
const QUEUE_FRAMES: usize = 50;

/// A microphone that yields 20 ms frames of 48 kHz mono 16-bit PCM
/// ([`oracle_calls_media::AUDIO_FRAME_SAMPLES`] samples each), whatever the device's own rate
/// and channel count. Capture runs from [`Microphone::open`] until the value is dropped.
pub struct Microphone {
    frames: Receiver<(Instant, Vec<i16>)>,
    counters: Arc<Counters>,
    errors: StreamErrors,
    info: StreamInfo,
    _stream: cpal::Stream,
}

/// What a microphone has seen since it was opened.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct MicrophoneStats {
    /// Frames captured.
    pub frames: u64,
    /// Frames dropped because the reader fell more than a second behind.
    pub dropped_frames: u64,
    /// Errors the device reported while running (the stream goes on after most).
    pub errors: u64,
}

#[derive(Debug, Default)]
struct Counters {
    frames: AtomicU64,
    dropped: AtomicU64,
}

impl Microphone {
    /// Opens and starts the chosen input device.
    ///
    /// # Errors
    /// The host or device is missing, refuses the stream, or speaks a sample format this crate
    /// does not convert.
    pub fn open(choice: &DeviceChoice) -> Result<Microphone, Error> {
        let opened = host::open(choice, Direction::Input)?;
        let (tx, frames) = sync_channel(QUEUE_FRAMES);
        let counters = Arc::new(Counters::default());
        let errors = StreamErrors::new(Direction::Input);
        let capture = Capture {
            channels: usize::from(opened.config.channels.max(1)),
            resampler: Resampler::new(opened.config.sample_rate, oracle_calls_media::SAMPLE_RATE),
            framer: Framer::default(),
            resampled: Vec::new(),
            tx,
            counters: counters.clone(),
        };
        let stream = match opened.format {
            SampleFormat::I16 => build::<i16>(&opened, capture, &errors),
            SampleFormat::I32 => build::<i32>(&opened, capture, &errors),
            SampleFormat::F32 => build::<f32>(&opened, capture, &errors),
            SampleFormat::U8 => build::<u8>(&opened, capture, &errors),
            SampleFormat::U16 => build::<u16>(&opened, capture, &errors),
            format => {
                return Err(Error::UnsupportedFormat {
                    direction: Direction::Input,
                    format,
                });
            }
        }?;
        stream.play().map_err(|source| Error::Device {
            direction: Direction::Input,
            action: "start",
            source,
        })?;
        tracing::info!(host = opened.info.host, device = %opened.info.device,
            rate = opened.info.sample_rate, channels = opened.info.channels, "microphone open");
        Ok(Microphone {
            frames,
            counters,
            errors,
            info: opened.info,
            _stream: stream,
        })
    }

    /// The next frame, waiting up to `timeout`; `None` if none came in time.
    pub fn next_frame(&self, timeout: Duration) -> Option<Vec<i16>> {
        self.next_timed_frame(timeout).map(|(_, frame)| frame)
    }

    /// The next frame with the moment the device handed over its last sample (for latency
    /// measurements), waiting up to `timeout`; `None` if none came in time.
    pub fn next_timed_frame(&self, timeout: Duration) -> Option<(Instant, Vec<i16>)> {
        self.frames.recv_timeout(timeout).ok()
    }

    /// The next frame if one is already waiting.
    pub fn try_frame(&self) -> Option<Vec<i16>> {
        self.frames.try_recv().ok().map(|(_, frame)| frame)
    }

    /// Throws away the frames waiting to be read (e.g. captured before the call connected),
    /// so what is read next is fresh; returns how many there were.
    pub fn discard_waiting(&self) -> usize {
        self.frames.try_iter().count()
    }

    /// Counters since the microphone was opened.
    pub fn stats(&self) -> MicrophoneStats {
        MicrophoneStats {
            frames: self.counters.frames.load(Ordering::Relaxed),
            dropped_frames: self.counters.dropped.load(Ordering::Relaxed),
            errors: self.errors.count(),
        }
    }

    /// The device's stream, as opened.
    pub fn info(&self) -> &StreamInfo {
        &self.info
    }
}

impl std::fmt::Debug for Microphone {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Microphone")
            .field("info", &self.info)
            .field("stats", &self.stats())
            .finish_non_exhaustive()
    }
}

/// The state the input callback owns.
struct Capture {
    channels: usize,
    resampler: Resampler,
    framer: Framer,
    resampled: Vec<f32>,
    tx: SyncSender<(Instant, Vec<i16>)>,
    counters: Arc<Counters>,
}

impl Capture {
    fn take<T>(&mut self, data: &[T])
    where
        T: SizedSample,
        f32: FromSample<T>,
    {
        let now = Instant::now();
        self.resampled.clear();
        for frame in data.chunks(self.channels) {
            let sum: f32 = frame.iter().map(|&s| s.to_sample::<f32>()).sum();
            let mono = sum / frame.len().max(1) as f32;
            self.resampler.push(mono, &mut self.resampled);
        }
        for &s in &self.resampled {
            if let Some(frame) = self.framer.push(f32_to_i16(s)) {
                self.counters.frames.fetch_add(1, Ordering::Relaxed);
                if let Err(TrySendError::Full(_)) = self.tx.try_send((now, frame)) {
                    self.counters.dropped.fetch_add(1, Ordering::Relaxed);
                }
            }
        }
    }
}

fn build<T>(
    opened: &host::Opened,
    mut capture: Capture,
    errors: &StreamErrors,
) -> Result<cpal::Stream, Error>
where
    T: SizedSample,
    f32: FromSample<T>,
{
    opened
        .device
        .build_input_stream::<T, _, _>(
            opened.config,
            move |data: &[T], _: &cpal::InputCallbackInfo| capture.take(data),
            errors.callback(),
            None,
        )
        .map_err(|source| Error::Device {
            direction: Direction::Input,
            action: "open a stream",
            source,
        })
}

//! The speaker: 20 ms 48 kHz mono frames into a bounded playout buffer, played by a cpal
//! output stream at the device's pace.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};

use cpal::traits::{DeviceTrait, StreamTrait};
use cpal::{FromSample, SampleFormat, SizedSample};

use crate::convert::{Resampler, i16_to_f32};
use crate::error::{Direction, Error};
use crate::host::{self, DeviceChoice, StreamInfo};
use crate::playout::{PlayoutBuffer, PlayoutConfig, PlayoutStats};
use crate::stream_errors::StreamErrors;

/// A speaker that plays 48 kHz mono 16-bit frames, whatever the device's own rate and channel
/// count. Frames wait in a bounded playout buffer ([`PlayoutConfig`]): when it is full the
/// oldest audio is dropped, when it runs dry the device plays silence; both are counted.
/// Playback runs from [`Speaker::open`] until the value is dropped.
pub struct Speaker {
    buffer: Arc<Mutex<PlayoutBuffer>>,
    errors: StreamErrors,
    info: StreamInfo,
    _stream: cpal::Stream,
}

/// What a speaker has seen since it was opened.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct SpeakerStats {
    /// The playout buffer's counters.
    pub playout: PlayoutStats,
    /// Samples waiting in the playout buffer now.
    pub buffered_samples: usize,
    /// Errors the device reported while running (the stream goes on after most).
    pub errors: u64,
}

impl Speaker {
    /// Opens and starts the chosen output device.
    ///
    /// # Errors
    /// The host or device is missing, refuses the stream, or speaks a sample format this crate
    /// does not convert.
    pub fn open(choice: &DeviceChoice, playout: PlayoutConfig) -> Result<Speaker, Error> {
        let opened = host::open(choice, Direction::Output)?;
        let buffer = Arc::new(Mutex::new(PlayoutBuffer::new(playout)));
        let errors = StreamErrors::new(Direction::Output);
        let render = Render {
            channels: usize::from(opened.config.channels.max(1)),
            resampler: Resampler::new(oracle_calls_media::SAMPLE_RATE, opened.config.sample_rate),
            resampled: VecDeque::new(),
            buffer: buffer.clone(),
        };
        let stream = match opened.format {
            SampleFormat::I16 => build::<i16>(&opened, render, &errors),
            SampleFormat::I32 => build::<i32>(&opened, render, &errors),
            SampleFormat::F32 => build::<f32>(&opened, render, &errors),
            SampleFormat::U8 => build::<u8>(&opened, render, &errors),
            SampleFormat::U16 => build::<u16>(&opened, render, &errors),
            format => {
                return Err(Error::UnsupportedFormat {
                    direction: Direction::Output,
                    format,
                });
            }
        }?;
        stream.play().map_err(|source| Error::Device {
            direction: Direction::Output,
            action: "start",
            source,
        })?;
        tracing::info!(host = opened.info.host, device = %opened.info.device,
            rate = opened.info.sample_rate, channels = opened.info.channels, "speaker open");
        Ok(Speaker {
            buffer,
            errors,
            info: opened.info,
            _stream: stream,
        })
    }

    /// Queues samples to play (normally one 20 ms frame). Never blocks on the device.
    pub fn play(&self, pcm: &[i16]) {
        lock(&self.buffer).push(pcm);
    }

    /// Counters since the speaker was opened.
    pub fn stats(&self) -> SpeakerStats {
        let buffer = lock(&self.buffer);
        SpeakerStats {
            playout: buffer.stats(),
            buffered_samples: buffer.buffered(),
            errors: self.errors.count(),
        }
    }

    /// The device's stream, as opened.
    pub fn info(&self) -> &StreamInfo {
        &self.info
    }
}

impl std::fmt::Debug for Speaker {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Speaker")
            .field("info", &self.info)
            .field("stats", &self.stats())
            .finish_non_exhaustive()
    }
}

/// The playout buffer stays usable if a thread panicked while holding it: it holds samples
/// and counters only, no invariant a half-done push could break.
fn lock(buffer: &Mutex<PlayoutBuffer>) -> MutexGuard<'_, PlayoutBuffer> {
    buffer.lock().unwrap_or_else(PoisonError::into_inner)
}

/// The state the output callback owns.
struct Render {
    channels: usize,
    resampler: Resampler,
    resampled: VecDeque<f32>,
    buffer: Arc<Mutex<PlayoutBuffer>>,
}

impl Render {
    fn fill<T>(&mut self, data: &mut [T])
    where
        T: SizedSample + FromSample<f32>,
    {
        let mut buffer = lock(&self.buffer);
        for frame in data.chunks_mut(self.channels) {
            let sample = if self.resampler.is_identity() {
                i16_to_f32(buffer.pop())
            } else {
                loop {
                    if let Some(s) = self.resampled.pop_front() {
                        break s;
                    }
                    self.resampler
                        .push(i16_to_f32(buffer.pop()), &mut self.resampled);
                }
            };
            let value = T::from_sample(sample);
            frame.iter_mut().for_each(|out| *out = value);
        }
    }
}

fn build<T>(
    opened: &host::Opened,
    mut render: Render,
    errors: &StreamErrors,
) -> Result<cpal::Stream, Error>
where
    T: SizedSample + FromSample<f32>,
{
    opened
        .device
        .build_output_stream::<T, _, _>(
            opened.config,
            move |data: &mut [T], _: &cpal::OutputCallbackInfo| render.fill(data),
            errors.callback(),
            None,
        )
        .map_err(|source| Error::Device {
            direction: Direction::Output,
            action: "open a stream",
            source,
        })
}

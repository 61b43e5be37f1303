//! The audio side of person-to-person calls (`call @bob:…` / `answer`): `--mic` and
//! `--speaker` resolved into a source and a sink of 20 ms 48 kHz mono frames — the computer's
//! microphone and speaker (`oracle-calls-device`) or WAV files for tests and scripts — and
//! [`run_call_audio`], the loop that moves frames between them and a call.

use std::path::PathBuf;
use std::str::FromStr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use anyhow::Context as _;
use oracle_calls_device::{AudioHost, DeviceChoice, Microphone, PlayoutConfig, Speaker};
use oracle_calls_media::AUDIO_FRAME_SAMPLES;

use crate::wav;

/// One 20 ms frame's duration.
const FRAME: Duration = Duration::from_millis(20);

/// `--mic` / `--speaker` for a person-to-person call.
#[derive(Debug, Clone, clap::Args)]
pub struct CallAudioArgs {
    /// What you say: `default` (the system's default microphone), `device:NAME` (a named
    /// input, e.g. a PulseAudio source), or a 48 kHz 16-bit WAV file, said in real time and
    /// followed by silence.
    #[arg(long, default_value = "default")]
    pub mic: AudioEndpoint,
    /// What you hear: `default` (the system's default speaker), `device:NAME`, or a WAV file
    /// to write (48 kHz mono) when the call ends.
    #[arg(long, default_value = "default")]
    pub speaker: AudioEndpoint,
}

/// A microphone or speaker choice: a device, or a WAV file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AudioEndpoint {
    /// A sound device: the default one (`None`) or one by name.
    Device(Option<String>),
    /// A WAV file.
    Wav(PathBuf),
}

impl FromStr for AudioEndpoint {
    type Err = anyhow::Error;

    fn from_str(s: &str) -> anyhow::Result<AudioEndpoint> {
        if s == "default" {
            return Ok(AudioEndpoint::Device(None));
        }
        if let Some(name) = s.strip_prefix("device:") {
            anyhow::ensure!(!name.is_empty(), "`device:` needs a device name");
            return Ok(AudioEndpoint::Device(Some(name.to_owned())));
        }
        anyhow::ensure!(
            s.to_ascii_lowercase().ends_with(".wav"),
            "`{s}` is neither `default`, `device:NAME` nor a .wav file"
        );
        Ok(AudioEndpoint::Wav(PathBuf::from(s)))
    }
}

impl CallAudioArgs {
    /// Opens the microphone or reads the WAV file.
    ///
    /// # Errors
    /// The device cannot be opened, or the file cannot be read as 48 kHz 16-bit PCM.
    pub fn open_source(&self) -> anyhow::Result<FrameSource> {
        Ok(match &self.mic {
            AudioEndpoint::Device(name) => FrameSource::Device(
                Microphone::open(&device_choice(name)).context("opening the microphone")?,
            ),
            AudioEndpoint::Wav(path) => FrameSource::wav(wav::read(path)?),
        })
    }

    /// Opens the speaker, or prepares the WAV file written by [`FrameSink::finish`].
    ///
    /// # Errors
    /// The device cannot be opened.
    pub fn open_sink(&self) -> anyhow::Result<FrameSink> {
        Ok(match &self.speaker {
            AudioEndpoint::Device(name) => FrameSink::Device(
                Speaker::open(&device_choice(name), PlayoutConfig::default())
                    .context("opening the speaker")?,
            ),
            AudioEndpoint::Wav(path) => FrameSink::Wav {
                path: path.clone(),
                samples: Vec::new(),
            },
        })
    }
}

fn device_choice(name: &Option<String>) -> DeviceChoice {
    DeviceChoice {
        host: AudioHost::Auto,
        name: name.clone(),
    }
}

/// Where a call's outgoing audio comes from, one 20 ms frame at a time, in real time.
#[derive(Debug)]
pub enum FrameSource {
    /// The microphone: frames as the device captures them.
    Device(Microphone),
    /// A WAV file's samples, paced by the clock, then silence.
    Wav {
        /// The samples (48 kHz mono).
        samples: Vec<i16>,
        /// Samples already given.
        pos: usize,
        /// When the next frame is due; `None` until the first is asked for.
        next_at: Option<Instant>,
    },
}

impl FrameSource {
    /// A paced source of `samples`.
    pub fn wav(samples: Vec<i16>) -> FrameSource {
        FrameSource::Wav {
            samples,
            pos: 0,
            next_at: None,
        }
    }

    /// The next frame, when it is due (a WAV file's) or captured (the microphone's; `None`
    /// if the device gave nothing for 200 ms).
    pub fn next_frame(&mut self) -> Option<Vec<i16>> {
        match self {
            FrameSource::Device(mic) => mic.next_frame(Duration::from_millis(200)),
            FrameSource::Wav {
                samples,
                pos,
                next_at,
            } => {
                let due = next_at.get_or_insert_with(Instant::now);
                if let Some(wait) = due.checked_duration_since(Instant::now()) {
                    std::thread::sleep(wait);
                }
                *due += FRAME;
                let mut frame: Vec<i16> = samples
                    .get(*pos..)
                    .unwrap_or_default()
                    .iter()
                    .take(AUDIO_FRAME_SAMPLES)
                    .copied()
                    .collect();
                *pos += frame.len();
                frame.resize(AUDIO_FRAME_SAMPLES, 0);
                Some(frame)
            }
        }
    }

    /// Drops what a device captured before now (call this when the call connects, so the
    /// far end hears the present, not a backlog).
    pub fn skip_backlog(&mut self) {
        if let FrameSource::Device(mic) = self {
            let n = mic.discard_waiting();
            tracing::debug!(frames = n, "microphone backlog dropped");
        }
    }
}

/// Where a call's incoming audio goes.
#[derive(Debug)]
pub enum FrameSink {
    /// The speaker.
    Device(Speaker),
    /// A WAV file, written by [`FrameSink::finish`].
    Wav {
        /// The file.
        path: PathBuf,
        /// What was heard so far.
        samples: Vec<i16>,
    },
}

impl FrameSink {
    /// Plays (or records) one frame.
    pub fn play(&mut self, pcm: &[i16]) {
        match self {
            FrameSink::Device(speaker) => speaker.play(pcm),
            FrameSink::Wav { samples, .. } => samples.extend_from_slice(pcm),
        }
    }

    /// Ends playback: writes the WAV file, or logs the speaker's counters.
    ///
    /// # Errors
    /// The WAV file cannot be written.
    pub fn finish(self) -> anyhow::Result<()> {
        match self {
            FrameSink::Device(speaker) => {
                tracing::info!(stats = ?speaker.stats(), "speaker closed");
                Ok(())
            }
            FrameSink::Wav { path, samples } => wav::write(&path, &samples),
        }
    }
}

/// The two audio ends of a call, as the call driver offers them: 20 ms 48 kHz mono frames
/// out, and whatever decoded frames have arrived.
pub trait CallAudio {
    /// Sends one frame of what this side says.
    fn send_audio(&mut self, pcm: Vec<i16>);
    /// A frame of what the other side says, if one has arrived; never blocks.
    fn try_received_audio(&mut self) -> Option<Vec<i16>>;
}

/// Moves audio between the person and a call until `stop` is set: each frame from `source`
/// goes to the call, and every frame the call received meanwhile goes to `sink`. Runs on a
/// plain thread (the microphone blocks); returns the frames sent and played.
pub fn run_call_audio(
    source: &mut FrameSource,
    sink: &mut FrameSink,
    call: &mut impl CallAudio,
    stop: &AtomicBool,
) -> (u64, u64) {
    let (mut sent, mut played) = (0u64, 0u64);
    source.skip_backlog();
    while !stop.load(Ordering::Relaxed) {
        if let Some(frame) = source.next_frame() {
            call.send_audio(frame);
            sent += 1;
        }
        while let Some(pcm) = call.try_received_audio() {
            sink.play(&pcm);
            played += 1;
        }
    }
    (sent, played)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::indexing_slicing)]
    use std::collections::VecDeque;

    use oracle_calls_media::{goertzel_power, sine_tone};

    use super::*;

    #[test]
    fn endpoints_parse() {
        assert_eq!(
            "default".parse::<AudioEndpoint>().unwrap(),
            AudioEndpoint::Device(None)
        );
        assert_eq!(
            "device:spk".parse::<AudioEndpoint>().unwrap(),
            AudioEndpoint::Device(Some("spk".into()))
        );
        assert_eq!(
            "say.WAV".parse::<AudioEndpoint>().unwrap(),
            AudioEndpoint::Wav("say.WAV".into())
        );
        assert!("device:".parse::<AudioEndpoint>().is_err());
        assert!("mic.mp3".parse::<AudioEndpoint>().is_err());
    }

    /// A call whose far end says back what it hears.
    struct Echo(VecDeque<Vec<i16>>);

    impl CallAudio for Echo {
        fn send_audio(&mut self, pcm: Vec<i16>) {
            self.0.push_back(pcm);
        }
        fn try_received_audio(&mut self) -> Option<Vec<i16>> {
            self.0.pop_front()
        }
    }

    #[test]
    fn a_wav_is_said_in_real_time_and_what_comes_back_is_written() {
        let dir = std::env::temp_dir().join(format!("oc-call-audio-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let input = dir.join("say.wav");
        let output = dir.join("heard.wav");
        // 300 ms of 440 Hz, not a whole number of frames.
        wav::write(&input, &sine_tone(440.0, 8000.0, 0, 14_400)).unwrap();
        let args = CallAudioArgs {
            mic: input.to_str().unwrap().parse().unwrap(),
            speaker: output.to_str().unwrap().parse().unwrap(),
        };
        let mut source = args.open_source().unwrap();
        let mut sink = args.open_sink().unwrap();
        let stop = AtomicBool::new(false);
        let started = Instant::now();
        let (sent, played) = std::thread::scope(|s| {
            s.spawn(|| {
                std::thread::sleep(Duration::from_millis(400));
                stop.store(true, Ordering::Relaxed);
            });
            run_call_audio(&mut source, &mut sink, &mut Echo(VecDeque::new()), &stop)
        });
        let elapsed = started.elapsed();
        sink.finish().unwrap();
        // Paced: about 20 frames in 400 ms, not the whole file at once.
        assert!((18..=22).contains(&sent), "{sent} frames in {elapsed:?}");
        assert_eq!(played, sent);
        let heard = wav::read(&output).unwrap();
        assert_eq!(heard.len(), sent as usize * AUDIO_FRAME_SAMPLES);
        assert!(goertzel_power(&heard[..14_400], 440.0) > 0.9);
        assert!(
            heard[14_400..].iter().all(|&s| s == 0),
            "silence after the file"
        );
        let _ = std::fs::remove_dir_all(&dir);
    }
}

//! Choosing the audio host and device, and the stream configuration asked of it.

use cpal::traits::{DeviceTrait, HostTrait};
use cpal::{BufferSize, SampleFormat, StreamConfig};
use oracle_calls_media::{AUDIO_FRAME_SAMPLES, SAMPLE_RATE};

use crate::error::{Direction, Error};

/// Which of the machine's audio systems to use.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum AudioHost {
    /// PulseAudio when a server is reachable (this also covers PipeWire's pulse server),
    /// ALSA otherwise.
    #[default]
    Auto,
    /// cpal's own PulseAudio client: the stream asks the server for 48 kHz mono in 20 ms
    /// periods, so the server converts and the latency stays at a few periods.
    PulseAudio,
    /// ALSA, normally its `default` device (which Debian's pulse plugin routes to a running
    /// PulseAudio). Streams use the device's own format and buffer size, converted here.
    Alsa,
}

/// A microphone or speaker to open: a host and a device on it.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct DeviceChoice {
    /// The audio system.
    pub host: AudioHost,
    /// The device's name (as [`device_names`] lists it); `None` for the host's default.
    pub name: Option<String>,
}

/// How an opened stream runs: what the device gives or takes, before conversion to and from
/// 48 kHz mono frames.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StreamInfo {
    /// "PulseAudio" or "ALSA".
    pub host: &'static str,
    /// The device's name.
    pub device: String,
    /// The stream's sample rate.
    pub sample_rate: u32,
    /// The stream's channel count.
    pub channels: u16,
    /// The stream's sample format.
    pub sample_format: String,
    /// Frames per device period, when fixed.
    pub period_frames: Option<u32>,
}

/// The names of the host's devices in one direction, for `--mic`/`--speaker` choices.
///
/// # Errors
/// The host cannot be reached, or refuses to list its devices.
pub fn device_names(host: AudioHost, direction: Direction) -> Result<Vec<String>, Error> {
    let (host, _) = open_host(host)?;
    let devices = match direction {
        Direction::Input => host.input_devices(),
        Direction::Output => host.output_devices(),
    }
    .map_err(|source| Error::Device {
        direction,
        action: "be listed",
        source,
    })?;
    Ok(devices.map(|d| device_name(&d)).collect())
}

/// A device opened for one direction, with the stream configuration to use on it.
pub(crate) struct Opened {
    pub(crate) device: cpal::Device,
    pub(crate) config: StreamConfig,
    pub(crate) format: SampleFormat,
    pub(crate) info: StreamInfo,
}

pub(crate) fn open(choice: &DeviceChoice, direction: Direction) -> Result<Opened, Error> {
    let (host, kind) = open_host(choice.host)?;
    let device = match &choice.name {
        None => match direction {
            Direction::Input => host.default_input_device(),
            Direction::Output => host.default_output_device(),
        },
        Some(name) => match direction {
            Direction::Input => host.input_devices(),
            Direction::Output => host.output_devices(),
        }
        .map_err(|source| Error::Device {
            direction,
            action: "be listed",
            source,
        })?
        .find(|d| device_name(d) == *name),
    }
    .ok_or_else(|| Error::NoDevice {
        direction,
        name: choice.name.clone(),
    })?;
    let (config, format) = match kind {
        // PulseAudio converts rate, channels and format itself and honours a fixed period
        // as its latency target: ask for exactly what calls carry.
        HostKind::PulseAudio => (
            StreamConfig {
                channels: 1,
                sample_rate: SAMPLE_RATE,
                buffer_size: BufferSize::Fixed(AUDIO_FRAME_SAMPLES as u32),
            },
            SampleFormat::I16,
        ),
        // ALSA: the device's default configuration. A fixed period through the pulse plugin
        // raised storms of `snd_pcm_avail_delay` errors (docs/BENCHMARKS.md), so the buffer
        // size is left to the device.
        HostKind::Alsa => {
            let supported = match direction {
                Direction::Input => device.default_input_config(),
                Direction::Output => device.default_output_config(),
            }
            .map_err(|source| Error::Device {
                direction,
                action: "report its configuration",
                source,
            })?;
            (
                StreamConfig {
                    channels: supported.channels(),
                    sample_rate: supported.sample_rate(),
                    buffer_size: BufferSize::Default,
                },
                supported.sample_format(),
            )
        }
    };
    let info = StreamInfo {
        host: kind.name(),
        device: device_name(&device),
        sample_rate: config.sample_rate,
        channels: config.channels,
        sample_format: format.to_string(),
        period_frames: match config.buffer_size {
            BufferSize::Fixed(n) => Some(n),
            BufferSize::Default => None,
        },
    };
    Ok(Opened {
        device,
        config,
        format,
        info,
    })
}

#[derive(Debug, Clone, Copy)]
enum HostKind {
    PulseAudio,
    Alsa,
}

impl HostKind {
    fn name(self) -> &'static str {
        match self {
            HostKind::PulseAudio => "PulseAudio",
            HostKind::Alsa => "ALSA",
        }
    }

    fn id(self) -> cpal::HostId {
        match self {
            HostKind::PulseAudio => cpal::HostId::PulseAudio,
            HostKind::Alsa => cpal::HostId::Alsa,
        }
    }
}

fn open_host(choice: AudioHost) -> Result<(cpal::Host, HostKind), Error> {
    let try_open = |kind: HostKind| {
        cpal::host_from_id(kind.id())
            .map(|h| (h, kind))
            .map_err(|source| Error::HostUnavailable {
                host: kind.name(),
                source,
            })
    };
    match choice {
        AudioHost::PulseAudio => try_open(HostKind::PulseAudio),
        AudioHost::Alsa => try_open(HostKind::Alsa),
        AudioHost::Auto => try_open(HostKind::PulseAudio).or_else(|e| {
            tracing::debug!(error = %e, "no PulseAudio server; using ALSA");
            try_open(HostKind::Alsa)
        }),
    }
}

/// The host's identifier of the device (PulseAudio: `spk`, `mic`; ALSA: `default`,
/// `hw:0,0`), else its description.
fn device_name(device: &cpal::Device) -> String {
    device
        .id()
        .map(|id| id.id().to_owned())
        .or_else(|_| device.description().map(|d| d.name().to_owned()))
        .unwrap_or_else(|_| "(unnamed)".to_owned())
}

//! The crate's error type.

/// Which way audio flows through a device.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Direction {
    /// A microphone (capture).
    Input,
    /// A speaker (playback).
    Output,
}

impl std::fmt::Display for Direction {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Direction::Input => "microphone",
            Direction::Output => "speaker",
        })
    }
}

/// Why a microphone or speaker could not be opened.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// The chosen audio host (PulseAudio, ALSA) cannot be reached on this machine.
    #[error("the {host} audio host is not available")]
    HostUnavailable {
        /// The host's name.
        host: &'static str,
        /// What the host said.
        #[source]
        source: cpal::Error,
    },
    /// The host has no such device (no default one, or none by the name asked for).
    #[error("no {direction} device{}", name.as_deref().map(|n| format!(" named {n:?}")).unwrap_or_default())]
    NoDevice {
        /// Microphone or speaker.
        direction: Direction,
        /// The name asked for; `None` for the default device.
        name: Option<String>,
    },
    /// The device refused to be listed, configured or started.
    #[error("the {direction} device failed to {action}")]
    Device {
        /// Microphone or speaker.
        direction: Direction,
        /// What was being done: "report its configuration", "open a stream", "start".
        action: &'static str,
        /// What the device said.
        #[source]
        source: cpal::Error,
    },
    /// The device only speaks a sample format this crate does not convert.
    #[error("the {direction} device uses the unsupported sample format {format}")]
    UnsupportedFormat {
        /// Microphone or speaker.
        direction: Direction,
        /// The device's format.
        format: cpal::SampleFormat,
    },
}

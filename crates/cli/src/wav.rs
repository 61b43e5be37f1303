//! 16-bit PCM WAV files at 48 kHz mono, the format calls speak.

use std::path::Path;

use anyhow::{Context as _, bail};

/// Reads a WAV file as 48 kHz mono 16-bit samples (stereo is mixed down; other rates refused).
pub fn read(path: &Path) -> anyhow::Result<Vec<i16>> {
    let mut r =
        hound::WavReader::open(path).with_context(|| format!("opening {}", path.display()))?;
    let spec = r.spec();
    if spec.sample_rate != 48_000 {
        bail!(
            "{} is {} Hz; calls carry 48 kHz audio (convert it, e.g. `sox in.wav -r 48000 out.wav`)",
            path.display(),
            spec.sample_rate
        );
    }
    if spec.bits_per_sample != 16 || spec.sample_format != hound::SampleFormat::Int {
        bail!("{} is not 16-bit PCM", path.display());
    }
    let samples: Vec<i16> = r
        .samples::<i16>()
        .collect::<Result<_, _>>()
        .with_context(|| format!("reading {}", path.display()))?;
    let ch = usize::from(spec.channels.max(1));
    Ok(samples
        .chunks(ch)
        .map(|c| (c.iter().map(|&s| i32::from(s)).sum::<i32>() / c.len().max(1) as i32) as i16)
        .collect())
}

/// Writes 48 kHz mono 16-bit samples.
pub fn write(path: &Path, pcm: &[i16]) -> anyhow::Result<()> {
    let spec = hound::WavSpec {
        channels: 1,
        sample_rate: 48_000,
        bits_per_sample: 16,
        sample_format: hound::SampleFormat::Int,
    };
    let mut w = hound::WavWriter::create(path, spec)
        .with_context(|| format!("creating {}", path.display()))?;
    for &s in pcm {
        w.write_sample(s)?;
    }
    w.finalize()
        .with_context(|| format!("writing {}", path.display()))
}

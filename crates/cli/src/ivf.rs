//! IVF, the simple container libvpx and FFmpeg write VP8 into: a 32-byte file header
//! (`DKIF`, version, header size, FourCC, width, height, rate, scale, frame count), then per
//! frame a 12-byte header (size u32 LE, timestamp u64 LE) and the frame.

use anyhow::{Context as _, bail};

/// A VP8 stream read from an IVF file.
#[derive(Clone, Debug)]
pub struct Ivf {
    /// Width and height from the header.
    pub width: u16,
    /// Height.
    pub height: u16,
    /// The frames, in order.
    pub frames: Vec<Vec<u8>>,
}

/// Reads a VP8 IVF file's bytes.
///
/// # Errors
/// Not IVF, not VP8, or truncated.
pub fn parse(bytes: &[u8]) -> anyhow::Result<Ivf> {
    let header = bytes.get(..32).context("shorter than an IVF header")?;
    if header.get(..4) != Some(b"DKIF") {
        bail!("not an IVF file");
    }
    if header.get(8..12) != Some(b"VP80") {
        bail!("not VP8");
    }
    let u16_at = |i: usize| {
        header
            .get(i..i + 2)
            .and_then(|b| <[u8; 2]>::try_from(b).ok())
            .map(u16::from_le_bytes)
    };
    let header_len = usize::from(u16_at(6).context("header size")?);
    let (width, height) = (u16_at(12).context("width")?, u16_at(14).context("height")?);
    let mut rest = bytes.get(header_len..).context("truncated header")?;
    let mut frames = Vec::new();
    while !rest.is_empty() {
        let fh = rest.get(..12).context("truncated frame header")?;
        let len = fh
            .get(..4)
            .and_then(|b| <[u8; 4]>::try_from(b).ok())
            .map(u32::from_le_bytes)
            .context("frame size")? as usize;
        let frame = rest.get(12..12 + len).context("truncated frame")?;
        frames.push(frame.to_vec());
        rest = rest.get(12 + len..).unwrap_or_default();
    }
    Ok(Ivf {
        width,
        height,
        frames,
    })
}

/// Writes VP8 `frames` as an IVF file (timestamps are frame numbers at `fps`).
///
/// # Errors
/// I/O failures, or more frames than IVF counts.
pub fn write(
    path: &std::path::Path,
    width: u16,
    height: u16,
    fps: u32,
    frames: &[Vec<u8>],
) -> anyhow::Result<()> {
    let count = u32::try_from(frames.len()).context("too many frames")?;
    let mut out = Vec::new();
    out.extend_from_slice(b"DKIF");
    out.extend_from_slice(&0u16.to_le_bytes());
    out.extend_from_slice(&32u16.to_le_bytes());
    out.extend_from_slice(b"VP80");
    out.extend_from_slice(&width.to_le_bytes());
    out.extend_from_slice(&height.to_le_bytes());
    out.extend_from_slice(&fps.to_le_bytes());
    out.extend_from_slice(&1u32.to_le_bytes());
    out.extend_from_slice(&count.to_le_bytes());
    out.extend_from_slice(&0u32.to_le_bytes());
    for (i, f) in frames.iter().enumerate() {
        out.extend_from_slice(
            &u32::try_from(f.len())
                .context("frame too large")?
                .to_le_bytes(),
        );
        out.extend_from_slice(&(i as u64).to_le_bytes());
        out.extend_from_slice(f);
    }
    std::fs::write(path, out).with_context(|| format!("writing {}", path.display()))
}

/// True when `frame` is a VP8 key frame (RFC 6386 §9.1: bit 0 of the frame tag is 0).
pub fn is_keyframe(frame: &[u8]) -> bool {
    frame.first().is_some_and(|b| b & 1 == 0)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn the_fixture_reads_as_libvpx_wrote_it() {
        let ivf = parse(include_bytes!("../tests/fixtures/testsrc-320x240.ivf")).unwrap();
        assert_eq!((ivf.width, ivf.height, ivf.frames.len()), (320, 240, 30));
        assert!(is_keyframe(&ivf.frames[0]) && is_keyframe(&ivf.frames[15]));
        assert!(!is_keyframe(&ivf.frames[1]));
        assert!(parse(b"RIFF").is_err());
        let mut cut = include_bytes!("../tests/fixtures/testsrc-320x240.ivf").to_vec();
        cut.truncate(100);
        assert!(parse(&cut).is_err());
        let dir = std::env::temp_dir().join(format!("ivf-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("copy.ivf");
        write(&path, 320, 240, 15, &ivf.frames).unwrap();
        let again = parse(&std::fs::read(&path).unwrap()).unwrap();
        assert_eq!(again.frames, ivf.frames);
        let _ = std::fs::remove_dir_all(&dir);
    }
}

//! WAV (RIFF, PCM 16-bit) in and out, with a streaming reader for speech that arrives in
//! pieces (`espeak-ng --stdout`, `/v1/audio/speech`), whose header may give no data size.

use crate::engine::Pcm;

/// A 16 kHz (or any rate) mono 16-bit WAV file of `samples`.
pub fn encode(rate: u32, samples: &[i16]) -> Vec<u8> {
    let data_len = u32::try_from(samples.len() * 2).unwrap_or(u32::MAX - 36);
    let mut out = Vec::with_capacity(44 + samples.len() * 2);
    out.extend_from_slice(b"RIFF");
    out.extend_from_slice(&(36 + data_len).to_le_bytes());
    out.extend_from_slice(b"WAVEfmt ");
    out.extend_from_slice(&16u32.to_le_bytes());
    out.extend_from_slice(&1u16.to_le_bytes()); // PCM
    out.extend_from_slice(&1u16.to_le_bytes()); // mono
    out.extend_from_slice(&rate.to_le_bytes());
    out.extend_from_slice(&(rate * 2).to_le_bytes());
    out.extend_from_slice(&2u16.to_le_bytes());
    out.extend_from_slice(&16u16.to_le_bytes());
    out.extend_from_slice(b"data");
    out.extend_from_slice(&data_len.to_le_bytes());
    for s in samples {
        out.extend_from_slice(&s.to_le_bytes());
    }
    out
}

/// Why bytes are not a WAV this reader takes.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("not a 16-bit PCM WAV: {0}")]
pub struct WavError(pub String);

/// The format of a WAV stream, from its `fmt ` chunk.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Format {
    rate: u32,
    channels: u16,
}

/// Reads a WAV stream piece by piece: [`push`](WavReader::push) bytes as they come, take the
/// mono samples decoded so far. Stereo (or more channels) is mixed down to mono. A data chunk
/// whose size is 0 or `0xFFFF_FFFF` (written by a program that could not seek back) runs to
/// the end of the stream.
#[derive(Debug, Default)]
pub struct WavReader {
    buf: Vec<u8>,
    format: Option<Format>,
    /// Bytes of the data chunk still to come, when its header gave a size.
    data_left: Option<usize>,
    header_done: bool,
}

/// The largest header (all chunks before `data`) accepted.
const MAX_HEADER: usize = 64 * 1024;

impl WavReader {
    /// A reader at the start of a stream.
    pub fn new() -> Self {
        Self::default()
    }

    /// The sample rate, once the header is read.
    pub fn rate(&self) -> Option<u32> {
        self.format.map(|f| f.rate)
    }

    /// Feeds bytes; returns the whole mono samples they complete (none while the header is
    /// still arriving).
    ///
    /// # Errors
    /// The header is not RIFF/WAVE PCM 16-bit, or is unreasonably long.
    pub fn push(&mut self, bytes: &[u8]) -> Result<Vec<i16>, WavError> {
        self.buf.extend_from_slice(bytes);
        if !self.header_done {
            self.parse_header()?;
            if !self.header_done {
                return Ok(Vec::new());
            }
        }
        let Some(f) = self.format else {
            return Ok(Vec::new());
        };
        if let Some(left) = self.data_left {
            // Whatever follows the data chunk (a trailing LIST, padding) is not audio.
            self.buf.truncate(left);
        }
        let frame = usize::from(f.channels) * 2;
        let whole = self.buf.len() / frame * frame;
        if let Some(left) = &mut self.data_left {
            *left -= whole;
        }
        let mut out = Vec::with_capacity(whole / frame);
        for chunk in self.buf.chunks_exact(frame) {
            let sum: i32 = chunk
                .chunks_exact(2)
                .filter_map(|s| <[u8; 2]>::try_from(s).ok())
                .map(|s| i32::from(i16::from_le_bytes(s)))
                .sum();
            let mono = sum / i32::from(f.channels);
            out.push(i16::try_from(mono).unwrap_or(0));
        }
        self.buf.drain(..whole);
        Ok(out)
    }

    fn parse_header(&mut self) -> Result<(), WavError> {
        if self.buf.len() < 12 {
            return Ok(());
        }
        if self.buf.get(..4) != Some(b"RIFF") || self.buf.get(8..12) != Some(b"WAVE") {
            return Err(WavError("no RIFF/WAVE header".into()));
        }
        let mut at = 12usize;
        loop {
            if at > MAX_HEADER {
                return Err(WavError("no data chunk in the first 64 KiB".into()));
            }
            let (Some(id), Some(len)) = (self.buf.get(at..at + 4), u32_at(&self.buf, at + 4))
            else {
                return Ok(());
            };
            let len = len as usize;
            if id == b"data" {
                if self.format.is_none() {
                    return Err(WavError("data before fmt".into()));
                }
                self.buf.drain(..at + 8);
                self.data_left = (len != 0 && len != 0xFFFF_FFFF).then_some(len);
                self.header_done = true;
                return Ok(());
            }
            let padded = len + (len & 1);
            if at + 8 + len > MAX_HEADER {
                return Err(WavError("no data chunk in the first 64 KiB".into()));
            }
            let Some(body) = self.buf.get(at + 8..at + 8 + len) else {
                return Ok(());
            };
            if id == b"fmt " {
                let (Some(tag), Some(channels), Some(rate), Some(bits)) = (
                    u16_at(body, 0),
                    u16_at(body, 2),
                    u32_at(body, 4),
                    u16_at(body, 14),
                ) else {
                    return Err(WavError("fmt chunk too short".into()));
                };
                // 0xFFFE is WAVE_FORMAT_EXTENSIBLE; its subformat is checked by the bit depth.
                if (tag != 1 && tag != 0xFFFE) || bits != 16 {
                    return Err(WavError(format!("format {tag:#x} with {bits} bits")));
                }
                if channels == 0 || channels > 8 || !(4000..=384_000).contains(&rate) {
                    return Err(WavError(format!("{channels} channels at {rate} Hz")));
                }
                self.format = Some(Format { rate, channels });
            }
            at += 8 + padded;
        }
    }

    /// Whether the header has been read.
    pub fn started(&self) -> bool {
        self.header_done
    }
}

fn u16_at(b: &[u8], at: usize) -> Option<u16> {
    let s = b.get(at..at + 2)?;
    Some(u16::from_le_bytes(<[u8; 2]>::try_from(s).ok()?))
}

fn u32_at(b: &[u8], at: usize) -> Option<u32> {
    let s = b.get(at..at + 4)?;
    Some(u32::from_le_bytes(<[u8; 4]>::try_from(s).ok()?))
}

/// Decodes a whole WAV file to mono.
///
/// # Errors
/// As [`WavReader::push`], or the file ends inside its header.
pub fn decode(bytes: &[u8]) -> Result<Pcm, WavError> {
    let mut r = WavReader::new();
    let samples = r.push(bytes)?;
    let rate = r
        .rate()
        .filter(|_| r.started())
        .ok_or_else(|| WavError("the file ends inside its header".into()))?;
    Ok(Pcm { rate, samples })
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::indexing_slicing)]
    use super::*;

    #[test]
    fn encode_then_decode_is_the_identity() {
        let s: Vec<i16> = (0..1000).map(|i| (i * 37 % 2000 - 1000) as i16).collect();
        let w = encode(16000, &s);
        assert_eq!(w.len(), 44 + 2000);
        let p = decode(&w).unwrap();
        assert_eq!(p.rate, 16000);
        assert_eq!(p.samples, s);
    }

    #[test]
    fn streamed_byte_by_byte_with_unknown_size_and_extra_chunks() {
        let s: Vec<i16> = (0..300).map(|i| i as i16 * 7).collect();
        let mut w = encode(22050, &s);
        // A LIST chunk before data, and a data size a pipe writer leaves unknown.
        let list = b"LIST\x05\x00\x00\x00abcde\x00";
        w.splice(36..36, list.iter().copied());
        let d = 36 + list.len() + 4;
        w[d..d + 4].copy_from_slice(&0xFFFF_FFFFu32.to_le_bytes());
        let mut r = WavReader::new();
        let mut got = Vec::new();
        for b in &w {
            got.extend(r.push(&[*b]).unwrap());
        }
        assert_eq!(r.rate(), Some(22050));
        assert_eq!(got, s);
    }

    #[test]
    fn chunks_after_the_data_are_not_audio() {
        let mut w = encode(16000, &[5, 6, 7]);
        w.extend_from_slice(b"LIST\x04\x00\x00\x00abcd");
        assert_eq!(decode(&w).unwrap().samples, vec![5, 6, 7]);
    }

    #[test]
    fn stereo_is_mixed_down() {
        let mut w = encode(8000, &[100, 300, -100, -300]);
        w[22] = 2; // channels
        let p = decode(&w).unwrap();
        assert_eq!(p.samples, vec![200, -200]);
    }

    #[test]
    fn not_a_wav_is_refused_with_a_reason() {
        assert!(decode(b"ID3\x04 this is an mp3 file....").is_err());
        let mut w = encode(16000, &[1, 2]);
        w[34] = 8; // 8-bit
        assert!(decode(&w).unwrap_err().0.contains("8 bits"));
        assert!(decode(&w[..20]).is_err());
        let mut r = WavReader::new();
        let mut junk = b"RIFF\x00\x00\x00\x00WAVEjunk\x00\x00\x01\x00".to_vec();
        junk.extend(std::iter::repeat_n(0u8, 1000));
        assert!(r.push(&junk).is_err(), "a 64 KiB chunk before the data");
        // A long file read whole is fine.
        let long = encode(16000, &vec![3i16; 100_000]);
        assert_eq!(decode(&long).unwrap().samples.len(), 100_000);
    }
}

//! Opus, set up the one way calls use it: 48 kHz mono, the VoIP application, 20 ms frames.

use crate::pcm::{AUDIO_FRAME_SAMPLES, SAMPLE_RATE};

/// The largest Opus packet we produce (one UDP datagram's worth).
const MAX_PACKET: usize = 1500;
/// The most samples one Opus packet can decode to at 48 kHz (120 ms).
const MAX_DECODED: usize = 5760;

/// Why encoding or decoding failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// The caller passed a frame of the wrong length (a frame is [`AUDIO_FRAME_SAMPLES`]).
    #[error("an audio frame is {expected} samples, got {got}")]
    FrameSize {
        /// [`AUDIO_FRAME_SAMPLES`].
        expected: usize,
        /// What was passed.
        got: usize,
    },
    /// libopus refused (a corrupt packet from the peer, or a bad setting).
    #[error("opus: {0}")]
    Opus(#[from] opus::Error),
}

/// An Opus encoder for one outgoing audio track.
pub struct OpusEncoder {
    inner: opus::Encoder,
}

impl std::fmt::Debug for OpusEncoder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("OpusEncoder").finish_non_exhaustive()
    }
}

impl OpusEncoder {
    /// A fresh encoder; `complexity` 0 (cheapest) ..= 10 (larger values are capped), `None`
    /// keeps libopus's default.
    ///
    /// # Errors
    /// [`Error::Opus`] if libopus cannot make the encoder.
    pub fn new(complexity: Option<u8>) -> Result<OpusEncoder, Error> {
        let mut inner =
            opus::Encoder::new(SAMPLE_RATE, opus::Channels::Mono, opus::Application::Voip)?;
        if let Some(c) = complexity {
            inner.set_complexity(i32::from(c.min(10)))?;
        }
        Ok(OpusEncoder { inner })
    }

    /// The encoder's complexity (libopus's default unless one was given).
    ///
    /// # Errors
    /// [`Error::Opus`] if libopus does not answer.
    pub fn complexity(&mut self) -> Result<i32, Error> {
        Ok(self.inner.get_complexity()?)
    }

    /// Encodes one 20 ms frame ([`AUDIO_FRAME_SAMPLES`] samples) into one Opus packet.
    ///
    /// # Errors
    /// [`Error::FrameSize`] for a frame of another length, [`Error::Opus`] if libopus fails.
    pub fn encode(&mut self, pcm: &[i16]) -> Result<Vec<u8>, Error> {
        if pcm.len() != AUDIO_FRAME_SAMPLES {
            return Err(Error::FrameSize {
                expected: AUDIO_FRAME_SAMPLES,
                got: pcm.len(),
            });
        }
        let mut out = vec![0u8; MAX_PACKET];
        let n = self.inner.encode(pcm, &mut out)?;
        out.truncate(n);
        Ok(out)
    }
}

/// An Opus decoder for one incoming audio track.
pub struct OpusDecoder {
    inner: opus::Decoder,
}

impl std::fmt::Debug for OpusDecoder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("OpusDecoder").finish_non_exhaustive()
    }
}

impl OpusDecoder {
    /// A fresh decoder.
    ///
    /// # Errors
    /// [`Error::Opus`] if libopus cannot make the decoder.
    pub fn new() -> Result<OpusDecoder, Error> {
        Ok(OpusDecoder {
            inner: opus::Decoder::new(SAMPLE_RATE, opus::Channels::Mono)?,
        })
    }

    /// Decodes one Opus packet (untrusted: from the network) into 48 kHz mono PCM.
    ///
    /// # Errors
    /// [`Error::Opus`] for a packet libopus cannot decode.
    pub fn decode(&mut self, packet: &[u8]) -> Result<Vec<i16>, Error> {
        let mut pcm = vec![0i16; MAX_DECODED];
        let n = self.inner.decode(packet, &mut pcm, false)?;
        pcm.truncate(n);
        Ok(pcm)
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::indexing_slicing)]
    use super::*;
    use crate::pcm::{goertzel_power, sine_tone};

    #[test]
    fn a_tone_survives_the_round_trip() {
        let mut enc = OpusEncoder::new(Some(5)).unwrap();
        assert_eq!(enc.complexity().unwrap(), 5);
        let mut dec = OpusDecoder::new().unwrap();
        let mut heard = Vec::new();
        for i in 0..50u64 {
            let pcm = sine_tone(880.0, 8000.0, i * 960, 960);
            let packet = enc.encode(&pcm).unwrap();
            assert!(packet.len() < 400);
            heard.extend(dec.decode(&packet).unwrap());
        }
        assert_eq!(heard.len(), 50 * 960);
        let tail = &heard[heard.len() / 2..];
        assert!(goertzel_power(tail, 880.0) > 0.8);
        assert!(goertzel_power(tail, 440.0) < 0.05);
    }

    #[test]
    fn bad_input_is_a_typed_error() {
        let mut enc = OpusEncoder::new(Some(200)).unwrap();
        assert_eq!(enc.complexity().unwrap(), 10);
        assert!(matches!(
            enc.encode(&[0; 480]),
            Err(Error::FrameSize {
                expected: 960,
                got: 480
            })
        ));
        let mut dec = OpusDecoder::new().unwrap();
        // A code-3 packet whose frame count byte claims 0 frames is malformed.
        assert!(matches!(dec.decode(&[0x03, 0x00]), Err(Error::Opus(_))));
    }
}

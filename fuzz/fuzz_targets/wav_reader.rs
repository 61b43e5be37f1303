//! The streaming WAV reader (speech from `/v1/audio/speech` and `espeak-ng --stdout`, bytes a
//! TTS server chooses): never panics; the samples do not depend on how the stream is cut into
//! pieces; whatever decodes re-encodes and decodes to the same audio.
//!
//! Input: one byte that picks the piece size (0 = the whole input at once), then the stream.
#![no_main]

use libfuzzer_sys::fuzz_target;
use oracle_calls_speech::wav::{WavReader, decode, encode};

fuzz_target!(|data: &[u8]| {
    let Some((&cut, stream)) = data.split_first() else {
        return;
    };
    let whole = decode(stream);

    // The same stream, pushed in pieces of `cut` bytes (the last one shorter).
    let mut reader = WavReader::new();
    let mut samples = Vec::new();
    let mut streamed = Ok(());
    let piece = if cut == 0 {
        stream.len().max(1)
    } else {
        usize::from(cut)
    };
    for chunk in stream.chunks(piece) {
        match reader.push(chunk) {
            Ok(s) => samples.extend(s),
            Err(e) => {
                streamed = Err(e);
                break;
            }
        }
    }
    match (&whole, &streamed) {
        (Ok(pcm), Ok(())) => {
            assert_eq!(
                pcm.samples, samples,
                "samples depend on the piece size {piece}"
            );
            assert_eq!(reader.rate(), Some(pcm.rate));
            // What was decoded is a mono WAV of its own: encode and decode give it back.
            let again = decode(&encode(pcm.rate, &pcm.samples)).expect("re-encoded WAV decodes");
            assert_eq!(&again, pcm);
        }
        // A whole stream that ends inside its header is refused by `decode` only; the
        // streaming reader is still waiting for the rest and has produced nothing.
        (Err(_), Ok(())) => {
            assert!(
                !reader.started() && samples.is_empty(),
                "decode refused, pieces accepted"
            );
        }
        (Ok(_), Err(e)) => panic!("decode accepted, pieces refused: {e}"),
        (Err(a), Err(b)) => assert_eq!(a, b, "different reasons for the same stream"),
    }
});

//! `bench opus`: what each Opus encoder complexity costs and what it keeps, on the same
//! synthesized speech the demo uses. Encoding is most of a call's CPU at the agent (a profile
//! of `bench agent` puts libopus's SILK encoder on top), so this is the knob that decides how
//! many calls an agent process holds.

use std::time::Instant;

use anyhow::Context as _;
use oracle_calls_media::{AUDIO_FRAME_SAMPLES as FRAME, OpusDecoder, OpusEncoder};

/// Encodes `pcm` in 20 ms frames with a fresh encoder at `complexity`; returns the packets
/// and the time per frame in microseconds.
fn encode(pcm: &[i16], complexity: i32) -> anyhow::Result<(Vec<Vec<u8>>, f64)> {
    let complexity = u8::try_from(complexity).context("complexity")?;
    let mut enc = OpusEncoder::new(Some(complexity))?;
    let mut packets = Vec::with_capacity(pcm.len() / FRAME);
    let t = Instant::now();
    for f in pcm.chunks_exact(FRAME) {
        packets.push(enc.encode(f)?);
    }
    let us = t.elapsed().as_secs_f64() * 1e6 / packets.len().max(1) as f64;
    Ok((packets, us))
}

/// Decodes `packets`; returns the PCM and the time per frame in microseconds.
fn decode(packets: &[Vec<u8>]) -> anyhow::Result<(Vec<i16>, f64)> {
    let mut dec = OpusDecoder::new()?;
    let mut pcm = Vec::with_capacity(packets.len() * FRAME);
    let t = Instant::now();
    for p in packets {
        pcm.extend_from_slice(&dec.decode(p)?);
    }
    let us = t.elapsed().as_secs_f64() * 1e6 / packets.len().max(1) as f64;
    Ok((pcm, us))
}

/// Signal-to-noise ratio (dB) of `decoded` against `original`, after shifting it by the
/// codec's delay (the lag, up to 30 ms, with the best match).
fn snr_db(original: &[i16], decoded: &[i16]) -> f64 {
    let best = |lag: usize| -> f64 {
        original
            .iter()
            .zip(decoded.iter().skip(lag))
            .map(|(&a, &b)| f64::from(a) * f64::from(b))
            .sum()
    };
    let lag = (0..1440)
        .step_by(4)
        .max_by(|&a, &b| best(a).total_cmp(&best(b)))
        .unwrap_or(0);
    let lag = (lag.saturating_sub(4)..lag + 4)
        .max_by(|&a, &b| best(a).total_cmp(&best(b)))
        .unwrap_or(lag);
    let (mut sig, mut noise) = (0.0f64, 0.0f64);
    for (&a, &b) in original.iter().zip(decoded.iter().skip(lag)) {
        let (a, b) = (f64::from(a), f64::from(b));
        sig += a * a;
        noise += (a - b) * (a - b);
    }
    10.0 * (sig / noise.max(1.0)).log10()
}

fn median(v: &mut [f64]) -> f64 {
    v.sort_by(f64::total_cmp);
    v.get(v.len() / 2).copied().unwrap_or(f64::NAN)
}

/// Runs the benchmark: `rounds` rounds over `seconds` of speech, the complexities interleaved
/// in each round so the machine's noise spreads over all of them.
pub fn run(seconds: f64, rounds: usize) -> anyhow::Result<()> {
    let speech = oracle_calls_lab::speech::synthesize(seconds, 7);
    let default = OpusEncoder::new(None)?.complexity()?;
    let mut levels = vec![default, 10, 8, 5, 3, 1, 0];
    levels.dedup();
    levels.sort_unstable_by(|a, b| b.cmp(a));
    levels.dedup();
    let mut enc_us: Vec<Vec<f64>> = vec![Vec::new(); levels.len()];
    let mut dec_us = Vec::new();
    let mut snr = vec![0.0; levels.len()];
    for round in 0..rounds.max(1) {
        for (i, &c) in levels.iter().enumerate() {
            let (packets, us) = encode(&speech, c)?;
            if let Some(v) = enc_us.get_mut(i) {
                v.push(us);
            }
            let (pcm, d) = decode(&packets)?;
            if c == default {
                dec_us.push(d);
            }
            if round == 0
                && let Some(s) = snr.get_mut(i)
            {
                *s = snr_db(&speech, &pcm);
            }
        }
        eprint!(".");
    }
    eprintln!();
    let reference = levels
        .iter()
        .position(|&c| c == default)
        .and_then(|i| enc_us.get_mut(i))
        .map(|v| median(v))
        .unwrap_or(f64::NAN);
    println!(
        "bench opus: 48 kHz mono VoIP, 20 ms frames, {seconds} s of synthesized speech, {rounds} rounds (medians); libopus default complexity {default}"
    );
    println!(
        "{:>10} {:>16} {:>12} {:>16} {:>10}",
        "complexity", "encode µs/frame", "× default", "cores per stream", "SNR dB"
    );
    for (i, &c) in levels.iter().enumerate() {
        let us = enc_us.get_mut(i).map(|v| median(v)).unwrap_or(f64::NAN);
        println!(
            "{c:>10} {us:>16.1} {:>12.2} {:>16.4} {:>10.1}",
            us / reference,
            us / 20_000.0,
            snr.get(i).copied().unwrap_or(f64::NAN)
        );
    }
    let d = median(&mut dec_us);
    println!(
        "{:>10} {d:>16.1} {:>12.2} {:>16.4}",
        "decode",
        d / reference,
        d / 20_000.0
    );
    Ok(())
}

//! What voice activity detection costs a call: CPU time per second of call audio for
//! earshot behind `VadFramer` (48 → 16 kHz, cut to 256-sample detector frames), next to
//! references measured in the same run: the 48 → 16 kHz `Downsampler` alone, and `VadFramer`
//! with the level detector `EnergyVad` (downsampling plus one RMS per frame).
//!
//! `cargo bench -p oracle-calls-speech --bench vad`
//!
//! The audio is synthetic speech (flite slt and espeak-ng en-us, five sentences each, 0.5 s of
//! silence between them) fed in 20 ms call frames, as the agent does. CPU time is the
//! benchmark thread's own (`/proc/thread-self/schedstat`, nanoseconds on the CPU), so time
//! spent waiting for a core another process holds is not counted; wall time is printed next
//! to it. Variants take turns round by round so a change of load hits them alike; medians over
//! the rounds are reported.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::indexing_slicing,
    clippy::panic
)]

use std::hint::black_box;
use std::time::{Duration, Instant};

use oracle_calls_speech::audio::{CALL_FRAME, CALL_RATE, Downsampler};
use oracle_calls_speech::espeak::EspeakTts;
use oracle_calls_speech::flite::FliteTts;
use oracle_calls_speech::session::render;
use oracle_calls_speech::vad::{EarshotVad, EnergyVad, VadFramer};
use oracle_calls_speech::{TextToSpeech, Vad};

const SENTENCES: [&str; 5] = [
    "Hello oracle, what is the weather going to be like tomorrow in London?",
    "Please tell me a short story about a friendly robot who learns to play the piano.",
    "Six thick thistle sticks were found in the soft fresh grass.",
    "How far is it from the station to the harbour, and when does the ferry leave?",
    "Thank you, that is all I wanted to know for now.",
];

const ROUNDS: usize = 15;
/// Each measurement runs the clip enough times to last at least this long on the CPU, so
/// the scheduler's accounting granularity does not matter.
const MIN_RUN: Duration = Duration::from_millis(300);

/// This thread's time on the CPU.
fn thread_cpu() -> Duration {
    let s = std::fs::read_to_string("/proc/thread-self/schedstat")
        .expect("/proc/thread-self/schedstat (Linux)");
    let ns: u64 = s
        .split_whitespace()
        .next()
        .and_then(|f| f.parse().ok())
        .expect("schedstat's first field");
    Duration::from_nanos(ns)
}

fn speech() -> Vec<i16> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let voices: Vec<Box<dyn TextToSpeech>> = vec![
        Box::new(FliteTts::new("flite", "slt").unwrap()),
        Box::new(EspeakTts::new("espeak-ng", "en-us", 175).unwrap()),
    ];
    let mut pcm = Vec::new();
    for tts in &voices {
        for s in SENTENCES {
            pcm.extend(std::iter::repeat_n(0i16, CALL_RATE as usize / 2));
            pcm.extend(rt.block_on(render(tts.as_ref(), s)).unwrap());
        }
    }
    pcm.extend(std::iter::repeat_n(0i16, CALL_RATE as usize / 2));
    pcm.truncate(pcm.len() / CALL_FRAME * CALL_FRAME);
    pcm
}

/// One way of processing the call audio; returns something derived from every frame so
/// nothing is optimised away.
type Run = fn(&[i16]) -> f64;

fn downsample_only(pcm: &[i16]) -> f64 {
    let mut d = Downsampler::new();
    let mut n = 0usize;
    for f in pcm.chunks_exact(CALL_FRAME) {
        n += black_box(d.push(f)).len();
    }
    n as f64
}

fn framer<V: Vad>(vad: V, pcm: &[i16]) -> f64 {
    let mut v = VadFramer::new(vad);
    let mut voiced = 0usize;
    for f in pcm.chunks_exact(CALL_FRAME) {
        let (_, p) = v.push(f);
        voiced += usize::from(black_box(p) >= 0.5);
    }
    voiced as f64 / (pcm.len() / CALL_FRAME) as f64
}

fn energy(pcm: &[i16]) -> f64 {
    framer(EnergyVad { threshold: 0.003 }, pcm)
}

fn earshot(pcm: &[i16]) -> f64 {
    framer(EarshotVad::default(), pcm)
}

/// earshot alone on audio already at 16 kHz (256-sample frames): the detector's own share.
fn earshot_only(pcm16: &[i16]) -> f64 {
    let mut vad = EarshotVad::default();
    let mut voiced = 0usize;
    let mut frames = 0usize;
    for f in pcm16.chunks_exact(256) {
        voiced += usize::from(black_box(vad.predict(f)) >= 0.5);
        frames += 1;
    }
    voiced as f64 / frames.max(1) as f64
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

fn load() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .map(|s| s.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
        .unwrap_or_default()
}

fn main() {
    // `cargo bench` passes `--bench`; `cargo test --benches` does not: then only check that
    // every variant runs.
    let quick = !std::env::args().any(|a| a == "--bench");
    let cpu_model = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("model name"))
                .and_then(|l| l.split(':').nth(1))
                .map(|m| m.trim().to_owned())
        })
        .unwrap_or_default();
    let cores = std::thread::available_parallelism().map_or(0, |n| n.get());
    println!(
        "machine: {cores} cores, {cpu_model:?}; load average at start {}",
        load()
    );

    let pcm = speech();
    let seconds = pcm.len() as f64 / f64::from(CALL_RATE);
    let pcm16 = Downsampler::new().push(&pcm);
    println!(
        "audio: {seconds:.1} s of synthetic speech and silence, {} call frames",
        pcm.len() / CALL_FRAME
    );

    // (name, run, its input: the same audio, at 48 kHz or already at 16 kHz)
    let variants: [(&str, Run, &[i16]); 4] = [
        ("Downsampler alone (48 -> 16 kHz)", downsample_only, &pcm),
        ("VadFramer<EnergyVad>", energy, &pcm),
        ("VadFramer<EarshotVad>", earshot, &pcm),
        ("EarshotVad alone on 16 kHz", earshot_only, &pcm16),
    ];

    // Calibrate: repeats per measurement so that each lasts at least MIN_RUN.
    let repeats: Vec<usize> = variants
        .iter()
        .map(|(_, run, input)| {
            let t = thread_cpu();
            black_box(run(input));
            let once = (thread_cpu() - t).max(Duration::from_micros(100));
            if quick {
                1
            } else {
                (MIN_RUN.as_secs_f64() / once.as_secs_f64()).ceil() as usize
            }
        })
        .collect();

    let rounds = if quick { 1 } else { ROUNDS };
    let mut cpu: Vec<Vec<f64>> = vec![Vec::new(); variants.len()];
    let mut wall: Vec<Vec<f64>> = vec![Vec::new(); variants.len()];
    let mut voiced = vec![0f64; variants.len()];
    for _ in 0..rounds {
        for (i, (_, run, input)) in variants.iter().enumerate() {
            let (t, w) = (thread_cpu(), Instant::now());
            for _ in 0..repeats[i] {
                voiced[i] = black_box(run(input));
            }
            let audio = seconds * repeats[i] as f64;
            cpu[i].push((thread_cpu() - t).as_secs_f64() / audio);
            wall[i].push(w.elapsed().as_secs_f64() / audio);
        }
    }

    let cpu: Vec<f64> = cpu.into_iter().map(median).collect();
    let wall: Vec<f64> = wall.into_iter().map(median).collect();
    let frames_per_second = f64::from(CALL_RATE) / CALL_FRAME as f64;
    println!(
        "\n{rounds} rounds, medians; per second of call audio (real-time factor = CPU seconds \
         per audio second)\n\n\
         | variant | CPU ms per s of audio | real-time factor | µs per 20 ms call frame | wall ms per s | vs Downsampler alone | frames >= 0.5 |\n\
         |---|---:|---:|---:|---:|---:|---:|"
    );
    for (i, (name, _, _)) in variants.iter().enumerate() {
        let share = if i == 0 {
            String::new()
        } else {
            format!("{:.1} %", 100.0 * voiced[i])
        };
        println!(
            "| {name} | {:.3} | {:.5} | {:.2} | {:.3} | {:.1}x | {share} |",
            cpu[i] * 1e3,
            cpu[i],
            cpu[i] * 1e6 / frames_per_second,
            wall[i] * 1e3,
            cpu[i] / cpu[0],
        );
    }
    println!("\nload average at end {}", load());
    assert!(voiced[2] > 0.3, "earshot heard no speech: {}", voiced[2]);
}

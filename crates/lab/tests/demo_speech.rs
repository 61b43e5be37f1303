//! `oracle-lab demo --oracle speech` as a person runs it: the real binary, the real stack,
//! the speaking oracle with the offline engines. It must exit 0 with every verification line a
//! PASS, the answer it checked being the knowledge file's, and its recordings on disk; without
//! the speech engines it must stop at once and say how to install them.
//!
//! Needs `scripts/speech-setup` (the sidecar's venv and model, outside the clone) and the
//! stack (`scripts/stack up`; the demo brings it up itself if it is down).
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]

use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::{Duration, Instant};

fn out_dir(tag: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("oc-demo-speech-{tag}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    d
}

fn demo(args: &[&str], out: &Path, env: &[(&str, &Path)]) -> (Output, String, String) {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_oracle-lab"));
    cmd.arg("demo").args(args).arg("--out").arg(out);
    for (k, v) in env {
        cmd.env(k, v);
    }
    let o = cmd.output().unwrap();
    let stdout = String::from_utf8_lossy(&o.stdout).into_owned();
    let stderr = String::from_utf8_lossy(&o.stderr).into_owned();
    (o, stdout, stderr)
}

/// Seconds of audio in a 48 kHz mono WAV file.
fn seconds_of(wav: &Path) -> f64 {
    let r = hound::WavReader::open(wav).unwrap();
    let spec = r.spec();
    assert_eq!((spec.sample_rate, spec.channels), (48_000, 1), "{wav:?}");
    f64::from(r.duration()) / 48_000.0
}

#[test]
fn the_speaking_demo_hears_the_knowledge_files_answer_and_passes_every_check() {
    let out = out_dir("run");
    let question = "How many legs does a spider have?";
    let t = Instant::now();
    let (o, stdout, stderr) = demo(&["--oracle", "speech", "--question", question], &out, &[]);
    eprintln!(
        "{stderr}\n{stdout}\n(the demo took {:.1} s)",
        t.elapsed().as_secs_f64()
    );
    assert!(o.status.success(), "exit {:?}", o.status);

    let verification: Vec<&str> = stdout
        .lines()
        .skip_while(|l| *l != "Verification")
        .skip(1)
        .take_while(|l| !l.is_empty())
        .collect();
    // The agent heard the user; greeting; answer; keyless observer on both tracks; the
    // Matrix event; the database; key transparency; forward secrecy; the call ended.
    assert_eq!(verification.len(), 10, "{verification:#?}");
    assert!(
        verification.iter().all(|l| l.starts_with("  PASS ")),
        "{verification:#?}"
    );
    let answered = verification
        .iter()
        .find(|l| l.contains("the oracle answered the spoken question"))
        .expect("an answer line");
    assert!(
        answered.contains(&format!(
            "against \"A spider has eight legs.\", the knowledge brain's answer to {question:?}"
        )),
        "{answered}"
    );
    for what in [
        "could not recover the user's question",
        "could not recover the oracle's answer",
        "the user heard the oracle's greeting",
    ] {
        assert!(
            verification.iter().any(|l| l.contains(what)),
            "{what}: {verification:#?}"
        );
    }
    assert!(
        stdout.contains("All checks passed."),
        "the summary line is missing"
    );

    // The user-side latency and the agent's own split of the same turn are reported.
    let v2v = stdout
        .lines()
        .find_map(|l| l.strip_prefix("  voice to voice at the user: "))
        .expect("the latency line");
    let mut parts = v2v.split(' ');
    let n: f64 = parts.next().unwrap().parse().unwrap();
    let ms = match parts.next().unwrap() {
        "ms" => n,
        "s" => n * 1000.0,
        unit => panic!("{unit} in {v2v}"),
    };
    assert!(ms > 0.0 && ms < 40_000.0, "{v2v}");
    let split = stdout
        .lines()
        .find(|l| l.starts_with("  the agent's split"))
        .expect("the agent's split");
    assert!(
        split.contains("end-of-turn wait ") && !split.contains("reported no answered turn"),
        "{split}"
    );

    // The recordings: the question as said, and everything the oracle said (greeting and
    // answer: longer than the answer alone, which is longer than a second).
    let question_secs = seconds_of(&out.join("user-says.wav"));
    let oracle_secs = seconds_of(&out.join("oracle-answers.wav"));
    assert!(question_secs > 1.0, "{question_secs}");
    assert!(oracle_secs > 3.0, "{oracle_secs}");
    let _ = std::fs::remove_dir_all(&out);
}

#[test]
fn without_the_speech_engines_the_demo_stops_and_says_how_to_install_them() {
    let out = out_dir("missing");
    let empty = out_dir("no-engines");
    std::fs::create_dir_all(&empty).unwrap();
    let t = Instant::now();
    let (o, stdout, stderr) = demo(&["--oracle", "speech"], &out, &[("OC_SPEECH_HOME", &empty)]);
    assert!(!o.status.success(), "{stdout}\n{stderr}");
    assert!(stderr.contains("run scripts/speech-setup"), "{stderr}");
    assert!(!stdout.contains("PASS"), "{stdout}");
    // It stops before provisioning anything.
    assert!(!stderr.contains("[3/9]"), "{stderr}");
    assert!(t.elapsed() < Duration::from_secs(60), "{:?}", t.elapsed());

    let (o, _, stderr) = demo(&["--oracle", "speech", "--question", "  "], &out, &[]);
    assert!(!o.status.success());
    assert!(stderr.contains("--question is empty"), "{stderr}");
    let _ = std::fs::remove_dir_all(&out);
    let _ = std::fs::remove_dir_all(&empty);
}

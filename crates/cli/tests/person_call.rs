//! A person-to-person call between two `oracle-calls` processes on device audio: alice runs
//! `call @bob:…`, bob runs `answer`, each with `--mic default --speaker default` on a
//! PulseAudio of its own (`scripts/pulse`: null sink `spk`, microphone fed by `micsink`).
//! A 440 Hz tone goes into alice's microphone and 880 Hz into bob's; each speaker's monitor
//! is recorded, and each must carry the other side's tone.
//!
//! Needs `scripts/stack up` (Synapse with TURN, coturn) and PulseAudio (`scripts/pulse`).
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]

use std::io::{BufRead as _, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use oracle_calls_media::{goertzel_power, sine_tone};
use oracle_calls_test_support::{parse_env, repo_root, stack_user, stack_var};

/// A private PulseAudio server, stopped on drop.
struct Pulse {
    dir: PathBuf,
    env: Vec<(String, String)>,
}

impl Pulse {
    fn up(dir: &Path) -> Pulse {
        let out = Command::new(repo_root().join("scripts/pulse"))
            .arg("up")
            .arg(dir)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "scripts/pulse up: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let env = parse_env(&String::from_utf8_lossy(&out.stdout))
            .into_iter()
            .collect();
        Pulse {
            dir: dir.to_owned(),
            env,
        }
    }

    fn cmd(&self, args: &[&str]) -> Command {
        let mut c = Command::new(repo_root().join("scripts/pulse"));
        c.args(args.first())
            .arg(&self.dir)
            .args(args.get(1..).unwrap_or_default());
        c
    }
}

impl Drop for Pulse {
    fn drop(&mut self) {
        let _ = self.cmd(&["down"]).status();
    }
}

/// A running `oracle-calls` whose standard error is collected as it comes.
struct Proc {
    child: Child,
    log: Arc<Mutex<String>>,
}

impl Proc {
    fn spawn(mut cmd: Command) -> Proc {
        let mut child = cmd
            .stderr(Stdio::piped())
            .stdout(Stdio::null())
            .spawn()
            .unwrap();
        let stderr = child.stderr.take().unwrap();
        let log = Arc::new(Mutex::new(String::new()));
        let sink = log.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines() {
                let Ok(line) = line else { break };
                let mut l = sink.lock().unwrap();
                l.push_str(&line);
                l.push('\n');
            }
        });
        Proc { child, log }
    }

    fn log(&self) -> String {
        self.log.lock().unwrap().clone()
    }

    fn wait_for(&mut self, what: &str, limit: Duration) {
        let until = Instant::now() + limit;
        while Instant::now() < until {
            if self.log().contains(what) {
                return;
            }
            if let Some(st) = self.child.try_wait().unwrap() {
                panic!("exited ({st}) before `{what}`:\n{}", self.log());
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        panic!("no `{what}` within {limit:?}:\n{}", self.log());
    }

    fn wait_exit(&mut self, limit: Duration) -> std::process::ExitStatus {
        let until = Instant::now() + limit;
        while Instant::now() < until {
            if let Some(st) = self.child.try_wait().unwrap() {
                return st;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        let _ = self.child.kill();
        panic!("still running after {limit:?}:\n{}", self.log());
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn oracle_calls(pulse: &Pulse, state: &Path, user: &str, password: &str) -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_oracle-calls"));
    c.envs(pulse.env.iter().map(|(k, v)| (k.as_str(), v.as_str())))
        .env("ORACLE_CALLS_HOMESERVER", stack_var("MATRIX_URL"))
        .env("ORACLE_CALLS_USER", user)
        .env("ORACLE_CALLS_STATE", state)
        .env("ORACLE_CALLS_MATRIX_PASSWORD", password)
        .env("NO_COLOR", "1")
        .env_remove("ORACLE_CALLS_ORACLE")
        .env(
            "RUST_LOG",
            "info,matrix_sdk=warn,matrix_sdk_base=warn,matrix_sdk_crypto=warn",
        );
    c
}

fn db_over_neighbours(pcm: &[i16], freq: f64) -> f64 {
    let p = goertzel_power(pcm, freq);
    let n = goertzel_power(pcm, freq * 0.8).max(goertzel_power(pcm, freq * 1.25));
    10.0 * (p / n.max(1e-12)).log10()
}

/// The samples from the first loud 20 ms block on (what was heard once audio flowed).
fn heard(path: &Path) -> Vec<i16> {
    let pcm = oracle_calls::wav::read(path).unwrap();
    let start = pcm
        .chunks(960)
        .position(|c| c.iter().any(|s| s.unsigned_abs() > 500))
        .unwrap_or_else(|| panic!("{} is silent", path.display()));
    pcm[start * 960..].to_vec()
}

#[test]
fn two_processes_call_each_other_on_device_audio() {
    let (alice, alice_pw) = stack_user("pc-alice-");
    let (bob, bob_pw) = stack_user("pc-bob-");
    let server_name = stack_var("MATRIX_SERVER_NAME");
    // Short: PulseAudio's socket path must stay under ~100 bytes.
    let dir = PathBuf::from("/tmp").join(format!("ocpc{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let pa = Pulse::up(&dir.join("pa"));
    let pb = Pulse::up(&dir.join("pb"));
    let (tone_a, tone_b) = (dir.join("a440.wav"), dir.join("b880.wav"));
    oracle_calls::wav::write(&tone_a, &sine_tone(440.0, 8000.0, 0, 48_000 * 6)).unwrap();
    oracle_calls::wav::write(&tone_b, &sine_tone(880.0, 8000.0, 0, 48_000 * 6)).unwrap();

    let mut answer = oracle_calls(&pb, &dir.join("state-b"), &bob, &bob_pw);
    answer.args([
        "answer",
        "--mic",
        "default",
        "--speaker",
        "default",
        "--timeout",
        "90",
    ]);
    let mut b = Proc::spawn(answer);
    b.wait_for("waiting for a call", Duration::from_secs(60));

    let mut call = oracle_calls(&pa, &dir.join("state-a"), &alice, &alice_pw);
    call.arg("call").arg(format!("@{bob}:{server_name}")).args([
        "--mic",
        "default",
        "--speaker",
        "default",
        "--seconds",
        "10",
    ]);
    let mut a = Proc::spawn(call);
    a.wait_for("connected", Duration::from_secs(60));
    b.wait_for("connected", Duration::from_secs(20));

    // Both tones at once; both speakers recorded meanwhile.
    let (rec_a, rec_b) = (dir.join("heard-by-alice.wav"), dir.join("heard-by-bob.wav"));
    let mut jobs: Vec<Child> = vec![
        pa.cmd(&["play", tone_a.to_str().unwrap()]).spawn().unwrap(),
        pb.cmd(&["play", tone_b.to_str().unwrap()]).spawn().unwrap(),
        pa.cmd(&["record", "6", rec_a.to_str().unwrap()])
            .spawn()
            .unwrap(),
        pb.cmd(&["record", "6", rec_b.to_str().unwrap()])
            .spawn()
            .unwrap(),
    ];
    for j in &mut jobs {
        assert!(j.wait().unwrap().success());
    }

    // Alice hangs up after 10 s; both exit cleanly.
    let sa = a.wait_exit(Duration::from_secs(40));
    let sb = b.wait_exit(Duration::from_secs(40));
    let (la, lb) = (a.log(), b.log());
    assert!(sa.success(), "alice: {sa}\n{la}");
    assert!(sb.success(), "bob: {sb}\n{lb}");
    for (who, log) in [("alice", &la), ("bob", &lb)] {
        assert!(log.contains("key confirmed"), "{who}: {log}");
        assert!(
            log.contains("microphone_errors=0") && log.contains("speaker_errors=0"),
            "{who}'s devices reported errors:\n{log}"
        );
    }
    assert!(lb.contains("the other person hung up"), "{lb}");

    let by_bob = heard(&rec_b);
    let by_alice = heard(&rec_a);
    let db_b = db_over_neighbours(&by_bob, 440.0);
    let db_a = db_over_neighbours(&by_alice, 880.0);
    eprintln!(
        "bob hears 440 Hz at {db_b:.1} dB, alice hears 880 Hz at {db_a:.1} dB over neighbours"
    );
    assert!(
        db_b >= 20.0,
        "bob hears 440 Hz only {db_b:.1} dB over its neighbours"
    );
    assert!(
        db_a >= 20.0,
        "alice hears 880 Hz only {db_a:.1} dB over its neighbours"
    );
    drop((pa, pb));
    let _ = std::fs::remove_dir_all(&dir);
}

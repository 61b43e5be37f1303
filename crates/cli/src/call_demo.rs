//! `oracle-calls demo`: a real end-to-end encrypted call between a person and an oracle on the
//! local stack, with a timeline and a verification block in which every line is a real check.

use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail};
use oracle_calls::analysis::{self, Match};
use oracle_calls::local::{DeployOptions, Deployment, Stack};
use oracle_calls::local_kt::{self, KtDirectory};
use oracle_calls::{speech, verify, wav};
use oracle_calls_agent::JobOutcome;
use oracle_calls_client::{CallEvent, Phase};
use oracle_calls_proto::{CallStatus, CallType};
use oracle_calls_rtc::{Room, RoomEvent, RoomOptions};

/// What `demo` was asked for.
#[derive(Debug)]
pub struct Options {
    /// Seconds of speech the user says.
    pub seconds: u32,
    /// Where the WAV files and state go.
    pub out: PathBuf,
}

struct Step {
    t: Instant,
}

impl Step {
    fn start(n: u32, total: u32, what: &str) -> Self {
        eprint!("[{n}/{total}] {what} … ");
        Self { t: Instant::now() }
    }
    fn done(self, detail: &str) -> Duration {
        let d = self.t.elapsed();
        eprintln!("{} {detail}", fmt(d));
        d
    }
}

fn fmt(d: Duration) -> String {
    if d < Duration::from_secs(1) {
        format!("{} ms", d.as_millis())
    } else {
        format!("{:.2} s", d.as_secs_f64())
    }
}

struct Check {
    ok: bool,
    line: String,
}

pub fn run(opts: Options) -> anyhow::Result<()> {
    let rt = tokio::runtime::Runtime::new().context("starting the async runtime")?;
    rt.block_on(demo(opts))
}

async fn demo(opts: Options) -> anyhow::Result<()> {
    let total = 7;
    eprintln!(
        "oracle-calls demo: a real end-to-end encrypted call to an AI oracle on the local stack\n"
    );
    std::fs::create_dir_all(&opts.out)
        .with_context(|| format!("creating {}", opts.out.display()))?;
    let out = std::fs::canonicalize(&opts.out)?;

    eprintln!(
        "[1/{total}] stack: Synapse, livekit-server, PostgreSQL (scripts/stack up; the first run installs them)"
    );
    let t = Instant::now();
    let stack = tokio::task::spawn_blocking(Stack::up).await??;
    eprintln!("[1/{total}] stack up … {}", fmt(t.elapsed()));

    let s = Step::start(
        2,
        total,
        "provision the oracle (key pair, Matrix bot, API key, prekeys), start the server, an echo agent and its key-transparency directory",
    );
    let state = out.join("state");
    let _ = std::fs::remove_dir_all(&state);
    let dep = Deployment::start(stack.clone(), DeployOptions::new(&state)).await?;
    // An auditor's copy of the key holder's store before the call: with the oracle key it
    // opens the call's envelope, so the database can be searched for the call key; the store
    // itself will not open it after the call (forward secrecy).
    let store = dep.prekey_store().context("no prekey store")?.to_owned();
    let prekeys_before = verify::read_prekey_store(&store)?;
    // The oracle's operator publishes its record in a key-transparency directory; the user's
    // client takes the oracle's keys, bot devices and prekey signing key from it, verified.
    let exe = std::env::current_exe().context("this program's path")?;
    let kt = KtDirectory::new(&exe, state.join("kt"), &dep.oracle_did)?;
    let kt_service = kt.start("data")?;
    let record = local_kt::record_of(&local_kt::well_known(&dep.server.url).await?);
    let published = local_kt::publish(&kt_service, &kt.token, &dep.oracle_did, &record).await?;
    s.done(&format!(
        "({}, server {}, directory {})",
        dep.oracle_did, dep.server.url, kt_service.base
    ));

    let s = Step::start(3, total, "provision the user and log in its Matrix device");
    let kt_config = kt.config(&kt_service);
    let client = dep
        .new_user_with(|c| c.key_transparency = Some(kt_config))
        .await?;
    s.done(&format!(
        "({}; the oracle's record is in the key-transparency directory at epoch {})",
        client.user_did(),
        published.checkpoint.epoch
    ));

    let s = Step::start(4, total, "call_oracle(audio)");
    let mut call = client.call_oracle(CallType::Audio).await?;
    s.done(&format!("(call {})", call.id()));
    // A participant in the same room with a valid join token but no key.
    let lk = stack.livekit()?;
    let observer_token = lk.join_token(call.id().room_name().as_str(), "keyless-observer", 300);
    let (observer, observer_events) = Room::connect(
        stack.get("LIVEKIT_URL")?,
        &observer_token,
        RoomOptions::default(),
    )
    .await?;
    let user_identity = call.identity().unwrap_or_default().to_owned();
    let observer_task = tokio::spawn(listen_without_key(observer_events, user_identity));

    let input = speech::synthesize(f64::from(opts.seconds), 2026);
    let input_wav = out.join("user-says.wav");
    wav::write(&input_wav, &input)?;
    let s = Step::start(
        5,
        total,
        &format!(
            "talk: {} s of synthesized speech ({})",
            opts.seconds,
            input_wav.display()
        ),
    );
    let mic = call.microphone();
    let speech_in = input.clone();
    let speaker = tokio::spawn(async move { mic.play(&speech_in).await });
    let mut heard = Vec::new();
    let mut decrypt_failures = 0u64;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(u64::from(opts.seconds) + 2);
    loop {
        match tokio::time::timeout_at(deadline, call.next_event()).await {
            Ok(Some(CallEvent::OracleAudio { pcm })) => heard.extend(pcm),
            Ok(Some(CallEvent::DecryptionFailed { failures, .. })) => decrypt_failures = failures,
            Ok(Some(CallEvent::Ended { reason })) => bail!("the call ended early: {reason}"),
            Ok(Some(_)) => {}
            Ok(None) | Err(_) => break,
        }
    }
    // A room closing mid-sentence is judged by the checks below, not here.
    let _ = speaker.await?;
    let answer_wav = out.join("oracle-answers.wav");
    wav::write(&answer_wav, &heard)?;
    s.done(&format!("(the oracle's answer: {})", answer_wav.display()));

    let s = Step::start(6, total, "hang up");
    let hung_up = Instant::now();
    call.end().await?;
    observer.leave().await;
    let agent = dep.agent.as_ref().context("no agent")?;
    let report = tokio::time::timeout(Duration::from_secs(10), agent.next_report())
        .await
        .context("the agent did not finish the call within 10 s")?
        .context("the agent stopped")?;
    let agent_left = hung_up.elapsed();
    s.done(&format!(
        "(the agent left {} after the hang-up)",
        fmt(agent_left)
    ));
    let observed = observer_task.await?;

    eprintln!("[7/{total}] verify\n");
    // Timeline.
    println!("Timeline (from call_oracle())");
    let tl = call.timeline();
    for (p, at) in tl.marks() {
        println!(
            "  {:<24} {:>9}   (+{})",
            p.as_str(),
            fmt(*at),
            fmt(tl.duration_of(*p).unwrap_or_default())
        );
    }
    if let Some(k) = report.key_ready_after {
        println!(
            "  agent: key fetched + opened {} after its job was assigned; in the room after {}",
            fmt(k),
            fmt(report.joined_after.unwrap_or_default())
        );
    }
    println!();

    let mut checks = Vec::new();
    checks.push(Check {
        ok: report.frames_heard > 0 && report.decrypt_failures == 0
            && matches!(report.outcome, JobOutcome::Served { .. }),
        line: format!(
            "the agent heard the user: {} frames decrypted and decoded, {} failed to decrypt ({:?})",
            report.frames_heard, report.decrypt_failures, report.outcome
        ),
    });
    let m: Match = analysis::compare(&input, &heard, 150);
    checks.push(Check {
        ok: m.envelope > 0.6 && decrypt_failures == 0,
        line: format!(
            "the user heard the agent: its echo follows the user's speech (envelope correlation {:.2} > 0.6 at {} ms delay, waveform {:.2}; {} decrypt failures)",
            m.envelope, m.delay_frames * 20, m.waveform, decrypt_failures
        ),
    });
    let o = &observed;
    let om = analysis::compare(&input, &o.pcm, 150);
    checks.push(Check {
        ok: o.subscribed_encrypted && om.waveform < 0.2,
        line: format!(
            "a keyless participant in the room could not recover the audio: subscribed to the user's track ({}), {} frames decoded from ciphertext, waveform correlation with the speech {:.2} < 0.2",
            if o.subscribed_encrypted { "marked encrypted" } else { "NOT seen" },
            o.pcm.len() / 960,
            om.waveform
        ),
    });
    let (ty, leaks) = verify::stored_event_type(&client, &call).await?;
    checks.push(Check {
        ok: ty == "m.room.encrypted" && !leaks,
        line: format!(
            "the call event on the homeserver is stored as `{ty}`{}",
            if leaks {
                " and its JSON shows the call content!"
            } else {
                " (no call field visible in it)"
            }
        ),
    });
    let key_pair = oracle_calls::keyfile::read_private_key(&dep.key_file)?;
    let db_check = match dep.sqlite_file() {
        Some(f) => verify::database_holds_no_key(&f, &key_pair, &prekeys_before, &call, call.id())
            .map(|n| format!("the server's database holds no call key ({n} bytes of SQLite files searched for the key as raw bytes, hex and base64)")),
        None => Err(anyhow::anyhow!("not a SQLite deployment")),
    };
    checks.push(match db_check {
        Ok(line) => Check { ok: true, line },
        Err(e) => Check {
            ok: false,
            line: format!("the server's database holds no call key: {e}"),
        },
    });
    let trust = client.oracle_trust()?;
    let verified = trust.as_ref().and_then(|t| t.kt_record.as_ref());
    checks.push(Check {
        ok: verified == Some(&record)
            && trust.as_ref().and_then(|t| t.prekey_signing_key.as_ref())
                == record.prekey_signing_key.as_ref(),
        line: format!(
            "the client took the oracle's keys, bot devices and prekey signing key from its key-transparency record, verified against a checkpoint the directory signed (epoch {})",
            trust
                .as_ref()
                .and_then(|t| t.kt_epoch)
                .map_or_else(|| "none".to_owned(), |e| e.to_string())
        ),
    });
    checks.push(
        match verify::past_call_stays_closed(&key_pair, &store, &call, call.id()) {
            Ok(id) => Check {
                ok: true,
                line: format!(
                    "forward secrecy: the call key was sealed to one-time prekey {id}, destroyed once the agent opened it; the oracle's long-term key with everything left in its key holder's store does not open the envelope"
                ),
            },
            Err(e) => Check {
                ok: false,
                line: format!("forward secrecy: {e}"),
            },
        },
    );
    let stored = dep
        .server
        .state
        .store()
        .call(call.id())
        .await?
        .context("the call is not in the store")?;
    let in_matrix = verify::latest_status_in_matrix(&client, &call).await;
    checks.push(Check {
        ok: stored.status == CallStatus::Ended && matches!(in_matrix, Ok(CallStatus::Ended)),
        line: format!(
            "the call is ended in the store (status {}, reason {:?}) and in Matrix (latest edit: {})",
            stored.status,
            stored.reason,
            match &in_matrix { Ok(s) => s.to_string(), Err(e) => format!("{e}") }
        ),
    });

    println!("Verification");
    for c in &checks {
        println!("  {} {}", if c.ok { "PASS" } else { "FAIL" }, c.line);
    }
    let _ = tl.at(Phase::FirstAudio);
    dep.stop().await;
    if checks.iter().all(|c| c.ok) {
        println!(
            "\nAll checks passed. Files: {} and {}",
            input_wav.display(),
            answer_wav.display()
        );
        Ok(())
    } else {
        bail!(
            "{} of {} checks failed",
            checks.iter().filter(|c| !c.ok).count(),
            checks.len()
        )
    }
}

struct Observed {
    subscribed_encrypted: bool,
    pcm: Vec<i16>,
}

/// Collects what a participant without the key gets of the user's track.
async fn listen_without_key(
    mut events: tokio::sync::mpsc::Receiver<RoomEvent>,
    user: String,
) -> Observed {
    let mut o = Observed {
        subscribed_encrypted: false,
        pcm: Vec::new(),
    };
    while let Some(ev) = events.recv().await {
        match ev {
            RoomEvent::TrackSubscribed {
                identity,
                encrypted,
                ..
            } if identity == user => {
                o.subscribed_encrypted = encrypted;
            }
            RoomEvent::AudioFrame { identity, pcm, .. } if identity == user => o.pcm.extend(pcm),
            RoomEvent::Disconnected { .. } => break,
            _ => {}
        }
    }
    o
}

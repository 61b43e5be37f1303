//! `oracle-lab demo`: a real end-to-end encrypted call between a person and an oracle on the
//! local stack, with a timeline and a verification block in which every line is a real check.
//!
//! Two oracles. `echo` says back what it hears: the user's synthesized speech must come back.
//! `speech` is the speaking oracle with the offline engines (earshot, Whisper base behind the
//! project's speech sidecar, the demo knowledge file, flite): it greets, the user asks a
//! question in another flite voice, and what the oracle said is transcribed back with Whisper
//! and compared with the knowledge file's answer.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail};
use oracle_calls::wav;
use oracle_calls_agent::oracles::Builtin;
use oracle_calls_agent::{JobOutcome, Speech};
use oracle_calls_client::{Call, CallEvent, Phase};
use oracle_calls_lab::analysis::{self, Match};
use oracle_calls_lab::local::{DeployOptions, Deployment, Stack};
use oracle_calls_lab::local_kt::{self, KtDirectory};
use oracle_calls_lab::speech_local::{
    self, Conversation, LocalServer, RunEnd, SPEAKING_RMS, SidecarRole, SpeechEnv,
};
use oracle_calls_lab::{speech, verify};
use oracle_calls_proto::{CallStatus, CallType};
use oracle_calls_rtc::{Room, RoomEvent, RoomOptions};
use oracle_calls_speech::Message;
use oracle_calls_speech::audio::rms;
use oracle_calls_speech::knowledge::{KnowledgeBrain, KnowledgeFile};
use oracle_calls_speech::session::TurnMetrics;

/// The oracle the demo calls.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum DemoOracle {
    /// Says back what it hears.
    Echo,
    /// Listens and answers in speech from the demo knowledge file (offline engines, installed
    /// by `scripts/speech-setup`).
    Speech,
}

/// What `demo` was asked for.
#[derive(Debug)]
pub struct Options {
    /// Seconds of speech the user says (echo).
    pub seconds: u32,
    /// Where the WAV files and state go.
    pub out: PathBuf,
    /// The oracle.
    pub oracle: DemoOracle,
    /// What the user asks the speaking oracle.
    pub question: String,
}

/// The user's voice: another of flite's voices than the oracle's (`slt`).
const USER_VOICE: &str = "rms";

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

/// The speaking oracle's engines and what it knows.
struct SpeechSetup {
    /// Whisper for the oracle (greedy, the fastest).
    stt: LocalServer,
    /// Whisper for the user's side, checking what the oracle said (beam search).
    checker: LocalServer,
    knowledge: KnowledgeFile,
    /// The knowledge brain's answer to the question.
    expected: String,
    oracle: Speech,
    /// Each finished turn's metrics, as the oracle's session measured them.
    turns: tokio::sync::mpsc::UnboundedReceiver<TurnMetrics>,
}

impl SpeechSetup {
    async fn start(question: &str) -> anyhow::Result<Self> {
        const SETUP: &str =
            "the speaking oracle's engines are missing or broken: run scripts/speech-setup";
        if question.trim().is_empty() {
            bail!("--question is empty: the user has nothing to ask");
        }
        let env = SpeechEnv::load().context(SETUP)?;
        let (stt, checker) = tokio::join!(
            speech_local::start_sidecar(&env, SidecarRole::SttOnly),
            speech_local::start_sidecar_with(&env, SidecarRole::SttOnly, 5)
        );
        let (stt, checker) = (stt.context(SETUP)?, checker.context(SETUP)?);
        let path = speech_local::speech_dir().join("knowledge/oracle.toml");
        let path = std::fs::canonicalize(&path)
            .with_context(|| format!("the demo's knowledge file {}", path.display()))?;
        let text = std::fs::read_to_string(&path)
            .with_context(|| format!("reading {}", path.display()))?;
        let knowledge: KnowledgeFile =
            toml::from_str(&text).with_context(|| format!("parsing {}", path.display()))?;
        let brain = KnowledgeBrain::load(&path)?;
        let expected = brain.reply(&[Message::user(question)]);
        let section = speech_local::offline_section(&stt.base_url, &path)?;
        let (sink, turns) = tokio::sync::mpsc::unbounded_channel();
        let prepared = section
            .prepare(std::path::Path::new("/"))
            .await
            .context(SETUP)?
            .with_metrics_sink(sink);
        Ok(Self {
            stt,
            checker,
            knowledge,
            expected,
            oracle: Speech::from_prepared(prepared),
            turns,
        })
    }
}

/// What the user said and heard, per oracle.
enum Talk {
    Echo(EchoTalk),
    Speech(SpeechTalk),
}

struct EchoTalk {
    input: Vec<i16>,
    heard: Vec<i16>,
    decrypt_failures: u64,
}

struct SpeechTalk {
    conv: Conversation,
    /// The question as said.
    question: Vec<i16>,
    /// Frames of the greeting (the oracle's audio before the question).
    greeting_frames: usize,
    /// The greeting ended (a second of quiet after speech) before the question.
    greeted: bool,
    /// The frame the answer starts at.
    answer_at: Option<usize>,
    /// When the question's last voiced frame was sent.
    voice_end: Instant,
    /// Silence at the end of the question's audio.
    trailing_silence: Duration,
}

impl SpeechTalk {
    fn answer(&self) -> Vec<i16> {
        self.answer_at
            .map(|f| self.conv.answer_from(f))
            .unwrap_or_default()
    }

    fn latency(&self) -> Option<Duration> {
        let (at, _) = self.conv.heard.get(self.answer_at?)?;
        Some(at.saturating_duration_since(self.voice_end))
    }
}

async fn demo(opts: Options) -> anyhow::Result<()> {
    let speaking = opts.oracle == DemoOracle::Speech;
    let total = if speaking { 9 } else { 7 };
    let mut n = 1;
    eprintln!(
        "oracle-lab demo: a real end-to-end encrypted call to an AI oracle on the local stack\n"
    );
    std::fs::create_dir_all(&opts.out)
        .with_context(|| format!("creating {}", opts.out.display()))?;
    let out = std::fs::canonicalize(&opts.out)?;

    eprintln!(
        "[{n}/{total}] stack: Synapse, livekit-server, PostgreSQL (scripts/stack up; the first run installs them)"
    );
    let t = Instant::now();
    let stack = tokio::task::spawn_blocking(Stack::up).await??;
    eprintln!("[{n}/{total}] stack up … {}", fmt(t.elapsed()));

    let mut setup: Option<SpeechSetup> = None;
    if speaking {
        n += 1;
        let s = Step::start(
            n,
            total,
            "speech engines: Whisper base in the speech sidecar for the oracle, a second one (beam search) for checking what the user hears; the oracle's earshot, knowledge file and flite",
        );
        let e = SpeechSetup::start(&opts.question).await?;
        s.done(&format!(
            "(oracle's Whisper {}, checker {}; the knowledge file's answer: {:?}{})",
            e.stt.base_url,
            e.checker.base_url,
            e.expected,
            if e.expected == e.knowledge.unknown {
                ", it does not know the question"
            } else {
                ""
            }
        ));
        setup = Some(e);
    }

    n += 1;
    let s = Step::start(
        n,
        total,
        if speaking {
            "provision the oracle (key pair, Matrix bot, API key, prekeys), start the server, a speaking agent and its key-transparency directory"
        } else {
            "provision the oracle (key pair, Matrix bot, API key, prekeys), start the server, an echo agent and its key-transparency directory"
        },
    );
    let state = out.join("state");
    let _ = std::fs::remove_dir_all(&state);
    let mut deploy = DeployOptions::new(&state);
    if let Some(e) = &setup {
        deploy.oracle = Some(Builtin::Speech(Arc::new(e.oracle.clone())));
    }
    let dep = Deployment::start(stack.clone(), deploy).await?;
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

    n += 1;
    let s = Step::start(n, total, "provision the user and log in its Matrix device");
    let kt_config = kt.config(&kt_service);
    let client = dep
        .new_user_with(|c| c.key_transparency = Some(kt_config))
        .await?;
    s.done(&format!(
        "({}; the oracle's record is in the key-transparency directory at epoch {})",
        client.user_did(),
        published.checkpoint.epoch
    ));

    n += 1;
    let s = Step::start(n, total, "call_oracle(audio)");
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

    let input_wav = out.join("user-says.wav");
    let answer_wav = out.join("oracle-answers.wav");
    let talk = match &setup {
        None => Talk::Echo(
            echo_talk(
                &mut call,
                opts.seconds,
                (n + 1, total),
                &input_wav,
                &answer_wav,
            )
            .await?,
        ),
        Some(e) => Talk::Speech(
            converse(
                &mut call,
                e,
                &opts.question,
                (n + 1, total),
                &input_wav,
                &answer_wav,
            )
            .await?,
        ),
    };
    n += if speaking { 2 } else { 1 };

    n += 1;
    let s = Step::start(n, total, "hang up");
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

    n += 1;
    eprintln!("[{n}/{total}] verify\n");
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
    if let Some(at) = tl.joined_early_at() {
        println!(
            "  early join: in the LiveKit room and publishing at {}, beside the send and the sync",
            fmt(at)
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
    // The oracle's own measure of its turns (each sent when the turn is over).
    let mut agent_turns = Vec::new();
    if let Some(e) = setup.as_mut() {
        while let Ok(m) = e.turns.try_recv() {
            agent_turns.push(m);
        }
    }
    match (&talk, &setup) {
        (Talk::Echo(t), _) => echo_checks(t, &observed, &mut checks),
        (Talk::Speech(t), Some(e)) => {
            print_turn(t, &agent_turns);
            speech_checks(t, e, &opts.question, &observed, &mut checks).await;
        }
        (Talk::Speech(_), None) => bail!("a spoken conversation without its engines"),
    }
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
        match verify::past_call_stays_closed(&key_pair, &store, &call, call.id()).await {
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
    drop(setup);
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

/// The echo oracle: the user talks for `seconds` and the agent's audio is recorded.
async fn echo_talk(
    call: &mut Call,
    seconds: u32,
    (n, total): (u32, u32),
    input_wav: &std::path::Path,
    answer_wav: &std::path::Path,
) -> anyhow::Result<EchoTalk> {
    let input = speech::synthesize(f64::from(seconds), 2026);
    wav::write(input_wav, &input)?;
    let s = Step::start(
        n,
        total,
        &format!(
            "talk: {} s of synthesized speech ({})",
            seconds,
            input_wav.display()
        ),
    );
    let mic = call.microphone();
    let speech_in = input.clone();
    let speaker = tokio::spawn(async move { mic.play(&speech_in).await });
    let mut heard = Vec::new();
    let mut decrypt_failures = 0u64;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(u64::from(seconds) + 2);
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
    wav::write(answer_wav, &heard)?;
    s.done(&format!("(the oracle's answer: {})", answer_wav.display()));
    Ok(EchoTalk {
        input,
        heard,
        decrypt_failures,
    })
}

fn echo_checks(t: &EchoTalk, o: &Observed, checks: &mut Vec<Check>) {
    let m: Match = analysis::compare(&t.input, &t.heard, 150);
    checks.push(Check {
        ok: m.envelope > 0.6 && t.decrypt_failures == 0,
        line: format!(
            "the user heard the agent: its echo follows the user's speech (envelope correlation {:.2} > 0.6 at {} ms delay, waveform {:.2}; {} decrypt failures)",
            m.envelope, m.delay_frames * 20, m.waveform, t.decrypt_failures
        ),
    });
    let om = analysis::compare(&t.input, &o.pcm, 150);
    checks.push(Check {
        ok: o.subscribed_encrypted && om.waveform < 0.2,
        line: format!(
            "a keyless participant in the room could not recover the audio: subscribed to the user's track ({}), {} frames decoded from ciphertext, waveform correlation with the speech {:.2} < 0.2",
            if o.subscribed_encrypted { "marked encrypted" } else { "NOT seen" },
            o.pcm.len() / 960,
            om.waveform
        ),
    });
}

/// The speaking oracle: hear its greeting, ask the question, hear the answer.
async fn converse(
    call: &mut Call,
    e: &SpeechSetup,
    question: &str,
    (n, total): (u32, u32),
    input_wav: &std::path::Path,
    answer_wav: &std::path::Path,
) -> anyhow::Result<SpeechTalk> {
    // Said in real time later; synthesized now, so the microphone never pauses for it.
    let question_pcm = speech_local::say(question, USER_VOICE)
        .await
        .context("the user's voice (flite): run scripts/speech-setup")?;
    let mut conv = Conversation::new(call);
    let s = Step::start(n, total, "listen: the oracle's greeting");
    let greeted = if e.knowledge.greeting.trim().is_empty() {
        conv.run(call, &[], Duration::from_secs(1), |_| false)
            .await?;
        false
    } else {
        let (end, _) = conv
            .run(call, &[], Duration::from_secs(20), |c| {
                c.spoke_then_quiet(0, Duration::from_millis(1000))
            })
            .await?;
        if end == RunEnd::CallEnded {
            bail!("the call ended during the greeting");
        }
        end == RunEnd::Stopped
    };
    let greeting_frames = conv.heard.len();
    let voiced = conv
        .heard
        .iter()
        .filter(|(_, f)| rms(f) > SPEAKING_RMS)
        .count();
    s.done(&if greeted {
        format!(
            "({} of speech)",
            fmt(Duration::from_millis(20 * voiced as u64))
        )
    } else if e.knowledge.greeting.trim().is_empty() {
        "(the knowledge file has no greeting)".to_owned()
    } else {
        "(no complete greeting within 20 s)".to_owned()
    });

    wav::write(input_wav, &question_pcm)?;
    let s = Step::start(
        n + 1,
        total,
        &format!(
            "ask {question:?} in flite's `{USER_VOICE}` voice ({}) and listen to the answer",
            input_wav.display()
        ),
    );
    // Listen until the oracle has spoken after the question and been quiet for 1.2 s.
    let mut after_question = None;
    let (end, said_until) = conv
        .run(call, &question_pcm, Duration::from_secs(40), |c| {
            let from = *after_question.get_or_insert(c.heard.len());
            c.spoke_then_quiet(from, Duration::from_millis(1200))
        })
        .await?;
    if end == RunEnd::CallEnded {
        bail!("the call ended before the oracle answered");
    }
    let trailing = question_pcm
        .chunks(960)
        .rev()
        .take_while(|f| rms(f) <= SPEAKING_RMS)
        .count();
    let trailing_silence = Duration::from_millis(20 * trailing as u64);
    let answer_at = conv.first_speech_after(said_until);
    wav::write(answer_wav, &conv.audio_from(0))?;
    let t = SpeechTalk {
        conv,
        question: question_pcm,
        greeting_frames,
        greeted,
        answer_at,
        voice_end: said_until
            .checked_sub(trailing_silence)
            .unwrap_or(said_until),
        trailing_silence,
    };
    s.done(&match t.latency() {
        Some(l) if end == RunEnd::Stopped => format!(
            "(answered {} after the question's voice ended; everything the oracle said: {})",
            fmt(l),
            answer_wav.display()
        ),
        _ => format!(
            "(no complete answer within 40 s; what the oracle said: {})",
            answer_wav.display()
        ),
    });
    Ok(t)
}

/// The turn's latency at the user, and the agent's own split of it.
fn print_turn(t: &SpeechTalk, agent_turns: &[TurnMetrics]) {
    println!("The question's turn");
    match t.latency() {
        Some(l) => println!(
            "  voice to voice at the user: {} from the question's last voiced frame sent to the answer's first audible frame received (the question's audio ends in {} of silence)",
            fmt(l),
            fmt(t.trailing_silence)
        ),
        None => println!("  voice to voice at the user: no answer heard"),
    }
    let ms =
        |v: Option<Duration>| v.map_or_else(|| "–".to_owned(), |v| format!("{} ms", v.as_millis()));
    // The turn that answered someone (the greeting has no voice before it).
    match agent_turns
        .iter()
        .rev()
        .find(|a| a.voice_to_voice.is_some())
    {
        Some(a) => println!(
            "  the agent's split (its clock, from the end of the voice its VAD heard): end-of-turn wait {}, speech-to-text {}, brain first token {}, first audio {}; voice to voice {}{}{}",
            ms(a.end_of_turn_wait),
            ms(a.speech_to_text),
            ms(a.brain_first_token),
            ms(a.first_audio),
            ms(a.voice_to_voice),
            if a.interrupted { "; interrupted" } else { "" },
            a.failed
                .map(|f| format!("; {f} failed: the fallback line was said"))
                .unwrap_or_default()
        ),
        None => println!("  the agent's split: the oracle reported no answered turn"),
    }
    println!();
}

/// Word error of what Whisper (the checker) heard in `pcm` against `expected`.
async fn heard_as(e: &SpeechSetup, pcm: &[i16], expected: &str) -> Result<(String, f64), String> {
    if pcm.is_empty() {
        return Err("nothing was heard".into());
    }
    let heard = speech_local::transcribe(&e.checker.base_url, pcm)
        .await
        .map_err(|err| format!("transcribing failed: {err:#}"))?;
    let wer = speech_local::word_error_rate(expected, &heard);
    Ok((heard, wer))
}

async fn speech_checks(
    t: &SpeechTalk,
    e: &SpeechSetup,
    question: &str,
    o: &Observed,
    checks: &mut Vec<Check>,
) {
    const MAX_WER: f64 = 0.10;
    let greeting = &e.knowledge.greeting;
    if !greeting.trim().is_empty() {
        let pcm = t
            .conv
            .audio_from(0)
            .get(..t.greeting_frames * 960)
            .map(<[i16]>::to_vec)
            .unwrap_or_default();
        checks.push(match heard_as(e, &pcm, greeting).await {
            Ok((heard, wer)) => Check {
                ok: t.greeted && wer <= MAX_WER,
                line: format!(
                    "the user heard the oracle's greeting{}: Whisper heard {heard:?}, word error {wer:.2} ≤ {MAX_WER:.2} against the knowledge file's {greeting:?}",
                    if t.greeted { "" } else { " (it did not end within 20 s)" }
                ),
            },
            Err(err) => Check {
                ok: false,
                line: format!("the user heard the oracle's greeting: {err}"),
            },
        });
    }
    let answer = t.answer();
    let expected = &e.expected;
    checks.push(match heard_as(e, &answer, expected).await {
        Ok((heard, wer)) => Check {
            ok: wer <= MAX_WER,
            line: format!(
                "the oracle answered the spoken question: Whisper heard {heard:?} in {} of the oracle's audio after the question, word error {wer:.2} ≤ {MAX_WER:.2} against {expected:?}, the knowledge brain's answer to {question:?} (no frame of the oracle's audio failed to decrypt)",
                fmt(Duration::from_millis(answer.len() as u64 / 48)),
            ),
        },
        Err(err) => Check {
            ok: false,
            line: format!("the oracle answered the spoken question {question:?}: {err}"),
        },
    });
    let qm = find_in(&t.question, &o.pcm);
    checks.push(Check {
        ok: o.subscribed_encrypted && qm.waveform < 0.2,
        line: format!(
            "a keyless participant in the room could not recover the user's question: subscribed to the user's track ({}), {} frames decoded from ciphertext, waveform correlation with the question {:.2} < 0.2",
            if o.subscribed_encrypted { "marked encrypted" } else { "NOT seen" },
            o.pcm.len() / 960,
            qm.waveform
        ),
    });
    let am = find_in(&answer, &o.oracle_pcm);
    checks.push(Check {
        ok: o.oracle_encrypted == Some(true) && !answer.is_empty() && am.waveform < 0.2,
        line: format!(
            "a keyless participant in the room could not recover the oracle's answer: subscribed to the oracle's track ({}), {} frames decoded from ciphertext, waveform correlation with the answer {:.2} < 0.2{}",
            match o.oracle_encrypted {
                Some(true) => "marked encrypted",
                Some(false) => "NOT marked encrypted",
                None => "NOT seen",
            },
            o.oracle_pcm.len() / 960,
            am.waveform,
            if answer.is_empty() { " (there was no answer to compare with)" } else { "" }
        ),
    });
}

/// Where `sent` best matches in `heard` at any delay at which all of it fits (the question
/// comes after the greeting, the answer after that).
fn find_in(sent: &[i16], heard: &[i16]) -> Match {
    let lags = (heard.len() / 960).saturating_sub(sent.len().div_ceil(960));
    analysis::compare(sent, heard, lags)
}

struct Observed {
    /// The user's track was seen, marked encrypted.
    subscribed_encrypted: bool,
    /// What decoding the user's ciphertext gave.
    pcm: Vec<i16>,
    /// The oracle's track was seen (marked encrypted or not).
    oracle_encrypted: Option<bool>,
    /// What decoding the oracle's ciphertext gave.
    oracle_pcm: Vec<i16>,
}

/// Collects what a participant without the key gets of the user's and the oracle's tracks.
async fn listen_without_key(
    mut events: tokio::sync::mpsc::Receiver<RoomEvent>,
    user: String,
) -> Observed {
    let mut o = Observed {
        subscribed_encrypted: false,
        pcm: Vec::new(),
        oracle_encrypted: None,
        oracle_pcm: Vec::new(),
    };
    while let Some(ev) = events.recv().await {
        match ev {
            RoomEvent::TrackSubscribed {
                identity,
                encrypted,
                ..
            } => {
                if identity == user {
                    o.subscribed_encrypted = encrypted;
                } else {
                    o.oracle_encrypted = Some(encrypted);
                }
            }
            RoomEvent::AudioFrame { identity, pcm, .. } => {
                if identity == user {
                    o.pcm.extend(pcm);
                } else {
                    o.oracle_pcm.extend(pcm);
                }
            }
            RoomEvent::Disconnected { .. } => break,
            _ => {}
        }
    }
    o
}

#[cfg(test)]
mod tests {
    #![allow(
        clippy::unwrap_used,
        clippy::expect_used,
        clippy::indexing_slicing,
        clippy::panic
    )]
    use super::*;

    /// `pcm` placed `at` frames into `len` frames of quiet noise.
    fn inside(pcm: &[i16], at: usize, len: usize, seed: u32) -> Vec<i16> {
        let mut x = seed;
        let mut out: Vec<i16> = (0..len * 960)
            .map(|_| {
                x = x.wrapping_mul(1_664_525).wrapping_add(1_013_904_223);
                ((x >> 16) % 200) as i16 - 100
            })
            .collect();
        for (o, s) in out[at * 960..].iter_mut().zip(pcm) {
            *o = o.saturating_add(*s);
        }
        out
    }

    #[test]
    fn what_was_said_is_found_late_in_a_track() {
        let said = speech::synthesize(2.0, 5);
        // 9 s in: past the 150 frames the echo check searches.
        let heard = inside(&said, 450, 700, 1);
        let m = find_in(&said, &heard);
        assert_eq!(m.delay_frames, 450, "{m:?}");
        assert!(m.waveform > 0.9, "{m:?}");
    }

    #[test]
    fn something_else_is_not_found() {
        let said = speech::synthesize(2.0, 5);
        let other = speech::synthesize(2.0, 6);
        let heard = inside(&other, 300, 700, 2);
        let m = find_in(&said, &heard);
        assert!(m.waveform < 0.2, "{m:?}");
        assert!(find_in(&said, &[]).waveform < 0.2);
        assert!(find_in(&said, &said[..960 * 5]).waveform < 0.2);
    }
}

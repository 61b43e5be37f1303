//! `oracle-calls call @bob:…` and `oracle-calls answer`: person-to-person calls (PROTOCOL §14)
//! on the computer's microphone and speaker, or on WAV files, through the client's direct-call
//! driver (`oracle_calls_client::DirectCalls`). The Matrix device is the one `call` uses for
//! the oracle (same state directory, same login).
//!
//! The audio loop ([`run_call_audio`]) runs on the command's own thread, because the
//! microphone blocks; the driver, its sync loop and the Ctrl-C watcher run on the tokio
//! runtime beside it.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail};
use clap::Args;
use oracle_calls_client::{
    DirectCall, DirectCallEvent, DirectCalls, DirectConfig, EndReason, IcePolicy, PeopleTrust,
    SecurityEvent, SecurityNotice, open_matrix_client,
};
use tracing::{info, warn};

use crate::call_audio::{CallAudio, CallAudioArgs, FrameSink, FrameSource, run_call_audio};
use crate::call_cmd::{CallArgs, KtArgs, LoginArgs};

/// How long the command waits for the driver to report the end after it hung up.
const END_WAIT: Duration = Duration::from_secs(10);
/// The longest the command waits, before it exits, for the driver to hand the hangup (or
/// reject) event to the homeserver.
const SEND_GRACE: Duration = Duration::from_secs(10);

/// `oracle-calls answer`.
#[derive(Args, Debug)]
pub struct AnswerArgs {
    #[command(flatten)]
    login: LoginArgs,
    #[command(flatten)]
    audio: CallAudioArgs,
    #[command(flatten)]
    kt: KtArgs,
    #[command(flatten)]
    devices: DeviceTrustArgs,
    /// Offer only TURN relay candidates, so that the caller never learns this computer's
    /// address (the homeserver must offer TURN).
    #[arg(long)]
    relay_only: bool,
    /// Hang up this many seconds after the call connects (default: when either side hangs
    /// up; Ctrl-C here).
    #[arg(long)]
    seconds: Option<u64>,
    /// Give up when no call rings within this many seconds (default: wait until Ctrl-C).
    #[arg(long)]
    timeout: Option<u64>,
    /// Reject the call instead of answering it.
    #[arg(long, conflicts_with = "seconds")]
    reject: bool,
}

/// Which devices of other people to trust, for `call` and `answer`.
#[derive(Args, Debug)]
pub struct DeviceTrustArgs {
    /// Person-to-person calls: trust this device of a person from now on (kept in the state
    /// folder), after comparing its Ed25519 key with them out of band:
    /// `--accept-device @bob:example.org DEVICEID ED25519`. A refused call event from an
    /// unknown device is logged with exactly these three values. Repeatable.
    #[arg(long, num_args = 3, value_names = ["USER", "DEVICE", "ED25519"], action = clap::ArgAction::Append)]
    accept_device: Vec<String>,
}

impl DeviceTrustArgs {
    fn apply(&self, calls: &DirectCalls) -> anyhow::Result<()> {
        for accepted in self.accept_device.chunks(3) {
            let [user, device, key] = accepted else {
                bail!("--accept-device takes three values: USER DEVICE ED25519");
            };
            let user = matrix_sdk_user_id(user)?;
            calls
                .accept_device(&user, device, key)
                .with_context(|| format!("accepting {user}'s device {device}"))?;
            info!(%user, %device, "accepted this device of the person for direct calls");
        }
        Ok(())
    }
}

/// Logs a refused call event so that a person can act on it: an unknown device is named with
/// the `--accept-device` values that would trust it.
fn report(notice: &SecurityNotice) {
    match (&notice.event, &notice.sender_ed25519) {
        (SecurityEvent::UntrustedDevice { sender, device }, Some(key)) => warn!(
            room = %notice.room_id,
            "refused a call event from {sender}'s device {device}, which you have not accepted \
             (Ed25519 {key}); if {sender} confirms this key, accept it with \
             --accept-device {sender} {device} {key}"
        ),
        (event, _) => warn!(room = %notice.room_id, ?event, "refused a call event"),
    }
}

/// `oracle-calls call @bob:server`.
pub fn call(args: CallArgs) -> anyhow::Result<()> {
    let Some(peer) = args.peer.as_deref() else {
        bail!("no person to call");
    };
    let peer = matrix_sdk_user_id(peer)?;
    let rt = tokio::runtime::Runtime::new()?;
    let (mut source, mut sink) = open_audio(&args.audio)?;
    let (calls, call) = rt.block_on(async {
        let calls = start(&args.user.login, &args.user.kt, args.relay_only, false).await?;
        args.devices.apply(&calls)?;
        info!(%peer, "placing the call");
        let call = tokio::select! {
            r = calls.place_call(&peer) => r.with_context(|| format!("calling {peer}"))?,
            () = crate::serve::shutdown_signal() => bail!("interrupted before the call was placed"),
        };
        info!(call_id = %call.call_id(), room = %call.room_id(), "call placed");
        anyhow::Ok((calls, call))
    })?;
    let result = converse(&rt, &calls, call, &mut source, &mut sink, args.seconds);
    finish(&rt, calls, source, sink, result)
}

/// `oracle-calls answer`.
pub fn answer(args: AnswerArgs) -> anyhow::Result<()> {
    let rt = tokio::runtime::Runtime::new()?;
    let audio = if args.reject {
        None
    } else {
        Some(open_audio(&args.audio)?)
    };
    let (calls, incoming) = rt.block_on(async {
        let calls = start(&args.login, &args.kt, args.relay_only, true).await?;
        args.devices.apply(&calls)?;
        info!("waiting for a call");
        let ring = async {
            loop {
                tokio::select! {
                    incoming = calls.next_incoming() => break incoming,
                    Some(notice) = calls.next_security_notice() => report(&notice),
                }
            }
        };
        let wait = async {
            match args.timeout {
                Some(s) => tokio::time::timeout(Duration::from_secs(s), ring)
                    .await
                    .with_context(|| format!("no call rang within {s} s")),
                None => Ok(ring.await),
            }
        };
        let incoming = tokio::select! {
            r = wait => r?.context("the call driver stopped")?,
            () = crate::serve::shutdown_signal() => bail!("interrupted while waiting for a call"),
        };
        anyhow::Ok((calls, incoming))
    })?;
    info!(caller = %incoming.caller(), call_id = %incoming.call_id(), "ringing");
    let Some((mut source, mut sink)) = audio else {
        incoming.reject().context("rejecting the call")?;
        info!("call rejected");
        flush(&rt, &calls);
        calls.stop();
        return Ok(());
    };
    let call = rt
        .block_on(incoming.answer())
        .context("answering the call")?;
    info!("answered");
    let result = converse(&rt, &calls, call, &mut source, &mut sink, args.seconds);
    finish(&rt, calls, source, sink, result)
}

/// Waits until the driver handed every queued call event to the homeserver.
fn flush(rt: &tokio::runtime::Runtime, calls: &DirectCalls) {
    if !rt.block_on(calls.flush(SEND_GRACE)) {
        warn!(
            "the last call event was not delivered within {} s",
            SEND_GRACE.as_secs()
        );
    }
}

fn matrix_sdk_user_id(s: &str) -> anyhow::Result<matrix_sdk::ruma::OwnedUserId> {
    matrix_sdk::ruma::OwnedUserId::try_from(s)
        .map_err(|e| anyhow::anyhow!("`{s}` is not a Matrix user id like @bob:example.org: {e}"))
}

fn open_audio(audio: &CallAudioArgs) -> anyhow::Result<(FrameSource, FrameSink)> {
    Ok((audio.open_source()?, audio.open_sink()?))
}

/// Logs in (or restores the session) and starts the direct-call driver on that device.
async fn start(
    login: &LoginArgs,
    kt: &KtArgs,
    relay_only: bool,
    auto_join: bool,
) -> anyhow::Result<DirectCalls> {
    let client = open_matrix_client(&login.homeserver, &login.store_dir(), login.login()?)
        .await
        .context("logging in to Matrix")?;
    let config = DirectConfig {
        ice_policy: if relay_only {
            IcePolicy::RelayOnly
        } else {
            IcePolicy::All
        },
        auto_join_direct_invites: auto_join,
        key_transparency: kt.config()?,
        ..DirectConfig::default()
    };
    let trust = PeopleTrust::open(login.store_dir().join("pins.json"));
    let calls = DirectCalls::start(&client, trust, config)
        .await
        .context("starting the call driver")?;
    Ok(calls)
}

/// The driver's call as the audio loop's [`CallAudio`]: frames go to the call; received audio
/// comes back, and every other event is logged on the way (the end stops the loop).
struct DirectCallAudio<'a> {
    calls: &'a DirectCalls,
    call: &'a mut DirectCall,
    stop: &'a AtomicBool,
    /// Hang up this long after the call connected.
    seconds: Option<Duration>,
    deadline: Option<Instant>,
    ended: Option<EndReason>,
    closed: bool,
}

impl DirectCallAudio<'_> {
    fn note(&mut self, ev: DirectCallEvent) {
        match ev {
            DirectCallEvent::Ringing => info!(peer = %self.call.peer(), "ringing"),
            DirectCallEvent::Connected {
                local_fingerprint,
                remote_fingerprint,
                key_confirmation_expected,
            } => {
                info!(
                    %local_fingerprint,
                    %remote_fingerprint,
                    key_confirmation_expected,
                    "connected"
                );
                if let Some(s) = self.seconds {
                    self.deadline.get_or_insert(Instant::now() + s);
                }
            }
            DirectCallEvent::KeyConfirmed => info!("key confirmed"),
            DirectCallEvent::Reconnecting => warn!("the path was lost; reconnecting"),
            DirectCallEvent::Reconnected => info!("the path is back"),
            DirectCallEvent::Ended(reason) => {
                info!(reason = %describe(&reason), "ended");
                self.ended = Some(reason);
                self.stop.store(true, Ordering::Relaxed);
            }
            DirectCallEvent::Audio(_) => {}
            other => info!(event = ?other, "call event"),
        }
    }
}

impl CallAudio for DirectCallAudio<'_> {
    fn send_audio(&mut self, pcm: Vec<i16>) {
        if self.call.send_audio(pcm).is_err() {
            self.closed = true;
            self.stop.store(true, Ordering::Relaxed);
        }
    }

    fn try_received_audio(&mut self) -> Option<Vec<i16>> {
        if self.deadline.is_some_and(|d| Instant::now() >= d) {
            info!("time is up: hanging up");
            self.deadline = None;
            self.stop.store(true, Ordering::Relaxed);
        }
        while let Some(notice) = self.calls.try_next_security_notice() {
            report(&notice);
        }
        while let Some(ev) = self.call.try_next_event() {
            match ev {
                DirectCallEvent::Audio(pcm) => return Some(pcm),
                other => self.note(other),
            }
        }
        None
    }
}

/// Runs the call's audio until it ends, Ctrl-C, or `seconds` after it connected; hangs up
/// unless the other side ended it. Returns how it ended.
fn converse(
    rt: &tokio::runtime::Runtime,
    calls: &DirectCalls,
    mut call: DirectCall,
    source: &mut FrameSource,
    sink: &mut FrameSink,
    seconds: Option<u64>,
) -> anyhow::Result<EndReason> {
    let stop = Arc::new(AtomicBool::new(false));
    let watcher = rt.spawn({
        let stop = stop.clone();
        async move {
            crate::serve::shutdown_signal().await;
            info!("interrupted: hanging up");
            stop.store(true, Ordering::Relaxed);
        }
    });
    let mut audio = DirectCallAudio {
        calls,
        call: &mut call,
        stop: &stop,
        seconds: seconds.map(Duration::from_secs),
        deadline: None,
        ended: None,
        closed: false,
    };
    let (sent, played) = run_call_audio(source, sink, &mut audio, &stop);
    let (ended, closed) = (audio.ended.take(), audio.closed);
    watcher.abort();
    info!(frames_sent = sent, frames_played = played, "audio stopped");
    if let Some(reason) = ended {
        return Ok(reason);
    }
    if closed {
        bail!("the call driver stopped during the call");
    }
    call.hangup().context("hanging up")?;
    rt.block_on(async {
        tokio::time::timeout(END_WAIT, async {
            while let Some(ev) = call.next_event().await {
                if let DirectCallEvent::Ended(reason) = ev {
                    info!(reason = %describe(&reason), "ended");
                    return Some(reason);
                }
            }
            None
        })
        .await
    })
    .ok()
    .flatten()
    .context("the call did not end after the hangup")
}

/// Closes the devices, reports their error counts, stops the driver, and turns the end into
/// the command's result: a hangup by either person is success, anything else an error.
fn finish(
    rt: &tokio::runtime::Runtime,
    calls: DirectCalls,
    source: FrameSource,
    sink: FrameSink,
    result: anyhow::Result<EndReason>,
) -> anyhow::Result<()> {
    let mic_errors = match &source {
        FrameSource::Device(mic) => Some(mic.stats().errors),
        FrameSource::Wav { .. } => None,
    };
    let speaker_errors = match &sink {
        FrameSink::Device(speaker) => Some(speaker.stats().errors),
        FrameSink::Wav { .. } => None,
    };
    drop(source);
    let written = sink.finish();
    info!(
        microphone_errors = %mic_errors.map_or_else(|| "-".to_owned(), |n| n.to_string()),
        speaker_errors = %speaker_errors.map_or_else(|| "-".to_owned(), |n| n.to_string()),
        "device error callbacks"
    );
    // The driver's send loop delivers our hangup before the process exits.
    flush(rt, &calls);
    calls.stop();
    written?;
    match result? {
        EndReason::LocalHangup(r) | EndReason::RemoteHangup(r) if r.as_str() == "user_hangup" => {
            Ok(())
        }
        other => bail!("the call ended: {}", describe(&other)),
    }
}

/// A person's words for how a call ended.
fn describe(reason: &EndReason) -> String {
    match reason {
        EndReason::LocalHangup(r) if r.as_str() == "user_hangup" => "we hung up".into(),
        EndReason::LocalHangup(r) => format!("we ended it ({})", r.as_str()),
        EndReason::RemoteHangup(r) if r.as_str() == "user_hangup" => {
            "the other person hung up".into()
        }
        EndReason::RemoteHangup(r) => format!("the other side ended it ({})", r.as_str()),
        EndReason::LocalReject => "we rejected it".into(),
        EndReason::RemoteReject => "the other person rejected it".into(),
        EndReason::AnsweredElsewhere => "answered on another device".into(),
        EndReason::RejectedElsewhere => "rejected on another device".into(),
        EndReason::InviteExpired => "nobody answered in time".into(),
        EndReason::Security(e) => format!("refused for security: {e:?}"),
    }
}

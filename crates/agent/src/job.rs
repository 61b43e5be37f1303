//! One call: key, envelope, room, oracle, report.

use std::collections::HashSet;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use livekit_protocol as lk;
use oracle_calls_crypto::CallContext;
use oracle_calls_crypto::frame::{KeyRing, KeyRingOptions};
use oracle_calls_proto::{CallId, CallReason, CallStatus, KeyResponse, UpdateRequest};
use oracle_calls_rtc::{
    E2eeOptions, FreshToken, Room, RoomEvent, RoomOptions, TokenError, TokenSource,
};
use tokio::sync::{mpsc, oneshot, watch};
use tracing::{Instrument as _, debug, error, info, info_span, warn};
use zeroize::Zeroizing;

use crate::keys::{Opening, open_call_key};
use crate::oracle::{IoCounters, Media};
use crate::worker::Shared;
use crate::{CallInfo, CallIo, Heard, Oracle};

/// How a job ended.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum JobOutcome {
    /// The agent served the call; `ended_by` says what ended it.
    Served {
        /// What ended the call.
        ended_by: EndedBy,
    },
    /// The job does not describe an oracle-calls call (bad metadata or room).
    BadJob(String),
    /// The key could not be fetched; the agent stayed out of the room.
    KeyRequestFailed(String),
    /// The envelope did not open with the key it names (other call, tampered, or a legacy
    /// envelope refused); the agent stayed out and reported `keyDecryptionFailed`.
    KeyDecryptionFailed(String),
    /// The envelope is sealed to a key this agent does not hold (another agent of the pool may
    /// hold it): the agent stayed out and reported nothing to the server.
    KeyNotHeld(String),
    /// Joining the room or publishing failed.
    JoinFailed(String),
    /// The oracle failed or panicked.
    OracleFailed(String),
}

/// What ended a served call.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum EndedBy {
    /// The user left the room.
    UserLeft,
    /// The room closed or the connection to it was lost (the call was ended elsewhere).
    RoomClosed,
    /// LiveKit terminated the job (the room or its dispatch was deleted: the call ended).
    Terminated,
    /// The agent shut down and its drain time ran out.
    Shutdown,
    /// The oracle finished on its own.
    OracleDone,
    /// The user never joined the room.
    UserNeverJoined,
    /// Another agent serves the call: two were in the room (a job dispatched again while the
    /// first agent rejoined after its LiveKit node died, or LiveKit dispatching into a call
    /// handed off directly), and the one whose identity sorts last stays. The call goes on;
    /// nothing is reported to the server.
    AnotherAgent,
}

/// What the agent did in one job. Sent on [`crate::AgentHandle::reports`] when the job ends.
#[derive(Clone, Debug)]
pub struct CallReport {
    /// LiveKit's job id.
    pub job_id: String,
    /// The call, when the job named a valid one.
    pub call_id: Option<CallId>,
    /// How it ended.
    pub outcome: JobOutcome,
    /// Frames of the user's audio decrypted and decoded.
    pub frames_heard: u64,
    /// Frames the oracle said.
    pub frames_spoken: u64,
    /// Frames that failed to decrypt (never decoded).
    pub decrypt_failures: u64,
    /// Remote tracks refused because they were not end-to-end encrypted.
    pub unencrypted_tracks: u64,
    /// When LiveKit assigned the job to this agent.
    pub assigned_at: Instant,
    /// From assignment to the key in hand (fetched and opened).
    pub key_ready_after: Option<Duration>,
    /// From assignment to being in the room with the track published.
    pub joined_after: Option<Duration>,
    /// From assignment to the first decrypted user frame.
    pub first_heard_after: Option<Duration>,
}

impl CallReport {
    /// The report of job `job_id`, assigned at `at`, before anything happened in it.
    pub(crate) fn assigned(job_id: String, at: Instant) -> Self {
        Self {
            job_id,
            call_id: None,
            outcome: JobOutcome::BadJob(String::new()),
            frames_heard: 0,
            frames_spoken: 0,
            decrypt_failures: 0,
            unencrypted_tracks: 0,
            assigned_at: at,
            key_ready_after: None,
            joined_after: None,
            first_heard_after: None,
        }
    }
}

/// How long a job token renewed for a full reconnect is valid (LiveKit refreshes it while
/// connected).
const REJOIN_TOKEN_TTL_SECS: u64 = 600;

pub(crate) struct Assignment {
    pub(crate) job: lk::Job,
    pub(crate) token: String,
    pub(crate) url: String,
    /// The call's key response, when the worker fetched it before accepting the job.
    pub(crate) key: Option<KeyResponse>,
}

/// Runs one job to the end. Never panics out: the oracle runs in its own task.
pub(crate) async fn run<O: Oracle>(
    shared: Arc<Shared<O>>,
    a: Assignment,
    cancel: watch::Receiver<Option<EndedBy>>,
    out: mpsc::Sender<lk::WorkerMessage>,
) -> CallReport {
    let started = Instant::now();
    let mut report = CallReport::assigned(a.job.id.clone(), started);
    let call_id = match call_of(&a.job) {
        Ok(c) => c,
        Err(why) => {
            error!(job = %a.job.id, reason = %why, "not an oracle-calls job; staying out");
            report.outcome = JobOutcome::BadJob(why);
            job_status(&out, &a.job.id, lk::JobStatus::JsFailed, "bad job").await;
            return report;
        }
    };
    report.call_id = Some(call_id.clone());
    let span = info_span!("call", call_id = %call_id, job = %a.job.id);
    async {
        let outcome = serve(&shared, &a, &call_id, cancel, &out, started, &mut report).await;
        let status = match &outcome {
            JobOutcome::Served { .. } => lk::JobStatus::JsSuccess,
            _ => lk::JobStatus::JsFailed,
        };
        // serve() already reported success before leaving the room; failures report here.
        if status == lk::JobStatus::JsFailed {
            job_status(&out, &a.job.id, status, &format!("{outcome:?}")).await;
        }
        report.outcome = outcome;
        info!(outcome = ?report.outcome, heard = report.frames_heard, spoken = report.frames_spoken,
              decrypt_failures = report.decrypt_failures, "job finished");
        report
    }
    .instrument(span)
    .await
}

/// Ends what the key holder keeps for a call when dropped (see
/// [`crate::prekeys::PrekeyStore::call_over`]). A process that dies never drops it: that is
/// what lets the agent dispatched after it rejoin.
struct KeptForCall {
    store: Option<Arc<crate::prekeys::PrekeyStore>>,
    envelope: oracle_calls_proto::KeyEnvelope,
}

impl Drop for KeptForCall {
    fn drop(&mut self) {
        if let Some(store) = &self.store {
            store.call_over(&self.envelope);
        }
    }
}

fn call_of(job: &lk::Job) -> Result<CallId, String> {
    let call = CallId::parse(&job.metadata)
        .map_err(|e| format!("dispatch metadata is not a call id: {e}"))?;
    let room = job.room.as_ref().map(|r| r.name.as_str()).unwrap_or("");
    if call.room_name().as_str() != room {
        return Err(format!(
            "the call id names room {} but the job is for room {room:?}",
            call.room_name()
        ));
    }
    Ok(call)
}

async fn job_status(out: &mpsc::Sender<lk::WorkerMessage>, id: &str, s: lk::JobStatus, err: &str) {
    let msg = lk::WorkerMessage {
        message: Some(lk::worker_message::Message::UpdateJob(
            lk::UpdateJobStatus {
                job_id: id.to_owned(),
                status: s as i32,
                error: if s == lk::JobStatus::JsFailed {
                    err.to_owned()
                } else {
                    String::new()
                },
            },
        )),
    };
    let _ = out.send(msg).await;
}

/// The call's media could not be set up: the server hears `mediaFailed` and the job ends.
async fn media_failed<O: Oracle>(shared: &Shared<O>, call_id: &CallId, why: String) -> JobOutcome {
    report_to_server(
        shared,
        call_id,
        Some(CallStatus::Ended),
        CallReason::MediaFailed,
    )
    .await;
    JobOutcome::JoinFailed(why)
}

/// Tells the server; failures to report are logged, never fatal.
async fn report_to_server<O: Oracle>(
    shared: &Shared<O>,
    call_id: &CallId,
    status: Option<CallStatus>,
    reason: CallReason,
) {
    let req = UpdateRequest {
        call_status: status,
        reason: Some(reason),
    };
    if let Err(e) = shared.cfg.server.update(call_id, &req).await {
        warn!(error = %e, ?reason, "could not report to the server");
    }
}

async fn serve<O: Oracle>(
    shared: &Arc<Shared<O>>,
    a: &Assignment,
    call_id: &CallId,
    mut cancel: watch::Receiver<Option<EndedBy>>,
    out: &mpsc::Sender<lk::WorkerMessage>,
    started: Instant,
    report: &mut CallReport,
) -> JobOutcome {
    let cfg = &shared.cfg;
    // 1. The wrapped key (fetched already when the worker looked at it before accepting).
    let fetched = match &a.key {
        Some(k) => Ok(k.clone()),
        None => cfg.server.key(call_id).await,
    };
    let key = match fetched {
        Ok(k) => k,
        Err(e) => {
            error!(error = %e, "key request failed; staying out of the room");
            shared.stats.key_failures.fetch_add(1, Ordering::Relaxed);
            report_to_server(shared, call_id, None, CallReason::KeyRequestFailed).await;
            return JobOutcome::KeyRequestFailed(e.to_string());
        }
    };
    // 2. Open it against the context we know: the room from LiveKit's job, the rest from the
    //    call; with the key it names.
    let opened = if key.oracle_did != cfg.oracle_did {
        Opening::Failed(format!(
            "the call is for oracle {}, this agent serves {}",
            key.oracle_did, cfg.oracle_did
        ))
    } else if key.room_id != *call_id.room_name() {
        Opening::Failed("the call's roomId differs from the job's room".to_owned())
    } else {
        let ctx = CallContext::new(
            key.session_id.clone(),
            call_id.room_name().clone(),
            key.user_did.clone(),
            key.oracle_did.clone(),
            key.call_type,
        );
        open_call_key(
            &cfg.keys,
            cfg.prekeys.as_ref().map(|p| p.store.as_ref()),
            &key.encryption_key,
            &ctx,
            cfg.accept_legacy_envelopes,
        )
    };
    let call_key = match opened {
        Opening::Opened(k) => k,
        Opening::NotHeld(why) => {
            // Not ours to judge: another agent may hold that key. The server is not told, so
            // the key endpoint stays open for it.
            warn!(reason = %why, "the call key is for a key this agent does not hold; staying out of the room");
            shared.stats.keys_not_held.fetch_add(1, Ordering::Relaxed);
            return JobOutcome::KeyNotHeld(why);
        }
        Opening::Failed(why) => {
            error!(reason = %why, "the call key did not open; staying out of the room");
            shared.stats.key_failures.fetch_add(1, Ordering::Relaxed);
            report_to_server(
                shared,
                call_id,
                Some(CallStatus::Ended),
                CallReason::KeyDecryptionFailed,
            )
            .await;
            return JobOutcome::KeyDecryptionFailed(why);
        }
    };
    // From here on the call is this job's: whatever the key holder keeps for it (a prekey
    // call's inner envelope, for an agent dispatched again should this one die) goes when
    // the job ends, however it ends.
    let _kept = KeptForCall {
        store: cfg.prekeys.as_ref().map(|p| p.store.clone()),
        envelope: key.encryption_key.clone(),
    };
    let key_ring =
        match KeyRing::with_call_key(&call_key, key.key_derivation, KeyRingOptions::default()) {
            Ok(r) => r,
            Err(e) => return JobOutcome::KeyDecryptionFailed(e.to_string()),
        };
    drop(call_key);
    report.key_ready_after = Some(started.elapsed());

    // 3. Join with E2EE and publish. A full reconnect (the LiveKit node hosting the room
    // died) joins again with the job token's grants renewed under the worker's own API key:
    // LiveKit signed the job token with it; identity (`agent-<job id>`) and room stay. (LiveKit
    // also dispatches the room's agent again when the room starts on a live node: the worker
    // declines that job while this one serves the call.)
    let token_source = {
        let creds = cfg.livekit.clone();
        let (url, token) = (a.url.clone(), Zeroizing::new(a.token.clone()));
        TokenSource::new(move || {
            let fresh = creds
                .renew(&token, REJOIN_TOKEN_TTL_SECS)
                .map(|t| FreshToken {
                    url: url.clone(),
                    token: Zeroizing::new(t),
                })
                .map_err(TokenError::Refused);
            async move { fresh }
        })
    };
    let opts = RoomOptions {
        e2ee: Some(E2eeOptions { key_ring }),
        opus_complexity: cfg.opus_complexity,
        token_source: Some(token_source),
        ..Default::default()
    };
    let call_type = key.call_type;
    let held = !cfg.first_frame_hold.is_zero();
    let joined = async {
        let (room, events) = Room::connect(&a.url, &a.token, opts).await?;
        let media = match first_publish(&room, &key.user_identity, cfg.first_frame_hold) {
            FirstPublish::Now => {
                if held {
                    debug!(
                        "the user has been in the room for longer than the hold: publishing now"
                    );
                    shared
                        .stats
                        .tracks_in_first_offer
                        .fetch_add(1, Ordering::Relaxed);
                }
                Some(publish_media(&room, call_type).await?)
            }
            FirstPublish::Held { connect_now } => {
                if connect_now {
                    room.connect_publisher().await?;
                }
                None
            }
        };
        Ok::<_, oracle_calls_rtc::Error>((room, events, media))
    }
    .await;
    let (room, mut events, media) = match joined {
        Ok(x) => x,
        Err(e) => {
            error!(error = %e, "could not join the room");
            return media_failed(shared, call_id, e.to_string()).await;
        }
    };
    report.joined_after = Some(started.elapsed());
    shared.stats.calls_joined.fetch_add(1, Ordering::Relaxed);
    info!(identity = room.identity(), "joined the call's room");

    // 4. The oracle, fed from the room's events.
    let (tx, rx) = mpsc::channel::<Heard>(100);
    let counters = Arc::new(IoCounters::default());
    let info = CallInfo {
        call_id: call_id.clone(),
        user_did: key.user_did.clone(),
        oracle_did: key.oracle_did.clone(),
        session_id: key.session_id.clone(),
        call_type: key.call_type,
    };
    let (asks_tx, mut asks) = mpsc::channel::<()>(4);
    let (media_tx, media_rx) = oneshot::channel();
    // Tracks already published are not held again.
    let hold_for = if media.is_some() {
        Duration::ZERO
    } else {
        cfg.first_frame_hold
    };
    let mut hold = FirstFrameHold::new(hold_for, media_tx);
    let io = CallIo::new(info, rx, media.ok_or(media_rx), asks_tx, counters.clone());
    let mut publish_failed = None;
    let mut user_video: Option<String> = None;
    let oracle = shared.oracle.clone();
    let mut oracle_task =
        tokio::spawn(async move { oracle.run(io).await }.instrument(tracing::Span::current()));
    let mut oracle_done = false;
    let user_deadline = tokio::time::Instant::now() + cfg.user_join_timeout;
    // Only the identity the server issued the user's token for is the user.
    let user = key.user_identity.as_str();
    let mut presence = Presence::new(user, room.identity());
    let mut oracle_error = None;
    let ended_by = loop {
        tokio::select! {
            ev = events.recv() => match ev {
                None => break EndedBy::RoomClosed,
                Some(RoomEvent::ParticipantJoined { identity, joined_at_ms }) => {
                    if identity == user {
                        hold.user_joined(joined_at_ms, unix_ms_now());
                    }
                    if presence.joined(identity) == Joined::AgentThatStays {
                        warn!("another agent serves this call too; leaving it to that one");
                        break EndedBy::AnotherAgent;
                    }
                }
                Some(RoomEvent::ParticipantLeft { identity }) => {
                    if presence.left(&identity) {
                        info!(%identity, "the user left");
                        break EndedBy::UserLeft;
                    }
                }
                Some(RoomEvent::AudioFrame { identity, .. }) if identity != user => {
                    debug!(%identity, "audio from a participant who is not the user; not listening");
                }
                Some(RoomEvent::VideoFrame { identity, .. }) if identity != user => {
                    debug!(%identity, "video from a participant who is not the user; not watching");
                }
                Some(RoomEvent::AudioFrame { pcm, .. }) => {
                    report.frames_heard += 1;
                    if report.first_heard_after.is_none() {
                        report.first_heard_after = Some(started.elapsed());
                    }
                    counters.heard.fetch_add(1, Ordering::Relaxed);
                    // A slow oracle loses audio, it does not stall the room.
                    let _ = tx.try_send(Heard::Audio { pcm });
                }
                Some(RoomEvent::VideoFrame { track_sid, vp8, keyframe, .. }) => {
                    user_video = Some(track_sid);
                    let _ = tx.try_send(Heard::Video { vp8, keyframe });
                }
                Some(RoomEvent::KeyframeRequested) => {
                    let _ = tx.try_send(Heard::KeyframeRequested);
                }
                Some(RoomEvent::DecryptionFailed { identity, error, stats }) => {
                    report.decrypt_failures += 1;
                    shared.stats.decrypt_failures.fetch_add(1, Ordering::Relaxed);
                    if report.decrypt_failures == 1 || report.decrypt_failures.is_multiple_of(250) {
                        warn!(%identity, %error, ?stats, "frames from a participant do not decrypt");
                    }
                }
                Some(RoomEvent::UnencryptedTrack { identity, track_sid }) => {
                    report.unencrypted_tracks += 1;
                    warn!(%identity, %track_sid, "the user's track is not end-to-end encrypted; not listening to it");
                }
                Some(RoomEvent::Reconnecting { attempt, reason, full: false }) => {
                    warn!(attempt, %reason, "room signaling lost; resuming");
                }
                Some(RoomEvent::Reconnecting { attempt, reason, .. }) => {
                    warn!(attempt, %reason, "room session lost; rejoining with a renewed token");
                }
                Some(RoomEvent::Reconnected) => info!("room signaling resumed or rejoined"),
                Some(RoomEvent::Disconnected { reason }) => {
                    info!(%reason, "disconnected from the room");
                    break EndedBy::RoomClosed;
                }
                Some(_) => {}
            },
            () = hold.opening(), if hold.waiting() => {
                match publish_media(&room, call_type).await {
                    Ok(m) => hold.open(m),
                    Err(e) => {
                        publish_failed = Some(e.to_string());
                        break EndedBy::RoomClosed;
                    }
                }
            }
            Some(()) = asks.recv() => {
                if let Some(track) = &user_video {
                    let _ = room.request_keyframe(track).await;
                }
            }
            _ = cancel.changed() => break (*cancel.borrow()).unwrap_or(EndedBy::Terminated),
            () = tokio::time::sleep_until(user_deadline), if !presence.seen_user() => {
                warn!(secs = cfg.user_join_timeout.as_secs(), "the user never joined");
                break EndedBy::UserNeverJoined;
            }
            res = &mut oracle_task, if !oracle_done => {
                oracle_done = true;
                match res {
                    Ok(Ok(())) => break EndedBy::OracleDone,
                    // The room closed under the oracle before its event reached us.
                    Ok(Err(crate::OracleError::RoomGone)) => break EndedBy::RoomClosed,
                    Ok(Err(e)) => { oracle_error = Some(e.to_string()); break EndedBy::OracleDone; }
                    Err(e) => { oracle_error = Some(format!("the oracle panicked: {e}")); break EndedBy::OracleDone; }
                }
            }
        }
    };
    drop(tx);
    // An oracle still waiting for its tracks learns they will not come.
    drop(hold);
    if !oracle_done {
        match tokio::time::timeout(Duration::from_secs(2), &mut oracle_task).await {
            // The room going away under an oracle that is still speaking is the normal end.
            Ok(Ok(Err(crate::OracleError::RoomGone))) => {}
            Ok(Ok(Err(e))) => oracle_error = Some(e.to_string()),
            Ok(Err(e)) => oracle_error = Some(format!("the oracle panicked: {e}")),
            Ok(Ok(Ok(()))) => {}
            Err(_) => {
                warn!("the oracle did not stop within 2 s; aborting it");
                oracle_task.abort();
            }
        }
    }
    report.frames_spoken = counters.spoken.load(Ordering::Relaxed);

    // 5. Tell LiveKit the job succeeded before leaving (so leaving is not a failure), leave,
    //    and tell the server.
    if let Some(e) = publish_failed {
        error!(error = %e, "could not publish the oracle's tracks");
        job_status(out, &a.job.id, lk::JobStatus::JsFailed, &e).await;
        room.leave().await;
        return media_failed(shared, call_id, e).await;
    }
    job_status(out, &a.job.id, lk::JobStatus::JsSuccess, "").await;
    room.leave().await;
    let reason = match ended_by {
        EndedBy::UserLeft => Some(CallReason::ParticipantLeft),
        EndedBy::Shutdown | EndedBy::OracleDone => Some(CallReason::AgentHangup),
        EndedBy::UserNeverJoined => Some(CallReason::Timeout),
        EndedBy::RoomClosed | EndedBy::Terminated | EndedBy::AnotherAgent => None,
    };
    if let Some(reason) = reason {
        report_to_server(shared, call_id, Some(CallStatus::Ended), reason).await;
    }
    match oracle_error {
        Some(e) => {
            error!(error = %e, "the oracle failed");
            JobOutcome::OracleFailed(e)
        }
        None => JobOutcome::Served { ended_by },
    }
}

/// Publishes the oracle's microphone and, in a video call, its camera (what the oracle shows;
/// VP8, 320x240).
async fn publish_media(
    room: &Room,
    call_type: oracle_calls_proto::CallType,
) -> Result<Media, oracle_calls_rtc::Error> {
    let mouth = room.publish_audio("oracle").await?;
    let camera = if call_type == oracle_calls_proto::CallType::Video {
        Some(room.publish_video("oracle-camera", 320, 240).await?)
    } else {
        None
    };
    Ok(Media { mouth, camera })
}

/// Holds the oracle's tracks back until the user has been in the room for `hold`.
///
/// livekit-server debounces a subscriber peer connection's renegotiation: a track published
/// within 150 ms of that connection's last offer (or of its creation, which is the user's
/// join) is offered 150 ms after it is published; one published later, within 10 ms.
/// LiveKit counts a track as published once the publisher's offer naming it is applied, not
/// at its first packet. So publishing just after that window, on a publisher connection
/// opened at join, has the track in the user's next offer sooner than publishing at once,
/// whenever the agent is ready less than 150 ms after the user joined (the usual case: both
/// join right after the server's sync answer). It opens once; with a hold of zero the job
/// publishes at join and never uses this.
struct FirstFrameHold {
    hold: Duration,
    opens_at: Option<tokio::time::Instant>,
    media: Option<oneshot::Sender<Media>>,
}

impl FirstFrameHold {
    fn new(hold: Duration, media: oneshot::Sender<Media>) -> Self {
        Self {
            hold,
            opens_at: None,
            media: (!hold.is_zero()).then_some(media),
        }
    }

    /// The user is in the room: its node says it joined at `joined_at_ms` (0: not said).
    fn user_joined(&mut self, joined_at_ms: i64, now_ms: i64) {
        if self.media.is_none() || self.opens_at.is_some() {
            return;
        }
        let left = hold_left(self.hold, joined_at_ms, now_ms);
        debug!(
            hold_ms = left.as_millis(),
            "the oracle's tracks are published once the user's join has settled"
        );
        self.opens_at = Some(tokio::time::Instant::now() + left);
    }

    /// Whether the tracks are held with a time to publish them.
    fn waiting(&self) -> bool {
        self.opens_at.is_some() && self.media.is_some()
    }

    /// Resolves when the tracks are due (never while no time is set).
    async fn opening(&self) {
        match self.opens_at {
            Some(at) => tokio::time::sleep_until(at).await,
            None => std::future::pending().await,
        }
    }

    /// Hands the published tracks to the oracle.
    fn open(&mut self, media: Media) {
        if let Some(tx) = self.media.take() {
            let _ = tx.send(media);
        }
    }
}

/// When the oracle's tracks go out, decided once the room is joined.
#[derive(Debug, PartialEq, Eq)]
enum FirstPublish {
    /// With the publisher's first offer: there is no hold, or the user was in the room for
    /// longer than the hold (it joined early, or this agent replaces one that died).
    Now,
    /// Once the user's join has settled ([`FirstFrameHold`]). `connect_now`: the user is not
    /// in the room yet, so the publisher connection is made while we wait for it, and the
    /// tracks are one renegotiation on a connection that is up by then. When the user is
    /// already there, at most the hold is left: one offer carrying the tracks goes when it
    /// ends, and never a second offer right behind a first whose ICE is still checking
    /// (livekit-server answered one such offer with new ICE credentials, an ICE restart
    /// nobody asked for, and the publish failed).
    Held { connect_now: bool },
}

fn first_publish(room: &Room, user: &str, hold: Duration) -> FirstPublish {
    if hold.is_zero() {
        return FirstPublish::Now;
    }
    let at_join = room.present_at_join().iter().find(|p| p.identity == user);
    decide_first_publish(at_join.map(|p| p.joined_at_ms), hold, unix_ms_now())
}

fn decide_first_publish(
    user_joined_at_ms: Option<i64>,
    hold: Duration,
    now_ms: i64,
) -> FirstPublish {
    match user_joined_at_ms {
        None => FirstPublish::Held { connect_now: true },
        Some(at) if hold_left(hold, at, now_ms).is_zero() => FirstPublish::Now,
        Some(_) => FirstPublish::Held { connect_now: false },
    }
}

/// How much of `hold` is left for a user that joined at `joined_at_ms` by its LiveKit node's
/// clock, now being `now_ms` by ours: all of it when the join time is unknown (0) or ahead of
/// our clock, none once it has passed.
fn hold_left(hold: Duration, joined_at_ms: i64, now_ms: i64) -> Duration {
    if joined_at_ms <= 0 {
        return hold;
    }
    let since = u64::try_from(now_ms.saturating_sub(joined_at_ms)).unwrap_or(0);
    hold.saturating_sub(Duration::from_millis(since))
}

fn unix_ms_now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
}

/// Who is in the call's room besides us. Only the participant the server named as the user
/// (`KeyResponse::user_identity`) counts: anyone else is logged as unexpected and neither
/// stops the wait for the user nor keeps the call going once the user has left. Another
/// agent (`agent-…`) is the one case that matters: of two agents, the one whose identity
/// sorts last serves the call, so both decide alike without talking. (A directly handed-off
/// agent, `agent-DJ_…`, sorts after one of LiveKit's jobs, `agent-AJ_…`: a call handed off
/// keeps its first agent when LiveKit dispatches another into it.)
struct Presence {
    user: String,
    own: String,
    seen_user: bool,
    unexpected: HashSet<String>,
}

/// What a participant's joining means for this agent.
#[derive(Debug, PartialEq, Eq)]
enum Joined {
    /// Nothing changes for us (the user, an intruder, or an agent that leaves to us).
    Noted,
    /// Another agent whose identity sorts after ours: it serves the call, we leave.
    AgentThatStays,
}

impl Presence {
    fn new(user: &str, own: &str) -> Self {
        Self {
            user: user.to_owned(),
            own: own.to_owned(),
            seen_user: false,
            unexpected: HashSet::new(),
        }
    }

    /// Whether the user has joined.
    fn seen_user(&self) -> bool {
        self.seen_user
    }

    fn joined(&mut self, identity: String) -> Joined {
        if identity == self.user {
            self.seen_user = true;
        } else if identity.starts_with("agent-") && identity != self.own {
            if identity > self.own {
                return Joined::AgentThatStays;
            }
            info!(%identity, "another agent joined this call; it leaves it to us");
            self.unexpected.insert(identity);
        } else {
            // It gets nothing it can decrypt; it is only logged.
            warn!(%identity, "a participant who is not the call's user joined the room; ignoring it");
            self.unexpected.insert(identity);
        }
        Joined::Noted
    }

    /// Whether the one who left is the user (which ends the call).
    fn left(&mut self, identity: &str) -> bool {
        if identity == self.user {
            return true;
        }
        if self.unexpected.remove(identity) {
            info!(%identity, "the unexpected participant left the room");
        }
        false
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_hold_counts_from_the_users_join_by_its_nodes_clock() {
        let hold = Duration::from_millis(170);
        // Unknown join time: the whole hold, from now.
        assert_eq!(hold_left(hold, 0, 1_000_000), hold);
        // Joined 60 ms ago: 110 ms left; 170 ms or more ago: none.
        assert_eq!(
            hold_left(hold, 999_940, 1_000_000),
            Duration::from_millis(110)
        );
        assert_eq!(hold_left(hold, 999_830, 1_000_000), Duration::ZERO);
        assert_eq!(hold_left(hold, 1, 1_000_000), Duration::ZERO);
        // A node clock ahead of ours gives no credit: the whole hold.
        assert_eq!(hold_left(hold, 1_000_050, 1_000_000), hold);
    }

    #[test]
    fn a_user_long_in_the_room_gets_the_tracks_in_the_first_offer() {
        let hold = Duration::from_millis(170);
        let now = 1_000_000;
        // Not there yet: the publisher connects while we wait for it.
        assert_eq!(
            decide_first_publish(None, hold, now),
            FirstPublish::Held { connect_now: true }
        );
        // There for longer than the hold (an early join, a replaced agent): one offer, now.
        assert_eq!(
            decide_first_publish(Some(now - 400), hold, now),
            FirstPublish::Now
        );
        // There, but not for long, or since an unknown time: one offer, when the hold ends.
        for at in [now - 60, 0] {
            assert_eq!(
                decide_first_publish(Some(at), hold, now),
                FirstPublish::Held { connect_now: false }
            );
        }
    }

    #[tokio::test]
    async fn the_tracks_are_due_once_the_users_join_has_settled() {
        let (tx, mut rx) = oneshot::channel();
        let mut h = FirstFrameHold::new(Duration::from_millis(170), tx);
        assert!(!h.waiting(), "no time to publish before the user joins");
        let t0 = tokio::time::Instant::now();
        // Joined 120 ms ago by the node's clock: 50 ms left.
        h.user_joined(999_880, 1_000_000);
        assert!(h.waiting());
        let due = h.opens_at;
        h.opening().await;
        let took = t0.elapsed();
        assert!(
            took >= Duration::from_millis(50) && took < Duration::from_millis(150),
            "{took:?}"
        );
        // A second join (the user's full reconnect) does not move it.
        h.user_joined(0, 2_000_000);
        assert_eq!(h.opens_at, due);
        // Dropped unopened (the job ended first): the oracle learns its tracks never come.
        drop(h);
        assert!(matches!(
            rx.try_recv(),
            Err(oneshot::error::TryRecvError::Closed)
        ));
        // A hold of zero never waits: the job published at join.
        let (tx, _rx) = oneshot::channel();
        let mut h = FirstFrameHold::new(Duration::ZERO, tx);
        h.user_joined(0, 1_000_000);
        assert!(!h.waiting());
    }

    #[test]
    fn only_the_named_user_is_the_user() {
        let mut p = Presence::new("@did-ixo-u:localhost", "agent-DJ_1");
        // An intruder does not end the wait for the user...
        assert_eq!(p.joined("@mallory:localhost".to_owned()), Joined::Noted);
        p.joined("lk-intruder".to_owned());
        assert!(!p.seen_user());
        // ...and its leaving is not the user leaving.
        assert!(!p.left("lk-intruder"));
        assert_eq!(p.joined("@did-ixo-u:localhost".to_owned()), Joined::Noted);
        assert!(p.seen_user());
        // The user leaving ends the call although the intruder is still there.
        assert!(p.left("@did-ixo-u:localhost"));
        assert!(p.unexpected.contains("@mallory:localhost"));
    }

    #[test]
    fn of_two_agents_the_last_identity_stays_and_both_agree() {
        let (a, b) = ("agent-AJ_x7", "agent-DJ_00ff");
        let mut first = Presence::new("@u:localhost", a);
        let mut second = Presence::new("@u:localhost", b);
        assert_eq!(
            first.joined(b.to_owned()),
            Joined::AgentThatStays,
            "a leaves"
        );
        assert_eq!(second.joined(a.to_owned()), Joined::Noted, "b stays");
        // Our own identity (a rejoin) and non-agents never make us leave.
        assert_eq!(first.joined(a.to_owned()), Joined::Noted);
        assert_eq!(second.joined("lk-agent-x".to_owned()), Joined::Noted);
    }
}

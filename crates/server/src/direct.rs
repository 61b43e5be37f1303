//! Direct dispatch (docs/PROTOCOL.md §6.8): agents of this oracle wait at
//! `POST /agent/jobs/next`; when a call is activated and one waits, the server hands it the
//! call with a join token at once instead of asking LiveKit, whose dispatch spends about
//! 200 ms choosing a node before it offers the job (docs/BENCHMARKS.md). LiveKit's dispatch
//! stays the path when no agent waits here, when the agent declines, and as the fallback when
//! no agent is in the room a few seconds after the hand-off.
//!
//! The hand-off gives an agent nothing a LiveKit dispatch would not: a join token for the
//! call's room. The call key is still fetched (wrapped) from `GET /calls/{callId}/key`, which
//! checks the agent's API key as before, and only the oracle's private key opens it.

use std::collections::{HashMap, VecDeque};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use oracle_calls_proto::{AgentJob, CallId, CallStatus};
use tokio::sync::oneshot;
use tracing::{info, warn};

use crate::livekit::Opened;
use crate::{AppState, Error, Result, state};

/// Longest wait of one `POST /agent/jobs/next`, whatever the agent asks for.
pub const MAX_WAIT: Duration = Duration::from_secs(20);

/// Jobs handed off and not settled yet, at most (older ones are forgotten first).
const MAX_PENDING: usize = 10_000;

/// The agents waiting for a call and the jobs handed off, in this server process.
#[derive(Debug, Default)]
pub struct DirectDispatch {
    waiting: Mutex<VecDeque<Waiter>>,
    pending: Mutex<HashMap<String, Pending>>,
}

#[derive(Debug)]
struct Waiter {
    /// The waiting agent's API key id: a job is declined only by the key it went to.
    key_id: String,
    tx: oneshot::Sender<AgentJob>,
}

#[derive(Debug, Clone)]
struct Pending {
    key_id: String,
    call_id: CallId,
    at: Instant,
}

/// A place in the queue of waiting agents; the job arrives on it.
#[derive(Debug)]
pub struct Waiting(oneshot::Receiver<AgentJob>);

impl Waiting {
    /// The job handed to this agent, or `None` when `wait` passed first. A job handed over in
    /// the same instant as the timeout is still returned, never dropped.
    pub async fn job(mut self, wait: Duration) -> Option<AgentJob> {
        match tokio::time::timeout(wait, &mut self.0).await {
            Ok(job) => job.ok(),
            Err(_) => {
                self.0.close();
                self.0.try_recv().ok()
            }
        }
    }
}

impl DirectDispatch {
    /// Queues an agent (by its API key id) for the next call.
    pub fn wait(&self, key_id: &str) -> Waiting {
        let (tx, rx) = oneshot::channel();
        if let Ok(mut q) = self.waiting.lock() {
            q.retain(|w| !w.tx.is_closed());
            q.push_back(Waiter {
                key_id: key_id.to_owned(),
                tx,
            });
        }
        Waiting(rx)
    }

    /// How many agents wait now.
    pub fn waiting(&self) -> usize {
        self.waiting.lock().map_or(0, |mut q| {
            q.retain(|w| !w.tx.is_closed());
            q.len()
        })
    }

    /// True when an agent waits (one whose request is still open).
    fn has_waiter(&self) -> bool {
        self.waiting() > 0
    }

    /// Hands `job` to the agent that has waited longest; `false` when none took it.
    fn hand_off(&self, job: &AgentJob) -> bool {
        let Ok(mut q) = self.waiting.lock() else {
            return false;
        };
        while let Some(w) = q.pop_front() {
            let key_id = w.key_id;
            if w.tx.send(job.clone()).is_ok() {
                drop(q);
                if let Ok(mut p) = self.pending.lock() {
                    if p.len() >= MAX_PENDING
                        && let Some(oldest) =
                            p.iter().min_by_key(|(_, v)| v.at).map(|(k, _)| k.clone())
                    {
                        p.remove(&oldest);
                    }
                    p.insert(
                        job.job_id.clone(),
                        Pending {
                            key_id,
                            call_id: job.call_id.clone(),
                            at: Instant::now(),
                        },
                    );
                }
                return true;
            }
        }
        false
    }

    /// Forgets a handed-off job; its call when `key_id` is the key it went to.
    fn settle(&self, job_id: &str, key_id: Option<&str>) -> Option<CallId> {
        let mut p = self.pending.lock().ok()?;
        match p.get(job_id) {
            Some(j) if key_id.is_none_or(|k| k == j.key_id) => p.remove(job_id).map(|j| j.call_id),
            _ => None,
        }
    }
}

/// A new job id: `DJ_` and 96 random bits in hex.
fn new_job_id() -> String {
    use std::fmt::Write as _;
    let bytes: [u8; 12] = rand::random();
    let mut s = String::from("DJ_");
    for b in bytes {
        let _ = write!(s, "{b:02x}");
    }
    s
}

/// A call whose room was made with no dispatch, to be handed to a waiting agent once it is
/// active ([`hand_off`]).
#[derive(Debug)]
#[must_use = "the call still needs its agent: pass it to `hand_off`"]
pub(crate) struct HandOff(CallId);

/// Opens the room of a call being activated, choosing how its agent comes: with LiveKit's
/// dispatch (the room is created with it), or handed to an agent waiting here when
/// `livekit.direct_dispatch` is on and one waits — then the room has no dispatch and the
/// caller passes the returned [`HandOff`] to [`hand_off`] once the call is active, so the
/// agent never sees (nor ends) a call before its activation is stored.
///
/// A repeated sync of an `active` call first takes back its room if LiveKit made it again
/// ([`retake`]).
///
/// # Errors
/// As [`crate::livekit::LiveKit::open_call_room`].
pub(crate) async fn open_room(
    state: &AppState,
    call_id: &CallId,
    user: &str,
    active: bool,
) -> Result<Option<HandOff>> {
    let room = call_id.room_name();
    let agent_name = state.config().oracle.agent_name.as_str();
    let direct = state.config().livekit.direct_dispatch && state.direct().has_waiter();
    let live = state.livekit().room(room).await?;
    if active && live.as_ref().is_some_and(|r| r.metadata.is_empty()) {
        retake(state, call_id).await?;
        return Ok(None);
    }
    // The user's early join: a room this user claimed may become the call's (an active call
    // adopted its claim already).
    let (marker, live) = if active {
        (None, live)
    } else {
        crate::claims::for_adoption(state, room, user, live).await?
    };
    let opened = state
        .livekit()
        .open_found_call_room(
            room,
            live,
            (!direct).then_some(agent_name),
            call_id.as_str(),
            marker.as_deref(),
        )
        .await?;
    if opened == Opened::Adopted {
        crate::claims::adopted(state);
    }
    // A room that was there already (a repeated sync) has its agent on the way or in it.
    Ok((direct && opened != Opened::Existing).then(|| HandOff(call_id.clone())))
}

/// Takes back an active call's room that LiveKit made again with no metadata (its caller
/// found it so): LiveKit makes a room on a participant's join, with none, after losing the
/// room (its Redis came back empty, say) when the call's user or agent rejoined first. Only this server hands out tokens
/// for the name of a call it activated (to the call's user and agent), so that room is the
/// call's: it gets its call id back (webhooks act on it again), and LiveKit's dispatch brings
/// an agent unless one is in the room. (An agent rejoining after that one came sorts after it
/// when it was handed off directly, `agent-DJ_…` after `agent-AJ_…`, and keeps the call.)
///
/// # Errors
/// LiveKit errors.
async fn retake(state: &AppState, call_id: &CallId) -> Result<()> {
    let room = call_id.room_name();
    let lk = state.livekit();
    lk.update_room_metadata(room, call_id.as_str()).await?;
    state.metrics().call_event("room_retaken");
    let agent_there = lk
        .participants(room)
        .await?
        .iter()
        .any(|p| p.starts_with("agent-"));
    warn!(%call_id, agent_there, "the call's room was made again without its call id (LiveKit lost it and a participant rejoined); taken back");
    if !agent_there {
        lk.dispatch_agent(room, &state.config().oracle.agent_name, call_id.as_str())
            .await?;
    }
    Ok(())
}

/// Hands the call to the agent that has waited longest (a watchdog asks LiveKit for one if no
/// agent joined in time), or, when every waiter left meanwhile, asks LiveKit's dispatch.
///
/// # Errors
/// LiveKit errors of that dispatch; [`Error::Internal`] for a token that cannot be made.
pub(crate) async fn hand_off(state: &AppState, h: HandOff) -> Result<()> {
    let HandOff(call_id) = h;
    let room = call_id.room_name();
    let job_id = new_job_id();
    let identity = format!("agent-{job_id}");
    let (token, token_expires_at) = state.livekit().agent_token(room, &identity, state::now())?;
    let job = AgentJob {
        job_id: job_id.clone(),
        call_id: call_id.clone(),
        room: room.clone(),
        livekit_url: state.livekit().url().to_owned(),
        token,
        token_expires_at,
    };
    if state.direct().hand_off(&job) {
        state.metrics().dispatch("direct");
        info!(job = %job_id, "call handed to a waiting agent");
        spawn_fallback(state.clone(), call_id, job_id);
        Ok(())
    } else {
        // Every waiter left in between: LiveKit's dispatch, into the room made without one.
        dispatch_by_livekit(state, &call_id, "livekit").await
    }
}

async fn dispatch_by_livekit(state: &AppState, call_id: &CallId, path: &'static str) -> Result<()> {
    state
        .livekit()
        .dispatch_agent(
            call_id.room_name(),
            &state.config().oracle.agent_name,
            call_id.as_str(),
        )
        .await?;
    state.metrics().dispatch(path);
    Ok(())
}

/// After `livekit.direct_dispatch_fallback_ms`: if the handed-off job was neither declined nor
/// followed by an agent in the room while the call is still active, LiveKit dispatches one.
fn spawn_fallback(state: AppState, call_id: CallId, job_id: String) {
    let wait = Duration::from_millis(state.config().livekit.direct_dispatch_fallback_ms);
    tokio::spawn(async move {
        tokio::time::sleep(wait).await;
        if state.direct().settle(&job_id, None).is_none() {
            return; // declined already (and dispatched then)
        }
        let active = matches!(
            state.store().call(&call_id).await,
            Ok(Some(rec)) if rec.status == CallStatus::Active
        );
        if !active {
            return;
        }
        match state.livekit().participants(call_id.room_name()).await {
            Ok(present) if present.iter().any(|p| p.starts_with("agent-")) => {}
            Ok(_) => {
                warn!(%call_id, job = %job_id,
                    "no agent joined after the direct hand-off; asking LiveKit to dispatch one");
                if let Err(e) = dispatch_by_livekit(&state, &call_id, "fallback").await {
                    warn!(%call_id, error = %e, "the fallback dispatch failed");
                }
            }
            Err(e) => warn!(%call_id, error = %e, "could not look at the room after a hand-off"),
        }
    });
}

/// `POST /agent/jobs/{jobId}/decline`: the agent will not serve the call (no capacity, or
/// the call's key is sealed to a key it does not hold); LiveKit dispatches it at once.
///
/// # Errors
/// [`Error::NotFound`] when this key was handed no such job (or it is settled already);
/// LiveKit errors.
pub(crate) async fn decline(
    state: &AppState,
    job_id: &str,
    key_id: &str,
    reason: &str,
) -> Result<()> {
    let call_id = state
        .direct()
        .settle(job_id, Some(key_id))
        .ok_or(Error::NotFound)?;
    let reason: String = reason.chars().take(200).collect();
    info!(%call_id, job = %job_id, %reason, "the agent declined a direct hand-off");
    match state.store().call(&call_id).await? {
        Some(rec) if rec.status == CallStatus::Active || rec.status == CallStatus::Pending => {
            dispatch_by_livekit(state, &call_id, "declined").await
        }
        _ => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn job(id: &str) -> AgentJob {
        let call_id = CallId::parse("$ev:localhost@oc-00112233445566778899aabbccddeeff").unwrap();
        AgentJob {
            job_id: id.into(),
            room: call_id.room_name().clone(),
            call_id,
            livekit_url: "ws://x".into(),
            token: "t".into(),
            token_expires_at: oracle_calls_proto::Timestamp::from_unix_millis(0).unwrap(),
        }
    }

    #[tokio::test]
    async fn the_longest_waiting_agent_gets_the_job_and_only_its_key_declines_it() {
        let d = DirectDispatch::default();
        assert!(!d.hand_off(&job("DJ_0")), "nobody waits");
        let first = d.wait("key-a");
        let second = d.wait("key-b");
        assert_eq!(d.waiting(), 2);
        assert!(d.hand_off(&job("DJ_1")));
        let got = first.job(Duration::from_millis(10)).await.unwrap();
        assert_eq!(got.job_id, "DJ_1");
        assert_eq!(d.waiting(), 1);
        // Another key cannot decline it; its own can, once.
        assert!(d.settle("DJ_1", Some("key-b")).is_none());
        assert!(d.settle("DJ_1", Some("key-a")).is_some());
        assert!(d.settle("DJ_1", Some("key-a")).is_none());
        assert!(second.job(Duration::from_millis(5)).await.is_none());
    }

    #[tokio::test]
    async fn an_agent_that_stopped_waiting_is_skipped() {
        let d = DirectDispatch::default();
        let gone = d.wait("key-a");
        drop(gone);
        let live = d.wait("key-b");
        assert!(d.hand_off(&job("DJ_2")));
        assert_eq!(
            live.job(Duration::from_millis(10)).await.unwrap().job_id,
            "DJ_2"
        );
        assert_eq!(d.waiting(), 0);
    }

    #[test]
    fn job_ids_are_distinct_and_shaped() {
        let a = new_job_id();
        assert!(a.starts_with("DJ_") && a.len() == 27, "{a}");
        assert_ne!(a, new_job_id());
    }
}

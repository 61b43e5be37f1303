//! The LiveKit agent-worker connection: register, answer availability at once, take
//! assignments, report load, survive a lost socket, drain on shutdown.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use futures_util::{SinkExt as _, StreamExt as _};
use livekit_protocol as lk;
use oracle_calls_proto::{AgentJob, CallId, KeyResponse};
use prost::Message as _;
use tokio::sync::{Mutex, broadcast, mpsc, watch};
use tokio::task::JoinHandle;
use tokio_tungstenite::tungstenite::Message;
use tracing::{Instrument as _, debug, error, info, info_span, warn};

use crate::job::{self, Assignment, CallReport, EndedBy};
use crate::prekeys::replenish;
use crate::{AgentConfig, AgentError, Oracle};

use oracle_calls_rtc::Ws;

/// LiveKit stops offering jobs to a worker whose load reaches its `target_load` (0.7); a
/// worker that is merely busy must stay below it, so load is scaled into [0, 0.69] and a full
/// worker says `WS_FULL` instead.
const MAX_REPORTED_LOAD: f32 = 0.69;
/// How often load is reported (LiveKit's own workers use 2.5 s).
const STATUS_INTERVAL: Duration = Duration::from_millis(2500);
/// LiveKit closes a worker that has not registered 10 s after the upgrade.
const REGISTER_TIMEOUT: Duration = Duration::from_secs(10);
/// Token lifetime: only checked at upgrade, so short is fine.
const TOKEN_TTL_SECS: u64 = 600;
/// Finished calls' reports kept for [`AgentHandle::next_report`]. When nobody reads them (as
/// `oracle-calls agent` does not), the oldest are dropped and counted, so memory stays bounded.
pub(crate) const REPORTS_KEPT: usize = 64;
/// Waits for handed-off calls a process keeps open at the server at once (at most its
/// `max_calls`).
const DIRECT_WAITS: usize = 8;
/// How long the agent may look at a call's envelope before it answers LiveKit's offer (which
/// waits a few seconds); past it, the job is accepted and the job itself finds out.
const KEY_CHECK_TIMEOUT: Duration = Duration::from_millis(1500);

/// Counters of a running agent.
#[derive(Debug, Default)]
pub struct AgentStats {
    /// Availability requests received.
    pub jobs_offered: AtomicU64,
    /// Jobs accepted.
    pub jobs_accepted: AtomicU64,
    /// Jobs declined (full or draining) or refused (not an oracle-calls job).
    pub jobs_declined: AtomicU64,
    /// Calls whose room the agent joined.
    pub calls_joined: AtomicU64,
    /// Calls whose tracks went out with the publisher connection's first offer, because the
    /// user had been in the room for longer than the first-frame hold (an early join, or an
    /// agent dispatched again): no renegotiation right behind the first one.
    pub tracks_in_first_offer: AtomicU64,
    /// Calls running now.
    pub calls_active: AtomicU64,
    /// Key requests that failed or envelopes that did not open.
    pub key_failures: AtomicU64,
    /// User frames that did not decrypt.
    pub decrypt_failures: AtomicU64,
    /// Times the worker socket was re-established.
    pub reconnects: AtomicU64,
    /// Jobs declined or left because the call's key is sealed to a key this agent does not
    /// hold (another agent of the pool may hold it).
    pub keys_not_held: AtomicU64,
    /// Call reports dropped because nobody read them (the oldest go first).
    pub reports_dropped: AtomicU64,
}

pub(crate) struct Shared<O> {
    pub(crate) cfg: AgentConfig,
    pub(crate) oracle: Arc<O>,
    pub(crate) stats: Arc<AgentStats>,
    reports: broadcast::Sender<CallReport>,
}

/// An agent for one oracle, ready to register. See the crate docs.
#[derive(Debug)]
pub struct Agent<O> {
    cfg: AgentConfig,
    oracle: O,
}

/// A running agent.
#[derive(Debug)]
pub struct AgentHandle {
    worker_id: String,
    stats: Arc<AgentStats>,
    reports: Mutex<broadcast::Receiver<CallReport>>,
    shutdown: watch::Sender<bool>,
    task: JoinHandle<Result<(), AgentError>>,
}

impl<O: Oracle> Agent<O> {
    /// An agent serving `oracle` with `cfg`.
    pub fn new(cfg: AgentConfig, oracle: O) -> Self {
        Self { cfg, oracle }
    }

    /// Connects to LiveKit and registers; returns once LiveKit has accepted the worker, so a
    /// room created afterwards is dispatched to it.
    ///
    /// # Errors
    /// [`AgentError::Register`] if the socket cannot be opened or registration is refused.
    pub async fn start(self) -> Result<AgentHandle, AgentError> {
        let (reports_tx, reports_rx) = report_channel();
        let stats = Arc::new(AgentStats::default());
        let shared = Arc::new(Shared {
            cfg: self.cfg,
            oracle: Arc::new(self.oracle),
            stats: stats.clone(),
            reports: reports_tx,
        });
        // Before taking calls: the server holds prekeys this store can open.
        if let Some(p) = &shared.cfg.prekeys
            && let Some(signer) = &p.signer
        {
            let stock = replenish(
                &p.store,
                signer,
                &shared.cfg.oracle_did,
                &shared.cfg.server,
                &p.policy,
            )
            .await?;
            info!(
                one_time = stock.one_time,
                last_resort = stock.last_resort,
                "prekeys published"
            );
        }
        let (ws, worker_id) = connect(&shared.cfg).await?;
        info!(%worker_id, agent_name = %shared.cfg.agent_name, max_calls = shared.cfg.max_calls,
              "registered with LiveKit as an agent worker");
        let (shutdown_tx, shutdown_rx) = watch::channel(false);
        let span = info_span!("agent", agent_name = %shared.cfg.agent_name);
        if shared
            .cfg
            .prekeys
            .as_ref()
            .is_some_and(|p| p.signer.is_some())
        {
            tokio::spawn(
                keep_stocked(shared.clone(), shutdown_rx.clone()).instrument(span.clone()),
            );
        }
        let direct = if shared.cfg.direct_dispatch {
            let (tx, rx) = mpsc::channel(64);
            // Several waits at once, so a burst of calls all take the short path.
            for _ in 0..shared.cfg.max_calls.clamp(1, DIRECT_WAITS) {
                tokio::spawn(
                    poll_jobs(shared.clone(), tx.clone(), shutdown_rx.clone())
                        .instrument(span.clone()),
                );
            }
            Some(rx)
        } else {
            None
        };
        let task = tokio::spawn(
            Worker::new(shared, shutdown_rx, direct)
                .run(ws)
                .instrument(span),
        );
        Ok(AgentHandle {
            worker_id,
            stats,
            reports: Mutex::new(reports_rx),
            shutdown: shutdown_tx,
            task,
        })
    }
}

impl AgentHandle {
    /// LiveKit's id of this worker (`AW_…`) at registration.
    pub fn worker_id(&self) -> &str {
        &self.worker_id
    }

    /// Running counters.
    pub fn stats(&self) -> &AgentStats {
        &self.stats
    }

    /// Waits for the next finished job's report. Only the newest 64 wait to be read; older ones are dropped and counted in [`AgentStats::reports_dropped`].
    /// `None` once the worker and all its calls are gone.
    pub async fn next_report(&self) -> Option<CallReport> {
        next_report(&mut *self.reports.lock().await, &self.stats).await
    }

    /// Stops taking calls, lets live calls finish (up to the drain timeout, then ends them),
    /// and closes the worker socket.
    ///
    /// # Errors
    /// What ended the worker, if it failed before.
    pub async fn shutdown(self) -> Result<(), AgentError> {
        let _ = self.shutdown.send(true);
        self.task
            .await
            .map_err(|e| AgentError::Connection(format!("worker task failed: {e}")))?
    }

    /// Waits until the worker stops (it stops only on shutdown or a fatal error).
    ///
    /// # Errors
    /// What ended the worker.
    pub async fn wait(&mut self) -> Result<(), AgentError> {
        (&mut self.task)
            .await
            .map_err(|e| AgentError::Connection(format!("worker task failed: {e}")))?
    }
}

/// Where finished jobs put their reports: bounded, a full channel drops its oldest report.
fn report_channel() -> (
    broadcast::Sender<CallReport>,
    broadcast::Receiver<CallReport>,
) {
    broadcast::channel(REPORTS_KEPT)
}

async fn next_report(
    rx: &mut broadcast::Receiver<CallReport>,
    stats: &AgentStats,
) -> Option<CallReport> {
    loop {
        match rx.recv().await {
            Ok(r) => return Some(r),
            Err(broadcast::error::RecvError::Lagged(n)) => {
                stats.reports_dropped.fetch_add(n, Ordering::Relaxed);
                debug!(dropped = n, "call reports nobody read were dropped");
            }
            Err(broadcast::error::RecvError::Closed) => return None,
        }
    }
}

/// Opens `/agent` and registers as a `JT_ROOM` worker for the configured agent name.
async fn connect(cfg: &AgentConfig) -> Result<(Ws, String), AgentError> {
    let url = format!("{}/agent?protocol=1", cfg.livekit_url.trim_end_matches('/'));
    let token = cfg.livekit.agent_worker_token(TOKEN_TTL_SECS);
    let mut ws = match oracle_calls_rtc::open_websocket(&url, &token).await {
        Ok(ws) => ws,
        Err(oracle_calls_rtc::Error::Refused(why)) => {
            return Err(AgentError::Register(format!(
                "LiveKit refused the worker: {why} (check the API key and secret)"
            )));
        }
        Err(e) => {
            return Err(AgentError::Register(format!(
                "cannot reach LiveKit at {}: {e}",
                cfg.livekit_url
            )));
        }
    };
    let register = lk::worker_message::Message::Register(lk::RegisterWorkerRequest {
        r#type: lk::JobType::JtRoom as i32,
        agent_name: cfg.agent_name.clone(),
        version: env!("CARGO_PKG_VERSION").to_owned(),
        allowed_permissions: Some(lk::ParticipantPermission {
            can_subscribe: true,
            can_publish: true,
            can_publish_data: true,
            can_update_metadata: false,
            ..Default::default()
        }),
        ..Default::default()
    });
    send(&mut ws, register)
        .await
        .map_err(AgentError::Register)?;
    let answer = tokio::time::timeout(REGISTER_TIMEOUT, async {
        loop {
            match recv(&mut ws).await? {
                Some(lk::server_message::Message::Register(r)) => return Ok(r.worker_id),
                Some(_) => {}
                None => return Err("LiveKit closed the socket during registration".to_owned()),
            }
        }
    })
    .await
    .map_err(|_| AgentError::Register("no registration answer within 10 s".into()))?
    .map_err(AgentError::Register)?;
    Ok((ws, answer))
}

async fn send(ws: &mut Ws, m: lk::worker_message::Message) -> Result<(), String> {
    let msg = lk::WorkerMessage { message: Some(m) };
    ws.send(Message::Binary(msg.encode_to_vec().into()))
        .await
        .map_err(|e| e.to_string())
}

/// The next server message; `None` when the socket closed.
async fn recv(ws: &mut Ws) -> Result<Option<lk::server_message::Message>, String> {
    loop {
        let Some(frame) = ws.next().await else {
            return Ok(None);
        };
        match frame.map_err(|e| e.to_string())? {
            Message::Binary(b) => {
                let m = lk::ServerMessage::decode(b.as_ref())
                    .map_err(|_| "undecodable ServerMessage".to_owned())?;
                if let Some(m) = m.message {
                    return Ok(Some(m));
                }
            }
            Message::Close(_) => return Ok(None),
            _ => {}
        }
    }
}

struct Worker<O> {
    shared: Arc<Shared<O>>,
    shutdown: watch::Receiver<bool>,
    /// Running jobs and the switch that ends each.
    jobs: HashMap<String, watch::Sender<Option<EndedBy>>>,
    /// The LiveKit room of each running job.
    rooms: HashMap<String, String>,
    /// Jobs offered to us and not yet assigned: being checked (`None`), or accepted with the
    /// call's key response when the check fetched it.
    promised: HashMap<String, Option<KeyResponse>>,
    draining: bool,
    out_tx: mpsc::Sender<lk::WorkerMessage>,
    out_rx: mpsc::Receiver<lk::WorkerMessage>,
    done_tx: mpsc::Sender<String>,
    done_rx: mpsc::Receiver<String>,
    checked_tx: mpsc::Sender<KeyCheck>,
    checked_rx: mpsc::Receiver<KeyCheck>,
    /// Calls the server hands this agent directly ([`poll_jobs`]); `None` when off.
    direct_rx: Option<mpsc::Receiver<AgentJob>>,
    /// Handed-off calls whose key is being looked at.
    direct: HashMap<String, AgentJob>,
}

/// What the look at an offered call's envelope found.
struct KeyCheck {
    job_id: String,
    /// The key response, when it was fetched (the job then does not fetch it again).
    key: Option<KeyResponse>,
    /// Why the call is not for this agent: its key is sealed to a key we do not hold.
    not_held: Option<String>,
}

impl<O: Oracle> Worker<O> {
    fn new(
        shared: Arc<Shared<O>>,
        shutdown: watch::Receiver<bool>,
        direct_rx: Option<mpsc::Receiver<AgentJob>>,
    ) -> Self {
        let (out_tx, out_rx) = mpsc::channel(256);
        let (done_tx, done_rx) = mpsc::channel(256);
        let (checked_tx, checked_rx) = mpsc::channel(256);
        Self {
            shared,
            shutdown,
            jobs: HashMap::new(),
            rooms: HashMap::new(),
            promised: HashMap::new(),
            draining: false,
            out_tx,
            out_rx,
            done_tx,
            done_rx,
            checked_tx,
            checked_rx,
            direct_rx,
            direct: HashMap::new(),
        }
    }

    async fn run(mut self, mut ws: Ws) -> Result<(), AgentError> {
        let mut status = tokio::time::interval(STATUS_INTERVAL);
        let mut drain_deadline: Option<tokio::time::Instant> = None;
        let mut hard_deadline: Option<tokio::time::Instant> = None;
        loop {
            tokio::select! {
                m = recv(&mut ws) => match m {
                    Ok(Some(m)) => {
                        if let Some(reply) = self.on_message(m)
                            && let Err(e) = send(&mut ws, reply).await
                        {
                            warn!(error = %e, "could not answer LiveKit");
                        }
                    }
                    Ok(None) | Err(_) => {
                        if let Err(e) = &m { warn!(error = %e, "worker socket failed"); }
                        else { warn!("LiveKit closed the worker socket"); }
                        match self.reconnect().await {
                            Some(w) => ws = w,
                            None => break,
                        }
                    }
                },
                Some(m) = self.out_rx.recv() => {
                    // LiveKit knows nothing of the jobs the server handed us directly.
                    if is_direct_update(&m) { continue; }
                    if let Err(e) = ws.send(Message::Binary(m.encode_to_vec().into())).await {
                        warn!(error = %e, "could not send a job update");
                    }
                }
                Some(c) = self.checked_rx.recv() => {
                    if let Some(job) = self.direct.remove(&c.job_id) {
                        self.on_direct_checked(job, c);
                        let _ = send(&mut ws, self.status()).await;
                    } else if let Some(reply) = self.on_key_check(c)
                        && let Err(e) = send(&mut ws, reply).await
                    {
                        warn!(error = %e, "could not answer LiveKit");
                    }
                }
                j = recv_opt(&mut self.direct_rx) => match j {
                    Some(job) => self.on_direct(job),
                    None => self.direct_rx = None,
                },
                Some(id) = self.done_rx.recv() => {
                    self.jobs.remove(&id);
                    self.rooms.remove(&id);
                    self.shared.stats.calls_active.store(self.jobs.len() as u64, Ordering::Relaxed);
                    let _ = send(&mut ws, self.status()).await;
                    if self.draining && self.jobs.is_empty() { break; }
                }
                _ = status.tick() => {
                    let _ = send(&mut ws, self.status()).await;
                }
                changed = self.shutdown.changed(), if !self.draining => {
                    let _ = changed;
                    self.draining = true;
                    info!(live_calls = self.jobs.len(), "draining: no new calls");
                    let _ = send(&mut ws, self.status()).await;
                    if self.jobs.is_empty() { break; }
                    drain_deadline = Some(tokio::time::Instant::now() + self.shared.cfg.drain_timeout);
                }
                () = sleep_opt(drain_deadline) => {
                    drain_deadline = None;
                    warn!(live_calls = self.jobs.len(), "drain timeout: ending the remaining calls");
                    for stop in self.jobs.values() { let _ = stop.send(Some(EndedBy::Shutdown)); }
                    hard_deadline = Some(tokio::time::Instant::now() + Duration::from_secs(5));
                }
                () = sleep_opt(hard_deadline) => {
                    error!(live_calls = self.jobs.len(), "calls did not end within 5 s; closing anyway");
                    break;
                }
            }
        }
        // Drain: wait until every promised job ended already; close politely.
        let _ = ws.close(None).await;
        info!("agent worker stopped");
        Ok(())
    }

    /// Re-opens the worker socket with backoff (2, 4, … 10 s) until it works or we shut down.
    async fn reconnect(&mut self) -> Option<Ws> {
        let mut n = 0u64;
        loop {
            if *self.shutdown.borrow() || self.draining {
                return None;
            }
            n += 1;
            let wait = Duration::from_secs((2 * n).min(10));
            match connect(&self.shared.cfg).await {
                Ok((ws, id)) => {
                    self.shared.stats.reconnects.fetch_add(1, Ordering::Relaxed);
                    // Promised jobs from the old socket will never be assigned.
                    self.promised.clear();
                    info!(worker_id = %id, live_calls = self.jobs.len(), "re-registered with LiveKit");
                    return Some(ws);
                }
                Err(e) => {
                    warn!(error = %e, attempt = n, retry_in_s = wait.as_secs(), "re-registering failed");
                    tokio::select! {
                        () = tokio::time::sleep(wait) => {}
                        _ = self.shutdown.changed() => return None,
                    }
                }
            }
        }
    }

    fn status(&self) -> lk::worker_message::Message {
        let max = self.shared.cfg.max_calls.max(1);
        let busy = self.jobs.len() + self.promised.len();
        let full = self.draining || busy >= max;
        lk::worker_message::Message::UpdateWorker(lk::UpdateWorkerStatus {
            status: Some(if full {
                lk::WorkerStatus::WsFull as i32
            } else {
                lk::WorkerStatus::WsAvailable as i32
            }),
            load: MAX_REPORTED_LOAD * (busy.min(max) as f32) / (max as f32),
            job_count: u32::try_from(self.jobs.len()).unwrap_or(u32::MAX),
            draining: self.draining,
            ..Default::default()
        })
    }

    /// Handles one server message; returns what to answer at once.
    fn on_message(
        &mut self,
        m: lk::server_message::Message,
    ) -> Option<lk::worker_message::Message> {
        use lk::server_message::Message as S;
        match m {
            S::Availability(req) => self.on_availability(req),
            S::Assignment(a) => {
                self.on_assignment(a);
                Some(self.status())
            }
            S::Termination(t) => {
                match self.jobs.get(&t.job_id) {
                    Some(stop) => {
                        info!(job = %t.job_id, "LiveKit terminated the job");
                        let _ = stop.send(Some(EndedBy::Terminated));
                    }
                    None => debug!(job = %t.job_id, "termination of an unknown job"),
                }
                None
            }
            _ => None,
        }
    }

    /// Answers an offer at once when it must be declined; otherwise reserves the capacity and
    /// first looks at whom the call's key is sealed to ([`Self::on_key_check`] answers).
    fn on_availability(
        &mut self,
        req: lk::AvailabilityRequest,
    ) -> Option<lk::worker_message::Message> {
        let stats = &self.shared.stats;
        stats.jobs_offered.fetch_add(1, Ordering::Relaxed);
        let job = req.job.unwrap_or_default();
        let busy = self.jobs.len() + self.promised.len();
        let mut resp = lk::AvailabilityResponse {
            job_id: job.id.clone(),
            ..Default::default()
        };
        if job.agent_name != self.shared.cfg.agent_name {
            warn!(job = %job.id, agent_name = %job.agent_name, "offered a job for another agent name; declining");
            resp.terminate = true;
        } else if let Some(room) = job.room.as_ref().map(|r| r.name.as_str())
            && self.rooms.values().any(|r| r == room)
        {
            // LiveKit dispatches a room's agent again when the room starts on another node
            // after its node died; our job there rejoins by itself (a full reconnect), so a
            // second one would be a second agent in the call.
            info!(job = %job.id, %room, "declining a job for a room one of our jobs serves");
            resp.available = false;
        } else if self.draining || busy >= self.shared.cfg.max_calls {
            info!(job = %job.id, busy, draining = self.draining, "declining a job: no capacity");
            resp.available = false;
        } else {
            self.promised.insert(job.id.clone(), None);
            let check = key_check(
                self.shared.clone(),
                job.id.clone(),
                CallId::parse(&job.metadata).ok(),
            );
            let tx = self.checked_tx.clone();
            tokio::spawn(
                async move {
                    let _ = tx.send(check.await).await;
                }
                .instrument(tracing::Span::current()),
            );
            return None;
        }
        stats.jobs_declined.fetch_add(1, Ordering::Relaxed);
        Some(lk::worker_message::Message::Availability(resp))
    }

    /// Answers an offer once its envelope was looked at: declined when the call's key is
    /// sealed to a key this agent does not hold (LiveKit then offers it to another worker),
    /// accepted otherwise.
    fn on_key_check(&mut self, c: KeyCheck) -> Option<lk::worker_message::Message> {
        if !self.promised.contains_key(&c.job_id) {
            // Offered on a socket that was lost meanwhile: that offer is void.
            debug!(job = %c.job_id, "an offer from before a reconnect; not answered");
            return None;
        }
        let stats = &self.shared.stats;
        let mut resp = lk::AvailabilityResponse {
            job_id: c.job_id.clone(),
            ..Default::default()
        };
        if let Some(why) = c.not_held {
            self.promised.remove(&c.job_id);
            stats.jobs_declined.fetch_add(1, Ordering::Relaxed);
            stats.keys_not_held.fetch_add(1, Ordering::Relaxed);
            warn!(job = %c.job_id, reason = %why,
                "declining a job: its call key is for another agent of the pool; LiveKit offers it to the next");
            resp.available = false;
        } else {
            resp.available = true;
            resp.participant_identity = format!("agent-{}", c.job_id);
            resp.participant_name = "oracle".into();
            stats.jobs_accepted.fetch_add(1, Ordering::Relaxed);
            debug!(job = %c.job_id, "accepted a job");
            self.promised.insert(c.job_id, c.key);
        }
        Some(lk::worker_message::Message::Availability(resp))
    }

    fn on_assignment(&mut self, a: lk::JobAssignment) {
        let Some(job) = a.job else {
            warn!("an assignment without a job; ignored");
            return;
        };
        let id = job.id.clone();
        let key = match self.promised.remove(&id) {
            Some(key) => key,
            None => {
                warn!(job = %id, "assigned a job we did not accept; taking it anyway");
                None
            }
        };
        let url = a.url.unwrap_or_else(|| self.shared.cfg.livekit_url.clone());
        self.start_job(job, a.token, url, key);
    }

    /// A call the server handed us: declined at once without capacity, else its envelope is
    /// looked at first, as for LiveKit's offers ([`Self::on_direct_checked`] goes on).
    fn on_direct(&mut self, job: AgentJob) {
        let stats = &self.shared.stats;
        stats.jobs_offered.fetch_add(1, Ordering::Relaxed);
        let busy = self.jobs.len() + self.promised.len();
        if self.draining || busy >= self.shared.cfg.max_calls {
            info!(job = %job.job_id, busy, draining = self.draining, "declining a handed-off call: no capacity");
            stats.jobs_declined.fetch_add(1, Ordering::Relaxed);
            self.decline_direct(job.job_id, "no capacity");
            return;
        }
        self.promised.insert(job.job_id.clone(), None);
        let check = key_check(
            self.shared.clone(),
            job.job_id.clone(),
            Some(job.call_id.clone()),
        );
        self.direct.insert(job.job_id.clone(), job);
        let tx = self.checked_tx.clone();
        tokio::spawn(
            async move {
                let _ = tx.send(check.await).await;
            }
            .instrument(tracing::Span::current()),
        );
    }

    /// Starts a handed-off call once its envelope was looked at, or declines it when its key
    /// is sealed to a key this agent does not hold (LiveKit then offers it to the pool).
    fn on_direct_checked(&mut self, job: AgentJob, c: KeyCheck) {
        self.promised.remove(&job.job_id);
        let stats = &self.shared.stats;
        if let Some(why) = c.not_held {
            stats.jobs_declined.fetch_add(1, Ordering::Relaxed);
            stats.keys_not_held.fetch_add(1, Ordering::Relaxed);
            warn!(job = %job.job_id, reason = %why, "declining a handed-off call: its key is for another agent of the pool");
            self.decline_direct(
                job.job_id,
                "the call's key is sealed to a key this agent does not hold",
            );
            return;
        }
        if self.draining {
            self.decline_direct(job.job_id, "draining");
            return;
        }
        stats.jobs_accepted.fetch_add(1, Ordering::Relaxed);
        info!(job = %job.job_id, call_id = %job.call_id, "took a call the server handed over");
        let lk_job = lk::Job {
            id: job.job_id.clone(),
            room: Some(lk::Room {
                name: job.room.as_str().to_owned(),
                ..Default::default()
            }),
            metadata: job.call_id.as_str().to_owned(),
            agent_name: self.shared.cfg.agent_name.clone(),
            ..Default::default()
        };
        // The agent's own LiveKit URL: it may reach LiveKit by another address than users.
        let url = self.shared.cfg.livekit_url.clone();
        self.start_job(lk_job, job.token, url, c.key);
    }

    fn decline_direct(&self, job_id: String, reason: &'static str) {
        let server = self.shared.cfg.server.clone();
        tokio::spawn(
            async move {
                if let Err(e) = server.decline_job(&job_id, reason).await {
                    warn!(job = %job_id, error = %e, "could not decline a handed-off call; the server's fallback dispatches it");
                }
            }
            .instrument(tracing::Span::current()),
        );
    }

    fn start_job(&mut self, job: lk::Job, token: String, url: String, key: Option<KeyResponse>) {
        let id = job.id.clone();
        let (stop_tx, stop_rx) = watch::channel(None);
        self.jobs.insert(id.clone(), stop_tx);
        if let Some(room) = &job.room {
            self.rooms.insert(id.clone(), room.name.clone());
        }
        self.shared
            .stats
            .calls_active
            .store(self.jobs.len() as u64, Ordering::Relaxed);
        let assignment = Assignment {
            url,
            token,
            job,
            key,
        };
        let shared = self.shared.clone();
        let out = self.out_tx.clone();
        let done = self.done_tx.clone();
        tokio::spawn(async move {
            // The job runs in its own task so a panic there ends that call only.
            let inner = tokio::spawn(job::run(shared.clone(), assignment, stop_rx, out));
            match inner.await {
                Ok(report) => {
                    let _ = shared.reports.send(report);
                }
                Err(e) => error!(job = %id, error = %e, "the call's task panicked"),
            }
            let _ = done.send(id).await;
        });
    }
}

/// How often the prekey stock on the server is checked.
const STOCK_INTERVAL: Duration = Duration::from_secs(15);

/// Keeps the server stocked with prekeys until shutdown; a failure is logged and tried again
/// at the next tick (calls meanwhile use what is left, then the last-resort prekey).
async fn keep_stocked<O: Oracle>(shared: Arc<Shared<O>>, mut shutdown: watch::Receiver<bool>) {
    let Some(p) = shared.cfg.prekeys.clone() else {
        return;
    };
    let Some(signer) = p.signer.clone() else {
        return;
    };
    let mut tick = tokio::time::interval(STOCK_INTERVAL);
    tick.tick().await;
    loop {
        tokio::select! {
            _ = tick.tick() => {
                if let Err(e) = replenish(&p.store, &signer, &shared.cfg.oracle_did, &shared.cfg.server, &p.policy).await {
                    warn!(error = %e, "could not restock prekeys; trying again");
                }
            }
            _ = shutdown.changed() => return,
        }
    }
}

/// Fetches the offered call's key response (bounded by [`KEY_CHECK_TIMEOUT`]) and reads whom
/// its envelope is sealed to. Anything that goes wrong here accepts the job: the job fetches
/// again and reports what it finds, as it would without this look.
async fn key_check<O: Oracle>(
    shared: Arc<Shared<O>>,
    job_id: String,
    call: Option<CallId>,
) -> KeyCheck {
    let mut check = KeyCheck {
        job_id,
        key: None,
        not_held: None,
    };
    let Some(call) = call else {
        return check;
    };
    let cfg = &shared.cfg;
    match tokio::time::timeout(KEY_CHECK_TIMEOUT, cfg.server.key(&call)).await {
        Ok(Ok(key)) => {
            let context = oracle_calls_crypto::CallContext::new(
                key.session_id.clone(),
                call.room_name().clone(),
                key.user_did.clone(),
                key.oracle_did.clone(),
                key.call_type,
            );
            check.not_held = crate::keys::not_held(
                &cfg.keys,
                cfg.prekeys.as_ref().map(|p| p.store.as_ref()),
                &key.encryption_key,
                &context,
                cfg.accept_legacy_envelopes,
            );
            if check.not_held.is_none() {
                check.key = Some(key);
            }
        }
        Ok(Err(e)) => {
            debug!(job = %check.job_id, error = %e, "key check: the key request failed; the job will retry")
        }
        Err(_) => debug!(job = %check.job_id, "key check: no answer in time; the job will retry"),
    }
    check
}

/// Waits at the server for calls it hands this agent directly (docs/PROTOCOL.md §6.8) while
/// this process has room for one more, until shutdown. Stops for good when the server does
/// not offer it (404) or refuses this key (401/403): LiveKit's dispatch still serves.
async fn poll_jobs<O: Oracle>(
    shared: Arc<Shared<O>>,
    tx: mpsc::Sender<AgentJob>,
    mut shutdown: watch::Receiver<bool>,
) {
    let mut backoff = Duration::from_secs(1);
    loop {
        if *shutdown.borrow() {
            return;
        }
        let active = usize::try_from(shared.stats.calls_active.load(Ordering::Relaxed))
            .unwrap_or(usize::MAX);
        let pause = if active >= shared.cfg.max_calls {
            Some(Duration::from_millis(200))
        } else {
            let next = tokio::select! {
                r = shared.cfg.server.next_job() => r,
                _ = shutdown.changed() => return,
            };
            match next {
                Ok(Some(job)) => {
                    backoff = Duration::from_secs(1);
                    if tx.send(job).await.is_err() {
                        return;
                    }
                    None
                }
                Ok(None) => {
                    backoff = Duration::from_secs(1);
                    None
                }
                Err(crate::api::ApiError::Status {
                    status, message, ..
                }) if matches!(status, 401 | 403 | 404) => {
                    warn!(status, %message, "the server does not hand calls to this agent directly; LiveKit's dispatch only");
                    return;
                }
                Err(e) => {
                    warn!(error = %e, retry_in_ms = backoff.as_millis() as u64, "waiting for a call at the server failed");
                    let b = backoff;
                    backoff = (backoff * 2).min(Duration::from_secs(30));
                    Some(b)
                }
            }
        };
        if let Some(p) = pause {
            tokio::select! {
                () = tokio::time::sleep(p) => {}
                _ = shutdown.changed() => return,
            }
        }
    }
}

/// A job update about a call the server handed over (its id starts `DJ_`).
fn is_direct_update(m: &lk::WorkerMessage) -> bool {
    matches!(&m.message, Some(lk::worker_message::Message::UpdateJob(u)) if u.job_id.starts_with("DJ_"))
}

async fn recv_opt<T>(rx: &mut Option<mpsc::Receiver<T>>) -> Option<T> {
    match rx {
        Some(r) => r.recv().await,
        None => std::future::pending().await,
    }
}

async fn sleep_opt(deadline: Option<tokio::time::Instant>) {
    match deadline {
        Some(d) => tokio::time::sleep_until(d).await,
        None => std::future::pending().await,
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use std::time::Instant;

    use super::*;

    fn report(n: usize) -> CallReport {
        CallReport::assigned(format!("AJ_{n}"), Instant::now())
    }

    /// An agent whose reports nobody reads (`oracle-calls agent`) keeps the newest
    /// `REPORTS_KEPT`, not one per call for as long as it runs.
    #[tokio::test]
    async fn unread_reports_stay_bounded_and_drops_are_counted() {
        let stats = AgentStats::default();
        let (tx, mut rx) = report_channel();
        let calls = 10 * REPORTS_KEPT;
        for n in 0..calls {
            // What a finished job does; it never waits for a reader.
            let _ = tx.send(report(n));
        }
        drop(tx);
        let mut kept = Vec::new();
        while let Some(r) = next_report(&mut rx, &stats).await {
            kept.push(r.job_id);
        }
        assert_eq!(kept.len(), REPORTS_KEPT, "only the newest are kept");
        assert_eq!(
            kept.first().unwrap(),
            &format!("AJ_{}", calls - REPORTS_KEPT)
        );
        assert_eq!(kept.last().unwrap(), &format!("AJ_{}", calls - 1));
        assert_eq!(
            stats.reports_dropped.load(Ordering::Relaxed),
            (calls - REPORTS_KEPT) as u64
        );
    }
}

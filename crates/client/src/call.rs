//! A call in progress.

use std::time::{Duration, Instant};

use oracle_calls_proto::{CallId, CallReason, CallStatus, OraclesCallContent};
use oracle_calls_rtc::{AudioSource, RoomEvent, VideoSource};
use tokio::sync::mpsc;
use tracing::{debug, info, warn};

use crate::client::edit_status;
use crate::{CallError, OracleClient};

/// How long hanging up waits for the media room to be left cleanly.
const LEAVE_WAIT: std::time::Duration = std::time::Duration::from_secs(5);

/// A step of placing a call (DESIGN §3), for timing.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Phase {
    /// Fetch the oracle's well-known document and check its pinned key.
    Resolve,
    /// Claim a prekey (with forward secrecy), make the call key and wrap it.
    Wrap,
    /// Find or create the encrypted DM with the oracle's bot.
    Room,
    /// Send the call event to Matrix.
    Send,
    /// `POST /calls/{callId}/sync`: validation, activation, LiveKit room, token.
    Sync,
    /// Join LiveKit with E2EE and publish the microphone.
    Join,
    /// The oracle's agent joined the room.
    AgentJoined,
    /// The first decrypted audio frame from the oracle.
    FirstAudio,
}

impl Phase {
    /// A short name.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Resolve => "resolve oracle",
            Self::Wrap => "make + wrap call key",
            Self::Room => "encrypted DM with bot",
            Self::Send => "send call event",
            Self::Sync => "server sync",
            Self::Join => "LiveKit join (E2EE)",
            Self::AgentJoined => "agent in room",
            Self::FirstAudio => "first oracle audio",
        }
    }
}

/// When each phase finished, measured from the start of `call_oracle`.
#[derive(Clone, Debug)]
pub struct Timeline {
    started: Instant,
    marks: Vec<(Phase, Duration)>,
    joined_early: Option<Duration>,
}

impl Timeline {
    pub(crate) fn start() -> Self {
        Self {
            started: Instant::now(),
            marks: Vec::new(),
            joined_early: None,
        }
    }

    /// The early join (docs/PROTOCOL.md §6.9) was in the room and publishing at `at`.
    pub(crate) fn joined_early(&mut self, at: Instant) {
        self.joined_early = Some(at.saturating_duration_since(self.started));
    }

    /// When the user was in the LiveKit room and publishing, when it joined early (beside
    /// the send and the sync; [`Phase::Join`] then takes no time of its own).
    pub fn joined_early_at(&self) -> Option<Duration> {
        self.joined_early
    }

    pub(crate) fn mark(&mut self, p: Phase) {
        if !self.marks.iter().any(|(q, _)| *q == p) {
            self.marks.push((p, self.started.elapsed()));
        }
    }

    /// As [`Timeline::mark`], for a phase reached at `at` (work that ran beside another).
    pub(crate) fn mark_at(&mut self, p: Phase, at: std::time::Instant) {
        if !self.marks.iter().any(|(q, _)| *q == p) {
            self.marks
                .push((p, at.saturating_duration_since(self.started)));
        }
    }

    /// `(phase, time since start)` in the order reached.
    pub fn marks(&self) -> &[(Phase, Duration)] {
        &self.marks
    }

    /// When `p` was reached.
    pub fn at(&self, p: Phase) -> Option<Duration> {
        self.marks.iter().find(|(q, _)| *q == p).map(|(_, d)| *d)
    }

    /// How long `p` itself took (since the phase before it).
    pub fn duration_of(&self, p: Phase) -> Option<Duration> {
        let i = self.marks.iter().position(|(q, _)| *q == p)?;
        let end = self.marks.get(i)?.1;
        let start = i
            .checked_sub(1)
            .and_then(|j| self.marks.get(j))
            .map_or(Duration::ZERO, |m| m.1);
        Some(end.saturating_sub(start))
    }
}

/// What happens in a call.
#[derive(Clone, Debug, PartialEq)]
#[non_exhaustive]
pub enum CallEvent {
    /// The oracle's agent is in the room.
    OracleJoined {
        /// Its LiveKit identity.
        identity: String,
    },
    /// 20 ms of the oracle's decrypted, decoded audio (960 samples, 48 kHz mono).
    OracleAudio {
        /// The samples.
        pcm: Vec<i16>,
    },
    /// The oracle's agent left.
    OracleLeft {
        /// Its identity.
        identity: String,
    },
    /// Someone who is not an oracle agent (LiveKit identity `agent-…`) joined the call's media
    /// room: never taken for the oracle. Without the call key it hears and sees nothing (its
    /// frames fail to decrypt and are reported), but the application should show it.
    UnexpectedParticipant {
        /// Its LiveKit identity.
        identity: String,
    },
    /// Frames from the oracle failed to decrypt (never played).
    DecryptionFailed {
        /// The sender.
        identity: String,
        /// How many so far.
        failures: u64,
    },
    /// The oracle's track is not end-to-end encrypted: refused, not played.
    UnencryptedTrack {
        /// The sender.
        identity: String,
    },
    /// One of the oracle's VP8 video frames (video calls), decrypted, still encoded.
    OracleVideo {
        /// The frame.
        vp8: Vec<u8>,
        /// True for a key frame.
        keyframe: bool,
    },
    /// The oracle's side wants a key frame of our camera: push one soon.
    KeyframeRequested,
    /// The media room's signaling connection was lost; resume try `attempt` starts (audio
    /// keeps flowing meanwhile). With `full`, the media server no longer knows us (e.g. its
    /// node died): fresh join `attempt` starts, with a fresh token from the server (audio stops
    /// until it is done; the call key stays the same).
    Reconnecting {
        /// 1 for the first try.
        attempt: u32,
        /// Why it was lost.
        reason: String,
        /// A full reconnect (fresh join) rather than a resume.
        full: bool,
    },
    /// The signaling connection was resumed, or the room joined again.
    Reconnected,
    /// The room closed (the call ended elsewhere or the connection was lost).
    Ended {
        /// Why.
        reason: String,
    },
}

/// A call in progress. End it with [`Call::end`]; dropping it leaves the media room but does
/// not tell the server or Matrix.
#[derive(Debug)]
pub struct Call {
    client: OracleClient,
    id: CallId,
    content: OraclesCallContent,
    matrix_room: matrix_sdk::Room,
    room: Option<oracle_calls_rtc::Room>,
    events: mpsc::Receiver<RoomEvent>,
    mic: AudioSource,
    camera: Option<VideoSource>,
    oracle_video: Option<String>,
    timeline: Timeline,
    failures: u64,
    ended: bool,
}

impl Call {
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn new(
        client: OracleClient,
        id: CallId,
        content: OraclesCallContent,
        matrix_room: matrix_sdk::Room,
        room: oracle_calls_rtc::Room,
        events: mpsc::Receiver<RoomEvent>,
        mic: AudioSource,
        camera: Option<VideoSource>,
        timeline: Timeline,
    ) -> Self {
        Self {
            client,
            id,
            content,
            matrix_room,
            room: Some(room),
            events,
            mic,
            camera,
            oracle_video: None,
            timeline,
            failures: 0,
            ended: false,
        }
    }

    /// The call id (`<event_id>@<room>`).
    pub fn id(&self) -> &CallId {
        &self.id
    }

    /// The call event's content as sent (still holding only the wrapped key).
    pub fn content(&self) -> &OraclesCallContent {
        &self.content
    }

    /// The Matrix room the call event is in.
    pub fn matrix_room(&self) -> &matrix_sdk::Room {
        &self.matrix_room
    }

    /// Our LiveKit identity, while in the room.
    pub fn identity(&self) -> Option<&str> {
        self.room.as_ref().map(|r| r.identity())
    }

    /// The local UDP addresses the call's media uses (subscriber, publisher), while in the
    /// room: the same across reconnects.
    pub fn media_addrs(&self) -> Option<[std::net::SocketAddr; 2]> {
        self.room.as_ref().map(|r| r.media_addrs())
    }

    /// Phase timings so far.
    pub fn timeline(&self) -> &Timeline {
        &self.timeline
    }

    /// The camera of a video call (push VP8 frames, 320x240); `None` in audio calls.
    pub fn camera(&self) -> Option<VideoSource> {
        self.camera.clone()
    }

    /// Asks the oracle's side for a key frame of its video (after a loss, or to start
    /// showing it).
    ///
    /// # Errors
    /// [`CallError::Media`] when the room is gone.
    pub async fn request_oracle_keyframe(&self) -> Result<(), CallError> {
        if let (Some(room), Some(track)) = (&self.room, &self.oracle_video) {
            room.request_keyframe(track)
                .await
                .map_err(CallError::Media)?;
        }
        Ok(())
    }

    /// A handle to send microphone audio from another task.
    pub fn microphone(&self) -> AudioSource {
        self.mic.clone()
    }

    /// Sends 20 ms of microphone audio (960 samples, 48 kHz mono). Call every 20 ms.
    ///
    /// # Errors
    /// [`CallError::Media`].
    pub async fn send_audio(&self, pcm: &[i16]) -> Result<(), CallError> {
        Ok(self.mic.push_pcm(pcm).await?)
    }

    /// The next call event; `None` once the call has ended and everything was delivered.
    pub async fn next_event(&mut self) -> Option<CallEvent> {
        loop {
            let ev = self.events.recv().await?;
            let mapped = match ev {
                RoomEvent::ParticipantJoined { identity, .. } if is_agent(&identity) => {
                    self.timeline.mark(Phase::AgentJoined);
                    CallEvent::OracleJoined { identity }
                }
                RoomEvent::ParticipantJoined { identity, .. } => {
                    warn!(call_id = %self.id, %identity, "a participant who is not the oracle's agent joined the call's room");
                    CallEvent::UnexpectedParticipant { identity }
                }
                RoomEvent::ParticipantLeft { identity } if is_agent(&identity) => {
                    CallEvent::OracleLeft { identity }
                }
                RoomEvent::ParticipantLeft { .. } => continue,
                RoomEvent::AudioFrame { pcm, .. } => {
                    self.timeline.mark(Phase::FirstAudio);
                    CallEvent::OracleAudio { pcm }
                }
                RoomEvent::VideoFrame {
                    track_sid,
                    vp8,
                    keyframe,
                    ..
                } => {
                    self.oracle_video = Some(track_sid);
                    CallEvent::OracleVideo { vp8, keyframe }
                }
                RoomEvent::KeyframeRequested => CallEvent::KeyframeRequested,
                RoomEvent::Reconnecting {
                    attempt,
                    reason,
                    full,
                } => CallEvent::Reconnecting {
                    attempt,
                    reason,
                    full,
                },
                RoomEvent::Reconnected => CallEvent::Reconnected,
                RoomEvent::DecryptionFailed { identity, .. } => {
                    self.failures += 1;
                    CallEvent::DecryptionFailed {
                        identity,
                        failures: self.failures,
                    }
                }
                RoomEvent::UnencryptedTrack { identity, .. } => {
                    CallEvent::UnencryptedTrack { identity }
                }
                RoomEvent::Disconnected { reason } => CallEvent::Ended { reason },
                _ => continue,
            };
            return Some(mapped);
        }
    }

    /// Hangs up: tells the server (`userHangup`), leaves the media room, edits the call event
    /// to `ended` in Matrix. Safe to call twice; the second call does nothing.
    ///
    /// # Errors
    /// The first thing that failed (the others are still attempted).
    pub async fn end(&mut self) -> Result<(), CallError> {
        if self.ended {
            return Ok(());
        }
        self.ended = true;
        let t = std::time::Instant::now();
        // The server first: leaving the media room first would let LiveKit's webhook (or the
        // agent) end the call as `participantLeft` before `userHangup` arrives.
        let server = self
            .client
            .report_end(&self.id, CallReason::UserHangup)
            .await;
        if let Some(e) = &server {
            warn!(call_id = %self.id, error = %e, "could not tell the server the call ended");
        }
        debug!(call_id = %self.id, ms = t.elapsed().as_millis() as u64, "told the server");
        if let Some(room) = self.room.take()
            && tokio::time::timeout(LEAVE_WAIT, room.leave())
                .await
                .is_err()
        {
            // A LiveKit that does not answer (e.g. re-syncing after a Redis restart) must not
            // hold up a hang-up: the room's task is dropped, its sockets with it.
            warn!(call_id = %self.id, wait_ms = LEAVE_WAIT.as_millis() as u64,
                  "leaving the media room did not finish in time; dropped it");
        }
        debug!(call_id = %self.id, ms = t.elapsed().as_millis() as u64, "left the media room");
        let matrix = edit_status(
            &self.matrix_room,
            &self.id,
            &self.content,
            CallStatus::Ended,
        )
        .await;
        if let Err(e) = &matrix {
            warn!(call_id = %self.id, error = %e, "could not mark the call ended in Matrix");
        }
        info!(call_id = %self.id, "call ended");
        match (server, matrix) {
            (Some(e), _) | (None, Err(e)) => Err(e),
            (None, Ok(())) => Ok(()),
        }
    }
}

/// Oracle agents join LiveKit as `agent-<job id>` (docs/PROTOCOL.md §7).
fn is_agent(identity: &str) -> bool {
    identity
        .strip_prefix("agent-")
        .is_some_and(|rest| !rest.is_empty())
}

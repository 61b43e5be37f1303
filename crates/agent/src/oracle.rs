//! The [`Oracle`] trait: what answers the user in a call.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use oracle_calls_proto::{CallId, CallType, Did, SessionId};
use oracle_calls_rtc::{AUDIO_FRAME_SAMPLES, AudioSource, VideoSource};
use tokio::sync::{mpsc, oneshot};
use tokio::time::{Interval, MissedTickBehavior};

/// What the oracle hears from the user.
#[derive(Clone, Debug, PartialEq)]
#[non_exhaustive]
pub enum Heard {
    /// 20 ms of the user's decoded audio: 960 mono samples at 48 kHz.
    Audio {
        /// The samples.
        pcm: Vec<i16>,
    },
    /// One of the user's (decrypted, still encoded) VP8 video frames, in a video call.
    Video {
        /// The frame.
        vp8: Vec<u8>,
        /// True for a key frame.
        keyframe: bool,
    },
    /// The user's side asked for a key frame of the oracle's video ([`CallIo::show`]).
    KeyframeRequested,
}

/// The result of [`CallIo::try_recv`].
#[derive(Clone, Debug, PartialEq)]
pub enum TryRecv {
    /// Something arrived.
    Heard(Heard),
    /// Nothing new right now.
    Empty,
    /// The call is over: finish up and return.
    Ended,
}

/// Why an oracle stopped with an error.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum OracleError {
    /// The call's room is closed (the user hung up, the call ended): the normal end of a call
    /// under an oracle that was still speaking or showing.
    #[error("the call's room is closed")]
    RoomGone,
    /// Publishing failed for another reason (e.g. a frame of the wrong size).
    #[error("could not publish: {0}")]
    Publish(String),
    /// The oracle's own logic failed.
    #[error("{0}")]
    Other(String),
}

/// A closed room is the call's end, anything else a publishing failure.
fn publish_error(e: oracle_calls_rtc::Error) -> OracleError {
    match e {
        oracle_calls_rtc::Error::Closed => OracleError::RoomGone,
        other => OracleError::Publish(other.to_string()),
    }
}

/// Facts about the call an oracle is serving.
#[derive(Clone, Debug)]
pub struct CallInfo {
    /// The call.
    pub call_id: CallId,
    /// The calling user.
    pub user_did: Did,
    /// The oracle.
    pub oracle_did: Did,
    /// The session the call belongs to.
    pub session_id: SessionId,
    /// Audio or video.
    pub call_type: CallType,
}

/// Running counters of one call, shared with the agent's report.
#[derive(Debug, Default)]
pub(crate) struct IoCounters {
    pub(crate) heard: AtomicU64,
    pub(crate) spoken: AtomicU64,
}

/// An oracle's connection to one call: what the user says comes in through
/// [`recv`](CallIo::recv) / [`try_recv`](CallIo::try_recv); what the oracle says goes out
/// through [`speak`](CallIo::speak), which keeps real-time pace (one 20 ms frame per 20 ms).
#[derive(Debug)]
pub struct CallIo {
    info: CallInfo,
    input: mpsc::Receiver<Heard>,
    outlet: Outlet,
    keyframe_asks: mpsc::Sender<()>,
    started: tokio::time::Instant,
    clock: Interval,
    counters: Arc<IoCounters>,
}

/// The oracle's published tracks.
#[derive(Debug)]
pub(crate) struct Media {
    pub(crate) mouth: AudioSource,
    pub(crate) camera: Option<VideoSource>,
}

/// Where the oracle's media goes: its tracks, or the job still holding them back (see
/// `first_frame_hold_ms` in the agent's configuration), or nowhere (they were never
/// published: the job ended first).
#[derive(Debug)]
enum Outlet {
    Ready(Media),
    Held(oneshot::Receiver<Media>),
    Gone,
}

impl CallIo {
    /// `media` is the oracle's tracks, or what the job sends them on once it publishes them.
    pub(crate) fn new(
        info: CallInfo,
        input: mpsc::Receiver<Heard>,
        media: Result<Media, oneshot::Receiver<Media>>,
        keyframe_asks: mpsc::Sender<()>,
        counters: Arc<IoCounters>,
    ) -> Self {
        let mut clock = tokio::time::interval(Duration::from_millis(20));
        clock.set_missed_tick_behavior(MissedTickBehavior::Delay);
        Self {
            info,
            input,
            outlet: match media {
                Ok(m) => Outlet::Ready(m),
                Err(held) => Outlet::Held(held),
            },
            keyframe_asks,
            started: tokio::time::Instant::now(),
            clock,
            counters,
        }
    }

    /// The oracle's tracks, once the job has published them (waits while it holds them).
    async fn media(&mut self) -> Result<&Media, OracleError> {
        if let Outlet::Held(rx) = &mut self.outlet {
            self.outlet = match rx.await {
                Ok(m) => Outlet::Ready(m),
                Err(_) => Outlet::Gone,
            };
            // Real time starts now: no burst of frames for the ticks the hold took.
            self.clock.reset_immediately();
        }
        match &self.outlet {
            Outlet::Ready(m) => Ok(m),
            Outlet::Held(_) | Outlet::Gone => Err(OracleError::RoomGone),
        }
    }

    /// The call.
    pub fn info(&self) -> &CallInfo {
        &self.info
    }

    /// Waits for the next thing the user says; `None` when the call is over.
    pub async fn recv(&mut self) -> Option<Heard> {
        self.input.recv().await
    }

    /// What the user said since the last call, without waiting.
    pub fn try_recv(&mut self) -> TryRecv {
        match self.input.try_recv() {
            Ok(h) => TryRecv::Heard(h),
            Err(mpsc::error::TryRecvError::Empty) => TryRecv::Empty,
            Err(mpsc::error::TryRecvError::Disconnected) => TryRecv::Ended,
        }
    }

    /// Says one 20 ms frame (960 samples), waiting for its slot so speech plays in real time.
    ///
    /// # Errors
    /// [`OracleError::Publish`] if the frame has the wrong size or the room is gone.
    pub async fn speak(&mut self, pcm: &[i16]) -> Result<(), OracleError> {
        if pcm.len() != AUDIO_FRAME_SAMPLES {
            return Err(OracleError::Publish(format!(
                "a frame is {AUDIO_FRAME_SAMPLES} samples, got {}",
                pcm.len()
            )));
        }
        self.media().await?;
        self.clock.tick().await;
        let Outlet::Ready(m) = &self.outlet else {
            return Err(OracleError::RoomGone);
        };
        m.mouth.push_pcm(pcm).await.map_err(publish_error)?;
        self.counters.spoken.fetch_add(1, Ordering::Relaxed);
        Ok(())
    }
}

impl CallIo {
    /// Shows one encoded VP8 frame on the oracle's video track (video calls only; a no-op in
    /// audio calls).
    ///
    /// # Errors
    /// [`OracleError::Publish`] if the room is gone.
    pub async fn show(&mut self, vp8: &[u8]) -> Result<(), OracleError> {
        if self.info.call_type != CallType::Video {
            return Ok(());
        }
        self.media().await?;
        let Outlet::Ready(Media {
            camera: Some(camera),
            ..
        }) = &self.outlet
        else {
            return Ok(());
        };
        let ms = u64::try_from(self.started.elapsed().as_millis()).unwrap_or(u64::MAX);
        camera.push_vp8(vp8, ms).await.map_err(publish_error)
    }

    /// Asks the user's side for a key frame of its video (e.g. to pass one on).
    pub fn request_user_keyframe(&self) {
        let _ = self.keyframe_asks.try_send(());
    }
}

/// An AI oracle: given one call, listen and answer until the call ends.
///
/// The agent runs one `run` per call, each in its own task: an error or a panic in one call
/// ends that call only. `run` should return soon after [`CallIo::recv`] gives `None` or
/// [`CallIo::try_recv`] gives [`TryRecv::Ended`].
///
/// A custom oracle, answering every second of speech with a beep:
///
/// ```
/// use oracle_calls_agent::{CallIo, Heard, Oracle, OracleError, TryRecv};
///
/// struct Beeper;
///
/// impl Oracle for Beeper {
///     async fn run(&self, mut call: CallIo) -> Result<(), OracleError> {
///         let silence = [0i16; 960];
///         let mut heard = 0u32;
///         loop {
///             match call.try_recv() {
///                 TryRecv::Ended => return Ok(()),
///                 TryRecv::Heard(Heard::Audio { .. }) => heard += 1,
///                 TryRecv::Heard(_) | TryRecv::Empty => {}
///             }
///             let frame = if heard >= 50 {
///                 heard = 0;
///                 oracle_calls_media::sine_tone(1000.0, 8000.0, 0, 960)
///             } else {
///                 silence.to_vec()
///             };
///             call.speak(&frame).await?;
///         }
///     }
/// }
/// ```
pub trait Oracle: Send + Sync + 'static {
    /// Serves one call.
    fn run(&self, call: CallIo) -> impl Future<Output = Result<(), OracleError>> + Send;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_closed_room_is_the_end_of_the_call_not_an_oracle_failure() {
        assert!(matches!(
            publish_error(oracle_calls_rtc::Error::Closed),
            OracleError::RoomGone
        ));
        assert!(matches!(
            publish_error(oracle_calls_rtc::Error::Codec("960 samples, got 7".into())),
            OracleError::Publish(m) if m.contains("got 7")
        ));
    }
}

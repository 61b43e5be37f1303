//! The public API: connect, publish audio, receive events, leave.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use oracle_calls_crypto::FrameError;
use oracle_calls_crypto::KeyDerivation;
use oracle_calls_crypto::frame::{DecryptStats, KeyRing};
use tokio::sync::{mpsc, oneshot};
use zeroize::Zeroizing;

use crate::core::Command;
use crate::engine::Engine;
use crate::{AUDIO_FRAME_SAMPLES, Error};

/// End-to-end encryption settings: the keyring every frame is sealed and opened with (in
/// shared-key mode the call key in slot 0, see `KeyRing::with_call_key`).
#[derive(Clone, Debug)]
pub struct E2eeOptions {
    /// The keyring. Each remote participant gets its own copy, so ratchets are per sender.
    pub key_ring: KeyRing,
}

/// How a lost signaling connection is resumed: up to `attempts` tries, the first at once,
/// then after `first_delay`, doubling up to `max_delay`. Media keeps flowing meanwhile.
///
/// When the server refuses the resume (it no longer knows the participant, e.g. its node
/// died) or the tries run out, and the room has a [`TokenSource`], the room rejoins from
/// scratch: up to `rejoin_attempts` fresh joins (same schedule) with a fresh token, new peer
/// connections, the same tracks published again and the same E2EE keys.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ReconnectPolicy {
    /// Tries before the room is given up (`Disconnected`) or rejoined; 0 never resumes.
    pub attempts: u32,
    /// Fresh joins (full reconnects) before the room is given up; 0 never rejoins. Only used
    /// with a [`RoomOptions::token_source`].
    pub rejoin_attempts: u32,
    /// The wait before the second try.
    pub first_delay: Duration,
    /// The longest wait between tries.
    pub max_delay: Duration,
}

impl Default for ReconnectPolicy {
    /// 6 tries (0, 0.25, 0.5, 1, 1, 1 s apart), each allowed 5 s; then (with a token source)
    /// 12 fresh joins on the same schedule (the last one about 10 s after the first), each
    /// allowed 10 s. The waits stop growing at 1 s: a participant whose server comes back
    /// (LiveKit's Redis, a node) is back about a second later, not after a wait that doubled
    /// to 4 s while the server was away (a re-dispatched agent may have deferred meanwhile to
    /// the participant that still stood for the old one).
    fn default() -> Self {
        Self {
            attempts: 6,
            rejoin_attempts: 12,
            first_delay: Duration::from_millis(250),
            max_delay: Duration::from_secs(1),
        }
    }
}

impl ReconnectPolicy {
    /// The wait before try `attempt` (1-based).
    pub fn delay(&self, attempt: u32) -> Duration {
        if attempt <= 1 {
            return Duration::ZERO;
        }
        let doublings = (attempt - 2).min(16);
        self.first_delay
            .saturating_mul(1 << doublings)
            .min(self.max_delay)
    }
}

/// Options of [`Room::connect`].
#[derive(Clone, Debug, Default)]
pub struct RoomOptions {
    /// Encrypt and decrypt media end to end. `None` sends and expects plain media.
    pub e2ee: Option<E2eeOptions>,
    /// Resuming a lost signaling connection.
    pub reconnect: ReconnectPolicy,
    /// The Opus encoder's complexity, 0 (cheapest) ..= 10; `None` keeps libopus's default
    /// (9). Encoding is most of a participant's CPU: 5 costs about half of 9 for speech (see
    /// `oracle-lab bench opus`).
    pub opus_complexity: Option<u8>,
    /// Where a full reconnect gets its fresh token (and URL); `None`: a room whose resume is
    /// refused closes.
    pub token_source: Option<TokenSource>,
}

/// A fresh join: the signaling URL and a new access token for the same identity and room.
#[derive(Clone)]
pub struct FreshToken {
    /// The LiveKit URL (`ws://…`) to join at; it may differ from the first one.
    pub url: String,
    /// The access token.
    pub token: Zeroizing<String>,
}

impl std::fmt::Debug for FreshToken {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FreshToken")
            .field("url", &self.url)
            .field("token", &"<redacted>")
            .finish()
    }
}

/// Why a [`TokenSource`] gave no token.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TokenError {
    /// The source will not give one (the call is over, or this participant may no longer
    /// join): the room closes with this reason.
    #[error("{0}")]
    Refused(String),
    /// None for now (whoever mints it is unreachable or cannot reach LiveKit, e.g. while
    /// LiveKit's nodes register again after a Redis outage): the rejoin is tried again, within
    /// the policy's `rejoin_attempts`.
    #[error("{0}")]
    Unavailable(String),
}

impl From<String> for TokenError {
    fn from(why: String) -> Self {
        Self::Refused(why)
    }
}

/// The future a [`TokenSource`] returns: a fresh token, or why none could be had.
pub type TokenFuture = Pin<Box<dyn Future<Output = Result<FreshToken, TokenError>> + Send>>;

/// Mints a fresh token for a full reconnect (see [`ReconnectPolicy`]); called once per
/// rejoin attempt, from the room's task.
#[derive(Clone)]
pub struct TokenSource(Arc<dyn Fn() -> TokenFuture + Send + Sync>);

impl TokenSource {
    /// Wraps an async closure.
    pub fn new<F, Fut>(f: F) -> Self
    where
        F: Fn() -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Result<FreshToken, TokenError>> + Send + 'static,
    {
        Self(Arc::new(move || Box::pin(f())))
    }

    pub(crate) fn fetch(&self) -> TokenFuture {
        (self.0)()
    }
}

impl std::fmt::Debug for TokenSource {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("TokenSource")
    }
}

/// What happens in the room.
#[derive(Debug, Clone, PartialEq)]
#[non_exhaustive]
pub enum RoomEvent {
    /// Both peer connections are up.
    Connected,
    /// Another participant is in the room.
    ParticipantJoined {
        /// Its identity.
        identity: String,
        /// When it joined the room, by the LiveKit node's clock (milliseconds since the Unix
        /// epoch; 0 when the server did not say).
        joined_at_ms: i64,
    },
    /// A participant left.
    ParticipantLeft {
        /// Its identity.
        identity: String,
    },
    /// A remote audio track's media started arriving.
    TrackSubscribed {
        /// The sender.
        identity: String,
        /// The track (`TR_…`).
        track_sid: String,
        /// Whether the sender marked it end-to-end encrypted.
        encrypted: bool,
    },
    /// 20 ms of decoded mono 48 kHz audio from a remote participant.
    AudioFrame {
        /// The sender.
        identity: String,
        /// The track.
        track_sid: String,
        /// The samples.
        pcm: Vec<i16>,
    },
    /// One decrypted VP8 frame (still encoded: this crate has no video codec) from a remote
    /// participant's video track.
    VideoFrame {
        /// The sender.
        identity: String,
        /// The track.
        track_sid: String,
        /// The VP8 frame.
        vp8: Vec<u8>,
        /// True for a key frame.
        keyframe: bool,
    },
    /// A subscriber of our video track asked for a key frame: push one soon.
    KeyframeRequested,
    /// A frame from this sender could not be decrypted and was dropped (never decoded).
    DecryptionFailed {
        /// The sender.
        identity: String,
        /// Why.
        error: FrameError,
        /// Running counters for this sender.
        stats: DecryptStats,
    },
    /// E2EE is on but this sender's track is not marked encrypted: its media is not played.
    UnencryptedTrack {
        /// The sender.
        identity: String,
        /// The track.
        track_sid: String,
    },
    /// A reliable data message (`DataPacket.user`) from a remote participant; decrypted with
    /// the room key when E2EE is on.
    DataReceived {
        /// The sender.
        identity: String,
        /// The topic, if the sender gave one.
        topic: Option<String>,
        /// The payload.
        payload: Vec<u8>,
        /// Whether it arrived end-to-end encrypted.
        encrypted: bool,
    },
    /// A data message from this sender could not be decrypted and was dropped.
    DataDecryptionFailed {
        /// The sender.
        identity: String,
        /// Why.
        error: FrameError,
    },
    /// E2EE is on but this sender's data message was not encrypted: it is not delivered.
    UnencryptedData {
        /// The sender.
        identity: String,
    },
    /// The signaling connection was lost (closed, failed, or silent past the server's ping
    /// timeout) and resume try `attempt` starts; media keeps flowing. With `full`, the
    /// resume was refused or ran out of tries and fresh join `attempt` starts: media stops
    /// until it is done.
    Reconnecting {
        /// 1 for the first try (counted separately for resumes and full reconnects).
        attempt: u32,
        /// Why the connection was lost (or the resume failed).
        reason: String,
        /// A full reconnect (fresh join, new peer connections) rather than a resume.
        full: bool,
    },
    /// The session was resumed on a new signaling connection (same participant), or, after a
    /// full reconnect, rejoined as a new participant with the same identity, the same tracks
    /// published again and the same E2EE keys.
    Reconnected,
    /// The room ended for us.
    Disconnected {
        /// Why.
        reason: String,
    },
}

/// A joined LiveKit room. Dropping it leaves the room.
#[derive(Debug)]
pub struct Room {
    cmd: mpsc::Sender<Command>,
    identity: String,
    sid: String,
    locals: [std::net::SocketAddr; 2],
    present: Vec<Present>,
}

/// A participant that was in the room when we joined it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Present {
    /// Its identity.
    pub identity: String,
    /// When it joined the room, by the LiveKit node's clock (milliseconds since the Unix
    /// epoch; 0 when the server did not say).
    pub joined_at_ms: i64,
}

impl Room {
    /// Joins the room at `url` (`ws://…`) with a LiveKit access token.
    ///
    /// # Errors
    /// [`Error::Refused`] for a bad token, [`Error::Signal`] if the server is unreachable,
    /// [`Error::Media`] / [`Error::Timeout`] if the media connection does not come up.
    pub async fn connect(
        url: &str,
        token: &str,
        options: RoomOptions,
    ) -> Result<(Room, mpsc::Receiver<RoomEvent>), Error> {
        let (events_tx, events_rx) = mpsc::channel(1024);
        let (cmd_tx, cmd_rx) = mpsc::channel(256);
        let started = Engine::start(url, token, options, events_tx).await?;
        tokio::spawn(started.engine.run(cmd_rx));
        Ok((
            Room {
                cmd: cmd_tx,
                identity: started.identity,
                sid: started.sid,
                locals: started.locals,
                present: started.present,
            },
            events_rx,
        ))
    }

    /// Our identity in the room.
    pub fn identity(&self) -> &str {
        &self.identity
    }

    /// The other participants the room held when we joined it (each is also reported as a
    /// [`RoomEvent::ParticipantJoined`]): what a caller decides on before its first publish.
    pub fn present_at_join(&self) -> &[Present] {
        &self.present
    }

    /// Our participant sid (`PA_…`).
    pub fn sid(&self) -> &str {
        &self.sid
    }

    /// The local UDP addresses of the subscriber and publisher peer connections (kept for
    /// the room's life, across resumes and full reconnects): what a firewall rule matches.
    pub fn media_addrs(&self) -> [std::net::SocketAddr; 2] {
        self.locals
    }

    /// Publishes a microphone track (Opus, 48 kHz mono, 20 ms frames), encrypted when E2EE is on.
    ///
    /// # Errors
    /// [`Error::Timeout`] if the server does not confirm the track, [`Error::Closed`].
    pub async fn publish_audio(&self, name: &str) -> Result<AudioSource, Error> {
        let (tx, rx) = oneshot::channel();
        let cmd = Command::PublishAudio {
            name: name.to_owned(),
            reply: tx,
        };
        self.request(cmd, rx).await?;
        Ok(AudioSource {
            cmd: self.cmd.clone(),
        })
    }

    /// Publishes a camera track carrying VP8 frames the caller encodes (`width` x `height`),
    /// encrypted when E2EE is on.
    ///
    /// # Errors
    /// [`Error::Timeout`] if the server does not confirm the track, [`Error::Closed`].
    pub async fn publish_video(
        &self,
        name: &str,
        width: u32,
        height: u32,
    ) -> Result<VideoSource, Error> {
        let (tx, rx) = oneshot::channel();
        let cmd = Command::PublishVideo {
            name: name.to_owned(),
            width,
            height,
            reply: tx,
        };
        self.request(cmd, rx).await?;
        Ok(VideoSource {
            cmd: self.cmd.clone(),
        })
    }

    /// Asks the sender of remote video track `track_sid` for a key frame (RTCP PLI).
    ///
    /// # Errors
    /// [`Error::Closed`].
    pub async fn request_keyframe(&self, track_sid: &str) -> Result<(), Error> {
        self.cmd
            .send(Command::RequestKeyframe {
                track_sid: track_sid.to_owned(),
            })
            .await
            .map_err(|_| Error::Closed)
    }

    /// Sends a reliable data message (`DataPacket.user` on the `_reliable` channel) to the
    /// room, encrypted with the room key as `encrypted_packet` when E2EE is on, as current
    /// LiveKit SDKs do. Returns once it is handed to the channel (the first message opens the
    /// publisher connection's data channels if no track did).
    ///
    /// # Errors
    /// [`Error::Timeout`] if the channel does not open, [`Error::Media`] when the channel's
    /// buffer is full, [`Error::Closed`].
    pub async fn send_data(&self, payload: &[u8], topic: Option<&str>) -> Result<(), Error> {
        let (tx, rx) = oneshot::channel();
        let cmd = Command::SendData {
            payload: payload.to_vec(),
            topic: topic.map(str::to_owned),
            reply: tx,
        };
        self.request(cmd, rx).await
    }

    /// Opens the publisher connection now, with only its data channels, if no track or data
    /// has opened it yet; returns at once. A track published later is then one quick
    /// renegotiation on a connection that is already up, instead of ICE, DTLS and SCTP on a
    /// new one.
    ///
    /// # Errors
    /// [`Error::Closed`].
    pub async fn connect_publisher(&self) -> Result<(), Error> {
        self.cmd
            .send(Command::ConnectPublisher)
            .await
            .map_err(|_| Error::Closed)
    }

    /// Ratchets our sending key one step (LiveKit's `ratchetKey` on the current key index):
    /// frames sent from now on use the ratcheted key, and receivers follow with their
    /// bounded auto-ratchet.
    ///
    /// # Errors
    /// [`Error::NoE2ee`], [`Error::Crypto`] when the slot is empty, [`Error::Closed`].
    pub async fn ratchet_key(&self) -> Result<(), Error> {
        let (tx, rx) = oneshot::channel();
        self.request(Command::RatchetKey { reply: tx }, rx).await
    }

    /// Puts new shared key material into key index `index` for every participant (ours and
    /// each sender's keyring: LiveKit's shared-key `setKey`). HKDF reads raw bytes, PBKDF2 a
    /// string's UTF-8 bytes. Use [`Room::set_key_index`] to send with it.
    ///
    /// # Errors
    /// [`Error::NoE2ee`], [`Error::Crypto`] for an index outside the keyring, [`Error::Closed`].
    pub async fn set_key(
        &self,
        index: u8,
        kdf: KeyDerivation,
        material: Zeroizing<Vec<u8>>,
    ) -> Result<(), Error> {
        let (tx, rx) = oneshot::channel();
        self.request(
            Command::SetKey {
                index,
                kdf,
                material,
                reply: tx,
            },
            rx,
        )
        .await
    }

    /// Sends with the key at `index` from now on.
    ///
    /// # Errors
    /// [`Error::NoE2ee`], [`Error::Crypto`] when that slot is empty, [`Error::Closed`].
    pub async fn set_key_index(&self, index: u8) -> Result<(), Error> {
        let (tx, rx) = oneshot::channel();
        self.request(Command::SetKeyIndex { index, reply: tx }, rx)
            .await
    }

    async fn request(
        &self,
        cmd: Command,
        rx: oneshot::Receiver<Result<(), Error>>,
    ) -> Result<(), Error> {
        self.cmd.send(cmd).await.map_err(|_| Error::Closed)?;
        rx.await.map_err(|_| Error::Closed)?
    }

    /// Leaves the room and waits until the leave is sent.
    pub async fn leave(self) {
        let (tx, rx) = oneshot::channel();
        if self.cmd.send(Command::Leave { reply: tx }).await.is_ok() {
            let _ = rx.await;
        }
    }
}

/// Pushes microphone PCM into a published audio track.
#[derive(Debug, Clone)]
pub struct AudioSource {
    cmd: mpsc::Sender<Command>,
}

impl AudioSource {
    /// Sends one 20 ms frame: exactly 960 mono samples at 48 kHz. Call it every 20 ms.
    ///
    /// # Errors
    /// [`Error::Codec`] for a wrong frame size, [`Error::Closed`].
    pub async fn push_pcm(&self, pcm: &[i16]) -> Result<(), Error> {
        if pcm.len() != AUDIO_FRAME_SAMPLES {
            return Err(Error::Codec(format!(
                "an audio frame is {AUDIO_FRAME_SAMPLES} samples, got {}",
                pcm.len()
            )));
        }
        self.cmd
            .send(Command::AudioFrame(pcm.to_vec()))
            .await
            .map_err(|_| Error::Closed)
    }

    /// Plays `pcm` in real time: one 20 ms frame every 20 ms until it is used up (a trailing
    /// partial frame is not sent).
    ///
    /// # Errors
    /// [`Error::Closed`] when the room goes away first.
    pub async fn play(&self, pcm: &[i16]) -> Result<(), Error> {
        let mut tick = tokio::time::interval(std::time::Duration::from_millis(20));
        for frame in pcm.chunks_exact(AUDIO_FRAME_SAMPLES) {
            tick.tick().await;
            self.push_pcm(frame).await?;
        }
        Ok(())
    }
}

/// Pushes encoded VP8 frames into a published video track.
#[derive(Debug, Clone)]
pub struct VideoSource {
    cmd: mpsc::Sender<Command>,
}

impl VideoSource {
    /// Sends one encoded VP8 frame captured at `capture_ms` (milliseconds on the caller's
    /// clock; it becomes the 90 kHz RTP timestamp).
    ///
    /// # Errors
    /// [`Error::Codec`] for an empty frame, [`Error::Closed`].
    pub async fn push_vp8(&self, frame: &[u8], capture_ms: u64) -> Result<(), Error> {
        if frame.is_empty() {
            return Err(Error::Codec("an empty VP8 frame".into()));
        }
        self.cmd
            .send(Command::VideoFrame {
                vp8: frame.to_vec(),
                capture_ms,
            })
            .await
            .map_err(|_| Error::Closed)
    }
}

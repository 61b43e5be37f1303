//! `oracle-calls call` and `oracle-calls calls`: the user's side from the command line.

use std::path::PathBuf;
use std::time::Duration;

use crate::call_audio::CallAudioArgs;
use crate::ivf as crate_ivf;
use crate::wav;
use anyhow::{Context as _, bail};
use clap::Args;
use oracle_calls_client::{
    CallEvent, ClientConfig, DirectoryPublicKey, KtConfig, Login, OracleClient, TrustOverride,
};
use oracle_calls_proto::{CallStatus, CallType, Did, ListCallsQuery};
use zeroize::Zeroizing;

/// The person's Matrix login: one device, kept in the state directory, shared by oracle and
/// person-to-person calls.
#[derive(Args, Debug)]
pub struct LoginArgs {
    /// The Matrix homeserver.
    #[arg(
        long,
        env = "ORACLE_CALLS_HOMESERVER",
        default_value = "http://127.0.0.1:18008"
    )]
    pub(crate) homeserver: String,
    /// Matrix user (localpart or full id). The password, needed for the first login only,
    /// comes from ORACLE_CALLS_MATRIX_PASSWORD or the file in ORACLE_CALLS_MATRIX_PASSWORD_FILE.
    #[arg(long, env = "ORACLE_CALLS_USER")]
    pub(crate) user: String,
    /// The client's state directory (Matrix device, pinned oracle keys and people's devices).
    #[arg(
        long,
        env = "ORACLE_CALLS_STATE",
        default_value = ".oracle-calls-client"
    )]
    pub(crate) state: PathBuf,
}

impl LoginArgs {
    /// This user's store directory.
    pub(crate) fn store_dir(&self) -> PathBuf {
        self.state.join(&self.user)
    }

    /// A password login when a password is configured, else the saved session.
    pub(crate) fn login(&self) -> anyhow::Result<Login> {
        let password = match (
            std::env::var("ORACLE_CALLS_MATRIX_PASSWORD").ok(),
            std::env::var("ORACLE_CALLS_MATRIX_PASSWORD_FILE").ok(),
        ) {
            (Some(p), _) => Some(Zeroizing::new(p)),
            (None, Some(f)) => Some(Zeroizing::new(
                std::fs::read_to_string(&f)
                    .with_context(|| format!("reading {f}"))?
                    .trim_end_matches('\n')
                    .to_owned(),
            )),
            (None, None) => None,
        };
        Ok(match password {
            Some(password) => Login::Password {
                user: self.user.clone(),
                password,
            },
            None => Login::Restore,
        })
    }
}

/// Who the user is and where the servers are.
#[derive(Args, Debug)]
pub struct UserArgs {
    #[command(flatten)]
    pub(crate) login: LoginArgs,
    /// The oracle to call (its DID), for oracle calls. You choose it; its server must describe
    /// exactly this oracle, and what the client verified about it is kept in the state
    /// directory.
    #[arg(long, env = "ORACLE_CALLS_ORACLE")]
    oracle: Option<Did>,
    /// The oracle's oracle-calls server (https://, or http:// on loopback only).
    #[arg(
        long,
        env = "ORACLE_CALLS_SERVER_URL",
        default_value = "http://127.0.0.1:18080"
    )]
    pub(crate) server: String,
    /// Accept exactly this new oracle key id when the oracle's key changed (after verifying
    /// the change out of band; the refusal names the new id).
    #[arg(long, value_name = "KEY_ID")]
    accept_oracle_key: Option<String>,
    /// Accept exactly the bot device with this Ed25519 key when the oracle's bot device (or
    /// bot) changed, or when a new one appears next to the pinned ones (another server of the
    /// oracle), after verifying it; the refusal or the warning names it.
    #[arg(long, value_name = "ED25519")]
    accept_bot_device: Option<String>,
    /// Accept exactly this new prekey signing key when the oracle's changed (after verifying
    /// it; the refusal names it), or `none` for an oracle that stopped offering prekeys (its
    /// calls then have no forward secrecy).
    #[arg(long, value_name = "ED25519")]
    accept_prekey_signing_key: Option<String>,
    #[command(flatten)]
    pub(crate) kt: KtArgs,
}

/// The key-transparency directory, for oracle and person-to-person calls.
#[derive(Args, Debug)]
pub struct KtArgs {
    /// A key-transparency directory (`oracle-calls kt serve`, https:// or loopback). An
    /// oracle's key, bot and bot devices must be what its verified record says; in a call
    /// between people, this device is published in your record and the other person's device
    /// must be listed in theirs.
    #[arg(long, env = "ORACLE_CALLS_KT_URL", requires = "kt_public_key")]
    kt_url: Option<String>,
    /// The directory's public key JSON (`kt keygen` prints it), obtained out of band.
    #[arg(long, env = "ORACLE_CALLS_KT_PUBLIC_KEY", requires = "kt_url")]
    kt_public_key: Option<PathBuf>,
}

impl KtArgs {
    /// The directory to use, if one is named.
    pub(crate) fn config(&self) -> anyhow::Result<Option<KtConfig>> {
        let (Some(url), Some(path)) = (&self.kt_url, &self.kt_public_key) else {
            return Ok(None);
        };
        let text = std::fs::read(path).with_context(|| format!("reading {}", path.display()))?;
        let directory_key: DirectoryPublicKey = serde_json::from_slice(&text)
            .with_context(|| format!("{} is not a directory public key", path.display()))?;
        Ok(Some(KtConfig {
            url: url.clone(),
            directory_key,
        }))
    }
}

impl UserArgs {
    fn oracle(&self) -> anyhow::Result<&Did> {
        self.oracle
            .as_ref()
            .context("an oracle call needs --oracle (or ORACLE_CALLS_ORACLE); to call a person, name them: `call @bob:example.org`")
    }

    async fn connect(&self) -> anyhow::Result<OracleClient> {
        let mut cfg = ClientConfig::new(
            &self.login.homeserver,
            &self.server,
            self.login.store_dir(),
            self.oracle()?.clone(),
        );
        cfg.key_transparency = self.kt.config()?;
        cfg.trust_override = TrustOverride {
            oracle_key: self.accept_oracle_key.clone(),
            bot_device: self.accept_bot_device.clone(),
            prekey_signing_key: self.accept_prekey_signing_key.clone(),
        };
        Ok(OracleClient::connect(cfg, self.login.login()?).await?)
    }
}

/// `oracle-calls call`.
#[derive(Args, Debug)]
pub struct CallArgs {
    /// The person to call (`@bob:example.org`), on the computer's microphone and speaker
    /// (`--mic`, `--speaker`). Without it, the command calls the oracle named by `--oracle`.
    #[arg(value_name = "@USER:SERVER")]
    pub(crate) peer: Option<String>,
    #[command(flatten)]
    pub(crate) user: UserArgs,
    #[command(flatten)]
    pub(crate) audio: CallAudioArgs,
    /// Person-to-person calls only: offer only TURN relay candidates, so that the other side
    /// never learns this computer's address (the homeserver must offer TURN).
    #[arg(long, requires = "peer")]
    pub(crate) relay_only: bool,
    #[command(flatten)]
    pub(crate) devices: crate::direct_cmd::DeviceTrustArgs,
    /// Oracle calls: audio or video.
    #[arg(long = "type", default_value = "audio", conflicts_with = "peer")]
    call_type: String,
    /// Oracle calls: 48 kHz 16-bit WAV to say (silence if absent).
    #[arg(long, conflicts_with = "peer")]
    input: Option<PathBuf>,
    /// Oracle calls: where to write what the oracle says (48 kHz mono WAV).
    #[arg(long, conflicts_with = "peer")]
    output: Option<PathBuf>,
    /// For `--type video`: a VP8 IVF file (320x240, e.g. from ffmpeg's libvpx) to show, looped
    /// at 15 frames per second.
    #[arg(long, conflicts_with = "peer")]
    video_input: Option<PathBuf>,
    /// For `--type video`: where to write the oracle's video (VP8 IVF).
    #[arg(long, conflicts_with = "peer")]
    video_output: Option<PathBuf>,
    /// How long the call lasts, then hang up. An oracle call lasts 10 s unless told; a
    /// person-to-person call lasts until either side hangs up (Ctrl-C here).
    #[arg(long)]
    pub(crate) seconds: Option<u64>,
}

pub fn call(args: CallArgs) -> anyhow::Result<()> {
    if args.peer.is_some() {
        return crate::direct_cmd::call(args);
    }
    let rt = tokio::runtime::Runtime::new()?;
    rt.block_on(async move {
        let call_type: CallType = match args.call_type.as_str() {
            "audio" => CallType::Audio,
            "video" => CallType::Video,
            other => bail!("unknown call type `{other}`; expected audio or video"),
        };
        let input = match &args.input {
            Some(p) => wav::read(p)?,
            None => Vec::new(),
        };
        let clip = match (&args.video_input, call_type) {
            (Some(p), CallType::Video) => {
                let bytes = std::fs::read(p).with_context(|| format!("reading {}", p.display()))?;
                let clip = crate_ivf::parse(&bytes).with_context(|| format!("in {}", p.display()))?;
                if !clip.frames.first().is_some_and(|f| crate_ivf::is_keyframe(f)) {
                    bail!("{} must start with a key frame", p.display());
                }
                Some(clip)
            }
            (None, CallType::Video) => bail!("a video call needs --video-input (VP8 IVF, 320x240); this command has no video encoder"),
            (Some(_), _) => bail!("--video-input is for --type video"),
            _ => None,
        };
        let client = args.user.connect().await?;
        eprintln!("calling {} at {} …", args.user.oracle()?, args.user.server);
        let mut call = client.call_oracle(call_type).await?;
        eprintln!("call {} is up", call.id());
        for (p, at) in call.timeline().marks() {
            eprintln!("  {:<24} +{} ms", p.as_str(), at.as_millis());
        }
        if let Some(at) = call.timeline().joined_early_at() {
            eprintln!(
                "  (joined LiveKit early, beside the send and the sync: +{} ms)",
                at.as_millis()
            );
        }
        let mic = call.microphone();
        let seconds = args.seconds.unwrap_or(10);
        // The input, cut or padded with silence to the call's length.
        let mut said = input;
        said.resize(usize::try_from(seconds).unwrap_or(usize::MAX).saturating_mul(48_000), 0);
        let speaker = tokio::spawn(async move { mic.play(&said).await });
        let (restart_tx, mut restart) = tokio::sync::mpsc::channel::<()>(4);
        let shower = match (call.camera(), clip) {
            (Some(camera), Some(clip)) => Some(tokio::spawn(async move {
                let start = std::time::Instant::now();
                let mut tick = tokio::time::interval(Duration::from_millis(1000 / 15));
                let mut i = 0usize;
                loop {
                    tick.tick().await;
                    if restart.try_recv().is_ok() {
                        i = 0;
                    }
                    let Some(frame) = clip.frames.get(i % clip.frames.len().max(1)) else { return };
                    let ms = u64::try_from(start.elapsed().as_millis()).unwrap_or(u64::MAX);
                    if camera.push_vp8(frame, ms).await.is_err() {
                        return;
                    }
                    i += 1;
                }
            })),
            _ => None,
        };
        let mut seen: Vec<Vec<u8>> = Vec::new();
        let mut heard: Vec<i16> = Vec::new();
        let mut last_progress = 0u64;
        let deadline = tokio::time::Instant::now() + Duration::from_secs(seconds);
        let mut ended_early = None;
        loop {
            match tokio::time::timeout_at(deadline, call.next_event()).await {
                Ok(Some(CallEvent::OracleAudio { pcm })) => heard.extend(pcm),
                Ok(Some(CallEvent::OracleVideo { vp8, .. })) => seen.push(vp8),
                Ok(Some(CallEvent::KeyframeRequested)) => {
                    let _ = restart_tx.try_send(());
                }
                Ok(Some(CallEvent::OracleJoined { identity })) => eprintln!("the oracle joined ({identity})"),
                Ok(Some(CallEvent::OracleLeft { identity })) => eprintln!("the oracle left ({identity})"),
                Ok(Some(CallEvent::UnexpectedParticipant { identity })) => {
                    eprintln!("warning: {identity}, who is not the oracle's agent, joined the call's media room (it has no call key)")
                }
                Ok(Some(CallEvent::Reconnecting { attempt, reason, full })) => {
                    let how = if full { "rejoining" } else { "reconnecting to" };
                    eprintln!("{how} the media server (try {attempt}): {reason}")
                }
                Ok(Some(CallEvent::Reconnected)) => eprintln!("reconnected to the media server"),
                Ok(Some(CallEvent::DecryptionFailed { identity, failures })) => {
                    if failures == 1 || failures.is_multiple_of(100) {
                        eprintln!("warning: {failures} frames from {identity} did not decrypt");
                    }
                }
                Ok(Some(CallEvent::Ended { reason })) => {
                    ended_early = Some(reason);
                    break;
                }
                Ok(Some(_)) => {}
                Ok(None) | Err(_) => break,
            }
            let secs = heard.len() as u64 / 48_000;
            if secs > last_progress {
                last_progress = secs;
                eprintln!("  {secs} s of the oracle's audio received");
            }
        }
        speaker.abort();
        if let Some(s) = shower {
            s.abort();
        }
        call.end().await?;
        if let Some(p) = &args.output {
            wav::write(p, &heard)?;
            eprintln!("wrote {:.1} s of the oracle's audio to {}", heard.len() as f64 / 48_000.0, p.display());
        }
        if let Some(p) = &args.video_output {
            // From the first key frame on: what a player can decode.
            let start = seen.iter().position(|f| crate_ivf::is_keyframe(f)).unwrap_or(seen.len());
            crate_ivf::write(p, 320, 240, 15, seen.get(start..).unwrap_or_default())?;
            eprintln!("wrote {} frames of the oracle's video to {}", seen.len() - start, p.display());
        }
        if let Some(r) = ended_early {
            bail!("the call ended before {seconds} s: {r}");
        }
        println!("{}", call.id());
        Ok(())
    })
}

/// `oracle-calls calls`.
#[derive(Args, Debug)]
pub struct CallsArgs {
    #[command(flatten)]
    user: UserArgs,
    /// Only calls with this status.
    #[arg(long)]
    status: Option<String>,
    /// At most this many.
    #[arg(long, default_value_t = 20)]
    limit: u32,
}

pub fn calls(args: CallsArgs) -> anyhow::Result<()> {
    let rt = tokio::runtime::Runtime::new()?;
    rt.block_on(async move {
        let status: Option<CallStatus> = match &args.status {
            Some(s) => Some(s.parse().map_err(|e| anyhow::anyhow!("--status: {e}"))?),
            None => None,
        };
        let client = args.user.connect().await?;
        let page = client
            .list_calls(&ListCallsQuery {
                cursor: None,
                limit: Some(args.limit),
                status,
                session_id: None,
            })
            .await?;
        for c in &page.calls {
            println!(
                "{}  {:<7} {:<6} {}  {}",
                c.call_started_at,
                c.call_status,
                c.call_type.as_str(),
                c.call_id,
                c.reason.map(|r| format!("{r:?}")).unwrap_or_default()
            );
        }
        if page.calls.is_empty() {
            eprintln!("no calls");
        }
        Ok(())
    })
}

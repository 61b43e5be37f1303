//! The thin tokio driver of [`Core`]: it owns the sockets (the signaling WebSocket and one UDP
//! socket per peer connection), feeds the core what arrives, and does what the core says.

use std::future::Future;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::pin::Pin;
use std::time::{Duration, Instant};

use livekit_protocol as lk;
use lk::signal_response::Message as Resp;
use tokio::net::UdpSocket;
use tokio::sync::mpsc;
use tracing::{debug, info};
use zeroize::Zeroizing;

use crate::Error;
use crate::core::{Command, Core, Output, Side};
use crate::room::{FreshToken, Present, RoomEvent, RoomOptions, TokenError, TokenSource};
use crate::signal::{self, Ws};

/// How long one resume attempt (WebSocket upgrade + the server's `reconnect`) may take.
const RESUME_ATTEMPT_TIMEOUT: Duration = Duration::from_secs(5);
/// How long one fresh join of a full reconnect (token + WebSocket upgrade + `join`) may take.
const REJOIN_ATTEMPT_TIMEOUT: Duration = Duration::from_secs(10);

type Resuming = Pin<Box<dyn Future<Output = Result<(Ws, lk::ReconnectResponse), Error>> + Send>>;
type Rejoining =
    Pin<Box<dyn Future<Output = Result<(Ws, lk::JoinResponse, FreshToken), Error>> + Send>>;

/// The reconnect under way, if any: a resume of the session or a fresh join.
enum Pending {
    Resume(Resuming),
    Rejoin(Rejoining),
}

enum Done {
    Resume(Box<Result<(Ws, lk::ReconnectResponse), Error>>),
    Rejoin(Box<Result<(Ws, lk::JoinResponse, FreshToken), Error>>),
}

/// A started engine and what the join told us.
pub(crate) struct Started {
    pub(crate) engine: Engine,
    pub(crate) identity: String,
    pub(crate) sid: String,
    pub(crate) locals: [SocketAddr; 2],
    pub(crate) present: Vec<Present>,
}

pub(crate) struct Engine {
    core: Core,
    ws: Option<Ws>,
    sub: UdpSocket,
    publ: UdpSocket,
    events: mpsc::Sender<RoomEvent>,
    url: String,
    /// The latest token (the server refreshes it), for resuming.
    token: Zeroizing<String>,
    sid: String,
    token_source: Option<TokenSource>,
}

impl Engine {
    pub(crate) async fn start(
        url: &str,
        token: &str,
        options: RoomOptions,
        events: mpsc::Sender<RoomEvent>,
    ) -> Result<Started, Error> {
        let (ws, join) = signal::connect(url, token).await?;
        let me = join.participant.clone().unwrap_or_default();
        let present = join
            .other_participants
            .iter()
            .filter(|p| p.state != lk::participant_info::State::Disconnected as i32)
            .map(|p| Present {
                identity: p.identity.clone(),
                joined_at_ms: p.joined_at_ms,
            })
            .collect();
        let ip = local_ip_for(url).await;
        let sub = UdpSocket::bind(SocketAddr::new(ip, 0)).await?;
        let publ = UdpSocket::bind(SocketAddr::new(ip, 0)).await?;
        info!(identity = %me.identity, sid = %me.sid, room = %join.room.as_ref().map(|r| r.name.as_str()).unwrap_or(""), "joined");
        let core = Core::new(
            &join,
            options.e2ee.map(|e| e.key_ring),
            options.reconnect,
            options.token_source.is_some(),
            options.opus_complexity,
            sub.local_addr()?,
            publ.local_addr()?,
            Instant::now(),
        )?;
        let engine = Engine {
            core,
            ws: Some(ws),
            sub,
            publ,
            events,
            url: url.to_owned(),
            token: Zeroizing::new(token.to_owned()),
            sid: me.sid.clone(),
            token_source: options.token_source,
        };
        let locals = [engine.sub.local_addr()?, engine.publ.local_addr()?];
        Ok(Started {
            engine,
            identity: me.identity,
            sid: me.sid,
            locals,
            present,
        })
    }

    pub(crate) async fn run(mut self, mut cmds: mpsc::Receiver<Command>) {
        let mut buf_s = vec![0u8; 2000];
        let mut buf_p = vec![0u8; 2000];
        let mut resuming: Option<Pending> = None;
        loop {
            if !self.flush(&mut resuming).await {
                return;
            }
            let deadline = self.core.poll_timeout();
            tokio::select! {
                msg = recv(&mut self.ws) => {
                    let now = Instant::now();
                    match msg {
                        Ok(Some(m)) => {
                            if let Resp::RefreshToken(t) = &m {
                                debug!("token refreshed");
                                self.token = Zeroizing::new(t.clone());
                            }
                            self.core.handle_signal(now, m);
                        }
                        Ok(None) => self.core.signal_lost(now, "the server closed the signaling connection".into()),
                        Err(e) => self.core.signal_lost(now, e.to_string()),
                    }
                }
                r = self.sub.recv_from(&mut buf_s) => match r {
                    Ok((n, from)) => self.core.handle_receive(Instant::now(), Side::Subscriber, from, buf_s.get(..n).unwrap_or_default()),
                    Err(e) => debug!(error = %e, "subscriber socket"),
                },
                r = self.publ.recv_from(&mut buf_p) => match r {
                    Ok((n, from)) => self.core.handle_receive(Instant::now(), Side::Publisher, from, buf_p.get(..n).unwrap_or_default()),
                    Err(e) => debug!(error = %e, "publisher socket"),
                },
                _ = tokio::time::sleep_until(deadline.into()) => self.core.handle_timeout(Instant::now()),
                r = next_resume(&mut resuming) => {
                    resuming = None;
                    let now = Instant::now();
                    match r {
                        Done::Resume(r) => match *r {
                            Ok((ws, response)) => {
                                self.ws = Some(ws);
                                self.core.resumed(now, &response);
                            }
                            Err(e) => self.core.resume_failed(now, &e),
                        },
                        Done::Rejoin(r) => match *r {
                            Ok((ws, join, fresh)) => {
                                let me = join.participant.clone().unwrap_or_default();
                                info!(identity = %me.identity, sid = %me.sid, url = %fresh.url, "joined again");
                                self.ws = Some(ws);
                                self.url = fresh.url;
                                self.token = fresh.token;
                                self.sid = me.sid;
                                if let Err(e) = self.core.rejoined(now, &join) {
                                    self.core.rejoin_failed(now, &e);
                                }
                            }
                            Err(e) => self.core.rejoin_failed(now, &e),
                        },
                    }
                }
                cmd = cmds.recv() => match cmd {
                    Some(c) => self.core.handle_command(Instant::now(), c),
                    None => self.core.handle_dropped(Instant::now()),
                },
            }
        }
    }

    /// Does everything the core asks; false once the room is over.
    async fn flush(&mut self, resuming: &mut Option<Pending>) -> bool {
        while let Some(out) = self.core.poll_output() {
            match out {
                Output::Transmit {
                    side,
                    destination,
                    contents,
                } => {
                    let socket = match side {
                        Side::Subscriber => &self.sub,
                        Side::Publisher => &self.publ,
                    };
                    if let Err(e) = socket.try_send_to(&contents, destination) {
                        debug!(error = %e, "udp send dropped");
                    }
                }
                Output::Signal(req) => {
                    let Some(ws) = self.ws.as_mut() else {
                        // The core only asks while it believes the connection is up.
                        let e = "no signaling connection".to_owned();
                        self.core.signal_send_failed(Instant::now(), *req, e);
                        continue;
                    };
                    if let Err(e) = signal::send(ws, (*req).clone()).await {
                        self.core
                            .signal_send_failed(Instant::now(), *req, e.to_string());
                    }
                }
                Output::Event(ev) => {
                    // Media events never wait for a slow consumer (they are dropped instead);
                    // everything else does.
                    let media = matches!(
                        ev,
                        RoomEvent::AudioFrame { .. }
                            | RoomEvent::VideoFrame { .. }
                            | RoomEvent::DecryptionFailed { .. }
                            | RoomEvent::KeyframeRequested
                    );
                    if media {
                        let _ = self.events.try_send(ev);
                    } else {
                        let _ = self.events.send(ev).await;
                    }
                }
                Output::Reply(reply, result) => {
                    let _ = reply.send(result);
                }
                Output::Resume { attempt, delay } => {
                    self.ws = None;
                    let (url, token, sid) =
                        (self.url.clone(), self.token.clone(), self.sid.clone());
                    info!(
                        attempt,
                        delay_ms = delay.as_millis() as u64,
                        "resuming the signaling connection"
                    );
                    *resuming = Some(Pending::Resume(Box::pin(async move {
                        tokio::time::sleep(delay).await;
                        tokio::time::timeout(
                            RESUME_ATTEMPT_TIMEOUT,
                            signal::reconnect(&url, &token, &sid),
                        )
                        .await
                        .map_err(|_| Error::Timeout("the server to resume the session"))?
                    })));
                }
                Output::Rejoin { attempt, delay } => {
                    // Dropped, not closed: a close could wait on a peer that is gone.
                    self.ws = None;
                    info!(
                        attempt,
                        delay_ms = delay.as_millis() as u64,
                        "rejoining the room with a fresh token"
                    );
                    let source = self.token_source.clone();
                    *resuming = Some(Pending::Rejoin(Box::pin(async move {
                        tokio::time::sleep(delay).await;
                        let source =
                            source.ok_or_else(|| Error::Token("no token source".into()))?;
                        let attempt = async {
                            let fresh = source.fetch().await.map_err(|e| match e {
                                TokenError::Refused(why) => Error::Token(why),
                                TokenError::Unavailable(why) => Error::TokenUnavailable(why),
                            })?;
                            let (ws, join) = signal::connect(&fresh.url, &fresh.token).await?;
                            Ok::<_, Error>((ws, join, fresh))
                        };
                        tokio::time::timeout(REJOIN_ATTEMPT_TIMEOUT, attempt)
                            .await
                            .map_err(|_| Error::Timeout("a fresh join"))?
                    })));
                }
                Output::Closed => {
                    if let Some(mut ws) = self.ws.take() {
                        let _ = futures_util::SinkExt::close(&mut ws).await;
                    }
                    return false;
                }
            }
        }
        true
    }
}

/// The next signaling message, or pending forever without a connection.
async fn recv(ws: &mut Option<Ws>) -> Result<Option<Resp>, Error> {
    match ws {
        Some(ws) => signal::recv(ws).await,
        None => std::future::pending().await,
    }
}

/// The outcome of the resume or rejoin attempt under way, or pending forever without one.
async fn next_resume(resuming: &mut Option<Pending>) -> Done {
    match resuming {
        Some(Pending::Resume(f)) => Done::Resume(Box::new(f.as_mut().await)),
        Some(Pending::Rejoin(f)) => Done::Rejoin(Box::new(f.as_mut().await)),
        None => std::future::pending().await,
    }
}

/// The local address that routes to the server: loopback for a loopback server, otherwise
/// the source address the OS picks for it.
async fn local_ip_for(url: &str) -> IpAddr {
    let host = url
        .split("://")
        .nth(1)
        .and_then(|r| r.split(['/', '?']).next())
        .map(|hp| {
            hp.rsplit_once(':')
                .map(|(h, _)| h)
                .unwrap_or(hp)
                .trim_matches(['[', ']'])
        })
        .unwrap_or("127.0.0.1")
        .to_owned();
    let target = tokio::net::lookup_host((host.as_str(), 9))
        .await
        .ok()
        .and_then(|mut a| a.next());
    let Some(target) = target else {
        return IpAddr::V4(Ipv4Addr::LOCALHOST);
    };
    if target.ip().is_loopback() {
        return target.ip();
    }
    match std::net::UdpSocket::bind("0.0.0.0:0")
        .and_then(|s| s.connect(target).and_then(|()| s.local_addr()))
    {
        Ok(a) => a.ip(),
        Err(_) => IpAddr::V4(Ipv4Addr::LOCALHOST),
    }
}

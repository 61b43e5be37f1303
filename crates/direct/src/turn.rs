//! A TURN relay allocation (RFC 8656, UDP) for one call, sans-IO.
//!
//! [`TurnAllocation`] is the client side of one allocation on a TURN server: it allocates with
//! long-term credentials (the 401 realm/nonce exchange, 438 stale-nonce retries), keeps the
//! allocation alive with Refresh, installs permissions (CreatePermission) and channels
//! (ChannelBind) for peers, wraps outgoing datagrams in ChannelData (or a Send indication until
//! the channel is bound), unwraps what the server relays back, and deletes the allocation
//! (Refresh with lifetime 0) on [`TurnAllocation::release`]. It reads no clock and owns no
//! socket: the driver feeds it datagrams from the TURN server and the time, and sends what
//! [`TurnAllocation::poll_transmit`] returns, like str0m's `Rtc`.
//!
//! The credentials come from the homeserver's `/voip/turnServer` ([`TurnServers`]).
//!
//! ```no_run
//! # use std::time::Instant;
//! # use oracle_calls_direct::turn::{Incoming, TurnAllocation, TurnConfig};
//! # fn demo(socket: &std::net::UdpSocket) -> Result<(), Box<dyn std::error::Error>> {
//! let local = socket.local_addr()?;
//! let server = "127.0.0.1:3478".parse()?;
//! let mut turn = TurnAllocation::new(local, server, "1796470899:@a:localhost", "pw",
//!     TurnConfig::default(), Instant::now())?;
//! let mut buf = [0u8; 2048];
//! while turn.relayed_addr().is_none() {
//!     while let Some(t) = turn.poll_transmit(Instant::now()) {
//!         socket.send_to(&t.contents, t.destination)?;
//!     }
//!     let (n, from) = socket.recv_from(&mut buf)?;
//!     if let Incoming::Data { peer, bytes } = turn.handle_incoming(from, &buf[..n], Instant::now()) {
//!         println!("{} bytes from {peer}", bytes.len());
//!     }
//! }
//! # Ok(()) }
//! ```

mod server;

use std::collections::VecDeque;
use std::fmt;
use std::net::{IpAddr, SocketAddr};
use std::time::{Duration, Instant};

use turn_types::attribute::{
    ChannelNumber, Data as DataAttribute, Lifetime, RequestedTransport, XorPeerAddress,
    XorRelayedAddress,
};
use turn_types::message::{ALLOCATE, CHANNEL_BIND, CREATE_PERMISSION, DATA, REFRESH, SEND};
use turn_types::stun::attribute::{ErrorCode, Nonce, Realm, Username, XorMappedAddress};
use turn_types::stun::message::{
    IntegrityAlgorithm, LongTermKeyCredentials, Message, MessageClass, MessageIntegrityCredentials,
    MessageType, MessageWrite, MessageWriteExt, MessageWriteVec, Method, TransactionId,
};
use zeroize::Zeroizing;

pub use server::{TurnServerError, TurnServers, TurnUri, UriError};

/// Timers of an allocation. The defaults follow RFC 8656; tests shorten them to match a TURN
/// server started with short lifetimes.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct TurnConfig {
    /// LIFETIME asked for in Allocate and each Refresh; the server grants at most its own
    /// maximum. `None`: the server's default (10 minutes by the RFC).
    pub requested_lifetime: Option<Duration>,
    /// How often a permission is renewed (permissions last 300 s on the server).
    pub permission_refresh: Duration,
    /// How often a channel binding is renewed (bindings last 600 s on the server).
    pub channel_refresh: Duration,
}

impl Default for TurnConfig {
    fn default() -> Self {
        Self {
            requested_lifetime: None,
            permission_refresh: Duration::from_secs(240),
            channel_refresh: Duration::from_secs(540),
        }
    }
}

impl TurnConfig {
    /// The defaults with `lifetime` asked for in Allocate and Refresh.
    #[must_use]
    pub fn with_requested_lifetime(mut self, lifetime: Duration) -> Self {
        self.requested_lifetime = Some(lifetime);
        self
    }

    /// The defaults with other permission and channel renewal periods.
    #[must_use]
    pub fn with_refresh_periods(mut self, permission: Duration, channel: Duration) -> Self {
        self.permission_refresh = permission;
        self.channel_refresh = channel;
        self
    }
}

/// What went wrong with an allocation, and whose fault it was.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum TurnError {
    /// The caller's credentials cannot be used (empty, or too long for STUN).
    #[error("the TURN credentials are unusable (empty or longer than STUN allows)")]
    InvalidCredentials,
    /// The server refused the credentials (401 to an authenticated request): a wrong password,
    /// or a TURN REST username whose expiry has passed.
    #[error("the TURN server refused the credentials (error {code})")]
    Unauthorized {
        /// The STUN error code (401 or 441).
        code: u16,
    },
    /// The server answered a request with an error.
    #[error("the TURN server refused {request} (error {code})")]
    Rejected {
        /// Which request.
        request: &'static str,
        /// The STUN error code.
        code: u16,
    },
    /// The server did not answer a request after every retransmission.
    #[error("the TURN server did not answer {request}")]
    Timeout {
        /// Which request.
        request: &'static str,
    },
    /// The allocation expired on the server before a refresh succeeded.
    #[error("the TURN allocation expired")]
    AllocationExpired,
    /// The server does not know this allocation any more (437 Allocation Mismatch).
    #[error("the TURN server no longer has this allocation")]
    AllocationMismatch,
    /// The server's answer lacked what the RFC requires (no relayed address, no lifetime, ...).
    #[error("the TURN server sent a malformed {request} response")]
    MalformedResponse {
        /// Which request.
        request: &'static str,
    },
    /// Caller misuse: sending before the allocation exists or after it ended.
    #[error("no TURN allocation to send through (state {state})")]
    NotAllocated {
        /// The state the allocation was in.
        state: &'static str,
    },
    /// Caller misuse: sending to a peer whose IP has no permission ([`TurnAllocation::add_permission`]).
    #[error("no TURN permission for the peer's address")]
    NoPermission,
}

/// Where the allocation is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AllocationState {
    /// Allocate sent; no relayed address yet.
    Allocating,
    /// The relayed address exists and is kept alive.
    Allocated,
    /// Refresh with lifetime 0 sent; waiting for the server to confirm.
    Releasing,
    /// Deleted on the server (or never created): nothing left to do.
    Released,
    /// Over, with why.
    Failed(TurnError),
}

impl AllocationState {
    fn name(&self) -> &'static str {
        match self {
            Self::Allocating => "allocating",
            Self::Allocated => "allocated",
            Self::Releasing => "releasing",
            Self::Released => "released",
            Self::Failed(_) => "failed",
        }
    }
}

/// A datagram to send from the allocation's local socket to the TURN server.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Transmit {
    /// The local address the allocation was made from.
    pub source: SocketAddr,
    /// The TURN server.
    pub destination: SocketAddr,
    /// The datagram.
    pub contents: Vec<u8>,
}

/// What a datagram handed to [`TurnAllocation::handle_incoming`] was.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Incoming {
    /// Data a peer sent to the relayed address.
    Data {
        /// The peer (its address as the TURN server saw it).
        peer: SocketAddr,
        /// What it sent.
        bytes: Vec<u8>,
    },
    /// A TURN control message (or relayed data for no known channel); nothing for the caller.
    Consumed,
    /// Not from this allocation's server, or not TURN: the caller handles it (e.g. str0m).
    NotTurn,
}

/// What happened, for the driver and for logs.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum TurnEvent {
    /// The allocation exists.
    Allocated {
        /// The relayed transport address (a relay candidate).
        relayed: SocketAddr,
        /// Our address as the server saw it (a server-reflexive candidate), when sent.
        mapped: Option<SocketAddr>,
        /// Granted lifetime.
        lifetime: Duration,
    },
    /// A refresh succeeded.
    Refreshed {
        /// Granted lifetime.
        lifetime: Duration,
    },
    /// A permission for this peer IP is installed (or renewed).
    PermissionCreated(IpAddr),
    /// The server refused a permission.
    PermissionFailed(IpAddr),
    /// A channel to this peer is bound (or renewed): data now travels as ChannelData.
    ChannelBound(SocketAddr),
    /// The server refused a channel binding; data keeps going as Send indications.
    ChannelFailed(SocketAddr),
    /// The allocation is deleted.
    Released,
    /// The allocation failed.
    Failed(TurnError),
}

/// One allocation on one TURN server, over UDP. See the module docs.
pub struct TurnAllocation {
    local: SocketAddr,
    server: SocketAddr,
    username: String,
    password: Zeroizing<String>,
    realm: Option<String>,
    nonce: Option<String>,
    config: TurnConfig,
    state: AllocationState,
    relayed: Option<SocketAddr>,
    mapped: Option<SocketAddr>,
    expires_at: Option<Instant>,
    refresh_at: Option<Instant>,
    permissions: Vec<Permission>,
    channels: Vec<Channel>,
    next_channel: u16,
    pending: Vec<Pending>,
    stale_nonces: u32,
    queue: VecDeque<Vec<u8>>,
    events: VecDeque<TurnEvent>,
}

impl fmt::Debug for TurnAllocation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TurnAllocation")
            .field("server", &self.server)
            .field("state", &self.state)
            .field("relayed", &self.relayed)
            .field("password", &"..")
            .finish_non_exhaustive()
    }
}

/// First retransmission timeout (RFC 8489 §6.2.1).
const RTO: Duration = Duration::from_millis(500);
/// Requests sent at most this often (Rc).
const MAX_SENDS: u32 = 7;
/// Wait after the last send before giving up (Rm × RTO).
const LAST_WAIT: Duration = Duration::from_secs(8);
/// Consecutive 438 Stale Nonce answers tolerated.
const MAX_STALE_NONCES: u32 = 4;
/// Channel numbers (RFC 8656 §12).
const FIRST_CHANNEL: u16 = 0x4000;
const LAST_CHANNEL: u16 = 0x4FFF;

#[derive(Debug)]
struct Permission {
    ip: IpAddr,
    refresh_at: Option<Instant>,
}

#[derive(Debug)]
struct Channel {
    number: u16,
    peer: SocketAddr,
    bound: bool,
    refresh_at: Option<Instant>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Request {
    Allocate,
    Refresh { seconds: u32 },
    Permission(IpAddr),
    ChannelBind { number: u16, peer: SocketAddr },
}

impl Request {
    fn name(self) -> &'static str {
        match self {
            Self::Allocate => "Allocate",
            Self::Refresh { seconds: 0 } => "Refresh (delete)",
            Self::Refresh { .. } => "Refresh",
            Self::Permission(_) => "CreatePermission",
            Self::ChannelBind { .. } => "ChannelBind",
        }
    }
}

#[derive(Debug)]
struct Pending {
    id: TransactionId,
    request: Request,
    bytes: Vec<u8>,
    authenticated: bool,
    sends: u32,
    next_at: Instant,
    rto: Duration,
}

impl TurnAllocation {
    /// Starts an allocation from `local` on `server` with long-term credentials (for TURN REST
    /// credentials: the `username` and `password` of [`TurnServers`]). The first Allocate is
    /// ready in [`poll_transmit`](Self::poll_transmit).
    ///
    /// # Errors
    /// [`TurnError::InvalidCredentials`] when the username or password is empty or too long.
    ///
    /// # Security
    /// The password is held zeroized on drop, but the STUN codec derives the long-term key
    /// (MD5 of `username:realm:password`) into buffers of its own for each signed message.
    pub fn new(
        local: SocketAddr,
        server: SocketAddr,
        username: &str,
        password: &str,
        config: TurnConfig,
        now: Instant,
    ) -> Result<Self, TurnError> {
        if username.is_empty() || password.is_empty() || Username::new(username).is_err() {
            return Err(TurnError::InvalidCredentials);
        }
        let mut turn = Self {
            local,
            server,
            username: username.to_owned(),
            password: Zeroizing::new(password.to_owned()),
            realm: None,
            nonce: None,
            config,
            state: AllocationState::Allocating,
            relayed: None,
            mapped: None,
            expires_at: None,
            refresh_at: None,
            permissions: Vec::new(),
            channels: Vec::new(),
            next_channel: FIRST_CHANNEL,
            pending: Vec::new(),
            stale_nonces: 0,
            queue: VecDeque::new(),
            events: VecDeque::new(),
        };
        turn.send_request(Request::Allocate, now);
        Ok(turn)
    }

    /// Where the allocation is.
    #[must_use]
    pub fn state(&self) -> &AllocationState {
        &self.state
    }

    /// The relayed transport address (the relay candidate), once allocated.
    #[must_use]
    pub fn relayed_addr(&self) -> Option<SocketAddr> {
        self.relayed
            .filter(|_| self.state == AllocationState::Allocated)
    }

    /// Our address as the TURN server saw it (a server-reflexive candidate), once allocated.
    #[must_use]
    pub fn mapped_addr(&self) -> Option<SocketAddr> {
        self.mapped
    }

    /// The TURN server.
    #[must_use]
    pub fn server_addr(&self) -> SocketAddr {
        self.server
    }

    /// The local address the allocation is made from.
    #[must_use]
    pub fn local_addr(&self) -> SocketAddr {
        self.local
    }

    /// When the allocation expires on the server unless refreshed.
    #[must_use]
    pub fn expires_at(&self) -> Option<Instant> {
        self.expires_at
    }

    /// Lets `peer_ip` send to the relayed address and receive from it (CreatePermission, renewed
    /// while the allocation lives). Before the allocation exists it is installed once it does.
    /// Adding an IP twice does nothing.
    pub fn add_permission(&mut self, peer_ip: IpAddr, now: Instant) {
        if self.permissions.iter().any(|p| p.ip == peer_ip) {
            return;
        }
        self.permissions.push(Permission {
            ip: peer_ip,
            refresh_at: None,
        });
        if self.state == AllocationState::Allocated {
            self.send_request(Request::Permission(peer_ip), now);
        }
    }

    /// Wraps `bytes` for `peer` (ChannelData once a channel is bound, a Send indication before;
    /// the first send to a peer also binds a channel, queued in `poll_transmit`).
    ///
    /// # Errors
    /// [`TurnError::NotAllocated`] outside [`AllocationState::Allocated`];
    /// [`TurnError::NoPermission`] when `peer`'s IP was never added with
    /// [`add_permission`](Self::add_permission).
    pub fn send_to(
        &mut self,
        peer: SocketAddr,
        bytes: &[u8],
        now: Instant,
    ) -> Result<Transmit, TurnError> {
        if self.state != AllocationState::Allocated {
            return Err(TurnError::NotAllocated {
                state: self.state.name(),
            });
        }
        if !self.permissions.iter().any(|p| p.ip == peer.ip()) {
            return Err(TurnError::NoPermission);
        }
        let contents = match self.channels.iter().find(|c| c.peer == peer) {
            Some(channel) if channel.bound => channel_data(channel.number, bytes),
            Some(_) => send_indication(peer, bytes),
            None => {
                if self.next_channel <= LAST_CHANNEL {
                    let number = self.next_channel;
                    self.next_channel += 1;
                    self.channels.push(Channel {
                        number,
                        peer,
                        bound: false,
                        refresh_at: None,
                    });
                    self.send_request(Request::ChannelBind { number, peer }, now);
                }
                send_indication(peer, bytes)
            }
        };
        Ok(self.transmit(contents))
    }

    /// Feeds a datagram that arrived on the allocation's local socket.
    pub fn handle_incoming(&mut self, from: SocketAddr, bytes: &[u8], now: Instant) -> Incoming {
        if from != self.server {
            return Incoming::NotTurn;
        }
        if bytes.first().is_some_and(|b| b & 0xC0 == 0x40) {
            return self.channel_data_in(bytes);
        }
        let Ok(msg) = Message::from_bytes(bytes) else {
            return Incoming::NotTurn;
        };
        if msg.has_class(MessageClass::Indication) {
            if !msg.has_method(DATA) {
                return Incoming::Consumed;
            }
            let peer = msg.attribute::<XorPeerAddress>();
            let data = msg.attribute::<DataAttribute>();
            return match (peer, data) {
                (Ok(peer), Ok(data)) => Incoming::Data {
                    peer: peer.addr(msg.transaction_id()),
                    bytes: data.data().to_vec(),
                },
                _ => Incoming::Consumed,
            };
        }
        if msg.is_response() {
            self.response(&msg, now);
            return Incoming::Consumed;
        }
        Incoming::NotTurn
    }

    /// Runs due timers (retransmissions, refreshes, expiry) and returns the next datagram for
    /// the server, if any. Call until `None` after every input, then wait until
    /// [`poll_timeout`](Self::poll_timeout).
    pub fn poll_transmit(&mut self, now: Instant) -> Option<Transmit> {
        self.handle_timeout(now);
        let contents = self.queue.pop_front()?;
        Some(self.transmit(contents))
    }

    /// When [`poll_transmit`](Self::poll_transmit) has timer work next; `None` when the
    /// allocation is over.
    #[must_use]
    pub fn poll_timeout(&self) -> Option<Instant> {
        let pending = self.pending.iter().map(|p| p.next_at);
        let live = if self.state == AllocationState::Allocated {
            let perms = self.permissions.iter().filter_map(|p| p.refresh_at);
            let chans = self.channels.iter().filter_map(|c| c.refresh_at);
            let own = [self.refresh_at, self.expires_at].into_iter().flatten();
            perms.chain(chans).chain(own).min()
        } else {
            None
        };
        pending.chain(live).min()
    }

    /// The next thing that happened, if any.
    pub fn poll_event(&mut self) -> Option<TurnEvent> {
        self.events.pop_front()
    }

    /// Deletes the allocation on the server (Refresh with lifetime 0). The state becomes
    /// `Releasing`, then `Released` once the server confirms (or stops answering). Without an
    /// allocation it becomes `Released` at once.
    pub fn release(&mut self, now: Instant) {
        match self.state {
            AllocationState::Allocated => {
                self.pending.clear();
                self.queue.clear();
                self.state = AllocationState::Releasing;
                self.send_request(Request::Refresh { seconds: 0 }, now);
            }
            AllocationState::Allocating => {
                self.pending.clear();
                self.queue.clear();
                self.finish_released();
            }
            AllocationState::Releasing | AllocationState::Released | AllocationState::Failed(_) => {
            }
        }
    }

    // ---- timers

    fn handle_timeout(&mut self, now: Instant) {
        let mut expired = Vec::new();
        for p in &mut self.pending {
            if p.next_at > now {
                continue;
            }
            if p.sends >= MAX_SENDS {
                expired.push(p.id);
                continue;
            }
            p.sends += 1;
            p.rto = p.rto.saturating_mul(2);
            p.next_at = now
                + if p.sends >= MAX_SENDS {
                    LAST_WAIT
                } else {
                    p.rto
                };
            self.queue.push_back(p.bytes.clone());
        }
        for id in expired {
            if let Some(p) = self.take_pending(id) {
                self.timed_out(p.request, now);
            }
        }
        if self.state != AllocationState::Allocated {
            return;
        }
        if self.expires_at.is_some_and(|t| t <= now) {
            self.fail(TurnError::AllocationExpired);
            return;
        }
        if self.refresh_at.is_some_and(|t| t <= now) {
            self.refresh_at = None;
            let seconds = self.lifetime_seconds();
            self.send_request(Request::Refresh { seconds }, now);
        }
        let due: Vec<IpAddr> = self
            .permissions
            .iter_mut()
            .filter(|p| p.refresh_at.is_some_and(|t| t <= now))
            .map(|p| {
                p.refresh_at = None;
                p.ip
            })
            .collect();
        for ip in due {
            self.send_request(Request::Permission(ip), now);
        }
        let due: Vec<(u16, SocketAddr)> = self
            .channels
            .iter_mut()
            .filter(|c| c.refresh_at.is_some_and(|t| t <= now))
            .map(|c| {
                c.refresh_at = None;
                (c.number, c.peer)
            })
            .collect();
        for (number, peer) in due {
            self.send_request(Request::ChannelBind { number, peer }, now);
        }
    }

    fn timed_out(&mut self, request: Request, now: Instant) {
        tracing::warn!(request = request.name(), "TURN request timed out");
        match request {
            Request::Refresh { seconds: 0 } => self.finish_released(),
            // The expiry check fails the allocation if no later refresh gets through.
            Request::Refresh { .. } => self.refresh_at = Some(now),
            Request::Allocate => self.fail(TurnError::Timeout {
                request: request.name(),
            }),
            Request::Permission(ip) => self.events.push_back(TurnEvent::PermissionFailed(ip)),
            Request::ChannelBind { peer, .. } => {
                self.channels.retain(|c| c.peer != peer || c.bound);
                self.events.push_back(TurnEvent::ChannelFailed(peer));
            }
        }
    }

    // ---- responses

    fn response(&mut self, msg: &Message<'_>, now: Instant) {
        let Some(pending) = self.take_pending(msg.transaction_id()) else {
            return; // an answer to a retransmission already answered
        };
        // Success responses to signed requests must be signed with our key; error responses
        // may not be (a 401 to a wrong password cannot be), and a forged one can only do what
        // dropping the request does.
        if pending.authenticated
            && msg.has_class(MessageClass::Success)
            && msg.validate_integrity(&self.credentials_or_none()).is_err()
        {
            tracing::warn!(
                request = pending.request.name(),
                "TURN response failed its integrity check; ignored"
            );
            self.pending.push(pending);
            return;
        }
        if msg.has_class(MessageClass::Success) {
            self.stale_nonces = 0;
            self.success(pending.request, msg, now);
            return;
        }
        let code = msg.attribute::<ErrorCode>().map_or(0, |e| e.code());
        match code {
            ErrorCode::UNAUTHORIZED if !pending.authenticated => {
                let realm = msg.attribute::<Realm>();
                let nonce = msg.attribute::<Nonce>();
                if let (Ok(realm), Ok(nonce)) = (realm, nonce) {
                    self.realm = Some(realm.realm().to_owned());
                    self.nonce = Some(nonce.nonce().to_owned());
                    self.send_request(pending.request, now);
                } else {
                    self.fail(TurnError::MalformedResponse {
                        request: pending.request.name(),
                    });
                }
            }
            ErrorCode::STALE_NONCE if self.stale_nonces < MAX_STALE_NONCES => {
                self.stale_nonces += 1;
                if let Ok(nonce) = msg.attribute::<Nonce>() {
                    self.nonce = Some(nonce.nonce().to_owned());
                }
                self.send_request(pending.request, now);
            }
            ErrorCode::UNAUTHORIZED | ErrorCode::WRONG_CREDENTIALS => {
                self.fail(TurnError::Unauthorized { code });
            }
            _ => self.error(pending.request, code),
        }
    }

    fn success(&mut self, request: Request, msg: &Message<'_>, now: Instant) {
        let lifetime = msg
            .attribute::<Lifetime>()
            .map(|l| Duration::from_secs(u64::from(l.seconds())));
        match request {
            Request::Allocate => {
                let relayed = msg.attribute::<XorRelayedAddress>();
                let (Ok(relayed), Ok(lifetime)) = (relayed, lifetime) else {
                    self.fail(TurnError::MalformedResponse {
                        request: request.name(),
                    });
                    return;
                };
                if self.state != AllocationState::Allocating {
                    return;
                }
                let relayed = relayed.addr(msg.transaction_id());
                let mapped = msg
                    .attribute::<XorMappedAddress>()
                    .ok()
                    .map(|m| m.addr(msg.transaction_id()));
                self.relayed = Some(relayed);
                self.mapped = mapped;
                self.state = AllocationState::Allocated;
                self.set_lifetime(lifetime, now);
                tracing::debug!(lifetime_s = lifetime.as_secs(), "TURN allocation created");
                self.events.push_back(TurnEvent::Allocated {
                    relayed,
                    mapped,
                    lifetime,
                });
                let ips: Vec<IpAddr> = self.permissions.iter().map(|p| p.ip).collect();
                for ip in ips {
                    self.send_request(Request::Permission(ip), now);
                }
            }
            Request::Refresh { seconds: 0 } => self.finish_released(),
            Request::Refresh { .. } => {
                let Ok(lifetime) = lifetime else {
                    self.fail(TurnError::MalformedResponse {
                        request: request.name(),
                    });
                    return;
                };
                if self.state == AllocationState::Allocated {
                    self.set_lifetime(lifetime, now);
                    self.events.push_back(TurnEvent::Refreshed { lifetime });
                }
            }
            Request::Permission(ip) => {
                let period = self.config.permission_refresh;
                if let Some(p) = self.permissions.iter_mut().find(|p| p.ip == ip) {
                    p.refresh_at = Some(now + period);
                    self.events.push_back(TurnEvent::PermissionCreated(ip));
                }
            }
            Request::ChannelBind { number, peer } => {
                let period = self.config.channel_refresh;
                if let Some(c) = self.channels.iter_mut().find(|c| c.number == number) {
                    c.bound = true;
                    c.refresh_at = Some(now + period);
                    self.events.push_back(TurnEvent::ChannelBound(peer));
                }
                // A channel binding installs (and renews) the peer's permission too.
                let period = self.config.permission_refresh;
                if let Some(p) = self.permissions.iter_mut().find(|p| p.ip == peer.ip()) {
                    p.refresh_at = Some(now + period);
                }
            }
        }
    }

    fn error(&mut self, request: Request, code: u16) {
        tracing::warn!(request = request.name(), code, "TURN request refused");
        match request {
            Request::Refresh { seconds: 0 } => self.finish_released(),
            Request::Refresh { .. } if code == ErrorCode::ALLOCATION_MISMATCH => {
                self.fail(TurnError::AllocationMismatch);
            }
            Request::Allocate | Request::Refresh { .. } => self.fail(TurnError::Rejected {
                request: request.name(),
                code,
            }),
            Request::Permission(ip) => {
                self.permissions.retain(|p| p.ip != ip);
                self.events.push_back(TurnEvent::PermissionFailed(ip));
            }
            Request::ChannelBind { number, peer } => {
                self.channels.retain(|c| c.number != number);
                self.events.push_back(TurnEvent::ChannelFailed(peer));
            }
        }
    }

    // ---- helpers

    fn set_lifetime(&mut self, lifetime: Duration, now: Instant) {
        self.expires_at = Some(now + lifetime);
        // Refresh a minute early, or halfway through a short lifetime.
        let early = if lifetime > Duration::from_secs(120) {
            lifetime - Duration::from_secs(60)
        } else {
            lifetime / 2
        };
        self.refresh_at = Some(now + early);
    }

    fn lifetime_seconds(&self) -> u32 {
        self.config.requested_lifetime.map_or(600, |d| {
            u32::try_from(d.as_secs()).unwrap_or(u32::MAX).max(1)
        })
    }

    fn fail(&mut self, error: TurnError) {
        if matches!(
            self.state,
            AllocationState::Failed(_) | AllocationState::Released
        ) {
            return;
        }
        tracing::warn!(%error, "TURN allocation failed");
        self.pending.clear();
        self.queue.clear();
        self.state = AllocationState::Failed(error.clone());
        self.events.push_back(TurnEvent::Failed(error));
    }

    fn finish_released(&mut self) {
        self.pending.clear();
        self.state = AllocationState::Released;
        self.events.push_back(TurnEvent::Released);
    }

    fn take_pending(&mut self, id: TransactionId) -> Option<Pending> {
        let idx = self.pending.iter().position(|p| p.id == id)?;
        Some(self.pending.swap_remove(idx))
    }

    fn credentials_or_none(&self) -> MessageIntegrityCredentials {
        LongTermKeyCredentials::new(
            self.username.clone(),
            self.password.as_str().to_owned(),
            self.realm.clone().unwrap_or_default(),
        )
        .into()
    }

    fn transmit(&self, contents: Vec<u8>) -> Transmit {
        Transmit {
            source: self.local,
            destination: self.server,
            contents,
        }
    }

    /// Builds `request` (signed once the realm and nonce are known) and queues its first send.
    fn send_request(&mut self, request: Request, now: Instant) {
        let id = TransactionId::generate();
        let method = match request {
            Request::Allocate => ALLOCATE,
            Request::Refresh { .. } => REFRESH,
            Request::Permission(_) => CREATE_PERMISSION,
            Request::ChannelBind { .. } => CHANNEL_BIND,
        };
        let authenticated = self.realm.is_some() && self.nonce.is_some();
        match self.encode(request, method, id, authenticated) {
            Ok(bytes) => {
                self.queue.push_back(bytes.clone());
                self.pending.push(Pending {
                    id,
                    request,
                    bytes,
                    authenticated,
                    sends: 1,
                    next_at: now + RTO,
                    rto: RTO,
                });
            }
            // Only an attribute too long for STUN gets here (the realm or nonce the server sent).
            Err(_) => self.fail(TurnError::MalformedResponse {
                request: request.name(),
            }),
        }
    }

    fn encode(
        &self,
        request: Request,
        method: Method,
        id: TransactionId,
        authenticated: bool,
    ) -> Result<Vec<u8>, turn_types::stun::message::StunWriteError> {
        let mtype = MessageType::from_class_method(MessageClass::Request, method);
        let mut msg = Message::builder(mtype, id, MessageWriteVec::new());
        match request {
            Request::Allocate => {
                msg.add_attribute(&RequestedTransport::new(RequestedTransport::UDP))?;
                if self.config.requested_lifetime.is_some() {
                    msg.add_attribute(&Lifetime::new(self.lifetime_seconds()))?;
                }
            }
            Request::Refresh { seconds } => {
                if seconds == 0 || self.config.requested_lifetime.is_some() {
                    msg.add_attribute(&Lifetime::new(seconds))?;
                }
            }
            Request::Permission(ip) => {
                msg.add_attribute(&XorPeerAddress::new(SocketAddr::new(ip, 0), id))?;
            }
            Request::ChannelBind { number, peer } => {
                msg.add_attribute(&ChannelNumber::new(number))?;
                msg.add_attribute(&XorPeerAddress::new(peer, id))?;
            }
        }
        if authenticated {
            let (Some(realm), Some(nonce)) = (&self.realm, &self.nonce) else {
                return Ok(msg.finish());
            };
            msg.add_attribute(&Username::new(&self.username)?)?;
            msg.add_attribute(&Realm::new(realm)?)?;
            msg.add_attribute(&Nonce::new(nonce)?)?;
            msg.add_message_integrity(&self.credentials_or_none(), IntegrityAlgorithm::Sha1)?;
        }
        msg.add_fingerprint()?;
        Ok(msg.finish())
    }

    fn channel_data_in(&self, bytes: &[u8]) -> Incoming {
        let Some(&[n0, n1, l0, l1]) = bytes.get(..4) else {
            return Incoming::Consumed;
        };
        let number = u16::from_be_bytes([n0, n1]);
        let len = usize::from(u16::from_be_bytes([l0, l1]));
        let Some(data) = bytes.get(4..4 + len) else {
            return Incoming::Consumed;
        };
        match self.channels.iter().find(|c| c.number == number) {
            Some(channel) => Incoming::Data {
                peer: channel.peer,
                bytes: data.to_vec(),
            },
            None => Incoming::Consumed,
        }
    }
}

fn channel_data(number: u16, bytes: &[u8]) -> Vec<u8> {
    let len = u16::try_from(bytes.len()).unwrap_or(u16::MAX);
    let mut out = Vec::with_capacity(4 + bytes.len());
    out.extend_from_slice(&number.to_be_bytes());
    out.extend_from_slice(&len.to_be_bytes());
    out.extend_from_slice(bytes.get(..usize::from(len)).unwrap_or(bytes));
    out
}

fn send_indication(peer: SocketAddr, bytes: &[u8]) -> Vec<u8> {
    let id = TransactionId::generate();
    let mtype = MessageType::from_class_method(MessageClass::Indication, SEND);
    let mut msg = Message::builder(mtype, id, MessageWriteVec::new());
    // Both attributes fit any UDP datagram; a payload too large for STUN is sent empty
    // rather than panicking, and the peer's protocol (ICE/DTLS) retransmits.
    let _ = msg.add_attribute(&XorPeerAddress::new(peer, id));
    let _ = msg.add_attribute(&DataAttribute::new(bytes));
    msg.finish()
}

#[cfg(test)]
mod tests;

//! The media of one call: its UDP socket, the str0m peer and the TURN allocation made from
//! the same socket.

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use oracle_calls_direct::peer::{Input, Peer, Transmit};
use oracle_calls_direct::turn::{
    AllocationState, Incoming, TurnAllocation, TurnConfig, TurnServers,
};
use tokio::net::UdpSocket;
use tracing::{debug, warn};

use super::CallStats;

pub(super) struct Media {
    pub(super) socket: UdpSocket,
    pub(super) local: SocketAddr,
    pub(super) peer: Peer,
    pub(super) turn: Option<TurnAllocation>,
    /// The relay candidate was added (or TURN gave up): gathering is over.
    pub(super) gathering_done: bool,
    /// DTLS connected (with the announced fingerprint) at least once.
    pub(super) dtls_connected: bool,
    /// The path was reported lost and has not come back yet.
    pub(super) path_lost: bool,
    pub(super) peer_timeout: Instant,
    pub(super) stats: Arc<CallStats>,
    pub(super) mid: String,
}

impl std::fmt::Debug for Media {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Media")
            .field("peer", &self.peer)
            .field("turn", &self.turn)
            .finish_non_exhaustive()
    }
}

impl Media {
    pub(super) fn new(
        socket: UdpSocket,
        local: SocketAddr,
        peer: Peer,
        sdp: &str,
        turn: Option<&TurnServers>,
        stats: Arc<CallStats>,
        now: Instant,
    ) -> Self {
        let allocation = turn.and_then(|t| {
            let server = t.uris().iter().find_map(|u| u.socket_addr())?;
            match TurnAllocation::new(
                local,
                server,
                t.username(),
                t.password(),
                TurnConfig::default(),
                now,
            ) {
                Ok(a) => Some(a),
                Err(e) => {
                    warn!(error = %e, "TURN allocation refused before it started");
                    None
                }
            }
        });
        if let Ok(mut l) = stats.local_addr.lock() {
            *l = Some(local);
        }
        let mid = sdp
            .lines()
            .find_map(|l| l.strip_prefix("a=mid:"))
            .unwrap_or("0")
            .trim()
            .to_owned();
        let gathering_done = allocation.is_none();
        Self {
            socket,
            local,
            peer,
            turn: allocation,
            gathering_done,
            dtls_connected: false,
            path_lost: false,
            peer_timeout: now,
            stats,
            mid,
        }
    }

    /// Sends what str0m asked for: from the relayed address through the TURN server, or from
    /// the socket directly.
    pub(super) fn transmit(&mut self, t: Transmit, now: Instant) {
        if let Some(turn) = &mut self.turn
            && turn.relayed_addr() == Some(t.source)
        {
            turn.add_permission(t.destination.ip(), now);
            match turn.send_to(t.destination, &t.contents, now) {
                Ok(w) => {
                    self.stats.relayed_datagrams.fetch_add(1, Ordering::Relaxed);
                    let _ = self.socket.try_send_to(&w.contents, w.destination);
                }
                Err(e) => debug!(error = %e, "a datagram could not go through the relay"),
            }
            return;
        }
        self.stats.direct_datagrams.fetch_add(1, Ordering::Relaxed);
        let _ = self.socket.try_send_to(&t.contents, t.destination);
    }

    /// Sends the TURN allocation's own datagrams.
    pub(super) fn flush_turn(&mut self, now: Instant) {
        if let Some(turn) = &mut self.turn {
            while let Some(t) = turn.poll_transmit(now) {
                let _ = self.socket.try_send_to(&t.contents, t.destination);
            }
        }
    }

    /// A datagram that arrived on the socket.
    pub(super) fn receive(&mut self, from: SocketAddr, bytes: &[u8], now: Instant) {
        let mut input = Some((from, self.local, bytes.to_vec()));
        if let Some(turn) = &mut self.turn
            && from == turn.server_addr()
        {
            input = match turn.handle_incoming(from, bytes, now) {
                Incoming::Data { peer, bytes } => {
                    turn.relayed_addr().map(|relayed| (peer, relayed, bytes))
                }
                Incoming::Consumed => None,
                Incoming::NotTurn => input,
            };
        }
        if let Some((source, destination, contents)) = input {
            let _ = self.peer.handle_input(
                now,
                Input::Receive {
                    source,
                    destination,
                    contents: &contents,
                },
            );
        }
    }

    /// Lets the remote candidates of `sdp_or_line` reach us through the relay.
    pub(super) fn permit_candidates<'a>(
        &mut self,
        lines: impl Iterator<Item = &'a str>,
        now: Instant,
    ) {
        let Some(turn) = &mut self.turn else { return };
        for line in lines {
            let line = line.trim().trim_start_matches("a=");
            if !line.starts_with("candidate:") {
                continue;
            }
            if let Some(ip) = line
                .split_whitespace()
                .nth(4)
                .and_then(|a| a.parse::<IpAddr>().ok())
            {
                turn.add_permission(ip, now);
            }
        }
    }

    pub(super) fn next_wake(&self) -> Instant {
        let turn = self.turn.as_ref().and_then(TurnAllocation::poll_timeout);
        turn.map_or(self.peer_timeout, |t| t.min(self.peer_timeout))
    }

    /// Closes the media: the peer at once; the TURN allocation is deleted (Refresh with
    /// lifetime 0) by a short task that then drops the socket.
    pub(super) fn close(mut self) {
        self.peer.close();
        let Some(mut turn) = self.turn.take() else {
            return;
        };
        let socket = self.socket;
        tokio::spawn(async move {
            let now = Instant::now();
            turn.release(now);
            let deadline = now + Duration::from_millis(1500);
            let mut buf = vec![0u8; 2048];
            loop {
                while let Some(t) = turn.poll_transmit(Instant::now()) {
                    let _ = socket.send_to(&t.contents, t.destination).await;
                }
                if matches!(
                    turn.state(),
                    AllocationState::Released | AllocationState::Failed(_)
                ) {
                    break;
                }
                let wait = deadline.saturating_duration_since(Instant::now());
                if wait.is_zero() {
                    break;
                }
                if let Ok(Ok((n, from))) = tokio::time::timeout(
                    wait.min(Duration::from_millis(100)),
                    socket.recv_from(&mut buf),
                )
                .await
                {
                    let _ = turn.handle_incoming(
                        from,
                        buf.get(..n).unwrap_or_default(),
                        Instant::now(),
                    );
                }
            }
            debug!(state = ?turn.state(), "TURN allocation released; socket closed");
        });
    }
}

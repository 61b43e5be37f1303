//! Candidate batching: what we gather after our SDP went out goes in few `m.call.candidates`.

use std::time::{Duration, Instant};

use super::{CALLEE_CANDIDATES_WINDOW, CALLER_CANDIDATES_WINDOW, FIRST_CANDIDATES_DELAY};
use crate::binding::Role;
use crate::signal::Candidate;

/// Candidates we gathered after the SDP went out, sent in few batches.
#[derive(Debug)]
pub(super) struct Batcher {
    pub(super) queue: Vec<Candidate>,
    window: Duration,
    /// When our invite/answer went out (candidates wait for it).
    pub(super) opened: Option<Instant>,
    pub(super) gathering_complete: bool,
    end_sent: bool,
    last_sent: Option<Instant>,
    pub(super) flush_at: Option<Instant>,
}

impl Batcher {
    pub(super) fn new(role: Role) -> Self {
        Self {
            queue: vec![],
            window: match role {
                Role::Caller => CALLER_CANDIDATES_WINDOW,
                Role::Callee => CALLEE_CANDIDATES_WINDOW,
            },
            opened: None,
            gathering_complete: false,
            end_sent: false,
            last_sent: None,
            flush_at: None,
        }
    }

    pub(super) fn has_work(&self) -> bool {
        !self.queue.is_empty() || (self.gathering_complete && !self.end_sent)
    }

    pub(super) fn schedule(&mut self, now: Instant) {
        let Some(opened) = self.opened else { return };
        if self.flush_at.is_some() || !self.has_work() {
            return;
        }
        self.flush_at = Some(match self.last_sent {
            None => (opened + FIRST_CANDIDATES_DELAY).max(now),
            Some(t) => (t + self.window).max(now),
        });
    }

    pub(super) fn take_due(&mut self, now: Instant) -> Option<Vec<Candidate>> {
        if self.flush_at.is_none_or(|t| t > now) {
            return None;
        }
        self.flush_at = None;
        let mut batch = std::mem::take(&mut self.queue);
        if self.gathering_complete && !self.end_sent {
            batch.push(Candidate::end_of_candidates());
            self.end_sent = true;
        }
        self.last_sent = Some(now);
        (!batch.is_empty()).then_some(batch)
    }
}

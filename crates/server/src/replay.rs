//! Replay protection for LiveKit webhooks: each event id is acted on once.

use std::collections::{HashSet, VecDeque};
use std::sync::Mutex;

/// Most webhook ids remembered at once; beyond it the oldest go first. LiveKit, not a peer,
/// chooses the ids (they are inside the signed body), so only its own event rate fills this.
const MAX_REMEMBERED: usize = 100_000;

/// The ids of the webhooks acted on, each kept until its signature expires (a replay after
/// that fails verification anyway), in bounded memory.
#[derive(Debug, Default)]
pub(crate) struct SeenWebhooks {
    inner: Mutex<Seen>,
}

#[derive(Debug, Default)]
struct Seen {
    ids: HashSet<String>,
    /// `(signature valid until, id)`, in the order they were claimed.
    order: VecDeque<(i64, String)>,
}

impl SeenWebhooks {
    /// Claims `id` for handling: true the first time, false for a replay (or one being handled
    /// right now). An empty id cannot be told apart and is always handled.
    pub(crate) fn claim(&self, id: &str, valid_until: i64, now_secs: i64) -> bool {
        if id.is_empty() {
            return true;
        }
        let Ok(mut seen) = self.inner.lock() else {
            return true;
        };
        while seen
            .order
            .front()
            .is_some_and(|(until, _)| *until < now_secs)
            || seen.order.len() >= MAX_REMEMBERED
        {
            if let Some((_, old)) = seen.order.pop_front() {
                seen.ids.remove(&old);
            }
        }
        if !seen.ids.insert(id.to_owned()) {
            return false;
        }
        seen.order.push_back((valid_until, id.to_owned()));
        true
    }

    /// Forgets a claim whose handling failed, so that LiveKit's retry is handled.
    pub(crate) fn release(&self, id: &str) {
        if let Ok(mut seen) = self.inner.lock()
            && seen.ids.remove(id)
            && let Some(at) = seen.order.iter().rposition(|(_, i)| i == id)
        {
            seen.order.remove(at);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_id_is_handled_once_until_its_signature_expires() {
        let seen = SeenWebhooks::default();
        assert!(seen.claim("EV_1", 100, 10));
        assert!(!seen.claim("EV_1", 100, 50), "a replay");
        assert!(seen.claim("EV_2", 100, 50));
        seen.release("EV_2");
        assert!(
            seen.claim("EV_2", 100, 60),
            "released after a failure: the retry counts"
        );
        assert!(seen.claim("", 100, 60) && seen.claim("", 100, 60));
        // Past its validity the id is forgotten (its signature no longer verifies anyway).
        assert!(seen.claim("EV_1", 300, 101));
        assert_eq!(seen.inner.lock().unwrap().ids.len(), 1);
    }

    #[test]
    fn memory_is_bounded() {
        let seen = SeenWebhooks::default();
        for i in 0..MAX_REMEMBERED + 10 {
            assert!(seen.claim(&format!("EV_{i}"), i64::MAX, 0));
        }
        let g = seen.inner.lock().unwrap();
        assert_eq!(
            (g.ids.len(), g.order.len()),
            (MAX_REMEMBERED, MAX_REMEMBERED)
        );
    }
}

//! Counting (and logging, sparingly) the errors a running cpal stream reports.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use crate::error::Direction;

/// Errors logged in full before the log goes quiet (then one line per 1000).
const LOGGED_IN_FULL: u64 = 5;

#[derive(Debug, Clone)]
pub(crate) struct StreamErrors {
    direction: Direction,
    count: Arc<AtomicU64>,
}

impl StreamErrors {
    pub(crate) fn new(direction: Direction) -> StreamErrors {
        StreamErrors {
            direction,
            count: Arc::new(AtomicU64::new(0)),
        }
    }

    pub(crate) fn count(&self) -> u64 {
        self.count.load(Ordering::Relaxed)
    }

    /// The error callback to hand to cpal.
    pub(crate) fn callback(&self) -> impl FnMut(cpal::Error) + Send + 'static {
        let this = self.clone();
        move |e: cpal::Error| {
            let n = this.count.fetch_add(1, Ordering::Relaxed) + 1;
            if n <= LOGGED_IN_FULL || n.is_multiple_of(1000) {
                tracing::warn!(device = %this.direction, errors = n, error = %e, "audio device error");
            }
        }
    }
}

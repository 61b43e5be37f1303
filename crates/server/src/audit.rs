//! The audit log of key requests, written with group commit: every request waits until its
//! record is committed before it is answered (no key leaves without its audit row), and the
//! requests that arrive while one batch commits share the next commit.

use std::sync::OnceLock;

use tokio::sync::{mpsc, oneshot};
use tracing::warn;

use crate::store::{KeyRequestRecord, Store};
use crate::{Error, Result};

/// Records in one commit, at most.
const BATCH: usize = 256;
/// Records waiting for the writer, at most (then requests wait for room).
const QUEUE: usize = 4096;

struct Pending {
    record: KeyRequestRecord,
    done: oneshot::Sender<std::result::Result<(), String>>,
}

/// The key-request audit log of one store. Its writer task starts on first use.
#[derive(Debug)]
pub struct AuditLog {
    store: Store,
    queue: OnceLock<mpsc::Sender<Pending>>,
}

impl AuditLog {
    pub fn new(store: Store) -> Self {
        Self {
            store,
            queue: OnceLock::new(),
        }
    }

    /// Appends `record`; returns once it is committed.
    ///
    /// # Errors
    /// [`Error::Internal`] when the write failed (the caller must not hand out the key).
    pub async fn record(&self, record: KeyRequestRecord) -> Result<()> {
        let queue = self.queue.get_or_init(|| {
            let (tx, rx) = mpsc::channel(QUEUE);
            tokio::spawn(write_batches(self.store.clone(), rx));
            tx
        });
        let (done, committed) = oneshot::channel();
        queue
            .send(Pending { record, done })
            .await
            .map_err(|_| Error::Internal("the audit writer has stopped".into()))?;
        committed
            .await
            .map_err(|_| Error::Internal("the audit writer has stopped".into()))?
            .map_err(|e| Error::Internal(format!("could not write the audit log: {e}")))
    }
}

async fn write_batches(store: Store, mut rx: mpsc::Receiver<Pending>) {
    while let Some(first) = rx.recv().await {
        let mut batch = vec![first];
        while batch.len() < BATCH {
            match rx.try_recv() {
                Ok(p) => batch.push(p),
                Err(_) => break,
            }
        }
        let records: Vec<&KeyRequestRecord> = batch.iter().map(|p| &p.record).collect();
        let result = store
            .record_key_requests(&records)
            .await
            .map_err(|e| e.to_string());
        if let Err(e) = &result {
            warn!(error = %e, records = batch.len(), "audit write failed");
        }
        for p in batch {
            let _ = p.done.send(result.clone());
        }
    }
}

//! The speaking oracle in a call: [`Speech`] drives an `oracle-calls-speech` session with the
//! call's audio, 20 ms at a time.

use std::path::Path;
use std::time::Instant;

use oracle_calls_speech::config::{Prepared, SpeechSection};

use crate::{CallIo, Heard, Oracle, OracleError, TryRecv};

/// The oracle that listens, understands, answers in speech and stops when interrupted
/// (configured by the `[speech]` section of the agent's file).
#[derive(Clone, Debug)]
pub struct Speech {
    prepared: Prepared,
}

impl Speech {
    /// Builds the engines of `section` (relative paths against `base`, the configuration
    /// file's folder) and renders the fallback line.
    ///
    /// # Errors
    /// The section is not usable (see [`SpeechSection::prepare`]).
    pub async fn new(
        section: &SpeechSection,
        base: &Path,
    ) -> Result<Self, oracle_calls_speech::ConfigError> {
        Ok(Self {
            prepared: section.prepare(base).await?,
        })
    }

    /// An oracle from engines already prepared.
    pub fn from_prepared(prepared: Prepared) -> Self {
        Self { prepared }
    }
}

impl Oracle for Speech {
    async fn run(&self, mut call: CallIo) -> Result<(), OracleError> {
        let mut session = self.prepared.session(Instant::now());
        let call_id = call.info().call_id.clone();
        loop {
            loop {
                match call.try_recv() {
                    TryRecv::Heard(Heard::Audio { pcm }) => session.hear(&pcm, Instant::now()),
                    // The speaking oracle answers what it hears; video is not looked at.
                    TryRecv::Heard(Heard::Video { .. } | Heard::KeyframeRequested) => {}
                    TryRecv::Empty => break,
                    TryRecv::Ended => {
                        tracing::info!(%call_id, turns = session.history().len(), "the call is over");
                        return Ok(());
                    }
                }
            }
            let now = Instant::now();
            session.tick(now);
            let frame = session.next_frame(now);
            call.speak(&frame).await?;
        }
    }
}

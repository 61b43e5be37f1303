//! The auditor: checks that the directory's history between two checkpoints only grew.

use crate::checkpoint::{DirectoryPublicKey, SignedCheckpoint, verify_checkpoint};
use crate::error::{Error, Result};
use crate::proof::AuditProof;
use crate::verify::TreeConfig;

/// Verifies that the directory went from checkpoint `from` to checkpoint `to` by appending
/// only: every checkpoint in between is present, contiguous, signed by the directory and not
/// dated before its predecessor, and akd's append-only proof shows that each epoch's tree
/// keeps every leaf of the one before (no value rewritten or removed).
///
/// `from` is the checkpoint the auditor trusts already (the last one it audited); `to` is
/// the one it is asked to vouch for. Must be awaited inside a tokio runtime (akd's audit
/// verification spawns tasks).
///
/// # Errors
/// Those of [`verify_checkpoint`] for any checkpoint; [`Error::Fork`] if the proof's
/// checkpoint for `from`'s or `to`'s epoch differs from the one given; [`Error::Audit`] for a
/// gap, a wrong order, a clock going back or an append-only proof that does not verify;
/// [`Error::Malformed`] / [`Error::TooLarge`] for a proof that does not parse.
pub async fn audit(
    directory: &DirectoryPublicKey,
    from: &SignedCheckpoint,
    to: &SignedCheckpoint,
    proof: &AuditProof,
) -> Result<()> {
    let first = verify_checkpoint(from, directory)?;
    let last = verify_checkpoint(to, directory)?;
    if first.epoch >= last.epoch {
        return Err(Error::Audit("`to` is not after `from`"));
    }
    let (Some(head), Some(tail)) = (proof.checkpoints.first(), proof.checkpoints.last()) else {
        return Err(Error::Audit("no checkpoints"));
    };
    if head.checkpoint.epoch == first.epoch && head.checkpoint != first {
        return Err(Error::Fork { epoch: first.epoch });
    }
    if tail.checkpoint.epoch == last.epoch && tail.checkpoint != last {
        return Err(Error::Fork { epoch: last.epoch });
    }
    if head.checkpoint != first || tail.checkpoint != last {
        return Err(Error::Audit("checkpoints do not run from `from` to `to`"));
    }
    let mut hashes = Vec::with_capacity(proof.checkpoints.len());
    let mut previous: Option<&SignedCheckpoint> = None;
    for signed in &proof.checkpoints {
        let checkpoint = verify_checkpoint(signed, directory)?;
        if let Some(prev) = previous {
            if prev.checkpoint.epoch.checked_add(1) != Some(checkpoint.epoch) {
                return Err(Error::Audit("checkpoints are not contiguous"));
            }
            if checkpoint.time_ms < prev.checkpoint.time_ms {
                return Err(Error::Audit("a checkpoint is dated before its predecessor"));
            }
        }
        hashes.push(checkpoint.root_hash);
        previous = Some(signed);
    }
    let append_only = proof.proof.decode()?;
    // akd takes each epoch from the proof; they must be exactly from..to.
    if !append_only
        .epochs
        .iter()
        .copied()
        .eq(first.epoch..last.epoch)
    {
        return Err(Error::Audit("the proof covers other epochs"));
    }
    akd::auditor::audit_verify::<TreeConfig>(hashes, append_only)
        .await
        .map_err(|_| Error::Audit("the append-only proof does not verify"))
}

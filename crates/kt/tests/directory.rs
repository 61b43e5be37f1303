//! The directory and the verifiers together, on real akd (in-memory storage): what verifies,
//! and every misbehaviour of a directory that a client or the auditor must catch.
#![cfg(feature = "directory")]
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]

mod common;
use aws_lc_rs::signature::Ed25519KeyPair;
use common::{did, record};
use oracle_calls_kt::{
    AuditProof, Checkpoint, CheckpointSigningKey, Directory, Error, HistoryResponse, LookupProof,
    LookupResponse, SignedCheckpoint, Verifier, VrfSecretKey, audit, verify_checkpoint,
    verify_history, verify_lookup,
};
use zeroize::Zeroizing;

const SIGNING_SEED: [u8; 32] = [1; 32];
const VRF_KEY: [u8; 32] = [2; 32];
const T0: i64 = 1_767_225_600_000;

async fn directory_with(signing_seed: [u8; 32]) -> Directory {
    Directory::in_memory(
        CheckpointSigningKey::from_seed(Zeroizing::new(signing_seed)).unwrap(),
        VrfSecretKey::from_bytes(Zeroizing::new(VRF_KEY)),
        T0,
    )
    .await
    .unwrap()
}

async fn directory() -> Directory {
    directory_with(SIGNING_SEED).await
}

/// Signs any checkpoint with the directory's key: what a dishonest directory can do.
fn sign_as_directory(checkpoint: Checkpoint, template: &SignedCheckpoint) -> SignedCheckpoint {
    let pair = Ed25519KeyPair::from_seed_unchecked(&SIGNING_SEED).unwrap();
    SignedCheckpoint {
        checkpoint,
        signature: pair
            .sign(&checkpoint.signed_bytes())
            .as_ref()
            .try_into()
            .unwrap(),
        key_id: template.key_id,
    }
}

#[tokio::test]
async fn publish_then_lookup_verifies() {
    let dir = directory().await;
    let cp = dir
        .publish(
            vec![
                (did(1), record("agent-a")),
                (did(2), record("agent-b")),
                (did(3), record("agent-c")),
            ],
            T0 + 1,
        )
        .await
        .unwrap();
    assert_eq!(cp.checkpoint.epoch, 1);
    assert_eq!(dir.checkpoint(0).await.unwrap().checkpoint.time_ms, T0);

    let response = dir.lookup(&did(2)).await.unwrap();
    assert_eq!(response.checkpoint, cp);
    // Through JSON, as a client gets it.
    let json = serde_json::to_vec(&response).unwrap();
    let response = LookupResponse::from_json(&json).unwrap();

    let mut verifier = Verifier::new(dir.public_key().clone());
    let verified = verifier
        .verify_lookup(&response.checkpoint, &did(2), &response.proof)
        .unwrap();
    assert_eq!(verified.record, record("agent-b"));
    assert_eq!((verified.version, verified.epoch), (1, 1));
    assert_eq!(verifier.latest(), Some(&cp));

    // The free function agrees; the DID is bound: the proof is not one for another DID.
    assert!(verify_lookup(dir.public_key(), &cp, &did(2), &response.proof).is_ok());
    assert!(matches!(
        verify_lookup(dir.public_key(), &cp, &did(3), &response.proof),
        Err(Error::LookupProof)
    ));
    assert!(matches!(dir.lookup(&did(9)).await, Err(Error::NotFound)));
}

#[tokio::test]
async fn a_key_change_shows_in_the_history_with_its_epoch() {
    let dir = directory().await;
    dir.publish(vec![(did(1), record("agent-a"))], T0 + 1)
        .await
        .unwrap();
    dir.publish(vec![(did(2), record("agent-b"))], T0 + 2)
        .await
        .unwrap();
    // Re-publishing the same record makes no epoch.
    let same = dir
        .publish(vec![(did(1), record("agent-a"))], T0 + 3)
        .await
        .unwrap();
    assert_eq!(same.checkpoint.epoch, 2);
    let cp = dir
        .publish(vec![(did(1), record("agent-a2"))], T0 + 4)
        .await
        .unwrap();
    assert_eq!(cp.checkpoint.epoch, 3);

    let mut verifier = Verifier::new(dir.public_key().clone());
    let lookup = dir.lookup(&did(1)).await.unwrap();
    let now = verifier
        .verify_lookup(&lookup.checkpoint, &did(1), &lookup.proof)
        .unwrap();
    assert_eq!((now.version, now.epoch), (2, 3));
    assert_eq!(now.record, record("agent-a2"));

    // The client had pinned agent-a at version 1: the history says when it changed.
    let history = dir.history(&did(1)).await.unwrap();
    let history = HistoryResponse::from_json(&serde_json::to_vec(&history).unwrap()).unwrap();
    let verified = verifier
        .verify_history(&history.checkpoint, &did(1), &history.proof)
        .unwrap();
    let versions: Vec<_> = verified
        .versions()
        .iter()
        .map(|v| (v.version, v.epoch))
        .collect();
    assert_eq!(versions, [(2, 3), (1, 1)]);
    let change = verified
        .change_since(&record("agent-a"), 1)
        .unwrap()
        .unwrap();
    assert_eq!((change.version, change.epoch), (2, 3));
    assert_eq!(verified.change_since(&record("agent-a2"), 2).unwrap(), None);
    // A pin the directory never served at that version: the history was rewritten.
    assert!(matches!(
        verified.change_since(&record("agent-x"), 1),
        Err(Error::HistoryRewritten { version: 1 })
    ));
}

#[tokio::test]
async fn a_value_rewritten_in_the_past_is_rejected() {
    // The honest directory: agent-a, then agent-a2. The dishonest one has the same keys but
    // served agent-x at version 1, then the same agent-a2.
    let honest = directory().await;
    let liar = directory().await;
    for (dir, first) in [(&honest, "agent-a"), (&liar, "agent-x")] {
        dir.publish(vec![(did(1), record(first))], T0 + 1)
            .await
            .unwrap();
        dir.publish(vec![(did(1), record("agent-a2"))], T0 + 2)
            .await
            .unwrap();
    }
    let honest_cp = honest.latest_checkpoint().await.unwrap();
    let liar_lookup = liar.lookup(&did(1)).await.unwrap();
    let liar_history = liar.history(&did(1)).await.unwrap();
    assert_ne!(liar_lookup.checkpoint, honest_cp);

    // The liar's proofs do not verify against the honest checkpoint: same latest value, but
    // the tree under it differs.
    assert!(matches!(
        verify_lookup(honest.public_key(), &honest_cp, &did(1), &liar_lookup.proof),
        Err(Error::LookupProof)
    ));
    assert!(matches!(
        verify_history(
            honest.public_key(),
            &honest_cp,
            &did(1),
            &liar_history.proof
        ),
        Err(Error::HistoryProof)
    ));

    // Against its own signed checkpoint the liar's history verifies, but a client that pinned
    // agent-a at version 1 sees the rewrite.
    let liar_view = verify_history(
        liar.public_key(),
        &liar_history.checkpoint,
        &did(1),
        &liar_history.proof,
    )
    .unwrap();
    assert!(matches!(
        liar_view.change_since(&record("agent-a"), 1),
        Err(Error::HistoryRewritten { version: 1 })
    ));

    // A client that stored the honest checkpoint sees the liar's as a fork.
    let mut verifier = Verifier::new(honest.public_key().clone());
    verifier.accept_checkpoint(&honest_cp).unwrap();
    assert!(matches!(
        verifier.verify_lookup(&liar_lookup.checkpoint, &did(1), &liar_lookup.proof),
        Err(Error::Fork { epoch: 2 })
    ));
}

#[tokio::test]
async fn a_tampered_record_in_the_proof_is_rejected() {
    let dir = directory().await;
    let cp = dir
        .publish(vec![(did(1), record("agent-a"))], T0 + 1)
        .await
        .unwrap();
    let proof = dir.lookup(&did(1)).await.unwrap().proof;
    let bytes = proof.as_bytes().to_vec();
    let at = bytes
        .windows(7)
        .position(|w| w == b"agent-a")
        .expect("the record is in the proof");
    let mut tampered = bytes.clone();
    tampered[at + 6] = b'b';
    assert!(matches!(
        verify_lookup(
            dir.public_key(),
            &cp,
            &did(1),
            &LookupProof::from_bytes(tampered)
        ),
        Err(Error::LookupProof)
    ));
}

#[tokio::test]
async fn a_forked_checkpoint_is_caught() {
    let dir = directory().await;
    dir.publish(vec![(did(1), record("agent-a"))], T0 + 1)
        .await
        .unwrap();
    let lookup = dir.lookup(&did(1)).await.unwrap();
    let mut verifier = Verifier::new(dir.public_key().clone());
    verifier
        .verify_lookup(&lookup.checkpoint, &did(1), &lookup.proof)
        .unwrap();

    // Same epoch, another root, validly signed with the directory key.
    let mut other = lookup.checkpoint.checkpoint;
    other.root_hash[0] ^= 1;
    let fork = sign_as_directory(other, &lookup.checkpoint);
    assert!(verify_checkpoint(&fork, dir.public_key()).is_ok());
    assert!(matches!(
        verifier.accept_checkpoint(&fork),
        Err(Error::Fork { epoch: 1 })
    ));
    assert!(matches!(
        verifier.verify_lookup(&fork, &did(1), &lookup.proof),
        Err(Error::Fork { epoch: 1 })
    ));
    assert_eq!(verifier.latest(), Some(&lookup.checkpoint));
}

#[tokio::test]
async fn a_stale_checkpoint_after_a_newer_one_is_a_rollback() {
    let dir = directory().await;
    dir.publish(vec![(did(1), record("agent-a"))], T0 + 1)
        .await
        .unwrap();
    let old = dir.lookup(&did(1)).await.unwrap();
    dir.publish(vec![(did(1), record("agent-a2"))], T0 + 2)
        .await
        .unwrap();
    let new = dir.lookup(&did(1)).await.unwrap();

    let mut verifier = Verifier::new(dir.public_key().clone());
    verifier
        .verify_lookup(&new.checkpoint, &did(1), &new.proof)
        .unwrap();
    // The old response still verifies on its own ...
    assert!(verify_lookup(dir.public_key(), &old.checkpoint, &did(1), &old.proof).is_ok());
    // ... but not after the newer one was stored, also after a restart from the stored state.
    assert!(matches!(
        verifier.verify_lookup(&old.checkpoint, &did(1), &old.proof),
        Err(Error::Rollback {
            stored: 2,
            offered: 1
        })
    ));
    let stored = serde_json::to_string(verifier.latest().unwrap()).unwrap();
    let mut resumed = Verifier::resume(
        dir.public_key().clone(),
        serde_json::from_str(&stored).unwrap(),
    )
    .unwrap();
    assert!(matches!(
        resumed.verify_lookup(&old.checkpoint, &did(1), &old.proof),
        Err(Error::Rollback { .. })
    ));
}

#[tokio::test]
async fn a_checkpoint_signed_by_another_key_is_rejected() {
    let dir = directory().await;
    let impostor = directory_with([7; 32]).await;
    for d in [&dir, &impostor] {
        d.publish(vec![(did(1), record("agent-a"))], T0 + 1)
            .await
            .unwrap();
    }
    // Same VRF key, same tree: only the signature differs.
    let theirs = impostor.lookup(&did(1)).await.unwrap();
    assert!(matches!(
        verify_lookup(dir.public_key(), &theirs.checkpoint, &did(1), &theirs.proof),
        Err(Error::UnknownKey { .. })
    ));
    let mut claimed = theirs.checkpoint.clone();
    claimed.key_id = dir.public_key().key_id();
    assert!(matches!(
        verify_lookup(dir.public_key(), &claimed, &did(1), &theirs.proof),
        Err(Error::BadSignature)
    ));
}

async fn four_epochs(dir: &Directory, first: &str) {
    dir.publish(vec![(did(1), record(first))], T0 + 1)
        .await
        .unwrap();
    dir.publish(
        vec![(did(2), record("agent-b")), (did(3), record("agent-c"))],
        T0 + 2,
    )
    .await
    .unwrap();
    dir.publish(vec![(did(1), record("agent-a2"))], T0 + 3)
        .await
        .unwrap();
    dir.publish(vec![(did(4), record("agent-d"))], T0 + 4)
        .await
        .unwrap();
}

#[tokio::test]
async fn an_audit_across_epochs_verifies() {
    let dir = directory().await;
    four_epochs(&dir, "agent-a").await;
    let key = dir.public_key();
    for (from, to) in [(0, 4), (1, 3), (3, 4), (0, 1)] {
        let proof = dir.audit_proof(from, to).await.unwrap();
        let proof = AuditProof::from_json(&serde_json::to_vec(&proof).unwrap()).unwrap();
        let a = dir.checkpoint(from).await.unwrap();
        let b = dir.checkpoint(to).await.unwrap();
        audit(key, &a, &b, &proof)
            .await
            .unwrap_or_else(|e| panic!("{from}..{to}: {e}"));
    }
    assert!(matches!(
        dir.audit_proof(2, 2).await,
        Err(Error::BadRequest(_))
    ));
    assert!(matches!(
        dir.audit_proof(3, 5).await,
        Err(Error::BadRequest(_))
    ));
}

#[tokio::test]
async fn an_audit_against_a_directory_that_rewrote_history_fails() {
    let honest = directory().await;
    let liar = directory().await;
    four_epochs(&honest, "agent-a").await;
    four_epochs(&liar, "agent-x").await;
    let key = honest.public_key();
    let from = honest.checkpoint(1).await.unwrap();
    let liar_to = liar.checkpoint(4).await.unwrap();
    let liar_proof = liar.audit_proof(1, 4).await.unwrap();

    // The liar's run starts from its own epoch 1, not the one the auditor holds: a fork.
    assert!(matches!(
        audit(key, &from, &liar_to, &liar_proof).await,
        Err(Error::Fork { epoch: 1 })
    ));
    // Splice the honest epoch-1 checkpoint in: the append-only proof no longer verifies.
    let mut spliced = liar_proof.clone();
    spliced.checkpoints[0] = from.clone();
    assert!(matches!(
        audit(key, &from, &liar_to, &spliced).await,
        Err(Error::Audit("the append-only proof does not verify"))
    ));
    // The honest proof with the liar's checkpoints in the middle does not verify either.
    let mut honest_proof = honest.audit_proof(1, 4).await.unwrap();
    honest_proof.checkpoints[2] = liar.checkpoint(3).await.unwrap();
    let honest_to = honest.checkpoint(4).await.unwrap();
    assert!(matches!(
        audit(key, &from, &honest_to, &honest_proof).await,
        Err(Error::Audit("the append-only proof does not verify"))
    ));
}

#[tokio::test]
async fn an_audit_refuses_gaps_disorder_and_foreign_signatures() {
    let dir = directory().await;
    four_epochs(&dir, "agent-a").await;
    let key = dir.public_key();
    let from = dir.checkpoint(0).await.unwrap();
    let to = dir.checkpoint(4).await.unwrap();
    let good = dir.audit_proof(0, 4).await.unwrap();

    let mut gap = good.clone();
    gap.checkpoints.remove(2);
    assert!(matches!(
        audit(key, &from, &to, &gap).await,
        Err(Error::Audit("checkpoints are not contiguous"))
    ));
    assert!(matches!(
        audit(key, &to, &from, &good).await,
        Err(Error::Audit("`to` is not after `from`"))
    ));
    // The proof of another range.
    let mut other_range = good.clone();
    other_range.proof = dir.audit_proof(1, 4).await.unwrap().proof;
    assert!(matches!(
        audit(key, &from, &to, &other_range).await,
        Err(Error::Audit("the proof covers other epochs"))
    ));
    // A middle checkpoint with a bad signature.
    let mut forged = good.clone();
    forged.checkpoints[2].signature[0] ^= 1;
    assert!(matches!(
        audit(key, &from, &to, &forged).await,
        Err(Error::BadSignature)
    ));
    // A middle checkpoint re-signed (validly) with an earlier time.
    let mut backwards = good.clone();
    let mut early = backwards.checkpoints[2].checkpoint;
    early.time_ms = T0 - 1;
    backwards.checkpoints[2] = sign_as_directory(early, &good.checkpoints[2]);
    assert!(matches!(
        audit(key, &from, &to, &backwards).await,
        Err(Error::Audit("a checkpoint is dated before its predecessor"))
    ));
}

#[tokio::test]
async fn malformed_proofs_are_typed_errors_never_panics() {
    let dir = directory().await;
    four_epochs(&dir, "agent-a").await;
    let key = dir.public_key();
    let lookup = dir.lookup(&did(1)).await.unwrap();
    let history = dir.history(&did(1)).await.unwrap();
    let cp = &lookup.checkpoint;

    // Not JSON, not the shape, not base64url.
    for body in [
        &b"not json"[..],
        br#"{"checkpoint": 1, "proof": ""}"#,
        br#"{"proof": "AAAA"}"#,
    ] {
        assert!(matches!(
            LookupResponse::from_json(body),
            Err(Error::Malformed { .. })
        ));
    }
    let mut json = serde_json::to_value(&lookup).unwrap();
    json["proof"] = "not/base64+".into();
    assert!(matches!(
        LookupResponse::from_json(&serde_json::to_vec(&json).unwrap()),
        Err(Error::Malformed { .. })
    ));
    // Base64 of bytes that are no protobuf message.
    json["proof"] = "__8A".into();
    let garbage = LookupResponse::from_json(&serde_json::to_vec(&json).unwrap()).unwrap();
    assert!(matches!(
        verify_lookup(key, cp, &did(1), &garbage.proof),
        Err(Error::Malformed {
            what: "lookup proof"
        })
    ));
    assert!(matches!(
        verify_lookup(
            key,
            cp,
            &did(1),
            &LookupProof::from_bytes(vec![0; oracle_calls_kt::MAX_LOOKUP_PROOF_BYTES + 1])
        ),
        Err(Error::TooLarge { .. })
    ));

    // Every truncation and many single-byte changes of real proofs: an error, never a panic,
    // never a success.
    let bytes = lookup.proof.as_bytes();
    for n in 0..bytes.len() {
        let cut = LookupProof::from_bytes(bytes[..n].to_vec());
        assert!(verify_lookup(key, cp, &did(1), &cut).is_err(), "prefix {n}");
    }
    for i in (0..bytes.len()).step_by(3) {
        for flip in [0x01, 0x80, 0xff] {
            let mut b = bytes.to_vec();
            b[i] ^= flip;
            let changed = LookupProof::from_bytes(b);
            // A change in a protobuf tag can leave the same proof (an unknown field skipped);
            // whatever verifies must be exactly the true record.
            if let Ok(v) = verify_lookup(key, cp, &did(1), &changed) {
                assert_eq!(v.record, record("agent-a2"), "byte {i} ^ {flip:#x}");
            }
        }
    }
    let hbytes = history.proof.as_bytes();
    for i in (0..hbytes.len()).step_by(7) {
        let mut b = hbytes.to_vec();
        b[i] ^= 0x5a;
        let changed = oracle_calls_kt::HistoryProof::from_bytes(b);
        if let Ok(h) = verify_history(key, &history.checkpoint, &did(1), &changed) {
            assert_eq!(h.versions().len(), 2, "byte {i}");
        }
    }
}

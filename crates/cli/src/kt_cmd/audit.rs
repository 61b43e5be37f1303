//! `oracle-calls kt audit`: the auditor against a running directory.

use anyhow::{Context as _, bail};
use oracle_calls_kt::{
    AuditProof, DirectoryPublicKey, MAX_APPEND_ONLY_PROOF_BYTES, SignedCheckpoint, audit,
    verify_checkpoint,
};

use super::http::MAX_AUDIT_EPOCHS;

/// The largest response read: an append-only proof at its limit, in base64, with its
/// checkpoints.
const MAX_RESPONSE_BYTES: usize = MAX_APPEND_ONLY_PROOF_BYTES / 3 * 4 + 1024 * 1024;
/// The largest checkpoint response read.
const MAX_CHECKPOINT_BYTES: usize = 4096;

/// Verifies the directory at `url` from epoch `from` to `to` (default: its latest): both
/// checkpoints' signatures, then each run of at most [`MAX_AUDIT_EPOCHS`] epochs (every
/// checkpoint signed, contiguous, in time order, akd's append-only proof), each run starting
/// at the checkpoint the previous one ended with. Prints one line per run.
pub async fn run(
    url: &str,
    key: &DirectoryPublicKey,
    from: u64,
    to: Option<u64>,
) -> anyhow::Result<()> {
    let base = url.trim_end_matches('/');
    let client = reqwest::Client::builder()
        .timeout(std::time::Duration::from_secs(120))
        .build()
        .context("building the HTTP client")?;
    let first: SignedCheckpoint = serde_json::from_slice(
        &fetch(
            &client,
            &format!("{base}/kt/v1/checkpoint/{from}"),
            MAX_CHECKPOINT_BYTES,
        )
        .await?,
    )
    .with_context(|| format!("the checkpoint of epoch {from} does not parse"))?;
    let last_url = match to {
        Some(to) => format!("{base}/kt/v1/checkpoint/{to}"),
        None => format!("{base}/kt/v1/checkpoint"),
    };
    let last: SignedCheckpoint =
        serde_json::from_slice(&fetch(&client, &last_url, MAX_CHECKPOINT_BYTES).await?)
            .context("the last checkpoint does not parse")?;
    for (want, signed) in [(Some(from), &first), (to, &last)] {
        let checkpoint = verify_checkpoint(signed, key).with_context(|| {
            format!(
                "the checkpoint served for epoch {}",
                signed.checkpoint.epoch
            )
        })?;
        if let Some(want) = want
            && want != checkpoint.epoch
        {
            bail!(
                "asked for the checkpoint of epoch {want}, got epoch {}",
                checkpoint.epoch
            );
        }
    }
    let to = last.checkpoint.epoch;
    if to < from {
        bail!("--to {to} is before --from {from}");
    }
    if to == from {
        println!(
            "epoch {from}: checkpoint signed by {} (nothing to audit)",
            key.key_id()
        );
        return Ok(());
    }

    let mut start = first;
    while start.checkpoint.epoch < to {
        let a = start.checkpoint.epoch;
        let b = a.saturating_add(MAX_AUDIT_EPOCHS).min(to);
        let body = fetch(
            &client,
            &format!("{base}/kt/v1/audit?from={a}&to={b}"),
            MAX_RESPONSE_BYTES,
        )
        .await?;
        let proof = AuditProof::from_json(&body)
            .with_context(|| format!("the audit proof for epochs {a}..={b}"))?;
        let end = if b == to {
            last.clone()
        } else {
            proof
                .checkpoints
                .last()
                .cloned()
                .with_context(|| format!("the audit proof for epochs {a}..={b} is empty"))?
        };
        audit(key, &start, &end, &proof)
            .await
            .with_context(|| format!("epochs {a}..={b} do not audit"))?;
        println!(
            "epochs {a}..={b}: {} checkpoints signed by {}, append-only proof verified (root {})",
            proof.checkpoints.len(),
            key.key_id(),
            hex::encode(end.checkpoint.root_hash)
        );
        start = end;
    }
    println!("audited epochs {from}..={to}: the directory only grew");
    Ok(())
}

/// GETs `url`, reading at most `max` bytes; a non-2xx answer is an error carrying its body's
/// message.
async fn fetch(client: &reqwest::Client, url: &str, max: usize) -> anyhow::Result<Vec<u8>> {
    let mut response = client
        .get(url)
        .send()
        .await
        .with_context(|| format!("GET {url}"))?;
    let status = response.status();
    let mut body = Vec::new();
    while let Some(chunk) = response
        .chunk()
        .await
        .with_context(|| format!("reading {url}"))?
    {
        if body.len().saturating_add(chunk.len()) > max {
            bail!("GET {url}: the answer is larger than {max} bytes");
        }
        body.extend_from_slice(&chunk);
    }
    if !status.is_success() {
        let message = serde_json::from_slice::<oracle_calls_proto::ApiErrorBody>(&body)
            .map(|b| b.error.message)
            .unwrap_or_else(|_| String::from_utf8_lossy(&body).chars().take(200).collect());
        bail!("GET {url}: {status}: {message}");
    }
    Ok(body)
}

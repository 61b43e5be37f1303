//! Reading and writing oracle private key files (PKCS#8 PEM, owner-only), and importing the
//! raw secp256k1 secret an existing ixo oracle holds.

use std::io::{Read as _, Write as _};
use std::path::{Path, PathBuf};

use anyhow::{Context as _, bail};
use oracle_calls_crypto::{OracleKeyPair, PrekeySigningKey};
use zeroize::Zeroizing;

/// Writes the private key with mode 0600, atomically: the whole file is written to a fresh
/// temporary file in the same directory (created exclusively, 0600, synced), then published
/// under `path` with a hard link, which fails if anything already has that name — even a file
/// created a moment earlier, or a dangling symlink — so nothing is ever replaced. With `force`
/// it is renamed over `path` instead. The temporary file is removed on every path.
///
/// # Errors
/// `path` exists (without `force`), or the directory cannot be written; a file system without
/// hard links refuses too (nothing is written then).
pub fn write_private_key(path: &Path, kp: &OracleKeyPair, force: bool) -> anyhow::Result<()> {
    let pem = kp.to_pkcs8_pem().context("encoding the private key")?;
    write_secret_file(path, pem.as_bytes(), force)
}

/// Writes any secret (a PEM key) as [`write_private_key`] does: 0600, atomically, never over
/// an existing file unless `force`.
///
/// # Errors
/// As [`write_private_key`].
pub fn write_secret_file(path: &Path, secret: &[u8], force: bool) -> anyhow::Result<()> {
    let tmp = temp_path(path);
    let mut opts = std::fs::OpenOptions::new();
    opts.write(true).create_new(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt as _;
        opts.mode(0o600);
    }
    let mut f = opts
        .open(&tmp)
        .with_context(|| format!("creating {}", tmp.display()))?;
    let written = f
        .write_all(secret)
        .and_then(|()| f.sync_all())
        .with_context(|| format!("writing {}", tmp.display()))
        .and_then(|()| publish(&tmp, path, force));
    drop(f);
    // After a rename tmp is gone already; after a link or a failure it is still there.
    match std::fs::remove_file(&tmp) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => {
            tracing::warn!(path = %tmp.display(), error = %e, "could not remove the temporary key file")
        }
    }
    written?;
    if let Some(dir) = path.parent().filter(|p| !p.as_os_str().is_empty())
        && let Ok(d) = std::fs::File::open(dir)
    {
        // The new name survives a crash (best effort: not every platform syncs directories).
        let _ = d.sync_all();
    }
    Ok(())
}

/// Reads a private key file, warning when other users can read it.
pub fn read_private_key(path: &Path) -> anyhow::Result<OracleKeyPair> {
    warn_if_readable_by_others(path)?;
    let pem = Zeroizing::new(
        std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?,
    );
    OracleKeyPair::from_pkcs8_pem(&pem)
        .with_context(|| format!("loading the key in {}", path.display()))
}

/// Reads a prekey signing key file, warning when other users can read it.
pub fn read_prekey_signing_key(path: &Path) -> anyhow::Result<PrekeySigningKey> {
    warn_if_readable_by_others(path)?;
    let pem = Zeroizing::new(
        std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?,
    );
    PrekeySigningKey::from_pkcs8_pem(&pem)
        .with_context(|| format!("loading the prekey signing key in {}", path.display()))
}

/// Where `oracle-calls key import` reads the secret from.
#[derive(Clone, Debug)]
pub enum SecretSource {
    /// A file (checked for owner-only permissions).
    File(PathBuf),
    /// Standard input.
    Stdin,
}

impl SecretSource {
    /// `-` is standard input; anything else a file.
    pub fn from_arg(arg: &Path) -> Self {
        if arg.as_os_str() == "-" {
            Self::Stdin
        } else {
            Self::File(arg.to_path_buf())
        }
    }
}

/// The most an input may hold: 64 hex characters, `0x`, and generous whitespace.
const MAX_SECRET_INPUT: u64 = 1024;

/// Reads a raw secp256k1 secret — exactly 32 bytes, or 64 hex characters (an optional `0x`
/// and surrounding whitespace allowed) — and makes the `ecies-secp256k1` key pair of it.
/// Every buffer that held the secret is zeroized.
///
/// # Errors
/// Unreadable input, not 32 bytes / 64 hex characters, or not a valid secp256k1 secret.
pub fn import_secp256k1(source: &SecretSource) -> anyhow::Result<OracleKeyPair> {
    let mut input = Zeroizing::new(Vec::new());
    let what = match source {
        SecretSource::File(path) => {
            warn_if_readable_by_others(path)?;
            std::fs::File::open(path)
                .and_then(|f| f.take(MAX_SECRET_INPUT + 1).read_to_end(&mut input))
                .with_context(|| format!("reading {}", path.display()))?;
            path.display().to_string()
        }
        SecretSource::Stdin => {
            std::io::stdin()
                .take(MAX_SECRET_INPUT + 1)
                .read_to_end(&mut input)
                .context("reading the secret from standard input")?;
            "standard input".to_owned()
        }
    };
    let secret = parse_secret(&input).with_context(|| format!("the secret in {what}"))?;
    OracleKeyPair::from_secp256k1_bytes(&secret)
        .with_context(|| format!("the secret in {what} is not a secp256k1 private key"))
}

/// 32 raw bytes, or 64 hex characters. Never puts the input into an error.
fn parse_secret(input: &[u8]) -> anyhow::Result<Zeroizing<[u8; 32]>> {
    let mut out = Zeroizing::new([0u8; 32]);
    if input.len() == 32 {
        out.copy_from_slice(input);
        return Ok(out);
    }
    if input.len() as u64 > MAX_SECRET_INPUT {
        bail!("expected 32 raw bytes or 64 hex characters; the input is longer");
    }
    let text = input.trim_ascii();
    let text = text
        .strip_prefix(b"0x")
        .or_else(|| text.strip_prefix(b"0X"))
        .unwrap_or(text);
    if text.len() != 64 {
        bail!(
            "expected 32 raw bytes or 64 hex characters, found {} bytes",
            input.len()
        );
    }
    for (o, pair) in out.iter_mut().zip(text.chunks_exact(2)) {
        let (Some(hi), Some(lo)) = (
            pair.first().copied().and_then(nibble),
            pair.get(1).copied().and_then(nibble),
        ) else {
            bail!("expected 32 raw bytes or 64 hex characters; the text is not hex");
        };
        *o = (hi << 4) | lo;
    }
    Ok(out)
}

fn nibble(c: u8) -> Option<u8> {
    match c {
        b'0'..=b'9' => Some(c - b'0'),
        b'a'..=b'f' => Some(c - b'a' + 10),
        b'A'..=b'F' => Some(c - b'A' + 10),
        _ => None,
    }
}

/// `.<name>.tmp-<pid>-<random>` next to `path`.
fn temp_path(path: &Path) -> PathBuf {
    use rand::RngExt as _;
    let dir = path
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    let tag: u64 = rand::rng().random();
    dir.join(format!(
        ".{}.tmp-{}-{tag:016x}",
        path.file_name()
            .and_then(|n| n.to_str())
            .unwrap_or("oracle-key"),
        std::process::id()
    ))
}

/// Gives the written temporary file its final name.
fn publish(tmp: &Path, path: &Path, force: bool) -> anyhow::Result<()> {
    if force {
        return std::fs::rename(tmp, path)
            .with_context(|| format!("moving the key to {}", path.display()));
    }
    match std::fs::hard_link(tmp, path) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => bail!(
            "{} already exists; pass --force to replace it",
            path.display()
        ),
        Err(e) => Err(e).with_context(|| format!("linking the key to {}", path.display())),
    }
}

fn warn_if_readable_by_others(path: &Path) -> anyhow::Result<()> {
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt as _;
        let meta =
            std::fs::metadata(path).with_context(|| format!("reading {}", path.display()))?;
        if meta.permissions().mode() & 0o077 != 0 {
            tracing::warn!(path = %path.display(), "private key file is readable by other users; chmod 600 it");
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn secrets_parse_as_raw_bytes_or_hex_and_errors_hold_no_secret() {
        let raw = [0x5au8; 32];
        assert_eq!(*parse_secret(&raw).unwrap(), raw);
        let hex = "5a".repeat(32);
        assert_eq!(*parse_secret(hex.as_bytes()).unwrap(), raw);
        assert_eq!(
            *parse_secret(format!("  0x{}\n", hex.to_uppercase()).as_bytes()).unwrap(),
            raw
        );
        let bad = format!("{}zz", "5a".repeat(31));
        let e = format!("{:#}", parse_secret(bad.as_bytes()).unwrap_err());
        assert!(e.contains("not hex") && !e.contains("5a5a"), "{e}");
        let e = format!("{:#}", parse_secret(&[1u8; 31]).unwrap_err());
        assert!(e.contains("found 31 bytes"), "{e}");
        assert!(parse_secret(&vec![b'a'; 2000]).is_err());
    }
}

//! Reading and writing oracle private key files (PKCS#8 PEM, owner-only).

use std::io::Write as _;
use std::path::Path;

use anyhow::{Context as _, bail};
use oracle_calls_crypto::OracleKeyPair;

/// Writes the private key with mode 0600, created atomically (a temporary file in the same
/// directory, then a rename), refusing to replace an existing file unless `force`.
pub fn write_private_key(path: &Path, kp: &OracleKeyPair, force: bool) -> anyhow::Result<()> {
    if path.exists() && !force {
        bail!(
            "{} already exists; pass --force to replace it",
            path.display()
        );
    }
    let pem = kp.to_pkcs8_pem().context("encoding the private key")?;
    let dir = path
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    let tmp = dir.join(format!(
        ".{}.tmp-{}",
        path.file_name()
            .and_then(|n| n.to_str())
            .unwrap_or("oracle-key"),
        std::process::id()
    ));
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
    f.write_all(pem.as_bytes())
        .and_then(|()| f.sync_all())
        .with_context(|| format!("writing {}", tmp.display()))?;
    std::fs::rename(&tmp, path).with_context(|| format!("moving the key to {}", path.display()))?;
    Ok(())
}

/// Reads a private key file, warning when other users can read it.
pub fn read_private_key(path: &Path) -> anyhow::Result<OracleKeyPair> {
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt as _;
        let meta =
            std::fs::metadata(path).with_context(|| format!("reading {}", path.display()))?;
        if meta.permissions().mode() & 0o077 != 0 {
            tracing::warn!(path = %path.display(), "private key file is readable by other users; chmod 600 it");
        }
    }
    let pem = zeroize::Zeroizing::new(
        std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?,
    );
    OracleKeyPair::from_pkcs8_pem(&pem)
        .with_context(|| format!("loading the key in {}", path.display()))
}

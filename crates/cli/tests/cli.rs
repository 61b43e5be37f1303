//! The binary as a person uses it.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]

use std::process::Command;

fn bin() -> Command {
    Command::new(env!("CARGO_BIN_EXE_oracle-calls"))
}

#[test]
fn demo_passes_for_every_scheme() {
    for scheme in [
        "hpke-p256",
        "hpke-x25519",
        "rsa-oaep-256",
        "ecies-secp256k1",
    ] {
        let out = bin()
            .args(["walkthrough", "--scheme", scheme])
            .output()
            .unwrap();
        let stdout = String::from_utf8_lossy(&out.stdout);
        assert!(
            out.status.success(),
            "{scheme}: {stdout}\n{}",
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(stdout.contains("all checks passed"), "{stdout}");
        assert!(stdout.contains("refused in another call"), "{stdout}");
    }
}

#[test]
fn keygen_writes_owner_only_and_refuses_to_overwrite() {
    use std::os::unix::fs::PermissionsExt as _;
    let dir = std::env::temp_dir().join(format!("oc-cli-test-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("oracle.pem");
    let _ = std::fs::remove_file(&path);
    let out = bin()
        .args(["keygen", "--scheme", "hpke-x25519", "--out"])
        .arg(&path)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let stdout = String::from_utf8_lossy(&out.stdout).to_string();
    assert!(
        !stdout.contains("PRIVATE"),
        "the private key must never be printed"
    );
    let mode = std::fs::metadata(&path).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o600);
    let pem = std::fs::read_to_string(&path).unwrap();
    assert!(pem.starts_with("-----BEGIN PRIVATE KEY-----"));

    let again = bin().args(["keygen", "--out"]).arg(&path).output().unwrap();
    assert!(!again.status.success());
    assert!(String::from_utf8_lossy(&again.stderr).contains("already exists"));
    assert_eq!(
        std::fs::read_to_string(&path).unwrap(),
        pem,
        "nothing was overwritten"
    );

    let info = bin()
        .args(["key-info", "--key"])
        .arg(&path)
        .output()
        .unwrap();
    assert!(info.status.success());
    let info = String::from_utf8_lossy(&info.stdout);
    let key_id_line = stdout.lines().find(|l| l.starts_with("key id:")).unwrap();
    assert!(info.contains(key_id_line), "{info}");
    assert!(info.contains("hpke-x25519"));
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn bad_input_gets_a_readable_error() {
    let out = bin()
        .args(["walkthrough", "--scheme", "rot13"])
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("expected one of: hpke-p256"));
    let dir = std::env::temp_dir().join(format!("oc-cli-bad-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("junk.pem");
    std::fs::write(&path, "not a key").unwrap();
    let out = bin()
        .args(["key-info", "--key"])
        .arg(&path)
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("loading the key") && err.contains("PEM"),
        "{err}"
    );
    std::fs::remove_dir_all(&dir).unwrap();
}

//! The lab's binary as a person uses it: the crypto walkthrough, and the product's commands it
//! runs for the processes it starts.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]

use std::process::Command;

fn bin() -> Command {
    Command::new(env!("CARGO_BIN_EXE_oracle-lab"))
}

#[test]
fn walkthrough_passes_for_every_scheme() {
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
fn a_bad_scheme_gets_a_readable_error() {
    let out = bin()
        .args(["walkthrough", "--scheme", "rot13"])
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("expected one of: hpke-p256"));
}

#[test]
fn the_lab_runs_the_products_commands() {
    // `oracle-lab keygen` is the product's keygen: the same output and file as
    // `oracle-calls keygen` (crates/cli/tests/cli.rs checks that one in full).
    let dir = std::env::temp_dir().join(format!("oc-lab-cli-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("oracle.pem");
    let _ = std::fs::remove_file(&path);
    let out = bin()
        .args(["keygen", "--scheme", "hpke-p256", "--out"])
        .arg(&path)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(stdout.contains("scheme:     hpke-p256"), "{stdout}");
    let pem = std::fs::read_to_string(&path).unwrap();
    assert!(pem.starts_with("-----BEGIN PRIVATE KEY-----"));
    let help = bin().arg("--help").output().unwrap();
    let help = String::from_utf8_lossy(&help.stdout);
    for command in ["demo", "bench", "web", "serve", "agent", "kt"] {
        assert!(help.contains(command), "`{command}` missing from:\n{help}");
    }
    std::fs::remove_dir_all(&dir).unwrap();
}

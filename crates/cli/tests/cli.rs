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
fn the_product_binary_has_no_lab_commands() {
    // The demo, the walkthrough, the benchmarks and the web page are the lab's (`oracle-lab`).
    for command in ["demo", "walkthrough", "bench", "web", "up", "load"] {
        let out = bin().arg(command).output().unwrap();
        assert!(!out.status.success(), "`oracle-calls {command}` ran");
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(err.contains("unrecognized subcommand"), "{command}: {err}");
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
        .args(["keygen", "--scheme", "rot13", "--out", "/nonexistent/k.pem"])
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

fn scratch(tag: &str) -> std::path::PathBuf {
    let dir = std::env::temp_dir().join(format!("oc-cli-{tag}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

fn key_id_line(stdout: &[u8]) -> String {
    String::from_utf8_lossy(stdout)
        .lines()
        .find(|l| l.starts_with("key id:"))
        .unwrap()
        .to_owned()
}

/// Names in `dir` other than `keep`: temporary files left behind.
fn leftovers(dir: &std::path::Path, keep: &[&str]) -> Vec<String> {
    std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| !keep.contains(&n.as_str()))
        .collect()
}

#[test]
fn keygen_force_overwrites_and_nothing_in_the_way_is_ever_replaced() {
    use std::os::unix::fs::PermissionsExt as _;
    let dir = scratch("force");
    let path = dir.join("oracle.pem");
    let first = bin().args(["keygen", "--out"]).arg(&path).output().unwrap();
    assert!(first.status.success());
    let pem = std::fs::read_to_string(&path).unwrap();

    // --force replaces it with a new key, still owner-only, and leaves no temporary file.
    let forced = bin()
        .args(["keygen", "--force", "--out"])
        .arg(&path)
        .output()
        .unwrap();
    assert!(
        forced.status.success(),
        "{}",
        String::from_utf8_lossy(&forced.stderr)
    );
    assert_ne!(std::fs::read_to_string(&path).unwrap(), pem);
    assert_ne!(key_id_line(&first.stdout), key_id_line(&forced.stdout));
    let mode = std::fs::metadata(&path).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o600);
    assert_eq!(leftovers(&dir, &["oracle.pem"]), Vec::<String>::new());

    // Something that appears under the name after any check (here a dangling symlink, which
    // `exists()` does not see) is not replaced: the key is published with a link that fails if
    // the name is taken, not with a rename over it.
    let link = dir.join("taken.pem");
    std::os::unix::fs::symlink(dir.join("nowhere"), &link).unwrap();
    let refused = bin().args(["keygen", "--out"]).arg(&link).output().unwrap();
    assert!(!refused.status.success());
    assert!(
        String::from_utf8_lossy(&refused.stderr).contains("already exists"),
        "{}",
        String::from_utf8_lossy(&refused.stderr)
    );
    assert_eq!(
        std::fs::read_link(&link).unwrap(),
        dir.join("nowhere"),
        "the link is untouched"
    );
    assert!(!dir.join("nowhere").exists(), "nothing written through it");
    assert_eq!(
        leftovers(&dir, &["oracle.pem", "taken.pem"]),
        Vec::<String>::new(),
        "the temporary file is removed on failure"
    );
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn loading_a_key_others_can_read_warns() {
    use std::os::unix::fs::PermissionsExt as _;
    let dir = scratch("perm");
    let path = dir.join("oracle.pem");
    assert!(
        bin()
            .args(["keygen", "--out"])
            .arg(&path)
            .output()
            .unwrap()
            .status
            .success()
    );
    let info = || {
        let out = bin()
            .args(["key-info", "--key"])
            .arg(&path)
            .output()
            .unwrap();
        assert!(out.status.success());
        String::from_utf8_lossy(&out.stderr).into_owned()
    };
    assert!(!info().contains("readable by other users"));
    for mode in [0o640, 0o604] {
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(mode)).unwrap();
        let err = info();
        assert!(
            err.contains("readable by other users") && err.contains("chmod 600"),
            "{mode:o}: {err}"
        );
    }
    std::fs::remove_dir_all(&dir).unwrap();
}

/// Runs a generator of crates/crypto/tests/vectors/gen (Python `cryptography`, npm `eciesjs`).
fn independent(program: &str, script: &str, input: &serde_json::Value) -> serde_json::Value {
    use std::io::Write as _;
    let gen_dir = concat!(env!("CARGO_MANIFEST_DIR"), "/../crypto/tests/vectors/gen");
    if program == "node" {
        assert!(
            std::path::Path::new(&format!("{gen_dir}/node_modules/eciesjs")).exists(),
            "eciesjs is not installed: run `npm ci` in {gen_dir} (scripts/test does it)"
        );
    }
    let mut child = Command::new(program)
        .arg(format!("{gen_dir}/{script}"))
        .current_dir(gen_dir)
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    child
        .stdin
        .take()
        .unwrap()
        .write_all(input.to_string().as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "{script}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).unwrap()
}

/// An ixo oracle's raw secp256k1 secret becomes the PKCS#8 file the agent loads: its public
/// key is what Python `cryptography` and `eciesjs` derive from the same secret, and it opens
/// what `eciesjs` sealed to that oracle. The secret is read from a file or standard input.
#[test]
fn key_import_turns_a_raw_secp256k1_secret_into_the_agents_key_file() {
    use std::io::Write as _;
    use std::os::unix::fs::{OpenOptionsExt as _, PermissionsExt as _};

    use base64::Engine as _;
    use rand::RngExt as _;
    let dir = scratch("import");
    let secret: [u8; 32] = rand::rng().random();
    let secret_hex = base16(&secret);
    let secret_file = dir.join("ixo-oracle.key");
    std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(&secret_file)
        .unwrap()
        .write_all(format!("{secret_hex}\n").as_bytes())
        .unwrap();
    let out = dir.join("oracle.pem");
    let imported = bin()
        .args(["key", "import", "--secp256k1-file"])
        .arg(&secret_file)
        .arg("--out")
        .arg(&out)
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&imported.stdout).into_owned();
    let stderr = String::from_utf8_lossy(&imported.stderr).into_owned();
    assert!(imported.status.success(), "{stderr}");
    assert!(stdout.contains("ecies-secp256k1"), "{stdout}");
    for text in [&stdout, &stderr] {
        assert!(!text.contains(&secret_hex) && !text.contains("PRIVATE"));
    }
    let mode = std::fs::metadata(&out).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o600);
    let kp =
        oracle_calls_crypto::OracleKeyPair::from_pkcs8_pem(&std::fs::read_to_string(&out).unwrap())
            .unwrap();
    assert_eq!(kp.scheme(), oracle_calls_crypto::KeyScheme::EciesSecp256k1);

    // What independent implementations derive from the same secret.
    let py = independent(
        "python3",
        "secp256k1_public.py",
        &serde_json::json!({ "secret_hex": secret_hex }),
    );
    let call_keys: Vec<[u8; 32]> = (0..2).map(|_| rand::rng().random()).collect();
    let js = independent(
        "node",
        "seal_legacy_ecies.mjs",
        &serde_json::json!({
            "secret_hex": secret_hex,
            "call_keys_hex": call_keys.iter().map(|k| base16(k)).collect::<Vec<_>>(),
        }),
    );
    let printed = stdout
        .lines()
        .find_map(|l| l.strip_prefix("public key: "))
        .unwrap()
        .trim();
    let printed = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(printed)
        .unwrap();
    assert_eq!(
        base16(&printed),
        py["public_compressed_hex"].as_str().unwrap()
    );
    assert_eq!(
        base16(&printed),
        js["public_compressed_hex"].as_str().unwrap()
    );
    assert_eq!(base16(&kp.public_key().to_raw()), base16(&printed));
    assert_eq!(
        key_id_line(&imported.stdout),
        format!("key id:     {}", py["key_id"].as_str().unwrap())
    );
    for (key, env) in call_keys.iter().zip(js["envelopes"].as_array().unwrap()) {
        let env = oracle_calls_crypto::KeyEnvelope::parse(env.as_str().unwrap()).unwrap();
        let opened = oracle_calls_crypto::open_legacy(&kp, &env).unwrap();
        assert!(opened.ct_eq(&oracle_calls_crypto::CallKey::from_bytes(*key)));
    }

    // It never replaces a file; standard input with the 32 raw bytes gives the same key.
    let again = bin()
        .args(["key", "import", "--secp256k1-file"])
        .arg(&secret_file)
        .arg("--out")
        .arg(&out)
        .output()
        .unwrap();
    assert!(!again.status.success());
    assert!(String::from_utf8_lossy(&again.stderr).contains("already exists"));
    let out2 = dir.join("from-stdin.pem");
    let mut child = bin()
        .args(["key", "import", "--secp256k1-file", "-", "--out"])
        .arg(&out2)
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    child.stdin.take().unwrap().write_all(&secret).unwrap();
    let from_stdin = child.wait_with_output().unwrap();
    assert!(from_stdin.status.success());
    assert_eq!(
        key_id_line(&from_stdin.stdout),
        key_id_line(&imported.stdout)
    );

    // Not a secret: a readable error that does not echo the input.
    let junk = dir.join("junk");
    std::fs::write(&junk, "z".repeat(64)).unwrap();
    let bad = bin()
        .args(["key", "import", "--secp256k1-file"])
        .arg(&junk)
        .arg("--out")
        .arg(dir.join("never.pem"))
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&bad.stderr);
    assert!(
        !bad.status.success() && err.contains("not hex") && !err.contains("zzzz"),
        "{err}"
    );
    assert!(!dir.join("never.pem").exists());
    std::fs::remove_dir_all(&dir).unwrap();
}

fn base16(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

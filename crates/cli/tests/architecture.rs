//! The dependency rules of STYLE.md §1, checked against `cargo metadata`, so they fail the
//! build the day someone breaks them.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]

use std::collections::{BTreeSet, HashMap};
use std::process::Command;

use serde_json::Value;

fn metadata() -> Value {
    let out = Command::new(env!("CARGO"))
        .args(["metadata", "--format-version", "1"])
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).unwrap()
}

/// Names of every package in the normal (non-dev, non-build) dependency closure of `name`.
fn normal_closure(meta: &Value, name: &str) -> Option<BTreeSet<String>> {
    let packages: HashMap<&str, &str> = meta["packages"]
        .as_array()?
        .iter()
        .map(|p| (p["id"].as_str().unwrap(), p["name"].as_str().unwrap()))
        .collect();
    let nodes: HashMap<&str, &Value> = meta["resolve"]["nodes"]
        .as_array()?
        .iter()
        .map(|n| (n["id"].as_str().unwrap(), n))
        .collect();
    let root = packages.iter().find(|(_, n)| **n == name)?.0;
    let mut seen = BTreeSet::new();
    let mut stack = vec![*root];
    while let Some(id) = stack.pop() {
        for dep in nodes[id]["deps"].as_array().unwrap() {
            let normal = dep["dep_kinds"]
                .as_array()
                .unwrap()
                .iter()
                .any(|k| k["kind"].is_null());
            let pkg = dep["pkg"].as_str().unwrap();
            if normal && seen.insert(packages[pkg].to_owned()) {
                stack.push(pkg);
            }
        }
    }
    Some(seen)
}

#[test]
fn server_never_links_the_crypto_crate() {
    let meta = metadata();
    // The server crate arrives with its issue; until then this checks every workspace
    // member whose name says it is a server.
    for p in meta["packages"].as_array().unwrap() {
        let name = p["name"].as_str().unwrap();
        if name.contains("server") && p["source"].is_null() {
            let deps = normal_closure(&meta, name).unwrap();
            assert!(
                !deps.contains("oracle-calls-crypto"),
                "{name} depends on oracle-calls-crypto"
            );
        }
    }
    // And the check itself works: the CLI does link it.
    assert!(
        normal_closure(&meta, "oracle-calls")
            .unwrap()
            .contains("oracle-calls-crypto")
    );
}

#[test]
fn proto_and_crypto_do_no_io() {
    let meta = metadata();
    let forbidden = [
        "tokio",
        "mio",
        "reqwest",
        "hyper",
        "async-std",
        "socket2",
        "tracing-subscriber",
    ];
    for krate in [
        "oracle-calls-proto",
        "oracle-calls-crypto",
        "oracle-calls-media",
    ] {
        let deps = normal_closure(&meta, krate).unwrap();
        for f in forbidden {
            assert!(!deps.contains(f), "{krate} pulls in {f}");
        }
    }
    let crypto = normal_closure(&meta, "oracle-calls-crypto").unwrap();
    assert!(
        !crypto.contains("rsa"),
        "RSA decryption must go through aws-lc-rs (RUSTSEC-2023-0071)"
    );
    assert!(
        !normal_closure(&meta, "oracle-calls-proto")
            .unwrap()
            .contains("oracle-calls-crypto")
    );
}

#[test]
fn key_transparency_never_links_the_crypto_crate() {
    let meta = metadata();
    // Neither the verify side nor the directory (with whatever features the workspace
    // resolves for it) can open a call key.
    let deps = normal_closure(&meta, "oracle-calls-kt").unwrap();
    assert!(
        !deps.contains("oracle-calls-crypto"),
        "oracle-calls-kt depends on oracle-calls-crypto"
    );
    assert!(deps.contains("akd_core"), "the check looks at the kt crate");
}

#[test]
fn the_product_never_depends_on_the_lab() {
    let meta = metadata();
    // Not through its own normal dependencies…
    let deps = normal_closure(&meta, "oracle-calls").unwrap();
    assert!(
        !deps.contains("oracle-calls-lab"),
        "oracle-calls depends on oracle-calls-lab"
    );
    // …nor as a dev- or build-dependency of the product's package.
    let product = meta["packages"]
        .as_array()
        .unwrap()
        .iter()
        .find(|p| p["name"] == "oracle-calls")
        .unwrap();
    for dep in product["dependencies"].as_array().unwrap() {
        assert_ne!(
            dep["name"], "oracle-calls-lab",
            "oracle-calls names oracle-calls-lab as a {} dependency",
            dep["kind"]
        );
    }
    // And the check itself works: the lab does depend on the product.
    assert!(
        normal_closure(&meta, "oracle-calls-lab")
            .unwrap()
            .contains("oracle-calls")
    );
}

#[test]
fn audio_code_lives_in_the_media_crate_only() {
    let meta = metadata();
    // The LiveKit client and the direct mode take Opus from the media crate: neither declares
    // libopus itself…
    for name in ["oracle-calls-rtc", "oracle-calls-direct"] {
        let package = meta["packages"]
            .as_array()
            .unwrap()
            .iter()
            .find(|p| p["name"] == name)
            .unwrap();
        let declared: BTreeSet<&str> = package["dependencies"]
            .as_array()
            .unwrap()
            .iter()
            .map(|d| d["name"].as_str().unwrap())
            .collect();
        assert!(declared.contains("oracle-calls-media"), "{name}");
        assert!(!declared.contains("opus"), "{name} uses opus directly");
    }
    // …and the media crate knows nothing of LiveKit, str0m or the call key.
    let media = normal_closure(&meta, "oracle-calls-media").unwrap();
    for f in [
        "oracle-calls-rtc",
        "str0m",
        "livekit-protocol",
        "oracle-calls-crypto",
    ] {
        assert!(!media.contains(f), "oracle-calls-media pulls in {f}");
    }
    assert!(media.contains("opus"), "the check looks at the media crate");
}

#[test]
fn device_audio_lives_in_the_device_crate_only() {
    let meta = metadata();
    // The sound card is IO: the sans-IO crates (and the media crate, which turns frames into
    // Opus and back) never link cpal…
    for name in [
        "oracle-calls-proto",
        "oracle-calls-crypto",
        "oracle-calls-media",
        "oracle-calls-direct",
        "oracle-calls-rtc",
        "oracle-calls-server",
    ] {
        let deps = normal_closure(&meta, name).unwrap();
        assert!(!deps.contains("cpal"), "{name} pulls in cpal");
    }
    // …and the device crate is audio IO only: frames in and out, no keys, no calls.
    let device = normal_closure(&meta, "oracle-calls-device").unwrap();
    for f in [
        "oracle-calls-crypto",
        "oracle-calls-direct",
        "oracle-calls-rtc",
        "oracle-calls-client",
        "tokio",
    ] {
        assert!(!device.contains(f), "oracle-calls-device pulls in {f}");
    }
    assert!(
        device.contains("cpal"),
        "the check looks at the device crate"
    );
    assert!(device.contains("oracle-calls-media"));
}

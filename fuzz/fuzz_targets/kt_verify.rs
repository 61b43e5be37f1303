//! Key-transparency verification of what a directory sends (crates/kt, sans-IO verify side):
//! lookup and key-history proofs (akd protobuf), their JSON responses, signed checkpoints and
//! the record encoding. Never panics; nothing verifies unless a real directory produced it,
//! and then it yields exactly what that directory published; whatever parses re-serializes to
//! an equal value; a record decodes only from its one canonical encoding.
//!
//! The directory is the one behind crates/kt/tests/vectors/kt_lookup.json (a real akd
//! directory with fixed keys: three oracles over four epochs). Its genuine answers are the
//! seeds (fuzz/seeds/kt_verify, written by fuzz/seeds/gen_kt_seeds.py), so the fuzzer mutates
//! proofs that verify.
//!
//! Input: one byte `b`: mode `b % 6`, DID `b / 6` (index into the vectors' DIDs, sorted);
//! modes 0 and 1 then take one byte, the checkpoint (index into the vectors' top-level
//! `checkpoints`, sorted by epoch, root hash, signature), then the proof's protobuf bytes.
#![no_main]

use std::collections::{BTreeMap, BTreeSet};
use std::sync::OnceLock;

use libfuzzer_sys::fuzz_target;
use oracle_calls_kt::{
    AuditProof, DirectoryPublicKey, HistoryProof, HistoryResponse, LookupProof, LookupResponse,
    OracleRecord, SignedCheckpoint, VerifiedRecord, verify_checkpoint, verify_history,
    verify_lookup,
};
use oracle_calls_proto::Did;
use serde_json::Value;

const VECTORS: &str = include_str!("../../crates/kt/tests/vectors/kt_lookup.json");

/// A checkpoint's identity, for maps and sorting.
type CpKey = (u64, [u8; 32], Vec<u8>);

fn cp_key(s: &SignedCheckpoint) -> CpKey {
    (
        s.checkpoint.epoch,
        s.checkpoint.root_hash,
        s.signature.to_vec(),
    )
}

struct Fixture {
    directory: DirectoryPublicKey,
    dids: Vec<Did>,
    /// The directory's checkpoints (epochs 0 to 4), for the raw proof modes.
    checkpoints: Vec<SignedCheckpoint>,
    /// Every checkpoint in the vectors' answers that the directory really signed.
    signed: Vec<SignedCheckpoint>,
    /// What a genuine lookup answer for (DID, checkpoint) proves.
    lookups: BTreeMap<(String, CpKey), VerifiedRecord>,
    /// What a genuine key-history answer for (DID, checkpoint) proves, newest first.
    histories: BTreeMap<(String, CpKey), Vec<VerifiedRecord>>,
}

fn record(v: &Value) -> OracleRecord {
    serde_json::from_value(v.clone()).expect("a record in the vectors")
}

fn verified(v: &Value, record_v: &Value) -> VerifiedRecord {
    VerifiedRecord {
        record: record(record_v),
        epoch: v["epoch"].as_u64().unwrap(),
        version: v["version"].as_u64().unwrap(),
    }
}

fn fixture() -> &'static Fixture {
    static F: OnceLock<Fixture> = OnceLock::new();
    F.get_or_init(|| {
        let v: Value = serde_json::from_str(VECTORS).unwrap();
        let directory: DirectoryPublicKey =
            serde_json::from_value(v["directoryPublicKey"].clone()).unwrap();
        let mut dids = BTreeSet::new();
        let mut checkpoints = BTreeMap::new();
        for c in v["checkpoints"].as_array().unwrap() {
            let s: SignedCheckpoint = serde_json::from_value(c.clone()).unwrap();
            checkpoints.insert(cp_key(&s), s);
        }
        let mut signed = checkpoints.clone();
        let mut lookups = BTreeMap::new();
        let mut histories = BTreeMap::new();
        let mut lookup_bodies = Vec::new();
        let mut history_bodies = Vec::new();
        for (list, is_history) in [(&v["cases"], false), (&v["histories"], true)] {
            for case in list.as_array().unwrap() {
                let did = case["did"].as_str().unwrap().to_owned();
                dids.insert(did.clone());
                let body = case["body"].as_str().unwrap().as_bytes().to_vec();
                let parsed: Option<SignedCheckpoint> = serde_json::from_slice::<Value>(&body)
                    .ok()
                    .and_then(|b| serde_json::from_value(b["checkpoint"].clone()).ok());
                if let Some(s) = &parsed
                    && verify_checkpoint(s, &directory).is_ok()
                {
                    signed.insert(cp_key(s), s.clone());
                }
                let expect = &case["expect"];
                if expect["ok"].as_bool() == Some(true) {
                    let key = (
                        did.clone(),
                        cp_key(&parsed.expect("an accepted answer parses")),
                    );
                    if is_history {
                        let versions = expect["versions"]
                            .as_array()
                            .unwrap()
                            .iter()
                            .map(|x| verified(x, &x["record"]))
                            .collect();
                        histories.insert(key, versions);
                    } else {
                        lookups.insert(key, verified(expect, &expect["record"]));
                    }
                }
                if is_history {
                    history_bodies.push((did, body));
                } else {
                    lookup_bodies.push((did, body));
                }
            }
        }
        let f = Fixture {
            directory,
            dids: dids.iter().map(|d| Did::parse(d).unwrap()).collect(),
            checkpoints: checkpoints.into_values().collect(),
            signed: signed.into_values().collect(),
            lookups,
            histories,
        };
        // Every answer in the vectors that verifies on its own is in the tables: otherwise a
        // genuine proof found by mutation would be taken for a forgery.
        for (did, body) in &lookup_bodies {
            check_lookup_json(&f, &Did::parse(did).unwrap(), body);
        }
        for (did, body) in &history_bodies {
            check_history_json(&f, &Did::parse(did).unwrap(), body);
        }
        assert!(!f.lookups.is_empty() && !f.histories.is_empty());
        f
    })
}

fn check_lookup(f: &Fixture, did: &Did, signed: &SignedCheckpoint, proof: &LookupProof) {
    if let Ok(got) = verify_lookup(&f.directory, signed, did, proof) {
        let want = f.lookups.get(&(did.as_str().to_owned(), cp_key(signed)));
        assert_eq!(
            Some(&got),
            want,
            "a lookup proof verified to something never published"
        );
    }
}

fn check_history(f: &Fixture, did: &Did, signed: &SignedCheckpoint, proof: &HistoryProof) {
    if let Ok(got) = verify_history(&f.directory, signed, did, proof) {
        let want = f.histories.get(&(did.as_str().to_owned(), cp_key(signed)));
        assert_eq!(
            Some(got.versions()),
            want.map(Vec::as_slice),
            "a forged history verified"
        );
        assert_eq!(got.latest(), got.versions().first());
    }
}

fn check_lookup_json(f: &Fixture, did: &Did, body: &[u8]) {
    if let Ok(r) = LookupResponse::from_json(body) {
        round_trip(&r);
        check_lookup(f, did, &r.checkpoint, &r.proof);
    }
}

fn check_history_json(f: &Fixture, did: &Did, body: &[u8]) {
    if let Ok(r) = HistoryResponse::from_json(body) {
        round_trip(&r);
        check_history(f, did, &r.checkpoint, &r.proof);
    }
}

fn round_trip<T>(v: &T)
where
    T: serde::de::DeserializeOwned + serde::Serialize + PartialEq + std::fmt::Debug,
{
    let text = serde_json::to_vec(v).expect("serializes");
    let back: T = serde_json::from_slice(&text).expect("re-parses");
    assert_eq!(&back, v);
}

fn parse_round_trip<T>(data: &[u8]) -> Option<T>
where
    T: serde::de::DeserializeOwned + serde::Serialize + PartialEq + std::fmt::Debug,
{
    let v = serde_json::from_slice::<T>(data).ok()?;
    round_trip(&v);
    Some(v)
}

fuzz_target!(|data: &[u8]| {
    let f = fixture();
    let Some((&b, rest)) = data.split_first() else {
        return;
    };
    let did = &f.dids[usize::from(b / 6) % f.dids.len()];
    match b % 6 {
        0 | 1 => {
            let Some((&c, proof)) = rest.split_first() else {
                return;
            };
            let signed = &f.checkpoints[usize::from(c) % f.checkpoints.len()];
            if b % 6 == 0 {
                check_lookup(f, did, signed, &LookupProof::from_bytes(proof.to_vec()));
            } else {
                check_history(f, did, signed, &HistoryProof::from_bytes(proof.to_vec()));
            }
        }
        2 => check_lookup_json(f, did, rest),
        3 => check_history_json(f, did, rest),
        // The record's canonical encoding: one record, one encoding.
        4 => {
            if let Ok(r) = OracleRecord::from_bytes(rest) {
                assert_eq!(
                    r.to_bytes(),
                    rest,
                    "a record decoded from a non-canonical encoding"
                );
                round_trip(&r);
            }
        }
        // The other JSON a verifier or auditor reads.
        _ => {
            if let Some(s) = parse_round_trip::<SignedCheckpoint>(rest)
                && verify_checkpoint(&s, &f.directory).is_ok()
            {
                assert!(f.signed.contains(&s), "a forged checkpoint verified");
            }
            if let Some(r) = parse_round_trip::<OracleRecord>(rest) {
                assert_eq!(
                    OracleRecord::from_bytes(&r.to_bytes()).ok().as_ref(),
                    Some(&r)
                );
            }
            let _ = parse_round_trip::<DirectoryPublicKey>(rest);
            let _ = parse_round_trip::<AuditProof>(rest);
        }
    }
});

//! Checked-in custody-proof test vectors (`tests/vectors/custody/`): a genesis, a valid bundle
//! and invalid variants, with the expected hashes and verdicts in `expected.json`.
//!
//! The vectors are deterministic (fixed keys, fixed times, deterministic ed25519), so this test
//! both re-derives them and checks the files: a change to any hash or encoding shows up here.
//! Regenerate after an intentional format change with
//! `WASTELEDGER_WRITE_VECTORS=1 cargo test -p wasteledger-tests --test custody_vectors`.

// Test code: a failed expectation is a test failure with a message.
#![allow(clippy::expect_used)]

use std::collections::BTreeMap;
use std::path::PathBuf;

use prost::Message;
use serde::{Deserialize, Serialize};
use wasteledger_core::entry::{LedgerEntry, leaf_hash};
use wasteledger_core::envelope::event_hash;
use wasteledger_core::genesis::Genesis;
use wasteledger_core::pb;
use wasteledger_core::proof::verify_custody_proof_bytes;
use wasteledger_tests::sample_proof;

#[derive(Serialize, Deserialize, PartialEq, Debug)]
struct EventVector {
    index: u64,
    event_hash: String,
    leaf_hash: String,
}

#[derive(Serialize, Deserialize, PartialEq, Debug)]
struct Expected {
    ledger_id: String,
    tracking_number: String,
    checkpoint_size: u64,
    checkpoint_root: String,
    checkpoint_map_root: String,
    events: Vec<EventVector>,
    /// File name -> "ok" or the failure code.
    verdicts: BTreeMap<String, String>,
}

fn dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("vectors/custody")
}

/// The valid bundle and the invalid variants, by file name.
/// Encoded bundles by file name.
type NamedBundles = Vec<(String, Vec<u8>)>;

fn bundles() -> (Vec<u8>, NamedBundles, Expected) {
    let sample = sample_proof();
    let genesis = sample.net.genesis_bytes.clone();
    let valid = sample.bundle.clone();
    let mut variants: Vec<(String, pb::CustodyProof)> =
        vec![("valid.bundle".into(), valid.clone())];
    let mut push = |name: &str, f: &dyn Fn(&mut pb::CustodyProof)| {
        let mut b = valid.clone();
        f(&mut b);
        variants.push((format!("{name}.bundle"), b));
    };
    push("tampered-event-body", &|b| {
        let e = &mut b.events[3].entry;
        let last = e.len() - 100;
        e[last] ^= 0x01;
    });
    push("dropped-last-event", &|b| {
        b.events.pop();
    });
    push("dropped-middle-event", &|b| {
        b.events.remove(2);
    });
    push("reordered-events", &|b| b.events.swap(1, 2));
    push("duplicated-event", &|b| {
        let e = b.events[1].clone();
        b.events.insert(2, e);
    });
    push("one-cosignature", &|b| {
        let keep: Vec<&str> = b.checkpoint.lines().collect();
        // Body (5 lines), blank line, first signature line only.
        b.checkpoint = keep[..7].join("\n") + "\n";
    });
    push("other-ledger", &|b| b.ledger_id[0] ^= 0xff);
    push("missing-party-history", &|b| {
        b.parties.remove(0);
    });
    push("wrong-inclusion-path", &|b| {
        b.events[0].inclusion_path.swap(0, 1)
    });
    push("stale-head-proof", &|b| {
        b.head = Some(pb::MapProof { siblings: vec![] })
    });
    let encoded: Vec<(String, Vec<u8>)> = variants
        .into_iter()
        .map(|(n, b)| (n, b.encode_to_vec()))
        .collect();

    let parsed = Genesis::from_bytes(&genesis).expect("genesis");
    let events = valid
        .events
        .iter()
        .map(|p| {
            let entry = LedgerEntry::decode(&p.entry).expect("entry");
            EventVector {
                index: entry.index,
                event_hash: event_hash(&parsed.ledger_id, &entry.body).to_hex(),
                leaf_hash: leaf_hash(&p.entry).to_hex(),
            }
        })
        .collect();
    let cp = &sample.checkpoint.checkpoint;
    let verdicts = encoded
        .iter()
        .map(|(name, bytes)| {
            let verdict = match verify_custody_proof_bytes(bytes, &parsed) {
                Ok(_) => "ok".to_owned(),
                Err(e) => e.code().to_owned(),
            };
            (name.clone(), verdict)
        })
        .collect();
    let expected = Expected {
        ledger_id: parsed.ledger_id.to_hex(),
        tracking_number: "cn:20261502000001".into(),
        checkpoint_size: cp.size,
        checkpoint_root: cp.root.to_hex(),
        checkpoint_map_root: cp.map_root.to_hex(),
        events,
        verdicts,
    };
    (genesis, encoded, expected)
}

#[test]
fn custody_vectors_match_and_verdicts_hold() {
    let (genesis, bundles, derived) = bundles();
    if std::env::var_os("WASTELEDGER_WRITE_VECTORS").is_some() {
        std::fs::create_dir_all(dir()).expect("mkdir");
        std::fs::write(dir().join("genesis.pb"), &genesis).expect("write genesis");
        for (name, bytes) in &bundles {
            std::fs::write(dir().join(format!("{name}.pb")), bytes).expect("write bundle");
        }
        let json = serde_json::to_string_pretty(&derived).expect("json") + "\n";
        std::fs::write(dir().join("expected.json"), json).expect("write expected");
    }
    let expected: Expected = serde_json::from_slice(
        &std::fs::read(dir().join("expected.json")).expect("expected.json is checked in"),
    )
    .expect("expected.json parses");
    assert_eq!(
        derived, expected,
        "re-derived vectors differ from tests/vectors/custody/expected.json"
    );
    assert_eq!(
        std::fs::read(dir().join("genesis.pb")).expect("genesis.pb"),
        genesis,
        "genesis bytes changed"
    );
    let parsed = Genesis::from_bytes(&genesis).expect("genesis");
    // The checked-in files themselves must give the recorded verdicts.
    assert_eq!(expected.verdicts.len(), bundles.len());
    for (name, verdict) in &expected.verdicts {
        let bytes = std::fs::read(dir().join(format!("{name}.pb"))).expect("bundle file");
        let got = match verify_custody_proof_bytes(&bytes, &parsed) {
            Ok(_) => "ok".to_owned(),
            Err(e) => e.code().to_owned(),
        };
        assert_eq!(&got, verdict, "{name}");
    }
    assert_eq!(
        expected.verdicts.get("valid.bundle").map(String::as_str),
        Some("ok")
    );
    assert_eq!(
        expected.verdicts.values().filter(|v| *v == "ok").count(),
        1,
        "only the valid bundle verifies"
    );
}

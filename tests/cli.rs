//! End-to-end tests of the `wasteledger` command line: offline commands on their own, and the
//! whole manifest lifecycle against a real three-node cluster (node processes from the test
//! harness), with two parties signing one event from separate key files, a discrepancy corrected
//! with every party's approval, a custody proof downloaded and verified offline, a tampered copy
//! failing with exit 1, JSON output parsed, and bad input failing with exit 2 or 3; and the
//! `cluster` commands adding a running node as a learner and promoting it to voter.
//!
//! Registered as an integration test of the `wasteledger` package so that Cargo builds the
//! binary (`CARGO_BIN_EXE_wasteledger`).

// Test code: a failed expectation is a test failure with a message.
#![allow(clippy::expect_used, clippy::unwrap_used)]

use std::path::{Path, PathBuf};
use std::time::Duration;

use assert_cmd::Command;
use wasteledger_core::sample::ids;
use wasteledger_core::signing::format_secret_key_file;
use wasteledger_tests::cluster::Cluster;

const BIN: &str = env!("CARGO_BIN_EXE_wasteledger");
const NUMBER: &str = "cn:20261502000101";

fn example(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../../docs/examples")
        .join(name)
}

/// A finished command run: exit code and both output streams.
struct Run {
    code: i32,
    stdout: String,
    stderr: String,
}

impl Run {
    fn ok(self) -> Run {
        assert_eq!(
            self.code, 0,
            "stdout: {}\nstderr: {}",
            self.stdout, self.stderr
        );
        self
    }

    fn fails(self, code: i32, needle: &str) -> Run {
        assert_eq!(
            self.code, code,
            "stdout: {}\nstderr: {}",
            self.stdout, self.stderr
        );
        assert!(
            self.stderr.contains(needle) || self.stdout.contains(needle),
            "expected {needle:?} in output\nstdout: {}\nstderr: {}",
            self.stdout,
            self.stderr
        );
        self
    }

    fn json(&self) -> serde_json::Value {
        serde_json::from_str(&self.stdout)
            .unwrap_or_else(|e| panic!("not JSON ({e}): {}", self.stdout))
    }
}

/// Runs the binary in `dir` with the node and genesis set through the environment.
fn wl(dir: &Path, node: &str, args: &[&str]) -> Run {
    let output = Command::new(BIN)
        .current_dir(dir)
        .env("WASTELEDGER_NODE", node)
        .env("WASTELEDGER_GENESIS", dir.join("genesis.pb"))
        .env_remove("RUST_LOG")
        .args(args)
        .timeout(Duration::from_secs(120))
        .output()
        .expect("run wasteledger");
    Run {
        code: output.status.code().unwrap_or(-1),
        stdout: String::from_utf8_lossy(&output.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&output.stderr).into_owned(),
    }
}

#[test]
fn offline_commands_and_bad_input() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let none = "127.0.0.1:1";
    // Keys: 0600, never overwritten, shown as JSON.
    let made = wl(
        d,
        none,
        &["-O", "json", "key", "generate", "a.key", "--party", "GEN-X"],
    )
    .ok();
    let made = made.json();
    let shown = wl(d, none, &["--output", "json", "key", "show", "a.key"])
        .ok()
        .json();
    assert_eq!(made["public_key"], shown["public_key"]);
    assert_eq!(shown["party"], "GEN-X");
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(d.join("a.key"))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600);
    }
    wl(d, none, &["key", "generate", "a.key"]).fails(2, "refusing to overwrite");
    // A genesis from fresh keys.
    let public = |name: &str| {
        wl(d, none, &["key", "generate", name]).ok();
        wl(d, none, &["-O", "json", "key", "show", name])
            .ok()
            .json()["public_key"]
            .as_str()
            .unwrap()
            .to_owned()
    };
    let (w1, w2) = (public("w1.key"), public("w2.key"));
    let authority = format!("eeb={}", made["public_key"].as_str().unwrap());
    let witness1 = format!("1:node1.gen:generator:{w1}");
    let witness2 = format!("2:node2.fac:facility:{w2}");
    let created = wl(
        d,
        none,
        &[
            "-O",
            "json",
            "genesis",
            "create",
            "-o",
            "genesis.pb",
            "--name",
            "test.example/cli",
            "--authority",
            &authority,
            "--witness",
            &witness1,
            "--witness",
            &witness2,
            "--min-total",
            "2",
        ],
    )
    .ok()
    .json();
    assert_eq!(created["ledger_name"], "test.example/cli");
    wl(d, none, &["genesis", "show", "genesis.pb"]).ok();
    // The example manifest is valid; broken ones fail with exit 2 and name the problem.
    let good = example("manifest.toml");
    wl(
        d,
        none,
        &[
            "manifest",
            "create",
            "--check",
            "--file",
            good.to_str().unwrap(),
        ],
    )
    .ok();
    let text = std::fs::read_to_string(&good).unwrap();
    std::fs::write(d.join("bad.toml"), text.replace("\"8.5\"", "\"8,5\"")).unwrap();
    wl(
        d,
        none,
        &["manifest", "create", "--check", "--file", "bad.toml"],
    )
    .fails(2, "lines[0].quantity");
    std::fs::write(
        d.join("typo.toml"),
        text.replace("TRANSPORT_MODE_RAIL", "TRANSPORT_MODE_BIKE"),
    )
    .unwrap();
    wl(
        d,
        none,
        &["manifest", "create", "--check", "--file", "typo.toml"],
    )
    .fails(2, "transporters[1].mode");
    std::fs::write(d.join("bad.json"), "{\"lines\": [").unwrap();
    wl(
        d,
        none,
        &["manifest", "create", "--check", "--file", "bad.json"],
    )
    .fails(2, "bad.json");
    wl(
        d,
        none,
        &["manifest", "create", "--check", "--file", "missing.toml"],
    )
    .fails(2, "missing.toml");
    wl(
        d,
        none,
        &[
            "manifest",
            "create",
            "--file",
            good.to_str().unwrap(),
            "--key",
            "nokey.key",
        ],
    )
    .fails(2, "nokey.key");
    // The same manifest as JSON (protobuf-JSON, as exports write it) is valid too.
    let net = wasteledger_core::sample::SampleNetwork::new().unwrap();
    let json = serde_json::to_string_pretty(&net.manifest("20261502000001", &[ids::ROAD])).unwrap();
    std::fs::write(d.join("m.json"), json).unwrap();
    wl(
        d,
        none,
        &["manifest", "create", "--check", "--file", "m.json"],
    )
    .ok();
    // A key file that is not one, and a malformed node address.
    std::fs::write(d.join("garbage.key"), "not a key\n").unwrap();
    wl(d, none, &["key", "show", "garbage.key"]).fails(2, "64 hex characters");
    wl(d, "not an address", &["manifest", "show", NUMBER]).fails(2, "HOST:PORT");
    // No node listening: exit 3 with what to do.
    wl(d, none, &["manifest", "show", NUMBER]).fails(3, "--node");
    wl(d, none, &["manifest", "show", "20261502000101"]).fails(2, "SCHEME:NUMBER");
    wl(
        d,
        none,
        &[
            "manifest", "create", "--file", "m.json", "-k", "a.key", "-o", "e.json",
        ],
    )
    .ok();
    wl(d, none, &["manifest", "submit", "e.json"]).fails(3, "cannot reach");
    // Usage errors are exit 2 too; completions print a script.
    wl(d, none, &["manifest", "frobnicate"]).fails(2, "frobnicate");
    let completions = wl(d, none, &["completions", "bash"]).ok();
    assert!(completions.stdout.contains("wasteledger"));
    // A file that is not a bundle fails the check: exit 1.
    std::fs::write(d.join("junk.pb"), b"not a proof").unwrap();
    wl(d, none, &["proof", "verify", "junk.pb"]).fails(1, "FAILED");
}

/// Writes every sample party's key file and record, and the genesis, into `dir`.
fn write_network(cluster: &Cluster, dir: &Path) {
    let net = &cluster.net;
    std::fs::write(dir.join("genesis.pb"), &net.genesis_bytes).unwrap();
    std::fs::write(
        dir.join("authority.key"),
        format_secret_key_file(&net.authority, "sample authority (tests only)"),
    )
    .unwrap();
    for (id, key) in &net.party_keys {
        std::fs::write(
            dir.join(format!("{id}.key")),
            format_secret_key_file(key, &format!("sample key (tests only)\nparty: {id}")),
        )
        .unwrap();
        // The CLI dates events now, not at the sample's fixed time: permits that never expire
        // keep this test from failing once the sample permits run out (2027-06-01).
        let mut party = net.party(id);
        for permit in &mut party.permits {
            permit.valid_until = 0;
        }
        std::fs::write(
            dir.join(format!("{id}.json")),
            serde_json::to_string_pretty(&party).unwrap(),
        )
        .unwrap();
    }
}

/// Waits (bounded) until node 1's admin listener answers and names a leader; returns its id.
/// The node processes start in the background: the CLI rightly fails fast on a node that is not
/// listening yet, so the tests wait here rather than race it.
fn wait_for_leader(cluster: &Cluster, d: &Path) -> u64 {
    let spec = &cluster.specs[&1];
    for _ in 0..300 {
        let status = wl(
            d,
            &spec.api,
            &["-O", "json", "cluster", "status", "--admin", &spec.admin],
        );
        if status.code == 0 {
            let leader = status.json()["leader_id"]
                .as_str()
                .and_then(|l| l.parse().ok())
                .unwrap_or(0);
            if leader != 0 {
                return leader;
            }
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    0
}

#[test]
fn whole_lifecycle_through_the_cli_against_a_real_cluster() {
    let cluster = Cluster::start(Path::new(BIN), 3);
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    write_network(&cluster, d);
    let node = cluster.specs[&1].api.clone();
    let run = |args: &[&str]| wl(d, &node, args);
    let key = |id: &str| format!("{id}.key");
    assert_ne!(wait_for_leader(&cluster, d), 0, "no leader");

    // The authority registers every party (the first call waits out the first election).
    for id in cluster.net.party_keys.keys() {
        let public = run(&["-O", "json", "key", "show", &key(id)]).ok().json()["public_key"]
            .as_str()
            .unwrap()
            .to_owned();
        let file = format!("{id}.json");
        let receipt = run(&[
            "-O",
            "json",
            "party",
            "register",
            "--file",
            &file,
            "--public-key",
            &public,
            "--key",
            "authority.key",
        ])
        .ok()
        .json();
        assert_eq!(receipt["result"], "recorded");
    }

    // The generator creates the example manifest; a second creation is refused (exit 3).
    let manifest = example("manifest.toml");
    let manifest = manifest.to_str().unwrap();
    run(&[
        "manifest",
        "create",
        "--file",
        manifest,
        "--key",
        &key(ids::GENERATOR),
    ])
    .ok();
    run(&[
        "manifest",
        "create",
        "--file",
        manifest,
        "--key",
        &key(ids::GENERATOR),
    ])
    .fails(3, "already");
    // A manifest signed by someone other than its generator is refused.
    let other = std::fs::read_to_string(manifest)
        .unwrap()
        .replace("20261502000101", "20261502000102");
    std::fs::write(d.join("other.toml"), other).unwrap();
    run(&[
        "manifest",
        "create",
        "--file",
        "other.toml",
        "--key",
        &key(ids::ROAD),
    ])
    .fails(3, "generator");

    // Pickup, signed on two "machines": the generator prepares, the carrier co-signs, submits.
    run(&[
        "manifest",
        "handoff",
        NUMBER,
        "--key",
        &key(ids::GENERATOR),
        "--location",
        "steel works gate 3",
        "-o",
        "pickup.json",
    ])
    .ok();
    let prepared: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(d.join("pickup.json")).unwrap()).unwrap();
    assert_eq!(prepared["kind"], "CustodyHandoff");
    assert_eq!(prepared["signatures"].as_array().unwrap().len(), 1);
    // With only the generator's signature the ledger refuses it.
    run(&["manifest", "submit", "pickup.json"]).fails(3, "custody.");
    // Signing with a key of the wrong party is refused by the ledger after co-signing.
    std::fs::copy(d.join("pickup.json"), d.join("wrong.json")).unwrap();
    run(&["manifest", "sign", "wrong.json", "--key", &key(ids::RAIL)]).ok();
    run(&["manifest", "submit", "wrong.json"]).fails(3, "TR-ROAD-01");
    // A body altered after the first signature is caught before anyone co-signs it.
    let mut altered = prepared.clone();
    altered["body"] =
        serde_json::Value::String(prepared["body"].as_str().unwrap().replacen('A', "B", 1));
    std::fs::write(d.join("altered.json"), altered.to_string()).unwrap();
    run(&["manifest", "sign", "altered.json", "--key", &key(ids::ROAD)]).fails(2, "signature");
    // The right carrier co-signs; either may submit.
    let signed = run(&[
        "-O",
        "json",
        "manifest",
        "sign",
        "pickup.json",
        "--key",
        &key(ids::ROAD),
    ])
    .ok()
    .json();
    assert_eq!(signed["signatures"].as_array().unwrap().len(), 2);
    run(&["manifest", "submit", "pickup.json"]).ok();
    // The road carrier reports a weigh station en route.
    run(&[
        "manifest",
        "transit",
        NUMBER,
        "--kind",
        "weigh-station",
        "--description",
        "G6 weigh station",
        "--position",
        "40.657,109.84",
        "-k",
        &key(ids::ROAD),
    ])
    .ok();
    // Road -> rail with both keys on one machine; rail -> facility across two files again.
    run(&[
        "manifest",
        "handoff",
        NUMBER,
        "-k",
        &key(ids::ROAD),
        "-k",
        &key(ids::RAIL),
    ])
    .ok();
    run(&[
        "manifest",
        "handoff",
        NUMBER,
        "-k",
        &key(ids::RAIL),
        "-o",
        "delivery.json",
    ])
    .ok();
    run(&[
        "manifest",
        "sign",
        "delivery.json",
        "-k",
        &key(ids::FACILITY),
    ])
    .ok();
    run(&["manifest", "submit", "delivery.json"]).ok();

    // Receipt with a significant discrepancy on line 1 (7.2 t against 8.5 t).
    std::fs::write(d.join("ticket.txt"), "weighbridge 7.20 t").unwrap();
    run(&[
        "manifest",
        "receive",
        NUMBER,
        "-k",
        &key(ids::FACILITY),
        "--line",
        "1:7.2:t:1",
        "--line",
        "2:1800:kg:12",
        "--evidence",
        "ticket.txt",
    ])
    .ok();
    let state = run(&["-O", "json", "manifest", "show", NUMBER]).ok().json();
    assert_eq!(state["status"], "MANIFEST_STATUS_RECEIVED");
    assert_eq!(state["discrepancies"][0]["significant"], true, "{state}");
    // The facility corrects its misread ticket; every other signer approves.
    run(&[
        "manifest",
        "correct",
        NUMBER,
        "-k",
        &key(ids::FACILITY),
        "--amends",
        "received",
        "--received-line",
        "1:8.45:t:1",
        "--reason",
        "weighbridge ticket misread",
    ])
    .ok();
    let pending = run(&["manifest", "show", NUMBER]).ok();
    assert!(
        pending.stdout.contains("awaits approval"),
        "{}",
        pending.stdout
    );
    for id in [ids::GENERATOR, ids::ROAD, ids::RAIL] {
        run(&["manifest", "approve-correction", NUMBER, "-k", &key(id)]).ok();
    }
    run(&[
        "manifest",
        "approve-correction",
        NUMBER,
        "-k",
        &key(ids::GENERATOR),
    ])
    .fails(2, "no correction is waiting");
    let state = run(&["-O", "json", "manifest", "show", NUMBER]).ok().json();
    assert_eq!(state["corrections_applied"], 1, "{state}");
    assert_eq!(state["received"][0]["quantity"]["amount"], "8.45");

    // Treatment certified, with the certificate anchored by hash.
    std::fs::write(d.join("certificate.pdf"), "%PDF certificate").unwrap();
    run(&[
        "manifest",
        "treat",
        NUMBER,
        "-k",
        &key(ids::FACILITY),
        "--line",
        "1:H040:8.45:t",
        "--line",
        "2:H040:1800:kg",
        "--certificate",
        "certificate.pdf",
    ])
    .ok();
    let history = run(&["-O", "json", "manifest", "history", NUMBER])
        .ok()
        .json();
    let kinds: Vec<&str> = history["events"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["kind"].as_str().unwrap())
        .collect();
    assert_eq!(
        kinds,
        [
            "ManifestCreated",
            "CustodyHandoff",
            "TransitCheckpoint",
            "CustodyHandoff",
            "CustodyHandoff",
            "Received",
            "Correction",
            "CorrectionDecision",
            "CorrectionDecision",
            "CorrectionDecision",
            "Treated"
        ]
    );

    // Cancellation is only before pickup: a fresh manifest can be cancelled, this one not.
    run(&[
        "manifest",
        "create",
        "--file",
        "other.toml",
        "-k",
        &key(ids::GENERATOR),
    ])
    .ok();
    run(&[
        "manifest",
        "cancel",
        "cn:20261502000102",
        "-k",
        &key(ids::GENERATOR),
        "--reason",
        "duplicate",
    ])
    .ok();
    run(&[
        "manifest",
        "cancel",
        NUMBER,
        "-k",
        &key(ids::GENERATOR),
        "--reason",
        "late",
    ])
    .fails(3, "custody.");

    // Rejected at the gate (facility and carrier sign, on two machines) and taken on to the
    // alternate facility on the same manifest.
    let third = std::fs::read_to_string(manifest)
        .unwrap()
        .replace("20261502000101", "20261502000103");
    std::fs::write(d.join("third.toml"), third).unwrap();
    let m3 = "cn:20261502000103";
    run(&[
        "manifest",
        "create",
        "--file",
        "third.toml",
        "-k",
        &key(ids::GENERATOR),
    ])
    .ok();
    run(&[
        "manifest",
        "handoff",
        m3,
        "-k",
        &key(ids::GENERATOR),
        "-k",
        &key(ids::ROAD),
    ])
    .ok();
    run(&[
        "manifest",
        "handoff",
        m3,
        "-k",
        &key(ids::ROAD),
        "-k",
        &key(ids::RAIL),
    ])
    .ok();
    run(&[
        "manifest",
        "reject",
        m3,
        "--scope",
        "full",
        "--to",
        "alternate",
        "--on-site",
        "--reason",
        "drums leaking",
        "-k",
        &key(ids::FACILITY),
        "-o",
        "reject.json",
    ])
    .ok();
    run(&["manifest", "sign", "reject.json", "-k", &key(ids::RAIL)]).ok();
    run(&["manifest", "submit", "reject.json"]).ok();
    run(&[
        "manifest",
        "handoff",
        m3,
        "-k",
        &key(ids::RAIL),
        "-k",
        &key(ids::ALTERNATE),
    ])
    .ok();
    run(&[
        "manifest",
        "receive",
        m3,
        "-k",
        &key(ids::ALTERNATE),
        "--line",
        "1:8.5:t:1",
        "--line",
        "2:1800:kg:12",
    ])
    .ok();
    let state = run(&["-O", "json", "manifest", "show", m3]).ok().json();
    assert_eq!(state["status"], "MANIFEST_STATUS_RECEIVED", "{state}");
    assert_eq!(state["destination"], ids::ALTERNATE);

    // The regulator downloads the proof and verifies it offline: VERIFIED, exit 0.
    let got = run(&["-O", "json", "proof", "get", NUMBER, "-o", "bundle.pb"])
        .ok()
        .json();
    assert_eq!(got["complete_as_of_now"], true, "{got}");
    let verified = run(&["proof", "verify", "bundle.pb"]).ok();
    assert!(verified.stdout.contains("VERIFIED"), "{}", verified.stdout);
    let report = run(&["-O", "json", "proof", "verify", "bundle.pb"])
        .ok()
        .json();
    assert_eq!(report["result"], "VERIFIED");
    assert_eq!(report["timeline"].as_array().unwrap().len(), 11);
    // One flipped byte anywhere in the middle: FAILED, exit 1.
    let mut bytes = std::fs::read(d.join("bundle.pb")).unwrap();
    let middle = bytes.len() / 2;
    bytes[middle] ^= 0x01;
    std::fs::write(d.join("tampered.pb"), bytes).unwrap();
    run(&["proof", "verify", "tampered.pb"]).fails(1, "FAILED");
    let failed = run(&["-O", "json", "proof", "verify", "tampered.pb"]);
    assert_eq!(failed.code, 1);
    assert_eq!(failed.json()["result"], "FAILED");

    // Bulk import from JSON Lines: per-line results; a malformed line, a number repeated in the
    // file and a manifest already on the ledger are reported without stopping the others
    // (exit 2 because lines are invalid).
    let line = |n: &str| serde_json::to_string(&cluster.net.manifest(n, &[ids::ROAD])).unwrap();
    let jsonl = format!(
        "{}\n{}\n{{\"lines\": 5}}\n{}\n{}\n",
        line("20261502000201"),
        line("20261502000202"),
        line("20261502000201"),
        line("20261502000101")
    );
    std::fs::write(d.join("import.jsonl"), jsonl).unwrap();
    let import = run(&[
        "-O",
        "json",
        "manifest",
        "import",
        "import.jsonl",
        "-k",
        &key(ids::GENERATOR),
    ]);
    assert_eq!(import.code, 2, "{}\n{}", import.stdout, import.stderr);
    let results: Vec<String> = import
        .json()
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["result"].as_str().unwrap().to_owned())
        .collect();
    assert_eq!(
        results,
        ["recorded", "recorded", "invalid", "invalid", "refused"]
    );

    // Listing pages through every result with the cursor (one manifest per page here).
    let all = run(&[
        "-O",
        "json",
        "manifest",
        "list",
        "--party",
        ids::GENERATOR,
        "--page-size",
        "1",
    ])
    .ok()
    .json();
    let listed: Vec<&str> = all
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["tracking_number"]["number"].as_str().unwrap())
        .collect();
    assert_eq!(
        listed,
        [
            "20261502000101",
            "20261502000102",
            "20261502000103",
            "20261502000201",
            "20261502000202"
        ]
    );
    let treated = run(&["-O", "json", "manifest", "list", "--status", "treated"])
        .ok()
        .json();
    assert_eq!(treated.as_array().unwrap().len(), 1);
    run(&["manifest", "list"]).ok();
    let since = run(&[
        "-O",
        "json",
        "manifest",
        "list",
        "--time",
        "treated",
        "--from",
        "2026-01-01",
        "--code-system",
        "cn-hw-category",
        "--waste-code",
        "HW08",
    ])
    .ok()
    .json();
    assert_eq!(since.as_array().unwrap().len(), 1, "{since}");
    run(&["manifest", "list", "--from", "last tuesday"]).fails(2, "--from");

    // Watching from the start: JSON Lines, registrations first; filtered to a carrier's
    // manifests, its first event is the example manifest's creation.
    let watched = run(&["-O", "json", "watch", "--from", "0", "--count", "3"]).ok();
    let lines: Vec<serde_json::Value> = watched
        .stdout
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(lines.len(), 3);
    assert_eq!(lines[0]["kind"], "PartyRegistered");
    let road = run(&[
        "-O",
        "json",
        "watch",
        "--from",
        "0",
        "--count",
        "1",
        "--party",
        ids::ROAD,
        "--manifests-only",
    ])
    .ok();
    let first: serde_json::Value = serde_json::from_str(road.stdout.trim()).unwrap();
    assert_eq!(first["kind"], "ManifestCreated", "{first}");

    // Key management: the regulator rotates its key, then the authority revokes the new one.
    let fresh = run(&["-O", "json", "key", "generate", "reg2.key"])
        .ok()
        .json();
    run(&[
        "party",
        "rotate-key",
        ids::REGULATOR,
        "--new-public-key",
        fresh["public_key"].as_str().unwrap(),
        "--key",
        &key(ids::REGULATOR),
    ])
    .ok();
    let party = run(&["-O", "json", "party", "show", ids::REGULATOR])
        .ok()
        .json();
    assert_eq!(party["keys"].as_array().unwrap().len(), 2, "{party}");
    let fresh_id = fresh["key_id"].as_str().unwrap();
    run(&[
        "party",
        "revoke-key",
        ids::REGULATOR,
        "--key-id",
        fresh_id,
        "--reason",
        "laptop lost",
        "--key",
        "authority.key",
    ])
    .ok();
    run(&["party", "show", ids::REGULATOR]).ok();
    run(&["party", "show", "NOBODY"]).fails(3, "query.");
}

#[test]
fn cluster_commands_add_a_learner_and_promote_it() {
    // Nodes 1 and 2 found the cluster; node 3 runs but belongs to no cluster yet.
    let cluster = Cluster::start_with_founders(Path::new(BIN), 3, 2);
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    write_network(&cluster, d);
    let spec = |id: u64| cluster.specs[&id].clone();
    let leader = wait_for_leader(&cluster, d);
    assert!(leader == 1 || leader == 2, "no leader");
    let follower = 3 - leader;
    // On the public listener an unsigned admin call is refused, with what to do instead.
    wl(d, &spec(1).api, &["cluster", "status"]).fails(3, "--admin");
    wl(d, &spec(1).api, &["cluster", "add-learner", "3:nonsense"]).fails(2, "ID:RAFT_HOST:PORT");
    // Signed by the authority and sent to the follower: the call follows the leader.
    let member = format!("3:{}:{}", spec(3).raft, spec(3).api);
    let added = wl(
        d,
        &spec(follower).api,
        &[
            "-O",
            "json",
            "cluster",
            "add-learner",
            &member,
            "--key",
            "authority.key",
        ],
    )
    .ok()
    .json();
    assert_eq!(added["learners"][0]["node_id"], "3", "{added}");
    // Promote it through the leader's admin listener; the table view shows the new voters.
    let leader_admin = spec(leader).admin;
    let promoted = wl(
        d,
        &spec(leader).api,
        &[
            "cluster",
            "change-membership",
            "--voters",
            "1,2,3",
            "--admin",
            &leader_admin,
        ],
    )
    .ok();
    assert!(promoted.stdout.contains("voters"), "{}", promoted.stdout);
    let status = wl(
        d,
        &spec(leader).api,
        &["-O", "json", "cluster", "status", "--admin", &leader_admin],
    )
    .ok()
    .json();
    assert_eq!(status["voters"].as_array().unwrap().len(), 3, "{status}");
    assert!(
        status["learners"].as_array().is_none_or(|l| l.is_empty()),
        "{status}"
    );
}

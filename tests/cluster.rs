//! Multi-node tests against real `wasteledger node` processes on 127.0.0.1: replication through
//! any node, SIGKILL of the leader under load with no acknowledged event lost, a full restart
//! from disk, a node whose storage stalls exiting and coming back, no commit without a quorum,
//! and a tampered node refusing to serve.
//!
//! Registered as an integration test of the `wasteledger` package so that Cargo builds the
//! binary and passes its path (`CARGO_BIN_EXE_wasteledger`).

// Test code: a failed expectation is a test failure with a message.
#![allow(clippy::expect_used, clippy::unwrap_used)]

use std::path::Path;
use std::time::Duration;

use wasteledger_core::pb::{self, event_body::Kind};
use wasteledger_core::sample::{ManifestFlow, T0, ids};
use wasteledger_tests::cluster::Cluster;

const BIN: &str = env!("CARGO_BIN_EXE_wasteledger");
const LONG: Duration = Duration::from_secs(60);

fn create_event(cluster: &Cluster, serial: u32) -> (String, pb::SignedEvent) {
    let number = format!("20261502{serial:06}");
    let flow = ManifestFlow::new(&cluster.net, &number, T0).unwrap();
    let manifest = cluster.net.manifest(&number, &[ids::ROAD]);
    let event = flow.event(
        Kind::ManifestCreated(pb::ManifestCreated {
            manifest: Some(manifest),
        }),
        &[ids::GENERATOR],
    );
    (number, event)
}

async fn register_parties(cluster: &Cluster, via: &[u64]) {
    for (i, event) in cluster.net.registrations().iter().enumerate() {
        let node = via[i % via.len()];
        cluster
            .submit(node, event, LONG)
            .await
            .unwrap_or_else(|s| panic!("registration via node {node}: {s:?}"));
    }
}

async fn manifest_on(cluster: &Cluster, node: u64, number: &str) -> Option<pb::ManifestState> {
    let mut client = cluster.client(node).await?;
    let request = pb::GetManifestRequest {
        tracking_number: Some(pb::TrackingNumber {
            scheme: pb::TrackingScheme::Cn as i32,
            number: number.into(),
        }),
        ..Default::default()
    };
    client
        .get_manifest(request)
        .await
        .ok()
        .and_then(|r| r.into_inner().state)
}

/// Submits `event` to `node`: its receipt, or `None` if the write was refused as
/// `Unavailable` (in flight at a kill or a stall: its outcome is unknown, and only acknowledged
/// writes must survive). Any other refusal fails the test.
async fn submit_unless_unavailable(
    cluster: &Cluster,
    node: u64,
    event: &pb::SignedEvent,
) -> Option<pb::Receipt> {
    match cluster.submit(node, event, LONG).await {
        Ok(receipt) => Some(receipt),
        Err(status) => {
            assert_eq!(status.code(), tonic::Code::Unavailable, "{status:?}");
            None
        }
    }
}

/// Waits until nodes 1–3 agree on a ledger holding the six registrations and every
/// `acknowledged` creation, then checks each node has each manifest at its receipt's event;
/// returns the agreed head.
async fn every_node_holds<'a>(
    cluster: &Cluster,
    acknowledged: impl Iterator<Item = &'a (String, pb::Receipt)>,
) -> pb::LedgerHead {
    let acknowledged: Vec<_> = acknowledged.collect();
    let head = cluster
        .converged(&[1, 2, 3], 6 + acknowledged.len() as u64, LONG)
        .await
        .expect("all nodes agree after the restart");
    for node in 1..=3 {
        for (number, receipt) in &acknowledged {
            let state = manifest_on(cluster, node, number)
                .await
                .unwrap_or_else(|| panic!("node {node} lost acknowledged manifest {number}"));
            assert_eq!(
                state.head, receipt.event_hash,
                "node {node} manifest {number}"
            );
        }
    }
    head
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replicates_through_any_node_and_survives_a_full_restart() {
    let mut cluster = Cluster::start(Path::new(BIN), 3);
    register_parties(&cluster, &[1, 2, 3]).await;
    // A whole lifecycle, each step sent to a different node (followers forward to the leader).
    let mut flow = ManifestFlow::new(&cluster.net, "20261502000001", T0).unwrap();
    let manifest = cluster
        .net
        .manifest("20261502000001", &[ids::ROAD, ids::RAIL]);
    let steps: Vec<(Kind, Vec<&str>)> = vec![
        (
            Kind::ManifestCreated(pb::ManifestCreated {
                manifest: Some(manifest),
            }),
            vec![ids::GENERATOR],
        ),
        (
            ManifestFlow::handoff(ids::GENERATOR, ids::ROAD),
            vec![ids::GENERATOR, ids::ROAD],
        ),
        (
            ManifestFlow::handoff(ids::ROAD, ids::RAIL),
            vec![ids::ROAD, ids::RAIL],
        ),
        (
            ManifestFlow::handoff(ids::RAIL, ids::FACILITY),
            vec![ids::RAIL, ids::FACILITY],
        ),
        (
            ManifestFlow::received("8.5", "1800", 12),
            vec![ids::FACILITY],
        ),
    ];
    for (i, (kind, signers)) in steps.into_iter().enumerate() {
        let event = flow.event(kind, &signers);
        let receipt = cluster
            .submit(1 + (i as u64 % 3), &event, LONG)
            .await
            .expect("step accepted");
        assert_eq!(receipt.tree_size, receipt.index + 1);
        flow.accept(&event);
    }
    // A resubmitted identical event returns the original receipt, never a second entry.
    let (_, replay) = create_event(&cluster, 2);
    let first = cluster
        .submit(3, &replay, LONG)
        .await
        .expect("create accepted");
    let again = cluster
        .submit(2, &replay, LONG)
        .await
        .expect("resubmission answered");
    assert_eq!(first, again);
    // A rule violation is refused with its code, and nothing is appended.
    let stale = flow.event(
        ManifestFlow::handoff(ids::GENERATOR, ids::ROAD),
        &[ids::GENERATOR, ids::ROAD],
    );
    let mut stale_body: pb::EventBody = prost::Message::decode(stale.body.as_slice()).unwrap();
    stale_body.prev_event_hash = vec![0; 32];
    let stale = wasteledger_core::compose::sign_event(
        &cluster.net.ledger_id(),
        &stale_body,
        &[
            cluster.net.key(ids::GENERATOR).unwrap(),
            cluster.net.key(ids::ROAD).unwrap(),
        ],
    );
    let refused = cluster
        .submit(2, &stale, LONG)
        .await
        .expect_err("stale handoff refused");
    assert_eq!(refused.code(), tonic::Code::FailedPrecondition);
    assert_eq!(
        refused
            .metadata()
            .get("wasteledger-reason")
            .and_then(|v| v.to_str().ok()),
        Some("custody.stale_chain")
    );

    let head = cluster
        .converged(&[1, 2, 3], 12, LONG)
        .await
        .expect("all three nodes agree");
    assert_eq!(
        head.size, 12,
        "6 registrations + 5 lifecycle events + 1 creation"
    );

    // Every node eventually publishes a cosigned checkpoint of the final size, and serves a
    // custody proof of it that verifies offline.
    let mut proofs = Vec::new();
    for node in 1..=3 {
        let deadline = std::time::Instant::now() + LONG;
        loop {
            let mut c = cluster.client(node).await.expect("client");
            let request = pb::GetCustodyProofRequest {
                consistency: 0,
                tracking_number: Some(pb::TrackingNumber {
                    scheme: pb::TrackingScheme::Cn as i32,
                    number: "20261502000001".into(),
                }),
            };
            if let Ok(proof) = c.get_custody_proof(request).await {
                let proof = proof.into_inner();
                let verified =
                    wasteledger_core::proof::verify_custody_proof(&proof, &cluster.net.genesis)
                        .expect("proof verifies offline");
                if verified.checkpoint.size == head.size {
                    assert_eq!(verified.checkpoint.root.0.to_vec(), head.root);
                    assert_eq!(verified.timeline.len(), 5);
                    proofs.push(verified.checkpoint);
                    break;
                }
            }
            assert!(
                std::time::Instant::now() < deadline,
                "node {node} published no checkpoint of size {}",
                head.size
            );
            tokio::time::sleep(Duration::from_millis(300)).await;
        }
    }
    assert!(
        proofs.windows(2).all(|w| w[0] == w[1]),
        "all nodes prove against the same checkpoint"
    );

    // Stop all three cleanly, restart from disk: same ledger, same root.
    for node in 1..=3 {
        assert_eq!(
            cluster.stop(node),
            Some(0),
            "node {node} exits cleanly on SIGTERM:\n{}",
            cluster.logs(node)
        );
    }
    for node in 1..=3 {
        cluster.start_node(node);
    }
    let after = cluster
        .converged(&[1, 2, 3], head.size, LONG)
        .await
        .expect("restarted nodes agree");
    assert_eq!(
        (after.size, after.root, after.map_root),
        (head.size, head.root, head.map_root)
    );
    assert!(manifest_on(&cluster, 3, "20261502000001").await.is_some());
    // Each restarted node re-reads the history below its integrity checkpoint (recorded with
    // the published checkpoint above) in the background, and finds it intact.
    for node in 1..=3 {
        let deadline = std::time::Instant::now() + LONG;
        loop {
            let logs = cluster.logs(node);
            let restart = &logs[logs.rfind("storage opened").expect("restarted")..];
            // Logged only by a check that ran (a node with nothing to re-check logs nothing).
            if restart.contains("settled history checked") {
                break;
            }
            assert!(
                std::time::Instant::now() < deadline,
                "node {node} did not finish checking its history:\n{restart}"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killing_the_leader_under_load_loses_no_acknowledged_event() {
    let mut cluster = Cluster::start(Path::new(BIN), 3);
    register_parties(&cluster, &[1]).await;
    let leader = cluster.head(1).await.expect("head").leader_id;
    assert!(leader > 0);
    let survivors: Vec<u64> = (1..=3).filter(|n| *n != leader).collect();
    let mut acknowledged = Vec::new();
    for serial in 1..=60u32 {
        if serial == 20 {
            cluster.kill(leader);
        }
        let (number, event) = create_event(&cluster, serial);
        // Before the kill any node will do; after it, only the survivors answer.
        let target = if serial < 20 {
            1 + serial as u64 % 3
        } else {
            survivors[serial as usize % 2]
        };
        if let Some(receipt) = submit_unless_unavailable(&cluster, target, &event).await {
            acknowledged.push((number, receipt));
        }
    }
    assert!(
        acknowledged.len() >= 40,
        "the survivors kept accepting writes ({} acknowledged)",
        acknowledged.len()
    );
    cluster.start_node(leader);
    let head = every_node_holds(&cluster, acknowledged.iter()).await;
    assert!(head.size >= 6 + acknowledged.len() as u64);
}

/// Submits `events` from `writers` concurrent tasks, each to node `targets[task % len]`, and
/// returns what was acknowledged. `acked` counts acknowledgements as they arrive. Only
/// `Unavailable` (the outcome of a write in flight at a kill) may refuse a write.
async fn submit_concurrently(
    cluster: &std::sync::Arc<Cluster>,
    events: Vec<(String, pb::SignedEvent)>,
    writers: usize,
    targets: &[u64],
    acked: &std::sync::Arc<std::sync::atomic::AtomicUsize>,
) -> Vec<(String, pb::Receipt)> {
    let mut shares: Vec<Vec<(String, pb::SignedEvent)>> = vec![Vec::new(); writers];
    for (i, event) in events.into_iter().enumerate() {
        shares[i % writers].push(event);
    }
    let mut tasks = Vec::new();
    for (task, share) in shares.into_iter().enumerate() {
        let (cluster, acked) = (cluster.clone(), acked.clone());
        let target = targets[task % targets.len()];
        tasks.push(tokio::spawn(async move {
            let mut acknowledged = Vec::new();
            for (number, event) in share {
                if let Some(receipt) = submit_unless_unavailable(&cluster, target, &event).await {
                    acked.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                    acknowledged.push((number, receipt));
                }
            }
            acknowledged
        }));
    }
    let mut all = Vec::new();
    for task in tasks {
        all.extend(task.await.expect("writer task"));
    }
    all
}

/// Concurrent writers make the leader propose several events per Raft entry. Each writer
/// still gets its own receipt for its own event; killing the leader while groups are in
/// flight loses none that was acknowledged, and every node ends with the same ledger.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn grouped_writes_keep_every_receipt_through_a_leader_kill() {
    use std::sync::Arc;
    use std::sync::atomic::{AtomicUsize, Ordering};

    let cluster = Cluster::start(Path::new(BIN), 3);
    register_parties(&cluster, &[1]).await;
    let leader = cluster.head(1).await.expect("head").leader_id;
    assert!(leader > 0);
    let survivors: Vec<u64> = (1..=3).filter(|n| *n != leader).collect();
    let (before, during): (Vec<_>, Vec<_>) = (1..=192u32)
        .map(|serial| create_event(&cluster, serial))
        .partition(|(number, _)| number.ends_with(|c: char| c < '5'));
    let cluster = Arc::new(cluster);

    // With the leader up, every event is acknowledged, each with its own distinct entry.
    let acked = Arc::new(AtomicUsize::new(0));
    let first = submit_concurrently(&cluster, before.clone(), 16, &[leader], &acked).await;
    assert_eq!(first.len(), before.len());
    let mut indexes: Vec<u64> = first.iter().map(|(_, r)| r.index).collect();
    indexes.sort_unstable();
    indexes.dedup();
    assert_eq!(indexes.len(), first.len(), "one ledger entry per receipt");
    for (number, receipt) in &first {
        let (_, event) = before.iter().find(|(n, _)| n == number).expect("submitted");
        let hash =
            wasteledger_core::envelope::event_hash(&cluster.net.genesis.ledger_id, &event.body);
        assert_eq!(
            receipt.event_hash,
            hash.0.to_vec(),
            "{number}'s own receipt"
        );
    }
    let metrics = cluster.metrics(leader).await.expect("leader metrics");
    let grouped =
        wasteledger_tests::cluster::sample_value(&metrics, "wasteledger_group_events_sum", "")
            .expect("group sizes");
    let groups =
        wasteledger_tests::cluster::sample_value(&metrics, "wasteledger_group_events_count", "")
            .expect("group count");
    assert!(
        grouped > groups,
        "16 concurrent writers should share entries: {grouped} events in {groups} groups"
    );

    // Kill the leader (SIGKILL) while writers, through the survivors, have groups in flight.
    let acked = Arc::new(AtomicUsize::new(0));
    let writers = {
        let (cluster, acked, survivors) = (cluster.clone(), acked.clone(), survivors.clone());
        tokio::spawn(
            async move { submit_concurrently(&cluster, during, 16, &survivors, &acked).await },
        )
    };
    for _ in 0..1000 {
        if acked.load(Ordering::SeqCst) >= 10 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let pid = cluster.pid(leader).expect("leader runs");
    let killed = std::process::Command::new("kill")
        .args(["-KILL", &pid.to_string()])
        .status()
        .expect("run kill");
    assert!(killed.success());
    let second = writers.await.expect("writers");
    assert!(
        second.len() >= 48,
        "the survivors kept accepting writes ({} acknowledged)",
        second.len()
    );

    let mut cluster = Arc::into_inner(cluster).expect("the writers are done");
    cluster.kill(leader);
    cluster.start_node(leader);
    every_node_holds(&cluster, first.iter().chain(&second)).await;
}

/// Grouped writes put many events in one Raft entry, so a node must not wait for
/// `snapshot_every` Raft entries alone: it snapshots (and purges its log) once the ledger has
/// grown by `snapshot_every` events too.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_busy_ledger_snapshots_by_events_not_only_by_raft_entries() {
    use std::sync::Arc;
    use std::sync::atomic::AtomicUsize;
    use wasteledger_tests::cluster::sample_value;

    const EVERY: u64 = 200;
    let raft = format!(
        "[raft]\nheartbeat_ms = 100\nelection_timeout_min_ms = 500\nelection_timeout_max_ms = 1000\nsnapshot_every = {EVERY}\nkeep_logs_after_snapshot = 10\n"
    );
    let cluster = Arc::new(Cluster::start_with_raft(Path::new(BIN), 3, &raft));
    register_parties(&cluster, &[1]).await;
    let leader = cluster.head(1).await.expect("head").leader_id;
    let events: Vec<_> = (1..=2 * EVERY as u32)
        .map(|serial| create_event(&cluster, serial))
        .collect();
    let acked = Arc::new(AtomicUsize::new(0));
    let receipts = submit_concurrently(&cluster, events, 32, &[leader], &acked).await;
    assert_eq!(receipts.len(), 2 * EVERY as usize);

    let snapshots = |node: u64| {
        std::fs::read_dir(cluster.specs[&node].data_dir.join("snapshots"))
            .map(|entries| {
                entries
                    .flatten()
                    .filter(|e| e.path().extension().is_some_and(|x| x == "snap"))
                    .count()
            })
            .unwrap_or(0)
    };
    for node in 1..=3 {
        let mut waited = 0;
        while snapshots(node) == 0 && waited < 300 {
            tokio::time::sleep(Duration::from_millis(100)).await;
            waited += 1;
        }
        assert!(snapshots(node) > 0, "node {node} took no snapshot");
        // Fewer Raft entries than `snapshot_every` so far: the snapshot came from counting
        // ledger events, not openraft's count of entries.
        let metrics = cluster.metrics(node).await.expect("metrics");
        let applied = sample_value(&metrics, "wasteledger_raft_last_applied", "").expect("gauge");
        assert!(
            applied < EVERY as f64,
            "node {node}: {applied} Raft entries; the test needs fewer than {EVERY}"
        );
    }
}

/// Builds `tests/support/stall_fdatasync.c` into `dir` with the system C compiler (which CI
/// machines have) and returns the shared library's path.
fn build_stall_shim(dir: &Path) -> std::path::PathBuf {
    let source = dir.join("stall_fdatasync.c");
    std::fs::write(&source, include_str!("support/stall_fdatasync.c")).expect("shim source");
    let shim = dir.join("stall_fdatasync.so");
    let status = std::process::Command::new("gcc")
        .args(["-shared", "-fPIC", "-O2", "-o"])
        .arg(&shim)
        .arg(&source)
        .arg("-ldl")
        .status()
        .expect("run gcc to build the fdatasync shim");
    assert!(status.success(), "gcc failed on {}", source.display());
    shim
}

/// A follower whose fdatasync stops returning (an LD_PRELOAD shim stands in for a dead disk or
/// a stuck storage engine) must not hang for ever holding its locks: its watchdog logs the
/// stall and the process exits with code 4. Writes go on through the other two meanwhile, and
/// after a restart the node catches up with everything acknowledged, on the same root.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_whose_storage_stalls_exits_and_comes_back_whole() {
    let raft = format!(
        "{}[storage]\nstall_timeout_s = 10\n",
        wasteledger_tests::cluster::TEST_RAFT
    );
    let mut cluster = Cluster::start_with_raft(Path::new(BIN), 3, &raft);
    register_parties(&cluster, &[1]).await;
    let leader = cluster.head(1).await.expect("head").leader_id;
    assert!(leader > 0);
    let stalled = if leader == 3 { 2 } else { 3 };

    let shim = build_stall_shim(cluster.dir());
    let flag = cluster.dir().join("stall-now");
    let (shim_path, flag_path) = (shim.display().to_string(), flag.display().to_string());
    cluster.stop(stalled);
    cluster.set_env(
        stalled,
        &[
            ("LD_PRELOAD", &shim_path),
            ("WL_TEST_STALL_FLAG", &flag_path),
        ],
    );
    cluster.start_node(stalled);

    let mut acknowledged = Vec::new();
    for serial in 1..=10u32 {
        let (number, event) = create_event(&cluster, serial);
        let receipt = cluster.submit(leader, &event, LONG).await.expect("submit");
        acknowledged.push((number, receipt));
    }
    cluster
        .converged(&[1, 2, 3], 16, LONG)
        .await
        .expect("the shimmed node follows while its syncs work");

    std::fs::write(&flag, b"").expect("flag");
    for serial in 11..=30u32 {
        let (number, event) = create_event(&cluster, serial);
        if let Some(receipt) = submit_unless_unavailable(&cluster, leader, &event).await {
            acknowledged.push((number, receipt));
        }
    }
    assert!(
        acknowledged.len() >= 25,
        "the other two kept accepting writes ({} acknowledged)",
        acknowledged.len()
    );
    let code = cluster.wait_exit(stalled, LONG);
    let logs = cluster.logs(stalled);
    assert_eq!(
        code,
        Some(i32::from(
            wasteledger_server::runtime::STORAGE_STALLED_EXIT_CODE
        )),
        "node {stalled} did not exit as stalled:\n{logs}"
    );
    assert!(logs.contains("storage stalled"), "{logs}");
    // The report says where: the shim holds fdatasync, the data file's sync step.
    assert!(
        logs.contains("data_file"),
        "the stall report names its step:\n{logs}"
    );
    assert!(
        logs.contains("wl-store-commit:"),
        "and the committer's wait:\n{logs}"
    );

    std::fs::remove_file(&flag).expect("remove flag");
    cluster.set_env(stalled, &[]);
    cluster.start_node(stalled);
    let head = every_node_holds(&cluster, acknowledged.iter()).await;
    assert!(head.size >= 6 + acknowledged.len() as u64);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_commit_without_quorum_and_tampered_node_refuses_to_serve() {
    let mut cluster = Cluster::start(Path::new(BIN), 3);
    register_parties(&cluster, &[1]).await;
    cluster.converged(&[1, 2, 3], 6, LONG).await.expect("agree");
    // Two of three down: writes are refused (never acknowledged).
    assert_eq!(cluster.stop(2), Some(0));
    assert_eq!(cluster.stop(3), Some(0));
    let (_, event) = create_event(&cluster, 7);
    let refused = cluster.submit(1, &event, Duration::from_secs(5)).await;
    assert!(
        refused.is_err(),
        "a write without quorum must not be acknowledged: {refused:?}"
    );
    // One returns: the write goes through.
    cluster.start_node(2);
    cluster
        .submit(1, &event, LONG)
        .await
        .expect("write succeeds with a quorum again");
    let head = cluster.converged(&[1, 2], 7, LONG).await.expect("agree");

    // Flip one byte of a stored event on the stopped node 3, which has the first 6 entries.
    let spec = cluster.specs[&3].clone();
    {
        let db = wasteledger_store::DurableDb::open(spec.data_dir.join("db"))
            .expect("open node 3's store");
        let tree = db.raw_tree("ledger").expect("ledger tree");
        let key = [b"E".as_slice(), &2u64.to_be_bytes()].concat();
        let mut bytes = tree
            .get(&key)
            .expect("read")
            .expect("entry 2 present")
            .to_vec();
        bytes[60] ^= 0x01;
        tree.insert(&key, bytes).expect("write");
        db.sync().expect("sync");
    }
    cluster.start_node(3);
    let code = cluster.wait_exit(3, LONG);
    assert!(
        matches!(code, Some(c) if c != 0),
        "a tampered node must refuse to start (exit {code:?})"
    );
    let logs = cluster.logs(3);
    assert!(
        logs.contains("integrity") && logs.contains("entry 2"),
        "the error names the check and the first bad index:\n{logs}"
    );
    assert!(head.size >= 7);
}

/// Start-up reads only the entries since the integrity checkpoint; damage below it is found by
/// the history check that runs once the node serves, and stops the node with the same error.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn damaged_settled_history_is_found_after_start_up_and_stops_the_node() {
    let mut cluster = Cluster::start(Path::new(BIN), 3);
    register_parties(&cluster, &[1]).await;
    for serial in 1..=70 {
        let (_, event) = create_event(&cluster, serial);
        cluster.submit(1, &event, LONG).await.expect("create");
    }
    cluster
        .converged(&[1, 2, 3], 76, LONG)
        .await
        .expect("agree");
    // The test timings snapshot every 50 entries; a snapshot records the integrity checkpoint.
    let deadline = std::time::Instant::now() + LONG;
    while !cluster.logs(3).contains("snapshot built") {
        assert!(
            std::time::Instant::now() < deadline,
            "node 3 built no snapshot"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(cluster.stop(3), Some(0));
    let spec = cluster.specs[&3].clone();
    {
        let db = wasteledger_store::DurableDb::open(spec.data_dir.join("db"))
            .expect("open node 3's store");
        let tree = db.raw_tree("ledger").expect("ledger tree");
        let key = [b"E".as_slice(), &2u64.to_be_bytes()].concat();
        let mut bytes = tree.get(&key).expect("read").expect("entry 2").to_vec();
        bytes[60] ^= 0x01;
        tree.insert(&key, bytes).expect("write");
        db.sync().expect("sync");
    }
    cluster.start_node(3);
    let code = cluster.wait_exit(3, LONG);
    let logs = cluster.logs(3);
    let restart = &logs[logs
        .rfind("storage opened")
        .expect("node 3 opened its storage again")..];
    assert!(
        restart.contains("node started"),
        "start-up passed: entry 2 is below the checkpoint\n{restart}"
    );
    assert!(
        matches!(code, Some(c) if c != 0),
        "a node with damaged history must stop (exit {code:?})"
    );
    assert!(
        restart.contains("settled history is damaged") && restart.contains("entry 2"),
        "the error names the check and the first bad index:\n{restart}"
    );
    // The others never stopped serving.
    cluster.converged(&[1, 2], 76, LONG).await.expect("agree");
}

/// Throughput and commit latency through a 3-node cluster, fsync on. A measurement, not an
/// assertion: run with
/// `cargo test --release -p wasteledger --test cluster -- --ignored --nocapture load_figures`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "measurement; run by hand in release"]
async fn load_figures() {
    // Production timings: the test cluster's snapshot every 50 entries would dominate.
    let cluster = std::sync::Arc::new(Cluster::start_with_raft(Path::new(BIN), 3, ""));
    register_parties(&cluster, &[1]).await;
    let leader = cluster.head(1).await.expect("head").leader_id;
    let mut serial = 100u32;
    for writers in [1usize, 16, 64] {
        let per_writer = if writers == 1 { 300 } else { 3000 / writers };
        let mut batches = Vec::new();
        for _ in 0..writers {
            let mut events = Vec::new();
            for _ in 0..per_writer {
                serial += 1;
                events.push(create_event(&cluster, serial).1);
            }
            batches.push(events);
        }
        let started = std::time::Instant::now();
        let mut tasks = Vec::new();
        for events in batches {
            let cluster = cluster.clone();
            tasks.push(tokio::spawn(async move {
                let mut client = cluster.client(leader).await.expect("client");
                let mut latencies = Vec::with_capacity(events.len());
                for event in events {
                    let t = std::time::Instant::now();
                    client.submit(event).await.expect("accepted");
                    latencies.push(t.elapsed());
                }
                latencies
            }));
        }
        let mut all = Vec::new();
        for t in tasks {
            all.extend(t.await.expect("writer"));
        }
        let elapsed = started.elapsed();
        all.sort();
        let pct = |p: f64| all[((all.len() as f64 * p) as usize).min(all.len() - 1)];
        println!(
            "writers={writers:>3} events={:>5} committed/s={:>7.0} p50={:?} p99={:?}",
            all.len(),
            all.len() as f64 / elapsed.as_secs_f64(),
            pct(0.50),
            pct(0.99)
        );
    }
    let head = cluster.converged(&[1, 2, 3], 1, LONG).await.expect("agree");
    println!(
        "final size {} — all three nodes agree on the root",
        head.size
    );
}

#[test]
fn the_demo_runs_end_to_end() {
    let dir = tempfile::tempdir().unwrap();
    let output = std::process::Command::new(BIN)
        .args(["demo", "--data-dir"])
        .arg(dir.path())
        .output()
        .expect("run the demo");
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success(),
        "demo failed:\n{stdout}\n{}",
        String::from_utf8_lossy(&output.stderr)
    );
    assert!(stdout.contains("VERIFIED"), "{stdout}");
    assert!(
        stdout.contains("FAILS"),
        "the tampered copy must be caught:\n{stdout}"
    );
    assert!(stdout.contains("on all three nodes"), "{stdout}");
}

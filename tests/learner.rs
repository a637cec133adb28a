//! A node added as a learner after the log was purged catches up through a snapshot and holds
//! exactly the same ledger (size, tree root, map root, chain head) as the leader.

// Test code: a failed expectation is a test failure with a message.
#![allow(clippy::expect_used, clippy::unwrap_used)]

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use tokio::net::TcpListener;
use wasteledger_core::pb::{self, event_body::Kind};
use wasteledger_core::sample::{ManifestFlow, SampleNetwork, T0, ids};
use wasteledger_node::node::{Node, NodeOptions, RaftTimings};
use wasteledger_node::types::{LedgerResponse, NodeAddr};

async fn start(id: u64, dir: &std::path::Path, net: &SampleNetwork) -> Node {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    Node::start(NodeOptions {
        id,
        data_dir: dir.join(format!("n{id}")),
        genesis: net.genesis.clone(),
        raft_listener: listener,
        api_addr: format!("127.0.0.1:{}", 9000 + id),
        timings: RaftTimings {
            heartbeat_ms: 100,
            election_timeout_min_ms: 500,
            election_timeout_max_ms: 1000,
            // Snapshots only when asked, and purge everything they cover.
            snapshot_every: 1_000_000,
            keep_logs_after_snapshot: 0,
        },
        storage: Default::default(),
        stall_watch: None,
    })
    .await
    .expect("node starts")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn learner_after_purge_catches_up_by_snapshot_to_the_same_root() {
    let net = SampleNetwork::new().unwrap();
    let dir = tempfile::tempdir().unwrap();
    let n1 = start(1, dir.path(), &net).await;
    let n2 = start(2, dir.path(), &net).await;
    let n3 = start(3, dir.path(), &net).await;
    let members: BTreeMap<u64, NodeAddr> = [(1, n1.addr()), (2, n2.addr()), (3, n3.addr())].into();
    n1.initialize(members).await.unwrap();

    // Wait for a leader that accepts writes, then write registrations and manifests.
    let deadline = Instant::now() + Duration::from_secs(30);
    let mut events: Vec<pb::SignedEvent> = net.registrations();
    for serial in 1..=30u32 {
        let number = format!("20261502{serial:06}");
        let flow = ManifestFlow::new(&net, &number, T0).unwrap();
        let manifest = net.manifest(&number, &[ids::ROAD]);
        events.push(flow.event(
            Kind::ManifestCreated(pb::ManifestCreated {
                manifest: Some(manifest),
            }),
            &[ids::GENERATOR],
        ));
    }
    let nodes = [&n1, &n2, &n3];
    for event in &events {
        loop {
            let leader = nodes.iter().find(|n| n.leader() == Some(n.raft_id()));
            let result = match leader {
                Some(l) => l.submit(event.clone()).await.ok(),
                None => None,
            };
            if let Some(LedgerResponse::Accepted { .. }) = result {
                break;
            }
            assert!(Instant::now() < deadline, "no leader accepted the writes");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
    let leader = *nodes
        .iter()
        .find(|n| n.leader() == Some(n.raft_id()))
        .expect("a leader");
    let purged_upto = leader
        .snapshot_and_purge(Duration::from_secs(20))
        .await
        .expect("snapshot and purge");
    assert!(
        purged_upto >= events.len() as u64,
        "the log holding every event was purged"
    );

    // A fourth node joins as learner: the leader has no log to send, only the snapshot.
    let n4 = start(4, dir.path(), &net).await;
    leader
        .add_learner(4, n4.addr())
        .await
        .expect("learner added and caught up");
    n4.wait_applied(purged_upto, Duration::from_secs(30))
        .await
        .expect("n4 applied the snapshot");
    assert_eq!(
        n4.ledger_head().unwrap(),
        leader.ledger_head().unwrap(),
        "same size, root and map root"
    );
    let chain = |n: &Node| n.state_machine.with_store(|s| s.chain_head()).unwrap();
    assert_eq!(chain(&n4), chain(leader));
    assert_eq!(n4.ledger_head().unwrap().0, events.len() as u64);
    n4.state_machine
        .with_store(|s| s.verify_integrity())
        .unwrap()
        .expect("installed ledger passes the integrity check");

    for n in [n1, n2, n3, n4] {
        n.shutdown().await.unwrap();
    }
}

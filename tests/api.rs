//! The public gRPC API against a real 3-node cluster on 127.0.0.1: every error class with its
//! code and reason, writes through a follower, idempotent resubmission, batches with a result
//! per item, linearizable reads on a follower, filtered pagination with a cursor past the end,
//! parties, Merkle proofs checked offline, and WatchEvents resuming without gaps or duplicates.
//!
//! Registered as an integration test of the `wasteledger` package so that Cargo builds the
//! binary and passes its path (`CARGO_BIN_EXE_wasteledger`).

// Test code: a failed expectation is a test failure with a message.
#![allow(clippy::expect_used, clippy::unwrap_used)]

use std::collections::BTreeSet;
use std::path::Path;
use std::time::{Duration, Instant};

use prost::Message;
use tokio_stream::StreamExt;
use wasteledger_core::Digest;
use wasteledger_core::checkpoint::SignedCheckpoint;
use wasteledger_core::merkle::{Blake3Hasher, verify_consistency, verify_inclusion};
use wasteledger_core::pb::{self, event_body::Kind};
use wasteledger_core::sample::{HOUR, ManifestFlow, T0, ids};
use wasteledger_server::REASON_KEY;
use wasteledger_tests::cluster::Cluster;

const BIN: &str = env!("CARGO_BIN_EXE_wasteledger");
const LONG: Duration = Duration::from_secs(60);

fn tn(number: &str) -> Option<pb::TrackingNumber> {
    Some(pb::TrackingNumber {
        scheme: pb::TrackingScheme::Cn as i32,
        number: number.into(),
    })
}

fn created(flow: &ManifestFlow<'_>, cluster: &Cluster, transporters: &[&str]) -> pb::SignedEvent {
    let number = flow.tracking.to_string();
    let number = number.split_once(':').unwrap().1;
    flow.event(
        Kind::ManifestCreated(pb::ManifestCreated {
            manifest: Some(cluster.net.manifest(number, transporters)),
        }),
        &[ids::GENERATOR],
    )
}

async fn register_parties(cluster: &Cluster) {
    for event in cluster.net.registrations() {
        cluster.submit(1, &event, LONG).await.expect("registration");
    }
}

fn reason(s: &tonic::Status) -> String {
    s.metadata()
        .get(REASON_KEY)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
        .to_owned()
}

/// Submits to `node` and expects a refusal with `code`; returns the reason code.
async fn refused(
    cluster: &Cluster,
    node: u64,
    event: &pb::SignedEvent,
    code: tonic::Code,
) -> String {
    let status = cluster
        .submit(node, event, LONG)
        .await
        .expect_err("the event must be refused");
    assert_eq!(status.code(), code, "{status:?}");
    assert!(!status.message().is_empty(), "a human message: {status:?}");
    let r = reason(&status);
    assert!(!r.is_empty(), "a reason code: {status:?}");
    r
}

async fn leader_and_follower(cluster: &Cluster) -> (u64, u64) {
    let head = cluster.head(1).await.expect("node 1 answers");
    let leader = head.leader_id;
    assert_ne!(leader, 0, "a leader is known");
    let follower = (1..=3).find(|n| *n != leader).unwrap();
    (leader, follower)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_error_class_has_its_code_and_reason() {
    let mut cluster = Cluster::start(Path::new(BIN), 3);
    register_parties(&cluster).await;
    let (_, follower) = leader_and_follower(&cluster).await;
    let ledger_id = cluster.net.ledger_id();

    let mut flow = ManifestFlow::new(&cluster.net, "20261502000001", T0).unwrap();
    let create = created(&flow, &cluster, &[ids::ROAD]);

    // Malformed: a body that is not an EventBody.
    let garbage = pb::SignedEvent {
        body: vec![0xff; 40],
        signatures: create.signatures.clone(),
    };
    let r = refused(&cluster, follower, &garbage, tonic::Code::InvalidArgument).await;
    assert!(r.starts_with("envelope."), "{r}");

    // Bad signature: one bit flipped.
    let mut forged = create.clone();
    forged.signatures[0].signature[3] ^= 1;
    let r = refused(&cluster, follower, &forged, tonic::Code::Unauthenticated).await;
    assert!(r.contains("signature"), "{r}");

    // Unknown key: a well-formed signature by a key nobody registered.
    let stranger = wasteledger_core::sample::key_from_label("stranger");
    let body = pb::EventBody::decode(create.body.as_slice()).unwrap();
    let unknown = wasteledger_core::compose::sign_event(&ledger_id, &body, &[&stranger]);
    let r = refused(&cluster, follower, &unknown, tonic::Code::Unauthenticated).await;
    assert!(r.contains("key"), "{r}");

    // Wrong party: the facility signs the generator's creation.
    let wrong = flow.event(
        Kind::ManifestCreated(pb::ManifestCreated {
            manifest: Some(cluster.net.manifest("20261502000001", &[ids::ROAD])),
        }),
        &[ids::FACILITY],
    );
    refused(&cluster, follower, &wrong, tonic::Code::PermissionDenied).await;

    // The real creation goes through, then the same tracking number again is a duplicate.
    let receipt = cluster
        .submit(follower, &create, LONG)
        .await
        .expect("create");
    flow.accept(&create);
    let mut again = ManifestFlow::new(&cluster.net, "20261502000001", T0 + HOUR).unwrap();
    let duplicate = created(&again, &cluster, &[ids::ROAD, ids::RAIL]);
    let r = refused(&cluster, follower, &duplicate, tonic::Code::AlreadyExists).await;
    assert!(r.contains("exists") || r.contains("duplicate"), "{r}");

    // Custody rule broken: a handoff on a stale head (the zero head of a fresh flow).
    again.head = Digest::ZERO;
    let stale = again.event(
        ManifestFlow::handoff(ids::GENERATOR, ids::ROAD),
        &[ids::GENERATOR, ids::ROAD],
    );
    refused(&cluster, follower, &stale, tonic::Code::FailedPrecondition).await;
    // Out of order: delivery to the facility before anyone picked the load up.
    let early = flow.event(
        ManifestFlow::handoff(ids::ROAD, ids::FACILITY),
        &[ids::ROAD, ids::FACILITY],
    );
    refused(&cluster, follower, &early, tonic::Code::FailedPrecondition).await;

    // Too large: a body over the 64 KiB event limit is refused by the rules …
    let mut big_manifest = cluster.net.manifest("20261502000002", &[ids::ROAD]);
    big_manifest.handling_instructions = "x".repeat(70 * 1024);
    let big_flow = ManifestFlow::new(&cluster.net, "20261502000002", T0).unwrap();
    let big = big_flow.event(
        Kind::ManifestCreated(pb::ManifestCreated {
            manifest: Some(big_manifest),
        }),
        &[ids::GENERATOR],
    );
    let r = refused(&cluster, follower, &big, tonic::Code::ResourceExhausted).await;
    assert!(r.contains("large"), "{r}");
    // … and a request over the transport limit never reaches them.
    let mut client = cluster.client(follower).await.unwrap();
    let huge = pb::SignedEvent {
        body: vec![0; wasteledger_server::MAX_REQUEST_BYTES + 1],
        signatures: vec![],
    };
    let status = client.submit(huge).await.expect_err("oversize request");
    assert_eq!(status.code(), tonic::Code::ResourceExhausted, "{status:?}");

    // Query errors: a malformed tracking number, an unknown manifest, a forged page token.
    let status = client
        .get_manifest(pb::GetManifestRequest {
            tracking_number: Some(pb::TrackingNumber {
                scheme: pb::TrackingScheme::Cn as i32,
                number: "12".into(),
            }),
            ..Default::default()
        })
        .await
        .expect_err("bad tracking number");
    assert_eq!(status.code(), tonic::Code::InvalidArgument);
    assert_eq!(reason(&status), "query.tracking_number");
    let status = client
        .get_manifest(pb::GetManifestRequest {
            tracking_number: tn("20261502999999"),
            ..Default::default()
        })
        .await
        .expect_err("unknown manifest");
    assert_eq!(status.code(), tonic::Code::NotFound);
    assert_eq!(reason(&status), "query.unknown_manifest");
    let status = client
        .list_manifests(pb::ListManifestsRequest {
            page_token: "not-a-token".into(),
            ..Default::default()
        })
        .await
        .expect_err("forged token");
    assert_eq!(status.code(), tonic::Code::InvalidArgument);
    assert_eq!(reason(&status), "query.page_token");

    // Nothing refused reached the ledger: 6 registrations + 1 creation, on every node.
    let head = cluster.converged(&[1, 2, 3], 7, LONG).await.expect("agree");
    assert_eq!(head.size, 7);
    assert_eq!(receipt.index, 6);

    // No quorum: UNAVAILABLE, with a reason; and a linearizable read fails the same way.
    let next = flow.event(
        ManifestFlow::handoff(ids::GENERATOR, ids::ROAD),
        &[ids::GENERATOR, ids::ROAD],
    );
    drop(flow);
    let survivor = follower;
    for n in (1..=3).filter(|n| *n != survivor) {
        assert_eq!(cluster.stop(n), Some(0));
    }
    let mut client = cluster.client(survivor).await.unwrap();
    let status = tokio::time::timeout(Duration::from_secs(30), client.submit(next))
        .await
        .expect("answers within the deadline")
        .expect_err("no quorum, no acknowledgement");
    assert_eq!(status.code(), tonic::Code::Unavailable, "{status:?}");
    assert!(reason(&status).starts_with("cluster."), "{status:?}");
    let status = client
        .get_manifest(pb::GetManifestRequest {
            tracking_number: tn("20261502000001"),
            consistency: pb::ReadConsistency::Linearizable as i32,
            ..Default::default()
        })
        .await
        .expect_err("no linearizable read without a quorum");
    assert_eq!(status.code(), tonic::Code::Unavailable, "{status:?}");
    // A local read still answers.
    client
        .get_manifest(pb::GetManifestRequest {
            tracking_number: tn("20261502000001"),
            ..Default::default()
        })
        .await
        .expect("local read");
}

/// Creates manifests `first..first+count` (serial numbers), even serials by road then rail,
/// each an hour after the previous, and ships every third one (generator → road).
fn manifests(cluster: &Cluster, first: u32, count: u32) -> Vec<pb::SignedEvent> {
    let mut events = Vec::new();
    for serial in first..first + count {
        let number = format!("20261502{serial:06}");
        let mut flow = ManifestFlow::new(&cluster.net, &number, T0 + serial as i64 * HOUR).unwrap();
        let legs: &[&str] = if serial % 2 == 0 {
            &[ids::ROAD, ids::RAIL]
        } else {
            &[ids::ROAD]
        };
        let create = created(&flow, cluster, legs);
        flow.accept(&create);
        events.push(create);
        if serial % 3 == 0 {
            events.push(flow.event(
                ManifestFlow::handoff(ids::GENERATOR, ids::ROAD),
                &[ids::GENERATOR, ids::ROAD],
            ));
        }
    }
    events
}

async fn list_all(
    client: &mut wasteledger_server::LedgerServiceClient<tonic::transport::Channel>,
    request: pb::ListManifestsRequest,
) -> (Vec<String>, usize) {
    let mut numbers = Vec::new();
    let mut pages = 0;
    let mut request = request;
    loop {
        let page = client
            .list_manifests(request.clone())
            .await
            .expect("list")
            .into_inner();
        pages += 1;
        assert!(pages < 100, "pagination terminates");
        numbers.extend(
            page.manifests
                .iter()
                .map(|m| m.tracking_number.as_ref().unwrap().number.clone()),
        );
        if page.next_page_token.is_empty() {
            return (numbers, pages);
        }
        request.page_token = page.next_page_token;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn writes_and_reads_through_any_node() {
    let cluster = Cluster::start(Path::new(BIN), 3);
    register_parties(&cluster).await;
    let (leader, follower) = leader_and_follower(&cluster).await;

    // A batch through a follower: every item decided, in order, one result each; a bad item
    // in the middle does not undo or stop the others.
    let mut events = manifests(&cluster, 1, 20);
    // A new event (not a copy of one in the batch: that would be answered as a resubmission
    // of the recorded original) whose signature is broken.
    let mut forged = manifests(&cluster, 30, 1).remove(0);
    forged.signatures[0].signature[0] ^= 1;
    events.insert(4, forged);
    let mut client = cluster.client(follower).await.unwrap();
    let response = client
        .submit_batch(pb::SubmitBatchRequest {
            events: events.clone(),
        })
        .await
        .expect("batch")
        .into_inner();
    assert_eq!(response.results.len(), events.len());
    let mut previous_index = None;
    for (i, result) in response.results.iter().enumerate() {
        match (&result.result, i) {
            (Some(pb::submit_result::Result::Rejected(e)), 4) => {
                assert_eq!(e.code, tonic::Code::Unauthenticated as i32, "{e:?}");
                assert!(!e.reason.is_empty() && !e.message.is_empty(), "{e:?}");
            }
            (Some(pb::submit_result::Result::Accepted(r)), _) => {
                assert_eq!(r.tree_size, r.index + 1);
                // Independent items are committed together, yet recorded in batch order.
                assert!(
                    previous_index < Some(r.index),
                    "item {i} out of order: {r:?}"
                );
                previous_index = Some(r.index);
            }
            other => panic!("item {i}: {other:?}"),
        }
    }
    let rejected = response
        .results
        .iter()
        .filter(|r| matches!(r.result, Some(pb::submit_result::Result::Rejected(_))))
        .count();
    assert_eq!(rejected, 1, "only the forged item is refused");
    let accepted = events.len() as u64 - 1;

    // Idempotent resubmission, single and batched: the original receipts, no new entries.
    let first = match &response.results[0].result {
        Some(pb::submit_result::Result::Accepted(r)) => r.clone(),
        other => panic!("{other:?}"),
    };
    let again = cluster
        .submit(follower, &events[0], LONG)
        .await
        .expect("resubmit");
    assert_eq!(again.index, first.index);
    assert_eq!(again.leaf_hash, first.leaf_hash);
    let head = cluster
        .converged(&[1, 2, 3], 6 + accepted, LONG)
        .await
        .expect("agree");
    assert_eq!(head.size, 6 + accepted, "a resubmission adds nothing");

    // The same body under a signature that is not the recorded one is refused, not answered
    // with the original receipt (its signatures were never checked), singly and in a batch.
    let mut forged = events[0].clone();
    forged.signatures[0].signature[0] ^= 1;
    let r = refused(&cluster, follower, &forged, tonic::Code::AlreadyExists).await;
    assert_eq!(r, "ledger.recorded_with_other_signatures");
    let mut twin = events[0].clone();
    twin.signatures[0].signature[63] ^= 0x40;
    let mut leader_client = cluster.client(leader).await.unwrap();
    let response = leader_client
        .submit_batch(pb::SubmitBatchRequest { events: vec![twin] })
        .await
        .expect("a batch call")
        .into_inner();
    match &response.results[..] {
        [
            pb::SubmitResult {
                result: Some(pb::submit_result::Result::Rejected(e)),
            },
        ] => {
            assert_eq!(e.reason, "ledger.recorded_with_other_signatures", "{e:?}");
            assert_eq!(e.code, tonic::Code::AlreadyExists as i32, "{e:?}");
        }
        other => panic!("{other:?}"),
    }
    let head = cluster
        .converged(&[1, 2, 3], 6 + accepted, LONG)
        .await
        .expect("agree");
    assert_eq!(head.size, 6 + accepted, "a refused twin adds nothing");

    // A write acknowledged by the leader is visible at once to a linearizable read on a
    // follower.
    let extra = manifests(&cluster, 21, 1);
    let receipt = cluster
        .submit(leader, &extra[0], LONG)
        .await
        .expect("write");
    let mut fc = cluster.client(follower).await.unwrap();
    let state = fc
        .get_manifest(pb::GetManifestRequest {
            tracking_number: tn("20261502000021"),
            include_events: true,
            consistency: pb::ReadConsistency::Linearizable as i32,
        })
        .await
        .expect("linearizable read on a follower")
        .into_inner();
    assert_eq!(state.events.len(), 1);
    assert_eq!(state.events[0].index, receipt.index);
    assert_eq!(state.events[0].kind, "ManifestCreated");
    assert_eq!(state.events[0].leaf_hash, receipt.leaf_hash);

    // Pagination: all 21 manifests in pages of 4, in tracking-number order, no repeats.
    let (all, pages) = list_all(
        &mut fc,
        pb::ListManifestsRequest {
            page_size: 4,
            ..Default::default()
        },
    )
    .await;
    let expected: Vec<String> = (1..=21).map(|s| format!("20261502{s:06}")).collect();
    assert_eq!(all, expected);
    assert_eq!(pages, 6);
    // Filters: the rail carrier as transporter = the even serials.
    let (rail, _) = list_all(
        &mut fc,
        pb::ListManifestsRequest {
            party: ids::RAIL.into(),
            role: pb::Role::Transporter as i32,
            page_size: 3,
            ..Default::default()
        },
    )
    .await;
    let even: Vec<String> = (1..=21)
        .filter(|s| s % 2 == 0)
        .map(|s| format!("20261502{s:06}"))
        .collect();
    assert_eq!(rail, even);
    // The rail carrier is never a generator.
    let (none, _) = list_all(
        &mut fc,
        pb::ListManifestsRequest {
            party: ids::RAIL.into(),
            role: pb::Role::Generator as i32,
            ..Default::default()
        },
    )
    .await;
    assert!(none.is_empty());
    // In transit = every third serial; combined with a creation-time window.
    let (shipped, _) = list_all(
        &mut fc,
        pb::ListManifestsRequest {
            statuses: vec![pb::ManifestStatus::InTransit as i32],
            page_size: 2,
            ..Default::default()
        },
    )
    .await;
    let thirds: Vec<String> = (1..=20)
        .filter(|s| s % 3 == 0)
        .map(|s| format!("20261502{s:06}"))
        .collect();
    assert_eq!(shipped, thirds);
    let (window, _) = list_all(
        &mut fc,
        pb::ListManifestsRequest {
            statuses: vec![pb::ManifestStatus::InTransit as i32],
            time_field: pb::ManifestTime::Created as i32,
            from_ms: T0 + 6 * HOUR,
            until_ms: T0 + 15 * HOUR,
            ..Default::default()
        },
    )
    .await;
    assert_eq!(
        window,
        vec!["20261502000006", "20261502000009", "20261502000012"]
    );
    // A cursor past the end gives an empty page, never page one again.
    let past = fc
        .list_manifests(pb::ListManifestsRequest {
            page_token: format!("k{}", hex::encode("cn:99999999999999")),
            ..Default::default()
        })
        .await
        .expect("past the end")
        .into_inner();
    assert!(past.manifests.is_empty() && past.next_page_token.is_empty());

    // Parties.
    let party = fc
        .get_party(pb::GetPartyRequest {
            registry_id: ids::ROAD.into(),
            ..Default::default()
        })
        .await
        .expect("party")
        .into_inner();
    assert_eq!(party.party.unwrap().registry_id, ids::ROAD);
    assert_eq!(party.keys.len(), 1);
    let transporters = fc
        .list_parties(pb::ListPartiesRequest {
            role: pb::Role::Transporter as i32,
            ..Default::default()
        })
        .await
        .expect("parties")
        .into_inner();
    let names: BTreeSet<String> = transporters
        .parties
        .iter()
        .map(|p| p.party.as_ref().unwrap().registry_id.clone())
        .collect();
    assert_eq!(names, BTreeSet::from([ids::ROAD.into(), ids::RAIL.into()]));

    // Merkle proofs from a follower, checked offline against the published checkpoint.
    let deadline = Instant::now() + LONG;
    let checkpoint = loop {
        if let Ok(note) = fc.get_checkpoint(pb::GetCheckpointRequest {}).await {
            let c = SignedCheckpoint::parse_note(&note.into_inner().note).unwrap();
            if c.checkpoint.size > receipt.index {
                break c.checkpoint;
            }
        }
        assert!(Instant::now() < deadline, "a checkpoint covering the write");
        tokio::time::sleep(Duration::from_millis(300)).await;
    };
    let inclusion = fc
        .get_inclusion_proof(pb::GetInclusionProofRequest {
            index: receipt.index,
            tree_size: 0,
        })
        .await
        .expect("inclusion proof")
        .into_inner();
    assert_eq!(inclusion.tree_size, checkpoint.size);
    assert_eq!(inclusion.root, checkpoint.root.0.to_vec());
    let digests = |v: &[Vec<u8>]| -> Vec<Digest> {
        v.iter().map(|b| Digest::from_slice(b).unwrap()).collect()
    };
    verify_inclusion::<Blake3Hasher>(
        &wasteledger_core::entry::leaf_hash(&inclusion.entry),
        inclusion.index,
        inclusion.tree_size,
        &digests(&inclusion.path),
        &checkpoint.root,
    )
    .expect("inclusion verifies");
    let consistency = fc
        .get_consistency_proof(pb::GetConsistencyProofRequest {
            old_size: 7,
            new_size: 0,
        })
        .await
        .expect("consistency proof")
        .into_inner();
    verify_consistency::<Blake3Hasher>(
        7,
        checkpoint.size,
        &Digest::from_slice(&consistency.old_root).unwrap(),
        &checkpoint.root,
        &digests(&consistency.path),
    )
    .expect("consistency verifies");
    let status = fc
        .get_inclusion_proof(pb::GetInclusionProofRequest {
            index: 0,
            tree_size: 10_000,
        })
        .await
        .expect_err("beyond the ledger");
    assert_eq!(status.code(), tonic::Code::OutOfRange);

    // A full batch of independent creations is checked and queued as one run, so its items
    // go into Raft in several groups at once; they are still recorded in batch order.
    let bulk = manifests(&cluster, 100, 200)
        .into_iter()
        .filter(|e| {
            let body = pb::EventBody::decode(e.body.as_slice()).unwrap();
            matches!(body.kind, Some(Kind::ManifestCreated(_)))
        })
        .collect::<Vec<_>>();
    let response = fc
        .submit_batch(pb::SubmitBatchRequest {
            events: bulk.clone(),
        })
        .await
        .expect("bulk batch")
        .into_inner();
    let indexes: Vec<u64> = response
        .results
        .iter()
        .map(|r| match &r.result {
            Some(pb::submit_result::Result::Accepted(receipt)) => receipt.index,
            other => panic!("{other:?}"),
        })
        .collect();
    assert_eq!(indexes.len(), bulk.len());
    assert!(
        indexes.windows(2).all(|w| w[0] + 1 == w[1]),
        "one run, recorded in batch order and contiguously: {indexes:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn watch_resumes_without_gaps_or_duplicates() {
    let cluster = Cluster::start(Path::new(BIN), 3);
    register_parties(&cluster).await;
    let (_, follower) = leader_and_follower(&cluster).await;
    let events = manifests(&cluster, 1, 12);
    let total = 6 + events.len() as u64;

    // Watch from a follower while writes arrive; drop the stream midway.
    let mut client = cluster.client(follower).await.unwrap();
    let mut stream = client
        .watch_events(pb::WatchEventsRequest::default())
        .await
        .expect("watch")
        .into_inner();
    let writer = {
        let events = events.clone();
        let specs = cluster.specs.clone();
        tokio::spawn(async move {
            let api = &specs[&1].api;
            let mut c = wasteledger_server::LedgerServiceClient::connect(format!("http://{api}"))
                .await
                .unwrap();
            for e in events {
                c.submit(e).await.expect("write");
            }
        })
    };
    let mut seen = Vec::new();
    while seen.len() < 10 {
        let e = tokio::time::timeout(LONG, stream.next())
            .await
            .expect("events arrive")
            .expect("stream open")
            .expect("event");
        seen.push(e.index);
    }
    drop(stream);
    writer.await.unwrap();
    // Resume from the next index on another node: the rest, exactly once, then live.
    let resume_at = seen.last().unwrap() + 1;
    let other = (1..=3).find(|n| *n != follower).unwrap();
    let mut client = cluster.client(other).await.unwrap();
    let mut stream = client
        .watch_events(pb::WatchEventsRequest {
            from_index: resume_at,
            ..Default::default()
        })
        .await
        .expect("watch")
        .into_inner();
    while (seen.len() as u64) < total {
        let e = tokio::time::timeout(LONG, stream.next())
            .await
            .expect("events arrive")
            .expect("stream open")
            .expect("event");
        seen.push(e.index);
    }
    let expected: Vec<u64> = (0..total).collect();
    assert_eq!(seen, expected, "every index once, in order");

    // A live event after catching up, and a filtered stream: only the rail carrier's
    // manifests' events (even serials: 6 creations).
    let live = manifests(&cluster, 40, 1);
    cluster.submit(1, &live[0], LONG).await.expect("live write");
    let e = tokio::time::timeout(LONG, stream.next())
        .await
        .expect("live event arrives")
        .expect("open")
        .expect("event");
    assert_eq!(e.index, total);
    let mut filtered = client
        .watch_events(pb::WatchEventsRequest {
            party: ids::RAIL.into(),
            manifests_only: true,
            kinds: vec!["ManifestCreated".into()],
            ..Default::default()
        })
        .await
        .expect("filtered watch")
        .into_inner();
    let mut subjects = Vec::new();
    while subjects.len() < 7 {
        let e = tokio::time::timeout(LONG, filtered.next())
            .await
            .expect("filtered events arrive")
            .expect("open")
            .expect("event");
        assert_eq!(e.kind, "ManifestCreated");
        subjects.push(e.subject);
    }
    let expected: Vec<String> = [2, 4, 6, 8, 10, 12, 40]
        .iter()
        .map(|s| format!("cn:20261502{s:06}"))
        .collect();
    assert_eq!(subjects, expected);
}

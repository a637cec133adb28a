//! Operability of real `wasteledger node` processes on 127.0.0.1: gRPC health following the
//! quorum, server reflection, the Prometheus endpoint counting what the test submitted, request
//! ids, the admin ClusterService on the admin listener and (signed by a genesis authority) on
//! the public one, a node added as a learner and promoted to voter, and a replica (a node
//! without a witness key) that joins as a learner and serves verifiable proofs.
//!
//! Registered as an integration test of the `wasteledger` package so that Cargo builds the
//! binary and passes its path (`CARGO_BIN_EXE_wasteledger`).

#![allow(clippy::expect_used, clippy::unwrap_used)]

use std::path::Path;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use tonic_health::pb::HealthCheckRequest;
use tonic_health::pb::health_check_response::ServingStatus;
use tonic_health::pb::health_client::HealthClient;
use tonic_reflection::pb::v1::ServerReflectionRequest;
use tonic_reflection::pb::v1::server_reflection_client::ServerReflectionClient;
use tonic_reflection::pb::v1::server_reflection_request::MessageRequest;
use tonic_reflection::pb::v1::server_reflection_response::MessageResponse;
use wasteledger_core::pb::{self, event_body::Kind};
use wasteledger_core::sample::{ManifestFlow, T0, ids};
use wasteledger_server::runtime::admin::sign_admin_request;
use wasteledger_tests::cluster::{Cluster, sample_value};

const BIN: &str = env!("CARGO_BIN_EXE_wasteledger");
const LONG: Duration = Duration::from_secs(60);
const LEDGER_SERVICE: &str = "wasteledger.v1.LedgerService";

fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_millis() as i64
}

fn reason(status: &tonic::Status) -> Option<&str> {
    status
        .metadata()
        .get("wasteledger-reason")
        .and_then(|v| v.to_str().ok())
}

/// The ids of the learners in `status`.
fn learner_ids(status: &pb::ClusterStatus) -> Vec<u64> {
    status.learners.iter().map(|m| m.node_id).collect()
}

/// The leader as node `via` sees it, once one is known (bounded).
async fn leader(cluster: &Cluster, via: u64) -> u64 {
    let deadline = Instant::now() + LONG;
    loop {
        if let Some(s) = cluster.status(via).await
            && s.leader_id != 0
        {
            return s.leader_id;
        }
        assert!(Instant::now() < deadline, "node {via} never saw a leader");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Polls node `id`'s metrics until `check` holds (bounded); returns the last text.
async fn metrics_until(cluster: &Cluster, id: u64, check: impl Fn(&str) -> bool) -> String {
    let deadline = Instant::now() + LONG;
    loop {
        let text = cluster.metrics(id).await.unwrap_or_default();
        if check(&text) {
            return text;
        }
        assert!(
            Instant::now() < deadline,
            "node {id}'s metrics never matched:\n{text}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

async fn reflected_services(cluster: &Cluster, id: u64) -> Vec<String> {
    let channel =
        tonic::transport::Endpoint::from_shared(format!("http://{}", cluster.specs[&id].api))
            .unwrap()
            .connect()
            .await
            .expect("connect");
    let mut client = ServerReflectionClient::new(channel);
    let request = ServerReflectionRequest {
        host: String::new(),
        message_request: Some(MessageRequest::ListServices(String::new())),
    };
    let mut responses = client
        .server_reflection_info(tokio_stream::iter(vec![request]))
        .await
        .expect("reflection answers")
        .into_inner();
    let response = responses
        .message()
        .await
        .expect("a response")
        .expect("not empty");
    match response.message_response {
        Some(MessageResponse::ListServicesResponse(list)) => {
            list.service.into_iter().map(|s| s.name).collect()
        }
        other => panic!("unexpected reflection answer {other:?}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn health_reflection_metrics_and_admin_on_a_three_node_cluster() {
    let mut cluster = Cluster::start(Path::new(BIN), 3);
    for id in 1..=3 {
        for service in ["", LEDGER_SERVICE] {
            assert!(
                cluster
                    .wait_health(id, service, ServingStatus::Serving, LONG)
                    .await,
                "node {id} never reported SERVING for {service:?}:\n{}",
                cluster.logs(id)
            );
        }
    }

    // Reflection: grpcurl can list and describe the API without proto files.
    let services = reflected_services(&cluster, 2).await;
    for name in [
        LEDGER_SERVICE,
        "wasteledger.v1.ClusterService",
        "grpc.health.v1.Health",
    ] {
        assert!(
            services.iter().any(|s| s == name),
            "{name} missing from {services:?}"
        );
    }

    // Writes the metrics must report: the six registrations, and one refused at the leader's
    // pre-check (a registration signed by a key that is not the authority's).
    let leader = leader(&cluster, 2).await;
    for event in cluster.net.registrations() {
        cluster
            .submit(leader, &event, LONG)
            .await
            .expect("registration accepted");
    }
    let impostor = wasteledger_core::sample::key_from_label("not the authority");
    let first = &cluster.net.registrations()[0];
    let mut body: pb::EventBody = prost::Message::decode(first.body.as_slice()).unwrap();
    // A different body: an identical one would be answered as a resubmission.
    body.occurred_at += 1;
    let forged =
        wasteledger_core::compose::sign_event(&cluster.net.ledger_id(), &body, &[&impostor]);
    let refused = cluster
        .submit(leader, &forged, LONG)
        .await
        .expect_err("a registration not signed by the authority is refused");
    let refused_reason = reason(&refused).expect("reason code").to_owned();
    cluster.converged(&[1, 2, 3], 6, LONG).await.expect("agree");

    let text = metrics_until(&cluster, leader, |t| {
        sample_value(t, "wasteledger_ledger_size", "") == Some(6.0)
    })
    .await;
    assert_eq!(
        sample_value(&text, "wasteledger_events_accepted_total", ""),
        Some(6.0),
        "{text}"
    );
    assert_eq!(
        sample_value(
            &text,
            "wasteledger_events_rejected_total",
            &format!("reason=\"{refused_reason}\",stage=\"precheck\"")
        ),
        Some(1.0),
        "{text}"
    );
    assert_eq!(
        sample_value(&text, "wasteledger_raft_is_leader", ""),
        Some(1.0)
    );
    assert_eq!(
        sample_value(&text, "wasteledger_raft_leader_id", ""),
        Some(leader as f64)
    );
    assert!(sample_value(&text, "wasteledger_raft_term", "").is_some_and(|t| t >= 1.0));
    assert!(sample_value(&text, "wasteledger_raft_last_applied", "").is_some_and(|i| i >= 6.0));
    assert_eq!(sample_value(&text, "wasteledger_serving", ""), Some(1.0));
    for (i, follower) in (1..=3).filter(|n| *n != leader).enumerate() {
        let lag = sample_value(
            &text,
            "wasteledger_raft_replication_lag",
            &format!("follower=\"{follower}\""),
        );
        assert!(
            lag.is_some(),
            "no lag reported for follower {follower} ({i}):\n{text}"
        );
    }
    for histogram in [
        "wasteledger_fsync_seconds_count",
        "wasteledger_apply_seconds_count",
    ] {
        assert!(
            sample_value(&text, histogram, "").is_some_and(|n| n >= 1.0),
            "{histogram}:\n{text}"
        );
    }
    // Every Submit the leader answered was pre-checked (six registrations and the forgery);
    // all but the refused forgery were proposed.
    let submits = sample_value(
        &text,
        "wasteledger_commit_seconds_count",
        "method=\"/wasteledger.v1.LedgerService/Submit\"",
    )
    .unwrap_or(0.0);
    let prechecks = sample_value(&text, "wasteledger_precheck_seconds_count", "").unwrap_or(0.0);
    let proposals = sample_value(&text, "wasteledger_propose_seconds_count", "").unwrap_or(0.0);
    assert!(
        prechecks >= 7.0 && proposals >= 6.0 && proposals < prechecks,
        "submits {submits}, prechecks {prechecks}, proposals {proposals}:\n{text}"
    );
    assert!(
        sample_value(
            &text,
            "wasteledger_commit_seconds_count",
            "method=\"/wasteledger.v1.LedgerService/Submit\""
        )
        .is_some_and(|n| n >= 6.0),
        "{text}"
    );
    assert!(
        sample_value(
            &text,
            "wasteledger_grpc_requests_total",
            "method=\"/wasteledger.v1.LedgerService/Submit\",code=\"Ok\""
        )
        .is_some_and(|n| n >= 6.0),
        "{text}"
    );
    // Followers applied the same verdicts; the pre-check refusal happened only on the leader.
    let follower = (1..=3).find(|n| *n != leader).unwrap();
    let text = metrics_until(&cluster, follower, |t| {
        sample_value(t, "wasteledger_events_accepted_total", "") == Some(6.0)
    })
    .await;
    assert_eq!(
        sample_value(&text, "wasteledger_raft_is_leader", ""),
        Some(0.0)
    );
    // The checkpoint gauges appear once the witnesses have published one.
    metrics_until(&cluster, follower, |t| {
        sample_value(t, "wasteledger_checkpoint_size", "") == Some(6.0)
            && sample_value(t, "wasteledger_checkpoint_age_seconds", "").is_some()
    })
    .await;
    // A new node has no stored history left to re-check.
    assert_eq!(
        sample_value(&text, "wasteledger_history_unchecked_entries", ""),
        Some(0.0),
        "{text}"
    );

    // Request ids: an incoming one is echoed, otherwise one is made up.
    let mut client = cluster.client(3).await.expect("client");
    let mut request = tonic::Request::new(pb::GetLedgerHeadRequest {});
    request
        .metadata_mut()
        .insert("x-request-id", "ops-test-42".parse().unwrap());
    let response = client.get_ledger_head(request).await.expect("head");
    assert_eq!(
        response.metadata().get("x-request-id").unwrap(),
        "ops-test-42"
    );
    let response = client
        .get_ledger_head(pb::GetLedgerHeadRequest {})
        .await
        .expect("head");
    let generated = response.metadata().get("x-request-id").expect("an id");
    assert_eq!(generated.len(), 36, "a UUID: {generated:?}");

    // Admin listener: trusted, full status.
    let status = cluster.status(follower).await.expect("status");
    assert_eq!(status.node_id, follower);
    assert_eq!(status.leader_id, leader);
    assert_eq!(status.leader_api, cluster.specs[&leader].api);
    assert_eq!(
        status.voters.iter().map(|m| m.node_id).collect::<Vec<_>>(),
        vec![1, 2, 3]
    );
    assert!(status.learners.is_empty());
    assert!(status.serving, "{status:?}");
    assert_eq!(status.ledger_size, 6);
    assert!(status.last_applied >= 6 && status.committed >= status.last_applied);
    let at_leader = cluster.status(leader).await.expect("leader status");
    assert_eq!(
        at_leader
            .replication
            .iter()
            .map(|r| r.node_id)
            .collect::<Vec<_>>(),
        (1..=3).filter(|n| *n != leader).collect::<Vec<_>>()
    );

    // Public listener: admin calls need a genesis authority's signature.
    let mut public = cluster.public_admin_client(follower).await.expect("client");
    let unsigned = public
        .status(pb::StatusRequest::default())
        .await
        .expect_err("unsigned admin call refused");
    assert_eq!(unsigned.code(), tonic::Code::Unauthenticated);
    assert_eq!(reason(&unsigned), Some("admin.auth_missing"));
    let ledger_id = cluster.net.ledger_id();
    let signed = sign_admin_request(
        pb::StatusRequest::default(),
        &cluster.net.authority,
        &ledger_id,
        now_ms(),
    );
    let status = public
        .status(signed)
        .await
        .expect("an authority's signed call is accepted")
        .into_inner();
    assert_eq!((status.node_id, status.leader_id), (follower, leader));
    let wrong_key = sign_admin_request(
        pb::StatusRequest::default(),
        &impostor,
        &ledger_id,
        now_ms(),
    );
    let denied = public
        .status(wrong_key)
        .await
        .expect_err("a key that is not an authority is refused");
    assert_eq!(denied.code(), tonic::Code::PermissionDenied);
    assert_eq!(reason(&denied), Some("admin.not_authority"));
    let stale = sign_admin_request(
        pb::StatusRequest::default(),
        &cluster.net.authority,
        &ledger_id,
        now_ms() - 10 * 60 * 1000,
    );
    let refused = public.status(stale).await.expect_err("stale refused");
    assert_eq!(refused.code(), tonic::Code::Unauthenticated);
    assert_eq!(reason(&refused), Some("admin.auth_stale"));
    // A signature for Status does not authorise a membership change.
    let mut replayed = pb::ChangeMembershipRequest {
        voter_ids: vec![leader],
        ..Default::default()
    };
    replayed.auth = sign_admin_request(
        pb::StatusRequest::default(),
        &cluster.net.authority,
        &ledger_id,
        now_ms(),
    )
    .auth;
    let refused = public
        .change_membership(replayed)
        .await
        .expect_err("signature bound to another method");
    assert_eq!(refused.code(), tonic::Code::Unauthenticated);
    assert_eq!(reason(&refused), Some("admin.bad_signature"));

    // Two of three killed: the survivor (the leader, which keeps its role in openraft) has no
    // quorum any more and says so.
    for id in (1..=3).filter(|n| *n != leader) {
        cluster.kill(id);
    }
    for service in ["", LEDGER_SERVICE] {
        assert!(
            cluster
                .wait_health(leader, service, ServingStatus::NotServing, LONG)
                .await,
            "the survivor kept reporting SERVING for {service:?}:\n{}",
            cluster.logs(leader)
        );
    }
    let status = cluster.status(leader).await.expect("survivor status");
    assert!(!status.serving && !status.not_serving_reason.is_empty());
    metrics_until(&cluster, leader, |t| {
        sample_value(t, "wasteledger_serving", "") == Some(0.0)
    })
    .await;
    assert_eq!(
        cluster.stop(leader),
        Some(0),
        "graceful stop:\n{}",
        cluster.logs(leader)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_added_as_learner_becomes_a_voter() {
    // Nodes 1 and 2 found the cluster; node 3 runs but belongs to no cluster yet. (The sample
    // genesis names witnesses for nodes 1 to 3, so the newcomer is node 3.)
    let mut cluster = Cluster::start_with_founders(Path::new(BIN), 3, 2);
    let leader = leader(&cluster, 1).await;
    let follower = 3 - leader;
    for event in cluster.net.registrations() {
        cluster
            .submit(leader, &event, LONG)
            .await
            .expect("registration accepted");
    }
    let newcomer = cluster.status(3).await.expect("node 3 answers");
    assert_eq!(newcomer.leader_id, 0);
    assert!(!newcomer.serving);
    assert_eq!(
        cluster.health(3, LEDGER_SERVICE).await,
        Some(ServingStatus::NotServing)
    );

    let member = cluster.specs[&3].member();
    // Membership calls go to the leader; a follower says who leads.
    let refused = cluster
        .add_learner(follower, member.clone())
        .await
        .expect_err("followers do not change membership");
    assert_eq!(refused.code(), tonic::Code::Unavailable);
    assert_eq!(reason(&refused), Some("cluster.not_leader"));
    assert_eq!(
        refused
            .metadata()
            .get("wasteledger-leader")
            .and_then(|v| v.to_str().ok()),
        Some(cluster.specs[&leader].api.as_str())
    );
    // An address nobody listens on is reported as unreachable, with the node and address.
    let dead = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let dead_addr = dead.local_addr().unwrap().to_string();
    drop(dead);
    let unreachable = cluster
        .add_learner(
            leader,
            pb::ClusterMember {
                node_id: 9,
                raft_addr: dead_addr.clone(),
                api_addr: dead_addr.clone(),
            },
        )
        .await
        .expect_err("nobody there");
    assert_eq!(unreachable.code(), tonic::Code::Unavailable);
    assert_eq!(reason(&unreachable), Some("cluster.unreachable"));
    assert!(
        unreachable.message().contains("node 9 unreachable at")
            && unreachable.message().contains(&dead_addr),
        "{}",
        unreachable.message()
    );

    let status = cluster
        .add_learner(leader, member)
        .await
        .expect("learner added");
    assert_eq!(learner_ids(&status), vec![3]);
    assert_eq!(status.voters.len(), 2);

    // Promote it through the public listener, signed by the authority.
    let mut public = cluster.public_admin_client(leader).await.expect("client");
    let request = sign_admin_request(
        pb::ChangeMembershipRequest {
            voter_ids: vec![1, 2, 3],
            retain_as_learners: false,
            auth: None,
        },
        &cluster.net.authority,
        &cluster.net.ledger_id(),
        now_ms(),
    );
    let status = public
        .change_membership(request)
        .await
        .expect("membership changed")
        .into_inner();
    assert_eq!(
        status.voters.iter().map(|m| m.node_id).collect::<Vec<_>>(),
        vec![1, 2, 3]
    );
    assert!(status.learners.is_empty());

    cluster
        .converged(&[1, 2, 3], 6, LONG)
        .await
        .expect("the new voter holds the same ledger");
    assert!(
        cluster
            .wait_health(3, LEDGER_SERVICE, ServingStatus::Serving, LONG)
            .await,
        "node 3 serves once it has caught up:\n{}",
        cluster.logs(3)
    );
    // Node 3 learns the final membership when that entry reaches it (bounded wait).
    let deadline = Instant::now() + LONG;
    loop {
        let seen_by_3 = cluster.status(3).await.expect("status");
        if seen_by_3.voters.len() == 3 && seen_by_3.learners.is_empty() {
            assert_eq!(seen_by_3.leader_id, leader);
            break;
        }
        assert!(
            Instant::now() < deadline,
            "node 3 never saw itself a voter: {seen_by_3:?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    // Graceful stop with long-lived calls open on node 3: a health Watch (what load balancers
    // hold) sees NOT_SERVING and then ends, a WatchEvents stream ends, and the drain finishes
    // without cutting anything off.
    let channel =
        tonic::transport::Endpoint::from_shared(format!("http://{}", cluster.specs[&3].api))
            .unwrap()
            .connect()
            .await
            .expect("connect");
    let mut health_watch = HealthClient::new(channel.clone())
        .watch(HealthCheckRequest {
            service: LEDGER_SERVICE.into(),
        })
        .await
        .expect("health watch")
        .into_inner();
    let first = health_watch.message().await.expect("status").expect("one");
    assert_eq!(first.status, ServingStatus::Serving as i32);
    let mut events = wasteledger_server::LedgerServiceClient::new(channel)
        .watch_events(pb::WatchEventsRequest::default())
        .await
        .expect("event stream")
        .into_inner();
    for _ in 0..6 {
        events
            .message()
            .await
            .expect("event")
            .expect("one of the six");
    }
    let stopper = std::thread::spawn(move || {
        let code = cluster.stop(3);
        (code, cluster)
    });
    // A stream the server finished ends with Ok(None) (health) or a status (events); one cut
    // off with the process would end in a transport error instead.
    let mut statuses = Vec::new();
    let health_end = tokio::time::timeout(LONG, async {
        loop {
            match health_watch.message().await {
                Ok(Some(update)) => statuses.push(update.status),
                other => return other.map(|_| ()),
            }
        }
    })
    .await
    .expect("the health watch ends at shutdown");
    assert!(
        health_end.is_ok(),
        "health watch finished cleanly: {health_end:?}"
    );
    assert_eq!(statuses.last(), Some(&(ServingStatus::NotServing as i32)));
    let events_end = tokio::time::timeout(LONG, async {
        loop {
            match events.message().await {
                Ok(Some(_)) => {}
                Ok(None) => return None,
                Err(status) => return Some(status),
            }
        }
    })
    .await
    .expect("the event stream ends at shutdown");
    if let Some(status) = events_end {
        assert_eq!(status.code(), tonic::Code::Unavailable, "{status:?}");
        assert!(status.message().contains("shutting down"), "{status:?}");
    }
    let (code, cluster) = tokio::task::spawn_blocking(move || stopper.join().unwrap())
        .await
        .unwrap();
    assert_eq!(code, Some(0), "clean exit:\n{}", cluster.logs(3));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_uninitialised_cluster_is_initialised_through_the_admin_api() {
    let cluster = Cluster::start_with_founders(Path::new(BIN), 3, 0);
    let members: Vec<pb::ClusterMember> = cluster
        .specs
        .values()
        .map(|s| pb::ClusterMember {
            node_id: s.id,
            raft_addr: s.raft.clone(),
            api_addr: s.api.clone(),
        })
        .collect();
    // Bounded wait for node 1's admin listener, then check it belongs to no cluster yet.
    let deadline = Instant::now() + LONG;
    let before = loop {
        if let Some(s) = cluster.status(1).await {
            break s;
        }
        assert!(
            Instant::now() < deadline,
            "node 1's admin listener never answered"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert_eq!((before.leader_id, before.voters.len()), (0, 0));
    let mut admin = cluster.admin_client(1).await.expect("client");
    let without_self = admin
        .initialize(pb::InitializeRequest {
            members: members[1..].to_vec(),
            auth: None,
        })
        .await
        .expect_err("the members must include the node asked");
    assert_eq!(without_self.code(), tonic::Code::InvalidArgument);
    assert_eq!(reason(&without_self), Some("cluster.invalid_member"));
    admin
        .initialize(pb::InitializeRequest {
            members: members.clone(),
            auth: None,
        })
        .await
        .expect("initialised");
    let leader = leader(&cluster, 2).await;
    // Asking again is harmless.
    admin
        .initialize(pb::InitializeRequest {
            members,
            auth: None,
        })
        .await
        .expect("a second Initialize is a no-op");
    // Node 2 seeing the leader does not mean node 3 has heard from it yet: wait (bounded)
    // until node 3 knows a leader, then check it is the same one.
    self::leader(&cluster, 3).await;
    let status = cluster.status(3).await.expect("status");
    assert_eq!(status.leader_id, leader);
    assert_eq!(
        status.voters.iter().map(|m| m.node_id).collect::<Vec<_>>(),
        vec![1, 2, 3]
    );
    for id in 1..=3 {
        assert!(
            cluster
                .wait_health(id, LEDGER_SERVICE, ServingStatus::Serving, LONG)
                .await,
            "node {id} serves once initialised"
        );
    }
    cluster
        .submit(3, &cluster.net.registrations()[0], LONG)
        .await
        .expect("the new cluster accepts writes");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replica_without_a_witness_key_catches_up_and_serves_verifiable_proofs() {
    let mut cluster = Cluster::start(Path::new(BIN), 3);
    let leader = leader(&cluster, 1).await;
    let mut events = cluster.net.registrations();
    // Over 100 entries: with the test interval (50) the leader builds a second snapshot, from
    // its first one and the records changed since, and that is what the replica installs.
    let numbers: Vec<String> = (1..=110).map(|n| format!("20261502{n:06}")).collect();
    for number in &numbers {
        let flow = ManifestFlow::new(&cluster.net, number, T0).unwrap();
        events.push(flow.event(
            Kind::ManifestCreated(pb::ManifestCreated {
                manifest: Some(cluster.net.manifest(number, &[ids::ROAD])),
            }),
            &[ids::GENERATOR],
        ));
    }
    for event in &events {
        cluster
            .submit(leader, event, LONG)
            .await
            .expect("event accepted");
    }
    let before = cluster
        .converged(&[1, 2, 3], events.len() as u64, LONG)
        .await
        .expect("the three witnesses agree");

    let deadline = Instant::now() + LONG;
    // A build from the previous snapshot writes a layer (which may take in the layers below
    // it), or a whole file once the layers outgrow it: either way not a scan of the store.
    while !["\"incremental\"", "\"layer\"", "\"folded layer\""]
        .iter()
        .any(|kind| cluster.logs(leader).contains(kind))
    {
        assert!(
            Instant::now() < deadline,
            "the leader built no snapshot from its previous one:\n{}",
            cluster.logs(leader)
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    // Node 4 is not in the genesis and has no witness key. More entries than the test
    // snapshot interval (50) were written, so it catches up by snapshot.
    let replica = cluster.add_replica();
    assert_eq!(replica, 4);
    let deadline = Instant::now() + LONG;
    while cluster.status(replica).await.is_none() {
        assert!(
            Instant::now() < deadline,
            "the replica never answered:\n{}",
            cluster.logs(replica)
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(
        cluster.logs(replica).contains("none: a replica"),
        "{}",
        cluster.logs(replica)
    );
    let status = cluster
        .add_learner(leader, cluster.specs[&replica].member())
        .await
        .expect("replica added");
    assert_eq!(learner_ids(&status), vec![replica]);
    let head = cluster
        .converged(&[1, 2, 3, replica], before.size, LONG)
        .await
        .expect("the replica holds the same ledger");
    assert_eq!((head.size, &head.root), (before.size, &before.root));
    assert!(
        cluster.logs(replica).contains("snapshot installed"),
        "the replica was to catch up by snapshot:\n{}",
        cluster.logs(replica)
    );

    // A custody proof from the replica verifies offline against a checkpoint the three
    // witnesses cosigned: the replica signs nothing, it only stores and serves.
    let mut client = cluster.client(replica).await.expect("client");
    let request = pb::GetCustodyProofRequest {
        tracking_number: Some(pb::TrackingNumber {
            scheme: pb::TrackingScheme::Cn as i32,
            number: numbers[0].clone(),
        }),
        consistency: 0,
    };
    let deadline = Instant::now() + LONG;
    let bundle = loop {
        match client.get_custody_proof(request.clone()).await {
            Ok(bundle) => break bundle.into_inner(),
            // Not covered by a published checkpoint yet (witnesses cosign about once a second).
            Err(s) => assert!(
                Instant::now() < deadline,
                "no proof from the replica: {s:?}"
            ),
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    let verified = wasteledger_core::proof::verify_custody_proof(&bundle, &cluster.net.genesis)
        .expect("the replica's proof verifies");
    assert_eq!(verified.timeline.len(), 1);
    assert!(
        verified.cosigners.signers.len() >= 2,
        "{:?}",
        verified.cosigners
    );

    // Later writes reach it too.
    let number = "20261502000999";
    let flow = ManifestFlow::new(&cluster.net, number, T0).unwrap();
    let later = flow.event(
        Kind::ManifestCreated(pb::ManifestCreated {
            manifest: Some(cluster.net.manifest(number, &[ids::ROAD])),
        }),
        &[ids::GENERATOR],
    );
    cluster
        .submit(leader, &later, LONG)
        .await
        .expect("event accepted");
    cluster
        .converged(&[1, 2, 3, replica], before.size + 1, LONG)
        .await
        .expect("the replica follows later writes");
}

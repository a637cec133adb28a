//! What a node tells its operators: the `grpc.health.v1` status of its services (driven by
//! openraft's metrics), the Prometheus registry and its `/metrics` endpoint, and the gauges
//! derived from the node's status (term, leader, replication lag, ledger and checkpoint).
//!
//! Counters and histograms are recorded where things happen, through the `metrics` facade:
//! fsync latency in `wasteledger-store`, apply latency and event verdicts in
//! `wasteledger-node`, commit latency in [`super::request_id`]. Without a `metrics_listen` no
//! recorder is installed and those calls cost next to nothing.

use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};
use tokio::net::TcpListener;
use tokio::sync::watch;
use tonic_health::ServingStatus;
use tonic_health::server::HealthReporter;
use wasteledger_node::node::Node;
use wasteledger_node::status::NodeStatus;

use crate::service::cluster_service_server::ClusterServiceServer;
use crate::service::ledger_service_server::LedgerServiceServer;

/// Service names whose health follows the node's (besides `""`, the whole server).
pub const HEALTH_SERVICES: [&str; 2] = [
    <LedgerServiceServer<crate::LedgerApi> as tonic::server::NamedService>::NAME,
    <ClusterServiceServer<super::admin::ClusterApi> as tonic::server::NamedService>::NAME,
];

/// How often health and gauges are re-evaluated even without a metrics change: a leader that
/// loses its quorum produces no openraft metrics change, only silence.
pub const REFRESH: Duration = Duration::from_millis(250);

/// Least time between two evaluations, so a busy apply loop (a metrics change per entry) does
/// not turn into a busy status loop.
const MIN_GAP: Duration = Duration::from_millis(50);

/// How often the ledger-derived gauges (size, checkpoint) are read from storage.
const LEDGER_GAUGES_EVERY: Duration = Duration::from_secs(1);

/// Latency histogram buckets (seconds): fsync-bound writes take milliseconds, slow disks and
/// elections take seconds.
const LATENCY_BUCKETS: [f64; 14] = [
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
];

/// Why the metrics registry could not be set up.
#[derive(Debug, Clone, thiserror::Error)]
#[error("metrics: {0}")]
pub struct MetricsError(String);

static PROMETHEUS: OnceLock<Result<PrometheusHandle, MetricsError>> = OnceLock::new();

/// The process's Prometheus registry, installed as the global `metrics` recorder on first use.
/// One per process: nodes run in one process (the demo) share it.
pub fn prometheus() -> Result<PrometheusHandle, MetricsError> {
    PROMETHEUS
        .get_or_init(|| {
            PrometheusBuilder::new()
                .set_buckets_for_metric(
                    Matcher::Suffix("_seconds".into()),
                    LATENCY_BUCKETS.as_slice(),
                )
                .map_err(|e| MetricsError(e.to_string()))?
                .install_recorder()
                .map_err(|e| MetricsError(e.to_string()))
                .inspect(|_| describe())
        })
        .clone()
}

/// HELP lines for every series, so a scrape explains itself.
fn describe() {
    use metrics::{Unit, describe_counter, describe_gauge, describe_histogram};
    describe_histogram!(
        "wasteledger_commit_seconds",
        Unit::Seconds,
        "Submit/SubmitBatch arrival to acknowledgement (committed and applied), on the node that answered"
    );
    describe_histogram!(
        "wasteledger_precheck_seconds",
        Unit::Seconds,
        "On the leader, checking one submitted event (signatures, custody rules) before proposing it"
    );
    describe_histogram!(
        "wasteledger_propose_seconds",
        Unit::Seconds,
        "On the leader, one checked event from proposal to its applied result (replication to a quorum, fsyncs, apply)"
    );
    describe_histogram!(
        "wasteledger_apply_seconds",
        Unit::Seconds,
        "Time to apply one group of committed entries to the ledger state"
    );
    describe_histogram!(
        "wasteledger_fsync_seconds",
        Unit::Seconds,
        "One group commit of the store: flush plus fdatasync"
    );
    describe_counter!(
        "wasteledger_events_accepted_total",
        "Events this node applied as accepted ledger entries"
    );
    describe_counter!(
        "wasteledger_events_rejected_total",
        "Events refused, by reason code; stage=apply on every node, stage=precheck on the leader that refused before proposing"
    );
    describe_counter!(
        "wasteledger_grpc_requests_total",
        "gRPC calls answered, by method and status code"
    );
    describe_gauge!("wasteledger_raft_term", "Current Raft term");
    describe_gauge!("wasteledger_raft_is_leader", "1 while this node leads");
    describe_gauge!(
        "wasteledger_raft_leader_id",
        "Leader's node id, 0 when none is known"
    );
    describe_gauge!(
        "wasteledger_raft_last_log_index",
        "Last Raft log index on this node"
    );
    describe_gauge!(
        "wasteledger_raft_committed",
        "Highest Raft log index known committed"
    );
    describe_gauge!(
        "wasteledger_raft_last_applied",
        "Last Raft log index applied"
    );
    describe_gauge!(
        "wasteledger_raft_replication_lag",
        "Leader's last log index minus the follower's matched index; NaN when this node does not lead"
    );
    describe_gauge!(
        "wasteledger_serving",
        "1 while grpc.health.v1 reports SERVING (a leader with a quorum, not far behind)"
    );
    describe_gauge!(
        "wasteledger_ledger_size",
        "Entries in this node's applied ledger"
    );
    describe_gauge!(
        "wasteledger_checkpoint_size",
        "Size of the latest published checkpoint"
    );
    describe_gauge!(
        "wasteledger_checkpoint_age_seconds",
        Unit::Seconds,
        "This node's clock minus the published checkpoint's ledger time"
    );
    describe_gauge!(
        "wasteledger_checkpoint_entries_behind",
        "Ledger entries not yet covered by the published checkpoint"
    );
    describe_gauge!(
        "wasteledger_storage_sync_running_seconds",
        Unit::Seconds,
        "How long the database sync in progress has run, 0 when none runs; past storage.stall_timeout_s the node exits"
    );
    describe_gauge!(
        "wasteledger_history_unchecked_entries",
        "Stored entries below the integrity checkpoint not yet re-read since this node started (0 once the background check passes)"
    );
}

/// Serves `GET /metrics` (Prometheus text format) on `listener` until `stop` turns true.
pub async fn serve_metrics(
    listener: TcpListener,
    handle: PrometheusHandle,
    mut stop: watch::Receiver<bool>,
) -> std::io::Result<()> {
    let router = axum::Router::new().route(
        "/metrics",
        axum::routing::get(move || {
            let handle = handle.clone();
            async move {
                (
                    [(
                        axum::http::header::CONTENT_TYPE,
                        "text/plain; version=0.0.4; charset=utf-8",
                    )],
                    handle.render(),
                )
            }
        }),
    );
    axum::serve(listener, router)
        .with_graceful_shutdown(async move {
            let _ = stop.wait_for(|s| *s).await;
        })
        .await
}

/// Sets every health entry this node reports.
pub async fn set_health(reporter: &HealthReporter, status: ServingStatus) {
    reporter.set_service_status("", status).await;
    for name in HEALTH_SERVICES {
        reporter.set_service_status(name, status).await;
    }
}

/// Removes every health entry: `Watch` streams end (after delivering the last status), so a
/// load balancer's open health stream does not hold the drain up until its timeout.
pub async fn end_health(reporter: &mut HealthReporter) {
    reporter.clear_service_status("").await;
    for name in HEALTH_SERVICES {
        reporter.clear_service_status(name).await;
    }
}

fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

fn flag(b: bool) -> f64 {
    if b { 1.0 } else { 0.0 }
}

fn raft_gauges(s: &NodeStatus, reported_followers: &mut Vec<u64>) {
    metrics::gauge!("wasteledger_raft_term").set(s.term as f64);
    metrics::gauge!("wasteledger_raft_is_leader").set(flag(s.is_leader()));
    metrics::gauge!("wasteledger_raft_leader_id").set(s.leader.unwrap_or(0) as f64);
    metrics::gauge!("wasteledger_raft_last_log_index").set(s.last_log_index.unwrap_or(0) as f64);
    metrics::gauge!("wasteledger_raft_committed").set(s.committed.unwrap_or(0) as f64);
    metrics::gauge!("wasteledger_raft_last_applied").set(s.last_applied.unwrap_or(0) as f64);
    metrics::gauge!("wasteledger_serving").set(flag(s.health.is_serving()));
    let lag = s.replication_lag();
    // Only a leader knows replication; a node that stops leading reports NaN (unknown) for the
    // followers it used to report, rather than a stale or falsely reassuring number.
    for id in reported_followers.iter() {
        if !lag.contains_key(id) {
            metrics::gauge!("wasteledger_raft_replication_lag", "follower" => id.to_string())
                .set(f64::NAN);
        }
    }
    for (id, entries) in &lag {
        metrics::gauge!("wasteledger_raft_replication_lag", "follower" => id.to_string())
            .set(*entries as f64);
        if !reported_followers.contains(id) {
            reported_followers.push(*id);
        }
    }
}

/// Set first, before anything that takes the state machine's lock: a stuck sync may hold it.
fn storage_gauges(node: &Node) {
    let running = node
        .db()
        .sync_probe()
        .sync_running_for()
        .ok()
        .flatten()
        .unwrap_or_default();
    metrics::gauge!("wasteledger_storage_sync_running_seconds").set(running.as_secs_f64());
}

fn ledger_gauges(node: &Node) {
    let read = node.state_machine.with_store(|s| {
        let published = s.published_checkpoint().ok().flatten();
        (s.merkle_size(), published.map(|p| p.checkpoint))
    });
    let Ok((size, checkpoint)) = read else {
        return;
    };
    metrics::gauge!("wasteledger_ledger_size").set(size as f64);
    if let Some(c) = checkpoint {
        // Ledger time is the leader's clock at sequencing; against this node's clock the age
        // is approximate to the clock skew, which the genesis bounds.
        let age = (now_ms() - c.time_ms).max(0) as f64 / 1000.0;
        metrics::gauge!("wasteledger_checkpoint_age_seconds").set(age);
        metrics::gauge!("wasteledger_checkpoint_size").set(c.size as f64);
        metrics::gauge!("wasteledger_checkpoint_entries_behind")
            .set(size.saturating_sub(c.size) as f64);
    }
}

/// Follows the node's status until `stop` turns true: updates the health reporter (SERVING
/// only while the node knows a leader with a quorum and is not far behind) and, when
/// `prometheus` is set, the gauges and the registry's upkeep.
pub async fn watch_node(
    node: Arc<Node>,
    reporter: HealthReporter,
    prometheus: Option<PrometheusHandle>,
    mut stop: watch::Receiver<bool>,
) {
    let mut statuses = node.status_watch();
    let mut serving: Option<bool> = None;
    let mut reported_followers = Vec::new();
    let mut ledger_read_at: Option<Instant> = None;
    let mut upkeep_at = Instant::now();
    loop {
        let status = statuses.current();
        let now_serving = status.health.is_serving();
        if serving != Some(now_serving) {
            match &status.health {
                wasteledger_node::status::Health::Serving => {
                    tracing::info!(leader = ?status.leader, term = status.term, "health: SERVING");
                }
                wasteledger_node::status::Health::NotServing(why) => {
                    tracing::info!(reason = %why, "health: NOT_SERVING");
                }
            }
            let s = if now_serving {
                ServingStatus::Serving
            } else {
                ServingStatus::NotServing
            };
            set_health(&reporter, s).await;
            serving = Some(now_serving);
        }
        if let Some(handle) = &prometheus {
            raft_gauges(&status, &mut reported_followers);
            if ledger_read_at.is_none_or(|t| t.elapsed() >= LEDGER_GAUGES_EVERY) {
                storage_gauges(&node);
                ledger_gauges(&node);
                ledger_read_at = Some(Instant::now());
            }
            if upkeep_at.elapsed() >= Duration::from_secs(5) {
                handle.run_upkeep();
                upkeep_at = Instant::now();
            }
        }
        tokio::select! {
            // Only `true` is ever sent; a dropped sender means the runtime is gone too.
            _ = stop.changed() => break,
            changed = statuses.changed() => if changed.is_none() {
                // Raft has stopped: nothing this node answers is current any more.
                set_health(&reporter, ServingStatus::NotServing).await;
                break;
            },
            _ = tokio::time::sleep(REFRESH) => {}
        }
        tokio::time::sleep(MIN_GAP).await;
    }
}

//! The WasteLedger workload: realistic signed manifest lifecycles (creation, pickup, delivery,
//! receipt, treatment), signed before timing starts, submitted by concurrent clients that each
//! wait for every acknowledgement, against a 3-node cluster of separate processes.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{Context, anyhow, bail};
use wasteledger_core::pb;
use wasteledger_core::sample::{HOUR, ManifestFlow, SampleNetwork, T0};
use wasteledger_server::LedgerServiceClient;
use wasteledger_tests::cluster::Cluster;

use crate::stats::{
    RunReport, Sample, Series, ThreadCpu, cpu_seconds, dir_bytes, summarise, value_at,
};

/// Events in one lifecycle ([`ManifestFlow::road_lifecycle`]).
pub(crate) const EVENTS_PER_LIFECYCLE: usize = 5;

/// One manifest's events in chain order.
pub(crate) type Lifecycle = Vec<pb::SignedEvent>;

/// The CN tracking number of lifecycle `n` (city code varied so that up to 90 million fit).
fn tracking_number(n: u64) -> String {
    format!(
        "2026{:02}{:02}{:06}",
        15,
        10 + (n / 1_000_000) % 90,
        n % 1_000_000
    )
}

/// Signs `count` lifecycles numbered from `first` (see [`tracking_number`]).
pub(crate) fn lifecycles(
    net: &SampleNetwork,
    first: u64,
    count: u64,
) -> anyhow::Result<Vec<Lifecycle>> {
    let mut out = Vec::with_capacity(count as usize);
    for n in first..first + count {
        let number = tracking_number(n);
        let start = T0 + (n as i64 % 1000) * HOUR;
        out.push(
            ManifestFlow::road_lifecycle(net, &number, start)
                .map_err(|e| anyhow!("tracking number {number}: {e}"))?,
        );
    }
    Ok(out)
}

/// What a run needs of the cluster.
pub(crate) struct Target {
    /// API address of the node the clients write to (the leader).
    pub(crate) api: String,
}

/// Drives `lifecycles` with `clients` concurrent clients, stopping after `duration` if given.
/// Each client takes `batch` lifecycles at a time and advances them together, one step per
/// call: a `Submit` of one event when `batch` is 1, else a `SubmitBatch` of the step's events
/// (independent: one per manifest), as a client signing a morning's pickups would. Returns the
/// start time, the latency samples (one per event: its call's latency) and how many calls were
/// retried during leader elections.
pub(crate) async fn drive(
    target: &Target,
    clients: usize,
    batch: usize,
    lifecycles: Vec<Lifecycle>,
    duration: Option<Duration>,
) -> anyhow::Result<(Instant, Vec<Sample>, u64)> {
    let queue = Arc::new(Mutex::new(VecDeque::from(lifecycles)));
    let retries = Arc::new(std::sync::atomic::AtomicU64::new(0));
    let done = Arc::new(std::sync::atomic::AtomicU64::new(0));
    // Long runs report progress on stderr every 10 s, so a run cut short still says how far
    // it got and how fast.
    let progress = {
        let done = done.clone();
        tokio::spawn(async move {
            let start = Instant::now();
            let mut last = (start, 0u64);
            loop {
                tokio::time::sleep(Duration::from_secs(10)).await;
                let now = Instant::now();
                let n = done.load(std::sync::atomic::Ordering::Relaxed);
                let rate = (n - last.1) as f64 / now.duration_since(last.0).as_secs_f64();
                eprintln!(
                    "[{:>6.0} s] {n} events, {rate:.0} events/s over the last 10 s",
                    now.duration_since(start).as_secs_f64()
                );
                last = (now, n);
            }
        })
    };
    let started = Instant::now();
    let deadline = duration.map(|d| started + d);
    let mut tasks = Vec::new();
    for _ in 0..clients {
        let queue = queue.clone();
        let retries = retries.clone();
        let done = done.clone();
        let api = target.api.clone();
        tasks.push(tokio::spawn(async move {
            let mut client = LedgerServiceClient::connect(format!("http://{api}"))
                .await
                .with_context(|| format!("connect to {api}"))?;
            let mut samples = Vec::new();
            loop {
                if deadline.is_some_and(|d| Instant::now() >= d) {
                    break;
                }
                let group: Vec<Lifecycle> = {
                    let mut queue = queue.lock().map_err(|_| anyhow!("queue poisoned"))?;
                    let take = batch.max(1).min(queue.len());
                    queue.drain(..take).collect()
                };
                if group.is_empty() {
                    break;
                }
                // Step k of every lifecycle in the group, for k = 0, 1, …: one call each.
                let mut steps: Vec<Vec<pb::SignedEvent>> = vec![Vec::new(); EVENTS_PER_LIFECYCLE];
                for lifecycle in group {
                    for (step, event) in steps.iter_mut().zip(lifecycle) {
                        step.push(event);
                    }
                }
                for events in steps {
                    let t = Instant::now();
                    submit_with_retry(&mut client, &events, &retries).await?;
                    let (finished, latency) = (Instant::now(), t.elapsed());
                    samples.extend(events.iter().map(|_| Sample {
                        done: finished,
                        latency,
                    }));
                    done.fetch_add(events.len() as u64, std::sync::atomic::Ordering::Relaxed);
                }
            }
            Ok::<_, anyhow::Error>(samples)
        }));
    }
    let mut all = Vec::new();
    for t in tasks {
        all.extend(t.await.context("client task")??);
    }
    progress.abort();
    Ok((
        started,
        all,
        retries.load(std::sync::atomic::Ordering::Relaxed),
    ))
}

/// Retries of one call while the cluster has no leader (100 ms apart: 30 s in all).
const MAX_ATTEMPTS: u32 = 300;

/// Submits `events` (one `Submit`, or one `SubmitBatch` when there are several) until every
/// one is accepted. While the cluster has no leader (an election) the call, or a batch item,
/// answers UNAVAILABLE: the whole call is made again, which is idempotent (recorded events
/// return their original receipts), so nothing is recorded twice and the latency includes
/// the wait. Any other refusal ends the run.
async fn submit_with_retry(
    client: &mut LedgerServiceClient<tonic::transport::Channel>,
    events: &[pb::SignedEvent],
    retries: &std::sync::atomic::AtomicU64,
) -> anyhow::Result<()> {
    let unavailable = tonic::Code::Unavailable as i32;
    for _ in 0..MAX_ATTEMPTS {
        let outcome = match events {
            [event] => client.submit(event.clone()).await.map(|_| None),
            _ => client
                .submit_batch(pb::SubmitBatchRequest {
                    events: events.to_vec(),
                })
                .await
                .map(|r| {
                    r.into_inner()
                        .results
                        .into_iter()
                        .find_map(|r| match r.result {
                            Some(pb::submit_result::Result::Accepted(_)) => None,
                            Some(pb::submit_result::Result::Rejected(e)) => Some(e),
                            None => Some(pb::SubmitError {
                                message: "an item without a result".into(),
                                ..Default::default()
                            }),
                        })
                }),
        };
        match outcome {
            Ok(None) => return Ok(()),
            Ok(Some(e)) if e.code == unavailable => {}
            Ok(Some(e)) => bail!("batch item refused: {} {} {}", e.code, e.reason, e.message),
            Err(s) if s.code() == tonic::Code::Unavailable => {}
            Err(s) => bail!("submit refused: {:?} {}", s.code(), s.message()),
        }
        retries.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    bail!("no leader for {} s", MAX_ATTEMPTS / 10)
}

/// Options of a WasteLedger benchmark.
pub(crate) struct LedgerBench {
    /// The `wasteledger` binary.
    pub(crate) binary: std::path::PathBuf,
    /// Concurrency levels, run in order on the same cluster.
    pub(crate) clients: Vec<usize>,
    /// Events per concurrency level (rounded up to whole lifecycles).
    pub(crate) events: u64,
    /// Optional time cap per level.
    pub(crate) duration: Option<Duration>,
    /// Window size for throughput-over-history, in events (0 = none).
    pub(crate) window: usize,
    /// Lifecycles each client advances together, one `SubmitBatch` per step (1 = `Submit`).
    pub(crate) batch: usize,
    /// Custody proofs to fetch and verify at the end (0 = skip).
    pub(crate) proofs: usize,
    /// Measure a node restart at the end.
    pub(crate) restart: bool,
    /// Measure a new learner's catch-up at the end.
    pub(crate) learner: bool,
    /// Keep the cluster's directory after the run.
    pub(crate) keep_data: bool,
    /// `[raft] snapshot_every` for the nodes (`None` = the production default).
    pub(crate) snapshot_every: Option<u64>,
}

/// Extra figures measured once per benchmark.
#[derive(Debug, Default, serde::Serialize)]
pub(crate) struct Extras {
    /// Final ledger size, agreed by all three nodes.
    pub(crate) final_size: u64,
    /// Seconds from restarting a stopped follower to it serving the full ledger.
    pub(crate) restart_seconds: Option<f64>,
    /// Seconds from asking the leader to add a new (empty) replica as a learner to that replica
    /// holding the whole ledger, with the same root.
    pub(crate) learner_catch_up_seconds: Option<f64>,
    /// How many times the learner exited with a stalled storage and was started again, as its
    /// supervisor would; its catch-up time includes those restarts.
    pub(crate) learner_restarts: Option<u32>,
    /// Custody proofs fetched per second (one client).
    pub(crate) proof_fetches_per_sec: Option<f64>,
    /// Custody proofs verified offline per second, on one core.
    pub(crate) proof_verifications_per_sec: Option<f64>,
}

/// Runs the benchmark; prints nothing. `measured` is called with everything measured so far
/// each time a figure is added, so an interrupted run keeps what it measured.
pub(crate) async fn run(
    opts: &LedgerBench,
    measured: &mut dyn FnMut(&[RunReport], &Extras),
) -> anyhow::Result<(Vec<RunReport>, Extras)> {
    if !opts.binary.exists() {
        bail!(
            "{} not found; build it first: cargo build --release -p wasteledger",
            opts.binary.display()
        );
    }
    // Production settings unless asked otherwise: figures are only comparable with them.
    let raft_section = opts
        .snapshot_every
        .map(|n| format!("[raft]\nsnapshot_every = {n}\n"))
        .unwrap_or_default();
    let mut cluster = Cluster::start_with_raft(&opts.binary, 3, &raft_section);
    if opts.keep_data {
        let dir = cluster.keep_files();
        eprintln!("keeping the cluster's files in {}", dir.display());
    }
    let leader = wait_leader(&cluster).await?;
    let api = cluster.specs[&leader].api.clone();
    for event in cluster.net.registrations() {
        cluster
            .submit(leader, &event, Duration::from_secs(30))
            .await
            .map_err(|s| anyhow!("registration refused: {s:?}"))?;
    }
    let target = Target { api };
    let mut reports = Vec::new();
    let mut extras = Extras::default();
    let mut next_serial = 1u64;
    for &clients in &opts.clients {
        let count = opts.events.div_ceil(EVENTS_PER_LIFECYCLE as u64);
        let work = lifecycles(&cluster.net, next_serial, count)?;
        next_serial += count;
        let cpu_before: Vec<f64> = (1..=3)
            .map(|id| cluster.pid(id).and_then(cpu_seconds).unwrap_or(0.0))
            .collect();
        let threads_before: Vec<Option<ThreadCpu>> = (1..=3)
            .map(|id| cluster.pid(id).and_then(ThreadCpu::read))
            .collect();
        let lags = Arc::new(Mutex::new(Vec::new()));
        let sampler = tokio::spawn(sample_checkpoint_lag(target.api.clone(), lags.clone()));
        let pids: Vec<Option<u32>> = (1..=3).map(|id| cluster.pid(id)).collect();
        let threads_seen = Arc::new(Mutex::new(threads_before.clone()));
        let cpu_series = Arc::new(Mutex::new(Series::new()));
        let cpu_sampler = tokio::spawn(sample_cpu(pids.clone(), cpu_series.clone()));
        let thread_sampler = tokio::spawn(sample_threads(pids, threads_seen.clone()));
        let (started, samples, retries) =
            drive(&target, clients, opts.batch, work, opts.duration).await?;
        sampler.abort();
        thread_sampler.abort();
        cpu_sampler.abort();
        let mut report = summarise("wasteledger", clients, started, samples, opts.window);
        if let Ok(series) = cpu_series.lock() {
            report.window_cpu_ms_per_op = report
                .window_bounds
                .iter()
                .filter_map(|(from, to)| {
                    let spent = value_at(&series, *to)? - value_at(&series, *from)?;
                    Some(spent * 1e3 / opts.window as f64)
                })
                .collect();
        }
        report.retries = retries;
        report.checkpoint_lag = lags.lock().ok().and_then(|mut l| {
            l.sort_unstable();
            Some([*l.get(l.len() / 2)?, *l.last()?])
        });
        report.cpu_seconds = (1..=3)
            .map(|id| cluster.pid(id).and_then(cpu_seconds).unwrap_or(0.0))
            .zip(cpu_before)
            .map(|(after, before)| after - before)
            .collect();
        let seen = std::mem::take(
            &mut *threads_seen
                .lock()
                .map_err(|_| anyhow!("the thread sampler panicked"))?,
        );
        report.cpu_by_thread = (1..=3)
            .zip(threads_before)
            .zip(seen)
            .zip(&report.cpu_seconds)
            .map(|(((id, before), seen), total)| {
                let mut after = seen;
                if let (Some(after), Some(last)) =
                    (after.as_mut(), cluster.pid(id).and_then(ThreadCpu::read))
                {
                    after.merge(last);
                }
                match (after, before) {
                    (Some(after), Some(before)) => after.since(&before, *total),
                    _ => Vec::new(),
                }
            })
            .collect();
        let head = cluster
            .head(leader)
            .await
            .ok_or_else(|| anyhow!("leader stopped answering"))?;
        report.bytes_per_op = (1..=3)
            .map(|id| dir_bytes(&cluster.specs[&id].data_dir) as f64 / head.size.max(1) as f64)
            .collect();
        reports.push(report);
        measured(&reports, &extras);
    }
    let head = cluster
        .converged(&[1, 2, 3], 1, Duration::from_secs(120))
        .await
        .ok_or_else(|| anyhow!("the three nodes did not converge on one root"))?;
    extras.final_size = head.size;
    measured(&reports, &extras);
    if opts.proofs > 0 {
        let (fetch, verify) = proofs(&cluster, leader, opts.proofs, next_serial - 1).await?;
        extras.proof_fetches_per_sec = Some(fetch);
        extras.proof_verifications_per_sec = Some(verify);
        measured(&reports, &extras);
    }
    if opts.restart {
        let follower = (1..=3).find(|id| *id != leader).unwrap_or(2);
        if cluster.stop(follower) != Some(0) {
            bail!("node {follower} did not stop cleanly");
        }
        let t = Instant::now();
        cluster.start_node(follower);
        let deadline = t + Duration::from_secs(600);
        loop {
            if let Some(h) = cluster.head(follower).await
                && h.size == head.size
            {
                break;
            }
            if Instant::now() > deadline {
                bail!("node {follower} did not come back within 10 minutes");
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        extras.restart_seconds = Some(t.elapsed().as_secs_f64());
        measured(&reports, &extras);
    }
    if opts.learner {
        let (seconds, restarts) = learner_catch_up(&mut cluster, leader, &head).await?;
        extras.learner_catch_up_seconds = Some(seconds);
        extras.learner_restarts = Some(restarts);
        measured(&reports, &extras);
    }
    Ok((reports, extras))
}

/// Restarts after a stall [`learner_catch_up`] allows before giving up.
const MAX_LEARNER_RESTARTS: u32 = 3;

/// Starts an empty replica, asks `leader` to add it as a learner and waits until it holds
/// `head` (size and root); returns the seconds from the request to then, and how many times
/// the replica had to be restarted after its storage stalled. The log the replica needs has
/// been purged after the last snapshot, so it catches up by snapshot (its log says
/// `snapshot installed` with the read, import and verify times).
async fn learner_catch_up(
    cluster: &mut Cluster,
    leader: u64,
    head: &pb::LedgerHead,
) -> anyhow::Result<(f64, u32)> {
    let replica = cluster.add_replica();
    let deadline = Instant::now() + Duration::from_secs(60);
    while cluster.status(replica).await.is_none() {
        if Instant::now() > deadline {
            bail!("the replica (node {replica}) did not start; see its log");
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let t = Instant::now();
    match cluster
        .add_learner(leader, cluster.specs[&replica].member())
        .await
    {
        Ok(_) => {}
        // The leader stops waiting after a minute; the learner is a member by then and
        // keeps catching up. Any other refusal (`cluster.timeout` included: the learner was
        // never added) ends the measurement.
        Err(s)
            if s.metadata()
                .get(wasteledger_server::REASON_KEY)
                .is_some_and(|r| r == "cluster.catching_up") => {}
        Err(s) => bail!("AddLearner refused: {:?} {}", s.code(), s.message()),
    }
    let deadline = t + Duration::from_secs(1800);
    let mut restarts = 0;
    let stalled_code = i32::from(wasteledger_server::runtime::STORAGE_STALLED_EXIT_CODE);
    loop {
        // A node whose storage stalls exits for its supervisor to restart it, and finishes
        // an interrupted snapshot install when it starts: do what the supervisor would.
        match cluster.wait_exit(replica, Duration::ZERO) {
            None => {}
            Some(code) if code == stalled_code && restarts < MAX_LEARNER_RESTARTS => {
                restarts += 1;
                eprintln!("the learner's storage stalled; starting it again ({restarts})");
                cluster.start_node(replica);
            }
            Some(code) => bail!(
                "the learner (node {replica}) exited with code {code} after {restarts} \
                 restarts; see its log"
            ),
        }
        if cluster.pid(replica).is_none() {
            bail!("the learner (node {replica}) was killed by a signal; see its log");
        }
        if let Some(h) = cluster.head(replica).await
            && h.size >= head.size
        {
            if h.size == head.size && h.root != head.root {
                bail!("the learner holds a different root at size {}", h.size);
            }
            break;
        }
        if Instant::now() > deadline {
            bail!("the learner did not catch up within 30 minutes");
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    Ok((t.elapsed().as_secs_f64(), restarts))
}

/// Every second, how many entries the published checkpoint trails the head of the node at
/// `api`, into `lags`, until aborted. Samples the node cannot answer are skipped.
async fn sample_checkpoint_lag(api: String, lags: Arc<Mutex<Vec<u64>>>) {
    let Ok(mut client) = LedgerServiceClient::connect(format!("http://{api}")).await else {
        return;
    };
    loop {
        tokio::time::sleep(Duration::from_secs(1)).await;
        let head = client.get_ledger_head(pb::GetLedgerHeadRequest {}).await;
        let published = client.get_checkpoint(pb::GetCheckpointRequest {}).await;
        if let (Ok(head), Ok(published)) = (head, published)
            && let Ok(mut lags) = lags.lock()
        {
            lags.push(head.get_ref().size.saturating_sub(published.get_ref().size));
        }
    }
}

/// Every 250 ms, the CPU seconds the servers have used together, for CPU per window: fine
/// enough against windows of tens of seconds, and one `/proc/PID/stat` read per node.
async fn sample_cpu(pids: Vec<Option<u32>>, series: Arc<Mutex<Series>>) {
    loop {
        let total: f64 = pids.iter().flatten().filter_map(|p| cpu_seconds(*p)).sum();
        match series.lock() {
            Ok(mut series) => series.push((Instant::now(), total)),
            Err(_) => return,
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

/// Reads the nodes' threads once a second into `seen` (merged: see [`ThreadCpu::merge`]), so
/// the CPU of threads that exit during a long run is still attributed.
async fn sample_threads(pids: Vec<Option<u32>>, seen: Arc<Mutex<Vec<Option<ThreadCpu>>>>) {
    loop {
        tokio::time::sleep(Duration::from_secs(1)).await;
        let Ok(mut seen) = seen.lock() else {
            return;
        };
        for (pid, seen) in pids.iter().zip(seen.iter_mut()) {
            if let (Some(seen), Some(now)) = (seen.as_mut(), pid.and_then(ThreadCpu::read)) {
                seen.merge(now);
            }
        }
    }
}

async fn wait_leader(cluster: &Cluster) -> anyhow::Result<u64> {
    let deadline = Instant::now() + Duration::from_secs(30);
    while Instant::now() < deadline {
        if let Some(h) = cluster.head(1).await
            && h.leader_id != 0
        {
            return Ok(h.leader_id);
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    bail!("no leader within 30 s; see the node logs")
}

/// Waits (untimed) until a published checkpoint covers the whole ledger, then fetches `count`
/// custody proofs one after another and verifies them offline in a loop on this thread for
/// about two seconds. Waiting inside the timed loop made the fetch rate mostly a measure of
/// when the witnesses next cosigned.
async fn proofs(
    cluster: &Cluster,
    leader: u64,
    count: usize,
    last_serial: u64,
) -> anyhow::Result<(f64, f64)> {
    let mut client = cluster
        .client(leader)
        .await
        .ok_or_else(|| anyhow!("leader unreachable"))?;
    let size = client
        .get_ledger_head(pb::GetLedgerHeadRequest {})
        .await
        .map_err(|s| anyhow!("ledger head: {s:?}"))?
        .into_inner()
        .size;
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        match client.get_checkpoint(pb::GetCheckpointRequest {}).await {
            Ok(c) if c.get_ref().size >= size => break,
            // Witnesses cosign about once a second.
            _ if Instant::now() < deadline => tokio::time::sleep(Duration::from_millis(100)).await,
            Ok(c) => bail!(
                "no checkpoint covers the ledger's {size} entries within 30 s (published: {})",
                c.get_ref().size
            ),
            Err(s) => bail!("checkpoint: {s:?}"),
        }
    }
    let numbers: Vec<String> = (1..=last_serial.min(count as u64))
        .map(tracking_number)
        .collect();
    let mut bundles = Vec::new();
    let t = Instant::now();
    for number in &numbers {
        let request = pb::GetCustodyProofRequest {
            tracking_number: Some(pb::TrackingNumber {
                scheme: pb::TrackingScheme::Cn as i32,
                number: number.clone(),
            }),
            consistency: 0,
        };
        let proof = client
            .get_custody_proof(request)
            .await
            .map_err(|s| anyhow!("custody proof of {number}: {s:?}"))?;
        bundles.push(proof.into_inner());
    }
    let fetch_rate = bundles.len() as f64 / t.elapsed().as_secs_f64();
    let genesis = &cluster.net.genesis;
    let t = Instant::now();
    let mut verified = 0usize;
    while t.elapsed() < Duration::from_secs(2) {
        for b in &bundles {
            wasteledger_core::proof::verify_custody_proof(b, genesis)
                .map_err(|e| anyhow!("a fetched proof does not verify: {e}"))?;
            verified += 1;
        }
    }
    Ok((fetch_rate, verified as f64 / t.elapsed().as_secs_f64()))
}

//! A running node: storage, the Raft instance, the Raft transport server, and the write path
//! (leader time stamping, fail-fast pre-check, commit, apply, receipt).

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use openraft::async_runtime::WatchReceiver;
use openraft::errors::{ClientWriteError, InitializeError, RaftError};
use prost::Message;
use tokio::net::TcpListener;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;
use wasteledger_core::genesis::Genesis;
use wasteledger_core::pb;
use wasteledger_store::{DurableDb, DurableOptions, LogStore, StoreError};

use crate::history::{HistoryState, HistoryTask};
use crate::log_storage::LogStorage;
use crate::network::{Network, raft_service};
use crate::proposer::Proposer;
use crate::snapshot_trigger::SnapshotTrigger;
use crate::state_machine::LedgerStateMachine;
use crate::types::{LedgerRaft, LedgerRequest, LedgerResponse, NodeAddr, StampedEvent, TypeConfig};

/// Raft timings. Defaults are tuned for fsync-bound traffic on a small machine: a heartbeat well
/// under half the election timeout, and an election timeout long enough that a slow fsync does
/// not depose a healthy leader.
#[derive(Debug, Clone)]
pub struct RaftTimings {
    /// Heartbeat interval (ms).
    pub heartbeat_ms: u64,
    /// Minimum election timeout (ms).
    pub election_timeout_min_ms: u64,
    /// Maximum election timeout (ms).
    pub election_timeout_max_ms: u64,
    /// Take a snapshot after this many Raft log entries or this many ledger entries
    /// (events), whichever comes first (see [`crate::snapshot_trigger`]).
    pub snapshot_every: u64,
    /// Log entries kept after a snapshot, for followers slightly behind.
    pub keep_logs_after_snapshot: u64,
}

impl Default for RaftTimings {
    fn default() -> Self {
        RaftTimings {
            heartbeat_ms: 250,
            election_timeout_min_ms: 1000,
            election_timeout_max_ms: 2000,
            snapshot_every: 100_000,
            keep_logs_after_snapshot: 10_000,
        }
    }
}

/// Everything a node needs to start.
pub struct NodeOptions {
    /// Raft node id (never reused).
    pub id: u64,
    /// Data directory (sled database and snapshots).
    pub data_dir: PathBuf,
    /// The network's genesis.
    pub genesis: Genesis,
    /// Bound listener for the Raft transport (bind `127.0.0.1:0` for tests).
    pub raft_listener: TcpListener,
    /// This node's public API address, advertised to peers.
    pub api_addr: String,
    /// Raft timings.
    pub timings: RaftTimings,
    /// Storage tuning.
    pub storage: DurableOptions,
    /// What to do if a sync of the database stalls; watched from the moment it opens, so a
    /// stall while the node starts (finishing an install, openraft's start-up) counts too.
    pub stall_watch: Option<StallWatch>,
}

/// A limit on how long one sync of the node's database may run, and what happens past it
/// ([`wasteledger_store::DurableDb::spawn_stall_watchdog`]).
pub struct StallWatch {
    /// The limit.
    pub limit: Duration,
    /// Called once, on the watchdog's thread, with how long the sync has been running and the
    /// step it is at.
    pub on_stall: Box<dyn FnOnce(wasteledger_store::Stall) + Send>,
}

/// Why a node could not start or serve.
#[derive(Debug, thiserror::Error)]
pub enum NodeError {
    /// Storage failed.
    #[error("storage: {0}")]
    Store(#[from] StoreError),
    /// The stored ledger failed its integrity check: the node refuses to serve.
    #[error(
        "integrity check failed, refusing to serve: {0}; rebuild this node from its peers under a new node id"
    )]
    Integrity(wasteledger_store::state::IntegrityError),
    /// openraft refused the configuration or failed.
    #[error("raft: {0}")]
    Raft(String),
    /// I/O (listeners, files).
    #[error("i/o: {0}")]
    Io(#[from] std::io::Error),
}

/// A submission the leader pre-checked and queued; [`Submitted::answer`] waits for its
/// outcome.
pub struct Submitted {
    queued: crate::proposer::Queued,
    started: Instant,
}

impl Submitted {
    /// The state machine's answer once the event is committed and applied on this node.
    pub async fn answer(self) -> Result<LedgerResponse, WriteError> {
        let outcome = self.queued.answer().await;
        metrics::histogram!("wasteledger_propose_seconds")
            .record(self.started.elapsed().as_secs_f64());
        outcome
    }
}

/// Why a write was not committed.
#[derive(Debug, Clone, thiserror::Error)]
pub enum WriteError {
    /// This node is not the leader (or has no valid lease yet); retry at the leader.
    #[error("not the leader; leader is {leader:?}")]
    NotLeader {
        /// The leader's id and address, when known.
        leader: Option<(u64, NodeAddr)>,
    },
    /// The leader's pre-check refused it; nothing was proposed.
    #[error("{code}: {message}")]
    Rejected {
        /// Stable code.
        code: String,
        /// Class of the refusal (`RejectionKind::name`).
        kind: String,
        /// Message.
        message: String,
    },
    /// Raft failed.
    #[error("raft: {0}")]
    Raft(String),
}

/// A node's view of the cluster, without openraft types.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClusterView {
    /// This node's id.
    pub id: u64,
    /// The leader, if known.
    pub leader: Option<u64>,
    /// The leader's API address, if known.
    pub leader_api: Option<String>,
    /// Current Raft term.
    pub term: u64,
    /// Last applied Raft log index.
    pub last_applied_log: Option<u64>,
    /// Voting members.
    pub voters: Vec<u64>,
}

/// A started node.
pub struct Node {
    /// The Raft handle.
    pub raft: LedgerRaft,
    /// The state machine (read access to the ledger).
    pub state_machine: LedgerStateMachine,
    /// The Raft transport address actually bound.
    pub raft_addr: String,
    /// The advertised API address.
    pub api_addr: String,
    proposer: Proposer,
    _snapshot_trigger: SnapshotTrigger,
    server: JoinHandle<Result<(), tonic::transport::Error>>,
    stop: Option<oneshot::Sender<()>>,
    db: DurableDb,
    history: HistoryTask,
}

/// Proposes a request through `raft` and waits for it to be applied.
pub(crate) async fn propose(
    raft: &LedgerRaft,
    request: LedgerRequest,
) -> Result<LedgerResponse, WriteError> {
    match raft.client_write(request).await {
        Ok(response) => Ok(response.data),
        Err(RaftError::APIError(e)) => Err(write_error(e)),
        Err(e) => Err(WriteError::Raft(e.to_string())),
    }
}

/// The [`WriteError`] for a write Raft refused: "not the leader" (with the leader, when known)
/// or the reason.
pub(crate) fn write_error(e: ClientWriteError<TypeConfig>) -> WriteError {
    match e {
        ClientWriteError::ForwardToLeader(f) => WriteError::NotLeader {
            leader: f.leader_id.zip(f.leader_node),
        },
        other => WriteError::Raft(other.to_string()),
    }
}

fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

impl Node {
    /// Opens storage, checks the entries since the integrity checkpoint, starts Raft, the
    /// transport server and the background check of settled history
    /// ([`Node::history_check`]).
    pub async fn start(options: NodeOptions) -> Result<Node, NodeError> {
        // Start-up time is an operator-visible figure (a restarted node is out of the quorum
        // until it is back), so each phase's duration is logged.
        let started = Instant::now();
        let db = DurableDb::open_with(options.data_dir.join("db"), &options.storage)?;
        if let Some(watch) = options.stall_watch {
            db.spawn_stall_watchdog(watch.limit, watch.on_stall)?;
        }
        let db_opened = started.elapsed();
        let log = LogStorage::new(LogStore::open(db.clone())?);
        let state_machine = LedgerStateMachine::open(
            &db,
            options.genesis.clone(),
            options.data_dir.join("snapshots"),
            options.data_dir.join("ledger.map"),
        )?;
        let ledger_opened = started.elapsed();
        let pending_history = state_machine
            .verify_recent()?
            .map_err(NodeError::Integrity)?;
        let checked = started.elapsed();
        let t = &options.timings;
        let config = openraft::Config {
            cluster_name: options.genesis.ledger_name().to_owned(),
            heartbeat_interval: t.heartbeat_ms,
            election_timeout_min: t.election_timeout_min_ms,
            election_timeout_max: t.election_timeout_max_ms,
            install_snapshot_timeout: 60_000,
            snapshot_policy: openraft::SnapshotPolicy::LogsSinceLast(t.snapshot_every),
            max_in_snapshot_log_to_keep: t.keep_logs_after_snapshot,
            max_payload_entries: 256,
            ..Default::default()
        }
        .validate()
        .map_err(|e| NodeError::Raft(e.to_string()))?;
        crate::network::check_raft_config(&config).map_err(|e| NodeError::Raft(e.to_string()))?;
        let raft = LedgerRaft::new(
            options.id,
            Arc::new(config),
            Network::new(options.id).for_ledger(options.genesis.ledger_id),
            log,
            state_machine.clone(),
        )
        .await
        .map_err(|e| NodeError::Raft(e.to_string()))?;
        tracing::info!(
            db_ms = db_opened.as_millis() as u64,
            ledger_ms = (ledger_opened - db_opened).as_millis() as u64,
            integrity_ms = (checked - ledger_opened).as_millis() as u64,
            raft_ms = (started.elapsed() - checked).as_millis() as u64,
            // Entries below the integrity checkpoint, left to the background check.
            history_entries = pending_history.as_ref().map_or(0, |p| p.entries()),
            "storage opened"
        );
        let history = HistoryTask::start(state_machine.clone(), pending_history);
        let raft_addr = options.raft_listener.local_addr()?.to_string();
        let (stop, stopped) = oneshot::channel::<()>();
        let service = raft_service(
            raft.clone(),
            options.id,
            options.genesis.ledger_id,
            options.data_dir.join("snapshots"),
        );
        let server = tokio::spawn(
            crate::network::server_builder()
                .add_service(service)
                .serve_with_incoming_shutdown(
                    crate::network::incoming(options.raft_listener),
                    async {
                        let _ = stopped.await;
                    },
                ),
        );
        let proposer = Proposer::start(raft.clone());
        let snapshot_trigger =
            SnapshotTrigger::start(raft.clone(), state_machine.clone(), t.snapshot_every);
        Ok(Node {
            raft,
            state_machine,
            proposer,
            _snapshot_trigger: snapshot_trigger,
            raft_addr,
            api_addr: options.api_addr,
            server,
            stop: Some(stop),
            db,
            history,
        })
    }

    /// The background check of settled history: a [`HistoryState::Failed`] means the node
    /// must stop serving (`history::failure` waits for one).
    pub fn history_check(&self) -> tokio::sync::watch::Receiver<HistoryState> {
        self.history.state()
    }

    /// This node's address record.
    pub fn addr(&self) -> NodeAddr {
        NodeAddr {
            raft_addr: self.raft_addr.clone(),
            api_addr: self.api_addr.clone(),
        }
    }

    /// Initialises a new cluster with these voters. Harmless if already initialised.
    pub async fn initialize(&self, members: BTreeMap<u64, NodeAddr>) -> Result<(), NodeError> {
        match self.raft.initialize(members).await {
            Ok(()) => Ok(()),
            Err(RaftError::APIError(InitializeError::NotAllowed(_))) => Ok(()),
            Err(e) => Err(NodeError::Raft(e.to_string())),
        }
    }

    /// Submits a `SignedEvent` on the leader and returns the state machine's answer to it
    /// after commit and apply: [`Node::enqueue`], then [`Submitted::answer`].
    pub async fn submit(&self, signed: pb::SignedEvent) -> Result<LedgerResponse, WriteError> {
        self.enqueue(&signed).await?.answer().await
    }

    /// The first half of a submission, on the leader: stamps the ledger time, pre-checks the
    /// event against the state as it is now (fail fast, nothing proposed on a refusal) and
    /// queues it for proposal (grouped with concurrent submissions, see [`crate::proposer`]).
    /// Events enqueued one after another by one task are decided in that order; each is
    /// pre-checked without the ones before it that are still in flight, so a caller that
    /// enqueues several at once must only do so for events that do not depend on each other
    /// ([`wasteledger_core::ledger::independent_runs`]).
    pub async fn enqueue(&self, signed: &pb::SignedEvent) -> Result<Submitted, WriteError> {
        // Only the leader pre-checks: a follower's state may lag behind what was acknowledged,
        // so its verdict could be stale. Followers hand the write to the leader.
        if !self.raft.is_leader() {
            let leader = self.leader().zip(self.leader_addr());
            return Err(WriteError::NotLeader { leader });
        }
        let sequenced_at = now_ms();
        let started = Instant::now();
        let precheck = self
            .state_machine
            .with_store(|s| s.check(signed, sequenced_at).map(|_| ()))
            .map_err(|e| WriteError::Raft(e.to_string()))?;
        // The two halves of a Submit on the leader, so an operator (or a benchmark) can see
        // whether time goes to checking the event or to replicating and applying it.
        metrics::histogram!("wasteledger_precheck_seconds").record(started.elapsed().as_secs_f64());
        if let Err(rejection) = precheck {
            // Refused before proposing: only this (leader) node sees it, so it is counted here.
            metrics::counter!(
                "wasteledger_events_rejected_total",
                "reason" => rejection.code().to_owned(),
                "stage" => "precheck"
            )
            .increment(1);
            // A duplicate is answered from the ledger (idempotent resubmission).
            return Err(WriteError::Rejected {
                code: rejection.code().to_owned(),
                kind: rejection.kind().name().to_owned(),
                message: rejection.to_string(),
            });
        }
        let started = Instant::now();
        let queued = self
            .proposer
            .enqueue(StampedEvent {
                event: signed.encode_to_vec(),
                sequenced_at,
            })
            .await?;
        Ok(Submitted { queued, started })
    }

    /// Proposes a request and waits for it to be applied.
    pub async fn propose(&self, request: LedgerRequest) -> Result<LedgerResponse, WriteError> {
        propose(&self.raft, request).await
    }

    /// Proposes a node-originated command (a witness cosignature) here if this node leads, or
    /// on the leader over the Raft transport.
    pub async fn propose_anywhere(
        &self,
        request: LedgerRequest,
    ) -> Result<LedgerResponse, WriteError> {
        match self.propose(request.clone()).await {
            Err(WriteError::NotLeader {
                leader: Some((_, addr)),
            }) => crate::network::propose_remote(
                &addr.raft_addr,
                self.state_machine.genesis().ledger_id,
                &request,
                Duration::from_secs(10),
            )
            .await
            .map_err(WriteError::Raft),
            other => other,
        }
    }

    /// Adds a learner and waits until it has caught up (by log or by snapshot). Leader only.
    pub async fn add_learner(&self, id: u64, addr: NodeAddr) -> Result<(), NodeError> {
        self.raft
            .add_learner(id, addr, true)
            .await
            .map(|_| ())
            .map_err(|e| NodeError::Raft(e.to_string()))
    }

    /// Builds a snapshot of the applied state now and purges the log it covers (keeping the
    /// configured tail), waiting for both (bounded by `timeout`).
    pub async fn snapshot_and_purge(&self, timeout: Duration) -> Result<u64, NodeError> {
        let raft_err = |e: String| NodeError::Raft(e);
        let applied = self
            .raft
            .metrics()
            .borrow_watched()
            .last_applied
            .ok_or_else(|| raft_err("nothing applied yet".into()))?;
        self.raft
            .trigger()
            .snapshot()
            .await
            .map_err(|e| raft_err(e.to_string()))?;
        let at_least =
            |id: Option<crate::types::LogId>| id.is_some_and(|s| s.index >= applied.index);
        let snapshot = self
            .raft
            .wait(Some(timeout))
            .metrics(|m| at_least(m.snapshot), "snapshot built")
            .await
            .map_err(|e| raft_err(e.to_string()))?
            .snapshot
            .ok_or_else(|| raft_err("no snapshot".into()))?;
        self.raft
            .trigger()
            .purge_log(snapshot.index)
            .await
            .map_err(|e| raft_err(e.to_string()))?;
        self.raft
            .wait(Some(timeout))
            .metrics(|m| at_least(m.purged), "log purged")
            .await
            .map_err(|e| raft_err(e.to_string()))?;
        Ok(snapshot.index)
    }

    /// The node's database (for node-local state such as the witness's).
    pub fn db(&self) -> &DurableDb {
        &self.db
    }

    /// Waits until this node has applied at least `index` (bounded by `timeout`).
    pub async fn wait_applied(&self, index: u64, timeout: Duration) -> Result<(), NodeError> {
        self.raft
            .wait(Some(timeout))
            .applied_index_at_least(Some(index), "applied")
            .await
            .map(|_| ())
            .map_err(|e| NodeError::Raft(e.to_string()))
    }

    /// Makes the next read linearizable: confirms with a quorum (Raft read index, asked of the
    /// leader when this node follows) and waits until this node has applied up to it, so local
    /// reads reflect every write acknowledged before this call.
    pub async fn linearize(&self, timeout: Duration) -> Result<(), WriteError> {
        let index = if self.raft.is_leader() {
            self.raft
                .ensure_linearizable(openraft::ReadPolicy::ReadIndex)
                .await
                .map_err(|e| WriteError::Raft(e.to_string()))?
                .log_id()
                .index
        } else {
            let Some(addr) = self.leader_addr() else {
                return Err(WriteError::NotLeader { leader: None });
            };
            crate::network::read_index_remote(
                &addr.raft_addr,
                self.state_machine.genesis().ledger_id,
                timeout,
            )
            .await
            .map_err(WriteError::Raft)?
        };
        self.wait_applied(index, timeout)
            .await
            .map_err(|e| WriteError::Raft(e.to_string()))
    }

    /// This node's Raft id.
    pub fn raft_id(&self) -> u64 {
        *self.raft.node_id()
    }

    /// The current leader, if known.
    pub fn leader(&self) -> Option<u64> {
        self.raft.metrics().borrow_watched().current_leader
    }

    /// The leader's address record, if known.
    fn leader_addr(&self) -> Option<NodeAddr> {
        let m = self.raft.metrics().borrow_watched().clone();
        m.current_leader
            .and_then(|l| m.membership_config.membership().get_node(&l).cloned())
    }

    /// What this node knows of the cluster (copied out at once: holding openraft's metrics
    /// borrow blocks Raft).
    pub fn cluster_view(&self) -> ClusterView {
        let m = self.raft.metrics().borrow_watched().clone();
        let leader_api = m.current_leader.and_then(|l| {
            m.membership_config
                .membership()
                .get_node(&l)
                .map(|n| n.api_addr.clone())
        });
        ClusterView {
            id: m.id,
            leader: m.current_leader,
            leader_api,
            term: m.current_term,
            last_applied_log: m.last_applied.map(|l| l.index),
            voters: m.membership_config.membership().voter_ids().collect(),
        }
    }

    /// Ledger size and roots.
    pub fn ledger_head(
        &self,
    ) -> Result<(u64, wasteledger_core::Digest, wasteledger_core::Digest), NodeError> {
        Ok(self.state_machine.with_store(|s| {
            let (root, map_root) = s.roots();
            (s.merkle_size(), root, map_root)
        })?)
    }

    /// Stops Raft and the transport server, and syncs storage.
    pub async fn shutdown(mut self) -> Result<(), NodeError> {
        self.proposer.stop();
        if let Err(e) = self.raft.shutdown().await {
            tracing::warn!(error = %e, "raft shutdown");
        }
        self.history.stop().await;
        // Nothing applies any more: save the map index so the next start is quick.
        let saved = self
            .state_machine
            .with_store(|s| s.save_map_index().map_err(|e| e.to_string()));
        if let Err(e) = saved.map_err(|e| e.to_string()).and_then(|r| r) {
            tracing::warn!(error = %e, "could not save the map index");
        }
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        let _ = (&mut self.server).await;
        self.db.sync()?;
        Ok(())
    }
}

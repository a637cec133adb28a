//! What a node reports about itself without exposing openraft types: its status (leader, term,
//! members, log positions, replication lag), whether it should serve traffic (health), a watch
//! of status changes, and the membership calls of the admin API.

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use openraft::async_runtime::WatchReceiver;
use openraft::async_runtime::instant::Instant as _;
use openraft::errors::{ClientWriteError, RaftError};

use crate::node::Node;
use crate::types::{NodeAddr, TypeConfig};

/// Most entries a node's applied state may trail the cluster's commit index and still serve:
/// beyond it the node is catching up (a new learner, a node back from a crash) and its reads
/// would be stale. A busy leader with hundreds of writes in flight trails by a few hundred
/// entries in normal operation (64 made a 64-writer load flap between SERVING and NOT_SERVING
/// several times a second), so the bound is about a second of full-speed writes.
pub const MAX_SERVING_APPLY_LAG: u64 = 2_000;

/// How long to wait for a new member's Raft address to accept a connection before calling it
/// unreachable.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(3);

/// A node's view of the cluster and of its own log, copied out of openraft's metrics.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NodeStatus {
    /// This node's id.
    pub id: u64,
    /// The leader, if known.
    pub leader: Option<u64>,
    /// The leader's address record, if known.
    pub leader_addr: Option<NodeAddr>,
    /// Current term.
    pub term: u64,
    /// Voters with their addresses.
    pub voters: BTreeMap<u64, NodeAddr>,
    /// Learners with their addresses.
    pub learners: BTreeMap<u64, NodeAddr>,
    /// Last log index appended here.
    pub last_log_index: Option<u64>,
    /// Highest index known committed (by this node or as reported by the leader).
    pub committed: Option<u64>,
    /// Last index applied to the state machine.
    pub last_applied: Option<u64>,
    /// Per follower and learner, the highest index known replicated; only on the leader.
    pub replication: BTreeMap<u64, Option<u64>>,
    /// Whether this node should receive traffic, and why not.
    pub health: Health,
}

impl NodeStatus {
    /// Whether this node is the leader.
    pub fn is_leader(&self) -> bool {
        self.leader == Some(self.id)
    }

    /// Entries a follower trails the leader's last log index (leader only; 0 for itself).
    pub fn replication_lag(&self) -> BTreeMap<u64, u64> {
        let last = self.last_log_index.unwrap_or(0);
        self.replication
            .iter()
            .map(|(id, matched)| (*id, last.saturating_sub(matched.unwrap_or(0))))
            .collect()
    }
}

/// Whether a node should receive traffic.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Health {
    /// It knows a leader with a quorum and is not far behind.
    Serving,
    /// It should not receive traffic; the reason is for operators.
    NotServing(String),
}

impl Health {
    /// `true` for [`Health::Serving`].
    pub fn is_serving(&self) -> bool {
        matches!(self, Health::Serving)
    }
}

/// Why an admin membership call failed.
#[derive(Debug, thiserror::Error)]
pub enum AdminError {
    /// This node does not lead; the call must go to the leader.
    #[error("node {node} is not the leader; leader is {leader:?}")]
    NotLeader {
        /// This node.
        node: u64,
        /// The leader's id and address, when known.
        leader: Option<(u64, NodeAddr)>,
    },
    /// A node named in the call cannot be reached.
    #[error("node {id} unreachable at {addr}: {problem}")]
    Unreachable {
        /// Its id.
        id: u64,
        /// The address tried.
        addr: String,
        /// What failed.
        problem: String,
    },
    /// The requested membership is not acceptable.
    #[error("invalid membership change: {0}")]
    Invalid(String),
    /// The call did not finish in time (the leader may still complete it).
    #[error("{0} did not finish within {1:?}; check Status before retrying")]
    Timeout(&'static str, Duration),
    /// AddLearner stopped waiting, but the node is a learner and is still catching up (a large
    /// ledger takes minutes: a snapshot to send, import and check).
    #[error(
        "node {id} is a learner now but had not caught up within {waited:?} (it holds log \
         index {matched}, the leader {last}); it goes on catching up: follow it with Status, \
         and do not add it again"
    )]
    CatchingUp {
        /// The learner.
        id: u64,
        /// How long the call waited.
        waited: Duration,
        /// The learner's matched log index (0: none yet, e.g. while a snapshot is sent).
        matched: u64,
        /// The leader's last log index.
        last: u64,
    },
    /// openraft failed otherwise.
    #[error("raft: {0}")]
    Raft(String),
}

type Metrics = openraft::RaftMetrics<TypeConfig>;

/// What AddLearner reports when it stops waiting for node `id` after `waited`: a member still
/// catching up, if the membership change went through, else a plain timeout.
fn add_learner_timeout(status: &NodeStatus, id: u64, waited: Duration) -> AdminError {
    if status.learners.contains_key(&id) {
        AdminError::CatchingUp {
            id,
            waited,
            matched: status.replication.get(&id).copied().flatten().unwrap_or(0),
            last: status.last_log_index.unwrap_or(0),
        }
    } else {
        AdminError::Timeout("add_learner", waited)
    }
}

fn status_of(m: &Metrics, max_quorum_silence: Duration) -> NodeStatus {
    let membership = m.membership_config.membership();
    let voter_ids: BTreeSet<u64> = membership.voter_ids().collect();
    let mut voters = BTreeMap::new();
    let mut learners = BTreeMap::new();
    for (id, addr) in membership.nodes() {
        if voter_ids.contains(id) {
            voters.insert(*id, addr.clone());
        } else {
            learners.insert(*id, addr.clone());
        }
    }
    let committed = [m.local_committed, m.cluster_committed]
        .iter()
        .flatten()
        .map(|l| l.index)
        .max();
    let last_applied = m.last_applied.map(|l| l.index);
    let leader_addr = m
        .current_leader
        .and_then(|l| membership.get_node(&l).cloned());
    let replication = m
        .replication
        .as_ref()
        .map(|r| {
            r.iter()
                .filter(|(id, _)| **id != m.id)
                .map(|(id, matched)| (*id, matched.map(|l| l.index)))
                .collect()
        })
        .unwrap_or_default();
    let health = if let Err(fatal) = &m.running_state {
        Health::NotServing(format!("raft stopped: {fatal}"))
    } else if m.current_leader.is_none() {
        Health::NotServing("no leader known".into())
    } else if m.current_leader == Some(m.id)
        && m.last_quorum_acked
            .as_ref()
            .is_none_or(|t| t.elapsed() > max_quorum_silence)
    {
        // A leader cut off from its followers keeps its role in openraft; what it lacks is a
        // recent acknowledgement from a quorum.
        Health::NotServing(format!(
            "leader without a quorum acknowledgement in the last {max_quorum_silence:?}"
        ))
    } else if last_applied.is_none() {
        // A new learner before its first entry or snapshot: it has no ledger to serve.
        Health::NotServing("nothing applied yet".into())
    } else if committed.unwrap_or(0) > last_applied.unwrap_or(0) + MAX_SERVING_APPLY_LAG {
        Health::NotServing(format!(
            "applied index {last_applied:?} trails committed {committed:?} by more than \
             {MAX_SERVING_APPLY_LAG}"
        ))
    } else {
        Health::Serving
    };
    NodeStatus {
        id: m.id,
        leader: m.current_leader,
        leader_addr,
        term: m.current_term,
        voters,
        learners,
        last_log_index: m.last_log_index,
        committed,
        last_applied,
        replication,
        health,
    }
}

/// Status updates of one node: wakes on every openraft metrics change.
pub struct StatusWatch {
    rx: openraft::alias::WatchReceiverOf<TypeConfig, Metrics>,
    max_quorum_silence: Duration,
}

impl StatusWatch {
    /// Waits for the next metrics change; `None` once Raft has stopped.
    pub async fn changed(&mut self) -> Option<()> {
        self.rx.changed().await.ok()
    }

    /// The current status (copied out at once: holding openraft's borrow blocks Raft).
    pub fn current(&self) -> NodeStatus {
        let m = self.rx.borrow_watched().clone();
        status_of(&m, self.max_quorum_silence)
    }
}

impl Node {
    /// How long a leader may go without a quorum acknowledgement and still call itself healthy:
    /// the longest election timeout, after which its followers would elect someone else.
    fn max_quorum_silence(&self) -> Duration {
        Duration::from_millis(self.raft.config().election_timeout_max)
    }

    /// This node's status and health now.
    pub fn status(&self) -> NodeStatus {
        let m = self.raft.metrics().borrow_watched().clone();
        status_of(&m, self.max_quorum_silence())
    }

    /// A watch of this node's status.
    pub fn status_watch(&self) -> StatusWatch {
        StatusWatch {
            rx: self.raft.metrics(),
            max_quorum_silence: self.max_quorum_silence(),
        }
    }

    fn not_leader(&self) -> AdminError {
        let s = self.status();
        AdminError::NotLeader {
            node: s.id,
            leader: s.leader.zip(s.leader_addr),
        }
    }

    /// Adds `id` as a learner and waits (at most `timeout`) until it has caught up. Leader only;
    /// the node's Raft address is tried first, so an unreachable node is reported as such
    /// instead of as a timeout.
    pub async fn add_learner_checked(
        &self,
        id: u64,
        addr: NodeAddr,
        timeout: Duration,
    ) -> Result<(), AdminError> {
        if !self.raft.is_leader() {
            return Err(self.not_leader());
        }
        if id == 0 {
            return Err(AdminError::Invalid("node ids start at 1".into()));
        }
        let status = self.status();
        if status.voters.contains_key(&id) {
            return Err(AdminError::Invalid(format!("node {id} is already a voter")));
        }
        let unreachable = |problem: String| AdminError::Unreachable {
            id,
            addr: addr.raft_addr.clone(),
            problem,
        };
        match tokio::time::timeout(
            CONNECT_TIMEOUT,
            tokio::net::TcpStream::connect(&addr.raft_addr),
        )
        .await
        {
            Ok(Ok(_)) => {}
            Ok(Err(e)) => return Err(unreachable(e.to_string())),
            Err(_) => return Err(unreachable(format!("no answer within {CONNECT_TIMEOUT:?}"))),
        }
        match tokio::time::timeout(timeout, self.raft.add_learner(id, addr, true)).await {
            Err(_) => Err(add_learner_timeout(&self.status(), id, timeout)),
            Ok(Ok(_)) => Ok(()),
            Ok(Err(e)) => Err(self.write_error(e)),
        }
    }

    /// Replaces the voter set with `voters` (every one already a member), keeping removed
    /// voters as learners when `retain`. Leader only; bounded by `timeout`.
    pub async fn change_voters(
        &self,
        voters: BTreeSet<u64>,
        retain: bool,
        timeout: Duration,
    ) -> Result<(), AdminError> {
        if !self.raft.is_leader() {
            return Err(self.not_leader());
        }
        if voters.is_empty() {
            return Err(AdminError::Invalid("the voter set cannot be empty".into()));
        }
        let status = self.status();
        if let Some(unknown) = voters
            .iter()
            .find(|v| !status.voters.contains_key(v) && !status.learners.contains_key(v))
        {
            return Err(AdminError::Invalid(format!(
                "node {unknown} is not a member; add it as a learner first"
            )));
        }
        match tokio::time::timeout(timeout, self.raft.change_membership(voters, retain)).await {
            Err(_) => Err(AdminError::Timeout("change_membership", timeout)),
            Ok(Ok(_)) => Ok(()),
            Ok(Err(e)) => Err(self.write_error(e)),
        }
    }

    fn write_error(&self, e: RaftError<TypeConfig, ClientWriteError<TypeConfig>>) -> AdminError {
        match e {
            RaftError::APIError(ClientWriteError::ForwardToLeader(f)) => AdminError::NotLeader {
                node: self.raft_id(),
                leader: f.leader_id.zip(f.leader_node),
            },
            RaftError::APIError(ClientWriteError::ChangeMembershipError(c)) => {
                AdminError::Invalid(c.to_string())
            }
            other => AdminError::Raft(other.to_string()),
        }
    }
}

#[cfg(test)]
mod tests {
    use std::collections::{BTreeMap, BTreeSet};
    use std::sync::Arc;
    use std::time::Duration;

    use openraft::async_runtime::instant::Instant as _;
    use openraft::{Membership, StoredMembership};
    use openraft_rt_tokio::TokioInstant;

    use super::*;

    fn log_id(index: u64) -> crate::types::LogId {
        openraft::testing::log_id::<TypeConfig>(1, 1, index)
    }

    /// Node `id` of a 3-voter cluster led by `leader`, having applied `applied` of `committed`.
    fn metrics(id: u64, leader: Option<u64>, applied: Option<u64>, committed: u64) -> Metrics {
        let mut m = Metrics::new_initial(id);
        let voters = BTreeSet::from([1, 2, 3]);
        let nodes: BTreeMap<u64, NodeAddr> = (1..=4).map(|n| (n, NodeAddr::default())).collect();
        let membership = Membership::new(vec![voters], nodes).unwrap();
        m.membership_config = Arc::new(StoredMembership::new(Some(log_id(1)), membership));
        m.current_term = 1;
        m.current_leader = leader;
        m.last_log_index = Some(committed);
        m.cluster_committed = Some(log_id(committed));
        m.last_applied = applied.map(log_id);
        m
    }

    const SILENCE: Duration = Duration::from_secs(2);

    #[test]
    fn a_follower_serves_with_a_leader_and_a_small_lag() {
        let s = status_of(&metrics(2, Some(1), Some(100), 100), SILENCE);
        assert_eq!(s.health, Health::Serving);
        assert_eq!(s.voters.keys().copied().collect::<Vec<_>>(), vec![1, 2, 3]);
        assert_eq!(s.learners.keys().copied().collect::<Vec<_>>(), vec![4]);
        let behind = 100 + MAX_SERVING_APPLY_LAG;
        let s = status_of(&metrics(2, Some(1), Some(100), behind), SILENCE);
        assert!(s.health.is_serving(), "at the bound: {s:?}");
        let s = status_of(&metrics(2, Some(1), Some(100), behind + 1), SILENCE);
        assert!(!s.health.is_serving(), "past the bound: {s:?}");
    }

    #[test]
    fn no_leader_or_nothing_applied_is_not_serving() {
        let s = status_of(&metrics(2, None, Some(100), 100), SILENCE);
        assert_eq!(s.health, Health::NotServing("no leader known".into()));
        // A learner that has a leader but no ledger yet.
        let s = status_of(&metrics(4, Some(1), None, 100), SILENCE);
        assert_eq!(s.health, Health::NotServing("nothing applied yet".into()));
    }

    #[test]
    fn add_learner_that_outwaits_its_timeout_says_whether_the_node_is_a_member() {
        let mut m = metrics(1, Some(1), Some(900), 900);
        m.replication = Some(BTreeMap::from([
            (1, Some(log_id(900))),
            (4, Some(log_id(120))),
        ]));
        let s = status_of(&m, SILENCE);
        // Node 4 is a learner of this membership: it is catching up, at index 120 of 900.
        let e = add_learner_timeout(&s, 4, Duration::from_secs(60));
        assert!(
            matches!(
                e,
                AdminError::CatchingUp {
                    id: 4,
                    matched: 120,
                    last: 900,
                    ..
                }
            ),
            "{e:?}"
        );
        assert!(e.to_string().contains("do not add it again"), "{e}");
        // Node 5 is no member: the change itself did not go through in time.
        let e = add_learner_timeout(&s, 5, Duration::from_secs(60));
        assert!(matches!(e, AdminError::Timeout("add_learner", _)), "{e:?}");
    }

    #[test]
    fn a_leader_serves_only_with_a_recent_quorum_acknowledgement() {
        let mut m = metrics(1, Some(1), Some(10), 10);
        m.replication = Some(BTreeMap::from([
            (1, Some(log_id(10))),
            (2, Some(log_id(7))),
            (3, None),
        ]));
        // Never acknowledged by a quorum.
        assert!(!status_of(&m, SILENCE).health.is_serving());
        m.last_quorum_acked = Some(TokioInstant::now().into());
        let s = status_of(&m, SILENCE);
        assert_eq!(s.health, Health::Serving);
        assert!(s.is_leader());
        // Lag per follower, never listing the leader itself.
        assert_eq!(s.replication_lag(), BTreeMap::from([(2, 3), (3, 10)]));
        // Acknowledged, but longer ago than an election timeout.
        m.last_quorum_acked = Some((TokioInstant::now() - SILENCE * 2).into());
        assert!(!status_of(&m, SILENCE).health.is_serving());
    }
}

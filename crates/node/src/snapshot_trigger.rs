//! When a node builds a snapshot: after `snapshot_every` Raft entries (openraft's own
//! `SnapshotPolicy::LogsSinceLast`) or after `snapshot_every` ledger entries, whichever comes
//! first. This module owns the second count.
//!
//! Why both: the leader groups concurrent events into one Raft entry ([`crate::proposer`]), up
//! to hundreds per entry. Counting Raft entries alone, a busy ledger would take a snapshot (and
//! purge its log) only every few million events, so the Raft log, the disk it takes and a
//! restart's replay would grow by the same factor. Counting ledger entries alone, a quiet
//! ledger's cosignature and heartbeat-era entries would never be purged.

use std::time::Duration;

use openraft::async_runtime::WatchReceiver;
use tokio::task::JoinHandle;

use crate::state_machine::LedgerStateMachine;
use crate::types::LedgerRaft;

/// How often the ledger's growth is looked at. A snapshot is late by at most this much.
const LOOK_EVERY: Duration = Duration::from_secs(1);

/// The running trigger; stops when dropped.
pub struct SnapshotTrigger {
    task: JoinHandle<()>,
}

impl SnapshotTrigger {
    /// Starts asking `raft` for a snapshot each time the ledger has grown by `every` entries
    /// since the last snapshot this node finished (or since the start).
    pub fn start(raft: LedgerRaft, state_machine: LedgerStateMachine, every: u64) -> Self {
        SnapshotTrigger {
            task: tokio::spawn(run(raft, state_machine, every.max(1))),
        }
    }
}

impl Drop for SnapshotTrigger {
    fn drop(&mut self) {
        self.task.abort();
    }
}

async fn run(raft: LedgerRaft, state_machine: LedgerStateMachine, every: u64) {
    let ledger_size = || state_machine.with_store(|s| s.merkle_size()).ok();
    let mut last_snapshot = raft.metrics().borrow_watched().snapshot;
    // The ledger size the count starts from: when the last snapshot was seen to finish (not
    // the size it covers, which the metrics do not say; the difference is what was applied
    // while it was built).
    let mut counted_from = ledger_size().unwrap_or(0);
    let mut tick = tokio::time::interval(LOOK_EVERY);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        let Some(size) = ledger_size() else {
            continue;
        };
        let snapshot = raft.metrics().borrow_watched().snapshot;
        if snapshot != last_snapshot {
            last_snapshot = snapshot;
            counted_from = size;
            continue;
        }
        if size.saturating_sub(counted_from) >= every {
            tracing::debug!(
                size,
                counted_from,
                "ledger grew by snapshot_every: snapshot"
            );
            if raft.trigger().snapshot().await.is_err() {
                // Raft has shut down.
                return;
            }
            // Not again until this one finishes (or another `every` entries arrive).
            counted_from = size;
        }
    }
}

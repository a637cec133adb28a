//! `WatchEvents`: applied ledger entries from an index on, then new ones as they are applied.
//!
//! One task per stream reads entries in chunks and sends them through a small bounded channel:
//! when the client reads slowly, the channel fills, the task waits, and HTTP/2 flow control
//! carries that back — nothing is dropped or skipped. Because every entry is sent in index
//! order and each carries its index, a client resumes after a disconnect by asking again from
//! the last index it received + 1.

use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{mpsc, watch};
use tonic::Status;
use wasteledger_core::Digest;
use wasteledger_core::custody::named_parties;
use wasteledger_core::envelope::Subject;
use wasteledger_core::pb;
use wasteledger_node::node::Node;
use wasteledger_store::state::LedgerStore;

use crate::read::{entry_at, ledger_event_and_subject};

/// Entries read per state-lock acquisition.
const CHUNK: u64 = 128;
/// Events buffered per stream before the reader waits for the client.
const BUFFER: usize = 64;
/// How long a caught-up stream waits for a new entry before checking the client is still there.
const IDLE_WAIT: Duration = Duration::from_secs(5);

/// What a stream sends.
#[derive(Clone)]
pub(crate) struct WatchFilter {
    party: Option<String>,
    manifests_only: bool,
    kinds: BTreeSet<String>,
}

impl WatchFilter {
    pub(crate) fn from_request(r: &pb::WatchEventsRequest) -> WatchFilter {
        WatchFilter {
            party: (!r.party.is_empty()).then(|| r.party.clone()),
            manifests_only: r.manifests_only,
            kinds: r.kinds.iter().cloned().collect(),
        }
    }

    fn matches(
        &self,
        store: &LedgerStore,
        event: &pb::LedgerEvent,
        subject: &Subject,
    ) -> Result<bool, Status> {
        if self.manifests_only && matches!(subject, Subject::Party(_)) {
            return Ok(false);
        }
        if !self.kinds.is_empty() && !self.kinds.contains(&event.kind) {
            return Ok(false);
        }
        let Some(party) = &self.party else {
            return Ok(true);
        };
        let tracking = match subject {
            Subject::Party(id) => return Ok(id == party),
            Subject::Manifest(t) => t.to_string(),
        };
        let state = store
            .manifest_state(&tracking)
            .map_err(|e| crate::internal(e.to_string()))?;
        Ok(state
            .and_then(|s| s.manifest)
            .is_some_and(|m| named_parties(&m).contains(party)))
    }
}

/// Starts the stream task; the receiver is the response stream.
pub(crate) fn start(
    node: Arc<Node>,
    ledger_id: Digest,
    from_index: u64,
    filter: WatchFilter,
    mut stopping: watch::Receiver<bool>,
) -> mpsc::Receiver<Result<pb::LedgerEvent, Status>> {
    let (tx, rx) = mpsc::channel(BUFFER);
    tokio::spawn(async move {
        let mut next = from_index;
        loop {
            if *stopping.borrow() {
                let _ = tx
                    .send(Err(Status::unavailable(
                        "node shutting down; resume from the next index on another node",
                    )))
                    .await;
                return;
            }
            let read = node.state_machine.with_store(|s| {
                let size = s.merkle_size();
                let end = size.min(next.saturating_add(CHUNK));
                let mut out = Vec::new();
                for index in next..end {
                    let (event, subject) =
                        ledger_event_and_subject(&ledger_id, &entry_at(s, index)?)?;
                    if filter.matches(s, &event, &subject)? {
                        out.push(event);
                    }
                }
                Ok::<_, Status>((out, end, size))
            });
            let (events, end, size) = match read {
                Ok(Ok(r)) => r,
                Ok(Err(status)) => {
                    let _ = tx.send(Err(status)).await;
                    return;
                }
                Err(e) => {
                    let _ = tx.send(Err(crate::internal(e.to_string()))).await;
                    return;
                }
            };
            for event in events {
                if tx.send(Ok(event)).await.is_err() {
                    return; // the client went away
                }
            }
            next = next.max(end);
            if next >= size {
                // Caught up: wait for the next applied Raft entry, the client leaving, or
                // shutdown; then look again.
                let applied = node.cluster_view().last_applied_log.unwrap_or(0);
                tokio::select! {
                    _ = tx.closed() => return,
                    changed = stopping.changed() => {
                        if changed.is_err() {
                            return; // the server is gone
                        }
                    }
                    _ = node.wait_applied(applied + 1, IDLE_WAIT) => {}
                }
            }
        }
    });
    rx
}

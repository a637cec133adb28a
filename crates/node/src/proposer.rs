//! The leader's write queue: events that arrive while earlier proposals are in flight go into
//! Raft together, as one [`LedgerRequest::SubmitBatch`] entry.
//!
//! Why: a Raft entry costs the same bookkeeping however much it carries — openraft's
//! per-entry work on every node, a record in each node's log, a frame in every AppendEntries,
//! an apply step holding the state machine's lock. Profiles of 64 writers put that at about a
//! quarter of the cluster's CPU, and the leader's apply stage was the serial bottleneck
//! (BENCHMARKS.md, eighth pass). Grouping lets that cost be paid once per group.
//!
//! How a group forms: at most [`MAX_IN_FLIGHT`] proposals are outstanding. A submission that
//! finds a free slot is proposed at once, alone, so a single writer waits for nothing extra;
//! submissions that arrive while every slot is taken queue, and go out together when one
//! frees. The group size thus follows the load, and no timer adds latency.
//!
//! Each event in a group is still decided on its own, in order, by every node
//! (`LedgerStateMachine::apply`); the group changes how events travel, not what they mean.

use std::sync::Arc;

use openraft::impls::ProgressResponder;
use tokio::sync::{Semaphore, mpsc, oneshot};
use tokio::task::JoinHandle;

use crate::network::MAX_ENTRY_BYTES;
use crate::node::WriteError;
use crate::types::{LedgerRaft, LedgerRequest, LedgerResponse, StampedEvent};

/// Proposals outstanding at once. Enough to keep the pipeline full (one group being made
/// durable while the one before is applied and the next is forming); with more, groups get
/// smaller and per-entry costs come back.
pub const MAX_IN_FLIGHT: usize = 4;

/// Most events in one group, whatever their size.
pub const MAX_GROUP_EVENTS: usize = 512;

/// Bytes a [`StampedEvent`] may add to an encoded entry beyond its event bytes: the event's
/// length prefix (≤ 3 bytes for anything under 2 MiB) and the time stamp (a varint, ≤ 10).
const PER_EVENT_OVERHEAD: usize = 16;

/// Bytes an encoded entry holds beside its events: the codec version, the log id (three
/// varints), the payload tags and the event count.
const ENTRY_OVERHEAD: usize = 64;

/// How many bytes `event` adds to a group's encoded entry, at most.
fn encoded_cost(event: &StampedEvent) -> usize {
    event.event.len() + PER_EVENT_OVERHEAD
}

/// Whether a group already costing `group_bytes` may take one more event costing `cost`
/// without its entry exceeding [`MAX_ENTRY_BYTES`] (which every node's log refuses).
fn fits(group_bytes: usize, cost: usize) -> bool {
    ENTRY_OVERHEAD + group_bytes + cost <= MAX_ENTRY_BYTES
}

/// An event in the queue (or in Raft): [`Queued::answer`] waits for the state machine's
/// answer to it.
pub struct Queued(oneshot::Receiver<Result<LedgerResponse, WriteError>>);

impl Queued {
    /// The state machine's answer once the event's group is applied on this node.
    pub async fn answer(self) -> Result<LedgerResponse, WriteError> {
        self.0.await.map_err(|_| shutting_down())?
    }
}

fn shutting_down() -> WriteError {
    WriteError::Raft("the node is shutting down".into())
}

/// A submission waiting for its group's answer.
struct Pending {
    event: StampedEvent,
    reply: oneshot::Sender<Result<LedgerResponse, WriteError>>,
}

/// Submissions waiting to be proposed. Cheap to share: one per node.
pub struct Proposer {
    queue: mpsc::Sender<Pending>,
    task: JoinHandle<()>,
}

impl Proposer {
    /// Starts the queue's task, proposing through `raft`.
    pub fn start(raft: LedgerRaft) -> Proposer {
        // Bounded, so a flood of submissions waits in `submit` (back-pressure on the API
        // handlers) rather than growing memory without limit.
        let (queue, waiting) = mpsc::channel(4 * MAX_GROUP_EVENTS);
        let task = tokio::spawn(run(raft, waiting));
        Proposer { queue, task }
    }

    /// Queues `event` to be proposed in a group with whatever else is waiting. Events queued
    /// one after another from one task are proposed, and so decided, in that order.
    pub async fn enqueue(&self, event: StampedEvent) -> Result<Queued, WriteError> {
        if !fits(0, encoded_cost(&event)) {
            // The API's size limits keep events far below this; refuse rather than let the
            // log refuse a whole group.
            return Err(WriteError::Rejected {
                code: "envelope.too_large".into(),
                kind: wasteledger_core::ledger::RejectionKind::TooLarge
                    .name()
                    .into(),
                message: format!(
                    "the event is {} bytes; a Raft entry holds at most {MAX_ENTRY_BYTES}",
                    event.event.len()
                ),
            });
        }
        let (reply, answer) = oneshot::channel();
        self.queue
            .send(Pending { event, reply })
            .await
            .map_err(|_| shutting_down())?;
        Ok(Queued(answer))
    }

    /// Stops taking submissions; those already proposed are answered by Raft (or its
    /// shutdown).
    pub fn stop(&self) {
        self.task.abort();
    }
}

/// The queue's loop: take a proposal slot, gather what is waiting into a group, hand it to
/// Raft, repeat; each group's answer is awaited in its own task. Ends when the [`Proposer`]
/// is dropped.
///
/// Groups are handed to Raft here, in the loop, rather than from the task that waits: tasks
/// may start in any order (tokio runs the newest spawned task first), and groups must enter
/// the log in the order their events were queued.
async fn run(raft: LedgerRaft, mut waiting: mpsc::Receiver<Pending>) {
    let slots = Arc::new(Semaphore::new(MAX_IN_FLIGHT));
    let mut carried: Option<Pending> = None;
    loop {
        let first = match carried.take() {
            Some(p) => p,
            None => match waiting.recv().await {
                Some(p) => p,
                None => return,
            },
        };
        // Waiting for a slot is what lets a group form: submissions queue meanwhile.
        let Ok(slot) = slots.clone().acquire_owned().await else {
            return;
        };
        let mut group_bytes = encoded_cost(&first.event);
        let mut group = vec![first];
        while group.len() < MAX_GROUP_EVENTS {
            let Ok(next) = waiting.try_recv() else {
                break;
            };
            let cost = encoded_cost(&next.event);
            if !fits(group_bytes, cost) {
                carried = Some(next);
                break;
            }
            group_bytes += cost;
            group.push(next);
        }
        metrics::histogram!("wasteledger_group_events").record(group.len() as f64);
        let (events, replies): (Vec<_>, Vec<_>) =
            group.into_iter().map(|p| (p.event, p.reply)).unzip();
        let expected = events.len();
        let (responder, answer) = ProgressResponder::complete_only();
        let proposed = raft
            .client_write_ff(LedgerRequest::SubmitBatch { events }, Some(responder))
            .await;
        tokio::spawn(async move {
            let outcome = match proposed {
                Ok(()) => match answer.await {
                    Ok(written) => written
                        .map(|response| response.data)
                        .map_err(crate::node::write_error),
                    Err(_) => Err(shutting_down()),
                },
                Err(fatal) => Err(WriteError::Raft(fatal.to_string())),
            };
            answer_group(outcome, expected, replies);
            drop(slot);
        });
    }
}

/// Hands each submitter of a group its own answer.
fn answer_group(
    outcome: Result<LedgerResponse, WriteError>,
    expected: usize,
    replies: Vec<oneshot::Sender<Result<LedgerResponse, WriteError>>>,
) {
    match outcome {
        Ok(LedgerResponse::Batch(answers)) if answers.len() == expected => {
            for (reply, answer) in replies.into_iter().zip(answers) {
                // A submitter that gave up (its call was cancelled) no longer listens.
                let _ = reply.send(Ok(answer));
            }
        }
        Ok(other) => {
            let message = format!(
                "the state machine answered a group of {expected} events with {other:?}; \
                 the outcome is unknown"
            );
            tracing::error!("{message}");
            for reply in replies {
                let _ = reply.send(Err(WriteError::Raft(message.clone())));
            }
        }
        Err(e) => {
            for reply in replies {
                let _ = reply.send(Err(e.clone()));
            }
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]

    use openraft::entry::RaftEntry;

    use super::*;
    use crate::types::{Entry, TypeConfig, encode};

    /// A group the loop would build from the largest events, with the largest log id, encodes
    /// within the log's value limit.
    #[test]
    fn a_full_group_fits_in_one_log_record() {
        for event_len in [1, 300, 1_500, 40_000, MAX_ENTRY_BYTES / 3] {
            let stamped = StampedEvent {
                event: vec![0xA5; event_len],
                sequenced_at: i64::MIN,
            };
            let mut events = Vec::new();
            let mut bytes = 0;
            while events.len() < MAX_GROUP_EVENTS && fits(bytes, encoded_cost(&stamped)) {
                bytes += encoded_cost(&stamped);
                events.push(stamped.clone());
            }
            assert!(!events.is_empty());
            let entry = Entry::new_normal(
                openraft::testing::log_id::<TypeConfig>(u64::MAX, u64::MAX, u64::MAX),
                LedgerRequest::SubmitBatch { events },
            );
            let len = encode(&entry).unwrap().len();
            assert!(len <= MAX_ENTRY_BYTES, "{event_len}-byte events: {len}");
        }
    }
}

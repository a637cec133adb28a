//! The write side of `LedgerService`: one signed event or a batch, forwarded to the leader
//! when this node follows, answered with a receipt (the original one on resubmission) or a
//! status that follows the documented mapping.

use std::time::Duration;

use tonic::{Request, Status};
use wasteledger_core::entry::LedgerEntry;
use wasteledger_core::envelope::{decode_event, event_hash};
use wasteledger_core::ledger::{LedgerView, independent_runs};
use wasteledger_core::pb;
use wasteledger_node::node::{Submitted, WriteError};
use wasteledger_node::types::LedgerResponse;

use crate::proofs::note_covering;
use crate::read::entry_at;
use crate::{
    LEADER_KEY, LedgerApi, LedgerServiceClient, MAX_RESPONSE_BYTES, code_for_kind, status,
};

/// Most events in one SubmitBatch.
pub const MAX_BATCH: usize = 256;

/// Metadata marking a call a follower forwarded, so a confused follower never forwards in a
/// loop.
const FORWARDED_KEY: &str = "wasteledger-forwarded";

/// Where a write went.
pub(crate) enum Outcome {
    /// Committed (now or earlier, for a resubmission).
    Accepted(pb::Receipt),
    /// This node follows; the leader's API address, when known.
    NotLeader(Option<String>),
}

impl LedgerApi {
    /// Decides one event on this node: a receipt, a refusal, or "not the leader".
    pub(crate) async fn submit_here(&self, event: &pb::SignedEvent) -> Result<Outcome, Status> {
        let answer = answer_of(self.node.enqueue(event).await).await;
        self.outcome(event, answer)
    }

    /// What the client hears about `event` given the node's answer.
    fn outcome(
        &self,
        event: &pb::SignedEvent,
        answer: Result<LedgerResponse, WriteError>,
    ) -> Result<Outcome, Status> {
        match answer {
            Ok(LedgerResponse::Accepted {
                index,
                event_hash,
                leaf_hash,
                tree_size,
            }) => Ok(Outcome::Accepted(pb::Receipt {
                index,
                event_hash: event_hash.to_vec(),
                leaf_hash: leaf_hash.to_vec(),
                tree_size,
                checkpoint: self.read_store(|s| note_covering(s, index))?,
            })),
            Ok(LedgerResponse::Rejected {
                duplicate_of: Some(index),
                ..
            }) => self.receipt_for_index(index, event).map(Outcome::Accepted),
            Ok(LedgerResponse::Rejected {
                code,
                kind,
                message,
                ..
            }) => Err(status(code_for_kind(&kind), &code, message)),
            Ok(other) => Err(crate::internal(format!(
                "unexpected state machine answer {other:?}"
            ))),
            Err(WriteError::Rejected {
                code,
                kind,
                message,
            }) => {
                if code == "ledger.already_recorded" {
                    let ledger_id = self.node.state_machine.genesis().ledger_id;
                    // It decoded at the pre-check that refused it, so it decodes here.
                    let recorded = decode_event(&ledger_id, event).ok();
                    let index = match recorded {
                        Some(e) => self.read_store(|s| Ok(s.event_index(&e.subject, &e.hash)))?,
                        None => None,
                    };
                    if let Some(index) = index {
                        return self.receipt_for_index(index, event).map(Outcome::Accepted);
                    }
                }
                Err(status(code_for_kind(&kind), &code, message))
            }
            Err(WriteError::NotLeader { leader }) => {
                Ok(Outcome::NotLeader(leader.map(|(_, addr)| addr.api_addr)))
            }
            Err(WriteError::Raft(m)) => Err(status(
                tonic::Code::Unavailable,
                "cluster.raft",
                format!(
                    "{m}; the outcome is unknown: resubmit the same signed event (it is idempotent)"
                ),
            )),
        }
    }

    /// The receipt of the entry already at `index`, for a resubmission of the envelope it
    /// records; a refusal when `event` shares only its body (its signatures were not checked:
    /// see [`LedgerEntry::records_envelope`]).
    fn receipt_for_index(
        &self,
        index: u64,
        event: &pb::SignedEvent,
    ) -> Result<pb::Receipt, Status> {
        let ledger_id = self.node.state_machine.genesis().ledger_id;
        self.read_store(|s| {
            let entry = entry_at(s, index)?;
            let decoded =
                LedgerEntry::decode(&entry).map_err(|e| crate::internal(e.to_string()))?;
            if !decoded.records_envelope(event) {
                return Err(status(
                    tonic::Code::AlreadyExists,
                    "ledger.recorded_with_other_signatures",
                    format!(
                        "this event body is already recorded at ledger index {index}, with \
                         other signatures than this submission's ({} recorded, {} here); \
                         nothing was recorded and these signatures were not checked. See who \
                         signed the recorded event with `wasteledger watch --from {index} \
                         --count 1`",
                        decoded.signatures.len(),
                        event.signatures.len()
                    ),
                ));
            }
            Ok(pb::Receipt {
                index,
                event_hash: event_hash(&ledger_id, &decoded.body).0.to_vec(),
                leaf_hash: wasteledger_core::entry::leaf_hash(&entry).0.to_vec(),
                tree_size: index + 1,
                checkpoint: note_covering(s, index)?,
            })
        })
    }

    /// A client to the leader's API for forwarding.
    async fn leader_client(
        &self,
        leader_api: &str,
    ) -> Result<LedgerServiceClient<tonic::transport::Channel>, Status> {
        let endpoint = tonic::transport::Endpoint::from_shared(format!("http://{leader_api}"))
            .map_err(|e| crate::internal(e.to_string()))?
            .connect_timeout(Duration::from_secs(2))
            .timeout(Duration::from_secs(60));
        let channel = endpoint.connect().await.map_err(|e| {
            status(
                tonic::Code::Unavailable,
                "cluster.leader_unreachable",
                format!("leader at {leader_api} unreachable: {e}; retry shortly"),
            )
        })?;
        Ok(LedgerServiceClient::new(channel).max_decoding_message_size(MAX_RESPONSE_BYTES))
    }

    /// Submit: here when leading, else forwarded once to the leader.
    pub(crate) async fn submit_one(
        &self,
        event: pb::SignedEvent,
        call: &CallInfo,
    ) -> Result<pb::Receipt, Status> {
        match self.submit_here(&event).await? {
            Outcome::Accepted(receipt) => Ok(receipt),
            Outcome::NotLeader(Some(leader)) if !call.forwarded => {
                let mut client = self.leader_client(&leader).await?;
                client
                    .submit(call.forward(Request::new(event)))
                    .await
                    .map(|r| r.into_inner())
                    .map_err(|s| forwarding_failed(s, &leader))
            }
            Outcome::NotLeader(leader) => Err(no_leader(leader)),
        }
    }

    /// SubmitBatch: each item decided in order on the leader; a refusal is that item's result.
    ///
    /// Items are checked and queued a run at a time ([`independent_runs`]: no two touch the
    /// same subject, registry events alone), and a run's answers are awaited together, so a
    /// bulk of independent events (a morning's pickups, an import) shares Raft entries
    /// instead of paying one commit each. Events are still proposed, and so decided and
    /// recorded, in the batch's order.
    pub(crate) async fn submit_batch(
        &self,
        batch: pb::SubmitBatchRequest,
        call: &CallInfo,
    ) -> Result<pb::SubmitBatchResponse, Status> {
        if batch.events.len() > MAX_BATCH {
            return Err(status(
                tonic::Code::ResourceExhausted,
                "envelope.batch_too_large",
                format!(
                    "a batch holds at most {MAX_BATCH} events, this one {}; split it",
                    batch.events.len()
                ),
            ));
        }
        let ledger_id = self.node.state_machine.genesis().ledger_id;
        let runs = independent_runs(&ledger_id, &batch.events);
        let mut results = Vec::with_capacity(batch.events.len());
        for run in runs {
            let mut queued = Vec::with_capacity(run.len());
            for i in run.clone() {
                let submitted = self.node.enqueue(&batch.events[i]).await;
                if i == 0
                    && !call.forwarded
                    && let Err(WriteError::NotLeader { leader }) = &submitted
                {
                    // Nothing decided yet: hand the whole batch to the leader.
                    let leader = leader.as_ref().map(|(_, addr)| addr.api_addr.clone());
                    return self.forward_batch(batch, call, leader).await;
                }
                queued.push(submitted);
            }
            for (i, submitted) in run.zip(queued) {
                let answer = answer_of(submitted).await;
                let result = match self.outcome(&batch.events[i], answer) {
                    Ok(Outcome::Accepted(receipt)) => pb::submit_result::Result::Accepted(receipt),
                    // Leadership moved mid-batch: this item (and likely the rest) is not
                    // decided.
                    Ok(Outcome::NotLeader(leader)) => {
                        pb::submit_result::Result::Rejected(submit_error(&no_leader(leader)))
                    }
                    Err(s) => pb::submit_result::Result::Rejected(submit_error(&s)),
                };
                results.push(pb::SubmitResult {
                    result: Some(result),
                });
            }
        }
        Ok(pb::SubmitBatchResponse { results })
    }

    /// Sends a whole batch this follower received to the leader's API.
    async fn forward_batch(
        &self,
        batch: pb::SubmitBatchRequest,
        call: &CallInfo,
        leader: Option<String>,
    ) -> Result<pb::SubmitBatchResponse, Status> {
        let Some(leader) = leader else {
            return Err(no_leader(None));
        };
        let mut client = self.leader_client(&leader).await?;
        client
            .submit_batch(call.forward(Request::new(batch)))
            .await
            .map(|r| r.into_inner())
            .map_err(|s| forwarding_failed(s, &leader))
    }
}

/// The node's answer to an event it queued, or why it did not queue it.
async fn answer_of(submitted: Result<Submitted, WriteError>) -> Result<LedgerResponse, WriteError> {
    submitted?.answer().await
}

/// How a call arrived: forwarded by a follower or not, and its request id (set by the
/// request-id layer), which a forwarded call carries on so both nodes log the same id.
pub(crate) struct CallInfo {
    pub(crate) forwarded: bool,
    request_id: Option<tonic::metadata::MetadataValue<tonic::metadata::Ascii>>,
}

impl CallInfo {
    pub(crate) fn of<T>(request: &Request<T>) -> CallInfo {
        CallInfo {
            forwarded: request.metadata().contains_key(FORWARDED_KEY),
            request_id: request
                .metadata()
                .get(crate::runtime::request_id::REQUEST_ID_KEY)
                .cloned(),
        }
    }

    fn forward<T>(&self, mut request: Request<T>) -> Request<T> {
        if let Ok(v) = "1".parse() {
            request.metadata_mut().insert(FORWARDED_KEY, v);
        }
        if let Some(id) = &self.request_id {
            request
                .metadata_mut()
                .insert(crate::runtime::request_id::REQUEST_ID_KEY, id.clone());
        }
        request
    }
}

/// A forwarded write's failure as this node's caller should see it. The leader's own
/// refusals carry a reason (`REASON_KEY`) and pass through unchanged, as do codes a broken
/// call does not produce. The rest is the call itself failing — the leader died or restarted mid-call, and the client library reports
/// that as `Unknown` ("transport error") or `Cancelled` — so the write may or may not have
/// been committed: that is `Unavailable`, with the way out.
fn forwarding_failed(failure: Status, leader: &str) -> Status {
    use tonic::Code::{Cancelled, DeadlineExceeded, Unavailable, Unknown};
    let call_failed = matches!(
        failure.code(),
        Unknown | Cancelled | Unavailable | DeadlineExceeded
    );
    if !call_failed || failure.metadata().contains_key(crate::REASON_KEY) {
        return failure;
    }
    status(
        tonic::Code::Unavailable,
        "cluster.leader_unreachable",
        format!(
            "the leader at {leader} stopped answering mid-call ({}: {}); the outcome is \
             unknown: resubmit the same signed event (it is idempotent)",
            failure.code(),
            failure.message()
        ),
    )
}

fn no_leader(leader: Option<String>) -> Status {
    let mut s = status(
        tonic::Code::Unavailable,
        "cluster.no_leader",
        "no leader with a quorum right now; retry shortly",
    );
    if let Some(addr) = leader
        && let Ok(v) = addr.parse()
    {
        s.metadata_mut().insert(LEADER_KEY, v);
    }
    s
}

fn submit_error(s: &Status) -> pb::SubmitError {
    pb::SubmitError {
        code: s.code() as i32,
        reason: s
            .metadata()
            .get(crate::REASON_KEY)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("unknown")
            .to_owned(),
        message: s.message().to_owned(),
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]

    use super::*;

    fn reason(s: &Status) -> Option<&str> {
        s.metadata()
            .get(crate::REASON_KEY)
            .and_then(|v| v.to_str().ok())
    }

    /// A forwarded call cut by the leader's death says "unavailable, resubmit"; the leader's
    /// own answers, and codes a cut call does not produce, reach the client unchanged.
    #[test]
    fn a_forwarded_call_that_breaks_is_unavailable_and_says_to_resubmit() {
        for cut in [
            Status::unknown("transport error"),
            Status::cancelled("operation was canceled"),
            Status::unavailable("connection reset"),
        ] {
            let seen = forwarding_failed(cut, "127.0.0.1:7001");
            assert_eq!(seen.code(), tonic::Code::Unavailable);
            assert_eq!(reason(&seen), Some("cluster.leader_unreachable"));
            assert!(
                seen.message().contains("127.0.0.1:7001"),
                "{}",
                seen.message()
            );
            assert!(seen.message().contains("resubmit"), "{}", seen.message());
        }
        let refused = status(
            tonic::Code::Unavailable,
            "cluster.raft",
            "the outcome is unknown",
        );
        let seen = forwarding_failed(refused, "127.0.0.1:7001");
        assert_eq!(reason(&seen), Some("cluster.raft"));
        let too_big = Status::resource_exhausted("message too large");
        let seen = forwarding_failed(too_big, "127.0.0.1:7001");
        assert_eq!(seen.code(), tonic::Code::ResourceExhausted);
        assert_eq!(reason(&seen), None);
    }
}

//! # wasteledger-server
//!
//! The public gRPC API of a node (`LedgerService`, `proto/wasteledger/v1/ledger_service.proto`).
//! Any node serves: a write sent to a follower is forwarded to the leader; reads come from the
//! node's own applied state. Every refusal is a status whose code follows the documented mapping
//! and whose `wasteledger-reason` metadata carries the stable reason code.

use std::sync::Arc;
use std::time::Duration;

use tonic::{Request, Response, Status};
use wasteledger_core::ledger::LedgerView;
use wasteledger_core::pb;
use wasteledger_core::proof::build_custody_proof;
use wasteledger_core::tracking::Tracking;
use wasteledger_node::node::{Node, WriteError};
use wasteledger_node::types::LedgerResponse;

/// Generated service code (messages are `wasteledger_core::pb`).
#[allow(missing_docs, unreachable_pub, clippy::all)]
pub mod service {
    tonic::include_proto!("wasteledger.v1");
}

pub mod demo;
pub mod runtime;

pub use service::ledger_service_client::LedgerServiceClient;
pub use service::ledger_service_server::LedgerServiceServer;

/// Largest request a client may send: one event body (64 KiB) with signatures and framing.
pub const MAX_REQUEST_BYTES: usize = 256 * 1024;
/// Largest response: custody proofs of long manifests.
pub const MAX_RESPONSE_BYTES: usize = 16 * 1024 * 1024;

/// Metadata key carrying the stable reason code of a refusal.
pub const REASON_KEY: &str = "wasteledger-reason";
/// Metadata key carrying the leader's API address when this node is not the leader.
pub const LEADER_KEY: &str = "wasteledger-leader";

fn status(code: tonic::Code, reason: &str, message: impl Into<String>) -> Status {
    let mut s = Status::new(code, message);
    if let Ok(v) = reason.parse() {
        s.metadata_mut().insert(REASON_KEY, v);
    }
    s
}

/// The gRPC code for a rejection class (`RejectionKind::name`), following the documented
/// mapping.
pub fn code_for_kind(kind: &str) -> tonic::Code {
    use wasteledger_core::ledger::RejectionKind;
    match RejectionKind::from_name(kind) {
        Some(RejectionKind::Malformed) | None => tonic::Code::InvalidArgument,
        Some(RejectionKind::Unauthenticated) => tonic::Code::Unauthenticated,
        Some(RejectionKind::PermissionDenied) => tonic::Code::PermissionDenied,
        Some(RejectionKind::FailedPrecondition) => tonic::Code::FailedPrecondition,
        Some(RejectionKind::AlreadyExists) | Some(RejectionKind::Duplicate) => {
            tonic::Code::AlreadyExists
        }
        Some(RejectionKind::TooLarge) => tonic::Code::ResourceExhausted,
    }
}

/// The LedgerService of one node.
pub struct LedgerApi {
    node: Arc<Node>,
}

impl LedgerApi {
    /// Serves `node`.
    pub fn new(node: Arc<Node>) -> LedgerApi {
        LedgerApi { node }
    }

    /// The tonic service with message limits applied.
    pub fn into_service(self) -> LedgerServiceServer<LedgerApi> {
        LedgerServiceServer::new(self)
            .max_decoding_message_size(MAX_REQUEST_BYTES)
            .max_encoding_message_size(MAX_RESPONSE_BYTES)
    }

    fn receipt_for_index(&self, index: u64) -> Result<pb::Receipt, Status> {
        let entry = self
            .node
            .state_machine
            .with_store(|s| wasteledger_core::proof::ProofSource::entry(s, index))
            .map_err(|e| Status::internal(e.to_string()))?
            .ok_or_else(|| Status::internal(format!("entry {index} missing")))?;
        let decoded = wasteledger_core::entry::LedgerEntry::decode(&entry)
            .map_err(|e| Status::internal(e.to_string()))?;
        let ledger_id = self.node.state_machine.genesis().ledger_id;
        Ok(pb::Receipt {
            index,
            event_hash: wasteledger_core::envelope::event_hash(&ledger_id, &decoded.body)
                .0
                .to_vec(),
            leaf_hash: wasteledger_core::entry::leaf_hash(&entry).0.to_vec(),
            tree_size: index + 1,
            checkpoint: None,
        })
    }

    async fn forward(
        &self,
        leader_api: &str,
        event: pb::SignedEvent,
    ) -> Result<Response<pb::Receipt>, Status> {
        let endpoint = tonic::transport::Endpoint::from_shared(format!("http://{leader_api}"))
            .map_err(|e| Status::internal(e.to_string()))?
            .connect_timeout(Duration::from_secs(2))
            .timeout(Duration::from_secs(30));
        let channel = endpoint.connect().await.map_err(|e| {
            status(
                tonic::Code::Unavailable,
                "cluster.leader_unreachable",
                format!("leader at {leader_api} unreachable: {e}"),
            )
        })?;
        let mut client =
            LedgerServiceClient::new(channel).max_decoding_message_size(MAX_RESPONSE_BYTES);
        let mut request = Request::new(event);
        // Mark forwarded requests so a confused follower never forwards in a loop.
        if let Ok(v) = "1".parse() {
            request.metadata_mut().insert("wasteledger-forwarded", v);
        }
        client.submit(request).await
    }
}

#[tonic::async_trait]
impl service::ledger_service_server::LedgerService for LedgerApi {
    async fn submit(
        &self,
        request: Request<pb::SignedEvent>,
    ) -> Result<Response<pb::Receipt>, Status> {
        let forwarded = request.metadata().contains_key("wasteledger-forwarded");
        let event = request.into_inner();
        match self.node.submit(event.clone()).await {
            Ok(LedgerResponse::Accepted {
                index,
                event_hash,
                leaf_hash,
                tree_size,
            }) => Ok(Response::new(pb::Receipt {
                index,
                event_hash: event_hash.to_vec(),
                leaf_hash: leaf_hash.to_vec(),
                tree_size,
                checkpoint: None,
            })),
            Ok(LedgerResponse::Rejected {
                duplicate_of: Some(index),
                ..
            }) => self.receipt_for_index(index).map(Response::new),
            Ok(LedgerResponse::Rejected {
                code,
                kind,
                message,
                ..
            }) => Err(status(code_for_kind(&kind), &code, message)),
            Ok(other) => Err(Status::internal(format!(
                "unexpected state machine answer {other:?}"
            ))),
            Err(WriteError::Rejected {
                code,
                kind,
                message,
            }) => {
                if code == "ledger.already_recorded" {
                    let ledger_id = self.node.state_machine.genesis().ledger_id;
                    let hash = wasteledger_core::envelope::event_hash(&ledger_id, &event.body);
                    let index = self
                        .node
                        .state_machine
                        .with_store(|s| s.event_index(&hash))
                        .map_err(|e| Status::internal(e.to_string()))?;
                    if let Some(index) = index {
                        return self.receipt_for_index(index).map(Response::new);
                    }
                }
                Err(status(code_for_kind(&kind), &code, message))
            }
            Err(WriteError::NotLeader {
                leader: Some((_, addr)),
            }) if !forwarded => self.forward(&addr.api_addr, event).await,
            Err(WriteError::NotLeader { leader }) => {
                let mut s = status(
                    tonic::Code::Unavailable,
                    "cluster.no_leader",
                    "no leader with a quorum right now; retry shortly",
                );
                if let Some((_, addr)) = leader
                    && let Ok(v) = addr.api_addr.parse()
                {
                    s.metadata_mut().insert(LEADER_KEY, v);
                }
                Err(s)
            }
            Err(WriteError::Raft(m)) => Err(status(tonic::Code::Unavailable, "cluster.raft", m)),
        }
    }

    async fn submit_batch(
        &self,
        _request: Request<pb::SubmitBatchRequest>,
    ) -> Result<Response<pb::SubmitBatchResponse>, Status> {
        Err(Status::unimplemented("SubmitBatch is not implemented yet"))
    }

    async fn list_manifests(
        &self,
        _request: Request<pb::ListManifestsRequest>,
    ) -> Result<Response<pb::ListManifestsResponse>, Status> {
        Err(Status::unimplemented(
            "ListManifests is not implemented yet",
        ))
    }

    async fn get_party(
        &self,
        _request: Request<pb::GetPartyRequest>,
    ) -> Result<Response<pb::PartyState>, Status> {
        Err(Status::unimplemented("GetParty is not implemented yet"))
    }

    async fn list_parties(
        &self,
        _request: Request<pb::ListPartiesRequest>,
    ) -> Result<Response<pb::ListPartiesResponse>, Status> {
        Err(Status::unimplemented("ListParties is not implemented yet"))
    }

    async fn get_inclusion_proof(
        &self,
        _request: Request<pb::GetInclusionProofRequest>,
    ) -> Result<Response<pb::InclusionProof>, Status> {
        Err(Status::unimplemented(
            "GetInclusionProof is not implemented yet",
        ))
    }

    async fn get_consistency_proof(
        &self,
        _request: Request<pb::GetConsistencyProofRequest>,
    ) -> Result<Response<pb::ConsistencyProof>, Status> {
        Err(Status::unimplemented(
            "GetConsistencyProof is not implemented yet",
        ))
    }

    type WatchEventsStream =
        std::pin::Pin<Box<dyn tokio_stream::Stream<Item = Result<pb::LedgerEvent, Status>> + Send>>;

    async fn watch_events(
        &self,
        _request: Request<pb::WatchEventsRequest>,
    ) -> Result<Response<Self::WatchEventsStream>, Status> {
        Err(Status::unimplemented("WatchEvents is not implemented yet"))
    }

    async fn get_ledger_head(
        &self,
        _request: Request<pb::GetLedgerHeadRequest>,
    ) -> Result<Response<pb::LedgerHead>, Status> {
        let (size, root, map_root) = self
            .node
            .ledger_head()
            .map_err(|e| Status::internal(e.to_string()))?;
        let chain_head = self
            .node
            .state_machine
            .with_store(|s| s.chain_head())
            .map_err(|e| Status::internal(e.to_string()))?;
        let view = self.node.cluster_view();
        Ok(Response::new(pb::LedgerHead {
            node_id: view.id,
            size,
            root: root.0.to_vec(),
            map_root: map_root.0.to_vec(),
            chain_head: chain_head.0.to_vec(),
            leader_id: view.leader.unwrap_or(0),
            leader_api: view.leader_api.unwrap_or_default(),
            term: view.term,
            last_applied_log: view.last_applied_log.unwrap_or(0),
        }))
    }

    async fn get_manifest(
        &self,
        request: Request<pb::GetManifestRequest>,
    ) -> Result<Response<pb::GetManifestResponse>, Status> {
        let tracking = tracking(request.into_inner().tracking_number)?;
        let state = self
            .node
            .state_machine
            .with_store(|s| s.manifest(&tracking))
            .map_err(|e| Status::internal(e.to_string()))?;
        state
            .map(|m| {
                Response::new(pb::GetManifestResponse {
                    state: Some(m.to_pb()),
                    events: Vec::new(),
                })
            })
            .ok_or_else(|| {
                status(
                    tonic::Code::NotFound,
                    "query.unknown_manifest",
                    format!("manifest {tracking} not found"),
                )
            })
    }

    async fn get_checkpoint(
        &self,
        _request: Request<pb::GetCheckpointRequest>,
    ) -> Result<Response<pb::SignedNote>, Status> {
        let note = self
            .node
            .state_machine
            .with_store(|s| s.published_checkpoint())
            .map_err(|e| Status::internal(e.to_string()))?
            .map_err(|e| Status::internal(e.to_string()))?;
        note.map(|n| {
            Response::new(pb::SignedNote {
                size: n.checkpoint.size,
                note: n.to_note(),
            })
        })
        .ok_or_else(|| {
            status(
                tonic::Code::Unavailable,
                "checkpoint.none_published",
                "no checkpoint has met the trust policy yet",
            )
        })
    }

    async fn get_custody_proof(
        &self,
        request: Request<pb::GetCustodyProofRequest>,
    ) -> Result<Response<pb::CustodyProof>, Status> {
        let tracking = tracking(request.into_inner().tracking_number)?;
        let result = self
            .node
            .state_machine
            .with_store(|s| {
                let note = s
                    .published_checkpoint()
                    .map_err(|e| Status::internal(e.to_string()))?
                    .ok_or_else(|| {
                        status(
                            tonic::Code::Unavailable,
                            "checkpoint.none_published",
                            "no checkpoint has met the trust policy yet",
                        )
                    })?;
                build_custody_proof(s, &tracking, &note).map_err(|e| {
                    status(
                        tonic::Code::NotFound,
                        "query.unknown_manifest",
                        e.to_string(),
                    )
                })
            })
            .map_err(|e| Status::internal(e.to_string()))?;
        result.map(Response::new)
    }
}

fn tracking(t: Option<pb::TrackingNumber>) -> Result<Tracking, Status> {
    let t = t.ok_or_else(|| {
        status(
            tonic::Code::InvalidArgument,
            "query.tracking_number",
            "tracking_number is required",
        )
    })?;
    Tracking::from_pb(&t).map_err(|e| {
        status(
            tonic::Code::InvalidArgument,
            "query.tracking_number",
            e.to_string(),
        )
    })
}

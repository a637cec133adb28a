//! # wasteledger-server
//!
//! The public gRPC API of a node (`LedgerService`, `proto/wasteledger/v1/ledger_service.proto`).
//! Any node serves: a write sent to a follower is forwarded to the leader; reads come from the
//! node's own applied state. Every refusal is a status whose code follows the documented mapping
//! and whose `wasteledger-reason` metadata carries the stable reason code.

use std::sync::Arc;

use tokio::sync::watch;
use tonic::{Request, Response, Status};
use wasteledger_core::ledger::LedgerView;
use wasteledger_core::pb;
use wasteledger_node::node::Node;

/// Generated service code (messages are `wasteledger_core::pb`).
#[allow(missing_docs, unreachable_pub, clippy::all)]
pub mod service {
    tonic::include_proto!("wasteledger.v1");
}

pub mod demo;
mod events;
pub mod limits;
mod proofs;
mod read;
pub mod runtime;
mod submit;

pub use read::{DEFAULT_PAGE_SIZE, MAX_PAGE_SIZE, SCAN_BUDGET};
pub use submit::MAX_BATCH;

pub use service::ledger_service_client::LedgerServiceClient;
pub use service::ledger_service_server::LedgerServiceServer;

/// Largest request a client may send: a full SubmitBatch of events near the 64 KiB body
/// limit would not fit, but [`MAX_BATCH`] typical events (a few KiB each) do. Larger requests
/// are refused with RESOURCE_EXHAUSTED before they are decoded.
pub const MAX_REQUEST_BYTES: usize = 4 * 1024 * 1024;
/// Largest response: custody proofs of long manifests.
pub const MAX_RESPONSE_BYTES: usize = 16 * 1024 * 1024;

/// Metadata key carrying the stable reason code of a refusal.
pub const REASON_KEY: &str = "wasteledger-reason";
/// Metadata key carrying the leader's API address when this node is not the leader.
pub const LEADER_KEY: &str = "wasteledger-leader";

/// An internal failure (a node-side fault, never the caller's): INTERNAL with a reason code.
pub(crate) fn internal(message: impl Into<String>) -> Status {
    status(tonic::Code::Internal, "node.internal", message)
}

pub(crate) fn status(code: tonic::Code, reason: &str, message: impl Into<String>) -> Status {
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
    /// Turns true when the node is stopping, so open WatchEvents streams end and a graceful
    /// shutdown does not wait on them.
    stopping: watch::Receiver<bool>,
    /// Keeps the default `stopping` channel open when no shutdown signal was given.
    _never_stops: Option<watch::Sender<bool>>,
}

impl LedgerApi {
    /// Serves `node`.
    pub fn new(node: Arc<Node>) -> LedgerApi {
        let (tx, rx) = watch::channel(false);
        LedgerApi {
            node,
            stopping: rx,
            _never_stops: Some(tx),
        }
    }

    /// Ends open streams when `stopping` turns true.
    pub fn with_shutdown(mut self, stopping: watch::Receiver<bool>) -> LedgerApi {
        self.stopping = stopping;
        self._never_stops = None;
        self
    }

    /// The tonic service with message limits applied.
    pub fn into_service(self) -> LedgerServiceServer<LedgerApi> {
        LedgerServiceServer::new(self)
            .max_decoding_message_size(MAX_REQUEST_BYTES)
            .max_encoding_message_size(MAX_RESPONSE_BYTES)
    }
}

#[tonic::async_trait]
impl service::ledger_service_server::LedgerService for LedgerApi {
    async fn submit(
        &self,
        request: Request<pb::SignedEvent>,
    ) -> Result<Response<pb::Receipt>, Status> {
        let call = submit::CallInfo::of(&request);
        self.submit_one(request.into_inner(), &call)
            .await
            .map(Response::new)
    }

    async fn submit_batch(
        &self,
        request: Request<pb::SubmitBatchRequest>,
    ) -> Result<Response<pb::SubmitBatchResponse>, Status> {
        let call = submit::CallInfo::of(&request);
        self.submit_batch(request.into_inner(), &call)
            .await
            .map(Response::new)
    }

    async fn get_ledger_head(
        &self,
        _request: Request<pb::GetLedgerHeadRequest>,
    ) -> Result<Response<pb::LedgerHead>, Status> {
        let view = self.node.cluster_view();
        let head = self.read_store(|s| {
            let (root, map_root) = s.roots();
            Ok(pb::LedgerHead {
                node_id: view.id,
                size: s.size(),
                root: root.0.to_vec(),
                map_root: map_root.0.to_vec(),
                chain_head: s.chain_head().0.to_vec(),
                leader_id: view.leader.unwrap_or(0),
                leader_api: view.leader_api.clone().unwrap_or_default(),
                term: view.term,
                last_applied_log: view.last_applied_log.unwrap_or(0),
            })
        })?;
        Ok(Response::new(head))
    }

    async fn get_manifest(
        &self,
        request: Request<pb::GetManifestRequest>,
    ) -> Result<Response<pb::GetManifestResponse>, Status> {
        let request = request.into_inner();
        let tracking = read::tracking(request.tracking_number)?;
        self.prepare_read(request.consistency).await?;
        let ledger_id = self.node.state_machine.genesis().ledger_id;
        let response = self.read_store(|s| {
            let state = s
                .manifest_state(&tracking.to_string())
                .map_err(|e| internal(e.to_string()))?
                .ok_or_else(|| {
                    status(
                        tonic::Code::NotFound,
                        "query.unknown_manifest",
                        format!("manifest {tracking} not found on this node"),
                    )
                })?;
            let events = if request.include_events {
                state
                    .events
                    .iter()
                    .map(|e| read::ledger_event(&ledger_id, &read::entry_at(s, e.index)?))
                    .collect::<Result<Vec<_>, Status>>()?
            } else {
                Vec::new()
            };
            Ok(pb::GetManifestResponse {
                state: Some(state),
                events,
            })
        })?;
        Ok(Response::new(response))
    }

    async fn list_manifests(
        &self,
        request: Request<pb::ListManifestsRequest>,
    ) -> Result<Response<pb::ListManifestsResponse>, Status> {
        let request = request.into_inner();
        let filter = read::ManifestFilter::from_request(&request)?;
        let page_size = read::page_size(request.page_size)?;
        let after = read::decode_token(&request.page_token)?;
        self.prepare_read(request.consistency).await?;
        let (manifests, next_page_token) =
            self.read_store(|s| read::list_manifests(s, &filter, after, page_size))?;
        Ok(Response::new(pb::ListManifestsResponse {
            manifests,
            next_page_token,
        }))
    }

    async fn get_party(
        &self,
        request: Request<pb::GetPartyRequest>,
    ) -> Result<Response<pb::PartyState>, Status> {
        let request = request.into_inner();
        if request.registry_id.is_empty() {
            return Err(status(
                tonic::Code::InvalidArgument,
                "query.registry_id",
                "registry_id is required",
            ));
        }
        self.prepare_read(request.consistency).await?;
        let party = self.read_store(|s| {
            s.party_state(&request.registry_id)
                .map_err(|e| internal(e.to_string()))
        })?;
        party.map(Response::new).ok_or_else(|| {
            status(
                tonic::Code::NotFound,
                "query.unknown_party",
                format!("party {} is not registered", request.registry_id),
            )
        })
    }

    async fn list_parties(
        &self,
        request: Request<pb::ListPartiesRequest>,
    ) -> Result<Response<pb::ListPartiesResponse>, Status> {
        let request = request.into_inner();
        let role = match pb::Role::try_from(request.role) {
            Ok(pb::Role::Unspecified) => None,
            Ok(role) => Some(role),
            Err(_) => {
                return Err(status(
                    tonic::Code::InvalidArgument,
                    "query.role",
                    format!("unknown role {}", request.role),
                ));
            }
        };
        let page_size = read::page_size(request.page_size)?;
        let after = read::decode_token(&request.page_token)?;
        self.prepare_read(request.consistency).await?;
        let (parties, next_page_token) =
            self.read_store(|s| read::list_parties(s, role, after, page_size))?;
        Ok(Response::new(pb::ListPartiesResponse {
            parties,
            next_page_token,
        }))
    }

    async fn get_checkpoint(
        &self,
        _request: Request<pb::GetCheckpointRequest>,
    ) -> Result<Response<pb::SignedNote>, Status> {
        let checkpoint = self.read_store(proofs::published)?;
        checkpoint
            .map(|c| Response::new(proofs::note(&c)))
            .ok_or_else(proofs::none_published)
    }

    async fn get_custody_proof(
        &self,
        request: Request<pb::GetCustodyProofRequest>,
    ) -> Result<Response<pb::CustodyProof>, Status> {
        let request = request.into_inner();
        let tracking = read::tracking(request.tracking_number)?;
        self.prepare_read(request.consistency).await?;
        self.read_store(|s| proofs::custody_proof(s, &tracking))
            .map(Response::new)
    }

    async fn get_inclusion_proof(
        &self,
        request: Request<pb::GetInclusionProofRequest>,
    ) -> Result<Response<pb::InclusionProof>, Status> {
        let request = request.into_inner();
        self.read_store(|s| proofs::inclusion_proof(s, request.index, request.tree_size))
            .map(Response::new)
    }

    async fn get_consistency_proof(
        &self,
        request: Request<pb::GetConsistencyProofRequest>,
    ) -> Result<Response<pb::ConsistencyProof>, Status> {
        let request = request.into_inner();
        self.read_store(|s| proofs::consistency_proof(s, request.old_size, request.new_size))
            .map(Response::new)
    }

    type WatchEventsStream =
        tokio_stream::wrappers::ReceiverStream<Result<pb::LedgerEvent, Status>>;

    async fn watch_events(
        &self,
        request: Request<pb::WatchEventsRequest>,
    ) -> Result<Response<Self::WatchEventsStream>, Status> {
        let request = request.into_inner();
        let filter = events::WatchFilter::from_request(&request);
        let rx = events::start(
            self.node.clone(),
            self.node.state_machine.genesis().ledger_id,
            request.from_index,
            filter,
            self.stopping.clone(),
        );
        Ok(Response::new(tokio_stream::wrappers::ReceiverStream::new(
            rx,
        )))
    }
}

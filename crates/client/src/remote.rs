//! The `LedgerService` client: connects with a clear "unreachable" error, rides out leader
//! elections on writes, pages through list results, and turns refusals into their stable reason
//! codes so the command line can say what went wrong.

use std::time::{Duration, Instant};

use tonic::transport::{Channel, Endpoint};
use wasteledger_core::pb;
use wasteledger_core::tracking::Tracking;
use wasteledger_server::{LedgerServiceClient, MAX_RESPONSE_BYTES, REASON_KEY};

/// Environment variable naming the node to talk to (`HOST:PORT`).
pub const NODE_ENV: &str = "WASTELEDGER_NODE";
/// Most events in one `SubmitBatch` call (the API's limit).
pub const MAX_BATCH: usize = 256;
/// The node used when none is given: node 1 of the demo network in `config/`.
pub const DEFAULT_NODE: &str = "127.0.0.1:7201";

/// Why a call to a node failed.
#[derive(Debug, thiserror::Error)]
pub enum RemoteError {
    /// The address does not parse.
    #[error("node address {0:?} is not HOST:PORT")]
    Address(String),
    /// No connection could be made.
    #[error(
        "cannot reach a wasteledger node at {addr} ({detail}); is it running? Pass --node HOST:PORT or set WASTELEDGER_NODE"
    )]
    Unreachable {
        /// The address tried.
        addr: String,
        /// What the transport said.
        detail: String,
    },
    /// The node answered with a refusal.
    #[error("{message} [{reason}, {code:?}]")]
    Refused {
        /// gRPC code.
        code: tonic::Code,
        /// Stable reason code (`custody.stale_chain`, …), or the code's name when the node gave
        /// none.
        reason: String,
        /// The node's message.
        message: String,
    },
}

impl RemoteError {
    fn from_status(s: tonic::Status, addr: &str) -> RemoteError {
        // A transport failure mid-call surfaces as UNAVAILABLE without a reason code.
        let reason = s
            .metadata()
            .get(REASON_KEY)
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned);
        match reason {
            None if s.code() == tonic::Code::Unavailable => RemoteError::Unreachable {
                addr: addr.to_owned(),
                detail: s.message().to_owned(),
            },
            reason => RemoteError::Refused {
                code: s.code(),
                reason: reason.unwrap_or_else(|| format!("{:?}", s.code()).to_lowercase()),
                message: s.message().to_owned(),
            },
        }
    }

    /// The stable reason code of a refusal.
    pub fn reason(&self) -> Option<&str> {
        match self {
            RemoteError::Refused { reason, .. } => Some(reason),
            _ => None,
        }
    }

    /// A hint on what to do next, for the refusals people meet most.
    pub fn hint(&self) -> Option<&'static str> {
        match self {
            RemoteError::Refused { reason, code, .. } => Some(match reason.as_str() {
                "custody.stale_chain" => {
                    "another event was recorded on this manifest since you read it: run `wasteledger manifest show` and prepare the event again"
                }
                "query.unknown_manifest" => {
                    "check the tracking number (SCHEME:NUMBER) with `wasteledger manifest list`"
                }
                "checkpoint.none_published" => {
                    "the nodes have not cosigned a checkpoint yet: retry in a few seconds"
                }
                "cluster.no_leader" | "cluster.raft" => {
                    "the cluster has no quorum right now: retry shortly, or check `wasteledger` nodes are running"
                }
                r if r.starts_with("signature.")
                    || r.starts_with("envelope.")
                    || *code == tonic::Code::Unauthenticated =>
                {
                    "sign with the key registered for the party (see `wasteledger key show`), on the network of the --genesis given"
                }
                _ if *code == tonic::Code::Unimplemented => {
                    "this node's version does not serve that call yet"
                }
                _ => return None,
            }),
            RemoteError::Unreachable { .. } | RemoteError::Address(_) => None,
        }
    }
}

/// A connection to one node.
pub struct Remote {
    client: LedgerServiceClient<Channel>,
    addr: String,
}

impl Remote {
    /// Connects to `addr` (`HOST:PORT` or a URL).
    pub async fn connect(addr: &str) -> Result<Remote, RemoteError> {
        let url = if addr.contains("://") {
            addr.to_owned()
        } else {
            format!("http://{addr}")
        };
        let endpoint = Endpoint::from_shared(url)
            .map_err(|_| RemoteError::Address(addr.to_owned()))?
            .connect_timeout(Duration::from_secs(3))
            .timeout(Duration::from_secs(30));
        let channel = endpoint
            .connect()
            .await
            .map_err(|e| RemoteError::Unreachable {
                addr: addr.to_owned(),
                detail: source_chain(&e),
            })?;
        Ok(Remote {
            client: LedgerServiceClient::new(channel).max_decoding_message_size(MAX_RESPONSE_BYTES),
            addr: addr.to_owned(),
        })
    }

    fn err(&self, s: tonic::Status) -> RemoteError {
        RemoteError::from_status(s, &self.addr)
    }

    /// Submits a signed event; while the cluster elects a leader (UNAVAILABLE with a reason),
    /// retries for up to 15 s. An identical resubmission returns the original receipt, so the
    /// retry never records an event twice.
    pub async fn submit(&mut self, event: &pb::SignedEvent) -> Result<pb::Receipt, RemoteError> {
        let deadline = Instant::now() + Duration::from_secs(15);
        loop {
            match self.client.submit(event.clone()).await {
                Ok(r) => return Ok(r.into_inner()),
                Err(s)
                    if s.code() == tonic::Code::Unavailable
                        && s.metadata().contains_key(REASON_KEY)
                        && Instant::now() < deadline =>
                {
                    tokio::time::sleep(Duration::from_millis(300)).await;
                }
                Err(s) => return Err(self.err(s)),
            }
        }
    }

    /// Submits up to [`MAX_BATCH`] events in one call; each is decided on its own and the
    /// answer has one result per event, in order (a refusal never undoes earlier items).
    pub async fn submit_batch(
        &mut self,
        events: Vec<pb::SignedEvent>,
    ) -> Result<Vec<Result<pb::Receipt, RemoteError>>, RemoteError> {
        let count = events.len();
        let request = pb::SubmitBatchRequest { events };
        let deadline = Instant::now() + Duration::from_secs(15);
        let response = loop {
            match self.client.submit_batch(request.clone()).await {
                Ok(r) => break r.into_inner(),
                Err(s)
                    if s.code() == tonic::Code::Unavailable
                        && s.metadata().contains_key(REASON_KEY)
                        && Instant::now() < deadline =>
                {
                    tokio::time::sleep(Duration::from_millis(300)).await;
                }
                Err(s) => return Err(self.err(s)),
            }
        };
        if response.results.len() != count {
            return Err(RemoteError::Refused {
                code: tonic::Code::Internal,
                reason: "query.batch_mismatch".into(),
                message: format!(
                    "the node answered {} results for {count} events",
                    response.results.len()
                ),
            });
        }
        Ok(response
            .results
            .into_iter()
            .map(|r| match r.result {
                Some(pb::submit_result::Result::Accepted(receipt)) => Ok(receipt),
                Some(pb::submit_result::Result::Rejected(e)) => Err(RemoteError::Refused {
                    code: tonic::Code::from(e.code),
                    reason: e.reason,
                    message: e.message,
                }),
                None => Err(RemoteError::Refused {
                    code: tonic::Code::Internal,
                    reason: "query.empty_result".into(),
                    message: "the node answered an empty result".into(),
                }),
            })
            .collect())
    }

    /// A manifest's current state (and its events when `events`).
    pub async fn manifest(
        &mut self,
        tracking: &Tracking,
        events: bool,
    ) -> Result<pb::GetManifestResponse, RemoteError> {
        let request = pb::GetManifestRequest {
            tracking_number: Some(tracking.to_pb()),
            include_events: events,
            consistency: pb::ReadConsistency::Linearizable as i32,
        };
        match self.client.get_manifest(request).await {
            Ok(r) => Ok(r.into_inner()),
            Err(s) => Err(self.err(s)),
        }
    }

    /// The state of a manifest, which must exist.
    pub async fn manifest_state(
        &mut self,
        tracking: &Tracking,
    ) -> Result<pb::ManifestState, RemoteError> {
        self.manifest(tracking, false)
            .await?
            .state
            .ok_or_else(|| RemoteError::Refused {
                code: tonic::Code::NotFound,
                reason: "query.unknown_manifest".into(),
                message: format!("manifest {tracking} not found"),
            })
    }

    /// Every manifest matching `request`, following `next_page_token` to the end. `on_page` is
    /// told the running count after each page. Stops with an error if the server hands back a
    /// token it already gave (a looping server must not loop the client).
    pub async fn list_all(
        &mut self,
        mut request: pb::ListManifestsRequest,
        mut on_page: impl FnMut(usize),
    ) -> Result<Vec<pb::ManifestState>, RemoteError> {
        let mut all = Vec::new();
        let mut seen = std::collections::BTreeSet::new();
        loop {
            let page = match self.client.list_manifests(request.clone()).await {
                Ok(r) => r.into_inner(),
                Err(s) => return Err(self.err(s)),
            };
            all.extend(page.manifests);
            on_page(all.len());
            if page.next_page_token.is_empty() {
                return Ok(all);
            }
            if !seen.insert(page.next_page_token.clone()) {
                return Err(RemoteError::Refused {
                    code: tonic::Code::Internal,
                    reason: "query.page_loop".into(),
                    message: "the node returned a page token it had already given".into(),
                });
            }
            request.page_token = page.next_page_token;
        }
    }

    /// A party's registry record.
    pub async fn party(&mut self, registry_id: &str) -> Result<pb::PartyState, RemoteError> {
        let request = pb::GetPartyRequest {
            registry_id: registry_id.to_owned(),
            consistency: pb::ReadConsistency::Linearizable as i32,
        };
        match self.client.get_party(request).await {
            Ok(r) => Ok(r.into_inner()),
            Err(s) => Err(self.err(s)),
        }
    }

    /// The custody proof of a manifest against the latest published checkpoint.
    pub async fn custody_proof(
        &mut self,
        tracking: &Tracking,
    ) -> Result<pb::CustodyProof, RemoteError> {
        let request = pb::GetCustodyProofRequest {
            tracking_number: Some(tracking.to_pb()),
            consistency: pb::ReadConsistency::Linearizable as i32,
        };
        match self.client.get_custody_proof(request).await {
            Ok(r) => Ok(r.into_inner()),
            Err(s) => Err(self.err(s)),
        }
    }

    /// Applied ledger entries from `request.from_index` on, then new ones as they are applied.
    /// Resume after a disconnect by asking again from the last index received + 1.
    pub async fn watch(
        &mut self,
        request: pb::WatchEventsRequest,
    ) -> Result<tonic::Streaming<pb::LedgerEvent>, RemoteError> {
        match self.client.watch_events(request).await {
            Ok(r) => Ok(r.into_inner()),
            Err(s) => Err(self.err(s)),
        }
    }

    /// The next event of a watch stream (`None` when the node ends it).
    pub async fn next_event(
        &self,
        stream: &mut tonic::Streaming<pb::LedgerEvent>,
    ) -> Result<Option<pb::LedgerEvent>, RemoteError> {
        stream.message().await.map_err(|s| self.err(s))
    }

    /// The node's ledger head.
    pub async fn head(&mut self) -> Result<pb::LedgerHead, RemoteError> {
        match self
            .client
            .get_ledger_head(pb::GetLedgerHeadRequest {})
            .await
        {
            Ok(r) => Ok(r.into_inner()),
            Err(s) => Err(self.err(s)),
        }
    }
}

fn source_chain(e: &dyn std::error::Error) -> String {
    let mut text = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        text.push_str(": ");
        text.push_str(&s.to_string());
        source = s.source();
    }
    text
}

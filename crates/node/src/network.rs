//! The node-to-node Raft transport over tonic (`proto/wasteledger/v1/raft.proto`).
//!
//! * Client side: [`Network`] is openraft's [`RaftNetworkFactory`]. It keeps one lazily
//!   connected tonic [`Channel`] per peer and hands out [`PeerClient`]s, which implement
//!   [`RaftNetworkV2`] with `SnapshotData = `[`SnapshotFile`].
//! * Server side: [`RaftServiceImpl`] implements the generated `RaftService` and forwards every
//!   call to the local [`LedgerRaft`]; build it with [`raft_service`].
//!
//! # Wire format
//!
//! Unary payloads ([`RaftPayload::data`]) are [`types::encode`](crate::types::encode)
//! (`WIRE_VERSION ‖ postcard`) of openraft's own request types. Replies encode the whole
//! `Result` of the local Raft call (for example `Result<AppendEntriesResponse, RaftError>`), so a
//! failure on the remote node reaches the caller with its message and becomes an
//! [`RPCError::Network`] there instead of vanishing.
//!
//! A snapshot travels client-streamed as [`SnapshotChunk`]s: the first chunk carries
//! `meta = encode(&(vote, snapshot_meta))` (and possibly data), every chunk carries the next
//! piece of the snapshot file in order. The reply is the encoded
//! `Result<SnapshotResponse, Fatal>`, which holds the receiver's vote.
//!
//! # Message size limits
//!
//! tonic refuses to decode a message over 4 MiB by default. A full AppendEntries batch is far
//! bigger, and an over-limit message fails the RPC on every retry, so replication would stall.
//! Both ends therefore set [`MAX_RAFT_MESSAGE_BYTES`] explicitly for decoding and encoding; see
//! its documentation for the arithmetic, and call [`check_raft_config`] on the openraft
//! [`Config`](openraft::Config) a node starts with. Should a batch still exceed the limit (a
//! `max_payload_entries` above [`MAX_PAYLOAD_ENTRIES`]), the client sends the longest prefix
//! that fits and reports `PartialSuccess`, which openraft supports, so replication slows down
//! instead of stopping. Stream errors are never swallowed: they are returned to the sender as a
//! [`Status`] and logged.
//!
//! # Deadlines
//!
//! openraft's `hard_ttl` for replication is the heartbeat interval (50 ms by default) and
//! `soft_ttl` is three quarters of it. A follower answers AppendEntries only after the entries
//! are fsynced, so that is far too tight for a real disk. Unary calls therefore get the
//! deadline `max(option.soft_ttl(), NetworkConfig::min_rpc_timeout)` (2 s by default). openraft
//! still enforces its own, shorter timeouts on heartbeats and votes. Snapshots get **no**
//! deadline: their `hard_ttl` is `install_snapshot_timeout` (200 ms by default), which a
//! multi-MiB transfer cannot meet. openraft abandons a transfer through the `cancel` future
//! instead.
//!
//! # Not carried
//!
//! The service has no PreVote RPC. openraft's default `pre_vote` grants locally, which is
//! correct only while `Config::enable_pre_vote` stays off (the default).

use std::collections::HashMap;
use std::fmt;
use std::future::Future;
use std::io;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use futures::{Stream, StreamExt};
use openraft::alias::{SnapshotMetaOf, SnapshotOf};
use openraft::errors::{
    Fatal, NetworkError, RPCError, RaftError, ReplicationClosed, StreamingError, Timeout,
    Unreachable,
};
use openraft::network::{RPCOption, RaftNetworkFactory, RaftNetworkV2};
use openraft::raft::{
    AppendEntriesRequest, AppendEntriesResponse, SnapshotResponse, TransferLeaderRequest,
    TransferLeaderResponse, VoteRequest, VoteResponse,
};
use openraft::{ErrorSubject, ErrorVerb, OptionalSend, RPCTypes, Snapshot, StorageError};
use serde::Serialize;
use serde::de::DeserializeOwned;
use tokio::io::AsyncWriteExt;
use tokio::sync::oneshot;
use tonic::metadata::AsciiMetadataValue;
use tonic::transport::{Channel, Endpoint};
use tonic::{Code, Request, Response, Status, Streaming};

use crate::raft_pb::raft_service_client::RaftServiceClient;
use crate::raft_pb::raft_service_server::{RaftService, RaftServiceServer};
use crate::raft_pb::{RaftPayload, SnapshotChunk};
use crate::snapshot_file::WireChunk;
use crate::types::{LedgerRaft, LogId, NodeAddr, SnapshotFile, TypeConfig, Vote, decode, encode};
use wasteledger_core::hash::Digest;

// ------------------------------------------------------------------------------------------------
// Size limits
// ------------------------------------------------------------------------------------------------

/// Largest encoded log entry: the log store refuses any larger value
/// ([`wasteledger_store::durable::MAX_VALUE_BYTES`], 128 KiB), and a leader replicates only
/// entries its own log store accepted.
///
/// The stored value is `WIRE_VERSION ‖ postcard(entry)`; inside an AppendEntries payload the
/// entry is the same postcard bytes without the version byte, so this bounds an entry's share
/// of a batch including its log id and enum tags.
pub const MAX_ENTRY_BYTES: usize = wasteledger_store::durable::MAX_VALUE_BYTES;

/// Generous bound on everything in an AppendEntries message except the entries: the version
/// byte, the vote, `prev_log_id` and `leader_commit` (each at most three 10-byte varints and a
/// tag), the entry count varint, and the protobuf field tag and length of `RaftPayload.data`.
/// Together that is under 150 bytes; 4 KiB leaves room for format changes.
pub const APPEND_FRAMING_BYTES: usize = 4096;

/// openraft's default `Config::max_payload_entries` (entries per AppendEntries).
pub const DEFAULT_MAX_PAYLOAD_ENTRIES: u64 = 300;

/// Maximum size of one gRPC message of the Raft transport, set on both ends for decoding and
/// encoding (64 MiB).
///
/// Arithmetic: the largest AppendEntries batch is `max_payload_entries × MAX_ENTRY_BYTES +
/// APPEND_FRAMING_BYTES`. With openraft's default of 300 entries that is
/// `300 × 131 072 + 4 096 = 39 325 696` bytes (37.5 MiB), which leaves 26.5 MiB of headroom
/// under 64 MiB; the limit admits up to [`MAX_PAYLOAD_ENTRIES`] = 511 entries of maximum
/// size. A snapshot chunk is at most [`MAX_SNAPSHOT_CHUNK_BYTES`] (16 MiB) of data plus
/// [`MAX_SNAPSHOT_META_BYTES`] (1 MiB) of meta. Responses are a few hundred bytes. The
/// 5-byte gRPC frame header is not counted by tonic's limit.
pub const MAX_RAFT_MESSAGE_BYTES: usize = 64 * 1024 * 1024;

/// Largest `Config::max_payload_entries` whose full batch of maximum-size entries still fits
/// [`MAX_RAFT_MESSAGE_BYTES`] (511). Enforced by [`check_raft_config`].
pub const MAX_PAYLOAD_ENTRIES: u64 =
    ((MAX_RAFT_MESSAGE_BYTES - APPEND_FRAMING_BYTES) / MAX_ENTRY_BYTES) as u64;

/// Snapshot chunk size used when openraft gives no hint (1 MiB).
pub const DEFAULT_SNAPSHOT_CHUNK_BYTES: usize = 1024 * 1024;

/// Largest snapshot chunk this client sends (16 MiB); a larger
/// `Config::snapshot_max_chunk_size` is clamped to it.
pub const MAX_SNAPSHOT_CHUNK_BYTES: usize = 16 * 1024 * 1024;

/// Largest encoded `(vote, snapshot meta)` accepted in a snapshot stream (1 MiB; the meta holds
/// a log id and the membership, normally a few hundred bytes).
pub const MAX_SNAPSHOT_META_BYTES: usize = 1024 * 1024;

/// Default cap on the total size of a received snapshot (256 GiB); see
/// [`RaftServiceImpl::with_max_snapshot_bytes`].
pub const DEFAULT_MAX_SNAPSHOT_BYTES: u64 = 256 * 1024 * 1024 * 1024;

const _: () = assert!(
    DEFAULT_MAX_PAYLOAD_ENTRIES as usize * MAX_ENTRY_BYTES + APPEND_FRAMING_BYTES
        <= MAX_RAFT_MESSAGE_BYTES,
    "a default-size AppendEntries batch of maximum-size entries must fit one Raft message"
);
const _: () = assert!(
    MAX_SNAPSHOT_CHUNK_BYTES + MAX_SNAPSHOT_META_BYTES + APPEND_FRAMING_BYTES
        <= MAX_RAFT_MESSAGE_BYTES,
    "a snapshot chunk must fit one Raft message"
);

/// An openraft configuration the transport cannot carry.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TransportConfigError {
    /// A full AppendEntries batch could exceed [`MAX_RAFT_MESSAGE_BYTES`].
    #[error(
        "max_payload_entries = {configured} is too large: a full batch of {MAX_ENTRY_BYTES}-byte \
         entries would exceed the {MAX_RAFT_MESSAGE_BYTES}-byte Raft message limit \
         (at most {MAX_PAYLOAD_ENTRIES})"
    )]
    PayloadEntries {
        /// The configured `max_payload_entries`.
        configured: u64,
    },
    /// Pre-vote is enabled, but the transport has no PreVote RPC.
    #[error("enable_pre_vote is set, but the Raft transport has no PreVote RPC")]
    PreVote,
}

/// Checks that the transport can carry every message `config` allows: a full AppendEntries
/// batch fits [`MAX_RAFT_MESSAGE_BYTES`], and pre-vote (which has no RPC here) is off.
pub fn check_raft_config(config: &openraft::Config) -> Result<(), TransportConfigError> {
    if config.max_payload_entries > MAX_PAYLOAD_ENTRIES {
        return Err(TransportConfigError::PayloadEntries {
            configured: config.max_payload_entries,
        });
    }
    if config.enable_pre_vote == Some(true) {
        return Err(TransportConfigError::PreVote);
    }
    Ok(())
}

// ------------------------------------------------------------------------------------------------
// Client side
// ------------------------------------------------------------------------------------------------

/// Connection settings of the Raft transport client.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NetworkConfig {
    /// TCP connect timeout (default 1 s). A refused or timed-out connect is reported to
    /// openraft as `Unreachable`, which backs off.
    pub connect_timeout: Duration,
    /// Floor of the deadline of unary calls (default 2 s): the deadline is
    /// `max(option.soft_ttl(), min_rpc_timeout)` because a follower replies to AppendEntries
    /// only after an fsync, which openraft's 37 ms default soft TTL does not allow for.
    pub min_rpc_timeout: Duration,
    /// Interval of HTTP/2 keepalive pings (default 10 s), sent even while idle, so a dead peer
    /// is noticed and its connection re-established.
    pub keepalive_interval: Duration,
    /// How long to wait for a keepalive ack before closing the connection (default 5 s).
    pub keepalive_timeout: Duration,
}

impl Default for NetworkConfig {
    fn default() -> Self {
        NetworkConfig {
            connect_timeout: Duration::from_secs(1),
            min_rpc_timeout: Duration::from_secs(2),
            keepalive_interval: Duration::from_secs(10),
            keepalive_timeout: Duration::from_secs(5),
        }
    }
}

/// openraft's network factory: one lazily connected [`Channel`] per peer.
///
/// `new_client` never connects; the channel dials on first use and reconnects by itself after a
/// failure. Channels are cached by target id and replaced when the target's Raft address
/// changes. A tonic channel multiplexes calls, so every [`PeerClient`] for a peer shares one
/// HTTP/2 connection.
#[derive(Debug)]
pub struct Network {
    id: u64,
    /// The ledger every call is stamped with ([`LEDGER_KEY`], made once); `None` only in tests
    /// of the transport itself.
    ledger_stamp: Option<AsciiMetadataValue>,
    config: NetworkConfig,
    channels: HashMap<u64, (String, Channel)>,
}

impl Network {
    /// A factory for node `id` (the id is reported in [`Timeout`] errors) with default settings.
    pub fn new(id: u64) -> Network {
        Network::with_config(id, NetworkConfig::default())
    }

    /// A factory for node `id` with the given settings.
    pub fn with_config(id: u64, config: NetworkConfig) -> Network {
        Network {
            id,
            ledger_stamp: None,
            config,
            channels: HashMap::new(),
        }
    }

    /// Stamps every call with `ledger_id`, so a node of another ledger that a peer address
    /// points at by mistake refuses the call instead of taking it for its own cluster's.
    pub fn for_ledger(mut self, ledger_id: Digest) -> Network {
        self.ledger_stamp = ledger_stamp(&ledger_id);
        self
    }

    /// The cached channel to `target` at `addr`, created (without connecting) if needed.
    fn channel(&mut self, target: u64, addr: &str) -> Result<Channel, String> {
        if let Some((cached_addr, channel)) = self.channels.get(&target)
            && cached_addr == addr
        {
            return Ok(channel.clone());
        }
        let endpoint = Endpoint::from_shared(format!("http://{addr}"))
            .map_err(|e| format!("invalid Raft address {addr:?} of node {target}: {e}"))?
            .connect_timeout(self.config.connect_timeout)
            .tcp_nodelay(true)
            .http2_keep_alive_interval(self.config.keepalive_interval)
            .keep_alive_timeout(self.config.keepalive_timeout)
            .keep_alive_while_idle(true);
        let channel = endpoint.connect_lazy();
        self.channels
            .insert(target, (addr.to_owned(), channel.clone()));
        Ok(channel)
    }
}

impl RaftNetworkFactory<TypeConfig> for Network {
    type Network = PeerClient;

    async fn new_client(&mut self, target: u64, node: &NodeAddr) -> PeerClient {
        let client = match self.channel(target, &node.raft_addr) {
            Ok(channel) => Ok(RaftServiceClient::new(channel)
                .max_decoding_message_size(MAX_RAFT_MESSAGE_BYTES)
                .max_encoding_message_size(MAX_RAFT_MESSAGE_BYTES)),
            Err(e) => {
                tracing::warn!(target_node = target, error = %e, "cannot create a Raft client");
                Err(e)
            }
        };
        PeerClient {
            id: self.id,
            target,
            ledger_stamp: self.ledger_stamp.clone(),
            to_node_stamp: target.to_string().parse().ok(),
            addr: node.raft_addr.clone(),
            client,
            min_rpc_timeout: self.config.min_rpc_timeout,
        }
    }
}

/// A Raft client for one peer ([`RaftNetworkV2`] with `SnapshotData = `[`SnapshotFile`]).
///
/// Error mapping: a connect failure or `Code::Unavailable` is `Unreachable` (openraft backs
/// off); an expired deadline (ours, or `Code::DeadlineExceeded`) is `Timeout`; any other status,
/// an undecodable reply, or an error returned by the remote Raft is `Network` with the message.
pub struct PeerClient {
    id: u64,
    target: u64,
    /// The metadata values stamped on every call ([`addressed`]), made once per client.
    ledger_stamp: Option<AsciiMetadataValue>,
    to_node_stamp: Option<AsciiMetadataValue>,
    addr: String,
    /// `Err` when the peer's address cannot be turned into an endpoint; every call then fails
    /// as `Unreachable` with that message.
    client: Result<RaftServiceClient<Channel>, String>,
    min_rpc_timeout: Duration,
}

impl fmt::Debug for PeerClient {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PeerClient")
            .field("id", &self.id)
            .field("target", &self.target)
            .field("addr", &self.addr)
            .finish_non_exhaustive()
    }
}

impl PeerClient {
    fn client(&self) -> Result<RaftServiceClient<Channel>, RPCError<TypeConfig>> {
        self.client
            .clone()
            .map_err(|e| RPCError::Unreachable(Unreachable::from_string(e)))
    }

    /// Maps a failed call to openraft's error kinds (never drops the status message).
    fn status_error(&self, action: RPCTypes, status: &Status) -> RPCError<TypeConfig> {
        let msg = format!(
            "{action} to node {} at {}: {:?}: {}",
            self.target,
            self.addr,
            status.code(),
            status.message()
        );
        match status.code() {
            Code::Unavailable => RPCError::Unreachable(Unreachable::from_string(msg)),
            Code::DeadlineExceeded => RPCError::Timeout(Timeout {
                action,
                id: self.id,
                target: self.target,
                timeout: self.min_rpc_timeout,
            }),
            _ => {
                tracing::warn!(target_node = self.target, error = %msg, "Raft RPC failed");
                RPCError::Network(NetworkError::from_string(msg))
            }
        }
    }

    fn addressed<T>(&self, request: Request<T>) -> Request<T> {
        addressed(
            request,
            self.ledger_stamp.as_ref(),
            self.to_node_stamp.as_ref(),
        )
    }

    fn network_error(&self, action: RPCTypes, what: impl fmt::Display) -> RPCError<TypeConfig> {
        let msg = format!("{action} to node {} at {}: {what}", self.target, self.addr);
        tracing::warn!(target_node = self.target, error = %msg, "Raft RPC failed");
        RPCError::Network(NetworkError::from_string(msg))
    }

    /// Encodes a request payload (a failure is a local bug, reported as `Network`).
    fn encode_request<T: Serialize>(
        &self,
        action: RPCTypes,
        req: &T,
    ) -> Result<Vec<u8>, RPCError<TypeConfig>> {
        encode(req).map_err(|e| self.network_error(action, format!("request does not encode: {e}")))
    }

    /// One unary call: send `data` under the deadline, decode the remote `Result`.
    async fn unary<Resp, E, F, Fut>(
        &self,
        action: RPCTypes,
        data: Vec<u8>,
        option: &RPCOption,
        call: F,
    ) -> Result<Resp, RPCError<TypeConfig>>
    where
        Resp: DeserializeOwned,
        E: DeserializeOwned + fmt::Display,
        F: FnOnce(RaftServiceClient<Channel>, Request<RaftPayload>) -> Fut,
        Fut: Future<Output = Result<Response<RaftPayload>, Status>>,
    {
        let client = self.client()?;
        let deadline = option.soft_ttl().max(self.min_rpc_timeout);
        let request = self.addressed(Request::new(RaftPayload { data }));
        let call = call(client, request);
        let reply = match tokio::time::timeout(deadline, call).await {
            Err(_elapsed) => {
                return Err(RPCError::Timeout(Timeout {
                    action,
                    id: self.id,
                    target: self.target,
                    timeout: deadline,
                }));
            }
            Ok(Err(status)) => return Err(self.status_error(action, &status)),
            Ok(Ok(reply)) => reply.into_inner(),
        };
        let result: Result<Resp, E> = decode(&reply.data)
            .map_err(|e| self.network_error(action, format!("undecodable reply: {e}")))?;
        result.map_err(|e| self.network_error(action, format!("remote Raft error: {e}")))
    }

    /// Shortens a batch whose encoding exceeds [`MAX_RAFT_MESSAGE_BYTES`] (possible only when
    /// `max_payload_entries` is above [`MAX_PAYLOAD_ENTRIES`]) to the longest prefix that fits,
    /// at least one entry. Returns the encoded request and, if shortened, the last log id sent.
    fn fit_append(
        &self,
        mut rpc: AppendEntriesRequest<TypeConfig>,
    ) -> Result<(Vec<u8>, Option<LogId>), RPCError<TypeConfig>> {
        let action = RPCTypes::AppendEntries;
        let data = self.encode_request(action, &rpc)?;
        if data.len() <= MAX_RAFT_MESSAGE_BYTES {
            return Ok((data, None));
        }
        let total = rpc.entries.len();
        let mut size = APPEND_FRAMING_BYTES;
        let mut keep = 0;
        for entry in &rpc.entries {
            size += self.encode_request(action, entry)?.len();
            if keep > 0 && size > MAX_RAFT_MESSAGE_BYTES {
                break;
            }
            keep += 1;
        }
        rpc.entries.truncate(keep);
        let last = rpc.entries.last().map(|e| e.log_id);
        tracing::warn!(
            target_node = self.target,
            bytes = data.len(),
            sent = keep,
            entries = total,
            "AppendEntries batch exceeds the Raft message limit; sending a prefix \
             (max_payload_entries is above MAX_PAYLOAD_ENTRIES)"
        );
        Ok((self.encode_request(action, &rpc)?, last))
    }
}

impl RaftNetworkV2<TypeConfig> for PeerClient {
    type SnapshotData = SnapshotFile;

    async fn append_entries(
        &mut self,
        rpc: AppendEntriesRequest<TypeConfig>,
        option: RPCOption,
    ) -> Result<AppendEntriesResponse<TypeConfig>, RPCError<TypeConfig>> {
        let (data, shortened) = self.fit_append(rpc)?;
        let resp: AppendEntriesResponse<TypeConfig> = self
            .unary::<_, RaftError<TypeConfig>, _, _>(
                RPCTypes::AppendEntries,
                data,
                &option,
                |mut c, r| async move { c.append_entries(r).await },
            )
            .await?;
        // openraft supports sending a prefix: report how far the target got.
        Ok(match (resp, shortened) {
            (AppendEntriesResponse::Success, Some(last)) => {
                AppendEntriesResponse::PartialSuccess(Some(last))
            }
            (resp, _) => resp,
        })
    }

    async fn vote(
        &mut self,
        rpc: VoteRequest<TypeConfig>,
        option: RPCOption,
    ) -> Result<VoteResponse<TypeConfig>, RPCError<TypeConfig>> {
        let data = self.encode_request(RPCTypes::Vote, &rpc)?;
        self.unary::<_, RaftError<TypeConfig>, _, _>(
            RPCTypes::Vote,
            data,
            &option,
            |mut c, r| async move { c.vote(r).await },
        )
        .await
    }

    async fn transfer_leader(
        &mut self,
        req: TransferLeaderRequest<TypeConfig>,
        option: RPCOption,
    ) -> Result<TransferLeaderResponse<TypeConfig>, RPCError<TypeConfig>> {
        let data = self.encode_request(RPCTypes::TransferLeader, &req)?;
        self.unary::<_, Fatal<TypeConfig>, _, _>(
            RPCTypes::TransferLeader,
            data,
            &option,
            |mut c, r| async move { c.transfer_leader(r).await },
        )
        .await
    }

    async fn full_snapshot(
        &mut self,
        vote: Vote,
        snapshot: SnapshotOf<TypeConfig, SnapshotFile>,
        cancel: impl Future<Output = ReplicationClosed> + OptionalSend + 'static,
        option: RPCOption,
    ) -> Result<SnapshotResponse<TypeConfig>, StreamingError<TypeConfig>> {
        let chunk_size = option
            .snapshot_chunk_size()
            .unwrap_or(DEFAULT_SNAPSHOT_CHUNK_BYTES);
        self.send_snapshot(vote, snapshot, cancel, chunk_size).await
    }
}

impl PeerClient {
    /// Streams `snapshot` to the peer in chunks of `chunk_size` bytes (clamped to
    /// `1..=`[`MAX_SNAPSHOT_CHUNK_BYTES`]) and returns the receiver's reply.
    async fn send_snapshot(
        &self,
        vote: Vote,
        snapshot: SnapshotOf<TypeConfig, SnapshotFile>,
        cancel: impl Future<Output = ReplicationClosed> + OptionalSend + 'static,
        chunk_size: usize,
    ) -> Result<SnapshotResponse<TypeConfig>, StreamingError<TypeConfig>> {
        let action = RPCTypes::InstallSnapshot;
        let mut client = self.client()?;
        let chunk_size = chunk_size.clamp(1, MAX_SNAPSHOT_CHUNK_BYTES);
        let signature = snapshot.meta.signature();
        let read_error = |e: io::Error| {
            tracing::warn!(
                target_node = self.target,
                path = %snapshot.snapshot.path.display(),
                error = %e,
                "cannot read the snapshot to send"
            );
            StreamingError::StorageError(StorageError::from_io_error(
                ErrorSubject::Snapshot(Some(signature.clone())),
                ErrorVerb::Read,
                e,
            ))
        };
        let meta = encode(&(vote, &snapshot.meta))
            .map_err(|e| StreamingError::from(self.network_error(action, e)))?;
        let (err_tx, err_rx) = oneshot::channel();
        // The whole request stream exists before the call is awaited: a client-streaming call
        // resolves only after the server has read the stream to its end and replied.
        let bytes = crate::snapshot_file::wire_chunks(snapshot.snapshot.clone(), chunk_size);
        let chunks = snapshot_chunks(meta, bytes, err_tx);
        let call = client.install_snapshot(self.addressed(Request::new(chunks)));
        // No deadline: hard_ttl here is install_snapshot_timeout (200 ms by default), far too
        // short for a large file. openraft abandons the transfer through `cancel`.
        let reply = tokio::select! {
            res = call => res.map_err(|s| StreamingError::from(self.status_error(action, &s)))?,
            e = first_error(err_rx) => return Err(read_error(e)),
            closed = cancel => return Err(StreamingError::Closed(closed)),
        };
        let result: Result<SnapshotResponse<TypeConfig>, Fatal<TypeConfig>> =
            decode(&reply.into_inner().data).map_err(|e| {
                StreamingError::from(self.network_error(action, format!("undecodable reply: {e}")))
            })?;
        result.map_err(|e| {
            StreamingError::from(self.network_error(action, format!("remote Raft error: {e}")))
        })
    }
}

/// Resolves with the error sent on `rx`; never resolves if the sender is dropped unused.
async fn first_error(rx: oneshot::Receiver<io::Error>) -> io::Error {
    match rx.await {
        Ok(e) => e,
        Err(_) => std::future::pending().await,
    }
}

/// The request stream of a snapshot transfer: the first chunk carries `meta` (and the first
/// data, if any), then one chunk per piece of `bytes` (see `snapshot_file::wire_chunks`); the
/// stream ends only after the producer's end message.
///
/// A read error must not end the stream: the receiver would take a clean end for a complete
/// snapshot. Instead the error goes to `on_error` and the stream stays pending; the caller then
/// drops the call, which resets the HTTP/2 stream, and the receiver discards the partial file.
fn snapshot_chunks(
    meta: Vec<u8>,
    bytes: tokio::sync::mpsc::Receiver<WireChunk>,
    on_error: oneshot::Sender<io::Error>,
) -> impl Stream<Item = SnapshotChunk> + Send + 'static {
    struct State {
        bytes: tokio::sync::mpsc::Receiver<WireChunk>,
        meta: Option<Vec<u8>>,
        on_error: Option<oneshot::Sender<io::Error>>,
        done: bool,
    }
    let state = State {
        bytes,
        meta: Some(meta),
        on_error: Some(on_error),
        done: false,
    };
    futures::stream::unfold(state, |mut st| async move {
        if st.done {
            return None;
        }
        let failure = match st.bytes.recv().await {
            Some(Ok(Some(data))) => {
                let meta = st.meta.take().unwrap_or_default();
                return Some((SnapshotChunk { meta, data }, st));
            }
            // The end; an empty snapshot still sends its meta.
            Some(Ok(None)) => {
                st.done = true;
                return st.meta.take().map(|meta| {
                    let chunk = SnapshotChunk {
                        meta,
                        data: Vec::new(),
                    };
                    (chunk, st)
                });
            }
            Some(Err(e)) => e,
            None => io::Error::other("the snapshot reader stopped before the end"),
        };
        if let Some(tx) = st.on_error.take() {
            // The receiver is gone only if the call was dropped already.
            let _ = tx.send(failure);
        }
        std::future::pending().await
    })
}

// ------------------------------------------------------------------------------------------------
// Server side
// ------------------------------------------------------------------------------------------------

/// The Raft transport service: forwards each RPC to the local [`LedgerRaft`].
///
/// Received snapshots are written to `<snapshot_dir>/incoming/` (a `.partial` file, fsynced,
/// renamed to `.snap`, directory fsynced) and handed to `Raft::install_full_snapshot` as a
/// [`SnapshotFile`]. The state machine's `install_snapshot` moves or copies the file to its own
/// name; whatever is left at the received path afterwards (a copied, rejected or outdated
/// snapshot) is removed. The subdirectory keeps in-flight files away from the state machine's
/// own sweep of `*.snap` / `*.partial` in its snapshot directory, so `snapshot_dir` may be the
/// state machine's snapshot directory.
#[derive(Clone)]
pub struct RaftServiceImpl {
    raft: LedgerRaft,
    /// This node's id and ledger (hex, made once): calls stamped for another are refused
    /// ([`check_addressed`]).
    node_id: u64,
    ledger_hex: String,
    snapshot_dir: PathBuf,
    max_snapshot_bytes: u64,
}

impl fmt::Debug for RaftServiceImpl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RaftServiceImpl")
            .field("snapshot_dir", &self.snapshot_dir)
            .field("max_snapshot_bytes", &self.max_snapshot_bytes)
            .finish_non_exhaustive()
    }
}

impl RaftServiceImpl {
    /// The service for `raft`, node `node_id` of the ledger `ledger_id`, receiving snapshots
    /// under `snapshot_dir/incoming`.
    ///
    /// Removes leftover received files from an earlier run (best effort; no transfer can be in
    /// flight before the service exists).
    pub fn new(
        raft: LedgerRaft,
        node_id: u64,
        ledger_id: Digest,
        snapshot_dir: PathBuf,
    ) -> RaftServiceImpl {
        let service = RaftServiceImpl {
            raft,
            node_id,
            ledger_hex: ledger_id.to_hex(),
            snapshot_dir,
            max_snapshot_bytes: DEFAULT_MAX_SNAPSHOT_BYTES,
        };
        remove_leftovers(&service.incoming_dir());
        service
    }

    /// Refuses received snapshots larger than `max` bytes (default
    /// [`DEFAULT_MAX_SNAPSHOT_BYTES`]).
    pub fn with_max_snapshot_bytes(mut self, max: u64) -> RaftServiceImpl {
        self.max_snapshot_bytes = max;
        self
    }

    /// Where received snapshot files are written.
    pub fn incoming_dir(&self) -> PathBuf {
        self.snapshot_dir.join("incoming")
    }

    fn check_addressed<T>(&self, request: &Request<T>, what: &str) -> Result<(), Status> {
        check_addressed(request.metadata(), self.node_id, &self.ledger_hex, what)
    }
}

/// [`RaftServiceImpl`] wrapped in the generated server with the message size limits applied
/// ([`MAX_RAFT_MESSAGE_BYTES`] for decoding and encoding).
pub fn raft_service(
    raft: LedgerRaft,
    node_id: u64,
    ledger_id: Digest,
    snapshot_dir: PathBuf,
) -> RaftServiceServer<RaftServiceImpl> {
    limit_server(RaftServiceImpl::new(raft, node_id, ledger_id, snapshot_dir))
}

/// gRPC metadata naming the ledger a Raft call is for (its id in hex).
const LEDGER_KEY: &str = "wl-ledger-id";
/// gRPC metadata naming the node a Raft call is for (its decimal id).
const TO_NODE_KEY: &str = "wl-to-node";

/// The [`LEDGER_KEY`] value for `ledger_id` (hex digits are always valid ASCII metadata).
fn ledger_stamp(ledger_id: &Digest) -> Option<AsciiMetadataValue> {
    ledger_id.to_hex().parse().ok()
}

/// Stamps a Raft call with the ledger and, when the caller knows it, the node it is meant for.
fn addressed<T>(
    mut request: Request<T>,
    ledger: Option<&AsciiMetadataValue>,
    to_node: Option<&AsciiMetadataValue>,
) -> Request<T> {
    if let Some(value) = ledger {
        request.metadata_mut().insert(LEDGER_KEY, value.clone());
    }
    if let Some(value) = to_node {
        request.metadata_mut().insert(TO_NODE_KEY, value.clone());
    }
    request
}

/// Refuses a call stamped for another ledger or another node with `FailedPrecondition`.
///
/// Without this, a node would take Raft messages from a cluster of another ledger whose
/// membership points at its address (a reused port, a copied config): openraft cannot tell
/// two clusters' leaders apart when both are node 1 in term 1, and a leader receiving its
/// own vote in an AppendEntries trips an assertion in openraft (seen in CI, tests running
/// clusters side by side). An unstamped call is not refused: every call this crate makes
/// is stamped, and the stamp guards against misrouting, not against a hostile caller.
fn check_addressed(
    metadata: &tonic::metadata::MetadataMap,
    node_id: u64,
    ledger_hex: &str,
    what: &str,
) -> Result<(), Status> {
    if let Some(value) = metadata.get(LEDGER_KEY) {
        let theirs = value.to_str().unwrap_or("(not ASCII)");
        if theirs != ledger_hex {
            tracing::debug!(
                rpc = what,
                ledger = theirs,
                "refused a Raft call for another ledger"
            );
            return Err(Status::failed_precondition(format!(
                "{what} for ledger {}, but this node (id {node_id}) serves ledger {}: the \
                 caller's membership gives a node of its own ledger this node's Raft address",
                theirs.get(..16).unwrap_or(theirs),
                ledger_hex.get(..16).unwrap_or(ledger_hex)
            )));
        }
    }
    if let Some(value) = metadata.get(TO_NODE_KEY) {
        let theirs = value.to_str().unwrap_or("(not ASCII)");
        if theirs.parse::<u64>().ok() != Some(node_id) {
            tracing::debug!(
                rpc = what,
                to_node = theirs,
                "refused a Raft call for another node"
            );
            return Err(Status::failed_precondition(format!(
                "{what} for node {theirs}, but this is node {node_id}: the caller's membership \
                 gives node {theirs} this node's Raft address"
            )));
        }
    }
    Ok(())
}

/// Applies the Raft message limits to any implementation of the service.
fn limit_server<S: RaftService>(service: S) -> RaftServiceServer<S> {
    RaftServiceServer::new(service)
        .max_decoding_message_size(MAX_RAFT_MESSAGE_BYTES)
        .max_encoding_message_size(MAX_RAFT_MESSAGE_BYTES)
}

/// A tonic server builder suited to the Raft transport: HTTP/2 keepalive (10 s interval, 5 s
/// timeout), matching the client side. Add [`raft_service`] to it and serve it on
/// [`incoming`].
pub fn server_builder() -> tonic::transport::Server {
    let defaults = NetworkConfig::default();
    tonic::transport::Server::builder()
        .http2_keepalive_interval(Some(defaults.keepalive_interval))
        .http2_keepalive_timeout(Some(defaults.keepalive_timeout))
}

/// Connections accepted on `listener`, with Nagle's algorithm off. Every node listener (Raft,
/// API, admin) is served through this: tonic's `Server::tcp_nodelay` applies only to `serve`,
/// not to `serve_with_incoming`, and with Nagle on a reply spanning several segments waited
/// ~40 ms for the peer's delayed ACK.
pub fn incoming(listener: tokio::net::TcpListener) -> tonic::transport::server::TcpIncoming {
    tonic::transport::server::TcpIncoming::from(listener).with_nodelay(Some(true))
}

/// Decodes a request payload, refusing garbage with `InvalidArgument`.
fn decode_request<T: DeserializeOwned>(payload: &RaftPayload, what: &str) -> Result<T, Status> {
    decode(&payload.data).map_err(|e| {
        tracing::warn!(rpc = what, error = %e, "undecodable Raft request");
        Status::invalid_argument(format!("{what} request does not decode: {e}"))
    })
}

/// Encodes the local Raft call's whole `Result` as the reply.
fn encode_reply<T: Serialize, E: Serialize + fmt::Display>(
    result: &Result<T, E>,
    what: &str,
) -> Result<Response<RaftPayload>, Status> {
    if let Err(e) = result {
        tracing::warn!(rpc = what, error = %e, "local Raft failed a request from a peer");
    }
    let data = encode(result)
        .map_err(|e| Status::internal(format!("{what} reply does not encode: {e}")))?;
    Ok(Response::new(RaftPayload { data }))
}

#[tonic::async_trait]
impl RaftService for RaftServiceImpl {
    async fn append_entries(
        &self,
        request: Request<RaftPayload>,
    ) -> Result<Response<RaftPayload>, Status> {
        self.check_addressed(&request, "AppendEntries")?;
        let rpc: AppendEntriesRequest<TypeConfig> =
            decode_request(request.get_ref(), "AppendEntries")?;
        encode_reply(&self.raft.append_entries(rpc).await, "AppendEntries")
    }

    async fn vote(&self, request: Request<RaftPayload>) -> Result<Response<RaftPayload>, Status> {
        self.check_addressed(&request, "Vote")?;
        let rpc: VoteRequest<TypeConfig> = decode_request(request.get_ref(), "Vote")?;
        encode_reply(&self.raft.vote(rpc).await, "Vote")
    }

    async fn transfer_leader(
        &self,
        request: Request<RaftPayload>,
    ) -> Result<Response<RaftPayload>, Status> {
        self.check_addressed(&request, "TransferLeader")?;
        let req: TransferLeaderRequest<TypeConfig> =
            decode_request(request.get_ref(), "TransferLeader")?;
        encode_reply(
            &self.raft.handle_transfer_leader(req).await,
            "TransferLeader",
        )
    }

    async fn propose(
        &self,
        request: Request<RaftPayload>,
    ) -> Result<Response<RaftPayload>, Status> {
        self.check_addressed(&request, "Propose")?;
        let command: crate::types::LedgerRequest = decode_request(request.get_ref(), "Propose")?;
        if !matches!(command, crate::types::LedgerRequest::Cosign { .. }) {
            return Err(Status::permission_denied(
                "only witness cosignatures may be proposed over the Raft transport; submit events through the public API",
            ));
        }
        let result: Result<crate::types::LedgerResponse, String> = self
            .raft
            .client_write(command)
            .await
            .map(|r| r.data)
            .map_err(|e| e.to_string());
        encode_reply(&result, "Propose")
    }

    async fn read_index(
        &self,
        request: Request<RaftPayload>,
    ) -> Result<Response<RaftPayload>, Status> {
        self.check_addressed(&request, "ReadIndex")?;
        let result: Result<u64, String> = self
            .raft
            .ensure_linearizable(openraft::ReadPolicy::ReadIndex)
            .await
            .map(|read| read.log_id().index)
            .map_err(|e| e.to_string());
        encode_reply(&result, "ReadIndex")
    }

    async fn install_snapshot(
        &self,
        request: Request<Streaming<SnapshotChunk>>,
    ) -> Result<Response<RaftPayload>, Status> {
        self.check_addressed(&request, "InstallSnapshot")?;
        let received = receive_snapshot(
            request.into_inner(),
            &self.incoming_dir(),
            self.max_snapshot_bytes,
        )
        .await
        .inspect_err(|s| {
            tracing::warn!(code = ?s.code(), error = s.message(), "refused a snapshot stream");
        })?;
        tracing::info!(
            vote = %received.vote,
            bytes = received.bytes,
            path = %received.file.path().display(),
            "received a snapshot; installing"
        );
        // Install in a task of its own: if the sender goes away now, this handler is dropped,
        // but Raft may already be reading the file, which must outlive the install.
        let raft = self.raft.clone();
        let install = tokio::spawn(async move {
            let ReceivedSnapshot {
                vote, meta, file, ..
            } = received;
            let snapshot = Snapshot {
                meta,
                snapshot: SnapshotFile::complete(file.path().to_path_buf()),
            };
            let result = raft.install_full_snapshot(vote, snapshot).await;
            // The state machine moved or copied the file if it installed it.
            drop(file);
            result
        });
        let result = install
            .await
            .map_err(|e| Status::internal(format!("snapshot install task failed: {e}")))?;
        encode_reply(&result, "InstallSnapshot")
    }
}

/// A snapshot received in full and made durable.
#[derive(Debug)]
struct ReceivedSnapshot {
    vote: Vote,
    meta: SnapshotMetaOf<TypeConfig>,
    file: TempFile,
    bytes: u64,
}

/// A file removed when dropped (unless already gone).
#[derive(Debug)]
struct TempFile {
    path: PathBuf,
}

impl TempFile {
    fn path(&self) -> &Path {
        &self.path
    }
}

impl Drop for TempFile {
    fn drop(&mut self) {
        match std::fs::remove_file(&self.path) {
            Ok(()) => {
                tracing::debug!(path = %self.path.display(), "removed received snapshot file")
            }
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(e) => tracing::warn!(
                path = %self.path.display(),
                error = %e,
                "cannot remove received snapshot file"
            ),
        }
    }
}

/// Removes `*.partial` and `*.snap` files left in `dir` by an earlier run.
fn remove_leftovers(dir: &Path) {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    for entry in entries.flatten() {
        let path = entry.path();
        if matches!(
            path.extension().and_then(|e| e.to_str()),
            Some("partial" | "snap")
        ) {
            drop(TempFile { path });
        }
    }
}

/// A file name no other transfer uses (process id, time, counter).
fn unique_name() -> String {
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or_default();
    format!(
        "recv-{}-{nanos}-{}",
        std::process::id(),
        COUNTER.fetch_add(1, Ordering::Relaxed)
    )
}

fn io_status(what: &str, path: &Path, e: io::Error) -> Status {
    Status::internal(format!("{what} {}: {e}", path.display()))
}

/// Reads a snapshot stream into a durable file in `dir`.
///
/// The first chunk must carry the meta; later chunks must not. Refuses an empty stream, a
/// missing, oversize or undecodable meta, and more than `max_bytes` of data, with
/// `InvalidArgument` / `ResourceExhausted`. A stream error is returned (with the byte count
/// received) rather than taken for the end of the snapshot. On any error the partial file is
/// removed.
async fn receive_snapshot<S>(
    mut chunks: S,
    dir: &Path,
    max_bytes: u64,
) -> Result<ReceivedSnapshot, Status>
where
    S: Stream<Item = Result<SnapshotChunk, Status>> + Unpin,
{
    let stream_error = |received: u64, s: Status| {
        Status::new(
            s.code(),
            format!(
                "snapshot stream failed after {received} bytes: {}",
                s.message()
            ),
        )
    };
    let first = match chunks.next().await {
        None => return Err(Status::invalid_argument("empty snapshot stream")),
        Some(chunk) => chunk.map_err(|s| stream_error(0, s))?,
    };
    if first.meta.is_empty() {
        return Err(Status::invalid_argument(
            "the first snapshot chunk carries no meta",
        ));
    }
    if first.meta.len() > MAX_SNAPSHOT_META_BYTES {
        return Err(Status::invalid_argument(format!(
            "snapshot meta of {} bytes exceeds {MAX_SNAPSHOT_META_BYTES}",
            first.meta.len()
        )));
    }
    let (vote, meta): (Vote, SnapshotMetaOf<TypeConfig>) = decode(&first.meta)
        .map_err(|e| Status::invalid_argument(format!("snapshot meta does not decode: {e}")))?;

    tokio::fs::create_dir_all(dir)
        .await
        .map_err(|e| io_status("cannot create", dir, e))?;
    let name = unique_name();
    let partial = dir.join(format!("{name}.partial"));
    let mut guard = TempFile {
        path: partial.clone(),
    };
    let mut file = tokio::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .open(&partial)
        .await
        .map_err(|e| io_status("cannot create", &partial, e))?;

    let mut bytes: u64 = 0;
    let mut data = first.data;
    let mut index: u64 = 0;
    loop {
        bytes = bytes.saturating_add(u64::try_from(data.len()).unwrap_or(u64::MAX));
        if bytes > max_bytes {
            return Err(Status::resource_exhausted(format!(
                "snapshot exceeds the {max_bytes}-byte limit"
            )));
        }
        file.write_all(&data)
            .await
            .map_err(|e| io_status("cannot write", &partial, e))?;
        index += 1;
        match chunks.next().await {
            None => break,
            Some(Err(s)) => return Err(stream_error(bytes, s)),
            Some(Ok(chunk)) => {
                if !chunk.meta.is_empty() {
                    return Err(Status::invalid_argument(format!(
                        "snapshot chunk {index} carries meta; only the first may"
                    )));
                }
                data = chunk.data;
            }
        }
    }
    file.flush()
        .await
        .map_err(|e| io_status("cannot write", &partial, e))?;
    file.sync_all()
        .await
        .map_err(|e| io_status("cannot fsync", &partial, e))?;
    drop(file);
    let done = dir.join(format!("{name}.snap"));
    tokio::fs::rename(&partial, &done)
        .await
        .map_err(|e| io_status("cannot rename", &partial, e))?;
    guard.path = done;
    let dir_owned = dir.to_path_buf();
    tokio::task::spawn_blocking(move || wasteledger_store::sync_dir(&dir_owned))
        .await
        .map_err(|e| Status::internal(format!("directory fsync task failed: {e}")))?
        .map_err(|e| io_status("cannot fsync", dir, e))?;
    Ok(ReceivedSnapshot {
        vote,
        meta,
        file: guard,
        bytes,
    })
}

/// Asks the leader at `raft_addr` for a read index: the log index this node must apply before
/// answering a linearizable read.
pub async fn read_index_remote(
    raft_addr: &str,
    ledger_id: Digest,
    timeout: Duration,
) -> Result<u64, String> {
    let mut client = raft_client(raft_addr, timeout).await?;
    let request = addressed(
        Request::new(RaftPayload { data: Vec::new() }),
        ledger_stamp(&ledger_id).as_ref(),
        None,
    );
    let reply = client
        .read_index(request)
        .await
        .map_err(|s| format!("{raft_addr}: {}", s.message()))?;
    let result: Result<u64, String> = decode(&reply.get_ref().data).map_err(|e| e.to_string())?;
    result
}

async fn raft_client(
    raft_addr: &str,
    timeout: Duration,
) -> Result<RaftServiceClient<tonic::transport::Channel>, String> {
    let endpoint = Endpoint::from_shared(format!("http://{raft_addr}"))
        .map_err(|e| format!("bad address {raft_addr}: {e}"))?
        .connect_timeout(Duration::from_secs(1))
        .timeout(timeout);
    let channel = endpoint
        .connect()
        .await
        .map_err(|e| format!("{raft_addr} unreachable: {e}"))?;
    Ok(RaftServiceClient::new(channel)
        .max_decoding_message_size(MAX_RAFT_MESSAGE_BYTES)
        .max_encoding_message_size(MAX_RAFT_MESSAGE_BYTES))
}

/// Proposes a node-originated command on the node at `raft_addr` (the leader).
pub async fn propose_remote(
    raft_addr: &str,
    ledger_id: Digest,
    command: &crate::types::LedgerRequest,
    timeout: Duration,
) -> Result<crate::types::LedgerResponse, String> {
    let mut client = raft_client(raft_addr, timeout).await?;
    let data = encode(command).map_err(|e| e.to_string())?;
    let reply = client
        .propose(addressed(
            Request::new(RaftPayload { data }),
            ledger_stamp(&ledger_id).as_ref(),
            None,
        ))
        .await
        .map_err(|s| format!("{raft_addr}: {}", s.message()))?;
    let result: Result<crate::types::LedgerResponse, String> =
        decode(&reply.get_ref().data).map_err(|e| e.to_string())?;
    result
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeMap;
    use std::net::SocketAddr;
    use std::sync::Arc;

    use openraft::async_runtime::WatchReceiver;
    use openraft::entry::RaftEntry;
    use openraft::{Config, EntryPayload, SnapshotPolicy};
    use tokio::net::TcpListener;
    use wasteledger_core::sample::SampleNetwork;
    use wasteledger_store::{DurableDb, LogStore};

    use crate::log_storage::LogStorage;
    use crate::state_machine::LedgerStateMachine;
    use crate::types::{Entry, LedgerRequest};

    type TestResult = Result<(), Box<dyn std::error::Error + Send + Sync>>;

    fn log_id(term: u64, node: u64, index: u64) -> LogId {
        openraft::testing::log_id::<TypeConfig>(term, node, index)
    }

    fn entry(index: u64, event_bytes: usize) -> Entry {
        Entry::new_normal(
            log_id(1, 1, index),
            LedgerRequest::Submit {
                event: vec![(index % 251) as u8; event_bytes],
                sequenced_at: 1_780_272_000_000,
            },
        )
    }

    /// The event size at which `encode(&entry)` is exactly [`MAX_ENTRY_BYTES`].
    fn max_event_bytes() -> usize {
        let probe = 100 * 1024;
        let overhead = encode(&entry(1_000_000, probe)).unwrap().len() - probe;
        // The varint length prefix of the event is 3 bytes for both sizes.
        MAX_ENTRY_BYTES - overhead
    }

    fn vote(term: u64, node: u64) -> Vote {
        Vote::new_committed(term, node)
    }

    fn append_request(n: u64, event_bytes: usize) -> AppendEntriesRequest<TypeConfig> {
        AppendEntriesRequest {
            vote: vote(1, 1),
            prev_log_id: None,
            entries: (0..n).map(|i| entry(i, event_bytes)).collect(),
            leader_commit: None,
        }
    }

    fn node_addr(addr: SocketAddr) -> NodeAddr {
        NodeAddr {
            raft_addr: addr.to_string(),
            api_addr: String::new(),
        }
    }

    async fn peer(target: u64, addr: SocketAddr) -> PeerClient {
        Network::new(99).new_client(target, &node_addr(addr)).await
    }

    /// Serves `svc` on an ephemeral loopback port until the returned sender is dropped.
    async fn serve<S: RaftService>(
        svc: RaftServiceServer<S>,
    ) -> Result<(SocketAddr, oneshot::Sender<()>), io::Error> {
        let listener = TcpListener::bind("127.0.0.1:0").await?;
        let addr = listener.local_addr()?;
        let (stop, stopped) = oneshot::channel::<()>();
        tokio::spawn(async move {
            let res = server_builder()
                .add_service(svc)
                .serve_with_incoming_shutdown(incoming(listener), async {
                    let _ = stopped.await;
                })
                .await;
            if let Err(e) = res {
                tracing::error!(error = %e, "test server failed");
            }
        });
        Ok((addr, stop))
    }

    fn option() -> RPCOption {
        RPCOption::new(Duration::from_millis(50))
    }

    // -- codec -------------------------------------------------------------------------------

    #[test]
    fn payloads_round_trip() {
        let req = append_request(3, 10);
        let back: AppendEntriesRequest<TypeConfig> = decode(&encode(&req).unwrap()).unwrap();
        assert_eq!(back.vote, req.vote);
        assert_eq!(back.entries, req.entries);

        let ok: Result<AppendEntriesResponse<TypeConfig>, RaftError<TypeConfig>> =
            Ok(AppendEntriesResponse::Conflict);
        let back: Result<AppendEntriesResponse<TypeConfig>, RaftError<TypeConfig>> =
            decode(&encode(&ok).unwrap()).unwrap();
        assert_eq!(back, ok);

        let err: Result<VoteResponse<TypeConfig>, RaftError<TypeConfig>> =
            Err(RaftError::Fatal(Fatal::Stopped));
        let back: Result<VoteResponse<TypeConfig>, RaftError<TypeConfig>> =
            decode(&encode(&err).unwrap()).unwrap();
        assert_eq!(back, err);

        let storage: Result<SnapshotResponse<TypeConfig>, Fatal<TypeConfig>> =
            Err(Fatal::StorageError(StorageError::from_io_error(
                ErrorSubject::Snapshot(None),
                ErrorVerb::Write,
                io::Error::other("disk full"),
            )));
        let back: Result<SnapshotResponse<TypeConfig>, Fatal<TypeConfig>> =
            decode(&encode(&storage).unwrap()).unwrap();
        assert!(back.unwrap_err().to_string().contains("disk full"));

        let meta = SnapshotMetaOf::<TypeConfig> {
            last_log_id: Some(log_id(3, 2, 40)),
            ..Default::default()
        };
        let head = encode(&(vote(3, 2), &meta)).unwrap();
        let (v, m): (Vote, SnapshotMetaOf<TypeConfig>) = decode(&head).unwrap();
        assert_eq!((v, m), (vote(3, 2), meta));

        let tl: Result<TransferLeaderResponse<TypeConfig>, Fatal<TypeConfig>> = Ok(Ok(()));
        let back: Result<TransferLeaderResponse<TypeConfig>, Fatal<TypeConfig>> =
            decode(&encode(&tl).unwrap()).unwrap();
        assert_eq!(back, tl);
    }

    #[test]
    fn size_limit_arithmetic() {
        assert_eq!(MAX_PAYLOAD_ENTRIES, 511);
        // A default-size batch of maximum-size entries, really encoded, fits the limit.
        let req = append_request(DEFAULT_MAX_PAYLOAD_ENTRIES, max_event_bytes());
        for e in &req.entries {
            let n = encode(e).unwrap().len();
            assert!(n <= MAX_ENTRY_BYTES && n + 4 > MAX_ENTRY_BYTES, "{n}");
        }
        let len = encode(&req).unwrap().len();
        assert!(
            len <= DEFAULT_MAX_PAYLOAD_ENTRIES as usize * MAX_ENTRY_BYTES + APPEND_FRAMING_BYTES
        );
        assert!(len < MAX_RAFT_MESSAGE_BYTES);

        let mut config = Config::default();
        assert_eq!(config.max_payload_entries, DEFAULT_MAX_PAYLOAD_ENTRIES);
        assert_eq!(check_raft_config(&config), Ok(()));
        config.max_payload_entries = MAX_PAYLOAD_ENTRIES + 1;
        assert!(matches!(
            check_raft_config(&config),
            Err(TransportConfigError::PayloadEntries { .. })
        ));
        config.max_payload_entries = 64;
        config.enable_pre_vote = Some(true);
        assert_eq!(
            check_raft_config(&config),
            Err(TransportConfigError::PreVote)
        );
    }

    // -- stand-in service: transport behaviour without a Raft ---------------------------------

    /// Answers AppendEntries with `Success` after checking the batch arrived whole, sleeps on
    /// Vote, and receives snapshots with the real [`receive_snapshot`], reporting the file.
    struct StandIn {
        dir: PathBuf,
        received: tokio::sync::mpsc::UnboundedSender<(Vote, PathBuf, u64)>,
    }

    #[tonic::async_trait]
    impl RaftService for StandIn {
        async fn append_entries(
            &self,
            request: Request<RaftPayload>,
        ) -> Result<Response<RaftPayload>, Status> {
            let rpc: AppendEntriesRequest<TypeConfig> =
                decode_request(request.get_ref(), "AppendEntries")?;
            // Spot-check that the batch arrived whole and in order.
            let n = rpc.entries.len();
            let size = rpc.entries[0].payload_len();
            for i in [0, n / 2, n - 1] {
                assert_eq!(rpc.entries[i], entry(i as u64, size));
            }
            let ok: Result<_, RaftError<TypeConfig>> =
                Ok(AppendEntriesResponse::<TypeConfig>::Success);
            encode_reply(&ok, "AppendEntries")
        }

        async fn propose(&self, _: Request<RaftPayload>) -> Result<Response<RaftPayload>, Status> {
            Err(Status::unimplemented("stand-in"))
        }

        async fn read_index(
            &self,
            _: Request<RaftPayload>,
        ) -> Result<Response<RaftPayload>, Status> {
            Err(Status::unimplemented("stand-in"))
        }

        async fn vote(&self, _: Request<RaftPayload>) -> Result<Response<RaftPayload>, Status> {
            tokio::time::sleep(Duration::from_secs(30)).await;
            Err(Status::internal("unreachable in tests"))
        }

        async fn transfer_leader(
            &self,
            _: Request<RaftPayload>,
        ) -> Result<Response<RaftPayload>, Status> {
            Err(Status::permission_denied("stand-in refuses"))
        }

        async fn install_snapshot(
            &self,
            request: Request<Streaming<SnapshotChunk>>,
        ) -> Result<Response<RaftPayload>, Status> {
            let got = receive_snapshot(request.into_inner(), &self.dir, u64::MAX).await?;
            // Keep the file for the test to compare: move it out of the guard's path.
            let kept = self.dir.join("kept.bin");
            std::fs::rename(got.file.path(), &kept).unwrap();
            self.received.send((got.vote, kept, got.bytes)).unwrap();
            let ok: Result<_, Fatal<TypeConfig>> =
                Ok(SnapshotResponse::<TypeConfig>::new(got.vote));
            encode_reply(&ok, "InstallSnapshot")
        }
    }

    trait PayloadLen {
        fn payload_len(&self) -> usize;
    }

    impl PayloadLen for Entry {
        fn payload_len(&self) -> usize {
            match &self.payload {
                EntryPayload::Normal(LedgerRequest::Submit { event, .. }) => event.len(),
                _ => 0,
            }
        }
    }

    async fn stand_in(
        dir: &Path,
    ) -> Result<
        (
            SocketAddr,
            oneshot::Sender<()>,
            tokio::sync::mpsc::UnboundedReceiver<(Vote, PathBuf, u64)>,
        ),
        io::Error,
    > {
        let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
        let (addr, stop) = serve(limit_server(StandIn {
            dir: dir.to_path_buf(),
            received: tx,
        }))
        .await?;
        Ok((addr, stop, rx))
    }

    /// A client to node 1 at `addr` with a 60 s deadline: tens of MiB through an unoptimised
    /// test build on a loaded machine can take longer than openraft's 2 s default, and the
    /// tests using it are about sizes, not speed.
    async fn patient_peer(addr: SocketAddr) -> PeerClient {
        let config = NetworkConfig {
            min_rpc_timeout: Duration::from_secs(60),
            ..NetworkConfig::default()
        };
        Network::with_config(99, config)
            .new_client(1, &node_addr(addr))
            .await
    }

    #[tokio::test]
    async fn full_size_append_batches_cross_the_transport() -> TestResult {
        let dir = tempfile::tempdir()?;
        let (addr, _stop, _rx) = stand_in(dir.path()).await?;
        let mut client = patient_peer(addr).await;
        // 64 entries of 100 KiB (6.4 MiB: above tonic's 4 MiB default).
        let resp = client
            .append_entries(append_request(64, 100 * 1024), option())
            .await?;
        assert_eq!(resp, AppendEntriesResponse::Success);
        // A default-size batch of maximum-size entries (37.5 MiB).
        let resp = client
            .append_entries(
                append_request(DEFAULT_MAX_PAYLOAD_ENTRIES, max_event_bytes()),
                option(),
            )
            .await?;
        assert_eq!(resp, AppendEntriesResponse::Success);
        Ok(())
    }

    #[tokio::test]
    async fn oversize_batch_is_sent_as_a_prefix() -> TestResult {
        let dir = tempfile::tempdir()?;
        let (addr, _stop, _rx) = stand_in(dir.path()).await?;
        let mut client = patient_peer(addr).await;
        // More maximum-size entries than one message holds: openraft gets PartialSuccess for
        // the prefix that fitted (511 entries, see MAX_PAYLOAD_ENTRIES) and sends the rest next.
        let res = client
            .append_entries(
                append_request(MAX_PAYLOAD_ENTRIES + 10, max_event_bytes()),
                option(),
            )
            .await?;
        assert_eq!(
            res,
            AppendEntriesResponse::PartialSuccess(Some(log_id(1, 1, MAX_PAYLOAD_ENTRIES - 1)))
        );
        Ok(())
    }

    #[tokio::test]
    async fn server_limit_errors_reach_the_sender() -> TestResult {
        // The trap: a server left at tonic's 4 MiB default. The failure must come back with
        // its reason, not stall silently.
        let dir = tempfile::tempdir()?;
        let (tx, _rx) = tokio::sync::mpsc::unbounded_channel();
        let (addr, _stop) = serve(RaftServiceServer::new(StandIn {
            dir: dir.path().to_path_buf(),
            received: tx,
        }))
        .await?;
        let mut client = peer(1, addr).await;
        match client
            .append_entries(append_request(64, 100 * 1024), option())
            .await
        {
            Err(RPCError::Network(e)) => assert!(e.to_string().contains("too large"), "{e}"),
            other => panic!("expected a Network error, got {other:?}"),
        }
        Ok(())
    }

    #[tokio::test]
    async fn remote_status_and_timeout_are_mapped() -> TestResult {
        let dir = tempfile::tempdir()?;
        let (addr, _stop, _rx) = stand_in(dir.path()).await?;
        let mut network = Network::with_config(
            99,
            NetworkConfig {
                min_rpc_timeout: Duration::from_millis(200),
                ..NetworkConfig::default()
            },
        );
        let mut client = network.new_client(1, &node_addr(addr)).await;
        let res = client
            .vote(VoteRequest::new(vote(2, 99), None), option())
            .await;
        match res {
            Err(RPCError::Timeout(t)) => {
                assert_eq!((t.id, t.target), (99, 1));
                assert_eq!(t.timeout, Duration::from_millis(200));
            }
            other => panic!("expected a Timeout, got {other:?}"),
        }
        let req = TransferLeaderRequest::new(vote(2, 99), 1, None);
        match client.transfer_leader(req, option()).await {
            Err(RPCError::Network(e)) => assert!(e.to_string().contains("stand-in refuses")),
            other => panic!("expected a Network error, got {other:?}"),
        }
        Ok(())
    }

    #[tokio::test]
    async fn closed_port_and_bad_address_are_unreachable() -> TestResult {
        let listener = TcpListener::bind("127.0.0.1:0").await?;
        let addr = listener.local_addr()?;
        drop(listener);
        let mut client = peer(1, addr).await;
        match client
            .vote(VoteRequest::new(vote(2, 99), None), option())
            .await
        {
            Err(RPCError::Unreachable(_)) => {}
            other => panic!("expected Unreachable, got {other:?}"),
        }
        let bad = NodeAddr {
            raft_addr: "not a host:port".to_owned(),
            api_addr: String::new(),
        };
        let mut client = Network::new(99).new_client(2, &bad).await;
        match client.append_entries(append_request(1, 1), option()).await {
            Err(RPCError::Unreachable(_)) => {}
            other => panic!("expected Unreachable, got {other:?}"),
        }
        Ok(())
    }

    #[tokio::test]
    async fn channels_are_cached_per_peer_and_address() {
        let mut network = Network::new(1);
        let a = NodeAddr {
            raft_addr: "127.0.0.1:1".to_owned(),
            api_addr: String::new(),
        };
        let b = NodeAddr {
            raft_addr: "127.0.0.1:2".to_owned(),
            api_addr: String::new(),
        };
        network.new_client(2, &a).await;
        network.new_client(2, &a).await;
        network.new_client(3, &a).await;
        assert_eq!(network.channels.len(), 2);
        network.new_client(2, &b).await;
        assert_eq!(network.channels.len(), 2);
        assert_eq!(network.channels[&2].0, "127.0.0.1:2");
    }

    fn test_snapshot(path: PathBuf) -> SnapshotOf<TypeConfig, SnapshotFile> {
        Snapshot {
            meta: SnapshotMetaOf::<TypeConfig> {
                last_log_id: Some(log_id(4, 1, 1234)),
                ..Default::default()
            },
            snapshot: SnapshotFile::complete(path),
        }
    }

    fn never_cancel() -> impl Future<Output = ReplicationClosed> + Send + 'static {
        std::future::pending()
    }

    #[tokio::test]
    async fn multi_mib_snapshot_arrives_byte_identical() -> TestResult {
        let dir = tempfile::tempdir()?;
        let (addr, _stop, mut rx) = stand_in(&dir.path().join("recv")).await?;
        // 7.3 MiB of non-repeating bytes: several chunks and a short last one.
        let len = 7 * 1024 * 1024 + 300 * 1024 + 17;
        let mut data = Vec::with_capacity(len);
        let mut x: u32 = 0x1234_5678;
        while data.len() < len {
            x ^= x << 13;
            x ^= x >> 17;
            x ^= x << 5;
            data.push((x >> 24) as u8);
        }
        let src = dir.path().join("source.snap");
        std::fs::write(&src, &data)?;

        let mut client = peer(1, addr).await;
        for chunk in [
            None,
            Some(3 * 1024 * 1024),
            Some(len),
            Some(1 << 30),
            Some(65_537),
        ] {
            let snapshot = test_snapshot(src.clone());
            let resp = match chunk {
                // openraft's path: no hint, so DEFAULT_SNAPSHOT_CHUNK_BYTES.
                None => {
                    let option = RPCOption::new(Duration::from_millis(200));
                    client
                        .full_snapshot(vote(4, 1), snapshot, never_cancel(), option)
                        .await?
                }
                Some(c) => {
                    client
                        .send_snapshot(vote(4, 1), snapshot, never_cancel(), c)
                        .await?
                }
            };
            assert_eq!(resp.vote, vote(4, 1));
            let (v, kept, bytes) = rx.recv().await.ok_or("no snapshot received")?;
            assert_eq!(v, vote(4, 1));
            assert_eq!(bytes, len as u64);
            assert!(std::fs::read(&kept)? == data, "snapshot differs");
        }

        // An empty snapshot file still sends the meta.
        let empty = dir.path().join("empty.snap");
        std::fs::write(&empty, b"")?;
        client
            .full_snapshot(vote(4, 1), test_snapshot(empty), never_cancel(), option())
            .await?;
        let (_, kept, bytes) = rx.recv().await.ok_or("no snapshot received")?;
        assert_eq!(bytes, 0);
        assert!(std::fs::read(&kept)?.is_empty());
        Ok(())
    }

    #[tokio::test]
    async fn snapshot_errors_are_reported() -> TestResult {
        let dir = tempfile::tempdir()?;
        let (addr, _stop, _rx) = stand_in(dir.path()).await?;
        let mut client = peer(1, addr).await;
        // Missing file: a local storage error, nothing sent.
        let res = client
            .full_snapshot(
                vote(4, 1),
                test_snapshot(dir.path().join("missing")),
                never_cancel(),
                option(),
            )
            .await;
        assert!(
            matches!(res, Err(StreamingError::StorageError(_))),
            "{res:?}"
        );

        // Cancelled by openraft.
        let src = dir.path().join("some.snap");
        std::fs::write(&src, vec![7u8; 1024])?;
        let res = client
            .full_snapshot(
                vote(4, 1),
                test_snapshot(src.clone()),
                std::future::ready(ReplicationClosed::new("test")),
                option(),
            )
            .await;
        assert!(matches!(res, Err(StreamingError::Closed(_))), "{res:?}");

        // Unreachable peer.
        let listener = TcpListener::bind("127.0.0.1:0").await?;
        let closed = listener.local_addr()?;
        drop(listener);
        let res = peer(2, closed)
            .await
            .full_snapshot(vote(4, 1), test_snapshot(src), never_cancel(), option())
            .await;
        assert!(
            matches!(res, Err(StreamingError::Unreachable(_))),
            "{res:?}"
        );
        Ok(())
    }

    #[tokio::test]
    async fn snapshot_chunk_over_the_server_limit_is_reported() -> TestResult {
        let dir = tempfile::tempdir()?;
        let recv = dir.path().join("recv");
        let (tx, _rx) = tokio::sync::mpsc::unbounded_channel();
        let svc = RaftServiceServer::new(StandIn {
            dir: recv.clone(),
            received: tx,
        })
        .max_decoding_message_size(2 * 1024 * 1024);
        let (addr, _stop) = serve(svc).await?;
        let src = dir.path().join("big.snap");
        std::fs::write(&src, vec![5u8; 8 * 1024 * 1024])?;
        let res = peer(1, addr)
            .await
            .send_snapshot(
                vote(4, 1),
                test_snapshot(src),
                never_cancel(),
                3 * 1024 * 1024,
            )
            .await;
        // A 3 MiB chunk exceeds the server's 2 MiB limit: the reason reaches the sender.
        match res {
            Err(StreamingError::Network(e)) => assert!(e.to_string().contains("too large"), "{e}"),
            other => panic!("expected a Network error, got {other:?}"),
        }
        let left = std::fs::read_dir(&recv).map(|d| d.count()).unwrap_or(0);
        assert_eq!(left, 0, "partial snapshot file left behind");
        Ok(())
    }

    #[tokio::test]
    async fn snapshot_read_error_does_not_end_the_stream() -> TestResult {
        // A directory opens as a file but fails on read, and a producer that stops without its
        // end message: the stream must report the error and stay open (never a clean end,
        // which the receiver would take for a complete file).
        let dir = tempfile::tempdir()?;
        let unreadable = SnapshotFile::complete(dir.path().to_path_buf());
        let (producer_tx, stopped) = tokio::sync::mpsc::channel(1);
        producer_tx.send(Ok(Some(vec![1, 2, 3]))).await?;
        drop(producer_tx);
        for (bytes, kind) in [
            (
                crate::snapshot_file::wire_chunks(unreadable, 1024),
                io::ErrorKind::IsADirectory,
            ),
            (stopped, io::ErrorKind::Other),
        ] {
            let (tx, rx) = oneshot::channel();
            let mut chunks = Box::pin(snapshot_chunks(vec![1], bytes, tx));
            for sent in 0.. {
                match tokio::time::timeout(Duration::from_millis(300), chunks.next()).await {
                    Err(_) => break,
                    Ok(Some(_)) => assert!(sent < 10, "more chunks than were produced"),
                    Ok(None) => panic!("the stream must stay pending after a read error"),
                }
            }
            let err = rx.await?;
            assert_eq!(err.kind(), kind, "{err}");
        }
        Ok(())
    }

    // -- real Raft nodes over the transport --------------------------------------------------

    struct TestNode {
        raft: LedgerRaft,
        addr: SocketAddr,
        snapshot_dir: PathBuf,
        _stop: oneshot::Sender<()>,
        _dir: tempfile::TempDir,
    }

    async fn start_node(id: u64) -> Result<TestNode, Box<dyn std::error::Error + Send + Sync>> {
        let dir = tempfile::tempdir()?;
        let sample = SampleNetwork::new()?;
        let db = DurableDb::open(dir.path().join("db"))?;
        let log = LogStorage::new(LogStore::open(db.clone())?);
        let snapshot_dir = dir.path().join("snapshots");
        let ledger_id = sample.genesis.ledger_id;
        let sm = LedgerStateMachine::open(
            &db,
            sample.genesis,
            snapshot_dir.clone(),
            dir.path().join("ledger.map"),
        )?;
        let config = Config {
            heartbeat_interval: 100,
            election_timeout_min: 1000,
            election_timeout_max: 2000,
            snapshot_policy: SnapshotPolicy::Never,
            max_in_snapshot_log_to_keep: 0,
            ..Default::default()
        }
        .validate()?;
        check_raft_config(&config)?;
        let network = Network::new(id).for_ledger(ledger_id);
        let raft = LedgerRaft::new(id, Arc::new(config), network, log, sm).await?;
        let (addr, stop) = serve(raft_service(
            raft.clone(),
            id,
            ledger_id,
            snapshot_dir.clone(),
        ))
        .await?;
        Ok(TestNode {
            raft,
            addr,
            snapshot_dir,
            _stop: stop,
            _dir: dir,
        })
    }

    #[tokio::test]
    async fn real_raft_accepts_a_full_size_batch() -> TestResult {
        let node = start_node(2).await?;
        let mut client = peer(2, node.addr).await;
        let resp = client
            .append_entries(append_request(64, 100 * 1024), option())
            .await?;
        assert_eq!(resp, AppendEntriesResponse::Success);
        let resp = client
            .vote(
                VoteRequest::new(vote(1, 1), Some(log_id(1, 1, 63))),
                option(),
            )
            .await?;
        assert_eq!(resp.vote, vote(1, 1));
        node.raft.shutdown().await?;
        Ok(())
    }

    #[tokio::test]
    async fn real_raft_refuses_calls_meant_for_another_ledger_or_node() -> TestResult {
        let node = start_node(2).await?;
        let ours = SampleNetwork::new()?.genesis.ledger_id;
        let other = Digest::from_slice(&[7u8; 32]).ok_or("digest")?;
        let ask = |ledger: Digest, target: u64| {
            let addr = node_addr(node.addr);
            async move {
                Network::new(1)
                    .for_ledger(ledger)
                    .new_client(target, &addr)
                    .await
                    .vote(VoteRequest::new(vote(1, 1), None), option())
                    .await
            }
        };
        let err = ask(other, 2).await.unwrap_err().to_string();
        assert!(err.contains("serves ledger"), "{err}");
        // A cluster whose membership gives node 3 this node's address.
        let err = ask(ours, 3).await.unwrap_err().to_string();
        assert!(err.contains("this is node 2"), "{err}");
        // Neither refusal reached Raft: the right call is answered with its vote unchanged.
        assert_eq!(ask(ours, 2).await?.vote, vote(1, 1));
        node.raft.shutdown().await?;
        Ok(())
    }

    #[tokio::test]
    async fn real_raft_refuses_garbage_and_cleans_up() -> TestResult {
        let node = start_node(2).await?;
        let channel = Endpoint::from_shared(format!("http://{}", node.addr))?.connect_lazy();
        let mut raw = RaftServiceClient::new(channel);

        let status = raw
            .append_entries(RaftPayload {
                data: vec![1, 2, 3],
            })
            .await
            .unwrap_err();
        assert_eq!(status.code(), Code::InvalidArgument);

        let no_meta = futures::stream::iter(vec![SnapshotChunk {
            meta: vec![],
            data: vec![1; 10],
        }]);
        let status = raw.install_snapshot(no_meta).await.unwrap_err();
        assert_eq!(status.code(), Code::InvalidArgument, "{status:?}");

        let meta = encode(&(vote(1, 1), SnapshotMetaOf::<TypeConfig>::default()))?;
        let two_metas = futures::stream::iter(vec![
            SnapshotChunk {
                meta: meta.clone(),
                data: vec![1; 10],
            },
            SnapshotChunk {
                meta: meta.clone(),
                data: vec![1; 10],
            },
        ]);
        let status = raw.install_snapshot(two_metas).await.unwrap_err();
        assert_eq!(status.code(), Code::InvalidArgument, "{status:?}");

        // The sender goes away mid-stream: the partial file is removed.
        let first = futures::stream::iter(vec![SnapshotChunk {
            meta,
            data: vec![2; 1 << 20],
        }]);
        let stalled = first.chain(futures::stream::pending());
        let call = raw.install_snapshot(stalled);
        let incoming = node.snapshot_dir.join("incoming");
        let saw_partial = {
            let incoming = incoming.clone();
            async move {
                loop {
                    let n = std::fs::read_dir(&incoming).map(|d| d.count()).unwrap_or(0);
                    if n > 0 {
                        return;
                    }
                    tokio::time::sleep(Duration::from_millis(10)).await;
                }
            }
        };
        tokio::select! {
            res = call => panic!("the call must not finish: {res:?}"),
            () = saw_partial => {}
        }
        let mut empty = false;
        for _ in 0..200 {
            if std::fs::read_dir(&incoming)?.count() == 0 {
                empty = true;
                break;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        assert!(empty, "partial snapshot file left behind");
        node.raft.shutdown().await?;
        Ok(())
    }

    #[tokio::test]
    async fn cluster_replicates_and_catches_up_by_snapshot() -> TestResult {
        let t = Some(Duration::from_secs(20));
        let n1 = start_node(1).await?;
        let n2 = start_node(2).await?;
        let n3 = start_node(3).await?;
        n1.raft
            .initialize(BTreeMap::from([(1, node_addr(n1.addr))]))
            .await?;
        n1.raft
            .wait(t)
            .leader_with_quorum_acked(None, "n1 leads")
            .await?;
        n1.raft
            .wait(t)
            .applied_index_at_least(Some(1), "blank entry applied")
            .await?;
        n1.raft.add_learner(2, node_addr(n2.addr), true).await?;
        n1.raft.change_membership([1, 2], false).await?;

        // Large entries, written concurrently so they are replicated in big batches.
        let mut writes = Vec::new();
        for i in 0..40u8 {
            let raft = n1.raft.clone();
            writes.push(tokio::spawn(async move {
                raft.client_write(LedgerRequest::Submit {
                    event: vec![i; 100 * 1024],
                    sequenced_at: 1_780_272_000_000,
                })
                .await
            }));
        }
        for w in writes {
            w.await??;
        }
        let last = n1
            .raft
            .metrics()
            .borrow_watched()
            .last_applied
            .ok_or("nothing applied")?;
        n2.raft
            .wait(t)
            .applied_index_at_least(Some(last.index), "n2 caught up by AppendEntries")
            .await?;

        n1.raft.trigger().snapshot().await?;
        n1.raft.wait(t).snapshot(last, "snapshot built").await?;
        n1.raft.trigger().purge_log(last.index).await?;
        n1.raft.wait(t).purged(Some(last), "log purged").await?;

        n1.raft.add_learner(3, node_addr(n3.addr), true).await?;
        n3.raft
            .wait(t)
            .applied_index_at_least(Some(last.index), "n3 caught up by snapshot")
            .await?;
        let m3 = n3.raft.metrics().borrow_watched().clone();
        assert_eq!(
            m3.snapshot,
            Some(last),
            "n3 must have installed the snapshot"
        );
        let incoming = n3.snapshot_dir.join("incoming");
        assert_eq!(
            std::fs::read_dir(&incoming)?.count(),
            0,
            "received file left behind"
        );

        // TransferLeader goes over the transport too.
        n1.raft.trigger().transfer_leader(2).await?;
        n2.raft
            .wait(t)
            .current_leader(2, "leadership transferred to n2")
            .await?;

        for n in [&n1, &n2, &n3] {
            n.raft.shutdown().await?;
        }
        Ok(())
    }
}

//! The openraft type configuration and the commands the ledger replicates.
//!
//! Every openraft type the project uses is named here or in this crate, so an openraft upgrade
//! touches one crate.

use std::fmt;
use std::path::PathBuf;

use serde::{Deserialize, Serialize};

/// A command in the Raft log.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum LedgerRequest {
    /// A client's signed event (an encoded `wasteledger.v1.SignedEvent`), stamped by the leader
    /// with its ledger time. Every node decides it again in `apply`. Leaders now propose
    /// [`LedgerRequest::SubmitBatch`]; this form stays so logs and snapshots' tails written
    /// before batching still apply.
    Submit {
        /// Encoded `SignedEvent`, exactly as received.
        event: Vec<u8>,
        /// Leader's time in ms since the epoch; the state machine keeps it non-decreasing.
        sequenced_at: i64,
    },
    /// Several clients' signed events in one Raft entry, decided in order (see
    /// [`crate::proposer`]). Each is decided on its own: one refusal does not affect the others.
    SubmitBatch {
        /// The events, in the order the leader received them.
        events: Vec<StampedEvent>,
    },
    /// A witness cosignature of a checkpoint, replicated so every node holds it.
    Cosign {
        /// Checkpoint tree size.
        size: u64,
        /// Checkpoint tree root.
        root: [u8; 32],
        /// Checkpoint map root.
        map_root: [u8; 32],
        /// Checkpoint time (ms).
        time_ms: i64,
        /// Witness name (as in the genesis).
        witness: String,
        /// Key hint (4 bytes) and ed25519 signature (64 bytes).
        signature: Vec<u8>,
    },
}

impl fmt::Display for LedgerRequest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            LedgerRequest::Submit {
                event,
                sequenced_at,
            } => {
                write!(f, "submit({} bytes @ {sequenced_at})", event.len())
            }
            LedgerRequest::SubmitBatch { events } => {
                let bytes: usize = events.iter().map(|e| e.event.len()).sum();
                write!(f, "submit-batch({} events, {bytes} bytes)", events.len())
            }
            LedgerRequest::Cosign { size, witness, .. } => write!(f, "cosign({size} by {witness})"),
        }
    }
}

/// One client's signed event as the leader proposes it: the bytes exactly as received and the
/// leader's time stamp.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StampedEvent {
    /// Encoded `SignedEvent`, exactly as received.
    pub event: Vec<u8>,
    /// Leader's time in ms since the epoch; the state machine keeps it non-decreasing.
    pub sequenced_at: i64,
}

/// The state machine's answer to one log entry.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum LedgerResponse {
    /// The event became ledger entry `index`.
    Accepted {
        /// Ledger index.
        index: u64,
        /// Event hash.
        event_hash: [u8; 32],
        /// Merkle leaf hash.
        leaf_hash: [u8; 32],
        /// Tree size that includes it.
        tree_size: u64,
    },
    /// The event was refused deterministically (identical on every node).
    Rejected {
        /// Stable reason code, e.g. `custody.stale_chain`.
        code: String,
        /// Class of the refusal (`RejectionKind::name`), which decides the API status code.
        kind: String,
        /// Human-readable message.
        message: String,
        /// For a resubmitted identical event: where the original is.
        duplicate_of: Option<u64>,
    },
    /// A cosignature was recorded.
    Cosigned {
        /// Checkpoint size.
        size: u64,
        /// Distinct valid cosignatures now held for it.
        cosigners: u32,
    },
    /// A cosignature was not recorded (stale, unknown witness, bad signature).
    CosignRefused {
        /// Why.
        reason: String,
    },
    /// A blank or membership entry: nothing to report.
    Empty,
    /// The answers to a [`LedgerRequest::SubmitBatch`], one per event, in its order.
    Batch(Vec<LedgerResponse>),
}

/// How to reach a node.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct NodeAddr {
    /// Raft transport address, `host:port`.
    pub raft_addr: String,
    /// Public API address, `host:port` (for redirecting clients).
    pub api_addr: String,
}

impl fmt::Display for NodeAddr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "raft={} api={}", self.raft_addr, self.api_addr)
    }
}

/// A snapshot kept as a file (see [`crate::snapshot_file`]): written, fsynced and renamed into
/// place, streamed to peers in chunks.
#[derive(Debug, Clone)]
pub struct SnapshotFile {
    /// Path of the snapshot file.
    pub path: PathBuf,
    /// For a snapshot this node built of its own state: where the settled history the file
    /// leaves out is read from when it is sent. `None` for a complete file.
    pub settled: Option<crate::snapshot_file::SettledPart>,
}

impl SnapshotFile {
    /// A complete snapshot file (one received from a peer).
    pub fn complete(path: PathBuf) -> SnapshotFile {
        SnapshotFile {
            path,
            settled: None,
        }
    }
}

openraft::declare_raft_types!(
    /// openraft configuration of a WasteLedger cluster.
    pub TypeConfig:
        D = LedgerRequest,
        R = LedgerResponse,
        NodeId = u64,
        Node = NodeAddr,
        AsyncRuntime = openraft_rt_tokio::TokioRuntime,
);

/// The Raft handle of a node.
pub type LedgerRaft = openraft::Raft<TypeConfig, crate::state_machine::LedgerStateMachine>;
/// A Raft log entry.
pub type Entry = openraft::alias::EntryOf<TypeConfig>;
/// A Raft log id.
pub type LogId = openraft::alias::LogIdOf<TypeConfig>;
/// A Raft vote.
pub type Vote = openraft::alias::VoteOf<TypeConfig>;

/// Version byte in front of every postcard payload this crate stores or sends, so a format
/// change is detected instead of misread.
pub const WIRE_VERSION: u8 = 1;

/// Why a stored or received payload could not be decoded.
#[derive(Debug, thiserror::Error)]
pub enum CodecError {
    /// Empty, or written by another format version.
    #[error("payload format version {0:?} is not supported (expected {WIRE_VERSION})")]
    Version(Option<u8>),
    /// postcard failed.
    #[error("payload does not decode: {0}")]
    Postcard(#[from] postcard::Error),
}

/// Encodes a value as `WIRE_VERSION ‖ postcard(value)`.
pub fn encode<T: Serialize>(value: &T) -> Result<Vec<u8>, CodecError> {
    let mut out = vec![WIRE_VERSION];
    out.extend_from_slice(&postcard::to_stdvec(value)?);
    Ok(out)
}

/// Decodes `WIRE_VERSION ‖ postcard(value)`.
pub fn decode<T: for<'de> Deserialize<'de>>(bytes: &[u8]) -> Result<T, CodecError> {
    match bytes.split_first() {
        Some((&WIRE_VERSION, rest)) => Ok(postcard::from_bytes(rest)?),
        other => Err(CodecError::Version(other.map(|(v, _)| *v))),
    }
}

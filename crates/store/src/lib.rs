//! # wasteledger-store
//!
//! Durable storage for a WasteLedger node, on sled 0.34.7, in plain synchronous Rust (std
//! threads, no async runtime); the openraft adapter in another crate wraps it.
//!
//! - [`durable`]: [`DurableDb`], which opens sled and makes writes really durable (sled's own
//!   `flush()` is not an fsync), with a group committer that shares one fsync among concurrent
//!   requests; [`DurableTree`] and [`WriteBatch`] enforce the value size limit that keeps data out
//!   of sled's never-synced blob files.
//! - [`log`]: [`LogStore`], the raw Raft log (entries, vote, committed, purge point) as opaque
//!   bytes.
//! - [`state`]: [`state::LedgerStore`], the ledger state machine's data (entries, Merkle
//!   nodes, subject states, indexes), one atomic batch per applied group of entries, with the
//!   integrity checks (`state::integrity`: the entries since the last integrity checkpoint at
//!   start-up, the settled history below it in the background).
//! - [`map_file`]: [`map_file::MapFile`], the completeness map's node versions in an
//!   append-only file beside sled, derived from the entries and rebuilt from them when needed.
//! - [`hashed_io`]: writing and reading files that end in a BLAKE3 checksum, hashed in large
//!   chunks (snapshot files, the map index).
//! - [`error`]: [`StoreError`], the one error type.

pub mod durable;
pub mod error;
pub mod hashed_io;
pub mod log;
pub mod map_file;
pub mod state;

pub use durable::{
    Closed, DurableDb, DurableOptions, DurableTree, MAX_KEY_BYTES, MAX_VALUE_BYTES, SEGMENT_SIZE,
    SLED_BLOB_THRESHOLD, Stall, SyncPhase, SyncProbe, SyncStats, WriteBatch, check_sizes,
    rename_durably, sync_dir,
};
pub use error::StoreError;
pub use log::LogStore;
/// sled's cheaply cloneable byte buffer, returned by [`DurableTree`] reads.
pub use sled::IVec;

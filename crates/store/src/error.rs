//! The crate's error type.
//!
//! This module owns [`StoreError`], the one error every fallible operation of the crate returns.
//! Variants are split by what the caller can do about them: I/O and sled failures mean the disk
//! or the database is in trouble (the node should stop and be looked at), size and contiguity
//! errors mean the caller passed something wrong (a bug above this crate), and corruption errors
//! mean bytes on disk do not have the shape this crate writes.

use std::io;

/// Everything that can go wrong in the storage crate.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum StoreError {
    /// sled reported an error (I/O underneath, corruption it detected, or an unsupported
    /// configuration).
    #[error(
        "sled database error: {0}; check the disk and the data directory, and do not keep \
         running on a database that reports corruption"
    )]
    Sled(#[from] sled::Error),

    /// An I/O operation of this crate failed, most importantly an fsync. After a failed fsync
    /// the kernel may have dropped the dirty pages, so the database refuses to report anything
    /// as durable again until it is reopened.
    #[error(
        "storage I/O failed: {0}; writes since the last successful sync may not be durable: \
         stop the node, check the disk, and restart it so it recovers from what is on disk"
    )]
    Io(#[from] io::Error),

    /// A value is larger than [`crate::MAX_VALUE_BYTES`]. Larger values could be written by sled
    /// to separate blob files, which sled never fsyncs.
    #[error(
        "value of {len} bytes exceeds the {max}-byte limit of the durable store; \
         split it or store it outside the database"
    )]
    ValueTooLarge {
        /// Length of the rejected value.
        len: usize,
        /// The limit.
        max: usize,
    },

    /// A key is larger than [`crate::MAX_KEY_BYTES`].
    #[error(
        "key of {len} bytes exceeds the {max}-byte limit of the durable store; use a shorter key (e.g. a hash)"
    )]
    KeyTooLarge {
        /// Length of the rejected key.
        len: usize,
        /// The limit.
        max: usize,
    },

    /// A log append would leave a hole in the log (or go backwards): Raft only ever looks at the
    /// last log id, so a hole would silently break its safety.
    #[error(
        "log append is not contiguous: expected index {expected}, got {got}; \
         truncate conflicting entries first, and append entries in index order"
    )]
    NonContiguous {
        /// The index the next entry must have.
        expected: u64,
        /// The index the caller supplied.
        got: u64,
    },

    /// The log's last index is `u64::MAX`; nothing can follow it.
    #[error("log index overflow: the last index is already u64::MAX")]
    IndexOverflow,

    /// A purge asked to purge fewer entries than an earlier purge already did.
    #[error(
        "purge up to index {requested} would move the purge point backwards \
         (already purged up to {purged}); purges must be monotonic"
    )]
    PurgeBackwards {
        /// The index already purged up to.
        purged: u64,
        /// The index the caller asked for.
        requested: u64,
    },

    /// A key in one of the log store's trees is not the 8-byte big-endian index this crate
    /// writes.
    #[error(
        "corrupt key in tree {tree:?}: expected an 8-byte big-endian index, found {len} bytes; \
         the data directory was written by something else or is damaged"
    )]
    CorruptKey {
        /// The sled tree the key was found in.
        tree: &'static str,
        /// The length of the key found.
        len: usize,
    },

    /// Stored bytes of the named kind do not decode (used by modules that keep their own
    /// encodings, e.g. the state machine's).
    #[error("corrupt stored data: {0} does not decode; the data directory is damaged")]
    Corrupt(&'static str),

    /// Stored data decodes but contradicts other stored data (e.g. a Merkle tree that does not
    /// match its entries).
    #[error(
        "inconsistent stored data: {0}; the data directory is damaged or was written by a different version"
    )]
    Inconsistent(String),

    /// A metadata value does not have the shape this crate writes.
    #[error("corrupt metadata {key:?}: {detail}; the data directory is damaged")]
    CorruptMeta {
        /// The metadata key.
        key: &'static str,
        /// What is wrong with it.
        detail: String,
    },
}

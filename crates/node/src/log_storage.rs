//! The openraft log storage: [`LogStorage`] (`RaftLogStorage`) and [`LogReader`]
//! (`RaftLogReader`) over the durable sled Raft log, [`wasteledger_store::LogStore`].
//!
//! [`LogStore`] stores opaque bytes; this module gives them openraft's types. Every value is
//! written with [`types::encode`] (`WIRE_VERSION ‖ postcard`), so a format change is detected
//! instead of misread:
//!
//! | what | stored as |
//! |---|---|
//! | entry at index `i` | key `i`, value `encode(&Entry)` |
//! | vote | `encode(&Vote)` |
//! | committed | `encode(&Option<LogId>)` |
//! | last purged log id | `encode(&LogId)`, with its index as [`LogStore`]'s purge point |
//!
//! # Durability and ordering
//!
//! [`LogStore`] gives each operation the durability openraft asks for: `save_vote`, `truncate`
//! and `purge` are synced before they return; `append` returns once the entries are readable and
//! runs its completion callback on the group committer's thread only after an fsync that
//! covers them, and that is where [`IOFlushed::io_completed`] is called. Every write goes to
//! the same sled log, in call order, so no write becomes durable before an earlier one (see
//! the [`wasteledger_store::log`] module docs). openraft calls the mutating methods one at a
//! time (`&mut self`), and each returns only after its write entered sled.
//!
//! # Blocking calls
//!
//! The store is synchronous. Calls that include an fsync (`save_vote`, `truncate_after`,
//! `purge`) run on tokio's blocking pool through [`tokio::task::spawn_blocking`], so an fsync
//! that takes milliseconds (or much longer on a struggling disk) never stalls a runtime worker
//! that also drives the network and timers. The method awaits the task, so the write is
//! durable, and ordered before the next call, when the method returns. Everything else
//! (`append`, which only writes to sled's in-memory log and queues a sync; `save_committed`,
//! which is not synced; and all reads) is a short in-memory sled operation and runs inline:
//! moving it to another thread would cost more than it saves, and `append` must be readable
//! when it returns anyway.
//!
//! # Errors
//!
//! Failures are [`LogStorageError`]s, handed to openraft as [`io::Error`]s (the trait's error
//! type) with an [`io::ErrorKind`] that keeps the underlying I/O error's kind where there is one.
//! openraft treats a storage error as fatal and stops the node; that is intended: a log that
//! cannot be written or read back must not keep voting.

use std::fmt::Debug;
use std::io;
use std::ops::{Bound, RangeBounds};
use std::sync::Arc;

use openraft::OptionalSend;
use openraft::storage::{IOFlushed, LogState, RaftLogReader, RaftLogStorage};
use wasteledger_store::{LogStore, StoreError};

use crate::types::{self, CodecError, Entry, LogId, TypeConfig, Vote};

/// Why a log storage operation failed. Converted to [`io::Error`] at the openraft boundary; the
/// original is reachable through [`io::Error::get_ref`].
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum LogStorageError {
    /// The underlying store failed.
    #[error("raft log: {op} failed: {source}")]
    Store {
        /// The operation, e.g. `save vote`.
        op: &'static str,
        /// What the store reported.
        #[source]
        source: StoreError,
    },
    /// A value could not be encoded.
    #[error("raft log: cannot encode the {what}: {source}")]
    Encode {
        /// What was being encoded.
        what: &'static str,
        /// The codec's error.
        #[source]
        source: CodecError,
    },
    /// A stored value does not decode.
    #[error(
        "raft log: the stored {what} does not decode: {source}; the data directory is damaged \
         or was written by another version"
    )]
    Decode {
        /// What was being decoded, e.g. `entry at index 7`.
        what: String,
        /// The codec's error.
        #[source]
        source: CodecError,
    },
    /// An entry is stored under an index other than its own.
    #[error(
        "raft log: the entry stored at index {key} has log id index {found}; the log is damaged"
    )]
    Misplaced {
        /// The index it is stored under.
        key: u64,
        /// The index in its log id.
        found: u64,
    },
    /// The log has a hole that no purge explains.
    #[error(
        "raft log: entries {after} and {next} are adjacent in the log but not consecutive; \
         the log is damaged"
    )]
    Hole {
        /// The entry before the hole.
        after: u64,
        /// The entry after the hole.
        next: u64,
    },
    /// The last index the store reports has no entry.
    #[error("raft log: the last entry, at index {0}, is missing; the log is damaged")]
    MissingLast(u64),
    /// The blocking task running a synced operation panicked or was cancelled.
    #[error("raft log: the blocking task running {op} did not finish: {source}")]
    Task {
        /// The operation.
        op: &'static str,
        /// tokio's report.
        #[source]
        source: tokio::task::JoinError,
    },
}

impl From<LogStorageError> for io::Error {
    fn from(error: LogStorageError) -> io::Error {
        let kind = match &error {
            LogStorageError::Store {
                source: StoreError::Io(e),
                ..
            } => e.kind(),
            LogStorageError::Decode { .. }
            | LogStorageError::Misplaced { .. }
            | LogStorageError::Hole { .. }
            | LogStorageError::MissingLast(_) => io::ErrorKind::InvalidData,
            _ => io::ErrorKind::Other,
        };
        io::Error::new(kind, error)
    }
}

/// Shorthand for a store error with the operation that met it.
fn store_err(op: &'static str) -> impl FnOnce(StoreError) -> LogStorageError {
    move |source| LogStorageError::Store { op, source }
}

fn encode<T: serde::Serialize>(what: &'static str, value: &T) -> Result<Vec<u8>, LogStorageError> {
    types::encode(value).map_err(|source| LogStorageError::Encode { what, source })
}

fn decode<T: for<'de> serde::Deserialize<'de>>(
    what: impl FnOnce() -> String,
    bytes: &[u8],
) -> Result<T, LogStorageError> {
    types::decode(bytes).map_err(|source| LogStorageError::Decode {
        what: what(),
        source,
    })
}

/// Decodes the entry stored under `index` and checks that it is the entry for that index.
fn decode_entry(index: u64, bytes: &[u8]) -> Result<Entry, LogStorageError> {
    let entry: Entry = decode(|| format!("entry at index {index}"), bytes)?;
    if entry.log_id.index != index {
        return Err(LogStorageError::Misplaced {
            key: index,
            found: entry.log_id.index,
        });
    }
    Ok(entry)
}

/// Runs a synced store operation on tokio's blocking pool and waits for it.
async fn blocking<F>(op: &'static str, f: F) -> Result<(), LogStorageError>
where
    F: FnOnce() -> Result<(), StoreError> + Send + 'static,
{
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|source| LogStorageError::Task { op, source })?
        .map_err(store_err(op))
}

/// Reads the entries in `range` that the log holds, in order, without holes.
///
/// Entries can be missing at the front (purged) or at the end (not appended yet). sled
/// iteration is not a snapshot, so a purge running concurrently (openraft purges from the core
/// while replication tasks read) can delete entries ahead of this forward scan and leave a gap
/// in what it saw; everything before such a gap has been purged, so it is dropped. A gap that
/// the purge point does not explain is corruption and an error.
fn read_range(
    store: &LogStore,
    range: &impl RangeBounds<u64>,
) -> Result<Vec<Entry>, LogStorageError> {
    let start = match range.start_bound() {
        Bound::Included(&s) => s,
        Bound::Excluded(&s) => match s.checked_add(1) {
            Some(s) => s,
            None => return Ok(Vec::new()),
        },
        Bound::Unbounded => 0,
    };
    // Bounded by the last entry, so an open range never scans (or allocates) beyond the log.
    let Some(last) = store.last_index() else {
        return Ok(Vec::new());
    };
    let end_inclusive = match range.end_bound() {
        Bound::Included(&e) => e.min(last),
        Bound::Excluded(&e) => match e.checked_sub(1) {
            Some(e) => e.min(last),
            None => return Ok(Vec::new()),
        },
        Bound::Unbounded => last,
    };
    if start > end_inclusive {
        return Ok(Vec::new());
    }
    let mut raw = store
        .range(start..end_inclusive.saturating_add(1))
        .map_err(store_err("read entries"))?;
    // `LogStore::range` is half-open, so index u64::MAX needs its own read.
    if end_inclusive == u64::MAX
        && let Some(bytes) = store.get(u64::MAX).map_err(store_err("read entries"))?
    {
        raw.push((u64::MAX, bytes));
    }

    let mut entries: Vec<Entry> = Vec::with_capacity(raw.len());
    for (index, bytes) in raw {
        if let Some(prev) = entries.last().map(|e| e.log_id.index)
            && prev.checked_add(1) != Some(index)
        {
            // Entries up to `index - 1` are gone; that is a concurrent purge only if the purge
            // point covers them.
            match store.purged_index() {
                Some(purged) if purged >= index.saturating_sub(1) => entries.clear(),
                _ => {
                    return Err(LogStorageError::Hole {
                        after: prev,
                        next: index,
                    });
                }
            }
        }
        entries.push(decode_entry(index, &bytes)?);
    }
    Ok(entries)
}

fn read_vote(store: &LogStore) -> Result<Option<Vote>, LogStorageError> {
    store
        .read_vote()
        .map_err(store_err("read vote"))?
        .map(|bytes| decode(|| "vote".to_owned(), &bytes))
        .transpose()
}

/// The Raft log of a node for openraft: entries, vote, committed log id and purge point, on a
/// [`LogStore`].
///
/// Hand it to `Raft::new`. Readers from [`get_log_reader`](RaftLogStorage::get_log_reader)
/// share the store, so they see every append as soon as `append` returns.
///
/// Deliberately not `Clone`: openraft's single owner serialises the writes, and the ordering
/// argument in the module docs relies on that. Keep a [`wasteledger_store::DurableDb`] clone
/// for anything else that needs the database.
///
/// The synced operations use [`tokio::task::spawn_blocking`], so the methods must run inside a
/// tokio runtime (openraft's `TokioRuntime` is one).
#[derive(Debug)]
pub struct LogStorage {
    store: Arc<LogStore>,
}

impl LogStorage {
    /// Wraps an opened [`LogStore`].
    pub fn new(store: LogStore) -> LogStorage {
        LogStorage {
            store: Arc::new(store),
        }
    }

    /// The underlying store (for its database handle and sync statistics).
    pub fn store(&self) -> &LogStore {
        &self.store
    }
}

/// A cheap-to-clone read handle on the log (one per openraft replication task).
#[derive(Debug, Clone)]
pub struct LogReader {
    store: Arc<LogStore>,
}

impl RaftLogReader<TypeConfig> for LogReader {
    async fn try_get_log_entries<RB: RangeBounds<u64> + Clone + Debug + OptionalSend>(
        &mut self,
        range: RB,
    ) -> Result<Vec<Entry>, io::Error> {
        Ok(read_range(&self.store, &range)?)
    }

    async fn read_vote(&mut self) -> Result<Option<Vote>, io::Error> {
        Ok(read_vote(&self.store)?)
    }
}

impl RaftLogReader<TypeConfig> for LogStorage {
    async fn try_get_log_entries<RB: RangeBounds<u64> + Clone + Debug + OptionalSend>(
        &mut self,
        range: RB,
    ) -> Result<Vec<Entry>, io::Error> {
        Ok(read_range(&self.store, &range)?)
    }

    async fn read_vote(&mut self) -> Result<Option<Vote>, io::Error> {
        Ok(read_vote(&self.store)?)
    }
}

impl RaftLogStorage<TypeConfig> for LogStorage {
    type LogReader = LogReader;

    async fn get_log_state(&mut self) -> Result<LogState<TypeConfig>, io::Error> {
        let last_purged_log_id: Option<LogId> = self
            .store
            .last_purged()
            .map_err(store_err("read purge point"))?
            .map(|bytes| decode(|| "last purged log id".to_owned(), &bytes))
            .transpose()?;
        let last_log_id = match self.store.last_index() {
            Some(index) => {
                let bytes = self
                    .store
                    .get(index)
                    .map_err(store_err("read last entry"))?
                    .ok_or(LogStorageError::MissingLast(index))?;
                Some(decode_entry(index, &bytes)?.log_id)
            }
            // Empty log: openraft's last log id is then the purge point.
            None => last_purged_log_id,
        };
        Ok(LogState {
            last_purged_log_id,
            last_log_id,
        })
    }

    async fn get_log_reader(&mut self) -> LogReader {
        LogReader {
            store: Arc::clone(&self.store),
        }
    }

    /// Durable when it returns (synced on the blocking pool).
    async fn save_vote(&mut self, vote: &Vote) -> Result<(), io::Error> {
        let bytes = encode("vote", vote)?;
        let store = Arc::clone(&self.store);
        blocking("save vote", move || store.save_vote(&bytes)).await?;
        Ok(())
    }

    /// Not synced: becomes durable with the next sync of anything (see
    /// [`LogStore::save_committed`]); openraft tolerates an older committed id after a crash.
    async fn save_committed(&mut self, committed: Option<LogId>) -> Result<(), io::Error> {
        let bytes = encode("committed log id", &committed)?;
        self.store
            .save_committed(Some(bytes))
            .map_err(store_err("save committed log id"))?;
        Ok(())
    }

    async fn read_committed(&mut self) -> Result<Option<LogId>, io::Error> {
        let stored: Option<Option<LogId>> = self
            .store
            .read_committed()
            .map_err(store_err("read committed log id"))?
            .map(|bytes| decode(|| "committed log id".to_owned(), &bytes))
            .transpose()?;
        Ok(stored.flatten())
    }

    /// Readable when it returns; `callback` runs on the store's committer thread once an fsync
    /// covering the entries has completed (or with the error that prevented it).
    async fn append<I>(
        &mut self,
        entries: I,
        callback: IOFlushed<TypeConfig>,
    ) -> Result<(), io::Error>
    where
        I: IntoIterator<Item = Entry> + OptionalSend,
        I::IntoIter: OptionalSend,
    {
        let batch = entries
            .into_iter()
            .map(|entry| Ok((entry.log_id.index, encode("log entry", &entry)?)))
            .collect::<Result<Vec<_>, LogStorageError>>()?;
        self.store
            .append(batch, move |result| {
                callback.io_completed(result.map_err(|source| {
                    io::Error::from(LogStorageError::Store {
                        op: "sync appended entries",
                        source,
                    })
                }));
            })
            .map_err(store_err("append entries"))?;
        Ok(())
    }

    /// Deletes every entry after `last_log_id` (all of them for `None`); durable when it
    /// returns.
    async fn truncate_after(&mut self, last_log_id: Option<LogId>) -> Result<(), io::Error> {
        let since = match last_log_id {
            Some(log_id) => match log_id.index.checked_add(1) {
                Some(since) => since,
                // Nothing can follow index u64::MAX.
                None => return Ok(()),
            },
            None => 0,
        };
        let store = Arc::clone(&self.store);
        blocking("truncate log", move || store.truncate(since)).await?;
        Ok(())
    }

    /// Deletes every entry up to and including `log_id` and records it as the last purged log
    /// id; durable when it returns. `log_id` may lie beyond the last entry (after a snapshot
    /// install): the log is then empty and continues at `log_id.index + 1`.
    async fn purge(&mut self, log_id: LogId) -> Result<(), io::Error> {
        if let Some(purged) = self.store.purged_index()
            && log_id.index < purged
        {
            // Already purged further: nothing up to `log_id` is left. openraft never asks for
            // this, but the contract ("delete up to log_id") holds, so do not fail the node.
            tracing::warn!(
                requested = %log_id,
                purged,
                "purge request is behind the purge point; ignored"
            );
            return Ok(());
        }
        let bytes = encode("last purged log id", &log_id)?;
        let store = Arc::clone(&self.store);
        blocking("purge log", move || store.purge(log_id.index, bytes)).await?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use std::path::Path;
    use std::time::Duration;

    use openraft::entry::RaftEntry;
    use openraft::testing::{blank_ent, log_id, membership_ent};
    use openraft::type_config::TypeConfigExt;
    use wasteledger_store::DurableDb;

    use super::*;
    use crate::types::LedgerRequest;

    const WAIT: Duration = Duration::from_secs(30);

    fn open_at(path: &Path) -> LogStorage {
        let db = DurableDb::open(path).expect("open db");
        LogStorage::new(LogStore::open(db).expect("open log"))
    }

    fn normal(term: u64, index: u64) -> Entry {
        Entry::new_normal(
            log_id::<TypeConfig>(term, 1, index),
            LedgerRequest::Submit {
                event: vec![index as u8; 3],
                sequenced_at: index as i64,
            },
        )
    }

    /// Appends and waits for the flush callback.
    async fn append_flushed(log: &mut LogStorage, entries: Vec<Entry>) -> Result<(), io::Error> {
        let (tx, rx) = TypeConfig::oneshot();
        log.append(entries, IOFlushed::signal(tx)).await?;
        tokio::time::timeout(WAIT, rx)
            .await
            .expect("callback within the timeout")
            .expect("callback called, not dropped")
    }

    fn indexes(entries: &[Entry]) -> Vec<u64> {
        entries.iter().map(|e| e.log_id.index).collect()
    }

    #[tokio::test]
    async fn vote_and_committed_survive_reopen() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("db");
        let vote = Vote::new_committed(7, 3);
        let committed = Some(log_id::<TypeConfig>(7, 3, 42));
        {
            let mut log = open_at(&path);
            assert_eq!(log.read_vote().await.expect("read"), None);
            assert_eq!(log.read_committed().await.expect("read"), None);
            let syncs = log.store().db().stats().syncs;
            log.save_vote(&vote).await.expect("save vote");
            assert!(log.store().db().stats().syncs > syncs, "vote not synced");
            log.save_committed(committed).await.expect("save committed");
            // Make `committed` durable too (it rides on the next sync).
            append_flushed(&mut log, vec![blank_ent::<TypeConfig>(7, 3, 1)])
                .await
                .expect("append");
        }
        let mut log = open_at(&path);
        assert_eq!(log.read_vote().await.expect("read"), Some(vote));
        let mut reader = log.get_log_reader().await;
        assert_eq!(reader.read_vote().await.expect("read"), Some(vote));
        assert_eq!(log.read_committed().await.expect("read"), committed);
        log.save_committed(None).await.expect("save committed");
        assert_eq!(log.read_committed().await.expect("read"), None);
    }

    #[tokio::test]
    async fn appended_entries_survive_reopen() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("db");
        let written: Vec<Entry> = vec![
            blank_ent::<TypeConfig>(1, 1, 1),
            membership_ent::<TypeConfig>(1, 1, 2, vec![[1, 2, 3].into()]),
            normal(1, 3),
            normal(2, 4),
        ];
        {
            let mut log = open_at(&path);
            append_flushed(&mut log, written[..2].to_vec())
                .await
                .expect("append");
            append_flushed(&mut log, written[2..].to_vec())
                .await
                .expect("append");
        }
        let mut log = open_at(&path);
        assert_eq!(log.try_get_log_entries(..).await.expect("read"), written);
        assert_eq!(
            log.try_get_log_entries(2..=3).await.expect("read"),
            written[1..3].to_vec()
        );
        assert_eq!(
            log.try_get_log_entries(4..100).await.expect("read"),
            written[3..].to_vec()
        );
        assert!(log.try_get_log_entries(5..).await.expect("read").is_empty());
        assert!(
            log.try_get_log_entries(0..1)
                .await
                .expect("read")
                .is_empty()
        );
        let state = log.get_log_state().await.expect("state");
        assert_eq!(state.last_log_id, Some(log_id::<TypeConfig>(2, 1, 4)));
        assert_eq!(state.last_purged_log_id, None);
        // The log continues where it left off.
        append_flushed(&mut log, vec![normal(2, 5)])
            .await
            .expect("append");
    }

    #[tokio::test]
    async fn readers_see_appends_before_the_flush() {
        let dir = tempfile::tempdir().expect("tempdir");
        let mut log = open_at(&dir.path().join("db"));
        let mut reader = log.get_log_reader().await;
        let (tx, rx) = TypeConfig::oneshot();
        log.append(vec![normal(1, 1), normal(1, 2)], IOFlushed::signal(tx))
            .await
            .expect("append");
        // Readable as soon as `append` returned, whether or not the callback ran yet.
        assert_eq!(
            indexes(&reader.try_get_log_entries(..).await.expect("read")),
            vec![1, 2]
        );
        tokio::time::timeout(WAIT, rx)
            .await
            .expect("callback within the timeout")
            .expect("callback called")
            .expect("flush succeeded");
    }

    #[tokio::test]
    async fn callback_fires_after_a_sync() {
        let dir = tempfile::tempdir().expect("tempdir");
        let mut log = open_at(&dir.path().join("db"));
        for index in 1..=20 {
            let before = log.store().db().stats().syncs;
            let db = log.store().db().clone();
            let (tx, rx) = TypeConfig::oneshot();
            log.append(vec![normal(1, index)], IOFlushed::signal(tx))
                .await
                .expect("append");
            tokio::time::timeout(WAIT, rx)
                .await
                .expect("callback within the timeout")
                .expect("callback called")
                .expect("flush succeeded");
            assert!(
                db.stats().syncs > before,
                "append {index} acknowledged before a sync"
            );
        }
        // An empty append is acknowledged too.
        append_flushed(&mut log, Vec::new())
            .await
            .expect("empty append");
    }

    #[tokio::test]
    async fn refused_append_is_an_error() {
        let dir = tempfile::tempdir().expect("tempdir");
        let mut log = open_at(&dir.path().join("db"));
        append_flushed(&mut log, vec![normal(1, 1), normal(1, 2)])
            .await
            .expect("append");
        let (tx, _rx) = TypeConfig::oneshot();
        let gap = log.append(vec![normal(1, 4)], IOFlushed::signal(tx)).await;
        let err = gap.expect_err("a hole must be refused");
        assert!(err.to_string().contains("not contiguous"), "{err}");
    }

    #[tokio::test]
    async fn truncate_after_semantics() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("db");
        {
            let mut log = open_at(&path);
            append_flushed(&mut log, (1..=10).map(|i| normal(1, i)).collect())
                .await
                .expect("append");
            // After the last entry: nothing to do.
            log.truncate_after(Some(log_id::<TypeConfig>(1, 1, 10)))
                .await
                .expect("truncate");
            assert_eq!(log.try_get_log_entries(..).await.expect("read").len(), 10);
            // Keeps the given log id itself.
            log.truncate_after(Some(log_id::<TypeConfig>(1, 1, 6)))
                .await
                .expect("truncate");
            assert_eq!(
                indexes(&log.try_get_log_entries(..).await.expect("read")),
                (1..=6).collect::<Vec<_>>()
            );
            assert_eq!(
                log.get_log_state().await.expect("state").last_log_id,
                Some(log_id::<TypeConfig>(1, 1, 6))
            );
            // The leader's entries replace the truncated ones.
            append_flushed(&mut log, vec![normal(2, 7)])
                .await
                .expect("append");
        }
        let mut log = open_at(&path);
        assert_eq!(
            log.get_log_state().await.expect("state").last_log_id,
            Some(log_id::<TypeConfig>(2, 1, 7)),
            "truncation or the new entry lost in a reopen"
        );
        log.truncate_after(None).await.expect("truncate all");
        assert!(log.try_get_log_entries(..).await.expect("read").is_empty());
        let state = log.get_log_state().await.expect("state");
        assert_eq!((state.last_log_id, state.last_purged_log_id), (None, None));
    }

    #[tokio::test]
    async fn purge_semantics() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("db");
        {
            let mut log = open_at(&path);
            append_flushed(&mut log, (1..=10).map(|i| normal(1, i)).collect())
                .await
                .expect("append");
            // Inclusive.
            log.purge(log_id::<TypeConfig>(1, 1, 4))
                .await
                .expect("purge");
            assert_eq!(
                indexes(&log.try_get_log_entries(..).await.expect("read")),
                (5..=10).collect::<Vec<_>>()
            );
            assert!(
                log.try_get_log_entries(0..5)
                    .await
                    .expect("read")
                    .is_empty()
            );
            let state = log.get_log_state().await.expect("state");
            assert_eq!(
                state.last_purged_log_id,
                Some(log_id::<TypeConfig>(1, 1, 4))
            );
            assert_eq!(state.last_log_id, Some(log_id::<TypeConfig>(1, 1, 10)));
            // Behind the purge point: ignored.
            log.purge(log_id::<TypeConfig>(1, 1, 2))
                .await
                .expect("stale purge");
        }
        let mut log = open_at(&path);
        let state = log.get_log_state().await.expect("state");
        assert_eq!(
            state.last_purged_log_id,
            Some(log_id::<TypeConfig>(1, 1, 4))
        );
        // Beyond the last entry (snapshot install): empty log, last log id = purge point.
        log.purge(log_id::<TypeConfig>(3, 2, 20))
            .await
            .expect("purge");
        let state = log.get_log_state().await.expect("state");
        assert_eq!(
            state.last_purged_log_id,
            Some(log_id::<TypeConfig>(3, 2, 20))
        );
        assert_eq!(state.last_log_id, Some(log_id::<TypeConfig>(3, 2, 20)));
        assert!(log.try_get_log_entries(..).await.expect("read").is_empty());
        // The log continues right after the purge point.
        append_flushed(&mut log, vec![normal(3, 21)])
            .await
            .expect("append");
        assert_eq!(
            indexes(&log.try_get_log_entries(..).await.expect("read")),
            vec![21]
        );
    }

    #[tokio::test]
    async fn a_hole_in_the_log_is_an_error() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("db");
        {
            let mut log = open_at(&path);
            append_flushed(&mut log, vec![normal(1, 1), normal(1, 2)])
                .await
                .expect("append");
            // What damage (not a purge) would leave: an entry after a gap.
            let tree = log.store().db().open_tree("log").expect("log tree");
            let bytes = types::encode(&normal(1, 5)).expect("encode");
            tree.insert(&5u64.to_be_bytes(), &bytes).expect("insert");
            log.store().db().sync().expect("sync");
        }
        let mut log = open_at(&path);
        let err = log
            .try_get_log_entries(..)
            .await
            .expect_err("a hole must not be returned");
        assert_eq!(err.kind(), io::ErrorKind::InvalidData);
        assert!(err.to_string().contains("not consecutive"), "{err}");
    }

    #[tokio::test]
    async fn an_entry_under_the_wrong_index_is_an_error() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("db");
        {
            let log = open_at(&path);
            let tree = log.store().db().open_tree("log").expect("log tree");
            let bytes = types::encode(&normal(1, 9)).expect("encode");
            tree.insert(&3u64.to_be_bytes(), &bytes).expect("insert");
            log.store().db().sync().expect("sync");
        }
        let mut log = open_at(&path);
        let err = log.get_log_state().await.expect_err("misplaced entry");
        assert_eq!(err.kind(), io::ErrorKind::InvalidData);
        assert!(
            err.to_string().contains("index 3 has log id index 9"),
            "{err}"
        );
    }

    /// Reads racing with purges (openraft's replication readers and the core's purge) see a
    /// contiguous suffix of the log, never a hole and never an error.
    ///
    /// Probabilistic: a forward sled scan overtaken by a purge is rare (seen about once per
    /// few runs of this test while developing it), so it purges one entry at a time to give
    /// the race many chances.
    #[test]
    fn reads_during_purges_are_contiguous() {
        const LAST: u64 = 1500;
        let dir = tempfile::tempdir().expect("tempdir");
        let log = open_at(&dir.path().join("db"));
        let batch = (1..=LAST)
            .map(|i| (i, types::encode(&normal(1, i)).expect("encode")))
            .collect();
        let (tx, rx) = std::sync::mpsc::channel();
        log.store()
            .append(batch, move |r| {
                let _ = tx.send(r);
            })
            .expect("append");
        rx.recv_timeout(WAIT).expect("callback").expect("flush");

        let store = Arc::clone(&log.store);
        let done = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let reader = {
            let done = Arc::clone(&done);
            std::thread::spawn(move || {
                let mut reads = 0u32;
                while !done.load(std::sync::atomic::Ordering::SeqCst) || reads == 0 {
                    let entries = read_range(&store, &(..)).expect("read during purge");
                    let got = indexes(&entries);
                    assert_eq!(got.last(), Some(&LAST));
                    assert!(
                        got.windows(2).all(|w| w[0] + 1 == w[1]),
                        "a read returned a hole"
                    );
                    reads += 1;
                }
                reads
            })
        };
        for upto in 1..LAST {
            let id = log_id::<TypeConfig>(1, 1, upto);
            log.store()
                .purge(upto, types::encode(&id).expect("encode"))
                .expect("purge");
        }
        done.store(true, std::sync::atomic::Ordering::SeqCst);
        let reads = reader.join().expect("reader thread");
        assert!(reads > 0);
    }

    #[test]
    fn errors_map_to_io_kinds() {
        let decode = LogStorageError::Decode {
            what: "vote".to_owned(),
            source: CodecError::Version(Some(9)),
        };
        assert_eq!(io::Error::from(decode).kind(), io::ErrorKind::InvalidData);
        let io = LogStorageError::Store {
            op: "save vote",
            source: StoreError::Io(io::Error::from(io::ErrorKind::PermissionDenied)),
        };
        let io = io::Error::from(io);
        assert_eq!(io.kind(), io::ErrorKind::PermissionDenied);
        assert!(io.to_string().contains("save vote"), "{io}");
    }
}

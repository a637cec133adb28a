//! The raw Raft log: entries, vote, committed and purge point, on a [`DurableDb`].
//!
//! This module owns [`LogStore`], the storage half of openraft's `RaftLogStorage` minus the
//! types: entries, votes and log ids are opaque bytes here, and the openraft adapter (another
//! crate) encodes and decodes them.
//!
//! # Layout
//!
//! - tree `log`: key = index as 8 big-endian bytes (so sled's key order is index order), value =
//!   the entry bytes.
//! - tree `meta`: `vote`, `committed`, `purged` (the caller's opaque purged log id) and
//!   `purged_index` (8 big-endian bytes; ours, so that contiguity can be checked after a purge
//!   emptied the log, and an interrupted purge can be finished).
//!
//! # Durability of each operation
//!
//! | operation | durable when |
//! |---|---|
//! | [`save_vote`](LogStore::save_vote) | before it returns (openraft requires it: a vote forgotten in a crash lets the node vote twice in a term) |
//! | [`append`](LogStore::append) | when `done` runs; readable as soon as `append` returns |
//! | [`truncate`](LogStore::truncate) | before it returns |
//! | [`purge`](LogStore::purge) | the purge point before it returns; the entries' removal later (see below) |
//! | [`save_committed`](LogStore::save_committed) | with the next sync of anything (see there) |
//!
//! # Vote and log I/O are never reordered
//!
//! openraft requires that a later write never becomes durable before an earlier one, vote and
//! log alike. Three facts give that:
//!
//! 1. Every write goes to the same sled database, i.e. the same log-structured data file. sled
//!    gives each write a log sequence number in the order the writes happen, and its recovery
//!    restores a prefix of that sequence: it replays messages in order and stops at the first
//!    torn or missing one. A crash therefore never keeps a later write and loses an earlier
//!    one, whichever fsync did or did not complete.
//! 2. [`save_vote`](LogStore::save_vote) returns only after a full sync that started after the
//!    vote was written; `flush()` writes everything sled logged before it was called, so that
//!    sync also covers every earlier append, acknowledged yet or not.
//! 3. An append's `done` runs only after a sync that started after the append's entries were
//!    written: the sync request is queued after the write, and the committer only serves a
//!    request with a sync that starts after the request was queued.
//!
//! Writers also hold the store's lock while they write and queue their sync request (not while
//! they wait for it), so writes enter sled, and requests enter the committer, in call order;
//! callbacks therefore run in append order.
//!
//! # Purged entries are removed in the background
//!
//! openraft awaits a purge inside its core loop, so while a purge runs the node neither
//! appends, commits nor answers. Removing the ~100,000 entries a snapshot interval leaves took
//! 0.57 s with nothing else running, once per snapshot on every node. So a purge records and
//! syncs only its purge point; a background thread then deletes the entries at or below it,
//! and every read treats them as absent already. A crash before they are gone is harmless:
//! [`LogStore::open`] finishes the removal.

use std::io;
use std::ops::Range;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError, mpsc};
use std::thread::JoinHandle;

use crate::durable::{DurableDb, DurableTree, WriteBatch, check_sizes};
use crate::error::StoreError;

/// Tree holding the entries.
const LOG_TREE: &str = "log";
/// Tree holding vote, committed and purge point.
const META_TREE: &str = "meta";

const KEY_VOTE: &[u8] = b"vote";
const KEY_COMMITTED: &[u8] = b"committed";
const KEY_PURGED: &[u8] = b"purged";
const KEY_PURGED_INDEX: &[u8] = b"purged_index";

/// The log's ends, cached in memory and changed only under the lock.
#[derive(Debug, Clone, Copy)]
struct Tail {
    /// Index of the last entry present, if any.
    last: Option<u64>,
    /// Index up to which the log was purged, if ever.
    purged: Option<u64>,
}

impl Tail {
    /// The index the next appended entry must have, or `None` if any index may start the log
    /// (it is empty and was never purged).
    fn next_expected(&self) -> Result<Option<u64>, StoreError> {
        match self.last.or(self.purged) {
            Some(index) => index
                .checked_add(1)
                .map(Some)
                .ok_or(StoreError::IndexOverflow),
            None => Ok(None),
        }
    }
}

/// The Raft log store: entries keyed by index, plus vote, committed and purge point.
///
/// All methods take `&self` and are safe to call from several threads; mutations are serialised.
#[derive(Debug)]
pub struct LogStore {
    db: DurableDb,
    log: DurableTree,
    meta: DurableTree,
    tail: Mutex<Tail>,
    remover: Remover,
}

/// The thread that deletes purged entries (see the module docs), and how to reach it.
#[derive(Debug)]
struct Remover {
    /// The newest purge point to remove through; `None` once the store is dropping.
    requests: Option<mpsc::Sender<u64>>,
    /// Set on drop: stop between chunks (whatever is left, `open` finishes).
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

/// Entries removed between checks of the stop flag.
const REMOVE_CHUNK: usize = 1024;

impl Remover {
    fn start(log: DurableTree) -> io::Result<Remover> {
        let (tx, rx) = mpsc::channel::<u64>();
        let stop = Arc::new(AtomicBool::new(false));
        let thread = {
            let stop = Arc::clone(&stop);
            std::thread::Builder::new()
                .name("wl-log-purge".to_owned())
                .spawn(move || {
                    while let Ok(mut upto) = rx.recv() {
                        // Purge points only grow: the newest request covers the others.
                        while let Ok(newer) = rx.try_recv() {
                            upto = upto.max(newer);
                        }
                        if let Err(e) = remove_through(&log, upto, &stop) {
                            // The entries stay invisible below the purge point, and the next
                            // start removes them.
                            tracing::warn!(error = %e, upto, "removing purged Raft log entries failed");
                        }
                    }
                })?
        };
        Ok(Remover {
            requests: Some(tx),
            stop,
            thread: Some(thread),
        })
    }

    fn request(&self, upto: u64) {
        if let Some(tx) = &self.requests {
            // Only fails if the thread is gone (it never exits while the sender lives unless
            // it panicked); then `open` removes the entries next time.
            let _ = tx.send(upto);
        }
    }
}

impl Drop for Remover {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        self.requests = None;
        if let Some(thread) = self.thread.take() {
            // Joined so that the sled tree it holds is released before the store is reopened.
            let _ = thread.join();
        }
    }
}

/// Deletes entries with index `<= upto`, lowest first (a crash part-way leaves a log that
/// starts later, never a hole), stopping early if `stop` is set; returns how many.
fn remove_through(log: &DurableTree, upto: u64, stop: &AtomicBool) -> Result<usize, StoreError> {
    let mut removed = 0;
    loop {
        let keys = log
            .range(..=encode_index(upto))
            .take(REMOVE_CHUNK)
            .map(|item| item.map(|(key, _)| key))
            .collect::<Result<Vec<_>, _>>()?;
        for key in &keys {
            log.remove(key)?;
        }
        removed += keys.len();
        if keys.len() < REMOVE_CHUNK || stop.load(Ordering::Relaxed) {
            return Ok(removed);
        }
    }
}

fn encode_index(index: u64) -> [u8; 8] {
    index.to_be_bytes()
}

fn decode_index(key: &[u8]) -> Result<u64, StoreError> {
    <[u8; 8]>::try_from(key)
        .map(u64::from_be_bytes)
        .map_err(|_| StoreError::CorruptKey {
            tree: LOG_TREE,
            len: key.len(),
        })
}

impl LogStore {
    /// Opens the log in `db` (trees `log` and `meta`), finishing a purge that a crash
    /// interrupted.
    pub fn open(db: DurableDb) -> Result<Self, StoreError> {
        let log = db.open_tree(LOG_TREE)?;
        let meta = db.open_tree(META_TREE)?;
        let purged = match meta.get(KEY_PURGED_INDEX)? {
            Some(bytes) => Some(
                <[u8; 8]>::try_from(bytes.as_ref())
                    .map(u64::from_be_bytes)
                    .map_err(|_| StoreError::CorruptMeta {
                        key: "purged_index",
                        detail: format!("expected 8 bytes, found {}", bytes.len()),
                    })?,
            ),
            None => None,
        };
        // `purge` writes the purge point before entries are deleted, so entries at or below it
        // are what a crash left of an interrupted removal.
        if let Some(purged) = purged
            && remove_through(&log, purged, &AtomicBool::new(false))? > 0
        {
            db.sync()?;
        }
        let remover = Remover::start(log.clone())?;
        let store = LogStore {
            db,
            log,
            meta,
            tail: Mutex::new(Tail { last: None, purged }),
            remover,
        };
        if let Some((key, _)) = store.log.first()? {
            let _ = decode_index(&key)?;
        }
        let last = store.read_last(purged)?;
        store.lock().last = last;
        Ok(store)
    }

    /// The database this log lives in (to share it with the state machine, or read its stats).
    pub fn db(&self) -> &DurableDb {
        &self.db
    }

    fn lock(&self) -> MutexGuard<'_, Tail> {
        // `Tail` is only assigned after the writes it describes succeeded, so it is consistent
        // even if a panic poisoned the lock.
        self.tail.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Saves the vote; it is durable when this returns.
    pub fn save_vote(&self, vote: &[u8]) -> Result<(), StoreError> {
        {
            let _order = self.lock();
            self.meta.insert(KEY_VOTE, vote)?;
        }
        self.db.sync()?;
        Ok(())
    }

    /// The last saved vote.
    pub fn read_vote(&self) -> Result<Option<Vec<u8>>, StoreError> {
        Ok(self.meta.get(KEY_VOTE)?.map(|v| v.to_vec()))
    }

    /// Saves the committed log id (`None` removes it). Not synced.
    ///
    /// openraft treats `committed` as an optimisation (re-applying the log up to it on start),
    /// and it may revert to an older value after a crash: then the state machine catches up once
    /// the cluster's commit is seen again. It is written to the same sled log as everything
    /// else, so it becomes durable with the next append or vote sync (or sled's own flush within
    /// 500 ms), and prefix recovery means a recovered value never refers to entries that were
    /// written after it and lost.
    pub fn save_committed(&self, committed: Option<Vec<u8>>) -> Result<(), StoreError> {
        let _order = self.lock();
        match committed {
            Some(bytes) => self.meta.insert(KEY_COMMITTED, &bytes),
            None => self.meta.remove(KEY_COMMITTED),
        }
    }

    /// The last saved committed log id.
    pub fn read_committed(&self) -> Result<Option<Vec<u8>>, StoreError> {
        Ok(self.meta.get(KEY_COMMITTED)?.map(|v| v.to_vec()))
    }

    /// Appends `entries` (index, bytes) and requests a group-commit sync; `done` runs once they
    /// are durable (or with the error that prevented it).
    ///
    /// The entries are readable as soon as this returns. They must be in index order and
    /// contiguous, and the first must follow the last entry present, or the purge point if the
    /// log is empty; a log that is empty and was never purged may start at any index. `done`
    /// runs on the committer thread, after the `done` of every earlier append, and must not
    /// block for long. If this returns an error `done` is not called (the error is the only
    /// report); a contiguity or size error is found before anything is written.
    ///
    /// Entries are inserted one by one in index order rather than as one sled batch: sled's
    /// batches take a process-wide write lock that waits for any `flush()` in progress, which
    /// would make every append wait for the previous group's I/O. A crash can then keep only
    /// some of an unacknowledged append's entries, but always a prefix of them (sled recovers a
    /// prefix of its log), so the log never has a hole.
    pub fn append<F>(&self, entries: Vec<(u64, Vec<u8>)>, done: F) -> Result<(), StoreError>
    where
        F: FnOnce(Result<(), StoreError>) + Send + 'static,
    {
        let callback = Box::new(move |result: io::Result<()>| done(result.map_err(StoreError::Io)));
        let refused = {
            let mut tail = self.lock();
            let mut expected = tail.next_expected()?;
            for (index, bytes) in &entries {
                if let Some(expected) = expected
                    && *index != expected
                {
                    return Err(StoreError::NonContiguous {
                        expected,
                        got: *index,
                    });
                }
                check_sizes(&encode_index(*index), bytes)?;
                expected = Some(index.checked_add(1).ok_or(StoreError::IndexOverflow)?);
            }
            for (index, bytes) in &entries {
                self.log.insert(&encode_index(*index), bytes)?;
                // Kept exact even if a later insert fails, so the next append is checked
                // against what really is in the log.
                tail.last = Some(*index);
            }
            // Queued under the lock so that callbacks run in append order.
            self.db.enqueue(callback).err()
        };
        if let Some(callback) = refused {
            self.db.fail_stopped(callback);
        }
        Ok(())
    }

    /// Deletes every entry with index `>= since`, durably before returning.
    ///
    /// openraft truncates a follower's log where it conflicts with the leader's and then
    /// appends the leader's entries and acknowledges them. The truncation must be on disk no
    /// later than those acknowledgements: if it were lost, the node could restart with the
    /// stale conflicting entries behind acknowledged ones. Appends' syncs would already cover
    /// it (prefix recovery, see the module docs), but syncing here keeps the guarantee local and
    /// independent of that argument, and truncation is rare (only after a leader change).
    /// Entries are deleted from the end backwards, so a crash part-way never leaves a hole.
    /// Truncating at or below the purge point empties the log; the next append must still
    /// follow the purge point.
    pub fn truncate(&self, since: u64) -> Result<(), StoreError> {
        {
            let mut tail = self.lock();
            let keys = self
                .log
                .range(encode_index(since)..)
                .map(|item| item.map(|(key, _)| key))
                .collect::<Result<Vec<_>, _>>()?;
            // From the end backwards: a crash (or an error) part-way leaves a shorter log, never
            // a hole.
            let removed = keys.iter().rev().try_for_each(|key| self.log.remove(key));
            tail.last = self.read_last(tail.purged)?;
            removed?;
        }
        self.db.sync()?;
        Ok(())
    }

    /// Deletes every entry with index `<= upto` and records `purged_id` (the caller's encoding
    /// of the last purged log id) as the purge point, durably before returning.
    ///
    /// `upto` may lie beyond the last entry (openraft does that after installing a snapshot):
    /// the log is then empty and the next append must start at `upto + 1`. Purge points must not
    /// go backwards. Only the purge point is written here: the entries are deleted afterwards
    /// by the background remover (see the module docs), reads no longer see them from now on,
    /// and [`open`] finishes the deletion if a crash came first, so a crash never leaves a hole.
    ///
    /// Synced because after restart openraft would otherwise see entries and a purge point
    /// older than the snapshot it purged for; a purge runs once per snapshot, so the cost is
    /// negligible.
    ///
    /// [`open`]: Self::open
    pub fn purge(&self, upto: u64, purged_id: Vec<u8>) -> Result<(), StoreError> {
        {
            let mut tail = self.lock();
            if let Some(purged) = tail.purged
                && upto < purged
            {
                return Err(StoreError::PurgeBackwards {
                    purged,
                    requested: upto,
                });
            }
            let mut meta = WriteBatch::new();
            meta.insert(KEY_PURGED, &purged_id)?;
            meta.insert(KEY_PURGED_INDEX, &encode_index(upto))?;
            // One atomic batch (rare: once per snapshot), so the id and the index always agree.
            self.meta.apply_batch(meta)?;
            tail.purged = Some(upto);
            if tail.last.is_some_and(|last| last <= upto) {
                tail.last = None;
            }
        }
        self.db.sync()?;
        self.remover.request(upto);
        Ok(())
    }

    /// The first index reads may return: entries at or below the purge point may still be in
    /// the tree until the remover gets to them.
    fn first_visible(&self) -> u64 {
        self.purged_index().map_or(0, |p| p.saturating_add(1))
    }

    /// Index of the last entry in the tree above the purge point `purged`.
    fn read_last(&self, purged: Option<u64>) -> Result<Option<u64>, StoreError> {
        match self.log.last()? {
            Some((key, _)) => {
                let last = decode_index(&key)?;
                Ok(purged.is_none_or(|p| last > p).then_some(last))
            }
            None => Ok(None),
        }
    }

    /// The purged log id recorded by the last [`purge`](Self::purge).
    pub fn last_purged(&self) -> Result<Option<Vec<u8>>, StoreError> {
        Ok(self.meta.get(KEY_PURGED)?.map(|v| v.to_vec()))
    }

    /// The index the log was last purged up to.
    pub fn purged_index(&self) -> Option<u64> {
        self.lock().purged
    }

    /// The entry at `index`.
    pub fn get(&self, index: u64) -> Result<Option<Vec<u8>>, StoreError> {
        if index < self.first_visible() {
            return Ok(None);
        }
        Ok(self.log.get(&encode_index(index))?.map(|v| v.to_vec()))
    }

    /// The entries present with index in `range` (start inclusive, end exclusive), in order.
    ///
    /// The range is bounded by type (`Range`, not `RangeFrom`), so a caller always states how
    /// much it reads; everything in it is loaded into memory, so callers should ask for
    /// replication-batch-sized ranges. Purged or truncated indexes are simply absent.
    pub fn range(&self, range: Range<u64>) -> Result<Vec<(u64, Vec<u8>)>, StoreError> {
        let start = range.start.max(self.first_visible());
        if start >= range.end {
            return Ok(Vec::new());
        }
        self.log
            .range(encode_index(start)..encode_index(range.end))
            .map(|item| {
                let (key, value) = item?;
                Ok((decode_index(&key)?, value.to_vec()))
            })
            .collect()
    }

    /// Index of the last entry present (`None` if the log is empty, including after a purge
    /// that removed everything: see [`purged_index`](Self::purged_index)).
    pub fn last_index(&self) -> Option<u64> {
        self.lock().last
    }

    /// Index of the first entry present (`None` if the log is empty).
    pub fn first_index(&self) -> Result<Option<u64>, StoreError> {
        match self
            .log
            .range(encode_index(self.first_visible())..)
            .next()
            .transpose()?
        {
            Some((key, _)) => Ok(Some(decode_index(&key)?)),
            None => Ok(None),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::MAX_VALUE_BYTES;
    use std::sync::mpsc;
    use std::sync::{Arc, Mutex};
    use std::time::Duration;

    const WAIT: Duration = Duration::from_secs(30);

    fn open_at(path: &std::path::Path) -> LogStore {
        LogStore::open(DurableDb::open(path).unwrap_or_else(|e| panic!("open db: {e}")))
            .expect("open log")
    }

    fn open() -> (tempfile::TempDir, LogStore) {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = open_at(&dir.path().join("db"));
        (dir, store)
    }

    fn entry(index: u64) -> Vec<u8> {
        format!("entry {index}").into_bytes()
    }

    fn entries(range: Range<u64>) -> Vec<(u64, Vec<u8>)> {
        range.map(|i| (i, entry(i))).collect()
    }

    /// Appends and waits for durability.
    fn append_sync(store: &LogStore, batch: Vec<(u64, Vec<u8>)>) -> Result<(), StoreError> {
        let (tx, rx) = mpsc::channel();
        store.append(batch, move |r| {
            let _ = tx.send(r);
        })?;
        rx.recv_timeout(WAIT).expect("append callback")
    }

    fn indexes(store: &LogStore, range: Range<u64>) -> Vec<u64> {
        store
            .range(range)
            .expect("range")
            .into_iter()
            .map(|(i, _)| i)
            .collect()
    }

    #[test]
    fn empty_log() {
        let (_dir, store) = open();
        assert_eq!(store.last_index(), None);
        assert_eq!(store.first_index().expect("first"), None);
        assert_eq!(store.get(1).expect("get"), None);
        assert!(store.range(0..u64::MAX).expect("range").is_empty());
        assert_eq!(store.read_vote().expect("vote"), None);
        assert_eq!(store.read_committed().expect("committed"), None);
        assert_eq!(store.last_purged().expect("purged"), None);
        // An empty, never purged log may start anywhere.
        append_sync(&store, entries(7..9)).expect("append");
        assert_eq!(
            (store.first_index().expect("first"), store.last_index()),
            (Some(7), Some(8))
        );
    }

    #[test]
    fn append_get_and_range() {
        let (_dir, store) = open();
        append_sync(&store, entries(1..4)).expect("append");
        append_sync(&store, entries(4..11)).expect("append");
        assert_eq!(store.get(5).expect("get"), Some(entry(5)));
        assert_eq!(store.get(11).expect("get"), None);
        assert_eq!(indexes(&store, 3..6), vec![3, 4, 5]);
        assert_eq!(indexes(&store, 9..100), vec![9, 10]);
        assert_eq!(indexes(&store, 6..6), Vec::<u64>::new());
        #[allow(
            clippy::reversed_empty_ranges,
            reason = "checks that a reversed range is empty"
        )]
        let reversed = 8..3;
        assert_eq!(indexes(&store, reversed), Vec::<u64>::new());
        let all = store.range(0..u64::MAX).expect("range");
        assert_eq!(all, entries(1..11));
    }

    #[test]
    fn gaps_and_overlaps_are_rejected_and_write_nothing() {
        let (_dir, store) = open();
        append_sync(&store, entries(1..4)).expect("append");
        let gap = store.append(entries(5..7), |_| panic!("not called"));
        assert!(
            matches!(
                gap,
                Err(StoreError::NonContiguous {
                    expected: 4,
                    got: 5
                })
            ),
            "{gap:?}"
        );
        let overlap = store.append(entries(3..5), |_| panic!("not called"));
        assert!(matches!(
            overlap,
            Err(StoreError::NonContiguous {
                expected: 4,
                got: 3
            })
        ));
        let inner = store.append(vec![(4, entry(4)), (6, entry(6))], |_| panic!("not called"));
        assert!(matches!(
            inner,
            Err(StoreError::NonContiguous {
                expected: 5,
                got: 6
            })
        ));
        assert_eq!(store.last_index(), Some(3));
        assert_eq!(
            store.get(4).expect("get"),
            None,
            "a refused batch wrote something"
        );
    }

    #[test]
    fn oversized_entries_are_rejected_and_write_nothing() {
        let (_dir, store) = open();
        let batch = vec![(1, entry(1)), (2, vec![0; MAX_VALUE_BYTES + 1])];
        let result = store.append(batch, |_| panic!("not called"));
        assert!(
            matches!(result, Err(StoreError::ValueTooLarge { .. })),
            "{result:?}"
        );
        assert_eq!(store.last_index(), None);
        assert_eq!(store.get(1).expect("get"), None);
        append_sync(&store, vec![(1, vec![1; MAX_VALUE_BYTES])]).expect("max size accepted");
    }

    #[test]
    fn empty_append_is_acknowledged() {
        let (_dir, store) = open();
        append_sync(&store, Vec::new()).expect("empty append");
        assert_eq!(store.last_index(), None);
    }

    #[test]
    fn truncate_semantics() {
        let (_dir, store) = open();
        append_sync(&store, entries(1..11)).expect("append");
        store
            .truncate(11)
            .expect("truncate past the end is a no-op");
        assert_eq!(store.last_index(), Some(10));
        store.truncate(6).expect("truncate");
        assert_eq!(store.last_index(), Some(5));
        assert_eq!(indexes(&store, 0..100), vec![1, 2, 3, 4, 5]);
        // The next append continues at the truncation point, with new contents.
        append_sync(&store, vec![(6, b"new 6".to_vec())]).expect("append");
        assert_eq!(store.get(6).expect("get"), Some(b"new 6".to_vec()));
        store.truncate(0).expect("truncate everything");
        assert_eq!(
            (store.first_index().expect("first"), store.last_index()),
            (None, None)
        );
        // Empty and never purged: may restart anywhere.
        append_sync(&store, entries(3..5)).expect("append");
    }

    #[test]
    fn purge_semantics() {
        let (_dir, store) = open();
        append_sync(&store, entries(1..11)).expect("append");
        store.purge(4, b"log id 4".to_vec()).expect("purge");
        assert_eq!(store.first_index().expect("first"), Some(5));
        assert_eq!(store.last_index(), Some(10));
        assert_eq!(store.purged_index(), Some(4));
        assert_eq!(
            store.last_purged().expect("purged"),
            Some(b"log id 4".to_vec())
        );
        assert_eq!(store.get(4).expect("get"), None);
        assert_eq!(indexes(&store, 0..7), vec![5, 6]);

        store
            .purge(4, b"log id 4".to_vec())
            .expect("repeating a purge is fine");
        let back = store.purge(3, b"log id 3".to_vec());
        assert!(matches!(
            back,
            Err(StoreError::PurgeBackwards {
                purged: 4,
                requested: 3
            })
        ));

        // Purge beyond the last entry (snapshot install): empty log, continue after the purge.
        store.purge(20, b"log id 20".to_vec()).expect("purge");
        assert_eq!(
            (store.first_index().expect("first"), store.last_index()),
            (None, None)
        );
        let gap = store.append(entries(11..12), |_| panic!("not called"));
        assert!(matches!(
            gap,
            Err(StoreError::NonContiguous {
                expected: 21,
                got: 11
            })
        ));
        append_sync(&store, entries(21..23)).expect("append after purge");
        // Truncating everything after a purge: the next entry still follows the purge point.
        store.truncate(21).expect("truncate");
        let gap = store.append(entries(1..2), |_| panic!("not called"));
        assert!(matches!(
            gap,
            Err(StoreError::NonContiguous {
                expected: 21,
                got: 1
            })
        ));
    }

    #[test]
    fn purged_entries_are_hidden_at_once_and_removed_in_the_background() {
        let (_dir, store) = open();
        append_sync(&store, entries(1..5001)).expect("append");
        store.purge(4000, b"log id 4000".to_vec()).expect("purge");
        // Hidden as soon as purge returns, whatever the remover has done so far.
        assert_eq!(store.get(4000).expect("get"), None);
        assert_eq!(store.first_index().expect("first"), Some(4001));
        assert_eq!(indexes(&store, 3998..4003), vec![4001, 4002]);
        // And gone from the tree within a bounded wait.
        let deadline = std::time::Instant::now() + WAIT;
        while store.log.first().expect("first key").map(|(k, _)| k)
            != Some(encode_index(4001).as_slice().into())
        {
            assert!(
                std::time::Instant::now() < deadline,
                "purged entries still in the tree"
            );
            std::thread::sleep(Duration::from_millis(5));
        }
        // Appends go on meanwhile and after.
        append_sync(&store, entries(5001..5003)).expect("append");
        assert_eq!(store.range(4999..6000).expect("range"), entries(4999..5003));
    }

    #[test]
    fn a_removal_cut_short_by_a_restart_is_finished_at_open() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("db");
        {
            let store = open_at(&path);
            append_sync(&store, entries(1..20_001)).expect("append");
            store
                .purge(19_000, b"log id 19000".to_vec())
                .expect("purge");
            // Dropped at once: the remover stops between chunks and may leave entries behind.
        }
        let store = open_at(&path);
        assert_eq!(store.first_index().expect("first"), Some(19_001));
        assert_eq!(
            store.log.first().expect("first key").map(|(k, _)| k),
            Some(encode_index(19_001).as_slice().into()),
            "open left purged entries in the tree"
        );
    }

    #[test]
    fn vote_and_committed_round_trip() {
        let (_dir, store) = open();
        store.save_vote(b"term 3 node 2").expect("vote");
        assert_eq!(
            store.read_vote().expect("vote"),
            Some(b"term 3 node 2".to_vec())
        );
        let syncs = store.db().stats().syncs;
        store
            .save_committed(Some(b"c 5".to_vec()))
            .expect("committed");
        assert_eq!(
            store.read_committed().expect("committed"),
            Some(b"c 5".to_vec())
        );
        assert_eq!(store.db().stats().syncs, syncs, "save_committed synced");
        store.save_committed(None).expect("committed");
        assert_eq!(store.read_committed().expect("committed"), None);
    }

    #[test]
    fn save_vote_is_durable_when_it_returns() {
        let (_dir, store) = open();
        let before = store.db().stats().syncs;
        store.save_vote(b"v").expect("vote");
        assert!(store.db().stats().syncs > before);
    }

    #[test]
    fn callbacks_fire_after_sync_in_append_order() {
        let (_dir, store) = open();
        let (tx, rx) = mpsc::channel();
        for index in 1..=100u64 {
            let syncs_before = store.db().stats().syncs;
            let db = store.db().clone();
            let tx = tx.clone();
            store
                .append(vec![(index, entry(index))], move |r| {
                    let _ = tx.send((index, r.is_ok(), db.stats().syncs > syncs_before));
                })
                .expect("append");
        }
        for expected in 1..=100u64 {
            let (index, ok, after_sync) = rx.recv_timeout(WAIT).expect("callback");
            assert_eq!(index, expected, "callbacks out of append order");
            assert!(ok);
            assert!(after_sync, "append {index} acknowledged before a sync");
        }
    }

    #[test]
    fn concurrent_appends_share_syncs() {
        const THREADS: u64 = 8;
        const PER_THREAD: u64 = 25;
        let (_dir, store) = open();
        let store = Arc::new(store);
        let next = Arc::new(Mutex::new(1u64));
        let before = store.db().stats();
        let (tx, rx) = mpsc::channel();
        let threads: Vec<_> = (0..THREADS)
            .map(|_| {
                let (store, next, tx) = (Arc::clone(&store), Arc::clone(&next), tx.clone());
                std::thread::spawn(move || {
                    for _ in 0..PER_THREAD {
                        // Choosing the index and appending under one lock keeps the log
                        // contiguous; the sync happens after the lock is released.
                        let mut next = next.lock().expect("index lock");
                        let index = *next;
                        let tx = tx.clone();
                        store
                            .append(vec![(index, entry(index))], move |r| {
                                let _ = tx.send((index, r.is_ok()));
                            })
                            .expect("append");
                        *next += 1;
                    }
                })
            })
            .collect();
        for thread in threads {
            thread.join().expect("appender");
        }
        let total = THREADS * PER_THREAD;
        for expected in 1..=total {
            let (index, ok) = rx.recv_timeout(WAIT).expect("callback");
            assert_eq!(index, expected);
            assert!(ok);
        }
        let after = store.db().stats();
        let (syncs, requests) = (after.syncs - before.syncs, after.requests - before.requests);
        assert_eq!(requests, total);
        assert!(
            syncs < requests,
            "no group commit: {syncs} syncs for {requests} requests"
        );
        assert_eq!(
            store.range(1..total + 1).expect("range"),
            entries(1..total + 1)
        );
    }

    #[test]
    fn reopen_keeps_everything_acknowledged() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("db");
        {
            let store = open_at(&path);
            append_sync(&store, entries(1..101)).expect("append");
            store.save_vote(b"vote 1").expect("vote");
            store
                .save_committed(Some(b"committed 50".to_vec()))
                .expect("committed");
            store.purge(10, b"purged 10".to_vec()).expect("purge");
            store.truncate(91).expect("truncate");
            append_sync(&store, vec![(91, b"rewritten".to_vec())]).expect("append");
        }
        let store = open_at(&path);
        assert_eq!(store.first_index().expect("first"), Some(11));
        assert_eq!(store.last_index(), Some(91));
        assert_eq!(store.purged_index(), Some(10));
        assert_eq!(
            store.last_purged().expect("purged"),
            Some(b"purged 10".to_vec())
        );
        assert_eq!(store.read_vote().expect("vote"), Some(b"vote 1".to_vec()));
        assert_eq!(
            store.read_committed().expect("committed"),
            Some(b"committed 50".to_vec())
        );
        assert_eq!(store.range(11..91).expect("range"), entries(11..91));
        assert_eq!(store.get(91).expect("get"), Some(b"rewritten".to_vec()));
        append_sync(&store, entries(92..93)).expect("append continues after reopen");
    }

    #[test]
    fn open_finishes_an_interrupted_purge() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("db");
        {
            let store = open_at(&path);
            append_sync(&store, entries(1..11)).expect("append");
            // What a crash between writing the purge point and deleting entries leaves.
            let meta = store.db().open_tree(META_TREE).expect("meta");
            meta.insert(KEY_PURGED, b"purged 5").expect("insert");
            meta.insert(KEY_PURGED_INDEX, &encode_index(5))
                .expect("insert");
            store.db().sync().expect("sync");
        }
        let store = open_at(&path);
        assert_eq!(store.first_index().expect("first"), Some(6));
        assert_eq!(store.purged_index(), Some(5));
        assert_eq!(store.last_index(), Some(10));
    }

    #[test]
    fn corrupt_keys_are_reported() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("db");
        {
            let db = DurableDb::open(&path).expect("open");
            db.open_tree(LOG_TREE)
                .expect("log")
                .insert(b"bad", b"x")
                .expect("insert");
            db.sync().expect("sync");
        }
        let result = LogStore::open(DurableDb::open(&path).expect("open"));
        assert!(
            matches!(
                result,
                Err(StoreError::CorruptKey {
                    tree: "log",
                    len: 3
                })
            ),
            "{result:?}"
        );
    }
}

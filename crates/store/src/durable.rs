//! A sled database whose syncs are real, and a group committer that shares them.
//!
//! This module owns [`DurableDb`]: the only place in the crate that opens sled, decides what
//! "durable" means, and issues fsyncs. Everything above it ([`crate::LogStore`], the state
//! machine) writes through [`DurableTree`] / [`WriteBatch`], which enforce the size limits, and
//! asks for durability through [`DurableDb::sync`] or [`DurableDb::sync_async`].
//!
//! # Why sled's own flush is not enough
//!
//! sled 0.34's `Db::flush()` writes its IO buffers with `pwrite` and then calls
//! `sync_file_range(WAIT_BEFORE | WRITE | WAIT_AFTER)` on the written range
//! (`src/pagecache/iobuf.rs`, `write_to_log`). `sync_file_range` pushes the pages to the device but
//! neither flushes the device's volatile write cache nor commits file metadata such as the file's
//! size (spacejam/sled#1452), so data acknowledged after `flush()` can be lost on power failure.
//! Only sled's background flusher (every 500 ms) calls a real `fsync`.
//!
//! A real sync here is therefore `db.flush()` (everything written so far is in the data file's
//! page cache) followed by `fdatasync` ([`File::sync_data`]) on our own handle to the same file.
//! fsync acts on the inode, not on the descriptor, so our handle syncs what sled wrote through
//! its own.
//!
//! # sled 0.34.7's files, and what is fsynced
//!
//! In the database directory sled creates (`src/config.rs`, `src/pagecache/snapshot.rs`,
//! `src/pagecache/blob_io.rs`):
//!
//! - `db`: the data file, a log of fixed-size segments. All tree data lives here unless it is a
//!   blob. **Synced with `fdatasync` on every sync.** `fdatasync` also commits the file size,
//!   which matters because sled grows the file when it starts a new segment.
//! - `conf`: storage parameters, written once at creation with no fsync. **Synced once at open.**
//! - `snap.<lsn>`: a recovery snapshot, written (fsynced, then renamed, with no directory fsync)
//!   only while sled opens. It is an optimisation: without it sled replays the log. Its rename
//!   is made durable by the directory fsync below.
//! - `blobs/<lsn>`: any single log message larger than the blob threshold (see
//!   [`SLED_BLOB_THRESHOLD`]) is written to its own file with `write_all` and **never fsynced by
//!   sled**. We configure sled and limit value sizes so this does not happen in practice, and as
//!   a second line of defence every sync fsyncs blob files it has not yet synced (new names, or
//!   names whose length changed since a blob may still be being written), then the `blobs`
//!   directory if it gained entries.
//! - the directory itself: **fsynced at open** (it holds the new `db`, `conf`, `blobs` and
//!   `snap.*` entries; the parent directory is fsynced too, for a newly created directory), and
//!   again on any sync that finds its set of entries changed (cheap: one `readdir`).
//!
//! Order within one sync: flush, blob files, data file, directories. The blob files are synced
//! before the data file that points at them so that a crash in the middle of a sync is less
//! likely to recover a pointer to a missing blob (sled treats that as a torn tail and stops
//! recovery there, which is still safe: nothing after it was acknowledged).
//!
//! # Group commit
//!
//! An fsync costs the same whether it covers one write or a thousand, so [`DurableDb`] runs one
//! committer thread. [`DurableDb::sync_async`] queues a callback; the thread takes every request
//! that queued up while its previous sync ran, performs ONE sync for all of them, and then calls
//! their callbacks in the order they were queued. A sync started after a request was queued
//! covers every write that happened before the request was queued, because `flush()` writes
//! everything sled had reserved in its log when it was called.
//!
//! After a failed sync the kernel may have dropped the dirty pages and a later fsync can falsely
//! succeed ("fsyncgate"), so a failure poisons the database: every later sync fails until it is
//! reopened, which makes sled recover from what really is on disk.
//!
//! This is plain synchronous Rust with one std thread: no async runtime.

use std::collections::{BTreeSet, HashMap};
use std::ffi::OsString;
use std::fs::{self, File};
use std::io;
use std::ops::RangeBounds;
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU8, AtomicU64, Ordering};
use std::sync::mpsc;
use std::sync::{Arc, Condvar, Mutex, MutexGuard, PoisonError, Weak};
use std::thread::{self, JoinHandle, ThreadId};
use std::time::{Duration, Instant};

use sled::IVec;

use crate::error::StoreError;

/// The sled segment size this crate configures (16 MiB, the largest sled 0.34 accepts).
///
/// sled writes any single log message larger than a quarter of a segment to a blob file (see
/// [`SLED_BLOB_THRESHOLD`]). The default segment (512 KiB) would put every message above about
/// 128 KiB — including a consolidated leaf node holding a few large values — into unsynced blob
/// files. The segment size is stored in sled's `conf` and cannot change for an existing
/// database.
pub const SEGMENT_SIZE: usize = 16 * 1024 * 1024;

/// sled 0.34.7 constants from `src/pagecache/constants.rs`, used to derive the blob threshold.
const SLED_MINIMUM_ITEMS_PER_SEGMENT: usize = 4;
/// sled's segment header length (`SEG_HEADER_LEN`).
const SLED_SEG_HEADER_LEN: usize = 20;
/// sled's worst-case message header length (`MAX_MSG_HEADER_LEN`).
const SLED_MAX_MSG_HEADER_LEN: usize = 32;

/// Largest serialised log message sled keeps inline in the data file with [`SEGMENT_SIZE`]
/// segments (4 194 252 bytes). From `Log::reserve_inner` (`src/pagecache/logger.rs`): a message
/// goes to a blob file when `MAX_MSG_HEADER_LEN + serialized_len > segment_size /
/// MINIMUM_ITEMS_PER_SEGMENT - SEG_HEADER_LEN`.
///
/// A message is either one inserted item (a page "link") or a whole consolidated tree node (a
/// page "replace"). sled splits a leaf node once it holds more than 16 items
/// (`Node::should_split`, `src/node.rs`), so a leaf is serialised with about 17 items at most.
pub const SLED_BLOB_THRESHOLD: usize =
    SEGMENT_SIZE / SLED_MINIMUM_ITEMS_PER_SEGMENT - SLED_SEG_HEADER_LEN - SLED_MAX_MSG_HEADER_LEN;

/// Largest value [`DurableTree`] and [`WriteBatch`] accept (128 KiB).
///
/// Chosen to hold a Raft entry carrying the largest event `wasteledger-core` accepts (a 64 KiB
/// body plus up to 8 signatures plus entry framing), while a leaf node full of such values stays
/// far below [`SLED_BLOB_THRESHOLD`] (see the assertion below): values never reach blob files in
/// practice.
pub const MAX_VALUE_BYTES: usize = 128 * 1024;

/// Largest key [`DurableTree`] and [`WriteBatch`] accept (1 KiB). Index nodes hold up to 257
/// keys, so this keeps them far below the blob threshold too.
pub const MAX_KEY_BYTES: usize = 1024;

/// How many maximum-size items a leaf must be able to hold without becoming a blob: sled's split
/// point is 17 items, and a leaf can briefly exceed it (a split is deferred while the node takes
/// part in a merge), so we require almost twice that.
const LEAF_ITEMS_HEADROOM: usize = 30;

/// Per-item overhead allowance in a serialised node (length prefixes, offsets).
const ITEM_OVERHEAD: usize = 64;

const _: () = assert!(
    LEAF_ITEMS_HEADROOM * (MAX_VALUE_BYTES + MAX_KEY_BYTES + ITEM_OVERHEAD) <= SLED_BLOB_THRESHOLD,
    "a leaf of maximum-size items could be written to an unsynced sled blob file"
);

/// sled's data file inside the database directory.
const SLED_DATA_FILE: &str = "db";
/// sled's storage-parameters file.
const SLED_CONF_FILE: &str = "conf";
/// sled's blob directory.
const SLED_BLOB_DIR: &str = "blobs";

/// How often sled's own background flusher runs (sled's default). It also performs segment
/// garbage collection, so it stays on; durability never depends on it.
const SLED_FLUSH_EVERY_MS: u64 = 500;

/// Tuning for [`DurableDb::open_with`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DurableOptions {
    /// Upper bound, in bytes, of sled's in-memory page cache (sled's default: 1 GiB).
    pub cache_capacity: u64,
}

impl Default for DurableOptions {
    fn default() -> Self {
        DurableOptions {
            cache_capacity: 1024 * 1024 * 1024,
        }
    }
}

/// Counters of the group committer, for metrics and tests.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct SyncStats {
    /// Syncs (flush + fdatasync) performed, successful or not.
    pub syncs: u64,
    /// Sync requests served ([`DurableDb::sync`] and [`DurableDb::sync_async`] calls whose
    /// result has been delivered). `requests / syncs` is the group-commit factor.
    pub requests: u64,
    /// Callbacks that panicked. The panic is reported by the panic hook as usual and the
    /// committer keeps serving the other callbacks.
    pub callback_panics: u64,
}

/// A callback waiting for a sync.
type SyncCallback = Box<dyn FnOnce(io::Result<()>) + Send>;

/// A sled database made really durable, with a group-commit thread.
///
/// Cloning is cheap and shares the database. When the last clone is dropped, the committer
/// thread finishes: requests still queued get one last sync and their callbacks run with its
/// result; then the thread is joined and sled closes.
///
/// One directory can be opened by one `DurableDb` at a time (sled locks its data file).
#[derive(Clone)]
pub struct DurableDb {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for DurableDb {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DurableDb")
            .field("dir", &self.inner.engine.dir)
            .field("stats", &self.stats())
            .finish()
    }
}

/// Owned by the clones of [`DurableDb`]; its `Drop` stops the committer.
struct Inner {
    engine: Arc<Engine>,
    queue: Arc<Queue>,
    committer: Option<JoinHandle<()>>,
    committer_id: ThreadId,
}

/// What a sync touches. Shared by the handles and the committer thread.
struct Engine {
    db: sled::Db,
    dir: PathBuf,
    /// Our own handle on sled's data file, used only for `fdatasync`.
    data_file: File,
    /// Serialises syncs and holds what they remember between runs.
    sync_state: Mutex<SyncState>,
    syncs: AtomicU64,
    requests: AtomicU64,
    callback_panics: AtomicU64,
    /// The origin of [`sync_started_us`](Self::sync_started_us).
    opened: Instant,
    /// When the sync in progress started, in µs since `opened` plus one; 0 while none runs.
    /// Read without the sync lock by [`SyncProbe`], which is how a stuck sync is noticed.
    sync_started_us: AtomicU64,
    /// The step the sync in progress is at ([`SyncPhase`] as a number), so a stall report
    /// can say where it is stuck.
    sync_phase: AtomicU8,
    /// Test hook: make the next sync fail as if fdatasync had returned EIO.
    #[cfg(test)]
    fail_next_sync: std::sync::atomic::AtomicBool,
    /// Test hook: make the next sync take this many milliseconds longer.
    #[cfg(test)]
    delay_next_sync_ms: AtomicU64,
}

#[derive(Default)]
struct SyncState {
    /// Blob files already fsynced, with the length they had when we synced them.
    synced_blobs: HashMap<OsString, u64>,
    /// Entries of the database directory as of its last fsync.
    dir_entries: Option<BTreeSet<OsString>>,
    /// Set after a failed sync: the error that every later sync reports.
    poisoned: Option<(io::ErrorKind, String)>,
}

/// The committer's request queue.
struct Queue {
    state: Mutex<QueueState>,
    wake: Condvar,
}

impl Queue {
    /// Queues a sync request; gives the callback back if the committer is gone or going.
    fn push(&self, done: SyncCallback) -> Result<(), SyncCallback> {
        let mut state = lock(&self.state);
        if state.stopped || state.shutdown {
            return Err(done);
        }
        state.pending.push(done);
        drop(state);
        self.wake.notify_one();
        Ok(())
    }
}

#[derive(Default)]
struct QueueState {
    pending: Vec<SyncCallback>,
    /// Set by `Inner::drop`: serve what is pending, then exit.
    shutdown: bool,
    /// Set when the committer thread has exited (normally or not): requests fail at once.
    stopped: bool,
}

/// Keeps sled's `Db::flush` and `Tree::apply_batch` from overlapping, process-wide like sled's
/// own "concurrency control" lock. Inside sled a flush holds that lock shared while it waits
/// for its log buffers to reach the file, and a batch takes it exclusive, so the two already
/// exclude each other. But a batch *waiting* for it blocks every new shared holder, sled's
/// own background flusher included, and sled 0.34 can then wait forever: a node stopped for
/// good in a 300,000-event benchmark run with exactly that picture (the committer inside
/// `flush`, the state machine inside `apply_batch` waiting for readers, sled's flusher waiting
/// behind it). With this gate a batch waits here instead, outside sled, and no concurrency is
/// lost.
static SLED_BATCH_GATE: Mutex<()> = Mutex::new(());

/// `tree.apply_batch(batch)`, never while a flush runs ([`SLED_BATCH_GATE`]): every sled
/// batch in this crate goes through here.
pub(crate) fn apply_sled_batch(tree: &sled::Tree, batch: sled::Batch) -> sled::Result<()> {
    let _gate = lock(&SLED_BATCH_GATE);
    tree.apply_batch(batch)
}

/// Locks a mutex, ignoring poisoning: every critical section in this module leaves its data
/// consistent at every point where a panic could occur (callbacks never run under a lock).
fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}

/// The error callbacks get when the committer is gone.
fn stopped_error() -> io::Error {
    io::Error::other(
        "durable store is shut down: its sync thread has stopped, so nothing more can be made \
         durable; reopen the database",
    )
}

/// A copy of a sync result for one of several callbacks (`io::Error` is not `Clone`).
fn share(result: &io::Result<()>) -> io::Result<()> {
    match result {
        Ok(()) => Ok(()),
        Err(e) => Err(io::Error::new(e.kind(), e.to_string())),
    }
}

/// How long [`open_sled`] keeps retrying while another handle in this process still holds
/// sled's file lock.
const LOCK_RETRY_FOR: Duration = Duration::from_secs(2);

/// Opens sled, retrying for a short while if its data file is still locked.
///
/// sled releases its `flock` only when the last internal reference to the file goes away, and
/// its background writer threads can hold one for a few milliseconds after the previous
/// `DurableDb` on the same directory in this process was dropped (sled's own test builds block
/// on the lock for the same reason). A lock held by another process stays held, and after the
/// retries the error is returned.
fn open_sled(config: &sled::Config) -> Result<sled::Db, StoreError> {
    let deadline = Instant::now() + LOCK_RETRY_FOR;
    loop {
        match config.open() {
            Err(sled::Error::Io(e))
                if e.to_string().contains("could not acquire lock")
                    && Instant::now() < deadline =>
            {
                thread::sleep(Duration::from_millis(10));
            }
            result => return Ok(result?),
        }
    }
}

/// fsyncs a directory, making the creation, rename or removal of its entries durable.
pub fn sync_dir(path: &Path) -> io::Result<()> {
    File::open(path)?.sync_all()
}

/// Renames `from` to `to` and fsyncs `to`'s directory, so the new name survives a crash. The
/// caller syncs the file's own data first.
pub fn rename_durably(from: &Path, to: &Path) -> io::Result<()> {
    fs::rename(from, to)?;
    sync_parent_dir(to)
}

/// fsyncs the directory holding `path` (the current directory for a bare file name), which
/// makes a rename or creation of `path` survive a crash.
pub fn sync_parent_dir(path: &Path) -> io::Result<()> {
    match path.parent() {
        Some(dir) if !dir.as_os_str().is_empty() => sync_dir(dir),
        _ => sync_dir(Path::new(".")),
    }
}

impl DurableDb {
    /// Opens (creating if needed) the database in directory `dir` with default options.
    pub fn open(dir: impl AsRef<Path>) -> Result<Self, StoreError> {
        Self::open_with(dir, &DurableOptions::default())
    }

    /// Opens (creating if needed) the database in directory `dir`.
    ///
    /// Creates the directory, opens sled with [`SEGMENT_SIZE`] segments, fsyncs sled's `conf`
    /// file, the directory and its parent, performs one full sync and starts the committer
    /// thread.
    pub fn open_with(dir: impl AsRef<Path>, options: &DurableOptions) -> Result<Self, StoreError> {
        let dir = dir.as_ref().to_path_buf();
        fs::create_dir_all(&dir)?;
        // The directory's own entry lives in its parent: make it durable in case we just
        // created it.
        match dir.parent() {
            Some(parent) if !parent.as_os_str().is_empty() => sync_dir(parent)?,
            _ => sync_dir(Path::new("."))?,
        }

        let config = sled::Config::new()
            .path(&dir)
            .segment_size(SEGMENT_SIZE)
            .cache_capacity(options.cache_capacity)
            .mode(sled::Mode::HighThroughput)
            .flush_every_ms(Some(SLED_FLUSH_EVERY_MS));
        let db = open_sled(&config)?;

        // Read-only is enough: fdatasync on Linux works on any descriptor of the inode, and this
        // handle can then never write to sled's file by mistake.
        let data_file = File::open(dir.join(SLED_DATA_FILE))?;
        // sled writes `conf` without fsync; it must survive for the database to reopen with
        // the same segment size.
        File::open(dir.join(SLED_CONF_FILE))?.sync_all()?;

        let engine = Arc::new(Engine {
            db,
            dir,
            data_file,
            sync_state: Mutex::new(SyncState::default()),
            syncs: AtomicU64::new(0),
            requests: AtomicU64::new(0),
            callback_panics: AtomicU64::new(0),
            opened: Instant::now(),
            sync_started_us: AtomicU64::new(0),
            sync_phase: AtomicU8::new(SyncPhase::WaitingForBatch as u8),
            #[cfg(test)]
            fail_next_sync: std::sync::atomic::AtomicBool::new(false),
            #[cfg(test)]
            delay_next_sync_ms: AtomicU64::new(0),
        });
        // The first sync fsyncs the directory (no previous entry list) and any blob files left
        // by an earlier run.
        engine.sync_now()?;

        let queue = Arc::new(Queue {
            state: Mutex::new(QueueState::default()),
            wake: Condvar::new(),
        });
        let committer = {
            let engine = Arc::clone(&engine);
            let queue = Arc::clone(&queue);
            thread::Builder::new()
                .name("wl-store-commit".to_owned())
                .spawn(move || run_committer(&engine, &queue))?
        };
        let committer_id = committer.thread().id();
        Ok(DurableDb {
            inner: Arc::new(Inner {
                engine,
                queue,
                committer: Some(committer),
                committer_id,
            }),
        })
    }

    /// The database directory.
    pub fn path(&self) -> &Path {
        &self.inner.engine.dir
    }

    /// Opens (creating if needed) the sled tree `name`.
    pub fn open_tree(&self, name: &str) -> Result<DurableTree, StoreError> {
        Ok(DurableTree {
            tree: self.inner.engine.db.open_tree(name)?,
        })
    }

    /// Opens (creating if needed) the sled tree `name` without the size checks of
    /// [`DurableTree`], for code built on sled's own API (batches spanning a whole state
    /// update, `scan_prefix`, ...).
    ///
    /// Writes through it are made durable by [`sync`](Self::sync) like any other, but the
    /// caller must itself keep keys within [`MAX_KEY_BYTES`] and values within
    /// [`MAX_VALUE_BYTES`] (see [`check_sizes`]): larger ones may land in sled blob files.
    pub fn raw_tree(&self, name: &str) -> Result<sled::Tree, StoreError> {
        Ok(self.inner.engine.db.open_tree(name)?)
    }

    /// Makes every write that completed before this call durable, blocking until it is.
    ///
    /// Goes through the committer, so it shares its fsync with concurrent
    /// [`sync_async`](Self::sync_async) requests. Called from a sync callback (on the committer
    /// thread), it syncs inline instead of waiting for itself.
    pub fn sync(&self) -> io::Result<()> {
        if thread::current().id() == self.inner.committer_id {
            let result = self.inner.engine.sync_now();
            let _ = self.inner.engine.requests.fetch_add(1, Ordering::Relaxed);
            return result;
        }
        let (tx, rx) = mpsc::sync_channel(1);
        self.sync_async(Box::new(move |result| {
            // The receiver only goes away if this thread is gone; nothing to report to then.
            let _ = tx.send(result);
        }));
        // The callback is always called; a closed channel would mean it was dropped instead.
        rx.recv().unwrap_or_else(|_| Err(stopped_error()))
    }

    /// Requests a sync and returns at once; `done` runs on the committer thread once every
    /// write that completed before this call is durable, or with the error that prevented it.
    ///
    /// Callbacks run in the order their requests were made. They should be quick (they delay
    /// the next batch's sync); they may call back into the database, including
    /// [`sync`](Self::sync). If the database is shutting down, `done` runs at once with an
    /// error.
    pub fn sync_async(&self, done: Box<dyn FnOnce(io::Result<()>) + Send>) {
        if let Err(done) = self.enqueue(done) {
            run_callback(&self.inner.engine, done, Err(stopped_error()));
        }
    }

    /// Queues a sync request; gives the callback back if the committer is gone, so that the
    /// caller can run it outside whatever lock it holds.
    pub(crate) fn enqueue(&self, done: SyncCallback) -> Result<(), SyncCallback> {
        self.inner.queue.push(done)
    }

    /// Runs a callback given back by [`enqueue`](Self::enqueue) with the shut-down error.
    pub(crate) fn fail_stopped(&self, done: SyncCallback) {
        run_callback(&self.inner.engine, done, Err(stopped_error()));
    }

    /// The committer's counters.
    pub fn stats(&self) -> SyncStats {
        let engine = &self.inner.engine;
        SyncStats {
            syncs: engine.syncs.load(Ordering::Relaxed),
            requests: engine.requests.load(Ordering::Relaxed),
            callback_panics: engine.callback_panics.load(Ordering::Relaxed),
        }
    }

    /// A handle that tells how long the sync in progress has been running, without keeping
    /// the database open.
    pub fn sync_probe(&self) -> SyncProbe {
        SyncProbe {
            engine: Arc::downgrade(&self.inner.engine),
        }
    }

    /// Starts a thread that calls `on_stall` once if a sync runs for longer than `limit`.
    ///
    /// Why: every acknowledged write waits for a sync, so a sync that never returns (sled 0.34
    /// was seen waiting forever inside its `flush`, BENCHMARKS.md, ninth pass) leaves the node
    /// alive, holding its locks and answering nothing, with no error anywhere. The owner of the
    /// process decides what to do; the node's binary logs and exits so that its supervisor
    /// restarts it, which is how sled recovers. Nothing can be shut down gracefully at that
    /// point: a shutdown would wait for the stuck sync too.
    ///
    /// The thread checks a few times per `limit` (at least once a second) and ends, without
    /// calling `on_stall`, once the database is closed. `on_stall` learns how long the sync
    /// has run and the step it is stuck at, which tells a disk that stopped completing writes
    /// (the fdatasync) from a wait inside sled.
    ///
    /// When no sync has started for half of `limit`, the thread asks for one itself (a
    /// heartbeat). sled 0.34 can lose track of which part of its log is on disk (BENCHMARKS.md,
    /// thirteenth pass): from then on every flush, and every read of a page it must fetch from
    /// its log, waits forever. A node importing a snapshot or rebuilding its map file at start
    /// makes no syncs of its own for minutes, so without the heartbeat such a wait in a read
    /// hung the node silently; now it shows as a stalled sync within 1.5 × `limit`.
    pub fn spawn_stall_watchdog(
        &self,
        limit: Duration,
        on_stall: impl FnOnce(Stall) + Send + 'static,
    ) -> io::Result<()> {
        let probe = self.sync_probe();
        let queue = Arc::downgrade(&self.inner.queue);
        let every = (limit / 4).clamp(Duration::from_millis(10), Duration::from_secs(1));
        let _detached = thread::Builder::new()
            .name("wl-store-watchdog".to_owned())
            .spawn(move || {
                let mut seen_syncs = None;
                let mut quiet_since = Instant::now();
                loop {
                    thread::sleep(every);
                    match probe.stall() {
                        Err(Closed) => return,
                        Ok(Some(stall)) if stall.running > limit => {
                            on_stall(stall);
                            return;
                        }
                        Ok(Some(_)) => {}
                        Ok(None) => {
                            let Ok(syncs) = probe.syncs() else { return };
                            if seen_syncs != Some(syncs) {
                                seen_syncs = Some(syncs);
                                quiet_since = Instant::now();
                            } else if quiet_since.elapsed() >= limit / 2 {
                                let Some(queue) = queue.upgrade() else { return };
                                // Refused only while shutting down; nothing to watch then.
                                let _ = queue.push(Box::new(|_| {}));
                                quiet_since = Instant::now();
                            }
                        }
                    }
                }
            })?;
        Ok(())
    }

    /// Test hook: the next sync fails with EIO.
    #[cfg(test)]
    pub(crate) fn fail_next_sync(&self) {
        self.inner
            .engine
            .fail_next_sync
            .store(true, Ordering::SeqCst);
    }

    /// Test hook: the next sync takes `ms` milliseconds longer.
    #[cfg(test)]
    pub(crate) fn delay_next_sync(&self, ms: u64) {
        self.inner
            .engine
            .delay_next_sync_ms
            .store(ms, Ordering::SeqCst);
    }

    /// Test hook: hold the sync lock so that requests pile up behind a sync.
    #[cfg(test)]
    pub(crate) fn hold_sync_lock(&self) -> impl Sized + '_ {
        lock(&self.inner.engine.sync_state)
    }
}

/// Watches a [`DurableDb`]'s syncs from outside ([`DurableDb::sync_probe`]); it does not keep
/// the database open.
#[derive(Clone)]
pub struct SyncProbe {
    engine: Weak<Engine>,
}

impl std::fmt::Debug for SyncProbe {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SyncProbe")
            .field("open", &(self.engine.strong_count() > 0))
            .finish()
    }
}

/// The database a [`SyncProbe`] watches has been closed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Closed;

impl SyncProbe {
    /// How long the sync in progress has been running (`None`: no sync is running), or
    /// [`Closed`] once the database is gone.
    pub fn sync_running_for(&self) -> Result<Option<Duration>, Closed> {
        Ok(self.stall()?.map(|s| s.running))
    }

    /// Syncs performed so far.
    pub fn syncs(&self) -> Result<u64, Closed> {
        let engine = self.engine.upgrade().ok_or(Closed)?;
        Ok(engine.syncs.load(Ordering::Relaxed))
    }

    /// The sync in progress, if one is: how long it has run and the step it is at.
    pub fn stall(&self) -> Result<Option<Stall>, Closed> {
        let engine = self.engine.upgrade().ok_or(Closed)?;
        // The phase is read after the start: a sync that ends between the two reads is
        // reported with the next sync's first phase, which is harmless for a diagnosis.
        Ok(engine.sync_running_for().map(|running| Stall {
            running,
            phase: SyncPhase::from_u8(engine.sync_phase.load(Ordering::Acquire)),
        }))
    }
}

/// A sync that has run for a while ([`SyncProbe::stall`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Stall {
    /// How long it has been running.
    pub running: Duration,
    /// The step it is at.
    pub phase: SyncPhase,
}

/// The steps of one sync, in order.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum SyncPhase {
    /// Waiting for a sled batch in progress to finish (the store lets no flush run beside one).
    WaitingForBatch = 0,
    /// Inside sled's `flush`: writing its log buffers to the data file.
    SledFlush = 1,
    /// fsyncing sled's blob files.
    BlobFiles = 2,
    /// `fdatasync` of the data file: the device has to complete the writes.
    DataFile = 3,
    /// fsyncing the database directory.
    Directory = 4,
}

impl SyncPhase {
    fn from_u8(n: u8) -> SyncPhase {
        match n {
            1 => SyncPhase::SledFlush,
            2 => SyncPhase::BlobFiles,
            3 => SyncPhase::DataFile,
            4 => SyncPhase::Directory,
            _ => SyncPhase::WaitingForBatch,
        }
    }

    /// What the step waits for, for a log line.
    pub fn describe(self) -> &'static str {
        match self {
            SyncPhase::WaitingForBatch => "waiting for a database batch in progress to finish",
            SyncPhase::SledFlush => "inside sled's flush, writing its log buffers to the data file",
            SyncPhase::BlobFiles => "fsync of sled's blob files",
            SyncPhase::DataFile => {
                "fdatasync of the data file: the device is not completing the writes"
            }
            SyncPhase::Directory => "fsync of the database directory",
        }
    }

    /// A short name, for a structured log field.
    pub fn name(self) -> &'static str {
        match self {
            SyncPhase::WaitingForBatch => "waiting_for_batch",
            SyncPhase::SledFlush => "sled_flush",
            SyncPhase::BlobFiles => "blob_files",
            SyncPhase::DataFile => "data_file",
            SyncPhase::Directory => "directory",
        }
    }
}

impl Drop for Inner {
    fn drop(&mut self) {
        lock(&self.queue.state).shutdown = true;
        self.queue.wake.notify_all();
        let Some(committer) = self.committer.take() else {
            return;
        };
        if thread::current().id() == committer.thread().id() {
            // The last handle was dropped by a callback, on the committer thread itself: it
            // cannot join itself. It sees `shutdown` after this batch and exits on its own,
            // holding its own references to the engine until then.
            return;
        }
        // A panic in the committer has already been reported by the panic hook, and its exit
        // guard has failed every pending callback; there is nothing more to do with it.
        let _ = committer.join();
    }
}

impl Engine {
    /// One full sync: flush, then fsync blobs, the data file and changed directories.
    fn sync_now(&self) -> io::Result<()> {
        let mut state = lock(&self.sync_state);
        let result = match &state.poisoned {
            Some((kind, message)) => Err(io::Error::new(
                *kind,
                format!(
                    "an earlier sync of this database failed ({message}); writes since then may \
                     be lost, so nothing is reported durable until the database is reopened"
                ),
            )),
            None => {
                let started = Instant::now();
                self.sync_started_us
                    .store(self.micros_since_open(started) + 1, Ordering::Release);
                let result = self.sync_locked(&mut state);
                self.sync_started_us.store(0, Ordering::Release);
                // One group commit's flush + fdatasync: the floor under every write's latency.
                metrics::histogram!("wasteledger_fsync_seconds")
                    .record(started.elapsed().as_secs_f64());
                if let Err(e) = &result {
                    state.poisoned = Some((e.kind(), e.to_string()));
                }
                result
            }
        };
        let _ = self.syncs.fetch_add(1, Ordering::Relaxed);
        result
    }

    fn micros_since_open(&self, at: Instant) -> u64 {
        u64::try_from(at.saturating_duration_since(self.opened).as_micros()).unwrap_or(u64::MAX - 1)
    }

    /// How long the sync in progress has been running, if one is.
    fn sync_running_for(&self) -> Option<Duration> {
        match self.sync_started_us.load(Ordering::Acquire) {
            0 => None,
            started => Some(Duration::from_micros(
                self.micros_since_open(Instant::now())
                    .saturating_sub(started - 1),
            )),
        }
    }

    /// Makes every later sync fail with `error`'s description.
    fn poison(&self, error: &io::Error) {
        let mut state = lock(&self.sync_state);
        if state.poisoned.is_none() {
            state.poisoned = Some((error.kind(), error.to_string()));
        }
    }

    fn sync_locked(&self, state: &mut SyncState) -> io::Result<()> {
        #[cfg(test)]
        if self.fail_next_sync.swap(false, Ordering::SeqCst) {
            return Err(io::Error::from_raw_os_error(5)); // EIO
        }
        // Everything sled reserved in its log before this call is written to the data file
        // (pwrite + sync_file_range): in the page cache, maybe in the device cache.
        {
            self.enter(SyncPhase::WaitingForBatch);
            let _gate = lock(&SLED_BATCH_GATE);
            self.enter(SyncPhase::SledFlush);
            let _ = self.db.flush().map_err(io::Error::from)?;
        }
        self.enter(SyncPhase::BlobFiles);
        self.sync_blobs(state)?;
        // The real durability point for the data file: fdatasync flushes the device cache and
        // commits the file size.
        self.enter(SyncPhase::DataFile);
        // Test hook: a device slow to complete the writes.
        #[cfg(test)]
        thread::sleep(Duration::from_millis(
            self.delay_next_sync_ms.swap(0, Ordering::SeqCst),
        ));
        self.data_file.sync_data()?;
        self.enter(SyncPhase::Directory);
        self.sync_dir_if_changed(state)
    }

    fn enter(&self, phase: SyncPhase) {
        self.sync_phase.store(phase as u8, Ordering::Release);
    }

    /// fsyncs blob files not synced yet (or grown since), then the blob directory if it gained
    /// entries. With our limits the directory is empty in practice, so this is one `readdir`.
    fn sync_blobs(&self, state: &mut SyncState) -> io::Result<()> {
        let blob_dir = self.dir.join(SLED_BLOB_DIR);
        let mut present = HashMap::new();
        let mut new_entries = false;
        for entry in fs::read_dir(&blob_dir)? {
            let entry = entry?;
            let name = entry.file_name();
            let file = match File::open(entry.path()) {
                Ok(file) => file,
                // sled's segment GC removed it since the readdir: nothing left to sync.
                Err(e) if e.kind() == io::ErrorKind::NotFound => continue,
                Err(e) => return Err(e),
            };
            // Length before the fsync: a blob being written concurrently (it belongs to a later
            // sync) grows afterwards, so the next sync sees a different length and syncs again.
            let len = file.metadata()?.len();
            match state.synced_blobs.get(&name) {
                Some(&synced_len) if synced_len == len => {}
                previous => {
                    file.sync_data()?;
                    new_entries |= previous.is_none();
                }
            }
            let _ = present.insert(name, len);
        }
        if new_entries {
            sync_dir(&blob_dir)?;
        }
        // Forget blobs sled has removed, so the map does not grow forever.
        state.synced_blobs = present;
        Ok(())
    }

    /// fsyncs the database directory if its entries changed since the last time (or on the
    /// first sync after open). sled 0.34.7 only creates or renames top-level files while it
    /// opens, so after open this is one `readdir` per sync.
    fn sync_dir_if_changed(&self, state: &mut SyncState) -> io::Result<()> {
        let entries = fs::read_dir(&self.dir)?
            .map(|entry| entry.map(|entry| entry.file_name()))
            .collect::<io::Result<BTreeSet<_>>>()?;
        if state.dir_entries.as_ref() != Some(&entries) {
            sync_dir(&self.dir)?;
            state.dir_entries = Some(entries);
        }
        Ok(())
    }
}

/// Runs a callback, containing a panic so that one bad callback cannot stop the committer and
/// strand every later request.
fn run_callback(engine: &Engine, done: SyncCallback, result: io::Result<()>) {
    if catch_unwind(AssertUnwindSafe(move || done(result))).is_err() {
        let _ = engine.callback_panics.fetch_add(1, Ordering::Relaxed);
    }
}

/// On the committer's exit, normal or by panic: refuse new requests and fail the pending ones,
/// so that no callback is ever dropped without being called.
struct ExitGuard<'a> {
    engine: &'a Engine,
    queue: &'a Queue,
}

impl Drop for ExitGuard<'_> {
    fn drop(&mut self) {
        let pending = {
            let mut state = lock(&self.queue.state);
            state.stopped = true;
            std::mem::take(&mut state.pending)
        };
        for done in pending {
            run_callback(self.engine, done, Err(stopped_error()));
        }
    }
}

/// The committer thread: one sync per batch of requests that queued up during the previous one.
fn run_committer(engine: &Engine, queue: &Queue) {
    let _exit = ExitGuard { engine, queue };
    loop {
        let batch = {
            let mut state = lock(&queue.state);
            while state.pending.is_empty() && !state.shutdown {
                state = queue
                    .wake
                    .wait(state)
                    .unwrap_or_else(PoisonError::into_inner);
            }
            if state.pending.is_empty() {
                // Shut down and nothing left to serve.
                return;
            }
            std::mem::take(&mut state.pending)
        };
        // Every request in `batch` was queued after its writes completed, and this sync starts
        // after all of them were queued, so it covers all their writes. A panic inside sled must
        // not unwind past `batch`, which would drop its callbacks uncalled.
        let result = catch_unwind(AssertUnwindSafe(|| engine.sync_now())).unwrap_or_else(|_| {
            let error = io::Error::other("sync panicked (see the panic message above)");
            engine.poison(&error);
            Err(error)
        });
        let _ = engine
            .requests
            .fetch_add(batch.len() as u64, Ordering::Relaxed);
        for done in batch {
            run_callback(engine, done, share(&result));
        }
    }
}

/// A sled tree that only accepts writes within the crate's size limits.
///
/// Writes are not durable until a [`DurableDb::sync`] (or a `sync_async` callback) that started
/// after them has returned.
#[derive(Clone, Debug)]
pub struct DurableTree {
    tree: sled::Tree,
}

/// Checks a key and value against [`MAX_KEY_BYTES`] and [`MAX_VALUE_BYTES`]; for code that
/// writes through a raw tree ([`DurableDb::raw_tree`]).
pub fn check_sizes(key: &[u8], value: &[u8]) -> Result<(), StoreError> {
    if key.len() > MAX_KEY_BYTES {
        return Err(StoreError::KeyTooLarge {
            len: key.len(),
            max: MAX_KEY_BYTES,
        });
    }
    if value.len() > MAX_VALUE_BYTES {
        return Err(StoreError::ValueTooLarge {
            len: value.len(),
            max: MAX_VALUE_BYTES,
        });
    }
    Ok(())
}

impl DurableTree {
    /// The value stored under `key`.
    pub fn get(&self, key: &[u8]) -> Result<Option<IVec>, StoreError> {
        Ok(self.tree.get(key)?)
    }

    /// Stores `value` under `key`, refusing keys and values above the limits.
    pub fn insert(&self, key: &[u8], value: &[u8]) -> Result<(), StoreError> {
        check_sizes(key, value)?;
        let _ = self.tree.insert(key, value)?;
        Ok(())
    }

    /// Removes `key` (no error if it is absent).
    pub fn remove(&self, key: &[u8]) -> Result<(), StoreError> {
        let _ = self.tree.remove(key)?;
        Ok(())
    }

    /// Applies every write of `batch` atomically: after a crash either all or none of them are
    /// recovered.
    ///
    /// Cost: sled 0.34 applies a batch under a process-wide write lock (its "concurrency
    /// control") that first waits for every `flush()` in progress, including the committer's
    /// (here, at the store's own flush/batch gate), and holds up all other writes meanwhile.
    /// Use batches where atomicity is needed, not as a speed-up.
    pub fn apply_batch(&self, batch: WriteBatch) -> Result<(), StoreError> {
        Ok(apply_sled_batch(&self.tree, batch.batch)?)
    }

    /// Key-value pairs with keys in `range`, in key order (reversible).
    pub fn range<K, R>(
        &self,
        range: R,
    ) -> impl DoubleEndedIterator<Item = Result<(IVec, IVec), StoreError>> + use<K, R>
    where
        K: AsRef<[u8]>,
        R: RangeBounds<K>,
    {
        self.tree
            .range(range)
            .map(|item| item.map_err(StoreError::from))
    }

    /// The pair with the smallest key.
    pub fn first(&self) -> Result<Option<(IVec, IVec)>, StoreError> {
        Ok(self.tree.first()?)
    }

    /// The pair with the largest key.
    pub fn last(&self) -> Result<Option<(IVec, IVec)>, StoreError> {
        Ok(self.tree.last()?)
    }
}

/// A set of writes to one [`DurableTree`], applied atomically by [`DurableTree::apply_batch`].
///
/// Size limits are checked as writes are added, so a batch that was built is always applied in
/// full.
#[derive(Debug, Default, Clone)]
pub struct WriteBatch {
    batch: sled::Batch,
    len: usize,
}

impl WriteBatch {
    /// An empty batch.
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds an insert, refusing keys and values above the limits.
    pub fn insert(&mut self, key: &[u8], value: &[u8]) -> Result<(), StoreError> {
        check_sizes(key, value)?;
        self.batch.insert(key, value);
        self.len += 1;
        Ok(())
    }

    /// Adds a removal.
    pub fn remove(&mut self, key: &[u8]) {
        self.batch.remove(key);
        self.len += 1;
    }

    /// Number of writes added (a key written twice counts twice).
    pub fn len(&self) -> usize {
        self.len
    }

    /// Whether no write was added.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::mpsc::Receiver;

    const WAIT: Duration = Duration::from_secs(30);

    fn open() -> (tempfile::TempDir, DurableDb) {
        let dir = tempfile::tempdir().expect("tempdir");
        let db = DurableDb::open(dir.path().join("db")).expect("open");
        (dir, db)
    }

    /// Queues `n` sync requests whose callbacks report (request number, result).
    fn request_n(db: &DurableDb, n: usize) -> Receiver<(usize, io::Result<()>)> {
        let (tx, rx) = mpsc::channel();
        for i in 0..n {
            let tx = tx.clone();
            db.sync_async(Box::new(move |r| {
                let _ = tx.send((i, r));
            }));
        }
        rx
    }

    #[test]
    fn blob_threshold_matches_sled_formula() {
        assert_eq!(SLED_BLOB_THRESHOLD, 4 * 1024 * 1024 - 52);
    }

    #[test]
    fn sync_makes_writes_visible_after_reopen() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("db");
        {
            let db = DurableDb::open(&path).expect("open");
            let tree = db.open_tree("t").expect("tree");
            tree.insert(b"k", b"v").expect("insert");
            db.sync().expect("sync");
        }
        let db = DurableDb::open(&path).expect("reopen");
        let tree = db.open_tree("t").expect("tree");
        assert_eq!(tree.get(b"k").expect("get").as_deref(), Some(&b"v"[..]));
    }

    #[test]
    fn callbacks_run_after_a_sync_in_request_order() {
        let (_dir, db) = open();
        let tree = db.open_tree("t").expect("tree");
        let (tx, rx) = mpsc::channel();
        for i in 0..50u32 {
            tree.insert(&i.to_be_bytes(), b"x").expect("insert");
            let syncs_before = db.stats().syncs;
            let probe = db.clone();
            let tx = tx.clone();
            db.sync_async(Box::new(move |r| {
                // The sync that served this request completed before the callback.
                let _ = tx.send((i, r.is_ok(), probe.stats().syncs > syncs_before));
            }));
        }
        for expected in 0..50u32 {
            let (i, ok, after_sync) = rx.recv_timeout(WAIT).expect("callback");
            assert_eq!(i, expected, "callbacks out of request order");
            assert!(ok);
            assert!(
                after_sync,
                "callback {i} ran before any sync that could cover it"
            );
        }
    }

    #[test]
    fn requests_queued_during_a_sync_share_one_sync() {
        let (_dir, db) = open();
        let before = db.stats();
        let rx = {
            // Block the committer inside its sync, pile up requests, then let it go.
            let _held = db.hold_sync_lock();
            let rx = request_n(&db, 20);
            std::thread::sleep(Duration::from_millis(50));
            rx
        };
        for expected in 0..20 {
            let (i, r) = rx.recv_timeout(WAIT).expect("callback");
            assert_eq!(i, expected);
            r.expect("sync");
        }
        let after = db.stats();
        assert_eq!(after.requests - before.requests, 20);
        // At most: the one sync that was blocked (holding the first request) and one more for
        // everything that queued behind it.
        assert!(after.syncs - before.syncs <= 2, "{before:?} -> {after:?}");
    }

    #[test]
    fn a_failed_sync_reaches_every_callback_and_poisons_the_db() {
        let (_dir, db) = open();
        let rx = {
            let _held = db.hold_sync_lock();
            let rx = request_n(&db, 5);
            db.fail_next_sync();
            rx
        };
        for expected in 0..5 {
            let (i, r) = rx.recv_timeout(WAIT).expect("callback");
            assert_eq!(i, expected);
            assert!(
                r.is_err(),
                "request {i} reported durable after a failed sync"
            );
        }
        // Poisoned: a later sync fails too, even though nothing injects a failure any more.
        let err = db.sync().expect_err("poisoned");
        assert!(err.to_string().contains("earlier sync"), "{err}");
    }

    #[test]
    fn drop_completes_pending_callbacks() {
        let (_dir, db) = open();
        let rx = request_n(&db, 10);
        drop(db);
        let mut seen = 0;
        while let Ok((i, r)) = rx.recv_timeout(WAIT) {
            assert_eq!(i, seen);
            r.expect("pending request served by the final sync");
            seen += 1;
        }
        assert_eq!(seen, 10);
    }

    #[test]
    fn last_handle_dropped_by_a_callback_does_not_deadlock() {
        let (_dir, db) = open();
        let (tx, rx) = mpsc::channel();
        let handle = db.clone();
        db.sync_async(Box::new(move |r| {
            // Sync inline from the committer thread, then drop what may be the last handle.
            let inline = handle.sync();
            drop(handle);
            let _ = tx.send((r.is_ok(), inline.is_ok()));
        }));
        drop(db);
        assert_eq!(rx.recv_timeout(WAIT).expect("callback"), (true, true));
    }

    #[test]
    fn a_panicking_callback_does_not_stop_the_committer() {
        let (_dir, db) = open();
        db.sync_async(Box::new(|_| panic!("callback bug (expected in this test)")));
        db.sync().expect("committer still serves requests");
        assert_eq!(db.stats().callback_panics, 1);
    }

    #[test]
    fn size_limits_are_enforced() {
        let (_dir, db) = open();
        let tree = db.open_tree("t").expect("tree");
        tree.insert(b"max", &vec![7; MAX_VALUE_BYTES])
            .expect("max size accepted");
        assert!(matches!(
            tree.insert(b"big", &vec![7; MAX_VALUE_BYTES + 1]),
            Err(StoreError::ValueTooLarge { len, max }) if len == MAX_VALUE_BYTES + 1 && max == MAX_VALUE_BYTES
        ));
        assert!(matches!(
            tree.insert(&[1; MAX_KEY_BYTES + 1], b"v"),
            Err(StoreError::KeyTooLarge { .. })
        ));
        let mut batch = WriteBatch::new();
        batch.insert(b"a", b"ok").expect("small");
        assert!(batch.insert(b"b", &vec![0; MAX_VALUE_BYTES + 1]).is_err());
        assert_eq!(batch.len(), 1);
        tree.apply_batch(batch).expect("apply");
        assert!(tree.get(b"b").expect("get").is_none());
    }

    #[test]
    fn maximum_size_values_stay_out_of_blob_files() {
        let (_dir, db) = open();
        let tree = db.open_tree("t").expect("tree");
        // Enough maximum-size values for several full leaves, each consolidated several times.
        for i in 0..200u32 {
            tree.insert(&i.to_be_bytes(), &vec![i as u8; MAX_VALUE_BYTES])
                .expect("insert");
        }
        db.sync().expect("sync");
        let blobs = fs::read_dir(db.path().join(SLED_BLOB_DIR))
            .expect("blob dir")
            .count();
        assert_eq!(blobs, 0, "sled wrote blob files");
        for i in 0..200u32 {
            let value = tree.get(&i.to_be_bytes()).expect("get").expect("present");
            assert_eq!(value.len(), MAX_VALUE_BYTES);
        }
    }

    #[test]
    fn requests_after_the_committer_stopped_fail_at_once() {
        let (_dir, db) = open();
        lock(&db.inner.queue.state).stopped = true;
        let rx = request_n(&db, 1);
        let (_, r) = rx.recv_timeout(WAIT).expect("callback");
        assert!(r.is_err());
        lock(&db.inner.queue.state).stopped = false;
    }

    #[test]
    fn the_probe_sees_a_sync_while_it_runs_and_the_database_close() {
        let (_dir, db) = open();
        let probe = db.sync_probe();
        assert_eq!(probe.sync_running_for(), Ok(None));
        db.delay_next_sync(300);
        let rx = request_n(&db, 1);
        let mut seen = None;
        for _ in 0..200 {
            if let Ok(Some(running)) = probe.sync_running_for() {
                seen = Some(running);
                break;
            }
            std::thread::sleep(Duration::from_millis(5));
        }
        assert!(seen.is_some(), "the delayed sync was never seen running");
        let (_, r) = rx.recv_timeout(WAIT).expect("callback");
        r.expect("the delayed sync succeeds");
        assert_eq!(probe.sync_running_for(), Ok(None));
        drop(db);
        assert_eq!(probe.sync_running_for(), Err(Closed));
    }

    #[test]
    fn the_watchdog_reports_a_sync_that_runs_too_long() {
        let (_dir, db) = open();
        let (tx, stalls) = mpsc::channel();
        db.spawn_stall_watchdog(Duration::from_millis(100), move |stall| {
            let _ = tx.send(stall);
        })
        .expect("watchdog");
        db.delay_next_sync(1_000);
        let rx = request_n(&db, 1);
        let stall = stalls.recv_timeout(WAIT).expect("the stall is reported");
        assert!(stall.running > Duration::from_millis(100), "{stall:?}");
        // The test delay sits in the fdatasync, as a device that stopped completing writes.
        assert_eq!(stall.phase, SyncPhase::DataFile);
        let (_, r) = rx.recv_timeout(WAIT).expect("callback");
        r.expect("the slow sync still succeeds");
        // Reported once: the watchdog is done.
        assert!(stalls.recv_timeout(Duration::from_millis(300)).is_err());
    }

    /// A database nobody syncs is still watched: the watchdog asks for a sync of its own
    /// once none has started for half the limit, and a stuck one is reported.
    #[test]
    fn the_watchdog_probes_a_quiet_database() {
        let (_dir, db) = open();
        let before = db.stats().syncs;
        db.delay_next_sync(1_000);
        let (tx, stalls) = mpsc::channel();
        db.spawn_stall_watchdog(Duration::from_millis(100), move |stall| {
            let _ = tx.send(stall);
        })
        .expect("watchdog");
        // No request from here on: only the watchdog's own sync can stall.
        let stall = stalls
            .recv_timeout(WAIT)
            .expect("the stuck heartbeat is reported");
        assert!(stall.running > Duration::from_millis(100), "{stall:?}");
        assert_eq!(stall.phase, SyncPhase::DataFile);
        // It was a sync of the watchdog's: it completes, and counts.
        for _ in 0..200 {
            if db.stats().syncs > before {
                break;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        assert!(db.stats().syncs > before);
    }

    #[test]
    fn the_watchdog_stays_quiet_while_syncs_are_quick_and_ends_with_the_database() {
        let (_dir, db) = open();
        let (tx, stalls) = mpsc::channel();
        db.spawn_stall_watchdog(Duration::from_millis(500), move |stall| {
            let _ = tx.send(stall);
        })
        .expect("watchdog");
        for _ in 0..20 {
            db.sync().expect("sync");
        }
        db.delay_next_sync(100);
        db.sync().expect("a slow sync under the limit");
        assert!(stalls.recv_timeout(Duration::from_millis(700)).is_err());
        drop(db);
        // The thread ends without reporting, dropping its end of the channel.
        assert_eq!(
            stalls.recv_timeout(WAIT),
            Err(mpsc::RecvTimeoutError::Disconnected)
        );
    }
}

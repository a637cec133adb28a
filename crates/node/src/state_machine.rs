//! The Raft state machine: applies committed log entries to the ledger in sled, answers each
//! client, and builds and installs snapshots as files.
//!
//! Every node runs [`wasteledger_store::state::LedgerStore::apply`] — which runs the core's
//! deterministic decision function — on every committed entry, so all nodes reach the same
//! verdicts, roots and rejections. The Raft last-applied id and membership are written in the
//! same sled batch as the entries they follow (one batch per applied group), so a crash never
//! separates them.
//!
//! Snapshots are files ([`crate::snapshot_file`]). One this node builds holds the records
//! later entries can change (states, indexes, metadata) and leaves out the settled history,
//! which its store keeps and which is read from there when the snapshot is sent; an installed
//! snapshot is a complete file.

use std::fs::{self, File};
use std::io;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Instant;

use futures::{Stream, TryStreamExt};
use openraft::alias::{SnapshotMetaOf, SnapshotOf, StoredMembershipOf};
use openraft::storage::{EntryResponder, RaftStateMachine};
use openraft::{
    EntryPayload, OptionalSend, RaftSnapshotBuilder, Snapshot, SnapshotMeta, StoredMembership,
};
use prost::Message;
use wasteledger_core::checkpoint::NoteSignature;
use wasteledger_core::genesis::Genesis;
use wasteledger_core::ledger::Rejection;
use wasteledger_core::pb;
use wasteledger_store::state::{
    ChangingCopy, CosignOutcome, HistoryCheck, HistoryChecked, IntegrityError, LedgerStore,
};
use wasteledger_store::{DurableDb, StoreError, rename_durably, sync_dir};

use crate::snapshot_file::{self, Chain, SettledPart, SnapshotHeader, SnapshotWriter};
use crate::types::{
    LedgerRequest, LedgerResponse, LogId, SnapshotFile, TypeConfig, decode, encode,
};

const LEDGER_TREE: &str = "ledger";
/// In the snapshot directory while an install replaces the store: the name of the snapshot
/// file being installed. An install clears the store and imports records one at a time, so a
/// node stopped part-way (a crash, the storage watchdog) would otherwise reopen a store that is
/// neither the old state nor the new; with the journal it finishes the install at open.
const INSTALL_JOURNAL: &str = "installing";
const LAST_APPLIED: &[u8] = b"raft/last_applied";
const MEMBERSHIP: &[u8] = b"raft/membership";

/// Where the refusal of the event at a Raft log index is recorded (`code\nmessage`),
/// identically on every node.
pub fn rejection_key(raft_index: u64) -> Vec<u8> {
    [b"raft/rejection/".as_slice(), &raft_index.to_be_bytes()].concat()
}

/// Where the refusal of the event in position `slot` of the
/// [`LedgerRequest::SubmitBatch`] at a Raft log index is recorded, identically on every node.
pub fn batch_rejection_key(raft_index: u64, slot: usize) -> Vec<u8> {
    [
        rejection_key(raft_index),
        (slot as u32).to_be_bytes().to_vec(),
    ]
    .concat()
}

fn io_err(e: impl std::fmt::Display) -> io::Error {
    io::Error::other(e.to_string())
}

struct Inner {
    store: LedgerStore,
    last_applied: Option<LogId>,
    membership: StoredMembershipOf<TypeConfig>,
    /// The snapshot file, and the number of the store copy
    /// ([`wasteledger_store::state::ChangingCopy::number`]) it was built from, so the next
    /// build can start from it; `None` for a snapshot installed or found at start-up.
    current_snapshot: Option<(SnapshotHeader, PathBuf, Option<u64>)>,
}

/// The ledger state machine (a cheap-clone handle).
#[derive(Clone)]
pub struct LedgerStateMachine {
    inner: Arc<Mutex<Inner>>,
    /// Counts installs that replace the store: odd while one runs, bumped again when it ends.
    /// What is read of the store without the lock (a snapshot's settled history, as it is
    /// written or sent) is valid only if this did not change meanwhile.
    installs: Arc<AtomicU64>,
    /// Set when sending this node's snapshot found one of its files unreadable: the next
    /// build then writes a whole file from a scan of the store ([`SettledPart::unreadable`]).
    snapshot_unreadable: Arc<AtomicBool>,
    db: DurableDb,
    genesis: Genesis,
    snapshot_dir: PathBuf,
    map_path: PathBuf,
}

impl LedgerStateMachine {
    /// Opens the state machine stored in `db` and the completeness-map file at `map_path`, with
    /// snapshots kept in `snapshot_dir`.
    pub fn open(
        db: &DurableDb,
        genesis: Genesis,
        snapshot_dir: PathBuf,
        map_path: PathBuf,
    ) -> Result<LedgerStateMachine, StoreError> {
        fs::create_dir_all(&snapshot_dir)?;
        finish_interrupted_install(db, &genesis, &snapshot_dir, &map_path)?;
        let store = LedgerStore::open(db.raw_tree(LEDGER_TREE)?, &map_path, genesis.clone())?;
        let last_applied = match store.get_meta(LAST_APPLIED)? {
            Some(b) => decode(&b)
                .map_err(|e| StoreError::Inconsistent(format!("raft last applied: {e}")))?,
            None => None,
        };
        let membership = match store.get_meta(MEMBERSHIP)? {
            Some(b) => {
                decode(&b).map_err(|e| StoreError::Inconsistent(format!("raft membership: {e}")))?
            }
            None => StoredMembership::default(),
        };
        let mut current_snapshot =
            latest_snapshot(&snapshot_dir).map(|(header, path)| (header, path, None));
        if let Some((header, path, _)) = &current_snapshot
            && header.omitted_below > store.merkle_size()
        {
            // Cannot happen while the store is the one the snapshot was built from; sending it
            // would give a peer a snapshot with missing history.
            tracing::error!(
                path = %path.display(),
                omitted_below = header.omitted_below,
                ledger_size = store.merkle_size(),
                "ignoring a snapshot whose history the store does not hold"
            );
            current_snapshot = None;
        }
        Ok(LedgerStateMachine {
            inner: Arc::new(Mutex::new(Inner {
                store,
                last_applied,
                membership,
                current_snapshot,
            })),
            installs: Arc::new(AtomicU64::new(0)),
            snapshot_unreadable: Arc::new(AtomicBool::new(false)),
            db: db.clone(),
            genesis,
            snapshot_dir,
            map_path,
        })
    }

    /// Locks the state. Callers are async tasks (API handlers, the apply loop) on a small
    /// runtime, and a snapshot build holds the lock for a long time: waiting on a plain mutex
    /// would block the worker thread, and with every worker blocked Raft misses heartbeats and
    /// holds an election. So an uncontended lock is taken at once, and a contended wait on a
    /// multi-thread runtime tells tokio to move other tasks off this thread first.
    ///
    /// Between the two, a contended lock is retried a few times after yielding the CPU: most
    /// holds are one event's check or apply (tens of microseconds), and on a busy leader
    /// (64 writers' pre-checks against the apply loop) handing the worker's tasks to another
    /// thread for each of them cost more than the wait. Measured: +8 % events/s and −12 % leader
    /// CPU at 64 writers (BENCHMARKS.md, fourteenth pass).
    fn lock(&self) -> io::Result<MutexGuard<'_, Inner>> {
        /// Yields before falling back to `block_in_place`: bounded, so a long hold (a snapshot
        /// build's start, a commit) still moves the worker's other tasks away.
        const LOCK_YIELDS: usize = 16;
        let poisoned = |_| io_err("state machine lock poisoned by an earlier panic");
        for attempt in 0..=LOCK_YIELDS {
            if attempt > 0 {
                std::thread::yield_now();
            }
            match self.inner.try_lock() {
                Ok(guard) => return Ok(guard),
                Err(std::sync::TryLockError::Poisoned(e)) => return Err(poisoned(e)),
                Err(std::sync::TryLockError::WouldBlock) => {}
            }
        }
        let on_worker = tokio::runtime::Handle::try_current()
            .is_ok_and(|h| h.runtime_flavor() == tokio::runtime::RuntimeFlavor::MultiThread);
        if on_worker {
            tokio::task::block_in_place(|| self.inner.lock()).map_err(poisoned)
        } else {
            self.inner.lock().map_err(poisoned)
        }
    }

    /// Runs `f` with the ledger store (for queries, proofs and the witness). Do not hold the
    /// result of a borrow across an await.
    pub fn with_store<T>(&self, f: impl FnOnce(&LedgerStore) -> T) -> io::Result<T> {
        Ok(f(&self.lock()?.store))
    }

    /// The genesis this node serves.
    pub fn genesis(&self) -> &Genesis {
        &self.genesis
    }

    /// Decides one submitted event (`event` as the client sent it) and stages the outcome with
    /// `meta` (the new last-applied mark, when the caller has not staged it); a refusal is
    /// recorded under `rejection_key`.
    fn apply_event(
        inner: &mut Inner,
        event: &[u8],
        sequenced_at: i64,
        meta: &[(&[u8], Vec<u8>)],
        rejection_key: &[u8],
    ) -> io::Result<LedgerResponse> {
        let signed = match pb::SignedEvent::decode(event) {
            Ok(s) => s,
            Err(e) => {
                let code = "envelope.malformed";
                let message = format!("not a wasteledger.v1.SignedEvent: {e}");
                inner.store.put_meta(meta).map_err(io_err)?;
                inner
                    .store
                    .put_rejection(rejection_key, code, &message)
                    .map_err(io_err)?;
                return Ok(LedgerResponse::Rejected {
                    code: code.into(),
                    kind: wasteledger_core::ledger::RejectionKind::Malformed
                        .name()
                        .into(),
                    message,
                    duplicate_of: None,
                });
            }
        };
        match inner
            .store
            .apply_recording(&signed, sequenced_at, meta, Some(rejection_key))
            .map_err(io_err)?
        {
            Ok(receipt) => Ok(LedgerResponse::Accepted {
                index: receipt.index,
                event_hash: receipt.event_hash.0,
                leaf_hash: receipt.leaf_hash.0,
                tree_size: receipt.tree_size,
            }),
            Err(rejection) => Ok(rejected(&rejection)),
        }
    }

    fn apply_one(
        inner: &mut Inner,
        log_id: LogId,
        payload: openraft::alias::EntryPayloadOf<TypeConfig>,
    ) -> io::Result<LedgerResponse> {
        let applied = encode(&Some(log_id)).map_err(io_err)?;
        match payload {
            EntryPayload::Blank => {
                inner
                    .store
                    .put_meta(&[(LAST_APPLIED, applied)])
                    .map_err(io_err)?;
                Ok(LedgerResponse::Empty)
            }
            EntryPayload::Membership(m) => {
                let membership = StoredMembership::new(Some(log_id), m);
                let stored = encode(&membership).map_err(io_err)?;
                inner
                    .store
                    .put_meta(&[(LAST_APPLIED, applied), (MEMBERSHIP, stored)])
                    .map_err(io_err)?;
                inner.membership = membership;
                Ok(LedgerResponse::Empty)
            }
            EntryPayload::Normal(LedgerRequest::Submit {
                event,
                sequenced_at,
            }) => {
                let key = rejection_key(log_id.index);
                let meta = [(LAST_APPLIED, applied)];
                Self::apply_event(inner, &event, sequenced_at, &meta, &key)
            }
            EntryPayload::Normal(LedgerRequest::SubmitBatch { events }) => {
                // Last-applied once for the entry, not once per event.
                inner
                    .store
                    .put_meta(&[(LAST_APPLIED, applied)])
                    .map_err(io_err)?;
                let mut answers = Vec::with_capacity(events.len());
                for (slot, stamped) in events.iter().enumerate() {
                    let key = batch_rejection_key(log_id.index, slot);
                    answers.push(Self::apply_event(
                        inner,
                        &stamped.event,
                        stamped.sequenced_at,
                        &[],
                        &key,
                    )?);
                }
                Ok(LedgerResponse::Batch(answers))
            }
            EntryPayload::Normal(LedgerRequest::Cosign {
                size,
                witness,
                signature,
                ..
            }) => {
                let meta = [(LAST_APPLIED, applied)];
                let Some((hint, sig)) = signature.split_first_chunk::<4>() else {
                    inner.store.put_meta(&meta).map_err(io_err)?;
                    return Ok(LedgerResponse::CosignRefused {
                        reason: "signature must be 68 bytes".into(),
                    });
                };
                let Ok(sig) = <[u8; 64]>::try_from(sig) else {
                    inner.store.put_meta(&meta).map_err(io_err)?;
                    return Ok(LedgerResponse::CosignRefused {
                        reason: "signature must be 68 bytes".into(),
                    });
                };
                let note_sig = NoteSignature {
                    name: witness,
                    key_hint: *hint,
                    signature: sig,
                };
                match inner
                    .store
                    .record_cosignature(size, &note_sig, &meta)
                    .map_err(io_err)?
                {
                    CosignOutcome::Recorded {
                        size, cosigners, ..
                    } => Ok(LedgerResponse::Cosigned { size, cosigners }),
                    CosignOutcome::Refused(reason) => Ok(LedgerResponse::CosignRefused { reason }),
                }
            }
        }
    }
}

/// Counts an applied event's verdict. Every node counts the same verdicts (they are
/// deterministic), so the counters agree across the cluster.
fn count_outcome(response: &LedgerResponse) {
    match response {
        LedgerResponse::Batch(answers) => answers.iter().for_each(count_outcome),
        LedgerResponse::Accepted { .. } => {
            metrics::counter!("wasteledger_events_accepted_total").increment(1);
        }
        LedgerResponse::Rejected { code, .. } => {
            metrics::counter!(
                "wasteledger_events_rejected_total",
                "reason" => code.clone(),
                "stage" => "apply"
            )
            .increment(1);
        }
        _ => {}
    }
}

fn rejected(rejection: &Rejection) -> LedgerResponse {
    LedgerResponse::Rejected {
        code: rejection.code().to_owned(),
        kind: rejection.kind().name().to_owned(),
        message: rejection.to_string(),
        duplicate_of: match rejection {
            Rejection::AlreadyRecorded { index } => Some(*index),
            _ => None,
        },
    }
}

/// Finds the newest snapshot (`*.snap`) whose files are all there ([`Chain::open`]) and reads
/// its meta.
fn latest_snapshot(dir: &Path) -> Option<(SnapshotHeader, PathBuf)> {
    let mut found: Vec<(SnapshotHeader, PathBuf)> = fs::read_dir(dir)
        .ok()?
        .flatten()
        .map(|entry| entry.path())
        .filter(|path| path.extension().and_then(|e| e.to_str()) == Some("snap"))
        .filter_map(|path| Some((snapshot_file::read_header(&path).ok()?, path)))
        .collect();
    found.sort_by_key(|(header, _)| std::cmp::Reverse(header.meta.last_log_id));
    found.into_iter().find(|(_, path)| match Chain::open(path) {
        Ok(_) => true,
        Err(e) => {
            tracing::warn!(path = %path.display(), error = %e, "skipping an unreadable snapshot");
            false
        }
    })
}

/// Replaces the store in `db` with the complete, already checked snapshot `records` taken at
/// `meta`, rebuilding the map file at `map_path`; durable when it returns. The one way a store
/// is replaced, by an install or by finishing one at open.
fn import_snapshot(
    db: &DurableDb,
    genesis: &Genesis,
    map_path: &Path,
    meta: &SnapshotMetaOf<TypeConfig>,
    records: impl Iterator<Item = io::Result<(Vec<u8>, Vec<u8>)>>,
) -> io::Result<LedgerStore> {
    let tree = db.raw_tree(LEDGER_TREE).map_err(io_err)?;
    let store = LedgerStore::import(tree, map_path, genesis.clone(), records).map_err(io_err)?;
    store.verify_integrity().map_err(io_err)?;
    let applied = encode(&meta.last_log_id).map_err(io_err)?;
    let membership = encode(&meta.last_membership).map_err(io_err)?;
    store
        .put_meta(&[(LAST_APPLIED, applied), (MEMBERSHIP, membership)])
        .map_err(io_err)?;
    store.commit().map_err(io_err)?;
    db.sync()?;
    Ok(store)
}

/// Writes the install journal naming `snapshot` (a file in `dir`), durably, before the store
/// is touched.
fn begin_install(dir: &Path, snapshot: &Path) -> io::Result<()> {
    let name = snapshot
        .file_name()
        .and_then(|n| n.to_str())
        .ok_or_else(|| io_err(format!("snapshot path {} has no name", snapshot.display())))?;
    let mut file = File::create(dir.join(INSTALL_JOURNAL))?;
    io::Write::write_all(&mut file, name.as_bytes())?;
    file.sync_all()?;
    sync_dir(dir)
}

/// Moves the received snapshot file (already synced) to `kept`, durably. `kept` appears whole
/// or not at all: across file systems the copy is synced under a temporary name first.
fn put_in_place(received: &Path, kept: &Path) -> io::Result<()> {
    if received == kept || rename_durably(received, kept).is_ok() {
        return Ok(());
    }
    let partial = kept.with_extension("partial");
    let _ = fs::copy(received, &partial)?;
    File::open(&partial)?.sync_all()?;
    rename_durably(&partial, kept)
}

/// Removes the install journal, durably, once the installed store is.
fn end_install(dir: &Path) -> io::Result<()> {
    fs::remove_file(dir.join(INSTALL_JOURNAL))?;
    sync_dir(dir)
}

/// If an install was interrupted, finishes it from the snapshot file its journal names.
///
/// The journal is written before that file is put in place, and the file before the store is
/// cleared: a journal whose file is missing (or whose name is torn) means the store was never
/// touched.
fn finish_interrupted_install(
    db: &DurableDb,
    genesis: &Genesis,
    dir: &Path,
    map_path: &Path,
) -> Result<(), StoreError> {
    let name = match fs::read_to_string(dir.join(INSTALL_JOURNAL)) {
        Ok(name) => name,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(e.into()),
    };
    let path = dir.join(&name);
    let in_place = !name.contains('/') && name.ends_with(".snap") && path.is_file();
    if in_place {
        tracing::warn!(
            path = %path.display(),
            "finishing a snapshot install the node stopped in the middle of"
        );
        let (header, records) = snapshot_file::open_complete(&path)?;
        import_snapshot(db, genesis, map_path, &header.meta, records)?;
        remove_other_snapshots(dir, std::slice::from_ref(&path));
    } else {
        tracing::warn!(
            journal = %name,
            "a snapshot install stopped before its file was in place; the store was not touched"
        );
    }
    end_install(dir)?;
    Ok(())
}

/// Removes snapshot files other than those in `keep`.
fn remove_other_snapshots(dir: &Path, keep: &[PathBuf]) {
    if let Ok(entries) = fs::read_dir(dir) {
        for entry in entries.flatten() {
            let path = entry.path();
            let is_snapshot = matches!(
                path.extension().and_then(|e| e.to_str()),
                Some("snap" | "partial")
            );
            if is_snapshot
                && !keep.contains(&path)
                && let Err(e) = fs::remove_file(&path)
            {
                tracing::warn!(path = %path.display(), error = %e, "could not remove old snapshot");
            }
        }
    }
}

/// What [`write_own_snapshot`] wrote.
struct WrittenSnapshot {
    /// The new file.
    path: PathBuf,
    /// The files the snapshot is made of, newest first: the new file, and for a layer the
    /// files below it. The rest can go.
    chain: Vec<PathBuf>,
    /// How many records (or changes, for a layer) and their key + value bytes.
    records: (u64, u64),
    /// How it was made, for the build log: `layer`, `folded layer` (a layer that took in the
    /// newest layers below it), `incremental` (a whole file from the previous snapshot's
    /// records and the changes since) or `full` (a scan of the store).
    kind: &'static str,
}

/// Writes the snapshot of `copy` described by `header` into `dir`, durably. From the previous
/// snapshot (`previous`: its file, and the number of the copy it was built from) when the
/// store kept every change since that copy: as a layer holding those changes while the layers
/// stay smaller together than the whole file below them (taking in the newest layers that hold
/// no more than it, [`snapshot_file::layers_to_fold`]), otherwise as a whole file made
/// of the previous snapshot's records and the changes. Otherwise (the first build since
/// start-up or an install, or a previous snapshot that cannot be read, or a layer that could
/// not be written) by a scan of every changing record.
///
/// Layers keep a snapshot's cost near what changed since the last one: a change is rewritten
/// by a logarithmic number of folds, and the whole file only once the layers add up to its
/// size, so the bytes written per snapshot grow with the logarithm of the history, not with
/// the history.
fn write_own_snapshot(
    dir: &Path,
    header: &SnapshotHeader,
    copy: &ChangingCopy,
    previous: Option<(PathBuf, u64)>,
) -> io::Result<WrittenSnapshot> {
    let whole = |path: PathBuf, records, kind| WrittenSnapshot {
        chain: vec![path.clone()],
        path,
        records,
        kind,
    };
    let chain = previous.and_then(|(path, number)| match Chain::open(&path) {
        Ok(chain) => Some((path, number, chain)),
        Err(e) => {
            tracing::warn!(
                path = %path.display(), error = %e,
                "cannot read the previous snapshot; copying every record instead"
            );
            None
        }
    });
    if let Some((path, number, chain)) = chain
        && let (Some(count), Some(bytes)) = (copy.changes_since(number), copy.changed_bytes(number))
    {
        let (base_bytes, layer_bytes) = chain.sizes();
        // Each change adds its two lengths to its bytes.
        let estimate = (bytes + 8 * count) as u64;
        // Layers until they add up to the whole file below them: past that, reading the chain
        // would cost more than the file it saves rewriting.
        let layer = layer_bytes + estimate <= base_bytes
            && chain.header().omitted_below > 0
            && dir.join(snapshot_file::file_name(&header.meta)) != path;
        if layer && let Some(changes) = copy.changed_since(number) {
            let fold = snapshot_file::layers_to_fold(&chain.layer_sizes(), estimate);
            match write_layer(dir, header, chain, fold, changes) {
                Ok(written) => return Ok(written),
                Err(e) => tracing::warn!(
                    error = %e,
                    "building a layer on the previous snapshot failed; copying every record instead"
                ),
            }
        } else if let Some(records) = copy.records_since(number, chain.records()) {
            let mut writer = SnapshotWriter::create(dir, header)?;
            match writer.records(records) {
                Ok(records) => return Ok(whole(writer.finish()?, records, "incremental")),
                Err(e) => tracing::warn!(
                    error = %e,
                    "building from the previous snapshot failed; copying every record instead"
                ),
            }
        }
    }
    let mut writer = SnapshotWriter::create(dir, header)?;
    let records = writer.records(copy.records())?;
    Ok(whole(writer.finish()?, records, "full"))
}

/// Writes `changes` (since `chain`'s newest file, in key order) as a layer, taking in the
/// newest `fold` layers of `chain` ([`snapshot_file::layers_to_fold`]).
fn write_layer(
    dir: &Path,
    header: &SnapshotHeader,
    chain: Chain,
    fold: usize,
    changes: impl Iterator<Item = snapshot_file::Change>,
) -> io::Result<WrittenSnapshot> {
    let (onto, below, merged) = chain.fold_newest(fold, changes)?;
    let mut writer = SnapshotWriter::create_layer(dir, header, &onto)?;
    let records = writer.changes(merged)?;
    let new = writer.finish()?;
    let mut files = vec![new.clone()];
    files.extend(below);
    Ok(WrittenSnapshot {
        path: new,
        chain: files,
        records,
        kind: if fold == 0 { "layer" } else { "folded layer" },
    })
}

impl RaftSnapshotBuilder<TypeConfig> for LedgerStateMachine {
    type SnapshotData = SnapshotFile;

    /// A consistent snapshot that holds the state-machine lock only to commit and start a
    /// copy. The records later entries can change (subject states, indexes, metadata) are
    /// copied as of that moment while entries go on being applied (`ChangingCopy` keeps what
    /// a key held before its first write since). The settled history below the snapshot's
    /// size (entries, complete Merkle subtrees, most indexes, manifests: most of the bytes) is not
    /// copied at all: the store keeps it unchanged, and it is read from there when the
    /// snapshot is sent (`snapshot_file::wire_chunks`).
    async fn build_snapshot(&mut self) -> Result<SnapshotOf<TypeConfig, SnapshotFile>, io::Error> {
        let this = self.clone();
        tokio::task::spawn_blocking(move || {
            let started = Instant::now();
            let (header, copy, previous, mark, map_file) = {
                let inner = this.lock()?;
                let size = inner.store.merkle_size();
                let header = SnapshotHeader {
                    meta: SnapshotMeta {
                        last_log_id: inner.last_applied,
                        last_membership: inner.membership.clone(),
                    },
                    omitted_below: size,
                };
                let root = inner.store.roots().0;
                inner
                    .store
                    .record_integrity_checkpoint(size, &root)
                    .map_err(io_err)?;
                let copy = inner.store.begin_changing_copy().map_err(io_err)?;
                let unreadable = this.snapshot_unreadable.swap(false, Ordering::AcqRel);
                if unreadable {
                    tracing::warn!(
                        "the current snapshot could not be read when it was sent; \
                         this one is copied whole from the store"
                    );
                }
                let previous = inner
                    .current_snapshot
                    .as_ref()
                    .and_then(|(_, path, copy)| Some((path.clone(), (*copy)?)))
                    .filter(|_| !unreadable);
                (header, copy, previous, this.mark(), inner.store.map_file())
            };
            let locked = started.elapsed();
            let written = write_own_snapshot(&this.snapshot_dir, &header, &copy, previous)?;
            let copy_number = copy.number();
            drop(copy);
            let copied = started.elapsed();
            let path = written.path.clone();
            // Lets a restart skip reading old map records. It syncs the map records written
            // since the last save (~2 KB per event), then writes the map positions changed
            // since (or all of them, tens of MB at a million events, when the changes would
            // outgrow the whole index), so it runs without the lock: under it, every snapshot
            // stopped applying on every node at once, for longer as history grew. An install
            // meanwhile retires this handle (`MapFile::retire`), and the save then leaves
            // nothing behind.
            let saved = map_file.save_index();
            let map_indexed = started.elapsed();
            let mut inner = this.lock()?;
            if !mark.current() {
                let _ = fs::remove_file(&path);
                return Err(io_err(
                    "a snapshot was installed while this one was written; it is discarded",
                ));
            }
            let map_index = saved.map_err(io_err)?;
            remove_other_snapshots(&this.snapshot_dir, &written.chain);
            inner.current_snapshot = Some((header.clone(), path.clone(), Some(copy_number)));
            let snapshot = this.snapshot_file(&inner, &header, path);
            drop(inner);
            tracing::info!(
                last_log_index = header.meta.last_log_id.map(|id| id.index),
                ledger_size = header.omitted_below,
                records = written.records.0,
                bytes = written.records.1,
                kind = written.kind,
                files = written.chain.len(),
                locked_ms = locked.as_millis() as u64,
                write_ms = (copied - locked).as_millis() as u64,
                map_index_ms = (map_indexed - copied).as_millis() as u64,
                ?map_index,
                total_ms = started.elapsed().as_millis() as u64,
                "snapshot built"
            );
            Ok(Snapshot {
                meta: header.meta,
                snapshot,
            })
        })
        .await
        .map_err(io_err)?
    }
}

impl LedgerStateMachine {
    /// The [`SnapshotFile`] for this node's snapshot at `path`, with where its omitted settled
    /// history is read from. Takes `inner` to be called under the lock, when no install runs.
    fn snapshot_file(&self, inner: &Inner, header: &SnapshotHeader, path: PathBuf) -> SnapshotFile {
        let settled = (header.omitted_below > 0).then(|| SettledPart {
            history: inner.store.settled_history(),
            below: header.omitted_below,
            store: self.mark(),
            unreadable: self.snapshot_unreadable.clone(),
        });
        SnapshotFile { path, settled }
    }

    /// Marks the store as it is now, for work done without the lock. Call it under the lock,
    /// which an install holds throughout, so the mark never falls inside an install.
    fn mark(&self) -> StoreMark {
        StoreMark::new(self.installs.clone())
    }
}

/// The store as of one moment, for work that reads it without the state lock (sending a
/// snapshot's history, the history check, a snapshot build): that work stays valid until a
/// snapshot install replaces the store, which the state machine counts.
#[derive(Clone, Debug)]
pub struct StoreMark {
    installs: Arc<AtomicU64>,
    at: u64,
}

impl StoreMark {
    /// Marks the install counter `installs` as it is now (never while it is odd).
    pub fn new(installs: Arc<AtomicU64>) -> StoreMark {
        let at = installs.load(Ordering::Acquire);
        StoreMark { installs, at }
    }

    /// True while no install has begun since the mark.
    pub fn current(&self) -> bool {
        self.installs.load(Ordering::Acquire) == self.at
    }
}

/// The check of settled history that the start-up check leaves to run beside the ledger
/// ([`LedgerStateMachine::verify_recent`]), tied to the state it was taken from.
#[derive(Debug)]
pub struct PendingHistoryCheck {
    check: HistoryCheck,
    store: StoreMark,
}

impl PendingHistoryCheck {
    /// Entries it will check.
    pub fn entries(&self) -> u64 {
        self.check.entries()
    }
}

impl LedgerStateMachine {
    /// The start-up integrity check (`LedgerStore::verify_recent`): the entries since the
    /// integrity checkpoint. Returns the check of the history below it, to run with
    /// [`LedgerStateMachine::check_history`] once the node serves.
    pub fn verify_recent(&self) -> io::Result<Result<Option<PendingHistoryCheck>, IntegrityError>> {
        let inner = self.lock()?;
        let store = self.mark();
        Ok(inner
            .store
            .verify_recent()
            .map(|check| check.map(|check| PendingHistoryCheck { check, store })))
    }

    /// Runs `pending` to the end without the state lock. Returns `None`, and no verdict, if
    /// `stop` is set first or a snapshot install replaced the state it was reading (the
    /// installed state was checked in full by the install).
    pub fn check_history(
        &self,
        pending: &PendingHistoryCheck,
        stop: &AtomicBool,
    ) -> Option<Result<(), IntegrityError>> {
        let replaced = || !pending.store.current();
        let verdict = pending
            .check
            .run(&mut || stop.load(Ordering::Relaxed) || replaced());
        if replaced() {
            return None;
        }
        match verdict {
            Ok(HistoryChecked::Complete) => Some(Ok(())),
            Ok(HistoryChecked::Stopped) => None,
            Err(e) => Some(Err(e)),
        }
    }
}

/// Marks an install in [`LedgerStateMachine::installs`]: odd from `begin` until dropped.
struct Installing<'a>(&'a AtomicU64);

impl<'a> Installing<'a> {
    fn begin(installs: &'a AtomicU64) -> Installing<'a> {
        installs.fetch_add(1, Ordering::AcqRel);
        Installing(installs)
    }
}

impl Drop for Installing<'_> {
    fn drop(&mut self) {
        self.0.fetch_add(1, Ordering::AcqRel);
    }
}

impl RaftStateMachine<TypeConfig> for LedgerStateMachine {
    type SnapshotData = SnapshotFile;
    type SnapshotBuilder = Self;

    async fn applied_state(
        &mut self,
    ) -> Result<(Option<LogId>, StoredMembershipOf<TypeConfig>), io::Error> {
        let inner = self.lock()?;
        Ok((inner.last_applied, inner.membership.clone()))
    }

    async fn apply<Strm>(&mut self, mut entries: Strm) -> Result<(), io::Error>
    where
        Strm: Stream<Item = Result<EntryResponder<TypeConfig>, io::Error>> + Unpin + OptionalSend,
    {
        let mut started = None;
        while let Some((entry, responder)) = entries.try_next().await? {
            // Timed from the first entry in hand, so waiting for entries is not counted.
            started.get_or_insert_with(std::time::Instant::now);
            let response = {
                let mut inner = self.lock()?;
                let response = Self::apply_one(&mut inner, entry.log_id, entry.payload)?;
                inner.last_applied = Some(entry.log_id);
                response
            };
            count_outcome(&response);
            // Every entry with a responder must be answered, or client_write waits forever.
            // Answering before the state reaches disk is safe: the entry is committed in the
            // Raft log, and a restart re-applies it to the same result.
            if let Some(r) = responder {
                r.send(response);
            }
        }
        // One sled batch for the whole group: see LedgerStore::commit.
        self.lock()?.store.commit().map_err(io_err)?;
        if let Some(started) = started {
            metrics::histogram!("wasteledger_apply_seconds")
                .record(started.elapsed().as_secs_f64());
        }
        Ok(())
    }

    async fn get_snapshot_builder(&mut self) -> Self::SnapshotBuilder {
        self.clone()
    }

    async fn install_snapshot(
        &mut self,
        meta: &SnapshotMetaOf<TypeConfig>,
        snapshot: SnapshotFile,
    ) -> Result<(), io::Error> {
        let this = self.clone();
        let meta = meta.clone();
        tokio::task::spawn_blocking(move || {
            let started = Instant::now();
            let (header, records) = snapshot_file::open_complete(&snapshot.path)?;
            let checked = started.elapsed();
            if header.meta != meta {
                return Err(io::Error::new(
                    io::ErrorKind::InvalidData,
                    "snapshot file meta differs from the announced meta",
                ));
            }
            let mut inner = this.lock()?;
            let _installing = Installing::begin(&this.installs);
            // The installed file becomes our current snapshot (under our naming scheme). It is
            // in place, named by the journal, before the store is cleared (see
            // `finish_interrupted_install`); `records` reads it through a handle opened already.
            let kept = this.snapshot_dir.join(snapshot_file::file_name(&meta));
            begin_install(&this.snapshot_dir, &kept)?;
            if let Err(e) = put_in_place(&snapshot.path, &kept) {
                // The store is untouched: nothing for a restart to finish.
                let _ = end_install(&this.snapshot_dir);
                return Err(e);
            }
            // The import reopens the map file and rebuilds it: the current store's handle
            // (which a snapshot build may hold) must not write to it again.
            inner.store.map_file().retire().map_err(io_err)?;
            let store = import_snapshot(&this.db, &this.genesis, &this.map_path, &meta, records)?;
            let imported = started.elapsed();
            end_install(&this.snapshot_dir)?;
            remove_other_snapshots(&this.snapshot_dir, std::slice::from_ref(&kept));
            inner.store = store;
            inner.last_applied = meta.last_log_id;
            inner.membership = meta.last_membership.clone();
            tracing::info!(
                last_log_index = meta.last_log_id.map(|id| id.index),
                ledger_size = inner.store.merkle_size(),
                checksum_ms = checked.as_millis() as u64,
                import_ms = (imported - checked).as_millis() as u64,
                total_ms = started.elapsed().as_millis() as u64,
                "snapshot installed"
            );
            inner.current_snapshot = Some((header, kept, None));
            Ok(())
        })
        .await
        .map_err(io_err)?
    }

    async fn get_current_snapshot(
        &mut self,
    ) -> Result<Option<SnapshotOf<TypeConfig, SnapshotFile>>, io::Error> {
        let inner = self.lock()?;
        Ok(inner
            .current_snapshot
            .as_ref()
            .map(|(header, path, _)| Snapshot {
                meta: header.meta.clone(),
                snapshot: self.snapshot_file(&inner, header, path.clone()),
            }))
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]

    use openraft::entry::RaftEntry;
    use wasteledger_core::pb::event_body::Kind;
    use wasteledger_core::sample::{ManifestFlow, SampleNetwork, T0, ids};

    use super::*;
    use crate::types::Entry;

    /// Registrations, then `manifests` creations, as Raft entries from index 1.
    fn entries(net: &SampleNetwork, manifests: u64) -> Vec<Entry> {
        let mut events = net.registrations();
        for n in 1..=manifests {
            let number = format!("20261502{n:06}");
            let flow = ManifestFlow::new(net, &number, T0).unwrap();
            events.push(flow.event(
                Kind::ManifestCreated(pb::ManifestCreated {
                    manifest: Some(net.manifest(&number, &[ids::ROAD])),
                }),
                &[ids::GENERATOR],
            ));
        }
        events
            .iter()
            .zip(1u64..)
            .map(|(event, index)| {
                Entry::new_normal(
                    openraft::testing::log_id::<TypeConfig>(1, 1, index),
                    LedgerRequest::Submit {
                        event: event.encode_to_vec(),
                        sequenced_at: T0 + index as i64,
                    },
                )
            })
            .collect()
    }

    fn open(dir: &Path, genesis: &Genesis) -> LedgerStateMachine {
        let db = DurableDb::open(dir.join("db")).unwrap();
        LedgerStateMachine::open(&db, genesis.clone(), dir.join("snapshots"), dir.join("map"))
            .unwrap()
    }

    async fn apply(sm: &mut LedgerStateMachine, entries: &[Entry]) {
        let stream = futures::stream::iter(entries.iter().cloned().map(|e| Ok((e, None))));
        sm.apply(stream).await.unwrap();
    }

    /// Builds a snapshot; returns its records, sorted.
    async fn build(sm: &mut LedgerStateMachine) -> Vec<(Vec<u8>, Vec<u8>)> {
        let snapshot = sm.build_snapshot().await.unwrap();
        sorted_records(&snapshot.snapshot.path)
    }

    /// The records of the snapshot whose newest file is `path`, sorted.
    fn sorted_records(path: &Path) -> Vec<(Vec<u8>, Vec<u8>)> {
        let mut records: Vec<_> = Chain::open(path)
            .unwrap()
            .records()
            .map(Result::unwrap)
            .collect();
        records.sort();
        records
    }

    fn stamped(event: &pb::SignedEvent, at: i64) -> crate::types::StampedEvent {
        crate::types::StampedEvent {
            event: event.encode_to_vec(),
            sequenced_at: at,
        }
    }

    /// Events grouped in one entry are decided one by one, in order: a malformed or duplicate
    /// event gets its own refusal (recorded under its slot) and does not affect its
    /// neighbours, and the ledger ends as it would with one entry per event.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_group_entry_decides_each_event_on_its_own() {
        let net = SampleNetwork::new().unwrap();
        let singles = entries(&net, 2);
        let registrations = net.registrations();
        let created: Vec<pb::SignedEvent> = singles[registrations.len()..]
            .iter()
            .map(|e| match &e.payload {
                EntryPayload::Normal(LedgerRequest::Submit { event, .. }) => {
                    pb::SignedEvent::decode(event.as_slice()).unwrap()
                }
                other => panic!("unexpected {other:?}"),
            })
            .collect();
        let (dir, singles_dir) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
        let (grouped, mut one_by_one) = (
            open(dir.path(), &net.genesis),
            open(singles_dir.path(), &net.genesis),
        );

        // Stamped as `entries` stamps them (T0 + the Raft index it uses), so the ledgers can
        // be compared.
        let first = LedgerRequest::SubmitBatch {
            events: (registrations.iter().zip(1..))
                .map(|(e, i)| stamped(e, T0 + i))
                .collect(),
        };
        let after = T0 + registrations.len() as i64;
        let mut garbage = stamped(&created[0], after + 1);
        garbage.event = vec![0xff; 7];
        let second = LedgerRequest::SubmitBatch {
            events: vec![
                stamped(&created[0], after + 1),
                garbage,
                stamped(&created[0], after + 1),
                stamped(&created[1], after + 2),
            ],
        };
        let mut answers = Vec::new();
        for (index, request) in [(1, first), (2, second)] {
            let mut inner = grouped.lock().unwrap();
            let log_id = openraft::testing::log_id::<TypeConfig>(1, 1, index);
            answers.push(
                LedgerStateMachine::apply_one(&mut inner, log_id, EntryPayload::Normal(request))
                    .unwrap(),
            );
        }
        grouped.lock().unwrap().store.commit().unwrap();

        let LedgerResponse::Batch(first) = &answers[0] else {
            panic!("{:?}", answers[0]);
        };
        assert_eq!(first.len(), registrations.len());
        assert!(
            first
                .iter()
                .all(|a| matches!(a, LedgerResponse::Accepted { .. }))
        );
        let LedgerResponse::Batch(second) = &answers[1] else {
            panic!("{:?}", answers[1]);
        };
        let n = registrations.len() as u64;
        assert!(matches!(second[0], LedgerResponse::Accepted { index, .. } if index == n));
        assert!(
            matches!(&second[1], LedgerResponse::Rejected { code, .. } if code == "envelope.malformed")
        );
        assert!(matches!(
            second[2],
            LedgerResponse::Rejected { duplicate_of: Some(index), .. } if index == n
        ));
        assert!(matches!(second[3], LedgerResponse::Accepted { index, .. } if index == n + 1));

        let recorded = |slot| {
            grouped
                .with_store(|s| s.rejection(&batch_rejection_key(2, slot)).unwrap())
                .unwrap()
        };
        assert_eq!(recorded(0), None);
        assert_eq!(recorded(1).unwrap().0, "envelope.malformed");
        assert!(recorded(2).is_some());
        assert_eq!(recorded(3), None);

        apply(&mut one_by_one, &singles).await;
        let head =
            |sm: &LedgerStateMachine| sm.with_store(|s| (s.merkle_size(), s.roots())).unwrap();
        assert_eq!(head(&grouped), head(&one_by_one));
    }

    /// A previous snapshot file that fails its checksum half-way through the pass over it does
    /// not fail the build, nor leave its records in the new file: the build scans the store
    /// instead, and the result is what a node that never had that file builds. A build that
    /// layers on the damaged file does not read it; sending the snapshot does, fails, and
    /// makes the next build a whole one.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_damaged_previous_snapshot_falls_back_to_a_full_scan() {
        let net = SampleNetwork::new().unwrap();
        let all = entries(&net, 40);
        let (first, rest) = all.split_at(all.len() / 2);
        let (a_dir, b_dir) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
        let (mut a, mut b) = (
            open(a_dir.path(), &net.genesis),
            open(b_dir.path(), &net.genesis),
        );

        apply(&mut a, first).await;
        build(&mut a).await;
        let previous = a.get_current_snapshot().await.unwrap().unwrap();
        let mut bytes = fs::read(&previous.snapshot.path).unwrap();
        let middle = bytes.len() / 2;
        bytes[middle] ^= 0x20;
        fs::write(&previous.snapshot.path, bytes).unwrap();

        apply(&mut a, &rest[..2]).await;
        a.build_snapshot().await.unwrap();
        let layered = a.get_current_snapshot().await.unwrap().unwrap();
        let mut rx = snapshot_file::wire_chunks(layered.snapshot, 1 << 12);
        let failed = loop {
            match rx.recv().await.unwrap() {
                Ok(Some(_)) => {}
                Ok(None) => break false,
                Err(_) => break true,
            }
        };
        assert!(failed, "a damaged snapshot was sent whole");

        apply(&mut a, &rest[2..]).await;
        let rebuilt = build(&mut a).await;
        let current = a.get_current_snapshot().await.unwrap().unwrap();
        assert_eq!(Chain::open(&current.snapshot.path).unwrap().layers(), 0);
        apply(&mut b, &all).await;
        assert_eq!(rebuilt, build(&mut b).await);

        // The next build of both starts from the file just built, and they still agree.
        let more = entries(&net, 45).split_off(all.len());
        apply(&mut a, &more).await;
        apply(&mut b, &more).await;
        assert_eq!(build(&mut a).await, build(&mut b).await);
    }

    /// The snapshot files in `sm`'s directory, by name.
    fn snapshot_files(dir: &Path) -> Vec<String> {
        let mut names: Vec<String> = fs::read_dir(dir.join("snapshots"))
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .collect();
        names.sort();
        names
    }

    /// Builds from the previous snapshot write layers holding only the changes since, until
    /// the layers add up to the whole file below them; the snapshot they make holds what a
    /// node that never had them builds, is sent as the same complete snapshot, and is found
    /// again after a restart. Only the files of the current snapshot are kept.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn snapshots_are_layered_until_the_layers_outgrow_their_base() {
        let net = SampleNetwork::new().unwrap();
        let all = entries(&net, 240);
        let (a_dir, b_dir) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
        let mut a = open(a_dir.path(), &net.genesis);
        let base = net.registrations().len() + 80;
        apply(&mut a, &all[..base]).await;
        let first = build(&mut a).await;
        assert_eq!(snapshot_files(a_dir.path()).len(), 1);

        let mut kinds = Vec::new();
        let mut at = base;
        while at < all.len() {
            let next = (at + 4).min(all.len());
            apply(&mut a, &all[at..next]).await;
            at = next;
            let built = build(&mut a).await;
            let current = a.get_current_snapshot().await.unwrap().unwrap();
            let chain = Chain::open(&current.snapshot.path).unwrap();
            kinds.push(chain.layers());
            // Exactly the chain's files are kept.
            let mut kept: Vec<String> = chain
                .paths()
                .map(|p| p.file_name().unwrap().to_str().unwrap().to_owned())
                .collect();
            kept.sort();
            assert_eq!(snapshot_files(a_dir.path()), kept);

            // A node fed the same entries, built once from a scan of its store, agrees.
            let mut b = open(b_dir.path(), &net.genesis);
            let done = b
                .applied_state()
                .await
                .unwrap()
                .0
                .map_or(0, |id| id.index as usize);
            apply(&mut b, &all[done..at]).await;
            assert_eq!(built, build(&mut b).await);
            drop(b);
            assert_ne!(built, first);
        }
        // Layers were written, some took in the layers below them (the chain did not grow),
        // and once they added up to the whole file a whole file replaced them.
        assert!(kinds.iter().any(|&n| n > 0), "{kinds:?}");
        assert!(
            kinds
                .windows(2)
                .any(|w| w[0] > 0 && (1..=w[0]).contains(&w[1])),
            "no layer was folded: {kinds:?}"
        );
        assert!(kinds.iter().all(|&n| n <= snapshot_file::MAX_LAYERS));
        assert!(
            kinds.windows(2).any(|w| w[1] == 0 && w[0] > 0),
            "never compacted: {kinds:?}"
        );

        // Sent to a peer, a layered snapshot is the complete snapshot a whole file gives.
        if kinds.last() == Some(&0) {
            let more = entries(&net, 242).split_off(all.len());
            apply(&mut a, &more).await;
            build(&mut a).await;
        }
        let current = a.get_current_snapshot().await.unwrap().unwrap();
        assert!(Chain::open(&current.snapshot.path).unwrap().layers() > 0);
        let (meta, bytes) = (current.meta.clone(), send(current.snapshot).await);
        let expected = head(&mut a).await;
        let c_dir = tempfile::tempdir().unwrap();
        let mut c = open(c_dir.path(), &net.genesis);
        let received = c_dir.path().join("received.snap");
        fs::write(&received, &bytes).unwrap();
        c.install_snapshot(&meta, SnapshotFile::complete(received))
            .await
            .unwrap();
        assert_eq!(head(&mut c).await, expected);

        // After a restart the layered snapshot is current again and is sent the same.
        let records = records_of_current(&mut a).await;
        drop(a);
        let mut a = open(a_dir.path(), &net.genesis);
        let current = a.get_current_snapshot().await.unwrap().unwrap();
        assert_eq!(current.meta, meta);
        assert_eq!(records_of_current(&mut a).await, records);
        assert_eq!(send(current.snapshot).await, bytes);
    }

    /// The bytes a peer receives for `snapshot`.
    async fn send(snapshot: SnapshotFile) -> Vec<u8> {
        let mut rx = snapshot_file::wire_chunks(snapshot, 1 << 12);
        let mut bytes = Vec::new();
        loop {
            match rx.recv().await.unwrap() {
                Ok(Some(chunk)) => bytes.extend(chunk),
                Ok(None) => return bytes,
                Err(e) => panic!("{e}"),
            }
        }
    }

    /// The records of `sm`'s current snapshot, sorted.
    async fn records_of_current(sm: &mut LedgerStateMachine) -> Vec<(Vec<u8>, Vec<u8>)> {
        let current = sm.get_current_snapshot().await.unwrap().unwrap();
        sorted_records(&current.snapshot.path)
    }

    /// The complete snapshot `sm` would send a peer now: its meta and the file's bytes.
    async fn complete_snapshot(
        sm: &mut LedgerStateMachine,
    ) -> (SnapshotMetaOf<TypeConfig>, Vec<u8>) {
        sm.build_snapshot().await.unwrap();
        let current = sm.get_current_snapshot().await.unwrap().unwrap();
        (current.meta, send(current.snapshot).await)
    }

    async fn head(
        sm: &mut LedgerStateMachine,
    ) -> (
        Option<LogId>,
        u64,
        (
            wasteledger_core::hash::Digest,
            wasteledger_core::hash::Digest,
        ),
    ) {
        let (applied, _) = sm.applied_state().await.unwrap();
        let (size, roots) = sm.with_store(|s| (s.merkle_size(), s.roots())).unwrap();
        (applied, size, roots)
    }

    /// A node stopped in the middle of installing a snapshot (the store cleared and half
    /// imported) finishes the install when it next opens, from the file its journal names, and
    /// holds exactly the sender's state; an install that completes leaves no journal behind.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn an_install_cut_short_is_finished_at_the_next_open() {
        let net = SampleNetwork::new().unwrap();
        let all = entries(&net, 30);
        let (a_dir, b_dir, c_dir) = (
            tempfile::tempdir().unwrap(),
            tempfile::tempdir().unwrap(),
            tempfile::tempdir().unwrap(),
        );
        let mut a = open(a_dir.path(), &net.genesis);
        apply(&mut a, &all).await;
        let (meta, bytes) = complete_snapshot(&mut a).await;
        let expected = head(&mut a).await;
        assert_eq!(expected.0, meta.last_log_id);

        // An install that completes, from a file received into another directory.
        let mut b = open(b_dir.path(), &net.genesis);
        apply(&mut b, &all[..3]).await;
        let received = b_dir.path().join("received.snap");
        fs::write(&received, &bytes).unwrap();
        b.install_snapshot(&meta, SnapshotFile::complete(received))
            .await
            .unwrap();
        assert_eq!(head(&mut b).await, expected);
        let snapshots = b_dir.path().join("snapshots");
        assert!(!snapshots.join(INSTALL_JOURNAL).exists());
        drop(b);

        // The same install cut short: journal written, file in place, store cleared and
        // a third of the records imported, no last-applied, no final sync.
        let c_snapshots = c_dir.path().join("snapshots");
        {
            let mut c = open(c_dir.path(), &net.genesis);
            apply(&mut c, &all[..3]).await;
            let kept = c_snapshots.join(snapshot_file::file_name(&meta));
            fs::write(&kept, &bytes).unwrap();
            begin_install(&c_snapshots, &kept).unwrap();
            let (_, records) = snapshot_file::open_complete(&kept).unwrap();
            let records: Vec<_> = records.map(Result::unwrap).collect();
            let third = records.len() / 3;
            let tree = c.db.raw_tree(LEDGER_TREE).unwrap();
            drop(c);
            let _ = LedgerStore::import(
                tree,
                &c_dir.path().join("map"),
                net.genesis.clone(),
                records.into_iter().take(third).map(Ok),
            );
        }
        let mut c = open(c_dir.path(), &net.genesis);
        assert_eq!(head(&mut c).await, expected);
        assert!(!c_snapshots.join(INSTALL_JOURNAL).exists());
        let current = c.get_current_snapshot().await.unwrap().unwrap();
        assert_eq!(current.meta, meta);
        // It goes on from there like any node.
        let more = entries(&net, 33).split_off(all.len());
        apply(&mut a, &more).await;
        apply(&mut c, &more).await;
        assert_eq!(head(&mut c).await, head(&mut a).await);

        // A journal whose file never got in place leaves the store as it was.
        let before = head(&mut c).await;
        drop(c);
        fs::write(c_snapshots.join(INSTALL_JOURNAL), "snapshot-9-999.snap").unwrap();
        let mut c = open(c_dir.path(), &net.genesis);
        assert_eq!(head(&mut c).await, before);
        assert!(!c_snapshots.join(INSTALL_JOURNAL).exists());
    }
}

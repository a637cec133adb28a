//! The Raft state machine: applies committed log entries to the ledger in sled, answers each
//! client, and builds and installs snapshots as files.
//!
//! Every node runs [`wasteledger_store::state::LedgerStore::apply`] — which runs the core's
//! deterministic decision function — on every committed entry, so all nodes reach the same
//! verdicts, roots and rejections. The Raft last-applied id and membership are written in the
//! same sled batch as the entries they follow (one batch per applied group), so a crash never
//! separates them.
//!
//! Snapshot file layout (all integers big-endian):
//! `"WLSNAP01"` ‖ u32 meta length ‖ meta (`types::encode` of the openraft snapshot meta) ‖
//! records (u32 key length ‖ key ‖ u32 value length ‖ value)* ‖ u32 0xFFFFFFFF ‖
//! blake3 of every preceding byte (32). Written to a temporary file, fsynced, renamed, and the
//! directory fsynced.

use std::fs::{self, File};
use std::io::{self, BufReader, BufWriter, Read, Write};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard};

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
use wasteledger_store::state::{CosignOutcome, LedgerStore};
use wasteledger_store::{DurableDb, StoreError};

use crate::types::{
    LedgerRequest, LedgerResponse, LogId, SnapshotFile, TypeConfig, decode, encode,
};

const LEDGER_TREE: &str = "ledger";
const LAST_APPLIED: &[u8] = b"raft/last_applied";
const MEMBERSHIP: &[u8] = b"raft/membership";

/// Where the refusal of the event at a Raft log index is recorded (`code\nmessage`),
/// identically on every node.
pub fn rejection_key(raft_index: u64) -> Vec<u8> {
    [b"raft/rejection/".as_slice(), &raft_index.to_be_bytes()].concat()
}
const SNAPSHOT_MAGIC: &[u8; 8] = b"WLSNAP01";
const END_OF_RECORDS: u32 = u32::MAX;

fn io_err(e: impl std::fmt::Display) -> io::Error {
    io::Error::other(e.to_string())
}

struct Inner {
    store: LedgerStore,
    /// Incremented when an installed snapshot replaces the store, so a snapshot build that
    /// read part of the old store without the lock can tell.
    generation: u64,
    last_applied: Option<LogId>,
    membership: StoredMembershipOf<TypeConfig>,
    current_snapshot: Option<(SnapshotMetaOf<TypeConfig>, PathBuf)>,
}

/// The ledger state machine (a cheap-clone handle).
#[derive(Clone)]
pub struct LedgerStateMachine {
    inner: Arc<Mutex<Inner>>,
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
        let current_snapshot = latest_snapshot(&snapshot_dir);
        Ok(LedgerStateMachine {
            inner: Arc::new(Mutex::new(Inner {
                store,
                generation: 0,
                last_applied,
                membership,
                current_snapshot,
            })),
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
    fn lock(&self) -> io::Result<MutexGuard<'_, Inner>> {
        let poisoned = |_| io_err("state machine lock poisoned by an earlier panic");
        match self.inner.try_lock() {
            Ok(guard) => return Ok(guard),
            Err(std::sync::TryLockError::Poisoned(e)) => return Err(poisoned(e)),
            Err(std::sync::TryLockError::WouldBlock) => {}
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
                let meta = [(LAST_APPLIED, applied)];
                let signed = match pb::SignedEvent::decode(event.as_slice()) {
                    Ok(s) => s,
                    Err(e) => {
                        inner.store.put_meta(&meta).map_err(io_err)?;
                        return Ok(LedgerResponse::Rejected {
                            code: "envelope.malformed".into(),
                            kind: wasteledger_core::ledger::RejectionKind::Malformed
                                .name()
                                .into(),
                            message: format!("not a wasteledger.v1.SignedEvent: {e}"),
                            duplicate_of: None,
                        });
                    }
                };
                let rejection_key = rejection_key(log_id.index);
                match inner
                    .store
                    .apply_recording(&signed, sequenced_at, &meta, Some(&rejection_key))
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

/// Finds the newest complete snapshot file (`*.snap`) and reads its meta.
fn latest_snapshot(dir: &Path) -> Option<(SnapshotMetaOf<TypeConfig>, PathBuf)> {
    let mut best: Option<(SnapshotMetaOf<TypeConfig>, PathBuf)> = None;
    for entry in fs::read_dir(dir).ok()?.flatten() {
        let path = entry.path();
        if path.extension().and_then(|e| e.to_str()) != Some("snap") {
            continue;
        }
        let Ok(meta) = read_snapshot_meta(&path) else {
            continue;
        };
        let newer = best
            .as_ref()
            .is_none_or(|(b, _)| meta.last_log_id > b.last_log_id);
        if newer {
            best = Some((meta, path));
        }
    }
    best
}

fn read_u32(r: &mut impl Read) -> io::Result<u32> {
    let mut b = [0u8; 4];
    r.read_exact(&mut b)?;
    Ok(u32::from_be_bytes(b))
}

/// Reads and checks the header of a snapshot file.
pub fn read_snapshot_meta(path: &Path) -> io::Result<SnapshotMetaOf<TypeConfig>> {
    let mut r = BufReader::new(File::open(path)?);
    let mut magic = [0u8; 8];
    r.read_exact(&mut magic)?;
    if &magic != SNAPSHOT_MAGIC {
        return Err(io::Error::new(
            io::ErrorKind::InvalidData,
            "not a WasteLedger snapshot file",
        ));
    }
    let len = read_u32(&mut r)? as usize;
    if len > 1 << 20 {
        return Err(io::Error::new(
            io::ErrorKind::InvalidData,
            "snapshot meta too large",
        ));
    }
    let mut meta = vec![0u8; len];
    r.read_exact(&mut meta)?;
    decode(&meta).map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e.to_string()))
}

/// Reads a whole snapshot file, verifying its checksum, and returns the meta and records.
/// A snapshot's key/value records.
type Records = Vec<(Vec<u8>, Vec<u8>)>;

fn read_snapshot(path: &Path) -> io::Result<(SnapshotMetaOf<TypeConfig>, Records)> {
    let bytes = fs::read(path)?;
    let invalid = |m: &str| {
        io::Error::new(
            io::ErrorKind::InvalidData,
            format!("snapshot {}: {m}", path.display()),
        )
    };
    if bytes.len() < 8 + 4 + 4 + 32 || &bytes[..8] != SNAPSHOT_MAGIC {
        return Err(invalid("bad magic or truncated"));
    }
    let (body, sum) = bytes.split_at(bytes.len() - 32);
    if blake3::hash(body).as_bytes() != sum {
        return Err(invalid("checksum mismatch"));
    }
    let mut r = &body[8..];
    let meta_len = read_u32(&mut r)? as usize;
    if meta_len > r.len() {
        return Err(invalid("meta length"));
    }
    let (meta_bytes, mut r) = r.split_at(meta_len);
    let meta = decode(meta_bytes).map_err(|e| invalid(&e.to_string()))?;
    let mut records = Vec::new();
    loop {
        let klen = read_u32(&mut r)?;
        if klen == END_OF_RECORDS {
            break;
        }
        let klen = klen as usize;
        if klen > r.len() {
            return Err(invalid("key length"));
        }
        let (k, rest) = r.split_at(klen);
        r = rest;
        let vlen = read_u32(&mut r)? as usize;
        if vlen > r.len() {
            return Err(invalid("value length"));
        }
        let (v, rest) = r.split_at(vlen);
        r = rest;
        records.push((k.to_vec(), v.to_vec()));
    }
    if !r.is_empty() {
        return Err(invalid("trailing bytes"));
    }
    Ok((meta, records))
}

/// A snapshot file being written: records are added in as many runs as the caller needs
/// (the state machine writes the changing records under its lock, the settled ones after),
/// then [`SnapshotWriter::finish`] makes it durable: fsync, rename, fsync of the directory.
struct SnapshotWriter {
    tmp: PathBuf,
    path: PathBuf,
    out: BufWriter<File>,
    hasher: blake3::Hasher,
}

impl SnapshotWriter {
    fn create(dir: &Path, meta: &SnapshotMetaOf<TypeConfig>) -> io::Result<SnapshotWriter> {
        let name = match &meta.last_log_id {
            Some(id) => format!("snapshot-{}-{}", id.leader_id.term, id.index),
            None => "snapshot-empty".to_owned(),
        };
        let tmp = dir.join(format!("{name}.partial"));
        let mut writer = SnapshotWriter {
            path: dir.join(format!("{name}.snap")),
            out: BufWriter::with_capacity(1 << 20, File::create(&tmp)?),
            tmp,
            hasher: blake3::Hasher::new(),
        };
        writer.put(SNAPSHOT_MAGIC)?;
        let meta_bytes = encode(meta).map_err(io_err)?;
        writer.put(&(meta_bytes.len() as u32).to_be_bytes())?;
        writer.put(&meta_bytes)?;
        Ok(writer)
    }

    fn put(&mut self, bytes: &[u8]) -> io::Result<()> {
        self.hasher.update(bytes);
        self.out.write_all(bytes)
    }

    fn records(
        &mut self,
        records: impl Iterator<Item = Result<(Vec<u8>, Vec<u8>), StoreError>>,
    ) -> io::Result<()> {
        for record in records {
            let (k, v) = record.map_err(io_err)?;
            self.put(&(k.len() as u32).to_be_bytes())?;
            self.put(&k)?;
            self.put(&(v.len() as u32).to_be_bytes())?;
            self.put(&v)?;
        }
        Ok(())
    }

    fn finish(mut self) -> io::Result<PathBuf> {
        self.put(&END_OF_RECORDS.to_be_bytes())?;
        let sum = self.hasher.finalize();
        self.out.write_all(sum.as_bytes())?;
        let file = self.out.into_inner().map_err(|e| e.into_error())?;
        file.sync_all()?;
        fs::rename(&self.tmp, &self.path)?;
        if let Some(dir) = self.path.parent() {
            File::open(dir)?.sync_all()?;
        }
        Ok(self.path)
    }
}

/// Removes snapshot files other than `keep`.
fn remove_other_snapshots(dir: &Path, keep: &Path) {
    if let Ok(entries) = fs::read_dir(dir) {
        for entry in entries.flatten() {
            let path = entry.path();
            let is_snapshot = matches!(
                path.extension().and_then(|e| e.to_str()),
                Some("snap" | "partial")
            );
            if is_snapshot
                && path != keep
                && let Err(e) = fs::remove_file(&path)
            {
                tracing::warn!(path = %path.display(), error = %e, "could not remove old snapshot");
            }
        }
    }
}

impl RaftSnapshotBuilder<TypeConfig> for LedgerStateMachine {
    type SnapshotData = SnapshotFile;

    /// A consistent view without stopping the ledger for the length of the export: the
    /// records later entries can change (states, indexes, metadata) are written while holding
    /// the state-machine lock; the entries, Merkle nodes and event index below the snapshot's
    /// size, which nothing changes again and which are most of the bytes, after releasing it
    /// (`LedgerStore::settled_records`). An install in between (which replaces the whole
    /// state) voids the file.
    async fn build_snapshot(&mut self) -> Result<SnapshotOf<TypeConfig, SnapshotFile>, io::Error> {
        let this = self.clone();
        tokio::task::spawn_blocking(move || {
            let (meta, mut writer, settled, generation, map_file) = {
                let inner = this.lock()?;
                let meta = SnapshotMeta {
                    last_log_id: inner.last_applied,
                    last_membership: inner.membership.clone(),
                };
                let size = inner.store.merkle_size();
                let root = inner.store.roots().0;
                inner
                    .store
                    .record_integrity_checkpoint(size, &root)
                    .map_err(io_err)?;
                inner.store.commit().map_err(io_err)?;
                let mut writer = SnapshotWriter::create(&this.snapshot_dir, &meta)?;
                writer.records(inner.store.changing_records())?;
                (
                    meta,
                    writer,
                    inner.store.settled_records(size),
                    inner.generation,
                    inner.store.map_file(),
                )
            };
            writer.records(settled)?;
            let path = writer.finish()?;
            // Most of the map file's dirty pages, synced without the lock, so saving its index
            // below (which must not race an install rebuilding the file) holds it briefly.
            map_file.sync().map_err(io_err)?;
            let mut inner = this.lock()?;
            if inner.generation != generation {
                let _ = fs::remove_file(&path);
                return Err(io_err(
                    "a snapshot was installed while this one was written; it is discarded",
                ));
            }
            // Lets a restart skip reading old map records.
            map_file.save_index().map_err(io_err)?;
            remove_other_snapshots(&this.snapshot_dir, &path);
            inner.current_snapshot = Some((meta.clone(), path.clone()));
            Ok(Snapshot {
                meta,
                snapshot: SnapshotFile { path },
            })
        })
        .await
        .map_err(io_err)?
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
            let (file_meta, records) = read_snapshot(&snapshot.path)?;
            if file_meta != meta {
                return Err(io::Error::new(
                    io::ErrorKind::InvalidData,
                    "snapshot file meta differs from the announced meta",
                ));
            }
            let mut inner = this.lock()?;
            let tree = this.db.raw_tree(LEDGER_TREE).map_err(io_err)?;
            let store = LedgerStore::import(
                tree,
                &this.map_path,
                this.genesis.clone(),
                records.into_iter(),
            )
            .map_err(io_err)?;
            store.verify_integrity().map_err(io_err)?;
            let applied = encode(&meta.last_log_id).map_err(io_err)?;
            let membership = encode(&meta.last_membership).map_err(io_err)?;
            store
                .put_meta(&[(LAST_APPLIED, applied), (MEMBERSHIP, membership)])
                .map_err(io_err)?;
            store.commit().map_err(io_err)?;
            this.db.sync()?;
            // Keep the installed file as our current snapshot (under our naming scheme).
            let kept = this.snapshot_dir.join(match &meta.last_log_id {
                Some(id) => format!("snapshot-{}-{}.snap", id.leader_id.term, id.index),
                None => "snapshot-empty.snap".to_owned(),
            });
            if snapshot.path != kept {
                fs::rename(&snapshot.path, &kept)
                    .or_else(|_| fs::copy(&snapshot.path, &kept).map(|_| ()))?;
                File::open(&this.snapshot_dir)?.sync_all()?;
            }
            remove_other_snapshots(&this.snapshot_dir, &kept);
            inner.store = store;
            inner.generation += 1;
            inner.last_applied = meta.last_log_id;
            inner.membership = meta.last_membership.clone();
            inner.current_snapshot = Some((meta, kept));
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
            .map(|(meta, path)| Snapshot {
                meta: meta.clone(),
                snapshot: SnapshotFile { path: path.clone() },
            }))
    }
}

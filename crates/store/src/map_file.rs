//! Completeness-map nodes in an append-only file beside sled.
//!
//! Every insert into the completeness map writes a new version of about log2(keys) nodes and
//! never changes an old one. Kept as sled keys that was ~17 inserts per event into a tree
//! growing by as many keys, and sled's copy-on-write pages made it the largest part of a node's
//! CPU, growing with history. Here each node version is one fixed-size record appended to a
//! file. Memory holds the newest version of every position; each record points at the previous
//! version of its position, so a read at an older version (a proof against an earlier
//! checkpoint) walks back from the newest.
//!
//! The file is derived data: every node can be recomputed from the ledger entries (each
//! accepted entry sets its subject's head to its event hash at version = index + 1).
//! [`crate::state::LedgerStore`] records the file's record count and the map root in every sled
//! batch it commits, and at open truncates records written after that batch, or rebuilds the
//! file from the entries when it is shorter than that count or its root differs (a power loss
//! can drop file pages that sled kept).
//!
//! Restarting must rebuild the in-memory index, which from the records alone means reading
//! every record ever written (~20 per event). So [`MapFile::save_index`] (at each state
//! snapshot and at shutdown) writes the index to `<file>.idx` with the record count it covers;
//! [`MapFile::open`] loads it and reads only the records after it.
//!
//! ## Record (128 bytes)
//!
//! | bytes | field |
//! |---|---|
//! | 0..2 | depth (u16 BE) |
//! | 2..34 | prefix |
//! | 34..42 | version (u64 BE) |
//! | 42..50 | previous version's record number (u64 BE; `u64::MAX` = none) |
//! | 50 | tag: 0 empty, 1 leaf, 2 internal |
//! | 51..115 | leaf key ‖ value, or internal hash ‖ zeros |
//! | 115..120 | zeros |
//! | 120..128 | first 8 bytes of BLAKE3 over bytes 0..120 |

use std::collections::HashMap;
use std::fs::{File, OpenOptions};
use std::io::{BufReader, Read, Seek, SeekFrom, Write};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};

use wasteledger_core::hash::Digest;
use wasteledger_core::map::{MapNode, MapNodeStore};

use crate::error::StoreError;
use crate::hashed_io::HashedWriter;

/// Bytes per record.
pub const RECORD_BYTES: usize = 128;
const NONE: u64 = u64::MAX;
const CHECKED: usize = 120;
const INDEX_MAGIC: &[u8; 8] = b"WLMAPIX1";
/// depth, prefix, record, version, prev, tag, data.
const SLOT_BYTES: usize = 2 + 32 + 8 + 8 + 8 + 1 + 64;

/// The newest version of one node position.
#[derive(Clone, Copy)]
struct Slot {
    record: u64,
    version: u64,
    prev: u64,
    node: Option<MapNode>,
}

/// The newest version of every position written.
type Index = HashMap<(u16, Digest), Slot>;

/// One decoded record.
struct Record {
    depth: u16,
    prefix: Digest,
    version: u64,
    prev: u64,
    node: Option<MapNode>,
}

/// Writes a node as tag ‖ 64 bytes into `out` (65 bytes).
fn encode_node(node: &Option<MapNode>, out: &mut [u8]) {
    match node {
        None => out[0] = 0,
        Some(MapNode::Leaf { key, value }) => {
            out[0] = 1;
            out[1..33].copy_from_slice(key.as_bytes());
            out[33..65].copy_from_slice(value.as_bytes());
        }
        Some(MapNode::Internal { hash }) => {
            out[0] = 2;
            out[1..33].copy_from_slice(hash.as_bytes());
        }
    }
}

/// Reads tag ‖ 64 bytes; `None` for an unknown tag (the outer `Option`).
fn decode_node(b: &[u8]) -> Option<Option<MapNode>> {
    let digest_at = |at: usize| Digest::from_slice(b.get(at..at + 32)?);
    Some(match b.first()? {
        0 => None,
        1 => Some(MapNode::Leaf {
            key: digest_at(1)?,
            value: digest_at(33)?,
        }),
        2 => Some(MapNode::Internal {
            hash: digest_at(1)?,
        }),
        _ => return None,
    })
}

fn u64_at(b: &[u8], at: usize) -> Option<u64> {
    Some(u64::from_be_bytes(b.get(at..at + 8)?.try_into().ok()?))
}

impl Record {
    fn encode(&self) -> [u8; RECORD_BYTES] {
        let mut b = [0u8; RECORD_BYTES];
        b[0..2].copy_from_slice(&self.depth.to_be_bytes());
        b[2..34].copy_from_slice(self.prefix.as_bytes());
        b[34..42].copy_from_slice(&self.version.to_be_bytes());
        b[42..50].copy_from_slice(&self.prev.to_be_bytes());
        encode_node(&self.node, &mut b[50..115]);
        let sum = blake3::hash(&b[..CHECKED]);
        b[CHECKED..].copy_from_slice(&sum.as_bytes()[..RECORD_BYTES - CHECKED]);
        b
    }

    /// `None` if the checksum or the layout is wrong (a torn or foreign record).
    fn decode(b: &[u8; RECORD_BYTES]) -> Option<Record> {
        let sum = blake3::hash(&b[..CHECKED]);
        if sum.as_bytes()[..RECORD_BYTES - CHECKED] != b[CHECKED..] {
            return None;
        }
        Some(Record {
            depth: u16::from_be_bytes([b[0], b[1]]),
            prefix: Digest::from_slice(&b[2..34])?,
            version: u64_at(b, 34)?,
            prev: u64_at(b, 42)?,
            node: decode_node(&b[50..115])?,
        })
    }
}

struct State {
    newest: Index,
    /// Records in the file.
    written: u64,
    /// Records appended since the last [`MapFile::flush`], in record order.
    staged: Vec<[u8; RECORD_BYTES]>,
    /// Set when a write broke an invariant; the next flush reports it.
    broken: Option<String>,
    /// Set by [`MapFile::retire`]: another handle owns the file now, this one never writes.
    retired: bool,
}

struct Shared {
    path: PathBuf,
    file: File,
    state: Mutex<State>,
}

/// The completeness map's node store: an append-only record file plus an in-memory index of
/// each position's newest version. A cheap-clone handle.
#[derive(Clone)]
pub struct MapFile {
    shared: Arc<Shared>,
}

/// What [`MapFile::open`] found.
pub struct Opened {
    /// The file, holding the records it could read (at most the number asked for).
    pub file: MapFile,
    /// Every record up to the number asked for was present and intact.
    pub complete: bool,
}

impl MapFile {
    /// Opens (or creates) the file at `path`, keeping its first `keep` records and dropping the
    /// rest (written after the last committed state). Stops early at a missing or damaged
    /// record, and says so in [`Opened::complete`].
    pub fn open(path: &Path, keep: u64) -> Result<Opened, StoreError> {
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(path)?;
        let index_path = index_path(path);
        // Left by a save that a crash cut short; a handle retired for this open may still be
        // writing one (it never renames it: see `save_index`).
        remove_temporary_indexes(&index_path)?;
        let (newest, indexed) = match load_index(&index_path) {
            Some((newest, records))
                if records <= keep && file.metadata()?.len() >= records * RECORD_BYTES as u64 =>
            {
                (newest, records)
            }
            // Absent, damaged, or covering records about to be cut off (which may be written
            // again differently): start from the first record.
            _ => {
                remove_if_present(&index_path)?;
                (HashMap::new(), 0)
            }
        };
        let mut state = State {
            newest,
            written: indexed,
            staged: Vec::new(),
            broken: None,
            retired: false,
        };
        let mut reader = BufReader::with_capacity(1 << 20, &file);
        reader.seek(SeekFrom::Start(indexed * RECORD_BYTES as u64))?;
        let mut buf = [0u8; RECORD_BYTES];
        while state.written < keep {
            if reader.read_exact(&mut buf).is_err() {
                break;
            }
            let Some(record) = Record::decode(&buf) else {
                break;
            };
            if record.prev != NONE && record.prev >= state.written {
                break;
            }
            state.newest.insert(
                (record.depth, record.prefix),
                Slot {
                    record: state.written,
                    version: record.version,
                    prev: record.prev,
                    node: record.node,
                },
            );
            state.written += 1;
        }
        drop(reader);
        file.set_len(state.written * RECORD_BYTES as u64)?;
        let complete = state.written == keep;
        Ok(Opened {
            file: MapFile {
                shared: Arc::new(Shared {
                    path: path.to_owned(),
                    file,
                    state: Mutex::new(state),
                }),
            },
            complete,
        })
    }

    /// Where the file lives.
    pub fn path(&self) -> &Path {
        &self.shared.path
    }

    fn state(&self) -> Result<MutexGuard<'_, State>, StoreError> {
        self.shared
            .state
            .lock()
            .map_err(|_| StoreError::Inconsistent("map file lock poisoned".into()))
    }

    /// Records written or staged: the count a committed state refers to.
    pub fn records(&self) -> Result<u64, StoreError> {
        let state = self.state()?;
        Ok(state.written + state.staged.len() as u64)
    }

    /// Positions held in memory (one per node position ever written).
    pub fn positions(&self) -> usize {
        self.state().map(|s| s.newest.len()).unwrap_or(0)
    }

    /// Drops every record, on disk and in memory (before a rebuild).
    pub fn clear(&self) -> Result<(), StoreError> {
        let mut state = self.state()?;
        remove_if_present(&index_path(&self.shared.path))?;
        self.shared.file.set_len(0)?;
        state.newest.clear();
        state.written = 0;
        state.staged.clear();
        state.broken = None;
        Ok(())
    }

    /// Writes the staged records to the file (to the page cache: see the module docs for why
    /// no fsync is needed here).
    pub fn flush(&self) -> Result<(), StoreError> {
        let mut state = self.state()?;
        self.flush_locked(&mut state)
    }

    fn flush_locked(&self, state: &mut State) -> Result<(), StoreError> {
        // Kept, not taken: every later flush fails too, until the store is reopened.
        if let Some(why) = &state.broken {
            return Err(StoreError::Inconsistent(why.clone()));
        }
        if state.retired {
            return Err(retired());
        }
        if state.staged.is_empty() {
            return Ok(());
        }
        let bytes: Vec<u8> = state.staged.concat();
        self.shared
            .file
            .write_all_at(&bytes, state.written * RECORD_BYTES as u64)?;
        state.written += state.staged.len() as u64;
        state.staged.clear();
        Ok(())
    }

    /// Flushes, then fdatasyncs the file.
    pub fn sync(&self) -> Result<(), StoreError> {
        self.flush()?;
        self.shared.file.sync_data()?;
        Ok(())
    }

    /// Marks this handle as no longer the file's owner, before a snapshot install reopens the
    /// file under a new handle and rebuilds it: an index save in progress on this handle (a
    /// snapshot build runs without the state machine's lock) then discards its work instead of
    /// naming the old records, and this handle writes nothing more. Waits for a flush or the
    /// end of an index save in progress.
    pub fn retire(&self) -> Result<(), StoreError> {
        self.state()?.retired = true;
        Ok(())
    }

    /// Flushes and syncs the records, then writes the in-memory index to `<file>.idx`
    /// (atomically: a temporary file, fsynced, renamed), so the next open reads only the
    /// records after it.
    ///
    /// Holds the file's lock only to copy the index (tens of milliseconds at a million
    /// events) and to rename the finished file: appends continue while it is written out, and
    /// it can run without any lock of the caller's. Fails, leaving no index behind, on a
    /// [retired](MapFile::retire) handle.
    pub fn save_index(&self) -> Result<(), StoreError> {
        let (written, newest) = {
            let mut state = self.state()?;
            // Staged records are in `newest` but not in the file: write them first.
            self.flush_locked(&mut state)?;
            (state.written, state.newest.clone())
        };
        // The index may name only records that are on disk.
        self.shared.file.sync_data()?;
        let path = index_path(&self.shared.path);
        let tmp = temporary_index_path(&path);
        let mut out = HashedWriter::new(File::create(&tmp)?);
        out.write_all(INDEX_MAGIC)?;
        out.write_all(&written.to_be_bytes())?;
        out.write_all(&(newest.len() as u64).to_be_bytes())?;
        let mut slot_bytes = [0u8; SLOT_BYTES];
        for ((depth, prefix), slot) in &newest {
            slot_bytes[0..2].copy_from_slice(&depth.to_be_bytes());
            slot_bytes[2..34].copy_from_slice(prefix.as_bytes());
            slot_bytes[34..42].copy_from_slice(&slot.record.to_be_bytes());
            slot_bytes[42..50].copy_from_slice(&slot.version.to_be_bytes());
            slot_bytes[50..58].copy_from_slice(&slot.prev.to_be_bytes());
            slot_bytes[58..].fill(0);
            encode_node(&slot.node, &mut slot_bytes[58..]);
            out.write_all(&slot_bytes)?;
        }
        let (mut file, sum) = out.finish()?;
        file.write_all(sum.as_bytes())?;
        file.sync_all()?;
        {
            // The rename is the moment the index takes effect: under the lock, so a handle
            // retired meanwhile (its file being rebuilt by another) never names its records.
            let state = self.state()?;
            if state.retired {
                drop(state);
                remove_if_present(&tmp)?;
                return Err(retired());
            }
            std::fs::rename(&tmp, &path)?;
        }
        Ok(crate::durable::sync_parent_dir(&path)?)
    }

    fn read_record(&self, state: &State, record: u64) -> Option<Record> {
        let bytes = match record.checked_sub(state.written) {
            Some(staged) => *state.staged.get(usize::try_from(staged).ok()?)?,
            None => {
                let mut buf = [0u8; RECORD_BYTES];
                self.shared
                    .file
                    .read_exact_at(&mut buf, record.checked_mul(RECORD_BYTES as u64)?)
                    .ok()?;
                buf
            }
        };
        Record::decode(&bytes)
    }
}

fn retired() -> StoreError {
    StoreError::Inconsistent(
        "this map file handle was retired: an installed snapshot replaced the store".into(),
    )
}

fn index_path(map_path: &Path) -> PathBuf {
    let mut name = map_path.as_os_str().to_owned();
    name.push(".idx");
    PathBuf::from(name)
}

/// Index saves begun in this process. Each save writes its own temporary file, so two handles
/// on one map file (a retired handle finishing a save while its successor begins one) never
/// write, or remove, the same temporary file.
static SAVES_BEGUN: AtomicU64 = AtomicU64::new(0);

/// Where the next index save writes before renaming to `index_path`: `<index>.tmp.<n>`.
fn temporary_index_path(index_path: &Path) -> PathBuf {
    let mut name = index_path.as_os_str().to_owned();
    name.push(format!(
        ".tmp.{}",
        SAVES_BEGUN.fetch_add(1, Ordering::Relaxed)
    ));
    PathBuf::from(name)
}

/// Removes every temporary file of `index_path`'s saves.
fn remove_temporary_indexes(index_path: &Path) -> Result<(), StoreError> {
    let (Some(dir), Some(name)) = (index_path.parent(), index_path.file_name()) else {
        return Ok(());
    };
    let mut prefix = name.to_owned();
    prefix.push(".tmp.");
    let prefix = prefix.as_encoded_bytes();
    let dir = if dir.as_os_str().is_empty() {
        Path::new(".")
    } else {
        dir
    };
    for entry in std::fs::read_dir(dir)? {
        let entry = entry?;
        if entry.file_name().as_encoded_bytes().starts_with(prefix) {
            remove_if_present(&entry.path())?;
        }
    }
    Ok(())
}

fn remove_if_present(path: &Path) -> Result<(), StoreError> {
    match std::fs::remove_file(path) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(e.into()),
        _ => Ok(()),
    }
}

/// The index saved by [`MapFile::save_index`] and the record count it covers; `None` if it is
/// absent or does not check out (it is only a shortcut: the records are the truth).
fn load_index(path: &Path) -> Option<(Index, u64)> {
    let bytes = std::fs::read(path).ok()?;
    let (body, sum) = bytes.split_at_checked(bytes.len().checked_sub(32)?)?;
    if blake3::hash(body).as_bytes() != sum || body.get(..8)? != INDEX_MAGIC {
        return None;
    }
    let records = u64_at(body, 8)?;
    let count = usize::try_from(u64_at(body, 16)?).ok()?;
    let slots = body.get(24..)?;
    if slots.len() != count.checked_mul(SLOT_BYTES)? {
        return None;
    }
    let mut newest = HashMap::with_capacity(count);
    for b in slots.chunks_exact(SLOT_BYTES) {
        let slot = Slot {
            record: u64_at(b, 34)?,
            version: u64_at(b, 42)?,
            prev: u64_at(b, 50)?,
            node: decode_node(&b[58..])?,
        };
        if slot.record >= records || (slot.prev != NONE && slot.prev >= slot.record) {
            return None;
        }
        let position = (
            u16::from_be_bytes([b[0], b[1]]),
            Digest::from_slice(&b[2..34])?,
        );
        newest.insert(position, slot);
    }
    Some((newest, records))
}

impl MapNodeStore for MapFile {
    fn get(&self, depth: u16, prefix: &Digest, version: u64) -> Option<MapNode> {
        let state = self.state().ok()?;
        let slot = *state.newest.get(&(depth, *prefix))?;
        if slot.version <= version {
            return slot.node;
        }
        // Walk back through older versions. Record numbers strictly decrease along the chain
        // (checked at open and here), so the walk ends.
        let mut at = slot.prev;
        while at != NONE {
            // A damaged record reads as a missing node, which the map reports as corruption.
            let record = self.read_record(&state, at)?;
            let wrong_position = (record.depth, record.prefix) != (depth, *prefix);
            if wrong_position || (record.prev != NONE && record.prev >= at) {
                return None;
            }
            if record.version <= version {
                return record.node;
            }
            at = record.prev;
        }
        None
    }

    fn put(&mut self, depth: u16, prefix: &Digest, version: u64, node: Option<MapNode>) {
        let Ok(mut state) = self.state() else {
            return;
        };
        let record_no = state.written + state.staged.len() as u64;
        let prev = match state.newest.get(&(depth, *prefix)) {
            None => NONE,
            // The same version written again (several keys changed at one version) replaces
            // the earlier write: the new record skips it.
            Some(slot) if slot.version == version => slot.prev,
            Some(slot) if slot.version < version => slot.record,
            Some(slot) => {
                // The map never writes behind a position's newest version; a file that did
                // would no longer be a version index, so refuse to commit it.
                state.broken = Some(format!(
                    "map node at depth {depth} written at version {version}, behind version {}",
                    slot.version
                ));
                return;
            }
        };
        let record = Record {
            depth,
            prefix: *prefix,
            version,
            prev,
            node,
        };
        state.staged.push(record.encode());
        state.newest.insert(
            (depth, *prefix),
            Slot {
                record: record_no,
                version,
                prev,
                node,
            },
        );
    }
}

#[cfg(test)]
mod tests {
    // Test code: a failed expectation is a test failure with a message.
    #![allow(clippy::expect_used, clippy::unwrap_used)]

    use super::*;
    use proptest::prelude::*;
    use wasteledger_core::map::{CompletenessMap, MemMapStore};

    fn d(n: u64) -> Digest {
        Digest(*blake3::hash(&n.to_be_bytes()).as_bytes())
    }

    /// A write: position (few, so histories get long), version step (0 = same version
    /// again), node kind.
    fn writes() -> impl Strategy<Value = Vec<(u8, u8, u8)>> {
        proptest::collection::vec((0u8..6, 0u8..3, 0u8..3), 1..120)
    }

    fn node(kind: u8, seed: u64) -> Option<MapNode> {
        match kind {
            0 => None,
            1 => Some(MapNode::Leaf {
                key: d(seed),
                value: d(seed + 1),
            }),
            _ => Some(MapNode::Internal { hash: d(seed) }),
        }
    }

    proptest! {
        #[test]
        fn histories_match_the_in_memory_store(writes in writes(), flush_every in 1usize..10) {
            let dir = tempfile::tempdir().unwrap();
            let path = dir.path().join("map");
            let mut file = MapFile::open(&path, 0).unwrap().file;
            let mut reference = MemMapStore::new();
            let mut version = 1u64;
            for (i, (position, step, kind)) in writes.iter().enumerate() {
                version += u64::from(*step);
                let value = node(*kind, i as u64);
                let prefix = d(u64::from(*position));
                file.put(u16::from(*position), &prefix, version, value);
                reference.put(u16::from(*position), &prefix, version, value);
                if i % flush_every == 0 {
                    file.flush().unwrap();
                }
            }
            // Staged and written records alike.
            assert_same_positions(&file, &reference, 6, version + 1);
            file.flush().unwrap();
            let records = file.records().unwrap();
            drop(file);
            let reopened = MapFile::open(&path, records).unwrap();
            prop_assert!(reopened.complete);
            assert_same_positions(&reopened.file, &reference, 6, version + 1);
        }
    }

    #[test]
    fn a_saved_index_is_used_then_extended_by_later_records() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("map");
        let mut file = MapFile::open(&path, 0).unwrap().file;
        let mut reference = MemMapStore::new();
        let mut write = |file: &mut MapFile, i: u64| {
            let (position, value) = ((i % 5) as u16, node((i % 3) as u8, i));
            file.put(position, &d(u64::from(position)), i, value);
            reference.put(position, &d(u64::from(position)), i, value);
        };
        for i in 1..=40 {
            write(&mut file, i);
        }
        file.save_index().unwrap();
        for i in 41..=60 {
            write(&mut file, i);
        }
        file.flush().unwrap();
        let records = file.records().unwrap();
        drop(file);
        // Prove the index is what the open used: damage a record it covers (never read again
        // at open), and the file still opens complete, with every version readable except
        // through the damaged record.
        let mut bytes = std::fs::read(&path).unwrap();
        bytes[RECORD_BYTES * 3 + 10] ^= 1;
        std::fs::write(&path, &bytes).unwrap();
        let opened = MapFile::open(&path, records).unwrap();
        assert!(opened.complete);
        for position in 0u16..5 {
            assert_eq!(
                opened.file.get(position, &d(u64::from(position)), 60),
                reference.get(position, &d(u64::from(position)), 60)
            );
        }
        drop(opened);
        bytes[RECORD_BYTES * 3 + 10] ^= 1;
        std::fs::write(&path, &bytes).unwrap();
        let opened = MapFile::open(&path, records).unwrap();
        assert_same_positions(&opened.file, &reference, 5, 61);
        drop(opened);

        // Keeping fewer records than the index covers discards the index.
        let opened = MapFile::open(&path, 30).unwrap();
        assert!(opened.complete);
        assert!(!index_path(&path).exists());
        assert_eq!(opened.file.records().unwrap(), 30);
        drop(opened);

        // A damaged index is ignored: the records are read instead.
        let file = MapFile::open(&path, 30).unwrap().file;
        file.save_index().unwrap();
        let mut index = std::fs::read(index_path(&path)).unwrap();
        index[30] ^= 1;
        std::fs::write(index_path(&path), index).unwrap();
        drop(file);
        let opened = MapFile::open(&path, 30).unwrap();
        assert!(opened.complete);
        assert_eq!(opened.file.records().unwrap(), 30);
    }

    /// An install reopens the file under a new handle and rebuilds it while a snapshot build
    /// may still hold the old one: once retired, the old handle neither writes records nor
    /// leaves an index naming its records over the rebuilt file.
    #[test]
    fn a_retired_handle_writes_nothing_over_its_successor() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("map");
        let mut old = MapFile::open(&path, 0).unwrap().file;
        for i in 1..=40u64 {
            old.put((i % 5) as u16, &d(i % 5), i, node((i % 3) as u8, i));
        }
        old.flush().unwrap();
        // Staged on the old handle when the install starts.
        old.put(9, &d(9), 41, node(1, 41));
        old.retire().unwrap();

        // The successor: the file cut to nothing and rebuilt with other records.
        let mut successor = MapFile::open(&path, 0).unwrap().file;
        for i in 1..=7u64 {
            successor.put(1, &d(100 + i), i, node(2, i));
        }
        successor.flush().unwrap();
        let len = std::fs::metadata(&path).unwrap().len();

        assert!(matches!(old.flush(), Err(StoreError::Inconsistent(_))));
        assert!(matches!(old.save_index(), Err(StoreError::Inconsistent(_))));
        assert!(
            !index_path(&path).exists(),
            "a retired handle saved an index"
        );
        assert!(
            std::fs::read_dir(dir.path()).unwrap().all(|e| !e
                .unwrap()
                .file_name()
                .to_string_lossy()
                .contains(".tmp")),
            "a retired handle left its temporary index behind"
        );
        assert_eq!(std::fs::metadata(&path).unwrap().len(), len);

        // The successor's own index is unaffected.
        successor.save_index().unwrap();
        drop((old, successor));
        let opened = MapFile::open(&path, 7).unwrap();
        assert!(opened.complete);
        assert_eq!(opened.file.get(1, &d(107), 7), node(2, 7));
    }

    #[test]
    fn saves_write_their_own_temporary_files_and_open_clears_stale_ones() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("ledger.map");
        let index = index_path(&path);
        let (first, second) = (temporary_index_path(&index), temporary_index_path(&index));
        assert_ne!(first, second, "two saves, two temporary files");
        // What saves cut short by a crash leave behind, and a file that only looks alike.
        std::fs::write(&first, b"half an index").unwrap();
        std::fs::write(&second, b"another half").unwrap();
        let unrelated = dir.path().join("ledger.map.idx.tmpfile");
        std::fs::write(&unrelated, b"not ours").unwrap();

        let mut file = MapFile::open(&path, 0).unwrap().file;
        assert!(
            !first.exists() && !second.exists(),
            "stale temporaries removed"
        );
        assert!(unrelated.exists(), "only the saves' own names are removed");
        file.put(0, &d(0), 1, node(1, 1));
        file.save_index().unwrap();
        assert!(index.exists());
        let left: Vec<_> = std::fs::read_dir(dir.path())
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .filter(|n| n.starts_with("ledger.map.idx.tmp."))
            .collect();
        assert!(
            left.is_empty(),
            "a finished save leaves no temporary: {left:?}"
        );
    }

    /// Positions `0..positions` at every version up to `last` read the same from the file and
    /// the reference.
    fn assert_same_positions(file: &MapFile, reference: &MemMapStore, positions: u16, last: u64) {
        for position in 0..positions {
            for version in 0..=last {
                assert_eq!(
                    file.get(position, &d(u64::from(position)), version),
                    reference.get(position, &d(u64::from(position)), version),
                    "position {position} at version {version}"
                );
            }
        }
    }

    #[test]
    fn reopening_drops_records_after_the_committed_count() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("map");
        let mut file = MapFile::open(&path, 0).unwrap().file;
        file.put(0, &d(0), 1, node(1, 1));
        file.flush().unwrap();
        file.put(0, &d(0), 2, node(2, 2));
        file.put(1, &d(1), 2, node(1, 3));
        file.flush().unwrap();
        drop(file);
        let opened = MapFile::open(&path, 1).unwrap();
        assert!(opened.complete);
        assert_eq!(opened.file.records().unwrap(), 1);
        assert_eq!(opened.file.get(0, &d(0), 9), node(1, 1));
        assert_eq!(opened.file.get(1, &d(1), 9), None);
        assert_eq!(
            std::fs::metadata(&path).unwrap().len(),
            RECORD_BYTES as u64,
            "the dropped tail is cut from the file"
        );
    }

    #[test]
    fn a_damaged_or_missing_record_makes_the_file_incomplete() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("map");
        let mut file = MapFile::open(&path, 0).unwrap().file;
        for v in 1..=4 {
            file.put(0, &d(0), v, node(2, v));
        }
        file.flush().unwrap();
        drop(file);
        // Asking for more records than the file holds (a power loss took the tail).
        let opened = MapFile::open(&path, 5).unwrap();
        assert!(!opened.complete);
        drop(opened);
        // One flipped byte in the third record: reading stops before it.
        let mut bytes = std::fs::read(&path).unwrap();
        bytes[2 * RECORD_BYTES + 60] ^= 1;
        std::fs::write(&path, bytes).unwrap();
        let opened = MapFile::open(&path, 4).unwrap();
        assert!(!opened.complete);
        assert_eq!(opened.file.records().unwrap(), 2);
        assert_eq!(opened.file.get(0, &d(0), 9), node(2, 2));
    }

    #[test]
    fn a_write_behind_the_newest_version_is_refused_at_flush() {
        let dir = tempfile::tempdir().unwrap();
        let mut file = MapFile::open(&dir.path().join("map"), 0).unwrap().file;
        file.put(0, &d(0), 5, node(1, 1));
        file.put(0, &d(0), 4, node(1, 2));
        let err = file.flush().unwrap_err();
        assert!(err.to_string().contains("behind version 5"), "{err}");
    }

    #[test]
    fn a_map_over_the_file_matches_one_in_memory() {
        let dir = tempfile::tempdir().unwrap();
        let mut on_file =
            CompletenessMap::new(MapFile::open(&dir.path().join("map"), 0).unwrap().file);
        let mut in_memory = CompletenessMap::default();
        for i in 0..300u64 {
            // Re-setting earlier keys as well as adding new ones.
            let key = d(i % 170);
            assert_eq!(
                on_file.insert(key, d(1000 + i), i + 1).unwrap(),
                in_memory.insert(key, d(1000 + i), i + 1).unwrap()
            );
            if i % 7 == 0 {
                on_file.store().flush().unwrap();
            }
        }
        for version in (0..=300).step_by(13) {
            assert_eq!(on_file.root_at(version), in_memory.root_at(version));
            assert_eq!(
                on_file.prove(&d(3), version).ok(),
                in_memory.prove(&d(3), version).ok()
            );
        }
    }
}

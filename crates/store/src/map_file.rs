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
//! snapshot and at shutdown) saves the index with the record count it covers, and
//! [`MapFile::open`] loads it and reads only the records after it. A save writes either the
//! whole index to `<file>.idx`, or only the positions changed since the last save, appended as
//! one segment to `<file>.idx.delta`. Writing the whole index at every snapshot cost time in
//! proportion to everything ever written (tens of MB at a million events, on every node at
//! once); a segment costs what changed since. Segments are folded into a new whole index once
//! they hold as many positions as it does, so an open reads at most twice the index.
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
use std::collections::hash_map::Entry;
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
/// Starts each segment of `<file>.idx.delta`. A segment: magic ‖ checksum of the whole index
/// it extends (32) ‖ records covered before it (u64 BE) ‖ records covered after it (u64 BE) ‖
/// slot count (u64 BE) ‖ slots ‖ BLAKE3 of every preceding byte of the segment (32).
const DELTA_MAGIC: &[u8; 8] = b"WLMAPID1";
const DELTA_HEADER_BYTES: usize = 8 + 32 + 8 + 8 + 8;
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

/// A node position: depth and prefix.
#[derive(Clone, Copy, PartialEq, Eq)]
struct Position {
    depth: u16,
    prefix: Digest,
}

impl Position {
    fn new(depth: u16, prefix: Digest) -> Position {
        Position { depth, prefix }
    }

    /// The bit that tells this position from its sibling: the prefix's last bit (bit
    /// `depth - 1`); 0 for the root.
    fn sibling_bit(&self) -> u64 {
        let Some(last) = self.depth.checked_sub(1) else {
            return 0;
        };
        let last = usize::from(last);
        let byte = self.prefix.0.get(last / 8).copied().unwrap_or(0);
        u64::from((byte >> (7 - last % 8)) & 1)
    }

    /// The prefix's first 64 bits with the sibling bit cleared: the same for both siblings.
    fn parent_head(&self) -> u64 {
        let mut head = [0u8; 8];
        head.copy_from_slice(&self.prefix.0[..8]);
        let head = u64::from_be_bytes(head);
        match self.depth.checked_sub(1) {
            Some(last) if last < 64 => head & !(1u64 << (63 - last)),
            _ => head,
        }
    }
}

/// Feeds [`PositionHasher`] exactly what it mixes, in its own calls, so the index's bucket
/// layout does not depend on how std hashes tuples or slices.
impl std::hash::Hash for Position {
    fn hash<H: std::hash::Hasher>(&self, state: &mut H) {
        state.write_u16(self.depth);
        state.write_u64(self.parent_head());
        state.write_u8(self.sibling_bit() as u8);
    }
}

/// The newest version of every position written.
type Index = HashMap<Position, Slot, PositionHashing>;

/// Hashes [`Position`]s so that two siblings (same depth, prefixes differing only in their
/// last bit) land in neighbouring buckets.
///
/// An insert into the map looks up, at every depth of its path, the node on the path and its
/// sibling, one after the other. Past a few hundred thousand positions the index (~136 bytes
/// a position) outgrows the CPU caches and each lookup is a cache and TLB miss; with siblings
/// side by side the second lookup mostly finds the lines and page the first brought in. The
/// rest of the hash is a seeded folded multiply of the prefix's first 64 bits and the depth:
/// prefixes are BLAKE3 output, and the seed, drawn once per process, keeps a party that
/// chooses subject ids from aiming many positions at one bucket.
#[derive(Clone)]
struct PositionHashing {
    seed: u64,
}

impl Default for PositionHashing {
    fn default() -> Self {
        use std::hash::BuildHasher;
        PositionHashing {
            seed: std::collections::hash_map::RandomState::new().hash_one(0x5eed_u64),
        }
    }
}

impl std::hash::BuildHasher for PositionHashing {
    type Hasher = PositionHasher;

    fn build_hasher(&self) -> PositionHasher {
        PositionHasher {
            seed: self.seed,
            depth: 0,
            head: 0,
            sibling_bit: 0,
        }
    }
}

/// See [`PositionHashing`]. Fed by [`Position`]'s `Hash`: the depth (`write_u16`), the
/// parent's head (`write_u64`), then the sibling bit (`write_u8`).
struct PositionHasher {
    seed: u64,
    depth: u16,
    head: u64,
    sibling_bit: u64,
}

impl std::hash::Hasher for PositionHasher {
    fn write_u16(&mut self, depth: u16) {
        self.depth = depth;
    }

    fn write_u64(&mut self, head: u64) {
        self.head = head;
    }

    fn write_u8(&mut self, sibling_bit: u8) {
        self.sibling_bit = u64::from(sibling_bit & 1);
    }

    /// Not called by [`Position`]; folds anything else in so the hasher stays a hasher.
    fn write(&mut self, bytes: &[u8]) {
        for chunk in bytes.chunks(8) {
            let mut word = [0u8; 8];
            word[..chunk.len()].copy_from_slice(chunk);
            self.head = self.head.rotate_left(29) ^ u64::from_be_bytes(word);
        }
    }

    fn finish(&self) -> u64 {
        // Odd, so never zero: every depth gets its own multiplier.
        let multiplier = 0x9e37_79b9_7f4a_7c15_u64 ^ (u64::from(self.depth) << 1);
        let product = u128::from(self.head ^ self.seed) * u128::from(multiplier);
        let mixed = (product as u64) ^ ((product >> 64) as u64);
        (mixed & !1) | self.sibling_bit
    }
}

/// What the index on disk holds, so that the next save writes only what changed since.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct SavedIndex {
    /// Checksum of the whole index (`<file>.idx`) the segments extend.
    whole: [u8; 32],
    /// Positions in the whole index.
    whole_positions: u64,
    /// Positions in the segments since (a position changed in two segments counts twice).
    segment_positions: u64,
    /// Records covered by the whole index and its segments.
    covers: u64,
    /// Bytes of `<file>.idx.delta` holding those segments.
    delta_bytes: u64,
}

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
    /// The index on disk; `None` when there is none, or its segment file may end in a torn
    /// write (the next save then writes the whole index).
    saved: Option<SavedIndex>,
}

struct Shared {
    path: PathBuf,
    file: File,
    state: Mutex<State>,
    /// Held for the whole of an index save: saves run one at a time, and
    /// [`MapFile::retire`] waits for the one in progress.
    saving: Mutex<()>,
}

/// The completeness map's node store: an append-only record file plus an in-memory index of
/// each position's newest version. A cheap-clone handle.
#[derive(Clone)]
pub struct MapFile {
    shared: Arc<Shared>,
}

/// What one [`MapFile::save_index`] wrote.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum IndexSave {
    /// Nothing: no record was written since the last save.
    Unchanged,
    /// The whole index, with this many positions.
    Whole(u64),
    /// A segment with the positions changed since the last save, this many.
    Segment(u64),
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
        // Left by a save that a crash cut short.
        remove_temporary_indexes(&index_path)?;
        let records_in_file = file.metadata()?.len() / RECORD_BYTES as u64;
        let (newest, saved) = match load_index(path, keep.min(records_in_file)) {
            Some((newest, saved)) => {
                // Drop segments that were torn or cover records about to be cut off, so the
                // next one is appended right after the last that counts.
                truncate_if_longer(&delta_path(path), saved.delta_bytes)?;
                (newest, Some(saved))
            }
            // Absent, damaged, or covering records about to be cut off (which may be written
            // again differently): start from the first record.
            None => {
                remove_if_present(&index_path)?;
                remove_if_present(&delta_path(path))?;
                (Index::default(), None)
            }
        };
        let mut state = State {
            newest,
            written: saved.map_or(0, |s| s.covers),
            staged: Vec::new(),
            broken: None,
            retired: false,
            saved,
        };
        let mut reader = BufReader::with_capacity(1 << 20, &file);
        reader.seek(SeekFrom::Start(state.written * RECORD_BYTES as u64))?;
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
                Position::new(record.depth, record.prefix),
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
                    saving: Mutex::new(()),
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
        locked(&self.shared.state, "map file")
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
        let _no_save_running = self.saving()?;
        let mut state = self.state()?;
        remove_if_present(&index_path(&self.shared.path))?;
        remove_if_present(&delta_path(&self.shared.path))?;
        state.saved = None;
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
        let _no_save_running = self.saving()?;
        self.state()?.retired = true;
        Ok(())
    }

    fn saving(&self) -> Result<MutexGuard<'_, ()>, StoreError> {
        locked(&self.shared.saving, "map index save")
    }

    /// Flushes and syncs the records, then saves the in-memory index, so the next open reads
    /// only the records after it: the positions changed since the last save, appended as a
    /// segment to `<file>.idx.delta` (fsynced), or, when the segments would then hold more
    /// positions than the whole index, the whole index to `<file>.idx` (atomically: a
    /// temporary file, fsynced, renamed), which starts the segments afresh.
    ///
    /// Holds the file's lock only to copy what it writes (every position for the whole index:
    /// tens of milliseconds at a million events): appends continue while it is written out,
    /// and it can run without any lock of the caller's. Fails, leaving nothing behind, on a
    /// [retired](MapFile::retire) handle.
    pub fn save_index(&self) -> Result<IndexSave, StoreError> {
        let _one_at_a_time = self.saving()?;
        let (written, saved, slots) = {
            let mut state = self.state()?;
            // Staged records are in `newest` but not in the file: write them first. Fails on
            // a retired handle, which cannot be retired during the save (see `retire`).
            self.flush_locked(&mut state)?;
            if state.saved.is_some_and(|s| s.covers == state.written) {
                return Ok(IndexSave::Unchanged);
            }
            // The positions whose newest version was written since the last save; all of
            // them when there is no saved index or a segment would outgrow it.
            let positions_since = |from: u64| -> Vec<(Position, Slot)> {
                state
                    .newest
                    .iter()
                    .filter(|(_, slot)| slot.record >= from)
                    .map(|(position, slot)| (*position, *slot))
                    .collect()
            };
            let mut slots = positions_since(state.saved.map_or(0, |s| s.covers));
            let saved = state
                .saved
                .filter(|s| s.segment_positions + slots.len() as u64 <= s.whole_positions);
            if saved.is_none() && state.saved.is_some() {
                slots = positions_since(0);
            }
            (state.written, saved, slots)
        };
        // The index may name only records that are on disk.
        self.shared.file.sync_data()?;
        let (result, done) = match saved {
            Some(saved) => (
                self.append_segment(saved, written, &slots),
                IndexSave::Segment(slots.len() as u64),
            ),
            None => (
                self.save_whole(written, &slots),
                IndexSave::Whole(slots.len() as u64),
            ),
        };
        let mut state = self.state()?;
        // After a failed append the segment file may end in a torn segment that would hide
        // every later one: the next save writes the whole index, which starts a new file.
        state.saved = result.as_ref().ok().copied();
        result.map(|_| done)
    }

    /// Writes `slots` (every position) as the whole index covering `written` records.
    fn save_whole(
        &self,
        written: u64,
        slots: &[(Position, Slot)],
    ) -> Result<SavedIndex, StoreError> {
        let path = index_path(&self.shared.path);
        let tmp = temporary_index_path(&path);
        let mut out = HashedWriter::new(File::create(&tmp)?);
        out.write_all(INDEX_MAGIC)?;
        out.write_all(&written.to_be_bytes())?;
        out.write_all(&(slots.len() as u64).to_be_bytes())?;
        let mut slot_bytes = [0u8; SLOT_BYTES];
        for (position, slot) in slots {
            encode_slot(*position, slot, &mut slot_bytes);
            out.write_all(&slot_bytes)?;
        }
        let (mut file, sum) = out.finish()?;
        file.write_all(sum.as_bytes())?;
        file.sync_all()?;
        std::fs::rename(&tmp, &path)?;
        // Segments name the whole index they extend, so the old ones no longer count; removed
        // so the next segment starts the file.
        remove_if_present(&delta_path(&self.shared.path))?;
        crate::durable::sync_parent_dir(&path)?;
        Ok(SavedIndex {
            whole: *sum.as_bytes(),
            whole_positions: slots.len() as u64,
            segment_positions: 0,
            covers: written,
            delta_bytes: 0,
        })
    }

    /// Appends `slots` (the positions changed since `saved.covers`) as a segment covering
    /// `written` records.
    fn append_segment(
        &self,
        saved: SavedIndex,
        written: u64,
        slots: &[(Position, Slot)],
    ) -> Result<SavedIndex, StoreError> {
        let mut segment = Vec::with_capacity(DELTA_HEADER_BYTES + slots.len() * SLOT_BYTES + 32);
        segment.extend_from_slice(DELTA_MAGIC);
        segment.extend_from_slice(&saved.whole);
        segment.extend_from_slice(&saved.covers.to_be_bytes());
        segment.extend_from_slice(&written.to_be_bytes());
        segment.extend_from_slice(&(slots.len() as u64).to_be_bytes());
        let mut slot_bytes = [0u8; SLOT_BYTES];
        for (position, slot) in slots {
            encode_slot(*position, slot, &mut slot_bytes);
            segment.extend_from_slice(&slot_bytes);
        }
        let sum = blake3::hash(&segment);
        segment.extend_from_slice(sum.as_bytes());
        let path = delta_path(&self.shared.path);
        let created = !path.exists();
        // Written at the end of the segments that count, not appended: anything after them is
        // not a segment to keep.
        let file = OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&path)?;
        file.write_all_at(&segment, saved.delta_bytes)?;
        file.sync_data()?;
        if created {
            crate::durable::sync_parent_dir(&path)?;
        }
        Ok(SavedIndex {
            segment_positions: saved.segment_positions + slots.len() as u64,
            covers: written,
            delta_bytes: saved.delta_bytes + segment.len() as u64,
            ..saved
        })
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

/// `lock`, or an error naming `what` was left poisoned by a panic.
fn locked<'a, T>(lock: &'a Mutex<T>, what: &str) -> Result<MutexGuard<'a, T>, StoreError> {
    lock.lock()
        .map_err(|_| StoreError::Inconsistent(format!("{what} lock poisoned")))
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

/// Where saves append the positions changed since the whole index: `<file>.idx.delta`.
fn delta_path(map_path: &Path) -> PathBuf {
    let mut name = map_path.as_os_str().to_owned();
    name.push(".idx.delta");
    PathBuf::from(name)
}

/// Cuts the file at `path`, if there is one, to `len` bytes (a no-op when it is shorter).
fn truncate_if_longer(path: &Path, len: u64) -> Result<(), StoreError> {
    match OpenOptions::new().write(true).open(path) {
        Ok(file) => {
            if file.metadata()?.len() > len {
                file.set_len(len)?;
                file.sync_data()?;
            }
            Ok(())
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(e.into()),
    }
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

fn encode_slot(position: Position, slot: &Slot, out: &mut [u8; SLOT_BYTES]) {
    out[0..2].copy_from_slice(&position.depth.to_be_bytes());
    out[2..34].copy_from_slice(position.prefix.as_bytes());
    out[34..42].copy_from_slice(&slot.record.to_be_bytes());
    out[42..50].copy_from_slice(&slot.version.to_be_bytes());
    out[50..58].copy_from_slice(&slot.prev.to_be_bytes());
    out[58..].fill(0);
    encode_node(&slot.node, &mut out[58..]);
}

/// One slot, if it is well formed and names a record in `records` (a range of record numbers).
fn decode_slot(b: &[u8], records: std::ops::Range<u64>) -> Option<(Position, Slot)> {
    let slot = Slot {
        record: u64_at(b, 34)?,
        version: u64_at(b, 42)?,
        prev: u64_at(b, 50)?,
        node: decode_node(b.get(58..)?)?,
    };
    if !records.contains(&slot.record) || (slot.prev != NONE && slot.prev >= slot.record) {
        return None;
    }
    let position = Position::new(
        u16::from_be_bytes([*b.first()?, *b.get(1)?]),
        Digest::from_slice(b.get(2..34)?)?,
    );
    Some((position, slot))
}

/// The index [`MapFile::save_index`] saved for the map file at `map_path`, extended by every
/// intact segment that follows on from it and covers no more than `keep` records; `None` if
/// the whole index is absent, does not check out, or covers more than `keep` (it is only a
/// shortcut: the records are the truth).
fn load_index(map_path: &Path, keep: u64) -> Option<(Index, SavedIndex)> {
    let bytes = std::fs::read(index_path(map_path)).ok()?;
    let (body, sum) = bytes.split_at_checked(bytes.len().checked_sub(32)?)?;
    if blake3::hash(body).as_bytes() != sum || body.get(..8)? != INDEX_MAGIC {
        return None;
    }
    let records = u64_at(body, 8)?;
    let count = usize::try_from(u64_at(body, 16)?).ok()?;
    let slots = body.get(24..)?;
    if records > keep || slots.len() != count.checked_mul(SLOT_BYTES)? {
        return None;
    }
    let mut newest = Index::with_capacity_and_hasher(count, PositionHashing::default());
    for b in slots.chunks_exact(SLOT_BYTES) {
        let (position, slot) = decode_slot(b, 0..records)?;
        newest.insert(position, slot);
    }
    let mut saved = SavedIndex {
        whole: sum.try_into().ok()?,
        whole_positions: count as u64,
        segment_positions: 0,
        covers: records,
        delta_bytes: 0,
    };
    // Segments: each must extend this whole index from exactly where the last one ended.
    // The first that does not (torn by a crash, or left over from an older whole index) ends
    // the walk; the records it would have covered are read instead.
    let deltas = std::fs::read(delta_path(map_path)).unwrap_or_default();
    let mut rest = deltas.as_slice();
    while let Some((segment, after)) = next_segment(rest, &saved, keep) {
        // All of a segment or none of it: a slot that does not check out ends the walk here.
        let Some(slots) = segment
            .slots
            .chunks_exact(SLOT_BYTES)
            .map(|b| decode_slot(b, saved.covers..segment.covers))
            .collect::<Option<Vec<_>>>()
        else {
            break;
        };
        newest.extend(slots);
        saved.segment_positions += segment.count;
        saved.delta_bytes += (rest.len() - after.len()) as u64;
        saved.covers = segment.covers;
        rest = after;
    }
    Some((newest, saved))
}

/// A segment's slots, as read from `<file>.idx.delta`.
struct Segment<'a> {
    covers: u64,
    count: u64,
    slots: &'a [u8],
}

/// The segment at the start of `bytes` and what follows it, if it is intact, extends `saved`
/// and covers no more than `keep` records.
fn next_segment<'a>(
    bytes: &'a [u8],
    saved: &SavedIndex,
    keep: u64,
) -> Option<(Segment<'a>, &'a [u8])> {
    let header = bytes.get(..DELTA_HEADER_BYTES)?;
    let count = u64_at(header, 56)?;
    let slots_len = usize::try_from(count).ok()?.checked_mul(SLOT_BYTES)?;
    let body_len = DELTA_HEADER_BYTES.checked_add(slots_len)?;
    let (body, after) = bytes.split_at_checked(body_len)?;
    let (sum, after) = after.split_at_checked(32)?;
    let covers = u64_at(header, 48)?;
    let intact = header.get(..8)? == DELTA_MAGIC
        && header.get(8..40)? == saved.whole
        && u64_at(header, 40)? == saved.covers
        && covers > saved.covers
        && covers <= keep
        && blake3::hash(body).as_bytes() == sum;
    if !intact {
        return None;
    }
    let slots = body.get(DELTA_HEADER_BYTES..)?;
    Some((
        Segment {
            covers,
            count,
            slots,
        },
        after,
    ))
}

impl MapFile {
    /// [`MapNodeStore::get`] with the state already locked.
    fn get_in(&self, state: &State, depth: u16, prefix: &Digest, version: u64) -> Option<MapNode> {
        let slot = *state.newest.get(&Position::new(depth, *prefix))?;
        if slot.version <= version {
            return slot.node;
        }
        // Walk back through older versions. Record numbers strictly decrease along the chain
        // (checked at open and here), so the walk ends.
        let mut at = slot.prev;
        while at != NONE {
            // A damaged record reads as a missing node, which the map reports as corruption.
            let record = self.read_record(state, at)?;
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
}

/// [`MapNodeStore::put`] with the state already locked.
fn put_in(state: &mut State, depth: u16, prefix: &Digest, version: u64, node: Option<MapNode>) {
    let record_no = state.written + state.staged.len() as u64;
    // One lookup for the check and the write: the index is large and its lookups miss
    // the caches.
    let position = state.newest.entry(Position::new(depth, *prefix));
    let prev = match &position {
        Entry::Vacant(_) => NONE,
        // The same version written again (several keys changed at one version) replaces
        // the earlier write: the new record skips it.
        Entry::Occupied(slot) if slot.get().version == version => slot.get().prev,
        Entry::Occupied(slot) if slot.get().version < version => slot.get().record,
        Entry::Occupied(slot) => {
            // The map never writes behind a position's newest version; a file that did
            // would no longer be a version index, so refuse to commit it.
            state.broken = Some(format!(
                "map node at depth {depth} written at version {version}, behind version {}",
                slot.get().version
            ));
            return;
        }
    };
    let slot = Slot {
        record: record_no,
        version,
        prev,
        node,
    };
    *position.or_insert(slot) = slot;
    let record = Record {
        depth,
        prefix: *prefix,
        version,
        prev,
        node,
    };
    state.staged.push(record.encode());
}

/// The batched calls take the state's lock once for all their positions (see
/// [`MapNodeStore::get_many`]): a walk down a path of a large map is a chain of cache misses in
/// the position index, and a lock between two lookups keeps their misses from overlapping.
impl MapNodeStore for MapFile {
    fn get(&self, depth: u16, prefix: &Digest, version: u64) -> Option<MapNode> {
        let state = self.state().ok()?;
        self.get_in(&state, depth, prefix, version)
    }

    fn put(&mut self, depth: u16, prefix: &Digest, version: u64, node: Option<MapNode>) {
        if let Ok(mut state) = self.state() {
            put_in(&mut state, depth, prefix, version, node);
        }
    }

    fn get_many(
        &self,
        positions: &[(u16, Digest)],
        version: u64,
        found: &mut Vec<Option<MapNode>>,
    ) {
        // A poisoned lock answers nothing, which the map reports as an inconsistent store.
        let Ok(state) = self.state() else {
            return;
        };
        found.extend(
            positions
                .iter()
                .map(|(depth, prefix)| self.get_in(&state, *depth, prefix, version)),
        );
    }

    fn put_many(&mut self, writes: &[(u16, Digest, Option<MapNode>)], version: u64) {
        if let Ok(mut state) = self.state() {
            for (depth, prefix, node) in writes {
                put_in(&mut state, *depth, prefix, version, *node);
            }
        }
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

    /// Siblings hash alike but for the lowest bit; other positions (another depth, another
    /// parent) hash apart.
    #[test]
    fn siblings_hash_to_neighbouring_buckets() {
        use std::hash::BuildHasher;
        let hashing = PositionHashing::default();
        let hash = |depth: u16, prefix: &Digest| hashing.hash_one(Position::new(depth, *prefix));
        let mut parents = std::collections::HashMap::new();
        for n in 0..200u64 {
            for depth in [1u16, 2, 7, 8, 9, 63, 64, 65, 100, 255, 256] {
                let prefix = wasteledger_core::map::prefix_of(&d(n), depth);
                let mut sibling = prefix;
                let last = usize::from(depth - 1);
                sibling.0[last / 8] ^= 0x80 >> (last % 8);
                let (a, b) = (hash(depth, &prefix), hash(depth, &sibling));
                assert_eq!(a ^ b, 1, "depth {depth}");
                let mut parent = prefix;
                parent.0[last / 8] &= !(0x80 >> (last % 8));
                parents.insert((depth, parent), a >> 1);
            }
        }
        let distinct: std::collections::HashSet<u64> = parents.values().copied().collect();
        assert_eq!(
            distinct.len(),
            parents.len(),
            "two sibling pairs hash alike"
        );
        // A different seed gives different hashes.
        let other = PositionHashing::default();
        let prefix = wasteledger_core::map::prefix_of(&d(1), 12);
        assert_ne!(
            other.hash_one(Position::new(12, prefix)),
            hashing.hash_one(Position::new(12, prefix))
        );
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
        /// Index saves (whole or segments) at any point, before and after a reopen, change
        /// nothing that is read.
        fn histories_match_the_in_memory_store(
            writes in writes(),
            flush_every in 1usize..10,
            save_every in 1usize..40,
            reopen_at in 0usize..120,
        ) {
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
                if i % save_every == save_every - 1 {
                    file.save_index().unwrap();
                }
                if i == reopen_at {
                    file.flush().unwrap();
                    let records = file.records().unwrap();
                    drop(file);
                    let reopened = MapFile::open(&path, records).unwrap();
                    prop_assert!(reopened.complete);
                    file = reopened.file;
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

    /// Writes position `position` at `version` to the file and the reference alike.
    fn write_at(file: &mut MapFile, reference: &mut MemMapStore, position: u16, version: u64) {
        let value = node((version % 3) as u8, version);
        file.put(position, &d(u64::from(position)), version, value);
        reference.put(position, &d(u64::from(position)), version, value);
    }

    /// The index as `open` found it (or the last save left it).
    fn saved(file: &MapFile) -> Option<SavedIndex> {
        file.state().unwrap().saved
    }

    #[test]
    fn saves_append_what_changed_until_it_outgrows_the_whole_index() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("map");
        let mut file = MapFile::open(&path, 0).unwrap().file;
        let mut reference = MemMapStore::new();
        let mut version = 0u64;
        // Each round writes `n` of 50 positions (all different up to 50), a version each.
        let mut round = |file: &mut MapFile, reference: &mut MemMapStore, n: u64| {
            for _ in 0..n {
                version += 1;
                write_at(file, reference, ((version * 7) % 50) as u16, version);
            }
            version
        };
        round(&mut file, &mut reference, 200);
        file.save_index().unwrap();
        let whole = saved(&file).unwrap();
        assert_eq!((whole.whole_positions, whole.segment_positions), (50, 0));
        let whole_bytes = std::fs::read(index_path(&path)).unwrap();

        // Ten changed positions: a segment of ten, the whole index untouched.
        round(&mut file, &mut reference, 10);
        file.save_index().unwrap();
        let first = saved(&file).unwrap();
        assert_eq!((first.whole, first.segment_positions), (whole.whole, 10));
        assert_eq!(std::fs::read(index_path(&path)).unwrap(), whole_bytes);
        assert_eq!(
            std::fs::metadata(delta_path(&path)).unwrap().len(),
            first.delta_bytes
        );
        // Nothing written since: nothing saved.
        file.save_index().unwrap();
        assert_eq!(saved(&file), Some(first));

        round(&mut file, &mut reference, 15);
        file.save_index().unwrap();
        let second = saved(&file).unwrap();
        assert_eq!(second.segment_positions, 25);
        let records = file.records().unwrap();
        assert_eq!(second.covers, records);
        let old_segments = std::fs::read(delta_path(&path)).unwrap();
        drop(file);

        // The open uses the whole index and both segments: damage a record the second segment
        // covers, and the file still opens complete, reading no record.
        let mut bytes = std::fs::read(&path).unwrap();
        let covered = usize::try_from(first.covers).unwrap() + 3;
        bytes[RECORD_BYTES * covered + 10] ^= 1;
        std::fs::write(&path, &bytes).unwrap();
        let opened = MapFile::open(&path, records).unwrap();
        assert!(opened.complete);
        assert_eq!(saved(&opened.file), Some(second));
        drop(opened);
        bytes[RECORD_BYTES * covered + 10] ^= 1;
        std::fs::write(&path, &bytes).unwrap();
        let mut file = MapFile::open(&path, records).unwrap().file;
        assert_same_positions(&file, &reference, 50, 226);

        // Once the segments would hold more positions than the whole index, the save writes a
        // whole index again and starts the segments afresh.
        let version = round(&mut file, &mut reference, 30);
        file.save_index().unwrap();
        let again = saved(&file).unwrap();
        assert_ne!(again.whole, whole.whole);
        assert_eq!((again.segment_positions, again.delta_bytes), (0, 0));
        assert!(!delta_path(&path).exists());
        let records = file.records().unwrap();
        drop(file);
        let opened = MapFile::open(&path, records).unwrap();
        assert!(opened.complete);
        assert_eq!(saved(&opened.file), Some(again));
        assert_same_positions(&opened.file, &reference, 50, version + 1);
        drop(opened);

        // A crash between the new whole index and removing the old segments: they name the
        // old whole index, so the open ignores them and clears them away.
        std::fs::write(delta_path(&path), &old_segments).unwrap();
        let opened = MapFile::open(&path, records).unwrap();
        assert!(opened.complete);
        assert_eq!(saved(&opened.file), Some(again));
        assert_eq!(std::fs::metadata(delta_path(&path)).unwrap().len(), 0);
        assert_same_positions(&opened.file, &reference, 50, version + 1);
    }

    #[test]
    fn a_torn_or_cut_off_segment_is_dropped_and_the_next_appended_in_its_place() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("map");
        let mut file = MapFile::open(&path, 0).unwrap().file;
        let mut reference = MemMapStore::new();
        let mut version = 0u64;
        let mut write = |file: &mut MapFile, reference: &mut MemMapStore, n: u64| {
            for _ in 0..n {
                version += 1;
                write_at(file, reference, (version % 40) as u16, version);
            }
        };
        write(&mut file, &mut reference, 80);
        file.save_index().unwrap();
        write(&mut file, &mut reference, 5);
        file.save_index().unwrap();
        let first = saved(&file).unwrap();
        write(&mut file, &mut reference, 5);
        file.save_index().unwrap();
        let records = file.records().unwrap();
        drop(file);

        // A segment that names another whole index (intact otherwise) is not used.
        let delta = delta_path(&path);
        let intact = std::fs::read(&delta).unwrap();
        let mut other = intact.clone();
        other[8] ^= 1;
        let body = DELTA_HEADER_BYTES + 5 * SLOT_BYTES;
        let sum = blake3::hash(&other[..body]);
        other[body..body + 32].copy_from_slice(sum.as_bytes());
        std::fs::write(&delta, &other).unwrap();
        let opened = MapFile::open(&path, records).unwrap();
        assert!(opened.complete);
        assert_eq!(saved(&opened.file).unwrap().segment_positions, 0);
        assert_same_positions(&opened.file, &reference, 40, 100);
        drop(opened);
        std::fs::write(&delta, &intact).unwrap();

        // A crash tore the second segment: the open keeps the first, reads the records after
        // it, and cuts the segment file back so the next save follows the first.
        let len = std::fs::metadata(&delta).unwrap().len();
        truncate_if_longer(&delta, len - 7).unwrap();
        let mut file = MapFile::open(&path, records).unwrap().file;
        assert_eq!(saved(&file), Some(first));
        assert_eq!(std::fs::metadata(&delta).unwrap().len(), first.delta_bytes);
        assert_same_positions(&file, &reference, 40, 100);
        write(&mut file, &mut reference, 5);
        file.save_index().unwrap();
        let next = saved(&file).unwrap();
        assert_eq!(next.segment_positions, first.segment_positions + 10);
        let records = file.records().unwrap();
        drop(file);
        let opened = MapFile::open(&path, records).unwrap();
        assert_eq!(saved(&opened.file), Some(next));
        assert_same_positions(&opened.file, &reference, 40, 100);
        drop(opened);

        // Keeping fewer records than the last segment covers drops that segment (those
        // records are cut off) but keeps the whole index and the first.
        let opened = MapFile::open(&path, first.covers + 2).unwrap();
        assert!(opened.complete);
        assert_eq!(saved(&opened.file), Some(first));
        assert_eq!(std::fs::metadata(&delta).unwrap().len(), first.delta_bytes);
        assert_eq!(opened.file.records().unwrap(), first.covers + 2);
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
        // One lock for many positions answers as the positions one at a time do: on and off
        // the paths, at old versions (read back from records, written or staged) and new.
        let file = on_file.store();
        let positions: Vec<(u16, Digest)> = (0..200u64)
            .flat_map(|k| {
                (0..12u16).map(move |depth| (depth, wasteledger_core::map::prefix_of(&d(k), depth)))
            })
            .collect();
        for version in [0, 1, 57, 150, 299, 300, 301] {
            let mut batched = Vec::new();
            file.get_many(&positions, version, &mut batched);
            let single: Vec<_> = positions
                .iter()
                .map(|(depth, prefix)| file.get(*depth, prefix, version))
                .collect();
            assert_eq!(batched, single, "version {version}");
            assert!(batched.iter().any(Option::is_some) || version == 0);
            assert!(batched.iter().any(Option::is_none));
        }
    }
}

//! The snapshot file format: writing it durably, reading it record by record, and producing
//! the bytes a peer receives.
//!
//! Layout (all integers big-endian):
//! `"WLSNAP02"` ‖ u32 meta length ‖ meta (`types::encode` of the openraft snapshot meta) ‖
//! u64 `omitted_below` ‖ records (u32 key length ‖ key ‖ u32 value length ‖ value)* ‖
//! u32 0xFFFFFFFF ‖ blake3 of every preceding byte (32).
//!
//! A *complete* snapshot (`omitted_below` = 0) holds the whole state; it is what travels to a
//! peer and what an install accepts. A snapshot a node builds of its own state omits the
//! settled history below its ledger size (entries, complete Merkle subtrees, the event, party
//! and waste-code indexes, each manifest's revisions: see [`SettledHistory`]): those records
//! never change once written, so the node's own store already holds them, and copying
//! gigabytes of history into every snapshot is what used to slow the ledger for tens of
//! seconds at each one. When such a snapshot is sent, the settled
//! records are read from the store as the stream is produced ([`wire_chunks`]), so the peer
//! still receives a complete snapshot with its own checksum.
//!
//! Files written before this split (`"WLSNAP01"`, no `omitted_below` field) are complete
//! snapshots and are still read.
//!
//! A *layer* holds only what changed since the snapshot file it names (its *previous*), so a
//! node's snapshot can be a chain: a whole file (the *base*) and up to `MAX_LAYERS` layers
//! on it. Rewriting the whole file at every snapshot cost a pass over every changing record
//! (each manifest's state, the status index: ~115 bytes per event, read, hashed and written
//! again on every node), which grew with history; a layer costs what changed since the last
//! snapshot. Layout: `"WLSNAPL1"` ‖ u32 meta length ‖ meta ‖ u64 `omitted_below` ‖ u16 name
//! length ‖ the previous file's name (in the same directory) ‖ the previous file's checksum
//! (its last 32 bytes) ‖ changes (u32 key length ‖ key ‖ u32 value length ‖ value, or u32
//! 0xFFFFFFFF for a key deleted since)* ‖ u32 0xFFFFFFFF ‖ blake3 of every preceding byte
//! (32). A `Chain` reads the records of the snapshot a layer stands for; a layer is never
//! sent or installed as it is. Changes are written in strictly increasing key order, so a
//! new layer can take in the newest layers below it by a streaming merge (`layers_to_fold`
//! picks them: those no larger than it, as in a binary counter).

use std::fs::File;
use std::io::{self, Read, Write};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use openraft::alias::SnapshotMetaOf;
use tokio::sync::mpsc;
use wasteledger_store::hashed_io::{HashedReader, HashedWriter};
use wasteledger_store::state::SettledHistory;

use crate::state_machine::StoreMark;
use crate::types::{SnapshotFile, TypeConfig, decode, encode};

const MAGIC_V1: &[u8; 8] = b"WLSNAP01";
const MAGIC: &[u8; 8] = b"WLSNAP02";
const MAGIC_LAYER: &[u8; 8] = b"WLSNAPL1";
const END_OF_RECORDS: u32 = u32::MAX;
/// In a layer, the value length of a key deleted since the previous file.
const DELETED: u32 = u32::MAX;
/// Most layers on one base: each adds a file to open and a set of keys to hold while the chain
/// is read ([`ChainRecords`]), so the next build past this many writes a whole file.
pub(crate) const MAX_LAYERS: usize = 8;
/// Longest previous-file name a layer may hold (a file name, not a path).
const MAX_NAME_BYTES: usize = 255;
/// Largest encoded snapshot meta accepted (it holds the membership).
const MAX_META_BYTES: usize = 1 << 20;
/// Largest key or value accepted: far above any record the store writes (a manifest state
/// with its whole history is kilobytes), low enough that a damaged length cannot make the
/// reader allocate gigabytes.
const MAX_RECORD_PART_BYTES: u32 = 64 << 20;

/// One key/value record of a snapshot.
pub type Record = (Vec<u8>, Vec<u8>);

/// One record of a layer: a key and its value, or `None` if it was deleted since the previous
/// file.
pub type Change = (Vec<u8>, Option<Vec<u8>>);

/// The file a layer changes: its name in the same directory, and its checksum (its last 32
/// bytes), so a chain cannot silently pick up another file of that name.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Previous {
    name: String,
    checksum: [u8; 32],
}

fn invalid(origin: &str, message: impl std::fmt::Display) -> io::Error {
    io::Error::new(
        io::ErrorKind::InvalidData,
        format!("snapshot {origin}: {message}"),
    )
}

/// What precedes a snapshot's records.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SnapshotHeader {
    /// The openraft snapshot meta.
    pub meta: SnapshotMetaOf<TypeConfig>,
    /// 0 for a complete snapshot; otherwise the ledger size below which the settled history
    /// is left out (it is in the store of the node that built the file).
    pub omitted_below: u64,
}

/// Where the settled history left out of a snapshot file is read from when it is sent, and
/// the install count that makes reading it valid.
#[derive(Clone)]
pub struct SettledPart {
    /// The store's settled records.
    pub history: SettledHistory,
    /// The ledger size the snapshot was taken at.
    pub below: u64,
    /// The store when the snapshot was built: its history is valid only while it is current.
    pub store: StoreMark,
    /// Set when reading the snapshot's own files failed as it was sent (a file damaged since
    /// it was written), so that the next build writes a whole file from the store instead of
    /// a layer on them.
    pub unreadable: Arc<AtomicBool>,
}

impl std::fmt::Debug for SettledPart {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SettledPart")
            .field("below", &self.below)
            .field("store", &self.store)
            .finish_non_exhaustive()
    }
}

impl SettledPart {
    /// Marks the snapshot's files unreadable after `error` reading them, unless a file was
    /// missing: a newer snapshot may have replaced them since this one was handed out, and a
    /// build finds a file truly lost on its own when it opens the chain.
    fn mark_unreadable(&self, error: &io::Error) {
        if error.kind() != io::ErrorKind::NotFound {
            self.unreadable.store(true, Ordering::Release);
        }
    }

    /// An error unless the store is still the one the snapshot was built from.
    fn check_store(&self) -> io::Result<()> {
        if self.store.current() {
            Ok(())
        } else {
            Err(io::Error::other(
                "an installed snapshot replaced the store this snapshot's history is read from; \
                 a newer snapshot will be sent",
            ))
        }
    }
}

/// Writes snapshot bytes to `W`, hashing them in large chunks ([`HashedWriter`]).
struct Encoder<W: Write> {
    out: HashedWriter<W>,
}

impl<W: Write> Encoder<W> {
    /// Starts a whole snapshot, or with `previous` a layer on that file.
    fn new(out: W, header: &SnapshotHeader, previous: Option<&Previous>) -> io::Result<Encoder<W>> {
        let mut encoder = Encoder {
            out: HashedWriter::new(out),
        };
        let meta = encode(&header.meta).map_err(io::Error::other)?;
        encoder.put(if previous.is_some() {
            MAGIC_LAYER
        } else {
            MAGIC
        })?;
        encoder.put(&(meta.len() as u32).to_be_bytes())?;
        encoder.put(&meta)?;
        encoder.put(&header.omitted_below.to_be_bytes())?;
        if let Some(previous) = previous {
            encoder.put(&(previous.name.len() as u16).to_be_bytes())?;
            encoder.put(previous.name.as_bytes())?;
            encoder.put(&previous.checksum)?;
        }
        Ok(encoder)
    }

    fn put(&mut self, bytes: &[u8]) -> io::Result<()> {
        self.out.write_all(bytes)
    }

    /// Writes `records`; returns how many and their key + value bytes.
    fn records<E: std::fmt::Display>(
        &mut self,
        records: impl Iterator<Item = Result<Record, E>>,
    ) -> io::Result<(u64, u64)> {
        let (mut count, mut bytes) = (0u64, 0u64);
        for record in records {
            let (k, v) = record.map_err(|e| io::Error::other(e.to_string()))?;
            bytes += self.put_record(&k, Some(&v))?;
            count += 1;
        }
        Ok((count, bytes))
    }

    /// Writes a layer's `changes`, which must come in strictly increasing key order (layers
    /// are merged by key, [`MergedChanges`]); returns how many and their key + value bytes.
    fn changes(
        &mut self,
        changes: impl Iterator<Item = io::Result<Change>>,
    ) -> io::Result<(u64, u64)> {
        let (mut count, mut bytes) = (0u64, 0u64);
        let mut last: Option<Vec<u8>> = None;
        for change in changes {
            let (k, v) = change?;
            if last.as_ref().is_some_and(|last| k <= *last) {
                return Err(io::Error::other(
                    "a layer's changes must come in strictly increasing key order",
                ));
            }
            bytes += self.put_record(&k, v.as_deref())?;
            count += 1;
            last = Some(k);
        }
        Ok((count, bytes))
    }

    /// Writes key `k` with value `v` (`None`: deleted, in a layer); returns their bytes.
    fn put_record(&mut self, k: &[u8], v: Option<&[u8]>) -> io::Result<u64> {
        self.put(&(k.len() as u32).to_be_bytes())?;
        self.put(k)?;
        match v {
            Some(v) => {
                self.put(&(v.len() as u32).to_be_bytes())?;
                self.put(v)?;
            }
            None => self.put(&DELETED.to_be_bytes())?,
        }
        Ok((k.len() + v.map_or(0, <[u8]>::len)) as u64)
    }

    /// Writes the end marker and checksum; returns the writer.
    fn finish(mut self) -> io::Result<W> {
        self.put(&END_OF_RECORDS.to_be_bytes())?;
        let (mut out, sum) = self.out.finish()?;
        out.write_all(sum.as_bytes())?;
        Ok(out)
    }
}

/// A snapshot file being written: records are added in as many runs as the caller needs,
/// then [`SnapshotWriter::finish`] makes it durable: fsync, rename, fsync of the directory.
pub(crate) struct SnapshotWriter {
    tmp: PathBuf,
    path: PathBuf,
    encoder: Encoder<File>,
}

impl SnapshotWriter {
    /// Starts `snapshot-<term>-<index>.snap` in `dir` (as a `.partial` file until finished).
    pub(crate) fn create(dir: &Path, header: &SnapshotHeader) -> io::Result<SnapshotWriter> {
        SnapshotWriter::start(dir, header, None)
    }

    /// Starts a layer on the snapshot file `previous` (in `dir`), named as
    /// [`SnapshotWriter::create`] names files; write it with [`SnapshotWriter::changes`].
    pub(crate) fn create_layer(
        dir: &Path,
        header: &SnapshotHeader,
        previous: &Path,
    ) -> io::Result<SnapshotWriter> {
        let name = previous
            .file_name()
            .and_then(|n| n.to_str())
            .filter(|n| n.len() <= MAX_NAME_BYTES)
            .ok_or_else(|| invalid(&previous.display().to_string(), "unusable file name"))?;
        if previous.parent() != Some(dir) || name == file_name(&header.meta) {
            return Err(invalid(
                &previous.display().to_string(),
                "a layer must change another file of the same directory",
            ));
        }
        let previous = Previous {
            name: name.to_owned(),
            checksum: checksum(&mut File::open(previous)?)?,
        };
        SnapshotWriter::start(dir, header, Some(&previous))
    }

    fn start(
        dir: &Path,
        header: &SnapshotHeader,
        previous: Option<&Previous>,
    ) -> io::Result<SnapshotWriter> {
        let path = dir.join(file_name(&header.meta));
        let tmp = path.with_extension("partial");
        Ok(SnapshotWriter {
            encoder: Encoder::new(File::create(&tmp)?, header, previous)?,
            tmp,
            path,
        })
    }

    /// Writes `records`; returns how many and their key + value bytes (for the build log).
    pub(crate) fn records<E: std::fmt::Display>(
        &mut self,
        records: impl Iterator<Item = Result<Record, E>>,
    ) -> io::Result<(u64, u64)> {
        self.encoder.records(records)
    }

    /// Writes a layer's changes, in strictly increasing key order; returns how many and
    /// their key + value bytes.
    pub(crate) fn changes(
        &mut self,
        changes: impl Iterator<Item = io::Result<Change>>,
    ) -> io::Result<(u64, u64)> {
        self.encoder.changes(changes)
    }

    /// Ends the file and makes it durable under its final name.
    pub(crate) fn finish(self) -> io::Result<PathBuf> {
        let file = self.encoder.finish()?;
        file.sync_all()?;
        wasteledger_store::rename_durably(&self.tmp, &self.path)?;
        Ok(self.path)
    }
}

/// The file name of the snapshot with `meta`.
pub(crate) fn file_name(meta: &SnapshotMetaOf<TypeConfig>) -> String {
    match &meta.last_log_id {
        Some(id) => format!("snapshot-{}-{}.snap", id.leader_id.term, id.index),
        None => "snapshot-empty.snap".to_owned(),
    }
}

/// A snapshot read record by record; the checksum is checked when the end marker is reached,
/// so a caller must read to the end (`None`) before trusting what it read.
pub(crate) struct SnapshotReader<R: Read> {
    input: HashedReader<R>,
    header: SnapshotHeader,
    /// For a layer, the file it changes.
    previous: Option<Previous>,
    origin: String,
    done: bool,
}

impl SnapshotReader<File> {
    /// Opens the snapshot file at `path` and reads its header.
    pub(crate) fn open(path: &Path) -> io::Result<Self> {
        SnapshotReader::new(File::open(path)?, path.display().to_string())
    }
}

impl<R: Read> SnapshotReader<R> {
    fn new(input: R, origin: String) -> io::Result<Self> {
        let mut reader = SnapshotReader {
            input: HashedReader::new(input),
            header: SnapshotHeader {
                meta: Default::default(),
                omitted_below: 0,
            },
            previous: None,
            origin,
            done: false,
        };
        let mut magic = [0u8; 8];
        reader.read_hashed(&mut magic)?;
        if ![MAGIC, MAGIC_V1, MAGIC_LAYER].contains(&&magic) {
            return Err(invalid(&reader.origin, "not a WasteLedger snapshot file"));
        }
        let meta_len = reader.read_u32()? as usize;
        if meta_len > MAX_META_BYTES {
            return Err(invalid(&reader.origin, "meta too large"));
        }
        let mut meta = vec![0u8; meta_len];
        reader.read_hashed(&mut meta)?;
        reader.header.meta = decode(&meta).map_err(|e| invalid(&reader.origin, e))?;
        if &magic != MAGIC_V1 {
            let mut below = [0u8; 8];
            reader.read_hashed(&mut below)?;
            reader.header.omitted_below = u64::from_be_bytes(below);
        }
        if &magic == MAGIC_LAYER {
            let mut len = [0u8; 2];
            reader.read_hashed(&mut len)?;
            let len = u16::from_be_bytes(len) as usize;
            if len == 0 || len > MAX_NAME_BYTES {
                return Err(invalid(&reader.origin, "bad previous file name length"));
            }
            let mut name = vec![0u8; len];
            reader.read_hashed(&mut name)?;
            let name = String::from_utf8(name)
                .ok()
                .filter(|n| !n.contains(['/', '\\']) && n.ends_with(".snap"))
                .ok_or_else(|| invalid(&reader.origin, "bad previous file name"))?;
            let mut checksum = [0u8; 32];
            reader.read_hashed(&mut checksum)?;
            reader.previous = Some(Previous { name, checksum });
        }
        Ok(reader)
    }

    fn read_hashed(&mut self, buf: &mut [u8]) -> io::Result<()> {
        self.input.read_exact(buf).map_err(|e| match e.kind() {
            io::ErrorKind::UnexpectedEof => invalid(&self.origin, "truncated"),
            _ => e,
        })
    }

    fn read_u32(&mut self) -> io::Result<u32> {
        let mut b = [0u8; 4];
        self.read_hashed(&mut b)?;
        Ok(u32::from_be_bytes(b))
    }

    fn read_part(&mut self, len: u32) -> io::Result<Vec<u8>> {
        if len > MAX_RECORD_PART_BYTES {
            return Err(invalid(
                &self.origin,
                format!("record length {len} exceeds {MAX_RECORD_PART_BYTES}"),
            ));
        }
        let mut part = vec![0u8; len as usize];
        self.read_hashed(&mut part)?;
        Ok(part)
    }

    /// The next change of a layer, or record of a whole file (never a deletion), or `None`
    /// after the end marker and a matching checksum.
    fn next_change(&mut self) -> io::Result<Option<Change>> {
        if self.done {
            return Ok(None);
        }
        let key_len = self.read_u32()?;
        if key_len == END_OF_RECORDS {
            self.done = true;
            let expected = self.input.hash();
            let mut sum = [0u8; 32];
            self.input
                .read_trailer(&mut sum)
                .map_err(|_| invalid(&self.origin, "truncated checksum"))?;
            if &sum != expected.as_bytes() {
                return Err(invalid(&self.origin, "checksum mismatch"));
            }
            if !self.input.at_end()? {
                return Err(invalid(&self.origin, "trailing bytes"));
            }
            return Ok(None);
        }
        let key = self.read_part(key_len)?;
        let value_len = self.read_u32()?;
        if value_len == DELETED && self.previous.is_some() {
            return Ok(Some((key, None)));
        }
        let value = self.read_part(value_len)?;
        Ok(Some((key, Some(value))))
    }

    /// [`SnapshotReader::next_change`], ending after the first error.
    fn next_or_end(&mut self) -> Option<io::Result<Change>> {
        match self.next_change() {
            Ok(change) => change.map(Ok),
            Err(e) => {
                self.done = true;
                Some(Err(e))
            }
        }
    }
}

/// The records of a whole snapshot file. A layer's records are only what changed: read it
/// through a [`Chain`], which refuses to iterate one this way.
impl<R: Read> Iterator for SnapshotReader<R> {
    type Item = io::Result<Record>;

    /// Ends after the checksum is checked, or after the first error.
    fn next(&mut self) -> Option<io::Result<Record>> {
        if self.previous.is_some() && !self.done {
            self.done = true;
            return Some(Err(invalid(
                &self.origin,
                "is a layer; read it with the files it changes",
            )));
        }
        Some(match self.next_or_end()? {
            Ok((k, Some(v))) => Ok((k, v)),
            Ok((_, None)) => Err(invalid(&self.origin, "a deletion in a whole snapshot")),
            Err(e) => Err(e),
        })
    }
}

/// The checksum a snapshot file ends with (its last 32 bytes); leaves `file` positioned at
/// its end.
fn checksum(file: &mut File) -> io::Result<[u8; 32]> {
    use std::io::{Seek, SeekFrom};
    let mut sum = [0u8; 32];
    file.seek(SeekFrom::End(-(sum.len() as i64)))?;
    file.read_exact(&mut sum)?;
    Ok(sum)
}

/// A node's snapshot as the files it is made of, newest first: the file named, and for a
/// layer the files below it down to a whole file. Every file is opened (and each layer's
/// previous file checked against the checksum it names) when the chain is opened, so a build
/// that removes them meanwhile cannot cut a read short.
pub(crate) struct Chain {
    /// Newest first; only the last is a whole file.
    files: Vec<ChainFile>,
}

struct ChainFile {
    path: PathBuf,
    bytes: u64,
    reader: SnapshotReader<File>,
}

impl Chain {
    /// Opens the snapshot file at `path` and the files it layers on.
    pub(crate) fn open(path: &Path) -> io::Result<Chain> {
        let dir = path.parent().unwrap_or(Path::new("."));
        let mut files = vec![ChainFile::open(path, None)?];
        // Bounded: a chain longer than MAX_LAYERS is refused.
        while let Some(previous) = files.last().and_then(|f| f.reader.previous.clone()) {
            if files.len() > MAX_LAYERS {
                return Err(invalid(
                    &path.display().to_string(),
                    format!("more than {MAX_LAYERS} layers"),
                ));
            }
            let file = ChainFile::open(&dir.join(&previous.name), Some(&previous.checksum))?;
            files.push(file);
        }
        // A whole file a layer builds on must leave out the history the newest one leaves out
        // (it was built by this node): a complete one would send that history twice.
        if let [newest, .., base] = files.as_slice()
            && base.reader.header.omitted_below == 0
            && newest.reader.header.omitted_below != 0
        {
            return Err(invalid(
                &base.path.display().to_string(),
                "a complete snapshot cannot be the base of a layer",
            ));
        }
        Ok(Chain { files })
    }

    /// The newest file's header: the snapshot's.
    pub(crate) fn header(&self) -> &SnapshotHeader {
        &self.files[0].reader.header
    }

    /// The files, newest first.
    #[cfg(test)]
    pub(crate) fn paths(&self) -> impl Iterator<Item = &Path> {
        self.files.iter().map(|f| f.path.as_path())
    }

    /// How many layers lie on the whole file.
    pub(crate) fn layers(&self) -> usize {
        self.files.len() - 1
    }

    /// Bytes of the whole file, and of the layers on it.
    pub(crate) fn sizes(&self) -> (u64, u64) {
        let base = self.files.last().map_or(0, |f| f.bytes);
        (base, self.layer_sizes().iter().sum())
    }

    /// Bytes of each layer, newest first.
    pub(crate) fn layer_sizes(&self) -> Vec<u64> {
        self.files.split_last().map_or(Vec::new(), |(_, layers)| {
            layers.iter().map(|f| f.bytes).collect()
        })
    }

    /// Folds the newest `count` layers (at most all of them) under `newer`, changes newer
    /// than every file of the chain in strictly increasing key order: returns the file the
    /// folded changes lie on (a new layer on it stands for the same snapshot as a layer of
    /// `newer` on this chain's newest file), the chain's files from that one down, and the
    /// folded changes, in key order, a key's newest change winning, deletions kept (the
    /// files below may hold the key).
    pub(crate) fn fold_newest<'a>(
        self,
        count: usize,
        newer: impl Iterator<Item = Change> + 'a,
    ) -> io::Result<(PathBuf, Vec<PathBuf>, MergedChanges<'a>)> {
        let count = count.min(self.layers());
        let mut files = self.files;
        let below = files.split_off(count);
        let onto = below
            .first()
            .map(|f| f.path.clone())
            .ok_or_else(|| io::Error::other("a chain holds at least its whole file"))?;
        let kept = below.into_iter().map(|f| f.path).collect();
        let mut sources = vec![MergeSource::new(
            "the changes since the newest file".to_owned(),
            Box::new(newer.map(Ok)),
        )?];
        for file in files {
            let origin = file.path.display().to_string();
            let mut reader = file.reader;
            sources.push(MergeSource::new(
                origin,
                Box::new(std::iter::from_fn(move || reader.next_or_end())),
            )?);
        }
        Ok((onto, kept, MergedChanges { sources }))
    }

    /// Every record of the snapshot, each key once, in no particular order.
    pub(crate) fn records(self) -> ChainRecords {
        ChainRecords {
            files: self.files.into_iter().map(|f| f.reader).collect(),
            seen: std::collections::HashSet::new(),
        }
    }
}

impl ChainFile {
    fn open(path: &Path, expected_checksum: Option<&[u8; 32]>) -> io::Result<ChainFile> {
        let origin = path.display().to_string();
        let mut file = File::open(path)?;
        let bytes = file.metadata()?.len();
        if let Some(expected) = expected_checksum {
            if &checksum(&mut file)? != expected {
                return Err(invalid(
                    &origin,
                    "is not the file the layer above it changes",
                ));
            }
            use std::io::Seek;
            file.rewind()?;
        }
        Ok(ChainFile {
            path: path.to_owned(),
            bytes,
            reader: SnapshotReader::new(file, origin)?,
        })
    }
}

/// The records of a [`Chain`]: the newest file's, then each older file's records whose key no
/// newer file holds, changed or deleted. Holds the keys of the layers read so far (not of the
/// whole file), which [`MAX_LAYERS`] and the build's rule (layers stay smaller than their
/// base) bound.
pub(crate) struct ChainRecords {
    files: std::collections::VecDeque<SnapshotReader<File>>,
    seen: std::collections::HashSet<Vec<u8>>,
}

impl Iterator for ChainRecords {
    type Item = io::Result<Record>;

    fn next(&mut self) -> Option<io::Result<Record>> {
        // Bounded: each turn reads one record of a finite file or drops a finished file.
        loop {
            let file = self.files.front_mut()?;
            let is_base = file.previous.is_none();
            let (key, value) = match file.next_or_end() {
                None => {
                    self.files.pop_front();
                    continue;
                }
                Some(Err(e)) => {
                    self.files.clear();
                    return Some(Err(e));
                }
                Some(Ok(change)) => change,
            };
            if is_base {
                if self.seen.contains(&key) {
                    continue;
                }
            } else if !self.seen.insert(key.clone()) {
                continue;
            }
            if let Some(value) = value {
                return Some(Ok((key, value)));
            }
        }
    }
}

/// How many of a chain's newest layers (`layer_sizes`, bytes, newest first) a new layer of
/// about `estimate` bytes should take in ([`Chain::fold_newest`]).
///
/// A layer takes in the layer below it while that one holds no more than it does so far, and
/// always enough of them to keep the chain within [`MAX_LAYERS`]: a binary counter, so layer
/// sizes at least double from the newest down and a change is rewritten at most about
/// log2(builds) times before the layers add up to their whole file and the next build
/// rewrites that. With a plain bound on the number of layers, every few builds rewrote the
/// whole file, whose size grows with history. (Folding a layer twice the size, tried first,
/// rewrote more; folding only when the bound forces it makes the newest layer grow by every
/// build once the bound is reached, i.e. quadratic rewriting.)
pub(crate) fn layers_to_fold(layer_sizes: &[u64], estimate: u64) -> usize {
    let mut folded = 0;
    let mut bytes = estimate;
    while let Some(&next) = layer_sizes.get(folded) {
        let too_many = layer_sizes.len() - folded + 1 > MAX_LAYERS;
        if next > bytes && !too_many {
            break;
        }
        bytes = bytes.saturating_add(next);
        folded += 1;
    }
    folded
}

/// One input of [`MergedChanges`], with its next change read ahead.
struct MergeSource<'a> {
    origin: String,
    changes: Box<dyn Iterator<Item = io::Result<Change>> + 'a>,
    head: Option<Change>,
}

impl<'a> MergeSource<'a> {
    fn new(
        origin: String,
        changes: Box<dyn Iterator<Item = io::Result<Change>> + 'a>,
    ) -> io::Result<MergeSource<'a>> {
        let mut source = MergeSource {
            origin,
            changes,
            head: None,
        };
        source.advance()?;
        Ok(source)
    }

    /// Returns the change read ahead and reads the next, which must have a greater key.
    fn advance(&mut self) -> io::Result<Option<Change>> {
        let next = self.changes.next().transpose()?;
        if let (Some((before, _)), Some((after, _))) = (&self.head, &next)
            && after <= before
        {
            return Err(invalid(&self.origin, "changes out of key order"));
        }
        Ok(std::mem::replace(&mut self.head, next))
    }
}

/// Changes from several sources in strictly increasing key order merged into one stream in
/// key order, each key once, from the newest source that holds it ([`Chain::fold_newest`]).
/// Streams: it holds one change per source, whatever the layers' size.
pub(crate) struct MergedChanges<'a> {
    /// Newest first.
    sources: Vec<MergeSource<'a>>,
}

impl Iterator for MergedChanges<'_> {
    type Item = io::Result<Change>;

    fn next(&mut self) -> Option<io::Result<Change>> {
        let key = self
            .sources
            .iter()
            .filter_map(|s| s.head.as_ref().map(|(k, _)| k))
            .min()?
            .clone();
        let mut newest = None;
        for source in &mut self.sources {
            if source.head.as_ref().is_some_and(|(k, _)| *k == key) {
                match source.advance() {
                    Ok(change) => newest = newest.or(change),
                    Err(e) => {
                        // Ends the stream: every source is dropped.
                        self.sources.clear();
                        return Some(Err(e));
                    }
                }
            }
        }
        newest.map(Ok)
    }
}

/// Reads the header of the snapshot file at `path` (the records are not checked).
pub fn read_header(path: &Path) -> io::Result<SnapshotHeader> {
    SnapshotReader::open(path).map(|r| r.header)
}

/// Opens a complete snapshot file for an install: reads it through once to check its
/// checksum, so a damaged file is refused before the store is touched, and returns its header
/// and a reader of its records for the import. Nothing is held in memory but the record at
/// hand (the file is read twice instead; a snapshot can be larger than memory).
pub(crate) fn open_complete(path: &Path) -> io::Result<(SnapshotHeader, SnapshotReader<File>)> {
    let mut check = SnapshotReader::open(path)?;
    if check.previous.is_some() {
        return Err(invalid(
            &check.origin,
            "is a layer of another snapshot; only a complete snapshot can be installed",
        ));
    }
    if check.header.omitted_below != 0 {
        return Err(invalid(
            &check.origin,
            format!(
                "leaves out the history below ledger size {}; only a complete snapshot can be \
                 installed",
                check.header.omitted_below
            ),
        ));
    }
    for record in check.by_ref() {
        record?;
    }
    let records = SnapshotReader::open(path)?;
    Ok((records.header.clone(), records))
}

/// One message of [`wire_chunks`]: the next bytes, or `None` once every byte was sent.
pub type WireChunk = io::Result<Option<Vec<u8>>>;

/// Sends what is written through it as chunks of `size` bytes.
struct ChunkSink {
    tx: mpsc::Sender<WireChunk>,
    buf: Vec<u8>,
    size: usize,
}

impl ChunkSink {
    fn send(&mut self) -> io::Result<()> {
        let chunk = std::mem::replace(&mut self.buf, Vec::with_capacity(self.size));
        self.tx
            .blocking_send(Ok(Some(chunk)))
            .map_err(|_| io::Error::new(io::ErrorKind::BrokenPipe, "snapshot transfer stopped"))
    }
}

impl Write for ChunkSink {
    fn write(&mut self, mut bytes: &[u8]) -> io::Result<usize> {
        let written = bytes.len();
        while !bytes.is_empty() {
            let room = self.size - self.buf.len();
            let (now, rest) = bytes.split_at(room.min(bytes.len()));
            self.buf.extend_from_slice(now);
            bytes = rest;
            if self.buf.len() == self.size {
                self.send()?;
            }
        }
        Ok(written)
    }

    /// Sends a short last chunk.
    fn flush(&mut self) -> io::Result<()> {
        if self.buf.is_empty() {
            Ok(())
        } else {
            self.send()
        }
    }
}

/// The bytes a peer receives for `snapshot`, in chunks of at most `chunk_size` bytes, produced
/// on a blocking thread: a complete snapshot file is sent as it is; one built here is sent
/// with its settled history read from the store, as a complete snapshot with its own checksum.
/// The last message is `Ok(None)`; an error is the last message otherwise (and a channel that
/// closes without `Ok(None)` means the producer died: never a complete transfer).
pub fn wire_chunks(snapshot: SnapshotFile, chunk_size: usize) -> mpsc::Receiver<WireChunk> {
    let (tx, rx) = mpsc::channel(2);
    let chunk_size = chunk_size.max(1);
    tokio::task::spawn_blocking(move || {
        let mut sink = ChunkSink {
            tx: tx.clone(),
            buf: Vec::with_capacity(chunk_size),
            size: chunk_size,
        };
        let sent = write_wire(&snapshot, &mut sink).and_then(|()| sink.flush());
        // Nobody to tell if the transfer was dropped.
        let _ = tx.blocking_send(sent.map(|()| None));
    });
    rx
}

fn write_wire(snapshot: &SnapshotFile, sink: &mut ChunkSink) -> io::Result<()> {
    let Some(settled) = &snapshot.settled else {
        io::copy(&mut File::open(&snapshot.path)?, sink)?;
        return Ok(());
    };
    settled.check_store()?;
    let own = Chain::open(&snapshot.path).inspect_err(|e| settled.mark_unreadable(e))?;
    if own.header().omitted_below != settled.below {
        return Err(invalid(
            &snapshot.path.display().to_string(),
            format!(
                "leaves out history below {}, expected {}",
                own.header().omitted_below,
                settled.below
            ),
        ));
    }
    let header = SnapshotHeader {
        meta: own.header().meta.clone(),
        omitted_below: 0,
    };
    let mut encoder = Encoder::new(&mut *sink, &header, None)?;
    let own = own.records().inspect(|r| {
        if let Err(e) = r {
            settled.mark_unreadable(e);
        }
    });
    encoder.records(own)?;
    encoder.records(settled.history.records(settled.below))?;
    // Checked after the history was read: an install in between may have cleared it.
    settled.check_store()?;
    encoder.finish()?;
    Ok(())
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]

    use std::fs;
    use std::sync::atomic::AtomicU64;

    use super::*;

    fn header(omitted_below: u64) -> SnapshotHeader {
        SnapshotHeader {
            meta: SnapshotMetaOf::<TypeConfig> {
                last_log_id: Some(openraft::testing::log_id::<TypeConfig>(3, 1, 42)),
                ..Default::default()
            },
            omitted_below,
        }
    }

    fn records(n: u8) -> Vec<Record> {
        (0..n)
            .map(|i| (vec![b'k', i], vec![i; i as usize]))
            .collect()
    }

    fn write(dir: &Path, header: &SnapshotHeader, records: &[Record]) -> PathBuf {
        let mut w = SnapshotWriter::create(dir, header).unwrap();
        w.records(records.iter().cloned().map(Ok::<_, io::Error>))
            .unwrap();
        w.finish().unwrap()
    }

    /// Every record of a complete snapshot, as an install reads them.
    fn read_complete(path: &Path) -> io::Result<(SnapshotHeader, Vec<Record>)> {
        let (header, records) = open_complete(path)?;
        Ok((header, records.collect::<io::Result<Vec<_>>>()?))
    }

    #[test]
    fn a_written_snapshot_reads_back() {
        let dir = tempfile::tempdir().unwrap();
        let path = write(dir.path(), &header(0), &records(20));
        assert_eq!(path.file_name().unwrap(), "snapshot-3-42.snap");
        assert_eq!(read_header(&path).unwrap(), header(0));
        let (h, got) = read_complete(&path).unwrap();
        assert_eq!(h, header(0));
        assert_eq!(got, records(20));
    }

    #[test]
    fn damage_anywhere_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let path = write(dir.path(), &header(0), &records(5));
        let good = fs::read(&path).unwrap();
        for at in 0..good.len() {
            let mut bad = good.clone();
            bad[at] ^= 0x40;
            fs::write(&path, &bad).unwrap();
            assert!(open_complete(&path).is_err(), "flipped byte {at} accepted");
        }
        for len in 0..good.len() {
            fs::write(&path, &good[..len]).unwrap();
            assert!(
                open_complete(&path).is_err(),
                "truncation to {len} accepted"
            );
        }
        let mut longer = good.clone();
        longer.push(0);
        fs::write(&path, &longer).unwrap();
        assert!(open_complete(&path).is_err(), "trailing byte accepted");
    }

    #[test]
    fn a_snapshot_without_its_history_cannot_be_installed() {
        let dir = tempfile::tempdir().unwrap();
        let path = write(dir.path(), &header(7), &records(3));
        let Err(err) = open_complete(&path) else {
            panic!("a partial snapshot was accepted")
        };
        assert!(err.to_string().contains("below ledger size 7"), "{err}");
        assert_eq!(read_header(&path).unwrap().omitted_below, 7);
    }

    #[test]
    fn version_1_files_are_complete_snapshots() {
        // The old layout: no omitted_below field.
        let meta = encode(&header(0).meta).unwrap();
        let mut bytes = MAGIC_V1.to_vec();
        bytes.extend((meta.len() as u32).to_be_bytes());
        bytes.extend(&meta);
        bytes.extend(1u32.to_be_bytes());
        bytes.extend(b"k");
        bytes.extend(2u32.to_be_bytes());
        bytes.extend(b"vv");
        bytes.extend(END_OF_RECORDS.to_be_bytes());
        let sum = blake3::hash(&bytes);
        bytes.extend(sum.as_bytes());
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("old.snap");
        fs::write(&path, &bytes).unwrap();
        let (h, got) = read_complete(&path).unwrap();
        assert_eq!(h, header(0));
        assert_eq!(got, vec![(b"k".to_vec(), b"vv".to_vec())]);
    }

    fn header_at(index: u64, omitted_below: u64) -> SnapshotHeader {
        SnapshotHeader {
            meta: SnapshotMetaOf::<TypeConfig> {
                last_log_id: Some(openraft::testing::log_id::<TypeConfig>(3, 1, index)),
                ..Default::default()
            },
            omitted_below,
        }
    }

    fn write_layer(dir: &Path, header: &SnapshotHeader, on: &Path, changes: &[Change]) -> PathBuf {
        let mut w = SnapshotWriter::create_layer(dir, header, on).unwrap();
        w.changes(changes.iter().cloned().map(Ok)).unwrap();
        w.finish().unwrap()
    }

    fn chain_records(path: &Path) -> io::Result<Vec<Record>> {
        let mut records = Chain::open(path)?
            .records()
            .collect::<io::Result<Vec<_>>>()?;
        records.sort();
        Ok(records)
    }

    #[test]
    fn a_layer_changes_adds_and_deletes_records_of_the_file_below() {
        let dir = tempfile::tempdir().unwrap();
        let base = write(dir.path(), &header_at(10, 5), &records(6));
        let first = write_layer(
            dir.path(),
            &header_at(20, 9),
            &base,
            &[
                (b"added".to_vec(), Some(b"a".to_vec())),
                (vec![b'k', 1], Some(b"new".to_vec())),
                (vec![b'k', 2], None),
            ],
        );
        let second = write_layer(
            dir.path(),
            &header_at(30, 12),
            &first,
            &[
                (b"added".to_vec(), Some(b"b".to_vec())),
                (vec![b'k', 1], None),
                (vec![b'k', 2], Some(b"back".to_vec())),
            ],
        );
        let chain = Chain::open(&second).unwrap();
        assert_eq!(chain.header(), &header_at(30, 12));
        assert_eq!(chain.layers(), 2);
        assert_eq!(chain.paths().collect::<Vec<_>>(), [&second, &first, &base]);
        let (base_bytes, layer_bytes) = chain.sizes();
        assert_eq!(base_bytes, fs::metadata(&base).unwrap().len());
        assert_eq!(
            layer_bytes,
            fs::metadata(&first).unwrap().len() + fs::metadata(&second).unwrap().len()
        );
        let mut expected = records(6);
        expected.retain(|(k, _)| k != &[b'k', 1] && k != &[b'k', 2]);
        expected.push((b"added".to_vec(), b"b".to_vec()));
        expected.push((vec![b'k', 2], b"back".to_vec()));
        expected.sort();
        assert_eq!(chain_records(&second).unwrap(), expected);
        assert_eq!(read_header(&second).unwrap(), header_at(30, 12));

        // Read on its own, a layer is refused rather than taken for the whole snapshot.
        let mut alone = SnapshotReader::open(&second).unwrap();
        assert!(alone.next().unwrap().is_err());
        assert!(alone.next().is_none());
        let Err(err) = open_complete(&second) else {
            panic!("a layer was accepted for an install")
        };
        assert!(err.to_string().contains("is a layer"), "{err}");
    }

    #[test]
    fn a_chain_with_a_missing_replaced_or_damaged_file_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let base = write(dir.path(), &header_at(10, 5), &records(6));
        let layer = write_layer(
            dir.path(),
            &header_at(20, 9),
            &base,
            &[(vec![b'k', 1], None)],
        );
        assert!(chain_records(&layer).is_ok());
        let good = fs::read(&base).unwrap();

        // Another file under the base's name: its checksum differs.
        fs::write(
            &base,
            fs::read(write(dir.path(), &header_at(11, 5), &records(7))).unwrap(),
        )
        .unwrap();
        let Err(err) = Chain::open(&layer) else {
            panic!("a replaced base was accepted")
        };
        assert!(err.to_string().contains("is not the file"), "{err}");

        // Damage inside the base (its checksum kept) shows when the records are read.
        let mut bad = good.clone();
        bad[good.len() / 2] ^= 0x10;
        fs::write(&base, &bad).unwrap();
        assert!(chain_records(&layer).is_err());

        fs::remove_file(&base).unwrap();
        assert!(Chain::open(&layer).is_err());

        // Damage in the layer itself.
        fs::write(&base, &good).unwrap();
        let mut bad = fs::read(&layer).unwrap();
        let at = bad.len() - 40;
        bad[at] ^= 0x01;
        fs::write(&layer, &bad).unwrap();
        assert!(chain_records(&layer).is_err());
    }

    #[test]
    fn a_layer_on_a_complete_snapshot_or_on_itself_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let complete = write(dir.path(), &header_at(10, 0), &records(3));
        let layer = write_layer(dir.path(), &header_at(20, 9), &complete, &[]);
        let Err(err) = Chain::open(&layer) else {
            panic!("a layer on a complete snapshot was accepted")
        };
        assert!(err.to_string().contains("cannot be the base"), "{err}");

        let own = write(dir.path(), &header_at(30, 4), &records(3));
        assert!(SnapshotWriter::create_layer(dir.path(), &header_at(30, 4), &own).is_err());
    }

    #[test]
    fn a_chain_longer_than_the_bound_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let mut newest = write(dir.path(), &header_at(1, 1), &records(2));
        for index in 2..=(MAX_LAYERS as u64 + 1) {
            newest = write_layer(dir.path(), &header_at(index, 1), &newest, &[]);
        }
        assert_eq!(Chain::open(&newest).unwrap().layers(), MAX_LAYERS);
        let over = write_layer(dir.path(), &header_at(99, 1), &newest, &[]);
        let Err(err) = Chain::open(&over) else {
            panic!("{} layers accepted", MAX_LAYERS + 1)
        };
        assert!(err.to_string().contains("layers"), "{err}");
    }

    proptest::proptest! {
        #![proptest_config(proptest::prelude::ProptestConfig::with_cases(64))]

        /// Whatever the changes, a chain reads as the records a model map holds after applying
        /// them in order, each key once.
        #[test]
        fn a_chain_reads_as_its_changes_applied_in_order(
            base in proptest::collection::btree_map(0u8..24, proptest::collection::vec(0u8..=255, 0..6), 0..24),
            layers in proptest::collection::vec(
                proptest::collection::btree_map(
                    0u8..32,
                    proptest::option::of(proptest::collection::vec(0u8..=255, 0..6)),
                    0..12,
                ),
                0..MAX_LAYERS,
            ),
            newer in proptest::collection::btree_map(
                0u8..32,
                proptest::option::of(proptest::collection::vec(0u8..=255, 0..6)),
                0..12,
            ),
            fold in 0usize..=MAX_LAYERS,
        ) {
            let dir = tempfile::tempdir().unwrap();
            let key = |k: u8| vec![b'k', k];
            let base_records: Vec<Record> = base.iter().map(|(k, v)| (key(*k), v.clone())).collect();
            let mut newest = write(dir.path(), &header_at(1, 1), &base_records);
            let mut model: std::collections::BTreeMap<Vec<u8>, Vec<u8>> =
                base_records.into_iter().collect();
            for (changes, index) in layers.iter().zip(2u64..) {
                let changes: Vec<Change> =
                    changes.iter().map(|(k, v)| (key(*k), v.clone())).collect();
                newest = write_layer(dir.path(), &header_at(index, 1), &newest, &changes);
                for (k, v) in changes {
                    match v {
                        Some(v) => model.insert(k, v),
                        None => model.remove(&k),
                    };
                }
            }
            let expected: Vec<Record> = model.clone().into_iter().collect();
            proptest::prop_assert_eq!(chain_records(&newest).unwrap(), expected);

            // Folding the newest layers under new changes stands for the same snapshot as a
            // layer of the new changes on the newest file.
            let newer: Vec<Change> = newer.iter().map(|(k, v)| (key(*k), v.clone())).collect();
            for (k, v) in &newer {
                match v {
                    Some(v) => model.insert(k.clone(), v.clone()),
                    None => model.remove(k),
                };
            }
            let chain = Chain::open(&newest).unwrap();
            let paths: Vec<PathBuf> = chain.paths().map(Path::to_owned).collect();
            let fold = fold.min(chain.layers());
            let (onto, kept, merged) = chain.fold_newest(fold, newer.into_iter()).unwrap();
            proptest::prop_assert_eq!(&onto, &paths[fold]);
            proptest::prop_assert_eq!(&kept, &paths[fold..].to_vec());
            let index = 2 + layers.len() as u64;
            let mut w = SnapshotWriter::create_layer(dir.path(), &header_at(index, 1), &onto).unwrap();
            w.changes(merged).unwrap();
            let folded = w.finish().unwrap();
            let chain = Chain::open(&folded).unwrap();
            proptest::prop_assert_eq!(chain.layers(), paths.len() - fold);
            let expected: Vec<Record> = model.into_iter().collect();
            proptest::prop_assert_eq!(chain_records(&folded).unwrap(), expected);
        }
    }

    /// However many builds of about the same size, the chain stays within [`MAX_LAYERS`], and
    /// the bytes written (each build writes the layers it takes in again) stay within a
    /// logarithmic factor of the changes: a change is rewritten at most about log2(builds)
    /// times.
    #[test]
    fn folding_keeps_chains_short_and_rewrites_logarithmic() {
        for estimate in [1u64, 1_000, 12_000_000] {
            let mut layers: Vec<u64> = Vec::new(); // newest first
            let mut written = 0u64;
            let builds = 5_000u64;
            for _ in 0..builds {
                let fold = layers_to_fold(&layers, estimate);
                let size = estimate + layers.drain(..fold).sum::<u64>();
                written += size;
                layers.insert(0, size);
                assert!(layers.len() <= MAX_LAYERS, "{layers:?}");
                assert!(
                    layers.windows(2).all(|w| w[0] < w[1]),
                    "layer sizes must shrink towards the newest: {layers:?}"
                );
            }
            let rewrites = written as f64 / (estimate * builds) as f64;
            let log = (builds as f64).log2();
            assert!(
                rewrites <= log + 1.0,
                "{rewrites} rewrites per change, log2 = {log}"
            );
        }
        // A single small layer above a large one is not taken in; too many layers are.
        assert_eq!(layers_to_fold(&[100], 10), 0);
        assert_eq!(layers_to_fold(&[20, 100], 10), 0);
        assert_eq!(layers_to_fold(&[10, 100], 10), 1);
        assert_eq!(layers_to_fold(&[10, 20, 100], 10), 2);
        assert_eq!(layers_to_fold(&[1_000; MAX_LAYERS], 1), MAX_LAYERS);
        let geometric: Vec<u64> = (0..MAX_LAYERS as u32).map(|i| 10 * 16u64.pow(i)).collect();
        assert_eq!(layers_to_fold(&geometric, 1), 1);
        assert_eq!(layers_to_fold(&geometric[1..], 1), 0);
        assert_eq!(layers_to_fold(&[], 10), 0);
    }

    #[test]
    fn folding_refuses_layers_out_of_key_order() {
        let dir = tempfile::tempdir().unwrap();
        let base = write(dir.path(), &header_at(10, 5), &records(3));
        let mut w = SnapshotWriter::create_layer(dir.path(), &header_at(20, 5), &base).unwrap();
        let unordered = [(vec![b'k', 2], None), (vec![b'k', 1], None)];
        assert!(w.changes(unordered.into_iter().map(Ok)).is_err());

        // A layer written out of order by hand (as an older build could have) is found out
        // when it is folded, and nothing is written from it.
        let mut bytes = fs::read(write_layer(dir.path(), &header_at(20, 5), &base, &[])).unwrap();
        let end = bytes.len() - 36;
        bytes.truncate(end);
        for k in [2u8, 1] {
            bytes.extend(2u32.to_be_bytes());
            bytes.extend([b'k', k]);
            bytes.extend(DELETED.to_be_bytes());
        }
        bytes.extend(END_OF_RECORDS.to_be_bytes());
        let sum = blake3::hash(&bytes);
        bytes.extend(sum.as_bytes());
        let layer = dir.path().join(file_name(&header_at(20, 5).meta));
        fs::write(&layer, &bytes).unwrap();
        assert_eq!(Chain::open(&layer).unwrap().layers(), 1);
        let (_, _, merged) = Chain::open(&layer)
            .unwrap()
            .fold_newest(1, std::iter::empty())
            .unwrap();
        let read: Vec<io::Result<Change>> = merged.collect();
        assert!(
            read.last().unwrap().is_err(),
            "an unordered layer was folded"
        );
    }

    /// A store holding the sample network's registrations, and its settled history.
    fn settled_store(dir: &Path) -> (wasteledger_store::state::LedgerStore, u64) {
        use wasteledger_core::sample::{HOUR, SampleNetwork, T0};
        let net = SampleNetwork::new().unwrap();
        let db = wasteledger_store::DurableDb::open(dir.join("db")).unwrap();
        let mut store = wasteledger_store::state::LedgerStore::open(
            db.raw_tree("ledger").unwrap(),
            &dir.join("ledger.map"),
            net.genesis.clone(),
        )
        .unwrap();
        for event in net.registrations() {
            let _ = store.apply(&event, T0 - HOUR, &[]).unwrap();
        }
        store.commit().unwrap();
        let size = store.merkle_size();
        assert!(size > 0);
        (store, size)
    }

    #[tokio::test]
    async fn a_built_snapshot_is_sent_complete_with_its_history() {
        let dir = tempfile::tempdir().unwrap();
        let (store, size) = settled_store(dir.path());
        let own = records(4);
        let path = write(dir.path(), &header(size), &own);
        let installs = Arc::new(AtomicU64::new(2));
        let snapshot = SnapshotFile {
            path,
            settled: Some(SettledPart {
                history: store.settled_history(),
                below: size,
                store: StoreMark::new(installs.clone()),
                unreadable: Arc::new(AtomicBool::new(false)),
            }),
        };
        let sent = collect(wire_chunks(snapshot.clone(), 100)).await.unwrap();
        let received = dir.path().join("received.snap");
        fs::write(&received, &sent).unwrap();
        let (h, got) = read_complete(&received).unwrap();
        assert_eq!(h, header(0));
        let history: Vec<Record> = store
            .settled_history()
            .records(size)
            .map(Result::unwrap)
            .collect();
        assert!(!history.is_empty());
        assert_eq!(got, [own, history].concat());

        // An install since the snapshot was built: its history is gone, nothing is sent whole.
        installs.fetch_add(2, Ordering::AcqRel);
        let err = collect(wire_chunks(snapshot, 100)).await.unwrap_err();
        assert!(
            err.to_string().contains("installed snapshot replaced"),
            "{err}"
        );
    }

    async fn collect(mut rx: mpsc::Receiver<WireChunk>) -> io::Result<Vec<u8>> {
        let mut out = Vec::new();
        loop {
            match rx.recv().await {
                Some(Ok(Some(chunk))) => out.extend(chunk),
                Some(Ok(None)) => return Ok(out),
                Some(Err(e)) => return Err(e),
                None => return Err(io::Error::other("producer stopped without an end")),
            }
        }
    }

    #[tokio::test]
    async fn a_complete_file_is_sent_as_it_is() {
        let dir = tempfile::tempdir().unwrap();
        let path = write(dir.path(), &header(0), &records(50));
        for chunk in [1, 7, 64, 1 << 20] {
            let sent = collect(wire_chunks(
                SnapshotFile {
                    path: path.clone(),
                    settled: None,
                },
                chunk,
            ))
            .await
            .unwrap();
            assert_eq!(sent, fs::read(&path).unwrap());
        }
        let missing = SnapshotFile {
            path: dir.path().join("missing.snap"),
            settled: None,
        };
        assert!(collect(wire_chunks(missing, 64)).await.is_err());
    }
}

//! The ledger state machine's data: entries, Merkle nodes, folded subject states, secondary
//! indexes and node metadata in sled; completeness-map nodes in a [`MapFile`] beside it.
//!
//! Everything in sled lives in ONE tree under one-byte key prefixes, because sled batches are
//! atomic only within a tree. Applying an entry stages the leaf, the new tree nodes, the
//! subject's new state, its index keys and the caller's metadata (the Raft "last applied"), and
//! appends the new map nodes to the map file's buffer; [`LedgerStore::commit`] writes the map
//! records, then everything staged as one sled batch that also records the map file's length
//! and root, so a crash leaves the state at a committed boundary, never in between. The map
//! file is derived from the entries: [`LedgerStore::open`] cuts it back to the committed length,
//! or rebuilds it from the entries if it lost records (see [`crate::map_file`]).
//!
//! | prefix | key | value |
//! |---|---|---|
//! | `E` | index (u64 BE) | leaf bytes (`entry::LedgerEntry`) |
//! | `N` | level (u8, from [`FIRST_STORED_LEVEL`]) ‖ index (u64 BE) | Merkle node hash of a complete subtree |
//! | `M` | canonical tracking number | `pb::ManifestState` without its `manifest` |
//! | `B` | canonical tracking number ‖ 0x00 ‖ corrections applied (u32 BE) | index (u64 BE) of the entry that wrote it ‖ `pb::Manifest` at that revision |
//! | `P` | registry id | `pb::PartyState` |
//! | `K` | key id | registry id of the owner |
//! | `H` | event hash | index (u64 BE) |
//! | `X` | index kind ‖ value ‖ 0x00 ‖ tracking number | secondary indexes: empty (status: see [`status_index_value`]), or the index (u64 BE) of the entry that wrote it (party, waste code) |
//! | `S` | name | node state: chain head, last ledger time, integrity checkpoint, map file state |
//! | `C` | size (u64 BE) ‖ witness name | key hint ‖ signature of the checkpoint at that size |
//! | `U` | caller key | caller metadata (Raft last-applied, membership, rejections) |

use std::collections::{BTreeMap, HashMap, HashSet};
use std::io;
use std::path::Path;
use std::sync::{Arc, Mutex};

use prost::Message;
use wasteledger_core::checkpoint::{Checkpoint, NoteSignature, SignedCheckpoint};
use wasteledger_core::custody::{ManifestState, Status};
use wasteledger_core::entry::{LedgerEntry, chain_link, leaf_hash};
use wasteledger_core::envelope::{Subject, decode_event};
use wasteledger_core::genesis::Genesis;
use wasteledger_core::hash::Digest;
use wasteledger_core::ledger::{Decision, LedgerView, Rejection, SubjectState, evaluate};
use wasteledger_core::map::CompletenessMap;
use wasteledger_core::memory::Receipt;
use wasteledger_core::merkle::{Blake3Hasher, MerkleHasher, MerkleTree, NodeStore};
use wasteledger_core::pb;
use wasteledger_core::proof::ProofSource;
use wasteledger_core::registry::PartyRecord;
use wasteledger_core::tracking::Tracking;

use crate::error::StoreError;
use crate::map_file::MapFile;

mod copy;
mod integrity;

pub use copy::ChangingCopy;
use copy::{CopyHandle, copy_poisoned};
pub use integrity::{HistoryCheck, HistoryChecked, IntegrityError};

const ENTRY: u8 = b'E';
const NODE: u8 = b'N';
/// The lowest Merkle level kept in sled. Nodes below it (leaves and the two levels above)
/// are recomputed from the entries when a proof or a root at an older size needs them: at
/// most 2^3 − 1 entry reads per proof path. Storing every level was ~2 sled inserts per event
/// (the leaf and, on average, one interior node), over a quarter of all the inserts applying
/// an event makes; from level 3 on it is a quarter of one insert. Stores written before also
/// hold the lower levels, which nothing reads now and no snapshot sends.
pub const FIRST_STORED_LEVEL: u8 = 3;
const MANIFEST: u8 = b'M';
const BODY: u8 = b'B';
const PARTY: u8 = b'P';
const KEY_OWNER: u8 = b'K';
/// Registry event hash → entry index, for duplicate detection. Only registry events get one
/// (stores written before also hold one per manifest event, which nothing reads now): a
/// manifest's state lists its own events, and a hash-keyed record per event was the one insert
/// per event at a random place in the tree, slower the more history it held.
const EVENT: u8 = b'H';
const INDEX: u8 = b'X';
const STATE: u8 = b'S';
const USER: u8 = b'U';

/// Index kinds (the byte after [`INDEX`]). Status records change with the manifest; party
/// and waste-code records are written once, valued with the index (u64 BE) of the entry that
/// wrote them, and never changed or removed: settled history (see [`SettledHistory`]). Records
/// written before they carried that index have an empty value.
const STATUS_INDEX: u8 = b's';
const PARTY_INDEX: u8 = b'p';
const CODE_INDEX: u8 = b'c';

/// The status index value shared by every manifest still in custody.
pub const OPEN_STATUSES: &str = "open";

/// The value a manifest with `status` has in the status index (`X` `s` value ‖ 0 ‖ tracking):
/// the status name once it is terminal, [`OPEN_STATUSES`] before. A lifecycle passes through
/// four open statuses, and a record per status name was a remove and an insert on every event
/// of a manifest; now its record moves once, when it ends. A query for one open status scans
/// the manifests in custody and checks each one's status, which the query does anyway.
pub fn status_index_value(status: Status) -> &'static str {
    if status.is_terminal() {
        status.name()
    } else {
        OPEN_STATUSES
    }
}

const CHAIN_HEAD: &[u8] = b"chain_head";
/// Present once every manifest state is stored apart from its manifest (see
/// [`split_manifest_bodies`]).
const BODIES_SPLIT: &[u8] = b"manifest_bodies_split";
/// Present once the status index holds one [`OPEN_STATUSES`] record per manifest in custody,
/// not one per open status name (see [`merge_open_statuses`]).
const OPEN_STATUSES_MERGED: &[u8] = b"open_statuses_merged";
const LAST_SEQUENCED: &[u8] = b"last_sequenced_at";
const INTEGRITY: &[u8] = b"integrity_checkpoint";
const PUBLISHED: &[u8] = b"published_checkpoint";
/// Map file records covered by the committed state (u64 BE) ‖ map root at the ledger size.
const MAP_STATE: &[u8] = b"map_file";
const COSIG: u8 = b'C';

fn key(prefix: u8, rest: &[u8]) -> Vec<u8> {
    let mut k = Vec::with_capacity(1 + rest.len());
    k.push(prefix);
    k.extend_from_slice(rest);
    k
}

fn node_key(level: u8, index: u64) -> Vec<u8> {
    let mut k = vec![NODE, level];
    k.extend_from_slice(&index.to_be_bytes());
    k
}

/// Writes staged since the last [`LedgerStore::commit`], not yet in sled (`None` = delete).
/// Every read consults them first, so each entry sees the writes of the entries before it.
/// They are committed as ONE sled batch per group of applied entries: sled batches take a
/// process-wide write lock that waits for any flush in progress, so one batch per entry would
/// serialise applying behind the Raft log's fsyncs.
type Overlay = Arc<Mutex<BTreeMap<Vec<u8>, Option<Vec<u8>>>>>;

fn overlay_get(tree: &sled::Tree, overlay: &Overlay, key: &[u8]) -> Option<Vec<u8>> {
    if let Ok(o) = overlay.lock()
        && let Some(v) = o.get(key)
    {
        return v.clone();
    }
    // A read error surfaces as a missing node, which the Merkle and map code report as
    // corruption (MissingNode / CorruptStore) rather than returning a wrong proof.
    tree.get(key).ok().flatten().map(|v| v.to_vec())
}

fn overlay_put(overlay: &Overlay, key: Vec<u8>, value: Vec<u8>) {
    if let Ok(mut o) = overlay.lock() {
        o.insert(key, Some(value));
    }
}

/// Merkle node storage on the ledger tree: levels from [`FIRST_STORED_LEVEL`] up are
/// records, lower ones are recomputed from the entries they cover.
#[derive(Clone)]
pub struct SledNodes {
    tree: sled::Tree,
    overlay: Overlay,
}

impl SledNodes {
    /// Node `(level, index)` below [`FIRST_STORED_LEVEL`], from the 2^level entries under it.
    fn recomputed(&self, level: u8, index: u64) -> Option<Digest> {
        if level == 0 {
            let entry = overlay_get(&self.tree, &self.overlay, &key(ENTRY, &index.to_be_bytes()))?;
            return Some(leaf_hash(&entry));
        }
        let left = index.checked_mul(2)?;
        Some(Blake3Hasher::hash_children(
            &self.get(level - 1, left)?,
            &self.get(level - 1, left.checked_add(1)?)?,
        ))
    }
}

impl NodeStore for SledNodes {
    fn get(&self, level: u8, index: u64) -> Option<Digest> {
        if level < FIRST_STORED_LEVEL {
            return self.recomputed(level, index);
        }
        overlay_get(&self.tree, &self.overlay, &node_key(level, index))
            .and_then(|v| Digest::from_slice(&v))
    }

    fn put(&mut self, level: u8, index: u64, hash: Digest) {
        // Lower levels are recomputed from the entries staged beside them.
        if level >= FIRST_STORED_LEVEL {
            overlay_put(&self.overlay, node_key(level, index), hash.0.to_vec());
        }
    }
}

/// What recording a witness cosignature did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CosignOutcome {
    /// Recorded; `cosigners` distinct valid signatures are now held for `size`, and
    /// `published` says whether the checkpoint meets the genesis trust policy.
    Recorded {
        /// Checkpoint size.
        size: u64,
        /// Distinct valid cosignatures held.
        cosigners: u32,
        /// The checkpoint meets the trust policy.
        published: bool,
    },
    /// Not recorded, with the reason (identical on every node).
    Refused(String),
}

/// One key/value of a snapshot, or the store error met reading it.
pub type Record = Result<(Vec<u8>, Vec<u8>), StoreError>;

/// The records of a ledger's history that no later entry changes: entries, Merkle nodes of
/// complete subtrees, the registry events' hash index, the party and waste-code indexes and
/// each revision of each manifest. Below a ledger size they are written once and
/// never again, so they can be read while later entries are applied (a snapshot copies or
/// sends them without stopping the ledger). Owns a handle to the tree, so it outlives a borrow
/// of the store; an install that replaces the whole state invalidates what it reads, which the
/// caller must detect (the state machine counts installs).
#[derive(Clone, Debug)]
pub struct SettledHistory {
    tree: sled::Tree,
}

impl SettledHistory {
    /// The settled records of a snapshot at ledger size `size`: with
    /// a [`ChangingCopy`] begun at the same size they make the whole state.
    pub fn records(&self, size: u64) -> impl Iterator<Item = Record> + Send + 'static {
        let entries = self
            .tree
            .range(key(ENTRY, &0u64.to_be_bytes())..key(ENTRY, &size.to_be_bytes()));
        let nodes = self.tree.scan_prefix([NODE]).filter(move |r| match r {
            // Node (level, index) covers leaves [index·2^level, (index+1)·2^level): complete
            // at `size` iff that range ends at or before it.
            Ok((k, _)) => match (k.get(1), k.get(2..10).and_then(|b| b.try_into().ok())) {
                // Lower levels of stores written before: recomputed, so not sent.
                (Some(&level), _) if level < FIRST_STORED_LEVEL => false,
                (Some(&level), Some(raw)) => u64::from_be_bytes(raw)
                    .checked_add(1)
                    .and_then(|end| end.checked_shl(u32::from(level)))
                    .is_some_and(|end| end <= size),
                _ => true,
            },
            Err(_) => true,
        });
        // All three begin their value with the index of the entry that wrote them.
        let written_before = move |r: &Result<(sled::IVec, sled::IVec), sled::Error>| match r {
            Ok((_, v)) => v
                .get(..8)
                .and_then(|raw| raw.try_into().ok())
                .map(u64::from_be_bytes)
                // An index record from before it carried one.
                .is_none_or(|index| index < size),
            Err(_) => true,
        };
        let events = self.tree.scan_prefix([EVENT]).filter(written_before);
        let indexes = [PARTY_INDEX, CODE_INDEX]
            .map(|kind| self.tree.scan_prefix([INDEX, kind]))
            .into_iter()
            .flatten()
            .filter(written_before);
        let bodies = self.tree.scan_prefix([BODY]).filter(written_before);
        entries
            .chain(nodes)
            .chain(events)
            .chain(indexes)
            .chain(bodies)
            .map(owned_record)
    }
}

fn owned_record(r: Result<(sled::IVec, sled::IVec), sled::Error>) -> Record {
    r.map(|(k, v)| (k.to_vec(), v.to_vec()))
        .map_err(StoreError::from)
}

/// The outcome of applying one event: accepted with a receipt, or a deterministic rejection.
pub type ApplyOutcome = Result<Receipt, Rejection>;

/// The replicated ledger state of one node, in sled.
pub struct LedgerStore {
    genesis: Genesis,
    tree: sled::Tree,
    overlay: Overlay,
    merkle: MerkleTree<Blake3Hasher, SledNodes>,
    map: CompletenessMap<MapFile>,
    chain_head: Digest,
    last_sequenced_at: i64,
    caches: Caches,
    /// The snapshot copy of the changing records in progress, if any.
    copy: CopyHandle,
}

/// Derived data kept in memory because every event needs it: decoded party records (every
/// signature looks its key up, and decoding a record parses its public keys), decoded states
/// of manifests in flight, the signatures this process already verified (a leader verifies an
/// event when it checks it, then again when it applies it) and recent checkpoints. All are
/// rebuilt lazily after a restart, and dropped with the store when a write fails.
#[derive(Default)]
struct Caches {
    parties: Mutex<HashMap<String, Arc<PartyRecord>>>,
    /// Decoded manifest states by canonical tracking number: each event on a manifest reads
    /// its state twice on the leader (check, apply), and decoding it was ~8 % of a node's CPU.
    /// Shared with the decisions that produce them: copying a state in and out of the cache
    /// (~3 KB, many small allocations) was another ~7 % of the cluster's CPU.
    manifests: Mutex<HashMap<String, Arc<ManifestState>>>,
    /// Two generations, so the cache stays bounded without forgetting the newest checks.
    verified: Mutex<[HashSet<Digest>; 2]>,
    /// Checkpoints built lately, newest last. The checkpoint at a size never changes, and
    /// building one reads the map root at an old version (a walk back through the map file),
    /// while metrics, receipts and cosignatures ask for the same few sizes again and again.
    checkpoints: Mutex<std::collections::VecDeque<Checkpoint>>,
}

/// Checkpoints [`Caches::checkpoints`] keeps.
const CACHED_CHECKPOINTS: usize = 16;

/// Signature checks remembered per generation.
const VERIFIED_GENERATION: usize = 1 << 16;
/// Manifest states kept decoded before starting over (the ones in flight are what matter).
const MAX_CACHED_MANIFESTS: usize = 10_000;
/// Party records kept decoded before starting over.
const MAX_CACHED_PARTIES: usize = 100_000;

fn read_u64(bytes: &[u8], what: &'static str) -> Result<u64, StoreError> {
    let raw: [u8; 8] = bytes.try_into().map_err(|_| StoreError::Corrupt(what))?;
    Ok(u64::from_be_bytes(raw))
}

/// Opens the map file at the committed state recorded in `tree`, or rebuilds it from the
/// entries when it lost records or does not match (see [`crate::map_file`]).
fn open_map(
    tree: &sled::Tree,
    path: &Path,
    genesis: &Genesis,
    size: u64,
) -> Result<CompletenessMap<MapFile>, StoreError> {
    let committed = match tree.get(key(STATE, MAP_STATE))? {
        Some(v) if v.len() == 40 => Some((
            read_u64(&v[..8], "map file state")?,
            Digest::from_slice(&v[8..]).ok_or(StoreError::Corrupt("map file state"))?,
        )),
        Some(_) => return Err(StoreError::Corrupt("map file state")),
        None => None,
    };
    let opened = MapFile::open(path, committed.map_or(0, |(records, _)| records))?;
    let map = CompletenessMap::open(opened.file, size);
    match committed {
        Some((_, root)) if opened.complete && map.root() == root => Ok(map),
        None if size == 0 => Ok(map),
        // An installed snapshot carries no map nodes (they are derived from the entries).
        None => {
            tracing::info!(
                path = %path.display(),
                entries = size,
                "building the map file from the entries"
            );
            rebuild_map(tree, map.into_store(), genesis, size)
        }
        Some(_) => {
            tracing::warn!(
                path = %path.display(),
                entries = size,
                "map file does not match the committed ledger; rebuilding it from the entries"
            );
            rebuild_map(tree, map.into_store(), genesis, size)
        }
    }
}

/// Recomputes every map node from the entries: each accepted entry set its subject's head to
/// its event hash at version index + 1.
fn rebuild_map(
    tree: &sled::Tree,
    file: MapFile,
    genesis: &Genesis,
    size: u64,
) -> Result<CompletenessMap<MapFile>, StoreError> {
    file.clear()?;
    let mut map = CompletenessMap::new(file);
    let mut entries = tree.range(key(ENTRY, &0u64.to_be_bytes())..key(ENTRY, &size.to_be_bytes()));
    for index in 0..size {
        let bytes = match entries.next() {
            Some(Ok((k, v))) if k.get(1..) == Some(&index.to_be_bytes()[..]) => v,
            Some(Err(e)) => return Err(e.into()),
            _ => {
                return Err(StoreError::Corrupt(
                    "ledger entry missing during map rebuild",
                ));
            }
        };
        let entry = LedgerEntry::decode(&bytes).map_err(|_| StoreError::Corrupt("ledger entry"))?;
        let event = decode_event(&genesis.ledger_id, &entry.signed_event())
            .map_err(|_| StoreError::Corrupt("ledger entry body"))?;
        map.insert(event.subject.map_key(), event.hash, index + 1)
            .map_err(|e| StoreError::Inconsistent(format!("map rebuild: {e}")))?;
        if index % 4096 == 4095 {
            map.store().flush()?;
        }
    }
    map.store().sync()?;
    let mut state = map.store().records()?.to_be_bytes().to_vec();
    state.extend_from_slice(map.root().as_bytes());
    tree.insert(key(STATE, MAP_STATE), state)?;
    Ok(map)
}

/// Manifests converted per sled batch by [`split_manifest_bodies`].
const SPLIT_BATCH: usize = 1_000;

/// Rewrites every manifest state stored with its manifest inline (as stores did before the
/// `B` records) into a state without it and a `B` record at its revision, so that every read
/// and every later write can rely on the split. Each batch is atomic and converting is
/// idempotent, so a split cut short is finished at the next open; the marker is written last,
/// and from then on this is one point read. The `B` records of converted manifests name the
/// manifest's latest entry as their writer: any index below the ledger size classifies them as
/// settled, and every node derives the same one.
fn split_manifest_bodies(tree: &sled::Tree) -> Result<(), StoreError> {
    if tree.get(key(STATE, BODIES_SPLIT))?.is_some() {
        return Ok(());
    }
    let mut batches = Batches::new(tree, SPLIT_BATCH);
    for item in tree.scan_prefix([MANIFEST]) {
        let (k, v) = item?;
        let mut state = pb::ManifestState::decode(v.as_ref())
            .map_err(|_| StoreError::Corrupt("stored manifest state"))?;
        let Some(manifest) = state.manifest.take() else {
            continue; // converted by an earlier, interrupted split
        };
        let tracking =
            std::str::from_utf8(&k[1..]).map_err(|_| StoreError::Corrupt("stored manifest key"))?;
        let written_by = state.events.last().map_or(0, |e| e.index);
        let mut body = written_by.to_be_bytes().to_vec();
        body.extend_from_slice(&manifest.encode_to_vec());
        batches.record([
            (body_key(tracking, state.corrections_applied), Some(body)),
            (k.to_vec(), Some(state.encode_to_vec())),
        ])?;
    }
    let converted = batches.finish([(key(STATE, BODIES_SPLIT), Some(Vec::new()))])?;
    if converted > 0 {
        tracing::info!(
            manifests = converted,
            "stored each manifest apart from its changing state"
        );
    }
    Ok(())
}

/// Stores written before [`status_index_value`] hold a status record under each open status's
/// own name: moves them under [`OPEN_STATUSES`], in batches like [`split_manifest_bodies`]
/// (idempotent, the marker written last, one point read once done).
fn merge_open_statuses(tree: &sled::Tree) -> Result<(), StoreError> {
    if tree.get(key(STATE, OPEN_STATUSES_MERGED))?.is_some() {
        return Ok(());
    }
    let mut batches = Batches::new(tree, SPLIT_BATCH);
    let open_names = Status::KINDS
        .iter()
        .filter(|s| !s.is_terminal())
        .map(|s| s.name());
    for name in open_names {
        let prefix = index_key(STATUS_INDEX, name, "");
        for item in tree.scan_prefix(&prefix) {
            let (k, _) = item?;
            let tracking = k
                .strip_prefix(prefix.as_slice())
                .and_then(|t| std::str::from_utf8(t).ok())
                .ok_or(StoreError::Corrupt("status index key"))?;
            batches.record([
                (
                    index_key(STATUS_INDEX, OPEN_STATUSES, tracking),
                    Some(Vec::new()),
                ),
                (k.to_vec(), None),
            ])?;
        }
    }
    let moved = batches.finish([(key(STATE, OPEN_STATUSES_MERGED), Some(Vec::new()))])?;
    if moved > 0 {
        tracing::info!(
            manifests = moved,
            "status index: manifests in custody now share one status record value"
        );
    }
    Ok(())
}

impl LedgerStore {
    /// Opens (or creates) the ledger state in `tree` for `genesis`.
    pub fn open(
        tree: sled::Tree,
        map_path: &Path,
        genesis: Genesis,
    ) -> Result<LedgerStore, StoreError> {
        let overlay: Overlay = Arc::default();
        split_manifest_bodies(&tree)?;
        merge_open_statuses(&tree)?;
        let size = match tree.scan_prefix([ENTRY]).next_back() {
            Some(last) => read_u64(&last?.0[1..], "entry key")? + 1,
            None => 0,
        };
        let nodes = SledNodes {
            tree: tree.clone(),
            overlay: overlay.clone(),
        };
        let merkle =
            MerkleTree::from_store(nodes, size).map_err(|_| StoreError::Corrupt("merkle nodes"))?;
        let map = open_map(&tree, map_path, &genesis, size)?;
        let chain_head = match tree.get(key(STATE, CHAIN_HEAD))? {
            Some(v) => Digest::from_slice(&v).ok_or(StoreError::Corrupt("chain head"))?,
            None => genesis.ledger_id,
        };
        let last_sequenced_at = match tree.get(key(STATE, LAST_SEQUENCED))? {
            Some(v) => read_u64(&v, "last ledger time")? as i64,
            None => 0,
        };
        Ok(LedgerStore {
            genesis,
            tree,
            overlay,
            merkle,
            map,
            chain_head,
            last_sequenced_at,
            caches: Caches::default(),
            copy: CopyHandle::default(),
        })
    }

    /// The genesis.
    pub fn genesis(&self) -> &Genesis {
        &self.genesis
    }

    /// Number of entries in the ledger.
    pub fn merkle_size(&self) -> u64 {
        self.merkle.size()
    }

    /// Tree root and map root at the current size.
    pub fn roots(&self) -> (Digest, Digest) {
        (self.merkle.root(), self.map.root())
    }

    /// Tree root and map root at an earlier size.
    pub fn roots_at(&self, size: u64) -> Option<(Digest, Digest)> {
        Some((self.merkle.root_at(size).ok()?, self.map.root_at(size)))
    }

    /// RFC 9162 consistency proof between two sizes.
    pub fn consistency_proof(&self, old: u64, new: u64) -> Option<Vec<Digest>> {
        self.merkle.consistency_proof(old, new).ok()
    }

    /// The chain link after the last entry.
    pub fn chain_head(&self) -> Digest {
        self.chain_head
    }

    /// Ledger time of the last entry.
    pub fn last_sequenced_at(&self) -> i64 {
        self.last_sequenced_at
    }

    /// Decides an event at the current position without changing anything (the leader's
    /// fail-fast pre-check).
    pub fn check(
        &self,
        signed: &pb::SignedEvent,
        sequenced_at: i64,
    ) -> Result<Decision, Rejection> {
        evaluate(
            &self.genesis,
            self,
            signed,
            sequenced_at.max(self.last_sequenced_at),
        )
    }

    /// Applies one committed event: decides it and, if accepted, writes the entry and every
    /// derived record in one atomic batch together with `meta` (caller key/values such as the
    /// Raft last-applied id). A rejection writes only `meta`. `Err` means storage failed and
    /// the node must stop applying.
    pub fn apply(
        &mut self,
        signed: &pb::SignedEvent,
        sequenced_at: i64,
        meta: &[(&[u8], Vec<u8>)],
    ) -> Result<ApplyOutcome, StoreError> {
        self.apply_recording(signed, sequenced_at, meta, None)
    }

    /// [`LedgerStore::apply`], and on a rejection also record `code\nmessage` under the caller
    /// key `rejection_key`, in the same batch as `meta`, so every node keeps the same record of
    /// what was refused and why.
    pub fn apply_recording(
        &mut self,
        signed: &pb::SignedEvent,
        sequenced_at: i64,
        meta: &[(&[u8], Vec<u8>)],
        rejection_key: Option<&[u8]>,
    ) -> Result<ApplyOutcome, StoreError> {
        let sequenced_at = sequenced_at.max(self.last_sequenced_at);
        let decision = match evaluate(&self.genesis, self, signed, sequenced_at) {
            Ok(d) => d,
            Err(rejection) => {
                self.put_meta(meta)?;
                if let Some(k) = rejection_key {
                    self.put_rejection(k, rejection.code(), &rejection.to_string())?;
                }
                return Ok(Err(rejection));
            }
        };
        let index = self.merkle.size();
        let entry = LedgerEntry::new(index, sequenced_at, self.chain_head, signed)
            .map_err(|_| StoreError::Corrupt("accepted envelope has malformed signatures"))?;
        let bytes = entry.encode();
        let leaf = leaf_hash(&bytes);
        let chain_next = chain_link(&self.chain_head, &leaf);

        // The manifest as stored before this event (None: the event creates it), for the
        // index records.
        let before = match &decision.event.subject {
            Subject::Manifest(t) => self.manifest_before(t),
            Subject::Party(_) => None,
        };
        self.merkle.append_leaf_hash(leaf);
        if let Err(e) = self.map.insert(
            decision.event.subject.map_key(),
            decision.state.head(),
            index + 1,
        ) {
            // The in-memory tree is now ahead of the store: the caller must stop and reopen.
            return Err(StoreError::Inconsistent(e.to_string()));
        }
        self.stage(key(ENTRY, &index.to_be_bytes()), bytes);
        if let Subject::Party(_) = decision.event.subject {
            self.stage(
                key(EVENT, decision.event.hash.as_bytes()),
                index.to_be_bytes().to_vec(),
            );
        }
        self.stage(key(STATE, CHAIN_HEAD), chain_next.0.to_vec());
        self.stage(
            key(STATE, LAST_SEQUENCED),
            (sequenced_at as u64).to_be_bytes().to_vec(),
        );
        self.write_subject(&decision, before, index)?;

        for (k, v) in meta {
            self.stage(key(USER, k), v.clone());
        }
        self.chain_head = chain_next;
        self.last_sequenced_at = sequenced_at;
        Ok(Ok(Receipt {
            index,
            event_hash: decision.event.hash,
            leaf_hash: leaf,
            tree_size: index + 1,
        }))
    }

    fn stage(&self, k: Vec<u8>, v: Vec<u8>) {
        overlay_put(&self.overlay, k, v);
    }

    fn unstage(&self, k: Vec<u8>) {
        if let Ok(mut o) = self.overlay.lock() {
            o.insert(k, None);
        }
    }

    /// A point read that sees staged writes.
    fn read(&self, k: &[u8]) -> Result<Option<Vec<u8>>, StoreError> {
        if let Ok(o) = self.overlay.lock()
            && let Some(v) = o.get(k)
        {
            return Ok(v.clone());
        }
        Ok(self.tree.get(k)?.map(|v| v.to_vec()))
    }

    /// Writes every staged change in one atomic sled batch. The state machine calls it once per
    /// group of applied entries (and before snapshots); until then the changes are visible to
    /// this store's reads but not on disk, which is safe because the Raft log, not the state,
    /// is what survives a crash: entries after the last committed last-applied are re-applied.
    /// An error leaves memory ahead of disk: the caller must stop and reopen.
    pub fn commit(&self) -> Result<(), StoreError> {
        let staged = match self.overlay.lock() {
            Ok(mut o) => std::mem::take(&mut *o),
            Err(_) => {
                return Err(StoreError::Inconsistent(
                    "staged writes lock poisoned".into(),
                ));
            }
        };
        if staged.is_empty() {
            return Ok(());
        }
        // Map records first: the batch below names how many of them the state covers, so
        // they must be in the file (page cache suffices, see `map_file`) before sled has it.
        self.map.store().flush()?;
        let mut map_state = self.map.store().records()?.to_be_bytes().to_vec();
        map_state.extend_from_slice(self.map.root().as_bytes());
        self.write(std::iter::once((key(STATE, MAP_STATE), Some(map_state))).chain(staged))
    }

    /// Applies `writes` (`None` = delete) as one atomic sled batch: every write to the tree
    /// goes through here, so a snapshot copy in progress records what each changing record
    /// held before its first write ([`ChangingCopy`]).
    fn write(
        &self,
        writes: impl IntoIterator<Item = (Vec<u8>, Option<Vec<u8>>)>,
    ) -> Result<(), StoreError> {
        let mut copies = self.copy.lock().map_err(|_| copy_poisoned())?;
        let mut batch = sled::Batch::default();
        for (k, v) in writes {
            copies.note_write(&self.tree, &k, v.as_deref())?;
            match v {
                Some(v) => batch.insert(k, v),
                None => batch.remove(k),
            }
        }
        drop(copies);
        crate::durable::apply_sled_batch(&self.tree, batch)?;
        Ok(())
    }

    /// Stages the subject's new state and its index records; `index` is the entry's.
    fn write_subject(
        &self,
        decision: &Decision,
        before: Option<StoredManifest>,
        index: u64,
    ) -> Result<(), StoreError> {
        match &decision.state {
            SubjectState::Manifest(m) => {
                let tracking = m.tracking.to_string();
                // The manifest itself only when it is new or corrected: it is most of the
                // state's bytes, and every other event would rewrite it unchanged.
                let revised = before.is_none_or(|b| b.corrections_applied != m.corrections_applied);
                if revised {
                    let mut body = index.to_be_bytes().to_vec();
                    body.extend_from_slice(&m.manifest.encode_to_vec());
                    self.stage(body_key(&tracking, m.corrections_applied), body);
                }
                self.stage(
                    key(MANIFEST, tracking.as_bytes()),
                    m.to_pb_without_manifest().encode_to_vec(),
                );
                let (old_status, status) = (before.map(|b| b.status), status_index_value(m.status));
                if old_status != Some(status) {
                    if let Some(previous) = old_status {
                        self.unstage(index_key(STATUS_INDEX, previous, &tracking));
                    }
                    self.stage(index_key(STATUS_INDEX, status, &tracking), Vec::new());
                }
                // Party and waste-code records are never changed or removed once written, so
                // they are settled history, which a snapshot reads by the index of the entry
                // that wrote them, kept as their value. Parties are fixed at creation; a
                // correction may give a line new codes, which get records of their own
                // (queries re-check the current manifest, so a code corrected away is
                // filtered out there).
                let written_by = index.to_be_bytes().to_vec();
                if before.is_none() {
                    for party in m.named_parties() {
                        self.stage(
                            index_key(PARTY_INDEX, &party, &tracking),
                            written_by.clone(),
                        );
                    }
                }
                if revised {
                    for line in &m.manifest.lines {
                        for code in &line.codes {
                            let value = format!("{}:{}", code.system, code.code);
                            let k = index_key(CODE_INDEX, &value, &tracking);
                            // A new manifest has no records yet; after a correction only the
                            // codes it introduced are missing.
                            if before.is_none() || self.read(&k)?.is_none() {
                                self.stage(k, written_by.clone());
                            }
                        }
                    }
                }
                self.cache_manifest(tracking, Arc::clone(m));
            }
            SubjectState::Party(p) => {
                self.cache_party(Arc::clone(p));
                self.stage(
                    key(PARTY, p.party.registry_id.as_bytes()),
                    p.to_pb().encode_to_vec(),
                );
                for k in &p.keys {
                    self.stage(
                        key(KEY_OWNER, k.key_id.as_bytes()),
                        p.party.registry_id.as_bytes().to_vec(),
                    );
                }
            }
        }
        Ok(())
    }

    /// What the index records need of a manifest's stored state (evaluating the event just
    /// put it in the cache).
    fn manifest_before(&self, tracking: &Tracking) -> Option<StoredManifest> {
        self.inspect_manifest(tracking, |state| StoredManifest {
            status: status_index_value(state.status),
            corrections_applied: state.corrections_applied,
        })
    }

    /// `look` applied to the manifest's folded state (see [`LedgerView::manifest`]); `None` if
    /// the manifest does not exist.
    fn inspect_manifest<T>(
        &self,
        tracking: &Tracking,
        look: impl Fn(&ManifestState) -> T,
    ) -> Option<T> {
        self.manifest(tracking).as_deref().map(look)
    }

    fn cache_manifest(&self, tracking: String, state: Arc<ManifestState>) {
        if let Ok(mut manifests) = self.caches.manifests.lock() {
            if manifests.len() >= MAX_CACHED_MANIFESTS {
                manifests.clear();
            }
            manifests.insert(tracking, state);
        }
    }

    fn cache_party(&self, record: Arc<PartyRecord>) {
        if let Ok(mut parties) = self.caches.parties.lock() {
            if parties.len() >= MAX_CACHED_PARTIES {
                parties.clear();
            }
            parties.insert(record.party.registry_id.clone(), record);
        }
    }

    /// Stages caller metadata (e.g. Raft membership, or last-applied after a rejected or
    /// non-ledger entry); it reaches disk with the next [`LedgerStore::commit`].
    pub fn put_meta(&self, meta: &[(&[u8], Vec<u8>)]) -> Result<(), StoreError> {
        for (k, v) in meta {
            self.stage(key(USER, k), v.clone());
        }
        Ok(())
    }

    /// Stages the record of a refusal, `code` and `message`, under the caller key
    /// `rejection_key` (read back by [`LedgerStore::rejection`]); it reaches disk with the
    /// next [`LedgerStore::commit`].
    pub fn put_rejection(
        &self,
        rejection_key: &[u8],
        code: &str,
        message: &str,
    ) -> Result<(), StoreError> {
        self.put_meta(&[(rejection_key, format!("{code}\n{message}").into_bytes())])
    }

    /// A recorded rejection: `(code, message)`.
    pub fn rejection(&self, rejection_key: &[u8]) -> Result<Option<(String, String)>, StoreError> {
        Ok(self.get_meta(rejection_key)?.map(|v| {
            let text = String::from_utf8_lossy(&v).into_owned();
            match text.split_once('\n') {
                Some((code, message)) => (code.to_owned(), message.to_owned()),
                None => (text, String::new()),
            }
        }))
    }

    /// Reads caller metadata.
    pub fn get_meta(&self, k: &[u8]) -> Result<Option<Vec<u8>>, StoreError> {
        self.read(&key(USER, k))
    }

    /// Stored manifest states in canonical tracking-number order, strictly after the tracking
    /// number `after`, at most `limit`: `(canonical tracking number, state)`.
    pub fn manifests_after(
        &self,
        after: Option<&str>,
        limit: usize,
    ) -> Result<Vec<(String, pb::ManifestState)>, StoreError> {
        self.records_after(MANIFEST, after, limit, "stored manifest state")?
            .into_iter()
            .map(|(tracking, state)| {
                let state = self.with_manifest(&tracking, state)?;
                Ok((tracking, state))
            })
            .collect()
    }

    /// The stored state of the manifest with canonical tracking number `tracking`.
    pub fn manifest_state(&self, tracking: &str) -> Result<Option<pb::ManifestState>, StoreError> {
        self.read(&key(MANIFEST, tracking.as_bytes()))?
            .map(|v| {
                let state = pb::ManifestState::decode(v.as_slice())
                    .map_err(|_| StoreError::Corrupt("stored manifest state"))?;
                self.with_manifest(tracking, state)
            })
            .transpose()
    }

    /// A stored manifest state joined with its manifest at its revision.
    fn with_manifest(
        &self,
        tracking: &str,
        mut state: pb::ManifestState,
    ) -> Result<pb::ManifestState, StoreError> {
        if state.manifest.is_none() {
            let body = self
                .read(&body_key(tracking, state.corrections_applied))?
                .ok_or(StoreError::Corrupt("manifest missing for a stored state"))?;
            let manifest = body
                .get(8..)
                .and_then(|bytes| pb::Manifest::decode(bytes).ok())
                .ok_or(StoreError::Corrupt("stored manifest"))?;
            state.manifest = Some(manifest);
        }
        Ok(state)
    }

    /// Registered parties in registry-id order, strictly after `after`, at most `limit`.
    pub fn parties_after(
        &self,
        after: Option<&str>,
        limit: usize,
    ) -> Result<Vec<(String, pb::PartyState)>, StoreError> {
        self.records_after(PARTY, after, limit, "stored party state")
    }

    /// The stored registry record of party `registry_id`.
    pub fn party_state(&self, registry_id: &str) -> Result<Option<pb::PartyState>, StoreError> {
        self.read(&key(PARTY, registry_id.as_bytes()))?
            .map(|v| {
                pb::PartyState::decode(v.as_slice())
                    .map_err(|_| StoreError::Corrupt("stored party state"))
            })
            .transpose()
    }

    fn records_after<T: Message + Default>(
        &self,
        prefix: u8,
        after: Option<&str>,
        limit: usize,
        what: &'static str,
    ) -> Result<Vec<(String, T)>, StoreError> {
        let start = match after {
            Some(a) => {
                let mut k = key(prefix, a.as_bytes());
                k.push(0); // strictly after the cursor
                k
            }
            None => vec![prefix],
        };
        let mut out = Vec::new();
        for item in self.tree.range(start..) {
            if out.len() >= limit {
                break;
            }
            let (k, v) = item?;
            if k.first() != Some(&prefix) {
                break;
            }
            let name = String::from_utf8_lossy(&k[1..]).into_owned();
            out.push((
                name,
                T::decode(v.as_ref()).map_err(|_| StoreError::Corrupt(what))?,
            ));
        }
        Ok(out)
    }

    /// Tracking numbers indexed under `kind` (`b'p'` party, `b'c'` waste code
    /// `"<system number>:<code>"`, `b's'` [`status_index_value`]) and `value`, in
    /// tracking-number order, starting after `after` (a cursor), at most `limit`.
    pub fn index_scan(
        &self,
        kind: u8,
        value: &str,
        after: Option<&str>,
        limit: usize,
    ) -> Result<Vec<String>, StoreError> {
        let prefix = index_key(kind, value, "");
        let start = match after {
            Some(a) => {
                let mut k = index_key(kind, value, a);
                k.push(0); // strictly after the cursor
                k
            }
            None => prefix.clone(),
        };
        let mut out = Vec::new();
        for item in self.tree.range(start..) {
            let (k, _) = item?;
            if !k.starts_with(&prefix) || out.len() >= limit {
                break;
            }
            out.push(String::from_utf8_lossy(&k[prefix.len()..]).into_owned());
        }
        Ok(out)
    }

    /// The checkpoint of the ledger at `size`: every node derives the same one, because its
    /// time is the ledger time of entry `size - 1` (0 for the empty ledger), not a clock.
    pub fn checkpoint_at(&self, size: u64) -> Option<Checkpoint> {
        if size > self.merkle.size() {
            return None;
        }
        if let Ok(cached) = self.caches.checkpoints.lock()
            && let Some(c) = cached.iter().find(|c| c.size == size)
        {
            return Some(c.clone());
        }
        let (root, map_root) = self.roots_at(size)?;
        let time_ms = match size.checked_sub(1) {
            Some(last) => LedgerEntry::decode(&self.entry(last)?).ok()?.sequenced_at,
            None => 0,
        };
        let checkpoint =
            Checkpoint::new(self.genesis.ledger_name(), size, root, map_root, time_ms).ok()?;
        if let Ok(mut cached) = self.caches.checkpoints.lock() {
            if cached.len() >= CACHED_CHECKPOINTS {
                cached.pop_front();
            }
            cached.push_back(checkpoint.clone());
        }
        Some(checkpoint)
    }

    fn cosignatures(&self, size: u64) -> Result<Vec<NoteSignature>, StoreError> {
        let prefix = key(COSIG, &size.to_be_bytes());
        let mut out = Vec::new();
        for item in self.tree.scan_prefix(&prefix) {
            let (k, v) = item?;
            let name = String::from_utf8(k[prefix.len()..].to_vec())
                .map_err(|_| StoreError::Corrupt("cosignature witness name"))?;
            if v.len() != 68 {
                return Err(StoreError::Corrupt("cosignature length"));
            }
            let mut key_hint = [0u8; 4];
            key_hint.copy_from_slice(&v[..4]);
            let mut signature = [0u8; 64];
            signature.copy_from_slice(&v[4..]);
            out.push(NoteSignature {
                name,
                key_hint,
                signature,
            });
        }
        Ok(out)
    }

    /// Verifies a witness cosignature of the checkpoint at `size` and records it, with `meta`,
    /// atomically. Deterministic: every node refuses or records the same cosignatures.
    pub fn record_cosignature(
        &self,
        size: u64,
        signature: &NoteSignature,
        meta: &[(&[u8], Vec<u8>)],
    ) -> Result<CosignOutcome, StoreError> {
        // Earlier entries' staged writes go first, so this batch's last-applied is the newest.
        self.commit()?;
        let refuse = |reason: String| -> Result<CosignOutcome, StoreError> {
            self.put_meta(meta)?;
            Ok(CosignOutcome::Refused(reason))
        };
        let Some(checkpoint) = self.checkpoint_at(size) else {
            return refuse(format!(
                "no checkpoint at size {size} (ledger size {})",
                self.merkle.size()
            ));
        };
        let single = SignedCheckpoint {
            checkpoint: checkpoint.clone(),
            signatures: vec![signature.clone()],
        };
        // A one-signature note must verify for this witness: reuse the policy verifier with
        // the signature alone and check it counted.
        let counted = match self.genesis.witnesses.verify(
            &self.genesis.ledger_id,
            &single,
            self.genesis.ledger_name(),
        ) {
            Ok(report) => !report.signers.is_empty(),
            Err(wasteledger_core::checkpoint::CheckpointError::QuorumNotMet { have, .. }) => {
                have == 1
            }
            Err(wasteledger_core::checkpoint::CheckpointError::GroupQuorumNotMet { .. }) => true,
            Err(e) => return refuse(e.to_string()),
        };
        if !counted {
            return refuse(format!(
                "{} is not a genesis witness with that key",
                signature.name
            ));
        }
        let mut writes = Vec::new();
        let mut blob = signature.key_hint.to_vec();
        blob.extend_from_slice(&signature.signature);
        writes.push((
            key(
                COSIG,
                &[size.to_be_bytes().as_slice(), signature.name.as_bytes()].concat(),
            ),
            Some(blob),
        ));
        let mut all = self.cosignatures(size)?;
        all.retain(|s| s.name != signature.name);
        all.push(signature.clone());
        let note = SignedCheckpoint {
            checkpoint,
            signatures: all,
        };
        let cosigners = note.signatures.len() as u32;
        let published = self
            .genesis
            .witnesses
            .verify(&self.genesis.ledger_id, &note, self.genesis.ledger_name())
            .is_ok();
        let newer = self.published_size()?.is_none_or(|p| size > p);
        if published && newer {
            writes.push((key(STATE, PUBLISHED), Some(size.to_be_bytes().to_vec())));
            let integrity = self.integrity_record(size, &note.checkpoint.root)?;
            writes.push((key(STATE, INTEGRITY), Some(integrity)));
        }
        for (k, v) in meta {
            writes.push((key(USER, k), Some(v.clone())));
        }
        self.write(writes)?;
        Ok(CosignOutcome::Recorded {
            size,
            cosigners,
            published,
        })
    }

    /// The size of the latest published checkpoint (one point read, no checkpoint built).
    pub fn published_size(&self) -> Result<Option<u64>, StoreError> {
        match self.read(&key(STATE, PUBLISHED))? {
            Some(v) => Ok(Some(read_u64(&v, "published checkpoint size")?)),
            None => Ok(None),
        }
    }

    /// The largest ledger size any witness has cosigned (published or not): the checkpoint
    /// another witness can second, so that witnesses signing at different moments under load
    /// still meet on common sizes.
    pub fn newest_cosigned_size(&self) -> Result<Option<u64>, StoreError> {
        match self.tree.scan_prefix([COSIG]).next_back() {
            None => Ok(None),
            Some(item) => {
                let (k, _) = item?;
                let size = k.get(1..9).ok_or(StoreError::Corrupt("cosignature key"))?;
                Ok(Some(read_u64(size, "cosignature size")?))
            }
        }
    }

    /// The latest checkpoint whose cosignatures meet the genesis trust policy.
    pub fn published_checkpoint(&self) -> Result<Option<SignedCheckpoint>, StoreError> {
        let Some(size) = self.published_size()? else {
            return Ok(None);
        };
        let checkpoint = self.checkpoint_at(size).ok_or(StoreError::Corrupt(
            "published checkpoint beyond the ledger",
        ))?;
        Ok(Some(SignedCheckpoint {
            checkpoint,
            signatures: self.cosignatures(size)?,
        }))
    }

    /// A handle to the map file, to save its index without holding the store
    /// ([`MapFile::save_index`]).
    pub fn map_file(&self) -> MapFile {
        self.map.store().clone()
    }

    /// Saves the map file's in-memory index beside it, so the next open reads only the map
    /// records written after now. Call at quiet points: snapshots, shutdown.
    pub fn save_map_index(&self) -> Result<crate::map_file::IndexSave, StoreError> {
        self.commit()?;
        self.map.store().save_index()
    }

    /// Starts copying the records of a snapshot that later entries can change (subject
    /// states, indexes, node state, cosignatures, caller metadata), as they are now: commits
    /// what is staged, then returns a copy that can be read while later entries are applied.
    /// With [`SettledHistory::records`] at the same [`LedgerStore::merkle_size`] they make the
    /// whole state. The map file is derived data and not included: [`LedgerStore::import`]
    /// rebuilds it. One copy at a time.
    pub fn begin_changing_copy(&self) -> Result<ChangingCopy, StoreError> {
        self.commit()?;
        copy::begin(&self.copy, &self.tree)
    }

    /// A handle on the records no later entry changes, for reading them without the store (see
    /// [`SettledHistory`]).
    pub fn settled_history(&self) -> SettledHistory {
        SettledHistory {
            tree: self.tree.clone(),
        }
    }

    /// Replaces the whole state with a snapshot's key/values, then reopens, rebuilding the map
    /// file at `map_path` from the imported entries.
    ///
    /// The items are read as they are imported, so a snapshot never has to fit in memory. An
    /// error from `items`, like a sled error, stops the import and leaves the state half
    /// replaced, so the caller checks the items first (the snapshot's checksum): then only an
    /// I/O failure can do that.
    pub fn import(
        tree: sled::Tree,
        map_path: &Path,
        genesis: Genesis,
        items: impl Iterator<Item = io::Result<(Vec<u8>, Vec<u8>)>>,
    ) -> Result<LedgerStore, StoreError> {
        tree.clear()?;
        import_records(&tree, items)?;
        // A map file state names the sender's file, not ours.
        tree.remove(key(STATE, MAP_STATE))?;
        LedgerStore::open(tree, map_path, genesis)
    }
}

/// Records an import writes per sled batch.
pub(crate) const IMPORT_BATCH: usize = 100;

/// Writes `items` into `tree` in small batches through the store's flush gate
/// ([`crate::durable::apply_sled_batch`]).
///
/// Not single inserts: sled 0.34 lost track of its stable log position when flushes ran
/// beside a long run of single inserts, after which every flush, and every read of a page from
/// its log, waits forever (a 1M-event learner hung after its install in four of five runs;
/// BENCHMARKS.md, thirteenth pass, has a stand-alone reproduction: ~3M single inserts with a
/// sync every 50,000 hang within seconds, the same writes as gated batches of 100 do not).
/// Small batches, because batches of 10,000 grew the process by ~4.4 GB per million records
/// until the kernel killed it at 17.8 GB; batches of 100 peaked at 2.5 GB for 6M records, about
/// what single inserts took (2.2 GB). No batch makes the whole import atomic, and none needs
/// to: an interrupted install is finished from its journal.
pub(crate) fn import_records(
    tree: &sled::Tree,
    items: impl Iterator<Item = io::Result<(Vec<u8>, Vec<u8>)>>,
) -> Result<(), StoreError> {
    let mut batches = Batches::new(tree, IMPORT_BATCH);
    for item in items {
        let (k, v) = item?;
        batches.record([(k, Some(v))])?;
    }
    batches.finish([])?;
    Ok(())
}

/// Writes too many for one sled batch (imports, conversions at open), gathered into batches
/// of `per_batch` records, each applied through the store's flush gate
/// ([`crate::durable::apply_sled_batch`]; why batches, and why small: [`import_records`]).
/// Only each batch is atomic.
struct Batches<'a> {
    tree: &'a sled::Tree,
    batch: sled::Batch,
    in_batch: usize,
    per_batch: usize,
    records: u64,
}

impl<'a> Batches<'a> {
    fn new(tree: &'a sled::Tree, per_batch: usize) -> Self {
        Batches {
            tree,
            batch: sled::Batch::default(),
            in_batch: 0,
            per_batch: per_batch.max(1),
            records: 0,
        }
    }

    /// Adds one record's writes (`None` = remove), kept in one batch; applies the batch once it
    /// holds `per_batch` records.
    fn record(
        &mut self,
        writes: impl IntoIterator<Item = (Vec<u8>, Option<Vec<u8>>)>,
    ) -> Result<(), StoreError> {
        self.stage(writes);
        self.records += 1;
        self.in_batch += 1;
        if self.in_batch == self.per_batch {
            crate::durable::apply_sled_batch(self.tree, std::mem::take(&mut self.batch))?;
            self.in_batch = 0;
        }
        Ok(())
    }

    /// Applies what is left with `last` (e.g. a marker that must follow every record) in the
    /// final batch; returns how many records were written.
    fn finish(
        mut self,
        last: impl IntoIterator<Item = (Vec<u8>, Option<Vec<u8>>)>,
    ) -> Result<u64, StoreError> {
        let staged = self.stage(last);
        if self.in_batch > 0 || staged {
            crate::durable::apply_sled_batch(self.tree, self.batch)?;
        }
        Ok(self.records)
    }

    /// Adds `writes` to the open batch; true if there were any.
    fn stage(&mut self, writes: impl IntoIterator<Item = (Vec<u8>, Option<Vec<u8>>)>) -> bool {
        let mut any = false;
        for (k, v) in writes {
            any = true;
            match v {
                Some(v) => self.batch.insert(k, v),
                None => self.batch.remove(k),
            }
        }
        any
    }
}

/// A manifest's state before an event, as far as its index records depend on it.
#[derive(Clone, Copy)]
struct StoredManifest {
    /// Its [`status_index_value`].
    status: &'static str,
    corrections_applied: u32,
}

fn body_key(tracking: &str, corrections_applied: u32) -> Vec<u8> {
    let mut k = key(BODY, tracking.as_bytes());
    k.push(0);
    k.extend_from_slice(&corrections_applied.to_be_bytes());
    k
}

fn index_key(kind: u8, value: &str, tracking: &str) -> Vec<u8> {
    let mut k = vec![INDEX, kind];
    k.extend_from_slice(value.as_bytes());
    k.push(0);
    k.extend_from_slice(tracking.as_bytes());
    k
}

impl LedgerView for LedgerStore {
    fn size(&self) -> u64 {
        self.merkle.size()
    }

    /// From the cache when it is there, else decoded from sled and cached.
    fn manifest(&self, tracking: &Tracking) -> Option<Arc<ManifestState>> {
        let canonical = tracking.to_string();
        if let Ok(manifests) = self.caches.manifests.lock()
            && let Some(state) = manifests.get(&canonical)
        {
            return Some(Arc::clone(state));
        }
        let state = Arc::new(ManifestState::from_pb(&self.manifest_state(&canonical).ok()??).ok()?);
        self.cache_manifest(canonical, Arc::clone(&state));
        Some(state)
    }

    /// From the cache when it is there, else decoded from sled and cached.
    fn party_record(&self, registry_id: &str) -> Option<Arc<PartyRecord>> {
        if let Ok(parties) = self.caches.parties.lock()
            && let Some(record) = parties.get(registry_id)
        {
            return Some(Arc::clone(record));
        }
        let record = Arc::new(PartyRecord::from_pb(&self.party_state(registry_id).ok()??).ok()?);
        self.cache_party(Arc::clone(&record));
        Some(record)
    }

    fn verified_before(&self, check: &Digest) -> bool {
        self.caches
            .verified
            .lock()
            .is_ok_and(|v| v[0].contains(check) || v[1].contains(check))
    }

    fn record_verified(&self, check: &Digest) {
        if let Ok(mut v) = self.caches.verified.lock() {
            if v[0].len() >= VERIFIED_GENERATION {
                v[1] = std::mem::take(&mut v[0]);
            }
            v[0].insert(*check);
        }
    }

    fn key_owner(&self, key_id: &Digest) -> Option<String> {
        let bytes = self.read(&key(KEY_OWNER, key_id.as_bytes())).ok()??;
        String::from_utf8(bytes.to_vec()).ok()
    }

    fn event_index(&self, subject: &Subject, event_hash: &Digest) -> Option<u64> {
        let tracking = match subject {
            Subject::Manifest(tracking) => tracking,
            Subject::Party(_) => {
                let bytes = self.read(&key(EVENT, event_hash.as_bytes())).ok()??;
                return read_u64(&bytes, "event index").ok();
            }
        };
        self.inspect_manifest(tracking, |state| {
            state
                .events
                .iter()
                .find(|e| e.hash == *event_hash)
                .map(|e| e.index)
        })
        .flatten()
    }
}

impl ProofSource for LedgerStore {
    fn ledger_id(&self) -> Digest {
        self.genesis.ledger_id
    }

    fn entry(&self, index: u64) -> Option<Vec<u8>> {
        self.read(&key(ENTRY, &index.to_be_bytes())).ok()?
    }

    fn inclusion_proof(&self, index: u64, size: u64) -> Option<Vec<Digest>> {
        self.merkle.inclusion_proof(index, size).ok()
    }

    fn map_proof(&self, key: &Digest, size: u64) -> Option<Vec<Digest>> {
        self.map.prove(key, size).ok().map(|p| p.siblings)
    }

    fn subject_indexes(&self, subject: &Subject) -> Vec<u64> {
        match subject {
            Subject::Manifest(t) => self
                .manifest(t)
                .map(|m| m.events.iter().map(|e| e.index).collect())
                .unwrap_or_default(),
            Subject::Party(id) => self
                .party_record(id)
                .map(|p| p.event_indexes.clone())
                .unwrap_or_default(),
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]

    use std::time::Duration;

    use super::*;
    use crate::DurableDb;

    /// The import's writes under the pattern that makes sled 0.34 lose its stable log position
    /// when they are single inserts (see [`import_records`]): records of a snapshot's sizes
    /// with a sync after every 50,000. With single inserts a sync never returned within the
    /// first two or three million records in three tries out of three; this writes six
    /// million, reads them back and syncs. A stuck sync ends the test process: it could not
    /// return, since the next batch waits for the stuck flush too. About two minutes; run by
    /// hand after touching the import:
    /// `cargo test --release -p wasteledger-store -- --ignored an_import_keeps_sled_syncing`.
    #[test]
    #[ignore = "a stress test of a few minutes, run by hand"]
    fn an_import_keeps_sled_syncing() {
        const RECORDS: u64 = 6_000_000;
        const SYNC_EVERY: u64 = 50_000;
        let dir = tempfile::tempdir().unwrap();
        let db = DurableDb::open(dir.path().join("db")).unwrap();
        db.spawn_stall_watchdog(Duration::from_secs(60), |stall| {
            eprintln!("a sync stalled: {stall:?}");
            std::process::exit(1);
        })
        .unwrap();
        let tree = db.raw_tree("ledger").unwrap();
        let key = |i: u64| {
            [
                &[if i.is_multiple_of(6) { b'E' } else { b'M' }][..],
                &i.to_be_bytes(),
            ]
            .concat()
        };
        // Entries (~430 bytes) among index and state records (~100 bytes), in key order within
        // each prefix, as a snapshot sends them.
        let record = |i: u64| {
            let mut value = vec![7u8; if i.is_multiple_of(6) { 430 } else { 100 }];
            value[..8].copy_from_slice(&i.to_be_bytes());
            Ok((key(i), value))
        };
        for start in (0..RECORDS).step_by(SYNC_EVERY as usize) {
            import_records(&tree, (start..start + SYNC_EVERY).map(record)).unwrap();
            db.sync().unwrap();
        }
        assert_eq!(tree.iter().count() as u64, RECORDS);
        for i in (0..RECORDS).step_by(7) {
            assert!(tree.get(key(i)).unwrap().is_some());
        }
        db.sync().unwrap();
    }
}

//! Snapshot copies of the records later entries change (subject states, indexes, node state,
//! cosignatures, caller metadata), read while those entries go on being applied.
//!
//! A copy begins under the state machine's lock
//! ([`LedgerStore::begin_changing_copy`](super::LedgerStore::begin_changing_copy)); from then on
//! every write to the tree goes through `LedgerStore::write`, which calls
//! [`Copies::note_write`] first. That keeps the value a changing record held before its first
//! write since the copy began, so the copy reports the records as they were when it began
//! however long it takes to read them.
//!
//! A copy can be read two ways. [`ChangingCopy::records`] scans every changing record in the
//! tree: at a million events that is ~280 MB of sled reads, ~10 s of CPU on every node at every
//! snapshot, and it grows with history. [`ChangingCopy::records_since`] instead takes the
//! records of the previous copy (the previous snapshot file) and re-reads only the keys
//! written since that copy began, which the store tracks from one copy to the next: the
//! snapshot then costs a sequential read of the previous file plus the records that changed.

use std::collections::{HashMap, HashSet};
use std::io;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use super::{COSIG, INDEX, KEY_OWNER, MANIFEST, MAP_STATE, PARTY, Record, STATE, USER};
use crate::error::StoreError;

/// Prefixes of the records later entries change, in ascending byte order (a copy scans them
/// in this order and relies on it: see [`Copies::note_write`]).
pub(super) const CHANGING: [u8; 7] = [COSIG, KEY_OWNER, MANIFEST, PARTY, STATE, USER, INDEX];
const _: () = {
    let mut i = 1;
    while i < CHANGING.len() {
        assert!(
            CHANGING[i - 1] < CHANGING[i],
            "CHANGING must be in ascending order"
        );
        i += 1;
    }
};

/// Changed keys tracked between two copies before the store stops tracking them and the next
/// copy reads every record instead. A snapshot every 100,000 entries changes ~400,000 keys;
/// this bound keeps a node with snapshots far apart (or none) from growing without limit
/// (~2M keys of ~50 bytes: ~200 MB with the set's overhead).
const MAX_TRACKED_CHANGES: usize = 1 << 21;

/// Copies begun in this process, so a copy's number names it uniquely, across stores (an
/// install replaces the store, and a number from the old one must never match the new one).
static COPIES_BEGUN: AtomicU64 = AtomicU64::new(0);

/// True for a key a snapshot copies as a changing record. The map file's own state is left
/// out: the receiver rebuilds the map file and writes its own.
pub(super) fn is_changing(k: &[u8]) -> bool {
    k.first().is_some_and(|p| CHANGING.contains(p))
        && !(k.first() == Some(&STATE) && &k[1..] == MAP_STATE)
}

pub(super) fn copy_poisoned() -> StoreError {
    StoreError::Inconsistent("snapshot copy lock poisoned".into())
}

fn copy_ended() -> StoreError {
    StoreError::Inconsistent("the snapshot copy ended while it was read".into())
}

/// The copy state a store shares with its [`ChangingCopy`].
pub(super) type CopyHandle = Arc<Mutex<Copies>>;

/// What the store's writes record for copies.
#[derive(Default)]
pub(super) struct Copies {
    /// The copy in progress, if any.
    active: Option<CopyState>,
    /// The number of the latest copy and the changing keys written since it began. `None`
    /// until a copy begins in this store (it was just opened or imported), or after too many
    /// changes: then the next copy cannot be made from the previous one.
    changed: Option<(u64, HashSet<Vec<u8>>)>,
}

/// What a copy in progress needs from the writes made while it runs.
#[derive(Default)]
struct CopyState {
    /// The last key the copy's scan has read (it scans in ascending key order).
    cursor: Vec<u8>,
    /// Changing records written since the copy began, by key: what each held then.
    images: HashMap<Vec<u8>, BeforeImage>,
}

/// A changing record's value when a copy began, kept from its first write after that.
struct BeforeImage {
    /// `None`: the key did not exist.
    value: Option<Vec<u8>>,
    /// The copy already holds this record's value as of its start.
    copied: bool,
}

impl Copies {
    /// Records a write of `k` before it reaches `tree`, so a copy that reads `k` from the
    /// tree afterwards finds the value it held when the copy began.
    pub(super) fn note_write(&mut self, tree: &sled::Tree, k: &[u8]) -> Result<(), StoreError> {
        if !is_changing(k) {
            return Ok(());
        }
        if let Some((_, changed)) = &mut self.changed {
            if changed.len() < MAX_TRACKED_CHANGES {
                changed.insert(k.to_vec());
            } else {
                self.changed = None;
            }
        }
        if let Some(state) = self.active.as_mut()
            && !state.images.contains_key(k)
        {
            let before = tree.get(k)?.map(|v| v.to_vec());
            // The scan goes in key order: a key at or before its cursor was read already,
            // with the value it held when the copy began (this is its first write since).
            let scanned = k <= state.cursor.as_slice();
            state.images.insert(
                k.to_vec(),
                BeforeImage {
                    value: before,
                    copied: scanned,
                },
            );
        }
        Ok(())
    }
}

/// Begins a copy of the changing records of `tree` as they are now. Call when nothing is
/// staged and no write can run until this returns (the state machine's lock).
pub(super) fn begin(handle: &CopyHandle, tree: &sled::Tree) -> Result<ChangingCopy, StoreError> {
    let mut copies = handle.lock().map_err(|_| copy_poisoned())?;
    if copies.active.is_some() {
        return Err(StoreError::Inconsistent(
            "a snapshot copy is already in progress".into(),
        ));
    }
    copies.active = Some(CopyState::default());
    let number = COPIES_BEGUN.fetch_add(1, Ordering::Relaxed) + 1;
    let changed_since_previous = copies.changed.replace((number, HashSet::new()));
    Ok(ChangingCopy {
        tree: tree.clone(),
        handle: handle.clone(),
        number,
        changed_since_previous,
    })
}

/// The changing records as they were when
/// [`LedgerStore::begin_changing_copy`](super::LedgerStore::begin_changing_copy) was called,
/// read while later entries are applied. Reads go to the live tree; the first write to a key
/// after the copy began records the key's earlier value, and the copy reports that value
/// instead of the live one (or nothing, for a key created since). Recording stops when this
/// is dropped.
pub struct ChangingCopy {
    tree: sled::Tree,
    handle: CopyHandle,
    number: u64,
    /// The previous copy's number and the keys written between its beginning and this one's.
    changed_since_previous: Option<(u64, HashSet<Vec<u8>>)>,
}

impl ChangingCopy {
    /// This copy's number, unique in the process: what [`ChangingCopy::records_since`] asks
    /// of the copy before it.
    pub fn number(&self) -> u64 {
        self.number
    }

    /// Every record, each once, by a scan of the tree (~10 s at a million events). Keys
    /// deleted since the copy began are reported from their recorded value after the scan.
    /// Read them on one thread, to the end.
    pub fn records(&self) -> impl Iterator<Item = Record> + '_ {
        let scan = CHANGING
            .into_iter()
            .flat_map(|prefix| self.tree.scan_prefix([prefix]))
            .filter_map(|r| {
                let (k, live) = match r {
                    Ok(kv) => kv,
                    Err(e) => return Some(Err(e.into())),
                };
                if !is_changing(&k) {
                    return None;
                }
                let mut copies = match self.handle.lock() {
                    Ok(copies) => copies,
                    Err(_) => return Some(Err(copy_poisoned())),
                };
                let Some(state) = copies.active.as_mut() else {
                    return Some(Err(copy_ended()));
                };
                state.cursor = k.to_vec();
                match state.images.get_mut(k.as_ref()) {
                    Some(image) => {
                        image.copied = true;
                        image.value.clone().map(|v| Ok((k.to_vec(), v)))
                    }
                    None => Some(Ok((k.to_vec(), live.to_vec()))),
                }
            });
        // Evaluated once the scan is done: records deleted before the scan reached them.
        let deleted = std::iter::once(()).flat_map(move |()| {
            let mut out = Vec::new();
            match self.handle.lock() {
                Ok(mut copies) => match copies.active.as_mut() {
                    Some(state) => {
                        for (k, image) in &mut state.images {
                            if !image.copied
                                && let Some(v) = &image.value
                            {
                                image.copied = true;
                                out.push(Ok((k.clone(), v.clone())));
                            }
                        }
                    }
                    None => out.push(Err(copy_ended())),
                },
                Err(_) => out.push(Err(copy_poisoned())),
            }
            out
        });
        scan.chain(deleted)
    }

    /// The same records as [`ChangingCopy::records`], made from `previous`: every record of
    /// the copy numbered `previous_number` (the copy begun just before this one), in any
    /// order, as that copy reported them. Records whose key was not written since are taken
    /// from `previous`; the keys written since are read as they were when this copy began,
    /// in key order, after them. So the work is a pass over `previous` plus the changes, not
    /// a scan of the whole tree.
    ///
    /// `None` when this store did not track every write since that copy began: it was opened
    /// or imported since, tracked too many changes, or `previous_number` is not the copy
    /// just before this one. Read [`ChangingCopy::records`] then.
    pub fn records_since<'a>(
        &'a self,
        previous_number: u64,
        previous: impl Iterator<Item = io::Result<(Vec<u8>, Vec<u8>)>> + 'a,
    ) -> Option<impl Iterator<Item = Record> + 'a> {
        let (number, changed) = self.changed_since_previous.as_ref()?;
        if *number != previous_number {
            return None;
        }
        let unchanged = previous.filter_map(move |r| match r {
            Ok((k, _)) if changed.contains(&k) => None,
            Ok(kv) => Some(Ok(kv)),
            Err(e) => Some(Err(e.into())),
        });
        let mut keys: Vec<&Vec<u8>> = changed.iter().collect();
        keys.sort_unstable();
        let current = keys.into_iter().filter_map(move |k| {
            self.value_at_start(k)
                .transpose()
                .map(|r| r.map(|v| (k.clone(), v)))
        });
        Some(unchanged.chain(current))
    }

    /// What `k` held when this copy began (`None`: it did not exist).
    fn value_at_start(&self, k: &[u8]) -> Result<Option<Vec<u8>>, StoreError> {
        // Read the tree first, then the recorded images: a write records the image before it
        // reaches the tree, so a value read here that a write replaced is always found
        // replaced by its image below.
        let live = self.tree.get(k)?;
        let copies = self.handle.lock().map_err(|_| copy_poisoned())?;
        let state = copies.active.as_ref().ok_or_else(copy_ended)?;
        Ok(match state.images.get(k) {
            Some(image) => image.value.clone(),
            None => live.map(|v| v.to_vec()),
        })
    }
}

impl Drop for ChangingCopy {
    fn drop(&mut self) {
        if let Ok(mut copies) = self.handle.lock() {
            copies.active = None;
        }
    }
}

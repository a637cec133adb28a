//! Snapshot copies of the records later entries change (subject states, the status index, node
//! state, cosignatures, caller metadata), read while those entries go on being applied.
//!
//! A copy begins under the state machine's lock
//! ([`LedgerStore::begin_changing_copy`](super::LedgerStore::begin_changing_copy)); from then on
//! every write to the tree goes through `LedgerStore::write`, which calls
//! [`Copies::note_write`] first. That keeps the value a changing record held before its first
//! write since the copy began, so the copy reports the records as they were when it began
//! however long it takes to read them.
//!
//! A copy can be read two ways. [`ChangingCopy::records`] scans every changing record in the
//! tree: at a million events that is ~115 MB of sled reads (~280 MB before manifests and their
//! party and code index records became settled history), seconds of CPU on every node at every
//! snapshot, and it grows with history. [`ChangingCopy::records_since`] instead takes the
//! records of the previous copy (the previous snapshot file) and the records written since
//! that copy began, which the store keeps in memory from one copy to the next: the snapshot
//! then costs a sequential pass over the previous file, and no read of the tree at all.
//! [`ChangingCopy::changed_since`] gives those written records alone (with deletions), for a
//! snapshot stored as a layer on the previous one: no pass over the previous file either.

use std::collections::HashMap;
use std::io;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use super::{
    COSIG, INDEX, KEY_OWNER, MANIFEST, MAP_STATE, PARTY, Record, STATE, STATUS_INDEX, USER,
};
use crate::error::StoreError;

/// Key prefixes of the records later entries change, in ascending byte order (a copy scans
/// them in this order and relies on it: see [`Copies::note_write`]). Of the secondary indexes
/// only the status index changes; the others are settled history.
pub(super) const CHANGING: [&[u8]; 7] = [
    &[COSIG],
    &[KEY_OWNER],
    &[MANIFEST],
    &[PARTY],
    &[STATE],
    &[USER],
    &[INDEX, STATUS_INDEX],
];
const _: () = {
    let mut i = 1;
    while i < CHANGING.len() {
        // Single-byte prefixes compare by their byte; the two-byte one comes last.
        assert!(
            CHANGING[i - 1][0] < CHANGING[i][0],
            "CHANGING must be in ascending order"
        );
        i += 1;
    }
};

/// Bytes of changed records (keys and values) kept between two copies before the store stops
/// keeping them and the next copy scans every record instead. A 64-writer ingest changes
/// ~200,000 records of ~140 bytes (~30 MB) per 100,000 entries, the default snapshot interval;
/// this bound keeps a node whose snapshots are far apart (or never built) from growing without
/// limit.
const MAX_TRACKED_BYTES: usize = 256 << 20;

/// Copies begun in this process, so a copy's number names it uniquely, across stores (an
/// install replaces the store, and a number from the old one must never match the new one).
static COPIES_BEGUN: AtomicU64 = AtomicU64::new(0);

/// True for a key a snapshot copies as a changing record. The map file's own state is left
/// out: the receiver rebuilds the map file and writes its own.
pub(super) fn is_changing(k: &[u8]) -> bool {
    CHANGING.iter().any(|prefix| k.starts_with(prefix))
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
    /// The changing records written since the latest copy began. `None` until a copy begins
    /// in this store (it was just opened or imported), or after too many changes: then the
    /// next copy cannot be made from the previous one.
    changed: Option<Changes>,
}

/// The changing records written since the copy numbered `since` began, as they are now.
struct Changes {
    since: u64,
    /// Each key's latest value (`None`: deleted).
    values: HashMap<Vec<u8>, Option<Vec<u8>>>,
    /// Key and value bytes in `values`.
    bytes: usize,
}

impl Changes {
    fn new(since: u64) -> Changes {
        Changes {
            since,
            values: HashMap::new(),
            bytes: 0,
        }
    }

    /// Records that `k` now holds `v`; false once more than [`MAX_TRACKED_BYTES`] are kept.
    fn record(&mut self, k: &[u8], v: Option<&[u8]>) -> bool {
        let added = k.len() + v.map_or(0, <[u8]>::len);
        let replaced = self
            .values
            .insert(k.to_vec(), v.map(<[u8]>::to_vec))
            .map(|old| k.len() + old.map_or(0, |o| o.len()));
        self.bytes = (self.bytes + added).saturating_sub(replaced.unwrap_or(0));
        self.bytes <= MAX_TRACKED_BYTES
    }
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
    /// Records a write of `v` to `k` (`None`: a delete) before it reaches `tree`, so a copy
    /// that reads `k` from the tree afterwards finds the value it held when the copy began,
    /// and the next copy knows `k` changed.
    pub(super) fn note_write(
        &mut self,
        tree: &sled::Tree,
        k: &[u8],
        v: Option<&[u8]>,
    ) -> Result<(), StoreError> {
        if !is_changing(k) {
            return Ok(());
        }
        if let Some(changed) = &mut self.changed
            && !changed.record(k, v)
        {
            self.changed = None;
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
    let changed_since_previous = copies.changed.replace(Changes::new(number));
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
    /// The records written between the previous copy's beginning and this one's.
    changed_since_previous: Option<Changes>,
}

impl ChangingCopy {
    /// This copy's number, unique in the process: what [`ChangingCopy::records_since`] asks
    /// of the copy before it.
    pub fn number(&self) -> u64 {
        self.number
    }

    /// Every record, each once, by a scan of the tree (seconds at a million events). Keys
    /// deleted since the copy began are reported from their recorded value after the scan.
    /// Read them on one thread, to the end.
    pub fn records(&self) -> impl Iterator<Item = Record> + '_ {
        let scan = CHANGING
            .into_iter()
            .flat_map(|prefix| self.tree.scan_prefix(prefix))
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

    /// How many changing keys were written between the beginning of the copy numbered
    /// `previous_number` and this one's. `None` when this copy cannot be made from that one
    /// (see [`ChangingCopy::records_since`]).
    pub fn changes_since(&self, previous_number: u64) -> Option<usize> {
        self.changes(previous_number).map(|c| c.values.len())
    }

    /// How many key and value bytes the changes since the copy numbered `previous_number`
    /// hold (what [`ChangingCopy::changed_since`] yields); `None` as for
    /// [`ChangingCopy::changes_since`].
    pub fn changed_bytes(&self, previous_number: u64) -> Option<usize> {
        self.changes(previous_number).map(|c| c.bytes)
    }

    /// The changing records written between the beginning of the copy numbered
    /// `previous_number` (the copy begun just before this one) and this one's, as they were
    /// when this copy began, in key order: `None` for a key deleted since. Applied to that
    /// copy's records, they give this copy's ([`ChangingCopy::records`]); a snapshot made of
    /// layers stores just these. `None` as for [`ChangingCopy::records_since`].
    pub fn changed_since(
        &self,
        previous_number: u64,
    ) -> Option<impl Iterator<Item = (Vec<u8>, Option<Vec<u8>>)> + '_> {
        let mut changed: Vec<(&Vec<u8>, &Option<Vec<u8>>)> =
            self.changes(previous_number)?.values.iter().collect();
        changed.sort_unstable_by(|a, b| a.0.cmp(b.0));
        Some(changed.into_iter().map(|(k, v)| (k.clone(), v.clone())))
    }

    fn changes(&self, previous_number: u64) -> Option<&Changes> {
        self.changed_since_previous
            .as_ref()
            .filter(|c| c.since == previous_number)
    }

    /// The same records as [`ChangingCopy::records`], made from `previous`: every record of
    /// the copy numbered `previous_number` (the copy begun just before this one), in any
    /// order, as that copy reported them. Records whose key was not written since are taken
    /// from `previous`; then come the records written since, as they were when this copy
    /// began, in key order, from memory. So the work is one pass over `previous`, without
    /// reading the tree.
    ///
    /// `None` when this store did not keep every write since that copy began: it was opened
    /// or imported since, kept too many changes, or `previous_number` is not the copy just
    /// before this one. Read [`ChangingCopy::records`] then.
    pub fn records_since<'a>(
        &'a self,
        previous_number: u64,
        previous: impl Iterator<Item = io::Result<(Vec<u8>, Vec<u8>)>> + 'a,
    ) -> Option<impl Iterator<Item = Record> + 'a> {
        let changed = &self.changes(previous_number)?.values;
        let unchanged = previous.filter_map(move |r| match r {
            Ok((k, _)) if changed.contains_key(&k) => None,
            Ok(kv) => Some(Ok(kv)),
            Err(e) => Some(Err(e.into())),
        });
        let mut written: Vec<(&Vec<u8>, &Vec<u8>)> = changed
            .iter()
            .filter_map(|(k, v)| Some((k, v.as_ref()?)))
            .collect();
        written.sort_unstable();
        let current = written.into_iter().map(|(k, v)| Ok((k.clone(), v.clone())));
        Some(unchanged.chain(current))
    }
}

impl Drop for ChangingCopy {
    fn drop(&mut self) {
        if let Ok(mut copies) = self.handle.lock() {
            copies.active = None;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn changes_count_the_bytes_they_hold_and_refuse_past_the_bound() {
        let mut changes = Changes::new(1);
        let value = vec![7u8; 1 << 20];
        // Rewriting one key many times holds one value, not the sum of every write.
        for _ in 0..1_000 {
            assert!(changes.record(b"Mstate", Some(&value)));
        }
        assert_eq!(changes.bytes, 6 + value.len());
        assert!(changes.record(b"Mstate", None));
        assert_eq!(changes.bytes, 6);
        // Distinct keys add up until the bound.
        let mut accepted = 0usize;
        while changes.record(format!("Mkey{accepted:08}").as_bytes(), Some(&value)) {
            accepted += 1;
            assert!(accepted < 1_000, "never refused");
        }
        // 6 bytes held already, 12 + 1 MiB per key.
        assert_eq!(accepted, (MAX_TRACKED_BYTES - 6) / (value.len() + 12));
    }
}

//! Snapshot copies of the records later entries change (subject states, indexes, node state,
//! cosignatures, caller metadata), read while those entries go on being applied.
//!
//! A copy begins under the state machine's lock ([`LedgerStore::begin_changing_copy`](super::LedgerStore::begin_changing_copy)); from
//! then on every write to the tree goes through `LedgerStore::write`, which keeps the value
//! a changing record held before its first write since, so the copy reports the records as
//! they were when it began however long it takes to read them.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use super::{COSIG, INDEX, KEY_OWNER, MANIFEST, MAP_STATE, PARTY, Record, STATE, USER};
use crate::error::StoreError;

/// Prefixes of the records later entries change, in ascending byte order (a copy scans them
/// in this order and relies on it: see `LedgerStore::write`).
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

/// True for a key a snapshot copies as a changing record. The map file's own state is left
/// out: the receiver rebuilds the map file and writes its own.
pub(super) fn is_changing(k: &[u8]) -> bool {
    k.first().is_some_and(|p| CHANGING.contains(p))
        && !(k.first() == Some(&STATE) && &k[1..] == MAP_STATE)
}

pub(super) fn copy_poisoned() -> StoreError {
    StoreError::Inconsistent("snapshot copy lock poisoned".into())
}

/// The state of a [`ChangingCopy`], shared with the store's writes.
pub(super) type CopyHandle = Arc<Mutex<Option<CopyState>>>;

/// What a copy in progress needs from the writes made while it runs.
#[derive(Default)]
pub(super) struct CopyState {
    /// The last key the copy's scan has read (it scans in ascending key order).
    pub(super) cursor: Vec<u8>,
    /// Changing records written since the copy began, by key: what each held then.
    pub(super) images: HashMap<Vec<u8>, BeforeImage>,
}

/// A changing record's value when a copy began, kept from its first write after that.
pub(super) struct BeforeImage {
    /// `None`: the key did not exist.
    pub(super) value: Option<Vec<u8>>,
    /// The copy already holds this record's value as of its start.
    pub(super) copied: bool,
}

/// The changing records as they were when [`LedgerStore::begin_changing_copy`](super::LedgerStore::begin_changing_copy) was called,
/// read while later entries are applied. The scan reads the live tree; the first write to a
/// key after the copy began records the key's earlier value, and the scan reports that value
/// instead of the live one (or nothing, for a key created since). Keys deleted since are
/// reported from their recorded value after the scan. Recording stops when this is dropped.
pub struct ChangingCopy {
    pub(super) tree: sled::Tree,
    pub(super) handle: CopyHandle,
}

impl ChangingCopy {
    /// The records, each once. Read them on one thread, to the end.
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
                let mut copy = match self.handle.lock() {
                    Ok(copy) => copy,
                    Err(_) => return Some(Err(copy_poisoned())),
                };
                let Some(state) = copy.as_mut() else {
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
                Ok(mut copy) => match copy.as_mut() {
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
}

impl Drop for ChangingCopy {
    fn drop(&mut self) {
        if let Ok(mut copy) = self.handle.lock() {
            *copy = None;
        }
    }
}

fn copy_ended() -> StoreError {
    StoreError::Inconsistent("the snapshot copy ended while it was read".into())
}

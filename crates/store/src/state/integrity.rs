//! The stored ledger's integrity checks: the integrity checkpoint they compare against, and
//! one walk over stored entries that recomputes each leaf, the hash chain and the tree root.
//!
//! An entry's leaf is checked against the chain link recorded after it: the next entry names
//! it as its predecessor's link, and after the last entry of a walk it is the chain head or
//! the checkpoint's recorded link. (Leaves are not stored: see
//! [`FIRST_STORED_LEVEL`](super::FIRST_STORED_LEVEL).) A damaged entry is named by its index;
//! damage to the link recorded after it (the next entry's link field, the chain head or the
//! checkpoint's link) is reported against the same index, since the two cannot be told apart.
//!
//! A node must not serve a damaged ledger, but reading every entry at every start makes
//! start-up grow with history (a million entries is ~1.5 GB to read and hash). So the work is
//! split at the *integrity checkpoint*, a ledger size whose tree root and chain link the node
//! recorded when it knew them to be good (at each snapshot and each published checkpoint):
//!
//! - **at start-up** ([`LedgerStore::verify_recent`]): every entry after the checkpoint against
//!   the chain from the recorded link to the chain head, and the tree root at the checkpoint,
//!   recomputed from the stored Merkle nodes (`O(log n)` reads, and the entries of its last
//!   incomplete group of 8 leaves), against the recorded root. This covers what a crash can
//!   leave half-written, and costs the entries since the last snapshot, not the history;
//! - **after start-up** ([`HistoryCheck`]): every entry below the checkpoint against the chain
//!   from genesis to the recorded link, and the root recomputed from their leaves against the
//!   recorded root. Entries below the checkpoint never change, so this runs beside the ledger
//!   without its lock, and finds damage to settled history (a bad disk, an edited file);
//! - **both at once** ([`LedgerStore::verify_integrity`]), for a state just installed from a
//!   snapshot, which the node has never checked before.
//!
//! Integrity checkpoints written before the chain link was recorded with them (40 bytes
//! instead of 72) cannot seed the start-up walk, so a store that has one is checked in full at
//! start-up, as before.

use std::ops::Range;

use wasteledger_core::entry::{LedgerEntry, chain_link, leaf_hash};
use wasteledger_core::hash::Digest;
use wasteledger_core::merkle::{Blake3Hasher, MerkleTree, NodeStore};

use super::{ENTRY, INTEGRITY, LedgerStore, STATE, key};
use crate::error::StoreError;

/// Why an integrity check failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum IntegrityError {
    /// A stored entry no longer hashes to the chain link recorded after it (in the next entry,
    /// or as the chain head or checkpoint link after the last one).
    #[error(
        "ledger entry {index} is damaged: its bytes no longer hash to the chain link recorded after it"
    )]
    LeafMismatch {
        /// First bad index.
        index: u64,
    },
    /// An entry is missing or unreadable.
    #[error("ledger entry {index} is missing or unreadable")]
    MissingEntry {
        /// First bad index.
        index: u64,
    },
    /// Entry bytes do not parse or name another index.
    #[error("ledger entry {index} is malformed")]
    Malformed {
        /// First bad index.
        index: u64,
    },
    /// The chain link over entries is broken.
    #[error("the chain link before entry {index} does not match")]
    ChainMismatch {
        /// First bad index.
        index: u64,
    },
    /// The recomputed root differs from the stored checkpoint.
    #[error("recomputed root at size {size} differs from the stored checkpoint")]
    RootMismatch {
        /// Checkpoint size.
        size: u64,
    },
}

impl IntegrityError {
    /// The first ledger index found damaged, if the failure names one.
    pub fn first_bad_index(&self) -> Option<u64> {
        match self {
            IntegrityError::LeafMismatch { index }
            | IntegrityError::MissingEntry { index }
            | IntegrityError::Malformed { index }
            | IntegrityError::ChainMismatch { index } => Some(*index),
            IntegrityError::RootMismatch { .. } => None,
        }
    }
}

/// A ledger size whose tree root and chain link were recorded as good, stored under
/// `S integrity_checkpoint` as `size (u64 BE) ‖ root ‖ chain link after `size` entries`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) struct IntegrityCheckpoint {
    pub(super) size: u64,
    pub(super) root: Digest,
    /// `None` in records written before the link was stored with them.
    pub(super) chain: Option<Digest>,
}

/// Record length without the chain link (older stores).
const RECORD_WITHOUT_CHAIN: usize = 8 + 32;
/// Record length with it.
const RECORD_WITH_CHAIN: usize = 8 + 32 + 32;

impl IntegrityCheckpoint {
    pub(super) fn encode(size: u64, root: &Digest, chain: &Digest) -> Vec<u8> {
        let mut v = Vec::with_capacity(RECORD_WITH_CHAIN);
        v.extend_from_slice(&size.to_be_bytes());
        v.extend_from_slice(root.as_bytes());
        v.extend_from_slice(chain.as_bytes());
        v
    }

    /// `None` for a record of any other length, which the checks treat as no checkpoint (as
    /// before records had a version): the full walk still checks every entry and the chain.
    pub(super) fn decode(bytes: &[u8]) -> Option<IntegrityCheckpoint> {
        if bytes.len() != RECORD_WITHOUT_CHAIN && bytes.len() != RECORD_WITH_CHAIN {
            return None;
        }
        let size = u64::from_be_bytes(bytes.get(..8)?.try_into().ok()?);
        let root = Digest::from_slice(bytes.get(8..40)?)?;
        let chain = match bytes.get(40..) {
            Some(rest) if !rest.is_empty() => Some(Digest::from_slice(rest)?),
            _ => None,
        };
        Some(IntegrityCheckpoint { size, root, chain })
    }
}

/// How a walk ended.
enum Walked {
    /// Every entry in the range checked out, and the chain ends at the expected link.
    Complete,
    /// The caller asked it to stop first.
    Stopped,
}

/// How often (in entries) a walk asks whether to stop.
const STOP_POLL_EVERY: u64 = 4096;

/// Walks entries `range` of `tree` in index order (one range scan, not a point read per
/// index): each entry must decode, carry its index and hash to the chain link recorded after
/// it, which the next entry names as its predecessor's and `end` gives after the last one.
/// The first entry must name `chain`, the link before the range (an empty range: `chain` must
/// be `end`). Each good leaf is handed to `on_leaf` with its index and the chain link after it.
fn walk(
    tree: &sled::Tree,
    range: Range<u64>,
    mut chain: Digest,
    end: Digest,
    on_leaf: &mut dyn FnMut(u64, Digest, Digest),
    should_stop: &mut dyn FnMut() -> bool,
) -> Result<Walked, IntegrityError> {
    let end_index = range.end;
    let mut entries =
        tree.range(key(ENTRY, &range.start.to_be_bytes())..key(ENTRY, &range.end.to_be_bytes()));
    // The entry before this one, whose leaf the link this one names must confirm.
    let mut unconfirmed = None;
    for index in range {
        if index % STOP_POLL_EVERY == 0 && should_stop() {
            return Ok(Walked::Stopped);
        }
        let bytes = match entries.next() {
            Some(Ok((k, v))) if k.get(1..) == Some(&index.to_be_bytes()[..]) => v,
            _ => return Err(IntegrityError::MissingEntry { index }),
        };
        let entry = LedgerEntry::decode(&bytes).map_err(|_| IntegrityError::Malformed { index })?;
        if entry.index != index {
            return Err(IntegrityError::Malformed { index });
        }
        if entry.chain_prev != chain {
            return Err(match unconfirmed {
                Some(previous) => IntegrityError::LeafMismatch { index: previous },
                None => IntegrityError::ChainMismatch { index },
            });
        }
        let leaf = leaf_hash(&bytes);
        chain = chain_link(&chain, &leaf);
        on_leaf(index, leaf, chain);
        unconfirmed = Some(index);
    }
    match unconfirmed {
        _ if chain == end => Ok(Walked::Complete),
        Some(last) => Err(IntegrityError::LeafMismatch { index: last }),
        None => Err(IntegrityError::ChainMismatch { index: end_index }),
    }
}

/// A [`NodeStore`] that keeps nothing: a [`MerkleTree`] over it still computes its current
/// root from the in-memory frontier (at most 64 hashes), which is all a walk needs, without
/// holding two hashes per leaf of a history that may have billions.
struct FrontierOnly;

impl NodeStore for FrontierOnly {
    fn get(&self, _level: u8, _index: u64) -> Option<Digest> {
        None
    }

    fn put(&mut self, _level: u8, _index: u64, _hash: Digest) {}
}

/// Recomputes the root of leaves `[0, size)` from a stream of them, in index order.
struct StreamingRoot {
    tree: MerkleTree<Blake3Hasher, FrontierOnly>,
    size: u64,
}

impl StreamingRoot {
    fn up_to(size: u64) -> StreamingRoot {
        StreamingRoot {
            tree: MerkleTree::new(FrontierOnly),
            size,
        }
    }

    fn push(&mut self, index: u64, leaf: Digest) {
        if index < self.size {
            self.tree.append_leaf_hash(leaf);
        }
    }

    fn root(&self) -> Digest {
        self.tree.root()
    }
}

/// The check of settled history left after [`LedgerStore::verify_recent`]: every entry below
/// the integrity checkpoint. Owns a handle to the tree, so it runs without the store (entries
/// below the checkpoint never change while the ledger grows). A snapshot install replaces the
/// whole state under it, so the caller must stop it or discard its verdict when one happens
/// (the state machine counts installs).
#[derive(Clone, Debug)]
pub struct HistoryCheck {
    tree: sled::Tree,
    ledger_id: Digest,
    size: u64,
    root: Digest,
    chain: Digest,
}

/// How a [`HistoryCheck`] ended, when it found no damage.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum HistoryChecked {
    /// Every entry below the checkpoint was checked and matched.
    Complete,
    /// Stopped on request before the end; nothing is known about the rest.
    Stopped,
}

impl HistoryCheck {
    /// Entries it checks.
    pub fn entries(&self) -> u64 {
        self.size
    }

    /// Walks every entry below the integrity checkpoint, asking `should_stop` every few
    /// thousand entries. Costs one read and one hash per entry; run it off the async runtime.
    pub fn run(
        &self,
        should_stop: &mut dyn FnMut() -> bool,
    ) -> Result<HistoryChecked, IntegrityError> {
        let mut root = StreamingRoot::up_to(self.size);
        let walked = walk(
            &self.tree,
            0..self.size,
            self.ledger_id,
            self.chain,
            &mut |index, leaf, _| root.push(index, leaf),
            should_stop,
        )?;
        match walked {
            Walked::Stopped => Ok(HistoryChecked::Stopped),
            Walked::Complete if root.root() != self.root => {
                Err(IntegrityError::RootMismatch { size: self.size })
            }
            Walked::Complete => Ok(HistoryChecked::Complete),
        }
    }
}

impl LedgerStore {
    /// The integrity checkpoint record for `size` (at most the current size) with tree root
    /// `root`: the chain link after `size` entries is the chain head, or what entry `size`
    /// names as its predecessor's link.
    pub(super) fn integrity_record(&self, size: u64, root: &Digest) -> Result<Vec<u8>, StoreError> {
        let chain = if size == self.merkle.size() {
            self.chain_head
        } else {
            let bytes = self
                .read(&key(ENTRY, &size.to_be_bytes()))?
                .ok_or(StoreError::Corrupt("entry after the integrity checkpoint"))?;
            LedgerEntry::decode(&bytes)
                .map_err(|_| StoreError::Corrupt("entry after the integrity checkpoint"))?
                .chain_prev
        };
        Ok(IntegrityCheckpoint::encode(size, root, &chain))
    }

    /// Records the checkpoint the integrity checks compare against: ledger size `size` (at
    /// most the current size) has tree root `root`.
    pub fn record_integrity_checkpoint(&self, size: u64, root: &Digest) -> Result<(), StoreError> {
        let record = self.integrity_record(size, root)?;
        self.write([(key(STATE, INTEGRITY), Some(record))])
    }

    fn integrity_checkpoint(&self) -> Option<IntegrityCheckpoint> {
        match self.tree.get(key(STATE, INTEGRITY)) {
            Ok(Some(v)) => IntegrityCheckpoint::decode(&v),
            _ => None,
        }
    }

    /// Commits what is staged, so that the checks read what is on disk.
    fn commit_for_check(&self) -> Result<(), IntegrityError> {
        self.commit().map_err(|_| IntegrityError::MissingEntry {
            index: self.merkle.size(),
        })
    }

    /// The start-up check (see the module doc): the entries after the integrity checkpoint,
    /// the chain from there to the head, and the root at the checkpoint from the stored Merkle
    /// nodes. Returns the check of the history below the checkpoint, which is left to run
    /// after start-up; `None` when there is none (no checkpoint, or an old one without its
    /// chain link, in which case this checked everything).
    ///
    /// A node that fails it must not serve.
    pub fn verify_recent(&self) -> Result<Option<HistoryCheck>, IntegrityError> {
        self.commit_for_check()?;
        let size = self.merkle.size();
        let (checkpoint, chain) = match self.integrity_checkpoint() {
            Some(c) if c.size > size => return Err(IntegrityError::RootMismatch { size: c.size }),
            Some(c) => match c.chain {
                Some(chain) => (c, chain),
                None => return self.verify_integrity().map(|()| None),
            },
            None => return self.verify_integrity().map(|()| None),
        };
        walk(
            &self.tree,
            checkpoint.size..size,
            chain,
            self.chain_head,
            &mut |_, _, _| {},
            &mut || false,
        )?;
        if self.merkle.root_at(checkpoint.size).ok() != Some(checkpoint.root) {
            return Err(IntegrityError::RootMismatch {
                size: checkpoint.size,
            });
        }
        Ok((checkpoint.size > 0).then(|| HistoryCheck {
            tree: self.tree.clone(),
            ledger_id: self.genesis.ledger_id,
            size: checkpoint.size,
            root: checkpoint.root,
            chain,
        }))
    }

    /// The whole check at once: every entry against the link recorded after it, the chain
    /// from genesis to the head, and, if an integrity checkpoint was recorded, the root
    /// recomputed from the leaves (and the chain link, if recorded) at its size. Names the
    /// first damaged index. Reads the whole ledger: [`LedgerStore::verify_recent`] is the
    /// start-up check.
    pub fn verify_integrity(&self) -> Result<(), IntegrityError> {
        self.commit_for_check()?;
        let size = self.merkle.size();
        let checkpoint = self.integrity_checkpoint();
        let checkpoint_size = checkpoint.map_or(0, |c| c.size.min(size));
        let mut root = StreamingRoot::up_to(checkpoint_size);
        // The chain link after `checkpoint_size` entries, seen on the way.
        let mut chain_at_checkpoint = (checkpoint_size == 0).then_some(self.genesis.ledger_id);
        walk(
            &self.tree,
            0..size,
            self.genesis.ledger_id,
            self.chain_head,
            &mut |index, leaf, chain| {
                root.push(index, leaf);
                if index + 1 == checkpoint_size {
                    chain_at_checkpoint = Some(chain);
                }
            },
            &mut || false,
        )?;
        if let Some(c) = checkpoint {
            let chain_ok = c
                .chain
                .is_none_or(|recorded| Some(recorded) == chain_at_checkpoint);
            if c.size > size || root.root() != c.root || !chain_ok {
                return Err(IntegrityError::RootMismatch { size: c.size });
            }
        }
        Ok(())
    }
}

//! Storage of perfect-subtree hashes: the [`NodeStore`] trait and the in-memory [`MemNodeStore`].

use std::fmt;

use crate::hash::Digest;

/// Where a [`MerkleTree`](super::MerkleTree) keeps the hashes of its perfect subtrees.
///
/// Node `(level, index)` is the root of the perfect subtree over leaves
/// `[index << level, (index + 1) << level)`; level 0 holds the leaf hashes. Only perfect
/// subtrees are stored: they never change once complete, so a store is append-only and every
/// stored hash stays valid for every later tree size. The hashes of incomplete subtrees on the
/// right edge of a tree are recomputed from the perfect ones when needed (at most `log2 n`
/// hashes).
///
/// The trait is deliberately minimal and object-safe (`Box<dyn NodeStore>` works) so that a
/// disk-backed store is a thin adapter. Durability, batching and I/O errors are the
/// implementation's concern: a store that cannot read a node reports it as absent, and the tree
/// turns that into [`MerkleError::MissingNode`](super::MerkleError::MissingNode).
pub trait NodeStore {
    /// The hash of node `(level, index)`, or `None` if the store does not have it.
    fn get(&self, level: u8, index: u64) -> Option<Digest>;

    /// Records the hash of node `(level, index)`, replacing any earlier value.
    ///
    /// The tree writes each level left to right, in increasing `index` order, and rewrites an
    /// existing node only when a tree is re-opened at a smaller size and grown again.
    fn put(&mut self, level: u8, index: u64, hash: Digest);
}

impl<S: NodeStore + ?Sized> NodeStore for &mut S {
    fn get(&self, level: u8, index: u64) -> Option<Digest> {
        (**self).get(level, index)
    }

    fn put(&mut self, level: u8, index: u64, hash: Digest) {
        (**self).put(level, index, hash);
    }
}

impl<S: NodeStore + ?Sized> NodeStore for Box<S> {
    fn get(&self, level: u8, index: u64) -> Option<Digest> {
        (**self).get(level, index)
    }

    fn put(&mut self, level: u8, index: u64, hash: Digest) {
        (**self).put(level, index, hash);
    }
}

/// An in-memory [`NodeStore`]: one dense vector of hashes per level.
///
/// A tree of `n` leaves keeps just under `2n` hashes (64 bytes per leaf).
///
/// Levels are dense because the tree fills them left to right. A `put` that would leave a gap
/// (an `index` beyond the end of its level) is not something the tree ever does; it is dropped
/// rather than padded with a made-up hash, so a later read of that node reports it as missing
/// instead of returning a wrong value.
#[derive(Clone, Default, PartialEq, Eq)]
pub struct MemNodeStore {
    levels: Vec<Vec<Digest>>,
}

impl MemNodeStore {
    /// An empty store.
    pub fn new() -> Self {
        Self::default()
    }

    /// Total number of node hashes held, over all levels.
    pub fn node_count(&self) -> usize {
        self.levels.iter().map(Vec::len).sum()
    }
}

impl NodeStore for MemNodeStore {
    fn get(&self, level: u8, index: u64) -> Option<Digest> {
        let index = usize::try_from(index).ok()?;
        self.levels.get(usize::from(level))?.get(index).copied()
    }

    fn put(&mut self, level: u8, index: u64, hash: Digest) {
        let level = usize::from(level);
        if self.levels.len() <= level {
            self.levels.resize_with(level + 1, Vec::new);
        }
        let nodes = &mut self.levels[level];
        match usize::try_from(index) {
            Ok(i) if i < nodes.len() => nodes[i] = hash,
            Ok(i) if i == nodes.len() => nodes.push(hash),
            // A gap, or an index this platform cannot address: see the type's documentation.
            _ => {}
        }
    }
}

impl fmt::Debug for MemNodeStore {
    // The full contents can be millions of hashes; the shape is what is useful in a log.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("MemNodeStore")
            .field(
                "nodes_per_level",
                &self.levels.iter().map(Vec::len).collect::<Vec<_>>(),
            )
            .finish()
    }
}

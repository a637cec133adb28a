//! The incremental Merkle tree: appends, roots and proof construction over a [`NodeStore`].

use std::fmt;
use std::marker::PhantomData;

use super::store::{MemNodeStore, NodeStore};
use super::{MerkleError, MerkleHasher};
use crate::hash::Digest;

/// An append-only RFC 9162 Merkle tree whose perfect subtrees live in a [`NodeStore`].
///
/// - [`append_leaf_hash`](Self::append_leaf_hash) stores the leaf and every perfect subtree the
///   leaf completes: amortised one node hash per append, and no store reads.
/// - [`root`](Self::root) is computed from the in-memory frontier (at most 64 hashes) without
///   reading the store; [`root_at`](Self::root_at), [`inclusion_proof`](Self::inclusion_proof)
///   and [`consistency_proof`](Self::consistency_proof) work for any earlier size too, with
///   O(log n) store reads and hashes, because perfect subtrees never change once stored.
///
/// Roots and proofs are exactly those of RFC 9162 §2.1 for the hasher `H`, so they verify with
/// [`verify_inclusion`](super::verify_inclusion) and
/// [`verify_consistency`](super::verify_consistency) and with any other conforming
/// implementation.
pub struct MerkleTree<H: MerkleHasher, S: NodeStore = MemNodeStore> {
    store: S,
    size: u64,
    /// Roots of the perfect subtrees that make up the tree, leftmost (largest) first: one per set
    /// bit of `size`, the subtree for bit `l` having level `l`. Kept in memory so that appends
    /// and the current root never read the store.
    frontier: Vec<Digest>,
    /// `fn() -> H` rather than `H`: the tree owns no `H`, and this keeps it `Send + Sync`
    /// whatever `H` is.
    hasher: PhantomData<fn() -> H>,
}

impl<H: MerkleHasher> Default for MerkleTree<H, MemNodeStore> {
    fn default() -> Self {
        Self::new(MemNodeStore::new())
    }
}

impl<H: MerkleHasher, S: NodeStore> fmt::Debug for MerkleTree<H, S> {
    // The store can be huge and need not be Debug; the size and frontier identify the tree.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("MerkleTree")
            .field("size", &self.size)
            .field("frontier", &self.frontier)
            .finish_non_exhaustive()
    }
}

impl<H: MerkleHasher, S: NodeStore> MerkleTree<H, S> {
    /// An empty tree that writes its nodes to `store`.
    ///
    /// Whatever `store` already holds is ignored and overwritten as the tree grows; to continue
    /// a tree that was persisted earlier, use [`from_store`](Self::from_store).
    pub fn new(store: S) -> Self {
        Self {
            store,
            size: 0,
            frontier: Vec::new(),
            hasher: PhantomData,
        }
    }

    /// Re-opens a tree of `size` leaves whose nodes were written to `store` by an earlier
    /// [`MerkleTree`] with the same hasher.
    ///
    /// Reads the `popcount(size)` frontier nodes (at most 64). Nodes the store holds beyond
    /// `size` (for example, written before a crash that lost the last appends) are ignored and
    /// overwritten by later appends.
    ///
    /// # Errors
    ///
    /// [`MerkleError::MissingNode`] if the store lacks a node a tree of `size` leaves must have:
    /// the store is incomplete or `size` is larger than what was persisted.
    pub fn from_store(store: S, size: u64) -> Result<Self, MerkleError> {
        let mut tree = Self::new(store);
        tree.size = size;
        // The subtree for bit `l` of `size` starts right after the subtrees of the higher bits.
        let mut start = 0u64;
        for level in (0..u64::BITS).rev() {
            if (size >> level) & 1 == 1 {
                let node = tree.node(level, start >> level)?;
                tree.frontier.push(node);
                start += 1 << level;
            }
        }
        Ok(tree)
    }

    /// The number of leaves.
    pub fn size(&self) -> u64 {
        self.size
    }

    /// The node store.
    pub fn store(&self) -> &S {
        &self.store
    }

    /// Gives the node store back, for example to re-open it later with
    /// [`from_store`](Self::from_store).
    pub fn into_store(self) -> S {
        self.store
    }

    /// Appends a leaf given its hash (see [`MerkleHasher::hash_leaf`]) and returns its index.
    ///
    /// Stores the leaf hash and the hash of every perfect subtree the leaf completes; that is
    /// `trailing_zeros(new size)` node hashes, one on average.
    ///
    /// # Panics
    ///
    /// If the tree already holds `u64::MAX` leaves. (At a million appends per second that takes
    /// over half a million years.)
    pub fn append_leaf_hash(&mut self, leaf_hash: Digest) -> u64 {
        let index = self.size;
        let new_size = index
            .checked_add(1)
            .unwrap_or_else(|| panic!("Merkle tree is full: it holds u64::MAX leaves"));
        self.store.put(0, index, leaf_hash);
        // The last `trailing_zeros(new_size)` frontier subtrees have levels 0, 1, …; together
        // with the new leaf they now form one perfect subtree. Merge them right to left, storing
        // each completed subtree on the way.
        let merged = new_size.trailing_zeros() as usize;
        let keep = self.frontier.len().saturating_sub(merged);
        let mut hash = leaf_hash;
        let mut level = 0u32;
        for left in self.frontier.drain(keep..).rev() {
            hash = H::hash_children(&left, &hash);
            level += 1;
            self.store.put(level_u8(level), index >> level, hash);
        }
        self.frontier.push(hash);
        self.size = new_size;
        index
    }

    /// Appends a leaf whose entry bytes are `data` and returns its index.
    ///
    /// Equivalent to `append_leaf_hash(H::hash_leaf(data))`.
    ///
    /// # Panics
    ///
    /// As [`append_leaf_hash`](Self::append_leaf_hash).
    pub fn append(&mut self, data: &[u8]) -> u64 {
        self.append_leaf_hash(H::hash_leaf(data))
    }

    /// The root hash of the current tree (`H::empty_root()` when empty).
    ///
    /// Costs `popcount(size) - 1` node hashes and no store reads.
    pub fn root(&self) -> Digest {
        fold_right::<H>(self.frontier.iter().rev().copied())
    }

    /// The root hash the tree had when it held `size` leaves.
    ///
    /// # Errors
    ///
    /// - [`MerkleError::SizeOutOfRange`] if `size` is larger than the tree;
    /// - [`MerkleError::MissingNode`] if the store lacks a node it should have.
    pub fn root_at(&self, size: u64) -> Result<Digest, MerkleError> {
        self.check_size(size)?;
        if size == self.size {
            return Ok(self.root());
        }
        self.range_hash(0, size)
    }

    /// The hash of leaf `index`.
    ///
    /// # Errors
    ///
    /// - [`MerkleError::IndexOutOfRange`] if `index >= size()`;
    /// - [`MerkleError::MissingNode`] if the store lacks it.
    pub fn leaf_hash(&self, index: u64) -> Result<Digest, MerkleError> {
        if index >= self.size {
            return Err(MerkleError::IndexOutOfRange {
                index,
                size: self.size,
            });
        }
        self.node(0, index)
    }

    /// The RFC 9162 §2.1.3.1 inclusion proof (`PATH(index, D[size])`) of leaf `index` in the tree
    /// as it was at `size` leaves, ordered from the leaf's sibling up to the root's child.
    ///
    /// # Errors
    ///
    /// - [`MerkleError::SizeOutOfRange`] if `size` is larger than the tree;
    /// - [`MerkleError::IndexOutOfRange`] if `index >= size`;
    /// - [`MerkleError::MissingNode`] if the store lacks a node it should have.
    pub fn inclusion_proof(&self, index: u64, size: u64) -> Result<Vec<Digest>, MerkleError> {
        self.check_size(size)?;
        if index >= size {
            return Err(MerkleError::IndexOutOfRange { index, size });
        }
        let mut proof = Vec::with_capacity(max_proof_len(size));
        self.push_path(0, index, size, &mut proof)?;
        Ok(proof)
    }

    /// The RFC 9162 §2.1.4.1 consistency proof (`PROOF(old_size, D[new_size])`) that the tree at
    /// `new_size` leaves extends the tree at `old_size` leaves.
    ///
    /// Equal sizes give the empty proof.
    ///
    /// # Errors
    ///
    /// - [`MerkleError::SizesOutOfOrder`] if `old_size > new_size`;
    /// - [`MerkleError::SizeOutOfRange`] if `new_size` is larger than the tree;
    /// - [`MerkleError::EmptyOldTree`] if `old_size` is 0: RFC 9162 defines no such proof, and
    ///   [`verify_consistency`](super::verify_consistency) rejects it;
    /// - [`MerkleError::MissingNode`] if the store lacks a node it should have.
    pub fn consistency_proof(
        &self,
        old_size: u64,
        new_size: u64,
    ) -> Result<Vec<Digest>, MerkleError> {
        if old_size > new_size {
            return Err(MerkleError::SizesOutOfOrder { old_size, new_size });
        }
        self.check_size(new_size)?;
        if old_size == 0 {
            return Err(MerkleError::EmptyOldTree);
        }
        let mut proof = Vec::with_capacity(max_proof_len(new_size) + 1);
        if old_size == new_size {
            return Ok(proof);
        }
        // The old tree's rightmost perfect subtree is the largest one ending at `old_size`. The
        // proof is that subtree's root followed by its inclusion path in the new tree, which is
        // what RFC 9162's recursive SUBPROOF unrolls to. When `old_size` is a power of two that
        // subtree is the whole old tree, whose root the verifier already has, so it is left out.
        let level = old_size.trailing_zeros();
        let index = (old_size - 1) >> level;
        if index != 0 {
            proof.push(self.node(level, index)?);
        }
        self.push_path(level, index, new_size, &mut proof)?;
        Ok(proof)
    }

    /// Appends to `out` the inclusion path of node `(level, index)` in the tree of `size` leaves:
    /// for each level from `level` up to below the root, the sibling of the node's ancestor, if
    /// that sibling has any leaves below `size`.
    ///
    /// Requires `(index + 1) << level <= size`, i.e. a perfect node inside the tree.
    fn push_path(
        &self,
        level: u32,
        index: u64,
        size: u64,
        out: &mut Vec<Digest>,
    ) -> Result<(), MerkleError> {
        // The root sits at the lowest level whose single node covers all `size` leaves.
        let root_level = u64::BITS - (size - 1).leading_zeros();
        let mut node = index;
        for l in level..root_level {
            let sibling = node ^ 1;
            if sibling < size >> l {
                // A complete sibling subtree: stored.
                out.push(self.node(l, sibling)?);
            } else if sibling <= (size - 1) >> l {
                // The sibling holds the last leaves but is not yet complete (the RFC's right
                // subtree `D[k:n]`); hash it from the perfect subtrees that cover it.
                out.push(self.range_hash(sibling << l, size)?);
            }
            // Otherwise no leaf lies right of this node yet: RFC 9162 then hashes nothing at this
            // level (the node is promoted unchanged), so the proof has no element for it.
            node >>= 1;
        }
        Ok(())
    }

    /// `MTH(D[start:end])` for a range that the RFC recursion can produce: `start` is a multiple
    /// of the smallest power of two `>= end - start`, so the range splits into perfect, aligned
    /// subtrees, one per set bit of `end - start`, largest first.
    fn range_hash(&self, start: u64, end: u64) -> Result<Digest, MerkleError> {
        // Visit the subtrees right to left (lowest bit first) so the right fold needs no buffer.
        let mut higher_bits = end - start;
        let mut acc: Option<Digest> = None;
        while higher_bits != 0 {
            let level = higher_bits.trailing_zeros();
            higher_bits &= higher_bits - 1;
            // The subtree for bit `level` starts after the subtrees of all higher bits.
            let node = self.node(level, (start + higher_bits) >> level)?;
            acc = Some(match acc {
                None => node,
                Some(right) => H::hash_children(&node, &right),
            });
        }
        Ok(acc.unwrap_or_else(H::empty_root))
    }

    /// Reads node `(level, index)`, which the caller knows must exist.
    fn node(&self, level: u32, index: u64) -> Result<Digest, MerkleError> {
        let level = level_u8(level);
        self.store
            .get(level, index)
            .ok_or(MerkleError::MissingNode { level, index })
    }

    fn check_size(&self, size: u64) -> Result<(), MerkleError> {
        if size > self.size {
            return Err(MerkleError::SizeOutOfRange {
                size,
                available: self.size,
            });
        }
        Ok(())
    }
}

/// Hashes subtree roots given right to left into their RFC 9162 root:
/// `hash(a, hash(b, … hash(y, z)))` for roots `a, b, …, z` in left-to-right order.
fn fold_right<H: MerkleHasher>(mut right_to_left: impl Iterator<Item = Digest>) -> Digest {
    match right_to_left.next() {
        None => H::empty_root(),
        Some(last) => right_to_left.fold(last, |acc, left| H::hash_children(&left, &acc)),
    }
}

/// The largest number of hashes in an inclusion path for a tree of `size` leaves.
fn max_proof_len(size: u64) -> usize {
    (u64::BITS - size.leading_zeros()) as usize
}

/// Node levels of a `u64`-indexed tree are below 64, so they always fit the store's `u8`.
fn level_u8(level: u32) -> u8 {
    debug_assert!(level < u64::BITS);
    level as u8
}

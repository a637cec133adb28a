//! The ledger's append-only Merkle tree: RFC 6962 / RFC 9162 tree hashing, inclusion and
//! consistency proofs, and their verification.
//!
//! This module owns
//!
//! - the tree shape and proof formats of RFC 9162 §2.1 (the "Merkle Tree Hash" `MTH`, `PATH` and
//!   `PROOF`/`SUBPROOF`), generic over the hash function through [`MerkleHasher`];
//! - [`Blake3Hasher`], the production hash: blake3 with the [`Purpose::Leaf`] and
//!   [`Purpose::Node`] contexts, so a leaf can never be passed off as an interior node;
//! - [`MerkleTree`], an incremental tree that persists the hash of every *perfect* subtree in a
//!   [`NodeStore`] ([`MemNodeStore`] in memory; disk-backed stores live in crates above), so that
//!   appends cost amortised O(1) hashes and roots and proofs for any earlier size cost O(log n);
//! - the stateless verifiers [`verify_inclusion`], [`root_from_inclusion`] and
//!   [`verify_consistency`], written from the algorithms of RFC 9162 §2.1.3.2 and §2.1.4.2 and
//!   checked against the transparency-dev/merkle conformance vectors.
//!
//! The tree algorithm is the standard one on purpose: any RFC 6962 implementation, given the
//! same hash function, computes the same roots and proofs, which is what lets an offline
//! auditor check a custody proof without trusting this code. The tests run it with SHA-256
//! against the public vectors to prove that.
//!
//! Nothing here does I/O; a [`NodeStore`] is the only state.

mod store;
mod tree;
mod verify;

#[cfg(test)]
mod tests;

pub use store::{MemNodeStore, NodeStore};
pub use tree::MerkleTree;
pub use verify::{
    expected_consistency_proof_len, expected_inclusion_proof_len, root_from_inclusion,
    verify_consistency, verify_inclusion,
};

use crate::hash::{Digest, Purpose};

/// The hash functions that define a Merkle tree: one for leaves, one for interior nodes and the
/// root of the empty tree.
///
/// Implementations must keep leaves and nodes in separate domains (RFC 6962 prefixes `0x00` and
/// `0x01`; [`Blake3Hasher`] uses two blake3 contexts). Without that separation an interior node
/// could be presented as a leaf, and a proof could claim a "leaf" that was never appended.
///
/// The functions take no `self`: a hasher is a type-level choice fixed for the lifetime of a
/// ledger, never a runtime value.
pub trait MerkleHasher {
    /// Hash of a leaf whose entry bytes are `data` (RFC 9162: `HASH(0x00 || d)`).
    fn hash_leaf(data: &[u8]) -> Digest;

    /// Hash of an interior node with children `left` and `right`
    /// (RFC 9162: `HASH(0x01 || left || right)`).
    fn hash_children(left: &Digest, right: &Digest) -> Digest;

    /// Root of the tree with no leaves (RFC 9162: `MTH({}) = HASH()`).
    fn empty_root() -> Digest;
}

/// The production Merkle hasher: blake3 in key-derivation mode.
///
/// - leaf: `Purpose::Leaf.hash(data)`;
/// - node: `Purpose::Node.hash_parts(&[left, right])`;
/// - empty tree: `Purpose::Node.hash(b"")`.
///
/// The empty root shares the node context but can never equal a node hash, because every node
/// input is exactly 64 bytes and the empty root's input is empty.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Blake3Hasher;

impl MerkleHasher for Blake3Hasher {
    fn hash_leaf(data: &[u8]) -> Digest {
        Purpose::Leaf.hash(data)
    }

    fn hash_children(left: &Digest, right: &Digest) -> Digest {
        Purpose::Node.hash_parts(&[left.as_bytes(), right.as_bytes()])
    }

    fn empty_root() -> Digest {
        Purpose::Node.hash(b"")
    }
}

/// Why a Merkle operation or proof verification failed.
///
/// Every variant names the inputs involved so that the message says what to correct: a size or
/// index, the proof, or the tree head the proof was checked against.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum MerkleError {
    /// A leaf index is not below the tree size it was used with.
    #[error(
        "leaf index {index} is out of range for a tree of {size} leaves (indices start at 0 and \
         must be below the size)"
    )]
    IndexOutOfRange {
        /// The index that was asked for.
        index: u64,
        /// The size of the tree it was asked for in.
        size: u64,
    },
    /// A tree size is larger than the tree it was asked of.
    #[error(
        "tree size {size} is larger than the {available} leaves this tree holds; ask for a size \
         of at most {available}"
    )]
    SizeOutOfRange {
        /// The size that was asked for.
        size: u64,
        /// How many leaves the tree actually holds.
        available: u64,
    },
    /// A consistency proof was asked for with the old size above the new one.
    #[error(
        "old tree size {old_size} is larger than new tree size {new_size}: a log only grows, so \
         the sizes are probably swapped"
    )]
    SizesOutOfOrder {
        /// The old (earlier) size given.
        old_size: u64,
        /// The new (later) size given.
        new_size: u64,
    },
    /// A consistency proof from the empty tree was asked for or presented.
    #[error(
        "a consistency proof from the empty tree (old size 0) proves nothing: every tree extends \
         it; check the new tree head on its own, or give an earlier non-empty tree head"
    )]
    EmptyOldTree,
    /// A proof does not have the number of hashes its sizes (and index) imply.
    #[error(
        "proof has {got} hashes, but a proof for this index and tree size must have exactly \
         {expected}; the proof is truncated or padded, or was made for other sizes"
    )]
    WrongProofLength {
        /// The number of hashes RFC 9162 prescribes for the given index and sizes.
        expected: usize,
        /// The number of hashes the proof has.
        got: usize,
    },
    /// A proof leads to a different root than the tree head it was checked against.
    #[error(
        "proof leads to root {computed}, not to the expected root {expected}: the leaf, index, \
         tree size or proof does not belong to that tree head"
    )]
    RootMismatch {
        /// The root the proof was checked against (the new root, for consistency proofs).
        expected: Digest,
        /// The root the proof actually leads to.
        computed: Digest,
    },
    /// A consistency proof does not reproduce the old tree head it was checked against.
    #[error(
        "consistency proof leads to old root {computed}, not to the expected old root \
         {expected}: the old tree head or old size does not match the proof"
    )]
    OldRootMismatch {
        /// The old root the proof was checked against.
        expected: Digest,
        /// The old root the proof actually leads to.
        computed: Digest,
    },
    /// The node store lacks a hash that the tree size says must be there.
    #[error(
        "node store has no hash for level {level}, index {index}, although the tree size \
         requires it: the store is incomplete, or the size given when re-opening it is wrong"
    )]
    MissingNode {
        /// Level of the missing node (0 = leaves).
        level: u8,
        /// Index of the missing node within its level.
        index: u64,
    },
}

/// The RFC 9162 Merkle Tree Hash `MTH(D[n])` of a list of leaf hashes, computed directly from
/// the recursive definition.
///
/// `MTH({}) = empty_root`, `MTH({d}) = d` (the inputs are already leaf hashes), and for
/// `n > 1`, with `k` the largest power of two below `n`,
/// `MTH(D[n]) = hash_children(MTH(D[0:k]), MTH(D[k:n]))`.
///
/// This is the reference the incremental [`MerkleTree`] is tested against, and is convenient
/// for small, one-off trees. It costs `n - 1` node hashes and recursion depth `log2 n`; for
/// anything that grows, use [`MerkleTree`].
pub fn root_of_leaves<H: MerkleHasher>(leaf_hashes: &[Digest]) -> Digest {
    match leaf_hashes {
        [] => H::empty_root(),
        [leaf] => *leaf,
        _ => {
            let (left, right) = leaf_hashes.split_at(split_point(leaf_hashes.len()));
            H::hash_children(&root_of_leaves::<H>(left), &root_of_leaves::<H>(right))
        }
    }
}

/// The largest power of two strictly below `n` (`n >= 2`): where RFC 9162 splits `D[n]`.
fn split_point(n: usize) -> usize {
    // For n >= 2, `n - 1` has its top bit at the position of that power of two.
    1 << (usize::BITS - 1 - (n - 1).leading_zeros())
}

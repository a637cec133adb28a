//! Stateless verification of inclusion and consistency proofs (RFC 9162 §2.1.3.2, §2.1.4.2).
//!
//! The loops below follow the RFC's step-by-step algorithms literally (variable names `fn`, `sn`,
//! `fr`, `sr`, `r` included; `fn` is spelled `fn_`, as `fn` is a Rust keyword), so they can be
//! reviewed against the RFC text line by line. Before running them, the proof length is checked
//! against the exact length the RFC's construction produces. The RFC's own in-loop checks (`sn`
//! reaching 0 early or not at all) would reject a proof of the wrong length too, but only after
//! hashing it; checking up front is cheaper and gives an error that says what is wrong. The
//! in-loop checks are kept anyway as a second line of defence (the whole test suite also passes
//! with the up-front check removed).

use super::{MerkleError, MerkleHasher};
use crate::hash::Digest;

/// The number of hashes in the RFC 9162 inclusion proof of leaf `index` in a tree of `size`
/// leaves.
///
/// Useful to reject a malformed proof before decoding or allocating it.
///
/// # Errors
///
/// [`MerkleError::IndexOutOfRange`] if `index >= size`.
pub fn expected_inclusion_proof_len(index: u64, size: u64) -> Result<usize, MerkleError> {
    if index >= size {
        return Err(MerkleError::IndexOutOfRange { index, size });
    }
    let (inner, border) = decompose_path(index, size);
    Ok((inner + border) as usize)
}

/// The number of hashes in the RFC 9162 consistency proof between trees of `old_size` and
/// `new_size` leaves (0 when the sizes are equal).
///
/// Useful to reject a malformed proof before decoding or allocating it.
///
/// # Errors
///
/// - [`MerkleError::SizesOutOfOrder`] if `old_size > new_size`;
/// - [`MerkleError::EmptyOldTree`] if `old_size` is 0.
pub fn expected_consistency_proof_len(old_size: u64, new_size: u64) -> Result<usize, MerkleError> {
    if old_size > new_size {
        return Err(MerkleError::SizesOutOfOrder { old_size, new_size });
    }
    if old_size == 0 {
        return Err(MerkleError::EmptyOldTree);
    }
    if old_size == new_size {
        return Ok(0);
    }
    // The proof is the inclusion path, in the new tree, of the old tree's rightmost perfect
    // subtree (level `shift`, containing leaf `old_size - 1`), preceded by that subtree's root
    // unless it is the whole old tree (`old_size` a power of two).
    let (inner, border) = decompose_path(old_size - 1, new_size);
    let shift = old_size.trailing_zeros();
    // `inner > shift` whenever `old_size < new_size`: the paths to leaves `old_size - 1` and
    // `new_size - 1` part above the old subtree, or `new_size` would not exceed `old_size`.
    let inner = inner.saturating_sub(shift);
    let seed = u32::from(!old_size.is_power_of_two());
    Ok((seed + inner + border) as usize)
}

/// Splits the inclusion path of leaf `index` in a tree of `size` leaves (`index < size`) into
/// its two parts and returns their lengths `(inner, border)`:
///
/// - `inner`: the levels below the point where the paths to `index` and to the last leaf
///   `size - 1` join; every such level has a sibling;
/// - `border`: the levels above it, where the path runs along the tree's right edge and has a
///   (left) sibling exactly where `index` has a 1 bit.
fn decompose_path(index: u64, size: u64) -> (u32, u32) {
    let inner = u64::BITS - (index ^ (size - 1)).leading_zeros();
    // `inner` can be 64, which `>>` does not allow; nothing is left above it then.
    let border = index.checked_shr(inner).unwrap_or(0).count_ones();
    (inner, border)
}

/// Verifies that `leaf_hash` is leaf `index` of the tree of `size` leaves whose root is `root`,
/// using the inclusion proof `proof` (RFC 9162 §2.1.3.2).
///
/// `leaf_hash` is the leaf's hash ([`MerkleHasher::hash_leaf`] of the entry), not the entry.
///
/// Note that, as in RFC 9162, the proof binds the leaf and its index to `root`; it is the
/// signed tree head that binds `root` to `size`. Always take `size` and `root` from the same
/// verified tree head.
///
/// # Errors
///
/// - [`MerkleError::IndexOutOfRange`] if `index >= size`;
/// - [`MerkleError::WrongProofLength`] if the proof has missing or extra hashes;
/// - [`MerkleError::RootMismatch`] if the proof leads to another root.
pub fn verify_inclusion<H: MerkleHasher>(
    leaf_hash: &Digest,
    index: u64,
    size: u64,
    proof: &[Digest],
    root: &Digest,
) -> Result<(), MerkleError> {
    let computed = root_from_inclusion::<H>(leaf_hash, index, size, proof)?;
    if computed != *root {
        return Err(MerkleError::RootMismatch {
            expected: *root,
            computed,
        });
    }
    Ok(())
}

/// The root of the tree of `size` leaves in which `proof` puts `leaf_hash` at `index`
/// (RFC 9162 §2.1.3.2 steps 1–5, without the final comparison).
///
/// The result means something only once compared with a trusted root; use
/// [`verify_inclusion`] unless several proofs are checked against one root computed here.
///
/// # Errors
///
/// - [`MerkleError::IndexOutOfRange`] if `index >= size`;
/// - [`MerkleError::WrongProofLength`] if the proof has missing or extra hashes.
pub fn root_from_inclusion<H: MerkleHasher>(
    leaf_hash: &Digest,
    index: u64,
    size: u64,
    proof: &[Digest],
) -> Result<Digest, MerkleError> {
    // Step 1: `leaf_index` must be below `tree_size` (checked here too).
    let expected = expected_inclusion_proof_len(index, size)?;
    let wrong_length = MerkleError::WrongProofLength {
        expected,
        got: proof.len(),
    };
    if proof.len() != expected {
        return Err(wrong_length);
    }
    // Steps 2 and 3.
    let mut fn_ = index;
    let mut sn = size - 1;
    let mut r = *leaf_hash;
    // Step 4.
    for p in proof {
        // 4a: the path reached the root with proof hashes left over.
        if sn == 0 {
            return Err(wrong_length);
        }
        if fn_ & 1 == 1 || fn_ == sn {
            // 4b: `p` is a left sibling.
            r = H::hash_children(p, &r);
            // Skip the levels where the node has no sibling (it is the last, even node of its
            // level and is promoted unchanged).
            while fn_ & 1 == 0 && fn_ != 0 {
                fn_ >>= 1;
                sn >>= 1;
            }
        } else {
            // 4b "Otherwise": `p` is a right sibling.
            r = H::hash_children(&r, p);
        }
        // 4c.
        fn_ >>= 1;
        sn >>= 1;
    }
    // Step 5 (first half): the proof must reach the root exactly.
    if sn != 0 {
        return Err(wrong_length);
    }
    Ok(r)
}

/// Verifies that the tree of `new_size` leaves with root `new_root` extends (is an append-only
/// continuation of) the tree of `old_size` leaves with root `old_root`, using the consistency
/// proof `proof` (RFC 9162 §2.1.4.2).
///
/// Equal sizes are consistent exactly when the roots are equal and the proof is empty.
///
/// # Errors
///
/// - [`MerkleError::SizesOutOfOrder`] if `old_size > new_size`;
/// - [`MerkleError::EmptyOldTree`] if `old_size` is 0: RFC 9162 defines consistency proofs only
///   from a non-empty tree, and the transparency-dev/merkle reference rejects this case too,
///   so that "consistent with nothing" is never mistaken for a checked proof;
/// - [`MerkleError::WrongProofLength`] if the proof has missing or extra hashes (any hash at all
///   for equal sizes);
/// - [`MerkleError::OldRootMismatch`] if the proof does not reproduce `old_root`;
/// - [`MerkleError::RootMismatch`] if it does not lead to `new_root` (for equal sizes: the roots
///   differ).
pub fn verify_consistency<H: MerkleHasher>(
    old_size: u64,
    new_size: u64,
    old_root: &Digest,
    new_root: &Digest,
    proof: &[Digest],
) -> Result<(), MerkleError> {
    let expected = expected_consistency_proof_len(old_size, new_size)?;
    let wrong_length = MerkleError::WrongProofLength {
        expected,
        got: proof.len(),
    };
    if proof.len() != expected {
        return Err(wrong_length);
    }
    if old_size == new_size {
        if old_root != new_root {
            return Err(MerkleError::RootMismatch {
                expected: *new_root,
                computed: *old_root,
            });
        }
        return Ok(());
    }
    // Step 1: an empty proof fails (for 0 < old_size < new_size the expected length is >= 1,
    // so only the `split_first` below can still see one).
    // Step 2: if `first` is a power of two, prepend `first_hash` to the path. Done without
    // copying the proof: the seed is taken from `old_root` instead of the proof's head.
    let (seed, rest) = if old_size.is_power_of_two() {
        (old_root, proof)
    } else {
        proof.split_first().ok_or_else(|| wrong_length.clone())?
    };
    // Step 3.
    let mut fn_ = old_size - 1;
    let mut sn = new_size - 1;
    // Step 4: skip the levels inside the old tree's rightmost perfect subtree, whose root is
    // the seed.
    while fn_ & 1 == 1 {
        fn_ >>= 1;
        sn >>= 1;
    }
    // Step 5.
    let mut fr = *seed;
    let mut sr = *seed;
    // Step 6.
    for c in rest {
        // 6a: the path reached the new root with proof hashes left over.
        if sn == 0 {
            return Err(wrong_length);
        }
        if fn_ & 1 == 1 || fn_ == sn {
            // 6b: `c` is a left sibling, part of both trees.
            fr = H::hash_children(c, &fr);
            sr = H::hash_children(c, &sr);
            while fn_ & 1 == 0 && fn_ != 0 {
                fn_ >>= 1;
                sn >>= 1;
            }
        } else {
            // 6b "Otherwise": `c` is a right sibling, which only the new tree has.
            sr = H::hash_children(&sr, c);
        }
        // 6c.
        fn_ >>= 1;
        sn >>= 1;
    }
    // Step 7.
    if sn != 0 {
        return Err(wrong_length);
    }
    if fr != *old_root {
        return Err(MerkleError::OldRootMismatch {
            expected: *old_root,
            computed: fr,
        });
    }
    if sr != *new_root {
        return Err(MerkleError::RootMismatch {
            expected: *new_root,
            computed: sr,
        });
    }
    Ok(())
}

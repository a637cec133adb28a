//! Exhaustive comparison of the incremental tree with the naive RFC 9162 reference.

use super::{Reference, Sha256Hasher, test_leaves};
use crate::merkle::{
    Blake3Hasher, MerkleHasher, MerkleTree, root_of_leaves, verify_consistency, verify_inclusion,
};

/// Grows one tree to `n` leaves, checking the current root after every append, then checks, for
/// every size up to `n`, the historical root and the inclusion proof of every leaf: each must
/// equal the reference's and verify.
fn roots_and_inclusion_proofs<H: MerkleHasher>(n: u64) {
    let leaves = test_leaves::<H>(n);
    let mut reference = Reference::<H>::new(leaves.clone());
    let mut tree = MerkleTree::<H>::default();
    for (index, leaf) in (0..).zip(&leaves) {
        assert_eq!(tree.append_leaf_hash(*leaf), index);
        let size = index + 1;
        assert_eq!(
            tree.root(),
            root_of_leaves::<H>(&leaves[..size as usize]),
            "size {size}"
        );
    }
    for size in 1..=n {
        let root = tree.root_at(size).expect("size in range");
        assert_eq!(root, reference.mth(0, size as usize), "size {size}");
        for index in 0..size {
            let proof = tree.inclusion_proof(index, size).expect("in range");
            assert_eq!(
                proof,
                reference.path(index as usize, 0, size as usize),
                "index {index}, size {size}"
            );
            let leaf = &leaves[index as usize];
            assert_eq!(
                verify_inclusion::<H>(leaf, index, size, &proof, &root),
                Ok(()),
                "index {index}, size {size}"
            );
        }
    }
}

/// Every consistency proof between sizes `1..=n` equals the reference's `PROOF` and verifies.
fn all_consistency_proofs<H: MerkleHasher>(n: u64) {
    let leaves = test_leaves::<H>(n);
    let mut reference = Reference::<H>::new(leaves.clone());
    let mut tree = MerkleTree::<H>::default();
    for leaf in &leaves {
        tree.append_leaf_hash(*leaf);
    }
    for new in 1..=n {
        let new_root = tree.root_at(new).expect("in range");
        for old in 1..=new {
            let old_root = tree.root_at(old).expect("in range");
            let proof = tree.consistency_proof(old, new).expect("in range");
            assert_eq!(
                proof,
                reference.proof(old as usize, new as usize),
                "old {old}, new {new}"
            );
            assert_eq!(
                verify_consistency::<H>(old, new, &old_root, &new_root, &proof),
                Ok(()),
                "old {old}, new {new}"
            );
        }
    }
}

#[test]
fn blake3_roots_and_inclusion_proofs_up_to_1000() {
    roots_and_inclusion_proofs::<Blake3Hasher>(1000);
}

#[test]
fn sha256_roots_and_inclusion_proofs_up_to_100() {
    roots_and_inclusion_proofs::<Sha256Hasher>(100);
}

#[test]
fn blake3_consistency_proofs_up_to_64() {
    all_consistency_proofs::<Blake3Hasher>(64);
}

#[test]
fn sha256_consistency_proofs_up_to_64() {
    all_consistency_proofs::<Sha256Hasher>(64);
}

#[test]
fn blake3_consistency_proofs_from_every_old_size_to_sampled_new_sizes() {
    let leaves = test_leaves::<Blake3Hasher>(1000);
    let mut reference = Reference::<Blake3Hasher>::new(leaves.clone());
    let mut tree = MerkleTree::<Blake3Hasher>::default();
    for leaf in &leaves {
        tree.append_leaf_hash(*leaf);
    }
    // Powers of two, one past and one short of them, and sizes with many and few set bits.
    for new in [1000, 999, 768, 767, 513, 512, 511, 341, 257, 256, 100] {
        let new_root = tree.root_at(new).expect("in range");
        for old in 1..=new {
            let old_root = tree.root_at(old).expect("in range");
            let proof = tree.consistency_proof(old, new).expect("in range");
            assert_eq!(
                proof,
                reference.proof(old as usize, new as usize),
                "old {old}, new {new}"
            );
            assert_eq!(
                verify_consistency::<Blake3Hasher>(old, new, &old_root, &new_root, &proof),
                Ok(()),
                "old {old}, new {new}"
            );
        }
    }
}

/// The claims an inclusion proof binds (the leaf index) and a consistency proof binds (the old
/// size), checked for every combination in small trees: a genuine proof presented with another
/// index or old size, against its own roots, never verifies. (The new size, and an inclusion
/// proof's tree size, are bound by the signed tree head instead; see `properties`.)
#[test]
fn another_index_or_old_size_never_verifies_up_to_64() {
    const N: u64 = 64;
    let leaves = test_leaves::<Blake3Hasher>(N);
    let mut tree = MerkleTree::<Blake3Hasher>::default();
    for leaf in &leaves {
        tree.append_leaf_hash(*leaf);
    }
    for size in 1..=N {
        let root = tree.root_at(size).expect("in range");
        for index in 0..size {
            let proof = tree.inclusion_proof(index, size).expect("in range");
            let leaf = &leaves[index as usize];
            for other in (0..=N + 1).filter(|&other| other != index) {
                assert!(
                    verify_inclusion::<Blake3Hasher>(leaf, other, size, &proof, &root).is_err(),
                    "leaf {index} of {size} verified as leaf {other}"
                );
            }
        }
        for old in 1..size {
            let old_root = tree.root_at(old).expect("in range");
            let proof = tree.consistency_proof(old, size).expect("in range");
            for other in (0..=N + 1).filter(|&other| other != old) {
                assert!(
                    verify_consistency::<Blake3Hasher>(other, size, &old_root, &root, &proof)
                        .is_err(),
                    "proof {old} -> {size} verified from old size {other}"
                );
            }
        }
    }
}

//! Property tests on the shared 1000-leaf tree: random consistency proofs match the reference,
//! and every kind of tampering with a proof or its claims is rejected.

use proptest::prelude::*;
use proptest::sample::Index;

use super::{SHARED_SIZE, rfc_inclusion_shape, shared};
use crate::hash::Digest;
use crate::merkle::{Blake3Hasher, MerkleError, verify_consistency, verify_inclusion};

type H = Blake3Hasher;

/// A tree size in the shared tree and a leaf index in it.
fn size_and_index() -> impl Strategy<Value = (u64, u64)> {
    (1..=SHARED_SIZE).prop_flat_map(|size| (Just(size), 0..size))
}

/// `0 < old < new <= SHARED_SIZE`.
fn old_and_new() -> impl Strategy<Value = (u64, u64)> {
    (2..=SHARED_SIZE).prop_flat_map(|new| (1..new, Just(new)))
}

fn digest() -> impl Strategy<Value = Digest> {
    any::<[u8; 32]>().prop_map(Digest)
}

fn flip_bit(hash: &mut Digest, bit: usize) {
    hash.0[bit / 8] ^= 1 << (bit % 8);
}

fn inclusion(index: u64, size: u64) -> (Digest, Vec<Digest>, Digest) {
    let s = shared();
    let proof = s.tree.inclusion_proof(index, size).expect("in range");
    let root = s.tree.root_at(size).expect("in range");
    (s.leaves[index as usize], proof, root)
}

fn consistency(old: u64, new: u64) -> (Digest, Digest, Vec<Digest>) {
    let s = shared();
    let proof = s.tree.consistency_proof(old, new).expect("in range");
    let old_root = s.tree.root_at(old).expect("in range");
    let new_root = s.tree.root_at(new).expect("in range");
    (old_root, new_root, proof)
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]

    #[test]
    fn random_consistency_proofs_match_the_reference((old, new) in old_and_new()) {
        let (old_root, new_root, proof) = consistency(old, new);
        let expected = shared()
            .reference
            .lock()
            .expect("no test panicked holding the lock")
            .proof(old as usize, new as usize);
        prop_assert_eq!(&proof, &expected);
        prop_assert_eq!(verify_consistency::<H>(old, new, &old_root, &new_root, &proof), Ok(()));
    }

    #[test]
    fn inclusion_fails_for_a_wrong_index((size, index) in size_and_index(), other in 0..SHARED_SIZE + 2) {
        prop_assume!(other != index);
        let (leaf, proof, root) = inclusion(index, size);
        prop_assert!(verify_inclusion::<H>(&leaf, other, size, &proof, &root).is_err());
    }

    #[test]
    fn inclusion_fails_for_a_wrong_size((size, index) in size_and_index(), other in 0..SHARED_SIZE + 2) {
        prop_assume!(other != size);
        let (leaf, proof, root) = inclusion(index, size);
        // Against the root of the size it claims, the proof is accepted only if it is that
        // size's genuine proof.
        if let Ok(other_root) = shared().tree.root_at(other) {
            let genuine = shared().tree.inclusion_proof(index, other).ok();
            prop_assert_eq!(
                verify_inclusion::<H>(&leaf, index, other, &proof, &other_root).is_ok(),
                genuine.as_ref() == Some(&proof)
            );
        }
        // Against the proof's own root, RFC 9162 cannot tell sizes apart whose proofs have the
        // same shape (for example leaf 4 at sizes 7 and 8): the tree head, not the proof, binds
        // a root to its size. Every other wrong size must fail.
        let same_shape =
            index < other && rfc_inclusion_shape(index, other) == rfc_inclusion_shape(index, size);
        prop_assert_eq!(
            verify_inclusion::<H>(&leaf, index, other, &proof, &root).is_ok(),
            same_shape
        );
    }

    #[test]
    fn inclusion_fails_for_a_flipped_bit(
        (size, index) in size_and_index(), which in any::<Index>(), bit in 0..256usize,
    ) {
        let (leaf, mut proof, root) = inclusion(index, size);
        prop_assume!(!proof.is_empty());
        let which = which.index(proof.len());
        flip_bit(&mut proof[which], bit);
        let result = verify_inclusion::<H>(&leaf, index, size, &proof, &root);
        prop_assert!(matches!(result, Err(MerkleError::RootMismatch { .. })), "{:?}", result);
    }

    #[test]
    fn inclusion_fails_for_a_dropped_sibling((size, index) in size_and_index(), which in any::<Index>()) {
        let (leaf, mut proof, root) = inclusion(index, size);
        prop_assume!(!proof.is_empty());
        let expected = proof.len();
        proof.remove(which.index(proof.len()));
        prop_assert_eq!(
            verify_inclusion::<H>(&leaf, index, size, &proof, &root),
            Err(MerkleError::WrongProofLength { expected, got: expected - 1 })
        );
    }

    #[test]
    fn inclusion_fails_for_an_added_sibling(
        (size, index) in size_and_index(), which in any::<Index>(), extra in digest(),
    ) {
        let (leaf, mut proof, root) = inclusion(index, size);
        let expected = proof.len();
        proof.insert(which.index(proof.len() + 1), extra);
        prop_assert_eq!(
            verify_inclusion::<H>(&leaf, index, size, &proof, &root),
            Err(MerkleError::WrongProofLength { expected, got: expected + 1 })
        );
    }

    #[test]
    fn inclusion_fails_for_a_wrong_leaf((size, index) in size_and_index(), wrong in digest()) {
        let (leaf, proof, root) = inclusion(index, size);
        prop_assume!(wrong != leaf);
        let result = verify_inclusion::<H>(&wrong, index, size, &proof, &root);
        prop_assert!(matches!(result, Err(MerkleError::RootMismatch { .. })), "{:?}", result);
        // Another leaf of the same tree is just as wrong.
        let other = shared().leaves[(index as usize + 1) % shared().leaves.len()];
        prop_assert!(verify_inclusion::<H>(&other, index, size, &proof, &root).is_err());
    }

    #[test]
    fn consistency_fails_for_a_flipped_bit(
        (old, new) in old_and_new(), which in any::<Index>(), bit in 0..256usize,
    ) {
        let (old_root, new_root, mut proof) = consistency(old, new);
        let which = which.index(proof.len());
        flip_bit(&mut proof[which], bit);
        let result = verify_consistency::<H>(old, new, &old_root, &new_root, &proof);
        prop_assert!(
            matches!(
                result,
                Err(MerkleError::RootMismatch { .. } | MerkleError::OldRootMismatch { .. })
            ),
            "{:?}",
            result
        );
    }

    #[test]
    fn consistency_fails_for_a_dropped_or_added_hash(
        (old, new) in old_and_new(), which in any::<Index>(), extra in digest(),
    ) {
        let (old_root, new_root, proof) = consistency(old, new);
        let expected = proof.len();
        let mut shorter = proof.clone();
        shorter.remove(which.index(proof.len()));
        prop_assert_eq!(
            verify_consistency::<H>(old, new, &old_root, &new_root, &shorter),
            Err(MerkleError::WrongProofLength { expected, got: expected - 1 })
        );
        let mut longer = proof.clone();
        longer.insert(which.index(proof.len() + 1), extra);
        prop_assert_eq!(
            verify_consistency::<H>(old, new, &old_root, &new_root, &longer),
            Err(MerkleError::WrongProofLength { expected, got: expected + 1 })
        );
    }

    #[test]
    fn consistency_fails_for_wrong_roots((old, new) in old_and_new(), wrong in digest()) {
        let (old_root, new_root, proof) = consistency(old, new);
        prop_assume!(wrong != old_root && wrong != new_root);
        prop_assert!(verify_consistency::<H>(old, new, &wrong, &new_root, &proof).is_err());
        prop_assert!(verify_consistency::<H>(old, new, &old_root, &wrong, &proof).is_err());
        prop_assert!(verify_consistency::<H>(old, new, &new_root, &old_root, &proof).is_err());
    }

    #[test]
    fn consistency_fails_for_wrong_sizes(
        (old, new) in old_and_new(), other_old in 0..SHARED_SIZE + 2, other_new in 0..SHARED_SIZE + 2,
    ) {
        prop_assume!((other_old, other_new) != (old, new));
        let (old_root, new_root, proof) = consistency(old, new);
        // Checked against the genuine roots of the sizes it claims, the proof is accepted only
        // if it is the genuine proof for those sizes.
        let s = shared();
        if let (Ok(claimed_old_root), Ok(claimed_new_root)) =
            (s.tree.root_at(other_old), s.tree.root_at(other_new))
        {
            let genuine = s.tree.consistency_proof(other_old, other_new).ok();
            prop_assert_eq!(
                verify_consistency::<H>(
                    other_old, other_new, &claimed_old_root, &claimed_new_root, &proof
                )
                .is_ok(),
                genuine.as_ref() == Some(&proof)
            );
        }
        // With the proof's own roots, a changed old size is always caught: the old root pins it
        // down (see also `exhaustive::another_index_or_old_size_never_verifies_up_to_64`). A
        // changed new size can slip through exactly like an inclusion proof's tree size.
        if other_old != old {
            prop_assert!(
                verify_consistency::<H>(other_old, new, &old_root, &new_root, &proof).is_err()
            );
        }
    }
}

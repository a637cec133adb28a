//! Tests of the Merkle module: shared helpers (a SHA-256 RFC 6962 hasher, a naive RFC 9162
//! reference, a shared 1000-leaf tree) and unit tests of the API's edges.
//!
//! - `vectors`: the transparency-dev/merkle RFC 6962 conformance vectors, with SHA-256;
//! - `exhaustive`: every root and inclusion proof up to 1000 leaves, every consistency proof up
//!   to 64 leaves, against the naive reference;
//! - `properties`: proptest checks that mutated proofs fail and random proofs match.

mod exhaustive;
mod properties;
mod vectors;

use std::collections::HashMap;
use std::marker::PhantomData;
use std::sync::{Mutex, OnceLock};

use sha2::{Digest as _, Sha256};

use super::*;
use crate::hash::Digest;

/// RFC 6962's hasher: SHA-256 with `0x00` / `0x01` prefixes. Test-only: it exists to run the
/// tree against the public vectors.
pub(super) struct Sha256Hasher;

impl MerkleHasher for Sha256Hasher {
    fn hash_leaf(data: &[u8]) -> Digest {
        Digest(
            Sha256::new()
                .chain_update([0])
                .chain_update(data)
                .finalize()
                .into(),
        )
    }

    fn hash_children(left: &Digest, right: &Digest) -> Digest {
        Digest(
            Sha256::new()
                .chain_update([1])
                .chain_update(left.as_bytes())
                .chain_update(right.as_bytes())
                .finalize()
                .into(),
        )
    }

    fn empty_root() -> Digest {
        Digest(Sha256::digest(b"").into())
    }
}

/// The largest power of two strictly below `n` (`n >= 2`), computed the slow, obvious way so
/// the reference does not share code with the implementation.
fn largest_power_of_two_below(n: usize) -> usize {
    let mut k = 1;
    while k * 2 < n {
        k *= 2;
    }
    k
}

/// A naive transcription of RFC 9162 §2.1.1 (`MTH`), §2.1.3.1 (`PATH`) and §2.1.4.1
/// (`PROOF`/`SUBPROOF`) over a fixed list of leaf hashes, ranges given as `[a, b)`.
///
/// `MTH` results are memoised by range: that changes no result, it only keeps the exhaustive
/// test fast.
pub(super) struct Reference<H> {
    leaves: Vec<Digest>,
    memo: HashMap<(usize, usize), Digest>,
    hasher: PhantomData<fn() -> H>,
}

impl<H: MerkleHasher> Reference<H> {
    pub(super) fn new(leaves: Vec<Digest>) -> Self {
        Self {
            leaves,
            memo: HashMap::new(),
            hasher: PhantomData,
        }
    }

    /// `MTH(D[a:b])`.
    pub(super) fn mth(&mut self, a: usize, b: usize) -> Digest {
        match b - a {
            0 => H::empty_root(),
            1 => self.leaves[a],
            n => {
                if let Some(hash) = self.memo.get(&(a, b)) {
                    return *hash;
                }
                let k = largest_power_of_two_below(n);
                let left = self.mth(a, a + k);
                let right = self.mth(a + k, b);
                let hash = H::hash_children(&left, &right);
                self.memo.insert((a, b), hash);
                hash
            }
        }
    }

    /// `PATH(m, D[a:b])` for an absolute leaf index `m` in `[a, b)`.
    pub(super) fn path(&mut self, m: usize, a: usize, b: usize) -> Vec<Digest> {
        let n = b - a;
        if n == 1 {
            return Vec::new();
        }
        let k = largest_power_of_two_below(n);
        if m - a < k {
            let mut path = self.path(m, a, a + k);
            path.push(self.mth(a + k, b));
            path
        } else {
            let mut path = self.path(m, a + k, b);
            path.push(self.mth(a, a + k));
            path
        }
    }

    /// `PROOF(m, D[n])`.
    pub(super) fn proof(&mut self, m: usize, n: usize) -> Vec<Digest> {
        self.subproof(m, 0, n, true)
    }

    /// `SUBPROOF(m, D[a:b], complete)`, `m` counted from `a`.
    fn subproof(&mut self, m: usize, a: usize, b: usize, complete: bool) -> Vec<Digest> {
        let n = b - a;
        if m == n {
            return if complete {
                Vec::new()
            } else {
                vec![self.mth(a, b)]
            };
        }
        let k = largest_power_of_two_below(n);
        if m <= k {
            let mut proof = self.subproof(m, a, a + k, complete);
            proof.push(self.mth(a + k, b));
            proof
        } else {
            let mut proof = self.subproof(m - k, a + k, b, false);
            proof.push(self.mth(a, a + k));
            proof
        }
    }
}

/// For each hash of an inclusion proof of leaf `index` in a tree of `size` leaves, whether
/// RFC 9162 §2.1.3.2 hashes it in as a left sibling: the shape of the proof, obtained by running
/// the RFC loop without hashes. Two (index, size) pairs with the same shape verify the same
/// proofs to the same root.
pub(super) fn rfc_inclusion_shape(index: u64, size: u64) -> Vec<bool> {
    let (mut fn_, mut sn) = (index, size - 1);
    let mut shape = Vec::new();
    while sn != 0 {
        if fn_ & 1 == 1 || fn_ == sn {
            shape.push(true);
            while fn_ & 1 == 0 && fn_ != 0 {
                fn_ >>= 1;
                sn >>= 1;
            }
        } else {
            shape.push(false);
        }
        fn_ >>= 1;
        sn >>= 1;
    }
    shape
}

/// Leaf hashes `0..n` for tests: the production leaf hash of the index's bytes.
pub(super) fn test_leaves<H: MerkleHasher>(n: u64) -> Vec<Digest> {
    (0..n).map(|i| H::hash_leaf(&i.to_le_bytes())).collect()
}

/// Size of the shared tree the property tests draw from.
pub(super) const SHARED_SIZE: u64 = 1000;

/// A 1000-leaf blake3 tree, its leaves, and a reference over the same leaves, built once for
/// all property tests.
pub(super) struct Shared {
    pub(super) leaves: Vec<Digest>,
    pub(super) tree: MerkleTree<Blake3Hasher>,
    pub(super) reference: Mutex<Reference<Blake3Hasher>>,
}

pub(super) fn shared() -> &'static Shared {
    static SHARED: OnceLock<Shared> = OnceLock::new();
    SHARED.get_or_init(|| {
        let leaves = test_leaves::<Blake3Hasher>(SHARED_SIZE);
        let mut tree = MerkleTree::default();
        for leaf in &leaves {
            tree.append_leaf_hash(*leaf);
        }
        Shared {
            reference: Mutex::new(Reference::new(leaves.clone())),
            leaves,
            tree,
        }
    })
}

fn tree_of<H: MerkleHasher>(leaves: &[Digest]) -> MerkleTree<H> {
    let mut tree = MerkleTree::default();
    for leaf in leaves {
        tree.append_leaf_hash(*leaf);
    }
    tree
}

#[test]
fn empty_tree() {
    let tree = MerkleTree::<Blake3Hasher>::default();
    assert_eq!(tree.size(), 0);
    assert_eq!(tree.root(), Blake3Hasher::empty_root());
    assert_eq!(tree.root_at(0), Ok(Blake3Hasher::empty_root()));
    assert_eq!(
        tree.root_at(1),
        Err(MerkleError::SizeOutOfRange {
            size: 1,
            available: 0
        })
    );
    assert_eq!(
        tree.leaf_hash(0),
        Err(MerkleError::IndexOutOfRange { index: 0, size: 0 })
    );
    assert_eq!(
        tree.inclusion_proof(0, 0),
        Err(MerkleError::IndexOutOfRange { index: 0, size: 0 })
    );
    assert_eq!(tree.consistency_proof(0, 0), Err(MerkleError::EmptyOldTree));
    assert_eq!(Sha256Hasher::empty_root().to_hex(), EMPTY_SHA256);
}

#[test]
fn append_returns_indices_and_stores_perfect_subtrees() {
    let mut tree = MerkleTree::<Blake3Hasher>::default();
    for i in 0..13u64 {
        assert_eq!(tree.append(&i.to_le_bytes()), i);
    }
    assert_eq!(tree.size(), 13);
    // 13 leaves, 6 + 3 + 1 perfect interior subtrees.
    assert_eq!(tree.store().node_count(), 13 + 6 + 3 + 1);
    let leaves = test_leaves::<Blake3Hasher>(13);
    assert_eq!(tree.leaf_hash(12), Ok(leaves[12]));
    assert_eq!(
        tree.store().get(3, 0),
        Some(root_of_leaves::<Blake3Hasher>(&leaves[..8]))
    );
    assert_eq!(
        tree.store().get(2, 2),
        Some(root_of_leaves::<Blake3Hasher>(&leaves[8..12]))
    );
    assert_eq!(tree.store().get(2, 3), None);
    assert_eq!(tree.root(), root_of_leaves::<Blake3Hasher>(&leaves));
}

#[test]
fn reopen_from_store_continues_the_same_tree() {
    let leaves = test_leaves::<Blake3Hasher>(100);
    let mut whole = tree_of::<Blake3Hasher>(&leaves[..37]);
    let mut reopened = MerkleTree::<Blake3Hasher>::from_store(whole.store().clone(), 37)
        .expect("all frontier nodes are stored");
    assert_eq!(reopened.size(), 37);
    assert_eq!(reopened.root(), whole.root());
    for leaf in &leaves[37..] {
        assert_eq!(
            reopened.append_leaf_hash(*leaf),
            whole.append_leaf_hash(*leaf)
        );
    }
    assert_eq!(reopened.root(), whole.root());
    assert_eq!(reopened.store(), whole.store());
}

#[test]
fn reopen_at_a_smaller_size_overwrites_the_lost_tail() {
    // As after a crash that persisted nodes but not the last size: re-open at 21 of 30 leaves
    // and append different leaves; the result must equal a tree that never saw the lost ones.
    let first = test_leaves::<Blake3Hasher>(30);
    let other = test_leaves::<Sha256Hasher>(30);
    let written = tree_of::<Blake3Hasher>(&first);
    let mut reopened = MerkleTree::<Blake3Hasher>::from_store(written.into_store(), 21)
        .expect("a prefix of a stored tree is stored");
    let mut expected = tree_of::<Blake3Hasher>(&first[..21]);
    for leaf in &other[21..] {
        reopened.append_leaf_hash(*leaf);
        expected.append_leaf_hash(*leaf);
    }
    assert_eq!(reopened.root(), expected.root());
    for size in 1..=30 {
        assert_eq!(reopened.root_at(size), expected.root_at(size));
        assert_eq!(
            reopened.inclusion_proof(size - 1, size),
            expected.inclusion_proof(size - 1, size)
        );
    }
}

#[test]
fn reopen_with_a_size_the_store_does_not_have_fails() {
    let tree = tree_of::<Blake3Hasher>(&test_leaves::<Blake3Hasher>(5));
    // Size 6 needs node (1, 2) over leaves 4 and 5, never written.
    let err = MerkleTree::<Blake3Hasher>::from_store(tree.into_store(), 6)
        .expect_err("leaf 5 was never appended");
    assert_eq!(err, MerkleError::MissingNode { level: 1, index: 2 });
}

#[test]
fn missing_nodes_are_reported_not_invented() {
    // A store that lost a node: proofs needing it fail with MissingNode.
    struct Forgetful(MemNodeStore);
    impl NodeStore for Forgetful {
        fn get(&self, level: u8, index: u64) -> Option<Digest> {
            if (level, index) == (0, 2) {
                return None;
            }
            self.0.get(level, index)
        }
        fn put(&mut self, level: u8, index: u64, hash: Digest) {
            self.0.put(level, index, hash);
        }
    }
    let mut tree = MerkleTree::<Blake3Hasher, _>::new(Forgetful(MemNodeStore::new()));
    for i in 0..7u64 {
        tree.append(&i.to_le_bytes());
    }
    let missing = MerkleError::MissingNode { level: 0, index: 2 };
    assert_eq!(tree.leaf_hash(2), Err(missing.clone()));
    assert_eq!(tree.inclusion_proof(3, 7), Err(missing.clone()));
    assert_eq!(tree.root_at(3), Err(missing));
    // Proofs that do not touch leaf 2 still work.
    assert!(tree.inclusion_proof(5, 7).is_ok());
}

#[test]
fn trees_work_over_boxed_and_borrowed_stores() {
    let leaves = test_leaves::<Blake3Hasher>(9);
    let expected = tree_of::<Blake3Hasher>(&leaves);

    let boxed: Box<dyn NodeStore> = Box::new(MemNodeStore::new());
    let mut tree = MerkleTree::<Blake3Hasher, _>::new(boxed);
    let mut store = MemNodeStore::new();
    let mut borrowed = MerkleTree::<Blake3Hasher, _>::new(&mut store);
    for leaf in &leaves {
        tree.append_leaf_hash(*leaf);
        borrowed.append_leaf_hash(*leaf);
    }
    assert_eq!(tree.root(), expected.root());
    assert_eq!(tree.inclusion_proof(4, 9), expected.inclusion_proof(4, 9));
    assert_eq!(borrowed.root(), expected.root());
    drop(borrowed);
    assert_eq!(&store, expected.store());
}

#[test]
fn mem_node_store_is_dense_and_overwrites() {
    let mut store = MemNodeStore::new();
    let a = Blake3Hasher::hash_leaf(b"a");
    let b = Blake3Hasher::hash_leaf(b"b");
    store.put(3, 0, a);
    assert_eq!(store.get(3, 0), Some(a));
    assert_eq!(store.get(2, 0), None);
    // A put that would leave a gap is dropped rather than padded.
    store.put(3, 5, b);
    assert_eq!(store.get(3, 5), None);
    assert_eq!(store.get(3, 1), None);
    store.put(3, 0, b);
    assert_eq!(store.get(3, 0), Some(b));
    assert_eq!(store.node_count(), 1);
    assert!(format!("{store:?}").contains("nodes_per_level: [0, 0, 0, 1]"));
}

#[test]
fn proof_requests_out_of_range_are_errors() {
    let tree = tree_of::<Blake3Hasher>(&test_leaves::<Blake3Hasher>(10));
    assert_eq!(
        tree.inclusion_proof(10, 10),
        Err(MerkleError::IndexOutOfRange {
            index: 10,
            size: 10
        })
    );
    assert_eq!(
        tree.inclusion_proof(3, 11),
        Err(MerkleError::SizeOutOfRange {
            size: 11,
            available: 10
        })
    );
    assert_eq!(
        tree.consistency_proof(5, 4),
        Err(MerkleError::SizesOutOfOrder {
            old_size: 5,
            new_size: 4
        })
    );
    assert_eq!(
        tree.consistency_proof(5, 11),
        Err(MerkleError::SizeOutOfRange {
            size: 11,
            available: 10
        })
    );
    assert_eq!(tree.consistency_proof(0, 5), Err(MerkleError::EmptyOldTree));
    assert_eq!(tree.consistency_proof(7, 7), Ok(Vec::new()));
    assert_eq!(tree.inclusion_proof(0, 1), Ok(Vec::new()));
}

#[test]
fn consistency_edge_cases() {
    let tree = tree_of::<Blake3Hasher>(&test_leaves::<Blake3Hasher>(10));
    let r5 = tree.root_at(5).expect("in range");
    let r10 = tree.root();
    let v = verify_consistency::<Blake3Hasher>;
    assert_eq!(v(5, 5, &r5, &r5, &[]), Ok(()));
    assert_eq!(
        v(5, 5, &r5, &r10, &[]),
        Err(MerkleError::RootMismatch {
            expected: r10,
            computed: r5
        })
    );
    assert_eq!(
        v(5, 5, &r5, &r5, &[r5]),
        Err(MerkleError::WrongProofLength {
            expected: 0,
            got: 1
        })
    );
    assert_eq!(v(0, 0, &r5, &r5, &[]), Err(MerkleError::EmptyOldTree));
    assert_eq!(v(0, 5, &r5, &r5, &[]), Err(MerkleError::EmptyOldTree));
    assert_eq!(
        v(6, 5, &r5, &r5, &[]),
        Err(MerkleError::SizesOutOfOrder {
            old_size: 6,
            new_size: 5
        })
    );
    let proof = tree.consistency_proof(5, 10).expect("in range");
    assert_eq!(v(5, 10, &r5, &r10, &proof), Ok(()));
    assert!(matches!(
        v(5, 10, &r10, &r10, &proof),
        Err(MerkleError::OldRootMismatch { .. })
    ));
    assert!(matches!(
        v(5, 10, &r5, &r5, &proof),
        Err(MerkleError::RootMismatch { .. })
    ));
    assert_eq!(
        v(5, 10, &r5, &r10, &[]),
        Err(MerkleError::WrongProofLength {
            expected: proof.len(),
            got: 0
        })
    );
}

#[test]
fn inclusion_edge_cases() {
    let leaf = Blake3Hasher::hash_leaf(b"only");
    let v = verify_inclusion::<Blake3Hasher>;
    // A one-leaf tree's root is its leaf hash, with an empty proof.
    assert_eq!(v(&leaf, 0, 1, &[], &leaf), Ok(()));
    assert_eq!(
        v(&leaf, 0, 0, &[], &leaf),
        Err(MerkleError::IndexOutOfRange { index: 0, size: 0 })
    );
    assert_eq!(
        v(&leaf, 1, 1, &[], &leaf),
        Err(MerkleError::IndexOutOfRange { index: 1, size: 1 })
    );
    assert_eq!(
        v(&leaf, 0, 1, &[leaf], &leaf),
        Err(MerkleError::WrongProofLength {
            expected: 0,
            got: 1
        })
    );
    // The largest sizes and indices do not overflow.
    assert_eq!(expected_inclusion_proof_len(u64::MAX - 1, u64::MAX), Ok(63));
    assert_eq!(expected_inclusion_proof_len(0, u64::MAX), Ok(64));
    assert_eq!(expected_inclusion_proof_len(1 << 63, (1 << 63) + 1), Ok(1));
    assert_eq!(expected_consistency_proof_len(1 << 63, u64::MAX), Ok(1));
    assert_eq!(expected_consistency_proof_len(3, u64::MAX), Ok(65));
}

#[test]
fn expected_lengths_match_the_rfc_loop_and_the_reference() {
    let mut reference = Reference::<Blake3Hasher>::new(test_leaves::<Blake3Hasher>(300));
    for size in 1..=300u64 {
        for index in 0..size {
            assert_eq!(
                expected_inclusion_proof_len(index, size),
                Ok(rfc_inclusion_shape(index, size).len()),
                "index {index}, size {size}"
            );
        }
        for old in 1..=size {
            assert_eq!(
                expected_consistency_proof_len(old, size),
                Ok(reference.proof(old as usize, size as usize).len()),
                "old {old}, new {size}"
            );
        }
    }
}

#[test]
fn root_of_leaves_small_cases() {
    let leaves = test_leaves::<Blake3Hasher>(3);
    let h = Blake3Hasher::hash_children;
    assert_eq!(
        root_of_leaves::<Blake3Hasher>(&[]),
        Blake3Hasher::empty_root()
    );
    assert_eq!(root_of_leaves::<Blake3Hasher>(&leaves[..1]), leaves[0]);
    assert_eq!(
        root_of_leaves::<Blake3Hasher>(&leaves),
        h(&h(&leaves[0], &leaves[1]), &leaves[2])
    );
    for n in 2..70 {
        assert_eq!(split_point(n), largest_power_of_two_below(n), "n = {n}");
    }
}

#[test]
fn blake3_hasher_matches_its_documented_definition() {
    let (l, r) = (Purpose::Leaf.hash(b"l"), Purpose::Leaf.hash(b"r"));
    assert_eq!(
        Blake3Hasher::hash_leaf(b"entry"),
        Purpose::Leaf.hash(b"entry")
    );
    assert_eq!(
        Blake3Hasher::hash_children(&l, &r),
        Purpose::Node.hash_parts(&[l.as_bytes(), r.as_bytes()])
    );
    assert_eq!(Blake3Hasher::empty_root(), Purpose::Node.hash(b""));
}

#[test]
fn blake3_hasher_separates_leaves_from_nodes() {
    let (l, r) = (Purpose::Leaf.hash(b"l"), Purpose::Leaf.hash(b"r"));
    let mut concatenated = Vec::new();
    concatenated.extend_from_slice(l.as_bytes());
    concatenated.extend_from_slice(r.as_bytes());
    // The same 64 bytes hashed as a leaf and as a node differ, so a node cannot pose as a leaf.
    assert_ne!(
        Blake3Hasher::hash_leaf(&concatenated),
        Blake3Hasher::hash_children(&l, &r)
    );
    // Order matters.
    assert_ne!(
        Blake3Hasher::hash_children(&l, &r),
        Blake3Hasher::hash_children(&r, &l)
    );
    // The empty tree's root is neither the empty leaf nor the plain blake3 of nothing.
    assert_ne!(Blake3Hasher::empty_root(), Blake3Hasher::hash_leaf(b""));
    assert_ne!(Blake3Hasher::empty_root(), Digest::from(blake3::hash(b"")));
    // And the Merkle hashes are not plain blake3 either.
    assert_ne!(
        Blake3Hasher::hash_leaf(b"x"),
        Digest::from(blake3::hash(b"x"))
    );
}

#[test]
fn error_messages_name_the_values() {
    let text = MerkleError::IndexOutOfRange { index: 7, size: 3 }.to_string();
    assert!(text.contains('7') && text.contains('3'), "{text}");
    let text = MerkleError::WrongProofLength {
        expected: 4,
        got: 5,
    }
    .to_string();
    assert!(
        text.contains("5 hashes") && text.contains("exactly 4"),
        "{text}"
    );
    let root = Blake3Hasher::empty_root();
    let text = MerkleError::RootMismatch {
        expected: root,
        computed: root,
    }
    .to_string();
    assert!(text.contains(&root.to_hex()), "{text}");
    let text = MerkleError::SizesOutOfOrder {
        old_size: 9,
        new_size: 2,
    }
    .to_string();
    assert!(text.contains("swapped"), "{text}");
}

#[test]
fn debug_output_is_compact() {
    let tree = tree_of::<Blake3Hasher>(&test_leaves::<Blake3Hasher>(5));
    let text = format!("{tree:?}");
    assert!(
        text.starts_with("MerkleTree { size: 5, frontier: ["),
        "{text}"
    );
}

/// SHA-256 of the empty string: the RFC 6962 empty-tree root.
const EMPTY_SHA256: &str = "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855";

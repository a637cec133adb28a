//! Merkle tree benchmarks: amortised append cost, and proof construction and verification in a
//! tree of 1,000,000 leaves (blake3, in-memory node store).
//!
//! Targets: append <= 2 µs amortised; inclusion proof construction <= 50 µs at 10^6 leaves.
//!
//! Run with `cargo bench -p wasteledger-core --bench merkle`.

#![allow(
    clippy::expect_used,
    reason = "a benchmark whose setup fails should stop loudly, not measure nothing"
)]

use std::hint::black_box;
use std::time::{Duration, Instant};

use criterion::Criterion;
use wasteledger_core::Digest;
use wasteledger_core::merkle::{
    Blake3Hasher, MerkleHasher, MerkleTree, verify_consistency, verify_inclusion,
};

/// Leaves in the tree the proof benchmarks use.
const LEAVES: u64 = 1_000_000;

/// Number of precomputed proofs the verification benchmarks cycle through, so that they do not
/// keep verifying one proof that sits in cache.
const PROOFS: usize = 4096;

/// xorshift64*: a fixed, dependency-free sequence of pseudo-random indices.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    /// A value in `[low, high)`.
    fn below(&mut self, low: u64, high: u64) -> u64 {
        low + self.next() % (high - low)
    }
}

/// A 64-byte entry whose first bytes are `i`, standing in for an encoded ledger entry.
fn entry(i: u64) -> [u8; 64] {
    let mut entry = [0x5a; 64];
    entry[..8].copy_from_slice(&i.to_le_bytes());
    entry
}

fn big_tree() -> MerkleTree<Blake3Hasher> {
    let mut tree = MerkleTree::default();
    for i in 0..LEAVES {
        tree.append(&entry(i));
    }
    tree
}

fn append(c: &mut Criterion) {
    let mut group = c.benchmark_group("merkle/append");
    // Each sample grows a fresh tree by `iters` leaves, so the time is the amortised cost of an
    // append, node hashes and store growth included.
    group.bench_function("append_64_byte_entry", |b| {
        b.iter_custom(|iters| {
            let mut tree = MerkleTree::<Blake3Hasher>::default();
            let start = Instant::now();
            for i in 0..iters {
                black_box(tree.append(black_box(&entry(i))));
            }
            let elapsed = start.elapsed();
            drop(tree);
            elapsed
        });
    });
    group.bench_function("append_leaf_hash", |b| {
        let leaf = Blake3Hasher::hash_leaf(&entry(0));
        b.iter_custom(|iters| {
            let mut tree = MerkleTree::<Blake3Hasher>::default();
            let start = Instant::now();
            for _ in 0..iters {
                black_box(tree.append_leaf_hash(black_box(leaf)));
            }
            let elapsed = start.elapsed();
            drop(tree);
            elapsed
        });
    });
    group.finish();
}

fn proofs(c: &mut Criterion) {
    let tree = big_tree();
    let root = tree.root();
    let mut rng = Rng(0x9e37_79b9_7f4a_7c15);
    let mut group = c.benchmark_group("merkle/1e6_leaves");

    group.bench_function("inclusion_proof", |b| {
        b.iter(|| {
            let index = rng.below(0, LEAVES);
            tree.inclusion_proof(black_box(index), LEAVES)
                .expect("index in range")
        });
    });

    let inclusions: Vec<(u64, Digest, Vec<Digest>)> = (0..PROOFS)
        .map(|_| {
            let index = rng.below(0, LEAVES);
            let leaf = tree.leaf_hash(index).expect("index in range");
            let proof = tree.inclusion_proof(index, LEAVES).expect("index in range");
            (index, leaf, proof)
        })
        .collect();
    let mut next = 0;
    group.bench_function("verify_inclusion", |b| {
        b.iter(|| {
            let (index, leaf, proof) = &inclusions[next % PROOFS];
            next += 1;
            verify_inclusion::<Blake3Hasher>(leaf, *index, LEAVES, black_box(proof), &root)
                .expect("genuine proof")
        });
    });

    group.bench_function("consistency_proof", |b| {
        b.iter(|| {
            let old = rng.below(1, LEAVES);
            tree.consistency_proof(black_box(old), LEAVES)
                .expect("sizes in range")
        });
    });

    let consistencies: Vec<(u64, Digest, Vec<Digest>)> = (0..PROOFS)
        .map(|_| {
            let old = rng.below(1, LEAVES);
            let old_root = tree.root_at(old).expect("size in range");
            let proof = tree.consistency_proof(old, LEAVES).expect("sizes in range");
            (old, old_root, proof)
        })
        .collect();
    let mut next = 0;
    group.bench_function("verify_consistency", |b| {
        b.iter(|| {
            let (old, old_root, proof) = &consistencies[next % PROOFS];
            next += 1;
            verify_consistency::<Blake3Hasher>(*old, LEAVES, old_root, &root, black_box(proof))
                .expect("genuine proof")
        });
    });

    group.bench_function("root_at", |b| {
        b.iter(|| {
            let size = rng.below(1, LEAVES + 1);
            tree.root_at(black_box(size)).expect("size in range")
        });
    });
    group.finish();
}

// What `criterion_group!`/`criterion_main!` expand to, written out so that no undocumented
// public function is generated (the workspace warns on missing docs).
fn main() {
    let mut criterion = Criterion::default()
        .warm_up_time(Duration::from_secs(1))
        .configure_from_args();
    append(&mut criterion);
    proofs(&mut criterion);
    criterion.final_summary();
}

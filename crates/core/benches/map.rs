//! Benchmarks of the completeness map with one million random keys present: insert (new key and
//! update of an existing key, each at a new version, as the ledger does) and proof build and
//! verification, at the latest and at an old version.
//!
//! Run with `cargo bench -p wasteledger-core --bench map`. Building the map takes a few seconds
//! and about 2 GB, because every version of every node stays readable.

use std::hint::black_box;

use criterion::{BatchSize, Criterion};
use wasteledger_core::map::{CompletenessMap, verify_membership, verify_non_membership};
use wasteledger_core::{Digest, Purpose};

/// Keys present before measuring.
const PRESENT: u64 = 1_000_000;

fn key(i: u64) -> Digest {
    Purpose::MapKey.hash(&i.to_le_bytes())
}

fn value(i: u64) -> Digest {
    Purpose::Event.hash(&i.to_le_bytes())
}

/// A map holding keys `0..PRESENT`, key `i` inserted at version `i + 1` (one ledger entry per
/// key, so every version's history is kept, as in production).
fn build() -> CompletenessMap {
    let mut map = CompletenessMap::default();
    for i in 0..PRESENT {
        if let Err(err) = map.insert(key(i), value(i), i + 1) {
            panic!("building the benchmark map: {err}");
        }
    }
    map
}

fn bench_map(c: &mut Criterion) {
    let mut map = build();
    let mut group = c.benchmark_group("map_1m");

    // Keys beyond PRESENT are new; each iteration takes the next one at the next version. The
    // map grows by the number of iterations (a fraction of its size), which changes the depth
    // by well under one level.
    let mut next = PRESENT;
    group.bench_function("insert_new_key", |b| {
        b.iter(|| {
            next += 1;
            black_box(map.insert(key(next), value(next), next))
        })
    });

    let mut round = 0u64;
    group.bench_function("update_existing_key", |b| {
        b.iter(|| {
            round += 1;
            let version = map.latest_version() + 1;
            let k = key(round.wrapping_mul(7_919) % PRESENT);
            black_box(map.insert(k, value(version), version))
        })
    });

    let latest = map.latest_version();
    let mut probe = 0u64;
    group.bench_function("prove_latest", |b| {
        b.iter(|| {
            probe = (probe + 104_729) % PRESENT;
            black_box(map.prove(&key(probe), latest))
        })
    });

    // Version PRESENT / 2: half the keys present, and most nodes on each path have been
    // rewritten since, so this exercises the history lookups.
    let old = PRESENT / 2;
    group.bench_function("prove_old_version", |b| {
        b.iter(|| {
            probe = (probe + 104_729) % old;
            black_box(map.prove(&key(probe), old))
        })
    });

    group.bench_function("prove_absent_latest", |b| {
        b.iter(|| {
            probe += 1;
            black_box(map.prove_absent(&key(u64::MAX - probe), latest))
        })
    });

    let root = map.root();
    let samples: Vec<_> = (0..1024u64)
        .map(|i| {
            let k = key(i * 977 % PRESENT);
            let proof = match map.prove(&k, latest) {
                Ok(proof) => proof,
                Err(err) => panic!("proof of a present key: {err}"),
            };
            let v = map.get(&k, latest).unwrap_or(Digest::ZERO);
            (k, v, proof)
        })
        .collect();
    let mut index = 0usize;
    group.bench_function("verify_membership", |b| {
        b.iter_batched(
            || {
                index = (index + 1) % samples.len();
                &samples[index]
            },
            |(k, v, proof)| black_box(verify_membership(&root, k, v, proof)),
            BatchSize::SmallInput,
        )
    });

    let absent = match map.prove_absent(&key(u64::MAX), latest) {
        Ok(proof) => proof,
        Err(err) => panic!("proof of an absent key: {err}"),
    };
    group.bench_function("verify_non_membership", |b| {
        b.iter(|| black_box(verify_non_membership(&root, &key(u64::MAX), &absent)))
    });
    group.finish();
}

// What `criterion_group!`/`criterion_main!` expand to, written out so that no undocumented
// public function is generated (the workspace warns on missing docs).
fn main() {
    let mut criterion = Criterion::default().configure_from_args();
    bench_map(&mut criterion);
    criterion.final_summary();
}

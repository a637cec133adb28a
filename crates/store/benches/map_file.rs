//! The completeness map over its file at a ledger's scale: what one subject's update and one
//! membership proof cost once the map holds 200,000 keys (about a million events' manifests),
//! when the position index is far larger than the CPU's caches.
//!
//! - `map_file/update_200k`: set an existing key to a new value at a new version (a walk down
//!   the key's path with siblings, then the new nodes staged), flushing staged records to the
//!   file every 64 updates as a ledger commit would, untimed.
//! - `map_file/prove_200k`: a membership proof of an existing key at the latest version.
//!
//! Run with `cargo bench -p wasteledger-store --bench map_file`.

#![allow(
    clippy::expect_used,
    reason = "a benchmark whose setup fails should stop loudly, not measure nothing"
)]

use std::hint::black_box;
use std::time::{Duration, Instant};

use criterion::{Criterion, Throughput};
use wasteledger_core::hash::Digest;
use wasteledger_core::map::CompletenessMap;
use wasteledger_store::map_file::MapFile;

const KEYS: u64 = 200_000;
const FLUSH_EVERY: u64 = 64;

fn key(n: u64) -> Digest {
    Digest(*blake3::hash(&n.to_le_bytes()).as_bytes())
}

fn value(n: u64) -> Digest {
    Digest(*blake3::hash(&n.to_be_bytes()).as_bytes())
}

fn bench(c: &mut Criterion) {
    let dir = tempfile::tempdir().expect("temporary directory");
    let file = MapFile::open(&dir.path().join("map"), 0)
        .expect("open map file")
        .file;
    let mut map = CompletenessMap::new(file);
    for n in 0..KEYS {
        map.insert(key(n), value(n), n + 1).expect("insert");
        if n.is_multiple_of(FLUSH_EVERY) {
            map.store().flush().expect("flush");
        }
    }
    map.store().flush().expect("flush");

    let mut group = c.benchmark_group("map_file");
    group.throughput(Throughput::Elements(1));
    // A stride through the keys visits them in an order unrelated to insertion.
    let mut n = 0u64;
    let mut version = KEYS;
    group.bench_function("update_200k", |b| {
        // Only the updates are timed. The flushes write ~2.5 KB of records per update to the
        // file, hundreds of MB/s at this rate (a ledger writes a few MB/s), and timing them
        // would measure the kernel's dirty-page throttling instead of the map.
        b.iter_custom(|iters| {
            let mut timed = Duration::ZERO;
            for _ in 0..iters {
                n = (n + 7_919) % KEYS;
                version += 1;
                let started = Instant::now();
                black_box(map.insert(key(n), value(version), version).expect("update"));
                timed += started.elapsed();
                if version.is_multiple_of(FLUSH_EVERY) {
                    map.store().flush().expect("flush");
                }
            }
            timed
        })
    });
    let mut m = 0u64;
    group.bench_function("prove_200k", |b| {
        b.iter(|| {
            m = (m + 7_919) % KEYS;
            map.prove(&key(m), version).expect("prove")
        })
    });
    group.finish();
}

fn main() {
    let mut criterion = Criterion::default().configure_from_args();
    bench(&mut criterion);
    criterion.final_summary();
}

//! Log append throughput with real fsync: 512-byte entries, each append acknowledged only once
//! durable.
//!
//! - `append_512B/1_writer`: one writer, waiting for each acknowledgement (one fsync per entry).
//! - `append_512B/1_writer_pipelined`: one writer that does not wait (openraft's pattern:
//!   callbacks arrive later), so the committer groups consecutive appends.
//! - `append_512B/16_writers`: 16 threads, each waiting for its own acknowledgement before its
//!   next append; the committer shares one fsync among everything queued.
//! - `baseline/*`: raw sled on this disk for comparison with the trap note: insert + `flush()`
//!   (not durable), and insert + `flush()` + `fdatasync` per entry.
//!
//! Throughput is reported in entries/s. Runs on a directory on the real disk: the system temp
//! directory unless it is tmpfs (fsync there is free), else `target/`.
//!
//! Run with `cargo bench -p wasteledger-store --bench log`.

#![allow(
    clippy::expect_used,
    reason = "a benchmark whose setup fails should stop loudly, not measure nothing"
)]

use std::fs::File;
use std::path::{Path, PathBuf};
use std::sync::mpsc;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use criterion::{Criterion, Throughput};
use wasteledger_store::{DurableDb, LogStore};

const ENTRY_BYTES: usize = 512;
const WRITERS: u64 = 16;

/// A directory on a real disk for the benchmark databases.
fn bench_base() -> PathBuf {
    let temp = std::env::temp_dir();
    if is_tmpfs(&temp) {
        Path::new(env!("CARGO_MANIFEST_DIR")).join("../../target/bench-tmp")
    } else {
        temp
    }
}

/// Whether `path` is on tmpfs, from the longest matching mount point in `/proc/mounts`.
fn is_tmpfs(path: &Path) -> bool {
    let Ok(mounts) = std::fs::read_to_string("/proc/mounts") else {
        return false;
    };
    let path = path.canonicalize().unwrap_or_else(|_| path.to_path_buf());
    mounts
        .lines()
        .filter_map(|line| {
            let mut fields = line.split_whitespace();
            let (_, mount, fstype) = (fields.next()?, fields.next()?, fields.next()?);
            path.starts_with(mount)
                .then(|| (mount.len(), fstype == "tmpfs"))
        })
        .max_by_key(|(len, _)| *len)
        .is_some_and(|(_, tmpfs)| tmpfs)
}

fn temp_dir() -> tempfile::TempDir {
    let base = bench_base();
    std::fs::create_dir_all(&base).expect("bench dir");
    tempfile::Builder::new()
        .prefix("wl-store-bench")
        .tempdir_in(base)
        .expect("tempdir")
}

/// A log store in a fresh directory, and the next index to append.
struct Fixture {
    _dir: tempfile::TempDir,
    store: Arc<LogStore>,
    next: Arc<Mutex<u64>>,
}

impl Fixture {
    /// Prints how many requests each fsync served over the whole run (warm-up included).
    fn report(&self, name: &str) {
        let stats = self.store.db().stats();
        let per_sync = stats.requests as f64 / stats.syncs.max(1) as f64;
        eprintln!(
            "{name}: {} syncs served {} requests ({per_sync:.1} per fsync)",
            stats.syncs, stats.requests
        );
    }

    fn new() -> Self {
        let dir = temp_dir();
        let store =
            LogStore::open(DurableDb::open(dir.path().join("db")).expect("db")).expect("log");
        Fixture {
            _dir: dir,
            store: Arc::new(store),
            next: Arc::new(Mutex::new(1)),
        }
    }
}

/// Appends one entry at the next index and returns a receiver for its acknowledgement.
fn append_one(store: &LogStore, next: &Mutex<u64>, payload: &[u8]) -> mpsc::Receiver<bool> {
    let (tx, rx) = mpsc::sync_channel(1);
    let mut next = next.lock().expect("index lock");
    store
        .append(vec![(*next, payload.to_vec())], move |r| {
            let _ = tx.send(r.is_ok());
        })
        .expect("append");
    *next += 1;
    rx
}

fn wait(rx: &mpsc::Receiver<bool>) {
    assert!(
        rx.recv_timeout(Duration::from_secs(60)).expect("ack"),
        "sync failed"
    );
}

fn append(c: &mut Criterion) {
    let payload = vec![0xa5u8; ENTRY_BYTES];
    let mut group = c.benchmark_group("append_512B");
    group.throughput(Throughput::Elements(1));

    let fx = Fixture::new();
    group.bench_function("1_writer", |b| {
        b.iter_custom(|iters| {
            let start = Instant::now();
            for _ in 0..iters {
                wait(&append_one(&fx.store, &fx.next, &payload));
            }
            start.elapsed()
        });
    });
    fx.report("1_writer");

    let fx = Fixture::new();
    group.bench_function("1_writer_pipelined", |b| {
        b.iter_custom(|iters| {
            let start = Instant::now();
            let mut last = None;
            for _ in 0..iters {
                last = Some(append_one(&fx.store, &fx.next, &payload));
            }
            // Callbacks run in order: the last one implies all the others.
            if let Some(rx) = last {
                wait(&rx);
            }
            start.elapsed()
        });
    });
    fx.report("1_writer_pipelined");

    let fx = Fixture::new();
    group.bench_function("16_writers", |b| {
        b.iter_custom(|iters| {
            let start = Instant::now();
            let threads: Vec<_> = (0..WRITERS)
                .map(|w| {
                    // Spread `iters` over the writers.
                    let n = iters / WRITERS + u64::from(w < iters % WRITERS);
                    let (store, next, payload) =
                        (Arc::clone(&fx.store), Arc::clone(&fx.next), payload.clone());
                    std::thread::spawn(move || {
                        for _ in 0..n {
                            wait(&append_one(&store, &next, &payload));
                        }
                    })
                })
                .collect();
            for thread in threads {
                thread.join().expect("writer");
            }
            start.elapsed()
        });
    });
    fx.report("16_writers");
    group.finish();
}

fn baseline(c: &mut Criterion) {
    let payload = vec![0xa5u8; ENTRY_BYTES];
    let mut group = c.benchmark_group("baseline");
    group.throughput(Throughput::Elements(1));
    let dir = temp_dir();
    let db = sled::Config::new()
        .path(dir.path().join("raw"))
        .open()
        .expect("sled");
    let data_file = File::open(dir.path().join("raw/db")).expect("data file");
    let mut key = 0u64;

    group.bench_function("sled_insert_flush", |b| {
        b.iter(|| {
            key += 1;
            let _ = db
                .insert(key.to_be_bytes(), payload.as_slice())
                .expect("insert");
            let _ = db.flush().expect("flush");
        });
    });
    group.bench_function("sled_insert_flush_fdatasync", |b| {
        b.iter(|| {
            key += 1;
            let _ = db
                .insert(key.to_be_bytes(), payload.as_slice())
                .expect("insert");
            let _ = db.flush().expect("flush");
            data_file.sync_data().expect("fdatasync");
        });
    });
    group.finish();
}

// What `criterion_group!`/`criterion_main!` expand to, written out so that no undocumented
// public function is generated (the workspace warns on missing docs).
fn main() {
    let mut criterion = Criterion::default()
        .sample_size(10)
        .warm_up_time(Duration::from_secs(1))
        .measurement_time(Duration::from_secs(5))
        .configure_from_args();
    append(&mut criterion);
    baseline(&mut criterion);
    criterion.final_summary();
}

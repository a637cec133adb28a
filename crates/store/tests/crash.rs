//! Crash test: every append acknowledged before a SIGKILL is there after reopening.
//!
//! The parent test re-executes this test binary, running only the (ignored) child test, with
//! the store directory in an environment variable. The child appends 512-byte entries with many
//! in flight and prints `ACK <index>` after each acknowledgement; the parent reads those lines
//! and kills the child with SIGKILL (`Child::kill`) mid-stream, reopens the store and checks
//! every acknowledged entry, byte for byte. Three rounds run on the same directory, each child
//! continuing where the recovered log ends.
//!
//! A SIGKILL loses what the process had not handed to the kernel, not the page cache, so this
//! checks the acknowledgement protocol (no ack before the write and its sync request) and sled's
//! recovery from a torn process; it cannot simulate a power cut (that needs a fault-injecting
//! block device such as dm-log-writes).

#![allow(
    clippy::expect_used,
    reason = "test code: a failed expectation is a test failure with a message"
)]

use std::io::{BufRead, BufReader, Write};
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use wasteledger_store::{DurableDb, LogStore};

/// Environment variable carrying the store directory to the child.
const DIR_ENV: &str = "WL_STORE_CRASH_DIR";
/// Name of the child test, as libtest knows it.
const CHILD_TEST: &str = "crash_child_appends_until_killed";
/// Size of each entry.
const ENTRY_BYTES: usize = 512;
/// Upper bound on what one child appends (it is killed long before).
const CHILD_MAX_ENTRIES: u64 = 200_000;
/// Appends the child keeps in flight, so that the kill lands among unacknowledged writes.
const IN_FLIGHT: u64 = 256;
/// Rounds of spawn, kill and verify.
const ROUNDS: u64 = 3;
/// Deadline for one round.
const ROUND_DEADLINE: Duration = Duration::from_secs(120);

/// The entry at `index`: its index, then a pattern derived from it, so that a misplaced,
/// truncated or torn entry cannot pass for the right one.
fn entry_bytes(index: u64) -> Vec<u8> {
    let mut bytes = Vec::with_capacity(ENTRY_BYTES);
    bytes.extend_from_slice(&index.to_be_bytes());
    let mut x = index.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1;
    while bytes.len() < ENTRY_BYTES {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        bytes.push(x as u8);
    }
    bytes
}

fn open(dir: &Path) -> LogStore {
    LogStore::open(DurableDb::open(dir).expect("open db")).expect("open log")
}

#[test]
#[ignore = "child process of acknowledged_appends_survive_sigkill; does nothing on its own"]
fn crash_child_appends_until_killed() {
    let Some(dir) = std::env::var_os(DIR_ENV) else {
        return;
    };
    let store = open(Path::new(&dir));
    let start = store.last_index().map_or(1, |last| last + 1);
    let acked = Arc::new(AtomicU64::new(start - 1));
    let (tx, rx) = mpsc::channel::<(u64, bool)>();
    // Prints acknowledgements in order; a line is written only after its callback ran.
    let printer = std::thread::spawn(move || {
        let stdout = std::io::stdout();
        for (index, ok) in rx {
            let mut out = stdout.lock();
            let line = if ok {
                format!("ACK {index}")
            } else {
                format!("ERR {index}")
            };
            writeln!(out, "{line}").expect("stdout");
            out.flush().expect("stdout");
        }
    });
    for index in start..start + CHILD_MAX_ENTRIES {
        let deadline = Instant::now() + Duration::from_secs(30);
        while index > acked.load(Ordering::Acquire) + IN_FLIGHT {
            assert!(Instant::now() < deadline, "acknowledgements stalled");
            std::thread::sleep(Duration::from_micros(50));
        }
        let (acked, tx) = (Arc::clone(&acked), tx.clone());
        store
            .append(vec![(index, entry_bytes(index))], move |result| {
                acked.store(index, Ordering::Release);
                let _ = tx.send((index, result.is_ok()));
            })
            .expect("append");
    }
    drop(tx);
    drop(store);
    printer.join().expect("printer");
    println!("DONE");
    // Wait to be killed; bounded, in case the parent is gone.
    std::thread::sleep(Duration::from_secs(60));
}

/// Takes one line of the child's output into account (libtest's own lines are ignored).
fn record(line: &str, last_ack: &mut Option<u64>, acks: &mut u64) {
    if let Some(index) = line.strip_prefix("ACK ") {
        let index: u64 = index.trim().parse().expect("ACK index");
        if let Some(previous) = *last_ack {
            assert_eq!(index, previous + 1, "acknowledgements out of order");
        }
        *last_ack = Some(index);
        *acks += 1;
    }
    assert!(
        !line.starts_with("ERR "),
        "child reported a failed append: {line}"
    );
    assert_ne!(line, "DONE", "child finished before it was killed");
}

/// One round: run a child, kill it after `kill_after` acknowledgements, return the highest
/// acknowledged index.
fn run_child_and_kill(dir: &Path, kill_after: u64) -> Option<u64> {
    let mut child = Command::new(std::env::current_exe().expect("test binary"))
        .args([
            CHILD_TEST,
            "--exact",
            "--ignored",
            "--nocapture",
            "--test-threads=1",
        ])
        .env(DIR_ENV, dir)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("spawn child");
    let stdout = child.stdout.take().expect("child stdout");
    let (tx, rx) = mpsc::channel::<String>();
    let reader = std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines() {
            let Ok(line) = line else { break };
            if tx.send(line).is_err() {
                break;
            }
        }
    });

    let deadline = Instant::now() + ROUND_DEADLINE;
    let mut last_ack: Option<u64> = None;
    let mut acks = 0u64;
    while acks < kill_after {
        let left = deadline.saturating_duration_since(Instant::now());
        match rx.recv_timeout(left) {
            Ok(line) => record(&line, &mut last_ack, &mut acks),
            Err(e) => {
                let _ = child.kill();
                let _ = child.wait();
                panic!("child stopped acknowledging after {acks} acks: {e}");
            }
        }
    }
    child.kill().expect("SIGKILL child");
    let status = child.wait().expect("wait child");
    assert!(!status.success(), "child exited by itself: {status}");
    // Lines the child printed before it died still count: each was printed after its ack.
    let drain_deadline = Instant::now() + Duration::from_secs(10);
    while let Ok(line) = rx.recv_timeout(drain_deadline.saturating_duration_since(Instant::now())) {
        record(&line, &mut last_ack, &mut acks);
    }
    reader.join().expect("reader");
    last_ack
}

#[test]
fn acknowledged_appends_survive_sigkill() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("store");
    let mut acknowledged: Option<u64> = None;
    for round in 0..ROUNDS {
        let round_ack = run_child_and_kill(&path, 2_000 + 1_500 * round);
        assert!(round_ack.is_some(), "round {round}: no acknowledgement");
        acknowledged = acknowledged.max(round_ack);
        let acknowledged = acknowledged.expect("some ack");

        let store = open(&path);
        let last = store.last_index().expect("log is not empty");
        assert!(
            last >= acknowledged,
            "round {round}: acknowledged up to {acknowledged}, recovered only up to {last}"
        );
        assert_eq!(store.first_index().expect("first"), Some(1));
        eprintln!("round {round}: acknowledged up to {acknowledged}, recovered up to {last}");
        // Everything recovered, acknowledged or not, is intact and contiguous; everything
        // acknowledged is recovered.
        let mut next = 1;
        while next <= last {
            let end = (next + 1_000).min(last + 1);
            let entries = store.range(next..end).expect("range");
            assert_eq!(
                entries.len() as u64,
                end - next,
                "round {round}: hole in {next}..{end}"
            );
            for (index, bytes) in entries {
                assert_eq!(
                    bytes,
                    entry_bytes(index),
                    "round {round}: entry {index} damaged"
                );
            }
            next = end;
        }
    }
}

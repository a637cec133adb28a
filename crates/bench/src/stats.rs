//! Latency samples and what a run reports: throughput, percentiles and per-window rates.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use serde::Serialize;

/// One completed operation: when it finished and how long it took.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Sample {
    /// Completion time.
    pub(crate) done: Instant,
    /// Submit-to-acknowledgement latency.
    pub(crate) latency: Duration,
}

/// The figures of one run at one concurrency.
#[derive(Clone, Debug, Serialize)]
pub(crate) struct RunReport {
    /// What was driven ("wasteledger" or "etcd").
    pub(crate) system: String,
    /// Concurrent clients.
    pub(crate) clients: usize,
    /// Operations acknowledged.
    pub(crate) ops: usize,
    /// Wall time of the run, seconds.
    pub(crate) seconds: f64,
    /// Acknowledged operations per second.
    pub(crate) ops_per_sec: f64,
    /// Latency percentiles, milliseconds.
    pub p50_ms: f64,
    /// 95th percentile, ms.
    pub p95_ms: f64,
    /// 99th percentile, ms.
    pub p99_ms: f64,
    /// Slowest, ms.
    pub(crate) max_ms: f64,
    /// Throughput of each consecutive window of `window` operations (completion order).
    pub(crate) windows: Vec<f64>,
    /// When each window began and ended (the previous window's last completion, or the start,
    /// to its own last completion).
    #[serde(skip)]
    pub(crate) window_bounds: Vec<(Instant, Instant)>,
    /// CPU milliseconds the three servers together spent per operation in each window
    /// (WasteLedger only): whether a window is slower because each operation costs more.
    pub(crate) window_cpu_ms_per_op: Vec<f64>,
    /// CPU seconds per server process during the run (node order).
    pub(crate) cpu_seconds: Vec<f64>,
    /// Per server process (node order), where its CPU went during the run: seconds by thread
    /// kind ([`ThreadCpu::since`]), largest first.
    pub(crate) cpu_by_thread: Vec<Vec<(String, f64)>>,
    /// On-disk bytes per acknowledged operation, per server (after the run; whole data dir).
    pub(crate) bytes_per_op: Vec<f64>,
    /// Submissions retried because the cluster had no leader for a moment.
    pub(crate) retries: u64,
    /// Entries by which the published (cosigned) checkpoint trailed the leader's head, sampled
    /// about once a second during the run: median and largest (WasteLedger only).
    pub(crate) checkpoint_lag: Option<[u64; 2]>,
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1e3
}

/// Summarises `samples` of a run that started at `started`.
pub(crate) fn summarise(
    system: &str,
    clients: usize,
    started: Instant,
    mut samples: Vec<Sample>,
    window: usize,
) -> RunReport {
    samples.sort_by_key(|s| s.done);
    let seconds = samples
        .last()
        .map(|s| s.done.duration_since(started).as_secs_f64())
        .unwrap_or(0.0);
    let mut windows = Vec::new();
    let mut window_bounds = Vec::new();
    if window > 0 {
        let mut from = started;
        for chunk in samples.chunks(window) {
            if chunk.len() < window {
                break; // a partial last window would distort the comparison
            }
            if let Some(last) = chunk.last() {
                let secs = last.done.duration_since(from).as_secs_f64();
                windows.push(chunk.len() as f64 / secs.max(1e-9));
                window_bounds.push((from, last.done));
                from = last.done;
            }
        }
    }
    let mut latencies: Vec<Duration> = samples.iter().map(|s| s.latency).collect();
    latencies.sort();
    let pct = |p: f64| {
        if latencies.is_empty() {
            return 0.0;
        }
        let i = ((latencies.len() as f64 * p).ceil() as usize).saturating_sub(1);
        ms(latencies[i.min(latencies.len() - 1)])
    };
    RunReport {
        system: system.to_owned(),
        clients,
        ops: samples.len(),
        seconds,
        ops_per_sec: samples.len() as f64 / seconds.max(1e-9),
        p50_ms: pct(0.50),
        p95_ms: pct(0.95),
        p99_ms: pct(0.99),
        max_ms: latencies.last().copied().map(ms).unwrap_or(0.0),
        windows,
        window_bounds,
        window_cpu_ms_per_op: Vec::new(),
        cpu_seconds: Vec::new(),
        cpu_by_thread: Vec::new(),
        bytes_per_op: Vec::new(),
        retries: 0,
        checkpoint_lag: None,
    }
}

/// CPU seconds (user + system) a process has used so far, from `/proc/PID/stat`.
pub(crate) fn cpu_seconds(pid: u32) -> Option<f64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    parse_stat(&stat).map(|(_, seconds)| seconds)
}

/// A running total sampled over time: (when, value), in time order.
pub(crate) type Series = Vec<(Instant, f64)>;

/// The value of `series` at `at`, interpolated linearly between the samples around it (the
/// first or last sample outside their span); `None` for an empty series.
pub(crate) fn value_at(series: &[(Instant, f64)], at: Instant) -> Option<f64> {
    let after = series.partition_point(|(t, _)| *t <= at);
    let (t1, v1) = *series.get(after).or(series.last())?;
    let Some(&(t0, v0)) = after.checked_sub(1).and_then(|i| series.get(i)) else {
        return Some(v1);
    };
    if t1 <= t0 {
        return Some(v0);
    }
    let part = at.duration_since(t0).as_secs_f64() / t1.duration_since(t0).as_secs_f64();
    Some(v0 + (v1 - v0) * part.min(1.0))
}

/// The command name and CPU seconds (user + system) of a `/proc/.../stat` line.
fn parse_stat(stat: &str) -> Option<(&str, f64)> {
    let (name, fields) = wasteledger_server::runtime::threads::split_stat(stat)?;
    // After ')': state is field 3 of stat(5), so utime (14) and stime (15) are at 11 and 12.
    let mut times = fields.skip(11);
    let utime: f64 = times.next()?.parse().ok()?;
    let stime: f64 = times.next()?.parse().ok()?;
    // USER_HZ is 100 on every Linux platform this runs on.
    Some((name, (utime + stime) / 100.0))
}

/// A thread's kind: its name without a trailing number, so a pool's threads add up
/// (`sled-io-3` → `sled-io`).
fn thread_kind(name: &str) -> String {
    name.trim_end_matches(|c: char| c.is_ascii_digit())
        .trim_end_matches(['-', '_', ' '])
        .to_owned()
}

/// What a process's CPU beyond its threads' sum is reported under: the CPU of threads that
/// exited since they were last read (their `/proc` entries are gone; tokio retires a worker
/// that blocked in `block_in_place` to its blocking pool, where it exits after 10 s idle),
/// and the kernel deriving the process's figure and each thread's separately (up to ~10 % of
/// a busy leader's CPU in short runs where no thread exited). Read the thread kinds as shares
/// of what is attributed.
const UNATTRIBUTED: &str = "(unattributed)";

/// The CPU time of each live thread of a process at one moment, from `/proc/PID/task`.
///
/// Why per thread: a node's CPU is spread over tokio's workers, sled's IO pool, the group
/// committer and sled's flusher, and which of them grows says what limits a run (sled wakes
/// its whole IO pool for every write it hands over, for example).
#[derive(Clone)]
pub(crate) struct ThreadCpu {
    /// Thread id → (kind, CPU seconds so far).
    threads: BTreeMap<u32, (String, f64)>,
}

impl ThreadCpu {
    /// Reads every thread of process `pid`; `None` if the process is gone.
    pub(crate) fn read(pid: u32) -> Option<ThreadCpu> {
        let mut threads = BTreeMap::new();
        for task in std::fs::read_dir(format!("/proc/{pid}/task"))
            .ok()?
            .flatten()
        {
            let Some(tid) = task.file_name().to_str().and_then(|t| t.parse().ok()) else {
                continue;
            };
            // A thread may exit between the listing and this read: skip it.
            let Ok(stat) = std::fs::read_to_string(task.path().join("stat")) else {
                continue;
            };
            if let Some((name, seconds)) = parse_stat(&stat) {
                threads.insert(tid, (thread_kind(name), seconds));
            }
        }
        Some(ThreadCpu { threads })
    }

    /// Adds a later reading: threads seen again take their newer figure, threads gone since
    /// keep their last one. Reading a process now and then during a long run and merging
    /// keeps most of the CPU of threads that exit before its end.
    pub(crate) fn merge(&mut self, later: ThreadCpu) {
        self.threads.extend(later.threads);
    }

    /// CPU seconds by thread kind between `before` and this reading, largest first, and
    /// [`UNATTRIBUTED`]: what `process_seconds` (the process's own figure over the same span)
    /// holds beyond the threads' sum.
    pub(crate) fn since(&self, before: &ThreadCpu, process_seconds: f64) -> Vec<(String, f64)> {
        let mut by_kind: BTreeMap<&str, f64> = BTreeMap::new();
        for (tid, (kind, seconds)) in &self.threads {
            let earlier = before.threads.get(tid).map_or(0.0, |(_, s)| *s);
            *by_kind.entry(kind).or_default() += (seconds - earlier).max(0.0);
        }
        let live: f64 = by_kind.values().sum();
        let mut split: Vec<(String, f64)> = by_kind
            .into_iter()
            .map(|(kind, seconds)| (kind.to_owned(), seconds))
            .collect();
        // Ticks are counted per thread and per process separately: ignore rounding.
        if process_seconds - live > 0.05 {
            split.push((UNATTRIBUTED.to_owned(), process_seconds - live));
        }
        split.retain(|(_, seconds)| *seconds > 0.0);
        split.sort_by(|a, b| b.1.total_cmp(&a.1));
        split
    }
}

/// Total size of the files under `dir`.
pub(crate) fn dir_bytes(dir: &std::path::Path) -> u64 {
    let mut total = 0;
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        let Ok(entries) = std::fs::read_dir(&d) else {
            continue;
        };
        for e in entries.flatten() {
            match e.metadata() {
                Ok(m) if m.is_dir() => stack.push(e.path()),
                Ok(m) => total += m.len(),
                Err(_) => {}
            }
        }
    }
    total
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percentiles_and_windows() {
        let start = Instant::now();
        let samples: Vec<Sample> = (1..=100)
            .map(|i| Sample {
                done: start + Duration::from_millis(10 * i),
                latency: Duration::from_millis(i),
            })
            .collect();
        let r = summarise("x", 4, start, samples, 50);
        assert_eq!(r.ops, 100);
        assert!((r.seconds - 1.0).abs() < 1e-9);
        assert!((r.p50_ms - 50.0).abs() < 1e-9);
        assert!((r.p99_ms - 99.0).abs() < 1e-9);
        assert_eq!(r.windows.len(), 2);
        assert!((r.windows[0] - 100.0).abs() < 1e-6);
        assert!((r.windows[1] - 100.0).abs() < 1e-6);
        let ms = Duration::from_millis;
        assert_eq!(
            r.window_bounds,
            vec![
                (start, start + ms(500)),
                (start + ms(500), start + ms(1000))
            ]
        );
    }

    #[test]
    fn a_series_is_read_between_its_samples() {
        let t = Instant::now();
        let at = |ms: u64| t + Duration::from_millis(ms);
        assert_eq!(value_at(&[], t), None);
        let series = [(at(100), 1.0), (at(200), 3.0), (at(400), 4.0)];
        assert_eq!(value_at(&series, at(150)), Some(2.0));
        assert_eq!(value_at(&series, at(200)), Some(3.0));
        assert_eq!(value_at(&series, at(300)), Some(3.5));
        // Outside the samples: the nearest one.
        assert_eq!(value_at(&series, at(50)), Some(1.0));
        assert_eq!(value_at(&series, at(900)), Some(4.0));
    }

    #[test]
    fn own_cpu_time_is_readable() {
        assert!(cpu_seconds(std::process::id()).is_some());
    }

    #[test]
    fn stat_lines_and_thread_kinds() {
        let line = "4242 (sled-io-3) S 1 2 3 4 5 6 7 8 9 10 250 50 0 0 20 0 9 0 100";
        assert_eq!(parse_stat(line), Some(("sled-io-3", 3.0)));
        // A name with spaces and a parenthesis.
        let odd = "7 (log (flusher) x) R 1 2 3 4 5 6 7 8 9 10 1 2 0 0";
        assert_eq!(parse_stat(odd), Some(("log (flusher) x", 0.03)));
        assert_eq!(parse_stat("7 (truncated) R 1 2"), None);
        assert_eq!(thread_kind("sled-io-12"), "sled-io");
        assert_eq!(thread_kind("tokio-rt-worker"), "tokio-rt-worker");
        assert_eq!(thread_kind("log flusher"), "log flusher");
    }

    /// A reading of `(thread id, name, CPU seconds)`.
    fn reading(threads: &[(u32, &str, f64)]) -> ThreadCpu {
        ThreadCpu {
            threads: threads
                .iter()
                .map(|(tid, name, s)| (*tid, (thread_kind(name), *s)))
                .collect(),
        }
    }

    #[test]
    fn a_split_adds_pools_up_and_accounts_for_exited_threads() {
        let before = reading(&[
            (1, "main", 1.0),
            (2, "sled-io-0", 0.5),
            (9, "blocking-1", 2.0),
        ]);
        let after = reading(&[
            (1, "main", 1.5),
            (2, "sled-io-0", 1.0),
            (3, "sled-io-1", 1.25),
            (4, "tokio-rt-worker", 3.0),
        ]);
        // Live threads used 0.5 + 0.5 + 1.25 + 3.0 = 5.25 s; the process says 6.0.
        let split = after.since(&before, 6.0);
        assert_eq!(
            split,
            vec![
                ("tokio-rt-worker".to_owned(), 3.0),
                ("sled-io".to_owned(), 1.75),
                (UNATTRIBUTED.to_owned(), 0.75),
                ("main".to_owned(), 0.5),
            ]
        );
    }

    #[test]
    fn a_merged_reading_keeps_threads_that_exited() {
        let before = reading(&[(1, "tokio-rt-worker", 1.0), (2, "tokio-rt-worker", 0.0)]);
        // Thread 2 works, is read at 4.0 s, then exits; thread 3 starts.
        let mut seen = reading(&[(1, "tokio-rt-worker", 2.0), (2, "tokio-rt-worker", 4.0)]);
        seen.merge(reading(&[
            (1, "tokio-rt-worker", 3.0),
            (3, "sled-io-0", 1.0),
        ]));
        assert_eq!(
            seen.since(&before, 7.5),
            vec![
                ("tokio-rt-worker".to_owned(), 6.0),
                ("sled-io".to_owned(), 1.0),
                (UNATTRIBUTED.to_owned(), 0.5),
            ]
        );
    }

    #[test]
    fn own_threads_are_readable() {
        let pid = std::process::id();
        let reading = ThreadCpu::read(pid).expect("this process");
        assert!(!reading.threads.is_empty());
        assert!(ThreadCpu::read(u32::MAX).is_none(), "no such process");
    }
}

//! Latency samples and what a run reports: throughput, percentiles and per-window rates.

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
    /// CPU seconds per server process during the run (node order).
    pub(crate) cpu_seconds: Vec<f64>,
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
    if window > 0 {
        let mut from = started;
        for chunk in samples.chunks(window) {
            if chunk.len() < window {
                break; // a partial last window would distort the comparison
            }
            if let Some(last) = chunk.last() {
                let secs = last.done.duration_since(from).as_secs_f64();
                windows.push(chunk.len() as f64 / secs.max(1e-9));
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
        cpu_seconds: Vec::new(),
        bytes_per_op: Vec::new(),
        retries: 0,
        checkpoint_lag: None,
    }
}

/// CPU seconds (user + system) a process has used so far, from `/proc/PID/stat`.
pub(crate) fn cpu_seconds(pid: u32) -> Option<f64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name may contain spaces; fields resume after the last ')'.
    let rest = stat.rsplit_once(')')?.1;
    let fields: Vec<&str> = rest.split_whitespace().collect();
    // After ')': state is field 3 of stat(5), so utime (14) and stime (15) are at 11 and 12.
    let utime: f64 = fields.get(11)?.parse().ok()?;
    let stime: f64 = fields.get(12)?.parse().ok()?;
    // USER_HZ is 100 on every Linux platform this runs on.
    Some((utime + stime) / 100.0)
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
    }

    #[test]
    fn own_cpu_time_is_readable() {
        assert!(cpu_seconds(std::process::id()).is_some());
    }
}

//! `wasteledger-bench`: the load generator behind BENCHMARKS.md.
//!
//! `wasteledger-bench ledger` starts a 3-node cluster of `wasteledger node` processes on
//! loopback with production settings (fsync on), registers the sample parties, and drives
//! concurrent clients submitting signed manifest lifecycles. `wasteledger-bench etcd` drives a
//! running etcd with puts of a comparable size through the same client code, so
//! `bench/compare-etcd.sh` can put both side by side in one run.

use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context;
use clap::{Parser, Subcommand};

mod etcd;
mod ledger;
mod stats;

#[derive(Parser)]
#[command(name = "wasteledger-bench", version, about)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(clap::Args, Clone)]
struct Load {
    /// Concurrency levels to run, in order, e.g. 1,16,64,256.
    #[arg(long, value_delimiter = ',', default_value = "1,16,64")]
    clients: Vec<usize>,
    /// Operations per concurrency level.
    #[arg(long, default_value_t = 5000)]
    events: u64,
    /// Stop each level after this many seconds, even if events remain.
    #[arg(long)]
    duration: Option<u64>,
    /// Report throughput per window of this many operations (0 = off).
    #[arg(long, default_value_t = 0)]
    window: usize,
    /// Print JSON instead of a table.
    #[arg(long)]
    json: bool,
}

#[derive(Subcommand)]
enum Command {
    /// Start a 3-node WasteLedger cluster and drive it with signed manifest lifecycles.
    Ledger {
        #[command(flatten)]
        load: Load,
        /// The wasteledger binary (default: next to this one).
        #[arg(long)]
        binary: Option<PathBuf>,
        /// Each client advances this many lifecycles together, sending each step's events in
        /// one SubmitBatch (at most 256); 1 sends one Submit per event.
        #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u16).range(1..=wasteledger_server::MAX_BATCH as i64))]
        batch: u16,
        /// Fetch and verify this many custody proofs at the end.
        #[arg(long, default_value_t = 0)]
        proofs: usize,
        /// Measure a follower restart at the end.
        #[arg(long)]
        restart: bool,
        /// At the end, add a fourth node (a replica) as a learner and time its catch-up.
        #[arg(long)]
        learner: bool,
        /// Keep the cluster's directory (node data and logs) and print its path at the end.
        #[arg(long)]
        keep_data: bool,
        /// Nodes snapshot (and purge their Raft logs) every this many entries or events
        /// instead of the production default: for measuring what snapshots cost a run.
        #[arg(long, value_name = "N", value_parser = clap::value_parser!(u64).range(1..))]
        snapshot_every: Option<u64>,
        /// Also write the JSON report to this file, rewritten as each figure is measured, so
        /// a run interrupted after its load still leaves the figures it had.
        #[arg(long, value_name = "FILE")]
        save: Option<PathBuf>,
    },
    /// Drive a running etcd with puts of `--value-size` bytes.
    Etcd {
        #[command(flatten)]
        load: Load,
        /// The etcd client URL of the member to write to (its leader, for a fair comparison).
        #[arg(long, default_value = "http://127.0.0.1:2379")]
        endpoint: String,
        /// Bytes per value.
        #[arg(long, default_value_t = 512)]
        value_size: usize,
    },
}

fn print_table(reports: &[stats::RunReport]) {
    #[allow(clippy::print_stdout)]
    {
        println!(
            "{:<12} {:>7} {:>8} {:>10} {:>8} {:>8} {:>8} {:>8}  cpu s/node      bytes/op/node",
            "system", "clients", "ops", "ops/s", "p50 ms", "p95 ms", "p99 ms", "max ms"
        );
        for r in reports {
            let cpu: Vec<String> = r.cpu_seconds.iter().map(|c| format!("{c:.1}")).collect();
            let bytes: Vec<String> = r.bytes_per_op.iter().map(|b| format!("{b:.0}")).collect();
            println!(
                "{:<12} {:>7} {:>8} {:>10.0} {:>8.2} {:>8.2} {:>8.2} {:>8.1}  {:<15} {}",
                r.system,
                r.clients,
                r.ops,
                r.ops_per_sec,
                r.p50_ms,
                r.p95_ms,
                r.p99_ms,
                r.max_ms,
                cpu.join("/"),
                bytes.join("/")
            );
            if r.retries > 0 {
                println!("  retried during leader elections: {}", r.retries);
            }
            for (node, split) in r.cpu_by_thread.iter().enumerate() {
                let total: f64 = split.iter().map(|(_, s)| s).sum();
                if total <= 0.0 {
                    continue;
                }
                let parts: Vec<String> = split
                    .iter()
                    .take(5)
                    .map(|(kind, s)| format!("{kind} {s:.1} s ({:.0} %)", 100.0 * s / total))
                    .collect();
                println!("  node {} cpu by thread: {}", node + 1, parts.join(", "));
            }
            if let Some([median, max]) = r.checkpoint_lag {
                println!(
                    "  published checkpoint behind the head: median {median}, max {max} entries"
                );
            }
            if !r.windows.is_empty() {
                let w: Vec<String> = r.windows.iter().map(|w| format!("{w:.0}")).collect();
                println!("  ops/s per window: {}", w.join(", "));
            }
            if !r.window_cpu_ms_per_op.is_empty() {
                let w: Vec<String> = r
                    .window_cpu_ms_per_op
                    .iter()
                    .map(|c| format!("{c:.3}"))
                    .collect();
                println!("  cluster CPU ms/op per window: {}", w.join(", "));
            }
        }
    }
}

/// Writes the report so far to `path` (through a temporary file, so a reader never sees half
/// of one).
fn save_report(
    path: &std::path::Path,
    reports: &[stats::RunReport],
    extras: &ledger::Extras,
) -> anyhow::Result<()> {
    let out = serde_json::json!({ "runs": reports, "extras": extras });
    let tmp = path.with_extension("partial");
    std::fs::write(&tmp, serde_json::to_string_pretty(&out)?)
        .with_context(|| format!("writing {}", tmp.display()))?;
    std::fs::rename(&tmp, path).with_context(|| format!("renaming to {}", path.display()))?;
    Ok(())
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    match cli.command {
        Command::Ledger {
            load,
            binary,
            batch,
            proofs,
            restart,
            learner,
            keep_data,
            snapshot_every,
            save,
        } => {
            let binary = match binary {
                Some(b) => b,
                None => std::env::current_exe()
                    .context("locating this binary")?
                    .with_file_name("wasteledger"),
            };
            let opts = ledger::LedgerBench {
                binary,
                clients: load.clients.clone(),
                events: load.events,
                duration: load.duration.map(Duration::from_secs),
                window: load.window,
                batch: usize::from(batch),
                proofs,
                restart,
                learner,
                keep_data,
                snapshot_every,
            };
            if let Some(path) = &save {
                // Before the load, so a path that cannot be written fails now, not at the end.
                save_report(path, &[], &ledger::Extras::default())?;
            }
            let mut save_error = None;
            let mut measured = |reports: &[stats::RunReport], extras: &ledger::Extras| {
                if let Some(path) = &save
                    && let Err(e) = save_report(path, reports, extras)
                {
                    save_error.get_or_insert(e);
                }
            };
            let (reports, extras) = ledger::run(&opts, &mut measured).await?;
            if let Some(e) = save_error {
                return Err(e);
            }
            if load.json {
                let out = serde_json::json!({ "runs": reports, "extras": extras });
                #[allow(clippy::print_stdout)]
                {
                    println!("{}", serde_json::to_string_pretty(&out)?);
                }
            } else {
                print_table(&reports);
                #[allow(clippy::print_stdout)]
                {
                    println!("{extras:#?}");
                }
            }
        }
        Command::Etcd {
            load,
            endpoint,
            value_size,
        } => {
            let mut reports = Vec::new();
            for &clients in &load.clients {
                let (started, samples) = etcd::drive(
                    &endpoint,
                    clients,
                    load.events,
                    value_size,
                    load.duration.map(Duration::from_secs),
                )
                .await?;
                reports.push(stats::summarise(
                    "etcd",
                    clients,
                    started,
                    samples,
                    load.window,
                ));
            }
            if load.json {
                let out = serde_json::json!({ "runs": reports });
                #[allow(clippy::print_stdout)]
                {
                    println!("{}", serde_json::to_string_pretty(&out)?);
                }
            } else {
                print_table(&reports);
            }
        }
    }
    Ok(())
}

//! `node` and `demo`: run the server code in this process.

use std::path::PathBuf;

use crate::exit::{CmdResult, Failure, REMOTE, STORAGE_STALLED, USAGE};

/// Turns transparent huge pages off for this process (Linux; a child process would inherit
/// the setting, and the node starts none).
///
/// Why: a node's memory churns — sled takes a fresh 16 MiB IO buffer at every flush and the
/// allocator hands freed memory back to the OS — so with huge pages the kernel faults in and
/// zeroes a 2 MiB page again and again. That was 19 % of a leader's CPU at 64 writers, and
/// turning it off gave 42–48 % more events/s and a third to a half of the p99 (BENCHMARKS.md,
/// twelfth pass). mimalloc asks for huge pages on its own, and hosts set to `always` give them
/// unasked, so the process opts out rather than the allocator.
fn no_transparent_huge_pages() {
    #[cfg(target_os = "linux")]
    if let Err(e) = rustix::thread::disable_transparent_huge_pages(true) {
        // Kernels before 3.15 lack the flag; the node works, only slower under churn.
        tracing::warn!("cannot turn transparent huge pages off for this process: {e}");
    }
}

fn runtime() -> Result<tokio::runtime::Runtime, Failure> {
    tokio::runtime::Runtime::new().map_err(|e| {
        Failure::new(
            REMOTE,
            anyhow::anyhow!("cannot start the async runtime: {e}"),
        )
    })
}

/// `wasteledger demo`.
pub(crate) fn demo(data_dir: Option<PathBuf>) -> CmdResult {
    no_transparent_huge_pages();
    let temp = match data_dir {
        Some(_) => None,
        None => Some(tempfile::tempdir().map_err(|e| {
            Failure::new(
                REMOTE,
                anyhow::anyhow!("cannot create a temporary directory: {e}"),
            )
        })?),
    };
    let dir = data_dir.unwrap_or_else(|| {
        temp.as_ref()
            .map(|t| t.path().to_path_buf())
            .unwrap_or_default()
    });
    let mut out = std::io::stdout();
    runtime()?
        .block_on(wasteledger_server::demo::run(dir, &mut out))
        .map_err(|e| Failure::new(REMOTE, anyhow::anyhow!("demo failed: {e}")))
}

/// `wasteledger node --config FILE`.
pub(crate) fn node(path: PathBuf) -> CmdResult {
    no_transparent_huge_pages();
    let config =
        wasteledger_node::config::NodeConfig::load(&path).map_err(|e| Failure::new(USAGE, e))?;
    runtime()?
        .block_on(wasteledger_server::runtime::run_node(
            config,
            shutdown_signal(),
            exit_stalled,
        ))
        .map_err(|e| Failure::new(REMOTE, e))
}

/// Ends the process when the node's storage has stalled (the node has logged the details).
///
/// Nothing else can end it: a graceful shutdown, and even returning from `main`, would wait
/// for the stuck sync. Exiting loses nothing acknowledged, and restarting is how the storage
/// recovers; the distinct exit code tells the supervisor (and whoever reads its log) why.
fn exit_stalled() {
    eprintln!(
        "error: the node's storage stalled (a database sync did not return within \
         storage.stall_timeout_s); exiting so that it can be restarted"
    );
    std::process::exit(i32::from(STORAGE_STALLED));
}

/// Resolves on SIGTERM or Ctrl-C.
async fn shutdown_signal() {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{SignalKind, signal};
        match signal(SignalKind::terminate()) {
            Ok(mut term) => {
                tokio::select! {
                    _ = term.recv() => {}
                    _ = tokio::signal::ctrl_c() => {}
                }
            }
            Err(_) => {
                let _ = tokio::signal::ctrl_c().await;
            }
        }
    }
    #[cfg(not(unix))]
    {
        let _ = tokio::signal::ctrl_c().await;
    }
}

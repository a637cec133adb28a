//! `wasteledger`: the one binary. Thin: it parses arguments and calls the library crates.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};

/// A distributed, tamper-evident ledger for hazardous-waste manifests.
#[derive(Parser)]
#[command(name = "wasteledger", version, about, long_about = None)]
struct Cli {
    /// Log as JSON lines instead of human-readable text.
    #[arg(long, global = true)]
    log_json: bool,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run a node from its configuration file (for example config/node1.toml).
    ///
    /// The node opens its data directory, checks the stored ledger's integrity, joins the
    /// Raft cluster, serves the public API and cosigns checkpoints. SIGTERM or Ctrl-C stops
    /// it cleanly.
    Node {
        /// The node's TOML configuration file.
        #[arg(long, short)]
        config: PathBuf,
    },
    /// Run a three-node cluster in this process on loopback and walk through realistic
    /// manifests: a two-leg shipment with a node outage midway, a rejection sent to the
    /// alternate facility, and a custody proof verified offline (and a forged copy caught).
    Demo {
        /// Keep the cluster's data here instead of a temporary directory.
        #[arg(long)]
        data_dir: Option<PathBuf>,
    },
}

/// Exit code for usage and configuration errors.
const EXIT_USAGE: u8 = 2;
/// Exit code when the node fails at run time.
const EXIT_FAILURE: u8 = 3;

fn main() -> ExitCode {
    let cli = Cli::parse();
    let filter = tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| {
        // The demo narrates on stdout; keep its log to warnings.
        let default = if matches!(cli.command, Command::Demo { .. }) {
            "warn,openraft=error"
        } else {
            "info,openraft=warn"
        };
        tracing_subscriber::EnvFilter::new(default)
    });
    if cli.log_json {
        tracing_subscriber::fmt()
            .with_env_filter(filter)
            .json()
            .init();
    } else {
        tracing_subscriber::fmt().with_env_filter(filter).init();
    }
    match cli.command {
        Command::Node { config } => run_node(config),
        Command::Demo { data_dir } => run_demo(data_dir),
    }
}

fn run_demo(data_dir: Option<PathBuf>) -> ExitCode {
    let temp = match data_dir {
        Some(_) => None,
        None => match tempfile::tempdir() {
            Ok(t) => Some(t),
            Err(e) => {
                eprintln!("error: cannot create a temporary directory: {e}");
                return ExitCode::from(EXIT_FAILURE);
            }
        },
    };
    let dir = data_dir.unwrap_or_else(|| {
        temp.as_ref()
            .map(|t| t.path().to_path_buf())
            .unwrap_or_default()
    });
    let runtime = match tokio::runtime::Runtime::new() {
        Ok(r) => r,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            return ExitCode::from(EXIT_FAILURE);
        }
    };
    let mut out = std::io::stdout();
    match runtime.block_on(wasteledger_server::demo::run(dir, &mut out)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("demo failed: {e}");
            ExitCode::from(EXIT_FAILURE)
        }
    }
}

fn run_node(path: PathBuf) -> ExitCode {
    let config = match wasteledger_node::config::NodeConfig::load(&path) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("error: {e}");
            return ExitCode::from(EXIT_USAGE);
        }
    };
    let runtime = match tokio::runtime::Runtime::new() {
        Ok(r) => r,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            return ExitCode::from(EXIT_FAILURE);
        }
    };
    match runtime.block_on(wasteledger_server::runtime::run_node(
        config,
        shutdown_signal(),
    )) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::from(EXIT_FAILURE)
        }
    }
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

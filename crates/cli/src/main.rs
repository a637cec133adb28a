//! `wasteledger`: the one binary. Thin: it parses arguments, prints results and maps failures to
//! exit codes; the work is done by `wasteledger-client`, `wasteledger-server` and the core.

mod commands;
mod exit;
mod output;

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{CommandFactory, Parser, Subcommand};

use crate::commands::Context;
use crate::exit::{EXIT_CODES_HELP, Failure};
use crate::output::{Format, Out};

/// mimalloc instead of glibc malloc: see the workspace Cargo.toml for why.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// A distributed, tamper-evident ledger for hazardous-waste manifests.
///
/// Run nodes, manage keys and parties, create and sign manifests, and download and verify
/// custody proofs offline. Start with `wasteledger demo`, or see the CLI tour in README.md.
#[derive(Parser)]
#[command(name = "wasteledger", version, about, after_help = EXIT_CODES_HELP)]
struct Cli {
    /// Log as JSON lines instead of human-readable text.
    #[arg(long, global = true)]
    log_json: bool,
    /// How to print results: human tables, or JSON for scripts.
    #[arg(long, short = 'O', global = true, value_enum, default_value = "table")]
    output: Format,
    /// The node API to talk to (HOST:PORT). Any node serves; writes are forwarded to the leader.
    #[arg(long, global = true, env = "WASTELEDGER_NODE", default_value = wasteledger_client::remote::DEFAULT_NODE)]
    node: String,
    /// The network's genesis file: signatures are bound to its ledger id, and proofs are
    /// verified against it.
    #[arg(long, global = true, env = "WASTELEDGER_GENESIS")]
    genesis: Option<PathBuf>,
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
    /// Run a three-node cluster in this process and walk through realistic manifests.
    ///
    /// On loopback, with temporary data directories: a two-leg shipment with a node outage
    /// midway, a quantity discrepancy corrected with every party's approval, a rejection sent to
    /// the alternate facility, and a custody proof verified offline (and a forged copy caught).
    Demo {
        /// Keep the cluster's data here instead of a temporary directory.
        #[arg(long)]
        data_dir: Option<PathBuf>,
    },
    /// Generate and inspect signing keys (offline).
    #[command(subcommand)]
    Key(commands::key::KeyCommand),
    /// Create and inspect a network's genesis file (offline).
    #[command(subcommand)]
    Genesis(commands::genesis::GenesisCommand),
    /// Register parties and manage their keys (signed events sent to a node).
    #[command(subcommand)]
    Party(commands::party::PartyCommand),
    /// Create manifests, sign and submit lifecycle events, and read manifests.
    #[command(subcommand, after_help = commands::manifest::EXAMPLES)]
    Manifest(commands::manifest::ManifestCommand),
    /// Download a custody proof, and verify one offline with only the genesis.
    #[command(subcommand)]
    Proof(commands::proof::ProofCommand),
    /// Administer the cluster: status, adding learners, changing the voter set.
    Cluster(commands::cluster::ClusterArgs),
    /// Follow the ledger: print each event as it is applied (JSON Lines with --output json).
    ///
    /// A transporter or facility watching its own registry id sees when it is its turn to sign.
    /// Starts from --from (default: the current end of the ledger) and runs until Ctrl-C or
    /// --count events.
    Watch(commands::watch::WatchArgs),
    /// Print a shell completion script.
    ///
    /// For example: `wasteledger completions bash > /etc/bash_completion.d/wasteledger`, or
    /// `wasteledger completions zsh > ~/.zfunc/_wasteledger`.
    Completions {
        /// The shell.
        shell: clap_complete::Shell,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    init_logging(&cli);
    let out = Out { format: cli.output };
    let ctx = Context {
        node: cli.node,
        genesis: cli.genesis,
        out,
    };
    let result = match cli.command {
        Command::Node { config } => commands::run::node(config),
        Command::Demo { data_dir } => commands::run::demo(data_dir),
        Command::Key(c) => commands::key::run(&ctx, c),
        Command::Genesis(c) => commands::genesis::run(&ctx, c),
        Command::Party(c) => commands::party::run(&ctx, c),
        Command::Manifest(c) => commands::manifest::run(&ctx, c),
        Command::Proof(c) => commands::proof::run(&ctx, c),
        Command::Watch(a) => commands::watch::run(&ctx, a),
        Command::Cluster(a) => commands::cluster::run(&ctx, a),
        Command::Completions { shell } => {
            clap_complete::generate(
                shell,
                &mut Cli::command(),
                "wasteledger",
                &mut std::io::stdout(),
            );
            Ok(())
        }
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(f) => report(f),
    }
}

fn report(f: Failure) -> ExitCode {
    eprintln!("error: {}", f.error);
    if let Some(hint) = &f.hint {
        eprintln!("hint: {hint}");
    }
    ExitCode::from(f.code)
}

fn init_logging(cli: &Cli) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| {
        let default = match cli.command {
            Command::Node { .. } => "info,openraft=warn",
            // The demo narrates on stdout and client commands print results: keep logs quiet.
            _ => "warn,openraft=error",
        };
        tracing_subscriber::EnvFilter::new(default)
    });
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    if cli.log_json {
        builder.json().init();
    } else {
        builder.init();
    }
}

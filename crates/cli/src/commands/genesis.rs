//! `genesis create | show`: a network's trust roots (offline).

use std::path::PathBuf;

use clap::Subcommand;
use wasteledger_client::genesis::{self, GenesisInfo, GenesisSpec};

use super::Context;
use crate::exit::{CmdResult, OrUsage};

#[derive(Subcommand)]
pub(crate) enum GenesisCommand {
    /// Create a genesis file: the ledger name, the authority keys that admit parties, each
    /// founding node's witness key, and how many witness cosignatures make a checkpoint
    /// trustworthy. The ledger id is the hash of the file's exact bytes: distribute the file,
    /// never re-create it.
    Create {
        /// The file to write (never overwritten).
        #[arg(long = "out", short = 'o')]
        out: PathBuf,
        /// Ledger name, e.g. wasteledger.baotou.example/pilot.
        #[arg(long)]
        name: String,
        /// An authority: NAME=PUBLIC_KEY_HEX (repeat for several).
        #[arg(long = "authority", required = true)]
        authorities: Vec<String>,
        /// A node witness: NODE_ID:NAME:GROUP:PUBLIC_KEY_HEX (repeat for each node).
        #[arg(long = "witness", required = true)]
        witnesses: Vec<String>,
        /// Fewest distinct witness cosignatures a checkpoint needs.
        #[arg(long)]
        min_total: u32,
        /// At least K cosignatures from GROUP: GROUP=K (repeatable).
        #[arg(long = "group-min")]
        group_minimums: Vec<String>,
        /// Allowed clock skew between an event's stated time and the ledger time, in ms
        /// (default 300000).
        #[arg(long, default_value_t = 0)]
        max_clock_skew_ms: i64,
    },
    /// Print a genesis file's ledger id, authorities, witnesses and trust policy.
    Show {
        /// The genesis file.
        file: PathBuf,
    },
}

pub(crate) fn run(ctx: &Context, command: GenesisCommand) -> CmdResult {
    let info = match command {
        GenesisCommand::Create {
            out,
            name,
            authorities,
            witnesses,
            min_total,
            group_minimums,
            max_clock_skew_ms,
        } => {
            let spec = GenesisSpec {
                ledger_name: name,
                authorities,
                witnesses,
                min_total,
                group_minimums,
                max_clock_skew_ms,
                created_at: wasteledger_client::now_ms(),
            };
            let (bytes, g) = genesis::build(&spec).or_usage()?;
            genesis::write_new(&out, &bytes).or_usage()?;
            ctx.out.say(format!("wrote {}", out.display()));
            genesis::describe(&g)
        }
        GenesisCommand::Show { file } => genesis::describe(&genesis::load(&file).or_usage()?),
    };
    print(ctx, &info)
}

fn print(ctx: &Context, info: &GenesisInfo) -> CmdResult {
    if ctx.out.json_mode() {
        return ctx.out.json(info);
    }
    let mut rows = vec![
        ("ledger name", info.ledger_name.clone()),
        ("ledger id", info.ledger_id.clone()),
    ];
    for (name, id) in &info.authorities {
        rows.push(("authority", format!("{name} (key id {})", &id[..16])));
    }
    for (id, name, group) in &info.witnesses {
        rows.push(("witness", format!("node {id} {name} [{group}]")));
    }
    rows.push(("checkpoint policy", info.policy.clone()));
    ctx.out.fields(&rows);
    Ok(())
}

//! `key generate | show`: offline key files.

use std::path::PathBuf;

use clap::Subcommand;
use wasteledger_client::keys;

use super::Context;
use crate::exit::{CmdResult, OrUsage};

#[derive(Subcommand)]
pub(crate) enum KeyCommand {
    /// Generate a new ed25519 signing key into a new file (owner-only permissions, never
    /// overwrites), and print its public key and key id.
    ///
    /// Give the public key to your network's authority to be registered (`party register`), or
    /// put a node's witness key in the genesis (`genesis create --witness`).
    Generate {
        /// The key file to create.
        file: PathBuf,
        /// The party registry id this key is for; recorded as a comment in the file and shown
        /// next to its signatures in event files.
        #[arg(long)]
        party: Option<String>,
    },
    /// Print the public key and key id of a key file.
    Show {
        /// The key file.
        file: PathBuf,
        /// Print only the public key's 64 hex characters (for scripts: `$(wasteledger key show
        /// K --public)`).
        #[arg(long)]
        public: bool,
    },
}

pub(crate) fn run(ctx: &Context, command: KeyCommand) -> CmdResult {
    let info = match command {
        KeyCommand::Generate { file, party } => {
            keys::generate(&file, party.as_deref()).or_usage()?
        }
        KeyCommand::Show { file, public } => {
            let (key, party) = keys::load(&file).or_usage()?;
            let info = keys::describe(&key, &file, party);
            if public {
                ctx.out.say(&info.public_key);
                return Ok(());
            }
            info
        }
    };
    if ctx.out.json_mode() {
        return ctx.out.json(&info);
    }
    ctx.out.fields(&[
        ("file", info.file.clone()),
        ("party", info.party.clone().unwrap_or_else(|| "-".into())),
        ("public key", info.public_key.clone()),
        ("key id", info.key_id.clone()),
    ]);
    Ok(())
}

//! `party register | rotate-key | revoke-key | show`: the party registry.

use std::path::PathBuf;

use clap::Subcommand;
use wasteledger_client::files::read_party;
use wasteledger_client::keys::{self, parse_public_hex};
use wasteledger_core::compose::party_body;
use wasteledger_core::hash::Digest;
use wasteledger_core::pb::{self, event_body::Kind};
use wasteledger_core::signing::key_id;

use super::{Context, SignArgs, finish};
use crate::exit::{CmdResult, Failure, OrUsage};

#[derive(Subcommand)]
pub(crate) enum PartyCommand {
    /// Register a party with its first public key; signed by a genesis authority key.
    Register {
        /// The party record: a .toml or .json `wasteledger.v1.Party` (see
        /// docs/examples/parties/).
        #[arg(long)]
        file: PathBuf,
        /// The party's public key (64 hex, from `wasteledger key show`).
        #[arg(long)]
        public_key: String,
        #[command(flatten)]
        sign: SignArgs,
    },
    /// Replace a party's signing key; signed by its current key (the old key stops being valid
    /// at this entry's position).
    RotateKey {
        /// The party's registry id.
        registry_id: String,
        /// The new public key (64 hex).
        #[arg(long)]
        new_public_key: String,
        /// Key id (hex) of the key being replaced; defaults to the signing key's.
        #[arg(long)]
        old_key_id: Option<String>,
        /// Event hash of the party's latest registry event (printed when it was recorded);
        /// looked up on the node when omitted.
        #[arg(long)]
        prev: Option<String>,
        #[command(flatten)]
        sign: SignArgs,
    },
    /// Revoke a party key (lost, compromised, staff left); signed by an authority or by one of
    /// the party's active keys.
    RevokeKey {
        /// The party's registry id.
        registry_id: String,
        /// Key id (hex) of the key to revoke.
        #[arg(long)]
        key_id: String,
        /// Why.
        #[arg(long)]
        reason: String,
        /// Event hash of the party's latest registry event; looked up on the node when omitted.
        #[arg(long)]
        prev: Option<String>,
        #[command(flatten)]
        sign: SignArgs,
    },
    /// Show a party's registry record and key history.
    Show {
        /// The party's registry id.
        registry_id: String,
    },
}

pub(crate) fn run(ctx: &Context, command: PartyCommand) -> CmdResult {
    match command {
        PartyCommand::Register {
            file,
            public_key,
            sign,
        } => {
            let genesis = ctx.genesis()?;
            let party = read_party(&file).or_usage()?;
            let key = parse_public_hex(&public_key).or_usage()?;
            let id = party.registry_id.clone();
            let kind = Kind::PartyRegistered(pb::PartyRegistered {
                party: Some(party),
                key: Some(pb::PublicKey {
                    ed25519: key.to_bytes().to_vec(),
                }),
            });
            let body = party_body(&id, Digest::ZERO, wasteledger_client::now_ms(), kind);
            finish(ctx, &genesis, &body, &sign)
        }
        PartyCommand::RotateKey {
            registry_id,
            new_public_key,
            old_key_id,
            prev,
            sign,
        } => {
            let genesis = ctx.genesis()?;
            let new_key = parse_public_hex(&new_public_key).or_usage()?;
            let old = match old_key_id {
                Some(h) => hex_digest("--old-key-id", &h)?,
                None => {
                    let first = sign
                        .keys
                        .first()
                        .ok_or_else(|| Failure::usage("--key is required"))?;
                    key_id(&keys::load(first).or_usage()?.0.verifying_key())
                }
            };
            let prev = party_head(ctx, &registry_id, prev)?;
            let kind = Kind::KeyRotated(pb::KeyRotated {
                registry_id: registry_id.clone(),
                old_key_id: old.0.to_vec(),
                new_key: Some(pb::PublicKey {
                    ed25519: new_key.to_bytes().to_vec(),
                }),
            });
            let body = party_body(&registry_id, prev, wasteledger_client::now_ms(), kind);
            finish(ctx, &genesis, &body, &sign)
        }
        PartyCommand::RevokeKey {
            registry_id,
            key_id,
            reason,
            prev,
            sign,
        } => {
            let genesis = ctx.genesis()?;
            let revoked = hex_digest("--key-id", &key_id)?;
            let prev = party_head(ctx, &registry_id, prev)?;
            let kind = Kind::KeyRevoked(pb::KeyRevoked {
                registry_id: registry_id.clone(),
                key_id: revoked.0.to_vec(),
                reason,
            });
            let body = party_body(&registry_id, prev, wasteledger_client::now_ms(), kind);
            finish(ctx, &genesis, &body, &sign)
        }
        PartyCommand::Show { registry_id } => {
            let state = ctx.remote(async |r| Ok(r.party(&registry_id).await?))?;
            show(ctx, &state)
        }
    }
}

fn hex_digest(what: &str, text: &str) -> Result<Digest, Failure> {
    Digest::from_hex(text)
        .ok_or_else(|| Failure::usage(format!("{what} {text:?}: expected 64 hex characters")))
}

/// The head of a party's registry chain: given, or asked of the node.
fn party_head(ctx: &Context, registry_id: &str, prev: Option<String>) -> Result<Digest, Failure> {
    if let Some(p) = prev {
        return hex_digest("--prev", &p);
    }
    let state = ctx
        .remote(async |r| Ok(r.party(registry_id).await?))
        .map_err(|f| {
            f.with_hint("pass --prev EVENT_HASH (the event hash printed when the party's latest registry event was recorded)")
        })?;
    Digest::from_slice(&state.head)
        .ok_or_else(|| Failure::usage("the node's party record has no chain head"))
}

fn show(ctx: &Context, state: &pb::PartyState) -> CmdResult {
    if ctx.out.json_mode() {
        return ctx.out.json(state);
    }
    let party = state.party.clone().unwrap_or_default();
    let roles: Vec<String> = party
        .roles
        .iter()
        .map(|r| {
            pb::Role::try_from(*r)
                .map(|r| {
                    r.as_str_name()
                        .trim_start_matches("ROLE_")
                        .to_ascii_lowercase()
                })
                .unwrap_or_else(|_| r.to_string())
        })
        .collect();
    ctx.out.fields(&[
        ("registry id", party.registry_id.clone()),
        ("legal name", party.legal_name.clone()),
        ("roles", roles.join(", ")),
        ("jurisdiction", party.jurisdiction.clone()),
        ("head", hex::encode(&state.head)),
    ]);
    ctx.out.table(
        &["key id", "active from", "active until"],
        state
            .keys
            .iter()
            .map(|k| {
                vec![
                    hex::encode(&k.key_id),
                    k.active_from.to_string(),
                    k.active_until.map_or_else(|| "-".into(), |u| u.to_string()),
                ]
            })
            .collect(),
    );
    Ok(())
}

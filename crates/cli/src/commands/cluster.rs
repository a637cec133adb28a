//! `cluster status | add-learner | change-membership | initialize`: the admin ClusterService.

use std::path::PathBuf;

use clap::{Args, Subcommand};
use wasteledger_client::admin::{ADMIN_ENV, Admin, AdminSigner, parse_member};
use wasteledger_core::pb;

use super::{Context, load_key};
use crate::exit::{CmdResult, Failure, REMOTE};

/// Where admin calls go and how they are authorised.
#[derive(Args)]
pub(crate) struct ClusterArgs {
    /// The node's admin listener (HOST:PORT, loopback by default, e.g. 127.0.0.1:7301): calls
    /// need no credentials there. Without it, calls go to --node (the public API) and must be
    /// signed with --key.
    #[arg(long, global = true, env = ADMIN_ENV)]
    admin: Option<String>,
    /// A genesis authority's key file: signs each call (needed on the public API listener; also
    /// needs --genesis). Membership changes sent to a follower are re-sent to the leader it names.
    #[arg(long = "key", short = 'k', global = true)]
    key: Option<PathBuf>,
    #[command(subcommand)]
    command: ClusterCommand,
}

#[derive(Subcommand)]
pub(crate) enum ClusterCommand {
    /// The node's view of the cluster: leader, term, voters, learners, log positions, health,
    /// and (on the leader) each follower's replication lag.
    Status,
    /// Add a node as a learner and wait until it has caught up (leader only). Start the new node
    /// first, with the cluster's genesis and peers in its config and `bootstrap = false`.
    AddLearner {
        /// The new node: ID:RAFT_HOST:PORT:API_HOST:PORT, e.g. 4:127.0.0.1:7104:127.0.0.1:7204.
        member: String,
    },
    /// Replace the voter set (joint consensus; leader only). Every id must already be a member:
    /// add new nodes as learners first.
    ChangeMembership {
        /// The new voter ids, e.g. 1,2,4.
        #[arg(long, value_delimiter = ',', required = true)]
        voters: Vec<u64>,
        /// Keep removed voters as learners instead of removing them from the cluster.
        #[arg(long)]
        retain_as_learners: bool,
    },
    /// Initialise a new cluster with these voters (harmless on an initialised node), for
    /// clusters started without a bootstrap node.
    Initialize {
        /// Each voter: ID:RAFT_HOST:PORT:API_HOST:PORT (repeat for each).
        #[arg(required = true)]
        members: Vec<String>,
    },
}

pub(crate) fn run(ctx: &Context, args: ClusterArgs) -> CmdResult {
    let signer = match &args.key {
        Some(path) => Some(AdminSigner {
            key: load_key(path)?.0,
            ledger_id: ctx.genesis()?.ledger_id,
        }),
        None => None,
    };
    let public = args.admin.is_none();
    let addr = args.admin.clone().unwrap_or_else(|| ctx.node.clone());
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| {
            Failure::new(
                REMOTE,
                anyhow::anyhow!("cannot start the async runtime: {e}"),
            )
        })?;
    let status = runtime
        .block_on(async {
            let mut admin = Admin::connect(&addr, signer).await?;
            match &args.command {
                ClusterCommand::Status => admin.status().await,
                ClusterCommand::AddLearner { member } => {
                    let m = parse_member(member).ok_or_else(|| {
                        wasteledger_client::remote::RemoteError::Address(member.clone())
                    })?;
                    admin.add_learner(m).await
                }
                ClusterCommand::ChangeMembership {
                    voters,
                    retain_as_learners,
                } => admin.change_membership(voters.clone(), *retain_as_learners).await,
                ClusterCommand::Initialize { members } => {
                    let parsed = members
                        .iter()
                        .map(|m| {
                            parse_member(m).ok_or_else(|| {
                                wasteledger_client::remote::RemoteError::Address(m.clone())
                            })
                        })
                        .collect::<Result<Vec<_>, _>>()?;
                    admin.initialize(parsed).await
                }
            }
        })
        .map_err(|e| {
            let auth = e.reason().is_some_and(|r| r.starts_with("admin."));
            let not_leader = e.reason() == Some("cluster.not_leader");
            let f = Failure::from(e);
            if auth && public {
                f.with_hint("use the node's admin listener (--admin HOST:PORT, e.g. 127.0.0.1:7301), or sign with --key AUTHORITY.key and --genesis")
            } else if not_leader {
                f.with_hint("send membership changes to the leader's admin listener (see `wasteledger cluster status`), or sign with --key so the call follows the leader")
            } else if matches!(args.command, ClusterCommand::AddLearner { .. } | ClusterCommand::Initialize { .. }) && f.code == crate::exit::USAGE {
                f.with_hint("members are ID:RAFT_HOST:PORT:API_HOST:PORT, e.g. 4:127.0.0.1:7104:127.0.0.1:7204")
            } else {
                f
            }
        })?;
    print(ctx, &status)
}

fn members(list: &[pb::ClusterMember]) -> String {
    list.iter()
        .map(|m| format!("{} (raft {}, api {})", m.node_id, m.raft_addr, m.api_addr))
        .collect::<Vec<_>>()
        .join("\n")
}

fn print(ctx: &Context, s: &pb::ClusterStatus) -> CmdResult {
    if ctx.out.json_mode() {
        return ctx.out.json(s);
    }
    ctx.out.fields(&[
        ("node", s.node_id.to_string()),
        (
            "leader",
            if s.leader_id == 0 {
                "none known".into()
            } else {
                format!("{} (api {})", s.leader_id, s.leader_api)
            },
        ),
        ("term", s.term.to_string()),
        ("voters", members(&s.voters)),
        (
            "learners",
            if s.learners.is_empty() {
                "-".into()
            } else {
                members(&s.learners)
            },
        ),
        (
            "log",
            format!(
                "last {}, committed {}, applied {}",
                s.last_log_index, s.committed, s.last_applied
            ),
        ),
        ("ledger size", s.ledger_size.to_string()),
        (
            "serving",
            if s.serving {
                "yes".into()
            } else {
                format!("no: {}", s.not_serving_reason)
            },
        ),
    ]);
    if !s.replication.is_empty() {
        ctx.out.table(
            &["follower", "matched index", "lag"],
            s.replication
                .iter()
                .map(|r| {
                    vec![
                        r.node_id.to_string(),
                        r.matched_index
                            .map_or_else(|| "-".into(), |i| i.to_string()),
                        r.lag.to_string(),
                    ]
                })
                .collect(),
        );
    }
    Ok(())
}

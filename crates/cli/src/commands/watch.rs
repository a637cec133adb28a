//! `watch`: follow the ledger as events are applied.

use wasteledger_client::report::iso_time;
use wasteledger_core::pb;

use super::Context;
use crate::exit::CmdResult;

#[derive(clap::Args)]
pub(crate) struct WatchArgs {
    /// Only events of manifests naming this party, or of its own registry chain.
    #[arg(long)]
    party: Option<String>,
    /// Only these event kinds, e.g. CustodyHandoff (repeatable).
    #[arg(long = "kind")]
    kinds: Vec<String>,
    /// Skip registry events.
    #[arg(long)]
    manifests_only: bool,
    /// First ledger index to print; default: only events applied from now on.
    #[arg(long)]
    from: Option<u64>,
    /// Stop after this many events.
    #[arg(long)]
    count: Option<u64>,
}

pub(crate) fn run(ctx: &Context, args: WatchArgs) -> CmdResult {
    ctx.remote(async |r| {
        let from_index = match args.from {
            Some(i) => i,
            None => r.head().await?.size,
        };
        let request = pb::WatchEventsRequest {
            from_index,
            party: args.party.clone().unwrap_or_default(),
            manifests_only: args.manifests_only,
            kinds: args.kinds.clone(),
        };
        let mut stream = r.watch(request).await?;
        let mut seen = 0u64;
        while args.count.is_none_or(|c| seen < c) {
            let Some(event) = r.next_event(&mut stream).await? else {
                break;
            };
            seen += 1;
            print(ctx, &event)?;
        }
        Ok(())
    })
}

fn print(ctx: &Context, e: &pb::LedgerEvent) -> CmdResult {
    if ctx.out.json_mode() {
        // One object per line, so a script can act on each event as it arrives.
        let line = serde_json::json!({
            "index": e.index,
            "sequenced_at": e.sequenced_at,
            "kind": e.kind,
            "subject": e.subject,
            "event_hash": hex::encode(&e.event_hash),
            "signer_key_ids": e.event.as_ref().map(|s| s.signatures.iter().map(|g| hex::encode(&g.key_id)).collect::<Vec<_>>()),
        });
        ctx.out.say_always(line);
        return Ok(());
    }
    ctx.out.say(format!(
        "#{:<6} {}  {:<18} {}",
        e.index,
        iso_time(e.sequenced_at),
        e.kind,
        e.subject
    ));
    Ok(())
}

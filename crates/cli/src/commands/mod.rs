//! One module per command group. Each parses nothing itself (clap did) and does no work itself
//! beyond calling the client library and printing what it returns.

pub(crate) mod cluster;
pub(crate) mod genesis;
pub(crate) mod key;
pub(crate) mod manifest;
pub(crate) mod party;
pub(crate) mod proof;
pub(crate) mod run;
pub(crate) mod watch;

use std::path::{Path, PathBuf};

use wasteledger_client::event_file::EventFile;
use wasteledger_client::keys;
use wasteledger_client::remote::Remote;
use wasteledger_core::genesis::Genesis;
use wasteledger_core::pb;
use wasteledger_core::signing::SigningKey;

use crate::exit::{Failure, OrUsage, REMOTE};
use crate::output::Out;

/// What every command may need: where the node is, the genesis, how to print.
pub(crate) struct Context {
    pub(crate) node: String,
    pub(crate) genesis: Option<PathBuf>,
    pub(crate) out: Out,
}

impl Context {
    /// The genesis, which signing and verifying need.
    pub(crate) fn genesis(&self) -> Result<Genesis, Failure> {
        let path = self.genesis.as_ref().ok_or_else(|| {
            Failure::usage("this command needs the network's genesis file").with_hint(
                "pass --genesis FILE (e.g. config/genesis.pb) or set WASTELEDGER_GENESIS",
            )
        })?;
        wasteledger_client::genesis::load(path).or_usage()
    }

    /// Runs an async network operation on a fresh runtime, connected to the node.
    pub(crate) fn remote<T>(
        &self,
        f: impl AsyncFnOnce(&mut Remote) -> Result<T, Failure>,
    ) -> Result<T, Failure> {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .map_err(|e| {
                Failure::new(
                    REMOTE,
                    anyhow::anyhow!("cannot start the async runtime: {e}"),
                )
            })?;
        runtime.block_on(async {
            let mut remote = Remote::connect(&self.node).await?;
            f(&mut remote).await
        })
    }
}

/// Loads key files, each with the party it names.
pub(crate) fn load_keys(paths: &[PathBuf]) -> Result<Vec<(SigningKey, Option<String>)>, Failure> {
    paths.iter().map(|p| load_key(p)).collect()
}

/// Loads one key file, warning when others can read it.
pub(crate) fn load_key(path: &Path) -> Result<(SigningKey, Option<String>), Failure> {
    let loaded = keys::load(path).or_usage()?;
    if keys::readable_by_others(path) {
        eprintln!(
            "warning: {} is readable by other users; restrict it with `chmod 600 {}`",
            path.display(),
            path.display()
        );
    }
    Ok(loaded)
}

/// How an event command ends: written to a file for another party to co-sign, or submitted.
#[derive(clap::Args, Clone, Debug)]
pub(crate) struct SignArgs {
    /// Secret key file(s) to sign with (repeat for a two-party event signed on one machine).
    #[arg(long = "key", short = 'k', required = true)]
    pub(crate) keys: Vec<PathBuf>,
    /// Write the signed event to this file instead of submitting it: the other party adds its
    /// signature with `wasteledger manifest sign FILE --key …`, then either submits it with
    /// `wasteledger manifest submit FILE`.
    #[arg(long = "out", short = 'o')]
    pub(crate) out: Option<PathBuf>,
}

/// Signs `body` and either writes it to the event file or submits it.
pub(crate) fn finish(
    ctx: &Context,
    genesis: &Genesis,
    body: &pb::EventBody,
    sign: &SignArgs,
) -> Result<(), Failure> {
    let keys = load_keys(&sign.keys)?;
    let refs: Vec<(&SigningKey, Option<String>)> =
        keys.iter().map(|(k, p)| (k, p.clone())).collect();
    let file = EventFile::prepare(&genesis.ledger_id, body, &refs).or_usage()?;
    match &sign.out {
        Some(path) => {
            file.write(path).or_usage()?;
            print_event_file(ctx, &file, Some(path))
        }
        None => {
            let event = file.signed_event().or_usage()?;
            let receipt = ctx.remote(async |r| Ok(r.submit(&event).await?))?;
            print_receipt(ctx, &file.kind, &file.subject, &receipt)
        }
    }
}

/// Prints what an event file holds.
pub(crate) fn print_event_file(
    ctx: &Context,
    file: &EventFile,
    written: Option<&Path>,
) -> Result<(), Failure> {
    if ctx.out.json_mode() {
        return ctx.out.json(file);
    }
    let signers: Vec<String> = file
        .signatures
        .iter()
        .map(|s| {
            let short: String = s.key_id.chars().take(16).collect();
            match &s.party {
                Some(p) => format!("{p} (key {short})"),
                None => format!("key {short}"),
            }
        })
        .collect();
    let mut rows = vec![
        ("event", file.kind.clone()),
        ("subject", file.subject.clone()),
        ("says", content_text(file)),
        ("event hash", file.event_hash.clone()),
        ("signed by", signers.join(", ")),
    ];
    if let Some(p) = written {
        rows.push(("written to", p.display().to_string()));
    }
    ctx.out.fields(&rows);
    Ok(())
}

/// Prints a receipt.
pub(crate) fn print_receipt(
    ctx: &Context,
    kind: &str,
    subject: &str,
    r: &pb::Receipt,
) -> Result<(), Failure> {
    if ctx.out.json_mode() {
        return ctx.out.json(&serde_json::json!({
            "result": "recorded",
            "kind": kind,
            "subject": subject,
            "index": r.index,
            "event_hash": hex::encode(&r.event_hash),
            "leaf_hash": hex::encode(&r.leaf_hash),
            "tree_size": r.tree_size,
        }));
    }
    ctx.out.say(format!(
        "recorded {kind} on {subject} at ledger index {} (event hash {})",
        r.index,
        hex::encode(&r.event_hash)
    ));
    Ok(())
}

/// What the event says (its kind's fields, decoded from the signed bytes), short enough for a
/// table: the co-signer reads this before adding a signature; the full view is in the file.
fn content_text(file: &EventFile) -> String {
    const MAX: usize = 600;
    let content = file
        .body_view
        .as_object()
        .map(|o| {
            o.iter()
                .filter(|(k, _)| {
                    !matches!(k.as_str(), "subject" | "prev_event_hash" | "occurred_at")
                })
                .map(|(_, v)| v.to_string())
                .collect::<Vec<_>>()
                .join(" ")
        })
        .unwrap_or_default();
    if content.chars().count() > MAX {
        let cut: String = content.chars().take(MAX).collect();
        format!("{cut}… (full text under body_view in the file)")
    } else {
        content
    }
}

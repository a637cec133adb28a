//! `proof get | verify`: download a custody proof; verify one offline with only the genesis.

use std::path::PathBuf;
use std::time::{Duration, Instant};

use clap::Subcommand;
use prost::Message;
use wasteledger_client::compose::tracking;
use wasteledger_client::report::{self, ProofReport, iso_time};

use super::Context;
use crate::exit::{CHECK_FAILED, CmdResult, Failure, OrUsage};

#[derive(Subcommand)]
pub(crate) enum ProofCommand {
    /// Download the custody proof of a manifest from a node into a file.
    ///
    /// The proof is anchored to the latest checkpoint the nodes have cosigned (about once a
    /// second). By default this waits up to --wait seconds for a checkpoint that covers the
    /// manifest's latest event, so the proof is complete as of now.
    Get {
        /// Tracking number, SCHEME:NUMBER (e.g. cn:20261502000001).
        tracking_number: String,
        /// The bundle file to write.
        #[arg(long = "out", short = 'o')]
        out: PathBuf,
        /// Seconds to wait for a checkpoint covering the latest event (0: take what is there).
        #[arg(long, default_value_t = 30)]
        wait: u64,
    },
    /// Verify a custody proof offline, trusting only the genesis: checkpoint cosignatures,
    /// inclusion of every event, every signature and custody rule (replayed), and completeness.
    /// Prints the custody timeline and VERIFIED (exit 0), or what failed (exit 1).
    Verify {
        /// The bundle file (from `proof get`).
        bundle: PathBuf,
    },
}

pub(crate) fn run(ctx: &Context, command: ProofCommand) -> CmdResult {
    match command {
        ProofCommand::Get {
            tracking_number,
            out,
            wait,
        } => get(ctx, &tracking_number, out, wait),
        ProofCommand::Verify { bundle } => {
            let genesis = ctx.genesis()?;
            let report = report::verify_file(&bundle, &genesis).or_usage()?;
            print_report(ctx, &report)?;
            if report.verified() {
                Ok(())
            } else {
                // Already printed in full; the exit code carries the verdict.
                Err(Failure::new(
                    CHECK_FAILED,
                    anyhow::anyhow!("custody proof {} did not verify", bundle.display()),
                ))
            }
        }
    }
}

fn get(ctx: &Context, number: &str, out: PathBuf, wait: u64) -> CmdResult {
    let t = tracking(number).or_usage()?;
    let deadline = Instant::now() + Duration::from_secs(wait);
    let (proof, expected) = ctx.remote(async |r| {
        loop {
            let expected = r.manifest_state(&t).await?.events.len();
            let last = r.custody_proof(&t).await;
            match last {
                Ok(p) if p.events.len() >= expected || Instant::now() >= deadline => {
                    return Ok((p, expected));
                }
                Err(e)
                    if e.reason() == Some("checkpoint.none_published")
                        && Instant::now() < deadline => {}
                Err(e) => return Err(e.into()),
                Ok(_) => {}
            }
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
    })?;
    let bytes = proof.encode_to_vec();
    std::fs::write(&out, &bytes).map_err(|e| Failure::usage(format!("{}: {e}", out.display())))?;
    let complete = proof.events.len() >= expected;
    if ctx.out.json_mode() {
        return ctx.out.json(&serde_json::json!({
            "tracking_number": t.to_string(),
            "file": out.display().to_string(),
            "bytes": bytes.len(),
            "events": proof.events.len(),
            "events_in_ledger": expected,
            "complete_as_of_now": complete,
        }));
    }
    ctx.out.say(format!(
        "wrote {} ({} bytes): {} of {} events of {t}, anchored to a cosigned checkpoint",
        out.display(),
        bytes.len(),
        proof.events.len(),
        expected
    ));
    if !complete {
        ctx.out.say(
            "note: the latest checkpoint does not cover the newest events yet; fetch again in a few seconds",
        );
    }
    ctx.out.say(format!(
        "verify it offline with: wasteledger proof verify {} --genesis GENESIS",
        out.display()
    ));
    Ok(())
}

fn print_report(ctx: &Context, report: &ProofReport) -> CmdResult {
    if ctx.out.json_mode() {
        return ctx.out.json(report);
    }
    if let Some(t) = &report.tracking_number {
        ctx.out.fields(&[
            ("manifest", t.clone()),
            (
                "ledger",
                format!("{} ({})", report.ledger_name, &report.ledger_id[..16]),
            ),
            (
                "checkpoint size",
                report
                    .checkpoint_size
                    .map(|s| s.to_string())
                    .unwrap_or_default(),
            ),
            ("cosigned by", report.cosigners.join(", ")),
            ("status", report.status.clone().unwrap_or_default()),
        ]);
        ctx.out.table(
            &["#", "event", "occurred (UTC)", "signed by", "summary"],
            report
                .timeline
                .iter()
                .map(|e| {
                    vec![
                        e.index.to_string(),
                        e.kind.clone(),
                        iso_time(e.occurred_at),
                        e.signers.join(" + "),
                        e.summary.clone(),
                    ]
                })
                .collect(),
        );
    }
    match (&report.failure, report.failure_code) {
        (Some(f), Some(code)) => ctx.out.say(format!("FAILED [{code}]: {f}")),
        _ => ctx.out.say(
            "VERIFIED: every event signed by the right parties, in order, included in the cosigned checkpoint, and none missing",
        ),
    }
    Ok(())
}

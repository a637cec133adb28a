//! `manifest …`: create manifests, sign and submit lifecycle events, and read manifests.

use std::path::PathBuf;

use clap::{Subcommand, ValueEnum};
use wasteledger_client::compose::{
    self, amended_event, creation_body, evidence_for_file, next_body, next_handoff,
    parse_received_line, parse_rejected_line, parse_treated_line, pending_correction, status_text,
    tracking, tracking_text,
};
use wasteledger_client::event_file::EventFile;
use wasteledger_client::files;
use wasteledger_client::report::iso_time;
use wasteledger_core::pb::{self, event_body::Kind};
use wasteledger_core::tracking::Tracking;

use super::{Context, SignArgs, finish, load_keys, print_event_file, print_receipt};
use crate::exit::{CmdResult, Failure, OrUsage, REMOTE, USAGE};

/// Worked examples shown under `wasteledger manifest --help`.
pub(crate) const EXAMPLES: &str = "Examples (with WASTELEDGER_NODE and WASTELEDGER_GENESIS set):
  wasteledger manifest create --file docs/examples/manifest.toml --key gen.key
  # two-party handoff across machines: prepare and sign, co-sign, submit
  wasteledger manifest handoff cn:20261502000101 --key gen.key -o pickup.json
  wasteledger manifest sign pickup.json --key carrier.key
  wasteledger manifest submit pickup.json
  wasteledger manifest receive cn:20261502000101 --key facility.key --line 1:8.52:t:1 --line 2:1790:kg:12
  wasteledger manifest list --party GEN-BT-STEEL --status in-transit --output json";

/// Line quantities: `LINE:AMOUNT:UNIT[:CONTAINERS]`.
const LINE_HELP: &str = "LINE:AMOUNT:UNIT[:CONTAINERS], e.g. 1:8.52:t:1 (units: kg, t, lb, ton, l, gal, m3, yd3 or EPA letters K M P T L G N Y)";

#[derive(Subcommand)]
pub(crate) enum ManifestCommand {
    /// Create a manifest from a .toml or .json file (a `wasteledger.v1.Manifest`, see
    /// docs/examples/manifest.toml), validated locally with the core rules, signed by the
    /// generator and submitted.
    Create {
        /// The manifest file.
        #[arg(long)]
        file: PathBuf,
        /// Only validate the file; sign and send nothing.
        #[arg(long)]
        check: bool,
        /// The generator's key file (required unless --check).
        #[arg(long = "key", short = 'k', required_unless_present = "check")]
        keys: Vec<PathBuf>,
        /// Write the signed event here instead of submitting it.
        #[arg(long = "out", short = 'o')]
        out: Option<PathBuf>,
    },
    /// Create many manifests from a JSON Lines file (one manifest object per line), signed by
    /// the generator; prints one result per line. Bad lines are reported and skipped.
    Import {
        /// The .jsonl file.
        file: PathBuf,
        /// The generator's key file.
        #[arg(long = "key", short = 'k')]
        key: PathBuf,
    },
    /// Hand custody to the next party in the manifest's order. Both parties sign: with both keys
    /// here, or with one key and `-o event.json` for the other party to `sign`.
    Handoff {
        /// Tracking number, SCHEME:NUMBER.
        tracking_number: String,
        /// Where the handoff happens, in words.
        #[arg(long)]
        location: Option<String>,
        /// The receiving vehicle's id.
        #[arg(long)]
        vehicle: Option<String>,
        /// Quantities observed at the handoff: LINE:AMOUNT:UNIT[:CONTAINERS] (repeatable).
        #[arg(long = "line", help = LINE_HELP)]
        lines: Vec<String>,
        #[command(flatten)]
        sign: SignArgs,
    },
    /// The transporter holding the load records a position report, weigh station, border
    /// crossing, incident or delay en route.
    Transit {
        /// Tracking number, SCHEME:NUMBER.
        tracking_number: String,
        /// What kind of report.
        #[arg(long, value_enum)]
        kind: TransitKind,
        /// What happened, in words.
        #[arg(long)]
        description: String,
        /// Where, as LATITUDE,LONGITUDE in decimal degrees (e.g. 40.657,109.84); stored in
        /// micro-degrees so no floating point enters the signed bytes.
        #[arg(long)]
        position: Option<String>,
        /// Evidence file (weighbridge ticket, photo, GPS track), anchored by hash (repeatable).
        #[arg(long)]
        evidence: Vec<PathBuf>,
        #[command(flatten)]
        sign: SignArgs,
    },
    /// Add your signature to an event file another party prepared (after checking theirs).
    Sign {
        /// The event file; updated in place unless -o is given.
        file: PathBuf,
        /// Your key file.
        #[arg(long = "key", short = 'k')]
        key: PathBuf,
        /// Write the co-signed event here instead of updating the file.
        #[arg(long = "out", short = 'o')]
        out: Option<PathBuf>,
    },
    /// Submit a signed event file to the ledger.
    Submit {
        /// The event file.
        file: PathBuf,
    },
    /// The facility records receipt of every line with the quantities it weighed or counted;
    /// the ledger computes discrepancies (EPA rule: over 10 % by weight, or any piece count).
    Receive {
        /// Tracking number, SCHEME:NUMBER.
        tracking_number: String,
        /// One per manifest line (required for every line): LINE:AMOUNT:UNIT[:CONTAINERS].
        #[arg(long = "line", required = true, help = LINE_HELP)]
        lines: Vec<String>,
        /// A weighbridge ticket or other evidence file, anchored by its hash (repeatable).
        #[arg(long)]
        evidence: Vec<PathBuf>,
        #[command(flatten)]
        sign: SignArgs,
    },
    /// The facility rejects all or part of the load.
    ///
    /// On site (--on-site, the transporter still holds the load): a full rejection signed by the
    /// facility and the transporter; the same manifest goes on to the alternate facility or back
    /// to the generator. After delivery: signed by the facility, naming follow-up manifests.
    Reject {
        /// Tracking number, SCHEME:NUMBER.
        tracking_number: String,
        /// Full or partial.
        #[arg(long, value_enum)]
        scope: Scope,
        /// Where the rejected waste goes.
        #[arg(long = "to", value_enum)]
        destination: Destination,
        /// The transporter is still on site (rejection before the facility takes custody).
        #[arg(long)]
        on_site: bool,
        /// Why.
        #[arg(long)]
        reason: String,
        /// Rejected quantities: LINE:AMOUNT:UNIT[:CONTAINERS] (required for partial).
        #[arg(long = "line", help = LINE_HELP)]
        lines: Vec<String>,
        /// For partial: what the facility keeps, LINE:AMOUNT:UNIT[:CONTAINERS].
        #[arg(long = "accept")]
        accepted: Vec<String>,
        /// Follow-up manifests carrying the rejected waste (SCHEME:NUMBER, repeatable).
        #[arg(long = "follow-up")]
        follow_ups: Vec<String>,
        #[command(flatten)]
        sign: SignArgs,
    },
    /// The facility certifies treatment or disposal of every line it accepted.
    Treat {
        /// Tracking number, SCHEME:NUMBER.
        tracking_number: String,
        /// One per accepted line: LINE:METHOD:AMOUNT:UNIT, e.g. 1:H040:8.5:t.
        #[arg(long = "line", required = true)]
        lines: Vec<String>,
        /// The treatment certificate file, anchored by its blake3 hash.
        #[arg(long)]
        certificate: PathBuf,
        /// When treatment was completed (ms since the epoch); default now.
        #[arg(long)]
        completed_at: Option<i64>,
        #[command(flatten)]
        sign: SignArgs,
    },
    /// Propose a correction of an earlier event; it takes effect once every other party that
    /// signed the manifest approves (`approve-correction`).
    Correct {
        /// Tracking number, SCHEME:NUMBER.
        tracking_number: String,
        /// The event amended: created, received, rejected, treated (the latest of that kind) or
        /// an event hash.
        #[arg(long)]
        amends: String,
        /// A corrected receipt line: LINE:AMOUNT:UNIT[:CONTAINERS] (repeatable).
        #[arg(long = "received-line", help = LINE_HELP)]
        received_lines: Vec<String>,
        /// A corrected treatment line: LINE:METHOD:AMOUNT:UNIT (repeatable).
        #[arg(long = "treated-line")]
        treated_lines: Vec<String>,
        /// New handling instructions.
        #[arg(long)]
        handling_instructions: Option<String>,
        /// Why the record is corrected.
        #[arg(long)]
        reason: String,
        #[command(flatten)]
        sign: SignArgs,
    },
    /// Approve (or --refuse) the correction waiting on a manifest.
    ApproveCorrection {
        /// Tracking number, SCHEME:NUMBER.
        tracking_number: String,
        /// Refuse instead of approving (one refusal rejects the correction).
        #[arg(long)]
        refuse: bool,
        /// A comment.
        #[arg(long, default_value = "")]
        comment: String,
        #[command(flatten)]
        sign: SignArgs,
    },
    /// The generator cancels a manifest (only before the first pickup).
    Cancel {
        /// Tracking number, SCHEME:NUMBER.
        tracking_number: String,
        /// Why.
        #[arg(long)]
        reason: String,
        #[command(flatten)]
        sign: SignArgs,
    },
    /// Show a manifest's current state (every approved correction applied).
    Show {
        /// Tracking number, SCHEME:NUMBER.
        tracking_number: String,
    },
    /// List a manifest's events in chain order.
    History {
        /// Tracking number, SCHEME:NUMBER.
        tracking_number: String,
    },
    /// List manifests matching every filter given, following pages to the end.
    List {
        /// A party named on the manifest (registry id).
        #[arg(long)]
        party: Option<String>,
        /// With --party: only where it has this role.
        #[arg(long, value_enum)]
        role: Option<RoleArg>,
        /// Only these statuses (repeatable).
        #[arg(long = "status", value_enum)]
        statuses: Vec<StatusArg>,
        /// A waste code as written on a line, e.g. HW08 or D001.
        #[arg(long)]
        waste_code: Option<String>,
        /// Only manifests with a line coded in this system (with --waste-code: the code in it).
        #[arg(long, value_enum)]
        code_system: Option<CodeSystemArg>,
        /// Which date --from and --until apply to.
        #[arg(long = "time", value_enum, default_value = "created")]
        time_field: TimeArg,
        /// From this time on (inclusive): 2026-11-01, 2026-11-01T08:00:00Z (UTC) or ms.
        #[arg(long)]
        from: Option<String>,
        /// Before this time (exclusive), same forms as --from.
        #[arg(long)]
        until: Option<String>,
        /// Manifests per page requested from the node (1..=500).
        #[arg(long, default_value_t = 100)]
        page_size: u32,
    },
}

/// Kinds of transit report.
#[derive(Clone, Copy, Debug, ValueEnum)]
pub(crate) enum TransitKind {
    /// A position report.
    Position,
    /// Weighed at a weigh station.
    WeighStation,
    /// Crossed a border.
    BorderCrossing,
    /// An incident (spill, accident).
    Incident,
    /// A delay.
    Delay,
}

/// Rejection scope.
#[derive(Clone, Copy, Debug, ValueEnum)]
pub(crate) enum Scope {
    /// The whole load.
    Full,
    /// Some lines or quantities.
    Partial,
}

/// Where rejected waste goes.
#[derive(Clone, Copy, Debug, ValueEnum)]
pub(crate) enum Destination {
    /// The manifest's alternate facility.
    Alternate,
    /// Back to the generator.
    Generator,
}

/// A party's role on a manifest.
#[derive(Clone, Copy, Debug, ValueEnum)]
pub(crate) enum RoleArg {
    /// Generator.
    Generator,
    /// Transporter.
    Transporter,
    /// Facility (designated or alternate).
    Facility,
    /// Broker.
    Broker,
}

/// A waste-code system.
#[derive(Clone, Copy, Debug, ValueEnum)]
pub(crate) enum CodeSystemArg {
    /// EPA federal codes (D001, F005, …).
    EpaFederal,
    /// A US state's codes.
    UsState,
    /// China HW category (HW08).
    CnHwCategory,
    /// China 8-digit waste code (900-249-08).
    CnWasteCode,
    /// European Waste Catalogue.
    Ewc,
    /// EU hazardous property (HP1..HP15).
    EuHp,
}

/// Which timestamp a date filter applies to.
#[derive(Clone, Copy, Debug, ValueEnum)]
pub(crate) enum TimeArg {
    /// Creation.
    Created,
    /// First pickup.
    Shipped,
    /// Delivery to the facility.
    Delivered,
    /// Receipt by the facility.
    Received,
    /// Treatment certified.
    Treated,
    /// The latest event.
    LastEvent,
}

/// A manifest status.
#[derive(Clone, Copy, Debug, ValueEnum)]
pub(crate) enum StatusArg {
    /// Created, not yet picked up.
    Created,
    /// With a transporter.
    InTransit,
    /// Delivered to the facility.
    Delivered,
    /// Received by the facility.
    Received,
    /// Rejected.
    Rejected,
    /// Returned to the generator.
    Returned,
    /// Treatment certified.
    Treated,
    /// Cancelled.
    Cancelled,
}

pub(crate) fn run(ctx: &Context, command: ManifestCommand) -> CmdResult {
    match command {
        ManifestCommand::Create {
            file,
            check,
            keys,
            out,
        } => {
            let manifest = files::read_manifest(&file).or_usage()?;
            let number = manifest
                .tracking_number
                .as_ref()
                .and_then(|t| Tracking::from_pb(t).ok())
                .map(|t| t.to_string())
                .unwrap_or_default();
            if check {
                if ctx.out.json_mode() {
                    return ctx
                        .out
                        .json(&serde_json::json!({"result": "valid", "tracking_number": number}));
                }
                ctx.out
                    .say(format!("{}: manifest {number} is valid", file.display()));
                return Ok(());
            }
            let genesis = ctx.genesis()?;
            let body = creation_body(&manifest).or_usage()?;
            finish(ctx, &genesis, &body, &SignArgs { keys, out })
        }
        ManifestCommand::Import { file, key } => import(ctx, &file, &key),
        ManifestCommand::Handoff {
            tracking_number,
            location,
            vehicle,
            lines,
            sign,
        } => {
            let observed = lines
                .iter()
                .map(|l| {
                    parse_received_line(l).map(|r| pb::LineQuantity {
                        line_number: r.line_number,
                        quantity: r.quantity,
                        container_count: r.container_count,
                    })
                })
                .collect::<Result<Vec<_>, _>>()
                .or_usage()?;
            event_on(ctx, &tracking_number, &sign, |state| {
                let (from, to) = next_handoff(state)?;
                Ok(Kind::CustodyHandoff(pb::CustodyHandoff {
                    from_party: from,
                    to_party: to,
                    location: None,
                    location_description: location.clone().unwrap_or_default(),
                    observed: observed.clone(),
                    evidence: vec![],
                    vehicle_id: vehicle.clone().unwrap_or_default(),
                }))
            })
        }
        ManifestCommand::Transit {
            tracking_number,
            kind,
            description,
            position,
            evidence,
            sign,
        } => {
            let location = position
                .map(|p| compose::parse_position(&p))
                .transpose()
                .or_usage()?;
            let evidence = evidence
                .iter()
                .map(|p| evidence_for_file(p, pb::EvidenceKind::Other))
                .collect::<Result<Vec<_>, _>>()
                .or_usage()?;
            let kind = match kind {
                TransitKind::Position => pb::TransitCheckpointKind::Position,
                TransitKind::WeighStation => pb::TransitCheckpointKind::WeighStation,
                TransitKind::BorderCrossing => pb::TransitCheckpointKind::BorderCrossing,
                TransitKind::Incident => pb::TransitCheckpointKind::Incident,
                TransitKind::Delay => pb::TransitCheckpointKind::Delay,
            };
            event_on(ctx, &tracking_number, &sign, |_| {
                Ok(Kind::TransitCheckpoint(pb::TransitCheckpoint {
                    location,
                    description: description.clone(),
                    kind: kind as i32,
                    evidence: evidence.clone(),
                }))
            })
        }
        ManifestCommand::Sign { file, key, out } => {
            let genesis = ctx.genesis()?;
            let mut event = EventFile::read(&file).or_usage()?;
            let (key, party) = super::load_key(&key)?;
            event.cosign(&genesis.ledger_id, &key, party).or_usage()?;
            let path = out.unwrap_or(file);
            event.write(&path).or_usage()?;
            print_event_file(ctx, &event, Some(&path))
        }
        ManifestCommand::Submit { file } => {
            let genesis = ctx.genesis()?;
            let event = EventFile::read(&file).or_usage()?;
            event.check(&genesis.ledger_id).or_usage()?;
            let signed = event.signed_event().or_usage()?;
            let receipt = ctx.remote(async |r| Ok(r.submit(&signed).await?))?;
            print_receipt(ctx, &event.kind, &event.subject, &receipt)
        }
        ManifestCommand::Receive {
            tracking_number,
            lines,
            evidence,
            sign,
        } => {
            let lines = lines
                .iter()
                .map(|l| parse_received_line(l))
                .collect::<Result<Vec<_>, _>>()
                .or_usage()?;
            let evidence = evidence
                .iter()
                .map(|p| evidence_for_file(p, pb::EvidenceKind::WeighbridgeTicket))
                .collect::<Result<Vec<_>, _>>()
                .or_usage()?;
            event_on(ctx, &tracking_number, &sign, |_| {
                Ok(Kind::Received(pb::Received {
                    lines: lines.clone(),
                    evidence: evidence.clone(),
                }))
            })
        }
        ManifestCommand::Reject {
            tracking_number,
            scope,
            destination,
            on_site,
            reason,
            lines,
            accepted,
            follow_ups,
            sign,
        } => {
            let lines = lines
                .iter()
                .map(|l| parse_rejected_line(l))
                .collect::<Result<Vec<_>, _>>()
                .or_usage()?;
            let accepted = accepted
                .iter()
                .map(|l| parse_received_line(l))
                .collect::<Result<Vec<_>, _>>()
                .or_usage()?;
            let follow_up_manifests = follow_ups
                .iter()
                .map(|t| tracking(t).map(|t| t.to_pb()))
                .collect::<Result<Vec<_>, _>>()
                .or_usage()?;
            let rejected = pb::Rejected {
                scope: match scope {
                    Scope::Full => pb::RejectionScope::Full,
                    Scope::Partial => pb::RejectionScope::Partial,
                } as i32,
                destination: match destination {
                    Destination::Alternate => pb::RejectionDestination::AlternateFacility,
                    Destination::Generator => pb::RejectionDestination::Generator,
                } as i32,
                transporter_on_site: on_site,
                lines,
                accepted,
                follow_up_manifests,
                reason,
                evidence: vec![],
            };
            event_on(ctx, &tracking_number, &sign, |_| {
                Ok(Kind::Rejected(rejected.clone()))
            })
        }
        ManifestCommand::Treat {
            tracking_number,
            lines,
            certificate,
            completed_at,
            sign,
        } => {
            let lines = lines
                .iter()
                .map(|l| parse_treated_line(l))
                .collect::<Result<Vec<_>, _>>()
                .or_usage()?;
            let certificate =
                evidence_for_file(&certificate, pb::EvidenceKind::Certificate).or_usage()?;
            event_on(ctx, &tracking_number, &sign, |state| {
                Ok(Kind::Treated(pb::Treated {
                    lines: lines.clone(),
                    certificate: Some(certificate.clone()),
                    completed_at: completed_at.unwrap_or_else(|| compose::occurred_at(state)),
                }))
            })
        }
        ManifestCommand::Correct {
            tracking_number,
            amends,
            received_lines,
            treated_lines,
            handling_instructions,
            reason,
            sign,
        } => {
            use pb::correction_change::Change;
            let mut changes = Vec::new();
            for l in &received_lines {
                changes.push(Change::ReceivedLine(parse_received_line(l).or_usage()?));
            }
            for l in &treated_lines {
                changes.push(Change::TreatedLine(parse_treated_line(l).or_usage()?));
            }
            if let Some(h) = handling_instructions {
                changes.push(Change::HandlingInstructions(h));
            }
            if changes.is_empty() {
                return Err(Failure::usage(
                    "a correction needs at least one change: --received-line, --treated-line or --handling-instructions",
                ));
            }
            let changes: Vec<pb::CorrectionChange> = changes
                .into_iter()
                .map(|c| pb::CorrectionChange { change: Some(c) })
                .collect();
            event_on(ctx, &tracking_number, &sign, |state| {
                Ok(Kind::Correction(pb::Correction {
                    amends_event: amended_event(state, &amends)?,
                    changes: changes.clone(),
                    reason: reason.clone(),
                }))
            })
        }
        ManifestCommand::ApproveCorrection {
            tracking_number,
            refuse,
            comment,
            sign,
        } => event_on(ctx, &tracking_number, &sign, |state| {
            Ok(Kind::CorrectionDecision(pb::CorrectionDecision {
                correction_event: pending_correction(state)?,
                approve: !refuse,
                comment: comment.clone(),
            }))
        }),
        ManifestCommand::Cancel {
            tracking_number,
            reason,
            sign,
        } => event_on(ctx, &tracking_number, &sign, |_| {
            Ok(Kind::Cancelled(pb::Cancelled {
                reason: reason.clone(),
            }))
        }),
        ManifestCommand::Show { tracking_number } => {
            let t = tracking(&tracking_number).or_usage()?;
            let state = ctx.remote(async |r| Ok(r.manifest_state(&t).await?))?;
            show(ctx, &state)
        }
        ManifestCommand::History { tracking_number } => {
            let t = tracking(&tracking_number).or_usage()?;
            let response = ctx.remote(async |r| Ok(r.manifest(&t, true).await?))?;
            history(ctx, &response)
        }
        ManifestCommand::List {
            party,
            role,
            statuses,
            waste_code,
            code_system,
            time_field,
            from,
            until,
            page_size,
        } => {
            let time = |what: &str, t: Option<String>| -> Result<i64, Failure> {
                t.map_or(Ok(0), |t| {
                    wasteledger_client::report::parse_time(&t).ok_or_else(|| {
                        Failure::usage(format!(
                            "{what} {t:?}: expected a date (2026-11-01), a UTC time (2026-11-01T08:00:00Z) or ms since the epoch"
                        ))
                    })
                })
            };
            let (from_ms, until_ms) = (time("--from", from)?, time("--until", until)?);
            let request = pb::ListManifestsRequest {
                party: party.unwrap_or_default(),
                role: role.map_or(pb::Role::Unspecified, |r| match r {
                    RoleArg::Generator => pb::Role::Generator,
                    RoleArg::Transporter => pb::Role::Transporter,
                    RoleArg::Facility => pb::Role::Facility,
                    RoleArg::Broker => pb::Role::Broker,
                }) as i32,
                statuses: statuses.iter().map(|s| status_value(*s) as i32).collect(),
                waste_code: waste_code.unwrap_or_default(),
                code_system: code_system.map_or(pb::CodeSystem::Unspecified, |c| match c {
                    CodeSystemArg::EpaFederal => pb::CodeSystem::EpaFederal,
                    CodeSystemArg::UsState => pb::CodeSystem::UsState,
                    CodeSystemArg::CnHwCategory => pb::CodeSystem::CnHwCategory,
                    CodeSystemArg::CnWasteCode => pb::CodeSystem::CnWasteCode,
                    CodeSystemArg::Ewc => pb::CodeSystem::Ewc,
                    CodeSystemArg::EuHp => pb::CodeSystem::EuHp,
                }) as i32,
                time_field: if from_ms == 0 && until_ms == 0 {
                    pb::ManifestTime::Unspecified
                } else {
                    match time_field {
                        TimeArg::Created => pb::ManifestTime::Created,
                        TimeArg::Shipped => pb::ManifestTime::Shipped,
                        TimeArg::Delivered => pb::ManifestTime::Delivered,
                        TimeArg::Received => pb::ManifestTime::Received,
                        TimeArg::Treated => pb::ManifestTime::Treated,
                        TimeArg::LastEvent => pb::ManifestTime::LastEvent,
                    }
                } as i32,
                from_ms,
                until_ms,
                page_size,
                consistency: pb::ReadConsistency::Linearizable as i32,
                ..Default::default()
            };
            let all = ctx.remote(async |r| Ok(r.list_all(request, |_| {}).await?))?;
            list(ctx, &all)
        }
    }
}

fn status_value(s: StatusArg) -> pb::ManifestStatus {
    match s {
        StatusArg::Created => pb::ManifestStatus::Created,
        StatusArg::InTransit => pb::ManifestStatus::InTransit,
        StatusArg::Delivered => pb::ManifestStatus::Delivered,
        StatusArg::Received => pb::ManifestStatus::Received,
        StatusArg::Rejected => pb::ManifestStatus::Rejected,
        StatusArg::Returned => pb::ManifestStatus::Returned,
        StatusArg::Treated => pb::ManifestStatus::Treated,
        StatusArg::Cancelled => pb::ManifestStatus::Cancelled,
    }
}

/// Reads the manifest's current state, composes the next event from it and signs/submits it.
fn event_on(
    ctx: &Context,
    number: &str,
    sign: &SignArgs,
    kind: impl FnOnce(&pb::ManifestState) -> Result<Kind, compose::ComposeError>,
) -> CmdResult {
    let genesis = ctx.genesis()?;
    // Keys are checked before the network is touched: a wrong path fails fast with exit 2.
    load_keys(&sign.keys)?;
    let t = tracking(number).or_usage()?;
    let state = ctx.remote(async |r| Ok(r.manifest_state(&t).await?))?;
    let body = next_body(&state, kind(&state).or_usage()?).or_usage()?;
    finish(ctx, &genesis, &body, sign)
}

/// Manifests per `SubmitBatch` call in an import: small enough that the progress bar moves
/// and one call stays well inside the API's 256-event and request-size limits.
const IMPORT_BATCH: usize = 32;

/// One line of an import's result.
#[derive(serde::Serialize)]
struct ImportResult {
    line: usize,
    tracking_number: Option<String>,
    result: String,
    index: Option<u64>,
    error: Option<String>,
}

fn import(ctx: &Context, file: &std::path::Path, key: &std::path::Path) -> CmdResult {
    let genesis = ctx.genesis()?;
    let (key, _) = super::load_key(key)?;
    let lines = files::read_jsonl(file).or_usage()?;
    let bar = indicatif::ProgressBar::new(lines.len() as u64);
    if !ctx.out.json_mode() {
        bar.set_style(
            indicatif::ProgressStyle::with_template("{bar:40} {pos}/{len} manifests {msg}")
                .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar()),
        );
    } else {
        bar.set_draw_target(indicatif::ProgressDrawTarget::hidden());
    }
    // Valid lines are signed here and sent in batches: one round trip per batch, and the
    // node still decides (and reports) every manifest on its own.
    let mut results: Vec<ImportResult> = Vec::new();
    let mut pending: Vec<(usize, Option<String>, pb::SignedEvent)> = Vec::new();
    // A tracking number twice in one file is a mistake in the file: report it as such rather
    // than let two creations race (and, signed in the same millisecond, be the same event).
    let mut first_line: std::collections::BTreeMap<String, usize> = Default::default();
    for (line, parsed) in lines {
        match parsed.and_then(|m| {
            let number = m
                .tracking_number
                .as_ref()
                .and_then(|t| Tracking::from_pb(t).ok())
                .map(|t| t.to_string());
            if let Some(n) = &number
                && let Some(first) = first_line.insert(n.clone(), line)
            {
                first_line.insert(n.clone(), first);
                return Err(files::FileError::Syntax {
                    path: format!("{} line {line}", file.display()),
                    message: format!("tracking number {n} already appears on line {first}"),
                });
            }
            creation_body(&m)
                .map(|b| (number, b))
                .map_err(|e| files::FileError::Syntax {
                    path: format!("line {line}"),
                    message: e.to_string(),
                })
        }) {
            Ok((number, body)) => pending.push((
                line,
                number,
                wasteledger_core::compose::sign_event(&genesis.ledger_id, &body, &[&key]),
            )),
            Err(e) => {
                bar.inc(1);
                results.push(ImportResult {
                    line,
                    tracking_number: None,
                    result: "invalid".into(),
                    index: None,
                    error: Some(e.to_string()),
                });
            }
        }
    }
    if !pending.is_empty() {
        let submitted = ctx.remote(async |r| {
            let mut out = Vec::new();
            let mut lost: Option<String> = None;
            for chunk in pending.chunks(IMPORT_BATCH) {
                // Once the node is lost, the rest is reported as not sent (the results so far
                // are still printed): re-running the import is safe, recorded lines are refused
                // as duplicates and the rest go through.
                let answers = match &lost {
                    Some(e) => vec![Err(e.clone()); chunk.len()],
                    None => {
                        let events = chunk.iter().map(|(_, _, e)| e.clone()).collect();
                        match r.submit_batch(events).await {
                            Ok(a) => a
                                .into_iter()
                                .map(|a| a.map_err(|e| e.to_string()))
                                .collect(),
                            Err(e) => {
                                let text = format!("not sent: {e}");
                                lost = Some(text.clone());
                                vec![Err(text); chunk.len()]
                            }
                        }
                    }
                };
                for ((line, number, _), answer) in chunk.iter().zip(answers) {
                    out.push(match answer {
                        Ok(receipt) => ImportResult {
                            line: *line,
                            tracking_number: number.clone(),
                            result: "recorded".into(),
                            index: Some(receipt.index),
                            error: None,
                        },
                        Err(e) => ImportResult {
                            line: *line,
                            tracking_number: number.clone(),
                            result: if lost.is_some() {
                                "not sent"
                            } else {
                                "refused"
                            }
                            .into(),
                            index: None,
                            error: Some(e),
                        },
                    });
                }
                bar.inc(chunk.len() as u64);
            }
            Ok(out)
        })?;
        results.extend(submitted);
    }
    results.sort_by_key(|r| r.line);
    bar.finish_and_clear();
    let invalid = results.iter().filter(|r| r.result == "invalid").count();
    let refused = results
        .iter()
        .filter(|r| r.result == "refused" || r.result == "not sent")
        .count();
    if ctx.out.json_mode() {
        ctx.out.json(&results)?;
    } else {
        ctx.out.table(
            &["line", "manifest", "result"],
            results
                .iter()
                .map(|r| {
                    vec![
                        r.line.to_string(),
                        r.tracking_number.clone().unwrap_or_else(|| "-".into()),
                        match (&r.index, &r.error) {
                            (Some(i), _) => format!("recorded at #{i}"),
                            (None, Some(e)) => format!("{}: {e}", r.result),
                            (None, None) => r.result.clone(),
                        },
                    ]
                })
                .collect(),
        );
        ctx.out.say(format!(
            "{} recorded, {invalid} invalid, {refused} refused or not sent",
            results.len() - invalid - refused
        ));
    }
    match (invalid, refused) {
        (0, 0) => Ok(()),
        (0, n) => Err(Failure::new(
            REMOTE,
            anyhow::anyhow!("{n} manifest(s) refused by the ledger"),
        )),
        (n, _) => Err(Failure::new(
            USAGE,
            anyhow::anyhow!("{n} line(s) of {} are invalid", file.display()),
        )),
    }
}

fn party_id(p: &Option<pb::ManifestParty>) -> String {
    p.as_ref()
        .map(|p| p.registry_id.clone())
        .unwrap_or_default()
}

fn quantity_text(q: &Option<pb::Quantity>) -> String {
    q.as_ref()
        .map(|q| {
            format!(
                "{} {}{}",
                q.amount,
                compose::unit_text(q.unit),
                if q.estimated { " (est.)" } else { "" }
            )
        })
        .unwrap_or_default()
}

fn time_opt(t: Option<i64>) -> String {
    t.map(iso_time).unwrap_or_else(|| "-".into())
}

fn show(ctx: &Context, s: &pb::ManifestState) -> CmdResult {
    if ctx.out.json_mode() {
        return ctx.out.json(s);
    }
    let m = s.manifest.clone().unwrap_or_default();
    let transporters: Vec<String> = m
        .transporters
        .iter()
        .map(|t| party_id(&t.transporter))
        .collect();
    ctx.out.fields(&[
        ("manifest", tracking_text(s)),
        ("status", status_text(s)),
        ("generator", party_id(&m.generator)),
        ("transporters", transporters.join(" -> ")),
        ("designated facility", party_id(&m.designated_facility)),
        ("destination", s.destination.clone()),
        ("created", iso_time(s.created_at)),
        ("shipped", time_opt(s.shipped_at)),
        ("delivered", time_opt(s.delivered_at)),
        ("received", time_opt(s.received_at)),
        ("treated", time_opt(s.treated_at)),
        ("events", s.events.len().to_string()),
        ("head", hex::encode(&s.head)),
        (
            "corrections",
            format!(
                "{} applied, {} refused",
                s.corrections_applied, s.corrections_refused
            ),
        ),
    ]);
    let received: std::collections::BTreeMap<u32, &pb::ReceivedLine> =
        s.received.iter().map(|r| (r.line_number, r)).collect();
    let discrepancy: std::collections::BTreeMap<u32, &pb::LineDiscrepancy> =
        s.discrepancies.iter().map(|d| (d.line_number, d)).collect();
    ctx.out.table(
        &[
            "line",
            "description",
            "codes",
            "shipped",
            "received",
            "discrepancy",
        ],
        m.lines
            .iter()
            .map(|l| {
                let codes: Vec<String> = l.codes.iter().map(|c| c.code.clone()).collect();
                let disc = discrepancy
                    .get(&l.line_number)
                    .map_or_else(String::new, |d| {
                        let dev = d
                            .deviation_bp
                            .map(compose::percent_text)
                            .unwrap_or_default();
                        let mut parts = vec![dev];
                        if d.piece_difference != 0 {
                            parts.push(format!("{:+} pieces", d.piece_difference));
                        }
                        if d.significant {
                            parts.push("SIGNIFICANT".into());
                        }
                        parts.retain(|p| !p.is_empty());
                        parts.join(", ")
                    });
                vec![
                    l.line_number.to_string(),
                    l.description.clone(),
                    codes.join(" "),
                    quantity_text(&l.quantity),
                    received
                        .get(&l.line_number)
                        .map_or_else(String::new, |r| quantity_text(&r.quantity)),
                    disc,
                ]
            })
            .collect(),
    );
    if let Some(p) = &s.pending_correction {
        ctx.out.say(format!(
            "correction {} proposed by {} awaits approval from: {}",
            hex::encode(&p.event_hash[..p.event_hash.len().min(8)]),
            p.proposer,
            p.awaiting.join(", ")
        ));
    }
    Ok(())
}

fn history(ctx: &Context, response: &pb::GetManifestResponse) -> CmdResult {
    let state = response.state.clone().unwrap_or_default();
    if ctx.out.json_mode() {
        return ctx.out.json(&serde_json::json!({
            "tracking_number": tracking_text(&state),
            "events": state.events.iter().map(|e| serde_json::json!({
                "index": e.index,
                "kind": e.kind,
                "event_hash": hex::encode(&e.event_hash),
                "sequenced_at": response.events.iter().find(|l| l.index == e.index).map(|l| l.sequenced_at),
            })).collect::<Vec<_>>(),
        }));
    }
    ctx.out.say(format!(
        "{} — {}",
        tracking_text(&state),
        status_text(&state)
    ));
    ctx.out.table(
        &["#", "event", "recorded (UTC)", "event hash"],
        state
            .events
            .iter()
            .map(|e| {
                let when = response
                    .events
                    .iter()
                    .find(|l| l.index == e.index)
                    .map_or_else(|| "-".into(), |l| iso_time(l.sequenced_at));
                vec![
                    e.index.to_string(),
                    e.kind.clone(),
                    when,
                    hex::encode(&e.event_hash),
                ]
            })
            .collect(),
    );
    Ok(())
}

fn list(ctx: &Context, all: &[pb::ManifestState]) -> CmdResult {
    if ctx.out.json_mode() {
        return ctx.out.json(all);
    }
    ctx.out.table(
        &[
            "manifest",
            "status",
            "generator",
            "facility",
            "lines",
            "last event (UTC)",
        ],
        all.iter()
            .map(|s| {
                let m = s.manifest.clone().unwrap_or_default();
                vec![
                    tracking_text(s),
                    status_text(s),
                    party_id(&m.generator),
                    s.destination.clone(),
                    m.lines.len().to_string(),
                    iso_time(s.last_occurred_at),
                ]
            })
            .collect(),
    );
    ctx.out.say(format!("{} manifest(s)", all.len()));
    Ok(())
}

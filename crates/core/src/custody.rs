//! Custody rules: the state of one manifest and the deterministic function that advances it.
//!
//! [`apply_manifest_event`] is the single place where the manifest lifecycle is decided. The
//! node's state machine calls it for every committed manifest event, and the offline verifier
//! calls it again while replaying a custody proof, so both reach the same verdict from the same
//! bytes. It reads no clock: every time it compares comes from a signed event or from the ledger
//! time stamped on the entry.
//!
//! Lifecycle (signers in brackets):
//!
//! ```text
//! Created --handoff [generator + T1]--> InTransit(0) --handoff [Ti + Ti+1]--> InTransit(i+1)
//! InTransit(last) --handoff [Tlast + destination facility]--> Delivered
//! InTransit(last) --on-site full rejection [facility + Tlast]--> InTransit(last), new destination
//! InTransit(last) --handoff [Tlast + generator] (after a return)--> Returned
//! Delivered --Received [facility]--> Received --Treated [facility]--> Treated
//! Delivered --Rejected full [facility]--> Rejected   (load leaves on follow-up manifests)
//! Delivered --Rejected partial [facility]--> Received (accepted part) --> Treated
//! Created --Cancelled [generator]--> Cancelled
//! any state but Cancelled: Correction [a party] / CorrectionDecision [every other signer]
//! ```

use std::collections::BTreeSet;
use std::sync::Arc;

use crate::hash::Digest;
use crate::manifest::{
    FieldProblem, check_evidence, check_method, validate_manifest, validate_waste_line,
};
use crate::pb::{self, Role, event_body::Kind};
use crate::quantity::{LineDiscrepancy, Measured, compare_line};
use crate::registry::PartyRecord;
use crate::tracking::Tracking;

/// Read access to registered parties, as of the position of the event being applied.
pub trait PartyLookup {
    /// The registered party with this registry id.
    fn party(&self, registry_id: &str) -> Option<Arc<PartyRecord>>;
}

/// Where a manifest is in its lifecycle.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Status {
    /// Signed by the generator, waiting for the first pickup.
    Created,
    /// Held by the transporter at this 0-based leg.
    InTransit {
        /// Index into the manifest's transporters.
        leg: u32,
    },
    /// Handed to the destination facility, which has not yet accepted or rejected it.
    Delivered,
    /// Accepted (in full or in part) by the facility.
    Received,
    /// Fully rejected after delivery; the load continues on follow-up manifests.
    Rejected,
    /// Brought back to the generator after a rejection.
    Returned,
    /// Final management certified.
    Treated,
    /// Withdrawn before the first pickup.
    Cancelled,
}

impl Status {
    /// One status of each kind (`InTransit` at leg 0), for code that enumerates them.
    pub const KINDS: [Status; 8] = [
        Status::Created,
        Status::InTransit { leg: 0 },
        Status::Delivered,
        Status::Received,
        Status::Rejected,
        Status::Returned,
        Status::Treated,
        Status::Cancelled,
    ];

    /// No further custody event may follow (corrections still may, except after cancellation).
    pub fn is_terminal(self) -> bool {
        matches!(
            self,
            Status::Rejected | Status::Returned | Status::Treated | Status::Cancelled
        )
    }

    /// A stable lower-case name, used in indexes and queries.
    pub fn name(self) -> &'static str {
        match self {
            Status::Created => "created",
            Status::InTransit { .. } => "in_transit",
            Status::Delivered => "delivered",
            Status::Received => "received",
            Status::Rejected => "rejected",
            Status::Returned => "returned",
            Status::Treated => "treated",
            Status::Cancelled => "cancelled",
        }
    }
}

impl std::fmt::Display for Status {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Status::InTransit { leg } => write!(f, "in transit (leg {})", leg + 1),
            other => f.write_str(other.name()),
        }
    }
}

/// A correction waiting for approvals.
#[derive(Clone, Debug, PartialEq)]
pub struct PendingCorrection {
    /// Event hash of the Correction.
    pub event_hash: Digest,
    /// Who proposed it.
    pub proposer: String,
    /// What it changes.
    pub correction: pb::Correction,
    /// Parties whose approval is still needed.
    pub awaiting: BTreeSet<String>,
    /// Parties that approved so far.
    pub approved: BTreeSet<String>,
}

/// What the facility rejected.
#[derive(Clone, Debug, PartialEq)]
pub struct RejectionRecord {
    /// The Rejected event as signed.
    pub rejected: pb::Rejected,
    /// Event hash of the Rejected event.
    pub event_hash: Digest,
}

/// One event in the manifest's chain.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ChainEvent {
    /// Event hash.
    pub hash: Digest,
    /// Event kind name.
    pub kind: &'static str,
    /// Ledger index of the entry.
    pub index: u64,
}

/// The folded state of one manifest after some prefix of its events.
#[derive(Clone, Debug, PartialEq)]
pub struct ManifestState {
    /// The tracking number.
    pub tracking: Tracking,
    /// The manifest as created, with every approved correction applied.
    pub manifest: pb::Manifest,
    /// Lifecycle status.
    pub status: Status,
    /// Registry id of where the load is going: the designated facility, the alternate facility
    /// after an on-site rejection, or the generator after a return.
    pub destination: String,
    /// Hash of the latest event (the chain head).
    pub head: Digest,
    /// Every event of the chain, in order.
    pub events: Vec<ChainEvent>,
    /// `occurred_at` of the latest event.
    pub last_occurred_at: i64,
    /// When it was created, first picked up, delivered, received and treated (occurred_at).
    pub created_at: i64,
    /// First pickup time.
    pub shipped_at: Option<i64>,
    /// Delivery time.
    pub delivered_at: Option<i64>,
    /// Receipt (or rejection) decision time.
    pub received_at: Option<i64>,
    /// Treatment certification time.
    pub treated_at: Option<i64>,
    /// Parties that have signed any event: those who must approve a correction.
    pub signers: BTreeSet<String>,
    /// The receipt per line (accepted part for a partial rejection).
    pub received: Vec<pb::ReceivedLine>,
    /// Discrepancies computed at receipt (EPA rule).
    pub discrepancies: Vec<LineDiscrepancy>,
    /// The rejection, if any.
    pub rejection: Option<RejectionRecord>,
    /// The treatment per line.
    pub treated: Vec<pb::TreatedLine>,
    /// The correction waiting for approvals.
    pub pending_correction: Option<PendingCorrection>,
    /// Corrections applied and refused so far.
    pub corrections_applied: u32,
    /// Corrections refused so far.
    pub corrections_refused: u32,
}

impl ManifestState {
    /// Registry ids of every party named on the manifest.
    pub fn named_parties(&self) -> BTreeSet<String> {
        named_parties(&self.manifest)
    }

    /// True when any line has a significant discrepancy.
    pub fn has_significant_discrepancy(&self) -> bool {
        self.discrepancies.iter().any(|d| d.significant)
    }
}

/// Registry ids of every party named on a manifest.
pub fn named_parties(m: &pb::Manifest) -> BTreeSet<String> {
    let mut out = BTreeSet::new();
    for p in [
        &m.generator,
        &m.designated_facility,
        &m.alternate_facility,
        &m.broker,
    ]
    .into_iter()
    .flatten()
    {
        out.insert(p.registry_id.clone());
    }
    for leg in &m.transporters {
        if let Some(t) = &leg.transporter {
            out.insert(t.registry_id.clone());
        }
    }
    out
}

/// The inputs of a custody decision besides the state and the event.
pub struct EventContext<'a> {
    /// Hash of the event.
    pub event_hash: Digest,
    /// Ledger index the event would get.
    pub index: u64,
    /// Ledger time stamped on the entry by the leader (ms).
    pub sequenced_at: i64,
    /// Allowed clock skew (ms): `occurred_at` may be at most this far after `sequenced_at`.
    pub max_skew_ms: i64,
    /// Registry ids of the parties whose valid signatures the event carries.
    pub signers: &'a BTreeSet<String>,
    /// Signatures by genesis authorities (never allowed on manifest events).
    pub authority_signed: bool,
    /// The party registry as of this position.
    pub parties: &'a dyn PartyLookup,
}

/// Why a manifest event was refused. Each rule has its own variant.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CustodyError {
    /// The event's kind does not belong on a manifest chain.
    #[error("a {kind} event cannot extend a manifest chain")]
    WrongSubject {
        /// Event kind.
        kind: &'static str,
    },
    /// The manifest has never been created.
    #[error("manifest {0} does not exist; create it first with ManifestCreated")]
    UnknownManifest(String),
    /// A second ManifestCreated for an existing tracking number.
    #[error("manifest {0} already exists; choose a new tracking number")]
    DuplicateTrackingNumber(String),
    /// The manifest inside ManifestCreated names another tracking number than the subject.
    #[error("the manifest's tracking number {inner} differs from the event subject {subject}")]
    TrackingNumberMismatch {
        /// Subject of the event.
        subject: String,
        /// Tracking number inside the manifest.
        inner: String,
    },
    /// The manifest fails validation.
    #[error("manifest is invalid: {}", join(.0))]
    InvalidManifest(Vec<FieldProblem>),
    /// The first event of a chain must name the zero hash as its predecessor.
    #[error("ManifestCreated must have an all-zero prev_event_hash")]
    CreationNotFirst,
    /// `prev_event_hash` is not the current head: the event was prepared on an old state, or it
    /// forks the chain.
    #[error(
        "prev_event_hash {got} is not the head of manifest {tracking} ({expected}); fetch the manifest and sign again on its current head"
    )]
    StaleChain {
        /// Tracking number.
        tracking: String,
        /// Current head (short hex).
        expected: String,
        /// Hash named by the event (short hex).
        got: String,
    },
    /// The event says it happened before the previous event.
    #[error(
        "occurred_at {got} is before the previous event's time {previous}; events must be in time order"
    )]
    TimeBeforePrevious {
        /// The previous event's time.
        previous: i64,
        /// This event's time.
        got: i64,
    },
    /// The event says it happened in the future relative to the ledger time.
    #[error(
        "occurred_at {got} is more than {skew_ms} ms after the ledger time {ledger_time}; check the signer's clock"
    )]
    TimeInFuture {
        /// This event's time.
        got: i64,
        /// Ledger time stamped on the entry.
        ledger_time: i64,
        /// Allowed skew.
        skew_ms: i64,
    },
    /// occurred_at is zero or negative.
    #[error("occurred_at must be a positive time in milliseconds since 1970")]
    MissingTime,
    /// The manifest is closed to custody events.
    #[error("manifest {tracking} is {status}; only corrections may follow")]
    Terminal {
        /// Tracking number.
        tracking: String,
        /// Current status.
        status: String,
    },
    /// The event does not fit the current status.
    #[error("{event} is not allowed while manifest {tracking} is {status}")]
    WrongState {
        /// Event kind.
        event: &'static str,
        /// Tracking number.
        tracking: String,
        /// Current status.
        status: String,
    },
    /// A party the rules require did not sign.
    #[error("{event} must be signed by {party} ({role}); that signature is missing")]
    MissingSignature {
        /// Event kind.
        event: &'static str,
        /// Registry id.
        party: String,
        /// The role it acts in.
        role: &'static str,
    },
    /// A signature by a party with no part in this event.
    #[error("{party} signed {event} but has no part in it; remove that signature")]
    UnexpectedSigner {
        /// Event kind.
        event: &'static str,
        /// Registry id.
        party: String,
    },
    /// Authorities (regulators of the genesis) never sign custody events.
    #[error("authority keys cannot sign manifest events")]
    AuthoritySigned,
    /// A handoff between the wrong parties or out of order.
    #[error(
        "handoff out of order: expected {expected_from} -> {expected_to}, got {got_from} -> {got_to}"
    )]
    HandoffOutOfOrder {
        /// Who must release now.
        expected_from: String,
        /// Who must receive now.
        expected_to: String,
        /// Releasing party named.
        got_from: String,
        /// Receiving party named.
        got_to: String,
    },
    /// A party named on the manifest is not registered.
    #[error("party {0} is not registered on this ledger")]
    UnknownParty(String),
    /// A party lacks the role it acts in.
    #[error("party {party} is not registered as a {role}")]
    MissingRole {
        /// Registry id.
        party: String,
        /// Role required.
        role: &'static str,
    },
    /// A transporter or facility has no permit for its role valid at the event time.
    #[error("party {party} holds no {role} permit valid at {at}")]
    NoValidPermit {
        /// Registry id.
        party: String,
        /// Role required.
        role: &'static str,
        /// Event time.
        at: i64,
    },
    /// A line number that is not on the manifest.
    #[error("line {0} is not on the manifest")]
    UnknownLine(u32),
    /// A line given twice.
    #[error("line {0} appears more than once")]
    DuplicateLine(u32),
    /// A manifest line missing from a receipt or treatment record.
    #[error("line {0} is missing; every line must be accounted for")]
    MissingLine(u32),
    /// A field of the event is invalid.
    #[error("invalid field: {0}")]
    InvalidField(FieldProblem),
    /// An on-site rejection must be full.
    #[error(
        "a rejection with the transporter on site must be FULL; use a follow-up manifest for a partial rejection"
    )]
    OnSiteRejectionMustBeFull,
    /// Rejection to an alternate facility on a manifest without one.
    #[error(
        "manifest {0} names no alternate facility; reject back to the generator or use a follow-up manifest"
    )]
    NoAlternateFacility(String),
    /// The load was already redirected to this destination.
    #[error("the load is already going to {0}; it cannot be redirected there again")]
    AlreadyRedirected(String),
    /// A rejection after delivery without follow-up manifests.
    #[error("a rejection after delivery must name the follow-up manifests that carry the load on")]
    MissingFollowUp,
    /// Cancelling after pickup.
    #[error("manifest {0} has been picked up and can no longer be cancelled")]
    CancelAfterPickup(String),
    /// A correction on a cancelled manifest.
    #[error("manifest {0} is cancelled; corrections are not accepted")]
    CorrectionOnCancelled(String),
    /// A correction while another is pending.
    #[error("correction {0} is still awaiting decisions; only one correction may be pending")]
    CorrectionPending(String),
    /// The event a correction amends is not on this manifest.
    #[error("the amended event {0} is not part of this manifest")]
    AmendedEventNotFound(String),
    /// A change that does not fit the amended event.
    #[error("a {change} change cannot amend a {amended} event")]
    ChangeDoesNotFit {
        /// Change kind.
        change: &'static str,
        /// Amended event kind.
        amended: &'static str,
    },
    /// A correction with no changes.
    #[error("a correction must contain at least one change")]
    EmptyCorrection,
    /// The proposer of a correction is not a party on the manifest.
    #[error("{0} is not a party on this manifest and cannot propose corrections")]
    NotAManifestParty(String),
    /// A decision without a pending correction (or for another one).
    #[error("there is no pending correction {0} on this manifest")]
    NoSuchPendingCorrection(String),
    /// A decision by a party that is not asked to decide.
    #[error("{0} is not asked to decide on this correction (or has decided already)")]
    NotAnApprover(String),
    /// An event that needs exactly one signer has several.
    #[error("{event} must be signed by exactly one party, got {count}")]
    SignerCount {
        /// Event kind.
        event: &'static str,
        /// Signers present.
        count: usize,
    },
}

fn join(problems: &[FieldProblem]) -> String {
    problems
        .iter()
        .map(ToString::to_string)
        .collect::<Vec<_>>()
        .join("; ")
}

/// The name of an event kind, as shown to users.
pub fn kind_name(kind: &Kind) -> &'static str {
    match kind {
        Kind::PartyRegistered(_) => "PartyRegistered",
        Kind::KeyRotated(_) => "KeyRotated",
        Kind::KeyRevoked(_) => "KeyRevoked",
        Kind::PartyUpdated(_) => "PartyUpdated",
        Kind::ManifestCreated(_) => "ManifestCreated",
        Kind::CustodyHandoff(_) => "CustodyHandoff",
        Kind::TransitCheckpoint(_) => "TransitCheckpoint",
        Kind::Received(_) => "Received",
        Kind::Rejected(_) => "Rejected",
        Kind::Treated(_) => "Treated",
        Kind::Correction(_) => "Correction",
        Kind::CorrectionDecision(_) => "CorrectionDecision",
        Kind::Cancelled(_) => "Cancelled",
    }
}

fn role_name(role: Role) -> &'static str {
    match role {
        Role::Generator => "generator",
        Role::Transporter => "transporter",
        Role::Facility => "facility",
        Role::Broker => "broker",
        Role::Regulator => "regulator",
        Role::Auditor => "auditor",
        Role::Unspecified => "unspecified",
    }
}

/// Checks that `registry_id` is registered with `role`.
fn require_role(
    parties: &dyn PartyLookup,
    registry_id: &str,
    role: Role,
) -> Result<Arc<PartyRecord>, CustodyError> {
    let record = parties
        .party(registry_id)
        .ok_or_else(|| CustodyError::UnknownParty(registry_id.to_owned()))?;
    if !record.party.roles.contains(&(role as i32)) {
        return Err(CustodyError::MissingRole {
            party: registry_id.to_owned(),
            role: role_name(role),
        });
    }
    Ok(record)
}

/// Checks role and a permit for that role valid at `at`.
fn require_permit(
    parties: &dyn PartyLookup,
    registry_id: &str,
    role: Role,
    at: i64,
) -> Result<(), CustodyError> {
    let record = require_role(parties, registry_id, role)?;
    let valid = record.party.permits.iter().any(|p| {
        p.role == role as i32 && p.valid_from <= at && (p.valid_until == 0 || at < p.valid_until)
    });
    if valid {
        Ok(())
    } else {
        Err(CustodyError::NoValidPermit {
            party: registry_id.to_owned(),
            role: role_name(role),
            at,
        })
    }
}

/// Requires that the signers are exactly `required` (each with the role it acts in).
fn require_signers(
    event: &'static str,
    signers: &BTreeSet<String>,
    required: &[(&str, &'static str)],
) -> Result<(), CustodyError> {
    for (party, role) in required {
        if !signers.contains(*party) {
            return Err(CustodyError::MissingSignature {
                event,
                party: (*party).to_owned(),
                role,
            });
        }
    }
    if let Some(extra) = signers
        .iter()
        .find(|s| !required.iter().any(|(p, _)| p == s))
    {
        return Err(CustodyError::UnexpectedSigner {
            event,
            party: extra.clone(),
        });
    }
    Ok(())
}

fn id(p: &Option<pb::ManifestParty>) -> &str {
    p.as_ref().map_or("", |p| p.registry_id.as_str())
}

fn field_err(field: impl Into<String>, problem: impl Into<String>) -> CustodyError {
    CustodyError::InvalidField(FieldProblem {
        field: field.into(),
        problem: problem.into(),
    })
}

fn measured(
    field: &str,
    q: Option<&pb::Quantity>,
    positive: bool,
) -> Result<Measured, CustodyError> {
    let q = q.ok_or_else(|| field_err(field, "is required"))?;
    Measured::from_pb(q, positive).map_err(|e| field_err(field, e.to_string()))
}

/// Applies one manifest event to the manifest's state (None before creation) and returns the new
/// state, or the rule it breaks. Signatures have been verified by the caller; `ctx.signers` are
/// the parties whose keys were valid at this position.
pub fn apply_manifest_event(
    state: Option<&ManifestState>,
    subject: &Tracking,
    body: &pb::EventBody,
    ctx: &EventContext<'_>,
) -> Result<ManifestState, CustodyError> {
    let kind = body
        .kind
        .as_ref()
        .ok_or_else(|| field_err("kind", "the event has no kind"))?;
    let name = kind_name(kind);
    if ctx.authority_signed {
        return Err(CustodyError::AuthoritySigned);
    }
    if body.occurred_at <= 0 {
        return Err(CustodyError::MissingTime);
    }
    if body.occurred_at > ctx.sequenced_at.saturating_add(ctx.max_skew_ms) {
        return Err(CustodyError::TimeInFuture {
            got: body.occurred_at,
            ledger_time: ctx.sequenced_at,
            skew_ms: ctx.max_skew_ms,
        });
    }
    let Some(state) = state else {
        return match kind {
            Kind::ManifestCreated(created) => create(subject, body, created, ctx),
            _ => Err(CustodyError::UnknownManifest(subject.to_string())),
        };
    };
    if matches!(kind, Kind::ManifestCreated(_)) {
        return Err(CustodyError::DuplicateTrackingNumber(subject.to_string()));
    }
    if body.prev_event_hash.as_slice() != state.head.as_bytes() {
        return Err(CustodyError::StaleChain {
            tracking: subject.to_string(),
            expected: state.head.short(),
            got: Digest::from_slice(&body.prev_event_hash)
                .map_or_else(|| hex_short(&body.prev_event_hash), |d| d.short()),
        });
    }
    if body.occurred_at < state.last_occurred_at {
        return Err(CustodyError::TimeBeforePrevious {
            previous: state.last_occurred_at,
            got: body.occurred_at,
        });
    }
    let is_correction = matches!(kind, Kind::Correction(_) | Kind::CorrectionDecision(_));
    if state.status.is_terminal() && !is_correction {
        return Err(CustodyError::Terminal {
            tracking: subject.to_string(),
            status: state.status.to_string(),
        });
    }
    let mut next = state.clone();
    match kind {
        Kind::CustodyHandoff(h) => handoff(&mut next, body, h, ctx)?,
        Kind::TransitCheckpoint(c) => transit_checkpoint(&mut next, c, ctx)?,
        Kind::Received(r) => receive(&mut next, body, r, ctx)?,
        Kind::Rejected(r) => reject(&mut next, body, r, ctx)?,
        Kind::Treated(t) => treat(&mut next, body, t, ctx)?,
        Kind::Cancelled(_) => cancel(&mut next, ctx)?,
        Kind::Correction(c) => propose_correction(&mut next, c, ctx)?,
        Kind::CorrectionDecision(d) => decide_correction(&mut next, d, ctx)?,
        Kind::ManifestCreated(_)
        | Kind::PartyRegistered(_)
        | Kind::KeyRotated(_)
        | Kind::KeyRevoked(_)
        | Kind::PartyUpdated(_) => return Err(CustodyError::WrongSubject { kind: name }),
    }
    next.head = ctx.event_hash;
    next.last_occurred_at = body.occurred_at;
    next.signers.extend(ctx.signers.iter().cloned());
    next.events.push(ChainEvent {
        hash: ctx.event_hash,
        kind: name,
        index: ctx.index,
    });
    Ok(next)
}

fn hex_short(bytes: &[u8]) -> String {
    hex::encode(&bytes[..bytes.len().min(8)])
}

fn create(
    subject: &Tracking,
    body: &pb::EventBody,
    created: &pb::ManifestCreated,
    ctx: &EventContext<'_>,
) -> Result<ManifestState, CustodyError> {
    if body.prev_event_hash.as_slice() != Digest::ZERO.as_bytes() {
        return Err(CustodyError::CreationNotFirst);
    }
    let manifest = created
        .manifest
        .clone()
        .ok_or_else(|| field_err("manifest", "is required"))?;
    let problems = validate_manifest(&manifest);
    if !problems.is_empty() {
        return Err(CustodyError::InvalidManifest(problems));
    }
    let inner = manifest.tracking_number.as_ref().map(Tracking::from_pb);
    match inner {
        Some(Ok(t)) if &t == subject => {}
        Some(Ok(t)) => {
            return Err(CustodyError::TrackingNumberMismatch {
                subject: subject.to_string(),
                inner: t.to_string(),
            });
        }
        _ => return Err(field_err("manifest.tracking_number", "is invalid")),
    }
    let generator = id(&manifest.generator).to_owned();
    require_role(ctx.parties, &generator, Role::Generator)?;
    for leg in &manifest.transporters {
        require_role(ctx.parties, id(&leg.transporter), Role::Transporter)?;
    }
    require_role(
        ctx.parties,
        id(&manifest.designated_facility),
        Role::Facility,
    )?;
    if manifest.alternate_facility.is_some() {
        require_role(
            ctx.parties,
            id(&manifest.alternate_facility),
            Role::Facility,
        )?;
    }
    if manifest.broker.is_some() {
        require_role(ctx.parties, id(&manifest.broker), Role::Broker)?;
    }
    require_signers("ManifestCreated", ctx.signers, &[(&generator, "generator")])?;
    Ok(ManifestState {
        tracking: subject.clone(),
        destination: id(&manifest.designated_facility).to_owned(),
        manifest,
        status: Status::Created,
        head: ctx.event_hash,
        events: vec![ChainEvent {
            hash: ctx.event_hash,
            kind: "ManifestCreated",
            index: ctx.index,
        }],
        last_occurred_at: body.occurred_at,
        created_at: body.occurred_at,
        shipped_at: None,
        delivered_at: None,
        received_at: None,
        treated_at: None,
        signers: ctx.signers.clone(),
        received: Vec::new(),
        discrepancies: Vec::new(),
        rejection: None,
        treated: Vec::new(),
        pending_correction: None,
        corrections_applied: 0,
        corrections_refused: 0,
    })
}

fn transporter(m: &pb::Manifest, leg: u32) -> &str {
    m.transporters
        .get(leg as usize)
        .map_or("", |t| id(&t.transporter))
}

fn handoff(
    s: &mut ManifestState,
    body: &pb::EventBody,
    h: &pb::CustodyHandoff,
    ctx: &EventContext<'_>,
) -> Result<(), CustodyError> {
    let last_leg = (s.manifest.transporters.len() as u32).saturating_sub(1);
    let generator = id(&s.manifest.generator).to_owned();
    let (from, to, next_status, to_role) = match s.status {
        Status::Created => (
            generator.clone(),
            transporter(&s.manifest, 0).to_owned(),
            Status::InTransit { leg: 0 },
            Role::Transporter,
        ),
        Status::InTransit { leg } if leg < last_leg => (
            transporter(&s.manifest, leg).to_owned(),
            transporter(&s.manifest, leg + 1).to_owned(),
            Status::InTransit { leg: leg + 1 },
            Role::Transporter,
        ),
        Status::InTransit { leg } => {
            if s.destination == generator {
                (
                    transporter(&s.manifest, leg).to_owned(),
                    generator.clone(),
                    Status::Returned,
                    Role::Generator,
                )
            } else {
                (
                    transporter(&s.manifest, leg).to_owned(),
                    s.destination.clone(),
                    Status::Delivered,
                    Role::Facility,
                )
            }
        }
        _ => {
            return Err(CustodyError::WrongState {
                event: "CustodyHandoff",
                tracking: s.tracking.to_string(),
                status: s.status.to_string(),
            });
        }
    };
    if h.from_party != from || h.to_party != to {
        return Err(CustodyError::HandoffOutOfOrder {
            expected_from: from,
            expected_to: to,
            got_from: h.from_party.clone(),
            got_to: h.to_party.clone(),
        });
    }
    let from_role = if matches!(s.status, Status::Created) {
        "generator (releasing)"
    } else {
        "transporter (releasing)"
    };
    require_signers(
        "CustodyHandoff",
        ctx.signers,
        &[(&from, from_role), (&to, "receiving party")],
    )?;
    match to_role {
        Role::Generator => {
            require_role(ctx.parties, &to, Role::Generator)?;
        }
        role => require_permit(ctx.parties, &to, role, body.occurred_at)?,
    }
    for (i, observed) in h.observed.iter().enumerate() {
        if !s
            .manifest
            .lines
            .iter()
            .any(|l| l.line_number == observed.line_number)
        {
            return Err(CustodyError::UnknownLine(observed.line_number));
        }
        measured(
            &format!("observed[{i}].quantity"),
            observed.quantity.as_ref(),
            false,
        )?;
    }
    check_evidence_list("evidence", &h.evidence)?;
    if s.status == Status::Created {
        s.shipped_at = Some(body.occurred_at);
    }
    if next_status == Status::Delivered {
        s.delivered_at = Some(body.occurred_at);
    }
    s.status = next_status;
    Ok(())
}

fn check_evidence_list(field: &str, evidence: &[pb::EvidenceRef]) -> Result<(), CustodyError> {
    for (i, e) in evidence.iter().enumerate() {
        check_evidence(e).map_err(|p| field_err(format!("{field}[{i}]"), p))?;
    }
    Ok(())
}

fn single_signer<'a>(
    event: &'static str,
    ctx: &'a EventContext<'_>,
) -> Result<&'a str, CustodyError> {
    match ctx.signers.len() {
        1 => Ok(ctx.signers.iter().next().map_or("", String::as_str)),
        count => Err(CustodyError::SignerCount { event, count }),
    }
}

fn transit_checkpoint(
    s: &mut ManifestState,
    c: &pb::TransitCheckpoint,
    ctx: &EventContext<'_>,
) -> Result<(), CustodyError> {
    let Status::InTransit { leg } = s.status else {
        return Err(CustodyError::WrongState {
            event: "TransitCheckpoint",
            tracking: s.tracking.to_string(),
            status: s.status.to_string(),
        });
    };
    let holder = transporter(&s.manifest, leg).to_owned();
    require_signers(
        "TransitCheckpoint",
        ctx.signers,
        &[(&holder, "transporter holding the load")],
    )?;
    check_evidence_list("evidence", &c.evidence)
}

/// Checks that `lines` names every manifest line exactly once (or a subset when `all` is false)
/// and returns the line numbers seen.
fn check_line_set(
    manifest: &pb::Manifest,
    numbers: impl Iterator<Item = u32>,
    all: bool,
) -> Result<BTreeSet<u32>, CustodyError> {
    let mut seen = BTreeSet::new();
    for n in numbers {
        if !manifest.lines.iter().any(|l| l.line_number == n) {
            return Err(CustodyError::UnknownLine(n));
        }
        if !seen.insert(n) {
            return Err(CustodyError::DuplicateLine(n));
        }
    }
    if all
        && let Some(missing) = manifest
            .lines
            .iter()
            .find(|l| !seen.contains(&l.line_number))
    {
        return Err(CustodyError::MissingLine(missing.line_number));
    }
    Ok(seen)
}

/// Computes the EPA discrepancy verdict of each received line.
fn discrepancies(
    manifest: &pb::Manifest,
    received: &[pb::ReceivedLine],
) -> Result<Vec<LineDiscrepancy>, CustodyError> {
    let mut out = Vec::with_capacity(received.len());
    for r in received {
        let line = manifest
            .lines
            .iter()
            .find(|l| l.line_number == r.line_number)
            .ok_or(CustodyError::UnknownLine(r.line_number))?;
        let shipped = measured("quantity", line.quantity.as_ref(), true)?;
        let got = measured(
            &format!("received line {} quantity", r.line_number),
            r.quantity.as_ref(),
            false,
        )?;
        let containers = line.containers.clone().unwrap_or_default();
        let container = pb::ContainerType::try_from(containers.r#type).unwrap_or_default();
        let verdict = compare_line(
            r.line_number,
            container,
            &shipped,
            containers.count,
            &got,
            r.container_count,
            r.type_discrepancy,
        );
        if verdict.any() {
            out.push(verdict);
        }
    }
    Ok(out)
}

fn require_facility_signer(
    s: &ManifestState,
    event: &'static str,
    ctx: &EventContext<'_>,
) -> Result<(), CustodyError> {
    require_signers(
        event,
        ctx.signers,
        &[(&s.destination, "receiving facility")],
    )
}

fn wrong_state(s: &ManifestState, event: &'static str) -> CustodyError {
    CustodyError::WrongState {
        event,
        tracking: s.tracking.to_string(),
        status: s.status.to_string(),
    }
}

fn receive(
    s: &mut ManifestState,
    body: &pb::EventBody,
    r: &pb::Received,
    ctx: &EventContext<'_>,
) -> Result<(), CustodyError> {
    if s.status != Status::Delivered {
        return Err(wrong_state(s, "Received"));
    }
    require_facility_signer(s, "Received", ctx)?;
    check_line_set(&s.manifest, r.lines.iter().map(|l| l.line_number), true)?;
    s.discrepancies = discrepancies(&s.manifest, &r.lines)?;
    check_evidence_list("evidence", &r.evidence)?;
    s.received = r.lines.clone();
    s.received_at = Some(body.occurred_at);
    s.status = Status::Received;
    Ok(())
}

fn reject(
    s: &mut ManifestState,
    body: &pb::EventBody,
    r: &pb::Rejected,
    ctx: &EventContext<'_>,
) -> Result<(), CustodyError> {
    let scope = pb::RejectionScope::try_from(r.scope).unwrap_or_default();
    let destination = pb::RejectionDestination::try_from(r.destination).unwrap_or_default();
    if scope == pb::RejectionScope::Unspecified {
        return Err(field_err("scope", "is required (FULL or PARTIAL)"));
    }
    if destination == pb::RejectionDestination::Unspecified {
        return Err(field_err(
            "destination",
            "is required (ALTERNATE_FACILITY or GENERATOR)",
        ));
    }
    if r.reason.trim().is_empty() {
        return Err(field_err("reason", "a rejection needs a reason"));
    }
    for (i, t) in r.follow_up_manifests.iter().enumerate() {
        Tracking::from_pb(t)
            .map_err(|e| field_err(format!("follow_up_manifests[{i}]"), e.to_string()))?;
    }
    check_evidence_list("evidence", &r.evidence)?;
    let generator = id(&s.manifest.generator).to_owned();
    if r.transporter_on_site {
        let last = (s.manifest.transporters.len() as u32).saturating_sub(1);
        if s.status != (Status::InTransit { leg: last }) {
            return Err(wrong_state(s, "Rejected (transporter on site)"));
        }
        if scope != pb::RejectionScope::Full {
            return Err(CustodyError::OnSiteRejectionMustBeFull);
        }
        let holder = transporter(&s.manifest, last).to_owned();
        let facility = s.destination.clone();
        if facility == generator {
            return Err(wrong_state(
                s,
                "Rejected (the load is already returning to the generator)",
            ));
        }
        require_signers(
            "Rejected",
            ctx.signers,
            &[
                (&facility, "rejecting facility"),
                (&holder, "transporter on site"),
            ],
        )?;
        let new_destination = match destination {
            pb::RejectionDestination::AlternateFacility => {
                let alternate = id(&s.manifest.alternate_facility).to_owned();
                if alternate.is_empty() {
                    return Err(CustodyError::NoAlternateFacility(s.tracking.to_string()));
                }
                if alternate == facility {
                    return Err(CustodyError::AlreadyRedirected(alternate));
                }
                alternate
            }
            _ => generator,
        };
        s.destination = new_destination;
    } else {
        if s.status != Status::Delivered {
            return Err(wrong_state(s, "Rejected"));
        }
        require_facility_signer(s, "Rejected", ctx)?;
        if r.follow_up_manifests.is_empty() {
            return Err(CustodyError::MissingFollowUp);
        }
        match scope {
            pb::RejectionScope::Full => {
                check_line_set(&s.manifest, r.lines.iter().map(|l| l.line_number), false)?;
                if !r.accepted.is_empty() {
                    return Err(field_err("accepted", "a FULL rejection accepts nothing"));
                }
                s.status = Status::Rejected;
            }
            _ => {
                if r.lines.is_empty() {
                    return Err(field_err(
                        "lines",
                        "a PARTIAL rejection must list the rejected lines",
                    ));
                }
                let rejected =
                    check_line_set(&s.manifest, r.lines.iter().map(|l| l.line_number), false)?;
                for (i, l) in r.lines.iter().enumerate() {
                    measured(&format!("lines[{i}].quantity"), l.quantity.as_ref(), true)?;
                }
                let accepted =
                    check_line_set(&s.manifest, r.accepted.iter().map(|l| l.line_number), false)?;
                if let Some(missing) = s.manifest.lines.iter().find(|l| {
                    !rejected.contains(&l.line_number) && !accepted.contains(&l.line_number)
                }) {
                    return Err(CustodyError::MissingLine(missing.line_number));
                }
                if accepted.is_empty() {
                    return Err(field_err(
                        "accepted",
                        "a PARTIAL rejection must accept something; use FULL otherwise",
                    ));
                }
                // Discrepancies are judged only on lines kept whole: a line split between
                // "accepted" and "rejected" differs from the manifest by design.
                let whole: Vec<pb::ReceivedLine> = r
                    .accepted
                    .iter()
                    .filter(|l| !rejected.contains(&l.line_number))
                    .cloned()
                    .collect();
                s.discrepancies = discrepancies(&s.manifest, &whole)?;
                for (i, l) in r.accepted.iter().enumerate() {
                    measured(
                        &format!("accepted[{i}].quantity"),
                        l.quantity.as_ref(),
                        true,
                    )?;
                }
                s.received = r.accepted.clone();
                s.status = Status::Received;
            }
        }
        s.received_at = Some(body.occurred_at);
    }
    s.rejection = Some(RejectionRecord {
        rejected: r.clone(),
        event_hash: ctx.event_hash,
    });
    Ok(())
}

fn treat(
    s: &mut ManifestState,
    body: &pb::EventBody,
    t: &pb::Treated,
    ctx: &EventContext<'_>,
) -> Result<(), CustodyError> {
    if s.status != Status::Received {
        return Err(wrong_state(s, "Treated"));
    }
    require_facility_signer(s, "Treated", ctx)?;
    let mut seen = BTreeSet::new();
    for (i, line) in t.lines.iter().enumerate() {
        if !s.received.iter().any(|r| r.line_number == line.line_number) {
            return Err(CustodyError::UnknownLine(line.line_number));
        }
        if !seen.insert(line.line_number) {
            return Err(CustodyError::DuplicateLine(line.line_number));
        }
        let method = line
            .method
            .as_ref()
            .ok_or_else(|| field_err(format!("lines[{i}].method"), "is required"))?;
        check_method(method).map_err(|p| field_err(format!("lines[{i}].method"), p))?;
        measured(
            &format!("lines[{i}].quantity"),
            line.quantity.as_ref(),
            true,
        )?;
    }
    if let Some(missing) = s.received.iter().find(|r| !seen.contains(&r.line_number)) {
        return Err(CustodyError::MissingLine(missing.line_number));
    }
    let certificate = t.certificate.as_ref().ok_or_else(|| {
        field_err(
            "certificate",
            "a treatment certificate (by hash) is required",
        )
    })?;
    check_evidence(certificate).map_err(|p| field_err("certificate", p))?;
    if t.completed_at <= 0 || t.completed_at > body.occurred_at {
        return Err(field_err(
            "completed_at",
            "must be a positive time not after occurred_at",
        ));
    }
    s.treated = t.lines.clone();
    s.treated_at = Some(body.occurred_at);
    s.status = Status::Treated;
    Ok(())
}

fn cancel(s: &mut ManifestState, ctx: &EventContext<'_>) -> Result<(), CustodyError> {
    if s.status != Status::Created {
        return Err(CustodyError::CancelAfterPickup(s.tracking.to_string()));
    }
    let generator = id(&s.manifest.generator).to_owned();
    require_signers("Cancelled", ctx.signers, &[(&generator, "generator")])?;
    s.status = Status::Cancelled;
    Ok(())
}

fn change_name(change: &pb::correction_change::Change) -> &'static str {
    use pb::correction_change::Change;
    match change {
        Change::WasteLine(_) => "waste_line",
        Change::ReceivedLine(_) => "received_line",
        Change::HandlingInstructions(_) => "handling_instructions",
        Change::EmergencyContact(_) => "emergency_contact",
        Change::EmergencyResponseInfo(_) => "emergency_response_info",
        Change::TreatedLine(_) => "treated_line",
    }
}

fn propose_correction(
    s: &mut ManifestState,
    c: &pb::Correction,
    ctx: &EventContext<'_>,
) -> Result<(), CustodyError> {
    use pb::correction_change::Change;
    if s.status == Status::Cancelled {
        return Err(CustodyError::CorrectionOnCancelled(s.tracking.to_string()));
    }
    if let Some(p) = &s.pending_correction {
        return Err(CustodyError::CorrectionPending(p.event_hash.short()));
    }
    let proposer = single_signer("Correction", ctx)?.to_owned();
    if !s.named_parties().contains(&proposer) {
        return Err(CustodyError::NotAManifestParty(proposer));
    }
    let amended = s
        .events
        .iter()
        .find(|e| e.hash.as_bytes().as_slice() == c.amends_event.as_slice())
        .ok_or_else(|| CustodyError::AmendedEventNotFound(hex_short(&c.amends_event)))?;
    if c.changes.is_empty() {
        return Err(CustodyError::EmptyCorrection);
    }
    if c.reason.trim().is_empty() {
        return Err(field_err("reason", "a correction needs a reason"));
    }
    for (i, change) in c.changes.iter().enumerate() {
        let change = change
            .change
            .as_ref()
            .ok_or_else(|| field_err(format!("changes[{i}]"), "is empty"))?;
        let fits = match change {
            Change::WasteLine(_)
            | Change::HandlingInstructions(_)
            | Change::EmergencyContact(_)
            | Change::EmergencyResponseInfo(_) => amended.kind == "ManifestCreated",
            Change::ReceivedLine(_) => matches!(amended.kind, "Received" | "Rejected"),
            Change::TreatedLine(_) => amended.kind == "Treated",
        };
        if !fits {
            return Err(CustodyError::ChangeDoesNotFit {
                change: change_name(change),
                amended: amended.kind,
            });
        }
        // Validate by applying to a scratch copy: a correction that could not be applied later
        // must be refused now, not when the last approval arrives.
        apply_change(&mut s.clone(), change, &format!("changes[{i}]"))?;
    }
    let mut awaiting = s.signers.clone();
    awaiting.remove(&proposer);
    let pending = PendingCorrection {
        event_hash: ctx.event_hash,
        proposer,
        correction: c.clone(),
        awaiting,
        approved: BTreeSet::new(),
    };
    if pending.awaiting.is_empty() {
        apply_correction(s, &pending.correction)?;
    } else {
        s.pending_correction = Some(pending);
    }
    Ok(())
}

fn decide_correction(
    s: &mut ManifestState,
    d: &pb::CorrectionDecision,
    ctx: &EventContext<'_>,
) -> Result<(), CustodyError> {
    let decider = single_signer("CorrectionDecision", ctx)?.to_owned();
    let Some(mut pending) = s.pending_correction.clone() else {
        return Err(CustodyError::NoSuchPendingCorrection(hex_short(
            &d.correction_event,
        )));
    };
    if pending.event_hash.as_bytes().as_slice() != d.correction_event.as_slice() {
        return Err(CustodyError::NoSuchPendingCorrection(hex_short(
            &d.correction_event,
        )));
    }
    if !pending.awaiting.remove(&decider) {
        return Err(CustodyError::NotAnApprover(decider));
    }
    if !d.approve {
        s.pending_correction = None;
        s.corrections_refused += 1;
        return Ok(());
    }
    pending.approved.insert(decider);
    if pending.awaiting.is_empty() {
        s.pending_correction = None;
        apply_correction(s, &pending.correction)?;
    } else {
        s.pending_correction = Some(pending);
    }
    Ok(())
}

fn apply_correction(s: &mut ManifestState, c: &pb::Correction) -> Result<(), CustodyError> {
    for (i, change) in c.changes.iter().enumerate() {
        if let Some(change) = &change.change {
            apply_change(s, change, &format!("changes[{i}]"))?;
        }
    }
    if !s.received.is_empty() {
        let whole: Vec<pb::ReceivedLine> = match &s.rejection {
            Some(r) => s
                .received
                .iter()
                .filter(|l| {
                    !r.rejected
                        .lines
                        .iter()
                        .any(|x| x.line_number == l.line_number)
                })
                .cloned()
                .collect(),
            None => s.received.clone(),
        };
        s.discrepancies = discrepancies(&s.manifest, &whole)?;
    }
    s.corrections_applied += 1;
    Ok(())
}

fn apply_change(
    s: &mut ManifestState,
    change: &pb::correction_change::Change,
    field: &str,
) -> Result<(), CustodyError> {
    use pb::correction_change::Change;
    match change {
        Change::WasteLine(line) => {
            if let Some(problem) = validate_waste_line(field, line).into_iter().next() {
                return Err(CustodyError::InvalidField(problem));
            }
            let slot = s
                .manifest
                .lines
                .iter_mut()
                .find(|l| l.line_number == line.line_number)
                .ok_or(CustodyError::UnknownLine(line.line_number))?;
            *slot = line.clone();
        }
        Change::ReceivedLine(line) => {
            measured(&format!("{field}.quantity"), line.quantity.as_ref(), false)?;
            let slot = s
                .received
                .iter_mut()
                .find(|l| l.line_number == line.line_number)
                .ok_or(CustodyError::UnknownLine(line.line_number))?;
            *slot = line.clone();
        }
        Change::TreatedLine(line) => {
            let method = line
                .method
                .as_ref()
                .ok_or_else(|| field_err(format!("{field}.method"), "is required"))?;
            check_method(method).map_err(|p| field_err(format!("{field}.method"), p))?;
            measured(&format!("{field}.quantity"), line.quantity.as_ref(), true)?;
            let slot = s
                .treated
                .iter_mut()
                .find(|l| l.line_number == line.line_number)
                .ok_or(CustodyError::UnknownLine(line.line_number))?;
            *slot = line.clone();
        }
        Change::HandlingInstructions(text) => s.manifest.handling_instructions = text.clone(),
        Change::EmergencyContact(contact) => {
            if contact.phone.trim().is_empty() {
                return Err(field_err(
                    format!("{field}.phone"),
                    "a 24-hour emergency phone is required",
                ));
            }
            s.manifest.emergency_contact = Some(contact.clone());
        }
        Change::EmergencyResponseInfo(text) => s.manifest.emergency_response_info = text.clone(),
    }
    Ok(())
}

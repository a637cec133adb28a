//! Custody proofs: building the bundle a regulator downloads, and verifying it offline.
//!
//! Verification trusts only the genesis the verifier holds. It checks, in order: the bundle
//! version and ledger id; the checkpoint's cosignatures against the genesis trust policy; that
//! every entry is a leaf of the checkpoint's tree (Merkle inclusion); then it *replays* every
//! entry, in ledger order, through the same [`evaluate`] function the nodes run — which checks
//! each signature with `verify_strict` against keys active at that position, the per-subject hash
//! chain, and every custody and registry rule; finally, that each chain's head is the one
//! committed in the checkpoint's completeness map, so no event is missing. There is one proof
//! path and every step of it is checked.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

use prost::Message;

use crate::checkpoint::{CheckpointError, PolicyReport, SignedCheckpoint};
use crate::custody::{ManifestState, kind_name, named_parties};
use crate::entry::{EntryError, LedgerEntry, leaf_hash};
use crate::envelope::Subject;
use crate::genesis::Genesis;
use crate::hash::Digest;
use crate::ledger::{LedgerView, Rejection, SubjectIndex, SubjectState, evaluate};
use crate::map::{MapError, MapProof, verify_membership};
use crate::merkle::{Blake3Hasher, MerkleError, verify_inclusion};
use crate::pb::{self, event_body::Kind};
use crate::registry::Signer;
use crate::tracking::{Tracking, TrackingError};

/// Bundle format version described by `docs/custody-proof.md`.
pub const PROOF_VERSION: u32 = 1;
/// Largest bundle a verifier accepts (bytes).
pub const MAX_PROOF_BYTES: usize = 16 * 1024 * 1024;

/// What a ledger must provide to build custody proofs.
pub trait ProofSource {
    /// The ledger id.
    fn ledger_id(&self) -> Digest;
    /// Leaf bytes of the entry at `index`.
    fn entry(&self, index: u64) -> Option<Vec<u8>>;
    /// Inclusion path of `index` in the tree of `size` leaves.
    fn inclusion_proof(&self, index: u64, size: u64) -> Option<Vec<Digest>>;
    /// Completeness-map membership siblings of `key` as of tree size `size`.
    fn map_proof(&self, key: &Digest, size: u64) -> Option<Vec<Digest>>;
    /// Ascending ledger indexes of every event of the subject's chain.
    fn subject_indexes(&self, subject: &Subject) -> Vec<u64>;
}

/// Why a proof could not be built.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ProofBuildError {
    /// No event of the manifest is covered by the checkpoint.
    #[error("manifest {0} has no events in the ledger as of the checkpoint")]
    NotFound(String),
    /// The ledger lacks data it should have.
    #[error("ledger data missing for {0}; the node's store is incomplete")]
    Missing(String),
    /// The first event is not a ManifestCreated that can be read.
    #[error("the first event of manifest {0} is not a readable ManifestCreated")]
    NoCreation(String),
}

/// Why a custody proof failed verification.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ProofError {
    /// Not a CustodyProof message.
    #[error("not a custody proof bundle: {0}")]
    Decode(String),
    /// Over [`MAX_PROOF_BYTES`].
    #[error("bundle is {0} bytes; the limit is 16 MiB")]
    TooLarge(usize),
    /// Unknown version.
    #[error("bundle version {0} is not supported (this verifier reads version 1)")]
    Version(u32),
    /// Proof for another network.
    #[error("bundle is for ledger {found}, but the genesis given is ledger {expected}")]
    LedgerMismatch {
        /// Ledger id of the genesis.
        expected: String,
        /// Ledger id in the bundle.
        found: String,
    },
    /// Checkpoint unreadable, badly signed or short of the trust policy.
    #[error("checkpoint: {0}")]
    Checkpoint(#[from] CheckpointError),
    /// Bad tracking number.
    #[error("tracking number: {0}")]
    Tracking(#[from] TrackingError),
    /// The bundle holds no events.
    #[error("the bundle contains no events for the manifest")]
    NoEvents,
    /// Leaf bytes unreadable.
    #[error("entry {position} of {section}: {error}")]
    Entry {
        /// Which part of the bundle.
        section: String,
        /// Position within it.
        position: usize,
        /// What is wrong.
        error: EntryError,
    },
    /// An entry beyond the checkpoint.
    #[error("entry at ledger index {index} is beyond the checkpoint size {size}")]
    BeyondCheckpoint {
        /// Entry index.
        index: u64,
        /// Checkpoint size.
        size: u64,
    },
    /// The same ledger index twice.
    #[error("ledger index {0} appears twice in the bundle")]
    DuplicateEntry(u64),
    /// Entries not in ledger order within a chain.
    #[error("entries of {0} are not in ledger order")]
    OutOfOrder(String),
    /// An inclusion path is wrong.
    #[error("entry at ledger index {index} is not in the checkpoint's tree: {error}")]
    Inclusion {
        /// Entry index.
        index: u64,
        /// What failed.
        error: MerkleError,
    },
    /// An inclusion path element is not 32 bytes.
    #[error("entry at ledger index {0} has an inclusion path element that is not 32 bytes")]
    PathElement(u64),
    /// Replay refused an entry: the ledger accepted something the rules forbid, or the bundle
    /// lacks an earlier event.
    #[error("entry at ledger index {index} fails the ledger rules: {rejection}")]
    Rejected {
        /// Entry index.
        index: u64,
        /// The rule it breaks.
        rejection: Box<Rejection>,
    },
    /// An entry filed under the wrong subject.
    #[error("entry at ledger index {index} belongs to {found}, not {expected}")]
    WrongSubject {
        /// Entry index.
        index: u64,
        /// Section's subject.
        expected: String,
        /// Entry's subject.
        found: String,
    },
    /// A chain head not committed in the completeness map.
    #[error(
        "{subject} is incomplete or stale: its head is not the one committed in the checkpoint ({error})"
    )]
    Incomplete {
        /// The subject.
        subject: String,
        /// What failed.
        error: MapError,
    },
    /// A map proof sibling that is not 32 bytes, or a missing proof.
    #[error("completeness proof for {0} is malformed")]
    MapProofMalformed(String),
    /// A signer's or named party's registry history is missing from the bundle.
    #[error("the bundle lacks the registry history of party {0}")]
    MissingParty(String),
    /// A party history given twice.
    #[error("party {0} appears twice in the bundle")]
    DuplicateParty(String),
}

impl ProofError {
    /// A stable, machine-readable code for the failure (used by the CLI and the test vectors).
    pub fn code(&self) -> &'static str {
        match self {
            ProofError::Decode(_) => "proof.decode",
            ProofError::TooLarge(_) => "proof.too_large",
            ProofError::Version(_) => "proof.version",
            ProofError::LedgerMismatch { .. } => "proof.ledger_mismatch",
            ProofError::Checkpoint(_) => "proof.checkpoint",
            ProofError::Tracking(_) => "proof.tracking_number",
            ProofError::NoEvents => "proof.no_events",
            ProofError::Entry { .. } => "proof.entry",
            ProofError::BeyondCheckpoint { .. } => "proof.beyond_checkpoint",
            ProofError::DuplicateEntry(_) => "proof.duplicate_entry",
            ProofError::OutOfOrder(_) => "proof.out_of_order",
            ProofError::Inclusion { .. } => "proof.inclusion",
            ProofError::PathElement(_) => "proof.path_element",
            ProofError::Rejected { .. } => "proof.rule_violation",
            ProofError::WrongSubject { .. } => "proof.wrong_subject",
            ProofError::Incomplete { .. } => "proof.incomplete",
            ProofError::MapProofMalformed(_) => "proof.map_proof_malformed",
            ProofError::MissingParty(_) => "proof.missing_party",
            ProofError::DuplicateParty(_) => "proof.duplicate_party",
        }
    }
}

/// One event of a verified custody timeline.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TimelineEvent {
    /// Ledger index.
    pub index: u64,
    /// Event hash.
    pub event_hash: Digest,
    /// Event kind.
    pub kind: &'static str,
    /// When it happened, as signed.
    pub occurred_at: i64,
    /// Ledger time of the entry.
    pub sequenced_at: i64,
    /// Registry ids of the signing parties.
    pub signers: Vec<String>,
    /// A one-line description.
    pub summary: String,
}

/// What a successful verification establishes.
#[derive(Clone, Debug)]
pub struct VerifiedCustody {
    /// The manifest.
    pub tracking: Tracking,
    /// The checkpoint the proof is anchored to.
    pub checkpoint: crate::checkpoint::Checkpoint,
    /// Which witnesses cosigned it.
    pub cosigners: PolicyReport,
    /// Every event of the manifest, in order.
    pub timeline: Vec<TimelineEvent>,
    /// The manifest's state as of the checkpoint.
    pub state: ManifestState,
    /// Legal names of the parties involved, by registry id.
    pub party_names: BTreeMap<String, String>,
}

fn proven(
    src: &dyn ProofSource,
    index: u64,
    size: u64,
) -> Result<pb::ProvenEntry, ProofBuildError> {
    let entry = src
        .entry(index)
        .ok_or_else(|| ProofBuildError::Missing(format!("entry {index}")))?;
    let path = src
        .inclusion_proof(index, size)
        .ok_or_else(|| ProofBuildError::Missing(format!("inclusion proof {index}@{size}")))?;
    Ok(pb::ProvenEntry {
        entry,
        inclusion_path: path.into_iter().map(|d| d.0.to_vec()).collect(),
    })
}

fn map_proof(
    src: &dyn ProofSource,
    key: &Digest,
    size: u64,
    what: &str,
) -> Result<pb::MapProof, ProofBuildError> {
    let siblings = src
        .map_proof(key, size)
        .ok_or_else(|| ProofBuildError::Missing(format!("map proof for {what}")))?;
    Ok(pb::MapProof {
        siblings: siblings.into_iter().map(|d| d.0.to_vec()).collect(),
    })
}

/// Builds the custody proof of `tracking` against a cosigned checkpoint of `src`.
pub fn build_custody_proof(
    src: &dyn ProofSource,
    tracking: &Tracking,
    note: &SignedCheckpoint,
) -> Result<pb::CustodyProof, ProofBuildError> {
    let size = note.checkpoint.size;
    let subject = Subject::Manifest(tracking.clone());
    let indexes: Vec<u64> = src
        .subject_indexes(&subject)
        .into_iter()
        .filter(|i| *i < size)
        .collect();
    let first = *indexes
        .first()
        .ok_or_else(|| ProofBuildError::NotFound(tracking.to_string()))?;
    let events = indexes
        .iter()
        .map(|i| proven(src, *i, size))
        .collect::<Result<Vec<_>, _>>()?;
    let created = src
        .entry(first)
        .and_then(|bytes| LedgerEntry::decode(&bytes).ok())
        .and_then(|e| pb::EventBody::decode(e.body.as_slice()).ok())
        .and_then(|b| match b.kind {
            Some(Kind::ManifestCreated(c)) => c.manifest,
            _ => None,
        })
        .ok_or_else(|| ProofBuildError::NoCreation(tracking.to_string()))?;
    let mut parties = Vec::new();
    for id in named_parties(&created) {
        let party_subject = Subject::Party(id.clone());
        let party_indexes: Vec<u64> = src
            .subject_indexes(&party_subject)
            .into_iter()
            .filter(|i| *i < size)
            .collect();
        parties.push(pb::PartyHistory {
            entries: party_indexes
                .iter()
                .map(|i| proven(src, *i, size))
                .collect::<Result<Vec<_>, _>>()?,
            head: Some(map_proof(src, &party_subject.map_key(), size, &id)?),
            registry_id: id,
        });
    }
    Ok(pb::CustodyProof {
        version: PROOF_VERSION,
        ledger_id: src.ledger_id().0.to_vec(),
        tracking_number: Some(tracking.to_pb()),
        checkpoint: note.to_note(),
        events,
        head: Some(map_proof(
            src,
            &tracking.map_key(),
            size,
            &tracking.to_string(),
        )?),
        parties,
    })
}

/// Decodes and verifies a serialized bundle.
pub fn verify_custody_proof_bytes(
    bytes: &[u8],
    genesis: &Genesis,
) -> Result<VerifiedCustody, ProofError> {
    if bytes.len() > MAX_PROOF_BYTES {
        return Err(ProofError::TooLarge(bytes.len()));
    }
    let bundle = pb::CustodyProof::decode(bytes).map_err(|e| ProofError::Decode(e.to_string()))?;
    verify_custody_proof(&bundle, genesis)
}

struct Pending {
    subject: Subject,
    entry: LedgerEntry,
}

fn digest_list(raw: &[Vec<u8>], index: u64) -> Result<Vec<Digest>, ProofError> {
    raw.iter()
        .map(|b| Digest::from_slice(b).ok_or(ProofError::PathElement(index)))
        .collect()
}

/// Verifies a custody proof against the genesis the verifier trusts.
pub fn verify_custody_proof(
    bundle: &pb::CustodyProof,
    genesis: &Genesis,
) -> Result<VerifiedCustody, ProofError> {
    if bundle.version != PROOF_VERSION {
        return Err(ProofError::Version(bundle.version));
    }
    if bundle.ledger_id.as_slice() != genesis.ledger_id.as_bytes() {
        return Err(ProofError::LedgerMismatch {
            expected: genesis.ledger_id.to_hex(),
            found: hex::encode(&bundle.ledger_id),
        });
    }
    let note = SignedCheckpoint::parse_note(&bundle.checkpoint)?;
    let cosigners = genesis
        .witnesses
        .verify(&genesis.ledger_id, &note, genesis.ledger_name())?;
    let checkpoint = note.checkpoint;
    let tracking = Tracking::from_pb(&bundle.tracking_number.clone().unwrap_or_default())?;
    if bundle.events.is_empty() {
        return Err(ProofError::NoEvents);
    }

    // 1. Every entry must be a leaf of the checkpoint's tree, at the index it states.
    let mut all: BTreeMap<u64, Pending> = BTreeMap::new();
    let mut take = |section: &Subject, entries: &[pb::ProvenEntry]| -> Result<(), ProofError> {
        let mut last: Option<u64> = None;
        for (position, proven) in entries.iter().enumerate() {
            let entry = LedgerEntry::decode(&proven.entry).map_err(|error| ProofError::Entry {
                section: section.to_string(),
                position,
                error,
            })?;
            let index = entry.index;
            if index >= checkpoint.size {
                return Err(ProofError::BeyondCheckpoint {
                    index,
                    size: checkpoint.size,
                });
            }
            if last.is_some_and(|l| l >= index) {
                return Err(ProofError::OutOfOrder(section.to_string()));
            }
            last = Some(index);
            let path = digest_list(&proven.inclusion_path, index)?;
            verify_inclusion::<Blake3Hasher>(
                &leaf_hash(&proven.entry),
                index,
                checkpoint.size,
                &path,
                &checkpoint.root,
            )
            .map_err(|error| ProofError::Inclusion { index, error })?;
            if all
                .insert(
                    index,
                    Pending {
                        subject: section.clone(),
                        entry,
                    },
                )
                .is_some()
            {
                return Err(ProofError::DuplicateEntry(index));
            }
        }
        Ok(())
    };
    let manifest_subject = Subject::Manifest(tracking.clone());
    take(&manifest_subject, &bundle.events)?;
    let mut party_ids = BTreeSet::new();
    for history in &bundle.parties {
        if !party_ids.insert(history.registry_id.clone()) {
            return Err(ProofError::DuplicateParty(history.registry_id.clone()));
        }
        take(
            &Subject::Party(history.registry_id.clone()),
            &history.entries,
        )?;
    }

    // 2. Replay every entry in ledger order through the nodes' own decision function.
    let mut view = SubjectIndex::default();
    let mut timeline = Vec::new();
    for (index, pending) in &all {
        view.size = *index;
        let signed = pending.entry.signed_event();
        // A named party missing from the bundle shows up here as an unknown party or key.
        let decision =
            evaluate(genesis, &view, &signed, pending.entry.sequenced_at).map_err(|rejection| {
                ProofError::Rejected {
                    index: *index,
                    rejection: Box::new(rejection),
                }
            })?;
        if decision.event.subject != pending.subject {
            return Err(ProofError::WrongSubject {
                index: *index,
                expected: pending.subject.to_string(),
                found: decision.event.subject.to_string(),
            });
        }
        if let SubjectState::Manifest(m) = &decision.state {
            let signers = decision
                .signers
                .iter()
                .filter_map(|s| match s {
                    Signer::Party { registry_id, .. } => Some(registry_id.clone()),
                    Signer::Authority(_) => None,
                })
                .collect();
            timeline.push(TimelineEvent {
                index: *index,
                event_hash: decision.event.hash,
                kind: decision.event.kind().map_or("?", kind_name),
                occurred_at: decision.event.body.occurred_at,
                sequenced_at: pending.entry.sequenced_at,
                signers,
                summary: summarize(&decision.event.body, m),
            });
        }
        view.record(&decision, *index);
    }
    let state = view.manifest(&tracking).ok_or(ProofError::NoEvents)?;

    // 3. Completeness: each chain's head is the one committed in the checkpoint's map.
    let check_head = |subject: &Subject,
                      head: &Digest,
                      proof: Option<&pb::MapProof>|
     -> Result<(), ProofError> {
        let proof = proof.ok_or_else(|| ProofError::MapProofMalformed(subject.to_string()))?;
        let siblings = proof
            .siblings
            .iter()
            .map(|s| Digest::from_slice(s))
            .collect::<Option<Vec<_>>>()
            .ok_or_else(|| ProofError::MapProofMalformed(subject.to_string()))?;
        verify_membership(
            &checkpoint.map_root,
            &subject.map_key(),
            head,
            &MapProof { siblings },
        )
        .map_err(|error| ProofError::Incomplete {
            subject: subject.to_string(),
            error,
        })
    };
    check_head(&manifest_subject, &state.head, bundle.head.as_ref())?;
    for history in &bundle.parties {
        let record = view
            .party_ref(&history.registry_id)
            .ok_or_else(|| ProofError::MissingParty(history.registry_id.clone()))?;
        check_head(
            &Subject::Party(history.registry_id.clone()),
            &record.head,
            history.head.as_ref(),
        )?;
    }
    // Every party the manifest names must be present, so the proof shows their whole history.
    for id in state.named_parties() {
        if !party_ids.contains(&id) {
            return Err(ProofError::MissingParty(id));
        }
    }
    let party_names = party_ids
        .iter()
        .filter_map(|id| {
            view.party_ref(id)
                .map(|p| (id.clone(), p.party.legal_name.clone()))
        })
        .collect();
    Ok(VerifiedCustody {
        tracking,
        checkpoint,
        cosigners,
        timeline,
        state: Arc::unwrap_or_clone(state),
        party_names,
    })
}

fn summarize(body: &pb::EventBody, after: &ManifestState) -> String {
    match body.kind.as_ref() {
        Some(Kind::ManifestCreated(c)) => {
            let lines = c.manifest.as_ref().map_or(0, |m| m.lines.len());
            format!(
                "created with {lines} waste line(s), destination {}",
                after.destination
            )
        }
        Some(Kind::CustodyHandoff(h)) => format!("custody {} -> {}", h.from_party, h.to_party),
        Some(Kind::TransitCheckpoint(c)) => format!("in transit: {}", c.description),
        Some(Kind::Received(_)) => {
            let significant = after.discrepancies.iter().filter(|d| d.significant).count();
            if significant == 0 {
                "received, no significant discrepancy".to_owned()
            } else {
                format!("received with {significant} significant discrepancy(ies)")
            }
        }
        Some(Kind::Rejected(r)) => format!(
            "rejected ({}): {}",
            if r.scope == pb::RejectionScope::Partial as i32 {
                "partial"
            } else {
                "full"
            },
            r.reason
        ),
        Some(Kind::Treated(t)) => format!("treated, {} line(s) certified", t.lines.len()),
        Some(Kind::Correction(c)) => format!("correction proposed: {}", c.reason),
        Some(Kind::CorrectionDecision(d)) => {
            if d.approve {
                "correction approved".to_owned()
            } else {
                "correction refused".to_owned()
            }
        }
        Some(Kind::Cancelled(c)) => format!("cancelled: {}", c.reason),
        _ => String::new(),
    }
}

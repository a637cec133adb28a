//! The ledger's decision function: one signed event in, an accepted state change or a typed
//! rejection out.
//!
//! [`evaluate`] is what every node's state machine runs on every committed entry, and what the
//! leader runs before proposing to fail fast. It reads the ledger through [`LedgerView`] and
//! writes nothing: the caller persists the returned [`Decision`] (new subject state, leaf,
//! tree and map updates) in its own storage, atomically with "last applied".

use std::collections::{BTreeSet, HashMap, HashSet};
use std::ops::Range;
use std::sync::Arc;

use crate::custody::{
    CustodyError, EventContext, ManifestState, PartyLookup, apply_manifest_event,
};
use crate::envelope::{
    DecodedEvent, EnvelopeError, KeyDirectory, Subject, decode_event, verify_signatures,
};
use crate::genesis::Genesis;
use crate::hash::Digest;
use crate::pb;
use crate::registry::{
    KeyRecord, PartyRecord, RegistryContext, RegistryError, Signer, apply_registry_event,
};
use crate::tracking::Tracking;

/// Read access to the ledger state at the position where the next entry goes.
pub trait LedgerView {
    /// Number of entries so far: the index the next entry gets.
    fn size(&self) -> u64;
    /// The manifest's folded state, shared: a state is a few KB (the manifest's lines and
    /// legs), every event on a manifest reads it at least once per node, and a view that
    /// keeps states in memory can hand out its copy without cloning it.
    fn manifest(&self, tracking: &Tracking) -> Option<Arc<ManifestState>>;
    /// A party's record, shared for the same reason as [`LedgerView::manifest`]'s state:
    /// every signature looks its key up in one.
    fn party_record(&self, registry_id: &str) -> Option<Arc<PartyRecord>>;
    /// The registry id of the party that registered this key (ever).
    fn key_owner(&self, key_id: &Digest) -> Option<String>;
    /// The index of an accepted event with this hash, if any (duplicate detection). The hash
    /// covers the event's body, which names `subject`, so a view may search that subject's
    /// events alone: a store need not keep an index of every event hash, whose random keys
    /// make each insert and lookup slower as history grows.
    fn event_index(&self, subject: &Subject, event_hash: &Digest) -> Option<u64>;

    /// See [`KeyDirectory::verified_before`]; default: nothing remembered.
    fn verified_before(&self, check: &Digest) -> bool {
        let _ = check;
        false
    }

    /// See [`KeyDirectory::record_verified`].
    fn record_verified(&self, check: &Digest) {
        let _ = check;
    }
}

/// The new state of the event's subject.
#[derive(Clone, Debug, PartialEq)]
pub enum SubjectState {
    /// A manifest after the event (shared, so a store can keep the same state as its
    /// cache of the manifest without copying it).
    Manifest(Arc<ManifestState>),
    /// A party after the event.
    Party(Arc<PartyRecord>),
}

impl SubjectState {
    /// The subject's new chain head (the event hash).
    pub fn head(&self) -> Digest {
        match self {
            SubjectState::Manifest(m) => m.head,
            SubjectState::Party(p) => p.head,
        }
    }
}

/// An accepted event: what the caller must persist.
#[derive(Clone, Debug)]
pub struct Decision {
    /// The decoded event.
    pub event: DecodedEvent,
    /// Who signed.
    pub signers: Vec<Signer>,
    /// The subject's new state.
    pub state: SubjectState,
}

/// The folded state of every subject in memory, kept by applying accepted [`Decision`]s in
/// ledger order. The in-memory ledger and the offline verifier both use it, so "apply an
/// accepted event to the state" exists once.
#[derive(Clone, Debug, Default)]
pub struct SubjectIndex {
    /// Position of the next entry.
    pub size: u64,
    manifests: HashMap<Tracking, Arc<ManifestState>>,
    parties: HashMap<String, Arc<PartyRecord>>,
    key_owners: HashMap<Digest, String>,
    events: HashMap<Digest, u64>,
}

impl SubjectIndex {
    /// Records an accepted decision taken at ledger position `index`.
    pub fn record(&mut self, decision: &Decision, index: u64) {
        match &decision.state {
            SubjectState::Manifest(m) => {
                self.manifests.insert(m.tracking.clone(), Arc::clone(m));
            }
            SubjectState::Party(p) => {
                for k in &p.keys {
                    self.key_owners
                        .entry(k.key_id)
                        .or_insert_with(|| p.party.registry_id.clone());
                }
                self.parties
                    .insert(p.party.registry_id.clone(), Arc::clone(p));
            }
        }
        self.events.insert(decision.event.hash, index);
        self.size = self.size.max(index + 1);
    }

    /// The folded state of a manifest (borrowed).
    pub fn manifest_ref(&self, tracking: &Tracking) -> Option<&ManifestState> {
        self.manifests.get(tracking).map(|m| &**m)
    }

    /// A party's record (borrowed).
    pub fn party_ref(&self, registry_id: &str) -> Option<&PartyRecord> {
        self.parties.get(registry_id).map(|p| &**p)
    }
}

impl LedgerView for SubjectIndex {
    fn size(&self) -> u64 {
        self.size
    }

    fn manifest(&self, tracking: &Tracking) -> Option<Arc<ManifestState>> {
        self.manifests.get(tracking).cloned()
    }

    fn party_record(&self, registry_id: &str) -> Option<Arc<PartyRecord>> {
        self.parties.get(registry_id).cloned()
    }

    fn key_owner(&self, key_id: &Digest) -> Option<String> {
        self.key_owners.get(key_id).cloned()
    }

    fn event_index(&self, _subject: &Subject, event_hash: &Digest) -> Option<u64> {
        self.events.get(event_hash).copied()
    }
}

/// gRPC-facing class of a rejection; each maps to one status code.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum RejectionKind {
    /// INVALID_ARGUMENT: the request is malformed or a field is invalid.
    Malformed,
    /// UNAUTHENTICATED: a signature or key does not check out.
    Unauthenticated,
    /// PERMISSION_DENIED: the signer may not do this (wrong party or role).
    PermissionDenied,
    /// FAILED_PRECONDITION: a custody or registry rule forbids it in the current state.
    FailedPrecondition,
    /// ALREADY_EXISTS: the tracking number or party exists.
    AlreadyExists,
    /// RESOURCE_EXHAUSTED: too large.
    TooLarge,
    /// The identical event is already in the ledger (the API returns its original receipt).
    Duplicate,
}

impl RejectionKind {
    /// Every kind.
    pub const ALL: [RejectionKind; 7] = [
        RejectionKind::Malformed,
        RejectionKind::Unauthenticated,
        RejectionKind::PermissionDenied,
        RejectionKind::FailedPrecondition,
        RejectionKind::AlreadyExists,
        RejectionKind::TooLarge,
        RejectionKind::Duplicate,
    ];

    /// A stable name, used where a kind crosses a process boundary.
    pub fn name(self) -> &'static str {
        match self {
            RejectionKind::Malformed => "malformed",
            RejectionKind::Unauthenticated => "unauthenticated",
            RejectionKind::PermissionDenied => "permission_denied",
            RejectionKind::FailedPrecondition => "failed_precondition",
            RejectionKind::AlreadyExists => "already_exists",
            RejectionKind::TooLarge => "too_large",
            RejectionKind::Duplicate => "duplicate",
        }
    }

    /// The kind with this [`RejectionKind::name`].
    pub fn from_name(name: &str) -> Option<RejectionKind> {
        RejectionKind::ALL.into_iter().find(|k| k.name() == name)
    }
}

/// Why the ledger refused an event. Deterministic: every node reaches the same one.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Rejection {
    /// Envelope, size, decoding or signature problem.
    #[error(transparent)]
    Envelope(#[from] EnvelopeError),
    /// A custody rule.
    #[error(transparent)]
    Custody(#[from] CustodyError),
    /// A registry rule.
    #[error(transparent)]
    Registry(#[from] RegistryError),
    /// The identical event is already recorded at `index`.
    #[error("this event is already recorded at ledger index {index}")]
    AlreadyRecorded {
        /// Where it is.
        index: u64,
    },
}

impl Rejection {
    /// The class of the rejection (how the API reports it).
    pub fn kind(&self) -> RejectionKind {
        use RejectionKind as K;
        match self {
            Rejection::AlreadyRecorded { .. } => K::Duplicate,
            Rejection::Envelope(e) => match e {
                EnvelopeError::TooLarge { .. } | EnvelopeError::TooManySignatures(_) => K::TooLarge,
                EnvelopeError::UnknownKey(_)
                | EnvelopeError::KeyNotActive { .. }
                | EnvelopeError::BadSignature { .. }
                | EnvelopeError::NoSignatures => K::Unauthenticated,
                _ => K::Malformed,
            },
            Rejection::Custody(e) => match e {
                CustodyError::DuplicateTrackingNumber(_) => K::AlreadyExists,
                CustodyError::InvalidManifest(_)
                | CustodyError::InvalidField(_)
                | CustodyError::MissingTime
                | CustodyError::TrackingNumberMismatch { .. }
                | CustodyError::EmptyCorrection
                | CustodyError::UnknownLine(_)
                | CustodyError::DuplicateLine(_)
                | CustodyError::MissingLine(_) => K::Malformed,
                CustodyError::MissingSignature { .. }
                | CustodyError::UnexpectedSigner { .. }
                | CustodyError::AuthoritySigned
                | CustodyError::MissingRole { .. }
                | CustodyError::NoValidPermit { .. }
                | CustodyError::NotAManifestParty(_)
                | CustodyError::NotAnApprover(_)
                | CustodyError::SignerCount { .. } => K::PermissionDenied,
                _ => K::FailedPrecondition,
            },
            Rejection::Registry(e) => match e {
                RegistryError::DuplicateParty(_) | RegistryError::KeyInUse(_) => K::AlreadyExists,
                RegistryError::InvalidParty { .. }
                | RegistryError::BadKey(_)
                | RegistryError::SubjectMismatch { .. }
                | RegistryError::BadTime { .. }
                | RegistryError::WrongSubject { .. } => K::Malformed,
                RegistryError::AuthorityRequired { .. }
                | RegistryError::UnauthorisedSigner { .. } => K::PermissionDenied,
                _ => K::FailedPrecondition,
            },
        }
    }

    /// A stable, machine-readable reason code such as `custody.stale_chain`.
    pub fn code(&self) -> &'static str {
        match self {
            Rejection::AlreadyRecorded { .. } => "ledger.already_recorded",
            Rejection::Envelope(e) => match e {
                EnvelopeError::TooLarge { .. } => "envelope.too_large",
                EnvelopeError::Malformed(_) => "envelope.malformed",
                EnvelopeError::NoKind => "envelope.no_kind",
                EnvelopeError::NoSubject => "envelope.no_subject",
                EnvelopeError::BadSubject(_) => "envelope.bad_subject",
                EnvelopeError::SubjectKindMismatch { .. } => "envelope.subject_kind_mismatch",
                EnvelopeError::PrevHashLength(_) => "envelope.prev_hash_length",
                EnvelopeError::NoSignatures => "envelope.no_signatures",
                EnvelopeError::TooManySignatures(_) => "envelope.too_many_signatures",
                EnvelopeError::DuplicateSignature(_) => "envelope.duplicate_signature",
                EnvelopeError::DuplicateSigner(_) => "envelope.duplicate_signer",
                EnvelopeError::KeyIdLength(_) => "envelope.key_id_length",
                EnvelopeError::UnknownKey(_) => "signature.unknown_key",
                EnvelopeError::KeyNotActive { .. } => "signature.key_not_active",
                EnvelopeError::BadSignature { .. } => "signature.invalid",
            },
            Rejection::Custody(e) => match e {
                CustodyError::WrongSubject { .. } => "custody.wrong_subject",
                CustodyError::UnknownManifest(_) => "custody.unknown_manifest",
                CustodyError::DuplicateTrackingNumber(_) => "custody.duplicate_tracking_number",
                CustodyError::TrackingNumberMismatch { .. } => "custody.tracking_number_mismatch",
                CustodyError::InvalidManifest(_) => "custody.invalid_manifest",
                CustodyError::CreationNotFirst => "custody.creation_not_first",
                CustodyError::StaleChain { .. } => "custody.stale_chain",
                CustodyError::TimeBeforePrevious { .. } => "custody.time_before_previous",
                CustodyError::TimeInFuture { .. } => "custody.time_in_future",
                CustodyError::MissingTime => "custody.missing_time",
                CustodyError::Terminal { .. } => "custody.terminal",
                CustodyError::WrongState { .. } => "custody.wrong_state",
                CustodyError::MissingSignature { .. } => "custody.missing_signature",
                CustodyError::UnexpectedSigner { .. } => "custody.unexpected_signer",
                CustodyError::AuthoritySigned => "custody.authority_signed",
                CustodyError::HandoffOutOfOrder { .. } => "custody.handoff_out_of_order",
                CustodyError::UnknownParty(_) => "custody.unknown_party",
                CustodyError::MissingRole { .. } => "custody.missing_role",
                CustodyError::NoValidPermit { .. } => "custody.no_valid_permit",
                CustodyError::UnknownLine(_) => "custody.unknown_line",
                CustodyError::DuplicateLine(_) => "custody.duplicate_line",
                CustodyError::MissingLine(_) => "custody.missing_line",
                CustodyError::InvalidField(_) => "custody.invalid_field",
                CustodyError::OnSiteRejectionMustBeFull => "custody.on_site_rejection_must_be_full",
                CustodyError::NoAlternateFacility(_) => "custody.no_alternate_facility",
                CustodyError::AlreadyRedirected(_) => "custody.already_redirected",
                CustodyError::MissingFollowUp => "custody.missing_follow_up",
                CustodyError::CancelAfterPickup(_) => "custody.cancel_after_pickup",
                CustodyError::CorrectionOnCancelled(_) => "custody.correction_on_cancelled",
                CustodyError::CorrectionPending(_) => "custody.correction_pending",
                CustodyError::AmendedEventNotFound(_) => "custody.amended_event_not_found",
                CustodyError::ChangeDoesNotFit { .. } => "custody.change_does_not_fit",
                CustodyError::EmptyCorrection => "custody.empty_correction",
                CustodyError::NotAManifestParty(_) => "custody.not_a_manifest_party",
                CustodyError::NoSuchPendingCorrection(_) => "custody.no_such_pending_correction",
                CustodyError::NotAnApprover(_) => "custody.not_an_approver",
                CustodyError::SignerCount { .. } => "custody.signer_count",
            },
            Rejection::Registry(e) => match e {
                RegistryError::WrongSubject { .. } => "registry.wrong_subject",
                RegistryError::DuplicateParty(_) => "registry.duplicate_party",
                RegistryError::UnknownParty(_) => "registry.unknown_party",
                RegistryError::SubjectMismatch { .. } => "registry.subject_mismatch",
                RegistryError::InvalidParty { .. } => "registry.invalid_party",
                RegistryError::BadKey(_) => "registry.bad_key",
                RegistryError::KeyInUse(_) => "registry.key_in_use",
                RegistryError::AuthorityRequired { .. } => "registry.authority_required",
                RegistryError::UnauthorisedSigner { .. } => "registry.unauthorised_signer",
                RegistryError::KeyNotActive(_) => "registry.key_not_active",
                RegistryError::StaleChain { .. } => "registry.stale_chain",
                RegistryError::TimeBeforePrevious { .. } => "registry.time_before_previous",
                RegistryError::BadTime { .. } => "registry.bad_time",
            },
        }
    }
}

/// Resolves key ids against the genesis authorities and the party registry.
struct Keys<'a> {
    genesis: &'a Genesis,
    view: &'a dyn LedgerView,
}

impl KeyDirectory for Keys<'_> {
    fn verified_before(&self, check: &Digest) -> bool {
        self.view.verified_before(check)
    }

    fn record_verified(&self, check: &Digest) {
        self.view.record_verified(check)
    }

    fn lookup(&self, key_id: &Digest) -> Option<(Signer, KeyRecord)> {
        if let Some(a) = self.genesis.authority(key_id) {
            let record = KeyRecord {
                key_id: a.key_id,
                public: a.key,
                active_from: 0,
                active_until: None,
            };
            return Some((Signer::Authority(a.name.clone()), record));
        }
        let owner = self.view.key_owner(key_id)?;
        let record = self.view.party_record(&owner)?;
        let key = record.key(key_id)?.clone();
        Some((
            Signer::Party {
                registry_id: owner,
                key_id: *key_id,
            },
            key,
        ))
    }
}

/// Party lookup through a ledger view.
struct Parties<'a>(&'a dyn LedgerView);

impl PartyLookup for Parties<'_> {
    fn party(&self, registry_id: &str) -> Option<Arc<PartyRecord>> {
        self.0.party_record(registry_id)
    }
}

/// Decides one event at position `view.size()` with ledger time `sequenced_at`.
pub fn evaluate(
    genesis: &Genesis,
    view: &dyn LedgerView,
    signed: &pb::SignedEvent,
    sequenced_at: i64,
) -> Result<Decision, Rejection> {
    let event = decode_event(&genesis.ledger_id, signed)?;
    if let Some(index) = view.event_index(&event.subject, &event.hash) {
        return Err(Rejection::AlreadyRecorded { index });
    }
    let index = view.size();
    let signers = verify_signatures(&genesis.ledger_id, signed, index, &Keys { genesis, view })?;
    let state = match &event.subject {
        Subject::Manifest(tracking) => {
            let parties: BTreeSet<String> = signers
                .iter()
                .filter_map(|s| match s {
                    Signer::Party { registry_id, .. } => Some(registry_id.clone()),
                    Signer::Authority(_) => None,
                })
                .collect();
            let ctx = EventContext {
                event_hash: event.hash,
                index,
                sequenced_at,
                max_skew_ms: genesis.max_skew_ms,
                signers: &parties,
                authority_signed: signers.iter().any(|s| matches!(s, Signer::Authority(_))),
                parties: &Parties(view),
            };
            let current = view.manifest(tracking);
            SubjectState::Manifest(Arc::new(apply_manifest_event(
                current.as_deref(),
                tracking,
                &event.body,
                &ctx,
            )?))
        }
        Subject::Party(id) => {
            let key_in_use =
                |k: &Digest| view.key_owner(k).is_some() || genesis.authority(k).is_some();
            let ctx = RegistryContext {
                event_hash: event.hash,
                index,
                sequenced_at,
                max_skew_ms: genesis.max_skew_ms,
                signers: &signers,
                key_in_use: &key_in_use,
            };
            let current = view.party_record(id);
            SubjectState::Party(Arc::new(apply_registry_event(
                current.as_deref(),
                id,
                &event.body,
                &ctx,
            )?))
        }
    };
    Ok(Decision {
        event,
        signers,
        state,
    })
}

/// Splits `events`, in the order a client submitted them, into consecutive runs whose events
/// may all be checked against the same ledger state: within a run no two events touch the same
/// subject, and a registry event is alone.
///
/// Why that suffices: [`evaluate`] reads, for a manifest event, that manifest's state and the
/// registry (keys, roles, parties); for a registry event, the registry. An event in a run
/// therefore decides the same against the state before the run as against the state after the
/// run's earlier events, which touch other manifests and no registry. Two identical events
/// share their subject, so duplicate detection is not fooled either. An event that does not
/// decode has no subject; it is refused whatever the state and joins the current run.
///
/// The leader uses this to check and propose a batch a run at a time (`SubmitBatch`), so a
/// bulk of independent events shares Raft entries instead of waiting for one commit each.
pub fn independent_runs(ledger_id: &Digest, events: &[pb::SignedEvent]) -> Vec<Range<usize>> {
    let mut runs = Vec::new();
    let mut start = 0;
    let mut subjects: HashSet<Digest> = HashSet::new();
    let mut run_has_registry_event = false;
    for (i, signed) in events.iter().enumerate() {
        let subject = decode_event(ledger_id, signed).ok().map(|e| e.subject);
        let is_registry_event = matches!(subject, Some(Subject::Party(_)));
        let key = subject.map(|s| s.map_key());
        let depends_on_run = run_has_registry_event
            || (is_registry_event && i > start)
            || key.is_some_and(|k| subjects.contains(&k));
        if depends_on_run {
            runs.push(start..i);
            start = i;
            subjects.clear();
            run_has_registry_event = false;
        }
        subjects.extend(key);
        run_has_registry_event |= is_registry_event;
    }
    if start < events.len() {
        runs.push(start..events.len());
    }
    runs
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]

    use proptest::prelude::*;

    use super::*;
    use crate::memory::MemoryLedger;
    use crate::sample::{HOUR, ManifestFlow, SampleNetwork, T0};

    const NUMBERS: [&str; 3] = ["20261502000001", "20261502000002", "20261502000003"];

    /// Each manifest's whole lifecycle, signed in order by the right parties.
    fn lifecycles(net: &SampleNetwork) -> Vec<Vec<pb::SignedEvent>> {
        NUMBERS
            .iter()
            .map(|number| ManifestFlow::road_lifecycle(net, number, T0).unwrap())
            .collect()
    }

    fn verdict(r: Result<impl Sized, Rejection>) -> Result<(), &'static str> {
        r.map(|_| ()).map_err(|e| e.code())
    }

    #[test]
    fn a_registry_event_and_a_repeated_subject_start_new_runs() {
        let net = SampleNetwork::new().unwrap();
        let flows = lifecycles(&net);
        let registration = net.registrations().remove(0);
        let garbage = pb::SignedEvent {
            body: vec![0xff; 8],
            signatures: vec![],
        };
        let events = vec![
            flows[0][0].clone(),
            flows[1][0].clone(),
            garbage.clone(),
            flows[0][1].clone(), // manifest 1 again
            registration.clone(),
            flows[2][0].clone(), // after a registry event
            flows[2][1].clone(),
            registration,
            garbage,
        ];
        assert_eq!(
            independent_runs(&net.ledger_id(), &events),
            vec![0..3, 3..4, 4..5, 5..6, 6..7, 7..8, 8..9]
        );
        assert!(independent_runs(&net.ledger_id(), &[]).is_empty());
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(48))]

        /// Whatever the mix (three lifecycles interleaved, events dropped so later ones come
        /// out of order, events repeated, parties registered mid-batch), every event's verdict against the
        /// state before its run equals its verdict in sequence, and the runs cover the batch in
        /// order.
        #[test]
        fn a_run_decides_as_the_sequence_does(
            picks in proptest::collection::vec((0usize..4, 0u8..10), 1..24),
            unregistered in any::<u8>(),
        ) {
            let net = SampleNetwork::new().unwrap();
            let flows = lifecycles(&net);
            let registrations = net.registrations();
            // Some parties start unregistered, so a registration in the batch changes what
            // the manifest events after it decide.
            let mut ledger = MemoryLedger::new(net.genesis.clone());
            for (i, registration) in registrations.iter().enumerate() {
                if unregistered & (1 << (i % 8)) == 0 {
                    ledger.submit(registration, T0 - HOUR).unwrap();
                }
            }
            let mut next = [0usize; 3];
            let mut events: Vec<pb::SignedEvent> = Vec::new();
            for (subject, action) in picks {
                match (subject, action) {
                    (3, _) => events.push(registrations[action as usize % registrations.len()].clone()),
                    // Repeat an event already in the batch.
                    (_, 0) if !events.is_empty() => {
                        let again = events[subject % events.len()].clone();
                        events.push(again);
                    }
                    // Skip one: the manifest's next event no longer extends its head.
                    (m, 1) => next[m] += 1,
                    (m, _) => {
                        if let Some(e) = flows[m].get(next[m]) {
                            events.push(e.clone());
                        }
                        next[m] += 1;
                    }
                }
            }
            let runs = independent_runs(&net.ledger_id(), &events);
            let covered: Vec<usize> = runs.iter().flat_map(|r| r.clone()).collect();
            prop_assert_eq!(covered, (0..events.len()).collect::<Vec<_>>());
            prop_assert!(runs.iter().all(|r| !r.is_empty()));

            let now = T0 + 100 * HOUR;
            for run in runs {
                let before: Vec<_> = events[run.clone()]
                    .iter()
                    .map(|e| verdict(evaluate(ledger.genesis(), &ledger, e, now)))
                    .collect();
                let in_sequence: Vec<_> = events[run]
                    .iter()
                    .map(|e| verdict(ledger.submit(e, now)))
                    .collect();
                prop_assert_eq!(before, in_sequence);
            }
        }
    }
}

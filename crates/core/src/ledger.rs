//! The ledger's decision function: one signed event in, an accepted state change or a typed
//! rejection out.
//!
//! [`evaluate`] is what every node's state machine runs on every committed entry, and what the
//! leader runs before proposing to fail fast. It reads the ledger through [`LedgerView`] and
//! writes nothing: the caller persists the returned [`Decision`] (new subject state, leaf,
//! tree and map updates) in its own storage, atomically with "last applied".

use std::collections::{BTreeSet, HashMap};

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
    /// The manifest's folded state.
    fn manifest(&self, tracking: &Tracking) -> Option<ManifestState>;
    /// A party's record.
    fn party_record(&self, registry_id: &str) -> Option<PartyRecord>;
    /// The registry id of the party that registered this key (ever).
    fn key_owner(&self, key_id: &Digest) -> Option<String>;
    /// The index of an accepted event with this hash, if any (duplicate detection).
    fn event_index(&self, event_hash: &Digest) -> Option<u64>;

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
    /// A manifest after the event.
    Manifest(Box<ManifestState>),
    /// A party after the event.
    Party(Box<PartyRecord>),
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
    manifests: HashMap<Tracking, ManifestState>,
    parties: HashMap<String, PartyRecord>,
    key_owners: HashMap<Digest, String>,
    events: HashMap<Digest, u64>,
}

impl SubjectIndex {
    /// Records an accepted decision taken at ledger position `index`.
    pub fn record(&mut self, decision: &Decision, index: u64) {
        match &decision.state {
            SubjectState::Manifest(m) => {
                self.manifests.insert(m.tracking.clone(), (**m).clone());
            }
            SubjectState::Party(p) => {
                for k in &p.keys {
                    self.key_owners
                        .entry(k.key_id)
                        .or_insert_with(|| p.party.registry_id.clone());
                }
                self.parties
                    .insert(p.party.registry_id.clone(), (**p).clone());
            }
        }
        self.events.insert(decision.event.hash, index);
        self.size = self.size.max(index + 1);
    }

    /// The folded state of a manifest (borrowed).
    pub fn manifest_ref(&self, tracking: &Tracking) -> Option<&ManifestState> {
        self.manifests.get(tracking)
    }

    /// A party's record (borrowed).
    pub fn party_ref(&self, registry_id: &str) -> Option<&PartyRecord> {
        self.parties.get(registry_id)
    }
}

impl LedgerView for SubjectIndex {
    fn size(&self) -> u64 {
        self.size
    }

    fn manifest(&self, tracking: &Tracking) -> Option<ManifestState> {
        self.manifests.get(tracking).cloned()
    }

    fn party_record(&self, registry_id: &str) -> Option<PartyRecord> {
        self.parties.get(registry_id).cloned()
    }

    fn key_owner(&self, key_id: &Digest) -> Option<String> {
        self.key_owners.get(key_id).cloned()
    }

    fn event_index(&self, event_hash: &Digest) -> Option<u64> {
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
    fn party(&self, registry_id: &str) -> Option<pb::Party> {
        self.0.party_record(registry_id).map(|r| r.party)
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
    if let Some(index) = view.event_index(&event.hash) {
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
            SubjectState::Manifest(Box::new(apply_manifest_event(
                current.as_ref(),
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
            SubjectState::Party(Box::new(apply_registry_event(
                current.as_ref(),
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

//! The party registry: who is registered, in which roles, with which keys active when.
//!
//! Registry events form one hash chain per party, like a manifest's custody chain, and are
//! committed in the completeness map, so a proof can show a party's *whole* key history and a
//! verifier can decide "was this key active at ledger position i" without trusting anyone.
//! Key changes take effect for entries after the registry entry that makes them.

use std::collections::BTreeSet;

use ed25519_dalek::VerifyingKey;

use crate::hash::Digest;
use crate::pb::{self, Role, event_body::Kind};
use crate::signing::{SignatureError, key_id, parse_public_key};
use crate::tracking::validate_registry_id;

/// One key of a party and the ledger positions at which it may sign.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct KeyRecord {
    /// blake3 key id.
    pub key_id: Digest,
    /// The ed25519 public key.
    pub public: VerifyingKey,
    /// First ledger index at which the key may sign.
    pub active_from: u64,
    /// First ledger index at which it may no longer sign (rotated away or revoked).
    pub active_until: Option<u64>,
}

impl KeyRecord {
    /// True if the key may sign an entry at `index`.
    pub fn active_at(&self, index: u64) -> bool {
        self.active_from <= index && self.active_until.is_none_or(|until| index < until)
    }
}

/// A registered party with its key history.
#[derive(Clone, Debug, PartialEq)]
pub struct PartyRecord {
    /// The party's current details.
    pub party: pb::Party,
    /// Every key it ever had, in order.
    pub keys: Vec<KeyRecord>,
    /// Hash of the latest registry event (the chain head).
    pub head: Digest,
    /// `occurred_at` of the latest registry event.
    pub last_occurred_at: i64,
    /// Ledger indexes of its registry events.
    pub event_indexes: Vec<u64>,
}

impl PartyRecord {
    /// The key with this id, if the party ever had it.
    pub fn key(&self, key_id: &Digest) -> Option<&KeyRecord> {
        self.keys.iter().find(|k| &k.key_id == key_id)
    }

    /// True if the party is registered with `role`.
    pub fn has_role(&self, role: Role) -> bool {
        self.party.roles.contains(&(role as i32))
    }
}

/// Who made a verified signature.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Signer {
    /// A genesis authority, by name.
    Authority(String),
    /// A registered party, by registry id, with the key id used.
    Party {
        /// Registry id.
        registry_id: String,
        /// Key id that signed.
        key_id: Digest,
    },
}

/// Why a registry event was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RegistryError {
    /// The event kind does not belong on a party chain.
    #[error("a {kind} event cannot extend a party registry chain")]
    WrongSubject {
        /// Event kind.
        kind: &'static str,
    },
    /// Registration of an id that exists.
    #[error("party {0} is already registered")]
    DuplicateParty(String),
    /// An event for a party that was never registered.
    #[error("party {0} is not registered")]
    UnknownParty(String),
    /// The party inside the event names another id than the subject.
    #[error("the party's registry id {inner} differs from the event subject {subject}")]
    SubjectMismatch {
        /// Event subject.
        subject: String,
        /// Id in the payload.
        inner: String,
    },
    /// Party details are invalid.
    #[error("invalid party {field}: {problem}")]
    InvalidParty {
        /// Field path.
        field: String,
        /// What is wrong.
        problem: String,
    },
    /// A public key that cannot be registered.
    #[error("key cannot be registered: {0}")]
    BadKey(SignatureError),
    /// A key already registered to some party.
    #[error("key {0} is already registered; every party needs its own key")]
    KeyInUse(String),
    /// Registration and updates need an authority's signature.
    #[error("{event} must be signed by a genesis authority")]
    AuthorityRequired {
        /// Event kind.
        event: &'static str,
    },
    /// A signature by someone with no say over this party.
    #[error("{signer} may not sign {event} for party {party}")]
    UnauthorisedSigner {
        /// Event kind.
        event: &'static str,
        /// Who signed.
        signer: String,
        /// The party concerned.
        party: String,
    },
    /// The key to rotate or revoke is not an active key of the party.
    #[error("key {0} is not an active key of this party")]
    KeyNotActive(String),
    /// First event of a party chain with a non-zero predecessor, or a stale head.
    #[error(
        "prev_event_hash does not match the head of party {party}'s registry chain ({expected})"
    )]
    StaleChain {
        /// Registry id.
        party: String,
        /// Current head, short hex (zero for a new party).
        expected: String,
    },
    /// Registry events in time order, like custody events.
    #[error("occurred_at {got} is before the party's previous registry event ({previous})")]
    TimeBeforePrevious {
        /// Previous event time.
        previous: i64,
        /// This event's time.
        got: i64,
    },
    /// occurred_at missing or in the future.
    #[error(
        "occurred_at {got} must be positive and at most {skew_ms} ms after the ledger time {ledger_time}"
    )]
    BadTime {
        /// This event's time.
        got: i64,
        /// Ledger time.
        ledger_time: i64,
        /// Allowed skew.
        skew_ms: i64,
    },
}

/// Inputs of a registry decision besides the record and the event.
pub struct RegistryContext<'a> {
    /// Hash of the event.
    pub event_hash: Digest,
    /// Ledger index the event would get.
    pub index: u64,
    /// Ledger time stamped on the entry (ms).
    pub sequenced_at: i64,
    /// Allowed clock skew (ms).
    pub max_skew_ms: i64,
    /// Verified signers.
    pub signers: &'a [Signer],
    /// True if `key_id` is registered to any party already (ledger-wide uniqueness).
    pub key_in_use: &'a dyn Fn(&Digest) -> bool,
}

fn validate_party(party: &pb::Party) -> Result<(), RegistryError> {
    let bad = |field: &str, problem: &str| RegistryError::InvalidParty {
        field: field.to_owned(),
        problem: problem.to_owned(),
    };
    validate_registry_id(&party.registry_id).map_err(|e| bad("registry_id", &e.to_string()))?;
    if party.legal_name.trim().is_empty() || party.legal_name.len() > 512 {
        return Err(bad("legal_name", "is required (at most 512 bytes)"));
    }
    if party.roles.is_empty() {
        return Err(bad("roles", "at least one role is required"));
    }
    let mut seen = BTreeSet::new();
    for role in &party.roles {
        match Role::try_from(*role) {
            Ok(Role::Unspecified) | Err(_) => return Err(bad("roles", "unknown role")),
            Ok(_) => {}
        }
        if !seen.insert(*role) {
            return Err(bad("roles", "a role is listed twice"));
        }
    }
    for (i, permit) in party.permits.iter().enumerate() {
        let field = format!("permits[{i}]");
        if permit.number.trim().is_empty() {
            return Err(bad(&field, "permit number is required"));
        }
        if Role::try_from(permit.role).unwrap_or_default() == Role::Unspecified {
            return Err(bad(&field, "permit role is required"));
        }
        if permit.valid_until != 0 && permit.valid_until <= permit.valid_from {
            return Err(bad(
                &field,
                "valid_until must be after valid_from (or 0 for no expiry)",
            ));
        }
    }
    Ok(())
}

fn authority_signed(signers: &[Signer]) -> bool {
    signers.iter().any(|s| matches!(s, Signer::Authority(_)))
}

fn signer_name(s: &Signer) -> String {
    match s {
        Signer::Authority(name) => format!("authority {name}"),
        Signer::Party { registry_id, .. } => registry_id.clone(),
    }
}

/// Applies a registry event to a party's record (None before registration).
pub fn apply_registry_event(
    record: Option<&PartyRecord>,
    subject: &str,
    body: &pb::EventBody,
    ctx: &RegistryContext<'_>,
) -> Result<PartyRecord, RegistryError> {
    let Some(kind) = body.kind.as_ref() else {
        return Err(RegistryError::WrongSubject { kind: "empty" });
    };
    let event = crate::custody::kind_name(kind);
    if body.occurred_at <= 0 || body.occurred_at > ctx.sequenced_at.saturating_add(ctx.max_skew_ms)
    {
        return Err(RegistryError::BadTime {
            got: body.occurred_at,
            ledger_time: ctx.sequenced_at,
            skew_ms: ctx.max_skew_ms,
        });
    }
    let expected_prev = record.map_or(Digest::ZERO, |r| r.head);
    if body.prev_event_hash.as_slice() != expected_prev.as_bytes() {
        return Err(RegistryError::StaleChain {
            party: subject.to_owned(),
            expected: expected_prev.short(),
        });
    }
    if let Some(r) = record
        && body.occurred_at < r.last_occurred_at
    {
        return Err(RegistryError::TimeBeforePrevious {
            previous: r.last_occurred_at,
            got: body.occurred_at,
        });
    }
    let mut next = match (kind, record) {
        (Kind::PartyRegistered(reg), None) => register(subject, reg, ctx)?,
        (Kind::PartyRegistered(_), Some(_)) => {
            return Err(RegistryError::DuplicateParty(subject.to_owned()));
        }
        (Kind::KeyRotated(_) | Kind::KeyRevoked(_) | Kind::PartyUpdated(_), None) => {
            return Err(RegistryError::UnknownParty(subject.to_owned()));
        }
        (Kind::KeyRotated(rot), Some(r)) => rotate(r, subject, rot, ctx)?,
        (Kind::KeyRevoked(rev), Some(r)) => revoke(r, subject, rev, ctx)?,
        (Kind::PartyUpdated(upd), Some(r)) => update(r, subject, upd, ctx)?,
        _ => return Err(RegistryError::WrongSubject { kind: event }),
    };
    next.head = ctx.event_hash;
    next.last_occurred_at = body.occurred_at;
    next.event_indexes.push(ctx.index);
    Ok(next)
}

fn new_key(
    bytes: Option<&pb::PublicKey>,
    ctx: &RegistryContext<'_>,
) -> Result<KeyRecord, RegistryError> {
    let raw = bytes.map(|k| k.ed25519.as_slice()).unwrap_or_default();
    let public = parse_public_key(raw).map_err(RegistryError::BadKey)?;
    let id = key_id(&public);
    if (ctx.key_in_use)(&id) {
        return Err(RegistryError::KeyInUse(id.short()));
    }
    Ok(KeyRecord {
        key_id: id,
        public,
        // Effective for entries after this one.
        active_from: ctx.index + 1,
        active_until: None,
    })
}

/// The party details carried by a registration or update: present, about the subject, valid.
fn party_payload(party: Option<&pb::Party>, subject: &str) -> Result<pb::Party, RegistryError> {
    let party = party.cloned().ok_or_else(|| RegistryError::InvalidParty {
        field: "party".into(),
        problem: "is required".into(),
    })?;
    if party.registry_id != subject {
        return Err(RegistryError::SubjectMismatch {
            subject: subject.to_owned(),
            inner: party.registry_id,
        });
    }
    validate_party(&party)?;
    Ok(party)
}

fn register(
    subject: &str,
    reg: &pb::PartyRegistered,
    ctx: &RegistryContext<'_>,
) -> Result<PartyRecord, RegistryError> {
    let party = party_payload(reg.party.as_ref(), subject)?;
    only_authorities("PartyRegistered", subject, ctx)?;
    let key = new_key(reg.key.as_ref(), ctx)?;
    Ok(PartyRecord {
        party,
        keys: vec![key],
        head: Digest::ZERO,
        last_occurred_at: 0,
        event_indexes: Vec::new(),
    })
}

fn only_authorities(
    event: &'static str,
    party: &str,
    ctx: &RegistryContext<'_>,
) -> Result<(), RegistryError> {
    if !authority_signed(ctx.signers) {
        return Err(RegistryError::AuthorityRequired { event });
    }
    if let Some(other) = ctx
        .signers
        .iter()
        .find(|s| !matches!(s, Signer::Authority(_)))
    {
        return Err(RegistryError::UnauthorisedSigner {
            event,
            signer: signer_name(other),
            party: party.to_owned(),
        });
    }
    Ok(())
}

/// Signers may be authorities or the party itself using `allowed_key` (any active key of the
/// party if None). At least one signer is required.
fn authority_or_party(
    event: &'static str,
    record: &PartyRecord,
    subject: &str,
    allowed_key: Option<&Digest>,
    ctx: &RegistryContext<'_>,
) -> Result<(), RegistryError> {
    if ctx.signers.is_empty() {
        return Err(RegistryError::AuthorityRequired { event });
    }
    for s in ctx.signers {
        let ok = match s {
            Signer::Authority(_) => true,
            Signer::Party {
                registry_id,
                key_id,
            } => {
                registry_id == subject
                    && allowed_key.is_none_or(|k| k == key_id)
                    && record.key(key_id).is_some_and(|k| k.active_at(ctx.index))
            }
        };
        if !ok {
            return Err(RegistryError::UnauthorisedSigner {
                event,
                signer: signer_name(s),
                party: subject.to_owned(),
            });
        }
    }
    Ok(())
}

fn active_key_index(
    record: &PartyRecord,
    raw_id: &[u8],
    index: u64,
) -> Result<usize, RegistryError> {
    let id = Digest::from_slice(raw_id)
        .ok_or_else(|| RegistryError::KeyNotActive(hex::encode(raw_id)))?;
    record
        .keys
        .iter()
        .position(|k| k.key_id == id && k.active_at(index))
        .ok_or_else(|| RegistryError::KeyNotActive(id.short()))
}

fn rotate(
    record: &PartyRecord,
    subject: &str,
    rot: &pb::KeyRotated,
    ctx: &RegistryContext<'_>,
) -> Result<PartyRecord, RegistryError> {
    if rot.registry_id != subject {
        return Err(RegistryError::SubjectMismatch {
            subject: subject.to_owned(),
            inner: rot.registry_id.clone(),
        });
    }
    let old = active_key_index(record, &rot.old_key_id, ctx.index)?;
    let old_id = record.keys[old].key_id;
    // The current key proves continuity; an authority can stand in for a lost key.
    authority_or_party("KeyRotated", record, subject, Some(&old_id), ctx)?;
    let key = new_key(rot.new_key.as_ref(), ctx)?;
    let mut next = record.clone();
    next.keys[old].active_until = Some(ctx.index + 1);
    next.keys.push(key);
    Ok(next)
}

fn revoke(
    record: &PartyRecord,
    subject: &str,
    rev: &pb::KeyRevoked,
    ctx: &RegistryContext<'_>,
) -> Result<PartyRecord, RegistryError> {
    if rev.registry_id != subject {
        return Err(RegistryError::SubjectMismatch {
            subject: subject.to_owned(),
            inner: rev.registry_id.clone(),
        });
    }
    let target = active_key_index(record, &rev.key_id, ctx.index)?;
    authority_or_party("KeyRevoked", record, subject, None, ctx)?;
    let mut next = record.clone();
    next.keys[target].active_until = Some(ctx.index + 1);
    Ok(next)
}

fn update(
    record: &PartyRecord,
    subject: &str,
    upd: &pb::PartyUpdated,
    ctx: &RegistryContext<'_>,
) -> Result<PartyRecord, RegistryError> {
    let party = party_payload(upd.party.as_ref(), subject)?;
    only_authorities("PartyUpdated", subject, ctx)?;
    let mut next = record.clone();
    next.party = party;
    Ok(next)
}

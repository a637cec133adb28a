//! The signed-event envelope: size limits, decoding, and signature checks.
//!
//! Order matters and is fixed: check sizes, verify every signature over the exact body bytes,
//! and only then trust the decoded body. A body is decoded once, from the bytes that were
//! signed, and never re-encoded.

use std::collections::BTreeSet;

use prost::Message;

use crate::hash::{Digest, Purpose};
use crate::pb::{self, event_body::Kind, subject::Subject as PbSubject};
use crate::registry::{KeyRecord, Signer};
use crate::signing::{SigningDomain, verify};
use crate::tracking::{Tracking, TrackingError, validate_registry_id};

/// Largest accepted event body. Keeps every stored value well below the size at which sled
/// moves values to (unsynced) blob files, and bounds the work one event can cause.
pub const MAX_BODY_BYTES: usize = 64 * 1024;
/// Most signatures on one event.
pub const MAX_SIGNATURES: usize = 8;

/// What chain an event extends.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Subject {
    /// A manifest's custody chain.
    Manifest(Tracking),
    /// A party's registry chain.
    Party(String),
}

impl Subject {
    /// Completeness-map key of the subject.
    pub fn map_key(&self) -> Digest {
        match self {
            Subject::Manifest(t) => t.map_key(),
            Subject::Party(id) => crate::tracking::party_map_key(id),
        }
    }
}

impl std::fmt::Display for Subject {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Subject::Manifest(t) => write!(f, "manifest {t}"),
            Subject::Party(id) => write!(f, "party {id}"),
        }
    }
}

/// A decoded event whose body bytes are exactly the signed ones.
#[derive(Clone, Debug)]
pub struct DecodedEvent {
    /// The decoded body.
    pub body: pb::EventBody,
    /// `blake3-derive("wasteledger v1 event", ledger_id ‖ body bytes)`.
    pub hash: Digest,
    /// The chain it extends.
    pub subject: Subject,
}

impl DecodedEvent {
    /// The event kind (always present after decoding).
    pub fn kind(&self) -> Option<&Kind> {
        self.body.kind.as_ref()
    }
}

/// Why an envelope was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum EnvelopeError {
    /// Body over [`MAX_BODY_BYTES`].
    #[error("event body is {size} bytes; the limit is {limit}")]
    TooLarge {
        /// Body size.
        size: usize,
        /// The limit.
        limit: usize,
    },
    /// Body is not a valid `EventBody`.
    #[error("event body is not a valid wasteledger.v1.EventBody: {0}")]
    Malformed(String),
    /// No kind set.
    #[error("event body has no event kind set")]
    NoKind,
    /// No subject set.
    #[error("event body has no subject (manifest tracking number or party registry id)")]
    NoSubject,
    /// A bad tracking number or registry id as subject.
    #[error("event subject: {0}")]
    BadSubject(TrackingError),
    /// The kind does not match the subject type.
    #[error("a {kind} event cannot have a {subject} subject")]
    SubjectKindMismatch {
        /// Event kind.
        kind: &'static str,
        /// Subject type.
        subject: &'static str,
    },
    /// `prev_event_hash` is not 32 bytes.
    #[error("prev_event_hash must be 32 bytes, got {0}")]
    PrevHashLength(usize),
    /// No signature at all.
    #[error("the event carries no signature")]
    NoSignatures,
    /// Over [`MAX_SIGNATURES`].
    #[error("the event carries {0} signatures; at most 8 are accepted")]
    TooManySignatures(usize),
    /// The same key twice.
    #[error("key {0} signed the event twice")]
    DuplicateSignature(String),
    /// The same party with two keys.
    #[error("{0} signed the event twice (with two keys)")]
    DuplicateSigner(String),
    /// A key id that is not 32 bytes.
    #[error("signature key_id must be 32 bytes, got {0}")]
    KeyIdLength(usize),
    /// A key nobody registered.
    #[error("key {0} is not registered on this ledger")]
    UnknownKey(String),
    /// A registered key outside its active window.
    #[error("key {key} of {owner} is not active at ledger position {index} (rotated or revoked)")]
    KeyNotActive {
        /// Short key id.
        key: String,
        /// Owner.
        owner: String,
        /// Position of the event.
        index: u64,
    },
    /// `verify_strict` failed.
    #[error("signature by key {key} of {owner} does not verify over this body")]
    BadSignature {
        /// Short key id.
        key: String,
        /// Owner.
        owner: String,
    },
}

/// Finds who owns a key id, with the key's active window.
pub trait KeyDirectory {
    /// The signer identity and key record for `key_id`.
    fn lookup(&self, key_id: &Digest) -> Option<(Signer, KeyRecord)>;

    /// True when this process already verified the signature whose [`signature_check_key`] is
    /// `check` (a leader checks an event before proposing it, then applies it). Only the
    /// cryptographic check is remembered; key validity is checked every time.
    fn verified_before(&self, check: &Digest) -> bool {
        let _ = check;
        false
    }

    /// Remembers a successful cryptographic check.
    fn record_verified(&self, check: &Digest) {
        let _ = check;
    }
}

/// The cache key of one signature check: it binds the public key, the ledger, the exact body
/// and the exact signature bytes, so a hit means `verify_strict` already passed on all four.
/// The body's length is hashed too: without it, moving bytes between the end of the body and
/// the start of the signature would give another (unverified) pair the same key.
pub fn signature_check_key(
    public: &ed25519_dalek::VerifyingKey,
    ledger_id: &Digest,
    body: &[u8],
    signature: &[u8],
) -> Digest {
    Purpose::VerifiedSignature.hash_parts(&[
        public.as_bytes(),
        ledger_id.as_bytes(),
        &(body.len() as u64).to_be_bytes(),
        body,
        signature,
    ])
}

/// The event hash of body bytes on a ledger.
pub fn event_hash(ledger_id: &Digest, body: &[u8]) -> Digest {
    Purpose::Event.hash_parts(&[ledger_id.as_bytes(), body])
}

/// Checks size and decodes the body. Signatures are checked separately by
/// [`verify_signatures`], which must succeed before the decoded body is acted on.
pub fn decode_event(
    ledger_id: &Digest,
    signed: &pb::SignedEvent,
) -> Result<DecodedEvent, EnvelopeError> {
    if signed.body.len() > MAX_BODY_BYTES {
        return Err(EnvelopeError::TooLarge {
            size: signed.body.len(),
            limit: MAX_BODY_BYTES,
        });
    }
    if signed.signatures.is_empty() {
        return Err(EnvelopeError::NoSignatures);
    }
    if signed.signatures.len() > MAX_SIGNATURES {
        return Err(EnvelopeError::TooManySignatures(signed.signatures.len()));
    }
    let body = pb::EventBody::decode(signed.body.as_slice())
        .map_err(|e| EnvelopeError::Malformed(e.to_string()))?;
    let kind = body.kind.as_ref().ok_or(EnvelopeError::NoKind)?;
    if body.prev_event_hash.len() != 32 {
        return Err(EnvelopeError::PrevHashLength(body.prev_event_hash.len()));
    }
    let subject = match body.subject.as_ref().and_then(|s| s.subject.as_ref()) {
        None => return Err(EnvelopeError::NoSubject),
        Some(PbSubject::Manifest(t)) => {
            Subject::Manifest(Tracking::from_pb(t).map_err(EnvelopeError::BadSubject)?)
        }
        Some(PbSubject::Party(id)) => {
            validate_registry_id(id).map_err(EnvelopeError::BadSubject)?;
            Subject::Party(id.clone())
        }
    };
    let registry_kind = matches!(
        kind,
        Kind::PartyRegistered(_)
            | Kind::KeyRotated(_)
            | Kind::KeyRevoked(_)
            | Kind::PartyUpdated(_)
    );
    match (&subject, registry_kind) {
        (Subject::Manifest(_), true) => {
            return Err(EnvelopeError::SubjectKindMismatch {
                kind: crate::custody::kind_name(kind),
                subject: "manifest",
            });
        }
        (Subject::Party(_), false) => {
            return Err(EnvelopeError::SubjectKindMismatch {
                kind: crate::custody::kind_name(kind),
                subject: "party",
            });
        }
        _ => {}
    }
    Ok(DecodedEvent {
        hash: event_hash(ledger_id, &signed.body),
        body,
        subject,
    })
}

/// Verifies every signature with `verify_strict` against keys active at ledger position
/// `index`, and returns the signers. Any bad signature rejects the whole event: a signature
/// that does not verify is never silently dropped.
pub fn verify_signatures(
    ledger_id: &Digest,
    signed: &pb::SignedEvent,
    index: u64,
    keys: &dyn KeyDirectory,
) -> Result<Vec<Signer>, EnvelopeError> {
    let mut seen_keys = BTreeSet::new();
    let mut seen_signers = BTreeSet::new();
    let mut signers = Vec::with_capacity(signed.signatures.len());
    for sig in &signed.signatures {
        let key_id =
            Digest::from_slice(&sig.key_id).ok_or(EnvelopeError::KeyIdLength(sig.key_id.len()))?;
        if !seen_keys.insert(key_id) {
            return Err(EnvelopeError::DuplicateSignature(key_id.short()));
        }
        let (signer, record) = keys
            .lookup(&key_id)
            .ok_or_else(|| EnvelopeError::UnknownKey(key_id.short()))?;
        let owner = match &signer {
            Signer::Authority(name) => format!("authority {name}"),
            Signer::Party { registry_id, .. } => registry_id.clone(),
        };
        if !record.active_at(index) {
            return Err(EnvelopeError::KeyNotActive {
                key: key_id.short(),
                owner,
                index,
            });
        }
        let check = signature_check_key(&record.public, ledger_id, &signed.body, &sig.signature);
        if !keys.verified_before(&check) {
            verify(
                &record.public,
                SigningDomain::Event,
                ledger_id,
                &signed.body,
                &sig.signature,
            )
            .map_err(|_| EnvelopeError::BadSignature {
                key: key_id.short(),
                owner: owner.clone(),
            })?;
            keys.record_verified(&check);
        }
        if !seen_signers.insert(owner.clone()) {
            return Err(EnvelopeError::DuplicateSigner(owner));
        }
        signers.push(signer);
    }
    Ok(signers)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn signature_check_keys_bind_the_body_signature_split() {
        let key = crate::sample::key_from_label("k").verifying_key();
        let id = Digest::ZERO;
        let sig = [7u8; 64];
        let whole = signature_check_key(&key, &id, b"body", &sig);
        // The same bytes split differently between body and signature must not collide, or
        // a remembered check would vouch for a signature never verified.
        let mut longer_body = b"body".to_vec();
        longer_body.push(7);
        assert_ne!(
            whole,
            signature_check_key(&key, &id, &longer_body, &sig[1..])
        );
        assert_ne!(
            whole,
            signature_check_key(&key, &id, b"bod", &[b"y".as_slice(), &sig].concat())
        );
        let other = crate::sample::key_from_label("other").verifying_key();
        assert_ne!(whole, signature_check_key(&other, &id, b"body", &sig));
        assert_ne!(
            whole,
            signature_check_key(&key, &Digest([1; 32]), b"body", &sig)
        );
    }
}

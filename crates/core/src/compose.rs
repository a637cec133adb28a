//! Composing and signing events on the client side.
//!
//! A party builds an [`pb::EventBody`], encodes it once, and signs those bytes; a second party
//! (at a handoff) adds its signature over the *same bytes* with [`cosign_event`]. Nothing here
//! re-encodes a body that was already signed.

use prost::Message;

use crate::envelope::event_hash;
use crate::hash::Digest;
use crate::pb::{self, event_body::Kind, subject::Subject as PbSubject};
use crate::signing::{SignatureError, SigningDomain, SigningKey, key_id, sign, verify};
use crate::tracking::Tracking;

/// A body for an event on the chain of `subject`.
pub fn event_body(
    subject: PbSubject,
    prev_event_hash: Digest,
    occurred_at: i64,
    kind: Kind,
) -> pb::EventBody {
    pb::EventBody {
        subject: Some(pb::Subject {
            subject: Some(subject),
        }),
        prev_event_hash: prev_event_hash.0.to_vec(),
        occurred_at,
        kind: Some(kind),
    }
}

/// A body for an event on a manifest's chain.
pub fn manifest_body(
    tracking: &Tracking,
    prev_event_hash: Digest,
    occurred_at: i64,
    kind: Kind,
) -> pb::EventBody {
    event_body(
        PbSubject::Manifest(tracking.to_pb()),
        prev_event_hash,
        occurred_at,
        kind,
    )
}

/// A body for an event on a party's registry chain.
pub fn party_body(
    registry_id: &str,
    prev_event_hash: Digest,
    occurred_at: i64,
    kind: Kind,
) -> pb::EventBody {
    event_body(
        PbSubject::Party(registry_id.to_owned()),
        prev_event_hash,
        occurred_at,
        kind,
    )
}

/// Encodes `body` once and signs the bytes with each key, in order.
pub fn sign_event(
    ledger_id: &Digest,
    body: &pb::EventBody,
    keys: &[&SigningKey],
) -> pb::SignedEvent {
    let body = body.encode_to_vec();
    let signatures = keys
        .iter()
        .map(|k| pb::Signature {
            key_id: key_id(&k.verifying_key()).0.to_vec(),
            signature: sign(k, SigningDomain::Event, ledger_id, &body).to_vec(),
        })
        .collect();
    pb::SignedEvent { body, signatures }
}

/// Adds `key`'s signature to an event another party prepared, after checking that every
/// signature already on it verifies over the same bytes (so a co-signer never endorses a body
/// that was altered after the first signature).
pub fn cosign_event(
    ledger_id: &Digest,
    signed: &mut pb::SignedEvent,
    key: &SigningKey,
    existing: &[ed25519_dalek::VerifyingKey],
) -> Result<(), SignatureError> {
    for (sig, public) in signed.signatures.iter().zip(existing) {
        verify(
            public,
            SigningDomain::Event,
            ledger_id,
            &signed.body,
            &sig.signature,
        )?;
    }
    signed.signatures.push(pb::Signature {
        key_id: key_id(&key.verifying_key()).0.to_vec(),
        signature: sign(key, SigningDomain::Event, ledger_id, &signed.body).to_vec(),
    });
    Ok(())
}

/// The event hash of a signed event (what the next event names as `prev_event_hash`).
pub fn hash_of(ledger_id: &Digest, signed: &pb::SignedEvent) -> Digest {
    event_hash(ledger_id, &signed.body)
}

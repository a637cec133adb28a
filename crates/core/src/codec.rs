//! Conversions between the folded subject states and their protobuf form (`state.proto`).
//!
//! Nodes persist [`ManifestState`] and [`PartyRecord`] in this form and the API returns it.
//! Decoding validates everything a store could have corrupted (hash lengths, keys, enum values),
//! so a damaged record is reported as such instead of being trusted.

use std::collections::BTreeSet;

use crate::custody::{ChainEvent, ManifestState, PendingCorrection, RejectionRecord, Status};
use crate::hash::Digest;
use crate::pb::{self, ManifestStatus};
use crate::quantity::LineDiscrepancy;
use crate::registry::{KeyRecord, PartyRecord};
use crate::signing::{key_id, parse_public_key};
use crate::tracking::Tracking;

/// Why a stored state could not be decoded.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CodecError {
    /// Not a valid protobuf message.
    #[error("stored state is not valid protobuf: {0}")]
    Decode(String),
    /// A required field is absent.
    #[error("stored state lacks {0}")]
    Missing(&'static str),
    /// A hash field is not 32 bytes.
    #[error("stored state field {0} is not a 32-byte hash")]
    Hash(&'static str),
    /// An unknown enum value or event kind.
    #[error("stored state field {field} has unknown value {value:?}")]
    Unknown {
        /// Field.
        field: &'static str,
        /// Value found.
        value: String,
    },
    /// A stored key does not parse or does not match its id.
    #[error("stored key {0} is invalid or does not match its key id")]
    Key(String),
}

fn digest(bytes: &[u8], field: &'static str) -> Result<Digest, CodecError> {
    Digest::from_slice(bytes).ok_or(CodecError::Hash(field))
}

/// Every event kind name, for mapping stored names back to the static names the rules use.
const KINDS: [&str; 13] = [
    "PartyRegistered",
    "KeyRotated",
    "KeyRevoked",
    "PartyUpdated",
    "ManifestCreated",
    "CustodyHandoff",
    "TransitCheckpoint",
    "Received",
    "Rejected",
    "Treated",
    "Correction",
    "CorrectionDecision",
    "Cancelled",
];

fn status_to_pb(status: Status) -> (ManifestStatus, u32) {
    match status {
        Status::Created => (ManifestStatus::Created, 0),
        Status::InTransit { leg } => (ManifestStatus::InTransit, leg),
        Status::Delivered => (ManifestStatus::Delivered, 0),
        Status::Received => (ManifestStatus::Received, 0),
        Status::Rejected => (ManifestStatus::Rejected, 0),
        Status::Returned => (ManifestStatus::Returned, 0),
        Status::Treated => (ManifestStatus::Treated, 0),
        Status::Cancelled => (ManifestStatus::Cancelled, 0),
    }
}

/// The custody status a protobuf `ManifestStatus` value (and transporter leg) stands for;
/// unspecified or unknown values are refused.
pub fn status_from_pb(value: i32, leg: u32) -> Result<Status, CodecError> {
    Ok(match ManifestStatus::try_from(value) {
        Ok(ManifestStatus::Created) => Status::Created,
        Ok(ManifestStatus::InTransit) => Status::InTransit { leg },
        Ok(ManifestStatus::Delivered) => Status::Delivered,
        Ok(ManifestStatus::Received) => Status::Received,
        Ok(ManifestStatus::Rejected) => Status::Rejected,
        Ok(ManifestStatus::Returned) => Status::Returned,
        Ok(ManifestStatus::Treated) => Status::Treated,
        Ok(ManifestStatus::Cancelled) => Status::Cancelled,
        Ok(ManifestStatus::Unspecified) | Err(_) => {
            return Err(CodecError::Unknown {
                field: "status",
                value: value.to_string(),
            });
        }
    })
}

impl ManifestState {
    /// The protobuf form.
    pub fn to_pb(&self) -> pb::ManifestState {
        pb::ManifestState {
            manifest: Some(self.manifest.clone()),
            ..self.to_pb_without_manifest()
        }
    }

    /// The protobuf form without the manifest itself (`manifest` unset). The manifest changes
    /// only at creation and with each applied correction, while the rest changes with every
    /// event, so a store may keep the two apart; [`ManifestState::from_pb`] needs them joined.
    pub fn to_pb_without_manifest(&self) -> pb::ManifestState {
        let (status, leg) = status_to_pb(self.status);
        pb::ManifestState {
            tracking_number: Some(self.tracking.to_pb()),
            manifest: None,
            status: status as i32,
            leg,
            destination: self.destination.clone(),
            head: self.head.0.to_vec(),
            events: self
                .events
                .iter()
                .map(|e| pb::ChainEventRef {
                    event_hash: e.hash.0.to_vec(),
                    kind: e.kind.to_owned(),
                    index: e.index,
                })
                .collect(),
            last_occurred_at: self.last_occurred_at,
            created_at: self.created_at,
            shipped_at: self.shipped_at,
            delivered_at: self.delivered_at,
            received_at: self.received_at,
            treated_at: self.treated_at,
            signers: self.signers.iter().cloned().collect(),
            received: self.received.clone(),
            discrepancies: self
                .discrepancies
                .iter()
                .map(|d| pb::LineDiscrepancy {
                    line_number: d.line_number,
                    deviation_bp: d.deviation_bp,
                    piece_difference: d.piece_difference,
                    type_discrepancy: d.type_discrepancy,
                    incomparable_units: d.incomparable_units,
                    significant: d.significant,
                })
                .collect(),
            rejection: self.rejection.as_ref().map(|r| r.rejected.clone()),
            rejection_event: self
                .rejection
                .as_ref()
                .map(|r| r.event_hash.0.to_vec())
                .unwrap_or_default(),
            treated: self.treated.clone(),
            pending_correction: self
                .pending_correction
                .as_ref()
                .map(|p| pb::PendingCorrection {
                    event_hash: p.event_hash.0.to_vec(),
                    proposer: p.proposer.clone(),
                    correction: Some(p.correction.clone()),
                    awaiting: p.awaiting.iter().cloned().collect(),
                    approved: p.approved.iter().cloned().collect(),
                }),
            corrections_applied: self.corrections_applied,
            corrections_refused: self.corrections_refused,
        }
    }

    /// Decodes and validates the protobuf form.
    pub fn from_pb(s: &pb::ManifestState) -> Result<ManifestState, CodecError> {
        let tracking = s
            .tracking_number
            .as_ref()
            .ok_or(CodecError::Missing("tracking_number"))
            .and_then(|t| {
                Tracking::from_pb(t).map_err(|e| CodecError::Unknown {
                    field: "tracking_number",
                    value: e.to_string(),
                })
            })?;
        let events =
            s.events
                .iter()
                .map(|e| {
                    let kind = KINDS.iter().find(|k| **k == e.kind).ok_or_else(|| {
                        CodecError::Unknown {
                            field: "events.kind",
                            value: e.kind.clone(),
                        }
                    })?;
                    Ok(ChainEvent {
                        hash: digest(&e.event_hash, "events.event_hash")?,
                        kind,
                        index: e.index,
                    })
                })
                .collect::<Result<Vec<_>, CodecError>>()?;
        let rejection = match &s.rejection {
            Some(rejected) => Some(RejectionRecord {
                rejected: rejected.clone(),
                event_hash: digest(&s.rejection_event, "rejection_event")?,
            }),
            None => None,
        };
        let pending_correction = match &s.pending_correction {
            Some(p) => Some(PendingCorrection {
                event_hash: digest(&p.event_hash, "pending_correction.event_hash")?,
                proposer: p.proposer.clone(),
                correction: p
                    .correction
                    .clone()
                    .ok_or(CodecError::Missing("pending_correction.correction"))?,
                awaiting: p.awaiting.iter().cloned().collect(),
                approved: p.approved.iter().cloned().collect(),
            }),
            None => None,
        };
        Ok(ManifestState {
            tracking,
            manifest: s.manifest.clone().ok_or(CodecError::Missing("manifest"))?,
            status: status_from_pb(s.status, s.leg)?,
            destination: s.destination.clone(),
            head: digest(&s.head, "head")?,
            events,
            last_occurred_at: s.last_occurred_at,
            created_at: s.created_at,
            shipped_at: s.shipped_at,
            delivered_at: s.delivered_at,
            received_at: s.received_at,
            treated_at: s.treated_at,
            signers: s.signers.iter().cloned().collect::<BTreeSet<_>>(),
            received: s.received.clone(),
            discrepancies: s
                .discrepancies
                .iter()
                .map(|d| LineDiscrepancy {
                    line_number: d.line_number,
                    deviation_bp: d.deviation_bp,
                    piece_difference: d.piece_difference,
                    type_discrepancy: d.type_discrepancy,
                    incomparable_units: d.incomparable_units,
                    significant: d.significant,
                })
                .collect(),
            rejection,
            treated: s.treated.clone(),
            pending_correction,
            corrections_applied: s.corrections_applied,
            corrections_refused: s.corrections_refused,
        })
    }
}

impl PartyRecord {
    /// The protobuf form.
    pub fn to_pb(&self) -> pb::PartyState {
        pb::PartyState {
            party: Some(self.party.clone()),
            keys: self
                .keys
                .iter()
                .map(|k| pb::KeyState {
                    key_id: k.key_id.0.to_vec(),
                    ed25519: k.public.to_bytes().to_vec(),
                    active_from: k.active_from,
                    active_until: k.active_until,
                })
                .collect(),
            head: self.head.0.to_vec(),
            last_occurred_at: self.last_occurred_at,
            event_indexes: self.event_indexes.clone(),
        }
    }

    /// Decodes and validates the protobuf form (every key must match its id).
    pub fn from_pb(s: &pb::PartyState) -> Result<PartyRecord, CodecError> {
        let keys = s
            .keys
            .iter()
            .map(|k| {
                let id = digest(&k.key_id, "keys.key_id")?;
                let public =
                    parse_public_key(&k.ed25519).map_err(|_| CodecError::Key(id.short()))?;
                if key_id(&public) != id {
                    return Err(CodecError::Key(id.short()));
                }
                Ok(KeyRecord {
                    key_id: id,
                    public,
                    active_from: k.active_from,
                    active_until: k.active_until,
                })
            })
            .collect::<Result<Vec<_>, CodecError>>()?;
        Ok(PartyRecord {
            party: s.party.clone().ok_or(CodecError::Missing("party"))?,
            keys,
            head: digest(&s.head, "head")?,
            last_occurred_at: s.last_occurred_at,
            event_indexes: s.event_indexes.clone(),
        })
    }
}

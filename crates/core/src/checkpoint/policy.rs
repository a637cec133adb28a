//! Witness sets and the trust policy: which cosignatures make a checkpoint trustworthy.

use std::collections::{HashMap, HashSet};

use ed25519_dalek::VerifyingKey;

use super::note::validate_signer_name;
use super::{CheckpointError, SignedCheckpoint, excerpt, key_hint};
use crate::hash::Digest;
use crate::pb;
use crate::signing::{self, SigningDomain};

/// A node's witness key as registered in the genesis.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Witness {
    /// Raft node id.
    pub node_id: u64,
    /// Name on the witness's signature lines.
    pub name: String,
    /// Policy group the witness counts for.
    pub group: String,
    /// The witness's ed25519 key.
    pub key: VerifyingKey,
    /// [`key_hint`] of `key`, precomputed to match signature lines.
    pub key_hint: [u8; 4],
}

/// The witnesses of a ledger and the policy their cosignatures must satisfy, validated once so
/// that [`WitnessSet::verify`] can never be run against an unsatisfiable or ambiguous policy.
#[derive(Clone, Debug)]
pub struct WitnessSet {
    /// In genesis order, which is also the order of [`PolicyReport::signers`].
    witnesses: Vec<Witness>,
    /// Index into `witnesses` by name.
    by_name: HashMap<String, usize>,
    /// Distinct witnesses needed in total.
    min_total: usize,
    /// `(group, min_signers)` in policy order, so the first unmet group reported is stable.
    groups: Vec<(String, usize)>,
}

/// A witness whose signature on a checkpoint verified.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Cosigner {
    /// Raft node id.
    pub node_id: u64,
    /// Witness name.
    pub name: String,
    /// Policy group.
    pub group: String,
}

/// What [`WitnessSet::verify`] found on a checkpoint that satisfies the policy.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PolicyReport {
    /// Distinct witnesses with a valid signature, in genesis order.
    pub signers: Vec<Cosigner>,
    /// Signature lines that matched no known witness name and key hint (for instance lines of
    /// retired keys, or of witnesses of another policy), which were not checked.
    pub unknown_lines: usize,
}

impl WitnessSet {
    /// Builds the witness set of a genesis: its `nodes` and `checkpoint_policy`.
    ///
    /// Refuses witness names that cannot appear on a signature line, empty groups, keys that
    /// [`signing::parse_public_key`] refuses, duplicate names, keys or node ids, a missing policy,
    /// a `min_total` of zero or above the number of witnesses, and group requirements that are
    /// repeated, name a group without witnesses, or ask for more signers than the group has.
    pub fn from_genesis(genesis: &pb::Genesis) -> Result<Self, CheckpointError> {
        let mut witnesses = Vec::with_capacity(genesis.nodes.len());
        let mut by_name = HashMap::with_capacity(genesis.nodes.len());
        let mut by_key: HashMap<[u8; 32], usize> = HashMap::with_capacity(genesis.nodes.len());
        let mut node_ids = HashSet::with_capacity(genesis.nodes.len());
        for node in &genesis.nodes {
            validate_signer_name(&node.name).map_err(|reason| {
                CheckpointError::InvalidWitnessName {
                    name: excerpt(&node.name),
                    reason,
                }
            })?;
            if node.group.is_empty() {
                return Err(CheckpointError::EmptyWitnessGroup {
                    name: node.name.clone(),
                });
            }
            let key = signing::parse_public_key(&node.ed25519).map_err(|source| {
                CheckpointError::InvalidWitnessKey {
                    name: node.name.clone(),
                    source,
                }
            })?;
            let index = witnesses.len();
            if by_name.insert(node.name.clone(), index).is_some() {
                return Err(CheckpointError::DuplicateWitnessName {
                    name: node.name.clone(),
                });
            }
            if let Some(&first) = by_key.get(key.as_bytes()) {
                let first: &Witness = &witnesses[first];
                return Err(CheckpointError::DuplicateWitnessKey {
                    first: first.name.clone(),
                    second: node.name.clone(),
                });
            }
            by_key.insert(key.to_bytes(), index);
            if !node_ids.insert(node.node_id) {
                return Err(CheckpointError::DuplicateNodeId {
                    node_id: node.node_id,
                });
            }
            witnesses.push(Witness {
                node_id: node.node_id,
                name: node.name.clone(),
                group: node.group.clone(),
                key_hint: key_hint(&key),
                key,
            });
        }

        let policy = genesis
            .checkpoint_policy
            .as_ref()
            .ok_or(CheckpointError::MissingTrustPolicy)?;
        let min_total = usize::try_from(policy.min_total).unwrap_or(usize::MAX);
        if min_total == 0 || min_total > witnesses.len() {
            return Err(CheckpointError::InvalidMinTotal {
                min_total: policy.min_total,
                witnesses: witnesses.len(),
            });
        }
        let mut groups: Vec<(String, usize)> = Vec::with_capacity(policy.groups.len());
        for requirement in &policy.groups {
            if groups.iter().any(|(group, _)| *group == requirement.group) {
                return Err(CheckpointError::DuplicateGroupRequirement {
                    group: requirement.group.clone(),
                });
            }
            let members = witnesses
                .iter()
                .filter(|witness| witness.group == requirement.group)
                .count();
            if members == 0 {
                return Err(CheckpointError::UnknownPolicyGroup {
                    group: requirement.group.clone(),
                });
            }
            let need = usize::try_from(requirement.min_signers).unwrap_or(usize::MAX);
            if need > members {
                return Err(CheckpointError::GroupTooSmall {
                    group: requirement.group.clone(),
                    members,
                    need: requirement.min_signers,
                });
            }
            groups.push((requirement.group.clone(), need));
        }

        Ok(WitnessSet {
            witnesses,
            by_name,
            min_total,
            groups,
        })
    }

    /// The witnesses, in genesis order.
    pub fn witnesses(&self) -> &[Witness] {
        &self.witnesses
    }

    /// The witness called `name`, if any.
    pub fn witness(&self, name: &str) -> Option<&Witness> {
        self.by_name.get(name).map(|&index| &self.witnesses[index])
    }

    /// Distinct witnesses a checkpoint needs in total.
    pub fn min_total(&self) -> usize {
        self.min_total
    }

    /// `(group, min_signers)` for each group requirement, in policy order.
    pub fn group_requirements(&self) -> impl Iterator<Item = (&str, usize)> + '_ {
        self.groups
            .iter()
            .map(|(group, need)| (group.as_str(), *need))
    }

    /// Decides whether `note` is a checkpoint of the log `expected_origin` on the ledger
    /// `ledger_id` that enough witnesses cosigned.
    ///
    /// Each signature line whose name and key hint match a known witness must verify over the
    /// checkpoint body; one that does not fails the whole note with
    /// [`CheckpointError::BadSignature`], since it means tampering or a misbehaving witness. Other
    /// lines are ignored. Each witness counts once however many lines it has; the distinct
    /// signers must then reach `min_total` ([`CheckpointError::QuorumNotMet`]) and every group's
    /// `min_signers` ([`CheckpointError::GroupQuorumNotMet`], first unmet group in policy order).
    pub fn verify(
        &self,
        ledger_id: &Digest,
        note: &SignedCheckpoint,
        expected_origin: &str,
    ) -> Result<PolicyReport, CheckpointError> {
        if note.checkpoint.origin != expected_origin {
            return Err(CheckpointError::OriginMismatch {
                expected: expected_origin.to_owned(),
                found: excerpt(&note.checkpoint.origin),
            });
        }
        // Parsing is canonical, so re-encoding yields the exact bytes that were signed.
        let body = note.checkpoint.body();
        let mut signed = vec![false; self.witnesses.len()];
        let mut unknown_lines = 0;
        for line in &note.signatures {
            let known = self
                .by_name
                .get(&line.name)
                .copied()
                .filter(|&index| self.witnesses[index].key_hint == line.key_hint);
            let Some(index) = known else {
                unknown_lines += 1;
                continue;
            };
            let witness = &self.witnesses[index];
            signing::verify(
                &witness.key,
                SigningDomain::Checkpoint,
                ledger_id,
                body.as_bytes(),
                &line.signature,
            )
            .map_err(|source| CheckpointError::BadSignature {
                witness: witness.name.clone(),
                source,
            })?;
            signed[index] = true;
        }

        let signers: Vec<&Witness> = self
            .witnesses
            .iter()
            .zip(&signed)
            .filter_map(|(witness, &signed)| signed.then_some(witness))
            .collect();
        if signers.len() < self.min_total {
            return Err(CheckpointError::QuorumNotMet {
                have: signers.len(),
                need: self.min_total,
            });
        }
        for (group, need) in &self.groups {
            let have = signers.iter().filter(|w| w.group == *group).count();
            if have < *need {
                return Err(CheckpointError::GroupQuorumNotMet {
                    group: group.clone(),
                    have,
                    need: *need,
                });
            }
        }
        Ok(PolicyReport {
            signers: signers
                .into_iter()
                .map(|witness| Cosigner {
                    node_id: witness.node_id,
                    name: witness.name.clone(),
                    group: witness.group.clone(),
                })
                .collect(),
            unknown_lines,
        })
    }
}

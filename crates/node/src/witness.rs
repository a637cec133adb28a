//! Witness cosigning: each node signs the checkpoints of its own applied ledger, never two
//! inconsistent ones, and sends the cosignature through Raft so every node holds it.
//!
//! About once per interval, if the ledger grew since the last checkpoint this node signed, the
//! witness picks a size ([`size_to_sign`]: another witness's unpublished checkpoint to second,
//! or its applied size), derives the checkpoint there (identical on every node), checks it
//! against the last one it signed with a consistency proof (`WitnessState`), persists the new
//! state durably, and only then releases the signature.

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::watch;
use wasteledger_core::checkpoint::{Checkpoint, WitnessState, cosign};
use wasteledger_core::hash::Digest;
use wasteledger_core::signing::SigningKey;
use wasteledger_store::{DurableDb, StoreError};

use crate::node::Node;
use crate::types::{LedgerRequest, LedgerResponse};

const LOCAL_TREE: &str = "local";
const LAST_SIGNED: &[u8] = b"witness/last_signed";

/// Loads this node's witness state (what it last signed). Local to the node, never replicated
/// and never part of a snapshot.
pub fn load_state(db: &DurableDb) -> Result<WitnessState, StoreError> {
    let tree = db.raw_tree(LOCAL_TREE)?;
    match tree.get(LAST_SIGNED)? {
        None => Ok(WitnessState::new()),
        Some(v) if v.len() == 40 => {
            let mut size = [0u8; 8];
            size.copy_from_slice(&v[..8]);
            let root = Digest::from_slice(&v[8..]).ok_or(StoreError::Corrupt("witness root"))?;
            Ok(WitnessState::restore(u64::from_be_bytes(size), root))
        }
        Some(_) => Err(StoreError::Corrupt("witness state")),
    }
}

/// Persists the witness state durably (fsync) before any signature based on it is released.
pub fn save_state(db: &DurableDb, size: u64, root: &Digest) -> Result<(), StoreError> {
    let tree = db.raw_tree(LOCAL_TREE)?;
    let mut v = size.to_be_bytes().to_vec();
    v.extend_from_slice(root.as_bytes());
    tree.insert(LAST_SIGNED, v)?;
    db.sync()?;
    Ok(())
}

/// What one witness round did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RoundOutcome {
    /// Nothing new to sign.
    Idle,
    /// Signed and proposed the checkpoint at this size.
    Signed(u64),
    /// Refused to sign (the witness rule caught an inconsistency).
    Refused(String),
}

/// The ledger size a witness signs this round, given its `applied` size, the size it
/// `last_signed`, the `published` size and the `newest_cosigned` size (by any witness).
///
/// A checkpoint is published when enough witnesses sign the *same* size. Each signing its own
/// applied size, under load they never meet (their rounds fall at different sizes), and the
/// published checkpoint fell behind by up to 15,000 entries (18 s) in a benchmark. So a
/// witness first seconds the newest checkpoint another witness signed that is not yet
/// published, if it is newer than its own last signature and it has applied it; otherwise it
/// signs its applied size and others second it next round.
pub fn size_to_sign(
    applied: u64,
    last_signed: Option<u64>,
    published: Option<u64>,
    newest_cosigned: Option<u64>,
) -> u64 {
    newest_cosigned
        .filter(|&n| {
            n <= applied && last_signed.is_none_or(|l| n > l) && published.is_none_or(|p| n > p)
        })
        .unwrap_or(applied)
}

/// One witness round: sign the checkpoint of the applied ledger if it is new and consistent,
/// or send again a signature that was not delivered (`delivered` is the last size whose
/// cosignature reached the ledger). Re-signing the same checkpoint is allowed; signing a
/// different root for a signed size never is.
pub async fn round(
    node: &Node,
    key: &SigningKey,
    name: &str,
    state: &mut WitnessState,
    delivered: &mut Option<u64>,
) -> Result<RoundOutcome, String> {
    let last = state.last_signed();
    let pending = last.map(|(l, _)| l).filter(|l| Some(*l) != *delivered);
    let prepared = node
        .state_machine
        .with_store(|s| {
            let applied = s.merkle_size();
            let size = size_to_sign(
                applied,
                last.map(|(l, _)| l),
                s.published_size().ok().flatten(),
                s.newest_cosigned_size().ok().flatten(),
            );
            let grew = last.is_none_or(|(l, _)| size > l);
            if size == 0 || (!grew && pending.is_none()) {
                return None;
            }
            let checkpoint: Checkpoint = s.checkpoint_at(size)?;
            let proof = match last {
                Some((l, _)) if l > 0 => s.consistency_proof(l, size)?,
                _ => Vec::new(),
            };
            Some((checkpoint, proof))
        })
        .map_err(|e| e.to_string())?;
    let Some((checkpoint, proof)) = prepared else {
        return Ok(RoundOutcome::Idle);
    };
    if let Err(e) = state.check_and_advance(&checkpoint, &proof) {
        tracing::error!(error = %e, size = checkpoint.size, "witness refuses to sign an inconsistent checkpoint");
        return Ok(RoundOutcome::Refused(e.to_string()));
    }
    save_state(node.db(), checkpoint.size, &checkpoint.root).map_err(|e| e.to_string())?;
    let ledger_id = node.state_machine.genesis().ledger_id;
    let sig = cosign(key, name, &ledger_id, &checkpoint);
    let mut signature = sig.key_hint.to_vec();
    signature.extend_from_slice(&sig.signature);
    let request = LedgerRequest::Cosign {
        size: checkpoint.size,
        root: checkpoint.root.0,
        map_root: checkpoint.map_root.0,
        time_ms: checkpoint.time_ms,
        witness: name.to_owned(),
        signature,
    };
    match node.propose_anywhere(request).await {
        Ok(LedgerResponse::Cosigned { .. }) => {
            *delivered = Some(checkpoint.size);
            Ok(RoundOutcome::Signed(checkpoint.size))
        }
        Ok(LedgerResponse::CosignRefused { reason }) => Ok(RoundOutcome::Refused(reason)),
        Ok(other) => Err(format!("unexpected answer to a cosignature: {other:?}")),
        Err(e) => Err(e.to_string()),
    }
}

/// Runs witness rounds every `interval` until `stop` turns true.
pub async fn run(
    node: Arc<Node>,
    key: SigningKey,
    name: String,
    interval: Duration,
    mut stop: watch::Receiver<bool>,
) {
    let mut state = match load_state(node.db()) {
        Ok(s) => s,
        Err(e) => {
            tracing::error!(error = %e, "witness state unreadable; this node will not cosign");
            return;
        }
    };
    let mut delivered = None;
    loop {
        tokio::select! {
            _ = tokio::time::sleep(interval) => {}
            _ = stop.changed() => {}
        }
        if *stop.borrow() {
            return;
        }
        match round(&node, &key, &name, &mut state, &mut delivered).await {
            Ok(RoundOutcome::Signed(size)) => tracing::debug!(size, "cosigned checkpoint"),
            Ok(RoundOutcome::Refused(reason)) => tracing::warn!(%reason, "cosignature refused"),
            Ok(RoundOutcome::Idle) => {}
            // Not delivered (no leader, network): the next round sends it again.
            Err(e) => tracing::debug!(error = %e, "cosignature not delivered this round"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::size_to_sign;

    #[test]
    fn a_witness_seconds_an_unpublished_newer_checkpoint_it_has_applied() {
        // Another witness signed 1,000; this one last signed 900 and has applied 1,040.
        assert_eq!(
            size_to_sign(1_040, Some(900), Some(800), Some(1_000)),
            1_000
        );
        // First signature of this witness.
        assert_eq!(size_to_sign(1_040, None, None, Some(1_000)), 1_000);
    }

    #[test]
    fn otherwise_it_signs_its_applied_size() {
        // Nothing cosigned yet.
        assert_eq!(size_to_sign(1_040, None, None, None), 1_040);
        // The newest cosignature is its own.
        assert_eq!(
            size_to_sign(1_040, Some(1_000), Some(800), Some(1_000)),
            1_040
        );
        // Already published: nothing to complete.
        assert_eq!(
            size_to_sign(1_040, Some(900), Some(1_000), Some(1_000)),
            1_040
        );
        // Not applied here yet: it cannot derive that checkpoint.
        assert_eq!(
            size_to_sign(1_040, Some(900), Some(800), Some(1_100)),
            1_040
        );
        // Older than its own last signature: a witness never signs backwards.
        assert_eq!(
            size_to_sign(1_040, Some(1_020), Some(800), Some(1_000)),
            1_040
        );
    }
}

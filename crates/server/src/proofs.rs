//! The proof side of `LedgerService`: the published checkpoint, custody proofs, and RFC 9162
//! inclusion and consistency proofs between tree sizes.

use tonic::Status;
use wasteledger_core::checkpoint::SignedCheckpoint;
use wasteledger_core::entry::leaf_hash;
use wasteledger_core::pb;
use wasteledger_core::proof::{ProofSource, build_custody_proof};
use wasteledger_store::state::LedgerStore;

use crate::read::entry_at;
use crate::{internal, status};

/// The latest published (policy-meeting) checkpoint, if any.
pub(crate) fn published(store: &LedgerStore) -> Result<Option<SignedCheckpoint>, Status> {
    store
        .published_checkpoint()
        .map_err(|e| internal(format!("stored checkpoint unreadable: {e}")))
}

/// The published checkpoint as a note, when it covers ledger index `index`. A receipt asks
/// this for every accepted event, and the entry just committed is usually not covered yet, so
/// the size is read first and the checkpoint (roots, cosignatures) built only when it is.
pub(crate) fn note_covering(
    store: &LedgerStore,
    index: u64,
) -> Result<Option<pb::SignedNote>, Status> {
    if stored_published_size(store)?.is_none_or(|size| size <= index) {
        return Ok(None);
    }
    Ok(published(store)?.map(|c| note(&c)))
}

fn stored_published_size(store: &LedgerStore) -> Result<Option<u64>, Status> {
    store
        .published_size()
        .map_err(|e| internal(format!("stored checkpoint unreadable: {e}")))
}

fn published_size(store: &LedgerStore) -> Result<u64, Status> {
    stored_published_size(store)?.ok_or_else(none_published)
}

pub(crate) fn none_published() -> Status {
    status(
        tonic::Code::Unavailable,
        "checkpoint.none_published",
        "no checkpoint has met the trust policy yet; witnesses cosign about once a second, retry shortly",
    )
}

pub(crate) fn note(c: &SignedCheckpoint) -> pb::SignedNote {
    pb::SignedNote {
        size: c.checkpoint.size,
        note: c.to_note(),
    }
}

/// The custody proof of `tracking` against the published checkpoint.
pub(crate) fn custody_proof(
    store: &LedgerStore,
    tracking: &wasteledger_core::tracking::Tracking,
) -> Result<pb::CustodyProof, Status> {
    let checkpoint = published(store)?.ok_or_else(none_published)?;
    build_custody_proof(store, tracking, &checkpoint).map_err(|e| match e {
        wasteledger_core::proof::ProofBuildError::NotFound(_) => status(
            tonic::Code::NotFound,
            "query.unknown_manifest",
            format!("{e}; a manifest created in the last second may not be checkpointed yet"),
        ),
        other => internal(other.to_string()),
    })
}

/// A requested tree size: 0 means the published checkpoint's, and any size must be one this
/// node has.
fn resolve_size(store: &LedgerStore, requested: u64, what: &str) -> Result<u64, Status> {
    let size = if requested == 0 {
        published_size(store)?
    } else {
        requested
    };
    let have = store.merkle_size();
    if size > have {
        return Err(status(
            tonic::Code::OutOfRange,
            "query.tree_size",
            format!(
                "{what} {size} is beyond this node's ledger size {have}; retry later or ask another node"
            ),
        ));
    }
    Ok(size)
}

fn checkpoint_of_size(store: &LedgerStore, size: u64) -> Result<Option<pb::SignedNote>, Status> {
    Ok(published(store)?
        .filter(|c| c.checkpoint.size == size)
        .map(|c| note(&c)))
}

/// Inclusion proof of the entry at `index` in the tree of `tree_size` (0 = published).
pub(crate) fn inclusion_proof(
    store: &LedgerStore,
    index: u64,
    tree_size: u64,
) -> Result<pb::InclusionProof, Status> {
    let size = resolve_size(store, tree_size, "tree_size")?;
    if index >= size {
        return Err(status(
            tonic::Code::OutOfRange,
            "query.index",
            format!("index {index} is not in a tree of size {size}"),
        ));
    }
    let entry = entry_at(store, index)?;
    let path = store
        .inclusion_proof(index, size)
        .ok_or_else(|| internal(format!("audit path of {index} at {size} missing")))?;
    let (root, _) = store
        .roots_at(size)
        .ok_or_else(|| internal(format!("root at {size} missing")))?;
    Ok(pb::InclusionProof {
        index,
        tree_size: size,
        root: root.0.to_vec(),
        leaf_hash: leaf_hash(&entry).0.to_vec(),
        entry,
        path: path.iter().map(|d| d.0.to_vec()).collect(),
        checkpoint: checkpoint_of_size(store, size)?,
    })
}

/// Consistency proof from `old_size` to `new_size` (0 = published).
pub(crate) fn consistency_proof(
    store: &LedgerStore,
    old_size: u64,
    new_size: u64,
) -> Result<pb::ConsistencyProof, Status> {
    let new_size = resolve_size(store, new_size, "new_size")?;
    if old_size == 0 || old_size > new_size {
        return Err(status(
            tonic::Code::InvalidArgument,
            "query.tree_size",
            format!("old_size must be in 1..={new_size}, got {old_size}"),
        ));
    }
    let path = store
        .consistency_proof(old_size, new_size)
        .ok_or_else(|| internal(format!("consistency {old_size}->{new_size} missing")))?;
    let root = |size| {
        store
            .roots_at(size)
            .map(|(r, _)| r.0.to_vec())
            .ok_or_else(|| internal(format!("root at {size} missing")))
    };
    Ok(pb::ConsistencyProof {
        old_size,
        new_size,
        old_root: root(old_size)?,
        new_root: root(new_size)?,
        path: path.iter().map(|d| d.0.to_vec()).collect(),
    })
}

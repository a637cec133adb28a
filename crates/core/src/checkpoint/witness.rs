//! The witness rule: a witness never cosigns two checkpoints that are inconsistent with each
//! other, so that a forked or rewritten ledger cannot collect a quorum of cosignatures.

use super::Checkpoint;
use crate::hash::Digest;
use crate::merkle::{self, Blake3Hasher, MerkleError, MerkleHasher};

/// The last checkpoint a witness cosigned: all it needs to remember to keep the rule.
///
/// A node persists [`WitnessState::last_signed`] after each successful
/// [`WitnessState::check_and_advance`] and before releasing the signature, and restores it with
/// [`WitnessState::restore`] on start; otherwise a restart would let it sign a fork.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct WitnessState {
    /// `(size, root)` of the last cosigned checkpoint, `None` for a witness that never signed.
    last_signed: Option<(u64, Digest)>,
}

/// Why a witness refuses to cosign a checkpoint.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum WitnessError {
    /// The checkpoint is smaller than one already signed.
    #[error(
        "refusing rollback: checkpoint has size {size}, but this witness already signed size {signed_size}"
    )]
    Rollback {
        /// Size of the last signed checkpoint.
        signed_size: u64,
        /// Size of the offered checkpoint.
        size: u64,
    },
    /// The checkpoint has the size of the last signed one but another root.
    #[error(
        "refusing fork: this witness already signed size {size} with root {signed_root}, not {root}; signing both would be two inconsistent checkpoints"
    )]
    Fork {
        /// The common size.
        size: u64,
        /// Root of the last signed checkpoint.
        signed_root: Digest,
        /// Root of the offered checkpoint.
        root: Digest,
    },
    /// The consistency proof from the last signed checkpoint does not verify.
    #[error(
        "refusing checkpoint of size {size}: the consistency proof from the signed size {signed_size} does not verify ({source})"
    )]
    Inconsistent {
        /// Size of the last signed checkpoint.
        signed_size: u64,
        /// Size of the offered checkpoint.
        size: u64,
        /// Why the proof failed.
        source: MerkleError,
    },
    /// A checkpoint of the empty tree carries a root other than the empty tree's.
    #[error("refusing checkpoint of size 0 with root {root}: the empty tree's root is {expected}")]
    EmptyTreeRoot {
        /// The offered root.
        root: Digest,
        /// The root of the empty tree.
        expected: Digest,
    },
}

impl WitnessState {
    /// A witness that has never signed: it accepts any well-formed first checkpoint.
    pub fn new() -> Self {
        WitnessState::default()
    }

    /// A witness whose last cosigned checkpoint had `size` and `root` (as persisted).
    pub fn restore(size: u64, root: Digest) -> Self {
        WitnessState {
            last_signed: Some((size, root)),
        }
    }

    /// `(size, root)` of the last cosigned checkpoint, to persist; `None` if it never signed.
    pub fn last_signed(&self) -> Option<(u64, Digest)> {
        self.last_signed
    }

    /// Checks that the witness may cosign `checkpoint`, and if so records it as the last signed.
    ///
    /// `consistency_proof` is the RFC 9162 proof from the last signed tree to the checkpoint's;
    /// it is only looked at when the checkpoint is larger than a non-empty last signed tree
    /// (every tree extends the empty one, and an equal size needs no proof).
    ///
    /// Accepted: any first checkpoint, the same size and root again (so a lost signature can be
    /// re-issued), and a larger tree with a valid consistency proof. Refused: a smaller size
    /// ([`WitnessError::Rollback`]), the same size with another root ([`WitnessError::Fork`]), a
    /// larger tree whose proof fails ([`WitnessError::Inconsistent`]), and a size-0 checkpoint
    /// whose root is not the empty tree's ([`WitnessError::EmptyTreeRoot`]). On refusal the state
    /// is unchanged.
    pub fn check_and_advance(
        &mut self,
        checkpoint: &Checkpoint,
        consistency_proof: &[Digest],
    ) -> Result<(), WitnessError> {
        let (size, root) = (checkpoint.size, checkpoint.root);
        // No tree of size 0 has another root; signing one would vouch for a tree that cannot be.
        if size == 0 && root != Blake3Hasher::empty_root() {
            return Err(WitnessError::EmptyTreeRoot {
                root,
                expected: Blake3Hasher::empty_root(),
            });
        }
        if let Some((signed_size, signed_root)) = self.last_signed {
            if size < signed_size {
                return Err(WitnessError::Rollback { signed_size, size });
            }
            if size == signed_size && root != signed_root {
                return Err(WitnessError::Fork {
                    size,
                    signed_root,
                    root,
                });
            }
            // The merkle verifier refuses old size 0: no proof is needed from the empty tree.
            if size > signed_size && signed_size > 0 {
                merkle::verify_consistency::<Blake3Hasher>(
                    signed_size,
                    size,
                    &signed_root,
                    &root,
                    consistency_proof,
                )
                .map_err(|source| WitnessError::Inconsistent {
                    signed_size,
                    size,
                    source,
                })?;
            }
        }
        self.last_signed = Some((size, root));
        Ok(())
    }
}

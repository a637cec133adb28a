//! An in-memory ledger: the reference implementation of the apply path and the source of
//! custody proofs in tests, examples and benchmarks.
//!
//! The replicated node keeps the same state in sled; this type is the executable model it is
//! checked against. Everything it stores is derived by [`evaluate`] and the Merkle and map
//! structures, so both implementations agree by construction on roots and proofs.

use std::sync::Arc;

use crate::checkpoint::Checkpoint;
use crate::custody::ManifestState;
use crate::entry::{LedgerEntry, chain_link, leaf_hash};
use crate::envelope::Subject;
use crate::genesis::Genesis;
use crate::hash::Digest;
use crate::ledger::{Decision, LedgerView, Rejection, SubjectIndex, evaluate};
use crate::map::{CompletenessMap, MemMapStore};
use crate::merkle::{Blake3Hasher, MemNodeStore, MerkleTree};
use crate::pb;
use crate::proof::ProofSource;
use crate::registry::PartyRecord;
use crate::tracking::Tracking;

/// What a client gets back once its event is committed and applied.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Receipt {
    /// Ledger index of the entry.
    pub index: u64,
    /// Event hash.
    pub event_hash: Digest,
    /// Merkle leaf hash of the entry.
    pub leaf_hash: Digest,
    /// Tree size that includes it (index + 1 at the time of apply).
    pub tree_size: u64,
}

/// An in-memory ledger.
pub struct MemoryLedger {
    genesis: Genesis,
    entries: Vec<Vec<u8>>,
    tree: MerkleTree<Blake3Hasher, MemNodeStore>,
    map: CompletenessMap<MemMapStore>,
    chain_head: Digest,
    state: SubjectIndex,
    last_sequenced_at: i64,
}

impl MemoryLedger {
    /// An empty ledger for this genesis.
    pub fn new(genesis: Genesis) -> MemoryLedger {
        MemoryLedger {
            chain_head: genesis.ledger_id,
            genesis,
            entries: Vec::new(),
            tree: MerkleTree::new(MemNodeStore::default()),
            map: CompletenessMap::new(MemMapStore::default()),
            state: SubjectIndex::default(),
            last_sequenced_at: 0,
        }
    }

    /// The genesis.
    pub fn genesis(&self) -> &Genesis {
        &self.genesis
    }

    /// Decides and, if accepted, appends an event. `sequenced_at` is the leader's time stamp;
    /// it is clamped to be non-decreasing, as the replicated state machine does.
    pub fn submit(
        &mut self,
        signed: &pb::SignedEvent,
        sequenced_at: i64,
    ) -> Result<Receipt, Rejection> {
        let sequenced_at = sequenced_at.max(self.last_sequenced_at);
        let decision = evaluate(&self.genesis, self, signed, sequenced_at)?;
        Ok(self.append(signed, sequenced_at, decision))
    }

    fn append(
        &mut self,
        signed: &pb::SignedEvent,
        sequenced_at: i64,
        decision: Decision,
    ) -> Receipt {
        let index = self.entries.len() as u64;
        // Signature fields were length-checked by `evaluate`, so building the entry cannot fail;
        // fall back to an empty signature list rather than panicking if that ever changed.
        let entry =
            LedgerEntry::new(index, sequenced_at, self.chain_head, signed).unwrap_or_else(|_| {
                LedgerEntry {
                    index,
                    sequenced_at,
                    chain_prev: self.chain_head,
                    body: signed.body.clone(),
                    signatures: Vec::new(),
                }
            });
        let bytes = entry.encode();
        let leaf = leaf_hash(&bytes);
        self.tree.append_leaf_hash(leaf);
        self.chain_head = chain_link(&self.chain_head, &leaf);
        let key = decision.event.subject.map_key();
        // Map versions are tree sizes: the map as of size n reflects entries 0..n.
        let _ = self.map.insert(key, decision.state.head(), index + 1);
        self.state.record(&decision, index);
        self.entries.push(bytes);
        self.last_sequenced_at = sequenced_at;
        Receipt {
            index,
            event_hash: decision.event.hash,
            leaf_hash: leaf,
            tree_size: index + 1,
        }
    }

    /// The unsigned checkpoint of the current tree.
    pub fn checkpoint(
        &self,
        time_ms: i64,
    ) -> Result<Checkpoint, crate::checkpoint::CheckpointError> {
        let size = self.size();
        Checkpoint::new(
            self.genesis.ledger_name(),
            size,
            self.tree.root(),
            self.map.root(),
            time_ms,
        )
    }

    /// The chain link after the last entry.
    pub fn chain_head(&self) -> Digest {
        self.chain_head
    }

    /// The Merkle tree.
    pub fn tree(&self) -> &MerkleTree<Blake3Hasher, MemNodeStore> {
        &self.tree
    }

    /// The completeness map.
    pub fn map(&self) -> &CompletenessMap<MemMapStore> {
        &self.map
    }

    /// All entries' leaf bytes.
    pub fn entries(&self) -> &[Vec<u8>] {
        &self.entries
    }

    /// The ledger time of the last entry.
    pub fn last_sequenced_at(&self) -> i64 {
        self.last_sequenced_at
    }
}

impl LedgerView for MemoryLedger {
    fn size(&self) -> u64 {
        self.entries.len() as u64
    }

    fn manifest(&self, tracking: &Tracking) -> Option<Arc<ManifestState>> {
        self.state.manifest(tracking)
    }

    fn party_record(&self, registry_id: &str) -> Option<Arc<PartyRecord>> {
        self.state.party_record(registry_id)
    }

    fn key_owner(&self, key_id: &Digest) -> Option<String> {
        self.state.key_owner(key_id)
    }

    fn event_index(&self, subject: &Subject, event_hash: &Digest) -> Option<u64> {
        self.state.event_index(subject, event_hash)
    }
}

impl ProofSource for MemoryLedger {
    fn ledger_id(&self) -> Digest {
        self.genesis.ledger_id
    }

    fn entry(&self, index: u64) -> Option<Vec<u8>> {
        self.entries.get(usize::try_from(index).ok()?).cloned()
    }

    fn inclusion_proof(&self, index: u64, size: u64) -> Option<Vec<Digest>> {
        self.tree.inclusion_proof(index, size).ok()
    }

    fn map_proof(&self, key: &Digest, size: u64) -> Option<Vec<Digest>> {
        self.map.prove(key, size).ok().map(|p| p.siblings)
    }

    fn subject_indexes(&self, subject: &Subject) -> Vec<u64> {
        match subject {
            Subject::Manifest(t) => self
                .state
                .manifest_ref(t)
                .map(|m| m.events.iter().map(|e| e.index).collect())
                .unwrap_or_default(),
            Subject::Party(id) => self
                .state
                .party_ref(id)
                .map(|p| p.event_indexes.clone())
                .unwrap_or_default(),
        }
    }
}

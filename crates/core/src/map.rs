//! The completeness map: a versioned, compact sparse Merkle tree that commits, for every subject
//! of the ledger (every manifest and every party), the hash of that subject's head event.
//!
//! A Merkle inclusion proof shows that an event *is* in the ledger; it cannot show that no later
//! event of the same manifest exists. The completeness map closes that gap: each checkpoint
//! commits to the map root, and a membership proof of `subject → head event hash` against that
//! root shows which event was the subject's last one as of the checkpoint, so a verifier who
//! follows the event chain back from that head knows it has seen the whole chain.
//!
//! This module owns
//!
//! - the tree shape and hash definition below (a wire contract: an offline verifier recomputes
//!   roots from it);
//! - [`CompletenessMap`], which inserts and updates leaves and builds membership and
//!   non-membership proofs at the latest or any earlier version, over a [`MapNodeStore`]
//!   ([`MemMapStore`] in memory; disk-backed stores live in crates above);
//! - the stateless verifiers [`verify_membership`] and [`verify_non_membership`].
//!
//! # Tree and hash definition
//!
//! Keys are 256-bit [`Digest`]s (in the ledger, [`Purpose::MapKey`] hashes of subject ids).
//! Bit `i` of a key is taken most-significant-bit first: bit 0 is the top bit of byte 0, bit 255
//! the low bit of byte 31. A key's leaf lies below the root along the path given by its bits,
//! bit value 0 going left and 1 going right; a node at depth `d` is the root of the subtree of all
//! keys that share its first `d` bits. The tree is *compact*: a subtree holding exactly one leaf
//! is represented by that leaf, at whatever depth.
//!
//! - hash(empty subtree) = `Digest::ZERO` (32 zero bytes)
//! - hash(subtree with exactly one leaf `(k, v)`) = `leaf_hash(k, v)` =
//!   `Purpose::MapLeaf.hash_parts(&[k, v])` — regardless of the subtree's depth (compact form)
//! - hash(subtree with ≥ 2 leaves) =
//!   `Purpose::MapNode.hash_parts(&[hash(left child), hash(right child)])`
//! - root = hash(whole tree, of depth 0). The root of the empty map is `ZERO`.
//!
//! A **membership proof** for key `k` is the list of sibling hashes from depth 0 (the level of the
//! root's children) down to the depth `d` at which `k`'s leaf sits, so `siblings.len() == d` with
//! `0 ≤ d ≤ 256`; `siblings[i]` is the hash of the child at depth `i + 1` that is *not* on `k`'s
//! path. Verification: `h = leaf_hash(k, v)`; for `i` in `(0..d).rev()`: if bit `i` of `k` is 1,
//! `h = MapNode(siblings[i], h)`, else `h = MapNode(h, siblings[i])`; accept iff `h == root`.
//! A proof longer than 256 is rejected.
//!
//! A **non-membership proof** for `k` has the same siblings and a *terminal*: either
//! [`MapTerminal::Empty`] (`k`'s path reaches an empty subtree at depth `d`, start from
//! `h = ZERO`) or [`MapTerminal::Leaf`] `(k', v')` with `k' ≠ k` sharing `k`'s first `d` bits
//! (`k`'s path reaches the single leaf of another key, start from `h = leaf_hash(k', v')`). The
//! fold up to the root is the same as for membership.
//!
//! Soundness rests on blake3's collision resistance and on two properties of the definition:
//! leaves and interior nodes hash in separate domains ([`Purpose::MapLeaf`] vs
//! [`Purpose::MapNode`]), so a proof cannot stop early at an interior node or run on past a
//! leaf; and the leaf hash contains the full key, so a compact leaf found at a shallow depth
//! cannot be claimed for another key that shares its path.
//!
//! # Versions
//!
//! The map changes with every ledger entry, but proofs are asked for against older checkpoints.
//! Every insert therefore carries a `version` (non-decreasing; in the ledger, the tree size after
//! the entry), and the [`MapNodeStore`] keeps every node's earlier states, so that roots, lookups
//! and proofs work "as of" any version with the same O(depth) cost as at the latest one.
//!
//! Nothing here does I/O; a [`MapNodeStore`] is the only state.

use std::collections::HashMap;
use std::fmt;

use crate::hash::{Digest, Purpose};

/// Number of bits in a key: the greatest depth a leaf can sit at, and so the greatest length of
/// a proof.
pub const KEY_BITS: u16 = 256;

/// Bit `i` of `key`, most-significant-bit first (bit 0 is the top bit of byte 0): `true` means
/// the key lies in the right subtree at depth `i`.
///
/// Bits at `i ≥ 256` do not exist; they read as `false` so that callers never have to handle a
/// panic for an index that no tree path can reach.
pub fn bit(key: &Digest, i: u16) -> bool {
    let i = usize::from(i);
    key.0
        .get(i / 8)
        .is_some_and(|byte| byte & (0x80 >> (i % 8)) != 0)
}

/// `key` with every bit at index `≥ depth` cleared: the position of the depth-`depth` node on the
/// key's path, as used to address nodes in a [`MapNodeStore`].
///
/// `prefix_of(key, 0)` is [`Digest::ZERO`] (the root) and `prefix_of(key, 256)` is `key`.
pub fn prefix_of(key: &Digest, depth: u16) -> Digest {
    let depth = usize::from(depth);
    let (full_bytes, partial_bits) = (depth / 8, depth % 8);
    let mut out = *key;
    for (i, byte) in out.0.iter_mut().enumerate().skip(full_bytes) {
        // The first byte past the kept prefix keeps its top `partial_bits` bits; later ones are
        // cleared entirely (`!(0xFF >> 0)` is 0, so a byte-aligned depth clears it too).
        *byte &= if i == full_bytes {
            !(0xFF_u8 >> partial_bits)
        } else {
            0
        };
    }
    out
}

/// The hash of a subtree holding the single leaf `key → value`, at any depth.
///
/// `Purpose::MapLeaf.hash_parts(&[key, value])`: the full key is hashed in, which is what makes a
/// compact leaf unforgeable for another key on the same path.
pub fn leaf_hash(key: &Digest, value: &Digest) -> Digest {
    Purpose::MapLeaf.hash_parts(&[key.as_bytes(), value.as_bytes()])
}

/// The hash of a subtree with at least two leaves, from the hashes of its two children.
///
/// `Purpose::MapNode.hash_parts(&[left, right])`; an empty child contributes [`Digest::ZERO`].
pub fn interior_hash(left: &Digest, right: &Digest) -> Digest {
    Purpose::MapNode.hash_parts(&[left.as_bytes(), right.as_bytes()])
}

/// Errors of the completeness map and of its proof verifiers.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum MapError {
    /// An insert used a version older than one already written. Versions must not go back:
    /// earlier states are kept for proofs, and rewriting one would change roots that
    /// checkpoints may already have signed.
    #[error("map version {version} is older than the latest version {latest}")]
    VersionRegression {
        /// The version the insert asked for.
        version: u64,
        /// The latest version already written.
        latest: u64,
    },
    /// A membership proof was asked for a key that is not in the map at that version.
    #[error("key is not in the completeness map at the requested version")]
    KeyAbsent,
    /// A non-membership proof was asked for a key that is in the map at that version.
    #[error("key is in the completeness map at the requested version")]
    KeyPresent,
    /// A proof has more siblings than a 256-bit key has bits, so no tree can produce it.
    #[error("map proof has {len} siblings, more than the {max} bits of a key", max = KEY_BITS)]
    ProofTooLong {
        /// Number of siblings in the proof.
        len: usize,
    },
    /// A non-membership proof ends in a leaf of the very key it claims is absent.
    #[error("non-membership proof ends in a leaf of the key it claims is absent")]
    TerminalIsKey,
    /// A non-membership proof ends in a leaf whose key does not share the queried key's path
    /// down to the proof's depth, so it cannot be the leaf where that key's path ends.
    #[error("non-membership proof ends in a leaf off the queried key's path at depth {depth}")]
    TerminalOffPath {
        /// The depth at which the proof's terminal leaf sits.
        depth: u16,
    },
    /// The proof, folded up from the leaf, does not give the expected root.
    #[error("map proof does not lead to the expected root")]
    RootMismatch,
    /// The store holds a node that no valid tree can have at that place (an interior node
    /// below the last key bit, or a leaf whose key is off the path it is stored on).
    #[error("completeness-map store is inconsistent at depth {depth}")]
    CorruptStore {
        /// Depth of the inconsistent node.
        depth: u16,
    },
}

/// A node as held in a [`MapNodeStore`].
///
/// Leaves are stored with their key and value rather than their hash: a lookup must compare the
/// key, and a non-membership proof must show the leaf that occupies the path.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MapNode {
    /// The subtree holds exactly one leaf.
    Leaf {
        /// The leaf's key.
        key: Digest,
        /// The leaf's value (in the ledger, the subject's head event hash).
        value: Digest,
    },
    /// The subtree holds two or more leaves.
    Internal {
        /// The subtree's hash, `MapNode(left, right)`.
        hash: Digest,
    },
}

impl MapNode {
    /// The hash of the subtree this node stands for.
    pub fn hash(&self) -> Digest {
        match self {
            MapNode::Leaf { key, value } => leaf_hash(key, value),
            MapNode::Internal { hash } => *hash,
        }
    }
}

/// The hash of a possibly empty subtree.
fn subtree_hash(node: Option<MapNode>) -> Digest {
    node.map_or(Digest::ZERO, |node| node.hash())
}

/// Where a [`CompletenessMap`] keeps its nodes, with their history.
///
/// Node `(depth, prefix)` is the root of the subtree of keys whose first `depth` bits are those of
/// `prefix` (all later bits of `prefix` are zero, see [`prefix_of`]). It is stored as a
/// [`MapNode::Leaf`] if the subtree holds exactly one key, as [`MapNode::Internal`] if it holds two
/// or more, and is absent if empty.
///
/// Each position has a history: a write at `version` is the node's state from `version` on, until
/// the next write. A write at a version equal to that of the position's last write replaces it,
/// since several keys may change at the same version.
///
/// A store cannot say "I do not know": a missing node reads as an empty subtree. Durability,
/// batching and I/O errors are the implementation's concern; a disk-backed store should commit
/// the writes of one insert atomically, and together with the ledger entry of that version.
pub trait MapNodeStore {
    /// The node at `(depth, prefix)` as of `version` (the latest write with a version
    /// `<= version`), or `None` if the subtree was empty at that version.
    fn get(&self, depth: u16, prefix: &Digest, version: u64) -> Option<MapNode>;

    /// Records the node at `(depth, prefix)` from `version` on; `None` records that the subtree
    /// became empty.
    fn put(&mut self, depth: u16, prefix: &Digest, version: u64, node: Option<MapNode>);

    /// Appends to `found` the node at each of `positions` (`(depth, prefix)`) as of `version`,
    /// in order: the same answers as [`get`](Self::get) one position at a time.
    ///
    /// The map asks for a stretch of a path at once. A store behind a lock should override
    /// this to take the lock once: each lock is an atomic read-modify-write, which on x86 is a
    /// full fence, so lookups separated by one cannot overlap their cache misses, and in a
    /// large index every lookup misses.
    fn get_many(
        &self,
        positions: &[(u16, Digest)],
        version: u64,
        found: &mut Vec<Option<MapNode>>,
    ) {
        found.extend(
            positions
                .iter()
                .map(|(depth, prefix)| self.get(*depth, prefix, version)),
        );
    }

    /// Records each of `writes` (`(depth, prefix, node)`) from `version` on, in order: the
    /// same as [`put`](Self::put) for each. Override it for the reason given at
    /// [`get_many`](Self::get_many).
    fn put_many(&mut self, writes: &[(u16, Digest, Option<MapNode>)], version: u64) {
        for (depth, prefix, node) in writes {
            self.put(*depth, prefix, version, *node);
        }
    }
}

impl<S: MapNodeStore + ?Sized> MapNodeStore for &mut S {
    fn get(&self, depth: u16, prefix: &Digest, version: u64) -> Option<MapNode> {
        (**self).get(depth, prefix, version)
    }

    fn put(&mut self, depth: u16, prefix: &Digest, version: u64, node: Option<MapNode>) {
        (**self).put(depth, prefix, version, node);
    }

    fn get_many(
        &self,
        positions: &[(u16, Digest)],
        version: u64,
        found: &mut Vec<Option<MapNode>>,
    ) {
        (**self).get_many(positions, version, found);
    }

    fn put_many(&mut self, writes: &[(u16, Digest, Option<MapNode>)], version: u64) {
        (**self).put_many(writes, version);
    }
}

impl<S: MapNodeStore + ?Sized> MapNodeStore for Box<S> {
    fn get(&self, depth: u16, prefix: &Digest, version: u64) -> Option<MapNode> {
        (**self).get(depth, prefix, version)
    }

    fn put(&mut self, depth: u16, prefix: &Digest, version: u64, node: Option<MapNode>) {
        (**self).put(depth, prefix, version, node);
    }

    fn get_many(
        &self,
        positions: &[(u16, Digest)],
        version: u64,
        found: &mut Vec<Option<MapNode>>,
    ) {
        (**self).get_many(positions, version, found);
    }

    fn put_many(&mut self, writes: &[(u16, Digest, Option<MapNode>)], version: u64) {
        (**self).put_many(writes, version);
    }
}

/// The states of one node position, oldest first.
///
/// The latest state is kept inline because nearly all reads are of it, and most positions (all
/// leaves deep in the tree) are written once, so they never allocate for `older`.
#[derive(Clone, PartialEq, Eq)]
struct History {
    latest_version: u64,
    latest: Option<MapNode>,
    /// Earlier states, ascending by version, all older than `latest_version`.
    older: Vec<(u64, Option<MapNode>)>,
}

impl History {
    /// `None` if the position had not been written yet at `version`, else its state then.
    fn get(&self, version: u64) -> Option<Option<MapNode>> {
        if self.latest_version <= version {
            return Some(self.latest);
        }
        let after = self.older.partition_point(|(v, _)| *v <= version);
        let index = after.checked_sub(1)?;
        self.older.get(index).map(|(_, node)| *node)
    }

    fn put(&mut self, version: u64, node: Option<MapNode>) {
        if version == self.latest_version {
            self.latest = node;
        } else if version > self.latest_version {
            self.older.push((self.latest_version, self.latest));
            self.latest_version = version;
            self.latest = node;
        } else {
            // The map never writes behind its latest version, but a store must stay a correct
            // version index whatever the order of writes, so place it among the older states.
            let at = self.older.partition_point(|(v, _)| *v < version);
            match self.older.get_mut(at) {
                Some(entry) if entry.0 == version => entry.1 = node,
                _ => self.older.insert(at, (version, node)),
            }
        }
    }

    fn len(&self) -> usize {
        self.older.len() + 1
    }
}

/// An in-memory [`MapNodeStore`]: a hash map from node position to the node's history.
///
/// Memory grows by one node state per position written, that is by about `log2 n + 1` states per
/// insert into a map of `n` keys, because every version stays readable.
#[derive(Clone, Default, PartialEq, Eq)]
pub struct MemMapStore {
    nodes: HashMap<(u16, Digest), History>,
}

impl MemMapStore {
    /// An empty store.
    pub fn new() -> Self {
        Self::default()
    }

    /// Number of node positions ever written.
    pub fn position_count(&self) -> usize {
        self.nodes.len()
    }

    /// Number of node states held, over all positions and versions.
    pub fn state_count(&self) -> usize {
        self.nodes.values().map(History::len).sum()
    }

    /// Drops every write made at a version newer than `version`, as if they had never happened.
    ///
    /// This is what recovery must do before [`CompletenessMap::open`] at `version` when writes of
    /// later, uncommitted versions may have reached the store.
    pub fn truncate_after(&mut self, version: u64) {
        self.nodes.retain(|_, history| {
            if history.latest_version <= version {
                return true;
            }
            let keep = history.older.partition_point(|(v, _)| *v <= version);
            history.older.truncate(keep);
            match history.older.pop() {
                Some((v, node)) => {
                    history.latest_version = v;
                    history.latest = node;
                    true
                }
                None => false,
            }
        });
    }
}

impl fmt::Debug for MemMapStore {
    // The store can hold millions of nodes; the counts are what a log line needs.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("MemMapStore")
            .field("positions", &self.position_count())
            .field("states", &self.state_count())
            .finish()
    }
}

impl MapNodeStore for MemMapStore {
    fn get(&self, depth: u16, prefix: &Digest, version: u64) -> Option<MapNode> {
        self.nodes.get(&(depth, *prefix))?.get(version).flatten()
    }

    fn put(&mut self, depth: u16, prefix: &Digest, version: u64, node: Option<MapNode>) {
        self.nodes
            .entry((depth, *prefix))
            .and_modify(|history| history.put(version, node))
            .or_insert(History {
                latest_version: version,
                latest: node,
                older: Vec::new(),
            });
    }
}

/// A membership proof: the sibling hashes along a key's path, from depth 0 down to its leaf.
///
/// `siblings[i]` is the hash of the depth-`i + 1` child that is off the key's path; the leaf sits
/// at depth `siblings.len()`. Verify with [`verify_membership`].
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct MapProof {
    /// Sibling hashes, from the root's children level down.
    pub siblings: Vec<Digest>,
}

/// How the path of an absent key ends, in a [`MapNonMembershipProof`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MapTerminal {
    /// The path reaches an empty subtree (hash [`Digest::ZERO`]).
    Empty,
    /// The path reaches the single leaf of another key, which shares the absent key's bits down
    /// to that depth.
    Leaf {
        /// The other key.
        key: Digest,
        /// The other key's value.
        value: Digest,
    },
}

impl MapTerminal {
    /// The hash of the subtree where the path ends.
    pub fn hash(&self) -> Digest {
        match self {
            MapTerminal::Empty => Digest::ZERO,
            MapTerminal::Leaf { key, value } => leaf_hash(key, value),
        }
    }
}

/// A non-membership proof: the sibling hashes along an absent key's path down to the subtree
/// where that path ends, and what that subtree is. Verify with [`verify_non_membership`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MapNonMembershipProof {
    /// Sibling hashes, from the root's children level down to the terminal's depth.
    pub siblings: Vec<Digest>,
    /// The empty subtree or other key's leaf at depth `siblings.len()`.
    pub terminal: MapTerminal,
}

/// Folds `siblings` up from `hash`, the hash of the subtree at depth `siblings.len()` on `key`'s
/// path, to the root.
fn fold_to_root(key: &Digest, mut hash: Digest, siblings: &[Digest]) -> Result<Digest, MapError> {
    let depth = proof_depth(siblings)?;
    for (i, sibling) in (0..depth).rev().zip(siblings.iter().rev()) {
        hash = if bit(key, i) {
            interior_hash(sibling, &hash)
        } else {
            interior_hash(&hash, sibling)
        };
    }
    Ok(hash)
}

/// The depth a proof reaches, rejecting proofs longer than a key has bits.
fn proof_depth(siblings: &[Digest]) -> Result<u16, MapError> {
    u16::try_from(siblings.len())
        .ok()
        .filter(|depth| *depth <= KEY_BITS)
        .ok_or(MapError::ProofTooLong {
            len: siblings.len(),
        })
}

/// The root that a membership proof of `key → value` leads to.
///
/// For callers that compare against a root they hold in another form; [`verify_membership`] is
/// this plus the comparison.
///
/// # Errors
///
/// [`MapError::ProofTooLong`] if the proof has more than 256 siblings.
pub fn root_from_membership(
    key: &Digest,
    value: &Digest,
    proof: &MapProof,
) -> Result<Digest, MapError> {
    fold_to_root(key, leaf_hash(key, value), &proof.siblings)
}

/// Checks that `proof` shows `key → value` in the map with root `root`.
///
/// # Errors
///
/// [`MapError::ProofTooLong`] if the proof has more than 256 siblings, [`MapError::RootMismatch`]
/// if it does not lead to `root` (wrong key, value, siblings or root).
pub fn verify_membership(
    root: &Digest,
    key: &Digest,
    value: &Digest,
    proof: &MapProof,
) -> Result<(), MapError> {
    if root_from_membership(key, value, proof)? == *root {
        Ok(())
    } else {
        Err(MapError::RootMismatch)
    }
}

/// Checks that `proof` shows `key` absent from the map with root `root`.
///
/// # Errors
///
/// [`MapError::ProofTooLong`] if the proof has more than 256 siblings;
/// [`MapError::TerminalIsKey`] if the terminal leaf is `key` itself;
/// [`MapError::TerminalOffPath`] if the terminal leaf's key does not share `key`'s first
/// `siblings.len()` bits; [`MapError::RootMismatch`] if the proof does not lead to `root`.
pub fn verify_non_membership(
    root: &Digest,
    key: &Digest,
    proof: &MapNonMembershipProof,
) -> Result<(), MapError> {
    let depth = proof_depth(&proof.siblings)?;
    if let MapTerminal::Leaf { key: other, .. } = &proof.terminal {
        if other == key {
            return Err(MapError::TerminalIsKey);
        }
        // The hash chain alone already pins the terminal to the leaf really found on the path;
        // this check makes a malformed proof fail with a precise reason instead of a mismatch.
        if prefix_of(other, depth) != prefix_of(key, depth) {
            return Err(MapError::TerminalOffPath { depth });
        }
    }
    if fold_to_root(key, proof.terminal.hash(), &proof.siblings)? == *root {
        Ok(())
    } else {
        Err(MapError::RootMismatch)
    }
}

/// Index of the first bit at which `a` and `b` differ, `None` if they are equal.
fn first_difference(a: &Digest, b: &Digest) -> Option<u16> {
    (0u16..)
        .step_by(8)
        .zip(a.0.iter().zip(b.0.iter()))
        .find_map(|(base, (x, y))| {
            let diff = x ^ y;
            // `leading_zeros` of a non-zero byte is below 8, so the sum stays below 256.
            (diff != 0).then(|| base + diff.leading_zeros() as u16)
        })
}

/// Where a key's path ends at one version.
struct PathEnd {
    /// Sibling hashes down to `depth` (empty when not asked for).
    siblings: Vec<Digest>,
    /// Depth of the subtree where the path ends.
    depth: u16,
    /// That subtree: empty, or a single leaf (the key's own or another's).
    terminal: MapTerminal,
}

/// The completeness map: a versioned compact sparse Merkle tree over a [`MapNodeStore`].
///
/// See the [module documentation](self) for the hash definition and proof formats. Each insert
/// costs O(depth) hashes and store operations, where depth is about `log2 n` for `n` random keys
/// (up to 256 for keys sharing long prefixes); roots are one store read; lookups and proofs at
/// any version cost O(depth) store reads (and one hash per sibling leaf).
pub struct CompletenessMap<S: MapNodeStore = MemMapStore> {
    store: S,
    /// The newest version written; inserts may not go below it.
    latest: u64,
}

impl Default for CompletenessMap<MemMapStore> {
    fn default() -> Self {
        Self::new(MemMapStore::new())
    }
}

impl<S: MapNodeStore> fmt::Debug for CompletenessMap<S> {
    // The store can be huge and need not be Debug; the version and root identify the map.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("CompletenessMap")
            .field("latest_version", &self.latest)
            .field("root", &self.root())
            .finish_non_exhaustive()
    }
}

impl<S: MapNodeStore> CompletenessMap<S> {
    /// An empty map writing to `store`, which must be empty; the first insert may use any
    /// version.
    pub fn new(store: S) -> Self {
        Self { store, latest: 0 }
    }

    /// Re-opens a map whose nodes an earlier [`CompletenessMap`] wrote to `store`, the last of
    /// them at `latest_version`.
    ///
    /// Nothing is read: the store is the map. It must hold no writes newer than
    /// `latest_version` (writes of an insert that was never committed, say before a crash);
    /// later inserts would otherwise mix with them. See [`MemMapStore::truncate_after`].
    pub fn open(store: S, latest_version: u64) -> Self {
        Self {
            store,
            latest: latest_version,
        }
    }

    /// The newest version written (0 for a new map).
    pub fn latest_version(&self) -> u64 {
        self.latest
    }

    /// The store, for inspection.
    pub fn store(&self) -> &S {
        &self.store
    }

    /// Gives the store back, for example to re-open it later with [`open`](Self::open).
    pub fn into_store(self) -> S {
        self.store
    }

    /// The root at the latest version ([`Digest::ZERO`] for an empty map).
    pub fn root(&self) -> Digest {
        self.root_at(self.latest)
    }

    /// The root as of `version`: after every insert at a version `<= version`.
    ///
    /// Versions before the first insert give [`Digest::ZERO`]; versions after the latest give
    /// the latest root.
    pub fn root_at(&self, version: u64) -> Digest {
        subtree_hash(self.store.get(0, &Digest::ZERO, version))
    }

    /// The value of `key` as of `version`, `None` if absent then.
    ///
    /// An inconsistent store reads as absent here; [`prove`](Self::prove) and
    /// [`prove_absent`](Self::prove_absent) report it as [`MapError::CorruptStore`].
    pub fn get(&self, key: &Digest, version: u64) -> Option<Digest> {
        match self.walk(key, version, false).ok()?.terminal {
            MapTerminal::Leaf { key: found, value } if found == *key => Some(value),
            _ => None,
        }
    }

    /// Sets `key → value` at `version`, inserting the key or updating its value, and returns the
    /// new root.
    ///
    /// `version` may equal the latest version (several subjects change with one ledger entry);
    /// roots and proofs at that version then show the state after the last such insert.
    ///
    /// # Errors
    ///
    /// [`MapError::VersionRegression`] if `version` is older than the latest version;
    /// [`MapError::CorruptStore`] if the store holds a node no valid tree can have. In both
    /// cases nothing has been written.
    pub fn insert(&mut self, key: Digest, value: Digest, version: u64) -> Result<Digest, MapError> {
        if version < self.latest {
            return Err(MapError::VersionRegression {
                version,
                latest: self.latest,
            });
        }
        let end = self.walk(&key, version, true)?;
        let depth = end.depth;
        // The new nodes are gathered and written together at the end (one store call, see
        // `MapNodeStore::put_many`), so an error before then leaves the store as it was.
        let mut writes = Vec::with_capacity(usize::from(depth) + 3);
        let mut hash = match end.terminal {
            MapTerminal::Leaf {
                key: found,
                value: old,
            } if found == key => {
                if old == value {
                    // Nothing changes; writing would only add identical states to the history.
                    self.latest = version;
                    return Ok(self.root_at(version));
                }
                leaf_write(depth, key, value, &mut writes)
            }
            MapTerminal::Leaf {
                key: other,
                value: other_value,
            } => split(depth, (key, value), (other, other_value), &mut writes)?,
            MapTerminal::Empty => leaf_write(depth, key, value, &mut writes),
        };
        for (d, sibling) in (0..depth).rev().zip(end.siblings.iter().rev()) {
            hash = if bit(&key, d) {
                interior_hash(sibling, &hash)
            } else {
                interior_hash(&hash, sibling)
            };
            writes.push((d, prefix_of(&key, d), Some(MapNode::Internal { hash })));
        }
        self.store.put_many(&writes, version);
        self.latest = version;
        Ok(hash)
    }

    /// A membership proof for `key` as of `version`.
    ///
    /// # Errors
    ///
    /// [`MapError::KeyAbsent`] if `key` is not in the map at `version`;
    /// [`MapError::CorruptStore`] if the store is inconsistent along the key's path.
    pub fn prove(&self, key: &Digest, version: u64) -> Result<MapProof, MapError> {
        let end = self.walk(key, version, true)?;
        match end.terminal {
            MapTerminal::Leaf { key: found, .. } if found == *key => Ok(MapProof {
                siblings: end.siblings,
            }),
            _ => Err(MapError::KeyAbsent),
        }
    }

    /// A non-membership proof for `key` as of `version`.
    ///
    /// # Errors
    ///
    /// [`MapError::KeyPresent`] if `key` is in the map at `version`;
    /// [`MapError::CorruptStore`] if the store is inconsistent along the key's path.
    pub fn prove_absent(
        &self,
        key: &Digest,
        version: u64,
    ) -> Result<MapNonMembershipProof, MapError> {
        let end = self.walk(key, version, true)?;
        match end.terminal {
            MapTerminal::Leaf { key: found, .. } if found == *key => Err(MapError::KeyPresent),
            terminal => Ok(MapNonMembershipProof {
                siblings: end.siblings,
                terminal,
            }),
        }
    }

    /// Follows `key`'s path from the root as of `version` to the first node that is not
    /// interior, collecting the sibling hashes on the way if `with_siblings`.
    ///
    /// A node's position depends on the key alone, so the walk asks the store for a stretch of
    /// the path (and the siblings along it) at once, [`WALK_STRETCH`] levels at a time, and
    /// reads the answers in order. Positions asked for past the path's end are not used.
    fn walk(&self, key: &Digest, version: u64, with_siblings: bool) -> Result<PathEnd, MapError> {
        let stretch = usize::from(WALK_STRETCH);
        let mut siblings = Vec::new();
        let mut positions = Vec::with_capacity(2 * stretch);
        let mut answered = Vec::with_capacity(2 * stretch);
        let mut depth = 0u16;
        // Each pass either ends the walk or moves `depth` on by a whole stretch; a node at
        // depth KEY_BITS ends it in every case (an interior node there is an error).
        while depth <= KEY_BITS {
            let stretch_end = depth.saturating_add(WALK_STRETCH).min(KEY_BITS + 1);
            positions.clear();
            answered.clear();
            for d in depth..stretch_end {
                positions.push((d, prefix_of(key, d)));
                if with_siblings && d < KEY_BITS {
                    // The child of `d` off the path: `key`'s prefix at `d + 1`, last bit flipped.
                    let mut sibling = prefix_of(key, d + 1);
                    flip_bit(&mut sibling, d);
                    positions.push((d + 1, sibling));
                }
            }
            self.store.get_many(&positions, version, &mut answered);
            // A store that answers fewer positions than asked is broken; its missing answers
            // read as an inconsistency rather than a panic.
            let mut answers = answered.iter().copied();
            for d in depth..stretch_end {
                let node = answers.next().ok_or(MapError::CorruptStore { depth: d })?;
                let sibling = if with_siblings && d < KEY_BITS {
                    Some(answers.next().ok_or(MapError::CorruptStore { depth: d })?)
                } else {
                    None
                };
                match node {
                    None => {
                        return Ok(PathEnd {
                            siblings,
                            depth: d,
                            terminal: MapTerminal::Empty,
                        });
                    }
                    Some(MapNode::Leaf { key: found, value }) => {
                        if prefix_of(&found, d) != prefix_of(key, d) {
                            return Err(MapError::CorruptStore { depth: d });
                        }
                        return Ok(PathEnd {
                            siblings,
                            depth: d,
                            terminal: MapTerminal::Leaf { key: found, value },
                        });
                    }
                    Some(MapNode::Internal { .. }) => {
                        // Two distinct keys differ in some bit below 256, so their leaves sit
                        // at depth 256 at the latest; an interior node there cannot exist.
                        if d >= KEY_BITS {
                            return Err(MapError::CorruptStore { depth: d });
                        }
                        if let Some(sibling) = sibling {
                            siblings.push(subtree_hash(sibling));
                        }
                    }
                }
            }
            depth = stretch_end;
        }
        Err(MapError::CorruptStore { depth: KEY_BITS })
    }
}

/// Path levels [`CompletenessMap`]'s walk asks its store for at once (each with the sibling
/// below it). Paths are about `log2 n` deep for `n` random keys (18 at 200,000), so a typical
/// walk makes three requests instead of ~36 single lookups, and its last request asks for a
/// few positions past the path's end (an absent position costs one lookup that finds nothing).
const WALK_STRETCH: u16 = 8;

/// Adds the write of leaf `key → value` at `depth` on its path to `writes` and returns its hash.
fn leaf_write(depth: u16, key: Digest, value: Digest, writes: &mut Vec<NodeWrite>) -> Digest {
    writes.push((
        depth,
        prefix_of(&key, depth),
        Some(MapNode::Leaf { key, value }),
    ));
    leaf_hash(&key, &value)
}

/// A node write: `(depth, prefix, node)`, as [`MapNodeStore::put_many`] takes them.
type NodeWrite = (u16, Digest, Option<MapNode>);

/// Adds to `writes` the replacement of the leaf of `other` at `depth` by a subtree holding both
/// it and `new`: both leaves move down to just below the first bit where the keys differ, and
/// interior nodes fill the shared stretch of path. Returns the hash of the new subtree at
/// `depth`.
fn split(
    depth: u16,
    new: (Digest, Digest),
    other: (Digest, Digest),
    writes: &mut Vec<NodeWrite>,
) -> Result<Digest, MapError> {
    let (key, value) = new;
    let (other_key, other_value) = other;
    // The keys share their first `depth` bits (both lie below this node), so they first
    // differ at or below it; anything else means the store put a leaf on the wrong path.
    let fork = first_difference(&key, &other_key)
        .filter(|fork| *fork >= depth)
        .ok_or(MapError::CorruptStore { depth })?;
    let new_hash = leaf_write(fork + 1, key, value, writes);
    let other_hash = leaf_write(fork + 1, other_key, other_value, writes);
    let mut hash = if bit(&key, fork) {
        interior_hash(&other_hash, &new_hash)
    } else {
        interior_hash(&new_hash, &other_hash)
    };
    writes.push((
        fork,
        prefix_of(&key, fork),
        Some(MapNode::Internal { hash }),
    ));
    // Along the shared stretch each node has one non-empty child: the compact form only
    // collapses single leaves, so these nodes still hash with an empty (ZERO) sibling.
    for d in (depth..fork).rev() {
        hash = if bit(&key, d) {
            interior_hash(&Digest::ZERO, &hash)
        } else {
            interior_hash(&hash, &Digest::ZERO)
        };
        writes.push((d, prefix_of(&key, d), Some(MapNode::Internal { hash })));
    }
    Ok(hash)
}

/// Flips bit `i` of `digest` (no-op for `i ≥ 256`).
fn flip_bit(digest: &mut Digest, i: u16) {
    let i = usize::from(i);
    if let Some(byte) = digest.0.get_mut(i / 8) {
        *byte ^= 0x80 >> (i % 8);
    }
}

#[cfg(test)]
mod tests {
    use std::collections::{BTreeMap, BTreeSet};

    use proptest::prelude::*;

    use super::*;

    fn d(n: u64) -> Digest {
        Purpose::MapKey.hash(&n.to_le_bytes())
    }

    fn v(n: u64) -> Digest {
        Purpose::Event.hash(&n.to_le_bytes())
    }

    /// The root recomputed from scratch by the definition: the reference the map is checked
    /// against.
    fn naive_root(entries: &BTreeMap<Digest, Digest>) -> Digest {
        let all: Vec<(Digest, Digest)> = entries.iter().map(|(k, v)| (*k, *v)).collect();
        naive_hash(&all, 0)
    }

    fn naive_hash(entries: &[(Digest, Digest)], depth: u16) -> Digest {
        match entries {
            [] => Digest::ZERO,
            [(k, v)] => leaf_hash(k, v),
            _ => {
                assert!(
                    depth < KEY_BITS,
                    "distinct keys must split before depth 256"
                );
                // Sorted keys sharing `depth` bits: the left subtree is a prefix of the slice.
                let split = entries.partition_point(|(k, _)| !bit(k, depth));
                let (left, right) = entries.split_at(split);
                interior_hash(&naive_hash(left, depth + 1), &naive_hash(right, depth + 1))
            }
        }
    }

    fn with_last_bit_flipped(key: &Digest) -> Digest {
        let mut out = *key;
        flip_bit(&mut out, 255);
        out
    }

    #[test]
    fn bits_and_prefixes() {
        let mut key = Digest::ZERO;
        key.0[0] = 0b1010_0000;
        key.0[31] = 0b0000_0001;
        assert!(bit(&key, 0));
        assert!(!bit(&key, 1));
        assert!(bit(&key, 2));
        assert!(bit(&key, 255));
        assert!(!bit(&key, 254));
        assert!(!bit(&key, 256));
        assert!(!bit(&key, u16::MAX));

        let ones = Digest([0xFF; 32]);
        assert_eq!(prefix_of(&ones, 0), Digest::ZERO);
        assert_eq!(prefix_of(&ones, 256), ones);
        assert_eq!(prefix_of(&ones, 300), ones);
        let p = prefix_of(&ones, 11);
        assert_eq!(p.0[0], 0xFF);
        assert_eq!(p.0[1], 0b1110_0000);
        assert!(p.0[2..].iter().all(|b| *b == 0));
        assert_eq!(prefix_of(&ones, 16).0[..3], [0xFF, 0xFF, 0]);

        assert_eq!(first_difference(&key, &key), None);
        assert_eq!(
            first_difference(&key, &with_last_bit_flipped(&key)),
            Some(255)
        );
        assert_eq!(first_difference(&Digest::ZERO, &ones), Some(0));
        let mut k2 = key;
        k2.0[3] ^= 0b0001_0000;
        assert_eq!(first_difference(&key, &k2), Some(27));
    }

    #[test]
    fn hash_definition_known_answer() {
        // Two keys that differ first at bit 0: the root is MapNode(leaf(left), leaf(right)).
        let left = Digest([0x11; 32]);
        let right = Digest([0x91; 32]);
        let mut map = CompletenessMap::default();
        map.insert(right, v(2), 1).unwrap();
        let root = map.insert(left, v(1), 2).unwrap();
        let expected = Purpose::MapNode.hash_parts(&[
            Purpose::MapLeaf.hash_parts(&[&left.0, &v(1).0]).as_bytes(),
            Purpose::MapLeaf.hash_parts(&[&right.0, &v(2).0]).as_bytes(),
        ]);
        assert_eq!(root, expected);

        // Two keys sharing their first two bits (00): two ZERO-padded levels above the fork.
        let a = Digest([0x00; 32]);
        let b = Digest([0x20; 32]);
        let mut map = CompletenessMap::default();
        map.insert(a, v(1), 1).unwrap();
        let root = map.insert(b, v(2), 1).unwrap();
        let fork = interior_hash(&leaf_hash(&a, &v(1)), &leaf_hash(&b, &v(2)));
        let level1 = interior_hash(&fork, &Digest::ZERO);
        let level0 = interior_hash(&level1, &Digest::ZERO);
        assert_eq!(root, level0);
        assert_eq!(map.prove(&b, 1).unwrap().siblings.len(), 3);

        // Frozen: a change here is a breaking change of the ledger format.
        let mut map = CompletenessMap::default();
        for i in 0..8 {
            map.insert(d(i), v(i), i).unwrap();
        }
        assert_eq!(
            map.root().to_hex(),
            "189280ad979dcd9f89708babc89e051dad74e3fcdeaf1c44d11acf2c3e545a59",
            "completeness-map root of d(0..8) -> v(0..8)"
        );
    }

    #[test]
    fn empty_map() {
        let map = CompletenessMap::default();
        assert_eq!(map.root(), Digest::ZERO);
        assert_eq!(map.root_at(u64::MAX), Digest::ZERO);
        assert_eq!(map.get(&d(1), 0), None);
        assert_eq!(map.prove(&d(1), 0), Err(MapError::KeyAbsent));
        let absent = map.prove_absent(&d(1), 0).unwrap();
        assert!(absent.siblings.is_empty());
        assert_eq!(absent.terminal, MapTerminal::Empty);
        verify_non_membership(&Digest::ZERO, &d(1), &absent).unwrap();
        let no_proof = MapProof::default();
        assert_eq!(
            verify_membership(&Digest::ZERO, &d(1), &v(1), &no_proof),
            Err(MapError::RootMismatch)
        );
    }

    #[test]
    fn single_key() {
        let mut map = CompletenessMap::default();
        let root = map.insert(d(1), v(1), 5).unwrap();
        assert_eq!(root, leaf_hash(&d(1), &v(1)));
        assert_eq!(map.root_at(4), Digest::ZERO);
        let proof = map.prove(&d(1), 5).unwrap();
        assert!(proof.siblings.is_empty());
        verify_membership(&root, &d(1), &v(1), &proof).unwrap();
        assert_eq!(
            verify_membership(&root, &d(1), &v(2), &proof),
            Err(MapError::RootMismatch)
        );
        assert_eq!(
            verify_membership(&root, &d(2), &v(1), &proof),
            Err(MapError::RootMismatch)
        );
        let absent = map.prove_absent(&d(2), 5).unwrap();
        assert_eq!(
            absent.terminal,
            MapTerminal::Leaf {
                key: d(1),
                value: v(1)
            }
        );
        assert!(absent.siblings.is_empty());
        verify_non_membership(&root, &d(2), &absent).unwrap();
        assert_eq!(
            verify_non_membership(&root, &d(1), &absent),
            Err(MapError::TerminalIsKey)
        );
        assert_eq!(map.prove_absent(&d(1), 5), Err(MapError::KeyPresent));
        // Before the insert the key was absent, and the empty proof shows it.
        let before = map.prove_absent(&d(1), 4).unwrap();
        verify_non_membership(&Digest::ZERO, &d(1), &before).unwrap();
    }

    #[test]
    fn keys_differing_in_last_bit_give_full_depth_proofs() {
        let a = d(7);
        let b = with_last_bit_flipped(&a);
        let mut map = CompletenessMap::default();
        map.insert(a, v(1), 1).unwrap();
        let root = map.insert(b, v(2), 2).unwrap();
        for (key, value) in [(a, v(1)), (b, v(2))] {
            let proof = map.prove(&key, 2).unwrap();
            assert_eq!(proof.siblings.len(), 256);
            verify_membership(&root, &key, &value, &proof).unwrap();
            let mut long = proof.clone();
            long.siblings.push(Digest::ZERO);
            assert_eq!(
                verify_membership(&root, &key, &value, &long),
                Err(MapError::ProofTooLong { len: 257 })
            );
        }
        let mut expected = BTreeMap::new();
        expected.insert(a, v(1));
        expected.insert(b, v(2));
        assert_eq!(root, naive_root(&expected));
        // A third key on the same path down to bit 200 forks the chain there.
        let mut c = a;
        flip_bit(&mut c, 200);
        let root = map.insert(c, v(3), 3).unwrap();
        expected.insert(c, v(3));
        assert_eq!(root, naive_root(&expected));
        assert_eq!(map.prove(&c, 3).unwrap().siblings.len(), 201);
        verify_membership(&root, &a, &v(1), &map.prove(&a, 3).unwrap()).unwrap();
        // A key just off the shared chain is absent, ending in an empty subtree.
        let mut e = a;
        flip_bit(&mut e, 100);
        let absent = map.prove_absent(&e, 3).unwrap();
        assert_eq!(absent.terminal, MapTerminal::Empty);
        assert_eq!(absent.siblings.len(), 101);
        verify_non_membership(&root, &e, &absent).unwrap();
    }

    #[test]
    fn version_rules_and_reopen() {
        let mut map = CompletenessMap::default();
        map.insert(d(1), v(1), 3).unwrap();
        let root3 = map.insert(d(2), v(2), 3).unwrap();
        assert_eq!(
            map.insert(d(3), v(3), 2),
            Err(MapError::VersionRegression {
                version: 2,
                latest: 3
            })
        );
        assert_eq!(map.root(), root3);
        assert_eq!(map.get(&d(3), 3), None);

        // A no-op update advances the version but changes nothing.
        assert_eq!(map.insert(d(1), v(1), 4).unwrap(), root3);
        assert_eq!(map.latest_version(), 4);
        let states = map.store().state_count();
        let root5 = map.insert(d(1), v(9), 5).unwrap();
        assert_ne!(root5, root3);
        assert!(map.store().state_count() > states);
        assert_eq!(map.get(&d(1), 4), Some(v(1)));
        assert_eq!(map.get(&d(1), 5), Some(v(9)));

        let mut map = CompletenessMap::open(map.into_store(), 5);
        assert_eq!(map.root(), root5);
        assert_eq!(map.root_at(3), root3);
        assert!(matches!(
            map.insert(d(3), v(3), 4),
            Err(MapError::VersionRegression { .. })
        ));
        map.insert(d(3), v(3), 6).unwrap();

        // Recovery: drop the uncommitted version 6 and re-open at 5.
        let mut store = map.into_store();
        store.truncate_after(5);
        let mut map = CompletenessMap::open(store, 5);
        assert_eq!(map.root(), root5);
        assert_eq!(map.root_at(u64::MAX), root5);
        assert_eq!(map.get(&d(3), 6), None);
        assert_eq!(map.root_at(3), root3);
        let mut expected = BTreeMap::new();
        expected.insert(d(1), v(9));
        expected.insert(d(2), v(2));
        expected.insert(d(4), v(4));
        assert_eq!(map.insert(d(4), v(4), 6).unwrap(), naive_root(&expected));
        store = map.into_store();
        store.truncate_after(0);
        assert_eq!(store.position_count(), 0);
    }

    #[test]
    fn store_history_handles_out_of_order_writes() {
        let node = |n| Some(MapNode::Internal { hash: v(n) });
        let mut store = MemMapStore::new();
        let p = Digest::ZERO;
        store.put(0, &p, 10, node(10));
        store.put(0, &p, 5, node(5));
        store.put(0, &p, 7, None);
        store.put(0, &p, 5, node(55));
        store.put(0, &p, 20, node(20));
        assert_eq!(store.get(0, &p, 4), None);
        assert_eq!(store.get(0, &p, 5), node(55));
        assert_eq!(store.get(0, &p, 6), node(55));
        assert_eq!(store.get(0, &p, 7), None);
        assert_eq!(store.get(0, &p, 9), None);
        assert_eq!(store.get(0, &p, 10), node(10));
        assert_eq!(store.get(0, &p, 19), node(10));
        assert_eq!(store.get(0, &p, u64::MAX), node(20));
        assert_eq!(store.state_count(), 4);
        store.truncate_after(8);
        assert_eq!(store.get(0, &p, u64::MAX), None);
        assert_eq!(store.get(0, &p, 6), node(55));
        assert_eq!(store.state_count(), 2);
        // Works through `&mut` and `Box<dyn>` too.
        let mut boxed: Box<dyn MapNodeStore> = Box::new(store);
        let mut map = CompletenessMap::new(&mut boxed);
        map.insert(d(1), v(1), 30).unwrap();
        assert_eq!(
            boxed.get(0, &p, 30).map(|n| n.hash()),
            Some(leaf_hash(&d(1), &v(1)))
        );
    }

    #[test]
    fn corrupt_store_is_reported_not_followed() {
        // An interior node at depth 256 cannot exist.
        let mut store = MemMapStore::new();
        let key = d(1);
        for depth in 0..=KEY_BITS {
            store.put(
                depth,
                &prefix_of(&key, depth),
                1,
                Some(MapNode::Internal { hash: v(0) }),
            );
        }
        let mut map = CompletenessMap::open(store, 1);
        assert_eq!(
            map.prove(&key, 1),
            Err(MapError::CorruptStore { depth: 256 })
        );
        assert_eq!(map.get(&key, 1), None);
        let states = map.store().state_count();
        assert_eq!(
            map.insert(key, v(1), 2),
            Err(MapError::CorruptStore { depth: 256 })
        );
        assert_eq!(map.store().state_count(), states, "nothing written");

        // A leaf stored off its key's path.
        let mut store = MemMapStore::new();
        let mut off = Digest::ZERO;
        off.0[0] = 0x80;
        store.put(0, &Digest::ZERO, 1, Some(MapNode::Internal { hash: v(0) }));
        store.put(
            1,
            &Digest::ZERO,
            1,
            Some(MapNode::Leaf {
                key: off,
                value: v(0),
            }),
        );
        let mut map = CompletenessMap::open(store, 1);
        assert_eq!(
            map.insert(Digest::ZERO, v(1), 2),
            Err(MapError::CorruptStore { depth: 1 })
        );
        assert_eq!(
            map.prove_absent(&Digest::ZERO, 1),
            Err(MapError::CorruptStore { depth: 1 })
        );
    }

    /// A [`MemMapStore`] that counts the store calls a map makes, and can be told to answer
    /// no batched read.
    #[derive(Default)]
    struct CountingStore {
        inner: MemMapStore,
        reads: std::cell::Cell<usize>,
        writes: usize,
        answers_nothing: bool,
    }

    impl MapNodeStore for CountingStore {
        fn get(&self, depth: u16, prefix: &Digest, version: u64) -> Option<MapNode> {
            self.reads.set(self.reads.get() + 1);
            self.inner.get(depth, prefix, version)
        }

        fn put(&mut self, depth: u16, prefix: &Digest, version: u64, node: Option<MapNode>) {
            self.writes += 1;
            self.inner.put(depth, prefix, version, node);
        }

        fn get_many(
            &self,
            positions: &[(u16, Digest)],
            version: u64,
            found: &mut Vec<Option<MapNode>>,
        ) {
            self.reads.set(self.reads.get() + 1);
            if !self.answers_nothing {
                self.inner.get_many(positions, version, found);
            }
        }

        fn put_many(&mut self, writes: &[(u16, Digest, Option<MapNode>)], version: u64) {
            self.writes += 1;
            self.inner.put_many(writes, version);
        }
    }

    #[test]
    fn a_walk_reads_a_path_in_stretches_and_an_insert_writes_once() {
        let mut map = CompletenessMap::new(CountingStore::default());
        for n in 0..4096 {
            map.insert(d(n), v(n), n + 1).unwrap();
        }
        let stretches = |depth: usize| depth / usize::from(WALK_STRETCH) + 1;
        for n in [0, 77, 4095] {
            let depth = map.prove(&d(n), 4096).unwrap().siblings.len();
            assert!(depth > usize::from(WALK_STRETCH), "paths span stretches");

            map.store.reads.set(0);
            map.store.writes = 0;
            map.insert(d(n), v(n + 1), 4097 + n).unwrap();
            assert_eq!(
                map.store.reads.get(),
                stretches(depth),
                "one read per stretch"
            );
            assert_eq!(map.store.writes, 1, "one write per insert");

            map.store.reads.set(0);
            assert_eq!(map.get(&d(n), 4097 + n), Some(v(n + 1)));
            assert_eq!(map.store.reads.get(), stretches(depth));
        }
        // The batched map still gives the reference root.
        let mut reference = BTreeMap::new();
        for n in 0..4096 {
            reference.insert(d(n), v(n));
        }
        for n in [0, 77, 4095] {
            reference.insert(d(n), v(n + 1));
        }
        assert_eq!(map.root(), naive_root(&reference));
    }

    #[test]
    fn a_store_that_answers_short_is_an_inconsistency_not_a_panic() {
        let mut map = CompletenessMap::new(CountingStore::default());
        for n in 0..64 {
            map.insert(d(n), v(n), 1).unwrap();
        }
        let root = map.root();
        map.store.answers_nothing = true;
        assert_eq!(
            map.prove(&d(3), 1),
            Err(MapError::CorruptStore { depth: 0 })
        );
        assert_eq!(
            map.insert(d(1000), v(0), 2),
            Err(MapError::CorruptStore { depth: 0 })
        );
        assert_eq!(map.get(&d(3), 1), None);
        map.store.answers_nothing = false;
        assert_eq!(map.root(), root, "the failed insert wrote nothing");
    }

    /// A map over keys 0..n plus near-collisions, and its reference contents.
    fn sample_map(n: u64) -> (CompletenessMap, BTreeMap<Digest, Digest>) {
        let mut map = CompletenessMap::default();
        let mut reference = BTreeMap::new();
        for i in 0..n {
            let mut key = d(i);
            if i % 5 == 4 {
                // Shares all but the last bit with an earlier key.
                key = with_last_bit_flipped(&d(i - 1));
            }
            map.insert(key, v(i), i).unwrap();
            reference.insert(key, v(i));
        }
        (map, reference)
    }

    #[test]
    fn tampered_membership_proofs_fail() {
        let (map, reference) = sample_map(200);
        let root = map.root();
        assert_eq!(root, naive_root(&reference));
        let other_key = d(10_000);
        for (key, value) in &reference {
            let proof = map.prove(key, map.latest_version()).unwrap();
            verify_membership(&root, key, value, &proof).unwrap();
            assert!(!proof.siblings.is_empty());
            let fails = |k: &Digest, val: &Digest, p: &MapProof| {
                verify_membership(&root, k, val, p).is_err()
            };
            assert!(fails(key, &v(99_999), &proof), "wrong value");
            assert!(fails(&other_key, value, &proof), "wrong key");
            assert!(
                fails(&with_last_bit_flipped(key), value, &proof),
                "near key"
            );
            for i in 0..proof.siblings.len() {
                let mut bad = proof.clone();
                bad.siblings[i].0[i % 32] ^= 1 << (i % 8);
                assert!(fails(key, value, &bad), "flipped sibling {i}");
            }
            let mut truncated = proof.clone();
            truncated.siblings.pop();
            assert!(fails(key, value, &truncated), "truncated");
            let mut cut_top = proof.clone();
            cut_top.siblings.remove(0);
            assert!(fails(key, value, &cut_top), "top sibling removed");
            for extra in [Digest::ZERO, v(1)] {
                let mut extended = proof.clone();
                extended.siblings.push(extra);
                assert!(fails(key, value, &extended), "extended");
            }
            let mut too_long = proof.clone();
            too_long.siblings.resize(257, Digest::ZERO);
            assert_eq!(
                verify_membership(&root, key, value, &too_long),
                Err(MapError::ProofTooLong { len: 257 })
            );
            assert_eq!(
                root_from_membership(key, value, &proof),
                Ok(root),
                "root_from_membership agrees"
            );
        }
    }

    #[test]
    fn tampered_non_membership_proofs_fail() {
        let (map, reference) = sample_map(100);
        let root = map.root();
        let version = map.latest_version();
        let mut saw_empty = false;
        let mut saw_leaf = false;
        for i in 1000..1200u64 {
            let key = d(i);
            let proof = map.prove_absent(&key, version).unwrap();
            verify_non_membership(&root, &key, &proof).unwrap();
            match proof.terminal {
                MapTerminal::Empty => saw_empty = true,
                MapTerminal::Leaf { key: other, value } => {
                    saw_leaf = true;
                    assert_eq!(reference.get(&other), Some(&value));
                    let mut bad = proof.clone();
                    bad.terminal = MapTerminal::Leaf {
                        key: other,
                        value: v(77_777),
                    };
                    assert!(verify_non_membership(&root, &key, &bad).is_err());
                    bad.terminal = MapTerminal::Empty;
                    assert!(verify_non_membership(&root, &key, &bad).is_err());
                    // The same proof does not show the terminal's own key absent.
                    assert_eq!(
                        verify_non_membership(&root, &other, &proof),
                        Err(MapError::TerminalIsKey)
                    );
                }
            }
            // A present key's leaf cannot be used as a terminal off its path.
            if let Some((present, value)) = reference.iter().next() {
                let mut bad = proof.clone();
                bad.terminal = MapTerminal::Leaf {
                    key: *present,
                    value: *value,
                };
                let depth = u16::try_from(proof.siblings.len()).unwrap();
                if bad.terminal == proof.terminal {
                    // That leaf really is where the path ends: nothing was tampered.
                } else if prefix_of(present, depth) != prefix_of(&key, depth) {
                    assert_eq!(
                        verify_non_membership(&root, &key, &bad),
                        Err(MapError::TerminalOffPath { depth })
                    );
                } else {
                    assert!(verify_non_membership(&root, &key, &bad).is_err());
                }
            }
            if !proof.siblings.is_empty() {
                let mut bad = proof.clone();
                bad.siblings[0].0[0] ^= 0x40;
                assert!(verify_non_membership(&root, &key, &bad).is_err());
                let mut truncated = proof.clone();
                truncated.siblings.pop();
                assert!(verify_non_membership(&root, &key, &truncated).is_err());
            }
            let mut extended = proof.clone();
            extended.siblings.push(Digest::ZERO);
            assert!(verify_non_membership(&root, &key, &extended).is_err());
            let mut too_long = proof.clone();
            too_long.siblings.resize(300, Digest::ZERO);
            assert_eq!(
                verify_non_membership(&root, &key, &too_long),
                Err(MapError::ProofTooLong { len: 300 })
            );
        }
        assert!(saw_empty && saw_leaf, "both terminal kinds exercised");
        // A present key has no non-membership proof, and others' proofs do not claim it absent.
        for key in reference.keys() {
            assert_eq!(map.prove_absent(key, version), Err(MapError::KeyPresent));
        }
    }

    /// How a test key is made: fresh, or forced to share a prefix with a base key, or an
    /// already-used key (an update).
    #[derive(Debug, Clone)]
    enum KeyGen {
        Random([u8; 32]),
        /// Base key `base`'s first `keep` bits, then `tail`'s bits.
        Prefixed {
            base: usize,
            keep: u16,
            tail: [u8; 32],
        },
        /// The `index`-th key used so far (modulo their number).
        Existing(usize),
    }

    fn key_gen() -> impl Strategy<Value = KeyGen> {
        prop_oneof![
            2 => any::<[u8; 32]>().prop_map(KeyGen::Random),
            4 => (
                0..3usize,
                prop_oneof![0..=256u16, 240..=256u16, Just(255u16), Just(248u16)],
                any::<[u8; 32]>()
            )
                .prop_map(|(base, keep, tail)| KeyGen::Prefixed { base, keep, tail }),
            2 => any::<usize>().prop_map(KeyGen::Existing),
        ]
    }

    fn make_key(spec: &KeyGen, bases: &[Digest; 3], used: &[Digest]) -> Digest {
        match spec {
            KeyGen::Random(bytes) => Digest(*bytes),
            KeyGen::Prefixed { base, keep, tail } => {
                let base = bases[*base % 3];
                let mut key = prefix_of(&base, *keep);
                let tail = Digest(*tail);
                for i in *keep..KEY_BITS {
                    if bit(&tail, i) {
                        flip_bit(&mut key, i);
                    }
                }
                key
            }
            KeyGen::Existing(index) if !used.is_empty() => used[index % used.len()],
            KeyGen::Existing(index) => Digest([*index as u8; 32]),
        }
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(96))]

        #[test]
        fn matches_reference_at_every_version(
            bases in any::<[[u8; 32]; 3]>(),
            ops in prop::collection::vec((key_gen(), any::<u8>(), 0..3u64), 1..48),
            probes in prop::collection::vec(key_gen(), 0..8),
            first_version in 0..4u64,
        ) {
            let bases = bases.map(Digest);
            let mut map = CompletenessMap::default();
            let mut current = BTreeMap::new();
            let mut used: Vec<Digest> = Vec::new();
            // Snapshot after the last insert of each version.
            let mut snapshots: BTreeMap<u64, BTreeMap<Digest, Digest>> = BTreeMap::new();
            let mut version = first_version;
            for (spec, value, step) in &ops {
                version += step;
                let key = make_key(spec, &bases, &used);
                let value = Purpose::Event.hash(&[*value]);
                used.push(key);
                current.insert(key, value);
                let root = map.insert(key, value, version).unwrap();
                prop_assert_eq!(root, naive_root(&current));
                prop_assert_eq!(map.root(), root);
                snapshots.insert(version, current.clone());
            }
            if first_version > 0 {
                prop_assert_eq!(map.root_at(first_version - 1), Digest::ZERO);
            }
            let mut candidates: BTreeSet<Digest> = used.iter().copied().collect();
            for spec in &probes {
                candidates.insert(make_key(spec, &bases, &[]));
            }
            for key in used.iter().take(4) {
                candidates.insert(with_last_bit_flipped(key));
            }
            // Versions between writes read as the preceding snapshot.
            let mut check_versions: Vec<(u64, &BTreeMap<Digest, Digest>)> = Vec::new();
            for (ver, snapshot) in &snapshots {
                check_versions.push((*ver, snapshot));
                if !snapshots.contains_key(&(ver + 1)) {
                    check_versions.push((ver + 1, snapshot));
                }
            }
            for (ver, snapshot) in check_versions {
                let root = naive_root(snapshot);
                prop_assert_eq!(map.root_at(ver), root);
                for key in &candidates {
                    match snapshot.get(key) {
                        Some(value) => {
                            prop_assert_eq!(map.get(key, ver), Some(*value));
                            let proof = map.prove(key, ver).unwrap();
                            prop_assert_eq!(verify_membership(&root, key, value, &proof), Ok(()));
                            prop_assert!(
                                verify_membership(&root, key, &v(12_345), &proof).is_err()
                            );
                            prop_assert_eq!(map.prove_absent(key, ver), Err(MapError::KeyPresent));
                        }
                        None => {
                            prop_assert_eq!(map.get(key, ver), None);
                            prop_assert_eq!(map.prove(key, ver), Err(MapError::KeyAbsent));
                            let proof = map.prove_absent(key, ver).unwrap();
                            prop_assert_eq!(verify_non_membership(&root, key, &proof), Ok(()));
                        }
                    }
                }
            }
        }
    }
}

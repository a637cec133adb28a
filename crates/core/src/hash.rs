//! Hashing: the 32-byte [`Digest`] type and one blake3 `derive_key` context per purpose.
//!
//! Every hash in WasteLedger is blake3 in key-derivation mode with a context string that names
//! its purpose, so that a value hashed for one purpose can never be confused with another
//! (an event hash can never pass as a Merkle node, a checkpoint as a leaf). The contexts are
//! part of the wire contract and are listed in `docs/custody-proof.md`.

use std::fmt;

/// Length in bytes of every hash, key id and ledger id.
pub const DIGEST_LEN: usize = 32;

/// A 32-byte hash value.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct Digest(pub [u8; DIGEST_LEN]);

impl Digest {
    /// The all-zero digest: "no previous event" and the empty completeness-map subtree.
    pub const ZERO: Digest = Digest([0; DIGEST_LEN]);

    /// Reads a digest from a slice that must be exactly 32 bytes long.
    pub fn from_slice(bytes: &[u8]) -> Option<Digest> {
        <[u8; DIGEST_LEN]>::try_from(bytes).ok().map(Digest)
    }

    /// The raw bytes.
    pub fn as_bytes(&self) -> &[u8; DIGEST_LEN] {
        &self.0
    }

    /// Lower-case hex, as shown to users.
    pub fn to_hex(&self) -> String {
        hex::encode(self.0)
    }

    /// Parses 64 hex characters.
    pub fn from_hex(text: &str) -> Option<Digest> {
        let mut out = [0u8; DIGEST_LEN];
        hex::decode_to_slice(text, &mut out).ok()?;
        Some(Digest(out))
    }

    /// The first 8 bytes in hex: enough to tell hashes apart in logs and tables.
    pub fn short(&self) -> String {
        hex::encode(&self.0[..8])
    }
}

impl fmt::Debug for Digest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Digest({})", self.short())
    }
}

impl fmt::Display for Digest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.to_hex())
    }
}

impl From<blake3::Hash> for Digest {
    fn from(hash: blake3::Hash) -> Self {
        Digest(*hash.as_bytes())
    }
}

/// The purposes a hash is computed for. Each has its own blake3 `derive_key` context.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Purpose {
    /// Ledger id: hash of the genesis file bytes.
    Genesis,
    /// Key id: hash of an ed25519 public key.
    KeyId,
    /// Event hash: hash of `ledger_id ‖ event body bytes`.
    Event,
    /// Merkle leaf hash of a ledger entry.
    Leaf,
    /// Merkle interior node hash of `left ‖ right`.
    Node,
    /// Ledger chain link: hash of `previous link ‖ leaf hash`.
    ChainLink,
    /// Checkpoint body hash (what cosigners commit to, for logs and deduplication).
    Checkpoint,
    /// Completeness-map key of a subject (manifest or party).
    MapKey,
    /// Completeness-map leaf of `key ‖ head event hash`.
    MapLeaf,
    /// Completeness-map interior node of `left ‖ right`.
    MapNode,
    /// Local cache key of a signature already verified by this process: hash of
    /// `public key ‖ ledger id ‖ body ‖ signature`. Never stored or sent.
    VerifiedSignature,
}

impl Purpose {
    /// The `derive_key` context string. Changing one is a breaking change of the ledger format.
    pub const fn context(self) -> &'static str {
        match self {
            Purpose::Genesis => "wasteledger v1 genesis",
            Purpose::KeyId => "wasteledger v1 key id",
            Purpose::Event => "wasteledger v1 event",
            Purpose::Leaf => "wasteledger v1 merkle leaf",
            Purpose::Node => "wasteledger v1 merkle node",
            Purpose::ChainLink => "wasteledger v1 chain link",
            Purpose::Checkpoint => "wasteledger v1 checkpoint",
            Purpose::MapKey => "wasteledger v1 map key",
            Purpose::MapLeaf => "wasteledger v1 map leaf",
            Purpose::MapNode => "wasteledger v1 map node",
            Purpose::VerifiedSignature => "wasteledger v1 verified signature",
        }
    }

    /// Every purpose, in declaration order (the order of the enum's discriminants).
    pub const ALL: [Purpose; 11] = [
        Purpose::Genesis,
        Purpose::KeyId,
        Purpose::Event,
        Purpose::Leaf,
        Purpose::Node,
        Purpose::ChainLink,
        Purpose::Checkpoint,
        Purpose::MapKey,
        Purpose::MapLeaf,
        Purpose::MapNode,
        Purpose::VerifiedSignature,
    ];

    /// A hasher for this purpose, to feed several parts without concatenating them first.
    ///
    /// `new_derive_key` hashes the context string on every call, which is as costly as hashing
    /// a Merkle node itself; the keyed hashers are built once and cloned instead.
    pub fn hasher(self) -> blake3::Hasher {
        static HASHERS: std::sync::OnceLock<Vec<blake3::Hasher>> = std::sync::OnceLock::new();
        let hashers = HASHERS.get_or_init(|| {
            Purpose::ALL
                .iter()
                .map(|p| blake3::Hasher::new_derive_key(p.context()))
                .collect()
        });
        hashers
            .get(self as usize)
            .cloned()
            .unwrap_or_else(|| blake3::Hasher::new_derive_key(self.context()))
    }

    /// Hashes the concatenation of `parts`.
    pub fn hash_parts(self, parts: &[&[u8]]) -> Digest {
        let mut hasher = self.hasher();
        for part in parts {
            hasher.update(part);
        }
        hasher.finalize().into()
    }

    /// Hashes one byte string.
    pub fn hash(self, bytes: &[u8]) -> Digest {
        self.hash_parts(&[bytes])
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn purposes_separate_domains() {
        let all = Purpose::ALL;
        let hashes: std::collections::HashSet<Digest> =
            all.iter().map(|p| p.hash(b"same input")).collect();
        assert_eq!(hashes.len(), all.len());
    }

    #[test]
    fn cached_hashers_equal_fresh_ones() {
        for (i, p) in Purpose::ALL.iter().enumerate() {
            assert_eq!(*p as usize, i, "ALL must follow declaration order");
            let fresh: Digest = blake3::Hasher::new_derive_key(p.context())
                .update(b"x")
                .finalize()
                .into();
            assert_eq!(p.hash(b"x"), fresh);
        }
    }

    #[test]
    fn parts_equal_concatenation() {
        assert_eq!(
            Purpose::Event.hash_parts(&[b"ab", b"cd"]),
            Purpose::Event.hash(b"abcd")
        );
    }

    #[test]
    fn hex_round_trip() {
        let d = Purpose::Leaf.hash(b"x");
        assert_eq!(Digest::from_hex(&d.to_hex()), Some(d));
        assert_eq!(Digest::from_hex("zz"), None);
        assert_eq!(Digest::from_slice(&[0; 31]), None);
    }
}

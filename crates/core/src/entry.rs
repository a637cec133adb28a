//! Ledger entries: the exact bytes of each Merkle leaf, and the chain over entries.
//!
//! A leaf is a fixed binary layout rather than a protobuf message, so that an independent
//! verifier can parse it from the specification alone and no encoder choice can change a hash:
//!
//! ```text
//! version        u8        = 1
//! index          u64 BE    position in the ledger, from 0
//! sequenced_at   i64 BE    ledger time stamped by the leader (ms since epoch)
//! chain_prev     [32]      chain link after entry index-1 (the ledger id for index 0)
//! body_len       u32 BE
//! body           body_len  SignedEvent.body, exactly as signed
//! sig_count      u8        1..=8
//! signatures     sig_count × (key_id [32] ‖ signature [64])
//! ```
//!
//! The chain link after entry i is `blake3-derive("wasteledger v1 chain link", chain_prev ‖
//! leaf hash)`: a mirror of the whole ledger can be audited in one streaming pass. Custody
//! proofs do not use the chain; they rely on Merkle inclusion only.

use crate::envelope::{MAX_BODY_BYTES, MAX_SIGNATURES};
use crate::hash::{Digest, Purpose};
use crate::merkle::{Blake3Hasher, MerkleHasher};
use crate::pb;

/// Current leaf layout version.
pub const ENTRY_VERSION: u8 = 1;
const HEADER_LEN: usize = 1 + 8 + 8 + 32 + 4;
const SIG_LEN: usize = 32 + 64;

/// One ledger entry.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LedgerEntry {
    /// Position in the ledger.
    pub index: u64,
    /// Ledger time stamped by the leader.
    pub sequenced_at: i64,
    /// Chain link after the previous entry.
    pub chain_prev: Digest,
    /// The signed body bytes.
    pub body: Vec<u8>,
    /// `(key id, signature)` in the order submitted.
    pub signatures: Vec<(Digest, [u8; 64])>,
}

/// Why leaf bytes could not be parsed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum EntryError {
    /// Shorter than its fields say.
    #[error("ledger entry is truncated")]
    Truncated,
    /// Bytes left over after the last signature.
    #[error("ledger entry has {0} trailing bytes")]
    Trailing(usize),
    /// Unknown layout version.
    #[error("ledger entry version {0} is not supported (expected 1)")]
    Version(u8),
    /// Body length or signature count out of range.
    #[error("ledger entry field out of range: {0}")]
    Range(&'static str),
    /// A signature of the wrong size in the envelope.
    #[error("signature {0} is not a 32-byte key id with a 64-byte signature")]
    Signature(usize),
}

impl LedgerEntry {
    /// Builds the entry for a verified envelope.
    pub fn new(
        index: u64,
        sequenced_at: i64,
        chain_prev: Digest,
        signed: &pb::SignedEvent,
    ) -> Result<LedgerEntry, EntryError> {
        let mut signatures = Vec::with_capacity(signed.signatures.len());
        for (i, s) in signed.signatures.iter().enumerate() {
            let key_id = Digest::from_slice(&s.key_id).ok_or(EntryError::Signature(i))?;
            let signature: [u8; 64] = s
                .signature
                .as_slice()
                .try_into()
                .map_err(|_| EntryError::Signature(i))?;
            signatures.push((key_id, signature));
        }
        Ok(LedgerEntry {
            index,
            sequenced_at,
            chain_prev,
            body: signed.body.clone(),
            signatures,
        })
    }

    /// The exact leaf bytes.
    pub fn encode(&self) -> Vec<u8> {
        let mut out =
            Vec::with_capacity(HEADER_LEN + self.body.len() + 1 + self.signatures.len() * SIG_LEN);
        out.push(ENTRY_VERSION);
        out.extend_from_slice(&self.index.to_be_bytes());
        out.extend_from_slice(&self.sequenced_at.to_be_bytes());
        out.extend_from_slice(self.chain_prev.as_bytes());
        out.extend_from_slice(&(self.body.len() as u32).to_be_bytes());
        out.extend_from_slice(&self.body);
        out.push(self.signatures.len() as u8);
        for (key_id, signature) in &self.signatures {
            out.extend_from_slice(key_id.as_bytes());
            out.extend_from_slice(signature);
        }
        out
    }

    /// Parses leaf bytes strictly: every byte must be accounted for.
    pub fn decode(bytes: &[u8]) -> Result<LedgerEntry, EntryError> {
        let mut r = Reader(bytes);
        let version = r.take::<1>()?[0];
        if version != ENTRY_VERSION {
            return Err(EntryError::Version(version));
        }
        let index = u64::from_be_bytes(r.take::<8>()?);
        let sequenced_at = i64::from_be_bytes(r.take::<8>()?);
        let chain_prev = Digest(r.take::<32>()?);
        let body_len = u32::from_be_bytes(r.take::<4>()?) as usize;
        if body_len > MAX_BODY_BYTES {
            return Err(EntryError::Range("body length"));
        }
        let body = r.slice(body_len)?.to_vec();
        let count = r.take::<1>()?[0] as usize;
        if count == 0 || count > MAX_SIGNATURES {
            return Err(EntryError::Range("signature count"));
        }
        let mut signatures = Vec::with_capacity(count);
        for _ in 0..count {
            signatures.push((Digest(r.take::<32>()?), r.take::<64>()?));
        }
        if !r.0.is_empty() {
            return Err(EntryError::Trailing(r.0.len()));
        }
        Ok(LedgerEntry {
            index,
            sequenced_at,
            chain_prev,
            body,
            signatures,
        })
    }

    /// Whether `signed` is the envelope this entry records: the same body bytes and the same
    /// signatures (each `(key id, signature)` pair once, in any order).
    ///
    /// Why the server asks: an event's identity (its hash) covers the body only, so a
    /// resubmission is found by body before its signatures are checked. Only a resubmission
    /// that carries exactly the recorded signatures — a client retrying a call whose answer
    /// it lost — may be answered with the original receipt; anything else would hand out a
    /// receipt for signatures nobody verified.
    pub fn records_envelope(&self, signed: &pb::SignedEvent) -> bool {
        if signed.body != self.body || signed.signatures.len() != self.signatures.len() {
            return false;
        }
        let mut unmatched: Vec<&(Digest, [u8; 64])> = self.signatures.iter().collect();
        signed.signatures.iter().all(|s| {
            let found = unmatched.iter().position(|(key_id, signature)| {
                key_id.as_bytes().as_slice() == s.key_id.as_slice()
                    && signature.as_slice() == s.signature.as_slice()
            });
            found.map(|i| unmatched.swap_remove(i)).is_some()
        })
    }

    /// The envelope as submitted.
    pub fn signed_event(&self) -> pb::SignedEvent {
        pb::SignedEvent {
            body: self.body.clone(),
            signatures: self
                .signatures
                .iter()
                .map(|(key_id, signature)| pb::Signature {
                    key_id: key_id.0.to_vec(),
                    signature: signature.to_vec(),
                })
                .collect(),
        }
    }
}

/// Merkle leaf hash of encoded entry bytes.
pub fn leaf_hash(encoded: &[u8]) -> Digest {
    Blake3Hasher::hash_leaf(encoded)
}

/// The chain link after an entry.
pub fn chain_link(chain_prev: &Digest, leaf_hash: &Digest) -> Digest {
    Purpose::ChainLink.hash_parts(&[chain_prev.as_bytes(), leaf_hash.as_bytes()])
}

struct Reader<'a>(&'a [u8]);

impl Reader<'_> {
    fn take<const N: usize>(&mut self) -> Result<[u8; N], EntryError> {
        let bytes = self.slice(N)?;
        <[u8; N]>::try_from(bytes).map_err(|_| EntryError::Truncated)
    }

    fn slice(&mut self, n: usize) -> Result<&[u8], EntryError> {
        if self.0.len() < n {
            return Err(EntryError::Truncated);
        }
        let (head, tail) = self.0.split_at(n);
        self.0 = tail;
        Ok(head)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn sample() -> LedgerEntry {
        LedgerEntry {
            index: 7,
            sequenced_at: 1_700_000_000_000,
            chain_prev: Digest([3; 32]),
            body: b"body".to_vec(),
            signatures: vec![(Digest([1; 32]), [2; 64])],
        }
    }

    #[test]
    fn round_trip() {
        let e = sample();
        assert_eq!(LedgerEntry::decode(&e.encode()), Ok(e));
    }

    #[test]
    fn strict_parsing() {
        let bytes = sample().encode();
        let mut extra = bytes.clone();
        extra.push(0);
        assert_eq!(LedgerEntry::decode(&extra), Err(EntryError::Trailing(1)));
        assert_eq!(
            LedgerEntry::decode(&bytes[..bytes.len() - 1]),
            Err(EntryError::Truncated)
        );
        let mut v2 = bytes.clone();
        v2[0] = 2;
        assert_eq!(LedgerEntry::decode(&v2), Err(EntryError::Version(2)));
    }

    #[test]
    fn an_envelope_is_recorded_only_with_the_same_signatures() {
        let mut e = sample();
        e.signatures.push((Digest([4; 32]), [5; 64]));
        let submitted = e.signed_event();
        assert!(e.records_envelope(&submitted));

        let mut reordered = submitted.clone();
        reordered.signatures.reverse();
        assert!(e.records_envelope(&reordered), "order does not matter");

        let mut forged = submitted.clone();
        forged.signatures[1].signature[0] ^= 1;
        assert!(!e.records_envelope(&forged), "a changed signature");

        let mut fewer = submitted.clone();
        fewer.signatures.pop();
        assert!(!e.records_envelope(&fewer), "a missing signature");

        let mut repeated = submitted.clone();
        repeated.signatures[1] = repeated.signatures[0].clone();
        assert!(!e.records_envelope(&repeated), "one recorded pair twice");

        let mut other_body = submitted;
        other_body.body.push(0);
        assert!(!e.records_envelope(&other_body), "a different body");
    }

    proptest! {
        #[test]
        fn decode_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..400)) {
            let _ = LedgerEntry::decode(&bytes);
        }
    }
}

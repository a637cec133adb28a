//! # wasteledger-core
//!
//! The pure, verifiable heart of WasteLedger: wire types, canonical hashing, signatures, Merkle
//! and completeness proofs, custody rules, checkpoints and offline custody-proof verification.
//!
//! Nothing here does I/O, spawns tasks or reads a clock: every function is deterministic, so that
//! every node of a cluster (and every offline verifier) reaches the same verdict on the same
//! bytes. Storage, consensus and the network live in crates above this one.
//!
//! Map of the crate, bottom up:
//! - [`hash`], [`signing`]: blake3 contexts, key ids, `verify_strict` over domain-tagged bytes;
//! - [`merkle`], [`map`]: the RFC 9162 ledger tree and the completeness map (sparse Merkle tree);
//! - [`checkpoint`]: signed-note checkpoints, witness cosigning and the trust policy;
//! - [`quantity`], [`tracking`], [`manifest`]: value types and manifest validation;
//! - [`registry`], [`custody`]: the party registry and the manifest lifecycle rules;
//! - [`envelope`], [`entry`], [`ledger`]: signed events, leaf bytes, and the decision function;
//! - [`genesis`], [`proof`], [`memory`]: trust roots, custody proofs, an in-memory ledger.

pub mod checkpoint;
pub mod codec;
pub mod compose;
pub mod custody;
pub mod entry;
pub mod envelope;
pub mod genesis;
pub mod hash;
pub mod ledger;
pub mod manifest;
pub mod map;
pub mod memory;
pub mod merkle;
pub mod proof;
pub mod quantity;
pub mod registry;
pub mod sample;
pub mod signing;
pub mod tracking;

#[cfg(test)]
mod rules_tests;

/// Protobuf messages of the `wasteledger.v1` package, generated from `proto/`.
pub mod pb {
    #![allow(missing_docs, unreachable_pub, clippy::all, clippy::pedantic)]
    include!(concat!(env!("OUT_DIR"), "/wasteledger.v1.rs"));
    // Canonical protobuf-JSON (proto field names, enum names, base64 bytes, 64-bit integers as
    // strings) for tools that read and write message files; off by default so nodes and the
    // offline verifier carry no serde code they do not use.
    #[cfg(feature = "json")]
    include!(concat!(env!("OUT_DIR"), "/wasteledger.v1.serde.rs"));
}

pub use hash::{Digest, Purpose};

//! # wasteledger-core
//!
//! The pure, verifiable heart of WasteLedger: wire types, canonical hashing, signatures, Merkle
//! and completeness proofs, custody rules, checkpoints and offline custody-proof verification.
//!
//! Nothing here does I/O, spawns tasks or reads a clock: every function is deterministic, so that
//! every node of a cluster (and every offline verifier) reaches the same verdict on the same
//! bytes. Storage, consensus and the network live in crates above this one.

pub mod checkpoint;
pub mod hash;
pub mod map;
pub mod merkle;
pub mod signing;

/// Protobuf messages of the `wasteledger.v1` package, generated from `proto/`.
pub mod pb {
    #![allow(missing_docs, unreachable_pub, clippy::all, clippy::pedantic)]
    include!(concat!(env!("OUT_DIR"), "/wasteledger.v1.rs"));
}

pub use hash::{Digest, Purpose};

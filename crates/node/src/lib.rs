//! # wasteledger-node
//!
//! A WasteLedger node: openraft consensus whose log and state machine live in the sled store
//! (`wasteledger-store`), the node-to-node Raft transport over tonic, witness cosigning of
//! checkpoints, and the runtime that ties them together. Every openraft type stays inside this
//! crate.

pub mod types;

pub mod log_storage;

#[allow(missing_docs, unreachable_pub, clippy::all)]
/// Generated gRPC code of the Raft transport (`proto/wasteledger/v1/raft.proto`).
pub mod raft_pb {
    tonic::include_proto!("wasteledger.v1");
}

pub mod snapshot_file;
pub mod snapshot_trigger;
pub mod state_machine;

pub mod config;
pub mod history;
pub mod network;
pub mod node;
pub mod proposer;
pub mod status;
pub mod witness;

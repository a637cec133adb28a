//! Generates the LedgerService and ClusterService servers and clients. Message types come from
//! wasteledger-core (`extern_path`), so there is one Rust type per protobuf message in the whole
//! workspace. Also writes the descriptor set of every public `wasteledger.v1` file, which the
//! server's reflection service hands to tools such as grpcurl.

use std::path::PathBuf;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let root = PathBuf::from(std::env::var("CARGO_MANIFEST_DIR")?).join("../../proto");
    // Every public file of the package (the Raft transport's raft.proto is node-internal).
    let files = [
        "wasteledger/v1/common.proto",
        "wasteledger/v1/party.proto",
        "wasteledger/v1/manifest.proto",
        "wasteledger/v1/event.proto",
        "wasteledger/v1/ledger.proto",
        "wasteledger/v1/state.proto",
        "wasteledger/v1/ledger_service.proto",
        "wasteledger/v1/cluster_service.proto",
    ];
    for file in &files {
        println!("cargo:rerun-if-changed={}", root.join(file).display());
    }
    let descriptors = protox::compile(files, [&root])?;
    let out = PathBuf::from(std::env::var("OUT_DIR")?);
    std::fs::write(
        out.join("wasteledger_v1_descriptor.bin"),
        prost::Message::encode_to_vec(&descriptors),
    )?;
    tonic_prost_build::configure()
        .build_client(true)
        .build_server(true)
        .extern_path(".wasteledger.v1", "::wasteledger_core::pb")
        .compile_fds(descriptors)?;
    Ok(())
}

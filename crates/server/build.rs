//! Generates the LedgerService server and client. Message types come from wasteledger-core
//! (`extern_path`), so there is one Rust type per protobuf message in the whole workspace.

use std::path::PathBuf;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let root = PathBuf::from(std::env::var("CARGO_MANIFEST_DIR")?).join("../../proto");
    let file = "wasteledger/v1/ledger_service.proto";
    println!("cargo:rerun-if-changed={}", root.join(file).display());
    let descriptors = protox::compile([file], [&root])?;
    tonic_prost_build::configure()
        .build_client(true)
        .build_server(true)
        .extern_path(".wasteledger.v1", "::wasteledger_core::pb")
        .compile_fds(descriptors)?;
    Ok(())
}

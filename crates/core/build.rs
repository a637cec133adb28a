//! Compiles `proto/wasteledger/v1/*.proto` into Rust message types with a pure-Rust protobuf
//! compiler (protox), so a machine needs no system `protoc`.

use std::path::PathBuf;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let root = PathBuf::from(std::env::var("CARGO_MANIFEST_DIR")?).join("../../proto");
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
    let descriptor_bytes = prost::Message::encode_to_vec(&descriptors);
    prost_build::Config::new()
        // Byte fields stay Vec<u8>; maps are not used anywhere in signed messages.
        .compile_fds(descriptors)?;
    json(&descriptor_bytes)?;
    Ok(())
}

/// With the `json` feature: canonical protobuf-JSON serde impls (pbjson) for every message, so
/// manifests and events can be written and read as JSON or TOML files by tools. Field names stay
/// the proto names (snake_case) so a file reads like the .proto it follows; both spellings are
/// accepted on input.
#[cfg(feature = "json")]
fn json(descriptors: &[u8]) -> Result<(), Box<dyn std::error::Error>> {
    pbjson_build::Builder::new()
        .register_descriptors(descriptors)?
        .preserve_proto_field_names()
        .build(&[".wasteledger.v1"])?;
    Ok(())
}

#[cfg(not(feature = "json"))]
fn json(_descriptors: &[u8]) -> Result<(), Box<dyn std::error::Error>> {
    Ok(())
}

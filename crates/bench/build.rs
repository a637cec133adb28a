//! Compiles the etcd KV subset used by the comparison (client only), with protox: no system
//! protoc needed.

use std::path::PathBuf;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let root = PathBuf::from(std::env::var("CARGO_MANIFEST_DIR")?).join("proto");
    println!(
        "cargo:rerun-if-changed={}",
        root.join("etcd_kv.proto").display()
    );
    let descriptors = protox::compile(["etcd_kv.proto"], [&root])?;
    tonic_prost_build::configure()
        .build_client(true)
        .build_server(false)
        .compile_fds(descriptors)?;
    Ok(())
}

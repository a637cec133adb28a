//! The demo network's checked-in configuration (`config/`) is consistent: the genesis is the
//! sample network's, each node's witness key file holds the key the genesis names for it, and
//! each node config parses and points at them; the replica's config (node 4) parses, names no
//! witness key, and the genesis names no witness for it.
//!
//! Regenerate the genesis and key files after an intentional change with
//! `WASTELEDGER_WRITE_CONFIG=1 cargo test -p wasteledger-tests --test config_files`.

// Test code: a failed expectation is a test failure with a message.
#![allow(clippy::expect_used)]

use std::path::PathBuf;

use wasteledger_core::genesis::Genesis;
use wasteledger_core::sample::SampleNetwork;
use wasteledger_core::signing::{format_secret_key_file, parse_secret_key_file};
use wasteledger_node::config::NodeConfig;

fn config_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../config")
}

#[test]
fn demo_config_is_consistent() {
    let net = SampleNetwork::new().expect("sample network");
    let dir = config_dir();
    if std::env::var_os("WASTELEDGER_WRITE_CONFIG").is_some() {
        std::fs::create_dir_all(dir.join("keys")).expect("mkdir");
        std::fs::write(dir.join("genesis.pb"), &net.genesis_bytes).expect("write genesis");
        for (i, (name, key)) in net.witnesses.iter().enumerate() {
            let text = format_secret_key_file(
                key,
                &format!(
                    "Witness key of demo node {} ({name}).\nDerived from a public label: for the local demo only.",
                    i + 1
                ),
            );
            std::fs::write(dir.join(format!("keys/node{}.witness.key", i + 1)), text)
                .expect("write key");
        }
    }
    let genesis_bytes =
        std::fs::read(dir.join("genesis.pb")).expect("config/genesis.pb is checked in");
    assert_eq!(
        genesis_bytes, net.genesis_bytes,
        "config/genesis.pb differs from the sample network"
    );
    let genesis = Genesis::from_bytes(&genesis_bytes).expect("genesis parses");
    for n in 1..=3u64 {
        let config =
            NodeConfig::load(&dir.join(format!("node{n}.toml"))).expect("node config parses");
        assert_eq!(config.id, n);
        assert_eq!(
            config.genesis.canonicalize().ok(),
            dir.join("genesis.pb").canonicalize().ok()
        );
        assert_eq!(config.peers.len(), 2);
        // Admin calls without authorization stay on loopback; every node has its own ports.
        assert_eq!(
            config.admin_listen.as_deref(),
            Some(format!("127.0.0.1:730{n}").as_str())
        );
        assert!(!config.admin_listen_public);
        assert_eq!(
            config.metrics_listen.as_deref(),
            Some(format!("127.0.0.1:740{n}").as_str())
        );
        let key_file = config
            .witness_key
            .as_ref()
            .expect("every demo node is a witness");
        let key = parse_secret_key_file(&std::fs::read_to_string(key_file).expect("key file"))
            .expect("key parses");
        let witness = genesis
            .witnesses
            .witnesses()
            .iter()
            .find(|w| w.node_id == n)
            .expect("genesis names a witness for every node");
        assert_eq!(
            witness.key,
            key.verifying_key(),
            "node {n}'s witness key is not the one in the genesis"
        );
    }
    let replica = NodeConfig::load(&dir.join("node4.toml")).expect("replica config parses");
    assert_eq!((replica.id, replica.witness_key.as_ref()), (4, None));
    assert!(!replica.bootstrap && replica.peers.is_empty());
    assert!(
        genesis.witnesses.witnesses().iter().all(|w| w.node_id != 4),
        "node 4 is meant to be a replica, not a witness"
    );
    assert_eq!(replica.admin_listen.as_deref(), Some("127.0.0.1:7304"));
}

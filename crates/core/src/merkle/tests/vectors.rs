//! The RFC 6962 conformance vectors of transparency-dev/merkle (checked in under
//! `tests/vectors/rfc6962/`), run with SHA-256, plus the well-known RFC 6962 test-tree roots.

use std::fs;
use std::path::{Path, PathBuf};

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as BASE64;
use serde::Deserialize;
use sha2::{Digest as _, Sha256};

use super::{EMPTY_SHA256, Sha256Hasher, tree_of};
use crate::hash::Digest;
use crate::merkle::{MerkleHasher, root_of_leaves, verify_consistency, verify_inclusion};

const VECTORS: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../../tests/vectors/rfc6962");

/// The entries of the standard RFC 6962 test tree (transparency-dev/merkle `testonly`).
const STANDARD_LEAVES: [&str; 8] = [
    "",
    "00",
    "10",
    "2021",
    "3031",
    "40414243",
    "5051525354555657",
    "606162636465666768696a6b6c6d6e6f",
];

/// Roots of the standard test tree at sizes 1 to 8 (transparency-dev/merkle `testonly`).
const STANDARD_ROOTS: [&str; 8] = [
    "6e340b9cffb37a989ca544e6bb780a2c78901d3fb33738768511a30617afa01d",
    "fac54203e7cc696cf0dfcb42c92a1d9dbaf70ad9e621f4bd8d98662f00e3c125",
    "aeb6bcfe274b70a14fb067a5e5578264db0fa9b51af5e0ba159158f329e06e77",
    "d37ee418976dd95753c1c73862b9398fa2a2cf9b4ff0fdfe8b30cd95209614b7",
    "4e3bbb1f7b478dcfe71fb631631519a3bca12c9aefca1612bfce4c13a86264d4",
    "76e67dadbcdf1e10e1b74ddc608abd2f98dfb16fbce75277b5232a127f2087ef",
    "ddb89be403809e325750d3d263cd78929c2942b7942a34b77e122c9594a74c8c",
    "5dc9da79a70659a9ad559cb701ded9a2ab9d823aad2f4960cfe370eff4604328",
];

fn standard_leaf_hashes() -> Vec<Digest> {
    STANDARD_LEAVES
        .iter()
        .map(|entry| Sha256Hasher::hash_leaf(&hex::decode(entry).expect("valid hex")))
        .collect()
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct InclusionProbe {
    leaf_idx: u64,
    tree_size: u64,
    root: String,
    leaf_hash: String,
    proof: Option<Vec<String>>,
    desc: String,
    want_err: bool,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct ConsistencyProbe {
    size1: u64,
    size2: u64,
    root1: String,
    root2: String,
    proof: Option<Vec<String>>,
    desc: String,
    want_err: bool,
}

/// Every `.json` file under `dir`, recursively, in a stable order.
fn json_files(dir: &Path) -> Vec<PathBuf> {
    let mut files = Vec::new();
    let mut pending = vec![dir.to_path_buf()];
    while let Some(dir) = pending.pop() {
        for entry in fs::read_dir(&dir).unwrap_or_else(|e| panic!("{}: {e}", dir.display())) {
            let path = entry.expect("readable directory entry").path();
            if path.is_dir() {
                pending.push(path);
            } else if path.extension().is_some_and(|ext| ext == "json") {
                files.push(path);
            }
        }
    }
    files.sort();
    files
}

fn read<T: for<'de> Deserialize<'de>>(path: &Path) -> T {
    let text = fs::read_to_string(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    serde_json::from_str(&text).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

fn bytes(b64: &str) -> Vec<u8> {
    BASE64.decode(b64).expect("vector values are valid base64")
}

/// A vector's root or proof hash as a [`Digest`].
///
/// The reference treats these as opaque byte strings: it hashes proof elements of any length
/// and compares roots byte for byte, and some vectors use that ("trailing garbage" is an empty
/// proof element, "don't care" roots are 12 bytes). A `Digest` is exactly 32 bytes, so a value
/// of another length is replaced by a stand-in: SHA-256 of a tag and the value. The stand-in
/// keeps equal values equal and unequal values unequal (barring a SHA-256 collision), and never
/// equals a real hash, which is all the reference's comparisons depend on.
fn opaque(b64: &str) -> Digest {
    let value = bytes(b64);
    Digest::from_slice(&value).unwrap_or_else(|| {
        Digest(
            Sha256::new()
                .chain_update(b"stand-in for a non-32-byte vector value:")
                .chain_update(&value)
                .finalize()
                .into(),
        )
    })
}

fn opaque_proof(proof: &Option<Vec<String>>) -> Vec<Digest> {
    proof.iter().flatten().map(|h| opaque(h)).collect()
}

fn is_happy_path(path: &Path) -> bool {
    path.file_name()
        .is_some_and(|name| name == "happy-path.json")
}

#[test]
fn standard_tree_roots() {
    let leaves = standard_leaf_hashes();
    let tree = tree_of::<Sha256Hasher>(&leaves);
    assert_eq!(root_of_leaves::<Sha256Hasher>(&[]).to_hex(), EMPTY_SHA256);
    for (size, expected) in (1..=8).zip(STANDARD_ROOTS) {
        assert_eq!(
            root_of_leaves::<Sha256Hasher>(&leaves[..size]).to_hex(),
            expected,
            "size {size}"
        );
        assert_eq!(
            tree.root_at(size as u64).expect("in range").to_hex(),
            expected,
            "size {size}"
        );
    }
}

#[test]
fn rfc6962_conformance_vectors() {
    let leaves = standard_leaf_hashes();
    let tree = tree_of::<Sha256Hasher>(&leaves);
    let root = Path::new(VECTORS);
    let mut failures = Vec::new();
    let (mut processed, mut accepted, mut cross_checked) = (0, 0, 0);

    for path in json_files(&root.join("inclusion")) {
        let probe: InclusionProbe = read(&path);
        processed += 1;
        let proof = opaque_proof(&probe.proof);
        // Unlike roots, the reference checks the leaf hash's length and rejects any other.
        let outcome = match Digest::from_slice(&bytes(&probe.leaf_hash)) {
            None => Err("leaf hash is not 32 bytes".to_owned()),
            Some(leaf) => verify_inclusion::<Sha256Hasher>(
                &leaf,
                probe.leaf_idx,
                probe.tree_size,
                &proof,
                &opaque(&probe.root),
            )
            .map_err(|e| e.to_string()),
        };
        if outcome.is_ok() == probe.want_err {
            failures.push(format!("{}: {}: {outcome:?}", path.display(), probe.desc));
        }
        accepted += usize::from(outcome.is_ok());
        // The happy paths are proofs in the standard tree: our tree must produce them too.
        if is_happy_path(&path) && probe.tree_size <= 8 {
            cross_checked += 1;
            let (index, size) = (probe.leaf_idx, probe.tree_size);
            assert_eq!(
                tree.root_at(size).ok(),
                Some(opaque(&probe.root)),
                "{path:?}"
            );
            assert_eq!(tree.leaf_hash(index).ok(), Some(opaque(&probe.leaf_hash)));
            assert_eq!(
                tree.inclusion_proof(index, size).ok(),
                Some(proof),
                "{path:?}"
            );
        }
    }

    for path in json_files(&root.join("consistency")) {
        let probe: ConsistencyProbe = read(&path);
        processed += 1;
        let proof = opaque_proof(&probe.proof);
        let outcome = verify_consistency::<Sha256Hasher>(
            probe.size1,
            probe.size2,
            &opaque(&probe.root1),
            &opaque(&probe.root2),
            &proof,
        );
        if outcome.is_ok() == probe.want_err {
            failures.push(format!("{}: {}: {outcome:?}", path.display(), probe.desc));
        }
        accepted += usize::from(outcome.is_ok());
        if is_happy_path(&path) && probe.size2 <= 8 {
            cross_checked += 1;
            let (old, new) = (probe.size1, probe.size2);
            assert_eq!(
                tree.root_at(old).ok(),
                Some(opaque(&probe.root1)),
                "{path:?}"
            );
            assert_eq!(
                tree.root_at(new).ok(),
                Some(opaque(&probe.root2)),
                "{path:?}"
            );
            assert_eq!(
                tree.consistency_proof(old, new).ok(),
                Some(proof),
                "{path:?}"
            );
        }
    }

    assert!(failures.is_empty(), "{}", failures.join("\n"));
    // Guard against a test that passes because it found nothing to check.
    assert!(processed > 150, "only {processed} vector files found");
    // 5 inclusion and 5 consistency happy paths, the one-entry tree, and "sizes equal (one)".
    assert_eq!(accepted, 12, "accepted vectors");
    assert_eq!(cross_checked, 10, "happy paths cross-checked");
}

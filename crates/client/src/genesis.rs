//! Creating a network's genesis file from public keys and a trust policy, and loading one.
//!
//! The genesis bytes are written exactly once: the ledger id is their hash, so a file that is
//! re-encoded (even with the same content) names a different network.

use std::path::{Path, PathBuf};

use prost::Message;
use wasteledger_core::genesis::{Genesis, GenesisError};
use wasteledger_core::pb;

use crate::keys::{KeyError, parse_public_hex};

/// Why a genesis could not be created or read.
#[derive(Debug, thiserror::Error)]
pub enum GenesisFileError {
    /// A command-line spec is malformed.
    #[error("{what} {text:?}: expected {expected}")]
    Spec {
        /// Which option.
        what: &'static str,
        /// The text given.
        text: String,
        /// The expected form.
        expected: &'static str,
    },
    /// A public key is unusable.
    #[error(transparent)]
    Key(#[from] KeyError),
    /// The result breaks a genesis rule.
    #[error("the genesis would be invalid: {0}")]
    Invalid(#[from] GenesisError),
    /// The file exists (a genesis is never silently replaced: it defines the network).
    #[error("{0} already exists; a genesis defines a network and is never overwritten")]
    Exists(PathBuf),
    /// File system error.
    #[error("{path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The error.
        source: std::io::Error,
    },
    /// The file is not a genesis.
    #[error("{path} is not a usable genesis file: {source}")]
    Load {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        source: GenesisError,
    },
}

/// What to put in a new genesis.
#[derive(Clone, Debug, Default)]
pub struct GenesisSpec {
    /// Ledger name, e.g. `wasteledger.baotou.example/pilot`.
    pub ledger_name: String,
    /// `NAME=PUBLIC_KEY_HEX` for each authority.
    pub authorities: Vec<String>,
    /// `NODE_ID:NAME:GROUP:PUBLIC_KEY_HEX` for each founding node's witness key.
    pub witnesses: Vec<String>,
    /// Fewest distinct witnesses a checkpoint needs.
    pub min_total: u32,
    /// `GROUP=K`: at least K witnesses of GROUP.
    pub group_minimums: Vec<String>,
    /// Allowed clock skew in ms (0 = the default 5 minutes).
    pub max_clock_skew_ms: i64,
    /// Creation time (ms since the epoch).
    pub created_at: i64,
}

fn spec_err(what: &'static str, text: &str, expected: &'static str) -> GenesisFileError {
    GenesisFileError::Spec {
        what,
        text: text.to_owned(),
        expected,
    }
}

/// Builds and validates the genesis bytes for `spec`.
pub fn build(spec: &GenesisSpec) -> Result<(Vec<u8>, Genesis), GenesisFileError> {
    let mut authorities = Vec::new();
    for a in &spec.authorities {
        let (name, key) = a
            .split_once('=')
            .ok_or_else(|| spec_err("--authority", a, "NAME=PUBLIC_KEY_HEX"))?;
        authorities.push(pb::AuthorityKey {
            name: name.to_owned(),
            ed25519: parse_public_hex(key)?.to_bytes().to_vec(),
        });
    }
    let mut nodes = Vec::new();
    for w in &spec.witnesses {
        const FORM: &str =
            "NODE_ID:NAME:GROUP:PUBLIC_KEY_HEX, e.g. 1:node1.generator:generator:<64 hex>";
        let parts: Vec<&str> = w.splitn(4, ':').collect();
        let [id, name, group, key] = parts.as_slice() else {
            return Err(spec_err("--witness", w, FORM));
        };
        let node_id: u64 = id.parse().map_err(|_| spec_err("--witness", w, FORM))?;
        nodes.push(pb::NodeWitness {
            node_id,
            name: (*name).to_owned(),
            group: (*group).to_owned(),
            ed25519: parse_public_hex(key)?.to_bytes().to_vec(),
        });
    }
    let mut groups = Vec::new();
    for g in &spec.group_minimums {
        let (group, k) = g
            .split_once('=')
            .ok_or_else(|| spec_err("--group-min", g, "GROUP=K"))?;
        groups.push(pb::GroupRequirement {
            group: group.to_owned(),
            min_signers: k
                .parse()
                .map_err(|_| spec_err("--group-min", g, "GROUP=K"))?,
        });
    }
    let message = pb::Genesis {
        ledger_name: spec.ledger_name.clone(),
        authorities,
        nodes,
        checkpoint_policy: Some(pb::TrustPolicy {
            min_total: spec.min_total,
            groups,
        }),
        created_at: spec.created_at,
        max_clock_skew_ms: spec.max_clock_skew_ms,
    };
    let bytes = message.encode_to_vec();
    let genesis = Genesis::from_bytes(&bytes)?;
    Ok((bytes, genesis))
}

/// Writes genesis bytes to a new file (never over an existing one).
pub fn write_new(path: &Path, bytes: &[u8]) -> Result<(), GenesisFileError> {
    use std::io::Write;
    let io = |source| GenesisFileError::Io {
        path: path.to_owned(),
        source,
    };
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .open(path)
        .map_err(|e| {
            if e.kind() == std::io::ErrorKind::AlreadyExists {
                GenesisFileError::Exists(path.to_owned())
            } else {
                io(e)
            }
        })?;
    f.write_all(bytes).map_err(io)?;
    f.sync_all().map_err(io)
}

/// Reads and validates a genesis file.
pub fn load(path: &Path) -> Result<Genesis, GenesisFileError> {
    let bytes = std::fs::read(path).map_err(|source| GenesisFileError::Io {
        path: path.to_owned(),
        source,
    })?;
    Genesis::from_bytes(&bytes).map_err(|source| GenesisFileError::Load {
        path: path.to_owned(),
        source,
    })
}

/// What `genesis create` and `genesis show` report.
#[derive(Clone, Debug, serde::Serialize)]
pub struct GenesisInfo {
    /// The ledger name.
    pub ledger_name: String,
    /// The ledger id (hex): what every signature and proof is bound to.
    pub ledger_id: String,
    /// Authority names and key ids.
    pub authorities: Vec<(String, String)>,
    /// Witness node id, name and group.
    pub witnesses: Vec<(u64, String, String)>,
    /// The trust policy in words.
    pub policy: String,
}

/// Describes a genesis.
pub fn describe(g: &Genesis) -> GenesisInfo {
    let policy = g.message.checkpoint_policy.clone().unwrap_or_default();
    let mut text = format!("at least {} witness cosignatures", policy.min_total);
    for r in &policy.groups {
        text.push_str(&format!(", {} from {}", r.min_signers, r.group));
    }
    GenesisInfo {
        ledger_name: g.ledger_name().to_owned(),
        ledger_id: g.ledger_id.to_hex(),
        authorities: g
            .authorities
            .iter()
            .map(|a| (a.name.clone(), a.key_id.to_hex()))
            .collect(),
        witnesses: g
            .message
            .nodes
            .iter()
            .map(|n| (n.node_id, n.name.clone(), n.group.clone()))
            .collect(),
        policy: text,
    }
}

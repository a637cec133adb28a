//! Node configuration files (`config/nodeN.toml`): parsing, validation and path resolution.
//!
//! Unknown keys are errors (a typo must not silently fall back to a default), and every error
//! names the file and the key. Relative paths are resolved against the directory of the
//! configuration file, so a node starts the same way from any working directory.

use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;
use wasteledger_store::DurableOptions;

use crate::node::RaftTimings;

/// Why a configuration file was refused.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The file could not be read.
    #[error("cannot read configuration file {path}: {source}")]
    Read {
        /// The file.
        path: PathBuf,
        /// The I/O error.
        source: std::io::Error,
    },
    /// TOML syntax, an unknown key, a missing key or a wrong type.
    #[error("configuration file {path}: {message}")]
    Parse {
        /// The file.
        path: PathBuf,
        /// What toml reported, including the key and line.
        message: String,
    },
    /// A value that parses but makes no sense.
    #[error("configuration file {path}: key `{key}`: {problem}")]
    Invalid {
        /// The file.
        path: PathBuf,
        /// The key.
        key: &'static str,
        /// What is wrong.
        problem: String,
    },
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawConfig {
    id: u64,
    data_dir: PathBuf,
    genesis: PathBuf,
    #[serde(default)]
    witness_key: Option<PathBuf>,
    #[serde(default)]
    bootstrap: bool,
    listen: RawListen,
    #[serde(default)]
    peers: Vec<RawPeer>,
    #[serde(default)]
    raft: RawRaft,
    #[serde(default)]
    storage: RawStorage,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawStorage {
    #[serde(default = "d_cache_mb")]
    cache_mb: u64,
    #[serde(default = "d_stall_timeout_s")]
    stall_timeout_s: u64,
}

/// Default for `[storage] stall_timeout_s`: far beyond any sync seen here (a sync after
/// importing a 1M-event snapshot took seconds), short enough that a stuck node is restarted
/// long before anyone would notice it by hand.
const DEFAULT_STALL_TIMEOUT_S: u64 = 120;
/// Smallest stall timeout accepted: a busy disk's fsync can take seconds, and exiting on a
/// slow-but-working sync would turn load into restarts.
const MIN_STALL_TIMEOUT_S: u64 = 10;
/// Largest stall timeout accepted (a day): beyond it the watchdog would be off in all but name.
const MAX_STALL_TIMEOUT_S: u64 = 86_400;

fn d_stall_timeout_s() -> u64 {
    DEFAULT_STALL_TIMEOUT_S
}

fn d_cache_mb() -> u64 {
    DurableOptions::default().cache_capacity / MIB
}

impl Default for RawStorage {
    fn default() -> Self {
        RawStorage {
            cache_mb: d_cache_mb(),
            stall_timeout_s: d_stall_timeout_s(),
        }
    }
}

const MIB: u64 = 1024 * 1024;
/// Smallest page cache accepted: far above the few pages one write touches, and a smaller
/// value is more likely a unit mistake (GiB meant) than a choice.
const MIN_CACHE_MB: u64 = 16;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawListen {
    raft: String,
    api: String,
    #[serde(default)]
    admin: Option<String>,
    #[serde(default)]
    admin_public: bool,
    #[serde(default)]
    metrics: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawPeer {
    id: u64,
    raft: String,
    api: String,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawRaft {
    #[serde(default = "d_heartbeat")]
    heartbeat_ms: u64,
    #[serde(default = "d_emin")]
    election_timeout_min_ms: u64,
    #[serde(default = "d_emax")]
    election_timeout_max_ms: u64,
    #[serde(default = "d_snap")]
    snapshot_every: u64,
    #[serde(default = "d_keep")]
    keep_logs_after_snapshot: u64,
}

fn d_heartbeat() -> u64 {
    RaftTimings::default().heartbeat_ms
}
fn d_emin() -> u64 {
    RaftTimings::default().election_timeout_min_ms
}
fn d_emax() -> u64 {
    RaftTimings::default().election_timeout_max_ms
}
fn d_snap() -> u64 {
    RaftTimings::default().snapshot_every
}
fn d_keep() -> u64 {
    RaftTimings::default().keep_logs_after_snapshot
}

impl Default for RawRaft {
    fn default() -> Self {
        RawRaft {
            heartbeat_ms: d_heartbeat(),
            election_timeout_min_ms: d_emin(),
            election_timeout_max_ms: d_emax(),
            snapshot_every: d_snap(),
            keep_logs_after_snapshot: d_keep(),
        }
    }
}

/// A peer of this node.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Peer {
    /// Raft node id.
    pub id: u64,
    /// Raft transport address.
    pub raft_addr: String,
    /// Public API address.
    pub api_addr: String,
}

/// A validated node configuration with absolute paths.
#[derive(Debug, Clone)]
pub struct NodeConfig {
    /// The file it came from.
    pub path: PathBuf,
    /// Raft node id.
    pub id: u64,
    /// Data directory.
    pub data_dir: PathBuf,
    /// Genesis file.
    pub genesis: PathBuf,
    /// Witness key file (hex seed). Required of the nodes the genesis names as witnesses;
    /// absent on a replica (a node that replicates and serves the ledger but does not cosign
    /// checkpoints, such as a regulator's own copy).
    pub witness_key: Option<PathBuf>,
    /// This node initialises the cluster on its first start.
    pub bootstrap: bool,
    /// Raft transport listen address.
    pub raft_listen: String,
    /// Public API listen address.
    pub api_listen: String,
    /// Admin listen address (`listen.admin`): ClusterService without authorization. Loopback
    /// unless `admin_listen_public`; none when absent (admin calls then need an authority
    /// signature on the public listener).
    pub admin_listen: Option<String>,
    /// `listen.admin_public = true`: the operator accepts a non-loopback admin listener.
    pub admin_listen_public: bool,
    /// Prometheus endpoint address (`listen.metrics`, HTTP `GET /metrics`); none when absent.
    pub metrics_listen: Option<String>,
    /// The other founding members.
    pub peers: Vec<Peer>,
    /// Raft timings.
    pub timings: RaftTimings,
    /// Storage tuning (`[storage]`).
    pub storage: DurableOptions,
    /// `[storage] stall_timeout_s`: a database sync running longer than this takes the node
    /// out (see [`wasteledger_store::DurableDb::spawn_stall_watchdog`]).
    pub storage_stall_limit: Duration,
}

impl NodeConfig {
    /// Reads and validates a configuration file.
    pub fn load(path: &Path) -> Result<NodeConfig, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_owned(),
            source,
        })?;
        NodeConfig::parse(path, &text)
    }

    /// Parses configuration text as if read from `path`.
    pub fn parse(path: &Path, text: &str) -> Result<NodeConfig, ConfigError> {
        let raw: RawConfig = toml::from_str(text).map_err(|e| ConfigError::Parse {
            path: path.to_owned(),
            message: e.to_string(),
        })?;
        let invalid = |key, problem: String| ConfigError::Invalid {
            path: path.to_owned(),
            key,
            problem,
        };
        if raw.id == 0 {
            return Err(invalid("id", "node ids start at 1".into()));
        }
        let base = path.parent().map(Path::to_path_buf).unwrap_or_default();
        let resolve = |p: &Path| {
            if p.is_absolute() {
                p.to_owned()
            } else {
                base.join(p)
            }
        };
        for (key, addr) in [
            ("listen.raft", &raw.listen.raft),
            ("listen.api", &raw.listen.api),
        ] {
            if addr.parse::<std::net::SocketAddr>().is_err() {
                return Err(invalid(key, format!("{addr:?} is not an ip:port address")));
            }
        }
        for (key, addr) in [
            ("listen.admin", &raw.listen.admin),
            ("listen.metrics", &raw.listen.metrics),
        ] {
            if let Some(addr) = addr
                && addr.parse::<std::net::SocketAddr>().is_err()
            {
                return Err(invalid(key, format!("{addr:?} is not an ip:port address")));
            }
        }
        // Calls on the admin listener need no credentials, so it must not be reachable from
        // other machines unless the operator says so explicitly.
        if let Some(admin) = &raw.listen.admin
            && let Ok(addr) = admin.parse::<std::net::SocketAddr>()
            && !addr.ip().is_loopback()
            && !raw.listen.admin_public
        {
            return Err(invalid(
                "listen.admin",
                format!(
                    "{admin} is not a loopback address, and admin calls there need no \
                     authorization; use 127.0.0.1, or set listen.admin_public = true"
                ),
            ));
        }
        let mut seen = std::collections::BTreeSet::from([raw.id]);
        for peer in &raw.peers {
            if !seen.insert(peer.id) {
                return Err(invalid(
                    "peers.id",
                    format!("node id {} appears twice", peer.id),
                ));
            }
            if peer.raft.parse::<std::net::SocketAddr>().is_err() {
                return Err(invalid(
                    "peers.raft",
                    format!("{:?} is not an ip:port address", peer.raft),
                ));
            }
        }
        let r = &raw.raft;
        if r.heartbeat_ms == 0 || r.heartbeat_ms * 2 >= r.election_timeout_min_ms {
            return Err(invalid(
                "raft.heartbeat_ms",
                "must be positive and under half of raft.election_timeout_min_ms".into(),
            ));
        }
        if r.election_timeout_min_ms >= r.election_timeout_max_ms {
            return Err(invalid(
                "raft.election_timeout_max_ms",
                "must be greater than raft.election_timeout_min_ms".into(),
            ));
        }
        let cache_mb = raw.storage.cache_mb;
        if !(MIN_CACHE_MB..=u64::MAX / MIB).contains(&cache_mb) {
            return Err(invalid(
                "storage.cache_mb",
                format!(
                    "{cache_mb} MiB is out of range: give sled's page cache at least \
                     {MIN_CACHE_MB} MiB (the value is in MiB, not GiB)"
                ),
            ));
        }
        let stall_timeout_s = raw.storage.stall_timeout_s;
        if !(MIN_STALL_TIMEOUT_S..=MAX_STALL_TIMEOUT_S).contains(&stall_timeout_s) {
            return Err(invalid(
                "storage.stall_timeout_s",
                format!(
                    "{stall_timeout_s} s is out of range: give a sync between \
                     {MIN_STALL_TIMEOUT_S} and {MAX_STALL_TIMEOUT_S} seconds before the node \
                     is taken out as stuck"
                ),
            ));
        }
        Ok(NodeConfig {
            path: path.to_owned(),
            id: raw.id,
            data_dir: resolve(&raw.data_dir),
            genesis: resolve(&raw.genesis),
            witness_key: raw.witness_key.as_deref().map(resolve),
            bootstrap: raw.bootstrap,
            raft_listen: raw.listen.raft,
            api_listen: raw.listen.api,
            admin_listen: raw.listen.admin,
            admin_listen_public: raw.listen.admin_public,
            metrics_listen: raw.listen.metrics,
            peers: raw
                .peers
                .into_iter()
                .map(|p| Peer {
                    id: p.id,
                    raft_addr: p.raft,
                    api_addr: p.api,
                })
                .collect(),
            timings: RaftTimings {
                heartbeat_ms: r.heartbeat_ms,
                election_timeout_min_ms: r.election_timeout_min_ms,
                election_timeout_max_ms: r.election_timeout_max_ms,
                snapshot_every: r.snapshot_every,
                keep_logs_after_snapshot: r.keep_logs_after_snapshot,
            },
            storage: DurableOptions {
                cache_capacity: cache_mb * MIB,
            },
            storage_stall_limit: Duration::from_secs(stall_timeout_s),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const GOOD: &str = r#"
id = 1
data_dir = "../data/node1"
genesis = "genesis.pb"
witness_key = "keys/node1.witness.key"
bootstrap = true

[listen]
raft = "127.0.0.1:7101"
api = "127.0.0.1:7201"

[[peers]]
id = 2
raft = "127.0.0.1:7102"
api = "127.0.0.1:7202"
"#;

    #[test]
    fn parses_and_resolves_relative_paths() {
        let c = NodeConfig::parse(Path::new("/repo/config/node1.toml"), GOOD).unwrap();
        assert_eq!(c.data_dir, Path::new("/repo/config/../data/node1"));
        assert_eq!(c.genesis, Path::new("/repo/config/genesis.pb"));
        assert_eq!(c.peers.len(), 1);
        assert_eq!(c.timings.heartbeat_ms, 250);
        assert_eq!(
            c.witness_key.as_deref(),
            Some(Path::new("/repo/config/keys/node1.witness.key"))
        );
        let replica = GOOD.replace("witness_key = \"keys/node1.witness.key\"\n", "");
        let c = NodeConfig::parse(Path::new("/repo/config/node1.toml"), &replica).unwrap();
        assert_eq!(c.witness_key, None);
    }

    #[test]
    fn errors_name_the_file_and_key() {
        let typo = GOOD.replace("bootstrap", "bootstrapp");
        let e = NodeConfig::parse(Path::new("node1.toml"), &typo)
            .unwrap_err()
            .to_string();
        assert!(e.contains("node1.toml") && e.contains("bootstrapp"), "{e}");
        let missing = GOOD.replace("genesis = \"genesis.pb\"\n", "");
        let e = NodeConfig::parse(Path::new("node1.toml"), &missing)
            .unwrap_err()
            .to_string();
        assert!(e.contains("genesis"), "{e}");
        let bad = GOOD.replace("127.0.0.1:7101", "localhost");
        let e = NodeConfig::parse(Path::new("node1.toml"), &bad)
            .unwrap_err()
            .to_string();
        assert!(e.contains("listen.raft"), "{e}");
        let slow = format!("{GOOD}\n[raft]\nheartbeat_ms = 600\n");
        let e = NodeConfig::parse(Path::new("node1.toml"), &slow)
            .unwrap_err()
            .to_string();
        assert!(e.contains("raft.heartbeat_ms"), "{e}");
    }

    #[test]
    fn a_public_admin_listener_must_be_asked_for() {
        let c = NodeConfig::parse(Path::new("node1.toml"), GOOD).unwrap();
        assert_eq!((c.admin_listen, c.metrics_listen), (None, None));
        let with = GOOD.replace(
            "api = \"127.0.0.1:7201\"",
            "api = \"127.0.0.1:7201\"\nadmin = \"127.0.0.1:7301\"\nmetrics = \"127.0.0.1:7401\"",
        );
        let c = NodeConfig::parse(Path::new("node1.toml"), &with).unwrap();
        assert_eq!(c.admin_listen.as_deref(), Some("127.0.0.1:7301"));
        assert_eq!(c.metrics_listen.as_deref(), Some("127.0.0.1:7401"));
        let public = with.replace("127.0.0.1:7301", "0.0.0.0:7301");
        let e = NodeConfig::parse(Path::new("node1.toml"), &public)
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("listen.admin") && e.contains("admin_public"),
            "{e}"
        );
        let allowed = public.replace("admin = ", "admin_public = true\nadmin = ");
        let c = NodeConfig::parse(Path::new("node1.toml"), &allowed).unwrap();
        assert!(c.admin_listen_public);
    }

    #[test]
    fn the_page_cache_size_is_in_mib_with_the_store_default_and_a_floor() {
        let c = NodeConfig::parse(Path::new("node1.toml"), GOOD).unwrap();
        assert_eq!(c.storage, DurableOptions::default());
        let sized = format!("{GOOD}\n[storage]\ncache_mb = 64\n");
        let c = NodeConfig::parse(Path::new("node1.toml"), &sized).unwrap();
        assert_eq!(c.storage.cache_capacity, 64 * 1024 * 1024);
        for bad in [
            "cache_mb = 8",
            "cache_mb = 18446744073709551615",
            "cache_gb = 1",
        ] {
            let e = NodeConfig::parse(
                Path::new("node1.toml"),
                &format!("{GOOD}\n[storage]\n{bad}\n"),
            )
            .unwrap_err()
            .to_string();
            assert!(
                e.contains("node1.toml") && e.contains("cache"),
                "{bad}: {e}"
            );
        }
    }

    #[test]
    fn the_storage_stall_timeout_has_a_default_and_bounds() {
        let c = NodeConfig::parse(Path::new("node1.toml"), GOOD).unwrap();
        assert_eq!(c.storage_stall_limit, Duration::from_secs(120));
        let set = format!("{GOOD}\n[storage]\nstall_timeout_s = 30\n");
        let c = NodeConfig::parse(Path::new("node1.toml"), &set).unwrap();
        assert_eq!(c.storage_stall_limit, Duration::from_secs(30));
        for bad in [
            "stall_timeout_s = 0",
            "stall_timeout_s = 9",
            "stall_timeout_s = 86401",
        ] {
            let e = NodeConfig::parse(
                Path::new("node1.toml"),
                &format!("{GOOD}\n[storage]\n{bad}\n"),
            )
            .unwrap_err()
            .to_string();
            assert!(e.contains("storage.stall_timeout_s"), "{bad}: {e}");
        }
    }
}

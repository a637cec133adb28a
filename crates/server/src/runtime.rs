//! Running a node from its configuration file: storage, Raft, the Raft transport, the public
//! API (with health, reflection and admin calls signed by an authority), the admin listener,
//! the metrics endpoint and the witness, until a shutdown signal; then a graceful drain and
//! stop.

pub mod admin;
pub mod observe;
pub mod request_id;
pub mod threads;

use std::collections::BTreeMap;
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use tokio::net::TcpListener;
use tokio::sync::watch;
use wasteledger_core::genesis::Genesis;
use wasteledger_core::signing::{SigningKey, parse_secret_key_file};
use wasteledger_node::config::NodeConfig;
use wasteledger_node::node::{Node, NodeError, NodeOptions, StallWatch};
use wasteledger_node::types::NodeAddr;
use wasteledger_store::Stall;

use crate::LedgerApi;
use admin::{AdminAccess, ClusterApi};

/// Why a node could not run.
#[derive(Debug, thiserror::Error)]
pub enum RunError {
    /// A file named by the configuration could not be used.
    #[error("{what} {path}: {problem}")]
    File {
        /// What the file is for.
        what: &'static str,
        /// The path.
        path: String,
        /// What is wrong.
        problem: String,
    },
    /// A listen address could not be bound.
    #[error("cannot listen on {addr} ({what}): {source}; is another node already running there?")]
    Bind {
        /// The address.
        addr: String,
        /// Which listener.
        what: &'static str,
        /// The error.
        source: std::io::Error,
    },
    /// The node failed to start or stop.
    #[error(transparent)]
    Node(#[from] wasteledger_node::node::NodeError),
    /// The API server failed.
    #[error("api server: {0}")]
    Api(#[from] tonic::transport::Error),
    /// The reflection service could not load the descriptors.
    #[error("reflection: {0}")]
    Reflection(#[from] tonic_reflection::server::Error),
    /// The metrics registry could not be installed.
    #[error(transparent)]
    Metrics(#[from] observe::MetricsError),
}

/// How often the witness checks for a new checkpoint to cosign.
pub const WITNESS_INTERVAL: Duration = Duration::from_secs(1);

/// How long a stopping node lets calls in flight finish before cutting them off (a
/// `WatchEvents` stream never finishes by itself).
pub const DRAIN_TIMEOUT: Duration = Duration::from_secs(10);

/// Encoded descriptors of every public `wasteledger.v1` file (built by `build.rs`).
pub const FILE_DESCRIPTOR_SET: &[u8] =
    include_bytes!(concat!(env!("OUT_DIR"), "/wasteledger_v1_descriptor.bin"));

async fn bind(addr: &str, what: &'static str) -> Result<TcpListener, RunError> {
    TcpListener::bind(addr)
        .await
        .map_err(|source| RunError::Bind {
            addr: addr.to_owned(),
            what,
            source,
        })
}

/// Waits for a server task to drain, at most `DRAIN_TIMEOUT`, then cuts it off.
async fn drain(
    what: &'static str,
    task: tokio::task::JoinHandle<Result<(), tonic::transport::Error>>,
) {
    let abort = task.abort_handle();
    match tokio::time::timeout(DRAIN_TIMEOUT, task).await {
        Ok(Ok(Ok(()))) => tracing::info!(listener = what, "drained"),
        Ok(Ok(Err(e))) => {
            tracing::warn!(listener = what, error = %e, "server stopped with an error")
        }
        Ok(Err(e)) => tracing::warn!(listener = what, error = %e, "server task failed"),
        Err(_) => {
            tracing::warn!(listener = what, timeout = ?DRAIN_TIMEOUT, "calls still in flight after the drain timeout; cutting them off");
            abort.abort();
        }
    }
}

/// A file named by the configuration that cannot be used.
fn file_error(what: &'static str, path: &std::path::Path, problem: String) -> RunError {
    RunError::File {
        what,
        path: path.display().to_string(),
        problem,
    }
}

/// The witness this node is, by the genesis, with its signing key; `None` for a replica (a
/// node the genesis does not name, configured without a witness key).
///
/// A node the genesis names must have its key: without it, every checkpoint would be one
/// cosignature short, and a key that is not the named one would cosign nothing verifiable.
fn witness_identity(
    config: &NodeConfig,
    genesis: &Genesis,
) -> Result<Option<(String, SigningKey)>, RunError> {
    let named = genesis
        .witnesses
        .witnesses()
        .iter()
        .find(|w| w.node_id == config.id);
    match (&config.witness_key, named) {
        (None, None) => Ok(None),
        (None, Some(w)) => Err(file_error(
            "configuration",
            &config.path,
            format!(
                "the genesis names node {} as witness {:?}, but `witness_key` is not set; \
                 give the path of its key file",
                config.id, w.name
            ),
        )),
        (Some(path), None) => Err(file_error(
            "witness key",
            path,
            format!(
                "the genesis names no witness for node id {}; remove `witness_key` to run \
                 this node as a replica, which does not cosign",
                config.id
            ),
        )),
        (Some(path), Some(w)) => {
            let text = std::fs::read_to_string(path)
                .map_err(|e| file_error("witness key", path, e.to_string()))?;
            let key = parse_secret_key_file(&text)
                .map_err(|e| file_error("witness key", path, e.to_string()))?;
            if w.key != key.verifying_key() {
                return Err(file_error(
                    "witness key",
                    path,
                    format!("is not the key the genesis names for node {}", config.id),
                ));
            }
            Ok(Some((w.name.clone(), key)))
        }
    }
}

/// The exit code of a process that runs one node and exits from `on_storage_stall` (see
/// [`run_node`]): `wasteledger node` uses it, and a supervisor (or a benchmark standing in for
/// one) restarts the node on it.
pub const STORAGE_STALLED_EXIT_CODE: u8 = 4;

/// Runs the node described by `config` until `shutdown` resolves.
///
/// `on_storage_stall` runs, on a thread of its own, if a sync of the node's database runs
/// longer than `config.storage_stall_limit`: the node is then stuck (every write waits for that
/// sync, and so would a graceful shutdown), which has been logged as an error by the time it
/// runs. A process that runs one node should exit from it, for its supervisor to restart the
/// node; nothing acknowledged is lost, since nothing is acknowledged before its sync returns.
pub async fn run_node(
    config: NodeConfig,
    shutdown: impl Future<Output = ()>,
    on_storage_stall: impl FnOnce() + Send + 'static,
) -> Result<(), RunError> {
    let genesis_bytes = std::fs::read(&config.genesis)
        .map_err(|e| file_error("genesis", &config.genesis, e.to_string()))?;
    let genesis = Genesis::from_bytes(&genesis_bytes)
        .map_err(|e| file_error("genesis", &config.genesis, e.to_string()))?;
    let witness = witness_identity(&config, &genesis)?;
    let raft_listener = bind(&config.raft_listen, "raft").await?;
    let api_listener = bind(&config.api_listen, "api").await?;
    let admin_listener = match &config.admin_listen {
        Some(addr) => Some(bind(addr, "admin").await?),
        None => None,
    };
    let metrics_listener = match &config.metrics_listen {
        Some(addr) => Some((bind(addr, "metrics").await?, observe::prometheus()?)),
        None => None,
    };
    let id = config.id;
    let limit = config.storage_stall_limit;
    let data_dir = config.data_dir.display().to_string();
    let on_stall = move |stall: Stall| {
        let threads = threads::thread_waits()
            .map_or_else(|| "unavailable".to_owned(), |t| threads::summary(&t));
        tracing::error!(
            id,
            data_dir,
            running_s = stall.running.as_secs(),
            limit_s = limit.as_secs(),
            step = stall.phase.name(),
            threads,
            "storage stalled: a database sync has not returned ({}); the node cannot \
             acknowledge anything until it is restarted (storage.stall_timeout_s)",
            stall.phase.describe()
        );
        on_storage_stall();
    };
    let node = Node::start(NodeOptions {
        id: config.id,
        data_dir: config.data_dir.clone(),
        genesis,
        raft_listener,
        api_addr: config.api_listen.clone(),
        timings: config.timings.clone(),
        storage: config.storage.clone(),
        stall_watch: Some(StallWatch {
            limit,
            on_stall: Box::new(on_stall),
        }),
    })
    .await?;
    let node = Arc::new(node);
    if config.bootstrap {
        let mut members = BTreeMap::new();
        members.insert(
            config.id,
            NodeAddr {
                raft_addr: config.raft_listen.clone(),
                api_addr: config.api_listen.clone(),
            },
        );
        for p in &config.peers {
            members.insert(
                p.id,
                NodeAddr {
                    raft_addr: p.raft_addr.clone(),
                    api_addr: p.api_addr.clone(),
                },
            );
        }
        node.initialize(members).await?;
    }
    let (stop_tx, stop_rx) = watch::channel(false);
    let witness_name = witness.as_ref().map(|(name, _)| name.clone());
    let witness_task = witness.map(|(name, key)| {
        tokio::spawn(wasteledger_node::witness::run(
            node.clone(),
            key,
            name,
            WITNESS_INTERVAL,
            stop_rx.clone(),
        ))
    });
    let (mut health, health_service) = tonic_health::server::health_reporter();
    // Not serving until the status watch has seen a leader with a quorum.
    observe::set_health(&health, tonic_health::ServingStatus::NotServing).await;
    let watch_task = tokio::spawn(observe::watch_node(
        node.clone(),
        health.clone(),
        metrics_listener.as_ref().map(|(_, h)| h.clone()),
        stop_rx.clone(),
    ));
    let reflection_v1 = tonic_reflection::server::Builder::configure()
        .register_encoded_file_descriptor_set(FILE_DESCRIPTOR_SET)
        .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
        .build_v1()?;
    let reflection_v1alpha = tonic_reflection::server::Builder::configure()
        .register_encoded_file_descriptor_set(FILE_DESCRIPTOR_SET)
        .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
        .build_v1alpha()?;
    let stopped = |mut rx: watch::Receiver<bool>| async move {
        let _ = rx.wait_for(|s| *s).await;
    };
    let api = tonic::transport::Server::builder()
        .layer(request_id::RequestIdLayer)
        .layer(tower::util::MapResponseLayer::new(
            crate::limits::rewrite_oversize::<tonic::body::Body>,
        ))
        .add_service(
            LedgerApi::new(node.clone())
                .with_shutdown(stop_rx.clone())
                .into_service(),
        )
        .add_service(ClusterApi::new(node.clone(), AdminAccess::AuthorityOnly).into_service())
        .add_service(health_service.clone())
        .add_service(reflection_v1.clone())
        .add_service(reflection_v1alpha.clone())
        .serve_with_incoming_shutdown(
            wasteledger_node::network::incoming(api_listener),
            stopped(stop_rx.clone()),
        );
    let admin = admin_listener.map(|listener| {
        tonic::transport::Server::builder()
            .layer(request_id::RequestIdLayer)
            .add_service(ClusterApi::new(node.clone(), AdminAccess::Trusted).into_service())
            .add_service(health_service)
            .add_service(reflection_v1)
            .add_service(reflection_v1alpha)
            .serve_with_incoming_shutdown(
                wasteledger_node::network::incoming(listener),
                stopped(stop_rx.clone()),
            )
    });
    tracing::info!(
        id = config.id,
        raft = %config.raft_listen,
        api = %config.api_listen,
        admin = ?config.admin_listen,
        metrics = ?config.metrics_listen,
        witness = witness_name.as_deref().unwrap_or("none: a replica, it does not cosign"),
        "node started"
    );
    let api_task = tokio::spawn(api);
    let admin_task = admin.map(tokio::spawn);
    let metrics_task = metrics_listener.map(|(listener, handle)| {
        tokio::spawn(observe::serve_metrics(listener, handle, stop_rx.clone()))
    });
    // Damage found in settled history after start-up stops the node as the start-up check
    // would have: cleanly, then with the error.
    let damaged = tokio::select! {
        () = shutdown => None,
        e = wasteledger_node::history::failure(node.history_check()) => Some(e),
    };
    tracing::info!(id = config.id, "shutting down: draining calls in flight");
    // Load balancers stop sending new calls first; then the listeners stop accepting and the
    // calls in flight finish (bounded); Raft stops last, so those calls can still commit.
    observe::set_health(&health, tonic_health::ServingStatus::NotServing).await;
    let _ = stop_tx.send(true);
    // The status watch ends first, so nothing sets a health entry again after they are gone.
    let _ = watch_task.await;
    observe::end_health(&mut health).await;
    let admin_drained = async {
        if let Some(task) = admin_task {
            drain("admin", task).await;
        }
    };
    tokio::join!(drain("api", api_task), admin_drained);
    if let Some(task) = metrics_task
        && let Ok(Err(e)) = task.await
    {
        tracing::warn!(error = %e, "metrics endpoint stopped with an error");
    }
    if let Some(task) = witness_task {
        let _ = task.await;
    }
    match Arc::try_unwrap(node) {
        Ok(node) => node.shutdown().await?,
        Err(node) => {
            // A connection cut off by the drain timeout may still hold the node; stop Raft
            // anyway so no write is acknowledged after this point.
            tracing::warn!(
                "node still referenced at shutdown; stopping raft, storage is synced by its drop"
            );
            if let Err(e) = node.raft.shutdown().await {
                tracing::warn!(error = %e, "raft shutdown");
            }
        }
    }
    match damaged {
        Some(e) => Err(RunError::Node(NodeError::Integrity(e))),
        None => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use wasteledger_core::sample::SampleNetwork;
    use wasteledger_core::signing::format_secret_key_file;

    /// Node `id`'s configuration in `dir`, with `key` written as its witness key file.
    fn config(dir: &std::path::Path, id: u64, key: Option<&SigningKey>) -> NodeConfig {
        let mut text = format!("id = {id}\ndata_dir = \"data\"\ngenesis = \"genesis.pb\"\n");
        if let Some(key) = key {
            std::fs::write(dir.join("w.key"), format_secret_key_file(key, "test")).unwrap();
            text.push_str("witness_key = \"w.key\"\n");
        }
        text.push_str("[listen]\nraft = \"127.0.0.1:1\"\napi = \"127.0.0.1:2\"\n");
        NodeConfig::parse(&dir.join("node.toml"), &text).unwrap()
    }

    #[test]
    fn a_named_witness_needs_its_own_key_and_a_replica_none() {
        let net = SampleNetwork::new().unwrap();
        let dir = tempfile::tempdir().unwrap();
        let (name, key) = &net.witnesses[1];

        let witness = witness_identity(&config(dir.path(), 2, Some(key)), &net.genesis).unwrap();
        assert_eq!(
            witness.map(|(n, k)| (n, k.verifying_key())),
            Some((name.clone(), key.verifying_key()))
        );

        // Node 4 is not in the genesis: without a key it is a replica; with one it is refused.
        assert!(
            witness_identity(&config(dir.path(), 4, None), &net.genesis)
                .unwrap()
                .is_none()
        );
        let e = witness_identity(&config(dir.path(), 4, Some(key)), &net.genesis)
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("names no witness for node id 4") && e.contains("replica"),
            "{e}"
        );

        // A named witness without its key, or with another witness's key, is refused.
        let e = witness_identity(&config(dir.path(), 2, None), &net.genesis)
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("node.toml") && e.contains(name.as_str()) && e.contains("witness_key"),
            "{e}"
        );
        let e = witness_identity(
            &config(dir.path(), 2, Some(&net.witnesses[0].1)),
            &net.genesis,
        )
        .unwrap_err()
        .to_string();
        assert!(
            e.contains("w.key") && e.contains("not the key the genesis names for node 2"),
            "{e}"
        );
    }
}

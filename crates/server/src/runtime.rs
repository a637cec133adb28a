//! Running a node from its configuration file: storage, Raft, the Raft transport, the public
//! API and the witness, until a shutdown signal; then a graceful stop.

use std::collections::BTreeMap;
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use tokio::net::TcpListener;
use tokio::sync::watch;
use wasteledger_core::genesis::Genesis;
use wasteledger_core::signing::parse_secret_key_file;
use wasteledger_node::config::NodeConfig;
use wasteledger_node::node::{Node, NodeOptions};
use wasteledger_node::types::NodeAddr;

use crate::LedgerApi;

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
}

/// How often the witness checks for a new checkpoint to cosign.
pub const WITNESS_INTERVAL: Duration = Duration::from_secs(1);

/// Runs the node described by `config` until `shutdown` resolves.
pub async fn run_node(
    config: NodeConfig,
    shutdown: impl Future<Output = ()>,
) -> Result<(), RunError> {
    let file_err = |what, path: &std::path::Path, problem: String| RunError::File {
        what,
        path: path.display().to_string(),
        problem,
    };
    let genesis_bytes = std::fs::read(&config.genesis)
        .map_err(|e| file_err("genesis", &config.genesis, e.to_string()))?;
    let genesis = Genesis::from_bytes(&genesis_bytes)
        .map_err(|e| file_err("genesis", &config.genesis, e.to_string()))?;
    let key_text = std::fs::read_to_string(&config.witness_key)
        .map_err(|e| file_err("witness key", &config.witness_key, e.to_string()))?;
    let key = parse_secret_key_file(&key_text)
        .map_err(|e| file_err("witness key", &config.witness_key, e.to_string()))?;
    let witness = genesis
        .witnesses
        .witnesses()
        .iter()
        .find(|w| w.node_id == config.id)
        .map(|w| (w.name.clone(), w.key))
        .ok_or_else(|| {
            file_err(
                "genesis",
                &config.genesis,
                format!("names no witness for node id {}", config.id),
            )
        })?;
    if witness.1 != key.verifying_key() {
        return Err(file_err(
            "witness key",
            &config.witness_key,
            format!("is not the key the genesis names for node {}", config.id),
        ));
    }
    let raft_listener = TcpListener::bind(&config.raft_listen)
        .await
        .map_err(|source| RunError::Bind {
            addr: config.raft_listen.clone(),
            what: "raft",
            source,
        })?;
    let api_listener = TcpListener::bind(&config.api_listen)
        .await
        .map_err(|source| RunError::Bind {
            addr: config.api_listen.clone(),
            what: "api",
            source,
        })?;
    let node = Node::start(NodeOptions {
        id: config.id,
        data_dir: config.data_dir.clone(),
        genesis,
        raft_listener,
        api_addr: config.api_listen.clone(),
        timings: config.timings.clone(),
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
    let witness_task = tokio::spawn(wasteledger_node::witness::run(
        node.clone(),
        key,
        witness.0,
        WITNESS_INTERVAL,
        stop_rx.clone(),
    ));
    let mut api_stop = stop_rx.clone();
    let api = tonic::transport::Server::builder()
        .layer(tower::util::MapResponseLayer::new(
            crate::limits::rewrite_oversize::<tonic::body::Body>,
        ))
        .add_service(
            LedgerApi::new(node.clone())
                .with_shutdown(stop_rx.clone())
                .into_service(),
        )
        .serve_with_incoming_shutdown(
            tonic::transport::server::TcpIncoming::from(api_listener),
            async move {
                let _ = api_stop.changed().await;
            },
        );
    tracing::info!(id = config.id, raft = %config.raft_listen, api = %config.api_listen, "node started");
    let api_task = tokio::spawn(api);
    shutdown.await;
    tracing::info!(id = config.id, "shutting down");
    let _ = stop_tx.send(true);
    let _ = witness_task.await;
    if let Ok(Err(e)) = api_task.await {
        tracing::warn!(error = %e, "api server stopped with an error");
    }
    match Arc::try_unwrap(node) {
        Ok(node) => node.shutdown().await?,
        Err(_) => {
            tracing::warn!("node still referenced at shutdown; storage is synced by its drop")
        }
    }
    Ok(())
}

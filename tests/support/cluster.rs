//! A real cluster for integration tests: `wasteledger node` processes on 127.0.0.1 with
//! ephemeral ports and temporary data directories, driven over the public gRPC API.

use std::collections::BTreeMap;
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use tonic::transport::Channel;
use tonic_health::pb::HealthCheckRequest;
use tonic_health::pb::health_check_response::ServingStatus;
use tonic_health::pb::health_client::HealthClient;
use wasteledger_core::pb;
use wasteledger_core::sample::SampleNetwork;
use wasteledger_core::signing::format_secret_key_file;
use wasteledger_server::LedgerServiceClient;
use wasteledger_server::service::cluster_service_client::ClusterServiceClient;

/// Ports handed to test nodes come from below Linux's ephemeral range (32768 and up by
/// default): a port the kernel picked with `bind(0)` and the harness released can be taken by
/// any outgoing connection (another test's nodes dialling each other) before the node binds it.
const TEST_PORTS: std::ops::Range<u32> = 20_000..32_000;

/// Picks a free loopback port (bound then released; the node binds it again at once), outside
/// the ephemeral range and never twice in one test process.
fn free_port() -> u16 {
    use std::sync::atomic::{AtomicU32, Ordering};
    static NEXT: AtomicU32 = AtomicU32::new(0);
    let span = TEST_PORTS.end - TEST_PORTS.start;
    // Test processes running side by side start at different places.
    let offset = std::process::id().wrapping_mul(7919) % span;
    for _ in 0..span {
        let n = NEXT.fetch_add(1, Ordering::Relaxed);
        let port = TEST_PORTS.start + (offset + n) % span;
        if let Ok(port) = u16::try_from(port)
            && TcpListener::bind(("127.0.0.1", port)).is_ok()
        {
            return port;
        }
    }
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free loopback port")
}

/// The `[raft]` section of test clusters.
pub const TEST_RAFT: &str = "[raft]\nheartbeat_ms = 100\nelection_timeout_min_ms = 500\nelection_timeout_max_ms = 1000\nsnapshot_every = 50\nkeep_logs_after_snapshot = 10\n";

/// One node's fixed addresses and files.
#[derive(Clone, Debug)]
pub struct NodeSpec {
    /// Raft node id.
    pub id: u64,
    /// Raft transport address.
    pub raft: String,
    /// Public API address.
    pub api: String,
    /// Admin listener (ClusterService without authorization).
    pub admin: String,
    /// Prometheus endpoint.
    pub metrics: String,
    /// Its configuration file.
    pub config: PathBuf,
    /// Its data directory.
    pub data_dir: PathBuf,
}

/// A cluster of node processes.
pub struct Cluster {
    /// The sample network (genesis and keys).
    pub net: SampleNetwork,
    /// Node specs by id.
    pub specs: BTreeMap<u64, NodeSpec>,
    procs: BTreeMap<u64, Child>,
    /// Processes started so far: each start writes its own log file, numbered by this count,
    /// so a restart never truncates the log of the run before it (a stalled node's last words).
    starts: usize,
    /// Extra environment for a node's next starts ([`Cluster::set_env`]).
    env: BTreeMap<u64, Vec<(String, String)>>,
    binary: PathBuf,
    raft_section: String,
    dir: tempfile::TempDir,
}

impl NodeSpec {
    /// Fresh ports and file names for node `id` in `dir`.
    fn new(id: u64, dir: &Path) -> NodeSpec {
        NodeSpec {
            id,
            raft: format!("127.0.0.1:{}", free_port()),
            api: format!("127.0.0.1:{}", free_port()),
            admin: format!("127.0.0.1:{}", free_port()),
            metrics: format!("127.0.0.1:{}", free_port()),
            config: dir.join(format!("node{id}.toml")),
            data_dir: dir.join(format!("data{id}")),
        }
    }

    /// Writes this node's configuration file: a witness with `witness_key`, or a replica
    /// without one; initialising a cluster with `peers` when `bootstrap`.
    fn write_config(
        &self,
        witness_key: Option<&Path>,
        bootstrap: bool,
        peers: &[&NodeSpec],
        raft_section: &str,
    ) {
        let mut text = format!(
            "id = {}\ndata_dir = {:?}\ngenesis = \"genesis.pb\"\nbootstrap = {}\n",
            self.id, self.data_dir, bootstrap
        );
        if let Some(key) = witness_key {
            text.push_str(&format!("witness_key = {key:?}\n"));
        }
        text.push_str(&format!(
            "\n[listen]\nraft = {:?}\napi = {:?}\nadmin = {:?}\nmetrics = {:?}\n\n",
            self.raft, self.api, self.admin, self.metrics
        ));
        for peer in peers {
            text.push_str(&format!(
                "[[peers]]\nid = {}\nraft = {:?}\napi = {:?}\n\n",
                peer.id, peer.raft, peer.api
            ));
        }
        text.push_str(raft_section);
        std::fs::write(&self.config, text).expect("config");
    }

    /// This node as a cluster member, for AddLearner.
    pub fn member(&self) -> pb::ClusterMember {
        pb::ClusterMember {
            node_id: self.id,
            raft_addr: self.raft.clone(),
            api_addr: self.api.clone(),
        }
    }
}

impl Cluster {
    /// Writes genesis, keys and configs for `n` nodes (node 1 bootstraps) and starts them all,
    /// with test timings: fast elections, and a snapshot every 50 entries so that tests
    /// exercise snapshots and log purges.
    pub fn start(binary: &Path, n: u64) -> Cluster {
        Cluster::start_configured(binary, n, n, TEST_RAFT)
    }

    /// [`Cluster::start`] with the given `[raft]` configuration section (`""` = the
    /// production defaults, which measurements must use).
    pub fn start_with_raft(binary: &Path, n: u64, raft_section: &str) -> Cluster {
        Cluster::start_configured(binary, n, n, raft_section)
    }

    /// Like [`Cluster::start`], but node 1 initialises the cluster with nodes `1..=founders`
    /// only; the others start uninitialised, waiting to be added (ClusterService.AddLearner).
    /// With `founders == 0` no node bootstraps: the cluster waits for ClusterService.Initialize.
    pub fn start_with_founders(binary: &Path, n: u64, founders: u64) -> Cluster {
        Cluster::start_configured(binary, n, founders, TEST_RAFT)
    }

    /// The general form: `n` nodes, founding members `1..=founders`, this `[raft]` section.
    pub fn start_configured(binary: &Path, n: u64, founders: u64, raft_section: &str) -> Cluster {
        let net = SampleNetwork::new().expect("sample network");
        let dir = tempfile::tempdir().expect("temp dir");
        std::fs::write(dir.path().join("genesis.pb"), &net.genesis_bytes).expect("genesis");
        let specs: BTreeMap<u64, NodeSpec> = (1..=n)
            .map(|id| (id, NodeSpec::new(id, dir.path())))
            .collect();
        for spec in specs.values() {
            let (_, key) = &net.witnesses[(spec.id - 1) as usize];
            let key_path = dir.path().join(format!("node{}.key", spec.id));
            std::fs::write(&key_path, format_secret_key_file(key, "test witness key"))
                .expect("key");
            // Peers are the founding members node 1 initialises the cluster with.
            let peers: Vec<&NodeSpec> = specs
                .values()
                .filter(|p| p.id != spec.id && p.id <= founders)
                .collect();
            let bootstrap = spec.id == 1 && founders > 0;
            spec.write_config(Some(&key_path), bootstrap, &peers, raft_section);
        }
        let mut cluster = Cluster {
            net,
            specs,
            procs: BTreeMap::new(),
            starts: 0,
            env: BTreeMap::new(),
            binary: binary.to_owned(),
            raft_section: raft_section.to_owned(),
            dir,
        };
        let ids: Vec<u64> = cluster.specs.keys().copied().collect();
        for id in ids {
            cluster.start_node(id);
        }
        cluster
    }

    /// Writes the configuration of a replica (the next free node id, no witness key, in no
    /// cluster yet) and starts it; returns its id. It serves once a leader adds it
    /// (ClusterService.AddLearner).
    pub fn add_replica(&mut self) -> u64 {
        let id = self.specs.keys().max().copied().unwrap_or(0) + 1;
        let spec = NodeSpec::new(id, self.dir.path());
        spec.write_config(None, false, &[], &self.raft_section);
        self.specs.insert(id, spec);
        self.start_node(id);
        id
    }

    /// Starts (or restarts) node `id`.
    pub fn start_node(&mut self, id: u64) {
        let spec = &self.specs[&id];
        let log =
            std::fs::File::create(spec.data_dir.with_extension(format!("log{}", self.starts)))
                .expect("log file");
        self.starts += 1;
        let child = Command::new(&self.binary)
            .args(["node", "--config"])
            .arg(&spec.config)
            .env("RUST_LOG", "info,openraft=warn")
            .envs(self.env.get(&id).into_iter().flatten().cloned())
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("spawn wasteledger node");
        self.procs.insert(id, child);
    }

    /// Sets environment variables for node `id`'s later starts (replacing earlier ones; none
    /// with an empty list).
    pub fn set_env(&mut self, id: u64, vars: &[(&str, &str)]) {
        let vars = vars
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect();
        self.env.insert(id, vars);
    }

    /// The cluster's directory (configs, data, node logs).
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// Keeps the cluster's directory (configs, data, node logs) after the cluster is dropped,
    /// for a look at what the nodes stored; returns its path.
    pub fn keep_files(&mut self) -> PathBuf {
        self.dir.disable_cleanup(true);
        self.dir.path().to_path_buf()
    }

    /// The process id of node `id`, while it runs.
    pub fn pid(&self, id: u64) -> Option<u32> {
        self.procs.get(&id).map(|c| c.id())
    }

    /// SIGKILL: no chance to flush or say goodbye.
    pub fn kill(&mut self, id: u64) {
        if let Some(mut child) = self.procs.remove(&id) {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// SIGTERM and wait for a clean exit (bounded); returns the exit status code.
    pub fn stop(&mut self, id: u64) -> Option<i32> {
        let mut child = self.procs.remove(&id)?;
        let _ = Command::new("kill")
            .arg("-TERM")
            .arg(child.id().to_string())
            .status();
        let deadline = Instant::now() + Duration::from_secs(20);
        while Instant::now() < deadline {
            if let Ok(Some(status)) = child.try_wait() {
                return status.code();
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        let _ = child.kill();
        let _ = child.wait();
        None
    }

    /// Waits for node `id`'s process to exit by itself (bounded; a zero timeout looks once);
    /// returns its exit code.
    pub fn wait_exit(&mut self, id: u64, timeout: Duration) -> Option<i32> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(child) = self.procs.get_mut(&id)
                && let Ok(Some(status)) = child.try_wait()
            {
                self.procs.remove(&id);
                return status.code();
            }
            if Instant::now() >= deadline {
                return None;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// The log written by node `id`'s processes so far, oldest start first.
    pub fn logs(&self, id: u64) -> String {
        let spec = &self.specs[&id];
        let mut out = String::new();
        for i in 0..self.starts {
            if let Ok(text) =
                std::fs::read_to_string(spec.data_dir.with_extension(format!("log{i}")))
            {
                out.push_str(&text);
            }
        }
        out
    }

    /// A client of node `id`'s API.
    pub async fn client(&self, id: u64) -> Option<LedgerServiceClient<tonic::transport::Channel>> {
        let endpoint =
            tonic::transport::Endpoint::from_shared(format!("http://{}", self.specs[&id].api))
                .ok()?
                .connect_timeout(Duration::from_millis(500))
                .timeout(Duration::from_secs(10));
        endpoint.connect().await.ok().map(LedgerServiceClient::new)
    }

    /// A ClusterService client of node `id`'s admin listener (no authorization needed).
    pub async fn admin_client(&self, id: u64) -> Option<ClusterServiceClient<Channel>> {
        channel(&self.specs[&id].admin)
            .await
            .map(ClusterServiceClient::new)
    }

    /// Asks node `via`, on its admin listener, to add `member` as a learner; the answer is the
    /// cluster status, or the refusal as the node gave it.
    pub async fn add_learner(
        &self,
        via: u64,
        member: pb::ClusterMember,
    ) -> Result<pb::ClusterStatus, tonic::Status> {
        let mut admin = self.admin_client(via).await.ok_or_else(|| {
            tonic::Status::unavailable(format!("node {via}'s admin listener unreachable"))
        })?;
        admin
            .add_learner(pb::AddLearnerRequest {
                member: Some(member),
                auth: None,
            })
            .await
            .map(|r| r.into_inner())
    }

    /// A ClusterService client of node `id`'s public API listener (calls must be signed).
    pub async fn public_admin_client(&self, id: u64) -> Option<ClusterServiceClient<Channel>> {
        channel(&self.specs[&id].api)
            .await
            .map(ClusterServiceClient::new)
    }

    /// Node `id`'s status from its admin listener, if it answers.
    pub async fn status(&self, id: u64) -> Option<pb::ClusterStatus> {
        let mut c = self.admin_client(id).await?;
        c.status(pb::StatusRequest::default())
            .await
            .ok()
            .map(|r| r.into_inner())
    }

    /// The `grpc.health.v1` status of `service` on node `id`'s API listener, if it answers.
    pub async fn health(&self, id: u64, service: &str) -> Option<ServingStatus> {
        let mut c = HealthClient::new(channel(&self.specs[&id].api).await?);
        let response = c
            .check(HealthCheckRequest {
                service: service.into(),
            })
            .await
            .ok()?;
        ServingStatus::try_from(response.into_inner().status).ok()
    }

    /// Waits until node `id` reports `want` for `service` (bounded); returns whether it did.
    pub async fn wait_health(
        &self,
        id: u64,
        service: &str,
        want: ServingStatus,
        timeout: Duration,
    ) -> bool {
        let deadline = Instant::now() + timeout;
        while Instant::now() < deadline {
            if self.health(id, service).await == Some(want) {
                return true;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        false
    }

    /// Node `id`'s Prometheus text (`GET /metrics`), if it answers.
    pub async fn metrics(&self, id: u64) -> Option<String> {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let fetch = async {
            let mut stream = tokio::net::TcpStream::connect(&self.specs[&id].metrics)
                .await
                .ok()?;
            stream
                .write_all(b"GET /metrics HTTP/1.0\r\nHost: localhost\r\n\r\n")
                .await
                .ok()?;
            let mut response = String::new();
            stream.read_to_string(&mut response).await.ok()?;
            let (head, body) = response.split_once("\r\n\r\n")?;
            head.starts_with("HTTP/1.0 200")
                .then(|| body.to_owned())
                .or_else(|| head.starts_with("HTTP/1.1 200").then(|| body.to_owned()))
        };
        tokio::time::timeout(Duration::from_secs(10), fetch)
            .await
            .ok()
            .flatten()
    }

    /// Node `id`'s ledger head, if it answers.
    pub async fn head(&self, id: u64) -> Option<pb::LedgerHead> {
        let mut c = self.client(id).await?;
        c.get_ledger_head(pb::GetLedgerHeadRequest {})
            .await
            .ok()
            .map(|r| r.into_inner())
    }

    /// Submits an event to node `id`, retrying while the cluster has no leader (bounded).
    pub async fn submit(
        &self,
        id: u64,
        event: &pb::SignedEvent,
        timeout: Duration,
    ) -> Result<pb::Receipt, tonic::Status> {
        let deadline = Instant::now() + timeout;
        loop {
            let result = match self.client(id).await {
                Some(mut c) => c.submit(event.clone()).await.map(|r| r.into_inner()),
                None => Err(tonic::Status::unavailable("node not reachable")),
            };
            match result {
                Err(s) if s.code() == tonic::Code::Unavailable && Instant::now() < deadline => {
                    tokio::time::sleep(Duration::from_millis(200)).await;
                }
                other => return other,
            }
        }
    }

    /// Waits until every listed node reports the same non-zero ledger size (at least
    /// `min_size`) and root; returns that head.
    pub async fn converged(
        &self,
        ids: &[u64],
        min_size: u64,
        timeout: Duration,
    ) -> Option<pb::LedgerHead> {
        let deadline = Instant::now() + timeout;
        while Instant::now() < deadline {
            let mut heads = Vec::new();
            for id in ids {
                heads.push(self.head(*id).await);
            }
            if let Some(Some(first)) = heads.first() {
                let same = heads.iter().all(|h| {
                    h.as_ref().is_some_and(|h| {
                        h.size == first.size && h.root == first.root && h.map_root == first.map_root
                    })
                });
                if same && first.size >= min_size {
                    return Some(first.clone());
                }
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        None
    }
}

/// A channel to `addr` (bounded connect and call times).
async fn channel(addr: &str) -> Option<Channel> {
    tonic::transport::Endpoint::from_shared(format!("http://{addr}"))
        .ok()?
        .connect_timeout(Duration::from_millis(500))
        .timeout(Duration::from_secs(90))
        .connect()
        .await
        .ok()
}

/// The value of one Prometheus sample, `name{labels} value`, in `text` (labels exactly as
/// rendered, or `""` for none); `None` when absent.
pub fn sample_value(text: &str, name: &str, labels: &str) -> Option<f64> {
    let series = if labels.is_empty() {
        name.to_owned()
    } else {
        format!("{name}{{{labels}}}")
    };
    text.lines().find_map(|line| {
        let (key, value) = line.rsplit_once(' ')?;
        (key == series).then(|| value.parse().ok()).flatten()
    })
}

impl Drop for Cluster {
    fn drop(&mut self) {
        for (_, mut child) in std::mem::take(&mut self.procs) {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

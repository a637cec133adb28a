//! `wasteledger demo`: a three-node cluster in one process on loopback, driven through the
//! public API with realistic manifests, a node stopped and restarted midway, and a custody proof
//! verified offline (and a tampered copy caught).

use std::io::Write;
use std::net::TcpListener as StdListener;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use tokio::sync::oneshot;
use tokio::task::JoinHandle;
use wasteledger_core::pb::{self, event_body::Kind};
use wasteledger_core::proof::verify_custody_proof_bytes;
use wasteledger_core::sample::{HOUR, ManifestFlow, SampleNetwork, T0, ids};
use wasteledger_core::signing::format_secret_key_file;
use wasteledger_node::config::NodeConfig;

use crate::LedgerServiceClient;
use crate::runtime::{RunError, run_node};

/// Why the demo stopped.
#[derive(Debug, thiserror::Error)]
pub enum DemoError {
    /// Setting up files or ports failed.
    #[error("demo setup: {0}")]
    Setup(String),
    /// A node failed.
    #[error("node: {0}")]
    Node(#[from] RunError),
    /// The cluster did not do what the demo expected.
    #[error("{0}")]
    Unexpected(String),
}

fn setup<E: std::fmt::Display>(e: E) -> DemoError {
    DemoError::Setup(e.to_string())
}

struct DemoNode {
    config: NodeConfig,
    stop: Option<oneshot::Sender<()>>,
    task: Option<JoinHandle<Result<(), RunError>>>,
}

impl DemoNode {
    fn start(&mut self) {
        let (tx, rx) = oneshot::channel::<()>();
        let config = self.config.clone();
        // A stalled node has logged why; the demo has no supervisor to restart it.
        self.task = Some(tokio::spawn(run_node(
            config,
            async {
                let _ = rx.await;
            },
            || {},
        )));
        self.stop = Some(tx);
    }

    async fn stop(&mut self) -> Result<(), DemoError> {
        if let Some(tx) = self.stop.take() {
            let _ = tx.send(());
        }
        if let Some(task) = self.task.take() {
            task.await
                .map_err(|e| DemoError::Unexpected(e.to_string()))??;
        }
        Ok(())
    }
}

fn free_addr() -> Result<String, DemoError> {
    let l = StdListener::bind("127.0.0.1:0").map_err(setup)?;
    Ok(l.local_addr().map_err(setup)?.to_string())
}

fn write_configs(dir: &Path, net: &SampleNetwork) -> Result<Vec<NodeConfig>, DemoError> {
    std::fs::create_dir_all(dir).map_err(setup)?;
    std::fs::write(dir.join("genesis.pb"), &net.genesis_bytes).map_err(setup)?;
    let addrs: Vec<(String, String)> = (0..3)
        .map(|_| Ok((free_addr()?, free_addr()?)))
        .collect::<Result<_, DemoError>>()?;
    let mut configs = Vec::new();
    for (i, (raft, api)) in addrs.iter().enumerate() {
        let id = i as u64 + 1;
        let key_path = dir.join(format!("node{id}.witness.key"));
        std::fs::write(
            &key_path,
            format_secret_key_file(&net.witnesses[i].1, "demo witness key"),
        )
        .map_err(setup)?;
        let mut text = format!(
            "id = {id}\ndata_dir = \"node{id}\"\ngenesis = \"genesis.pb\"\nwitness_key = \"node{id}.witness.key\"\nbootstrap = {}\n\n[listen]\nraft = \"{raft}\"\napi = \"{api}\"\n\n",
            id == 1
        );
        for (j, (praft, papi)) in addrs.iter().enumerate() {
            if j != i {
                text.push_str(&format!(
                    "[[peers]]\nid = {}\nraft = \"{praft}\"\napi = \"{papi}\"\n\n",
                    j + 1
                ));
            }
        }
        text.push_str("[raft]\nheartbeat_ms = 100\nelection_timeout_min_ms = 500\nelection_timeout_max_ms = 1000\n");
        let path = dir.join(format!("node{id}.toml"));
        std::fs::write(&path, text).map_err(setup)?;
        configs.push(NodeConfig::load(&path).map_err(setup)?);
    }
    Ok(configs)
}

async fn client(api: &str) -> Option<LedgerServiceClient<tonic::transport::Channel>> {
    let endpoint = tonic::transport::Endpoint::from_shared(format!("http://{api}"))
        .ok()?
        .connect_timeout(Duration::from_millis(500));
    endpoint.connect().await.ok().map(LedgerServiceClient::new)
}

async fn submit(api: &str, event: &pb::SignedEvent) -> Result<pb::Receipt, tonic::Status> {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let result = match client(api).await {
            Some(mut c) => c.submit(event.clone()).await.map(|r| r.into_inner()),
            None => Err(tonic::Status::unavailable("not reachable yet")),
        };
        match result {
            Err(s) if s.code() == tonic::Code::Unavailable && Instant::now() < deadline => {
                tokio::time::sleep(Duration::from_millis(200)).await
            }
            other => return other,
        }
    }
}

async fn head(api: &str) -> Option<pb::LedgerHead> {
    client(api)
        .await?
        .get_ledger_head(pb::GetLedgerHeadRequest {})
        .await
        .ok()
        .map(|r| r.into_inner())
}

/// Runs the demo, writing its narrative to `out`. Data goes under `data_dir`.
pub async fn run(data_dir: PathBuf, out: &mut dyn Write) -> Result<(), DemoError> {
    let started = Instant::now();
    let net = SampleNetwork::new().map_err(setup)?;
    let configs = write_configs(&data_dir, &net)?;
    let say = |out: &mut dyn Write, line: String| {
        let _ = writeln!(out, "{line}");
    };
    say(
        out,
        format!(
            "WasteLedger demo — ledger {} (id {})",
            net.genesis.ledger_name(),
            net.ledger_id().short()
        ),
    );
    say(out, format!("data in {}", data_dir.display()));
    let mut nodes: Vec<DemoNode> = configs
        .into_iter()
        .map(|config| DemoNode {
            config,
            stop: None,
            task: None,
        })
        .collect();
    for n in &mut nodes {
        n.start();
    }
    let apis: Vec<String> = nodes.iter().map(|n| n.config.api_listen.clone()).collect();
    say(
        out,
        format!(
            "started 3 nodes (generator, transporter and facility operators) on {}",
            apis.join(", ")
        ),
    );

    say(
        out,
        "\n1. The environment bureau registers the parties".into(),
    );
    for event in net.registrations() {
        submit(&apis[0], &event)
            .await
            .map_err(|s| DemoError::Unexpected(format!("registration refused: {}", s.message())))?;
    }
    say(
        out,
        format!(
            "   {} parties registered (authority-signed): generator {}, carriers {} and {}, facilities {} and {}, regulator {}",
            net.party_keys.len(),
            ids::GENERATOR,
            ids::ROAD,
            ids::RAIL,
            ids::FACILITY,
            ids::ALTERNATE,
            ids::REGULATOR
        ),
    );

    // Manifest A: road then rail, with node 3 stopped during transit.
    say(
        out,
        "\n2. Manifest cn:20261502000001 — spent oil by road, then rail, to the incinerator".into(),
    );
    let mut a = ManifestFlow::new(&net, "20261502000001", T0).map_err(setup)?;
    let steps_a: Vec<(&str, Kind, Vec<&str>)> = vec![
        (
            "created by the generator",
            Kind::ManifestCreated(pb::ManifestCreated {
                manifest: Some(net.manifest("20261502000001", &[ids::ROAD, ids::RAIL])),
            }),
            vec![ids::GENERATOR],
        ),
        (
            "pickup: generator -> road carrier (both sign)",
            ManifestFlow::handoff(ids::GENERATOR, ids::ROAD),
            vec![ids::GENERATOR, ids::ROAD],
        ),
    ];
    let mut created_head = None;
    for (label, kind, signers) in steps_a {
        let e = a.event(kind, &signers);
        let r = submit(&apis[(a.now as usize / 7) % 3], &e)
            .await
            .map_err(|s| DemoError::Unexpected(s.message().to_owned()))?;
        a.accept(&e);
        created_head.get_or_insert(a.head);
        say(out, format!("   #{:<3} {label}", r.index));
    }
    say(out, "   -- node 3 goes down --".into());
    nodes[2].stop().await?;
    for (label, kind, signers) in [
        (
            "road -> rail handoff (node 3 is down; 2 of 3 still commit)",
            ManifestFlow::handoff(ids::ROAD, ids::RAIL),
            vec![ids::ROAD, ids::RAIL],
        ),
        (
            "rail -> incinerator delivery",
            ManifestFlow::handoff(ids::RAIL, ids::FACILITY),
            vec![ids::RAIL, ids::FACILITY],
        ),
    ] {
        let e = a.event(kind, &signers);
        let r = submit(&apis[0], &e)
            .await
            .map_err(|s| DemoError::Unexpected(s.message().to_owned()))?;
        a.accept(&e);
        say(out, format!("   #{:<3} {label}", r.index));
    }
    nodes[2].start();
    say(out, "   -- node 3 is back --".into());
    let e = a.event(ManifestFlow::received("8.52", "1800", 12), &[ids::FACILITY]);
    let r = submit(&apis[2], &e)
        .await
        .map_err(|s| DemoError::Unexpected(s.message().to_owned()))?;
    a.accept(&e);
    say(
        out,
        format!(
            "   #{:<3} received (weighed 8.52 t against 8.5 t: within 10 %)",
            r.index
        ),
    );
    let done = a.now - HOUR;
    let e = a.event(ManifestFlow::treated(&[1, 2], done), &[ids::FACILITY]);
    let r = submit(&apis[1], &e)
        .await
        .map_err(|s| DemoError::Unexpected(s.message().to_owned()))?;
    a.accept(&e);
    say(
        out,
        format!(
            "   #{:<3} treatment certified (incineration, certificate anchored by hash)",
            r.index
        ),
    );

    // A second "pickup" from the created state (a forked custody chain) is refused.
    let mut fork = ManifestFlow::new(&net, "20261502000001", a.now).map_err(setup)?;
    fork.head = created_head.unwrap_or_default();
    let e = fork.event(
        ManifestFlow::handoff(ids::GENERATOR, ids::ROAD),
        &[ids::GENERATOR, ids::ROAD],
    );
    fork.accept(&e);
    match submit(&apis[0], &e).await {
        Err(s) => say(
            out,
            format!(
                "   a forged pickup is refused: {:?} {}",
                s.code(),
                s.message()
            ),
        ),
        Ok(_) => return Err(DemoError::Unexpected("a forged pickup was accepted".into())),
    }

    manifest_b(&net, &apis, out).await?;

    // Manifest C: rejected at the gate, sent to the alternate facility.
    say(
        out,
        "\n4. Manifest cn:20261502000003 — rejected at the gate, sent to the alternate facility"
            .into(),
    );
    let mut c = ManifestFlow::new(&net, "20261502000003", T0).map_err(setup)?;
    let reject = Kind::Rejected(pb::Rejected {
        scope: pb::RejectionScope::Full as i32,
        destination: pb::RejectionDestination::AlternateFacility as i32,
        transporter_on_site: true,
        reason: "drums leaking".into(),
        ..Default::default()
    });
    for (label, kind, signers) in [
        (
            "created",
            Kind::ManifestCreated(pb::ManifestCreated {
                manifest: Some(net.manifest("20261502000003", &[ids::ROAD])),
            }),
            vec![ids::GENERATOR],
        ),
        (
            "pickup",
            ManifestFlow::handoff(ids::GENERATOR, ids::ROAD),
            vec![ids::GENERATOR, ids::ROAD],
        ),
        (
            "rejected on site by the incinerator (facility + carrier sign)",
            reject,
            vec![ids::FACILITY, ids::ROAD],
        ),
        (
            "delivered to the alternate facility",
            ManifestFlow::handoff(ids::ROAD, ids::ALTERNATE),
            vec![ids::ROAD, ids::ALTERNATE],
        ),
        (
            "received by the alternate facility",
            ManifestFlow::received("8.5", "1800", 12),
            vec![ids::ALTERNATE],
        ),
    ] {
        let e = c.event(kind, &signers);
        let r = submit(&apis[1], &e)
            .await
            .map_err(|s| DemoError::Unexpected(s.message().to_owned()))?;
        c.accept(&e);
        say(out, format!("   #{:<3} {label}", r.index));
    }

    // All nodes agree; a checkpoint is cosigned; the regulator downloads and verifies a proof.
    say(out, "\n5. Every node holds the same ledger".into());
    let deadline = Instant::now() + Duration::from_secs(60);
    let final_head = loop {
        let mut heads = Vec::new();
        for api in &apis {
            heads.push(head(api).await);
        }
        if let [Some(h1), Some(h2), Some(h3)] = heads.as_slice()
            && h1.size == h2.size
            && h2.size == h3.size
            && h1.root == h2.root
            && h2.root == h3.root
        {
            break h1.clone();
        }
        if Instant::now() > deadline {
            return Err(DemoError::Unexpected(
                "nodes did not converge within 60 s".into(),
            ));
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    say(
        out,
        format!(
            "   size {} root {} on all three nodes",
            final_head.size,
            hex_short(&final_head.root)
        ),
    );

    say(
        out,
        "\n6. A regulator downloads the custody proof of cn:20261502000001 and checks it offline"
            .into(),
    );
    let request = pb::GetCustodyProofRequest {
        consistency: 0,
        tracking_number: Some(pb::TrackingNumber {
            scheme: pb::TrackingScheme::Cn as i32,
            number: "20261502000001".into(),
        }),
    };
    let deadline = Instant::now() + Duration::from_secs(60);
    let proof = loop {
        if let Some(mut cl) = client(&apis[2]).await
            && let Ok(p) = cl.get_custody_proof(request.clone()).await
        {
            let p = p.into_inner();
            let bytes = prost::Message::encode_to_vec(&p);
            if let Ok(v) = verify_custody_proof_bytes(&bytes, &net.genesis)
                && v.checkpoint.size == final_head.size
            {
                break bytes;
            }
        }
        if Instant::now() > deadline {
            return Err(DemoError::Unexpected(
                "no cosigned checkpoint covered the ledger within 60 s".into(),
            ));
        }
        tokio::time::sleep(Duration::from_millis(300)).await;
    };
    let verified = verify_custody_proof_bytes(&proof, &net.genesis)
        .map_err(|e| DemoError::Unexpected(e.to_string()))?;
    say(
        out,
        format!(
            "   {} bytes, checkpoint size {} cosigned by {}",
            proof.len(),
            verified.checkpoint.size,
            verified
                .cosigners
                .signers
                .iter()
                .map(|s| s.name.as_str())
                .collect::<Vec<_>>()
                .join(", ")
        ),
    );
    for ev in &verified.timeline {
        say(
            out,
            format!(
                "   #{:<3} {:<18} {:<45} {}",
                ev.index,
                ev.kind,
                ev.summary,
                ev.signers.join(" + ")
            ),
        );
    }
    say(
        out,
        format!(
            "   VERIFIED: status {}, every event signed, in order, included and complete",
            verified.state.status
        ),
    );
    let mut tampered = proof.clone();
    let middle = tampered.len() / 2;
    tampered[middle] ^= 0x01;
    match verify_custody_proof_bytes(&tampered, &net.genesis) {
        Err(e) => say(
            out,
            format!("   a copy with one flipped byte FAILS: [{}] {e}", e.code()),
        ),
        Ok(_) => return Err(DemoError::Unexpected("a tampered proof verified".into())),
    }

    for n in &mut nodes {
        n.stop().await?;
    }
    say(
        out,
        format!(
            "\nDone in {:.1} s: 3 manifests (one corrected with every party's approval, one rejected to the alternate), 1 node outage, 0 events lost, 1 proof verified, 1 forgery caught.",
            started.elapsed().as_secs_f64()
        ),
    );
    Ok(())
}

/// Manifest B: a receipt with a significant quantity discrepancy, corrected by the facility and
/// taking effect once the generator and the carrier (every other signer) approve.
async fn manifest_b(
    net: &SampleNetwork,
    apis: &[String],
    out: &mut dyn Write,
) -> Result<(), DemoError> {
    let say = |out: &mut dyn Write, line: String| {
        let _ = writeln!(out, "{line}");
    };
    say(
        out,
        "\n3. Manifest cn:20261502000002 — weighed short at receipt, corrected with everyone's approval"
            .into(),
    );
    let mut b = ManifestFlow::new(net, "20261502000002", T0).map_err(setup)?;
    let mut received_hash = None;
    let steps: Vec<(String, Kind, Vec<&str>)> = vec![
        (
            "created by the generator".into(),
            Kind::ManifestCreated(pb::ManifestCreated {
                manifest: Some(net.manifest("20261502000002", &[ids::ROAD])),
            }),
            vec![ids::GENERATOR],
        ),
        (
            "pickup: generator -> road carrier".into(),
            ManifestFlow::handoff(ids::GENERATOR, ids::ROAD),
            vec![ids::GENERATOR, ids::ROAD],
        ),
        (
            "delivered to the incinerator".into(),
            ManifestFlow::handoff(ids::ROAD, ids::FACILITY),
            vec![ids::ROAD, ids::FACILITY],
        ),
        (
            "received: line 1 weighed 7.2 t against 8.5 t shipped".into(),
            ManifestFlow::received("7.2", "1800", 12),
            vec![ids::FACILITY],
        ),
    ];
    for (i, (label, kind, signers)) in steps.into_iter().enumerate() {
        let e = b.event(kind, &signers);
        let r = submit(&apis[i % apis.len()], &e)
            .await
            .map_err(|s| DemoError::Unexpected(s.message().to_owned()))?;
        b.accept(&e);
        received_hash = Some(b.head);
        say(out, format!("   #{:<3} {label}", r.index));
    }
    let state = manifest_state(&apis[0], "20261502000002").await?;
    for d in state.discrepancies.iter().filter(|d| d.significant) {
        say(
            out,
            format!(
                "        line {}: {}{}.{:02} % — a significant discrepancy under the EPA rule (over 10 %)",
                d.line_number,
                // Sign first: the integer part alone loses it below 1 %.
                if d.deviation_bp.unwrap_or(0) < 0 {
                    "-"
                } else {
                    "+"
                },
                d.deviation_bp.unwrap_or(0).unsigned_abs() / 100,
                d.deviation_bp.unwrap_or(0).unsigned_abs() % 100
            ),
        );
    }
    let correction = Kind::Correction(pb::Correction {
        amends_event: received_hash.map(|h| h.0.to_vec()).unwrap_or_default(),
        changes: vec![pb::CorrectionChange {
            change: Some(pb::correction_change::Change::ReceivedLine(
                pb::ReceivedLine {
                    line_number: 1,
                    quantity: Some(pb::Quantity {
                        amount: "8.45".into(),
                        unit: pb::QuantityUnit::MetricTonnes as i32,
                        estimated: false,
                    }),
                    container_count: 1,
                    ..Default::default()
                },
            )),
        }],
        reason: "weighbridge ticket misread: 8.45 t, not 7.2 t".into(),
    });
    let e = b.event(correction, &[ids::FACILITY]);
    let r = submit(&apis[1], &e)
        .await
        .map_err(|s| DemoError::Unexpected(s.message().to_owned()))?;
    b.accept(&e);
    let correction_hash = b.head;
    say(
        out,
        format!(
            "   #{:<3} correction proposed by the facility (amends the receipt: 8.45 t); nothing is edited in place",
            r.index
        ),
    );
    for party in [ids::GENERATOR, ids::ROAD] {
        let decision = Kind::CorrectionDecision(pb::CorrectionDecision {
            correction_event: correction_hash.0.to_vec(),
            approve: true,
            comment: String::new(),
        });
        let e = b.event(decision, &[party]);
        let r = submit(&apis[2], &e)
            .await
            .map_err(|s| DemoError::Unexpected(s.message().to_owned()))?;
        b.accept(&e);
        say(out, format!("   #{:<3} approved by {party}", r.index));
    }
    let state = manifest_state(&apis[0], "20261502000002").await?;
    let line1 = state
        .received
        .iter()
        .find(|l| l.line_number == 1)
        .and_then(|l| l.quantity.as_ref())
        .map(|q| q.amount.clone())
        .unwrap_or_default();
    if state.corrections_applied != 1 || line1 != "8.45" {
        return Err(DemoError::Unexpected(format!(
            "the approved correction did not take effect (applied {}, line 1 {line1})",
            state.corrections_applied
        )));
    }
    say(
        out,
        format!(
            "        correction in effect: line 1 received {line1} t, {} significant discrepancies left",
            state.discrepancies.iter().filter(|d| d.significant).count()
        ),
    );
    Ok(())
}

async fn manifest_state(api: &str, number: &str) -> Result<pb::ManifestState, DemoError> {
    let request = pb::GetManifestRequest {
        tracking_number: Some(pb::TrackingNumber {
            scheme: pb::TrackingScheme::Cn as i32,
            number: number.into(),
        }),
        ..Default::default()
    };
    let mut c = client(api)
        .await
        .ok_or_else(|| DemoError::Unexpected(format!("node {api} unreachable")))?;
    c.get_manifest(request)
        .await
        .map_err(|s| DemoError::Unexpected(s.message().to_owned()))?
        .into_inner()
        .state
        .ok_or_else(|| DemoError::Unexpected(format!("manifest {number} not found")))
}

fn hex_short(bytes: &[u8]) -> String {
    bytes.iter().take(8).map(|b| format!("{b:02x}")).collect()
}

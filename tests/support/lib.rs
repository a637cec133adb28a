//! Shared helpers for the integration tests: building the sample ledger and its custody proofs.
// Test support: a failure to build the fixed sample data is a bug in the sample, and a panic with
// a message is the clearest report for it.
#![allow(clippy::expect_used)]

pub mod cluster;

use wasteledger_core::checkpoint::SignedCheckpoint;
use wasteledger_core::memory::MemoryLedger;
use wasteledger_core::pb::{self, event_body::Kind};
use wasteledger_core::proof::build_custody_proof;
use wasteledger_core::sample::{HOUR, ManifestFlow, SampleNetwork, T0, ids};

/// The tracking number of the sample multimodal manifest.
pub const SAMPLE_NUMBER: &str = "20261502000001";

/// A sample ledger holding one complete multimodal manifest (created, two legs, delivered,
/// received with a discrepancy, corrected and approved, treated) between other traffic, and a
/// checkpoint cosigned by two of the three witnesses.
pub struct SampleProof {
    /// The network.
    pub net: SampleNetwork,
    /// The ledger.
    pub ledger: MemoryLedger,
    /// The cosigned checkpoint.
    pub checkpoint: SignedCheckpoint,
    /// The custody proof of [`SAMPLE_NUMBER`].
    pub bundle: pb::CustodyProof,
}

/// Builds [`SampleProof`]. Panics only on a bug in the sample data (tests only).
pub fn sample_proof() -> SampleProof {
    let net = SampleNetwork::new().expect("sample genesis");
    let mut ledger = net.ledger().expect("sample registrations");
    let mut flow = ManifestFlow::new(&net, SAMPLE_NUMBER, T0).expect("tracking number");
    // Unrelated traffic interleaved, so inclusion paths are non-trivial.
    let mut other = ManifestFlow::new(&net, "20261502000099", T0).expect("tracking number");
    let manifest = net.manifest(SAMPLE_NUMBER, &[ids::ROAD, ids::RAIL]);
    let steps: Vec<(Kind, Vec<&str>)> = vec![
        (
            Kind::ManifestCreated(pb::ManifestCreated {
                manifest: Some(manifest),
            }),
            vec![ids::GENERATOR],
        ),
        (
            ManifestFlow::handoff(ids::GENERATOR, ids::ROAD),
            vec![ids::GENERATOR, ids::ROAD],
        ),
        (
            Kind::TransitCheckpoint(pb::TransitCheckpoint {
                location: Some(pb::GeoPoint {
                    latitude_micro_deg: 40_657_000,
                    longitude_micro_deg: 109_840_000,
                }),
                description: "weigh station G6".into(),
                kind: pb::TransitCheckpointKind::WeighStation as i32,
                evidence: vec![],
            }),
            vec![ids::ROAD],
        ),
        (
            ManifestFlow::handoff(ids::ROAD, ids::RAIL),
            vec![ids::ROAD, ids::RAIL],
        ),
        (
            ManifestFlow::handoff(ids::RAIL, ids::FACILITY),
            vec![ids::RAIL, ids::FACILITY],
        ),
        (
            ManifestFlow::received("8.5", "1650", 11),
            vec![ids::FACILITY],
        ),
    ];
    for (i, (kind, signers)) in steps.into_iter().enumerate() {
        flow.submit(&mut ledger, kind, &signers)
            .expect("sample step");
        if i == 1 {
            let m = net.manifest("20261502000099", &[ids::ROAD]);
            other
                .submit(
                    &mut ledger,
                    Kind::ManifestCreated(pb::ManifestCreated { manifest: Some(m) }),
                    &[ids::GENERATOR],
                )
                .expect("other manifest");
        }
    }
    let created = ledger_manifest_events(&ledger, &flow)[0];
    let mut line = net.manifest(SAMPLE_NUMBER, &[]).lines[1].clone();
    line.containers = Some(pb::Containers {
        count: 11,
        r#type: pb::ContainerType::Dm as i32,
        container_ids: vec![],
    });
    line.quantity = Some(pb::Quantity {
        amount: "1650".into(),
        unit: pb::QuantityUnit::Kilograms as i32,
        estimated: false,
    });
    let correction = flow
        .submit(
            &mut ledger,
            Kind::Correction(pb::Correction {
                amends_event: created.0.to_vec(),
                changes: vec![pb::CorrectionChange {
                    change: Some(pb::correction_change::Change::WasteLine(line)),
                }],
                reason: "one drum stayed on site".into(),
            }),
            &[ids::GENERATOR],
        )
        .expect("correction");
    for approver in [ids::ROAD, ids::RAIL, ids::FACILITY] {
        flow.submit(
            &mut ledger,
            Kind::CorrectionDecision(pb::CorrectionDecision {
                correction_event: correction.event_hash.0.to_vec(),
                approve: true,
                comment: String::new(),
            }),
            &[approver],
        )
        .expect("approval");
    }
    let done = flow.now - HOUR;
    flow.submit(
        &mut ledger,
        ManifestFlow::treated(&[1, 2], done),
        &[ids::FACILITY],
    )
    .expect("treated");
    let checkpoint = net.cosign(ledger.checkpoint(flow.now).expect("checkpoint"), 2);
    let tracking = flow.tracking.clone();
    let bundle = build_custody_proof(&ledger, &tracking, &checkpoint).expect("proof");
    SampleProof {
        net,
        ledger,
        checkpoint,
        bundle,
    }
}

fn ledger_manifest_events(
    ledger: &MemoryLedger,
    flow: &ManifestFlow<'_>,
) -> Vec<wasteledger_core::Digest> {
    use wasteledger_core::ledger::LedgerView;
    ledger
        .manifest(&flow.tracking)
        .map(|m| m.events.iter().map(|e| e.hash).collect())
        .unwrap_or_default()
}

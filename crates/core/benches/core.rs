//! Benchmarks of the per-event costs: signing, strict verification, the decision function, and
//! offline verification of a 10-event custody bundle.
//!
//! `cargo bench -p wasteledger-core --bench core`

// Benchmark setup: a failure here is a bug in the fixture, reported with a message.
#![allow(clippy::expect_used)]
// criterion_group! generates an undocumented public function.
#![allow(missing_docs)]

use criterion::{Criterion, criterion_group, criterion_main};
use prost::Message;
use std::hint::black_box;
use wasteledger_core::ledger::{LedgerView, evaluate};
use wasteledger_core::pb::{self, event_body::Kind};
use wasteledger_core::proof::{build_custody_proof, verify_custody_proof_bytes};
use wasteledger_core::sample::{HOUR, ManifestFlow, SampleNetwork, T0, ids};
use wasteledger_core::signing::{SigningDomain, sign, verify};

/// A ledger with one 10-event manifest (create, 3 handoffs, 4 transit checkpoints, receipt,
/// treatment) and its cosigned custody proof.
fn ten_event_bundle(net: &SampleNetwork) -> Vec<u8> {
    let mut ledger = net.ledger().expect("ledger");
    let mut flow = ManifestFlow::new(net, "20261502000001", T0).expect("flow");
    let checkpoint = || {
        Kind::TransitCheckpoint(pb::TransitCheckpoint {
            description: "position".into(),
            kind: pb::TransitCheckpointKind::Position as i32,
            ..Default::default()
        })
    };
    let manifest = net.manifest("20261502000001", &[ids::ROAD, ids::RAIL]);
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
        (checkpoint(), vec![ids::ROAD]),
        (checkpoint(), vec![ids::ROAD]),
        (
            ManifestFlow::handoff(ids::ROAD, ids::RAIL),
            vec![ids::ROAD, ids::RAIL],
        ),
        (checkpoint(), vec![ids::RAIL]),
        (checkpoint(), vec![ids::RAIL]),
        (
            ManifestFlow::handoff(ids::RAIL, ids::FACILITY),
            vec![ids::RAIL, ids::FACILITY],
        ),
        (
            ManifestFlow::received("8.5", "1800", 12),
            vec![ids::FACILITY],
        ),
    ];
    for (kind, signers) in steps {
        flow.submit(&mut ledger, kind, &signers).expect("step");
    }
    let done = flow.now - HOUR;
    flow.submit(
        &mut ledger,
        ManifestFlow::treated(&[1, 2], done),
        &[ids::FACILITY],
    )
    .expect("treated");
    let note = net.cosign(ledger.checkpoint(flow.now).expect("checkpoint"), 2);
    build_custody_proof(&ledger, &flow.tracking, &note)
        .expect("proof")
        .encode_to_vec()
}

fn benches(c: &mut Criterion) {
    let net = SampleNetwork::new().expect("network");
    let key = net.key(ids::GENERATOR).expect("key").clone();
    let public = key.verifying_key();
    let ledger_id = net.ledger_id();
    let body = vec![7u8; 512];
    c.bench_function("ed25519 sign (512-byte body)", |b| {
        b.iter(|| sign(&key, SigningDomain::Event, &ledger_id, black_box(&body)))
    });
    let signature = sign(&key, SigningDomain::Event, &ledger_id, &body);
    c.bench_function("ed25519 verify_strict (512-byte body)", |b| {
        b.iter(|| {
            verify(
                &public,
                SigningDomain::Event,
                &ledger_id,
                black_box(&body),
                &signature,
            )
            .expect("valid")
        })
    });

    // The decision function on a two-signature handoff: what every node runs per applied event.
    let mut ledger = net.ledger().expect("ledger");
    let mut flow = ManifestFlow::new(&net, "20261502000001", T0).expect("flow");
    let manifest = net.manifest("20261502000001", &[ids::ROAD]);
    flow.submit(
        &mut ledger,
        Kind::ManifestCreated(pb::ManifestCreated {
            manifest: Some(manifest),
        }),
        &[ids::GENERATOR],
    )
    .expect("create");
    let handoff = flow.event(
        ManifestFlow::handoff(ids::GENERATOR, ids::ROAD),
        &[ids::GENERATOR, ids::ROAD],
    );
    assert!(ledger.manifest(&flow.tracking).is_some());
    c.bench_function("evaluate handoff (2 signatures)", |b| {
        b.iter(|| evaluate(&net.genesis, &ledger, black_box(&handoff), flow.now).expect("accepted"))
    });

    let bundle = ten_event_bundle(&net);
    c.bench_function("verify 10-event custody bundle", |b| {
        b.iter(|| verify_custody_proof_bytes(black_box(&bundle), &net.genesis).expect("valid"))
    });
}

criterion_group! {
    name = core;
    config = Criterion::default();
    targets = benches
}
criterion_main!(core);

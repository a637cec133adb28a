//! An in-process walk through the verifiable core: register parties, run a multimodal manifest
//! from creation to treatment, cosign a checkpoint, build a custody proof, verify it offline, and
//! show the verifier catching a tampered copy.
//!
//! `cargo run -p wasteledger-core --example custody_demo`

#![allow(clippy::print_stdout)]

use std::error::Error;

use prost::Message;
use wasteledger_core::ledger::LedgerView;
use wasteledger_core::pb::{self, event_body::Kind};
use wasteledger_core::proof::{build_custody_proof, verify_custody_proof_bytes};
use wasteledger_core::sample::{HOUR, ManifestFlow, SampleNetwork, T0, ids};

fn main() -> Result<(), Box<dyn Error>> {
    let net = SampleNetwork::new()?;
    println!(
        "ledger {} (id {})",
        net.genesis.ledger_name(),
        net.ledger_id().short()
    );
    let mut ledger = net.ledger()?;
    println!(
        "registered {} parties (authority-signed registry entries)",
        ledger.size()
    );

    let mut flow = ManifestFlow::new(&net, "20261502000001", T0)?;
    let manifest = net.manifest("20261502000001", &[ids::ROAD, ids::RAIL]);
    let steps: Vec<(&str, Kind, Vec<&str>)> = vec![
        (
            "create",
            Kind::ManifestCreated(pb::ManifestCreated {
                manifest: Some(manifest),
            }),
            vec![ids::GENERATOR],
        ),
        (
            "pickup by road",
            ManifestFlow::handoff(ids::GENERATOR, ids::ROAD),
            vec![ids::GENERATOR, ids::ROAD],
        ),
        (
            "road -> rail",
            ManifestFlow::handoff(ids::ROAD, ids::RAIL),
            vec![ids::ROAD, ids::RAIL],
        ),
        (
            "delivery",
            ManifestFlow::handoff(ids::RAIL, ids::FACILITY),
            vec![ids::RAIL, ids::FACILITY],
        ),
        (
            "receipt",
            ManifestFlow::received("8.52", "1800", 12),
            vec![ids::FACILITY],
        ),
    ];
    let mut created_head = None;
    for (label, kind, signers) in steps {
        let receipt = flow.submit(&mut ledger, kind, &signers)?;
        created_head.get_or_insert(flow.head);
        println!(
            "  {label:<16} index {:>3}  event {}  signed by {}",
            receipt.index,
            receipt.event_hash.short(),
            signers.join(" + ")
        );
    }
    // A second pickup prepared on the head the first pickup already extended is refused:
    // custody cannot fork.
    let mut stale = ManifestFlow::new(&net, "20261502000001", flow.now)?;
    stale.head = created_head.unwrap_or_default();
    let fork = stale.event(
        ManifestFlow::handoff(ids::GENERATOR, ids::ROAD),
        &[ids::GENERATOR, ids::ROAD],
    );
    stale.accept(&fork);
    match ledger.submit(&fork, flow.now) {
        Err(e) => println!("  forged pickup refused: [{}] {e}", e.code()),
        Ok(_) => return Err("a forked custody chain was accepted".into()),
    }
    let done = flow.now - HOUR;
    flow.submit(
        &mut ledger,
        ManifestFlow::treated(&[1, 2], done),
        &[ids::FACILITY],
    )?;

    let checkpoint = net.cosign(ledger.checkpoint(flow.now)?, 2);
    println!(
        "\ncheckpoint cosigned by 2 of 3 witnesses:\n{}",
        checkpoint.to_note()
    );
    let bundle = build_custody_proof(&ledger, &flow.tracking, &checkpoint)?.encode_to_vec();
    println!("custody proof: {} bytes", bundle.len());

    let verified = verify_custody_proof_bytes(&bundle, &net.genesis)?;
    println!(
        "VERIFIED {} — status {}",
        verified.tracking, verified.state.status
    );
    for e in &verified.timeline {
        println!(
            "  #{:<3} {:<18} {:<40} by {}",
            e.index,
            e.kind,
            e.summary,
            e.signers.join(", ")
        );
    }

    let mut tampered = bundle.clone();
    let middle = tampered.len() / 2;
    tampered[middle] ^= 0x20;
    match verify_custody_proof_bytes(&tampered, &net.genesis) {
        Err(e) => println!("\ntampered copy: FAILED as it must: [{}] {e}", e.code()),
        Ok(_) => return Err("a tampered proof verified".into()),
    }
    Ok(())
}

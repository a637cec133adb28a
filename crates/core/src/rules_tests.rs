//! Scenario tests of the custody and registry rules through the full decision path
//! (envelope, signatures, rules), one test per rule violation, each asserting its own code.

use crate::compose::{manifest_body, party_body, sign_event};
use crate::custody::Status;
use crate::hash::Digest;
use crate::ledger::{LedgerView, Rejection, RejectionKind};
use crate::memory::{MemoryLedger, Receipt};
use crate::pb::{self, event_body::Kind};
use crate::sample::{HOUR, ManifestFlow, SampleNetwork, T0, ids, key_from_label};

const NO: &str = "20261502000001";

fn net() -> SampleNetwork {
    SampleNetwork::new().unwrap()
}

fn code(r: Result<Receipt, Rejection>) -> &'static str {
    match r {
        Ok(receipt) => panic!("accepted at {}", receipt.index),
        Err(e) => {
            // Every rejection renders a message a user can read.
            assert!(!e.to_string().is_empty());
            e.code()
        }
    }
}

fn create<'a>(
    net: &'a SampleNetwork,
    ledger: &mut MemoryLedger,
    transporters: &[&str],
) -> ManifestFlow<'a> {
    let mut flow = ManifestFlow::new(net, NO, T0).unwrap();
    let manifest = net.manifest(NO, transporters);
    flow.submit(
        ledger,
        Kind::ManifestCreated(pb::ManifestCreated {
            manifest: Some(manifest),
        }),
        &[ids::GENERATOR],
    )
    .unwrap();
    flow
}

/// Generator -> road -> rail -> facility: returns the flow in Delivered.
fn deliver<'a>(net: &'a SampleNetwork, ledger: &mut MemoryLedger) -> ManifestFlow<'a> {
    let mut flow = create(net, ledger, &[ids::ROAD, ids::RAIL]);
    flow.submit(
        ledger,
        ManifestFlow::handoff(ids::GENERATOR, ids::ROAD),
        &[ids::GENERATOR, ids::ROAD],
    )
    .unwrap();
    flow.submit(
        ledger,
        ManifestFlow::handoff(ids::ROAD, ids::RAIL),
        &[ids::ROAD, ids::RAIL],
    )
    .unwrap();
    flow.submit(
        ledger,
        ManifestFlow::handoff(ids::RAIL, ids::FACILITY),
        &[ids::RAIL, ids::FACILITY],
    )
    .unwrap();
    flow
}

/// The manifest's state; every call also checks that the stored (protobuf) form round-trips,
/// so every scenario exercises the codec on the states it reaches.
fn state(ledger: &MemoryLedger, flow: &ManifestFlow<'_>) -> crate::custody::ManifestState {
    let s = std::sync::Arc::unwrap_or_clone(ledger.manifest(&flow.tracking).unwrap());
    let stored = prost::Message::encode_to_vec(&s.to_pb());
    let decoded: pb::ManifestState = prost::Message::decode(stored.as_slice()).unwrap();
    assert_eq!(crate::custody::ManifestState::from_pb(&decoded).unwrap(), s);
    s
}

fn created_kind(net: &SampleNetwork, f: impl FnOnce(&mut pb::Manifest)) -> Kind {
    let mut m = net.manifest(NO, &[ids::ROAD, ids::RAIL]);
    f(&mut m);
    Kind::ManifestCreated(pb::ManifestCreated { manifest: Some(m) })
}

// ---- happy paths -------------------------------------------------------------------------

#[test]
fn full_multimodal_lifecycle() {
    let net = net();
    let mut ledger = net.ledger().unwrap();
    let mut flow = deliver(&net, &mut ledger);
    assert_eq!(state(&ledger, &flow).status, Status::Delivered);
    flow.submit(
        &mut ledger,
        ManifestFlow::received("8.6", "1800", 12),
        &[ids::FACILITY],
    )
    .unwrap();
    let s = state(&ledger, &flow);
    assert_eq!(s.status, Status::Received);
    assert!(!s.has_significant_discrepancy(), "{:?}", s.discrepancies);
    let done = flow.now - HOUR;
    flow.submit(
        &mut ledger,
        ManifestFlow::treated(&[1, 2], done),
        &[ids::FACILITY],
    )
    .unwrap();
    let s = state(&ledger, &flow);
    assert_eq!(s.status, Status::Treated);
    assert_eq!(s.events.len(), 6);
    assert_eq!(s.signers.len(), 4);
}

#[test]
fn significant_discrepancy_then_approved_correction() {
    let net = net();
    let mut ledger = net.ledger().unwrap();
    let mut flow = deliver(&net, &mut ledger);
    // 11 drums instead of 12: a piece-count difference is significant for batch waste.
    flow.submit(
        &mut ledger,
        ManifestFlow::received("8.5", "1650", 11),
        &[ids::FACILITY],
    )
    .unwrap();
    let s = state(&ledger, &flow);
    assert!(s.has_significant_discrepancy());
    let created = s.events[0].hash;
    // The generator corrects line 2: it really shipped 11 drums, 1650 kg.
    let mut line = net.manifest(NO, &[]).lines[1].clone();
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
    let correction = Kind::Correction(pb::Correction {
        amends_event: created.0.to_vec(),
        changes: vec![pb::CorrectionChange {
            change: Some(pb::correction_change::Change::WasteLine(line)),
        }],
        reason: "one drum was left on site; weighbridge ticket attached".into(),
    });
    let receipt = flow
        .submit(&mut ledger, correction, &[ids::GENERATOR])
        .unwrap();
    let s = state(&ledger, &flow);
    let pending = s.pending_correction.clone().unwrap();
    assert_eq!(
        pending.awaiting.len(),
        3,
        "road, rail and facility must approve"
    );
    for approver in [ids::ROAD, ids::RAIL, ids::FACILITY] {
        let decision = Kind::CorrectionDecision(pb::CorrectionDecision {
            correction_event: receipt.event_hash.0.to_vec(),
            approve: true,
            comment: String::new(),
        });
        flow.submit(&mut ledger, decision, &[approver]).unwrap();
    }
    let s = state(&ledger, &flow);
    assert!(s.pending_correction.is_none());
    assert_eq!(s.corrections_applied, 1);
    assert!(
        !s.has_significant_discrepancy(),
        "corrected manifest matches the receipt"
    );
}

#[test]
fn refused_correction_changes_nothing() {
    let net = net();
    let mut ledger = net.ledger().unwrap();
    let mut flow = create(&net, &mut ledger, &[ids::ROAD]);
    flow.submit(
        &mut ledger,
        ManifestFlow::handoff(ids::GENERATOR, ids::ROAD),
        &[ids::GENERATOR, ids::ROAD],
    )
    .unwrap();
    let before = state(&ledger, &flow).manifest;
    let created = state(&ledger, &flow).events[0].hash;
    let receipt = flow
        .submit(
            &mut ledger,
            Kind::Correction(pb::Correction {
                amends_event: created.0.to_vec(),
                changes: vec![pb::CorrectionChange {
                    change: Some(pb::correction_change::Change::HandlingInstructions(
                        "none".into(),
                    )),
                }],
                reason: "typo".into(),
            }),
            &[ids::GENERATOR],
        )
        .unwrap();
    flow.submit(
        &mut ledger,
        Kind::CorrectionDecision(pb::CorrectionDecision {
            correction_event: receipt.event_hash.0.to_vec(),
            approve: false,
            comment: "disagree".into(),
        }),
        &[ids::ROAD],
    )
    .unwrap();
    let s = state(&ledger, &flow);
    assert_eq!(s.manifest, before);
    assert_eq!(s.corrections_refused, 1);
}

#[test]
fn on_site_rejection_goes_to_alternate_facility() {
    let net = net();
    let mut ledger = net.ledger().unwrap();
    let mut flow = create(&net, &mut ledger, &[ids::ROAD]);
    flow.submit(
        &mut ledger,
        ManifestFlow::handoff(ids::GENERATOR, ids::ROAD),
        &[ids::GENERATOR, ids::ROAD],
    )
    .unwrap();
    let reject = Kind::Rejected(pb::Rejected {
        scope: pb::RejectionScope::Full as i32,
        destination: pb::RejectionDestination::AlternateFacility as i32,
        transporter_on_site: true,
        reason: "drums leaking".into(),
        ..Default::default()
    });
    flow.submit(&mut ledger, reject, &[ids::FACILITY, ids::ROAD])
        .unwrap();
    assert_eq!(state(&ledger, &flow).destination, ids::ALTERNATE);
    // Delivering to the designated facility is now out of order.
    assert_eq!(
        code(flow.submit(
            &mut ledger,
            ManifestFlow::handoff(ids::ROAD, ids::FACILITY),
            &[ids::ROAD, ids::FACILITY]
        )),
        "custody.handoff_out_of_order"
    );
    flow.submit(
        &mut ledger,
        ManifestFlow::handoff(ids::ROAD, ids::ALTERNATE),
        &[ids::ROAD, ids::ALTERNATE],
    )
    .unwrap();
    flow.submit(
        &mut ledger,
        ManifestFlow::received("8.5", "1800", 12),
        &[ids::ALTERNATE],
    )
    .unwrap();
    assert_eq!(state(&ledger, &flow).status, Status::Received);
}

#[test]
fn rejection_back_to_generator_ends_in_returned() {
    let net = net();
    let mut ledger = net.ledger().unwrap();
    let mut flow = create(&net, &mut ledger, &[ids::ROAD]);
    flow.submit(
        &mut ledger,
        ManifestFlow::handoff(ids::GENERATOR, ids::ROAD),
        &[ids::GENERATOR, ids::ROAD],
    )
    .unwrap();
    let reject = Kind::Rejected(pb::Rejected {
        scope: pb::RejectionScope::Full as i32,
        destination: pb::RejectionDestination::Generator as i32,
        transporter_on_site: true,
        reason: "not as described".into(),
        ..Default::default()
    });
    flow.submit(&mut ledger, reject, &[ids::FACILITY, ids::ROAD])
        .unwrap();
    flow.submit(
        &mut ledger,
        ManifestFlow::handoff(ids::ROAD, ids::GENERATOR),
        &[ids::ROAD, ids::GENERATOR],
    )
    .unwrap();
    assert_eq!(state(&ledger, &flow).status, Status::Returned);
}

#[test]
fn partial_rejection_after_delivery() {
    let net = net();
    let mut ledger = net.ledger().unwrap();
    let mut flow = deliver(&net, &mut ledger);
    let q = |a: &str, u: pb::QuantityUnit| {
        Some(pb::Quantity {
            amount: a.into(),
            unit: u as i32,
            estimated: false,
        })
    };
    let reject = Kind::Rejected(pb::Rejected {
        scope: pb::RejectionScope::Partial as i32,
        destination: pb::RejectionDestination::AlternateFacility as i32,
        lines: vec![pb::RejectedLine {
            line_number: 2,
            quantity: q("1800", pb::QuantityUnit::Kilograms),
            container_count: 12,
        }],
        accepted: vec![pb::ReceivedLine {
            line_number: 1,
            quantity: q("8.5", pb::QuantityUnit::MetricTonnes),
            container_count: 1,
            ..Default::default()
        }],
        follow_up_manifests: vec![pb::TrackingNumber {
            scheme: pb::TrackingScheme::Cn as i32,
            number: "20261502000002".into(),
        }],
        reason: "packaging not accepted at this plant".into(),
        ..Default::default()
    });
    flow.submit(&mut ledger, reject, &[ids::FACILITY]).unwrap();
    let s = state(&ledger, &flow);
    assert_eq!(s.status, Status::Received);
    assert_eq!(s.received.len(), 1);
    let done = flow.now - HOUR;
    assert_eq!(
        code(flow.submit(
            &mut ledger,
            ManifestFlow::treated(&[1, 2], done),
            &[ids::FACILITY]
        )),
        "custody.unknown_line"
    );
    flow.submit(
        &mut ledger,
        ManifestFlow::treated(&[1], done),
        &[ids::FACILITY],
    )
    .unwrap();
}

#[test]
fn resubmission_is_recognised_not_duplicated() {
    let net = net();
    let mut ledger = net.ledger().unwrap();
    let flow = ManifestFlow::new(&net, NO, T0).unwrap();
    let event = flow.event(created_kind(&net, |_| {}), &[ids::GENERATOR]);
    let first = ledger.submit(&event, T0).unwrap();
    let size = ledger.size();
    let again = ledger.submit(&event, T0 + 1);
    assert_eq!(
        again,
        Err(Rejection::AlreadyRecorded { index: first.index })
    );
    assert_eq!(again.unwrap_err().kind(), RejectionKind::Duplicate);
    assert_eq!(ledger.size(), size);
}

// ---- one test per custody rule -----------------------------------------------------------

#[test]
fn unknown_manifest() {
    let net = net();
    let mut ledger = net.ledger().unwrap();
    let mut flow = ManifestFlow::new(&net, NO, T0).unwrap();
    assert_eq!(
        code(flow.submit(
            &mut ledger,
            ManifestFlow::handoff(ids::GENERATOR, ids::ROAD),
            &[ids::GENERATOR, ids::ROAD]
        )),
        "custody.unknown_manifest"
    );
}

#[test]
fn duplicate_tracking_number() {
    let net = net();
    let mut ledger = net.ledger().unwrap();
    let _ = create(&net, &mut ledger, &[ids::ROAD]);
    let mut again = ManifestFlow::new(&net, NO, T0 + 5).unwrap();
    let r = again.submit(&mut ledger, created_kind(&net, |_| {}), &[ids::GENERATOR]);
    let e = r.unwrap_err();
    assert_eq!(e.code(), "custody.duplicate_tracking_number");
    assert_eq!(e.kind(), RejectionKind::AlreadyExists);
}

#[test]
fn tracking_number_mismatch() {
    let net = net();
    let mut ledger = net.ledger().unwrap();
    let mut flow = ManifestFlow::new(&net, NO, T0).unwrap();
    let kind = created_kind(&net, |m| {
        m.tracking_number.as_mut().unwrap().number = "20261502000009".into()
    });
    assert_eq!(
        code(flow.submit(&mut ledger, kind, &[ids::GENERATOR])),
        "custody.tracking_number_mismatch"
    );
}

#[test]
fn invalid_manifest_lists_fields() {
    let net = net();
    let mut ledger = net.ledger().unwrap();
    let mut flow = ManifestFlow::new(&net, NO, T0).unwrap();
    let kind = created_kind(&net, |m| m.lines.clear());
    let e = flow
        .submit(&mut ledger, kind, &[ids::GENERATOR])
        .unwrap_err();
    assert_eq!(e.code(), "custody.invalid_manifest");
    assert_eq!(e.kind(), RejectionKind::Malformed);
    assert!(
        e.to_string()
            .contains("lines: at least one waste line is required"),
        "{e}"
    );
}

#[test]
fn creation_must_start_the_chain() {
    let net = net();
    let mut ledger = net.ledger().unwrap();
    let mut flow = ManifestFlow::new(&net, NO, T0).unwrap();
    flow.head = Digest([1; 32]);
    assert_eq!(
        code(flow.submit(&mut ledger, created_kind(&net, |_| {}), &[ids::GENERATOR])),
        "custody.creation_not_first"
    );
}

#[test]
fn forked_chain_is_rejected() {
    let net = net();
    let mut ledger = net.ledger().unwrap();
    let flow = create(&net, &mut ledger, &[ids::ROAD, ids::RAIL]);
    // Two pickups prepared on the same head: the first wins, the second is stale.
    let pickup = flow.event(
        ManifestFlow::handoff(ids::GENERATOR, ids::ROAD),
        &[ids::GENERATOR, ids::ROAD],
    );
    let mut other = ManifestFlow::new(&net, NO, flow.now + 1).unwrap();
    other.head = flow.head;
    let fork = other.event(
        ManifestFlow::handoff(ids::GENERATOR, ids::ROAD),
        &[ids::GENERATOR, ids::ROAD],
    );
    ledger.submit(&pickup, flow.now).unwrap();
    assert_eq!(
        code(ledger.submit(&fork, flow.now + 1)),
        "custody.stale_chain"
    );
}

#[test]
fn time_before_previous() {
    let net = net();
    let mut ledger = net.ledger().unwrap();
    let mut flow = create(&net, &mut ledger, &[ids::ROAD]);
    flow.now = T0 - 1;
    let event = flow.event(
        ManifestFlow::handoff(ids::GENERATOR, ids::ROAD),
        &[ids::GENERATOR, ids::ROAD],
    );
    assert_eq!(
        code(ledger.submit(&event, T0 + HOUR)),
        "custody.time_before_previous"
    );
}

#[test]
fn time_in_future() {
    let net = net();
    let mut ledger = net.ledger().unwrap();
    let flow = create(&net, &mut ledger, &[ids::ROAD]);
    let event = flow.event(
        ManifestFlow::handoff(ids::GENERATOR, ids::ROAD),
        &[ids::GENERATOR, ids::ROAD],
    );
    // The ledger time is far behind the stated time.
    assert_eq!(
        code(ledger.submit(&event, flow.now - 2 * HOUR)),
        "custody.time_in_future"
    );
}

#[test]
fn missing_time() {
    let net = net();
    let mut ledger = net.ledger().unwrap();
    let mut flow = ManifestFlow::new(&net, NO, 0).unwrap();
    let event = flow.event(created_kind(&net, |_| {}), &[ids::GENERATOR]);
    flow.now = T0;
    assert_eq!(code(ledger.submit(&event, T0)), "custody.missing_time");
}

#[test]
fn no_custody_after_terminal_state() {
    let net = net();
    let mut ledger = net.ledger().unwrap();
    let mut flow = create(&net, &mut ledger, &[ids::ROAD]);
    flow.submit(
        &mut ledger,
        Kind::Cancelled(pb::Cancelled {
            reason: "plans changed".into(),
        }),
        &[ids::GENERATOR],
    )
    .unwrap();
    assert_eq!(
        code(flow.submit(
            &mut ledger,
            ManifestFlow::handoff(ids::GENERATOR, ids::ROAD),
            &[ids::GENERATOR, ids::ROAD]
        )),
        "custody.terminal"
    );
}

#[test]
fn wrong_state() {
    let net = net();
    let mut ledger = net.ledger().unwrap();
    let mut flow = create(&net, &mut ledger, &[ids::ROAD]);
    assert_eq!(
        code(flow.submit(
            &mut ledger,
            ManifestFlow::received("8.5", "1800", 12),
            &[ids::FACILITY]
        )),
        "custody.wrong_state"
    );
}

#[test]
fn handoff_needs_both_signatures() {
    let net = net();
    let mut ledger = net.ledger().unwrap();
    let mut flow = create(&net, &mut ledger, &[ids::ROAD]);
    let e = flow
        .submit(
            &mut ledger,
            ManifestFlow::handoff(ids::GENERATOR, ids::ROAD),
            &[ids::GENERATOR],
        )
        .unwrap_err();
    assert_eq!(e.code(), "custody.missing_signature");
    assert_eq!(e.kind(), RejectionKind::PermissionDenied);
}

#[test]
fn unexpected_signer() {
    let net = net();
    let mut ledger = net.ledger().unwrap();
    let mut flow = ManifestFlow::new(&net, NO, T0).unwrap();
    assert_eq!(
        code(flow.submit(
            &mut ledger,
            created_kind(&net, |_| {}),
            &[ids::GENERATOR, ids::FACILITY]
        )),
        "custody.unexpected_signer"
    );
}

#[test]
fn authority_cannot_sign_custody() {
    let net = net();
    let mut ledger = net.ledger().unwrap();
    let flow = ManifestFlow::new(&net, NO, T0).unwrap();
    let body = manifest_body(&flow.tracking, Digest::ZERO, T0, created_kind(&net, |_| {}));
    let event = sign_event(
        &net.ledger_id(),
        &body,
        &[net.key(ids::GENERATOR).unwrap(), &net.authority],
    );
    assert_eq!(code(ledger.submit(&event, T0)), "custody.authority_signed");
}

#[test]
fn handoff_out_of_order() {
    let net = net();
    let mut ledger = net.ledger().unwrap();
    let mut flow = create(&net, &mut ledger, &[ids::ROAD, ids::RAIL]);
    assert_eq!(
        code(flow.submit(
            &mut ledger,
            ManifestFlow::handoff(ids::GENERATOR, ids::RAIL),
            &[ids::GENERATOR, ids::RAIL]
        )),
        "custody.handoff_out_of_order"
    );
}

#[test]
fn unknown_party() {
    let net = net();
    let mut ledger = net.ledger().unwrap();
    let mut flow = ManifestFlow::new(&net, NO, T0).unwrap();
    let kind = created_kind(&net, |m| {
        m.transporters[1].transporter.as_mut().unwrap().registry_id = "TR-NOBODY".into()
    });
    assert_eq!(
        code(flow.submit(&mut ledger, kind, &[ids::GENERATOR])),
        "custody.unknown_party"
    );
}

#[test]
fn missing_role() {
    let net = net();
    let mut ledger = net.ledger().unwrap();
    let mut flow = ManifestFlow::new(&net, NO, T0).unwrap();
    // A transporter named as the designated facility.
    let kind = created_kind(&net, |m| {
        m.designated_facility.as_mut().unwrap().registry_id = ids::RAIL.into()
    });
    assert_eq!(
        code(flow.submit(&mut ledger, kind, &[ids::GENERATOR])),
        "custody.missing_role"
    );
}

#[test]
fn no_valid_permit() {
    let net = net();
    let mut ledger = net.ledger().unwrap();
    let mut flow = create(&net, &mut ledger, &[ids::ROAD]);
    // The sample permits expire a year after T0.
    flow.now = T0 + 400 * 24 * HOUR;
    assert_eq!(
        code(flow.submit(
            &mut ledger,
            ManifestFlow::handoff(ids::GENERATOR, ids::ROAD),
            &[ids::GENERATOR, ids::ROAD]
        )),
        "custody.no_valid_permit"
    );
}

fn receipt_lines(lines: Vec<(u32, &str)>) -> Kind {
    Kind::Received(pb::Received {
        lines: lines
            .into_iter()
            .map(|(n, a)| pb::ReceivedLine {
                line_number: n,
                quantity: Some(pb::Quantity {
                    amount: a.into(),
                    unit: pb::QuantityUnit::Kilograms as i32,
                    estimated: false,
                }),
                container_count: 1,
                ..Default::default()
            })
            .collect(),
        evidence: vec![],
    })
}

#[test]
fn receipt_line_rules() {
    let net = net();
    let mut ledger = net.ledger().unwrap();
    let mut flow = deliver(&net, &mut ledger);
    assert_eq!(
        code(flow.submit(
            &mut ledger,
            receipt_lines(vec![(1, "1"), (2, "1"), (3, "1")]),
            &[ids::FACILITY]
        )),
        "custody.unknown_line"
    );
    assert_eq!(
        code(flow.submit(
            &mut ledger,
            receipt_lines(vec![(1, "1"), (1, "1")]),
            &[ids::FACILITY]
        )),
        "custody.duplicate_line"
    );
    assert_eq!(
        code(flow.submit(&mut ledger, receipt_lines(vec![(1, "1")]), &[ids::FACILITY])),
        "custody.missing_line"
    );
    assert_eq!(
        code(flow.submit(
            &mut ledger,
            receipt_lines(vec![(1, "1"), (2, "1e3")]),
            &[ids::FACILITY]
        )),
        "custody.invalid_field"
    );
    // Only the facility holding the load may sign the receipt.
    assert_eq!(
        code(flow.submit(
            &mut ledger,
            receipt_lines(vec![(1, "1"), (2, "1")]),
            &[ids::ALTERNATE]
        )),
        "custody.missing_signature"
    );
}

fn on_site(scope: pb::RejectionScope, destination: pb::RejectionDestination) -> Kind {
    Kind::Rejected(pb::Rejected {
        scope: scope as i32,
        destination: destination as i32,
        transporter_on_site: true,
        reason: "refused at the gate".into(),
        ..Default::default()
    })
}

#[test]
fn on_site_rejection_must_be_full() {
    let net = net();
    let mut ledger = net.ledger().unwrap();
    let mut flow = create(&net, &mut ledger, &[ids::ROAD]);
    flow.submit(
        &mut ledger,
        ManifestFlow::handoff(ids::GENERATOR, ids::ROAD),
        &[ids::GENERATOR, ids::ROAD],
    )
    .unwrap();
    assert_eq!(
        code(flow.submit(
            &mut ledger,
            on_site(
                pb::RejectionScope::Partial,
                pb::RejectionDestination::AlternateFacility
            ),
            &[ids::FACILITY, ids::ROAD]
        )),
        "custody.on_site_rejection_must_be_full"
    );
}

#[test]
fn no_alternate_facility() {
    let net = net();
    let mut ledger = net.ledger().unwrap();
    let mut flow = ManifestFlow::new(&net, NO, T0).unwrap();
    flow.submit(
        &mut ledger,
        created_kind(&net, |m| {
            m.alternate_facility = None;
            m.transporters.truncate(1);
        }),
        &[ids::GENERATOR],
    )
    .unwrap();
    flow.submit(
        &mut ledger,
        ManifestFlow::handoff(ids::GENERATOR, ids::ROAD),
        &[ids::GENERATOR, ids::ROAD],
    )
    .unwrap();
    assert_eq!(
        code(flow.submit(
            &mut ledger,
            on_site(
                pb::RejectionScope::Full,
                pb::RejectionDestination::AlternateFacility
            ),
            &[ids::FACILITY, ids::ROAD]
        )),
        "custody.no_alternate_facility"
    );
}

#[test]
fn already_redirected() {
    let net = net();
    let mut ledger = net.ledger().unwrap();
    let mut flow = create(&net, &mut ledger, &[ids::ROAD]);
    flow.submit(
        &mut ledger,
        ManifestFlow::handoff(ids::GENERATOR, ids::ROAD),
        &[ids::GENERATOR, ids::ROAD],
    )
    .unwrap();
    flow.submit(
        &mut ledger,
        on_site(
            pb::RejectionScope::Full,
            pb::RejectionDestination::AlternateFacility,
        ),
        &[ids::FACILITY, ids::ROAD],
    )
    .unwrap();
    assert_eq!(
        code(flow.submit(
            &mut ledger,
            on_site(
                pb::RejectionScope::Full,
                pb::RejectionDestination::AlternateFacility
            ),
            &[ids::ALTERNATE, ids::ROAD]
        )),
        "custody.already_redirected"
    );
}

#[test]
fn rejection_after_delivery_needs_follow_up() {
    let net = net();
    let mut ledger = net.ledger().unwrap();
    let mut flow = deliver(&net, &mut ledger);
    let reject = Kind::Rejected(pb::Rejected {
        scope: pb::RejectionScope::Full as i32,
        destination: pb::RejectionDestination::Generator as i32,
        reason: "wrong waste".into(),
        ..Default::default()
    });
    assert_eq!(
        code(flow.submit(&mut ledger, reject, &[ids::FACILITY])),
        "custody.missing_follow_up"
    );
}

#[test]
fn cancel_only_before_pickup() {
    let net = net();
    let mut ledger = net.ledger().unwrap();
    let mut flow = create(&net, &mut ledger, &[ids::ROAD]);
    flow.submit(
        &mut ledger,
        ManifestFlow::handoff(ids::GENERATOR, ids::ROAD),
        &[ids::GENERATOR, ids::ROAD],
    )
    .unwrap();
    assert_eq!(
        code(flow.submit(
            &mut ledger,
            Kind::Cancelled(pb::Cancelled {
                reason: "late".into()
            }),
            &[ids::GENERATOR]
        )),
        "custody.cancel_after_pickup"
    );
}

fn correction(amends: Digest, change: pb::correction_change::Change) -> Kind {
    Kind::Correction(pb::Correction {
        amends_event: amends.0.to_vec(),
        changes: vec![pb::CorrectionChange {
            change: Some(change),
        }],
        reason: "fix".into(),
    })
}

#[test]
fn correction_rules() {
    use pb::correction_change::Change;
    let net = net();
    let mut ledger = net.ledger().unwrap();
    let mut flow = create(&net, &mut ledger, &[ids::ROAD]);
    let created = state(&ledger, &flow).events[0].hash;
    flow.submit(
        &mut ledger,
        ManifestFlow::handoff(ids::GENERATOR, ids::ROAD),
        &[ids::GENERATOR, ids::ROAD],
    )
    .unwrap();
    let handling = || Change::HandlingInstructions("upright".into());
    assert_eq!(
        code(flow.submit(
            &mut ledger,
            correction(Digest([7; 32]), handling()),
            &[ids::GENERATOR]
        )),
        "custody.amended_event_not_found"
    );
    assert_eq!(
        code(flow.submit(
            &mut ledger,
            correction(created, Change::ReceivedLine(pb::ReceivedLine::default())),
            &[ids::GENERATOR]
        )),
        "custody.change_does_not_fit"
    );
    let empty = Kind::Correction(pb::Correction {
        amends_event: created.0.to_vec(),
        changes: vec![],
        reason: "nothing".into(),
    });
    assert_eq!(
        code(flow.submit(&mut ledger, empty, &[ids::GENERATOR])),
        "custody.empty_correction"
    );
    assert_eq!(
        code(flow.submit(
            &mut ledger,
            correction(created, handling()),
            &[ids::REGULATOR]
        )),
        "custody.not_a_manifest_party"
    );
    assert_eq!(
        code(flow.submit(
            &mut ledger,
            correction(created, handling()),
            &[ids::GENERATOR, ids::ROAD]
        )),
        "custody.signer_count"
    );
    let decision = |hash: Digest| {
        Kind::CorrectionDecision(pb::CorrectionDecision {
            correction_event: hash.0.to_vec(),
            approve: true,
            comment: String::new(),
        })
    };
    assert_eq!(
        code(flow.submit(&mut ledger, decision(created), &[ids::ROAD])),
        "custody.no_such_pending_correction"
    );
    let pending = flow
        .submit(
            &mut ledger,
            correction(created, handling()),
            &[ids::GENERATOR],
        )
        .unwrap();
    assert_eq!(
        code(flow.submit(&mut ledger, correction(created, handling()), &[ids::ROAD])),
        "custody.correction_pending"
    );
    assert_eq!(
        code(flow.submit(&mut ledger, decision(pending.event_hash), &[ids::FACILITY])),
        "custody.not_an_approver"
    );
    flow.submit(&mut ledger, decision(pending.event_hash), &[ids::ROAD])
        .unwrap();
    assert_eq!(
        state(&ledger, &flow).manifest.handling_instructions,
        "upright"
    );
}

#[test]
fn no_correction_on_cancelled_manifest() {
    let net = net();
    let mut ledger = net.ledger().unwrap();
    let mut flow = create(&net, &mut ledger, &[ids::ROAD]);
    let created = state(&ledger, &flow).events[0].hash;
    flow.submit(
        &mut ledger,
        Kind::Cancelled(pb::Cancelled { reason: "x".into() }),
        &[ids::GENERATOR],
    )
    .unwrap();
    assert_eq!(
        code(flow.submit(
            &mut ledger,
            correction(
                created,
                pb::correction_change::Change::HandlingInstructions("y".into())
            ),
            &[ids::GENERATOR]
        )),
        "custody.correction_on_cancelled"
    );
}

#[test]
fn wrong_subject_is_caught_by_the_envelope_and_the_rules() {
    let net = net();
    let mut ledger = net.ledger().unwrap();
    let flow = ManifestFlow::new(&net, NO, T0).unwrap();
    let kind = Kind::KeyRevoked(pb::KeyRevoked {
        registry_id: ids::ROAD.into(),
        key_id: vec![0; 32],
        reason: String::new(),
    });
    let event = sign_event(
        &net.ledger_id(),
        &manifest_body(&flow.tracking, Digest::ZERO, T0, kind.clone()),
        &[&net.authority],
    );
    assert_eq!(
        code(ledger.submit(&event, T0)),
        "envelope.subject_kind_mismatch"
    );
    // The rule function refuses it on its own too.
    let parties = std::collections::BTreeSet::new();
    let ctx = crate::custody::EventContext {
        event_hash: Digest::ZERO,
        index: 0,
        sequenced_at: T0,
        max_skew_ms: 0,
        signers: &parties,
        authority_signed: false,
        parties: &NoParties,
    };
    let body = manifest_body(&flow.tracking, Digest::ZERO, T0, kind);
    let state = ledger.manifest(&flow.tracking);
    assert!(state.is_none());
    let mut created = create(&net, &mut ledger, &[ids::ROAD]);
    let current = ledger.manifest(&created.tracking).unwrap();
    let mut body = body;
    body.prev_event_hash = created.head.0.to_vec();
    body.occurred_at = created.now;
    let err = crate::custody::apply_manifest_event(
        Some(&current),
        &created.tracking,
        &body,
        &crate::custody::EventContext {
            sequenced_at: created.now,
            ..ctx
        },
    )
    .unwrap_err();
    assert!(
        matches!(
            err,
            crate::custody::CustodyError::WrongSubject { kind: "KeyRevoked" }
        ),
        "{err}"
    );
    created.now += 1;
}

struct NoParties;
impl crate::custody::PartyLookup for NoParties {
    fn party(&self, _: &str) -> Option<std::sync::Arc<crate::registry::PartyRecord>> {
        None
    }
}

// ---- envelope and registry ---------------------------------------------------------------

#[test]
fn envelope_rules() {
    let net = net();
    let mut ledger = net.ledger().unwrap();
    let flow = ManifestFlow::new(&net, NO, T0).unwrap();
    let good = flow.event(created_kind(&net, |_| {}), &[ids::GENERATOR]);
    let mut big = good.clone();
    big.body = vec![0; crate::envelope::MAX_BODY_BYTES + 1];
    let e = ledger.submit(&big, T0).unwrap_err();
    assert_eq!(
        (e.code(), e.kind()),
        ("envelope.too_large", RejectionKind::TooLarge)
    );
    let mut garbage = good.clone();
    garbage.body = vec![0xff, 0xff, 0xff];
    assert_eq!(code(ledger.submit(&garbage, T0)), "envelope.malformed");
    let mut unsigned = good.clone();
    unsigned.signatures.clear();
    assert_eq!(code(ledger.submit(&unsigned, T0)), "envelope.no_signatures");
    let mut tampered = good.clone();
    let last = tampered.body.len() - 1;
    tampered.body[last] ^= 1;
    let e = ledger.submit(&tampered, T0).unwrap_err();
    assert!(
        matches!(e.code(), "signature.invalid" | "envelope.malformed"),
        "{e}"
    );
    let mut forged = good.clone();
    forged.signatures[0].signature[0] ^= 1;
    let e = ledger.submit(&forged, T0).unwrap_err();
    assert_eq!(
        (e.code(), e.kind()),
        ("signature.invalid", RejectionKind::Unauthenticated)
    );
    let mut twice = good.clone();
    twice.signatures.push(twice.signatures[0].clone());
    assert_eq!(
        code(ledger.submit(&twice, T0)),
        "envelope.duplicate_signature"
    );
    let stranger = flow.event(created_kind(&net, |_| {}), &[]);
    let stranger = sign_event(
        &net.ledger_id(),
        &prost::Message::decode(stranger.body.as_slice()).unwrap(),
        &[&key_from_label("stranger")],
    );
    assert_eq!(code(ledger.submit(&stranger, T0)), "signature.unknown_key");
    // Nothing was appended by any of these.
    assert_eq!(ledger.size(), 6);
    ledger.submit(&good, T0).unwrap();
}

#[test]
fn signatures_from_another_network_fail() {
    let net = net();
    let mut ledger = net.ledger().unwrap();
    let flow = ManifestFlow::new(&net, NO, T0).unwrap();
    let body = manifest_body(&flow.tracking, Digest::ZERO, T0, created_kind(&net, |_| {}));
    let other = sign_event(&Digest([9; 32]), &body, &[net.key(ids::GENERATOR).unwrap()]);
    assert_eq!(code(ledger.submit(&other, T0)), "signature.invalid");
}

fn registry_event(
    net: &SampleNetwork,
    id: &str,
    prev: Digest,
    kind: Kind,
    keys: &[&crate::signing::SigningKey],
) -> pb::SignedEvent {
    sign_event(&net.ledger_id(), &party_body(id, prev, T0, kind), keys)
}

#[test]
fn registry_rules() {
    let net = net();
    let mut ledger = net.ledger().unwrap();
    let newcomer = key_from_label("newcomer");
    let mut party = net.party(ids::ROAD);
    party.registry_id = "TR-NEW-03".into();
    let register = |p: &pb::Party, key: &[u8]| {
        Kind::PartyRegistered(pb::PartyRegistered {
            party: Some(p.clone()),
            key: Some(pb::PublicKey {
                ed25519: key.to_vec(),
            }),
        })
    };
    // Only an authority admits parties.
    let self_made = registry_event(
        &net,
        "TR-NEW-03",
        Digest::ZERO,
        register(&party, newcomer.verifying_key().as_bytes()),
        &[&newcomer],
    );
    assert_eq!(code(ledger.submit(&self_made, T0)), "signature.unknown_key");
    let by_party = registry_event(
        &net,
        "TR-NEW-03",
        Digest::ZERO,
        register(&party, newcomer.verifying_key().as_bytes()),
        &[net.key(ids::ROAD).unwrap()],
    );
    assert_eq!(
        code(ledger.submit(&by_party, T0)),
        "registry.authority_required"
    );
    // Weak keys and keys of other parties are refused.
    let mut identity = [0u8; 32];
    identity[0] = 1;
    let weak = registry_event(
        &net,
        "TR-NEW-03",
        Digest::ZERO,
        register(&party, &identity),
        &[&net.authority],
    );
    assert_eq!(code(ledger.submit(&weak, T0)), "registry.bad_key");
    let reused = registry_event(
        &net,
        "TR-NEW-03",
        Digest::ZERO,
        register(
            &party,
            net.key(ids::ROAD).unwrap().verifying_key().as_bytes(),
        ),
        &[&net.authority],
    );
    assert_eq!(code(ledger.submit(&reused, T0)), "registry.key_in_use");
    let dup = registry_event(
        &net,
        ids::ROAD,
        Digest::ZERO,
        register(&net.party(ids::ROAD), newcomer.verifying_key().as_bytes()),
        &[&net.authority],
    );
    assert_eq!(code(ledger.submit(&dup, T0)), "registry.stale_chain");
    let ok = registry_event(
        &net,
        "TR-NEW-03",
        Digest::ZERO,
        register(&party, newcomer.verifying_key().as_bytes()),
        &[&net.authority],
    );
    ledger.submit(&ok, T0).unwrap();
}

#[test]
fn rotated_and_revoked_keys_stop_signing() {
    let net = net();
    let mut ledger = net.ledger().unwrap();
    let old = net.key(ids::ROAD).unwrap();
    let new = key_from_label("road key 2");
    let head = ledger.party_record(ids::ROAD).unwrap().head;
    let rotate = Kind::KeyRotated(pb::KeyRotated {
        registry_id: ids::ROAD.into(),
        old_key_id: crate::signing::key_id(&old.verifying_key()).0.to_vec(),
        new_key: Some(pb::PublicKey {
            ed25519: new.verifying_key().to_bytes().to_vec(),
        }),
    });
    ledger
        .submit(&registry_event(&net, ids::ROAD, head, rotate, &[old]), T0)
        .unwrap();
    // The old key no longer signs a pickup.
    let mut flow = create(&net, &mut ledger, &[ids::ROAD]);
    let e = flow
        .submit(
            &mut ledger,
            ManifestFlow::handoff(ids::GENERATOR, ids::ROAD),
            &[ids::GENERATOR, ids::ROAD],
        )
        .unwrap_err();
    assert_eq!(e.code(), "signature.key_not_active");
    // The new key does.
    let body = manifest_body(
        &flow.tracking,
        flow.head,
        flow.now,
        ManifestFlow::handoff(ids::GENERATOR, ids::ROAD),
    );
    let event = sign_event(
        &net.ledger_id(),
        &body,
        &[net.key(ids::GENERATOR).unwrap(), &new],
    );
    ledger.submit(&event, flow.now).unwrap();
    // Revoking the new key (by the authority) stops it too.
    let head = ledger.party_record(ids::ROAD).unwrap().head;
    let revoke = Kind::KeyRevoked(pb::KeyRevoked {
        registry_id: ids::ROAD.into(),
        key_id: crate::signing::key_id(&new.verifying_key()).0.to_vec(),
        reason: "device lost".into(),
    });
    ledger
        .submit(
            &registry_event(&net, ids::ROAD, head, revoke.clone(), &[&net.authority]),
            T0,
        )
        .unwrap();
    let head = ledger.party_record(ids::ROAD).unwrap().head;
    assert_eq!(
        code(ledger.submit(
            &registry_event(&net, ids::ROAD, head, revoke, &[&net.authority]),
            T0
        )),
        "registry.key_not_active"
    );
    let accepted_at = ledger.size();
    let record = ledger.party_record(ids::ROAD).unwrap();
    assert_eq!(
        crate::registry::PartyRecord::from_pb(&record.to_pb()).unwrap(),
        *record
    );
    let mut corrupt = record.to_pb();
    corrupt.keys[0].key_id[0] ^= 1;
    assert!(crate::registry::PartyRecord::from_pb(&corrupt).is_err());
    assert!(record.keys.iter().all(|k| !k.active_at(accepted_at)));
}

#[test]
fn status_kinds_hold_one_status_of_every_kind() {
    // Exhaustive: a new status fails to compile here until it is placed, and in `KINDS`.
    let place = |s: Status| match s {
        Status::Created => 0,
        Status::InTransit { .. } => 1,
        Status::Delivered => 2,
        Status::Received => 3,
        Status::Rejected => 4,
        Status::Returned => 5,
        Status::Treated => 6,
        Status::Cancelled => 7,
    };
    let places: Vec<usize> = Status::KINDS.iter().map(|s| place(*s)).collect();
    assert_eq!(places, (0..8).collect::<Vec<_>>());
}

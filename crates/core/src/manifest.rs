//! Manifest validation: everything about a manifest that can be checked without the ledger.
//!
//! The same checks run on a client before it signs (so a preparer sees every problem at once)
//! and inside the state machine (so nothing malformed is ever committed). Codes are checked
//! against the format of their code system; membership in the official lists is a registry
//! concern left to the network's operators.

use std::collections::BTreeSet;

use crate::pb::{self, CodeSystem, ContainerType, HazardCharacteristic};
use crate::quantity::Measured;
use crate::tracking::{Tracking, validate_registry_id};

/// One problem found in a manifest: which field, and what is wrong with it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FieldProblem {
    /// Path of the field, e.g. `lines[2].quantity.amount`.
    pub field: String,
    /// What is wrong and what is expected.
    pub problem: String,
}

impl std::fmt::Display for FieldProblem {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}: {}", self.field, self.problem)
    }
}

/// Longest free-text field accepted (descriptions, instructions, comments).
pub const MAX_TEXT_LEN: usize = 4096;
/// Most waste lines on one manifest.
pub const MAX_LINES: usize = 200;
/// Most transporters on one manifest.
pub const MAX_TRANSPORTERS: usize = 20;

/// Collects problems so that a caller sees all of them, not just the first.
#[derive(Default)]
struct Problems(Vec<FieldProblem>);

impl Problems {
    fn add(&mut self, field: impl Into<String>, problem: impl Into<String>) {
        self.0.push(FieldProblem {
            field: field.into(),
            problem: problem.into(),
        });
    }

    fn text(&mut self, field: &str, value: &str, required: bool) {
        if required && value.trim().is_empty() {
            self.add(field, "is required");
        }
        if value.len() > MAX_TEXT_LEN {
            self.add(field, format!("is longer than {MAX_TEXT_LEN} bytes"));
        }
    }
}

/// Validates a whole manifest. Returns every problem found; an empty list means valid.
pub fn validate_manifest(m: &pb::Manifest) -> Vec<FieldProblem> {
    let mut p = Problems::default();
    match &m.tracking_number {
        None => p.add("tracking_number", "is required"),
        Some(t) => {
            if let Err(e) = Tracking::from_pb(t) {
                p.add("tracking_number", e.to_string());
            }
        }
    }
    party(&mut p, "generator", m.generator.as_ref(), true);
    if m.transporters.is_empty() {
        p.add("transporters", "at least one transporter is required");
    }
    if m.transporters.len() > MAX_TRANSPORTERS {
        p.add(
            "transporters",
            format!("at most {MAX_TRANSPORTERS} transporters"),
        );
    }
    for (i, leg) in m.transporters.iter().enumerate() {
        party(
            &mut p,
            &format!("transporters[{i}].transporter"),
            leg.transporter.as_ref(),
            true,
        );
        if pb::TransportMode::try_from(leg.mode).unwrap_or_default()
            == pb::TransportMode::Unspecified
        {
            p.add(
                format!("transporters[{i}].mode"),
                "is required (ROAD, RAIL, WATER, AIR, PIPELINE)",
            );
        }
        if i > 0
            && party_id(m.transporters[i - 1].transporter.as_ref())
                == party_id(leg.transporter.as_ref())
        {
            p.add(
                format!("transporters[{i}]"),
                "the same transporter cannot follow itself; list each handoff between different carriers",
            );
        }
    }
    party(
        &mut p,
        "designated_facility",
        m.designated_facility.as_ref(),
        true,
    );
    party(
        &mut p,
        "alternate_facility",
        m.alternate_facility.as_ref(),
        false,
    );
    party(&mut p, "broker", m.broker.as_ref(), false);
    let generator = party_id(m.generator.as_ref());
    let facility = party_id(m.designated_facility.as_ref());
    if facility.is_some() && facility == generator {
        p.add("designated_facility", "must differ from the generator");
    }
    let alternate = party_id(m.alternate_facility.as_ref());
    if alternate.is_some() && alternate == facility {
        p.add(
            "alternate_facility",
            "must differ from the designated facility",
        );
    }

    if m.lines.is_empty() {
        p.add("lines", "at least one waste line is required");
    }
    if m.lines.len() > MAX_LINES {
        p.add("lines", format!("at most {MAX_LINES} waste lines"));
    }
    for (i, line) in m.lines.iter().enumerate() {
        let expected = i as u32 + 1;
        if line.line_number != expected {
            p.add(
                format!("lines[{i}].line_number"),
                format!(
                    "lines must be numbered 1, 2, 3, ... in order; expected {expected}, got {}",
                    line.line_number
                ),
            );
        }
        waste_line(&mut p, &format!("lines[{i}]"), line);
    }
    p.text("handling_instructions", &m.handling_instructions, false);
    p.text("emergency_response_info", &m.emergency_response_info, false);
    p.text("comments", &m.comments, false);
    match &m.emergency_contact {
        Some(c) if !c.phone.trim().is_empty() => {}
        _ => p.add(
            "emergency_contact.phone",
            "a 24-hour emergency phone is required",
        ),
    }
    for (i, e) in m.evidence.iter().enumerate() {
        evidence(&mut p, &format!("evidence[{i}]"), e);
    }
    if let Some(lineage) = &m.lineage {
        if pb::LineageKind::try_from(lineage.kind).unwrap_or_default()
            == pb::LineageKind::Unspecified
        {
            p.add("lineage.kind", "is required when lineage is given");
        }
        if lineage.parents.is_empty() {
            p.add("lineage.parents", "name at least one parent manifest");
        }
        for (i, parent) in lineage.parents.iter().enumerate() {
            if let Err(e) = Tracking::from_pb(parent) {
                p.add(format!("lineage.parents[{i}]"), e.to_string());
            }
        }
    }
    p.0
}

/// Validates one waste line (also used for corrections that replace a line).
pub fn validate_waste_line(field: &str, line: &pb::WasteLine) -> Vec<FieldProblem> {
    let mut p = Problems::default();
    waste_line(&mut p, field, line);
    p.0
}

fn waste_line(p: &mut Problems, field: &str, line: &pb::WasteLine) {
    p.text(&format!("{field}.description"), &line.description, true);
    if line.codes.is_empty() {
        p.add(
            format!("{field}.codes"),
            "at least one classification code is required",
        );
    }
    let mut seen = BTreeSet::new();
    for (j, code) in line.codes.iter().enumerate() {
        let f = format!("{field}.codes[{j}]");
        match check_code(code) {
            Ok(()) => {
                if !seen.insert((code.system, code.code.clone(), code.region.clone())) {
                    p.add(f, "duplicate code");
                }
            }
            Err(problem) => p.add(f, problem),
        }
    }
    for (j, hazard) in line.hazards.iter().enumerate() {
        if HazardCharacteristic::try_from(*hazard).unwrap_or_default()
            == HazardCharacteristic::Unspecified
        {
            p.add(
                format!("{field}.hazards[{j}]"),
                "unknown hazard characteristic",
            );
        }
    }
    match &line.containers {
        None => p.add(
            format!("{field}.containers"),
            "container count and type are required",
        ),
        Some(c) => {
            if c.count == 0 {
                p.add(format!("{field}.containers.count"), "must be at least 1");
            }
            if ContainerType::try_from(c.r#type).unwrap_or_default() == ContainerType::Unspecified {
                p.add(
                    format!("{field}.containers.type"),
                    "is required (an EPA container code such as DM or TT)",
                );
            }
        }
    }
    quantity(
        p,
        &format!("{field}.quantity"),
        line.quantity.as_ref(),
        true,
    );
    if let Some(dg) = &line.dangerous_goods {
        let id = dg.id_number.as_bytes();
        let ok = id.len() == 6
            && (id.starts_with(b"UN") || id.starts_with(b"NA"))
            && id[2..].iter().all(u8::is_ascii_digit);
        if !ok {
            p.add(
                format!("{field}.dangerous_goods.id_number"),
                "must be UN or NA followed by 4 digits, e.g. UN1263",
            );
        }
        p.text(
            &format!("{field}.dangerous_goods.proper_shipping_name"),
            &dg.proper_shipping_name,
            true,
        );
        if !matches!(dg.packing_group.as_str(), "" | "I" | "II" | "III") {
            p.add(
                format!("{field}.dangerous_goods.packing_group"),
                "must be I, II, III or empty",
            );
        }
    }
    if let Some(method) = &line.management_method
        && let Err(problem) = check_method(method)
    {
        p.add(format!("{field}.management_method"), problem);
    }
}

/// Checks a classification code against its code system's format.
pub fn check_code(code: &pb::WasteCode) -> Result<(), String> {
    let c = code.code.as_str();
    let b = c.as_bytes();
    let digits = |s: &[u8]| s.iter().all(u8::is_ascii_digit);
    match CodeSystem::try_from(code.system).unwrap_or_default() {
        CodeSystem::Unspecified => Err("code system is required".into()),
        CodeSystem::EpaFederal => {
            let ok =
                b.len() == 4 && matches!(b[0], b'D' | b'F' | b'K' | b'P' | b'U') && digits(&b[1..]);
            if ok {
                Ok(())
            } else {
                Err(format!(
                    "{c:?} is not an EPA federal code (D001, F005, K048, P001, U002)"
                ))
            }
        }
        CodeSystem::UsState => {
            if code.region.trim().is_empty() {
                Err("state codes need the state in `region`".into())
            } else if (1..=16).contains(&b.len()) && b.iter().all(u8::is_ascii_alphanumeric) {
                Ok(())
            } else {
                Err(format!(
                    "{c:?} is not a state waste code (1-16 letters and digits)"
                ))
            }
        }
        CodeSystem::CnHwCategory => {
            let ok = b.len() == 4
                && b.starts_with(b"HW")
                && digits(&b[2..])
                && (1..=50).contains(&c[2..].parse::<u32>().unwrap_or(0));
            if ok {
                Ok(())
            } else {
                Err(format!(
                    "{c:?} is not a China hazardous-waste category (HW01 to HW50)"
                ))
            }
        }
        CodeSystem::CnWasteCode => {
            let ok = b.len() == 10
                && b[3] == b'-'
                && b[7] == b'-'
                && digits(&b[..3])
                && digits(&b[4..7])
                && digits(&b[8..])
                && (1..=50).contains(&c[8..].parse::<u32>().unwrap_or(0));
            if ok {
                Ok(())
            } else {
                Err(format!(
                    "{c:?} is not a China waste code (III-SSS-CC, e.g. 900-249-08)"
                ))
            }
        }
        CodeSystem::Ewc => {
            let compact: String = c
                .trim_end_matches('*')
                .chars()
                .filter(|ch| *ch != ' ')
                .collect();
            let ok = compact.len() == 6 && digits(compact.as_bytes());
            if ok {
                Ok(())
            } else {
                Err(format!(
                    "{c:?} is not an EWC code (6 digits, e.g. \"16 05 06*\")"
                ))
            }
        }
        CodeSystem::EuHp => {
            let ok = b.len() >= 3
                && b.starts_with(b"HP")
                && (1..=15).contains(&c[2..].parse::<u32>().unwrap_or(0));
            if ok {
                Ok(())
            } else {
                Err(format!(
                    "{c:?} is not an EU hazardous property (HP1 to HP15)"
                ))
            }
        }
    }
}

/// Checks a management method code against its system's format.
pub fn check_method(method: &pb::ManagementMethod) -> Result<(), String> {
    let c = method.code.as_str();
    let b = c.as_bytes();
    match pb::ManagementSystem::try_from(method.system).unwrap_or_default() {
        pb::ManagementSystem::Unspecified => {
            Err("management system is required (EPA_H_CODE, EU_RD_CODE, CN_METHOD)".into())
        }
        pb::ManagementSystem::EpaHCode => {
            if b.len() == 4 && b[0] == b'H' && b[1..].iter().all(u8::is_ascii_digit) {
                Ok(())
            } else {
                Err(format!("{c:?} is not an EPA management method (H040)"))
            }
        }
        pb::ManagementSystem::EuRdCode => {
            let n = c.get(1..).and_then(|s| s.parse::<u32>().ok()).unwrap_or(0);
            let ok = (b.first() == Some(&b'R') && (1..=13).contains(&n))
                || (b.first() == Some(&b'D') && (1..=15).contains(&n));
            if ok {
                Ok(())
            } else {
                Err(format!(
                    "{c:?} is not an EU recovery/disposal code (R1-R13, D1-D15)"
                ))
            }
        }
        pb::ManagementSystem::CnMethod => {
            if (1..=16).contains(&b.len()) && b.iter().all(u8::is_ascii_alphanumeric) {
                Ok(())
            } else {
                Err(format!("{c:?} is not a China treatment method code"))
            }
        }
    }
}

fn party(p: &mut Problems, field: &str, party: Option<&pb::ManifestParty>, required: bool) {
    match party {
        None if required => p.add(field, "is required"),
        None => {}
        Some(mp) => {
            if let Err(e) = validate_registry_id(&mp.registry_id) {
                p.add(format!("{field}.registry_id"), e.to_string());
            }
            p.text(&format!("{field}.name"), &mp.name, true);
        }
    }
}

fn party_id(party: Option<&pb::ManifestParty>) -> Option<&str> {
    party.map(|p| p.registry_id.as_str())
}

fn quantity(p: &mut Problems, field: &str, q: Option<&pb::Quantity>, positive: bool) {
    match q {
        None => p.add(field, "is required"),
        Some(q) => {
            if let Err(e) = Measured::from_pb(q, positive) {
                p.add(field, e.to_string());
            }
        }
    }
}

/// Validates an evidence reference: a kind and a 32-byte blake3 hash.
pub fn check_evidence(e: &pb::EvidenceRef) -> Result<(), String> {
    if pb::EvidenceKind::try_from(e.kind).unwrap_or_default() == pb::EvidenceKind::Unspecified {
        return Err("evidence kind is required".into());
    }
    if e.blake3.len() != 32 {
        return Err(format!(
            "evidence hash must be 32 bytes (blake3), got {}",
            e.blake3.len()
        ));
    }
    Ok(())
}

fn evidence(p: &mut Problems, field: &str, e: &pb::EvidenceRef) {
    if let Err(problem) = check_evidence(e) {
        p.add(field, problem);
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    pub(crate) fn manifest_party(id: &str) -> pb::ManifestParty {
        pb::ManifestParty {
            registry_id: id.into(),
            name: format!("{id} Ltd"),
            ..Default::default()
        }
    }

    pub(crate) fn line(
        n: u32,
        amount: &str,
        unit: pb::QuantityUnit,
        container: ContainerType,
        count: u32,
    ) -> pb::WasteLine {
        pb::WasteLine {
            line_number: n,
            description: "Spent mineral oil".into(),
            codes: vec![
                pb::WasteCode {
                    system: CodeSystem::CnHwCategory as i32,
                    code: "HW08".into(),
                    ..Default::default()
                },
                pb::WasteCode {
                    system: CodeSystem::CnWasteCode as i32,
                    code: "900-249-08".into(),
                    ..Default::default()
                },
            ],
            hazards: vec![
                HazardCharacteristic::Toxic as i32,
                HazardCharacteristic::Ignitable as i32,
            ],
            containers: Some(pb::Containers {
                count,
                r#type: container as i32,
                container_ids: vec![],
            }),
            quantity: Some(pb::Quantity {
                amount: amount.into(),
                unit: unit as i32,
                estimated: false,
            }),
            hazardous: true,
            ..Default::default()
        }
    }

    pub(crate) fn sample() -> pb::Manifest {
        pb::Manifest {
            tracking_number: Some(pb::TrackingNumber {
                scheme: pb::TrackingScheme::Cn as i32,
                number: "20261502000001".into(),
            }),
            generator: Some(manifest_party("GEN")),
            transporters: vec![pb::TransporterLeg {
                transporter: Some(manifest_party("T1")),
                mode: pb::TransportMode::Road as i32,
                vehicle_id: "蒙B12345".into(),
            }],
            designated_facility: Some(manifest_party("FAC")),
            lines: vec![line(
                1,
                "1000",
                pb::QuantityUnit::Kilograms,
                ContainerType::Dm,
                5,
            )],
            emergency_contact: Some(pb::Contact {
                name: "Duty officer".into(),
                phone: "+86 472 000 0000".into(),
                ..Default::default()
            }),
            ..Default::default()
        }
    }

    #[test]
    fn sample_is_valid() {
        assert_eq!(validate_manifest(&sample()), vec![]);
    }

    #[test]
    fn reports_every_problem_with_its_field() {
        let mut m = sample();
        m.transporters.clear();
        m.lines[0].line_number = 2;
        m.lines[0].quantity = Some(pb::Quantity {
            amount: "-3".into(),
            unit: 3,
            estimated: false,
        });
        m.lines[0].codes[0].code = "HW99".into();
        m.emergency_contact = None;
        let fields: Vec<String> = validate_manifest(&m).into_iter().map(|p| p.field).collect();
        assert_eq!(
            fields,
            vec![
                "transporters",
                "lines[0].line_number",
                "lines[0].codes[0]",
                "lines[0].quantity",
                "emergency_contact.phone"
            ]
        );
    }

    #[test]
    fn code_formats() {
        let code = |system: CodeSystem, code: &str| pb::WasteCode {
            system: system as i32,
            code: code.into(),
            region: "TX".into(),
            description: String::new(),
        };
        for (s, c) in [
            (CodeSystem::EpaFederal, "D001"),
            (CodeSystem::CnHwCategory, "HW50"),
            (CodeSystem::CnWasteCode, "900-249-08"),
            (CodeSystem::Ewc, "16 05 06*"),
            (CodeSystem::EuHp, "HP14"),
            (CodeSystem::UsState, "TX123"),
        ] {
            assert_eq!(check_code(&code(s, c)), Ok(()), "{c}");
        }
        for (s, c) in [
            (CodeSystem::EpaFederal, "X001"),
            (CodeSystem::CnHwCategory, "HW51"),
            (CodeSystem::CnWasteCode, "900-249-51"),
            (CodeSystem::Ewc, "16 05"),
            (CodeSystem::EuHp, "HP16"),
            (CodeSystem::Unspecified, "D001"),
        ] {
            assert!(check_code(&code(s, c)).is_err(), "{c}");
        }
    }
}

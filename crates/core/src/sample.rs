//! A sample network: deterministic keys, a genesis, registered parties and realistic manifests.
//!
//! Used by tests, benchmarks, the test vectors and the demo, so that all of them exercise the
//! same realistic data. Keys are derived from fixed seeds: never use them outside a sandbox.

use std::collections::BTreeMap;

use prost::Message;

use crate::checkpoint::{Checkpoint, SignedCheckpoint, cosign};
use crate::compose::{manifest_body, party_body, sign_event};
use crate::envelope::event_hash;
use crate::genesis::{Genesis, GenesisError};
use crate::hash::{Digest, Purpose};
use crate::ledger::Rejection;
use crate::memory::{MemoryLedger, Receipt};
use crate::pb::{self, Role, event_body::Kind};
use crate::signing::SigningKey;
use crate::tracking::Tracking;

/// 2026-06-01T00:00:00Z in ms: the sample network's "now".
pub const T0: i64 = 1_780_272_000_000;
/// One hour in ms.
pub const HOUR: i64 = 3_600_000;

/// Registry ids of the sample parties.
pub mod ids {
    /// Generator: a steel works.
    pub const GENERATOR: &str = "GEN-BT-STEEL";
    /// First transporter (road).
    pub const ROAD: &str = "TR-ROAD-01";
    /// Second transporter (rail).
    pub const RAIL: &str = "TR-RAIL-02";
    /// Designated facility: an incinerator.
    pub const FACILITY: &str = "FAC-INCIN-01";
    /// Alternate facility: a recycler.
    pub const ALTERNATE: &str = "FAC-ALT-02";
    /// Regulator.
    pub const REGULATOR: &str = "REG-BT-EEB";
}

/// Deterministic signing key from a label.
pub fn key_from_label(label: &str) -> SigningKey {
    SigningKey::from_bytes(&Purpose::KeyId.hash(label.as_bytes()).0)
}

/// The sample network's genesis, keys and parties.
pub struct SampleNetwork {
    /// Exact genesis bytes (the ledger id is their hash).
    pub genesis_bytes: Vec<u8>,
    /// Parsed genesis.
    pub genesis: Genesis,
    /// The authority that registers parties.
    pub authority: SigningKey,
    /// Node witness names and keys.
    pub witnesses: Vec<(String, SigningKey)>,
    /// Party keys by registry id.
    pub party_keys: BTreeMap<String, SigningKey>,
}

impl SampleNetwork {
    /// Builds the network with three node witnesses (one per party group) and a
    /// two-of-three checkpoint policy.
    pub fn new() -> Result<SampleNetwork, GenesisError> {
        let authority = key_from_label("authority baotou-eeb");
        let witnesses: Vec<(String, SigningKey)> =
            ["node1.generator", "node2.transporter", "node3.facility"]
                .iter()
                .map(|n| ((*n).to_owned(), key_from_label(n)))
                .collect();
        let message = pb::Genesis {
            ledger_name: "wasteledger.example/baotou-pilot".into(),
            authorities: vec![pb::AuthorityKey {
                name: "baotou-eeb".into(),
                ed25519: authority.verifying_key().to_bytes().to_vec(),
            }],
            nodes: witnesses
                .iter()
                .enumerate()
                .map(|(i, (name, key))| pb::NodeWitness {
                    node_id: i as u64 + 1,
                    name: name.clone(),
                    group: name.split('.').nth(1).unwrap_or("node").to_owned(),
                    ed25519: key.verifying_key().to_bytes().to_vec(),
                })
                .collect(),
            checkpoint_policy: Some(pb::TrustPolicy {
                min_total: 2,
                groups: vec![],
            }),
            created_at: T0 - 24 * HOUR,
            max_clock_skew_ms: 0,
        };
        let genesis_bytes = message.encode_to_vec();
        let genesis = Genesis::from_bytes(&genesis_bytes)?;
        let party_keys = [
            ids::GENERATOR,
            ids::ROAD,
            ids::RAIL,
            ids::FACILITY,
            ids::ALTERNATE,
            ids::REGULATOR,
        ]
        .iter()
        .map(|id| ((*id).to_owned(), key_from_label(id)))
        .collect();
        Ok(SampleNetwork {
            genesis_bytes,
            genesis,
            authority,
            witnesses,
            party_keys,
        })
    }

    /// The ledger id.
    pub fn ledger_id(&self) -> Digest {
        self.genesis.ledger_id
    }

    /// A party's key; the sample parties always exist.
    pub fn key(&self, registry_id: &str) -> Option<&SigningKey> {
        self.party_keys.get(registry_id)
    }

    /// The party record registered for a sample id.
    pub fn party(&self, registry_id: &str) -> pb::Party {
        let (roles, permit_role) = match registry_id {
            ids::GENERATOR => (vec![Role::Generator], None),
            ids::ROAD | ids::RAIL => (vec![Role::Transporter], Some(Role::Transporter)),
            ids::FACILITY | ids::ALTERNATE => {
                (vec![Role::Facility, Role::Generator], Some(Role::Facility))
            }
            _ => (vec![Role::Regulator], None),
        };
        pb::Party {
            registry_id: registry_id.to_owned(),
            legal_name: format!("{registry_id} Co., Ltd."),
            roles: roles.into_iter().map(|r| r as i32).collect(),
            mailing_address: None,
            site_address: Some(pb::Address {
                city: "Baotou".into(),
                region: "Inner Mongolia".into(),
                country: "CN".into(),
                division_code: "150200".into(),
                ..Default::default()
            }),
            contact: Some(pb::Contact {
                name: "Site manager".into(),
                phone: "+86 472 555 0100".into(),
                ..Default::default()
            }),
            emergency_phone: "+86 472 555 0199".into(),
            permits: permit_role
                .map(|role| pb::Permit {
                    number: format!("NMHW-{registry_id}"),
                    issuer: "Inner Mongolia EEB".into(),
                    role: role as i32,
                    valid_from: T0 - 365 * 24 * HOUR,
                    valid_until: T0 + 365 * 24 * HOUR,
                    ..Default::default()
                })
                .into_iter()
                .collect(),
            jurisdiction: "CN-150200".into(),
        }
    }

    /// PartyRegistered events for every sample party, signed by the authority.
    pub fn registrations(&self) -> Vec<pb::SignedEvent> {
        self.party_keys
            .iter()
            .map(|(id, key)| {
                let kind = Kind::PartyRegistered(pb::PartyRegistered {
                    party: Some(self.party(id)),
                    key: Some(pb::PublicKey {
                        ed25519: key.verifying_key().to_bytes().to_vec(),
                    }),
                });
                sign_event(
                    &self.ledger_id(),
                    &party_body(id, Digest::ZERO, T0 - HOUR, kind),
                    &[&self.authority],
                )
            })
            .collect()
    }

    /// An in-memory ledger with every sample party registered.
    pub fn ledger(&self) -> Result<MemoryLedger, Rejection> {
        let mut ledger = MemoryLedger::new(self.genesis.clone());
        for event in self.registrations() {
            ledger.submit(&event, T0 - HOUR)?;
        }
        Ok(ledger)
    }

    /// Cosigns a checkpoint with the first `signers` witnesses.
    pub fn cosign(&self, checkpoint: Checkpoint, signers: usize) -> SignedCheckpoint {
        let signatures = self
            .witnesses
            .iter()
            .take(signers)
            .map(|(name, key)| cosign(key, name, &self.ledger_id(), &checkpoint))
            .collect();
        SignedCheckpoint {
            checkpoint,
            signatures,
        }
    }

    /// A realistic manifest: spent oil and contaminated packaging from the steel works, by road
    /// then rail to the incinerator, with the recycler as alternate.
    pub fn manifest(&self, number: &str, transporters: &[&str]) -> pb::Manifest {
        let party = |id: &str| pb::ManifestParty {
            registry_id: id.to_owned(),
            name: format!("{id} Co., Ltd."),
            permit_number: format!("NMHW-{id}"),
            ..Default::default()
        };
        let code = |system: pb::CodeSystem, code: &str| pb::WasteCode {
            system: system as i32,
            code: code.to_owned(),
            ..Default::default()
        };
        pb::Manifest {
            tracking_number: Some(pb::TrackingNumber {
                scheme: pb::TrackingScheme::Cn as i32,
                number: number.to_owned(),
            }),
            generator: Some(party(ids::GENERATOR)),
            transporters: transporters
                .iter()
                .enumerate()
                .map(|(i, id)| pb::TransporterLeg {
                    transporter: Some(party(id)),
                    mode: if i == 0 {
                        pb::TransportMode::Road as i32
                    } else {
                        pb::TransportMode::Rail as i32
                    },
                    vehicle_id: format!("VEH-{i}"),
                })
                .collect(),
            designated_facility: Some(party(ids::FACILITY)),
            alternate_facility: Some(party(ids::ALTERNATE)),
            broker: None,
            lines: vec![
                pb::WasteLine {
                    line_number: 1,
                    description: "Spent hydraulic and lubricating oil".into(),
                    codes: vec![
                        code(pb::CodeSystem::CnHwCategory, "HW08"),
                        code(pb::CodeSystem::CnWasteCode, "900-249-08"),
                    ],
                    hazards: vec![
                        pb::HazardCharacteristic::Toxic as i32,
                        pb::HazardCharacteristic::Ignitable as i32,
                    ],
                    dangerous_goods: Some(pb::DangerousGoods {
                        id_number: "UN1270".into(),
                        proper_shipping_name: "Petroleum oil".into(),
                        hazard_class: "3".into(),
                        packing_group: "III".into(),
                        ..Default::default()
                    }),
                    physical_form: pb::PhysicalForm::Liquid as i32,
                    containers: Some(pb::Containers {
                        count: 1,
                        r#type: pb::ContainerType::Tt as i32,
                        container_ids: vec![],
                    }),
                    quantity: Some(pb::Quantity {
                        amount: "8.5".into(),
                        unit: pb::QuantityUnit::MetricTonnes as i32,
                        estimated: false,
                    }),
                    management_method: Some(pb::ManagementMethod {
                        system: pb::ManagementSystem::EpaHCode as i32,
                        code: "H040".into(),
                        description: "Incineration".into(),
                    }),
                    hazardous: true,
                    ..Default::default()
                },
                pb::WasteLine {
                    line_number: 2,
                    description: "Oil-contaminated packaging and rags".into(),
                    codes: vec![
                        code(pb::CodeSystem::CnHwCategory, "HW49"),
                        code(pb::CodeSystem::CnWasteCode, "900-041-49"),
                    ],
                    hazards: vec![pb::HazardCharacteristic::Toxic as i32],
                    physical_form: pb::PhysicalForm::Solid as i32,
                    containers: Some(pb::Containers {
                        count: 12,
                        r#type: pb::ContainerType::Dm as i32,
                        container_ids: vec![],
                    }),
                    quantity: Some(pb::Quantity {
                        amount: "1800".into(),
                        unit: pb::QuantityUnit::Kilograms as i32,
                        estimated: true,
                    }),
                    hazardous: true,
                    ..Default::default()
                },
            ],
            handling_instructions: "Keep away from ignition sources; drums upright.".into(),
            emergency_contact: Some(pb::Contact {
                name: "Steel works duty officer".into(),
                phone: "+86 472 555 0199".into(),
                ..Default::default()
            }),
            jurisdiction: "CN-150200".into(),
            ..Default::default()
        }
    }
}

/// Drives one manifest through its lifecycle, tracking its chain head and a clock.
pub struct ManifestFlow<'a> {
    net: &'a SampleNetwork,
    /// The manifest's tracking number.
    pub tracking: Tracking,
    /// Current chain head (zero before creation).
    pub head: Digest,
    /// The time the next event will state.
    pub now: i64,
}

impl<'a> ManifestFlow<'a> {
    /// Starts a flow for a CN tracking number such as `20261502000001`.
    pub fn new(
        net: &'a SampleNetwork,
        number: &str,
        start: i64,
    ) -> Result<ManifestFlow<'a>, crate::tracking::TrackingError> {
        Ok(ManifestFlow {
            net,
            tracking: Tracking::new(pb::TrackingScheme::Cn, number)?,
            head: Digest::ZERO,
            now: start,
        })
    }

    /// An event on the current head at the current time, signed by `signers`; the flow does
    /// not advance (use [`ManifestFlow::accept`] or [`ManifestFlow::submit`]).
    pub fn event(&self, kind: Kind, signers: &[&str]) -> pb::SignedEvent {
        let keys: Vec<&SigningKey> = signers.iter().filter_map(|id| self.net.key(id)).collect();
        sign_event(
            &self.net.ledger_id(),
            &manifest_body(&self.tracking, self.head, self.now, kind),
            &keys,
        )
    }

    /// Advances the head to `event` and the clock by an hour.
    pub fn accept(&mut self, event: &pb::SignedEvent) {
        self.head = event_hash(&self.net.ledger_id(), &event.body);
        self.now += HOUR;
    }

    /// Signs, submits to `ledger` at ledger time `now`, and advances on success.
    pub fn submit(
        &mut self,
        ledger: &mut MemoryLedger,
        kind: Kind,
        signers: &[&str],
    ) -> Result<Receipt, Rejection> {
        let event = self.event(kind, signers);
        let receipt = ledger.submit(&event, self.now)?;
        self.accept(&event);
        Ok(receipt)
    }

    /// The whole lifecycle of manifest `number` by road — creation (generator), pickup
    /// (generator + road carrier), delivery (carrier + facility), receipt and treatment
    /// (facility) — signed in order, each event stated an hour after the previous from
    /// `start`; treatment is certified complete half an hour before it is stated.
    pub fn road_lifecycle(
        net: &'a SampleNetwork,
        number: &str,
        start: i64,
    ) -> Result<Vec<pb::SignedEvent>, crate::tracking::TrackingError> {
        let mut flow = ManifestFlow::new(net, number, start)?;
        let steps: [(Kind, &[&str]); 5] = [
            (
                Kind::ManifestCreated(pb::ManifestCreated {
                    manifest: Some(net.manifest(number, &[ids::ROAD])),
                }),
                &[ids::GENERATOR],
            ),
            (
                ManifestFlow::handoff(ids::GENERATOR, ids::ROAD),
                &[ids::GENERATOR, ids::ROAD],
            ),
            (
                ManifestFlow::handoff(ids::ROAD, ids::FACILITY),
                &[ids::ROAD, ids::FACILITY],
            ),
            (ManifestFlow::received("8.5", "1800", 12), &[ids::FACILITY]),
            (
                ManifestFlow::treated(&[1, 2], start + 3 * HOUR + HOUR / 2),
                &[ids::FACILITY],
            ),
        ];
        Ok(steps
            .into_iter()
            .map(|(kind, signers)| {
                let event = flow.event(kind, signers);
                flow.accept(&event);
                event
            })
            .collect())
    }

    /// A handoff event body.
    pub fn handoff(from: &str, to: &str) -> Kind {
        Kind::CustodyHandoff(pb::CustodyHandoff {
            from_party: from.to_owned(),
            to_party: to.to_owned(),
            location_description: format!("{from} yard"),
            ..Default::default()
        })
    }

    /// A receipt of both sample lines with the given quantities (tonnes for line 1, kg and drum
    /// count for line 2).
    pub fn received(line1_tonnes: &str, line2_kg: &str, line2_drums: u32) -> Kind {
        Kind::Received(pb::Received {
            lines: vec![
                pb::ReceivedLine {
                    line_number: 1,
                    quantity: Some(pb::Quantity {
                        amount: line1_tonnes.into(),
                        unit: pb::QuantityUnit::MetricTonnes as i32,
                        estimated: false,
                    }),
                    container_count: 1,
                    ..Default::default()
                },
                pb::ReceivedLine {
                    line_number: 2,
                    quantity: Some(pb::Quantity {
                        amount: line2_kg.into(),
                        unit: pb::QuantityUnit::Kilograms as i32,
                        estimated: false,
                    }),
                    container_count: line2_drums,
                    ..Default::default()
                },
            ],
            evidence: vec![],
        })
    }

    /// Treatment of both sample lines by incineration, certified `completed_at`.
    pub fn treated(lines: &[u32], completed_at: i64) -> Kind {
        Kind::Treated(pb::Treated {
            lines: lines
                .iter()
                .map(|n| pb::TreatedLine {
                    line_number: *n,
                    method: Some(pb::ManagementMethod {
                        system: pb::ManagementSystem::EpaHCode as i32,
                        code: "H040".into(),
                        description: "Incineration".into(),
                    }),
                    quantity: Some(pb::Quantity {
                        amount: "1".into(),
                        unit: pb::QuantityUnit::MetricTonnes as i32,
                        estimated: false,
                    }),
                })
                .collect(),
            certificate: Some(pb::EvidenceRef {
                kind: pb::EvidenceKind::Certificate as i32,
                blake3: blake3::hash(b"certificate").as_bytes().to_vec(),
                media_type: "application/pdf".into(),
                ..Default::default()
            }),
            completed_at,
        })
    }
}

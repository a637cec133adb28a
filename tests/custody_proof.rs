//! Property tests of custody-proof verification: any single-byte change to a valid bundle, and
//! dropping, reordering or duplicating an event, makes verification fail.

use proptest::prelude::*;
use prost::Message;
use wasteledger_core::custody::Status;
use wasteledger_core::proof::{verify_custody_proof, verify_custody_proof_bytes};
use wasteledger_tests::{SampleProof, sample_proof};

fn fixture() -> &'static SampleProof {
    static FIXTURE: std::sync::OnceLock<SampleProof> = std::sync::OnceLock::new();
    FIXTURE.get_or_init(sample_proof)
}

#[test]
fn valid_bundle_verifies_with_full_timeline() {
    let f = fixture();
    let verified = verify_custody_proof(&f.bundle, &f.net.genesis).expect("valid proof");
    assert_eq!(verified.state.status, Status::Treated);
    let kinds: Vec<&str> = verified.timeline.iter().map(|e| e.kind).collect();
    assert_eq!(
        kinds,
        [
            "ManifestCreated",
            "CustodyHandoff",
            "TransitCheckpoint",
            "CustodyHandoff",
            "CustodyHandoff",
            "Received",
            "Correction",
            "CorrectionDecision",
            "CorrectionDecision",
            "CorrectionDecision",
            "Treated"
        ]
    );
    assert_eq!(
        verified.timeline[1].signers,
        vec!["GEN-BT-STEEL".to_owned(), "TR-ROAD-01".to_owned()]
    );
    assert!(
        !verified.state.has_significant_discrepancy(),
        "the approved correction resolved it"
    );
    assert_eq!(verified.cosigners.signers.len(), 2);
}

#[test]
fn proof_from_another_genesis_fails() {
    let f = fixture();
    let mut other = f.net.genesis_bytes.clone();
    other.push(0); // an unknown trailing field changes the hash, so the ledger id
    if let Ok(g) = wasteledger_core::genesis::Genesis::from_bytes(&other) {
        assert_eq!(
            verify_custody_proof(&f.bundle, &g).unwrap_err().code(),
            "proof.ledger_mismatch"
        );
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 256, .. ProptestConfig::default() })]

    #[test]
    fn any_single_byte_change_fails(position in any::<prop::sample::Index>(), flip in 1u8..=255) {
        let f = fixture();
        let mut bytes = f.bundle.encode_to_vec();
        let i = position.index(bytes.len());
        bytes[i] ^= flip;
        prop_assert!(verify_custody_proof_bytes(&bytes, &f.net.genesis).is_err(), "byte {} ^ {:#x} still verified", i, flip);
    }

    #[test]
    fn dropping_reordering_or_duplicating_events_fails(a in any::<prop::sample::Index>(), b in any::<prop::sample::Index>(), op in 0u8..3) {
        let f = fixture();
        let mut bundle = f.bundle.clone();
        let n = bundle.events.len();
        let (i, j) = (a.index(n), b.index(n));
        match op {
            0 => { bundle.events.remove(i); }
            1 => { prop_assume!(i != j); bundle.events.swap(i, j); }
            _ => { let e = bundle.events[i].clone(); bundle.events.insert(j, e); }
        }
        prop_assert!(verify_custody_proof(&bundle, &f.net.genesis).is_err());
    }
}

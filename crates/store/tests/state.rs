//! The sled ledger state agrees with the in-memory reference ledger on every root and proof,
//! survives reopening, and its integrity check names the first damaged entry.

// Test code: a failed expectation is a test failure with a message.
#![allow(clippy::expect_used, clippy::unwrap_used)]

use std::path::Path;

use wasteledger_core::ledger::{LedgerView, Rejection};
use wasteledger_core::memory::MemoryLedger;
use wasteledger_core::pb::{self, event_body::Kind};
use wasteledger_core::proof::{build_custody_proof, verify_custody_proof};
use wasteledger_core::sample::{HOUR, ManifestFlow, SampleNetwork, T0, ids};
use wasteledger_store::DurableDb;
use wasteledger_store::state::{
    FIRST_STORED_LEVEL, HistoryChecked, IntegrityError, LedgerStore, OPEN_STATUSES,
};

/// Signed events of a full multimodal lifecycle plus a rejected duplicate, with ledger times.
fn events(net: &SampleNetwork) -> Vec<(pb::SignedEvent, i64)> {
    let mut out: Vec<(pb::SignedEvent, i64)> = net
        .registrations()
        .into_iter()
        .map(|e| (e, T0 - HOUR))
        .collect();
    let mut flow = ManifestFlow::new(net, "20261502000001", T0).unwrap();
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
        (
            ManifestFlow::handoff(ids::ROAD, ids::RAIL),
            vec![ids::ROAD, ids::RAIL],
        ),
        (
            ManifestFlow::handoff(ids::RAIL, ids::FACILITY),
            vec![ids::RAIL, ids::FACILITY],
        ),
        (
            ManifestFlow::received("8.5", "1700", 12),
            vec![ids::FACILITY],
        ),
    ];
    for (kind, signers) in steps {
        let e = flow.event(kind, &signers);
        out.push((e.clone(), flow.now));
        flow.accept(&e);
    }
    // A replay of the pickup: deterministically rejected, never a second entry.
    let replay = out[7].clone();
    out.push(replay);
    let done = flow.now - HOUR;
    out.push((
        flow.event(ManifestFlow::treated(&[1, 2], done), &[ids::FACILITY]),
        flow.now,
    ));
    out
}

/// The creation of a second manifest, `cn:20261502000002`, at ledger time `time`.
fn second_manifest_created(net: &SampleNetwork, time: i64) -> (pb::SignedEvent, i64) {
    let flow = ManifestFlow::new(net, "20261502000002", time).unwrap();
    let created = Kind::ManifestCreated(pb::ManifestCreated {
        manifest: Some(net.manifest("20261502000002", &[ids::ROAD])),
    });
    (flow.event(created, &[ids::GENERATOR]), time)
}

/// The database at `db_path` and the ledger store in it, its map file at `map_path`.
fn open_store(db_path: &Path, map_path: &Path, net: &SampleNetwork) -> (DurableDb, LedgerStore) {
    let db = DurableDb::open(db_path).unwrap();
    let store = LedgerStore::open(
        db.raw_tree("ledger").unwrap(),
        map_path,
        net.genesis.clone(),
    )
    .unwrap();
    (db, store)
}

fn temp_db() -> (tempfile::TempDir, DurableDb) {
    let dir = tempfile::tempdir().unwrap();
    let db = DurableDb::open(dir.path().join("db")).unwrap();
    (dir, db)
}

#[test]
fn sled_state_matches_the_reference_ledger() {
    let net = SampleNetwork::new().unwrap();
    let (dir, db) = temp_db();
    let map_path = dir.path().join("ledger.map");
    let mut store = LedgerStore::open(
        db.raw_tree("ledger").unwrap(),
        &map_path,
        net.genesis.clone(),
    )
    .unwrap();
    let mut reference = MemoryLedger::new(net.genesis.clone());
    for (i, (event, time)) in events(&net).iter().enumerate() {
        let meta_key = b"raft_last_applied";
        let rejection_key = format!("rejection/{i}");
        let got = store
            .apply_recording(
                event,
                *time,
                &[(meta_key.as_slice(), (i as u64).to_be_bytes().to_vec())],
                Some(rejection_key.as_bytes()),
            )
            .unwrap();
        let recorded = store
            .rejection(rejection_key.as_bytes())
            .unwrap()
            .map(|(code, _)| code);
        assert_eq!(
            recorded,
            got.as_ref().err().map(|r| r.code().to_owned()),
            "event {i}"
        );
        let want = reference.submit(event, *time);
        assert_eq!(got, want, "event {i}");
        assert_eq!(
            store.get_meta(meta_key).unwrap(),
            Some((i as u64).to_be_bytes().to_vec())
        );
    }
    store.commit().unwrap();
    assert_eq!(store.size(), reference.size());
    let tracking = wasteledger_core::tracking::Tracking::parse("cn:20261502000001").unwrap();
    assert_eq!(store.manifest(&tracking), reference.manifest(&tracking));
    assert_eq!(store.roots().0, reference.tree().root());
    assert_eq!(store.roots().1, reference.map().root());
    assert_eq!(store.chain_head(), reference.chain_head());
    // Roots at every earlier size (map nodes read at old versions after newer versions were
    // written), and the same custody proof as the reference's.
    assert_matches_reference(&store, &reference, &net);

    // A proof built from sled verifies offline.
    let note = net.cosign(reference.checkpoint(T0 + 10 * HOUR).unwrap(), 2);
    let from_sled = build_custody_proof(&store, &tracking, &note).unwrap();
    let verified = verify_custody_proof(&from_sled, &net.genesis).unwrap();
    assert_eq!(verified.timeline.len(), 6);

    // Secondary indexes, with a cursor past the end giving an empty page.
    assert_eq!(
        store.index_scan(b'p', ids::ROAD, None, 10).unwrap(),
        vec!["cn:20261502000001"]
    );
    assert_eq!(
        store.index_scan(b's', "treated", None, 10).unwrap(),
        vec!["cn:20261502000001"]
    );
    assert!(
        store
            .index_scan(b's', OPEN_STATUSES, None, 10)
            .unwrap()
            .is_empty(),
        "old status index removed"
    );
    assert_eq!(
        store.index_scan(b'c', "3:HW08", None, 10).unwrap(),
        vec!["cn:20261502000001"]
    );
    assert!(
        store
            .index_scan(b'p', ids::ROAD, Some("cn:20261502000001"), 10)
            .unwrap()
            .is_empty()
    );
}

#[test]
fn reopening_gives_the_same_ledger_and_integrity_check_finds_damage() {
    let net = SampleNetwork::new().unwrap();
    let dir = tempfile::tempdir().unwrap();
    let map_path = dir.path().join("ledger.map");
    let tracking = wasteledger_core::tracking::Tracking::parse("cn:20261502000001").unwrap();
    let (root, size, cached) = {
        let db = DurableDb::open(dir.path().join("db")).unwrap();
        let mut store = LedgerStore::open(
            db.raw_tree("ledger").unwrap(),
            &map_path,
            net.genesis.clone(),
        )
        .unwrap();
        for (event, time) in events(&net) {
            store.apply(&event, time, &[]).unwrap().ok();
        }
        store.commit().unwrap();
        store
            .record_integrity_checkpoint(store.size(), &store.roots().0)
            .unwrap();
        db.sync().unwrap();
        // The state the apply path kept in memory, shared with its decisions.
        let cached = store.manifest(&tracking).unwrap();
        (store.roots(), store.size(), cached)
    };
    let db = DurableDb::open(dir.path().join("db")).unwrap();
    let tree = db.raw_tree("ledger").unwrap();
    let store = LedgerStore::open(tree.clone(), &map_path, net.genesis.clone()).unwrap();
    assert_eq!((store.roots(), store.size()), (root, size));
    // A fresh store decodes the manifest from sled: the same state as the one cached.
    assert_eq!(store.manifest(&tracking).unwrap(), cached);
    store.verify_integrity().unwrap();

    flip_entry_byte(&tree, 8);
    let store = LedgerStore::open(tree, &map_path, net.genesis.clone()).unwrap();
    let err = store.verify_integrity().unwrap_err();
    assert_eq!(err, IntegrityError::LeafMismatch { index: 8 });
    assert_eq!(err.first_bad_index(), Some(8));
}

#[test]
fn applying_after_a_reopen_continues_the_same_ledger() {
    let net = SampleNetwork::new().unwrap();
    let dir = tempfile::tempdir().unwrap();
    let all = events(&net);
    let mut reference = MemoryLedger::new(net.genesis.clone());
    for (event, time) in &all {
        let _ = reference.submit(event, *time);
    }
    for split in [3usize, 7, 9] {
        let path = dir.path().join(format!("db{split}"));
        let map_path = dir.path().join(format!("map{split}"));
        {
            let (db, mut store) = open_store(&path, &map_path, &net);
            for (event, time) in &all[..split] {
                let _ = store.apply(event, *time, &[]).unwrap();
            }
            store.commit().unwrap();
            db.sync().unwrap();
        }
        let (_db, mut store) = open_store(&path, &map_path, &net);
        for (event, time) in &all[split..] {
            let _ = store.apply(event, *time, &[]).unwrap();
        }
        store.commit().unwrap();
        assert_eq!(
            store.roots(),
            (reference.tree().root(), reference.map().root()),
            "split at {split}"
        );
        assert_eq!(
            store.chain_head(),
            reference.chain_head(),
            "split at {split}"
        );
    }
}

/// A resubmitted event is refused as already recorded, naming the index it was recorded at:
/// a manifest event found in its manifest's own chain, a registry event in the registry's hash
/// index. Checked after a reopen, when no manifest state is cached and each is read back from
/// sled.
#[test]
fn a_resubmission_is_found_at_its_first_index_after_a_reopen() {
    let net = SampleNetwork::new().unwrap();
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("db");
    let map_path = dir.path().join("map");
    let all = events(&net);
    let mut recorded = Vec::new();
    {
        let (db, mut store) = open_store(&path, &map_path, &net);
        for (event, time) in &all {
            if let Ok(receipt) = store.apply(event, *time, &[]).unwrap() {
                recorded.push((event.clone(), receipt.index));
            }
        }
        store.commit().unwrap();
        db.sync().unwrap();
    }
    let registry_events = net.registrations().len();
    assert!(registry_events > 0 && recorded.len() > registry_events);
    let (_db, mut store) = open_store(&path, &map_path, &net);
    let size = store.size();
    for (event, index) in &recorded {
        let outcome = store.apply(event, T0 + 100 * HOUR, &[]).unwrap();
        assert_eq!(
            outcome.err(),
            Some(Rejection::AlreadyRecorded { index: *index }),
            "resubmission of the event at {index}"
        );
    }
    assert_eq!(store.size(), size);
}

/// Roots at every size, and the custody proof of the sample manifest, of a reopened store.
fn assert_matches_reference(store: &LedgerStore, reference: &MemoryLedger, net: &SampleNetwork) {
    assert_eq!(store.size(), reference.size());
    for size in 0..=store.size() {
        assert_eq!(
            store.roots_at(size),
            Some((
                reference.tree().root_at(size).unwrap(),
                reference.map().root_at(size)
            )),
            "roots at size {size}"
        );
    }
    let tracking = wasteledger_core::tracking::Tracking::parse("cn:20261502000001").unwrap();
    let note = net.cosign(reference.checkpoint(T0 + 10 * HOUR).unwrap(), 2);
    assert_eq!(
        build_custody_proof(store, &tracking, &note).unwrap(),
        build_custody_proof(reference, &tracking, &note).unwrap()
    );
}

#[test]
fn merkle_levels_below_the_first_stored_one_are_recomputed_from_the_entries() {
    use wasteledger_core::proof::ProofSource;
    let net = SampleNetwork::new().unwrap();
    let dir = tempfile::tempdir().unwrap();
    let map_path = dir.path().join("ledger.map");
    let mut reference = MemoryLedger::new(net.genesis.clone());
    {
        let (db, mut store) = open_store(&dir.path().join("db"), &map_path, &net);
        for (event, time) in events(&net) {
            assert_eq!(
                store.apply(&event, time, &[]).unwrap(),
                reference.submit(&event, time)
            );
        }
        store.commit().unwrap();
        db.sync().unwrap();
    }
    let db = DurableDb::open(dir.path().join("db")).unwrap();
    let tree = db.raw_tree("ledger").unwrap();
    let stored_levels: Vec<u8> = tree.scan_prefix(b"N").map(|r| r.unwrap().0[1]).collect();
    assert!(
        stored_levels.contains(&FIRST_STORED_LEVEL),
        "the sample ledger is large enough to complete a stored node: {stored_levels:?}"
    );
    assert!(
        stored_levels
            .iter()
            .all(|&level| level >= FIRST_STORED_LEVEL)
    );

    // Reopened, so the frontier and every proof come from what is stored.
    let store = LedgerStore::open(tree, &map_path, net.genesis.clone()).unwrap();
    for size in 0..=store.size() {
        for index in 0..size {
            assert_eq!(
                store.inclusion_proof(index, size),
                reference.inclusion_proof(index, size),
                "inclusion of {index} at size {size}"
            );
        }
        for old in 0..=size {
            assert_eq!(
                store.consistency_proof(old, size),
                reference.tree().consistency_proof(old, size).ok(),
                "consistency of {old} with {size}"
            );
        }
    }
    assert_matches_reference(&store, &reference, &net);
}

#[test]
fn the_map_file_is_cut_back_or_rebuilt_to_match_the_committed_state() {
    let net = SampleNetwork::new().unwrap();
    let dir = tempfile::tempdir().unwrap();
    let map_path = dir.path().join("ledger.map");
    let all = events(&net);
    let mut reference = MemoryLedger::new(net.genesis.clone());
    for (event, time) in &all {
        let _ = reference.submit(event, *time);
    }
    let db = DurableDb::open(dir.path().join("db")).unwrap();
    let open = || {
        LedgerStore::open(
            db.raw_tree("ledger").unwrap(),
            &map_path,
            net.genesis.clone(),
        )
    };
    {
        let mut store = open().unwrap();
        for (event, time) in &all {
            let _ = store.apply(event, *time, &[]).unwrap();
        }
        store.commit().unwrap();
    }
    let committed_len = std::fs::metadata(&map_path).unwrap().len();

    // A crash between the map file write and the sled batch leaves records the committed
    // state does not cover: simulated by appending copies of the last two records. Reopening
    // cuts them off.
    {
        let mut bytes = std::fs::read(&map_path).unwrap();
        let tail = bytes[bytes.len() - 256..].to_vec();
        bytes.extend_from_slice(&tail);
        std::fs::write(&map_path, bytes).unwrap();
    }
    let store = open().unwrap();
    assert_eq!(std::fs::metadata(&map_path).unwrap().len(), committed_len);
    assert_matches_reference(&store, &reference, &net);
    drop(store);

    // A lost file (power loss before its pages reached the disk): rebuilt from the entries.
    std::fs::remove_file(&map_path).unwrap();
    let store = open().unwrap();
    assert_eq!(std::fs::metadata(&map_path).unwrap().len(), committed_len);
    assert_matches_reference(&store, &reference, &net);
    drop(store);

    // A damaged record: rebuilt too.
    let mut bytes = std::fs::read(&map_path).unwrap();
    bytes[300] ^= 0x40;
    std::fs::write(&map_path, bytes).unwrap();
    let store = open().unwrap();
    assert_matches_reference(&store, &reference, &net);
}

#[test]
fn a_snapshot_taken_while_entries_are_applied_imports_as_of_its_size() {
    let net = SampleNetwork::new().unwrap();
    let dir = tempfile::tempdir().unwrap();
    let mut reference = MemoryLedger::new(net.genesis.clone());
    let db = DurableDb::open(dir.path().join("db")).unwrap();
    let mut store = LedgerStore::open(
        db.raw_tree("source").unwrap(),
        &dir.path().join("source.map"),
        net.genesis.clone(),
    )
    .unwrap();
    let mut all = events(&net);
    // A second manifest, created while the copy runs: its manifest and its party and
    // waste-code index records are settled history written after the snapshot's size.
    all.push(second_manifest_created(&net, all.last().unwrap().1));
    // The first manifest's first events before the snapshot, the rest while it is copied:
    // they change, create and delete changing records (its state, status indexes) on both
    // sides of the copy's scan position.
    let (before, after) = all.split_at(all.len() - 6);
    // The same events up to the snapshot's size, applied to a store of their own: what the
    // snapshot must hold, record for record.
    let mut stopped = LedgerStore::open(
        db.raw_tree("stopped").unwrap(),
        &dir.path().join("stopped.map"),
        net.genesis.clone(),
    )
    .unwrap();
    for (event, time) in before {
        let _ = reference.submit(event, *time);
        let _ = store.apply(event, *time, &[]).unwrap();
        let _ = stopped.apply(event, *time, &[]).unwrap();
    }
    stopped.commit().unwrap();
    let size = store.merkle_size();
    let copy = store.begin_changing_copy().unwrap();
    assert!(
        store.begin_changing_copy().is_err(),
        "a second copy must be refused while one runs"
    );
    let mut changing = copy.records();
    let mut records: Vec<(Vec<u8>, Vec<u8>)> = Vec::new();
    for (event, time) in after {
        records.extend(changing.by_ref().take(3).map(Result::unwrap));
        let _ = store.apply(event, *time, &[]).unwrap();
        store.commit().unwrap();
    }
    records.extend(changing.map(Result::unwrap));
    let keys: std::collections::HashSet<_> = records.iter().map(|(k, _)| k.clone()).collect();
    assert_eq!(keys.len(), records.len(), "a record copied twice");
    drop(copy);
    assert!(store.merkle_size() > size);
    // The settled part is read after later entries were applied and committed.
    records.extend(store.settled_history().records(size).map(Result::unwrap));
    assert_eq!(
        store.index_scan(b'p', ids::ROAD, None, 10).unwrap().len(),
        2,
        "the second manifest was created after the copy began"
    );
    let mut expected: Vec<(Vec<u8>, Vec<u8>)> = db
        .raw_tree("stopped")
        .unwrap()
        .iter()
        .map(|r| r.map(|(k, v)| (k.to_vec(), v.to_vec())).unwrap())
        // The map file's state names that store's own file.
        .filter(|(k, _)| k.as_slice() != b"Smap_file")
        .collect();
    expected.sort();
    let mut copied = records.clone();
    copied.sort();
    assert_eq!(copied.len(), expected.len(), "records in the snapshot");
    assert!(
        copied == expected,
        "the snapshot differs from the state at its size"
    );
    let imported = LedgerStore::import(
        db.raw_tree("target").unwrap(),
        &dir.path().join("target.map"),
        net.genesis.clone(),
        records.into_iter().map(Ok),
    )
    .unwrap();
    assert_matches_reference(&imported, &reference, &net);
    imported.verify_integrity().unwrap();
    assert_eq!(imported.chain_head(), reference.chain_head());
}

/// Reads `records`, applying one of `events` to `store` after every third record, and
/// returns the records sorted by key.
fn read_while_applying(
    store: &mut LedgerStore,
    records: impl Iterator<Item = wasteledger_store::state::Record>,
    events: &[(pb::SignedEvent, i64)],
) -> Vec<(Vec<u8>, Vec<u8>)> {
    let mut records = records.map(Result::unwrap);
    let mut out: Vec<(Vec<u8>, Vec<u8>)> = Vec::new();
    for (event, time) in events {
        out.extend(records.by_ref().take(3));
        let _ = store.apply(event, *time, &[]).unwrap();
        store.commit().unwrap();
    }
    out.extend(records);
    out.sort();
    out
}

#[test]
fn a_copy_made_from_the_previous_copy_and_the_changes_equals_a_full_copy() {
    let net = SampleNetwork::new().unwrap();
    let dir = tempfile::tempdir().unwrap();
    let db = DurableDb::open(dir.path().join("db")).unwrap();
    let open = |name: &str| {
        LedgerStore::open(
            db.raw_tree(name).unwrap(),
            &dir.path().join(format!("{name}.map")),
            net.genesis.clone(),
        )
        .unwrap()
    };
    // Two stores fed the same events: one copies incrementally, the other scans in full.
    let (mut incremental, mut full) = (open("incremental"), open("full"));
    let all = events(&net);
    let third = all.len() / 3;
    let (first, rest) = all.split_at(third);
    let (second, last) = rest.split_at(third);
    let apply = |store: &mut LedgerStore, events: &[(pb::SignedEvent, i64)]| {
        for (event, time) in events {
            let _ = store.apply(event, *time, &[]).unwrap();
        }
    };
    apply(&mut incremental, first);
    apply(&mut full, first);

    let copy = incremental.begin_changing_copy().unwrap();
    assert!(
        copy.records_since(0, std::iter::empty()).is_none(),
        "the first copy of a store opened just now has no previous copy to build on"
    );
    let previous_number = copy.number();
    let previous = read_while_applying(&mut incremental, copy.records(), second);
    drop(copy);
    let copy = full.begin_changing_copy().unwrap();
    assert_eq!(
        read_while_applying(&mut full, copy.records(), second),
        previous
    );
    drop(copy);

    // The second copy: states, status indexes and metadata changed, were created and deleted
    // since the first, and change again while it is read.
    let copy = incremental.begin_changing_copy().unwrap();
    assert!(
        copy.records_since(previous_number + 1, std::iter::empty())
            .is_none()
    );
    assert_eq!(copy.changes_since(previous_number + 1), None);
    let changes = copy.changes_since(previous_number).unwrap();
    let made = copy
        .records_since(previous_number, previous.clone().into_iter().map(Ok))
        .expect("every change since the previous copy was tracked");
    let made = read_while_applying(&mut incremental, made, last);
    // The same copy as a layer over the previous one: its changes alone, with deletions,
    // taken after the copy was read while entries went on being applied.
    let layered = {
        let mut records: std::collections::BTreeMap<_, _> = previous.iter().cloned().collect();
        let mut bytes = 0;
        for (k, v) in copy.changed_since(previous_number).unwrap() {
            bytes += k.len() + v.as_ref().map_or(0, Vec::len);
            match v {
                Some(v) => records.insert(k, v),
                None => records.remove(&k),
            };
        }
        assert_eq!(Some(bytes), copy.changed_bytes(previous_number));
        records.into_iter().collect::<Vec<_>>()
    };
    assert!(copy.changed_since(previous_number + 1).is_none());
    drop(copy);
    let copy = full.begin_changing_copy().unwrap();
    let scanned = read_while_applying(&mut full, copy.records(), last);
    drop(copy);
    assert_ne!(
        scanned, previous,
        "the events between the copies changed nothing"
    );
    assert_eq!(made, scanned);
    assert_eq!(layered, scanned);
    // Every record that differs between the copies (added, changed or deleted) was counted
    // among the keys written.
    let differing = {
        use std::collections::{BTreeMap, BTreeSet};
        let before: BTreeMap<_, _> = previous.iter().cloned().collect();
        let after: BTreeMap<_, _> = scanned.iter().cloned().collect();
        let keys: BTreeSet<&Vec<u8>> = before.keys().chain(after.keys()).collect();
        keys.into_iter()
            .filter(|k| before.get(*k) != after.get(*k))
            .count()
    };
    assert!(
        (1..=changes).contains(&differing),
        "{changes} keys written, {differing} records differ"
    );

    // A reopened store tracked nothing before its first copy.
    drop(incremental);
    let reopened = open("incremental");
    let copy = reopened.begin_changing_copy().unwrap();
    assert!(
        copy.records_since(previous_number, std::iter::empty())
            .is_none()
    );
}

/// A reopened store of [`events`] whose integrity checkpoint is at size 8 (recorded in the
/// current format, with the chain link), and its raw tree for damaging it.
fn store_with_checkpoint_at_8(dir: &std::path::Path) -> (DurableDb, sled::Tree, LedgerStore) {
    let net = SampleNetwork::new().unwrap();
    let map_path = dir.join("ledger.map");
    {
        let (db, mut store) = open_store(&dir.join("db"), &map_path, &net);
        for (event, time) in events(&net) {
            store.apply(&event, time, &[]).unwrap().ok();
        }
        store.commit().unwrap();
        assert!(store.size() > 10, "the checkpoint leaves entries after it");
        let root_at_8 = store.roots_at(8).unwrap().0;
        store.record_integrity_checkpoint(8, &root_at_8).unwrap();
        store.commit().unwrap();
        db.sync().unwrap();
    }
    let db = DurableDb::open(dir.join("db")).unwrap();
    let tree = db.raw_tree("ledger").unwrap();
    let store = LedgerStore::open(tree.clone(), &map_path, net.genesis.clone()).unwrap();
    (db, tree, store)
}

/// Flips the low bit of byte `at` of the value stored under `key`.
fn flip_stored_bit(tree: &sled::Tree, key: &[u8], at: usize) {
    let mut bytes = tree.get(key).unwrap().unwrap().to_vec();
    bytes[at] ^= 0x01;
    tree.insert(key, bytes).unwrap();
}

/// Damages the body of entry `index` (an involution: calling it twice undoes it).
fn flip_entry_byte(tree: &sled::Tree, index: u64) {
    flip_stored_bit(tree, &[b"E".as_slice(), &index.to_be_bytes()].concat(), 60);
}

#[test]
fn start_up_checks_entries_after_the_checkpoint_and_leaves_history_to_a_later_check() {
    let dir = tempfile::tempdir().unwrap();
    let (_db, _tree, store) = store_with_checkpoint_at_8(dir.path());
    let history = store
        .verify_recent()
        .unwrap()
        .expect("history below the checkpoint is left to check");
    assert_eq!(history.entries(), 8);
    assert_eq!(history.run(&mut || false), Ok(HistoryChecked::Complete));
    // The full check agrees, and a check asked to stop at once stops without a verdict.
    store.verify_integrity().unwrap();
    assert_eq!(history.run(&mut || true), Ok(HistoryChecked::Stopped));
}

#[test]
fn damage_below_the_checkpoint_is_found_by_the_history_check() {
    let dir = tempfile::tempdir().unwrap();
    let (_db, tree, store) = store_with_checkpoint_at_8(dir.path());
    flip_entry_byte(&tree, 3);
    // Start-up does not read settled history: it passes, and hands the check on.
    let history = store.verify_recent().unwrap().unwrap();
    assert_eq!(
        history.run(&mut || false),
        Err(IntegrityError::LeafMismatch { index: 3 })
    );
    assert_eq!(
        store.verify_integrity(),
        Err(IntegrityError::LeafMismatch { index: 3 })
    );
}

#[test]
fn damage_after_the_checkpoint_stops_start_up() {
    let dir = tempfile::tempdir().unwrap();
    let (_db, tree, store) = store_with_checkpoint_at_8(dir.path());
    flip_entry_byte(&tree, 9);
    assert_eq!(
        store.verify_recent().unwrap_err(),
        IntegrityError::LeafMismatch { index: 9 }
    );
    // A missing entry after the checkpoint, too.
    let dir = tempfile::tempdir().unwrap();
    let (_db, tree, store) = store_with_checkpoint_at_8(dir.path());
    tree.remove([b"E".as_slice(), &10u64.to_be_bytes()].concat())
        .unwrap();
    assert_eq!(
        store.verify_recent().unwrap_err(),
        IntegrityError::MissingEntry { index: 10 }
    );
}

#[test]
fn a_damaged_merkle_node_or_checkpoint_record_stops_start_up() {
    // Size 8 is one perfect subtree: its root is the stored node (level 3, index 0).
    let dir = tempfile::tempdir().unwrap();
    let (_db, tree, store) = store_with_checkpoint_at_8(dir.path());
    flip_stored_bit(
        &tree,
        &[b"N".as_slice(), &[3u8], &0u64.to_be_bytes()].concat(),
        0,
    );
    assert_eq!(
        store.verify_recent().unwrap_err(),
        IntegrityError::RootMismatch { size: 8 }
    );

    // The recorded chain link no longer leads to the chain head.
    let dir = tempfile::tempdir().unwrap();
    let (_db, tree, store) = store_with_checkpoint_at_8(dir.path());
    let record = b"Sintegrity_checkpoint";
    let value = tree.get(record).unwrap().unwrap();
    assert_eq!(value.len(), 72, "size, root and chain link");
    flip_stored_bit(&tree, record, 71);
    assert_eq!(
        store.verify_recent().unwrap_err(),
        IntegrityError::ChainMismatch { index: 8 }
    );
}

#[test]
fn a_checkpoint_recorded_without_its_chain_link_means_a_full_check_at_start_up() {
    let dir = tempfile::tempdir().unwrap();
    let (_db, tree, store) = store_with_checkpoint_at_8(dir.path());
    // The record as older versions wrote it: size and root only.
    let record = b"Sintegrity_checkpoint".to_vec();
    let value = tree.get(&record).unwrap().unwrap().to_vec();
    tree.insert(&record, &value[..40]).unwrap();
    assert!(
        store.verify_recent().unwrap().is_none(),
        "nothing left to check"
    );
    flip_entry_byte(&tree, 3);
    assert_eq!(
        store.verify_recent().unwrap_err(),
        IntegrityError::LeafMismatch { index: 3 }
    );
}

#[test]
fn every_damaged_entry_is_found_by_start_up_or_by_the_history_check_whatever_the_checkpoint() {
    let dir = tempfile::tempdir().unwrap();
    let (_db, tree, store) = store_with_checkpoint_at_8(dir.path());
    let size = store.size();
    for checkpoint in 0..=size {
        let root = store.roots_at(checkpoint).unwrap().0;
        store
            .record_integrity_checkpoint(checkpoint, &root)
            .unwrap();
        store.commit().unwrap();
        let history = store.verify_recent().unwrap();
        assert_eq!(history.as_ref().map_or(0, |h| h.entries()), checkpoint);
        if let Some(h) = &history {
            assert_eq!(h.run(&mut || false), Ok(HistoryChecked::Complete));
        }
        // Below the current size, the root at the checkpoint is recomputed at start-up from
        // the stored nodes from FIRST_STORED_LEVEL up and from the entries of its last
        // incomplete group of leaves. (At the current size it is the root this store computed
        // when it was opened, before the damage below.)
        let group = 1u64 << FIRST_STORED_LEVEL;
        let read_for_root = if checkpoint < size {
            checkpoint - checkpoint % group..checkpoint
        } else {
            0..0
        };
        for damaged in 0..size {
            flip_entry_byte(&tree, damaged);
            let found = IntegrityError::LeafMismatch { index: damaged };
            match store.verify_recent() {
                Err(e) if read_for_root.contains(&damaged) => {
                    assert_eq!(e, IntegrityError::RootMismatch { size: checkpoint });
                }
                Err(e) => {
                    assert!(damaged >= checkpoint, "start-up read entry {damaged}");
                    assert_eq!(e, found);
                }
                Ok(history) => {
                    assert!(damaged < checkpoint, "start-up missed entry {damaged}");
                    assert!(
                        !read_for_root.contains(&damaged),
                        "start-up missed {damaged}"
                    );
                    let history = history.expect("history left to check");
                    assert_eq!(history.run(&mut || false), Err(found.clone()));
                }
            }
            assert_eq!(store.verify_integrity(), Err(found));
            flip_entry_byte(&tree, damaged);
        }
    }
    // The checks only read: the undamaged store still passes.
    store.verify_integrity().unwrap();
}

#[test]
fn the_newest_cosigned_size_is_what_other_witnesses_can_second() {
    use wasteledger_core::checkpoint::cosign;
    use wasteledger_store::state::CosignOutcome;

    let net = SampleNetwork::new().unwrap();
    let (_dir, db) = temp_db();
    let map = tempfile::tempdir().unwrap();
    let mut store = LedgerStore::open(
        db.raw_tree("ledger").unwrap(),
        &map.path().join("ledger.map"),
        net.genesis.clone(),
    )
    .unwrap();
    for (event, time) in events(&net) {
        store.apply(&event, time, &[]).unwrap().ok();
    }
    store.commit().unwrap();
    let sign = |store: &LedgerStore, witness: usize, size: u64| {
        let (name, key) = &net.witnesses[witness];
        let checkpoint = store.checkpoint_at(size).unwrap();
        let signature = cosign(key, name, &net.genesis.ledger_id, &checkpoint);
        store.record_cosignature(size, &signature, &[]).unwrap()
    };
    assert_eq!(store.newest_cosigned_size().unwrap(), None);
    assert!(matches!(
        sign(&store, 0, 5),
        CosignOutcome::Recorded {
            published: false,
            ..
        }
    ));
    assert_eq!(store.newest_cosigned_size().unwrap(), Some(5));
    sign(&store, 1, 8);
    assert_eq!(store.newest_cosigned_size().unwrap(), Some(8));
    // Seconding size 5 publishes it (2 of 3); the newest cosigned size stays 8.
    assert!(matches!(
        sign(&store, 2, 5),
        CosignOutcome::Recorded {
            published: true,
            ..
        }
    ));
    assert_eq!(store.published_size().unwrap(), Some(5));
    assert_eq!(store.newest_cosigned_size().unwrap(), Some(8));
}

#[test]
fn a_waste_code_a_correction_introduces_is_indexed() {
    let net = SampleNetwork::new().unwrap();
    let (dir, db) = temp_db();
    let mut store = LedgerStore::open(
        db.raw_tree("ledger").unwrap(),
        &dir.path().join("ledger.map"),
        net.genesis.clone(),
    )
    .unwrap();
    for event in net.registrations() {
        store.apply(&event, T0 - HOUR, &[]).unwrap().unwrap();
    }
    let number = "20261502000003";
    let mut flow = ManifestFlow::new(&net, number, T0).unwrap();
    let manifest = net.manifest(number, &[ids::ROAD]);
    let apply =
        |store: &mut LedgerStore, flow: &mut ManifestFlow<'_>, kind: Kind, signers: &[&str]| {
            let event = flow.event(kind, signers);
            let receipt = store.apply(&event, flow.now, &[]).unwrap().unwrap();
            store.commit().unwrap();
            flow.accept(&event);
            receipt
        };
    let created = apply(
        &mut store,
        &mut flow,
        Kind::ManifestCreated(pb::ManifestCreated {
            manifest: Some(manifest.clone()),
        }),
        &[ids::GENERATOR],
    );
    apply(
        &mut store,
        &mut flow,
        ManifestFlow::handoff(ids::GENERATOR, ids::ROAD),
        &[ids::GENERATOR, ids::ROAD],
    );
    // The generator reclassifies line 1 from HW08 to HW09; the carrier approves.
    let mut line = manifest.lines[0].clone();
    line.codes[0].code = "HW09".into();
    let correction = apply(
        &mut store,
        &mut flow,
        Kind::Correction(pb::Correction {
            amends_event: created.event_hash.0.to_vec(),
            changes: vec![pb::CorrectionChange {
                change: Some(pb::correction_change::Change::WasteLine(line)),
            }],
            reason: "laboratory analysis: emulsion, not oil".into(),
        }),
        &[ids::GENERATOR],
    );
    let hw = |code: &str| format!("{}:{code}", pb::CodeSystem::CnHwCategory as i32);
    assert!(
        store
            .index_scan(b'c', &hw("HW09"), None, 10)
            .unwrap()
            .is_empty(),
        "a proposed correction changes nothing yet"
    );
    apply(
        &mut store,
        &mut flow,
        Kind::CorrectionDecision(pb::CorrectionDecision {
            correction_event: correction.event_hash.0.to_vec(),
            approve: true,
            comment: String::new(),
        }),
        &[ids::ROAD],
    );
    assert_eq!(
        store
            .manifest_state(&format!("cn:{number}"))
            .unwrap()
            .unwrap()
            .corrections_applied,
        1
    );
    assert_eq!(
        store.index_scan(b'c', &hw("HW09"), None, 10).unwrap(),
        vec![format!("cn:{number}")]
    );
    // The old code's record stays (index records are never removed); a query re-checks the
    // manifest itself, which no longer carries it.
    assert_eq!(
        store.index_scan(b'c', &hw("HW08"), None, 10).unwrap(),
        vec![format!("cn:{number}")]
    );
}

#[test]
fn a_store_that_kept_manifests_inside_their_states_is_converted_at_open() {
    let net = SampleNetwork::new().unwrap();
    let (dir, db) = temp_db();
    let map_path = dir.path().join("ledger.map");
    // The first manifest's treatment (the last event) comes after the conversion; a second
    // manifest is created before it.
    let mut all = events(&net);
    let treatment = all.pop().unwrap();
    all.push(second_manifest_created(&net, treatment.1));
    let mut reference = MemoryLedger::new(net.genesis.clone());
    for (event, time) in all.iter().chain([&treatment]) {
        let _ = reference.submit(event, *time);
    }
    let (first, second) = ("cn:20261502000001", "cn:20261502000002");
    let states = {
        let mut store = LedgerStore::open(
            db.raw_tree("ledger").unwrap(),
            &map_path,
            net.genesis.clone(),
        )
        .unwrap();
        for (event, time) in &all {
            let _ = store.apply(event, *time, &[]).unwrap();
        }
        store.commit().unwrap();
        [first, second].map(|t| store.manifest_state(t).unwrap().unwrap())
    };
    // Rewrite the first manifest the old way (its manifest inside its state, no `B` record, no
    // marker); the second stays converted, as if an earlier conversion had been cut short.
    let tree = db.raw_tree("ledger").unwrap();
    let bodies = |tree: &sled::Tree| {
        tree.scan_prefix(b"B")
            .map(|r| String::from_utf8_lossy(&r.unwrap().0).into_owned())
            .collect::<Vec<_>>()
    };
    assert_eq!(bodies(&tree).len(), 2);
    tree.insert(
        format!("M{first}"),
        prost::Message::encode_to_vec(&states[0]),
    )
    .unwrap();
    for k in bodies(&tree).into_iter().filter(|k| k.contains(first)) {
        tree.remove(k).unwrap();
    }
    tree.remove("Smanifest_bodies_split").unwrap();

    let mut store = LedgerStore::open(
        db.raw_tree("ledger").unwrap(),
        &map_path,
        net.genesis.clone(),
    )
    .unwrap();
    assert_eq!(
        bodies(&tree).len(),
        2,
        "the first manifest's body was stored apart"
    );
    for r in tree.scan_prefix(b"M") {
        let state: pb::ManifestState = prost::Message::decode(r.unwrap().1.as_ref()).unwrap();
        assert!(state.manifest.is_none(), "a state still holds its manifest");
    }
    assert!(tree.get("Smanifest_bodies_split").unwrap().is_some());
    assert_eq!(
        [first, second].map(|t| store.manifest_state(t).unwrap().unwrap()),
        states
    );
    // The converted manifest goes on: its treatment is decided against the joined state.
    let _ = store
        .apply(&treatment.0, treatment.1, &[])
        .unwrap()
        .unwrap();
    store.commit().unwrap();
    assert_eq!(
        store.manifest_state(first).unwrap().unwrap().status,
        pb::ManifestStatus::Treated as i32
    );
    assert_eq!(store.chain_head(), reference.chain_head());
}

/// A store written before the open statuses shared one index value holds a record under each
/// open status's own name: opening it moves those records, once, and leaves terminal ones.
#[test]
fn an_older_status_index_is_merged_at_open() {
    let net = SampleNetwork::new().unwrap();
    let dir = tempfile::tempdir().unwrap();
    let (db_path, map_path) = (dir.path().join("db"), dir.path().join("ledger.map"));
    let (first, second) = ("cn:20261502000001", "cn:20261502000002");
    let status_key = |value: &str, tracking: &str| {
        let mut k = vec![b'X', b's'];
        k.extend_from_slice(value.as_bytes());
        k.push(0);
        k.extend_from_slice(tracking.as_bytes());
        k
    };
    let marker = b"Sopen_statuses_merged".to_vec();
    {
        let (db, mut store) = open_store(&db_path, &map_path, &net);
        let mut all = events(&net);
        let last_time = all.last().map(|(_, t)| *t).unwrap();
        all.push(second_manifest_created(&net, last_time + HOUR));
        for (event, time) in &all {
            let _ = store.apply(event, *time, &[]).unwrap();
        }
        store.commit().unwrap();
        assert_eq!(
            store.index_scan(b's', OPEN_STATUSES, None, 10).unwrap(),
            vec![second]
        );
        // Back to the older layout: the created manifest under its status's own name.
        let tree = db.raw_tree("ledger").unwrap();
        assert!(
            tree.remove(status_key(OPEN_STATUSES, second))
                .unwrap()
                .is_some()
        );
        tree.insert(status_key("created", second), Vec::<u8>::new())
            .unwrap();
        assert!(tree.remove(&marker).unwrap().is_some());
        db.sync().unwrap();
    }
    let (db, store) = open_store(&db_path, &map_path, &net);
    assert_eq!(
        store.index_scan(b's', OPEN_STATUSES, None, 10).unwrap(),
        vec![second]
    );
    assert!(
        store
            .index_scan(b's', "created", None, 10)
            .unwrap()
            .is_empty()
    );
    assert_eq!(
        store.index_scan(b's', "treated", None, 10).unwrap(),
        vec![first]
    );
    assert!(
        db.raw_tree("ledger")
            .unwrap()
            .get(&marker)
            .unwrap()
            .is_some()
    );
}

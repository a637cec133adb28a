//! openraft's storage conformance suite (`openraft::testing::log::Suite::test_all`) against the
//! real storage: [`LogStorage`] on the sled [`LogStore`] and [`LedgerStateMachine`], both in one
//! [`DurableDb`] in a fresh temporary directory per test case, as a node runs them.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    reason = "test code: a failure should abort the test"
)]

use openraft::StorageError;
use openraft::testing::log::{StoreBuilder, Suite};
use openraft::type_config::TypeConfigExt;
use tempfile::TempDir;
use wasteledger_core::genesis::Genesis;
use wasteledger_core::sample::SampleNetwork;
use wasteledger_node::log_storage::LogStorage;
use wasteledger_node::state_machine::LedgerStateMachine;
use wasteledger_node::types::TypeConfig;
use wasteledger_store::{DurableDb, LogStore};

/// Builds an empty, independent log store and state machine for every suite case.
struct SledBuilder {
    genesis: Genesis,
}

fn storage_error(e: &(impl std::error::Error + 'static)) -> StorageError<TypeConfig> {
    StorageError::write(TypeConfig::err_from_error(e))
}

impl StoreBuilder<TypeConfig, LogStorage, LedgerStateMachine, TempDir> for SledBuilder {
    async fn build(
        &self,
    ) -> Result<(TempDir, LogStorage, LedgerStateMachine), StorageError<TypeConfig>> {
        // The TempDir is the suite's guard: it outlives the stores built in it.
        let dir = tempfile::tempdir().map_err(|e| storage_error(&e))?;
        let db = DurableDb::open(dir.path().join("db")).map_err(|e| storage_error(&e))?;
        let log = LogStorage::new(LogStore::open(db.clone()).map_err(|e| storage_error(&e))?);
        let sm = LedgerStateMachine::open(
            &db,
            self.genesis.clone(),
            dir.path().join("snapshots"),
            dir.path().join("ledger.map"),
        )
        .map_err(|e| storage_error(&e))?;
        Ok((dir, log, sm))
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn openraft_storage_suite() -> Result<(), StorageError<TypeConfig>> {
    let genesis = SampleNetwork::new().expect("sample genesis").genesis;
    Suite::test_all(SledBuilder { genesis }).await
}

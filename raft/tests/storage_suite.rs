//! openraft's own storage test suite, run against shoal's redb log store and state store.

use openraft::StorageError;
use openraft::testing::{StoreBuilder, Suite};
use shoal_raft::log_store::LogStore;
use shoal_raft::state_store::StateStore;
use shoal_raft::{NodeId, TypeConfig};
use tempfile::TempDir;

struct RedbStores;

impl StoreBuilder<TypeConfig, LogStore, StateStore, TempDir> for RedbStores {
    async fn build(&self) -> Result<(TempDir, LogStore, StateStore), StorageError<NodeId>> {
        let dir = tempfile::tempdir().expect("tempdir");
        let log = LogStore::open(&dir.path().join("raft-log.redb")).expect("log store");
        let (state, _view) = StateStore::open(
            &dir.path().join("state.redb"),
            &dir.path().join("snapshots"),
            log.applied_marker(),
        )
        .expect("state store");
        Ok((dir, log, state))
    }
}

#[test]
fn openraft_storage_suite_passes_on_redb_stores() {
    Suite::test_all(RedbStores).expect("storage suite");
}

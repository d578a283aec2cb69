//! The state store writes its rows to `state.redb` only now and then (every 1,000 entries,
//! every 2,000 changed rows, before a snapshot and before a backup). Whenever that is, what
//! it wrote must be the state after exactly the entries up to the applied id it wrote with
//! them: a reopened store loads that pair, and the node re-applies the log from there.

use std::collections::BTreeMap;

use openraft::storage::RaftStateMachine;
use openraft::{CommittedLeaderId, EntryPayload, RaftSnapshotBuilder};
use shoal_raft::job::Capacity;
use shoal_raft::log_store::LogStore;
use shoal_raft::state_store::StateStore;
use shoal_raft::types::{Entry, LogId};
use shoal_raft::{Command, NodeInfo, Proposal, State};

fn info(name: String) -> NodeInfo {
    NodeInfo {
        name,
        peer_id: String::new(),
        http_url: String::new(),
        p2p_addrs: Vec::new(),
        slots: 2,
        executor: "noop".to_string(),
        capacity: Capacity::default(),
    }
}

/// Entry `index`: a new node now and then, otherwise a heartbeat of one of them, so both
/// new rows and changed ones reach the store.
fn proposal(index: u64) -> Proposal {
    let command = if index % 7 == 1 {
        Command::RegisterNode {
            node_id: index,
            info: info(format!("n{index}")),
        }
    } else {
        Command::Heartbeat {
            node_id: index - (index - 1) % 7,
            running: (index % 5) as u32,
        }
    };
    Proposal {
        time_ms: 1_000 + index,
        command,
    }
}

fn entry(index: u64) -> Entry {
    Entry {
        log_id: LogId::new(CommittedLeaderId::new(1, 1), index),
        payload: EntryPayload::Normal(proposal(index)),
    }
}

/// Every row of `state`, encoded.
fn rows(state: &State) -> BTreeMap<Vec<u8>, Vec<u8>> {
    state
        .row_keys()
        .filter_map(|key| {
            let row = state.row(key).expect("row encodes")?;
            Some((key.to_bytes(), row))
        })
        .collect()
}

/// The state after entries `1..=last`, applied without a store.
fn replayed(last: u64) -> State {
    let mut state = State::default();
    for index in 1..=last {
        state.apply_entry(1, index, &proposal(index));
    }
    state
}

/// Reopens the store in `dir` and checks that the rows it loads are exactly the state after
/// the entries up to the applied id it loads; returns that index.
fn check_reopened(dir: &std::path::Path) -> u64 {
    let log = LogStore::open(&dir.join("raft-log.redb")).expect("log store");
    let (mut store, view) = StateStore::open(
        &dir.join("state.redb"),
        &dir.join("snapshots"),
        log.applied_marker(),
    )
    .expect("state store");
    let applied = futures::executor::block_on(store.applied_state())
        .expect("applied state")
        .0
        .map_or(0, |id| id.index);
    assert_eq!(
        rows(&view.read()),
        rows(&replayed(applied)),
        "the rows written belong to applied index {applied}"
    );
    applied
}

fn open(dir: &std::path::Path) -> StateStore {
    let log = LogStore::open(&dir.join("raft-log.redb")).expect("log store");
    StateStore::open(
        &dir.join("state.redb"),
        &dir.join("snapshots"),
        log.applied_marker(),
    )
    .expect("state store")
    .0
}

async fn applied(store: &mut StateStore) -> Option<u64> {
    store
        .applied_state()
        .await
        .expect("applied")
        .0
        .map(|id| id.index)
}

#[tokio::test]
async fn rows_written_now_and_then_always_match_the_applied_id_written_with_them() {
    let dir = tempfile::tempdir().expect("tempdir");
    let dir = dir.path();

    // Ten entries: no row write is due yet...
    let mut store = open(dir);
    store
        .apply((1..=10).map(entry).collect::<Vec<_>>())
        .await
        .expect("apply");
    assert_eq!(applied(&mut store).await, Some(10));
    // ...but a snapshot writes the rows first: it is of the state as applied, and so is
    // the file.
    let snapshot = store
        .get_snapshot_builder()
        .await
        .build_snapshot()
        .await
        .expect("snapshot");
    assert_eq!(snapshot.meta.last_log_id.map(|id| id.index), Some(10));
    drop(store);
    assert_eq!(check_reopened(dir), 10);

    // Across the 1,000-entry boundary, one entry at a time.
    let mut store = open(dir);
    for index in 11..=1_005 {
        store.apply(vec![entry(index)]).await.expect("apply");
    }
    drop(store);
    assert_eq!(
        check_reopened(dir),
        1_000,
        "the rows were written when entry 1,000 was applied, and not since"
    );

    // A backup writes the rows first, and holds exactly what the file holds.
    let mut store = open(dir);
    store
        .apply((1_001..=1_020).map(entry).collect::<Vec<_>>())
        .await
        .expect("apply");
    let mut backup = Vec::new();
    let written = store.admin().write_backup(&mut backup).expect("backup");
    assert_eq!(written.header.last_log, Some((1, 1_020)));
    drop(store);
    assert_eq!(check_reopened(dir), 1_020);
    let restored = shoal_raft::backup::read_backup(backup.as_slice()).expect("read backup");
    assert_eq!(rows(&restored.state), rows(&replayed(1_020)));
}

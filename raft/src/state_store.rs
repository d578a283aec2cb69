//! The state machine on redb: `state.redb` holds the state rows, the last applied log id and
//! the membership; snapshots are files streamed from and into those rows.
//!
//! The live [`State`] is kept in memory on every node (readers share it through
//! [`StateView`]). The rows it changed go to redb in a durable commit with the applied log id
//! now and then, not with every applied batch (see [`RowWriter`]); between those commits
//! each batch's last log id goes to the applied mark. A snapshot is the row table written
//! record by record to a file under `snapshots/`, so building, sending and installing one
//! never holds it whole in memory.

use std::fs;
use std::io::{BufReader, BufWriter, Write};
use std::path::Path;
use std::sync::{Arc, Mutex, RwLock, RwLockReadGuard};

use openraft::storage::{RaftStateMachine, Snapshot};
use openraft::{EntryPayload, ErrorSubject, ErrorVerb, RaftSnapshotBuilder, StorageIOError};
use redb::{Database, ReadableDatabase, ReadableTable, TableDefinition};
use tokio::sync::watch;

use crate::backup::{BackupError, BackupHeader, BackupWriter};
use crate::codec;
use crate::command::Outcome;
use crate::log_store::AppliedMarker;
use crate::snapshot_files::{SnapshotFiles, read_record, write_record};
use crate::state::{RowKey, State};
use crate::types::{LogId, SnapshotMeta, StorageError, StoredMembership, TypeConfig};

const ROWS: TableDefinition<'_, &[u8], &[u8]> = TableDefinition::new("rows");
const META: TableDefinition<'_, &str, &[u8]> = TableDefinition::new("meta");

const KEY_APPLIED: &str = "last_applied";
const KEY_MEMBERSHIP: &str = "membership";
const KEY_SNAPSHOT: &str = "snapshot_meta";
/// Set by a restore ([`write_restored`]) until the node has made its first snapshot.
const KEY_RESTORE_PENDING: &str = "restore_pending";

/// The changed rows are written once every this many applied entries, which bounds what a
/// node re-applies at start (from the rows' applied id up to the applied mark).
const ROWS_EVERY_ENTRIES: u64 = 1_000;
/// ... or as soon as this many rows wait, which bounds the work of one write.
const ROWS_WAITING_MAX: usize = 2_000;

/// Which run of `ROWS_EVERY_ENTRIES` entries `applied` falls in.
fn rows_epoch(applied: Option<LogId>) -> u64 {
    applied.map_or(0, |id| id.index / ROWS_EVERY_ENTRIES)
}

/// redb's page cache for the state rows (its default is 1 GiB). The live state is in memory
/// already; the file is read once at start and by snapshots, so the cache only has to hold a
/// write transaction's pages.
const STATE_CACHE_BYTES: usize = 64 * 1024 * 1024;

/// Read access to the applied state, shared by everything on the node that reads it.
#[derive(Clone)]
pub struct StateView {
    state: Arc<RwLock<State>>,
    applied: watch::Receiver<Option<LogId>>,
}

impl StateView {
    /// Reads the state. Hold the guard briefly: applying waits for it.
    pub fn read(&self) -> RwLockReadGuard<'_, State> {
        self.state
            .read()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Changes each time entries are applied: the log id of the last one.
    pub fn applied(&self) -> watch::Receiver<Option<LogId>> {
        self.applied.clone()
    }
}

/// The openraft state machine.
pub struct StateStore {
    files: SnapshotFiles,
    /// The database and the live state, shared with snapshot builders and [`StateAdmin`].
    rows: Arc<RowWriter>,
    applied_tx: watch::Sender<Option<LogId>>,
    last_applied: Option<LogId>,
    membership: StoredMembership,
    /// Records each applied batch's last entry durably (the log's `applied.mark`).
    marker: AppliedMarker,
    /// `last_applied / ROWS_EVERY_ENTRIES` at the last write of the rows.
    rows_epoch: u64,
}

/// Writes the rows the state changed since the last time, with the applied log id and
/// membership they belong to, in one durable redb commit: every `ROWS_EVERY_ENTRIES` applied
/// entries or `ROWS_WAITING_MAX` changed rows, before a snapshot and before a backup. Shared
/// by the state machine and [`StateAdmin`].
///
/// Between two writes `state.redb` trails the live state, which costs nothing: a crash loses
/// even redb's non-durable commits (they live in its memory until a durable one), so the node
/// re-applied from the last durable commit up to the applied mark anyway. A non-durable commit
/// with every batch cost each apply about 0.1 ms and wrote a row again for each change.
struct RowWriter {
    db: Arc<Database>,
    state: Arc<RwLock<State>>,
    /// The applied id and membership of the state as it is now, set under the state's write
    /// lock, so a writer holding that lock reads rows and id of one moment.
    applied: Mutex<(Option<LogId>, StoredMembership)>,
    /// Held from taking the changed rows until their commit, so writes land in order: a
    /// later write never lands under an earlier one's older rows.
    writing: Mutex<()>,
}

fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

impl RowWriter {
    fn write_state(&self) -> std::sync::RwLockWriteGuard<'_, State> {
        self.state
            .write()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// The state's write lock, refused when an apply panicked while holding it: its batch
    /// may be half applied, with the applied id still before it, and such rows must not be
    /// made durable.
    fn write_whole_state(&self) -> Result<std::sync::RwLockWriteGuard<'_, State>, String> {
        self.state
            .write()
            .map_err(|_| "an apply failed part way; the state's rows are not written".to_string())
    }

    /// Records the applied id and membership of the state (call with its write lock held).
    fn set_applied(&self, applied: Option<LogId>, membership: &StoredMembership) {
        *lock(&self.applied) = (applied, membership.clone());
    }

    /// Writes the changed rows with their applied id and membership, durably. Blocking. On
    /// failure the rows stay marked as changed, for the next write.
    fn write(&self) -> Result<(), String> {
        let _writing = lock(&self.writing);
        let (dirty, changes, applied, membership) = {
            let mut state = self.write_whole_state()?;
            let dirty = state.take_dirty();
            let changes: Result<Vec<_>, String> = dirty
                .iter()
                .map(|key| Ok((key.to_bytes(), state.row(*key).map_err(|e| e.to_string())?)))
                .collect();
            let changes = match changes {
                Ok(changes) => changes,
                Err(error) => {
                    state.restore_dirty(dirty);
                    return Err(error);
                }
            };
            let (applied, membership) = lock(&self.applied).clone();
            (dirty, changes, applied, membership)
        };
        let written = self.commit(&changes, &applied, &membership);
        if written.is_err() {
            self.write_state().restore_dirty(dirty);
        }
        written
    }

    fn commit(
        &self,
        changes: &[(Vec<u8>, Option<Vec<u8>>)],
        applied: &Option<LogId>,
        membership: &StoredMembership,
    ) -> Result<(), String> {
        let applied = codec::encode(applied).map_err(|e| e.to_string())?;
        let membership = codec::encode(membership).map_err(|e| e.to_string())?;
        let commit = || -> Result<(), redb::Error> {
            let txn = self.db.begin_write()?;
            {
                let mut rows = txn.open_table(ROWS)?;
                for (key, value) in changes {
                    match value {
                        Some(value) => rows.insert(key.as_slice(), value.as_slice())?,
                        None => rows.remove(key.as_slice())?,
                    };
                }
                let mut meta = txn.open_table(META)?;
                meta.insert(KEY_APPLIED, applied.as_slice())?;
                meta.insert(KEY_MEMBERSHIP, membership.as_slice())?;
            }
            txn.commit()?;
            Ok(())
        };
        commit().map_err(|e| e.to_string())
    }
}

fn sm_error(verb: ErrorVerb) -> impl Fn(&dyn std::fmt::Display) -> StorageError {
    move |error| {
        StorageIOError::new(
            ErrorSubject::StateMachine,
            verb,
            openraft::AnyError::error(error),
        )
        .into()
    }
}

fn snapshot_error(verb: ErrorVerb) -> impl Fn(&dyn std::fmt::Display) -> StorageError {
    move |error| {
        StorageIOError::new(
            ErrorSubject::Snapshot(None),
            verb,
            openraft::AnyError::error(error),
        )
        .into()
    }
}

/// What `state.redb` says on open.
struct Loaded {
    state: State,
    last_applied: Option<LogId>,
    membership: StoredMembership,
}

fn load(db: &Database) -> Result<Loaded, String> {
    let txn = db.begin_read().map_err(|e| e.to_string())?;
    let rows = txn.open_table(ROWS).map_err(|e| e.to_string())?;
    let mut state = State::default();
    for item in rows.iter().map_err(|e| e.to_string())? {
        let (key, value) = item.map_err(|e| e.to_string())?;
        state
            .load_row(key.value(), value.value())
            .map_err(|e| e.to_string())?;
    }
    let meta = txn.open_table(META).map_err(|e| e.to_string())?;
    state.rebuild_indexes();
    let last_applied = read_meta(&meta, KEY_APPLIED)?.flatten();
    let membership = read_meta(&meta, KEY_MEMBERSHIP)?.unwrap_or_default();
    Ok(Loaded {
        state,
        last_applied,
        membership,
    })
}

fn read_meta<T: serde::de::DeserializeOwned>(
    table: &impl ReadableTable<&'static str, &'static [u8]>,
    key: &str,
) -> Result<Option<T>, String> {
    match table.get(key).map_err(|e| e.to_string())? {
        Some(value) => codec::decode(value.value())
            .map(Some)
            .map_err(|e| e.to_string()),
        None => Ok(None),
    }
}

impl StateStore {
    /// Opens (or creates) `state.redb` at `path`, with snapshots kept in `snapshot_dir`,
    /// recording what it applies with `marker` (from the node's log store).
    pub fn open(
        path: &Path,
        snapshot_dir: &Path,
        marker: AppliedMarker,
    ) -> Result<(StateStore, StateView), String> {
        let db = Database::builder()
            .set_cache_size(STATE_CACHE_BYTES)
            .create(path)
            .map_err(|e| e.to_string())?;
        StateStore::on(db, snapshot_dir, marker)
    }

    /// Opens (or creates) the state on a redb storage backend (the simulation's disk), with
    /// snapshots kept in `snapshot_dir`.
    pub fn open_backend(
        backend: impl redb::StorageBackend,
        snapshot_dir: &Path,
        marker: AppliedMarker,
    ) -> Result<(StateStore, StateView), String> {
        let db = Database::builder()
            .set_cache_size(STATE_CACHE_BYTES)
            .create_with_backend(backend)
            .map_err(|e| e.to_string())?;
        StateStore::on(db, snapshot_dir, marker)
    }

    fn on(
        db: Database,
        snapshot_dir: &Path,
        marker: AppliedMarker,
    ) -> Result<(StateStore, StateView), String> {
        let files = SnapshotFiles::open(snapshot_dir)
            .map_err(|e| format!("cannot create {}: {e}", snapshot_dir.display()))?;
        let txn = db.begin_write().map_err(|e| e.to_string())?;
        txn.open_table(ROWS).map_err(|e| e.to_string())?;
        txn.open_table(META).map_err(|e| e.to_string())?;
        txn.commit().map_err(|e| e.to_string())?;
        let loaded = load(&db)?;
        let current = current_snapshot_meta(&db)?;
        files.remove_all_but(current.as_ref().map(|m| m.snapshot_id.as_str()), false);
        codec::set_write_version(loaded.state.format_version());
        let state = Arc::new(RwLock::new(loaded.state));
        let (applied_tx, applied_rx) = watch::channel(loaded.last_applied);
        let rows = Arc::new(RowWriter {
            db: Arc::new(db),
            state: state.clone(),
            applied: Mutex::new((loaded.last_applied, loaded.membership.clone())),
            writing: Mutex::new(()),
        });
        let store = StateStore {
            files,
            rows,
            applied_tx,
            last_applied: loaded.last_applied,
            membership: loaded.membership,
            marker,
            rows_epoch: rows_epoch(loaded.last_applied),
        };
        Ok((
            store,
            StateView {
                state,
                applied: applied_rx,
            },
        ))
    }

    /// Whether `proposal` is a `SetFormat` whose members were checked under another
    /// membership than the one applied now.
    fn checked_other_members(&self, proposal: &crate::command::Proposal) -> bool {
        match &proposal.command {
            crate::command::Command::SetFormat { members, .. } => {
                members.as_ref() != self.membership.log_id().as_ref()
            }
            _ => false,
        }
    }

    /// A handle for what is done to `state.redb` beside applying: backups, restores.
    pub fn admin(&self) -> StateAdmin {
        StateAdmin {
            rows: self.rows.clone(),
        }
    }

    /// Makes what was just applied durable before anyone sees it: the applied mark names the
    /// batch's last entry (after a crash the node re-applies from the rows' applied id up to
    /// it before it starts, so it never shows less than it showed before; ARCHITECTURE.md,
    /// "Cheap applies and the applied mark"), and once every `ROWS_EVERY_ENTRIES` entries,
    /// or when many rows wait, the changed rows go to redb first.
    async fn persist_applied(&mut self, rows_waiting: usize) -> Result<(), StorageError> {
        let epoch = rows_epoch(self.last_applied);
        let write_rows = epoch != self.rows_epoch || rows_waiting > ROWS_WAITING_MAX;
        let mark = match self.last_applied {
            Some(applied) => Some(
                self.marker
                    .ready(applied)
                    .await
                    .map_err(|e| sm_error(ErrorVerb::Write)(&e))?,
            ),
            None => None,
        };
        if !write_rows && mark.is_none() {
            return Ok(());
        }
        let rows = self.rows.clone();
        // The rows and the mark in one trip to the blocking pool, the mark after the rows.
        crate::runtime::blocking(move || -> Result<(), String> {
            if write_rows {
                rows.write()?;
            }
            if let Some(mark) = mark {
                mark.write().map_err(|e| e.to_string())?;
            }
            Ok(())
        })
        .await
        .map_err(|e| sm_error(ErrorVerb::Write)(&e))?
        .map_err(|e| sm_error(ErrorVerb::Write)(&e))?;
        if write_rows {
            self.rows_epoch = epoch;
        }
        Ok(())
    }
}

/// Says so when the cluster runs a format newer than this build reads (it was moved on
/// without this node, which then cannot follow the log).
fn warn_if_unreadable(state: &State) {
    if state.format_version() > codec::max_version() {
        tracing::error!(
            cluster = state.format_version(),
            reads = codec::max_version(),
            "the cluster runs a format this build does not read: upgrade this node"
        );
    }
}

/// Backups and restores on `state.redb`, beside the state machine. Cheap to clone.
#[derive(Clone)]
pub struct StateAdmin {
    rows: Arc<RowWriter>,
}

/// What a backup wrote.
#[derive(Debug, Clone)]
pub struct BackupWritten {
    pub header: BackupHeader,
    pub rows: u64,
    pub bytes: u64,
}

impl StateAdmin {
    /// Writes a backup of the applied state: the rows changed so far are written to redb,
    /// then streamed row by row from one read (every row with the applied log id of the same
    /// commit). Applies go on meanwhile.
    pub fn write_backup(&self, out: impl Write) -> Result<BackupWritten, BackupError> {
        let store = |e: &dyn std::fmt::Display| BackupError::Store(e.to_string());
        self.rows.write().map_err(|e| store(&e))?;
        let txn = self.rows.db.begin_read().map_err(|e| store(&e))?;
        let meta = txn.open_table(META).map_err(|e| store(&e))?;
        let applied: Option<LogId> = read_meta(&meta, KEY_APPLIED)
            .map_err(|e| store(&e))?
            .flatten();
        let rows = txn.open_table(ROWS).map_err(|e| store(&e))?;
        let cluster_id = rows
            .get(RowKey::ClusterId.to_bytes().as_slice())
            .map_err(|e| store(&e))?
            .map(|value| codec::decode::<String>(value.value()))
            .transpose()
            .map_err(|e| store(&e))?;
        let header = BackupHeader {
            cluster_id,
            last_log: applied.map(|id| (id.leader_id.term, id.index)),
            created_ms: crate::runtime::now_ms(),
            shoal_version: env!("CARGO_PKG_VERSION").to_string(),
        };
        let mut writer = BackupWriter::start(out, &header)?;
        for item in rows.iter().map_err(|e| store(&e))? {
            let (key, value) = item.map_err(|e| store(&e))?;
            writer.row(key.value(), value.value())?;
        }
        let (_, rows, bytes) = writer.finish()?;
        Ok(BackupWritten {
            header,
            rows,
            bytes,
        })
    }

    /// Whether a restore has not yet made its first snapshot.
    pub fn restore_pending(&self) -> Result<bool, String> {
        let txn = self.rows.db.begin_read().map_err(|e| e.to_string())?;
        let meta = txn.open_table(META).map_err(|e| e.to_string())?;
        Ok(read_meta::<bool>(&meta, KEY_RESTORE_PENDING)?.unwrap_or(false))
    }

    /// Records that the restore is complete (its rows are in a snapshot, the log before it
    /// purged).
    pub fn finish_restore(&self) -> Result<(), String> {
        let txn = self.rows.db.begin_write().map_err(|e| e.to_string())?;
        {
            let mut meta = txn.open_table(META).map_err(|e| e.to_string())?;
            meta.remove(KEY_RESTORE_PENDING)
                .map_err(|e| e.to_string())?;
        }
        txn.commit().map_err(|e| e.to_string())
    }
}

/// Creates `state.redb` at `path` holding `state`'s rows, no applied log id and the restore
/// marked as pending: written whole under another name, then renamed, so `path` either does
/// not exist or holds the whole restore.
pub fn write_restored(path: &Path, state: &State) -> Result<(), String> {
    let context = |e: &dyn std::fmt::Display| format!("cannot write {}: {e}", path.display());
    let partial = path.with_extension("redb.restoring");
    let _ = fs::remove_file(&partial);
    fill_restored(&partial, state).map_err(|e| context(&e))?;
    fs::rename(&partial, path).map_err(|e| context(&e))?;
    if let Some(dir) = path.parent() {
        fs::File::open(dir)
            .and_then(|dir| dir.sync_all())
            .map_err(|e| context(&e))?;
    }
    Ok(())
}

fn fill_restored(path: &Path, state: &State) -> Result<(), String> {
    let context = |e: &dyn std::fmt::Display| e.to_string();
    let db = Database::builder()
        .set_cache_size(STATE_CACHE_BYTES)
        .create(path)
        .map_err(|e| context(&e))?;
    let pending = codec::encode(&true).map_err(|e| context(&e))?;
    let txn = db.begin_write().map_err(|e| context(&e))?;
    {
        let mut rows = txn.open_table(ROWS).map_err(|e| context(&e))?;
        for key in state.row_keys() {
            let Some(value) = state.row(key).map_err(|e| context(&e))? else {
                continue;
            };
            rows.insert(key.to_bytes().as_slice(), value.as_slice())
                .map_err(|e| context(&e))?;
        }
        let mut meta = txn.open_table(META).map_err(|e| context(&e))?;
        meta.insert(KEY_RESTORE_PENDING, pending.as_slice())
            .map_err(|e| context(&e))?;
    }
    txn.commit().map_err(|e| context(&e))
}

/// Builds snapshots from a consistent read of `state.redb`.
pub struct SnapshotBuilder {
    files: SnapshotFiles,
    rows: Arc<RowWriter>,
}

/// Streams the row table into `path` (fsynced) and returns the metadata of what was written.
fn write_snapshot_file(db: &Database, path: &Path) -> Result<SnapshotMeta, String> {
    let txn = db.begin_read().map_err(|e| e.to_string())?;
    let meta = txn.open_table(META).map_err(|e| e.to_string())?;
    let last_log_id: Option<LogId> = read_meta(&meta, KEY_APPLIED)?.flatten();
    let last_membership: StoredMembership = read_meta(&meta, KEY_MEMBERSHIP)?.unwrap_or_default();
    let rows = txn.open_table(ROWS).map_err(|e| e.to_string())?;
    let file = fs::File::create(path).map_err(|e| e.to_string())?;
    let mut out = BufWriter::new(file);
    for item in rows.iter().map_err(|e| e.to_string())? {
        let (key, value) = item.map_err(|e| e.to_string())?;
        write_record(&mut out, key.value(), value.value()).map_err(|e| e.to_string())?;
    }
    let file = out.into_inner().map_err(|e| e.to_string())?;
    file.sync_all().map_err(|e| e.to_string())?;
    // The time for people, the random part so two snapshots of one entry never collide.
    let unique = format!(
        "{}{:04x}",
        crate::runtime::now_ms(),
        crate::runtime::random_u64() & 0xffff
    );
    let snapshot_id = match last_log_id {
        Some(id) => format!("{}-{}-{unique}", id.leader_id.term, id.index),
        None => format!("0-0-{unique}"),
    };
    Ok(SnapshotMeta {
        last_log_id,
        last_membership,
        snapshot_id,
    })
}

fn current_snapshot_meta(db: &Database) -> Result<Option<SnapshotMeta>, String> {
    let txn = db.begin_read().map_err(|e| e.to_string())?;
    let table = txn.open_table(META).map_err(|e| e.to_string())?;
    read_meta(&table, KEY_SNAPSHOT)
}

fn save_snapshot_meta(db: &Database, meta: &SnapshotMeta) -> Result<(), String> {
    let bytes = codec::encode(meta).map_err(|e| e.to_string())?;
    let txn = db.begin_write().map_err(|e| e.to_string())?;
    {
        let mut table = txn.open_table(META).map_err(|e| e.to_string())?;
        table
            .insert(KEY_SNAPSHOT, bytes.as_slice())
            .map_err(|e| e.to_string())?;
    }
    txn.commit().map_err(|e| e.to_string())
}

/// Builds a snapshot file and publishes it unless a newer one is current; returns the current
/// snapshot (the new one, or the newer one that won) with its file opened.
fn build_and_publish(
    db: &Database,
    files: &SnapshotFiles,
) -> Result<(SnapshotMeta, fs::File), String> {
    let building = files.temp_path("building");
    let meta = write_snapshot_file(db, &building)?;
    let _guard = files.lock();
    if let Some(current) = current_snapshot_meta(db)?
        && current.last_log_id >= meta.last_log_id
    {
        let _ = fs::remove_file(&building);
        let file =
            fs::File::open(files.path_of(&current.snapshot_id)).map_err(|e| e.to_string())?;
        return Ok((current, file));
    }
    let path = files
        .promote(&building, &meta.snapshot_id)
        .map_err(|e| e.to_string())?;
    save_snapshot_meta(db, &meta)?;
    files.remove_all_but(Some(&meta.snapshot_id), true);
    let file = fs::File::open(path).map_err(|e| e.to_string())?;
    Ok((meta, file))
}

impl RaftSnapshotBuilder<TypeConfig> for SnapshotBuilder {
    async fn build_snapshot(&mut self) -> Result<Snapshot<TypeConfig>, StorageError> {
        let files = self.files.clone();
        let rows = self.rows.clone();
        // The rows changed since their last write first, so the snapshot is of the state now.
        let (meta, file) = crate::runtime::blocking(move || {
            rows.write()?;
            build_and_publish(&rows.db, &files)
        })
        .await
        .map_err(|e| snapshot_error(ErrorVerb::Write)(&e))?
        .map_err(|e| snapshot_error(ErrorVerb::Write)(&e))?;
        tracing::debug!(snapshot_id = %meta.snapshot_id, "built snapshot");
        crate::metrics::raft().snapshots_built.inc();
        Ok(Snapshot {
            meta,
            snapshot: Box::new(tokio::fs::File::from_std(file)),
        })
    }
}

/// Replaces every row with the snapshot's in one redb transaction, checking each row decodes,
/// and keeps a copy of the snapshot as the current snapshot file. Returns the new state.
fn install_rows(
    db: &Database,
    files: &SnapshotFiles,
    input: fs::File,
    meta: &SnapshotMeta,
) -> Result<State, String> {
    let encode_error = |e: codec::CodecError| e.to_string();
    let meta_rows = [
        (
            KEY_APPLIED,
            codec::encode(&meta.last_log_id).map_err(encode_error)?,
        ),
        (
            KEY_MEMBERSHIP,
            codec::encode(&meta.last_membership).map_err(encode_error)?,
        ),
        (KEY_SNAPSHOT, codec::encode(meta).map_err(encode_error)?),
    ];
    let copy_path = files.temp_path("installing");
    let mut input = BufReader::new(input);
    let mut copy = BufWriter::new(fs::File::create(&copy_path).map_err(|e| e.to_string())?);
    let mut state = State::default();
    // The files' lock before redb's write transaction, in the order `build_and_publish`
    // takes them: the other way round, an install and a snapshot being built at the same
    // time could each wait for the other forever.
    let _guard = files.lock();
    let txn = db.begin_write().map_err(|e| e.to_string())?;
    {
        let mut rows = txn.open_table(ROWS).map_err(|e| e.to_string())?;
        rows.retain(|_, _| false).map_err(|e| e.to_string())?;
        while let Some((key, value)) = read_record(&mut input).map_err(|e| e.to_string())? {
            state
                .load_row(&key, &value)
                .map_err(|e| format!("snapshot {}: {e}", meta.snapshot_id))?;
            rows.insert(key.as_slice(), value.as_slice())
                .map_err(|e| e.to_string())?;
            write_record(&mut copy, &key, &value).map_err(|e| e.to_string())?;
        }
        let mut table = txn.open_table(META).map_err(|e| e.to_string())?;
        for (key, value) in meta_rows {
            table
                .insert(key, value.as_slice())
                .map_err(|e| e.to_string())?;
        }
    }
    state.rebuild_indexes();
    copy.into_inner()
        .map_err(|e| e.to_string())?
        .sync_all()
        .map_err(|e| e.to_string())?;
    files
        .promote(&copy_path, &meta.snapshot_id)
        .map_err(|e| e.to_string())?;
    txn.commit().map_err(|e| e.to_string())?;
    files.remove_all_but(Some(&meta.snapshot_id), true);
    files.remove_temporaries("receiving");
    Ok(state)
}

impl RaftStateMachine<TypeConfig> for StateStore {
    type SnapshotBuilder = SnapshotBuilder;

    async fn applied_state(&mut self) -> Result<(Option<LogId>, StoredMembership), StorageError> {
        Ok((self.last_applied, self.membership.clone()))
    }

    async fn apply<I>(&mut self, entries: I) -> Result<Vec<Outcome>, StorageError>
    where
        I: IntoIterator<Item = crate::types::Entry> + Send,
        I::IntoIter: Send,
    {
        let started = std::time::Instant::now();
        let mut outcomes = Vec::new();
        let rows_waiting = {
            let shared = self.rows.clone();
            let mut state = shared.write_state();
            for entry in entries {
                self.last_applied = Some(entry.log_id);
                let outcome = match entry.payload {
                    EntryPayload::Blank => Outcome::Applied,
                    EntryPayload::Normal(proposal) if self.checked_other_members(&proposal) => {
                        // Applied as an empty entry, the same on every node: each has
                        // applied the same memberships before it.
                        let empty = crate::command::Proposal {
                            time_ms: proposal.time_ms,
                            command: crate::command::Command::Batch(Vec::new()),
                        };
                        state.apply_entry(entry.log_id.leader_id.term, entry.log_id.index, &empty);
                        Outcome::Refused {
                            reason: "the members changed after their formats were checked"
                                .to_string(),
                        }
                    }
                    EntryPayload::Normal(proposal) => state.apply_entry(
                        entry.log_id.leader_id.term,
                        entry.log_id.index,
                        &proposal,
                    ),
                    EntryPayload::Membership(membership) => {
                        self.membership = StoredMembership::new(Some(entry.log_id), membership);
                        Outcome::Applied
                    }
                };
                outcomes.push(outcome);
            }
            codec::set_write_version(state.format_version());
            warn_if_unreadable(&state);
            self.rows.set_applied(self.last_applied, &self.membership);
            state.dirty_rows()
        };
        self.persist_applied(rows_waiting).await?;
        self.applied_tx.send_replace(self.last_applied);
        let metrics = crate::metrics::raft();
        metrics.entries_applied.inc_by(outcomes.len() as u64);
        crate::metrics::observe(&metrics.apply_seconds, started.elapsed());
        Ok(outcomes)
    }

    async fn get_snapshot_builder(&mut self) -> SnapshotBuilder {
        SnapshotBuilder {
            files: self.files.clone(),
            rows: self.rows.clone(),
        }
    }

    async fn begin_receiving_snapshot(&mut self) -> Result<Box<tokio::fs::File>, StorageError> {
        let path = self.files.temp_path("receiving");
        let file = tokio::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .create_new(true)
            .open(&path)
            .await
            .map_err(|e| snapshot_error(ErrorVerb::Write)(&e))?;
        Ok(Box::new(file))
    }

    async fn install_snapshot(
        &mut self,
        meta: &SnapshotMeta,
        snapshot: Box<tokio::fs::File>,
    ) -> Result<(), StorageError> {
        use tokio::io::AsyncSeekExt;
        let mut snapshot = *snapshot;
        snapshot
            .seek(std::io::SeekFrom::Start(0))
            .await
            .map_err(|e| snapshot_error(ErrorVerb::Read)(&e))?;
        let input = snapshot.into_std().await;
        let files = self.files.clone();
        let meta_owned = meta.clone();
        let rows = self.rows.clone();
        // No write of the old state's rows may land between the snapshot's rows and the new
        // state taking the old one's place.
        crate::runtime::blocking(move || -> Result<(), String> {
            let _writing = lock(&rows.writing);
            let state = install_rows(&rows.db, &files, input, &meta_owned)?;
            let mut current = rows.write_state();
            let tally = current.tally;
            *current = state;
            current.tally = tally;
            codec::set_write_version(current.format_version());
            rows.set_applied(meta_owned.last_log_id, &meta_owned.last_membership);
            Ok(())
        })
        .await
        .map_err(|e| snapshot_error(ErrorVerb::Write)(&e))?
        .map_err(|e| snapshot_error(ErrorVerb::Write)(&e))?;
        crate::metrics::raft().snapshots_installed.inc();
        self.last_applied = meta.last_log_id;
        self.membership = meta.last_membership.clone();
        self.applied_tx.send_replace(self.last_applied);
        tracing::info!(snapshot_id = %meta.snapshot_id, "installed snapshot");
        Ok(())
    }

    async fn get_current_snapshot(&mut self) -> Result<Option<Snapshot<TypeConfig>>, StorageError> {
        let rows = self.rows.clone();
        let files = self.files.clone();
        let current = crate::runtime::blocking(
            move || -> Result<Option<(SnapshotMeta, fs::File)>, String> {
                let _guard = files.lock();
                let Some(meta) = current_snapshot_meta(&rows.db)? else {
                    return Ok(None);
                };
                match fs::File::open(files.path_of(&meta.snapshot_id)) {
                    Ok(file) => Ok(Some((meta, file))),
                    // Metadata without its file cannot be served; openraft builds a new snapshot.
                    Err(error) if error.kind() == std::io::ErrorKind::NotFound => Ok(None),
                    Err(error) => Err(error.to_string()),
                }
            },
        )
        .await
        .map_err(|e| snapshot_error(ErrorVerb::Read)(&e))?
        .map_err(|e| snapshot_error(ErrorVerb::Read)(&e))?;
        Ok(current.map(|(meta, file)| Snapshot {
            meta,
            snapshot: Box::new(tokio::fs::File::from_std(file)),
        }))
    }
}

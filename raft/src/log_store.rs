//! The Raft log on redb: `raft-log.redb` holds entries, the vote, the committed id (written
//! by the append after openraft reports it, never by a transaction of its own) and the last
//! purged id.
//!
//! Every redb call runs on the blocking pool, never on the async reactor. Each append is one
//! durable redb commit (one `fdatasync`), and openraft hears it is flushed when that commit
//! returns. The newest entries stay in memory as well ([`Tail`]): every node reads each entry
//! back to apply it (openraft's core task awaits that read) and a leader once more for each
//! follower, all soon after the append, and those reads are served without redb or a thread
//! hop. openraft 0.9 awaits every append's flush before it appends again, so a flusher
//! thread making one durable commit for several appends never found two to group: it only
//! added a second commit and a thread hop to every append.
//!
//! Beside the log lies `applied.mark` ([`AppliedMark`]): the last entry the state machine
//! applied, written through [`AppliedMarker`] once the log holds that entry durably. On
//! open, a mark whose entry the log holds raises the committed id openraft reads, so a node
//! re-applies at start everything it had applied before it stopped.

use std::collections::VecDeque;
use std::fmt::Debug;
use std::ops::{Bound, RangeBounds};
use std::path::Path;
use std::sync::{Arc, Mutex};

use openraft::storage::{LogFlushed, RaftLogStorage};
use openraft::{ErrorSubject, ErrorVerb, LogState, RaftLogReader, StorageIOError, Vote};
use redb::{Database, ReadableDatabase, ReadableTable, TableDefinition};
use serde::Serialize;
use serde::de::DeserializeOwned;

use crate::applied_mark::AppliedMark;
use crate::codec;
use crate::types::{Entry, LogId, NodeId, StorageError, TypeConfig};

const ENTRIES: TableDefinition<'_, u64, &[u8]> = TableDefinition::new("entries");
const META: TableDefinition<'_, &str, &[u8]> = TableDefinition::new("meta");

const KEY_VOTE: &str = "vote";
const KEY_COMMITTED: &str = "committed";
const KEY_LAST_PURGED: &str = "last_purged";
/// The log store; cheap to clone (the reader openraft asks for is a clone).
#[derive(Clone)]
pub struct LogStore {
    db: Arc<Database>,
    durability: Arc<Durability>,
    mark: Arc<Mutex<AppliedMark>>,
    /// The applied mark found on open, when the log holds its entry: the committed id
    /// openraft reads is at least this.
    marked: Option<LogId>,
    /// The newest committed id openraft saved and no append has written yet.
    unsaved_committed: Arc<Mutex<Option<LogId>>>,
    /// The newest entries, as flushed.
    tail: Arc<Mutex<Tail>>,
}

/// Entries kept in memory at most, and their encoded bytes at most (the newest are kept).
const TAIL_ENTRIES_MAX: usize = 1024;
const TAIL_BYTES_MAX: usize = 16 * 1024 * 1024;

/// The last entries of the log, copied in memory: a run of consecutive indexes that always
/// ends at the log's last entry (or is empty). An append extends it (or starts it afresh
/// after a gap), a truncation cuts its end, a purge its start, and the oldest entries go
/// past [`TAIL_ENTRIES_MAX`] or [`TAIL_BYTES_MAX`]. A read it covers wholly is answered
/// from here; any other goes to redb.
#[derive(Debug, Default)]
struct Tail {
    /// Each entry with its encoded size, oldest first.
    entries: VecDeque<(Entry, usize)>,
    bytes: usize,
}

impl Tail {
    fn first_index(&self) -> Option<u64> {
        self.entries.front().map(|(entry, _)| entry.log_id.index)
    }

    fn next_index(&self) -> Option<u64> {
        self.entries.back().map(|(entry, _)| entry.log_id.index + 1)
    }

    /// `entries` (consecutive, each with its encoded size) were flushed at the log's end.
    fn appended(&mut self, entries: Vec<(Entry, usize)>) {
        let Some((first, _)) = entries.first() else {
            return;
        };
        let first = first.log_id.index;
        // An append replaces what the log held from `first` on; one past a gap (after a
        // snapshot was installed) leaves nothing of the old run at the log's end.
        self.truncated(first);
        if self.next_index().is_some_and(|next| next != first) {
            self.entries.clear();
            self.bytes = 0;
        }
        for (entry, size) in entries {
            self.bytes += size;
            self.entries.push_back((entry, size));
        }
        while self.entries.len() > TAIL_ENTRIES_MAX || self.bytes > TAIL_BYTES_MAX {
            self.pop_front();
        }
    }

    /// Entries from `since` on are gone.
    fn truncated(&mut self, since: u64) {
        while self
            .entries
            .back()
            .is_some_and(|(entry, _)| entry.log_id.index >= since)
        {
            if let Some((_, size)) = self.entries.pop_back() {
                self.bytes -= size;
            }
        }
    }

    /// Entries up to `upto` are gone.
    fn purged(&mut self, upto: u64) {
        while self.first_index().is_some_and(|first| first <= upto) {
            self.pop_front();
        }
    }

    fn pop_front(&mut self) {
        if let Some((_, size)) = self.entries.pop_front() {
            self.bytes -= size;
        }
    }

    /// The entries in `start..end`, when this holds every entry the log holds there.
    fn read(&self, start: Bound<u64>, end: Bound<u64>) -> Option<Vec<Entry>> {
        let (first, next) = self.first_index().zip(self.next_index())?;
        let start = match start {
            Bound::Included(start) => start,
            Bound::Excluded(start) => start.checked_add(1)?,
            Bound::Unbounded => 0,
        };
        let end = match end {
            Bound::Included(end) => end.saturating_add(1),
            Bound::Excluded(end) => end,
            Bound::Unbounded => next,
        };
        // The run ends where the log does, so a range past it asks for what the log does not
        // hold either: redb answers that, as it did before entries were kept here.
        if start < first || end > next {
            return None;
        }
        if start >= end {
            return Some(Vec::new());
        }
        let from = usize::try_from(start - first).ok()?;
        let to = usize::try_from(end - first).ok()?;
        Some(
            self.entries
                .range(from..to)
                .map(|(entry, _)| entry.clone())
                .collect(),
        )
    }
}

/// Which appended entries are durable: every append gets a sequence number, and says once its
/// commit is durable. Every append is durable when it returns, so the applied mark never
/// waits here today; this keeps the mark from outrunning the log should appends ever be made
/// durable later than they return (openraft 0.10 flushes asynchronously).
#[derive(Debug)]
struct Durability {
    unflushed: Mutex<Unflushed>,
    /// The newest append sequence number made durable.
    flushed: tokio::sync::watch::Sender<u64>,
}

#[derive(Debug, Default)]
struct Unflushed {
    /// `(first index, last index, sequence)` of appends not yet known durable, oldest first.
    /// A truncation cuts them, so an index is in at most one.
    appends: VecDeque<(u64, u64, u64)>,
    next_seq: u64,
}

impl Durability {
    fn new() -> Durability {
        Durability {
            unflushed: Mutex::new(Unflushed::default()),
            flushed: tokio::sync::watch::channel(0).0,
        }
    }

    fn unflushed(&self) -> std::sync::MutexGuard<'_, Unflushed> {
        self.unflushed
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Records an append of `first..=last`; returns its sequence number.
    fn appended(&self, first: u64, last: u64) -> u64 {
        let mut unflushed = self.unflushed();
        unflushed.next_seq += 1;
        let seq = unflushed.next_seq;
        unflushed.appends.push_back((first, last, seq));
        seq
    }

    /// Entries from `since` on are gone.
    fn truncated(&self, since: u64) {
        let mut unflushed = self.unflushed();
        unflushed.appends.retain(|(first, _, _)| *first < since);
        for (_, last, _) in &mut unflushed.appends {
            *last = (*last).min(since.saturating_sub(1));
        }
    }

    /// Every append up to sequence number `seq` is durable.
    fn flushed(&self, seq: u64) {
        self.unflushed()
            .appends
            .retain(|(_, _, appended)| *appended > seq);
        self.flushed.send_if_modified(|flushed| {
            let newer = seq > *flushed;
            *flushed = (*flushed).max(seq);
            newer
        });
    }

    /// Waits until the entry at `index`, as the log holds it now, is durable.
    async fn durable(&self, index: u64) -> Result<(), String> {
        let pending = self
            .unflushed()
            .appends
            .iter()
            .find(|(first, last, _)| (*first..=*last).contains(&index))
            .map(|(_, _, seq)| *seq);
        if let Some(seq) = pending {
            let mut flushed = self.flushed.subscribe();
            flushed
                .wait_for(|flushed| *flushed >= seq)
                .await
                .map_err(|_| "the log is closed".to_string())?;
        }
        Ok(())
    }
}

/// What the state machine uses to record what it applied (see [`AppliedMark`]). Cheap to
/// clone.
#[derive(Clone)]
pub struct AppliedMarker {
    durability: Arc<Durability>,
    mark: Arc<Mutex<AppliedMark>>,
}

impl AppliedMarker {
    /// Waits until the log holds `applied` durably, then gives the write that records it as
    /// the last entry applied: so a mark always names an entry this node's durable log holds.
    /// openraft 0.9 awaits each append's flush before it goes on (`append_to_log`), so today
    /// the entry is durable already; the wait keeps this true for a version that applies
    /// what it has only accepted (openraft 0.10 no longer waits).
    pub async fn ready(&self, applied: LogId) -> Result<MarkWrite, String> {
        self.durability.durable(applied.index).await?;
        Ok(MarkWrite {
            mark: self.mark.clone(),
            applied,
        })
    }
}

/// A mark whose entry the log holds durably, to be written: blocking IO, done with the
/// caller's own blocking work.
pub struct MarkWrite {
    mark: Arc<Mutex<AppliedMark>>,
    applied: LogId,
}

impl MarkWrite {
    /// Writes the mark and `fdatasync`s it.
    pub fn write(self) -> std::io::Result<()> {
        self.mark
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .write(&self.applied)
    }
}

/// redb's page cache for the log (its default is 1 GiB): entries are read back once, to be
/// applied and sent to followers, soon after they were written.
const LOG_CACHE_BYTES: usize = 32 * 1024 * 1024;

fn log_error(verb: ErrorVerb) -> impl Fn(&dyn std::fmt::Display) -> StorageError {
    move |error| {
        StorageIOError::new(ErrorSubject::Logs, verb, openraft::AnyError::error(error)).into()
    }
}

/// The applied mark's file beside the log at `log_path`.
fn mark_path(log_path: &Path) -> std::path::PathBuf {
    log_path.with_file_name("applied.mark")
}

impl LogStore {
    /// Opens (or creates) `raft-log.redb` at `path`, and `applied.mark` beside it.
    pub fn open(path: &Path) -> Result<LogStore, redb::Error> {
        let db = Database::builder()
            .set_cache_size(LOG_CACHE_BYTES)
            .create(path)?;
        let mark_path = mark_path(path);
        let created = !mark_path.exists();
        let mark = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(&mark_path)?;
        if created && let Some(dir) = mark_path.parent() {
            // The new file's name, durable before any mark is written into it.
            std::fs::File::open(dir)?.sync_all()?;
        }
        LogStore::on(db, redb::backends::FileBackend::new(mark)?)
    }

    /// Opens (or creates) the log and its applied mark on redb storage backends (the
    /// simulation's disks).
    pub fn open_backend(
        backend: impl redb::StorageBackend,
        mark: impl redb::StorageBackend,
    ) -> Result<LogStore, redb::Error> {
        let db = Database::builder()
            .set_cache_size(LOG_CACHE_BYTES)
            .create_with_backend(backend)?;
        LogStore::on(db, mark)
    }

    fn on(db: Database, mark: impl redb::StorageBackend) -> Result<LogStore, redb::Error> {
        let txn = db.begin_write()?;
        txn.open_table(ENTRIES)?;
        txn.open_table(META)?;
        txn.commit()?;
        let (mut mark, found) = AppliedMark::open(mark)?;
        let marked = match found {
            Some(found) => marked_entry(&db, found, &mut mark)?,
            None => None,
        };
        let db = Arc::new(db);
        let durability = Arc::new(Durability::new());
        let mark = Arc::new(Mutex::new(mark));
        Ok(LogStore {
            db,
            durability,
            mark,
            marked,
            unsaved_committed: Arc::new(Mutex::new(None)),
            tail: Arc::new(Mutex::new(Tail::default())),
        })
    }

    /// The handle the state machine records what it applied with.
    pub fn applied_marker(&self) -> AppliedMarker {
        AppliedMarker {
            durability: self.durability.clone(),
            mark: self.mark.clone(),
        }
    }

    fn unsaved_committed(&self) -> std::sync::MutexGuard<'_, Option<LogId>> {
        self.unsaved_committed
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    fn tail(&self) -> std::sync::MutexGuard<'_, Tail> {
        self.tail
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Runs `work` against the database on the blocking pool.
    async fn blocking<T, F>(&self, verb: ErrorVerb, work: F) -> Result<T, StorageError>
    where
        T: Send + 'static,
        F: FnOnce(&Database) -> Result<T, String> + Send + 'static,
    {
        let db = self.db.clone();
        crate::runtime::blocking(move || work(&db))
            .await
            .map_err(|join| log_error(verb)(&join))?
            .map_err(|message| log_error(verb)(&message))
    }

    async fn read_meta<T: DeserializeOwned + Send + 'static>(
        &self,
        key: &'static str,
    ) -> Result<Option<T>, StorageError> {
        self.blocking(ErrorVerb::Read, move |db| {
            let txn = db.begin_read().map_err(|e| e.to_string())?;
            let table = txn.open_table(META).map_err(|e| e.to_string())?;
            let Some(value) = table.get(key).map_err(|e| e.to_string())? else {
                return Ok(None);
            };
            codec::decode(value.value())
                .map(Some)
                .map_err(|e| e.to_string())
        })
        .await
    }

    /// Writes a meta value in a durable commit of its own.
    async fn write_meta<T: Serialize>(
        &self,
        key: &'static str,
        value: &T,
    ) -> Result<(), StorageError> {
        let bytes = codec::encode(value).map_err(|e| log_error(ErrorVerb::Write)(&e))?;
        self.blocking(ErrorVerb::Write, move |db| {
            let txn = db.begin_write().map_err(|e| e.to_string())?;
            {
                let mut table = txn.open_table(META).map_err(|e| e.to_string())?;
                table
                    .insert(key, bytes.as_slice())
                    .map_err(|e| e.to_string())?;
            }
            txn.commit().map_err(|e| e.to_string())
        })
        .await
    }
}

/// The applied mark `found` if the log holds its very entry; forgets it when the log is new
/// (a restore, or a data dir whose log was removed): its entries are not the mark's.
fn marked_entry(
    db: &Database,
    found: LogId,
    mark: &mut AppliedMark,
) -> Result<Option<LogId>, redb::Error> {
    let txn = db.begin_read()?;
    let entries = txn.open_table(ENTRIES)?;
    let meta = txn.open_table(META)?;
    let new_log = entries.first()?.is_none() && meta.get(KEY_VOTE)?.is_none();
    if new_log {
        drop((entries, meta));
        mark.clear()?;
        return Ok(None);
    }
    let Some(value) = entries.get(found.index)? else {
        // Purged (a snapshot covers it, and the state was made durable before that) or never
        // flushed here: nothing to raise.
        return Ok(None);
    };
    let entry: Entry = codec::decode(value.value())
        .map_err(|e| redb::Error::Io(std::io::Error::other(e.to_string())))?;
    Ok((entry.log_id == found).then_some(found))
}

fn read_range(db: &Database, start: Bound<u64>, end: Bound<u64>) -> Result<Vec<Entry>, String> {
    let txn = db.begin_read().map_err(|e| e.to_string())?;
    let table = txn.open_table(ENTRIES).map_err(|e| e.to_string())?;
    let mut entries = Vec::new();
    for item in table
        .range::<u64>((start, end))
        .map_err(|e| e.to_string())?
    {
        let (_, value) = item.map_err(|e| e.to_string())?;
        entries.push(codec::decode(value.value()).map_err(|e| e.to_string())?);
    }
    Ok(entries)
}

impl RaftLogReader<TypeConfig> for LogStore {
    async fn try_get_log_entries<RB: RangeBounds<u64> + Clone + Debug + Send>(
        &mut self,
        range: RB,
    ) -> Result<Vec<Entry>, StorageError> {
        let start = range.start_bound().cloned();
        let end = range.end_bound().cloned();
        if let Some(entries) = self.tail().read(start, end) {
            return Ok(entries);
        }
        self.blocking(ErrorVerb::Read, move |db| read_range(db, start, end))
            .await
    }
}

impl LogStore {
    /// The id of the last entry this node holds (appended, durable or not yet), or the last
    /// purged one's when it holds none.
    pub async fn last_log_id(&self) -> Result<Option<LogId>, StorageError> {
        let last_purged: Option<LogId> = self.read_meta(KEY_LAST_PURGED).await?;
        Ok(self.last_entry_id().await?.or(last_purged))
    }

    async fn last_entry_id(&self) -> Result<Option<LogId>, StorageError> {
        self.blocking(ErrorVerb::Read, |db| {
            let txn = db.begin_read().map_err(|e| e.to_string())?;
            let table = txn.open_table(ENTRIES).map_err(|e| e.to_string())?;
            let Some((_, value)) = table.last().map_err(|e| e.to_string())? else {
                return Ok(None);
            };
            let entry: Entry = codec::decode(value.value()).map_err(|e| e.to_string())?;
            Ok(Some(entry.log_id))
        })
        .await
    }
}

impl RaftLogStorage<TypeConfig> for LogStore {
    type LogReader = LogStore;

    async fn get_log_state(&mut self) -> Result<LogState<TypeConfig>, StorageError> {
        let last_purged: Option<LogId> = self.read_meta(KEY_LAST_PURGED).await?;
        let last = self.last_entry_id().await?;
        Ok(LogState {
            last_purged_log_id: last_purged,
            last_log_id: last.or(last_purged),
        })
    }

    async fn get_log_reader(&mut self) -> LogStore {
        self.clone()
    }

    async fn save_vote(&mut self, vote: &Vote<NodeId>) -> Result<(), StorageError> {
        // Raft's safety rests on the vote surviving a crash: always fsynced.
        self.write_meta(KEY_VOTE, vote).await
    }

    async fn read_vote(&mut self) -> Result<Option<Vote<NodeId>>, StorageError> {
        self.read_meta(KEY_VOTE).await
    }

    async fn save_committed(&mut self, committed: Option<LogId>) -> Result<(), StorageError> {
        // Only an optimisation for restart (fewer entries to re-apply): a committed id lost
        // in a crash is recomputed by Raft, and the applied mark covers what this node applied.
        // So it costs no transaction of its own, which openraft would await before applying:
        // the next append writes it, and is made durable with it.
        if let Some(id) = committed {
            let index = i64::try_from(id.index).unwrap_or(i64::MAX);
            crate::metrics::raft().commit_index.set(index);
            *self.unsaved_committed() = Some(id);
        }
        Ok(())
    }

    async fn read_committed(&mut self) -> Result<Option<LogId>, StorageError> {
        let saved = self
            .read_meta::<Option<LogId>>(KEY_COMMITTED)
            .await?
            .flatten();
        // Written by the next append and durable with its flush, so it may trail what this
        // node applied; the applied mark does not (only committed entries are applied).
        let unsaved = *self.unsaved_committed();
        Ok(saved.max(unsaved).max(self.marked))
    }

    async fn append<I>(
        &mut self,
        entries: I,
        callback: LogFlushed<TypeConfig>,
    ) -> Result<(), StorageError>
    where
        I: IntoIterator<Item = Entry> + Send,
        I::IntoIter: Send,
    {
        let mut encoded: Vec<(u64, Vec<u8>)> = Vec::new();
        let mut flushed = Vec::new();
        for entry in entries {
            let bytes = codec::encode(&entry).map_err(|e| log_error(ErrorVerb::Write)(&e))?;
            let size = bytes.len();
            encoded.push((entry.log_id.index, bytes));
            flushed.push((entry, size));
        }
        crate::metrics::raft()
            .entries_appended
            .inc_by(encoded.len() as u64);
        let appended = encoded.first().zip(encoded.last()).map(|(f, l)| (f.0, l.0));
        let committed = self
            .unsaved_committed()
            .take()
            .map(|committed| codec::encode(&Some(committed)))
            .transpose()
            .map_err(|e| log_error(ErrorVerb::Write)(&e))?;
        let result = self
            .blocking(ErrorVerb::Write, move |db| {
                let txn = db.begin_write().map_err(|e| e.to_string())?;
                {
                    let mut table = txn.open_table(ENTRIES).map_err(|e| e.to_string())?;
                    for (index, bytes) in &encoded {
                        table
                            .insert(index, bytes.as_slice())
                            .map_err(|e| e.to_string())?;
                    }
                }
                if let Some(committed) = &committed {
                    let mut meta = txn.open_table(META).map_err(|e| e.to_string())?;
                    meta.insert(KEY_COMMITTED, committed.as_slice())
                        .map_err(|e| e.to_string())?;
                }
                let started = std::time::Instant::now();
                let committed = txn.commit().map_err(|e| e.to_string());
                crate::metrics::observe(
                    &crate::metrics::raft().log_flush_seconds,
                    started.elapsed(),
                );
                committed
            })
            .await;
        if let Err(error) = &result {
            callback.log_io_completed(Err(std::io::Error::other(error.to_string())));
            return result;
        }
        self.tail().appended(flushed);
        let seq = appended.map_or(0, |(first, last)| self.durability.appended(first, last));
        self.durability.flushed(seq);
        callback.log_io_completed(Ok(()));
        result
    }

    async fn truncate(&mut self, log_id: LogId) -> Result<(), StorageError> {
        self.durability.truncated(log_id.index);
        self.tail().truncated(log_id.index);
        self.blocking(ErrorVerb::Delete, move |db| {
            let txn = db.begin_write().map_err(|e| e.to_string())?;
            {
                let mut table = txn.open_table(ENTRIES).map_err(|e| e.to_string())?;
                table
                    .retain_in(log_id.index.., |_, _| false)
                    .map_err(|e| e.to_string())?;
            }
            txn.commit().map_err(|e| e.to_string())
        })
        .await
    }

    async fn purge(&mut self, log_id: LogId) -> Result<(), StorageError> {
        let purged = codec::encode(&log_id).map_err(|e| log_error(ErrorVerb::Write)(&e))?;
        self.tail().purged(log_id.index);
        self.blocking(ErrorVerb::Delete, move |db| {
            let txn = db.begin_write().map_err(|e| e.to_string())?;
            {
                let mut meta = txn.open_table(META).map_err(|e| e.to_string())?;
                meta.insert(KEY_LAST_PURGED, purged.as_slice())
                    .map_err(|e| e.to_string())?;
                let mut table = txn.open_table(ENTRIES).map_err(|e| e.to_string())?;
                table
                    .retain_in(..=log_id.index, |_, _| false)
                    .map_err(|e| e.to_string())?;
            }
            txn.commit().map_err(|e| e.to_string())
        })
        .await
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use futures::FutureExt;
    use openraft::{CommittedLeaderId, EntryPayload};

    fn id(term: u64, index: u64) -> LogId {
        LogId::new(CommittedLeaderId::new(term, 1), index)
    }

    #[test]
    fn an_entry_is_durable_once_the_append_that_holds_it_now_is_flushed() {
        let durability = Durability::new();
        let first = durability.appended(1, 3);
        let second = durability.appended(4, 5);
        let ready = |index| durability.durable(index).now_or_never().is_some();
        // Never appended here since the last flush: nothing to wait for.
        assert!(ready(6));
        assert!(!ready(2) && !ready(4));
        durability.flushed(first);
        assert!(ready(2) && !ready(4));
        // A new leader overwrites 4 and 5: the flush of the older append is not the new one's.
        durability.truncated(4);
        let third = durability.appended(4, 4);
        durability.flushed(second);
        assert!(!ready(4));
        durability.flushed(third);
        assert!(ready(4));
    }

    fn entries(term: u64, indexes: std::ops::RangeInclusive<u64>) -> Vec<(Entry, usize)> {
        indexes
            .map(|index| {
                let entry = Entry {
                    log_id: id(term, index),
                    payload: EntryPayload::Blank,
                };
                (entry, 100)
            })
            .collect()
    }

    /// The indexes and terms of what `tail` answers for `start..end`.
    fn read(tail: &Tail, start: Bound<u64>, end: Bound<u64>) -> Option<Vec<(u64, u64)>> {
        let found = tail.read(start, end)?;
        Some(
            found
                .iter()
                .map(|entry| (entry.log_id.index, entry.log_id.leader_id.term))
                .collect(),
        )
    }

    #[test]
    fn the_tail_answers_only_reads_it_holds_wholly_as_the_log_holds_them() {
        use Bound::{Excluded, Included, Unbounded};
        let mut tail = Tail::default();
        assert_eq!(read(&tail, Included(1), Unbounded), None);
        tail.appended(entries(1, 5..=9));
        assert_eq!(
            read(&tail, Included(6), Excluded(8)),
            Some(vec![(6, 1), (7, 1)])
        );
        assert_eq!(read(&tail, Excluded(8), Unbounded), Some(vec![(9, 1)]));
        assert_eq!(read(&tail, Included(10), Unbounded), Some(vec![]));
        assert_eq!(read(&tail, Included(15), Unbounded), Some(vec![]));
        assert_eq!(read(&tail, Included(7), Excluded(6)), Some(vec![]));
        // Before the run, or past the log's end: left to redb.
        assert_eq!(read(&tail, Included(4), Included(6)), None);
        assert_eq!(read(&tail, Included(8), Included(10)), None);

        // A new leader overwrites 8 and 9: openraft truncates, then appends.
        tail.truncated(8);
        assert_eq!(read(&tail, Included(7), Unbounded), Some(vec![(7, 1)]));
        tail.appended(entries(2, 7..=8));
        assert_eq!(
            read(&tail, Included(5), Unbounded),
            Some(vec![(5, 1), (6, 1), (7, 2), (8, 2)])
        );
        tail.purged(6);
        assert_eq!(read(&tail, Included(6), Unbounded), None);
        assert_eq!(
            read(&tail, Included(7), Unbounded),
            Some(vec![(7, 2), (8, 2)])
        );

        // A snapshot installed past the log's end: the next append starts a new run.
        tail.appended(entries(3, 20..=21));
        assert_eq!(read(&tail, Included(8), Unbounded), None);
        assert_eq!(
            read(&tail, Included(20), Unbounded),
            Some(vec![(20, 3), (21, 3)])
        );
    }

    #[test]
    fn the_tail_keeps_the_newest_entries_within_its_bounds() {
        let mut tail = Tail::default();
        let count = TAIL_ENTRIES_MAX as u64 + 10;
        tail.appended(entries(1, 1..=count));
        assert_eq!(tail.entries.len(), TAIL_ENTRIES_MAX);
        assert_eq!(tail.first_index(), Some(11));
        assert_eq!(tail.next_index(), Some(count + 1));
        // Big entries: as many as fit in the byte bound.
        let big = TAIL_BYTES_MAX / 4;
        let mut large = entries(1, count + 1..=count + 8);
        large.iter_mut().for_each(|(_, size)| *size = big);
        tail.appended(large);
        assert_eq!(tail.entries.len(), 4);
        assert_eq!(tail.bytes, 4 * big);
        tail.truncated(0);
        assert_eq!((tail.entries.len(), tail.bytes), (0, 0));
    }

    #[test]
    fn a_mark_counts_only_when_the_log_holds_its_very_entry() -> Result<(), redb::Error> {
        let dir = tempfile::tempdir()?;
        let db = Database::create(dir.path().join("log.redb"))?;
        let mark_on = || AppliedMark::open(redb::backends::InMemoryBackend::new());
        let (mut mark, _) = mark_on()?;
        mark.write(&id(2, 5))?;
        // A new log (a restore): the mark is forgotten.
        {
            let txn = db.begin_write()?;
            txn.open_table(ENTRIES)?;
            txn.open_table(META)?;
            txn.commit()?;
        }
        assert_eq!(marked_entry(&db, id(2, 5), &mut mark)?, None);
        let txn = db.begin_write()?;
        {
            let mut entries = txn.open_table(ENTRIES)?;
            for index in 4..=6 {
                let entry = Entry {
                    log_id: id(2, index),
                    payload: EntryPayload::Blank,
                };
                let bytes =
                    codec::encode(&entry).map_err(|e| std::io::Error::other(e.to_string()))?;
                entries.insert(index, bytes.as_slice())?;
            }
        }
        txn.commit()?;
        let (mut mark, _) = mark_on()?;
        assert_eq!(marked_entry(&db, id(2, 5), &mut mark)?, Some(id(2, 5)));
        // Another term's entry at that index, or none at all: the log is not the mark's.
        assert_eq!(marked_entry(&db, id(1, 5), &mut mark)?, None);
        assert_eq!(marked_entry(&db, id(2, 9), &mut mark)?, None);
        Ok(())
    }
}

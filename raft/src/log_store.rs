//! The Raft log on redb: `raft-log.redb` holds entries, the vote, the committed id and the
//! last purged id.
//!
//! Every redb call runs on the blocking pool, never on the async reactor. Appends use group
//! commit: `append` commits its entries without an fsync (so they are readable at once, as
//! openraft requires) and hands the flush callback to the flusher thread, which makes one
//! durable commit for every append queued meanwhile — redb makes all earlier commits durable
//! with it — and only then tells openraft those entries are flushed.

use std::fmt::Debug;
use std::ops::{Bound, RangeBounds};
use std::path::Path;
use std::sync::Arc;

use openraft::storage::{LogFlushed, RaftLogStorage};
use openraft::{ErrorSubject, ErrorVerb, LogState, RaftLogReader, StorageIOError, Vote};
use redb::{Database, ReadableDatabase, ReadableTable, TableDefinition};
use serde::Serialize;
use serde::de::DeserializeOwned;

use crate::codec;
use crate::types::{Entry, LogId, NodeId, StorageError, TypeConfig};

const ENTRIES: TableDefinition<'_, u64, &[u8]> = TableDefinition::new("entries");
const META: TableDefinition<'_, &str, &[u8]> = TableDefinition::new("meta");

const KEY_VOTE: &str = "vote";
const KEY_COMMITTED: &str = "committed";
const KEY_LAST_PURGED: &str = "last_purged";
/// Counts the flusher's durable commits (a row it changes so each commit writes).
const KEY_FLUSH_ROUND: &str = "flush_round";

/// Flush callbacks waiting for the flusher; appends wait when it is full.
const FLUSH_QUEUE_MAX: usize = 4096;

type FlushCallback = LogFlushed<TypeConfig>;

/// The log store; cheap to clone (the reader openraft asks for is a clone).
#[derive(Clone)]
pub struct LogStore {
    db: Arc<Database>,
    flusher: Flusher,
}

/// Who makes appended entries durable.
#[derive(Clone)]
enum Flusher {
    /// The flusher thread, in group commits.
    Thread(std::sync::mpsc::SyncSender<FlushCallback>),
    /// The append itself, committing durably: in the simulation, where a thread of its own
    /// would make the order of events depend on the OS scheduler.
    Inline,
}

/// A durable commit that changes a row (so redb surely writes and fsyncs), making every
/// earlier non-durable commit durable too.
fn durable_commit(db: &Database) -> Result<(), String> {
    let txn = db.begin_write().map_err(|e| e.to_string())?;
    {
        let mut meta = txn.open_table(META).map_err(|e| e.to_string())?;
        let round = meta
            .get(KEY_FLUSH_ROUND)
            .map_err(|e| e.to_string())?
            .and_then(|v| <[u8; 8]>::try_from(v.value()).ok())
            .map(u64::from_be_bytes)
            .unwrap_or(0);
        meta.insert(KEY_FLUSH_ROUND, (round + 1).to_be_bytes().as_slice())
            .map_err(|e| e.to_string())?;
    }
    txn.commit().map_err(|e| e.to_string())
}

/// redb's page cache for the log (its default is 1 GiB): entries are read back once, to be
/// applied and sent to followers, soon after they were written.
const LOG_CACHE_BYTES: usize = 32 * 1024 * 1024;

/// The flusher thread: one durable commit per round, then every callback of the round.
fn flush_loop(db: Arc<Database>, queue: std::sync::mpsc::Receiver<FlushCallback>) {
    while let Ok(first) = queue.recv() {
        let mut round = vec![first];
        round.extend(queue.try_iter());
        let started = std::time::Instant::now();
        let durable = durable_commit(&db);
        crate::metrics::observe(&crate::metrics::raft().log_flush_seconds, started.elapsed());
        for callback in round {
            match &durable {
                Ok(()) => callback.log_io_completed(Ok(())),
                Err(error) => callback.log_io_completed(Err(std::io::Error::other(error.clone()))),
            }
        }
    }
}

fn log_error(verb: ErrorVerb) -> impl Fn(&dyn std::fmt::Display) -> StorageError {
    move |error| {
        StorageIOError::new(ErrorSubject::Logs, verb, openraft::AnyError::error(error)).into()
    }
}

impl LogStore {
    /// Opens (or creates) `raft-log.redb` at `path`.
    pub fn open(path: &Path) -> Result<LogStore, redb::Error> {
        let db = Database::builder()
            .set_cache_size(LOG_CACHE_BYTES)
            .create(path)?;
        LogStore::on(db)
    }

    /// Opens (or creates) the log on a redb storage backend (the simulation's disk).
    pub fn open_backend(backend: impl redb::StorageBackend) -> Result<LogStore, redb::Error> {
        let db = Database::builder()
            .set_cache_size(LOG_CACHE_BYTES)
            .create_with_backend(backend)?;
        LogStore::on(db)
    }

    fn on(db: Database) -> Result<LogStore, redb::Error> {
        let txn = db.begin_write()?;
        txn.open_table(ENTRIES)?;
        txn.open_table(META)?;
        txn.commit()?;
        let db = Arc::new(db);
        if crate::runtime::is_simulated() {
            let flusher = Flusher::Inline;
            return Ok(LogStore { db, flusher });
        }
        let (flushes, queue) = std::sync::mpsc::sync_channel(FLUSH_QUEUE_MAX);
        let flusher_db = db.clone();
        std::thread::Builder::new()
            .name("raft-log-flush".to_string())
            .spawn(move || flush_loop(flusher_db, queue))
            .map_err(redb::Error::Io)?;
        let flusher = Flusher::Thread(flushes);
        Ok(LogStore { db, flusher })
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

    /// Writes a meta value; `durable: false` lets it ride on the next durable commit (redb
    /// makes every earlier commit durable with it).
    async fn write_meta<T: Serialize>(
        &self,
        key: &'static str,
        value: &T,
        durable: bool,
    ) -> Result<(), StorageError> {
        let bytes = codec::encode(value).map_err(|e| log_error(ErrorVerb::Write)(&e))?;
        self.blocking(ErrorVerb::Write, move |db| {
            let mut txn = db.begin_write().map_err(|e| e.to_string())?;
            if !durable {
                txn.set_durability(redb::Durability::None)
                    .map_err(|e| e.to_string())?;
            }
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
        self.write_meta(KEY_VOTE, vote, true).await
    }

    async fn read_vote(&mut self) -> Result<Option<Vote<NodeId>>, StorageError> {
        self.read_meta(KEY_VOTE).await
    }

    async fn save_committed(&mut self, committed: Option<LogId>) -> Result<(), StorageError> {
        // Only an optimisation for restart (fewer entries to re-apply); a committed id that is
        // lost in a crash is recomputed by Raft, so it need not cost an fsync of its own.
        if let Some(index) = committed.map(|id| id.index) {
            let index = i64::try_from(index).unwrap_or(i64::MAX);
            crate::metrics::raft().commit_index.set(index);
        }
        self.write_meta(KEY_COMMITTED, &committed, false).await
    }

    async fn read_committed(&mut self) -> Result<Option<LogId>, StorageError> {
        Ok(self
            .read_meta::<Option<LogId>>(KEY_COMMITTED)
            .await?
            .flatten())
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
        let mut encoded = Vec::new();
        for entry in entries {
            let bytes = codec::encode(&entry).map_err(|e| log_error(ErrorVerb::Write)(&e))?;
            encoded.push((entry.log_id.index, bytes));
        }
        crate::metrics::raft()
            .entries_appended
            .inc_by(encoded.len() as u64);
        let inline = matches!(self.flusher, Flusher::Inline);
        let result = self
            .blocking(ErrorVerb::Write, move |db| {
                let mut txn = db.begin_write().map_err(|e| e.to_string())?;
                if !inline {
                    // Made durable by the flusher's next commit, before openraft hears of it.
                    txn.set_durability(redb::Durability::None)
                        .map_err(|e| e.to_string())?;
                }
                {
                    let mut table = txn.open_table(ENTRIES).map_err(|e| e.to_string())?;
                    for (index, bytes) in &encoded {
                        table
                            .insert(index, bytes.as_slice())
                            .map_err(|e| e.to_string())?;
                    }
                }
                txn.commit().map_err(|e| e.to_string())
            })
            .await;
        let flushes = match (&result, &self.flusher) {
            (Err(error), _) => {
                callback.log_io_completed(Err(std::io::Error::other(error.to_string())));
                return result;
            }
            (Ok(()), Flusher::Inline) => {
                callback.log_io_completed(Ok(()));
                return result;
            }
            (Ok(()), Flusher::Thread(flushes)) => flushes,
        };
        let stopped = || log_error(ErrorVerb::Write)(&"the log flusher has stopped");
        match flushes.try_send(callback) {
            Ok(()) => {}
            Err(std::sync::mpsc::TrySendError::Full(callback)) => {
                // The queue is full: wait for room off the reactor.
                let flushes = flushes.clone();
                let queued = crate::runtime::blocking(move || flushes.send(callback)).await;
                if !matches!(queued, Ok(Ok(()))) {
                    return Err(stopped());
                }
            }
            Err(std::sync::mpsc::TrySendError::Disconnected(_)) => return Err(stopped()),
        }
        result
    }

    async fn truncate(&mut self, log_id: LogId) -> Result<(), StorageError> {
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

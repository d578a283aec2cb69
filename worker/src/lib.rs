//! The worker: what a node does with the datums it claims.
//!
//! Layout:
//! - this file: [`Worker`] — the claim loop (woken by applied-state changes and freed slots,
//!   never by a timer), the reporter that batches completions into `CompleteBatch`, and the
//!   cancel watch that stops attempts whose claim was canceled or lost.
//! - `attempt`: one attempt, from work dir to report.
//! - `executor`: [`ExecutorKind`] — `process` (bubblewrap) and `noop`.
//! - `tail`: bounded stdout/stderr tails.
//!
//! The worker talks to the log only through [`shoal_raft::Cluster`] (write, applied state) and
//! to object storage only through `shoal-storage`.

mod attempt;
pub mod executor;
mod tail;

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use shoal_raft::Cluster;
use shoal_raft::command::{Command, Completion, Grant, Outcome};
use shoal_raft::job::{DatumKey, DatumState};
use shoal_storage::{Resolver, StorageConfig, Transfers};
use tokio::sync::{Notify, Semaphore, mpsc};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

pub use executor::{ExecutorKind, bwrap_available};

/// Completions waiting for the reporter; attempts wait when it is full.
const REPORT_QUEUE_MAX: usize = 4096;
/// Most completions in one `CompleteBatch`.
const REPORT_BATCH_MAX: usize = 256;
/// Pause before a failed report is proposed again.
const REPORT_RETRY: Duration = Duration::from_millis(200);
/// How long running attempts get to finish when the node stops; then they are killed and
/// their claims left to expire.
const STOP_GRACE: Duration = Duration::from_secs(10);

#[derive(Debug, Clone)]
pub struct WorkerConfig {
    /// Attempts run at once on this node.
    pub slots: u32,
    pub executor: ExecutorKind,
    /// Attempt directories live here (`<job>-<datum index>-<attempt>`).
    pub work_dir: PathBuf,
    /// Bytes of stdout and of stderr kept per step in the report.
    pub tail_bytes_max: usize,
    /// Keep attempt directories after the attempt (for debugging).
    pub keep_workdirs: bool,
    pub storage: StorageConfig,
}

#[derive(Debug, thiserror::Error)]
pub enum WorkerError {
    #[error("cannot create the work dir {path}: {source}")]
    WorkDir {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error(transparent)]
    Storage(#[from] shoal_storage::StorageError),
}

/// An attempt in progress on this node.
struct Running {
    fence: u64,
    cancel: CancellationToken,
}

/// What the worker's tasks share.
pub(crate) struct Shared {
    cluster: Cluster,
    config: WorkerConfig,
    resolver: Arc<Resolver>,
    node_transfers: Arc<Semaphore>,
    running: Mutex<HashMap<DatumKey, Running>>,
    slot_freed: Notify,
    reports: mpsc::Sender<Completion>,
    stop: CancellationToken,
}

impl Shared {
    fn running(&self) -> std::sync::MutexGuard<'_, HashMap<DatumKey, Running>> {
        self.running
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

/// The running worker of one node.
pub struct Worker {
    shared: Arc<Shared>,
    tasks: Vec<JoinHandle<()>>,
}

impl Worker {
    pub async fn start(cluster: Cluster, config: WorkerConfig) -> Result<Worker, WorkerError> {
        let work_dir = config.work_dir.clone();
        tokio::fs::create_dir_all(&work_dir)
            .await
            .map_err(|source| WorkerError::WorkDir {
                path: work_dir.clone(),
                source,
            })?;
        let storage = config.storage.clone();
        let resolver = tokio::task::spawn_blocking(move || Resolver::new(storage, &work_dir))
            .await
            .map_err(|e| WorkerError::WorkDir {
                path: config.work_dir.clone(),
                source: std::io::Error::other(e),
            })??;
        let (reports, queue) = mpsc::channel(REPORT_QUEUE_MAX);
        let shared = Arc::new(Shared {
            cluster,
            config,
            resolver: Arc::new(resolver),
            node_transfers: Transfers::node_semaphore(),
            running: Mutex::new(HashMap::new()),
            slot_freed: Notify::new(),
            reports,
            stop: CancellationToken::new(),
        });
        let tasks = vec![
            tokio::spawn(claim_loop(shared.clone())),
            tokio::spawn(reporter(shared.clone(), queue)),
            tokio::spawn(cancel_watch(shared.clone())),
        ];
        tracing::info!(
            slots = shared.config.slots,
            executor = shared.config.executor.name(),
            "worker started"
        );
        Ok(Worker { shared, tasks })
    }

    /// Stops claiming, lets running attempts finish (killing them after a grace period), and
    /// sends the last reports.
    pub async fn shutdown(self) {
        self.shared.stop.cancel();
        let deadline = tokio::time::Instant::now() + STOP_GRACE;
        while !self.shared.running().is_empty() && tokio::time::Instant::now() < deadline {
            tokio::select! {
                () = self.shared.slot_freed.notified() => {}
                () = tokio::time::sleep_until(deadline) => {}
            }
        }
        for attempt in self.shared.running().values() {
            attempt.cancel.cancel();
        }
        for task in self.tasks {
            let _ = tokio::time::timeout(Duration::from_secs(5), task).await;
        }
    }
}

/// Whether this node should ask for work now.
fn wants_work(shared: &Shared) -> u32 {
    let free = shared
        .config
        .slots
        .saturating_sub(shared.running().len() as u32);
    if free == 0 || shared.stop.is_cancelled() || !shared.cluster.is_ready() {
        return 0;
    }
    let state = shared.cluster.view().read();
    let me = state.nodes.get(&shared.cluster.node_id());
    if state.pending_count() == 0 || me.is_none_or(|record| record.draining) {
        return 0;
    }
    free
}

async fn claim_loop(shared: Arc<Shared>) {
    let mut applied = shared.cluster.view().applied();
    loop {
        let free = wants_work(&shared);
        if free > 0 {
            let claim = Command::ClaimBatch {
                node_id: shared.cluster.node_id(),
                max: free,
            };
            match shared.cluster.write(claim).await {
                Ok(Outcome::Claimed { grants }) if !grants.is_empty() => {
                    for grant in grants {
                        start_attempt(&shared, grant);
                    }
                    continue;
                }
                Ok(_) => {}
                Err(error) => tracing::debug!(%error, "claim failed"),
            }
        }
        tokio::select! {
            changed = applied.changed() => if changed.is_err() { return },
            () = shared.slot_freed.notified() => {}
            () = shared.stop.cancelled() => return,
        }
    }
}

fn start_attempt(shared: &Arc<Shared>, grant: Grant) {
    let cancel = CancellationToken::new();
    let count = {
        let mut running = shared.running();
        running.insert(
            grant.datum,
            Running {
                fence: grant.fence,
                cancel: cancel.clone(),
            },
        );
        running.len()
    };
    shared.cluster.set_running(count as u32);
    let shared = shared.clone();
    let span = tracing::info_span!(
        "attempt",
        job = grant.datum.job,
        datum = grant.datum.index,
        attempt = grant.attempt
    );
    let work = async move {
        let report = attempt::run(shared.clone(), grant, cancel).await;
        let completion = Completion {
            datum: grant.datum,
            fence: grant.fence,
            report,
        };
        let _ = shared.reports.send(completion).await;
        let count = {
            let mut running = shared.running();
            running.remove(&grant.datum);
            running.len()
        };
        shared.cluster.set_running(count as u32);
        shared.slot_freed.notify_waiters();
        shared.slot_freed.notify_one();
    };
    tokio::spawn(tracing::Instrument::instrument(work, span));
}

/// Sends completions in batches: whatever queued while the previous batch was committing.
async fn reporter(shared: Arc<Shared>, mut queue: mpsc::Receiver<Completion>) {
    while let Some(first) = queue.recv().await {
        let mut batch = vec![first];
        while batch.len() < REPORT_BATCH_MAX {
            match queue.try_recv() {
                Ok(completion) => batch.push(completion),
                Err(_) => break,
            }
        }
        loop {
            let command = Command::CompleteBatch {
                node_id: shared.cluster.node_id(),
                reports: batch.clone(),
            };
            match shared.cluster.write(command).await {
                Ok(outcome) => {
                    tracing::debug!(?outcome, "reported attempts");
                    break;
                }
                Err(error) => {
                    tracing::warn!(%error, "reporting attempts failed; retrying");
                    tokio::time::sleep(REPORT_RETRY).await;
                }
            }
        }
    }
}

/// Cancels running attempts whose datum is being canceled or whose claim this node lost.
async fn cancel_watch(shared: Arc<Shared>) {
    let mut applied = shared.cluster.view().applied();
    let me = shared.cluster.node_id();
    loop {
        tokio::select! {
            changed = applied.changed() => if changed.is_err() { return },
            () = shared.stop.cancelled() => return,
        }
        let applied = applied.borrow().map(|id| id.index).unwrap_or(0);
        let state = shared.cluster.view().read();
        // An attempt whose claim this node has not applied yet cannot be judged.
        for (key, attempt) in shared.running().iter().filter(|(_, a)| a.fence <= applied) {
            let datum = state.datums.get(key);
            let held = datum
                .and_then(|d| d.claim)
                .is_some_and(|c| c.fence == attempt.fence && c.node == me);
            let canceling = datum.is_some_and(|d| d.state == DatumState::Canceling);
            if (!held || canceling) && !attempt.cancel.is_cancelled() {
                tracing::info!(
                    job = key.job,
                    datum = key.index,
                    "stopping an attempt: canceled or claim lost"
                );
                attempt.cancel.cancel();
            }
        }
    }
}

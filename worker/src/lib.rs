//! The worker: what a node does with the datums it claims.
//!
//! Layout:
//! - this file: [`Worker`] — the claim loop (woken by applied-state changes and freed slots,
//!   never by a timer), which also keeps a small queue of claims (prefetch) to begin as soon
//!   as a slot frees, and steals queued claims from other nodes when nothing is pending; the
//!   reporter that batches completions into `CompleteBatch`; and the claim watch that stops
//!   attempts whose claim was canceled or lost, drops queued claims that were stolen, and
//!   adopts claims the log says this node holds but nothing runs or queues (a claim whose
//!   answer was lost in a leader change, or one left by this node's previous life).
//! - `attempt`: one attempt, from work dir to report.
//! - `executor`: [`ExecutorKind`] — `process` (bubblewrap) and `noop`.
//! - `tail`: bounded stdout/stderr tails.
//!
//! The worker talks to the log only through [`shoal_raft::Cluster`] (write, applied state) and
//! to object storage only through `shoal-storage`.

mod attempt;
pub mod executor;
mod live;
mod tail;

use std::collections::{HashMap, VecDeque};
use std::path::PathBuf;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use shoal_raft::Cluster;
use shoal_raft::command::{Command, Completion, Grant, Outcome};
use shoal_raft::job::{AttemptOutcome, DatumKey, DatumState};
use shoal_storage::{Resolver, StorageConfig, Transfers};
use tokio::sync::{Notify, Semaphore, mpsc};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

pub use executor::{DockerExecutor, ExecutorKind, bwrap_available};

/// Most claims a node holds in its queue beyond its free slots.
const PREFETCH_MAX: u32 = 4;

/// Completions waiting for the reporter; attempts wait when it is full.
const REPORT_QUEUE_MAX: usize = 4096;
/// Most completions in one `CompleteBatch`.
const REPORT_BATCH_MAX: usize = 256;
/// Pause before a failed report is proposed again.
const REPORT_RETRY: Duration = Duration::from_millis(200);
/// How long running attempts get to finish when the node stops; then they are killed,
/// unreported, and their claims left to expire (which spends no try).
const STOP_GRACE: Duration = Duration::from_secs(10);
/// A report batch stops growing at about this many bytes of tails and file lists, so one log
/// entry stays far below the network's frame limit.
const REPORT_BATCH_BYTES_MAX: usize = 2 * 1024 * 1024;

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
    live: Arc<live::LiveAttempt>,
}

/// What the worker's tasks share.
pub(crate) struct Shared {
    cluster: Cluster,
    config: WorkerConfig,
    resolver: Arc<Resolver>,
    node_transfers: Arc<Semaphore>,
    running: Mutex<HashMap<DatumKey, Running>>,
    /// Claims granted for this node's queue, in grant order: begun when a slot frees.
    queue: Mutex<VecDeque<Grant>>,
    /// Fences of attempts that ended here and whose report may not be applied yet: their
    /// claims must not be adopted again.
    finished: Mutex<std::collections::HashSet<(DatumKey, u64)>>,
    /// Set while a `ClaimBatch` is in flight and its grants not yet started: its claims are
    /// not orphans, whatever the applied state shows meanwhile.
    claiming: std::sync::atomic::AtomicBool,
    slot_freed: Notify,
    reports: mpsc::Sender<Completion>,
    stop: CancellationToken,
    /// Set when shutdown kills what still runs after the grace period: those attempts go
    /// unreported (their claims expire without spending a try).
    killed_by_stop: std::sync::atomic::AtomicBool,
    /// Fired once no attempt runs any more: the reporter sends what is left and ends, and
    /// the claim watch ends.
    flush: CancellationToken,
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
        if matches!(config.executor, ExecutorKind::Process) {
            // Finds bwrap once (it runs `bwrap --version`), off the async threads.
            let _ = tokio::task::spawn_blocking(bwrap_available).await;
        }
        if let ExecutorKind::Docker(docker) = &config.executor {
            let node = shoal_raft::format_node_id(cluster.node_id());
            match docker.remove_leftovers(&node).await {
                Ok(0) => {}
                Ok(count) => {
                    tracing::info!(count, "removed containers of this node's previous run")
                }
                Err(error) => tracing::warn!(%error, "cannot list this node's old containers"),
            }
        }
        let (reports, queue) = mpsc::channel(REPORT_QUEUE_MAX);
        let shared = Arc::new(Shared {
            cluster,
            config,
            resolver: Arc::new(resolver),
            node_transfers: Transfers::node_semaphore(),
            running: Mutex::new(HashMap::new()),
            queue: Mutex::new(VecDeque::new()),
            finished: Mutex::new(std::collections::HashSet::new()),
            claiming: std::sync::atomic::AtomicBool::new(false),
            slot_freed: Notify::new(),
            reports,
            stop: CancellationToken::new(),
            killed_by_stop: std::sync::atomic::AtomicBool::new(false),
            flush: CancellationToken::new(),
        });
        let weak = Arc::downgrade(&shared);
        shared
            .cluster
            .set_live_logs(Arc::new(move |datum: DatumKey, fence: u64| {
                let shared = weak.upgrade()?;
                let live = {
                    let running = shared.running();
                    running
                        .get(&datum)
                        .filter(|r| r.fence == fence)?
                        .live
                        .clone()
                };
                Some(live.snapshot())
            }));
        // The claim loop comes first: `shutdown` stops it before the others.
        let tasks = vec![
            tokio::spawn(claim_loop(shared.clone())),
            tokio::spawn(reporter(shared.clone(), queue)),
            tokio::spawn(claim_watch(shared.clone())),
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
    pub async fn shutdown(mut self) {
        self.shared.stop.cancel();
        // The claim loop first, so grants of a claim in flight reach the queue before it is
        // handed back.
        let mut claim_loop = self.tasks.remove(0);
        if tokio::time::timeout(Duration::from_secs(11), &mut claim_loop)
            .await
            .is_err()
        {
            claim_loop.abort();
            // An aborted task may be mid-poll: wait, so nothing reaches the queue after the
            // hand-back.
            let _ = claim_loop.await;
        }
        hand_back_queue(&self.shared).await;
        let deadline = tokio::time::Instant::now() + STOP_GRACE;
        self.wait_idle(deadline).await;
        if !self.shared.running().is_empty() {
            self.shared.killed_by_stop.store(true, Ordering::SeqCst);
            for attempt in self.shared.running().values() {
                attempt.cancel.cancel();
            }
            self.wait_idle(tokio::time::Instant::now() + Duration::from_secs(5))
                .await;
        }
        self.shared.flush.cancel();
        for task in self.tasks {
            let _ = tokio::time::timeout(Duration::from_secs(5), task).await;
        }
    }

    /// Waits until no attempt runs, or `deadline`.
    async fn wait_idle(&self, deadline: tokio::time::Instant) {
        while !self.shared.running().is_empty() && tokio::time::Instant::now() < deadline {
            tokio::select! {
                () = self.shared.slot_freed.notified() => {}
                () = tokio::time::sleep_until(deadline) => {}
            }
        }
    }
}

/// How many claims this node holds in its queue when work is waiting.
fn prefetch(shared: &Shared) -> u32 {
    shared.config.slots.min(PREFETCH_MAX)
}

/// What this node should ask for now: datums to begin at once, and datums for its queue.
fn wants_work(shared: &Shared) -> (u32, u32) {
    let free = shared
        .config
        .slots
        .saturating_sub(shared.running().len() as u32);
    let queued = lock(&shared.queue).len() as u32;
    let room = prefetch(shared).saturating_sub(queued);
    if (free == 0 && room == 0) || shared.stop.is_cancelled() || !shared.cluster.is_ready() {
        return (0, 0);
    }
    let me = shared.cluster.node_id();
    let state = shared.cluster.view().read();
    if state.nodes.get(&me).is_none_or(|record| record.draining) {
        return (0, 0);
    }
    if state.has_claimable() {
        (free, room)
    } else if free > 0 && state.has_stealable(me) {
        (free, 0)
    } else {
        (0, 0)
    }
}

/// Begins queued claims while slots are free. A grant leaves the queue and takes its slot
/// under the same locks, so the claim watch never sees it in neither place.
fn start_queued(shared: &Arc<Shared>) {
    while !shared.stop.is_cancelled() {
        let (grant, cancel, live, count) = {
            // Lock order everywhere: finished, running, queue.
            let finished = lock(&shared.finished);
            let mut running = shared.running();
            if running.len() >= shared.config.slots as usize {
                return;
            }
            // The first grant whose datum has no older attempt still stopping here.
            let grant = {
                let mut queue = lock(&shared.queue);
                let next = queue
                    .iter()
                    .position(|g| running.get(&g.datum).is_none_or(|r| r.fence == g.fence));
                match next.and_then(|i| queue.remove(i)) {
                    Some(grant) => grant,
                    None => return,
                }
            };
            if is_known(&finished, &running, &grant) {
                continue;
            }
            let (cancel, live) = occupy(&mut running, &grant);
            (grant, cancel, live, running.len())
        };
        shared.cluster.set_running(count as u32);
        spawn_attempt(shared, grant, cancel, live);
    }
}

async fn claim_loop(shared: Arc<Shared>) {
    let mut applied = shared.cluster.view().applied();
    loop {
        start_queued(&shared);
        let (max, queue) = wants_work(&shared);
        if max + queue > 0 {
            let claim = Command::ClaimBatch {
                node_id: shared.cluster.node_id(),
                max,
                queue,
            };
            shared.claiming.store(true, Ordering::SeqCst);
            let answer = shared.cluster.write(claim).await;
            match answer {
                Ok(Outcome::Claimed { grants }) if !grants.is_empty() => {
                    for grant in grants {
                        // Granted while the node began to stop: nothing starts; shutdown
                        // hands the whole queue back.
                        if grant.queued || shared.stop.is_cancelled() {
                            enqueue(&shared, grant);
                        } else {
                            start_attempt(&shared, grant);
                        }
                    }
                    shared.claiming.store(false, Ordering::SeqCst);
                    continue;
                }
                Ok(_) => {}
                Err(error) => tracing::debug!(%error, "claim failed"),
            }
            shared.claiming.store(false, Ordering::SeqCst);
        }
        tokio::select! {
            changed = applied.changed() => if changed.is_err() { return },
            () = shared.slot_freed.notified() => {}
            () = shared.stop.cancelled() => return,
        }
    }
}

/// Adds a queued claim to this node's queue unless it is there, running or ran already.
fn enqueue(shared: &Shared, grant: Grant) {
    let finished = lock(&shared.finished);
    let running = shared.running();
    let mut queue = lock(&shared.queue);
    let known = is_known(&finished, &running, &grant)
        || queue
            .iter()
            .any(|g| g.fence == grant.fence && g.datum == grant.datum);
    if !known {
        queue.push_back(grant);
    }
}

/// Gives the queued claims back to the log so other nodes take them at once.
async fn hand_back_queue(shared: &Shared) {
    let queued: Vec<Grant> = lock(&shared.queue).drain(..).collect();
    if queued.is_empty() {
        return;
    }
    let command = Command::HandBack {
        node_id: shared.cluster.node_id(),
        datums: queued.iter().map(|g| (g.datum, g.fence)).collect(),
    };
    match tokio::time::timeout(Duration::from_secs(5), shared.cluster.write(command)).await {
        Ok(Ok(outcome)) => tracing::info!(?outcome, "handed back queued claims"),
        Ok(Err(error)) => tracing::warn!(%error, "handing back queued claims failed; they expire"),
        Err(_) => tracing::warn!("handing back queued claims timed out; they expire"),
    }
}

/// Runs `grant` now unless it runs or ran here already. While an older attempt of the same
/// datum is still being stopped here, the grant waits in the queue for its slot.
fn start_attempt(shared: &Arc<Shared>, grant: Grant) {
    let (cancel, live, count) = {
        let finished = lock(&shared.finished);
        let mut running = shared.running();
        if is_known(&finished, &running, &grant) {
            return;
        }
        if running.contains_key(&grant.datum) {
            drop((finished, running));
            enqueue(shared, grant);
            return;
        }
        let (cancel, live) = occupy(&mut running, &grant);
        (cancel, live, running.len())
    };
    shared.cluster.set_running(count as u32);
    spawn_attempt(shared, grant, cancel, live);
}

/// Whether `grant` runs or ran here already.
fn is_known(
    finished: &std::collections::HashSet<(DatumKey, u64)>,
    running: &HashMap<DatumKey, Running>,
    grant: &Grant,
) -> bool {
    running
        .get(&grant.datum)
        .is_some_and(|r| r.fence == grant.fence)
        || finished.contains(&(grant.datum, grant.fence))
}

/// Gives `grant` a slot: its cancel token and the record of its output.
fn occupy(
    running: &mut HashMap<DatumKey, Running>,
    grant: &Grant,
) -> (CancellationToken, Arc<live::LiveAttempt>) {
    let cancel = CancellationToken::new();
    let live = Arc::new(live::LiveAttempt::default());
    running.insert(
        grant.datum,
        Running {
            fence: grant.fence,
            cancel: cancel.clone(),
            live: live.clone(),
        },
    );
    (cancel, live)
}

/// Runs an attempt that holds its slot already.
fn spawn_attempt(
    shared: &Arc<Shared>,
    grant: Grant,
    cancel: CancellationToken,
    live: Arc<live::LiveAttempt>,
) {
    let shared = shared.clone();
    let span = tracing::info_span!(
        "attempt",
        job = grant.datum.job,
        datum = grant.datum.index,
        attempt = grant.attempt
    );
    let work = async move {
        if grant.queued && !begin(&shared, &grant).await {
            release_slot(&shared, &grant);
            return;
        }
        let report = attempt::run(shared.clone(), grant, cancel, live).await;
        let stopped = shared.killed_by_stop.load(Ordering::SeqCst)
            && report.outcome == AttemptOutcome::Canceled;
        lock(&shared.finished).insert((grant.datum, grant.fence));
        if !stopped {
            let _ = shared
                .reports
                .send(Completion {
                    datum: grant.datum,
                    fence: grant.fence,
                    report,
                })
                .await;
        }
        release_slot(&shared, &grant);
    };
    tokio::spawn(tracing::Instrument::instrument(work, span));
}

/// Tells the log this node begins a queued claim; false when it was stolen meanwhile.
async fn begin(shared: &Shared, grant: &Grant) -> bool {
    let command = Command::Begin {
        node_id: shared.cluster.node_id(),
        datum: grant.datum,
        fence: grant.fence,
    };
    match shared.cluster.write(command).await {
        Ok(Outcome::Reported { accepted: 1, .. }) => true,
        Ok(_) => {
            tracing::debug!("a queued claim was taken by another node");
            false
        }
        Err(error) => {
            // Unknown whether it took effect: leave the claim to the claim watch (adopted
            // again if still queued here) or to lease expiry.
            tracing::warn!(%error, "beginning a queued claim failed");
            false
        }
    }
}

/// Frees the slot `grant` held and wakes the claim loop.
fn release_slot(shared: &Shared, grant: &Grant) {
    let count = {
        let mut running = shared.running();
        // A newer attempt of the same datum may have taken the entry: leave it.
        if running
            .get(&grant.datum)
            .is_some_and(|r| r.fence == grant.fence)
        {
            running.remove(&grant.datum);
        }
        running.len()
    };
    shared.cluster.set_running(count as u32);
    shared.slot_freed.notify_waiters();
    shared.slot_freed.notify_one();
}

fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// Rough size of a completion in a log entry: what grows with the task.
fn report_bytes(completion: &Completion) -> usize {
    let report = &completion.report;
    let tails: usize = report
        .executors
        .iter()
        .map(|e| e.stdout_tail.len() + e.stderr_tail.len() + 64)
        .sum();
    let files: usize = report
        .outputs
        .iter()
        .map(|o| o.url.len() + o.path.len() + 16)
        .sum();
    let logs: usize = report.system_logs.iter().map(String::len).sum();
    tails + files + logs + 128
}

/// Sends completions in batches: whatever queued while the previous batch was committing.
async fn reporter(shared: Arc<Shared>, mut queue: mpsc::Receiver<Completion>) {
    let mut carried: Option<Completion> = None;
    loop {
        let first = match carried.take() {
            Some(completion) => completion,
            // After the flush, send what is queued and end.
            None => tokio::select! {
                next = queue.recv() => match next {
                    Some(completion) => completion,
                    None => return,
                },
                () = shared.flush.cancelled() => match queue.try_recv() {
                    Ok(completion) => completion,
                    Err(_) => return,
                },
            },
        };
        let mut bytes = report_bytes(&first);
        let mut batch = vec![first];
        while batch.len() < REPORT_BATCH_MAX && bytes < REPORT_BATCH_BYTES_MAX {
            match queue.try_recv() {
                Ok(completion) => {
                    bytes += report_bytes(&completion);
                    batch.push(completion);
                }
                Err(_) => break,
            }
        }
        if bytes > REPORT_BATCH_BYTES_MAX && batch.len() > 1 {
            carried = batch.pop();
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
                Err(error) if shared.flush.is_cancelled() => {
                    // The node is stopping and the log does not answer: the claims expire
                    // and the datums run again elsewhere.
                    tracing::warn!(%error, count = batch.len(), "stopping with attempts unreported");
                    return;
                }
                Err(error) => {
                    tracing::warn!(%error, "reporting attempts failed; retrying");
                    tokio::time::sleep(REPORT_RETRY).await;
                }
            }
        }
    }
}

/// Keeps the attempts running here in step with the claims the log gives this node: stops
/// those whose datum is canceled or whose claim was lost, adopts claims nothing runs.
async fn claim_watch(shared: Arc<Shared>) {
    let mut applied = shared.cluster.view().applied();
    loop {
        // Cancels and lost claims are still enforced while running attempts finish.
        tokio::select! {
            changed = applied.changed() => if changed.is_err() { return },
            () = shared.flush.cancelled() => return,
        }
        let applied = applied.borrow().map(|id| id.index).unwrap_or(0);
        stop_lost_attempts(&shared, applied);
        drop_lost_queued(&shared, applied);
        if shared.claiming.load(Ordering::SeqCst) || shared.stop.is_cancelled() {
            continue;
        }
        for grant in orphaned_claims(&shared, applied) {
            tracing::info!(
                job = grant.datum.job,
                datum = grant.datum.index,
                queued = grant.queued,
                "adopting a claim nothing runs"
            );
            if grant.queued {
                enqueue(&shared, grant);
            } else {
                start_attempt(&shared, grant);
            }
        }
        start_queued(&shared);
    }
}

fn stop_lost_attempts(shared: &Shared, applied: u64) {
    let me = shared.cluster.node_id();
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

/// Drops queued claims this node no longer holds (stolen, canceled, expired).
fn drop_lost_queued(shared: &Shared, applied: u64) {
    let me = shared.cluster.node_id();
    let state = shared.cluster.view().read();
    lock(&shared.queue).retain(|grant| {
        grant.fence > applied
            || state
                .datums
                .get(&grant.datum)
                .and_then(|d| d.claim)
                .is_some_and(|c| c.fence == grant.fence && c.node == me)
    });
}

/// Claims this node holds in the applied state that no attempt here runs, queues, or has
/// just run.
fn orphaned_claims(shared: &Shared, applied: u64) -> Vec<Grant> {
    let state = shared.cluster.view().read();
    let held: Vec<Grant> = state
        .claims_of(shared.cluster.node_id())
        .filter_map(|d| {
            d.claim.map(|c| Grant {
                datum: d.key,
                fence: c.fence,
                attempt: d.attempts.len() as u32,
                queued: c.queued,
            })
        })
        .collect();
    drop(state);
    let mut finished = lock(&shared.finished);
    finished.retain(|(datum, fence)| held.iter().any(|g| g.datum == *datum && g.fence == *fence));
    let running = shared.running();
    let queue = lock(&shared.queue);
    held.into_iter()
        .filter(|grant| {
            grant.fence <= applied
                && !finished.contains(&(grant.datum, grant.fence))
                && running
                    .get(&grant.datum)
                    .is_none_or(|r| r.fence != grant.fence)
                && !queue
                    .iter()
                    .any(|g| g.fence == grant.fence && g.datum == grant.datum)
        })
        .collect()
}

//! The worker: what a node does with the datums it claims, and with the pipelines it
//! stewards.
//!
//! Layout — one module per long-lived task, like garage's workers:
//! - this file: [`Worker`] — starts the tasks, and on shutdown stops claiming, hands the queue
//!   back, lets attempts finish within a grace period and flushes the reports.
//! - `shared`: what the tasks share (running attempts, the claim queue, signals).
//! - `claims`: the claim loop (woken by applied-state changes and freed slots, never by a
//!   timer), with its small queue of claims (prefetch) and stealing of other nodes' queued
//!   claims when nothing is pending; each grant runs as an attempt.
//! - `reporter`: batches ended attempts into `CompleteBatch`.
//! - `watch`: the claim watch — stops attempts whose claim was canceled or lost, drops
//!   stolen queued claims, adopts claims the log says this node holds but nothing runs.
//! - `publisher`: publishes the staged outputs of pipeline datums this node holds
//!   publishing claims on.
//! - `restart`: nothing of a previous life runs on — its processes are killed, its attempt
//!   directories removed, its claims ended (`Abandon`) before the claim loop starts.
//! - `steward`: lists the inputs of the pipelines this node stewards into datums, times them
//!   out, clears their staging areas and closes them.
//! - `attempt`: one attempt, from work dir to report; `pipeline`: where a pipeline datum's
//!   inputs and outputs go.
//! - `executor`: [`ExecutorKind`] — `docker` (bollard), `process` (bubblewrap) and `noop`.
//! - `metrics`: this node's worker instruments for `/metrics`.
//! - `live`, `tail`: a running attempt's output so far; bounded stdout/stderr tails.
//!
//! The worker talks to the log only through [`shoal_raft::Cluster`] (write, applied state) and
//! to object storage only through `shoal-storage`.

mod attempt;
mod claims;
pub mod executor;
mod live;
pub mod metrics;
mod pipeline;
mod publisher;
mod reporter;
mod restart;
mod shared;
mod steward;
mod tail;
mod watch;

use std::collections::{HashMap, HashSet, VecDeque};

use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use shoal_raft::Cluster;
use shoal_raft::job::DatumKey;
use shoal_raft::runtime::{blocking, spawn};
use shoal_storage::{Resolver, StorageConfig, Transfers};
use tokio::sync::{Notify, mpsc};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

pub use executor::{
    DEFAULT_PATH, DockerExecutor, ExecutorKind, ProcessSandbox, StepOutcome, StepRun, StepRunner,
    bwrap_available,
};

use shared::Shared;

/// How long running attempts get to finish when the node stops; then they are killed,
/// unreported, and their claims left to expire (which spends no try).
const STOP_GRACE: Duration = Duration::from_secs(10);
/// How long a stop waits for a claim on its way: the claim loop's, then one behind a submission.
const STOP_CLAIM_WAIT: Duration = Duration::from_secs(11);
/// How long attempts killed at the end of the grace get to end.
const STOP_KILL_WAIT: Duration = Duration::from_secs(5);
/// The longest a worker's stop waits before its last reports: a service manager's stop
/// timeout must be longer (deploy/systemd/shoal.service, the Kubernetes grace period).
pub const STOP_WAIT_MAX: Duration = Duration::from_secs(
    2 * STOP_CLAIM_WAIT.as_secs() + STOP_GRACE.as_secs() + STOP_KILL_WAIT.as_secs(),
);

#[derive(Debug, Clone)]
pub struct WorkerConfig {
    /// Attempts run at once on this node.
    pub slots: u32,
    /// The cpu and memory the attempts on this node may take together; an attempt begins
    /// only when its demand fits in what the running ones leave.
    pub capacity: shoal_raft::job::Capacity,
    pub executor: ExecutorKind,
    /// Attempt directories live here (`<job>-<datum index>-<attempt>`).
    pub work_dir: PathBuf,
    /// Bytes of stdout and of stderr kept per step in the report.
    pub tail_bytes_max: usize,
    /// Keep attempt directories after the attempt (for debugging).
    pub keep_workdirs: bool,
    pub storage: StorageConfig,
    /// Whether the process executor makes its host processes die with the node however it
    /// dies (and join their cgroups, for cpu and memory limits). `false` starts them plainly,
    /// for a program that embeds a worker and owns what it starts.
    pub die_with_node: bool,
    /// Object stores supplied by the embedding program, by bucket URL (`s3://bucket`); empty
    /// for a node. The deterministic simulation serves its buckets from memory.
    pub stores: Vec<(String, std::sync::Arc<dyn object_store::ObjectStore>)>,
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

/// The running worker of one node.
pub struct Worker {
    shared: Arc<Shared>,
    tasks: Vec<JoinHandle<()>>,
}

impl Worker {
    pub async fn start(cluster: Cluster, config: WorkerConfig) -> Result<Worker, WorkerError> {
        metrics::worker().prepare(config.executor.name());
        let work_dir = config.work_dir.clone();
        let work_dir_error = |source| WorkerError::WorkDir {
            path: config.work_dir.clone(),
            source,
        };
        let storage = config.storage.clone();
        let stores = config.stores.clone();
        let resolver = blocking(move || {
            std::fs::create_dir_all(&work_dir)?;
            Ok::<_, std::io::Error>(
                Resolver::new(storage, &work_dir).and_then(|r| r.with_stores(&stores)),
            )
        })
        .await
        .map_err(std::io::Error::other)
        .and_then(|created| created)
        .map_err(work_dir_error)??;
        // Nothing of a previous life runs on, and its attempt directories go.
        let dir = config.work_dir.clone();
        let _ = blocking(move || restart::clean_work_dir(&dir)).await;
        if matches!(config.executor, ExecutorKind::Process(_)) {
            // Finds bwrap once (it runs `bwrap --version`), off the async threads, and
            // removes what step cgroups a previous life left.
            let _ = blocking(bwrap_available).await;
            let node = shoal_raft::format_node_id(cluster.node_id());
            if let Ok(count @ 1..) =
                blocking(move || executor::remove_leftover_cgroups(&node)).await
            {
                tracing::info!(count, "removed step cgroups of this node's previous run");
            }
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
        let (reports, queue) = mpsc::channel(reporter::REPORT_QUEUE_MAX);
        let shared = Arc::new(Shared {
            cluster,
            config,
            resolver: Arc::new(resolver),
            node_transfers: Transfers::node_semaphore(),
            running: Mutex::new(HashMap::new()),
            jobs: Mutex::new(HashMap::new()),
            queue: Mutex::new(VecDeque::new()),
            finished: Mutex::new(HashSet::new()),
            life_start: std::sync::atomic::AtomicU64::new(u64::MAX),
            claim_turn: Arc::new(tokio::sync::Mutex::new(())),
            slot_freed: Notify::new(),
            slot_ended: Notify::new(),
            reporting: AtomicBool::new(false),
            reports,
            stop: CancellationToken::new(),
            killed_by_stop: AtomicBool::new(false),
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
        let weak = Arc::downgrade(&shared);
        shared
            .cluster
            .set_claim_source(Arc::new(move || claims::claim_behind(&weak.upgrade()?)));
        // The claim loop comes first: `shutdown` stops it before the others.
        let tasks = vec![
            spawn(claims::claim_loop(shared.clone())),
            spawn(reporter::reporter(shared.clone(), queue)),
            spawn(watch::claim_watch(shared.clone())),
            spawn(publisher::publisher(shared.clone())),
            spawn(steward::steward(shared.clone())),
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
        if tokio::time::timeout(STOP_CLAIM_WAIT, &mut claim_loop)
            .await
            .is_err()
        {
            claim_loop.abort();
            // An aborted task may be mid-poll: wait, so nothing reaches the queue after the
            // hand-back.
            let _ = claim_loop.await;
        }
        // A claim behind a submission may still be on its way: its grants join the queue
        // before it is handed back (or, if it takes too long, expire with their lease).
        let turn = tokio::time::timeout(STOP_CLAIM_WAIT, self.shared.claim_turn.lock())
            .await
            .ok();
        claims::hand_back_queue(&self.shared).await;
        drop(turn);
        let deadline = tokio::time::Instant::now() + STOP_GRACE;
        self.wait_idle(deadline).await;
        if !self.shared.running().is_empty() {
            self.shared.killed_by_stop.store(true, Ordering::SeqCst);
            for attempt in self.shared.running().values() {
                attempt.cancel.cancel();
            }
            self.wait_idle(tokio::time::Instant::now() + STOP_KILL_WAIT)
                .await;
        }
        self.shared.flush.cancel();
        for task in self.tasks {
            let _ = tokio::time::timeout(Duration::from_secs(5), task).await;
        }
    }

    /// Waits until no attempt runs, or `deadline`.
    async fn wait_idle(&self, deadline: tokio::time::Instant) {
        loop {
            // Listening before looking, so a slot freed in between still wakes this.
            let ended = self.shared.slot_ended.notified();
            tokio::pin!(ended);
            ended.as_mut().enable();
            if self.shared.running().is_empty() || tokio::time::Instant::now() >= deadline {
                return;
            }
            tokio::select! {
                () = ended => {}
                () = tokio::time::sleep_until(deadline) => {}
            }
        }
    }
}

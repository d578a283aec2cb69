//! What the worker's long-lived tasks share: the cluster handle, the config, the attempts
//! running on this node, its queue of claims, and the signals between the tasks.

use std::collections::{HashMap, HashSet, VecDeque};
use std::sync::atomic::AtomicBool;
use std::sync::{Arc, Mutex};

use shoal_raft::Cluster;
use shoal_raft::command::{Completion, Grant};
use shoal_raft::job::{Capacity, Datum, DatumKey, Job, JobSeq};
use shoal_storage::Resolver;
use tokio::sync::{Notify, Semaphore, mpsc};
use tokio_util::sync::CancellationToken;

use crate::WorkerConfig;
use crate::live;

/// An attempt in progress on this node.
pub(crate) struct Running {
    pub(crate) fence: u64,
    /// The cpu and memory it takes from the node.
    pub(crate) demand: Capacity,
    pub(crate) cancel: CancellationToken,
    pub(crate) live: Arc<live::LiveAttempt>,
}

/// What the worker's tasks share.
pub(crate) struct Shared {
    pub(crate) cluster: Cluster,
    pub(crate) config: WorkerConfig,
    pub(crate) resolver: Arc<Resolver>,
    pub(crate) node_transfers: Arc<Semaphore>,
    pub(crate) running: Mutex<HashMap<DatumKey, Running>>,
    /// Jobs attempts ran for (see [`Shared::job_and_datum`]).
    pub(crate) jobs: Mutex<HashMap<JobSeq, Arc<Job>>>,
    /// Claims granted for this node's queue, in grant order: begun when a slot frees.
    pub(crate) queue: Mutex<VecDeque<Grant>>,
    /// Fences of attempts that ended here and whose report may not be applied yet: their
    /// claims must not be adopted again.
    pub(crate) finished: Mutex<HashSet<(DatumKey, u64)>>,
    /// The applied index when this node had ended its previous life's claims (`u64::MAX`
    /// until then): the claim watch adopts only claims granted after it.
    pub(crate) life_start: std::sync::atomic::AtomicU64,
    /// Held by whoever claims (the claim loop, or a claim behind a submission made here)
    /// until the grants are started, and by the claim watch while it adopts orphans. One at
    /// a time, so no free slot is counted twice and no grant in flight is taken for an orphan.
    pub(crate) claim_turn: Arc<tokio::sync::Mutex<()>>,
    /// Wakes the claim loop: a slot freed and nobody else took the claim step.
    pub(crate) slot_freed: Notify,
    /// Set while the reporter holds ended attempts' reports: it takes the claim steps, and the
    /// claim loop does not wake for applied entries meanwhile.
    pub(crate) reporting: AtomicBool,
    /// Wakes a stop waiting for the running attempts to end: a slot freed.
    pub(crate) slot_ended: Notify,
    pub(crate) reports: mpsc::Sender<Completion>,
    pub(crate) stop: CancellationToken,
    /// Set when shutdown kills what still runs after the grace period: those attempts go
    /// unreported (their claims expire without spending a try).
    pub(crate) killed_by_stop: AtomicBool,
    /// Fired once no attempt runs any more: the reporter sends what is left and ends, and
    /// the claim watch ends.
    pub(crate) flush: CancellationToken,
}

/// Jobs attempts were granted for, kept so each attempt does not copy its job's spec.
const JOBS_CACHED_MAX: usize = 256;

impl Shared {
    /// The granted datum and its job, from this node's state. A job's spec never changes
    /// once submitted, so attempts share one copy of it (its counts and state go stale in
    /// the copy; attempts do not read them).
    pub(crate) fn job_and_datum(&self, key: DatumKey) -> Option<(Arc<Job>, Datum)> {
        let cached = lock(&self.jobs).get(&key.job).cloned();
        let state = self.cluster.view().read();
        let datum = state.datums.get(&key)?.clone();
        if let Some(job) = cached {
            return Some((job, datum));
        }
        let job = Arc::new(state.jobs.get(&key.job)?.clone());
        drop(state);
        let mut jobs = lock(&self.jobs);
        if jobs.len() >= JOBS_CACHED_MAX {
            jobs.clear();
        }
        jobs.insert(key.job, job.clone());
        Some((job, datum))
    }

    /// The node's capacity not taken by the attempts in `running`.
    pub(crate) fn free(&self, running: &HashMap<DatumKey, Running>) -> Capacity {
        running
            .values()
            .fold(self.config.capacity, |free, r| free.minus(r.demand))
    }

    pub(crate) fn running(&self) -> std::sync::MutexGuard<'_, HashMap<DatumKey, Running>> {
        self.running
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

pub(crate) fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

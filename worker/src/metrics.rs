//! This node's worker instruments for `/metrics`: attempts started and ended, time from
//! submission to an attempt's start, run time, bytes moved, image pulls, and work claimed
//! behind this node's own submissions.
//!
//! Process-wide like the log's (see `shoal_raft::metrics`): one node runs per process.

use std::sync::LazyLock;
use std::time::Duration;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::{Registry, Unit};
use shoal_raft::metrics::duration_histogram;

/// The executor that ran an attempt.
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ExecutorLabels {
    pub executor: String,
}

/// The executor that ran an attempt and how the attempt ended.
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct OutcomeLabels {
    pub executor: String,
    pub outcome: String,
}

type Histograms<L> = Family<L, Histogram, fn() -> Histogram>;

#[derive(Debug)]
pub struct WorkerMetrics {
    pub attempts_started: Family<ExecutorLabels, Counter>,
    pub attempts_ended: Family<OutcomeLabels, Counter>,
    /// From the job's submission (the leader's clock) to the start of the attempt (this
    /// node's), for every attempt.
    pub queue_wait_seconds: Histograms<ExecutorLabels>,
    pub run_seconds: Histograms<OutcomeLabels>,
    pub downloaded_bytes: Counter,
    pub uploaded_bytes: Counter,
    pub image_pull_seconds: Histogram,
    /// Datums granted to this node by claims written right behind its own submissions.
    pub granted_behind_submissions: Counter,
    /// Queued claims this node began in the entry of the report that freed their slots.
    pub begun_behind_reports: Counter,
}

static WORKER: LazyLock<WorkerMetrics> = LazyLock::new(|| WorkerMetrics {
    attempts_started: Family::default(),
    attempts_ended: Family::default(),
    queue_wait_seconds: Family::new_with_constructor(duration_histogram),
    run_seconds: Family::new_with_constructor(duration_histogram),
    downloaded_bytes: Counter::default(),
    uploaded_bytes: Counter::default(),
    image_pull_seconds: duration_histogram(),
    granted_behind_submissions: Counter::default(),
    begun_behind_reports: Counter::default(),
});

/// This process's worker instruments.
pub fn worker() -> &'static WorkerMetrics {
    &WORKER
}

impl WorkerMetrics {
    /// Makes this node's series exist at zero before its first attempt, so a node that has
    /// run nothing shows zeros instead of nothing.
    pub(crate) fn prepare(&self, executor: &str) {
        use shoal_raft::job::AttemptOutcome;
        let labels = ExecutorLabels {
            executor: executor.to_string(),
        };
        let _ = self.attempts_started.get_or_create(&labels);
        let _ = self.queue_wait_seconds.get_or_create(&labels);
        // The outcomes a node reports itself (expiries and losses are the log's).
        for outcome in [
            AttemptOutcome::Succeeded,
            AttemptOutcome::ExecutorError,
            AttemptOutcome::SystemError,
            AttemptOutcome::Canceled,
            AttemptOutcome::TimedOut,
        ] {
            let labels = OutcomeLabels {
                executor: executor.to_string(),
                outcome: outcome.name().to_string(),
            };
            let _ = self.attempts_ended.get_or_create(&labels);
            let _ = self.run_seconds.get_or_create(&labels);
        }
    }

    /// Counts an attempt that starts.
    pub(crate) fn started(&self, executor: &str) {
        let labels = ExecutorLabels {
            executor: executor.to_string(),
        };
        self.attempts_started.get_or_create(&labels).inc();
    }

    /// Records an attempt that started `waited` after its job was submitted.
    pub(crate) fn waited(&self, executor: &str, waited: Duration) {
        let labels = ExecutorLabels {
            executor: executor.to_string(),
        };
        self.queue_wait_seconds
            .get_or_create(&labels)
            .observe(waited.as_secs_f64());
    }

    /// Counts an attempt that ran `took` and ended with `outcome`.
    pub(crate) fn ended(&self, executor: &str, outcome: &str, took: Duration) {
        let labels = OutcomeLabels {
            executor: executor.to_string(),
            outcome: outcome.to_string(),
        };
        self.attempts_ended.get_or_create(&labels).inc();
        self.run_seconds
            .get_or_create(&labels)
            .observe(took.as_secs_f64());
    }
}

/// Adds the worker's instruments to `registry` (whose prefix is `shoal`).
pub fn register(registry: &mut Registry) {
    let m = worker();
    let worker = registry.sub_registry_with_prefix("worker");
    worker.register(
        "attempts_started",
        "Attempts this node started, by executor",
        m.attempts_started.clone(),
    );
    worker.register(
        "attempts_ended",
        "Attempts this node ended, by executor and outcome",
        m.attempts_ended.clone(),
    );
    worker.register(
        "queue_wait_duration_seconds",
        "Time from a job's submission to the start of each of its attempts on this node",
        m.queue_wait_seconds.clone(),
    );
    worker.register(
        "run_duration_seconds",
        "Time from an attempt's start to its end on this node, by executor and outcome",
        m.run_seconds.clone(),
    );
    worker.register_with_unit(
        "downloaded",
        "Input bytes this node downloaded for its attempts",
        Unit::Bytes,
        m.downloaded_bytes.clone(),
    );
    worker.register_with_unit(
        "uploaded",
        "Output bytes this node uploaded from its attempts",
        Unit::Bytes,
        m.uploaded_bytes.clone(),
    );
    worker.register(
        "image_pull_duration_seconds",
        "Time to pull an image the container engine did not have",
        m.image_pull_seconds.clone(),
    );
    worker.register(
        "granted_behind_submissions",
        "Datums granted to this node by claims written right behind its own submissions",
        m.granted_behind_submissions.clone(),
    );
    worker.register(
        "begun_behind_reports",
        "Queued claims this node began in the entry of the report that freed their slots",
        m.begun_behind_reports.clone(),
    );
}

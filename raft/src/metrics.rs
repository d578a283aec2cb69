//! The replicated log's instruments for `/metrics`, counted where the work happens.
//!
//! One node runs per process, so the instruments are the process's own ([`raft`]); nodes that
//! share a process (the raft tests, the simulation) share them, and nothing reads them there.
//! What can be read when scraped (term, indexes, the replicated state) is not kept here: the
//! node reads it from [`crate::Cluster`] and [`crate::State`] at each scrape.

use std::sync::LazyLock;
use std::time::Duration;

use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

/// Buckets for durations from 100 µs to about 52 s (×2 each).
pub fn duration_buckets() -> impl Iterator<Item = f64> {
    exponential_buckets(0.0001, 2.0, 20)
}

/// A histogram of durations in seconds (see [`duration_buckets`]).
pub fn duration_histogram() -> Histogram {
    Histogram::new(duration_buckets())
}

/// Records `elapsed` in seconds.
pub fn observe(histogram: &Histogram, elapsed: Duration) {
    histogram.observe(elapsed.as_secs_f64());
}

/// The log's and the state machine's instruments.
#[derive(Debug)]
pub struct RaftMetrics {
    pub entries_appended: Counter,
    pub entries_applied: Counter,
    /// One observation per batch of entries applied (state changes and their persisting).
    pub apply_seconds: Histogram,
    /// One observation per durable commit of appended entries (its fsync).
    pub log_flush_seconds: Histogram,
    pub snapshots_built: Counter,
    pub snapshots_installed: Counter,
    /// Operations this node sent to the leader, and how long each took to be answered.
    pub forwarded: Counter,
    pub forward_seconds: Histogram,
    /// Times this node saw the leader change (including to "no leader").
    pub leader_changes: Counter,
    /// The last committed index this node stored.
    pub commit_index: Gauge,
}

static RAFT: LazyLock<RaftMetrics> = LazyLock::new(|| RaftMetrics {
    entries_appended: Counter::default(),
    entries_applied: Counter::default(),
    apply_seconds: duration_histogram(),
    log_flush_seconds: duration_histogram(),
    snapshots_built: Counter::default(),
    snapshots_installed: Counter::default(),
    forwarded: Counter::default(),
    forward_seconds: duration_histogram(),
    leader_changes: Counter::default(),
    commit_index: Gauge::default(),
});

/// This process's log instruments.
pub fn raft() -> &'static RaftMetrics {
    &RAFT
}

/// Adds the log's instruments to `registry` (whose prefix is `shoal`).
pub fn register(registry: &mut Registry) {
    let m = raft();
    let raft = registry.sub_registry_with_prefix("raft");
    raft.register(
        "entries_appended",
        "Log entries this node appended to its log",
        m.entries_appended.clone(),
    );
    raft.register(
        "entries_applied",
        "Log entries this node applied to its state",
        m.entries_applied.clone(),
    );
    raft.register(
        "apply_duration_seconds",
        "Time to apply one batch of committed entries and persist the state they changed",
        m.apply_seconds.clone(),
    );
    raft.register(
        "log_flush_duration_seconds",
        "Time of one durable commit (fsync) of appended log entries",
        m.log_flush_seconds.clone(),
    );
    raft.register(
        "snapshots_built",
        "Snapshots of the state this node built",
        m.snapshots_built.clone(),
    );
    raft.register(
        "snapshots_installed",
        "Snapshots this node installed from the leader",
        m.snapshots_installed.clone(),
    );
    raft.register(
        "forwarded_operations",
        "Writes and membership operations this node forwarded to the leader",
        m.forwarded.clone(),
    );
    raft.register(
        "forward_duration_seconds",
        "Time from forwarding an operation to the leader to its answer",
        m.forward_seconds.clone(),
    );
    raft.register(
        "leader_changes",
        "Times this node saw the leader change or go",
        m.leader_changes.clone(),
    );
    raft.register(
        "commit_index",
        "Index of the last log entry this node knows committed",
        m.commit_index.clone(),
    );
}

//! The oracle: what must hold however the faults fell.
//!
//! Every 100 simulated milliseconds ([`check_continuously`]):
//! - at most one leader per term;
//! - nodes that applied the same log index hold the same state;
//! - a datum a node once showed in a terminal state stays in it on that node.
//!
//! At the end, after the liveness phase ([`Oracle::check_end`]):
//! - every acknowledged task exists on every node and ended; no two jobs share a key, and
//!   every job was submitted by some client;
//! - executions counted outside shoal match the attempts shown: every execution belongs to an
//!   attempt, none ran twice, and every attempt that reports an executor's exit ran;
//! - no node lost a claim to lease expiry while it was healthy and connected for the whole
//!   lease before.
//!
//! Clients add what they see: a task's terminal state never changes between reads (a read
//! that began after a read showing it ended shows it too; one that overlapped it may be
//! ordered before it), an acknowledged task is always found; the driver adds that a write succeeds within
//! `RECOVERY_MS` of each fault ending and that the healed cluster settles.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use shoal_raft::NodeId;
use shoal_raft::job::{AttemptOutcome, DatumKey, DatumState};
use shoal_raft::state::State;

use super::faults::FaultKind;
use super::node::{LEASE_MS, Running};
use super::world::{Shared, lock};

/// A submission as its client knows it.
#[derive(Debug, Clone, Default)]
pub struct Submission {
    /// The task id, once acknowledged.
    pub id: Option<String>,
    /// The client stopped retrying without an answer: it may or may not exist.
    pub gave_up: bool,
    /// The terminal state a read showed, and when that read ended.
    pub terminal: Option<(String, tokio::time::Instant)>,
    /// A pipeline job's outputs' prefix in the bucket (`out/<key>/`).
    pub egress: Option<String>,
}

#[derive(Default)]
struct Books {
    violations: Vec<String>,
    submissions: BTreeMap<String, Submission>,
    /// Acknowledged task ids, in acknowledgement order.
    acknowledged: Vec<String>,
    /// Acknowledged pipeline job ids.
    pipelines: Vec<String>,
    by_id: BTreeMap<String, String>,
    /// Per term, the node seen leading it.
    leaders: BTreeMap<u64, usize>,
    /// Per node, datums seen terminal and their state.
    terminal: Vec<BTreeMap<DatumKey, DatumState>>,
    /// Per node, intervals (now_ms) in which it was not healthy and connected.
    unhealthy: Vec<Vec<(u64, u64)>>,
    recoveries: Vec<(FaultKind, u64)>,
}

pub struct Oracle {
    node_ids: Vec<NodeId>,
    books: Mutex<Books>,
}

fn is_terminal(state: DatumState) -> bool {
    matches!(
        state,
        DatumState::Done | DatumState::Failed | DatumState::Canceled | DatumState::Skipped
    )
}

const TES_TERMINAL: [&str; 5] = [
    "COMPLETE",
    "EXECUTOR_ERROR",
    "SYSTEM_ERROR",
    "CANCELED",
    "PREEMPTED",
];

/// Where two states' values differ (not indexes, not what awaits persisting); `None` when
/// they are the same.
fn difference(a: &State, b: &State) -> Option<String> {
    fn first_difference<K: Ord + std::fmt::Debug, V: PartialEq + std::fmt::Debug>(
        what: &str,
        a: &BTreeMap<K, V>,
        b: &BTreeMap<K, V>,
    ) -> Option<String> {
        if a == b {
            return None;
        }
        for (key, value) in a {
            match b.get(key) {
                Some(other) if other == value => {}
                other => return Some(format!("{what} {key:?}: {value:?} / {other:?}")),
            }
        }
        let extra = b.keys().find(|k| !a.contains_key(k));
        Some(format!("{what} {extra:?} only in the second"))
    }
    let scalars = (a.cluster_id == b.cluster_id
        && a.clock_ms == b.clock_ms
        && a.term == b.term
        && a.lease_epoch_ms == b.lease_epoch_ms)
        .then_some(())
        .map_or_else(
            || {
                Some(format!(
                    "clock {} / {}, term {} / {}, lease epoch {} / {}",
                    a.clock_ms, b.clock_ms, a.term, b.term, a.lease_epoch_ms, b.lease_epoch_ms
                ))
            },
            |()| None,
        );
    scalars
        .or_else(|| first_difference("node", &a.nodes, &b.nodes))
        .or_else(|| first_difference("job", &a.jobs, &b.jobs))
        .or_else(|| first_difference("datum", &a.datums, &b.datums))
}

impl Oracle {
    pub fn new(node_ids: Vec<NodeId>) -> Oracle {
        let count = node_ids.len();
        let books = Books {
            terminal: vec![BTreeMap::new(); count],
            unhealthy: vec![Vec::new(); count],
            ..Books::default()
        };
        Oracle {
            node_ids,
            books: Mutex::new(books),
        }
    }

    fn books(&self) -> std::sync::MutexGuard<'_, Books> {
        lock(&self.books)
    }

    pub fn violation(&self, what: String) {
        let mut books = self.books();
        if books.violations.len() < 50 {
            books.violations.push(what);
        }
    }

    pub fn violations(&self) -> Vec<String> {
        self.books().violations.clone()
    }

    pub fn submitted(&self, key: &str) {
        self.books()
            .submissions
            .insert(key.to_string(), Submission::default());
    }

    pub fn acknowledged_as(&self, key: &str, id: String) {
        let mut books = self.books();
        if let Some(earlier) = books.by_id.get(&id)
            && earlier != key
        {
            let what = format!("keys {earlier} and {key} were both acknowledged as task {id}");
            books.violations.push(what);
        }
        books.by_id.insert(id.clone(), key.to_string());
        books.acknowledged.push(id.clone());
        if let Some(submission) = books.submissions.get_mut(key) {
            submission.id = Some(id);
        }
    }

    pub fn pipeline_acknowledged(&self, key: &str, id: String, egress: &str) {
        let mut books = self.books();
        books.by_id.insert(id.clone(), key.to_string());
        books.pipelines.push(id.clone());
        if let Some(submission) = books.submissions.get_mut(key) {
            submission.id = Some(id);
            submission.egress = Some(egress.to_string());
        }
    }

    pub fn gave_up(&self, key: &str) {
        if let Some(submission) = self.books().submissions.get_mut(key) {
            submission.gave_up = true;
        }
    }

    pub fn acknowledged(&self) -> usize {
        let books = self.books();
        books.acknowledged.len() + books.pipelines.len()
    }

    /// An acknowledged task id picked by `pick`.
    pub fn random_acknowledged(&self, pick: u64) -> Option<String> {
        let books = self.books();
        let count = books.acknowledged.len() as u64;
        (count > 0).then(|| books.acknowledged[(pick % count) as usize].clone())
    }

    /// A client's read of task `id` from node `node`, begun at `began`, answered `state`
    /// (now). Linearizable reads: one that began after an earlier read ended sees at least
    /// what that one saw; two that overlap may be ordered either way.
    pub fn observed(&self, id: &str, state: &str, node: usize, began: tokio::time::Instant) {
        let now = tokio::time::Instant::now();
        let mut books = self.books();
        let Some(key) = books.by_id.get(id).cloned() else {
            return;
        };
        let Some(submission) = books.submissions.get_mut(&key) else {
            return;
        };
        let terminal = TES_TERMINAL.contains(&state);
        match &submission.terminal {
            Some((earlier, seen)) if earlier != state && (terminal || began > *seen) => {
                let what = format!("task {id} read {state} on n{node} after it was {earlier}");
                books.violations.push(what);
            }
            None if terminal => submission.terminal = Some((state.to_string(), now)),
            _ => {}
        }
    }

    pub fn unhealthy(&self, nodes: &[usize], from_ms: u64, until_ms: u64) {
        let mut books = self.books();
        for &node in nodes {
            books.unhealthy[node].push((from_ms, until_ms));
        }
    }

    pub fn recovered(&self, kind: FaultKind, ms: u64) {
        self.books().recoveries.push((kind, ms));
    }

    /// Write recoveries after each fault (ms; `u64::MAX` when none came in time).
    pub fn recoveries(&self) -> Vec<(FaultKind, u64)> {
        self.books().recoveries.clone()
    }

    /// Whether every acknowledged task and job has ended in `state`.
    pub fn all_ended(&self, state: &State) -> bool {
        let books = self.books();
        books
            .acknowledged
            .iter()
            .chain(&books.pipelines)
            .all(|id| state.job(id).is_some_and(|job| job.finished()))
    }

    /// The checks made at every step.
    fn check_step(&self, running: &[(usize, Running)]) {
        let mut books = self.books();
        let mut at_index: BTreeMap<u64, usize> = BTreeMap::new();
        for (node, run) in running {
            let progress = run.cluster.progress();
            if progress.is_leader {
                match books.leaders.get(&progress.term) {
                    Some(other) if other != node => {
                        let what = format!(
                            "two leaders in term {}: n{other} and n{node}",
                            progress.term
                        );
                        books.violations.push(what);
                    }
                    _ => {
                        books.leaders.insert(progress.term, *node);
                    }
                }
            }
            let view = run.cluster.view();
            let applied = view.applied().borrow().map(|id| id.index).unwrap_or(0);
            let state = view.read();
            if let Some(other) = at_index.get(&applied) {
                let other_view = running
                    .iter()
                    .find(|(n, _)| n == other)
                    .map(|(_, r)| r.cluster.view());
                if let Some(other_view) = other_view
                    && let Some(difference) = difference(&other_view.read(), &state)
                {
                    let what = format!(
                        "n{other} and n{node} applied index {applied} to different states: \
                         {difference}"
                    );
                    books.violations.push(what);
                }
            } else {
                at_index.insert(applied, *node);
            }
            let seen = &mut books.terminal[*node];
            let mut changed = Vec::new();
            for (key, datum) in &state.datums {
                match seen.get(key) {
                    Some(earlier) if *earlier != datum.state => {
                        changed.push(format!(
                            "n{node} showed datum {key:?} {:?} after {earlier:?}",
                            datum.state
                        ));
                    }
                    None if is_terminal(datum.state) => {
                        seen.insert(*key, datum.state);
                    }
                    _ => {}
                }
            }
            books.violations.extend(changed);
        }
    }

    /// The checks made once everything has healed and settled.
    pub fn check_end(
        &self,
        running: &[Running],
        executions: &BTreeMap<String, u32>,
        outputs: &BTreeMap<String, String>,
    ) {
        let Some(first) = running.first() else {
            self.violation("no node runs at the end".to_string());
            return;
        };
        let state = first.cluster.view().read().clone();
        let mut found = Vec::new();
        {
            let books = self.books();
            for (key, submission) in &books.submissions {
                let Some(id) = &submission.id else { continue };
                for run in running {
                    let view = run.cluster.view().read();
                    match view.job(id) {
                        None => found.push(format!(
                            "acknowledged task {id} ({key}) missing on {}",
                            run.cluster.addr().name
                        )),
                        Some(job) => {
                            if !job.finished() {
                                found.push(format!("job {id} ({key}) never ended"));
                            }
                        }
                    }
                }
            }
            // Every job came from a submission, and no key made two.
            let mut keys = BTreeSet::new();
            for job in state.jobs.values() {
                let key = job.spec.idempotency.as_ref().map(|k| k.key.clone());
                match key {
                    Some(key) if !books.submissions.contains_key(&key) => found.push(format!(
                        "job {} has a key no client used: {key}",
                        job.spec.id
                    )),
                    Some(key) if !keys.insert(key.clone()) => {
                        found.push(format!("key {key} made two jobs"))
                    }
                    Some(_) => {}
                    None => found.push(format!("job {} has no key", job.spec.id)),
                }
            }
        }
        found.extend(self.check_executions(&state, executions));
        found.extend(self.check_outputs(&state, outputs));
        found.extend(self.check_leases(&state));
        let mut books = self.books();
        for what in found {
            if books.violations.len() < 50 {
                books.violations.push(what);
            }
        }
    }

    fn index_of(&self, node: NodeId) -> Option<usize> {
        self.node_ids.iter().position(|id| *id == node)
    }

    /// Executions against attempts: each execution is an attempt shown, none ran twice, and
    /// each attempt whose report shows an executor's exit ran.
    fn check_executions(&self, state: &State, executions: &BTreeMap<String, u32>) -> Vec<String> {
        let mut found = Vec::new();
        let mut shown = BTreeSet::new();
        for datum in state.datums.values() {
            let Some(job) = state.jobs.get(&datum.key.job) else {
                continue;
            };
            for attempt in &datum.attempts {
                let name = shoal_worker::executor::container_name(&[
                    &shoal_raft::format_node_id(attempt.node),
                    &job.spec.id,
                    &datum.key.index.to_string(),
                    &attempt.number.to_string(),
                    "0",
                ]);
                let reported_exit = attempt
                    .report
                    .as_ref()
                    .is_some_and(|r| !r.executors.is_empty());
                if reported_exit && !executions.contains_key(&name) {
                    found.push(format!(
                        "attempt {} of task {} reports an exit but never ran",
                        attempt.number, job.spec.id
                    ));
                }
                shown.insert(name);
            }
        }
        for (name, count) in executions {
            if *count > 1 {
                found.push(format!("{name} ran {count} times"));
            }
            if !shown.contains(name) {
                found.push(format!("{name} ran but no attempt shows it"));
            }
        }
        found
    }

    /// Each done datum of a pipeline published one output per input, made by the attempt whose
    /// success committed (the executor writes its step's name into it); nothing else is
    /// published under a job's egress.
    fn check_outputs(&self, state: &State, outputs: &BTreeMap<String, String>) -> Vec<String> {
        let books = self.books();
        let mut found = Vec::new();
        for submission in books.submissions.values() {
            let (Some(id), Some(egress)) = (&submission.id, &submission.egress) else {
                continue;
            };
            let Some(job) = state.job(id) else { continue };
            let mut expected = BTreeMap::new();
            for datum in state.datums_of(job.seq) {
                if datum.state != DatumState::Done {
                    continue;
                }
                let Some(attempt) = datum
                    .attempts
                    .iter()
                    .rev()
                    .find(|a| a.outcome == Some(AttemptOutcome::Succeeded))
                else {
                    found.push(format!(
                        "datum {:?} of {id} is done without a success",
                        datum.key
                    ));
                    continue;
                };
                let made_by = shoal_worker::executor::container_name(&[
                    &shoal_raft::format_node_id(attempt.node),
                    &job.spec.id,
                    &datum.key.index.to_string(),
                    &attempt.number.to_string(),
                    "0",
                ]);
                for input in &datum.inputs {
                    expected.insert(format!("{egress}{}.out", input.path), made_by.clone());
                }
            }
            let published: BTreeMap<&String, &String> = outputs
                .iter()
                .filter(|(path, _)| path.starts_with(egress.as_str()))
                .collect();
            for (path, made_by) in &expected {
                match published.get(path) {
                    None => found.push(format!("{path} of a done datum was never published")),
                    Some(content) if *content != made_by => found.push(format!(
                        "{path} was published by {content}, not by {made_by} whose success committed"
                    )),
                    Some(_) => {}
                }
            }
            for path in published.keys() {
                if !expected.contains_key(*path) {
                    found.push(format!("{path} was published but no done datum made it"));
                }
            }
        }
        found
    }

    /// No claim expired on a node that was healthy and connected for the lease before.
    fn check_leases(&self, state: &State) -> Vec<String> {
        let books = self.books();
        let mut found = Vec::new();
        // The lease, plus a heartbeat period and change for the heartbeat in flight.
        let window = LEASE_MS + LEASE_MS / 4 + 1_000;
        for datum in state.datums.values() {
            for attempt in &datum.attempts {
                if attempt.outcome != Some(AttemptOutcome::LeaseExpired) {
                    continue;
                }
                let (Some(node), Some(ended)) = (self.index_of(attempt.node), attempt.ended_ms)
                else {
                    continue;
                };
                let from = ended.saturating_sub(window);
                let troubled = books.unhealthy[node]
                    .iter()
                    .any(|(start, end)| *start <= ended && *end >= from);
                if !troubled {
                    found.push(format!(
                        "n{node} lost its claim on {:?} (attempt {}) to lease expiry at {} \
                         although it was healthy and connected",
                        datum.key, attempt.number, ended
                    ));
                }
            }
        }
        found
    }
}

/// Runs the step checks every 100 simulated milliseconds.
pub(super) async fn check_continuously(shared: Arc<Shared>) {
    loop {
        tokio::time::sleep(Duration::from_millis(100)).await;
        let running: Vec<(usize, Running)> = lock(&shared.nodes)
            .iter()
            .enumerate()
            .filter_map(|(i, r)| r.clone().map(|r| (i, r)))
            .collect();
        shared.oracle.check_step(&running);
    }
}

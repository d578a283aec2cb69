//! The work queue's transitions: submitting jobs, claiming datums under fences, reports of
//! started and ended attempts, cancel, retry and lease expiry. Pure, like all of `State`.
//!
//! Rules kept here:
//! - A datum is held by at most one claim; a claim's fence is the index of the entry that
//!   granted it, and a report counts only with the datum's current fence and node.
//! - Claims go out in FIFO order across jobs (job sequence, then datum index), skipping jobs at
//!   their `parallelism`; draining nodes get nothing.
//! - A claim granted for a node's queue (prefetch) is `queued` until the node `Begin`s it.
//!   When nothing is pending, a node with free slots steals queued claims from other nodes,
//!   last in claim order first (what their holders would begin last); the attempt keeps its
//!   number, since it never began. Queued claims canceled, handed back or expired were
//!   never attempts: they spend nothing.
//! - Counts per job and the pending, claim and id indexes always agree with the datums.

use std::ops::Bound;

use super::{RowKey, State};
use crate::command::{Completion, Grant, Outcome};
use crate::job::{
    Attempt, AttemptOutcome, AttemptReport, Datum, DatumKey, DatumState, InputSpec, Job, JobKind,
    JobSeq, JobSpec,
};
use crate::types::NodeId;

/// Most datums one command may add (larger jobs arrive in chunks).
pub const DATUMS_PER_COMMAND_MAX: usize = 10_000;
/// Most datums one job may have.
pub const DATUMS_PER_JOB_MAX: u32 = 1_000_000;
/// Most datums one `ClaimBatch` grants.
pub const CLAIM_BATCH_MAX: u32 = 256;
/// Most tries a job may give each datum.
pub const DATUM_TRIES_MAX: u32 = 100;
/// A datum whose attempts took their node down (lease expired) this many times fails: it
/// may be what kills the nodes.
pub const LEASE_EXPIRIES_MAX: u32 = 3;

fn job_range(seq: JobSeq) -> std::ops::RangeInclusive<DatumKey> {
    DatumKey { job: seq, index: 0 }..=DatumKey {
        job: seq,
        index: u32::MAX,
    }
}

fn refused(reason: impl Into<String>) -> Outcome {
    Outcome::Refused {
        reason: reason.into(),
    }
}

impl State {
    pub(super) fn submit_job(
        &mut self,
        now_ms: u64,
        spec: &JobSpec,
        datums: &[Vec<InputSpec>],
        seal: bool,
    ) -> Outcome {
        if let Some(&seq) = self.job_ids.get(&spec.id) {
            return Outcome::JobSubmitted {
                job_id: spec.id.clone(),
                seq,
            };
        }
        if spec.datum_tries == 0 || spec.datum_tries > DATUM_TRIES_MAX {
            return refused(format!("datum_tries must be 1..={DATUM_TRIES_MAX}"));
        }
        if spec.kind == JobKind::Task && (datums.len() != 1 || !seal) {
            return refused("a task is exactly one sealed datum");
        }
        if datums.len() > DATUMS_PER_COMMAND_MAX {
            return refused(format!(
                "at most {DATUMS_PER_COMMAND_MAX} datums per command"
            ));
        }
        let seq = self
            .jobs
            .last_key_value()
            .map(|(seq, _)| seq + 1)
            .unwrap_or(1);
        let job = Job {
            seq,
            spec: spec.clone(),
            // Never earlier than a job before it (see `State::clock_ms`).
            created_ms: self.clock_ms.max(now_ms),
            datum_count: 0,
            sealed: false,
            canceled: false,
            counts: Default::default(),
            ended_ms: None,
        };
        self.jobs.insert(seq, job);
        self.job_ids.insert(spec.id.clone(), seq);
        self.index_job_tags(seq);
        self.append_datums(seq, datums, seal, now_ms);
        Outcome::JobSubmitted {
            job_id: spec.id.clone(),
            seq,
        }
    }

    pub(super) fn add_datums(
        &mut self,
        now_ms: u64,
        job_id: &str,
        datums: &[Vec<InputSpec>],
        seal: bool,
    ) -> Outcome {
        let Some(job) = self.job_ids.get(job_id).and_then(|seq| self.jobs.get(seq)) else {
            return Outcome::UnknownJob {
                job_id: job_id.to_string(),
            };
        };
        if job.sealed || job.canceled {
            return refused(format!("job {job_id} takes no more datums"));
        }
        if datums.len() > DATUMS_PER_COMMAND_MAX {
            return refused(format!(
                "at most {DATUMS_PER_COMMAND_MAX} datums per command"
            ));
        }
        if u64::from(job.datum_count) + datums.len() as u64 > u64::from(DATUMS_PER_JOB_MAX) {
            return refused(format!("a job has at most {DATUMS_PER_JOB_MAX} datums"));
        }
        let seq = job.seq;
        self.append_datums(seq, datums, seal, now_ms);
        Outcome::Changed {
            datums: datums.len() as u32,
        }
    }

    fn append_datums(&mut self, seq: JobSeq, datums: &[Vec<InputSpec>], seal: bool, now_ms: u64) {
        let Some(job) = self.jobs.get_mut(&seq) else {
            return;
        };
        let first = job.datum_count;
        job.datum_count += datums.len() as u32;
        job.counts.pending += datums.len() as u32;
        job.sealed = seal;
        for (offset, inputs) in datums.iter().enumerate() {
            let key = DatumKey {
                job: seq,
                index: first + offset as u32,
            };
            let datum = Datum {
                key,
                inputs: inputs.clone(),
                state: DatumState::Pending,
                claim: None,
                attempts: Vec::new(),
                retried_after: 0,
            };
            self.datums.insert(key, datum);
            self.pending.insert(key);
            self.dirty.insert(RowKey::Datum(key));
        }
        self.touch_job(seq, now_ms);
    }

    /// Marks a job changed and records when it finished.
    fn touch_job(&mut self, seq: JobSeq, now_ms: u64) {
        if let Some(job) = self.jobs.get_mut(&seq) {
            let finished = matches!(
                job.state(),
                crate::job::JobState::Done
                    | crate::job::JobState::Error
                    | crate::job::JobState::Canceled
            );
            job.ended_ms = if finished {
                job.ended_ms.or(Some(now_ms))
            } else {
                None
            };
            self.dirty.insert(RowKey::Job(seq));
            self.index_job_state(seq);
        }
    }

    /// Moves a datum to `new`, keeping counts and the pending index in step.
    fn set_datum_state(&mut self, key: DatumKey, new: DatumState, now_ms: u64) {
        let Some(datum) = self.datums.get_mut(&key) else {
            return;
        };
        let old = datum.state;
        datum.state = new;
        self.dirty.insert(RowKey::Datum(key));
        if old == new {
            return;
        }
        if let Some(job) = self.jobs.get_mut(&key.job) {
            *job.counts.slot(old) -= 1;
            *job.counts.slot(new) += 1;
        }
        if old == DatumState::Pending {
            self.pending.remove(&key);
        }
        if new == DatumState::Pending {
            self.pending.insert(key);
        }
        self.touch_job(key.job, now_ms);
    }

    /// Whether another node holds a queued claim `node` could steal.
    pub fn has_stealable(&self, node: NodeId) -> bool {
        self.queued.iter().any(|key| {
            self.datums
                .get(key)
                .and_then(|d| d.claim)
                .is_some_and(|c| c.node != node)
        })
    }

    /// Whether a `ClaimBatch` would grant anything now: a pending datum of a job below its
    /// `parallelism`. Costs one step per job at its cap, not one per pending datum.
    pub fn has_claimable(&self) -> bool {
        let mut cursor = Bound::Unbounded;
        while let Some(key) = self
            .pending
            .range((cursor, Bound::Unbounded))
            .next()
            .copied()
        {
            let Some(job) = self.jobs.get(&key.job) else {
                return false;
            };
            let parallelism = job.spec.parallelism;
            if parallelism == 0 || job.counts.active() < parallelism {
                return true;
            }
            cursor = Bound::Excluded(DatumKey {
                job: key.job,
                index: u32::MAX,
            });
        }
        false
    }

    pub(super) fn claim_batch(
        &mut self,
        fence: u64,
        now_ms: u64,
        node_id: NodeId,
        max: u32,
        queue: u32,
    ) -> Outcome {
        let Some(node) = self.nodes.get(&node_id) else {
            return Outcome::UnknownNode { node_id };
        };
        if node.draining {
            return Outcome::Claimed { grants: Vec::new() };
        }
        let now = max.min(CLAIM_BATCH_MAX) as usize;
        let total = max.saturating_add(queue).min(CLAIM_BATCH_MAX) as usize;
        let mut grants = Vec::new();
        let mut cursor = Bound::Unbounded;
        while grants.len() < total {
            let Some(key) = self
                .pending
                .range((cursor, Bound::Unbounded))
                .next()
                .copied()
            else {
                break;
            };
            let Some(job) = self.jobs.get(&key.job) else {
                break;
            };
            let parallelism = job.spec.parallelism;
            if parallelism > 0 && job.counts.active() >= parallelism {
                cursor = Bound::Excluded(DatumKey {
                    job: key.job,
                    index: u32::MAX,
                });
                continue;
            }
            let queued = grants.len() >= now;
            grants.push(self.grant(key, node_id, fence, now_ms, queued));
            cursor = Bound::Excluded(key);
        }
        while grants.len() < now {
            let Some(key) = self.queued.iter().rev().copied().find(|key| {
                self.datums
                    .get(key)
                    .and_then(|d| d.claim)
                    .is_some_and(|c| c.node != node_id)
            }) else {
                break;
            };
            grants.push(self.steal(key, node_id, fence, now_ms));
        }
        Outcome::Claimed { grants }
    }

    fn grant(
        &mut self,
        key: DatumKey,
        node: NodeId,
        fence: u64,
        now_ms: u64,
        queued: bool,
    ) -> Grant {
        let claim = crate::job::Claim {
            node,
            fence,
            since_ms: now_ms,
            queued,
        };
        let datum = self
            .datums
            .get_mut(&key)
            .expect("pending index names a datum");
        datum.claim = Some(claim);
        let number = datum.attempts.len() as u32 + 1;
        datum.attempts.push(Attempt {
            number,
            node,
            fence,
            claimed_ms: now_ms,
            started_ms: None,
            ended_ms: None,
            outcome: None,
            report: None,
        });
        self.claims.entry(node).or_default().insert(key);
        if queued {
            self.queued.insert(key);
        }
        self.set_datum_state(key, DatumState::Claimed, now_ms);
        Grant {
            datum: key,
            fence,
            attempt: number,
            queued,
        }
    }

    /// Takes a queued claim from its node and grants it to `node` to begin now.
    fn steal(&mut self, key: DatumKey, node: NodeId, fence: u64, now_ms: u64) -> Grant {
        self.drop_claim(key);
        let datum = self
            .datums
            .get_mut(&key)
            .expect("queued index names a datum");
        datum.claim = Some(crate::job::Claim {
            node,
            fence,
            since_ms: now_ms,
            queued: false,
        });
        let attempt = datum
            .attempts
            .last_mut()
            .expect("a claimed datum has an attempt");
        attempt.node = node;
        attempt.fence = fence;
        attempt.claimed_ms = now_ms;
        let number = attempt.number;
        self.claims.entry(node).or_default().insert(key);
        self.dirty.insert(RowKey::Datum(key));
        self.touch_job(key.job, now_ms);
        Grant {
            datum: key,
            fence,
            attempt: number,
            queued: false,
        }
    }

    /// Removes the datum's claim and its traces in the indexes.
    fn drop_claim(&mut self, key: DatumKey) -> Option<crate::job::Claim> {
        let claim = self.datums.get_mut(&key)?.claim.take()?;
        if let Some(held) = self.claims.get_mut(&claim.node) {
            held.remove(&key);
            if held.is_empty() {
                self.claims.remove(&claim.node);
            }
        }
        self.queued.remove(&key);
        self.dirty.insert(RowKey::Datum(key));
        Some(claim)
    }

    /// A claim never begun (queued, or handed back before it started) goes back to pending
    /// as if never granted.
    fn release_unbegun(&mut self, key: DatumKey, now_ms: u64) {
        self.drop_claim(key);
        if let Some(datum) = self.datums.get_mut(&key) {
            datum.attempts.pop();
        }
        self.set_datum_state(key, DatumState::Pending, now_ms);
    }

    fn is_queued(&self, key: DatumKey) -> bool {
        self.queued.contains(&key)
    }

    pub(super) fn begin(&mut self, node: NodeId, key: DatumKey, fence: u64) -> Outcome {
        if !self.holds(key, fence, Some(node)) {
            return Outcome::Reported {
                accepted: 0,
                stale: vec![key],
            };
        }
        if let Some(claim) = self.datums.get_mut(&key).and_then(|d| d.claim.as_mut()) {
            claim.queued = false;
        }
        self.queued.remove(&key);
        self.dirty.insert(RowKey::Datum(key));
        Outcome::Reported {
            accepted: 1,
            stale: Vec::new(),
        }
    }

    pub(super) fn hand_back(
        &mut self,
        now_ms: u64,
        node: NodeId,
        datums: &[(DatumKey, u64)],
    ) -> Outcome {
        let mut changed = 0;
        for &(key, fence) in datums {
            // Only the holder hands back, and only what it has not begun: a queued claim, or
            // one granted as the node began to stop (still merely Claimed).
            if !self.holds(key, fence, Some(node)) {
                continue;
            }
            let Some(datum) = self.datums.get(&key) else {
                continue;
            };
            let never_started = datum.attempts.last().is_none_or(|a| a.started_ms.is_none());
            match datum.state {
                DatumState::Claimed => self.release_unbegun(key, now_ms),
                // Canceled while it waited: nothing ran, so it ends now.
                DatumState::Canceling if never_started => {
                    self.finish_attempt(key, AttemptOutcome::Canceled, None, now_ms)
                }
                _ => continue,
            }
            changed += 1;
        }
        Outcome::Changed { datums: changed }
    }

    /// Whether `fence` (and `node`, when given) is the datum's live claim.
    fn holds(&self, key: DatumKey, fence: u64, node: Option<NodeId>) -> bool {
        let claim = self.datums.get(&key).and_then(|d| d.claim);
        claim.is_some_and(|c| c.fence == fence && node.is_none_or(|n| n == c.node))
    }

    pub(super) fn started(&mut self, now_ms: u64, key: DatumKey, fence: u64) -> Outcome {
        if !self.holds(key, fence, None) {
            return Outcome::Reported {
                accepted: 0,
                stale: vec![key],
            };
        }
        if let Some(attempt) = self
            .datums
            .get_mut(&key)
            .and_then(|d| d.attempts.last_mut())
        {
            attempt.started_ms.get_or_insert(now_ms);
        }
        if self
            .datums
            .get(&key)
            .is_some_and(|d| d.state == DatumState::Claimed)
        {
            self.set_datum_state(key, DatumState::Running, now_ms);
        }
        Outcome::Reported {
            accepted: 1,
            stale: Vec::new(),
        }
    }

    pub(super) fn complete_batch(
        &mut self,
        now_ms: u64,
        node: NodeId,
        reports: &[Completion],
    ) -> Outcome {
        let mut accepted = 0;
        let mut stale = Vec::new();
        for completion in reports {
            if self.holds(completion.datum, completion.fence, Some(node)) {
                let report = completion.report.clone();
                self.finish_attempt(completion.datum, report.outcome, Some(report), now_ms);
                accepted += 1;
            } else {
                stale.push(completion.datum);
            }
        }
        Outcome::Reported { accepted, stale }
    }

    /// Ends the datum's current attempt and decides where the datum goes next.
    fn finish_attempt(
        &mut self,
        key: DatumKey,
        outcome: AttemptOutcome,
        report: Option<AttemptReport>,
        now_ms: u64,
    ) {
        self.drop_claim(key);
        let Some(datum) = self.datums.get_mut(&key) else {
            return;
        };
        if let Some(attempt) = datum.attempts.last_mut() {
            attempt.ended_ms = Some(now_ms);
            attempt.outcome = Some(outcome);
            attempt.report = report;
        }
        let tries_used = datum.tries_used();
        let lease_expiries = datum.lease_expiries();
        let canceling = datum.state == DatumState::Canceling;
        let Some(job) = self.jobs.get(&key.job) else {
            return;
        };
        let next = if canceling || job.canceled {
            DatumState::Canceled
        } else if outcome == AttemptOutcome::Succeeded {
            DatumState::Done
        } else if outcome == AttemptOutcome::LeaseExpired {
            if lease_expiries < LEASE_EXPIRIES_MAX {
                DatumState::Pending
            } else {
                DatumState::Failed
            }
        } else if tries_used < job.spec.datum_tries {
            DatumState::Pending
        } else {
            DatumState::Failed
        };
        self.set_datum_state(key, next, now_ms);
    }

    fn job_seq(&self, job_id: &str) -> Option<JobSeq> {
        self.job_ids.get(job_id).copied()
    }

    pub(super) fn cancel_job(&mut self, now_ms: u64, job_id: &str) -> Outcome {
        let Some(seq) = self.job_seq(job_id) else {
            return Outcome::UnknownJob {
                job_id: job_id.to_string(),
            };
        };
        let job = &self.jobs[&seq];
        let finished = job.sealed && job.counts.active() == 0 && job.counts.pending == 0;
        if finished || job.canceled {
            return Outcome::Changed { datums: 0 };
        }
        if let Some(job) = self.jobs.get_mut(&seq) {
            job.canceled = true;
            job.sealed = true;
        }
        let keys: Vec<(DatumKey, DatumState)> = self
            .datums
            .range(job_range(seq))
            .map(|(k, d)| (*k, d.state))
            .collect();
        let mut changed = 0;
        for (key, state) in keys {
            if self.is_queued(key) {
                // Never begun: nothing runs that must be stopped first.
                self.finish_attempt(key, AttemptOutcome::Canceled, None, now_ms);
                changed += 1;
                continue;
            }
            let next = match state {
                DatumState::Pending => DatumState::Canceled,
                DatumState::Claimed | DatumState::Running => DatumState::Canceling,
                _ => continue,
            };
            self.set_datum_state(key, next, now_ms);
            changed += 1;
        }
        self.touch_job(seq, now_ms);
        Outcome::Changed { datums: changed }
    }

    pub(super) fn retry_failed(&mut self, now_ms: u64, job_id: &str) -> Outcome {
        let Some(seq) = self.job_seq(job_id) else {
            return Outcome::UnknownJob {
                job_id: job_id.to_string(),
            };
        };
        if self.jobs[&seq].canceled {
            return refused(format!("job {job_id} was canceled"));
        }
        let failed: Vec<DatumKey> = self
            .datums
            .range(job_range(seq))
            .filter(|(_, d)| d.state == DatumState::Failed)
            .map(|(k, _)| *k)
            .collect();
        for key in &failed {
            if let Some(datum) = self.datums.get_mut(key) {
                datum.retried_after = datum.attempts.len() as u32;
            }
            self.set_datum_state(*key, DatumState::Pending, now_ms);
        }
        Outcome::Changed {
            datums: failed.len() as u32,
        }
    }

    pub(super) fn expire_leases(&mut self, now_ms: u64, lease_ms: u64) -> Outcome {
        let silent: Vec<NodeId> = self
            .claims
            .keys()
            .copied()
            .filter(|node| {
                let last = self
                    .nodes
                    .get(node)
                    .map(|n| n.last_heartbeat_ms)
                    .unwrap_or(0);
                now_ms.saturating_sub(last) > lease_ms
            })
            .collect();
        let mut expired = 0;
        for node in silent {
            let keys: Vec<DatumKey> = self
                .claims
                .get(&node)
                .into_iter()
                .flatten()
                .copied()
                .collect();
            for key in keys {
                if self.is_queued(key) {
                    self.release_unbegun(key, now_ms);
                } else {
                    self.finish_attempt(key, AttemptOutcome::LeaseExpired, None, now_ms);
                }
                expired += 1;
            }
        }
        Outcome::Changed { datums: expired }
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use super::*;
    use crate::command::{Command, NodeInfo, Proposal};
    use crate::job::{DatumCounts, JobState, TaskSpec};

    const N1: NodeId = 1;
    const N2: NodeId = 2;
    const LEASE_MS: u64 = 10_000;

    /// A state machine driven like the log drives it: each command gets the next index.
    struct Log {
        state: State,
        index: u64,
        now_ms: u64,
    }

    impl Log {
        fn new() -> Log {
            let mut log = Log {
                state: State::default(),
                index: 0,
                now_ms: 1_000,
            };
            for node_id in [N1, N2] {
                let info = NodeInfo {
                    name: format!("n{node_id}"),
                    peer_id: format!("p{node_id}"),
                    http_url: String::new(),
                    p2p_addrs: Vec::new(),
                    slots: 4,
                    executor: "process".into(),
                };
                log.apply(Command::RegisterNode { node_id, info });
            }
            log
        }

        fn apply(&mut self, command: Command) -> Outcome {
            self.index += 1;
            let outcome = self.state.apply(
                self.index,
                &Proposal {
                    time_ms: self.now_ms,
                    command,
                },
            );
            check_invariants(&self.state);
            outcome
        }

        fn submit(&mut self, id: &str, datums: u32, parallelism: u32, tries: u32) -> JobSeq {
            self.submit_spec(
                spec(id, JobKind::Pipeline, parallelism, tries),
                datums,
                true,
            )
        }

        fn submit_spec(&mut self, spec: JobSpec, datums: u32, seal: bool) -> JobSeq {
            let datums = vec![Vec::new(); datums as usize];
            match self.apply(Command::SubmitJob {
                spec: Box::new(spec),
                datums,
                seal,
            }) {
                Outcome::JobSubmitted { seq, .. } => seq,
                other => panic!("submit refused: {other:?}"),
            }
        }

        fn claim(&mut self, node_id: NodeId, max: u32) -> Vec<Grant> {
            self.claim_with_queue(node_id, max, 0)
        }

        fn claim_with_queue(&mut self, node_id: NodeId, max: u32, queue: u32) -> Vec<Grant> {
            match self.apply(Command::ClaimBatch {
                node_id,
                max,
                queue,
            }) {
                Outcome::Claimed { grants } => grants,
                other => panic!("claim answered {other:?}"),
            }
        }

        fn report(&mut self, node_id: NodeId, grant: Grant, outcome: AttemptOutcome) -> Outcome {
            let report = AttemptReport {
                outcome,
                start_ms: self.now_ms,
                end_ms: self.now_ms,
                executors: Vec::new(),
                outputs: Vec::new(),
                system_logs: Vec::new(),
            };
            let reports = vec![Completion {
                datum: grant.datum,
                fence: grant.fence,
                report,
            }];
            self.apply(Command::CompleteBatch { node_id, reports })
        }

        fn heartbeat(&mut self, node_id: NodeId) {
            self.apply(Command::Heartbeat {
                node_id,
                running: 0,
            });
        }

        fn datum(&self, job: JobSeq, index: u32) -> &Datum {
            &self.state.datums[&DatumKey { job, index }]
        }

        fn job_state(&self, seq: JobSeq) -> JobState {
            self.state.jobs[&seq].state()
        }
    }

    fn spec(id: &str, kind: JobKind, parallelism: u32, datum_tries: u32) -> JobSpec {
        JobSpec {
            id: id.to_string(),
            kind,
            name: id.to_string(),
            description: String::new(),
            tags: BTreeMap::new(),
            owner: String::new(),
            task: TaskSpec::default(),
            parallelism,
            datum_tries,
            datum_timeout_ms: 0,
            source: String::new(),
        }
    }

    /// Counts, the pending index and the claim index agree with the datums.
    fn check_invariants(state: &State) {
        for (seq, job) in &state.jobs {
            let mut counts = DatumCounts::default();
            for datum in state.datums_of(*seq) {
                *counts.slot(datum.state) += 1;
                assert_eq!(datum.claim.is_some(), datum.state.is_claimed(), "{datum:?}");
                if datum.claim.is_some_and(|c| c.queued) {
                    assert_eq!(datum.state, DatumState::Claimed, "{datum:?}");
                }
            }
            assert_eq!(counts, job.counts, "counts of job {seq}");
            assert_eq!(counts.total(), job.datum_count);
        }
        let mut copy = state.clone();
        copy.rebuild_indexes();
        assert_eq!(copy.pending, state.pending, "pending index");
        assert_eq!(copy.claims, state.claims, "claim index");
        assert_eq!(copy.queued, state.queued, "queued index");
        assert_eq!(copy.jobs_by_state, state.jobs_by_state, "state index");
        assert_eq!(copy.job_states, state.job_states, "state index");
        assert_eq!(copy.jobs_by_tag, state.jobs_by_tag, "tag index");
        assert_eq!(copy.jobs_by_tag_key, state.jobs_by_tag_key, "tag key index");
        assert_eq!(copy.job_ids, state.job_ids, "id index");
    }

    fn keys(grants: &[Grant]) -> Vec<(JobSeq, u32)> {
        grants
            .iter()
            .map(|g| (g.datum.job, g.datum.index))
            .collect()
    }

    #[test]
    fn claims_go_out_fifo_across_jobs_with_the_granting_index_as_fence() {
        let mut log = Log::new();
        let a = log.submit("a", 3, 0, 1);
        let b = log.submit("b", 2, 0, 1);
        let first = log.claim(N1, 4);
        assert_eq!(keys(&first), [(a, 0), (a, 1), (a, 2), (b, 0)]);
        assert!(first.iter().all(|g| g.fence == log.index && g.attempt == 1));
        assert_eq!(keys(&log.claim(N2, 4)), [(b, 1)]);
        assert!(log.claim(N2, 4).is_empty());
        assert_eq!(log.job_state(a), JobState::Running);
    }

    #[test]
    fn parallelism_caps_a_job_across_nodes_and_later_jobs_still_run() {
        let mut log = Log::new();
        let capped = log.submit("capped", 5, 2, 1);
        let free = log.submit("free", 1, 0, 1);
        assert!(log.state.has_claimable());
        let grants = log.claim(N1, 10);
        assert_eq!(keys(&grants), [(capped, 0), (capped, 1), (free, 0)]);
        assert!(
            !log.state.has_claimable(),
            "pending datums remain, but none may be claimed"
        );
        assert!(log.claim(N2, 10).is_empty(), "the cap holds for every node");

        log.report(N1, grants[0], AttemptOutcome::Succeeded);
        assert_eq!(
            keys(&log.claim(N2, 10)),
            [(capped, 2)],
            "a finished datum frees one place"
        );
    }

    #[test]
    fn a_stale_fence_is_rejected_and_the_live_claim_holder_decides() {
        let mut log = Log::new();
        let job = log.submit("j", 1, 0, 3);
        let zombie = log.claim(N1, 1)[0];

        log.now_ms += LEASE_MS + 1;
        log.heartbeat(N2);
        assert_eq!(
            log.apply(Command::ExpireLeases { lease_ms: LEASE_MS }),
            Outcome::Changed { datums: 1 }
        );
        let live = log.claim(N2, 1)[0];
        assert_eq!(live.attempt, 2);
        assert_ne!(live.fence, zombie.fence);

        let late = log.report(N1, zombie, AttemptOutcome::Succeeded);
        assert_eq!(
            late,
            Outcome::Reported {
                accepted: 0,
                stale: vec![zombie.datum]
            }
        );
        assert_eq!(
            log.datum(job, 0).state,
            DatumState::Claimed,
            "the zombie changed nothing"
        );
        assert_eq!(
            log.apply(Command::Started {
                datum: zombie.datum,
                fence: zombie.fence
            }),
            Outcome::Reported {
                accepted: 0,
                stale: vec![zombie.datum]
            }
        );

        log.report(N2, live, AttemptOutcome::ExecutorError);
        let datum = log.datum(job, 0);
        assert_eq!(datum.state, DatumState::Pending, "one try left");
        assert_eq!(
            datum.attempts[0].outcome,
            Some(AttemptOutcome::LeaseExpired)
        );
        assert_eq!(
            datum.attempts[1].outcome,
            Some(AttemptOutcome::ExecutorError)
        );
    }

    #[test]
    fn lease_expiry_requeues_with_the_next_attempt_without_spending_a_try() {
        let mut log = Log::new();
        let job = log.submit("j", 1, 0, 1);
        for attempt in 1..=LEASE_EXPIRIES_MAX {
            let grant = log.claim(N1, 1)[0];
            assert_eq!(grant.attempt, attempt);
            log.apply(Command::Started {
                datum: grant.datum,
                fence: grant.fence,
            });
            assert_eq!(log.datum(job, 0).state, DatumState::Running);

            log.now_ms += LEASE_MS / 2;
            assert_eq!(
                log.apply(Command::ExpireLeases { lease_ms: LEASE_MS }),
                Outcome::Changed { datums: 0 },
                "a node within its lease keeps its claims"
            );
            log.now_ms += LEASE_MS;
            log.apply(Command::ExpireLeases { lease_ms: LEASE_MS });
            log.heartbeat(N1);
            if attempt < LEASE_EXPIRIES_MAX {
                assert_eq!(
                    log.datum(job, 0).state,
                    DatumState::Pending,
                    "one try, yet requeued"
                );
            }
        }
        let datum = log.datum(job, 0);
        assert_eq!(
            datum.state,
            DatumState::Failed,
            "a datum that keeps losing its node fails"
        );
        assert_eq!(datum.attempts.len() as u32, LEASE_EXPIRIES_MAX);
        assert_eq!(log.job_state(job), JobState::Error);
        assert!(log.state.jobs[&job].ended_ms.is_some());
    }

    #[test]
    fn a_failed_attempt_spends_a_try() {
        let mut log = Log::new();
        let job = log.submit("j", 1, 0, 2);
        let first = log.claim(N1, 1)[0];
        log.report(N1, first, AttemptOutcome::ExecutorError);
        assert_eq!(log.datum(job, 0).state, DatumState::Pending);
        let second = log.claim(N2, 1)[0];
        assert_eq!(second.attempt, 2);
        log.report(N2, second, AttemptOutcome::SystemError);
        assert_eq!(log.datum(job, 0).state, DatumState::Failed);
    }

    #[test]
    fn cancel_of_a_running_job_stops_what_runs_and_drops_what_waits() {
        let mut log = Log::new();
        let job = log.submit("j", 3, 0, 1);
        let grant = log.claim(N1, 1)[0];
        log.apply(Command::Started {
            datum: grant.datum,
            fence: grant.fence,
        });

        assert_eq!(
            log.apply(Command::CancelJob { job_id: "j".into() }),
            Outcome::Changed { datums: 3 }
        );
        assert_eq!(log.datum(job, 0).state, DatumState::Canceling);
        assert_eq!(log.datum(job, 1).state, DatumState::Canceled);
        assert_eq!(log.job_state(job), JobState::Canceling);
        assert!(
            log.claim(N2, 10).is_empty(),
            "nothing of a canceled job is claimable"
        );

        log.report(N1, grant, AttemptOutcome::Canceled);
        assert_eq!(log.datum(job, 0).state, DatumState::Canceled);
        assert_eq!(log.job_state(job), JobState::Canceled);
        assert_eq!(
            log.apply(Command::CancelJob { job_id: "j".into() }),
            Outcome::Changed { datums: 0 }
        );
    }

    #[test]
    fn cancel_of_a_finished_job_leaves_it_as_it_is() {
        let mut log = Log::new();
        let job = log.submit("j", 1, 0, 1);
        let grant = log.claim(N1, 1)[0];
        log.report(N1, grant, AttemptOutcome::Succeeded);
        assert_eq!(
            log.apply(Command::CancelJob { job_id: "j".into() }),
            Outcome::Changed { datums: 0 }
        );
        assert_eq!(log.job_state(job), JobState::Done);
    }

    #[test]
    fn retry_puts_failed_datums_back_with_fresh_tries() {
        let mut log = Log::new();
        let job = log.submit("j", 2, 0, 1);
        let grants = log.claim(N1, 2);
        log.report(N1, grants[0], AttemptOutcome::Succeeded);
        log.report(N1, grants[1], AttemptOutcome::SystemError);
        assert_eq!(log.job_state(job), JobState::Error);

        assert_eq!(
            log.apply(Command::RetryFailed { job_id: "j".into() }),
            Outcome::Changed { datums: 1 }
        );
        assert_eq!(log.job_state(job), JobState::Running);
        assert!(log.state.jobs[&job].ended_ms.is_none());
        let again = log.claim(N2, 2);
        assert_eq!(keys(&again), [(job, 1)]);
        assert_eq!(again[0].attempt, 2);
        log.report(N2, again[0], AttemptOutcome::Succeeded);
        assert_eq!(log.job_state(job), JobState::Done);
    }

    #[test]
    fn a_drained_node_gets_nothing_and_an_undrained_one_does() {
        let mut log = Log::new();
        log.submit("j", 1, 0, 1);
        log.apply(Command::DrainNode {
            node_id: N1,
            draining: true,
        });
        assert!(log.claim(N1, 1).is_empty());
        log.apply(Command::DrainNode {
            node_id: N1,
            draining: false,
        });
        assert_eq!(log.claim(N1, 1).len(), 1);
        assert!(matches!(
            log.apply(Command::ClaimBatch {
                node_id: 99,
                max: 1,
                queue: 0,
            }),
            Outcome::UnknownNode { .. }
        ));
    }

    #[test]
    fn a_resubmitted_job_is_not_applied_twice() {
        let mut log = Log::new();
        let first = log.submit("same", 2, 0, 1);
        let again = log.submit("same", 2, 0, 1);
        assert_eq!(first, again);
        assert_eq!(log.state.jobs.len(), 1);
        assert_eq!(log.state.pending_count(), 2);
    }

    #[test]
    fn bad_submissions_are_refused_and_change_nothing() {
        let mut log = Log::new();
        log.state.take_dirty();
        let before = log.state.clone();
        let task = spec("t", JobKind::Task, 0, 1);
        let two = vec![Vec::new(), Vec::new()];
        let refused = |o: &Outcome| matches!(o, Outcome::Refused { .. });
        assert!(refused(&log.apply(Command::SubmitJob {
            spec: Box::new(task),
            datums: two,
            seal: true
        })));
        let no_tries = spec("p", JobKind::Pipeline, 0, 0);
        assert!(refused(&log.apply(Command::SubmitJob {
            spec: Box::new(no_tries),
            datums: Vec::new(),
            seal: true
        })));
        let add = Command::AddDatums {
            job_id: "nope".into(),
            datums: Vec::new(),
            seal: true,
        };
        assert!(matches!(log.apply(add), Outcome::UnknownJob { .. }));
        assert_eq!(log.state, before);
    }

    #[test]
    fn queued_claims_are_stolen_latest_first_only_when_nothing_is_pending() {
        let mut log = Log::new();
        let job = log.submit("j", 4, 0, 1);
        let grants = log.claim_with_queue(N1, 1, 2);
        assert_eq!(keys(&grants), [(job, 0), (job, 1), (job, 2)]);
        assert_eq!(
            grants.iter().map(|g| g.queued).collect::<Vec<_>>(),
            [false, true, true]
        );
        let fresh = log.claim(N2, 1);
        assert_eq!(
            keys(&fresh),
            [(job, 3)],
            "pending work comes before stealing"
        );

        let stolen = log.claim(N2, 1);
        assert_eq!(keys(&stolen), [(job, 2)], "the last queued claim is stolen");
        assert_eq!((stolen[0].attempt, stolen[0].queued), (1, false));
        let datum = log.datum(job, 2);
        assert_eq!(
            datum.attempts.len(),
            1,
            "a stolen claim was never an attempt"
        );
        assert_eq!(datum.attempts[0].node, N2);
        let begin = |grant: Grant| Command::Begin {
            node_id: N1,
            datum: grant.datum,
            fence: grant.fence,
        };
        assert_eq!(
            log.apply(begin(grants[2])),
            Outcome::Reported {
                accepted: 0,
                stale: vec![grants[2].datum]
            },
            "the old holder cannot begin what was stolen"
        );
        assert!(matches!(
            log.apply(begin(grants[1])),
            Outcome::Reported { accepted: 1, .. }
        ));
        assert!(log.claim(N2, 1).is_empty(), "a begun claim stays put");
        assert!(log.claim_with_queue(N1, 0, 0).is_empty());
    }

    #[test]
    fn queued_claims_canceled_handed_back_or_expired_spend_nothing() {
        let mut log = Log::new();
        let canceled = log.submit("c", 1, 0, 1);
        let queued = log.claim_with_queue(N1, 0, 1);
        assert!(queued[0].queued);
        log.apply(Command::CancelJob { job_id: "c".into() });
        assert_eq!(
            log.datum(canceled, 0).state,
            DatumState::Canceled,
            "nothing ran, so nothing has to stop first"
        );

        let job = log.submit("j", 2, 0, 1);
        let queued = log.claim_with_queue(N1, 0, 2);
        let handed = log.apply(Command::HandBack {
            node_id: N1,
            datums: vec![(queued[0].datum, queued[0].fence)],
        });
        assert_eq!(handed, Outcome::Changed { datums: 1 });
        let back = log.datum(job, 0);
        assert_eq!((back.state, back.attempts.len()), (DatumState::Pending, 0));

        log.now_ms += LEASE_MS + 1;
        log.heartbeat(N2);
        log.apply(Command::ExpireLeases { lease_ms: LEASE_MS });
        let expired = log.datum(job, 1);
        assert_eq!(
            (expired.state, expired.attempts.len()),
            (DatumState::Pending, 0)
        );
        let again = log.claim(N2, 2);
        assert_eq!(keys(&again), [(job, 0), (job, 1)]);
        assert!(again.iter().all(|g| g.attempt == 1));
    }

    #[test]
    fn jobs_never_get_an_earlier_creation_time_than_the_job_before() {
        let mut log = Log::new();
        let first = log.submit("first", 1, 0, 1);
        log.now_ms -= 300;
        let second = log.submit("second", 1, 0, 1);
        assert_eq!(
            log.state.jobs[&second].created_ms, log.state.jobs[&first].created_ms,
            "a leader whose clock is behind does not make a later job look older"
        );
    }

    #[test]
    fn only_claims_not_yet_running_can_be_handed_back_and_only_by_their_holder() {
        let mut log = Log::new();
        let job = log.submit("j", 2, 0, 1);
        let grants = log.claim(N1, 2);
        log.apply(Command::Started {
            datum: grants[1].datum,
            fence: grants[1].fence,
        });
        let hand_back = |node_id, grant: Grant| Command::HandBack {
            node_id,
            datums: vec![(grant.datum, grant.fence)],
        };
        assert_eq!(
            log.apply(hand_back(N2, grants[0])),
            Outcome::Changed { datums: 0 },
            "not the holder"
        );
        assert_eq!(
            log.apply(hand_back(N1, grants[1])),
            Outcome::Changed { datums: 0 },
            "already running"
        );
        assert_eq!(
            log.apply(hand_back(N1, grants[0])),
            Outcome::Changed { datums: 1 }
        );
        let back = log.datum(job, 0);
        assert_eq!((back.state, back.attempts.len()), (DatumState::Pending, 0));
        assert_eq!(log.datum(job, 1).state, DatumState::Running);

        let canceled = log.submit("c", 1, 0, 1);
        let waiting = log
            .claim(N1, 2)
            .into_iter()
            .find(|g| g.datum.job == canceled)
            .expect("the canceled job's datum is granted");
        log.apply(Command::CancelJob { job_id: "c".into() });
        assert_eq!(log.datum(canceled, 0).state, DatumState::Canceling);
        assert_eq!(
            log.apply(hand_back(N1, waiting)),
            Outcome::Changed { datums: 1 }
        );
        assert_eq!(
            log.datum(canceled, 0).state,
            DatumState::Canceled,
            "canceled while it waited: nothing ran, so it ends now"
        );
    }

    #[test]
    fn jobs_are_listed_by_state_and_tag_newest_first() {
        let mut log = Log::new();
        let mut tagged = |id: &str, tags: &[(&str, &str)]| {
            let mut spec = spec(id, JobKind::Task, 0, 1);
            spec.tags = tags
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect();
            log.submit_spec(spec, 1, true)
        };
        let a = tagged("a", &[("team", "x")]);
        let b = tagged("b", &[("team", "y"), ("urgent", "")]);
        let c = tagged("c", &[("team", "x")]);
        let grants = log.claim(N1, 1);
        log.report(N1, grants[0], AttemptOutcome::Succeeded);
        let by_state = |log: &Log, states: &[JobState], before| {
            log.state
                .jobs_in_states_before(states, before)
                .collect::<Vec<_>>()
        };
        assert_eq!(by_state(&log, &[JobState::Done], u64::MAX), [a]);
        assert_eq!(by_state(&log, &[JobState::Queued], u64::MAX), [c, b]);
        assert_eq!(
            by_state(&log, &[JobState::Queued, JobState::Done], u64::MAX),
            [c, b, a],
            "two states merge newest first"
        );
        assert_eq!(
            by_state(&log, &[JobState::Queued], c),
            [b],
            "below a page token"
        );
        let by_tag = |key, value| {
            log.state
                .jobs_tagged_before(key, value, u64::MAX)
                .collect::<Vec<_>>()
        };
        assert_eq!(by_tag("team", Some("x")), [c, a]);
        assert_eq!(by_tag("team", None), [c, b, a]);
        assert_eq!(by_tag("urgent", Some("")), [b]);
        assert!(by_tag("team", Some("z")).is_empty());
    }

    #[test]
    fn a_batch_applies_each_command_in_order_and_refuses_claims_inside() {
        let mut log = Log::new();
        let submit = |id: &str| Command::SubmitJob {
            spec: Box::new(spec(id, JobKind::Pipeline, 0, 1)),
            datums: vec![Vec::new()],
            seal: true,
        };
        let batch = Command::Batch(vec![
            submit("a"),
            Command::ClaimBatch {
                node_id: N1,
                max: 1,
                queue: 0,
            },
            submit("b"),
            Command::Batch(Vec::new()),
            submit("a"),
        ]);
        let Outcome::Batch(outcomes) = log.apply(batch) else {
            panic!("a batch answers a batch");
        };
        assert_eq!(outcomes.len(), 5);
        assert!(matches!(&outcomes[0], Outcome::JobSubmitted { job_id, .. } if job_id == "a"));
        assert!(matches!(outcomes[1], Outcome::Refused { .. }));
        assert!(matches!(&outcomes[2], Outcome::JobSubmitted { job_id, .. } if job_id == "b"));
        assert!(matches!(outcomes[3], Outcome::Refused { .. }));
        assert_eq!(
            outcomes[4], outcomes[0],
            "a repeat inside a batch is a repeat"
        );
        assert_eq!(log.state.jobs.len(), 2);
        assert_eq!(
            log.state.pending_count(),
            2,
            "the claim inside took nothing"
        );
        assert!(log.state.claims_of(N1).next().is_none());
    }

    #[test]
    fn datums_arrive_in_chunks_until_sealed() {
        let mut log = Log::new();
        let job = log.submit_spec(spec("p", JobKind::Pipeline, 0, 1), 0, false);
        let chunk = vec![Vec::new(); 3];
        let add = |seal| Command::AddDatums {
            job_id: "p".into(),
            datums: chunk.clone(),
            seal,
        };
        assert_eq!(log.apply(add(false)), Outcome::Changed { datums: 3 });
        assert_eq!(log.job_state(job), JobState::Queued);
        log.apply(add(true));
        assert_eq!(log.state.jobs[&job].datum_count, 6);
        assert!(
            matches!(log.apply(add(true)), Outcome::Refused { .. }),
            "a sealed job takes no more"
        );
    }

    #[test]
    fn persisted_rows_rebuild_the_same_state_with_its_indexes() {
        let mut log = Log::new();
        log.submit("a", 4, 2, 2);
        log.submit("b", 2, 0, 1);
        let grants = log.claim(N1, 3);
        log.report(N1, grants[0], AttemptOutcome::Succeeded);
        log.apply(Command::CancelJob { job_id: "b".into() });

        let dirty = log.state.take_dirty();
        let rows: Vec<(Vec<u8>, Vec<u8>)> = dirty
            .into_iter()
            .filter_map(|key| {
                log.state
                    .row(key)
                    .expect("encode")
                    .map(|v| (key.to_bytes(), v))
            })
            .collect();
        let rebuilt =
            State::from_rows(rows.iter().map(|(k, v)| (k.as_slice(), v.as_slice()))).expect("rows");
        assert_eq!(rebuilt, log.state);
    }
}

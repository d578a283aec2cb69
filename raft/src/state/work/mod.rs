//! The work queue's transitions: submitting jobs, claiming datums under fences, reports of
//! started and ended attempts, publishing, cancel, retry and lease expiry. Pure, like all of
//! `State`.
//!
//! - this file: the rules and the helpers every family shares (datum state changes, claims,
//!   ending an attempt).
//! - `submit`: jobs and their datums arrive (`SubmitJob`, `AddDatums`), pipelines end
//!   (`FailJob`, `CloseJob`).
//! - `claim`: `ClaimBatch` (FIFO, parallelism, prefetch, stealing), `Begin`, `HandBack`.
//! - `report`: `Started`, `CompleteBatch` (with pipelines' output conflicts), `Published`.
//! - `lease`: `ExpireLeases`.
//! - `cancel`: `CancelJob`, `RetryFailed`.
//! - `restore`: a backup made the start of a new cluster (not a command: done before the log).
//!
//! Rules kept here:
//! - A datum is held by at most one claim; a claim's fence is the index of the entry that
//!   granted it, and a report counts only with the datum's current fence and node.
//! - Claims go out in FIFO order across jobs (job sequence, then datum index), skipping jobs at
//!   their `parallelism`; draining nodes get nothing.
//! - Cpu and memory: a datum granted to begin now fits in the node's free capacity as the
//!   node counts it (sent in the `ClaimBatch`, since only the node knows which attempts have
//!   ended); a datum granted for its queue fits the node's whole capacity. A job whose datums
//!   do not fit is skipped, so smaller work behind it may go first (backfill); one that fits
//!   no node waits, and [`State::unplaceable`] says why.
//! - A claim granted for a node's queue (prefetch) is `queued` until the node `Begin`s it.
//!   When no pending datum can begin on it, a node with free slots steals queued claims that
//!   fit from other nodes, last in claim order first (what their holders would begin last);
//!   the attempt keeps its number, since it never began. Queued claims canceled, handed back or expired were
//!   never attempts: they spend nothing.
//! - A pipeline datum whose attempt succeeded with outputs is `Publishing` under the same
//!   claim until its holder reports the outputs published; no two datums of a job may
//!   publish the same output path.
//! - Counts per job and the pending, claim, id and output indexes always agree with the
//!   datums.

mod cancel;
mod claim;
mod lease;
mod report;
mod restore;
mod submit;
#[cfg(test)]
mod tests;

pub use restore::Restored;
pub(in crate::state) use submit::AddDatums;

use super::{RowKey, State};
use crate::command::Outcome;
use crate::job::{
    AttemptOutcome, AttemptReport, Datum, DatumError, DatumKey, DatumState, FIRST_ERRORS_MAX,
    JobSeq,
};
use crate::types::NodeId;

/// Most datums one command may add (larger jobs arrive in chunks).
pub const DATUMS_PER_COMMAND_MAX: usize = 10_000;
/// Most datums one job may have.
pub const DATUMS_PER_JOB_MAX: u32 = 1_000_000;
/// Most datums one `ClaimBatch` grants.
pub const CLAIM_BATCH_MAX: u32 = 1024;
/// Most tries a job may give each datum.
pub const DATUM_TRIES_MAX: u32 = 100;
/// A datum whose attempts took their node down (lease expired, node restarted) this many
/// times fails: it may be what kills the nodes. An expired attempt whose node reports it
/// later (the node was cut off or paused) does not count.
pub const LEASE_EXPIRIES_MAX: u32 = 3;
/// Most attempts a datum loses with their node, those its node reported later included,
/// before it fails: a datum that stalls its node past the lease cannot run again forever.
pub const NODE_LOSSES_MAX: u32 = 10;
/// Most `RetryFailed` rounds a job takes, so retries cannot grow a datum's attempts (and the
/// log) without limit.
pub const RETRIES_MAX: u32 = 10;
/// Longest message kept in a job's first errors or a cluster-made error.
pub const ERROR_BYTES_MAX: usize = 1024;

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

/// `text` cut to at most `ERROR_BYTES_MAX` bytes, on a character boundary.
fn bounded(text: &str) -> String {
    let mut end = text.len().min(ERROR_BYTES_MAX);
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    text[..end].to_string()
}

/// Why an attempt failed, in one line, from what its node reported.
fn failure_message(
    outcome: AttemptOutcome,
    report: Option<&AttemptReport>,
    datum: &Datum,
) -> String {
    if outcome.node_lost() {
        if datum.lease_expiries() < LEASE_EXPIRIES_MAX {
            return format!(
                "its attempts were lost with their node {NODE_LOSSES_MAX} times (most while their \
                 node was cut off or paused)"
            );
        }
        return format!(
            "its attempts were lost with their node {LEASE_EXPIRIES_MAX} times (lease expired or \
             node restarted)"
        );
    }
    report
        .and_then(AttemptReport::error_message)
        .unwrap_or_else(|| format!("attempt ended {outcome:?}"))
}

impl State {
    /// Marks a job changed and records when it finished.
    fn touch_job(&mut self, seq: JobSeq, now_ms: u64) {
        if let Some(job) = self.jobs.get_mut(&seq) {
            job.ended_ms = if job.finished() {
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
            self.recount_datum(old, new);
        }
        if old == DatumState::Pending {
            self.pending.remove(&key);
        }
        if new == DatumState::Pending {
            self.pending.insert(key);
        }
        self.touch_job(key.job, now_ms);
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

    /// Gives the datum a claim of `node` under `fence` (the datum had none).
    fn set_claim(&mut self, key: DatumKey, claim: crate::job::Claim) {
        let Some(datum) = self.datums.get_mut(&key) else {
            return;
        };
        datum.claim = Some(claim);
        self.claims.entry(claim.node).or_default().insert(key);
        if claim.queued {
            self.queued.insert(key);
        }
        self.dirty.insert(RowKey::Datum(key));
    }

    /// Whether `fence` (and `node`, when given) is the datum's live claim.
    fn holds(&self, key: DatumKey, fence: u64, node: Option<NodeId>) -> bool {
        let claim = self.datums.get(&key).and_then(|d| d.claim);
        claim.is_some_and(|c| c.fence == fence && node.is_none_or(|n| n == c.node))
    }

    fn job_seq(&self, job_id: &str) -> Option<JobSeq> {
        self.job_ids.get(job_id).copied()
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
        let message = (outcome != AttemptOutcome::Succeeded).then(|| {
            let report = datum.attempts.last().and_then(|a| a.report.as_ref());
            failure_message(outcome, report, datum)
        });
        let tries_used = datum.tries_used();
        let node_lost_often =
            datum.lease_expiries() >= LEASE_EXPIRIES_MAX || datum.node_losses() >= NODE_LOSSES_MAX;
        let canceling = datum.state == DatumState::Canceling;
        let Some(job) = self.jobs.get(&key.job) else {
            return;
        };
        let next = if canceling || job.canceled {
            DatumState::Canceled
        } else if outcome == AttemptOutcome::Succeeded {
            DatumState::Done
        } else if outcome.node_lost() {
            if node_lost_often {
                DatumState::Failed
            } else {
                DatumState::Pending
            }
        } else if tries_used < job.spec.datum_tries {
            DatumState::Pending
        } else {
            DatumState::Failed
        };
        if next == DatumState::Failed {
            self.fail_datum(key, &message.unwrap_or_default(), now_ms);
        } else {
            self.set_datum_state(key, next, now_ms);
        }
    }

    /// Moves a datum to `Failed` and keeps `message` among its job's first errors.
    fn fail_datum(&mut self, key: DatumKey, message: &str, now_ms: u64) {
        let Some(datum_id) = self.datums.get(&key).map(|d| d.id) else {
            return;
        };
        if let Some(job) = self.jobs.get_mut(&key.job)
            && job.first_errors.len() < FIRST_ERRORS_MAX
        {
            job.first_errors.push(DatumError {
                index: key.index,
                datum_id,
                message: bounded(message),
            });
        }
        self.set_datum_state(key, DatumState::Failed, now_ms);
    }
}

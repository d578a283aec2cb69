//! What nodes report about their attempts: `Started`, `CompleteBatch` and, for pipelines
//! whose attempt staged outputs, `Published`.
//!
//! A pipeline attempt that succeeded with outputs does not end its datum: the datum becomes
//! `Publishing` under the same claim, and its outputs become the job's — unless another datum
//! of the job owns one of their paths already, in which case the datum fails naming the path
//! (retrying cannot help) and nothing of it is published.

use super::bounded;
use crate::command::{Completion, Outcome};
use crate::job::{
    AttemptOutcome, AttemptReport, DatumKey, DatumState, JobKind, JobSeq, format_datum_id,
};
use crate::state::{RowKey, State, output_path_hash};
use crate::types::NodeId;

impl State {
    pub(in crate::state) fn started(&mut self, now_ms: u64, key: DatumKey, fence: u64) -> Outcome {
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
            && attempt.started_ms.is_none()
        {
            attempt.started_ms = Some(now_ms);
            // Persisted even when the state stays (a datum canceled while it was claimed).
            self.dirty.insert(RowKey::Datum(key));
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

    pub(in crate::state) fn complete_batch(
        &mut self,
        now_ms: u64,
        node: NodeId,
        reports: &[Completion],
    ) -> Outcome {
        self.note_alive(node, now_ms);
        let mut accepted = 0;
        let mut stale = Vec::new();
        for completion in reports {
            let key = completion.datum;
            if self.reported_already(key, completion.fence, node) {
                // A resend of a report the log has (its answer was lost): accepted again,
                // changing nothing — above all, not stale, or its node would delete the
                // outputs that report staged.
                accepted += 1;
                continue;
            }
            if !self.holds(key, completion.fence, Some(node)) {
                self.note_late_report(key, completion, node);
                stale.push(key);
                continue;
            }
            accepted += 1;
            let report = completion.report.clone();
            if self.stages_outputs(key, &report) {
                self.begin_publishing(key, report, now_ms);
            } else {
                self.finish_attempt(key, report.outcome, Some(report), now_ms);
            }
        }
        Outcome::Reported { accepted, stale }
    }

    /// Whether the log recorded `node`'s report of the attempt under `fence` already (a late
    /// report of an expired attempt does not count: that attempt stays stale).
    fn reported_already(&self, key: DatumKey, fence: u64, node: NodeId) -> bool {
        self.datums.get(&key).is_some_and(|datum| {
            datum.attempts.iter().any(|a| {
                a.fence == fence
                    && a.node == node
                    && a.report.is_some()
                    && a.outcome != Some(AttemptOutcome::LeaseExpired)
            })
        })
    }

    /// Keeps the report of an attempt whose lease expired while its node was cut off or
    /// paused: the attempt stays lost (its datum ran again), but its node was not taken down
    /// by it, so it no longer counts towards `LEASE_EXPIRIES_MAX`, and its logs show how it
    /// ended. A pipeline attempt's staged outputs are not the job's (its node deletes them),
    /// so none are kept; a task's show what the attempt wrote.
    fn note_late_report(&mut self, key: DatumKey, completion: &Completion, node: NodeId) {
        let pipeline = self
            .jobs
            .get(&key.job)
            .is_some_and(|job| job.spec.kind == JobKind::Pipeline);
        let Some(attempt) = self.datums.get_mut(&key).and_then(|d| {
            d.attempts
                .iter_mut()
                .find(|a| a.fence == completion.fence && a.node == node && a.awaits_late_report())
        }) else {
            return;
        };
        let mut report = completion.report.clone();
        if pipeline {
            report.outputs.clear();
        }
        report.system_logs.insert(
            0,
            bounded(&format!(
                "its node reported after the lease expired that the attempt ended {}; \
                 that report was too late to count",
                report.outcome.name()
            )),
        );
        attempt.report = Some(report);
        self.dirty.insert(RowKey::Datum(key));
    }

    /// Whether the report is a pipeline attempt that succeeded with outputs to publish (and
    /// its datum is not being canceled).
    fn stages_outputs(&self, key: DatumKey, report: &AttemptReport) -> bool {
        let pipeline = self
            .jobs
            .get(&key.job)
            .is_some_and(|j| j.spec.kind == JobKind::Pipeline && !j.canceled);
        let running = self
            .datums
            .get(&key)
            .is_some_and(|d| d.state != DatumState::Canceling);
        pipeline
            && running
            && report.outcome == AttemptOutcome::Succeeded
            && !report.outputs.is_empty()
    }

    /// Claims the report's output paths for the datum and moves it to `Publishing`; fails
    /// the datum instead when another datum of the job owns one of them.
    fn begin_publishing(&mut self, key: DatumKey, mut report: AttemptReport, now_ms: u64) {
        if let Some((path, owner)) = self.output_conflict(key, &report) {
            let owner_id = self.datums.get(&owner).map(|d| d.id).unwrap_or_default();
            report.outcome = AttemptOutcome::SystemError;
            report.system_logs.push(bounded(&format!(
                "output {path:?} is written by datum {} of this job already; nothing was published",
                format_datum_id(owner_id)
            )));
            let message = report.system_logs.last().cloned().unwrap_or_default();
            self.record_report(key, report, now_ms);
            self.drop_claim(key);
            self.fail_datum(key, &message, now_ms);
            return;
        }
        for output in &report.outputs {
            self.outputs
                .insert((key.job, output_path_hash(&output.path), key));
        }
        self.record_report(key, report, now_ms);
        self.set_datum_state(key, DatumState::Publishing, now_ms);
    }

    /// The first output path of `report` that another datum of the job owns, with its owner.
    fn output_conflict(&self, key: DatumKey, report: &AttemptReport) -> Option<(String, DatumKey)> {
        report.outputs.iter().find_map(|output| {
            let hash = output_path_hash(&output.path);
            let first = DatumKey { job: 0, index: 0 };
            let last = DatumKey {
                job: JobSeq::MAX,
                index: u32::MAX,
            };
            // Every datum owning a path with this hash; only the same path is a conflict.
            self.outputs
                .range((key.job, hash, first)..=(key.job, hash, last))
                .map(|(_, _, owner)| *owner)
                .find(|owner| *owner != key && self.owns_path(*owner, &output.path))
                .map(|owner| (output.path.clone(), owner))
        })
    }

    /// Whether `owner`'s committed report lists `path` among its outputs.
    fn owns_path(&self, owner: DatumKey, path: &str) -> bool {
        self.datums
            .get(&owner)
            .and_then(|d| d.attempts.last())
            .and_then(|a| a.report.as_ref())
            .is_some_and(|r| r.outputs.iter().any(|o| o.path == path))
    }

    /// Ends the current attempt with `report`, leaving the claim and the datum's state.
    fn record_report(&mut self, key: DatumKey, report: AttemptReport, now_ms: u64) {
        let Some(attempt) = self
            .datums
            .get_mut(&key)
            .and_then(|d| d.attempts.last_mut())
        else {
            return;
        };
        attempt.ended_ms = Some(now_ms);
        attempt.outcome = Some(report.outcome);
        attempt.report = Some(report);
        self.dirty.insert(RowKey::Datum(key));
    }

    pub(in crate::state) fn published(
        &mut self,
        now_ms: u64,
        node: NodeId,
        datums: &[(DatumKey, u64)],
    ) -> Outcome {
        let mut accepted = 0;
        let mut stale = Vec::new();
        for &(key, fence) in datums {
            let publishing = self
                .datums
                .get(&key)
                .is_some_and(|d| d.state == DatumState::Publishing);
            if !publishing || !self.holds(key, fence, Some(node)) {
                stale.push(key);
                continue;
            }
            self.drop_claim(key);
            self.set_datum_state(key, DatumState::Done, now_ms);
            accepted += 1;
        }
        Outcome::Reported { accepted, stale }
    }
}

impl State {
    /// The holder of a publishing claim cannot publish its outputs (the staged files are
    /// gone, the egress refuses them): the datum fails with `reason`, its paths free again.
    pub(in crate::state) fn publish_failed(
        &mut self,
        now_ms: u64,
        node: NodeId,
        key: DatumKey,
        fence: u64,
        reason: &str,
    ) -> Outcome {
        let publishing = self
            .datums
            .get(&key)
            .is_some_and(|d| d.state == DatumState::Publishing);
        if !publishing || !self.holds(key, fence, Some(node)) {
            return Outcome::Reported {
                accepted: 0,
                stale: vec![key],
            };
        }
        let message = bounded(&format!("publishing the outputs failed: {reason}"));
        if let Some(report) = self
            .datums
            .get_mut(&key)
            .and_then(|d| d.attempts.last_mut())
            .and_then(|a| {
                a.outcome = Some(AttemptOutcome::SystemError);
                a.report.as_mut()
            })
        {
            report.outcome = AttemptOutcome::SystemError;
            report.system_logs.push(message.clone());
            for output in std::mem::take(&mut report.outputs) {
                self.outputs
                    .remove(&(key.job, output_path_hash(&output.path), key));
            }
        }
        self.drop_claim(key);
        self.fail_datum(key, &message, now_ms);
        Outcome::Reported {
            accepted: 1,
            stale: Vec::new(),
        }
    }
}

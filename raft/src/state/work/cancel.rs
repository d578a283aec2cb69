//! `CancelJob` and `RetryFailed`.

use super::{RETRIES_MAX, job_range, refused};
use crate::command::Outcome;
use crate::job::{AttemptOutcome, DatumKey, DatumState};
use crate::state::State;

impl State {
    pub(in crate::state) fn cancel_job(&mut self, now_ms: u64, job_id: &str) -> Outcome {
        let Some(seq) = self.job_seq(job_id) else {
            return Outcome::UnknownJob {
                job_id: job_id.to_string(),
            };
        };
        let job = &self.jobs[&seq];
        if job.drained() || job.canceled {
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
            // A publishing datum's outputs are committed: it finishes publishing.
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

    pub(in crate::state) fn retry_failed(&mut self, now_ms: u64, job_id: &str) -> Outcome {
        let Some(seq) = self.job_seq(job_id) else {
            return Outcome::UnknownJob {
                job_id: job_id.to_string(),
            };
        };
        let job = &self.jobs[&seq];
        if job.canceled {
            return refused(format!("job {job_id} was canceled or ended by the cluster"));
        }
        if job.drained() && !job.closed && job.spec.kind == crate::job::JobKind::Pipeline {
            // Its steward is clearing the staging area: new attempts must not stage into it.
            return refused(format!("job {job_id} is closing; retry once it has ended"));
        }
        if job.retries >= RETRIES_MAX {
            return refused(format!(
                "job {job_id} was retried {RETRIES_MAX} times already"
            ));
        }
        let failed: Vec<DatumKey> = self
            .datums
            .range(job_range(seq))
            .filter(|(_, d)| d.state == DatumState::Failed)
            .map(|(k, _)| *k)
            .collect();
        if failed.is_empty() {
            return Outcome::Changed { datums: 0 };
        }
        if let Some(job) = self.jobs.get_mut(&seq) {
            job.retries += 1;
            job.closed = false;
            job.first_errors.clear();
        }
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
}

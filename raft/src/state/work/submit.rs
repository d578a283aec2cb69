//! Jobs and their datums arrive (`SubmitJob`, `AddDatums`) and pipelines end early or close
//! (`FailJob`, `CloseJob`).

use super::{DATUM_TRIES_MAX, DATUMS_PER_COMMAND_MAX, DATUMS_PER_JOB_MAX, bounded, refused};
use crate::command::Outcome;
use crate::job::{Datum, DatumKey, DatumState, Job, JobKind, JobSeq, JobSpec, NewDatum};
use crate::state::{RowKey, State};
use crate::types::NodeId;

impl State {
    pub(in crate::state) fn submit_job(
        &mut self,
        now_ms: u64,
        spec: &JobSpec,
        datums: &[NewDatum],
        seal: bool,
        steward: Option<NodeId>,
    ) -> Outcome {
        if let Some(&seq) = self.job_ids.get(&spec.id) {
            return Outcome::JobSubmitted {
                job_id: spec.id.clone(),
                seq,
            };
        }
        if let Some(answer) = self.submitted_with_key(spec) {
            return answer;
        }
        if spec.datum_tries == 0 || spec.datum_tries > DATUM_TRIES_MAX {
            return refused(format!("datum_tries must be 1..={DATUM_TRIES_MAX}"));
        }
        match spec.kind {
            JobKind::Task if datums.len() != 1 || !seal || spec.pipeline.is_some() => {
                return refused("a task is exactly one sealed datum");
            }
            JobKind::Pipeline if spec.pipeline.is_none() || steward.is_none() => {
                return refused("a pipeline needs its input, egress and steward");
            }
            _ => {}
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
            started_ms: None,
            steward: steward.filter(|_| spec.kind == JobKind::Pipeline),
            closed: false,
            error: None,
            first_errors: Vec::new(),
            retries: 0,
        };
        self.jobs.insert(seq, job);
        self.job_ids.insert(spec.id.clone(), seq);
        if let Some(idempotency) = &spec.idempotency {
            self.job_keys
                .insert((spec.owner.clone(), idempotency.key.clone()), seq);
        }
        self.index_job_tags(seq);
        self.append_datums(seq, datums, seal, now_ms);
        Outcome::JobSubmitted {
            job_id: spec.id.clone(),
            seq,
        }
    }

    /// The answer to a submission whose idempotency key (of its owner) names a job already:
    /// that job, or a refusal when the key came with a different request.
    fn submitted_with_key(&self, spec: &JobSpec) -> Option<Outcome> {
        let idempotency = spec.idempotency.as_ref()?;
        let seq = *self
            .job_keys
            .get(&(spec.owner.clone(), idempotency.key.clone()))?;
        let job = self.jobs.get(&seq)?;
        let same = job
            .spec
            .idempotency
            .as_ref()
            .is_some_and(|known| known.request_hash == idempotency.request_hash);
        Some(if same {
            Outcome::JobSubmitted {
                job_id: job.spec.id.clone(),
                seq,
            }
        } else {
            Outcome::KeyReused {
                job_id: job.spec.id.clone(),
            }
        })
    }

    pub(in crate::state) fn add_datums(&mut self, now_ms: u64, command: AddDatums<'_>) -> Outcome {
        let AddDatums {
            job_id,
            node_id,
            first_index,
            datums,
            seal,
        } = command;
        let Some(job) = self.job_ids.get(job_id).and_then(|seq| self.jobs.get(seq)) else {
            return Outcome::UnknownJob {
                job_id: job_id.to_string(),
            };
        };
        if job.steward != Some(node_id) {
            return refused(format!("node is not the steward of job {job_id}"));
        }
        let end = u64::from(first_index) + datums.len() as u64;
        if first_index < job.datum_count && end <= u64::from(job.datum_count) {
            // A resend of datums already added.
            return Outcome::Changed { datums: 0 };
        }
        if job.sealed || job.canceled {
            return refused(format!("job {job_id} takes no more datums"));
        }
        if first_index != job.datum_count {
            return refused(format!(
                "job {job_id} expects datums from index {}",
                job.datum_count
            ));
        }
        if datums.len() > DATUMS_PER_COMMAND_MAX {
            return refused(format!(
                "at most {DATUMS_PER_COMMAND_MAX} datums per command"
            ));
        }
        if end > u64::from(DATUMS_PER_JOB_MAX) {
            return refused(format!("a job has at most {DATUMS_PER_JOB_MAX} datums"));
        }
        let seq = job.seq;
        self.append_datums(seq, datums, seal, now_ms);
        Outcome::Changed {
            datums: datums.len() as u32,
        }
    }

    fn append_datums(&mut self, seq: JobSeq, datums: &[NewDatum], seal: bool, now_ms: u64) {
        let Some(job) = self.jobs.get_mut(&seq) else {
            return;
        };
        let first = job.datum_count;
        job.datum_count += datums.len() as u32;
        job.sealed = seal;
        let mut skipped = 0;
        for (offset, new) in datums.iter().enumerate() {
            let key = DatumKey {
                job: seq,
                index: first + offset as u32,
            };
            let reused = new.reuse.and_then(|from| self.reusable(seq, new, from));
            let datum = Datum {
                key,
                id: new.id,
                inputs: new.inputs.clone(),
                state: if reused.is_some() {
                    DatumState::Skipped
                } else {
                    DatumState::Pending
                },
                claim: None,
                attempts: Vec::new(),
                retried_after: 0,
                reused,
            };
            self.datums.insert(key, datum);
            if reused.is_some() {
                skipped += 1;
            } else {
                self.pending.insert(key);
            }
            self.index_datum_id(new.id, key);
            self.dirty.insert(RowKey::Datum(key));
        }
        if let Some(job) = self.jobs.get_mut(&seq) {
            job.counts.skipped += skipped;
            job.counts.pending += datums.len() as u32 - skipped;
            self.count_datums(DatumState::Skipped, u64::from(skipped));
            self.count_datums(DatumState::Pending, (datums.len() as u32 - skipped).into());
        }
        self.touch_job(seq, now_ms);
    }

    /// The datum whose outputs `new` (for job `seq`) may reuse, if `from` qualifies: same id
    /// and inputs, in a finished job of the same pipeline with the same transform and
    /// egress, done there or itself skipped (then its own source is the one). Whether the
    /// outputs are still published is the steward's to check before it asks.
    fn reusable(&self, seq: JobSeq, new: &NewDatum, from: DatumKey) -> Option<DatumKey> {
        let job = self.jobs.get(&seq)?;
        self.jobs.get(&from.job).filter(|earlier| {
            from.job < seq
                && earlier.finished()
                && earlier.spec.kind == JobKind::Pipeline
                && earlier.spec.name == job.spec.name
                && earlier.spec.same_transform(&job.spec)
        })?;
        let datum = self
            .datums
            .get(&from)
            .filter(|d| d.id == new.id && d.inputs == new.inputs)?;
        match datum.state {
            DatumState::Done => Some(from),
            DatumState::Skipped => datum.reused,
            _ => None,
        }
    }

    pub(in crate::state) fn fail_job(
        &mut self,
        now_ms: u64,
        job_id: &str,
        reason: &str,
    ) -> Outcome {
        let Some(seq) = self.job_seq(job_id) else {
            return Outcome::UnknownJob {
                job_id: job_id.to_string(),
            };
        };
        let job = &self.jobs[&seq];
        if job.canceled || job.drained() {
            return Outcome::Changed { datums: 0 };
        }
        if let Some(job) = self.jobs.get_mut(&seq) {
            job.error = Some(bounded(reason));
        }
        self.cancel_job(now_ms, job_id)
    }

    pub(in crate::state) fn close_job(
        &mut self,
        now_ms: u64,
        job_id: &str,
        node_id: NodeId,
    ) -> Outcome {
        let Some(seq) = self.job_seq(job_id) else {
            return Outcome::UnknownJob {
                job_id: job_id.to_string(),
            };
        };
        let job = &self.jobs[&seq];
        if job.closed {
            return Outcome::Changed { datums: 0 };
        }
        if job.steward != Some(node_id) {
            return refused(format!("node is not the steward of job {job_id}"));
        }
        if !job.drained() {
            return refused(format!("job {job_id} still has datums to run"));
        }
        if let Some(job) = self.jobs.get_mut(&seq) {
            job.closed = true;
        }
        self.touch_job(seq, now_ms);
        Outcome::Applied
    }
}

/// The fields of `Command::AddDatums`, borrowed.
pub(in crate::state) struct AddDatums<'a> {
    pub job_id: &'a str,
    pub node_id: NodeId,
    pub first_index: u32,
    pub datums: &'a [NewDatum],
    pub seal: bool,
}

//! Replicated jobs and datums as the `/v1/jobs` and `/v1/datums` routes show them.

use shoal_raft::job::{
    Attempt, AttemptOutcome, Datum, DatumCounts, DatumState, ExecutorLog, FileKind, Job, JobKind,
    JobState, format_datum_id,
};
use shoal_raft::state::State;
use shoal_raft::{NodeId, format_node_id};
use shoal_storage::join_url;

use crate::api::{
    AttemptLogsView, AttemptView, DatumCountsView, DatumErrorView, DatumInputView, DatumLogsView,
    DatumRefView, DatumView, ExecutorLogView, JobView, OutputView, rfc3339_ms,
};

/// What the attempt running now has printed so far, as its node told it.
pub struct Live<'a> {
    pub fence: u64,
    pub logs: &'a [ExecutorLog],
}

pub fn job_state_name(state: JobState) -> &'static str {
    match state {
        JobState::Queued => "queued",
        JobState::Running => "running",
        JobState::Canceling => "canceling",
        JobState::Done => "done",
        JobState::Error => "error",
        JobState::Canceled => "canceled",
    }
}

/// The job state a name means (`None` for an unknown name).
pub fn parse_job_state(name: &str) -> Option<JobState> {
    JobState::ALL
        .into_iter()
        .find(|state| job_state_name(*state) == name)
}

pub fn datum_state_name(state: DatumState) -> &'static str {
    match state {
        DatumState::Pending => "pending",
        DatumState::Claimed => "claimed",
        DatumState::Running => "running",
        DatumState::Publishing => "publishing",
        DatumState::Canceling => "canceling",
        DatumState::Done => "done",
        DatumState::Failed => "failed",
        DatumState::Canceled => "canceled",
        DatumState::Skipped => "skipped",
    }
}

pub fn parse_datum_state(name: &str) -> Option<DatumState> {
    DatumState::ALL
        .into_iter()
        .find(|state| datum_state_name(*state) == name)
}

fn counts(counts: &DatumCounts) -> DatumCountsView {
    DatumCountsView {
        pending: counts.pending,
        claimed: counts.claimed,
        running: counts.running,
        publishing: counts.publishing,
        canceling: counts.canceling,
        done: counts.done,
        failed: counts.failed,
        canceled: counts.canceled,
        skipped: counts.skipped,
        total: counts.total(),
    }
}

/// A node's name, or its id once it left the registry.
pub fn node_name(state: &State, node_id: NodeId) -> String {
    state
        .nodes
        .get(&node_id)
        .map(|n| n.info.name.clone())
        .unwrap_or_else(|| format_node_id(node_id))
}

/// The job; with its spec when `with_spec`. `now_ms` is the state's clock.
pub fn job(state: &State, job: &Job, with_spec: bool) -> JobView {
    let end_ms = job.ended_ms.unwrap_or(state.clock_ms);
    let rate = match job.started_ms {
        Some(start) if end_ms > start => {
            f64::from(job.counts.done) * 1000.0 / (end_ms - start) as f64
        }
        _ => 0.0,
    };
    JobView {
        id: job.spec.id.clone(),
        kind: match job.spec.kind {
            JobKind::Task => "task",
            JobKind::Pipeline => "pipeline",
        }
        .to_string(),
        name: job.spec.name.clone(),
        state: job_state_name(job.state()).to_string(),
        owner: job.spec.owner.clone(),
        spec: with_spec
            .then(|| serde_json::from_str(&job.spec.source).ok())
            .flatten(),
        counts: counts(&job.counts),
        listing: !job.sealed,
        created: rfc3339_ms(job.created_ms),
        started: job.started_ms.map(rfc3339_ms),
        ended: job.ended_ms.map(rfc3339_ms),
        datums_per_second: (rate * 100.0).round() / 100.0,
        error: job.error.clone(),
        first_errors: job
            .first_errors
            .iter()
            .map(|e| DatumErrorView {
                datum: format_datum_id(e.datum_id),
                index: e.index,
                message: e.message.clone(),
            })
            .collect(),
        steward: job.steward.map(|node| node_name(state, node)),
        waiting: (job.counts.pending > 0)
            .then(|| state.unplaceable(job.seq))
            .flatten(),
    }
}

fn executor_log(log: ExecutorLog, with_output: bool) -> ExecutorLogView {
    ExecutorLogView {
        // A running executor has no exit code and no end yet.
        exit_code: (log.end_ms > 0).then_some(log.exit_code),
        started: Some(rfc3339_ms(log.start_ms)),
        ended: (log.end_ms > 0).then(|| rfc3339_ms(log.end_ms)),
        stdout: if with_output {
            log.stdout_tail
        } else {
            String::new()
        },
        stderr: if with_output {
            log.stderr_tail
        } else {
            String::new()
        },
    }
}

/// The executor logs of an attempt: its report's, or what it printed so far.
fn attempt_logs(attempt: &Attempt, live: Option<&Live<'_>>) -> Vec<ExecutorLog> {
    match (&attempt.report, live) {
        (Some(report), _) => report.executors.clone(),
        (None, Some(live)) if live.fence == attempt.fence => live.logs.to_vec(),
        (None, _) => Vec::new(),
    }
}

fn attempt(
    state: &State,
    egress: &str,
    attempt: &Attempt,
    live: Option<&Live<'_>>,
    with_output: bool,
) -> AttemptView {
    let report = attempt.report.as_ref();
    let logs = attempt_logs(attempt, live);
    let error = match (attempt.outcome, report) {
        // Its node may have reported it later (it was cut off or paused): still lost.
        (Some(AttemptOutcome::LeaseExpired), _) => {
            Some("the node running it went silent longer than its lease".to_string())
        }
        (_, Some(report)) => report.error_message(),
        (Some(AttemptOutcome::Lost), None) => {
            Some("the node running it restarted; nothing of it ran on".to_string())
        }
        (Some(outcome), None) => Some(format!("attempt ended {}", outcome.name())),
        (None, None) => None,
    };
    AttemptView {
        attempt: attempt.number,
        node: node_name(state, attempt.node),
        claimed: rfc3339_ms(attempt.claimed_ms),
        started: attempt.started_ms.map(rfc3339_ms),
        ended: attempt.ended_ms.map(rfc3339_ms),
        outcome: attempt.outcome.map(|o| o.name().to_string()),
        exit_code: report.and_then(|r| r.executors.last()).map(|l| l.exit_code),
        error,
        system_logs: report.map(|r| r.system_logs.clone()).unwrap_or_default(),
        executors: logs
            .into_iter()
            .map(|log| executor_log(log, with_output))
            .collect(),
        outputs: report
            .map(|r| {
                r.outputs
                    .iter()
                    .map(|o| OutputView {
                        path: o.path.clone(),
                        url: join_url(egress, &o.path),
                        size_bytes: o.size_bytes,
                    })
                    .collect()
            })
            .unwrap_or_default(),
    }
}

/// A pipeline datum; executor output only `with_output` (a single datum, not a list).
pub fn datum(
    state: &State,
    job: &Job,
    datum: &Datum,
    live: Option<&Live<'_>>,
    with_output: bool,
) -> DatumView {
    let pipeline = job.spec.pipeline.as_ref();
    let egress = pipeline.map(|p| p.egress_uri.as_str()).unwrap_or_default();
    let atoms = pipeline.map(|p| p.input.atoms()).unwrap_or_default();
    DatumView {
        id: format_datum_id(datum.id),
        job: job.spec.id.clone(),
        index: datum.key.index,
        state: datum_state_name(datum.state).to_string(),
        inputs: datum
            .inputs
            .iter()
            .filter_map(|input| {
                let atom = atoms.get(usize::from(input.atom))?;
                Some(DatumInputView {
                    name: atom.name.to_string(),
                    url: join_url(atom.uri, &input.path),
                    path: format!("/pfs/{}/{}", atom.name, input.path)
                        .trim_end_matches('/')
                        .to_string(),
                    kind: match input.kind {
                        FileKind::File => "file",
                        FileKind::Directory => "directory",
                    }
                    .to_string(),
                })
            })
            .collect(),
        attempts: datum
            .attempts
            .iter()
            .map(|a| attempt(state, egress, a, live, with_output))
            .collect(),
        reused_from: datum.reused.map(|from| DatumRefView {
            job: state
                .jobs
                .get(&from.job)
                .map(|j| j.spec.id.clone())
                .unwrap_or_default(),
            index: from.index,
        }),
    }
}

/// What each attempt of a datum printed.
pub fn datum_logs(
    state: &State,
    job: &Job,
    datum: &Datum,
    live: Option<&Live<'_>>,
) -> DatumLogsView {
    DatumLogsView {
        id: format_datum_id(datum.id),
        job: job.spec.id.clone(),
        attempts: datum
            .attempts
            .iter()
            .map(|a| AttemptLogsView {
                attempt: a.number,
                node: node_name(state, a.node),
                executors: attempt_logs(a, live)
                    .into_iter()
                    .map(|log| executor_log(log, true))
                    .collect(),
            })
            .collect(),
    }
}

//! Pure tests of the work queue: commands in, state and outcomes out, every index checked
//! against a rebuild after every step.

use std::collections::BTreeMap;

use super::*;
use crate::command::{CLAIM_ENDS_BATCH_FORMAT, Completion, Grant};
use crate::command::{Command, NodeInfo, Proposal};
use crate::job::{
    AttemptReport, Datum, ExecutorSpec, JobKind, JobSeq, JobSpec, NewDatum, PipelineInput,
    PipelineSpec,
};
use crate::job::{Capacity, DatumCounts, JobState, Resources, TaskSpec};

const N1: NodeId = 1;
const N2: NodeId = 2;
const LEASE_MS: u64 = 10_000;
/// The capacity of the nodes the tests start with: more than any test asks.
const PLENTY: Capacity = Capacity {
    cpu_millis: 1_024_000,
    ram_bytes: 1 << 40,
};

/// A state machine driven like the log drives it: each command gets the next index.
struct Log {
    state: State,
    index: u64,
    now_ms: u64,
    /// The rows persisted so far, as the state store keeps them.
    rows: BTreeMap<Vec<u8>, Vec<u8>>,
}

impl Log {
    fn new() -> Log {
        let mut log = Log {
            state: State::default(),
            index: 0,
            now_ms: 1_000,
            rows: BTreeMap::new(),
        };
        for node_id in [N1, N2] {
            log.register(node_id, PLENTY);
        }
        log
    }

    fn register(&mut self, node_id: NodeId, capacity: Capacity) {
        let info = NodeInfo {
            name: format!("n{node_id}"),
            peer_id: format!("p{node_id}"),
            http_url: String::new(),
            p2p_addrs: Vec::new(),
            slots: 4,
            executor: "process".into(),
            capacity,
        };
        self.apply(Command::RegisterNode { node_id, info });
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
        self.check_after_step();
        outcome
    }

    /// Checks the indexes, persists the changed rows as the state store does and checks the
    /// rows alone rebuild the state: a change not marked dirty would be lost at a restart.
    fn check_after_step(&mut self) {
        check_invariants(&self.state);
        for key in self.state.take_dirty() {
            match self.state.row(key).expect("a row encodes") {
                Some(value) => self.rows.insert(key.to_bytes(), value),
                None => self.rows.remove(&key.to_bytes()),
            };
        }
        let rebuilt = State::from_rows(
            self.rows
                .iter()
                .map(|(key, value)| (key.as_slice(), value.as_slice())),
        )
        .expect("persisted rows load");
        assert_eq!(
            rebuilt, self.state,
            "the persisted rows differ from the state"
        );
    }

    /// Applies `command` as the first entry of Raft term `term`.
    fn apply_in_term(&mut self, term: u64, command: Command) -> Outcome {
        self.index += 1;
        let proposal = Proposal {
            time_ms: self.now_ms,
            command,
        };
        let outcome = self.state.apply_entry(term, self.index, &proposal);
        self.check_after_step();
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
        let steward = spec.pipeline.is_some().then_some(N1);
        let datums = (0..datums).map(|i| new_datum(u64::from(i) + 1)).collect();
        match self.apply(Command::SubmitJob {
            spec: Box::new(spec),
            datums,
            seal,
            steward,
        }) {
            Outcome::JobSubmitted { seq, .. } => seq,
            other => panic!("submit refused: {other:?}"),
        }
    }

    fn claim(&mut self, node_id: NodeId, max: u32) -> Vec<Grant> {
        self.claim_with_queue(node_id, max, 0)
    }

    fn claim_with_queue(&mut self, node_id: NodeId, max: u32, queue: u32) -> Vec<Grant> {
        self.claim_into(node_id, max, queue, PLENTY)
    }

    /// A claim of a node whose running attempts leave `free`.
    fn claim_into(&mut self, node_id: NodeId, max: u32, queue: u32, free: Capacity) -> Vec<Grant> {
        match self.apply(Command::ClaimBatch {
            node_id,
            max,
            queue,
            free,
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

    /// `node_id` claims one datum and starts it, then is silent past its lease: N2 expires
    /// the claim.
    fn start_then_expire(&mut self, node_id: NodeId) -> Grant {
        let grant = self.claim(node_id, 1)[0];
        self.apply(Command::Started {
            datum: grant.datum,
            fence: grant.fence,
        });
        self.now_ms += 2 * LEASE_MS;
        self.apply(Command::ExpireLeases {
            lease_ms: LEASE_MS,
            by: N2,
        });
        grant
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

    /// The job's state once its steward did its part: a drained pipeline is closed first.
    fn job_state(&mut self, seq: JobSeq) -> JobState {
        let job = &self.state.jobs[&seq];
        if job.drained()
            && !job.closed
            && let Some(node_id) = job.steward
        {
            let job_id = job.spec.id.clone();
            assert_eq!(
                self.apply(Command::CloseJob { job_id, node_id }),
                Outcome::Applied
            );
        }
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
        idempotency: None,
        pipeline: (kind == JobKind::Pipeline).then(|| PipelineSpec {
            input: PipelineInput::Atom {
                name: "in".into(),
                uri: "file:///in/".into(),
                glob: "/*".into(),
            },
            egress_uri: "file:///out/".into(),
            job_timeout_ms: 0,
            reprocess: false,
        }),
    }
}

fn new_datum(id: u64) -> NewDatum {
    NewDatum {
        id,
        inputs: Vec::new(),
        reuse: None,
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
    assert_eq!(
        copy.job_counts(),
        state.job_counts(),
        "jobs by kind and state"
    );
    assert_eq!(copy.datum_counts(), state.datum_counts(), "datums by state");
    let jobs: u64 = state.job_counts().values().sum();
    assert_eq!(jobs, state.jobs.len() as u64, "every job counted once");
    assert_eq!(copy.claims, state.claims, "claim index");
    assert_eq!(copy.queued, state.queued, "queued index");
    assert_eq!(copy.jobs_by_state, state.jobs_by_state, "state index");
    assert_eq!(copy.job_states, state.job_states, "state index");
    assert_eq!(copy.jobs_by_tag, state.jobs_by_tag, "tag index");
    assert_eq!(copy.jobs_by_tag_key, state.jobs_by_tag_key, "tag key index");
    assert_eq!(copy.job_ids, state.job_ids, "id index");
    assert_eq!(copy.job_keys, state.job_keys, "idempotency key index");
    assert_eq!(copy.datum_ids, state.datum_ids, "datum id index");
    assert_eq!(copy.outputs, state.outputs, "output index");
    assert_eq!(copy.open_pipelines, state.open_pipelines, "open pipelines");
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
    assert!(log.state.has_claimable(N1, 10, 0, PLENTY));
    let grants = log.claim(N1, 10);
    assert_eq!(keys(&grants), [(capped, 0), (capped, 1), (free, 0)]);
    assert!(
        !log.state.has_claimable(N2, 10, 4, PLENTY),
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
        log.apply(Command::ExpireLeases {
            lease_ms: LEASE_MS,
            by: N2,
        }),
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
            log.apply(Command::ExpireLeases {
                lease_ms: LEASE_MS,
                by: N2,
            }),
            Outcome::Changed { datums: 0 },
            "a node within its lease keeps its claims"
        );
        log.now_ms += LEASE_MS;
        log.apply(Command::ExpireLeases {
            lease_ms: LEASE_MS,
            by: N2,
        });
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
fn an_expired_attempt_its_node_reports_later_does_not_count_as_taking_the_node_down() {
    let mut log = Log::new();
    let job = log.submit("j", 1, 0, 1);
    // Each attempt's node is cut off past its lease, then comes back and reports it: a
    // partition or a pause, not a datum that kills nodes. None of them counts.
    for attempt in 1..=LEASE_EXPIRIES_MAX + 1 {
        let grant = log.start_then_expire(N1);
        assert_eq!(grant.attempt, attempt);
        assert_eq!(
            log.report(N1, grant, AttemptOutcome::Succeeded),
            Outcome::Reported {
                accepted: 0,
                stale: vec![grant.datum]
            },
            "the late report stays stale"
        );
        assert_eq!(
            log.report(N1, grant, AttemptOutcome::Succeeded),
            Outcome::Reported {
                accepted: 0,
                stale: vec![grant.datum]
            },
            "and so does its resend"
        );
        let datum = log.datum(job, 0);
        assert_eq!(datum.state, DatumState::Pending, "attempt {attempt}");
        let lost = &datum.attempts[attempt as usize - 1];
        assert_eq!(lost.outcome, Some(AttemptOutcome::LeaseExpired));
        let report = lost.report.as_ref().expect("the late report is kept");
        assert!(report.system_logs[0].contains("after the lease expired"));
        assert_eq!(datum.lease_expiries(), 0);
    }
    // An attempt whose node never comes back counts as before.
    assert_eq!(log.datum(job, 0).node_losses(), LEASE_EXPIRIES_MAX + 1);
    log.start_then_expire(N1);
    assert_eq!(log.datum(job, 0).lease_expiries(), 1);
    let last = log.claim(N2, 1)[0];
    log.report(N2, last, AttemptOutcome::Succeeded);
    assert_eq!(log.datum(job, 0).state, DatumState::Done);
}

#[test]
fn a_datum_that_keeps_stalling_its_node_fails_even_when_every_attempt_reports_late() {
    let mut log = Log::new();
    let job = log.submit("j", 1, 0, 1);
    for _ in 0..NODE_LOSSES_MAX {
        let grant = log.start_then_expire(N1);
        log.report(N1, grant, AttemptOutcome::Succeeded);
    }
    let datum = log.datum(job, 0);
    assert_eq!(datum.lease_expiries(), 0);
    assert_eq!(datum.state, DatumState::Failed);
    assert_eq!(datum.attempts.len() as u32, NODE_LOSSES_MAX);
    let errors = &log.state.jobs[&job].first_errors;
    assert!(
        errors
            .iter()
            .any(|e| e.message.contains("cut off or paused")),
        "{errors:?}"
    );
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

/// A job read as final is answered from a node's own state without a leader round: every
/// command that names it, its datums or their claims must leave it exactly as it is.
#[test]
fn no_command_changes_a_final_job() {
    let mut log = Log::new();
    let done = log.submit_spec(spec("done", JobKind::Task, 0, 1), 1, true);
    let grant = log.claim(N1, 1)[0];
    log.report(N1, grant, AttemptOutcome::Succeeded);
    let canceled = log.submit_spec(spec("canceled", JobKind::Task, 0, 1), 1, true);
    let running = log.claim(N2, 1)[0];
    log.apply(Command::Started {
        datum: running.datum,
        fence: running.fence,
    });
    log.apply(Command::CancelJob {
        job_id: "canceled".into(),
    });
    log.report(N2, running, AttemptOutcome::Canceled);
    let failed = log.submit_spec(spec("failed", JobKind::Task, 0, 1), 1, true);
    let lost = log.claim(N1, 1)[0];
    log.report(N1, lost, AttemptOutcome::ExecutorError);
    // Its first attempt's lease expires while N1 is cut off; the second, on N2, completes.
    let rerun = log.submit_spec(spec("rerun", JobKind::Task, 0, 1), 1, true);
    let expired = log.start_then_expire(N1);
    let second = log.claim(N2, 1)[0];
    log.report(N2, second, AttemptOutcome::Succeeded);
    assert!(log.state.is_final(done));
    assert!(log.state.is_final(canceled));
    assert!(!log.state.is_final(failed), "a failed datum can be retried");
    assert!(
        log.state.jobs[&rerun].is_final() && !log.state.is_final(rerun),
        "the expired attempt's late report is still to come"
    );
    let late = Command::CompleteBatch {
        node_id: N1,
        reports: vec![Completion {
            datum: expired.datum,
            fence: expired.fence,
            report: AttemptReport {
                outcome: AttemptOutcome::Succeeded,
                start_ms: 0,
                end_ms: 0,
                executors: Vec::new(),
                outputs: Vec::new(),
                system_logs: Vec::new(),
            },
        }],
    };
    log.apply(late.clone());
    assert!(log.datum(rerun, 0).attempts[0].report.is_some());
    assert!(log.state.is_final(rerun));

    for (seq, id, grant) in [
        (done, "done", grant),
        (canceled, "canceled", running),
        (rerun, "rerun", expired),
    ] {
        let before = (
            log.state.jobs[&seq].clone(),
            log.state.datums_of(seq).cloned().collect::<Vec<_>>(),
        );
        let job_id = id.to_string();
        let held = vec![(grant.datum, grant.fence)];
        let mut commands = vec![
            late.clone(),
            Command::CancelJob {
                job_id: job_id.clone(),
            },
            Command::RetryFailed {
                job_id: job_id.clone(),
            },
            Command::FailJob {
                job_id: job_id.clone(),
                reason: "late".into(),
            },
            Command::CloseJob {
                job_id: job_id.clone(),
                node_id: N1,
            },
            Command::Started {
                datum: grant.datum,
                fence: grant.fence,
            },
            Command::Begin {
                node_id: N1,
                datum: grant.datum,
                fence: grant.fence,
            },
            Command::HandBack {
                node_id: N1,
                datums: held.clone(),
            },
            Command::Abandon {
                node_id: N1,
                datums: held.clone(),
            },
            Command::Published {
                node_id: N1,
                datums: held,
            },
            Command::PublishFailed {
                node_id: N1,
                datum: grant.datum,
                fence: grant.fence,
                reason: "late".into(),
            },
        ];
        for outcome in [AttemptOutcome::Succeeded, AttemptOutcome::ExecutorError] {
            commands.push(Command::CompleteBatch {
                node_id: N1,
                reports: vec![Completion {
                    datum: grant.datum,
                    fence: grant.fence,
                    report: AttemptReport {
                        outcome,
                        start_ms: 0,
                        end_ms: 0,
                        executors: Vec::new(),
                        outputs: Vec::new(),
                        system_logs: Vec::new(),
                    },
                }],
            });
        }
        for command in commands {
            log.apply(command.clone());
            log.now_ms += 2 * LEASE_MS;
            log.apply(Command::ExpireLeases {
                lease_ms: LEASE_MS,
                by: N2,
            });
            log.claim(N1, 4);
            let after = (
                log.state.jobs[&seq].clone(),
                log.state.datums_of(seq).cloned().collect::<Vec<_>>(),
            );
            assert_eq!(after, before, "{command:?} changed the final job {id}");
        }
    }
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
            free: PLENTY,
        }),
        Outcome::UnknownNode { .. }
    ));
}

#[test]
fn an_idempotency_key_answers_its_first_job_and_refuses_another_request() {
    let mut log = Log::new();
    let keyed = |id: &str, owner: &str, request_hash| {
        let mut spec = spec(id, JobKind::Task, 0, 1);
        spec.owner = owner.into();
        spec.idempotency = Some(crate::job::IdempotencyKey {
            key: "k1".into(),
            request_hash,
        });
        Command::SubmitJob {
            spec: Box::new(spec),
            datums: vec![NewDatum::task()],
            seal: true,
            steward: None,
        }
    };
    let first = log.apply(keyed("a", "alice", 7));
    assert!(matches!(&first, Outcome::JobSubmitted { job_id, .. } if job_id == "a"));
    assert_eq!(
        log.apply(keyed("b", "alice", 7)),
        first,
        "a retry with a new id gets the first job"
    );
    assert_eq!(
        log.apply(keyed("c", "alice", 8)),
        Outcome::KeyReused { job_id: "a".into() }
    );
    assert!(
        matches!(log.apply(keyed("d", "bob", 8)), Outcome::JobSubmitted { job_id, .. } if job_id == "d"),
        "keys are the owner's own"
    );
    assert_eq!(log.state.jobs.len(), 2);
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
    let two = vec![NewDatum::task(), NewDatum::task()];
    let refused = |o: &Outcome| matches!(o, Outcome::Refused { .. });
    assert!(refused(&log.apply(Command::SubmitJob {
        spec: Box::new(task),
        datums: two,
        seal: true,
        steward: None,
    })));
    let no_tries = spec("p", JobKind::Pipeline, 0, 0);
    assert!(refused(&log.apply(Command::SubmitJob {
        spec: Box::new(no_tries),
        datums: Vec::new(),
        seal: true,
        steward: Some(N1),
    })));
    let no_steward = spec("p", JobKind::Pipeline, 0, 1);
    assert!(refused(&log.apply(Command::SubmitJob {
        spec: Box::new(no_steward),
        datums: Vec::new(),
        seal: true,
        steward: None,
    })));
    let add = Command::AddDatums {
        job_id: "nope".into(),
        node_id: N1,
        first_index: 0,
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
    log.apply(Command::ExpireLeases {
        lease_ms: LEASE_MS,
        by: N2,
    });
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

/// A pipeline job `id` of one datum, as a command that may share an entry.
fn submit(id: &str) -> Command {
    Command::SubmitJob {
        spec: Box::new(spec(id, JobKind::Pipeline, 0, 1)),
        datums: vec![new_datum(1)],
        seal: true,
        steward: Some(N1),
    }
}

#[test]
fn a_batch_applies_each_command_in_order_and_refuses_claims_inside() {
    let mut log = Log::new();
    let batch = Command::Batch(vec![
        submit("a"),
        Command::ClaimBatch {
            node_id: N1,
            max: 1,
            queue: 0,
            free: PLENTY,
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
fn from_format_6_a_claim_may_end_a_batch_and_takes_work_submitted_before_it() {
    let mut log = Log::new();
    let claim = |node_id| Command::ClaimBatch {
        node_id,
        max: 1,
        queue: 0,
        free: PLENTY,
    };
    let set_format = |version| Command::SetFormat {
        version,
        members: None,
    };
    // Before format 6 the claim inside takes nothing.
    let Outcome::Batch(before) = log.apply(Command::Batch(vec![submit("a"), claim(N1)])) else {
        panic!("a batch answers a batch");
    };
    assert!(matches!(before[1], Outcome::Refused { .. }));
    assert_eq!(
        log.apply(set_format(CLAIM_ENDS_BATCH_FORMAT)),
        Outcome::Applied
    );
    let Outcome::Batch(outcomes) = log.apply(Command::Batch(vec![
        submit("b"),
        claim(N2),
        submit("c"),
        claim(N2),
    ])) else {
        panic!("a batch answers a batch");
    };
    assert!(
        matches!(outcomes[1], Outcome::Refused { .. }),
        "a claim before the end of a batch is refused"
    );
    let Outcome::Claimed { grants } = &outcomes[3] else {
        panic!("the last claim answered {:?}", outcomes[3]);
    };
    // FIFO: the claim last in the entry takes a's datum, submitted entries before, with the
    // entry's index as fence.
    assert_eq!(grants.len(), 1);
    assert_eq!(grants[0].fence, log.index);
    assert_eq!(
        log.datum(grants[0].datum.job, 0).claim.map(|c| c.node),
        Some(N2)
    );
    assert_eq!(log.state.pending_count(), 2, "b and c wait");
    assert!(matches!(
        log.apply(Command::Batch(vec![claim(N1)])),
        Outcome::Batch(one) if matches!(one[0], Outcome::Claimed { ref grants } if grants.len() == 1)
    ));
}

#[test]
fn datums_arrive_in_chunks_from_the_steward_until_sealed_and_resends_change_nothing() {
    let mut log = Log::new();
    let job = log.submit_spec(spec("p", JobKind::Pipeline, 0, 1), 0, false);
    let add = |node_id, first_index: u32, seal| Command::AddDatums {
        job_id: "p".into(),
        node_id,
        first_index,
        datums: (0..3)
            .map(|i| new_datum(u64::from(first_index + i) + 1))
            .collect(),
        seal,
    };
    assert!(
        matches!(log.apply(add(N2, 0, false)), Outcome::Refused { .. }),
        "only the steward adds datums"
    );
    assert_eq!(log.apply(add(N1, 0, false)), Outcome::Changed { datums: 3 });
    assert_eq!(
        log.apply(add(N1, 0, false)),
        Outcome::Changed { datums: 0 },
        "a resend is recognised"
    );
    assert!(
        matches!(log.apply(add(N1, 4, false)), Outcome::Refused { .. }),
        "a gap is refused"
    );
    assert_eq!(log.job_state(job), JobState::Queued);
    log.apply(add(N1, 3, true));
    assert_eq!(log.state.jobs[&job].datum_count, 6);
    assert_eq!(
        log.apply(add(N1, 3, true)),
        Outcome::Changed { datums: 0 },
        "the sealing chunk resent after the seal is still a resend"
    );
    assert!(
        matches!(log.apply(add(N1, 6, true)), Outcome::Refused { .. }),
        "a sealed job takes no more"
    );
    assert_eq!(
        log.state
            .datums_with_id(5)
            .map(|d| d.key.index)
            .collect::<Vec<_>>(),
        [4]
    );
}

/// A report of a successful pipeline attempt that staged `paths`.
fn staged(paths: &[&str]) -> AttemptReport {
    AttemptReport {
        outcome: AttemptOutcome::Succeeded,
        start_ms: 0,
        end_ms: 0,
        executors: Vec::new(),
        outputs: paths
            .iter()
            .map(|path| crate::job::OutputFile {
                url: String::new(),
                path: path.to_string(),
                size_bytes: 1,
            })
            .collect(),
        system_logs: Vec::new(),
    }
}

fn complete(log: &mut Log, node_id: NodeId, grant: Grant, report: AttemptReport) -> Outcome {
    log.apply(Command::CompleteBatch {
        node_id,
        reports: vec![Completion {
            datum: grant.datum,
            fence: grant.fence,
            report,
        }],
    })
}

#[test]
fn a_pipeline_datum_with_outputs_publishes_under_its_claim_before_it_is_done() {
    let mut log = Log::new();
    let job = log.submit("p", 2, 0, 1);
    let grants = log.claim(N1, 2);
    complete(&mut log, N1, grants[0], staged(&["a.txt"]));
    let datum = log.datum(job, 0);
    assert_eq!(datum.state, DatumState::Publishing);
    assert_eq!(datum.claim.map(|c| c.fence), Some(grants[0].fence));
    let publish = |node_id, grant: Grant| Command::Published {
        node_id,
        datums: vec![(grant.datum, grant.fence)],
    };
    assert!(matches!(
        log.apply(publish(N2, grants[0])),
        Outcome::Reported { accepted: 0, .. }
    ));
    assert!(matches!(
        log.apply(publish(N1, grants[0])),
        Outcome::Reported { accepted: 1, .. }
    ));
    assert_eq!(log.datum(job, 0).state, DatumState::Done);

    complete(&mut log, N1, grants[1], staged(&[]));
    assert_eq!(
        log.datum(job, 1).state,
        DatumState::Done,
        "nothing to publish: done at once"
    );
    assert!(log.state.jobs[&job].drained());
    assert_eq!(
        log.state.jobs[&job].state(),
        JobState::Running,
        "open until the steward closes it"
    );
    let close = |node_id| Command::CloseJob {
        job_id: "p".into(),
        node_id,
    };
    assert!(matches!(log.apply(close(N2)), Outcome::Refused { .. }));
    assert_eq!(log.apply(close(N1)), Outcome::Applied);
    assert_eq!(log.job_state(job), JobState::Done);
    assert!(log.state.jobs[&job].ended_ms.is_some());
}

#[test]
fn a_new_leader_gives_every_node_a_full_lease_from_its_first_entry() {
    let mut log = Log::new();
    let job = log.submit("j", 1, 0, 1);
    log.claim(N1, 1);
    log.now_ms += LEASE_MS * 3;
    let expire = || Command::ExpireLeases {
        lease_ms: LEASE_MS,
        by: N2,
    };
    // N1's heartbeats were stuck on a leader that hung; a new one takes over.
    assert_eq!(
        log.apply_in_term(2, expire()),
        Outcome::Changed { datums: 0 },
        "nobody's lease runs out in the first lease of a term"
    );
    log.now_ms += LEASE_MS / 2;
    assert_eq!(log.apply(expire()), Outcome::Changed { datums: 0 });
    log.now_ms += LEASE_MS;
    log.heartbeat(N2);
    assert_eq!(
        log.apply(expire()),
        Outcome::Changed { datums: 1 },
        "a node silent for a lease of the new term loses its claims"
    );
    assert_eq!(log.datum(job, 0).state, DatumState::Pending);
}

#[test]
fn asking_for_work_and_reporting_are_signs_of_life() {
    let mut log = Log::new();
    let job = log.submit("j", 2, 0, 1);
    let first = log.claim(N1, 1)[0];
    log.now_ms += LEASE_MS - 1;
    log.claim(N1, 1);
    log.now_ms += LEASE_MS - 1;
    log.report(N1, first, AttemptOutcome::Succeeded);
    log.now_ms += LEASE_MS - 1;
    assert_eq!(
        log.apply(Command::ExpireLeases {
            lease_ms: LEASE_MS,
            by: N2,
        }),
        Outcome::Changed { datums: 0 },
        "N1 never went a lease without writing"
    );
    assert_eq!(log.datum(job, 1).state, DatumState::Claimed);
}

#[test]
fn a_resent_report_of_a_publishing_datum_is_a_repeat_not_stale() {
    let mut log = Log::new();
    let job = log.submit("p", 1, 0, 1);
    let grant = log.claim(N1, 1)[0];
    complete(&mut log, N1, grant, staged(&["a.txt"]));
    let before = log.datum(job, 0).clone();
    assert_eq!(
        complete(&mut log, N1, grant, staged(&["a.txt"])),
        Outcome::Reported {
            accepted: 1,
            stale: Vec::new()
        },
        "its node must not take the staged outputs for a zombie's"
    );
    assert_eq!(log.datum(job, 0), &before, "and nothing changed");
    assert_eq!(
        complete(&mut log, N2, grant, staged(&["a.txt"])),
        Outcome::Reported {
            accepted: 0,
            stale: vec![grant.datum]
        },
        "another node's report under that fence is stale"
    );
}

#[test]
fn a_datum_whose_outputs_cannot_be_published_fails_and_frees_its_paths() {
    let mut log = Log::new();
    let job = log.submit("p", 2, 0, 1);
    let grants = log.claim(N1, 2);
    complete(&mut log, N1, grants[0], staged(&["a.txt"]));
    let failed = |node_id, grant: Grant| Command::PublishFailed {
        node_id,
        datum: grant.datum,
        fence: grant.fence,
        reason: "the staged file is gone".into(),
    };
    assert!(matches!(
        log.apply(failed(N2, grants[0])),
        Outcome::Reported { accepted: 0, .. }
    ));
    assert!(matches!(
        log.apply(failed(N1, grants[0])),
        Outcome::Reported { accepted: 1, .. }
    ));
    let datum = log.datum(job, 0);
    assert_eq!(datum.state, DatumState::Failed);
    assert!(
        log.state.jobs[&job].first_errors[0]
            .message
            .contains("the staged file is gone")
    );
    complete(&mut log, N1, grants[1], staged(&["a.txt"]));
    assert_eq!(
        log.datum(job, 1).state,
        DatumState::Publishing,
        "the failed datum's path is free again"
    );
}

#[test]
fn a_pipeline_being_closed_takes_no_retry() {
    let mut log = Log::new();
    let job = log.submit("p", 1, 0, 1);
    let grant = log.claim(N1, 1)[0];
    log.report(N1, grant, AttemptOutcome::ExecutorError);
    assert!(log.state.jobs[&job].drained());
    assert!(matches!(
        log.apply(Command::RetryFailed { job_id: "p".into() }),
        Outcome::Refused { .. }
    ));
    assert_eq!(log.job_state(job), JobState::Error, "closed by its steward");
    assert_eq!(
        log.apply(Command::RetryFailed { job_id: "p".into() }),
        Outcome::Changed { datums: 1 }
    );
}

#[test]
fn a_second_datum_writing_the_same_output_fails_naming_the_path_and_publishes_nothing() {
    let mut log = Log::new();
    let job = log.submit("p", 3, 0, 3);
    let grants = log.claim(N1, 3);
    complete(&mut log, N1, grants[0], staged(&["shared.txt", "a.txt"]));
    complete(&mut log, N2, grants[1], staged(&["b.txt"]));
    assert_eq!(
        log.datum(job, 1).state,
        DatumState::Claimed,
        "not its claim"
    );
    complete(&mut log, N1, grants[1], staged(&["b.txt", "shared.txt"]));
    let loser = log.datum(job, 1);
    assert_eq!(loser.state, DatumState::Failed, "no retry can help");
    assert!(loser.claim.is_none());
    let message = &log.state.jobs[&job].first_errors[0].message;
    assert!(message.contains("\"shared.txt\""), "{message}");
    complete(&mut log, N1, grants[2], staged(&["c.txt"]));
    assert_eq!(log.datum(job, 2).state, DatumState::Publishing);
}

#[test]
fn a_silent_nodes_publishing_claims_and_stewardships_pass_to_the_proposer() {
    let mut log = Log::new();
    let job = log.submit("p", 2, 0, 1);
    let grants = log.claim(N1, 2);
    complete(&mut log, N1, grants[0], staged(&["a.txt"]));
    log.now_ms += LEASE_MS + 1;
    log.heartbeat(N2);
    log.apply(Command::ExpireLeases {
        lease_ms: LEASE_MS,
        by: N2,
    });
    let expiry = log.index;
    let publishing = log.datum(job, 0);
    assert_eq!(publishing.state, DatumState::Publishing);
    let claim = publishing.claim.expect("still claimed");
    assert_eq!((claim.node, claim.fence), (N2, expiry));
    assert_eq!(
        publishing.attempts.len(),
        1,
        "the attempt that ran stays the one that counts"
    );
    assert_eq!(log.datum(job, 1).state, DatumState::Pending, "runs again");
    assert_eq!(log.state.jobs[&job].steward, Some(N2));
    assert!(matches!(
        log.apply(Command::Published {
            node_id: N2,
            datums: vec![(grants[0].datum, expiry)],
        }),
        Outcome::Reported { accepted: 1, .. }
    ));
}

#[test]
fn a_failed_job_cancels_what_is_left_and_ends_error_once_closed() {
    let mut log = Log::new();
    let job = log.submit("p", 3, 0, 1);
    let grant = log.claim(N1, 1)[0];
    let fail = Command::FailJob {
        job_id: "p".into(),
        reason: "job_timeout of 1s exceeded".into(),
    };
    assert_eq!(log.apply(fail.clone()), Outcome::Changed { datums: 3 });
    assert_eq!(log.job_state(job), JobState::Canceling);
    assert_eq!(log.apply(fail), Outcome::Changed { datums: 0 });
    log.report(N1, grant, AttemptOutcome::Canceled);
    assert!(log.state.jobs[&job].drained());
    log.apply(Command::CloseJob {
        job_id: "p".into(),
        node_id: N1,
    });
    assert_eq!(log.job_state(job), JobState::Error);
    assert!(
        matches!(
            log.apply(Command::RetryFailed { job_id: "p".into() }),
            Outcome::Refused { .. }
        ),
        "a job the cluster ended is not retried"
    );
}

#[test]
fn retries_are_bounded_and_reopen_a_closed_pipeline() {
    let mut log = Log::new();
    let job = log.submit("p", 1, 0, 1);
    for round in 0..=RETRIES_MAX {
        let grant = log.claim(N1, 1)[0];
        log.report(N1, grant, AttemptOutcome::ExecutorError);
        log.apply(Command::CloseJob {
            job_id: "p".into(),
            node_id: N1,
        });
        assert_eq!(log.job_state(job), JobState::Error);
        assert_eq!(log.state.jobs[&job].first_errors.len(), 1);
        let retry = log.apply(Command::RetryFailed { job_id: "p".into() });
        if round < RETRIES_MAX {
            assert_eq!(retry, Outcome::Changed { datums: 1 });
            assert_eq!(log.job_state(job), JobState::Queued);
            assert!(log.state.jobs[&job].ended_ms.is_none());
        } else {
            assert!(matches!(retry, Outcome::Refused { .. }), "{retry:?}");
        }
    }
}

#[test]
fn persisted_rows_rebuild_the_same_state_with_its_indexes() {
    let mut log = Log::new();
    log.submit("a", 4, 2, 2);
    log.submit("b", 2, 0, 1);
    let grants = log.claim(N1, 3);
    log.report(N1, grants[0], AttemptOutcome::Succeeded);
    log.apply(Command::CancelJob { job_id: "b".into() });

    // (`Log` persists the dirty rows after every step; here the rows are checked once more
    // by hand.)
    let rebuilt =
        State::from_rows(log.rows.iter().map(|(k, v)| (k.as_slice(), v.as_slice()))).expect("rows");
    assert_eq!(rebuilt, log.state);
    assert!(!log.rows.is_empty());
}

#[test]
fn a_rerun_reuses_only_done_datums_of_a_finished_job_of_the_same_pipeline_and_transform() {
    let mut log = Log::new();
    let pipeline = |id: &str, name: &str| JobSpec {
        name: name.into(),
        ..spec(id, JobKind::Pipeline, 0, 1)
    };
    // The first job: datum ids 1, 2, 3; 1 succeeds, 2 fails, 3 waits.
    let first = log.submit_spec(pipeline("j1", "words"), 3, true);
    let grants = log.claim(N1, 2);
    log.report(N1, grants[0], AttemptOutcome::Succeeded);
    log.report(N1, grants[1], AttemptOutcome::ExecutorError);
    let at = |job, index| Some(DatumKey { job, index });
    let reusing = |id: u64, from: Option<DatumKey>| NewDatum {
        reuse: from,
        ..new_datum(id)
    };
    let submit =
        |log: &mut Log, spec: JobSpec, datums: Vec<NewDatum>| match log.apply(Command::SubmitJob {
            spec: Box::new(spec),
            datums,
            seal: true,
            steward: Some(N1),
        }) {
            Outcome::JobSubmitted { seq, .. } => seq,
            other => panic!("{other:?}"),
        };

    let early = submit(
        &mut log,
        pipeline("j2", "words"),
        vec![reusing(1, at(first, 0))],
    );
    assert_eq!(
        log.datum(early, 0).state,
        DatumState::Pending,
        "a job still running lends nothing"
    );
    let grant = log.claim(N1, 1)[0];
    assert_eq!(grant.datum.job, first);
    log.report(N1, grant, AttemptOutcome::Succeeded);
    assert_eq!(log.job_state(first), JobState::Error);

    let rerun = submit(
        &mut log,
        pipeline("j3", "words"),
        vec![
            reusing(1, at(first, 0)),
            reusing(2, at(first, 1)),
            reusing(4, at(first, 2)),
            reusing(3, at(first, 9)),
        ],
    );
    let states: Vec<DatumState> = (0..4).map(|i| log.datum(rerun, i).state).collect();
    assert_eq!(
        states,
        [
            DatumState::Skipped,
            DatumState::Pending,
            DatumState::Pending,
            DatumState::Pending
        ],
        "only a done datum with the same id is reused"
    );
    assert_eq!(log.datum(rerun, 0).reused, at(first, 0));
    assert_eq!(log.state.jobs[&rerun].counts.skipped, 1);

    let other_name = submit(
        &mut log,
        pipeline("j4", "other"),
        vec![reusing(1, at(first, 0))],
    );
    let mut changed = pipeline("j5", "words");
    changed.task.executors.push(ExecutorSpec {
        image: "busybox".into(),
        ..Default::default()
    });
    let other_transform = submit(&mut log, changed, vec![reusing(1, at(first, 0))]);
    assert_eq!(log.datum(other_name, 0).state, DatumState::Pending);
    assert_eq!(log.datum(other_transform, 0).state, DatumState::Pending);

    // Finish everything; a skipped datum lends its own source, never itself.
    while let Some(grant) = log.claim(N1, 1).first().copied() {
        log.report(N1, grant, AttemptOutcome::Succeeded);
    }
    assert_eq!(log.job_state(rerun), JobState::Done);
    let again = submit(
        &mut log,
        pipeline("j6", "words"),
        vec![reusing(1, at(rerun, 0))],
    );
    assert_eq!(log.datum(again, 0).state, DatumState::Skipped);
    assert_eq!(log.datum(again, 0).reused, at(first, 0));
    assert_eq!(log.job_state(again), JobState::Done);
}

/// Found by the simulation (seed 1099): a start reported after its datum was canceled set
/// `started_ms` without marking the row dirty, so a restarted node reloaded the attempt
/// without it and its state differed from the others' at the same index.
#[test]
fn a_start_reported_after_a_cancel_is_persisted() {
    let mut log = Log::new();
    log.submit("a", 1, 0, 1);
    let grants = log.claim(N1, 1);
    log.apply(Command::CancelJob { job_id: "a".into() });
    log.apply(Command::Started {
        datum: grants[0].datum,
        fence: grants[0].fence,
    });
    let datum = &log.state.datums[&grants[0].datum];
    assert_eq!(datum.state, DatumState::Canceling);
    assert!(datum.attempts[0].started_ms.is_some());
}

const GIB: u64 = 1 << 30;

fn cpus(cores: u64, ram_gib: u64) -> Capacity {
    Capacity {
        cpu_millis: cores * 1000,
        ram_bytes: ram_gib * GIB,
    }
}

/// A task asking for `cores` cpus and `ram_gib` of memory.
fn sized(log: &mut Log, id: &str, cores: u32, ram_gib: u64) -> JobSeq {
    let mut spec = spec(id, JobKind::Task, 0, 1);
    spec.task.resources = Resources {
        cpu_cores: cores,
        cpu_millis: u64::from(cores) * 1000,
        ram_bytes: ram_gib * GIB,
        ..Resources::default()
    };
    log.submit_spec(spec, 1, true)
}

#[test]
fn a_datum_begins_only_in_the_free_capacity_its_node_sends() {
    let mut log = Log::new();
    const N3: NodeId = 3;
    log.register(N3, cpus(2, 4));
    let first = sized(&mut log, "a", 2, 1);
    let second = sized(&mut log, "b", 2, 1);
    let grants = log.claim_into(N3, 4, 0, cpus(2, 4));
    assert_eq!(
        keys(&grants),
        [(first, 0)],
        "two 2-cpu tasks do not fit 2 cpus"
    );
    assert!(!log.state.has_claimable(N3, 3, 0, cpus(0, 3)));
    assert!(log.claim_into(N3, 3, 0, cpus(0, 3)).is_empty());
    // Memory counts too: 2 cpus free but 512 MiB is less than the 1 GiB asked.
    let half = Capacity {
        cpu_millis: 2000,
        ram_bytes: GIB / 2,
    };
    assert!(log.claim_into(N3, 1, 0, half).is_empty());
    // Queued grants only need to fit the node's capacity; they begin when it frees.
    let queued = log.claim_into(N3, 1, 1, cpus(0, 3));
    assert_eq!(keys(&queued), [(second, 0)]);
    assert!(queued[0].queued);
    assert_eq!(queued[0].demand, cpus(2, 1));
}

#[test]
fn a_task_asking_nothing_takes_one_core() {
    let mut log = Log::new();
    const N3: NodeId = 3;
    log.register(N3, cpus(2, 4));
    let jobs: Vec<JobSeq> = (0..3)
        .map(|i| log.submit(&format!("j{i}"), 1, 0, 1))
        .collect();
    let grants = log.claim_into(N3, 8, 0, cpus(2, 4));
    assert_eq!(keys(&grants), [(jobs[0], 0), (jobs[1], 0)]);
    assert!(grants.iter().all(|g| g.demand == cpus(1, 0)));
}

#[test]
fn work_no_node_fits_waits_saying_why_and_smaller_work_goes_first() {
    let mut log = Log::new();
    const SMALL: NodeId = 3;
    const BIG: NodeId = 4;
    // Only nodes of 2 cpus claim work.
    for node in [N1, N2] {
        log.apply(Command::DrainNode {
            node_id: node,
            draining: true,
        });
    }
    log.register(SMALL, cpus(2, 8));
    let big = sized(&mut log, "big", 64, 1);
    let small = sized(&mut log, "small", 1, 1);
    let why = log.state.unplaceable(big).expect("no node fits 64 cpus");
    assert!(
        why.contains("64 cpus") && why.contains("n3") && why.contains("2 cpus"),
        "{why}"
    );
    assert_eq!(log.state.unplaceable(small), None);
    // The big task is skipped, not in the way; it is not even queued.
    let grants = log.claim_into(SMALL, 2, 4, cpus(2, 8));
    assert_eq!(keys(&grants), [(small, 0)]);
    assert_eq!(log.datum(big, 0).state, DatumState::Pending);
    // A node big enough joins and takes it.
    log.register(BIG, cpus(64, 256));
    assert_eq!(log.state.unplaceable(big), None);
    assert_eq!(keys(&log.claim_into(BIG, 1, 0, cpus(64, 256))), [(big, 0)]);
}

#[test]
fn stealing_takes_only_queued_claims_that_fit() {
    let mut log = Log::new();
    const N3: NodeId = 3;
    log.register(N3, cpus(2, 8));
    let job = sized(&mut log, "a", 2, 1);
    let queued = log.claim_with_queue(N1, 0, 1);
    assert_eq!(keys(&queued), [(job, 0)]);
    assert!(!log.state.has_stealable(N3, cpus(1, 8)));
    assert!(log.claim_into(N3, 1, 0, cpus(1, 8)).is_empty());
    assert!(log.state.has_stealable(N3, cpus(2, 8)));
    let stolen = log.claim_into(N3, 1, 0, cpus(2, 8));
    assert_eq!(keys(&stolen), [(job, 0)]);
    assert!(!stolen[0].queued);
}

#[test]
fn a_restored_state_drops_every_old_claim_and_node_and_keeps_what_finished() {
    const NEW: NodeId = 9;
    let mut log = Log::new();
    let done = log.submit("done", 1, 0, 1);
    let grant = log.claim(N1, 1)[0];
    complete(&mut log, N1, grant, staged(&[]));
    let job = log.submit("p", 5, 0, 3);
    let grants = log.claim(N1, 2);
    complete(&mut log, N1, grants[0], staged(&["a.txt"]));
    log.apply(Command::Started {
        datum: grants[1].datum,
        fence: grants[1].fence,
    });
    let unbegun = log.claim_with_queue(N2, 1, 1);
    assert_eq!(unbegun.len(), 2, "one to begin, one queued");

    let restored = log.state.restore_as("new".into(), NEW);
    log.check_after_step();
    assert_eq!(
        restored,
        Restored {
            returned: 2,
            lost: 1,
            publishing: 1,
            nodes_dropped: 2,
        }
    );
    assert_eq!(log.state.cluster_id.as_deref(), Some("new"));
    assert!(log.state.nodes.is_empty());
    assert_eq!(log.state.term, 0, "the new log starts its own terms");
    assert_eq!(log.datum(done, 0).state, DatumState::Done);
    let publishing = log.datum(job, 0);
    assert_eq!(publishing.state, DatumState::Publishing);
    let claim = publishing.claim.expect("still claimed");
    assert_eq!((claim.node, claim.fence), (NEW, grants[0].fence));
    let lost = log.datum(job, 1);
    assert_eq!(lost.state, DatumState::Pending);
    assert_eq!(
        lost.attempts.last().and_then(|a| a.outcome),
        Some(AttemptOutcome::Lost)
    );
    for grant in &unbegun {
        let datum = &log.state.datums[&grant.datum];
        assert_eq!(datum.state, DatumState::Pending);
        assert!(datum.attempts.is_empty(), "never begun: spends nothing");
    }
    assert_eq!(log.state.jobs[&job].steward, Some(NEW));
    assert_eq!(log.state.claim_holders().collect::<Vec<_>>(), vec![NEW]);

    // The new cluster's node publishes what was publishing and runs the rest.
    log.register(NEW, PLENTY);
    assert!(matches!(
        log.apply(Command::Published {
            node_id: NEW,
            datums: vec![(grants[0].datum, grants[0].fence)],
        }),
        Outcome::Reported { accepted: 1, .. }
    ));
    let rest = log.claim(NEW, 10);
    assert_eq!(rest.len(), 4);
    for grant in rest {
        complete(&mut log, NEW, grant, staged(&[]));
    }
    assert_eq!(log.job_state(job), JobState::Done);
}

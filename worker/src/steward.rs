//! The steward: for each open pipeline this node stewards (it received the job, or the job
//! passed to it when its steward went silent), lists the input into datums, ends the job at
//! its `job_timeout`, and once every datum ended clears the job's staging area and closes it.
//!
//! Listing resumes wherever the log stands: the steward skips every datum whose id the job
//! has already (and repeats within the listing, which a union may produce), and appends the
//! rest in `AddDatums` chunks numbered from the job's datum count, so a resend after a lost
//! answer, a restart or a takeover adds nothing twice. A listing failure ends the job with
//! the storage error as its message.
//!
//! Unless the job says `reprocess`, a datum that succeeded in an earlier finished job of the
//! same pipeline under the same transform (same id and inputs, so same input versions) and
//! whose outputs are all still published below the egress is added `Skipped`, reusing that
//! work: a re-run costs only the new, changed and failed datums.
//!
//! Woken by applied-state changes and by the nearest `job_timeout`; one task per job at a
//! time.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;
use shoal_raft::command::{Command, Outcome};
use shoal_raft::job::{
    AttemptOutcome, DatumKey, DatumState, JobKind, JobSeq, NewDatum, PipelineSpec,
};
use shoal_raft::state::DATUMS_PER_COMMAND_MAX;
use tokio::task::JoinSet;

use crate::pipeline;
use crate::shared::Shared;

/// Largest `AddDatums` a steward writes (a log entry, far below the network's frame limit).
const ADD_DATUMS_BYTES_MAX: usize = 4 * 1024 * 1024;
/// Pause before a write that found no leader is tried again.
const WRITE_RETRY: Duration = Duration::from_millis(500);
/// Most objects below an egress listed to find what a re-run may reuse.
const REUSE_OBJECTS_MAX: usize = 2_000_000;
/// Tries of clearing a job's staging area before the job is closed anyway (what is left
/// stays for an operator to remove).
const CLEAR_TRIES_MAX: u32 = 5;

/// What a pipeline this node stewards needs now.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
enum Chore {
    Expand,
    TimeOut,
    Close,
}

pub(crate) async fn steward(shared: Arc<Shared>) {
    let mut applied = shared.cluster.view().applied();
    // The chore each running task does, so a job gets one task per chore.
    let mut busy: HashMap<tokio::task::Id, (String, Chore)> = HashMap::new();
    let mut tasks = JoinSet::new();
    loop {
        let (chores, next_deadline_ms) = chores(&shared, now_ms());
        for (job_id, chore) in chores {
            if busy.values().any(|(id, c)| *id == job_id && *c == chore) {
                continue;
            }
            let task_shared = shared.clone();
            let task_job = job_id.clone();
            let handle =
                tasks.spawn(async move { run_chore(&task_shared, &task_job, chore).await });
            busy.insert(handle.id(), (job_id, chore));
        }
        let wait = Duration::from_millis(next_deadline_ms.saturating_sub(now_ms()));
        tokio::select! {
            changed = applied.changed() => if changed.is_err() { return },
            Some(ended) = tasks.join_next_with_id() => {
                let id = match ended {
                    Ok((id, ())) => id,
                    Err(error) => error.id(),
                };
                busy.remove(&id);
            }
            () = tokio::time::sleep(wait) => {}
            () = shared.stop.cancelled() => return,
        }
    }
}

use shoal_raft::runtime::now_ms;

/// The chores of the pipelines this node stewards, and the time of the nearest job timeout
/// still to come (far in the future when there is none).
fn chores(shared: &Shared, now_ms: u64) -> (Vec<(String, Chore)>, u64) {
    let me = shared.cluster.node_id();
    let state = shared.cluster.view().read();
    let mut chores = Vec::new();
    let mut next_deadline_ms = now_ms + 3_600_000;
    let mine: Vec<JobSeq> = state
        .stewardships()
        .filter(|(_, steward)| *steward == me)
        .map(|(seq, _)| seq)
        .collect();
    for seq in mine {
        let Some(job) = state.jobs.get(&seq) else {
            continue;
        };
        let id = job.spec.id.clone();
        let timeout_ms = job
            .spec
            .pipeline
            .as_ref()
            .map_or(0, |p: &PipelineSpec| p.job_timeout_ms);
        // A drained job has nothing left to end (a FailJob would change nothing).
        if timeout_ms > 0 && !job.canceled && !job.drained() {
            let deadline_ms = job.created_ms.saturating_add(timeout_ms);
            if now_ms >= deadline_ms {
                chores.push((id.clone(), Chore::TimeOut));
            } else {
                next_deadline_ms = next_deadline_ms.min(deadline_ms);
            }
        }
        if !job.sealed && !job.canceled {
            chores.push((id, Chore::Expand));
        } else if job.drained() && !job.closed {
            chores.push((id, Chore::Close));
        }
    }
    (chores, next_deadline_ms)
}

async fn run_chore(shared: &Shared, job_id: &str, chore: Chore) {
    let result = match chore {
        Chore::Expand => expand(shared, job_id).await,
        Chore::TimeOut => time_out(shared, job_id).await,
        Chore::Close => close(shared, job_id).await,
    };
    if let Err(error) = result {
        tracing::warn!(job = job_id, ?chore, %error, "pipeline chore failed");
    }
}

/// Writes `command` until the log answers (or the node stops).
async fn write(shared: &Shared, command: Command) -> Result<Outcome, String> {
    loop {
        match shared.cluster.write(command.clone()).await {
            Ok(outcome) => return Ok(outcome),
            Err(error) if shared.stop.is_cancelled() => return Err(error.to_string()),
            Err(error) => {
                tracing::debug!(%error, "pipeline write failed; trying again");
                tokio::time::sleep(WRITE_RETRY).await;
            }
        }
    }
}

async fn fail_job(shared: &Shared, job_id: &str, reason: String) -> Result<(), String> {
    tracing::warn!(job = job_id, %reason, "ending the job");
    let command = Command::FailJob {
        job_id: job_id.to_string(),
        reason,
    };
    write(shared, command).await.map(|_| ())
}

async fn time_out(shared: &Shared, job_id: &str) -> Result<(), String> {
    let timeout_ms = {
        let state = shared.cluster.view().read();
        state
            .job(job_id)
            .and_then(|job| job.spec.pipeline.as_ref())
            .map_or(0, |p| p.job_timeout_ms)
    };
    let limit = humantime::format_duration(Duration::from_millis(timeout_ms));
    fail_job(shared, job_id, format!("job_timeout of {limit} exceeded")).await
}

/// Where the job's datums stand in the log: its spec, the next datum index, the ids it has.
fn listing_start(shared: &Shared, job_id: &str) -> Option<(PipelineSpec, u32, HashSet<u64>)> {
    let state = shared.cluster.view().read();
    let job = state.job(job_id)?;
    if job.sealed || job.canceled || job.steward != Some(shared.cluster.node_id()) {
        return None;
    }
    let ids = state.datums_of(job.seq).map(|d| d.id).collect();
    Some((job.spec.pipeline.clone()?, job.datum_count, ids))
}

async fn expand(shared: &Shared, job_id: &str) -> Result<(), String> {
    // See every datum added before, by this node's previous life or another steward.
    shared
        .cluster
        .linearize()
        .await
        .map_err(|e| e.to_string())?;
    let Some((spec, mut next_index, mut seen)) = listing_start(shared, job_id) else {
        return Ok(());
    };
    tracing::info!(
        job = job_id,
        from = next_index,
        "listing the input into datums"
    );
    let reuse = Reuse::find(shared, job_id, &spec).await;
    let tree = pipeline::input_tree(&spec.input);
    let mut chunks =
        match shoal_storage::expand_input(&shared.resolver, &tree, DATUMS_PER_COMMAND_MAX).await {
            Ok(chunks) => chunks,
            Err(error) => return fail_job(shared, job_id, listing_failed(&error)).await,
        };
    while let Some(chunk) = chunks.next().await {
        if shared.stop.is_cancelled() {
            return Ok(());
        }
        let mut datums: Vec<NewDatum> = match chunk {
            Ok(chunk) => chunk
                .iter()
                .filter(|datum| seen.insert(datum.id()))
                .map(pipeline::new_datum)
                .collect(),
            Err(error) => return fail_job(shared, job_id, listing_failed(&error)).await,
        };
        if let Some(reuse) = &reuse {
            reuse.mark(shared, &mut datums);
        }
        for part in split_by_bytes(datums) {
            let count = part.len() as u32;
            if !add_datums(shared, job_id, next_index, part, false).await? {
                return Ok(());
            }
            next_index += count;
        }
    }
    add_datums(shared, job_id, next_index, Vec::new(), true).await?;
    tracing::info!(job = job_id, datums = next_index, "input listed");
    Ok(())
}

/// What an incremental re-run may reuse: for each datum id, the newest datum of an earlier
/// finished job of the pipeline, under the same transform, that succeeded (or was itself
/// skipped); and the outputs published below the egress now.
struct Reuse {
    earlier: HashMap<u64, DatumKey>,
    egress: String,
    /// Final output URL → size.
    published: HashMap<String, u64>,
}

impl Reuse {
    /// `None` when the job reprocesses everything, no earlier job can lend anything, or the
    /// egress cannot be listed (then every datum runs).
    async fn find(shared: &Shared, job_id: &str, spec: &PipelineSpec) -> Option<Reuse> {
        if spec.reprocess {
            return None;
        }
        let earlier = {
            let state = shared.cluster.view().read();
            let job = state.job(job_id)?;
            let mut earlier = HashMap::new();
            let sources = state
                .jobs
                .range(..job.seq)
                .rev()
                .map(|(_, j)| j)
                .filter(|j| {
                    j.spec.kind == JobKind::Pipeline
                        && j.spec.name == job.spec.name
                        && j.finished()
                        && j.spec.same_transform(&job.spec)
                });
            for source in sources {
                for datum in state.datums_of(source.seq) {
                    if matches!(datum.state, DatumState::Done | DatumState::Skipped) {
                        earlier.entry(datum.id).or_insert(datum.key);
                    }
                }
            }
            earlier
        };
        if earlier.is_empty() {
            return None;
        }
        let published = match shared
            .resolver
            .object_sizes_below(&spec.egress_uri, REUSE_OBJECTS_MAX)
            .await
        {
            Ok(Some(published)) => published,
            Ok(None) => {
                tracing::warn!(
                    job = job_id,
                    "more than {REUSE_OBJECTS_MAX} objects below the egress: every datum runs"
                );
                return None;
            }
            Err(error) => {
                tracing::warn!(job = job_id, %error, "cannot list the egress: every datum runs");
                return None;
            }
        };
        tracing::info!(
            job = job_id,
            earlier = earlier.len(),
            published = published.len(),
            "datums of earlier jobs may be reused"
        );
        Some(Reuse {
            earlier,
            egress: spec.egress_uri.clone(),
            published,
        })
    }

    /// Marks each of `datums` that an earlier datum with the same inputs stands for, its
    /// outputs all still published with their sizes.
    fn mark(&self, shared: &Shared, datums: &mut [NewDatum]) {
        let state = shared.cluster.view().read();
        for datum in datums.iter_mut() {
            let Some(&from) = self.earlier.get(&datum.id) else {
                continue;
            };
            let Some(source) = state.datums.get(&from).filter(|d| d.inputs == datum.inputs) else {
                continue;
            };
            let producer = match source.reused {
                Some(key) => state.datums.get(&key),
                None => Some(source),
            };
            let outputs = producer.and_then(|p| {
                p.attempts
                    .iter()
                    .rev()
                    .find(|a| a.outcome == Some(AttemptOutcome::Succeeded))
                    .and_then(|a| a.report.as_ref())
            });
            let published = outputs.is_some_and(|report| {
                report.outputs.iter().all(|o| {
                    let url = pipeline::final_url(&self.egress, &o.path);
                    self.published.get(&url) == Some(&o.size_bytes)
                })
            });
            if published {
                datum.reuse = Some(from);
            }
        }
    }
}

/// Rough size of a datum in a log entry.
fn datum_bytes(datum: &NewDatum) -> usize {
    16 + datum
        .inputs
        .iter()
        .map(|input| input.path.len() + 8)
        .sum::<usize>()
}

/// `datums` in parts of at most `ADD_DATUMS_BYTES_MAX` (each at least one datum), so no
/// `AddDatums` entry nears the network's frame limit however long the paths are.
fn split_by_bytes(datums: Vec<NewDatum>) -> Vec<Vec<NewDatum>> {
    let mut parts = Vec::new();
    let mut part = Vec::new();
    let mut bytes = 0;
    for datum in datums {
        let size = datum_bytes(&datum);
        if !part.is_empty() && bytes + size > ADD_DATUMS_BYTES_MAX {
            parts.push(std::mem::take(&mut part));
            bytes = 0;
        }
        bytes += size;
        part.push(datum);
    }
    if !part.is_empty() {
        parts.push(part);
    }
    parts
}

fn listing_failed(error: &shoal_storage::StorageError) -> String {
    format!("listing the input failed: {error}")
}

/// Appends datums from `first_index`; false when the job no longer takes them from this node
/// (canceled, failed, or another node stewards it now).
async fn add_datums(
    shared: &Shared,
    job_id: &str,
    first_index: u32,
    datums: Vec<NewDatum>,
    seal: bool,
) -> Result<bool, String> {
    let command = Command::AddDatums {
        job_id: job_id.to_string(),
        node_id: shared.cluster.node_id(),
        first_index,
        datums,
        seal,
    };
    let reason = match write(shared, command).await? {
        Outcome::Changed { .. } => return Ok(true),
        Outcome::Refused { reason } => reason,
        other => return Err(format!("unexpected answer {other:?}")),
    };
    shared
        .cluster
        .linearize()
        .await
        .map_err(|e| e.to_string())?;
    match listing_start(shared, job_id) {
        // Still ours, open and expecting these datums: the refusal is the job's own (its
        // size limit), which no retry mends.
        Some((_, count, _)) if count == first_index => {
            fail_job(shared, job_id, reason).await?;
            Ok(false)
        }
        // Another steward added datums meanwhile: list again from where the log stands.
        Some(_) => Err(format!(
            "the job moved on while this node listed it: {reason}"
        )),
        // Canceled, failed, or another node stewards it now.
        None => Ok(false),
    }
}

/// Clears the job's staging area (what attempts on lost nodes left) and closes the job.
async fn close(shared: &Shared, job_id: &str) -> Result<(), String> {
    let egress = {
        let state = shared.cluster.view().read();
        let Some(spec) = state.job(job_id).and_then(|j| j.spec.pipeline.clone()) else {
            return Ok(());
        };
        spec.egress_uri
    };
    let staging = pipeline::job_staging(&egress, job_id);
    for try_number in 1..=CLEAR_TRIES_MAX {
        match shared.resolver.delete_below(&staging).await {
            Ok(0) => break,
            Ok(count) => {
                tracing::info!(
                    job = job_id,
                    count,
                    "removed objects left in the staging area"
                );
                break;
            }
            Err(error) if try_number == CLEAR_TRIES_MAX => {
                tracing::warn!(job = job_id, %error, %staging, "cannot clear the staging area; closing the job anyway");
            }
            Err(error) => {
                tracing::debug!(job = job_id, %error, "clearing the staging area failed");
                tokio::time::sleep(WRITE_RETRY * try_number).await;
            }
        }
    }
    let command = Command::CloseJob {
        job_id: job_id.to_string(),
        node_id: shared.cluster.node_id(),
    };
    match write(shared, command).await? {
        Outcome::Applied | Outcome::Changed { .. } => Ok(()),
        other => Err(format!("closing the job: {other:?}")),
    }
}

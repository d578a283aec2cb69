//! The replicated model of work: jobs, their datums, claims and attempt results.
//!
//! A *job* is either one TES task (one datum) or a pipeline (many datums sharing one
//! transform). A *datum* is the unit a node claims; a *claim* is identified by its *fence*,
//! the log index of the entry that granted it, and only a report carrying the current fence
//! counts. Like `command`, these types are a versioned replicated format: fields are only
//! ever added. Sizes are in bytes, times in milliseconds since the Unix epoch, no floats.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::types::NodeId;

/// A job's position in submission order: assigned when the job is applied, never reused.
pub type JobSeq = u64;

/// Identifies a datum inside the state: its job's sequence number and its index in the job.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct DatumKey {
    pub job: JobSeq,
    pub index: u32,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub enum JobKind {
    /// A GA4GH TES task: exactly one datum.
    Task,
    /// A pipeline job: one datum per input glob match, all running the same transform.
    Pipeline,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub enum FileKind {
    #[default]
    File,
    Directory,
}

/// A pipeline's input as submitted: atoms (a URI and a Pachyderm glob) combined by cross
/// and union, nestable. A datum's inputs name atoms by their place in depth-first order.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum PipelineInput {
    Atom {
        /// The directory below `/pfs/` the atom's files appear in.
        name: String,
        uri: String,
        glob: String,
    },
    Cross(Vec<PipelineInput>),
    Union(Vec<PipelineInput>),
}

/// One atom of a pipeline's input.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AtomRef<'a> {
    pub name: &'a str,
    pub uri: &'a str,
    pub glob: &'a str,
}

impl PipelineInput {
    /// The atoms in depth-first order: what [`DatumInput::atom`] indexes.
    pub fn atoms(&self) -> Vec<AtomRef<'_>> {
        let mut atoms = Vec::new();
        self.collect_atoms(&mut atoms);
        atoms
    }

    fn collect_atoms<'a>(&'a self, atoms: &mut Vec<AtomRef<'a>>) {
        match self {
            PipelineInput::Atom { name, uri, glob } => atoms.push(AtomRef { name, uri, glob }),
            PipelineInput::Cross(children) | PipelineInput::Union(children) => {
                for child in children {
                    child.collect_atoms(atoms);
                }
            }
        }
    }
}

/// What a pipeline job adds to the work every datum runs.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PipelineSpec {
    pub input: PipelineInput,
    /// Files a datum writes below `/pfs/out/` are published below this URI.
    pub egress_uri: String,
    /// The job is ended (`error`) this long after it was submitted; 0 = no limit.
    pub job_timeout_ms: u64,
    /// Run every datum, even those an earlier job of the pipeline already did.
    pub reprocess: bool,
}

impl JobSpec {
    /// Whether two pipeline jobs run the same transform over the same input into the same
    /// egress: what lets a datum of one stand for the same datum of the other.
    pub fn same_transform(&self, other: &JobSpec) -> bool {
        self.task.executors == other.task.executors
            && self.task.volumes == other.task.volumes
            && self.pipeline.as_ref().map(|p| (&p.egress_uri, &p.input))
                == other.pipeline.as_ref().map(|p| (&p.egress_uri, &p.input))
    }
}

/// What one executor runs (a TES executor, or a pipeline's transform).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ExecutorSpec {
    pub image: String,
    /// argv; the first element is the program.
    pub command: Vec<String>,
    /// Working directory in the container; empty means the image's.
    pub workdir: String,
    /// Absolute container paths; empty means not redirected.
    pub stdin: String,
    pub stdout: String,
    pub stderr: String,
    pub env: BTreeMap<String, String>,
    /// Run the next executor even when this one fails.
    pub ignore_error: bool,
    /// Exit codes besides 0 that count as success (Pachyderm's `accept_return_code`).
    pub accept_exit_codes: Vec<i32>,
}

impl ExecutorSpec {
    /// Whether the executor's exit code means it succeeded.
    pub fn succeeded(&self, exit_code: i32) -> bool {
        exit_code == 0 || self.accept_exit_codes.contains(&exit_code)
    }
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct InputSpec {
    pub name: String,
    pub description: String,
    /// Where to fetch from; ignored when `content` is set.
    pub url: String,
    /// Absolute container path.
    pub path: String,
    pub kind: FileKind,
    /// Literal content (TES), written instead of downloading.
    pub content: Option<String>,
    pub streamable: bool,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct OutputSpec {
    pub name: String,
    pub description: String,
    pub url: String,
    /// Absolute container path; may hold glob characters, then `path_prefix` is set.
    pub path: String,
    pub path_prefix: String,
    pub kind: FileKind,
}

/// Resources an attempt asks for; zero means "not asked".
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Resources {
    pub cpu_cores: u32,
    /// CPU limit in thousandths of a core (pipelines may ask for fractions).
    pub cpu_millis: u64,
    pub ram_bytes: u64,
    pub disk_bytes: u64,
    pub preemptible: bool,
    pub zones: Vec<String>,
    /// Only the keys this cluster honours are kept.
    pub backend_parameters: BTreeMap<String, String>,
}

impl Resources {
    /// What one attempt of this work takes from its node while it runs: the cpu it asks
    /// (a task that asks none counts as one core) and the memory it asks.
    pub fn demand(&self) -> Capacity {
        let cpu_millis = if self.cpu_millis > 0 {
            self.cpu_millis
        } else if self.cpu_cores > 0 {
            u64::from(self.cpu_cores) * 1000
        } else {
            1000
        };
        Capacity {
            cpu_millis,
            ram_bytes: self.ram_bytes,
        }
    }
}

/// Cpu and memory: what a node offers attempts, what is free on it, or what one attempt
/// takes.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Capacity {
    /// Thousandths of a core.
    pub cpu_millis: u64,
    pub ram_bytes: u64,
}

impl Capacity {
    /// Whether `demand` fits in this much.
    pub fn fits(self, demand: Capacity) -> bool {
        demand.cpu_millis <= self.cpu_millis && demand.ram_bytes <= self.ram_bytes
    }

    /// What is left of this after `demand` (nothing below zero).
    pub fn minus(self, demand: Capacity) -> Capacity {
        Capacity {
            cpu_millis: self.cpu_millis.saturating_sub(demand.cpu_millis),
            ram_bytes: self.ram_bytes.saturating_sub(demand.ram_bytes),
        }
    }
}

impl std::fmt::Display for Capacity {
    /// `2 cpus, 1.5 GiB`.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let cpus = self.cpu_millis as f64 / 1000.0;
        let gib = self.ram_bytes as f64 / (1024.0 * 1024.0 * 1024.0);
        let unit = if cpus == 1.0 { "cpu" } else { "cpus" };
        write!(f, "{cpus} {unit}, {gib:.1} GiB of memory")
    }
}

/// The work every datum of a job runs.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct TaskSpec {
    pub executors: Vec<ExecutorSpec>,
    /// Inputs every datum gets (a TES task's inputs); datums add their own.
    pub inputs: Vec<InputSpec>,
    pub outputs: Vec<OutputSpec>,
    /// Absolute container directories created empty and shared by the executors.
    pub volumes: Vec<String>,
    pub resources: Resources,
}

/// Everything a submission fixes about a job.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct JobSpec {
    /// Assigned by the node that received the submission; a resubmission with the same id is
    /// recognised and not applied twice.
    pub id: String,
    pub kind: JobKind,
    pub name: String,
    pub description: String,
    pub tags: BTreeMap<String, String>,
    /// Who submitted it (a token's identity; empty when the cluster has no auth).
    pub owner: String,
    pub task: TaskSpec,
    /// Most datums of this job claimed or running at once, cluster-wide; 0 = no limit.
    pub parallelism: u32,
    /// Attempts a datum gets before it fails; at least 1.
    pub datum_tries: u32,
    /// An attempt running longer than this is failed by its node; 0 = no limit.
    pub datum_timeout_ms: u64,
    /// Opaque record of the original request (e.g. the pipeline spec as JSON), for `describe`.
    pub source: String,
    /// Present for pipeline jobs, absent for tasks.
    pub pipeline: Option<PipelineSpec>,
    /// The client's `Idempotency-Key`: a second submission with the same key (and owner)
    /// answers this job instead of making another.
    pub idempotency: Option<IdempotencyKey>,
}

/// A client's key for a submission it may send more than once.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct IdempotencyKey {
    pub key: String,
    /// A hash of the request, so a key reused for a different request is refused.
    pub request_hash: u64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub enum DatumState {
    /// Waiting to be claimed.
    Pending,
    /// Granted to a node that has not yet reported it running (inputs downloading).
    Claimed,
    /// Its node reported the first executor started.
    Running,
    /// A pipeline datum whose attempt succeeded and whose outputs, staged by that attempt,
    /// are being published to their final names by the claim's holder.
    Publishing,
    /// Canceled while claimed or running: the node has yet to report it stopped.
    Canceling,
    Done,
    Failed,
    Canceled,
    /// Nothing to run: the same datum (same id, same inputs) succeeded in an earlier job of
    /// the pipeline under the same transform, and its outputs are still published
    /// ([`Datum::reused`] names that datum).
    Skipped,
}

impl DatumState {
    pub const ALL: [DatumState; 9] = [
        DatumState::Pending,
        DatumState::Claimed,
        DatumState::Running,
        DatumState::Publishing,
        DatumState::Canceling,
        DatumState::Done,
        DatumState::Failed,
        DatumState::Canceled,
        DatumState::Skipped,
    ];

    pub fn is_terminal(self) -> bool {
        matches!(
            self,
            DatumState::Done | DatumState::Failed | DatumState::Canceled | DatumState::Skipped
        )
    }

    /// Whether the datum is held by a claim.
    pub fn is_claimed(self) -> bool {
        matches!(
            self,
            DatumState::Claimed
                | DatumState::Running
                | DatumState::Publishing
                | DatumState::Canceling
        )
    }
}

/// A node's lease on a datum.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Claim {
    pub node: NodeId,
    /// Log index of the entry that granted the claim.
    pub fence: u64,
    pub since_ms: u64,
    /// Waiting in the node's queue, not begun: another node may steal it.
    pub queued: bool,
}

/// How an attempt ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum AttemptOutcome {
    Succeeded,
    /// An executor failed (non-zero exit, killed).
    ExecutorError,
    /// Shoal failed: inputs, outputs, the engine, the image.
    SystemError,
    /// The node holding the claim went silent longer than the lease.
    LeaseExpired,
    /// The job was canceled.
    Canceled,
    /// The attempt ran longer than the job's `datum_timeout` and was killed; spends a try.
    TimedOut,
    /// The node running it restarted: nothing of its previous life runs on, so the attempt
    /// ended with it. Like a lease expiry, not the datum's fault.
    Lost,
}

impl AttemptOutcome {
    /// Its name in the API and in messages.
    pub fn name(self) -> &'static str {
        match self {
            AttemptOutcome::Succeeded => "succeeded",
            AttemptOutcome::ExecutorError => "executor_error",
            AttemptOutcome::SystemError => "system_error",
            AttemptOutcome::LeaseExpired => "lease_expired",
            AttemptOutcome::Canceled => "canceled",
            AttemptOutcome::TimedOut => "timed_out",
            AttemptOutcome::Lost => "lost",
        }
    }

    /// The attempt ended because its node was lost (went silent, or restarted): it spends
    /// no try, but a datum whose attempts keep taking their node down fails.
    pub fn node_lost(self) -> bool {
        matches!(self, AttemptOutcome::LeaseExpired | AttemptOutcome::Lost)
    }
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ExecutorLog {
    pub exit_code: i32,
    pub start_ms: u64,
    pub end_ms: u64,
    /// The last bytes of stdout / stderr (bounded by the node's tail limit).
    pub stdout_tail: String,
    pub stderr_tail: String,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct OutputFile {
    pub url: String,
    pub path: String,
    pub size_bytes: u64,
}

/// What a node reports when an attempt ends.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AttemptReport {
    pub outcome: AttemptOutcome,
    pub start_ms: u64,
    pub end_ms: u64,
    pub executors: Vec<ExecutorLog>,
    pub outputs: Vec<OutputFile>,
    pub system_logs: Vec<String>,
}

impl AttemptReport {
    /// Why the attempt failed, in one line: an executor's exit code, else the last system log
    /// line (which says what shoal could not do); `None` when it succeeded.
    pub fn error_message(&self) -> Option<String> {
        if self.outcome == AttemptOutcome::Succeeded {
            return None;
        }
        let exit = self.executors.iter().find(|e| e.exit_code != 0);
        match (self.outcome, exit, self.system_logs.last()) {
            (AttemptOutcome::ExecutorError, Some(executor), _) => {
                Some(format!("exit code {}", executor.exit_code))
            }
            (_, _, Some(line)) => Some(line.clone()),
            (_, Some(executor), None) => Some(format!("exit code {}", executor.exit_code)),
            (outcome, None, None) => Some(format!("attempt ended {outcome:?}")),
        }
    }
}

/// One attempt of a datum, as the log records it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Attempt {
    /// 1 for the first attempt.
    pub number: u32,
    pub node: NodeId,
    pub fence: u64,
    pub claimed_ms: u64,
    pub started_ms: Option<u64>,
    pub ended_ms: Option<u64>,
    pub outcome: Option<AttemptOutcome>,
    /// Present once the node reported the attempt's end.
    pub report: Option<AttemptReport>,
}

impl Attempt {
    /// Its lease expired before its node reported: the report its node sends once it is back
    /// is still kept (its logs show how it ended).
    pub fn awaits_late_report(&self) -> bool {
        self.outcome == Some(AttemptOutcome::LeaseExpired) && self.report.is_none()
    }
}

/// One input of a pipeline datum: a match of one atom's glob.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DatumInput {
    /// The atom's place in [`PipelineInput::atoms`].
    pub atom: u16,
    /// The match below the atom's URI, `/`-separated; empty for the whole input (glob `/`).
    /// Downloaded to `/pfs/<atom name>/<path>`.
    pub path: String,
    /// An object, or a prefix with everything below it.
    pub kind: FileKind,
}

/// A datum as a submission adds it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NewDatum {
    /// Stable across jobs: a hash of the inputs' URLs and versions (0 for a TES task).
    pub id: u64,
    pub inputs: Vec<DatumInput>,
    /// The datum of an earlier job whose success this one reuses (an incremental re-run):
    /// it is added `Skipped`. The state checks the claim (same id and inputs, a finished job
    /// of the same pipeline, the datum done or itself skipped) and adds it `Pending` if it
    /// does not hold.
    pub reuse: Option<DatumKey>,
}

impl NewDatum {
    /// The one datum of a TES task.
    pub fn task() -> NewDatum {
        NewDatum {
            id: 0,
            inputs: Vec::new(),
            reuse: None,
        }
    }
}

/// A datum's id as users see it: 16 hex digits.
pub fn format_datum_id(id: u64) -> String {
    format!("{id:016x}")
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Datum {
    pub key: DatumKey,
    /// See [`NewDatum::id`].
    pub id: u64,
    /// The pipeline inputs of this datum; empty for a TES task (its inputs are the job's).
    pub inputs: Vec<DatumInput>,
    pub state: DatumState,
    pub claim: Option<Claim>,
    /// Every attempt so far, oldest first; at most `datum_tries` per retry round.
    pub attempts: Vec<Attempt>,
    /// Attempts made before the last `RetryFailed`; tries are counted from here.
    pub retried_after: u32,
    /// A skipped datum: the datum whose attempt produced the outputs it reuses (never
    /// itself a skipped one).
    pub reused: Option<DatumKey>,
}

impl Datum {
    /// Attempts since the last retry, as (ended by the attempt itself, ended by lease expiry).
    fn since_retry(&self) -> impl Iterator<Item = &Attempt> {
        self.attempts.iter().skip(self.retried_after as usize)
    }

    /// Attempts counted against the job's `datum_tries`: those the datum's own run ended. An
    /// attempt lost with its node (lease expiry, restart) is not the datum's fault and does
    /// not count.
    pub fn tries_used(&self) -> u32 {
        self.since_retry()
            .filter(|a| !a.outcome.is_some_and(AttemptOutcome::node_lost))
            .count() as u32
    }

    /// Attempts lost with their node (lease expiry, restart) since the last retry.
    pub fn node_losses(&self) -> u32 {
        self.since_retry()
            .filter(|a| a.outcome.is_some_and(AttemptOutcome::node_lost))
            .count() as u32
    }

    /// Attempts lost with their node (lease expiry, restart) since the last retry, leaving
    /// out those whose node reported them later (it was cut off or paused, not taken down).
    pub fn lease_expiries(&self) -> u32 {
        self.since_retry()
            .filter(|a| a.outcome.is_some_and(AttemptOutcome::node_lost) && a.report.is_none())
            .count() as u32
    }
}

/// Datums of a job per state.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct DatumCounts {
    pub pending: u32,
    pub claimed: u32,
    pub running: u32,
    pub publishing: u32,
    pub canceling: u32,
    pub done: u32,
    pub failed: u32,
    pub canceled: u32,
    pub skipped: u32,
}

impl DatumCounts {
    /// How many datums are in `state`.
    pub fn get(&self, state: DatumState) -> u32 {
        let mut counts = *self;
        *counts.slot(state)
    }

    pub fn slot(&mut self, state: DatumState) -> &mut u32 {
        match state {
            DatumState::Pending => &mut self.pending,
            DatumState::Claimed => &mut self.claimed,
            DatumState::Running => &mut self.running,
            DatumState::Publishing => &mut self.publishing,
            DatumState::Canceling => &mut self.canceling,
            DatumState::Done => &mut self.done,
            DatumState::Failed => &mut self.failed,
            DatumState::Canceled => &mut self.canceled,
            DatumState::Skipped => &mut self.skipped,
        }
    }

    /// Datums holding a claim: what `parallelism` bounds.
    pub fn active(&self) -> u32 {
        self.claimed + self.running + self.publishing + self.canceling
    }

    pub fn total(&self) -> u32 {
        self.active() + self.pending + self.done + self.failed + self.canceled + self.skipped
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub enum JobState {
    /// Nothing claimed yet.
    Queued,
    /// Some datum claimed, running or finished, not all finished.
    Running,
    /// Canceled, with attempts still being stopped.
    Canceling,
    Done,
    /// Every datum finished and at least one failed all its tries.
    Error,
    Canceled,
}

impl JobState {
    pub const ALL: [JobState; 6] = [
        JobState::Queued,
        JobState::Running,
        JobState::Canceling,
        JobState::Done,
        JobState::Error,
        JobState::Canceled,
    ];
}

/// Why a datum failed, kept on its job for a quick look.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DatumError {
    pub index: u32,
    pub datum_id: u64,
    pub message: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Job {
    pub seq: JobSeq,
    pub spec: JobSpec,
    pub created_ms: u64,
    /// Datums added so far; a sealed job gets no more.
    pub datum_count: u32,
    pub sealed: bool,
    pub canceled: bool,
    pub counts: DatumCounts,
    /// When the job finished.
    pub ended_ms: Option<u64>,
    /// When its first datum was claimed.
    pub started_ms: Option<u64>,
    /// Pipelines: the node that expands the inputs into datums, ends the job at its
    /// `job_timeout`, and clears the staging area once every datum ended. Passes to the
    /// leader when the node goes silent longer than the lease.
    pub steward: Option<NodeId>,
    /// Pipelines: the steward cleared the staging area after the last datum ended.
    pub closed: bool,
    /// Why the cluster ended the job before its datums did (a listing failure, the job
    /// timeout). Such a job is canceled and ends `Error`.
    pub error: Option<String>,
    /// The first datums that failed (at most [`FIRST_ERRORS_MAX`]), since the last retry.
    pub first_errors: Vec<DatumError>,
    /// `RetryFailed` rounds that changed something.
    pub retries: u32,
}

/// Failed datums a job keeps a message of.
pub const FIRST_ERRORS_MAX: usize = 5;

impl Job {
    /// Every datum ended and no more will come (a pipeline may still be closing).
    pub fn drained(&self) -> bool {
        let c = &self.counts;
        self.sealed && c.active() == 0 && c.pending == 0
    }

    /// The job ended: drained and, for a pipeline, its staging area cleared.
    pub fn finished(&self) -> bool {
        self.drained() && (self.spec.kind == JobKind::Task || self.closed)
    }

    /// The job ended for good: finished, and canceled or without a failed datum (failed
    /// datums are what `RetryFailed` sends back to pending). Its datums may still take a late
    /// report: see [`crate::state::State::is_final`].
    pub fn is_final(&self) -> bool {
        self.finished() && (self.canceled || self.counts.failed == 0)
    }

    /// The job's state, derived from its datum counts.
    pub fn state(&self) -> JobState {
        let c = &self.counts;
        let finished = self.finished();
        match (self.canceled, finished) {
            (true, true) if self.error.is_some() => JobState::Error,
            (true, true) => JobState::Canceled,
            (true, false) => JobState::Canceling,
            (false, true) if c.failed > 0 => JobState::Error,
            (false, true) => JobState::Done,
            (false, false) if c.active() + c.done + c.failed == 0 => JobState::Queued,
            (false, false) => JobState::Running,
        }
    }
}

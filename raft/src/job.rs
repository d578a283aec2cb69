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

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
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
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub enum DatumState {
    /// Waiting to be claimed.
    Pending,
    /// Granted to a node that has not yet reported it running (inputs downloading).
    Claimed,
    /// Its node reported the first executor started.
    Running,
    /// Canceled while claimed or running: the node has yet to report it stopped.
    Canceling,
    Done,
    Failed,
    Canceled,
}

impl DatumState {
    pub fn is_terminal(self) -> bool {
        matches!(
            self,
            DatumState::Done | DatumState::Failed | DatumState::Canceled
        )
    }

    /// Whether the datum is held by a claim.
    pub fn is_claimed(self) -> bool {
        matches!(
            self,
            DatumState::Claimed | DatumState::Running | DatumState::Canceling
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

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Datum {
    pub key: DatumKey,
    /// Inputs of this datum on top of the job's (pipelines); empty for a TES task.
    pub inputs: Vec<InputSpec>,
    pub state: DatumState,
    pub claim: Option<Claim>,
    /// Every attempt so far, oldest first; at most `datum_tries` per retry round.
    pub attempts: Vec<Attempt>,
    /// Attempts made before the last `RetryFailed`; tries are counted from here.
    pub retried_after: u32,
}

impl Datum {
    /// Attempts since the last retry, as (ended by the attempt itself, ended by lease expiry).
    fn since_retry(&self) -> impl Iterator<Item = &Attempt> {
        self.attempts.iter().skip(self.retried_after as usize)
    }

    /// Attempts counted against the job's `datum_tries`: those the datum's own run ended. An
    /// attempt lost with its node (lease expiry) is not the datum's fault and does not count.
    pub fn tries_used(&self) -> u32 {
        self.since_retry()
            .filter(|a| a.outcome != Some(AttemptOutcome::LeaseExpired))
            .count() as u32
    }

    /// Attempts lost with their node since the last retry.
    pub fn lease_expiries(&self) -> u32 {
        self.since_retry()
            .filter(|a| a.outcome == Some(AttemptOutcome::LeaseExpired))
            .count() as u32
    }
}

/// Datums of a job per state.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct DatumCounts {
    pub pending: u32,
    pub claimed: u32,
    pub running: u32,
    pub canceling: u32,
    pub done: u32,
    pub failed: u32,
    pub canceled: u32,
}

impl DatumCounts {
    pub fn slot(&mut self, state: DatumState) -> &mut u32 {
        match state {
            DatumState::Pending => &mut self.pending,
            DatumState::Claimed => &mut self.claimed,
            DatumState::Running => &mut self.running,
            DatumState::Canceling => &mut self.canceling,
            DatumState::Done => &mut self.done,
            DatumState::Failed => &mut self.failed,
            DatumState::Canceled => &mut self.canceled,
        }
    }

    /// Datums holding a claim: what `parallelism` bounds.
    pub fn active(&self) -> u32 {
        self.claimed + self.running + self.canceling
    }

    pub fn total(&self) -> u32 {
        self.active() + self.pending + self.done + self.failed + self.canceled
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
    /// When the last datum reached a terminal state.
    pub ended_ms: Option<u64>,
}

impl Job {
    /// The job's state, derived from its datum counts.
    pub fn state(&self) -> JobState {
        let c = &self.counts;
        let finished = self.sealed && c.active() == 0 && c.pending == 0;
        match (self.canceled, finished) {
            (true, true) => JobState::Canceled,
            (true, false) => JobState::Canceling,
            (false, true) if c.failed > 0 => JobState::Error,
            (false, true) => JobState::Done,
            (false, false) if c.active() + c.done + c.failed == 0 => JobState::Queued,
            (false, false) => JobState::Running,
        }
    }
}

//! What can be written to the replicated log, and what applying it answers.
//!
//! These types are a versioned, replicated format (see `codec`): they are stored in every
//! node's log forever, so variants are only ever added, never changed in meaning.

use serde::{Deserialize, Serialize};

use crate::job::{AttemptReport, Capacity, DatumKey, JobSeq, JobSpec, NewDatum};
use crate::types::NodeId;

/// One log entry's payload: a command plus the proposer's clock reading.
///
/// The leader stamps `time_ms` when it appends the entry, so applying the entry never reads
/// a clock and every node computes the same state from the same log.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Proposal {
    /// Milliseconds since the Unix epoch on the leader when the entry was proposed.
    pub time_ms: u64,
    pub command: Command,
}

/// What a node reports about itself when it registers.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NodeInfo {
    pub name: String,
    pub peer_id: String,
    pub http_url: String,
    pub p2p_addrs: Vec<String>,
    /// Concurrent attempts this node runs.
    pub slots: u32,
    /// The executor this node runs attempts with (`docker`, `process`, `noop`).
    pub executor: String,
    /// The cpu and memory its attempts may take together.
    pub capacity: Capacity,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Command {
    /// Names the cluster; only the first one applied counts, later ones are no-ops.
    InitCluster {
        cluster_id: String,
    },
    /// Adds or refreshes a node's record in the registry.
    RegisterNode {
        node_id: NodeId,
        info: NodeInfo,
    },
    /// A node says it is alive and how many attempts it is running.
    Heartbeat {
        node_id: NodeId,
        running: u32,
    },
    /// Stops (`draining: true`) or resumes a node claiming new work.
    DrainNode {
        node_id: NodeId,
        draining: bool,
    },
    /// Forgets a node's record (its Raft membership is changed separately).
    RemoveNode {
        node_id: NodeId,
    },
    /// A new job with its first datums. `seal` closes the job to more datums; a pipeline's
    /// steward sends them with `AddDatums`.
    SubmitJob {
        spec: Box<JobSpec>,
        datums: Vec<NewDatum>,
        seal: bool,
        /// The pipeline's steward (the node that received it); `None` for a task.
        steward: Option<NodeId>,
    },
    /// More datums for an unsealed pipeline, from its steward. Applied only when
    /// `first_index` is the job's datum count; a resend of datums already added changes
    /// nothing, so the command is safe to repeat.
    AddDatums {
        job_id: String,
        node_id: NodeId,
        first_index: u32,
        datums: Vec<NewDatum>,
        seal: bool,
    },
    /// Ends a job early with `reason` (its inputs cannot be listed, its `job_timeout`
    /// passed): what waits is canceled, what runs is stopped, and the job ends `Error`.
    FailJob {
        job_id: String,
        reason: String,
    },
    /// The steward of a drained pipeline cleared its staging area: the job ends.
    CloseJob {
        job_id: String,
        node_id: NodeId,
    },
    /// The node holding these publishing claims copied their staged outputs to their final
    /// names: the datums are done.
    Published {
        node_id: NodeId,
        datums: Vec<(DatumKey, u64)>,
    },
    /// The node holding a publishing claim cannot publish the outputs: the datum fails with
    /// `reason` and its output paths are free again.
    PublishFailed {
        node_id: NodeId,
        datum: DatumKey,
        fence: u64,
        reason: String,
    },
    /// A node asks for up to `max` datums to begin now and up to `queue` more to hold in its
    /// queue (prefetch) for when a slot frees. When nothing is pending, datums to begin now
    /// are stolen from other nodes' queues.
    ClaimBatch {
        node_id: NodeId,
        max: u32,
        queue: u32,
        /// The node's capacity not taken by the attempts it runs, as the node counts them:
        /// datums begun now must fit in it; queued ones must fit the node's capacity.
        free: Capacity,
    },
    /// The node begins a datum it holds in its queue; refused (stale) once it was stolen.
    Begin {
        node_id: NodeId,
        datum: DatumKey,
        fence: u64,
    },
    /// The node gives back claimed datums it has not begun (its queue, or grants that arrived
    /// as it began to stop); they go back to pending without spending an attempt.
    HandBack {
        node_id: NodeId,
        datums: Vec<(DatumKey, u64)>,
    },
    /// A node that restarted ends the claims of its previous life: whatever ran then does
    /// not run on. A claim never begun goes back to pending; any other ends its attempt as
    /// `Lost` and the datum runs again under the next attempt number.
    Abandon {
        node_id: NodeId,
        datums: Vec<(DatumKey, u64)>,
    },
    /// The node holding `fence` started the datum's first executor.
    Started {
        datum: DatumKey,
        fence: u64,
    },
    /// A node reports attempts that ended.
    CompleteBatch {
        node_id: NodeId,
        reports: Vec<Completion>,
    },
    CancelJob {
        job_id: String,
    },
    /// Failed datums of a job go back to pending with a fresh set of tries.
    RetryFailed {
        job_id: String,
    },
    /// Proposed by the leader (`by`): claims of nodes silent longer than `lease_ms` (by the
    /// entry's time) are released. What cannot be undone passes to `by` instead: publishing
    /// claims (under this entry's index as fence) and the stewardship of pipelines.
    ExpireLeases {
        lease_ms: u64,
        by: NodeId,
    },
    /// Commands proposed together in one entry and applied in order, each with its own
    /// outcome (see [`Command::may_share_entry`]). Writes that arrive together are grouped so
    /// the log, the network and the stores handle one entry instead of many.
    Batch(Vec<Command>),
    /// Moves the cluster to format `version` (ARCHITECTURE.md, "How a cluster is upgraded"):
    /// proposed by the leader once every member of the membership `members` (its log id)
    /// reads that format. The state machine refuses it when another membership has been
    /// applied since (a member may have joined unchecked); an older format than the
    /// cluster's changes nothing. Added in format 5.
    SetFormat {
        version: u8,
        members: Option<crate::types::LogId>,
    },
}

impl Command {
    /// Whether applying a [`Command::Batch`] carries this command out. Part of the log's
    /// meaning, so it never changes: claims and lease expiry may not share an entry (a
    /// claim's fence is its entry's index, so one entry must never release a datum and grant
    /// it again), nor may a batch nest.
    pub fn may_share_entry(&self) -> bool {
        !matches!(
            self,
            Command::ClaimBatch { .. }
                | Command::ExpireLeases { .. }
                | Command::Batch(_)
                | Command::SetFormat { .. }
        )
    }

    /// Whether this command may be the last of a [`Command::Batch`] applied in a cluster
    /// running `format`: any command that may share an entry, and from format 6
    /// ([`CLAIM_ENDS_BATCH_FORMAT`]) a `ClaimBatch`. Part of the log's meaning, like
    /// [`Command::may_share_entry`]. A claim last in its entry is as safe as one alone: no
    /// command after it in the entry can release what it grants, and only it grants there.
    pub fn may_end_batch(&self, format: u8) -> bool {
        self.may_share_entry()
            || (format >= CLAIM_ENDS_BATCH_FORMAT && matches!(self, Command::ClaimBatch { .. }))
    }

    /// Whether a node groups this command with others when writing. A policy of the writer,
    /// free to change: beyond [`Command::may_share_entry`], `RetryFailed` goes alone (it is
    /// not idempotent, and a batch is resent whole when its answer is lost), and so does
    /// `AddDatums` (large already).
    pub fn is_batchable(&self) -> bool {
        self.may_share_entry()
            && !matches!(
                self,
                Command::AddDatums { .. } | Command::RetryFailed { .. }
            )
    }
}

/// The format from which a `ClaimBatch` may end a batch ([`Command::may_end_batch`]): a
/// node's claim rides in the entry of its own submission, and the leader's proposals end
/// with the claims queued behind their writes.
pub const CLAIM_ENDS_BATCH_FORMAT: u8 = 6;

/// One ended attempt, as its node reports it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Completion {
    pub datum: DatumKey,
    pub fence: u64,
    pub report: AttemptReport,
}

/// A datum handed to a node by `ClaimBatch`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Grant {
    pub datum: DatumKey,
    pub fence: u64,
    /// 1 for the first attempt.
    pub attempt: u32,
    /// Granted for the node's queue: it must `Begin` the datum before running it.
    pub queued: bool,
    /// The cpu and memory an attempt of the datum takes.
    pub demand: Capacity,
}

/// The answer of applying one entry. Expected refusals are values, not errors.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub enum Outcome {
    /// The command took effect (or was a harmless repeat).
    #[default]
    Applied,
    /// The command named a node the registry does not know.
    UnknownNode {
        node_id: NodeId,
    },
    UnknownJob {
        job_id: String,
    },
    /// The job is in the log (also the answer to a resubmission of the same id or the same
    /// idempotency key).
    JobSubmitted {
        job_id: String,
        seq: JobSeq,
    },
    /// The idempotency key names job `job_id`, submitted with a different request.
    KeyReused {
        job_id: String,
    },
    /// Datums granted by `ClaimBatch` (possibly none).
    Claimed {
        grants: Vec<Grant>,
    },
    /// Reports whose fence was current were recorded; the others were stale and ignored.
    Reported {
        accepted: u32,
        stale: Vec<DatumKey>,
    },
    /// How many datums a cancel, retry or expiry changed.
    Changed {
        datums: u32,
    },
    /// The command breaks a rule (a limit, a sealed job); nothing changed.
    Refused {
        reason: String,
    },
    /// The outcomes of a [`Command::Batch`], in order.
    Batch(Vec<Outcome>),
}

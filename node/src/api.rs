//! The JSON shapes of shoal's own HTTP API (not TES), shared by the server and the CLI.
//!
//! These are the outside contract; the replicated types in `shoal-raft` are a separate,
//! versioned format and are converted here, never exposed as they are.

use serde::{Deserialize, Serialize};
pub use shoal_raft::Role;
use shoal_raft::{ClusterStatus, MemberStatus, format_node_id};

/// `GET /v1/cluster`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ClusterView {
    pub cluster_id: Option<String>,
    /// The node that answered.
    pub node_id: String,
    pub leader: Option<String>,
    pub term: u64,
    /// Index of the last entry this node has applied.
    pub applied_index: Option<u64>,
    /// Index of the last entry in this node's log.
    pub last_log_index: Option<u64>,
    /// Last entry covered by this node's latest snapshot.
    pub snapshot_index: Option<u64>,
    /// Last entry removed from this node's log (it lives on only in snapshots).
    pub purged_index: Option<u64>,
    /// The format the cluster writes (it moves up once every member reads a newer one).
    /// 0 from a node of a build before format 5, which does not say (it writes format 4).
    #[serde(default)]
    pub format_version: u8,
    /// The oldest and newest formats the answering node reads ([0, 0] from a build before
    /// format 5, which reads format 4 only).
    #[serde(default)]
    pub node_formats: [u8; 2],
    /// True when the answer reflects every write acknowledged before the request (the
    /// default); false for `?consistency=stale`, which answers from this node's own state.
    pub consistent: bool,
    pub members: Vec<MemberView>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct MemberView {
    pub node_id: String,
    pub name: String,
    pub peer_id: String,
    pub addresses: Vec<String>,
    pub http_url: String,
    pub role: Role,
    pub leader: bool,
    pub slots: Option<u32>,
    /// Cores its attempts may take together.
    #[serde(default)]
    pub cpus: Option<f64>,
    /// Bytes of memory its attempts may take together.
    #[serde(default)]
    pub memory_bytes: Option<u64>,
    pub running: Option<u32>,
    pub executor: Option<String>,
    /// RFC 3339, leader time of the last heartbeat.
    pub last_heartbeat: Option<String>,
    pub draining: bool,
}

/// `POST /v1/cluster/nodes/{id}:drain` and `:undrain`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct DrainView {
    pub node_id: String,
    pub draining: bool,
}

/// `DELETE /v1/cluster/nodes/{id}`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct RemovedView {
    pub removed: String,
}

/// Every error answer: `{"error": "…"}`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ErrorView {
    pub error: String,
}

/// Formats milliseconds since the Unix epoch as RFC 3339 (UTC, millisecond precision).
pub fn rfc3339_ms(ms: u64) -> String {
    let time = std::time::UNIX_EPOCH + std::time::Duration::from_millis(ms);
    humantime::format_rfc3339_millis(time).to_string()
}

impl ClusterView {
    pub fn from_status(status: ClusterStatus, consistent: bool) -> ClusterView {
        ClusterView {
            cluster_id: status.cluster_id,
            node_id: format_node_id(status.node_id),
            leader: status.leader.map(format_node_id),
            term: status.term,
            applied_index: status.applied_index,
            last_log_index: status.last_log_index,
            snapshot_index: status.snapshot_index,
            purged_index: status.purged_index,
            format_version: status.format_version,
            node_formats: [status.formats_read.0, status.formats_read.1],
            consistent,
            members: status
                .members
                .into_iter()
                .map(MemberView::from_status)
                .collect(),
        }
    }

    /// The member that is leader, if known.
    pub fn leader_member(&self) -> Option<&MemberView> {
        self.members.iter().find(|m| m.leader)
    }
}

impl MemberView {
    fn from_status(member: MemberStatus) -> MemberView {
        MemberView {
            node_id: format_node_id(member.node_id),
            name: member.addr.name,
            peer_id: member.addr.peer_id,
            addresses: member.addr.p2p_addrs,
            http_url: member.addr.http_url,
            role: member.role,
            leader: member.is_leader,
            slots: member.slots,
            cpus: member.capacity.map(|c| c.cpu_millis as f64 / 1000.0),
            memory_bytes: member.capacity.map(|c| c.ram_bytes),
            running: member.running,
            executor: member.executor,
            last_heartbeat: member.last_heartbeat_ms.map(rfc3339_ms),
            draining: member.draining,
        }
    }
}

/// `POST /v1/jobs`: the job is in the log; its datums follow as its steward lists the input.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct JobCreatedView {
    pub id: String,
    pub name: String,
    /// Fields of the spec accepted but not honoured (Kubernetes only), as dotted paths.
    pub ignored: Vec<String>,
}

/// Datums of a job per state.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct DatumCountsView {
    pub pending: u32,
    pub claimed: u32,
    pub running: u32,
    pub publishing: u32,
    pub canceling: u32,
    pub done: u32,
    pub failed: u32,
    pub canceled: u32,
    /// Reused from an earlier job of the pipeline: nothing ran (an incremental re-run).
    #[serde(default)]
    pub skipped: u32,
    pub total: u32,
}

/// One failed datum's message, as a job shows it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DatumErrorView {
    pub datum: String,
    pub index: u32,
    pub message: String,
}

/// `GET /v1/jobs/{id}`, and each job of `GET /v1/jobs` (without `spec`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct JobView {
    pub id: String,
    /// `pipeline`, or `task` for a TES task (a job of one datum).
    #[serde(default)]
    pub kind: String,
    pub name: String,
    /// queued, running, canceling, done, error or canceled.
    pub state: String,
    pub owner: String,
    /// The spec as submitted (JSON); absent in lists.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub spec: Option<serde_json::Value>,
    pub counts: DatumCountsView,
    /// True while the steward still lists the input (more datums may come).
    pub listing: bool,
    pub created: String,
    pub started: Option<String>,
    pub ended: Option<String>,
    /// Datums done per second, from the first claim to the end (or now).
    pub datums_per_second: f64,
    /// Why the cluster ended the job early (listing failure, `job_timeout`).
    pub error: Option<String>,
    pub first_errors: Vec<DatumErrorView>,
    /// The node that lists the input and closes the job.
    pub steward: Option<String>,
    /// Why its pending datums wait when no node claiming work has the cpu and memory one of
    /// them asks for; absent otherwise.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub waiting: Option<String>,
}

/// `GET /v1/jobs`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct JobListView {
    pub jobs: Vec<JobView>,
    pub next_page_token: Option<String>,
}

/// One input of a datum: a match of one atom's glob.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct DatumInputView {
    pub name: String,
    pub url: String,
    /// Where it is in the container.
    pub path: String,
    /// file or directory.
    pub kind: String,
}

/// What one executor of an attempt printed, and how it ended.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ExecutorLogView {
    /// Absent while the executor runs.
    pub exit_code: Option<i32>,
    pub started: Option<String>,
    pub ended: Option<String>,
    pub stdout: String,
    pub stderr: String,
}

/// A published (or publishing) output file.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct OutputView {
    /// Below `/pfs/out`.
    pub path: String,
    pub url: String,
    pub size_bytes: u64,
}

/// One attempt of a datum.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct AttemptView {
    pub attempt: u32,
    pub node: String,
    pub claimed: String,
    pub started: Option<String>,
    pub ended: Option<String>,
    /// succeeded, executor_error, system_error, lease_expired, canceled, timed_out; absent
    /// while it runs.
    pub outcome: Option<String>,
    pub exit_code: Option<i32>,
    pub error: Option<String>,
    pub system_logs: Vec<String>,
    pub executors: Vec<ExecutorLogView>,
    pub outputs: Vec<OutputView>,
}

/// `GET /v1/datums/{id}`, and each datum of `GET /v1/jobs/{id}/datums` (without attempts'
/// logs).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct DatumView {
    pub id: String,
    pub job: String,
    pub index: u32,
    /// pending, claimed, running, publishing, canceling, done, failed or canceled.
    pub state: String,
    pub inputs: Vec<DatumInputView>,
    pub attempts: Vec<AttemptView>,
    /// A skipped datum: the earlier job's datum whose outputs it reuses.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reused_from: Option<DatumRefView>,
}

/// A datum by its job and its index there.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct DatumRefView {
    pub job: String,
    pub index: u32,
}

/// `GET /v1/jobs/{id}/datums`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct DatumListView {
    pub datums: Vec<DatumView>,
    /// More may follow (a page stops early after scanning many datums that did not match).
    pub next_page_token: Option<String>,
}

/// `GET /v1/datums/{id}/logs`: what each attempt's executors printed (a running attempt's
/// output so far).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct DatumLogsView {
    pub id: String,
    pub job: String,
    pub attempts: Vec<AttemptLogsView>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct AttemptLogsView {
    pub attempt: u32,
    pub node: String,
    pub executors: Vec<ExecutorLogView>,
}

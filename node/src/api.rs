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
            running: member.running,
            executor: member.executor,
            last_heartbeat: member.last_heartbeat_ms.map(rfc3339_ms),
            draining: member.draining,
        }
    }
}

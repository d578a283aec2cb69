//! What can be written to the replicated log, and what applying it answers.
//!
//! These types are a versioned, replicated format (see `codec`): they are stored in every
//! node's log forever, so variants are only ever added, never changed in meaning.

use serde::{Deserialize, Serialize};

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
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Command {
    /// Names the cluster; only the first one applied counts, later ones are no-ops.
    InitCluster { cluster_id: String },
    /// Adds or refreshes a node's record in the registry.
    RegisterNode { node_id: NodeId, info: NodeInfo },
    /// A node says it is alive and how many attempts it is running.
    Heartbeat { node_id: NodeId, running: u32 },
    /// Stops (`draining: true`) or resumes a node claiming new work.
    DrainNode { node_id: NodeId, draining: bool },
    /// Forgets a node's record (its Raft membership is changed separately).
    RemoveNode { node_id: NodeId },
}

/// The answer of applying one entry. Expected refusals are values, not errors.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub enum Outcome {
    /// The command took effect (or was a harmless repeat).
    #[default]
    Applied,
    /// The command named a node the registry does not know.
    UnknownNode { node_id: NodeId },
}

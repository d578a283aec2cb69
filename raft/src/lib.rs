//! shoal's replicated log: one Raft group (openraft) whose log and state live in redb and whose
//! nodes talk over libp2p.
//!
//! Layout:
//! - [`backup`]: backup files of the state, and restoring one as a new cluster.
//! - [`codec`]: the one encoding (serde + bincode 2, versioned) for everything stored or sent.
//! - [`types`]: the openraft type configuration, [`NodeId`] and [`NodeAddr`].
//! - [`command`]: [`Proposal`], [`Command`], [`Outcome`] — what the log carries.
//! - [`job`]: the replicated model of work — jobs, datums, claims, attempts.
//! - [`state`]: [`State`] and its pure `apply` (node registry and work queue).
//! - [`log_store`] / [`state_store`]: the redb stores (`raft-log.redb`, `state.redb`) and
//!   file-streamed snapshots.
//! - [`metrics`]: the log's instruments for `/metrics`.
//! - [`network`]: the libp2p swarm task, its wire protocol and the openraft network on top.
//! - [`runtime`]: the seam for tasks, time, randomness and blocking work (simulated in tests).
//! - [`cluster`]: [`Cluster`], the handle the rest of shoal uses — start, bootstrap and join,
//!   writes from any node, linearizable reads, membership changes.

pub mod applied_mark;
pub mod backup;
pub mod cluster;
pub mod codec;
pub mod command;
pub mod job;
pub mod log_store;
pub mod metrics;
pub mod network;
pub mod runtime;
pub mod snapshot_files;
pub mod state;
pub mod state_store;
pub mod types;

pub use cluster::{Cluster, ClusterConfig, ClusterError, ClusterStatus, MemberStatus, Role};
pub use command::{Command, NodeInfo, Outcome, Proposal};
pub use state::{NodeRecord, State, Tally};
pub use state_store::StateView;
pub use types::{NodeAddr, NodeId, TypeConfig, format_node_id, node_id_of, parse_node_id};

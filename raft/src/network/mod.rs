//! Everything that crosses the wire between nodes.
//!
//! - [`protocol`]: the messages and their framing.
//! - [`swarm`]: the libp2p swarm task and [`NetHandle`], the only way to reach it.
//! - [`raft_network`]: openraft's network traits implemented over [`NetHandle`].

pub mod protocol;
pub mod raft_network;
pub mod swarm;

pub use swarm::{Inbound, NetError, NetHandle, NetworkConfig};

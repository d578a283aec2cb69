//! The openraft type configuration and the identity of a node in the cluster.

use std::fmt;

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::command::{Outcome, Proposal};

/// Raft node id: the first 8 bytes of SHA-256 over the node's libp2p PeerId. openraft 0.9
/// needs a `Copy + Default + Ord` id, which a PeerId is not; the PeerId itself travels in
/// [`NodeAddr`], and joins check the id for collisions.
pub type NodeId = u64;

/// Derives the node id of a libp2p peer.
pub fn node_id_of(peer_id: &libp2p::PeerId) -> NodeId {
    let digest = Sha256::digest(peer_id.to_bytes());
    let mut first = [0_u8; 8];
    first.copy_from_slice(&digest[..8]);
    u64::from_be_bytes(first)
}

/// How node ids are shown to people and in the HTTP API: 16 hex digits.
pub fn format_node_id(node_id: NodeId) -> String {
    format!("{node_id:016x}")
}

/// Parses the 16-hex-digit form of [`format_node_id`].
pub fn parse_node_id(text: &str) -> Option<NodeId> {
    if text.len() != 16 {
        return None;
    }
    u64::from_str_radix(text, 16).ok()
}

/// How to reach a node: carried in the Raft membership, so every member knows every other.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct NodeAddr {
    /// The configured `node_name`, for people.
    pub name: String,
    /// libp2p PeerId in its base58 text form.
    pub peer_id: String,
    /// libp2p multiaddrs the node listens on (without the `/p2p/` suffix).
    pub p2p_addrs: Vec<String>,
    /// Base URL of the node's HTTP API, e.g. `http://127.0.0.1:8000`.
    pub http_url: String,
}

impl fmt::Display for NodeAddr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}@{}", self.name, self.peer_id)
    }
}

openraft::declare_raft_types!(
    /// shoal's Raft types: proposals in, outcomes out, snapshots as files on disk.
    pub TypeConfig:
        D = Proposal,
        R = Outcome,
        NodeId = NodeId,
        Node = NodeAddr,
        Entry = openraft::Entry<TypeConfig>,
        SnapshotData = tokio::fs::File,
        AsyncRuntime = crate::runtime::ShoalRuntime,
);

pub type Raft = openraft::Raft<TypeConfig>;
pub type LogId = openraft::LogId<NodeId>;
pub type StoredMembership = openraft::StoredMembership<NodeId, NodeAddr>;
pub type SnapshotMeta = openraft::SnapshotMeta<NodeId, NodeAddr>;
pub type StorageError = openraft::StorageError<NodeId>;
pub type Entry = openraft::Entry<TypeConfig>;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn node_id_text_form_round_trips() {
        let peer = libp2p::identity::Keypair::generate_ed25519()
            .public()
            .to_peer_id();
        let id = node_id_of(&peer);
        assert_eq!(id, node_id_of(&peer), "derivation is deterministic");
        assert_eq!(parse_node_id(&format_node_id(id)), Some(id));
        assert_eq!(parse_node_id("xyz"), None);
    }
}

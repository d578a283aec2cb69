//! Everything that crosses the wire between nodes.
//!
//! - [`protocol`]: the messages and their framing.
//! - [`Transport`]: how a node reaches its peers, behind [`NetHandle`] — the libp2p swarm
//!   ([`swarm`]) in production, an in-memory network in the deterministic simulation.
//! - [`raft_network`]: openraft's network traits implemented over [`NetHandle`].

mod coalesce;
mod link;
pub mod protocol;
pub mod raft_network;
pub mod swarm;

use std::sync::Arc;
use std::time::Duration;

use futures::future::BoxFuture;
use libp2p::{Multiaddr, PeerId};
use tokio::sync::oneshot;

use protocol::{Request, Response};
pub use swarm::NetworkConfig;

#[derive(Debug, thiserror::Error)]
pub enum NetError {
    #[error("cannot build the libp2p transport: {0}")]
    Transport(String),
    #[error("cannot listen on {addr}: {reason}")]
    Listen { addr: Multiaddr, reason: String },
    #[error("request to {peer} failed: {reason}")]
    Request { peer: PeerId, reason: String },
    #[error("the network task has stopped")]
    Stopped,
}

/// A request received from a peer; the answer goes back through `reply` (dropping it fails
/// the peer's request: at once on a stream, by its timeout on a substream).
pub struct Inbound {
    pub peer: PeerId,
    pub request: Request,
    pub reply: oneshot::Sender<Response>,
}

/// How a node reaches its peers: one request/response exchange at a time. Requests that
/// arrive for this node come out of the receiver the transport was started with, as
/// [`Inbound`]s.
pub trait Transport: Send + Sync + 'static {
    /// Sends `request` to `peer` (dialling one of `addrs` if not connected) and waits for
    /// its answer (the caller bounds the wait).
    fn request(
        &self,
        peer: PeerId,
        addrs: Vec<Multiaddr>,
        request: Request,
    ) -> BoxFuture<'static, Result<Response, NetError>>;

    /// Dials addresses whose peer is not known yet (seeds).
    fn dial(&self, addrs: Vec<Multiaddr>) -> BoxFuture<'static, Result<(), NetError>>;

    /// Whether every address (a seed; a DNS name counts when one of its IPs does) is this
    /// node or has a live connection this node dialled.
    fn reached(&self, addrs: Vec<Multiaddr>) -> BoxFuture<'static, Result<bool, NetError>>;

    /// Peers with an open connection right now.
    fn connected_peers(&self) -> BoxFuture<'static, Result<Vec<PeerId>, NetError>>;

    /// The addresses this node listens on (as bound: port 0 resolved).
    fn listen_addrs(&self) -> Vec<Multiaddr>;
}

/// A node's handle on its transport. Cheap to clone.
#[derive(Clone)]
pub struct NetHandle {
    transport: Arc<dyn Transport>,
}

impl NetHandle {
    pub fn new(transport: Arc<dyn Transport>) -> NetHandle {
        NetHandle { transport }
    }

    pub fn listen_addrs(&self) -> Vec<Multiaddr> {
        self.transport.listen_addrs()
    }

    /// Sends `request` to `peer` and waits for the answer at most `timeout`.
    pub async fn request(
        &self,
        peer: PeerId,
        addrs: Vec<Multiaddr>,
        request: Request,
        timeout: Duration,
    ) -> Result<Response, NetError> {
        let answer = self.transport.request(peer, addrs, request);
        match tokio::time::timeout(timeout, answer).await {
            Ok(result) => result,
            Err(_) => Err(NetError::Request {
                peer,
                reason: format!("no answer within {timeout:?}"),
            }),
        }
    }

    pub async fn dial(&self, addrs: Vec<Multiaddr>) -> Result<(), NetError> {
        self.transport.dial(addrs).await
    }

    pub async fn reached(&self, addrs: Vec<Multiaddr>) -> Result<bool, NetError> {
        self.transport.reached(addrs).await
    }

    pub async fn connected_peers(&self) -> Result<Vec<PeerId>, NetError> {
        self.transport.connected_peers().await
    }
}

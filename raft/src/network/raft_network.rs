//! openraft's network, carried by the swarm: each Raft RPC is one request/response exchange.
//!
//! A peer that cannot be reached is reported `Unreachable` so openraft backs off; an
//! AppendEntries whose frame would exceed the limit is reported `PayloadTooLarge` with a
//! smaller entry count, so openraft splits it.

use std::str::FromStr;

use libp2p::{Multiaddr, PeerId};
use openraft::error::{
    InstallSnapshotError, NetworkError, PayloadTooLarge, RPCError, RaftError, RemoteError,
    Unreachable,
};
use openraft::network::{RPCOption, RaftNetwork, RaftNetworkFactory};
use openraft::raft::{
    AppendEntriesRequest, AppendEntriesResponse, InstallSnapshotRequest, InstallSnapshotResponse,
    VoteRequest, VoteResponse,
};

use super::protocol::{self, Request, Response};
use super::{NetError, NetHandle};
use crate::types::{NodeAddr, NodeId, TypeConfig};

type RpcError<E = openraft::error::Infallible> = RPCError<NodeId, NodeAddr, RaftError<NodeId, E>>;

/// Creates one [`PeerClient`] per replication target.
pub struct Network {
    net: NetHandle,
}

impl Network {
    pub fn new(net: NetHandle) -> Network {
        Network { net }
    }
}

/// Where a peer is, parsed from its membership record.
pub fn peer_location(addr: &NodeAddr) -> Option<(PeerId, Vec<Multiaddr>)> {
    let peer = PeerId::from_str(&addr.peer_id).ok()?;
    let addrs = addr
        .p2p_addrs
        .iter()
        .filter_map(|a| Multiaddr::from_str(a).ok())
        .collect();
    Some((peer, addrs))
}

impl RaftNetworkFactory<TypeConfig> for Network {
    type Network = PeerClient;

    async fn new_client(&mut self, target: NodeId, node: &NodeAddr) -> PeerClient {
        PeerClient {
            net: self.net.clone(),
            target,
            node: node.clone(),
            location: peer_location(node),
        }
    }
}

pub struct PeerClient {
    net: NetHandle,
    target: NodeId,
    node: NodeAddr,
    location: Option<(PeerId, Vec<Multiaddr>)>,
}

#[derive(Debug, thiserror::Error)]
#[error("{0}")]
struct Message(String);

impl PeerClient {
    async fn call<E: std::error::Error>(
        &self,
        request: Request,
        option: &RPCOption,
    ) -> Result<Response, RPCError<NodeId, NodeAddr, E>> {
        let Some((peer, addrs)) = self.location.clone() else {
            let error = Message(format!("node {} has no valid peer id", self.node));
            return Err(RPCError::Unreachable(Unreachable::new(&error)));
        };
        self.net
            .request(peer, addrs, request, option.hard_ttl())
            .await
            .map_err(|error| match error {
                NetError::Stopped => RPCError::Network(NetworkError::new(&error)),
                _ => RPCError::Unreachable(Unreachable::new(&error)),
            })
    }

    fn remote<E: std::error::Error>(&self, error: RaftError<NodeId, E>) -> RpcError<E> {
        RPCError::RemoteError(RemoteError::new_with_node(
            self.target,
            self.node.clone(),
            error,
        ))
    }
}

fn unexpected<E: std::error::Error>(response: &Response) -> RpcError<E> {
    let error = Message(format!("unexpected answer {response:?}"));
    RPCError::Network(NetworkError::new(&error))
}

impl RaftNetwork<TypeConfig> for PeerClient {
    async fn append_entries(
        &mut self,
        rpc: AppendEntriesRequest<TypeConfig>,
        option: RPCOption,
    ) -> Result<AppendEntriesResponse<NodeId>, RpcError> {
        let entries = rpc.entries.len() as u64;
        let request = Request::AppendEntries(rpc);
        if entries > 1 && protocol::encode_frame(&request).is_err() {
            return Err(RPCError::PayloadTooLarge(
                PayloadTooLarge::new_entries_hint(entries / 2),
            ));
        }
        match self.call(request, &option).await? {
            Response::AppendEntries(Ok(response)) => Ok(response),
            Response::AppendEntries(Err(error)) => Err(self.remote(error)),
            other => Err(unexpected(&other)),
        }
    }

    async fn install_snapshot(
        &mut self,
        rpc: InstallSnapshotRequest<TypeConfig>,
        option: RPCOption,
    ) -> Result<InstallSnapshotResponse<NodeId>, RpcError<InstallSnapshotError>> {
        match self.call(Request::InstallSnapshot(rpc), &option).await? {
            Response::InstallSnapshot(Ok(response)) => Ok(response),
            Response::InstallSnapshot(Err(error)) => Err(self.remote(error)),
            other => Err(unexpected(&other)),
        }
    }

    async fn vote(
        &mut self,
        rpc: VoteRequest<NodeId>,
        option: RPCOption,
    ) -> Result<VoteResponse<NodeId>, RpcError> {
        match self.call(Request::Vote(rpc), &option).await? {
            Response::Vote(Ok(response)) => Ok(response),
            Response::Vote(Err(error)) => Err(self.remote(error)),
            other => Err(unexpected(&other)),
        }
    }
}

//! Forming a cluster, or joining one, when this node's data dir holds none.
//!
//! Every node runs the same loop with the same config: dial the seeds, ask every connected
//! peer who it is (`Hello`). If some peer already belongs to a cluster with a leader, ask that
//! leader to add this node as a learner. Otherwise, once `bootstrap_expect` fresh nodes (this
//! one included) are in sight, the one with the lowest node id initializes the cluster with
//! them as voters (at most `voters_max`) — but only once every seed has been reached, so a node
//! never forms a cluster beside one that a seed it could not see already belongs to. The
//! others become members when its first heartbeat reaches them. `bootstrap_expect` should be
//! the number of nodes that start together. A node that restarts with a cluster on disk skips
//! all of this.

use std::collections::BTreeMap;
use std::time::Duration;

use futures::future::join_all;

use super::{Cluster, Op, OpResult};
use crate::network::protocol::{Hello, Request, Response};
use crate::network::raft_network::peer_location;
use crate::types::{NodeAddr, NodeId, format_node_id};

/// How often the loop looks around while no cluster has formed.
const ROUND: Duration = Duration::from_millis(300);
/// How long a peer may take to answer `Hello`.
const HELLO_TIMEOUT: Duration = Duration::from_secs(2);

pub(super) async fn run(cluster: Cluster) {
    if is_initialized(&cluster).await {
        tracing::info!("rejoining the cluster held in the data dir");
        return;
    }
    let config = cluster.config().clone();
    if config.seeds.is_empty() && config.bootstrap_expect <= 1 {
        let members = BTreeMap::from([(cluster.node_id(), cluster.addr().clone())]);
        initialize(&cluster, members).await;
        return;
    }
    let mut round = tokio::time::interval(ROUND);
    loop {
        round.tick().await;
        if is_initialized(&cluster).await {
            return;
        }
        let _ = cluster.net().dial(config.seeds.clone()).await;
        let hellos = hello_everyone(&cluster).await;
        if let Some(leader) = hellos
            .iter()
            .filter(|h| h.initialized)
            .find_map(|h| h.leader.clone())
        {
            if join(&cluster, &leader).await {
                return;
            }
            continue;
        }
        let mut fresh: BTreeMap<NodeId, NodeAddr> = hellos
            .into_iter()
            .filter(|h| !h.initialized)
            .map(|h| (h.node_id, h.addr))
            .collect();
        fresh.insert(cluster.node_id(), cluster.addr().clone());
        let lowest = fresh.keys().next().copied();
        // Every seed must have answered first: a node that initialized on a partial view could
        // found a second cluster beside one its unseen seeds already form.
        let reached = cluster
            .net()
            .reached(config.seeds.clone())
            .await
            .unwrap_or(false);
        if reached && fresh.len() >= config.bootstrap_expect && lowest == Some(cluster.node_id()) {
            let voters = fresh.into_iter().take(config.voters_max.max(1)).collect();
            initialize(&cluster, voters).await;
            return;
        }
        tracing::debug!(
            seen = fresh.len(),
            expect = config.bootstrap_expect,
            "waiting for peers"
        );
    }
}

async fn is_initialized(cluster: &Cluster) -> bool {
    cluster.raft().is_initialized().await.unwrap_or(true)
}

async fn hello_everyone(cluster: &Cluster) -> Vec<Hello> {
    let peers = cluster.net().connected_peers().await.unwrap_or_default();
    let asks = peers.into_iter().map(|peer| async move {
        match cluster
            .net()
            .request(peer, Vec::new(), Request::Hello, HELLO_TIMEOUT)
            .await
        {
            Ok(Response::Hello(hello)) => Some(hello),
            _ => None,
        }
    });
    join_all(asks).await.into_iter().flatten().collect()
}

async fn initialize(cluster: &Cluster, voters: BTreeMap<NodeId, NodeAddr>) {
    let names: Vec<String> = voters.values().map(|a| a.name.clone()).collect();
    match cluster.raft().initialize(voters).await {
        Ok(()) => tracing::info!(voters = ?names, "initialized a new cluster"),
        Err(error) => tracing::warn!(%error, "cluster initialization refused"),
    }
}

/// Asks the leader to add this node as a learner; true once it has.
async fn join(cluster: &Cluster, leader: &(NodeId, NodeAddr)) -> bool {
    let Some((peer, addrs)) = peer_location(&leader.1) else {
        return false;
    };
    let op = Op::Join {
        node_id: cluster.node_id(),
        addr: cluster.addr().clone(),
    };
    tracing::info!(leader = %format_node_id(leader.0), "asking to join the cluster");
    let answer = cluster
        .net()
        .request(peer, addrs, Request::Forward(op), Duration::from_secs(60))
        .await;
    match answer {
        Ok(Response::Forward(Ok(OpResult::Joined))) => {
            tracing::info!("joined the cluster as a learner");
            true
        }
        Ok(other) => {
            tracing::warn!(answer = ?other, "join not accepted yet");
            false
        }
        Err(error) => {
            tracing::warn!(%error, "join request failed");
            false
        }
    }
}

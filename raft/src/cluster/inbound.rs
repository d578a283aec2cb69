//! Answers what peers ask: Raft RPCs go to openraft, forwarded operations and read-index
//! requests are carried out if this node is the leader (never forwarded again, so a request
//! cannot loop), `Hello` describes this node.

use tokio::sync::mpsc;

use super::{Cluster, OpError};
use crate::network::Inbound;
use crate::network::protocol::{Hello, Request, Response};

pub(super) async fn serve(cluster: Cluster, mut inbound: mpsc::Receiver<Inbound>) {
    while let Some(Inbound {
        peer,
        request,
        reply,
    }) = inbound.recv().await
    {
        let cluster = cluster.clone();
        crate::runtime::spawn(async move {
            tracing::trace!(%peer, "answering a peer");
            let _ = reply.send(answer(&cluster, request).await);
        });
    }
}

async fn answer(cluster: &Cluster, request: Request) -> Response {
    let raft = cluster.raft();
    match request {
        Request::AppendEntries(rpc) => Response::AppendEntries(raft.append_entries(rpc).await),
        Request::Vote(rpc) => Response::Vote(raft.vote(rpc).await),
        Request::InstallSnapshot(rpc) => {
            Response::InstallSnapshot(raft.install_snapshot(rpc).await)
        }
        Request::Hello => Response::Hello(Hello {
            node_id: cluster.node_id(),
            addr: cluster.addr().clone(),
            initialized: raft.is_initialized().await.unwrap_or(false),
            leader: cluster.leader(),
        }),
        Request::Forward(op) => Response::Forward(cluster.execute_local(op).await),
        Request::ReadIndex if cluster.is_leader() => {
            Response::ReadIndex(cluster.read_index_local().await)
        }
        Request::ReadIndex => Response::ReadIndex(Err(OpError::NotLeader {
            leader: cluster.leader(),
        })),
        Request::LiveLogs { datum, fence } => {
            Response::LiveLogs(cluster.local_live_logs(datum, fence))
        }
        Request::Probe => Response::Probe {
            hears_leader: cluster.hears_leader().await,
            last_log: cluster.last_log_id().await,
        },
        Request::Formats => Response::Formats {
            min: crate::codec::FORMAT_VERSION_MIN,
            max: crate::codec::max_version(),
        },
    }
}

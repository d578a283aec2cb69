//! The simulated network: shoal's [`Transport`] between in-process nodes, with seeded latency
//! (so messages overtake each other), and faults the schedule turns on and off — links cut
//! (both ways or one way), extra delay, loss and duplication of messages.
//!
//! A request crosses the link to its target, waits in the target's inbound queue (a paused
//! node does not take it), and its answer crosses the link back. A message on a cut link, or
//! lost, never arrives: the sender waits out its own deadline, as over a real partition. A
//! request to a node that is down fails at once, like a connection refused.

use std::collections::BTreeSet;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures::future::BoxFuture;
use libp2p::{Multiaddr, PeerId};
use shoal_raft::network::protocol::{Request, Response};
use shoal_raft::network::{Inbound, NetError, Transport};
use shoal_raft::runtime::random_u64;
use tokio::sync::{mpsc, oneshot};

use super::trace::Trace;

/// Requests a node's inbound queue holds (as the real swarm's).
const INBOUND_QUEUE_MAX: usize = 1024;

/// What the network does to messages right now.
#[derive(Debug, Clone, PartialEq)]
pub struct Conditions {
    /// One-way latency, uniformly within these bounds.
    pub latency_ms: (u64, u64),
    /// Chance (per mille) that a message is lost.
    pub loss_per_mille: u64,
    /// Chance (per mille) that a request is delivered twice.
    pub duplicate_per_mille: u64,
}

impl Default for Conditions {
    fn default() -> Self {
        Conditions {
            latency_ms: (1, 5),
            loss_per_mille: 0,
            duplicate_per_mille: 0,
        }
    }
}

struct Endpoint {
    peer: PeerId,
    addr: Multiaddr,
    /// `None` while the node is down.
    inbound: Option<mpsc::Sender<Inbound>>,
}

struct NetState {
    endpoints: Vec<Endpoint>,
    /// Directed links (from, to) that drop everything.
    cut: BTreeSet<(usize, usize)>,
    conditions: Conditions,
}

/// The network of one simulation. Cheap to clone.
#[derive(Clone)]
pub struct SimNet {
    state: Arc<Mutex<NetState>>,
    trace: Trace,
}

impl SimNet {
    /// A network for nodes `0..peers.len()`, node `i` being `peers[i]`.
    pub fn new(peers: &[PeerId], trace: Trace) -> SimNet {
        let endpoints = peers
            .iter()
            .enumerate()
            .map(|(index, peer)| Endpoint {
                peer: *peer,
                addr: address(index),
                inbound: None,
            })
            .collect();
        let state = NetState {
            endpoints,
            cut: BTreeSet::new(),
            conditions: Conditions::default(),
        };
        SimNet {
            state: Arc::new(Mutex::new(state)),
            trace,
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, NetState> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Brings node `index` up: its transport, and the queue its requests arrive in.
    pub fn attach(&self, index: usize) -> (SimTransport, mpsc::Receiver<Inbound>) {
        let (sender, receiver) = mpsc::channel(INBOUND_QUEUE_MAX);
        self.lock().endpoints[index].inbound = Some(sender);
        let transport = SimTransport {
            net: self.clone(),
            me: index,
        };
        (transport, receiver)
    }

    /// Node `index` went down: requests to it are refused.
    pub fn detach(&self, index: usize) {
        self.lock().endpoints[index].inbound = None;
    }

    /// Cuts the link from `from` to `to` (one way).
    pub fn cut(&self, from: usize, to: usize) {
        self.lock().cut.insert((from, to));
    }

    /// Cuts every link between `side` and the other nodes, both ways.
    pub fn isolate(&self, side: &[usize]) {
        let count = self.lock().endpoints.len();
        for &a in side {
            for b in (0..count).filter(|b| !side.contains(b)) {
                self.cut(a, b);
                self.cut(b, a);
            }
        }
    }

    pub fn set_conditions(&self, conditions: Conditions) {
        self.lock().conditions = conditions;
    }

    /// Every link restored, every condition back to normal.
    pub fn heal(&self) {
        let mut state = self.lock();
        state.cut.clear();
        state.conditions = Conditions::default();
    }

    /// Whether the network is whole and calm.
    pub fn is_healed(&self) -> bool {
        let state = self.lock();
        state.cut.is_empty() && state.conditions == Conditions::default()
    }

    /// Whether node `index` can reach every other node and hear back from it.
    pub fn connected(&self, index: usize) -> bool {
        let state = self.lock();
        state.conditions == Conditions::default()
            && !state.cut.iter().any(|(a, b)| *a == index || *b == index)
    }

    fn index_of(&self, peer: &PeerId) -> Option<usize> {
        self.lock().endpoints.iter().position(|e| e.peer == *peer)
    }

    /// One message's fate on the link `from → to`: its delay, or `None` when it is lost.
    fn crossing(&self, from: usize, to: usize) -> Option<Duration> {
        let state = self.lock();
        if state.cut.contains(&(from, to)) {
            return None;
        }
        let conditions = &state.conditions;
        if random_u64() % 1000 < conditions.loss_per_mille {
            return None;
        }
        let (low, high) = conditions.latency_ms;
        Some(Duration::from_millis(low + random_u64() % (high - low + 1)))
    }

    /// Carries `request` from `from` to `to` and its answer back.
    async fn exchange(
        &self,
        from: usize,
        to: usize,
        request: Request,
    ) -> Result<Response, NetError> {
        let peer = self.lock().endpoints[to].peer;
        let Some(delay) = self.crossing(from, to) else {
            return std::future::pending().await;
        };
        tokio::time::sleep(delay).await;
        let (inbound, duplicate) = {
            let state = self.lock();
            let duplicate = random_u64() % 1000 < state.conditions.duplicate_per_mille;
            (state.endpoints[to].inbound.clone(), duplicate)
        };
        let Some(inbound) = inbound else {
            return Err(NetError::Request {
                peer,
                reason: "connection refused".to_string(),
            });
        };
        self.trace.message(from, to, kind(&request));
        let from_peer = self.lock().endpoints[from].peer;
        if duplicate && let Some(copy) = copy_of(&request) {
            // The copy's answer goes nowhere; the original's is the one that counts.
            let (reply, _) = oneshot::channel();
            let _ = inbound.try_send(Inbound {
                peer: from_peer,
                request: copy,
                reply,
            });
        }
        let (reply, answer) = oneshot::channel();
        let queued = inbound.try_send(Inbound {
            peer: from_peer,
            request,
            reply,
        });
        if queued.is_err() {
            return std::future::pending().await;
        }
        let Ok(response) = answer.await else {
            // The target went down (or dropped the request) before answering.
            return Err(NetError::Request {
                peer,
                reason: "connection reset".to_string(),
            });
        };
        let Some(delay) = self.crossing(to, from) else {
            return std::future::pending().await;
        };
        tokio::time::sleep(delay).await;
        Ok(response)
    }
}

/// The address node `index` listens on.
pub fn address(index: usize) -> Multiaddr {
    format!("/memory/{}", index + 1)
        .parse()
        .expect("a memory multiaddr parses")
}

fn kind(request: &Request) -> &'static str {
    match request {
        Request::AppendEntries(_) => "append",
        Request::Vote(_) => "vote",
        Request::InstallSnapshot(_) => "snapshot",
        Request::Hello => "hello",
        Request::Forward(_) => "forward",
        Request::ReadIndex => "read-index",
        Request::LiveLogs { .. } => "live-logs",
        Request::Probe => "probe",
        Request::Formats => "formats",
    }
}

/// A second copy of a request, through its wire encoding (as a duplicated packet would be).
fn copy_of(request: &Request) -> Option<Request> {
    let bytes = shoal_raft::codec::encode(request).ok()?;
    shoal_raft::codec::decode(&bytes).ok()
}

/// A node's end of the simulated network.
pub struct SimTransport {
    net: SimNet,
    me: usize,
}

impl Transport for SimTransport {
    fn request(
        &self,
        peer: PeerId,
        _addrs: Vec<Multiaddr>,
        request: Request,
    ) -> BoxFuture<'static, Result<Response, NetError>> {
        let net = self.net.clone();
        let me = self.me;
        Box::pin(async move {
            let Some(to) = net.index_of(&peer) else {
                return Err(NetError::Request {
                    peer,
                    reason: "unknown peer".to_string(),
                });
            };
            net.exchange(me, to, request).await
        })
    }

    fn dial(&self, _addrs: Vec<Multiaddr>) -> BoxFuture<'static, Result<(), NetError>> {
        Box::pin(async { Ok(()) })
    }

    fn reached(&self, addrs: Vec<Multiaddr>) -> BoxFuture<'static, Result<bool, NetError>> {
        let net = self.net.clone();
        let me = self.me;
        Box::pin(async move {
            let state = net.lock();
            let reached = addrs.iter().all(|addr| {
                state.endpoints.iter().enumerate().any(|(i, e)| {
                    e.addr == *addr
                        && (i == me
                            || (e.inbound.is_some()
                                && !state.cut.contains(&(me, i))
                                && !state.cut.contains(&(i, me))))
                })
            });
            Ok(reached)
        })
    }

    fn connected_peers(&self) -> BoxFuture<'static, Result<Vec<PeerId>, NetError>> {
        let net = self.net.clone();
        let me = self.me;
        Box::pin(async move {
            let state = net.lock();
            let peers = state
                .endpoints
                .iter()
                .enumerate()
                .filter(|(i, e)| {
                    *i != me
                        && e.inbound.is_some()
                        && !state.cut.contains(&(me, *i))
                        && !state.cut.contains(&(*i, me))
                })
                .map(|(_, e)| e.peer)
                .collect();
            Ok(peers)
        })
    }

    fn listen_addrs(&self) -> Vec<Multiaddr> {
        vec![address(self.me)]
    }
}

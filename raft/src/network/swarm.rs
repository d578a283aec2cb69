//! The libp2p swarm and the one task that owns it.
//!
//! Transport: TCP, then the pre-shared-key handshake (pnet) when a cluster key is set, then
//! noise and yamux. Behaviours: `stream` for what shoal says between nodes, on one
//! long-lived stream per peer and direction (see `link`); `request_response` with
//! [`FrameCodec`] for the same, a substream per request, whenever that stream is not open,
//! for big requests and with peers of older builds; `identify` to learn peers' listen
//! addresses; `ping` to find dead connections. Other code talks to the task through
//! [`NetHandle`]: a bounded command channel with oneshot replies. Inbound requests come out
//! of the receiver returned by [`start`], each with the channel to answer on.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures::StreamExt;
use libp2p::core::muxing::StreamMuxerBox;
use libp2p::core::transport::Boxed;
use libp2p::core::transport::upgrade::Version;
use libp2p::identity::Keypair;
use libp2p::pnet::{PnetConfig, PreSharedKey};
use libp2p::request_response::{self, OutboundRequestId, ProtocolSupport, ResponseChannel};
use libp2p::swarm::dial_opts::{DialOpts, PeerCondition};
use libp2p::swarm::{ConnectionId, NetworkBehaviour, SwarmEvent};
use libp2p::{Multiaddr, PeerId, StreamProtocol, Swarm, Transport, identify, noise, ping, tcp};
use tokio::sync::{mpsc, oneshot};

use futures::future::BoxFuture;

use super::coalesce::CoalescedYamux;
use super::link::{self, Closings, Links, Route};
use super::protocol::{FrameCodec, PROTOCOL, Request, Response};
use super::{Inbound, NetError, NetHandle};

/// Commands queued for the swarm task before callers wait.
const COMMAND_QUEUE_MAX: usize = 1024;
/// Inbound requests queued for the dispatcher; beyond this a peer's request is dropped (on a
/// stream the peer hears so at once, on a substream it times out).
const INBOUND_QUEUE_MAX: usize = 1024;
/// How long a request on a substream may wait for its answer, and an inbound request on a
/// stream for this node's; callers use less.
pub(super) const REQUEST_TIMEOUT: Duration = Duration::from_secs(60);
/// Requests one peer may have open on one connection at once. Raft RPCs and forwarded
/// operations share this; a node keeps at most `FORWARDS_IN_FLIGHT_MAX` (in `cluster`)
/// forwarded operations open, far below it, so Raft RPCs always find room.
pub const STREAMS_PER_CONNECTION_MAX: usize = 1024;
/// Connections are kept this long without traffic (Raft heartbeats keep them busy anyway).
const IDLE_CONNECTION_TIMEOUT: Duration = Duration::from_secs(120);
/// How often each connection is pinged, and how long a ping may take once its stream is open.
const PING_INTERVAL: Duration = Duration::from_millis(500);
const PING_TIMEOUT: Duration = Duration::from_millis(1500);
/// A connection on which nothing (no ping, no message) arrived for this long is closed, so
/// requests dial afresh instead of waiting on a connection a partition left dead (see
/// `SwarmTask::close_dead_connections`), checked every `DEAD_CHECK_PERIOD`.
const DEAD_AFTER: Duration = Duration::from_millis(1500);
const DEAD_CHECK_PERIOD: Duration = Duration::from_millis(250);
/// A check this much later than its period means this node, not the network, stalled.
const STALL: Duration = Duration::from_millis(500);
/// Longest a new connection may take to be set up (dial, handshakes).
const CONNECTION_SETUP_TIMEOUT: Duration = Duration::from_secs(1);

#[derive(NetworkBehaviour)]
struct Behaviour {
    stream: libp2p_stream::Behaviour,
    rpc: request_response::Behaviour<FrameCodec>,
    identify: identify::Behaviour,
    /// Finds connections a partition left dead (the peer's packets dropped, nothing closed).
    ping: ping::Behaviour,
}

pub(super) enum NetCommand {
    /// A request the old way: a request/response substream of its own.
    Request {
        peer: PeerId,
        addrs: Vec<Multiaddr>,
        request: Request,
        reply: oneshot::Sender<Result<Response, NetError>>,
    },
    Respond {
        channel: ResponseChannel<Response>,
        response: Response,
    },
    Dial {
        addrs: Vec<Multiaddr>,
    },
    /// Dial `peer` at `addrs` (and the addresses known for it) unless connected or dialling
    /// already; `done` once the dial is under way.
    Connect {
        peer: PeerId,
        addrs: Vec<Multiaddr>,
        done: oneshot::Sender<()>,
    },
    ConnectedPeers {
        reply: oneshot::Sender<Vec<PeerId>>,
    },
    /// Whether every one of `addrs` is this node or has a live connection we dialled.
    Reached {
        addrs: Vec<Multiaddr>,
        reply: oneshot::Sender<bool>,
    },
}

/// The production [`Transport`]: talks to the swarm task.
#[derive(Clone)]
struct SwarmTransport {
    commands: mpsc::Sender<NetCommand>,
    links: Links,
    listen_addrs: Vec<Multiaddr>,
    resolver: Resolver,
}

pub struct NetworkConfig {
    pub keypair: Keypair,
    pub listen: Multiaddr,
    /// Pre-shared key: peers without the same key cannot complete a connection.
    pub cluster_key: Option<PreSharedKey>,
}

/// TCP, then the pre-shared-key handshake when there is a key, then noise and yamux (its
/// flushes coalesced, see `coalesce`) — each connection's setup bounded by
/// `CONNECTION_SETUP_TIMEOUT`, so a dial into a partition fails soon and the next request
/// dials afresh once the network is back.
fn transport(
    key: &Keypair,
    cluster_key: Option<PreSharedKey>,
) -> Result<Boxed<(PeerId, StreamMuxerBox)>, Box<dyn std::error::Error + Send + Sync>> {
    let noise = noise::Config::new(key)?;
    let tcp = tcp::tokio::Transport::new(tcp::Config::default().nodelay(true));
    let transport = match cluster_key {
        None => tcp
            .upgrade(Version::V1)
            .authenticate(noise)
            .multiplex(CoalescedYamux::default())
            .timeout(CONNECTION_SETUP_TIMEOUT)
            .boxed(),
        Some(psk) => tcp
            .and_then(move |socket, _| PnetConfig::new(psk).handshake(socket))
            .upgrade(Version::V1)
            .authenticate(noise)
            .multiplex(CoalescedYamux::default())
            .timeout(CONNECTION_SETUP_TIMEOUT)
            .boxed(),
    };
    Ok(transport)
}

fn build_swarm(config: &NetworkConfig) -> Result<Swarm<Behaviour>, NetError> {
    let transport_error = |e: &dyn std::fmt::Display| NetError::Transport(e.to_string());
    let make_behaviour = |key: &Keypair| {
        let protocols = [(StreamProtocol::new(PROTOCOL), ProtocolSupport::Full)];
        let rpc_config = request_response::Config::default()
            .with_request_timeout(REQUEST_TIMEOUT)
            .with_max_concurrent_streams(STREAMS_PER_CONNECTION_MAX);
        Behaviour {
            stream: libp2p_stream::Behaviour::new(),
            rpc: request_response::Behaviour::with_codec(FrameCodec, protocols, rpc_config),
            identify: identify::Behaviour::new(identify::Config::new(
                "/shoal/id/1".to_string(),
                key.public(),
            )),
            ping: ping::Behaviour::new(
                ping::Config::new()
                    .with_interval(PING_INTERVAL)
                    .with_timeout(PING_TIMEOUT),
            ),
        }
    };
    let swarm_config =
        |c: libp2p::swarm::Config| c.with_idle_connection_timeout(IDLE_CONNECTION_TIMEOUT);
    let cluster_key = config.cluster_key;
    let swarm = libp2p::SwarmBuilder::with_existing_identity(config.keypair.clone())
        .with_tokio()
        .with_other_transport(|key| transport(key, cluster_key))
        .map_err(|e| transport_error(&e))?
        .with_behaviour(make_behaviour)
        .map_err(|e| transport_error(&e))?
        .with_swarm_config(swarm_config)
        .build();
    Ok(swarm)
}

/// Starts listening and spawns the swarm task. Returns once the listen address is bound.
pub async fn start(
    config: NetworkConfig,
) -> Result<(NetHandle, mpsc::Receiver<Inbound>), NetError> {
    let mut swarm = build_swarm(&config)?;
    let listen_error = |reason: String| NetError::Listen {
        addr: config.listen.clone(),
        reason,
    };
    swarm
        .listen_on(config.listen.clone())
        .map_err(|e| listen_error(e.to_string()))?;
    let mut listen_addrs = Vec::new();
    // Wait for the bind so the addresses we announce are real (port 0 resolved).
    while listen_addrs.is_empty() {
        match swarm.select_next_some().await {
            SwarmEvent::NewListenAddr { address, .. } => listen_addrs.push(address),
            SwarmEvent::ListenerError { error, .. } => return Err(listen_error(error.to_string())),
            SwarmEvent::ListenerClosed {
                reason: Err(error), ..
            } => {
                return Err(listen_error(error.to_string()));
            }
            _ => {}
        }
    }
    let (commands_tx, commands_rx) = mpsc::channel(COMMAND_QUEUE_MAX);
    let (inbound_tx, inbound_rx) = mpsc::channel(INBOUND_QUEUE_MAX);
    let mut control = swarm.behaviour().stream.new_control();
    let closings = Closings::default();
    link::accept(&mut control, inbound_tx.clone(), closings.clone());
    let links = Links::new(control, commands_tx.clone(), closings.clone());
    let task = SwarmTask {
        swarm,
        commands: commands_rx,
        answers: commands_tx.downgrade(),
        inbound: inbound_tx,
        pending: HashMap::new(),
        heard: HashMap::new(),
        closings,
        own_addrs: listen_addrs.iter().cloned().collect(),
        dialled: HashMap::new(),
        dialing: HashMap::new(),
        last_check: Instant::now(),
    };
    crate::runtime::spawn(task.run());
    let transport = SwarmTransport {
        commands: commands_tx,
        links,
        listen_addrs,
        resolver: Resolver::default(),
    };
    Ok((NetHandle::new(Arc::new(transport)), inbound_rx))
}

impl SwarmTransport {
    /// Sends `command` to the swarm task and waits for its reply.
    fn ask<T: Send + 'static>(
        &self,
        command: impl FnOnce(oneshot::Sender<T>) -> NetCommand,
    ) -> BoxFuture<'static, Result<T, NetError>> {
        let (reply, answer) = oneshot::channel();
        let commands = self.commands.clone();
        let command = command(reply);
        Box::pin(async move {
            commands
                .send(command)
                .await
                .map_err(|_| NetError::Stopped)?;
            answer.await.map_err(|_| NetError::Stopped)
        })
    }
}

/// How long a name's addresses are used before it is looked up again.
const RESOLVE_TTL: Duration = Duration::from_secs(5);
/// The longest a lookup may take; a slower resolver gets the addresses found last time.
const RESOLVE_TIMEOUT: Duration = Duration::from_secs(1);
/// Most names kept (a node dials its seeds and members: a few dozen).
const RESOLVED_MAX: usize = 1024;

/// Looks up the names in peers' addresses, keeping each answer for [`RESOLVE_TTL`], so
/// heartbeats to a peer known by name do not ask the system resolver each time.
#[derive(Clone, Default)]
struct Resolver {
    cache: Arc<std::sync::Mutex<HashMap<Multiaddr, Resolved>>>,
}

/// When a name was looked up, and what it gave.
type Resolved = (Instant, Vec<Multiaddr>);

impl Resolver {
    /// Turns `/dns/HOST/…`, `/dns4/HOST/…` and `/dns6/HOST/…` into one address per IP the
    /// system resolver gives for HOST (IPv4 only for `dns4`, IPv6 only for `dns6`), keeping
    /// the rest; other addresses pass unchanged. A name that does not resolve yet (a peer not
    /// started, a Kubernetes pod without its DNS record) gives nothing this time: callers
    /// retry.
    async fn resolve(&self, addrs: Vec<Multiaddr>) -> Vec<Multiaddr> {
        let mut resolved = Vec::with_capacity(addrs.len());
        for addr in addrs {
            if !is_name(&addr) {
                resolved.push(addr);
                continue;
            }
            let cached = {
                let mut cache = self.cache.lock().unwrap_or_else(|p| p.into_inner());
                let entry = cache.get_mut(&addr);
                let stale = entry
                    .as_ref()
                    .is_some_and(|(at, _)| at.elapsed() >= RESOLVE_TTL);
                entry.map(|(at, found)| {
                    if stale {
                        // Marked fresh now, so one refresh runs per name at a time.
                        *at = Instant::now();
                    }
                    (stale, found.clone())
                })
            };
            match cached {
                // Known: answer at once (a request must not wait for the resolver), and look
                // the name up again in the background when the answer is old.
                Some((stale, found)) => {
                    if stale {
                        let this = self.clone();
                        let addr = addr.clone();
                        crate::runtime::spawn(async move {
                            this.look_up(addr).await;
                        });
                    }
                    resolved.extend(found);
                }
                None => resolved.extend(self.look_up(addr).await),
            }
        }
        resolved
    }

    /// Looks `addr` up (at most [`RESOLVE_TIMEOUT`]) and keeps what it finds.
    async fn look_up(&self, addr: Multiaddr) -> Vec<Multiaddr> {
        match tokio::time::timeout(RESOLVE_TIMEOUT, lookup(&addr)).await {
            Ok(Some(found)) => {
                let mut cache = self.cache.lock().unwrap_or_else(|p| p.into_inner());
                if cache.len() >= RESOLVED_MAX {
                    cache.clear();
                }
                cache.insert(addr, (Instant::now(), found.clone()));
                found
            }
            _ => Vec::new(),
        }
    }
}

fn is_name(addr: &Multiaddr) -> bool {
    use libp2p::multiaddr::Protocol;
    matches!(
        addr.iter().next(),
        Some(Protocol::Dns(_) | Protocol::Dns4(_) | Protocol::Dns6(_))
    )
}

/// One address resolved: itself when it names no host, `None` when the name does not
/// resolve now.
async fn lookup(addr: &Multiaddr) -> Option<Vec<Multiaddr>> {
    use libp2p::multiaddr::Protocol;
    let mut parts = addr.iter();
    let (host, want_v4, want_v6) = match parts.next() {
        Some(Protocol::Dns(host)) => (host, true, true),
        Some(Protocol::Dns4(host)) => (host, true, false),
        Some(Protocol::Dns6(host)) => (host, false, true),
        _ => return Some(vec![addr.clone()]),
    };
    let rest: Vec<Protocol<'_>> = parts.collect();
    let port = match rest.first() {
        Some(Protocol::Tcp(port)) => *port,
        _ => 0,
    };
    let ips = match tokio::net::lookup_host((host.as_ref(), port)).await {
        Ok(found) => found.map(|socket| socket.ip()).collect::<Vec<_>>(),
        Err(error) => {
            tracing::debug!(%addr, %error, "cannot resolve a peer's name yet");
            return None;
        }
    };
    let mut resolved = Vec::new();
    let mut seen = HashSet::new();
    for ip in ips {
        let first = match ip {
            std::net::IpAddr::V4(v4) if want_v4 => Protocol::Ip4(v4),
            std::net::IpAddr::V6(v6) if want_v6 => Protocol::Ip6(v6),
            _ => continue,
        };
        let mut one = Multiaddr::empty().with(first);
        for part in &rest {
            one.push(part.clone());
        }
        if seen.insert(one.clone()) {
            resolved.push(one);
        }
    }
    Some(resolved)
}

impl super::Transport for SwarmTransport {
    fn request(
        &self,
        peer: PeerId,
        addrs: Vec<Multiaddr>,
        request: Request,
    ) -> BoxFuture<'static, Result<Response, NetError>> {
        let commands = self.commands.clone();
        let links = self.links.clone();
        let resolver = self.resolver.clone();
        Box::pin(async move {
            let addrs = resolver.resolve(addrs).await;
            let request = match links.send(peer, &addrs, request)? {
                Route::Stream(answer) => {
                    return answer.await.unwrap_or_else(|_| {
                        Err(NetError::Request {
                            peer,
                            reason: "the stream to the peer closed".to_string(),
                        })
                    });
                }
                Route::Legacy(request) => request,
            };
            let (reply, answer) = oneshot::channel();
            commands
                .send(NetCommand::Request {
                    peer,
                    addrs,
                    request,
                    reply,
                })
                .await
                .map_err(|_| NetError::Stopped)?;
            answer.await.map_err(|_| NetError::Stopped)?
        })
    }

    fn dial(&self, addrs: Vec<Multiaddr>) -> BoxFuture<'static, Result<(), NetError>> {
        let commands = self.commands.clone();
        let resolver = self.resolver.clone();
        Box::pin(async move {
            let addrs = resolver.resolve(addrs).await;
            commands
                .send(NetCommand::Dial { addrs })
                .await
                .map_err(|_| NetError::Stopped)
        })
    }

    fn reached(&self, addrs: Vec<Multiaddr>) -> BoxFuture<'static, Result<bool, NetError>> {
        let this = self.clone();
        Box::pin(async move {
            // Seed by seed: one that does not resolve yet has not been reached.
            for seed in addrs {
                let addrs = this.resolver.resolve(vec![seed]).await;
                if addrs.is_empty()
                    || !this
                        .ask(|reply| NetCommand::Reached { addrs, reply })
                        .await?
                {
                    return Ok(false);
                }
            }
            Ok(true)
        })
    }

    fn connected_peers(&self) -> BoxFuture<'static, Result<Vec<PeerId>, NetError>> {
        self.ask(|reply| NetCommand::ConnectedPeers { reply })
    }

    fn listen_addrs(&self) -> Vec<Multiaddr> {
        self.listen_addrs.clone()
    }
}

struct SwarmTask {
    swarm: Swarm<Behaviour>,
    commands: mpsc::Receiver<NetCommand>,
    /// Where answers to inbound requests come back as `Respond` commands (weak, so the task
    /// stops when every handle is gone).
    answers: mpsc::WeakSender<NetCommand>,
    inbound: mpsc::Sender<Inbound>,
    pending: HashMap<OutboundRequestId, oneshot::Sender<Result<Response, NetError>>>,
    /// When something last arrived on each open connection (a ping's answer, a message).
    heard: HashMap<ConnectionId, (PeerId, Instant)>,
    /// Told of every connection this node closes or loses, to end the streams on it.
    closings: Closings,
    /// When `close_dead_connections` last ran.
    last_check: Instant,
    own_addrs: HashSet<Multiaddr>,
    /// Addresses we dialled that have a live connection, so seeds are not dialled twice.
    dialled: HashMap<Multiaddr, PeerId>,
    /// Dials under way, so an unanswering seed holds one socket, not one per round.
    dialing: HashMap<ConnectionId, Multiaddr>,
}

impl SwarmTask {
    async fn run(mut self) {
        let mut check = tokio::time::interval(DEAD_CHECK_PERIOD);
        check.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                command = self.commands.recv() => match command {
                    Some(command) => self.on_command(command),
                    None => break,
                },
                event = self.swarm.select_next_some() => self.on_event(event),
                _ = check.tick() => self.close_dead_connections(),
            }
        }
        tracing::debug!("network task stopped");
    }

    /// Closes connections on which nothing arrived for `DEAD_AFTER`, although each is pinged
    /// every `PING_INTERVAL`: a partition left them open and silent. (libp2p's ping gives up
    /// on such a connection only after its stream negotiation times out, in 10 s.) Their
    /// requests fail at once, and the next request to the peer goes over a live connection
    /// or dials afresh — which succeeds as soon as the network heals, instead of waiting out
    /// TCP's retransmission backoff on the old connection.
    ///
    /// A check that comes late means this process itself was not running (paused, or
    /// starved of CPU): what arrived meanwhile may still wait in the swarm's queues, so
    /// silence proves nothing and every connection gets a fresh start instead.
    fn close_dead_connections(&mut self) {
        let now = Instant::now();
        let since_last = now.duration_since(std::mem::replace(&mut self.last_check, now));
        if since_last > DEAD_CHECK_PERIOD + STALL {
            tracing::debug!(?since_last, "this node stalled: no connection judged dead");
            self.heard.values_mut().for_each(|(_, heard)| *heard = now);
            return;
        }
        let dead: Vec<(ConnectionId, PeerId)> = self
            .heard
            .iter()
            .filter(|(_, (_, heard))| now.duration_since(*heard) > DEAD_AFTER)
            .map(|(connection, (peer, _))| (*connection, *peer))
            .collect();
        for (connection, peer) in dead {
            tracing::debug!(?connection, %peer, "closing a connection that went silent");
            self.close(connection, peer);
        }
    }

    /// Closes `connection` and ends the streams to `peer` at once: yamux leaves the streams
    /// of a connection closed from this side neither readable nor failed.
    fn close(&mut self, connection: ConnectionId, peer: PeerId) {
        self.heard.remove(&connection);
        self.closings.closed(peer);
        self.swarm.close_connection(connection);
    }

    fn heard_on(&mut self, connection: ConnectionId) {
        if let Some((_, heard)) = self.heard.get_mut(&connection) {
            *heard = Instant::now();
        }
    }

    fn on_command(&mut self, command: NetCommand) {
        match command {
            NetCommand::Request {
                peer,
                addrs,
                request,
                reply,
            } => {
                for addr in addrs {
                    self.swarm.add_peer_address(peer, addr);
                }
                let id = self.swarm.behaviour_mut().rpc.send_request(&peer, request);
                self.pending.insert(id, reply);
            }
            NetCommand::Connect { peer, addrs, done } => {
                for addr in &addrs {
                    self.swarm.add_peer_address(peer, addr.clone());
                }
                if !self.swarm.is_connected(&peer) {
                    let options = DialOpts::peer_id(peer)
                        .condition(PeerCondition::DisconnectedAndNotDialing)
                        .addresses(addrs)
                        .extend_addresses_through_behaviour()
                        .build();
                    if let Err(error) = self.swarm.dial(options) {
                        tracing::debug!(%peer, %error, "dial failed");
                    }
                }
                let _ = done.send(());
            }
            NetCommand::Respond { channel, response } => {
                if self
                    .swarm
                    .behaviour_mut()
                    .rpc
                    .send_response(channel, response)
                    .is_err()
                {
                    tracing::debug!("peer went away before its answer was sent");
                }
            }
            NetCommand::Dial { addrs } => {
                for addr in addrs {
                    let busy = self.dialing.values().any(|a| *a == addr);
                    if self.own_addrs.contains(&addr) || self.dialled.contains_key(&addr) || busy {
                        continue;
                    }
                    let options = DialOpts::unknown_peer_id().address(addr.clone()).build();
                    let connection = options.connection_id();
                    match self.swarm.dial(options) {
                        Ok(()) => {
                            self.dialing.insert(connection, addr);
                        }
                        Err(error) => tracing::debug!(%addr, %error, "dial failed"),
                    }
                }
            }
            NetCommand::Reached { addrs, reply } => {
                let reached = addrs
                    .iter()
                    .all(|a| self.own_addrs.contains(a) || self.dialled.contains_key(a));
                let _ = reply.send(reached);
            }
            NetCommand::ConnectedPeers { reply } => {
                let _ = reply.send(self.swarm.connected_peers().copied().collect());
            }
        }
    }

    fn on_event(&mut self, event: SwarmEvent<BehaviourEvent>) {
        match event {
            SwarmEvent::Behaviour(BehaviourEvent::Rpc(event)) => self.on_rpc_event(event),
            SwarmEvent::Behaviour(BehaviourEvent::Identify(identify::Event::Received {
                peer_id,
                info,
                ..
            })) => {
                for addr in info.listen_addrs {
                    self.swarm.add_peer_address(peer_id, addr);
                }
            }
            SwarmEvent::Behaviour(BehaviourEvent::Ping(ping::Event {
                connection,
                result: Ok(_),
                ..
            })) => self.heard_on(connection),
            SwarmEvent::Behaviour(BehaviourEvent::Ping(ping::Event {
                peer,
                connection,
                result: Err(error),
            })) => {
                tracing::debug!(%peer, %error, "closing a connection that stopped answering");
                self.close(connection, peer);
            }
            SwarmEvent::ConnectionEstablished {
                peer_id,
                endpoint,
                connection_id,
                ..
            } => {
                tracing::debug!(%peer_id, ?connection_id, "connected");
                self.heard.insert(connection_id, (peer_id, Instant::now()));
                self.dialing.remove(&connection_id);
                if endpoint.is_dialer() {
                    self.dialled
                        .insert(endpoint.get_remote_address().clone(), peer_id);
                }
            }
            SwarmEvent::ConnectionClosed {
                peer_id,
                connection_id,
                num_established,
                ..
            } => {
                self.heard.remove(&connection_id);
                self.dialing.remove(&connection_id);
                self.closings.closed(peer_id);
                if num_established == 0 {
                    self.dialled.retain(|_, peer| *peer != peer_id);
                }
            }
            SwarmEvent::OutgoingConnectionError {
                peer_id,
                error,
                connection_id,
            } => {
                self.dialing.remove(&connection_id);
                tracing::debug!(?peer_id, %error, "outgoing connection failed");
            }
            SwarmEvent::IncomingConnectionError {
                error,
                send_back_addr,
                ..
            } => {
                tracing::debug!(%send_back_addr, %error, "incoming connection failed");
            }
            // Listening on 0.0.0.0 gives one address per interface, the first at start and
            // the rest here: all of them are this node, so a seed naming one is reached and
            // never dialled.
            SwarmEvent::NewListenAddr { address, .. } => {
                self.own_addrs.insert(address);
            }
            _ => {}
        }
    }

    fn on_message(&mut self, peer: PeerId, message: request_response::Message<Request, Response>) {
        match message {
            request_response::Message::Request {
                request, channel, ..
            } => {
                let (reply, answer) = oneshot::channel();
                let inbound = Inbound {
                    peer,
                    request,
                    reply,
                };
                if self.inbound.try_send(inbound).is_err() {
                    tracing::warn!(%peer, "inbound queue full; dropping a request");
                    return;
                }
                let Some(answers) = self.answers.upgrade() else {
                    return;
                };
                crate::runtime::spawn(async move {
                    if let Ok(response) = answer.await {
                        let _ = answers
                            .send(NetCommand::Respond { channel, response })
                            .await;
                    }
                });
            }
            request_response::Message::Response {
                request_id,
                response,
            } => {
                if let Some(reply) = self.pending.remove(&request_id) {
                    let _ = reply.send(Ok(response));
                }
            }
        }
    }

    fn on_rpc_event(&mut self, event: request_response::Event<Request, Response>) {
        match event {
            request_response::Event::Message {
                peer,
                message,
                connection_id,
            } => {
                self.heard_on(connection_id);
                self.on_message(peer, message);
            }
            request_response::Event::OutboundFailure {
                peer,
                request_id,
                error,
                ..
            } => {
                if let Some(reply) = self.pending.remove(&request_id) {
                    let _ = reply.send(Err(NetError::Request {
                        peer,
                        reason: error.to_string(),
                    }));
                }
            }
            request_response::Event::InboundFailure { peer, error, .. } => {
                tracing::debug!(%peer, %error, "inbound request failed");
            }
            request_response::Event::ResponseSent { .. } => {}
        }
    }
}

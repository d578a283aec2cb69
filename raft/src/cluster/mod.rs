//! [`Cluster`]: the handle through which a node uses the replicated log.
//!
//! Starting a cluster opens the redb stores, starts the libp2p swarm and openraft, and spawns
//! the node's background work: bootstrap or join, registration and heartbeats, learner
//! promotion on the leader, and the dispatcher that answers peers. Any node accepts an
//! [`Op`]: the leader carries it out, every other node forwards it to the leader and relays
//! the answer. Reads are made linearizable by asking the leader for a read index and waiting
//! until this node has applied it.
//!
//! - `identity`: `node.key` and the cluster key file.
//! - `bootstrap`: forming a new cluster from `bootstrap_expect` nodes, or joining one.
//! - `inbound`: answering peers' requests.
//! - `upkeep`: registration, heartbeats, learner promotion.

mod batcher;
mod bootstrap;
mod identity;
mod inbound;
mod proposer;
mod upkeep;

use std::collections::BTreeSet;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use tokio::time::Instant;

use libp2p::Multiaddr;
use openraft::error::{ClientWriteError, RaftError};
use openraft::{ChangeMembers, ServerState};
use serde::{Deserialize, Serialize};
use tokio::sync::{mpsc, watch};
use tokio::task::JoinHandle;

pub use batcher::Follow;
pub use identity::{load_or_create_keypair, read_cluster_key};

use crate::command::{Command, NodeInfo, Outcome, Proposal};
use crate::log_store::LogStore;
use crate::network::protocol::{Request, Response};
use crate::network::raft_network::{Network, peer_location};
use crate::network::{NetError, NetHandle, NetworkConfig};
use crate::state_store::{StateAdmin, StateStore, StateView};
use crate::types::{NodeAddr, NodeId, Raft, node_id_of};

/// How long an operation keeps retrying while there is no leader or the leader moves; every
/// attempt (local or forwarded) is bounded by what is left of it.
const OP_DEADLINE: Duration = Duration::from_secs(10);
/// How long one try of an operation waits for the leader it went to (see
/// [`Cluster::execute`]); far above a commit's time, far below the lease.
const TRY_DEADLINE: Duration = Duration::from_secs(2);
/// Forwarded operations and read-index requests this node keeps open at once. Far below the
/// network's streams per connection, so forwarded operations waiting on the leader can never
/// take every stream and starve the Raft RPCs they are waiting for.
const FORWARDS_IN_FLIGHT_MAX: usize = 256;
const _: () =
    assert!(FORWARDS_IN_FLIGHT_MAX * 2 <= crate::network::swarm::STREAMS_PER_CONNECTION_MAX);
/// Largest snapshot chunk sent in one message.
const SNAPSHOT_CHUNK_BYTES: u64 = 1024 * 1024;
/// Most entries in one AppendEntries message (openraft splits larger ones further on
/// `PayloadTooLarge`).
const APPEND_ENTRIES_MAX: u64 = 256;

/// Largest command one write carries, far below the network's frame limit, so every entry
/// fits an AppendEntries message however it was made.
pub const COMMAND_BYTES_MAX: usize = 8 * 1024 * 1024;
const _: () = assert!(COMMAND_BYTES_MAX * 2 <= crate::network::protocol::FRAME_BYTES_MAX);

/// How long a node waits for another to tell which formats it reads.
const FORMATS_DEADLINE: Duration = Duration::from_secs(2);

/// How long a node waits for another to tell what a running attempt has printed.
const LIVE_LOGS_DEADLINE: Duration = Duration::from_secs(1);

/// Tells the executor logs so far of an attempt this node runs (datum, fence), set by the
/// worker; `None` when it runs no such attempt.
pub type LiveLogsSource =
    Arc<dyn Fn(crate::job::DatumKey, u64) -> Option<Vec<crate::job::ExecutorLog>> + Send + Sync>;

/// The claim a node writes right behind a submission it makes (set by the worker); `None`
/// when it has no slot free or claims already.
pub type ClaimSource = Arc<dyn Fn() -> Option<Follow> + Send + Sync>;

/// Everything a node needs to take part in the cluster. Built from the node's config.
#[derive(Debug, Clone)]
pub struct ClusterConfig {
    /// Holds `node.key`, `raft-log.redb`, `state.redb` and `snapshots/`.
    pub data_dir: PathBuf,
    pub node_name: String,
    /// Base URL of this node's HTTP API, announced to peers.
    pub http_url: String,
    pub p2p_listen: Multiaddr,
    /// Addresses other nodes dial for this one (`/dns4/…` names welcome); empty means the
    /// addresses it listens on.
    pub p2p_advertise: Vec<Multiaddr>,
    /// Other nodes to contact when this node has no cluster yet.
    pub seeds: Vec<Multiaddr>,
    /// Nodes (this one included) that must be seen before a new cluster is formed.
    pub bootstrap_expect: usize,
    /// File holding the pre-shared key; `None` means an open network.
    pub cluster_key_file: Option<PathBuf>,
    pub heartbeat_ms: u64,
    pub election_timeout_ms: (u64, u64),
    /// Learners are promoted to voters while there are fewer voters than this.
    pub voters_max: usize,
    /// Entries between snapshots; the log behind a snapshot is purged.
    pub snapshot_every_entries: u64,
    /// Entries kept behind a snapshot, so a briefly absent follower catches up from the log.
    pub log_kept_entries: u64,
    /// A node silent this long loses its claims; it heartbeats every quarter of it.
    pub lease_ms: u64,
    pub slots: u32,
    pub executor: String,
    /// The cpu and memory this node's attempts may take together.
    pub capacity: crate::job::Capacity,
}

/// A cluster operation that only the leader can carry out.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub enum Op {
    Write(Command),
    Join { node_id: NodeId, addr: NodeAddr },
    Remove { node_id: NodeId },
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub enum OpResult {
    Written(Outcome),
    /// The node is a learner; the leader promotes it while voters are below `voters_max`.
    Joined,
    Removed,
}

/// Why an operation did not take place, as sent between nodes.
#[derive(Debug, Clone, Serialize, Deserialize, thiserror::Error)]
pub enum OpError {
    #[error("this node is not the leader")]
    NotLeader { leader: Option<(NodeId, NodeAddr)> },
    /// The leader could not be reached or did not answer in time; worth a retry.
    #[error("leader unreachable: {0}")]
    Unreachable(String),
    /// Another membership change is under way; worth a retry.
    #[error("busy: {0}")]
    Busy(String),
    #[error("{0}")]
    Refused(String),
    #[error("{0}")]
    Failed(String),
}

#[derive(Debug, thiserror::Error)]
pub enum ClusterError {
    /// Nothing was carried out: no leader could be asked.
    #[error("no leader could be reached within {0:?}; nothing was applied")]
    NoLeader(Duration),
    /// A leader was asked and never answered: the write may or may not have been applied.
    #[error("no answer from the leader within {0:?}; the write may have been applied")]
    Unsure(Duration),
    #[error("this node did not catch up with the leader within {0:?}")]
    Timeout(Duration),
    #[error("refused: {0}")]
    Refused(String),
    #[error("failed: {0}")]
    Failed(String),
    #[error("cannot use identity {path}: {reason}")]
    Identity { path: PathBuf, reason: String },
    #[error("cannot use cluster key {path}: {reason}")]
    ClusterKey { path: PathBuf, reason: String },
    #[error("cannot open {path}: {reason}")]
    Storage { path: PathBuf, reason: String },
    #[error(transparent)]
    Network(#[from] NetError),
    #[error("raft: {0}")]
    Raft(String),
}

impl ClusterError {
    /// The same error for another caller (a batch's failure is each of its writes' failure).
    fn duplicate(&self) -> ClusterError {
        match self {
            ClusterError::NoLeader(after) => ClusterError::NoLeader(*after),
            ClusterError::Unsure(after) => ClusterError::Unsure(*after),
            ClusterError::Timeout(after) => ClusterError::Timeout(*after),
            ClusterError::Refused(reason) => ClusterError::Refused(reason.clone()),
            other => ClusterError::Failed(other.to_string()),
        }
    }
}

/// A member's role in the Raft group.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    Voter,
    Learner,
}

/// One member as `GET /v1/cluster` shows it: membership plus registry.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct MemberStatus {
    pub node_id: NodeId,
    pub addr: NodeAddr,
    pub role: Role,
    pub is_leader: bool,
    pub slots: Option<u32>,
    /// The cpu and memory its attempts may take together.
    pub capacity: Option<crate::job::Capacity>,
    pub running: Option<u32>,
    pub executor: Option<String>,
    pub last_heartbeat_ms: Option<u64>,
    pub draining: bool,
}

/// The cluster as this node sees it.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ClusterStatus {
    pub cluster_id: Option<String>,
    pub node_id: NodeId,
    pub leader: Option<NodeId>,
    pub term: u64,
    pub server_state: String,
    pub last_log_index: Option<u64>,
    pub applied_index: Option<u64>,
    /// Last entry covered by this node's latest snapshot.
    pub snapshot_index: Option<u64>,
    /// Last entry removed from this node's log (it lives on only in snapshots).
    pub purged_index: Option<u64>,
    /// The format the cluster runs, as this node has applied.
    pub format_version: u8,
    /// The oldest and newest formats this node reads.
    pub formats_read: (u8, u8),
    pub members: Vec<MemberStatus>,
}

/// Where a node's Raft stands (see [`Cluster::progress`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Progress {
    pub term: u64,
    pub is_leader: bool,
    pub leader: Option<NodeId>,
    pub last_log_index: Option<u64>,
    pub applied_index: Option<u64>,
}

/// This node's part in the cluster. Cheap to clone.
#[derive(Clone)]
pub struct Cluster {
    inner: Arc<Inner>,
}

struct Inner {
    raft: Raft,
    /// A handle on the log openraft writes, to tell how far it goes (see `last_log_id`).
    log: LogStore,
    net: NetHandle,
    view: StateView,
    node_id: NodeId,
    addr: NodeAddr,
    config: ClusterConfig,
    /// Attempts running on this node, reported in heartbeats (set by the worker).
    running: AtomicU32,
    /// Bounds forwarded operations in flight (see `FORWARDS_IN_FLIGHT_MAX`).
    forwards: tokio::sync::Semaphore,
    /// Set when this node led when it stopped: it leads again in that term (see
    /// [`Resumed`]).
    resumed: Option<Resumed>,
    /// Backups and restores on this node's `state.redb`.
    state_admin: StateAdmin,
    /// Held on the leader from checking the members' formats to changing them: while a
    /// joiner's formats are checked and it is added, and while the members' formats are
    /// checked and the cluster's format is moved (see `upkeep::upgrade_format`).
    members_gate: tokio::sync::Mutex<()>,
    /// Set while a restored node has not yet made its first snapshot: no node may join
    /// before it (see [`finish_restore`]).
    restoring: std::sync::atomic::AtomicBool,
    /// Writes waiting to be grouped into a batch (see `batcher`).
    writes: mpsc::Sender<batcher::QueuedWrite>,
    /// Writes this node proposes as the leader, its own and forwarded ones (see `proposer`).
    proposals: mpsc::Sender<proposer::Queued>,
    /// What running attempts have printed so far (set once by the worker).
    live_logs: std::sync::OnceLock<LiveLogsSource>,
    /// This node's claim behind its submissions (set once by the worker).
    claims: std::sync::OnceLock<ClaimSource>,
    tasks: std::sync::Mutex<Vec<JoinHandle<()>>>,
    stop: watch::Sender<bool>,
}

fn raft_config(config: &ClusterConfig) -> Result<openraft::Config, ClusterError> {
    let raft_config = openraft::Config {
        cluster_name: "shoal".to_string(),
        heartbeat_interval: config.heartbeat_ms,
        election_timeout_min: config.election_timeout_ms.0,
        election_timeout_max: config.election_timeout_ms.1,
        max_payload_entries: APPEND_ENTRIES_MAX,
        snapshot_policy: openraft::SnapshotPolicy::LogsSinceLast(config.snapshot_every_entries),
        max_in_snapshot_log_to_keep: config.log_kept_entries,
        // Purge in steps that fit the snapshot interval (openraft's default of 256 would
        // keep a small log forever).
        purge_batch_size: (config.snapshot_every_entries / 4).clamp(1, 256),
        snapshot_max_chunk_size: SNAPSHOT_CHUNK_BYTES,
        // Elections are `upkeep::run_elections`'s, with a pre-vote openraft 0.9 lacks.
        enable_elect: false,
        ..Default::default()
    };
    raft_config
        .validate()
        .map_err(|e| ClusterError::Raft(e.to_string()))
}

use crate::runtime::now_ms;

/// A fresh cluster id: 32 hex digits from the node, the time and chance.
pub(crate) fn new_cluster_id(node_id: NodeId) -> String {
    use sha2::Digest;
    let digest = sha2::Sha256::digest(format!(
        "{node_id}:{}:{}",
        now_ms(),
        crate::runtime::random_u64()
    ));
    digest[..16].iter().map(|b| format!("{b:02x}")).collect()
}

/// Counts each change of the leader this node knows (`shoal_raft_leader_changes_total`).
async fn count_leader_changes(
    mut metrics: watch::Receiver<openraft::RaftMetrics<NodeId, NodeAddr>>,
) {
    let mut leader = metrics.borrow_and_update().current_leader;
    while metrics.changed().await.is_ok() {
        let now = metrics.borrow_and_update().current_leader;
        if now != leader {
            leader = now;
            crate::metrics::raft().leader_changes.inc();
        }
    }
}

/// A node that led when it stopped leads again in the same term when it restarts, without an
/// election (openraft 0.9 restores a committed vote for itself). Such a leader's read index is
/// `max(its first entry of the term, its commit index)`, and its commit index after a restart
/// is only what was persisted: the state machine's applied id and the log's committed id. The
/// committed id is written by the append after it and may trail; with applies written without
/// an fsync, reads came back stale (ARCHITECTURE.md, "Cheap applies and the applied mark").
/// Reads in that term therefore also wait for every entry its log held at start: an
/// acknowledged write was applied, so committed, so in the leader's durable log (openraft's
/// core awaits the flush of the leader's own append before it replicates the entries).
#[derive(Debug, Clone, Copy)]
struct Resumed {
    term: u64,
    last_index: u64,
}

async fn resumed_leadership(
    log: &LogStore,
    node_id: NodeId,
) -> Result<Option<Resumed>, crate::types::StorageError> {
    use openraft::storage::RaftLogStorage;
    let Some(vote) = log.clone().read_vote().await? else {
        return Ok(None);
    };
    if !vote.is_committed() || vote.leader_id().voted_for() != Some(node_id) {
        return Ok(None);
    }
    let last_index = log.last_log_id().await?.map_or(0, |id| id.index);
    Ok(Some(Resumed {
        term: vote.leader_id().term,
        last_index,
    }))
}

/// Completes a restore (`shoal node --restore`, see [`crate::backup`]): the restored rows
/// are in `state.redb` but in no log entry, so a node that joined by replaying the log would
/// lack them. Once the node leads and has applied its first entries, it snapshots and purges
/// its log up to the snapshot, so every node that joins installs the snapshot; only then may
/// nodes join. Run again after a restart until it has finished.
async fn finish_restore(cluster: Cluster) {
    let mut pause = Duration::from_secs(1);
    loop {
        match try_finish_restore(&cluster).await {
            Ok(true) => {
                cluster.inner.restoring.store(false, Ordering::SeqCst);
                tracing::info!("restore complete: other nodes may join");
                return;
            }
            // The node is stopping.
            Ok(false) => return,
            Err(error) => {
                tracing::warn!(%error, "the restore's first snapshot failed; trying again");
                tokio::time::sleep(pause).await;
                pause = (pause * 2).min(Duration::from_secs(30));
            }
        }
    }
}

/// One try of [`finish_restore`]'s steps; `Ok(false)` when the node stops meanwhile.
async fn try_finish_restore(cluster: &Cluster) -> Result<bool, String> {
    let node_id = cluster.node_id();
    let mut metrics = cluster.raft().metrics();
    let Ok(applied) = metrics
        .wait_for(|m| m.current_leader == Some(node_id) && m.last_applied.is_some())
        .await
        .map(|m| m.last_applied.map_or(0, |id| id.index))
    else {
        return Ok(false);
    };
    cluster
        .raft()
        .trigger()
        .snapshot()
        .await
        .map_err(|e| format!("cannot snapshot the restored state: {e}"))?;
    let Ok(snapshot) = metrics
        .wait_for(|m| m.snapshot.is_some_and(|id| id.index >= applied))
        .await
        .map(|m| m.snapshot.map_or(0, |id| id.index))
    else {
        return Ok(false);
    };
    cluster
        .raft()
        .trigger()
        .purge_log(snapshot)
        .await
        .map_err(|e| format!("cannot purge the log: {e}"))?;
    if metrics
        .wait_for(|m| m.purged.is_some_and(|id| id.index >= snapshot))
        .await
        .is_err()
    {
        return Ok(false);
    }
    let admin = cluster.inner.state_admin.clone();
    crate::runtime::blocking(move || admin.finish_restore())
        .await
        .map_err(|e| e.to_string())??;
    Ok(true)
}

/// What a node runs on besides its config: its identity, its transport and its opened stores.
/// [`Cluster::start`] makes them from the data dir and libp2p; the simulation makes its own.
pub struct Parts {
    pub peer_id: libp2p::PeerId,
    pub net: NetHandle,
    pub inbound: mpsc::Receiver<crate::network::Inbound>,
    pub log: LogStore,
    pub state: StateStore,
    pub view: StateView,
}

impl Cluster {
    /// Opens the stores, starts the network and Raft, and spawns the background work.
    pub async fn start(config: ClusterConfig) -> Result<Cluster, ClusterError> {
        let storage_error = |path: PathBuf, reason: String| ClusterError::Storage { path, reason };
        std::fs::create_dir_all(&config.data_dir)
            .map_err(|e| storage_error(config.data_dir.clone(), e.to_string()))?;
        let keypair = load_or_create_keypair(&config.data_dir.join("node.key"))?;
        let cluster_key = config
            .cluster_key_file
            .as_deref()
            .map(read_cluster_key)
            .transpose()?;
        let peer_id = keypair.public().to_peer_id();

        // Opening redb reads and may repair files: keep it off the async reactor.
        let data_dir = config.data_dir.clone();
        let opened = crate::runtime::blocking(move || {
            let log_path = data_dir.join("raft-log.redb");
            let log_store = LogStore::open(&log_path).map_err(|e| (log_path, e.to_string()))?;
            let state_path = data_dir.join("state.redb");
            let snapshots = data_dir.join("snapshots");
            let (state_store, view) =
                StateStore::open(&state_path, &snapshots, log_store.applied_marker())
                    .map_err(|reason| (state_path, reason))?;
            Ok::<_, (PathBuf, String)>((log_store, state_store, view))
        })
        .await
        .map_err(|e| storage_error(config.data_dir.clone(), e.to_string()))?;
        let (log_store, state_store, view) =
            opened.map_err(|(path, reason)| storage_error(path, reason))?;

        let network_config = NetworkConfig {
            keypair,
            listen: config.p2p_listen.clone(),
            cluster_key,
        };
        let (net, inbound) = crate::network::swarm::start(network_config).await?;
        let parts = Parts {
            peer_id,
            net,
            inbound,
            log: log_store,
            state: state_store,
            view,
        };
        Cluster::start_with(config, parts).await
    }

    /// Starts Raft and the background work on `parts`.
    pub async fn start_with(config: ClusterConfig, parts: Parts) -> Result<Cluster, ClusterError> {
        let Parts {
            peer_id,
            net,
            inbound,
            log: log_store,
            state: state_store,
            view,
        } = parts;
        let node_id = node_id_of(&peer_id);
        let addr = NodeAddr {
            name: config.node_name.clone(),
            peer_id: peer_id.to_string(),
            p2p_addrs: if config.p2p_advertise.is_empty() {
                net.listen_addrs().iter().map(|a| a.to_string()).collect()
            } else {
                config.p2p_advertise.iter().map(|a| a.to_string()).collect()
            },
            http_url: config.http_url.clone(),
        };
        let resumed = resumed_leadership(&log_store, node_id)
            .await
            .map_err(|e| ClusterError::Raft(e.to_string()))?;
        let state_admin = state_store.admin();
        let restoring = state_admin
            .restore_pending()
            .map_err(|reason| ClusterError::Storage {
                path: config.data_dir.join("state.redb"),
                reason,
            })?;
        let raft = Raft::new(
            node_id,
            Arc::new(raft_config(&config)?),
            Network::new(net.clone()),
            log_store.clone(),
            state_store,
        )
        .await
        .map_err(|e| ClusterError::Raft(e.to_string()))?;
        tracing::info!(node_id = %crate::format_node_id(node_id), %peer_id, p2p = ?addr.p2p_addrs, "raft started");
        // A restored node forms a cluster of itself alone before it answers anyone, so no
        // peer ever takes it for a fresh node to bootstrap with.
        if restoring && !raft.is_initialized().await.unwrap_or(true) {
            let voters = std::collections::BTreeMap::from([(node_id, addr.clone())]);
            raft.initialize(voters)
                .await
                .map_err(|e| ClusterError::Raft(e.to_string()))?;
            tracing::info!("formed a new cluster from the restored state");
        }

        let (stop, _) = watch::channel(false);
        let (writes, queued_writes) = mpsc::channel(batcher::QUEUE_MAX);
        let (proposals, queued_proposals) = mpsc::channel(proposer::QUEUE_MAX);
        let cluster = Cluster {
            inner: Arc::new(Inner {
                raft,
                log: log_store,
                net,
                view,
                node_id,
                addr,
                config,
                running: AtomicU32::new(0),
                forwards: tokio::sync::Semaphore::new(FORWARDS_IN_FLIGHT_MAX),
                writes,
                proposals,
                resumed,
                state_admin,
                members_gate: tokio::sync::Mutex::new(()),
                restoring: std::sync::atomic::AtomicBool::new(restoring),
                live_logs: std::sync::OnceLock::new(),
                claims: std::sync::OnceLock::new(),
                tasks: std::sync::Mutex::new(Vec::new()),
                stop,
            }),
        };
        cluster.spawn(inbound::serve(cluster.clone(), inbound));
        cluster.spawn(batcher::run(cluster.clone(), queued_writes));
        cluster.spawn(proposer::run(cluster.clone(), queued_proposals));
        cluster.spawn(bootstrap::run(cluster.clone()));
        cluster.spawn(upkeep::register_and_heartbeat(cluster.clone()));
        cluster.spawn(upkeep::promote_learners(cluster.clone()));
        cluster.spawn(upkeep::expire_leases(cluster.clone()));
        cluster.spawn(upkeep::run_elections(cluster.clone()));
        cluster.spawn(upkeep::upgrade_format(cluster.clone()));
        cluster.spawn(count_leader_changes(cluster.inner.raft.metrics()));
        if restoring {
            cluster.spawn(finish_restore(cluster.clone()));
        }
        Ok(cluster)
    }

    fn spawn(&self, work: impl std::future::Future<Output = ()> + Send + 'static) {
        let mut stop = self.inner.stop.subscribe();
        let handle = crate::runtime::spawn(async move {
            tokio::select! {
                biased;
                () = work => {}
                _ = stop.wait_for(|stopped| *stopped) => {}
            }
        });
        self.inner
            .tasks
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .push(handle);
    }

    pub fn node_id(&self) -> NodeId {
        self.inner.node_id
    }

    pub fn addr(&self) -> &NodeAddr {
        &self.inner.addr
    }

    pub fn config(&self) -> &ClusterConfig {
        &self.inner.config
    }

    /// The applied state on this node (possibly behind the leader; see [`Cluster::linearize`]).
    pub fn view(&self) -> &StateView {
        &self.inner.view
    }

    pub(crate) fn raft(&self) -> &Raft {
        &self.inner.raft
    }

    pub(crate) fn net(&self) -> &NetHandle {
        &self.inner.net
    }

    /// Writes a backup of the state this node has applied to `out` (after
    /// [`Cluster::linearize`] it holds every write acknowledged before). Blocks on redb and on
    /// `out`: call it off the async reactor.
    pub fn write_backup(
        &self,
        out: impl std::io::Write,
    ) -> Result<crate::state_store::BackupWritten, crate::backup::BackupError> {
        self.inner.state_admin.write_backup(out)
    }

    /// Lets peers and this node's API ask what running attempts have printed so far.
    pub fn set_live_logs(&self, source: LiveLogsSource) {
        let _ = self.inner.live_logs.set(source);
    }

    /// Lets submissions made on this node bring this node's claim (see `write_and_claim`).
    pub fn set_claim_source(&self, source: ClaimSource) {
        let _ = self.inner.claims.set(source);
    }

    pub(crate) fn local_live_logs(
        &self,
        datum: crate::job::DatumKey,
        fence: u64,
    ) -> Option<Vec<crate::job::ExecutorLog>> {
        self.inner
            .live_logs
            .get()
            .and_then(|source| source(datum, fence))
    }

    /// What the attempt holding `fence` on `node` has printed so far, asked of that node
    /// (within a second; `None` when it cannot tell).
    pub async fn live_logs(
        &self,
        node: NodeId,
        datum: crate::job::DatumKey,
        fence: u64,
    ) -> Option<Vec<crate::job::ExecutorLog>> {
        if node == self.inner.node_id {
            return self.local_live_logs(datum, fence);
        }
        let addr = self
            .inner
            .raft
            .metrics()
            .borrow()
            .membership_config
            .membership()
            .get_node(&node)?
            .clone();
        let (peer, addrs) = peer_location(&addr)?;
        let request = Request::LiveLogs { datum, fence };
        match self
            .inner
            .net
            .request(peer, addrs, request, LIVE_LOGS_DEADLINE)
            .await
        {
            Ok(Response::LiveLogs(logs)) => logs,
            _ => None,
        }
    }

    /// Tells heartbeats how many attempts this node runs.
    pub fn set_running(&self, running: u32) {
        self.inner.running.store(running, Ordering::Relaxed);
    }

    /// How many attempts this node runs (as the worker last said).
    pub fn running(&self) -> u32 {
        self.inner.running.load(Ordering::Relaxed)
    }

    /// What this node reports about itself in the registry.
    pub(crate) fn node_info(&self) -> NodeInfo {
        let addr = &self.inner.addr;
        NodeInfo {
            name: addr.name.clone(),
            peer_id: addr.peer_id.clone(),
            http_url: addr.http_url.clone(),
            p2p_addrs: addr.p2p_addrs.clone(),
            slots: self.inner.config.slots,
            executor: self.inner.config.executor.clone(),
            capacity: self.inner.config.capacity,
        }
    }

    /// The leader this node knows of, with its address.
    pub fn leader(&self) -> Option<(NodeId, NodeAddr)> {
        let metrics = self.inner.raft.metrics();
        let metrics = metrics.borrow();
        let leader = metrics.current_leader?;
        let addr = metrics
            .membership_config
            .membership()
            .get_node(&leader)?
            .clone();
        Some((leader, addr))
    }

    /// Whether this node belongs to a cluster with a known leader (`/readyz`).
    pub fn is_ready(&self) -> bool {
        let metrics = self.inner.raft.metrics();
        let metrics = metrics.borrow();
        let member = metrics
            .membership_config
            .membership()
            .get_node(&self.inner.node_id)
            .is_some();
        member && metrics.current_leader.is_some() && metrics.running_state.is_ok()
    }

    /// Whether this node would refuse to vote for a candidate now: it leads and a quorum
    /// acknowledged it within the longest election timeout, or it follows a leader it heard
    /// from (its vote committed and touched) within that time — openraft's leader lease.
    /// A leader cut off from the others says no, though openraft 0.9 keeps it leader.
    pub(crate) async fn hears_leader(&self) -> bool {
        let longest = Duration::from_millis(self.inner.config.election_timeout_ms.1);
        {
            let metrics = self.inner.raft.metrics();
            let metrics = metrics.borrow();
            if metrics.state == ServerState::Leader {
                return metrics
                    .millis_since_quorum_ack
                    .is_none_or(|ms| Duration::from_millis(ms) < longest);
            }
        }
        self.inner
            .raft
            .with_raft_state(move |state| {
                state.vote_ref().is_committed()
                    && state
                        .vote_last_modified()
                        .is_some_and(|at| at.elapsed() <= longest)
            })
            .await
            .unwrap_or(false)
    }

    /// The id of the last entry in this node's log (what a vote compares), `None` when it
    /// cannot be read.
    pub(crate) async fn last_log_id(&self) -> Option<crate::types::LogId> {
        match self.inner.log.last_log_id().await {
            Ok(last) => last,
            Err(error) => {
                tracing::warn!(%error, "cannot read the last log id");
                None
            }
        }
    }

    /// Where this node's Raft stands, cheaply (no membership or state copied).
    pub fn progress(&self) -> Progress {
        let metrics = self.inner.raft.metrics();
        let metrics = metrics.borrow();
        Progress {
            term: metrics.current_term,
            is_leader: metrics.state == ServerState::Leader,
            leader: metrics.current_leader,
            last_log_index: metrics.last_log_index,
            applied_index: metrics.last_applied.map(|id| id.index),
        }
    }

    /// Whether this node's state is the leader's.
    pub fn is_leader(&self) -> bool {
        self.inner.raft.metrics().borrow().state == ServerState::Leader
    }

    /// Proposes `command` through the leader and returns its outcome once applied there.
    /// Writes made at about the same time share one log entry (see `batcher`).
    pub async fn write(&self, command: Command) -> Result<Outcome, ClusterError> {
        self.write_with(command, false).await
    }

    /// Writes a submission like [`Cluster::write`], with this node's claim (from the claim
    /// source) at the end of the same entry (from format 6; before, in the entry right
    /// behind it): a node with a slot free takes the new work in the round that records it,
    /// instead of a round after it has applied it.
    pub async fn write_and_claim(&self, command: Command) -> Result<Outcome, ClusterError> {
        self.write_with(command, true).await
    }

    async fn write_with(&self, command: Command, claim: bool) -> Result<Outcome, ClusterError> {
        let bytes = crate::codec::encoded_len(&command)
            .map_err(|e| ClusterError::Failed(format!("cannot encode a command: {e}")))?;
        if bytes > COMMAND_BYTES_MAX {
            return Err(ClusterError::Refused(format!(
                "a write of {bytes} bytes is larger than {COMMAND_BYTES_MAX}"
            )));
        }
        if !command.is_batchable() {
            return self.write_now(command).await;
        }
        let shutting_down = || ClusterError::Failed("this node is shutting down".to_string());
        // Asked only now, for a write that goes out.
        let follow = match self.inner.claims.get() {
            Some(source) if claim => source(),
            _ => None,
        };
        let (write, answer) = batcher::QueuedWrite::new(command, bytes, follow);
        self.inner
            .writes
            .send(write)
            .await
            .map_err(|_| shutting_down())?;
        answer.await.map_err(|_| shutting_down())?
    }

    /// Proposes `command` on its own, in an entry of its own.
    async fn write_now(&self, command: Command) -> Result<Outcome, ClusterError> {
        match self.execute(Op::Write(command)).await? {
            OpResult::Written(outcome) => Ok(outcome),
            other => Err(ClusterError::Failed(format!("unexpected answer {other:?}"))),
        }
    }

    /// Carries out `op` on the leader, wherever it is, retrying while leadership moves.
    ///
    /// Each try waits at most `TRY_DEADLINE`, and no longer than it takes another leader to
    /// be known: a try sent to a leader that hangs is sent again to its successor as soon as
    /// there is one, not after the whole deadline. A retry may carry the operation out twice;
    /// every `Op` is therefore idempotent (a repeated write of the same command leaves the
    /// same state). Out of time, the error says whether the operation may have been carried
    /// out (`Unsure`: some try reached a leader and got no answer) or surely was not
    /// (`NoLeader`).
    pub async fn execute(&self, op: Op) -> Result<OpResult, ClusterError> {
        let deadline = Instant::now() + OP_DEADLINE;
        let mut maybe_applied = false;
        loop {
            let leader = self.leader().map(|(id, _)| id);
            let budget = deadline
                .saturating_duration_since(Instant::now())
                .min(TRY_DEADLINE);
            let attempt = tokio::select! {
                attempt = tokio::time::timeout(budget, self.execute_once(&op)) => attempt
                    .unwrap_or_else(|_| Err(OpError::Unreachable("no answer in time".into()))),
                () = self.leader_other_than(leader), if leader.is_some() => {
                    Err(OpError::Unreachable("the leader changed".into()))
                }
            };
            match attempt {
                Ok(result) => return Ok(result),
                Err(OpError::Refused(reason)) => return Err(ClusterError::Refused(reason)),
                Err(OpError::Failed(reason)) => return Err(ClusterError::Failed(reason)),
                Err(error) => {
                    // A leader was asked and did not say no: it may have carried it out.
                    maybe_applied |= leader.is_some() && matches!(error, OpError::Unreachable(_));
                    if Instant::now() >= deadline {
                        tracing::debug!(%error, "giving up on an operation");
                        return Err(if maybe_applied {
                            ClusterError::Unsure(OP_DEADLINE)
                        } else {
                            ClusterError::NoLeader(OP_DEADLINE)
                        });
                    }
                    if self.leader().map(|(id, _)| id) == leader {
                        self.wait_for_leader_change().await;
                    }
                }
            }
        }
    }

    /// Resolves once this node knows a leader other than `leader`.
    async fn leader_other_than(&self, leader: Option<NodeId>) {
        let mut metrics = self.inner.raft.metrics();
        let _ = metrics
            .wait_for(|m| m.current_leader.is_some() && m.current_leader != leader)
            .await;
    }

    async fn execute_once(&self, op: &Op) -> Result<OpResult, OpError> {
        match self.leader() {
            Some((leader, _)) if leader == self.inner.node_id => {
                self.execute_local(op.clone()).await
            }
            Some((_, addr)) => {
                let started = std::time::Instant::now();
                let answer = self.forward(&addr, Request::Forward(op.clone())).await;
                let metrics = crate::metrics::raft();
                metrics.forwarded.inc();
                crate::metrics::observe(&metrics.forward_seconds, started.elapsed());
                match answer? {
                    Response::Forward(result) => result,
                    other => Err(OpError::Failed(format!("unexpected answer {other:?}"))),
                }
            }
            None => Err(OpError::NotLeader { leader: None }),
        }
    }

    /// Waits briefly for news of a (new) leader before an operation is retried.
    async fn wait_for_leader_change(&self) {
        let mut metrics = self.inner.raft.metrics();
        let before = metrics.borrow().current_leader;
        let changed =
            metrics.wait_for(|m| m.current_leader.is_some() && m.current_leader != before);
        let _ = tokio::time::timeout(
            Duration::from_millis(self.inner.config.heartbeat_ms * 2),
            changed,
        )
        .await;
    }

    async fn forward(&self, leader: &NodeAddr, request: Request) -> Result<Response, OpError> {
        let Some((peer, addrs)) = peer_location(leader) else {
            return Err(OpError::Failed(format!(
                "leader {leader} has no valid peer id"
            )));
        };
        let _permit = self
            .inner
            .forwards
            .acquire()
            .await
            .map_err(|_| OpError::Unreachable("shutting down".into()))?;
        self.inner
            .net
            .request(peer, addrs, request, OP_DEADLINE)
            .await
            .map_err(|e| OpError::Unreachable(e.to_string()))
    }

    /// Carries out `op` on this node, which must be the leader.
    pub(crate) async fn execute_local(&self, op: Op) -> Result<OpResult, OpError> {
        match op {
            Op::Write(command) => {
                let format = self.view().read().format_version();
                let (write, answer) = proposer::Queued::new(command, format);
                let stopped = || OpError::Failed("this node is shutting down".to_string());
                self.inner
                    .proposals
                    .send(write)
                    .await
                    .map_err(|_| stopped())?;
                Ok(OpResult::Written(answer.await.map_err(|_| stopped())??))
            }
            // Membership checks below read this node's view, which is current only on the leader.
            Op::Join { .. } | Op::Remove { .. } if !self.is_leader() => Err(OpError::NotLeader {
                leader: self.leader(),
            }),
            Op::Join { node_id, addr } => self.join_local(node_id, addr).await,
            Op::Remove { node_id } => self.remove_local(node_id).await,
        }
    }

    async fn join_local(&self, node_id: NodeId, addr: NodeAddr) -> Result<OpResult, OpError> {
        if self.inner.restoring.load(Ordering::SeqCst) {
            return Err(OpError::Busy(
                "the cluster is being restored from a backup; nodes may join once its first \
                 snapshot is made"
                    .to_string(),
            ));
        }
        let _gate = self.inner.members_gate.lock().await;
        // The format as of every committed entry, a `SetFormat` of the previous leader's
        // included.
        self.linearize()
            .await
            .map_err(|e| OpError::Unreachable(e.to_string()))?;
        self.check_formats_of_joiner(node_id, &addr).await?;
        let raft = &self.inner.raft;
        let membership = raft
            .metrics()
            .borrow()
            .membership_config
            .membership()
            .clone();
        if let Some(known) = membership.get_node(&node_id) {
            if known.peer_id != addr.peer_id {
                return Err(OpError::Refused(format!(
                    "node id {} of {} collides with member {known}",
                    crate::format_node_id(node_id),
                    addr
                )));
            }
            return Ok(OpResult::Joined);
        }
        tracing::info!(node = %addr, "adding learner");
        raft.add_learner(node_id, addr, true)
            .await
            .map_err(write_error)?;
        Ok(OpResult::Joined)
    }

    /// The formats the node at `addr` reads (oldest, newest); `None` when it does not say
    /// (unreachable, or a build older than format 5).
    pub(crate) async fn formats_of(&self, addr: &NodeAddr) -> Option<(u8, u8)> {
        let (peer, addrs) = peer_location(addr)?;
        match self
            .net()
            .request(peer, addrs, Request::Formats, FORMATS_DEADLINE)
            .await
        {
            Ok(Response::Formats { min, max }) => Some((min, max)),
            _ => None,
        }
    }

    /// Refuses a node that cannot read the format the cluster runs: it could neither
    /// replicate the log nor install a snapshot.
    async fn check_formats_of_joiner(
        &self,
        node_id: NodeId,
        addr: &NodeAddr,
    ) -> Result<(), OpError> {
        let current = self.view().read().format_version();
        let refuse = |reads: String| {
            Err(OpError::Refused(format!(
                "node {} ({}) {reads}; the cluster runs format {current}: run a build that \
                 reads it",
                crate::format_node_id(node_id),
                addr.name
            )))
        };
        match self.formats_of(addr).await {
            Some((min, max)) if (min..=max).contains(&current) => Ok(()),
            Some((min, max)) => refuse(format!("reads formats {min} to {max}")),
            // A build before format 5 reads format 4 only.
            None if current == crate::codec::FORMAT_VERSION_MIN => Ok(()),
            None => refuse(
                "did not say which formats it reads (unreachable, or a build before format 5)"
                    .to_string(),
            ),
        }
    }

    async fn remove_local(&self, node_id: NodeId) -> Result<OpResult, OpError> {
        let raft = &self.inner.raft;
        let membership = raft
            .metrics()
            .borrow()
            .membership_config
            .membership()
            .clone();
        let voters: BTreeSet<NodeId> = membership.voter_ids().collect();
        let ids = BTreeSet::from([node_id]);
        if voters.contains(&node_id) {
            if voters.len() == 1 {
                return Err(OpError::Refused("cannot remove the last voter".to_string()));
            }
            raft.change_membership(ChangeMembers::RemoveVoters(ids), false)
                .await
                .map_err(write_error)?;
        } else if membership.get_node(&node_id).is_some() {
            raft.change_membership(ChangeMembers::RemoveNodes(ids), false)
                .await
                .map_err(write_error)?;
        } else if !self.inner.view.read().nodes.contains_key(&node_id) {
            // Already gone (e.g. a retry of a removal that took effect): nothing to do.
            return Ok(OpResult::Removed);
        }
        let proposal = Proposal {
            time_ms: now_ms(),
            command: Command::RemoveNode { node_id },
        };
        raft.client_write(proposal).await.map_err(write_error)?;
        Ok(OpResult::Removed)
    }

    /// Waits until this node has applied every write acknowledged before the call began.
    pub async fn linearize(&self) -> Result<(), ClusterError> {
        let deadline = Instant::now() + OP_DEADLINE;
        loop {
            let leader = self.leader().map(|(id, _)| id);
            let budget = deadline
                .saturating_duration_since(Instant::now())
                .min(TRY_DEADLINE);
            let index = tokio::select! {
                index = tokio::time::timeout(budget, self.read_index()) => index
                    .unwrap_or_else(|_| Err(OpError::Unreachable("no answer in time".into()))),
                () = self.leader_other_than(leader), if leader.is_some() => {
                    Err(OpError::Unreachable("the leader changed".into()))
                }
            };
            let remaining = deadline.saturating_duration_since(Instant::now());
            match index {
                Ok(index) => {
                    return self
                        .inner
                        .raft
                        .wait(Some(remaining))
                        .applied_index_at_least(Some(index), "linearizable read")
                        .await
                        .map(|_| ())
                        .map_err(|_| ClusterError::Timeout(OP_DEADLINE));
                }
                Err(_) if remaining.is_zero() => return Err(ClusterError::NoLeader(OP_DEADLINE)),
                Err(_) if self.leader().map(|(id, _)| id) == leader => {
                    self.wait_for_leader_change().await
                }
                Err(_) => {}
            }
        }
    }

    /// Waits until this node has applied the entry at `index` (e.g. a claim's fence, so its
    /// grant can be read from the local state).
    pub async fn wait_applied(&self, index: u64) -> Result<(), ClusterError> {
        self.inner
            .raft
            .wait(Some(OP_DEADLINE))
            .applied_index_at_least(Some(index), "wait for an entry")
            .await
            .map(|_| ())
            .map_err(|_| ClusterError::Timeout(OP_DEADLINE))
    }

    /// The read index, from this node if it leads, else from the leader.
    async fn read_index(&self) -> Result<u64, OpError> {
        match self.leader() {
            Some((leader, _)) if leader == self.inner.node_id => self.read_index_local().await,
            Some((_, addr)) => match self.forward(&addr, Request::ReadIndex).await? {
                Response::ReadIndex(result) => result,
                other => Err(OpError::Failed(format!("unexpected answer {other:?}"))),
            },
            None => Err(OpError::NotLeader { leader: None }),
        }
    }

    /// Confirms leadership with a quorum and returns the index reads must wait for.
    pub(crate) async fn read_index_local(&self) -> Result<u64, OpError> {
        let (read_log_id, _) =
            self.inner
                .raft
                .get_read_log_id()
                .await
                .map_err(|error| match error {
                    RaftError::APIError(openraft::error::CheckIsLeaderError::ForwardToLeader(
                        _,
                    )) => OpError::NotLeader { leader: None },
                    other => OpError::Failed(other.to_string()),
                })?;
        let Some(read_log_id) = read_log_id else {
            return Ok(0);
        };
        // The read log id is this leader's first entry of its term or a later one, so its term
        // is the term this node leads in: the resumed one only for the resumed leader.
        let resumed = self
            .inner
            .resumed
            .filter(|resumed| resumed.term == read_log_id.leader_id.term)
            .map_or(0, |resumed| resumed.last_index);
        Ok(read_log_id.index.max(resumed))
    }

    /// The cluster as this node sees it: membership, leader, and the registry's records.
    pub fn status(&self) -> ClusterStatus {
        let metrics = self.inner.raft.metrics().borrow().clone();
        let state = self.inner.view.read();
        let membership = metrics.membership_config.membership();
        let voters: BTreeSet<NodeId> = membership.voter_ids().collect();
        let members = membership
            .nodes()
            .map(|(&node_id, addr)| {
                let record = state.nodes.get(&node_id);
                MemberStatus {
                    node_id,
                    addr: addr.clone(),
                    role: if voters.contains(&node_id) {
                        Role::Voter
                    } else {
                        Role::Learner
                    },
                    is_leader: metrics.current_leader == Some(node_id),
                    slots: record.map(|r| r.info.slots),
                    capacity: record.map(|r| r.info.capacity),
                    running: record.map(|r| r.running),
                    executor: record.map(|r| r.info.executor.clone()),
                    last_heartbeat_ms: record.map(|r| r.last_heartbeat_ms),
                    draining: record.is_some_and(|r| r.draining),
                }
            })
            .collect();
        ClusterStatus {
            cluster_id: state.cluster_id.clone(),
            node_id: self.inner.node_id,
            leader: metrics.current_leader,
            term: metrics.current_term,
            server_state: format!("{:?}", metrics.state),
            last_log_index: metrics.last_log_index,
            applied_index: metrics.last_applied.map(|id| id.index),
            snapshot_index: metrics.snapshot.map(|id| id.index),
            purged_index: metrics.purged.map(|id| id.index),
            format_version: state.format_version(),
            formats_read: (
                crate::codec::FORMAT_VERSION_MIN,
                crate::codec::max_version(),
            ),
            members,
        }
    }

    /// Stops background work and Raft. Idempotent.
    pub async fn shutdown(&self) {
        self.inner.stop.send_replace(true);
        let tasks =
            std::mem::take(&mut *self.inner.tasks.lock().unwrap_or_else(|p| p.into_inner()));
        for task in tasks {
            let _ = task.await;
        }
        if let Err(error) = self.inner.raft.shutdown().await {
            tracing::warn!(%error, "raft did not shut down cleanly");
        }
    }
}

fn write_error(error: RaftError<NodeId, ClientWriteError<NodeId, NodeAddr>>) -> OpError {
    match error {
        RaftError::APIError(ClientWriteError::ForwardToLeader(forward)) => OpError::NotLeader {
            leader: forward.leader_id.zip(forward.leader_node),
        },
        RaftError::APIError(ClientWriteError::ChangeMembershipError(
            error @ openraft::error::ChangeMembershipError::InProgress(_),
        )) => OpError::Busy(error.to_string()),
        RaftError::APIError(ClientWriteError::ChangeMembershipError(error)) => {
            OpError::Refused(error.to_string())
        }
        RaftError::Fatal(error) => OpError::Failed(error.to_string()),
    }
}

//! One simulated node: the production `Cluster` and `Worker` on a [`SimDisk`] pair, the
//! simulated network and the simulated executor, all of its tasks in one `NodeScope` so the
//! node can crash, restart and pause as a process does.

use std::sync::Arc;

use libp2p::identity::Keypair;
use shoal_raft::cluster::Parts;
use shoal_raft::log_store::LogStore;
use shoal_raft::network::NetHandle;
use shoal_raft::runtime::NodeScope;
use shoal_raft::state_store::StateStore;
use shoal_raft::{Cluster, ClusterConfig};
use shoal_worker::{ExecutorKind, Worker, WorkerConfig};

use super::disk::SimDisk;
use super::executor::SimExecutor;
use super::net::{SimNet, address};

/// Lease of the simulated cluster: the production default.
pub const LEASE_MS: u64 = 10_000;
/// What each simulated node offers: two cores (a task asking nothing takes one) and 8 GiB.
pub const CAPACITY: shoal_raft::job::Capacity = shoal_raft::job::Capacity {
    cpu_millis: 2000,
    ram_bytes: 8 << 30,
};

/// What a running node offers its clients and the oracle.
#[derive(Clone)]
pub struct Running {
    pub cluster: Cluster,
    pub router: axum::Router,
    pub scope: Arc<NodeScope>,
}

pub struct SimNode {
    pub index: usize,
    keypair: Keypair,
    log_disk: SimDisk,
    state_disk: SimDisk,
    mark_disk: SimDisk,
    /// Snapshots and the worker's work dir (empty: the simulated executor needs no files).
    dir: tempfile::TempDir,
    pub running: Option<Running>,
    worker: Option<Worker>,
}

/// The keypair of node `index` in the run of `seed`: the same ids in every replay.
pub fn keypair(seed: u64, index: usize) -> Keypair {
    let mut bytes = [0_u8; 32];
    bytes[..8].copy_from_slice(&seed.to_le_bytes());
    bytes[8..16].copy_from_slice(&(index as u64).to_le_bytes());
    bytes[31] = 1;
    Keypair::ed25519_from_bytes(bytes).expect("32 bytes make an ed25519 key")
}

/// A node's directory: in memory (`/dev/shm`) where there is one, since a run makes and
/// removes an attempt directory per attempt and a disk's metadata writes would halve the
/// seeds per second.
fn temp_dir() -> std::io::Result<tempfile::TempDir> {
    let shm = std::path::Path::new("/dev/shm");
    let builder = tempfile::Builder::new().prefix("shoal-sim-").clone();
    if shm.is_dir()
        && let Ok(dir) = builder.tempdir_in(shm)
    {
        return Ok(dir);
    }
    builder.tempdir()
}

impl SimNode {
    pub fn new(index: usize, keypair: Keypair) -> std::io::Result<SimNode> {
        Ok(SimNode {
            index,
            keypair,
            log_disk: SimDisk::default(),
            state_disk: SimDisk::default(),
            mark_disk: SimDisk::default(),
            dir: temp_dir()?,
            running: None,
            worker: None,
        })
    }

    pub fn name(&self) -> String {
        format!("n{}", self.index)
    }

    pub fn peer_id(&self) -> libp2p::PeerId {
        self.keypair.public().to_peer_id()
    }

    fn cluster_config(&self, nodes: usize) -> ClusterConfig {
        ClusterConfig {
            data_dir: self.dir.path().join("data"),
            node_name: self.name(),
            http_url: format!("http://{}.sim", self.name()),
            p2p_listen: address(self.index),
            p2p_advertise: Vec::new(),
            seeds: (0..nodes)
                .filter(|i| *i != self.index)
                .map(address)
                .collect(),
            bootstrap_expect: nodes,
            cluster_key_file: None,
            heartbeat_ms: 100,
            election_timeout_ms: (300, 600),
            voters_max: 5,
            // Snapshots write files through tokio's blocking pool; the simulated runs stay
            // below this, so the log is never cut.
            snapshot_every_entries: 1_000_000,
            log_kept_entries: 1_000,
            lease_ms: LEASE_MS,
            slots: 2,
            executor: "sim".to_string(),
            capacity: CAPACITY,
        }
    }

    /// Starts the node (again, after a crash) on its disks.
    pub async fn start(
        &mut self,
        net: &SimNet,
        nodes: usize,
        executor: Arc<SimExecutor>,
        stores: &[(String, Arc<dyn object_store::ObjectStore>)],
    ) -> Result<(), String> {
        let scope = NodeScope::new();
        let (transport, inbound) = net.attach(self.index);
        let config = self.cluster_config(nodes);
        let worker_config = WorkerConfig {
            slots: config.slots,
            capacity: config.capacity,
            executor: ExecutorKind::External(executor),
            work_dir: self.dir.path().join("work"),
            tail_bytes_max: 1024,
            keep_workdirs: false,
            storage: Default::default(),
            die_with_node: false,
            stores: stores.to_vec(),
        };
        let peer_id = self.peer_id();
        let log_backend = self.log_disk.backend();
        let state_backend = self.state_disk.backend();
        let mark_backend = self.mark_disk.backend();
        let snapshots = self.dir.path().join("snapshots");
        let started = scope.spawn(async move {
            let log = LogStore::open_backend(log_backend, mark_backend)
                .map_err(|e| format!("log: {e}"))?;
            let (state, view) =
                StateStore::open_backend(state_backend, &snapshots, log.applied_marker())
                    .map_err(|e| format!("state: {e}"))?;
            let parts = Parts {
                peer_id,
                net: NetHandle::new(Arc::new(transport)),
                inbound,
                log,
                state,
                view,
            };
            let cluster = Cluster::start_with(config, parts)
                .await
                .map_err(|e| format!("cluster: {e}"))?;
            let worker = Worker::start(cluster.clone(), worker_config)
                .await
                .map_err(|e| format!("worker: {e}"))?;
            Ok::<_, String>((cluster, worker))
        });
        let (cluster, worker) = started
            .await
            .map_err(|e| format!("start of {} was stopped: {e}", self.name()))??;
        let state = shoal_node::http::AppState::new(cluster.clone(), Vec::new(), false);
        let router = shoal_node::http::router(state, 1024 * 1024);
        self.running = Some(Running {
            cluster,
            router,
            scope,
        });
        self.worker = Some(worker);
        Ok(())
    }

    /// The process dies: every task stops at its last await; with `machine`, the disks lose
    /// what was not synced.
    pub fn crash(&mut self, net: &SimNet, machine: bool) {
        if let Some(running) = self.running.take() {
            running.scope.crash();
        }
        self.worker = None;
        net.detach(self.index);
        self.log_disk.crash(machine);
        self.state_disk.crash(machine);
        self.mark_disk.crash(machine);
    }

    pub fn is_up(&self) -> bool {
        self.running.is_some()
    }
}

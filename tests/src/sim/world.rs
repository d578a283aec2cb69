//! One run: form the cluster, let clients work while the schedule's faults come and go, heal
//! everything, wait for the cluster to settle (the liveness phase), and judge.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::body::Body;
use shoal_raft::command::Command;
use shoal_raft::runtime::{now_ms, random_u64};
use tower::ServiceExt;

use super::executor::{Executions, SimExecutor};
use super::faults::{Fault, FaultKind, schedule};
use super::net::{Conditions, SimNet};
use super::node::{Running, SimNode, keypair};
use super::oracle::Oracle;
use super::trace::Trace;
use super::{BrokenRule, Report, SimConfig};

/// The simulated wall clock starts here (2027-01-15), whatever the real date.
const EPOCH_MS: u64 = 1_800_000_000_000;
/// How long the cluster may take to form.
const FORMATION_MS: u64 = 30_000;
/// How long a client keeps retrying a submission, as the CLI does.
const CLIENT_RETRY_MS: u64 = 60_000;
/// How long a client waits for one HTTP answer.
const CLIENT_TIMEOUT: Duration = Duration::from_secs(15);
/// After the last fault heals: how long until one leader, converged logs and every task
/// ended.
const LIVENESS_MS: u64 = 90_000;
/// A write must succeed this soon after each fault ends.
pub const RECOVERY_MS: u64 = 2_000;

/// What the run's tasks share.
pub(super) struct Shared {
    pub trace: Trace,
    pub nodes: Mutex<Vec<Option<Running>>>,
    pub oracle: Oracle,
    /// Clients stop starting new work.
    pub quiet: AtomicBool,
}

impl Shared {
    fn running(&self, index: usize) -> Option<Running> {
        lock(&self.nodes)[index].clone()
    }

    fn count(&self) -> usize {
        lock(&self.nodes).len()
    }
}

pub(super) fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(|p| p.into_inner())
}

/// Runs the simulation `config` describes, on a runtime of its own.
pub fn run(config: &SimConfig) -> Report {
    let mut seed_bytes = [0_u8; 16];
    seed_bytes[..8].copy_from_slice(&config.seed.to_le_bytes());
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .start_paused(true)
        .rng_seed(tokio::runtime::RngSeed::from_bytes(&seed_bytes))
        .build()
        .expect("a current-thread runtime builds");
    runtime.block_on(async {
        let _simulation = shoal_raft::runtime::simulate(config.seed, EPOCH_MS);
        World::new(config).run().await
    })
}

/// The bucket the simulation's object storage serves (from memory).
pub const BUCKET: &str = "s3://sim";
/// Input objects every pipeline job globs (`inputs/*`).
const INPUT_FILES: usize = 6;

struct World {
    config: SimConfig,
    /// The object storage every node reaches (pipelines' inputs and outputs).
    store: Arc<object_store::memory::InMemory>,
    shared: Arc<Shared>,
    net: SimNet,
    nodes: Vec<SimNode>,
    executions: Executions,
    executor: Arc<SimExecutor>,
    schedule: Vec<Fault>,
}

impl World {
    fn new(config: &SimConfig) -> World {
        let trace = Trace::new(config.keep_trace);
        let nodes: Vec<SimNode> = (0..config.nodes)
            .map(|i| SimNode::new(i, keypair(config.seed, i)).expect("a temp dir"))
            .collect();
        let peers: Vec<_> = nodes.iter().map(SimNode::peer_id).collect();
        let node_ids = peers.iter().map(shoal_raft::node_id_of).collect();
        let net = SimNet::new(&peers, trace.clone());
        let executions = Executions::default();
        let executor = SimExecutor::new(executions.clone(), trace.clone());
        let shared = Arc::new(Shared {
            trace,
            nodes: Mutex::new(vec![None; config.nodes]),
            oracle: Oracle::new(node_ids),
            quiet: AtomicBool::new(false),
        });
        World {
            store: Arc::new(object_store::memory::InMemory::new()),
            schedule: schedule(config.seed, config.faults),
            config: config.clone(),
            shared,
            net,
            nodes,
            executions,
            executor,
        }
    }

    async fn start(&mut self, index: usize) {
        let count = self.nodes.len();
        let node = &mut self.nodes[index];
        let store: Arc<dyn object_store::ObjectStore> = self.store.clone();
        let stores = [(BUCKET.to_string(), store)];
        match node
            .start(&self.net, count, self.executor.clone(), &stores)
            .await
        {
            Ok(()) => {
                lock(&self.shared.nodes)[index] = node.running.clone();
                self.shared.trace.event(format!("start n{index}"));
            }
            Err(error) => self
                .shared
                .oracle
                .violation(format!("n{index} failed to start: {error}")),
        }
    }

    fn crash(&mut self, index: usize, machine: bool) {
        lock(&self.shared.nodes)[index] = None;
        self.nodes[index].crash(&self.net, machine);
        let how = if machine { "power loss" } else { "crash" };
        self.shared.trace.event(format!("{how} n{index}"));
    }

    async fn run(mut self) -> Report {
        let begin = tokio::time::Instant::now();
        for i in 0..INPUT_FILES {
            let path = object_store::path::Path::from(format!("inputs/f{i}.txt"));
            let put = object_store::ObjectStoreExt::put(
                self.store.as_ref(),
                &path,
                format!("input {i}").into_bytes().into(),
            )
            .await;
            if let Err(error) = put {
                self.shared
                    .oracle
                    .violation(format!("cannot seed inputs: {error}"));
            }
        }
        for index in 0..self.nodes.len() {
            self.start(index).await;
        }
        let mut published = 0;
        if self.wait_settled(FORMATION_MS, false).await {
            self.shared.trace.event("formed");
            let checker = tokio::spawn(super::oracle::check_continuously(self.shared.clone()));
            let clients: Vec<_> = (0..3)
                .map(|c| tokio::spawn(client(self.shared.clone(), c)))
                .collect();
            let rogue = self
                .config
                .broken
                .map(|rule| tokio::spawn(break_rule(self.shared.clone(), rule)));
            self.run_schedule().await;
            self.heal_everything().await;
            self.shared.quiet.store(true, Ordering::SeqCst);
            if let Some(rogue) = rogue {
                rogue.abort();
            }
            for client in clients {
                let _ = client.await;
            }
            if !self.wait_settled(LIVENESS_MS, true).await {
                self.shared.oracle.violation(format!(
                    "liveness: the healed cluster did not settle within {LIVENESS_MS} ms \
                     (one leader, logs converged, every task ended)"
                ));
            }
            checker.abort();
            let running: Vec<Running> =
                lock(&self.shared.nodes).iter().flatten().cloned().collect();
            let outputs = self.outputs().await;
            published = outputs.len();
            self.shared
                .oracle
                .check_end(&running, &self.executions.counts(), &outputs);
        } else {
            self.shared
                .oracle
                .violation(format!("the cluster did not form within {FORMATION_MS} ms"));
        }
        for index in 0..self.nodes.len() {
            self.crash(index, false);
        }
        // Let aborted tasks be dropped.
        tokio::task::yield_now().await;
        let violations = self.shared.oracle.violations();
        Report {
            seed: self.config.seed,
            nodes: self.config.nodes,
            schedule: self.schedule.clone(),
            violations,
            trace_hash: self.shared.trace.hash(),
            trace: self.shared.trace.lines(),
            simulated_ms: begin.elapsed().as_millis() as u64,
            messages: self.shared.trace.messages(),
            acknowledged: self.shared.oracle.acknowledged(),
            executions: self.executions.counts().values().map(|n| *n as usize).sum(),
            recoveries: self.shared.oracle.recoveries(),
            published,
        }
    }

    /// Every object below `out/` with its contents.
    async fn outputs(&self) -> BTreeMap<String, String> {
        use futures::TryStreamExt;
        use object_store::{ObjectStore, ObjectStoreExt};
        let prefix = object_store::path::Path::from("out");
        let listed: Vec<_> = self
            .store
            .list(Some(&prefix))
            .try_collect()
            .await
            .unwrap_or_default();
        let mut outputs = BTreeMap::new();
        for meta in listed {
            if let Ok(result) = self.store.get(&meta.location).await
                && let Ok(bytes) = result.bytes().await
            {
                let text = String::from_utf8_lossy(&bytes).into_owned();
                outputs.insert(meta.location.to_string(), text);
            }
        }
        outputs
    }

    /// Waits until every node is up, one leader leads them all in one term, their logs are
    /// applied to the leader's last entry, every node is registered and — when `tasks` —
    /// every acknowledged task has ended.
    async fn wait_settled(&self, within_ms: u64, tasks: bool) -> bool {
        let deadline = tokio::time::Instant::now() + Duration::from_millis(within_ms);
        while tokio::time::Instant::now() < deadline {
            if self.settled(tasks) {
                return true;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        false
    }

    fn settled(&self, tasks: bool) -> bool {
        let running: Vec<Running> = lock(&self.shared.nodes).iter().flatten().cloned().collect();
        if running.len() != self.nodes.len() {
            return false;
        }
        let progress: Vec<_> = running.iter().map(|r| r.cluster.progress()).collect();
        let leaders = progress.iter().filter(|p| p.is_leader).count();
        let Some(leader) = progress.iter().find(|p| p.is_leader) else {
            return false;
        };
        let agreed = progress.iter().all(|p| {
            p.leader == leader.leader
                && p.term == leader.term
                && p.applied_index == leader.last_log_index
        });
        if leaders != 1 || !agreed {
            return false;
        }
        let state = running[0].cluster.view().read();
        if state.nodes.len() != self.nodes.len() {
            return false;
        }
        !tasks || self.shared.oracle.all_ended(&state)
    }

    /// Injects the schedule's faults, each healed when it ends; returns when the last has.
    async fn run_schedule(&mut self) {
        let start = tokio::time::Instant::now();
        for fault in self.schedule.clone() {
            tokio::time::sleep_until(start + Duration::from_millis(fault.at_ms)).await;
            let hit = self.inject(&fault);
            let from = now_ms();
            tokio::time::sleep(Duration::from_millis(fault.duration_ms)).await;
            self.heal(&fault, &hit).await;
            let until = now_ms();
            self.shared.oracle.unhealthy(&hit, from, until);
            let recovery = tokio::spawn(probe_write(self.shared.clone(), fault.clone()));
            // The next fault waits for this probe, so each recovery is measured on its own.
            let _ = recovery.await;
        }
    }

    /// Starts `fault`; returns the nodes it hits (every node for network-wide faults).
    fn inject(&mut self, fault: &Fault) -> Vec<usize> {
        let count = self.nodes.len();
        let up: Vec<usize> = (0..count).filter(|i| self.nodes[*i].is_up()).collect();
        let pick = |k: u64| up[(k % up.len() as u64) as usize];
        let leader = (0..count).find(|i| {
            self.nodes[*i]
                .running
                .as_ref()
                .is_some_and(|r| r.cluster.is_leader())
        });
        self.shared.trace.event(format!("fault {fault}"));
        let hit = match fault.kind {
            FaultKind::Crash | FaultKind::PowerLoss => {
                let node = pick(fault.pick);
                self.crash(node, fault.kind == FaultKind::PowerLoss);
                vec![node]
            }
            FaultKind::Pause => {
                let node = pick(fault.pick);
                if let Some(running) = &self.nodes[node].running {
                    running.scope.pause();
                }
                vec![node]
            }
            FaultKind::PartitionLeader => {
                let node = leader.unwrap_or_else(|| pick(fault.pick));
                self.net.isolate(&[node]);
                vec![node]
            }
            FaultKind::PartitionMinority => {
                let size = (count - 1) / 2;
                let mut side: Vec<usize> = Vec::new();
                let mut k = fault.pick;
                while side.len() < size {
                    let node = (k % count as u64) as usize;
                    if !side.contains(&node) {
                        side.push(node);
                    }
                    k = k / 7 + 1;
                }
                self.net.isolate(&side);
                side
            }
            FaultKind::OneWay => {
                let from = (fault.pick % count as u64) as usize;
                let to = (from + 1 + (fault.pick / 7 % (count as u64 - 1)) as usize) % count;
                self.net.cut(from, to);
                vec![from, to]
            }
            FaultKind::Delay | FaultKind::Loss | FaultKind::Duplicate => {
                let conditions = match fault.kind {
                    FaultKind::Delay => Conditions {
                        latency_ms: (50, 500),
                        ..Conditions::default()
                    },
                    FaultKind::Loss => Conditions {
                        loss_per_mille: 200,
                        ..Conditions::default()
                    },
                    _ => Conditions {
                        duplicate_per_mille: 200,
                        ..Conditions::default()
                    },
                };
                self.net.set_conditions(conditions);
                (0..count).collect()
            }
        };
        let names: Vec<String> = hit.iter().map(|i| format!("n{i}")).collect();
        self.shared
            .trace
            .event(format!("  hits {}", names.join(",")));
        hit
    }

    async fn heal(&mut self, fault: &Fault, hit: &[usize]) {
        match fault.kind {
            FaultKind::Crash | FaultKind::PowerLoss => {
                for &node in hit {
                    self.start(node).await;
                }
            }
            FaultKind::Pause => {
                for &node in hit {
                    if let Some(running) = &self.nodes[node].running {
                        running.scope.resume();
                    }
                }
            }
            _ => self.net.heal(),
        }
        self.shared
            .trace
            .event(format!("healed {}", fault.kind.name()));
    }

    async fn heal_everything(&mut self) {
        self.net.heal();
        for index in 0..self.nodes.len() {
            match &self.nodes[index].running {
                Some(running) => running.scope.resume(),
                None => self.start(index).await,
            }
        }
        self.shared.trace.event("healed everything");
    }
}

/// An HTTP exchange with node `node`'s API, as a client over the network would have it.
async fn call(
    shared: &Shared,
    node: usize,
    method: &str,
    uri: &str,
    key: Option<&str>,
    body: Option<String>,
) -> Result<(u16, serde_json::Value), String> {
    let running = shared
        .running(node)
        .ok_or_else(|| "connection refused".to_string())?;
    let mut request = axum::http::Request::builder()
        .method(method)
        .uri(uri)
        .header("content-type", "application/json");
    if let Some(key) = key {
        request = request.header("idempotency-key", key);
    }
    let request = request
        .body(Body::from(body.unwrap_or_default()))
        .map_err(|e| e.to_string())?;
    let router = running.router.clone();
    let exchange = running.scope.spawn(async move {
        let response = router.oneshot(request).await.map_err(|e| e.to_string())?;
        let status = response.status().as_u16();
        let bytes = axum::body::to_bytes(response.into_body(), 1 << 20)
            .await
            .map_err(|e| e.to_string())?;
        let value = serde_json::from_slice(&bytes).unwrap_or(serde_json::Value::Null);
        Ok::<_, String>((status, value))
    });
    match tokio::time::timeout(CLIENT_TIMEOUT, exchange).await {
        Ok(Ok(answer)) => answer,
        Ok(Err(_)) => Err("connection reset".to_string()),
        Err(_) => Err("no answer in time".to_string()),
    }
}

fn random_node(shared: &Shared) -> usize {
    (random_u64() % shared.count() as u64) as usize
}

/// One client: submits tasks, cancels some, reads some back, until the run goes quiet.
async fn client(shared: Arc<Shared>, client: usize) {
    let mut submissions = Vec::new();
    let mut n = 0;
    while !shared.quiet.load(Ordering::SeqCst) {
        tokio::time::sleep(Duration::from_millis(200 + random_u64() % 500)).await;
        match random_u64() % 20 {
            0 => {
                n += 1;
                let key = format!("c{client}-{n}");
                submissions.push(tokio::spawn(submit_pipeline(shared.clone(), key)));
            }
            1..=11 => {
                n += 1;
                let key = format!("c{client}-{n}");
                submissions.push(tokio::spawn(submit(shared.clone(), key)));
            }
            12..=13 => {
                if let Some(id) = shared.oracle.random_acknowledged(random_u64()) {
                    tokio::spawn(cancel(shared.clone(), id));
                }
            }
            _ => {
                if let Some(id) = shared.oracle.random_acknowledged(random_u64()) {
                    read(&shared, &id).await;
                }
            }
        }
    }
    for submission in submissions {
        let _ = submission.await;
    }
}

/// Submits a task under `key`, retrying for a minute on 503, 504 and lost answers.
async fn submit(shared: Arc<Shared>, key: String) {
    let ms = 50 + random_u64() % 3_000;
    let exit = u64::from(random_u64().is_multiple_of(10));
    let body = serde_json::json!({
        "name": key,
        "executors": [{"image": "sim", "command": ["sim", ms.to_string(), exit.to_string()]}],
    })
    .to_string();
    submit_until_answered(shared, key, "/ga4gh/tes/v1/tasks", body, None).await;
}

/// Submits a pipeline job over every input object (one datum each), its outputs going to
/// `out/<key>/`.
async fn submit_pipeline(shared: Arc<Shared>, key: String) {
    let ms = 50 + random_u64() % 2_000;
    // Some datums fail a try or two: exit 1 in one job in eight.
    let exit = u64::from(random_u64().is_multiple_of(8));
    let egress = format!("out/{key}/");
    let body = serde_json::json!({
        "pipeline": {"name": key},
        "transform": {"image": "sim", "cmd": ["sim", ms.to_string(), exit.to_string()]},
        "datum_tries": 3,
        "input": {"atom": {"URI": format!("{BUCKET}/inputs/"), "repo": "in", "glob": "/*"}},
        "egress": {"URI": format!("{BUCKET}/{egress}")},
    })
    .to_string();
    submit_until_answered(shared, key, "/v1/jobs", body, Some(egress)).await;
}

/// Posts `body` under the idempotency key `key`, retrying for a minute on 503, 504 and lost
/// answers, as the CLI does.
async fn submit_until_answered(
    shared: Arc<Shared>,
    key: String,
    uri: &str,
    body: String,
    egress: Option<String>,
) {
    shared.oracle.submitted(&key);
    let deadline = tokio::time::Instant::now() + Duration::from_millis(CLIENT_RETRY_MS);
    loop {
        let node = random_node(&shared);
        let answer = call(&shared, node, "POST", uri, Some(&key), Some(body.clone())).await;
        match answer {
            Ok((200, value)) => {
                let id = value["id"].as_str().unwrap_or_default().to_string();
                shared.trace.event(format!("ack {key} {id} via n{node}"));
                match &egress {
                    Some(egress) => shared.oracle.pipeline_acknowledged(&key, id, egress),
                    None => shared.oracle.acknowledged_as(&key, id),
                }
                return;
            }
            Ok((503 | 504, _)) | Err(_) => {}
            Ok((status, value)) => {
                shared
                    .oracle
                    .violation(format!("submission {key} to n{node}: {status} {value}"));
                return;
            }
        }
        if tokio::time::Instant::now() >= deadline {
            shared.trace.event(format!("gave up {key}"));
            shared.oracle.gave_up(&key);
            return;
        }
        tokio::time::sleep(Duration::from_millis(200 + random_u64() % 300)).await;
    }
}

async fn cancel(shared: Arc<Shared>, id: String) {
    let deadline = tokio::time::Instant::now() + Duration::from_millis(CLIENT_RETRY_MS);
    while tokio::time::Instant::now() < deadline {
        let node = random_node(&shared);
        let uri = format!("/ga4gh/tes/v1/tasks/{id}:cancel");
        match call(&shared, node, "POST", &uri, None, None).await {
            Ok((200, _)) => {
                shared.trace.event(format!("canceled {id} via n{node}"));
                return;
            }
            Ok((503 | 504, _)) | Err(_) => {}
            Ok((status, value)) => {
                shared
                    .oracle
                    .violation(format!("cancel of {id} on n{node}: {status} {value}"));
                return;
            }
        }
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
}

/// Reads an acknowledged task from a random node (a linearizable read): it must be there, and
/// a state once terminal never changes.
async fn read(shared: &Shared, id: &str) {
    let node = random_node(shared);
    let uri = format!("/ga4gh/tes/v1/tasks/{id}?view=MINIMAL");
    let began = tokio::time::Instant::now();
    match call(shared, node, "GET", &uri, None, None).await {
        Ok((200, value)) => {
            let state = value["state"].as_str().unwrap_or_default().to_string();
            if let Some(running) = shared.running(node) {
                let p = running.cluster.progress();
                shared.trace.event(format!(
                    "read {id} {state} on n{node} (term {}, leader {:?}, applied {:?})",
                    p.term, p.leader, p.applied_index
                ));
            }
            shared.oracle.observed(id, &state, node, began);
        }
        Ok((404, _)) => shared
            .oracle
            .violation(format!("acknowledged task {id} not found on n{node}")),
        _ => {}
    }
}

/// After `fault` healed: a write must succeed within `RECOVERY_MS` (tried every 100 ms on
/// some node, each try bounded by the time left).
async fn probe_write(shared: Arc<Shared>, fault: Fault) {
    let start = tokio::time::Instant::now();
    let deadline = start + Duration::from_millis(RECOVERY_MS);
    let mut tries = tokio::task::JoinSet::new();
    let mut round = 0_u64;
    let (done, mut succeeded) = tokio::sync::mpsc::channel::<()>(1);
    loop {
        round += 1;
        let key = format!("probe-{}-{round}", fault.at_ms);
        let shared_try = shared.clone();
        let done = done.clone();
        let node = random_node(&shared);
        tries.spawn(async move {
            let body = serde_json::json!({
                "name": key,
                "executors": [{"image": "sim", "command": ["sim", "1", "0"]}],
            })
            .to_string();
            shared_try.oracle.submitted(&key);
            let answer = call(
                &shared_try,
                node,
                "POST",
                "/ga4gh/tes/v1/tasks",
                Some(&key),
                Some(body),
            )
            .await;
            match answer {
                Ok((200, value)) => {
                    let id = value["id"].as_str().unwrap_or_default().to_string();
                    shared_try.oracle.acknowledged_as(&key, id);
                    let _ = done.try_send(());
                }
                // Whether an unanswered probe was applied stays open: not a submission the
                // oracle requires to exist.
                _ => shared_try.oracle.gave_up(&key),
            }
        });
        tokio::select! {
            biased;
            _ = succeeded.recv() => {
                let took = start.elapsed().as_millis() as u64;
                shared.oracle.recovered(fault.kind, took);
                shared.trace.event(format!("write after {} in {took} ms", fault.kind.name()));
                break;
            }
            () = tokio::time::sleep(Duration::from_millis(100)) => {}
        }
        if tokio::time::Instant::now() >= deadline {
            shared.oracle.violation(format!(
                "no write succeeded within {RECOVERY_MS} ms after the end of {fault}"
            ));
            shared.oracle.recovered(fault.kind, u64::MAX);
            break;
        }
    }
    // Unfinished tries run on; their keys count as given up unless answered.
    tries.detach_all();
}

/// The broken rule, at work until the run goes quiet.
async fn break_rule(shared: Arc<Shared>, rule: BrokenRule) {
    match rule {
        BrokenRule::HastyLeaseExpiry => loop {
            tokio::time::sleep(Duration::from_millis(500)).await;
            let leader = lock(&shared.nodes)
                .iter()
                .flatten()
                .find(|r| r.cluster.is_leader())
                .cloned();
            if let Some(leader) = leader {
                let command = Command::ExpireLeases {
                    lease_ms: 300,
                    by: leader.cluster.node_id(),
                };
                let cluster = leader.cluster.clone();
                // Not awaited: the next round goes on whatever this one's fate.
                drop(
                    leader
                        .scope
                        .spawn(async move { cluster.write(command).await }),
                );
            }
        },
    }
}

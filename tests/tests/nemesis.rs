//! Faults a real network makes (the slow group): three nodes on hosts of their own (network
//! namespaces on a bridge, see `shoal_tests::netns`), partitions that drop packets without
//! closing anything, paused and quickly restarted nodes — and clients submitting throughout.
//!
//! - `a_healed_partition_rejoins_in_about_a_heartbeat_and_deposes_nobody`: a follower cut
//!   off for 2, 8 and 16 s is back within 2 s of the heal, and the leader it comes back to
//!   keeps its term.
//! - `a_seeded_nemesis_loses_no_acknowledged_task_and_hides_no_execution`: per seed, a
//!   random schedule of SIGKILL + restart, SIGSTOP/SIGCONT and partitions of the leader and
//!   of followers; at the end every acknowledged task exists on every node and ended
//!   COMPLETE, no terminal state changed, the nodes agree, every execution (counted outside
//!   shoal, by an observer the tasks report to) is an attempt shown and none was run twice,
//!   and a write succeeded within 2 s of every fault. `SHOAL_NEMESIS_SEEDS` sets the seeds
//!   (`"7"` or `"1,5,9"`, or `"many:20"` for 20 from 1); a failure names its seed and
//!   prints its schedule.
//!
//! Needs root (CI runs as root); elsewhere the tests say so and pass.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail, ensure};
use serde_json::{Value, json};
use shoal_tests::netns::Net;
use shoal_tests::{ClusterOptions, TestCluster, phase, wait_for};

const LEASE_MS: u64 = 3_000;
/// What the issue promises after every fault: a write succeeds again within this.
const WRITE_RECOVERY_MAX: Duration = Duration::from_secs(2);
/// What a healed partition may take to rejoin.
const REJOIN_MAX: Duration = Duration::from_secs(2);
const OBSERVER_PORT: u16 = 9000;

/// `None` (after saying why) when namespaces cannot be built here; an error under CI.
fn network(hosts: usize) -> Result<Option<Arc<Net>>> {
    if !Net::available() {
        if std::env::var_os("CI").is_some() {
            bail!("CI is set but this process cannot build network namespaces (root, iptables)");
        }
        eprintln!("skipping: network namespaces need root and iptables");
        return Ok(None);
    }
    Ok(Some(Arc::new(Net::create(hosts)?)))
}

fn options(net: &Arc<Net>) -> ClusterOptions {
    ClusterOptions {
        net: Some(net.clone()),
        lease_ms: LEASE_MS,
        ..Default::default()
    }
}

/// An HTTP client whose tries give up after a few seconds, as a retrying client's do (a
/// node fails a write over to a new leader itself, well within that).
fn quick_client() -> Result<reqwest::Client> {
    Ok(reqwest::Client::builder()
        .timeout(Duration::from_secs(3))
        .build()?)
}

/// The leader's index, its term, as node `via` sees them.
async fn leader_and_term(cluster: &TestCluster, via: usize) -> Option<(usize, u64)> {
    let view = cluster.status(via, true).await.ok()?;
    let leader = view.leader?;
    let index = cluster.nodes.iter().position(|n| {
        view.members
            .iter()
            .any(|m| m.node_id == leader && m.name == n.name)
    })?;
    Some((index, view.term))
}

#[tokio::test]
async fn a_healed_partition_rejoins_in_about_a_heartbeat_and_deposes_nobody() -> Result<()> {
    let Some(net) = network(3)? else {
        return Ok(());
    };
    let mut cluster = TestCluster::new(3, options(&net))?;
    cluster.start_all()?;
    cluster.wait_formed(3, Duration::from_secs(30)).await?;
    for hold in [2, 8, 16] {
        let (leader, term) = leader_and_term(&cluster, 0).await.context("a leader")?;
        let follower = (leader + 1) % 3;
        phase(&format!("a follower is cut off for {hold} s"));
        let others: Vec<usize> = (0..3).filter(|i| *i != follower).collect();
        net.cut(follower, &others)?;
        tokio::time::sleep(Duration::from_secs(hold)).await;
        let before = cluster.status(leader, true).await?;
        phase("the network heals: the follower is back within 2 s, under the same leader");
        let healed = Instant::now();
        net.heal(follower)?;
        let this = &cluster;
        let target = before.last_log_index.unwrap_or(0);
        let rejoined = wait_for(
            "the follower to catch up",
            Duration::from_secs(30),
            async || {
                let view = this.status(follower, true).await.ok()?;
                (view.applied_index.unwrap_or(0) >= target
                    && view.leader == before.leader
                    && view.term == before.term)
                    .then(|| healed.elapsed())
            },
        )
        .await?;
        eprintln!(
            "rejoin after a {hold} s partition: {:.2} s",
            rejoined.as_secs_f64()
        );
        ensure!(rejoined <= REJOIN_MAX, "rejoined after {rejoined:?}");
        let (leader_now, term_now) = leader_and_term(&cluster, leader).await.context("leader")?;
        ensure!(
            (leader_now, term_now) == (leader, term),
            "the returning follower deposed the leader: term {term} -> {term_now}"
        );
    }
    Ok(())
}

/// One fault of a schedule.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum Fault {
    KillRestart { node: usize, hold_ms: u64 },
    Pause { node: usize, hold_ms: u64 },
    PartitionLeader { hold_ms: u64 },
    PartitionFollower { hold_ms: u64 },
}

impl Fault {
    fn kind(&self) -> &'static str {
        match self {
            Fault::KillRestart { .. } => "kill -9 + restart",
            Fault::Pause { .. } => "pause (SIGSTOP)",
            Fault::PartitionLeader { .. } => "partition of the leader",
            Fault::PartitionFollower { .. } => "partition of a follower",
        }
    }
}

/// A small seeded generator (xorshift64*), so a seed replays its schedule exactly.
struct Rng(u64);

impl Rng {
    fn new(seed: u64) -> Rng {
        Rng(seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1)
    }

    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }

    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
}

/// The schedule of `seed`: `count` faults, each with the node it strikes and how long.
fn schedule(seed: u64, count: usize) -> Vec<Fault> {
    let mut rng = Rng::new(seed);
    (0..count)
        .map(|_| {
            let node = rng.below(3) as usize;
            match rng.below(4) {
                0 => Fault::KillRestart {
                    node,
                    hold_ms: 300 + rng.below(2_000),
                },
                1 => Fault::Pause {
                    node,
                    hold_ms: 1_000 + rng.below(5_000),
                },
                2 => Fault::PartitionLeader {
                    hold_ms: 1_000 + rng.below(5_000),
                },
                _ => Fault::PartitionFollower {
                    hold_ms: 1_000 + rng.below(5_000),
                },
            }
        })
        .collect()
}

fn seeds() -> Vec<u64> {
    let text = std::env::var("SHOAL_NEMESIS_SEEDS").unwrap_or_else(|_| "1,2,3".to_string());
    if let Some(count) = text.strip_prefix("many:") {
        return (1..=count.parse().unwrap_or(3)).collect();
    }
    text.split(',')
        .filter_map(|s| s.trim().parse().ok())
        .collect()
}

/// What a seed's run saw.
#[derive(Debug, Default)]
struct Tally {
    faults: BTreeMap<&'static str, usize>,
    recovery_ms: BTreeMap<&'static str, Vec<u64>>,
    acknowledged: usize,
    lost: usize,
    failed: usize,
    over_executed: usize,
    attempts_without_execution: usize,
}

impl Tally {
    fn add(&mut self, other: Tally) {
        for (kind, count) in other.faults {
            *self.faults.entry(kind).or_default() += count;
        }
        for (kind, times) in other.recovery_ms {
            self.recovery_ms.entry(kind).or_default().extend(times);
        }
        self.acknowledged += other.acknowledged;
        self.lost += other.lost;
        self.failed += other.failed;
        self.over_executed += other.over_executed;
        self.attempts_without_execution += other.attempts_without_execution;
    }

    fn print(&self, seeds: usize) {
        eprintln!("nemesis over {seeds} seeds:");
        for (kind, count) in &self.faults {
            let mut times = self.recovery_ms.get(kind).cloned().unwrap_or_default();
            times.sort_unstable();
            let median = match times.len() {
                0 => 0,
                n if n % 2 == 1 => times[n / 2],
                n => (times[n / 2 - 1] + times[n / 2]) / 2,
            };
            let max = times.last().copied().unwrap_or(0);
            eprintln!(
                "  {kind}: {count} injected; write recovery median {median} ms, max {max} ms"
            );
        }
        eprintln!(
            "  tasks acknowledged {}, lost {}, failed {}, executed more often than shown {}; \
             attempts shown without an execution (lost before they ran) {}",
            self.acknowledged,
            self.lost,
            self.failed,
            self.over_executed,
            self.attempts_without_execution
        );
    }
}

#[tokio::test]
async fn a_seeded_nemesis_loses_no_acknowledged_task_and_hides_no_execution() -> Result<()> {
    if !Net::available() && std::env::var_os("CI").is_none() {
        eprintln!("skipping: network namespaces need root and iptables");
        return Ok(());
    }
    let seeds = seeds();
    let mut total = Tally::default();
    for &seed in &seeds {
        let faults = schedule(seed, 6);
        let tally = run_seed(seed, &faults).await.with_context(|| {
            format!(
                "seed {seed} failed; its schedule: {faults:?} (replay: SHOAL_NEMESIS_SEEDS={seed})"
            )
        })?;
        total.add(tally);
    }
    total.print(seeds.len());
    Ok(())
}

/// Runs a counter in the observer's namespace: every line a task sends lands in `file`.
fn start_observer(net: &Net, file: &std::path::Path) -> Result<std::process::Child> {
    const SERVER: &str = r#"
import socketserver, sys
class Count(socketserver.StreamRequestHandler):
    def handle(self):
        line = self.rfile.readline()
        with open(sys.argv[1], 'ab') as f:
            f.write(line)
socketserver.ThreadingTCPServer.allow_reuse_address = True
socketserver.ThreadingTCPServer((sys.argv[2], int(sys.argv[3])), Count).serve_forever()
"#;
    let child = net
        .command(net.observer(), std::path::Path::new("python3"))
        .args(["-c", SERVER])
        .arg(file)
        .arg(net.ip(net.observer()))
        .arg(OBSERVER_PORT.to_string())
        .stdin(std::process::Stdio::null())
        .spawn()
        .context("start the observer")?;
    Ok(child)
}

/// A task that tells the observer it runs (task id and attempt), then works a while.
fn reporting_task(net: &Net, name: &str) -> Value {
    let script = format!(
        "echo \"$SHOAL_JOB_ID $SHOAL_ATTEMPT\" | busybox nc {} {OBSERVER_PORT}; sleep 2",
        net.ip(net.observer())
    );
    json!({ "name": name, "executors": [{ "image": "busybox", "command": ["sh", "-c", script] }] })
}

/// Submits `task` with `key` to each of `nodes` in turn until one answers with its id
/// (bounded); returns the id and what the failed tries got.
async fn submit(
    client: &reqwest::Client,
    cluster: &TestCluster,
    nodes: &[usize],
    task: &Value,
    key: &str,
) -> Result<(String, Vec<String>)> {
    let started = Instant::now();
    let deadline = started + Duration::from_secs(30);
    let mut tries = Vec::new();
    for turn in 0.. {
        let node = nodes[turn % nodes.len()];
        let url = format!("{}/ga4gh/tes/v1/tasks", cluster.nodes[node].http_url());
        let answer = client
            .post(&url)
            .header("idempotency-key", key)
            .json(task)
            .send()
            .await;
        let outcome = match answer {
            Ok(response) if response.status().is_success() => {
                let body: Value = response.json().await.unwrap_or_default();
                if let Some(id) = body["id"].as_str() {
                    return Ok((id.to_string(), tries));
                }
                format!("an answer without an id: {body}")
            }
            Ok(response) => format!(
                "{} {}",
                response.status(),
                response.text().await.unwrap_or_default()
            ),
            Err(error) => error.to_string(),
        };
        tries.push(format!(
            "{:.2} s: n{}: {outcome}",
            started.elapsed().as_secs_f64(),
            node + 1
        ));
        if Instant::now() > deadline {
            bail!("no node took task {key} within 30 s: {tries:?}");
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    bail!("no node took task {key}")
}

async fn run_seed(seed: u64, faults: &[Fault]) -> Result<Tally> {
    let net = Arc::new(Net::create(3)?);
    let observed = tempfile::NamedTempFile::new()?;
    let mut observer = start_observer(&net, observed.path())?;
    let result = nemesis(seed, faults, &net, observed.path()).await;
    let _ = observer.kill();
    let _ = observer.wait();
    result
}

async fn nemesis(
    seed: u64,
    faults: &[Fault],
    net: &Arc<Net>,
    observed: &std::path::Path,
) -> Result<Tally> {
    let mut cluster = TestCluster::new(3, options(net))?;
    cluster.start_all()?;
    cluster.wait_formed(3, Duration::from_secs(30)).await?;
    let client = quick_client()?;
    let mut tally = Tally::default();
    let acknowledged: Arc<std::sync::Mutex<Vec<String>>> = Arc::default();

    phase(&format!(
        "seed {seed}: clients submit while {} faults strike",
        faults.len()
    ));
    let stop = stop_flag();
    let submitter = {
        let (cluster_urls, net, acknowledged, stop) = (
            cluster
                .nodes
                .iter()
                .map(|n| n.http_url())
                .collect::<Vec<_>>(),
            net.clone(),
            acknowledged.clone(),
            stop.clone(),
        );
        tokio::spawn(
            async move { submit_steadily(seed, cluster_urls, &net, acknowledged, stop).await },
        )
    };
    let mut terminal: BTreeMap<String, String> = BTreeMap::new();
    for (number, fault) in faults.iter().enumerate() {
        *tally.faults.entry(fault.kind()).or_default() += 1;
        let (recovery, probe, tries) =
            inject(&mut cluster, net, &client, *fault, seed, number).await?;
        eprintln!(
            "  a write succeeded {:.2} s after it",
            recovery.as_secs_f64()
        );
        if let Ok(mut ids) = acknowledged.lock() {
            ids.push(probe);
        }
        ensure!(
            recovery <= WRITE_RECOVERY_MAX,
            "fault {number} ({fault:?}): the first write after it took {recovery:?}; tries: {tries:?}"
        );
        tally
            .recovery_ms
            .entry(fault.kind())
            .or_default()
            .push(recovery.as_millis() as u64);
        record_terminal(&cluster, &mut terminal).await?;
    }
    stop.store(true, std::sync::atomic::Ordering::SeqCst);
    submitter.await??;

    phase("everything heals; every acknowledged task ends, once, on every node");
    net.heal_all()?;
    for index in 0..3 {
        let _ = cluster.resume(index);
        if !cluster.nodes[index].is_running() {
            cluster.start(index)?;
        }
    }
    cluster.wait_formed(3, Duration::from_secs(60)).await?;
    let ids = acknowledged
        .lock()
        .map(|ids| ids.clone())
        .unwrap_or_default();
    tally.acknowledged = ids.len();
    check_end(&cluster, &ids, &terminal, observed, &mut tally).await?;
    Ok(tally)
}

/// A stop flag shared with the submitting task.
fn stop_flag() -> Arc<std::sync::atomic::AtomicBool> {
    Arc::new(std::sync::atomic::AtomicBool::new(false))
}

/// Submits a task every 300 ms to a random node (retrying with its key) until `stop`.
async fn submit_steadily(
    seed: u64,
    urls: Vec<String>,
    net: &Net,
    acknowledged: Arc<std::sync::Mutex<Vec<String>>>,
    stop: Arc<std::sync::atomic::AtomicBool>,
) -> Result<()> {
    let client = quick_client()?;
    let mut rng = Rng::new(seed ^ 0xC11E);
    let mut number = 0;
    while !stop.load(std::sync::atomic::Ordering::SeqCst) {
        number += 1;
        let key = format!("seed{seed}-task{number}");
        let task = reporting_task(net, &key);
        let mut node = rng.below(urls.len() as u64) as usize;
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let answer = client
                .post(format!("{}/ga4gh/tes/v1/tasks", urls[node]))
                .header("idempotency-key", &key)
                .json(&task)
                .send()
                .await;
            if let Ok(response) = answer
                && response.status().is_success()
                && let Ok(body) = response.json::<Value>().await
                && let Some(id) = body["id"].as_str()
            {
                if let Ok(mut ids) = acknowledged.lock() {
                    ids.push(id.to_string());
                }
                break;
            }
            if Instant::now() > deadline {
                bail!("no node took {key} within 30 s");
            }
            node = (node + 1) % urls.len();
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    Ok(())
}

/// Injects `fault`, measures how long until a write succeeds again (through a node the
/// fault spares), holds the fault, and undoes it; returns the time and the probe task's id.
async fn inject(
    cluster: &mut TestCluster,
    net: &Net,
    client: &reqwest::Client,
    fault: Fault,
    seed: u64,
    number: usize,
) -> Result<(Duration, String, Vec<String>)> {
    let (leader, _) = leader_and_term(cluster, 0)
        .await
        .or(leader_and_term(cluster, 1).await)
        .context("no leader known before a fault")?;
    let (struck, hold_ms) = match fault {
        Fault::KillRestart { node, hold_ms } | Fault::Pause { node, hold_ms } => (node, hold_ms),
        Fault::PartitionLeader { hold_ms } => (leader, hold_ms),
        Fault::PartitionFollower { hold_ms } => ((leader + 1) % 3, hold_ms),
    };
    let others: Vec<usize> = (0..3).filter(|i| *i != struck).collect();
    eprintln!("fault {number}: {fault:?} on n{}", struck + 1);
    let injected = Instant::now();
    match fault {
        Fault::KillRestart { .. } => cluster.kill(struck)?,
        Fault::Pause { .. } => cluster.pause(struck)?,
        Fault::PartitionLeader { .. } | Fault::PartitionFollower { .. } => {
            net.cut(struck, &others)?
        }
    }
    let probe = reporting_task(net, &format!("seed{seed}-probe{number}"));
    let (probe_id, tries) = submit(
        client,
        cluster,
        &others,
        &probe,
        &format!("seed{seed}-probe{number}"),
    )
    .await?;
    let recovery = injected.elapsed();
    let hold = Duration::from_millis(hold_ms).saturating_sub(injected.elapsed());
    tokio::time::sleep(hold).await;
    match fault {
        Fault::KillRestart { .. } => cluster.start(struck)?,
        Fault::Pause { .. } => cluster.resume(struck)?,
        Fault::PartitionLeader { .. } | Fault::PartitionFollower { .. } => net.heal(struck)?,
    }
    // The next fault finds a leader again.
    let this = &*cluster;
    wait_for(
        "a leader after the fault",
        Duration::from_secs(30),
        async || leader_and_term(this, others[0]).await,
    )
    .await?;
    Ok((recovery, probe_id, tries))
}

/// Notes each task's terminal state the first time a node shows it.
async fn record_terminal(cluster: &TestCluster, seen: &mut BTreeMap<String, String>) -> Result<()> {
    for node in 0..3 {
        let Ok(tasks) = all_tasks(cluster, node).await else {
            continue;
        };
        for task in tasks {
            let (Some(id), Some(state)) = (task["id"].as_str(), task["state"].as_str()) else {
                continue;
            };
            if ["COMPLETE", "EXECUTOR_ERROR", "SYSTEM_ERROR", "CANCELED"].contains(&state) {
                seen.entry(id.to_string())
                    .or_insert_with(|| state.to_string());
            }
        }
        return Ok(());
    }
    Ok(())
}

/// Every task node `node` lists (BASIC view, all pages).
async fn all_tasks(cluster: &TestCluster, node: usize) -> Result<Vec<Value>> {
    let mut tasks = Vec::new();
    let mut token = String::new();
    loop {
        let page: Value = cluster
            .get(
                node,
                &format!("/ga4gh/tes/v1/tasks?view=BASIC&page_size=2047&page_token={token}"),
            )
            .await?;
        tasks.extend(page["tasks"].as_array().cloned().unwrap_or_default());
        match page["next_page_token"].as_str() {
            Some(next) => token = next.to_string(),
            None => return Ok(tasks),
        }
    }
}

async fn check_end(
    cluster: &TestCluster,
    ids: &[String],
    terminal: &BTreeMap<String, String>,
    observed: &std::path::Path,
    tally: &mut Tally,
) -> Result<()> {
    let this = cluster;
    wait_for(
        "every acknowledged task to end",
        Duration::from_secs(120),
        async || {
            let tasks = all_tasks(this, 0).await.ok()?;
            let ended: BTreeSet<&str> = tasks
                .iter()
                .filter(|t| {
                    t["state"] != "QUEUED"
                        && t["state"] != "INITIALIZING"
                        && t["state"] != "RUNNING"
                })
                .filter_map(|t| t["id"].as_str())
                .collect();
            ids.iter()
                .all(|id| ended.contains(id.as_str()))
                .then_some(())
        },
    )
    .await?;
    // The nodes agree once each has applied as far as the others.
    let this = cluster;
    wait_for("the nodes to agree", Duration::from_secs(30), async || {
        let views: Vec<_> = cluster_views(this).await?;
        let applied: BTreeSet<u64> = views.iter().filter_map(|v| v.applied_index).collect();
        (applied.len() == 1).then_some(())
    })
    .await?;
    let per_node: Vec<BTreeMap<String, (String, usize)>> = {
        let mut all = Vec::new();
        for node in 0..3 {
            let tasks = all_tasks(cluster, node).await?;
            all.push(
                tasks
                    .iter()
                    .filter_map(|t| {
                        let logs = t["logs"].as_array().map_or(0, Vec::len);
                        Some((
                            t["id"].as_str()?.to_string(),
                            (t["state"].as_str()?.to_string(), logs),
                        ))
                    })
                    .collect(),
            );
        }
        all
    };
    ensure!(
        per_node[0] == per_node[1] && per_node[1] == per_node[2],
        "the nodes disagree"
    );
    let tasks = &per_node[0];
    for id in ids {
        match tasks.get(id) {
            None => tally.lost += 1,
            Some((state, _)) if state != "COMPLETE" => {
                let task: Value = cluster
                    .get(0, &format!("/ga4gh/tes/v1/tasks/{id}?view=FULL"))
                    .await
                    .unwrap_or_default();
                eprintln!("task {id} ended {state}: {}", task["logs"]);
                tally.failed += 1
            }
            Some(_) => {}
        }
    }
    for (id, state) in terminal {
        let now = tasks.get(id).map(|(s, _)| s.as_str());
        ensure!(
            now == Some(state.as_str()),
            "task {id} ended {state}, later shows {now:?}"
        );
    }
    // Executions as the observer counted them, against the attempts each task shows.
    let text = std::fs::read_to_string(observed)?;
    let mut executions: BTreeMap<String, Vec<u64>> = BTreeMap::new();
    for line in text.lines() {
        let mut words = line.split_whitespace();
        if let (Some(id), Some(attempt)) = (words.next(), words.next().and_then(|a| a.parse().ok()))
        {
            executions.entry(id.to_string()).or_default().push(attempt);
        }
    }
    let mut unseen = 0;
    for (id, (state, attempts)) in tasks {
        // The attempt that completed a task ran and told the observer so: without that the
        // count below would check nothing (an observer nobody reaches sees no executions).
        if state == "COMPLETE"
            && !executions
                .get(id)
                .is_some_and(|a| a.contains(&(*attempts as u64)))
        {
            eprintln!(
                "task {id}: COMPLETE in attempt {attempts}, which the observer never heard from"
            );
            unseen += 1;
        }
        let mut ran = executions.get(id).cloned().unwrap_or_default();
        let count = ran.len();
        ran.sort_unstable();
        ran.dedup();
        if count > *attempts || ran.len() < count || ran.iter().any(|a| *a as usize > *attempts) {
            eprintln!(
                "task {id}: {attempts} attempts shown, executions {:?}",
                executions.get(id)
            );
            tally.over_executed += 1;
        }
        tally.attempts_without_execution += attempts.saturating_sub(ran.len());
    }
    ensure!(tally.lost == 0, "{} acknowledged tasks lost", tally.lost);
    ensure!(
        tally.failed == 0,
        "{} acknowledged tasks did not complete",
        tally.failed
    );
    ensure!(
        unseen == 0,
        "{unseen} completed tasks ran without telling the observer (is busybox installed?)"
    );
    ensure!(
        tally.over_executed == 0,
        "{} tasks ran more often than they show",
        tally.over_executed
    );
    Ok(())
}

/// Each node's own view of the cluster.
async fn cluster_views(cluster: &TestCluster) -> Option<Vec<shoal_node::api::ClusterView>> {
    let mut views = Vec::new();
    for node in 0..3 {
        views.push(cluster.status(node, true).await.ok()?);
    }
    Some(views)
}

//! Prints the work queue's figures on local clusters of one and three nodes (`--nodes`):
//! (a) orchestration throughput — TES tasks through the `noop` executor, submitted over HTTP
//!     with 64 in flight (`--in-flight`) spread across the nodes, tasks/s from the first
//!     submission to the last task's end (its recorded end time), the log entries per task
//!     (how well writes shared entries: node 0's applied index before and after) and the
//!     CPU the nodes spent per task (user + system from `/proc`, without the steps they
//!     started: the figure to compare on a noisy machine);
//! (b) the same with the `process` executor running `true`, beside the rate of spawning
//!     `true` in a plain loop, and in a plain loop inside the very sandbox the process
//!     executor builds (bwrap, made to die with its starter as the node's steps are): the
//!     executor's real limit;
//! (c) submit-to-COMPLETE latency of a single `true` task through the `process` executor,
//!     as a client sees it (p50, p99), and the medians of its stages by the task's own
//!     timestamps;
//! (d) the same through the `docker` executor in the test image (`SHOAL_TEST_IMAGE`, default
//!     `shoal-test/busybox:latest`, built by `scripts/test.sh`), beside `docker run --rm` of
//!     the same image and command (three nodes);
//! (e) with `--observed-rounds N`: (a) on fresh three-node clusters, alternately alone and
//!     watched by a Prometheus scraping every node each second and the dashboard open in
//!     headless Chromium (`prometheus`, `chromium`, `chromedriver`), N rounds each; prints the
//!     medians.
//!
//! Use a release build of `shoal` through `SHOAL_BIN=target/release/shoal`; `--help` lists
//! the options. With `--json`, the lines for people go to stderr and one JSON object with
//! every figure goes to stdout.

use std::time::{Duration, Instant, SystemTime};

use anyhow::{Context, Result, bail};
use futures::stream::{self, StreamExt};
use serde_json::json;
use shoal_tests::{ClusterOptions, TestCluster};

const FORMATION: Duration = Duration::from_secs(30);
/// Submissions (and end-time reads) in flight at once, `--in-flight`.
static IN_FLIGHT: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(64);
/// The most `--in-flight` may ask for.
const IN_FLIGHT_MAX: usize = 4096;

fn in_flight() -> usize {
    IN_FLIGHT.load(std::sync::atomic::Ordering::Relaxed)
}

const USAGE: &str = "\
usage: tasks_bench [options]      (SHOAL_BIN=target/release/shoal)

  --nodes LIST            cluster sizes to measure, e.g. 1,3 (default 1,3)
  --tasks N               noop tasks per throughput run (default 10000)
  --process-tasks N       process-executor tasks per throughput run (default 10000)
  --latency-runs N        tasks for the submit-to-COMPLETE latency (default 200)
  --docker-runs N         docker-executor latency runs; 0 skips (default 100)
  --observed-rounds N     rounds of the cost-of-watching comparison; 0 skips (default 0)
  --in-flight N           submissions in flight at once in (a), (b) and (e) (default 64)
  --json                  print one JSON object with every figure on stdout
  -h, --help              this text
";

struct Args {
    nodes: Vec<usize>,
    tasks: usize,
    process_tasks: usize,
    latency_runs: usize,
    docker_runs: usize,
    observed_rounds: usize,
    in_flight: usize,
    json: bool,
}

/// Most nodes one measured cluster may have.
const NODES_MAX: usize = 9;

fn parse_args() -> Result<Option<Args>> {
    let mut args = Args {
        nodes: vec![1, 3],
        tasks: 10_000,
        process_tasks: 10_000,
        latency_runs: 200,
        docker_runs: 100,
        observed_rounds: 0,
        in_flight: 64,
        json: false,
    };
    let mut words = std::env::args().skip(1);
    while let Some(word) = words.next() {
        match word.as_str() {
            "-h" | "--help" => return Ok(None),
            "--json" => {
                args.json = true;
                continue;
            }
            _ => {}
        }
        let text = words
            .next()
            .with_context(|| format!("{word} needs a value\n\n{USAGE}"))?;
        if word == "--nodes" {
            args.nodes = text
                .split(',')
                .map(|n| match n.trim().parse::<usize>() {
                    Ok(n) if (1..=NODES_MAX).contains(&n) => Ok(n),
                    _ => bail!("--nodes: {n:?} is not a cluster size from 1 to {NODES_MAX}"),
                })
                .collect::<Result<_>>()?;
            continue;
        }
        let value: usize = text
            .parse()
            .with_context(|| format!("{word}: {text:?} is not a whole number"))?;
        match word.as_str() {
            "--tasks" => args.tasks = value,
            "--process-tasks" => args.process_tasks = value,
            "--latency-runs" => args.latency_runs = value,
            "--docker-runs" => args.docker_runs = value,
            "--observed-rounds" => args.observed_rounds = value,
            "--in-flight" => args.in_flight = value,
            other => bail!("unknown argument {other}\n\n{USAGE}"),
        }
    }
    if args.tasks == 0 || args.process_tasks == 0 || args.latency_runs == 0 {
        bail!("--tasks, --process-tasks and --latency-runs need at least 1");
    }
    if !(1..=IN_FLIGHT_MAX).contains(&args.in_flight) {
        bail!(
            "--in-flight: {} is not from 1 to {IN_FLIGHT_MAX}",
            args.in_flight
        );
    }
    Ok(Some(args))
}

/// Whether lines for people go to stderr (`--json`: stdout carries the JSON object).
static JSON_OUTPUT: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);

/// Prints a line for people: on stdout, or on stderr with `--json`.
macro_rules! say {
    ($($arg:tt)*) => {
        if JSON_OUTPUT.load(std::sync::atomic::Ordering::Relaxed) {
            eprintln!($($arg)*)
        } else {
            println!($($arg)*)
        }
    };
}

fn true_task() -> serde_json::Value {
    task_in("busybox")
}

fn task_in(image: &str) -> serde_json::Value {
    json!({ "executors": [{ "image": image, "command": ["true"] }] })
}

async fn start(nodes: usize, executor: &str, slots: u32) -> Result<TestCluster> {
    let options = ClusterOptions {
        executor: executor.to_string(),
        slots,
        bootstrap_expect: nodes,
        ..Default::default()
    };
    let mut cluster = TestCluster::new(nodes, options)?;
    cluster.start_all()?;
    cluster.wait_formed(nodes, FORMATION).await?;
    Ok(cluster)
}

/// Submits `count` tasks with `in_flight()` at once, round-robin over the nodes; returns the
/// ids and the time the first submission went out.
async fn submit_all(cluster: &TestCluster, count: usize) -> Result<(Vec<String>, SystemTime)> {
    let started = SystemTime::now();
    let task = true_task();
    let ids: Vec<Result<String>> = stream::iter(0..count)
        .map(|i| {
            let task = &task;
            async move { cluster.submit_task(i % cluster.nodes.len(), task).await }
        })
        .buffer_unordered(in_flight())
        .collect()
        .await;
    Ok((ids.into_iter().collect::<Result<_>>()?, started))
}

/// How many of `ids` have ended, from one listing of every task (a few requests, so the
/// waiting client does not load the cluster it measures).
async fn ended(cluster: &TestCluster, ids: &std::collections::HashSet<&str>) -> Result<usize> {
    const TERMINAL: [&str; 4] = ["COMPLETE", "EXECUTOR_ERROR", "SYSTEM_ERROR", "CANCELED"];
    let mut count = 0;
    let mut token = String::new();
    loop {
        let page: serde_json::Value = cluster
            .get(
                0,
                &format!("/ga4gh/tes/v1/tasks?page_size=2047&page_token={token}"),
            )
            .await?;
        for task in page["tasks"].as_array().into_iter().flatten() {
            let ours = task["id"].as_str().is_some_and(|id| ids.contains(id));
            let state = task["state"].as_str().unwrap_or("");
            if ours && TERMINAL.contains(&state) {
                count += 1;
            }
        }
        match page["next_page_token"].as_str() {
            Some(next) => token = next.to_string(),
            None => return Ok(count),
        }
    }
}

/// Waits for every task to end.
async fn wait_ended(cluster: &TestCluster, ids: &[String]) -> Result<()> {
    let wanted: std::collections::HashSet<&str> = ids.iter().map(String::as_str).collect();
    let deadline = Instant::now() + Duration::from_secs(600);
    while ended(cluster, &wanted).await? < ids.len() {
        if Instant::now() > deadline {
            bail!("tasks did not end within 600 s");
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    Ok(())
}

/// Checks that every task (all ended) ended COMPLETE; returns the latest end time they
/// record.
async fn last_end(cluster: &TestCluster, ids: &[String]) -> Result<SystemTime> {
    let ends: Vec<Result<SystemTime>> = stream::iter(ids.iter().enumerate())
        .map(|(i, id)| async move {
            let task = cluster.task(i % cluster.nodes.len(), id, "BASIC").await?;
            if task["state"] != "COMPLETE" {
                bail!("task {id} ended {}", task["state"]);
            }
            let end = task["logs"][0]["end_time"].as_str().context("end_time")?;
            Ok(humantime::parse_rfc3339(end)?)
        })
        .buffer_unordered(in_flight())
        .collect()
        .await;
    ends.into_iter()
        .try_fold(SystemTime::UNIX_EPOCH, |latest, end| Ok(latest.max(end?)))
}

async fn throughput(nodes: usize, executor: &str, slots: u32, count: usize) -> Result<Throughput> {
    let cluster = start(nodes, executor, slots).await?;
    measure(&cluster, executor, count).await
}

/// CPU time (user + system) a process has used, in clock ticks (1/100 s on Linux).
fn cpu_ticks(pid: u32) -> u64 {
    let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
        return 0;
    };
    // Fields after the command name, which ends with the last ')': state is the first.
    let fields: Vec<&str> = stat
        .rsplit_once(')')
        .map(|(_, rest)| rest.split_whitespace().collect())
        .unwrap_or_default();
    let field = |i: usize| {
        fields
            .get(i)
            .and_then(|f| f.parse::<u64>().ok())
            .unwrap_or(0)
    };
    field(11) + field(12)
}

/// CPU ticks of every process whose command name is `prometheus` or starts with `chrom`
/// (chromedriver, the browser and its helpers): on a machine that runs nothing else of the
/// kind, the observers this bench started.
fn observer_ticks() -> u64 {
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return 0;
    };
    entries
        .filter_map(|e| e.ok()?.file_name().to_str()?.parse::<u32>().ok())
        .filter(|pid| {
            std::fs::read_to_string(format!("/proc/{pid}/comm"))
                .is_ok_and(|comm| comm.starts_with("prometheus") || comm.starts_with("chrom"))
        })
        .map(cpu_ticks)
        .sum()
}

/// One run of the cost-of-watching comparison.
struct Watched {
    measured: Throughput,
    /// CPU Prometheus and the browser spent during the run, in cores.
    observer_cores: f64,
}

/// Throughput of the noop executor while a Prometheus scrapes every node each second and
/// the dashboard is open on the first node (in headless Chromium), or without them.
async fn watched_throughput(count: usize, observed: bool) -> Result<Watched> {
    use shoal_tests::observe;
    let cluster = start(3, "noop", 64).await?;
    let mut observers = None;
    if observed {
        let prometheus = observe::start_prometheus(&cluster, None)?;
        let driver = observe::start_chromedriver()?;
        let page = observe::browser(&driver).await?;
        page.goto(&format!("{}/", cluster.nodes[0].http_url()))
            .await?;
        observe::wait_page(
            &page,
            "the dashboard's members",
            "return document.querySelectorAll('#members tbody tr').length === 3",
        )
        .await?;
        let http = reqwest::Client::new();
        shoal_tests::wait_for("Prometheus to scrape the nodes", FORMATION, async || {
            let up = observe::query(&http, &prometheus, "sum(up)").await.ok()?;
            (up.first()?.1 == 3.0).then_some(())
        })
        .await?;
        observers = Some((prometheus, driver, page));
    }
    let observers_before = observer_ticks();
    let wall = Instant::now();
    let label = if observed { "noop (watched)" } else { "noop" };
    let measured = measure(&cluster, label, count).await?;
    let wall = wall.elapsed().as_secs_f64();
    let observer_cpu_s = observer_ticks().saturating_sub(observers_before) as f64 / 100.0;
    if let Some((_, _, page)) = observers {
        let _ = page.close().await;
    }
    let watched = Watched {
        measured,
        observer_cores: observer_cpu_s / wall,
    };
    say!(
        "    Prometheus and the browser took {:.2} cores",
        watched.observer_cores
    );
    Ok(watched)
}

/// What one throughput run measured.
struct Throughput {
    rate: f64,
    /// CPU the nodes' own processes (not the steps they start) spent per task, in ms, from
    /// the first submission until every task had ended: less noisy than the rate on a
    /// shared machine, since another tenant's load slows a run but does not add to it.
    node_cpu_ms_per_task: f64,
}

async fn measure(cluster: &TestCluster, executor: &str, count: usize) -> Result<Throughput> {
    let pids: Vec<u32> = cluster.nodes.iter().filter_map(|n| n.pid()).collect();
    let node_ticks = || pids.iter().map(|pid| cpu_ticks(*pid)).sum::<u64>();
    let first_index = cluster.status(0, true).await?.applied_index.unwrap_or(0);
    let ticks_before = node_ticks();
    let (ids, started) = submit_all(cluster, count).await?;
    let submitted = started.elapsed()?;
    wait_ended(cluster, &ids).await?;
    // Before the end times are read, one request per task.
    let node_cpu_s = node_ticks().saturating_sub(ticks_before) as f64 / 100.0;
    let end = last_end(cluster, &ids).await?;
    let total = end.duration_since(started)?;
    let entries = cluster.status(0, true).await?.applied_index.unwrap_or(0) - first_index;
    let rate = count as f64 / total.as_secs_f64();
    let node_cpu_ms_per_task = 1000.0 * node_cpu_s / count as f64;
    say!(
        "  {executor:7} {count} tasks: submitted in {:.2} s, all ended after {:.2} s: {rate:.0} tasks/s \
         ({:.2} log entries per task; the nodes' CPU {node_cpu_ms_per_task:.3} ms per task)",
        submitted.as_secs_f64(),
        total.as_secs_f64(),
        entries as f64 / count as f64
    );
    Ok(Throughput {
        rate,
        node_cpu_ms_per_task,
    })
}

fn spawn_rate(count: usize) -> Result<f64> {
    let started = Instant::now();
    for _ in 0..count {
        let status = std::process::Command::new("true").status()?;
        if !status.success() {
            bail!("true failed");
        }
    }
    Ok(count as f64 / started.elapsed().as_secs_f64())
}

fn percentile(samples: &mut [Duration], q: f64) -> f64 {
    samples.sort();
    let rank = ((q * samples.len() as f64).ceil() as usize).clamp(1, samples.len());
    samples[rank - 1].as_secs_f64() * 1000.0
}

/// Submit-to-COMPLETE of one task at a time, round-robin over the nodes, and where that time
/// went (medians of the stages the task's own timestamps show).
struct Latency {
    p50: f64,
    p99: f64,
    /// Created (the leader's proposal of the submission) to the executor's start: the
    /// submission's commit, the claim, the attempt's set-up.
    to_start: f64,
    /// The executor's start to its end: the sandbox and the command.
    running: f64,
    /// The executor's end to the attempt's recorded end: the completion's write.
    report: f64,
    /// The attempt's recorded end to the client's first answer showing COMPLETE.
    observed: f64,
}

async fn latency(
    nodes: usize,
    executor: &str,
    task: &serde_json::Value,
    runs: usize,
) -> Result<Latency> {
    let cluster = start(nodes, executor, 2).await?;
    let mut samples = Vec::with_capacity(runs);
    let mut stages: [Vec<f64>; 4] = Default::default();
    for i in 0..runs {
        let node = i % nodes;
        let started = Instant::now();
        let id = cluster.submit_task(node, task).await?;
        loop {
            let task = cluster.task(node, &id, "MINIMAL").await?;
            match task["state"].as_str() {
                Some("COMPLETE") => break,
                Some("EXECUTOR_ERROR" | "SYSTEM_ERROR" | "CANCELED") => bail!("task {id}: {task}"),
                _ => tokio::time::sleep(Duration::from_millis(1)).await,
            }
        }
        samples.push(started.elapsed());
        let seen = SystemTime::now();
        let task = cluster.task(node, &id, "BASIC").await?;
        let at = |time: &serde_json::Value| {
            let time = time.as_str().context("a timestamp")?;
            humantime::parse_rfc3339(time).with_context(|| format!("timestamp {time:?}"))
        };
        // The attempt that completed: the last (an earlier one may have been lost).
        let attempt = task["logs"]
            .as_array()
            .and_then(|logs| logs.last())
            .with_context(|| format!("task {id} has no attempt: {task}"))?;
        let times = [
            at(&task["creation_time"])?,
            at(&attempt["logs"][0]["start_time"])?,
            at(&attempt["logs"][0]["end_time"])?,
            at(&attempt["end_time"])?,
            seen,
        ];
        for (stage, pair) in stages.iter_mut().zip(times.windows(2)) {
            // Recorded by the nodes in whole milliseconds: a stage may show as slightly negative.
            let ms = match pair[1].duration_since(pair[0]) {
                Ok(gap) => gap.as_secs_f64() * 1000.0,
                Err(early) => -early.duration().as_secs_f64() * 1000.0,
            };
            stage.push(ms);
        }
    }
    // The upper middle of an even count.
    let [to_start, running, report, observed] = stages.map(|mut values| {
        values.sort_by(f64::total_cmp);
        values[values.len() / 2]
    });
    Ok(Latency {
        p50: percentile(&mut samples, 0.5),
        p99: percentile(&mut samples, 0.99),
        to_start,
        running,
        report,
        observed,
    })
}

/// `docker run --rm IMAGE true`, one at a time: (p50, p99) in ms.
fn docker_run_latency(image: &str, runs: usize) -> Result<(f64, f64)> {
    let mut samples = Vec::with_capacity(runs);
    for _ in 0..runs {
        let started = Instant::now();
        let status = std::process::Command::new("docker")
            .args(["run", "--rm", image, "true"])
            .stdout(std::process::Stdio::null())
            .status()?;
        if !status.success() {
            bail!("docker run --rm {image} true failed");
        }
        samples.push(started.elapsed());
    }
    Ok((
        percentile(&mut samples, 0.5),
        percentile(&mut samples, 0.99),
    ))
}

async fn container_latency(runs: usize) -> Result<serde_json::Value> {
    let image = std::env::var("SHOAL_TEST_IMAGE")
        .unwrap_or_else(|_| "shoal-test/busybox:latest".to_string());
    let Latency { p50, p99, .. } = latency(3, "docker", &task_in(&image), runs).await?;
    say!(
        "  shoal, docker executor, `true` in {image}: p50 {p50:.1} ms, p99 {p99:.1} ms (n = {runs})"
    );
    let (raw50, raw99) = docker_run_latency(&image, runs)?;
    say!("  docker run --rm {image} true: p50 {raw50:.1} ms, p99 {raw99:.1} ms (n = {runs})");
    say!(
        "  shoal / docker run: p50 {:.2}, p99 {:.2}",
        p50 / raw50,
        p99 / raw99
    );
    Ok(json!({
        "runs": runs,
        "shoal_p50_ms": p50, "shoal_p99_ms": p99,
        "docker_run_p50_ms": raw50, "docker_run_p99_ms": raw99,
    }))
}

/// `true` run one at a time inside the process executor's sandbox, started and captured by
/// the executor's own code (bwrap, made to die with this process as the node's steps are):
/// runs per second.
async fn sandboxed_spawn_rate(count: usize) -> Result<f64> {
    let sandbox = shoal_worker::ProcessSandbox::default();
    let argv = ["true".to_string()];
    let started = Instant::now();
    for _ in 0..count {
        let outcome = sandbox
            .run_bare_step(&argv)
            .await
            .map_err(|e| anyhow::anyhow!("the sandbox: {e}"))?;
        if outcome.exit_code != 0 {
            bail!("`true` in the sandbox failed: {}", outcome.stderr_tail);
        }
    }
    Ok(count as f64 / started.elapsed().as_secs_f64())
}

#[tokio::main]
async fn main() -> Result<()> {
    let Some(args) = parse_args()? else {
        print!("{USAGE}");
        return Ok(());
    };
    JSON_OUTPUT.store(args.json, std::sync::atomic::Ordering::Relaxed);
    IN_FLIGHT.store(args.in_flight, std::sync::atomic::Ordering::Relaxed);
    let mut figures = serde_json::Map::new();
    say!("shoal binary: {}", shoal_tests::shoal_bin().display());
    figures.insert("shoal_bin".into(), json!(shoal_tests::shoal_bin()));

    say!("\nspawning `true` one at a time, without shoal (the limits of (b)):");
    let spawns = args.process_tasks.min(10_000);
    let raw = spawn_rate(spawns)?;
    say!("  in a plain loop: {raw:.0}/s");
    let sandboxed = if shoal_worker::bwrap_available() {
        let rate = sandboxed_spawn_rate(args.process_tasks.min(2_000)).await?;
        say!("  in the process executor's sandbox (bwrap, as the executor starts it): {rate:.0}/s");
        Some(rate)
    } else {
        say!("  bwrap is not installed: no sandboxed loop (and no sandbox for the executor)");
        None
    };
    figures.insert("spawn_true_per_s".into(), json!(raw));
    figures.insert("spawn_sandboxed_true_per_s".into(), json!(sandboxed));

    let mut by_size = serde_json::Map::new();
    for &nodes in &args.nodes {
        let word = if nodes == 1 { "node" } else { "nodes" };
        say!("\n--- {nodes} {word} ---");
        say!(
            "(a) orchestration throughput, noop executor, {} submissions in flight:",
            in_flight()
        );
        let noop = throughput(nodes, "noop", 64, args.tasks).await?;
        say!("(b) process executor running `true`:");
        let process_run = throughput(nodes, "process", 2, args.process_tasks).await?;
        let process = process_run.rate;
        say!("  {:.2} of the plain loop", process / raw);
        if let Some(sandboxed) = sandboxed {
            say!("  {:.2} of the sandboxed loop", process / sandboxed);
        }
        say!("(c) latency:");
        let latency = latency(nodes, "process", &true_task(), args.latency_runs).await?;
        let Latency { p50, p99, .. } = latency;
        say!(
            "  submit to COMPLETE, one `true` task at a time: p50 {p50:.1} ms, p99 {p99:.1} ms \
             (n = {})",
            args.latency_runs
        );
        say!(
            "  medians of its stages: created to executor start {:.1} ms, executor {:.1} ms, \
             executor end to attempt end {:.1} ms, attempt end to seen COMPLETE {:.1} ms",
            latency.to_start,
            latency.running,
            latency.report,
            latency.observed
        );
        by_size.insert(
            nodes.to_string(),
            json!({
                "noop_tasks_per_s": noop.rate,
                "noop_node_cpu_ms_per_task": noop.node_cpu_ms_per_task,
                "process_tasks_per_s": process,
                "process_node_cpu_ms_per_task": process_run.node_cpu_ms_per_task,
                "process_of_plain_loop": process / raw,
                "process_of_sandboxed_loop": sandboxed.map(|rate| process / rate),
                "latency_p50_ms": p50,
                "latency_p99_ms": p99,
                "latency_stages_median_ms": {
                    "created_to_executor_start": latency.to_start,
                    "executor": latency.running,
                    "executor_end_to_attempt_end": latency.report,
                    "attempt_end_to_seen": latency.observed,
                },
            }),
        );
    }
    figures.insert("nodes".into(), serde_json::Value::Object(by_size));
    figures.insert(
        "runs".into(),
        json!({ "tasks": args.tasks, "process_tasks": args.process_tasks,
                "latency_runs": args.latency_runs, "in_flight": args.in_flight }),
    );
    if args.docker_runs > 0 {
        say!("\n(d) container latency, one task at a time:");
        figures.insert("docker".into(), container_latency(args.docker_runs).await?);
    }
    if args.observed_rounds > 0 {
        say!(
            "\n(e) the cost of watching: noop throughput alone, and with a Prometheus scraping \
             every node each second and the dashboard open, alternating:"
        );
        let (mut alone, mut watched) = (Vec::new(), Vec::new());
        for _ in 0..args.observed_rounds {
            alone.push(watched_throughput(args.tasks, false).await?);
            watched.push(watched_throughput(args.tasks, true).await?);
        }
        let median = |runs: &[Watched], figure: fn(&Watched) -> f64| {
            let mut values: Vec<f64> = runs.iter().map(figure).collect();
            values.sort_by(f64::total_cmp);
            values[values.len() / 2]
        };
        let rate = |w: &Watched| w.measured.rate;
        let cpu = |w: &Watched| w.measured.node_cpu_ms_per_task;
        let (alone_rate, watched_rate) = (median(&alone, rate), median(&watched, rate));
        let (alone_cpu, watched_cpu) = (median(&alone, cpu), median(&watched, cpu));
        let observers = median(&watched, |w| w.observer_cores);
        say!(
            "  medians of {} rounds: alone {alone_rate:.0} tasks/s, watched {watched_rate:.0} \
             tasks/s ({:+.1} %); nodes' CPU per task alone {alone_cpu:.3} ms, watched \
             {watched_cpu:.3} ms ({:+.1} %); Prometheus and the browser {observers:.2} cores",
            args.observed_rounds,
            100.0 * (watched_rate - alone_rate) / alone_rate,
            100.0 * (watched_cpu - alone_cpu) / alone_cpu,
        );
        figures.insert(
            "watched".into(),
            json!({
                "rounds": args.observed_rounds,
                "alone_tasks_per_s": alone_rate, "watched_tasks_per_s": watched_rate,
                "alone_node_cpu_ms_per_task": alone_cpu,
                "watched_node_cpu_ms_per_task": watched_cpu,
                "observer_cores": observers,
            }),
        );
    }
    if args.json {
        println!("{}", serde_json::Value::Object(figures));
    }
    Ok(())
}

//! Prints the work queue's figures on a local three-node cluster:
//! (a) orchestration throughput — TES tasks through the `noop` executor, submitted over HTTP
//!     with 64 in flight spread across the three nodes, tasks/s from the first submission to
//!     the last task's end (its recorded end time);
//! (b) the same with the `process` executor running `true`, beside the rate of spawning
//!     `true` in a plain loop on this machine;
//! (c) submit-to-COMPLETE latency of a single `true` task through the `process` executor,
//!     as a client sees it (p50, p99);
//! (d) the same through the `docker` executor in the test image (`SHOAL_TEST_IMAGE`, default
//!     `shoal-test/busybox:latest`, built by `scripts/test.sh`), beside `docker run --rm` of
//!     the same image and command.
//!
//! (e) with `--observed-rounds N`: (a) on fresh clusters, alternately alone and watched by a
//!     Prometheus scraping every node each second and the dashboard open in headless Chromium
//!     (`prometheus`, `chromium`, `chromedriver`), N rounds each; prints the medians.
//!
//! `tasks_bench [--tasks N] [--process-tasks N] [--latency-runs N] [--docker-runs N]
//! [--observed-rounds N]`; use a release build of `shoal` through
//! `SHOAL_BIN=target/release/shoal`. `--docker-runs 0` skips (d).

use std::time::{Duration, Instant, SystemTime};

use anyhow::{Context, Result, bail};
use futures::stream::{self, StreamExt};
use serde_json::json;
use shoal_tests::{ClusterOptions, TestCluster};

const FORMATION: Duration = Duration::from_secs(30);
const IN_FLIGHT: usize = 64;

struct Args {
    tasks: usize,
    process_tasks: usize,
    latency_runs: usize,
    docker_runs: usize,
    observed_rounds: usize,
}

fn parse_args() -> Result<Args> {
    let mut args = Args {
        tasks: 10_000,
        process_tasks: 10_000,
        latency_runs: 200,
        docker_runs: 100,
        observed_rounds: 0,
    };
    let mut words = std::env::args().skip(1);
    while let Some(word) = words.next() {
        let value: usize = words
            .next()
            .with_context(|| format!("{word} needs a value"))?
            .parse()?;
        match word.as_str() {
            "--tasks" => args.tasks = value,
            "--process-tasks" => args.process_tasks = value,
            "--latency-runs" => args.latency_runs = value,
            "--docker-runs" => args.docker_runs = value,
            "--observed-rounds" => args.observed_rounds = value,
            other => bail!("unknown argument {other}"),
        }
    }
    Ok(args)
}

fn true_task() -> serde_json::Value {
    task_in("busybox")
}

fn task_in(image: &str) -> serde_json::Value {
    json!({ "executors": [{ "image": image, "command": ["true"] }] })
}

async fn start(executor: &str, slots: u32) -> Result<TestCluster> {
    let options = ClusterOptions {
        executor: executor.to_string(),
        slots,
        ..Default::default()
    };
    let mut cluster = TestCluster::new(3, options)?;
    cluster.start_all()?;
    cluster.wait_formed(3, FORMATION).await?;
    Ok(cluster)
}

/// Submits `count` tasks with `IN_FLIGHT` at once, round-robin over the nodes; returns the
/// ids and the time the first submission went out.
async fn submit_all(cluster: &TestCluster, count: usize) -> Result<(Vec<String>, SystemTime)> {
    let started = SystemTime::now();
    let task = true_task();
    let ids: Vec<Result<String>> = stream::iter(0..count)
        .map(|i| {
            let task = &task;
            async move { cluster.submit_task(i % 3, task).await }
        })
        .buffer_unordered(IN_FLIGHT)
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

/// Waits for every task to end COMPLETE; returns the latest end time they record.
async fn last_end(cluster: &TestCluster, ids: &[String]) -> Result<SystemTime> {
    let wanted: std::collections::HashSet<&str> = ids.iter().map(String::as_str).collect();
    let deadline = Instant::now() + Duration::from_secs(600);
    while ended(cluster, &wanted).await? < ids.len() {
        if Instant::now() > deadline {
            bail!("tasks did not end within 600 s");
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let ends: Vec<Result<SystemTime>> = stream::iter(ids.iter().enumerate())
        .map(|(i, id)| async move {
            let task = cluster.task(i % 3, id, "BASIC").await?;
            if task["state"] != "COMPLETE" {
                bail!("task {id} ended {}", task["state"]);
            }
            let end = task["logs"][0]["end_time"].as_str().context("end_time")?;
            Ok(humantime::parse_rfc3339(end)?)
        })
        .buffer_unordered(IN_FLIGHT)
        .collect()
        .await;
    ends.into_iter()
        .try_fold(SystemTime::UNIX_EPOCH, |latest, end| Ok(latest.max(end?)))
}

async fn throughput(executor: &str, slots: u32, count: usize) -> Result<f64> {
    let cluster = start(executor, slots).await?;
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
    rate: f64,
    /// CPU the three nodes spent per task, in ms.
    node_cpu_ms_per_task: f64,
    /// CPU Prometheus and the browser spent during the run, in cores.
    observer_cores: f64,
}

/// Throughput of the noop executor while a Prometheus scrapes every node each second and
/// the dashboard is open on the first node (in headless Chromium), or without them.
async fn watched_throughput(count: usize, observed: bool) -> Result<Watched> {
    use shoal_tests::observe;
    let mut cluster = start("noop", 64).await?;
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
    let pids: Vec<u32> = cluster.nodes.iter_mut().filter_map(|n| n.pid()).collect();
    let node_ticks = || pids.iter().map(|pid| cpu_ticks(*pid)).sum::<u64>();
    let (nodes_before, observers_before) = (node_ticks(), observer_ticks());
    let wall = Instant::now();
    let label = if observed { "noop (watched)" } else { "noop" };
    let rate = measure(&cluster, label, count).await?;
    let wall = wall.elapsed().as_secs_f64();
    let node_cpu_s = node_ticks().saturating_sub(nodes_before) as f64 / 100.0;
    let observer_cpu_s = observer_ticks().saturating_sub(observers_before) as f64 / 100.0;
    if let Some((_, _, page)) = observers {
        let _ = page.close().await;
    }
    let watched = Watched {
        rate,
        node_cpu_ms_per_task: 1000.0 * node_cpu_s / count as f64,
        observer_cores: observer_cpu_s / wall,
    };
    println!(
        "    nodes' CPU {:.3} ms per task; Prometheus and the browser took {:.2} cores",
        watched.node_cpu_ms_per_task, watched.observer_cores
    );
    Ok(watched)
}

async fn measure(cluster: &TestCluster, executor: &str, count: usize) -> Result<f64> {
    let (ids, started) = submit_all(cluster, count).await?;
    let submitted = started.elapsed()?;
    let end = last_end(cluster, &ids).await?;
    let total = end.duration_since(started)?;
    println!(
        "  {executor:7} {count} tasks: submitted in {:.2} s, all ended after {:.2} s: {:.0} tasks/s",
        submitted.as_secs_f64(),
        total.as_secs_f64(),
        count as f64 / total.as_secs_f64()
    );
    Ok(count as f64 / total.as_secs_f64())
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

/// Submit-to-COMPLETE of one task at a time, round-robin over the nodes: (p50, p99) in ms.
async fn latency(executor: &str, task: &serde_json::Value, runs: usize) -> Result<(f64, f64)> {
    let cluster = start(executor, 2).await?;
    let mut samples = Vec::with_capacity(runs);
    for i in 0..runs {
        let node = i % 3;
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
    }
    Ok((
        percentile(&mut samples, 0.5),
        percentile(&mut samples, 0.99),
    ))
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

async fn container_latency(runs: usize) -> Result<()> {
    let image = std::env::var("SHOAL_TEST_IMAGE")
        .unwrap_or_else(|_| "shoal-test/busybox:latest".to_string());
    let (p50, p99) = latency("docker", &task_in(&image), runs).await?;
    println!(
        "  shoal, docker executor, `true` in {image}: p50 {p50:.1} ms, p99 {p99:.1} ms (n = {runs})"
    );
    let (raw50, raw99) = docker_run_latency(&image, runs)?;
    println!("  docker run --rm {image} true: p50 {raw50:.1} ms, p99 {raw99:.1} ms (n = {runs})");
    println!(
        "  shoal / docker run: p50 {:.2}, p99 {:.2}",
        p50 / raw50,
        p99 / raw99
    );
    Ok(())
}

#[tokio::main]
async fn main() -> Result<()> {
    let args = parse_args()?;
    println!("shoal binary: {}", shoal_tests::shoal_bin().display());
    println!("\n(a) orchestration throughput, noop executor, {IN_FLIGHT} submissions in flight:");
    throughput("noop", 64, args.tasks).await?;
    println!("\n(b) process executor running `true`:");
    let shoal = throughput("process", 2, args.process_tasks).await?;
    let raw = spawn_rate(args.process_tasks.min(10_000))?;
    println!(
        "  spawning `true` in a plain loop: {raw:.0}/s; shoal reaches {:.2} of it",
        shoal / raw
    );
    println!("\n(c) latency:");
    let (p50, p99) = latency("process", &true_task(), args.latency_runs).await?;
    println!(
        "  submit to COMPLETE, one `true` task at a time: p50 {p50:.1} ms, p99 {p99:.1} ms (n = {})",
        args.latency_runs
    );
    if args.docker_runs > 0 {
        println!("\n(d) container latency, one task at a time:");
        container_latency(args.docker_runs).await?;
    }
    if args.observed_rounds > 0 {
        println!(
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
        let rate = |w: &Watched| w.rate;
        let cpu = |w: &Watched| w.node_cpu_ms_per_task;
        let (alone_rate, watched_rate) = (median(&alone, rate), median(&watched, rate));
        let (alone_cpu, watched_cpu) = (median(&alone, cpu), median(&watched, cpu));
        println!(
            "  medians of {} rounds: alone {alone_rate:.0} tasks/s, watched {watched_rate:.0} \
             tasks/s ({:+.1} %); nodes' CPU per task alone {alone_cpu:.3} ms, watched \
             {watched_cpu:.3} ms ({:+.1} %); Prometheus and the browser {:.2} cores",
            args.observed_rounds,
            100.0 * (watched_rate - alone_rate) / alone_rate,
            100.0 * (watched_cpu - alone_cpu) / alone_cpu,
            median(&watched, |w| w.observer_cores),
        );
    }
    Ok(())
}

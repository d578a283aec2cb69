//! Prints the pipeline figures on a local three-node cluster:
//! (a) orchestration throughput — one job of `--datums` datums (a local input of that many
//!     empty files, glob `/*/*`) through the `noop` executor: datums/s from the submission to
//!     the job's recorded end, and how long the steward took to list the input;
//! (b) memory — the resident set (RSS) of each node holding a job of `--memory-datums` datums:
//!     once listed (every datum pending, the nodes drained so nothing runs), and at the end
//!     after every datum ran;
//! (c) listing rate — a job over `--s3-objects` objects on the S3 server named by
//!     `SHOAL_TEST_S3_ENDPOINT` (`_KEY`, `_SECRET`), the nodes drained: objects listed into
//!     datums per second. Skipped without a server, or with `--s3-objects 0`;
//! (d) re-run — a job of `--rerun-datums` local files, then the same job again with nothing
//!     changed: the second skips every datum (an incremental re-run); both times printed.
//!
//! Use a release build of `shoal` through `SHOAL_BIN=target/release/shoal`.

use std::path::Path;
use std::time::{Duration, Instant, SystemTime};

use anyhow::{Context, Result, bail};
use clap::Parser;
use futures::{StreamExt, TryStreamExt};
use serde_json::{Value, json};
use shoal_tests::s3::{S3Server, TestBucket};
use shoal_tests::{ClusterOptions, TestCluster};

const FORMATION: Duration = Duration::from_secs(30);
/// Files per directory of a generated local input.
const FILES_PER_DIR: usize = 1000;

#[derive(Debug, Parser)]
#[command(about = "Pipeline throughput, memory and listing figures on three local nodes")]
struct Args {
    /// Datums of the throughput job (a).
    #[arg(long, default_value_t = 100_000)]
    datums: usize,
    /// Datums of the memory job (b); 0 skips it.
    #[arg(long, default_value_t = 1_000_000)]
    memory_datums: usize,
    /// Objects of the S3 listing (c); 0 skips it.
    #[arg(long, default_value_t = 100_000)]
    s3_objects: usize,
    /// Datums of the re-run job (d); 0 skips it.
    #[arg(long, default_value_t = 10_000)]
    rerun_datums: usize,
    /// Attempt slots per node (the noop executor runs nothing: a node with many cores).
    #[arg(long, default_value_t = 1024)]
    slots: u32,
}

async fn start(slots: u32, s3: Option<S3Server>) -> Result<TestCluster> {
    let options = ClusterOptions {
        executor: "noop".to_string(),
        slots,
        s3,
        ..Default::default()
    };
    let mut cluster = TestCluster::new(3, options)?;
    cluster.start_all()?;
    cluster.wait_formed(3, FORMATION).await?;
    Ok(cluster)
}

/// `count` empty files below `dir`, `FILES_PER_DIR` per subdirectory (glob `/*/*`).
fn make_input(dir: &Path, count: usize) -> Result<()> {
    for first in (0..count).step_by(FILES_PER_DIR) {
        let sub = dir.join(format!("{:05}", first / FILES_PER_DIR));
        std::fs::create_dir_all(&sub)?;
        for i in first..(first + FILES_PER_DIR).min(count) {
            std::fs::File::create(sub.join(format!("{i:07}")))?;
        }
    }
    Ok(())
}

fn noop_spec(input_uri: &str, glob: &str, egress: &str) -> Value {
    json!({
        "pipeline": { "name": "bench" },
        "transform": { "image": "busybox", "cmd": ["true"] },
        "input": { "atom": { "repo": "in", "URI": input_uri, "glob": glob } },
        "egress": { "URI": egress },
    })
}

/// Polls the job every 200 ms until `done`; returns (listing finished after, the job).
async fn wait_done(cluster: &TestCluster, id: &str, since: Instant) -> Result<(Duration, Value)> {
    let mut listed = None;
    loop {
        let job = cluster.job(0, id).await?;
        if listed.is_none() && job["listing"] == false {
            listed = Some(since.elapsed());
        }
        match job["state"].as_str() {
            Some("done") => return Ok((listed.unwrap_or_default(), job)),
            Some("error" | "canceled") => bail!("job {id} ended {}", job["state"]),
            _ => tokio::time::sleep(Duration::from_millis(200)).await,
        }
    }
}

async fn throughput(args: &Args) -> Result<()> {
    let cluster = start(args.slots, None).await?;
    let input = cluster.files_dir().join("in");
    let made = Instant::now();
    make_input(&input, args.datums)?;
    println!(
        "  input: {} files made in {:.1} s",
        args.datums,
        made.elapsed().as_secs_f64()
    );
    let uri = format!("file://{}/", input.display());
    let egress = format!("file://{}/out/", cluster.files_dir().display());
    let started_at = SystemTime::now();
    let since = Instant::now();
    let created = cluster
        .submit_job(0, &noop_spec(&uri, "/*/*", &egress))
        .await?;
    let id = created["id"].as_str().context("job id")?;
    let (listed, job) = wait_done(&cluster, id, since).await?;
    let ended = humantime::parse_rfc3339(job["ended"].as_str().context("ended")?)?;
    let total = ended.duration_since(started_at)?;
    let rate = args.datums as f64 / total.as_secs_f64();
    println!(
        "  {} datums: listed after {:.2} s, job done after {:.2} s: {rate:.0} datums/s",
        args.datums,
        listed.as_secs_f64(),
        total.as_secs_f64()
    );
    Ok(())
}

/// Resident set of each node, in MiB, from /proc.
fn rss_mib(cluster: &TestCluster) -> Vec<f64> {
    cluster
        .nodes
        .iter()
        .map(|node| {
            let status = node
                .pid()
                .and_then(|pid| std::fs::read_to_string(format!("/proc/{pid}/status")).ok())
                .unwrap_or_default();
            status
                .lines()
                .find_map(|line| line.strip_prefix("VmRSS:"))
                .and_then(|kb| kb.trim().trim_end_matches("kB").trim().parse::<f64>().ok())
                .map_or(0.0, |kb| kb / 1024.0)
        })
        .collect()
}

fn show_rss(label: &str, rss: &[f64]) {
    let each: Vec<String> = rss.iter().map(|mib| format!("{mib:.0}")).collect();
    println!("  {label}: RSS per node {} MiB", each.join(" / "));
}

async fn set_drain(cluster: &TestCluster, draining: bool) -> Result<()> {
    let action = if draining { "drain" } else { "undrain" };
    for node in &cluster.nodes {
        let (status, body) = cluster
            .post(0, &format!("/v1/cluster/nodes/{}:{action}", node.name))
            .await?;
        if status != 200 {
            bail!("{action} {}: {status} {body}", node.name);
        }
    }
    Ok(())
}

/// Waits until the steward has listed the whole input; returns the time it took.
async fn wait_listed(cluster: &TestCluster, id: &str, since: Instant) -> Result<Duration> {
    loop {
        let job = cluster.job(0, id).await?;
        if job["listing"] == false {
            return Ok(since.elapsed());
        }
        if job["state"] == "error" {
            bail!("job {id} failed: {}", job["error"]);
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

async fn memory(args: &Args) -> Result<()> {
    let cluster = start(args.slots, None).await?;
    let input = cluster.files_dir().join("in");
    let made = Instant::now();
    make_input(&input, args.memory_datums)?;
    println!(
        "  input: {} files made in {:.1} s",
        args.memory_datums,
        made.elapsed().as_secs_f64()
    );
    show_rss("idle cluster", &rss_mib(&cluster));
    set_drain(&cluster, true).await?;
    let uri = format!("file://{}/", input.display());
    let egress = format!("file://{}/out/", cluster.files_dir().display());
    let since = Instant::now();
    let created = cluster
        .submit_job(0, &noop_spec(&uri, "/*/*", &egress))
        .await?;
    let id = created["id"].as_str().context("job id")?;
    let listed = wait_listed(&cluster, id, since).await?;
    println!(
        "  {} datums listed in {:.1} s",
        args.memory_datums,
        listed.as_secs_f64()
    );
    show_rss("every datum pending", &rss_mib(&cluster));
    set_drain(&cluster, false).await?;
    let mut peak = vec![0.0; cluster.nodes.len()];
    loop {
        for (peak, now) in peak.iter_mut().zip(rss_mib(&cluster)) {
            *peak = f64::max(*peak, now);
        }
        let job = cluster.job(0, id).await?;
        if job["state"] == "done" {
            println!(
                "  the job ran in {:.1} s ({} datums/s)",
                since.elapsed().as_secs_f64() - listed.as_secs_f64(),
                job["datums_per_second"]
            );
            break;
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
    show_rss("peak while running (sampled each second)", &peak);
    show_rss("every datum done", &rss_mib(&cluster));
    Ok(())
}

async fn listing(args: &Args, s3: S3Server) -> Result<()> {
    let bucket = TestBucket::create(&s3).await?;
    let seeded = Instant::now();
    futures::stream::iter(0..args.s3_objects)
        .map(|i| {
            bucket.put(
                format!("in/{:03}/{i:07}", i / FILES_PER_DIR).leak(),
                Vec::new(),
            )
        })
        .buffer_unordered(64)
        .try_collect::<()>()
        .await?;
    println!(
        "  {} objects put in {:.1} s",
        args.s3_objects,
        seeded.elapsed().as_secs_f64()
    );
    let raw = Instant::now();
    let keys = bucket.list("in").await?.len();
    let raw = raw.elapsed();
    println!(
        "  a plain listing of the bucket (object_store): {keys} keys in {:.2} s: {:.0} objects/s",
        raw.as_secs_f64(),
        keys as f64 / raw.as_secs_f64()
    );
    let cluster = start(args.slots, Some(s3)).await?;
    set_drain(&cluster, true).await?;
    let since = Instant::now();
    let spec = noop_spec(&bucket.url("in/"), "/*/*", &bucket.url("out/"));
    let created = cluster.submit_job(0, &spec).await?;
    let id = created["id"].as_str().context("job id")?;
    let listed = wait_listed(&cluster, id, since).await?;
    let job = cluster.job(0, id).await?;
    println!(
        "  {} datums listed in {:.2} s: {:.0} objects/s",
        job["counts"]["total"],
        listed.as_secs_f64(),
        args.s3_objects as f64 / listed.as_secs_f64()
    );
    Ok(())
}

async fn rerun(args: &Args) -> Result<()> {
    let cluster = start(args.slots, None).await?;
    let input = cluster.files_dir().join("in");
    make_input(&input, args.rerun_datums)?;
    let uri = format!("file://{}/", input.display());
    let egress = format!("file://{}/out/", cluster.files_dir().display());
    let mut spec = noop_spec(&uri, "/*/*", &egress);
    spec["pipeline"]["name"] = json!("rerun");
    for run in ["first run", "unchanged re-run"] {
        let since = Instant::now();
        let created = cluster.submit_job(0, &spec).await?;
        let id = created["id"].as_str().context("job id")?;
        let (_, job) = wait_done(&cluster, id, since).await?;
        println!(
            "  {run}: {} datums done, {} skipped, in {:.2} s",
            job["counts"]["done"],
            job["counts"]["skipped"],
            since.elapsed().as_secs_f64()
        );
    }
    Ok(())
}

#[tokio::main]
async fn main() -> Result<()> {
    let args = Args::parse();
    println!("shoal binary: {}", shoal_tests::shoal_bin().display());
    println!(
        "\n(a) throughput, noop executor, {} slots per node:",
        args.slots
    );
    throughput(&args).await?;
    if args.memory_datums > 0 {
        println!("\n(b) memory of a {}-datum job:", args.memory_datums);
        memory(&args).await?;
    }
    match (args.s3_objects, S3Server::from_env()?) {
        (0, _) => {}
        (_, None) => println!("\n(c) skipped: no S3 server"),
        (_, Some(s3)) => {
            println!("\n(c) listing {} S3 objects:", args.s3_objects);
            listing(&args, s3).await?;
        }
    }
    if args.rerun_datums > 0 {
        println!(
            "\n(d) re-run of an unchanged {}-datum job:",
            args.rerun_datums
        );
        rerun(&args).await?;
    }
    Ok(())
}

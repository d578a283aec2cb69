//! Prints the cluster core's figures on this machine: the latency of a write sent to a
//! follower (forwarded to the leader and answered by the follower) beside one sent to the
//! leader, and leader failover — from SIGKILL of the leader until a survivor reports a new
//! leader, and until a write through a survivor succeeds.
//!
//! Failover is measured in steady state: after each round the killed node is restarted and
//! caught up before the next leader is killed.
//!
//! `cluster_bench [--writes N] [--rounds R]`; use a release build of `shoal` through
//! `SHOAL_BIN=target/release/shoal` for representative numbers.

use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use shoal_tests::{ClusterOptions, TestCluster, wait_for};

const FORMATION: Duration = Duration::from_secs(30);

struct Args {
    writes: usize,
    rounds: usize,
}

fn parse_args() -> Result<Args> {
    let mut args = Args {
        writes: 300,
        rounds: 10,
    };
    let mut words = std::env::args().skip(1);
    while let Some(word) = words.next() {
        let value = words
            .next()
            .with_context(|| format!("{word} needs a value"))?;
        match word.as_str() {
            "--writes" => args.writes = value.parse()?,
            "--rounds" => args.rounds = value.parse()?,
            other => bail!("unknown argument {other}; use --writes N --rounds R"),
        }
    }
    Ok(args)
}

/// Median and 99th percentile (nearest rank) of `samples`, in milliseconds.
fn summary(samples: &mut [Duration]) -> String {
    samples.sort();
    let at = |q: f64| {
        let rank = ((q * samples.len() as f64).ceil() as usize).clamp(1, samples.len());
        samples[rank - 1].as_secs_f64() * 1000.0
    };
    format!(
        "median {:8.2} ms   p99 {:8.2} ms   (n = {})",
        at(0.5),
        at(0.99),
        samples.len()
    )
}

async fn write_latencies(
    cluster: &TestCluster,
    via: usize,
    writes: usize,
) -> Result<Vec<Duration>> {
    let mut samples = Vec::with_capacity(writes);
    for round in 0..writes {
        let action = if round % 2 == 0 { "drain" } else { "undrain" };
        let started = Instant::now();
        let (status, body) = cluster
            .post(via, &format!("/v1/cluster/nodes/n1:{action}"))
            .await?;
        samples.push(started.elapsed());
        if status != 200 {
            bail!("write answered {status}: {body}");
        }
    }
    Ok(samples)
}

/// One failover: (time to a new leader, time to a successful write).
async fn failover(cluster: &mut TestCluster) -> Result<(Duration, Duration)> {
    let leader = cluster.leader_index().await?;
    let old = cluster.status(leader, true).await?.node_id;
    let survivor = (leader + 1) % cluster.nodes.len();
    cluster.kill(leader)?;
    let started = Instant::now();
    let this = &*cluster;
    wait_for("a new leader", FORMATION, async || {
        let view = this.status(survivor, true).await.ok()?;
        view.leader.filter(|l| *l != old)
    })
    .await?;
    let elected = started.elapsed();
    wait_for("a write through a survivor", FORMATION, async || {
        let (status, _) = this
            .post(survivor, "/v1/cluster/nodes/n2:undrain")
            .await
            .ok()?;
        (status == 200).then_some(())
    })
    .await?;
    let written = started.elapsed();
    cluster.start(leader)?;
    cluster.wait_formed(3, FORMATION).await?;
    // Measure steady-state failover: the restarted node first catches up with the leader
    // (a node still replaying its log when the next leader dies costs an extra election).
    let this = &*cluster;
    let target = this.status(survivor, false).await?.applied_index;
    wait_for("the restarted node to catch up", FORMATION, async || {
        (this.status(leader, true).await.ok()?.applied_index >= target).then_some(())
    })
    .await?;
    Ok((elected, written))
}

#[tokio::main]
async fn main() -> Result<()> {
    let args = parse_args()?;
    println!("shoal binary: {}", shoal_tests::shoal_bin().display());
    let mut cluster = TestCluster::new(3, ClusterOptions::default())?;
    cluster.start_all()?;
    cluster.wait_formed(3, FORMATION).await?;
    let leader = cluster.leader_index().await?;
    let follower = (leader + 1) % 3;

    println!(
        "\nwrite latency, {} sequential writes each (drain/undrain through HTTP):",
        args.writes
    );
    let mut to_follower = write_latencies(&cluster, follower, args.writes).await?;
    let mut to_leader = write_latencies(&cluster, leader, args.writes).await?;
    println!("  sent to a follower  {}", summary(&mut to_follower));
    println!("  sent to the leader  {}", summary(&mut to_leader));

    println!("\nleader failover after SIGKILL, {} rounds:", args.rounds);
    let (mut elected, mut written) = (Vec::new(), Vec::new());
    for round in 0..args.rounds {
        let (e, w) = failover(&mut cluster).await?;
        eprintln!(
            "  round {}: new leader after {:?}, write after {:?}",
            round + 1,
            e,
            w
        );
        elected.push(e);
        written.push(w);
    }
    println!("  new leader reported {}", summary(&mut elected));
    println!("  first write accepted {}", summary(&mut written));
    Ok(())
}

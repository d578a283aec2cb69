//! Pipeline jobs under faults (the slow group): a node killed mid-job, a node paused past its
//! lease and resumed after its datums ran elsewhere, the steward killed while it lists the
//! input. Three real nodes, a real S3 server; each test is a story in phases.

use std::collections::BTreeSet;
use std::time::Duration;

use anyhow::{Result, ensure};
use futures::{StreamExt, TryStreamExt};
use serde_json::{Value, json};
use shoal_tests::s3::{S3Server, TestBucket};
use shoal_tests::{ClusterOptions, TestCluster, phase, wait_for};

const JOB_TIMEOUT: Duration = Duration::from_secs(120);
const LEASE_MS: u64 = 3_000;

fn options(s3: &S3Server) -> ClusterOptions {
    ClusterOptions {
        s3: Some(s3.clone()),
        lease_ms: LEASE_MS,
        ..Default::default()
    }
}

/// Each datum sleeps, then writes its attempt number to `/pfs/out/<datum id>`.
fn sleepy_spec(bucket: &TestBucket, seconds: u32) -> Value {
    let script = format!("sleep {seconds}; echo $SHOAL_ATTEMPT > /pfs/out/$SHOAL_DATUM_ID");
    json!({
        "pipeline": { "name": "sleepy" },
        "transform": { "image": "busybox", "cmd": ["sh", "-c", script] },
        "input": { "atom": { "repo": "in", "URI": bucket.url("in/"), "glob": "/*" } },
        "egress": { "URI": bucket.url("out/") },
    })
}

async fn seed(bucket: &TestBucket, count: usize) -> Result<()> {
    futures::stream::iter(0..count)
        .map(|i| bucket.put(format!("in/{i:05}").leak(), vec![b'x']))
        .buffer_unordered(16)
        .try_collect::<()>()
        .await
}

/// Index of a running node other than `not` that is running one of the job's datums.
async fn node_running_datums(cluster: &mut TestCluster, id: &str, not: usize) -> Result<usize> {
    let names: Vec<String> = cluster.nodes.iter().map(|n| n.name.clone()).collect();
    let running = cluster.running();
    let this = &*cluster;
    wait_for("a datum to run on another node", JOB_TIMEOUT, async || {
        let datums = this.datums(not, id, Some("running")).await.ok()?;
        datums.iter().find_map(|datum| {
            let node = datum["attempts"].as_array()?.last()?["node"].as_str()?;
            let index = names.iter().position(|n| n == node)?;
            (index != not && running.contains(&index)).then_some(index)
        })
    })
    .await
}

/// Checks, asking node `via`, that every datum published exactly its committed attempt's
/// output and that no staging object is left; returns the datums.
async fn check_outputs(
    cluster: &TestCluster,
    via: usize,
    bucket: &TestBucket,
    id: &str,
) -> Result<Vec<Value>> {
    let datums = cluster.datums(via, id, None).await?;
    let published: Vec<String> = bucket
        .list("out")
        .await?
        .into_iter()
        .filter(|key| !key.contains(".shoal-staging"))
        .collect();
    let expected: BTreeSet<String> = datums
        .iter()
        .filter_map(|d| Some(format!("out/{}", d["id"].as_str()?)))
        .collect();
    ensure!(
        published.iter().cloned().collect::<BTreeSet<_>>() == expected
            && published.len() == expected.len(),
        "published {published:?}, expected {expected:?}"
    );
    for datum in &datums {
        let committed = datum["attempts"]
            .as_array()
            .and_then(|a| a.iter().rev().find(|a| a["outcome"] == "succeeded"))
            .and_then(|a| a["attempt"].as_u64())
            .unwrap_or(0);
        let key = format!("out/{}", datum["id"].as_str().unwrap_or_default());
        let content = String::from_utf8(bucket.get(&key).await?)?;
        ensure!(
            content.trim() == committed.to_string(),
            "{key} holds attempt {content:?}, the committed attempt is {committed}: {datum}"
        );
    }
    let this = bucket;
    wait_for(
        "no staging object to be left",
        Duration::from_secs(30),
        async || {
            this.list("out/.shoal-staging")
                .await
                .ok()?
                .is_empty()
                .then_some(())
        },
    )
    .await?;
    Ok(datums)
}

#[tokio::test]
async fn a_node_killed_mid_job_loses_nothing_and_every_output_is_published_once() -> Result<()> {
    let Some(s3) = S3Server::from_env()? else {
        return Ok(());
    };
    let bucket = TestBucket::create(&s3).await?;
    seed(&bucket, 24).await?;
    let mut cluster = TestCluster::formed(3, options(&s3)).await?;
    let leader = cluster.leader_index().await?;

    phase("a job of 24 datums starts on every node");
    let created = cluster.submit_job(leader, &sleepy_spec(&bucket, 2)).await?;
    let id = created["id"].as_str().unwrap_or_default().to_string();
    let victim = node_running_datums(&mut cluster, &id, leader).await?;

    phase("a node running datums is killed (-9); its datums run again elsewhere");
    cluster.kill(victim)?;
    let job = cluster.wait_job(leader, &id, JOB_TIMEOUT).await?;
    ensure!(
        job["state"] == "done" && job["counts"]["done"] == 24,
        "{job}"
    );

    phase("every output is there once, from its committed attempt; no staging is left");
    let datums = check_outputs(&cluster, leader, &bucket, &id).await?;
    let rerun = datums
        .iter()
        .filter(|d| d["attempts"].as_array().is_some_and(|a| a.len() > 1))
        .count();
    ensure!(rerun > 0, "the killed node's datums were not run again");
    Ok(())
}

#[tokio::test]
async fn a_node_paused_past_its_lease_publishes_nothing_when_it_comes_back() -> Result<()> {
    let Some(s3) = S3Server::from_env()? else {
        return Ok(());
    };
    let bucket = TestBucket::create(&s3).await?;
    seed(&bucket, 12).await?;
    let mut cluster = TestCluster::formed(3, options(&s3)).await?;
    let leader = cluster.leader_index().await?;

    phase("a job of 12 datums runs; a node running some of them is paused (SIGSTOP)");
    let created = cluster.submit_job(leader, &sleepy_spec(&bucket, 3)).await?;
    let id = created["id"].as_str().unwrap_or_default().to_string();
    let zombie = node_running_datums(&mut cluster, &id, leader).await?;
    let zombie_name = cluster.nodes[zombie].name.clone();
    cluster.pause(zombie)?;

    phase("its claims expire; the other nodes run its datums and finish the job");
    let job = cluster.wait_job(leader, &id, JOB_TIMEOUT).await?;
    ensure!(
        job["state"] == "done" && job["counts"]["done"] == 12,
        "{job}"
    );
    let datums = cluster.datums(leader, &id, None).await?;
    let lost: Vec<&Value> = datums
        .iter()
        .filter(|d| {
            d["attempts"].as_array().is_some_and(|a| {
                a.iter()
                    .any(|a| a["node"] == zombie_name.as_str() && a["outcome"] == "lease_expired")
            })
        })
        .collect();
    ensure!(
        !lost.is_empty(),
        "no claim of the paused node expired: {datums:?}"
    );

    phase("the node resumes: its late outputs are never published, its staging is removed");
    cluster.resume(zombie)?;
    let this = &cluster;
    wait_for("the resumed node to catch up", JOB_TIMEOUT, async || {
        let view = this.status(zombie, true).await.ok()?;
        let leader_view = this.status(leader, true).await.ok()?;
        (view.applied_index >= leader_view.applied_index).then_some(())
    })
    .await?;
    check_outputs(&cluster, leader, &bucket, &id).await?;
    Ok(())
}

#[tokio::test]
async fn a_steward_killed_while_listing_leaves_the_job_to_another_node_which_finishes_it()
-> Result<()> {
    let Some(s3) = S3Server::from_env()? else {
        return Ok(());
    };
    let bucket = TestBucket::create(&s3).await?;
    seed(&bucket, 2_000).await?;
    let mut cluster = TestCluster::formed(
        3,
        ClusterOptions {
            executor: "noop".to_string(),
            slots: 32,
            ..options(&s3)
        },
    )
    .await?;
    let leader = cluster.leader_index().await?;
    let steward = (leader + 1) % 3;

    phase("a follower takes a job over 2,000 objects and is killed as it starts listing");
    let created = cluster
        .submit_job(steward, &sleepy_spec(&bucket, 0))
        .await?;
    let id = created["id"].as_str().unwrap_or_default().to_string();
    cluster.kill(steward)?;

    phase("after its lease the leader stewards the job, lists the rest and it ends done");
    let job = cluster.wait_job(leader, &id, JOB_TIMEOUT).await?;
    ensure!(
        job["state"] == "done" && job["counts"]["done"] == 2_000 && job["counts"]["total"] == 2_000,
        "{job}"
    );
    ensure!(
        job["steward"] == cluster.nodes[leader].name.as_str(),
        "steward {}",
        job["steward"]
    );
    let datums = cluster.datums(leader, &id, None).await?;
    let ids: BTreeSet<&str> = datums.iter().filter_map(|d| d["id"].as_str()).collect();
    ensure!(ids.len() == 2_000, "{} distinct datums", ids.len());

    phase("the killed node comes back and joins in");
    cluster.start(steward)?;
    cluster.wait_formed(3, Duration::from_secs(30)).await?;
    Ok(())
}

//! Fault injection (the slow group): nodes killed with SIGKILL, restarted, all stopped at
//! once, and a follower brought back by a snapshot. Real processes; each test is a story in
//! phases, each phase logs what it proves.

use std::time::Duration;

use anyhow::{Context, Result, ensure};
use shoal_tests::{ClusterOptions, TestCluster, phase, wait_for};

const FORMATION: Duration = Duration::from_secs(20);
/// What the issue promises for failover; the test allows margin for a loaded CI machine.
const FAILOVER: Duration = Duration::from_secs(6);

/// Drains or undrains `target` through node `via`, failing on anything but 200.
async fn set_drain(cluster: &TestCluster, via: usize, target: &str, draining: bool) -> Result<()> {
    let action = if draining { "drain" } else { "undrain" };
    let (status, body) = cluster
        .post(via, &format!("/v1/cluster/nodes/{target}:{action}"))
        .await?;
    ensure!(
        status == 200,
        "{action} {target} via {via}: {status} {body}"
    );
    Ok(())
}

async fn draining(cluster: &TestCluster, index: usize, stale: bool) -> Result<Vec<(String, bool)>> {
    let mut view = cluster.status(index, stale).await?;
    view.members.sort_by(|a, b| a.name.cmp(&b.name));
    Ok(view
        .members
        .into_iter()
        .map(|m| (m.name, m.draining))
        .collect())
}

#[tokio::test]
async fn killing_the_leader_elects_a_new_one_and_the_killed_node_catches_up() -> Result<()> {
    let mut cluster = TestCluster::new(3, ClusterOptions::default())?;
    cluster.start_all()?;
    let old_leader = cluster.wait_formed(3, FORMATION).await?;
    let killed = cluster.index_of(&old_leader).await?;
    let survivor = (killed + 1) % 3;

    phase("SIGKILL the leader: the survivors elect a new one");
    cluster.kill(killed)?;
    let this = &cluster;
    let new_leader = wait_for("a new leader", FAILOVER, async || {
        let view = this.status(survivor, true).await.ok()?;
        view.leader.filter(|l| *l != old_leader)
    })
    .await?;
    ensure!(new_leader != old_leader, "leadership moved");

    phase("writes resume through any survivor");
    set_drain(&cluster, survivor, "n1", true).await?;
    set_drain(&cluster, (survivor + 1) % 3, "n2", true).await?;

    phase("the killed node restarts, rejoins with its data and catches up");
    cluster.start(killed)?;
    let expected = draining(&cluster, survivor, false).await?;
    let this = &cluster;
    wait_for(
        "the restarted node to apply the writes it missed",
        FORMATION,
        async || {
            let seen = draining(this, killed, true).await.ok()?;
            (seen == expected).then_some(())
        },
    )
    .await?;
    cluster.wait_formed(3, FORMATION).await?;
    Ok(())
}

#[tokio::test]
async fn all_nodes_stopped_and_restarted_keep_every_committed_entry() -> Result<()> {
    let mut cluster = TestCluster::formed(3, ClusterOptions::default()).await?;

    phase("commit a pattern of writes");
    set_drain(&cluster, 0, "n1", true).await?;
    set_drain(&cluster, 1, "n3", true).await?;
    set_drain(&cluster, 2, "n1", false).await?;
    let before = draining(&cluster, 0, false).await?;
    let cluster_id = cluster.status(0, false).await?.cluster_id;

    phase("kill all three at once, with no chance to flush anything more");
    for i in 0..3 {
        cluster.kill(i)?;
    }

    phase("restart all three: same cluster, same leader agreement, every entry kept");
    cluster.start_all()?;
    cluster.wait_formed(3, FORMATION).await?;
    for i in 0..3 {
        // A consistent read: on the leader that resumed its term this once came back stale,
        // its commit index trailing what it had acknowledged (the `Resumed` read index).
        let seen = draining(&cluster, i, false).await?;
        ensure!(
            seen == before,
            "node {i} lost writes: committed {before:?}, read back {seen:?}"
        );
        ensure!(
            cluster.status(i, false).await?.cluster_id == cluster_id,
            "cluster id changed"
        );
    }
    Ok(())
}

#[tokio::test]
async fn a_follower_far_behind_is_brought_back_by_a_streamed_snapshot() -> Result<()> {
    let options = ClusterOptions {
        snapshot_every_entries: 20,
        log_kept_entries: 5,
        ..Default::default()
    };
    let mut cluster = TestCluster::new(3, options)?;
    cluster.start_all()?;
    let leader = cluster.wait_formed(3, FORMATION).await?;
    let leader_index = cluster.index_of(&leader).await?;
    let absent = (leader_index + 1) % 3;
    let present = (leader_index + 2) % 3;

    phase("one follower is killed; the others commit until the leader has purged past it");
    // Entries may reach a follower's log a little after we ask, hence the margin.
    let absent_log = cluster
        .status(absent, true)
        .await?
        .last_log_index
        .unwrap_or(0)
        + 10;
    cluster.kill(absent)?;
    let mut round = 0;
    let this = &cluster;
    wait_for(
        "the leader to purge entries the absent follower never got",
        FORMATION,
        async || {
            round += 1;
            set_drain(this, present, "n1", round % 2 == 0).await.ok()?;
            let view = this.status(leader_index, true).await.ok()?;
            (view.purged_index? > absent_log).then_some(())
        },
    )
    .await?;
    let expected = draining(&cluster, leader_index, false).await?;
    let leader_applied = cluster.status(leader_index, false).await?.applied_index;

    phase("the follower restarts and is brought level by a snapshot, not the purged log");
    cluster.start(absent)?;
    let this = &cluster;
    wait_for("the absent follower to catch up", FORMATION, async || {
        let view = this.status(absent, true).await.ok()?;
        let level = view.applied_index >= leader_applied;
        (level && draining(this, absent, true).await.ok()? == expected).then_some(())
    })
    .await?;
    let log = cluster.nodes[absent].log();
    ensure!(
        log.contains("installed snapshot"),
        "no snapshot was installed:\n{}",
        cluster.logs()
    );
    Ok(())
}

fn shell_task(script: &str) -> serde_json::Value {
    serde_json::json!({ "executors": [{ "image": "busybox", "command": ["sh", "-c", script] }] })
}

/// Waits until task `id` runs; answers its node's name and index.
async fn running_on(cluster: &TestCluster, id: &str) -> Result<(String, usize)> {
    let host = wait_for("the task to run", FORMATION, async || {
        let task = cluster.task(0, id, "BASIC").await.ok()?;
        (task["state"] == "RUNNING").then(|| {
            task["logs"][0]["metadata"]["hostname"]
                .as_str()
                .map(str::to_string)
        })?
    })
    .await?;
    let index = cluster
        .nodes
        .iter()
        .position(|n| n.name == host)
        .context("the host is one of the nodes")?;
    Ok((host, index))
}

/// How long a killed node's claims survive in the fault stories below.
const SHORT_LEASE_MS: u64 = 2_000;

#[tokio::test]
async fn a_node_killed_while_running_has_its_datum_rerun_elsewhere_after_the_lease() -> Result<()> {
    let options = ClusterOptions {
        lease_ms: SHORT_LEASE_MS,
        ..Default::default()
    };
    let mut cluster = TestCluster::formed(3, options).await?;

    phase("a task starts running on some node");
    let id = cluster
        .submit_task(0, &shell_task("sleep 2; echo finished"))
        .await?;
    let (host, victim) = running_on(&cluster, &id).await?;

    phase("SIGKILL that node: after the lease the datum runs again elsewhere and completes");
    cluster.kill(victim)?;
    let survivor = (victim + 1) % 3;
    let task = cluster
        .wait_task(survivor, &id, Duration::from_secs(60))
        .await?;
    ensure!(task["state"] == "COMPLETE", "{task}");
    let logs = task["logs"].as_array().expect("logs");
    ensure!(
        logs.len() == 2,
        "expected a second attempt, got {}",
        logs.len()
    );
    ensure!(
        logs[1]["metadata"]["hostname"] != host.as_str(),
        "the rerun went to the dead node"
    );
    ensure!(logs[1]["logs"][0]["stdout"] == "finished\n", "{}", logs[1]);
    let lost = logs[0]["system_logs"].to_string();
    ensure!(
        lost.contains("lost at") && lost.contains(&host) && lost.contains("lease (2 s)"),
        "the lost attempt says what happened, to which node, when: {}",
        logs[0]
    );
    Ok(())
}

#[tokio::test]
async fn a_node_paused_past_its_lease_reports_its_lost_attempt_late() -> Result<()> {
    let options = ClusterOptions {
        lease_ms: SHORT_LEASE_MS,
        ..Default::default()
    };
    let cluster = TestCluster::formed(3, options).await?;
    let id = cluster
        .submit_task(0, &shell_task("sleep 3; echo finished"))
        .await?;
    let (host, paused) = running_on(&cluster, &id).await?;

    phase("SIGSTOP that node past its lease: the task runs again elsewhere");
    cluster.pause(paused)?;
    let survivor = (paused + 1) % 3;
    let task = cluster
        .wait_task(survivor, &id, Duration::from_secs(60))
        .await?;
    ensure!(task["state"] == "COMPLETE", "{task}");

    phase("SIGCONT: its attempt (which ran on meanwhile) is reported late, and shown lost");
    cluster.resume(paused)?;
    let this = &cluster;
    let lost = wait_for("the late report", FORMATION, async || {
        let task = this.task(survivor, &id, "FULL").await.ok()?;
        let first = task["logs"][0].clone();
        first["system_logs"]
            .to_string()
            .contains("after the lease expired")
            .then_some(first)
    })
    .await?;
    let lines = lost["system_logs"].to_string();
    ensure!(
        lines.contains("lost at") && lines.contains(&host),
        "the attempt still says it was lost, and where: {lost}"
    );
    ensure!(
        lost["logs"][0]["exit_code"] == 0 && lost["logs"][0]["stdout"] == "finished\n",
        "the late report shows how the attempt ended: {lost}"
    );
    Ok(())
}

#[tokio::test]
async fn killing_the_leader_mid_run_loses_no_acknowledged_submission() -> Result<()> {
    let options = ClusterOptions {
        lease_ms: SHORT_LEASE_MS,
        ..Default::default()
    };
    let mut cluster = TestCluster::new(3, options)?;
    cluster.start_all()?;
    let leader = cluster.wait_formed(3, FORMATION).await?;
    let leader_index = cluster.index_of(&leader).await?;
    let followers: Vec<usize> = (0..3).filter(|&i| i != leader_index).collect();

    phase("tasks go in through the followers; halfway the leader is killed");
    let mut acknowledged = Vec::new();
    let mut refused = 0;
    for i in 0..120 {
        if i == 60 {
            cluster.kill(leader_index)?;
        }
        match cluster
            .submit_task(followers[i % 2], &shell_task(&format!("echo {i}")))
            .await
        {
            Ok(id) => acknowledged.push((i, id)),
            Err(_) => refused += 1,
        }
    }
    eprintln!(
        "{} acknowledged, {refused} refused during the election",
        acknowledged.len()
    );
    ensure!(
        acknowledged.len() >= 100,
        "too few acknowledged: {}",
        acknowledged.len()
    );

    phase("every acknowledged task exists and completes");
    for (i, id) in &acknowledged {
        let task = cluster
            .wait_task(followers[0], id, Duration::from_secs(60))
            .await?;
        ensure!(task["state"] == "COMPLETE", "task {i}: {task}");
    }
    Ok(())
}

//! Multi-node behaviour of the cluster core, against real `shoal node` processes.
//! Each test is a story in phases; each phase logs what it proves.

use std::time::Duration;

use anyhow::{Result, ensure};
use shoal_node::api::Role;
use shoal_tests::{ClusterOptions, TestCluster, phase, wait_for};

const FORMATION: Duration = Duration::from_secs(20);

#[tokio::test]
async fn three_nodes_form_one_cluster_and_a_write_to_a_follower_is_visible_everywhere() -> Result<()>
{
    let mut cluster = TestCluster::new(3, ClusterOptions::default())?;
    cluster.start_all()?;

    phase("three nodes with identical configs agree on one leader and three voters");
    let leader = cluster.wait_formed(3, FORMATION).await?;
    let leader_index = cluster.index_of(&leader).await?;
    for i in 0..3 {
        let view = cluster.status(i, false).await?;
        ensure!(
            view.consistent,
            "{} answered without confirming with the leader",
            cluster.nodes[i].name
        );
        ensure!(
            view.members.len() == 3,
            "{} sees {} members",
            cluster.nodes[i].name,
            view.members.len()
        );
    }

    phase("every node registers itself and the cluster gets one id");
    let cluster_id = wait_for("registration of all three nodes", FORMATION, async || {
        let view = cluster.status(0, false).await.ok()?;
        let registered = view
            .members
            .iter()
            .all(|m| m.slots.is_some() && m.last_heartbeat.is_some());
        (registered && view.cluster_id.is_some()).then_some(view.cluster_id)
    })
    .await?;
    for i in 0..3 {
        ensure!(
            cluster.status(i, false).await?.cluster_id == cluster_id,
            "one cluster id"
        );
    }

    phase("a drain sent to a follower is carried out by the leader and answered by the follower");
    let follower = (0..3).find(|&i| i != leader_index).expect("a follower");
    let target = cluster.nodes[(follower + 1) % 3].name.clone();
    let (status, body) = cluster
        .post(follower, &format!("/v1/cluster/nodes/{target}:drain"))
        .await?;
    ensure!(status == 200, "drain answered {status}: {body}");

    phase("a read on every node, right after, reflects the acknowledged write");
    let written = cluster.status(leader_index, true).await?.applied_index;
    for i in 0..3 {
        let view = cluster.status(i, false).await?;
        ensure!(
            view.consistent && view.applied_index >= written,
            "{} answered before applying the write",
            cluster.nodes[i].name
        );
        let member = view
            .members
            .iter()
            .find(|m| m.name == target)
            .expect("target member");
        ensure!(
            member.draining,
            "{} does not show {target} draining",
            cluster.nodes[i].name
        );
    }
    Ok(())
}

#[tokio::test]
async fn bad_requests_are_refused_and_change_nothing() -> Result<()> {
    let cluster = TestCluster::formed(
        1,
        ClusterOptions {
            bootstrap_expect: 1,
            ..Default::default()
        },
    )
    .await?;

    phase("unknown nodes and actions get 404 naming what is wrong");
    let (status, body) = cluster.post(0, "/v1/cluster/nodes/nobody:drain").await?;
    ensure!(
        status == 404 && body["error"].as_str().unwrap_or("").contains("nobody"),
        "{status} {body}"
    );
    let (status, body) = cluster.post(0, "/v1/cluster/nodes/n1:explode").await?;
    ensure!(
        status == 404 && body["error"].as_str().unwrap_or("").contains("explode"),
        "{status} {body}"
    );

    phase("a bad consistency parameter gets 400");
    let error = cluster
        .status_with(0, "/v1/cluster?consistency=sometimes")
        .await
        .expect_err("400");
    ensure!(error.to_string().contains("400"), "{error}");

    phase("nothing was drained");
    let view = cluster.status(0, false).await?;
    ensure!(view.members.iter().all(|m| !m.draining), "no node drained");
    Ok(())
}

#[tokio::test]
async fn a_node_with_the_wrong_cluster_key_cannot_join() -> Result<()> {
    let keys = tempfile::tempdir()?;
    let right = keys.path().join("right.key");
    let wrong = keys.path().join("wrong.key");
    std::fs::write(&right, "11".repeat(32))?;
    std::fs::write(&wrong, "22".repeat(32))?;
    let options = ClusterOptions {
        cluster_key_file: Some(right.clone()),
        ..Default::default()
    };
    let mut cluster = TestCluster::new(3, options.clone())?;
    cluster.start_all()?;

    phase("three nodes sharing a key form a cluster through the pre-shared-key transport");
    cluster.wait_formed(3, FORMATION).await?;

    phase("a fourth node with another key dials the same seeds but never becomes a member");
    let intruder = cluster.add_node(Some(ClusterOptions {
        cluster_key_file: Some(wrong),
        ..options
    }))?;
    cluster.start(intruder)?;
    tokio::time::sleep(Duration::from_secs(3)).await; // the intruder has had many bootstrap rounds
    let view = cluster.status(0, false).await?;
    ensure!(
        view.members.len() == 3,
        "membership grew to {}",
        view.members.len()
    );
    let intruder_view = cluster.status(intruder, true).await?;
    ensure!(
        intruder_view.leader.is_none(),
        "the intruder found a leader"
    );
    ensure!(
        cluster.nodes[intruder].is_running(),
        "the intruder keeps trying, it does not crash"
    );
    Ok(())
}

#[tokio::test]
async fn a_lone_node_given_seeds_joins_their_cluster_instead_of_forming_its_own() -> Result<()> {
    let mut cluster = TestCluster::formed(3, ClusterOptions::default()).await?;
    let cluster_id = wait_for("a cluster id", FORMATION, async || {
        cluster.status(0, false).await.ok()?.cluster_id
    })
    .await?;

    phase("a node with bootstrap_expect = 1 but seeds waits for them and joins");
    let lone = cluster.add_node(Some(ClusterOptions {
        bootstrap_expect: 1,
        ..Default::default()
    }))?;
    cluster.start(lone)?;
    let this = &cluster;
    wait_for("the lone node to become a member", FORMATION, async || {
        let view = this.status(lone, false).await.ok()?;
        (view.members.len() == 4).then_some(())
    })
    .await?;
    let view = cluster.status(lone, false).await?;
    ensure!(
        view.cluster_id.as_ref() == Some(&cluster_id),
        "the lone node is in another cluster: {view:?}"
    );
    Ok(())
}

#[tokio::test]
async fn a_fourth_node_joins_as_learner_and_is_promoted_only_while_voters_max_allows() -> Result<()>
{
    phase("with voters_max = 3, a fourth node joins and stays a learner");
    let strict = ClusterOptions {
        voters_max: 3,
        ..Default::default()
    };
    let mut cluster = TestCluster::formed(3, strict).await?;
    let fourth = cluster.add_node(None)?;
    cluster.start(fourth)?;
    let view = wait_for(
        "the fourth node to appear as a member",
        FORMATION,
        async || {
            let view = cluster.status(0, false).await.ok()?;
            (view.members.len() == 4).then_some(view)
        },
    )
    .await?;
    let member = view
        .members
        .iter()
        .find(|m| m.name == "n4")
        .expect("n4 in members");
    ensure!(member.role == Role::Learner, "n4 is {:?}", member.role);
    tokio::time::sleep(Duration::from_secs(2)).await; // several promotion rounds pass
    let view = cluster.status(0, false).await?;
    let member = view.members.iter().find(|m| m.name == "n4").expect("n4");
    ensure!(
        member.role == Role::Learner,
        "n4 was promoted past voters_max"
    );
    drop(cluster);

    phase("with voters_max = 5, a fourth node joins and is promoted to voter");
    let mut cluster = TestCluster::formed(3, ClusterOptions::default()).await?;
    let fourth = cluster.add_node(None)?;
    cluster.start(fourth)?;
    cluster.wait_formed(4, FORMATION).await?;

    phase("the new voter has the replicated state: it sees every registered node");
    let view = cluster.status(fourth, false).await?;
    ensure!(
        view.members.len() == 4,
        "n4 sees {} members",
        view.members.len()
    );
    Ok(())
}

#[tokio::test]
async fn drain_and_remove_through_the_cli() -> Result<()> {
    let mut cluster = TestCluster::formed(3, ClusterOptions::default()).await?;
    let server = cluster.nodes[0].http_url();
    let shoal = |args: &[&str]| {
        std::process::Command::new(shoal_tests::shoal_bin())
            .args(args)
            .env("SHOAL_SERVER", &server)
            .output()
    };

    phase("cluster status and members print every node");
    let out = shoal(&["cluster", "status", "--output", "table"])?;
    let text = String::from_utf8_lossy(&out.stdout);
    ensure!(
        out.status.success()
            && ["n1", "n2", "n3", "leader"]
                .iter()
                .all(|w| text.contains(w)),
        "{text}"
    );
    let out = shoal(&["cluster", "members", "--output", "json"])?;
    let members: serde_json::Value = serde_json::from_slice(&out.stdout)?;
    ensure!(members.as_array().map(Vec::len) == Some(3), "{members}");

    phase("drain by name shows in every node's view");
    let out = shoal(&["cluster", "drain", "n3"])?;
    ensure!(
        out.status.success(),
        "drain: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let view = cluster.status(1, false).await?;
    ensure!(
        view.members.iter().any(|m| m.name == "n3" && m.draining),
        "n3 draining"
    );

    phase("remove takes a non-leader out of the Raft group and the registry");
    let leader = cluster.leader_index().await?;
    let victim = (0..3).find(|&i| i != leader && i != 0).expect("victim");
    let victim_name = cluster.nodes[victim].name.clone();
    let out = shoal(&["cluster", "remove", &victim_name])?;
    ensure!(
        out.status.success(),
        "remove: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let view = cluster.status(0, false).await?;
    ensure!(
        view.members.len() == 2 && view.members.iter().all(|m| m.name != victim_name),
        "{view:?}"
    );

    phase("an unknown node is an input error (exit 2), an unreachable server exit 3");
    let out = shoal(&["cluster", "drain", "nobody"])?;
    ensure!(out.status.code() == Some(2), "exit {:?}", out.status.code());
    let out = std::process::Command::new(shoal_tests::shoal_bin())
        .args([
            "cluster",
            "status",
            "--server",
            &format!("http://127.0.0.1:{}", shoal_tests::free_port()),
        ])
        .output()?;
    ensure!(out.status.code() == Some(3), "exit {:?}", out.status.code());
    Ok(())
}

#[tokio::test]
async fn sigterm_leaves_cleanly_and_the_rest_carry_on() -> Result<()> {
    let mut cluster = TestCluster::formed(3, ClusterOptions::default()).await?;

    phase("a SIGTERM'd node exits 0 promptly");
    let code = cluster.terminate(2, Duration::from_secs(10)).await?;
    ensure!(
        code == Some(0),
        "exit code {code:?}\n{}",
        cluster.nodes[2].log()
    );

    phase("the two others still accept writes");
    let (status, body) = cluster.post(0, "/v1/cluster/nodes/n1:drain").await?;
    ensure!(status == 200, "{status} {body}");
    Ok(())
}

#[tokio::test]
async fn dev_cluster_starts_three_nodes_as_one_cluster_and_stops_them_on_ctrl_c() -> Result<()> {
    use std::io::BufRead;
    let dir = tempfile::tempdir()?;
    let mut dev = std::process::Command::new(shoal_tests::shoal_bin())
        .args(["dev-cluster", "--nodes", "3", "--dir"])
        .arg(dir.path())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::null())
        .spawn()?;
    let stdout = dev.stdout.take().expect("piped stdout");

    phase("dev-cluster prints one URL per node once they form a cluster");
    let urls = tokio::task::spawn_blocking(move || -> Vec<String> {
        std::io::BufReader::new(stdout)
            .lines()
            .map_while(Result::ok)
            .take(3)
            .filter_map(|line| line.split('\t').nth(1).map(str::to_string))
            .collect()
    })
    .await?;
    ensure!(urls.len() == 3, "printed {urls:?}");
    let http = reqwest::Client::new();
    let mut leaders = Vec::new();
    for url in &urls {
        let view: shoal_node::api::ClusterView = http
            .get(format!("{url}/v1/cluster"))
            .send()
            .await?
            .json()
            .await?;
        ensure!(
            view.members.len() == 3,
            "{url} sees {} members",
            view.members.len()
        );
        leaders.push(view.leader);
    }
    ensure!(
        leaders.iter().all(|l| l.is_some() && *l == leaders[0]),
        "one leader: {leaders:?}"
    );

    phase("Ctrl-C (SIGINT) stops every node");
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(dev.id() as i32),
        nix::sys::signal::Signal::SIGINT,
    )?;
    let status = tokio::task::spawn_blocking(move || dev.wait()).await??;
    ensure!(status.success(), "dev-cluster exited with {status}");
    for url in &urls {
        ensure!(
            http.get(format!("{url}/healthz")).send().await.is_err(),
            "{url} still answers"
        );
    }
    Ok(())
}

/// Seeds and advertised addresses given as DNS names (`/dns4/localhost/…`), as on hosts that
/// know each other by name or in a Kubernetes StatefulSet: the nodes resolve them at each
/// dial, form one cluster, keep the names in the membership, forward writes over them, and a
/// restarted node is found again through its name.
#[tokio::test]
async fn nodes_known_by_dns_names_form_a_cluster_and_find_a_restarted_node_again() -> Result<()> {
    let by_name = |addr: &str| addr.replace("/ip4/127.0.0.1/", "/dns4/localhost/");
    let options = ClusterOptions {
        configure: Some(std::sync::Arc::new(move |config| {
            config.p2p.seeds = config.p2p.seeds.iter().map(|s| by_name(s)).collect();
            config.p2p.advertise = vec![by_name(&config.p2p.listen)];
        })),
        ..Default::default()
    };
    let mut cluster = TestCluster::new(3, options)?;
    for node in &cluster.nodes {
        ensure!(
            node.config
                .p2p
                .seeds
                .iter()
                .all(|s| s.starts_with("/dns4/localhost/tcp/")),
            "seeds not by name: {:?}",
            node.config.p2p.seeds
        );
    }
    cluster.start_all()?;

    phase("the seeds are names: the nodes resolve them, meet, and form one cluster");
    let leader = cluster.wait_formed(3, FORMATION).await?;
    let view = cluster.status(0, false).await?;
    for member in &view.members {
        let node = cluster
            .nodes
            .iter()
            .find(|n| n.name == member.name)
            .ok_or_else(|| anyhow::anyhow!("unknown member {}", member.name))?;
        ensure!(
            member.addresses == [by_name(&node.config.p2p.listen)],
            "{} is known by {:?}, not by its name",
            member.name,
            member.addresses
        );
    }

    phase("a write through each follower is forwarded to the leader over its name");
    let leader_index = cluster.index_of(&leader).await?;
    let followers: Vec<usize> = (0..3).filter(|&i| i != leader_index).collect();
    for &via in &followers {
        let target = &cluster.nodes[via].name;
        let (status, body) = cluster
            .post(via, &format!("/v1/cluster/nodes/{target}:drain"))
            .await?;
        ensure!(status == 200, "drain via {via}: {status} {body}");
    }

    phase("a follower killed and restarted is reached again through its name and catches up");
    let restarted = followers[0];
    cluster.kill(restarted)?;
    let (status, body) = cluster
        .post(
            leader_index,
            &format!(
                "/v1/cluster/nodes/{}:undrain",
                cluster.nodes[restarted].name
            ),
        )
        .await?;
    ensure!(status == 200, "undrain: {status} {body}");
    let expected = cluster.status(leader_index, false).await?.applied_index;
    cluster.start(restarted)?;
    let this = &cluster;
    wait_for("the restarted node to catch up", FORMATION, async || {
        let view = this.status(restarted, true).await.ok()?;
        (view.applied_index >= expected && view.leader.is_some()).then_some(())
    })
    .await?;
    cluster.wait_formed(3, FORMATION).await?;
    Ok(())
}

/// The datum states in a backup file, counted.
fn datum_states(file: &std::path::Path) -> Result<std::collections::BTreeMap<String, usize>> {
    let backup =
        shoal_raft::backup::read_backup(std::io::BufReader::new(std::fs::File::open(file)?))?;
    let mut states = std::collections::BTreeMap::new();
    for datum in backup.state.datums.values() {
        *states.entry(format!("{:?}", datum.state)).or_insert(0) += 1;
    }
    Ok(states)
}

/// Runs `shoal node ARGS --restore BACKUP` and checks it is refused as bad input (exit 2)
/// saying `why`.
fn restore_refused(args: &[&std::ffi::OsStr], backup: &std::path::Path, why: &str) -> Result<()> {
    let out = std::process::Command::new(shoal_tests::shoal_bin())
        .arg("node")
        .args(args)
        .arg("--restore")
        .arg(backup)
        .output()?;
    let stderr = String::from_utf8_lossy(&out.stderr);
    ensure!(
        out.status.code() == Some(2) && stderr.contains(why),
        "exit {:?}: {stderr}",
        out.status.code()
    );
    Ok(())
}

#[tokio::test]
async fn a_backup_of_a_busy_cluster_restores_onto_three_new_nodes_where_every_task_finishes()
-> Result<()> {
    let mut old = TestCluster::formed(3, ClusterOptions::default()).await?;
    let task = |script: String| serde_json::json!({ "executors": [{ "image": "busybox", "command": ["sh", "-c", script] }] });

    phase("four tasks finish; ten more are running or waiting when the backup is made");
    let mut finished = Vec::new();
    for i in 0..4 {
        finished.push(
            old.submit_task(i % 3, &task(format!("echo done-{i}")))
                .await?,
        );
    }
    for id in &finished {
        let ended = old.wait_task(0, id, FORMATION).await?;
        ensure!(ended["state"] == "COMPLETE", "{ended}");
    }
    let mut unfinished = Vec::new();
    for i in 0..10 {
        let script = format!("sleep 3; echo later-{i}");
        unfinished.push(old.submit_task(i % 3, &task(script)).await?);
    }
    let first = unfinished[0].clone();
    wait_for("a task to run", FORMATION, async || {
        let task = old.task(0, &first, "MINIMAL").await.ok()?;
        (task["state"] == "RUNNING").then_some(())
    })
    .await?;

    phase("`shoal cluster backup` through a follower saves a checked file");
    let backups = tempfile::tempdir()?;
    let file = backups.path().join("cluster.backup");
    let follower = (old.leader_index().await? + 1) % 3;
    let out = std::process::Command::new(shoal_tests::shoal_bin())
        .args(["cluster", "backup", "--output", "json"])
        .arg(&file)
        .env("SHOAL_SERVER", old.nodes[follower].http_url())
        .output()?;
    ensure!(
        out.status.success(),
        "backup: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let saved: serde_json::Value = serde_json::from_slice(&out.stdout)?;
    ensure!(saved["jobs"] == 14, "{saved}");
    let old_cluster_id = saved["cluster_id"].as_str().unwrap_or_default().to_string();
    let states = datum_states(&file)?;
    ensure!(
        states.get("Done") == Some(&4) && states.get("Running").is_some_and(|n| *n >= 1),
        "the backup caught the cluster busy: {states:?}"
    );
    ensure!(
        !backups.path().join("cluster.backup.partial").exists(),
        "no partial file is left"
    );
    let old_nodes: Vec<String> = old
        .status(0, false)
        .await?
        .members
        .into_iter()
        .map(|m| m.node_id)
        .collect();

    phase("the old cluster is destroyed, data dirs and all");
    drop(old);

    phase("a damaged backup is refused and leaves the data dir empty");
    let damaged = backups.path().join("damaged.backup");
    let bytes = std::fs::read(&file)?;
    std::fs::write(&damaged, &bytes[..bytes.len() - 10])?;
    let empty = backups.path().join("empty-data");
    restore_refused(
        &["--data-dir".as_ref(), empty.as_os_str()],
        &damaged,
        "truncated",
    )?;
    ensure!(!empty.join("state.redb").exists(), "nothing was restored");

    phase("three new nodes: one restores the backup, two join it");
    let mut new = TestCluster::new(3, ClusterOptions::default())?;
    new.nodes[0].args = vec!["--restore".into(), file.display().to_string()];
    new.start_all()?;
    if let Err(error) = new.wait_formed(3, FORMATION).await {
        anyhow::bail!("{error:#}\n{}", new.log_tails(40));
    }
    let view = new.status(1, false).await?;
    let new_cluster_id = view.cluster_id.clone().unwrap_or_default();
    ensure!(
        !new_cluster_id.is_empty() && new_cluster_id != old_cluster_id,
        "a new cluster id: {new_cluster_id} (old {old_cluster_id})"
    );
    ensure!(
        view.members.iter().all(|m| !old_nodes.contains(&m.node_id)),
        "none of the old nodes is a member: {view:?}"
    );

    phase("every finished task is there as it was, on every node");
    for (i, id) in finished.iter().enumerate() {
        for node in 0..3 {
            let task = new.task(node, id, "FULL").await?;
            let stdout = task["logs"][0]["logs"][0]["stdout"].as_str().unwrap_or("");
            ensure!(
                task["state"] == "COMPLETE" && stdout.contains(&format!("done-{i}")),
                "{task}"
            );
        }
    }

    phase("every unfinished task finishes on the new cluster");
    for (i, id) in unfinished.iter().enumerate() {
        let task = new.wait_task(i % 3, id, Duration::from_secs(60)).await?;
        let logs = task["logs"].as_array().cloned().unwrap_or_default();
        let stdout = logs
            .last()
            .and_then(|attempt| attempt["logs"][0]["stdout"].as_str())
            .unwrap_or("");
        ensure!(
            task["state"] == "COMPLETE" && stdout.contains(&format!("later-{i}")),
            "{task}"
        );
    }

    phase("the new cluster takes new work, and a second restore into a used data dir is refused");
    let id = new.submit_task(2, &task("echo after".into())).await?;
    let ended = new.wait_task(2, &id, FORMATION).await?;
    ensure!(ended["state"] == "COMPLETE", "{ended}");
    restore_refused(
        &["--config".as_ref(), new.nodes[0].config_path.as_os_str()],
        &file,
        "restore into an empty data dir",
    )?;
    Ok(())
}

/// Makes a node run as the build before format 5: the binary `SHOAL_TEST_PREVIOUS_BIN` names
/// (an earlier commit's build), else this binary with the test-only switch that makes it
/// read and write format 4 only.
fn run_as_previous_build(node: &mut shoal_tests::TestNode) -> Result<()> {
    match shoal_tests::test_previous_bin()? {
        Some(bin) => node.bin = Some(bin),
        None => node.env = vec![("SHOAL_TEST_FORMAT_VERSION_MAX".into(), "4".into())],
    }
    Ok(())
}

/// The cluster's format and the answering node's, as a view says them; a build before
/// format 5 says neither (it writes and reads format 4).
fn formats(view: &shoal_node::api::ClusterView) -> (u8, [u8; 2]) {
    if view.format_version == 0 {
        (4, [4, 4])
    } else {
        (view.format_version, view.node_formats)
    }
}

#[tokio::test]
async fn a_rolling_upgrade_while_tasks_run_loses_nothing_and_moves_the_format_last() -> Result<()> {
    let task = |script: String| serde_json::json!({ "executors": [{ "image": "busybox", "command": ["sh", "-c", script] }] });
    let mut cluster = TestCluster::new(3, ClusterOptions::default())?;
    for node in &mut cluster.nodes {
        run_as_previous_build(node)?;
    }
    cluster.start_all()?;
    cluster.wait_formed(3, FORMATION).await?;

    phase("three nodes of the previous build form a cluster writing format 4");
    let view = cluster.status(0, false).await?;
    ensure!(formats(&view) == (4, [4, 4]), "{view:?}");
    // The real previous build predates the formats in the view; the switch reports them.
    let real_previous = shoal_tests::test_previous_bin()?.is_some();
    ensure!(
        (view.format_version == 0) == real_previous,
        "expected the {} previous build: {view:?}",
        if real_previous { "real" } else { "switched" }
    );

    phase("node by node: stopped, upgraded, started on its data dir, while tasks arrive");
    let mut submitted: Vec<(String, String)> = Vec::new();
    for upgraded in 0..3 {
        for via in (0..3).filter(|i| *i != upgraded) {
            let marker = format!("t-{}", submitted.len());
            let id = cluster
                .submit_task(via, &task(format!("sleep 1; echo {marker}")))
                .await?;
            submitted.push((id, marker));
        }
        let code = cluster.terminate(upgraded, Duration::from_secs(30)).await?;
        ensure!(
            code == Some(0),
            "{} stopped with {code:?}",
            cluster.nodes[upgraded].name
        );
        cluster.nodes[upgraded].env.clear();
        cluster.nodes[upgraded].bin = None;
        cluster.start(upgraded)?;
        let this = &cluster;
        let view = wait_for(
            "the upgraded node back in the cluster",
            FORMATION,
            async || {
                let view = this.status(upgraded, false).await.ok()?;
                let voters = view
                    .members
                    .iter()
                    .filter(|m| m.role == Role::Voter)
                    .count();
                (view.consistent && voters == 3).then_some(view)
            },
        )
        .await?;
        ensure!(
            view.node_formats == [4, 6],
            "the new build reads both: {view:?}"
        );
        if upgraded < 2 {
            ensure!(
                view.format_version == 4,
                "the format waits for the last old node: {view:?}"
            );
        }
        let marker = format!("t-{}", submitted.len());
        let id = cluster
            .submit_task(upgraded, &task(format!("echo {marker}")))
            .await?;
        submitted.push((id, marker));
        if upgraded == 0 {
            a_fresh_node_joins_the_old_format_and_leaves(&mut cluster).await?;
        }
        if upgraded == 1 {
            new_build_leads_and_holds_the_format(&mut cluster, 2).await?;
        }
    }

    phase("with every node on the new build, the cluster moves to format 6 everywhere");
    for node in 0..3 {
        let this = &cluster;
        wait_for("format 6", FORMATION, async || {
            let view = this.status(node, false).await.ok()?;
            (formats(&view).0 == 6).then_some(())
        })
        .await?;
    }

    phase("every task submitted during the upgrade completes");
    for (id, marker) in &submitted {
        let ended = cluster.wait_task(0, id, Duration::from_secs(60)).await?;
        let logs = ended["logs"].as_array().cloned().unwrap_or_default();
        let stdout = logs
            .last()
            .and_then(|attempt| attempt["logs"][0]["stdout"].as_str())
            .unwrap_or("");
        ensure!(
            ended["state"] == "COMPLETE" && stdout.contains(marker.as_str()),
            "{ended}"
        );
    }
    let id = cluster
        .submit_task(1, &task("echo format-6".into()))
        .await?;
    let ended = cluster.wait_task(2, &id, FORMATION).await?;
    ensure!(ended["state"] == "COMPLETE", "{ended}");

    phase("a node of the previous build cannot join a cluster on format 6, and says why");
    let old = cluster.add_node(None)?;
    run_as_previous_build(&mut cluster.nodes[old])?;
    cluster.start(old)?;
    let this = &cluster;
    wait_for(
        "the old node told why it may not join",
        FORMATION,
        async || {
            this.nodes[old]
                .log()
                .contains("the cluster runs format 6: run a build that reads it")
                .then_some(())
        },
    )
    .await?;
    ensure!(cluster.status(0, false).await?.members.len() == 3);
    Ok(())
}

/// A node of the new build with an empty data dir joins the cluster while it still runs
/// format 4 (one node upgraded, two old), serves a task, then is stopped and removed.
async fn a_fresh_node_joins_the_old_format_and_leaves(cluster: &mut TestCluster) -> Result<()> {
    phase("a fresh node of the new build joins the cluster while it runs format 4");
    let fresh = cluster.add_node(None)?;
    cluster.start(fresh)?;
    cluster.wait_formed(4, FORMATION).await?;
    let view = cluster.status(fresh, false).await?;
    ensure!(
        view.format_version == 4 && view.node_formats == [4, 6],
        "the fresh node joins format 4: {view:?}"
    );
    let task =
        serde_json::json!({ "executors": [{ "image": "busybox", "command": ["echo", "fresh"] }] });
    let id = cluster.submit_task(fresh, &task).await?;
    let ended = cluster.wait_task(fresh, &id, FORMATION).await?;
    ensure!(ended["state"] == "COMPLETE", "{ended}");

    phase("the fresh node leaves again: stopped, then removed");
    let name = cluster.nodes[fresh].name.clone();
    let code = cluster.terminate(fresh, Duration::from_secs(30)).await?;
    ensure!(code == Some(0), "{name} stopped with {code:?}");
    let path = format!("/v1/cluster/nodes/{name}");
    let (status, _, body) = cluster
        .request(0, reqwest::Method::DELETE, &path, None, None)
        .await?;
    ensure!(status == 200, "removing {name}: {status} {body}");
    cluster.wait_formed(3, FORMATION).await?;
    Ok(())
}

/// With node `old` the last of the previous build: makes a new-build node lead (pausing
/// `old` while it leads, so the others elect one of theirs), then checks the new leader keeps
/// the cluster on format 4 while `old` is a member, and `old` keeps applying the log.
async fn new_build_leads_and_holds_the_format(cluster: &mut TestCluster, old: usize) -> Result<()> {
    phase("a new-build leader holds the format at 4 while one old node remains");
    let old_id = cluster.status(old, true).await?.node_id;
    if cluster.leader_index().await? == old {
        cluster.pause(old)?;
        let this = &*cluster;
        let elected = wait_for("a new-build leader", FORMATION, async || {
            let view = this.status(0, true).await.ok()?;
            view.leader.filter(|leader| *leader != old_id)
        })
        .await;
        cluster.resume(old)?;
        elected?;
    }
    let leader = cluster.status(0, true).await?.leader;
    ensure!(
        leader.is_some() && leader != Some(old_id),
        "a new-build node leads: {leader:?}"
    );
    // Longer than the leader's format round (2 s), twice.
    tokio::time::sleep(Duration::from_secs(5)).await;
    let view = cluster.status(old, false).await?;
    ensure!(
        view.consistent && formats(&view) == (4, [4, 4]),
        "the old node is still served in format 4: {view:?}"
    );
    Ok(())
}

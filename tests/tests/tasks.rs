//! TES tasks through a three-node cluster of real processes, run by the `process` executor.
//! Each test is a story in phases; each phase logs what it proves.

use std::collections::BTreeMap;
use std::time::Duration;

use anyhow::{Result, ensure};
use futures::StreamExt;
use serde_json::json;
use shoal_tests::{ClusterOptions, TestCluster, phase};

const TASK_TIMEOUT: Duration = Duration::from_secs(60);

fn shell(script: &str) -> serde_json::Value {
    json!({ "executors": [{ "image": "busybox", "command": ["sh", "-c", script] }] })
}

#[tokio::test]
async fn a_thousand_tasks_sent_to_every_node_all_complete_exactly_once_and_every_node_runs_some()
-> Result<()> {
    let cluster = TestCluster::formed(3, ClusterOptions::default()).await?;

    phase("1,000 tasks submitted round-robin to the three nodes, 64 requests in flight");
    let submissions = futures::stream::iter(0..1000)
        .map(|i| {
            let cluster = &cluster;
            async move {
                cluster
                    .submit_task(i % 3, &shell(&format!("echo task {i}")))
                    .await
            }
        })
        .buffered(64)
        .collect::<Vec<_>>()
        .await;
    let ids: Vec<String> = submissions.into_iter().collect::<Result<_>>()?;

    phase("every task ends COMPLETE after one attempt, with its own output");
    let mut ran_on: BTreeMap<String, usize> = BTreeMap::new();
    for (i, id) in ids.iter().enumerate() {
        let task = cluster.wait_task(i % 3, id, TASK_TIMEOUT).await?;
        ensure!(task["state"] == "COMPLETE", "task {i}: {task}");
        let logs = task["logs"].as_array().expect("logs");
        ensure!(logs.len() == 1, "task {i} ran {} times", logs.len());
        ensure!(
            logs[0]["logs"][0]["stdout"] == format!("task {i}\n"),
            "task {i}: {}",
            logs[0]
        );
        let host = logs[0]["metadata"]["hostname"]
            .as_str()
            .unwrap_or("")
            .to_string();
        *ran_on.entry(host).or_default() += 1;
    }
    ensure!(ran_on.len() == 3, "not every node ran tasks: {ran_on:?}");
    Ok(())
}

#[tokio::test]
async fn a_failing_command_ends_executor_error_with_its_exit_code_and_stderr() -> Result<()> {
    let cluster = TestCluster::formed(
        1,
        ClusterOptions {
            bootstrap_expect: 1,
            ..Default::default()
        },
    )
    .await?;
    let id = cluster
        .submit_task(0, &shell("echo went wrong >&2; exit 3"))
        .await?;
    let task = cluster.wait_task(0, &id, TASK_TIMEOUT).await?;
    ensure!(task["state"] == "EXECUTOR_ERROR", "{task}");
    let log = &task["logs"][0]["logs"][0];
    ensure!(
        log["exit_code"] == 3 && log["stderr"] == "went wrong\n",
        "{log}"
    );

    phase("a task the validator refuses gets 400 naming the field, and nothing is created");
    let (status, body) = cluster
        .post_json(
            0,
            "/ga4gh/tes/v1/tasks",
            &json!({"executors": [{"image": "x", "command": []}]}),
        )
        .await?;
    ensure!(
        status == 400
            && body["error"]
                .as_str()
                .unwrap_or("")
                .contains("executors[0].command"),
        "{status} {body}"
    );
    let (status, _) = cluster
        .post_json(0, "/ga4gh/tes/v1/tasks/nope:cancel", &json!({}))
        .await?;
    ensure!(status == 404, "cancel of an unknown task: {status}");
    Ok(())
}

/// A node answers a read of a task it holds final (COMPLETE, CANCELED) from its own state, so
/// that answer needs no leader; a task that may still change (EXECUTOR_ERROR can be retried)
/// is read only through the leader.
#[tokio::test]
async fn a_node_cut_off_from_the_leader_answers_for_finished_tasks_but_not_retryable_ones()
-> Result<()> {
    let cluster = TestCluster::formed(3, ClusterOptions::default()).await?;
    let done = cluster.submit_task(0, &shell("true")).await?;
    let failed = cluster.submit_task(0, &shell("exit 3")).await?;
    for id in [&done, &failed] {
        cluster.wait_task(2, id, TASK_TIMEOUT).await?;
    }

    phase("with the other two nodes paused there is no leader; node 2 still answers for COMPLETE");
    cluster.pause(0)?;
    cluster.pause(1)?;
    let quick = Duration::from_secs(2);
    let answered = tokio::time::timeout(quick, cluster.task(2, &done, "BASIC")).await;
    let retryable = tokio::time::timeout(quick, cluster.task(2, &failed, "MINIMAL")).await;
    cluster.resume(0)?;
    cluster.resume(1)?;
    let task = answered.map_err(|_| anyhow::anyhow!("no answer within {quick:?}"))??;
    ensure!(
        task["state"] == "COMPLETE" && task["logs"][0]["logs"][0]["exit_code"] == 0,
        "{task}"
    );
    ensure!(
        !matches!(retryable, Ok(Ok(_))),
        "a task that may be retried was answered without a leader: {retryable:?}"
    );

    phase("once the others are back, the retryable task is answered again");
    let task = cluster.wait_task(2, &failed, TASK_TIMEOUT).await?;
    ensure!(task["state"] == "EXECUTOR_ERROR", "{task}");
    Ok(())
}

/// Waits until task `id` shows RUNNING on node `node`.
async fn wait_running(cluster: &TestCluster, node: usize, id: &str) -> Result<()> {
    shoal_tests::wait_for(&format!("task {id} to run"), TASK_TIMEOUT, async || {
        (cluster.task(node, id, "MINIMAL").await.ok()?["state"] == "RUNNING").then_some(())
    })
    .await
}

/// Whether a process whose command line holds `marker` runs on this host.
fn runs(marker: &str) -> Result<bool> {
    let found = std::process::Command::new("pgrep")
        .args(["-f", marker])
        .output()?;
    Ok(!found.stdout.is_empty())
}

#[tokio::test]
async fn a_node_killed_with_sigkill_leaves_no_step_running() -> Result<()> {
    let options = ClusterOptions {
        bootstrap_expect: 1,
        ..Default::default()
    };
    let mut cluster = TestCluster::formed(1, options).await?;
    let marker = format!("shoal-orphan-{}", std::process::id());
    let id = cluster
        .submit_task(0, &shell(&format!("exec sleep 300 # {marker}")))
        .await?;
    wait_running(&cluster, 0, &id).await?;
    ensure!(runs(&marker)?, "the task's process is not visible to pgrep");

    phase("kill -9 the node: the kernel kills its step with it");
    cluster.kill(0)?;
    let marker = &marker;
    shoal_tests::wait_for(
        "the step to die with its node",
        Duration::from_secs(10),
        async || (!runs(marker).ok()?).then_some(()),
    )
    .await?;
    Ok(())
}

#[tokio::test]
async fn cancel_of_a_running_task_kills_its_process_and_ends_canceled() -> Result<()> {
    let cluster = TestCluster::formed(3, ClusterOptions::default()).await?;
    let marker = format!("shoal-cancel-{}", std::process::id());
    let id = cluster
        .submit_task(
            0,
            &shell(&format!("echo started; exec sleep 300 # {marker}")),
        )
        .await?;

    phase("the task runs somewhere");
    wait_running(&cluster, 1, &id).await?;

    ensure!(runs(&marker)?, "the task's process is not visible to pgrep");

    phase("cancel through another node: CANCELED, and the process is gone");
    let (status, body) = cluster
        .post_json(2, &format!("/ga4gh/tes/v1/tasks/{id}:cancel"), &json!({}))
        .await?;
    ensure!(status == 200 && body == json!({}), "{status} {body}");
    let task = cluster.wait_task(1, &id, Duration::from_secs(10)).await?;
    ensure!(task["state"] == "CANCELED", "{task}");
    ensure!(!runs(&marker)?, "the canceled process still runs");

    phase("cancel of a finished task leaves it as it is");
    let done = cluster.submit_task(0, &shell("true")).await?;
    cluster.wait_task(0, &done, TASK_TIMEOUT).await?;
    cluster
        .post_json(0, &format!("/ga4gh/tes/v1/tasks/{done}:cancel"), &json!({}))
        .await?;
    ensure!(
        cluster.task(0, &done, "MINIMAL").await?["state"] == "COMPLETE",
        "finished task changed"
    );
    Ok(())
}

#[tokio::test]
async fn an_idle_node_steals_a_claim_waiting_in_a_busy_nodes_queue() -> Result<()> {
    let options = ClusterOptions {
        slots: 1,
        ..Default::default()
    };
    let cluster = TestCluster::formed(3, options).await?;
    let name = |i: usize| cluster.nodes[i].name.clone();

    phase("with the other two nodes drained, node 0 runs one task and queues the next");
    let (first, second) =
        one_running_one_queued_on_node_0(&cluster, "sleep 4", "echo stolen").await?;

    phase("node 1 comes back: nothing is pending, so it steals the queued task and runs it now");
    let (status, body) = cluster
        .post(0, &format!("/v1/cluster/nodes/{}:undrain", name(1)))
        .await?;
    ensure!(status == 200, "undrain answered {status}: {body}");
    let stolen = cluster.wait_task(1, &second, TASK_TIMEOUT).await?;
    ensure!(stolen["state"] == "COMPLETE", "{stolen}");
    let logs = stolen["logs"].as_array().expect("logs");
    ensure!(
        logs.len() == 1,
        "a stolen claim is still one attempt: {stolen}"
    );
    ensure!(
        logs[0]["metadata"]["hostname"] == name(1).as_str(),
        "ran on {} instead of node 1",
        logs[0]["metadata"]["hostname"]
    );
    ensure!(logs[0]["logs"][0]["stdout"] == "stolen\n", "{stolen}");
    ensure!(
        cluster.task(0, &first, "MINIMAL").await?["state"] == "RUNNING",
        "the stolen task did not wait for the first to end"
    );
    ensure!(
        cluster.wait_task(0, &first, TASK_TIMEOUT).await?["state"] == "COMPLETE",
        "the first task"
    );
    Ok(())
}

#[tokio::test]
async fn sigterm_hands_queued_claims_back_at_once_instead_of_leaving_them_to_the_lease()
-> Result<()> {
    let options = ClusterOptions {
        slots: 1,
        lease_ms: 20_000,
        ..Default::default()
    };
    let mut cluster = TestCluster::formed(3, options).await?;
    let names: Vec<String> = cluster.nodes.iter().map(|n| n.name.clone()).collect();
    let name = |i: usize| names[i].clone();

    phase("node 0 runs one task and holds the next in its queue; the others are drained");
    let (first, second) =
        one_running_one_queued_on_node_0(&cluster, "sleep 3", "echo later").await?;

    phase("SIGTERM to node 0: the queued claim is handed back long before a lease would end");
    let started = std::time::Instant::now();
    cluster.send_sigterm(0)?;
    let this = &cluster;
    shoal_tests::wait_for("the hand-back", Duration::from_secs(8), async || {
        let second = this.task(1, &second, "BASIC").await.ok()?;
        let no_attempt = second["logs"].as_array().is_some_and(Vec::is_empty);
        (second["state"] == "QUEUED" && no_attempt).then_some(())
    })
    .await?;
    ensure!(
        started.elapsed() < Duration::from_secs(15),
        "took as long as a lease"
    );
    let exit = cluster.terminate(0, Duration::from_secs(30)).await?;
    ensure!(exit == Some(0), "node 0 did not exit cleanly");

    phase("the running task was finished, not abandoned; the queued one runs elsewhere");
    ensure!(
        cluster.wait_task(1, &first, TASK_TIMEOUT).await?["state"] == "COMPLETE",
        "the running task"
    );
    let (status, body) = cluster
        .post(1, &format!("/v1/cluster/nodes/{}:undrain", name(1)))
        .await?;
    ensure!(status == 200, "undrain answered {status}: {body}");
    let later = cluster.wait_task(1, &second, TASK_TIMEOUT).await?;
    ensure!(later["state"] == "COMPLETE", "{later}");
    ensure!(later["logs"].as_array().map(Vec::len) == Some(1), "{later}");
    Ok(())
}

/// Drains nodes 1 and 2, then submits a task running `first` and one running `second`
/// through node 1: node 0 (one slot) runs the first and holds the second as a queued claim.
/// Returns the two task ids once both are so.
async fn one_running_one_queued_on_node_0(
    cluster: &TestCluster,
    first: &str,
    second: &str,
) -> Result<(String, String)> {
    for i in [1, 2] {
        let (status, body) = cluster
            .post(
                0,
                &format!("/v1/cluster/nodes/{}:drain", cluster.nodes[i].name),
            )
            .await?;
        ensure!(status == 200, "drain answered {status}: {body}");
    }
    let first = cluster.submit_task(1, &shell(first)).await?;
    let second = cluster.submit_task(1, &shell(second)).await?;
    shoal_tests::wait_for(
        "the second task queued on node 0",
        TASK_TIMEOUT,
        async || {
            let first = cluster.task(1, &first, "BASIC").await.ok()?;
            let second_task = cluster.task(1, &second, "BASIC").await.ok()?;
            // QUEUED in TES, but claimed in the log: held in a node's queue, and node 0 is
            // the only node claiming work.
            let second_job = cluster.job(1, &second).await.ok()?;
            let queued_here =
                second_task["state"] == "QUEUED" && second_job["counts"]["claimed"] == 1;
            (first["state"] == "RUNNING" && queued_here).then_some(())
        },
    )
    .await?;
    Ok((first, second))
}

/// A loopback HTTP server that answers every request with a body that never ends (a byte a
/// second). Stops when the test ends (the runtime drops it).
async fn trickling_server() -> Result<String> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let url = format!("http://{}/slow", listener.local_addr()?);
    tokio::spawn(async move {
        while let Ok((mut socket, _)) = listener.accept().await {
            tokio::spawn(async move {
                let mut request = [0_u8; 4096];
                let _ = socket.read(&mut request).await;
                let head = "HTTP/1.1 200 OK\r\nContent-Length: 1000000000\r\n\r\n";
                if socket.write_all(head.as_bytes()).await.is_err() {
                    return;
                }
                while socket.write_all(b"x").await.is_ok() {
                    tokio::time::sleep(Duration::from_secs(1)).await;
                }
            });
        }
    });
    Ok(url)
}

#[tokio::test]
async fn cancel_stops_an_attempt_while_its_inputs_still_download() -> Result<()> {
    let cluster = TestCluster::formed(1, single_node()).await?;
    let url = trickling_server().await?;
    let task = json!({
        "inputs": [{ "url": url, "path": "/in/big" }],
        "executors": [{ "image": "busybox", "command": ["true"] }],
    });
    let id = cluster.submit_task(0, &task).await?;
    let this = &cluster;
    shoal_tests::wait_for("the download to begin", TASK_TIMEOUT, async || {
        (this.task(0, &id, "MINIMAL").await.ok()?["state"] == "INITIALIZING").then_some(())
    })
    .await?;
    tokio::time::sleep(Duration::from_millis(500)).await;

    phase("cancel while INITIALIZING: CANCELED within seconds, not after the download");
    let (status, body) = cluster
        .post_json(0, &format!("/ga4gh/tes/v1/tasks/{id}:cancel"), &json!({}))
        .await?;
    ensure!(status == 200, "{status} {body}");
    let ended = cluster.wait_task(0, &id, Duration::from_secs(5)).await?;
    ensure!(ended["state"] == "CANCELED", "{ended}");
    Ok(())
}

fn single_node() -> ClusterOptions {
    ClusterOptions {
        bootstrap_expect: 1,
        ..Default::default()
    }
}

#[tokio::test]
async fn a_running_tasks_output_so_far_is_visible_from_every_node() -> Result<()> {
    let cluster = TestCluster::formed(3, ClusterOptions::default()).await?;
    let id = cluster
        .submit_task(0, &shell("echo a; echo b >&2; exec sleep 300"))
        .await?;
    wait_running(&cluster, 0, &id).await?;
    let this = &cluster;

    phase("while it runs, FULL shows what it printed so far on every node; BASIC hides it");
    for node in 0..3 {
        let seen =
            shoal_tests::wait_for("the output so far", Duration::from_secs(10), async || {
                let task = this.task(node, &id, "FULL").await.ok()?;
                let log = &task["logs"][0]["logs"][0];
                (log["stdout"] == "a\n").then(|| task.clone())
            })
            .await?;
        let log = &seen["logs"][0]["logs"][0];
        ensure!(seen["state"] == "RUNNING", "{seen}");
        ensure!(
            log["stderr"] == "b\n"
                && log.get("end_time").is_none()
                && log.get("exit_code").is_none(),
            "a running executor has no end and no exit code yet: {seen}"
        );
    }
    let basic = cluster.task(1, &id, "BASIC").await?;
    ensure!(
        basic["logs"][0]["logs"][0].get("stdout").is_none(),
        "{basic}"
    );

    let (status, _) = cluster
        .post_json(0, &format!("/ga4gh/tes/v1/tasks/{id}:cancel"), &json!({}))
        .await?;
    ensure!(status == 200);
    let ended = cluster.wait_task(0, &id, Duration::from_secs(10)).await?;
    ensure!(ended["state"] == "CANCELED", "{ended}");
    Ok(())
}

/// A task asking `cores` cpus that sleeps a second.
fn sized_sleep(cores: u32) -> serde_json::Value {
    let mut task = shell("sleep 1");
    if cores > 0 {
        task["resources"] = json!({ "cpu_cores": cores });
    }
    task
}

/// Submits two tasks asking `cores` cpus that sleep a second, waits for both to complete
/// and gives when each ran.
async fn two_sleeps(cluster: &TestCluster, cores: u32) -> Result<Vec<(String, String)>> {
    let ids = [
        cluster.submit_task(0, &sized_sleep(cores)).await?,
        cluster.submit_task(0, &sized_sleep(cores)).await?,
    ];
    let mut spans = Vec::new();
    for id in &ids {
        let task = cluster.wait_task(0, id, TASK_TIMEOUT).await?;
        ensure!(task["state"] == "COMPLETE", "{task}");
        spans.push(run_span(&task)?);
    }
    Ok(spans)
}

/// When the task's (only) executor started and ended, as RFC 3339 text with milliseconds in
/// UTC: ordered as text.
fn run_span(task: &serde_json::Value) -> Result<(String, String)> {
    let log = &task["logs"][0]["logs"][0];
    let (Some(start), Some(end)) = (log["start_time"].as_str(), log["end_time"].as_str()) else {
        anyhow::bail!("no executor times in {task}");
    };
    Ok((start.to_string(), end.to_string()))
}

#[tokio::test]
async fn two_tasks_asking_two_cpus_never_run_at_once_on_a_two_cpu_node() -> Result<()> {
    let cluster = TestCluster::formed(
        1,
        ClusterOptions {
            slots: 4,
            cpus: Some(2.0),
            ..single_node()
        },
    )
    .await?;

    phase("two tasks asking nothing (one cpu each) share the two cpus: they overlap");
    let spans = two_sleeps(&cluster, 0).await?;
    let overlap = |a: &(String, String), b: &(String, String)| a.0 < b.1 && b.0 < a.1;
    ensure!(overlap(&spans[0], &spans[1]), "{spans:?}");

    phase("two tasks asking two cpus each run one after the other, with slots to spare");
    let spans = two_sleeps(&cluster, 2).await?;
    ensure!(
        !overlap(&spans[0], &spans[1]),
        "they ran at once: {spans:?}"
    );
    Ok(())
}

#[tokio::test]
async fn a_task_no_node_fits_waits_saying_why_and_runs_when_a_big_enough_node_joins() -> Result<()>
{
    let options = ClusterOptions {
        cpus: Some(2.0),
        ..single_node()
    };
    let mut cluster = TestCluster::formed(1, options.clone()).await?;

    phase("a task asking 64 cpus stays QUEUED on a 2-cpu cluster, and says why");
    let mut task = shell("echo ran");
    task["resources"] = json!({ "cpu_cores": 64, "ram_gb": 1 });
    let id = cluster.submit_task(0, &task).await?;
    let small = cluster.submit_task(0, &shell("echo small")).await?;
    let done = cluster.wait_task(0, &small, TASK_TIMEOUT).await?;
    ensure!(
        done["state"] == "COMPLETE",
        "work behind it still runs: {done}"
    );
    let waiting = cluster.task(0, &id, "MINIMAL").await?;
    ensure!(waiting["state"] == "QUEUED", "{waiting}");
    let job = cluster.job(0, &id).await?;
    let why = job["waiting"].as_str().unwrap_or_default();
    ensure!(
        why.contains("64 cpus") && why.contains("2 cpus"),
        "the job view says why: {job}"
    );

    phase("a node offering 64 cpus joins and runs it");
    let big = cluster.add_node(Some(ClusterOptions {
        cpus: Some(64.0),
        bootstrap_expect: 1,
        ..options
    }))?;
    cluster.start(big)?;
    let ended = cluster.wait_task(0, &id, TASK_TIMEOUT).await?;
    ensure!(ended["state"] == "COMPLETE", "{ended}");
    let host = ended["logs"][0]["metadata"]["hostname"].as_str();
    ensure!(host == Some(cluster.nodes[big].name.as_str()), "{ended}");
    let job = cluster.job(0, &id).await?;
    ensure!(job.get("waiting").is_none(), "{job}");
    Ok(())
}

#[tokio::test]
async fn a_command_that_cannot_be_started_fails_like_a_shell_and_ignore_error_holds() -> Result<()>
{
    let cluster = TestCluster::formed(1, single_node()).await?;
    let unstartable = cluster
        .submit_task(
            0,
            &json!({ "executors": [
                { "image": "busybox", "command": ["ERROR"], "ignore_error": true },
                { "image": "busybox", "command": ["echo", "hello"] },
            ]}),
        )
        .await?;
    let not_executable = cluster
        .submit_task(
            0,
            &json!({
                "inputs": [{ "path": "/in/data", "content": "not a program" }],
                "executors": [{ "image": "busybox", "command": ["/in/data"] }],
            }),
        )
        .await?;

    phase(
        "EXECUTOR_ERROR, as from a shell: a missing program 127 (its log kept, the next executor run), a file not executable 126",
    );
    let unstartable = cluster.wait_task(0, &unstartable, TASK_TIMEOUT).await?;
    let not_executable = cluster.wait_task(0, &not_executable, TASK_TIMEOUT).await?;
    shoal_tests::check_unstartable(&unstartable, &not_executable)
}

#[tokio::test]
async fn a_node_with_a_free_slot_claims_a_task_sent_to_it_in_the_entry_behind_it() -> Result<()> {
    const TASKS: u64 = 5;
    let mut cluster = TestCluster::formed(3, ClusterOptions::default()).await?;
    // On the leader both entries are proposed in order; a follower forwards them as two
    // requests, which may arrive the other way round (then the claim finds nothing yet and
    // the task goes to whichever node claims it first).
    let node = cluster.leader_index().await?;
    let name = cluster.nodes[node].name.clone();

    // A node claims only once it has ended its previous life's claims, just after it starts.
    let first = cluster.submit_task(node, &shell("true")).await?;
    cluster.wait_task(node, &first, TASK_TIMEOUT).await?;
    let granted_before = granted_behind(&cluster, node).await?;

    phase("tasks sent one at a time to an idle node run there, claimed behind each submission");
    let mut elsewhere = Vec::new();
    for _ in 0..TASKS {
        let id = cluster.submit_task(node, &shell("true")).await?;
        let task = cluster.wait_task(node, &id, TASK_TIMEOUT).await?;
        ensure!(task["state"] == "COMPLETE", "{task}");
        if task["logs"][0]["metadata"]["hostname"] != name.as_str() {
            elsewhere.push(task);
        }
    }
    let granted = granted_behind(&cluster, node).await? - granted_before;
    // One claim may find the claim loop's turn taken (it woke for an entry just applied),
    // and its task go to whichever node claims first.
    ensure!(
        granted >= TASKS - 1,
        "{granted} of {TASKS} tasks were granted by a claim behind their submission"
    );
    ensure!(
        elsewhere.len() <= 1,
        "ran elsewhere than on {name}: {elsewhere:?}"
    );
    Ok(())
}

/// Node `index`'s `shoal_worker_granted_behind_submissions_total`.
async fn granted_behind(cluster: &TestCluster, index: usize) -> Result<u64> {
    node_counter(
        cluster,
        index,
        "shoal_worker_granted_behind_submissions_total",
    )
    .await
}

/// The value of node `index`'s counter `name` (a series without labels) on `/metrics`.
async fn node_counter(cluster: &TestCluster, index: usize, name: &str) -> Result<u64> {
    let metrics = reqwest::get(format!("{}/metrics", cluster.nodes[index].http_url()))
        .await?
        .text()
        .await?;
    metrics
        .lines()
        .find_map(|line| line.strip_prefix(name)?.strip_prefix(' '))
        .and_then(|value| value.trim().parse().ok())
        .ok_or_else(|| anyhow::anyhow!("no {name} in {metrics}"))
}

#[tokio::test]
async fn an_ended_attempts_report_begins_the_next_queued_claim_and_refills_the_queue_in_one_entry()
-> Result<()> {
    const TASKS: usize = 10;
    let cluster = TestCluster::formed(
        1,
        ClusterOptions {
            slots: 1,
            ..single_node()
        },
    )
    .await?;
    // A node claims only once it has ended its previous life's claims, just after it starts.
    let first = cluster.submit_task(0, &shell("true")).await?;
    cluster.wait_task(0, &first, TASK_TIMEOUT).await?;
    let begun_before = node_counter(&cluster, 0, "shoal_worker_begun_behind_reports_total").await?;

    phase("tasks that run one after another on a one-slot node, the next one queued");
    // Shorter than the delay before an attempt writes that it started.
    let task = shell("sleep 0.05");
    let submissions = (0..TASKS).map(|_| cluster.submit_task(0, &task));
    let ids: Vec<String> = futures::future::try_join_all(submissions).await?;
    let applied =
        async || -> Result<u64> { Ok(cluster.status(0, true).await?.applied_index.unwrap_or(0)) };
    let mut first_end = None;
    let mut ended = 0;
    while ended < TASKS {
        ended = 0;
        for id in &ids {
            let task = cluster.task(0, id, "MINIMAL").await?;
            match task["state"].as_str() {
                Some("COMPLETE") => ended += 1,
                Some("QUEUED" | "INITIALIZING" | "RUNNING") => {}
                _ => anyhow::bail!("task {id}: {task}"),
            }
        }
        if ended > 0 && first_end.is_none() {
            first_end = Some((ended, applied().await?));
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let (ended_then, applied_then) = first_end.expect("a first end");
    let entries = applied().await? - applied_then;
    let ends = (TASKS - ended_then) as u64;

    phase("each end was one entry: the report, the next claim's Begin and the refill claim");
    let begun =
        node_counter(&cluster, 0, "shoal_worker_begun_behind_reports_total").await? - begun_before;
    ensure!(
        begun + 1 >= TASKS as u64 - 1,
        "{begun} of {} queued claims were begun in a report's entry",
        TASKS - 1
    );
    // Three writes an end before (the report, the Begin, the refill claim); one now, with
    // room for a claim loop that woke between them.
    ensure!(
        entries <= ends + 3,
        "{entries} log entries for the last {ends} attempt ends"
    );
    Ok(())
}

#[tokio::test]
async fn a_task_waiting_for_a_slot_is_queued_with_no_log_and_echoes_only_what_was_sent()
-> Result<()> {
    let cluster = TestCluster::formed(
        1,
        ClusterOptions {
            slots: 1,
            ..single_node()
        },
    )
    .await?;
    let busy = cluster.submit_task(0, &shell("exec sleep 300")).await?;
    wait_running(&cluster, 0, &busy).await?;

    phase("a task behind it (claimed into the node's queue, or pending) is QUEUED with no log");
    let waiting = cluster.submit_task(0, &shell("true")).await?;
    tokio::time::sleep(Duration::from_millis(500)).await;
    let task = cluster.task(0, &waiting, "FULL").await?;
    ensure!(task["state"] == "QUEUED", "{task}");
    ensure!(
        task["logs"].as_array().is_none_or(|logs| logs.is_empty()),
        "a QUEUED task shows no attempt: {task}"
    );

    phase("resources not sent are not shown; those sent are");
    ensure!(task.get("resources").is_none(), "{task}");
    let mut sized = shell("true");
    sized["resources"] = json!({ "ram_gb": 1.0 });
    let sized = cluster.submit_task(0, &sized).await?;
    let shown = cluster.task(0, &sized, "BASIC").await?;
    ensure!(
        shown["resources"] == json!({ "ram_gb": 1.0 }),
        "only what was sent: {shown}"
    );
    for id in [&busy, &waiting, &sized] {
        cluster
            .post_json(0, &format!("/ga4gh/tes/v1/tasks/{id}:cancel"), &json!({}))
            .await?;
    }
    Ok(())
}

#[tokio::test]
async fn the_process_sandbox_sees_the_paths_path_and_variables_the_node_configures() -> Result<()> {
    // A tool installed outside the system directories, as a conda env or a venv would be.
    let tools = tempfile::tempdir()?;
    let bin = tools.path().join("bin");
    std::fs::create_dir_all(&bin)?;
    let tool = bin.join("site-tool");
    std::fs::write(&tool, "#!/bin/sh\necho \"site tool ran with $SITE\"\n")?;
    std::fs::set_permissions(&tool, std::os::unix::fs::PermissionsExt::from_mode(0o755))?;
    // Outside /tmp (private in every sandbox anyway) and outside the system directories.
    let hidden = tempfile::tempdir_in("/var/tmp")?;
    std::fs::write(hidden.path().join("secret"), "not for tasks")?;
    let (root, path) = (
        tools.path().to_path_buf(),
        format!("{}:/usr/bin:/bin", bin.display()),
    );
    let options = ClusterOptions {
        configure: Some(std::sync::Arc::new(move |config| {
            config.worker.process_binds = vec![root.clone()];
            config.worker.process_path = path.clone();
            config.worker.process_env =
                [("SITE".to_string(), "the site's value".to_string())].into();
        })),
        ..single_node()
    };
    let cluster = TestCluster::formed(1, options).await?;

    phase("a program on worker.process_path, below worker.process_binds, with worker.process_env");
    let id = cluster
        .submit_task(
            0,
            &json!({ "executors": [{ "image": "busybox", "command": ["site-tool"] }] }),
        )
        .await?;
    let task = cluster.wait_task(0, &id, TASK_TIMEOUT).await?;
    ensure!(task["state"] == "COMPLETE", "{task}");
    ensure!(
        task["logs"][0]["logs"][0]["stdout"] == "site tool ran with the site's value\n",
        "{task}"
    );

    phase("a task's own env overrides the node's; other host paths stay invisible");
    let script = format!(
        "echo $SITE; cat {}/secret || echo hidden",
        hidden.path().display()
    );
    let mut task = shell(&script);
    task["executors"][0]["env"] = json!({ "SITE": "the task's value" });
    let id = cluster.submit_task(0, &task).await?;
    let task = cluster.wait_task(0, &id, TASK_TIMEOUT).await?;
    ensure!(
        task["logs"][0]["logs"][0]["stdout"] == "the task's value\nhidden\n",
        "{task}"
    );
    Ok(())
}

#[tokio::test]
async fn a_process_step_over_its_memory_is_killed_and_says_so() -> Result<()> {
    let cluster = TestCluster::formed(1, single_node()).await?;
    let hog = "x=$(head -c 200000000 /dev/zero | tr '\\0' a); echo survived";
    let mut over = shell(hog);
    over["resources"] = json!({ "ram_gb": 0.05, "cpu_cores": 1 });
    let over = cluster.submit_task(0, &over).await?;
    let mut within = shell("echo fits");
    within["resources"] = json!({ "ram_gb": 0.05, "cpu_cores": 1 });
    let within = cluster.submit_task(0, &within).await?;

    phase("a step asking 50 MiB that takes 200 MB: killed, EXECUTOR_ERROR, killed for memory");
    let task = cluster.wait_task(0, &over, TASK_TIMEOUT).await?;
    ensure!(task["state"] == "EXECUTOR_ERROR", "{task}");
    let log = &task["logs"][0];
    ensure!(log["logs"][0]["stdout"] != "survived\n", "{task}");
    ensure!(
        log["system_logs"].to_string().contains("killed for memory"),
        "{task}"
    );

    phase("a step within its limits completes; no step cgroup is left behind");
    let task = cluster.wait_task(0, &within, TASK_TIMEOUT).await?;
    ensure!(task["state"] == "COMPLETE", "{task}");
    ensure!(
        !task["logs"][0]["system_logs"]
            .to_string()
            .contains("not enforced"),
        "{task}"
    );
    // This node's step cgroups (other tests' nodes share the cgroup the test runs in).
    let mine = format!("shoal-{}-", cluster.status(0, false).await?.node_id);
    let own = std::fs::read_to_string("/proc/self/cgroup")?;
    let left: std::collections::BTreeSet<std::path::PathBuf> = own
        .lines()
        .filter_map(|line| line.splitn(3, ':').nth(2))
        .flat_map(|path| {
            ["memory", "cpu", ""].map(|c| {
                std::path::Path::new("/sys/fs/cgroup")
                    .join(c)
                    .join(path.trim_start_matches('/'))
            })
        })
        .filter_map(|dir| std::fs::read_dir(dir).ok())
        .flatten()
        .flatten()
        .filter(|entry| entry.file_name().to_string_lossy().starts_with(&mine))
        .map(|entry| entry.path())
        .collect();
    ensure!(left.is_empty(), "step cgroups left: {left:?}");
    Ok(())
}

/// The FTP server scripts/test.sh started: its URL without the user, the user, the password
/// and its root directory on this machine (to seed inputs and read outputs without shoal).
fn ftp_server() -> Result<Option<(String, String, String, std::path::PathBuf)>> {
    let (Ok(url), Ok(root)) = (
        std::env::var("SHOAL_TEST_FTP_URL"),
        std::env::var("SHOAL_TEST_FTP_ROOT"),
    ) else {
        anyhow::ensure!(
            std::env::var_os("CI").is_none(),
            "CI is set but SHOAL_TEST_FTP_URL/SHOAL_TEST_FTP_ROOT are not: run scripts/test.sh"
        );
        eprintln!("skipping: set SHOAL_TEST_FTP_URL and SHOAL_TEST_FTP_ROOT (scripts/test.sh)");
        return Ok(None);
    };
    let parsed = url::Url::parse(&url)?;
    let origin = format!(
        "ftp://{}:{}",
        parsed.host_str().unwrap_or_default(),
        parsed.port().unwrap_or(21)
    );
    Ok(Some((
        origin,
        parsed.username().to_string(),
        parsed.password().unwrap_or_default().to_string(),
        root.into(),
    )))
}

#[tokio::test]
async fn a_task_reads_its_inputs_from_ftp_and_writes_its_outputs_there() -> Result<()> {
    let Some((origin, user, password, root)) = ftp_server()? else {
        return Ok(());
    };
    let dir = format!("task-{}", std::process::id());
    std::fs::create_dir_all(root.join(&dir).join("in/sub"))?;
    std::fs::write(root.join(&dir).join("in/a.txt"), "alpha\n")?;
    std::fs::write(root.join(&dir).join("in/sub/b.txt"), "beta\n")?;
    let options = ClusterOptions {
        // The node logs in with its configured user: the URLs carry no password.
        configure: Some(std::sync::Arc::new(move |config| {
            config.storage.ftp_user = user.clone();
            config.storage.ftp_password = password.clone();
        })),
        ..single_node()
    };
    let cluster = TestCluster::formed(1, options).await?;

    phase("a task reads a file and a directory over FTP and writes a file and a directory back");
    let base = format!("{origin}/{dir}");
    let task = json!({
        "inputs": [
            { "path": "/in/a.txt", "url": format!("{base}/in/a.txt") },
            { "path": "/in/tree", "url": format!("{base}/in"), "type": "DIRECTORY" }
        ],
        "outputs": [
            { "path": "/out/joined.txt", "url": format!("{base}/out/joined.txt") },
            { "path": "/out/tree", "url": format!("{base}/out/tree"), "type": "DIRECTORY" }
        ],
        "executors": [{ "image": "busybox", "command": ["sh", "-c",
            "cat /in/a.txt /in/tree/sub/b.txt > /out/joined.txt && mkdir -p /out/tree/deep && \
             echo gamma > /out/tree/deep/c.txt"] }]
    });
    let id = cluster.submit_task(0, &task).await?;
    let done = cluster.wait_task(0, &id, TASK_TIMEOUT).await?;
    ensure!(done["state"] == "COMPLETE", "{done}");
    let out = root.join(&dir).join("out");
    ensure!(std::fs::read_to_string(out.join("joined.txt"))? == "alpha\nbeta\n");
    ensure!(std::fs::read_to_string(out.join("tree/deep/c.txt"))? == "gamma\n");
    let leftovers: Vec<_> = walkdir::WalkDir::new(&out)
        .into_iter()
        .filter_map(|e| e.ok())
        .filter(|e| e.file_name().to_string_lossy().contains(".shoal-partial-"))
        .collect();
    ensure!(leftovers.is_empty(), "partial files left: {leftovers:?}");

    phase("an input that is not on the server fails the task, naming the URL");
    let missing = json!({
        "inputs": [{ "path": "/in/x", "url": format!("{base}/in/missing.txt") }],
        "executors": [{ "image": "busybox", "command": ["true"] }]
    });
    let id = cluster.submit_task(0, &missing).await?;
    let failed = cluster.wait_task(0, &id, TASK_TIMEOUT).await?;
    ensure!(failed["state"] == "SYSTEM_ERROR", "{failed}");
    let logs = cluster.task(0, &id, "FULL").await?["logs"].to_string();
    ensure!(logs.contains("missing.txt"), "{logs}");
    std::fs::remove_dir_all(root.join(&dir))?;
    Ok(())
}

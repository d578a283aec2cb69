//! TES tasks run by the `docker` executor against the real engine, in the test image that
//! `scripts/test.sh` builds (`SHOAL_TEST_IMAGE`, from Debian's static busybox). Without an
//! engine (the variable unset) the tests say so and pass; the script refuses to run without
//! one under CI.

use std::time::Duration;

use anyhow::{Context, Result, ensure};
use serde_json::{Value, json};
use shoal_tests::{ClusterOptions, TestCluster, phase};

const TASK_TIMEOUT: Duration = Duration::from_secs(60);

fn image() -> Option<String> {
    let image = std::env::var("SHOAL_TEST_IMAGE").ok();
    if image.is_none() {
        eprintln!("SHOAL_TEST_IMAGE is not set (no Docker engine): skipping");
    }
    image
}

/// One docker node whose containers have no network: nothing a test runs can reach beyond
/// its container.
fn options() -> ClusterOptions {
    ClusterOptions {
        bootstrap_expect: 1,
        executor: "docker".to_string(),
        slots: 4,
        docker_network: "none".to_string(),
        ..Default::default()
    }
}

fn executor(image: &str, script: &str) -> Value {
    json!({ "image": image, "command": ["sh", "-c", script] })
}

fn task(executors: Vec<Value>) -> Value {
    json!({ "executors": executors })
}

/// Containers (running or not) whose name starts with `prefix`.
fn containers_named(prefix: &str) -> Result<Vec<String>> {
    let output = std::process::Command::new("docker")
        .args(["ps", "-a", "--format", "{{.Names}}"])
        .output()
        .context("docker ps")?;
    Ok(String::from_utf8_lossy(&output.stdout)
        .lines()
        .filter(|name| name.starts_with(prefix))
        .map(str::to_string)
        .collect())
}

fn stdout(task: &Value, executor: usize) -> &str {
    task["logs"][0]["logs"][executor]["stdout"]
        .as_str()
        .unwrap_or("")
}

#[tokio::test]
async fn tasks_run_in_containers_with_their_files_env_limits_and_results() -> Result<()> {
    let Some(image) = image() else { return Ok(()) };
    let image = image.as_str();
    let cluster = TestCluster::formed(1, options()).await?;
    let files = cluster.files_dir();
    let out_url = |name: &str| format!("file://{}", files.join(name).display());

    phase("every scenario submitted at once");
    let scenarios: Vec<(&str, Value)> = vec![
        ("echo", task(vec![executor(image, "echo hello")])),
        (
            "no network",
            task(vec![executor(
                image,
                "tail -n +3 /proc/net/dev | cut -d: -f1 | tr -d ' '",
            )]),
        ),
        (
            "exit 3",
            task(vec![executor(image, "echo failing >&2; exit 3")]),
        ),
        (
            "shared volume",
            json!({
                "volumes": ["/shared"],
                "executors": [
                    executor(image, "echo from the first > /shared/note"),
                    executor(image, "cat /shared/note"),
                ]
            }),
        ),
        (
            "ignore_error",
            json!({ "executors": [
                { "image": image, "command": ["sh", "-c", "exit 1"], "ignore_error": true },
                executor(image, "echo next ran"),
            ]}),
        ),
        (
            "unstartable",
            json!({ "executors": [
                { "image": image, "command": ["ERROR"], "ignore_error": true },
                { "image": image, "command": ["echo", "hello"] },
            ]}),
        ),
        (
            "not executable",
            task(vec![
                json!({ "image": image, "command": ["/etc/hostname"] }),
            ]),
        ),
        (
            "stdio files",
            json!({
                "inputs": [{ "path": "/in/data", "content": "the input\n" }],
                "executors": [
                    { "image": image, "command": ["sh", "-c", "cat; echo oops >&2"],
                      "stdin": "/in/data", "stdout": "/out/stdout.txt", "stderr": "/out/stderr.txt" },
                    { "image": image, "command": ["cat", "/out/stdout.txt", "/out/stderr.txt"] },
                ]
            }),
        ),
        (
            "env and workdir",
            json!({ "executors": [{
                "image": image, "command": ["sh", "-c", "echo $GREETING; pwd"],
                "env": { "GREETING": "hi there" }, "workdir": "/work/here"
            }]}),
        ),
        (
            "memory",
            json!({
                "resources": { "ram_gb": 0.03 },
                "executors": [executor(image, "x=$(head -c 200000000 /dev/zero | tr '\\0' a); echo survived")]
            }),
        ),
        (
            "missing image",
            task(vec![
                json!({ "image": "127.0.0.1:9/shoal-test/absent:1", "command": ["true"] }),
            ]),
        ),
        (
            "1 MiB of stdout",
            task(vec![executor(
                image,
                "head -c 1048576 /dev/zero | tr '\\0' x; echo; echo the last line",
            )]),
        ),
        (
            "read-only inputs",
            json!({
                "inputs": [{ "path": "/in/file", "content": "keep me" }],
                "executors": [executor(image, "cat /in/file; echo; echo changed > /in/file && echo WROTE || echo refused")]
            }),
        ),
        (
            "outputs",
            json!({
                "outputs": [
                    { "path": "/out/dir", "url": out_url("dir"), "type": "DIRECTORY" },
                    { "path": "/out/logs/*.log", "path_prefix": "/out/logs/", "url": out_url("logs"), "type": "FILE" },
                ],
                "executors": [executor(image, "mkdir -p /out/dir/sub /out/logs; echo a > /out/dir/a; echo b > /out/dir/sub/b; echo one > /out/logs/1.log; echo two > /out/logs/2.log; echo skip > /out/logs/x.txt")]
            }),
        ),
    ];
    let mut ids = Vec::new();
    for (name, body) in &scenarios {
        ids.push((*name, cluster.submit_task(0, body).await?));
    }
    let mut results = std::collections::BTreeMap::new();
    for (name, id) in &ids {
        let task = cluster.wait_task(0, id, TASK_TIMEOUT).await?;
        results.insert(*name, task);
    }
    let state = |name: &str| results[name]["state"].as_str().unwrap_or("").to_string();

    phase("echo hello: COMPLETE with its stdout");
    ensure!(state("echo") == "COMPLETE", "{}", results["echo"]);
    ensure!(stdout(&results["echo"], 0) == "hello\n");

    phase("worker.docker_network = none: the container has only a loopback interface");
    ensure!(
        stdout(&results["no network"], 0) == "lo\n",
        "{}",
        results["no network"]
    );

    phase("exit 3: EXECUTOR_ERROR with exit code 3 and the stderr tail");
    let failed = &results["exit 3"];
    ensure!(state("exit 3") == "EXECUTOR_ERROR", "{failed}");
    ensure!(failed["logs"][0]["logs"][0]["exit_code"] == 3, "{failed}");
    ensure!(
        failed["logs"][0]["logs"][0]["stderr"] == "failing\n",
        "{failed}"
    );

    phase("two executors share a volume");
    ensure!(
        stdout(&results["shared volume"], 1) == "from the first\n",
        "{}",
        results["shared volume"]
    );

    phase("ignore_error: the next executor runs; the failure still counts, as in Funnel");
    let ignored = &results["ignore_error"];
    ensure!(state("ignore_error") == "EXECUTOR_ERROR", "{ignored}");
    ensure!(ignored["logs"][0]["logs"][0]["exit_code"] == 1, "{ignored}");
    ensure!(stdout(ignored, 1) == "next ran\n", "{ignored}");

    phase("a command that cannot be started fails like `docker run`: 127, log kept, next runs");
    shoal_tests::check_unstartable(&results["unstartable"], &results["not executable"])?;

    phase("stdin from a file, stdout and stderr into files");
    ensure!(
        stdout(&results["stdio files"], 1) == "the input\noops\n",
        "{}",
        results["stdio files"]
    );

    phase("env and workdir");
    ensure!(
        stdout(&results["env and workdir"], 0) == "hi there\n/work/here\n",
        "{}",
        results["env and workdir"]
    );

    phase("a step over its memory limit fails and says it was killed for memory");
    let memory = &results["memory"];
    ensure!(state("memory") == "EXECUTOR_ERROR", "{memory}");
    ensure!(
        !stdout(memory, 0).contains("survived"),
        "the step ran to its end: {memory}"
    );
    let system_logs = memory["logs"][0]["system_logs"].to_string();
    ensure!(system_logs.contains("killed for memory"), "{memory}");

    phase("a missing image: SYSTEM_ERROR naming the image");
    let missing = &results["missing image"];
    ensure!(state("missing image") == "SYSTEM_ERROR", "{missing}");
    ensure!(
        missing["logs"][0]["system_logs"]
            .to_string()
            .contains("127.0.0.1:9/shoal-test/absent:1"),
        "{missing}"
    );

    phase("1 MiB of stdout: the tail kept ends with the last line");
    let big = stdout(&results["1 MiB of stdout"], 0);
    ensure!(
        big.ends_with("xxx\nthe last line\n") && big.len() < 1024 * 1024,
        "kept {} bytes ending {:?}",
        big.len(),
        &big[big.len().saturating_sub(40)..]
    );

    phase("inputs are read-only");
    ensure!(
        stdout(&results["read-only inputs"], 0) == "keep me\nrefused\n",
        "{}",
        results["read-only inputs"]
    );

    phase("outputs from a directory and from a wildcard are uploaded");
    ensure!(state("outputs") == "COMPLETE", "{}", results["outputs"]);
    let read = |path: &str| std::fs::read_to_string(files.join(path)).unwrap_or_default();
    ensure!(read("dir/a") == "a\n" && read("dir/sub/b") == "b\n");
    ensure!(read("logs/1.log") == "one\n" && read("logs/2.log") == "two\n");
    ensure!(
        !files.join("logs/x.txt").exists(),
        "the wildcard took a file it does not match"
    );

    phase("no container is left behind");
    let prefix = format!("shoal-{}", cluster.status(0, false).await?.node_id);
    ensure!(
        containers_named(&prefix)?.is_empty(),
        "{:?}",
        containers_named(&prefix)?
    );
    Ok(())
}

#[tokio::test]
async fn cancel_kills_the_container_and_a_restart_removes_what_a_previous_life_left() -> Result<()>
{
    let Some(image) = image() else { return Ok(()) };
    let auto = ClusterOptions {
        executor: "auto".to_string(),
        ..options()
    };
    let mut cluster = TestCluster::formed(1, auto).await?;
    let status = cluster.status(0, false).await?;
    let node_id = status.node_id;
    let prefix = format!("shoal-{node_id}");

    phase("executor auto picks docker when the engine answers, and the status says so");
    ensure!(
        status.members[0].executor.as_deref() == Some("docker"),
        "{:?}",
        status.members[0].executor
    );

    phase("a running task shows its output so far, then is canceled: CANCELED, container gone");
    let id = cluster
        .submit_task(0, &task(vec![executor(&image, "echo started; sleep 300")]))
        .await?;
    let this = &cluster;
    shoal_tests::wait_for("the task to run", TASK_TIMEOUT, async || {
        let running = this.task(0, &id, "MINIMAL").await.ok()?["state"] == "RUNNING";
        (running && !containers_named(&prefix).ok()?.is_empty()).then_some(())
    })
    .await?;
    shoal_tests::wait_for("its output so far", Duration::from_secs(10), async || {
        let task = this.task(0, &id, "FULL").await.ok()?;
        (task["logs"][0]["logs"][0]["stdout"] == "started\n").then_some(())
    })
    .await?;
    let (status, body) = cluster
        .post_json(0, &format!("/ga4gh/tes/v1/tasks/{id}:cancel"), &json!({}))
        .await?;
    ensure!(status == 200, "{status} {body}");
    let canceled = cluster.wait_task(0, &id, Duration::from_secs(10)).await?;
    ensure!(canceled["state"] == "CANCELED", "{canceled}");
    shoal_tests::wait_for("the container to go", Duration::from_secs(10), async || {
        containers_named(&prefix).ok()?.is_empty().then_some(())
    })
    .await?;

    phase("a container left by this node's previous life is removed when it starts again");
    cluster.kill(0)?;
    let leftover = format!("{prefix}-leftover");
    let created = std::process::Command::new("docker")
        .args(["create", "--name", &leftover, "--label"])
        .arg(format!("shoal.node={node_id}"))
        .args([image.as_str(), "true"])
        .output()?;
    ensure!(
        created.status.success(),
        "{}",
        String::from_utf8_lossy(&created.stderr)
    );
    cluster.start(0)?;
    cluster.wait_formed(1, Duration::from_secs(20)).await?;
    shoal_tests::wait_for("the leftover to go", Duration::from_secs(20), async || {
        containers_named(&leftover).ok()?.is_empty().then_some(())
    })
    .await?;
    Ok(())
}

//! shoal's container image (deploy/Dockerfile, built offline by scripts/image.sh): what it
//! declares, and a node running in it that serves the API and runs a task as its own user,
//! with its data in the volume. Needs `SHOAL_TEST_SHOAL_IMAGE` (scripts/test.sh sets it).

use std::process::Command;
use std::time::Duration;

use anyhow::{Context, Result, bail, ensure};
use shoal_tests::{docker, phase, wait_for};

/// A container removed, with its anonymous volumes, however the test ends.
struct Container(String);

impl Drop for Container {
    fn drop(&mut self) {
        let _ = Command::new("docker")
            .args(["rm", "-f", "-v", &self.0])
            .output();
    }
}

#[test]
fn the_image_runs_shoal_as_an_unprivileged_user_with_its_data_in_a_volume() -> Result<()> {
    let Some(image) = shoal_tests::test_shoal_image()? else {
        return Ok(());
    };
    phase("what the image declares");
    let inspect = |format: &str| docker(&["image", "inspect", "-f", format, &image]);
    ensure!(
        inspect("{{.Config.User}}")? == "10001:10001",
        "not uid 10001"
    );
    ensure!(
        inspect("{{json .Config.Entrypoint}}")? == r#"["/usr/local/bin/shoal"]"#,
        "entrypoint"
    );
    ensure!(
        inspect("{{json .Config.Volumes}}")? == r#"{"/var/lib/shoal":{}}"#,
        "volume"
    );
    let ports = inspect("{{json .Config.ExposedPorts}}")?;
    ensure!(
        ports.contains("7000/tcp") && ports.contains("8000/tcp"),
        "exposed ports {ports}"
    );
    // Small: besides shoal itself, a slimmed Debian with CA certificates (about 82 MB).
    let size: u64 = inspect("{{.Size}}")?.parse().context("image size")?;
    let binary: u64 = docker(&[
        "run",
        "--rm",
        "--entrypoint",
        "stat",
        &image,
        "-c",
        "%s",
        "/usr/local/bin/shoal",
    ])?
    .parse()
    .context("binary size")?;
    let rest_mb = size.saturating_sub(binary) / 1_000_000;
    ensure!(rest_mb <= 100, "the image holds {rest_mb} MB besides shoal");
    let version = docker(&["run", "--rm", &image, "--version"])?;
    ensure!(version.starts_with("shoal "), "--version said {version:?}");

    phase("a node in the image serves the API on its published port and runs a task");
    let port = shoal_tests::free_port();
    let name = format!("shoal-image-test-{port}");
    let id = docker(&[
        "run",
        "-d",
        "--name",
        &name,
        "-p",
        &format!("127.0.0.1:{port}:8000"),
        &image,
        "node",
        "--data-dir=/var/lib/shoal",
        "--http-listen=0.0.0.0:8000",
        "--insecure",
        "--executor=process",
    ])?;
    let container = Container(id);
    let base = format!("http://127.0.0.1:{port}");
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    runtime.block_on(async {
        let http = reqwest::Client::new();
        let ready = format!("{base}/readyz");
        wait_for(
            "the node in the container to be ready",
            Duration::from_secs(30),
            async || {
                let answer = http.get(&ready).send().await.ok()?;
                answer.status().is_success().then_some(())
            },
        )
        .await?;
        let task = serde_json::json!({
            "executors": [{ "image": "none", "command": ["sh", "-c", "echo ran as $(id -u)"] }]
        });
        let created: serde_json::Value = http
            .post(format!("{base}/ga4gh/tes/v1/tasks"))
            .json(&task)
            .send()
            .await?
            .json()
            .await?;
        let task_id = created["id"].as_str().context("no task id")?.to_string();
        let url = format!("{base}/ga4gh/tes/v1/tasks/{task_id}?view=FULL");
        let done = wait_for("the task to end", Duration::from_secs(30), async || {
            let task: serde_json::Value = http.get(&url).send().await.ok()?.json().await.ok()?;
            match task["state"].as_str()? {
                "COMPLETE" | "EXECUTOR_ERROR" | "SYSTEM_ERROR" => Some(task),
                _ => None,
            }
        })
        .await?;
        ensure!(done["state"] == "COMPLETE", "task ended {done}");
        let stdout = done["logs"][0]["logs"][0]["stdout"].as_str().unwrap_or("");
        ensure!(stdout == "ran as 10001\n", "the task printed {stdout:?}");
        anyhow::Ok(())
    })?;

    phase("its data is in the volume, owned by the image's user");
    let listing = docker(&["exec", &container.0, "ls", "-ln", "/var/lib/shoal"])?;
    for file in ["state.redb", "raft-log.redb", "node.key"] {
        let line = listing
            .lines()
            .find(|l| l.ends_with(file))
            .with_context(|| format!("no {file} in the volume:\n{listing}"))?;
        if !line.contains(" 10001 10001 ") {
            bail!("{file} is not owned by 10001: {line}");
        }
    }
    let mounts = docker(&[
        "inspect",
        "-f",
        "{{range .Mounts}}{{.Type}} {{.Destination}}{{end}}",
        &container.0,
    ])?;
    ensure!(mounts == "volume /var/lib/shoal", "mounts: {mounts}");

    phase("removed with its volume, it leaves nothing behind");
    let volume = docker(&[
        "inspect",
        "-f",
        "{{range .Mounts}}{{.Name}}{{end}}",
        &container.0,
    ])?;
    drop(container);
    let left = docker(&["ps", "-a", "-q", "--filter", &format!("name={name}")])?;
    ensure!(left.is_empty(), "container {name} left behind");
    let volumes = docker(&["volume", "ls", "-q"])?;
    ensure!(
        !volumes.lines().any(|v| v == volume),
        "volume {volume} left behind"
    );
    Ok(())
}

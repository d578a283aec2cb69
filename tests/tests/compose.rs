//! The compose cluster of `deploy/compose/` on shoal's own image: three containers on a
//! user-defined network stand in for three hosts. It forms, takes tasks through every node,
//! reruns the work of a `docker kill`ed node elsewhere, keeps serving on two nodes while the
//! third is cut off with `docker network disconnect` (which refuses writes), catches that one
//! up once reconnected, and `docker-compose down -v` leaves nothing behind. Slow (about 35
//! s): in the slow nextest group. Needs `SHOAL_TEST_SHOAL_IMAGE` (scripts/test.sh).

use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail, ensure};
use serde_json::{Value, json};
use shoal_tests::{docker, phase, wait_for};

const TOKEN: &str = "compose-test-token-0123456789";
const WAIT: Duration = Duration::from_secs(60);

/// One compose project, taken down with its volumes however the test ends.
struct Project {
    name: String,
    dir: PathBuf,
    env: Vec<(String, String)>,
    ports: [u16; 3],
    http: reqwest::Client,
}

impl Project {
    fn compose(&self, args: &[&str]) -> Result<Output> {
        let out = Command::new("docker-compose")
            .current_dir(&self.dir)
            .args(["-p", &self.name])
            .args(args)
            .envs(self.env.iter().map(|(k, v)| (k, v)))
            .output()?;
        ensure!(
            out.status.success(),
            "docker-compose {}: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr)
        );
        Ok(out)
    }

    /// The id of node's container, as compose knows it (its name differs between compose v1
    /// and v2).
    fn container(&self, node: usize) -> Result<String> {
        let out = self.compose(&["ps", "-q", &format!("n{}", node + 1)])?;
        let id = String::from_utf8_lossy(&out.stdout).trim().to_string();
        ensure!(
            !id.is_empty(),
            "compose knows no container of n{}",
            node + 1
        );
        Ok(id)
    }

    fn url(&self, node: usize, path: &str) -> String {
        format!("http://127.0.0.1:{}{path}", self.ports[node])
    }

    async fn get(&self, node: usize, path: &str) -> Result<Value> {
        self.call(reqwest::Method::GET, node, path, None).await
    }

    async fn post(&self, node: usize, path: &str, body: &Value) -> Result<Value> {
        self.call(reqwest::Method::POST, node, path, Some(body))
            .await
    }

    /// One API call with the token; the JSON answer, or an error naming the call's status.
    async fn call(
        &self,
        method: reqwest::Method,
        node: usize,
        path: &str,
        body: Option<&Value>,
    ) -> Result<Value> {
        let mut request = self
            .http
            .request(method.clone(), self.url(node, path))
            .bearer_auth(TOKEN);
        if let Some(body) = body {
            request = request.json(body);
        }
        let answer = request.send().await?;
        ensure!(
            answer.status().is_success(),
            "{method} {path}: {}",
            answer.status()
        );
        Ok(answer.json().await?)
    }

    /// `shoal` inside node's container, against its own API (reachable while it is cut off).
    fn shoal_inside(&self, node: usize, args: &[&str]) -> Result<Output> {
        let container = self.container(node)?;
        let mut command = Command::new("docker");
        command.args([
            "exec",
            &container,
            "shoal",
            "--server",
            "http://127.0.0.1:8000",
        ]);
        command
            .args(["--token", TOKEN, "--output", "json"])
            .args(args);
        Ok(command.output()?)
    }

    /// Node names draining, as `node` sees them (a consistent read through its leader).
    fn draining_inside(&self, node: usize) -> Option<Vec<String>> {
        let out = self.shoal_inside(node, &["cluster", "status"]).ok()?;
        let view: Value = serde_json::from_slice(&out.stdout).ok()?;
        let members = view["members"].as_array()?;
        Some(
            members
                .iter()
                .filter(|m| m["draining"] == true)
                .filter_map(|m| m["name"].as_str().map(str::to_string))
                .collect(),
        )
    }

    /// Waits until node sees three registered members and a leader; returns the leader's name.
    async fn formed(&self, node: usize) -> Result<String> {
        wait_for("three registered members and a leader", WAIT, async || {
            let view = self.get(node, "/v1/cluster").await.ok()?;
            let members = view["members"].as_array()?;
            let registered = members.iter().filter(|m| m["slots"].is_number()).count();
            let leader = members.iter().find(|m| m["leader"] == true)?;
            (registered == 3).then(|| leader["name"].as_str().map(str::to_string))?
        })
        .await
    }

    async fn submit(&self, node: usize, command: &[&str]) -> Result<String> {
        let task = json!({ "executors": [{ "image": "none", "command": command }] });
        let created = self.post(node, "/ga4gh/tes/v1/tasks", &task).await?;
        Ok(created["id"].as_str().context("no task id")?.to_string())
    }

    async fn task(&self, node: usize, id: &str) -> Result<Value> {
        self.get(node, &format!("/ga4gh/tes/v1/tasks/{id}?view=FULL"))
            .await
    }
}

impl Drop for Project {
    fn drop(&mut self) {
        let _ = self.compose(&["down", "-v", "--remove-orphans"]);
    }
}

fn write_secrets(dir: &Path) -> Result<()> {
    use std::os::unix::fs::PermissionsExt;
    let key: String = (0..32)
        .map(|_| format!("{:02x}", rand::random::<u8>()))
        .collect();
    std::fs::write(dir.join("cluster.key"), key)?;
    std::fs::write(dir.join("tokens.toml"), format!("tokens = [\"{TOKEN}\"]\n"))?;
    // Readable by the image's user (uid 10001): compose mounts secret files as they are.
    for file in ["cluster.key", "tokens.toml"] {
        std::fs::set_permissions(dir.join(file), std::fs::Permissions::from_mode(0o644))?;
    }
    std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o755))?;
    Ok(())
}

#[tokio::test]
async fn a_compose_cluster_survives_a_killed_and_a_cut_off_node_and_leaves_nothing() -> Result<()> {
    let Some(image) = shoal_tests::test_shoal_image()? else {
        return Ok(());
    };
    let secrets = tempfile::tempdir()?;
    write_secrets(secrets.path())?;
    let ports = [
        shoal_tests::free_port(),
        shoal_tests::free_port(),
        shoal_tests::free_port(),
    ];
    let mut env = vec![
        ("SHOAL_IMAGE".to_string(), image),
        (
            "SHOAL_SECRETS_DIR".to_string(),
            secrets.path().display().to_string(),
        ),
    ];
    for (i, port) in ports.iter().enumerate() {
        env.push((format!("SHOAL_HTTP_PORT_{}", i + 1), port.to_string()));
    }
    let project = Project {
        name: format!("shoaltest{}", ports[0]),
        dir: Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy/compose"),
        env,
        ports,
        http: reqwest::Client::builder()
            .timeout(Duration::from_secs(15))
            .build()?,
    };

    phase("up: three containers on their own addresses form one cluster");
    let started = Instant::now();
    project.compose(&["up", "-d"])?;
    let leader = project.formed(0).await?;
    eprintln!(
        "compose cluster formed {:.1} s after `docker-compose up -d` began (leader {leader})",
        started.elapsed().as_secs_f64()
    );
    for node in 0..3 {
        let view = project.get(node, "/v1/cluster").await?;
        let name = format!("n{}", node + 1);
        let me = view["members"]
            .as_array()
            .and_then(|m| m.iter().find(|m| m["name"] == name.as_str()))
            .context("a node misses itself")?;
        ensure!(
            me["addresses"] == json!([format!("/dns4/{name}/tcp/7000")]),
            "{name} is known by {}",
            me["addresses"]
        );
    }

    phase("a task through each node runs to COMPLETE");
    let mut ids = Vec::new();
    for node in 0..3 {
        ids.push(project.submit(node, &["sh", "-c", "echo hello"]).await?);
    }
    for (node, id) in ids.iter().enumerate() {
        let done = wait_for("a task to complete", WAIT, async || {
            let task = project.task(node, id).await.ok()?;
            (task["state"] == "COMPLETE").then_some(task)
        })
        .await?;
        let stdout = &done["logs"][0]["logs"][0]["stdout"];
        ensure!(stdout == "hello\n", "task {id} printed {stdout}");
    }

    phase("docker kill: the killed node's task runs again on another node");
    let long = project.submit(0, &["sleep", "6"]).await?;
    let host = wait_for("the long task to start", WAIT, async || {
        let task = project.task(0, &long).await.ok()?;
        let host = task["logs"][0]["metadata"]["hostname"].as_str()?;
        (task["state"] == "RUNNING").then(|| host.to_string())
    })
    .await?;
    let killed: usize = host
        .strip_prefix('n')
        .and_then(|n| n.parse::<usize>().ok())
        .filter(|n| (1..=3).contains(n))
        .with_context(|| format!("ran on {host:?}, not on n1-n3"))?
        - 1;
    docker(&["kill", &project.container(killed)?])?;
    let asker = (killed + 1) % 3;
    let done = wait_for("the task to finish elsewhere", WAIT, async || {
        let task = project.task(asker, &long).await.ok()?;
        (task["state"] == "COMPLETE").then_some(task)
    })
    .await?;
    let attempts = done["logs"].as_array().map_or(0, Vec::len);
    let last_host = &done["logs"][attempts.saturating_sub(1)]["metadata"]["hostname"];
    ensure!(
        attempts >= 2 && *last_host != host.as_str(),
        "expected a second attempt away from {host}: {done}"
    );
    project.compose(&["start", &format!("n{}", killed + 1)])?;
    let leader = project.formed(asker).await?;

    phase("docker network disconnect: the other two keep serving, the cut one refuses writes");
    let cut: usize = leader[1..].parse::<usize>()? - 1;
    let others: Vec<usize> = (0..3).filter(|&n| n != cut).collect();
    let network = format!("{}_shoal", project.name);
    docker(&["network", "disconnect", &network, &project.container(cut)?])?;
    let target = format!("n{}", others[1] + 1);
    wait_for("a write through the two left", WAIT, async || {
        let path = format!("/v1/cluster/nodes/{target}:drain");
        project.post(others[0], &path, &json!({})).await.ok()
    })
    .await?;
    let served = project
        .submit(others[1], &["sh", "-c", "echo served"])
        .await?;
    wait_for("a task on the two left", WAIT, async || {
        let task = project.task(others[0], &served).await.ok()?;
        (task["state"] == "COMPLETE").then_some(())
    })
    .await?;
    let refused = project.shoal_inside(cut, &["cluster", "drain", &format!("n{}", cut + 1)])?;
    let why = String::from_utf8_lossy(&refused.stderr);
    ensure!(
        !refused.status.success() && why.contains("leader"),
        "the cut-off node took a write, or refused it for another reason than the lost \
         leader: {}{why}",
        String::from_utf8_lossy(&refused.stdout)
    );
    let seen = project.get(others[0], "/v1/cluster").await?;
    let cut_name = format!("n{}", cut + 1);
    let cut_draining = seen["members"]
        .as_array()
        .and_then(|m| m.iter().find(|m| m["name"] == cut_name.as_str()))
        .map(|m| m["draining"] == true);
    ensure!(cut_draining == Some(false), "the refused write took effect");

    phase("docker network connect: the cut one catches up");
    let reconnected = Instant::now();
    // With its service name as alias again, as compose gave it: peers find it by that name.
    let alias = format!("n{}", cut + 1);
    docker(&[
        "network",
        "connect",
        "--alias",
        &alias,
        &network,
        &project.container(cut)?,
    ])?;
    wait_for(
        "the reconnected node to see the write it missed",
        WAIT,
        async || {
            let draining = project.draining_inside(cut)?;
            draining.contains(&target).then_some(())
        },
    )
    .await?;
    eprintln!(
        "the cut-off node caught up {:.2} s after `docker network connect`",
        reconnected.elapsed().as_secs_f64()
    );
    let draining = project
        .draining_inside(cut)
        .context("the reconnected node's view")?;
    ensure!(
        !draining.contains(&cut_name),
        "the write the cut-off node refused took effect after all: {draining:?}"
    );

    phase("down -v: no container, volume or network of the project is left");
    project.compose(&["down", "-v", "--remove-orphans"])?;
    let label = format!("label=com.docker.compose.project={}", project.name);
    for what in ["ps -a", "volume ls", "network ls"] {
        let mut args: Vec<&str> = what.split(' ').collect();
        args.extend(["-q", "--filter", &label]);
        let left = docker(&args)?;
        if !left.is_empty() {
            bail!("`docker {what}` still lists {left}");
        }
    }
    Ok(())
}

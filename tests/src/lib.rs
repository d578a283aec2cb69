//! The multi-node harness: real `shoal node` processes on loopback, each with its own temp
//! data dir and generated config, that tests and benchmarks start, kill (-9), stop (SIGTERM),
//! restart and query — and conditions to wait for with deadlines, never sleeps.
//!
//! The `shoal` binary comes from `SHOAL_BIN` when set (scripts/test.sh sets it after one
//! build); otherwise the harness runs `cargo build --bin shoal` once per process, so a plain
//! `cargo nextest run` never tests a stale binary.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, anyhow, bail};
use shoal_node::Config;
use shoal_node::api::ClusterView;

pub mod netns;
pub mod observe;
pub mod s3;
pub mod sim;

/// A value scripts/test.sh exports for the tests that need what it installs or builds. `None`
/// means skip the test, after saying so; in CI its absence is an error.
fn from_test_script(name: &str) -> Result<Option<String>> {
    match std::env::var(name) {
        Ok(value) => Ok(Some(value)),
        Err(_) => {
            anyhow::ensure!(
                std::env::var_os("CI").is_none(),
                "CI is set but {name} is not: run scripts/test.sh"
            );
            eprintln!("skipping: {name} is not set (scripts/test.sh sets it)");
            Ok(None)
        }
    }
}

/// The build before format 5 (`SHOAL_TEST_PREVIOUS_BIN`, which scripts/test.sh builds in CI
/// from an earlier commit). `None` elsewhere: the rolling-upgrade test then runs this build
/// with a switch that makes it read and write format 4 only. In CI its absence is an error.
pub fn test_previous_bin() -> Result<Option<PathBuf>> {
    match std::env::var_os("SHOAL_TEST_PREVIOUS_BIN") {
        Some(bin) => Ok(Some(bin.into())),
        None => {
            anyhow::ensure!(
                std::env::var_os("CI").is_none(),
                "CI is set but SHOAL_TEST_PREVIOUS_BIN is not: run scripts/test.sh"
            );
            Ok(None)
        }
    }
}

/// The venv's python (`SHOAL_TEST_PYTHON`), with py-tes and kubernetes-validate.
pub fn test_python() -> Result<Option<String>> {
    from_test_script("SHOAL_TEST_PYTHON")
}

/// shoal's own container image (`SHOAL_TEST_SHOAL_IMAGE`, built with scripts/image.sh).
pub fn test_shoal_image() -> Result<Option<String>> {
    from_test_script("SHOAL_TEST_SHOAL_IMAGE")
}

/// Runs the docker CLI; its stdout, trimmed, or an error with its stderr.
pub fn docker(args: &[&str]) -> Result<String> {
    let out = Command::new("docker").args(args).output()?;
    anyhow::ensure!(
        out.status.success(),
        "docker {}: {}",
        args.join(" "),
        String::from_utf8_lossy(&out.stderr)
    );
    Ok(String::from_utf8_lossy(&out.stdout).trim().to_string())
}

/// The `shoal` binary the harness runs.
pub fn shoal_bin() -> &'static Path {
    static BIN: OnceLock<PathBuf> = OnceLock::new();
    BIN.get_or_init(|| {
        if let Ok(path) = std::env::var("SHOAL_BIN") {
            return PathBuf::from(path);
        }
        let workspace = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
        let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".to_string());
        let status = Command::new(cargo)
            .args(["build", "--quiet", "-p", "shoal-node", "--bin", "shoal"])
            .current_dir(&workspace)
            .status()
            .expect("run cargo build for the shoal binary");
        assert!(status.success(), "cargo build --bin shoal failed");
        let target = std::env::var("CARGO_TARGET_DIR")
            .map(PathBuf::from)
            .unwrap_or_else(|_| workspace.join("target"));
        target.join("debug").join("shoal")
    })
}

/// Ports [`free_port`] has handed out in this process.
static HANDED_OUT: std::sync::Mutex<std::collections::BTreeSet<u16>> =
    std::sync::Mutex::new(std::collections::BTreeSet::new());

/// A free loopback TCP port (bound and released; fine for tests run one cluster at a time).
///
/// Picked below the kernel's ephemeral range (32768 and up on Linux): a port the kernel
/// hands out for `bind(0)` is also what it picks for outgoing connections, so one released
/// here could be taken by another test's client connection before the node binds it.
pub fn free_port() -> u16 {
    use std::hash::{BuildHasher, Hasher};
    const FIRST: u16 = 20_000;
    const LAST: u16 = 32_000;
    for _ in 0..1_000 {
        let random = std::collections::hash_map::RandomState::new()
            .build_hasher()
            .finish();
        let port = FIRST + (random % u64::from(LAST - FIRST)) as u16;
        // Never the same port twice in one process: a port handed out is free until its
        // node binds it, so another pick could get it too (one node's HTTP and another's p2p).
        let mut given = HANDED_OUT
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        if !given.contains(&port) && std::net::TcpListener::bind(("127.0.0.1", port)).is_ok() {
            given.insert(port);
            return port;
        }
    }
    panic!("no free loopback port in {FIRST}..{LAST}");
}

/// The ports nodes use on hosts of their own (see [`ClusterOptions::net`]).
const NET_HTTP_PORT: u16 = 8000;
const NET_P2P_PORT: u16 = 7000;

/// Waits until `probe` yields a value, checking every 20 ms until `timeout`.
pub async fn wait_for<T>(
    what: &str,
    timeout: Duration,
    mut probe: impl AsyncFnMut() -> Option<T>,
) -> Result<T> {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(value) = probe().await {
            return Ok(value);
        }
        if Instant::now() >= deadline {
            bail!("timed out after {timeout:?} waiting for {what}");
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Logs the start of a test phase: what the next steps prove.
pub fn phase(text: &str) {
    eprintln!("--- {text}");
}

/// One node of a test cluster: its config on disk and, while running, its process.
pub struct TestNode {
    pub name: String,
    pub config: Config,
    pub config_path: PathBuf,
    pub log_path: PathBuf,
    /// Given to `shoal node` after the config, e.g. `--restore FILE`.
    pub args: Vec<String>,
    /// Set for this node's process only (after the cluster's `extra_env`).
    pub env: Vec<(String, String)>,
    /// The binary this node runs, when not [`shoal_bin`] (another build of shoal).
    pub bin: Option<PathBuf>,
    child: Option<Child>,
}

impl TestNode {
    pub fn http_url(&self) -> String {
        format!("http://{}", self.config.http.listen)
    }

    /// The process id while the node runs.
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    pub fn is_running(&mut self) -> bool {
        matches!(self.child.as_mut().map(|c| c.try_wait()), Some(Ok(None)))
    }

    /// The node's log so far, for failure messages.
    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log_path).unwrap_or_default()
    }
}

/// A change to every node's config (see [`ClusterOptions::configure`]).
pub type Configure = std::sync::Arc<dyn Fn(&mut shoal_node::config::Config) + Send + Sync>;

/// Options shared by every node of a cluster.
#[derive(Clone)]
pub struct ClusterOptions {
    pub bootstrap_expect: usize,
    pub voters_max: usize,
    pub cluster_key_file: Option<PathBuf>,
    pub snapshot_every_entries: u64,
    pub log_kept_entries: u64,
    pub lease_ms: u64,
    pub executor: String,
    pub slots: u32,
    /// `worker.cpus` of every node; `None` offers one core per slot, so tasks asking nothing
    /// fill every slot whatever the machine has.
    pub cpus: Option<f64>,
    pub extra_env: Vec<(String, String)>,
    /// `http.tokens` of every node.
    pub tokens: Vec<shoal_node::config::TokenConfig>,
    /// Bearer token the harness's own requests carry.
    pub client_token: Option<String>,
    /// `worker.docker_network` of every node.
    pub docker_network: String,
    /// The S3 server every node reads and writes `s3://` URLs on.
    pub s3: Option<s3::S3Server>,
    /// Changes every node's config last, for what the options above do not cover.
    pub configure: Option<Configure>,
    /// Hosts of their own: node `i` runs in namespace `i` of this network, on its address
    /// (HTTP port 8000, p2p port 7000, `--insecure`), instead of on loopback.
    pub net: Option<std::sync::Arc<netns::Net>>,
}

impl Default for ClusterOptions {
    fn default() -> Self {
        ClusterOptions {
            bootstrap_expect: 3,
            voters_max: 5,
            cluster_key_file: None,
            snapshot_every_entries: 10_000,
            log_kept_entries: 1_000,
            lease_ms: 10_000,
            executor: "process".to_string(),
            slots: 2,
            cpus: None,
            extra_env: Vec::new(),
            tokens: Vec::new(),
            client_token: None,
            docker_network: String::new(),
            s3: None,
            configure: None,
            net: None,
        }
    }
}

/// A cluster of real node processes. Dropping it kills every node it started.
pub struct TestCluster {
    pub dir: tempfile::TempDir,
    pub nodes: Vec<TestNode>,
    seeds: Vec<String>,
    options: ClusterOptions,
    http: reqwest::Client,
}

impl TestCluster {
    /// Writes configs for `count` nodes (identical but for name, ports and data dir).
    pub fn new(count: usize, options: ClusterOptions) -> Result<TestCluster> {
        let dir = tempfile::Builder::new().prefix("shoal-test-").tempdir()?;
        let p2p_ports: Vec<u16> = (0..count).map(|_| free_port()).collect();
        let seeds = match &options.net {
            Some(net) => (0..count)
                .map(|i| format!("/ip4/{}/tcp/{NET_P2P_PORT}", net.ip(i)))
                .collect(),
            None => p2p_ports
                .iter()
                .map(|p| format!("/ip4/127.0.0.1/tcp/{p}"))
                .collect(),
        };
        let mut headers = reqwest::header::HeaderMap::new();
        if let Some(token) = &options.client_token {
            headers.insert(
                reqwest::header::AUTHORIZATION,
                format!("Bearer {token}").parse()?,
            );
        }
        let http = reqwest::Client::builder()
            .timeout(Duration::from_secs(30))
            .default_headers(headers)
            .build()?;
        let mut cluster = TestCluster {
            dir,
            nodes: Vec::new(),
            seeds,
            options,
            http,
        };
        for port in p2p_ports {
            cluster.define_node(port)?;
        }
        Ok(cluster)
    }

    fn define_node(&mut self, p2p_port: u16) -> Result<usize> {
        let index = self.nodes.len();
        let name = format!("n{}", index + 1);
        let mut config = Config {
            node_name: name.clone(),
            ..Config::default()
        };
        config.data_dir = self.dir.path().join(&name);
        match &self.options.net {
            Some(net) => {
                config.http.listen = format!("{}:{NET_HTTP_PORT}", net.ip(index));
                config.p2p.listen = format!("/ip4/{}/tcp/{NET_P2P_PORT}", net.ip(index));
            }
            None => {
                config.http.listen = format!("127.0.0.1:{}", free_port());
                config.p2p.listen = format!("/ip4/127.0.0.1/tcp/{p2p_port}");
            }
        }
        config.p2p.seeds = self.seeds.clone();
        config.p2p.bootstrap_expect = self.options.bootstrap_expect;
        config.raft.voters_max = self.options.voters_max;
        config.raft.snapshot_every_entries = self.options.snapshot_every_entries;
        config.raft.log_kept_entries = self.options.log_kept_entries;
        config.worker.executor = self.options.executor.clone();
        config.worker.lease_ms = self.options.lease_ms;
        config.worker.slots = self.options.slots;
        config.worker.cpus = self.options.cpus.unwrap_or(f64::from(self.options.slots));
        config.http.tokens = self.options.tokens.clone();
        config.worker.docker_network = self.options.docker_network.clone();
        if let Some(s3) = &self.options.s3 {
            config.storage.s3_endpoint = s3.endpoint.clone();
            config.storage.s3_region = "us-east-1".to_string();
            config.storage.s3_allow_http = true;
        }
        std::fs::create_dir_all(self.files_dir())?;
        config.storage.allowed_local_roots = vec![self.files_dir()];
        if let Some(key) = &self.options.cluster_key_file {
            config.p2p.cluster_key_file = key.display().to_string();
        }
        if let Some(configure) = &self.options.configure {
            configure(&mut config);
        }
        let config_path = self.dir.path().join(format!("{name}.toml"));
        std::fs::write(&config_path, toml::to_string(&config)?)?;
        let log_path = self.dir.path().join(format!("{name}.log"));
        self.nodes.push(TestNode {
            name,
            config,
            config_path,
            log_path,
            args: Vec::new(),
            env: Vec::new(),
            bin: None,
            child: None,
        });
        Ok(index)
    }

    /// A directory every node may read and write through `file://` URLs (task inputs and
    /// outputs in tests).
    pub fn files_dir(&self) -> PathBuf {
        self.dir.path().join("files")
    }

    /// Starts `count` nodes and waits until they form one cluster with every member registered.
    pub async fn formed(count: usize, options: ClusterOptions) -> Result<TestCluster> {
        let voters = count.min(options.voters_max);
        let mut cluster = TestCluster::new(count, options)?;
        cluster.start_all()?;
        if let Err(error) = cluster.wait_formed(voters, Duration::from_secs(20)).await {
            bail!("{error:#}\n{}", cluster.log_tails(40));
        }
        Ok(cluster)
    }

    /// Defines one more node with the same seeds (it joins the running cluster when started).
    pub fn add_node(&mut self, options: Option<ClusterOptions>) -> Result<usize> {
        if let Some(options) = options {
            self.options = options;
        }
        self.define_node(free_port())
    }

    pub fn start(&mut self, index: usize) -> Result<()> {
        let node = &mut self.nodes[index];
        if node.is_running() {
            bail!("{} is already running", node.name);
        }
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&node.log_path)?;
        let s3_env = self.options.s3.iter().flat_map(|s3| {
            [
                ("AWS_ACCESS_KEY_ID".to_string(), s3.key.clone()),
                ("AWS_SECRET_ACCESS_KEY".to_string(), s3.secret.clone()),
            ]
        });
        let mut command = match &self.options.net {
            Some(net) => {
                let mut command = net.command(index, node.bin.as_deref().unwrap_or(shoal_bin()));
                command.args(["node", "--insecure"]);
                command
            }
            None => {
                let mut command = Command::new(node.bin.as_deref().unwrap_or(shoal_bin()));
                command.arg("node");
                command
            }
        };
        let child = command
            .arg("--config")
            .arg(&node.config_path)
            .args(&node.args)
            .env("RUST_LOG", "info,openraft=warn,libp2p=warn")
            .envs(s3_env)
            .envs(self.options.extra_env.iter().cloned())
            .envs(node.env.iter().cloned())
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .with_context(|| format!("start {}", node.name))?;
        node.child = Some(child);
        Ok(())
    }

    pub fn start_all(&mut self) -> Result<()> {
        (0..self.nodes.len()).try_for_each(|i| self.start(i))
    }

    /// SIGKILL: the node gets no chance to clean up.
    pub fn kill(&mut self, index: usize) -> Result<()> {
        let node = &mut self.nodes[index];
        let mut child = node
            .child
            .take()
            .ok_or_else(|| anyhow!("{} is not running", node.name))?;
        child.kill()?;
        child.wait()?;
        Ok(())
    }

    /// Sends `signal` to a running node's process.
    fn signal(&self, index: usize, signal: nix::sys::signal::Signal) -> Result<()> {
        let node = &self.nodes[index];
        let child = node
            .child
            .as_ref()
            .ok_or_else(|| anyhow!("{} is not running", node.name))?;
        let pid = nix::unistd::Pid::from_raw(child.id() as i32);
        nix::sys::signal::kill(pid, signal)?;
        Ok(())
    }

    /// Sends SIGTERM to a node without waiting for it to exit (see [`TestCluster::terminate`]).
    pub fn send_sigterm(&self, index: usize) -> Result<()> {
        self.signal(index, nix::sys::signal::Signal::SIGTERM)
    }

    /// SIGSTOP: the node hangs (the processes it started run on) until [`TestCluster::resume`].
    pub fn pause(&self, index: usize) -> Result<()> {
        self.signal(index, nix::sys::signal::Signal::SIGSTOP)
    }

    /// SIGCONT: a paused node carries on where it stopped.
    pub fn resume(&self, index: usize) -> Result<()> {
        self.signal(index, nix::sys::signal::Signal::SIGCONT)
    }

    /// SIGTERM, then waits for the exit; returns the exit code.
    pub async fn terminate(&mut self, index: usize, timeout: Duration) -> Result<Option<i32>> {
        let node = &mut self.nodes[index];
        let mut child = node
            .child
            .take()
            .ok_or_else(|| anyhow!("{} is not running", node.name))?;
        let pid = nix::unistd::Pid::from_raw(child.id() as i32);
        nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM)?;
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(status) = child.try_wait()? {
                return Ok(status.code());
            }
            if Instant::now() >= deadline {
                child.kill()?;
                bail!("{} did not exit within {timeout:?} of SIGTERM", node.name);
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    pub async fn get<T: serde::de::DeserializeOwned>(&self, index: usize, path: &str) -> Result<T> {
        let url = format!("{}{path}", self.nodes[index].http_url());
        let response = self.http.get(&url).send().await?;
        let status = response.status();
        if !status.is_success() {
            bail!(
                "GET {url}: {status}: {}",
                response.text().await.unwrap_or_default()
            );
        }
        Ok(response.json().await?)
    }

    /// POSTs to a node and returns the status and the JSON body.
    pub async fn post(&self, index: usize, path: &str) -> Result<(u16, serde_json::Value)> {
        let url = format!("{}{path}", self.nodes[index].http_url());
        let response = self
            .http
            .post(&url)
            .json(&serde_json::json!({}))
            .send()
            .await?;
        let status = response.status().as_u16();
        Ok((
            status,
            response.json().await.unwrap_or(serde_json::Value::Null),
        ))
    }

    /// `GET` a cluster view at `path` (with its query) on one node.
    pub async fn status_with(&self, index: usize, path: &str) -> Result<ClusterView> {
        self.get(index, path).await
    }

    /// `GET /v1/cluster` on one node; `stale` skips the read-index round trip.
    pub async fn status(&self, index: usize, stale: bool) -> Result<ClusterView> {
        let path = if stale {
            "/v1/cluster?consistency=stale"
        } else {
            "/v1/cluster"
        };
        self.get(index, path).await
    }

    /// Indexes of nodes whose process is running.
    pub fn running(&mut self) -> Vec<usize> {
        (0..self.nodes.len())
            .filter(|&i| self.nodes[i].is_running())
            .collect()
    }

    /// Waits until every running node reports the same leader and `voters` voters, every
    /// member registered (so writes naming any node succeed); returns the leader's node id.
    pub async fn wait_formed(&mut self, voters: usize, timeout: Duration) -> Result<String> {
        let running = self.running();
        let this = &*self;
        wait_for(
            &format!(
                "{} running nodes to agree on a leader and {voters} voters",
                running.len()
            ),
            timeout,
            async || {
                let mut leader = None;
                for &i in &running {
                    let view = this.status(i, true).await.ok()?;
                    let voter_count = view
                        .members
                        .iter()
                        .filter(|m| m.role == shoal_node::api::Role::Voter)
                        .count();
                    let registered = view.members.iter().all(|m| m.slots.is_some());
                    if voter_count != voters
                        || !registered
                        || view.leader.is_none()
                        || (leader.is_some() && leader != view.leader)
                    {
                        return None;
                    }
                    leader = view.leader;
                }
                leader
            },
        )
        .await
    }

    /// Index of the node whose id is `node_id`.
    pub async fn index_of(&self, node_id: &str) -> Result<usize> {
        for i in 0..self.nodes.len() {
            if let Ok(view) = self.status(i, true).await
                && view.node_id == node_id
            {
                return Ok(i);
            }
        }
        bail!("no running node has id {node_id}")
    }

    /// Index of the current leader, as the given node sees it.
    pub async fn leader_index(&mut self) -> Result<usize> {
        let running = self.running();
        for i in running {
            if let Ok(view) = self.status(i, true).await
                && let Some(leader) = view.leader
            {
                return self.index_of(&leader).await;
            }
        }
        bail!("no running node knows a leader")
    }

    /// POSTs a JSON body to a node and returns the status and the JSON answer.
    pub async fn post_json(
        &self,
        index: usize,
        path: &str,
        body: &serde_json::Value,
    ) -> Result<(u16, serde_json::Value)> {
        let url = format!("{}{path}", self.nodes[index].http_url());
        let response = self.http.post(&url).json(body).send().await?;
        let status = response.status().as_u16();
        Ok((
            status,
            response.json().await.unwrap_or(serde_json::Value::Null),
        ))
    }

    /// Sends `method path` to node `index` with exactly the given bearer token (none: no
    /// header) and headers; returns the status, the answer's headers and its JSON (or Null).
    pub async fn request(
        &self,
        index: usize,
        method: reqwest::Method,
        path: &str,
        token: Option<&str>,
        body: Option<&serde_json::Value>,
    ) -> Result<(u16, reqwest::header::HeaderMap, serde_json::Value)> {
        let url = format!("{}{path}", self.nodes[index].http_url());
        let mut request = reqwest::Client::new()
            .request(method, &url)
            .timeout(Duration::from_secs(30));
        if let Some(token) = token {
            request = request.bearer_auth(token);
        }
        if let Some(body) = body {
            request = request.json(body);
        }
        let response = request.send().await?;
        let status = response.status().as_u16();
        let headers = response.headers().clone();
        let body = response.json().await.unwrap_or(serde_json::Value::Null);
        Ok((status, headers, body))
    }

    /// Submits a TES task through node `index`; returns its id.
    pub async fn submit_task(&self, index: usize, task: &serde_json::Value) -> Result<String> {
        let (status, body) = self.post_json(index, "/ga4gh/tes/v1/tasks", task).await?;
        match body["id"].as_str() {
            Some(id) if status == 200 => Ok(id.to_string()),
            _ => bail!("task refused: {status} {body}"),
        }
    }

    /// A TES task as node `index` answers it in `view`.
    pub async fn task(&self, index: usize, id: &str, view: &str) -> Result<serde_json::Value> {
        self.get(index, &format!("/ga4gh/tes/v1/tasks/{id}?view={view}"))
            .await
    }

    /// Waits until the task is in one of the terminal TES states; returns it in FULL view.
    pub async fn wait_task(
        &self,
        index: usize,
        id: &str,
        timeout: Duration,
    ) -> Result<serde_json::Value> {
        const TERMINAL: [&str; 4] = ["COMPLETE", "EXECUTOR_ERROR", "SYSTEM_ERROR", "CANCELED"];
        wait_for(&format!("task {id} to end"), timeout, async || {
            let task = self.task(index, id, "MINIMAL").await.ok()?;
            TERMINAL.contains(&task["state"].as_str()?).then_some(())
        })
        .await?;
        self.task(index, id, "FULL").await
    }

    /// Submits a pipeline spec (JSON) through node `index`; returns the answer
    /// (`id`, `name`, `ignored`).
    pub async fn submit_job(
        &self,
        index: usize,
        spec: &serde_json::Value,
    ) -> Result<serde_json::Value> {
        let (status, body) = self.post_json(index, "/v1/jobs", spec).await?;
        if status != 200 || !body["id"].is_string() {
            bail!("job refused: {status} {body}");
        }
        Ok(body)
    }

    /// A pipeline job as node `index` answers it.
    pub async fn job(&self, index: usize, id: &str) -> Result<serde_json::Value> {
        self.get(index, &format!("/v1/jobs/{id}")).await
    }

    /// Waits until the job ended (`done`, `error` or `canceled`); returns it.
    pub async fn wait_job(
        &self,
        index: usize,
        id: &str,
        timeout: Duration,
    ) -> Result<serde_json::Value> {
        wait_for(&format!("job {id} to end"), timeout, async || {
            let job = self.job(index, id).await.ok()?;
            ["done", "error", "canceled"]
                .contains(&job["state"].as_str()?)
                .then_some(job)
        })
        .await
    }

    /// Every datum of a job (all pages), optionally in one state.
    pub async fn datums(
        &self,
        index: usize,
        id: &str,
        state: Option<&str>,
    ) -> Result<Vec<serde_json::Value>> {
        let mut datums = Vec::new();
        let mut token = String::new();
        loop {
            let filter = state.map(|s| format!("&state={s}")).unwrap_or_default();
            let page: serde_json::Value = self
                .get(
                    index,
                    &format!("/v1/jobs/{id}/datums?page_size=1000&page_token={token}{filter}"),
                )
                .await?;
            datums.extend(page["datums"].as_array().cloned().unwrap_or_default());
            match page["next_page_token"].as_str() {
                Some(next) => token = next.to_string(),
                None => return Ok(datums),
            }
        }
    }

    /// The last `lines` lines of every node's log, for a failure message.
    pub fn log_tails(&self, lines: usize) -> String {
        self.nodes
            .iter()
            .map(|n| {
                let log = n.log();
                let tail: Vec<&str> = log.lines().rev().take(lines).collect();
                let tail: Vec<&str> = tail.into_iter().rev().collect();
                format!(
                    "=== {} (last {lines} lines) ===\n{}\n",
                    n.name,
                    tail.join("\n")
                )
            })
            .collect()
    }

    /// All node logs, for a failing assertion's message.
    pub fn logs(&self) -> String {
        self.nodes
            .iter()
            .map(|n| format!("=== {} ===\n{}\n", n.name, n.log()))
            .collect()
    }
}

impl Drop for TestCluster {
    fn drop(&mut self) {
        for node in &mut self.nodes {
            if let Some(mut child) = node.child.take() {
                let _ = child.kill();
                let _ = child.wait();
            }
        }
    }
}

/// Checks how tasks whose command cannot be started end, on any executor: `unstartable` ran a
/// missing program under `ignore_error`, then `echo hello`; `not_executable` ran a file that
/// is not executable. As a shell: 127 and 126, EXECUTOR_ERROR, the log kept.
pub fn check_unstartable(
    unstartable: &serde_json::Value,
    not_executable: &serde_json::Value,
) -> Result<()> {
    anyhow::ensure!(unstartable["state"] == "EXECUTOR_ERROR", "{unstartable}");
    let logs = &unstartable["logs"][0]["logs"];
    anyhow::ensure!(logs[0]["exit_code"] == 127, "{unstartable}");
    anyhow::ensure!(
        logs[0]["stderr"].as_str().unwrap_or("").contains("ERROR"),
        "the reason is on its stderr: {unstartable}"
    );
    anyhow::ensure!(logs[1]["stdout"] == "hello\n", "{unstartable}");
    anyhow::ensure!(
        not_executable["state"] == "EXECUTOR_ERROR",
        "{not_executable}"
    );
    anyhow::ensure!(
        not_executable["logs"][0]["logs"][0]["exit_code"] == 126,
        "{not_executable}"
    );
    Ok(())
}

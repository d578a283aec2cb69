//! `shoal dev-cluster`: N real node processes on this host, one cluster, loopback only.
//!
//! Configs are written once into `--dir` (`n1.toml` … with free loopback ports and every node
//! as a seed); a later run with the same dir reuses them, so the cluster comes back with its
//! data. The command waits until every node reports the same leader and all N members, prints
//! each node's URL, and on Ctrl-C stops the nodes (SIGTERM, then SIGKILL after a grace period).

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};

use clap::Args;
use tokio::process::{Child, Command};

use super::{CliError, Client};
use crate::api::ClusterView;
use crate::config::Config;

/// Most nodes one dev cluster may have.
const NODES_MAX: usize = 16;
/// How long the nodes get to form one cluster.
const FORMATION_TIMEOUT: Duration = Duration::from_secs(60);
/// How long nodes get to leave after SIGTERM before they are killed.
const STOP_GRACE: Duration = Duration::from_secs(10);

#[derive(Debug, Args)]
pub struct DevClusterArgs {
    #[arg(long, default_value_t = 3)]
    pub nodes: usize,
    /// Where configs, data and logs live.
    #[arg(long, default_value = "./shoal-dev-cluster")]
    pub dir: PathBuf,
}

fn free_port() -> Result<u16, CliError> {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|listener| listener.local_addr())
        .map(|addr| addr.port())
        .map_err(|e| CliError::failed(format!("cannot find a free port: {e}")))
}

/// Configs for `count` nodes on loopback, all seeding each other.
pub fn generate_configs(dir: &Path, count: usize) -> Result<Vec<Config>, CliError> {
    let ports: Vec<(u16, u16)> = (0..count)
        .map(|_| Ok((free_port()?, free_port()?)))
        .collect::<Result<_, CliError>>()?;
    let seeds: Vec<String> = ports
        .iter()
        .map(|(_, p2p)| format!("/ip4/127.0.0.1/tcp/{p2p}"))
        .collect();
    let configs = ports
        .iter()
        .enumerate()
        .map(|(i, (http, p2p))| {
            let mut config = Config {
                node_name: format!("n{}", i + 1),
                ..Config::default()
            };
            config.data_dir = dir.join(format!("n{}", i + 1));
            config.http.listen = format!("127.0.0.1:{http}");
            config.p2p.listen = format!("/ip4/127.0.0.1/tcp/{p2p}");
            config.p2p.seeds = seeds.clone();
            config.p2p.bootstrap_expect = count;
            config
        })
        .collect();
    Ok(configs)
}

fn config_paths(dir: &Path, count: usize) -> Vec<PathBuf> {
    (1..=count)
        .map(|i| dir.join(format!("n{i}.toml")))
        .collect()
}

/// Writes fresh configs, or keeps the ones a previous run left.
fn prepare(dir: &Path, count: usize) -> Result<Vec<(PathBuf, Config)>, CliError> {
    let io = |e: std::io::Error| CliError::failed(format!("{}: {e}", dir.display()));
    std::fs::create_dir_all(dir).map_err(io)?;
    let paths = config_paths(dir, count);
    if paths.iter().all(|p| p.exists()) {
        let configs = paths
            .into_iter()
            .map(|p| {
                Config::from_file(&p)
                    .map(|c| (p, c))
                    .map_err(|e| CliError::input(e.to_string()))
            })
            .collect::<Result<_, _>>()?;
        return Ok(configs);
    }
    let configs = generate_configs(dir, count)?;
    for (path, config) in paths.iter().zip(&configs) {
        let text = toml::to_string(config).map_err(|e| CliError::failed(e.to_string()))?;
        std::fs::write(path, text).map_err(io)?;
    }
    Ok(paths.into_iter().zip(configs).collect())
}

fn spawn_node(config_path: &Path, log_path: &Path) -> Result<Child, CliError> {
    let exe =
        std::env::current_exe().map_err(|e| CliError::failed(format!("cannot find shoal: {e}")))?;
    let log = std::fs::File::create(log_path)
        .map_err(|e| CliError::failed(format!("{}: {e}", log_path.display())))?;
    Command::new(exe)
        .arg("node")
        .arg("--config")
        .arg(config_path)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(log)
        .kill_on_drop(true)
        .spawn()
        .map_err(|e| CliError::failed(format!("cannot start a node: {e}")))
}

/// Waits until every node answers with the same leader and `count` members.
async fn wait_formed(
    urls: &[String],
    count: usize,
    children: &mut [Child],
) -> Result<(), CliError> {
    let deadline = Instant::now() + FORMATION_TIMEOUT;
    loop {
        for (child, url) in children.iter_mut().zip(urls) {
            if let Ok(Some(status)) = child.try_wait() {
                return Err(CliError::failed(format!(
                    "node {url} exited early ({status}); see its log"
                )));
            }
        }
        let mut leaders = Vec::new();
        for url in urls {
            let view: Option<ClusterView> = match Client::new(url, None) {
                Ok(client) => client.get("/v1/cluster?consistency=stale").await.ok(),
                Err(_) => None,
            };
            leaders.push(
                view.filter(|v| v.members.len() == count)
                    .and_then(|v| v.leader),
            );
        }
        if leaders.iter().all(|l| l.is_some() && *l == leaders[0]) {
            return Ok(());
        }
        if Instant::now() >= deadline {
            return Err(CliError::failed(format!(
                "nodes did not form one cluster within {FORMATION_TIMEOUT:?}"
            )));
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// SIGTERM to every node, then SIGKILL to those still running after the grace period.
pub async fn stop_nodes(children: &mut [Child]) {
    for child in children.iter() {
        if let Some(pid) = child.id() {
            let pid = nix::unistd::Pid::from_raw(pid as i32);
            let _ = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM);
        }
    }
    for child in children.iter_mut() {
        if tokio::time::timeout(STOP_GRACE, child.wait())
            .await
            .is_err()
        {
            let _ = child.kill().await;
        }
    }
}

pub async fn run(args: &DevClusterArgs) -> Result<(), CliError> {
    if args.nodes == 0 || args.nodes > NODES_MAX {
        return Err(CliError::input(format!("--nodes must be 1..={NODES_MAX}")));
    }
    let nodes = prepare(&args.dir, args.nodes)?;
    let mut children = Vec::new();
    for (path, config) in &nodes {
        children.push(spawn_node(
            path,
            &args.dir.join(format!("{}.log", config.node_name)),
        )?);
    }
    let urls: Vec<String> = nodes
        .iter()
        .map(|(_, c)| format!("http://{}", c.http.listen))
        .collect();
    eprintln!("starting {} nodes in {} …", args.nodes, args.dir.display());
    if let Err(error) = wait_formed(&urls, args.nodes, &mut children).await {
        stop_nodes(&mut children).await;
        return Err(error);
    }
    for ((_, config), url) in nodes.iter().zip(&urls) {
        println!("{}\t{url}", config.node_name);
    }
    eprintln!(
        "cluster formed; logs in {}; Ctrl-C stops all nodes",
        args.dir.display()
    );
    super::node::termination().await;
    eprintln!("stopping nodes …");
    stop_nodes(&mut children).await;
    Ok(())
}

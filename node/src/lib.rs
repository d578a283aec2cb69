//! The `shoal` binary's library: one node's wiring, the HTTP API and the CLI.
//!
//! Layout:
//! - [`config`]: [`Config`] — the TOML file, defaults and validation.
//! - [`api`]: JSON shapes of shoal's own HTTP API, shared by server and CLI.
//! - [`http`]: the axum router and handlers.
//! - [`metrics`]: `GET /metrics`, the node's Prometheus registry.
//! - [`dashboard`]: `GET /`, the web dashboard (one page, served from the binary).
//! - [`tes`]: GA4GH TES v1.1 — the model, validation, views, handlers.
//! - [`pipeline`]: pipeline jobs (Falconeri/Pachyderm specs) — the spec, views, handlers.
//! - [`cli`]: the clap command tree and every client command; `dev-cluster`.
//! - [`run`]: starts a node and serves until `shutdown` resolves — used by `shoal node` and by
//!   tests alike.

pub mod api;
pub mod cli;
pub mod config;
pub mod dashboard;
pub mod http;
pub mod metrics;
pub mod pipeline;
pub mod tes;

use std::future::Future;
use std::path::PathBuf;
use std::str::FromStr;
use std::sync::Arc;

use libp2p::Multiaddr;
use shoal_raft::{Cluster, ClusterConfig};
use shoal_worker::{DockerExecutor, ExecutorKind};

pub use config::Config;

#[derive(Debug, thiserror::Error)]
pub enum NodeError {
    #[error(transparent)]
    Config(#[from] config::ConfigError),
    #[error("cannot listen for HTTP on {addr}: {source}")]
    HttpListen {
        addr: String,
        source: std::io::Error,
    },
    #[error(transparent)]
    Cluster(#[from] shoal_raft::ClusterError),
    #[error("HTTP server failed: {0}")]
    Serve(std::io::Error),
    #[error(transparent)]
    Worker(#[from] shoal_worker::WorkerError),
}

/// Stdout and stderr bytes kept per step in a task's log.
const TAIL_BYTES_MAX: usize = 64 * 1024;

fn docker_network(config: &Config) -> Option<String> {
    let network = &config.worker.docker_network;
    (!network.is_empty()).then(|| network.clone())
}

/// The executor this node runs attempts with: `auto` is `docker` when a container engine
/// answers, else `process`.
async fn executor_kind(config: &Config) -> Result<ExecutorKind, config::ConfigError> {
    match config.worker.executor.as_str() {
        "docker" => match DockerExecutor::connect(docker_network(config)).await {
            Ok(docker) => Ok(ExecutorKind::Docker(docker)),
            Err(reason) => Err(config::ConfigError::Invalid {
                key: "worker.executor",
                reason: format!("docker: {reason}"),
            }),
        },
        "auto" => match DockerExecutor::connect(docker_network(config)).await {
            Ok(docker) => {
                tracing::info!(
                    api = docker.api_version(),
                    "container engine found: docker executor"
                );
                Ok(ExecutorKind::Docker(docker))
            }
            Err(reason) => {
                tracing::info!(%reason, "no container engine: process executor");
                Ok(process_executor(config))
            }
        },
        "process" => Ok(process_executor(config)),
        "noop" => Ok(ExecutorKind::Noop),
        other => Err(config::ConfigError::Invalid {
            key: "worker.executor",
            reason: format!("{other:?} is not an executor (use auto, docker, process or noop)"),
        }),
    }
}

/// The process executor with the node's sandbox settings; warns of bound paths that do not
/// exist (steps start without them).
fn process_executor(config: &Config) -> ExecutorKind {
    let sandbox = config.process_sandbox();
    for path in sandbox.binds.iter().filter(|path| !path.exists()) {
        tracing::warn!(path = %path.display(), "worker.process_binds: no such path; not bound");
    }
    ExecutorKind::Process(std::sync::Arc::new(sandbox))
}

fn worker_config(
    config: &Config,
    executor: ExecutorKind,
) -> Result<shoal_worker::WorkerConfig, NodeError> {
    let work_dir = if config.worker.workdir.is_empty() {
        config.data_dir.join("work")
    } else {
        PathBuf::from(&config.worker.workdir)
    };
    // Storage checks paths against the work dir, so it must be absolute.
    let work_dir = std::path::absolute(&work_dir).map_err(|e| config::ConfigError::Invalid {
        key: "worker.workdir",
        reason: format!("{}: {e}", work_dir.display()),
    })?;
    let storage = shoal_storage::StorageConfig {
        allowed_local_roots: config.storage.allowed_local_roots.clone(),
        s3_endpoint: config.storage.s3_endpoint.clone(),
        s3_region: config.storage.s3_region.clone(),
        s3_allow_http: config.storage.s3_allow_http,
        s3_access_key_id: None,
        s3_secret_access_key: None,
        ftp_user: Some(config.storage.ftp_user.clone()).filter(|user| !user.is_empty()),
        ftp_password: Some(config.storage.ftp_password.clone()),
    };
    Ok(shoal_worker::WorkerConfig {
        slots: config.slots(),
        capacity: config.capacity(),
        executor,
        work_dir,
        tail_bytes_max: TAIL_BYTES_MAX,
        keep_workdirs: false,
        storage,
        die_with_node: true,
        stores: Vec::new(),
    })
}

fn cluster_config(
    config: &Config,
    http_url: String,
    executor: &ExecutorKind,
) -> Result<ClusterConfig, NodeError> {
    let parse = |key: &'static str, text: &str| {
        Multiaddr::from_str(text).map_err(|e| config::ConfigError::Invalid {
            key,
            reason: format!("{text}: {e}"),
        })
    };
    let seeds = config
        .p2p
        .seeds
        .iter()
        .map(|s| parse("p2p.seeds", s))
        .collect::<Result<_, _>>()?;
    let key_file = &config.p2p.cluster_key_file;
    Ok(ClusterConfig {
        data_dir: config.data_dir.clone(),
        node_name: config.node_name(),
        http_url,
        p2p_listen: parse("p2p.listen", &config.p2p.listen)?,
        p2p_advertise: config
            .p2p
            .advertise
            .iter()
            .map(|a| parse("p2p.advertise", a))
            .collect::<Result<_, _>>()?,
        seeds,
        bootstrap_expect: config.p2p.bootstrap_expect,
        cluster_key_file: (!key_file.is_empty()).then(|| PathBuf::from(key_file)),
        heartbeat_ms: config.raft.heartbeat_ms,
        election_timeout_ms: (
            config.raft.election_timeout_ms[0],
            config.raft.election_timeout_ms[1],
        ),
        voters_max: config.raft.voters_max,
        snapshot_every_entries: config.raft.snapshot_every_entries,
        log_kept_entries: config.raft.log_kept_entries,
        lease_ms: config.worker.lease_ms,
        slots: config.slots(),
        executor: executor.name().to_string(),
        capacity: config.capacity(),
    })
}

/// Runs one node until `shutdown` resolves, then stops serving and leaves Raft cleanly.
/// `insecure` allows HTTP beyond loopback without tokens.
pub async fn run(
    config: Config,
    insecure: bool,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), NodeError> {
    config.validate(insecure)?;
    let listen = config.http_listen()?;
    let listener = tokio::net::TcpListener::bind(listen)
        .await
        .map_err(|source| NodeError::HttpListen {
            addr: config.http.listen.clone(),
            source,
        })?;
    let bound = listener.local_addr().map_err(NodeError::Serve)?;
    let http_url = if config.http.advertise_url.is_empty() {
        format!("http://{bound}")
    } else {
        config.http.advertise_url.trim_end_matches('/').to_string()
    };
    let executor = executor_kind(&config).await?;
    let cluster_config = cluster_config(&config, http_url.clone(), &executor)?;
    let worker_config = worker_config(&config, executor)?;
    let cluster = Cluster::start(cluster_config).await?;
    let worker = shoal_worker::Worker::start(cluster.clone(), worker_config).await?;
    tracing::info!(%http_url, data_dir = %config.data_dir.display(), "node serving");

    let mut state = http::AppState::new(
        cluster.clone(),
        config.http.tokens.clone(),
        listen.ip().is_loopback(),
    );
    let metrics_token = &config.http.metrics_token;
    state.metrics_token = (!metrics_token.is_empty()).then(|| Arc::from(metrics_token.as_str()));
    let app = http::router(state, config.http.body_bytes_max);
    let served = axum::serve(listener, app)
        .with_graceful_shutdown(shutdown)
        .await;
    tracing::info!("shutting down");
    worker.shutdown().await;
    cluster.shutdown().await;
    served.map_err(NodeError::Serve)
}

//! `shoal node`: load the config, apply flags, set up logging, run until SIGTERM/SIGINT.

use std::path::PathBuf;

use clap::{Args, ValueEnum};

use super::CliError;
use crate::config::Config;

#[derive(Debug, Args)]
pub struct NodeArgs {
    /// TOML config file; without it the embedded default is used.
    #[arg(long)]
    pub config: Option<PathBuf>,
    #[arg(long)]
    pub node_name: Option<String>,
    #[arg(long)]
    pub data_dir: Option<PathBuf>,
    /// HTTP listen address, e.g. 127.0.0.1:8000.
    #[arg(long)]
    pub http_listen: Option<String>,
    /// libp2p listen multiaddr, e.g. /ip4/127.0.0.1/tcp/7000.
    #[arg(long)]
    pub p2p_listen: Option<String>,
    /// Another node's multiaddr (repeatable); replaces the config's seeds.
    #[arg(long = "seed")]
    pub seeds: Vec<String>,
    /// A multiaddr other nodes should dial for this one, e.g. /dns4/host1/tcp/7000
    /// (repeatable); replaces the config's `p2p.advertise`.
    #[arg(long = "p2p-advertise")]
    pub p2p_advertise: Vec<String>,
    /// URL peers and clients should use for this node's API; replaces `http.advertise_url`.
    #[arg(long)]
    pub http_advertise_url: Option<String>,
    #[arg(long)]
    pub bootstrap_expect: Option<usize>,
    #[arg(long)]
    pub executor: Option<String>,
    #[arg(long)]
    pub slots: Option<u32>,
    /// Cores this node's attempts may take together (`worker.cpus`).
    #[arg(long)]
    pub cpus: Option<f64>,
    /// Memory this node's attempts may take together, e.g. 16Gi (`worker.memory`).
    #[arg(long)]
    pub memory: Option<String>,
    /// Start a new cluster from a backup (`shoal cluster backup`): the data dir must be
    /// empty; this node forms the cluster alone and others join it as usual.
    #[arg(long, value_name = "FILE")]
    pub restore: Option<PathBuf>,
    /// Allow HTTP beyond loopback without tokens.
    #[arg(long)]
    pub insecure: bool,
    #[arg(long, value_enum, default_value = "text")]
    pub log_format: LogFormat,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum LogFormat {
    Text,
    Json,
}

impl NodeArgs {
    /// The config file (or default) with every given flag applied on top.
    pub fn config(&self) -> Result<Config, CliError> {
        let mut config = match &self.config {
            Some(path) => Config::from_file(path).map_err(|e| CliError::input(e.to_string()))?,
            None => Config::default(),
        };
        if let Some(name) = &self.node_name {
            config.node_name = name.clone();
        }
        if let Some(dir) = &self.data_dir {
            config.data_dir = dir.clone();
        }
        if let Some(listen) = &self.http_listen {
            config.http.listen = listen.clone();
        }
        if let Some(listen) = &self.p2p_listen {
            config.p2p.listen = listen.clone();
        }
        if !self.seeds.is_empty() {
            config.p2p.seeds = self.seeds.clone();
        }
        if !self.p2p_advertise.is_empty() {
            config.p2p.advertise = self.p2p_advertise.clone();
        }
        if let Some(url) = &self.http_advertise_url {
            config.http.advertise_url = url.clone();
        }
        if let Some(expect) = self.bootstrap_expect {
            config.p2p.bootstrap_expect = expect;
        }
        if let Some(executor) = &self.executor {
            config.worker.executor = executor.clone();
        }
        if let Some(cpus) = self.cpus {
            config.worker.cpus = cpus;
        }
        if let Some(memory) = &self.memory {
            config.worker.memory = memory.clone();
        }
        if let Some(slots) = self.slots {
            config.worker.slots = slots;
        }
        Ok(config)
    }
}

pub fn init_logging(format: LogFormat) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info,openraft=warn,libp2p=warn"));
    // suppaftp traces the FTP control channel, the password of every login included.
    let filter = match "suppaftp=debug".parse() {
        Ok(cap) => filter.add_directive(cap),
        Err(_) => filter,
    };
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    let _ = match format {
        LogFormat::Text => builder.try_init(),
        LogFormat::Json => builder.json().try_init(),
    };
}

/// Resolves on SIGTERM or SIGINT.
pub async fn termination() {
    use tokio::signal::unix::{SignalKind, signal};
    let (Ok(mut term), Ok(mut int)) = (
        signal(SignalKind::terminate()),
        signal(SignalKind::interrupt()),
    ) else {
        tracing::error!("cannot listen for signals; stop the node with SIGKILL");
        return std::future::pending().await;
    };
    tokio::select! {
        _ = term.recv() => tracing::info!("SIGTERM received"),
        _ = int.recv() => tracing::info!("SIGINT received"),
    }
}

pub async fn run(args: &NodeArgs) -> Result<(), CliError> {
    let config = args.config()?;
    config
        .validate(args.insecure)
        .map_err(|e| CliError::input(e.to_string()))?;
    init_logging(args.log_format);
    if let Some(backup) = &args.restore {
        restore(&config, backup)?;
    }
    crate::run(config, args.insecure, termination())
        .await
        .map_err(|e| CliError::failed(e.to_string()))
}

/// Writes the backup into the (empty) data dir as the state of a new cluster.
fn restore(config: &Config, backup: &std::path::Path) -> Result<(), CliError> {
    let summary = shoal_raft::backup::restore(&config.data_dir, backup).map_err(CliError::input)?;
    let restored = summary.restored;
    tracing::info!(
        backup = %backup.display(),
        old_cluster = summary.header.cluster_id.as_deref().unwrap_or("(unnamed)"),
        at_index = ?summary.header.last_log.map(|(_, index)| index),
        new_cluster = %summary.new_cluster_id,
        jobs = summary.jobs,
        datums = summary.datums,
        claims_returned = restored.returned,
        attempts_lost = restored.lost,
        publishing_taken_over = restored.publishing,
        old_nodes_dropped = restored.nodes_dropped,
        "restored a backup as a new cluster"
    );
    Ok(())
}

//! The `shoal` command line (clap): `node`, `dev-cluster` and the client commands.
//!
//! Exit status: 0 success, 1 the operation failed, 2 usage or input error, 3 server
//! unreachable. Client output is a table on a terminal and JSON otherwise (`--output`).

mod client;
mod cluster;
mod datum;
pub mod dev_cluster;
mod job;
mod node;
mod run;
mod table;
mod task;

use std::io::IsTerminal;
use std::process::ExitCode;

use clap::{Parser, Subcommand, ValueEnum};

pub use client::Client;

#[derive(Debug, Parser)]
#[command(
    name = "shoal",
    version,
    about = "A masterless batch-processing cluster"
)]
pub struct Cli {
    /// Node to talk to.
    #[arg(
        long,
        env = "SHOAL_SERVER",
        default_value = "http://127.0.0.1:8000",
        global = true
    )]
    pub server: String,
    /// Bearer token for the node's API.
    #[arg(long, env = "SHOAL_TOKEN", global = true, hide_env_values = true)]
    pub token: Option<String>,
    /// Output format; default: table on a terminal, json otherwise.
    #[arg(long, value_enum, global = true)]
    pub output: Option<OutputFormat>,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum OutputFormat {
    Table,
    Json,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run a node (with no config and no flags: a single-node cluster on this machine).
    Node(node::NodeArgs),
    /// Start N nodes on this host as one cluster; Ctrl-C stops them all.
    DevCluster(dev_cluster::DevClusterArgs),
    /// Submit a one-executor TES task: shoal run [--wait] -- CMD ARGS…
    Run(run::RunArgs),
    /// TES tasks: create, get, list, cancel, wait, logs.
    #[command(subcommand)]
    Task(task::TaskCommand),
    /// Pipeline jobs: run a spec, list, describe, wait, retry, cancel.
    #[command(subcommand)]
    Job(job::JobCommand),
    /// A pipeline job's datums: list, describe, logs.
    #[command(subcommand)]
    Datum(datum::DatumCommand),
    /// Inspect and manage the cluster.
    #[command(subcommand)]
    Cluster(cluster::ClusterCommand),
}

/// A failed command: what to print and the exit status.
#[derive(Debug)]
pub struct CliError {
    pub code: u8,
    pub message: String,
    /// The same request may succeed if sent again (no leader, no answer, no connection).
    pub retryable: bool,
}

impl CliError {
    pub fn failed(message: impl Into<String>) -> CliError {
        CliError {
            code: 1,
            message: message.into(),
            retryable: false,
        }
    }
    pub fn input(message: impl Into<String>) -> CliError {
        CliError {
            code: 2,
            message: message.into(),
            retryable: false,
        }
    }
    pub fn unreachable(message: impl Into<String>) -> CliError {
        CliError {
            code: 3,
            message: message.into(),
            retryable: true,
        }
    }
}

impl Cli {
    fn output(&self) -> OutputFormat {
        self.output.unwrap_or(if std::io::stdout().is_terminal() {
            OutputFormat::Table
        } else {
            OutputFormat::Json
        })
    }

    fn client(&self) -> Result<Client, CliError> {
        Client::new(&self.server, self.token.clone())
    }
}

/// The whole program: parse, run, map the result to an exit status.
pub fn main() -> ExitCode {
    let cli = Cli::parse();
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(error) => {
            eprintln!("error: cannot start the async runtime: {error}");
            return ExitCode::from(1);
        }
    };
    match runtime.block_on(dispatch(cli)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("error: {}", error.message);
            ExitCode::from(error.code)
        }
    }
}

async fn dispatch(cli: Cli) -> Result<(), CliError> {
    let output = cli.output();
    match &cli.command {
        Command::Node(args) => node::run(args).await,
        Command::DevCluster(args) => dev_cluster::run(args).await,
        Command::Run(args) => run::run(args, &cli.client()?, output).await,
        Command::Task(command) => task::run(command, &cli.client()?, output).await,
        Command::Job(command) => job::run(command, &cli.client()?, output).await,
        Command::Datum(command) => datum::run(command, &cli.client()?, output).await,
        Command::Cluster(command) => cluster::run(command, &cli.client()?, output).await,
    }
}

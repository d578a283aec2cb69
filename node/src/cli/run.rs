//! `shoal run`: build a one-executor TES task from the command line (like `funnel run`),
//! submit it, print its id; with `--wait`, wait for it, print its output and exit with its
//! outcome (0 COMPLETE, 1 otherwise).

use std::collections::BTreeMap;
use std::time::Duration;

use clap::Args;

use super::{CliError, Client, OutputFormat};
use crate::tes::model::{
    TesCreateTaskResponse, TesExecutor, TesInput, TesOutput, TesResources, TesState, TesTask,
};

/// How often `--wait` asks for the task's state.
const WAIT_POLL: Duration = Duration::from_millis(100);

#[derive(Debug, Args)]
pub struct RunArgs {
    /// Container image (the process executor ignores it).
    #[arg(long, default_value = "busybox")]
    pub image: String,
    /// An input: URL=PATH (PATH absolute, inside the task).
    #[arg(short = 'i', long = "input", value_name = "URL=PATH")]
    pub inputs: Vec<String>,
    /// An output: PATH=URL.
    #[arg(short = 'o', long = "output-file", value_name = "PATH=URL")]
    pub outputs: Vec<String>,
    #[arg(long)]
    pub cpu: Option<i64>,
    #[arg(long)]
    pub ram_gb: Option<f64>,
    #[arg(long)]
    pub name: Option<String>,
    /// Wait for the task to end; print its stdout and exit with its outcome.
    #[arg(long)]
    pub wait: bool,
    /// The command and its arguments.
    #[arg(last = true, required = true)]
    pub command: Vec<String>,
}

/// Splits `A=B`; `last` splits at the last `=` (URLs may contain `=`, container paths rarely).
fn split_pair(text: &str, what: &str, last: bool) -> Result<(String, String), CliError> {
    let split = if last {
        text.rsplit_once('=')
    } else {
        text.split_once('=')
    };
    split
        .map(|(a, b)| (a.to_string(), b.to_string()))
        .ok_or_else(|| CliError::input(format!("{what} {text:?} is not of the form A=B")))
}

fn task(args: &RunArgs) -> Result<TesTask, CliError> {
    let inputs = args
        .inputs
        .iter()
        .map(|pair| {
            let (url, path) = split_pair(pair, "--input", true)?;
            Ok(TesInput {
                url: Some(url),
                path,
                ..Default::default()
            })
        })
        .collect::<Result<Vec<_>, CliError>>()?;
    let outputs = args
        .outputs
        .iter()
        .map(|pair| {
            let (path, url) = split_pair(pair, "--output-file", false)?;
            Ok(TesOutput {
                url,
                path,
                ..Default::default()
            })
        })
        .collect::<Result<Vec<_>, CliError>>()?;
    Ok(TesTask {
        name: args.name.clone(),
        inputs: Some(inputs),
        outputs: Some(outputs),
        resources: Some(TesResources {
            cpu_cores: args.cpu,
            ram_gb: args.ram_gb,
            ..Default::default()
        }),
        executors: vec![TesExecutor {
            image: args.image.clone(),
            command: args.command.clone(),
            env: Some(BTreeMap::new()),
            ..Default::default()
        }],
        ..Default::default()
    })
}

/// Waits until the task is in a terminal state and returns it in the FULL view.
pub async fn wait_task(client: &Client, id: &str) -> Result<TesTask, CliError> {
    loop {
        let task: TesTask = client.get(&format!("/ga4gh/tes/v1/tasks/{id}")).await?;
        if task.state.is_some_and(TesState::is_terminal) {
            return client
                .get(&format!("/ga4gh/tes/v1/tasks/{id}?view=FULL"))
                .await;
        }
        tokio::time::sleep(WAIT_POLL).await;
    }
}

pub async fn run(args: &RunArgs, client: &Client, output: OutputFormat) -> Result<(), CliError> {
    let created: TesCreateTaskResponse = client
        .submit_json("/ga4gh/tes/v1/tasks", &task(args)?)
        .await?;
    if !args.wait {
        match output {
            OutputFormat::Json => println!("{}", serde_json::json!({ "id": created.id })),
            OutputFormat::Table => println!("{}", created.id),
        }
        return Ok(());
    }
    eprintln!("task {}", created.id);
    let done = wait_task(client, &created.id).await?;
    let last = done.logs.as_ref().and_then(|logs| logs.last());
    for log in last.map(|l| l.logs.as_slice()).unwrap_or_default() {
        print!("{}", log.stdout.as_deref().unwrap_or_default());
        eprint!("{}", log.stderr.as_deref().unwrap_or_default());
    }
    match done.state {
        Some(TesState::Complete) => Ok(()),
        state => {
            let name = state
                .and_then(|s| serde_json::to_value(s).ok())
                .unwrap_or_default();
            Err(CliError::failed(format!(
                "task {} ended {}",
                created.id,
                name.as_str().unwrap_or("UNKNOWN")
            )))
        }
    }
}

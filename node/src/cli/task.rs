//! `shoal task …`: the TES client — create from a JSON file, get, list with filters, cancel,
//! wait, and the logs of a task's attempts.

use std::io::Read;
use std::time::Duration;

use clap::{Subcommand, ValueEnum};

use super::{CliError, Client, OutputFormat, table};
use crate::tes::model::{
    TesCreateTaskResponse, TesListTasksResponse, TesState, TesTask, TesTaskLog,
};

const TASKS: &str = "/ga4gh/tes/v1/tasks";
/// How often `wait` and `logs --follow` ask again.
const POLL: Duration = Duration::from_millis(200);
/// Largest task file `create` reads.
const TASK_FILE_BYTES_MAX: u64 = 8 * 1024 * 1024;

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum ViewArg {
    Minimal,
    Basic,
    Full,
}

impl ViewArg {
    fn query(self) -> &'static str {
        match self {
            ViewArg::Minimal => "MINIMAL",
            ViewArg::Basic => "BASIC",
            ViewArg::Full => "FULL",
        }
    }
}

#[derive(Debug, Subcommand)]
pub enum TaskCommand {
    /// Submit a TES task from a JSON file (`-` reads standard input); prints its id.
    Create { file: String },
    /// Show a task.
    Get {
        id: String,
        #[arg(long, value_enum, default_value = "full")]
        view: ViewArg,
    },
    /// List tasks, newest first (the first page unless --all).
    List {
        /// Only tasks in this TES state (e.g. RUNNING, COMPLETE).
        #[arg(long)]
        state: Option<String>,
        /// Only tasks with this tag: KEY=VALUE, or KEY for any value (repeatable; all must match).
        #[arg(long = "tag", value_name = "KEY[=VALUE]")]
        tags: Vec<String>,
        /// Only tasks whose name starts with this.
        #[arg(long)]
        name_prefix: Option<String>,
        /// Follow the pages to the end.
        #[arg(long)]
        all: bool,
        #[arg(long, value_enum, default_value = "basic")]
        view: ViewArg,
    },
    /// Cancel a task (a finished task stays as it is).
    Cancel { id: String },
    /// Wait until every task ends; exits 1 unless all ended COMPLETE.
    Wait {
        #[arg(required = true)]
        ids: Vec<String>,
    },
    /// Print the stdout and stderr of a task's executors, attempt by attempt.
    Logs {
        id: String,
        /// Keep printing attempts as they end, until the task ends.
        #[arg(long)]
        follow: bool,
    },
}

fn state_name(state: Option<TesState>) -> String {
    state
        .and_then(|s| serde_json::to_value(s).ok())
        .and_then(|v| v.as_str().map(str::to_string))
        .unwrap_or_else(|| "UNKNOWN".to_string())
}

fn print_json(value: &impl serde::Serialize) -> Result<(), CliError> {
    let text = serde_json::to_string_pretty(value)
        .map_err(|e| CliError::failed(format!("cannot print the answer: {e}")))?;
    println!("{text}");
    Ok(())
}

fn encode(value: &str) -> String {
    url::form_urlencoded::byte_serialize(value.as_bytes()).collect()
}

/// The list query for the filters (without paging).
fn list_query(
    state: &Option<String>,
    tags: &[String],
    name_prefix: &Option<String>,
    view: ViewArg,
) -> String {
    let mut query = vec![format!("view={}", view.query())];
    if let Some(state) = state {
        query.push(format!("state={}", encode(&state.to_uppercase())));
    }
    if let Some(prefix) = name_prefix {
        query.push(format!("name_prefix={}", encode(prefix)));
    }
    for tag in tags {
        let (key, value) = tag.split_once('=').unwrap_or((tag, ""));
        query.push(format!(
            "tag_key={}&tag_value={}",
            encode(key),
            encode(value)
        ));
    }
    query.join("&")
}

fn read_task_file(file: &str) -> Result<TesTask, CliError> {
    let mut text = String::new();
    let read = if file == "-" {
        std::io::stdin()
            .take(TASK_FILE_BYTES_MAX)
            .read_to_string(&mut text)
    } else {
        std::fs::File::open(file)
            .and_then(|f| f.take(TASK_FILE_BYTES_MAX).read_to_string(&mut text))
    };
    read.map_err(|e| CliError::input(format!("cannot read {file}: {e}")))?;
    serde_json::from_str(&text)
        .map_err(|e| CliError::input(format!("{file} is not a TES task: {e}")))
}

async fn get(client: &Client, id: &str, view: ViewArg) -> Result<TesTask, CliError> {
    client
        .get(&format!("{TASKS}/{}?view={}", encode(id), view.query()))
        .await
}

fn print_logs(id: &str, number: usize, log: &TesTaskLog) {
    let host = log
        .metadata
        .as_ref()
        .and_then(|m| m.get("hostname"))
        .map(String::as_str)
        .unwrap_or("?");
    eprintln!("== task {id}, attempt {number} on {host}");
    for (i, executor) in log.logs.iter().enumerate() {
        match executor.exit_code {
            Some(code) => eprintln!("-- executor {i}: exit code {code}"),
            None => eprintln!("-- executor {i}: running"),
        }
        print!("{}", executor.stdout.as_deref().unwrap_or_default());
        eprint!("{}", executor.stderr.as_deref().unwrap_or_default());
    }
    for line in log.system_logs.as_deref().unwrap_or_default() {
        eprintln!("system: {line}");
    }
}

pub async fn run(
    command: &TaskCommand,
    client: &Client,
    output: OutputFormat,
) -> Result<(), CliError> {
    match command {
        TaskCommand::Create { file } => {
            let task = read_task_file(file)?;
            let created: TesCreateTaskResponse = client.submit_json(TASKS, &task).await?;
            match output {
                OutputFormat::Json => print_json(&created),
                OutputFormat::Table => {
                    println!("{}", created.id);
                    Ok(())
                }
            }
        }
        TaskCommand::Get { id, view } => {
            let task = get(client, id, *view).await?;
            print_json(&task)?;
            // TES has no place for why a task waits; shoal's job view of it says.
            if task.state == Some(TesState::Queued) {
                let job: Result<crate::api::JobView, _> =
                    client.get(&format!("/v1/jobs/{}", encode(id))).await;
                if let Some(waiting) = job.ok().and_then(|job| job.waiting) {
                    eprintln!("{waiting}");
                }
            }
            Ok(())
        }
        TaskCommand::List {
            state,
            tags,
            name_prefix,
            all,
            view,
        } => {
            let query = list_query(state, tags, name_prefix, *view);
            let mut tasks = Vec::new();
            let mut token = String::new();
            loop {
                let page: TesListTasksResponse = client
                    .get(&format!("{TASKS}?{query}&page_token={}", encode(&token)))
                    .await?;
                tasks.extend(page.tasks);
                match page.next_page_token {
                    Some(next) if *all => token = next,
                    _ => break,
                }
            }
            match output {
                OutputFormat::Json => print_json(&tasks),
                OutputFormat::Table => {
                    let rows: Vec<Vec<String>> = tasks
                        .iter()
                        .map(|t| {
                            vec![
                                t.id.clone().unwrap_or_default(),
                                state_name(t.state),
                                t.name.clone().unwrap_or_default(),
                                t.creation_time.clone().unwrap_or_default(),
                            ]
                        })
                        .collect();
                    println!(
                        "{}",
                        table::render(&["ID", "STATE", "NAME", "CREATED"], &rows)
                    );
                    Ok(())
                }
            }
        }
        TaskCommand::Cancel { id } => {
            let _: serde_json::Value = client
                .post(
                    &format!("{TASKS}/{}:cancel", encode(id)),
                    &serde_json::json!({}),
                )
                .await?;
            if output == OutputFormat::Table {
                println!("cancel of {id} requested");
            }
            Ok(())
        }
        TaskCommand::Wait { ids } => {
            let mut failed = Vec::new();
            for id in ids {
                let task = super::run::wait_task(client, id).await?;
                let state = state_name(task.state);
                match output {
                    OutputFormat::Json => {
                        println!("{}", serde_json::json!({ "id": id, "state": state }))
                    }
                    OutputFormat::Table => println!("{id}  {state}"),
                }
                if task.state != Some(TesState::Complete) {
                    failed.push(format!("{id} ended {state}"));
                }
            }
            if failed.is_empty() {
                Ok(())
            } else {
                Err(CliError::failed(failed.join("; ")))
            }
        }
        TaskCommand::Logs { id, follow } => {
            let mut printed = 0;
            loop {
                let task = get(client, id, ViewArg::Full).await?;
                let logs = task.logs.unwrap_or_default();
                let ended = task.state.is_some_and(TesState::is_terminal);
                // An attempt's log is final once it has an end time (or the task ended).
                for log in logs.iter().skip(printed) {
                    if log.end_time.is_none() && !ended {
                        break;
                    }
                    printed += 1;
                    print_logs(id, printed, log);
                }
                if !*follow || ended {
                    return Ok(());
                }
                tokio::time::sleep(POLL).await;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn list_filters_become_the_tes_query() {
        let query = list_query(
            &Some("running".into()),
            &["a=1".into(), "b".into()],
            &Some("my job".into()),
            ViewArg::Minimal,
        );
        assert_eq!(
            query,
            "view=MINIMAL&state=RUNNING&name_prefix=my+job&tag_key=a&tag_value=1&tag_key=b&tag_value="
        );
    }
}

//! `shoal datum …`: a pipeline job's datums — list them, describe one (inputs, attempts with
//! node, times, exit code, error, output tails), print or follow what its attempts printed.

use std::collections::HashMap;
use std::time::Duration;

use clap::Subcommand;

use super::job::encode;
use super::{CliError, Client, OutputFormat};
use crate::api::{DatumListView, DatumView};

/// How often `logs --follow` asks again.
const POLL: Duration = Duration::from_millis(500);
/// Lines of each output an attempt shows in `describe`.
const TAIL_LINES: usize = 10;

#[derive(Debug, Subcommand)]
pub enum DatumCommand {
    /// List a job's datums in order (one page unless --all).
    List {
        /// The job: its id, or a pipeline's name for its newest job.
        job: String,
        /// pending, claimed, running, publishing, canceling, done, failed or canceled.
        #[arg(long)]
        state: Option<String>,
        /// Every page, not just the first.
        #[arg(long)]
        all: bool,
    },
    /// Show a datum: inputs, and each attempt with its node, times, exit code, error and the
    /// tail of its output.
    Describe {
        id: String,
        /// The job, when the same inputs (so the same datum id) are in several jobs.
        #[arg(long)]
        job: Option<String>,
    },
    /// Print what each attempt's executors printed; --follow keeps printing until the datum
    /// ends.
    Logs {
        id: String,
        #[arg(long)]
        job: Option<String>,
        #[arg(long)]
        follow: bool,
    },
}

fn datum_path(id: &str, job: &Option<String>) -> String {
    match job {
        Some(job) => format!("/v1/datums/{}?job={}", encode(id), encode(job)),
        None => format!("/v1/datums/{}", encode(id)),
    }
}

fn is_ended(datum: &DatumView) -> bool {
    matches!(
        datum.state.as_str(),
        "done" | "failed" | "canceled" | "skipped"
    )
}

fn tail(text: &str, lines: usize) -> String {
    let all: Vec<&str> = text.lines().collect();
    all[all.len().saturating_sub(lines)..].join("\n")
}

fn print_datum(datum: &DatumView) {
    println!(
        "datum {} (job {}, #{}): {}",
        datum.id, datum.job, datum.index, datum.state
    );
    if let Some(from) = &datum.reused_from {
        println!(
            "  skipped: reuses datum #{} of job {}",
            from.index, from.job
        );
    }
    for input in &datum.inputs {
        println!(
            "  input {}: {} -> {} ({})",
            input.name, input.url, input.path, input.kind
        );
    }
    for attempt in &datum.attempts {
        println!(
            "  attempt {} on {}: claimed {}, started {}, ended {}; {}{}",
            attempt.attempt,
            attempt.node,
            attempt.claimed,
            attempt.started.as_deref().unwrap_or("-"),
            attempt.ended.as_deref().unwrap_or("-"),
            attempt.outcome.as_deref().unwrap_or("running"),
            attempt
                .exit_code
                .map(|code| format!(", exit code {code}"))
                .unwrap_or_default(),
        );
        if let Some(error) = &attempt.error {
            println!("    error: {error}");
        }
        for line in &attempt.system_logs {
            println!("    system: {line}");
        }
        for (index, executor) in attempt.executors.iter().enumerate() {
            for (name, text) in [("stdout", &executor.stdout), ("stderr", &executor.stderr)] {
                let text = tail(text, TAIL_LINES);
                if !text.is_empty() {
                    println!("    executor {index} {name} (last lines):");
                    text.lines().for_each(|line| println!("      {line}"));
                }
            }
        }
        for output in &attempt.outputs {
            println!(
                "    output {} -> {} ({} bytes)",
                output.path, output.url, output.size_bytes
            );
        }
    }
}

pub async fn run(
    command: &DatumCommand,
    client: &Client,
    output: OutputFormat,
) -> Result<(), CliError> {
    match command {
        DatumCommand::List { job, state, all } => {
            let pairs: Vec<(&str, &str)> = state.iter().map(|s| ("state", s.as_str())).collect();
            let path = format!("/v1/jobs/{}/datums", encode(job));
            let (datums, more) = client
                .pages(&path, &pairs, *all, |page: DatumListView| {
                    (page.datums, page.next_page_token)
                })
                .await?;
            match output {
                OutputFormat::Json => super::job::print_json(&datums)?,
                OutputFormat::Table => {
                    let rows: Vec<Vec<String>> = datums
                        .iter()
                        .map(|d| {
                            let inputs: Vec<&str> =
                                d.inputs.iter().map(|i| i.url.as_str()).collect();
                            vec![
                                d.index.to_string(),
                                d.id.clone(),
                                d.state.clone(),
                                d.attempts.len().to_string(),
                                inputs.join(" "),
                            ]
                        })
                        .collect();
                    print!(
                        "{}",
                        super::table::render(&["#", "ID", "STATE", "ATTEMPTS", "INPUTS"], &rows)
                    );
                }
            }
            if more {
                eprintln!("more datums follow: add --all to list them all");
            }
            Ok(())
        }
        DatumCommand::Describe { id, job } => {
            let datum: DatumView = client.get(&datum_path(id, job)).await?;
            match output {
                OutputFormat::Json => super::job::print_json(&datum),
                OutputFormat::Table => {
                    print_datum(&datum);
                    Ok(())
                }
            }
        }
        DatumCommand::Logs { id, job, follow } => {
            // How much of each (attempt, executor, stream) is printed already.
            let mut printed: HashMap<(u32, usize, &'static str), usize> = HashMap::new();
            loop {
                let datum: DatumView = client.get(&datum_path(id, job)).await?;
                for attempt in &datum.attempts {
                    for (index, executor) in attempt.executors.iter().enumerate() {
                        for (name, text) in
                            [("stdout", &executor.stdout), ("stderr", &executor.stderr)]
                        {
                            let done = printed.entry((attempt.attempt, index, name)).or_default();
                            // A running attempt's output is a window that may move on: print
                            // what is past the part already printed.
                            let new = text.get(*done..).unwrap_or(text.as_str());
                            if !new.is_empty() {
                                if *done == 0 {
                                    println!(
                                        "=== attempt {} on {}, executor {index}, {name} ===",
                                        attempt.attempt, attempt.node
                                    );
                                }
                                print!("{new}");
                                if !new.ends_with('\n') && executor.exit_code.is_some() {
                                    println!();
                                }
                                *done = text.len();
                            }
                        }
                    }
                }
                if !*follow || is_ended(&datum) {
                    return Ok(());
                }
                tokio::time::sleep(POLL).await;
            }
        }
    }
}

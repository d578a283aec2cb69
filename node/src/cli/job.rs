//! `shoal job …`: pipeline jobs — submit a spec file (JSON or YAML) and describe a job.

use std::io::Read;
use std::time::Duration;

use clap::Subcommand;

use super::{CliError, Client, OutputFormat};
use crate::api::{JobCreatedView, JobView};
use crate::pipeline::spec::SPEC_BYTES_MAX;

/// How often `run --wait` asks again.
const POLL: Duration = Duration::from_millis(500);

#[derive(Debug, Subcommand)]
pub enum JobCommand {
    /// Submit a pipeline spec (`.yaml`/`.yml` is YAML, anything else JSON; `-` reads standard
    /// input, JSON or YAML); prints the job's id and the fields it ignored.
    Run {
        spec: String,
        /// Wait until the job ends; exit 1 unless it ended done.
        #[arg(long)]
        wait: bool,
    },
    /// Show a job (by id, or a pipeline's name for its newest job).
    Describe { id: String },
}

/// The spec's bytes and its content type.
fn read_spec(file: &str) -> Result<(Vec<u8>, &'static str), CliError> {
    let mut bytes = Vec::new();
    let limit = SPEC_BYTES_MAX as u64 + 1;
    let read = if file == "-" {
        std::io::stdin().take(limit).read_to_end(&mut bytes)
    } else {
        std::fs::File::open(file).and_then(|f| f.take(limit).read_to_end(&mut bytes))
    };
    read.map_err(|e| CliError::input(format!("cannot read {file}: {e}")))?;
    if bytes.len() > SPEC_BYTES_MAX {
        return Err(CliError::input(format!(
            "{file} is larger than {SPEC_BYTES_MAX} bytes"
        )));
    }
    let yaml = file.ends_with(".yaml")
        || file.ends_with(".yml")
        || (file == "-" && !bytes.trim_ascii_start().starts_with(b"{"));
    Ok((
        bytes,
        if yaml {
            "application/yaml"
        } else {
            "application/json"
        },
    ))
}

fn print_json(value: &impl serde::Serialize) -> Result<(), CliError> {
    let text = serde_json::to_string_pretty(value)
        .map_err(|e| CliError::failed(format!("cannot print the answer: {e}")))?;
    println!("{text}");
    Ok(())
}

fn print_job(job: &JobView) {
    let c = &job.counts;
    println!("job {} ({}): {}", job.id, job.name, job.state);
    println!(
        "datums: {} total, {} done, {} failed, {} running, {} pending, {} canceled{}",
        c.total,
        c.done,
        c.failed,
        c.running + c.claimed + c.publishing,
        c.pending,
        c.canceled,
        if job.listing {
            " (input still listing)"
        } else {
            ""
        }
    );
    println!(
        "created {}, started {}, ended {}; {} datums/s",
        job.created,
        job.started.as_deref().unwrap_or("-"),
        job.ended.as_deref().unwrap_or("-"),
        job.datums_per_second
    );
    if let Some(error) = &job.error {
        println!("error: {error}");
    }
    for error in &job.first_errors {
        println!("datum {} failed: {}", error.datum, error.message);
    }
}

async fn wait(client: &Client, id: &str) -> Result<JobView, CliError> {
    loop {
        let job: JobView = client.get(&format!("/v1/jobs/{id}")).await?;
        if matches!(job.state.as_str(), "done" | "error" | "canceled") {
            return Ok(job);
        }
        tokio::time::sleep(POLL).await;
    }
}

pub async fn run(
    command: &JobCommand,
    client: &Client,
    output: OutputFormat,
) -> Result<(), CliError> {
    match command {
        JobCommand::Run {
            spec,
            wait: wait_end,
        } => {
            let (body, content_type) = read_spec(spec)?;
            let created: JobCreatedView = client.submit("/v1/jobs", body, content_type).await?;
            match output {
                OutputFormat::Json => print_json(&created)?,
                OutputFormat::Table => {
                    println!("{}", created.id);
                    if !created.ignored.is_empty() {
                        eprintln!("ignored (Kubernetes only): {}", created.ignored.join(", "));
                    }
                }
            }
            if !*wait_end {
                return Ok(());
            }
            let job = wait(client, &created.id).await?;
            match output {
                OutputFormat::Json => print_json(&job)?,
                OutputFormat::Table => print_job(&job),
            }
            if job.state == "done" {
                Ok(())
            } else {
                Err(CliError::failed(format!(
                    "job {} ended {}",
                    job.id, job.state
                )))
            }
        }
        JobCommand::Describe { id } => {
            let encoded: String = url::form_urlencoded::byte_serialize(id.as_bytes()).collect();
            let job: JobView = client.get(&format!("/v1/jobs/{encoded}")).await?;
            match output {
                OutputFormat::Json => print_json(&job),
                OutputFormat::Table => {
                    print_job(&job);
                    Ok(())
                }
            }
        }
    }
}

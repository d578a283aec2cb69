//! `shoal job …`: pipeline jobs — submit a spec file (JSON or YAML), list, describe, wait
//! for, retry and cancel jobs.
//!
//! Waiting follows each job's event stream (`GET /v1/jobs/{id}/events`): on a terminal a
//! progress bar per job is redrawn as changes arrive, otherwise one line is printed per
//! change. A stream that breaks (the node went away) is opened again for up to
//! `RECONNECT_WINDOW`.

use std::io::{IsTerminal, Read};
use std::time::{Duration, Instant};

use clap::Subcommand;

use super::{CliError, Client, OutputFormat};
use crate::api::{JobCreatedView, JobListView, JobView};
use crate::pipeline::events::is_terminal;
use crate::pipeline::spec::SPEC_BYTES_MAX;

/// How long a broken event stream is opened again before waiting gives up.
const RECONNECT_WINDOW: Duration = Duration::from_secs(60);
/// Pause between two tries to open it.
const RECONNECT_PAUSE: Duration = Duration::from_millis(500);
/// Jobs one `job wait` follows at most.
const WAIT_JOBS_MAX: usize = 100;

#[derive(Debug, Subcommand)]
pub enum JobCommand {
    /// Submit a pipeline spec (`.yaml`/`.yml` is YAML, anything else JSON; `-` reads standard
    /// input, JSON or YAML); prints the job's id and the fields it ignored.
    Run {
        spec: String,
        /// Wait until the job ends, showing progress; exit 1 unless it ended done.
        #[arg(long)]
        wait: bool,
        /// Run every datum, even those an earlier job of the pipeline already did (by
        /// default a re-run skips datums whose inputs, transform and outputs are unchanged).
        #[arg(long)]
        reprocess: bool,
    },
    /// List jobs, newest first (one page unless --all).
    List {
        /// queued, running, canceling, done, error or canceled.
        #[arg(long)]
        state: Option<String>,
        /// Jobs of this pipeline name.
        #[arg(long)]
        name: Option<String>,
        /// Every page, not just the first.
        #[arg(long)]
        all: bool,
    },
    /// Show a job (by id, or a pipeline's name for its newest job): counts per state, rate,
    /// times, the first errors with their datum ids.
    Describe { id: String },
    /// Wait until every job ends, showing progress; exit 1 unless all ended done.
    Wait {
        #[arg(required = true)]
        ids: Vec<String>,
    },
    /// Give a job's failed datums a fresh set of tries.
    Retry { id: String },
    /// Cancel a job: what waits is canceled, what runs is stopped.
    Cancel { id: String },
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

pub(super) fn print_json(value: &impl serde::Serialize) -> Result<(), CliError> {
    let text = serde_json::to_string_pretty(value)
        .map_err(|e| CliError::failed(format!("cannot print the answer: {e}")))?;
    println!("{text}");
    Ok(())
}

fn print_job(job: &JobView) {
    let c = &job.counts;
    println!("job {} ({}): {}", job.id, job.name, job.state);
    println!(
        "datums: {} total, {} done, {} skipped, {} failed, {} running, {} pending, {} canceled{}",
        c.total,
        c.done,
        c.skipped,
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
    if let Some(waiting) = &job.waiting {
        println!("{waiting}");
    }
    if let Some(error) = &job.error {
        println!("error: {error}");
    }
    for error in &job.first_errors {
        println!("datum {} failed: {}", error.datum, error.message);
    }
}

/// `target` as one path segment.
pub fn encode(target: &str) -> String {
    url::form_urlencoded::byte_serialize(target.as_bytes()).collect()
}

/// How a job's progress is shown while waiting.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Show {
    /// Progress bars on standard error (a terminal).
    Bars,
    /// One line per change on standard output.
    Lines,
    /// Nothing until the end (JSON output).
    Quiet,
}

/// One line of a job's progress.
fn progress_line(job: &JobView) -> String {
    let c = &job.counts;
    format!(
        "{} ({}): {}; {}/{} done, {} skipped, {} failed, {} running, {} datums/s{}",
        job.id,
        job.name,
        job.state,
        c.done + c.skipped,
        c.total,
        c.skipped,
        c.failed,
        c.running + c.claimed + c.publishing,
        job.datums_per_second,
        if job.listing {
            ", input still listing"
        } else {
            ""
        }
    )
}

/// What a bar says after its counts.
fn bar_message(job: &JobView) -> String {
    let c = &job.counts;
    let left = c
        .total
        .saturating_sub(c.done + c.skipped + c.failed + c.canceled);
    let eta = if is_terminal(job) || job.datums_per_second <= 0.0 {
        String::new()
    } else {
        let secs = (f64::from(left) / job.datums_per_second).round() as u64;
        format!(
            ", ETA {}",
            humantime::format_duration(Duration::from_secs(secs))
        )
    };
    format!(
        "{} · {} failed · {} running · {:.1} datums/s{eta}",
        job.state,
        c.failed,
        c.running + c.claimed + c.publishing,
        job.datums_per_second
    )
}

/// Follows job `id`'s event stream until it ends, handing each view to `seen`.
async fn follow(
    client: &Client,
    id: &str,
    mut seen: impl FnMut(&JobView),
) -> Result<JobView, CliError> {
    let path = format!("/v1/jobs/{}/events", encode(id));
    let mut broken_since: Option<Instant> = None;
    loop {
        let broken = match client.events(&path).await {
            Ok(mut stream) => loop {
                match stream.next().await {
                    Ok(Some((name, data))) if name == "job" => {
                        broken_since = None;
                        let job: JobView = serde_json::from_str(&data).map_err(|e| {
                            CliError::failed(format!("unexpected event for job {id}: {e}"))
                        })?;
                        seen(&job);
                        if is_terminal(&job) {
                            return Ok(job);
                        }
                    }
                    Ok(Some(_)) => {}
                    Ok(None) => break CliError::unreachable("the event stream ended early"),
                    Err(error) if error.retryable => break error,
                    Err(error) => return Err(error),
                }
            },
            Err(error) if error.retryable => error,
            Err(error) => return Err(error),
        };
        let since = *broken_since.get_or_insert_with(Instant::now);
        if since.elapsed() > RECONNECT_WINDOW {
            return Err(broken);
        }
        tokio::time::sleep(RECONNECT_PAUSE).await;
    }
}

/// Waits for every job of `ids` to end, showing progress as `show` says; the final views in
/// the order of `ids`.
async fn wait_all(client: &Client, ids: &[String], show: Show) -> Result<Vec<JobView>, CliError> {
    if ids.len() > WAIT_JOBS_MAX {
        return Err(CliError::input(format!(
            "at most {WAIT_JOBS_MAX} jobs at once, not {}",
            ids.len()
        )));
    }
    let bars = indicatif::MultiProgress::new();
    let style = indicatif::ProgressStyle::with_template("{prefix} [{bar:30}] {pos}/{len} {msg}")
        .map_err(|e| CliError::failed(format!("progress bar template: {e}")))?
        .progress_chars("=> ");
    let waits = ids.iter().map(|id| {
        let bar = (show == Show::Bars).then(|| {
            let bar = bars.add(indicatif::ProgressBar::new(0));
            bar.set_style(style.clone());
            bar.set_prefix(id.clone());
            bar
        });
        async move {
            let mut last_line = String::new();
            let job = follow(client, id, |job| match &bar {
                Some(bar) => {
                    let c = &job.counts;
                    bar.set_prefix(job.name.clone());
                    bar.set_length(u64::from(c.total));
                    bar.set_position(u64::from(c.done + c.skipped + c.failed + c.canceled));
                    bar.set_message(bar_message(job));
                }
                None if show == Show::Lines => {
                    let line = progress_line(job);
                    if line != last_line {
                        println!("{line}");
                        last_line = line;
                    }
                }
                None => {}
            })
            .await;
            if let Some(bar) = &bar {
                bar.finish();
            }
            job
        }
    });
    futures::future::join_all(waits).await.into_iter().collect()
}

fn show_for(output: OutputFormat) -> Show {
    match output {
        OutputFormat::Json => Show::Quiet,
        OutputFormat::Table if std::io::stderr().is_terminal() => Show::Bars,
        OutputFormat::Table => Show::Lines,
    }
}

/// Prints the ended jobs; an error unless every one ended done.
fn report_ended(jobs: &[JobView], output: OutputFormat) -> Result<(), CliError> {
    match output {
        OutputFormat::Json => print_json(&jobs)?,
        OutputFormat::Table => jobs.iter().for_each(print_job),
    }
    let failed: Vec<String> = jobs
        .iter()
        .filter(|job| job.state != "done")
        .map(|job| format!("job {} ended {}", job.id, job.state))
        .collect();
    if failed.is_empty() {
        Ok(())
    } else {
        Err(CliError::failed(failed.join("; ")))
    }
}

fn print_job_table(jobs: &[JobView]) {
    let rows: Vec<Vec<String>> = jobs
        .iter()
        .map(|job| {
            let c = &job.counts;
            vec![
                job.id.clone(),
                job.name.clone(),
                job.state.clone(),
                format!("{}/{}", c.done, c.total),
                c.failed.to_string(),
                (c.running + c.claimed + c.publishing).to_string(),
                job.created.clone(),
            ]
        })
        .collect();
    print!(
        "{}",
        super::table::render(
            &[
                "ID", "NAME", "STATE", "DONE", "FAILED", "RUNNING", "CREATED"
            ],
            &rows
        )
    );
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
            reprocess,
        } => {
            let (body, content_type) = read_spec(spec)?;
            let path = if *reprocess {
                "/v1/jobs?reprocess=true"
            } else {
                "/v1/jobs"
            };
            let created: JobCreatedView = client.submit(path, body, content_type).await?;
            match output {
                OutputFormat::Json if !*wait_end => print_json(&created)?,
                OutputFormat::Json => {}
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
            let jobs = wait_all(client, &[created.id], show_for(output)).await?;
            report_ended(&jobs, output)
        }
        JobCommand::List { state, name, all } => {
            let mut pairs = Vec::new();
            if let Some(state) = state {
                pairs.push(("state", state.as_str()));
            }
            if let Some(name) = name {
                pairs.push(("name", name.as_str()));
            }
            let (jobs, more) = client
                .pages("/v1/jobs", &pairs, *all, |page: JobListView| {
                    (page.jobs, page.next_page_token)
                })
                .await?;
            match output {
                OutputFormat::Json => print_json(&jobs)?,
                OutputFormat::Table => print_job_table(&jobs),
            }
            if more {
                eprintln!("more jobs follow: add --all to list them all");
            }
            Ok(())
        }
        JobCommand::Describe { id } => {
            let job: JobView = client.get(&format!("/v1/jobs/{}", encode(id))).await?;
            match output {
                OutputFormat::Json => print_json(&job),
                OutputFormat::Table => {
                    print_job(&job);
                    Ok(())
                }
            }
        }
        JobCommand::Wait { ids } => {
            let jobs = wait_all(client, ids, show_for(output)).await?;
            report_ended(&jobs, output)
        }
        JobCommand::Retry { id } | JobCommand::Cancel { id } => {
            let action = if matches!(command, JobCommand::Retry { .. }) {
                "retry"
            } else {
                "cancel"
            };
            let job: JobView = client
                .post(&format!("/v1/jobs/{}:{action}", encode(id)), &())
                .await?;
            match output {
                OutputFormat::Json => print_json(&job),
                OutputFormat::Table => {
                    println!("{}", progress_line(&job));
                    Ok(())
                }
            }
        }
    }
}

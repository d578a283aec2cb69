//! One attempt of one datum: work dir → inputs → `Started` → executors in order → outputs →
//! report. A task's outputs are uploaded even after an executor failed (not after a system
//! error or a cancel); a pipeline datum's are staged only when it succeeded (see `pipeline`).
//! The executors are killed once the job's `datum_timeout` has passed. The report always
//! comes back, whatever failed: errors become its outcome and system logs, never a lost
//! attempt.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use shoal_raft::command::{Command, Grant, Outcome};
use shoal_raft::job::{
    AttemptOutcome, AttemptReport, Datum, ExecutorLog, FileKind, InputSpec, Job, OutputFile,
    OutputSpec,
};
use shoal_storage::{EntryKind, Transfers, host_path_for};
use tokio_util::sync::CancellationToken;

use crate::executor::{Bind, StepRun, container_name};
use crate::live::LiveAttempt;
use crate::pipeline;
use crate::shared::Shared;

/// Bytes of stdout and of stderr a pipeline datum's attempt keeps per executor.
const PIPELINE_TAIL_BYTES_MAX: usize = 4 * 1024;

/// How long executors run before the log is told (see `Steps::run_bounded`).
const STARTED_DELAY: Duration = Duration::from_millis(200);

use shoal_raft::runtime::now_ms;

/// A `std::fs` call through the runtime seam (inline in the simulation), its error as text.
async fn fs<T: Send + 'static>(
    work: impl FnOnce() -> std::io::Result<T> + Send + 'static,
) -> Result<T, String> {
    shoal_raft::runtime::blocking(work)
        .await
        .map_err(|e| e.to_string())?
        .map_err(|e| e.to_string())
}

/// The report being built, with helpers to end it early.
struct Run {
    report: AttemptReport,
    /// The executors' output so far, for clients looking while the attempt runs.
    live: Arc<LiveAttempt>,
}

impl Run {
    fn log(&mut self, line: impl Into<String>) {
        self.report.system_logs.push(line.into());
    }

    fn fail(mut self, outcome: AttemptOutcome, line: impl Into<String>) -> AttemptReport {
        self.log(line);
        self.report.outcome = outcome;
        self.report.end_ms = now_ms();
        self.report
    }
}

fn has_glob(path: &str) -> bool {
    path.contains(['*', '?', '['])
}

fn host(root: &Path, container: &str) -> Result<PathBuf, String> {
    if !container.starts_with('/') {
        return Err(format!("container path {container:?} is not absolute"));
    }
    host_path_for(container, "/", root).map_err(|e| e.to_string())
}

/// Directories the steps see read-write: outputs' directories, volumes, the working directory.
fn writable_binds(job: &Job, root: &Path) -> Result<Vec<Bind>, String> {
    let task = &job.spec.task;
    let mut dirs: Vec<String> = task.volumes.clone();
    if job.spec.pipeline.is_some() {
        dirs.extend([
            pipeline::OUT_DIR.to_string(),
            pipeline::SCRATCH_DIR.to_string(),
        ]);
    }
    for output in &task.outputs {
        dirs.push(output_dir(output));
    }
    for executor in &task.executors {
        dirs.push(executor.workdir.clone());
        for file in [&executor.stdout, &executor.stderr] {
            if let Some((parent, _)) = file.rsplit_once('/') {
                dirs.push(if parent.is_empty() {
                    "/".into()
                } else {
                    parent.into()
                });
            }
        }
    }
    dirs.retain(|d| !d.is_empty() && d != "/");
    dirs.sort();
    dirs.dedup();
    let mut binds = Vec::new();
    for dir in dirs {
        let host_dir = host(root, &dir)?;
        std::fs::create_dir_all(&host_dir).map_err(|e| format!("{}: {e}", host_dir.display()))?;
        binds.push(Bind {
            container: PathBuf::from(&dir),
            host: host_dir,
            read_only: false,
        });
    }
    Ok(binds)
}

/// The directory an output lives in (for a wildcard: its `path_prefix`).
fn output_dir(output: &OutputSpec) -> String {
    if has_glob(&output.path) {
        return output.path_prefix.trim_end_matches('/').to_string();
    }
    match output.kind {
        FileKind::Directory => output.path.clone(),
        FileKind::File => output
            .path
            .rsplit_once('/')
            .map(|(p, _)| p.to_string())
            .unwrap_or_default(),
    }
}

fn downloaded(bytes: u64) {
    crate::metrics::worker().downloaded_bytes.inc_by(bytes);
}

async fn fetch_inputs(
    transfers: &Transfers,
    inputs: &[InputSpec],
    root: &Path,
) -> Result<Vec<Bind>, String> {
    let mut binds = Vec::new();
    for input in inputs {
        let target = host(root, &input.path)?;
        if let Some(parent) = target.parent() {
            let parent = parent.to_path_buf();
            fs(move || std::fs::create_dir_all(parent)).await?;
        }
        let result = match (&input.content, input.kind) {
            (Some(content), _) => transfers.write_content(content, &target).await.map(|_| ()),
            (None, FileKind::File) => transfers
                .download(&input.url, &target, EntryKind::File)
                .await
                .map(|summary| downloaded(summary.bytes)),
            (None, FileKind::Directory) => transfers
                .download(&input.url, &target, EntryKind::Directory)
                .await
                .map(|summary| downloaded(summary.bytes)),
        };
        result.map_err(|e| format!("input {}: {e}", input.path))?;
        binds.push(Bind {
            container: PathBuf::from(&input.path),
            host: target,
            read_only: true,
        });
    }
    Ok(binds)
}

async fn upload_outputs(
    transfers: &Transfers,
    outputs: &[OutputSpec],
    root: &Path,
) -> Result<Vec<OutputFile>, String> {
    let mut files = Vec::new();
    for output in outputs {
        let local = host(root, &output.path)?;
        let uploaded = if has_glob(&output.path) {
            let prefix = host(root, &output.path_prefix)?;
            transfers.upload_glob(&local, &prefix, &output.url).await
        } else if output.kind == FileKind::Directory {
            transfers.upload_dir(&local, &output.url).await
        } else {
            transfers
                .upload_file(&local, &output.url)
                .await
                .map(|file| vec![file])
        };
        let uploaded = uploaded.map_err(|e| format!("output {}: {e}", output.path))?;
        for file in uploaded {
            // Report the container path the file had, not the host path.
            let below = file
                .path
                .strip_prefix(root)
                .map(|p| format!("/{}", p.display()));
            let path = below.unwrap_or_else(|_| file.path.display().to_string());
            files.push(OutputFile {
                url: file.url,
                path,
                size_bytes: file.size_bytes,
            });
        }
    }
    Ok(files)
}

/// What every step of one attempt shares.
struct Steps<'a> {
    shared: &'a Shared,
    job: &'a Job,
    grant: &'a Grant,
    /// `SHOAL_DATUM_ID`.
    datum_env_id: String,
    root: &'a Path,
    binds: &'a [Bind],
}

impl Steps<'_> {
    /// Runs the executors, killing them once the job's `datum_timeout` (if any) has passed,
    /// and tells the log they run once they have for `STARTED_DELAY`: an attempt that ends
    /// sooner never does (its report says when it ran), which spares the log a write per tiny
    /// datum. A `Started` the log refuses (the claim was lost) cancels the attempt. Returns
    /// whether an executor failed and whether the timeout struck.
    async fn run_bounded(&self, run: &mut Run, cancel: &CancellationToken) -> (bool, bool) {
        let timeout_ms = self.job.spec.datum_timeout_ms;
        let steps_cancel = cancel.child_token();
        let steps = self.run(run, &steps_cancel);
        let deadline = async {
            match timeout_ms {
                0 => std::future::pending().await,
                ms => tokio::time::sleep(Duration::from_millis(ms)).await,
            }
        };
        let announce = async {
            tokio::time::sleep(STARTED_DELAY).await;
            report_started(self.shared, self.grant).await
        };
        tokio::pin!(steps, deadline, announce);
        let mut announced = false;
        loop {
            tokio::select! {
                failed = &mut steps => return (failed, false),
                () = &mut deadline => {
                    steps_cancel.cancel();
                    return (steps.await, true);
                }
                held = &mut announce, if !announced => {
                    announced = true;
                    if !held {
                        cancel.cancel();
                    }
                }
            }
        }
    }

    /// Runs the executors in order, stopping at the first that fails unless it says
    /// `ignore_error`; returns whether one failed (ignored or not).
    async fn run(&self, run: &mut Run, cancel: &CancellationToken) -> bool {
        let Steps {
            shared,
            job,
            grant,
            root,
            binds,
            ..
        } = *self;
        let extra_env = vec![
            ("SHOAL_JOB_ID".to_string(), job.spec.id.clone()),
            ("SHOAL_DATUM_ID".to_string(), self.datum_env_id.clone()),
            ("SHOAL_ATTEMPT".to_string(), grant.attempt.to_string()),
        ];
        let node_label = shoal_raft::format_node_id(shared.cluster.node_id());
        let (datum_index, attempt) = (grant.datum.index.to_string(), grant.attempt.to_string());
        // Every node keeps every datum's tails: a pipeline of a million datums keeps less.
        let tail_bytes_max = match job.spec.pipeline {
            Some(_) => shared.config.tail_bytes_max.min(PIPELINE_TAIL_BYTES_MAX),
            None => shared.config.tail_bytes_max,
        };
        let mut failed = false;
        for (index, spec) in job.spec.task.executors.iter().enumerate() {
            if cancel.is_cancelled() {
                break;
            }
            let file = |path: &str| (!path.is_empty()).then(|| host(root, path)).transpose();
            let (stdin, stdout, stderr) =
                match (file(&spec.stdin), file(&spec.stdout), file(&spec.stderr)) {
                    (Ok(a), Ok(b), Ok(c)) => (a, b, c),
                    (Err(e), _, _) | (_, Err(e), _) | (_, _, Err(e)) => {
                        run.log(e);
                        return true;
                    }
                };
            let start_ms = now_ms();
            let live = run.live.begin_step(start_ms, tail_bytes_max);
            let step = StepRun {
                spec,
                stdin,
                stdout,
                stderr,
                attempt_dir: root,
                binds,
                extra_env: &extra_env,
                tail_bytes_max,
                resources: &job.spec.task.resources,
                container_name: container_name(&[
                    &node_label,
                    &job.spec.id,
                    &datum_index,
                    &attempt,
                    &index.to_string(),
                ]),
                node_label: &node_label,
                live: Some(&live),
                die_with_node: shared.config.die_with_node,
            };
            let outcome = match shared.config.executor.run(&step, cancel).await {
                Ok(outcome) => outcome,
                Err(error) => {
                    run.live.abort_step();
                    run.log(format!("executor {}: {error}", run.report.executors.len()));
                    run.report.outcome = AttemptOutcome::SystemError;
                    return true;
                }
            };
            if let Some(note) = &outcome.note {
                run.log(note.clone());
            }
            let exit_code = outcome.exit_code;
            let log = ExecutorLog {
                exit_code,
                start_ms,
                end_ms: now_ms(),
                stdout_tail: outcome.stdout_tail,
                stderr_tail: outcome.stderr_tail,
            };
            run.live.end_step(log.clone());
            run.report.executors.push(log);
            // As in Funnel: with `ignore_error` the next executor still runs, but the failure
            // stands and the task ends EXECUTOR_ERROR.
            if !spec.succeeded(exit_code) {
                failed = true;
                if !spec.ignore_error {
                    break;
                }
            }
        }
        failed
    }
}

/// Runs the attempt granted by `grant` and returns its report.
pub async fn run(
    shared: Arc<Shared>,
    grant: Grant,
    cancel: CancellationToken,
    live: Arc<LiveAttempt>,
) -> AttemptReport {
    let executor = shared.config.executor.name();
    crate::metrics::worker().started(executor);
    let report = run_attempt(shared.clone(), grant, cancel, live).await;
    let uploaded: u64 = report.outputs.iter().map(|o| o.size_bytes).sum();
    let metrics = crate::metrics::worker();
    metrics.uploaded_bytes.inc_by(uploaded);
    let took = Duration::from_millis(report.end_ms.saturating_sub(report.start_ms));
    metrics.ended(executor, report.outcome.name(), took);
    report
}

async fn run_attempt(
    shared: Arc<Shared>,
    grant: Grant,
    cancel: CancellationToken,
    live: Arc<LiveAttempt>,
) -> AttemptReport {
    let mut run = Run {
        live,
        report: AttemptReport {
            outcome: AttemptOutcome::Succeeded,
            start_ms: now_ms(),
            end_ms: 0,
            executors: Vec::new(),
            outputs: Vec::new(),
            system_logs: Vec::new(),
        },
    };
    // The claim was applied on the leader; this node may not have applied it yet.
    if let Err(error) = shared.cluster.wait_applied(grant.fence).await {
        return run.fail(
            AttemptOutcome::SystemError,
            format!("the claim never reached this node: {error}"),
        );
    }
    let Some((job, datum)) = shared.job_and_datum(grant.datum) else {
        return run.fail(
            AttemptOutcome::SystemError,
            "the granted datum is not in this node's state",
        );
    };
    let waited = run.report.start_ms.saturating_sub(job.created_ms);
    crate::metrics::worker().waited(shared.config.executor.name(), Duration::from_millis(waited));
    if job.spec.pipeline.is_none() {
        // TES clients read which node ran the task in its system logs; a pipeline datum's
        // attempts name their node already, and a million datums need no million lines.
        let node = &shared.cluster.addr().name;
        run.log(format!(
            "node {node} runs attempt {} with the {} executor",
            grant.attempt,
            shared.config.executor.name()
        ));
    }
    if !shared.config.executor.needs_files() {
        // Nothing runs and nothing moves: no attempt dir to make (the benchmark executor
        // measures orchestration, not the file system or object storage).
        return run_without_files(&shared, &job, &datum, &grant, run, &cancel).await;
    }
    let dir = shared.config.work_dir.join(format!(
        "{}-{}-{}",
        job.spec.id, grant.datum.index, grant.attempt
    ));
    let report = run_in(&shared, &job, &datum, &grant, &dir, run, &cancel).await;
    if !shared.config.keep_workdirs {
        // Behind the report, not before it: the directory is this attempt's alone, and a
        // restart removes any left in `work/`.
        shoal_raft::runtime::spawn(async move {
            let _ = fs(move || std::fs::remove_dir_all(dir)).await;
        });
    }
    report
}

async fn run_without_files(
    shared: &Shared,
    job: &Job,
    datum: &Datum,
    grant: &Grant,
    mut run: Run,
    cancel: &CancellationToken,
) -> AttemptReport {
    let steps = Steps {
        shared,
        job,
        grant,
        datum_env_id: pipeline::datum_env_id(job, datum, grant),
        root: &shared.config.work_dir,
        binds: &[],
    };
    let (failed, timed_out) = steps.run_bounded(&mut run, cancel).await;
    finish(run, failed, timed_out, job, cancel)
}

/// Records in the log that the executors run; false when the log refused it (the claim is
/// lost). A write that fails is logged and forgiven: the claim watch stops the attempt if
/// the claim is gone.
async fn report_started(shared: &Shared, grant: &Grant) -> bool {
    let started = Command::Started {
        datum: grant.datum,
        fence: grant.fence,
    };
    match shared.cluster.write(started).await {
        Ok(Outcome::Reported { accepted: 1, .. }) => true,
        Ok(_) => {
            tracing::info!("the claim was lost while the attempt ran; stopping it");
            false
        }
        Err(error) => {
            tracing::warn!(%error, "reporting the start failed");
            true
        }
    }
}

/// The report after the executors ran and the outputs (if any) were uploaded.
fn finish(
    mut run: Run,
    failed: bool,
    timed_out: bool,
    job: &Job,
    cancel: &CancellationToken,
) -> AttemptReport {
    if cancel.is_cancelled() {
        return run.fail(AttemptOutcome::Canceled, "attempt canceled");
    }
    if timed_out {
        let limit = Duration::from_millis(job.spec.datum_timeout_ms);
        return run.fail(
            AttemptOutcome::TimedOut,
            format!(
                "datum_timeout of {} exceeded: the attempt was killed",
                humantime::format_duration(limit)
            ),
        );
    }
    if failed && run.report.outcome != AttemptOutcome::SystemError {
        run.report.outcome = AttemptOutcome::ExecutorError;
    }
    run.report.end_ms = now_ms();
    run.report
}

async fn run_in(
    shared: &Shared,
    job: &Job,
    datum: &Datum,
    grant: &Grant,
    dir: &Path,
    mut run: Run,
    cancel: &CancellationToken,
) -> AttemptReport {
    let root = dir.join("root");
    let created = root.clone();
    if let Err(error) = fs(move || std::fs::create_dir_all(created)).await {
        return run.fail(
            AttemptOutcome::SystemError,
            format!("work dir {}: {error}", dir.display()),
        );
    }
    let transfers =
        match Transfers::for_attempt(shared.resolver.clone(), shared.node_transfers.clone(), dir) {
            Ok(transfers) => transfers,
            Err(error) => return run.fail(AttemptOutcome::SystemError, error.to_string()),
        };
    let mut inputs: Vec<InputSpec> = job.spec.task.inputs.clone();
    inputs.extend(pipeline::datum_inputs(job, datum));
    // A cancel (or a lost claim) stops the downloads at once; what arrived is removed with
    // the attempt directory.
    let fetched = tokio::select! {
        fetched = fetch_inputs(&transfers, &inputs, &root) => fetched,
        () = cancel.cancelled() => {
            return run.fail(AttemptOutcome::Canceled, "canceled while inputs downloaded");
        }
    };
    let mut binds = match fetched {
        Ok(binds) => binds,
        Err(error) => return run.fail(AttemptOutcome::SystemError, error),
    };
    let (job_owned, root_owned) = (job.clone(), root.clone());
    let more = shoal_raft::runtime::blocking(move || writable_binds(&job_owned, &root_owned))
        .await
        .unwrap_or_else(|e| Err(e.to_string()));
    match more {
        Ok(more) => binds.extend(more),
        Err(error) => return run.fail(AttemptOutcome::SystemError, error),
    }
    let steps = Steps {
        shared,
        job,
        grant,
        datum_env_id: pipeline::datum_env_id(job, datum, grant),
        root: &root,
        binds: &binds,
    };
    let (failed, timed_out) = steps.run_bounded(&mut run, cancel).await;
    let system_error = run.report.outcome == AttemptOutcome::SystemError;
    // A pipeline datum's outputs count only when it succeeded.
    if cancel.is_cancelled() || timed_out || system_error || (failed && job.spec.pipeline.is_some())
    {
        return finish(run, failed, timed_out, job, cancel);
    }
    let outputs = async {
        match &job.spec.pipeline {
            Some(spec) => {
                let staging = pipeline::attempt_staging(
                    &spec.egress_uri,
                    &job.spec.id,
                    datum.id,
                    grant.fence,
                );
                stage_outputs(&transfers, &root, &staging).await
            }
            None => upload_outputs(&transfers, &job.spec.task.outputs, &root).await,
        }
    };
    let uploaded = tokio::select! {
        uploaded = outputs => uploaded,
        () = cancel.cancelled() => Err("canceled while outputs uploaded".to_string()),
    };
    match uploaded {
        Ok(files) => run.report.outputs = files,
        Err(error) => {
            remove_staged(shared, job, datum, grant).await;
            let outcome = if cancel.is_cancelled() {
                AttemptOutcome::Canceled
            } else {
                AttemptOutcome::SystemError
            };
            return run.fail(outcome, error);
        }
    }
    finish(run, failed, timed_out, job, cancel)
}

/// Removes what a pipeline attempt staged before it failed (best effort: the job's steward
/// clears whatever is left when the job ends).
async fn remove_staged(shared: &Shared, job: &Job, datum: &Datum, grant: &Grant) {
    let Some(spec) = &job.spec.pipeline else {
        return;
    };
    let staging = pipeline::attempt_staging(&spec.egress_uri, &job.spec.id, datum.id, grant.fence);
    if let Err(error) = shared.resolver.delete_below(&staging).await {
        tracing::warn!(%staging, %error, "cannot remove a failed attempt's staged outputs");
    }
}

/// Uploads everything below `/pfs/out` to the attempt's staging prefix; the report lists
/// each file by its path below `/pfs/out` (its final URL is the egress URI and that path).
async fn stage_outputs(
    transfers: &Transfers,
    root: &Path,
    staging: &str,
) -> Result<Vec<OutputFile>, String> {
    let out = host(root, pipeline::OUT_DIR)?;
    let staging_dir = out.join(pipeline::STAGING_DIR);
    if fs(move || std::fs::symlink_metadata(staging_dir))
        .await
        .is_ok()
    {
        return Err(format!(
            "outputs may not be written below {}/{}: the staging area's name",
            pipeline::OUT_DIR,
            pipeline::STAGING_DIR
        ));
    }
    let uploaded = transfers
        .upload_dir(&out, staging)
        .await
        .map_err(|e| format!("output {}: {e}", pipeline::OUT_DIR))?;
    Ok(uploaded
        .into_iter()
        .map(|file| OutputFile {
            url: String::new(),
            path: file
                .url
                .strip_prefix(staging)
                .unwrap_or(&file.url)
                .to_string(),
            size_bytes: file.size_bytes,
        })
        .collect())
}

//! One attempt of one datum: work dir → inputs → `Started` → executors in order → outputs →
//! report. Outputs are uploaded even after an executor failed (not after a system error or a
//! cancel). The report always comes back, whatever failed: errors become its outcome and
//! system logs, never a lost attempt.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use shoal_raft::command::{Command, Grant, Outcome};
use shoal_raft::job::{
    AttemptOutcome, AttemptReport, Datum, ExecutorLog, FileKind, InputSpec, Job, OutputFile,
    OutputSpec,
};
use shoal_storage::{EntryKind, Transfers, host_path_for};
use tokio_util::sync::CancellationToken;

use crate::Shared;
use crate::executor::{Bind, StepRun, container_name};
use crate::live::LiveAttempt;

fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or_default()
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

async fn fetch_inputs(
    transfers: &Transfers,
    inputs: &[InputSpec],
    root: &Path,
) -> Result<Vec<Bind>, String> {
    let mut binds = Vec::new();
    for input in inputs {
        let target = host(root, &input.path)?;
        if let Some(parent) = target.parent() {
            tokio::fs::create_dir_all(parent)
                .await
                .map_err(|e| e.to_string())?;
        }
        let result = match (&input.content, input.kind) {
            (Some(content), _) => transfers.write_content(content, &target).await.map(|_| ()),
            (None, FileKind::File) => transfers
                .download(&input.url, &target, EntryKind::File)
                .await
                .map(|_| ()),
            (None, FileKind::Directory) => transfers
                .download(&input.url, &target, EntryKind::Directory)
                .await
                .map(|_| ()),
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

/// Runs the executors in order, stopping at the first that fails unless it says
/// `ignore_error`; returns whether one failed (ignored or not).
async fn run_steps(
    shared: &Shared,
    job: &Job,
    grant: &Grant,
    root: &Path,
    binds: &[Bind],
    run: &mut Run,
    cancel: &CancellationToken,
) -> bool {
    let extra_env = vec![
        ("SHOAL_JOB_ID".to_string(), job.spec.id.clone()),
        (
            "SHOAL_DATUM_ID".to_string(),
            format!("{}.{}", job.spec.id, grant.datum.index),
        ),
        ("SHOAL_ATTEMPT".to_string(), grant.attempt.to_string()),
    ];
    let node_label = shoal_raft::format_node_id(shared.cluster.node_id());
    let (datum_index, attempt) = (grant.datum.index.to_string(), grant.attempt.to_string());
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
        let step = StepRun {
            spec,
            stdin,
            stdout,
            stderr,
            attempt_dir: root,
            binds,
            extra_env: &extra_env,
            tail_bytes_max: shared.config.tail_bytes_max,
            resources: &job.spec.task.resources,
            container_name: container_name(&[
                &node_label,
                &job.spec.id,
                &datum_index,
                &attempt,
                &index.to_string(),
            ]),
            node_label: &node_label,
            live: None,
        };
        let start_ms = now_ms();
        let live = run.live.begin_step(start_ms, shared.config.tail_bytes_max);
        let step = StepRun {
            live: Some(&live),
            ..step
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
        if exit_code != 0 {
            failed = true;
            if !spec.ignore_error {
                break;
            }
        }
    }
    failed
}

/// Runs the attempt granted by `grant` and returns its report.
pub async fn run(
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
    let found: Option<(Job, Datum)> = {
        let state = shared.cluster.view().read();
        let job = state.jobs.get(&grant.datum.job).cloned();
        job.zip(state.datums.get(&grant.datum).cloned())
    };
    let Some((job, datum)) = found else {
        return run.fail(
            AttemptOutcome::SystemError,
            "the granted datum is not in this node's state",
        );
    };
    let node = shared.cluster.addr().name.clone();
    run.log(format!(
        "node {node} runs attempt {} with the {} executor",
        grant.attempt,
        shared.config.executor.name()
    ));
    if shared.config.executor.is_noop() && !moves_files(&job, &datum) {
        // Nothing runs and nothing moves: no attempt dir to make (the benchmark executor
        // measures orchestration, not the file system).
        return run_without_files(&shared, &job, &grant, run, &cancel).await;
    }
    let dir = shared.config.work_dir.join(format!(
        "{}-{}-{}",
        job.spec.id, grant.datum.index, grant.attempt
    ));
    let report = run_in(&shared, &job, &datum, &grant, &dir, run, &cancel).await;
    if !shared.config.keep_workdirs {
        let _ = tokio::fs::remove_dir_all(&dir).await;
    }
    report
}

fn moves_files(job: &Job, datum: &Datum) -> bool {
    let task = &job.spec.task;
    !task.inputs.is_empty()
        || !datum.inputs.is_empty()
        || !task.outputs.is_empty()
        || !task.volumes.is_empty()
        || task
            .executors
            .iter()
            .any(|e| !e.stdin.is_empty() || !e.stdout.is_empty() || !e.stderr.is_empty())
}

async fn run_without_files(
    shared: &Shared,
    job: &Job,
    grant: &Grant,
    run: Run,
    cancel: &CancellationToken,
) -> AttemptReport {
    let mut run = match report_started(shared, grant, run).await {
        Ok(run) => run,
        Err(report) => return report,
    };
    let dir = shared.config.work_dir.clone();
    let failed = run_steps(shared, job, grant, &dir, &[], &mut run, cancel).await;
    finish(run, failed, cancel)
}

/// Records in the log that the first executor starts; an `Err` is the attempt's report.
async fn report_started(shared: &Shared, grant: &Grant, run: Run) -> Result<Run, AttemptReport> {
    let started = Command::Started {
        datum: grant.datum,
        fence: grant.fence,
    };
    match shared.cluster.write(started).await {
        Ok(Outcome::Reported { accepted: 1, .. }) => Ok(run),
        Ok(_) => Err(run.fail(
            AttemptOutcome::Canceled,
            "the claim was lost before the first executor started",
        )),
        Err(error) => Err(run.fail(
            AttemptOutcome::SystemError,
            format!("reporting the start failed: {error}"),
        )),
    }
}

/// The report after the executors ran and the outputs (if any) were uploaded.
fn finish(mut run: Run, failed: bool, cancel: &CancellationToken) -> AttemptReport {
    if cancel.is_cancelled() {
        return run.fail(AttemptOutcome::Canceled, "attempt canceled");
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
    run: Run,
    cancel: &CancellationToken,
) -> AttemptReport {
    let root = dir.join("root");
    if let Err(error) = tokio::fs::create_dir_all(&root).await {
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
    let inputs: Vec<InputSpec> = job
        .spec
        .task
        .inputs
        .iter()
        .chain(&datum.inputs)
        .cloned()
        .collect();
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
    let more = tokio::task::spawn_blocking(move || writable_binds(&job_owned, &root_owned))
        .await
        .unwrap_or_else(|e| Err(e.to_string()));
    match more {
        Ok(more) => binds.extend(more),
        Err(error) => return run.fail(AttemptOutcome::SystemError, error),
    }
    let mut run = match report_started(shared, grant, run).await {
        Ok(run) => run,
        Err(report) => return report,
    };
    let failed = run_steps(shared, job, grant, &root, &binds, &mut run, cancel).await;
    if cancel.is_cancelled() || run.report.outcome == AttemptOutcome::SystemError {
        return finish(run, failed, cancel);
    }
    let uploaded = tokio::select! {
        uploaded = upload_outputs(&transfers, &job.spec.task.outputs, &root) => uploaded,
        () = cancel.cancelled() => {
            return run.fail(AttemptOutcome::Canceled, "canceled while outputs uploaded");
        }
    };
    match uploaded {
        Ok(files) => run.report.outputs = files,
        Err(error) => return run.fail(AttemptOutcome::SystemError, error),
    }
    finish(run, failed, cancel)
}

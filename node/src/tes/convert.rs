//! TES tasks in and out: validation of a submitted task into a replicated `JobSpec` (every
//! error names the field), and the answer for a job in the MINIMAL, BASIC or FULL view.

use std::collections::BTreeMap;

use shoal_raft::job::{
    AttemptOutcome, Datum, DatumState, ExecutorLog, ExecutorSpec, FileKind, InputSpec, Job,
    JobKind, JobSpec, OutputSpec, Resources, TaskSpec,
};

use super::model::*;
use crate::api::rfc3339_ms;

/// Limits on what a task may contain.
pub const EXECUTORS_MAX: usize = 32;
pub const ARGS_MAX: usize = 4096;
pub const FILES_MAX: usize = 1024;
pub const VOLUMES_MAX: usize = 256;
pub const TAGS_MAX: usize = 64;
pub const TEXT_BYTES_MAX: usize = 4096;
pub const CONTENT_BYTES_MAX: usize = 128 * 1024;
pub const ENV_MAX: usize = 1024;

/// Backend parameters this cluster honours (none yet).
pub const BACKEND_PARAMETERS: [&str; 0] = [];

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum View {
    #[default]
    Minimal,
    Basic,
    Full,
}

impl View {
    pub fn parse(text: Option<&str>) -> Result<View, String> {
        match text {
            None | Some("MINIMAL") => Ok(View::Minimal),
            Some("BASIC") => Ok(View::Basic),
            Some("FULL") => Ok(View::Full),
            Some(other) => Err(format!("view: {other:?} is not MINIMAL, BASIC or FULL")),
        }
    }
}

fn text(field: &str, value: &Option<String>) -> Result<String, String> {
    let value = value.clone().unwrap_or_default();
    if value.len() > TEXT_BYTES_MAX {
        return Err(format!("{field}: longer than {TEXT_BYTES_MAX} bytes"));
    }
    Ok(value)
}

fn absolute(field: &str, path: &str) -> Result<(), String> {
    if !path.starts_with('/') {
        return Err(format!("{field}: {path:?} is not an absolute path"));
    }
    if path.split('/').any(|segment| segment == "..") {
        return Err(format!("{field}: {path:?} must not contain '..'"));
    }
    if path.len() > TEXT_BYTES_MAX {
        return Err(format!("{field}: longer than {TEXT_BYTES_MAX} bytes"));
    }
    Ok(())
}

fn optional_path(field: &str, path: &Option<String>) -> Result<String, String> {
    match path.as_deref() {
        None | Some("") => Ok(String::new()),
        Some(path) => absolute(field, path).map(|()| path.to_string()),
    }
}

fn file_kind(kind: Option<TesFileType>) -> FileKind {
    match kind {
        Some(TesFileType::Directory) => FileKind::Directory,
        _ => FileKind::File,
    }
}

fn executor(i: usize, e: &TesExecutor) -> Result<ExecutorSpec, String> {
    let field = |name: &str| format!("executors[{i}].{name}");
    if e.image.is_empty() {
        return Err(format!("{}: required", field("image")));
    }
    if e.command.is_empty() || e.command.len() > ARGS_MAX {
        return Err(format!(
            "{}: needs 1 to {ARGS_MAX} arguments",
            field("command")
        ));
    }
    let env = e.env.clone().unwrap_or_default();
    if env.len() > ENV_MAX {
        return Err(format!("{}: at most {ENV_MAX} variables", field("env")));
    }
    Ok(ExecutorSpec {
        image: e.image.clone(),
        command: e.command.clone(),
        workdir: optional_path(&field("workdir"), &e.workdir)?,
        stdin: optional_path(&field("stdin"), &e.stdin)?,
        stdout: optional_path(&field("stdout"), &e.stdout)?,
        stderr: optional_path(&field("stderr"), &e.stderr)?,
        env,
        ignore_error: e.ignore_error.unwrap_or(false),
        accept_exit_codes: Vec::new(),
    })
}

fn input(i: usize, t: &TesInput) -> Result<InputSpec, String> {
    let field = |name: &str| format!("inputs[{i}].{name}");
    absolute(&field("path"), &t.path)?;
    let content = t.content.clone().filter(|c| !c.is_empty());
    if let Some(content) = &content
        && content.len() > CONTENT_BYTES_MAX
    {
        return Err(format!(
            "{}: longer than {CONTENT_BYTES_MAX} bytes",
            field("content")
        ));
    }
    let url = t.url.clone().unwrap_or_default();
    if content.is_none() && url.is_empty() {
        return Err(format!(
            "{}: required unless content is given",
            field("url")
        ));
    }
    if content.is_none() {
        shoal_storage::check_url(&url, false).map_err(|e| format!("{}: {e}", field("url")))?;
    }
    Ok(InputSpec {
        name: text(&field("name"), &t.name)?,
        description: text(&field("description"), &t.description)?,
        url: if content.is_some() {
            String::new()
        } else {
            url
        },
        path: t.path.clone(),
        kind: file_kind(t.kind),
        content,
        streamable: t.streamable.unwrap_or(false),
    })
}

fn output(i: usize, t: &TesOutput) -> Result<OutputSpec, String> {
    let field = |name: &str| format!("outputs[{i}].{name}");
    absolute(&field("path"), &t.path)?;
    if t.url.is_empty() {
        return Err(format!("{}: required", field("url")));
    }
    shoal_storage::check_url(&t.url, true).map_err(|e| format!("{}: {e}", field("url")))?;
    let prefix = t.path_prefix.clone().unwrap_or_default();
    if t.path.contains(['*', '?', '[']) {
        absolute(&field("path_prefix"), &prefix).map_err(|_| {
            format!(
                "{}: required (absolute) when path has wildcards",
                field("path_prefix")
            )
        })?;
    }
    Ok(OutputSpec {
        name: text(&field("name"), &t.name)?,
        description: text(&field("description"), &t.description)?,
        url: t.url.clone(),
        path: t.path.clone(),
        path_prefix: prefix,
        kind: file_kind(t.kind),
    })
}

fn resources(r: &Option<TesResources>) -> Result<Resources, String> {
    let Some(r) = r else {
        return Ok(Resources::default());
    };
    let cores = r.cpu_cores.unwrap_or(0);
    if !(0..=4096).contains(&cores) {
        return Err("resources.cpu_cores: must be 0..=4096".into());
    }
    let gb = |field: &str, value: Option<f64>| match value {
        None => Ok(0),
        Some(v) if v.is_finite() && (0.0..=1_048_576.0).contains(&v) => {
            Ok((v * 1024.0 * 1024.0 * 1024.0).ceil() as u64)
        }
        Some(_) => Err(format!(
            "resources.{field}: must be a number of GB from 0 to 1048576"
        )),
    };
    let parameters = r.backend_parameters.clone().unwrap_or_default();
    let unknown: Vec<&String> = parameters
        .keys()
        .filter(|k| !BACKEND_PARAMETERS.contains(&k.to_lowercase().as_str()))
        .collect();
    if r.backend_parameters_strict.unwrap_or(false) && !unknown.is_empty() {
        return Err(format!(
            "resources.backend_parameters: unsupported keys {unknown:?}"
        ));
    }
    Ok(Resources {
        cpu_cores: cores as u32,
        cpu_millis: cores as u64 * 1000,
        ram_bytes: gb("ram_gb", r.ram_gb)?,
        disk_bytes: gb("disk_gb", r.disk_gb)?,
        preemptible: r.preemptible.unwrap_or(false),
        zones: r.zones.clone().unwrap_or_default(),
        backend_parameters: BTreeMap::new(),
    })
}

fn limited<T>(field: &str, items: &Option<Vec<T>>, max: usize) -> Result<Vec<T>, String>
where
    T: Clone,
{
    let items = items.clone().unwrap_or_default();
    if items.len() > max {
        return Err(format!("{field}: at most {max} entries"));
    }
    Ok(items)
}

/// Checks a submitted task and turns it into the job the log will carry.
pub fn job_spec(task: &TesTask, id: String, owner: String) -> Result<JobSpec, String> {
    if task.executors.is_empty() || task.executors.len() > EXECUTORS_MAX {
        return Err(format!("executors: needs 1 to {EXECUTORS_MAX} executors"));
    }
    let executors = task
        .executors
        .iter()
        .enumerate()
        .map(|(i, e)| executor(i, e))
        .collect::<Result<_, _>>()?;
    let inputs = limited("inputs", &task.inputs, FILES_MAX)?;
    let outputs = limited("outputs", &task.outputs, FILES_MAX)?;
    let volumes = limited("volumes", &task.volumes, VOLUMES_MAX)?;
    for (i, volume) in volumes.iter().enumerate() {
        absolute(&format!("volumes[{i}]"), volume)?;
    }
    let tags: BTreeMap<String, String> = task
        .tags
        .clone()
        .unwrap_or_default()
        .into_iter()
        .filter_map(|(k, v)| v.map(|v| (k, v)))
        .collect();
    if tags.len() > TAGS_MAX
        || tags
            .iter()
            .any(|(k, v)| k.len() > TEXT_BYTES_MAX || v.len() > TEXT_BYTES_MAX)
    {
        return Err(format!(
            "tags: at most {TAGS_MAX}, each key and value at most {TEXT_BYTES_MAX} bytes"
        ));
    }
    Ok(JobSpec {
        id,
        kind: JobKind::Task,
        name: text("name", &task.name)?,
        description: text("description", &task.description)?,
        tags,
        owner,
        task: TaskSpec {
            executors,
            inputs: inputs
                .iter()
                .enumerate()
                .map(|(i, t)| input(i, t))
                .collect::<Result<_, _>>()?,
            outputs: outputs
                .iter()
                .enumerate()
                .map(|(i, t)| output(i, t))
                .collect::<Result<_, _>>()?,
            volumes,
            resources: resources(&task.resources)?,
        },
        parallelism: 0,
        datum_tries: 1,
        datum_timeout_ms: 0,
        source: String::new(),
        pipeline: None,
        idempotency: None,
    })
}

/// The TES state of a task's one datum.
pub fn tes_state(datum: &Datum) -> TesState {
    match datum.state {
        DatumState::Pending => TesState::Queued,
        // Waiting in a node's queue: nothing has begun yet.
        DatumState::Claimed if datum.claim.is_some_and(|c| c.queued) => TesState::Queued,
        DatumState::Claimed => TesState::Initializing,
        DatumState::Running | DatumState::Publishing => TesState::Running,
        DatumState::Canceling => TesState::Canceling,
        // A task's one datum is never skipped (only pipeline datums reuse earlier work).
        DatumState::Done | DatumState::Skipped => TesState::Complete,
        DatumState::Canceled => TesState::Canceled,
        DatumState::Failed => match datum.attempts.last().and_then(|a| a.outcome) {
            Some(AttemptOutcome::ExecutorError) => TesState::ExecutorError,
            _ => TesState::SystemError,
        },
    }
}

fn kind_of(kind: FileKind) -> Option<TesFileType> {
    Some(match kind {
        FileKind::File => TesFileType::File,
        FileKind::Directory => TesFileType::Directory,
    })
}

/// Why an attempt that did not report in time ended (its node was lost, or it was canceled
/// before it began), for its system logs: what happened, to which node, when.
fn ended_without_report(
    attempt: &shoal_raft::job::Attempt,
    node: &str,
    lease_ms: u64,
) -> Vec<String> {
    let when = attempt.ended_ms.map(rfc3339_ms).unwrap_or_default();
    let line = match attempt.outcome {
        Some(AttemptOutcome::LeaseExpired) => format!(
            "attempt {} lost at {when}: node {node} sent no heartbeat for longer than its \
             lease ({} s), so its claim expired; the task was queued again",
            attempt.number,
            lease_ms as f64 / 1000.0
        ),
        Some(AttemptOutcome::Lost) => format!(
            "attempt {} lost at {when}: node {node} restarted and ended it; the task was \
             queued again",
            attempt.number
        ),
        Some(AttemptOutcome::Canceled) => format!("attempt {} canceled at {when}", attempt.number),
        _ => return Vec::new(),
    };
    vec![line]
}

/// What the attempt running now has printed so far, as its node told it.
pub struct LiveLogs<'a> {
    pub fence: u64,
    pub logs: &'a [ExecutorLog],
}

/// What the views of a task need besides the task.
pub struct Context<'a> {
    /// A node's name, from its id.
    pub node_name: &'a dyn Fn(u64) -> String,
    /// The claim lease, for saying why an attempt was lost.
    pub lease_ms: u64,
}

fn task_logs(
    datum: &Datum,
    view: View,
    context: &Context<'_>,
    live: Option<LiveLogs<'_>>,
) -> Vec<TesTaskLog> {
    let full = view == View::Full;
    let node_name = context.node_name;
    // A claim waiting in its node's queue is not an attempt yet (it may be stolen or handed
    // back without spending one): the task is QUEUED and shows no log for it.
    let queued = datum.claim.is_some_and(|c| c.queued);
    let shown = datum.attempts.len() - usize::from(queued);
    datum.attempts[..shown]
        .iter()
        .map(|attempt| {
            let report = attempt.report.as_ref();
            let logs = match (report, &live) {
                (Some(report), _) => report.executors.clone(),
                (None, Some(live)) if live.fence == attempt.fence => live.logs.to_vec(),
                (None, _) => Vec::new(),
            };
            TesTaskLog {
                logs: logs
                    .into_iter()
                    .map(|log| TesExecutorLog {
                        start_time: Some(rfc3339_ms(log.start_ms)),
                        // A running executor has no end yet.
                        end_time: (log.end_ms > 0).then(|| rfc3339_ms(log.end_ms)),
                        stdout: full.then_some(log.stdout_tail),
                        stderr: full.then_some(log.stderr_tail),
                        // A running executor has no exit code yet.
                        exit_code: (log.end_ms > 0).then_some(log.exit_code),
                    })
                    .collect(),
                metadata: Some(BTreeMap::from([(
                    "hostname".to_string(),
                    node_name(attempt.node),
                )])),
                start_time: attempt
                    .started_ms
                    .or(Some(attempt.claimed_ms))
                    .map(rfc3339_ms),
                end_time: attempt.ended_ms.map(rfc3339_ms),
                outputs: report
                    .map(|r| {
                        r.outputs
                            .iter()
                            .map(|o| TesOutputFileLog {
                                url: o.url.clone(),
                                path: o.path.clone(),
                                size_bytes: o.size_bytes.to_string(),
                            })
                            .collect()
                    })
                    .unwrap_or_default(),
                system_logs: full.then(|| match report {
                    // Reported after its lease expired: why it was lost, then what it said.
                    Some(report) if attempt.outcome == Some(AttemptOutcome::LeaseExpired) => {
                        let mut lines = ended_without_report(
                            attempt,
                            &node_name(attempt.node),
                            context.lease_ms,
                        );
                        lines.extend(report.system_logs.iter().cloned());
                        lines
                    }
                    Some(report) => report.system_logs.clone(),
                    None => {
                        ended_without_report(attempt, &node_name(attempt.node), context.lease_ms)
                    }
                }),
            }
        })
        .collect()
}

/// The answer for a task in `view`.
pub fn tes_task(
    job: &Job,
    datum: &Datum,
    view: View,
    context: &Context<'_>,
    live: Option<LiveLogs<'_>>,
) -> TesTask {
    let mut task = TesTask {
        id: Some(job.spec.id.clone()),
        state: Some(tes_state(datum)),
        ..Default::default()
    };
    if view == View::Minimal {
        return task;
    }
    let spec = &job.spec;
    let some = |s: &str| (!s.is_empty()).then(|| s.to_string());
    task.name = some(&spec.name);
    task.description = some(&spec.description);
    task.inputs = Some(
        spec.task
            .inputs
            .iter()
            .map(|i| TesInput {
                name: some(&i.name),
                description: some(&i.description),
                url: some(&i.url),
                path: i.path.clone(),
                kind: kind_of(i.kind),
                content: if view == View::Full {
                    i.content.clone()
                } else {
                    None
                },
                streamable: Some(i.streamable),
            })
            .collect(),
    );
    task.outputs = Some(
        spec.task
            .outputs
            .iter()
            .map(|o| TesOutput {
                name: some(&o.name),
                description: some(&o.description),
                url: o.url.clone(),
                path: o.path.clone(),
                path_prefix: some(&o.path_prefix),
                kind: kind_of(o.kind),
            })
            .collect(),
    );
    // What was asked, and nothing that was not: a value left at its default was not sent
    // (or sent as the default, which means the same).
    let r = &spec.task.resources;
    let gb = |bytes: u64| (bytes > 0).then(|| bytes as f64 / (1024.0 * 1024.0 * 1024.0));
    let resources = TesResources {
        cpu_cores: (r.cpu_cores > 0).then(|| i64::from(r.cpu_cores)),
        preemptible: r.preemptible.then_some(true),
        ram_gb: gb(r.ram_bytes),
        disk_gb: gb(r.disk_bytes),
        zones: (!r.zones.is_empty()).then(|| r.zones.clone()),
        backend_parameters: None,
        backend_parameters_strict: None,
    };
    task.resources = (resources != TesResources::default()).then_some(resources);
    task.executors = spec
        .task
        .executors
        .iter()
        .map(|e| TesExecutor {
            image: e.image.clone(),
            command: e.command.clone(),
            workdir: some(&e.workdir),
            stdin: some(&e.stdin),
            stdout: some(&e.stdout),
            stderr: some(&e.stderr),
            env: Some(e.env.clone()),
            ignore_error: Some(e.ignore_error),
        })
        .collect();
    task.volumes = Some(spec.task.volumes.clone());
    task.tags = Some(
        spec.tags
            .iter()
            .map(|(k, v)| (k.clone(), Some(v.clone())))
            .collect(),
    );
    task.logs = Some(task_logs(datum, view, context, live));
    task.creation_time = Some(rfc3339_ms(job.created_ms));
    task
}

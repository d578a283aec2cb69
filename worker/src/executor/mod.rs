//! Executors run one step of an attempt: one command, with the attempt's files bound at the
//! container paths the task names, stdout/stderr captured into tails (and files when asked).
//!
//! - `process`: host processes in a private root built by bubblewrap (`bwrap`).
//! - `docker`: containers through the local engine's API (bollard).
//! - `noop`: succeeds at once without running anything — for benchmarks only.

mod cgroup;
mod docker;
mod noop;
mod process;
mod spawn;

use std::path::{Path, PathBuf};

use shoal_raft::job::{ExecutorSpec, Resources};
use tokio_util::sync::CancellationToken;

pub use docker::{DockerExecutor, container_name};

/// Removes the cgroups of process steps a previous life of the node `node_label` left.
/// Blocking.
pub fn remove_leftover_cgroups(node_label: &str) -> usize {
    cgroup::remove_leftovers(&container_name(&[node_label, ""]))
}
pub use process::{DEFAULT_PATH, ProcessSandbox, bwrap_available};

/// Exit code reported for a step killed by cancellation (as a shell reports SIGKILL).
pub const KILLED_EXIT_CODE: i32 = 137;

/// Exit code of a step whose program does not exist (as a shell and `docker run` report).
pub const NOT_FOUND_EXIT_CODE: i32 = 127;
/// Exit code of a step whose program exists but cannot be run (not executable, a directory).
pub const NOT_RUNNABLE_EXIT_CODE: i32 = 126;

/// The exit code a shell (and `docker run`) gives a program that could not be started, from
/// the error the runtime gave: 127 when it does not exist, 126 when it cannot be run; `None`
/// when the error is not about the program.
pub fn start_failure_exit_code(error: &str) -> Option<i32> {
    let error = error.to_lowercase();
    let has = |text: &str| error.contains(text);
    if has("executable file not found") || has("no such file or directory") {
        Some(NOT_FOUND_EXIT_CODE)
    } else if has("permission denied") || has("is a directory") || has("exec format error") {
        Some(NOT_RUNNABLE_EXIT_CODE)
    } else {
        None
    }
}

/// The exit code for a container engine's refusal to start a step, when the refusal is about
/// the step's program (runc: `exec: "X": executable file not found in $PATH`, `exec: "X":
/// permission denied`); `None` for any other start failure (a mount, the engine), which is
/// the node's, not the task's.
pub fn container_start_failure_exit_code(error: &str) -> Option<i32> {
    let about_program = error.contains("exec: ") || error.contains("executable file not found");
    about_program
        .then(|| start_failure_exit_code(error))
        .flatten()
}

/// A step whose program could not be started: it ran and failed, as with a shell, with the
/// reason on its stderr.
fn not_started(exit_code: i32, reason: String, step: &StepRun<'_>) -> StepOutcome {
    let mut stderr = crate::tail::Tail::new(step.tail_bytes_max);
    let line = format!("{reason}\n");
    stderr.push(line.as_bytes());
    if let Some(live) = step.live {
        live.push_stderr(line.as_bytes());
    }
    StepOutcome {
        exit_code,
        stderr_tail: stderr.into_string(),
        note: Some(format!("the command could not be started: {reason}")),
        ..StepOutcome::default()
    }
}

/// Which executor a node runs attempts with.
#[derive(Debug, Clone)]
pub enum ExecutorKind {
    Docker(DockerExecutor),
    Process(std::sync::Arc<ProcessSandbox>),
    Noop,
    /// Supplied by the program that embeds the worker. The deterministic simulation's
    /// executor, which pretends to run commands for seeded durations and writes a pipeline
    /// datum's outputs itself, is one.
    External(std::sync::Arc<dyn StepRunner>),
}

/// An executor supplied from outside (see [`ExecutorKind::External`]).
pub trait StepRunner: std::fmt::Debug + Send + Sync {
    fn name(&self) -> &'static str;

    /// Whether its attempts get an attempt dir with their inputs and outputs.
    fn needs_files(&self) -> bool {
        false
    }

    /// Runs one step until it ends or `cancel` fires.
    fn run<'a>(
        &'a self,
        step: &'a StepRun<'_>,
        cancel: &'a CancellationToken,
    ) -> futures::future::BoxFuture<'a, Result<StepOutcome, ExecutorError>>;
}

impl ExecutorKind {
    pub fn name(&self) -> &'static str {
        match self {
            ExecutorKind::Docker(_) => "docker",
            ExecutorKind::Process(_) => "process",
            ExecutorKind::Noop => "noop",
            ExecutorKind::External(runner) => runner.name(),
        }
    }

    /// Whether attempts get an attempt dir with their inputs and outputs (`noop` runs
    /// without files; an external executor says).
    pub fn needs_files(&self) -> bool {
        match self {
            ExecutorKind::Docker(_) | ExecutorKind::Process(_) => true,
            ExecutorKind::Noop => false,
            ExecutorKind::External(runner) => runner.needs_files(),
        }
    }
}

/// A container path bound into the step, backed by the same path below the attempt's root.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Bind {
    pub container: PathBuf,
    pub host: PathBuf,
    pub read_only: bool,
}

/// Everything a step needs.
pub struct StepRun<'a> {
    pub spec: &'a ExecutorSpec,
    /// Host paths for the step's stdin / stdout / stderr files, when the task names them.
    pub stdin: Option<PathBuf>,
    pub stdout: Option<PathBuf>,
    pub stderr: Option<PathBuf>,
    /// Host directory the step runs in when no sandbox is used.
    pub attempt_dir: &'a Path,
    pub binds: &'a [Bind],
    /// Variables set on top of the task's `env`.
    pub extra_env: &'a [(String, String)],
    pub tail_bytes_max: usize,
    /// The task's cpu and memory limits (container limits, or the process step's cgroup).
    pub resources: &'a Resources,
    /// A name unique to this step of this attempt on this node (a container's name).
    pub container_name: String,
    /// Marks what this node creates, so a restart finds it (a container label).
    pub node_label: &'a str,
    /// Where output goes as it arrives, for clients looking while the step runs.
    pub live: Option<&'a crate::live::LiveStep>,
    /// Whether host processes are made to die with the node, and may join cgroups (see the
    /// process executor).
    pub die_with_node: bool,
}

/// How a step ended.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct StepOutcome {
    pub exit_code: i32,
    pub stdout_tail: String,
    pub stderr_tail: String,
    /// Something worth a system log line (e.g. "killed on cancel").
    pub note: Option<String>,
}

#[derive(Debug, thiserror::Error)]
pub enum ExecutorError {
    #[error(
        "the task maps container paths, which the process executor needs bubblewrap (bwrap) for; install it"
    )]
    NeedsBwrap,
    #[error("cannot start {program:?}: {source}")]
    Spawn {
        program: String,
        source: std::io::Error,
    },
    #[error("step i/o failed: {0}")]
    Io(#[from] std::io::Error),
    #[error("the executor has no command")]
    NoCommand,
    #[error("image {image:?} is not available: {reason}")]
    Image { image: String, reason: String },
    #[error("container engine: {0}")]
    Engine(String),
    #[error("cannot put the step in its cgroup: {0}")]
    Cgroup(String),
}

impl ExecutorKind {
    /// Runs one step until it exits or `cancel` fires (then it is killed).
    pub async fn run(
        &self,
        step: &StepRun<'_>,
        cancel: &CancellationToken,
    ) -> Result<StepOutcome, ExecutorError> {
        match self {
            ExecutorKind::Docker(docker) => docker.run(step, cancel).await,
            ExecutorKind::Process(sandbox) => process::run(sandbox, step, cancel).await,
            ExecutorKind::Noop => Ok(noop::run(step)),
            ExecutorKind::External(runner) => runner.run(step, cancel).await,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_a_refusal_about_the_program_is_the_tasks_failure() {
        let missing = "the engine answered 400: failed to create task for container: OCI runtime \
            create failed: runc create failed: unable to start container process: exec: \
            \"ERROR\": executable file not found in $PATH: unknown";
        assert_eq!(container_start_failure_exit_code(missing), Some(127));
        let denied =
            "unable to start container process: exec: \"/etc/hostname\": permission denied";
        assert_eq!(container_start_failure_exit_code(denied), Some(126));
        let mount = "error mounting \"/work/x\" to rootfs at \"/in\": no such file or directory";
        assert_eq!(
            container_start_failure_exit_code(mount),
            None,
            "the node's failure"
        );
        assert_eq!(
            start_failure_exit_code("Permission denied (os error 13)"),
            Some(126)
        );
        assert_eq!(start_failure_exit_code("connection refused"), None);
    }
}

//! The `process` executor: each step runs as a host process inside a private root built by
//! bubblewrap — the host's system directories read-only, a private `/tmp`, `/proc` and `/dev`,
//! and the task's paths bound from the attempt directory at the very paths the task names.
//! Nothing is created on the host outside the attempt directory. Without bwrap, a task that
//! maps no paths runs directly in the attempt directory; any other fails with a clear error.

use std::path::Path;
use std::process::Stdio;

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWriteExt};
use tokio::process::Command;
use tokio_util::sync::CancellationToken;

use super::{Bind, ExecutorError, KILLED_EXIT_CODE, StepOutcome, StepRun};
use crate::tail::Tail;

const BWRAP: &str = "bwrap";
/// PATH inside the step unless the task sets one.
const DEFAULT_PATH: &str = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";
/// Host directories bound read-only into every sandbox (those that exist).
const SYSTEM_DIRS: [&str; 6] = ["/usr", "/bin", "/sbin", "/lib", "/lib64", "/etc"];

/// Whether `bwrap` can be run on this host.
pub fn bwrap_available() -> bool {
    std::process::Command::new(BWRAP)
        .arg("--version")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|status| status.success())
}

fn sandboxed(step: &StepRun<'_>) -> Command {
    let mut command = Command::new(BWRAP);
    command.args([
        "--die-with-parent",
        "--unshare-pid",
        "--unshare-ipc",
        "--new-session",
    ]);
    for dir in SYSTEM_DIRS {
        command.args(["--ro-bind-try", dir, dir]);
    }
    command.args(["--proc", "/proc", "--dev", "/dev", "--tmpfs", "/tmp"]);
    let mut binds: Vec<&Bind> = step.binds.iter().collect();
    binds.sort_by_key(|b| b.container.components().count());
    for bind in binds {
        let flag = if bind.read_only {
            "--ro-bind"
        } else {
            "--bind"
        };
        command.arg(flag).arg(&bind.host).arg(&bind.container);
    }
    let workdir = if step.spec.workdir.is_empty() {
        "/"
    } else {
        step.spec.workdir.as_str()
    };
    command.args(["--chdir", workdir, "--"]);
    command.args(&step.spec.command);
    command
}

fn direct(step: &StepRun<'_>) -> Result<Command, ExecutorError> {
    let program = step.spec.command.first().ok_or(ExecutorError::NoCommand)?;
    let mut command = Command::new(program);
    command
        .args(&step.spec.command[1..])
        .current_dir(step.attempt_dir);
    Ok(command)
}

fn build(step: &StepRun<'_>) -> Result<Command, ExecutorError> {
    if step.spec.command.is_empty() {
        return Err(ExecutorError::NoCommand);
    }
    let maps_paths = !step.binds.is_empty()
        || !step.spec.workdir.is_empty()
        || step.stdin.is_some()
        || step.stdout.is_some()
        || step.stderr.is_some();
    let mut command = if bwrap_available() {
        sandboxed(step)
    } else if maps_paths {
        return Err(ExecutorError::NeedsBwrap);
    } else {
        direct(step)?
    };
    command
        .env_clear()
        .env("PATH", DEFAULT_PATH)
        .env("HOME", "/tmp");
    command
        .envs(&step.spec.env)
        .envs(step.extra_env.iter().map(|(k, v)| (k, v)));
    command
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .process_group(0);
    Ok(command)
}

/// Copies a stream into a tail (and a file when given) until it ends.
async fn capture(
    mut stream: impl AsyncRead + Unpin,
    file: Option<&Path>,
    max: usize,
) -> std::io::Result<String> {
    let mut tail = Tail::new(max);
    let mut out = match file {
        Some(path) => Some(tokio::fs::File::create(path).await?),
        None => None,
    };
    let mut buf = vec![0_u8; 64 * 1024];
    loop {
        let read = stream.read(&mut buf).await?;
        if read == 0 {
            break;
        }
        tail.push(&buf[..read]);
        if let Some(out) = out.as_mut() {
            out.write_all(&buf[..read]).await?;
        }
    }
    Ok(tail.into_string())
}

fn kill_group(pid: Option<u32>) {
    if let Some(pid) = pid {
        let group = nix::unistd::Pid::from_raw(pid as i32);
        let _ = nix::sys::signal::killpg(group, nix::sys::signal::Signal::SIGKILL);
    }
}

pub async fn run(
    step: &StepRun<'_>,
    cancel: &CancellationToken,
) -> Result<StepOutcome, ExecutorError> {
    let mut command = build(step)?;
    match &step.stdin {
        Some(path) => command.stdin(std::fs::File::open(path)?),
        None => command.stdin(Stdio::null()),
    };
    let program = step.spec.command.first().cloned().unwrap_or_default();
    let mut child = command
        .spawn()
        .map_err(|source| ExecutorError::Spawn { program, source })?;
    let pid = child.id();
    let stdout = child
        .stdout
        .take()
        .ok_or_else(|| std::io::Error::other("no stdout pipe"))?;
    let stderr = child
        .stderr
        .take()
        .ok_or_else(|| std::io::Error::other("no stderr pipe"))?;
    let max = step.tail_bytes_max;
    let outputs = async {
        tokio::try_join!(
            capture(stdout, step.stdout.as_deref(), max),
            capture(stderr, step.stderr.as_deref(), max)
        )
    };
    let waited = async {
        tokio::select! {
            status = child.wait() => status.map(|s| (s, false)),
            () = cancel.cancelled() => {
                kill_group(pid);
                child.wait().await.map(|s| (s, true))
            }
        }
    };
    let ((stdout_tail, stderr_tail), (status, killed)) = tokio::try_join!(outputs, waited)?;
    let exit_code = match status.code() {
        Some(code) => code,
        None => std::os::unix::process::ExitStatusExt::signal(&status)
            .map(|s| 128 + s)
            .unwrap_or(KILLED_EXIT_CODE),
    };
    let note = killed.then(|| "step killed: the attempt was canceled".to_string());
    Ok(StepOutcome {
        exit_code: if killed { KILLED_EXIT_CODE } else { exit_code },
        stdout_tail,
        stderr_tail,
        note,
    })
}

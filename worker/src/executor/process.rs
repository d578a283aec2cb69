//! The `process` executor: each step runs as a host process inside a private root built by
//! bubblewrap — the host's system directories read-only, a private `/tmp`, `/proc` and `/dev`,
//! and the task's paths bound from the attempt directory at the very paths the task names.
//! Nothing is created on the host outside the attempt directory. Without bwrap, a task that
//! maps no paths runs directly in the attempt directory; any other fails with a clear error.

use std::path::{Path, PathBuf};

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWriteExt};
use tokio_util::sync::CancellationToken;

use super::cgroup::StepCgroup;
use super::spawn::{Launch, SpawnError, Started, spawn};
use super::{Bind, ExecutorError, KILLED_EXIT_CODE, StepOutcome, StepRun, start_failure_exit_code};
use crate::tail::Tail;

const BWRAP: &str = "bwrap";
// Note: the host's /etc is bound read-only (name resolution, users); keep node secrets
// out of /etc. The network is shared with the host.
/// PATH inside the step unless the node (`worker.process_path`) or the task sets one.
pub const DEFAULT_PATH: &str = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";

/// What a node adds to every process step: where its programs are found, the host paths it
/// sees besides the system directories, the variables it gets.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProcessSandbox {
    /// PATH inside the sandbox.
    pub path: String,
    /// Host paths bound read-only at the same path (those that exist).
    pub binds: Vec<PathBuf>,
    /// Variables every step gets; the task's own `env` may override them.
    pub env: Vec<(String, String)>,
}

impl ProcessSandbox {
    /// Runs `argv` as the process executor runs a step with no inputs, outputs, working
    /// directory or limits: in bwrap with this sandbox, made to die with the calling process,
    /// its output captured. For measuring what the sandbox costs (`tasks_bench`).
    pub async fn run_bare_step(&self, argv: &[String]) -> Result<StepOutcome, ExecutorError> {
        let spec = shoal_raft::job::ExecutorSpec {
            command: argv.to_vec(),
            ..Default::default()
        };
        let resources = shoal_raft::job::Resources::default();
        let step = StepRun {
            spec: &spec,
            stdin: None,
            stdout: None,
            stderr: None,
            attempt_dir: Path::new("/"),
            binds: &[],
            extra_env: &[],
            tail_bytes_max: 4096,
            resources: &resources,
            container_name: String::new(),
            node_label: "",
            live: None,
            die_with_node: true,
        };
        run_in(self, &step, &CancellationToken::new(), &[]).await
    }
}

impl Default for ProcessSandbox {
    fn default() -> Self {
        ProcessSandbox {
            path: DEFAULT_PATH.to_string(),
            binds: Vec::new(),
            env: Vec::new(),
        }
    }
}
/// Host directories bound read-only into every sandbox (those that exist).
const SYSTEM_DIRS: [&str; 6] = ["/usr", "/bin", "/sbin", "/lib", "/lib64", "/etc"];

/// `bwrap`'s absolute path, when it can be run on this host (probed once).
fn bwrap_path() -> Option<&'static Path> {
    static PATH: std::sync::OnceLock<Option<PathBuf>> = std::sync::OnceLock::new();
    PATH.get_or_init(|| {
        // The node's PATH, then the usual directories (PATH may be unset in a container).
        let path = std::env::var_os("PATH").unwrap_or_default();
        let dirs = std::env::split_paths(&path).chain(std::env::split_paths(DEFAULT_PATH));
        let found = dirs.map(|dir| dir.join(BWRAP)).find(|candidate| {
            candidate.is_file()
                && std::process::Command::new(candidate)
                    .arg("--version")
                    .stdout(std::process::Stdio::null())
                    .stderr(std::process::Stdio::null())
                    .status()
                    .is_ok_and(|status| status.success())
        });
        if found.is_none() {
            tracing::warn!(
                "bubblewrap (bwrap) not found: the process executor runs only tasks that map no \
                 paths, unsandboxed, in their attempt directory"
            );
        }
        found
    })
    .as_deref()
}

/// Whether `bwrap` can be run on this host.
pub fn bwrap_available() -> bool {
    bwrap_path().is_some()
}

/// The system directories with, for those that are symlinks on the host (merged /usr),
/// where they point. Read once.
fn system_dirs() -> &'static [(&'static str, Option<PathBuf>)] {
    static DIRS: std::sync::OnceLock<Vec<(&'static str, Option<PathBuf>)>> =
        std::sync::OnceLock::new();
    DIRS.get_or_init(|| {
        // A symlink is kept as a symlink only when it leads into a directory that is bound
        // (merged /usr: /bin -> usr/bin); any other is bound as what it points to.
        let bound: Vec<&str> = SYSTEM_DIRS
            .iter()
            .copied()
            .filter(|dir| std::fs::read_link(dir).is_err())
            .collect();
        SYSTEM_DIRS
            .iter()
            .map(|dir| {
                let link = std::fs::read_link(dir).ok().filter(|_| {
                    std::fs::canonicalize(dir).is_ok_and(|target| {
                        bound
                            .iter()
                            .any(|b| target.starts_with(b) && target != Path::new(b))
                    })
                });
                (*dir, link)
            })
            .collect()
    })
}

/// The step's environment: the node's PATH, HOME, the node's variables, the task's, shoal's
/// own — later ones win.
fn step_env<'a>(sandbox: &'a ProcessSandbox, step: &'a StepRun<'_>) -> Vec<(&'a str, &'a str)> {
    let mut env = vec![("PATH", sandbox.path.as_str()), ("HOME", "/tmp")];
    env.extend(sandbox.env.iter().map(|(k, v)| (k.as_str(), v.as_str())));
    env.extend(step.spec.env.iter().map(|(k, v)| (k.as_str(), v.as_str())));
    env.extend(step.extra_env.iter().map(|(k, v)| (k.as_str(), v.as_str())));
    env
}

/// Refuses `path` if it is not below `root` or any part of it below `root` is a symlink. Steps
/// run one at a time and nothing of a step outlives it, so what this checks holds until the
/// next step starts.
fn check_beneath(root: &Path, path: &Path) -> std::io::Result<()> {
    let below = path.strip_prefix(root).map_err(|_| {
        std::io::Error::other(format!(
            "{} is outside the attempt directory",
            path.display()
        ))
    })?;
    let mut current = root.to_path_buf();
    for part in below.components() {
        current.push(part);
        match std::fs::symlink_metadata(&current) {
            Ok(meta) if meta.file_type().is_symlink() => {
                return Err(std::io::Error::other(format!(
                    "{} is a symlink; refused",
                    current.display()
                )));
            }
            Ok(_) => {}
            Err(error) if error.kind() == std::io::ErrorKind::NotFound => return Ok(()),
            Err(error) => return Err(error),
        }
    }
    Ok(())
}

/// The step's stdio files, opened without following symlinks.
pub(super) struct Stdio3 {
    pub(super) stdin: Option<std::fs::File>,
    pub(super) stdout: Option<std::fs::File>,
    pub(super) stderr: Option<std::fs::File>,
}

fn open_checked(root: &Path, path: &Path, write: bool) -> std::io::Result<std::fs::File> {
    use std::os::unix::fs::OpenOptionsExt;
    check_beneath(root, path)?;
    let mut options = std::fs::OpenOptions::new();
    if write {
        options.write(true).create(true).truncate(true);
    } else {
        options.read(true);
    }
    options.custom_flags(nix::libc::O_NOFOLLOW).open(path)
}

/// Checks every bind source and opens the stdio files — blocking, so run off the reactor.
pub(super) fn prepare(
    root: PathBuf,
    binds: Vec<PathBuf>,
    stdio: [Option<PathBuf>; 3],
) -> std::io::Result<Stdio3> {
    for bind in &binds {
        check_beneath(&root, bind)?;
    }
    let [stdin, stdout, stderr] = stdio;
    Ok(Stdio3 {
        stdin: stdin.map(|p| open_checked(&root, &p, false)).transpose()?,
        stdout: stdout.map(|p| open_checked(&root, &p, true)).transpose()?,
        stderr: stderr.map(|p| open_checked(&root, &p, true)).transpose()?,
    })
}

fn sandboxed(bwrap: &Path, sandbox: &ProcessSandbox, step: &StepRun<'_>) -> Launch {
    let mut command = Launch::new(bwrap);
    command.args([
        "--die-with-parent",
        "--unshare-pid",
        "--unshare-ipc",
        "--new-session",
    ]);
    for (dir, link) in system_dirs() {
        match link {
            // Merged /usr: the same symlink inside, instead of another read-only mount (each
            // costs bwrap a pass over the host's mount table).
            Some(target) => command.arg("--symlink").arg(target).arg(dir),
            None => command.args(["--ro-bind-try", dir, dir]),
        };
    }
    command.args([
        "--proc",
        "/proc",
        "--dev",
        "/dev",
        "--tmpfs",
        "/tmp",
        "--clearenv",
    ]);
    // The node's extra host paths, before the task's (which may lie below them).
    for path in &sandbox.binds {
        command.arg("--ro-bind-try").arg(path).arg(path);
    }
    for (key, value) in step_env(sandbox, step) {
        command.args(["--setenv", key, value]);
    }
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

fn direct(step: &StepRun<'_>) -> Result<Launch, ExecutorError> {
    let program = step.spec.command.first().ok_or(ExecutorError::NoCommand)?;
    let mut command = Launch::new(program);
    command.args(&step.spec.command[1..]);
    command.dir = Some(step.attempt_dir.to_path_buf());
    Ok(command)
}

fn build(sandbox: &ProcessSandbox, step: &StepRun<'_>) -> Result<Launch, ExecutorError> {
    if step.spec.command.is_empty() {
        return Err(ExecutorError::NoCommand);
    }
    let maps_paths = !step.binds.is_empty()
        || !step.spec.workdir.is_empty()
        || step.stdin.is_some()
        || step.stdout.is_some()
        || step.stderr.is_some();
    // Only an unsandboxed step gets the variables in its process environment. bwrap itself
    // runs on the host before any namespace exists, so it must never see them (LD_PRELOAD
    // and the like); inside the sandbox they come from `--setenv`.
    let (mut command, env) = match bwrap_path() {
        Some(bwrap) => (
            sandboxed(bwrap, sandbox, step),
            vec![("PATH", DEFAULT_PATH), ("HOME", "/tmp")],
        ),
        None if maps_paths => return Err(ExecutorError::NeedsBwrap),
        None => (direct(step)?, step_env(sandbox, step)),
    };
    command.env = env
        .into_iter()
        .map(|(key, value)| (key.to_string(), value.to_string()))
        .collect();
    Ok(command)
}

/// Copies a stream into a tail (and a file when given) until it ends.
async fn capture(
    mut stream: impl AsyncRead + Unpin,
    file: Option<std::fs::File>,
    max: usize,
    live: impl Fn(&[u8]),
) -> std::io::Result<String> {
    let mut tail = Tail::new(max);
    let mut out = file.map(tokio::fs::File::from_std);
    let mut buf = vec![0_u8; 64 * 1024];
    loop {
        let read = stream.read(&mut buf).await?;
        if read == 0 {
            break;
        }
        tail.push(&buf[..read]);
        live(&buf[..read]);
        if let Some(out) = out.as_mut() {
            out.write_all(&buf[..read]).await?;
        }
    }
    Ok(tail.into_string())
}

pub async fn run(
    sandbox: &ProcessSandbox,
    step: &StepRun<'_>,
    cancel: &CancellationToken,
) -> Result<StepOutcome, ExecutorError> {
    // The step's cpu and memory limits: a cgroup it joins before it becomes the program.
    // A step asking for neither (the common case) costs nothing here.
    let cgroup = if !StepCgroup::wanted(step.resources) {
        Ok(None)
    } else if !step.die_with_node {
        Err("steps are started without joining a cgroup".to_string())
    } else {
        let (name, resources) = (step.container_name.clone(), step.resources.clone());
        shoal_raft::runtime::blocking(move || StepCgroup::create(&name, &resources))
            .await
            .map_err(std::io::Error::other)?
    };
    let (cgroup, unlimited) = match cgroup {
        Ok(cgroup) => (cgroup, None),
        Err(reason) => (None, Some(reason)),
    };
    let procs = cgroup
        .as_ref()
        .map(StepCgroup::procs_files)
        .unwrap_or_default();
    let ran = run_in(sandbox, step, cancel, &procs).await;
    let killed_for_memory = match cgroup {
        Some(cgroup) => shoal_raft::runtime::blocking(move || {
            let killed = cgroup.oom_killed().then_some(cgroup.ram_bytes());
            cgroup.remove();
            killed
        })
        .await
        .ok()
        .flatten(),
        None => None,
    };
    let mut outcome = ran?;
    let notes = [
        outcome.note.take(),
        killed_for_memory
            .map(|limit| format!("step killed for memory: it exceeded its limit of {limit} bytes")),
        unlimited.map(|reason| format!("cpu and memory limits not enforced: {reason}")),
    ];
    let notes: Vec<String> = notes.into_iter().flatten().collect();
    outcome.note = (!notes.is_empty()).then(|| notes.join("; "));
    Ok(outcome)
}

/// Runs the step, joining the cgroups whose `cgroup.procs` files are `procs` first.
async fn run_in(
    sandbox: &ProcessSandbox,
    step: &StepRun<'_>,
    cancel: &CancellationToken,
    procs: &[PathBuf],
) -> Result<StepOutcome, ExecutorError> {
    let command = build(sandbox, step)?;
    let binds = step.binds.iter().map(|b| b.host.clone()).collect();
    let stdio = [step.stdin.clone(), step.stdout.clone(), step.stderr.clone()];
    let root = step.attempt_dir.to_path_buf();
    let files = shoal_raft::runtime::blocking(move || prepare(root, binds, stdio))
        .await
        .map_err(std::io::Error::other)??;
    let program = step.spec.command.first().cloned().unwrap_or_default();
    // Started here, on a runtime worker, never on a blocking thread: the step dies with the
    // thread that started it (see `spawn`).
    let stdin = files.stdin.map(Into::into);
    let Started {
        mut child,
        stdout,
        stderr,
    } = match spawn(&command, stdin, procs, step.die_with_node) {
        Ok(started) => started,
        // Started directly, the program is the user's: one that cannot be started is a step
        // that failed (127 or 126), not a failure of the node. bwrap reports the program's
        // on stderr.
        Err(SpawnError::Exec(source)) => {
            let reason = format!("{program}: {source}");
            return match start_failure_exit_code(&source.to_string()) {
                Some(code) if bwrap_path().is_none() => Ok(super::not_started(code, reason, step)),
                _ => Err(ExecutorError::Spawn { program, source }),
            };
        }
        Err(SpawnError::Cgroup(procs, source)) => {
            return Err(ExecutorError::Cgroup(format!("{procs:?}: {source}")));
        }
        Err(SpawnError::Other(source)) => return Err(ExecutorError::Spawn { program, source }),
    };
    let max = step.tail_bytes_max;
    let outputs = async {
        tokio::try_join!(
            capture(stdout, files.stdout, max, |bytes| {
                if let Some(live) = step.live {
                    live.push_stdout(bytes);
                }
            }),
            capture(stderr, files.stderr, max, |bytes| {
                if let Some(live) = step.live {
                    live.push_stderr(bytes);
                }
            })
        )
    };
    let waited = async {
        tokio::select! {
            code = child.wait() => code.map(|c| (c, false)),
            () = cancel.cancelled() => {
                child.kill_group();
                child.wait().await.map(|c| (c, true))
            }
        }
    };
    let ((stdout_tail, stderr_tail), (exit_code, killed)) = tokio::try_join!(outputs, waited)?;
    let mut note = killed.then(|| "step killed: the attempt was canceled".to_string());
    let mut exit_code = if killed { KILLED_EXIT_CODE } else { exit_code };
    if let Some((code, reason)) = exec_failure(exit_code, &stderr_tail) {
        exit_code = code;
        note = Some(format!("the command could not be started: {reason}"));
    }
    Ok(StepOutcome {
        exit_code,
        stdout_tail,
        stderr_tail,
        note,
    })
}

/// Whether the step's program could not be started inside the sandbox: bwrap then exits 1
/// after `bwrap: execvp PROGRAM: REASON`. Gives the exit code a shell would (127 or 126) and
/// the reason.
fn exec_failure(exit_code: i32, stderr_tail: &str) -> Option<(i32, String)> {
    if exit_code != 1 {
        return None;
    }
    // Their last words: a program's own output before it is not theirs.
    let line = stderr_tail.lines().rev().find(|l| !l.trim().is_empty())?;
    let reason = line.strip_prefix("bwrap: execvp ")?.to_string();
    Some((start_failure_exit_code(&reason)?, reason))
}

#[cfg(test)]
mod tests {
    use super::{ProcessSandbox, build, bwrap_path, check_beneath, exec_failure};
    use crate::executor::StepRun;
    use shoal_raft::job::{ExecutorSpec, Resources};

    #[test]
    fn the_tasks_environment_reaches_the_step_but_never_bwrap_itself() {
        let spec = ExecutorSpec {
            image: "x".into(),
            command: vec!["true".into()],
            env: [("LD_PRELOAD".to_string(), "/tmp/evil.so".to_string())].into(),
            ..Default::default()
        };
        let resources = Resources::default();
        let step = StepRun {
            spec: &spec,
            stdin: None,
            stdout: None,
            stderr: None,
            attempt_dir: std::path::Path::new("/tmp"),
            binds: &[],
            extra_env: &[],
            tail_bytes_max: 1024,
            resources: &resources,
            container_name: "n".into(),
            node_label: "n",
            live: None,
            die_with_node: false,
        };
        let sandbox = ProcessSandbox {
            path: "/opt/tools/bin:/usr/bin".into(),
            binds: vec!["/opt/tools".into()],
            env: vec![("NODE_WIDE".into(), "1".into())],
        };
        let command = build(&sandbox, &step).expect("build");
        let envs: Vec<_> = command.env.iter().map(|(k, _)| k.clone()).collect();
        let args: Vec<String> = command
            .args
            .iter()
            .map(|a| a.to_string_lossy().into_owned())
            .collect();
        if bwrap_path().is_some() {
            assert!(!envs.iter().any(|k| k == "LD_PRELOAD"), "{envs:?}");
            let at = args
                .iter()
                .position(|a| a == "LD_PRELOAD")
                .expect("--setenv");
            assert_eq!(args[at - 1], "--setenv");
            assert_eq!(args[at + 1], "/tmp/evil.so");
            // The node's sandbox settings: its PATH and variables inside, its paths bound.
            let joined = args.join(" ");
            assert!(
                joined.contains("--setenv PATH /opt/tools/bin:/usr/bin"),
                "{joined}"
            );
            assert!(joined.contains("--setenv NODE_WIDE 1"), "{joined}");
            assert!(
                joined.contains("--ro-bind-try /opt/tools /opt/tools"),
                "{joined}"
            );
        } else {
            assert!(
                envs.iter().any(|k| k == "LD_PRELOAD"),
                "direct steps get it"
            );
        }
    }

    #[test]
    fn symlinks_below_the_root_are_refused_and_missing_paths_pass() {
        let dir = tempfile::tempdir().expect("tempdir");
        let root = dir.path();
        std::fs::create_dir_all(root.join("out")).expect("mkdir");
        std::os::unix::fs::symlink("/etc", root.join("out/link")).expect("symlink");
        assert!(check_beneath(root, &root.join("out/file")).is_ok());
        assert!(check_beneath(root, &root.join("out/new/dir/file")).is_ok());
        assert!(check_beneath(root, &root.join("out/link")).is_err());
        assert!(check_beneath(root, &root.join("out/link/passwd")).is_err());
        assert!(check_beneath(root, std::path::Path::new("/etc/passwd")).is_err());
    }

    #[test]
    fn a_program_that_cannot_start_exits_as_from_a_shell() {
        let missing = exec_failure(1, "bwrap: execvp ERROR: No such file or directory\n");
        assert_eq!(missing.map(|m| m.0), Some(127));
        let denied = exec_failure(1, "x\nbwrap: execvp /etc/hostname: Permission denied\n");
        assert_eq!(denied.map(|d| d.0), Some(126));
        // A program's own exit 1 stays what it is, even after printing such a line.
        assert_eq!(exec_failure(1, "no such file or directory\n"), None);
        let own = "bwrap: execvp x: No such file or directory\nthen the program went on\n";
        assert_eq!(exec_failure(1, own), None);
        assert_eq!(
            exec_failure(2, "bwrap: execvp x: No such file or directory\n"),
            None
        );
    }
}

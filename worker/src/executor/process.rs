//! The `process` executor: each step runs as a host process inside a private root built by
//! bubblewrap — the host's system directories read-only, a private `/tmp`, `/proc` and `/dev`,
//! and the task's paths bound from the attempt directory at the very paths the task names.
//! Nothing is created on the host outside the attempt directory. Without bwrap, a task that
//! maps no paths runs directly in the attempt directory; any other fails with a clear error.

use std::path::{Path, PathBuf};
use std::process::Stdio;

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWriteExt};
use tokio::process::Command;
use tokio_util::sync::CancellationToken;

use super::cgroup::StepCgroup;
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
    /// The command the process executor starts for a step running `argv` with no inputs,
    /// outputs, working directory or limits: bwrap with this sandbox, made to die with the
    /// calling process when `die_with_node` (as the node's steps are). For measuring what the
    /// sandbox costs (`tasks_bench`); the step's output is captured in pipes, as the executor
    /// does.
    pub fn bare_step_command(
        &self,
        argv: &[String],
        die_with_node: bool,
    ) -> Result<Command, ExecutorError> {
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
            tail_bytes_max: 0,
            resources: &resources,
            container_name: String::new(),
            node_label: "",
            live: None,
            die_with_node,
        };
        build(self, &step, &[])
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

/// `bwrap`'s absolute path, when it can be run on this host (probed once). Spawning by
/// absolute path also lets the standard library use `posix_spawn` instead of copying the
/// node's address space with `fork` (it forks when PATH is set for a bare program name).
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
                    .stdout(Stdio::null())
                    .stderr(Stdio::null())
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

fn sandboxed(bwrap: &Path, sandbox: &ProcessSandbox, step: &StepRun<'_>) -> Command {
    let mut command = Command::new(bwrap);
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

fn direct(step: &StepRun<'_>) -> Result<Command, ExecutorError> {
    let program = step.spec.command.first().ok_or(ExecutorError::NoCommand)?;
    let mut command = Command::new(program);
    command
        .args(&step.spec.command[1..])
        .current_dir(step.attempt_dir);
    Ok(command)
}

/// Makes `command` join the step's cgroups (their `cgroup.procs` files, `procs`) and die with
/// this node however the node dies, even while the command is being started — before
/// bwrap's own `--die-with-parent` takes hold. Done in the child between fork and exec:
/// it joins the cgroups (so everything it starts is inside from the first instruction), asks
/// the kernel for SIGKILL when its parent dies, checks that its parent is still this node
/// (the node may have died before the request took hold), then becomes the program, which
/// keeps the request. So no step outlives its node.
///
/// In the child only async-signal-safe calls run (open, write, close, prctl, getppid,
/// _exit) on data made before the fork: a multi-threaded parent's locks may be held by
/// threads the child does not have, so the child must not allocate. This replaced a
/// `shoal __exec-guard` process that did the same from a fresh exec: that exec cost about
/// 1.4 ms per step, as much as half of bwrap.
#[allow(unsafe_code)]
fn die_with_node(command: &mut Command, procs: &[PathBuf]) -> Result<(), ExecutorError> {
    use std::os::unix::ffi::OsStrExt;
    let node = nix::unistd::getpid();
    let joins = procs
        .iter()
        .map(|procs| {
            let path = std::ffi::CString::new(procs.as_os_str().as_bytes())
                .map_err(|_| ExecutorError::Cgroup(format!("{procs:?} holds a NUL byte")))?;
            let complaint = format!("{CGROUP_JOIN_COMPLAINT}{procs:?}: ").into_bytes();
            Ok((path, complaint))
        })
        .collect::<Result<Vec<_>, ExecutorError>>()?;
    let in_child = move || -> std::io::Result<()> {
        for (procs, complaint) in &joins {
            if let Err(errno) = join_cgroup(procs) {
                let stderr = std::io::stderr();
                for part in [complaint.as_slice(), errno.desc().as_bytes(), b"\n"] {
                    let _ = nix::unistd::write(&stderr, part);
                }
                // SAFETY: ends the child at once, running nothing of the parent's.
                unsafe { nix::libc::_exit(CGROUP_JOIN_FAILED) };
            }
        }
        nix::sys::prctl::set_pdeathsig(nix::sys::signal::Signal::SIGKILL)?;
        if nix::unistd::getppid() != node {
            // SAFETY: as above.
            // The node died before the step could start: as if killed with it.
            unsafe { nix::libc::_exit(KILLED_EXIT_CODE) };
        }
        Ok(())
    };
    // SAFETY: `in_child` runs in the forked child before exec and only makes the
    // async-signal-safe calls listed above, on memory it owns; it allocates nothing (the
    // paths and messages were made above, `Errno::desc` is static, an `io::Error` from an
    // errno holds no allocation).
    unsafe {
        command.pre_exec(in_child);
    }
    Ok(())
}

/// Moves the calling process into the cgroup whose `cgroup.procs` file is `procs` (writing
/// 0 names the writer, so no pid needs formatting).
fn join_cgroup(procs: &std::ffi::CStr) -> nix::Result<()> {
    use nix::fcntl::OFlag;
    let file = nix::fcntl::open(
        procs,
        OFlag::O_WRONLY | OFlag::O_CLOEXEC,
        nix::sys::stat::Mode::empty(),
    )?;
    nix::unistd::write(&file, b"0")?;
    Ok(())
}

fn build(
    sandbox: &ProcessSandbox,
    step: &StepRun<'_>,
    cgroup_procs: &[PathBuf],
) -> Result<Command, ExecutorError> {
    if step.spec.command.is_empty() {
        return Err(ExecutorError::NoCommand);
    }
    let maps_paths = !step.binds.is_empty()
        || !step.spec.workdir.is_empty()
        || step.stdin.is_some()
        || step.stdout.is_some()
        || step.stderr.is_some();
    let bwrap = bwrap_path();
    let command = if let Some(bwrap) = bwrap {
        sandboxed(bwrap, sandbox, step)
    } else if maps_paths {
        return Err(ExecutorError::NeedsBwrap);
    } else {
        direct(step)?
    };
    let mut command = command;
    if step.die_with_node {
        die_with_node(&mut command, cgroup_procs)?;
    }
    command.env_clear();
    if bwrap.is_none() {
        // Only an unsandboxed step gets the variables in its process environment. bwrap
        // itself runs on the host before any namespace exists, so it must never see them
        // (LD_PRELOAD and the like); inside the sandbox they come from `--setenv`.
        command.envs(step_env(sandbox, step));
    } else {
        command.env("PATH", DEFAULT_PATH).env("HOME", "/tmp");
    }
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

fn kill_group(pid: Option<u32>) {
    if let Some(pid) = pid {
        let group = nix::unistd::Pid::from_raw(pid as i32);
        let _ = nix::sys::signal::killpg(group, nix::sys::signal::Signal::SIGKILL);
    }
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
    let mut command = build(sandbox, step, procs)?;
    let binds = step.binds.iter().map(|b| b.host.clone()).collect();
    let stdio = [step.stdin.clone(), step.stdout.clone(), step.stderr.clone()];
    let root = step.attempt_dir.to_path_buf();
    let files = shoal_raft::runtime::blocking(move || prepare(root, binds, stdio))
        .await
        .map_err(std::io::Error::other)??;
    match files.stdin {
        Some(file) => command.stdin(file),
        None => command.stdin(Stdio::null()),
    };
    let program = step.spec.command.first().cloned().unwrap_or_default();
    // Started directly, the program is the user's: one that cannot be started is a step
    // that failed (127 or 126), not a failure of the node. bwrap reports the program's on
    // stderr.
    let users_own = bwrap_path().is_none();
    let mut child = match command.spawn() {
        Ok(child) => child,
        Err(source) => {
            let reason = format!("{program}: {source}");
            return match start_failure_exit_code(&source.to_string()) {
                Some(code) if users_own => Ok(super::not_started(code, reason, step)),
                _ => Err(ExecutorError::Spawn { program, source }),
            };
        }
    };
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
    if let Some(reason) = cgroup_join_failure(exit_code, &stderr_tail) {
        return Err(ExecutorError::Cgroup(reason));
    }
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

/// Exit status of a step that could not join its cgroup (see `die_with_node`).
const CGROUP_JOIN_FAILED: i32 = 125;

/// What such a step says on stderr before the path and the reason.
const CGROUP_JOIN_COMPLAINT: &str = "shoal: cannot join the step's cgroup ";

/// The complaint of a step that could not join its cgroup: a failure of the node.
fn cgroup_join_failure(exit_code: i32, stderr_tail: &str) -> Option<String> {
    let line = stderr_tail.lines().rev().find(|l| !l.trim().is_empty())?;
    let reason = line.strip_prefix(CGROUP_JOIN_COMPLAINT)?;
    (exit_code == CGROUP_JOIN_FAILED).then(|| reason.to_string())
}

#[cfg(test)]
mod tests {
    use super::{ProcessSandbox, build, bwrap_path, check_beneath, die_with_node, exec_failure};
    use crate::executor::StepRun;
    use shoal_raft::job::{ExecutorSpec, Resources};
    use std::os::unix::process::ExitStatusExt;

    /// A plain command (no bwrap, whose own `--die-with-parent` would hide a missing request)
    /// made to die with the node.
    fn dying_with_node(argv: &[&str], procs: &[std::path::PathBuf]) -> std::process::Command {
        let mut command = tokio::process::Command::new(argv[0]);
        command.args(&argv[1..]);
        die_with_node(&mut command, procs).expect("die_with_node");
        command.into_std()
    }

    #[test]
    fn a_step_made_to_die_with_the_node_is_killed_when_its_starter_ends() {
        // The kernel's parent-death signal follows the thread that forked: a thread that
        // starts the step and ends stands for a node that dies.
        let mut command = dying_with_node(&["sleep", "30"], &[]);
        let started = std::time::Instant::now();
        let mut child = std::thread::spawn(move || command.spawn())
            .join()
            .expect("the starting thread")
            .expect("spawn");
        let status = child.wait().expect("wait");
        assert_eq!(status.signal(), Some(9), "{status:?}");
        assert!(started.elapsed() < std::time::Duration::from_secs(20));
    }

    #[test]
    fn a_step_that_cannot_join_its_cgroup_says_so_and_never_runs() {
        let procs = std::path::PathBuf::from("/nonexistent/shoal-step/cgroup.procs");
        let marker = std::env::temp_dir().join(format!("shoal-never-{}", std::process::id()));
        let touch = format!("touch {}", marker.display());
        let output = dying_with_node(&["sh", "-c", &touch], &[procs])
            .output()
            .expect("output");
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert_eq!(
            output.status.code(),
            Some(super::CGROUP_JOIN_FAILED),
            "{stderr}"
        );
        assert_eq!(
            super::cgroup_join_failure(super::CGROUP_JOIN_FAILED, &stderr).as_deref(),
            Some("\"/nonexistent/shoal-step/cgroup.procs\": No such file or directory"),
            "{stderr}"
        );
        assert!(!marker.exists(), "the command ran");
    }

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
        let command = build(&sandbox, &step, &[]).expect("build");
        let std = command.as_std();
        let envs: Vec<_> = std.get_envs().map(|(k, _)| k.to_owned()).collect();
        let args: Vec<String> = std
            .get_args()
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
        let join = "shoal: cannot join the step's cgroup \"/x\": Permission denied\n";
        assert!(super::cgroup_join_failure(125, join).is_some());
        assert!(super::cgroup_join_failure(1, join).is_none());
        assert_eq!(
            exec_failure(2, "bwrap: execvp x: No such file or directory\n"),
            None
        );
    }
}

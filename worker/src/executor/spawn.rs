//! Starting a step's process without copying the node's address space.
//!
//! A plain `fork` copies the node's page tables, then makes every page the node writes
//! copy-on-write until the child execs: measured at 4–5 ms of the node's CPU per step (about
//! 600 page faults), more than everything else the node does for a task. The standard library
//! avoids `fork` with `posix_spawn` only when nothing has to run between fork and exec, and a
//! step needs three things there: join its cgroups (so its limits hold from its first
//! instruction), ask the kernel to kill it when the node dies, and check that the node has not
//! died already. So this does what `posix_spawn` does inside: `clone(CLONE_VM | CLONE_VFORK)`.
//! The child borrows the node's memory on a stack of its own, and the calling thread sleeps
//! until the child has become the program (or failed to). In between, the child makes only
//! async-signal-safe calls, on data prepared before, and allocates nothing: other threads of
//! the node run on meanwhile, holding whatever locks they hold.
//!
//! The parent-death request follows the *thread* that starts the step, so steps must be
//! started from threads that live as long as the node (the runtime's workers), never from a
//! blocking-pool thread, which ends when idle.

#![allow(unsafe_code)]

use std::ffi::{CStr, CString, OsStr, OsString};
use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicI32, Ordering};

use nix::libc;
use nix::unistd::Pid;
use tokio::io::Interest;
use tokio::io::unix::AsyncFd;
use tokio::net::unix::pipe;

use super::KILLED_EXIT_CODE;

/// A program to start: what `std::process::Command` would hold for a step.
#[derive(Debug, Default)]
pub(super) struct Launch {
    /// The program: a path when it holds a slash (relative to `dir`), else looked up in the
    /// `PATH` of `env`.
    pub program: OsString,
    /// Its arguments after the program's name.
    pub args: Vec<OsString>,
    /// Its whole environment; of two values of one variable the later wins.
    pub env: Vec<(String, String)>,
    /// Its working directory; the node's when `None`.
    pub dir: Option<PathBuf>,
}

impl Launch {
    pub fn new(program: impl AsRef<OsStr>) -> Self {
        Launch {
            program: program.as_ref().to_owned(),
            ..Launch::default()
        }
    }

    pub fn arg(&mut self, arg: impl AsRef<OsStr>) -> &mut Self {
        self.args.push(arg.as_ref().to_owned());
        self
    }

    pub fn args<I: IntoIterator<Item = S>, S: AsRef<OsStr>>(&mut self, args: I) -> &mut Self {
        for arg in args {
            self.arg(arg);
        }
        self
    }
}

/// Why a step's process could not be started.
#[derive(Debug)]
pub(super) enum SpawnError {
    /// The program could not be run (missing, not executable).
    Exec(io::Error),
    /// The step could not join the cgroup whose `cgroup.procs` file this is.
    Cgroup(PathBuf, io::Error),
    /// Anything else: pipes, the clone itself, bad strings. A failure of the node.
    Other(io::Error),
}

/// How the child failed before it could become the program, told through the memory it
/// shares with the parent until then.
const FAILED_GROUP: i32 = 1;
const FAILED_DEATH_SIGNAL: i32 = 2;
const FAILED_STDIO: i32 = 3;
const FAILED_DIR: i32 = 4;
const FAILED_EXEC: i32 = 5;
/// Plus the index of the cgroup.
const FAILED_CGROUP: i32 = 16;

/// The child's stack. Its code is a few calls deep; this is many times what it needs.
const STACK_BYTES: usize = 64 * 1024;

/// A started step: its process and the pipes its output comes through.
pub(super) struct Started {
    pub child: Child,
    pub stdout: pipe::Receiver,
    pub stderr: pipe::Receiver,
}

/// A started step's process. It leads its own process group. Dropped before it was waited
/// for, the group is killed and the process reaped in the background.
pub(super) struct Child {
    pid: Pid,
    exited: AsyncFd<OwnedFd>,
    exit_code: Option<i32>,
}

impl Child {
    /// Kills the process group the step leads, unless the step was reaped already (its id
    /// may then name another's).
    pub fn kill_group(&self) {
        if self.exit_code.is_none() {
            kill_unreaped(self.pid);
        }
    }

    /// Waits for the process to end: its exit code as a shell reports it (128 + the signal
    /// for one killed by a signal).
    pub async fn wait(&mut self) -> io::Result<i32> {
        loop {
            if let Some(code) = self.try_wait()? {
                return Ok(code);
            }
            // The pid file descriptor turns readable when the process ends; checked again
            // after clearing, so an end in between is not missed.
            self.exited.readable().await?.clear_ready();
        }
    }

    fn try_wait(&mut self) -> io::Result<Option<i32>> {
        if self.exit_code.is_none() {
            self.exit_code = reap(self.pid, libc::WNOHANG)?;
        }
        Ok(self.exit_code)
    }
}

/// Reaps `pid` if it has ended (waiting for it without `WNOHANG` in `flags`): its exit code
/// as a shell reports it (128 + the signal for one killed by a signal, realtime ones too).
fn reap(pid: Pid, flags: libc::c_int) -> io::Result<Option<i32>> {
    let mut status: libc::c_int = 0;
    loop {
        // SAFETY: waits for our own child, writing only `status`.
        let reaped = unsafe { libc::waitpid(pid.as_raw(), &mut status, flags) };
        if reaped == pid.as_raw() {
            let code = if libc::WIFSIGNALED(status) {
                128 + libc::WTERMSIG(status)
            } else {
                libc::WEXITSTATUS(status)
            };
            return Ok(Some(code));
        }
        if reaped == 0 {
            return Ok(None);
        }
        let error = io::Error::last_os_error();
        if error.kind() != io::ErrorKind::Interrupted {
            return Err(error);
        }
    }
}

/// Kills the process group `pid` leads and `pid` itself (should it have left the group),
/// which must not have been reaped yet.
fn kill_unreaped(pid: Pid) {
    use nix::sys::signal::{Signal, kill, killpg};
    let _ = killpg(pid, Signal::SIGKILL);
    let _ = kill(pid, Signal::SIGKILL);
}

impl Drop for Child {
    fn drop(&mut self) {
        if self.exit_code.is_some() {
            return;
        }
        kill_unreaped(self.pid);
        if !matches!(self.try_wait(), Ok(Some(_))) {
            // Killed, it ends soon; a thread waits so it leaves no zombie behind. Without a
            // thread it stays a zombie until the node ends: better than failing here.
            let pid = self.pid;
            let _ = std::thread::Builder::new()
                .name("shoal-reap".into())
                .spawn(move || reap(pid, 0));
        }
    }
}

/// What the child reads: everything made by the parent before the clone. The failure fields
/// are the only ones written, by the child, and read by the parent once the child is gone.
struct InChild<'a> {
    program: &'a CStr,
    argv: *const *const libc::c_char,
    envp: *const *const libc::c_char,
    dir: Option<&'a CStr>,
    stdio: [RawFd; 3],
    cgroups: &'a [CString],
    /// Die with this process (the node), and not start at all if it is gone already.
    die_with: Option<libc::pid_t>,
    last_signal: libc::c_int,
    failed: AtomicI32,
    errno: AtomicI32,
}

/// The child's whole life before it becomes the program.
extern "C" fn child_main(arg: *mut libc::c_void) -> libc::c_int {
    // SAFETY: `arg` is the `InChild` on the stack of the parent's thread, which sleeps until
    // this child execs or exits (CLONE_VFORK), so it outlives every use here.
    let child = unsafe { &*arg.cast::<InChild<'_>>() };
    // SAFETY: see `InChild::run`.
    unsafe { child.run() }
}

impl InChild<'_> {
    /// SAFETY: to be called only in the child of `spawn`'s clone: it shares the parent's
    /// memory and runs only async-signal-safe calls on data made before the clone.
    unsafe fn run(&self) -> ! {
        // SAFETY: each call below is async-signal-safe and given valid pointers: the
        // `InChild`'s fields and locals of this stack.
        unsafe {
            // The node's signal handlers must never run here, in its memory: every signal
            // is blocked (by the parent, for the clone); handled ones go back to their
            // default before they are unblocked, and so does SIGPIPE, which Rust programs
            // ignore (as the standard library's spawn does). Exec would reset the handlers
            // anyway, but only after the unblocking.
            for signal in 1..=self.last_signal {
                let mut old: libc::sigaction = std::mem::zeroed();
                if libc::sigaction(signal, std::ptr::null(), &mut old) != 0 {
                    continue;
                }
                let handled =
                    old.sa_sigaction != libc::SIG_DFL && old.sa_sigaction != libc::SIG_IGN;
                if handled || signal == libc::SIGPIPE {
                    let mut default: libc::sigaction = std::mem::zeroed();
                    default.sa_sigaction = libc::SIG_DFL;
                    libc::sigaction(signal, &default, std::ptr::null_mut());
                }
            }
            if libc::setpgid(0, 0) != 0 {
                self.fail(FAILED_GROUP);
            }
            // Joined first, so everything the step starts is inside its cgroups.
            for (index, procs) in self.cgroups.iter().enumerate() {
                let failed = FAILED_CGROUP + index as i32;
                let fd = libc::open(procs.as_ptr(), libc::O_WRONLY | libc::O_CLOEXEC);
                if fd < 0 {
                    self.fail(failed);
                }
                // Writing 0 names the writer.
                if libc::write(fd, b"0".as_ptr().cast(), 1) != 1 {
                    self.fail(failed);
                }
                libc::close(fd);
            }
            if let Some(node) = self.die_with {
                let kill = libc::SIGKILL as libc::c_ulong;
                let unused: libc::c_ulong = 0;
                if libc::prctl(libc::PR_SET_PDEATHSIG, kill, unused, unused, unused) != 0 {
                    self.fail(FAILED_DEATH_SIGNAL);
                }
                if libc::getppid() != node {
                    // The node died before the request took hold: as if killed with it.
                    libc::_exit(KILLED_EXIT_CODE);
                }
            }
            // The sources are above 2 (see `above_stdio`), so none is overwritten before it
            // is copied, and each copy is inherited (dup2 clears close-on-exec).
            for (target, &fd) in (0..).zip(self.stdio.iter()) {
                if libc::dup2(fd, target) < 0 {
                    self.fail(FAILED_STDIO);
                }
            }
            if let Some(dir) = self.dir
                && libc::chdir(dir.as_ptr()) != 0
            {
                self.fail(FAILED_DIR);
            }
            let mut none: libc::sigset_t = std::mem::zeroed();
            libc::sigemptyset(&mut none);
            libc::sigprocmask(libc::SIG_SETMASK, &none, std::ptr::null_mut());
            libc::execve(self.program.as_ptr(), self.argv, self.envp);
            self.fail(FAILED_EXEC)
        }
    }

    /// Tells the parent what failed, with errno, and ends the child.
    unsafe fn fail(&self, what: i32) -> ! {
        let errno = nix::errno::Errno::last_raw();
        self.errno.store(errno, Ordering::Relaxed);
        self.failed.store(what, Ordering::Relaxed);
        // SAFETY: ends the child at once, running nothing of the parent's.
        unsafe { libc::_exit(127) }
    }
}

fn c_string(what: &str, bytes: &[u8]) -> Result<CString, SpawnError> {
    CString::new(bytes).map_err(|_| {
        let message = format!(
            "{what} holds a NUL byte: {:?}",
            String::from_utf8_lossy(bytes)
        );
        SpawnError::Other(io::Error::new(io::ErrorKind::InvalidInput, message))
    })
}

/// The file `program` names: itself when it holds a slash, else the first executable file
/// of that name in `path`, as `execvp` looks: not found is ENOENT, found only without the
/// right to run it EACCES. Relative directories in `path` are taken from `dir` (the step's
/// working directory), where the program would look.
fn resolve(program: &OsStr, path: &str, dir: Option<&Path>) -> Result<PathBuf, SpawnError> {
    if program.as_bytes().contains(&b'/') {
        return Ok(PathBuf::from(program));
    }
    let mut denied = false;
    for entry in path.split(':') {
        let file = match (entry, dir) {
            ("", Some(dir)) => dir.join(program),
            ("", None) => Path::new(".").join(program),
            (entry, Some(dir)) => dir.join(entry).join(program),
            (entry, None) => Path::new(entry).join(program),
        };
        if !file.is_file() {
            continue;
        }
        if nix::unistd::access(&file, nix::unistd::AccessFlags::X_OK).is_ok() {
            return Ok(file);
        }
        denied = true;
    }
    let errno = if denied { libc::EACCES } else { libc::ENOENT };
    Err(SpawnError::Exec(io::Error::from_raw_os_error(errno)))
}

/// `fd` itself when above 2, else a copy that is: the child copies its stdio onto 0–2 and
/// must not overwrite a source before copying it.
fn above_stdio(fd: OwnedFd) -> io::Result<OwnedFd> {
    if fd.as_raw_fd() > 2 {
        return Ok(fd);
    }
    let copy = nix::fcntl::fcntl(&fd, nix::fcntl::FcntlArg::F_DUPFD_CLOEXEC(3))?;
    // SAFETY: a new descriptor that nothing else owns.
    Ok(unsafe { OwnedFd::from_raw_fd(copy) })
}

/// A pipe for the child's output: the parent's end (close-on-exec) and the child's.
fn output_pipe() -> io::Result<(OwnedFd, OwnedFd)> {
    let (read, write) = nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC)?;
    Ok((read, above_stdio(write)?))
}

/// Starts `launch` with `stdin` (else `/dev/null`) and its output in pipes, in its own process
/// group, inside the cgroups whose `cgroup.procs` files are `cgroups`, and, when `die_with_node`,
/// killed by the kernel when the calling thread's process dies. Must be called within the
/// runtime, on a thread that lives as long as the node (see the module's documentation).
pub(super) fn spawn(
    launch: &Launch,
    stdin: Option<OwnedFd>,
    cgroups: &[PathBuf],
    die_with_node: bool,
) -> Result<Started, SpawnError> {
    // Later variables win, as with `Command::env`.
    let env: std::collections::BTreeMap<&str, &str> = launch
        .env
        .iter()
        .map(|(key, value)| (key.as_str(), value.as_str()))
        .collect();
    let search = env.get("PATH").copied().unwrap_or(super::DEFAULT_PATH);
    let program = resolve(&launch.program, search, launch.dir.as_deref())?;
    let program = c_string("the program", program.as_os_str().as_bytes())?;
    let argv = std::iter::once(&launch.program)
        .chain(&launch.args)
        .map(|arg| c_string("an argument", arg.as_bytes()))
        .collect::<Result<Vec<_>, _>>()?;
    let envp = env
        .iter()
        .map(|(key, value)| c_string("a variable", format!("{key}={value}").as_bytes()))
        .collect::<Result<Vec<_>, _>>()?;
    let dir = launch
        .dir
        .as_ref()
        .map(|dir| c_string("the working directory", dir.as_os_str().as_bytes()))
        .transpose()?;
    let cgroup_paths = cgroups
        .iter()
        .map(|procs| c_string("a cgroup", procs.as_os_str().as_bytes()))
        .collect::<Result<Vec<_>, _>>()?;
    let pointers = |strings: &[CString]| -> Vec<*const libc::c_char> {
        let mut pointers: Vec<_> = strings.iter().map(|s| s.as_ptr()).collect();
        pointers.push(std::ptr::null());
        pointers
    };
    let (argv_pointers, envp_pointers) = (pointers(&argv), pointers(&envp));

    let stdin = match stdin {
        Some(file) => file,
        None => std::fs::File::open("/dev/null")
            .map_err(SpawnError::Other)?
            .into(),
    };
    let stdin = above_stdio(stdin).map_err(SpawnError::Other)?;
    let (stdout_read, stdout_write) = output_pipe().map_err(SpawnError::Other)?;
    let (stderr_read, stderr_write) = output_pipe().map_err(SpawnError::Other)?;

    let child = InChild {
        program: &program,
        argv: argv_pointers.as_ptr(),
        envp: envp_pointers.as_ptr(),
        dir: dir.as_deref(),
        stdio: [
            stdin.as_raw_fd(),
            stdout_write.as_raw_fd(),
            stderr_write.as_raw_fd(),
        ],
        cgroups: &cgroup_paths,
        die_with: die_with_node.then(|| nix::unistd::getpid().as_raw()),
        last_signal: libc::SIGRTMAX(),
        failed: AtomicI32::new(0),
        errno: AtomicI32::new(0),
    };
    let mut stack = vec![0_u8; STACK_BYTES];
    let mut pidfd: libc::c_int = -1;
    // SAFETY: the child runs `child_main` on `stack` (its top, 16-byte aligned) with `child`,
    // both alive until the clone returns: CLONE_VFORK suspends this thread until the child
    // has exec'd or exited. Every signal is blocked across the clone, so no handler of the
    // node's runs in the child before it resets them; this thread's mask is restored after.
    let (pid, clone_error) = unsafe {
        let top = stack.as_mut_ptr().add(STACK_BYTES);
        let top = top.sub(top as usize % 16);
        let mut all: libc::sigset_t = std::mem::zeroed();
        let mut old: libc::sigset_t = std::mem::zeroed();
        libc::sigfillset(&mut all);
        libc::pthread_sigmask(libc::SIG_SETMASK, &all, &mut old);
        let flags = libc::CLONE_VM | libc::CLONE_VFORK | libc::CLONE_PIDFD | libc::SIGCHLD;
        let arg = std::ptr::from_ref(&child).cast_mut().cast::<libc::c_void>();
        let pid = libc::clone(child_main, top.cast(), flags, arg, &raw mut pidfd);
        let clone_error = io::Error::last_os_error();
        libc::pthread_sigmask(libc::SIG_SETMASK, &old, std::ptr::null_mut());
        (pid, clone_error)
    };
    drop(stack);
    if pid < 0 {
        return Err(SpawnError::Other(clone_error));
    }
    let pid = Pid::from_raw(pid);
    // SAFETY: CLONE_PIDFD stored a new descriptor for the child there.
    let pidfd = unsafe { OwnedFd::from_raw_fd(pidfd) };
    let failed = child.failed.load(Ordering::Relaxed);
    if failed != 0 {
        // It has exited: reap it.
        let _ = reap(pid, 0);
        let error = io::Error::from_raw_os_error(child.errno.load(Ordering::Relaxed));
        let context = |what: &str| io::Error::new(error.kind(), format!("{what}: {error}"));
        return Err(match failed {
            FAILED_EXEC => SpawnError::Exec(error),
            FAILED_GROUP => SpawnError::Other(context("setpgid")),
            FAILED_DEATH_SIGNAL => SpawnError::Other(context("prctl(PR_SET_PDEATHSIG)")),
            FAILED_STDIO => SpawnError::Other(context("dup2")),
            FAILED_DIR => SpawnError::Other(context("chdir")),
            cgroup => {
                let index = usize::try_from(cgroup - FAILED_CGROUP).unwrap_or(usize::MAX);
                SpawnError::Cgroup(cgroups.get(index).cloned().unwrap_or_default(), error)
            }
        });
    }
    drop((stdin, stdout_write, stderr_write));
    // SAFETY: `AsyncFd` owns the descriptor: it stays open, the same, until dropped.
    let exited = match unsafe { AsyncFd::register_with_interest(pidfd, Interest::READABLE) } {
        Ok(exited) => exited,
        Err(error) => {
            // Nothing could wait for it: it must not run.
            kill_unreaped(pid);
            let _ = reap(pid, 0);
            return Err(SpawnError::Other(io::Error::from(error)));
        }
    };
    // From here on, dropping `child` kills and reaps the process.
    let child = Child {
        pid,
        exited,
        exit_code: None,
    };
    Ok(Started {
        stdout: pipe::Receiver::from_owned_fd(stdout_read).map_err(SpawnError::Other)?,
        stderr: pipe::Receiver::from_owned_fd(stderr_read).map_err(SpawnError::Other)?,
        child,
    })
}

#[cfg(test)]
mod tests {
    use super::{Launch, SpawnError, Started, spawn};
    use tokio::io::AsyncReadExt;

    fn launch(argv: &[&str]) -> Launch {
        Launch {
            program: argv[0].into(),
            args: argv[1..].iter().map(Into::into).collect(),
            env: vec![("PATH".into(), super::super::DEFAULT_PATH.into())],
            dir: None,
        }
    }

    async fn read_all(mut stream: tokio::net::unix::pipe::Receiver) -> String {
        let mut text = String::new();
        stream.read_to_string(&mut text).await.expect("read");
        text
    }

    #[tokio::test]
    async fn a_step_gets_its_stdin_directory_environment_and_a_clean_signal_state() {
        let dir = tempfile::tempdir().expect("tempdir");
        std::fs::write(dir.path().join("in"), "from stdin").expect("write");
        let stdin = std::fs::File::open(dir.path().join("in")).expect("open");
        let script = "pwd; printenv X; cat; echo; grep -E '^Sig(Blk|Ign)' /proc/self/status; \
                      echo oops >&2; exit 3";
        let mut launch = launch(&["sh", "-c", script]);
        // Two values: the later one wins, for a program that reads the first it finds too.
        launch.env.push(("X".into(), "overridden".into()));
        launch.env.push(("X".into(), "x=1".into()));
        launch.dir = Some(dir.path().to_path_buf());
        let Started {
            mut child,
            stdout,
            stderr,
        } = spawn(&launch, Some(stdin.into()), &[], true)
            .unwrap_or_else(|e| panic!("spawn: {e:?}"));
        let (stdout, stderr, code) = tokio::join!(read_all(stdout), read_all(stderr), child.wait());
        assert_eq!(code.expect("wait"), 3);
        assert_eq!(stderr, "oops\n");
        let lines: Vec<&str> = stdout.lines().collect();
        let cwd = std::fs::canonicalize(dir.path()).expect("canonical");
        assert_eq!(lines[0], cwd.to_str().expect("utf-8"), "{stdout}");
        assert_eq!(&lines[1..3], ["x=1", "from stdin"], "{stdout}");
        // Nothing blocked, and SIGPIPE (bit 13) not ignored, as a shell would start it.
        let mask = |name: &str| {
            let line = lines.iter().find(|l| l.starts_with(name)).expect(name);
            u64::from_str_radix(line.split_whitespace().nth(1).expect("mask"), 16).expect("hex")
        };
        assert_eq!(mask("SigBlk:"), 0, "{stdout}");
        assert_eq!(mask("SigIgn:") & (1 << 12), 0, "{stdout}");
    }

    #[test]
    fn a_step_is_killed_when_the_thread_that_started_it_ends() {
        // The kernel's parent-death signal follows the thread that started the step: a
        // thread that starts one and ends stands for a node that dies.
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("runtime");
        let handle = runtime.handle().clone();
        let started = std::time::Instant::now();
        let mut child = std::thread::spawn(move || {
            let _entered = handle.enter();
            spawn(&launch(&["sleep", "30"]), None, &[], true).map_err(|e| format!("{e:?}"))
        })
        .join()
        .expect("the starting thread")
        .expect("spawn")
        .child;
        let code = runtime.block_on(child.wait()).expect("wait");
        assert_eq!(code, 128 + 9);
        assert!(started.elapsed() < std::time::Duration::from_secs(20));
    }

    #[tokio::test]
    async fn a_step_that_cannot_join_its_cgroup_never_runs() {
        let procs = std::path::PathBuf::from("/nonexistent/shoal-step/cgroup.procs");
        let marker = std::env::temp_dir().join(format!("shoal-never-{}", std::process::id()));
        let touch = format!("touch {}", marker.display());
        match spawn(
            &launch(&["sh", "-c", &touch]),
            None,
            std::slice::from_ref(&procs),
            true,
        ) {
            Err(SpawnError::Cgroup(path, error)) => {
                assert_eq!(path, procs);
                assert_eq!(error.kind(), std::io::ErrorKind::NotFound);
            }
            other => panic!("{:?}", other.map(drop)),
        }
        assert!(!marker.exists(), "the command ran");
    }

    #[tokio::test]
    async fn a_step_killed_by_any_signal_ends_as_from_a_shell() {
        for (signal, number) in [("KILL", 9), ("RTMIN", nix::libc::SIGRTMIN())] {
            let script = format!("kill -{signal} $$");
            let mut child = spawn(&launch(&["sh", "-c", &script]), None, &[], false)
                .expect("spawn")
                .child;
            assert_eq!(child.wait().await.expect("wait"), 128 + number, "{signal}");
        }
    }

    #[tokio::test]
    async fn a_program_that_cannot_be_run_is_an_exec_failure() {
        // Worded as the executor maps it to a shell's exit code (127, 126).
        let missing = spawn(&launch(&["shoal-no-such-program"]), None, &[], false);
        assert!(
            matches!(&missing, Err(SpawnError::Exec(e))
                if e.to_string().starts_with("No such file or directory")),
            "{:?}",
            missing.map(drop)
        );
        let directory = spawn(&launch(&["/"]), None, &[], false);
        assert!(
            matches!(&directory, Err(SpawnError::Exec(e)) if e.raw_os_error() == Some(13)),
            "{:?}",
            directory.map(drop)
        );
    }

    #[tokio::test]
    async fn a_dropped_step_is_killed_with_its_group() {
        let dir = tempfile::tempdir().expect("tempdir");
        let pid_file = dir.path().join("pid");
        // The shell's own child stands for what a step starts.
        let script = format!("sleep 30 & echo $! > {}; wait", pid_file.display());
        let child = spawn(&launch(&["sh", "-c", &script]), None, &[], false).expect("spawn");
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
        while !std::fs::read_to_string(&pid_file).is_ok_and(|p| p.ends_with('\n')) {
            assert!(std::time::Instant::now() < deadline, "no pid");
            tokio::time::sleep(std::time::Duration::from_millis(10)).await;
        }
        let grandchild: i32 = std::fs::read_to_string(&pid_file)
            .expect("pid")
            .trim()
            .parse()
            .expect("a pid");
        drop(child);
        let gone = || {
            !std::path::Path::new(&format!("/proc/{grandchild}")).exists()
                || std::fs::read_to_string(format!("/proc/{grandchild}/stat"))
                    .is_ok_and(|stat| stat.contains(") Z "))
        };
        while !gone() {
            assert!(std::time::Instant::now() < deadline, "the group lives on");
            tokio::time::sleep(std::time::Duration::from_millis(10)).await;
        }
    }
}

//! `shoal __exec-guard PARENT [--cgroup PROCS_FILE]… PROGRAM [ARGS…]`: how the process
//! executor starts its sandboxes. It joins the step's cgroups (its cpu and memory limits),
//! asks the kernel to kill it when its parent dies, checks that its parent is still the node
//! that started it (the node may have died before the request took hold), then becomes
//! PROGRAM — which keeps the request. So no executor outlives its node, even a
//! node killed while it was starting one. Handled before the command line is parsed, and
//! without an async runtime: nothing may run between the check and the exec.

use std::ffi::OsString;
use std::os::unix::process::CommandExt;
use std::process::ExitCode;

/// Exit status when the node was gone before the program could start (as if killed).
const PARENT_GONE: u8 = 137;

pub fn run(args: &[OsString]) -> ExitCode {
    let usage = "usage: shoal __exec-guard PARENT_PID [--cgroup PROCS_FILE]… -- PROGRAM [ARGS…]";
    let Some((parent, mut args)) = args.split_first() else {
        eprintln!("{usage}");
        return ExitCode::from(2);
    };
    // The step's cgroups, joined now so everything it starts is inside and stays inside.
    while let [flag, procs, rest @ ..] = args
        && flag == "--cgroup"
    {
        if let Err(error) = std::fs::write(procs, std::process::id().to_string()) {
            // Read by the process executor (its `CGROUP_JOIN_FAILED`): a failure of the node.
            eprintln!("__exec-guard: cannot join the step's cgroup {procs:?}: {error}");
            return ExitCode::from(125);
        }
        args = rest;
    }
    let [separator, program, rest @ ..] = args else {
        eprintln!("{usage}");
        return ExitCode::from(2);
    };
    if separator != "--" {
        eprintln!("{usage}");
        return ExitCode::from(2);
    }
    let Some(parent) = parent.to_str().and_then(|p| p.parse::<i32>().ok()) else {
        eprintln!("__exec-guard: {parent:?} is not a process id");
        return ExitCode::from(2);
    };
    if let Err(error) = nix::sys::prctl::set_pdeathsig(nix::sys::signal::Signal::SIGKILL) {
        eprintln!("__exec-guard: cannot ask to die with the node: {error}");
        return ExitCode::from(126);
    }
    if nix::unistd::getppid().as_raw() != parent {
        return ExitCode::from(PARENT_GONE);
    }
    let error = std::process::Command::new(program).args(rest).exec();
    // As a shell: 127 when the program does not exist, 126 when it cannot be run. The
    // process executor reads this line to tell the two from a program's own exit.
    eprintln!(
        "__exec-guard: cannot run {}: {error}",
        program.to_string_lossy()
    );
    match error.kind() {
        std::io::ErrorKind::NotFound => ExitCode::from(127),
        _ => ExitCode::from(126),
    }
}

//! What a node does about its previous life before it runs anything: every execution is an
//! attempt, and nothing of a previous life runs on.
//!
//! - [`clean_work_dir`]: kills the processes a previous life's attempts left (anything whose
//!   command line or working directory lies in this node's work dir) and removes their
//!   attempt directories.
//! - [`settle_previous_life`]: once the node has caught up with the log, ends the claims the
//!   log still gives it from before (`Abandon`): their attempts end `Lost` and the datums run
//!   again under the next attempt number, rather than being adopted and run a second time
//!   under the same one. Publishing claims stay: their attempt ended, their outputs are the
//!   job's, and the publisher carries on.

use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use shoal_raft::command::Command;
use shoal_raft::job::DatumState;

use crate::shared::Shared;

/// Pause between tries while the node cannot reach the log yet.
const SETTLE_RETRY: Duration = Duration::from_millis(250);

/// Whether `name` is an attempt directory's (`<26-character job id>-<index>-<attempt>`).
fn is_attempt_dir(name: &str) -> bool {
    let mut parts = name.split('-');
    let (Some(job), Some(index), Some(attempt), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return false;
    };
    let digits = |s: &str| !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit());
    job.len() == 26
        && job.bytes().all(|b| b.is_ascii_alphanumeric())
        && digits(index)
        && digits(attempt)
}

/// Kills every process whose command line names a path in `work_dir`, or whose working
/// directory is there, with its process group: executors a previous life started. Blocking.
fn kill_leftovers(work_dir: &Path) -> usize {
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return 0;
    };
    let own = std::process::id();
    let mut killed = 0;
    for entry in entries.flatten() {
        let Some(pid) = entry
            .file_name()
            .to_str()
            .and_then(|n| n.parse::<u32>().ok())
        else {
            continue;
        };
        if pid == own {
            continue;
        }
        let cmdline = std::fs::read(entry.path().join("cmdline")).unwrap_or_default();
        let names_work_dir = cmdline
            .split(|b| *b == 0)
            .filter_map(|arg| std::str::from_utf8(arg).ok())
            .any(|arg| Path::new(arg).starts_with(work_dir));
        let runs_in_work_dir =
            std::fs::read_link(entry.path().join("cwd")).is_ok_and(|cwd| cwd.starts_with(work_dir));
        if names_work_dir || runs_in_work_dir {
            let target = nix::unistd::Pid::from_raw(pid as i32);
            // Executors lead their own process group; kill the group, else the process.
            if nix::sys::signal::killpg(target, nix::sys::signal::Signal::SIGKILL).is_err() {
                let _ = nix::sys::signal::kill(target, nix::sys::signal::Signal::SIGKILL);
            }
            killed += 1;
        }
    }
    killed
}

/// Kills what a previous life left running and removes its attempt directories. Blocking:
/// call before the worker starts anything.
pub(crate) fn clean_work_dir(work_dir: &Path) {
    let work_dir = std::fs::canonicalize(work_dir).unwrap_or_else(|_| work_dir.to_path_buf());
    let killed = kill_leftovers(&work_dir);
    if killed > 0 {
        tracing::info!(killed, "killed processes of this node's previous life");
    }
    let Ok(entries) = std::fs::read_dir(&work_dir) else {
        return;
    };
    let mut removed = 0;
    for entry in entries.flatten() {
        let name = entry.file_name();
        let is_dir = entry.file_type().is_ok_and(|t| t.is_dir());
        if is_dir && name.to_str().is_some_and(is_attempt_dir) {
            match std::fs::remove_dir_all(entry.path()) {
                Ok(()) => removed += 1,
                Err(error) => {
                    tracing::warn!(path = %entry.path().display(), %error, "cannot remove an old attempt directory")
                }
            }
        }
    }
    if removed > 0 {
        tracing::info!(
            removed,
            "removed attempt directories of this node's previous life"
        );
    }
}

/// Ends the claims this node's previous life left in the log, then lets the claim watch
/// adopt claims (which from then on are only this life's). Returns when done or stopping.
pub(crate) async fn settle_previous_life(shared: &Arc<Shared>) {
    let me = shared.cluster.node_id();
    loop {
        if shared.stop.is_cancelled() {
            return;
        }
        if shared.cluster.is_ready() && shared.cluster.linearize().await.is_ok() {
            break;
        }
        tokio::time::sleep(SETTLE_RETRY).await;
    }
    let applied = shared
        .cluster
        .view()
        .applied()
        .borrow()
        .map_or(0, |id| id.index);
    let left: Vec<_> = {
        let state = shared.cluster.view().read();
        state
            .claims_of(me)
            .filter(|datum| datum.state != DatumState::Publishing)
            .filter_map(|datum| Some((datum.key, datum.claim?.fence)))
            .collect()
    };
    if !left.is_empty() {
        let count = left.len();
        let command = Command::Abandon {
            node_id: me,
            datums: left,
        };
        while let Err(error) = shared.cluster.write(command.clone()).await {
            if shared.stop.is_cancelled() {
                return;
            }
            tracing::debug!(%error, "ending the previous life's claims failed; trying again");
            tokio::time::sleep(SETTLE_RETRY).await;
        }
        tracing::info!(count, "ended the claims of this node's previous life");
    }
    shared.life_start.store(applied, Ordering::SeqCst);
}

#[cfg(test)]
mod tests {
    #[test]
    fn attempt_directories_are_recognised_by_name() {
        assert!(super::is_attempt_dir("01M8VKNNK0S2KMB8AMSKC3SMX5-12-3"));
        assert!(!super::is_attempt_dir("01M8VKNNK0S2KMB8AMSKC3SMX5-12"));
        assert!(!super::is_attempt_dir("notes-1-2"));
        assert!(!super::is_attempt_dir("01M8VKNNK0S2KMB8AMSKC3SMX5-x-3"));
    }
}

//! What a running attempt has printed so far, for clients that look while it runs: the logs
//! of its finished executors and the tails of the one running now.

use std::sync::{Arc, Mutex};

use shoal_raft::job::ExecutorLog;

use crate::tail::Tail;

fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// The output of the executor running now, written by the executor as it arrives.
pub struct LiveStep {
    start_ms: u64,
    tails: Mutex<(Tail, Tail)>,
}

impl LiveStep {
    pub fn push_stdout(&self, bytes: &[u8]) {
        lock(&self.tails).0.push(bytes);
    }

    pub fn push_stderr(&self, bytes: &[u8]) {
        lock(&self.tails).1.push(bytes);
    }
}

#[derive(Default)]
struct Logs {
    done: Vec<ExecutorLog>,
    current: Option<Arc<LiveStep>>,
}

/// One attempt's logs so far.
#[derive(Default)]
pub struct LiveAttempt {
    logs: Mutex<Logs>,
}

impl LiveAttempt {
    /// Starts recording a new executor's output.
    pub fn begin_step(&self, start_ms: u64, tail_bytes_max: usize) -> Arc<LiveStep> {
        let step = Arc::new(LiveStep {
            start_ms,
            tails: Mutex::new((Tail::new(tail_bytes_max), Tail::new(tail_bytes_max))),
        });
        lock(&self.logs).current = Some(step.clone());
        step
    }

    /// The executor ended with `log`.
    pub fn end_step(&self, log: ExecutorLog) {
        let mut logs = lock(&self.logs);
        logs.current = None;
        logs.done.push(log);
    }

    /// The executor ended without a result (a system error): it no longer runs.
    pub fn abort_step(&self) {
        lock(&self.logs).current = None;
    }

    /// The finished executors' logs, then the running one's so far (exit code 0, no end).
    pub fn snapshot(&self) -> Vec<ExecutorLog> {
        let logs = lock(&self.logs);
        let mut all = logs.done.clone();
        if let Some(step) = &logs.current {
            let tails = lock(&step.tails);
            all.push(ExecutorLog {
                exit_code: 0,
                start_ms: step.start_ms,
                end_ms: 0,
                stdout_tail: tails.0.text(),
                stderr_tail: tails.1.text(),
            });
        }
        all
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_snapshot_shows_finished_steps_then_the_running_one_so_far() {
        let attempt = LiveAttempt::default();
        let first = attempt.begin_step(1, 100);
        first.push_stdout(b"one\n");
        attempt.end_step(ExecutorLog {
            exit_code: 0,
            start_ms: 1,
            end_ms: 2,
            stdout_tail: "one\n".into(),
            stderr_tail: String::new(),
        });
        let second = attempt.begin_step(3, 100);
        second.push_stdout(b"a");
        second.push_stderr(b"warn");
        let logs = attempt.snapshot();
        assert_eq!(logs.len(), 2);
        assert_eq!(logs[0].stdout_tail, "one\n");
        assert_eq!((logs[1].stdout_tail.as_str(), logs[1].end_ms), ("a", 0));
        assert_eq!(logs[1].stderr_tail, "warn");
    }
}

//! The simulated executor: a step's command says how long it "runs" and how it exits
//! (`["sim", "<milliseconds>", "<exit code>"]`); nothing runs, time passes on the simulated
//! clock. Every execution is counted here, outside shoal, by the step's unique name, so the
//! oracle can hold the executions against the attempts shoal shows. A pipeline datum's step
//! writes `/pfs/out/<input file>.out` for each of its input files, holding the step's name,
//! so the oracle can tell which attempt's outputs were published.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures::future::BoxFuture;
use shoal_worker::executor::{ExecutorError, KILLED_EXIT_CODE};
use shoal_worker::{StepOutcome, StepRun, StepRunner};
use tokio_util::sync::CancellationToken;

use super::trace::Trace;

/// Counts executions across every node of a run (it outlives their crashes).
#[derive(Debug, Clone, Default)]
pub struct Executions {
    started: Arc<Mutex<BTreeMap<String, u32>>>,
}

impl Executions {
    fn record(&self, name: &str) {
        let mut started = self.started.lock().unwrap_or_else(|p| p.into_inner());
        *started.entry(name.to_string()).or_default() += 1;
    }

    /// How often each step (by its unique container name) started.
    pub fn counts(&self) -> BTreeMap<String, u32> {
        self.started
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }
}

#[derive(Debug)]
pub struct SimExecutor {
    executions: Executions,
    trace: TraceHandle,
}

/// `Trace` is not `Debug`; this wrapper lets the executor be.
struct TraceHandle(Trace);

impl std::fmt::Debug for TraceHandle {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Trace")
    }
}

impl SimExecutor {
    pub fn new(executions: Executions, trace: Trace) -> Arc<SimExecutor> {
        Arc::new(SimExecutor {
            executions,
            trace: TraceHandle(trace),
        })
    }
}

impl StepRunner for SimExecutor {
    fn name(&self) -> &'static str {
        "sim"
    }

    fn needs_files(&self) -> bool {
        true
    }

    fn run<'a>(
        &'a self,
        step: &'a StepRun<'_>,
        cancel: &'a CancellationToken,
    ) -> BoxFuture<'a, Result<StepOutcome, ExecutorError>> {
        Box::pin(async move {
            let command = &step.spec.command;
            let number = |i: usize| command.get(i).and_then(|v| v.parse::<u64>().ok());
            let (Some(ms), Some(exit)) = (number(1), number(2)) else {
                return Err(ExecutorError::NoCommand);
            };
            self.executions.record(&step.container_name);
            self.trace.0.event(format!("exec {}", step.container_name));
            if let Err(error) = write_outputs(step) {
                return Err(ExecutorError::Io(error));
            }
            tokio::select! {
                () = tokio::time::sleep(Duration::from_millis(ms)) => Ok(StepOutcome {
                    exit_code: exit as i32,
                    ..StepOutcome::default()
                }),
                () = cancel.cancelled() => Ok(StepOutcome {
                    exit_code: KILLED_EXIT_CODE,
                    note: Some("killed on cancel".to_string()),
                    ..StepOutcome::default()
                }),
            }
        })
    }
}

/// For a pipeline datum (its attempt has `/pfs/out`): one output per input file, named after
/// it, holding the step's unique name. (Plain std::fs: the simulation runs it inline.)
fn write_outputs(step: &StepRun<'_>) -> std::io::Result<()> {
    let pfs = step.attempt_dir.join("pfs");
    let out = pfs.join("out");
    if !out.is_dir() {
        return Ok(());
    }
    let mut inputs = Vec::new();
    for atom in std::fs::read_dir(&pfs)? {
        let atom = atom?;
        if atom.file_name() == "out" || !atom.file_type()?.is_dir() {
            continue;
        }
        for file in std::fs::read_dir(atom.path())? {
            inputs.push(file?.file_name().to_string_lossy().into_owned());
        }
    }
    inputs.sort();
    for input in inputs {
        std::fs::write(out.join(format!("{input}.out")), &step.container_name)?;
    }
    Ok(())
}

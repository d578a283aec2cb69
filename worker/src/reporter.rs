//! The reporter: sends ended attempts to the log in `CompleteBatch` entries, as many as
//! queued while the previous batch was committing, bounded in count and bytes.

use std::sync::Arc;
use std::time::Duration;

use shoal_raft::command::{Command, Completion, Outcome};
use shoal_raft::job::DatumKey;
use tokio::sync::mpsc;

use crate::pipeline;
use crate::shared::Shared;

/// Completions waiting for the reporter; attempts wait when it is full.
pub(crate) const REPORT_QUEUE_MAX: usize = 4096;

/// Most completions in one `CompleteBatch`.
const REPORT_BATCH_MAX: usize = 1024;

/// Pause before a failed report is proposed again.
const REPORT_RETRY: Duration = Duration::from_millis(200);

/// A report batch stops growing at about this many bytes of tails and file lists, so one log
/// entry stays far below the network's frame limit.
const REPORT_BATCH_BYTES_MAX: usize = 2 * 1024 * 1024;

/// Rough size of a completion in a log entry: what grows with the task.
fn report_bytes(completion: &Completion) -> usize {
    let report = &completion.report;
    let tails: usize = report
        .executors
        .iter()
        .map(|e| e.stdout_tail.len() + e.stderr_tail.len() + 64)
        .sum();
    let files: usize = report
        .outputs
        .iter()
        .map(|o| o.url.len() + o.path.len() + 16)
        .sum();
    let logs: usize = report.system_logs.iter().map(String::len).sum();
    tails + files + logs + 128
}

/// Sends completions in batches: whatever queued while the previous batch was committing.
pub(crate) async fn reporter(shared: Arc<Shared>, mut queue: mpsc::Receiver<Completion>) {
    let mut carried: Option<Completion> = None;
    loop {
        let first = match carried.take() {
            Some(completion) => completion,
            // After the flush, send what is queued and end.
            None => tokio::select! {
                next = queue.recv() => match next {
                    Some(completion) => completion,
                    None => return,
                },
                () = shared.flush.cancelled() => match queue.try_recv() {
                    Ok(completion) => completion,
                    Err(_) => return,
                },
            },
        };
        let mut bytes = report_bytes(&first);
        let mut batch = vec![first];
        while batch.len() < REPORT_BATCH_MAX && bytes < REPORT_BATCH_BYTES_MAX {
            match queue.try_recv() {
                Ok(completion) => {
                    bytes += report_bytes(&completion);
                    batch.push(completion);
                }
                Err(_) => break,
            }
        }
        if bytes > REPORT_BATCH_BYTES_MAX && batch.len() > 1 {
            carried = batch.pop();
        }
        loop {
            let command = Command::CompleteBatch {
                node_id: shared.cluster.node_id(),
                reports: batch.clone(),
            };
            match shared.cluster.write(command).await {
                Ok(outcome) => {
                    tracing::debug!(?outcome, "reported attempts");
                    if let Outcome::Reported { stale, .. } = &outcome {
                        remove_stale_staging(&shared, &batch, stale);
                    }
                    break;
                }
                Err(error) if shared.flush.is_cancelled() => {
                    // The node is stopping and the log does not answer: the claims expire
                    // and the datums run again elsewhere.
                    tracing::warn!(%error, count = batch.len(), "stopping with attempts unreported");
                    return;
                }
                Err(error) => {
                    tracing::warn!(%error, "reporting attempts failed; retrying");
                    tokio::time::sleep(REPORT_RETRY).await;
                }
            }
        }
    }
}

/// Removes what attempts whose reports came back stale staged: a zombie's outputs are never
/// published, and need not wait for their job to end to be gone.
fn remove_stale_staging(shared: &Arc<Shared>, batch: &[Completion], stale: &[DatumKey]) {
    let prefixes: Vec<String> = {
        let state = shared.cluster.view().read();
        batch
            .iter()
            .filter(|c| !c.report.outputs.is_empty() && stale.contains(&c.datum))
            .filter_map(|c| {
                let job = state.jobs.get(&c.datum.job)?;
                let datum = state.datums.get(&c.datum)?;
                let egress = &job.spec.pipeline.as_ref()?.egress_uri;
                Some(pipeline::attempt_staging(
                    egress,
                    &job.spec.id,
                    datum.id,
                    c.fence,
                ))
            })
            .collect()
    };
    for prefix in prefixes {
        let shared = shared.clone();
        shoal_raft::runtime::spawn(async move {
            match shared.resolver.delete_below(&prefix).await {
                Ok(count) => {
                    tracing::info!(%prefix, count, "removed a stale attempt's staged outputs")
                }
                Err(error) => {
                    tracing::warn!(%prefix, %error, "cannot remove a stale attempt's staged outputs")
                }
            }
        });
    }
}

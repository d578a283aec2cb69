//! The reporter: sends ended attempts to the log in `CompleteBatch` entries, as many as
//! queued while the previous batch was committing, bounded in count and bytes. It frees the
//! attempts' slots once it holds their reports, and its entry carries the claim loop's next
//! step (`claims::step_behind_report`): the `Begin`s of the queued claims that take the
//! freed slots and the claim that refills the queue. So an attempt's end is one write.

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use shoal_raft::command::{Command, Completion, Outcome};
use shoal_raft::job::DatumKey;
use tokio::sync::mpsc;

use crate::shared::Shared;
use crate::{claims, pipeline};

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
        shared.reporting.store(true, Ordering::SeqCst);
        claims::free_slot(&shared, first.datum, first.fence);
        let mut batch = vec![first];
        gather(&shared, &mut queue, &mut batch, &mut carried);
        let mut step = claims::step_behind_report(&shared);
        loop {
            let node_id = shared.cluster.node_id();
            let report = Command::CompleteBatch {
                node_id,
                reports: batch.clone(),
            };
            let command = match &step {
                Some(step) => Command::Batch(
                    std::iter::once(report)
                        .chain(step.commands(node_id))
                        .collect(),
                ),
                None => report,
            };
            match shared.cluster.write(command).await {
                Ok(outcome) => {
                    let outcome = match (outcome, step.take()) {
                        (Outcome::Batch(mut outcomes), Some(step))
                            if outcomes.len() == 1 + step.len() =>
                        {
                            step.answer(&shared, Some(&outcomes[1..]));
                            outcomes.swap_remove(0)
                        }
                        (outcome, Some(step)) => {
                            tracing::warn!(?outcome, "unexpected answer to a report and its claim");
                            step.answer(&shared, None);
                            outcome
                        }
                        (outcome, None) => outcome,
                    };
                    tracing::debug!(?outcome, "reported attempts");
                    if let Outcome::Reported { stale, .. } = &outcome {
                        remove_stale_staging(&shared, &batch, stale);
                    }
                    if carried.is_none() && queue.is_empty() {
                        claims::reporting_done(&shared);
                    }
                    break;
                }
                Err(error) => {
                    if let Some(step) = step.take() {
                        step.answer(&shared, None);
                    }
                    // The retries carry no claim step: the claim loop watches the log again.
                    claims::reporting_done(&shared);
                    if shared.flush.is_cancelled() {
                        // The node is stopping and the log does not answer: the claims expire
                        // and the datums run again elsewhere.
                        tracing::warn!(%error, count = batch.len(), "stopping with attempts unreported");
                        return;
                    }
                    tracing::warn!(%error, "reporting attempts failed; retrying");
                    tokio::time::sleep(REPORT_RETRY).await;
                    // What ended meanwhile goes with the retry, and frees its slot (a stop
                    // waits for free slots). The claim loop, watching the log again, or the
                    // next report's step begins what fits in it.
                    if carried.is_none() {
                        gather(&shared, &mut queue, &mut batch, &mut carried);
                    }
                }
            }
        }
    }
}

/// Adds what is queued to `batch`, within the batch's limits (the completion that would pass
/// the byte limit goes to `carried`), and frees the slots of what it took without waking the
/// claim loop.
fn gather(
    shared: &Shared,
    queue: &mut mpsc::Receiver<Completion>,
    batch: &mut Vec<Completion>,
    carried: &mut Option<Completion>,
) {
    let mut bytes: usize = batch.iter().map(report_bytes).sum();
    while batch.len() < REPORT_BATCH_MAX && bytes < REPORT_BATCH_BYTES_MAX {
        let Ok(completion) = queue.try_recv() else {
            break;
        };
        claims::free_slot(shared, completion.datum, completion.fence);
        bytes += report_bytes(&completion);
        batch.push(completion);
    }
    if bytes > REPORT_BATCH_BYTES_MAX && batch.len() > 1 {
        *carried = batch.pop();
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

//! The publisher: for every publishing claim this node holds — its own attempts whose
//! completion committed, or claims passed to it when their holder went silent — copies the
//! staged outputs to their final names, removes the datum's staging prefix, and reports the
//! datum `Published`.
//!
//! Woken by applied-state changes, never by a timer. At most `PUBLISHING_MAX` datums are
//! published at once; a failing datum is tried again with backoff while this node holds its
//! claim, and given up (`PublishFailed`: the datum fails, its paths free again) after
//! `PUBLISH_TRIES_MAX` tries or on a failure no retry can mend. Publishing twice is harmless:
//! the staged files are those of the attempt whose completion committed, never changed after
//! it, and a staged file already moved (by an earlier holder of the claim) counts as
//! published when its final object has its size.

use std::collections::HashSet;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use shoal_raft::command::{Command, Outcome};
use shoal_raft::job::{DatumKey, DatumState, OutputFile, format_datum_id};
use shoal_storage::StorageError;
use tokio::sync::Notify;

use crate::pipeline;
use crate::shared::{Shared, lock};

/// Datums one node publishes at once.
const PUBLISHING_MAX: usize = 16;
/// Tries of publishing one datum before it is given up (about a minute of backoff).
const PUBLISH_TRIES_MAX: u32 = 8;
/// Copies one datum runs at once.
const COPIES_IN_FLIGHT_MAX: usize = 8;
/// First pause before a failed datum is published again; doubled up to `RETRY_MAX`.
const RETRY_FIRST: Duration = Duration::from_millis(500);
const RETRY_MAX: Duration = Duration::from_secs(30);

/// What publishing one datum needs, read from the applied state.
struct Staged {
    key: DatumKey,
    /// The claim's fence now (the one `Published` must name).
    fence: u64,
    egress: String,
    job_id: String,
    datum_id: u64,
    /// The fence of the attempt that staged the files (it names their prefix).
    staged_fence: u64,
    outputs: Vec<OutputFile>,
}

pub(crate) async fn publisher(shared: Arc<Shared>) {
    let mut applied = shared.cluster.view().applied();
    let busy: Arc<Mutex<HashSet<DatumKey>>> = Arc::default();
    // Published here but maybe not applied here yet: not to be published again meanwhile.
    let done: Arc<Mutex<HashSet<(DatumKey, u64)>>> = Arc::default();
    let ended = Arc::new(Notify::new());
    loop {
        let held = held_publishing(&shared);
        lock(&done).retain(|(key, fence)| held.iter().any(|s| s.key == *key && s.fence == *fence));
        for staged in held {
            if lock(&done).contains(&(staged.key, staged.fence)) {
                continue;
            }
            let mut in_flight = lock(&busy);
            if in_flight.len() >= PUBLISHING_MAX {
                break;
            }
            if !in_flight.insert(staged.key) {
                continue;
            }
            drop(in_flight);
            let (shared, busy, done, ended) =
                (shared.clone(), busy.clone(), done.clone(), ended.clone());
            shoal_raft::runtime::spawn(async move {
                if publish_until_done(&shared, &staged).await {
                    lock(&done).insert((staged.key, staged.fence));
                }
                lock(&busy).remove(&staged.key);
                ended.notify_one();
            });
        }
        tokio::select! {
            changed = applied.changed() => if changed.is_err() { return },
            () = ended.notified() => {}
            () = shared.flush.cancelled() => return,
        }
    }
}

/// The publishing claims this node holds, with what publishing them needs.
fn held_publishing(shared: &Shared) -> Vec<Staged> {
    let state = shared.cluster.view().read();
    state
        .claims_of(shared.cluster.node_id())
        .filter(|datum| datum.state == DatumState::Publishing)
        .filter_map(|datum| {
            let job = state.jobs.get(&datum.key.job)?;
            let pipeline = job.spec.pipeline.as_ref()?;
            let attempt = datum.attempts.last()?;
            Some(Staged {
                key: datum.key,
                fence: datum.claim?.fence,
                egress: pipeline.egress_uri.clone(),
                job_id: job.spec.id.clone(),
                datum_id: datum.id,
                staged_fence: attempt.fence,
                outputs: attempt.report.as_ref()?.outputs.clone(),
            })
        })
        .collect()
}

/// Whether this node still holds the publishing claim.
fn still_held(shared: &Shared, staged: &Staged) -> bool {
    let state = shared.cluster.view().read();
    state.datums.get(&staged.key).is_some_and(|datum| {
        datum.state == DatumState::Publishing
            && datum
                .claim
                .is_some_and(|c| c.fence == staged.fence && c.node == shared.cluster.node_id())
    })
}

/// Why publishing a datum failed: worth another try, or never going to work.
enum Failure {
    Transient(String),
    Permanent(String),
}

/// Publishes until it works, the claim is lost or the node stops; gives the datum up (it
/// fails) on a permanent failure or after `PUBLISH_TRIES_MAX` tries. True once the log has
/// the datum published or failed.
async fn publish_until_done(shared: &Shared, staged: &Staged) -> bool {
    let mut pause = RETRY_FIRST;
    let mut tries = 0;
    while still_held(shared, staged) && !shared.flush.is_cancelled() {
        tries += 1;
        let reason = match publish(shared, staged).await {
            Ok(()) => return true,
            Err(Failure::Permanent(reason)) => reason,
            Err(Failure::Transient(reason)) if tries >= PUBLISH_TRIES_MAX => reason,
            Err(Failure::Transient(reason)) => {
                tracing::warn!(
                    job = %staged.job_id,
                    datum = %format_datum_id(staged.datum_id),
                    %reason,
                    "publishing outputs failed; trying again"
                );
                tokio::time::sleep(pause).await;
                pause = (pause * 2).min(RETRY_MAX);
                continue;
            }
        };
        return give_up(shared, staged, reason).await;
    }
    false
}

/// Fails the datum: what it staged is removed, nothing of it will be published.
async fn give_up(shared: &Shared, staged: &Staged, reason: String) -> bool {
    tracing::warn!(
        job = %staged.job_id,
        datum = %format_datum_id(staged.datum_id),
        %reason,
        "cannot publish the outputs; the datum fails"
    );
    let prefix = pipeline::datum_staging(&staged.egress, &staged.job_id, staged.datum_id);
    if let Err(error) = shared.resolver.delete_below(&prefix).await {
        tracing::warn!(%prefix, %error, "cannot remove a failed datum's staged outputs");
    }
    let command = Command::PublishFailed {
        node_id: shared.cluster.node_id(),
        datum: staged.key,
        fence: staged.fence,
        reason,
    };
    shared.cluster.write(command).await.is_ok()
}

async fn publish(shared: &Shared, staged: &Staged) -> Result<(), Failure> {
    let staging = pipeline::attempt_staging(
        &staged.egress,
        &staged.job_id,
        staged.datum_id,
        staged.staged_fence,
    );
    for outputs in staged.outputs.chunks(COPIES_IN_FLIGHT_MAX) {
        let copies = outputs
            .iter()
            .map(|output| copy_output(shared, &staging, &staged.egress, output));
        futures::future::try_join_all(copies).await?;
    }
    let datum_staging = pipeline::datum_staging(&staged.egress, &staged.job_id, staged.datum_id);
    shared
        .resolver
        .delete_below(&datum_staging)
        .await
        .map_err(|e| Failure::Transient(e.to_string()))?;
    let command = Command::Published {
        node_id: shared.cluster.node_id(),
        datums: vec![(staged.key, staged.fence)],
    };
    match shared.cluster.write(command).await {
        Ok(Outcome::Reported { .. }) => Ok(()),
        Ok(other) => Err(Failure::Transient(format!("unexpected answer {other:?}"))),
        Err(error) => Err(Failure::Transient(error.to_string())),
    }
}

/// Copies one staged file to its final name. A staged file gone while its final object has
/// its size was published by an earlier holder of the claim (who removes the staged files
/// only after copying them all); gone otherwise, it never will be.
async fn copy_output(
    shared: &Shared,
    staging: &str,
    egress: &str,
    output: &OutputFile,
) -> Result<(), Failure> {
    let from = shoal_storage::join_url(staging, &output.path);
    let to = pipeline::final_url(egress, &output.path);
    match shared.resolver.copy_object(&from, &to).await {
        Ok(()) => Ok(()),
        Err(StorageError::NotFound { .. }) => match shared.resolver.object_size(&to).await {
            Ok(Some(size)) if size == output.size_bytes => Ok(()),
            Ok(_) => Err(Failure::Permanent(format!(
                "the staged file {from} is gone"
            ))),
            Err(error) => Err(Failure::Transient(error.to_string())),
        },
        Err(error) if error.is_transient() => Err(Failure::Transient(error.to_string())),
        Err(error) => Err(Failure::Permanent(error.to_string())),
    }
}

//! The publisher: for every publishing claim this node holds — its own attempts whose
//! completion committed, or claims passed to it when their holder went silent — copies the
//! staged outputs to their final names, removes the datum's staging prefix, and reports the
//! datum `Published`.
//!
//! Woken by applied-state changes, never by a timer. At most `PUBLISHING_MAX` datums are
//! published at once; a failing datum is tried again with backoff for as long as this node
//! holds its claim. Publishing twice is harmless: the staged files are those of the attempt
//! whose completion committed, never changed after it, and a staged file already moved (by an
//! earlier holder of the claim) counts as published when its final object exists.

use std::collections::HashSet;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use shoal_raft::command::{Command, Outcome};
use shoal_raft::job::{DatumKey, DatumState, OutputFile};
use shoal_storage::StorageError;
use tokio::sync::Notify;

use crate::pipeline;
use crate::shared::{Shared, lock};

/// Datums one node publishes at once.
const PUBLISHING_MAX: usize = 16;
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
    let done = Arc::new(Notify::new());
    loop {
        for staged in held_publishing(&shared) {
            let mut in_flight = lock(&busy);
            if in_flight.len() >= PUBLISHING_MAX {
                break;
            }
            if !in_flight.insert(staged.key) {
                continue;
            }
            drop(in_flight);
            let (shared, busy, done) = (shared.clone(), busy.clone(), done.clone());
            tokio::spawn(async move {
                publish_until_done(&shared, &staged).await;
                lock(&busy).remove(&staged.key);
                done.notify_one();
            });
        }
        tokio::select! {
            changed = applied.changed() => if changed.is_err() { return },
            () = done.notified() => {}
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

async fn publish_until_done(shared: &Shared, staged: &Staged) {
    let mut pause = RETRY_FIRST;
    while still_held(shared, staged) && !shared.flush.is_cancelled() {
        match publish(shared, staged).await {
            Ok(()) => return,
            Err(error) => {
                tracing::warn!(
                    job = %staged.job_id,
                    datum = %shoal_raft::job::format_datum_id(staged.datum_id),
                    %error,
                    "publishing outputs failed; trying again"
                );
                tokio::time::sleep(pause).await;
                pause = (pause * 2).min(RETRY_MAX);
            }
        }
    }
}

async fn publish(shared: &Shared, staged: &Staged) -> Result<(), String> {
    let staging = pipeline::attempt_staging(
        &staged.egress,
        &staged.job_id,
        staged.datum_id,
        staged.staged_fence,
    );
    for outputs in staged.outputs.chunks(COPIES_IN_FLIGHT_MAX) {
        let copies = outputs
            .iter()
            .map(|output| copy_output(shared, &staging, &staged.egress, &output.path));
        futures::future::try_join_all(copies).await?;
    }
    let datum_staging = pipeline::datum_staging(&staged.egress, &staged.job_id, staged.datum_id);
    shared
        .resolver
        .delete_below(&datum_staging)
        .await
        .map_err(|e| e.to_string())?;
    let command = Command::Published {
        node_id: shared.cluster.node_id(),
        datums: vec![(staged.key, staged.fence)],
    };
    match shared.cluster.write(command).await {
        Ok(Outcome::Reported { .. }) => Ok(()),
        Ok(other) => Err(format!("unexpected answer {other:?}")),
        Err(error) => Err(error.to_string()),
    }
}

/// Copies one staged file to its final name; a staged file gone while its final object
/// exists was published by an earlier holder of the claim.
async fn copy_output(
    shared: &Shared,
    staging: &str,
    egress: &str,
    path: &str,
) -> Result<(), String> {
    let from = shoal_storage::join_url(staging, path);
    let to = pipeline::final_url(egress, path);
    match shared.resolver.copy_object(&from, &to).await {
        Ok(()) => Ok(()),
        Err(error @ StorageError::NotFound { .. }) => match shared.resolver.exists(&to).await {
            Ok(true) => Ok(()),
            _ => Err(error.to_string()),
        },
        Err(error) => Err(error.to_string()),
    }
}

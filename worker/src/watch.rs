//! The claim watch: on every applied entry, keeps the attempts running here in step with
//! the claims the log gives this node — stops those whose datum is canceled or whose claim was
//! lost, drops queued claims that were stolen, and adopts claims nothing here runs (a claim
//! whose answer was lost in a leader change, or one left by this node's previous life).

use std::sync::Arc;
use std::sync::atomic::Ordering;

use shoal_raft::command::Grant;
use shoal_raft::job::DatumState;

use crate::claims::{enqueue, start_attempt, start_queued};
use crate::shared::{Shared, lock};

/// Keeps the attempts running here in step with the claims the log gives this node: stops
/// those whose datum is canceled or whose claim was lost, adopts claims nothing runs.
pub(crate) async fn claim_watch(shared: Arc<Shared>) {
    let mut applied = shared.cluster.view().applied();
    loop {
        // Cancels and lost claims are still enforced while running attempts finish.
        tokio::select! {
            changed = applied.changed() => if changed.is_err() { return },
            () = shared.flush.cancelled() => return,
        }
        let applied = applied.borrow().map(|id| id.index).unwrap_or(0);
        stop_lost_attempts(&shared, applied);
        drop_lost_queued(&shared, applied);
        // While a claim is on its way its grants are not orphans, whatever the applied state
        // shows meanwhile; holding the turn, nothing claims while this starts what it adopts.
        let Ok(_turn) = shared.claim_turn.try_lock() else {
            continue;
        };
        if shared.stop.is_cancelled() {
            continue;
        }
        for grant in orphaned_claims(&shared, applied) {
            tracing::info!(
                job = grant.datum.job,
                datum = grant.datum.index,
                queued = grant.queued,
                "adopting a claim nothing runs"
            );
            if grant.queued {
                enqueue(&shared, grant);
            } else {
                start_attempt(&shared, grant);
            }
        }
        start_queued(&shared);
    }
}

pub(crate) fn stop_lost_attempts(shared: &Shared, applied: u64) {
    let me = shared.cluster.node_id();
    let state = shared.cluster.view().read();
    // An attempt whose claim this node has not applied yet cannot be judged.
    for (key, attempt) in shared.running().iter().filter(|(_, a)| a.fence <= applied) {
        let datum = state.datums.get(key);
        let held = datum
            .and_then(|d| d.claim)
            .is_some_and(|c| c.fence == attempt.fence && c.node == me);
        let canceling = datum.is_some_and(|d| d.state == DatumState::Canceling);
        if (!held || canceling) && !attempt.cancel.is_cancelled() {
            tracing::info!(
                job = key.job,
                datum = key.index,
                "stopping an attempt: canceled or claim lost"
            );
            attempt.cancel.cancel();
        }
    }
}

/// Drops queued claims this node no longer holds (stolen, canceled, expired).
pub(crate) fn drop_lost_queued(shared: &Shared, applied: u64) {
    let me = shared.cluster.node_id();
    let state = shared.cluster.view().read();
    lock(&shared.queue).retain(|grant| {
        grant.fence > applied
            || state
                .datums
                .get(&grant.datum)
                .and_then(|d| d.claim)
                .is_some_and(|c| c.fence == grant.fence && c.node == me)
    });
}

/// Claims this node holds in the applied state that no attempt here runs, queues, or has
/// just run.
pub(crate) fn orphaned_claims(shared: &Shared, applied: u64) -> Vec<Grant> {
    let state = shared.cluster.view().read();
    // Publishing claims are the publisher's: their attempt ended.
    let held: Vec<Grant> = state
        .claims_of(shared.cluster.node_id())
        .filter(|d| d.state != DatumState::Publishing)
        .filter_map(|d| {
            d.claim.map(|c| Grant {
                datum: d.key,
                fence: c.fence,
                attempt: d.attempts.len() as u32,
                queued: c.queued,
                demand: state.demand(d.key.job),
            })
        })
        .collect();
    drop(state);
    let mut finished = lock(&shared.finished);
    finished.retain(|(datum, fence)| held.iter().any(|g| g.datum == *datum && g.fence == *fence));
    let running = shared.running();
    let queue = lock(&shared.queue);
    // Claims of the previous life are ended, never adopted (see `restart`).
    let life_start = shared.life_start.load(Ordering::SeqCst);
    held.into_iter()
        .filter(|grant| {
            grant.fence > life_start
                && grant.fence <= applied
                && !finished.contains(&(grant.datum, grant.fence))
                && running
                    .get(&grant.datum)
                    .is_none_or(|r| r.fence != grant.fence)
                && !queue
                    .iter()
                    .any(|g| g.fence == grant.fence && g.datum == grant.datum)
        })
        .collect()
}

//! The claim loop: woken by applied-state changes and freed slots (never by a timer), it
//! begins queued claims while slots are free, asks the log for more work when the local state
//! holds something claimable (or, with a free slot, something to steal), and runs each grant
//! as an attempt in its own task. A task submitted on this node while a slot is free brings
//! a claim in the entry behind it (`claim_behind`), which saves the round the loop would
//! take after applying it. Ended attempts do the same (`step_behind_report`): their report
//! carries the `Begin`s of the queued claims that take their slots and the claim that refills
//! the queue, so the end of an attempt is one write, not three. One claim at a time: the
//! claim turn.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use shoal_raft::ClusterError;
use shoal_raft::cluster::Follow;
use shoal_raft::command::{CLAIM_ENDS_BATCH_FORMAT, Command, Completion, Grant, Outcome};
use shoal_raft::job::{AttemptOutcome, Capacity, DatumKey};
use tokio::sync::{OwnedMutexGuard, oneshot};
use tokio_util::sync::CancellationToken;

use crate::shared::{Running, Shared, lock};
use crate::{attempt, live};

/// Most claims a node holds in its queue beyond its free slots.
const PREFETCH_MAX: u32 = 4;

/// How many claims this node holds in its queue when work is waiting.
pub(crate) fn prefetch(shared: &Shared) -> u32 {
    shared.config.slots.min(PREFETCH_MAX)
}

/// What this node could take now, whatever is pending: datums to begin at once, datums for
/// its queue, and the capacity the running attempts leave free. Nothing while it stops,
/// drains or is not ready.
fn room_for_work(shared: &Shared) -> (u32, u32, Capacity) {
    let (running, free) = {
        let running = shared.running();
        (running.len() as u32, shared.free(&running))
    };
    let slots = shared.config.slots.saturating_sub(running);
    let queued = lock(&shared.queue).len() as u32;
    let room = prefetch(shared).saturating_sub(queued);
    if (slots == 0 && room == 0) || shared.stop.is_cancelled() || !shared.cluster.is_ready() {
        return (0, 0, free);
    }
    let me = shared.cluster.node_id();
    let state = shared.cluster.view().read();
    if state.nodes.get(&me).is_none_or(|record| record.draining) {
        return (0, 0, free);
    }
    (slots, room, free)
}

/// What this node should ask for now: datums to begin at once, datums for its queue, and
/// the capacity the running attempts leave free.
pub(crate) fn wants_work(shared: &Shared) -> (u32, u32, Capacity) {
    let (slots, room, free) = room_for_work(shared);
    if slots + room == 0 {
        return (0, 0, free);
    }
    let me = shared.cluster.node_id();
    let state = shared.cluster.view().read();
    if state.has_claimable(me, slots, room, free) {
        (slots, room, free)
    } else if slots > 0 && state.has_stealable(me, free) {
        (slots, 0, free)
    } else {
        (0, 0, free)
    }
}

/// Begins queued claims while slots are free and their demand fits in the free capacity. A
/// grant leaves the queue and takes its slot under the same locks, so the claim watch never
/// sees it in neither place. Each attempt writes its own `Begin`.
pub(crate) fn start_queued(shared: &Arc<Shared>) {
    start_queued_with(shared, None);
}

/// A queued claim begun by a caller that writes its `Begin` (a report's step), and where the
/// answer goes: true when the log accepted it.
struct CarriedBegin {
    grant: Grant,
    answer: oneshot::Sender<bool>,
}

/// [`start_queued`]; with `carried`, the `Begin`s of queued claims go there for the caller
/// to write and their attempts wait for the answer.
fn start_queued_with(shared: &Arc<Shared>, mut carried: Option<&mut Vec<CarriedBegin>>) {
    while !shared.stop.is_cancelled() {
        let (grant, cancel, live, count) = {
            // Lock order everywhere: finished, running, queue.
            let finished = lock(&shared.finished);
            let mut running = shared.running();
            if running.len() >= shared.config.slots as usize {
                return;
            }
            let free = shared.free(&running);
            // The first grant that fits and whose datum has no older attempt still stopping
            // here.
            let grant = {
                let mut queue = lock(&shared.queue);
                let next = queue.iter().position(|g| {
                    free.fits(g.demand) && running.get(&g.datum).is_none_or(|r| r.fence == g.fence)
                });
                match next.and_then(|i| queue.remove(i)) {
                    Some(grant) => grant,
                    None => return,
                }
            };
            if is_known(&finished, &running, &grant) {
                continue;
            }
            let (cancel, live) = occupy(&mut running, &grant);
            (grant, cancel, live, running.len())
        };
        shared.cluster.set_running(count as u32);
        let began = match carried.as_deref_mut() {
            Some(begins) if grant.queued => {
                let (answer, began) = oneshot::channel();
                begins.push(CarriedBegin { grant, answer });
                Some(began)
            }
            _ => None,
        };
        spawn_attempt(shared, grant, cancel, live, began);
    }
}

pub(crate) async fn claim_loop(shared: Arc<Shared>) {
    // Claims of this life are granted after the previous life's are ended.
    crate::restart::settle_previous_life(&shared).await;
    let mut applied = shared.cluster.view().applied();
    loop {
        if claim_once(&shared).await {
            continue;
        }
        loop {
            tokio::select! {
                changed = applied.changed() => {
                    if changed.is_err() {
                        return;
                    }
                    // While ended attempts are being reported, their report takes the claim
                    // step (and wakes this loop if it leaves room): waiting for the turn
                    // here would take the step from under it.
                    if !shared.reporting.load(Ordering::SeqCst) {
                        break;
                    }
                }
                () = shared.slot_freed.notified() => break,
                () = shared.stop.cancelled() => return,
            }
        }
    }
}

/// Begins queued claims, then asks the log for work if there is any for this node; true
/// when it granted some (there may be more).
async fn claim_once(shared: &Arc<Shared>) -> bool {
    let _turn = shared.claim_turn.lock().await;
    start_queued(shared);
    let (max, queue, free) = wants_work(shared);
    if max + queue == 0 {
        return false;
    }
    let claim = Command::ClaimBatch {
        node_id: shared.cluster.node_id(),
        max,
        queue,
        free,
    };
    take_grants(shared, shared.cluster.write(claim).await) > 0
}

/// A claim to write right behind a submission made on this node (the cluster's claim
/// source): with a slot free, the node takes the new work in the round that records it.
/// `None` while another claim is on its way, before the previous life's claims are ended
/// (the claim loop's first duty), or with no slot free.
pub(crate) fn claim_behind(shared: &Arc<Shared>) -> Option<Follow> {
    if shared.life_start.load(Ordering::SeqCst) == u64::MAX {
        return None;
    }
    let turn = shared.claim_turn.clone().try_lock_owned().ok()?;
    // As the claim loop does: queued claims take their slots before they are counted free.
    start_queued(shared);
    let (max, queue, free) = room_for_work(shared);
    if max == 0 {
        return None;
    }
    let (follow, answer) = Follow::new(Command::ClaimBatch {
        node_id: shared.cluster.node_id(),
        max,
        queue,
        free,
    });
    let shared = shared.clone();
    shoal_raft::runtime::spawn(async move {
        // Unanswered when the submission was never sent: nothing was claimed.
        if let Ok(answer) = answer.await {
            let granted = take_grants(&shared, answer);
            crate::metrics::worker()
                .granted_behind_submissions
                .inc_by(granted as u64);
        }
        drop(turn);
    });
    Some(follow)
}

/// What a report carries for the claim loop, written behind the completions in the report's
/// own entry: the `Begin`s of the queued claims that took the slots its attempts freed, and
/// this node's claim (last, as a claim must be). Holds the claim turn until it is answered.
pub(crate) struct Step {
    _turn: OwnedMutexGuard<()>,
    begins: Vec<CarriedBegin>,
    claim: Option<Command>,
}

/// The step a report carries, taken after its attempts' slots were freed. `None` when there
/// is nothing to begin or claim, or before the previous life's claims are ended. When
/// another claim holds the turn, or the cluster's format cannot end an entry with a claim,
/// the loop is woken to take the step (or the claim) itself.
pub(crate) fn step_behind_report(shared: &Arc<Shared>) -> Option<Step> {
    if shared.life_start.load(Ordering::SeqCst) == u64::MAX {
        return None;
    }
    let Ok(turn) = shared.claim_turn.clone().try_lock_owned() else {
        // Another claim is on its way (one behind a submission, most likely): the loop takes
        // the step once it is answered, rather than this report waiting a round for it.
        shared.slot_freed.notify_one();
        return None;
    };
    let mut begins = Vec::new();
    start_queued_with(shared, Some(&mut begins));
    let claim = if shared.cluster.view().read().format_version() >= CLAIM_ENDS_BATCH_FORMAT {
        let (max, queue, free) = wants_work(shared);
        (max + queue > 0).then(|| Command::ClaimBatch {
            node_id: shared.cluster.node_id(),
            max,
            queue,
            free,
        })
    } else {
        // The loop claims, in an entry of its own, once this step has let go of the turn.
        shared.slot_freed.notify_one();
        None
    };
    if begins.is_empty() && claim.is_none() {
        return None;
    }
    Some(Step {
        _turn: turn,
        begins,
        claim,
    })
}

impl Step {
    /// How many commands [`Step::commands`] gives.
    pub(crate) fn len(&self) -> usize {
        self.begins.len() + usize::from(self.claim.is_some())
    }

    /// The commands to write behind the report, in order, the claim last.
    pub(crate) fn commands(&self, node_id: shoal_raft::NodeId) -> Vec<Command> {
        self.begins
            .iter()
            .map(|begun| Command::Begin {
                node_id,
                datum: begun.grant.datum,
                fence: begun.grant.fence,
            })
            .chain(self.claim.clone())
            .collect()
    }

    /// Hands each `Begin`'s answer to its attempt and starts or queues what the claim
    /// granted, from the outcomes of [`Step::commands`] (`None` when the write failed: the
    /// begun claims are left to the claim watch or to lease expiry, as a failed `Begin` of
    /// an attempt's own is, and the loop is woken to claim again). Then lets go of the turn.
    pub(crate) fn answer(self, shared: &Arc<Shared>, outcomes: Option<&[Outcome]>) {
        if outcomes.is_none() {
            shared.slot_freed.notify_one();
        }
        let mut outcomes = outcomes.map(<[Outcome]>::iter);
        for begun in self.begins {
            let outcome = outcomes.as_mut().and_then(Iterator::next);
            let accepted = matches!(outcome, Some(Outcome::Reported { accepted: 1, .. }));
            if accepted {
                crate::metrics::worker().begun_behind_reports.inc();
            }
            let _ = begun.answer.send(accepted);
        }
        if self.claim.is_some() {
            let answer = match outcomes.as_mut().and_then(Iterator::next) {
                Some(outcome) => Ok(outcome.clone()),
                None => Err(shoal_raft::ClusterError::Failed(
                    "the report carrying the claim was not written".to_string(),
                )),
            };
            if take_grants(shared, answer) > 0 {
                // There may be more: the loop looks once this turn ends.
                shared.slot_freed.notify_one();
            }
        }
    }
}

/// The reporter has nothing more in hand: the claim loop goes back to watching the log, and
/// is woken now if the node has room for work (what the log applied while the reporter took
/// the claim steps may be claimable).
pub(crate) fn reporting_done(shared: &Shared) {
    shared.reporting.store(false, Ordering::SeqCst);
    let (slots, room, _) = room_for_work(shared);
    if slots + room > 0 {
        shared.slot_freed.notify_one();
    }
}

/// Starts or queues what a `ClaimBatch` granted; returns how many it granted.
fn take_grants(shared: &Arc<Shared>, answer: Result<Outcome, ClusterError>) -> usize {
    match answer {
        Ok(Outcome::Claimed { grants }) => {
            let count = grants.len();
            for grant in grants {
                // Granted while the node began to stop: nothing starts; shutdown hands the
                // whole queue back.
                if grant.queued || shared.stop.is_cancelled() {
                    enqueue(shared, grant);
                } else {
                    start_attempt(shared, grant);
                }
            }
            count
        }
        Ok(_) => 0,
        Err(error) => {
            tracing::debug!(%error, "claim failed");
            0
        }
    }
}

/// Adds a queued claim to this node's queue unless it is there, running or ran already.
pub(crate) fn enqueue(shared: &Shared, grant: Grant) {
    let finished = lock(&shared.finished);
    let running = shared.running();
    let mut queue = lock(&shared.queue);
    let known = is_known(&finished, &running, &grant)
        || queue
            .iter()
            .any(|g| g.fence == grant.fence && g.datum == grant.datum);
    if !known {
        queue.push_back(grant);
    }
}

/// Gives the queued claims back to the log so other nodes take them at once.
pub(crate) async fn hand_back_queue(shared: &Shared) {
    let queued: Vec<Grant> = lock(&shared.queue).drain(..).collect();
    if queued.is_empty() {
        return;
    }
    let command = Command::HandBack {
        node_id: shared.cluster.node_id(),
        datums: queued.iter().map(|g| (g.datum, g.fence)).collect(),
    };
    match tokio::time::timeout(Duration::from_secs(5), shared.cluster.write(command)).await {
        Ok(Ok(outcome)) => tracing::info!(?outcome, "handed back queued claims"),
        Ok(Err(error)) => tracing::warn!(%error, "handing back queued claims failed; they expire"),
        Err(_) => tracing::warn!("handing back queued claims timed out; they expire"),
    }
}

/// Runs `grant` now unless it runs or ran here already. While an older attempt of the same
/// datum is still being stopped here, the grant waits in the queue for its slot.
pub(crate) fn start_attempt(shared: &Arc<Shared>, grant: Grant) {
    let (cancel, live, count) = {
        let finished = lock(&shared.finished);
        let mut running = shared.running();
        if is_known(&finished, &running, &grant) {
            return;
        }
        if running.contains_key(&grant.datum) {
            drop((finished, running));
            enqueue(shared, grant);
            return;
        }
        let (cancel, live) = occupy(&mut running, &grant);
        (cancel, live, running.len())
    };
    shared.cluster.set_running(count as u32);
    spawn_attempt(shared, grant, cancel, live, None);
}

/// Whether `grant` runs or ran here already.
pub(crate) fn is_known(
    finished: &std::collections::HashSet<(DatumKey, u64)>,
    running: &HashMap<DatumKey, Running>,
    grant: &Grant,
) -> bool {
    running
        .get(&grant.datum)
        .is_some_and(|r| r.fence == grant.fence)
        || finished.contains(&(grant.datum, grant.fence))
}

/// Gives `grant` a slot: its cancel token and the record of its output.
pub(crate) fn occupy(
    running: &mut HashMap<DatumKey, Running>,
    grant: &Grant,
) -> (CancellationToken, Arc<live::LiveAttempt>) {
    let cancel = CancellationToken::new();
    let live = Arc::new(live::LiveAttempt::default());
    running.insert(
        grant.datum,
        Running {
            fence: grant.fence,
            demand: grant.demand,
            cancel: cancel.clone(),
            live: live.clone(),
        },
    );
    (cancel, live)
}

/// Runs an attempt that holds its slot already. A queued claim is begun first: by the
/// attempt's own write, or by the writer of `began` (a report's step), whose answer it awaits.
/// Its report goes to the reporter, which frees the slot once it has the report in hand.
pub(crate) fn spawn_attempt(
    shared: &Arc<Shared>,
    grant: Grant,
    cancel: CancellationToken,
    live: Arc<live::LiveAttempt>,
    began: Option<oneshot::Receiver<bool>>,
) {
    let shared = shared.clone();
    let span = tracing::info_span!(
        "attempt",
        job = grant.datum.job,
        datum = grant.datum.index,
        attempt = grant.attempt
    );
    let work = async move {
        if grant.queued {
            let begun = match began {
                Some(answer) => answer.await.unwrap_or(false),
                None => begin(&shared, &grant).await,
            };
            if !begun {
                release_slot(&shared, grant.datum, grant.fence);
                return;
            }
        }
        let report = attempt::run(shared.clone(), grant, cancel, live).await;
        let stopped = shared.killed_by_stop.load(Ordering::SeqCst)
            && report.outcome == AttemptOutcome::Canceled;
        lock(&shared.finished).insert((grant.datum, grant.fence));
        let completion = Completion {
            datum: grant.datum,
            fence: grant.fence,
            report,
        };
        // Sent before the slot frees: a stop that waits for free slots finds every report
        // queued.
        if stopped || shared.reports.send(completion).await.is_err() {
            release_slot(&shared, grant.datum, grant.fence);
        }
    };
    shoal_raft::runtime::spawn(tracing::Instrument::instrument(work, span));
}

/// Tells the log this node begins a queued claim; false when it was stolen meanwhile.
pub(crate) async fn begin(shared: &Shared, grant: &Grant) -> bool {
    let command = Command::Begin {
        node_id: shared.cluster.node_id(),
        datum: grant.datum,
        fence: grant.fence,
    };
    match shared.cluster.write(command).await {
        Ok(Outcome::Reported { accepted: 1, .. }) => true,
        Ok(_) => {
            tracing::debug!("a queued claim was taken by another node");
            false
        }
        Err(error) => {
            // Unknown whether it took effect: leave the claim to the claim watch (adopted
            // again if still queued here) or to lease expiry.
            tracing::warn!(%error, "beginning a queued claim failed");
            false
        }
    }
}

/// Frees the slot the attempt of `datum` under `fence` held and wakes the claim loop.
fn release_slot(shared: &Shared, datum: DatumKey, fence: u64) {
    free_slot(shared, datum, fence);
    shared.slot_freed.notify_one();
}

/// Frees the slot the attempt of `datum` under `fence` held, and tells a stop waiting for
/// idle slots; the claim loop is not woken (the reporter takes the claim step itself).
pub(crate) fn free_slot(shared: &Shared, datum: DatumKey, fence: u64) {
    let count = {
        let mut running = shared.running();
        // A newer attempt of the same datum may have taken the entry: leave it.
        if running.get(&datum).is_some_and(|r| r.fence == fence) {
            running.remove(&datum);
        }
        running.len()
    };
    shared.cluster.set_running(count as u32);
    shared.slot_ended.notify_waiters();
}

//! Datums handed to nodes: `ClaimBatch` (FIFO across jobs, parallelism, cpu and memory,
//! prefetch into the node's queue, stealing queued claims), `Begin` and `HandBack`.

use std::ops::Bound;

use super::CLAIM_BATCH_MAX;
use crate::command::{Grant, Outcome};
use crate::job::{Attempt, AttemptOutcome, Capacity, Claim, DatumKey, DatumState, JobSeq};
use crate::state::{RowKey, State};
use crate::types::NodeId;

/// What a `ClaimBatch` asking `max` to begin and `queue` to hold may grant of each: at most
/// `CLAIM_BATCH_MAX` in all, those to begin first.
fn batch_caps(max: u32, queue: u32) -> (u32, u32) {
    let now = max.min(CLAIM_BATCH_MAX);
    (now, queue.min(CLAIM_BATCH_MAX - now))
}

impl State {
    /// What one attempt of a datum of `job` takes from its node.
    pub fn demand(&self, job: JobSeq) -> Capacity {
        self.jobs
            .get(&job)
            .map(|j| j.spec.task.resources.demand())
            .unwrap_or_default()
    }

    /// The queued claim of another node that `node` would steal to begin in `free`: the last
    /// in claim order (what its holder would begin last) that fits.
    fn stealable(&self, node: NodeId, free: Capacity) -> Option<DatumKey> {
        self.queued.iter().rev().copied().find(|key| {
            self.datums
                .get(key)
                .and_then(|d| d.claim)
                .is_some_and(|c| c.node != node)
                && free.fits(self.demand(key.job))
        })
    }

    /// Whether another node holds a queued claim `node` could steal to begin in `free`.
    pub fn has_stealable(&self, node: NodeId, free: Capacity) -> bool {
        self.stealable(node, free).is_some()
    }

    /// The first pending datum at or after `cursor` of a job below its `parallelism` whose
    /// demand `fits`. Costs one step per job skipped, not one per pending datum.
    fn next_claimable(
        &self,
        mut cursor: Bound<DatumKey>,
        fits: impl Fn(Capacity) -> bool,
    ) -> Option<DatumKey> {
        loop {
            let key = self
                .pending
                .range((cursor, Bound::Unbounded))
                .next()
                .copied()?;
            let job = self.jobs.get(&key.job)?;
            let parallelism = job.spec.parallelism;
            let below_cap = parallelism == 0 || job.counts.active() < parallelism;
            if below_cap && fits(job.spec.task.resources.demand()) {
                return Some(key);
            }
            cursor = Bound::Excluded(DatumKey {
                job: key.job,
                index: u32::MAX,
            });
        }
    }

    /// Whether a `ClaimBatch` of `node` asking for `now` datums to begin in `free` and
    /// `queue` more for its queue would grant a pending datum.
    pub fn has_claimable(&self, node: NodeId, now: u32, queue: u32, free: Capacity) -> bool {
        let Some(record) = self.nodes.get(&node) else {
            return false;
        };
        let capacity = record.info.capacity;
        // The same caps as `claim_batch`, so a `true` here means a batch would grant.
        let (now, queue) = batch_caps(now, queue);
        self.next_claimable(Bound::Unbounded, |demand| {
            (now > 0 && free.fits(demand)) || (queue > 0 && capacity.fits(demand))
        })
        .is_some()
    }

    /// Whether any pending datum waits for a claim, whatever its size (the simulation's
    /// liveness check).
    pub fn has_pending(&self) -> bool {
        self.next_claimable(Bound::Unbounded, |_| true).is_some()
    }

    /// Why a pending datum of `job` cannot be claimed by any node there is: none that claims
    /// work has the cpu and memory one of its attempts asks for. `None` when some node has.
    pub fn unplaceable(&self, job: JobSeq) -> Option<String> {
        let demand = self.demand(job);
        let claiming = || self.nodes.values().filter(|n| !n.draining);
        if claiming().any(|n| n.info.capacity.fits(demand)) {
            return None;
        }
        let largest =
            claiming().max_by_key(|n| (n.info.capacity.cpu_millis, n.info.capacity.ram_bytes));
        Some(match largest {
            Some(node) => format!(
                "waiting for a node with room for {demand}: the largest node claiming work, \
                 {}, has {}",
                node.info.name, node.info.capacity
            ),
            None => format!("waiting for a node with room for {demand}: no node claims work"),
        })
    }

    /// Grants `node` up to `max` pending datums to begin now, each fitting in what is left
    /// of `free`, and up to `queue` more for its queue, each fitting the node's capacity;
    /// then, for what did not begin, steals other nodes' queued claims that fit.
    pub(in crate::state) fn claim_batch(
        &mut self,
        fence: u64,
        now_ms: u64,
        node_id: NodeId,
        ask: (u32, u32),
        mut free: Capacity,
    ) -> Outcome {
        let (max, queue) = ask;
        let Some(node) = self.nodes.get(&node_id) else {
            return Outcome::UnknownNode { node_id };
        };
        if node.draining {
            return Outcome::Claimed { grants: Vec::new() };
        }
        let capacity = node.info.capacity;
        // Asking for work is a sign of life: the grants must not expire at the next round.
        self.note_alive(node_id, now_ms);
        let (now, queue) = batch_caps(max, queue);
        let total = now + queue;
        let (mut begun, mut queued) = (0, 0);
        let mut grants = Vec::new();
        let mut cursor = Bound::Unbounded;
        while begun + queued < total {
            let begin_more = begun < now;
            let queue_more = queued < queue;
            let Some(key) = self.next_claimable(cursor, |demand| {
                (begin_more && free.fits(demand)) || (queue_more && capacity.fits(demand))
            }) else {
                break;
            };
            let demand = self.demand(key.job);
            let begin = begin_more && free.fits(demand);
            if begin {
                free = free.minus(demand);
                begun += 1;
            } else {
                queued += 1;
            }
            grants.push(self.grant(key, node_id, fence, now_ms, !begin));
            cursor = Bound::Excluded(key);
        }
        while begun < now {
            let Some(key) = self.stealable(node_id, free) else {
                break;
            };
            free = free.minus(self.demand(key.job));
            begun += 1;
            grants.push(self.steal(key, node_id, fence, now_ms));
            self.tally.steals += 1;
        }
        Outcome::Claimed { grants }
    }

    fn grant(
        &mut self,
        key: DatumKey,
        node: NodeId,
        fence: u64,
        now_ms: u64,
        queued: bool,
    ) -> Grant {
        let claim = Claim {
            node,
            fence,
            since_ms: now_ms,
            queued,
        };
        self.set_claim(key, claim);
        let datum = self
            .datums
            .get_mut(&key)
            .expect("pending index names a datum");
        let number = datum.attempts.len() as u32 + 1;
        // Room for exactly one more: a plain push would make room for four, and a job of a
        // million datums would carry three unused attempts each.
        datum.attempts.reserve_exact(1);
        datum.attempts.push(Attempt {
            number,
            node,
            fence,
            claimed_ms: now_ms,
            started_ms: None,
            ended_ms: None,
            outcome: None,
            report: None,
        });
        if let Some(job) = self.jobs.get_mut(&key.job) {
            job.started_ms.get_or_insert(now_ms);
        }
        self.set_datum_state(key, DatumState::Claimed, now_ms);
        Grant {
            datum: key,
            fence,
            attempt: number,
            queued,
            demand: self.demand(key.job),
        }
    }

    /// Takes a queued claim from its node and grants it to `node` to begin now.
    fn steal(&mut self, key: DatumKey, node: NodeId, fence: u64, now_ms: u64) -> Grant {
        self.drop_claim(key);
        self.set_claim(
            key,
            Claim {
                node,
                fence,
                since_ms: now_ms,
                queued: false,
            },
        );
        let attempt = self
            .datums
            .get_mut(&key)
            .and_then(|d| d.attempts.last_mut())
            .expect("a claimed datum has an attempt");
        attempt.node = node;
        attempt.fence = fence;
        attempt.claimed_ms = now_ms;
        let number = attempt.number;
        self.touch_job(key.job, now_ms);
        Grant {
            datum: key,
            fence,
            attempt: number,
            queued: false,
            demand: self.demand(key.job),
        }
    }

    /// A claim never begun (queued, or handed back before it started) goes back to pending
    /// as if never granted.
    pub(super) fn release_unbegun(&mut self, key: DatumKey, now_ms: u64) {
        self.drop_claim(key);
        if let Some(datum) = self.datums.get_mut(&key) {
            datum.attempts.pop();
        }
        self.set_datum_state(key, DatumState::Pending, now_ms);
    }

    pub(super) fn is_queued(&self, key: DatumKey) -> bool {
        self.queued.contains(&key)
    }

    pub(in crate::state) fn begin(&mut self, node: NodeId, key: DatumKey, fence: u64) -> Outcome {
        if !self.holds(key, fence, Some(node)) {
            return Outcome::Reported {
                accepted: 0,
                stale: vec![key],
            };
        }
        if let Some(claim) = self.datums.get_mut(&key).and_then(|d| d.claim.as_mut()) {
            claim.queued = false;
        }
        self.queued.remove(&key);
        self.dirty.insert(RowKey::Datum(key));
        Outcome::Reported {
            accepted: 1,
            stale: Vec::new(),
        }
    }

    pub(in crate::state) fn hand_back(
        &mut self,
        now_ms: u64,
        node: NodeId,
        datums: &[(DatumKey, u64)],
    ) -> Outcome {
        let mut changed = 0;
        for &(key, fence) in datums {
            // Only the holder hands back, and only what it has not begun: a queued claim, or
            // one granted as the node began to stop (still merely Claimed).
            if !self.holds(key, fence, Some(node)) {
                continue;
            }
            let Some(datum) = self.datums.get(&key) else {
                continue;
            };
            let never_started = datum.attempts.last().is_none_or(|a| a.started_ms.is_none());
            match datum.state {
                DatumState::Claimed => self.release_unbegun(key, now_ms),
                // Canceled while it waited: nothing ran, so it ends now.
                DatumState::Canceling if never_started => {
                    self.finish_attempt(key, AttemptOutcome::Canceled, None, now_ms)
                }
                _ => continue,
            }
            changed += 1;
        }
        Outcome::Changed { datums: changed }
    }

    pub(in crate::state) fn abandon(
        &mut self,
        now_ms: u64,
        node: NodeId,
        datums: &[(DatumKey, u64)],
    ) -> Outcome {
        let mut changed = 0;
        for &(key, fence) in datums {
            let publishing = self
                .datums
                .get(&key)
                .is_some_and(|d| d.state == DatumState::Publishing);
            // A publishing claim's attempt has ended already; its node publishes it.
            if !self.holds(key, fence, Some(node)) || publishing {
                continue;
            }
            if self.is_queued(key) {
                self.release_unbegun(key, now_ms);
            } else {
                self.finish_attempt(key, AttemptOutcome::Lost, None, now_ms);
            }
            changed += 1;
        }
        Outcome::Changed { datums: changed }
    }
}

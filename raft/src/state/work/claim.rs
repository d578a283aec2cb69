//! Datums handed to nodes: `ClaimBatch` (FIFO across jobs, parallelism, prefetch into the
//! node's queue, stealing queued claims), `Begin` and `HandBack`.

use std::ops::Bound;

use super::CLAIM_BATCH_MAX;
use crate::command::{Grant, Outcome};
use crate::job::{Attempt, AttemptOutcome, Claim, DatumKey, DatumState};
use crate::state::{RowKey, State};
use crate::types::NodeId;

impl State {
    /// Whether another node holds a queued claim `node` could steal.
    pub fn has_stealable(&self, node: NodeId) -> bool {
        self.queued.iter().any(|key| {
            self.datums
                .get(key)
                .and_then(|d| d.claim)
                .is_some_and(|c| c.node != node)
        })
    }

    /// The first pending datum at or after `cursor` of a job below its `parallelism`. Costs
    /// one step per job at its cap, not one per pending datum.
    fn next_claimable(&self, mut cursor: Bound<DatumKey>) -> Option<DatumKey> {
        loop {
            let key = self
                .pending
                .range((cursor, Bound::Unbounded))
                .next()
                .copied()?;
            let job = self.jobs.get(&key.job)?;
            let parallelism = job.spec.parallelism;
            if parallelism == 0 || job.counts.active() < parallelism {
                return Some(key);
            }
            cursor = Bound::Excluded(DatumKey {
                job: key.job,
                index: u32::MAX,
            });
        }
    }

    /// Whether a `ClaimBatch` would grant anything now: a pending datum of a job below its
    /// `parallelism`.
    pub fn has_claimable(&self) -> bool {
        self.next_claimable(Bound::Unbounded).is_some()
    }

    pub(in crate::state) fn claim_batch(
        &mut self,
        fence: u64,
        now_ms: u64,
        node_id: NodeId,
        max: u32,
        queue: u32,
    ) -> Outcome {
        let Some(node) = self.nodes.get(&node_id) else {
            return Outcome::UnknownNode { node_id };
        };
        if node.draining {
            return Outcome::Claimed { grants: Vec::new() };
        }
        // Asking for work is a sign of life: the grants must not expire at the next round.
        self.note_alive(node_id, now_ms);
        let now = max.min(CLAIM_BATCH_MAX) as usize;
        let total = max.saturating_add(queue).min(CLAIM_BATCH_MAX) as usize;
        let mut grants = Vec::new();
        let mut cursor = Bound::Unbounded;
        while grants.len() < total {
            let Some(key) = self.next_claimable(cursor) else {
                break;
            };
            let queued = grants.len() >= now;
            grants.push(self.grant(key, node_id, fence, now_ms, queued));
            cursor = Bound::Excluded(key);
        }
        while grants.len() < now {
            let Some(key) = self.queued.iter().rev().copied().find(|key| {
                self.datums
                    .get(key)
                    .and_then(|d| d.claim)
                    .is_some_and(|c| c.node != node_id)
            }) else {
                break;
            };
            grants.push(self.steal(key, node_id, fence, now_ms));
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

//! `ExpireLeases`: what a node silent longer than the lease held goes back or moves on.
//!
//! - A queued claim goes back to pending as if never granted.
//! - A claim whose attempt may be running ends `LeaseExpired`: the datum runs again (or fails
//!   after `LEASE_EXPIRIES_MAX` such losses).
//! - A publishing claim cannot be undone (its attempt's outputs are the job's now): it
//!   passes to the proposer, under the entry's index as fence, who publishes them.
//! - The stewardship of an open pipeline passes to the proposer too.

use crate::command::Outcome;
use crate::job::{AttemptOutcome, Claim, DatumKey, DatumState, JobSeq};
use crate::state::{RowKey, State};
use crate::types::NodeId;

impl State {
    /// Whether `node` has been silent longer than `lease_ms` at `now_ms`: since its last
    /// sign of life (a heartbeat, a claim, a report), or since the current term began if
    /// that is later. An unknown node is silent once the term is older than a lease.
    pub fn is_silent(&self, node: NodeId, now_ms: u64, lease_ms: u64) -> bool {
        let last = self
            .nodes
            .get(&node)
            .map(|n| n.last_heartbeat_ms)
            .unwrap_or(0)
            .max(self.lease_epoch_ms);
        now_ms.saturating_sub(last) > lease_ms
    }

    /// Records that `node` is alive at `now_ms` (it wrote to the log).
    pub(in crate::state) fn note_alive(&mut self, node: NodeId, now_ms: u64) {
        if let Some(record) = self.nodes.get_mut(&node)
            && record.last_heartbeat_ms < now_ms
        {
            record.last_heartbeat_ms = now_ms;
            self.dirty.insert(RowKey::Node(node));
        }
    }

    /// Open pipelines (not finished) with their steward.
    pub fn stewardships(&self) -> impl Iterator<Item = (JobSeq, NodeId)> + '_ {
        self.open_pipelines
            .iter()
            .filter_map(|seq| Some((*seq, self.jobs.get(seq)?.steward?)))
    }

    pub(in crate::state) fn expire_leases(
        &mut self,
        index: u64,
        now_ms: u64,
        lease_ms: u64,
        by: NodeId,
    ) -> Outcome {
        let silent =
            |state: &State, node: NodeId| node != by && state.is_silent(node, now_ms, lease_ms);
        let holders: Vec<NodeId> = self
            .claims
            .keys()
            .copied()
            .filter(|node| silent(self, *node))
            .collect();
        let mut changed = 0;
        for node in holders {
            let keys: Vec<DatumKey> = self
                .claims
                .get(&node)
                .into_iter()
                .flatten()
                .copied()
                .collect();
            for key in keys {
                self.expire_claim(key, index, now_ms, by);
                changed += 1;
            }
        }
        let orphans: Vec<JobSeq> = self
            .stewardships()
            .filter(|(_, steward)| silent(self, *steward))
            .map(|(seq, _)| seq)
            .collect();
        for seq in orphans {
            if let Some(job) = self.jobs.get_mut(&seq) {
                job.steward = Some(by);
                self.dirty.insert(RowKey::Job(seq));
            }
        }
        Outcome::Changed { datums: changed }
    }

    fn expire_claim(&mut self, key: DatumKey, index: u64, now_ms: u64, by: NodeId) {
        self.tally.lease_expiries += 1;
        let state = self.datums.get(&key).map(|d| d.state);
        if self.is_queued(key) {
            self.release_unbegun(key, now_ms);
        } else if state == Some(DatumState::Publishing) {
            self.drop_claim(key);
            self.set_claim(
                key,
                Claim {
                    node: by,
                    fence: index,
                    since_ms: now_ms,
                    queued: false,
                },
            );
        } else {
            self.finish_attempt(key, AttemptOutcome::LeaseExpired, None, now_ms);
        }
    }
}

//! Restoring a backup (`shoal node --restore`): the backed-up state becomes the start of a
//! new cluster on one node, which the old cluster's nodes never join.
//!
//! - Every claim of an old node is dropped, the way a node that restarts drops its own
//!   (`HandBack` and `Abandon`): a queued or never-started claim goes back to pending as if
//!   never granted, a canceled one that never started ends canceled, and an attempt that may
//!   have been running ends `Lost` (the datum runs again, or fails after `NODE_LOSSES_MAX`
//!   such losses, like any attempt lost with its node).
//! - A publishing claim cannot be undone (its outputs are the job's): it passes to the
//!   restoring node, which publishes them, under the fence it had.
//! - Open pipelines pass to the restoring node as their steward.
//! - The old registry is dropped: the new cluster's nodes register themselves.
//! - The cluster gets a new id; the term starts again, as the new log does.

use crate::job::{AttemptOutcome, Claim, DatumKey, DatumState};
use crate::state::{RowKey, State};
use crate::types::NodeId;

/// What [`State::restore_as`] changed, for the operator.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Restored {
    /// Queued or never-started claims returned to pending.
    pub returned: u64,
    /// Attempts that may have been running, ended `Lost`.
    pub lost: u64,
    /// Publishing claims passed to the restoring node.
    pub publishing: u64,
    /// Old nodes dropped from the registry.
    pub nodes_dropped: u64,
}

impl State {
    /// Makes this (backed-up) state the start of a new cluster named `cluster_id` whose first
    /// node is `by`. Times are the backup's own clock, the last time it knew.
    pub fn restore_as(&mut self, cluster_id: String, by: NodeId) -> Restored {
        let now_ms = self.clock_ms;
        let mut restored = Restored::default();
        let held: Vec<DatumKey> = self.claims.values().flatten().copied().collect();
        for key in held {
            let Some(datum) = self.datums.get(&key) else {
                continue;
            };
            let never_started = datum.attempts.last().is_none_or(|a| a.started_ms.is_none());
            match datum.state {
                DatumState::Publishing => {
                    let Some(claim) = self.drop_claim(key) else {
                        continue;
                    };
                    self.set_claim(
                        key,
                        Claim {
                            node: by,
                            since_ms: now_ms,
                            ..claim
                        },
                    );
                    restored.publishing += 1;
                }
                _ if self.is_queued(key) || datum.state == DatumState::Claimed => {
                    self.release_unbegun(key, now_ms);
                    restored.returned += 1;
                }
                DatumState::Canceling if never_started => {
                    self.finish_attempt(key, AttemptOutcome::Canceled, None, now_ms);
                    restored.returned += 1;
                }
                _ => {
                    self.finish_attempt(key, AttemptOutcome::Lost, None, now_ms);
                    restored.lost += 1;
                }
            }
        }
        let open: Vec<_> = self.open_pipelines.iter().copied().collect();
        for seq in open {
            if let Some(job) = self.jobs.get_mut(&seq) {
                job.steward = Some(by);
                self.dirty.insert(RowKey::Job(seq));
            }
        }
        let old_nodes: Vec<NodeId> = self.nodes.keys().copied().collect();
        for node in old_nodes {
            self.nodes.remove(&node);
            self.dirty.insert(RowKey::Node(node));
            restored.nodes_dropped += 1;
        }
        self.cluster_id = Some(cluster_id);
        self.dirty.insert(RowKey::ClusterId);
        self.term = 0;
        self.dirty.insert(RowKey::Clock);
        restored
    }
}

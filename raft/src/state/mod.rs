//! The replicated state and the pure function that applies log entries to it.
//!
//! [`State::apply`] does no IO and reads no clock: the time and the entry's log index come in
//! as arguments. Every change marks the rows it touched, so the store can persist exactly
//! those rows in the same redb transaction as the applied log id ([`State::take_dirty`],
//! [`State::row`]). Indexes derived from the rows (pending FIFO, claims per node, job ids)
//! are not persisted; [`State::rebuild_indexes`] recomputes them after loading.
//!
//! - this file: the state, the node registry, persistence, derived indexes.
//! - `work`: jobs, datums, claims, publishing, leases (one file per family of transitions).

mod work;

pub use work::{
    CLAIM_BATCH_MAX, DATUM_TRIES_MAX, DATUMS_PER_COMMAND_MAX, DATUMS_PER_JOB_MAX,
    LEASE_EXPIRIES_MAX, NODE_LOSSES_MAX, RETRIES_MAX, Restored,
};

use std::collections::{BTreeMap, BTreeSet};

use serde::{Deserialize, Serialize};

use crate::codec::{self, CodecError};
use crate::command::{Command, NodeInfo, Outcome, Proposal};
use crate::job::{Datum, DatumKey, DatumState, Job, JobKind, JobSeq, JobState};
use crate::types::NodeId;

/// A node as the registry knows it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NodeRecord {
    pub node_id: NodeId,
    pub info: NodeInfo,
    /// Attempts running on the node, as of its last heartbeat.
    pub running: u32,
    /// Leader time of the node's last heartbeat or registration.
    pub last_heartbeat_ms: u64,
    pub registered_ms: u64,
    /// A draining node claims no new work.
    pub draining: bool,
}

/// The key of one persisted row. Encoded as a tag byte and the big-endian key, so rows of
/// one table sort together and a snapshot can stream the whole table in key order.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum RowKey {
    ClusterId,
    Clock,
    Node(NodeId),
    Job(JobSeq),
    Datum(DatumKey),
    /// The format the cluster runs (format 5 on; absent before).
    Format,
}

const TAG_CLUSTER_ID: u8 = 0;
const TAG_NODE: u8 = 1;
const TAG_JOB: u8 = 2;
const TAG_DATUM: u8 = 3;
const TAG_CLOCK: u8 = 4;
const TAG_FORMAT: u8 = 5;

impl RowKey {
    pub fn to_bytes(self) -> Vec<u8> {
        match self {
            RowKey::ClusterId => vec![TAG_CLUSTER_ID],
            RowKey::Clock => vec![TAG_CLOCK],
            RowKey::Format => vec![TAG_FORMAT],
            RowKey::Node(node_id) => {
                let mut bytes = vec![TAG_NODE];
                bytes.extend_from_slice(&node_id.to_be_bytes());
                bytes
            }
            RowKey::Job(seq) => {
                let mut bytes = vec![TAG_JOB];
                bytes.extend_from_slice(&seq.to_be_bytes());
                bytes
            }
            RowKey::Datum(key) => {
                let mut bytes = vec![TAG_DATUM];
                bytes.extend_from_slice(&key.job.to_be_bytes());
                bytes.extend_from_slice(&key.index.to_be_bytes());
                bytes
            }
        }
    }

    pub fn from_bytes(bytes: &[u8]) -> Option<RowKey> {
        match bytes.split_first()? {
            (&TAG_CLUSTER_ID, []) => Some(RowKey::ClusterId),
            (&TAG_CLOCK, []) => Some(RowKey::Clock),
            (&TAG_FORMAT, []) => Some(RowKey::Format),
            (&TAG_NODE, rest) => Some(RowKey::Node(u64::from_be_bytes(rest.try_into().ok()?))),
            (&TAG_JOB, rest) => Some(RowKey::Job(u64::from_be_bytes(rest.try_into().ok()?))),
            (&TAG_DATUM, rest) if rest.len() == 12 => {
                let job = u64::from_be_bytes(rest[..8].try_into().ok()?);
                let index = u32::from_be_bytes(rest[8..].try_into().ok()?);
                Some(RowKey::Datum(DatumKey { job, index }))
            }
            _ => None,
        }
    }
}

/// The key of an output path in a job's output index: 64-bit FNV-1a, the same on every node
/// and in every version (a collision is checked against the owner's paths).
pub fn output_path_hash(path: &str) -> u64 {
    path.bytes().fold(0xcbf2_9ce4_8422_2325, |hash, byte| {
        (hash ^ u64::from(byte)).wrapping_mul(0x0000_0100_0000_01b3)
    })
}

/// The value of the clock row.
#[derive(Serialize, Deserialize)]
struct ClockRow {
    clock_ms: u64,
    term: u64,
    lease_epoch_ms: u64,
}

#[derive(Debug, thiserror::Error)]
pub enum RowError {
    #[error("state row has an unknown key {0:?}")]
    UnknownKey(Vec<u8>),
    #[error("state row {key:?} cannot be decoded: {source}")]
    Decode { key: RowKey, source: CodecError },
}

/// Everything the log decides. Held in memory on every node and persisted row by row.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct State {
    pub cluster_id: Option<String>,
    /// The format the cluster runs, set by `SetFormat`; 0 before any (see
    /// [`State::format_version`]).
    pub format: u8,
    /// The latest entry time applied. Jobs are stamped with it, so creation times never run
    /// backwards in log order, even when proposals are stamped out of order or a new
    /// leader's clock is behind. (Leases use each entry's own time: a clock that jumped
    /// ahead once must not freeze them.)
    pub clock_ms: u64,
    /// The Raft term of the last entry applied.
    pub term: u64,
    /// The time of the first entry of the current term: a node's lease runs from its last
    /// heartbeat or from here, whichever is later, so a new leader never counts the time
    /// before it led (when heartbeats may have been stuck on its predecessor) against anyone.
    pub lease_epoch_ms: u64,
    pub nodes: BTreeMap<NodeId, NodeRecord>,
    /// Jobs in submission order.
    pub jobs: BTreeMap<JobSeq, Job>,
    pub datums: BTreeMap<DatumKey, Datum>,
    /// Derived: external job id → sequence number.
    job_ids: BTreeMap<String, JobSeq>,
    /// Derived: (owner, idempotency key) → the job submitted with it.
    job_keys: BTreeMap<(String, String), JobSeq>,
    /// Derived: pending datums in claim order (FIFO across jobs).
    pending: BTreeSet<DatumKey>,
    /// Derived: datums each node holds a claim on.
    claims: BTreeMap<NodeId, BTreeSet<DatumKey>>,
    /// Derived: claimed datums waiting in their node's queue (stealable).
    queued: BTreeSet<DatumKey>,
    /// Derived: jobs in each state, and the state each job is filed under (listing by state).
    jobs_by_state: BTreeMap<JobState, BTreeSet<JobSeq>>,
    job_states: BTreeMap<JobSeq, JobState>,
    /// Derived: jobs carrying each tag key, and each tag (listing by tag).
    jobs_by_tag_key: BTreeMap<String, BTreeSet<JobSeq>>,
    jobs_by_tag: BTreeMap<(String, String), BTreeSet<JobSeq>>,
    /// Derived: datums by their id (stable across jobs, so one id may name several).
    datum_ids: BTreeSet<(u64, DatumKey)>,
    /// Derived: the output paths (by [`output_path_hash`]) each publishing or done datum of a
    /// pipeline owns. A path has one owner; a hash may have several (different paths).
    outputs: BTreeSet<(JobSeq, u64, DatumKey)>,
    /// Derived: open pipelines (not finished), which have a steward.
    open_pipelines: BTreeSet<JobSeq>,
    /// Derived: jobs of each kind in each state, and datums in each state (what `/metrics`
    /// shows, without walking every job). States with none are absent.
    job_counts: BTreeMap<(JobKind, JobState), u64>,
    datum_counts: BTreeMap<DatumState, u64>,
    /// Rows changed since the last [`State::take_dirty`]; not part of the state's value.
    dirty: BTreeSet<RowKey>,
    /// What this process has applied, counted for `/metrics`; not part of the state's value.
    pub tally: Tally,
}

/// Counts of events the entries applied by this process decided. Every node applies the same
/// entries, so nodes that applied the same stretch of the log agree; a restart starts again
/// at zero (Prometheus counters may reset). Not persisted, and never part of the state's
/// value: two states are equal whatever their tallies.
#[derive(Debug, Clone, Copy, Default)]
pub struct Tally {
    /// Datums granted by claims, stolen ones included.
    pub claims_granted: u64,
    /// Queued claims taken from another node's queue.
    pub steals: u64,
    /// Claims released because their node's lease expired.
    pub lease_expiries: u64,
    /// Reports (begin, start, completion, publishing, hand-back) refused for a stale fence.
    pub stale_reports: u64,
}

impl PartialEq for Tally {
    fn eq(&self, _: &Tally) -> bool {
        true
    }
}

impl Eq for Tally {}

/// Takes `n` from `key`'s count, dropping the entry at zero.
fn uncount<K: Ord>(counts: &mut BTreeMap<K, u64>, key: K, n: u64) {
    if let Some(count) = counts.get_mut(&key) {
        *count = count.saturating_sub(n);
        if *count == 0 {
            counts.remove(&key);
        }
    }
}

impl Tally {
    /// Counts the grants and stale reports of an outcome (steals and expiries are counted
    /// where they happen: an outcome does not tell them apart).
    fn count(&mut self, outcome: &Outcome) {
        match outcome {
            Outcome::Claimed { grants } => self.claims_granted += grants.len() as u64,
            Outcome::Reported { stale, .. } => self.stale_reports += stale.len() as u64,
            Outcome::Batch(outcomes) => outcomes.iter().for_each(|o| self.count(o)),
            _ => {}
        }
    }
}

impl State {
    /// Applies the entry at log `index` of Raft term `term`; the first entry of a new term
    /// restarts every node's lease (see [`State::lease_epoch_ms`]).
    pub fn apply_entry(&mut self, term: u64, index: u64, proposal: &Proposal) -> Outcome {
        if term > self.term {
            self.term = term;
            self.lease_epoch_ms = proposal.time_ms;
            self.dirty.insert(RowKey::Clock);
        }
        self.apply(index, proposal)
    }

    /// Applies the entry at log `index`. Deterministic: the same state, index and proposal
    /// give the same result. `index` becomes the fence of any claim the entry grants.
    pub fn apply(&mut self, index: u64, proposal: &Proposal) -> Outcome {
        if proposal.time_ms > self.clock_ms {
            self.clock_ms = proposal.time_ms;
            self.dirty.insert(RowKey::Clock);
        }
        let outcome = self.apply_command(index, proposal.time_ms, &proposal.command);
        self.tally.count(&outcome);
        outcome
    }

    fn apply_command(&mut self, index: u64, now_ms: u64, command: &Command) -> Outcome {
        match command {
            Command::InitCluster { cluster_id } => {
                if self.cluster_id.is_none() {
                    self.cluster_id = Some(cluster_id.clone());
                    self.dirty.insert(RowKey::ClusterId);
                }
                Outcome::Applied
            }
            Command::RegisterNode { node_id, info } => {
                let record = self.nodes.entry(*node_id).or_insert_with(|| NodeRecord {
                    node_id: *node_id,
                    info: info.clone(),
                    running: 0,
                    last_heartbeat_ms: now_ms,
                    registered_ms: now_ms,
                    draining: false,
                });
                record.info = info.clone();
                record.last_heartbeat_ms = now_ms;
                self.dirty.insert(RowKey::Node(*node_id));
                Outcome::Applied
            }
            Command::Heartbeat { node_id, running } => self.update_node(*node_id, |record| {
                record.running = *running;
                record.last_heartbeat_ms = now_ms;
            }),
            Command::DrainNode { node_id, draining } => {
                self.update_node(*node_id, |record| record.draining = *draining)
            }
            Command::RemoveNode { node_id } => {
                if self.nodes.remove(node_id).is_none() {
                    return Outcome::UnknownNode { node_id: *node_id };
                }
                self.dirty.insert(RowKey::Node(*node_id));
                Outcome::Applied
            }
            Command::SubmitJob {
                spec,
                datums,
                seal,
                steward,
            } => self.submit_job(now_ms, spec, datums, *seal, *steward),
            Command::AddDatums {
                job_id,
                node_id,
                first_index,
                datums,
                seal,
            } => self.add_datums(
                now_ms,
                work::AddDatums {
                    job_id,
                    node_id: *node_id,
                    first_index: *first_index,
                    datums,
                    seal: *seal,
                },
            ),
            Command::FailJob { job_id, reason } => self.fail_job(now_ms, job_id, reason),
            Command::CloseJob { job_id, node_id } => self.close_job(now_ms, job_id, *node_id),
            Command::Published { node_id, datums } => self.published(now_ms, *node_id, datums),
            Command::PublishFailed {
                node_id,
                datum,
                fence,
                reason,
            } => self.publish_failed(now_ms, *node_id, *datum, *fence, reason),
            Command::ClaimBatch {
                node_id,
                max,
                queue,
                free,
            } => self.claim_batch(index, now_ms, *node_id, (*max, *queue), *free),
            Command::Begin {
                node_id,
                datum,
                fence,
            } => self.begin(*node_id, *datum, *fence),
            Command::HandBack { node_id, datums } => self.hand_back(now_ms, *node_id, datums),
            Command::Abandon { node_id, datums } => self.abandon(now_ms, *node_id, datums),
            Command::Started { datum, fence } => self.started(now_ms, *datum, *fence),
            Command::CompleteBatch { node_id, reports } => {
                self.complete_batch(now_ms, *node_id, reports)
            }
            Command::CancelJob { job_id } => self.cancel_job(now_ms, job_id),
            Command::RetryFailed { job_id } => self.retry_failed(now_ms, job_id),
            Command::ExpireLeases { lease_ms, by } => {
                self.expire_leases(index, now_ms, *lease_ms, *by)
            }
            // The membership check is the state store's, which holds the membership.
            Command::SetFormat { version, .. } => {
                if *version > self.format_version() {
                    self.format = *version;
                    self.dirty.insert(RowKey::Format);
                }
                Outcome::Applied
            }
            Command::Batch(commands) => Outcome::Batch(
                commands
                    .iter()
                    .enumerate()
                    .map(|(i, command)| {
                        let allowed = if i + 1 == commands.len() {
                            command.may_end_batch(self.format_version())
                        } else {
                            command.may_share_entry()
                        };
                        if !allowed {
                            return Outcome::Refused {
                                reason: "this command cannot be batched".to_string(),
                            };
                        }
                        self.apply_command(index, now_ms, command)
                    })
                    .collect(),
            ),
        }
    }

    /// The job with external id `job_id`.
    pub fn job(&self, job_id: &str) -> Option<&Job> {
        self.job_ids.get(job_id).and_then(|seq| self.jobs.get(seq))
    }

    /// Whether no command changes job `seq` or its datums any more: the job is final and no
    /// attempt of its datums waits for a late report (one whose lease expired keeps the report
    /// its node sends when it is back). A node that has applied this may answer a read of the
    /// job from its own state: a linearizable read would return the same. Goes over every
    /// datum of the job (a task has one).
    pub fn is_final(&self, seq: JobSeq) -> bool {
        let awaits_report = |datum: &Datum| datum.attempts.iter().any(|a| a.awaits_late_report());
        self.jobs.get(&seq).is_some_and(Job::is_final) && !self.datums_of(seq).any(awaits_report)
    }

    /// Datums of job `seq`, in index order.
    pub fn datums_of(&self, seq: JobSeq) -> impl Iterator<Item = &Datum> {
        self.datums_of_from(seq, 0)
    }

    /// Datums of job `seq` from index `from` on, in index order.
    pub fn datums_of_from(&self, seq: JobSeq, from: u32) -> impl Iterator<Item = &Datum> {
        let range = DatumKey {
            job: seq,
            index: from,
        }..=DatumKey {
            job: seq,
            index: u32::MAX,
        };
        self.datums.range(range).map(|(_, datum)| datum)
    }

    /// Datums whose id is `id`, oldest job first.
    pub fn datums_with_id(&self, id: u64) -> impl Iterator<Item = &Datum> {
        let first = DatumKey { job: 0, index: 0 };
        self.datum_ids
            .range((id, first)..)
            .take_while(move |(found, _)| *found == id)
            .filter_map(|(_, key)| self.datums.get(key))
    }

    fn index_datum_id(&mut self, id: u64, key: DatumKey) {
        // Tasks' datums have no id of their own.
        if id != 0 {
            self.datum_ids.insert((id, key));
        }
    }

    /// Datums node `node_id` holds a claim on.
    pub fn claims_of(&self, node_id: NodeId) -> impl Iterator<Item = &Datum> {
        self.claims
            .get(&node_id)
            .into_iter()
            .flatten()
            .filter_map(|key| self.datums.get(key))
    }

    /// Nodes holding at least one claim.
    pub fn claim_holders(&self) -> impl Iterator<Item = NodeId> + '_ {
        self.claims.keys().copied()
    }

    /// How many datums wait to be claimed.
    #[cfg(test)]
    pub fn pending_count(&self) -> usize {
        self.pending.len()
    }

    /// Jobs (newest first, below sequence number `before`) in one of `states`.
    pub fn jobs_in_states_before(
        &self,
        states: &[JobState],
        before: JobSeq,
    ) -> impl Iterator<Item = JobSeq> + '_ {
        let mut lists: Vec<std::iter::Peekable<_>> = states
            .iter()
            .filter_map(|state| self.jobs_by_state.get(state))
            .map(|seqs| seqs.range(..before).rev().copied().peekable())
            .collect();
        // Merge the lists, newest first.
        std::iter::from_fn(move || {
            let (best, _) = lists
                .iter_mut()
                .enumerate()
                .filter_map(|(i, list)| list.peek().map(|seq| (i, *seq)))
                .max_by_key(|(_, seq)| *seq)?;
            lists[best].next()
        })
    }

    /// Jobs (newest first, below sequence number `before`) tagged `key`, with `value` when
    /// given.
    pub fn jobs_tagged_before<'a>(
        &'a self,
        key: &str,
        value: Option<&str>,
        before: JobSeq,
    ) -> impl Iterator<Item = JobSeq> + 'a {
        let seqs = match value {
            Some(value) => self.jobs_by_tag.get(&(key.to_string(), value.to_string())),
            None => self.jobs_by_tag_key.get(key),
        };
        seqs.into_iter()
            .flat_map(move |seqs| seqs.range(..before).rev().copied())
    }

    /// Files the job under its current state in `jobs_by_state` (and among the open
    /// pipelines).
    fn index_job_state(&mut self, seq: JobSeq) {
        let Some(job) = self.jobs.get(&seq) else {
            return;
        };
        let state = job.state();
        if job.spec.kind == crate::job::JobKind::Pipeline && !job.finished() {
            self.open_pipelines.insert(seq);
        } else {
            self.open_pipelines.remove(&seq);
        }
        let kind = job.spec.kind;
        let old = self.job_states.insert(seq, state);
        if old == Some(state) {
            return;
        }
        if let Some(old) = old {
            uncount(&mut self.job_counts, (kind, old), 1);
            if let Some(seqs) = self.jobs_by_state.get_mut(&old) {
                seqs.remove(&seq);
                if seqs.is_empty() {
                    self.jobs_by_state.remove(&old);
                }
            }
        }
        *self.job_counts.entry((kind, state)).or_default() += 1;
        self.jobs_by_state.entry(state).or_default().insert(seq);
    }

    /// How many jobs of each kind are in each state (states with none absent).
    pub fn job_counts(&self) -> &BTreeMap<(JobKind, JobState), u64> {
        &self.job_counts
    }

    /// How many datums are in each state, over every job (states with none absent).
    pub fn datum_counts(&self) -> &BTreeMap<DatumState, u64> {
        &self.datum_counts
    }

    /// Counts `n` datums more in `state`.
    pub(crate) fn count_datums(&mut self, state: DatumState, n: u64) {
        if n > 0 {
            *self.datum_counts.entry(state).or_default() += n;
        }
    }

    /// Counts one datum moving from `old` to `new`.
    pub(crate) fn recount_datum(&mut self, old: DatumState, new: DatumState) {
        uncount(&mut self.datum_counts, old, 1);
        self.count_datums(new, 1);
    }

    /// Files a new job under its tags.
    fn index_job_tags(&mut self, seq: JobSeq) {
        let Some(job) = self.jobs.get(&seq) else {
            return;
        };
        for (key, value) in &job.spec.tags {
            self.jobs_by_tag_key
                .entry(key.clone())
                .or_default()
                .insert(seq);
            self.jobs_by_tag
                .entry((key.clone(), value.clone()))
                .or_default()
                .insert(seq);
        }
    }

    /// Recomputes the derived indexes from jobs and datums (after loading rows).
    pub fn rebuild_indexes(&mut self) {
        self.job_ids = self
            .jobs
            .values()
            .map(|job| (job.spec.id.clone(), job.seq))
            .collect();
        self.job_keys = self
            .jobs
            .values()
            .filter_map(|job| {
                let key = job.spec.idempotency.as_ref()?.key.clone();
                Some(((job.spec.owner.clone(), key), job.seq))
            })
            .collect();
        self.pending.clear();
        self.claims.clear();
        self.queued.clear();
        self.jobs_by_state.clear();
        self.job_states.clear();
        self.jobs_by_tag_key.clear();
        self.jobs_by_tag.clear();
        self.datum_ids.clear();
        self.outputs.clear();
        self.open_pipelines.clear();
        self.job_counts.clear();
        self.datum_counts.clear();
        for job in self.jobs.values() {
            for state in DatumState::ALL {
                *self.datum_counts.entry(state).or_default() += u64::from(job.counts.get(state));
            }
        }
        self.datum_counts.retain(|_, n| *n > 0);
        let seqs: Vec<JobSeq> = self.jobs.keys().copied().collect();
        for seq in seqs {
            self.index_job_state(seq);
            self.index_job_tags(seq);
        }
        for (key, datum) in &self.datums {
            if datum.state == crate::job::DatumState::Pending {
                self.pending.insert(*key);
            }
            if datum.id != 0 {
                self.datum_ids.insert((datum.id, *key));
            }
            if matches!(
                datum.state,
                crate::job::DatumState::Publishing | crate::job::DatumState::Done
            ) && self
                .jobs
                .get(&key.job)
                .is_some_and(|j| j.spec.pipeline.is_some())
            {
                let report = datum.attempts.last().and_then(|a| a.report.as_ref());
                for output in report.into_iter().flat_map(|r| &r.outputs) {
                    self.outputs
                        .insert((key.job, output_path_hash(&output.path), *key));
                }
            }
            if let Some(claim) = datum.claim {
                self.claims.entry(claim.node).or_default().insert(*key);
                if claim.queued {
                    self.queued.insert(*key);
                }
            }
        }
    }

    fn update_node(&mut self, node_id: NodeId, change: impl FnOnce(&mut NodeRecord)) -> Outcome {
        let Some(record) = self.nodes.get_mut(&node_id) else {
            return Outcome::UnknownNode { node_id };
        };
        change(record);
        self.dirty.insert(RowKey::Node(node_id));
        Outcome::Applied
    }

    /// How many rows changed since the last [`State::take_dirty`].
    pub fn dirty_rows(&self) -> usize {
        self.dirty.len()
    }

    /// Marks `keys` as changed again (their write failed).
    pub fn restore_dirty(&mut self, keys: BTreeSet<RowKey>) {
        self.dirty.extend(keys);
    }

    /// The rows changed since the last call, in key order.
    pub fn take_dirty(&mut self) -> BTreeSet<RowKey> {
        std::mem::take(&mut self.dirty)
    }

    /// The format the cluster runs: the one set last, or the oldest this build reads when
    /// none was set (a cluster formed before format 5).
    pub fn format_version(&self) -> u8 {
        self.format.max(codec::FORMAT_VERSION_MIN)
    }

    /// The key of every row the state has, in key order (what a full write of it holds).
    pub fn row_keys(&self) -> impl Iterator<Item = RowKey> + '_ {
        let cluster_id = self.cluster_id.as_ref().map(|_| RowKey::ClusterId);
        cluster_id
            .into_iter()
            .chain(self.nodes.keys().map(|id| RowKey::Node(*id)))
            .chain(self.jobs.keys().map(|seq| RowKey::Job(*seq)))
            .chain(self.datums.keys().map(|key| RowKey::Datum(*key)))
            .chain(std::iter::once(RowKey::Clock))
            .chain((self.format != 0).then_some(RowKey::Format))
    }

    /// The encoded value of a row, or `None` when the row no longer exists.
    pub fn row(&self, key: RowKey) -> Result<Option<Vec<u8>>, CodecError> {
        match key {
            RowKey::ClusterId => self.cluster_id.as_ref().map(codec::encode).transpose(),
            RowKey::Clock => Some(codec::encode(&ClockRow {
                clock_ms: self.clock_ms,
                term: self.term,
                lease_epoch_ms: self.lease_epoch_ms,
            }))
            .transpose(),
            RowKey::Format => (self.format != 0)
                .then(|| codec::encode(&self.format))
                .transpose(),
            RowKey::Node(node_id) => self.nodes.get(&node_id).map(codec::encode).transpose(),
            RowKey::Job(seq) => self.jobs.get(&seq).map(codec::encode).transpose(),
            RowKey::Datum(key) => self.datums.get(&key).map(codec::encode).transpose(),
        }
    }

    /// Rebuilds the state from persisted rows (any order). The stores load row by row from
    /// redb (`load_row`, then `rebuild_indexes`); this is the same for tests.
    #[cfg(test)]
    pub fn from_rows<'a>(
        rows: impl IntoIterator<Item = (&'a [u8], &'a [u8])>,
    ) -> Result<State, RowError> {
        let mut state = State::default();
        for (key_bytes, value) in rows {
            state.load_row(key_bytes, value)?;
        }
        state.rebuild_indexes();
        Ok(state)
    }

    /// Loads one persisted row into the state without marking it dirty.
    pub fn load_row(&mut self, key_bytes: &[u8], value: &[u8]) -> Result<(), RowError> {
        let key = RowKey::from_bytes(key_bytes)
            .ok_or_else(|| RowError::UnknownKey(key_bytes.to_vec()))?;
        let decode_error = |source| RowError::Decode { key, source };
        match key {
            RowKey::ClusterId => {
                self.cluster_id = Some(codec::decode(value).map_err(decode_error)?)
            }
            RowKey::Clock => {
                let clock: ClockRow = codec::decode(value).map_err(decode_error)?;
                self.clock_ms = clock.clock_ms;
                self.term = clock.term;
                self.lease_epoch_ms = clock.lease_epoch_ms;
            }
            RowKey::Format => self.format = codec::decode(value).map_err(decode_error)?,
            RowKey::Node(node_id) => {
                self.nodes
                    .insert(node_id, codec::decode(value).map_err(decode_error)?);
            }
            RowKey::Job(seq) => {
                self.jobs
                    .insert(seq, codec::decode(value).map_err(decode_error)?);
            }
            RowKey::Datum(key) => {
                self.datums
                    .insert(key, codec::decode(value).map_err(decode_error)?);
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn info(name: &str) -> NodeInfo {
        NodeInfo {
            name: name.to_string(),
            peer_id: format!("peer-{name}"),
            http_url: "http://127.0.0.1:8000".to_string(),
            p2p_addrs: vec!["/ip4/127.0.0.1/tcp/7000".to_string()],
            slots: 2,
            executor: "process".to_string(),
            capacity: crate::job::Capacity::default(),
        }
    }

    fn at(time_ms: u64, command: Command) -> Proposal {
        Proposal { time_ms, command }
    }

    #[test]
    fn register_heartbeat_drain_remove_walk_a_node_through_the_registry() {
        let mut state = State::default();
        let register = Command::RegisterNode {
            node_id: 7,
            info: info("n1"),
        };
        assert_eq!(state.apply(0, &at(100, register)), Outcome::Applied);
        assert_eq!(state.nodes[&7].registered_ms, 100);

        let beat = Command::Heartbeat {
            node_id: 7,
            running: 3,
        };
        assert_eq!(state.apply(0, &at(250, beat)), Outcome::Applied);
        assert_eq!(
            (state.nodes[&7].running, state.nodes[&7].last_heartbeat_ms),
            (3, 250)
        );

        let drain = Command::DrainNode {
            node_id: 7,
            draining: true,
        };
        assert_eq!(state.apply(0, &at(260, drain)), Outcome::Applied);
        assert!(state.nodes[&7].draining);

        // Re-registering (a restart) keeps the drain flag and the first registration time.
        let again = Command::RegisterNode {
            node_id: 7,
            info: info("n1"),
        };
        state.apply(0, &at(300, again));
        assert!(state.nodes[&7].draining);
        assert_eq!(state.nodes[&7].registered_ms, 100);

        assert_eq!(
            state.apply(0, &at(400, Command::RemoveNode { node_id: 7 })),
            Outcome::Applied
        );
        assert!(state.nodes.is_empty());
    }

    #[test]
    fn commands_for_unknown_nodes_are_refused_and_change_nothing() {
        let mut state = State::default();
        for command in [
            Command::Heartbeat {
                node_id: 9,
                running: 1,
            },
            Command::DrainNode {
                node_id: 9,
                draining: true,
            },
            Command::RemoveNode { node_id: 9 },
        ] {
            assert_eq!(
                state.apply(0, &at(1, command)),
                Outcome::UnknownNode { node_id: 9 }
            );
        }
        let only_the_clock_moved = State {
            clock_ms: 1,
            ..State::default()
        };
        assert_eq!(state.take_dirty(), BTreeSet::from([RowKey::Clock]));
        assert_eq!(state, only_the_clock_moved);
    }

    #[test]
    fn the_clock_never_runs_backwards() {
        let mut state = State::default();
        state.apply(
            0,
            &at(
                50,
                Command::Heartbeat {
                    node_id: 9,
                    running: 0,
                },
            ),
        );
        state.apply(
            0,
            &at(
                20,
                Command::Heartbeat {
                    node_id: 9,
                    running: 0,
                },
            ),
        );
        assert_eq!(
            state.clock_ms, 50,
            "an entry stamped earlier leaves the clock as it is"
        );
    }

    #[test]
    fn only_the_first_cluster_id_counts() {
        let mut state = State::default();
        state.apply(
            0,
            &at(
                1,
                Command::InitCluster {
                    cluster_id: "a".into(),
                },
            ),
        );
        state.apply(
            0,
            &at(
                2,
                Command::InitCluster {
                    cluster_id: "b".into(),
                },
            ),
        );
        assert_eq!(state.cluster_id.as_deref(), Some("a"));
    }

    #[test]
    fn the_format_only_moves_up_and_survives_a_reload() {
        let mut state = State::default();
        assert_eq!(
            state.format_version(),
            codec::FORMAT_VERSION_MIN,
            "unset: the oldest"
        );
        let set = |version| {
            at(
                1,
                Command::SetFormat {
                    version,
                    members: None,
                },
            )
        };
        assert_eq!(
            state.apply(0, &set(codec::FORMAT_VERSION)),
            Outcome::Applied
        );
        assert_eq!(state.format_version(), codec::FORMAT_VERSION);
        assert_eq!(
            state.apply(0, &set(codec::FORMAT_VERSION_MIN)),
            Outcome::Applied
        );
        assert_eq!(state.format_version(), codec::FORMAT_VERSION, "never back");
        let rows: Vec<(Vec<u8>, Vec<u8>)> = state
            .row_keys()
            .map(|key| {
                (
                    key.to_bytes(),
                    state.row(key).expect("encodes").expect("row"),
                )
            })
            .collect();
        let reloaded = State::from_rows(rows.iter().map(|(k, v)| (k.as_slice(), v.as_slice())))
            .expect("loads");
        assert_eq!(reloaded.format_version(), codec::FORMAT_VERSION);
    }

    #[test]
    fn dirty_rows_rebuild_an_equal_state() {
        let mut state = State::default();
        state.apply(
            0,
            &at(
                1,
                Command::InitCluster {
                    cluster_id: "c1".into(),
                },
            ),
        );
        state.apply(
            0,
            &at(
                2,
                Command::RegisterNode {
                    node_id: 1,
                    info: info("a"),
                },
            ),
        );
        state.apply(
            0,
            &at(
                3,
                Command::RegisterNode {
                    node_id: 2,
                    info: info("b"),
                },
            ),
        );
        state.apply(0, &at(4, Command::RemoveNode { node_id: 1 }));

        let dirty = state.take_dirty();
        assert_eq!(
            dirty.len(),
            4,
            "cluster id, clock and two node rows were touched"
        );
        let rows: Vec<(Vec<u8>, Vec<u8>)> = dirty
            .into_iter()
            .filter_map(|key| {
                state
                    .row(key)
                    .expect("encode")
                    .map(|value| (key.to_bytes(), value))
            })
            .collect();
        let rebuilt =
            State::from_rows(rows.iter().map(|(k, v)| (k.as_slice(), v.as_slice()))).expect("rows");
        assert_eq!(rebuilt, state);
    }
}

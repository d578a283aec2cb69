//! The leader's last step before the log: every write it proposes — its own and those other
//! nodes forward to it — passes through one queue, in order, and writes that may share an
//! entry leave together in one.
//!
//! Why: openraft 0.9 appends each proposal as an entry of its own and awaits that entry's
//! flush before it takes the next, so the leader's rate of entries, not of bytes, bounds what
//! a cluster takes in. Each node already groups its own writes (`batcher`), but three nodes'
//! batches, forwarded separately, were three entries.
//!
//! How: while [`PROPOSALS_IN_FLIGHT`] proposals are on their way, arriving writes queue; the
//! next proposal takes the queue's head and every write behind it that may share an entry
//! (a [`Command::Batch`], or one command a node would batch itself,
//! [`Command::is_batchable`]), up to a size. From format 6 a claim may end the proposal
//! ([`Command::may_end_batch`]): a `ClaimBatch`, or a node's batch that ends with one, is
//! taken as the proposal's last write. Applying a batch applies its commands in order, each
//! with its own outcome, so each write gets exactly the outcomes it would have had in an
//! entry of its own. Anything else (lease expiry; a format move; a large or non-idempotent
//! write; a claim in an older cluster) is proposed alone, in its place in the queue: a claim
//! behind a submission still lands behind it. Proposals are handed to openraft one by one
//! from this task, so the log holds them in queue order.

use std::sync::Arc;

use tokio::sync::{Semaphore, mpsc, oneshot};

use super::batcher::next_write;
use super::{Cluster, OpError, write_error};
use crate::command::{Command, Outcome, Proposal};

/// Proposals on their way at once, from the leader's hand to their outcome.
const PROPOSALS_IN_FLIGHT: usize = 4;
/// Most commands in one proposal made of several writes.
const MERGED_COMMANDS_MAX: usize = 2048;
/// Most encoded bytes in one proposal made of several writes: far below the largest entry
/// (`COMMAND_BYTES_MAX`). A single larger write still goes out, alone.
const MERGED_BYTES_MAX: usize = 4 * 1024 * 1024;
/// Longest wait for a proposal's outcome (`OP_DEADLINE`: no caller waits longer).
const OUTCOME_WAIT_MAX: std::time::Duration = super::OP_DEADLINE;
/// Writes waiting for a proposal; callers wait for room beyond it.
pub(super) const QUEUE_MAX: usize = 1024;

/// One write on its way to the log, and where its outcome goes.
pub(super) struct Queued {
    command: Command,
    shares: Sharing,
    reply: oneshot::Sender<Result<Outcome, OpError>>,
}

/// Whether a write may share its entry, and where in it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Sharing {
    Alone,
    /// Anywhere in a proposal; its encoded bytes.
    Anywhere(usize),
    /// As the proposal's last write (it ends with a claim); its encoded bytes.
    Last(usize),
}

impl Sharing {
    fn bytes(self) -> Option<usize> {
        match self {
            Sharing::Alone => None,
            Sharing::Anywhere(bytes) | Sharing::Last(bytes) => Some(bytes),
        }
    }
}

impl Queued {
    /// A write of `command` in a cluster running `format`.
    pub(super) fn new(
        command: Command,
        format: u8,
    ) -> (Self, oneshot::Receiver<Result<Outcome, OpError>>) {
        let commands = match &command {
            Command::Batch(commands) => commands.as_slice(),
            single => std::slice::from_ref(single),
        };
        let shares = match commands.split_last() {
            Some((last, rest)) if rest.iter().all(Command::is_batchable) => {
                let bytes = || crate::codec::encoded_len(&command).ok();
                if last.is_batchable() {
                    bytes().map_or(Sharing::Alone, Sharing::Anywhere)
                } else if !last.may_share_entry() && last.may_end_batch(format) {
                    // A claim: never batched by a node, but it may close a proposal.
                    bytes().map_or(Sharing::Alone, Sharing::Last)
                } else {
                    Sharing::Alone
                }
            }
            _ => Sharing::Alone,
        };
        let (reply, answer) = oneshot::channel();
        (
            Queued {
                command,
                shares,
                reply,
            },
            answer,
        )
    }
}

/// Takes queued writes and proposes them, grouped where they may be, until the queue closes.
pub(super) async fn run(cluster: Cluster, mut queue: mpsc::Receiver<Queued>) {
    let permits = Arc::new(Semaphore::new(PROPOSALS_IN_FLIGHT));
    let mut carried: Option<Queued> = None;
    while let Some((permit, first)) = next_write(&permits, &mut carried, &mut queue).await {
        let writes = gather(first, &mut queue, &mut carried);
        if writes.is_empty() {
            continue;
        }
        let (command, shapes) = merge(writes);
        let proposal = Proposal {
            time_ms: crate::runtime::now_ms(),
            command,
        };
        // Handed over here, in queue order; the outcome is awaited elsewhere.
        match cluster.raft().client_write_ff(proposal).await {
            Ok(outcome) => {
                crate::runtime::spawn(async move {
                    // openraft answers once the entry is applied or its log truncated, but
                    // not when a snapshot it installs covers the entry: bounded, so such a
                    // proposal cannot hold its place in flight for good.
                    let result = match tokio::time::timeout(OUTCOME_WAIT_MAX, outcome).await {
                        Ok(Ok(Ok(response))) => Ok(response.data),
                        Ok(Ok(Err(error))) => {
                            Err(write_error(openraft::error::RaftError::APIError(error)))
                        }
                        Ok(Err(_)) => Err(OpError::Failed("raft stopped".to_string())),
                        Err(_) => Err(OpError::Unreachable(format!(
                            "the log gave no outcome within {OUTCOME_WAIT_MAX:?}"
                        ))),
                    };
                    answer(shapes, result);
                    drop(permit);
                });
            }
            Err(fatal) => answer(shapes, Err(OpError::Failed(fatal.to_string()))),
        }
    }
}

/// The writes of the next proposal: `first`, and when it may share an entry, every write
/// queued behind it that may too, up to the limits; the first that may not waits in
/// `carried` for the next proposal. Writes whose caller has given up (its try timed out, so
/// it retries or reports the write as possibly applied) are dropped unproposed.
fn gather(
    first: Queued,
    queue: &mut mpsc::Receiver<Queued>,
    carried: &mut Option<Queued>,
) -> Vec<Queued> {
    if first.reply.is_closed() {
        return Vec::new();
    }
    let Sharing::Anywhere(mut bytes) = first.shares else {
        return vec![first];
    };
    let mut commands = commands_in(&first.command);
    let mut writes = vec![first];
    while let Ok(write) = queue.try_recv() {
        if write.reply.is_closed() {
            continue;
        }
        let fits = write.shares.bytes().is_some_and(|more| {
            bytes + more <= MERGED_BYTES_MAX
                && commands + commands_in(&write.command) <= MERGED_COMMANDS_MAX
        });
        if !fits {
            *carried = Some(write);
            break;
        }
        bytes += write.shares.bytes().unwrap_or(0);
        commands += commands_in(&write.command);
        let ends = matches!(write.shares, Sharing::Last(_));
        writes.push(write);
        if ends {
            break;
        }
    }
    writes
}

/// How many commands a write holds.
fn commands_in(command: &Command) -> usize {
    match command {
        Command::Batch(commands) => commands.len(),
        _ => 1,
    }
}

/// A write's place in a proposal: how many commands, whether it came as a batch, its reply.
struct Shape {
    commands: usize,
    batch: bool,
    reply: oneshot::Sender<Result<Outcome, OpError>>,
}

/// The proposal for `writes`: a lone write as it is, several as one batch of all their
/// commands in order.
fn merge(mut writes: Vec<Queued>) -> (Command, Vec<Shape>) {
    if writes.len() == 1 {
        let write = writes.remove(0);
        return (write.command, vec![lone(write.reply)]);
    }
    let mut commands = Vec::new();
    let mut shapes = Vec::with_capacity(writes.len());
    for write in writes {
        let (batch, count) = match write.command {
            Command::Batch(inner) => {
                let count = inner.len();
                commands.extend(inner);
                (true, count)
            }
            single => {
                commands.push(single);
                (false, 1)
            }
        };
        shapes.push(Shape {
            commands: count,
            batch,
            reply: write.reply,
        });
    }
    (Command::Batch(commands), shapes)
}

/// The shape of a write proposed as it is: its outcome is the proposal's.
fn lone(reply: oneshot::Sender<Result<Outcome, OpError>>) -> Shape {
    Shape {
        commands: 0,
        batch: false,
        reply,
    }
}

/// Hands each write its part of the proposal's outcome.
fn answer(mut shapes: Vec<Shape>, result: Result<Outcome, OpError>) {
    if shapes.len() == 1 && shapes[0].commands == 0 {
        let _ = shapes.remove(0).reply.send(result);
        return;
    }
    let total: usize = shapes.iter().map(|s| s.commands).sum();
    let mut outcomes = match result {
        Ok(Outcome::Batch(outcomes)) if outcomes.len() == total => outcomes.into_iter(),
        Ok(other) => {
            let error = OpError::Failed(format!(
                "unexpected answer to {total} grouped commands: {other:?}"
            ));
            for shape in shapes {
                let _ = shape.reply.send(Err(error.clone()));
            }
            return;
        }
        Err(error) => {
            for shape in shapes {
                let _ = shape.reply.send(Err(error.clone()));
            }
            return;
        }
    };
    for shape in shapes {
        let mine: Vec<Outcome> = outcomes.by_ref().take(shape.commands).collect();
        let outcome = if shape.batch {
            Outcome::Batch(mine)
        } else {
            match mine.into_iter().next() {
                Some(outcome) => outcome,
                None => continue,
            }
        };
        let _ = shape.reply.send(Ok(outcome));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const FORMAT: u8 = crate::codec::FORMAT_VERSION;

    fn cancel(job: &str) -> Command {
        Command::CancelJob {
            job_id: job.to_string(),
        }
    }

    fn changed() -> Outcome {
        Outcome::Changed { datums: 1 }
    }

    fn claim() -> Command {
        Command::ClaimBatch {
            node_id: 1,
            max: 1,
            queue: 0,
            free: Default::default(),
        }
    }

    fn sharing(command: Command, format: u8) -> Sharing {
        Queued::new(command, format).0.shares
    }

    #[test]
    fn writes_share_an_entry_where_they_may() {
        assert!(matches!(sharing(cancel("a"), FORMAT), Sharing::Anywhere(_)));
        let batch = Command::Batch(vec![cancel("a"), cancel("b")]);
        assert!(matches!(sharing(batch, FORMAT), Sharing::Anywhere(_)));
        // From format 6 a claim, or a node's batch ending with one, may close a proposal.
        assert!(matches!(sharing(claim(), FORMAT), Sharing::Last(_)));
        let submit_and_claim = Command::Batch(vec![cancel("a"), claim()]);
        assert!(matches!(
            sharing(submit_and_claim.clone(), FORMAT),
            Sharing::Last(_)
        ));
        assert_eq!(
            sharing(Command::Batch(vec![claim(), cancel("a")]), FORMAT),
            Sharing::Alone
        );
        assert_eq!(sharing(claim(), 5), Sharing::Alone);
        assert_eq!(sharing(submit_and_claim, 5), Sharing::Alone);
        let retry = Command::RetryFailed {
            job_id: "a".to_string(),
        };
        assert_eq!(sharing(retry, FORMAT), Sharing::Alone);
        let expire = Command::ExpireLeases { lease_ms: 1, by: 1 };
        assert_eq!(sharing(expire, FORMAT), Sharing::Alone);
    }

    #[test]
    fn each_grouped_write_gets_its_own_outcomes() {
        let (one, one_answer) = Queued::new(cancel("a"), FORMAT);
        let (two, two_answer) = Queued::new(Command::Batch(vec![cancel("b"), cancel("c")]), FORMAT);
        let (command, shapes) = merge(vec![one, two]);
        assert_eq!(
            command,
            Command::Batch(vec![cancel("a"), cancel("b"), cancel("c")])
        );
        let applied = Outcome::Batch(vec![
            changed(),
            Outcome::UnknownJob {
                job_id: "b".to_string(),
            },
            changed(),
        ]);
        answer(shapes, Ok(applied.clone()));
        let Ok(Ok(first)) = one_answer.blocking_recv() else {
            panic!("no outcome for the single write")
        };
        assert_eq!(first, changed());
        let Ok(Ok(second)) = two_answer.blocking_recv() else {
            panic!("no outcome for the batch")
        };
        let Outcome::Batch(all) = applied else {
            unreachable!()
        };
        assert_eq!(second, Outcome::Batch(all[1..].to_vec()));
    }

    /// Queues `commands` and gathers proposals from them until the queue is empty.
    fn proposals(commands: Vec<Command>, format: u8) -> Vec<Vec<Command>> {
        let (queue_in, mut queue) = mpsc::channel(16);
        let mut answers = Vec::new();
        for command in commands {
            let (write, answer) = Queued::new(command, format);
            answers.push(answer);
            assert!(queue_in.try_send(write).is_ok(), "room in the queue");
        }
        let mut carried = None;
        let mut proposals = Vec::new();
        while let Some(first) = carried.take().or_else(|| queue.try_recv().ok()) {
            let taken = gather(first, &mut queue, &mut carried);
            proposals.push(taken.into_iter().map(|w| w.command).collect());
        }
        proposals
    }

    #[test]
    fn a_proposal_takes_the_shareable_writes_behind_the_first_and_leaves_the_rest_in_order() {
        let queued = || vec![cancel("a"), cancel("b"), claim(), cancel("c"), cancel("d")];
        // The claim closes the proposal it joins; what follows starts the next.
        assert_eq!(
            proposals(queued(), FORMAT),
            vec![
                vec![cancel("a"), cancel("b"), claim()],
                vec![cancel("c"), cancel("d")]
            ]
        );
        // Before format 6 it goes alone, in its place.
        assert_eq!(
            proposals(queued(), 5),
            vec![
                vec![cancel("a"), cancel("b")],
                vec![claim()],
                vec![cancel("c"), cancel("d")]
            ]
        );
        // A claim first takes nothing behind it.
        assert_eq!(
            proposals(vec![claim(), cancel("a")], FORMAT),
            vec![vec![claim()], vec![cancel("a")]]
        );
    }

    #[test]
    fn writes_whose_caller_gave_up_are_not_proposed() {
        let (queue_in, mut queue) = mpsc::channel(16);
        let (gone, gone_answer) = Queued::new(cancel("gone"), FORMAT);
        drop(gone_answer);
        let (kept, _kept_answer) = Queued::new(cancel("kept"), FORMAT);
        assert!(queue_in.try_send(gone).is_ok(), "room");
        assert!(queue_in.try_send(kept).is_ok(), "room");
        let (first, first_answer) = Queued::new(cancel("first"), FORMAT);
        drop(first_answer);
        let mut carried = None;
        assert!(gather(first, &mut queue, &mut carried).is_empty());
        let next = queue.try_recv().expect("gone");
        assert!(gather(next, &mut queue, &mut carried).is_empty());
        let next = queue.try_recv().expect("kept");
        let taken = gather(next, &mut queue, &mut carried);
        assert_eq!(taken.len(), 1);
        assert_eq!(taken[0].command, cancel("kept"));
    }

    #[test]
    fn a_proposal_stops_at_its_size() {
        let (queue_in, mut queue) = mpsc::channel(4096);
        let mut answers = Vec::new();
        for i in 0..MERGED_COMMANDS_MAX + 10 {
            let (write, answer) = Queued::new(cancel(&format!("j{i}")), FORMAT);
            answers.push(answer);
            assert!(queue_in.try_send(write).is_ok(), "room");
        }
        let mut carried = None;
        let first = queue.try_recv().expect("first");
        let taken = gather(first, &mut queue, &mut carried);
        assert_eq!(taken.len(), MERGED_COMMANDS_MAX);
        assert!(
            carried.is_some(),
            "the next write waits for the next proposal"
        );
    }

    #[test]
    fn a_lone_write_gets_the_proposal_outcome_and_a_failure_reaches_every_write() {
        let (one, one_answer) = Queued::new(cancel("a"), FORMAT);
        let (command, shapes) = merge(vec![one]);
        assert_eq!(command, cancel("a"));
        answer(shapes, Ok(changed()));
        assert!(matches!(one_answer.blocking_recv(), Ok(Ok(outcome)) if outcome == changed()));

        let (one, one_answer) = Queued::new(cancel("a"), FORMAT);
        let (two, two_answer) = Queued::new(cancel("b"), FORMAT);
        let (_, shapes) = merge(vec![one, two]);
        answer(shapes, Err(OpError::NotLeader { leader: None }));
        for answer in [one_answer, two_answer] {
            assert!(matches!(
                answer.blocking_recv(),
                Ok(Err(OpError::NotLeader { .. }))
            ));
        }
    }
}

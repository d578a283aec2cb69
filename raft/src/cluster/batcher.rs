//! Group writes: commands written on this node at about the same time travel to the leader
//! and into the log as one [`Command::Batch`] entry.
//!
//! The first write of a quiet period goes out at once, alone. While [`BATCHES_IN_FLIGHT`]
//! batches are on their way, later writes queue up and leave together as soon as one
//! returns, so batches grow with the load and latency does not. Each write still gets its
//! own outcome; a failure of the whole batch (no leader) is every write's failure. Retries
//! resend the whole batch, which is safe because every batchable command is idempotent. A
//! claim ending the batch (below) is not: resent, it is applied again and grants more, as a
//! lone claim resent always did; grants whose answer was lost are the claim watch's to adopt.
//!
//! A write may bring a [`Follow`]: a command that goes right behind the batch (a node's claim
//! behind its own submission, see [`Cluster::write_and_claim`]). From format 6 a claim ends
//! the batch itself ([`Command::may_end_batch`]), so the node takes the new work in the entry
//! that records it. In an older cluster, or for anything else, it is proposed alone, handed
//! on after the batch, so it usually lands in the entry after it (when it overtakes the
//! batch it is still correct, only no faster).

use std::sync::Arc;

use tokio::sync::{OwnedSemaphorePermit, Semaphore, mpsc, oneshot};

use super::{Cluster, ClusterError};
use crate::command::{Command, Outcome};

/// Most commands in one batch.
const BATCH_COMMANDS_MAX: usize = 512;
/// Most encoded bytes in one batch, far below a network frame, so a batch always fits into
/// an AppendEntries message. A single larger write still goes out, alone.
const BATCH_BYTES_MAX: usize = 2 * 1024 * 1024;
/// Batches on their way to the leader at once.
const BATCHES_IN_FLIGHT: usize = 4;
/// Writes waiting for a batch; callers wait for room beyond it.
pub(super) const QUEUE_MAX: usize = 4096;

pub(super) struct QueuedWrite {
    command: Command,
    bytes: usize,
    reply: oneshot::Sender<Result<Outcome, ClusterError>>,
    follow: Option<Follow>,
}

/// A command to propose in its own entry right behind a write, and where its outcome goes.
pub struct Follow {
    command: Command,
    reply: oneshot::Sender<Result<Outcome, ClusterError>>,
}

impl Follow {
    /// A follow of `command`, and the receiver of its outcome (dropped unanswered when the
    /// write it follows was never sent).
    pub fn new(command: Command) -> (Self, oneshot::Receiver<Result<Outcome, ClusterError>>) {
        let (reply, answer) = oneshot::channel();
        (Follow { command, reply }, answer)
    }
}

impl QueuedWrite {
    /// A write of `command`, `bytes` long encoded.
    pub(super) fn new(
        command: Command,
        bytes: usize,
        follow: Option<Follow>,
    ) -> (Self, oneshot::Receiver<Result<Outcome, ClusterError>>) {
        let (reply, answer) = oneshot::channel();
        (
            QueuedWrite {
                command,
                bytes,
                reply,
                follow,
            },
            answer,
        )
    }
}

/// Takes queued writes and sends them in batches until the queue closes.
pub(super) async fn run(cluster: Cluster, mut queue: mpsc::Receiver<QueuedWrite>) {
    let permits = Arc::new(Semaphore::new(BATCHES_IN_FLIGHT));
    let mut carried: Option<QueuedWrite> = None;
    while let Some((permit, first)) = next_write(&permits, &mut carried, &mut queue).await {
        let mut bytes = first.bytes;
        let mut batch = vec![first];
        while batch.len() < BATCH_COMMANDS_MAX {
            let Ok(write) = queue.try_recv() else { break };
            if bytes + write.bytes > BATCH_BYTES_MAX {
                carried = Some(write);
                break;
            }
            bytes += write.bytes;
            batch.push(write);
        }
        let cluster = cluster.clone();
        crate::runtime::spawn(async move {
            send(&cluster, batch).await;
            drop(permit);
        });
    }
}

/// Waits for room for one more group in flight, then for the group's first write: the one
/// carried over from the last group, else the queue's next. `None` once the queue closes.
pub(super) async fn next_write<T>(
    permits: &Arc<Semaphore>,
    carried: &mut Option<T>,
    queue: &mut mpsc::Receiver<T>,
) -> Option<(OwnedSemaphorePermit, T)> {
    let permit = permits.clone().acquire_owned().await.ok()?;
    let first = match carried.take() {
        Some(write) => write,
        None => queue.recv().await?,
    };
    Some((permit, first))
}

/// Proposes `batch`, and each of its follows behind it: the first in the batch's own entry
/// when it may end a batch, the others alone.
async fn send(cluster: &Cluster, mut batch: Vec<QueuedWrite>) {
    let mut follows: Vec<Follow> = batch.iter_mut().filter_map(|w| w.follow.take()).collect();
    let format = cluster.view().read().format_version();
    let last = match follows.first() {
        Some(follow) if follow.command.may_end_batch(format) => Some(follows.remove(0)),
        _ => None,
    };
    let behind = futures::future::join_all(follows.into_iter().map(|follow| async move {
        let _ = follow.reply.send(cluster.write_now(follow.command).await);
    }));
    // `join!` polls in order: the batch is handed on before its follows.
    futures::join!(send_batch(cluster, batch, last), behind);
}

async fn send_batch(cluster: &Cluster, mut batch: Vec<QueuedWrite>, last: Option<Follow>) {
    if batch.len() == 1 && last.is_none() {
        let write = batch.remove(0);
        let _ = write.reply.send(cluster.write_now(write.command).await);
        return;
    }
    let (commands, replies): (Vec<Command>, Vec<_>) = batch
        .into_iter()
        .map(|write| (write.command, write.reply))
        .chain(last.map(|follow| (follow.command, follow.reply)))
        .unzip();
    let count = commands.len();
    match cluster.write_now(Command::Batch(commands)).await {
        Ok(Outcome::Batch(outcomes)) if outcomes.len() == count => {
            for (reply, outcome) in replies.into_iter().zip(outcomes) {
                let _ = reply.send(Ok(outcome));
            }
        }
        Ok(other) => {
            for reply in replies {
                let _ = reply.send(Err(ClusterError::Failed(format!(
                    "unexpected answer to a batch of {count}: {other:?}"
                ))));
            }
        }
        Err(error) => {
            for reply in replies {
                let _ = reply.send(Err(error.duplicate()));
            }
        }
    }
}

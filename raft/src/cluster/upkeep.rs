//! A node's standing chores: register itself and heartbeat through the log, name the cluster
//! if nobody has yet, and — on the leader — promote caught-up learners while there are fewer
//! voters than `voters_max`, and move the cluster to a newer format once every member reads it.

use std::collections::BTreeSet;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use futures::StreamExt;
use openraft::ChangeMembers;

use super::Cluster;
use crate::command::Command;

/// How often a node that does not hear from its leader asks the other voters whether they do.
const ELECTION_ROUND: Duration = Duration::from_millis(50);
/// How long a probe waits for its answer.
const PROBE_TIMEOUT: Duration = Duration::from_millis(400);
/// How often the leader looks for learners to promote.
const PROMOTION_ROUND: Duration = Duration::from_millis(500);
/// A learner this many entries or fewer behind the leader counts as caught up.
const CAUGHT_UP_LAG_ENTRIES: u64 = 100;

/// Registers this node, then heartbeats every quarter lease. Each heartbeat is sent on its
/// own, bounded by the period: one stuck on a leader that hangs never delays the next, which
/// goes to the next leader (see `Cluster::execute`).
pub(super) async fn register_and_heartbeat(cluster: Cluster) {
    let period = Duration::from_millis((cluster.config().lease_ms / 4).max(50));
    // Until the node is registered it retries quickly, so a new member shows up at once.
    let eager = period.min(Duration::from_millis(cluster.config().heartbeat_ms * 2));
    let registered = Arc::new(AtomicBool::new(false));
    loop {
        if !registered.load(Ordering::SeqCst) {
            let done = cluster.is_ready() && beat(&cluster).await;
            registered.store(done, Ordering::SeqCst);
            tokio::time::sleep(if done { period } else { eager }).await;
            continue;
        }
        let (cluster, registered) = (cluster.clone(), registered.clone());
        crate::runtime::spawn(async move {
            let beat = tokio::time::timeout(period, beat(&cluster)).await;
            if beat == Ok(false) {
                registered.store(false, Ordering::SeqCst);
            }
        });
        tokio::time::sleep(period).await;
    }
}

/// Names the cluster if needed, then registers or heartbeats; true once registered (false
/// also when the registry has lost this node, so it registers again).
async fn beat(cluster: &Cluster) -> bool {
    let (named, registered) = {
        let state = cluster.view().read();
        let info = cluster.node_info();
        let registered = state
            .nodes
            .get(&cluster.node_id())
            .is_some_and(|r| r.info == info);
        (state.cluster_id.is_some(), registered)
    };
    if !named {
        let command = Command::InitCluster {
            cluster_id: super::new_cluster_id(cluster.node_id()),
        };
        if let Err(error) = cluster.write(command).await {
            tracing::debug!(%error, "naming the cluster failed");
        }
    }
    let command = if registered {
        Command::Heartbeat {
            node_id: cluster.node_id(),
            running: cluster.running(),
        }
    } else {
        Command::RegisterNode {
            node_id: cluster.node_id(),
            info: cluster.node_info(),
        }
    };
    match cluster.write(command).await {
        // Removed from the registry (or never in it): register again next round.
        Ok(crate::command::Outcome::UnknownNode { .. }) => false,
        Ok(_) => registered,
        Err(error) => {
            tracing::debug!(%error, "heartbeat failed");
            registered
        }
    }
}

pub(super) async fn promote_learners(cluster: Cluster) {
    let mut round = tokio::time::interval(PROMOTION_ROUND);
    loop {
        round.tick().await;
        let metrics = cluster.raft().metrics().borrow().clone();
        let Some(replication) = metrics.replication.as_ref() else {
            continue;
        };
        let membership = metrics.membership_config.membership();
        let voters: BTreeSet<_> = membership.voter_ids().collect();
        let room = cluster.config().voters_max.saturating_sub(voters.len());
        if room == 0 {
            continue;
        }
        let last = metrics.last_log_index.unwrap_or(0);
        let ready: BTreeSet<_> = membership
            .learner_ids()
            .filter(|id| {
                // A learner that has received nothing yet is not caught up, however short the log.
                let matched = replication.get(id).copied().flatten();
                matched.is_some_and(|m| m.index + CAUGHT_UP_LAG_ENTRIES >= last)
            })
            .take(room)
            .collect();
        if ready.is_empty() {
            continue;
        }
        tracing::info!(learners = ?ready, "promoting learners to voters");
        if let Err(error) = cluster
            .raft()
            .change_membership(ChangeMembers::AddVoterIds(ready), true)
            .await
        {
            tracing::debug!(%error, "promotion failed");
        }
    }
}

/// How often the leader checks whether the cluster can move to a newer format.
const FORMAT_ROUND: Duration = Duration::from_secs(2);

/// On the leader: moves the cluster to the newest format every member reads (at most this
/// build's), asking each member of the Raft group, learners included, which formats it
/// reads. A member that does not answer (down, or a build older than format 5, which cannot
/// decode the question) holds the cluster where it is: a record in a newer format would be
/// one it cannot read. A node that becomes leader checks at once, so a cluster just formed
/// writes the newest format from its first tasks on, not a round later.
pub(super) async fn upgrade_format(cluster: Cluster) {
    let mut round = tokio::time::interval(FORMAT_ROUND);
    let mut metrics = cluster.raft().metrics();
    let mut leading = false;
    loop {
        tokio::select! {
            _ = round.tick() => {}
            changed = metrics.changed() => {
                if changed.is_err() {
                    return;
                }
                let was_leading = std::mem::replace(&mut leading, cluster.is_leader());
                if !leading || was_leading {
                    continue;
                }
            }
        }
        if !cluster.is_leader() {
            continue;
        }
        let current = cluster.view().read().format_version();
        let mut target = crate::codec::max_version();
        if current >= target {
            continue;
        }
        // No node joins between the check and the proposal (`join_local` takes the same
        // gate), and the state machine refuses the proposal if the membership it names is
        // no longer the one applied (a leader change may have added one meanwhile).
        let _gate = cluster.inner.members_gate.lock().await;
        let (membership_id, members): (_, Vec<_>) = {
            let metrics = cluster.raft().metrics().borrow().clone();
            let config = &metrics.membership_config;
            let members = config
                .membership()
                .nodes()
                .filter(|(id, _)| **id != cluster.node_id())
                .map(|(id, addr)| (*id, addr.clone()))
                .collect();
            (*config.log_id(), members)
        };
        for (node_id, addr) in members {
            match cluster.formats_of(&addr).await {
                Some((min, max)) if min <= current => target = target.min(max),
                _ => {
                    tracing::debug!(node = %crate::format_node_id(node_id), "holds the format");
                    target = current;
                    break;
                }
            }
        }
        if target <= current {
            continue;
        }
        // Proposed here or nowhere: the check holds for this leader's membership only.
        let command = Command::SetFormat {
            version: target,
            members: membership_id,
        };
        match cluster.execute_local(super::Op::Write(command)).await {
            Ok(super::OpResult::Written(crate::command::Outcome::Applied)) => tracing::info!(
                from = current,
                to = target,
                "every member reads the newer format: the cluster now writes it"
            ),
            other => tracing::debug!(answer = ?other, "the format stays"),
        }
    }
}

/// On the leader: releases the claims of nodes silent longer than the lease (publishing
/// claims and pipelines' stewardship pass to this node). A new leader
/// first waits one lease, so nodes get to heartbeat to it before anything expires (after a
/// whole-cluster restart every recorded heartbeat is old).
pub(super) async fn expire_leases(cluster: Cluster) {
    let lease_ms = cluster.config().lease_ms;
    let mut round = tokio::time::interval(Duration::from_millis((lease_ms / 4).max(50)));
    let mut leading_since: Option<tokio::time::Instant> = None;
    loop {
        round.tick().await;
        if !cluster.is_leader() {
            leading_since = None;
            continue;
        }
        let since = *leading_since.get_or_insert_with(tokio::time::Instant::now);
        if since.elapsed() < Duration::from_millis(lease_ms)
            || !any_claim_overdue(&cluster, lease_ms)
        {
            continue;
        }
        let expire = Command::ExpireLeases {
            lease_ms,
            by: cluster.node_id(),
        };
        match cluster.write(expire).await {
            Ok(outcome) => tracing::info!(?outcome, "expired the claims of silent nodes"),
            Err(error) => tracing::debug!(%error, "lease expiry failed"),
        }
    }
}

/// Whether some node holding claims or stewarding a pipeline has not heartbeated within the
/// lease (by this clock).
fn any_claim_overdue(cluster: &Cluster, lease_ms: u64) -> bool {
    let now_ms = crate::runtime::now_ms();
    let me = cluster.node_id();
    let state = cluster.view().read();
    let overdue =
        |node: crate::types::NodeId| node != me && state.is_silent(node, now_ms, lease_ms);
    state.claim_holders().any(overdue) || state.stewardships().any(|(_, node)| overdue(node))
}

/// Runs this node's elections; openraft's own election timer is off (`enable_elect: false`).
///
/// A voter campaigns only after a pre-vote (openraft 0.9 has none): a majority of the
/// voters, itself included, must have heard from no leader for the longest election timeout
/// and hold no log entry beyond its last one — the votes it would get. A node cut off from
/// the others asks in vain, never campaigns and keeps its term, so when it comes back it
/// joins the leader that carried on instead of deposing it; a node whose log is behind never
/// campaigns against the one that can win, so terms do not race each other up. When the
/// leader fails, the others stop hearing it, agree within a probe round and campaign after a
/// random delay below the shortest election timeout; a campaign that is not won is tried
/// again after a random election timeout.
pub(super) async fn run_elections(cluster: Cluster) {
    let (shortest, longest) = cluster.config().election_timeout_ms;
    let mut round = tokio::time::interval(ELECTION_ROUND);
    round.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut campaign_at: Option<tokio::time::Instant> = None;
    loop {
        round.tick().await;
        if cluster.hears_leader().await || !pre_vote(&cluster).await {
            campaign_at = None;
            continue;
        }
        let now = tokio::time::Instant::now();
        let at = *campaign_at.get_or_insert_with(|| now + crate::runtime::random_below(shortest));
        tracing::trace!(delay = ?at.saturating_duration_since(now), "pre-vote passed: campaigning soon");
        if now < at {
            continue;
        }
        tracing::info!(
            "a majority of the voters hear no leader and would vote for this node: campaigning"
        );
        if cluster.raft().trigger().elect().await.is_err() {
            return; // Raft has stopped.
        }
        campaign_at = Some(
            now + Duration::from_millis(shortest)
                + crate::runtime::random_below(longest - shortest),
        );
    }
}

/// Whether this node is a voter and a majority of the voters, itself included, hear from no
/// leader and have no log beyond this node's. Decides as soon as enough agree: a hung peer's
/// probe is not waited out.
async fn pre_vote(cluster: &Cluster) -> bool {
    use crate::network::protocol::{Request, Response};
    let me = cluster.node_id();
    let others: Vec<crate::types::NodeAddr> = {
        let metrics = cluster.raft().metrics();
        let metrics = metrics.borrow();
        let membership = metrics.membership_config.membership();
        let voters: BTreeSet<_> = membership.voter_ids().collect();
        if !voters.contains(&me) {
            return false;
        }
        voters
            .iter()
            .filter(|id| **id != me)
            .filter_map(|id| membership.get_node(id).cloned())
            .collect()
    };
    let mine = cluster.last_log_id().await;
    // A majority of the voters, this node (which agrees with itself) included.
    let voters = others.len() + 1;
    let needed = voters / 2 + 1;
    let probes = others.iter().map(|addr| async move {
        let (peer, addrs) = crate::network::raft_network::peer_location(addr)?;
        let answer = cluster
            .net()
            .request(peer, addrs, Request::Probe, PROBE_TIMEOUT)
            .await
            .ok()?;
        match answer {
            Response::Probe {
                hears_leader,
                last_log,
            } => {
                tracing::trace!(peer = %addr.name, hears_leader, ?last_log, ?mine, "pre-vote answer");
                Some(!hears_leader && last_log <= mine)
            }
            _ => None,
        }
    });
    let mut answers: futures::stream::FuturesUnordered<_> = probes.collect();
    let mut agree = 1;
    while agree < needed {
        match answers.next().await {
            Some(Some(true)) => agree += 1,
            Some(_) => {}
            None => return false,
        }
    }
    true
}

//! Fault schedules: a pure function of the seed, so a failing seed's schedule can be printed
//! before anything runs, and replayed.

use std::fmt;

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

/// What goes wrong.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum FaultKind {
    /// The process dies (kill -9) and restarts after the fault's duration.
    Crash,
    /// The machine dies: what was not fsynced is lost too.
    PowerLoss,
    /// SIGSTOP for the duration, then SIGCONT.
    Pause,
    /// The leader cut off from every other node.
    PartitionLeader,
    /// A minority (one node of three, two of five) cut off, chosen among all nodes.
    PartitionMinority,
    /// One link broken in one direction only.
    OneWay,
    /// Every message takes 50–500 ms.
    Delay,
    /// One message in five is lost.
    Loss,
    /// One request in five is delivered twice.
    Duplicate,
}

pub const KINDS: [FaultKind; 9] = [
    FaultKind::Crash,
    FaultKind::PowerLoss,
    FaultKind::Pause,
    FaultKind::PartitionLeader,
    FaultKind::PartitionMinority,
    FaultKind::OneWay,
    FaultKind::Delay,
    FaultKind::Loss,
    FaultKind::Duplicate,
];

impl FaultKind {
    pub fn name(self) -> &'static str {
        match self {
            FaultKind::Crash => "crash",
            FaultKind::PowerLoss => "power-loss",
            FaultKind::Pause => "pause",
            FaultKind::PartitionLeader => "partition-leader",
            FaultKind::PartitionMinority => "partition-minority",
            FaultKind::OneWay => "one-way",
            FaultKind::Delay => "delay",
            FaultKind::Loss => "loss",
            FaultKind::Duplicate => "duplicate",
        }
    }

    /// Whether the fault hits one node (its process, or its links) rather than the network.
    pub fn targets_node(self) -> bool {
        !matches!(
            self,
            FaultKind::Delay | FaultKind::Loss | FaultKind::Duplicate
        )
    }
}

/// One fault of a schedule.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Fault {
    /// Simulated milliseconds after the cluster formed.
    pub at_ms: u64,
    pub duration_ms: u64,
    pub kind: FaultKind,
    /// Picks the node(s) hit, among those up when the fault begins (the leader's partition
    /// uses it to pick nothing).
    pub pick: u64,
}

impl fmt::Display for Fault {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{} at {} ms for {} ms (pick {})",
            self.kind.name(),
            self.at_ms,
            self.duration_ms,
            self.pick % 1000
        )
    }
}

/// The faults of `seed`: the first of the kind the seed stands for (so a sweep spreads over
/// every kind), then random ones, one after the other with quiet gaps between.
pub fn schedule(seed: u64, faults: usize) -> Vec<Fault> {
    let mut rng = StdRng::seed_from_u64(seed ^ 0x5eed_fa17);
    let mut at_ms = 2_000 + rng.gen_range(0..2_000);
    let mut schedule = Vec::new();
    for i in 0..faults {
        let kind = if i == 0 {
            KINDS[(seed % KINDS.len() as u64) as usize]
        } else {
            KINDS[rng.gen_range(0..KINDS.len())]
        };
        let duration_ms = match kind {
            FaultKind::Crash | FaultKind::PowerLoss => rng.gen_range(100..4_000),
            // Some pauses outlast the lease: the node's claims expire while it sleeps.
            FaultKind::Pause => rng.gen_range(200..14_000),
            FaultKind::PartitionLeader | FaultKind::PartitionMinority | FaultKind::OneWay => {
                rng.gen_range(500..8_000)
            }
            FaultKind::Delay | FaultKind::Loss | FaultKind::Duplicate => rng.gen_range(500..5_000),
        };
        schedule.push(Fault {
            at_ms,
            duration_ms,
            kind,
            pick: rng.r#gen(),
        });
        at_ms += duration_ms + rng.gen_range(300..3_000);
    }
    schedule
}

#[cfg(test)]
mod tests {
    #[test]
    fn a_schedule_is_a_function_of_its_seed() {
        assert_eq!(super::schedule(42, 3), super::schedule(42, 3));
        assert_ne!(super::schedule(42, 3), super::schedule(43, 3));
    }
}

//! The deterministic simulation: 3–5 shoal nodes — the production `Cluster` (openraft, the
//! redb stores, forwarding, heartbeats, leases, elections) and `Worker` (claim loop, reporter,
//! claim watch) — in one thread on a simulated clock, with clients submitting, cancelling and
//! reading TES tasks over the real HTTP handlers, and a fault schedule drawn from one seed.
//! The same seed replays the same run, bit for bit.
//!
//! What is simulated, through seams the production code has anyway:
//! - the network ([`net`]): shoal's `Transport` trait, in memory, with latency, cuts, loss
//!   and duplication;
//! - the disks ([`disk`]): redb's `StorageBackend`, losing unsynced writes in a power loss;
//! - tasks, time and randomness: `shoal_raft::runtime` (node scopes for crash and pause, the
//!   paused tokio clock, a seeded generator; tokio's own `select!` randomness is seeded through
//!   `rng_seed`, which needs `--cfg tokio_unstable`, see `.cargo/config.toml`);
//! - the executor ([`executor`]): `ExecutorKind::External`, counting executions outside shoal.
//!
//! The oracle ([`oracle`]) checks invariants every 100 simulated milliseconds and at the end,
//! after everything healed and the liveness phase ran.

pub mod disk;
pub mod executor;
pub mod faults;
pub mod net;
pub mod node;
mod oracle;
pub mod trace;
mod world;

pub use faults::{Fault, FaultKind, KINDS};
pub use world::run;

/// A rule the simulator breaks on purpose, to show the oracle catches it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BrokenRule {
    /// Something expires leases after 300 ms, ignoring the lease and its grace: healthy nodes
    /// lose their claims.
    HastyLeaseExpiry,
}

/// One simulated run.
#[derive(Debug, Clone)]
pub struct SimConfig {
    pub seed: u64,
    pub nodes: usize,
    /// Faults in the schedule.
    pub faults: usize,
    /// Keep every trace line (for `--trace`); the hash is kept either way.
    pub keep_trace: bool,
    pub broken: Option<BrokenRule>,
}

impl SimConfig {
    pub fn new(seed: u64) -> SimConfig {
        SimConfig {
            seed,
            // Odd seeds run three nodes, even ones five… every fifth seed.
            nodes: if seed % 5 == 4 { 5 } else { 3 },
            faults: 3,
            keep_trace: false,
            broken: None,
        }
    }
}

/// What one run did and found.
#[derive(Debug, Clone)]
pub struct Report {
    pub seed: u64,
    pub nodes: usize,
    pub schedule: Vec<Fault>,
    /// Invariants the run broke; empty when it passed.
    pub violations: Vec<String>,
    pub trace_hash: String,
    pub trace: Vec<String>,
    pub simulated_ms: u64,
    pub messages: u64,
    pub acknowledged: usize,
    pub executions: usize,
    /// Pipeline outputs in the bucket at the end.
    pub published: usize,
    /// After each fault: how long until a write succeeded (`u64::MAX`: none in time).
    pub recoveries: Vec<(FaultKind, u64)>,
}

impl Report {
    pub fn passed(&self) -> bool {
        self.violations.is_empty()
    }
}

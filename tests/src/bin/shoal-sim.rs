//! `shoal-sim`: sweeps seeds of the deterministic simulation, or replays one.
//!
//! ```text
//! cargo run --release -p shoal-tests --bin shoal-sim -- --seeds 1000 --start 1
//! cargo run --release -p shoal-tests --bin shoal-sim -- --seed 7 --trace
//! ```
//!
//! A sweep runs one seed per core at a time (each run is single-threaded and deterministic
//! on its own) and prints every failing seed with its fault schedule and violations, the faults
//! injected by kind, the write recoveries after them, and a summary line
//! `seeds=… failed=… faults=… wall_s=…`. It exits non-zero when a seed failed.

use std::collections::BTreeMap;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Instant;

use clap::Parser;
use shoal_tests::sim::{self, BrokenRule, Report, SimConfig};

#[derive(Parser)]
#[command(about = "Runs shoal's deterministic simulation")]
struct Args {
    /// How many seeds to sweep.
    #[arg(long, default_value_t = 100)]
    seeds: u64,
    /// The first seed of the sweep.
    #[arg(long, default_value_t = 1)]
    start: u64,
    /// Replay this one seed (and print its report).
    #[arg(long, conflicts_with_all = ["seeds", "start"])]
    seed: Option<u64>,
    /// With --seed: print the whole trace.
    #[arg(long, requires = "seed")]
    trace: bool,
    /// Faults per seed.
    #[arg(long, default_value_t = 3)]
    faults: usize,
    /// Break the lease rule on purpose (the oracle must notice).
    #[arg(long)]
    broken_lease: bool,
    /// Seeds run at once, each on a thread of its own (default: one per core).
    #[arg(long)]
    jobs: Option<usize>,
}

fn config(args: &Args, seed: u64) -> SimConfig {
    let mut config = SimConfig::new(seed);
    config.faults = args.faults;
    config.keep_trace = args.trace;
    config.broken = args.broken_lease.then_some(BrokenRule::HastyLeaseExpiry);
    config
}

fn print_failure(report: &Report) {
    println!("seed {} FAILED ({} nodes)", report.seed, report.nodes);
    for fault in &report.schedule {
        println!("  fault: {fault}");
    }
    for violation in &report.violations {
        println!("  violation: {violation}");
    }
}

fn main() {
    let args = Args::parse();
    if let Some(seed) = args.seed {
        let report = sim::run(&config(&args, seed));
        for line in &report.trace {
            println!("{line}");
        }
        if !report.passed() {
            print_failure(&report);
        }
        println!(
            "seed={seed} nodes={} passed={} simulated_ms={} messages={} acknowledged={} executions={} published={} trace_hash={}",
            report.nodes,
            report.passed(),
            report.simulated_ms,
            report.messages,
            report.acknowledged,
            report.executions,
            report.published,
            report.trace_hash
        );
        std::process::exit(if report.passed() { 0 } else { 1 });
    }
    let began = Instant::now();
    let jobs = args
        .jobs
        .unwrap_or_else(|| std::thread::available_parallelism().map_or(1, |n| n.get()))
        .max(1);
    let next = AtomicU64::new(args.start);
    let end = args.start + args.seeds;
    let reports = Mutex::new(Vec::new());
    std::thread::scope(|scope| {
        for _ in 0..jobs {
            scope.spawn(|| {
                loop {
                    let seed = next.fetch_add(1, Ordering::SeqCst);
                    if seed >= end {
                        return;
                    }
                    let report = sim::run(&config(&args, seed));
                    if !report.passed() {
                        print_failure(&report);
                    }
                    reports
                        .lock()
                        .unwrap_or_else(|p| p.into_inner())
                        .push(report);
                }
            });
        }
    });
    let reports = reports.into_inner().unwrap_or_else(|p| p.into_inner());
    let mut failed = 0;
    let mut faults: BTreeMap<&'static str, u64> = BTreeMap::new();
    let mut recoveries: BTreeMap<&'static str, Vec<u64>> = BTreeMap::new();
    let mut simulated_ms = 0;
    for report in &reports {
        simulated_ms += report.simulated_ms;
        for fault in &report.schedule {
            *faults.entry(fault.kind.name()).or_default() += 1;
        }
        for (kind, ms) in &report.recoveries {
            recoveries.entry(kind.name()).or_default().push(*ms);
        }
        if !report.passed() {
            failed += 1;
        }
    }
    let wall_s = began.elapsed().as_secs_f64();
    for (kind, count) in &faults {
        let mut took = recoveries.get(kind).cloned().unwrap_or_default();
        took.sort_unstable();
        let median = took.get(took.len() / 2).copied().unwrap_or(0);
        let max = took.last().copied().unwrap_or(0);
        println!("fault {kind}: injected {count}, write recovery median {median} ms, max {max} ms");
    }
    println!(
        "seeds={} failed={failed} faults={} wall_s={wall_s:.1} seeds_per_s={:.1} simulated_s={}",
        args.seeds,
        faults.values().sum::<u64>(),
        args.seeds as f64 / wall_s,
        simulated_ms / 1000
    );
    std::process::exit(if failed == 0 { 0 } else { 1 });
}

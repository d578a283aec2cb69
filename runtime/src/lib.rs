//! shoal's runtime seam: what shoal asks of tasks, time, randomness and blocking work goes through
//! here, so the deterministic simulation (`tests/src/sim`) runs the production code on a
//! simulated clock with seeded randomness, and can crash and pause a node.
//!
//! - Tasks: [`spawn`] starts a tokio task. Inside a [`NodeScope`] (the simulator's), the task
//!   joins the scope: crashing the node aborts it, pausing the node stops polling it (as
//!   SIGSTOP does: its timers run out meanwhile and fire when it resumes).
//! - Time: tokio's clock (`tokio::time::Instant`, sleeps, timeouts) everywhere, which under a
//!   paused tokio runtime is simulated time; [`now_ms`] is the wall clock for timestamps that
//!   go into the log.
//! - Randomness: [`random_below`] and openraft's `thread_rng` draw from the OS, or from the
//!   seeded generator [`simulate`] installs.
//! - Blocking work (redb, files): [`blocking`] uses tokio's blocking pool, or runs inline in
//!   the simulation, where a second thread would make the order of events depend on the OS.
//!
//! `shoal_raft::runtime::ShoalRuntime` is openraft's `AsyncRuntime` over the same seam.
//! Production never calls [`simulate`] or makes a [`NodeScope`]; then every function here is
//! plain tokio and std.

use std::cell::RefCell;
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll, Waker};
use std::time::Duration;

use rand::{RngCore, SeedableRng};

/// The simulated wall clock and random generator of the thread running a simulation.
struct Simulation {
    rng: rand::rngs::StdRng,
    epoch_ms: u64,
    origin: tokio::time::Instant,
}

thread_local! {
    static SIMULATION: RefCell<Option<Simulation>> = const { RefCell::new(None) };
}

tokio::task_local! {
    static SCOPE: Arc<NodeScope>;
}

/// Uninstalls the simulation when dropped.
pub struct SimulationGuard(());

impl Drop for SimulationGuard {
    fn drop(&mut self) {
        SIMULATION.with(|s| s.borrow_mut().take());
    }
}

/// Makes this thread simulated: [`now_ms`] is `epoch_ms` plus tokio's (paused) clock since
/// now, randomness comes from `seed`, [`blocking`] runs inline. Call it inside the simulation's
/// tokio runtime (current-thread, time paused, `rng_seed` set).
pub fn simulate(seed: u64, epoch_ms: u64) -> SimulationGuard {
    let simulation = Simulation {
        rng: rand::rngs::StdRng::seed_from_u64(seed),
        epoch_ms,
        origin: tokio::time::Instant::now(),
    };
    SIMULATION.with(|s| *s.borrow_mut() = Some(simulation));
    SimulationGuard(())
}

/// Whether this thread runs a simulation.
pub fn is_simulated() -> bool {
    SIMULATION.with(|s| s.borrow().is_some())
}

/// Milliseconds since the Unix epoch: the system clock, or the simulation's.
pub fn now_ms() -> u64 {
    let simulated = SIMULATION.with(|s| {
        s.borrow()
            .as_ref()
            .map(|sim| sim.epoch_ms + sim.origin.elapsed().as_millis() as u64)
    });
    simulated.unwrap_or_else(|| {
        #[allow(clippy::disallowed_methods)] // this is the seam
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_millis() as u64)
            .unwrap_or_default()
    })
}

/// A random `u64`: from the OS, or the simulation's seeded generator.
pub fn random_u64() -> u64 {
    ShoalRng.next_u64()
}

/// A random duration below `ms` milliseconds.
pub fn random_below(ms: u64) -> Duration {
    Duration::from_millis(random_u64() % ms.max(1))
}

/// openraft's and shoal's random generator: the simulation's when one runs on this thread,
/// else the thread's OS-seeded one.
#[derive(Debug, Clone, Copy, Default)]
pub struct ShoalRng;

impl ShoalRng {
    fn with<T>(draw: impl FnOnce(&mut dyn RngCore) -> T) -> T {
        SIMULATION.with(|s| match s.borrow_mut().as_mut() {
            Some(sim) => draw(&mut sim.rng),
            None => draw(&mut rand::thread_rng()),
        })
    }
}

impl RngCore for ShoalRng {
    fn next_u32(&mut self) -> u32 {
        Self::with(|rng| rng.next_u32())
    }

    fn next_u64(&mut self) -> u64 {
        Self::with(|rng| rng.next_u64())
    }

    fn fill_bytes(&mut self, dest: &mut [u8]) {
        Self::with(|rng| rng.fill_bytes(dest))
    }

    fn try_fill_bytes(&mut self, dest: &mut [u8]) -> Result<(), rand::Error> {
        Self::with(|rng| rng.try_fill_bytes(dest))
    }
}

/// Blocking work that failed to finish (it panicked, or the runtime is shutting down).
#[derive(Debug, thiserror::Error)]
#[error("blocking work did not finish: {0}")]
pub struct BlockingError(String);

/// Runs blocking work (redb, file system) off the async threads — or inline in a simulation.
pub async fn blocking<F, R>(work: F) -> Result<R, BlockingError>
where
    F: FnOnce() -> R + Send + 'static,
    R: Send + 'static,
{
    if is_simulated() {
        return Ok(work());
    }
    #[allow(clippy::disallowed_methods)] // this is the seam
    tokio::task::spawn_blocking(work)
        .await
        .map_err(|e| BlockingError(e.to_string()))
}

/// Spawns a task; inside a [`NodeScope`], the task belongs to that node (see the module docs).
pub fn spawn<F>(future: F) -> tokio::task::JoinHandle<F::Output>
where
    F: Future + Send + 'static,
    F::Output: Send + 'static,
{
    match SCOPE.try_with(Arc::clone) {
        Ok(scope) => scope.spawn(future),
        #[allow(clippy::disallowed_methods)] // this is the seam
        Err(_) => tokio::spawn(future),
    }
}

/// The tasks of one simulated node: every task spawned inside the scope (and, transitively,
/// every task those spawn) belongs to it, so the node can be crashed (all aborted) and paused
/// (none polled) as a whole.
#[derive(Debug, Default)]
pub struct NodeScope {
    tasks: Mutex<Vec<tokio::task::AbortHandle>>,
    paused: AtomicBool,
    crashed: AtomicBool,
    /// Tasks that found the node paused, woken when it resumes.
    waiting: Mutex<Vec<Waker>>,
}

fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

impl NodeScope {
    pub fn new() -> Arc<NodeScope> {
        Arc::new(NodeScope::default())
    }

    /// Spawns `future` as a task of this node.
    pub fn spawn<F>(self: &Arc<Self>, future: F) -> tokio::task::JoinHandle<F::Output>
    where
        F: Future + Send + 'static,
        F::Output: Send + 'static,
    {
        let gated = Gated {
            scope: self.clone(),
            future: Box::pin(future),
        };
        #[allow(clippy::disallowed_methods)] // this is the seam
        let handle = tokio::spawn(SCOPE.scope(self.clone(), gated));
        let mut tasks = lock(&self.tasks);
        if tasks.len() >= 64 && tasks.len().is_power_of_two() {
            tasks.retain(|task| !task.is_finished());
        }
        tasks.push(handle.abort_handle());
        handle
    }

    /// Aborts every task of the node: what it was doing stops at its last await.
    pub fn crash(&self) {
        self.crashed.store(true, Ordering::SeqCst);
        for task in lock(&self.tasks).drain(..) {
            task.abort();
        }
        self.resume();
    }

    pub fn pause(&self) {
        self.paused.store(true, Ordering::SeqCst);
    }

    pub fn resume(&self) {
        self.paused.store(false, Ordering::SeqCst);
        for waker in lock(&self.waiting).drain(..) {
            waker.wake();
        }
    }

    pub fn is_paused(&self) -> bool {
        self.paused.load(Ordering::SeqCst)
    }
}

/// A node's task: polled only while its node is neither paused nor crashed.
struct Gated<F: Future> {
    scope: Arc<NodeScope>,
    future: Pin<Box<F>>,
}

impl<F: Future> Future for Gated<F> {
    type Output = F::Output;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<F::Output> {
        if self.scope.crashed.load(Ordering::SeqCst) {
            return Poll::Pending; // aborted, and dropped on the next scheduler pass
        }
        if self.scope.is_paused() {
            lock(&self.scope.waiting).push(cx.waker().clone());
            return Poll::Pending;
        }
        self.future.as_mut().poll(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(flavor = "current_thread", start_paused = true)]
    async fn a_simulation_draws_the_same_numbers_from_the_same_seed() {
        let draw = || {
            let _sim = simulate(7, 1_000);
            (random_u64(), random_u64(), now_ms())
        };
        assert_eq!(draw(), draw());
        assert!(!is_simulated());
        assert_ne!(random_u64(), random_u64());
    }

    #[tokio::test(flavor = "current_thread", start_paused = true)]
    async fn a_crashed_scope_stops_its_tasks_and_a_paused_one_holds_them() {
        let scope = NodeScope::new();
        let ticks = Arc::new(std::sync::atomic::AtomicU32::new(0));
        let counter = ticks.clone();
        scope.spawn(async move {
            // A task spawned by a node's task belongs to the node too.
            spawn(async move {
                loop {
                    counter.fetch_add(1, Ordering::SeqCst);
                    tokio::time::sleep(Duration::from_millis(10)).await;
                }
            });
        });
        tokio::time::sleep(Duration::from_millis(95)).await;
        let running = ticks.load(Ordering::SeqCst);
        assert!(running >= 9, "{running}");
        scope.pause();
        tokio::time::sleep(Duration::from_millis(100)).await;
        assert_eq!(
            ticks.load(Ordering::SeqCst),
            running,
            "a paused node does nothing"
        );
        scope.resume();
        tokio::time::sleep(Duration::from_millis(50)).await;
        let resumed = ticks.load(Ordering::SeqCst);
        assert!(resumed > running, "{resumed}");
        scope.crash();
        tokio::time::sleep(Duration::from_millis(100)).await;
        assert_eq!(ticks.load(Ordering::SeqCst), resumed);
    }
}

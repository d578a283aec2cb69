//! Cpu and memory limits for process steps, through a cgroup per step that the step joins
//! before it becomes bwrap (the guard writes its pid into the cgroup's `cgroup.procs`, so
//! everything the step starts is inside from its first instruction).
//!
//! - cgroup v2 (one unified hierarchy): the step's cgroup is made below the node's own, which
//!   must hand the `memory` and `cpu` controllers to its children (`cgroup.subtree_control`;
//!   the node enables them when it may). `memory.max` and `memory.swap.max = 0`, `cpu.max`.
//! - cgroup v1 (a hierarchy per controller): below the node's cgroup in the `memory` and
//!   `cpu` hierarchies. `memory.limit_in_bytes` (and `memory.memsw.limit_in_bytes` where swap
//!   is accounted), `cpu.cfs_quota_us` over `cpu.cfs_period_us`.
//!
//! Where neither can be used (no write access, controllers not delegated), steps run
//! without limits and say so in their system logs.

use std::path::{Path, PathBuf};

use shoal_raft::job::Resources;

/// CFS period: quotas are given per 100 ms.
const CPU_PERIOD_US: u64 = 100_000;

/// Where this node makes its steps' cgroups.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Hierarchy {
    /// The node's cgroup in the unified hierarchy.
    V2(PathBuf),
    /// The node's cgroup in the memory and the cpu hierarchies.
    V1 { memory: PathBuf, cpu: PathBuf },
}

/// The hierarchy steps' cgroups go into, or why there is none. Found once.
fn hierarchy() -> &'static Result<Hierarchy, String> {
    static FOUND: std::sync::OnceLock<Result<Hierarchy, String>> = std::sync::OnceLock::new();
    FOUND.get_or_init(|| {
        let found = find_hierarchy(Path::new("/sys/fs/cgroup"));
        match &found {
            Ok(hierarchy) => tracing::info!(?hierarchy, "process steps get cgroup limits"),
            Err(reason) => tracing::warn!(%reason, "process steps run without cpu/memory limits"),
        }
        found
    })
}

fn find_hierarchy(root: &Path) -> Result<Hierarchy, String> {
    let own = std::fs::read_to_string("/proc/self/cgroup")
        .map_err(|e| format!("cannot read /proc/self/cgroup: {e}"))?;
    let lines: Vec<(&str, &str)> = own
        .lines()
        .filter_map(|line| {
            let mut parts = line.splitn(3, ':');
            let (_, controllers, path) = (parts.next()?, parts.next()?, parts.next()?);
            Some((controllers, path.trim_start_matches('/')))
        })
        .collect();
    let v1 = |name: &str| {
        let (controllers, path) = lines
            .iter()
            .find(|(controllers, _)| controllers.split(',').any(|c| c == name))?;
        // Mounted under its own name, or under the joined names (`cpu,cpuacct`).
        [*controllers, name]
            .iter()
            .map(|dir| root.join(dir).join(path))
            .find(|dir| dir.join("cgroup.procs").exists())
    };
    if let (Some(memory), Some(cpu)) = (v1("memory"), v1("cpu")) {
        return writable(&memory)
            .and(writable(&cpu))
            .map(|()| Hierarchy::V1 { memory, cpu });
    }
    let unified = lines
        .iter()
        .find(|(controllers, _)| controllers.is_empty())
        .map(|(_, path)| root.join(path))
        .filter(|dir| dir.join("cgroup.controllers").exists())
        .ok_or("no cgroup v1 memory and cpu hierarchies and no cgroup v2 one")?;
    let delegated = |dir: &Path| {
        let enabled =
            std::fs::read_to_string(dir.join("cgroup.subtree_control")).unwrap_or_default();
        ["memory", "cpu"]
            .iter()
            .all(|c| enabled.split_whitespace().any(|e| e == *c))
    };
    if !delegated(&unified) {
        // A cgroup that holds processes cannot hand controllers to children (the kernel's
        // "no internal processes" rule). A node alone in its cgroup (a systemd service with
        // `Delegate=yes`, a container) moves itself into a leaf of its own, `shoal-node`,
        // then enables them for the step cgroups beside it.
        let enable =
            |dir: &Path| std::fs::write(dir.join("cgroup.subtree_control"), "+memory +cpu");
        if enable(&unified).is_err() {
            let leaf = unified.join("shoal-node");
            let _ = std::fs::create_dir(&leaf);
            if std::fs::write(leaf.join("cgroup.procs"), std::process::id().to_string()).is_ok() {
                let _ = enable(&unified);
            }
        }
    }
    if !delegated(&unified) {
        return Err(format!(
            "{} does not hand the memory and cpu controllers to its children \
             (cgroup.subtree_control)",
            unified.display()
        ));
    }
    writable(&unified).map(|()| Hierarchy::V2(unified))
}

/// Whether a child cgroup can be made (and removed) in `dir`.
fn writable(dir: &Path) -> Result<(), String> {
    let probe = dir.join(format!("shoal-probe-{}", std::process::id()));
    std::fs::create_dir(&probe)
        .and_then(|()| std::fs::remove_dir(&probe))
        .map_err(|e| format!("cannot make a cgroup in {}: {e}", dir.display()))
}

/// The cgroup of one step; removed by [`StepCgroup::remove`].
#[derive(Debug)]
pub(crate) struct StepCgroup {
    hierarchy: &'static Hierarchy,
    name: String,
    ram_bytes: u64,
}

/// The cpu quota for `cpu_millis` thousandths of a core, per [`CPU_PERIOD_US`].
fn cpu_quota_us(cpu_millis: u64) -> u64 {
    (cpu_millis * CPU_PERIOD_US / 1000).max(1000)
}

/// The cpu a task asks for in thousandths of a core (0 = not asked).
fn cpu_millis(resources: &Resources) -> u64 {
    if resources.cpu_millis > 0 {
        resources.cpu_millis
    } else {
        u64::from(resources.cpu_cores) * 1000
    }
}

impl StepCgroup {
    /// Whether a step of work asking `resources` gets a cgroup: it asks for cpu or memory.
    pub(crate) fn wanted(resources: &Resources) -> bool {
        cpu_millis(resources) > 0 || resources.ram_bytes > 0
    }

    /// Makes the cgroup of step `name` with the limits `resources` ask for. `Ok(None)` when
    /// the task asks for no limit; `Err` says why limits cannot be applied here. Blocking.
    pub(crate) fn create(name: &str, resources: &Resources) -> Result<Option<StepCgroup>, String> {
        if !Self::wanted(resources) {
            return Ok(None);
        }
        let (cpu, ram) = (cpu_millis(resources), resources.ram_bytes);
        let hierarchy = hierarchy().as_ref().map_err(Clone::clone)?;
        let cgroup = StepCgroup {
            hierarchy,
            name: name.to_string(),
            ram_bytes: ram,
        };
        let made = cgroup.dirs().iter().try_for_each(|dir| {
            std::fs::create_dir(dir)
                .map_err(|e| format!("cannot make cgroup {}: {e}", dir.display()))
        });
        if let Err(error) = made.and_then(|()| cgroup.write_limits(cpu, ram)) {
            cgroup.remove();
            return Err(error);
        }
        Ok(Some(cgroup))
    }

    fn dirs(&self) -> Vec<PathBuf> {
        match self.hierarchy {
            Hierarchy::V2(base) => vec![base.join(&self.name)],
            Hierarchy::V1 { memory, cpu } if memory == cpu => vec![memory.join(&self.name)],
            Hierarchy::V1 { memory, cpu } => vec![memory.join(&self.name), cpu.join(&self.name)],
        }
    }

    fn write_limits(&self, cpu: u64, ram: u64) -> Result<(), String> {
        let write = |dir: &Path, file: &str, value: String| {
            std::fs::write(dir.join(file), &value)
                .map_err(|e| format!("cannot set {file} = {value} in {}: {e}", dir.display()))
        };
        match self.hierarchy {
            Hierarchy::V2(base) => {
                let dir = base.join(&self.name);
                if ram > 0 {
                    write(&dir, "memory.max", ram.to_string())?;
                    // No swap: a step over its memory is killed, not slowed.
                    let _ = write(&dir, "memory.swap.max", "0".to_string());
                }
                if cpu > 0 {
                    write(
                        &dir,
                        "cpu.max",
                        format!("{} {CPU_PERIOD_US}", cpu_quota_us(cpu)),
                    )?;
                }
            }
            Hierarchy::V1 {
                memory,
                cpu: cpu_dir,
            } => {
                if ram > 0 {
                    let dir = memory.join(&self.name);
                    write(&dir, "memory.limit_in_bytes", ram.to_string())?;
                    // Only where swap is accounted; without it there is nothing to limit.
                    let _ = write(&dir, "memory.memsw.limit_in_bytes", ram.to_string());
                }
                if cpu > 0 {
                    let dir = cpu_dir.join(&self.name);
                    write(&dir, "cpu.cfs_period_us", CPU_PERIOD_US.to_string())?;
                    write(&dir, "cpu.cfs_quota_us", cpu_quota_us(cpu).to_string())?;
                }
            }
        }
        Ok(())
    }

    /// The files the step writes its pid into to join the cgroup.
    pub(crate) fn procs_files(&self) -> Vec<PathBuf> {
        self.dirs()
            .into_iter()
            .map(|dir| dir.join("cgroup.procs"))
            .collect()
    }

    /// Whether the kernel killed something of the step for exceeding its memory. Blocking.
    pub(crate) fn oom_killed(&self) -> bool {
        let events = match self.hierarchy {
            Hierarchy::V2(base) => base.join(&self.name).join("memory.events"),
            Hierarchy::V1 { memory, .. } => memory.join(&self.name).join("memory.oom_control"),
        };
        std::fs::read_to_string(events).is_ok_and(|text| {
            text.lines().any(|line| {
                line.strip_prefix("oom_kill ")
                    .and_then(|n| n.trim().parse::<u64>().ok())
                    .is_some_and(|n| n > 0)
            })
        })
    }

    /// The memory limit, for saying what was exceeded.
    pub(crate) fn ram_bytes(&self) -> u64 {
        self.ram_bytes
    }

    /// Kills what is left of the step and removes its cgroup. Blocking: waits up to a second
    /// for the kernel to let the last processes go.
    pub(crate) fn remove(&self) {
        for dir in self.dirs() {
            remove_cgroup(&dir);
        }
    }
}

/// Kills every process in the cgroup `dir` and removes it, retrying while it is busy.
fn remove_cgroup(dir: &Path) {
    for _ in 0..100 {
        let procs = std::fs::read_to_string(dir.join("cgroup.procs")).unwrap_or_default();
        for pid in procs.lines().filter_map(|l| l.trim().parse::<i32>().ok()) {
            let _ = nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(pid),
                nix::sys::signal::Signal::SIGKILL,
            );
        }
        match std::fs::remove_dir(dir) {
            Ok(()) => return,
            Err(error) if error.kind() == std::io::ErrorKind::NotFound => return,
            Err(_) => std::thread::sleep(std::time::Duration::from_millis(10)),
        }
    }
    tracing::warn!(dir = %dir.display(), "cannot remove a step cgroup: still busy");
}

/// Removes the step cgroups a previous life of this node left (named from `prefix`, the
/// node's part of every step's name), killing what still runs in them. Blocking.
pub(crate) fn remove_leftovers(prefix: &str) -> usize {
    let Ok(hierarchy) = hierarchy() else {
        return 0;
    };
    let parents = match hierarchy {
        Hierarchy::V2(base) => vec![base.clone()],
        Hierarchy::V1 { memory, cpu } => vec![memory.clone(), cpu.clone()],
    };
    let mut removed = 0;
    for parent in parents {
        let Ok(entries) = std::fs::read_dir(&parent) else {
            continue;
        };
        for entry in entries.flatten() {
            if entry.file_name().to_string_lossy().starts_with(prefix) {
                remove_cgroup(&entry.path());
                removed += 1;
            }
        }
    }
    removed
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cpu_asks_become_quotas_per_period() {
        assert_eq!(cpu_quota_us(1000), 100_000);
        assert_eq!(cpu_quota_us(2500), 250_000);
        assert_eq!(cpu_quota_us(1), 1000, "at least a millisecond per period");
        let cores = Resources {
            cpu_cores: 2,
            ..Resources::default()
        };
        assert_eq!(cpu_millis(&cores), 2000);
        let millis = Resources {
            cpu_cores: 2,
            cpu_millis: 500,
            ..Resources::default()
        };
        assert_eq!(cpu_millis(&millis), 500);
    }

    #[test]
    fn a_task_asking_nothing_gets_no_cgroup() {
        let none = StepCgroup::create("x", &Resources::default()).expect("nothing to do");
        assert!(none.is_none());
    }
}

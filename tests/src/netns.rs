//! Nodes on hosts of their own: one network namespace per node (and one for an observer),
//! joined by a bridge, so a test can cut a node off the way a real network does — its
//! packets dropped, no connection closed — and heal it again.
//!
//! Needs root, `ip` and `iptables` (CI runs as root; `scripts/test.sh` installs iptables).
//! Everything lives in a private subnet of 10.251.0.0/16 on interfaces the test creates; the
//! bridge's own address lets the test process (in the root namespace) talk to the nodes.
//! Dropping a [`Net`] deletes the namespaces, the bridge and the one forwarding rule it
//! added; what a killed test left behind is removed by the next [`Net::create`].

use std::process::{Command, Stdio};

use anyhow::{Context, Result, bail};

/// Private address block; the third byte tells test processes apart.
const PREFIX: &str = "10.251";

/// Runs a command, failing with its stderr.
fn run(program: &str, args: &[&str]) -> Result<()> {
    let output = Command::new(program)
        .args(args)
        .stdin(Stdio::null())
        .output()
        .with_context(|| format!("run {program}"))?;
    if !output.status.success() {
        bail!(
            "{program} {}: {}",
            args.join(" "),
            String::from_utf8_lossy(&output.stderr).trim()
        );
    }
    Ok(())
}

/// The namespaces, the bridge and the addresses of one test.
pub struct Net {
    tag: String,
    subnet: u8,
    hosts: usize,
    created: Vec<String>,
    bridge_up: bool,
    forward_rule: bool,
}

impl Net {
    /// Whether this process may build namespaces (root, with `ip` and `iptables`).
    pub fn available() -> bool {
        let root = std::fs::read_to_string("/proc/self/status").is_ok_and(|status| {
            status
                .lines()
                .find_map(|line| line.strip_prefix("Uid:"))
                .and_then(|ids| ids.split_whitespace().nth(1))
                == Some("0")
        });
        root && Command::new("iptables")
            .arg("--version")
            .stdout(Stdio::null())
            .status()
            .is_ok_and(|s| s.success())
    }

    /// `hosts` namespaces (nodes) plus one for an observer, on one bridge.
    pub fn create(hosts: usize) -> Result<Net> {
        static NETS: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
        let made = NETS.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let pid = std::process::id();
        sweep_stale();
        let mut net = Net {
            tag: format!("{pid}x{}", made % 10),
            subnet: ((pid + made) % 200) as u8 + 20,
            hosts,
            created: Vec::new(),
            bridge_up: false,
            forward_rule: false,
        };
        let bridge = net.bridge();
        run("ip", &["link", "add", &bridge, "type", "bridge"])?;
        net.bridge_up = true;
        let host_cidr = format!("{}/24", net.host_ip());
        run("ip", &["addr", "add", &host_cidr, "dev", &bridge])?;
        run("ip", &["link", "set", &bridge, "up"])?;
        // Docker's FORWARD policy (DROP) would stop bridged traffic when br_netfilter is on.
        run(
            "iptables",
            &[
                "-I", "FORWARD", "-i", &bridge, "-o", &bridge, "-j", "ACCEPT",
            ],
        )?;
        net.forward_rule = true;
        for index in 0..=hosts {
            net.add_host(index)?;
        }
        Ok(net)
    }

    fn bridge(&self) -> String {
        format!("shb{}", self.tag)
    }

    /// The namespace of node `index` (`hosts` is the observer's).
    pub fn namespace(&self, index: usize) -> String {
        format!("shoal-{}-{index}", self.tag)
    }

    /// The test process's address on the bridge.
    pub fn host_ip(&self) -> String {
        format!("{PREFIX}.{}.1", self.subnet)
    }

    /// Node `index`'s address (`hosts`: the observer's).
    pub fn ip(&self, index: usize) -> String {
        format!("{PREFIX}.{}.{}", self.subnet, 10 + index)
    }

    /// The observer namespace's index.
    pub fn observer(&self) -> usize {
        self.hosts
    }

    fn add_host(&mut self, index: usize) -> Result<()> {
        let ns = self.namespace(index);
        run("ip", &["netns", "add", &ns])?;
        self.created.push(ns.clone());
        let veth = format!("sh{}n{index}", self.tag);
        run(
            "ip",
            &[
                "link", "add", &veth, "type", "veth", "peer", "name", "eth0", "netns", &ns,
            ],
        )?;
        run(
            "ip",
            &["link", "set", &veth, "master", &self.bridge(), "up"],
        )?;
        let cidr = format!("{}/24", self.ip(index));
        self.exec(index, "ip", &["addr", "add", &cidr, "dev", "eth0"])?;
        self.exec(index, "ip", &["link", "set", "eth0", "up"])?;
        self.exec(index, "ip", &["link", "set", "lo", "up"])
    }

    /// Runs `program args…` inside host `index`'s namespace.
    pub fn exec(&self, index: usize, program: &str, args: &[&str]) -> Result<()> {
        let ns = self.namespace(index);
        let mut full = vec!["netns", "exec", &ns, program];
        full.extend_from_slice(args);
        run("ip", &full)
    }

    /// A command that runs `program` inside host `index`'s namespace.
    pub fn command(&self, index: usize, program: &std::path::Path) -> Command {
        let mut command = Command::new("ip");
        command
            .args(["netns", "exec", &self.namespace(index)])
            .arg(program);
        command
    }

    /// Drops every packet between node `index` and each of `others` (both ways), as a
    /// partition does: nothing is closed, nothing answers.
    pub fn cut(&self, index: usize, others: &[usize]) -> Result<()> {
        for &other in others {
            let ip = self.ip(other);
            self.exec(index, "iptables", &["-A", "INPUT", "-s", &ip, "-j", "DROP"])?;
            self.exec(
                index,
                "iptables",
                &["-A", "OUTPUT", "-d", &ip, "-j", "DROP"],
            )?;
        }
        Ok(())
    }

    /// Lets node `index` talk to everyone again.
    pub fn heal(&self, index: usize) -> Result<()> {
        self.exec(index, "iptables", &["-F", "INPUT"])?;
        self.exec(index, "iptables", &["-F", "OUTPUT"])
    }

    /// Heals every node.
    pub fn heal_all(&self) -> Result<()> {
        (0..self.hosts).try_for_each(|index| self.heal(index))
    }
}

impl Drop for Net {
    fn drop(&mut self) {
        let created = std::mem::take(&mut self.created);
        let indexes: Vec<usize> = (0..=self.hosts).collect();
        remove(
            &self.tag,
            &created,
            &indexes,
            self.forward_rule,
            self.bridge_up,
        );
    }
}

/// Removes what tests that were killed before they could clean up left behind: namespaces
/// named `shoal-<pid>x<n>-<index>` whose process is gone, with their links, bridge and
/// forwarding rule.
fn sweep_stale() {
    let Ok(output) = Command::new("ip").args(["netns", "list"]).output() else {
        return;
    };
    let mut stale: std::collections::BTreeMap<String, (Vec<String>, Vec<usize>)> =
        Default::default();
    for line in String::from_utf8_lossy(&output.stdout).lines() {
        let Some(name) = line.split_whitespace().next() else {
            continue;
        };
        let Some((tag, index)) = name
            .strip_prefix("shoal-")
            .and_then(|rest| rest.rsplit_once('-'))
        else {
            continue;
        };
        let (Some(pid), Ok(index)) = (tag.split('x').next(), index.parse::<usize>()) else {
            continue;
        };
        if pid.parse::<u32>().is_err() || std::path::Path::new("/proc").join(pid).exists() {
            continue;
        }
        let entry = stale.entry(tag.to_owned()).or_default();
        entry.0.push(name.to_owned());
        entry.1.push(index);
    }
    for (tag, (namespaces, indexes)) in stale {
        eprintln!("removing network namespaces a killed test left: {namespaces:?}");
        remove(&tag, &namespaces, &indexes, true, true);
    }
}

/// Deletes the namespaces (killing what still runs in them), the veth links of `indexes`,
/// the forwarding rule and the bridge of the net tagged `tag`; errors are ignored.
fn remove(tag: &str, namespaces: &[String], indexes: &[usize], rule: bool, bridge_up: bool) {
    for ns in namespaces {
        // Whatever still runs in it (a task's process) would keep it alive.
        if let Ok(output) = Command::new("ip").args(["netns", "pids", ns]).output() {
            for pid in String::from_utf8_lossy(&output.stdout).split_whitespace() {
                if let Ok(pid) = pid.parse::<i32>() {
                    let pid = nix::unistd::Pid::from_raw(pid);
                    let _ = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGKILL);
                }
            }
        }
        let _ = run("ip", &["netns", "delete", ns]);
    }
    for index in indexes {
        let _ = run("ip", &["link", "delete", &format!("sh{tag}n{index}")]);
    }
    let bridge = format!("shb{tag}");
    if rule {
        let _ = run(
            "iptables",
            &[
                "-D", "FORWARD", "-i", &bridge, "-o", &bridge, "-j", "ACCEPT",
            ],
        );
    }
    if bridge_up {
        let _ = run("ip", &["link", "delete", &bridge]);
    }
}

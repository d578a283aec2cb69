//! The node's configuration: a TOML file (every key optional), command-line flags that
//! override it, and the checks that refuse a config which would be unsafe or cannot work.
//!
//! With no file and no flags this is the embedded default: a single-node cluster with its
//! data in `./shoal-data`, HTTP on `127.0.0.1:8000` and Raft traffic on `127.0.0.1:7000`.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::str::FromStr;

use libp2p::Multiaddr;
use serde::{Deserialize, Serialize};

/// Largest `http.tokens_file` read (1,024 tokens of a few hundred bytes fit many times).
const TOKENS_FILE_BYTES_MAX: u64 = 1024 * 1024;

/// The tokens of an `http.tokens_file`: `tokens = [...]`, nothing else.
fn read_tokens_file(path: &Path) -> Result<Vec<TokenConfig>, ConfigError> {
    #[derive(Deserialize)]
    #[serde(deny_unknown_fields)]
    struct TokensFile {
        tokens: Vec<TokenConfig>,
    }
    let read_error = |reason: String| ConfigError::Read {
        path: path.to_path_buf(),
        reason,
    };
    let size = std::fs::metadata(path)
        .map_err(|e| read_error(e.to_string()))?
        .len();
    if size > TOKENS_FILE_BYTES_MAX {
        return Err(read_error(format!(
            "http.tokens_file is {size} bytes, more than {TOKENS_FILE_BYTES_MAX}"
        )));
    }
    let text = std::fs::read_to_string(path).map_err(|e| read_error(e.to_string()))?;
    let file: TokensFile = toml::from_str(&text).map_err(|e| ConfigError::Parse {
        path: path.to_path_buf(),
        reason: e.to_string(),
    })?;
    Ok(file.tokens)
}

/// Most bearer tokens a config may list.
const TOKENS_MAX: usize = 1024;
/// Most seeds a config may list.
const SEEDS_MAX: usize = 256;
/// Most addresses a node may advertise.
const ADVERTISE_MAX: usize = 16;
/// Bounds on the lease, so a typo cannot make failover take a day or flap every tick.
const LEASE_MS_MIN: u64 = 1_000;
const LEASE_MS_MAX: u64 = 3_600_000;
/// Most concurrent attempts one node may be configured for.
const SLOTS_MAX: u32 = 4096;
/// Most `worker.process_binds` and `worker.process_env` entries, and the longest value.
const PROCESS_BINDS_MAX: usize = 64;
const PROCESS_ENV_MAX: usize = 256;
const PROCESS_TEXT_BYTES_MAX: usize = 4096;
/// Most cores a node may offer.
const CPUS_MAX: f64 = 65_536.0;

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read config {path}: {reason}")]
    Read { path: PathBuf, reason: String },
    #[error("invalid config {path}: {reason}")]
    Parse { path: PathBuf, reason: String },
    #[error("invalid {key}: {reason}")]
    Invalid { key: &'static str, reason: String },
}

fn invalid(key: &'static str, reason: impl Into<String>) -> ConfigError {
    ConfigError::Invalid {
        key,
        reason: reason.into(),
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Config {
    /// Shown to people; defaults to the host name.
    pub node_name: String,
    /// Holds `node.key`, `raft-log.redb`, `applied.mark`, `state.redb`, `snapshots/` and
    /// `work/`.
    pub data_dir: PathBuf,
    pub http: HttpConfig,
    pub p2p: P2pConfig,
    pub raft: RaftConfig,
    pub worker: WorkerConfig,
    pub storage: StorageConfig,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct HttpConfig {
    pub listen: String,
    /// Bearer tokens; empty means no auth, which is allowed only on loopback.
    pub tokens: Vec<TokenConfig>,
    /// A TOML file with more tokens, as `tokens = [...]` in the form of `http.tokens` (e.g. a
    /// mounted Kubernetes Secret, so the config itself holds none); read with the config.
    pub tokens_file: String,
    /// URL peers and clients should use for this node; defaults to `http://<listen>`.
    pub advertise_url: String,
    /// Largest request body accepted; larger ones get 413.
    pub body_bytes_max: usize,
    /// When set, `GET /metrics` asks for it as a bearer token; otherwise `/metrics` is open
    /// like `/healthz`.
    pub metrics_token: String,
}

/// One bearer token: a bare string is an administrator's; a table names a user, who sees only
/// the tasks submitted with a token of the same name (unless `admin = true`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum TokenConfig {
    Admin(String),
    User {
        token: String,
        name: String,
        #[serde(default)]
        admin: bool,
    },
}

/// Name recorded for tasks submitted with a bare (administrator) token.
pub const ADMIN_NAME: &str = "admin";

impl TokenConfig {
    pub fn token(&self) -> &str {
        match self {
            TokenConfig::Admin(token) | TokenConfig::User { token, .. } => token,
        }
    }

    pub fn name(&self) -> &str {
        match self {
            TokenConfig::Admin(_) => ADMIN_NAME,
            TokenConfig::User { name, .. } => name,
        }
    }

    pub fn is_admin(&self) -> bool {
        match self {
            TokenConfig::Admin(_) => true,
            TokenConfig::User { admin, .. } => *admin,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct P2pConfig {
    /// libp2p listen multiaddr.
    pub listen: String,
    /// Multiaddrs of other nodes, e.g. `/ip4/10.0.0.2/tcp/7000` or `/dns4/host2/tcp/7000`
    /// (names are resolved by the system resolver at each dial).
    pub seeds: Vec<String>,
    /// Multiaddrs other nodes should dial for this one, e.g. `/dns4/host1/tcp/7000`; empty
    /// means the address it listens on. Set it when listening on `0.0.0.0` or behind names
    /// whose addresses change (Kubernetes pods).
    pub advertise: Vec<String>,
    pub bootstrap_expect: usize,
    /// File with the pre-shared key; peers without the same key cannot connect.
    pub cluster_key_file: String,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct RaftConfig {
    pub heartbeat_ms: u64,
    pub election_timeout_ms: [u64; 2],
    pub voters_max: usize,
    /// Entries between snapshots; the log behind a snapshot is purged.
    pub snapshot_every_entries: u64,
    /// Entries kept behind a snapshot, so a briefly absent follower catches up from the log.
    pub log_kept_entries: u64,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct WorkerConfig {
    /// Concurrent attempts; 0 means the number of cores.
    pub slots: u32,
    /// Cores the attempts on this node may take together (fractions allowed); 0 means the
    /// cores this process may use. An attempt takes what its task asks, one core when it
    /// asks nothing.
    pub cpus: f64,
    /// Memory the attempts on this node may take together, as a size like `16Gi` or `512M`;
    /// empty means the machine's memory (or the cgroup limit it runs under).
    pub memory: String,
    /// `auto`, `docker` or `process`.
    pub executor: String,
    /// Attempt working directories; empty means `<data_dir>/work`.
    pub workdir: String,
    /// A node silent this long loses its claims.
    pub lease_ms: u64,
    /// The network the docker executor's containers join (`none` cuts them off); empty
    /// means the engine's default.
    pub docker_network: String,
    /// PATH inside the process executor's sandbox; empty means the system directories
    /// (`/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin`).
    pub process_path: String,
    /// Host paths the process executor's steps see read-only at the same path, besides the
    /// system directories (e.g. `/opt/conda`, `/home/shared`).
    pub process_binds: Vec<PathBuf>,
    /// Variables every process step gets (a task's own `env` overrides them).
    pub process_env: std::collections::BTreeMap<String, String>,
}

#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct StorageConfig {
    pub allowed_local_roots: Vec<PathBuf>,
    pub s3_endpoint: String,
    pub s3_region: String,
    pub s3_allow_http: bool,
    /// User for `ftp://` URLs that name none; empty = `anonymous`.
    pub ftp_user: String,
    /// Password paired with `ftp_user`.
    pub ftp_password: String,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            node_name: String::new(),
            data_dir: PathBuf::from("./shoal-data"),
            http: HttpConfig::default(),
            p2p: P2pConfig::default(),
            raft: RaftConfig::default(),
            worker: WorkerConfig::default(),
            storage: StorageConfig::default(),
        }
    }
}

impl Default for HttpConfig {
    fn default() -> Self {
        HttpConfig {
            listen: "127.0.0.1:8000".to_string(),
            tokens: Vec::new(),
            tokens_file: String::new(),
            advertise_url: String::new(),
            body_bytes_max: 8 * 1024 * 1024,
            metrics_token: String::new(),
        }
    }
}

impl Default for P2pConfig {
    fn default() -> Self {
        P2pConfig {
            listen: "/ip4/127.0.0.1/tcp/7000".to_string(),
            seeds: Vec::new(),
            advertise: Vec::new(),
            bootstrap_expect: 1,
            cluster_key_file: String::new(),
        }
    }
}

impl Default for RaftConfig {
    fn default() -> Self {
        RaftConfig {
            heartbeat_ms: 100,
            election_timeout_ms: [300, 600],
            voters_max: 5,
            snapshot_every_entries: 10_000,
            log_kept_entries: 1_000,
        }
    }
}

impl Default for WorkerConfig {
    fn default() -> Self {
        WorkerConfig {
            slots: 0,
            cpus: 0.0,
            memory: String::new(),
            executor: "auto".to_string(),
            workdir: String::new(),
            lease_ms: 10_000,
            docker_network: String::new(),
            process_path: String::new(),
            process_binds: Vec::new(),
            process_env: std::collections::BTreeMap::new(),
        }
    }
}

impl Config {
    /// Reads a TOML config file; keys it leaves out keep their defaults.
    pub fn from_file(path: &Path) -> Result<Config, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|e| ConfigError::Read {
            path: path.to_path_buf(),
            reason: e.to_string(),
        })?;
        let mut config = Config::from_toml(&text).map_err(|reason| ConfigError::Parse {
            path: path.to_path_buf(),
            reason,
        })?;
        if !config.http.tokens_file.is_empty() {
            let file = PathBuf::from(&config.http.tokens_file);
            config.http.tokens.extend(read_tokens_file(&file)?);
        }
        Ok(config)
    }

    pub fn from_toml(text: &str) -> Result<Config, String> {
        toml::from_str(text).map_err(|e| e.to_string())
    }

    /// The HTTP listen address, parsed.
    pub fn http_listen(&self) -> Result<SocketAddr, ConfigError> {
        SocketAddr::from_str(&self.http.listen).map_err(|e| invalid("http.listen", e.to_string()))
    }

    /// Checks everything that can be checked before the node starts.
    /// `insecure` allows HTTP beyond loopback without tokens.
    pub fn validate(&self, insecure: bool) -> Result<(), ConfigError> {
        let listen = self.http_listen()?;
        if !listen.ip().is_loopback() && self.http.tokens.is_empty() && !insecure {
            return Err(invalid(
                "http.listen",
                format!(
                    "{listen} is reachable from other hosts but http.tokens is empty; \
                     set tokens or pass --insecure"
                ),
            ));
        }
        let tokens = &self.http.tokens;
        if tokens.len() > TOKENS_MAX || tokens.iter().any(|t| t.token().len() < 16) {
            return Err(invalid(
                "http.tokens",
                format!("at most {TOKENS_MAX}, each at least 16 characters"),
            ));
        }
        if tokens
            .iter()
            .any(|t| t.name().is_empty() || t.name().len() > 128)
        {
            return Err(invalid("http.tokens", "a name must be 1 to 128 bytes"));
        }
        if tokens
            .iter()
            .any(|t| t.name() == ADMIN_NAME && !t.is_admin())
        {
            return Err(invalid(
                "http.tokens",
                format!("the name {ADMIN_NAME:?} is kept for administrators' tokens"),
            ));
        }
        let distinct: std::collections::BTreeSet<&str> = tokens.iter().map(|t| t.token()).collect();
        if distinct.len() != tokens.len() {
            return Err(invalid("http.tokens", "a token is listed twice"));
        }
        let metrics_token = &self.http.metrics_token;
        if !metrics_token.is_empty() && (metrics_token.len() < 16 || metrics_token.len() > 1024) {
            return Err(invalid(
                "http.metrics_token",
                "16 to 1024 characters, or empty for an open /metrics",
            ));
        }
        Multiaddr::from_str(&self.p2p.listen).map_err(|e| invalid("p2p.listen", e.to_string()))?;
        let p2p_loopback =
            self.p2p.listen.starts_with("/ip4/127.") || self.p2p.listen.starts_with("/ip6/::1/");
        if !p2p_loopback && self.p2p.cluster_key_file.is_empty() && !insecure {
            return Err(invalid(
                "p2p.listen",
                format!(
                    "{} is reachable from other hosts but p2p.cluster_key_file is empty; \
                     set a cluster key or pass --insecure",
                    self.p2p.listen
                ),
            ));
        }
        if self.p2p.seeds.len() > SEEDS_MAX {
            return Err(invalid("p2p.seeds", format!("at most {SEEDS_MAX}")));
        }
        for seed in &self.p2p.seeds {
            Multiaddr::from_str(seed).map_err(|e| invalid("p2p.seeds", format!("{seed}: {e}")))?;
        }
        let unspecified =
            self.p2p.listen.starts_with("/ip4/0.0.0.0/") || self.p2p.listen.starts_with("/ip6/::/");
        if unspecified && self.p2p.advertise.is_empty() {
            return Err(invalid(
                "p2p.advertise",
                format!(
                    "p2p.listen {} listens on every interface: say which address other nodes \
                     dial for this one (e.g. \"/dns4/host1/tcp/7000\")",
                    self.p2p.listen
                ),
            ));
        }
        if self.p2p.advertise.len() > ADVERTISE_MAX {
            return Err(invalid("p2p.advertise", format!("at most {ADVERTISE_MAX}")));
        }
        for addr in &self.p2p.advertise {
            let parsed = Multiaddr::from_str(addr)
                .map_err(|e| invalid("p2p.advertise", format!("{addr}: {e}")))?;
            let has_tcp = parsed
                .iter()
                .any(|p| matches!(p, libp2p::multiaddr::Protocol::Tcp(_)));
            if !has_tcp {
                return Err(invalid(
                    "p2p.advertise",
                    format!("{addr}: needs a /tcp/PORT part"),
                ));
            }
        }
        if self.p2p.bootstrap_expect == 0 {
            return Err(invalid("p2p.bootstrap_expect", "must be at least 1"));
        }
        self.validate_raft()?;
        self.validate_worker()
    }

    fn validate_raft(&self) -> Result<(), ConfigError> {
        let [low, high] = self.raft.election_timeout_ms;
        if self.raft.heartbeat_ms == 0 || low <= self.raft.heartbeat_ms || high <= low {
            return Err(invalid(
                "raft.election_timeout_ms",
                "needs heartbeat_ms < election_timeout_ms[0] < election_timeout_ms[1]",
            ));
        }
        if self.raft.voters_max == 0 || self.raft.voters_max > 9 {
            return Err(invalid("raft.voters_max", "must be between 1 and 9"));
        }
        if self.raft.snapshot_every_entries == 0 {
            return Err(invalid("raft.snapshot_every_entries", "must be at least 1"));
        }
        Ok(())
    }

    fn validate_worker(&self) -> Result<(), ConfigError> {
        if !(LEASE_MS_MIN..=LEASE_MS_MAX).contains(&self.worker.lease_ms) {
            return Err(invalid(
                "worker.lease_ms",
                format!("must be {LEASE_MS_MIN}..={LEASE_MS_MAX}"),
            ));
        }
        if self.worker.slots > SLOTS_MAX {
            return Err(invalid("worker.slots", format!("at most {SLOTS_MAX}")));
        }
        let cpus = self.worker.cpus;
        if cpus.is_nan() || !(cpus == 0.0 || (0.001..=CPUS_MAX).contains(&cpus)) {
            return Err(invalid(
                "worker.cpus",
                format!("must be 0 (all cores), or 0.001 up to {CPUS_MAX}"),
            ));
        }
        if !self.worker.memory.is_empty() {
            crate::pipeline::spec::memory_bytes(&self.worker.memory).ok_or_else(|| {
                invalid(
                    "worker.memory",
                    format!(
                        "{:?} is not a size like \"16Gi\" or \"512M\"",
                        self.worker.memory
                    ),
                )
            })?;
        }
        let network = &self.worker.docker_network;
        let name_ok = |c: char| c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | '-');
        if network.len() > 128 || !network.chars().all(name_ok) {
            return Err(invalid(
                "worker.docker_network",
                format!("{network:?} is not a network name (letters, digits, _ . -)"),
            ));
        }
        self.validate_process_sandbox()?;
        match self.worker.executor.as_str() {
            "auto" | "docker" | "process" | "noop" => Ok(()),
            other => Err(invalid(
                "worker.executor",
                format!("{other:?} is not auto, docker, process or noop"),
            )),
        }
    }

    fn validate_process_sandbox(&self) -> Result<(), ConfigError> {
        let worker = &self.worker;
        let path = &worker.process_path;
        if path.len() > PROCESS_TEXT_BYTES_MAX
            || path.split(':').any(|dir| !dir.starts_with('/')) && !path.is_empty()
        {
            return Err(invalid(
                "worker.process_path",
                "must be absolute directories separated by ':'",
            ));
        }
        if worker.process_binds.len() > PROCESS_BINDS_MAX {
            return Err(invalid(
                "worker.process_binds",
                format!("at most {PROCESS_BINDS_MAX} paths"),
            ));
        }
        for bind in &worker.process_binds {
            let parent = bind
                .components()
                .any(|c| c == std::path::Component::ParentDir);
            if !bind.is_absolute() || parent || bind == Path::new("/") {
                return Err(invalid(
                    "worker.process_binds",
                    format!(
                        "{} must be an absolute path below /, without ..",
                        bind.display()
                    ),
                ));
            }
        }
        if worker.process_env.len() > PROCESS_ENV_MAX {
            return Err(invalid(
                "worker.process_env",
                format!("at most {PROCESS_ENV_MAX} variables"),
            ));
        }
        for (name, value) in &worker.process_env {
            let mut chars = name.chars();
            let well_formed = chars
                .next()
                .is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
                && chars.all(|c| c.is_ascii_alphanumeric() || c == '_');
            if !well_formed || name == "PATH" || value.len() > PROCESS_TEXT_BYTES_MAX {
                return Err(invalid(
                    "worker.process_env",
                    format!(
                        "{name:?} must be a variable name (letters, digits, _), not PATH (see \
                         worker.process_path), with a value of at most \
                         {PROCESS_TEXT_BYTES_MAX} bytes"
                    ),
                ));
            }
        }
        Ok(())
    }

    /// What the process executor adds to every step.
    pub fn process_sandbox(&self) -> shoal_worker::ProcessSandbox {
        let worker = &self.worker;
        shoal_worker::ProcessSandbox {
            path: if worker.process_path.is_empty() {
                shoal_worker::DEFAULT_PATH.to_string()
            } else {
                worker.process_path.clone()
            },
            binds: worker.process_binds.clone(),
            env: worker
                .process_env
                .iter()
                .map(|(k, v)| (k.clone(), v.clone()))
                .collect(),
        }
    }

    /// The node name, or the host name when none is configured.
    pub fn node_name(&self) -> String {
        if !self.node_name.is_empty() {
            return self.node_name.clone();
        }
        std::fs::read_to_string("/etc/hostname")
            .map(|name| name.trim().to_string())
            .ok()
            .filter(|name| !name.is_empty())
            .unwrap_or_else(|| "shoal".to_string())
    }

    /// The cpu and memory this node's attempts may take together: configured, or detected.
    pub fn capacity(&self) -> shoal_raft::job::Capacity {
        let cpu_millis = if self.worker.cpus > 0.0 {
            (self.worker.cpus * 1000.0).round() as u64
        } else {
            u64::from(cores()) * 1000
        };
        let ram_bytes = crate::pipeline::spec::memory_bytes(&self.worker.memory)
            .filter(|_| !self.worker.memory.is_empty())
            .unwrap_or_else(machine_memory);
        shoal_raft::job::Capacity {
            cpu_millis,
            ram_bytes,
        }
    }

    /// Slots to run, with 0 resolved to the number of cores.
    pub fn slots(&self) -> u32 {
        if self.worker.slots > 0 {
            return self.worker.slots;
        }
        cores()
    }
}

/// The cores this process may use (its cgroup's quota and cpuset count).
fn cores() -> u32 {
    std::thread::available_parallelism()
        .map(|n| n.get() as u32)
        .unwrap_or(1)
}

/// The machine's memory, or the memory limit of the cgroup this process runs in when lower
/// (v2 `memory.max`, v1 `memory.limit_in_bytes`); when none can be read, a size so large it
/// never refuses work.
fn machine_memory() -> u64 {
    let total = std::fs::read_to_string("/proc/meminfo")
        .ok()
        .and_then(|text| {
            let line = text.lines().find(|l| l.starts_with("MemTotal:"))?;
            let kib: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
            Some(kib * 1024)
        })
        .unwrap_or(u64::MAX);
    let own = std::fs::read_to_string("/proc/self/cgroup").unwrap_or_default();
    let limits = own.lines().filter_map(|line| {
        let mut parts = line.splitn(3, ':');
        let (_, controllers, path) = (parts.next()?, parts.next()?, parts.next()?);
        let path = path.trim_start_matches('/');
        let file = match controllers {
            "" => Path::new("/sys/fs/cgroup").join(path).join("memory.max"),
            c if c.split(',').any(|c| c == "memory") => Path::new("/sys/fs/cgroup/memory")
                .join(path)
                .join("memory.limit_in_bytes"),
            _ => return None,
        };
        std::fs::read_to_string(file)
            .ok()?
            .trim()
            .parse::<u64>()
            .ok()
    });
    limits.fold(total, u64::min)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_embedded_default_is_valid_and_loopback_only() {
        let config = Config::default();
        config.validate(false).expect("default is valid");
        assert!(config.http_listen().expect("listen").ip().is_loopback());
        assert!(config.p2p.listen.starts_with("/ip4/127.0.0.1/"));
    }

    #[test]
    fn a_partial_file_keeps_defaults_for_the_rest() {
        let config =
            Config::from_toml("node_name = \"n1\"\n[raft]\nvoters_max = 3\n").expect("parse");
        assert_eq!(config.node_name, "n1");
        assert_eq!(config.raft.voters_max, 3);
        assert_eq!(config.raft.heartbeat_ms, 100);
        assert_eq!(config.http.listen, "127.0.0.1:8000");
    }

    #[test]
    fn unknown_keys_are_refused_by_name() {
        let error = Config::from_toml("[http]\nlisten_on = \"x\"\n").expect_err("unknown key");
        assert!(error.contains("listen_on"), "{error}");
    }

    #[test]
    fn tokens_file_adds_its_tokens_and_refuses_anything_else() {
        let dir = tempfile::tempdir().expect("temp dir");
        let tokens = dir.path().join("tokens.toml");
        std::fs::write(
            &tokens,
            "tokens = [\"an-admin-token-of-enough-length\", \
             { token = \"a-user-token-of-enough-length\", name = \"alice\" }]\n",
        )
        .expect("write tokens");
        let config_path = dir.path().join("shoal.toml");
        let config_text = format!(
            "[http]\nlisten = \"0.0.0.0:8000\"\ntokens_file = {:?}\n",
            tokens.display().to_string()
        );
        std::fs::write(&config_path, &config_text).expect("write config");
        let config = Config::from_file(&config_path).expect("loads");
        assert_eq!(config.http.tokens.len(), 2);
        assert_eq!(config.http.tokens[1].name(), "alice");
        config
            .validate(false)
            .expect("public HTTP is allowed: the tokens came from the file");

        std::fs::write(&tokens, "tokens = []\nextra = 1\n").expect("write tokens");
        let error = Config::from_file(&config_path).expect_err("unknown key");
        assert!(error.to_string().contains("tokens.toml"), "{error}");
        std::fs::remove_file(&tokens).expect("remove");
        let error = Config::from_file(&config_path).expect_err("missing file");
        assert!(error.to_string().contains("tokens.toml"), "{error}");
    }

    #[test]
    fn public_http_without_tokens_needs_insecure() {
        let mut config = Config::default();
        config.http.listen = "0.0.0.0:8000".to_string();
        let error = config.validate(false).expect_err("refused");
        assert!(error.to_string().contains("http.listen"), "{error}");
        config.validate(true).expect("allowed with --insecure");
        config.http.tokens = vec![TokenConfig::Admin("a-token-of-enough-length".to_string())];
        config.validate(false).expect("allowed with tokens");
    }

    #[test]
    fn public_p2p_without_a_cluster_key_needs_insecure() {
        let mut config = Config::default();
        config.p2p.listen = "/ip4/10.0.0.1/tcp/7000".to_string();
        let error = config.validate(false).expect_err("refused");
        assert!(error.to_string().contains("p2p.listen"), "{error}");
        config.validate(true).expect("allowed with --insecure");
        config.p2p.cluster_key_file = "/etc/shoal/cluster.key".to_string();
        config.validate(false).expect("allowed with a cluster key");
    }

    #[test]
    fn bad_values_name_their_key() {
        type Spoil = fn(&mut Config);
        let cases: [(&str, Spoil); 15] = [
            ("http.metrics_token", |c| {
                c.http.metrics_token = "short".into()
            }),
            ("p2p.advertise", |c| {
                c.p2p.advertise = vec!["host1:7000".into()]
            }),
            ("p2p.advertise", |c| {
                c.p2p.advertise = vec!["/dns4/host1".into()]
            }),
            ("p2p.advertise", |c| {
                c.p2p.listen = "/ip4/0.0.0.0/tcp/7000".into();
                c.p2p.cluster_key_file = "/etc/shoal/cluster.key".into();
            }),
            ("p2p.seeds", |c| {
                c.p2p.seeds = vec!["not-a-multiaddr".into()]
            }),
            ("raft.election_timeout_ms", |c| {
                c.raft.election_timeout_ms = [50, 40]
            }),
            ("worker.executor", |c| {
                c.worker.executor = "kubernetes".into()
            }),
            ("worker.lease_ms", |c| c.worker.lease_ms = 1),
            ("worker.docker_network", |c| {
                c.worker.docker_network = "bad name!".into()
            }),
            ("worker.cpus", |c| c.worker.cpus = -1.0),
            ("worker.cpus", |c| c.worker.cpus = f64::NAN),
            ("worker.memory", |c| c.worker.memory = "lots".into()),
            ("worker.process_path", |c| {
                c.worker.process_path = "/usr/bin:bin".into()
            }),
            ("worker.process_binds", |c| {
                c.worker.process_binds = vec!["/opt/../etc".into()]
            }),
            ("worker.process_env", |c| {
                c.worker.process_env = [("PATH".into(), "/x".into())].into()
            }),
        ];
        for (key, spoil) in cases {
            let mut config = Config::default();
            spoil(&mut config);
            let error = config.validate(false).expect_err(key).to_string();
            assert!(error.contains(key), "{key}: {error}");
        }
    }

    #[test]
    fn capacity_is_configured_or_detected() {
        let config = Config::from_toml("[worker]\ncpus = 64\nmemory = \"512Mi\"\n").expect("parse");
        config.validate(false).expect("valid");
        let capacity = config.capacity();
        assert_eq!(capacity.cpu_millis, 64_000);
        assert_eq!(capacity.ram_bytes, 512 << 20);
        let half = Config::from_toml("[worker]\ncpus = 0.5\n").expect("parse");
        assert_eq!(half.capacity().cpu_millis, 500);
        let detected = Config::default().capacity();
        assert!(detected.cpu_millis >= 1000, "{detected:?}");
        assert!(detected.ram_bytes > 1 << 20, "{detected:?}");
    }
}

//! One test backend: a work dir, a `Transfers` handle, and a base URL on either a local
//! "remote" directory (`file://`) or a fresh bucket on the S3 server from scripts/test.sh.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use anyhow::{Context, bail};
use object_store::{ObjectStoreExt, PutPayload};
use shoal_storage::{Access, Resolver, StorageConfig, Transfers};
use tempfile::TempDir;

pub struct Fixture {
    /// Base URL every scenario writes below (`file:///…/remote` or `s3://bucket`).
    pub base_url: String,
    pub transfers: Transfers,
    /// The node's work dir: where downloads land and outputs come from.
    pub work: PathBuf,
    /// A directory outside every allowed root, holding `secret.txt`.
    pub outside: PathBuf,
    _dirs: Vec<TempDir>,
}

/// An endpoint nothing listens on, so a file-only fixture can never reach a real S3.
const UNUSED_ENDPOINT: &str = "http://127.0.0.1:9";

impl Fixture {
    pub async fn file() -> anyhow::Result<Self> {
        let remote = tempfile::tempdir()?;
        let base_url = format!("file://{}", remote.path().display());
        let config = StorageConfig {
            allowed_local_roots: vec![remote.path().to_path_buf()],
            ..static_s3_config(UNUSED_ENDPOINT, "k", "s")
        };
        Self::build(config, base_url, vec![remote])
    }

    /// `None` (after saying why) when no S3 server is configured outside CI; an error in CI.
    pub async fn s3() -> anyhow::Result<Option<Self>> {
        let vars = [
            "SHOAL_TEST_S3_ENDPOINT",
            "SHOAL_TEST_S3_KEY",
            "SHOAL_TEST_S3_SECRET",
        ];
        let values: Vec<Option<String>> = vars.iter().map(|var| std::env::var(var).ok()).collect();
        let [Some(endpoint), Some(key), Some(secret)] = values.as_slice() else {
            if std::env::var_os("CI").is_some() {
                bail!("CI is set but {vars:?} are not: run the tests through scripts/test.sh");
            }
            eprintln!("skipping S3 scenario: set {vars:?} (scripts/test.sh starts a server)");
            return Ok(None);
        };
        let bucket = create_bucket(endpoint).await?;
        let config = static_s3_config(endpoint, key, secret);
        Self::build(config, format!("s3://{bucket}"), Vec::new()).map(Some)
    }

    /// A fresh directory on the FTP server from scripts/test.sh (`SHOAL_TEST_FTP_URL`, with
    /// its user and password); `None` (after saying why) outside CI without one.
    pub async fn ftp() -> anyhow::Result<Option<Self>> {
        let Some(server) = ftp_server()? else {
            return Ok(None);
        };
        let nanos = SystemTime::now().duration_since(UNIX_EPOCH)?.as_nanos();
        let base_url = format!(
            "{server}/run-{}-{}",
            std::process::id(),
            nanos % 1_000_000_000_000
        );
        let config = static_s3_config(UNUSED_ENDPOINT, "k", "s");
        Self::build(config, base_url, Vec::new()).map(Some)
    }

    fn build(
        config: StorageConfig,
        base_url: String,
        mut dirs: Vec<TempDir>,
    ) -> anyhow::Result<Self> {
        let work = tempfile::tempdir()?;
        let outside = tempfile::tempdir()?;
        std::fs::write(outside.path().join("secret.txt"), b"not for tasks")?;
        let resolver = Arc::new(Resolver::new(config, work.path())?);
        let transfers = Transfers::new(resolver, Transfers::node_semaphore())?;
        let fixture = Self {
            base_url,
            transfers,
            work: work.path().to_path_buf(),
            outside: outside.path().to_path_buf(),
            _dirs: Vec::new(),
        };
        dirs.extend([work, outside]);
        Ok(Self {
            _dirs: dirs,
            ..fixture
        })
    }

    pub fn url(&self, rel: &str) -> String {
        format!("{}/{}", self.base_url, rel)
    }

    pub fn work_path(&self, rel: &str) -> PathBuf {
        self.work.join(rel)
    }

    /// Seeds an object directly through the resolved store.
    pub async fn put(&self, rel: &str, bytes: impl Into<PutPayload>) -> anyhow::Result<()> {
        let location = self
            .transfers
            .resolver()
            .resolve(&self.url(rel), Access::Write)
            .await?;
        location.store.put(&location.path, bytes.into()).await?;
        Ok(())
    }
}

pub fn static_s3_config(endpoint: &str, key: &str, secret: &str) -> StorageConfig {
    StorageConfig {
        allowed_local_roots: Vec::new(),
        s3_endpoint: endpoint.to_owned(),
        s3_region: "us-east-1".to_owned(),
        s3_allow_http: true,
        s3_access_key_id: Some(key.to_owned()),
        s3_secret_access_key: Some(secret.to_owned()),
        ..StorageConfig::default()
    }
}

/// `SHOAL_TEST_FTP_URL` (`ftp://user:password@127.0.0.1:port`): `None` (after saying why)
/// when unset outside CI; an error when unset in CI.
pub fn ftp_server() -> anyhow::Result<Option<String>> {
    match std::env::var("SHOAL_TEST_FTP_URL") {
        Ok(url) => Ok(Some(url.trim_end_matches('/').to_owned())),
        Err(_) if std::env::var_os("CI").is_some() => {
            bail!("CI is set but SHOAL_TEST_FTP_URL is not: run the tests through scripts/test.sh")
        }
        Err(_) => {
            eprintln!(
                "skipping FTP scenario: set SHOAL_TEST_FTP_URL (scripts/test.sh starts a server)"
            );
            Ok(None)
        }
    }
}

/// Creates a uniquely named bucket with a plain HTTP PUT (the test server accepts any keys).
async fn create_bucket(endpoint: &str) -> anyhow::Result<String> {
    let nanos = SystemTime::now().duration_since(UNIX_EPOCH)?.as_nanos();
    let bucket = format!(
        "shoal-test-{}-{}",
        std::process::id(),
        nanos % 1_000_000_000_000
    );
    let response = reqwest::Client::new()
        .put(format!("{}/{bucket}", endpoint.trim_end_matches('/')))
        .send()
        .await
        .with_context(|| format!("creating bucket {bucket} at {endpoint}"))?;
    if !response.status().is_success() {
        bail!(
            "creating bucket {bucket} at {endpoint}: {}",
            response.status()
        );
    }
    Ok(bucket)
}

/// Lists a local tree as sorted `/`-separated relative paths with contents.
pub fn read_tree(dir: &Path) -> anyhow::Result<Vec<(String, Vec<u8>)>> {
    let mut out = Vec::new();
    for entry in walkdir::WalkDir::new(dir).min_depth(1).sort_by_file_name() {
        let entry = entry?;
        if entry.file_type().is_file() {
            let rel = entry
                .path()
                .strip_prefix(dir)?
                .to_string_lossy()
                .into_owned();
            out.push((rel, std::fs::read(entry.path())?));
        }
    }
    Ok(out)
}

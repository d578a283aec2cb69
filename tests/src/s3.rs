//! The S3 server the tests use (moto, started by `scripts/test.sh` on loopback) and a fresh
//! bucket on it to seed inputs into and inspect outputs in. The tests reach the bucket through
//! object_store directly, never through shoal, so they check what shoal wrote.

use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use anyhow::{Context, Result, bail};
use futures::TryStreamExt;
use object_store::aws::AmazonS3Builder;
use object_store::path::Path as ObjectPath;
use object_store::{ObjectStore, ObjectStoreExt, PutPayload};

/// Where the S3 server listens and the keys it takes.
#[derive(Debug, Clone)]
pub struct S3Server {
    pub endpoint: String,
    pub key: String,
    pub secret: String,
}

impl S3Server {
    /// The server `scripts/test.sh` started (`SHOAL_TEST_S3_*`). `None` (after saying why)
    /// when there is none outside CI; an error in CI.
    pub fn from_env() -> Result<Option<S3Server>> {
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
            eprintln!("skipping: set {vars:?} (scripts/test.sh starts an S3 server)");
            return Ok(None);
        };
        Ok(Some(S3Server {
            endpoint: endpoint.clone(),
            key: key.clone(),
            secret: secret.clone(),
        }))
    }
}

/// A bucket of its own for one test.
pub struct TestBucket {
    pub name: String,
    store: Arc<dyn ObjectStore>,
}

impl TestBucket {
    /// Creates a uniquely named bucket (moto takes a plain PUT).
    pub async fn create(server: &S3Server) -> Result<TestBucket> {
        let nanos = SystemTime::now().duration_since(UNIX_EPOCH)?.as_nanos();
        let name = format!("shoal-{}-{}", std::process::id(), nanos % 1_000_000_000_000);
        let response = reqwest::Client::new()
            .put(format!("{}/{name}", server.endpoint.trim_end_matches('/')))
            .send()
            .await
            .with_context(|| format!("creating bucket {name} at {}", server.endpoint))?;
        if !response.status().is_success() {
            bail!("creating bucket {name}: {}", response.status());
        }
        let store = AmazonS3Builder::new()
            .with_bucket_name(&name)
            .with_region("us-east-1")
            .with_endpoint(&server.endpoint)
            .with_allow_http(true)
            .with_access_key_id(&server.key)
            .with_secret_access_key(&server.secret)
            .build()?;
        Ok(TestBucket {
            name,
            store: Arc::new(store),
        })
    }

    /// `s3://<bucket>/<key>`.
    pub fn url(&self, key: &str) -> String {
        format!("s3://{}/{key}", self.name)
    }

    pub async fn put(&self, key: &str, bytes: impl Into<Vec<u8>>) -> Result<()> {
        let payload = PutPayload::from(bytes.into());
        self.store.put(&ObjectPath::from(key), payload).await?;
        Ok(())
    }

    pub async fn get(&self, key: &str) -> Result<Vec<u8>> {
        let result = self.store.get(&ObjectPath::from(key)).await?;
        Ok(result.bytes().await?.to_vec())
    }

    pub async fn delete(&self, key: &str) -> Result<()> {
        self.store.delete(&ObjectPath::from(key)).await?;
        Ok(())
    }

    /// Keys below `prefix` (whole path segments), sorted.
    pub async fn list(&self, prefix: &str) -> Result<Vec<String>> {
        let prefix = ObjectPath::from(prefix);
        let mut keys: Vec<String> = self
            .store
            .list(Some(&prefix))
            .map_ok(|meta| meta.location.to_string())
            .try_collect()
            .await?;
        keys.sort();
        Ok(keys)
    }
}

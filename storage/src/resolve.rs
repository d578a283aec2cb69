//! URL → (object store, path): the only place that knows how each scheme is reached.
//!
//! `s3://bucket/key` (also S3-compatible servers through `StorageConfig::s3_endpoint`, path
//! style), `gs://bucket/key`, `az://container/key`, `http(s)://host/path` (read only),
//! `ftp://[user[:password]@]host[:port]/path` (see `ftp`), `file:///abs/path` and bare
//! absolute paths (only under the allowed local roots or the work
//! dir). Clients are built with our own builders, never `parse_url_opts` (which ignores unknown
//! keys), and cached per bucket, container or origin.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use object_store::aws::AmazonS3Builder;
use object_store::azure::MicrosoftAzureBuilder;
use object_store::gcp::GoogleCloudStorageBuilder;
use object_store::http::HttpBuilder;
use object_store::local::LocalFileSystem;
use object_store::path::Path as ObjectPath;
use object_store::{BackoffConfig, ClientOptions, ObjectStore, RetryConfig};
use url::Url;

use crate::config::StorageConfig;
use crate::error::StorageError;
use crate::ftp::{FtpStore, FtpTarget};
use crate::limits::{
    CONNECT_TIMEOUT, READ_IDLE_TIMEOUT, REQUEST_RETRIES_MAX, REQUEST_RETRY_TIMEOUT,
    STORES_CACHED_MAX, URL_BYTES_MAX,
};
use crate::local::{LocalRoots, has_parent_segment};

/// What the caller means to do with a location; `http(s)://` refuses `Write`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Access {
    Read,
    Write,
}

/// Where a location's bytes live, for the transfers that treat local files specially.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Backend {
    /// A local file or directory, symlinks resolved and checked against the allowed roots.
    Local { path: PathBuf },
    /// A bucket, container or web server.
    Remote { read_only: bool },
}

/// A resolved URL: the store that holds it and the path inside that store.
#[derive(Debug, Clone)]
pub struct Location {
    /// The URL as the caller gave it, for messages and reports.
    pub url: String,
    pub store: Arc<dyn ObjectStore>,
    pub path: ObjectPath,
    pub backend: Backend,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash)]
enum StoreKey {
    S3(String),
    Gcs(String),
    Azure(String),
    Http(String),
    Ftp(FtpTarget),
}

/// Resolves URLs for one node; cheap to share behind an `Arc`.
#[derive(Debug)]
pub struct Resolver {
    config: StorageConfig,
    /// `allowed_local_roots` plus the work dir.
    local_roots: LocalRoots,
    work_dir: PathBuf,
    /// Read once at start so resolving never blocks on a file.
    aws_file_credentials: Option<AwsFileCredentials>,
    /// One store for every local path (rooted at `/`; safety is checked before use).
    local_store: Arc<LocalFileSystem>,
    stores: Mutex<HashMap<StoreKey, Arc<dyn ObjectStore>>>,
    /// Stores supplied by the program embedding the node (see [`Resolver::with_stores`]).
    supplied: HashMap<StoreKey, Arc<dyn ObjectStore>>,
}

/// URL schemes the resolver handles (`http` and `https` for reading only), as the TES
/// service-info lists them.
pub const SCHEMES: [&str; 8] = ["file", "s3", "gs", "az", "http", "https", "ftp", "content"];

/// Every scheme a URL given to shoal may have (aliases included); `http` and `https` are read
/// only.
const URL_SCHEMES: [&str; 9] = [
    "file", "s3", "s3a", "gs", "az", "azure", "http", "https", "ftp",
];

/// Checks, before anything is accepted, that `url` is a URL with a scheme every node can
/// read — and write, when `writable`. The answer names what is wrong; the caller adds the
/// field.
pub fn check_url(url: &str, writable: bool) -> Result<(), String> {
    let url = url.trim();
    if url.len() > URL_BYTES_MAX {
        return Err(format!("longer than {URL_BYTES_MAX} bytes"));
    }
    // An absolute path is a local file, as with `file://`.
    if url.starts_with('/') {
        return Ok(());
    }
    let parsed = Url::parse(url).map_err(|error| format!("{url:?} is not a URL: {error}"))?;
    let scheme = parsed.scheme();
    if !URL_SCHEMES.contains(&scheme) {
        return Err(format!(
            "scheme {scheme:?} is not supported (file, s3, gs, az, http, https, ftp)"
        ));
    }
    if writable && matches!(scheme, "http" | "https") {
        return Err(format!("{scheme} is read only"));
    }
    let host = parsed.host_str().unwrap_or_default();
    match scheme {
        "file" if !matches!(host, "" | "localhost") => {
            Err("a file URL must not name a host".to_string())
        }
        "file" => Ok(()),
        _ if host.is_empty() => Err(format!("{url:?} names no bucket, container or host")),
        _ => Ok(()),
    }
}

impl Resolver {
    /// Builds a resolver. `work_dir` is where attempts keep their files; it is always allowed
    /// and is created if missing. Blocking (creates and canonicalises directories, reads the
    /// AWS credentials file): call once at start.
    pub fn new(config: StorageConfig, work_dir: &Path) -> Result<Self, StorageError> {
        std::fs::create_dir_all(work_dir).map_err(|source| StorageError::io(work_dir, source))?;
        let work_dir =
            std::fs::canonicalize(work_dir).map_err(|source| StorageError::io(work_dir, source))?;
        let mut roots = config.allowed_local_roots.clone();
        roots.push(work_dir.clone());
        Ok(Self {
            local_roots: LocalRoots::new(roots)?,
            work_dir,
            aws_file_credentials: AwsFileCredentials::from_usual_file(),
            local_store: Arc::new(LocalFileSystem::new()),
            stores: Mutex::new(HashMap::new()),
            supplied: HashMap::new(),
            config,
        })
    }

    /// Serves the buckets named by `stores` (`s3://bucket`, `gs://bucket`, `az://container`)
    /// from the stores given instead of building clients for them: the deterministic
    /// simulation's in-memory store is one.
    pub fn with_stores(
        mut self,
        stores: &[(String, Arc<dyn ObjectStore>)],
    ) -> Result<Self, StorageError> {
        for (url, store) in stores {
            let parsed = Url::parse(url).map_err(|error| invalid(url, &error.to_string()))?;
            let host = parsed.host_str().unwrap_or_default().to_owned();
            let key = match parsed.scheme() {
                "s3" | "s3a" if !host.is_empty() => StoreKey::S3(host),
                "gs" if !host.is_empty() => StoreKey::Gcs(host),
                "az" | "azure" if !host.is_empty() => StoreKey::Azure(host),
                _ => return Err(invalid(url, "not a bucket or container url")),
            };
            self.supplied.insert(key, store.clone());
        }
        Ok(self)
    }

    /// The node's work dir, canonical.
    pub fn work_dir(&self) -> &Path {
        &self.work_dir
    }

    /// The local roots `file://` URLs may use, the work dir included.
    pub fn local_roots(&self) -> &LocalRoots {
        &self.local_roots
    }

    /// Resolves `url` for `access`. Refuses `..` anywhere, local paths outside the allowed
    /// roots (after following symlinks) and writes to read-only schemes, before any data IO.
    pub async fn resolve(&self, url: &str, access: Access) -> Result<Location, StorageError> {
        let url = url.trim();
        if url.len() > URL_BYTES_MAX {
            return Err(invalid(url, "longer than the url limit"));
        }
        if has_parent_segment(url) {
            return Err(StorageError::ParentSegment {
                url: url.to_owned(),
            });
        }
        if url.starts_with('/') {
            return self.resolve_local(url, PathBuf::from(url)).await;
        }
        let parsed = Url::parse(url).map_err(|error| invalid(url, &error.to_string()))?;
        match parsed.scheme() {
            "file" => {
                if !matches!(parsed.host_str(), None | Some("") | Some("localhost")) {
                    return Err(invalid(url, "file urls must not name a host"));
                }
                let path = parsed
                    .to_file_path()
                    .map_err(|()| invalid(url, "not an absolute local path"))?;
                self.resolve_local(url, path).await
            }
            "http" | "https" if access == Access::Write => Err(StorageError::ReadOnly {
                url: url.to_owned(),
            }),
            _ => self.resolve_remote(url, &parsed),
        }
    }

    async fn resolve_local(&self, url: &str, path: PathBuf) -> Result<Location, StorageError> {
        let roots = self.local_roots.clone();
        let owned_url = url.to_owned();
        let checked = shoal_runtime::blocking(move || roots.resolve_inside(&owned_url, &path))
            .await
            .map_err(|source| StorageError::Join {
                path: PathBuf::from(url),
                source,
            })?;
        let Some(resolved) = checked? else {
            let path = Url::parse(url)
                .ok()
                .and_then(|parsed| parsed.to_file_path().ok())
                .unwrap_or_else(|| PathBuf::from(url));
            return Err(StorageError::OutsideAllowedRoots {
                url: url.to_owned(),
                path,
            });
        };
        let object_path = ObjectPath::from_absolute_path(&resolved)
            .map_err(|error| invalid(url, &error.to_string()))?;
        Ok(Location {
            url: url.to_owned(),
            store: self.local_store.clone(),
            path: object_path,
            backend: Backend::Local { path: resolved },
        })
    }

    fn resolve_remote(&self, url: &str, parsed: &Url) -> Result<Location, StorageError> {
        let host = parsed.host_str().unwrap_or_default();
        if host.is_empty() {
            return Err(invalid(url, "no bucket, container or host"));
        }
        let (key, read_only) = match parsed.scheme() {
            "s3" | "s3a" => (StoreKey::S3(host.to_owned()), false),
            "gs" => (StoreKey::Gcs(host.to_owned()), false),
            "az" | "azure" => (StoreKey::Azure(host.to_owned()), false),
            "http" | "https" => (StoreKey::Http(parsed.origin().ascii_serialization()), true),
            "ftp" => (StoreKey::Ftp(self.ftp_target(url, parsed)?), false),
            scheme => {
                return Err(StorageError::UnsupportedScheme {
                    url: url.to_owned(),
                    scheme: scheme.to_owned(),
                });
            }
        };
        let path = ObjectPath::from_url_path(parsed.path())
            .map_err(|error| invalid(url, &error.to_string()))?;
        let store = self.store_for(&key).map_err(|source| StorageError::Build {
            url: url.to_owned(),
            source,
        })?;
        Ok(Location {
            url: url.to_owned(),
            store,
            path,
            backend: Backend::Remote { read_only },
        })
    }

    fn store_for(&self, key: &StoreKey) -> Result<Arc<dyn ObjectStore>, object_store::Error> {
        if let Some(store) = self.supplied.get(key) {
            return Ok(store.clone());
        }
        let mut stores = self
            .stores
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        if let Some(store) = stores.get(key) {
            return Ok(store.clone());
        }
        let store = self.build_store(key)?;
        if stores.len() >= STORES_CACHED_MAX {
            stores.clear();
        }
        stores.insert(key.clone(), store.clone());
        Ok(store)
    }

    fn build_store(&self, key: &StoreKey) -> Result<Arc<dyn ObjectStore>, object_store::Error> {
        Ok(match key {
            StoreKey::S3(bucket) => Arc::new(self.s3_builder(bucket).build()?),
            StoreKey::Gcs(bucket) => Arc::new(
                GoogleCloudStorageBuilder::from_env()
                    .with_bucket_name(bucket)
                    .with_retry(retry_config())
                    .with_client_options(client_options(false))
                    .build()?,
            ),
            StoreKey::Azure(container) => Arc::new(
                MicrosoftAzureBuilder::from_env()
                    .with_container_name(container)
                    .with_retry(retry_config())
                    .with_client_options(client_options(false))
                    .build()?,
            ),
            StoreKey::Ftp(target) => Arc::new(FtpStore::new(target.clone())),
            StoreKey::Http(origin) => Arc::new(
                HttpBuilder::new()
                    .with_url(origin)
                    .with_retry(retry_config())
                    .with_client_options(client_options(origin.starts_with("http://")))
                    .build()?,
            ),
        })
    }

    /// Where an `ftp://` URL connects and as whom: the URL's user and password, else the
    /// config's, else `anonymous`.
    fn ftp_target(&self, url: &str, parsed: &Url) -> Result<FtpTarget, StorageError> {
        let decoded = |text: &str| {
            percent_decode(text).ok_or_else(|| invalid(url, "user or password is not UTF-8"))
        };
        let (user, password) = if parsed.username().is_empty() {
            match &self.config.ftp_user {
                Some(user) => (
                    user.clone(),
                    self.config.ftp_password.clone().unwrap_or_default(),
                ),
                None => ("anonymous".to_owned(), "anonymous@".to_owned()),
            }
        } else {
            (
                decoded(parsed.username())?,
                decoded(parsed.password().unwrap_or_default())?,
            )
        };
        let host = match parsed.host() {
            Some(url::Host::Domain(name)) => name.to_owned(),
            Some(url::Host::Ipv4(address)) => address.to_string(),
            // Without the brackets a URL needs, as an address lookup takes it.
            Some(url::Host::Ipv6(address)) => address.to_string(),
            None => return Err(invalid(url, "no host")),
        };
        Ok(FtpTarget {
            host,
            port: parsed.port().unwrap_or(21),
            user,
            password,
        })
    }

    /// Environment first (`AWS_*`), then the shared credentials file, then config keys on top.
    fn s3_builder(&self, bucket: &str) -> AmazonS3Builder {
        let config = &self.config;
        let mut builder = AmazonS3Builder::from_env()
            .with_bucket_name(bucket)
            .with_retry(retry_config())
            .with_client_options(client_options(config.s3_allow_http));
        if let Some(file) = &self.aws_file_credentials {
            builder = builder
                .with_access_key_id(&file.access_key_id)
                .with_secret_access_key(&file.secret_access_key);
            if let Some(token) = &file.session_token {
                builder = builder.with_token(token);
            }
        }
        if !config.s3_endpoint.is_empty() {
            builder = builder
                .with_endpoint(&config.s3_endpoint)
                .with_virtual_hosted_style_request(false);
        }
        if !config.s3_region.is_empty() {
            builder = builder.with_region(&config.s3_region);
        }
        if let Some(key) = &config.s3_access_key_id {
            builder = builder.with_access_key_id(key);
        }
        if let Some(secret) = &config.s3_secret_access_key {
            builder = builder.with_secret_access_key(secret);
        }
        builder
    }
}

/// `%xx` escapes of a URL's user or password decoded; `None` when not UTF-8.
fn percent_decode(text: &str) -> Option<String> {
    percent_encoding::percent_decode_str(text)
        .decode_utf8()
        .ok()
        .map(|text| text.into_owned())
}

fn invalid(url: &str, reason: &str) -> StorageError {
    StorageError::InvalidUrl {
        url: url.to_owned(),
        reason: reason.to_owned(),
    }
}

/// Whole-request timeouts would cut large objects short; an idle-read timeout catches stalls.
fn client_options(allow_http: bool) -> ClientOptions {
    ClientOptions::new()
        .with_allow_http(allow_http)
        .with_connect_timeout(CONNECT_TIMEOUT)
        .with_timeout_disabled()
        .with_read_timeout(READ_IDLE_TIMEOUT)
}

fn retry_config() -> RetryConfig {
    RetryConfig {
        backoff: BackoffConfig::default(),
        max_retries: REQUEST_RETRIES_MAX,
        retry_timeout: REQUEST_RETRY_TIMEOUT,
    }
}

/// Keys from `~/.aws/credentials` (or `AWS_SHARED_CREDENTIALS_FILE`), profile `AWS_PROFILE`
/// or `default`; used only when `AWS_ACCESS_KEY_ID` is not set. object_store reads the
/// environment and instance metadata itself but not this file.
#[derive(Debug, Clone, PartialEq, Eq)]
struct AwsFileCredentials {
    access_key_id: String,
    secret_access_key: String,
    session_token: Option<String>,
}

impl AwsFileCredentials {
    fn from_usual_file() -> Option<Self> {
        if std::env::var_os("AWS_ACCESS_KEY_ID").is_some() {
            return None;
        }
        let path = match std::env::var_os("AWS_SHARED_CREDENTIALS_FILE") {
            Some(path) => PathBuf::from(path),
            None => PathBuf::from(std::env::var_os("HOME")?).join(".aws/credentials"),
        };
        let profile = std::env::var("AWS_PROFILE").unwrap_or_else(|_| "default".to_owned());
        let text = std::fs::read_to_string(path).ok()?;
        Self::parse(&text, &profile)
    }

    /// Parses the INI-style credentials file and picks `profile`'s keys.
    fn parse(text: &str, profile: &str) -> Option<Self> {
        let mut in_profile = false;
        let mut values: HashMap<&str, &str> = HashMap::new();
        for line in text.lines().map(str::trim) {
            if line.is_empty() || line.starts_with('#') || line.starts_with(';') {
                continue;
            }
            if let Some(section) = line.strip_prefix('[').and_then(|l| l.strip_suffix(']')) {
                in_profile = section.trim() == profile;
            } else if in_profile && let Some((key, value)) = line.split_once('=') {
                values.insert(key.trim(), value.trim());
            }
        }
        Some(Self {
            access_key_id: values.get("aws_access_key_id")?.to_string(),
            secret_access_key: values.get("aws_secret_access_key")?.to_string(),
            session_token: values
                .get("aws_session_token")
                .map(|token| token.to_string()),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn aws_credentials_file_profile_is_picked() {
        let text = "# comment\n[default]\naws_access_key_id = A\naws_secret_access_key=B\n\n\
                    [other]\naws_access_key_id = C\naws_secret_access_key = D\naws_session_token = T\n";
        let default = AwsFileCredentials::parse(text, "default");
        assert_eq!(
            default,
            Some(AwsFileCredentials {
                access_key_id: "A".into(),
                secret_access_key: "B".into(),
                session_token: None,
            })
        );
        let other = AwsFileCredentials::parse(text, "other");
        assert_eq!(other.and_then(|c| c.session_token), Some("T".into()));
        assert_eq!(AwsFileCredentials::parse(text, "missing"), None);
    }

    fn test_resolver() -> (tempfile::TempDir, Resolver) {
        let work = tempfile::tempdir().expect("temp dir");
        let config = StorageConfig {
            s3_endpoint: "http://127.0.0.1:9".into(),
            s3_allow_http: true,
            s3_access_key_id: Some("k".into()),
            s3_secret_access_key: Some("s".into()),
            ..StorageConfig::default()
        };
        let resolver = Resolver::new(config, work.path()).expect("resolver");
        (work, resolver)
    }

    #[tokio::test]
    async fn urls_map_to_stores_and_paths() {
        let (_work, resolver) = test_resolver();
        let s3 = resolver
            .resolve("s3://bucket/a/b c.txt", Access::Read)
            .await;
        let s3 = s3.expect("s3 resolves");
        assert_eq!(s3.path.as_ref(), "a/b c.txt");
        assert_eq!(s3.backend, Backend::Remote { read_only: false });
        let again = resolver.resolve("s3://bucket/x", Access::Read).await;
        assert!(Arc::ptr_eq(&s3.store, &again.expect("cached").store));
        let http = resolver
            .resolve("https://example.org/f", Access::Write)
            .await;
        assert!(matches!(http, Err(StorageError::ReadOnly { .. })));
        let ftp = resolver
            .resolve("ftp://u:p%40ss@host:2121/dir/f", Access::Write)
            .await
            .expect("ftp resolves, for writing too");
        assert_eq!(ftp.path.as_ref(), "dir/f");
        assert_eq!(ftp.backend, Backend::Remote { read_only: false });
        let other_user = resolver.resolve("ftp://v@host:2121/f", Access::Read).await;
        assert!(
            !Arc::ptr_eq(&ftp.store, &other_user.expect("ftp").store),
            "one store per server and user"
        );
        let shown = ftp.store.to_string();
        assert!(
            shown.contains("u@host:2121") && !shown.contains("p@ss"),
            "{shown}"
        );
        let bad = resolver.resolve("sftp://host/f", Access::Read).await;
        assert!(matches!(bad, Err(StorageError::UnsupportedScheme { .. })));
        let dots = resolver.resolve("s3://bucket/a/../b", Access::Read).await;
        assert!(matches!(dots, Err(StorageError::ParentSegment { .. })));
    }

    #[tokio::test]
    async fn local_paths_are_confined_to_roots() {
        let (work, resolver) = test_resolver();
        let inside = format!("file://{}/in/x", work.path().display());
        assert!(resolver.resolve(&inside, Access::Read).await.is_ok());
        let bare = format!("{}/in/x", work.path().display());
        assert!(resolver.resolve(&bare, Access::Write).await.is_ok());
        let outside = resolver.resolve("file:///etc/passwd", Access::Read).await;
        let message = outside.expect_err("refused").to_string();
        assert!(message.contains("file:///etc/passwd"), "{message}");
    }

    #[test]
    fn only_known_schemes_pass_and_http_only_for_reading() {
        check_url("s3://bucket/key", true).expect("s3");
        check_url("file:///data/x", true).expect("file");
        check_url("/data/x", true).expect("a local path");
        check_url("https://example.org/x", false).expect("https read");
        check_url("ftp://user:pw@host:2121/x", true).expect("ftp, both ways");
        let sftp = check_url("sftp://host/x", false).expect_err("sftp");
        assert!(sftp.contains("\"sftp\" is not supported"), "{sftp}");
        assert!(check_url("https://example.org/x", true).is_err());
        assert!(check_url("not a url", false).is_err());
        assert!(check_url("s3:///key", false).is_err(), "no bucket");
        assert!(
            check_url("file://host/x", false).is_err(),
            "a file url with a host"
        );
    }
}

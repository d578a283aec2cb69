//! The `[storage]` section of a node's configuration, passed explicitly to the resolver.
//!
//! Config keys override the usual cloud environment variables and credential files; empty
//! strings and `None` mean "not configured here".

use std::path::PathBuf;

/// How a node reaches object storage and which local directories it may read and write.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct StorageConfig {
    /// Local directories `file://` URLs may point into, besides the node's work dir. Empty
    /// means only the work dir: a task must not read arbitrary host files.
    pub allowed_local_roots: Vec<PathBuf>,
    /// S3-compatible endpoint (`http://127.0.0.1:9000`); empty means AWS itself or
    /// `AWS_ENDPOINT` from the environment. Requests use path style when set.
    pub s3_endpoint: String,
    /// S3 region; empty means `AWS_REGION`/`AWS_DEFAULT_REGION` or `us-east-1`.
    pub s3_region: String,
    /// Allow plain `http://` to the S3 endpoint. Off by default so credentials never travel
    /// in clear text by accident.
    pub s3_allow_http: bool,
    /// Static S3 access key, for tests and S3-compatible servers. When unset, the key comes
    /// from `AWS_ACCESS_KEY_ID`, then `~/.aws/credentials`, then the instance metadata service.
    pub s3_access_key_id: Option<String>,
    /// Static S3 secret key, paired with `s3_access_key_id`.
    pub s3_secret_access_key: Option<String>,
    /// FTP user for `ftp://` URLs that name none (`ftp://user:password@host/...` does);
    /// `None` logs in as `anonymous`.
    pub ftp_user: Option<String>,
    /// FTP password, paired with `ftp_user`.
    pub ftp_password: Option<String>,
}

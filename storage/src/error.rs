//! The one error type of the storage crate; every variant names the URL or path involved.

use std::path::PathBuf;

/// Why a resolve, transfer or listing failed.
#[derive(Debug, thiserror::Error)]
pub enum StorageError {
    /// The URL does not parse or has a shape the resolver cannot use.
    #[error("invalid url {url}: {reason}")]
    InvalidUrl { url: String, reason: String },

    /// The URL's scheme is none of the supported ones.
    #[error(
        "unsupported url scheme {scheme:?} in {url} (expected s3, gs, az, ftp, file, http or https)"
    )]
    UnsupportedScheme { url: String, scheme: String },

    /// The URL or path contains a `..` segment; refused before any IO.
    #[error("{url} contains a `..` segment")]
    ParentSegment { url: String },

    /// A local path is not absolute.
    #[error("local path {path} of {url} is not absolute")]
    RelativeLocalPath { url: String, path: PathBuf },

    /// A `file://` URL (after following symlinks) points outside every allowed local root.
    #[error("{url} resolves to {path}, outside the allowed local roots")]
    OutsideAllowedRoots { url: String, path: PathBuf },

    /// A local path a transfer reads or writes is outside the node's work dir.
    #[error("local path {path} is outside the work dir {work_dir}")]
    OutsideWorkDir { path: PathBuf, work_dir: PathBuf },

    /// An upload was asked of a store that is read only (`http(s)://`).
    #[error("{url} is read only")]
    ReadOnly { url: String },

    /// The object does not exist.
    #[error("object not found: {url}")]
    NotFound { url: String },

    /// The store answered with an error other than "not found".
    #[error("object store error on {url}: {source}")]
    Store {
        url: String,
        #[source]
        source: object_store::Error,
    },

    /// Building a client for the URL's bucket or origin failed (bad credentials, bad endpoint).
    #[error("cannot build a client for {url}: {source}")]
    Build {
        url: String,
        #[source]
        source: object_store::Error,
    },

    /// Local file IO failed.
    #[error("io error on {path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },

    /// A local path is not valid UTF-8 and cannot become an object key.
    #[error("local path {path} is not valid utf-8")]
    NonUtf8Path { path: PathBuf },

    /// An object key under a listed prefix cannot become a safe local path.
    #[error("object key {key} under {url} is not a safe relative path")]
    UnsafeKey { url: String, key: String },

    /// Inline content is larger than the limit.
    #[error("inline content for {path} is {size_bytes} bytes, more than {limit_bytes}")]
    ContentTooLarge {
        path: PathBuf,
        size_bytes: usize,
        limit_bytes: usize,
    },

    /// A directory transfer or wildcard output holds more objects than allowed.
    #[error("{url} holds more than {limit} objects")]
    TooManyObjects { url: String, limit: usize },

    /// A glob (pipeline input or TES wildcard output) does not compile or is misplaced.
    #[error("invalid glob {glob:?}: {reason}")]
    InvalidGlob { glob: String, reason: String },

    /// A container path is relative, holds `..`, or leaves its mount.
    #[error("container path {path:?} is not inside mount {mount:?}: {reason}")]
    ContainerPath {
        path: String,
        mount: String,
        reason: &'static str,
    },

    /// A wildcard output's file does not start with its `path_prefix`.
    #[error("output file {path} does not start with path_prefix {path_prefix}")]
    PathPrefix { path: PathBuf, path_prefix: PathBuf },

    /// A cross product would produce more datums than allowed.
    #[error("cross product of {sizes:?} datums exceeds {limit}")]
    TooManyDatums { sizes: Vec<usize>, limit: usize },

    /// A blocking IO task panicked or was cancelled.
    #[error("blocking task for {path} failed: {source}")]
    Join {
        path: PathBuf,
        #[source]
        source: shoal_runtime::BlockingError,
    },
}

impl StorageError {
    /// Whether another try may succeed: network and server trouble, not a refusal, a missing
    /// object or a local disk problem.
    pub fn is_transient(&self) -> bool {
        match self {
            StorageError::Store { source, .. } => matches!(
                source,
                object_store::Error::Generic { .. } | object_store::Error::JoinError { .. }
            ),
            StorageError::Io { source, .. } => matches!(
                source.kind(),
                std::io::ErrorKind::Interrupted
                    | std::io::ErrorKind::TimedOut
                    | std::io::ErrorKind::ConnectionReset
                    | std::io::ErrorKind::ConnectionAborted
                    | std::io::ErrorKind::UnexpectedEof
            ),
            _ => false,
        }
    }

    /// Wraps an object_store error, separating "not found" so callers can report it plainly.
    pub(crate) fn from_store(url: &str, source: object_store::Error) -> Self {
        match source {
            object_store::Error::NotFound { .. } => StorageError::NotFound {
                url: url.to_owned(),
            },
            source => StorageError::Store {
                url: url.to_owned(),
                source,
            },
        }
    }

    pub(crate) fn io(path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        StorageError::Io {
            path: path.into(),
            source,
        }
    }
}

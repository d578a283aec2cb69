//! `Transfers`: the handle one attempt uses to move files, with its parallelism bounds.
//!
//! Each file transfer holds one permit of the attempt's semaphore and one of the node's (shared
//! by every attempt on the node), so neither a single attempt nor all of them together can open
//! more than `ATTEMPT_TRANSFERS_MAX` / the node semaphore's size of transfers at once. Local
//! paths a transfer writes (downloads) or reads (uploads) must lie inside the work dir.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use tokio::sync::{OwnedSemaphorePermit, Semaphore};

use crate::error::StorageError;
use crate::limits::{ATTEMPT_TRANSFERS_MAX, NODE_TRANSFERS_MAX};
use crate::local::LocalRoots;
use crate::resolve::Resolver;

/// Moves files between one attempt's local directory and object storage. Make one per
/// attempt; its clones share that attempt's bound.
#[derive(Debug, Clone)]
pub struct Transfers {
    pub(crate) resolver: Arc<Resolver>,
    node_permits: Arc<Semaphore>,
    attempt_permits: Arc<Semaphore>,
    /// Only the work dir: the boundary for local sources and destinations.
    pub(crate) work_roots: LocalRoots,
}

/// Both permits a running file transfer holds; dropped when it ends.
pub(crate) struct TransferPermits {
    _attempt: OwnedSemaphorePermit,
    _node: OwnedSemaphorePermit,
}

impl Transfers {
    /// A handle for one attempt. `node_permits` is shared by every attempt on the node (see
    /// [`Transfers::node_semaphore`]).
    pub fn new(
        resolver: Arc<Resolver>,
        node_permits: Arc<Semaphore>,
    ) -> Result<Self, StorageError> {
        let work_roots = LocalRoots::new([resolver.work_dir().to_path_buf()])?;
        Ok(Self {
            resolver,
            node_permits,
            attempt_permits: Arc::new(Semaphore::new(ATTEMPT_TRANSFERS_MAX)),
            work_roots,
        })
    }

    /// A handle whose local transfer ends must lie inside `attempt_dir` (itself inside the
    /// resolver's work dir), so one attempt cannot read or write another's files.
    pub fn for_attempt(
        resolver: Arc<Resolver>,
        node_permits: Arc<Semaphore>,
        attempt_dir: &std::path::Path,
    ) -> Result<Self, StorageError> {
        let mut transfers = Self::new(resolver, node_permits)?;
        transfers.work_roots = LocalRoots::new([attempt_dir.to_path_buf()])?;
        Ok(transfers)
    }

    /// A node-wide transfer semaphore of the default size.
    pub fn node_semaphore() -> Arc<Semaphore> {
        Arc::new(Semaphore::new(NODE_TRANSFERS_MAX))
    }

    /// The resolver this handle uses.
    pub fn resolver(&self) -> &Arc<Resolver> {
        &self.resolver
    }

    pub(crate) async fn permits(&self) -> TransferPermits {
        // Both semaphores live as long as `self` and are never closed, so acquiring cannot fail.
        let attempt = self
            .attempt_permits
            .clone()
            .acquire_owned()
            .await
            .expect("attempt transfer semaphore is never closed");
        let node = self
            .node_permits
            .clone()
            .acquire_owned()
            .await
            .expect("node transfer semaphore is never closed");
        TransferPermits {
            _attempt: attempt,
            _node: node,
        }
    }

    /// Checks that a local path is inside the work dir (symlinks of its existing part
    /// resolved) and returns the resolved path.
    pub(crate) async fn work_path(&self, path: &Path) -> Result<PathBuf, StorageError> {
        let roots = self.work_roots.clone();
        let owned = path.to_path_buf();
        let display = path.display().to_string();
        let checked = shoal_runtime::blocking(move || roots.resolve_inside(&display, &owned))
            .await
            .map_err(|source| StorageError::Join {
                path: path.to_path_buf(),
                source,
            })??;
        checked.ok_or_else(|| StorageError::OutsideWorkDir {
            path: path.to_path_buf(),
            work_dir: self.resolver.work_dir().to_path_buf(),
        })
    }
}

/// Joins a `/`-separated relative key below `base`, refusing empty, `.` and `..` segments.
pub(crate) fn join_relative(base: &Path, rel: &str, url: &str) -> Result<PathBuf, StorageError> {
    let mut out = base.to_path_buf();
    for segment in rel.split('/') {
        if segment.is_empty() || segment == "." || segment == ".." || segment.contains('\0') {
            return Err(StorageError::UnsafeKey {
                url: url.to_owned(),
                key: rel.to_owned(),
            });
        }
        out.push(segment);
    }
    Ok(out)
}

/// `base` URL and a `/`-separated relative path joined with exactly one `/`.
pub fn join_url(base: &str, rel: &str) -> String {
    if rel.is_empty() {
        return base.to_owned();
    }
    format!(
        "{}/{}",
        base.trim_end_matches('/'),
        rel.trim_start_matches('/')
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn relative_keys_join_safely() {
        let base = Path::new("/w/in");
        assert_eq!(
            join_relative(base, "a/b.txt", "u").ok(),
            Some(PathBuf::from("/w/in/a/b.txt"))
        );
        assert!(join_relative(base, "a/../b", "u").is_err());
        assert!(join_relative(base, "a//b", "u").is_err());
        assert!(join_relative(base, "", "u").is_err());
    }

    #[test]
    fn urls_join_with_one_slash() {
        assert_eq!(join_url("s3://b/out/", "x/y"), "s3://b/out/x/y");
        assert_eq!(join_url("s3://b/out", "/x"), "s3://b/out/x");
        assert_eq!(join_url("s3://b/out", ""), "s3://b/out");
    }
}

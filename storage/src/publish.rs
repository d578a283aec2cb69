//! What publishing a pipeline's staged outputs needs: copying an object to its final name in
//! the same store (server side where the store can: S3 `CopyObject`, a hard link on local
//! disks), deleting everything below a prefix, and asking an object's size.
//!
//! Each operation resolves its URLs like every transfer (so `file://` stays inside the
//! allowed roots) and retries transient errors.

use std::collections::HashMap;
use std::sync::Arc;

use futures::{StreamExt, TryStreamExt};
use object_store::ObjectStoreExt;

use crate::error::StorageError;
use crate::list::{Source, list_below};
use crate::resolve::{Access, Backend, Resolver};
use crate::retry::with_retries;
use crate::transfers::join_url;

impl Resolver {
    /// Copies the object at `from` to `to`, replacing what is there. Both must live in one
    /// store (one bucket, container or the local disk).
    pub async fn copy_object(&self, from: &str, to: &str) -> Result<(), StorageError> {
        let source = self.resolve(from, Access::Read).await?;
        let target = self.resolve(to, Access::Write).await?;
        if !Arc::ptr_eq(&source.store, &target.store) {
            return Err(StorageError::InvalidUrl {
                url: to.to_owned(),
                reason: format!("not in the same store as {from}"),
            });
        }
        with_retries(to, || async {
            source
                .store
                .copy(&source.path, &target.path)
                .await
                .map_err(|error| StorageError::from_store(from, error))
        })
        .await
    }

    /// Deletes every object below `prefix` (path segments match whole) and answers how many
    /// there were; nothing below it is no error.
    pub async fn delete_below(&self, prefix: &str) -> Result<u64, StorageError> {
        let location = self.resolve(prefix, Access::Write).await?;
        if let Backend::Local { path } = &location.backend {
            let count = list_below(&location, self.local_roots()).count().await as u64;
            let removed = path.clone();
            return match crate::fs::blocking(move || std::fs::remove_dir_all(removed)).await {
                Ok(()) => Ok(count),
                Err(error) if error.kind() == std::io::ErrorKind::NotFound => Ok(0),
                Err(error) => Err(StorageError::io(path, error)),
            };
        }
        with_retries(prefix, || async {
            let paths = list_below(&location, self.local_roots())
                .try_filter_map(|listed| async move {
                    Ok(match listed.source {
                        Source::Object(path) => Some(path),
                        Source::File(_) => None,
                    })
                })
                .map_err(|error| object_store::Error::Generic {
                    store: "listing",
                    source: Box::new(error),
                })
                .boxed();
            location
                .store
                .delete_stream(paths)
                .try_fold(0_u64, |count, _| async move { Ok(count + 1) })
                .await
                .map_err(|error| StorageError::from_store(prefix, error))
        })
        .await
    }

    /// The URL and size of every object below `prefix` (path segments match whole), or
    /// `None` when there are more than `max`.
    pub async fn object_sizes_below(
        &self,
        prefix: &str,
        max: usize,
    ) -> Result<Option<HashMap<String, u64>>, StorageError> {
        let location = self.resolve(prefix, Access::Read).await?;
        let local = match &location.backend {
            Backend::Local { path } => Some(path.clone()),
            Backend::Remote { .. } => None,
        };
        if let Some(path) = local
            && !crate::fs::blocking(move || path.try_exists())
                .await
                .unwrap_or(false)
        {
            return Ok(Some(HashMap::new()));
        }
        with_retries(prefix, || async {
            let mut sizes = HashMap::new();
            let mut listing = list_below(&location, self.local_roots());
            while let Some(listed) = listing.try_next().await? {
                if sizes.len() == max {
                    return Ok(None);
                }
                sizes.insert(join_url(prefix, &listed.rel), listed.size_bytes);
            }
            Ok(Some(sizes))
        })
        .await
    }

    /// The size of the object at `url`, or `None` when there is none.
    pub async fn object_size(&self, url: &str) -> Result<Option<u64>, StorageError> {
        let location = self.resolve(url, Access::Read).await?;
        if let Backend::Local { path } = &location.backend {
            let path = path.clone();
            return Ok(crate::fs::blocking(move || std::fs::metadata(path))
                .await
                .ok()
                .filter(|m| m.is_file())
                .map(|m| m.len()));
        }
        with_retries(url, || async {
            match location.store.head(&location.path).await {
                Ok(meta) => Ok(Some(meta.size)),
                Err(object_store::Error::NotFound { .. }) => Ok(None),
                Err(error) => Err(StorageError::from_store(url, error)),
            }
        })
        .await
    }
}

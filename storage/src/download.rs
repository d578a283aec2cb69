//! Inputs: one object to a file, every object under a prefix to a directory, inline content.
//!
//! Bytes stream from the store to disk through a bounded buffer; a local source is copied by
//! the kernel. Every file transfer holds transfer permits and is retried on transient errors;
//! a retry starts the file over.

use std::path::{Path, PathBuf};

use futures::{StreamExt, TryStreamExt};
use object_store::ObjectStoreExt;
use object_store::path::Path as ObjectPath;
use std::io::Write;

use crate::error::StorageError;
use crate::fs::blocking;
use crate::limits::{
    ATTEMPT_TRANSFERS_MAX, CONTENT_BYTES_MAX, DIRECTORY_OBJECTS_MAX, WRITE_BUFFER_BYTES,
};
use crate::list::{Listed, Source, list_below};
use crate::resolve::{Access, Backend, Location};
use crate::retry::with_retries;
use crate::transfers::{Transfers, join_relative, join_url};

/// Whether an input names one object or everything under a prefix (TES `FILE`/`DIRECTORY`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum EntryKind {
    File,
    Directory,
}

/// What a download wrote.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct DownloadSummary {
    pub files: u64,
    pub bytes: u64,
}

impl Transfers {
    /// Downloads `url` to `dest` as a file or a directory tree.
    pub async fn download(
        &self,
        url: &str,
        dest: &Path,
        kind: EntryKind,
    ) -> Result<DownloadSummary, StorageError> {
        match kind {
            EntryKind::File => self
                .download_file(url, dest)
                .await
                .map(|bytes| DownloadSummary { files: 1, bytes }),
            EntryKind::Directory => self.download_dir(url, dest).await,
        }
    }

    /// Downloads the object at `url` to the file `dest` (parents created); returns its size.
    pub async fn download_file(&self, url: &str, dest: &Path) -> Result<u64, StorageError> {
        let location = self.resolver.resolve(url, Access::Read).await?;
        let dest = self.work_path(dest).await?;
        let source = match &location.backend {
            Backend::Local { path } => Source::File(path.clone()),
            Backend::Remote { .. } => Source::Object(location.path.clone()),
        };
        let _permits = self.permits().await;
        with_retries(url, || fetch(&location, url, &source, &dest)).await
    }

    /// Downloads every object under the prefix `url` into `dest`, keeping relative paths.
    /// An empty or missing prefix yields an empty directory.
    pub async fn download_dir(
        &self,
        url: &str,
        dest: &Path,
    ) -> Result<DownloadSummary, StorageError> {
        let location = self.resolver.resolve(url, Access::Read).await?;
        let dest = self.work_path(dest).await?;
        let created = dest.clone();
        blocking(move || std::fs::create_dir_all(created))
            .await
            .map_err(|source| StorageError::io(&dest, source))?;
        let location = &location;
        let dest = &dest;
        list_below(location, self.resolver.local_roots())
            .enumerate()
            .map(|(index, item)| async move {
                if index >= DIRECTORY_OBJECTS_MAX {
                    return Err(StorageError::TooManyObjects {
                        url: location.url.clone(),
                        limit: DIRECTORY_OBJECTS_MAX,
                    });
                }
                self.fetch_listed(location, &item?, dest).await
            })
            .buffer_unordered(ATTEMPT_TRANSFERS_MAX)
            .try_fold(DownloadSummary::default(), |summary, bytes| async move {
                Ok(DownloadSummary {
                    files: summary.files + 1,
                    bytes: summary.bytes + bytes,
                })
            })
            .await
    }

    async fn fetch_listed(
        &self,
        location: &Location,
        listed: &Listed,
        dest_dir: &Path,
    ) -> Result<u64, StorageError> {
        let dest = join_relative(dest_dir, &listed.rel, &location.url)?;
        let url = join_url(&location.url, &listed.rel);
        let _permits = self.permits().await;
        with_retries(&url, || fetch(location, &url, &listed.source, &dest)).await
    }

    /// Writes a TES input's inline `content` to `dest`.
    pub async fn write_content(&self, content: &str, dest: &Path) -> Result<u64, StorageError> {
        if content.len() > CONTENT_BYTES_MAX {
            return Err(StorageError::ContentTooLarge {
                path: dest.to_path_buf(),
                size_bytes: content.len(),
                limit_bytes: CONTENT_BYTES_MAX,
            });
        }
        let dest = self.work_path(dest).await?;
        create_parent(&dest).await?;
        let (path, bytes) = (dest.clone(), content.as_bytes().to_vec());
        blocking(move || std::fs::write(path, bytes))
            .await
            .map_err(|source| StorageError::io(&dest, source))?;
        Ok(content.len() as u64)
    }
}

async fn fetch(
    location: &Location,
    url: &str,
    source: &Source,
    dest: &Path,
) -> Result<u64, StorageError> {
    create_parent(dest).await?;
    match source {
        Source::File(path) => copy_local(url, path.clone(), dest.to_path_buf()).await,
        Source::Object(path) => stream_object(location, url, path, dest).await,
    }
}

/// Streams one object into `dest` and checks the byte count against the object's size. A
/// failed stream leaves no partial file behind.
async fn stream_object(
    location: &Location,
    url: &str,
    path: &ObjectPath,
    dest: &Path,
) -> Result<u64, StorageError> {
    let result = location
        .store
        .get(path)
        .await
        .map_err(|source| StorageError::from_store(url, source))?;
    let expected_bytes = result.meta.size;
    let path = dest.to_path_buf();
    let file = blocking(move || std::fs::File::create(path))
        .await
        .map_err(|source| StorageError::io(dest, source))?;
    let written = write_stream(result.into_stream(), file, url, dest).await;
    let outcome = match written {
        Ok(bytes) if bytes == expected_bytes => return Ok(bytes),
        Ok(bytes) => {
            let message = format!("got {bytes} bytes of {expected_bytes} from {url}");
            let error = std::io::Error::new(std::io::ErrorKind::UnexpectedEof, message);
            Err(StorageError::io(dest, error))
        }
        Err(error) => Err(error),
    };
    let path = dest.to_path_buf();
    if let Err(remove_error) = blocking(move || std::fs::remove_file(path)).await {
        tracing::warn!(path = %dest.display(), %remove_error, "could not remove a partial download");
    }
    outcome
}

/// Writes the stream to `file` in blocks of `WRITE_BUFFER_BYTES`.
async fn write_stream(
    mut stream: futures::stream::BoxStream<'static, object_store::Result<bytes::Bytes>>,
    mut file: std::fs::File,
    url: &str,
    dest: &Path,
) -> Result<u64, StorageError> {
    let mut buffer = Vec::with_capacity(WRITE_BUFFER_BYTES);
    let mut written_bytes = 0u64;
    while let Some(chunk) = stream.next().await {
        let chunk = chunk.map_err(|source| StorageError::from_store(url, source))?;
        buffer.extend_from_slice(&chunk);
        written_bytes += chunk.len() as u64;
        if buffer.len() >= WRITE_BUFFER_BYTES {
            let full = std::mem::replace(&mut buffer, Vec::with_capacity(WRITE_BUFFER_BYTES));
            file = write_block(file, full, dest).await?;
        }
    }
    write_block(file, buffer, dest).await?;
    Ok(written_bytes)
}

async fn write_block(
    mut file: std::fs::File,
    block: Vec<u8>,
    dest: &Path,
) -> Result<std::fs::File, StorageError> {
    blocking(move || {
        file.write_all(&block)?;
        Ok(file)
    })
    .await
    .map_err(|source| StorageError::io(dest, source))
}

/// Copies a local file (already checked against the allowed roots) with the kernel's copy.
async fn copy_local(url: &str, source: PathBuf, dest: PathBuf) -> Result<u64, StorageError> {
    let url = url.to_owned();
    let dest_for_error = dest.clone();
    shoal_runtime::blocking(move || match std::fs::copy(&source, &dest) {
        Ok(bytes) => Ok(bytes),
        Err(error) if error.kind() == std::io::ErrorKind::NotFound && !source.exists() => {
            Err(StorageError::NotFound { url })
        }
        Err(error) => Err(StorageError::io(&source, error)),
    })
    .await
    .map_err(|source| StorageError::Join {
        path: dest_for_error,
        source,
    })?
}

pub(crate) async fn create_parent(path: &Path) -> Result<(), StorageError> {
    if let Some(parent) = path.parent() {
        let created = parent.to_path_buf();
        blocking(move || std::fs::create_dir_all(created))
            .await
            .map_err(|source| StorageError::io(parent, source))?;
    }
    Ok(())
}
